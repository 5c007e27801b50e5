"""``dynaray replay export|import|inspect`` through system.cli.main: exit codes, output, one-line errors."""

from __future__ import annotations

import os
from dataclasses import replace

import numpy as np
import pyarrow.parquet as pq
import pytest

from replay import ReplayShard, TableConfig
from replay.persistence import table_directory
from system.cli import main
from system.config import load_config
from system.run_dir import RunDir
from tests.replay.helpers import COLUMNS, make_chunk


def fill_replay(directory, shards=2, chunks=4, rows=8):
    for index in range(shards):
        shard = ReplayShard([TableConfig("real", 1000, COLUMNS, persist=True)], directory=str(directory), index=index)
        for i in range(chunks):
            chunk = make_chunk(rows, start_seq=1000 * index + i * rows, writer_id=index)
            shard.insert("real", chunk, index)
        shard.close()


def make_run(tmp_path, **replay_changes):
    config = load_config(["debug"])
    config = replace(config, replay=replace(config.replay, **replay_changes))
    run = RunDir(tmp_path / "run").create(config)
    run.write_table(
        "metrics",
        [
            {"env_steps": 100, "wall_time_s": 4.0, "env_steps_per_s": 25.0, "policy_total_updates": 200,
             "policy_updates_per_s": 50.0, "world_model_total_updates": 50, "world_model_updates_per_s": 12.5},
            {"env_steps": 200, "wall_time_s": 8.0, "env_steps_per_s": 25.0, "policy_total_updates": 600,
             "policy_updates_per_s": 100.0, "world_model_total_updates": 100, "world_model_updates_per_s": 12.5},
        ],
    )
    return run


def one_error_line(capsys, code, expected_code=2):
    out = capsys.readouterr()
    assert code == expected_code
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dynaray: error: "), out.err
    return lines[0]


def test_export_a_run_dir_and_read_it_back(tmp_path, capsys):
    run = make_run(tmp_path)
    fill_replay(run.path / "replay")
    out = tmp_path / "export"
    assert main(["replay", "export", str(run.path), "--table", "real", "--to", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "exported table 'real'" in printed and "64 rows from 2 shard(s)" in printed
    table = pq.read_table(out)
    assert table.num_rows == 64 and table.column("obs").type.list_size == 4
    # again into the same directory: refused, nothing overwritten
    assert "already holds Parquet files" in one_error_line(capsys, main(["replay", "export", str(run.path),
                                                                         "--to", str(out)]))


def test_export_follows_replay_directory_of_the_config(tmp_path, capsys):
    elsewhere = tmp_path / "shared-replay"
    fill_replay(elsewhere, shards=1, chunks=2)
    run = make_run(tmp_path, directory=str(elsewhere))
    assert main(["replay", "export", str(run.path), "--to", str(tmp_path / "out")]) == 0
    assert "16 rows from 1 shard(s)" in capsys.readouterr().out


def test_inspect_prints_sizes_rates_and_column_stats(tmp_path, capsys):
    run = make_run(tmp_path)
    fill_replay(run.path / "replay")
    assert main(["replay", "inspect", str(run.path)]) == 0
    out = capsys.readouterr().out
    capacity = run.load_config().replay.shard_capacity(run.load_config().replay.real_capacity)
    assert f"table real: 64 rows (capacity {capacity:,} per shard), inserted 64" in out
    assert "episodes 8 (terminated rows 0, truncated rows 6), writers 2" in out
    assert "reward           float32        min          0  mean      515.5  max       1031  non-finite 0" in out
    assert "obs              float32[4]" in out and "per component: means" in out
    assert "rates (metrics.parquet: 200 env steps in 8 s)" in out
    assert "env steps/s            25 over the run" in out
    assert "policy updates/s       75 over the run, 75 mean of reports, 100 last, 3 per env step" in out
    assert "world-model updates/s  12.5 over the run" in out
    # a replay directory itself: no capacity, no rates
    assert main(["replay", "inspect", str(run.path / "replay"), "--table", "real"]) == 0
    out = capsys.readouterr().out
    assert "table real: 64 rows, inserted 64" in out and "rates" not in out


def test_import_d4rl_then_inspect(tmp_path, capsys):
    n = 40
    np.savez(
        tmp_path / "hopper.npz",
        observations=np.random.default_rng(0).normal(size=(n, 3)),
        actions=np.zeros((n, 2), dtype=np.float32),
        rewards=np.ones(n, dtype=np.float32),
        terminals=np.arange(n) == 19,
        timeouts=np.arange(n) == 39,
    )
    target = tmp_path / "offline" / "replay"
    assert main(["replay", "import", str(tmp_path / "hopper.npz"), "--to", str(target), "--shards", "3"]) == 0
    out = capsys.readouterr().out
    assert "imported 38 rows (2 episodes, d4rl, 1 file)" in out and "on 3 shards" in out
    assert "dropped the last step of each episode (2 rows, 1 of them terminal)" in out
    assert f"replay.directory={target}" in out
    assert sorted(os.listdir(target)) == ["shard-0", "shard-1", "shard-2"]
    assert main(["replay", "inspect", str(target)]) == 0
    assert "table real: 38 rows, inserted 38" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        (["replay", "inspect", "{tmp}/nope"], "does not exist"),
        (["replay", "inspect", "{tmp}"], "neither a run directory (no config.yaml) nor a replay directory"),
        (["replay", "export", "{tmp}/replay", "--table", "imagined", "--to", "{tmp}/out"], "has no table 'imagined'"),
        (["replay", "import", "{tmp}/nope.npz", "--to", "{tmp}/new"], "does not exist"),
        (["replay", "import", "{tmp}/bad.npz", "--to", "{tmp}/new"], "array 'rewards': non-finite values"),
        (["replay", "import", "{tmp}/bad.npz", "--to", "{tmp}/new", "--shards", "0"], "--shards 0: expected"),
        (["replay", "import", "{tmp}/good.npz", "--to", "{tmp}/replay", "--shards", "4"], "has 2 shards"),
        (["replay", "import", "{tmp}/good.npz", "--to", "{tmp}/replay"], "column 'obs': expected shape (N, 4)"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, message):
    fill_replay(tmp_path / "replay")
    good = {"observations": np.zeros((5, 3)), "actions": np.zeros((5, 2)), "rewards": np.zeros(5),
            "terminals": np.zeros(5), "timeouts": np.zeros(5)}
    np.savez(tmp_path / "good.npz", **good)
    np.savez(tmp_path / "bad.npz", **{**good, "rewards": np.array([0, 0, np.nan, 0, 0])})
    line = one_error_line(capsys, main([a.format(tmp=tmp_path) for a in args]))
    assert message in line
    assert not (tmp_path / "new").exists() and not (tmp_path / "out").exists()


def test_import_into_a_run_dir_or_a_live_directory_is_refused(tmp_path, capsys):
    run = make_run(tmp_path)
    np.savez(tmp_path / "d.npz", observations=np.zeros((5, 4)), actions=np.zeros((5, 2)), rewards=np.zeros(5),
             terminals=np.zeros(5), timeouts=np.zeros(5))
    line = one_error_line(capsys, main(["replay", "import", str(tmp_path / "d.npz"), "--to", str(run.path)]))
    assert "is a run directory; import into a replay directory" in line
    live = ReplayShard([TableConfig("real", 100, COLUMNS, persist=True)], directory=str(tmp_path / "live"))
    live.insert("real", make_chunk(8), 0)
    line = one_error_line(capsys, main(["replay", "import", str(tmp_path / "d.npz"), "--to", str(tmp_path / "live")]))
    assert "in use by another live shard" in line
    live.close()


def test_torn_tail_of_a_live_log_is_a_warning_line(tmp_path, capsys):
    fill_replay(tmp_path / "replay", shards=1)
    wal = os.path.join(table_directory(str(tmp_path / "replay"), 0, "real"), "wal-0.log")
    with open(wal, "ab") as f:
        f.write(b"\xff\xff\xff\xff\x10\x00")  # a record a live writer is in the middle of
    assert main(["replay", "inspect", str(tmp_path / "replay")]) == 0
    out = capsys.readouterr()
    assert "table real: 32 rows" in out.out
    warning_lines = out.err.strip().splitlines()
    assert len(warning_lines) == 1 and warning_lines[0].startswith("dynaray: warning: replay log ")
    assert "skipped a torn final record" in warning_lines[0]
