"""Replay: Arrow row schema, columnar ring-buffer tables, per-consumer rate limiting, shards and their client.

See docs/architecture.md ("Replay") for the roles and the contracts with actors and learners. Nothing here
imports Ray; shards are plain objects that system/ runs as Ray actors.
"""

from replay.client import PendingSample, ReplayClient, ReplayTimeout, SampleStream, StreamedSample
from replay.config import ReplayConfig
from replay.rate_limiter import RateLimiter, RateLimiterConfig
from replay.schema import (
    ColumnSpec,
    SchemaError,
    arrow_schema,
    chunk_to_record_batch,
    record_batch_to_chunk,
    transition_columns,
    validate_chunk,
)
from replay.shard import ReplayShard
from replay.table import Table, TableConfig

__all__ = [
    "ColumnSpec",
    "PendingSample",
    "RateLimiter",
    "RateLimiterConfig",
    "ReplayClient",
    "ReplayConfig",
    "ReplayShard",
    "ReplayTimeout",
    "SampleStream",
    "SchemaError",
    "StreamedSample",
    "Table",
    "TableConfig",
    "arrow_schema",
    "chunk_to_record_batch",
    "record_batch_to_chunk",
    "transition_columns",
    "validate_chunk",
]
