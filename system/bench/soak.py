"""``dynaray bench soak``: every process of a run sampled for minutes or hours; how fast each one's memory grows.

    dynaray bench soak --minutes 30 [--warmup-minutes M] [--interval 5] [--threshold 5] [--table-rows 2000] \
        [--snapshot-every-rows 50000] [--runs-dir runs/bench] [--plot PNG] [--json OUT] [PRESET ...] [key=value ...]

(Registration: one line ``"soak": "system.bench.soak"`` in ``system/bench/__init__.py``'s ``VERBS``.)

One ``dynaray train`` run (the ``debug`` preset when no preset is given; presets and overrides as ``dynaray train``
takes them) in a child process on an embedded local Ray, with an endless budget, stopped with SIGINT (as Ctrl-C
does) ``--minutes`` after every role runs (the run's ``placement.json``: every actor's constructor has finished;
minutes count from then, negative while the roles start). Every ``--interval`` seconds the bench reads, from
``/proc`` (Linux), the resident set size of every process of the run: the child (the driver) and all its
descendants, which are every process of the embedded Ray (GCS server, raylet, the dashboard head and agents, log
monitor, and the worker processes). Worker processes are named by the actor they hold (Ray's actor table, read from
the GCS at the address the run writes to its ``ray.json``), so each role's actors are told apart; idle workers are
``idle worker <pid>``. From the raylet, at the same times: the object store's bytes and objects in use, and the
object refs each worker process holds in scope (the driver's included), so that refs kept alive (published weights,
sample batches, calls in flight) show as a count that grows.

Reported per process, over the samples after ``--warmup-minutes`` (a third of the run by default): the RSS slope in
MB per hour (Theil-Sen: the median of the slopes between every pair of samples, which a few outliers such as a
garbage collection do not move), the RSS at the start and end of that window, the peak, and the refs in scope at the
window's start and end; the same for the object store. A process that lived through less than half the window is
listed but not judged. Exit code 1 when a judged process's slope is above ``--threshold`` (MB/h, printed with the
table) or the run failed; 2 for bad input.

Replay tables grow until their capacity by design: the bench sizes both tables (``replay.real_capacity`` and
``replay.imagined_capacity``) to ``--table-rows`` rows, which a debug run fills in its first minute, so that the
window after the warm-up holds no table growth (the bench's flags override the keys they name, as every bench's do;
the report says whether ``real`` had filled by the end of the warm-up, from the env steps of the run's metrics table).
Likewise ``replay.snapshot_every_rows`` is ``--snapshot-every-rows`` (50,000 by default; the system's default is
200,000): a shard's first snapshot loads Arrow's Parquet writer, a one-off step of about 10 MB (code pages and the
writer's buffers) that a debug run reached only after 38 minutes with the system's default, where a fit counts it as
growth. At 50,000 the first snapshot falls inside the default warm-up of a soak of 30 minutes or more, and later ones
repeat inside the window, so a snapshot that leaks shows as a slope.

What each process's memory is made of is sampled with it (:data:`PARTS`, from ``/proc/<pid>/status`` and
``smaps_rollup``): anonymous pages, of which in transparent huge pages, mapped files and shared memory. The report
gives the slope of each part, and the steps of each process after the warm-up (:func:`find_steps`: rises of
1 MB or more that stay), each with the part that rose, so that a process that grows by the kernel's doing (a huge
page filled in around a few pages in use, or code pages read back in after the kernel dropped them) is told from one
that allocates and keeps what it allocated.

The plot (``--plot``; ``soak.png`` in the run directory by default) shows every process's RSS over time and the
object store's use.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from system.bench.harness import (
    add_config_items, add_json_option, config_items, fail, finish, load_averages, load_bench_config, machine,
    positive_float, positive_int, progress, write_report,
)

__all__ = ["DESCRIPTION", "HELP", "Report", "add_arguments", "judge", "run", "theil_sen"]

EXIT_FAILED = 1
"""Exit code when a slope is above the threshold or the run failed."""
DEFAULT_PRESET = "debug"
ENDLESS_STEPS = 10**12
DEFAULT_SNAPSHOT_ROWS = 50_000
"""``replay.snapshot_every_rows`` of the soak's run: the first snapshot inside the warm-up (module docstring)."""
"""The run's env-step budget: more than any soak reaches; the bench stops the run."""
STARTUP_TIMEOUT_S = 900.0
"""Longest wait for the run to start Ray (its ``ray.json``), and then for every role to run."""
PLACEMENT_TIMEOUT_S = 600
"""The run's ``placement.timeout_s``: roles start slowly on a loaded machine, and a soak has time."""
PROBE_TIMEOUT_S = 20.0
"""Longest wait for Ray's state at one sample."""
STOP_TIMEOUT_S = 120.0
"""Longest wait for the run to stop every role after SIGINT before its processes are killed."""
MAX_FIT_POINTS = 1500
"""Samples used by a fit at most (evenly thinned): the Theil-Sen fit takes every pair."""
PROGRESS_PROCESSES = 4
"""Processes named in the progress line printed every minute (the largest)."""
MB = 1024 * 1024
PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

# ----------------------------------------------------------------------------------------------- /proc


def _children_map() -> dict[int, list[int]]:
    """Parent pid -> child pids of every process this machine shows."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])  # the name in parentheses may hold spaces
        children.setdefault(ppid, []).append(int(entry))
    return children


def process_tree(root: int) -> list[int]:
    """``root`` and every descendant of it that is alive now."""
    children, tree, todo = _children_map(), [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def rss_bytes(pid: int) -> int | None:
    """Resident set size of ``pid``; None when it has ended."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return None


PARTS = ("anon", "huge", "file", "shmem")
"""What a process's resident memory is made of (:func:`memory_parts`), in :attr:`Series.parts`: ``anon``
its anonymous pages (heaps, stacks: what only the process can free), ``huge`` the part of ``anon`` that sits in
transparent huge pages (``AnonHugePages``: the kernel's khugepaged fills a 2 MB region around the few pages of it
that are in use, so it moves in 2 MB steps without the process allocating anything), ``file`` pages of mapped
files (code, libraries: page cache, which the kernel drops under pressure and reads back on use) and ``shmem``
shared memory (Ray's object store, mapped by the raylet and every worker)."""
_STATUS_FIELDS = {"RssAnon:": "anon", "RssFile:": "file", "RssShmem:": "shmem"}


def memory_parts(pid: int) -> dict[str, int] | None:
    """``pid``'s resident memory by :data:`PARTS`, in bytes (``/proc/<pid>/status``, and ``smaps_rollup`` for
    ``huge``); None when it has ended or the kernel does not say (``smaps_rollup``: Linux 4.14 and later)."""
    found: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                fields = line.split()
                if fields and fields[0] in _STATUS_FIELDS:
                    found[_STATUS_FIELDS[fields[0]]] = int(fields[1]) * 1024
        with open(f"/proc/{pid}/smaps_rollup") as f:
            huge = next((line for line in f if line.startswith("AnonHugePages:")), None)
    except (OSError, IndexError, ValueError):
        return None
    if len(found) != len(_STATUS_FIELDS):
        return None
    return {"anon": found["anon"], "huge": int(huge.split()[1]) * 1024 if huge else 0, "file": found["file"],
            "shmem": found["shmem"]}


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [part.decode(errors="replace") for part in f.read().split(b"\0") if part]
    except OSError:
        return []


_RAY_SCRIPTS = (("dashboard/dashboard.py", "dashboard"), ("dashboard/agent.py", "dashboard_agent"),
                ("ray::DashboardAgent", "dashboard_agent"), ("runtime_env/agent/main.py", "runtime_env_agent"),
                ("ray::RuntimeEnvAgent", "runtime_env_agent"), ("log_monitor.py", "log_monitor"),
                ("autoscaler/_private/monitor.py", "monitor"))
"""(text of a command line, process name) of Ray's own Python processes (scripts, or the titles they set)."""


def process_name(pid: int, cmdline: list[str], driver: int, actors: dict[int, str]) -> str:
    """What ``pid`` is in the run: ``driver``, the name of the actor it holds, a Ray process
    (``gcs_server``, ``raylet``, ``dashboard``, ...), ``idle worker <pid>``, or ``<program> <pid>``."""
    if pid == driver:
        return "driver"
    if pid in actors:
        return actors[pid]
    text = " ".join(cmdline)
    first = cmdline[0] if cmdline else ""
    base = os.path.basename(first.split()[0]) if first else "?"
    if base in ("gcs_server", "raylet"):
        return base
    for script, name in _RAY_SCRIPTS:
        if script in text:
            return name
    if first.startswith("ray-dashboard-"):  # the dashboard's module subprocesses name themselves
        return first.split()[0]
    if first.startswith("ray::IDLE"):
        return f"idle worker {pid}"
    if first.startswith("ray::"):  # a worker whose actor the table did not list: ray::[name:]Class[.method]
        title = first.split()[0][len("ray::"):]
        if ":" in title:
            return title.split(":", 1)[0]
        return f"ray::{title.split('.')[0]} {pid}"
    return f"{base} {pid}"


# ------------------------------------------------------------------------------------------------- Ray


class RayProbe:
    """The run's Ray as the bench reads it, without joining it as a driver: the GCS (actor table, node table) and
    the raylet (object store, each worker's refs in scope).

    Ray's GCS client ends the process it runs in once the GCS has been unreachable for a minute (as when the run
    stops or fails), so the probe lives in a process of its own; the bench samples RSS on without it.
    """

    def __init__(self, address: str):
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        self._conn, their_end = context.Pipe()
        self._process = context.Process(target=_probe_process, args=(address, their_end), daemon=True,
                                        name="dynaray-soak-probe")
        self._process.start()
        self._asked = 0

    def sample(self, timeout_s: float = PROBE_TIMEOUT_S) -> tuple[dict[int, str], dict, dict[int, int]] | str:
        """``(pid -> actor name, {"used_bytes", "objects"}, pid -> object refs in scope)``, or why not."""
        if not self._process.is_alive():
            return f"the probe process ended (exit code {self._process.exitcode})"
        self._asked += 1
        self._conn.send(self._asked)
        deadline = time.monotonic() + timeout_s
        while self._conn.poll(max(0.0, deadline - time.monotonic())):
            asked, answer = self._conn.recv()
            if asked == self._asked:  # an answer that came too late for an earlier sample is dropped
                return answer
        return f"no answer within {timeout_s:g} s"

    def close(self) -> None:
        if self._process.is_alive():
            self._process.kill()
        self._process.join()


def _probe_process(address: str, conn) -> None:
    """The probe's process: answers each number it receives with the actor table, store stats and refs."""
    import logging

    from ray._private.authentication.authentication_token_setup import maybe_enable_token_auth_if_token_available
    from ray._private.internal_api import get_state_from_address, node_stats

    from system.runtime import _drop_token_enabled_notice

    # the embedded Ray asks for the token it saved (~/.ray/auth_token) when it started
    logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(_drop_token_enabled_notice)
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    state = get_state_from_address(address)
    raylet = None
    while True:
        try:
            asked = conn.recv()
        except EOFError:  # the bench ended
            return
        try:
            actors = {info["Pid"]: info["Name"] for info in state.actor_table(None).values()
                      if info["State"] == "ALIVE" and info["Name"] and info["Pid"]}
            if raylet is None:
                node = next(n for n in state.node_table() if n["Alive"])
                raylet = (node["NodeManagerAddress"], node["NodeManagerPort"])
            reply = node_stats(*raylet, include_memory_info=False)
            store = {"used_bytes": reply.store_stats.object_store_bytes_used,
                     "objects": reply.store_stats.num_local_objects}
            refs = {w.pid: w.num_object_refs_in_scope for w in reply.core_workers_stats if w.pid}
            conn.send((asked, (actors, store, refs)))
        except Exception as exc:  # the GCS or raylet busy, restarting or gone
            conn.send((asked, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"))


# --------------------------------------------------------------------------------------------------- fits


def theil_sen(t: np.ndarray, y: np.ndarray) -> float:
    """The median of the slopes between every pair of points (``t`` distinct); NaN for fewer than two."""
    t, y = np.asarray(t, float), np.asarray(y, float)
    if len(t) > MAX_FIT_POINTS:
        keep = np.linspace(0, len(t) - 1, MAX_FIT_POINTS).round().astype(int)
        t, y = t[keep], y[keep]
    if len(t) < 2:
        return float("nan")
    i, j = np.triu_indices(len(t), k=1)
    dt = t[j] - t[i]
    ok = dt > 0
    return float(np.median((y[j] - y[i])[ok] / dt[ok])) if ok.any() else float("nan")


@dataclass
class Series:
    """One process's samples (minutes since the run started, RSS MB, refs in scope or None, and its RSS by
    :data:`PARTS` in MB, NaN where the kernel did not say)."""

    name: str
    pids: list[int] = field(default_factory=list)
    minutes: list[float] = field(default_factory=list)
    rss_mb: list[float] = field(default_factory=list)
    refs: list[int | None] = field(default_factory=list)
    parts: dict[str, list[float]] = field(default_factory=lambda: {part: [] for part in PARTS})

    def add(self, minute: float, pid: int, rss: float, refs: int | None, parts: dict[str, float] | None = None) -> None:
        if pid not in self.pids:
            self.pids.append(pid)
        self.minutes.append(minute)
        self.rss_mb.append(round(rss, 3))  # a kB is finer than a page: the JSON keeps what was read
        self.refs.append(refs)
        for part, values in self.parts.items():
            values.append(round(parts[part], 3) if parts else float("nan"))


STEP_MB = 1.0
"""Smallest rise of a process's RSS that :func:`find_steps` reports as a step."""
STEP_SAMPLES = 8
"""Samples on each side of a step whose medians it compares (2 minutes at a 15 s interval)."""


def find_steps(series: Series, from_minute: float, min_mb: float = STEP_MB, k: int = STEP_SAMPLES) -> list[dict]:
    """Where ``series``'s RSS rises by ``min_mb`` or more and stays up for ``k`` samples, from ``from_minute`` on.

    The rise at a sample is the median of the ``k`` samples from it on minus the median of the ``k`` before it, so
    a spike of a few samples (a garbage collection) is none. Steps are the largest rises at least ``k`` samples
    apart, each dated by the largest single-sample rise near it. Each: ``{"minute", "mb"}`` and the same rise of
    every part (``"anon"``, ...), which says what grew (``huge`` with ``anon``: the kernel's huge pages, not an
    allocation). A step that a later fall undoes is still one: the slope says whether the process grew.
    """
    rss = np.asarray(series.rss_mb, float)
    if len(rss) < 2 * k + 1:
        return []

    def rise(values: np.ndarray, i: int) -> float:
        return float(np.median(values[i:i + k]) - np.median(values[i - k:i]))

    rises = np.full(len(rss), -np.inf)
    for i in range(k, len(rss) - k + 1):
        rises[i] = rise(rss, i)
    chosen: list[int] = []
    for i in np.argsort(-rises, kind="stable"):
        if rises[i] < min_mb:
            break
        if all(abs(i - j) > k for j in chosen):
            chosen.append(int(i))
    steps = []
    for i in sorted(chosen):
        lo, hi = max(k, i - k // 2), min(len(rss) - k, i + k // 2)
        at = lo + int(np.argmax(np.diff(rss[lo - 1:hi + 1])))  # the sample the largest single rise leads to
        if series.minutes[at] < from_minute:
            continue
        step = {"minute": round(series.minutes[at], 2), "mb": round(float(rises[i]), 2)}
        for part, values in series.parts.items():
            step[part] = round(rise(np.asarray(values, float), i), 2)
        steps.append(step)
    return steps


@dataclass(frozen=True)
class ProcessResult:
    """One process of the run over the window after the warm-up."""

    name: str
    pids: tuple[int, ...]
    """Its process ids (more than one when Ray restarted the actor)."""
    samples: int
    """Samples in the window."""
    judged: bool
    """Lived through at least half the window, so its slope is held against the threshold."""
    slope_mb_per_h: float
    start_mb: float
    end_mb: float
    peak_mb: float
    """Largest RSS over the whole run (warm-up included)."""
    refs_start: int | None
    refs_end: int | None
    """Object refs in scope in the process at the window's first and last sample (None: not a Ray worker)."""
    part_slopes: dict[str, float] = field(default_factory=dict)
    """The slope (MB/h) of each of :data:`PARTS` over the window (NaN where the kernel did not say)."""
    steps: list[dict] = field(default_factory=list)
    """The window's steps (:func:`find_steps`)."""


def _window(series_minutes: list[float], warmup_minutes: float) -> np.ndarray:
    return np.asarray(series_minutes) >= warmup_minutes


def summarize(series: Series, warmup_minutes: float, window_samples: int) -> ProcessResult:
    """A process's :class:`ProcessResult` (``window_samples``: how many samples the whole window has)."""
    inside = _window(series.minutes, warmup_minutes)
    t = np.asarray(series.minutes)[inside] / 60.0
    y = np.asarray(series.rss_mb)[inside]
    refs = [r for r, keep in zip(series.refs, inside) if keep]
    samples = int(inside.sum())
    return ProcessResult(
        name=series.name, pids=tuple(series.pids), samples=samples,
        judged=samples >= 2 and samples >= window_samples / 2, slope_mb_per_h=theil_sen(t, y),
        start_mb=float(y[0]) if samples else float("nan"), end_mb=float(y[-1]) if samples else float("nan"),
        peak_mb=float(max(series.rss_mb)), refs_start=refs[0] if refs else None, refs_end=refs[-1] if refs else None,
        part_slopes={part: theil_sen(t, np.asarray(values, float)[inside]) for part, values in series.parts.items()},
        steps=find_steps(series, warmup_minutes),
    )


def judge(results: list[ProcessResult], threshold: float) -> list[str]:
    """Names of the judged processes whose slope is above ``threshold`` MB/h."""
    return [r.name for r in results if r.judged and r.slope_mb_per_h > threshold]


# ------------------------------------------------------------------------------------------------- report


@dataclass
class Report:
    """Everything one ``dynaray bench soak`` run measured."""

    settings: dict
    machine: dict
    processes: list[ProcessResult] = field(default_factory=list)
    store: dict = field(default_factory=dict)
    """Object store over the window: slope (MB/h), used MB at start/end/peak, objects at start/end."""
    over: list[str] = field(default_factory=list)
    """Judged processes above the threshold."""
    tables: dict = field(default_factory=dict)
    """Replay capacity, env steps by the end of the warm-up and whether ``real`` was full by then."""
    run_dir: str = ""
    error: str | None = None
    """Why the run failed (None: it ran for the whole time)."""
    series: list[Series] = field(default_factory=list)
    store_series: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"settings": self.settings, "machine": self.machine,
                "processes": [asdict(p) for p in self.processes], "store": self.store, "over": self.over,
                "tables": self.tables, "run_dir": self.run_dir, "error": self.error,
                "series": [asdict(s) for s in self.series], "store_series": self.store_series}

    def markdown(self) -> str:
        warmup = self.settings["warmup_minutes"]
        lines = [f"| process | RSS slope after {warmup:g} min (MB/h) | {' / '.join(PARTS)} (MB/h) | RSS start (MB) | "
                 "RSS end (MB) | peak (MB) | refs in scope start -> end | judged |",
                 "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for p in sorted(self.processes, key=lambda p: (not p.judged, -abs(_finite_or_zero(p.slope_mb_per_h)))):
            refs = "-" if p.refs_start is None else f"{p.refs_start} -> {p.refs_end}"
            mark = "yes" if p.judged else f"no ({p.samples} samples)"
            if p.name in self.over:
                mark = "**over**"
            parts = " / ".join(f"{p.part_slopes.get(part, float('nan')):+.1f}" for part in PARTS)
            lines.append(f"| {p.name} | {p.slope_mb_per_h:+.1f} | {parts} | {p.start_mb:.0f} | {p.end_mb:.0f} | "
                         f"{p.peak_mb:.0f} | {refs} | {mark} |")
        if self.store:
            s = self.store
            lines.append(f"| object store (used) | {s['slope_mb_per_h']:+.1f} | - | {s['start_mb']:.1f} | "
                         f"{s['end_mb']:.1f} | {s['peak_mb']:.1f} | objects {s['objects_start']} -> "
                         f"{s['objects_end']} | - |")
        threshold = self.settings["threshold_mb_per_h"]
        verdict = (f"every judged process at or below {threshold:g} MB/h" if not self.over
                   else f"ABOVE {threshold:g} MB/h: {', '.join(self.over)}")
        lines.append(f"\nthreshold: {threshold:g} MB/h per process after the warm-up; {verdict}")
        if self.tables:
            t = self.tables
            full = {True: "full", False: "NOT full (its growth is in the replay shards' slopes)", None: "unknown"}
            lines.append(f"replay tables: real {t['real_capacity']} rows, imagined {t['imagined_capacity']} rows; "
                         f"{t['env_steps_at_warmup']} env steps by the end of the warm-up: real "
                         f"{full[t['real_full_at_warmup']]}; {t['env_steps_at_end']} env steps in all")
        stepped = [p for p in self.processes if p.judged and p.steps]
        if stepped:
            lines.append(f"\nsteps of {STEP_MB:g} MB or more after the warm-up (minute: RSS rise, of which "
                         f"{', '.join(PARTS)}):")
            for p in sorted(stepped, key=lambda p: p.name):
                lines.append(f"- {p.name}: " + "; ".join(
                    f"{st['minute']:.1f}: +{st['mb']:.1f} ({', '.join(f'{st[part]:+.1f}' for part in PARTS)})"
                    for st in p.steps))
        if self.error:
            lines.append(f"\nthe run failed: {self.error}")
        return "\n".join(lines)


def _finite_or_zero(x: float) -> float:
    return x if math.isfinite(x) else 0.0


def plot(report: Report, path: Path) -> None:
    """Every process's RSS over time, and the object store's use, in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 9), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    for s in sorted(report.series, key=lambda s: -max(s.rss_mb)):
        if len(s.minutes) > 1:
            top.plot(s.minutes, s.rss_mb, label=s.name, linewidth=1)
    warmup = report.settings["warmup_minutes"]
    for ax in (top, bottom):
        ax.axvline(warmup, color="grey", linestyle=":", linewidth=1)
    top.set_ylabel("RSS (MB)")
    top.set_yscale("log")
    top.set_title(f"dynaray bench soak: {' '.join(report.settings['items']) or DEFAULT_PRESET}, "
                  f"{report.settings['minutes']:g} min (dotted: end of warm-up)")
    top.legend(fontsize=6, ncol=3, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    store = report.store_series
    if store.get("minutes"):
        bottom.plot(store["minutes"], np.asarray(store["used_bytes"]) / MB, color="black", linewidth=1)
    bottom.set_ylabel("object store used (MB)")
    bottom.set_xlabel("minutes since the run started")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------- run


def train_command(items: list[str], name: str, runs_dir: str, table_rows: int,
                  snapshot_rows: int = DEFAULT_SNAPSHOT_ROWS) -> list[str]:
    """The ``dynaray train`` command line of the soak's run: the caller's presets and overrides, then the bench's
    keys (an endless budget, no early stop, no progress line, the table capacities and snapshot period, the run's
    name and place)."""
    presets, overrides = [i for i in items if "=" not in i], [i for i in items if "=" in i]
    return [sys.executable, "-m", "system.cli", "train", *(presets or [DEFAULT_PRESET]), *overrides,
            *bench_keys(table_rows, snapshot_rows), f"name={name}", f"run.runs_dir={runs_dir}"]


def bench_keys(table_rows: int, snapshot_rows: int = DEFAULT_SNAPSHOT_ROWS) -> list[str]:
    return [f"replay.real_capacity={table_rows}", f"replay.imagined_capacity={table_rows}",
            f"replay.snapshot_every_rows={snapshot_rows}",
            f"run.total_env_steps={ENDLESS_STEPS}", "run.target_return=null", "run.progress=false",
            f"placement.timeout_s={PLACEMENT_TIMEOUT_S}"]


def _wait_for_ray_file(path: Path, child: subprocess.Popen) -> str | None:
    """The cluster address the run writes to ``path``; None when the child ended first or too much time passed."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline and child.poll() is None:
        try:
            return json.loads(path.read_text())["address"]
        except (OSError, ValueError, KeyError):
            time.sleep(0.5)
    return None


def _stop(child: subprocess.Popen, known: set[int]) -> None:
    """SIGINT to the run (it ends every role and its Ray); SIGKILL to what is left of it after a while."""
    if child.poll() is None:
        child.send_signal(signal.SIGINT)
        try:
            child.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            progress(f"the run did not stop within {STOP_TIMEOUT_S:g} s of SIGINT: killing its processes")
            child.kill()
            child.wait()
    for pid in known:  # every process of the run, by the ids sampled: a Ray process left behind ends here
        if pid != child.pid and rss_bytes(pid) is not None and _is_ray_process(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def _is_ray_process(pid: int) -> bool:
    """Whether ``pid``'s command line names Ray (each process of the run's Ray does), so that a process id taken by
    another program since it was sampled is left alone."""
    text = " ".join(_cmdline(pid))
    return "ray" in text


def _tables(run_dir: Path, warmup_minutes: float, real_capacity: int, imagined_capacity: int) -> dict:
    """Whether ``real`` had filled by the end of the warm-up, from the run's metrics table."""
    env_steps_at_warmup = env_steps_at_end = None
    try:
        import pyarrow.parquet as pq

        rows = pq.read_table(run_dir / "metrics.parquet", columns=["env_steps", "wall_time_s"]).to_pylist()
    except (OSError, ValueError, KeyError, ImportError):
        rows = []
    if rows:
        before = [r["env_steps"] for r in rows if r["wall_time_s"] <= warmup_minutes * 60]
        env_steps_at_warmup = max(before, default=0)
        env_steps_at_end = max(r["env_steps"] for r in rows)
    return {"real_capacity": real_capacity, "imagined_capacity": imagined_capacity,
            "env_steps_at_warmup": env_steps_at_warmup, "env_steps_at_end": env_steps_at_end,
            "real_full_at_warmup": None if env_steps_at_warmup is None else env_steps_at_warmup >= real_capacity}


def sample_run(child: subprocess.Popen, probe_address: str, ready_file: Path, minutes: float, interval: float,
               series: dict[str, Series], store: dict, known: set[int]) -> str | None:
    """Sample every process of the run until ``minutes`` have passed since every role runs (``ready_file`` exists:
    the run writes its placement once every actor's constructor has finished); the samples' minutes count from
    then (negative while the roles start). None, or why it stopped."""
    probe = RayProbe(probe_address)
    try:
        return _sample(child, probe, ready_file, minutes, interval, series, store, known)
    finally:
        probe.close()


def _sample(child: subprocess.Popen, probe: RayProbe, ready_file: Path, minutes: float, interval: float,
            series: dict[str, Series], store: dict, known: set[int]) -> str | None:
    actors: dict[int, str] = {}
    start = time.monotonic()
    next_at, shown, ready, unanswered = start, 0, None, 0
    while ready is None or (time.monotonic() - start) / 60.0 - ready < minutes:
        minute = (time.monotonic() - start) / 60.0
        if child.poll() is not None:
            return f"the run exited with code {child.returncode} after {minute:.1f} min"
        if ready is None and ready_file.exists():
            ready = minute
            progress(f"every role runs after {minute * 60:.0f} s of sampling: {minutes:g} min from now")
        if ready is None and minute * 60 > STARTUP_TIMEOUT_S:
            return f"the roles did not all start within {STARTUP_TIMEOUT_S:g} s"
        answer = probe.sample()
        if isinstance(answer, str):  # names from the last answer (and from the workers' titles), no refs
            if not unanswered:
                progress(f"Ray's state did not answer at {minute:.1f} min ({answer}); sampling RSS only until it does")
            unanswered, store_now, refs = unanswered + 1, None, {}
        else:
            (actors, store_now, refs), unanswered = answer, 0
        for pid in process_tree(child.pid):
            rss = rss_bytes(pid)
            if rss is None:
                continue
            known.add(pid)
            name = process_name(pid, _cmdline(pid), child.pid, actors)
            parts = memory_parts(pid)
            series.setdefault(name, Series(name)).add(round(minute, 4), pid, rss / MB, refs.get(pid),
                                                      {k: v / MB for k, v in parts.items()} if parts else None)
        if ready is not None and int(minute - ready) > shown:  # a progress line a minute: the biggest processes
            shown = int(minute - ready)
            now = [s for s in series.values() if s.minutes[-1] == round(minute, 4)]
            biggest = sorted(now, key=lambda s: -s.rss_mb[-1])[:PROGRESS_PROCESSES]
            progress(f"{shown} min: " + ", ".join(f"{s.name} {s.rss_mb[-1]:.0f} MB" for s in biggest))
        if store_now is not None:
            store.setdefault("minutes", []).append(round(minute, 4))
            store.setdefault("used_bytes", []).append(store_now["used_bytes"])
            store.setdefault("objects", []).append(store_now["objects"])
        next_at += interval
        time.sleep(max(0.0, next_at - time.monotonic()))
    for s in series.values():  # minutes since every role runs
        s.minutes = [round(m - ready, 4) for m in s.minutes]
    store["minutes"] = [round(m - ready, 4) for m in store.get("minutes", [])]
    return None


def _store_result(store: dict, warmup_minutes: float) -> dict:
    if not store.get("minutes"):
        return {}
    inside = _window(store["minutes"], warmup_minutes)
    if not inside.any():
        return {}
    t = np.asarray(store["minutes"])[inside] / 60.0
    used = np.asarray(store["used_bytes"])[inside] / MB
    objects = np.asarray(store["objects"])[inside]
    return {"slope_mb_per_h": theil_sen(t, used), "start_mb": float(used[0]), "end_mb": float(used[-1]),
            "peak_mb": float(max(store["used_bytes"]) / MB), "objects_start": int(objects[0]),
            "objects_end": int(objects[-1])}


# ------------------------------------------------------------------------------------------------------ CLI

HELP = "run a system for minutes or hours and report how fast each of its processes' memory grows"
DESCRIPTION = (
    "One 'dynaray train' run (debug preset by default) on an embedded local Ray for --minutes; every process's RSS "
    "sampled every --interval s; RSS slope per process after the warm-up, peak, object store use and refs in scope; "
    "exit 1 when a slope passes --threshold MB/h. See system/bench/soak.py."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--minutes", type=positive_float, default=30.0,
                   help="how long the run lasts once every role runs (minutes; default 30)")
    p.add_argument("--warmup-minutes", type=float, default=None,
                   help="minutes after every role runs left out of the fits (default: a third of --minutes)")
    p.add_argument("--interval", type=positive_float, default=5.0, help="seconds between samples (default 5)")
    p.add_argument("--threshold", type=float, default=5.0,
                   help="largest RSS slope (MB/h) a process may have after the warm-up (default 5)")
    p.add_argument("--table-rows", type=positive_int, default=2000,
                   help="capacity of each replay table, so that it fills during the warm-up (default 2000)")
    p.add_argument("--snapshot-every-rows", type=positive_int, default=DEFAULT_SNAPSHOT_ROWS,
                   help="replay.snapshot_every_rows of the run, so that the first snapshot (a one-off step) falls "
                        f"in the warm-up (default {DEFAULT_SNAPSHOT_ROWS})")
    p.add_argument("--runs-dir", default="runs/bench", help="where the run directory goes (default runs/bench)")
    p.add_argument("--plot", default=None, help="PNG of memory over time (default: soak.png in the run directory)")
    add_json_option(p)
    add_config_items(p)


def run(args: argparse.Namespace) -> int:
    """``dynaray bench soak``: one run sampled for ``--minutes``; the table of slopes, the plot, the exit code."""
    from system.config import ConfigError

    warmup = args.minutes / 3 if args.warmup_minutes is None else args.warmup_minutes
    if not 0 <= warmup < args.minutes:
        return fail(f"--warmup-minutes {warmup:g}: expected 0 <= warm-up < --minutes ({args.minutes:g})")
    if not sys.platform.startswith("linux"):
        return fail(f"dynaray bench soak reads /proc: expected Linux, this is {sys.platform}")
    presets, overrides = config_items(args)
    try:
        config = load_bench_config(argparse.Namespace(items=[*(presets or [DEFAULT_PRESET]), *overrides]),
                                   bench_keys(args.table_rows, args.snapshot_every_rows))
    except ConfigError as exc:
        return fail(str(exc))
    if config.ray.address or os.environ.get("RAY_ADDRESS"):
        return fail("dynaray bench soak samples the processes of an embedded local Ray: expected no ray.address "
                    "and no RAY_ADDRESS")

    # the run: a child process, its own session so that the bench's Ctrl-C reaches it only through _stop
    name = f"soak-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    run_dir = Path(args.runs_dir) / name
    settings = {"minutes": args.minutes, "warmup_minutes": warmup, "interval_s": args.interval,
                "threshold_mb_per_h": args.threshold, "items": args.items, "table_rows": args.table_rows,
                "snapshot_every_rows": args.snapshot_every_rows,
                "task_events": "all methods" if os.environ.get("DYNARAY_TASK_EVENTS") == "all"
                else "off for the high-frequency methods"}
    report = Report(settings, machine("torch", cpu_model=_cpu_model()), run_dir=str(run_dir))
    command = train_command(args.items, name, args.runs_dir, args.table_rows, args.snapshot_every_rows)
    Path(args.runs_dir).mkdir(parents=True, exist_ok=True)
    log_path = Path(args.runs_dir) / f"{name}.log"
    progress(f"run {name}: {' '.join(command[3:])} (its output in {log_path})")
    series: dict[str, Series] = {}
    store: dict = {}
    known: set[int] = set()
    with open(log_path, "w") as log:
        start = time.monotonic()
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            address = _wait_for_ray_file(run_dir / "ray.json", child)
            if address is None:
                report.error = f"the run did not start Ray (exit code {child.poll()}); see {log_path}"
            else:
                progress(f"Ray up after {time.monotonic() - start:.0f} s; sampling every {args.interval:g} s until "
                         f"{args.minutes:g} min after every role runs (warm-up {warmup:g} min)")
                report.error = sample_run(child, address, run_dir / "placement.json", args.minutes, args.interval,
                                          series, store, known)
        finally:
            _stop(child, known)

    # the fits over the window after the warm-up
    window_samples = max((int(_window(s.minutes, warmup).sum()) for s in series.values()), default=0)
    report.series = sorted(series.values(), key=lambda s: s.name)
    report.store_series = store
    report.processes = [summarize(s, warmup, window_samples) for s in report.series
                        if _window(s.minutes, warmup).any()]
    report.store = _store_result(store, warmup)
    report.over = judge(report.processes, args.threshold)
    report.tables = _tables(run_dir, warmup, config.replay.real_capacity, config.replay.imagined_capacity)
    finish(report.machine)
    plot_path = Path(args.plot) if args.plot else run_dir / "soak.png"
    if report.series:
        plot_path.parent.mkdir(parents=True, exist_ok=True)
        plot(report, plot_path)
        progress(f"plot written to {plot_path}")
    summary = (f"{report.machine['cpus']} CPUs ({report.machine['cpu_model']}); {args.minutes:g} min run, "
               f"samples every {args.interval:g} s, slopes over the samples after {warmup:g} min (Theil-Sen); "
               f"task events: {settings['task_events']}; {load_averages(report.machine)}")
    code = write_report(report, summary, args.json)
    return EXIT_FAILED if report.over or report.error else code


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown"
