"""The policy as robots run it: TorchScript (libtorch, any torch) or ONNX (ONNX Runtime), deterministic.

Both formats compute the same function: obs float32 ``(B, O)`` -> action float32 ``(B, A)`` in env units,
``tanh(mean) * action_scale + action_bias``, which is what ``Policy.act(obs, deterministic=True)`` computes. Each
archive carries the gateway's spec as JSON: ``spec.json`` inside the TorchScript archive, the metadata property
``spec.json`` of the ONNX model.

``torch.jit`` and the TorchScript-based ONNX exporter are deprecated in recent torch in favour of ``torch.export``;
TorchScript is still what loads in libtorch and in old and new torch alike, and the TorchScript-based ONNX exporter
needs only the ``onnx`` package (the ``torch.export`` one also needs ``onnxscript``). Their deprecation warnings are
silenced here.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import warnings
from typing import Any, Iterator, Mapping

import torch
from torch import Tensor, nn

__all__ = ["DeterministicActor", "ONNX_OPSET", "SPEC_FILE", "export_onnx", "export_torchscript"]

SPEC_FILE = "spec.json"
"""Name of the spec inside the TorchScript archive (``torch.jit.load(..., _extra_files={SPEC_FILE: ""})``) and of
the ONNX model's metadata property holding it."""
ONNX_OPSET = 17
"""ONNX opset of the exported model (ONNX Runtime 1.14 and later run it)."""
_DEPRECATIONS = (r"`torch\.jit\.\w+` is deprecated", r".*legacy TorchScript-based ONNX export.*",
                 r"The feature will be removed")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Without torch's deprecation warnings for the TorchScript exporters and the tracer's warnings."""
    with warnings.catch_warnings():
        for message in _DEPRECATIONS:
            warnings.filterwarnings("ignore", message=message, category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        yield


class DeterministicActor(nn.Module):
    """The exported policy: obs float32 (B, O) -> action float32 (B, A) in env units.

    The tanh-Gaussian actor's deterministic action: ``tanh(mean) * action_scale + action_bias``, which is what
    ``Policy.act(obs, deterministic=True)`` computes. Built from a ``learners.sac.TanhGaussianActor``.
    """

    def __init__(self, trunk: nn.Module, action_scale: Tensor, action_bias: Tensor, obs_dim: int, act_dim: int):
        super().__init__()
        self.trunk = trunk
        self.obs_dim = obs_dim
        self.act_dim = act_dim
        self.register_buffer("action_scale", action_scale.detach().clone().float())
        self.register_buffer("action_bias", action_bias.detach().clone().float())

    @classmethod
    def from_actor(cls, actor: nn.Module) -> "DeterministicActor":
        """A CPU copy of ``actor``'s trunk and action scaling (``TanhGaussianActor``)."""
        trunk = copy.deepcopy(actor.trunk).cpu().eval().requires_grad_(False)
        return cls(trunk, actor.action_scale.cpu(), actor.action_bias.cpu(), int(actor.obs_dim), int(actor.act_dim))

    def act(self, obs: Tensor) -> Tensor:
        """The action of each row of ``obs`` (no shape check: what the ONNX graph computes)."""
        mean = self.trunk(obs.to(torch.float32)).narrow(1, 0, self.act_dim)
        return torch.tanh(mean) * self.action_scale + self.action_bias

    def forward(self, obs: Tensor) -> Tensor:
        if obs.dim() != 2 or obs.size(1) != self.obs_dim:
            raise ValueError(
                "obs has shape " + str(obs.shape) + ", expected (B, " + str(self.obs_dim) + ") float32"
            )
        return self.act(obs)


class _Traced(nn.Module):
    """``DeterministicActor.act`` as ``forward``, for the ONNX exporter's trace."""

    def __init__(self, actor: DeterministicActor):
        super().__init__()
        self.actor = actor

    def forward(self, obs: Tensor) -> Tensor:
        return self.actor.act(obs)


def export_torchscript(actor: nn.Module, spec: Mapping[str, Any]) -> bytes:
    """TorchScript archive of ``actor``'s deterministic policy, with ``spec`` as JSON inside it (:data:`SPEC_FILE`)."""
    module = DeterministicActor.from_actor(actor)
    buffer = io.BytesIO()
    with _quiet():
        scripted = torch.jit.script(module)
        torch.jit.save(scripted, buffer, _extra_files={SPEC_FILE: json.dumps(spec, sort_keys=True)})
    return buffer.getvalue()


def export_onnx(actor: nn.Module, spec: Mapping[str, Any]) -> bytes:
    """ONNX model of ``actor``'s deterministic policy: input ``obs`` float32 ``(B, O)``, output ``action`` float32
    ``(B, A)`` (``B`` dynamic), with ``spec`` as JSON in the metadata property :data:`SPEC_FILE`.

    Raises:
        RuntimeError: the ``onnx`` package is missing (the exporter writes the model through it).
    """
    try:
        import onnx
    except ImportError:
        raise RuntimeError("exporting ONNX needs the onnx package (pip install onnx)") from None
    module = _Traced(DeterministicActor.from_actor(actor)).eval()
    example = torch.zeros(1, module.actor.obs_dim, dtype=torch.float32)
    buffer = io.BytesIO()
    with _quiet():
        torch.onnx.export(module, (example,), buffer, dynamo=False, opset_version=ONNX_OPSET,
                          input_names=["obs"], output_names=["action"],
                          dynamic_axes={"obs": {0: "batch"}, "action": {0: "batch"}})
    model = onnx.load_from_string(buffer.getvalue())
    entry = model.metadata_props.add()
    entry.key, entry.value = SPEC_FILE, json.dumps(spec, sort_keys=True)
    model.doc_string = "dynaray deterministic policy: obs float32 (B, O) -> action float32 (B, A) in env units"
    return model.SerializeToString()
