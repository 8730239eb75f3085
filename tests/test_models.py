"""KAN and MLP stacks: seeding, grids over layers, counting, bad input."""

from __future__ import annotations

import itertools

import pytest
import torch

import kanlab as kl


def data(n=100, d=2, seed=0, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, d, generator=g, dtype=dtype) * 2 - 1


@pytest.mark.parametrize("cls", [kl.KAN, kl.MLP])
def test_same_seed_same_model_and_global_rng_untouched(cls) -> None:
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a, b, c = cls([3, 7, 2], seed=5), cls([3, 7, 2], seed=5), cls([3, 7, 2], seed=6)
    assert torch.equal(torch.rand(3), before)  # constructors did not consume the global RNG
    for (n1, p1), (n2, p2) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert n1 == n2 and torch.equal(p1, p2)
    differs = any(
        not torch.equal(p1, p2) for p1, p2 in zip(a.parameters(), c.parameters(), strict=True)
    )
    assert differs


def test_kan_forward_activations_and_layer_inputs() -> None:
    model = kl.KAN([2, 5, 3, 1], dtype=torch.float64)
    x = data()
    acts = model.activations(x)
    assert [a.shape for a in acts] == [(100, 5, 2), (100, 3, 5), (100, 1, 3)]
    h = x
    for layer, a in zip(model.layers, acts, strict=True):
        torch.testing.assert_close(a.sum(-1), layer(h))
        h = layer(h)
    torch.testing.assert_close(h, model(x))
    inputs = model.layer_inputs(x)
    assert torch.equal(inputs[0], x) and inputs[2].shape == (100, 3)


def test_kan_gradcheck_two_layers() -> None:
    model = kl.KAN([2, 3, 1], grid_size=4, dtype=torch.float64, seed=1)
    x = data(n=8).requires_grad_(True)
    assert torch.autograd.gradcheck(model, (x,), eps=1e-6, atol=1e-7)


def test_kan_update_grid_preserves_and_moves_every_layer() -> None:
    model = kl.KAN([2, 4, 1], grid_size=8, dtype=torch.float64, seed=2)
    x = data(n=600) * 0.5
    before = model(x)
    knots = [layer.knots.clone() for layer in model.layers]
    model.update_grid(x)
    for layer, old in zip(model.layers, knots, strict=True):
        assert not torch.allclose(layer.knots, old)
    rel = (model(x) - before).norm() / before.norm()
    assert rel < 1e-2  # a least-squares refit on a new (non-nested) grid: approximate


def test_kan_extend_grid_staircase_preserves_function() -> None:
    model = kl.KAN([2, 3, 1], grid_size=5, dtype=torch.float64, seed=3)
    x = data(n=500)
    model.update_grid(x, grid_eps=1.0)  # uniform grids that cover each layer's inputs
    before = model(x)
    for g in (10, 20):
        model.extend_grid(g)
        assert model.grid_size == g
        rel = (model(x) - before).norm() / before.norm()
        assert rel < 1e-8


def test_kan_state_dict_round_trip_after_extension() -> None:
    model = kl.KAN([2, 3, 1], seed=4, dtype=torch.float64)
    x = data()
    model.update_grid(x)
    model.extend_grid(11, x)
    fresh = kl.KAN([2, 3, 1], seed=99, dtype=torch.float64)
    fresh.load_state_dict(model.state_dict())
    assert fresh.grid_size == 11
    assert torch.equal(fresh(x), model(x))


def test_count_params_closed_form() -> None:
    kan = kl.KAN([3, 4, 2], grid_size=6, spline_order=2)
    # per layer: in*out*(G+k) coefficients + 2*in*out scales
    expected = 3 * 4 * (8 + 2) + 4 * 2 * (8 + 2)
    assert kl.count_params(kan) == expected
    mlp = kl.MLP([3, 10, 2])
    assert kl.count_params(mlp) == 3 * 10 + 10 + 10 * 2 + 2
    kan.layers[0].coef.requires_grad_(False)
    assert kl.count_params(kan) == expected - 3 * 4 * 8
    assert kl.count_params(kan, trainable_only=False) == expected


def test_count_flops_formulas() -> None:
    mlp = kl.MLP([4, 16, 3], activation="silu")
    assert kl.count_flops(mlp) == (2 * 4 * 16 + 16) + (2 * 16 * 3 + 3) + 16 * 4
    assert kl.count_flops(mlp, batch=10) == 10 * kl.count_flops(mlp)
    k = 3
    basis = 4 + sum(6 * (p + 1) for p in range(1, k + 1))
    small = kl.KAN([4, 3], grid_size=5, spline_order=k)
    assert kl.count_flops(small) == 4 * (basis + 4) + 4 * 3 * (2 * (k + 1) + 2)
    # the real (sparse) count does not depend on G; the dense-equivalent one grows with it
    big = kl.KAN([4, 3], grid_size=500, spline_order=k)
    assert kl.count_flops(big) == kl.count_flops(small)
    assert kl.count_flops(big, mode="dense") > 50 * kl.count_flops(small, mode="dense") / 10
    with pytest.raises(ValueError, match="unknown mode 'fast'"):
        kl.count_flops(small, mode="fast")


def test_mlp_forward_and_bad_input() -> None:
    mlp = kl.MLP([3, 8, 2], activation="tanh", dtype=torch.float64)
    x = data(n=5, d=3)
    w0, b0 = mlp.layers[0].weight, mlp.layers[0].bias
    w1, b1 = mlp.layers[1].weight, mlp.layers[1].bias
    torch.testing.assert_close(mlp(x), torch.tanh(x @ w0.T + b0) @ w1.T + b1)
    with pytest.raises(ValueError, match=r"shape \(\.\.\., 3\)"):
        mlp(torch.zeros(5, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="unknown activation 'sigmoidal'"):
        kl.MLP([3, 2], activation="sigmoidal")


@pytest.mark.parametrize("cls", [kl.KAN, kl.MLP])
@pytest.mark.parametrize(
    ("widths", "exc", "pattern"),
    [
        ([3], ValueError, r"at least two entries.*got \[3\]"),
        ([3, 0, 1], ValueError, r"widths\[1\] must be >= 1, got 0"),
        ([3, -2], ValueError, r"widths\[1\] must be >= 1, got -2"),
        ([3, 2.0], TypeError, r"widths\[1\] must be an int"),
        ("32", TypeError, "widths must be a sequence"),
    ],
)
def test_bad_widths(cls, widths, exc, pattern) -> None:
    with pytest.raises(exc, match=pattern):
        cls(widths)


def test_kan_update_grid_rejects_nan_without_touching_model() -> None:
    model = kl.KAN([2, 3, 1], dtype=torch.float64)
    x = data()
    x[5, 0] = float("nan")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="non-finite"):
        model.update_grid(x)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k])


def _kan_configs():
    widths = [(1, 1), (2, 5, 1), (4, 4, 2, 1), (13, 8, 3), (100, 1, 1), (3, 7, 7, 7, 2)]
    acts = ["silu", "identity", "zero", "gelu", "relu", "tanh"]
    out = []
    for i, w in enumerate(widths):
        for j, (g, k) in enumerate([(1, 0), (3, 3), (5, 1), (20, 2), (100, 3), (7, 5)]):
            out.append(kl.KANConfig(widths=w, grid_size=g, spline_order=k,
                                    base_activation=acts[(i + j) % len(acts)]))  # fmt: skip
    # per-layer grid sizes and base functions (a layer extended or changed on its own)
    out.append(kl.KANConfig(widths=(2, 3, 1), grid_size=(7, 5), base_activation=("tanh", "silu")))
    out.append(kl.KANConfig(widths=(3, 4, 4, 2), grid_size=(3, 10, 50), spline_order=2))
    return out


def _mlp_configs():
    widths = [(1, 1), (2, 32, 1), (4, 16, 16, 3), (13, 5, 9, 2, 1), (100, 1, 1)]
    acts = ["silu", "identity", "gelu", "relu", "tanh"]
    return [kl.MLPConfig(widths=w, activation=a) for w in widths for a in acts]


@pytest.mark.parametrize("cfg", _kan_configs() + _mlp_configs(), ids=str)
def test_counts_from_a_config_equal_the_built_models(cfg) -> None:
    model = kl.build(cfg)
    assert kl.count_params(cfg) == kl.count_params(model)
    for mode in ("sparse", "dense"):
        for batch in (0, 1, 7):
            got = kl.count_flops(cfg, batch=batch, mode=mode)
            assert got == kl.count_flops(model, batch=batch, mode=mode)


@pytest.mark.parametrize(("widths", "grid", "k"), [([2, 5, 1], 3, 3), ([4, 4, 2, 1], 20, 2)])
def test_kan_params_closed_form_from_a_config(widths, grid, k) -> None:
    # per edge G+k spline coefficients and two scales (the formula bench reports used to repeat)
    cfg = kl.KANConfig(widths=widths, grid_size=grid, spline_order=k)
    expected = sum(a * b * (grid + k + 2) for a, b in itertools.pairwise(widths))
    model = kl.KAN(widths, grid_size=grid, spline_order=k)
    assert kl.count_params(cfg) == expected == kl.count_params(model)


def test_grid_size_has_one_definition() -> None:
    # equal layer grids: that G; a layer extended on its own: the largest (what fit records too)
    model = kl.KAN([2, 3, 1], grid_size=5, dtype=torch.float64)
    assert model.grid_size == 5
    model.layers[1].extend_grid(8)
    assert model.grid_size == 8 and model.config.grid_size == (5, 8)
