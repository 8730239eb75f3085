"""The fused layer kernel of a model batch (kanlab.kernels.cpu_batched_layer).

Oracle: the batched reference spline product (dense Cox-de Boor per model, autograd) plus the
base branch in plain torch, and (through KANBatch) each model alone.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from kanlab.kernels.batched_reference import batched_spline_product
from kanlab.layers import ACTIVATIONS
from kanlab.splines import knots_from_data, uniform_knots

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("numba") is None, reason="numba is not installed"
)

F64 = torch.float64


@pytest.fixture(autouse=True)
def single_thread():
    """The fused kernel is the one-thread path: set it per test (another module's test may have
    left more threads), restore afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _fl():
    from kanlab.kernels import cpu_batched_layer

    return cpu_batched_layer


def knots_for(n_models, n_in, grid, k, kinds):
    """(M, in, G+2k+1): kinds[m] is "u" (uniform on (-1, 1)) or "a" (adapted to model m's data)."""
    rows = []
    for m, kind in enumerate(kinds[:n_models]):
        if kind == "u":
            rows.append(uniform_knots(n_in, grid, k, dtype=F64))
            continue
        g = torch.Generator().manual_seed(70 + m)
        data = (torch.rand(300, n_in, generator=g, dtype=F64) * (1.0 + m) - 0.4 * m) ** (m % 3 + 1)
        rows.append(knots_from_data(data, grid, k, grid_eps=0.1))
    return torch.stack(rows)


def case(kinds="uau", *, batch=150, n_in=3, n_out=4, grid=5, k=3, shared=False, seed=0):
    """x (about 30% outside the grids), knots, coef, scales, a mask with zeros, uniform flags."""
    n_models = len(kinds)
    g = torch.Generator().manual_seed(seed)
    knots = knots_for(n_models, n_in, grid, k, kinds)
    if shared:
        x = torch.rand(batch, n_in, generator=g, dtype=F64) * 3.0 - 1.5
    else:
        lo, hi = knots[:, None, :, 0], knots[:, None, :, -1]
        x = lo + (hi - lo) * (torch.rand(n_models, batch, n_in, generator=g, dtype=F64) * 1.4 - 0.2)
    coef = torch.randn(n_models, n_in, grid + k, n_out, generator=g, dtype=F64)
    ss = torch.rand(n_models, n_in, n_out, generator=g, dtype=F64) + 0.5
    sb = torch.randn(n_models, n_in, n_out, generator=g, dtype=F64)
    mask = (torch.rand(n_models, n_in, n_out, generator=g, dtype=F64) > 0.2).to(F64)
    uniform = torch.tensor([kind == "u" for kind in kinds])
    leaves = [t.requires_grad_() for t in (x, coef, ss, sb)]
    return (*leaves, knots, mask, uniform)


def reference(x, coef, ss, sb, knots, mask, k, act):
    xb = x if x.dim() == 3 else x.unsqueeze(0).expand(coef.shape[0], *x.shape)
    y = batched_spline_product(xb, knots, coef * (ss * mask).unsqueeze(2), k)
    if act != "zero":
        y = y + torch.bmm(ACTIVATIONS[act](xb), sb * mask)
    return y


def run(x, coef, ss, sb, knots, mask, uniform, k, act):
    return _fl().kan_layer(
        x, knots, coef, ss, sb, mask, uniform, spline_order=k, base_activation=act
    )


@pytest.mark.parametrize("kinds", ["uuu", "aaa", "uau"])
@pytest.mark.parametrize("shared", [False, True], ids=["per-model-x", "shared-x"])
@pytest.mark.parametrize("k", [3, 2, 1, 0])
def test_forward_and_gradients_equal_the_reference(kinds, shared, k):
    x, coef, ss, sb, knots, mask, uniform = case(kinds, k=k, shared=shared, grid=6)
    y = run(x, coef, ss, sb, knots, mask, uniform, k, "silu")
    expected = reference(x, coef, ss, sb, knots, mask, k, "silu")
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-12)
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(5), dtype=F64)
    got = torch.autograd.grad(y, (x, coef, ss, sb), gy)
    want = torch.autograd.grad(expected, (x, coef, ss, sb), gy)
    for name, a, b in zip(("x", "coef", "scale_spline", "scale_base"), got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10, msg=name)


def test_one_model_with_its_own_x():
    """M = 1 and x (1, batch, in): the kernel takes it as one shared row (its input gradient is
    accumulated, so it must start at zero)."""
    x, coef, ss, sb, knots, mask, uniform = case("a", seed=11)
    for _ in range(3):  # fresh allocations each time: garbage would show
        y = run(x, coef, ss, sb, knots, mask, uniform, 3, "silu")
        expected = reference(x, coef, ss, sb, knots, mask, 3, "silu")
        (got,) = torch.autograd.grad(y.square().sum(), (x,))
        (want,) = torch.autograd.grad(expected.square().sum(), (x,))
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


@pytest.mark.parametrize("act", ["identity", "zero", "relu"])
def test_other_base_activations(act):
    x, coef, ss, sb, knots, mask, uniform = case("ua", seed=3)
    y = run(x, coef, ss, sb, knots, mask, uniform, 3, act)
    expected = reference(x, coef, ss, sb, knots, mask, 3, act)
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-12)
    got = torch.autograd.grad(y.sum(), (x, coef, ss, sb), allow_unused=True)
    want = torch.autograd.grad(expected.sum(), (x, coef, ss, sb), allow_unused=True)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, torch.zeros_like(a) if b is None else b, rtol=0, atol=1e-10)


@pytest.mark.parametrize("shared", [False, True], ids=["per-model-x", "shared-x"])
def test_gradcheck_float64(shared):
    x, coef, ss, sb, knots, mask, uniform = case("ua", batch=7, n_in=2, n_out=2, shared=shared)

    def f(x, coef, ss, sb):
        return run(x, coef, ss, sb, knots, mask, uniform, 3, "silu")

    assert torch.autograd.gradcheck(f, (x, coef, ss, sb), eps=1e-6, atol=1e-7)


def test_models_on_one_grid_share_the_basis_and_match_models_on_their_own():
    """A shared x and equal knots for models 0-1 and 3-4 (the basis is reused), model 2 adapted:
    every model's rows and gradients equal that model run alone."""
    x, coef, ss, sb, knots, mask, uniform = case("uuauu", shared=True, seed=8)
    y = run(x, coef, ss, sb, knots, mask, uniform, 3, "silu")
    gc, gs = torch.autograd.grad(y.square().sum(), (coef, ss))
    for m in range(5):
        sl = slice(m, m + 1)
        c1 = coef[sl].detach().requires_grad_()
        s1 = ss[sl].detach().requires_grad_()
        y1 = run(x, c1, s1, sb[sl], knots[sl], mask[sl], uniform[sl], 3, "silu")
        torch.testing.assert_close(y[m], y1[0], rtol=0, atol=1e-14)
        g1c, g1s = torch.autograd.grad(y1.square().sum(), (c1, s1))
        torch.testing.assert_close(gc[m], g1c[0], rtol=0, atol=1e-11)
        torch.testing.assert_close(gs[m], g1s[0], rtol=0, atol=1e-11)


def test_nan_inputs_give_nan_rows_and_large_inputs_stay_finite():
    x, coef, ss, sb, knots, mask, uniform = case("ua", shared=False, seed=4)
    x = x.detach().clone()
    x[0, 3, 1] = float("nan")
    x[1, 5, 0] = float("nan")
    x[0, 7, 0] = 800.0  # silu's exp is clamped: silu(800) = 800
    x[1, 9, 2] = -800.0  # silu(-800) = -0
    y = run(x, coef.detach(), ss.detach(), sb.detach(), knots, mask, uniform, 3, "silu")
    nan_rows = torch.isnan(y).any(dim=2)
    assert nan_rows[0, 3] and nan_rows[1, 5] and int(nan_rows.sum()) == 2
    expected = reference(x, coef.detach(), ss.detach(), sb.detach(), knots, mask, 3, "silu")
    ok = ~nan_rows
    torch.testing.assert_close(y[ok], expected[ok], rtol=0, atol=1e-10)


def test_float32_matches_the_reference():
    x, coef, ss, sb, knots, mask, uniform = case("ua", seed=6)
    args32 = [t.detach().float() for t in (x, coef, ss, sb, knots, mask)]
    y = run(*args32[:4], args32[4], args32[5], uniform, 3, "silu")
    assert y.dtype == torch.float32
    expected = reference(*[t.double() for t in args32], 3, "silu")
    torch.testing.assert_close(y.double(), expected, rtol=0, atol=1e-5)


def test_in_place_change_before_backward_is_refused():
    """The backward reuses the forward's numpy views of its inputs; autograd's saved-tensor
    version check must still refuse a backward after an input changed in place."""
    x, coef, ss, sb, knots, mask, uniform = case("ua", seed=9)
    y = run(x, coef, ss, sb, knots, mask, uniform, 3, "silu")
    with torch.no_grad():
        coef.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


def test_gradients_of_some_inputs_only():
    """Only coef and scale_base require grad (x and scale_spline do not): those two equal the
    reference, the others get none."""
    x, coef, ss, sb, knots, mask, uniform = case("au", seed=10)
    x, ss = x.detach(), ss.detach()
    y = run(x, coef, ss, sb, knots, mask, uniform, 3, "silu")
    expected = reference(x, coef, ss, sb, knots, mask, 3, "silu")
    y.square().sum().backward()
    got = (coef.grad.clone(), sb.grad.clone())
    coef.grad = sb.grad = None
    expected.square().sum().backward()
    torch.testing.assert_close(got[0], coef.grad, rtol=0, atol=1e-10)
    torch.testing.assert_close(got[1], sb.grad, rtol=0, atol=1e-10)
    assert x.grad is None and ss.grad is None


def test_empty_batch():
    x, coef, ss, sb, knots, mask, uniform = case("ua")
    empty = x[:, :0].detach().requires_grad_()
    y = run(empty, coef, ss, sb, knots, mask, uniform, 3, "silu")
    assert y.shape == (2, 0, 4)
    gx, gc, gs, gb = torch.autograd.grad(y.sum(), (empty, coef, ss, sb))
    assert gx.shape == empty.shape and not gc.any() and not gs.any() and not gb.any()


def test_bad_input_is_refused_with_a_message():
    x, coef, ss, sb, knots, mask, uniform = case("ua")
    with pytest.raises(ValueError, match=r"x must be \(batch, 3\) or \(2, batch, 3\)"):
        run(x[:1], coef, ss, sb, knots, mask, uniform, 3, "silu")
    with pytest.raises(ValueError, match="knots must be"):
        run(x, coef, ss, sb, knots[:, :, 1:], mask, uniform, 3, "silu")
    with pytest.raises(ValueError, match="mask must be"):
        run(x, coef, ss, sb, knots, mask[:, :2], uniform, 3, "silu")
    with pytest.raises(ValueError, match="base activations"):
        run(x, coef, ss, sb, knots, mask, uniform, 3, "gelu")


def test_kan_batch_runs_the_fused_kernel_on_small_grids_only(monkeypatch):
    """One fused call per layer for G+k <= MAX_DENSE_BASIS; larger grids take the per-model
    sparse kernels (cpu_batched); both equal each model alone."""
    import kanlab as kl
    from kanlab.kernels import cpu_batched
    from kanlab.model_batch import KANBatch

    fl = _fl()
    calls = {"fused": 0, "sparse": 0}
    real_fused, real_sparse = fl.kan_layer, cpu_batched.batched_spline

    def fused(*a, **kw):
        calls["fused"] += 1
        return real_fused(*a, **kw)

    def sparse(*a, **kw):
        calls["sparse"] += 1
        return real_sparse(*a, **kw)

    monkeypatch.setattr(fl, "kan_layer", fused)
    monkeypatch.setattr(cpu_batched, "batched_spline", sparse)
    x = torch.rand(60, 2, generator=torch.Generator().manual_seed(1), dtype=F64) * 2.4 - 1.2
    for grid, expected in ((5, {"fused": 2, "sparse": 0}), (30, {"fused": 0, "sparse": 2})):
        calls.update(fused=0, sparse=0)
        cfg = kl.KANConfig(widths=[2, 3, 1], grid_size=grid, dtype="float64")
        models = [kl.build(cfg.replace(seed=s)) for s in (0, 1, 2)]
        models[1].update_grid(torch.rand(100, 2, dtype=F64) * 0.8 - 0.1)
        batch = KANBatch.stack(models)
        y = batch(x)
        assert calls == expected, grid
        y.square().sum().backward()
        for m, model in enumerate(models):
            torch.testing.assert_close(y[m], model(x), rtol=0, atol=1e-13)
            model(x).square().sum().backward()
            for (name, p), q in zip(model.named_parameters(), batch.parameters(), strict=True):
                torch.testing.assert_close(q.grad[m], p.grad, rtol=0, atol=1e-11, msg=name)
