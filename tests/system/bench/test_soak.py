"""``dynaray bench soak``: the fits, the naming of a run's processes, the report, bad input, and a short soak of a
debug run whose every process must grow slower than a bound once warm.

The soak test runs on Ray: only inside a loopback-only network namespace (tests/run.sh sets DYNARAY_NETNS=1 there).
"""

import json
import os

import numpy as np
import pytest

from system.bench.soak import (
    PARTS, ProcessResult, Report, Series, find_steps, judge, memory_parts, process_name, rss_bytes, summarize,
    theil_sen, train_command,
)
from system.cli import main
from tests.system.bench.markdown import number, table_rows

SOAK_MINUTES, SOAK_WARMUP_MINUTES, SOAK_INTERVAL_S, SOAK_TABLE_ROWS = 1.5, 0.75, 3, 600
SOAK_BOUND_MB_PER_H = 1000.0
"""Largest RSS slope a process of the short soak may have after its warm-up; see test_a_debug_run_stays_in_bounds."""
SOAK_REF_SLACK = 10
"""Object refs in scope a process may have at the end of the window above those at its start (measured: +2)."""
ROLES = ("driver", "gcs_server", "raylet", "replay-shard-0", "replay-shard-1", "weights-store", "policy-learner",
         "world-model-learner", "rollout-0", "imagination-0", "evaluator-0", "control")
"""Processes every debug run has (the debug preset's roles, and Ray's own)."""


def test_theil_sen_is_the_slope_and_ignores_a_few_outliers():
    t = np.arange(100, dtype=float)
    assert theil_sen(t, 3.0 * t + 7) == pytest.approx(3.0)
    y = 2.0 * t
    y[[10, 50, 90]] += 1000.0  # three garbage-collection-like spikes
    assert theil_sen(t, y) == pytest.approx(2.0)
    assert np.isnan(theil_sen([1.0], [2.0]))
    many = np.arange(5000, dtype=float)  # thinned to MAX_FIT_POINTS: still the slope
    assert theil_sen(many, 0.5 * many) == pytest.approx(0.5)


def test_processes_are_named_by_role_or_by_what_ray_runs_in_them():
    actors = {101: "replay-shard-0"}
    ray_bin = "/venv/lib/python3.11/site-packages/ray/core/src/ray"
    assert process_name(7, ["python", "-m", "system.cli", "train"], driver=7, actors=actors) == "driver"
    assert process_name(101, ["ray::ReplayShard.sample"], driver=7, actors=actors) == "replay-shard-0"
    assert process_name(5, [f"{ray_bin}/gcs/gcs_server", "--log_dir=x"], 7, actors) == "gcs_server"
    assert process_name(6, [f"{ray_bin}/raylet/raylet", "--x"], 7, actors) == "raylet"
    assert process_name(8, ["python", "/ray/dashboard/agent.py", "--x"], 7, actors) == "dashboard_agent"
    assert process_name(8, ["ray::DashboardAgent"], 7, actors) == "dashboard_agent"
    assert process_name(9, ["python", "-u", "/ray/_private/log_monitor.py"], 7, actors) == "log_monitor"
    assert process_name(11, ["ray::IDLE"], 7, actors) == "idle worker 11"
    assert process_name(12, ["ray::PolicyLoop.run"], 7, actors) == "ray::PolicyLoop 12"
    assert process_name(14, ["ray::rollout-0:RolloutWorker.run"], 7, actors) == "rollout-0"
    assert process_name(13, ["/usr/bin/thing", "a"], 7, actors) == "thing 13"


def series(name, minutes, mb_per_h, start_mb=100.0):
    s = Series(name)
    for m in minutes:
        s.add(m, 1, start_mb + mb_per_h * m / 60.0, 5)
    return s


def test_slopes_after_the_warmup_are_judged_against_the_threshold():
    minutes = np.arange(0, 30, 0.5)
    steady, leaky = series("steady", minutes, 1.0), series("leaky", minutes, 40.0)
    early = series("early", minutes, 100.0)
    early.rss_mb = [min(v, 120.0) for v in early.rss_mb]  # grows during the warm-up only: not judged on that
    late = series("late", minutes[minutes > 25], 500.0)  # lived through less than half the window
    window = int((minutes >= 10).sum())
    results = [summarize(s, 10.0, window) for s in (steady, leaky, early, late)]
    by_name = {r.name: r for r in results}
    assert by_name["steady"].slope_mb_per_h == pytest.approx(1.0)
    assert by_name["leaky"].slope_mb_per_h == pytest.approx(40.0)
    assert by_name["early"].slope_mb_per_h == pytest.approx(0.0)
    assert not by_name["late"].judged and by_name["steady"].judged
    assert by_name["leaky"].peak_mb == pytest.approx(100.0 + 40.0 * minutes[-1] / 60, abs=1e-3)
    assert (by_name["steady"].refs_start, by_name["steady"].refs_end) == (5, 5)
    assert judge(results, 5.0) == ["leaky"]


def test_report_table_names_every_process_and_the_verdict():
    settings = {"minutes": 30, "warmup_minutes": 10, "threshold_mb_per_h": 5.0, "items": [], "interval_s": 10}
    report = Report(settings, {})
    report.processes = [ProcessResult("gcs_server", (1,), 120, True, 12.5, 60, 64, 64, None, None),
                        ProcessResult("driver", (2,), 120, True, 0.4, 400, 400, 410, 13, 13)]
    report.over = ["gcs_server"]
    report.store = {"slope_mb_per_h": 0.0, "start_mb": 0.5, "end_mb": 0.5, "peak_mb": 1.0, "objects_start": 9,
                    "objects_end": 9}
    out = report.markdown()
    assert table_rows(out, "gcs_server")[0][1:2] == ["+12.5"] and table_rows(out, "gcs_server")[0][-1] == "**over**"
    assert table_rows(out, "driver")[0][6:] == ["13 -> 13", "yes"]
    assert table_rows(out, "object store (used)")[0][6] == "objects 9 -> 9"
    assert "ABOVE 5 MB/h: gcs_server" in out
    assert json.loads(json.dumps(report.to_json()))["processes"][0]["name"] == "gcs_server"


def test_memory_parts_add_up_to_the_rss_of_a_live_process():
    pid = os.getpid()
    parts, rss = memory_parts(pid), rss_bytes(pid)
    assert set(parts) == set(PARTS)
    assert 0 <= parts["huge"] <= parts["anon"]
    assert abs(parts["anon"] + parts["file"] + parts["shmem"] - rss) <= 2 * 1024 * 1024, (parts, rss)
    assert memory_parts(2**22 + 1) is None  # above Linux's largest process id: no such process


def stepping(minutes, steps, noise=0.3, seed=0):
    """A process of flat RSS (400 MB, sample noise of ``noise`` MB) that rises by ``mb`` of ``part`` at each
    ``(minute, mb, part)`` of ``steps``."""
    rng = np.random.default_rng(seed)
    s = Series("shard")
    for m in minutes:
        parts = {"anon": 200.0, "huge": 0.0, "file": 150.0, "shmem": 50.0}
        for at, mb, part in steps:
            if m >= at:
                parts[part] += mb
                if part == "huge":
                    parts["anon"] += mb
        parts["file"] += rng.normal(0, noise)
        s.add(m, 1, parts["anon"] + parts["file"] + parts["shmem"], None, parts)
    return s


def test_steps_are_found_where_they_are_and_say_what_grew():
    minutes = np.arange(0, 90, 0.25)
    s = stepping(minutes, [(10, 3.0, "anon"), (50, 2.0, "huge"), (71, 2.5, "anon")])
    s.rss_mb[160] += 30.0  # a spike of one sample (a garbage collection): not a step
    found = find_steps(s, from_minute=30)
    assert [st["minute"] for st in found] == [50.0, 71.0]  # the warm-up's step is left out
    assert found[0]["mb"] == pytest.approx(2.0, abs=0.3) and found[0]["huge"] == pytest.approx(2.0)
    assert found[0]["anon"] == pytest.approx(2.0) and found[1]["huge"] == 0.0
    assert find_steps(stepping(minutes, []), from_minute=0) == []
    wobbly = stepping(minutes, [(40, 1.2, "anon")], noise=0.6, seed=3)  # a small step in loud noise
    assert all(st["mb"] >= 1.0 for st in find_steps(wobbly, from_minute=0))  # each as large as it was found
    result = summarize(s, 30.0, int((minutes >= 30).sum()))
    assert result.steps == found and result.part_slopes["shmem"] == pytest.approx(0.0)
    report = Report({"minutes": 90, "warmup_minutes": 30, "threshold_mb_per_h": 5.0, "items": []}, {})
    report.processes = [result]
    out = report.markdown()
    assert "- shard: 50.0: +1.9 (+2.0, +2.0, " in out and "; 71.0: +2.3 (+2.5, +0.0, " in out


def test_train_command_runs_debug_by_default_and_the_bench_keys_come_last():
    command = train_command(["replay.real_capacity=9", "seed=3"], "n", "/tmp/r", 2000)
    assert command[1:5] == ["-m", "system.cli", "train", "debug"]
    assert command.index("seed=3") < command.index("replay.real_capacity=2000")
    assert command[-2:] == ["name=n", "run.runs_dir=/tmp/r"]
    assert train_command(["model_free"], "n", "/tmp/r", 10)[4] == "model_free"


@pytest.mark.parametrize("args, message", [
    (["--minutes", "2", "--warmup-minutes", "2"], "--warmup-minutes 2: expected 0 <= warm-up < --minutes (2)"),
    (["--minutes", "2", "no_such_preset"], "no_such_preset"),
    (["--minutes", "2", "ray.address=127.0.0.1:6379"], "expected no ray.address and no RAY_ADDRESS"),
])
def test_bad_input_is_one_line_and_exit_code_2(args, message, capsys):
    assert main(["bench", "soak", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


@pytest.mark.ray
def test_a_debug_run_stays_in_bounds(tmp_path, capsys):
    """A 1.5-minute soak of the debug preset (from when every role runs; replay tables of 600 rows, full within the
    45-s warm-up), sampled every 3 s; the slopes are fitted over the last 45 s.

    What it guards against is a process that grows fast, as the GCS server did with task events on for every method
    (DYNARAY_TASK_EVENTS=all and Ray's defaults: about 5,000 MB/h over the same minutes of a run, docs/benchmarks.md,
    Soak), and object refs piling up in a role. A run's slow leaks (a few MB/h) are measured by the 30-minute soak
    there, not here: in a window this short a 1-2 MB step of a process (a learner's allocator, a batch of rows)
    reads as 80-160 MB/h. Measured with these settings (2026-12-04, 2-core AMD EPYC VM, `dynaray bench soak` alone):
    the largest slope was the driver's in both of two soaks, 90 and 101 MB/h; earlier soaks under load (2026-12-02,
    2-core Xeon, load average 19-92) had 148 MB/h (a replay shard, 45-s warm-up) and 227 MB/h (the driver, a
    1.5-minute window). The bound, 1,000 MB/h, is four times the largest of those and a fifth of the GCS server's
    growth above.
    (Until 2026-12-04 this soak ran 2.5 minutes against 400 MB/h; the suite's time, docs/architecture.md. Not
    shorter: with 1 minute, a 30-s warm-up and a 30-s window, one of two tries on 2026-12-05 read the world-model
    learner at 1,431 MB/h.)
    """
    out_json = tmp_path / "soak.json"
    code = main(["bench", "soak", "--minutes", str(SOAK_MINUTES), "--warmup-minutes", str(SOAK_WARMUP_MINUTES),
                 "--interval", str(SOAK_INTERVAL_S), "--table-rows", str(SOAK_TABLE_ROWS),
                 "--threshold", str(SOAK_BOUND_MB_PER_H),
                 "--runs-dir", str(tmp_path / "runs"), "--plot", str(tmp_path / "soak.png"), "--json", str(out_json)])
    out = capsys.readouterr().out
    report = json.loads(out_json.read_text())
    assert report["error"] is None, report["error"]
    names = {p["name"] for p in report["processes"]}
    assert set(ROLES) <= names, f"processes not found: {set(ROLES) - names}"
    assert report["tables"]["real_full_at_warmup"], report["tables"]
    judged = {p["name"]: p["slope_mb_per_h"] for p in report["processes"] if p["judged"]}
    assert set(ROLES) <= set(judged)
    assert report["over"] == [], f"slopes above {SOAK_BOUND_MB_PER_H} MB/h: {judged}"
    assert code == 0
    # no refs kept alive: the refs each role holds in scope do not pile up over the window
    for p in report["processes"]:
        if p["refs_start"] is not None:
            assert p["refs_end"] <= p["refs_start"] + SOAK_REF_SLACK, p
    assert number(table_rows(out, "driver")[0][1]) <= SOAK_BOUND_MB_PER_H
    assert (tmp_path / "soak.png").stat().st_size > 0
