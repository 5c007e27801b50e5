"""Zero-loss persistence of one shard table: an Arrow IPC write-ahead log plus Parquet snapshots.

Layout, per persisted table, under ``<directory>/shard-<index>/<table>/``::

    LOCK                      flock'ed by the live shard, so two shards never write one directory
    wal-<g>.arrows            Arrow IPC stream: one record batch per acknowledged insert, the table's
                              :func:`replay.schema.arrow_schema`; the batch's custom metadata holds the
                              ``writer_id`` the insert was called with (the dedup key is that and ``seq[0]``);
                              for a chunk whose rows with NaN or inf were dropped (``non_finite="drop"``) the
                              batch holds the kept rows only (possibly none) and the metadata adds ``dedup_key``
                              (the chunk's first ``seq``) and ``dropped_non_finite``
    priorities-<g>.arrows     Arrow IPC stream of priority updates (prioritized tables): columns ``key`` (int64),
                              ``priority`` (float64) and ``inserted`` (int64, the table's insert counter when the
                              update was made, so recovery interleaves updates and inserts in their original order)
    sampled-<g>.arrows        Arrow IPC stream of sample counts (tables with ``max_times_sampled``): columns ``key``
                              (int64), ``times_sampled`` (int32, the row's count; -1: the row was removed),
                              ``inserted`` (int64, as above) and ``priority_updates`` (int64, records of
                              ``priorities-<g>`` logged before it, so recovery also keeps the order of the two)
    snapshot-<g>.parquet      the table as it was when generation ``g`` began: the rows oldest to newest (vectors as
                              ``fixed_size_list``), plus ``__key`` (int64 row key) and, for prioritized tables,
                              ``__priority`` (float64, ``priority ** priority_exponent`` as the sum tree holds it);
                              with ``max_times_sampled``, ``__times_sampled`` (int32, -1 for a removed row, which
                              stays in the file so that keys stay consecutive); counters and dedup state as JSON
                              in the schema metadata under ``dynaray.replay``

A generation ``g`` is the state of the newest snapshot ``<= g`` plus logs ``g, g+1, ...`` in order. Recovery loads
the newest complete snapshot (temp files of an interrupted snapshot are removed) and replays every log of that
generation or newer; a process always appends to a fresh generation (one past the highest on disk), so it never
appends after a torn record. A torn record (the process died in the middle of a write) is cut off with a warning
naming the file and the bytes dropped; everything before it is recovered.

Removals (``max_times_sampled``): a sample that removes rows logs their keys (count -1) before it returns, so a
removed row never comes back, killed process or not. Counts of rows not yet removed are logged only when the
shard closes (and kept in every snapshot), not on every sample, which would write a record per sampled row: after
a crash, a live row's count is the one of the last snapshot or clean close, so it can be sampled up to
``max_times_sampled - 1`` more times in all than configured. "Every acknowledged transition is recovered" then means
every acknowledged row that was not removed. The counts are read only for a configuration with
``max_times_sampled`` (export and inspection set it whenever the files hold counts, see :mod:`replay.stored`).

Durability: every record is written to the OS (``sink.flush()`` of an ``OSFile``, unbuffered) before the caller
acknowledges the insert, so a killed process loses nothing acknowledged. Against power loss, ``fsync`` chooses
``"every_insert"`` (``os.fsync`` before acknowledging), ``"interval"`` (at most every ``fsync_interval_ms``, on the
insert path: up to that window of acknowledged inserts can be lost) or ``"none"`` (the OS decides).

:class:`TableStore` is not thread-safe: the shard calls it under the table's lock, except for
:meth:`TableStore.write_snapshot` and :meth:`TableStore.remove_before`, which touch only files no writer uses.

Readers outside the shard (export, inspection: :func:`replay.recovery.open_table` with ``read_only=True``) open a
store with ``read_only=True``: it takes no LOCK and changes no file, so it can read a directory a live shard is
writing; :meth:`TableStore.recover` then leaves temp files alone and skips a torn final record (a live writer may be
in the middle of it) with a warning instead of cutting it off.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import time
import warnings
from dataclasses import dataclass, field
from typing import Iterator, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from replay.files import fsync_path
from replay.schema import SchemaError, arrow_schema, chunk_to_record_batch, record_batch_to_chunk
from replay.table import TableConfig

__all__ = [
    "FSYNC_MODES",
    "KEY_FIELD",
    "PRIORITY_FIELD",
    "SNAPSHOT_METADATA_KEY",
    "TIMES_SAMPLED_FIELD",
    "InsertRecord",
    "PriorityRecord",
    "SnapshotImage",
    "TableStore",
    "TimesSampledRecord",
    "table_directory",
]

logger = logging.getLogger(__name__)

FSYNC_MODES = ("none", "every_insert", "interval")
"""Values of ``ReplayShard(fsync=...)``."""
KEY_FIELD = "__key"
"""Snapshot column with each row's key."""
PRIORITY_FIELD = "__priority"
"""Snapshot column with each row's sampling weight ``priority ** alpha`` (prioritized tables)."""
TIMES_SAMPLED_FIELD = "__times_sampled"
"""Snapshot column with each row's sample count, -1 for a removed row (tables with ``max_times_sampled``)."""
SNAPSHOT_METADATA_KEY = b"dynaray.replay"
"""Schema metadata key of a snapshot's JSON: format version, table, inserted, max_priority, dedup state."""
FORMAT_VERSION = 1
_WRITER_KEY = b"writer_id"
_DEDUP_KEY = b"dedup_key"
_DROPPED_KEY = b"dropped_non_finite"
_PRIORITY_SCHEMA = pa.schema(
    [
        pa.field("key", pa.int64(), nullable=False),
        pa.field("priority", pa.float64(), nullable=False),
        pa.field("inserted", pa.int64(), nullable=False),
    ]
)
_SAMPLED_SCHEMA = pa.schema(
    [
        pa.field("key", pa.int64(), nullable=False),
        pa.field("times_sampled", pa.int32(), nullable=False),
        pa.field("inserted", pa.int64(), nullable=False),
        pa.field("priority_updates", pa.int64(), nullable=False),
    ]
)
_END_MARKERS = (b"", b"\xff\xff\xff\xff\x00\x00\x00\x00", b"\x00\x00\x00\x00")
_FILE_RE = re.compile(r"^(wal|priorities|sampled|snapshot)-(\d+)\.(arrows|parquet)$")
_LOGS = ("_wal", "_priorities", "_sampled")


def table_directory(directory: str, shard_index: int, table: str) -> str:
    """Where one table of one shard keeps its files."""
    return os.path.join(directory, f"shard-{shard_index}", table)


@dataclass
class SnapshotImage:
    """A consistent copy of a table: what a snapshot stores and recovery restores."""

    chunk: dict[str, np.ndarray]
    """Stored rows, oldest to newest."""
    inserted: int
    """The table's insert counter; the rows have keys ``[inserted - rows, inserted)``."""
    priorities: np.ndarray | None = None
    """Sampling weight (``priority ** alpha``) per row, prioritized tables only."""
    max_priority: float | None = None
    """The prioritized sampler's running maximum priority (new rows get it)."""
    seen: dict[int, tuple[list[int], int | None]] = field(default_factory=dict)
    """Dedup state per writer: remembered chunk keys in arrival order, and the floor below which all count."""
    times_sampled: np.ndarray | None = None
    """Sample count per row, -1 for removed rows (tables with ``max_times_sampled``)."""
    removed: int = 0
    """Rows removed after ``max_times_sampled`` samples so far."""
    dropped_non_finite: int = 0
    """Rows dropped at insert for NaN or inf so far."""
    priority_exponent: float | None = None
    """The ``priority_exponent`` ``priorities`` were raised to (read from a snapshot's metadata; None when it has
    no priorities)."""


@dataclass
class InsertRecord:
    """One logged insert: the chunk (the rows stored: with ``non_finite="drop"`` possibly none) and the
    ``writer_id`` the call carried."""

    writer_id: int
    chunk: dict[str, np.ndarray]
    rows: int
    dedup_key: int | None = None
    """The dedup key of the insert (the first ``seq`` of the chunk as sent); None only for an empty record
    without one."""
    dropped_non_finite: int = 0
    """Rows of the chunk as sent that were dropped for NaN or inf (not in ``chunk``)."""


@dataclass
class PriorityRecord:
    """One logged priority update."""

    keys: np.ndarray
    priorities: np.ndarray


@dataclass
class TimesSampledRecord:
    """Logged sample counts of rows (tables with ``max_times_sampled``): -1 marks a removed row."""

    keys: np.ndarray
    counts: np.ndarray


def _is_torn(exc: Exception) -> bool:
    """Whether a read error means the stream ends in a partial message (Arrow reports a short metadata read as
    ``ArrowInvalid`` and a short body read as an ``OSError`` without errno), not a failing disk (errno set)."""
    return isinstance(exc, pa.ArrowInvalid) or (isinstance(exc, OSError) and exc.errno is None)


class _StreamLog:
    """An append-only Arrow IPC stream file, flushed to the OS after every record."""

    def __init__(self, path: str, schema: pa.Schema):
        self.path = path
        self.sink = pa.OSFile(path, "wb")
        try:
            self.writer = pa.ipc.new_stream(self.sink, schema)
            self.sink.flush()
        except BaseException:
            self.sink.close()
            raise

    def append(self, batch: pa.RecordBatch, custom_metadata: Mapping[bytes, bytes] | None = None) -> None:
        self.writer.write_batch(batch, custom_metadata=custom_metadata)
        self.sink.flush()

    def fsync(self) -> None:
        os.fsync(self.sink.fileno())

    def close(self, fsync: bool) -> None:
        try:
            self.writer.close()
            self.sink.flush()
            if fsync:
                self.fsync()
        finally:
            self.sink.close()


class TableStore:
    """The files of one persisted table: logging, rotation, snapshots, and recovery.

    Args:
        root: the table's directory (see :func:`table_directory`); created if missing.
        config: the table's configuration (its columns give the log schema).
        fsync: one of :data:`FSYNC_MODES`.
        fsync_interval_ms: with ``fsync="interval"``, the longest time between two fsyncs of the logs.
        read_only: only read (:meth:`recover`, :meth:`generations`): no LOCK, no file created, changed or removed,
            and every write refused.

    Raises:
        RuntimeError: another live shard holds the directory.
        FileNotFoundError: ``read_only`` and ``root`` is not a directory.
    """

    def __init__(
        self,
        root: str,
        config: TableConfig,
        fsync: str = "none",
        fsync_interval_ms: int = 100,
        read_only: bool = False,
    ):
        if fsync not in FSYNC_MODES:
            raise ValueError(f"fsync must be one of {FSYNC_MODES}, got {fsync!r}")
        if not isinstance(fsync_interval_ms, int) or isinstance(fsync_interval_ms, bool) or fsync_interval_ms < 0:
            raise ValueError(f"fsync_interval_ms must be an int >= 0, got {fsync_interval_ms!r}")
        reserved = sorted({KEY_FIELD, PRIORITY_FIELD, TIMES_SAMPLED_FIELD} & {c.name for c in config.columns})
        if reserved:
            raise ValueError(f"table {config.name!r}: column names {reserved} are reserved by persistence")
        self.root = root
        self.config = config
        self.schema = arrow_schema(config.columns)
        self.fsync_mode = fsync
        self.fsync_interval_s = fsync_interval_ms / 1000.0
        self.read_only = read_only
        self._lock_fd: int | None = None
        if read_only:
            if not os.path.isdir(root):
                raise FileNotFoundError(f"replay table directory {root} does not exist")
        else:
            os.makedirs(root, exist_ok=True)
            self._lock_fd = os.open(os.path.join(root, "LOCK"), os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(self._lock_fd)
                raise RuntimeError(f"replay directory {root} is in use by another live shard") from None
        self.generation = 0
        """Generation new records go to (set by :meth:`recover`)."""
        self._wal: _StreamLog | None = None
        self._priorities: _StreamLog | None = None
        self._sampled: _StreamLog | None = None
        self._priority_records = 0
        """Priority records logged in the current generation (see ``sampled-<g>.arrows``)."""
        self._last_fsync = time.monotonic()
        self._dirty = False
        self._closed = False

    # ---- files -------------------------------------------------------------------------------------------------

    def _path(self, kind: str, generation: int) -> str:
        ext = "parquet" if kind == "snapshot" else "arrows"
        return os.path.join(self.root, f"{kind}-{generation}.{ext}")

    def _files(self) -> dict[str, dict[int, str]]:
        found: dict[str, dict[int, str]] = {"wal": {}, "priorities": {}, "sampled": {}, "snapshot": {}}
        for name in os.listdir(self.root):
            match = _FILE_RE.match(name)
            if match and (match.group(1) == "snapshot") == (match.group(3) == "parquet"):
                found[match.group(1)][int(match.group(2))] = os.path.join(self.root, name)
        return found

    def generations(self) -> dict[str, list[int]]:
        """Generations on disk per file kind (``wal``, ``priorities``, ``sampled``, ``snapshot``), ascending."""
        return {kind: sorted(gens) for kind, gens in self._files().items()}

    # ---- recovery ----------------------------------------------------------------------------------------------

    def recover(self) -> tuple[SnapshotImage | None, Iterator[InsertRecord | PriorityRecord | TimesSampledRecord]]:
        """The newest snapshot (or None) and the logged records after it, in their original order.

        Sample counts (:class:`TimesSampledRecord`) are only read for a configuration with ``max_times_sampled``.

        Leftover temp files of an interrupted snapshot are removed, and torn tails are cut off (with a warning).
        Records are read lazily as the iterator advances; new records go to a generation past every one on disk.
        A read-only store changes nothing: temp files stay and a torn tail is only skipped (with a warning).

        Raises:
            SchemaError: a file does not match the table's configuration (columns changed between runs).
        """
        for name in os.listdir(self.root):
            if name.endswith(".tmp") and not self.read_only:
                os.unlink(os.path.join(self.root, name))
        files = self._files()
        every = [g for gens in files.values() for g in gens]
        self.generation = max(every) + 1 if every else 0
        snapshot = None
        base = min(every) if every else 0
        if files["snapshot"]:
            base = max(files["snapshot"])
            snapshot = self._read_snapshot(files["snapshot"][base])
        start = snapshot.inserted if snapshot is not None else 0
        if self.config.max_times_sampled == 0:
            files["sampled"] = {}
        logged = sorted(g for kind in ("wal", "priorities", "sampled") for g in files[kind] if g >= base)
        return snapshot, self._replay(sorted(set(logged)), files, start)

    def _replay(
        self, generations: list[int], files: dict[str, dict[int, str]], inserted: int
    ) -> Iterator[InsertRecord | PriorityRecord | TimesSampledRecord]:
        for gen in generations:
            updates = self._read_priorities(files["priorities"][gen]) if gen in files["priorities"] else []
            counts = self._read_sampled(files["sampled"][gen]) if gen in files["sampled"] else []
            side = self._merge_side_records(updates, counts)
            pending = 0
            inserts = self._read_stream(files["wal"][gen], self.schema) if gen in files["wal"] else iter(())
            for batch, metadata in inserts:
                while pending < len(side) and side[pending][0] <= inserted:
                    yield side[pending][1]
                    pending += 1
                if metadata is None or _WRITER_KEY not in metadata:
                    raise SchemaError(f"{files['wal'][gen]}: record batch without {_WRITER_KEY.decode()} metadata")
                chunk = record_batch_to_chunk(batch, self.config.columns)
                rows = batch.num_rows
                if _DEDUP_KEY in metadata:
                    dedup_key = int(metadata[_DEDUP_KEY])
                else:
                    dedup_key = int(chunk["seq"][0]) if rows and "seq" in chunk else None
                dropped = int(metadata[_DROPPED_KEY]) if _DROPPED_KEY in metadata else 0
                yield InsertRecord(int(metadata[_WRITER_KEY]), chunk, rows, dedup_key, dropped)
                inserted += rows
            for _, record in side[pending:]:
                yield record

    @staticmethod
    def _merge_side_records(
        updates: list[tuple[np.ndarray, np.ndarray, int]], counts: list[tuple[np.ndarray, np.ndarray, int, int]]
    ) -> list[tuple[int, PriorityRecord | TimesSampledRecord]]:
        """Priority updates and sample counts of one generation in the order they were made, each with the insert
        counter it was made at (a count record follows the ``priority_updates`` priority records logged before
        it)."""
        merged: list[tuple[int, PriorityRecord | TimesSampledRecord]] = []
        taken = 0
        for keys, values, at, before in counts:
            while taken < min(before, len(updates)):
                merged.append((updates[taken][2], PriorityRecord(updates[taken][0], updates[taken][1])))
                taken += 1
            merged.append((at, TimesSampledRecord(keys, values)))
        merged.extend((at, PriorityRecord(keys, values)) for keys, values, at in updates[taken:])
        return merged

    def _read_priorities(self, path: str) -> list[tuple[np.ndarray, np.ndarray, int]]:
        out = []
        for batch, _ in self._read_stream(path, _PRIORITY_SCHEMA):
            keys = batch.column(0).to_numpy()
            priorities = batch.column(1).to_numpy()
            at = batch.column(2).to_numpy()
            if len(at) and not (at == at[0]).all():
                raise SchemaError(f"{path}: one priority update spans several insert counters")
            if len(at):
                out.append((keys, priorities, int(at[0])))
        return out

    def _read_sampled(self, path: str) -> list[tuple[np.ndarray, np.ndarray, int, int]]:
        out = []
        for batch, _ in self._read_stream(path, _SAMPLED_SCHEMA):
            keys, counts, at, before = (batch.column(i).to_numpy() for i in range(4))
            if len(at) and not ((at == at[0]).all() and (before == before[0]).all()):
                raise SchemaError(f"{path}: one sample count record spans several insert or update counters")
            if len(at):
                out.append((keys, counts, int(at[0]), int(before[0])))
        return out

    def _read_stream(self, path: str, schema: pa.Schema) -> Iterator[tuple[pa.RecordBatch, pa.KeyValueMetadata]]:
        """Record batches of a log with their custom metadata; a torn tail is truncated away (read-only: skipped)
        with a warning."""
        size = os.path.getsize(path)
        good = 0
        error: Exception | None = None
        with pa.OSFile(path, "rb") as source:
            try:
                reader = pa.ipc.open_stream(source) if size else None
            except (pa.ArrowInvalid, OSError) as exc:
                if not _is_torn(exc):
                    raise
                reader, error = None, exc
            if reader is not None:
                if not reader.schema.equals(schema):
                    raise SchemaError(
                        f"{path}: log schema {reader.schema} does not match the table's {schema} "
                        f"(did the table's columns change between runs?)"
                    )
                good = source.tell()
                while True:
                    try:
                        batch, metadata = reader.read_next_batch_with_custom_metadata()
                    except StopIteration:
                        # the reader also stops quietly at a partial length prefix; only an end-of-stream marker
                        # (or nothing) may follow the last batch
                        source.seek(good)
                        if source.read(size - good) in _END_MARKERS:
                            good = size
                        break
                    except (pa.ArrowInvalid, OSError) as exc:
                        if not _is_torn(exc):
                            raise
                        error = exc
                        break
                    good = source.tell()
                    yield batch, metadata
        if good < size:
            dropped = size - good
            action = "skipped" if self.read_only else "cut off"
            message = (
                f"replay log {path}: {action} a torn final record, dropping {dropped} byte(s) after offset {good} "
                f"({error if error is not None else 'trailing bytes'})"
            )
            logger.warning(message)
            warnings.warn(message, RuntimeWarning, stacklevel=2)
            if not self.read_only:
                os.truncate(path, good)

    def _read_snapshot(self, path: str) -> SnapshotImage:
        table = pq.read_table(path)
        raw = (table.schema.metadata or {}).get(SNAPSHOT_METADATA_KEY)
        if raw is None:
            raise SchemaError(f"{path}: not a replay snapshot (no {SNAPSHOT_METADATA_KEY.decode()} metadata)")
        meta = json.loads(raw)
        if meta.get("version") != FORMAT_VERSION:
            raise SchemaError(f"{path}: snapshot format version {meta.get('version')}, expected {FORMAT_VERSION}")
        names = [c.name for c in self.config.columns]
        missing = [n for n in names + [KEY_FIELD] if n not in table.column_names]
        if missing:
            raise SchemaError(f"{path}: snapshot lacks column(s) {missing} (did the table's columns change?)")
        rows = table.num_rows
        if rows > self.config.capacity:
            raise SchemaError(f"{path}: snapshot holds {rows} rows, more than the capacity {self.config.capacity}")
        inserted = int(meta["inserted"])
        keys = table.column(KEY_FIELD).to_numpy()
        if not np.array_equal(keys, np.arange(inserted - rows, inserted, dtype=np.int64)):
            raise SchemaError(f"{path}: snapshot keys are not the consecutive keys ending at inserted={inserted}")
        data = pa.Table.from_arrays([table.column(n) for n in names], schema=self.schema).combine_chunks()
        batches = data.to_batches()
        if batches:
            chunk = record_batch_to_chunk(batches[0], self.config.columns)
        else:
            chunk = {c.name: np.zeros((0,) + c.shape, dtype=c.np_dtype) for c in self.config.columns}
        priorities = None
        if PRIORITY_FIELD in table.column_names:
            priorities = table.column(PRIORITY_FIELD).to_numpy()
        times_sampled = None
        if TIMES_SAMPLED_FIELD in table.column_names:
            times_sampled = table.column(TIMES_SAMPLED_FIELD).to_numpy()
        seen = {int(w): (list(s["keys"]), s["floor"]) for w, s in meta["seen"].items()}
        return SnapshotImage(
            chunk,
            inserted,
            priorities,
            meta.get("max_priority"),
            seen,
            times_sampled,
            int(meta.get("removed", 0)),
            int(meta.get("dropped_non_finite", 0)),
            meta.get("priority_exponent"),
        )

    # ---- logging -----------------------------------------------------------------------------------------------

    def _refuse_if_read_only(self) -> None:
        if self.read_only:
            raise RuntimeError(f"replay table {self.config.name!r}: {self.root} was opened read-only")

    def _open(self, kind: str, schema: pa.Schema) -> _StreamLog:
        self._refuse_if_read_only()
        if self._closed:
            raise RuntimeError(f"replay table {self.config.name!r}: persistence was closed")
        log = _StreamLog(self._path(kind, self.generation), schema)
        if self.fsync_mode != "none":
            fsync_path(self.root)
        return log

    def _after_write(self) -> None:
        self._dirty = True
        if self.fsync_mode == "every_insert":
            self._sync()
        elif self.fsync_mode == "interval" and time.monotonic() - self._last_fsync >= self.fsync_interval_s:
            self._sync()

    def _sync(self) -> None:
        for log in (self._wal, self._priorities, self._sampled):
            if log is not None:
                log.fsync()
        self._last_fsync = time.monotonic()
        self._dirty = False

    def _append(self, attr: str, kind: str, schema: pa.Schema, batch: pa.RecordBatch, metadata=None) -> None:
        log = getattr(self, attr)
        if log is None:
            log = self._open(kind, schema)
            setattr(self, attr, log)
        try:
            log.append(batch, metadata)
            self._after_write()
        except BaseException:
            # the file may end in a partial record: never append after it; recovery cuts it off
            setattr(self, attr, None)
            try:
                log.close(fsync=False)
            except Exception:  # noqa: BLE001 - the original error is the one to report
                logger.exception("closing %s after a failed write", log.path)
            self.generation += 1
            self._priority_records = 0
            self._rotate_others(attr)
            raise

    def _rotate_others(self, failed: str) -> None:
        for other in _LOGS:
            log = getattr(self, other)
            if other != failed and log is not None:
                setattr(self, other, None)
                log.close(fsync=self.fsync_mode != "none")

    def append_insert(
        self,
        chunk: Mapping[str, np.ndarray],
        writer_id: int,
        dedup_key: int | None = None,
        dropped_non_finite: int = 0,
    ) -> None:
        """Log an insert (a chunk that passed :func:`replay.schema.validate_chunk`) before it is applied.

        ``dedup_key`` (the first ``seq`` of the chunk as sent) is needed when it is not the first ``seq`` of
        ``chunk``: when rows were dropped for NaN or inf (``dropped_non_finite`` of them), possibly all.
        """
        batch = chunk_to_record_batch(chunk, self.config.columns, validate=False)
        metadata = {_WRITER_KEY: str(int(writer_id)).encode()}
        if dedup_key is not None:
            metadata[_DEDUP_KEY] = str(int(dedup_key)).encode()
        if dropped_non_finite:
            metadata[_DROPPED_KEY] = str(int(dropped_non_finite)).encode()
        self._append("_wal", "wal", self.schema, batch, metadata)

    def append_priorities(self, keys: np.ndarray, priorities: np.ndarray, inserted: int) -> None:
        """Log a validated priority update made when the table's insert counter was ``inserted``."""
        n = len(keys)
        batch = pa.RecordBatch.from_arrays(
            [
                pa.array(np.asarray(keys, dtype=np.int64)),
                pa.array(np.asarray(priorities, dtype=np.float64)),
                pa.array(np.full(n, inserted, dtype=np.int64)),
            ],
            schema=_PRIORITY_SCHEMA,
        )
        self._append("_priorities", "priorities", _PRIORITY_SCHEMA, batch)
        if n:
            self._priority_records += 1

    def append_times_sampled(self, keys: np.ndarray, counts: np.ndarray, inserted: int) -> None:
        """Log the sample counts of rows (-1: removed) set when the table's insert counter was ``inserted``."""
        n = len(keys)
        batch = pa.RecordBatch.from_arrays(
            [
                pa.array(np.asarray(keys, dtype=np.int64)),
                pa.array(np.asarray(counts, dtype=np.int32)),
                pa.array(np.full(n, inserted, dtype=np.int64)),
                pa.array(np.full(n, self._priority_records, dtype=np.int64)),
            ],
            schema=_SAMPLED_SCHEMA,
        )
        self._append("_sampled", "sampled", _SAMPLED_SCHEMA, batch)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def rotate(self) -> int:
        """Close the current logs and start the next generation; return it. Later records go to its logs."""
        sync = self.fsync_mode != "none"
        for attr in _LOGS:
            log = getattr(self, attr)
            if log is not None:
                setattr(self, attr, None)
                log.close(fsync=sync)
        self.generation += 1
        self._priority_records = 0
        self._dirty = False
        return self.generation

    def close(self) -> None:
        """Close the logs (fsynced unless ``fsync="none"``) and release the directory."""
        if self._closed:
            return
        try:
            self.rotate()
        finally:
            self._closed = True
            if self._lock_fd is not None:
                os.close(self._lock_fd)

    # ---- snapshots ---------------------------------------------------------------------------------------------

    def write_snapshot(self, generation: int, image: SnapshotImage) -> str:
        """Write ``image`` as ``snapshot-<generation>.parquet`` (temp file, fsync, atomic rename); return its path."""
        self._refuse_if_read_only()
        batch = chunk_to_record_batch(image.chunk, self.config.columns, validate=False)
        rows = batch.num_rows
        arrays = list(batch.columns) + [pa.array(np.arange(image.inserted - rows, image.inserted, dtype=np.int64))]
        fields = list(self.schema) + [pa.field(KEY_FIELD, pa.int64(), nullable=False)]
        if image.priorities is not None:
            arrays.append(pa.array(np.asarray(image.priorities, dtype=np.float64)))
            fields.append(pa.field(PRIORITY_FIELD, pa.float64(), nullable=False))
        if image.times_sampled is not None:
            arrays.append(pa.array(np.asarray(image.times_sampled, dtype=np.int32)))
            fields.append(pa.field(TIMES_SAMPLED_FIELD, pa.int32(), nullable=False))
        meta = {
            "version": FORMAT_VERSION,
            "table": self.config.name,
            "generation": generation,
            "inserted": image.inserted,
            "max_priority": image.max_priority,
            "priority_exponent": self.config.priority_exponent if image.priorities is not None else None,
            "seen": {str(w): {"keys": keys, "floor": floor} for w, (keys, floor) in image.seen.items()},
            "removed": image.removed,
            "dropped_non_finite": image.dropped_non_finite,
        }
        schema = pa.schema(fields, metadata={SNAPSHOT_METADATA_KEY: json.dumps(meta).encode()})
        table = pa.Table.from_arrays(arrays, schema=schema)
        path = self._path("snapshot", generation)
        tmp = path + ".tmp"
        try:
            pq.write_table(table, tmp)
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        fsync_path(self.root)
        return path

    def remove_before(self, generation: int) -> list[str]:
        """Delete logs and snapshots of generations older than ``generation`` (after its snapshot is durable)."""
        self._refuse_if_read_only()
        removed = []
        for gens in self._files().values():
            for gen, path in gens.items():
                if gen < generation:
                    os.unlink(path)
                    removed.append(path)
        return removed
