"""``dynaray replay export``: a persisted replay table as plain Parquet files.

:func:`export_table` writes what :func:`replay.stored.read_table` read as one Parquet file per shard,
``<table>-shard-<i>.parquet``: the table's columns as in :func:`replay.schema.arrow_schema` (vectors as
``fixed_size_list``, readable by pyarrow, pandas and DuckDB), rows oldest to newest as the shard holds them (rows
removed after ``max_times_sampled`` samples left out), plus

    __shard      int64    the shard the row was stored on
    __key        int64    the row's key within its shard (a ReplayClient's global key is ``__key * K + __shard``)
    __priority   float64  prioritized tables only: the priority as last set by ``update_priorities`` (new rows get
                          the running maximum; 1 where a snapshot stored it with ``priority_exponent`` 0)

and JSON under the schema metadata key ``dynaray.export`` (table, shard, number of shards, insert counter, source).
"""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from replay.schema import arrow_schema, chunk_to_record_batch
from replay.stored import OfflineError, ShardRows, StoredTable

__all__ = ["EXPORT_KEY_FIELD", "EXPORT_METADATA_KEY", "EXPORT_PRIORITY_FIELD", "SHARD_FIELD", "export_table"]

EXPORT_METADATA_KEY = b"dynaray.export"
"""Schema metadata key of an exported file's JSON."""
SHARD_FIELD, EXPORT_KEY_FIELD, EXPORT_PRIORITY_FIELD = "__shard", "__key", "__priority"
"""Extra columns of an exported file."""
EXPORT_FORMAT_VERSION = 1


def _export_arrow_table(stored: StoredTable, shard: ShardRows) -> pa.Table:
    batch = chunk_to_record_batch(shard.chunk, stored.columns, validate=False)
    fields = list(arrow_schema(stored.columns))
    arrays = list(batch.columns)
    fields.append(pa.field(SHARD_FIELD, pa.int64(), nullable=False))
    arrays.append(pa.array(np.full(shard.rows, shard.index, dtype=np.int64)))
    fields.append(pa.field(EXPORT_KEY_FIELD, pa.int64(), nullable=False))
    arrays.append(pa.array(shard.keys))
    if stored.prioritized:
        priorities = shard.priorities if shard.priorities is not None else np.ones(shard.rows)
        fields.append(pa.field(EXPORT_PRIORITY_FIELD, pa.float64(), nullable=False))
        arrays.append(pa.array(np.asarray(priorities, dtype=np.float64)))
    meta = {
        "version": EXPORT_FORMAT_VERSION,
        "table": stored.name,
        "shard": shard.index,
        "num_shards": len(stored.shards),
        "inserted": shard.inserted,
        "source": os.path.abspath(stored.directory),
    }
    schema = pa.schema(fields, metadata={EXPORT_METADATA_KEY: json.dumps(meta).encode()})
    return pa.Table.from_arrays(arrays, schema=schema)


def export_table(stored: StoredTable, destination: str) -> list[str]:
    """Write ``stored`` as ``<destination>/<table>-shard-<i>.parquet``, one file per shard; return the paths.

    Raises:
        OfflineError: the table has no rows to export (no readable files), or ``destination`` already holds
            Parquet files (nothing is written then).
    """
    if not stored.columns:
        raise OfflineError(f"table {stored.name!r} in {stored.directory!r} has no rows on disk to export")
    if os.path.exists(destination) and not os.path.isdir(destination):
        raise OfflineError(f"--to {destination!r} exists and is not a directory")
    if os.path.isdir(destination):
        existing = sorted(n for n in os.listdir(destination) if n.endswith(".parquet"))
        if existing:
            raise OfflineError(
                f"{destination!r} already holds Parquet files ({', '.join(existing[:3])}); export into a new or "
                f"empty directory"
            )
    os.makedirs(destination, exist_ok=True)
    paths = []
    for shard in stored.shards:
        path = os.path.join(destination, f"{stored.name}-shard-{shard.index}.parquet")
        tmp = path + ".tmp"
        try:
            pq.write_table(_export_arrow_table(stored, shard), tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        paths.append(path)
    return paths
