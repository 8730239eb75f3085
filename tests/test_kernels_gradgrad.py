"""Second (and third) derivatives through the fast spline product: gradcheck and gradgradcheck in
float64 for the Numba kernels and for the Triton kernels (in Triton's CPU interpreter) next to the
reference, on uniform and adapted grids, with and without the per-edge scale, k = 1, 2, 3; their
second derivatives against the reference's; and a PINN's Laplacian of a KAN and the gradient of
its loss w.r.t. the parameters.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from kanlab.splines import knots_from_data, uniform_knots

CASES = [
    (k, adapted, scaled) for k in (1, 2, 3) for adapted in (False, True) for scaled in (False, True)
]
needs_numba = pytest.mark.skipif(
    importlib.util.find_spec("numba") is None, reason="numba is not installed"
)


def problem(k: int, adapted: bool, scaled: bool, size=(2, 3, 5, 6)):
    """A tiny float64 layer (``size``: inputs, outputs, G, batch): x (some samples outside the
    grid), knots, weight and scale (or None), the tensors to differentiate, and the uniform
    flag."""
    g = torch.Generator().manual_seed(10 * k + 2 * adapted + scaled)
    n_in, n_out, grid, batch = size
    if adapted:  # after update_grid: knots at the quantiles of skewed data
        data = torch.rand(200, n_in, generator=g, dtype=torch.float64) ** 2 * 2 - 1
        knots = knots_from_data(data, grid, k, 0.2)
    else:
        knots = uniform_knots(n_in, grid, k, (-1.0, 1.0), dtype=torch.float64)
    x = (torch.rand(batch, n_in, generator=g, dtype=torch.float64) * 2.2 - 1.1).requires_grad_()
    weight = torch.randn(n_in, grid + k, n_out, generator=g, dtype=torch.float64)
    weight.requires_grad_()
    scale = None
    if scaled:
        scale = (torch.rand(n_in, n_out, generator=g, dtype=torch.float64) + 0.5).requires_grad_()
    return x, knots, weight, scale, not adapted


def product(backend: str, knots, k: int, uniform: bool):
    """The spline product of ``backend`` as a function of (x, weight[, scale])."""
    from kanlab.kernels import reference, sparse

    def fn(x, weight, scale=None):
        if backend == "reference":
            return reference.spline_product(x, knots, weight, k, uniform, scale)
        return sparse.spline_product(x, knots, weight, k, uniform, scale, backend)

    return fn


def higher_derivatives(fn, inputs, order: int):
    """Gradients w.r.t. the inputs of fixed weighted sums of the gradients of ... of a fixed
    weighted sum of the outputs: ``order`` = 2 gives Hessian-vector products in every direction at
    once, 3 the next derivatives."""
    y = fn(*inputs)
    g = torch.Generator().manual_seed(1)
    total = (y * torch.randn(y.shape, generator=g, dtype=y.dtype)).sum()
    for level in range(1, order + 1):
        if not total.requires_grad:  # (the reference's graph ends where a derivative is 0)
            return tuple(torch.zeros_like(t) for t in inputs)
        grads = torch.autograd.grad(
            total, inputs, create_graph=level < order, allow_unused=True, materialize_grads=True
        )
        if level == order:
            return grads
        total = sum((d * torch.randn(d.shape, generator=g, dtype=d.dtype)).sum() for d in grads)
    raise AssertionError("unreachable")


def check_backend(backend: str, k: int, adapted: bool, scaled: bool, *, checks=True) -> None:
    """gradcheck and gradgradcheck of ``backend`` and of the reference (unless ``checks`` is
    False; ``checks`` a size: at that size); the second and third derivatives of ``backend`` equal
    the reference's to 1e-10 (relative to their size)."""
    if checks:
        size = checks if isinstance(checks, tuple) else (2, 3, 5, 6)
        x, knots, weight, scale, uniform = problem(k, adapted, scaled, size)
        inputs = (x, weight) if scale is None else (x, weight, scale)
        for fn in (product("reference", knots, k, uniform), product(backend, knots, k, uniform)):
            assert torch.autograd.gradcheck(fn, inputs)
            assert torch.autograd.gradgradcheck(fn, inputs)
    x, knots, weight, scale, uniform = problem(k, adapted, scaled)
    inputs = (x, weight) if scale is None else (x, weight, scale)
    fast = product(backend, knots, k, uniform)
    ref = product("reference", knots, k, uniform)
    for order in (2, 3):
        pairs = zip(
            higher_derivatives(fast, inputs, order),
            higher_derivatives(ref, inputs, order),
            strict=True,
        )
        for got, want in pairs:
            atol = 1e-10 * max(1.0, want.abs().max().item())
            torch.testing.assert_close(got, want, rtol=1e-10, atol=atol, msg=f"order {order}")


@needs_numba
@pytest.mark.slow  # gradgradcheck: 2-20 s a case on the shared 2-core machine
@pytest.mark.parametrize(("k", "adapted", "scaled"), CASES)
def test_numba_gradcheck_and_gradgradcheck(k, adapted, scaled):
    """The Numba kernels' first and second derivatives (on main: "Trying to backward through
    kanlab::spline_product_backward but no autograd formula was registered")."""
    check_backend("numba", k, adapted, scaled)


def _kan_laplacian_and_loss_gradient(backend: str, adapted: bool):
    """Laplacian of a KAN [2, 5, 1] at 16 points (two create_graph gradients) and the gradient of
    the PINN-like loss mean(laplacian^2) w.r.t. every parameter, with ``backend`` forced."""
    import kanlab as kl
    from kanlab import kernels

    kernels.set_backend(backend)
    try:
        model = kl.KAN([2, 5, 1], grid_size=5, spline_order=3, seed=0).double()
        g = torch.Generator().manual_seed(3)
        if adapted:
            model.update_grid(torch.rand(64, 2, generator=g, dtype=torch.float64) ** 2 * 2 - 1)
        x = (torch.rand(16, 2, generator=g, dtype=torch.float64) * 2 - 1).requires_grad_()
        u = model(x)
        grad = torch.autograd.grad(u.sum(), x, create_graph=True)[0]
        lap = sum(
            torch.autograd.grad(grad[:, d].sum(), x, create_graph=True)[0][:, d] for d in range(2)
        )
        loss = (lap**2).mean()
        params = dict(model.named_parameters())
        grads = torch.autograd.grad(loss, list(params.values()))
        return lap.detach(), dict(zip(params, grads, strict=True))
    finally:
        kernels.set_backend("auto")


@needs_numba
@pytest.mark.parametrize("adapted", [False, True])
def test_numba_kan_laplacian_and_pinn_loss_gradient_match_reference(adapted):
    """A PINN's quantities through a whole KAN (third derivatives of the spline product for the
    loss gradient) equal the reference backend's."""
    lap, grads = _kan_laplacian_and_loss_gradient("numba", adapted)
    lap_ref, grads_ref = _kan_laplacian_and_loss_gradient("reference", adapted)
    assert lap.abs().max() > 0.1  # a non-trivial Laplacian
    torch.testing.assert_close(lap, lap_ref, rtol=1e-10, atol=1e-10)
    for name, want in grads_ref.items():
        assert want.abs().max() > 0, name
        atol = 1e-10 * max(1.0, want.abs().max().item())
        torch.testing.assert_close(grads[name], want, rtol=1e-10, atol=atol, msg=name)


_TRITON_CHECK = """
import sys
sys.path.insert(0, sys.argv[1])
from test_kernels_gradgrad import CASES, check_backend
for case in CASES:
    # The interpreter runs each kernel in Python: second and third derivatives against the
    # reference in every case, gradcheck/gradgradcheck (many calls) at a smaller size in two.
    full = case in ((3, True, True), (1, False, False))
    check_backend("triton", *case, checks=(1, 2, 5, 3) if full else False)
print("ok")
"""


@pytest.mark.slow
def test_triton_gradcheck_and_gradgradcheck_in_interpreter():
    """The Triton kernels' second and third derivatives against the reference, in Triton's CPU
    interpreter, for every case of the Numba test (gradcheck and gradgradcheck in two of them)."""
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONWARNINGS="ignore")
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_TRITON_CHECK), tests_dir],
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "ok"
