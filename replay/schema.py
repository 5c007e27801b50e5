"""Row schema of replay tables: column specs, chunk validation, and the Arrow mapping.

A chunk (or batch) is ``dict[str, np.ndarray]`` with one row per transition: every column has shape
``(N,) + spec.shape``. :func:`validate_chunk` is the one place that decides whether a chunk fits a table
(:func:`drop_non_finite_rows` is its variant for tables that drop rows with NaN or inf instead of rejecting them);
:func:`arrow_schema`, :func:`chunk_to_record_batch` and :func:`record_batch_to_chunk` map tables to Arrow
(vectors as ``fixed_size_list``) for snapshots and logs; :func:`columns_from_arrow_schema` is the inverse of
:func:`arrow_schema`, for reading files without knowing their table's configuration.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import pyarrow as pa

__all__ = [
    "ColumnSpec",
    "SchemaError",
    "arrow_schema",
    "chunk_to_record_batch",
    "columns_from_arrow_schema",
    "drop_non_finite_rows",
    "record_batch_to_chunk",
    "transition_columns",
    "validate_chunk",
]

_SHAPE_METADATA_KEY = b"shape"
NON_FINITE_POLICIES = ("reject", "drop")
"""What a table does with rows holding NaN or inf in a float column (:attr:`replay.table.TableConfig.non_finite`)."""


class SchemaError(ValueError):
    """A chunk or record batch does not match its table's columns; the message names the column and problem."""


@dataclass(frozen=True)
class ColumnSpec:
    """One column of a table: its name, the shape of one row's value, and a numpy dtype name."""

    name: str
    """Column name, the key of the chunk dict."""
    shape: tuple[int, ...]
    """Shape of one row's value: ``()`` for scalars, ``(O,)`` for a vector."""
    dtype: str
    """Numpy dtype name: a bool, integer or float type such as ``"float32"``."""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"ColumnSpec.name must be a non-empty string, got {self.name!r}")
        try:
            shape = tuple(int(d) for d in self.shape)
        except TypeError:
            raise ValueError(f"ColumnSpec {self.name!r}: shape must be a tuple of ints, got {self.shape!r}") from None
        if any(d < 1 for d in shape):
            raise ValueError(f"ColumnSpec {self.name!r}: shape dimensions must be >= 1, got {shape}")
        try:
            dtype = np.dtype(self.dtype)
        except TypeError:
            raise ValueError(f"ColumnSpec {self.name!r}: {self.dtype!r} is not a numpy dtype") from None
        if dtype.kind not in "biuf":
            raise ValueError(f"ColumnSpec {self.name!r}: dtype must be bool, integer or float, got {dtype.name}")
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "dtype", dtype.name)

    @functools.cached_property
    def np_dtype(self) -> np.dtype:
        """The column's dtype as a ``np.dtype``."""
        return np.dtype(self.dtype)

    @property
    def row_size(self) -> int:
        """Number of scalar values in one row's value."""
        return math.prod(self.shape)


def transition_columns(obs_shape: tuple[int, ...], action_shape: tuple[int, ...]) -> tuple[ColumnSpec, ...]:
    """The transition row of docs/architecture.md for the given observation and action shapes."""
    obs_shape, action_shape = tuple(obs_shape), tuple(action_shape)
    return (
        ColumnSpec("obs", obs_shape, "float32"),
        ColumnSpec("action", action_shape, "float32"),
        ColumnSpec("reward", (), "float32"),
        ColumnSpec("next_obs", obs_shape, "float32"),
        ColumnSpec("terminated", (), "bool"),
        ColumnSpec("truncated", (), "bool"),
        ColumnSpec("episode_id", (), "int64"),
        ColumnSpec("step", (), "int64"),
        ColumnSpec("policy_version", (), "int64"),
        ColumnSpec("writer_id", (), "int64"),
        ColumnSpec("seq", (), "int64"),
    )


def _batch_shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(["N", *map(str, shape)]) + (",)" if not shape else ")")


def validate_chunk(chunk: Mapping[str, np.ndarray], columns: Sequence[ColumnSpec]) -> int:
    """Check that ``chunk`` holds exactly ``columns`` with matching shapes and castable dtypes; return its rows.

    Allowed casts are numpy's ``same_kind`` ones (float64 -> float32, int32 -> int64, int -> float); the
    table casts on write. Float columns must be finite, also after a narrowing cast.

    Raises:
        SchemaError: missing or unexpected column, non-array value, wrong trailing shape, dtype that cannot be
            cast safely, differing row counts, or non-finite values in a float column.
    """
    return _validate(chunk, columns, None)


def drop_non_finite_rows(
    chunk: Mapping[str, np.ndarray], columns: Sequence[ColumnSpec]
) -> tuple[Mapping[str, np.ndarray], int, int]:
    """Validate ``chunk`` as :func:`validate_chunk` does, except that rows holding a non-finite value in any float
    column (NaN, inf, or outside the column's range after a narrowing cast) are removed instead of rejected.

    Returns:
        ``(kept, rows kept, rows dropped)``: ``kept`` is ``chunk`` itself when nothing was dropped, else a new
        dict holding copies of the finite rows in their order (possibly none).

    Raises:
        SchemaError: every other problem :func:`validate_chunk` reports.
    """
    bad: list[np.ndarray] = []
    rows = _validate(chunk, columns, bad)
    if not bad:
        return chunk, rows, 0
    keep = ~np.logical_or.reduce(bad)
    kept = {spec.name: chunk[spec.name][keep] for spec in columns}
    stored = int(np.count_nonzero(keep))
    return kept, stored, rows - stored


def _validate(chunk: Mapping[str, np.ndarray], columns: Sequence[ColumnSpec], bad: list[np.ndarray] | None) -> int:
    """:func:`validate_chunk`; with a list ``bad``, non-finite values are not an error: a boolean mask of the rows
    holding them is appended to ``bad`` per float column that has any."""
    if not isinstance(chunk, Mapping):
        raise SchemaError(f"expected a dict of numpy arrays, got {type(chunk).__name__}")
    if len(chunk) != len(columns) or any(c.name not in chunk for c in columns):
        expected = [c.name for c in columns]
        missing = [name for name in expected if name not in chunk]
        unexpected = [name for name in chunk if name not in set(expected)]
        problems = []
        if missing:
            problems.append(f"missing column(s) {missing}")
        if unexpected:
            problems.append(f"unexpected column(s) {unexpected}")
        raise SchemaError(f"{' and '.join(problems)}; expected columns {expected}")
    rows = -1
    first = ""
    for spec in columns:
        arr = chunk[spec.name]
        if not isinstance(arr, np.ndarray):
            raise SchemaError(f"column {spec.name!r}: expected a numpy array, got {type(arr).__name__}")
        target = spec.np_dtype
        if arr.dtype != target and not np.can_cast(arr.dtype, target, casting="same_kind"):
            raise SchemaError(f"column {spec.name!r}: dtype {arr.dtype} cannot be cast safely to {spec.dtype}")
        if arr.ndim != 1 + len(spec.shape) or arr.shape[1:] != spec.shape:
            raise SchemaError(f"column {spec.name!r}: expected shape {_batch_shape(spec.shape)}, got {arr.shape}")
        if rows < 0:
            rows, first = arr.shape[0], spec.name
        elif arr.shape[0] != rows:
            raise SchemaError(f"column {spec.name!r} has {arr.shape[0]} rows but column {first!r} has {rows}")
        if target.kind == "f" and arr.dtype.kind == "f":
            if arr.dtype.itemsize <= target.itemsize:
                finite = np.isfinite(arr)
            else:
                with np.errstate(over="ignore"):
                    finite = np.isfinite(arr.astype(target))
            if not finite.all():
                rows_bad = ~finite.reshape(rows, -1).all(axis=1)
                if bad is not None:
                    bad.append(rows_bad)
                    continue
                bad_rows = np.flatnonzero(rows_bad)
                raise SchemaError(
                    f"column {spec.name!r}: non-finite values (NaN, inf or outside {spec.dtype} range) "
                    f"in {bad_rows.size} row(s), first at row {int(bad_rows[0])}"
                )
    return max(rows, 0)


@functools.lru_cache(maxsize=64)
def _arrow_schema(columns: tuple[ColumnSpec, ...]) -> pa.Schema:
    fields = []
    for spec in columns:
        arrow_type = pa.from_numpy_dtype(spec.np_dtype)
        metadata = None
        if spec.shape:
            arrow_type = pa.list_(arrow_type, spec.row_size)
            if len(spec.shape) > 1:
                metadata = {_SHAPE_METADATA_KEY: json.dumps(list(spec.shape)).encode()}
        fields.append(pa.field(spec.name, arrow_type, nullable=False, metadata=metadata))
    return pa.schema(fields)


def arrow_schema(columns: Sequence[ColumnSpec]) -> pa.Schema:
    """Arrow schema of a table: scalars as their Arrow type, vectors as ``fixed_size_list<dtype>[size]``.

    Multi-dimensional values are flattened row-major; their shape is stored as JSON in the field metadata
    under ``b"shape"``. Fields are not nullable.
    """
    return _arrow_schema(tuple(columns))


def columns_from_arrow_schema(schema: pa.Schema, skip: Sequence[str] = ()) -> tuple[ColumnSpec, ...]:
    """The columns whose :func:`arrow_schema` is ``schema`` (its inverse), leaving out the fields named in ``skip``.

    Scalars map to their numpy dtype; ``fixed_size_list<dtype>[size]`` to a vector of shape ``(size,)``, or to the
    shape stored in the field metadata under ``b"shape"`` (multi-dimensional values).

    Raises:
        SchemaError: a field whose type is neither a bool/integer/float scalar nor a fixed-size list of one, or
            whose stored shape does not match its list size; the message names the field.
    """
    columns = []
    for arrow_field in schema:
        if arrow_field.name in skip:
            continue
        arrow_type, shape = arrow_field.type, ()
        if pa.types.is_fixed_size_list(arrow_type):
            size = arrow_type.list_size
            shape = (size,)
            raw = (arrow_field.metadata or {}).get(_SHAPE_METADATA_KEY)
            if raw is not None:
                try:
                    shape = tuple(int(d) for d in json.loads(raw))
                except (ValueError, TypeError):
                    raise SchemaError(f"column {arrow_field.name!r}: unreadable shape metadata {raw!r}") from None
                if math.prod(shape) != size:
                    raise SchemaError(
                        f"column {arrow_field.name!r}: shape metadata {list(shape)} does not match the list size {size}"
                    )
            arrow_type = arrow_type.value_type
        if not (pa.types.is_boolean(arrow_type) or pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type)):
            raise SchemaError(
                f"column {arrow_field.name!r}: Arrow type {arrow_field.type} is not a bool, integer or float scalar "
                f"or a fixed_size_list of one"
            )
        try:
            dtype = np.dtype(arrow_type.to_pandas_dtype()).name
            columns.append(ColumnSpec(arrow_field.name, shape, dtype))
        except (NotImplementedError, ValueError) as exc:
            raise SchemaError(f"column {arrow_field.name!r}: {exc}") from None
    return tuple(columns)


def chunk_to_record_batch(
    chunk: Mapping[str, np.ndarray], columns: Sequence[ColumnSpec], validate: bool = True
) -> pa.RecordBatch:
    """Convert a validated chunk to a record batch of :func:`arrow_schema` (zero-copy for contiguous numbers).

    ``validate=False`` skips :func:`validate_chunk`, for chunks the caller has already validated.

    Raises:
        SchemaError: the chunk does not match ``columns`` (see :func:`validate_chunk`).
    """
    if validate:
        validate_chunk(chunk, columns)
    schema = arrow_schema(columns)
    arrays = []
    for spec in columns:
        arr = np.ascontiguousarray(chunk[spec.name], dtype=spec.np_dtype)
        if spec.shape:
            values = pa.array(arr.reshape(-1))
            arrays.append(pa.FixedSizeListArray.from_arrays(values, spec.row_size))
        else:
            arrays.append(pa.array(arr))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def record_batch_to_chunk(batch: pa.RecordBatch, columns: Sequence[ColumnSpec]) -> dict[str, np.ndarray]:
    """Convert a record batch back to a chunk; numeric columns are zero-copy, read-only views of Arrow memory.

    Raises:
        SchemaError: missing or unexpected field, nulls, or a field type that does not match its column.
    """
    names = [spec.name for spec in columns]
    if batch.schema.names != names:
        missing = [n for n in names if n not in batch.schema.names]
        unexpected = [n for n in batch.schema.names if n not in names]
        raise SchemaError(
            f"record batch fields {batch.schema.names} do not match columns {names} "
            f"(missing {missing}, unexpected {unexpected})"
        )
    rows = batch.num_rows
    schema = arrow_schema(columns)
    chunk = {}
    for spec, column in zip(columns, batch.columns):
        if column.null_count:
            raise SchemaError(f"column {spec.name!r}: {column.null_count} null value(s)")
        expected_type = schema.field(spec.name).type
        if not column.type.equals(expected_type):
            raise SchemaError(f"column {spec.name!r}: expected Arrow type {expected_type}, got {column.type}")
        zero_copy = spec.np_dtype.kind != "b"
        if spec.shape:
            values = column.flatten().to_numpy(zero_copy_only=zero_copy)
            chunk[spec.name] = values.reshape((rows,) + spec.shape)
        else:
            chunk[spec.name] = column.to_numpy(zero_copy_only=zero_copy)
    return chunk
