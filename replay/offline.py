"""Replay tables outside a running system: read persisted tables, export them to Parquet, import offline datasets.

Reading (:func:`read_table`) goes through :class:`replay.persistence.TableStore` opened read-only: no LOCK is taken
and no file is changed, so a table can be read while a live shard writes it. A live writer may be in the middle of
its last record: that torn tail is skipped with a warning. Should a live shard compact while we read (deleting the
files we were about to open), the read starts over.

Export (:func:`export_table`) writes one Parquet file per shard, ``<table>-shard-<i>.parquet``: the table's columns
as in :func:`replay.schema.arrow_schema` (vectors as ``fixed_size_list``, readable by pyarrow, pandas and DuckDB),
rows oldest to newest, plus

    __shard      int64    the shard the row was stored on
    __key        int64    the row's key within its shard (a ReplayClient's global key is ``__key * K + __shard``)
    __priority   float64  prioritized tables only: the priority as last set by ``update_priorities`` (new rows get
                          the running maximum); NaN where a snapshot stored it with ``priority_exponent`` 0

and JSON under the schema metadata key ``dynaray.export`` (table, shard, number of shards, insert counter, source).

Import (:func:`import_dataset`) reads a dataset, validates all of it, and only then logs it into a replay directory
with :class:`TableStore` (one ``append_insert`` per chunk of whole episodes, chunks spread round robin over the
shards), so a training run started with ``replay.directory=<that directory>`` recovers it as its table. Sources:

* Parquet (a file or a directory of them) with the transition columns of docs/architecture.md; ``obs``, ``action``,
  ``reward``, ``next_obs``, ``terminated`` and ``truncated`` are required, ``episode_id`` and ``step`` are used when
  present (rows are grouped by episode and ordered by step), ``policy_version``, ``writer_id``, ``seq`` and the
  export's ``__`` columns are replaced. Without ``episode_id`` an episode ends at a terminated or truncated row.
* ``.npz`` (a file or a directory of them) in the D4RL layout: ``observations``, ``actions``, ``rewards``,
  ``terminals``, ``timeouts`` and optionally ``next_observations``, one row per transition. An episode ends at a
  terminal or timeout (and at the end of each file). Without ``next_observations`` the next observation is the next
  row's, within its episode, and the last step of every episode is dropped (its next observation is unknown).
* ``.npz`` per episode in the Minari layout: ``observations`` (T+1 rows), ``actions``, ``rewards``,
  ``terminations`` and ``truncations`` (T rows each).

Imported rows carry writer id :data:`IMPORT_WRITER_ID` (role ``import`` of :mod:`replay.writers`, which no rollout
or imagination worker id can have), ``seq`` numbers past every imported row already there, episode ids
``replay.writers.episode_id(IMPORT_WRITER_ID, n)`` with ``n`` past every imported episode already there, and
``policy_version`` -1.
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from dataclasses import dataclass, field
from typing import Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from replay.writers import EPISODE_BITS, episode_id, new_writer_id
from replay.persistence import (
    KEY_FIELD,
    PRIORITY_FIELD,
    SNAPSHOT_METADATA_KEY,
    InsertRecord,
    TableStore,
    log_schema,
    table_directory,
)
from replay.schema import (
    ColumnSpec,
    SchemaError,
    arrow_schema,
    chunk_to_record_batch,
    columns_from_arrow_schema,
    record_batch_to_chunk,
    transition_columns,
    validate_chunk,
)
from replay.cold import list_segments
from replay.table import TableConfig

__all__ = [
    "DEFAULT_IMPORT_SHARDS",
    "EXPORT_METADATA_KEY",
    "IMPORT_WRITER_ID",
    "ColumnStats",
    "ImportResult",
    "OfflineError",
    "ShardRows",
    "StoredTable",
    "column_stats",
    "export_table",
    "import_dataset",
    "inspect_replay",
    "load_dataset",
    "read_table",
    "run_rates",
    "shard_indices",
    "table_names",
]

IMPORT_WRITER_ID = new_writer_id("import", 0, incarnation=0)
"""Writer id of imported rows: the ``import`` role's, fixed, so that every import continues its ``seq`` numbers."""
DEFAULT_IMPORT_SHARDS = 2
"""Shards an import spreads over when the target directory has none yet (the default ``replay.num_shards``)."""
IMPORT_CHUNK_ROWS = 4096
"""Rows per logged insert of an import (whole episodes; a longer episode is split over several inserts)."""
EXPORT_METADATA_KEY = b"dynaray.export"
"""Schema metadata key of an exported file's JSON."""
SHARD_FIELD, EXPORT_KEY_FIELD, EXPORT_PRIORITY_FIELD = "__shard", "__key", "__priority"
"""Extra columns of an exported file."""
EXPORT_FORMAT_VERSION = 1
DATA_COLUMNS = ("obs", "action", "reward", "next_obs", "terminated", "truncated")
"""Columns an imported dataset must provide; the others of the transition row are made by the import."""
GENERATED_COLUMNS = ("episode_id", "step", "policy_version", "writer_id", "seq")
_UNBOUNDED = 2**62
_READ_ATTEMPTS = 5
_SHARD_RE = re.compile(r"^shard-(\d+)$")
_D4RL_KEYS = ("observations", "actions", "rewards", "terminals", "timeouts")
_MINARI_KEYS = ("observations", "actions", "rewards", "terminations", "truncations")
_SOURCE_NAMES = {
    "parquet": {name: f"column {name!r}" for name in DATA_COLUMNS},
    "d4rl": {
        "obs": "array 'observations'",
        "action": "array 'actions'",
        "reward": "array 'rewards'",
        "next_obs": "array 'next_observations' (or 'observations')",
        "terminated": "array 'terminals'",
        "truncated": "array 'timeouts'",
    },
    "minari": {
        "obs": "array 'observations'",
        "action": "array 'actions'",
        "reward": "array 'rewards'",
        "next_obs": "array 'observations'",
        "terminated": "array 'terminations'",
        "truncated": "array 'truncations'",
    },
}
"""Where each table column comes from, per dataset layout (for error messages)."""


class OfflineError(ValueError):
    """Bad input to export, import or inspection; the message names the file, column or array, expected and got."""


# ---- reading persisted tables ------------------------------------------------------------------------------------


@dataclass
class ShardRows:
    """One shard's part of a persisted table, as a shard recovering the directory would hold it."""

    index: int
    """Shard number (``shard-<index>``)."""
    chunk: dict[str, np.ndarray]
    """Rows oldest to newest."""
    inserted: int
    """The shard table's insert counter; the rows have keys ``[inserted - rows, inserted)``."""
    priorities: np.ndarray | None
    """Priority per row (prioritized tables; see the module docstring), else None."""
    disk_bytes: int
    """Bytes of the table's files in this shard."""
    generations: dict[str, list[int]]
    """Generations on disk per file kind (``wal``, ``priorities``, ``snapshot``)."""

    @property
    def rows(self) -> int:
        return len(next(iter(self.chunk.values()))) if self.chunk else 0

    @property
    def keys(self) -> np.ndarray:
        return np.arange(self.inserted - self.rows, self.inserted, dtype=np.int64)


@dataclass
class StoredTable:
    """A persisted table of every shard of a replay directory."""

    directory: str
    name: str
    columns: tuple[ColumnSpec, ...]
    """The table's columns, from its files (empty when no shard has a readable file)."""
    shards: list[ShardRows]
    """One entry per shard directory ``shard-0 .. shard-<K-1>`` (empty where the shard has no files)."""

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.shards)

    @property
    def prioritized(self) -> bool:
        return any(s.priorities is not None for s in self.shards)

    def concatenated(self) -> dict[str, np.ndarray]:
        """Every row, shard by shard (each oldest to newest)."""
        return {c.name: np.concatenate([s.chunk[c.name] for s in self.shards]) for c in self.columns}


def shard_indices(directory: str) -> list[int]:
    """Indices of the ``shard-<i>`` directories of a replay directory, ascending."""
    if not os.path.isdir(directory):
        return []
    found = (_SHARD_RE.match(name) for name in os.listdir(directory))
    return sorted(int(m.group(1)) for m in found if m and os.path.isdir(os.path.join(directory, m.group(0))))


def table_names(directory: str) -> list[str]:
    """Tables with a directory in any shard of a replay directory, sorted."""
    names: set[str] = set()
    for index in shard_indices(directory):
        shard = os.path.join(directory, f"shard-{index}")
        names.update(n for n in os.listdir(shard) if os.path.isdir(os.path.join(shard, n)))
    return sorted(names)


def _file_columns(root: str) -> tuple[ColumnSpec, ...] | None:
    """A table's columns from the newest snapshot, else the newest readable log; None without readable files."""
    if not os.path.isdir(root):
        return None
    snapshots, logs = [], []
    for name in os.listdir(root):
        match = re.match(r"^(snapshot|wal)-(\d+)\.(parquet|log)$", name)
        if match:
            (snapshots if match.group(1) == "snapshot" else logs).append((int(match.group(2)), name))
    for _, name in sorted(snapshots, reverse=True):
        try:
            schema = pq.read_schema(os.path.join(root, name))
        except (OSError, pa.ArrowException):
            continue  # gone or damaged
        return columns_from_arrow_schema(schema, skip=(KEY_FIELD, PRIORITY_FIELD))
    for _, name in sorted(logs, reverse=True):
        schema = log_schema(os.path.join(root, name))
        if schema is None:
            continue  # gone, empty, torn or damaged before its schema
        return columns_from_arrow_schema(schema)
    return None


def _disk_bytes(root: str) -> int:
    total = 0
    if os.path.isdir(root):
        for entry in os.scandir(root):
            try:
                total += entry.stat().st_size if entry.is_file() else 0
            except FileNotFoundError:
                continue
    return total


def _snapshot_meta(path: str) -> dict:
    """The JSON a snapshot keeps in its schema metadata (see :mod:`replay.persistence`); empty for a damaged one."""
    try:
        return json.loads((pq.read_schema(path).metadata or {}).get(SNAPSHOT_METADATA_KEY, b"{}"))
    except (OSError, pa.ArrowException, ValueError):
        return {}


def _read_shard_once(root: str, index: int, config: TableConfig, capacity: int | None) -> ShardRows:
    store = TableStore(root, config, read_only=True)
    generations = store.generations()
    snapshot, records = store.recover()
    parts: list[dict[str, np.ndarray]] = []
    first_key = 0
    snapshot_rows = 0
    snapshot_priorities = None
    max_priority = 1.0
    if snapshot is not None:
        rows = snapshot_rows = len(snapshot.chunk[config.columns[0].name])
        first_key = snapshot.inserted - rows
        parts.append(snapshot.chunk)
        if snapshot.priorities is not None:
            alpha = snapshot.priority_exponent
            weights = np.asarray(snapshot.priorities, dtype=np.float64)
            snapshot_priorities = weights ** (1.0 / alpha) if alpha else np.full(rows, np.nan)
            max_priority = snapshot.max_priority if snapshot.max_priority is not None else 1.0
    # inserts as row counts and priority updates as (keys, priorities), in their original order
    events: list[int | tuple[np.ndarray, np.ndarray]] = []
    for record in records:
        if isinstance(record, InsertRecord):
            parts.append(record.chunk)
            events.append(record.rows)
        else:
            events.append((record.keys, record.priorities))
    cold = _cold_rows(root, config.columns, below=first_key)
    if cold is not None:
        cold_rows = len(cold[config.columns[0].name])
        parts.insert(0, cold)
        first_key -= cold_rows
        snapshot_rows += cold_rows
        if snapshot_priorities is not None:  # cold tiers hold uniform tables only; kept aligned all the same
            snapshot_priorities = np.concatenate([np.ones(cold_rows), snapshot_priorities])
    if parts:
        chunk = {c.name: np.concatenate([p[c.name] for p in parts]) for c in config.columns}
    else:
        chunk = {c.name: np.zeros((0,) + c.shape, dtype=c.np_dtype) for c in config.columns}
    total = len(chunk[config.columns[0].name])
    priorities = None
    if snapshot_priorities is not None or any(isinstance(e, tuple) for e in events):
        # as the prioritized sampler: new rows get the running maximum, updates of stored rows set it
        priorities = np.ones(total, dtype=np.float64)
        written = snapshot_rows
        if snapshot_priorities is not None:
            priorities[:written] = snapshot_priorities
        for event in events:
            if isinstance(event, int):
                priorities[written : written + event] = max_priority
                written += event
                continue
            keys, values = event
            inserted = first_key + written
            oldest = max(first_key, inserted - capacity) if capacity is not None else first_key
            stored = (keys >= oldest) & (keys < inserted)
            keys, values = keys[stored], values[stored]
            if len(keys):
                last = len(keys) - 1 - np.unique(keys[::-1], return_index=True)[1]
                priorities[keys[last] - first_key] = values[last]
                max_priority = max(max_priority, float(values[last].max()))
    if capacity is not None and total > capacity:
        chunk = {name: values[total - capacity :] for name, values in chunk.items()}
        priorities = priorities[total - capacity :] if priorities is not None else None
    return ShardRows(index, chunk, first_key + total, priorities, _disk_bytes(root), generations)


def _cold_rows(root: str, columns: Sequence[ColumnSpec], below: int) -> dict[str, np.ndarray] | None:
    """The rows of the table's cold tier with keys below ``below`` (those the snapshot and logs do not hold), or
    None without a cold tier."""
    parts = []
    for first, path in list_segments(os.path.join(root, "cold")):
        if first >= below:
            break
        batches = pq.read_table(path).combine_chunks().to_batches()
        if not batches:
            continue
        rows = record_batch_to_chunk(batches[0], columns)
        keep = min(len(rows[columns[0].name]), below - first)
        parts.append({name: values[:keep] for name, values in rows.items()})
    if not parts:
        return None
    return {c.name: np.concatenate([p[c.name] for p in parts]) for c in columns}


def _empty_shard(index: int, columns: Sequence[ColumnSpec], root: str) -> ShardRows:
    chunk = {c.name: np.zeros((0,) + c.shape, dtype=c.np_dtype) for c in columns}
    generations: dict[str, list[int]] = {"wal": [], "priorities": [], "snapshot": []}
    return ShardRows(index, chunk, 0, None, _disk_bytes(root), generations)


def read_table(directory: str, table: str = "real", capacity: int | None = None) -> StoredTable:
    """Read a persisted table of every shard of a replay directory, read-only (see the module docstring).

    Args:
        directory: the replay directory (holding ``shard-<i>/<table>/``).
        table: the table's name.
        capacity: rows per shard the table holds, in memory and in its cold tier together; a shard's files can
            hold more (rows logged since the last snapshot), of which only the newest ``capacity`` are kept, as a
            shard recovering them would. None keeps every row on disk. Rows of the cold tier (``<table>/cold/``,
            older than every row of the snapshot and logs) come first.

    Raises:
        OfflineError: no shard directories, or no shard has the table.
        SchemaError: the shards' files disagree on the columns, or a file is not a replay file.
    """
    indices = shard_indices(directory)
    if not indices:
        raise OfflineError(f"{directory!r} is not a replay directory: no shard-<i> directories in it")
    roots = {i: table_directory(directory, i, table) for i in indices}
    if not any(os.path.isdir(root) for root in roots.values()):
        raise OfflineError(f"replay directory {directory!r} has no table {table!r}; it has {table_names(directory)}")
    columns: tuple[ColumnSpec, ...] = ()
    where = ""
    for i, root in roots.items():
        found = _file_columns(root)
        if found is None:
            continue
        if not columns:
            columns, where = found, root
        elif found != columns:
            raise SchemaError(f"table {table!r}: {root} has columns {list(found)}, but {where} has {list(columns)}")
    shards = []
    for i in range(max(indices) + 1):
        root = table_directory(directory, i, table)
        if not columns or _file_columns(root) is None:
            shards.append(_empty_shard(i, columns, root))
            continue
        config = TableConfig(table, _UNBOUNDED, columns)
        for attempt in range(_READ_ATTEMPTS):
            try:
                shards.append(_read_shard_once(root, i, config, capacity))
                break
            except FileNotFoundError:
                if attempt == _READ_ATTEMPTS - 1:
                    raise OfflineError(
                        f"{root}: files disappeared while reading {_READ_ATTEMPTS} times (a live shard compacting "
                        f"fast?); try again"
                    ) from None
    return StoredTable(directory, table, columns, shards)


# ---- export ------------------------------------------------------------------------------------------------------


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


# ---- datasets ----------------------------------------------------------------------------------------------------


@dataclass
class Dataset:
    """An offline dataset in memory: the data columns plus episode structure, rows grouped by episode."""

    data: dict[str, np.ndarray]
    """The :data:`DATA_COLUMNS`, rows of one episode consecutive and in step order."""
    episode: np.ndarray
    """int64 episode number per row, 0, 1, ... in order of appearance."""
    step: np.ndarray
    """int64 step of each row within its episode."""
    source_format: str
    """``parquet``, ``d4rl`` or ``minari``."""
    files: int
    dropped_rows: int = 0
    """D4RL without ``next_observations``: last steps of episodes dropped (their next observation is unknown)."""
    dropped_terminal: int = 0
    """Of ``dropped_rows``, those that were terminal."""

    @property
    def rows(self) -> int:
        return len(self.episode)

    @property
    def episodes(self) -> int:
        return int(self.episode[-1]) + 1 if len(self.episode) else 0


def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _source_files(source: str) -> tuple[str, list[str]]:
    """The kind (``parquet`` or ``npz``) and files of a dataset path."""
    if os.path.isfile(source):
        for kind in ("parquet", "npz"):
            if source.endswith("." + kind):
                return kind, [source]
        raise OfflineError(f"dataset {source!r}: expected a .parquet or .npz file, or a directory of them")
    if not os.path.isdir(source):
        raise OfflineError(f"dataset {source!r} does not exist")
    names = sorted(os.listdir(source), key=_natural_key)
    parquet = [os.path.join(source, n) for n in names if n.endswith(".parquet")]
    npz = [os.path.join(source, n) for n in names if n.endswith(".npz")]
    if parquet and npz:
        raise OfflineError(f"dataset {source!r} mixes .parquet and .npz files; expected one kind")
    if not parquet and not npz:
        raise OfflineError(f"dataset {source!r} holds no .parquet or .npz files")
    return ("parquet", parquet) if parquet else ("npz", npz)


def _is_number(arrow_type: pa.DataType) -> bool:
    return pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type) or pa.types.is_boolean(arrow_type)


def _arrow_to_numpy(path: str, name: str, column: pa.ChunkedArray) -> np.ndarray:
    """A Parquet column as a numpy array (lists of one length as a trailing dimension)."""
    column = column.combine_chunks()
    if column.null_count:
        raise OfflineError(f"{path}: column {name!r} has {column.null_count} null value(s); expected none")
    arrow_type = column.type
    wrong_type = f"{path}: column {name!r} has Arrow type {arrow_type}; expected numbers or lists of them"
    if pa.types.is_fixed_size_list(arrow_type) or pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        if pa.types.is_fixed_size_list(arrow_type):
            width = arrow_type.list_size
        else:
            distinct = np.unique(column.value_lengths().to_numpy(zero_copy_only=False))
            if len(distinct) > 1:
                raise OfflineError(
                    f"{path}: column {name!r} holds lists of lengths {distinct[:5].tolist()}; expected one length"
                )
            width = int(distinct[0]) if len(distinct) else 0
        values = column.flatten()
        if values.null_count:
            raise OfflineError(f"{path}: column {name!r} has null values inside its lists; expected none")
        if not _is_number(values.type):
            raise OfflineError(wrong_type)
        return values.to_numpy(zero_copy_only=False).reshape(len(column), width)
    if not _is_number(arrow_type):
        raise OfflineError(wrong_type)
    return column.to_numpy(zero_copy_only=False)


def _check_finite(path: str, name: str, values: np.ndarray) -> None:
    if values.dtype.kind != "f" or values.ndim == 0:
        return
    finite = np.isfinite(values.reshape(len(values), -1)).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise OfflineError(
            f"{path}: {name}: non-finite values (NaN or inf) in {len(bad)} row(s), first at row {int(bad[0])}; "
            f"expected finite numbers"
        )


def _read_parquet(paths: Sequence[str]) -> dict[str, np.ndarray]:
    """The columns of Parquet files, concatenated, plus ``__file_end`` (True at each file's last row)."""
    ignored = {SHARD_FIELD, EXPORT_KEY_FIELD, EXPORT_PRIORITY_FIELD, "policy_version", "seq"}
    allowed = set(DATA_COLUMNS) | set(GENERATED_COLUMNS) | ignored
    parts: list[dict[str, np.ndarray]] = []
    for path in paths:
        try:
            table = pq.read_table(path)
        except (pa.ArrowInvalid, OSError) as exc:
            raise OfflineError(f"{path}: not a readable Parquet file ({exc})") from None
        missing = [n for n in DATA_COLUMNS if n not in table.column_names]
        unexpected = [n for n in table.column_names if n not in allowed]
        if missing or unexpected:
            problems = [f"missing column(s) {missing}"] if missing else []
            problems += [f"unexpected column(s) {unexpected}"] if unexpected else []
            raise OfflineError(
                f"{path}: {' and '.join(problems)}; expected columns {list(DATA_COLUMNS)}, optionally "
                f"{list(GENERATED_COLUMNS)}"
            )
        part = {}
        for arrow_field in table.schema:
            name = arrow_field.name
            if name in ignored:
                continue
            values = _arrow_to_numpy(path, name, table.column(name))
            raw = (arrow_field.metadata or {}).get(b"shape")
            if raw is not None and values.ndim == 2:
                shape = tuple(json.loads(raw))
                if math.prod(shape) == values.shape[1]:
                    values = values.reshape((len(values),) + shape)
            _check_finite(path, f"column {name!r}", values)
            part[name] = values
        if parts and part.keys() != parts[0].keys() - {"__file_end"}:
            raise OfflineError(
                f"{path}: columns {sorted(part)} differ from those of {paths[0]} "
                f"({sorted(parts[0].keys() - {'__file_end'})}); expected one set of columns in every file"
            )
        part["__file_end"] = np.arange(table.num_rows) == table.num_rows - 1
        parts.append(part)
    out = {}
    for name in parts[0]:
        shapes = {p[name].shape[1:] for p in parts}
        if len(shapes) > 1:
            raise OfflineError(f"column {name!r}: files disagree on the value shape ({sorted(shapes)})")
        out[name] = np.concatenate([p[name] for p in parts])
    return out


def _episodes_from_ends(ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Episode number and step per row, given where episodes end (the last row always ends one)."""
    n = len(ends)
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    ends = ends.copy()
    ends[-1] = True
    episode = np.concatenate([[0], np.cumsum(ends[:-1])]).astype(np.int64)
    starts = np.concatenate([[0], np.flatnonzero(ends[:-1]) + 1])
    step = np.arange(n, dtype=np.int64) - starts[episode]
    return episode, step


def _group_episodes(data: dict[str, np.ndarray], path: str) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Rows grouped by episode (``writer_id`` and ``episode_id``, in order of first appearance) and ordered by
    ``step``; or, without ``episode_id``, episodes ending at terminated/truncated rows (and at each file's end) in
    file order, ``step`` counted within them."""
    n = len(data["obs"])
    if "episode_id" not in data:
        for flag in ("terminated", "truncated"):
            if data[flag].dtype != np.bool_ or data[flag].ndim != 1:
                raise OfflineError(
                    f"{path}: column {flag!r}: expected bool of shape (N,), got {data[flag].dtype} {data[flag].shape}"
                )
        episode, step = _episodes_from_ends(data["terminated"] | data["truncated"] | data["__file_end"])
        return {k: data[k] for k in DATA_COLUMNS}, episode, step
    ids = data["episode_id"]
    for name in ("episode_id", "writer_id"):
        values = data.get(name, ids)
        if values.ndim != 1 or values.dtype.kind not in "iu":
            raise OfflineError(
                f"{path}: column {name!r}: expected integers of shape (N,), got {values.dtype} {values.shape}"
            )
    writers = data.get("writer_id", np.zeros_like(ids))
    unique, first, inverse = np.unique(np.stack([writers, ids], axis=1), axis=0, return_index=True,
                                       return_inverse=True)
    rank = np.empty(len(unique), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(unique))
    episode = rank[inverse.reshape(-1)]
    if "step" in data:
        step = data["step"]
        if step.ndim != 1 or step.dtype.kind not in "iu":
            raise OfflineError(f"{path}: column 'step': expected integers of shape (N,), got {step.dtype} {step.shape}")
        order = np.lexsort((step, episode))
        step = step[order].astype(np.int64)
        episode = episode[order]
        repeated = np.flatnonzero((np.diff(episode) == 0) & (np.diff(step) == 0))
        if len(repeated):
            row = order[repeated[0] + 1]
            raise OfflineError(
                f"{path}: episode_id {int(ids[row])} (writer_id {int(writers[row])}) has step "
                f"{int(step[repeated[0]])} more than once; expected each (writer_id, episode_id, step) once"
            )
    else:
        order = np.argsort(episode, kind="stable")
        episode = episode[order]
        starts = np.concatenate([[0], np.flatnonzero(np.diff(episode)) + 1]) if n else np.zeros(0, dtype=np.int64)
        step = np.arange(n, dtype=np.int64) - starts[episode] if n else np.zeros(0, dtype=np.int64)
    return {k: data[k][order] for k in DATA_COLUMNS}, episode, step


def _flags(path: str, name: str, values: np.ndarray, rows: int) -> np.ndarray:
    """A D4RL/Minari flag array as bool (bool, or numbers that are all 0 or 1), shape (rows,)."""
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if values.shape != (rows,):
        raise OfflineError(f"{path}: array {name!r}: expected shape ({rows},), got {values.shape}")
    if values.dtype == np.bool_:
        return values
    if values.dtype.kind not in "iuf":
        raise OfflineError(f"{path}: array {name!r}: expected bool or 0/1 numbers, got dtype {values.dtype}")
    bad = ~((values == 0) | (values == 1))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise OfflineError(
            f"{path}: array {name!r}: expected bool or 0/1 values, got {values[row].item()!r} at row {row}"
        )
    return values != 0


def _rows_array(path: str, name: str, values: np.ndarray, rows: int, scalar: bool = False) -> np.ndarray:
    if scalar and values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if values.ndim < 1 or len(values) != rows or (scalar and values.ndim != 1):
        expected = f"({rows},)" if scalar else f"({rows}, ...)"
        raise OfflineError(f"{path}: array {name!r}: expected shape {expected}, got {values.shape}")
    return values


def _read_npz(path: str) -> tuple[str, dict[str, np.ndarray], np.ndarray, np.ndarray, int, int]:
    """One .npz file: its layout, the data columns, episode number and step per row, rows dropped (terminal)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError) as exc:
        raise OfflineError(f"{path}: not a readable .npz file ({exc})") from None
    for name in ("observations", "next_observations", "actions", "rewards"):
        if name in arrays:
            _check_finite(path, f"array {name!r}", arrays[name])
    if all(k in arrays for k in _MINARI_KEYS):
        steps = len(arrays["actions"])
        observations = arrays["observations"]
        if observations.ndim < 1 or len(observations) != steps + 1:
            raise OfflineError(
                f"{path}: array 'observations' has shape {observations.shape}; the Minari layout needs "
                f"len(actions) + 1 = {steps + 1} rows"
            )
        data = {
            "obs": observations[:-1],
            "action": _rows_array(path, "actions", arrays["actions"], steps),
            "reward": _rows_array(path, "rewards", arrays["rewards"], steps, scalar=True),
            "next_obs": observations[1:],
            "terminated": _flags(path, "terminations", arrays["terminations"], steps),
            "truncated": _flags(path, "truncations", arrays["truncations"], steps),
        }
        return "minari", data, np.zeros(steps, dtype=np.int64), np.arange(steps, dtype=np.int64), 0, 0
    missing = [k for k in _D4RL_KEYS if k not in arrays]
    if missing:
        raise OfflineError(
            f"{path}: missing array(s) {missing}; the D4RL layout needs {list(_D4RL_KEYS)} (next_observations "
            f"optional), the Minari layout {list(_MINARI_KEYS)}; got {sorted(arrays)}"
        )
    observations = arrays["observations"]
    rows = len(observations) if observations.ndim else 0
    data = {
        "obs": observations,
        "action": _rows_array(path, "actions", arrays["actions"], rows),
        "reward": _rows_array(path, "rewards", arrays["rewards"], rows, scalar=True),
        "terminated": _flags(path, "terminals", arrays["terminals"], rows),
        "truncated": _flags(path, "timeouts", arrays["timeouts"], rows),
    }
    ends = data["terminated"] | data["truncated"]
    if "next_observations" in arrays:
        data["next_obs"] = _rows_array(path, "next_observations", arrays["next_observations"], rows)
        episode, step = _episodes_from_ends(ends)
        return "d4rl", {k: data[k] for k in DATA_COLUMNS}, episode, step, 0, 0
    ends = ends.copy()
    if rows:
        ends[-1] = True
    keep = ~ends
    data["next_obs"] = np.concatenate([observations[1:], observations[:1]]) if rows else observations
    episode, step = _episodes_from_ends(ends)
    kept = {k: data[k][keep] for k in DATA_COLUMNS}
    episode, step = episode[keep], step[keep]
    if len(episode):  # renumber: episodes of one step vanished
        episode = np.concatenate([[0], np.cumsum(np.diff(episode) != 0)]).astype(np.int64)
    dropped = int(ends.sum())
    return "d4rl", kept, episode, step, dropped, int((data["terminated"] & ends).sum())


def load_dataset(source: str) -> Dataset:
    """Read an offline dataset (see the module docstring for the layouts) into memory.

    Shapes and dtypes are checked against the table later (:func:`import_dataset`); here the layout is: required
    columns or arrays, row counts, flags, lists of one length.

    Raises:
        OfflineError: what is wrong, naming the file and the column or array.
    """
    kind, paths = _source_files(source)
    if kind == "parquet":
        data, episode, step = _group_episodes(_read_parquet(paths), source)
        return Dataset(data, episode, step, "parquet", len(paths))
    datas, episodes, steps = [], [], []
    formats = set()
    dropped = dropped_terminal = offset = 0
    for path in paths:
        layout, data, episode, step, n, t = _read_npz(path)
        formats.add(layout)
        datas.append(data)
        episodes.append(episode + offset)
        steps.append(step)
        offset += int(episode[-1]) + 1 if len(episode) else 0
        dropped += n
        dropped_terminal += t
    if len(formats) > 1:
        raise OfflineError(f"dataset {source!r} mixes the D4RL and Minari layouts; expected one")
    layout = formats.pop()
    for name in DATA_COLUMNS:
        shapes = {d[name].shape[1:] for d in datas}
        if len(shapes) > 1:
            raise OfflineError(
                f"dataset {source!r}: {_SOURCE_NAMES[layout][name]} has different value shapes in different files "
                f"({sorted(shapes)}); expected one"
            )
    data = {name: np.concatenate([d[name] for d in datas]) for name in DATA_COLUMNS}
    return Dataset(
        data, np.concatenate(episodes), np.concatenate(steps), layout, len(paths), dropped, dropped_terminal
    )


# ---- import ------------------------------------------------------------------------------------------------------


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
        existing = _file_columns(table_directory(directory, index, table))
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
    import writer's dedup keys a snapshot remembers (its rows may have been evicted since)."""
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
        if not shard.generations["snapshot"]:
            continue
        newest = max(shard.generations["snapshot"])
        path = os.path.join(table_directory(directory, shard.index, table), f"snapshot-{newest}.parquet")
        seen = _snapshot_meta(path).get("seen", {}).get(str(IMPORT_WRITER_ID))
        if seen:
            remembered = [k for k in [*seen["keys"], seen["floor"]] if k is not None]
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
        names = _SOURCE_NAMES[dataset.source_format]
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


# ---- inspection --------------------------------------------------------------------------------------------------


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
    capacities: Mapping[str, int] | None = None,
    metrics_path: str | None = None,
    tables: Sequence[str] | None = None,
) -> dict:
    """Sizes, files and column statistics of every table of a replay directory, and a run's rates.

    Args:
        directory: the replay directory.
        capacities: rows per shard per table, where known (see :func:`read_table`).
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
        capacity = (capacities or {}).get(name)
        stored = read_table(directory, name, capacity)
        rows = stored.concatenated() if stored.columns else {}
        info = {
            "rows": stored.rows,
            "inserted": sum(s.inserted for s in stored.shards),
            "disk_bytes": sum(s.disk_bytes for s in stored.shards),
            "prioritized": stored.prioritized,
            "capacity": capacity,
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
