"""``dynaray replay inspect``: sizes, files and column statistics of a replay directory, and a run's rates.

:func:`inspect_replay` reads every table with :func:`replay.stored.read_table` (read-only, as a recovering shard
would hold it) and summarises it; :func:`run_rates` reads a run's ``metrics.parquet``.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from replay.schema import ColumnSpec
from replay.stored import OfflineError, read_table, shard_indices, table_names

__all__ = ["ColumnStats", "column_stats", "inspect_replay", "run_rates"]


@dataclass
class ColumnStats:
    """Summary of one column; a vector's min/mean/max/nan are over all its components."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    min: float | int | None
    """Smallest value (an int for integer columns; None for bool and empty columns)."""
    mean: float | None
    max: float | int | None
    nan: int
    """Non-finite values (NaN or inf) in a float column."""
    true: int | None = None
    """Bool columns: rows that are True."""
    component_means: tuple[float, float] | None = None
    """Vectors: the smallest and largest per-component mean."""
    component_stds: tuple[float, float] | None = None
    """Vectors: the smallest and largest per-component standard deviation."""


def column_stats(columns: Sequence[ColumnSpec], chunk: Mapping[str, np.ndarray]) -> list[ColumnStats]:
    """Min/mean/max/non-finite count per column (vectors per component, summarised)."""
    out = []
    for spec in columns:
        values = np.asarray(chunk[spec.name])
        rows = len(values)
        if rows == 0:
            out.append(ColumnStats(spec.name, spec.dtype, spec.shape, None, None, None, 0))
            continue
        if spec.np_dtype.kind == "b":
            true = int(values.sum())
            out.append(ColumnStats(spec.name, spec.dtype, spec.shape, None, true / values.size, None, 0, true=true))
            continue
        if spec.np_dtype.kind in "iu" and not spec.shape:
            mean = float(values.astype(np.float64).mean())
            out.append(ColumnStats(spec.name, spec.dtype, spec.shape, int(values.min()), mean, int(values.max()), 0))
            continue
        flat = values.reshape(rows, -1).astype(np.float64)
        finite = np.isfinite(flat)
        nan = int((~finite).sum())
        good = np.where(finite, flat, np.nan)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
            lo, mean, hi = np.nanmin(good), np.nanmean(good), np.nanmax(good)
            means = stds = None
            if spec.shape:
                per_mean, per_std = np.nanmean(good, axis=0), np.nanstd(good, axis=0)
                means = (float(np.nanmin(per_mean)), float(np.nanmax(per_mean)))
                stds = (float(np.nanmin(per_std)), float(np.nanmax(per_std)))
        none_if_nan = [None if math.isnan(v) else float(v) for v in (lo, mean, hi)]
        out.append(ColumnStats(spec.name, spec.dtype, spec.shape, *none_if_nan, nan, None, means, stds))
    return out


def run_rates(metrics: pa.Table) -> dict:
    """Rates of a run from its ``metrics.parquet`` (one row per report).

    Returns ``{"env_steps", "wall_time_s", "overall": {name: value}, "per_report": {column: {"mean", "last"}}}``:
    overall rates from the last report's totals (env steps/s, policy and world-model updates/s and per env step),
    and every ``*_per_s`` column's mean over reports and last value (env steps, learner updates, and replay inserts
    and samples where the run recorded them).
    """
    if metrics.num_rows == 0:
        return {"env_steps": 0, "wall_time_s": 0.0, "overall": {}, "per_report": {}}
    last = {name: metrics.column(name)[-1].as_py() for name in metrics.column_names}
    wall = float(last.get("wall_time_s") or 0.0)
    env_steps = int(last.get("env_steps") or 0)
    overall: dict[str, float] = {}
    if wall > 0:
        overall["env_steps_per_s"] = env_steps / wall
    for role in ("policy", "world_model"):
        total = last.get(f"{role}_total_updates")
        if total is None:
            continue
        if wall > 0:
            overall[f"{role}_updates_per_s"] = total / wall
        if env_steps > 0:
            overall[f"{role}_updates_per_env_step"] = total / env_steps
    per_report = {}
    for name in metrics.column_names:
        if not name.endswith("_per_s"):
            continue
        values = metrics.column(name).to_numpy(zero_copy_only=False).astype(np.float64)
        values = values[np.isfinite(values)]
        if len(values):
            per_report[name] = {"mean": float(values.mean()), "last": float(values[-1])}
    return {"env_steps": env_steps, "wall_time_s": wall, "overall": overall, "per_report": per_report}


def inspect_replay(
    directory: str,
    capacities: Mapping[str, tuple[int, int]] | None = None,
    metrics_path: str | None = None,
    tables: Sequence[str] | None = None,
) -> dict:
    """Sizes, files and column statistics of every table of a replay directory, and a run's rates.

    Args:
        directory: the replay directory.
        capacities: per table, where known, the rows per shard in memory and in its cold tier
            (``capacity`` and ``disk_capacity`` of :func:`replay.stored.read_table`).
        metrics_path: a run's ``metrics.parquet``, for :func:`run_rates`; skipped when None or missing.
        tables: the tables to inspect; default every table in the directory.

    Returns:
        ``{"directory", "shards", "tables": {name: {"rows", "inserted", "disk_bytes", "prioritized", "capacity",
        "shards": [{"index", "rows", "inserted", "disk_bytes", "generations"}], "columns": [ColumnStats],
        "episodes" (distinct writer and episode ids), "terminated", "truncated" (rows with the flag), "writers"}},
        "rates": run_rates(...) or None}``.

    Raises:
        OfflineError: ``directory`` has no shard directories, or no table of ``tables``.
    """
    indices = shard_indices(directory)
    if not indices:
        raise OfflineError(f"{directory!r} is not a replay directory: no shard-<i> directories in it")
    found = table_names(directory)
    unknown = [t for t in tables or () if t not in found]
    if unknown:
        raise OfflineError(f"replay directory {directory!r} has no table(s) {unknown}; it has {found}")
    report = {}
    for name in tables or found:
        capacity, disk_capacity = (capacities or {}).get(name, (None, None))
        stored = read_table(directory, name, capacity, disk_capacity)
        rows = stored.concatenated() if stored.columns else {}
        info = {
            "rows": stored.rows,
            "inserted": sum(s.inserted for s in stored.shards),
            "disk_bytes": sum(s.disk_bytes for s in stored.shards),
            "prioritized": stored.prioritized,
            "capacity": None if capacity is None else capacity + (disk_capacity or 0),
            "shards": [
                {"index": s.index, "rows": s.rows, "inserted": s.inserted, "disk_bytes": s.disk_bytes,
                 "generations": s.generations}
                for s in stored.shards
            ],
            "columns": column_stats(stored.columns, rows) if stored.columns else [],
        }
        if "episode_id" in rows:
            writers = rows.get("writer_id", np.zeros_like(rows["episode_id"]))
            info["episodes"] = int(len(np.unique(np.stack([writers, rows["episode_id"]], axis=1), axis=0)))
        for flag in ("terminated", "truncated"):
            if flag in rows:
                info[flag] = int(rows[flag].sum())
        if "writer_id" in rows:
            info["writers"] = int(len(np.unique(rows["writer_id"])))
        report[name] = info
    rates = None
    if metrics_path is not None and os.path.isfile(metrics_path):
        rates = run_rates(pq.read_table(metrics_path))
    return {"directory": directory, "shards": max(indices) + 1, "tables": report, "rates": rates}
