"""Multiplication nodes (KAN 2.0's MultKAN): the node operation, config, model, counting."""

from __future__ import annotations

import json

import pytest
import torch
from torch.func import functional_call

import kanlab as kl
from kanlab.config import KANConfig
from kanlab.mult import combine, subnode_groups, subnode_owner


def data(n=64, d=2, seed=0, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, d, generator=g, dtype=dtype) * 2 - 1


def naive_combine(z: torch.Tensor, n_sum: int, arities: list[int]) -> torch.Tensor:
    """One node at a time, one sample at a time: the definition in kanlab.mult's docstring."""
    rows = []
    for sample in z.reshape(-1, z.shape[-1]).tolist():
        nodes = sample[:n_sum]
        start = n_sum
        for a in arities:
            p = 1.0
            for t in range(a):
                p *= sample[start + t]
            nodes.append(p)
            start += a
        rows.append(nodes)
    return torch.tensor(rows, dtype=z.dtype).reshape(*z.shape[:-1], n_sum + len(arities))


def xy_model() -> kl.KAN:
    """[2, [0, 1], 1] with identity symbolic edges x1 -> sub 0, x2 -> sub 1, node -> out; the
    other edges (and the numeric parts) are exactly zero."""
    model = kl.KAN([2, [0, 1], 1], dtype=torch.float64)
    with torch.no_grad():
        for layer in model.layers:
            layer.coef.zero_()
            layer.scale_base.zero_()
    model.layers[0].set_symbolic(0, 0, "x")
    model.layers[0].set_symbolic(1, 1, "x")
    model.layers[1].set_symbolic(0, 0, "x")
    return model


# ------------------------------------------------------------------ combine
@pytest.mark.parametrize(
    ("n_sum", "arities"), [(0, [2]), (3, [2, 2]), (1, [3, 2, 4]), (2, []), (0, [5, 2])]
)
def test_combine_matches_naive_loop(n_sum, arities) -> None:
    g = torch.Generator().manual_seed(1)
    z = torch.randn(3, 4, n_sum + sum(arities), generator=g, dtype=torch.float64)
    out = combine(z, n_sum, arities)
    assert out.shape == (3, 4, n_sum + len(arities))
    torch.testing.assert_close(out, naive_combine(z, n_sum, arities), rtol=1e-15, atol=0)


def test_combine_gradients_of_first_and_second_order() -> None:
    g = torch.Generator().manual_seed(2)
    for arities in ([2, 2], [3, 2]):  # the reshape path and the padded-gather path
        z = torch.randn(5, 1 + sum(arities), generator=g, dtype=torch.float64, requires_grad=True)
        z.data[0, 2] = 0.0  # a zero factor: a prod()-by-division gradient would be wrong here
        assert torch.autograd.gradcheck(lambda t, a=arities: combine(t, 1, a), (z,))
        assert torch.autograd.gradgradcheck(lambda t, a=arities: combine(t, 1, a), (z,))


def test_combine_refuses_wrong_subnode_count() -> None:
    with pytest.raises(ValueError, match=r"combine needs \(\.\.\., 5\) subnode values"):
        combine(torch.zeros(2, 4), 1, [2, 2])


def test_subnode_maps_are_inverse() -> None:
    groups = subnode_groups(2, [3, 2])
    assert groups == [[0], [1], [2, 3, 4], [5, 6]]
    owner = subnode_owner(2, [3, 2])
    assert owner == [0, 1, 2, 2, 2, 3, 3]
    assert all(owner[s] == node for node, group in enumerate(groups) for s in group)


# ------------------------------------------------------------------ config
# The keys and values a [2, 5, 1] KANConfig has always had: trial keys and checkpoints hash this.
LEGACY_DICT = {
    "widths": [2, 5, 1],
    "grid_size": 5,
    "spline_order": 3,
    "grid_range": [-1.0, 1.0],
    "base_activation": "silu",
    "noise_scale": 0.1,
    "seed": 0,
    "dtype": None,
}


def test_config_without_mult_nodes_has_the_legacy_dict() -> None:
    for widths in ([2, 5, 1], [2, [5, 0], 1], (2, (5, 0), [1, 0])):
        cfg = KANConfig(widths=widths)
        assert cfg.to_dict() == LEGACY_DICT
        assert list(cfg.to_dict()) == list(LEGACY_DICT)  # the key order too (JSON text hashed)
        assert cfg.widths == (2, 5, 1)
    assert KANConfig.from_dict(LEGACY_DICT) == KANConfig(widths=[2, 5, 1])
    # an arity given without multiplication nodes is meaningless: it does not change the dict
    assert KANConfig(widths=[2, 5, 1], mult_arity=3).to_dict() == LEGACY_DICT


def test_config_with_mult_nodes_normalises_and_round_trips() -> None:
    cfg = KANConfig(widths=[2, [3, 2], [0, 1]])
    assert cfg.widths == (2, (3, 2), (0, 1)) and cfg.mult_arity == 2
    assert cfg.n_sum == [2, 3, 0] and cfg.n_mult == [0, 2, 1] and cfg.nodes == [2, 5, 1]
    assert cfg.subnodes() == [7, 2]
    back = KANConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg and back.to_dict()["mult_arity"] == 2
    per_node = KANConfig(widths=[2, [1, 2], 1], mult_arity=[[], [2, 3], []])
    assert per_node.mult_arity == ((), (2, 3), ())
    assert per_node.arities() == [[], [2, 3], []] and per_node.subnodes() == [6, 1]
    assert KANConfig.from_dict(json.loads(json.dumps(per_node.to_dict()))) == per_node
    same = KANConfig(widths=[2, [1, 2], 1], mult_arity=[[], [3, 3], []])
    assert same.mult_arity == 3  # equal arities collapse to the int


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"widths": [[1, 1], 2, 1]}, ValueError, r"widths\[0\] \(the inputs\) must be an int"),
        ({"widths": [2, [3, -1], 1]}, ValueError, r"widths\[1\]\[1\] \(n_mult\) must be >= 0"),
        ({"widths": [2, [-1, 1], 1]}, ValueError, r"widths\[1\]\[0\] \(n_sum\) must be >= 0"),
        ({"widths": [2, [0, 0], 1]}, ValueError, r"widths\[1\] must have at least one node"),
        ({"widths": [2, [1, 2, 3], 1]}, ValueError, r"widths\[1\] must be an int or a pair"),
        ({"widths": [2, [1.5, 1], 1]}, TypeError, r"widths\[1\]\[0\] \(n_sum\) must be an int"),
        ({"widths": [2, [1, 1], 1], "mult_arity": 1}, ValueError, r"mult_arity must be >= 2"),
        (
            {"widths": [2, [1, 1], 1], "mult_arity": [[], [2]]},
            ValueError,
            r"one sequence per layer of widths \(3\), got 2",
        ),
        (
            {"widths": [2, [1, 2], 1], "mult_arity": [[], [2], []]},
            ValueError,
            r"mult_arity\[1\] must list one arity per multiplication node of layer 1 \(2\)",
        ),
        (
            {"widths": [2, [1, 2], 1], "mult_arity": [[], [2, 1], []]},
            ValueError,
            r"mult_arity\[1\]\[1\] must be >= 2",
        ),
    ],
)
def test_config_refuses_bad_mult_entries(kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        KANConfig(**kwargs)
    with pytest.raises(error, match=match):  # the model constructor fails the same way
        kl.KAN(kwargs.pop("widths"), **kwargs)


# ------------------------------------------------------------------ model
def test_model_attributes_and_layer_shapes() -> None:
    model = kl.KAN([3, [2, 2], [1, 1], 2], mult_arity=[[], [2, 3], [4], []])
    assert model.widths == [3, 4, 2, 2]
    assert model.n_sum == [3, 2, 1, 2] and model.n_mult == [0, 2, 1, 0]
    assert model.mult_arity == [[], [2, 3], [4], []] and model.has_mult
    assert [(la.in_features, la.out_features) for la in model.layers] == [(3, 7), (4, 5), (2, 2)]
    plain = kl.KAN([3, 4, 2])
    assert not plain.has_mult and plain.n_mult == [0, 0, 0] and plain.mult_arity == [[], [], []]


def test_forward_activations_layer_inputs_match_naive_per_node_loop() -> None:
    model = kl.KAN([2, [2, 2], [1, 1], 1], mult_arity=[[], [2, 3], [2], []], dtype="float64")
    x = data()
    h, expected_inputs = x, []
    for layer, n_sum, ar in zip(model.layers, model.n_sum[1:], model.mult_arity[1:], strict=True):
        expected_inputs.append(h)
        h = naive_combine(layer(h), n_sum, ar)
    torch.testing.assert_close(model(x), h, rtol=1e-14, atol=1e-15)
    inputs = model.layer_inputs(x)
    for got, want in zip(inputs, expected_inputs, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-14, atol=1e-15)
    acts = model.activations(x)
    assert [a.shape for a in acts] == [(64, 7, 2), (64, 3, 4), (64, 1, 2)]
    for layer, a, inp in zip(model.layers, acts, inputs, strict=True):
        torch.testing.assert_close(a.sum(-1), layer(inp))


def test_gradcheck_through_mult_model_inputs_and_parameters() -> None:
    model = kl.KAN([2, [1, 2], [0, 1]], dtype=torch.float64)
    x = data(n=6).requires_grad_(True)
    assert torch.autograd.gradcheck(model, (x,))
    params = {k: v.detach() for k, v in model.named_parameters()}
    names = ["layers.0.coef", "layers.1.scale_base"]

    def f(*ps: torch.Tensor) -> torch.Tensor:
        return functional_call(
            model, {**params, **dict(zip(names, ps, strict=True))}, (x.detach(),)
        )

    leaves = tuple(params[n].clone().requires_grad_(True) for n in names)
    assert torch.autograd.gradcheck(f, leaves)


def test_product_x_times_y_is_exact() -> None:
    model = xy_model()
    x = data(n=200, seed=3)
    out = model(x)[:, 0]
    assert torch.allclose(out, x[:, 0] * x[:, 1], rtol=0, atol=1e-15)
    assert (out - x[:, 0] * x[:, 1]).abs().max() <= 1e-15


def test_config_round_trip_builds_the_same_model() -> None:
    model = kl.KAN([2, [1, 2], [0, 1]], mult_arity=[[], [2, 3], [2]], seed=4)
    cfg = model.config
    assert cfg.widths == (2, (1, 2), (0, 1)) and cfg.mult_arity == ((), (2, 3), (2,))
    rebuilt = kl.KAN.from_config(cfg)
    assert rebuilt.config == cfg
    x = data(dtype=torch.float32)
    assert torch.equal(rebuilt(x), model(x))
    assert (
        kl.KAN.from_config(KANConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))).config == cfg
    )


def test_without_mult_nodes_the_model_is_the_plain_stack() -> None:
    a, b = kl.KAN([2, [3, 0], 1], seed=1), kl.KAN([2, 3, 1], seed=1)
    assert a.config == b.config and a.config.to_dict() == b.config.to_dict()
    assert "mult_arity" not in a.config.to_dict()
    x = data(dtype=torch.float32)
    h = x
    for layer in b.layers:
        h = layer(h)
    assert torch.equal(a(x), b(x)) and torch.equal(b(x), h)


def test_counts_of_mult_models() -> None:
    widths, arity = [3, [2, 2], [1, 1], 2], [[], [2, 3], [4], []]
    model, cfg = kl.KAN(widths, mult_arity=arity), KANConfig(widths=widths, mult_arity=arity)
    g, k = 5, 3
    expected = sum(i * o * (g + k) + 2 * i * o for i, o in [(3, 7), (4, 5), (2, 2)])
    assert kl.count_params(model) == kl.count_params(cfg) == expected
    # the same edge layers without products: the FLOPs differ by (arity - 1) per product
    edges_only = sum(
        kl.count_flops(kl.KAN([i, o], grid_size=g)) for i, o in [(3, 7), (4, 5), (2, 2)]
    )
    products = (2 - 1) + (3 - 1) + (4 - 1)
    assert kl.count_flops(model) == kl.count_flops(cfg) == edges_only + products
    assert kl.count_flops(model, batch=7) == 7 * (edges_only + products)
