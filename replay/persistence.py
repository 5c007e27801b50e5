"""Zero-loss persistence of one shard table: checksummed write-ahead logs plus Parquet snapshots.

Layout, per persisted table, under ``<directory>/shard-<index>/<table>/``::

    LOCK                      flock'ed by the live shard, so two shards never write one directory
    wal-<g>.log               one record per acknowledged insert: the rows stored as an Arrow record batch of the
                              table's :func:`replay.schema.arrow_schema`, the ``writer_id`` the insert was called
                              with, its dedup key (the chunk's first ``seq`` as sent) and the rows dropped for NaN
                              or inf (``non_finite="drop"``: the batch holds the kept rows only, possibly none)
    priorities-<g>.log        priority updates (prioritized tables): columns ``key`` (int64), ``priority`` (float64)
                              and ``inserted`` (int64, the table's insert counter when the update was made, so
                              recovery interleaves updates and inserts in their original order)
    sampled-<g>.log           sample counts (tables with ``max_times_sampled``): columns ``key`` (int64),
                              ``times_sampled`` (int32, the row's count; -1: the row was removed), ``inserted``
                              (int64, as above) and ``priority_updates`` (int64, records of ``priorities-<g>``
                              logged before it, so recovery also keeps the order of the two)
    snapshot-<g>.parquet      the table as it was when generation ``g`` began: the rows oldest to newest (vectors as
                              ``fixed_size_list``), plus ``__key`` (int64 row key) and, for prioritized tables,
                              ``__priority`` (float64, ``priority ** priority_exponent`` as the sum tree holds it);
                              with ``max_times_sampled``, ``__times_sampled`` (int32, -1 for a removed row, which
                              stays in the file so that keys stay consecutive); counters and dedup state as JSON
                              in the schema metadata under ``dynaray.replay`` (with the column names and
                              types, to check the footer by; its CRC-32 under ``dynaray.replay.crc32``);
                              Parquet page checksums on
    <file>.corrupt-<time>     a damaged file, moved aside (never deleted) once a snapshot holds what was recovered

Log format 2 (the ``.log`` files; docs/replay.md has it byte by byte): a file is a sequence of records, each a
40-byte header (magic ``\\x89DRLOG\\r\\n``, rows, metadata length, first row key, body length, CRC-32 of metadata
and body, CRC-32 of the header) followed by its metadata and its body (an Arrow IPC message). The first record is
the file header: JSON ``{"format": 2, "log": kind}`` and the Arrow schema. Format 1 logs (``.arrows``, plain Arrow
IPC streams without checksums) are refused with an error that says how to convert them.

A generation ``g`` is the state of the newest snapshot ``<= g`` plus logs ``g, g+1, ...`` in order. Recovery loads
the newest readable snapshot (temp files of an interrupted snapshot are removed) and replays every log of that
generation or newer; a process always appends to a fresh generation (one past the highest on disk), so it never
appends after a torn record. A snapshot keeps the previous snapshot and the logs after it (:meth:`TableStore.prune`),
so a damaged newest snapshot falls back to the previous one plus the logs after it.

Torn tails and damage. Only an incomplete record at the end of a log (the process died in the middle of a write:
the header is cut short, the record runs past the end of the file, or the rest of the file is zero bytes that never
reached the disk) is a torn tail: it is cut off with a warning naming the file and the bytes dropped. Any other
record that does not check (header or body checksum, a body that does not decode) is damage: the reader finds the
next record by its magic and a valid header checksum, recovers every valid record before and after, and reports the
file, the damaged byte ranges, rows recovered and rows lost in one line (rows lost are exact where the records
around the damage have keys: each insert record carries the key of its first row). Row keys stay those of the
records that were read; after lost rows, later rows get keys that many lower (:attr:`RecoveryReport.gaps`), and
logged priority updates and sample counts are moved to the new keys (those of lost rows are dropped); a cold tier's
segments do not follow, so :func:`replay.recovery.open_table` refuses such a table with a cold tier. A shard that
recovered damage writes a snapshot before it serves (:attr:`TableStore.needs_snapshot`); that snapshot's
:meth:`TableStore.prune` moves the damaged files aside as ``<name>.corrupt-<time>`` and removes the older files, so
no file with the old keys stays.
Counts are in :attr:`TableStore.recovery` (:meth:`RecoveryReport.stats`).

Duplicates. An insert whose record reached the log but that failed afterwards (an ``fsync`` error) was not applied;
the next record has the same first key, so recovery drops the unapplied one. A record whose ``(writer_id, dedup
key)`` is already recovered (logged twice) is recovered once. Both count in ``recovered_duplicates``.

Removals (``max_times_sampled``): a sample that removes rows logs their keys (count -1) before it returns, so a
removed row never comes back, killed process or not. Counts of rows not yet removed are logged only when the
shard closes (and kept in every snapshot), not on every sample, which would write a record per sampled row: after
a crash, a live row's count is the one of the last snapshot or clean close, so it can be sampled up to
``max_times_sampled - 1`` more times in all than configured. "Every acknowledged transition is recovered" then means
every acknowledged row that was not removed. The counts are read only for a configuration with
``max_times_sampled`` (export and inspection set it whenever the files hold counts, see :mod:`replay.stored`).

Durability: every record is written to the OS (one ``writev``) before the caller acknowledges the insert, so a
killed process loses nothing acknowledged. Against power loss, ``fsync`` chooses ``"every_insert"`` (``os.fsync``
before acknowledging), ``"interval"`` (at most ``fsync_interval_ms`` after a write: on the insert path when that
long has passed since the last fsync, and from a timer thread after the last write of a burst, so an idle store is
synced too; up to that window of acknowledged inserts can be lost) or ``"none"`` (the OS decides).

:class:`TableStore` is not thread-safe: the shard calls it under the table's lock, except for
:meth:`TableStore.write_snapshot`, :meth:`TableStore.prune` and :meth:`TableStore.remove_before`, which touch only
files no writer uses. The interval timer only fsyncs, under a lock of its own that closing a log also takes.

Readers outside the shard (export, inspection: :func:`replay.recovery.open_table` with ``read_only=True``) open a
store with ``read_only=True``: it takes no LOCK and changes no file, so it can read a directory a live shard is
writing; :meth:`TableStore.recover` then leaves temp files alone, skips a torn final record (a live writer may be in
the middle of it) with a warning instead of cutting it off, and reports damage without moving anything.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import struct
import threading
import time
import warnings
import zlib
from dataclasses import dataclass, field
from typing import BinaryIO, Iterator, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from replay.files import fsync_path
from replay.schema import SchemaError, arrow_schema, chunk_to_record_batch, record_batch_to_chunk
from replay.table import TableConfig

__all__ = [
    "FSYNC_MODES",
    "KEY_FIELD",
    "LOG_FORMAT",
    "PRIORITY_FIELD",
    "SNAPSHOT_METADATA_KEY",
    "TIMES_SAMPLED_FIELD",
    "DamagedFile",
    "InsertRecord",
    "PriorityRecord",
    "RecoveryReport",
    "SnapshotImage",
    "TableStore",
    "TimesSampledRecord",
    "log_schema",
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
"""Snapshot format version (in the snapshot's JSON)."""
LOG_FORMAT = 2
"""Log format version (in every log's file header); format 1 was a plain Arrow IPC stream (``.arrows``)."""
_SNAPSHOT_CRC_KEY = b"dynaray.replay.crc32"
_MAGIC = b"\x89DRLOG\r\n"
_HEAD = struct.Struct("<8sIIqQI")
"""Record header before its own checksum: magic, rows, metadata length, first row key (-1: none), body length,
CRC-32 of metadata then body."""
_CRC = struct.Struct("<I")
_HEAD_SIZE = _HEAD.size + _CRC.size
_WAL_META = struct.Struct("<qqq")
"""Metadata of an insert record: writer_id, dedup key (``_NO_DEDUP_KEY``: none), rows dropped for NaN or inf."""
_NO_DEDUP_KEY = -(1 << 63)
_SCAN_BLOCK = 1 << 20
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
_FILE_RE = re.compile(r"^(wal|priorities|sampled|snapshot)-(\d+)\.(log|parquet)$")
_FORMAT1_RE = re.compile(r"^(wal|priorities|sampled)-(\d+)\.arrows$")
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


@dataclass
class DamagedFile:
    """A log or snapshot that recovery found damaged."""

    path: str
    reason: str
    """What failed first (a checksum, a header, the Parquet reader)."""
    ranges: list[tuple[int, int]] = field(default_factory=list)
    """Damaged byte ranges ``[start, end)`` of a log (empty for a snapshot: all of it is unused)."""
    records: int = 0
    """Damaged records of a log (a stretch without a readable header counts once: how many it held is unknown)."""
    recovered: int = 0
    """Rows (insert log) or records (priority and sample-count logs) recovered from the file."""
    rows_lost: int = 0
    """Rows lost with the damaged records of an insert log, as far as known."""
    lost_unknown: bool = False
    """Whether damaged records hold rows that could not be counted (no readable header, no key after them)."""
    moved_to: str | None = None
    """Where the file was moved aside, once it was."""


@dataclass
class RecoveryReport:
    """What :meth:`TableStore.recover` found besides the data: damaged files, lost rows, duplicates."""

    damaged: list[DamagedFile] = field(default_factory=list)
    missing_rows: int = 0
    """Rows whose keys are in no readable file although later keys are (e.g. the logs after a damaged snapshot are
    gone); part of :attr:`rows_lost`."""
    duplicates: int = 0
    """Insert records logged twice (or logged but not applied) and recovered once."""
    gaps: list[tuple[int, int]] = field(default_factory=list)
    """``(first key, rows)`` of logged keys no readable record holds, with records after them (whose rows got keys
    that many lower), ascending; filled as the records are read."""

    @property
    def rows_lost(self) -> int:
        return self.missing_rows + sum(d.rows_lost for d in self.damaged)

    def stats(self) -> dict[str, int]:
        """``corrupt_files``, ``corrupt_records`` (damaged log records), ``rows_lost_to_corruption`` and
        ``recovered_duplicates``, for a shard's stats and metrics."""
        return {
            "corrupt_files": len(self.damaged),
            "corrupt_records": sum(d.records for d in self.damaged),
            "rows_lost_to_corruption": self.rows_lost,
            "recovered_duplicates": self.duplicates,
        }

    def summary(self) -> str:
        """One phrase for a recovery log line; empty when nothing was found."""
        parts = []
        if self.damaged:
            lost = f"{self.rows_lost} row(s) lost" + (" and more of unknown count" if self._unknown else "")
            parts.append(f"{len(self.damaged)} damaged file(s), {lost}")
        elif self.missing_rows:
            parts.append(f"{self.missing_rows} row(s) lost")
        if self.duplicates:
            parts.append(f"{self.duplicates} duplicate record(s) recovered once")
        return "; ".join(parts)

    @property
    def _unknown(self) -> bool:
        return any(d.lost_unknown for d in self.damaged)


def _warn(message: str, level: int = logging.WARNING) -> None:
    logger.log(level, message)
    warnings.warn(message, RuntimeWarning, stacklevel=3)


def _write_all(fd: int, parts: list) -> None:
    """Write ``parts`` (buffers) to ``fd`` with ``writev``, again for the rest after a short write."""
    views = [memoryview(p).cast("B") for p in parts if len(p)]
    while views:
        written = os.writev(fd, views)
        while views and written >= len(views[0]):
            written -= len(views[0])
            views.pop(0)
        if written:
            views[0] = views[0][written:]


class _RecordLog:
    """An append-only log of checksummed records (log format 2), each handed to the OS in one ``writev``."""

    def __init__(self, path: str, kind: str, schema: pa.Schema):
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            header = json.dumps({"format": LOG_FORMAT, "log": kind}).encode()
            self.append(schema.serialize(), rows=0, key=-1, meta=header)
        except BaseException:
            os.close(self.fd)
            raise

    def append(self, body: pa.Buffer, rows: int, key: int, meta: bytes = b"") -> None:
        crc = zlib.crc32(body, zlib.crc32(meta))
        head = _HEAD.pack(_MAGIC, rows, len(meta), key, body.size, crc)
        _write_all(self.fd, [head + _CRC.pack(zlib.crc32(head)), meta, body])

    def fsync(self) -> None:
        os.fsync(self.fd)

    def close(self, fsync: bool) -> None:
        try:
            if fsync:
                self.fsync()
        finally:
            os.close(self.fd)


@dataclass
class _Frame:
    """One record of a log as read: ``status`` "ok", or why it does not check."""

    status: str
    header_ok: bool
    rows: int = 0
    key: int = -1
    meta: bytes = b""
    body: bytes = b""
    end: int = 0


def _frame_at(f: BinaryIO, pos: int, size: int, read_payload: bool = True) -> _Frame:
    if size - pos < _HEAD_SIZE:
        return _Frame("an incomplete record header", False, end=size)
    f.seek(pos)
    head = f.read(_HEAD_SIZE)
    magic, rows, meta_len, key, body_len, crc = _HEAD.unpack_from(head)
    if magic != _MAGIC or zlib.crc32(head[: _HEAD.size]) != _CRC.unpack_from(head, _HEAD.size)[0]:
        return _Frame("no valid record header", False, end=size)
    end = pos + _HEAD_SIZE + meta_len + body_len
    if end > size:
        return _Frame(f"a record of {end - pos} bytes with {size - pos} on disk", True, rows, key, end=end)
    if not read_payload:
        return _Frame("ok", True, rows, key, end=end)
    meta = f.read(meta_len)
    body = f.read(body_len)
    if zlib.crc32(body, zlib.crc32(meta)) != crc:
        return _Frame("a record whose checksum does not match", True, rows, key, end=end)
    return _Frame("ok", True, rows, key, meta, body, end)


def _next_record(f: BinaryIO, start: int, size: int) -> int | None:
    """Offset of the first record at or after ``start`` with a valid header that fits in the file, or None."""
    pos = start
    while pos < size:
        f.seek(pos)
        block = f.read(_SCAN_BLOCK + len(_MAGIC) - 1)
        at = block.find(_MAGIC)
        while at >= 0:
            frame = _frame_at(f, pos + at, size, read_payload=False)
            if frame.header_ok and frame.end <= size:
                return pos + at
            at = block.find(_MAGIC, at + 1)
        pos += _SCAN_BLOCK
    return None


def _all_zero(f: BinaryIO, start: int, size: int) -> bool:
    f.seek(start)
    while True:
        block = f.read(_SCAN_BLOCK)
        if not block:
            return True
        if block.count(0) != len(block):
            return False


def _file_header(frame: _Frame) -> dict | None:
    """The JSON of a log's file header record, or None when ``frame`` is not one."""
    if frame.status != "ok" or frame.rows != 0 or frame.key != -1 or not frame.meta.startswith(b"{"):
        return None
    try:
        header = json.loads(frame.meta)
    except ValueError:
        return None
    return header if isinstance(header, dict) and "format" in header else None


def _field_list(schema: pa.Schema) -> list[list[str]]:
    """A snapshot's columns as ``[name, type]`` pairs (in its JSON, to check the Parquet footer against)."""
    def type_name(t: pa.DataType) -> str:  # Parquet names a list's item "element" when it reads it back
        return f"fixed_size_list<{t.value_type}>[{t.list_size}]" if pa.types.is_fixed_size_list(t) else str(t)

    return [[f.name, type_name(f.type)] for f in schema]


def log_schema(path: str) -> pa.Schema | None:
    """The Arrow schema in a log's file header, or None (an empty or torn file, or a damaged header)."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            frame = _frame_at(f, 0, size)
    except FileNotFoundError:
        return None
    header = _file_header(frame)
    if header is None or header.get("format") != LOG_FORMAT:
        return None
    return pa.ipc.read_schema(pa.py_buffer(frame.body))


@dataclass
class _Record:
    """A record of a log that checked and decoded."""

    rows: int
    key: int
    meta: bytes
    batch: pa.RecordBatch


@dataclass
class _Damage:
    """A damaged stretch of a log, between records that checked."""

    file: DamagedFile
    rows: int
    """Rows of the damaged records whose headers checked."""
    unknown: bool
    """Whether part of the stretch has no readable header."""


class _Undecodable(Exception):
    """A record whose checksums match but whose body is not what the log holds."""


class _SnapshotDamaged(Exception):
    """A snapshot file that cannot be read (as opposed to one that does not match the table's configuration)."""


@dataclass
class _Held:
    """An insert record read but not yet given out: the next record tells whether it was applied."""

    record: InsertRecord
    key: int
    """First row key as logged (-1: the record has none)."""
    source: str


class TableStore:
    """The files of one persisted table: logging, rotation, snapshots, and recovery.

    Args:
        root: the table's directory (see :func:`table_directory`); created if missing.
        config: the table's configuration (its columns give the log schema).
        fsync: one of :data:`FSYNC_MODES`.
        fsync_interval_ms: with ``fsync="interval"``, the longest time from a write to the fsync that covers it
            (a timer thread syncs after the last write of a burst).
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
        self.recovery = RecoveryReport()
        """What the last :meth:`recover` found besides the data (complete once its records were read)."""
        self._settle_damage = False
        self._wal: _RecordLog | None = None
        self._priorities: _RecordLog | None = None
        self._sampled: _RecordLog | None = None
        self._priority_records = 0
        """Priority records logged in the current generation (see ``sampled-<g>.log``)."""
        self.fsyncs = 0
        """Times the open logs were fsynced (on the insert path or by the interval timer)."""
        self._last_fsync = time.monotonic()
        self._dirty = False
        self._closed = False
        self._sync_lock = threading.Lock()
        """Held by the interval timer while it fsyncs, and wherever a log is closed."""
        self._stop_timer = threading.Event()
        self._timer: threading.Thread | None = None
        if fsync == "interval" and fsync_interval_ms > 0 and not read_only:
            self._timer = threading.Thread(target=self._sync_when_idle, name=f"fsync-{config.name}", daemon=True)
            self._timer.start()

    # ---- files -------------------------------------------------------------------------------------------------

    def _path(self, kind: str, generation: int) -> str:
        ext = "parquet" if kind == "snapshot" else "log"
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

    @property
    def needs_snapshot(self) -> bool:
        """Whether the last recovery found damage: the recovered table must be snapshotted before anything is
        logged, so that :meth:`prune` can move the damaged files aside (writable stores only)."""
        return self._settle_damage

    # ---- recovery ----------------------------------------------------------------------------------------------

    def recover(self) -> tuple[SnapshotImage | None, Iterator[InsertRecord | PriorityRecord | TimesSampledRecord]]:
        """The newest readable snapshot (or None) and the logged records after it, in their original order.

        Sample counts (:class:`TimesSampledRecord`) are only read for a configuration with ``max_times_sampled``.

        Leftover temp files of an interrupted snapshot are removed, and torn tails are cut off (with a warning).
        A damaged snapshot is passed over for the one before it; damaged log records are skipped and every record
        that checks is given out; what was damaged and lost is logged and kept in :attr:`recovery` once the
        iterator is exhausted (see the module docstring). Records are read lazily as the iterator advances; new
        records go to a generation past every one on disk. A read-only store changes nothing: temp files stay and
        a torn tail is only skipped (with a warning).

        Raises:
            SchemaError: a file does not match the table's configuration (columns changed between runs), or a log
                is in format 1.
        """
        self.recovery = RecoveryReport()
        self._settle_damage = False
        names = os.listdir(self.root)
        old = sorted(name for name in names if _FORMAT1_RE.match(name))
        if old:
            raise SchemaError(
                f"{self.root}: log file(s) {old} are in replay log format 1 (Arrow IPC streams); this version reads "
                f"format {LOG_FORMAT} (.log files) only. Export the table with the dynaray version that wrote them "
                f"(dynaray replay export) and import the export into a new directory (dynaray replay import)"
            )
        for name in names:
            if name.endswith(".tmp") and not self.read_only:
                os.unlink(os.path.join(self.root, name))
        files = self._files()
        every = [g for gens in files.values() for g in gens]
        self.generation = max(every) + 1 if every else 0
        snapshot = None
        base = min(every) if every else 0
        damaged_snapshots = []
        for gen in sorted(files["snapshot"], reverse=True):
            try:
                snapshot = self._read_snapshot(files["snapshot"][gen])
            except _SnapshotDamaged as exc:
                damaged_snapshots.append(DamagedFile(files["snapshot"][gen], str(exc)))
                continue
            base = gen
            break
        for damage in damaged_snapshots:
            self.recovery.damaged.append(damage)
            self._settle_damage = not self.read_only
            fallback = f"snapshot-{base}" if snapshot is not None else "no snapshot"
            self._announce(
                f"replay snapshot {damage.path} is damaged ({damage.reason}); recovering from {fallback} and the "
                f"logs after it"
            )
        start = snapshot.inserted if snapshot is not None else 0
        if self.config.max_times_sampled == 0:
            files["sampled"] = {}
        logged = sorted({g for kind in ("wal", "priorities", "sampled") for g in files[kind] if g >= base})
        seen = snapshot.seen if snapshot is not None else {}
        return snapshot, self._replay(logged, files, start, seen)

    def _announce(self, message: str) -> None:
        """Log (and warn about) a damaged file, saying what becomes of it."""
        if self.read_only:
            message += "; left in place (read-only)"
        else:
            message += "; it is moved aside once the snapshot after this recovery is written"
        _warn(message, logging.ERROR)

    def _replay(
        self, generations: list[int], files: dict[str, dict[int, str]], inserted: int, seen_state: Mapping
    ) -> Iterator[InsertRecord | PriorityRecord | TimesSampledRecord]:
        """Records in their original order. ``inserted`` is the insert counter as the logs numbered rows; rows that
        no readable record holds open gaps in it, and keys of priority and count records are moved past them."""
        seen = {int(w): set(keys) for w, (keys, _) in seen_state.items()}
        floors = {int(w): floor for w, (_, floor) in seen_state.items() if floor is not None}
        gaps = self.recovery.gaps
        damage: list[_Damage] = []
        """Damaged stretches of insert logs since the last insert record that checked."""
        recovered: dict[str, int] = {}
        held: _Held | None = None

        def settle(lost: int | None) -> None:
            # rows lost in the damaged stretches since the last record: exact when the keys around them say it
            # (``lost``), else what their headers say
            for i, stretch in enumerate(damage):
                share = stretch.rows if lost is None else min(stretch.rows, lost)
                if lost is not None:
                    lost -= share
                    if i == len(damage) - 1:
                        share += lost
                stretch.file.rows_lost += share
                stretch.file.lost_unknown |= stretch.unknown and lost is None
            damage.clear()

        def release(item: _Held) -> InsertRecord:
            nonlocal inserted
            record = item.record
            if record.dedup_key is not None:
                seen.setdefault(record.writer_id, set()).add(record.dedup_key)
            inserted = (item.key if item.key >= 0 else inserted) + record.rows
            recovered[item.source] = recovered.get(item.source, 0) + record.rows
            return record

        def translated(record: PriorityRecord | TimesSampledRecord) -> PriorityRecord | TimesSampledRecord:
            if not gaps:
                return record
            keys = record.keys
            keep = np.ones(len(keys), dtype=bool)
            shift = np.zeros(len(keys), dtype=np.int64)
            for start, length in gaps:
                keep &= (keys < start) | (keys >= start + length)
                shift += np.where(keys >= start + length, length, 0)
            values = record.priorities if isinstance(record, PriorityRecord) else record.counts
            return type(record)((keys - shift)[keep], values[keep])

        def duplicate(record: InsertRecord) -> bool:
            key = record.dedup_key
            if key is None:
                return False
            floor = floors.get(record.writer_id)
            return key in seen.get(record.writer_id, ()) or (floor is not None and key <= floor)

        for gen in generations:
            updates = self._read_priorities(files["priorities"][gen]) if gen in files["priorities"] else []
            counts = self._read_sampled(files["sampled"][gen]) if gen in files["sampled"] else []
            side = self._merge_side_records(updates, counts)
            pending = 0
            path = files["wal"].get(gen)
            for item in self._read_log(path, "wal", self.schema) if path is not None else ():
                if isinstance(item, _Damage):
                    damage.append(item)
                    continue
                record = self._insert_record(item, path)
                # ---- the record before: not applied if this one starts among its rows (its insert failed after
                # the write, e.g. in fsync, and the counter stayed; a record without rows changes no key either way)
                if held is not None:
                    if item.key >= 0 and 0 <= held.key and item.key < held.key + held.record.rows:
                        self.recovery.duplicates += 1
                    else:
                        yield release(held)
                    held = None
                while pending < len(side) and side[pending][0] <= inserted:
                    yield translated(side[pending][1])
                    pending += 1
                # ---- this one: a duplicate, after a gap, or next
                if duplicate(record) or 0 <= item.key < inserted:
                    self.recovery.duplicates += 1
                    continue
                if item.key > inserted:
                    gaps.append((inserted, item.key - inserted))
                    if not damage:
                        self.recovery.missing_rows += item.key - inserted
                        _warn(
                            f"replay table {self.config.name!r} in {self.root}: rows with keys [{inserted}, "
                            f"{item.key}) are in no readable file (lost); {path} goes on from key {item.key}"
                        )
                    settle(item.key - inserted)
                    inserted = item.key
                else:
                    settle(0 if item.key >= 0 else None)
                held = _Held(record, item.key, path)
            if held is not None and pending < len(side):
                end = (held.key if held.key >= 0 else inserted) + held.record.rows
                if held.record.rows == 0 or side[-1][0] >= end:
                    # a record of the other logs made after its rows were written: it was applied
                    yield release(held)
                    held = None
            for _, record in side[pending:]:
                yield translated(record)
        if held is not None:
            yield release(held)
        settle(None)
        for damaged in self.recovery.damaged:
            if damaged.ranges:
                damaged.recovered += recovered.get(damaged.path, 0)
                self._announce_log(damaged)
        if (self.recovery.damaged or gaps) and not self.read_only:
            self._settle_damage = True
        if self.recovery.duplicates:
            logger.warning(
                "replay table %r in %s: %d insert record(s) logged twice (or logged but not applied) were recovered "
                "once",
                self.config.name,
                self.root,
                self.recovery.duplicates,
            )

    def _announce_log(self, damage: DamagedFile) -> None:
        spans = ", ".join(f"[{a}, {b})" for a, b in damage.ranges)
        if os.path.basename(damage.path).startswith("wal-"):
            what = "row(s)"
            lost = f"lost {damage.rows_lost} row(s)" + (" and more of unknown count" if damage.lost_unknown else "")
        else:
            what, lost = "record(s)", "lost them"
        self._announce(
            f"replay log {damage.path}: damaged bytes {spans} ({damage.reason}); recovered {damage.recovered} "
            f"{what} from the records before and after, {damage.records} damaged record(s), {lost}"
        )

    def _insert_record(self, item: _Record, path: str) -> InsertRecord:
        writer_id, dedup_key, dropped = _WAL_META.unpack(item.meta)
        chunk = record_batch_to_chunk(item.batch, self.config.columns)
        return InsertRecord(
            writer_id, chunk, item.rows, None if dedup_key == _NO_DEDUP_KEY else dedup_key, dropped
        )

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

    def _side_log(self, path: str, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
        recovered = 0
        for item in self._read_log(path, os.path.basename(path).split("-")[0], schema):
            if isinstance(item, _Record):
                recovered += 1
                yield item.batch
        for damage in self.recovery.damaged:
            if damage.path == path:
                damage.recovered = recovered

    def _read_priorities(self, path: str) -> list[tuple[np.ndarray, np.ndarray, int]]:
        out = []
        for batch in self._side_log(path, _PRIORITY_SCHEMA):
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
        for batch in self._side_log(path, _SAMPLED_SCHEMA):
            keys, counts, at, before = (batch.column(i).to_numpy() for i in range(4))
            if len(at) and not ((at == at[0]).all() and (before == before[0]).all()):
                raise SchemaError(f"{path}: one sample count record spans several insert or update counters")
            if len(at):
                out.append((keys, counts, int(at[0]), int(before[0])))
        return out

    def _read_log(self, path: str, kind: str, schema: pa.Schema) -> Iterator[_Record | _Damage]:
        """The records of a log that check, and a :class:`_Damage` for each damaged stretch between them (also
        registered in :attr:`recovery`); a torn tail is cut off (read-only: skipped) with a warning."""
        size = os.path.getsize(path)
        file: DamagedFile | None = None
        with open(path, "rb") as f:
            pos = 0
            header = _frame_at(f, 0, size) if size else None
            meta = _file_header(header) if header is not None else None
            if meta is not None:
                self._check_file_header(path, kind, schema, meta, header)
                pos = header.end
            while pos < size:
                frame = _frame_at(f, pos, size)
                if frame.status == "ok":
                    try:
                        yield self._decode(frame, kind, schema)
                        pos = frame.end
                        continue
                    except _Undecodable as exc:
                        frame.status = f"a record that does not decode: {exc}"
                # ---- a damaged record, a damaged stretch up to the next valid header, or the torn tail
                if frame.header_ok and frame.end <= size:
                    stop = frame.end  # the header's checksum vouches for the record's length
                else:
                    following = _next_record(f, pos + 1, size)
                    if following is None:
                        if (frame.header_ok and frame.end > size) or size - pos < _HEAD_SIZE:
                            self._cut_torn(path, pos, size, frame.status)
                            return
                        if _all_zero(f, pos, size):
                            self._cut_torn(path, pos, size, "zero bytes that never reached the disk")
                            return
                    stop = size if following is None else following
                if file is None:
                    file = DamagedFile(path, frame.status)
                    self.recovery.damaged.append(file)
                file.ranges.append((pos, stop))
                whole = frame.header_ok and frame.end == stop
                file.records += 1
                yield _Damage(file, frame.rows if frame.header_ok else 0, not whole)
                pos = stop

    def _check_file_header(self, path: str, kind: str, schema: pa.Schema, meta: dict, header: _Frame) -> None:
        if meta.get("format") != LOG_FORMAT or meta.get("log") != kind:
            raise SchemaError(
                f"{path}: a {meta.get('log')!r} log in format {meta.get('format')}, expected a {kind!r} log in "
                f"format {LOG_FORMAT}"
            )
        logged = pa.ipc.read_schema(pa.py_buffer(header.body))
        if not logged.equals(schema):
            raise SchemaError(
                f"{path}: log schema {logged} does not match the table's {schema} "
                f"(did the table's columns change between runs?)"
            )

    def _decode(self, frame: _Frame, kind: str, schema: pa.Schema) -> _Record:
        if kind == "wal" and len(frame.meta) != _WAL_META.size:
            raise _Undecodable(f"{len(frame.meta)} bytes of insert metadata, expected {_WAL_META.size}")
        try:
            batch = pa.ipc.read_record_batch(pa.py_buffer(frame.body), schema)
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise _Undecodable(str(exc).splitlines()[0]) from None
        if batch.num_rows != frame.rows:
            raise _Undecodable(f"{batch.num_rows} rows, the header says {frame.rows}")
        return _Record(frame.rows, frame.key, frame.meta, batch)

    def _cut_torn(self, path: str, good: int, size: int, reason: str) -> None:
        action = "skipped" if self.read_only else "cut off"
        _warn(
            f"replay log {path}: {action} a torn final record, dropping {size - good} byte(s) after offset {good} "
            f"({reason})"
        )
        if not self.read_only:
            os.truncate(path, good)

    def _read_snapshot(self, path: str) -> SnapshotImage:
        try:
            table = pq.read_table(path, page_checksum_verification=True)
        except (OSError, pa.ArrowException) as exc:
            raise _SnapshotDamaged(str(exc).splitlines()[0]) from None
        metadata = table.schema.metadata or {}
        raw = metadata.get(SNAPSHOT_METADATA_KEY)
        if raw is None:
            raise _SnapshotDamaged(f"no {SNAPSHOT_METADATA_KEY.decode()} metadata")
        crc = metadata.get(_SNAPSHOT_CRC_KEY)
        if crc is not None and crc != str(zlib.crc32(raw)).encode():
            raise _SnapshotDamaged(f"its {SNAPSHOT_METADATA_KEY.decode()} metadata does not match its checksum")
        try:
            meta = json.loads(raw)
            inserted = int(meta["inserted"])
            seen = {int(w): (list(s["keys"]), s["floor"]) for w, s in meta["seen"].items()}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise _SnapshotDamaged(f"unreadable {SNAPSHOT_METADATA_KEY.decode()} metadata: {exc!r}") from None
        if meta.get("version") != FORMAT_VERSION:
            raise SchemaError(f"{path}: snapshot format version {meta.get('version')}, expected {FORMAT_VERSION}")
        if "fields" in meta and meta["fields"] != _field_list(table.schema):
            # the footer's schema is not covered by page checksums: a damaged column name or type shows here
            raise _SnapshotDamaged(f"its columns {_field_list(table.schema)} are not the ones written {meta['fields']}")
        names = [c.name for c in self.config.columns]
        missing = [n for n in names + [KEY_FIELD] if n not in table.column_names]
        if missing:
            raise SchemaError(f"{path}: snapshot lacks column(s) {missing} (did the table's columns change?)")
        rows = table.num_rows
        if rows > self.config.capacity:
            raise SchemaError(f"{path}: snapshot holds {rows} rows, more than the capacity {self.config.capacity}")
        keys = table.column(KEY_FIELD).to_numpy()
        if not np.array_equal(keys, np.arange(inserted - rows, inserted, dtype=np.int64)):
            raise _SnapshotDamaged(f"its keys are not the consecutive keys ending at inserted={inserted}")
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

    def _open(self, kind: str, schema: pa.Schema) -> _RecordLog:
        self._refuse_if_read_only()
        if self._closed:
            raise RuntimeError(f"replay table {self.config.name!r}: persistence was closed")
        log = _RecordLog(self._path(kind, self.generation), kind, schema)
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
        self._dirty = False
        for log in (self._wal, self._priorities, self._sampled):
            if log is not None:
                log.fsync()
        self._last_fsync = time.monotonic()
        self.fsyncs += 1

    def sync(self) -> None:
        """fsync the open logs now, whatever the fsync mode (e.g. for a checkpoint's replay marker)."""
        with self._sync_lock:
            if not self._closed:
                self._sync()

    def _sync_when_idle(self) -> None:
        """The interval timer: fsync the logs ``fsync_interval_s`` after a write that no fsync covers yet, so the
        last burst before an idle period is synced too. The insert path only sets the dirty flag."""
        interval = self.fsync_interval_s
        while True:
            wait = interval
            if self._dirty:
                wait = max(0.0, self._last_fsync + interval - time.monotonic())
            if self._stop_timer.wait(wait):
                return
            if not self._dirty or time.monotonic() - self._last_fsync < interval:
                continue
            with self._sync_lock:
                if self._closed:
                    return
                try:
                    self._sync()
                except OSError:
                    self._dirty = True
                    self._last_fsync = time.monotonic()  # try again an interval later, not in a busy loop
                    logger.exception("fsync of the replay logs in %s failed", self.root)

    def _close_log(self, log: _RecordLog, fsync: bool) -> None:
        with self._sync_lock:
            log.close(fsync=fsync)

    def _append(
        self, attr: str, kind: str, schema: pa.Schema, batch: pa.RecordBatch, key: int = -1, meta: bytes = b""
    ) -> None:
        log = getattr(self, attr)
        if log is None:
            log = self._open(kind, schema)
            setattr(self, attr, log)
        try:
            log.append(batch.serialize(), batch.num_rows, key, meta)
            self._after_write()
        except BaseException:
            # the file may end in a partial record: never append after it; recovery cuts it off
            setattr(self, attr, None)
            try:
                self._close_log(log, fsync=False)
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
                self._close_log(log, fsync=self.fsync_mode != "none")

    def append_insert(
        self,
        chunk: Mapping[str, np.ndarray],
        writer_id: int,
        dedup_key: int | None = None,
        dropped_non_finite: int = 0,
        first_key: int | None = None,
    ) -> None:
        """Log an insert (a chunk that passed :func:`replay.schema.validate_chunk`) before it is applied.

        ``dedup_key`` (the first ``seq`` of the chunk as sent; default: the first ``seq`` of ``chunk``) is needed
        when rows were dropped for NaN or inf (``dropped_non_finite`` of them), possibly all. ``first_key`` is the
        table's insert counter before this insert (the key its first row gets): with it, recovery counts the rows
        of damaged records exactly and tells an unapplied record from the one after it (see the module docstring).
        """
        batch = chunk_to_record_batch(chunk, self.config.columns, validate=False)
        if dedup_key is None and batch.num_rows and "seq" in chunk:
            dedup_key = int(chunk["seq"][0])
        meta = _WAL_META.pack(
            int(writer_id), _NO_DEDUP_KEY if dedup_key is None else int(dedup_key), int(dropped_non_finite)
        )
        self._append("_wal", "wal", self.schema, batch, -1 if first_key is None else int(first_key), meta)

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
                self._close_log(log, fsync=sync)
        self.generation += 1
        self._priority_records = 0
        self._dirty = False
        return self.generation

    def close(self) -> None:
        """Stop the interval timer, close the logs (fsynced unless ``fsync="none"``) and release the directory."""
        if self._closed:
            return
        self._stop_timer.set()
        if self._timer is not None:
            self._timer.join()
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
            "fields": _field_list(pa.schema(fields)),
        }
        raw = json.dumps(meta).encode()
        schema = pa.schema(fields, metadata={SNAPSHOT_METADATA_KEY: raw, _SNAPSHOT_CRC_KEY: str(zlib.crc32(raw))})
        table = pa.Table.from_arrays(arrays, schema=schema)
        path = self._path("snapshot", generation)
        tmp = path + ".tmp"
        try:
            pq.write_table(table, tmp, write_page_checksum=True)
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

    def prune(self, generation: int) -> list[str]:
        """After ``snapshot-<generation>`` is durable, delete the files no recovery needs; return their paths.

        The previous snapshot and the logs after it stay, so that recovery can fall back to them should the newest
        snapshot be damaged (with no previous snapshot, nothing is deleted). After a recovery that found damage
        (:attr:`needs_snapshot`) every file older than ``generation`` goes instead (the rows may have new keys),
        the damaged ones moved aside (see :meth:`remove_before`).
        """
        self._refuse_if_read_only()
        if self._settle_damage:
            removed = self.remove_before(generation)
            self._settle_damage = False
            return removed
        older = [g for g in self._files()["snapshot"] if g < generation]
        return self.remove_before(max(older)) if older else []

    def remove_before(self, generation: int) -> list[str]:
        """Delete logs and snapshots of generations older than ``generation``; return their paths. A file the last
        recovery found damaged is not deleted but renamed to ``<name>.corrupt-<time>`` (with a log line)."""
        self._refuse_if_read_only()
        damaged = {d.path: d for d in self.recovery.damaged}
        stamp = time.strftime("%Y%m%dT%H%M%S")
        removed = []
        for gens in self._files().values():
            for gen, path in gens.items():
                if gen >= generation:
                    continue
                if path in damaged:
                    aside = f"{path}.corrupt-{stamp}"
                    os.replace(path, aside)
                    damaged[path].moved_to = aside
                    logger.warning("replay: moved the damaged file %s aside to %s", path, aside)
                else:
                    os.unlink(path)
                    removed.append(path)
        fsync_path(self.root)
        return removed
