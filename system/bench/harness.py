"""What every ``dynaray bench`` shares: the machine record, progress lines, the report's Markdown/summary/JSON, parsers
of the common flags, the system config a bench measures, timing over wall and CPU time, random transitions, and
``dynaray train`` runs in processes of their own.

A bench module (``system/bench/<name>.py``) imports this module; this module imports no bench. Each bench module
defines ``HELP``, ``DESCRIPTION``, ``add_arguments(parser)`` and ``run(args) -> exit code``;
``system/bench/__init__.py`` holds the table of verbs.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from system.cli import STOP_WITH_PARENT_ENV

EXIT_BAD_INPUT = 2

# ---------------------------------------------------------------------------------------------------- output


def progress(text: str) -> None:
    """A benchmark's progress line, on stderr so the report on stdout stays clean."""
    print(f"dynaray bench: {text}", file=sys.stderr, flush=True)


def fail(message: str) -> int:
    """Print ``dynaray: error: message`` on stderr; return the bad-input exit code."""
    print(f"dynaray: error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def machine(*modules: str, **extra: Any) -> dict:
    """What a benchmark ran on: cores, platform, Python, numpy and Ray versions, the version of each importable
    module of ``modules`` (e.g. ``"torch"``), ``extra``, and the 1, 5 and 15-minute load averages now
    (``load_average_at_start``; :func:`finish` adds ``load_average_at_end``)."""
    record = {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "ray": _version("ray"),
    }
    record.update({name: _version(name) for name in modules})
    record.update(extra)
    record["load_average_at_start"] = list(os.getloadavg())
    return record


def _version(module: str) -> str | None:
    try:
        return importlib.import_module(module).__version__
    except ImportError:
        return None


def finish(record: dict) -> None:
    """Add the load averages at the end of the run to a :func:`machine` record."""
    record["load_average_at_end"] = list(os.getloadavg())


def load_averages(record: dict) -> str:
    """The 1, 5 and 15-minute load averages recorded at a benchmark's start and end, as a phrase for its summary."""
    start, end = record["load_average_at_start"], record["load_average_at_end"]
    return (f"load average (1, 5, 15 min) {start[0]:.1f} {start[1]:.1f} {start[2]:.1f} at the start, "
            f"{end[0]:.1f} {end[1]:.1f} {end[2]:.1f} at the end (other processes share these CPUs)")


def torch_threads(count: int) -> str:
    """``one torch thread`` or ``N torch threads``, for a summary."""
    return "one torch thread" if count == 1 else f"{count} torch threads"


def write_report(report: Any, summary: str, json_path: str | None) -> int:
    """Write ``report.to_json()`` to ``json_path`` when given (first: a closed stdout loses no measurement), then
    print ``report.markdown()`` and the ``summary`` paragraph under it. Returns the command's exit code."""
    if json_path:
        write_json(json_path, report.to_json())
        progress(f"results written to {json_path}")
    print(report.markdown())
    print(f"\n{summary}")
    return 0


def write_partial(report: Any, json_path: str | None, done: int, planned: int) -> None:
    """Write the report of the runs done so far to ``json_path`` when given, marked ``"complete": false`` and
    ``"finished": [done, planned]``: a bench of hours that is stopped keeps what it measured. :func:`write_report`
    overwrites it at the end."""
    if json_path:
        write_json(json_path, {**report.to_json(), "complete": False, "finished": [done, planned]})


def write_stopped(report: Any, signum: int, done: int, planned: int, summary: str, json_path: str | None) -> int:
    """The report of a bench that signal ``signum`` stopped (:func:`run_all`) when ``done`` of its ``planned`` runs
    had ended: printed, and written as :func:`write_partial` does. Returns the exit code, 128 + ``signum``."""
    write_report(report, f"Stopped by {signal.Signals(signum).name}: {done} of {planned} runs ended (those going "
                         f"then with what they measured so far); {summary}", None)
    write_partial(report, json_path, done, planned)
    return 128 + signum


def write_json(path: str, data: dict) -> None:
    """``data`` as indented JSON, ending in a newline."""
    Path(path).write_text(json.dumps(data, indent=2) + "\n")


def check(checks: list[dict], name: str, value: float, goal: float, higher_is_better: bool = True,
          strict: bool = False) -> None:
    """Append a target check: met when ``value >= goal`` (``higher_is_better``) or ``value <= goal`` (``< goal``
    when ``strict``)."""
    if higher_is_better:
        met = value >= goal
    else:
        met = value < goal if strict else value <= goal
    checks.append({"target": name, "measured": value, "goal": goal, "met": bool(met)})


def targets_table(checks: Sequence[dict], measured: Callable[[dict], str], goal: Callable[[dict], str]) -> list[str]:
    """Markdown lines of the ``| target | measured | goal | met |`` table (none without checks)."""
    if not checks:
        return []
    lines = ["", "| target | measured | goal | met |", "| --- | --- | --- | --- |"]
    for c in checks:
        lines.append(f"| {c['target']} | {measured(c)} | {goal(c)} | {'yes' if c['met'] else 'NO'} |")
    return lines


# --------------------------------------------------------------------------------------------------- parsing


def positive_ints(text: str) -> list[int]:
    """Comma-separated positive integers, each once, in order."""
    return list(dict.fromkeys(widths(text)))


def widths(text: str) -> list[int]:
    """Comma-separated positive integers, in order, repeats kept: the hidden layer widths of a network."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return values


def env_ids(text: str) -> list[str]:
    """``--envs`` of the benches: comma-separated env ids, each once, in order."""
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of env ids, got {text!r}")
    return list(dict.fromkeys(values))


def choices(allowed: Sequence[str]) -> Callable[[str], list[str]]:
    """A parser of comma-separated values from ``allowed``, each once, in order."""

    def parse(text: str) -> list[str]:
        values = [v.strip() for v in text.split(",") if v.strip()]
        if not values or any(v not in allowed for v in values):
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {list(allowed)}, got {text!r}")
        return list(dict.fromkeys(values))

    return parse


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def add_json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", metavar="OUT", default=None, help="also write the results as JSON to OUT")


def add_config_items(parser: argparse.ArgumentParser) -> None:
    """The system config a bench builds its roles from, as ``dynaray train`` takes it: presets, then overrides."""
    parser.add_argument("items", nargs="*", metavar="PRESET|key=value",
                        help="presets merged in order after 'default', then key=value overrides, as for "
                        "'dynaray train' (the bench's own flags override the keys they name)")


def config_items(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """``(presets, overrides)`` of :func:`add_config_items`' positional items."""
    return [a for a in args.items if "=" not in a], [a for a in args.items if "=" in a]


def load_bench_config(args: argparse.Namespace, overrides: Sequence[str] = ()) -> Any:
    """The ``SystemConfig`` of the bench's presets and overrides, then ``overrides`` (the bench's flags).

    Raises:
        system.config.ConfigError: a preset, key or value that is not allowed.
    """
    from system.config import load_config

    presets, items = config_items(args)
    return load_config(presets, [*items, *overrides])


# ---------------------------------------------------------------------------------------------------- timing


class Span:
    """Wall time and CPU time from its creation to :meth:`end`. ``cpu``: the CPU clock, ``time.process_time``
    (this process; other processes taking turns on the CPUs do not lower it) or ``time.thread_time``."""

    __slots__ = ("wall", "cpu", "_clock")

    def __init__(self, cpu: Callable[[], float] = time.process_time) -> None:
        self._clock = cpu
        self.wall, self.cpu = time.perf_counter(), cpu()

    def end(self) -> tuple[float, float]:
        """Wall and CPU seconds since the span began."""
        return time.perf_counter() - self.wall, self._clock() - self.cpu


def timed_loop(
    seconds: float, step: Callable[[], tuple[float, float]], latencies: list[float] | None = None
) -> tuple[int, float, float]:
    """Call ``step`` (which returns the wall and CPU seconds of the measured operation) once untimed, to pay one-time
    costs, then for ``seconds`` of wall time, at least once; return the timed calls and their wall and CPU seconds.
    ``latencies``, which ``step`` appends to, is cleared after the untimed call."""
    step()
    if latencies is not None:
        latencies.clear()
    calls, wall, cpu = 0, 0.0, 0.0
    start = time.perf_counter()
    while calls == 0 or time.perf_counter() - start < seconds:
        step_wall, step_cpu = step()
        wall, cpu, calls = wall + step_wall, cpu + step_cpu, calls + 1
    return calls, wall, cpu


def per_second(amount: float, seconds: float) -> float:
    """``amount / seconds``; NaN for no time."""
    return amount / seconds if seconds > 0 else float("nan")


def percentile_ms(latencies: Sequence[float], q: float) -> float:
    """The ``q``-th percentile of ``latencies`` (seconds) in milliseconds; NaN for none."""
    return float(np.percentile(latencies, q) * 1e3) if len(latencies) else float("nan")


# ------------------------------------------------------------------------------------------------------ data


def random_transitions(rows: int, obs_dim: int, act_dim: int, rng: np.random.Generator,
                       terminated_rate: float = 0.0) -> dict[str, np.ndarray]:
    """``rows`` random transitions: the columns a learner's batch has (obs, action in [-1, 1], reward, next_obs,
    terminated with probability ``terminated_rate``, truncated never)."""
    return {
        "obs": rng.normal(size=(rows, obs_dim)).astype(np.float32),
        "action": rng.uniform(-1, 1, (rows, act_dim)).astype(np.float32),
        "reward": rng.normal(size=rows).astype(np.float32),
        "next_obs": rng.normal(size=(rows, obs_dim)).astype(np.float32),
        "terminated": rng.random(rows) < terminated_rate if terminated_rate else np.zeros(rows, dtype=bool),
        "truncated": np.zeros(rows, dtype=bool),
    }


# ------------------------------------------------------------------------------------------------------- Ray


def end_actors(system: Any, timeout_s: float = 30.0) -> None:
    """End every actor a bench built into ``system`` (``system.wiring.kill_system``) and wait until their names are
    free again, so the next configuration can make actors of the same names."""
    from system.wiring import kill_system

    kill_system(system)
    if system.local:
        return
    import ray

    deadline = time.monotonic() + timeout_s
    for name in list(system.by_name):
        while time.monotonic() < deadline:
            try:
                ray.get_actor(name)
            except ValueError:
                break
            time.sleep(0.05)


def sb3_import_error() -> str | None:
    """Why Stable-Baselines3 (the benches' SAC anchor) does not import here, or None when it does."""
    try:
        import stable_baselines3  # noqa: F401
    except Exception as exc:  # an ImportError, or a broken install
        return f"{type(exc).__name__}: {exc}"
    return None


# ------------------------------------------------------------------------------------------------ train runs

RAY_START_TIMEOUT = "timed out during startup"
"""Ray's message when its local node did not register within its fixed 30 s (on a loaded machine): the run never
started, and :func:`train_process` starts it again under a new name."""
RAY_START_TRIES = 3


class BenchStopped(Exception):
    """A run was not started: the bench is stopping (:func:`run_all`)."""


class _Children:
    """The processes of the bench's runs now going, each in a session of its own, so that a signal to the bench's
    process group (a shell's Ctrl-C, ``timeout``) reaches them once, from :func:`run_all`, and not twice (a second
    SIGINT or SIGTERM makes ``dynaray train`` stop without its checkpoint). Each knows the bench's process id
    (``$DYNARAY_STOP_WITH_PARENT``): a ``dynaray train`` run stops as on SIGTERM when the bench dies without having
    stopped it (SIGKILL)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: set[subprocess.Popen] = set()
        self.stopping = 0
        """The signal that stops the bench (0: none yet): no process starts after it."""

    def run(self, command: list[str]) -> subprocess.CompletedProcess:
        """``command`` to its end, stdout and stderr captured (as ``subprocess.run``)."""
        with self._lock:
            if self.stopping:
                raise BenchStopped(f"not started: the bench was stopped by {signal.Signals(self.stopping).name}")
            env = {**os.environ, STOP_WITH_PARENT_ENV: str(os.getpid())}
            child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     start_new_session=True, env=env)
            self._live.add(child)
        try:
            out, err = child.communicate()
        finally:
            with self._lock:
                self._live.discard(child)
        return subprocess.CompletedProcess(child.args, child.returncode, out, err)

    def stop(self, signum: int) -> None:
        """Start no more processes; send ``signum`` to every one going."""
        with self._lock:
            self.stopping = signum
            for child in self._live:
                child.send_signal(signum)


_CHILDREN = _Children()


def child_process(command: list[str]) -> subprocess.CompletedProcess:
    """``command`` to its end, stdout and stderr captured, as one of the runs that :func:`run_all` stops.

    Raises:
        BenchStopped: the bench is stopping, so it was not started.
    """
    return _CHILDREN.run(command)


def run_all(tasks: Sequence[Callable[[], Any]], jobs: int, on_done: Callable[[int, Any], None]) -> int:
    """Run ``tasks`` (each one or more runs through :func:`train_process`), ``jobs`` at a time, in their order;
    ``on_done(index, result)`` in this thread as each ends. Returns 0, or the signal that stopped the bench: the
    first SIGINT or SIGTERM goes on to every run going (``dynaray train`` checkpoints, writes its evaluations and
    ends, exit 128 + signal), no task starts after it, and ``on_done`` still gets every task that ended; a second
    one ends the bench at once. Call from the main thread (signal handlers)."""
    caught: list[int] = []

    def handle(signum: int, frame: Any) -> None:
        if caught:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        caught.append(signum)
        progress(f"{signal.Signals(signum).name}: stopping every run going (again to end at once)")

    before = {s: signal.signal(s, handle) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with ThreadPoolExecutor(jobs) as pool:
            futures: dict[Future, int] = {pool.submit(task): i for i, task in enumerate(tasks)}
            pending = set(futures)
            while pending:
                done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                for future in sorted(done, key=futures.get):
                    if not future.cancelled() and not isinstance(future.exception(), BenchStopped):
                        on_done(futures[future], future.result())
                if caught and not _CHILDREN.stopping:
                    _CHILDREN.stop(caught[0])
                    for future in pending:
                        future.cancel()  # those not started
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)
        _CHILDREN.stopping = 0
    return caught[0] if caught else 0


def train_process(command: Callable[[str], list[str]], name: str, label: str) -> tuple[subprocess.CompletedProcess,
                                                                                      str, float]:
    """Run ``command(name)`` (a ``dynaray train`` command line for the run named ``name``) to its end, again as
    ``name-tryN`` while Ray's node did not start (:data:`RAY_START_TIMEOUT`), at most :data:`RAY_START_TRIES` times
    in all. Returns the last process (stdout and stderr captured), the name it ran under, and its wall seconds.

    Raises:
        BenchStopped: the bench is stopping (:func:`run_all`), so no process was started.
    """
    for attempt in range(RAY_START_TRIES):
        tried = name + (f"-try{attempt}" if attempt else "")
        start = time.monotonic()
        proc = child_process(command(tried))
        seconds = time.monotonic() - start
        if proc.returncode == 0 or RAY_START_TIMEOUT not in proc.stderr or _CHILDREN.stopping:
            break
        progress(f"{label}: Ray's node did not start within its 30 s (load); again")
    return proc, tried, seconds
