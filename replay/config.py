"""Configuration of the replay service (shards, capacities, limiter slack, client timeouts)."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from replay.persistence import FSYNC_MODES
from replay.rate_limiter import RateLimiterConfig

__all__ = ["ReplayConfig"]


@dataclass(frozen=True)
class ReplayConfig:
    """How replay is laid out and how its clients wait."""

    num_shards: int = 2
    """Replay shard actors; inserts are spread round robin, samples in proportion to shard sizes."""
    real_capacity: int = 1_000_000
    """Rows of table ``real`` over all shards (each shard holds ``shard_capacity(real_capacity)``)."""
    imagined_capacity: int = 400_000
    """Rows of table ``imagined`` over all shards."""
    non_finite: str = "reject"
    """Rows with NaN or inf: ``reject`` the whole insert with an error naming the column, or ``drop`` those rows and
    count them (``dropped_non_finite`` in the shard stats)."""
    real_disk_capacity: int = 0
    """Rows of ``real`` kept on disk (Parquet, memory-mapped) beyond ``real_capacity``, over all shards; uniform
    samples draw over memory and disk rows alike (see docs/architecture.md, "Larger than memory"). 0: off."""
    error_buffer_steps: int = 200
    """How many inserted rows a consumer may lag or lead its samples-per-insert ratio, over the whole table (each
    shard's limiter gets ``samples_per_insert * error_buffer_steps / num_shards``). Must be >= num_shards times the
    rows of one inserted chunk."""
    long_poll_s: float = 1.0
    """How long one shard call waits before answering "not now" (Ray only; in process calls never wait)."""
    sample_timeout_s: float = 600.0
    """How long a client waits for a sample before raising ReplayTimeout."""
    insert_timeout_s: float = 600.0
    """How long a client waits for a free insert slot (or a flush) before raising ReplayTimeout."""
    max_inflight_inserts: int = 4
    """Insert calls one client keeps in flight before ``insert`` blocks."""
    num_cpus: float = 0.5
    """Ray CPUs reserved per shard actor (read by system/)."""
    directory: str = ""
    """Where shards persist tables (``shard-<i>/<table>/`` below it); empty: the run directory's ``replay/``. A
    directory that already holds tables (an earlier run's, or an imported dataset) is recovered and continued."""
    persist_real: bool = True
    """Write table ``real`` to the directory: a write-ahead log before every acknowledged insert, plus snapshots."""
    persist_imagined: bool = False
    """Write table ``imagined`` too (model rollouts are cheap to make again, so off by default)."""
    fsync: str = "none"
    """``none`` (a killed shard loses nothing acknowledged), ``every_insert`` or ``interval`` (also survive a
    machine crash, fully or up to ``fsync_interval_ms``)."""
    fsync_interval_ms: int = 100
    """With ``fsync: interval``, the most milliseconds of acknowledged inserts a machine crash can lose."""
    snapshot_every_rows: int = 200_000
    """Compact a persisted table into a Parquet snapshot after this many inserted rows (whole table; 0 never)."""
    max_restarts: int = 10
    """How often Ray restarts a shard actor that died (it recovers its persisted tables); -1 without limit."""
    shard_restart_timeout_s: float = 120.0
    """How long a client keeps retrying calls to a shard that died (while Ray restarts it) before it gives up."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type in ("str", "bool"):
                ok = type(value).__name__ == f.type
                kind = f"a {f.type}"
            elif f.type == "int":
                ok = isinstance(value, int) and not isinstance(value, bool)
                kind = "an int"
            else:
                ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                kind = "a finite number"
            if not ok:
                raise ValueError(f"replay.{f.name}={value!r}: expected {kind}")
        bounds = {
            "num_shards": (1, ">= 1"),
            "real_capacity": (1, ">= 1"),
            "imagined_capacity": (1, ">= 1"),
            "real_disk_capacity": (0, ">= 0"),
            "error_buffer_steps": (1, ">= 1"),
            "long_poll_s": (0, ">= 0"),
            "max_inflight_inserts": (1, ">= 1"),
            "num_cpus": (0, ">= 0"),
            "fsync_interval_ms": (1, ">= 1"),
            "snapshot_every_rows": (0, ">= 0"),
            "max_restarts": (-1, ">= -1"),
        }
        for name, (low, text) in bounds.items():
            if getattr(self, name) < low:
                raise ValueError(f"replay.{name}={getattr(self, name)!r}: expected {text}")
        if self.non_finite not in ("reject", "drop"):
            raise ValueError(f"replay.non_finite={self.non_finite!r}: expected 'reject' or 'drop'")
        if self.fsync not in FSYNC_MODES:
            raise ValueError(f"replay.fsync={self.fsync!r}: expected one of {list(FSYNC_MODES)}")
        for name in ("sample_timeout_s", "insert_timeout_s", "shard_restart_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"replay.{name}={getattr(self, name)!r}: expected > 0")

    def shard_capacity(self, total: int) -> int:
        """Rows one shard holds of a table with ``total`` rows over all shards (rounded up)."""
        return -(-total // self.num_shards)

    def limiter(self, samples_per_insert: float, min_size: int) -> RateLimiterConfig:
        """One shard's limiter for a consumer that needs ``min_size`` rows in the whole table before sampling.

        Inserts go round robin and samples in proportion to shard sizes, so each shard sees 1/K of both: min size
        and error buffer are split evenly, keeping the whole table within ``error_buffer_steps`` of the ratio.
        """
        return RateLimiterConfig(
            samples_per_insert=samples_per_insert,
            min_size=max(1, -(-min_size // self.num_shards)),
            error_buffer=samples_per_insert * self.error_buffer_steps / self.num_shards,
        )
