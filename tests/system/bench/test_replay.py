"""``dynaray bench replay`` in process, tiny and without Ray: its tables have their rows and columns.

Nothing here asserts a speed; the numbers are only checked to be positive.
"""

import json

import pytest

from system.bench.replay import rllib_import_error, torchrl_buffer_error, torchrl_import_error
from system.cli import main
from tests.system.bench.markdown import number, table_rows

HEADER = (
    "| backend | mode | shards | sampler | log | insert rows/s | sample rows/s | p50 ms | p99 ms | wait p99 ms "
    "| rows stored | insert rows/CPU-s | sample rows/CPU-s |"
)
TINY = ["--seconds", "0.02", "--capacity", "4096", "--insert-batch", "256"]


def test_bench_in_process_prints_every_configuration(tmp_path, capsys):
    out_json = tmp_path / "bench.json"
    assert main(["bench", "replay", *TINY, "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert HEADER in out

    shard_rows = table_rows(out, "shard")
    assert sorted((r[3], r[4]) for r in shard_rows) == [
        ("prioritized", "off"), ("prioritized", "on"), ("uniform", "off"), ("uniform", "on")
    ]
    for row in shard_rows:
        assert row[1] == "-" and row[2] == "1" and row[9] == "-" and len(row) == 13
        insert, sample, p50, p99, stored, insert_cpu, sample_cpu = (number(c) for c in row[5:9] + row[10:13])
        assert insert > 0 and sample > 0 and 0 < p50 <= p99 and insert_cpu > 0 and sample_cpu > 0
        assert stored == 4096
    assert not table_rows(out, "ray") and not table_rows(out, "rllib")

    assert "| memory | capacity | bytes per row | raw field bytes | overhead |" in out
    for sampler in ("uniform", "prioritized"):
        (memory,) = table_rows(out, sampler)[-1:]
        assert number(memory[1]) == 4096 and number(memory[3]) == 206 and number(memory[2]) >= 206
    assert "| target | measured | goal | met |" in out
    assert "insert rows/s per shard, log on (uniform)" in out

    report = json.loads(out_json.read_text())
    assert len(report["results"]) == 4 and len(report["memory"]) == 2
    assert report["settings"]["capacity_per_shard"] == 4096 and report["machine"]["cpus"] >= 1
    assert all(t["target"] and isinstance(t["met"], bool) for t in report["targets"])


def test_bench_one_sampler_one_log_setting(capsys):
    assert main(["bench", "replay", *TINY, "--samplers", "prioritized", "--log", "off"]) == 0
    rows = table_rows(capsys.readouterr().out, "shard")
    assert [(r[3], r[4]) for r in rows] == [("prioritized", "off")]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--samplers", "uniform,fifo"], "expected a comma-separated list of ['uniform', 'prioritized']"),
        (["--shards", "0"], "expected comma-separated positive integers"),
        (["--log", "maybe"], "expected a comma-separated list of ['on', 'off']"),
        (["--seconds", "-1"], "expected a positive number of seconds"),
        (["--insert-batch", "many"], "expected a positive integer"),
    ],
)
def test_bench_bad_arguments_exit_2_naming_the_value(args, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "replay", *args])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_bench_insert_batch_larger_than_capacity(capsys):
    assert main(["bench", "replay", "--capacity", "100", "--insert-batch", "256"]) == 2
    assert "--insert-batch 256 is larger than --capacity 100" in capsys.readouterr().err


@pytest.mark.skipif(rllib_import_error() is not None, reason="RLlib's replay buffers do not import here")
def test_bench_against_rllib_buffers(capsys):
    assert main(["bench", "replay", "--seconds", "0.02", "--capacity", "3000", "--insert-batch", "256", "--rllib",
                 "--log", "off"]) == 0
    out = capsys.readouterr().out
    rllib_rows = table_rows(out, "rllib")
    assert sorted(r[3] for r in rllib_rows) == ["prioritized", "uniform"]
    for row in rllib_rows:
        assert row[1] == "-" and row[2] == "-" and row[4] == "-"
        assert number(row[5]) > 0 and number(row[6]) > 0 and number(row[10]) > 0
    assert "| vs RLlib | our log | insert x | sample x | p99 latency x |" in out
    assert [r[1] for r in table_rows(out, "uniform") if len(r) == 5 and r[1] in ("on", "off")] == ["off"]


@pytest.mark.skipif(torchrl_import_error() is not None, reason="TorchRL's replay buffers do not import here")
def test_bench_against_torchrl_buffers(capsys):
    assert main(["bench", "replay", "--seconds", "0.02", "--capacity", "2048", "--insert-batch", "256", "--torchrl",
                 "--log", "off"]) == 0
    out = capsys.readouterr().out
    rows = table_rows(out, "torchrl")
    prioritized = torchrl_buffer_error("TensorDictPrioritizedReplayBuffer")
    expected = ["LazyMemmapStorage", "LazyTensorStorage"]
    expected += [] if prioritized else ["TensorDictPrioritizedReplayBuffer"]
    assert sorted(r[1] for r in rows) == expected
    for row in rows:
        assert row[2] == "-" and row[4] == "-" and number(row[5]) > 0 and number(row[6]) > 0
        assert number(row[10]) == 2048
    assert "| vs TorchRL | sampler | our log | insert x | sample x | p99 latency x |" in out
    assert ("not measured: TorchRL TensorDictPrioritizedReplayBuffer" in out) == (prioritized is not None)


def test_bench_replay_rejects_a_bad_override(capsys):
    assert main(["bench", "replay", *TINY, "replay.fsync=sometimes"]) == 2
    assert "replay.fsync='sometimes'" in capsys.readouterr().err


def test_bench_replay_logs_with_the_configs_fsync(tmp_path):
    out_json = tmp_path / "bench.json"
    assert main(["bench", "replay", *TINY, "--samplers", "uniform", "--log", "on", "replay.fsync=every_insert",
                 "--json", str(out_json)]) == 0
    report = json.loads(out_json.read_text())
    assert report["settings"]["replay_config"]["fsync"] == "every_insert"
    assert report["settings"]["config_items"] == ["replay.fsync=every_insert"]


@pytest.mark.ray
def test_bench_replay_on_ray_with_one_and_two_shards(tmp_path, capsys):
    out_json = tmp_path / "bench.json"
    assert main(["bench", "replay", *TINY, "--samplers", "prioritized", "--log", "off", "--shards", "1,2", "--ray",
                 "--writers", "1", "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert "| inserts through Ray | shards | sampler | log | one client rows/s | writers | writers rows/s |" in out
    ray_rows = [r for r in table_rows(out, "ray") if len(r) == 13]
    writer_rows = [r for r in table_rows(out, "ray") if len(r) == 7]
    assert [(r[1], r[5]) for r in writer_rows] == [("1", "1"), ("2", "1")]
    assert all(number(r[6]) > 0 for r in writer_rows)
    assert [(r[1], r[2], r[3], r[4]) for r in ray_rows] == [
        (mode, shards, "prioritized", "off") for shards in ("1", "2") for mode in ("split", "one_shard x16")
    ]
    for row in ray_rows:
        assert number(row[5]) > 0 and number(row[6]) > 0 and 0 < number(row[7]) <= number(row[8])
        assert number(row[9]) >= 0
    assert [number(r[10]) for r in ray_rows] == [4096, 4096, 8192, 8192]
    assert ray_rows[0][5] == ray_rows[1][5]  # one insert measurement for both sampling modes
    report = json.loads(out_json.read_text())
    assert [t["target"] for t in report["targets"] if "Ray" in t["target"]] == [
        "p99 sample latency ms, Ray, 1 shard(s), split (prioritized, log off)",
        "sample rows/s into one client, Ray, 1 shard(s), one_shard (prioritized, log off)",
        "p99 wait per batch ms, Ray, 1 shard(s), one_shard (prioritized, log off)",
        "p99 sample latency ms, Ray, 2 shard(s), split (prioritized, log off)",
        "sample rows/s into one client, Ray, 2 shard(s), one_shard (prioritized, log off)",
        "p99 wait per batch ms, Ray, 2 shard(s), one_shard (prioritized, log off)",
    ]


@pytest.mark.ray
@pytest.mark.skipif(torchrl_import_error() is not None, reason="TorchRL's replay buffers do not import here")
def test_bench_replay_through_ray_against_torchrls_ray_buffer(tmp_path, capsys):
    out_json = tmp_path / "bench.json"
    assert main(["bench", "replay", *TINY, "--samplers", "uniform", "--log", "off", "--shards", "1", "--ray",
                 "--writers", "0", "--torchrl", "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    theirs = table_rows(out, "torchrl_ray")
    assert len(theirs) == 1 and theirs[0][1] == "RayReplayBuffer" and number(theirs[0][5]) > 0
    assert number(theirs[0][6]) > 0 and number(theirs[0][10]) == 4096
    report = json.loads(out_json.read_text())
    assert [r["mode"] for r in report["torchrl_ray_ratios"]] == ["split", "one_shard"]
    assert all(r["insert"] > 0 and r["sample"] > 0 for r in report["torchrl_ray_ratios"])
    assert "sample x TorchRL RayReplayBuffer (through Ray, one_shard)" in [t["target"] for t in report["targets"]]
