"""CUDA graphs for learner updates: a function of device tensors captured once and replayed with new inputs.

A policy update at the presets' sizes (256-wide MLPs, batches of 256) is a few hundred small kernels. On a GPU its
time goes to launching them from Python, not to running them. ``CapturedCall`` records the kernels of one call into a
CUDA graph and then replays the whole sequence with one launch; ``PinnedBatch`` moves a batch's columns to the
device in one copy from page-locked memory, into the same device tensors every time (what a graph reads).

    losses = CapturedCall(fn, warmup=3, generators=[generator])
    outputs = losses(*inputs)   # eager for the first `warmup` calls (on a side stream), then captured and replayed

Rules for ``fn`` (what a graph can replay): its inputs and outputs are device tensors; no host reads (``.item()``,
``.tolist()``), no Python branch on a tensor's value, no tensor that must outlive the call other than the outputs;
random draws only from the registered generators (each replay advances them as the eager call would). The tensors
passed to the capturing call become the graph's inputs (later calls' inputs are copied into them unless they are
the same tensors), and a replayed call returns the same output tensors every time, overwritten by the next call.
State that ``fn`` reads or updates in place (parameters, optimizer moments) is read at the addresses it had when
captured: whoever replaces such a tensor drops the ``CapturedCall``.

Off CUDA a ``CapturedCall`` is the plain function: the same code runs on the CPU, where the tests check it.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor


class CapturedCall:
    """``fn(*inputs)``: eager for its first ``warmup`` calls, then one CUDA graph replayed per call (on CUDA)."""

    def __init__(self, fn: Callable[..., Any], device: torch.device, warmup: int = 3,
                 generators: Sequence[torch.Generator] = ()):
        self._fn = fn
        self._cuda = device.type == "cuda"
        self._warmup = warmup
        self._generators = tuple(generators)
        self._graph: Any = None
        self._inputs: tuple[Tensor, ...] = ()
        self._outputs: Any = None
        self.eager_calls = 0
        """Calls run eagerly so far (lazy initialisation happens in these, outside any graph)."""

    @property
    def captured(self) -> bool:
        return self._graph is not None

    def __call__(self, *inputs: Tensor) -> Any:
        if not self._cuda:
            return self._fn(*inputs)
        if self._graph is not None:
            for static, value in zip(self._inputs, inputs):
                if static is not value:
                    static.copy_(value, non_blocking=True)
            self._graph.replay()
            return self._outputs
        if self.eager_calls < self._warmup:
            self.eager_calls += 1
            return self._on_side_stream(inputs)
        return self._capture(inputs)

    def _on_side_stream(self, inputs: tuple[Tensor, ...]) -> Any:
        """An eager call on a side stream, as before a capture (cuBLAS and autograd set up their per-stream state
        here, not in the graph)."""
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            outputs = self._fn(*inputs)
        torch.cuda.current_stream().wait_stream(stream)
        return outputs

    def _capture(self, inputs: tuple[Tensor, ...]) -> Any:
        graph = torch.cuda.CUDAGraph()
        for generator in self._generators:
            graph.register_generator_state(generator)
        self._inputs = inputs
        with torch.cuda.graph(graph):
            self._outputs = self._fn(*inputs)
        self._graph = graph
        graph.replay()  # a capture records the kernels without running them
        return self._outputs


class PinnedBatch:
    """The float32 columns of batches of one size: one page-locked host buffer, one device buffer, one copy.

    ``load(batch)`` copies each numpy column into the host buffer (flags become 0./1.) and the whole buffer to the
    device with one asynchronous transfer; ``columns`` are device views, the same tensors for every batch. The host
    buffer is written again only once the previous transfer has finished. Off CUDA the host buffer is not pinned
    and the device buffer is a second CPU buffer (the same code path, checked by the tests)."""

    def __init__(self, shapes: Mapping[str, tuple[int, ...]], device: torch.device):
        cuda = device.type == "cuda"
        sizes = {name: math.prod(shape) for name, shape in shapes.items()}
        total = sum(sizes.values())
        self._host = torch.empty(total, dtype=torch.float32, pin_memory=cuda)
        self._device = torch.empty(total, dtype=torch.float32, device=device)
        self._copied = torch.cuda.Event() if cuda else None
        host = self._host.numpy()
        self._host_views: dict[str, np.ndarray] = {}
        self.columns: dict[str, Tensor] = {}
        """Device tensor of each column, shaped as given."""
        offset = 0
        for name, shape in shapes.items():
            end = offset + sizes[name]
            self._host_views[name] = host[offset:end].reshape(shape)
            self.columns[name] = self._device[offset:end].view(shape)
            offset = end

    def load(self, batch: Mapping[str, np.ndarray]) -> dict[str, Tensor]:
        """``columns`` holding ``batch``'s columns (each of the shape given; validated by the caller)."""
        if self._copied is not None:
            self._copied.synchronize()
        for name, view in self._host_views.items():
            np.copyto(view, np.asarray(batch[name]).reshape(view.shape), casting="unsafe")
        self._device.copy_(self._host, non_blocking=True)
        if self._copied is not None:
            self._copied.record()
        return self.columns
