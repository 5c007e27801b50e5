"""Shared helpers: config checks (cross-field rules, the device field's check) and checkpoint state."""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor


def require(ok: bool, section: str, field: str, value: Any, allowed: str) -> None:
    """Raise ``ValueError("<section>.<field>=<value>: expected <allowed>")`` unless ``ok`` (cross-field rules of the
    configs' ``__post_init__``; single fields declare their constraint as ``metadata={"check": ...}``)."""
    if not ok:
        raise ValueError(f"{section}.{field}={value!r}: expected {allowed}")


def device_problem(name: Any) -> str | None:
    """``metadata["check"]`` of a ``device`` field: what was expected, or None when ``name`` is a device name.
    Syntax only: whether CUDA exists is decided where the learner runs (``resolve_device``)."""
    ok = isinstance(name, str)
    if ok and name != "auto":
        try:
            torch.device(name)
        except (RuntimeError, TypeError):
            ok = False
    return None if ok else "'auto', 'cpu', 'cuda' or 'cuda:<index>'"


def to_cpu(obj: Any) -> Any:
    """Deep copy of nested dicts/lists/tuples with every tensor detached and cloned onto the CPU."""
    if isinstance(obj, Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {key: to_cpu(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(value) for value in obj)
    return obj


def generator_state(generator: torch.Generator) -> dict[str, Any]:
    """Checkpointable state of a torch generator, tagged with its device type."""
    return {"device_type": generator.device.type, "state": generator.get_state()}


def load_generator_state(generator: torch.Generator, state: Mapping[str, Any]) -> None:
    """Restore ``generator_state`` output; a state saved on another device type is not portable and is skipped."""
    if state["device_type"] == generator.device.type:
        generator.set_state(state["state"].cpu())
