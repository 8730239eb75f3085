"""The CPU kernels with a model dimension (kanlab.kernels.cpu_batched) against the batched reference.

Oracles: :func:`kanlab.kernels.batched_reference.batched_spline_product` (dense Cox-de Boor per
model, autograd for the gradients) and, bit for bit, the single-model CPU kernels on each model.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from kanlab.kernels.batched_reference import batched_spline_product
from kanlab.splines import knots_from_data, uniform_knots

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("numba") is None, reason="numba is not installed"),
    pytest.mark.usefixtures("one_thread"),
]

F64 = torch.float64


def _cb():
    from kanlab.kernels import cpu_batched

    return cpu_batched


def knots_for(n_models: int, n_in: int, grid: int, k: int, *, adapted: bool) -> torch.Tensor:
    """(M, in, G+2k+1): uniform on (-1, 1), or each model's grid adapted to its own data (different
    ranges and distributions per model and input)."""
    if not adapted:
        return uniform_knots(n_in, grid, k, dtype=F64).expand(n_models, -1, -1).contiguous()
    rows = []
    for m in range(n_models):
        g = torch.Generator().manual_seed(50 + m)
        data = (torch.rand(300, n_in, generator=g, dtype=F64) * (1.0 + m) - 0.4 * m) ** (m % 3 + 1)
        rows.append(knots_from_data(data, grid, k, grid_eps=0.1))
    return torch.stack(rows)


def case(n_models=3, batch=70, n_in=3, n_out=4, grid=5, k=3, *, adapted=False, seed=0):
    """x (some of it outside every model's grid), knots, weight, scale; leaves that need grad."""
    g = torch.Generator().manual_seed(seed)
    knots = knots_for(n_models, n_in, grid, k, adapted=adapted)
    lo, hi = knots[:, None, :, 0], knots[:, None, :, -1]  # each model's knot span per input
    u = torch.rand(n_models, batch, n_in, generator=g, dtype=F64) * 1.4 - 0.2  # ~30% outside
    x = lo + (hi - lo) * u
    weight = torch.randn(n_models, n_in, grid + k, n_out, generator=g, dtype=F64)
    scale = torch.rand(n_models, n_in, n_out, generator=g, dtype=F64) + 0.5
    return x.requires_grad_(), knots, weight.requires_grad_(), scale.requires_grad_()


def reference(x, knots, weight, scale, k):
    folded = weight if scale is None else weight * scale.unsqueeze(2)
    return batched_spline_product(x, knots, folded, k)


GRIDS = [  # (grid, k, n_out): small tables, and one larger than the level-1 budget (fused backward)
    pytest.param(5, 3, 4, id="G5-cubic"),
    pytest.param(7, 2, 3, id="G7-quadratic"),
    pytest.param(100, 3, 11, id="G100-large-table"),
]


@pytest.mark.parametrize("adapted", [False, True], ids=["uniform", "adapted"])
@pytest.mark.parametrize(("grid", "k", "n_out"), GRIDS)
@pytest.mark.parametrize("with_scale", [True, False], ids=["scale", "no-scale"])
def test_forward_and_gradients_equal_the_batched_reference(adapted, grid, k, n_out, with_scale):
    x, knots, weight, scale = case(grid=grid, k=k, n_out=n_out, adapted=adapted)
    if not with_scale:
        scale = None
    # inputs partly outside the grids: the case is not trivial
    outside = (x < knots[:, None, :, 0]) | (x >= knots[:, None, :, -1])
    assert 0 < outside.sum() < x.numel()
    y = _cb().batched_spline(x, knots, weight, k, not adapted, scale=scale)
    expected = reference(x, knots, weight, scale, k)
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-12)
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(9), dtype=F64)
    leaves = (x, weight) if scale is None else (x, weight, scale)
    got = torch.autograd.grad(y, leaves, gy)
    want = torch.autograd.grad(expected, leaves, gy)
    for name, a, b in zip(("x", "weight", "scale"), got, want, strict=False):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10, msg=name)


def test_mixed_grid_kinds_per_model_and_bitwise_equal_to_the_single_model_kernels():
    """Model m's rows are exactly the single-model CPU kernels' output on model m's arrays, with a
    uniform flag per model (models 0, 2 uniform, model 1 adapted)."""
    from kanlab.kernels.cpu import api

    x, knots, weight, scale = case(adapted=False, seed=3)
    knots = knots.clone()
    knots[1] = knots_for(3, 3, 5, 3, adapted=True)[1]
    flags = torch.tensor([True, False, True])
    y = _cb().batched_spline(x, knots, weight, 3, flags, scale=scale)
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(4), dtype=F64)
    gx, gw, gs = torch.autograd.grad(y, (x, weight, scale), gy)
    for m in range(3):
        args = (knots[m], weight[m].detach(), 3, bool(flags[m]))
        assert torch.equal(y[m], api.forward(x[m].detach(), *args, scale[m].detach())), m
        sx, sw, ss = api.backward(
            gy[m], x[m].detach(), knots[m], weight[m].detach(), scale[m].detach(), 3,
            bool(flags[m]), True, True,
        )  # fmt: skip
        assert torch.equal(gx[m], sx) and torch.equal(gw[m], sw) and torch.equal(gs[m], ss), m
    torch.testing.assert_close(y, reference(x, knots, weight, scale, 3), rtol=0, atol=1e-12)


def test_gradients_asked_one_at_a_time_match():
    x, knots, weight, scale = case(adapted=True, seed=5)
    y = _cb().batched_spline(x, knots, weight, 3, False, scale=scale)
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(6), dtype=F64)
    expected = reference(x, knots, weight, scale, 3)
    for leaf in (x, weight, scale):
        (got,) = torch.autograd.grad(y, (leaf,), gy, retain_graph=True)
        (want,) = torch.autograd.grad(expected, (leaf,), gy, retain_graph=True)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


def test_gradcheck_float64_tiny():
    x, knots, weight, scale = case(n_models=2, batch=6, n_in=2, n_out=2, adapted=True, seed=7)
    cb = _cb()

    def f(x, weight, scale):
        return cb.batched_spline(x, knots, weight, 3, False, scale=scale)

    assert torch.autograd.gradcheck(f, (x, weight, scale), eps=1e-6, atol=1e-7)


def test_several_threads_take_the_per_model_path_with_the_same_results():
    x, knots, weight, scale = case(adapted=True, seed=8, batch=40)
    cb = _cb()
    y1 = cb.batched_spline(x, knots, weight, 3, False, scale=scale)
    g1 = torch.autograd.grad(y1.sum(), (x, weight, scale))
    torch.set_num_threads(2)
    try:
        y2 = cb.batched_spline(x, knots, weight, 3, False, scale=scale)
        g2 = torch.autograd.grad(y2.sum(), (x, weight, scale))
    finally:
        torch.set_num_threads(1)  # the module's later tests run on one thread, as alone
    torch.testing.assert_close(y2, y1, rtol=0, atol=1e-13)
    for a, b in zip(g2, g1, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_float32_and_empty_batch():
    x, knots, weight, scale = case(seed=10)
    x32, k32, w32, s32 = (t.detach().float() for t in (x, knots, weight, scale))
    y = _cb().forward(x32, k32, w32, 3, True, s32)
    assert y.dtype == torch.float32
    expected = reference(x32, k32, w32, s32, 3)
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-5)
    empty = x[:, :0].detach().requires_grad_()
    y0 = _cb().batched_spline(empty, knots, weight, 3, True, scale=scale)
    assert y0.shape == (3, 0, 4)
    gx, gw, gs = torch.autograd.grad(y0.sum(), (empty, weight, scale))
    assert gx.shape == empty.shape and not gw.any() and not gs.any()


def test_bad_input_is_refused_with_a_message():
    x, knots, weight, scale = case()
    cb = _cb()
    with pytest.raises(ValueError, match="must agree in M and in"):
        cb.forward(x[:2].detach(), knots, weight.detach(), 3, True)
    with pytest.raises(ValueError, match=r"scale must be \(M, in, out\)"):
        cb.forward(x.detach(), knots, weight.detach(), 3, True, scale[:, :, :2].detach())
    with pytest.raises(ValueError, match="uniform must be a bool or 3 flags"):
        cb.forward(x.detach(), knots, weight.detach(), 3, [True, False])
    with pytest.raises(ValueError, match="dtype"):
        cb.forward(x.detach(), knots.float(), weight.detach(), 3, True)


def test_kan_batch_runs_the_batched_kernels_and_agrees_with_the_reference(monkeypatch):
    import kanlab as kl
    from kanlab.kernels import set_backend
    from kanlab.model_batch import KANBatch

    cb = _cb()
    # grid 30: more basis functions than the fused layer kernel takes (cpu_batched_layer), so the
    # batch runs these kernels (its small grids: tests/test_kernels_batched_layer.py)
    cfg = kl.KANConfig(widths=[2, 3, 1], grid_size=30, dtype="float64")
    models = [kl.build(cfg.replace(seed=s)) for s in (0, 1)]
    models[1].update_grid(torch.rand(100, 2, dtype=F64) * 0.8 - 0.1)
    batch = KANBatch.stack(models)
    x = torch.rand(50, 2, generator=torch.Generator().manual_seed(2), dtype=F64) * 2.4 - 1.2
    calls = []
    real = cb.batched_spline
    monkeypatch.setattr(cb, "batched_spline", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    y = batch(x)
    assert len(calls) == 2  # one per layer, for both models
    try:
        set_backend("reference")
        y_ref = batch(x)
    finally:
        set_backend(None)
    assert len(calls) == 2  # the forced reference backend is honoured
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-12)
    for m, model in enumerate(models):
        torch.testing.assert_close(y[m], model(x), rtol=0, atol=1e-13)
