"""``dynaray replay``: export a run's replay table to Parquet, import an offline dataset, inspect a replay directory.

    dynaray replay export RUN_DIR|REPLAY_DIR [--table real] --to DIR
    dynaray replay import DATASET --to REPLAY_DIR [--table real] [--shards K]
    dynaray replay inspect RUN_DIR|REPLAY_DIR [--table TABLE ...]

A run directory (it has ``config.yaml``) stands for its replay directory (``replay.directory`` of its config, else
``RUN_DIR/replay``); its config gives the tables' capacities and its ``metrics.parquet`` the rates. Reading never
takes a shard's LOCK, so a live run can be exported or inspected. The logic is in :mod:`replay.export`,
:mod:`replay.importer` and :mod:`replay.inspection` (reading through :mod:`replay.stored`); formats in
docs/replay.md. Bad input ends in one line ``dynaray: error: ...`` on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Callable

EXIT_BAD_INPUT = 2


class _BadInput(Exception):
    """An input problem detected here (paths, run directory); reported as one line."""


def _fail(message: str) -> int:
    print(f"dynaray: error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def _run_guarded(action: Callable[[], int]) -> int:
    """Run ``action``; bad input and library errors become one line and exit 2, warnings one line each."""
    from replay.stored import OfflineError
    from replay.schema import SchemaError

    # the persistence module logs what it also warns about: show it once, as a warning line
    library_log = logging.getLogger("replay")
    if not any(isinstance(h, logging.NullHandler) for h in library_log.handlers):
        library_log.addHandler(logging.NullHandler())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.simplefilter("ignore", ResourceWarning)  # garbage collection of other code's files, not ours
        try:
            code = action()
        except BrokenPipeError:  # the reader went away (`... | head`): stop quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            code = 0
        except (_BadInput, OfflineError, SchemaError) as exc:
            code = _fail(str(exc))
        except (ValueError, RuntimeError, OSError) as exc:
            code = _fail(f"{type(exc).__name__}: {exc}".splitlines()[0])
        finally:
            for warning in caught:
                print(f"dynaray: warning: {warning.message}", file=sys.stderr)
    return code


def _locate(path: str) -> tuple[str, dict[str, tuple[int, int]] | None, Path | None]:
    """The replay directory a path stands for, the tables' per-shard capacities (in memory, in the cold tier) and
    the metrics file, if known."""
    from replay.stored import shard_indices

    where = Path(path)
    if not where.exists():
        raise _BadInput(f"{path!r} does not exist")
    if (where / "config.yaml").is_file():
        from system.config import ConfigError
        from system.run_dir import CheckpointError, RunDir

        run_dir = RunDir(where)
        try:
            config = run_dir.load_config()
        except (ConfigError, CheckpointError, ValueError) as exc:
            raise _BadInput(f"run directory {path!r}: cannot load config.yaml ({exc})") from None
        directory = run_dir.replay_directory(config)
        if not shard_indices(str(directory)):
            raise _BadInput(
                f"run directory {path!r} has no persisted replay tables: no shard-<i> directories in {str(directory)!r}"
            )
        replay = config.replay
        capacities = {
            "real": (replay.shard_capacity(replay.real_capacity), replay.shard_capacity(replay.real_disk_capacity)),
            "imagined": (replay.shard_capacity(replay.imagined_capacity), 0),
        }
        return str(directory), capacities, where / "metrics.parquet"
    if shard_indices(path):
        return path, None, None
    raise _BadInput(
        f"{path!r} is neither a run directory (no config.yaml) nor a replay directory (no shard-<i> directories)"
    )


# ---- export ------------------------------------------------------------------------------------------------------


def export(args: argparse.Namespace) -> int:
    def action() -> int:
        from replay.export import export_table
        from replay.stored import read_table

        directory, capacities, _ = _locate(args.source)
        stored = read_table(directory, args.table, *(capacities or {}).get(args.table, (None, None)))
        paths = export_table(stored, args.to)
        names = ", ".join(Path(p).name for p in paths)
        print(
            f"dynaray: exported table {args.table!r} of {directory}: {stored.rows:,} rows from {len(paths)} shard(s) "
            f"to {args.to} ({names})"
        )
        return 0

    return _run_guarded(action)


# ---- import ------------------------------------------------------------------------------------------------------


def import_(args: argparse.Namespace) -> int:
    def action() -> int:
        from replay.importer import IMPORT_WRITER_ID, import_dataset

        if args.shards is not None and args.shards < 1:
            raise _BadInput(f"--shards {args.shards}: expected an int >= 1")
        target = Path(args.to)
        if target.exists() and (target / "config.yaml").is_file():
            raise _BadInput(
                f"--to {args.to!r} is a run directory; import into a replay directory, e.g. {str(target / 'replay')!r}"
            )
        result = import_dataset(args.source, args.to, args.table, args.shards)
        files = f"{result.files} file" + ("s" if result.files != 1 else "")
        per_shard = " + ".join(f"{n:,}" for n in result.rows_per_shard)
        print(
            f"dynaray: imported {result.rows:,} rows ({result.episodes:,} episodes, {result.source_format}, {files}) "
            f"into table {args.table!r} of {args.to}: {per_shard} rows on {len(result.rows_per_shard)} shards; "
            f"writer id {IMPORT_WRITER_ID}, seq from {result.first_seq:,}"
        )
        if result.dropped_rows:
            print(
                f"dynaray: dropped the last step of each episode ({result.dropped_rows:,} rows, "
                f"{result.dropped_terminal:,} of them terminal): the dataset has no next_observations"
            )
        print(f"dynaray: train from it with replay.directory={args.to}")
        return 0

    return _run_guarded(action)


# ---- inspect -----------------------------------------------------------------------------------------------------


def _bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def _num(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) < 10**15 else f"{value:#x}"
    if math.isnan(value):
        return "nan"
    return f"{value:.4g}"


def _column_line(stats) -> str:
    kind = stats.dtype + (f"[{'x'.join(map(str, stats.shape))}]" if stats.shape else "")
    if stats.true is not None:
        share = f" ({stats.mean:.2%})" if stats.mean is not None else ""
        return f"    {stats.name:<16} {kind:<14} true {stats.true:,}{share}"
    line = (
        f"    {stats.name:<16} {kind:<14} min {_num(stats.min):>10}  mean {_num(stats.mean):>10}  "
        f"max {_num(stats.max):>10}"
    )
    if stats.dtype.startswith("float"):
        line += f"  non-finite {stats.nan:,}"
    if stats.component_means is not None:
        (m0, m1), (s0, s1) = stats.component_means, stats.component_stds
        line += f"  (per component: means {_num(m0)}..{_num(m1)}, stds {_num(s0)}..{_num(s1)})"
    return line


def render_inspection(report: dict) -> str:
    """The text ``dynaray replay inspect`` prints for :func:`replay.inspection.inspect_replay`'s report."""
    lines = [f"replay directory {report['directory']}: {report['shards']} shard(s)"]
    for name, table in report["tables"].items():
        capacity = f" (capacity {table['capacity']:,} per shard)" if table["capacity"] is not None else ""
        priorities = ", with priorities" if table["prioritized"] else ""
        lines.append(
            f"table {name}: {table['rows']:,} rows{capacity}, inserted {table['inserted']:,}, "
            f"{_bytes(table['disk_bytes'])} on disk{priorities}"
        )
        lines.append(f"    {'shard':<6} {'rows':>12} {'inserted':>12} {'disk':>10}  snapshots  logs")
        for shard in table["shards"]:
            gens = shard["generations"]
            lines.append(
                f"    {shard['index']:<6} {shard['rows']:>12,} {shard['inserted']:>12,} "
                f"{_bytes(shard['disk_bytes']):>10}  {str(gens['snapshot']):<9}  {gens['wal']}"
            )
        if "episodes" in table:
            lines.append(
                f"    episodes {table['episodes']:,} (terminated rows {table.get('terminated', 0):,}, truncated rows "
                f"{table.get('truncated', 0):,}), writers {table.get('writers', 0):,}"
            )
        lines.extend(_column_line(stats) for stats in table["columns"])
    rates = report.get("rates")
    if rates is not None:
        lines.append(f"rates (metrics.parquet: {rates['env_steps']:,} env steps in {rates['wall_time_s']:.0f} s)")
        overall = rates["overall"]
        per_report = rates["per_report"]
        for key, label in (
            ("env_steps_per_s", "env steps/s"),
            ("policy_updates_per_s", "policy updates/s"),
            ("world_model_updates_per_s", "world-model updates/s"),
        ):
            parts = []
            if key in overall:
                parts.append(f"{_num(overall[key])} over the run")
            if key in per_report:
                parts.append(f"{_num(per_report[key]['mean'])} mean of reports, {_num(per_report[key]['last'])} last")
            role = key.rsplit("_updates_per_s", 1)[0]
            if f"{role}_updates_per_env_step" in overall:
                parts.append(f"{_num(overall[f'{role}_updates_per_env_step'])} per env step")
            if parts:
                lines.append(f"    {label:<22} " + ", ".join(parts))
        shown = {"env_steps_per_s", "policy_updates_per_s", "world_model_updates_per_s"}
        for key, values in per_report.items():
            if key not in shown:
                lines.append(f"    {key:<22} {_num(values['mean'])} mean of reports, {_num(values['last'])} last")
    return "\n".join(lines)


def inspect(args: argparse.Namespace) -> int:
    def action() -> int:
        from replay.inspection import inspect_replay

        directory, capacities, metrics = _locate(args.source)
        report = inspect_replay(directory, capacities, str(metrics) if metrics else None, args.table or None)
        print(render_inspection(report))
        return 0

    return _run_guarded(action)


def register(verbs: argparse._SubParsersAction) -> None:
    """Add the ``replay`` verb and its subcommands to the CLI's verbs."""
    p = verbs.add_parser("replay", help="export, import and inspect replay tables")
    commands = p.add_subparsers(dest="replay_command", required=True)

    c = commands.add_parser("export", help="write a persisted replay table as Parquet (one file per shard)")
    c.add_argument("source", metavar="RUN_DIR", help="a run directory or a replay directory")
    c.add_argument("--table", default="real", help="the table to export (default real)")
    c.add_argument("--to", required=True, metavar="DIR", help="a new or empty directory for the Parquet files")
    c.set_defaults(func=export)

    c = commands.add_parser("import", help="load an offline dataset (Parquet, D4RL or Minari) into a table")
    c.add_argument("source", metavar="DIR", help="a .parquet or .npz file, a directory of them, or a Minari dataset")
    c.add_argument("--to", required=True, metavar="REPLAY_DIR",
                   help="the replay directory to write, e.g. runs/offline/replay (train with replay.directory=...)")
    c.add_argument("--table", default="real", help="the table to load into (default real)")
    c.add_argument("--shards", type=int, default=None,
                   help="shards to spread over (default: as many as REPLAY_DIR has, else 2)")
    c.set_defaults(func=import_)

    c = commands.add_parser("inspect", help="print sizes, files, rates and column statistics")
    c.add_argument("source", metavar="RUN_DIR", help="a run directory or a replay directory")
    c.add_argument("--table", action="append", default=None,
                   help="a table to inspect (repeatable; default every table)")
    c.set_defaults(func=inspect)
