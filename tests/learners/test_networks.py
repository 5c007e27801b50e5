"""Ensemble layers are batched but members stay independent; device names resolve or fail clearly."""

import pytest
import torch
from torch import nn

from learners.networks import EnsembleLinear, EnsembleMLP, mlp, resolve_device

E, B, I, U = 3, 5, 4, 2


def test_ensemble_linear_shape_and_init_range():
    layer = EnsembleLinear(E, I, U)
    assert layer.weight.shape == (E, I, U) and layer.bias.shape == (E, 1, U)
    assert layer(torch.randn(E, B, I)).shape == (E, B, U)
    bound = 1.0 / I**0.5
    assert layer.weight.abs().max() <= bound and layer.bias.abs().max() <= bound
    assert not torch.equal(layer.weight[0], layer.weight[1])


def test_ensemble_linear_matches_per_member_matmul():
    layer = EnsembleLinear(E, I, U)
    x = torch.randn(E, B, I)
    expected = torch.stack([x[e] @ layer.weight[e] + layer.bias[e] for e in range(E)])
    torch.testing.assert_close(layer(x), expected)


def test_ensemble_linear_rejects_wrong_shape():
    with pytest.raises(ValueError, match=r"shape \(2, 5, 4\), expected \(3, B, 4\)"):
        EnsembleLinear(E, I, U)(torch.randn(2, B, I))


@pytest.mark.parametrize("layer_norm", [False, True])
def test_ensemble_mlp_members_are_independent(layer_norm):
    net = EnsembleMLP(E, I, U, (8, 8), layer_norm=layer_norm)
    x = torch.randn(E, B, I)
    before = net(x).detach()
    with torch.no_grad():
        for p in net.parameters():
            p[0].add_(torch.randn_like(p[0]))
    after = net(x).detach()
    assert not torch.allclose(after[0], before[0])
    torch.testing.assert_close(after[1:], before[1:])


@pytest.mark.parametrize("layer_norm", [False, True])
def test_ensemble_mlp_gradient_of_one_member_touches_only_its_slice(layer_norm):
    net = EnsembleMLP(E, I, U, (8,), layer_norm=layer_norm)
    net(torch.randn(E, B, I))[0].pow(2).sum().backward()
    for name, p in net.named_parameters():
        assert p.grad[0].abs().sum() > 0, name
        assert torch.all(p.grad[1:] == 0), name


def test_ensemble_mlp_layer_norm_params_are_per_member():
    net = EnsembleMLP(E, I, U, (8, 6), layer_norm=True)
    shapes = [tuple(m.weight.shape) for m in net.layers if type(m).__name__ == "EnsembleLayerNorm"]
    assert shapes == [(E, 1, 8), (E, 1, 6)]
    assert net(torch.randn(E, B, I)).shape == (E, B, U)


def test_mlp():
    net = mlp(I, U, (8, 8))
    assert net(torch.randn(B, I)).shape == (B, U)
    assert sum(isinstance(m, nn.ReLU) for m in net) == 2


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="device='gpu0'"):
        resolve_device("gpu0")
