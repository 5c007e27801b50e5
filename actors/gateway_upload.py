"""Validation of uploaded episodes: an Arrow IPC stream checked in full before a single row is converted.

:class:`EpisodeParser` turns an upload body into numpy columns or raises :class:`Refused` (a 4xx with a one-line
reason). The order matters, because Arrow's C++ trusts what it reads:

1. the IPC messages are walked with ``pyarrow.ipc.MessageReader`` without decoding any record batch: the first must
   be the schema, the others record batches (no dictionaries, nothing after the end-of-stream marker);
2. the schema is checked (UTF-8 names, exactly the upload columns, each of an accepted type) before any batch;
3. each record batch's header (a FlatBuffer, read by :class:`_Flat` with bounds checks) gives its row count and
   its buffers; for compressed buffers the 8-byte uncompressed-length prefix of each is read, so the rows
   (``max_episode_rows``) and the decoded bytes (``max_decoded_bytes``) are refused with 413 *before* anything is
   decompressed;
4. each batch is decoded and ``validate(full=True)`` checks every offset, length and buffer against its type;
5. then the values: no nulls, shapes, finite and within ``max_abs_value``, the episode's end flags, the action
   bounds, ``policy_version``.
"""

from __future__ import annotations

import struct
from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from replay.schema import ColumnSpec, arrow_schema

__all__ = [
    "ACTION_BOUND_SLACK",
    "ARROW_STREAM_TYPE",
    "EpisodeParser",
    "OPTIONAL_COLUMNS",
    "Refused",
    "STAMPED_COLUMNS",
    "UPLOAD_COLUMNS",
]

ARROW_STREAM_TYPE = "application/vnd.apache.arrow.stream"
"""Content type of an uploaded episode (the Arrow IPC streaming format)."""
UPLOAD_COLUMNS = ("obs", "action", "reward", "next_obs", "terminated", "truncated")
"""Columns every upload must have."""
OPTIONAL_COLUMNS = ("policy_version",)
"""Columns an upload may have: ``policy_version`` (the version the agent acted with; -1, the default, for none)."""
STAMPED_COLUMNS = ("episode_id", "step", "writer_id", "seq")
"""Columns the gateway sets; an upload that has them is refused."""
ACTION_BOUND_SLACK = 1e-5
"""Relative slack on the action bounds (float32 rounding of a policy's tanh output scaled to the bounds)."""
MAGNITUDE_COLUMNS = ("obs", "next_obs", "reward")
"""Columns whose values must lie within ``max_abs_value`` (actions have their bounds)."""

# Message header types and record-batch fields of Arrow's Message.fbs / Schema.fbs.
_HEADER_SCHEMA, _HEADER_DICTIONARY, _HEADER_RECORD_BATCH = 1, 2, 3


class Refused(Exception):
    """An answer other than 200: status, a one-line message, extra JSON fields and headers."""

    def __init__(self, status: int, message: str, column: str | None = None,
                 headers: Mapping[str, str] | None = None, **extra: Any):
        super().__init__(message)
        self.status = int(status)
        self.message = message
        self.payload: dict[str, Any] = {"error": message, **extra}
        if column is not None:
            self.payload["column"] = column
        self.headers = dict(headers or {})


def bad_column(column: str, reason: str) -> Refused:
    return Refused(400, f"column {column!r}: {reason}", column=column)


class _Malformed(Exception):
    """A FlatBuffer that points outside itself."""


class _Flat:
    """Bounds-checked reads of a FlatBuffer (just what a record batch header needs)."""

    def __init__(self, data: bytes | memoryview):
        self.data = data

    def get(self, fmt: str, pos: int) -> Any:
        size = struct.calcsize(fmt)
        if pos < 0 or pos + size > len(self.data):
            raise _Malformed(f"read of {size} bytes at {pos} outside {len(self.data)} bytes")
        return struct.unpack_from(fmt, self.data, pos)[0]

    def root(self) -> tuple[int, int, int]:
        return self.table(self.get("<I", 0))

    def table(self, pos: int) -> tuple[int, int, int]:
        vtable = pos - self.get("<i", pos)
        return pos, vtable, self.get("<H", vtable)

    def field(self, table: tuple[int, int, int], index: int) -> int | None:
        pos, vtable, vtable_size = table
        slot = 4 + 2 * index
        if slot + 2 > vtable_size:
            return None
        offset = self.get("<H", vtable + slot)
        return pos + offset if offset else None

    def scalar(self, table: tuple[int, int, int], index: int, fmt: str, default: int) -> int:
        pos = self.field(table, index)
        return default if pos is None else self.get(fmt, pos)

    def subtable(self, table: tuple[int, int, int], index: int) -> tuple[int, int, int] | None:
        pos = self.field(table, index)
        return None if pos is None else self.table(pos + self.get("<I", pos))

    def structs(self, table: tuple[int, int, int], index: int, fmt: str) -> list[tuple]:
        pos = self.field(table, index)
        if pos is None:
            return []
        vector = pos + self.get("<I", pos)
        count = self.get("<I", vector)
        size = struct.calcsize(fmt)
        if vector + 4 + count * size > len(self.data):
            raise _Malformed(f"vector of {count} x {size} bytes at {vector} outside {len(self.data)} bytes")
        return [struct.unpack_from(fmt, self.data, vector + 4 + i * size) for i in range(count)]


def record_batch_size(metadata: bytes | memoryview, body: memoryview) -> tuple[int, int]:
    """``(rows, decoded bytes)`` of one record batch message, from its header and its buffers' length prefixes,
    without decoding it. Raises ValueError for a header that does not describe a record batch within ``body``."""
    flat = _Flat(metadata)
    try:
        message = flat.root()
        if flat.scalar(message, 1, "<B", 0) != _HEADER_RECORD_BATCH:
            raise ValueError("message header is not a record batch")
        header = flat.subtable(message, 2)
        if header is None:
            raise ValueError("record batch message without a header")
        rows = flat.scalar(header, 0, "<q", 0)
        buffers = flat.structs(header, 2, "<qq")
        compressed = flat.subtable(header, 3) is not None
    except (_Malformed, struct.error) as exc:
        raise ValueError(f"record batch header is malformed ({exc})") from None
    if rows < 0:
        raise ValueError(f"record batch header says {rows} rows")
    decoded = 0
    for offset, length in buffers:
        if offset < 0 or length < 0 or offset + length > len(body):
            raise ValueError(f"buffer of {length} bytes at offset {offset} lies outside the {len(body)}-byte body")
        if compressed and length:
            if length < 8:
                raise ValueError(f"compressed buffer of {length} bytes has no 8-byte length prefix")
            prefix = struct.unpack_from("<q", body, offset)[0]
            if prefix < -1:
                raise ValueError(f"compressed buffer says it decodes to {prefix} bytes")
            decoded += length - 8 if prefix == -1 else prefix
        else:
            decoded += length
    return rows, decoded


def _accepted(spec: ColumnSpec, arrow_type: pa.DataType) -> bool:
    """Whether an upload column of ``arrow_type`` may fill ``spec`` (vector shapes are checked separately)."""
    if spec.shape:
        if not (pa.types.is_fixed_size_list(arrow_type) or pa.types.is_list(arrow_type)
                or pa.types.is_large_list(arrow_type)):
            return False
        return pa.types.is_floating(arrow_type.value_type)
    kind = spec.np_dtype.kind
    if kind == "b":
        return pa.types.is_boolean(arrow_type)
    if kind == "f":
        return pa.types.is_floating(arrow_type) or pa.types.is_integer(arrow_type)
    return pa.types.is_integer(arrow_type)


class EpisodeParser:
    """Turns an upload body into one episode's numpy columns, or raises :class:`Refused`.

    Args:
        columns: the ``real`` table's columns (``replay.schema.transition_columns``).
        action_low, action_high: the action bounds, flattened.
        max_rows: the most rows one upload may hold (413 beyond).
        max_decoded_bytes: the most bytes its record batches may decode to (413 beyond).
        max_abs_value: the largest magnitude accepted in ``obs``, ``next_obs`` and ``reward``.
    """

    def __init__(self, columns: Sequence[ColumnSpec], action_low: np.ndarray, action_high: np.ndarray,
                 max_rows: int, max_decoded_bytes: int, max_abs_value: float):
        self.specs = {c.name: c for c in columns}
        self.schema = arrow_schema(list(columns))
        self.action_low = np.asarray(action_low, dtype=np.float32).reshape(-1)
        self.action_high = np.asarray(action_high, dtype=np.float32).reshape(-1)
        self.max_rows = int(max_rows)
        self.max_decoded_bytes = int(max_decoded_bytes)
        self.max_abs_value = float(max_abs_value)
        self.expected = (
            f"expected one episode as an Arrow IPC stream ({ARROW_STREAM_TYPE}) with columns "
            f"{list(UPLOAD_COLUMNS)} and optionally {list(OPTIONAL_COLUMNS)}"
        )

    # ------------------------------------------------------------------------------------------------ stream

    def parse(self, body: bytes, newest_version: int | None) -> dict[str, np.ndarray]:
        """The episode in ``body``, every column checked; ``newest_version`` bounds ``policy_version``."""
        table = self._read(body)
        rows = table.num_rows
        names = table.schema.names
        episode = {name: self._column(table.column(name), self.specs[name], rows) for name in names}
        self._check_flags(episode["terminated"], episode["truncated"], rows)
        self._check_actions(episode["action"])
        if "policy_version" in episode:
            self._check_versions(episode["policy_version"], newest_version)
        return episode

    def _read(self, body: bytes) -> pa.Table:
        """Steps 1-4 of the module docstring: a fully validated table of the upload's record batches."""
        if body.startswith(b"ARROW1"):
            raise Refused(400, f"body is an Arrow IPC file, not a stream: {self.expected}")
        source = pa.BufferReader(pa.py_buffer(body))
        schema: pa.Schema | None = None
        batches: list[pa.RecordBatch] = []
        rows = decoded = 0
        try:
            reader = pa.ipc.MessageReader.open_stream(source)
            while True:
                try:
                    message = reader.read_next_message()
                except StopIteration:
                    break
                if schema is None:
                    if message.type != "schema":
                        raise Refused(400, f"body starts with a {message.type} message, not the schema: "
                                           f"{self.expected}")
                    schema = pa.ipc.read_schema(message)
                    self._check_schema(schema)
                    continue
                if message.type != "record batch":
                    raise Refused(400, f"body holds a {message.type} message; expected record batches only "
                                       f"(no dictionary-encoded columns): {self.expected}")
                body_view = memoryview(message.body) if message.body is not None else memoryview(b"")
                batch_rows, batch_bytes = record_batch_size(memoryview(message.metadata), body_view)
                rows += batch_rows
                decoded += batch_bytes
                if rows > self.max_rows:
                    raise Refused(413, f"episode of at least {rows} rows is over the limit of {self.max_rows} rows "
                                       f"(gateway.max_episode_rows): send it in parts", limit=self.max_rows)
                if decoded > self.max_decoded_bytes:
                    raise Refused(413, f"episode decodes to at least {decoded} bytes, over the limit of "
                                       f"{self.max_decoded_bytes} bytes (gateway.max_decoded_bytes): send it in "
                                       f"parts", limit=self.max_decoded_bytes)
                batch = pa.ipc.read_record_batch(message, schema)
                batch.validate(full=True)
                batches.append(batch)
        except Refused:
            raise
        except UnicodeDecodeError:
            raise Refused(400, f"a column name is not valid UTF-8: {self.expected}") from None
        except (pa.ArrowException, ValueError, OSError, IndexError, TypeError, OverflowError) as exc:
            reason = " ".join(str(exc).split())[:300]
            raise Refused(400, f"body is not a readable Arrow IPC stream ({type(exc).__name__}: {reason}): "
                               f"{self.expected}") from None
        if schema is None:
            raise Refused(400, f"body is not a readable Arrow IPC stream (no schema message): {self.expected}")
        if source.tell() != len(body):
            raise Refused(400, f"body has {len(body) - source.tell()} bytes after the Arrow end-of-stream marker: "
                               f"{self.expected}")
        if rows == 0:
            raise Refused(400, "episode has no rows: expected at least one transition")
        return pa.Table.from_batches(batches, schema)

    def _check_schema(self, schema: pa.Schema) -> None:
        names = [field.name for field in schema]  # UnicodeDecodeError for a name that is not UTF-8
        for name in names:
            if names.count(name) > 1:
                raise bad_column(name, f"appears {names.count(name)} times; expected once")
            if name in STAMPED_COLUMNS:
                raise bad_column(name, f"is set by the gateway; do not send it ({self.expected})")
            if name not in UPLOAD_COLUMNS and name not in OPTIONAL_COLUMNS:
                raise bad_column(name, f"unexpected column: {self.expected}")
        for name in UPLOAD_COLUMNS:
            if name not in names:
                raise bad_column(name, f"missing: {self.expected}")
        for field in schema:
            spec = self.specs[field.name]
            if not _accepted(spec, field.type):
                raise bad_column(field.name, f"Arrow type {field.type}, expected {self.schema.field(field.name).type}")
            if pa.types.is_fixed_size_list(field.type) and field.type.list_size != spec.row_size:
                raise bad_column(field.name, f"wrong shape: {field.type.list_size} values per row, expected "
                                             f"{spec.row_size} (shape {list(spec.shape)})")

    # ----------------------------------------------------------------------------------------------- values

    def _column(self, column: pa.ChunkedArray, spec: ColumnSpec, rows: int) -> np.ndarray:
        """One column as a numpy array of shape ``(rows,) + spec.shape`` in the column's dtype (float32 for floats)."""
        if column.null_count:
            raise bad_column(spec.name, f"{column.null_count} null value(s); expected none")
        arrow_type = column.type
        if spec.shape:
            size = spec.row_size
            if not pa.types.is_fixed_size_list(arrow_type):
                lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
                wrong = np.flatnonzero(lengths != size)
                if wrong.size:
                    raise bad_column(
                        spec.name,
                        f"wrong shape: {int(lengths[wrong[0]])} values in row {int(wrong[0])}, expected {size} "
                        f"(shape {list(spec.shape)}) in every row",
                    )
            values = pa.chunked_array([chunk.flatten() for chunk in column.chunks], type=arrow_type.value_type)
            if values.null_count:
                raise bad_column(spec.name, f"{values.null_count} null value(s) inside its lists; expected none")
            array = values.to_numpy().reshape((rows,) + spec.shape)
        else:
            array = column.to_numpy()
        if spec.np_dtype.kind == "f":
            with np.errstate(over="ignore", invalid="ignore"):
                array = array.astype(np.float32)
            flat = array.reshape(rows, -1)
            finite = np.isfinite(flat).all(axis=1)
            if not finite.all():
                bad = np.flatnonzero(~finite)
                raise bad_column(
                    spec.name,
                    f"non-finite values (NaN, inf, or outside the float32 range) in {bad.size} row(s), first at "
                    f"row {int(bad[0])}",
                )
            if spec.name in MAGNITUDE_COLUMNS:
                large = (np.abs(flat) > self.max_abs_value).any(axis=1)
                if large.any():
                    bad = np.flatnonzero(large)
                    raise bad_column(
                        spec.name,
                        f"values beyond +-{self.max_abs_value:g} (gateway.max_abs_value) in {bad.size} row(s), "
                        f"first at row {int(bad[0])}",
                    )
        return np.ascontiguousarray(array)

    @staticmethod
    def _check_flags(terminated: np.ndarray, truncated: np.ndarray, rows: int) -> None:
        for name, flags in (("terminated", terminated), ("truncated", truncated)):
            early = np.flatnonzero(flags[:-1])
            if early.size:
                raise bad_column(
                    name,
                    f"true at row {int(early[0])} of {rows}: an episode can end on its last row only (send one "
                    f"episode per request)",
                )
        if terminated[-1] and truncated[-1]:
            raise Refused(
                400, f"terminated and truncated are both true on the last row ({rows - 1}): expected at most one",
                column="truncated",
            )

    def _check_actions(self, action: np.ndarray) -> None:
        flat = action.reshape(len(action), -1)
        slack = ACTION_BOUND_SLACK * np.maximum(self.action_high - self.action_low, 1.0)
        outside = (flat < self.action_low - slack) | (flat > self.action_high + slack)
        if outside.any():
            row, dim = (int(i) for i in np.argwhere(outside)[0])
            raise bad_column(
                "action",
                f"{int(outside.any(axis=1).sum())} row(s) outside the action bounds, first at row {row}: value "
                f"{float(flat[row, dim])!r} at index {dim}, expected within [{float(self.action_low[dim])!r}, "
                f"{float(self.action_high[dim])!r}]",
            )

    @staticmethod
    def _check_versions(versions: np.ndarray, newest: int | None) -> None:
        low, high = int(versions.min()), int(versions.max())
        if low < -1:
            raise bad_column("policy_version", f"value {low} is below -1 (-1: not acted by a published policy)")
        if high > (-1 if newest is None else newest):
            raise bad_column(
                "policy_version",
                f"value {high} is newer than the newest published policy "
                f"({'none yet' if newest is None else newest}): send the version from GET /v1/spec or the policy",
            )
