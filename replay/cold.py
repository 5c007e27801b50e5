"""Cold tier of a replay table: rows evicted from memory, kept in Parquet segment files and still sampled.

A table with :attr:`replay.table.TableConfig.disk_capacity` ``> 0`` hands every row its in-memory ring evicts to
a :class:`ColdTier` instead of dropping it. The cold tier keeps the newest ``disk_capacity`` of those rows, so the
table stores up to ``capacity + disk_capacity`` rows, FIFO across memory and disk: the ring holds the newest keys
``[inserted - memory rows, inserted)``, the cold tier the keys just before them.

Layout, under ``<directory>/shard-<index>/<table>/cold/``::

    LOCK                                  flock'ed by the live shard
    segment-<first key, 20 digits>.parquet  consecutive rows from ``first key`` on, the table's
                                          :func:`replay.schema.arrow_schema`, one row group, uncompressed

Rows move in three stages. Evicted rows are copied into a *staged* segment (numpy columns in memory, sampled
from there); when it holds ``segment_rows`` rows it is *sealed* and waits to be *written*: a temp file, fsync,
verification, atomic rename, then the in-memory copy is swapped for the file. A shard writes sealed segments after
an insert returns, outside the table's lock, so sampling goes on meanwhile (``write_behind``); a plain table
writes them during the insert. When the rows exceed ``disk_capacity`` the oldest are dropped at once (a front
offset in the oldest segment) and a segment file is deleted when none of its rows is left.

Random access: a uniform sample reads single rows scattered over every segment, which Parquet's decoders do badly
(``ParquetFile.read_row_group`` decodes a whole row group: on this machine about 0.6 ms for 1,024 HalfCheetah
rows, so a batch of 256 rows touching 230 row groups would cost well over 100 ms). So segments are written so
that each column's values can be addressed directly: no compression, no dictionary, PLAIN encoding, one row group
and one data page per column. A column chunk then ends with the raw little-endian values (bools bit-packed; 8- and
16-bit integers widened to 32 bits by Parquet), after the page header and, for vector columns, the
repetition/definition levels, so value ``i`` sits at a fixed offset from the chunk's end. Each segment file is
memory-mapped and every column is a numpy view of the file; gathering rows is one fancy-indexing operation per
column and segment touched (not ``ndarray.take``, which copies a whole unaligned column first). A file is checked
before it is used: every value against the rows it was written from (after writing), or its structure and first
rows against pyarrow's decoder (at startup). A file that fails the check, e.g. written by a pyarrow with another
page layout, is still read, by decoding the whole segment with pyarrow (an LRU cache keeps the last
:data:`DECODED_SEGMENTS`), with a warning.

Costs: disk about 4% above the raw row bytes (levels and page headers; 213 bytes per HalfCheetah row) plus the
dropped rows of the oldest file (up to one segment), memory ``capacity`` rows plus up to one staged segment (plus
sealed ones not yet written, normally none), one file descriptor and one mapping per segment file. Sampled cold
rows cost a page-cache read per column each, more if the file has to come from disk (see docs/architecture.md,
"Larger than memory", for measurements).

Restarts: the tier skips rows at or below the newest key it already holds (:attr:`ColdTier.end_key`), so a
recovery that replays logged inserts (and evicts again) spills nothing twice. At startup it rebuilds its index from
the files: leftover ``.tmp`` files and unreadable segments are removed with a warning naming the file, and a
segment overlapping an older one is removed the same way. A tier created with ``recover=False`` (tables that are
not persisted, whose keys start again at 0) removes every old segment. A tier created with ``read_only=True``
(export and inspection, through :func:`replay.recovery.open_table`) takes no LOCK and creates, changes or removes
no file: what it would remove or rewrite it only leaves out of its index, and rows it takes stay in memory.

:class:`ColdTier` is not thread-safe except :meth:`ColdTier.flush` and :meth:`ColdTier.close`, which take a
``guard`` (the table's lock) and hold it only to change the index, never while writing a file.
"""

from __future__ import annotations

import contextlib
import fcntl
import inspect
import json
import logging
import mmap
import os
import re
import threading
import warnings
from collections import OrderedDict
from typing import ContextManager, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from replay.files import fsync_path
from replay.schema import ColumnSpec, SchemaError, arrow_schema, chunk_to_record_batch, record_batch_to_chunk

__all__ = [
    "COLD_DIRECTORY",
    "DEFAULT_SEGMENT_BYTES",
    "ColdTier",
    "list_segments",
    "segment_rows_for",
]

logger = logging.getLogger(__name__)

COLD_DIRECTORY = "cold"
"""Subdirectory of a table's directory (:func:`replay.persistence.table_directory`) that holds its cold tier."""
DEFAULT_SEGMENT_BYTES = 32 * 2**20
"""Raw row bytes per segment when :attr:`TableConfig.disk_segment_rows` is 0 (HalfCheetah rows: ~164,000 rows)."""
DECODED_SEGMENTS = 2
"""Segments kept decoded for files that cannot be memory-mapped column by column (see the module docstring)."""
METADATA_KEY = b"dynaray.replay.cold"
"""Schema metadata key of a segment's JSON: format version, table, first key and rows."""
FORMAT_VERSION = 1
_MAX_PAGE_BYTES = 2**30
"""Largest column chunk of one segment (Parquet page sizes are 32-bit)."""
_SEGMENT_RE = re.compile(r"^segment-(\d{20})\.parquet$")
_LEVEL_ENCODINGS = {"PLAIN", "RLE", "BIT_PACKED"}
_PHYSICAL_BYTES = {"INT32": 4, "INT64": 8, "FLOAT": 4, "DOUBLE": 8, "FIXED_LEN_BYTE_ARRAY": 2}
"""Bytes per PLAIN value of the Parquet physical types a column can have (8- and 16-bit integers are stored as
INT32, float16 as 2-byte FIXED_LEN_BYTE_ARRAY); BOOLEAN is bit-packed."""
_PAGE_ROW_LIMIT = "max_rows_per_page" in inspect.signature(pq.ParquetWriter.__init__).parameters
"""Whether this pyarrow limits rows per page (default 20,000), so the writer has to lift the limit."""


def _segment_name(first_key: int) -> str:
    return f"segment-{first_key:020d}.parquet"


def list_segments(directory: str) -> list[tuple[int, str]]:
    """``(first key, path)`` of the segment files in a cold-tier directory, oldest first (for readers such as an
    export; the files are plain Parquet with the table's Arrow schema, rows in key order)."""
    if not os.path.isdir(directory):
        return []
    found = []
    for name in os.listdir(directory):
        match = _SEGMENT_RE.match(name)
        if match:
            found.append((int(match.group(1)), os.path.join(directory, name)))
    return sorted(found)


def _raw_row_bytes(spec: ColumnSpec) -> int:
    return spec.row_size * spec.np_dtype.itemsize


def segment_rows_for(columns: Sequence[ColumnSpec], disk_capacity: int, segment_rows: int = 0) -> int:
    """Rows per segment: ``segment_rows``, or 0 for about :data:`DEFAULT_SEGMENT_BYTES` of raw row bytes; at most
    ``disk_capacity`` and at least 1.

    Raises:
        ValueError: one column of a segment would exceed 1 GiB (the limit of a Parquet page, with margin).
    """
    widest = max(_raw_row_bytes(spec) for spec in columns)
    if segment_rows <= 0:
        segment_rows = max(1, DEFAULT_SEGMENT_BYTES // sum(_raw_row_bytes(spec) for spec in columns))
    rows = max(1, min(segment_rows, disk_capacity))
    if rows * widest > _MAX_PAGE_BYTES:
        raise ValueError(
            f"cold tier segments of {rows} rows would hold {rows * widest} bytes in one column, more than the "
            f"{_MAX_PAGE_BYTES} a Parquet page allows; set disk_segment_rows <= {_MAX_PAGE_BYTES // widest}"
        )
    return rows


def _warn(message: str) -> None:
    logger.warning(message)
    warnings.warn(message, RuntimeWarning, stacklevel=3)


class _MemoryPart:
    """Consecutive rows held in numpy columns: the staged segment being filled, or a sealed one not yet written.

    Rows ``[start, rows)`` are live; ``start`` moves forward when the disk capacity drops the oldest rows.
    """

    def __init__(self, first_key: int, columns: Sequence[ColumnSpec], capacity: int):
        self.first_key = first_key
        self.columns = {c.name: np.empty((capacity,) + c.shape, dtype=c.np_dtype) for c in columns}
        self.rows = 0
        self.start = 0
        self.sealed = False
        self.written_rows = 0
        """Rows already in this segment's file (written early by a snapshot's :meth:`ColdTier.flush`)."""

    def take(self, name: str, offsets: np.ndarray) -> np.ndarray:
        """Rows ``offsets`` of a column."""
        return self.columns[name].take(offsets, axis=0)


class _DiskPart:
    """A segment file: memory-mapped columns, or (when its layout is not the expected one) decoded on demand."""

    def __init__(self, path: str, first_key: int, rows: int, columns: Sequence[ColumnSpec]):
        self.path = path
        self.first_key = first_key
        self.rows = rows
        self.start = 0
        self.nbytes = os.path.getsize(path)
        self.specs = {c.name: c for c in columns}
        self.views: dict[str, np.ndarray] | None = None
        self._map: mmap.mmap | None = None

    def map_columns(self, metadata: pq.FileMetaData) -> None:
        """Memory-map the file and make a numpy view of each column's values (see the module docstring).

        Raises:
            ValueError: the file's layout is not one value array at the end of each column chunk.
        """
        group = metadata.row_group(0)
        if metadata.num_row_groups != 1 or group.num_rows != self.rows:
            raise ValueError(f"{metadata.num_row_groups} row groups, expected 1 of {self.rows} rows")
        regions = []
        for index, spec in enumerate(self.specs.values()):
            chunk = group.column(index)
            values = self.rows * spec.row_size
            if chunk.compression != "UNCOMPRESSED" or chunk.has_dictionary_page:
                raise ValueError(f"column {spec.name!r} is compressed or dictionary-encoded")
            if not set(chunk.encodings) <= _LEVEL_ENCODINGS or chunk.num_values != values:
                raise ValueError(f"column {spec.name!r}: encodings {chunk.encodings}, {chunk.num_values} values")
            if spec.np_dtype.kind == "b":
                nbytes, dtype = (values + 7) // 8, np.dtype(np.uint8)
            else:
                width = _PHYSICAL_BYTES.get(chunk.physical_type)
                if width is None:
                    raise ValueError(f"column {spec.name!r}: physical type {chunk.physical_type}")
                nbytes, dtype = values * width, np.dtype(f"<{spec.np_dtype.kind}{width}")
            end = chunk.data_page_offset + chunk.total_compressed_size
            if chunk.total_compressed_size < nbytes or end > self.nbytes:
                raise ValueError(f"column {spec.name!r}: chunk of {chunk.total_compressed_size} bytes")
            regions.append((spec, dtype, end - nbytes, nbytes))
        with open(self.path, "rb") as f:
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        if hasattr(mmap, "MADV_RANDOM"):
            self._map.madvise(mmap.MADV_RANDOM)  # sampled rows are scattered: read ahead nothing
        views = {}
        for spec, dtype, offset, nbytes in regions:
            flat = np.frombuffer(self._map, dtype=dtype, count=nbytes // dtype.itemsize, offset=offset)
            views[spec.name] = flat if spec.np_dtype.kind == "b" else flat.reshape((self.rows,) + spec.shape)
        self.views = views

    def take(self, name: str, offsets: np.ndarray) -> np.ndarray:
        """Rows ``offsets`` of a mapped column (call only when :attr:`views` is set)."""
        view = self.views[name]
        spec = self.specs[name]
        if spec.np_dtype.kind != "b":
            # values usually sit at unaligned file offsets, where ndarray.take copies the whole column first
            # (milliseconds); fancy indexing reads only the rows asked for
            values = view.take(offsets, axis=0) if view.flags.aligned else view[offsets]
            return values.astype(spec.np_dtype, copy=False)
        bits = offsets[:, None] * spec.row_size + np.arange(spec.row_size, dtype=np.int64)
        values = (view[bits >> 3] >> (bits & 7).astype(np.uint8)) & 1
        return values.astype(bool).reshape((len(offsets),) + spec.shape)

    def mismatches(self, expected: Mapping[str, np.ndarray]) -> list[str]:
        """Columns whose mapped values differ from ``expected`` (the first ``len(expected[name])`` rows)."""
        bad = []
        for name, values in expected.items():
            rows = len(values)
            view = self.views[name]
            if view.dtype != values.dtype:
                got = self.take(name, np.arange(rows, dtype=np.int64))
            else:
                got = view[:rows]
            if not np.array_equal(got, values):
                bad.append(name)
        return bad

    def close(self) -> None:
        """Drop the views and the mapping (a mapping still referenced elsewhere is left to the garbage collector)."""
        self.views = None
        if self._map is not None:
            with contextlib.suppress(BufferError):
                self._map.close()
            self._map = None


_Part = _MemoryPart | _DiskPart


class ColdTier:
    """The cold tier of one table: staged, sealed and written segments of evicted rows (see the module docstring).

    Args:
        directory: where the segment files live (created if missing); flock'ed while this tier is open.
        name: the table's name, for messages.
        columns: the table's columns.
        disk_capacity: rows kept; older rows are dropped first.
        segment_rows: rows per segment file (see :func:`segment_rows_for`; 0 picks the default).
        recover: index the segment files already there (a persisted table that recovers its rows); False removes
            them (a table that starts empty, whose keys start again at 0).
        write_behind: leave sealed segments for the caller to write with :meth:`flush` (a shard does, after
            releasing the table lock); False writes them inside :meth:`append`'s caller, :meth:`Table.write`.
        read_only: only read the files (export, inspection, while a live shard may be writing them): no LOCK, no
            file created, changed or removed. Segment files are indexed as with ``recover``, but a leftover temp
            file is ignored and an unreadable or overlapping segment skipped with a warning; rows taken afterwards
            (a recovery replaying logs) stay in memory, and :meth:`drop_from`, :meth:`clear` and the disk capacity
            only change the index. A missing ``directory`` is an empty tier.

    Raises:
        RuntimeError: another live cold tier uses ``directory``.
        SchemaError: a segment file has other columns than the table (the table's columns changed between runs).
    """

    def __init__(
        self,
        directory: str,
        name: str,
        columns: Sequence[ColumnSpec],
        disk_capacity: int,
        segment_rows: int = 0,
        recover: bool = True,
        write_behind: bool = False,
        read_only: bool = False,
    ):
        if not isinstance(disk_capacity, int) or isinstance(disk_capacity, bool) or disk_capacity < 1:
            raise ValueError(f"cold tier of table {name!r}: disk_capacity must be an int >= 1, got {disk_capacity!r}")
        self.directory = directory
        self.name = name
        self.columns = tuple(columns)
        self.disk_capacity = disk_capacity
        self.segment_rows = segment_rows_for(self.columns, disk_capacity, segment_rows)
        self.write_behind = write_behind
        self.schema = arrow_schema(self.columns)
        self._parts: list[_Part] = []
        self._staged: _MemoryPart | None = None
        self._size = 0
        self._end_key = 0
        self._spilled = 0
        self._decoded: OrderedDict[int, dict[str, np.ndarray]] = OrderedDict()
        self._flush_lock = threading.Lock()
        self._closed = False
        self._warned_layout = False
        self.read_only = read_only
        self._lock_fd: int | None = None
        if read_only:
            if os.path.isdir(directory):
                self._load()
            return
        os.makedirs(directory, exist_ok=True)
        self._lock_fd = os.open(os.path.join(directory, "LOCK"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise RuntimeError(f"cold tier directory {directory} is in use by another live shard") from None
        try:
            if recover:
                self._load()
            else:
                self._remove_all()
        except BaseException:
            self.close()
            raise

    # ---- index -------------------------------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """Live rows (sampleable), in files and in memory."""
        return self._size

    @property
    def end_key(self) -> int:
        """One past the newest key this tier holds or has held; rows below it are not taken again."""
        return self._end_key

    @property
    def oldest_key(self) -> int | None:
        """Key of the oldest live row, None when empty."""
        if not self._parts:
            return None
        part = self._parts[0]
        return part.first_key + part.start

    @property
    def has_pending(self) -> bool:
        """Whether sealed segments wait to be written (they follow the written ones, so look from the end)."""
        for part in reversed(self._parts):
            if isinstance(part, _DiskPart):
                return False
            if part.sealed:
                return True
        return False

    def _live(self, part: _Part) -> int:
        return part.rows - part.start

    def stats(self) -> dict:
        """disk_rows (live rows in segment files), staged_rows (live rows in memory waiting for a file),
        disk_files, disk_bytes, spilled (rows taken from memory since this tier was opened)."""
        disk = [p for p in self._parts if isinstance(p, _DiskPart)]
        disk_rows = sum(self._live(p) for p in disk)
        return {
            "disk_rows": disk_rows,
            "staged_rows": self._size - disk_rows,
            "disk_files": len(disk),
            "disk_bytes": sum(p.nbytes for p in disk),
            "spilled": self._spilled,
        }

    def _load(self) -> None:
        """Index the segment files in the directory, removing temp files, unreadable and overlapping segments
        (read-only: leaving temp files alone, which a live writer may be writing, and skipping the others)."""
        removed = "skipped" if self.read_only else "removed"
        for name in sorted(os.listdir(self.directory)):
            if name.endswith(".tmp") and not self.read_only:
                path = os.path.join(self.directory, name)
                _warn(f"cold tier of table {self.name!r}: removed the half-written segment {path}")
                os.unlink(path)
        for first_key, path in list_segments(self.directory):
            try:
                part = self._open(path, first_key)
            except SchemaError:
                raise
            except (OSError, ValueError, pa.ArrowException) as exc:
                if self.read_only and isinstance(exc, FileNotFoundError):
                    raise  # deleted by a live shard since the listing: the reader starts over
                _warn(f"cold tier of table {self.name!r}: {removed} the unreadable segment {path} ({exc})")
                self._unlink(path)
                continue
            if first_key < self._end_key:
                _warn(
                    f"cold tier of table {self.name!r}: {removed} the segment {path}: its keys from {first_key} "
                    f"overlap the previous segment's, which end at {self._end_key - 1}"
                )
                part.close()
                self._unlink(path)
                continue
            self._parts.append(part)
            self._size += part.rows
            self._end_key = first_key + part.rows
        self._trim()

    def _unlink(self, path: str) -> None:
        """Delete a file of this tier (not in read-only mode, nor when it is gone already)."""
        if not self.read_only:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def _remove_all(self) -> None:
        removed = 0
        for name in os.listdir(self.directory):
            if name.endswith(".tmp") or _SEGMENT_RE.match(name):
                os.unlink(os.path.join(self.directory, name))
                removed += 1
        if removed:
            logger.info("cold tier of table %r: removed %d old file(s) from %s", self.name, removed, self.directory)

    def _open(self, path: str, first_key: int, written: Mapping[str, np.ndarray] | None = None) -> _DiskPart:
        """Open a segment file and check it: against ``written`` (the rows it was written from) when given, else
        its metadata and first rows against pyarrow's decoder.

        Raises:
            SchemaError: the file has other columns than the table.
            ValueError, OSError, pyarrow.ArrowException: the file is not a readable segment.
        """
        with pq.ParquetFile(path, memory_map=True, pre_buffer=False) as reader:
            metadata = reader.metadata
            raw = (reader.schema_arrow.metadata or {}).get(METADATA_KEY)
            if raw is None:
                raise ValueError(f"no {METADATA_KEY.decode()} metadata")
            meta = json.loads(raw)
            if meta.get("version") != FORMAT_VERSION or meta.get("first_key") != first_key:
                raise ValueError(f"metadata {meta} does not match version {FORMAT_VERSION} and first key {first_key}")
            rows = int(meta["rows"])
            if metadata.num_rows != rows or rows < 1:
                raise ValueError(f"{metadata.num_rows} rows, metadata says {rows}")
            if not reader.schema_arrow.equals(self.schema, check_metadata=False):
                raise SchemaError(
                    f"cold tier segment {path}: schema {reader.schema_arrow.remove_metadata()} does not match the "
                    f"table's {self.schema} (did the table's columns change between runs?)"
                )
            part = _DiskPart(path, first_key, rows, self.columns)
            try:
                part.map_columns(metadata)
                if written is None:
                    batch = next(reader.iter_batches(batch_size=min(rows, 8)))
                    written = record_batch_to_chunk(batch, self.columns)
                mismatch = part.mismatches(written)
                if mismatch:
                    raise ValueError(f"mapped values of columns {mismatch} differ from the decoded ones")
            except ValueError as exc:
                part.close()
                if not self._warned_layout:
                    self._warned_layout = True
                    _warn(
                        f"cold tier of table {self.name!r}: cannot memory-map {path} column by column ({exc}); "
                        f"segments like it are decoded whole with pyarrow, which makes sampling them much slower"
                    )
        return part

    # ---- writing -----------------------------------------------------------------------------------------------

    def append(self, rows: Mapping[str, np.ndarray], first_key: int, n: int) -> None:
        """Take ``n`` rows with consecutive keys from ``first_key`` (evicted from memory, oldest first).

        Rows below :attr:`end_key` are already held and skipped (a recovery replaying its log evicts them again).
        The rows are copied; sealed segments wait for :meth:`flush`.
        """
        skip = max(0, self._end_key - first_key)
        if skip >= n:
            return
        if first_key > self._end_key and self._parts:
            _warn(
                f"cold tier of table {self.name!r}: rows with keys [{self._end_key}, {first_key}) are missing "
                f"(lost with a removed segment or log)"
            )
            self._seal()
        position, key = skip, first_key + skip
        while position < n:
            staged = self._staged
            if staged is None:
                staged = self._staged = _MemoryPart(key, self.columns, self.segment_rows)
                self._parts.append(staged)
            take = min(n - position, self.segment_rows - staged.rows)
            for name, column in staged.columns.items():
                column[staged.rows : staged.rows + take] = rows[name][position : position + take]
            staged.rows += take
            position += take
            key += take
            if staged.rows == self.segment_rows:
                self._seal()
        added = n - skip
        self._size += added
        self._spilled += added
        self._end_key = first_key + n
        self._trim()

    def _seal(self) -> None:
        if self._staged is not None:
            self._staged.sealed = True
            self._staged = None

    def _trim(self) -> None:
        """Drop the oldest rows beyond ``disk_capacity``; delete files left without live rows."""
        excess = self._size - self.disk_capacity
        while excess > 0:
            part = self._parts[0]
            live = self._live(part)
            if live > excess:
                part.start += excess
                self._size -= excess
                break
            self._remove(part)
            excess -= live

    def _remove(self, part: _Part) -> None:
        """Forget a part (under the guard); its file, if any, is deleted."""
        self._parts.remove(part)
        self._size -= self._live(part)
        if part is self._staged:
            self._staged = None
        if isinstance(part, _DiskPart):
            self._decoded.pop(part.first_key, None)
            part.close()
        self._unlink(os.path.join(self.directory, _segment_name(part.first_key)))

    def flush(self, guard: ContextManager | None = None, blocking: bool = True, include_staged: bool = False) -> None:
        """Write the sealed segments, oldest first; with ``include_staged`` also the staged rows so far (their file
        is replaced when the segment is full), so that every row taken so far is on disk and fsynced.

        ``guard`` (the table's lock) is held only to pick a segment and to swap it for its file, not while
        writing. One flush runs at a time: another one waits, or with ``blocking=False`` returns at once. A
        closed tier writes nothing.

        Raises:
            OSError: writing a file failed; the segment stays in memory and the next flush tries again.
        """
        guard = guard if guard is not None else contextlib.nullcontext()
        if self.read_only or not self._flush_lock.acquire(blocking=blocking):
            return
        try:
            while True:
                with guard:
                    if self._closed:
                        return
                    part = next((p for p in self._parts if isinstance(p, _MemoryPart) and p.sealed), None)
                    if part is None and include_staged:
                        include_staged = False
                        staged = self._staged
                        if staged is not None and staged.rows > staged.written_rows:
                            part = staged
                    if part is None:
                        return
                    rows = part.rows
                    columns = {name: column[:rows] for name, column in part.columns.items()}
                disk = self._write(part.first_key, columns, rows)
                with guard:
                    alive = part in self._parts
                    if alive and part.sealed and part.rows == rows:
                        disk.start = part.start
                        self._parts[self._parts.index(part)] = disk
                    else:
                        disk.close()
                        if alive:
                            part.written_rows = rows
                        else:
                            with contextlib.suppress(FileNotFoundError):
                                os.unlink(disk.path)
        finally:
            self._flush_lock.release()

    def _write(self, first_key: int, columns: Mapping[str, np.ndarray], rows: int) -> _DiskPart:
        """Write a segment file (temp file, fsync, check, rename, fsync of the directory) and open it."""
        path = os.path.join(self.directory, _segment_name(first_key))
        tmp = path + ".tmp"
        batch = chunk_to_record_batch(columns, self.columns, validate=False)
        meta = {"version": FORMAT_VERSION, "table": self.name, "first_key": first_key, "rows": rows}
        table = pa.Table.from_batches([batch]).replace_schema_metadata({METADATA_KEY: json.dumps(meta).encode()})
        widest = max(_raw_row_bytes(spec) for spec in self.columns)
        options = {"max_rows_per_page": rows} if _PAGE_ROW_LIMIT else {}
        try:
            pq.write_table(
                table,
                tmp,
                row_group_size=rows,
                compression="none",
                use_dictionary=False,
                write_statistics=False,
                data_page_size=2 * rows * widest + 2**20,
                **options,
            )
            fsync_path(tmp)
            part = self._open(tmp, first_key, written=columns)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        part.path = path
        fsync_path(self.directory)
        return part

    # ---- reading -----------------------------------------------------------------------------------------------

    def gather(self, positions: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Rows at ``positions`` (0 = the oldest live row, up to :attr:`size` - 1) and their keys.

        Positions are grouped by segment; each column of each segment touched is read with one numpy take on its
        memory-mapped view (or on the staged rows in memory).
        """
        positions = np.asarray(positions, dtype=np.int64)
        n = len(positions)
        out = {c.name: np.empty((n,) + c.shape, dtype=c.np_dtype) for c in self.columns}
        keys = np.empty(n, dtype=np.int64)
        if n == 0:
            return out, keys
        live = np.fromiter((self._live(p) for p in self._parts), dtype=np.int64, count=len(self._parts))
        starts = np.concatenate(([0], np.cumsum(live)))
        if positions.min() < 0 or positions.max() >= starts[-1]:
            raise IndexError(f"cold tier of table {self.name!r}: positions outside [0, {int(starts[-1])})")
        which = np.searchsorted(starts, positions, side="right") - 1
        order = np.argsort(which, kind="stable")
        bounds = np.searchsorted(which[order], np.arange(len(self._parts) + 1))
        for index, part in enumerate(self._parts):
            picked = order[bounds[index] : bounds[index + 1]]
            if len(picked) == 0:
                continue
            local = positions[picked] - starts[index] + part.start
            keys[picked] = part.first_key + local
            if isinstance(part, _DiskPart) and part.views is None:
                decoded = self._decode(part)
                for name, column in out.items():
                    column[picked] = decoded[name].take(local, axis=0)
            else:
                for name, column in out.items():
                    column[picked] = part.take(name, local)
        return out, keys

    def _decode(self, part: _DiskPart) -> dict[str, np.ndarray]:
        """The whole segment decoded by pyarrow, for files that cannot be mapped (LRU of :data:`DECODED_SEGMENTS`)."""
        decoded = self._decoded.get(part.first_key)
        if decoded is None:
            table = pq.read_table(part.path, schema=self.schema).combine_chunks()
            batches = table.to_batches()
            decoded = record_batch_to_chunk(batches[0], self.columns)
            self._decoded[part.first_key] = decoded
            while len(self._decoded) > DECODED_SEGMENTS:
                self._decoded.popitem(last=False)
        else:
            self._decoded.move_to_end(part.first_key)
        return decoded

    # ---- repair and shutdown -----------------------------------------------------------------------------------

    def drop_from(self, key: int) -> int:
        """Forget rows with keys ``>= key`` (they are duplicates of rows in memory); a segment file holding some of
        them is rewritten without them. Returns the rows dropped."""
        dropped = 0
        for part in reversed(list(self._parts)):
            if part.first_key + part.rows <= key:
                break
            keep = max(0, key - part.first_key)
            if keep <= part.start:
                dropped += self._live(part)
                self._remove(part)
                continue
            dropped += part.rows - keep
            self._size -= part.rows - keep
            if isinstance(part, _MemoryPart):
                part.rows = keep
                part.written_rows = min(part.written_rows, keep)
                continue
            if self.read_only:
                part.rows = keep  # the file keeps them; the index forgets them
                continue
            if part.views is not None:
                rows = {name: part.take(name, np.arange(keep, dtype=np.int64)) for name in part.specs}
            else:
                rows = {name: column[:keep] for name, column in self._decode(part).items()}
            start = part.start
            self._decoded.pop(part.first_key, None)
            part.close()
            disk = self._write(part.first_key, rows, keep)
            disk.start = start
            self._parts[self._parts.index(part)] = disk
        self._end_key = min(self._end_key, key)
        return dropped

    def clear(self) -> None:
        """Forget every row and delete every segment file."""
        for part in list(self._parts):
            self._remove(part)
        if not self.read_only:
            self._remove_all()
        self._end_key = 0

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def close(self, guard: ContextManager | None = None) -> None:
        """Stop writing and release the directory; rows already held can still be sampled. Idempotent.

        Waits for a running :meth:`flush` (so take ``guard``, the table's lock, only through this argument).
        """
        guard = guard if guard is not None else contextlib.nullcontext()
        with self._flush_lock, guard:
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None
            self._closed = True
