"""Validation and conversion of numpy batches (docs/architecture.md, "Rows and batches") to torch tensors.

Dimensions: N rows, O obs dim, A action dim.
"""

from __future__ import annotations

import warnings
from typing import Mapping

import numpy as np
import torch
from torch import Tensor

_FLOAT_COLUMNS = ("obs", "action", "reward", "next_obs")
_FLAG_COLUMNS = ("terminated", "truncated")

# Batches that arrive through Ray are zero-copy views of the object store, hence read-only; the tensors made from
# them are only read, so torch's warning about non-writable arrays says nothing a user could act on.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning,
                        module=__name__)


def _expected_shape(column: str, obs_dim: int, act_dim: int) -> tuple[int, ...]:
    if column in ("obs", "next_obs"):
        return (obs_dim,)
    if column == "action":
        return (act_dim,)
    return ()


def _describe(trailing: tuple[int, ...]) -> str:
    return "(" + ", ".join(["N", *map(str, trailing)]) + (",)" if not trailing else ")")


def check_columns(
    batch: Mapping[str, np.ndarray], columns: tuple[str, ...], obs_dim: int, act_dim: int
) -> int:
    """Check that ``batch`` has ``columns`` with consistent row counts and feature dims; returns N."""
    missing = [c for c in columns if c not in batch]
    if missing:
        raise KeyError(f"batch is missing columns {missing}; it has {sorted(batch)}")
    rows = None
    for column in columns:
        shape = np.shape(batch[column])
        trailing = _expected_shape(column, obs_dim, act_dim)
        if len(shape) != 1 + len(trailing) or tuple(shape[1:]) != trailing:
            raise ValueError(f"batch[{column!r}] has shape {shape}, expected {_describe(trailing)}")
        if rows is None:
            rows = shape[0]
        elif shape[0] != rows:
            raise ValueError(f"batch[{column!r}] has {shape[0]} rows, expected {rows} like batch[{columns[0]!r}]")
    if not rows:
        raise ValueError("batch has 0 rows, expected at least 1")
    return rows


def to_tensors(
    batch: Mapping[str, np.ndarray],
    columns: tuple[str, ...],
    obs_dim: int,
    act_dim: int,
    device: torch.device,
    checked: bool = False,
) -> dict[str, Tensor]:
    """Validated float32 tensors on ``device`` for ``columns`` (flags become 0./1. floats); ``checked``: the caller
    has already run ``check_columns`` on the same columns."""
    if not checked:
        check_columns(batch, columns, obs_dim, act_dim)
    out = {}
    for column in columns:
        if column not in _FLOAT_COLUMNS + _FLAG_COLUMNS:
            raise ValueError(f"to_tensors: column {column!r} is not one of {_FLOAT_COLUMNS + _FLAG_COLUMNS}")
        array = np.ascontiguousarray(batch[column], dtype=np.float32)
        out[column] = torch.from_numpy(array).to(device, non_blocking=True)
    return out
