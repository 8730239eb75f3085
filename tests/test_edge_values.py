"""kanlab.kernels.edge_values on the compiled kernels (one block-diagonal spline_product) against
the reference maths: values and gradients (coefficients and x), uniform and adapted grids."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from kanlab import kernels
from kanlab.kernels import reference
from kanlab.splines import knots_from_data, uniform_knots

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("numba") is None, reason="numba is not installed"
)
F64 = torch.float64


def _problem(adapted: bool, n_in: int = 3, n_out: int = 4, grid: int = 5, k: int = 3):
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(57, n_in, generator=g, dtype=F64) * 2 - 1).requires_grad_()
    if adapted:
        knots = knots_from_data(x.detach() ** 3, grid, k, grid_eps=0.02)
    else:
        knots = uniform_knots(n_in, grid, k, dtype=F64)
    w = torch.randn(n_in, grid + k, n_out, generator=g, dtype=F64).requires_grad_()
    return x, knots, w, k, not adapted


@pytest.mark.parametrize("adapted", [False, True], ids=["uniform", "adapted"])
def test_compiled_edge_values_equal_the_reference_with_gradients(adapted):
    x, knots, w, k, uniform = _problem(adapted)
    assert kernels.choose(x, knots, w).name == "numba"  # the compiled path runs here
    got = kernels.edge_values(x, knots, w, k, uniform=uniform)
    want = reference.edge_values(x, knots, w, k, uniform)
    assert got.shape == want.shape == (57, 4, 3)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-13)
    up = torch.randn(got.shape, generator=torch.Generator().manual_seed(1), dtype=F64)
    g_got = torch.autograd.grad((got * up).sum(), (x, w))
    g_want = torch.autograd.grad((want * up).sum(), (x, w))
    for a, b in zip(g_got, g_want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-12)
    # the edges sum to the layer's spline product
    torch.testing.assert_close(got.sum(-1), kernels.spline_product(x, knots, w, k, uniform=uniform))


def test_compiled_edge_values_gradcheck():
    x, knots, w, k, uniform = _problem(True, n_in=2, n_out=2, grid=3)
    x = x[:9].detach().requires_grad_()

    def f(xx, ww):
        return kernels.edge_values(xx, knots, ww, k, uniform=uniform)

    assert torch.autograd.gradcheck(f, (x, w))


def test_wide_layers_keep_the_reference(monkeypatch):
    x, knots, w, k, uniform = _problem(False)
    calls = []
    real = reference.edge_values
    monkeypatch.setattr(reference, "edge_values", lambda *a: calls.append(1) or real(*a))
    kernels.edge_values(x, knots, w, k, uniform=uniform)
    assert calls == []
    monkeypatch.setattr(kernels, "EDGE_BLOCK_MAX", 3 * 3 * 4 - 1)
    kernels.edge_values(x, knots, w, k, uniform=uniform)
    assert calls == [1]
