"""The fused training step of a model batch (kanlab.kernels.cpu_batched_loss): the MSE of M KANs and
every parameter gradient in one call.

Oracle: a stack of layers written in plain torch on the batched reference spline product (dense
Cox-de Boor per model), differentiated by autograd; finite differences (gradcheck, float64).
"""

from __future__ import annotations

import importlib.util
import itertools

import pytest
import torch

from kanlab.kernels.batched_reference import batched_spline_product
from kanlab.layers import ACTIVATIONS
from kanlab.splines import knots_from_data, uniform_knots

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("numba") is None, reason="numba is not installed"
)

F64 = torch.float64


def _loss_module():
    from kanlab.kernels import cpu_batched_loss

    return cpu_batched_loss


def stack(widths, kinds, *, grid=5, k=3, seed=0, dtype=F64, mask_zeros=True):
    """Per layer: knots (M, in, G+2k+1) (kinds[m] "u": uniform on (-1, 1), "a": adapted to model
    m's own data), coef, scale_spline, scale_base (leaves requiring grad), mask (with zeros when
    ``mask_zeros``), uniform flags."""
    g = torch.Generator().manual_seed(seed)
    n_models = len(kinds)
    layers = []
    for n_in, n_out in itertools.pairwise(widths):
        rows = []
        for m, kind in enumerate(kinds):
            if kind == "u":
                rows.append(uniform_knots(n_in, grid, k, dtype=F64))
            else:
                data = (torch.rand(200, n_in, generator=g, dtype=F64) * 2.0 - 1.0) ** (m % 3 + 1)
                rows.append(knots_from_data(data * (1.0 + 0.5 * m), grid, k, grid_eps=0.1))
        coef = torch.randn(n_models, n_in, grid + k, n_out, generator=g, dtype=F64) * 0.5
        ss = torch.rand(n_models, n_in, n_out, generator=g, dtype=F64) + 0.5
        sb = torch.randn(n_models, n_in, n_out, generator=g, dtype=F64) * 0.5
        mask = torch.ones(n_models, n_in, n_out, dtype=F64)
        if mask_zeros:
            mask = (torch.rand(n_models, n_in, n_out, generator=g, dtype=F64) > 0.25).to(F64)
        layers.append({
            "knots": torch.stack(rows).to(dtype),
            "coef": coef.to(dtype).requires_grad_(),
            "scale_spline": ss.to(dtype).requires_grad_(),
            "scale_base": sb.to(dtype).requires_grad_(),
            "mask": mask.to(dtype),
            "uniform": torch.tensor([kind == "u" for kind in kinds]),
        })  # fmt: skip
    return layers


def data(widths, n_models, *, rows=300, shared_x=True, shared_y=True, seed=1, dtype=F64):
    """x about 20% outside (-1, 1) (outside some grids), y random."""
    g = torch.Generator().manual_seed(seed)
    lead = () if shared_x else (n_models,)
    x = torch.rand(*lead, rows, widths[0], generator=g, dtype=F64) * 2.4 - 1.2
    lead = () if shared_y else (n_models,)
    y = torch.randn(*lead, rows, widths[-1], generator=g, dtype=F64)
    return x.to(dtype), y.to(dtype)


def reference_mse(x, y, layers, k, act):
    """(M,) MSEs of the stack in plain torch (autograd through every op)."""
    n_models = layers[0]["coef"].shape[0]
    h = x if x.dim() == 3 else x.unsqueeze(0).expand(n_models, *x.shape)
    for la in layers:
        weight = la["coef"] * (la["scale_spline"] * la["mask"]).unsqueeze(2)
        out = batched_spline_product(h, la["knots"], weight, k)
        if act != "zero":
            out = out + torch.bmm(ACTIVATIONS[act](h), la["scale_base"] * la["mask"])
        h = out
    return (h - y).pow(2).sum(dim=(1, 2)) / y.shape[-1] / y.shape[-2]


def fused(x, y, layers, k, act, weight=None):
    names = ("knots", "coef", "scale_spline", "scale_base", "mask", "uniform")
    lists = {name: [la[name] for la in layers] for name in names}
    return _loss_module().mse_and_grads(
        x, y, **lists, spline_order=k, base_activation=act, weight=weight
    )


PARAMS = ("coef", "scale_spline", "scale_base")


def assert_matches_reference(x, y, layers, k, act, *, weight=None, rel=1e-12):
    """Loss and every gradient against the reference, relative to each tensor's largest entry."""
    loss, grads = fused(x, y, layers, k, act, weight)
    want = reference_mse(x, y, layers, k, act)
    w = torch.ones_like(want) if weight is None else weight
    leaves = [la[p] for la in layers for p in PARAMS]
    want_grads = torch.autograd.grad((want * w).sum(), leaves, allow_unused=True)
    torch.testing.assert_close(loss, want.detach(), rtol=rel, atol=0.0)
    got_grads = [g for layer in grads for g in layer]
    for i, (a, b) in enumerate(zip(got_grads, want_grads, strict=True)):
        b = torch.zeros_like(a) if b is None else b
        scale = float(b.abs().max()) or 1.0
        torch.testing.assert_close(a, b, rtol=0.0, atol=rel * scale, msg=f"gradient {i}")
        assert a.shape == leaves[i].shape


@pytest.mark.parametrize("kinds", ["uuu", "aaa", "uau"])
@pytest.mark.parametrize(
    "shared", [(True, True), (False, False), (True, False)], ids=["shared", "per-model", "x-shared"]
)
def test_loss_and_gradients_equal_the_reference(kinds, shared):
    widths = [2, 5, 1]
    layers = stack(widths, kinds, seed=3)
    x, y = data(widths, len(kinds), shared_x=shared[0], shared_y=shared[1])
    weight = torch.tensor([0.5, 2.0, 1e3], dtype=F64)  # fit_batch's per-model LBFGS loss scales
    assert_matches_reference(x, y, layers, 3, "silu", weight=weight)


@pytest.mark.parametrize("k", [1, 2, 0])
def test_other_spline_orders_and_a_deeper_stack(k):
    widths = [3, 4, 2, 2]
    layers = stack(widths, "uaa", k=k, grid=4, seed=k)
    x, y = data(widths, 3, rows=200, shared_x=False, shared_y=True)
    assert_matches_reference(x, y, layers, k, "silu")


@pytest.mark.parametrize(("k", "grid"), [(0, 2), (1, 2), (2, 2), (3, 2)])
def test_fewer_than_four_basis_functions_and_odd_widths(k, grid):
    """G+k < 4 (no pass of four rows; 5 with k = 3) and layers with an odd number of outputs
    (outputs are taken in pairs, the last alone)."""
    widths = [3, 5, 2, 1]
    layers = stack(widths, "uau", k=k, grid=grid, seed=20 + k)
    x, y = data(widths, 3, rows=200, shared_x=False, shared_y=True)
    assert_matches_reference(x, y, layers, k, "silu")


@pytest.mark.parametrize("grid", [3, 4, 5, 6, 10])
def test_hidden_cubic_inputs_with_one_output_equal_the_reference(grid):
    """The fused path of a hidden layer with one output on a uniform cubic grid (basis, output and
    slope in one pass, rows of four basis functions: G+k not a multiple of 4 pads the last) in a
    deeper stack: its input gradient feeds the layers before, the layer after is a general one;
    adapted models beside uniform ones (the general path in the same call), masked edges, per-model
    data partly outside the grids, hidden values beyond the knot span."""
    widths = [2, 3, 1, 2, 1]
    layers = stack(widths, "uauu", grid=grid, seed=11 + grid)
    with torch.no_grad():
        layers[0]["coef"][3] *= 6.0  # model 3's hidden values run past its knots (|x| > 1 + 3h)
    x, y = data(widths, 4, rows=270, shared_x=False, shared_y=False)
    weight = torch.tensor([1.0, 2.0, 0.5, 3.0], dtype=F64)
    assert_matches_reference(x, y, layers, 3, "silu", weight=weight)


@pytest.mark.parametrize("act", ["identity", "zero", "relu"])
def test_other_base_activations(act):
    widths = [2, 3, 2]
    layers = stack(widths, "ua", seed=7)
    x, y = data(widths, 2, rows=260)
    assert_matches_reference(x, y, layers, 3, act)


def test_blocks_and_a_single_model():
    """Rows that are not a multiple of the block (a last partial block), one row, M = 1."""
    widths = [2, 5, 1]
    for rows in (1, 129, 257):
        layers = stack(widths, "a", seed=rows)
        x, y = data(widths, 1, rows=rows)
        assert_matches_reference(x, y, layers, 3, "silu")


def test_float32_within_float32_rounding():
    widths = [2, 5, 1]
    layers64 = stack(widths, "uau", seed=4)
    layers32 = stack(widths, "uau", seed=4, dtype=torch.float32)
    x, y = data(widths, 3)
    loss, grads = fused(x.float(), y.float(), layers32, 3, "silu")
    assert loss.dtype == torch.float32 and grads[0].coef.dtype == torch.float32
    want, want_grads = fused(x, y, layers64, 3, "silu")  # (float64: the reference above)
    torch.testing.assert_close(loss, want.float(), rtol=1e-5, atol=0.0)
    for a_layer, b_layer in zip(grads, want_grads, strict=True):
        for a, b in zip(a_layer, b_layer, strict=True):
            torch.testing.assert_close(a, b.float(), rtol=0.0, atol=1e-5 * float(b.abs().max()))


def test_masked_edges_get_zero_gradients():
    widths = [2, 5, 1]
    layers = stack(widths, "ua", seed=5, mask_zeros=False)
    layers[0]["mask"][1, 0, 2] = 0.0
    layers[1]["mask"][0, 3, 0] = 0.0
    x, y = data(widths, 2)
    _, grads = fused(x, y, layers, 3, "silu")
    for g in grads[0]:
        assert torch.all(g[1, 0, ..., 2] == 0.0) and g[1, 0].abs().sum() > 0
    for g in grads[1]:
        assert torch.all(g[0, 3, ..., 0] == 0.0) and g[0, 2].abs().sum() > 0


def test_models_are_independent():
    """Model m of a batch equals model m run alone (M = 1), and a NaN in one model's parameters
    leaves the others' loss and gradients unchanged (its own loss is NaN)."""
    widths = [2, 3, 1]
    layers = stack(widths, "uau", seed=6)
    x, y = data(widths, 3)
    loss, grads = fused(x, y, layers, 3, "silu")
    for m in range(3):
        one = [{name: t[m : m + 1] for name, t in la.items()} for la in layers]
        loss_m, grads_m = fused(x, y, one, 3, "silu")
        torch.testing.assert_close(loss_m[0], loss[m], rtol=1e-14, atol=0.0)
        for a_layer, b_layer in zip(grads_m, grads, strict=True):
            for a, b in zip(a_layer, b_layer, strict=True):
                torch.testing.assert_close(a[0], b[m], rtol=1e-13, atol=1e-15)
    for bad, kind in ((1, "adapted"), (2, "uniform")):  # a NaN hidden value on either grid
        broken = [{name: t.detach().clone() for name, t in la.items()} for la in layers]
        broken[0]["coef"][bad, 0, 2, 1] = float("nan")
        loss_nan, grads_nan = fused(x, y, broken, 3, "silu")
        good = [m for m in range(3) if m != bad]
        assert torch.isnan(loss_nan[bad]) and torch.equal(loss_nan[good], loss[good]), kind
        for a_layer, b_layer in zip(grads_nan, grads, strict=True):
            for a, b in zip(a_layer, b_layer, strict=True):
                assert torch.equal(a[good], b[good]), kind


def test_gradcheck_float64():
    """The fused gradients of sum_m weight[m] * mse[m] against finite differences."""
    widths = [2, 2, 1]
    layers = stack(widths, "ua", grid=3, seed=9)
    x, y = data(widths, 2, rows=11, shared_x=False, shared_y=False)
    weight = torch.tensor([1.0, 3.0], dtype=F64)

    class Step(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *params):
            trial = [dict(la) for la in layers]
            for i, la in enumerate(trial):
                la.update(zip(PARAMS, params[3 * i : 3 * i + 3], strict=True))
            loss, grads = fused(x, y, trial, 3, "silu", weight)
            ctx.grads = [g for layer in grads for g in layer]
            return (loss * weight).sum()

        @staticmethod
        def backward(ctx, g):
            return tuple(g * t for t in ctx.grads)

    leaves = [la[p].detach().clone().requires_grad_() for la in layers for p in PARAMS]
    assert torch.autograd.gradcheck(Step.apply, leaves, eps=1e-6, atol=1e-7)


def test_bad_input_is_refused_with_a_one_line_error():
    widths = [2, 3, 1]
    layers = stack(widths, "uu")
    x, y = data(widths, 2)
    with pytest.raises(
        ValueError, match=r"x must be \(batch, 2\) or \(2, batch, 2\), got \(300, 3\)"
    ):
        fused(torch.zeros(300, 3, dtype=F64), y, layers, 3, "silu")
    with pytest.raises(ValueError, match="x has 300 rows but y has 5"):
        fused(x, y[:5], layers, 3, "silu")
    with pytest.raises(ValueError, match=r"got lengths \[2, 2, 2, 2, 2, 1\]"):
        names = ("knots", "coef", "scale_spline", "scale_base", "mask")
        _loss_module().mse_and_grads(
            x, y, **{n: [la[n] for la in layers] for n in names}, uniform=[layers[0]["uniform"]],
            spline_order=3, base_activation="silu",
        )  # fmt: skip
    with pytest.raises(ValueError, match=r"coef\[1\] must be \(2, 3, 8, 1\)"):
        bad = [layers[0], {**layers[1], "coef": layers[1]["coef"][:, :2]}]
        fused(x, y, bad, 3, "silu")
    with pytest.raises(ValueError, match="G\\+k <= 24 basis functions .* got 33 and 'silu'"):
        fused(x, y, stack(widths, "uu", grid=30), 3, "silu")
    with pytest.raises(ValueError, match="one dtype"):
        fused(x.float(), y.float(), layers, 3, "silu")
