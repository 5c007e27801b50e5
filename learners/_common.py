"""Shared helpers: config checks (cross-field rules, the device and precision fields' checks), checkpoint state, and
what `precision: auto` resolves to on this machine."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from learners.config import PRECISIONS


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


BF16_MATMUL_FLAGS = ("amx_bf16", "avx512_bf16")
"""CPU flags (/proc/cpuinfo) of bf16 matrix instructions that oneDNN's bf16 matmuls use. Measured, one core, fp32
accumulation (docs/benchmarks.md): Intel AMX 4.1x fp32 at 256x256; AMD Zen 4's AVX-512 BF16 2.0-2.2x."""
CPUINFO = "/proc/cpuinfo"
_CPU_BF16: bool | None = None


BF16_MIN_WIDTH = 200
"""'auto' is bf16 only for networks whose every hidden layer is at least this wide: below it autocast's casts and
bf16's slower elementwise kernels cost more than the matmuls gain. Measured on AMD Zen 4, one core, bf16 over fp32
(docs/benchmarks.md): SAC update 0.72x at 64x64, 1.00x at 128x128, 1.42x at 256x256; world-model step 0.74x at
3 x 32x32, 1.48x at 7 x 200x200x200x200; imagination 0.79x and 1.58x at the same sizes."""


def cpu_has_bf16_matmul() -> bool:
    """Whether this CPU has bf16 matrix instructions (:data:`BF16_MATMUL_FLAGS`), where a bf16 matmul runs at
    least twice as fast as fp32; False where /proc/cpuinfo cannot be read (not Linux)."""
    global _CPU_BF16
    if _CPU_BF16 is None:
        try:
            with open(CPUINFO, encoding="ascii", errors="replace") as f:
                flags = next((line for line in f if line.startswith("flags")), "")
        except OSError:
            flags = ""
        _CPU_BF16 = any(flag in flags.split() for flag in BF16_MATMUL_FLAGS)
    return _CPU_BF16


def resolve_precision(name: str, device: torch.device, hidden_sizes: Sequence[int]) -> torch.dtype:
    """The matmul dtype of ``precision`` ``name`` for a network of ``hidden_sizes`` on ``device``: torch.bfloat16
    or torch.float32. The one place that decides what 'auto' means: bf16 on a CPU with bf16 matrix instructions for
    a network at least :data:`BF16_MIN_WIDTH` wide, fp32 elsewhere (CUDA included: its mixed precision is not
    measured yet)."""
    if name not in PRECISIONS:
        raise ValueError(f"precision={name!r}: expected 'auto', 'fp32' or 'bf16'")
    if name == "auto":
        wide = len(hidden_sizes) > 0 and min(hidden_sizes) >= BF16_MIN_WIDTH
        return torch.bfloat16 if device.type == "cpu" and wide and cpu_has_bf16_matmul() else torch.float32
    return torch.bfloat16 if name == "bf16" else torch.float32


def autocast(device: torch.device, dtype: torch.dtype) -> torch.autocast:
    """``torch.autocast`` on ``device`` to ``dtype``; disabled (fp32 throughout) when ``dtype`` is float32. On CUDA
    without autocast's cache of cast weights, which a CUDA graph cannot hold (learners/cuda_graphs.py)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype != torch.float32,
                          cache_enabled=device.type != "cuda")
