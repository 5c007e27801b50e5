"""Network building blocks shared by the learners.

Ensembles are batched: all E members are evaluated by one batched matmul per layer instead of a Python
loop, which is what makes twin critics and a 7-member dynamics ensemble cheap.

Dimensions: E ensemble members, B batch rows, I input features, H hidden features, U output features.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class EnsembleLinear(nn.Module):
    """E independent affine maps applied in one ``torch.baddbmm``: (E, B, I) -> (E, B, U).

    Each member is initialised like ``nn.Linear`` (uniform in +-1/sqrt(I) for weight and bias), with
    independent draws per member.
    """

    def __init__(self, ensemble_size: int, in_features: int, out_features: int):
        super().__init__()
        if ensemble_size < 1 or in_features < 1 or out_features < 1:
            raise ValueError(
                f"EnsembleLinear sizes must be >= 1, got ensemble_size={ensemble_size}, "
                f"in_features={in_features}, out_features={out_features}"
            )
        self.ensemble_size = ensemble_size
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(ensemble_size, in_features, out_features))
        self.bias = nn.Parameter(torch.empty(ensemble_size, 1, out_features))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Per-member ``nn.Linear`` default init: U(-1/sqrt(I), 1/sqrt(I)) for weight and bias."""
        bound = 1.0 / math.sqrt(self.in_features)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        """(E, B, I) -> (E, B, U)."""
        if x.dim() != 3 or x.shape[0] != self.ensemble_size or x.shape[2] != self.in_features:
            raise ValueError(
                f"EnsembleLinear input has shape {tuple(x.shape)}, "
                f"expected ({self.ensemble_size}, B, {self.in_features})"
            )
        return torch.baddbmm(self.bias, x, self.weight)

    def extra_repr(self) -> str:
        return f"ensemble_size={self.ensemble_size}, in_features={self.in_features}, out_features={self.out_features}"


class EnsembleLayerNorm(nn.Module):
    """LayerNorm over the feature dim with separate affine parameters per member: (E, B, H) -> (E, B, H)."""

    def __init__(self, ensemble_size: int, features: int, eps: float = 1e-5):
        super().__init__()
        self.features = features
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(ensemble_size, 1, features))
        self.bias = nn.Parameter(torch.zeros(ensemble_size, 1, features))

    def forward(self, x: Tensor) -> Tensor:
        return torch.addcmul(self.bias, F.layer_norm(x, (self.features,), eps=self.eps), self.weight)


class EnsembleMLP(nn.Module):
    """E independent MLPs evaluated together: (E, B, I) -> (E, B, U).

    Hidden layers are ``EnsembleLinear -> [EnsembleLayerNorm] -> activation``; the output layer is linear.
    """

    def __init__(
        self,
        ensemble_size: int,
        in_features: int,
        out_features: int,
        hidden_sizes: Sequence[int],
        activation: type[nn.Module] = nn.SiLU,
        layer_norm: bool = False,
    ):
        super().__init__()
        if len(hidden_sizes) == 0:
            raise ValueError("EnsembleMLP hidden_sizes is empty, expected at least one hidden layer")
        self.ensemble_size = ensemble_size
        self.in_features = in_features
        self.out_features = out_features
        layers: list[nn.Module] = []
        width = in_features
        for hidden in hidden_sizes:
            layers.append(EnsembleLinear(ensemble_size, width, hidden))
            if layer_norm:
                layers.append(EnsembleLayerNorm(ensemble_size, hidden))
            layers.append(activation())
            width = hidden
        layers.append(EnsembleLinear(ensemble_size, width, out_features))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """(E, B, I) -> (E, B, U)."""
        return self.layers(x)

    def linear_weights(self) -> list[Tensor]:
        """The weight tensors (E, I, U) of every linear layer, e.g. for an L2 penalty."""
        return [m.weight for m in self.layers if isinstance(m, EnsembleLinear)]


def mlp(
    in_features: int,
    out_features: int,
    hidden_sizes: Sequence[int],
    activation: type[nn.Module] = nn.ReLU,
) -> nn.Sequential:
    """Plain MLP ``Linear -> activation -> ... -> Linear``: (B, I) -> (B, U)."""
    layers: list[nn.Module] = []
    width = in_features
    for hidden in hidden_sizes:
        layers += [nn.Linear(width, hidden), activation()]
        width = hidden
    layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers)


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA if available else CPU; otherwise ``torch.device(name)``.

    Raises ValueError for an unparsable name or a CUDA device on a machine without CUDA.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device={name!r}: expected 'auto', 'cpu', 'cuda' or 'cuda:<index>' ({err})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r}: CUDA is not available on this machine, use 'auto' or 'cpu'")
    return device


@contextmanager
def seeded_init(seed: int) -> Iterator[None]:
    """Construct modules under a fixed CPU seed without disturbing the caller's global RNG stream."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        yield
