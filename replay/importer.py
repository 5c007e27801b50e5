"""``dynaray replay import``: an offline dataset validated, then logged into a replay directory.

:func:`import_dataset` reads a dataset (:func:`replay.datasets.load_dataset`), checks all of it against the target
table (its existing files, or a new transition table shaped like the dataset), and only then logs it with
:class:`replay.persistence.TableStore` (one ``append_insert`` per chunk of whole episodes, chunks spread round
robin over the shards), so a training run started with ``replay.directory=<that directory>`` recovers it as its
table. A directory a live shard holds is refused.

Imported rows carry writer id :data:`IMPORT_WRITER_ID` (role ``import`` of :mod:`replay.writers`, which no rollout
or imagination worker id can have), ``seq`` numbers past every imported row already there, episode ids
``replay.writers.episode_id(IMPORT_WRITER_ID, n)`` with ``n`` past every imported episode already there, and
``policy_version`` -1. What is already there is read with :func:`replay.stored.read_table` (read-only, through the
shards' recovery): the rows and the import writer's dedup keys.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Iterator, Mapping

import numpy as np

from replay.datasets import DATA_COLUMNS, GENERATED_COLUMNS, SOURCE_NAMES, Dataset, load_dataset
from replay.persistence import TableStore, table_directory
from replay.schema import ColumnSpec, SchemaError, transition_columns, validate_chunk
from replay.stored import OfflineError, file_columns, read_table, shard_indices
from replay.table import TableConfig
from replay.writers import EPISODE_BITS, episode_id, new_writer_id

__all__ = ["DEFAULT_IMPORT_SHARDS", "IMPORT_WRITER_ID", "ImportResult", "import_dataset"]

IMPORT_WRITER_ID = new_writer_id("import", 0, incarnation=0)
"""Writer id of imported rows: the ``import`` role's, fixed, so that every import continues its ``seq`` numbers."""
DEFAULT_IMPORT_SHARDS = 2
"""Shards an import spreads over when the target directory has none yet (the default ``replay.num_shards``)."""
IMPORT_CHUNK_ROWS = 4096
"""Rows per logged insert of an import (whole episodes; a longer episode is split over several inserts)."""
_UNBOUNDED = 2**62


@dataclass
class ImportResult:
    """What an import wrote."""

    directory: str
    table: str
    rows_per_shard: list[int]
    episodes: int
    source_format: str
    files: int
    first_seq: int
    first_episode_id: int
    dropped_rows: int = 0
    dropped_terminal: int = 0
    columns: tuple[ColumnSpec, ...] = field(default=())

    @property
    def rows(self) -> int:
        return sum(self.rows_per_shard)


def _expected_columns(directory: str, table: str, data: Mapping[str, np.ndarray]) -> tuple[ColumnSpec, ...]:
    """The target table's columns if it has files, else the transition row for the dataset's shapes."""
    existing = None
    for index in shard_indices(directory):
        existing = file_columns(table_directory(directory, index, table))
        if existing is not None:
            break
    if existing is None:
        return transition_columns(data["obs"].shape[1:], data["action"].shape[1:])
    names = [c.name for c in existing]
    if sorted(names) != sorted(DATA_COLUMNS + GENERATED_COLUMNS):
        raise OfflineError(
            f"table {table!r} in {directory!r} has columns {names}; import writes transition rows "
            f"{list(DATA_COLUMNS + GENERATED_COLUMNS)}"
        )
    return existing


def _chunks(episode: np.ndarray, rows: int) -> Iterator[tuple[int, int, int]]:
    """``(turn, start, stop)`` of each insert: whole consecutive episodes up to ``rows`` rows per turn; an episode
    longer than that is split into several inserts of one turn (so it stays on one shard, in order)."""
    n = len(episode)
    bounds = [0, *(np.flatnonzero(np.diff(episode)) + 1).tolist(), n]
    turn = start = 0
    for first, stop in zip(bounds[:-1], bounds[1:]):
        if stop - start > rows and first > start:
            yield turn, start, first
            turn, start = turn + 1, first
        if stop - first > rows:
            for begin in range(first, stop, rows):
                yield turn, begin, min(begin + rows, stop)
            turn, start = turn + 1, stop
    if start < n:
        yield turn, start, n


def _next_import_ids(directory: str, table: str) -> tuple[int, int]:
    """The first ``seq`` and episode number a new import may use: past every imported row stored, and past the
    import writer's dedup keys the shards remember (its rows may have been evicted since)."""
    first_seq = first_episode = 0
    stored = read_table(directory, table)
    if stored.columns:
        rows = stored.concatenated()
        mine = rows["writer_id"] == IMPORT_WRITER_ID
        if mine.any():
            first_seq = int(rows["seq"][mine].max()) + 1
        ids = rows["episode_id"]
        ours = (ids >> EPISODE_BITS) == IMPORT_WRITER_ID
        if ours.any():
            first_episode = int((ids[ours] & ((1 << EPISODE_BITS) - 1)).max()) + 1
    for shard in stored.shards:
        seen = shard.seen.get(IMPORT_WRITER_ID)
        if seen is not None:
            keys, floor = seen.state()
            remembered = [k for k in [*keys, floor] if k is not None]
            if remembered:
                first_seq = max(first_seq, max(remembered) + 1)
    return first_seq, first_episode


def import_dataset(
    source: str | Dataset,
    directory: str,
    table: str = "real",
    shards: int | None = None,
    chunk_rows: int = IMPORT_CHUNK_ROWS,
) -> ImportResult:
    """Validate a dataset, then log it into ``table`` of the replay directory ``directory`` (created if missing).

    Args:
        source: a dataset path (see the module docstring) or a :class:`Dataset` from :func:`load_dataset`.
        directory: the target replay directory; must not be in use by a live shard.
        table: the target table.
        shards: shards to spread over; default the number the directory has, else :data:`DEFAULT_IMPORT_SHARDS`.
            A directory that already has shards must be given that number.
        chunk_rows: most rows per logged insert (fewer when that spreads the dataset better over the shards).

    Raises:
        OfflineError: bad dataset, shard count or target; nothing is written.
        SchemaError: the dataset does not fit the table (column, expected and got); nothing is written.
        RuntimeError: a live shard holds the target directory; nothing is written.
    """
    dataset = source if isinstance(source, Dataset) else load_dataset(source)
    if dataset.rows == 0:
        where = f"dataset {source!r}" if isinstance(source, str) else "the dataset"
        raise OfflineError(f"{where} has no rows to import")
    existing_shards = shard_indices(directory)
    with_table = [i for i in existing_shards if os.path.isdir(table_directory(directory, i, table))]
    found = max(existing_shards) + 1 if existing_shards else 0
    if shards is None:
        shards = found or DEFAULT_IMPORT_SHARDS
    if not isinstance(shards, int) or isinstance(shards, bool) or shards < 1:
        raise OfflineError(f"shards must be an int >= 1, got {shards!r}")
    if found and shards != found:
        raise OfflineError(
            f"replay directory {directory!r} has {found} shards, got shards={shards}; import with {found} shards "
            f"or into a new directory"
        )
    if not isinstance(chunk_rows, int) or chunk_rows < 1:
        raise OfflineError(f"chunk_rows must be an int >= 1, got {chunk_rows!r}")
    columns = _expected_columns(directory, table, dataset.data)
    n = dataset.rows
    full = dict(dataset.data)
    full.update(
        episode_id=dataset.episode,
        step=dataset.step,
        policy_version=np.full(n, -1, dtype=np.int64),
        writer_id=np.full(n, IMPORT_WRITER_ID, dtype=np.int64),
        seq=np.arange(n, dtype=np.int64),
    )
    try:
        validate_chunk(full, columns)
    except SchemaError as exc:
        where = "" if isinstance(source, Dataset) else f"dataset {source!r}: "
        origin = re.match(r"column '([^']+)'", str(exc))
        names = SOURCE_NAMES[dataset.source_format]
        hint = ""
        if origin and origin.group(1) in names and dataset.source_format != "parquet":
            hint = f" (from {names[origin.group(1)]})"
        raise SchemaError(f"{where}{exc}{hint}") from None

    config = TableConfig(table, _UNBOUNDED, columns)
    stores: list[TableStore] = []
    try:
        for i in range(shards):
            # "interval" with a long interval: one fsync per log, when it is closed
            root = table_directory(directory, i, table)
            stores.append(TableStore(root, config, fsync="interval", fsync_interval_ms=3_600_000))
            stores[-1].recover()  # only to start a generation past the files there
        first_seq, first_episode = _next_import_ids(directory, table) if with_table else (0, 0)
        if first_episode + dataset.episodes > 1 << EPISODE_BITS:
            raise OfflineError(
                f"table {table!r}: {first_episode:,} imported episodes are stored and the dataset has "
                f"{dataset.episodes:,}; expected at most {1 << EPISODE_BITS:,} in all (the import writer's episode ids)"
            )
        cast = {c.name: np.asarray(full[c.name], dtype=c.np_dtype) for c in columns}
        cast["episode_id"] = episode_id(IMPORT_WRITER_ID, dataset.episode + first_episode)
        cast["seq"] = np.arange(first_seq, first_seq + n, dtype=np.int64)
        per_shard = [0] * shards
        per_insert = max(1, min(chunk_rows, -(-n // shards)))
        for turn, start, stop in _chunks(dataset.episode, per_insert):
            shard = turn % shards
            stores[shard].append_insert({name: values[start:stop] for name, values in cast.items()}, IMPORT_WRITER_ID)
            per_shard[shard] += stop - start
    finally:
        for store in stores:
            store.close()
    return ImportResult(
        directory, table, per_shard, dataset.episodes, dataset.source_format, dataset.files, first_seq,
        int(cast["episode_id"][0]), dataset.dropped_rows, dataset.dropped_terminal, columns,
    )
