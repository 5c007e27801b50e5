import json

import numpy as np
import pyarrow as pa
import pytest

from replay import ColumnSpec, SchemaError, arrow_schema, transition_columns, validate_chunk
from replay.schema import chunk_to_record_batch, record_batch_to_chunk
from tests.replay.helpers import COLUMNS, make_chunk


def test_transition_columns_match_the_architecture_doc():
    cols = transition_columns((17,), (6,))
    assert [(c.name, c.shape, c.dtype) for c in cols] == [
        ("obs", (17,), "float32"),
        ("action", (6,), "float32"),
        ("reward", (), "float32"),
        ("next_obs", (17,), "float32"),
        ("terminated", (), "bool"),
        ("truncated", (), "bool"),
        ("episode_id", (), "int64"),
        ("step", (), "int64"),
        ("policy_version", (), "int64"),
        ("writer_id", (), "int64"),
        ("seq", (), "int64"),
    ]


def test_arrow_schema_fields_and_types():
    schema = arrow_schema(transition_columns((17,), (6,)))
    assert schema.names[:4] == ["obs", "action", "reward", "next_obs"]
    assert schema.field("obs").type == pa.list_(pa.float32(), 17)
    assert schema.field("action").type == pa.list_(pa.float32(), 6)
    assert schema.field("reward").type == pa.float32()
    assert schema.field("terminated").type == pa.bool_()
    assert schema.field("seq").type == pa.int64()
    assert not any(f.nullable for f in schema)
    assert schema.field("obs").metadata is None


def test_arrow_schema_stores_multi_dim_shape_in_metadata():
    schema = arrow_schema((ColumnSpec("image", (3, 4, 5), "float32"), ColumnSpec("seq", (), "int64")))
    field = schema.field("image")
    assert field.type == pa.list_(pa.float32(), 60)
    assert json.loads(field.metadata[b"shape"]) == [3, 4, 5]


def test_record_batch_round_trip_is_exact():
    columns = COLUMNS + (ColumnSpec("image", (2, 3), "float32"),)
    chunk = make_chunk(7)
    chunk["obs"] = np.random.default_rng(0).standard_normal((7, 4)).astype(np.float32)
    chunk["terminated"][3] = True
    chunk["image"] = np.arange(42, dtype=np.float32).reshape(7, 2, 3)
    batch = chunk_to_record_batch(chunk, columns)
    assert batch.schema == arrow_schema(columns)
    back = record_batch_to_chunk(batch, columns)
    assert back.keys() == chunk.keys()
    for name, arr in chunk.items():
        assert back[name].dtype == arr.dtype, name
        np.testing.assert_array_equal(back[name], arr, err_msg=name)


def test_record_batch_round_trip_of_a_slice_and_casts_float64():
    chunk = make_chunk(10)
    chunk["obs"] = chunk["obs"].astype(np.float64)
    batch = chunk_to_record_batch(chunk, COLUMNS).slice(3, 4)
    back = record_batch_to_chunk(batch, COLUMNS)
    assert back["obs"].dtype == np.float32
    np.testing.assert_array_equal(back["obs"], chunk["obs"][3:7].astype(np.float32))
    np.testing.assert_array_equal(back["seq"], np.arange(3, 7))


def test_record_batch_to_chunk_rejects_other_fields():
    batch = chunk_to_record_batch(make_chunk(3), COLUMNS).drop_columns(["reward"])
    with pytest.raises(SchemaError, match=r"missing \['reward'\]"):
        record_batch_to_chunk(batch, COLUMNS)


def test_validate_chunk_returns_rows():
    assert validate_chunk(make_chunk(5), COLUMNS) == 5


def _check(chunk, pattern):
    with pytest.raises(SchemaError, match=pattern):
        validate_chunk(chunk, COLUMNS)


def test_validate_chunk_missing_column():
    chunk = make_chunk(3)
    del chunk["reward"]
    _check(chunk, r"missing column\(s\) \['reward'\]")


def test_validate_chunk_unexpected_column():
    chunk = make_chunk(3)
    chunk["extra"] = np.zeros(3)
    _check(chunk, r"unexpected column\(s\) \['extra'\]")


def test_validate_chunk_wrong_trailing_shape():
    chunk = make_chunk(3)
    chunk["obs"] = np.zeros((3, 5), np.float32)
    _check(chunk, r"column 'obs': expected shape \(N, 4\), got \(3, 5\)")
    chunk = make_chunk(3)
    chunk["reward"] = np.zeros((3, 1), np.float32)
    _check(chunk, r"column 'reward': expected shape \(N,\), got \(3, 1\)")


def test_validate_chunk_dtypes():
    chunk = make_chunk(3)
    chunk["obs"] = chunk["obs"].astype(np.float64)
    chunk["seq"] = chunk["seq"].astype(np.int32)
    assert validate_chunk(chunk, COLUMNS) == 3
    chunk = make_chunk(3)
    chunk["obs"] = chunk["obs"].astype(object)
    _check(chunk, r"column 'obs': dtype object cannot be cast safely to float32")
    chunk = make_chunk(3)
    chunk["episode_id"] = np.array(["a", "b", "c"])
    _check(chunk, r"column 'episode_id': dtype <U1 cannot be cast safely to int64")
    chunk = make_chunk(3)
    chunk["terminated"] = np.zeros(3, np.int64)
    _check(chunk, r"column 'terminated': dtype int64 cannot be cast safely to bool")
    chunk = make_chunk(3)
    chunk["seq"] = [0, 1, 2]
    _check(chunk, r"column 'seq': expected a numpy array, got list")


def test_validate_chunk_row_counts_differ():
    chunk = make_chunk(3)
    chunk["reward"] = np.zeros(4, np.float32)
    _check(chunk, r"column 'reward' has 4 rows but column 'obs' has 3")


def test_validate_chunk_non_finite():
    chunk = make_chunk(4)
    chunk["next_obs"][2, 1] = np.nan
    _check(chunk, r"column 'next_obs': non-finite values .* in 1 row\(s\), first at row 2")
    chunk = make_chunk(4)
    chunk["reward"] = np.array([0, 1e300, 0, 0], dtype=np.float64)
    _check(chunk, r"column 'reward': non-finite values .*outside float32 range")


def test_column_spec_validation():
    with pytest.raises(ValueError, match="dtype must be bool, integer or float"):
        ColumnSpec("x", (), "object")
    with pytest.raises(ValueError, match=r"shape dimensions must be >= 1, got \(0,\)"):
        ColumnSpec("x", (0,), "float32")
    assert ColumnSpec("x", [3], "f4") == ColumnSpec("x", (3,), "float32")
