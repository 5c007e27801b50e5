"""Configuration of the replay service (shards, capacities, limiter slack, client timeouts)."""

from __future__ import annotations

from dataclasses import dataclass, field

from replay.persistence import FSYNC_MODES
from replay.rate_limiter import RateLimiterConfig

__all__ = ["ReplayConfig"]


@dataclass(frozen=True)
class ReplayConfig:
    """How replay is laid out and how its clients wait. ``metadata["check"]`` declares a field's constraint (checked
    by ``system.config`` when a config is loaded)."""

    num_shards: int = field(default=2, metadata={"check": ">= 1"})
    """Replay shard actors; inserts are spread round robin, samples in proportion to shard sizes."""
    real_capacity: int = field(default=1_000_000, metadata={"check": ">= 1"})
    """Rows of table ``real`` over all shards (each shard holds ``shard_capacity(real_capacity)``)."""
    imagined_capacity: int = field(default=100_000, metadata={"check": ">= 1"})
    """Rows of table ``imagined`` over all shards."""
    non_finite: str = field(default="reject", metadata={"check": ("reject", "drop")})
    """Rows with NaN or inf: ``reject`` the whole insert with an error naming the column, or ``drop`` those rows and
    count them (``dropped_non_finite`` in the shard stats)."""
    real_disk_capacity: int = field(default=0, metadata={"check": ">= 0", "note": "0: off"})
    """Rows of ``real`` kept on disk (Parquet, memory-mapped) beyond ``real_capacity``, over all shards; uniform
    samples draw over memory and disk rows alike (see docs/architecture.md, "Larger than memory"). 0: off."""
    error_buffer_steps: int = field(default=100, metadata={"check": ">= 1"})
    """How many inserted rows a consumer may lag or lead its samples-per-insert ratio, over the whole table (each
    shard's limiter gets ``samples_per_insert * error_buffer_steps / num_shards``). One insert (a rollout chunk, a
    gateway insert) may hold at most ``2 * error_buffer_steps / num_shards`` rows (the system config checks it)."""
    long_poll_s: float = field(default=1.0, metadata={"check": ">= 0"})
    """How long one shard call waits before answering "not now" (Ray only; in process calls never wait)."""
    sample_timeout_s: float = field(default=600.0, metadata={"check": "> 0"})
    """How long a client waits for a sample before raising ReplayTimeout."""
    insert_timeout_s: float = field(default=600.0, metadata={"check": "> 0"})
    """How long a client waits for a free insert slot (or a flush) before raising ReplayTimeout."""
    max_inflight_inserts: int = field(default=4, metadata={"check": ">= 1"})
    """Insert calls one client keeps in flight before ``insert`` blocks."""
    learner_sampling: str = field(default="one_shard", metadata={"check": ("one_shard", "split")})
    """How the learners' batches are sampled (``ReplayClient.submit_batch``): ``one_shard`` takes each batch whole
    from one shard chosen in proportion to its size (every row as likely as under uniform sampling over all shards),
    several batches per shard call, calls prefetched (``replay.client.SampleStream``); ``split`` splits every batch
    over all shards in proportion to their sizes, one call per shard per batch (slower through Ray)."""
    sample_batches_per_call: int = field(default=16, metadata={"check": ">= 1"})
    """With ``learner_sampling: one_shard``, whole batches one shard call asks for (the shard gives as many as the
    consumer's rate limiter admits at once, at least one)."""
    sample_calls_in_flight: int = field(default=2, metadata={"check": ">= 1"})
    """With ``learner_sampling: one_shard``, shard calls a learner's sample stream keeps in flight (so at most this
    many times ``sample_batches_per_call`` batches are drawn before the learner uses them)."""
    num_cpus: float = field(default=0.5, metadata={"check": ">= 0"})
    """Ray CPUs reserved per shard actor (read by system/)."""
    directory: str = ""
    """Where shards persist tables (``shard-<i>/<table>/`` below it); empty: the run directory's ``replay/``. A
    directory that already holds tables (an earlier run's, or an imported dataset) is recovered and continued."""
    persist_real: bool = True
    """Write table ``real`` to the directory: a write-ahead log before every acknowledged insert, plus snapshots."""
    persist_imagined: bool = False
    """Write table ``imagined`` too (model rollouts are cheap to make again, so off by default)."""
    fsync: str = field(default="none", metadata={"check": tuple(FSYNC_MODES)})
    """``none`` (a killed shard loses nothing acknowledged), ``every_insert`` or ``interval`` (also survive a
    machine crash, fully or up to ``fsync_interval_ms``)."""
    fsync_interval_ms: int = field(default=100, metadata={"check": ">= 1"})
    """With ``fsync: interval``, the most milliseconds of acknowledged inserts a machine crash can lose."""
    snapshot_every_rows: int = field(default=200_000, metadata={"check": ">= 0", "note": "0: never"})
    """Compact a persisted table into a Parquet snapshot after this many inserted rows (whole table; 0 never)."""
    max_restarts: int = field(default=10, metadata={"check": ">= -1", "note": "-1: no limit"})
    """How often Ray restarts a shard actor that died (it recovers its persisted tables); -1 without limit."""
    shard_restart_timeout_s: float = field(default=120.0, metadata={"check": "> 0"})
    """How long a client keeps retrying calls to a shard that died (while Ray restarts it) before it gives up."""

    def max_insert_rows(self) -> int:
        """The most rows one insert may hold: more could never pass a shard's rate limiter (each shard's error buffer
        is ``samples_per_insert * error_buffer_steps / num_shards``, an insert of n rows needs ``n *
        samples_per_insert <= 2 x`` that)."""
        return 2 * self.error_buffer_steps // self.num_shards

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
