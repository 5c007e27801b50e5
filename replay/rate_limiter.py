"""Per-consumer sample/insert rate limiting, after Reverb's ``SampleToInsertRatio``.

For one consumer of one table let ``lag = samples_per_insert * (inserted - min_size) - sampled``: how many rows
the consumer is behind its target (negative: ahead). Then

- inserts are free while ``inserted < min_size`` (warm-up is never blocked);
- a sample of ``m`` rows is admitted when ``inserted >= min_size`` and ``lag - m >= -error_buffer``;
- after warm-up an insert of ``n`` rows is admitted when ``lag + n * samples_per_insert <= error_buffer``.

So ``-error_buffer <= lag <= error_buffer`` holds after every admitted call (the insert that completes warm-up
may overshoot by less than ``n * samples_per_insert``), and the sampled/inserted ratio converges to
``samples_per_insert`` whichever side is faster.

Liveness: an insert of ``n`` rows and a sample of ``m`` rows can both always proceed once the other side makes
progress iff ``n * samples_per_insert + m <= 2 * error_buffer``; choose ``error_buffer >= max(n *
samples_per_insert, m)``. A call with ``n * samples_per_insert > 2 * error_buffer`` (or ``m > 2 *
error_buffer``) could never be admitted once the table is warm: :meth:`RateLimiter.check_insert` and
:meth:`RateLimiter.check_sample` raise ``ValueError`` for it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["RateLimiter", "RateLimiterConfig"]


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class RateLimiterConfig:
    """How fast one consumer samples a table relative to inserts (see the module docstring)."""

    samples_per_insert: float
    """Rows the consumer samples per row inserted, e.g. batch 256 x 20 updates per env step = 5120."""
    min_size: int
    """Rows the table must have received before the consumer may sample; inserts up to here never wait."""
    error_buffer: float
    """How many sampled rows the consumer may run ahead of or behind its target before the faster side waits.
    Must be at least ``rows per insert * samples_per_insert`` and ``rows per sample`` for progress."""

    def __post_init__(self) -> None:
        if not _is_number(self.samples_per_insert) or self.samples_per_insert <= 0:
            raise ValueError(
                f"RateLimiterConfig.samples_per_insert must be a finite number > 0, got {self.samples_per_insert!r}"
            )
        if not isinstance(self.min_size, int) or isinstance(self.min_size, bool) or self.min_size < 1:
            raise ValueError(f"RateLimiterConfig.min_size must be an int >= 1, got {self.min_size!r}")
        if not _is_number(self.error_buffer) or self.error_buffer < 0:
            raise ValueError(f"RateLimiterConfig.error_buffer must be a finite number >= 0, got {self.error_buffer!r}")


class RateLimiter:
    """Counts rows inserted and sampled for one consumer and admits calls (see the module docstring).

    Not thread-safe: the owning table's lock protects it.
    """

    __slots__ = ("config", "name", "inserted", "sampled")

    def __init__(self, config: RateLimiterConfig, name: str = "consumer"):
        self.config = config
        self.name = name
        self.inserted = 0
        """Rows inserted into the table."""
        self.sampled = 0
        """Rows this consumer has sampled."""

    @property
    def lag(self) -> float:
        """Sampled rows the consumer is behind its target ``spi * (inserted - min_size)``; negative: ahead."""
        c = self.config
        return c.samples_per_insert * (self.inserted - c.min_size) - self.sampled

    def can_insert(self, n: int) -> bool:
        """Whether an insert of ``n`` rows is admitted now."""
        c = self.config
        return self.inserted < c.min_size or self.lag + n * c.samples_per_insert <= c.error_buffer

    def can_sample(self, n: int) -> bool:
        """Whether a sample of ``n`` rows is admitted now."""
        c = self.config
        return self.inserted >= c.min_size and self.lag - n >= -c.error_buffer

    def check_insert(self, n: int) -> None:
        """Raise ``ValueError`` if an insert of ``n`` rows could never be admitted once the table is warm."""
        c = self.config
        need = n * c.samples_per_insert
        if need > 2 * c.error_buffer:
            raise ValueError(
                f"insert of {n} rows can never be admitted by consumer {self.name!r}: it adds {need:g} sample "
                f"credits ({n} rows x samples_per_insert {c.samples_per_insert:g}) but the limiter window is "
                f"2 x error_buffer = {2 * c.error_buffer:g}; insert at most "
                f"{int(c.error_buffer / c.samples_per_insert)} rows per call or raise error_buffer to >= {need:g}"
            )

    def check_sample(self, n: int) -> None:
        """Raise ``ValueError`` if a sample of ``n`` rows could never be admitted once the table is warm."""
        c = self.config
        if n > 2 * c.error_buffer:
            raise ValueError(
                f"sample of {n} rows can never be admitted for consumer {self.name!r}: the limiter window is "
                f"2 x error_buffer = {2 * c.error_buffer:g}; sample at most {int(c.error_buffer)} rows per call "
                f"or raise error_buffer to >= {n}"
            )

    def on_insert(self, n: int) -> None:
        """Record ``n`` inserted rows."""
        self.inserted += n

    def on_sample(self, n: int) -> None:
        """Record ``n`` rows sampled by this consumer."""
        self.sampled += n

    def stats(self) -> dict:
        """Counters and configuration: inserted, sampled, lag, samples_per_insert, min_size, error_buffer."""
        c = self.config
        return {
            "inserted": self.inserted,
            "sampled": self.sampled,
            "lag": self.lag,
            "samples_per_insert": c.samples_per_insert,
            "min_size": c.min_size,
            "error_buffer": c.error_buffer,
        }
