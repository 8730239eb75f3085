"""The spline-product backends: every fast backend equals the reference path (values and gradients).

Oracles: :mod:`kanlab.kernels.reference` (dense basis + matmul, autograd for gradients), float64
gradcheck, finite differences for the basis derivative. The numba tests need the optional JIT
(``pytest.importorskip``); the triton ones need a CUDA device (or, for the interpreter check, the
triton package).
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import kanlab as kl
from kanlab import kernels
from kanlab.kernels import backends, reference
from kanlab.kernels.backends import BackendError
from kanlab.splines import knots_from_data, uniform_knots

K_VALUES = [0, 1, 2, 3, 5]


@pytest.fixture(autouse=True)
def _auto_backend():
    yield
    kernels.set_backend("auto")


def _device_for(backend: str) -> str:
    if backend == "numba":
        pytest.importorskip("numba")
        return "cpu"
    if not torch.cuda.is_available():
        pytest.skip("the triton backend needs a CUDA device")
    pytest.importorskip("triton")
    return "cuda"


@pytest.fixture(params=["numba", "triton"])
def fast(request) -> tuple[str, str]:
    """(backend name, device) of each fast backend usable here."""
    return request.param, _device_for(request.param)


def _problem(
    k: int,
    uniform: bool,
    dtype: torch.dtype,
    device: str,
    *,
    seed: int = 0,
    size: tuple[int, int, int, int] = (4, 6, 7, 60),
):
    """Inputs spanning the grid, its extension zone and far outside; a random coefficient table.
    size: (in, out, grid intervals, batch)."""
    g = torch.Generator().manual_seed(seed)
    n_in, n_out, grid, batch = size
    if uniform:
        knots = uniform_knots(n_in, grid, k, (-1.0, 1.0), dtype=dtype)
    else:
        data = torch.randn(300, n_in, generator=g, dtype=dtype) * 0.6
        knots = knots_from_data(data, grid, k, 0.02)
    x = torch.randn(batch, n_in, generator=g, dtype=dtype) * 1.3
    x[:4] = torch.tensor([50.0, -50.0, 1e3, -1e3], dtype=dtype).unsqueeze(1)  # far outside the span
    x[4] = knots[:, 0] - 0.01  # just below the first knot
    x[5] = knots[:, -1]  # the last knot itself (outside: intervals are half-open)
    weight = torch.randn(n_in, grid + k, n_out, generator=g, dtype=dtype)
    return x.to(device), knots.to(device), weight.to(device)


def _run(x, knots, weight, k, uniform):
    """Value and gradients (x, weight) of sum(y * gy) through kernels.spline_product."""
    x = x.clone().requires_grad_(True)
    weight = weight.clone().requires_grad_(True)
    y = kernels.spline_product(x, knots, weight, k, uniform=uniform)
    gy = torch.linspace(-1.0, 1.5, y.numel(), dtype=y.dtype, device=y.device).reshape(y.shape)
    gx, gw = torch.autograd.grad(y, (x, weight), gy, allow_unused=True)
    return y, (torch.zeros_like(x) if gx is None else gx), gw


@contextlib.contextmanager
def _num_threads(threads: int):
    """torch (and so the CPU kernels) on ``threads`` threads inside the block."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _scaled_grads(backend, x, knots, weight, scale, k, uniform, gy):
    """Value and gradients (x, weight, scale) of sum(y * gy) through ``backend``."""
    xx, ww, ss = (t.detach().clone().requires_grad_(True) for t in (x, weight, scale))
    kernels.set_backend(backend)
    y = kernels.spline_product(xx, knots, ww, k, uniform=uniform, scale=ss)
    return [y, *torch.autograd.grad(y, (xx, ww, ss), gy)]


def _close(actual, expected, dtype):
    rtol = 1e-5 if dtype == torch.float32 else 1e-11
    actual, expected = actual.detach(), expected.detach()
    scale = float(expected.abs().max().clamp_min(1.0)) if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * scale)


@pytest.mark.parametrize("n_out", [1, 11, 16, 40])
@pytest.mark.parametrize("grid", [3, 150])
def test_numba_block_strategies_and_row_tails_match_reference(grid, n_out):
    """The CPU kernels pick a strategy by grid size (samples sorted by row when a block has many
    samples per row: small grids) and split each output row into full vectors plus a masked tail:
    every combination must equal the reference, with the scale, in float32 and float64."""
    pytest.importorskip("numba")
    g = torch.Generator().manual_seed(grid + n_out)
    for dtype in (torch.float32, torch.float64):
        n_in, batch = 5, 300
        knots = uniform_knots(n_in, grid, 3, (-1.0, 1.0), dtype=dtype)
        x = torch.rand(batch, n_in, generator=g, dtype=dtype) * 2.6 - 1.3
        weight = torch.randn(n_in, grid + 3, n_out, generator=g, dtype=dtype)
        scale = torch.randn(n_in, n_out, generator=g, dtype=dtype)
        gy = torch.randn(batch, n_out, generator=g, dtype=dtype)
        args = (x, knots, weight, scale, 3, True, gy)
        got, want = _scaled_grads("numba", *args), _scaled_grads("reference", *args)
        kernels.set_backend(None)
        for a, b in zip(got, want, strict=True):
            _close(a, b, dtype)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("k", [2, 3])
def test_numba_input_groups_and_sample_blocks_match_reference(k, threads):
    """Small grids with many inputs and samples: the CPU kernels transpose inputs in groups of 16
    (37 inputs: a partial last group, and thread shares that start inside a group), take samples
    in several blocks (1100: three coefficient-gradient blocks of 512), and pad output rows to
    whole vectors in the bucketed cubic forward (20 outputs); values and all three gradients must
    equal the reference, for a uniform and an adapted grid, in float32 and float64."""
    pytest.importorskip("numba")
    with _num_threads(threads):
        for dtype in (torch.float32, torch.float64):
            for uniform in (True, False):
                x, knots, weight = _problem(
                    k, uniform, dtype, "cpu", seed=k, size=(37, 20, 5, 1100)
                )
                g = torch.Generator().manual_seed(threads)
                scale = torch.randn(37, 20, generator=g, dtype=dtype)
                gy = torch.randn(1100, 20, generator=g, dtype=dtype)
                args = (x, knots, weight, scale, k, uniform, gy)
                got, want = _scaled_grads("numba", *args), _scaled_grads("reference", *args)
                kernels.set_backend(None)
                for a, b in zip(got, want, strict=True):
                    _close(a, b, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("uniform", [True, False], ids=["uniform", "adapted"])
@pytest.mark.parametrize("k", K_VALUES)
def test_backend_matches_reference(fast, k, uniform, dtype):
    name, device = fast
    x, knots, weight = _problem(k, uniform, dtype, device)
    kernels.set_backend("reference")
    want = _run(x, knots, weight, k, uniform)
    kernels.set_backend(name)
    assert kernels.select_backend(x).name == name
    got = _run(x, knots, weight, k, uniform)
    for a, b in zip(got, want, strict=True):
        _close(a, b, dtype)
    # Far-outside inputs: no spline part and no input gradient.
    assert torch.all(got[0][:4] == 0)
    assert torch.all(got[1][:4] == 0)
    if k == 0:
        assert torch.all(got[1] == 0)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("uniform", [True, False], ids=["uniform", "adapted"])
@pytest.mark.parametrize("k", K_VALUES)
def test_numba_large_grid_path_matches_reference(k, uniform, threads):
    """Tables too large for the level-1 cache take other paths in the CPU kernels (samples sorted
    by first row, prefetching, a row-ordered gradient pass; for cubic splines, the sliding-window
    bucketed forward up to G=200 and the per-sample one past that): each must equal the
    reference for every order, both grid kinds and both dtypes, with several blocks of samples and
    thread shares."""
    pytest.importorskip("numba")
    with _num_threads(threads):
        for dtype in (torch.float32, torch.float64):
            for grid in (160, 300) if k == 3 else (160,):
                size = (3, 24, grid, 1300)
                x, knots, weight = _problem(k, uniform, dtype, "cpu", seed=k, size=size)
                assert weight[0].numel() * weight.element_size() > 8192  # the large-grid paths
                kernels.set_backend("reference")
                want = _run(x, knots, weight, k, uniform)
                kernels.set_backend("numba")
                got = _run(x, knots, weight, k, uniform)
                for a, b in zip(got, want, strict=True):
                    _close(a, b, dtype)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("k", [1, 2, 3, 5])
@pytest.mark.parametrize("out", [11, 44], ids=["in-order", "by-row"])
def test_numba_fused_large_grid_backward_equals_separate_kernels(out, k, threads):
    """On large grids, when both gradients are wanted, the coefficient-gradient kernel also writes
    the input gradient: its x gradient must be bitwise that of the separate kernel, for both grid
    kinds and dtypes, with output rows that end in a partial vector (11 outputs) and several
    blocks of samples. With a table in the level-1 cache's range (11 outputs) the samples come in
    order and the weight and scale gradients are bitwise the separate kernel's too; with a larger
    table (44 outputs) the fused pass takes the samples sorted by row, so those two are the same
    sums in another order. All must equal the reference."""
    pytest.importorskip("numba")
    from kanlab.kernels.cpu import api, tuning

    with _num_threads(threads):
        for dtype in (torch.float32, torch.float64):
            for uniform in (True, False):
                x, knots, weight = _problem(
                    k, uniform, dtype, "cpu", seed=k, size=(5, out, 200, 1100)
                )
                table = weight[0].numel() * weight.element_size()
                assert table > 8192  # the large-grid paths
                by_row = table > tuning._SORTED_FUSED_BYTES
                assert by_row == (out == 44)
                g = torch.Generator().manual_seed(k)
                scale = torch.randn(5, out, generator=g, dtype=dtype)
                gy = torch.randn(1100, out, generator=g, dtype=dtype)
                args = (gy, x, knots, weight, scale, k, uniform)
                gx, gw, gs = api.backward(*args, True, True)
                gx_alone, _, _ = api.backward(*args, True, False)
                _, gw_alone, gs_alone = api.backward(*args, False, True)
                assert torch.equal(gx, gx_alone)
                if by_row:
                    tol = 1e-5 if dtype == torch.float32 else 1e-12
                    for a, b in ((gw, gw_alone), (gs, gs_alone)):
                        torch.testing.assert_close(a, b, rtol=tol, atol=tol * float(b.abs().max()))
                else:
                    assert torch.equal(gw, gw_alone)
                    assert torch.equal(gs, gs_alone)
                want = _scaled_grads("reference", x, knots, weight, scale, k, uniform, gy)[1:]
                kernels.set_backend(None)
                for a, b in zip((gx, gw, gs), want, strict=True):
                    _close(a, b, dtype)


@pytest.mark.parametrize("k", K_VALUES)
def test_layer_with_adapted_grid_matches_reference(fast, k):
    name, device = fast
    layer = kl.KANLinear(
        3, 5, grid_size=6, spline_order=k, generator=torch.Generator().manual_seed(1)
    )
    layer = layer.to(device=device, dtype=torch.float64)
    data = (torch.randn(200, 3, dtype=torch.float64) * 0.7).to(device)
    layer.update_grid(data)
    assert not layer._uniform
    x = (torch.randn(40, 3, dtype=torch.float64) * 1.5).to(device)

    def step(backend: str):
        kernels.set_backend(backend)
        layer.zero_grad()
        xx = x.clone().requires_grad_(True)
        y = layer(xx)
        y.pow(2).mean().backward()
        grads = [p.grad.clone() for p in layer.parameters()]
        return [y.detach(), xx.grad, *grads]

    want, got = step("reference"), step(name)
    for a, b in zip(got, want, strict=True):
        _close(a, b, torch.float64)


@pytest.mark.parametrize("uniform", [True, False], ids=["uniform", "adapted"])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_gradcheck_float64(k, uniform):
    pytest.importorskip("numba")
    kernels.set_backend("numba")
    x, knots, weight = _problem(k, uniform, torch.float64, "cpu", seed=3)
    x, weight = x[6:16].clone(), weight[:, :, :3].clone()  # inside the span: smooth there
    x.requires_grad_(True)
    weight.requires_grad_(True)

    def fn(x, w):
        return kernels.spline_product(x, knots, w, k, uniform=uniform)

    assert torch.autograd.gradcheck(fn, (x, weight), eps=1e-6, atol=1e-7)


def _run_scaled(x, knots, weight, scale, k, uniform, *, fold: bool):
    """Value and gradients (x, weight, scale) of sum(y * gy), scale passed or folded by hand."""
    x = x.clone().requires_grad_(True)
    weight = weight.clone().requires_grad_(True)
    scale = scale.clone().requires_grad_(True)
    if fold:
        y = kernels.spline_product(x, knots, weight * scale.unsqueeze(1), k, uniform=uniform)
    else:
        y = kernels.spline_product(x, knots, weight, k, uniform=uniform, scale=scale)
    gy = torch.linspace(-1.0, 1.5, y.numel(), dtype=y.dtype, device=y.device).reshape(y.shape)
    gx, gw, gs = torch.autograd.grad(y, (x, weight, scale), gy, allow_unused=True)
    return y, (torch.zeros_like(x) if gx is None else gx), gw, gs


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("uniform", [True, False], ids=["uniform", "adapted"])
@pytest.mark.parametrize("k", [0, 2, 3])
def test_scale_argument_matches_folded_reference(fast, k, uniform, dtype):
    """``scale=`` equals the reference with ``weight * scale`` folded in: values and the gradients
    w.r.t. x, weight and scale (with masked-out edges: zeros in the scale)."""
    name, device = fast
    x, knots, weight = _problem(k, uniform, dtype, device, seed=7)
    g = torch.Generator().manual_seed(8)
    scale = torch.randn(weight.shape[0], weight.shape[2], generator=g, dtype=dtype).to(device)
    scale[1, 2] = 0.0
    scale[3, :] = 0.0
    kernels.set_backend("reference")
    want = _run_scaled(x, knots, weight, scale, k, uniform, fold=True)
    assert torch.all(want[2][3] == 0)  # a masked input's coefficients get no gradient
    for backend in ("reference", name):
        kernels.set_backend(backend)
        got = _run_scaled(x, knots, weight, scale, k, uniform, fold=False)
        for a, b in zip(got, want, strict=True):
            _close(a, b, dtype)


@pytest.mark.parametrize("uniform", [True, False], ids=["uniform", "adapted"])
def test_gradcheck_float64_with_scale(uniform):
    pytest.importorskip("numba")
    kernels.set_backend("numba")
    x, knots, weight = _problem(3, uniform, torch.float64, "cpu", seed=4)
    x, weight = x[6:14].clone(), weight[:, :, :3].clone()  # inside the span: smooth there
    scale = torch.randn(weight.shape[0], 3, generator=torch.Generator().manual_seed(2)).double()
    inputs = tuple(t.requires_grad_(True) for t in (x, weight, scale))

    def fn(x, w, s):
        return kernels.spline_product(x, knots, w, 3, uniform=uniform, scale=s)

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7)


def test_scale_shape_is_checked():
    x, knots, weight = _problem(3, True, torch.float32, "cpu")
    bad = torch.ones(weight.shape[2], weight.shape[0])  # (out, in): transposed
    for name in kernels.available_backends():
        kernels.set_backend(name)
        with pytest.raises(ValueError, match="scale must have shape"):
            kernels.spline_product(x, knots, weight, 3, uniform=True, scale=bad)


def test_kan_forward_backward_matches_reference(fast):
    name, device = fast
    model = kl.KAN([5, 7, 3], grid_size=8, seed=2).to(device)
    x = (torch.rand(128, 5) * 2.4 - 1.2).to(device)

    def step(backend: str):
        kernels.set_backend(backend)
        model.zero_grad()
        y = model(x)
        y.pow(2).mean().backward()
        return [y.detach()] + [p.grad.clone() for p in model.parameters()]

    want, got = step("reference"), step(name)
    for a, b in zip(got, want, strict=True):
        _close(a, b, torch.float32)


def test_nan_propagates_and_outside_is_zero():
    backends = ["reference"] + (["numba"] if "numba" in kernels.available_backends() else [])
    for name in backends:
        kernels.set_backend(name)
        for uniform in (True, False):
            x, knots, weight = _problem(3, uniform, torch.float32, "cpu")
            x[10, 2] = float("nan")
            y = kernels.spline_product(x, knots, weight, 3, uniform=uniform)
            assert torch.isnan(y[10]).all(), name
            assert not torch.isnan(y[11:]).any(), name
            assert torch.all(y[:4] == 0), name


def test_infinite_inputs_have_no_spline_part(fast):
    """+-inf lies outside the knot span: zero spline part (as the reference) and zero gradients."""
    name, device = fast
    for k, uniform in [(3, True), (2, True), (3, False)]:
        x, knots, weight = _problem(k, uniform, torch.float32, device)
        x[10, 1] = float("inf")
        x[11, 0] = float("-inf")
        kernels.set_backend("reference")
        want = _run(x, knots, weight, k, uniform)
        kernels.set_backend(name)
        got = _run(x, knots, weight, k, uniform)
        _close(got[0], want[0], torch.float32)  # (the reference's gradients are NaN there)
        for a in got:
            assert torch.isfinite(a).all()
        assert got[1][10, 1] == 0 and got[1][11, 0] == 0


def test_in_place_change_of_knots_is_seen_by_the_cpu_kernels():
    """The CPU backend caches per-knots arrays; an in-place change of the knots (as
    load_state_dict does) must invalidate them."""
    pytest.importorskip("numba")
    layer = kl.KANLinear(3, 4, grid_size=5)
    x = torch.rand(50, 3) * 2 - 1
    kernels.set_backend("numba")
    before = layer(x)
    with torch.no_grad():
        layer.knots.mul_(1.5)  # still a uniform grid, now on [-1.5, 1.5]
    after = layer(x)
    kernels.set_backend("reference")
    want = layer(x)
    kernels.set_backend(None)
    torch.testing.assert_close(after, want, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(before, after)


def test_second_derivatives_through_the_numba_kernels_match_the_reference():
    # (was: second derivatives refused; the backward op now has an autograd formula,
    # tests/test_kernels_gradgrad.py checks them in float64)
    pytest.importorskip("numba")
    layer = kl.KANLinear(3, 4, grid_size=5)
    x = (torch.rand(8, 3) * 2 - 1).requires_grad_(True)
    got = []
    for name in ("numba", "reference"):
        kernels.set_backend(name)
        try:
            (gx,) = torch.autograd.grad(layer(x).sum(), x, create_graph=True)
            got.append(torch.autograd.grad(gx.square().sum(), x)[0])
        finally:
            kernels.set_backend(None)
    torch.testing.assert_close(got[0], got[1], rtol=1e-4, atol=1e-4)


def test_empty_batch():
    for name in kernels.available_backends():
        if name == "triton":
            continue
        kernels.set_backend(name)
        x, knots, weight = _problem(3, True, torch.float64, "cpu")
        x0 = x[:0].clone().requires_grad_(True)
        w = weight.clone().requires_grad_(True)
        y = kernels.spline_product(x0, knots, w, 3, uniform=True)
        assert y.shape == (0, weight.shape[2])
        y.sum().backward()
        assert torch.all(w.grad == 0)


def test_memory_saved_tensors_do_not_scale_with_out_or_grid():
    """Nothing of size batch*in*out or batch*in*(G+k) is kept for backward by the sparse op."""
    pytest.importorskip("numba")
    batch, n_in, n_out, grid, k = 64, 5, 7, 10, 3
    layer = kl.KANLinear(n_in, n_out, grid_size=grid, spline_order=k)
    x = torch.rand(batch, n_in) * 2 - 1
    limit = batch * n_in * min(n_out, grid + k)

    def saved_sizes(backend: str) -> list[int]:
        kernels.set_backend(backend)
        sizes: list[int] = []

        def pack(t):
            sizes.append(t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            layer(x).sum().backward()
        return sizes

    assert max(saved_sizes("reference")) >= limit  # the oracle does keep the dense basis
    sizes = saved_sizes("numba")
    assert sizes and max(sizes) < limit
    assert max(sizes) <= max(batch * n_in, layer.coef.numel())


def test_compile_fullgraph_matches_eager():
    """torch.compile traces a KAN through the custom op with no graph break (fullgraph=True)."""
    pytest.importorskip("numba")
    torch._dynamo.reset()
    model = kl.KAN([4, 8, 3], seed=0)
    x = torch.rand(64, 4) * 2 - 1
    eager = model(x)
    eager.pow(2).sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    y = compiled(x)
    y.pow(2).sum().backward()
    _close(y, eager, torch.float32)
    for p, g in zip(model.parameters(), grads, strict=True):
        _close(p.grad, g, torch.float32)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch-internal, raised by inductor
def test_compile_inductor_matches_eager():
    torch._dynamo.reset()
    model = kl.KAN([4, 8, 3], seed=0)
    x = torch.rand(64, 4) * 2 - 1
    with torch.no_grad():
        eager = model(x)
        compiled = torch.compile(model, fullgraph=True)(x)
    _close(compiled, eager, torch.float32)


def test_set_backend_validates_names():
    with pytest.raises(ValueError, match="known:.*reference"):
        kernels.set_backend("cuda-magic")
    kernels.set_backend("reference")
    assert kernels.get_backend() == "reference"
    kernels.set_backend("auto")
    assert kernels.get_backend() == "auto"


def test_backends_follow_the_installed_jit():
    """CI runs the suite with numba installed and again without it: in each, the numba backend is
    offered exactly when numba can be imported, and a CPU layer trains on the best one."""
    import importlib.util

    has_numba = importlib.util.find_spec("numba") is not None
    assert ("numba" in kernels.available_backends()) == has_numba
    x = torch.rand(32, 3) * 2 - 1
    assert kernels.select_backend(x).name == ("numba" if has_numba else "reference")
    model = kl.KAN([3, 4, 2], seed=0)
    model(x).pow(2).mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_auto_dispatch_by_device_dtype_and_availability(monkeypatch):
    x32 = torch.rand(256, 64)
    if "numba" in kernels.available_backends():
        assert kernels.select_backend(x32).name == "numba"
        assert kernels.select_backend(x32.double()).name == "numba"
    assert kernels.select_backend(x32.half()).name == "reference"
    # Without the JIT the numba backend is unavailable, cannot be forced, and auto falls back.
    monkeypatch.setattr(kernels, "_HAS_NUMBA", False)
    assert "numba" not in kernels.available_backends()
    assert kernels.select_backend(x32).name == "reference"
    with pytest.raises(ValueError, match="not available"):
        kernels.set_backend("numba")


def test_broken_numba_kernels_raise_instead_of_running_the_reference(monkeypatch):
    """numba installed but its kernels not importable: the call that chose the numba backend
    raises an error naming the backend, its module and the import error, instead of computing
    with the reference maths (which would let every backend-equality test compare the reference
    with itself); forcing the reference is the way out the message names."""
    monkeypatch.setattr(kernels, "_HAS_NUMBA", True)  # installed (CI's second leg has no numba)
    # `import kanlab.kernels.cpu.api` now raises ImportError, as a broken numba install would.
    monkeypatch.setitem(sys.modules, "kanlab.kernels.cpu.api", None)
    x, knots, weight = _problem(2, False, torch.float64, "cpu")
    assert kernels.select_backend(x).name == "numba"
    with pytest.raises(BackendError, match=r"'numba'.*kanlab\.kernels\.cpu\.api.*failed to import"):
        kernels.spline_product(x, knots, weight, 2, uniform=False)
    with pytest.raises(BackendError, match="set_backend\\('reference'\\)"):
        kl.KAN([4, 3], seed=0).double()(x)
    kernels.set_backend("reference")
    y = kernels.spline_product(x, knots, weight, 2, uniform=False)
    torch.testing.assert_close(y, reference.spline_product(x, knots, weight, 2, False))


def test_broken_numba_install_fails_loudly_in_fresh_interpreter(tmp_path):
    """An installed but broken numba package (one whose import raises): the numba backend is still
    offered (it is installed), a training step raises BackendError with numba's own error, and
    load_installed (CI's check that every installed backend loads) fails too."""
    (tmp_path / "numba").mkdir()
    (tmp_path / "numba" / "__init__.py").write_text('raise ImportError("this numba is broken")\n')
    code = textwrap.dedent(
        """
        import torch, kanlab as kl
        from kanlab import kernels
        from kanlab.kernels import backends
        assert "numba" in kernels.available_backends()
        model = kl.KAN([3, 4, 2], seed=0)
        for attempt in (lambda: model(torch.rand(16, 3)), backends.load_installed):
            try:
                attempt()
            except backends.BackendError as error:
                assert "'numba'" in str(error) and "this numba is broken" in str(error), error
            else:
                raise AssertionError("a broken numba went unnoticed")
        kernels.set_backend("reference")
        model(torch.rand(16, 3)).sum().backward()
        print("ok")
        """
    )
    path = os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, PYTHONPATH=path)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "ok"


def test_every_installed_backend_loads():
    """The kernels of every backend whose package is installed import, on any machine (Triton's
    without a GPU too): CI installs numba and triton, then uninstalls numba for a second run."""
    names = backends.load_installed()
    assert ("numba" in names) == (importlib.util.find_spec("numba") is not None)
    assert ("triton" in names) == (importlib.util.find_spec("triton") is not None)


def test_backends_are_one_registry():
    """The compiled backends are described once: each names its kernel module, and the op runs
    the module of the backend the dispatcher chose (the scale taken by kernels that apply it)."""
    numba, triton = backends._BACKENDS["numba"], backends._BACKENDS["triton"]
    assert (numba.module, numba.requires) == ("kanlab.kernels.cpu.api", "numba")
    assert (triton.module, triton.requires) == ("kanlab.kernels.gpu", "triton")
    assert numba.takes_scale and triton.takes_scale
    with pytest.raises(ValueError, match="a function .* or a module"):
        kernels.Backend("nothing")
    for name in backends.load_installed():  # each kernel module applies the scale itself
        module = backends.kernels_of(name)
        assert isinstance(module, backends.KernelModule)
        assert "scale" in inspect.signature(module.forward).parameters
        assert "scale" in inspect.signature(module.backward).parameters


def test_import_without_numba_in_fresh_interpreter():
    """`import kanlab` and a training step work when numba cannot be imported."""
    code = textwrap.dedent(
        """
        import sys
        sys.modules["numba"] = None
        import torch, kanlab as kl
        from kanlab import kernels
        assert "numba" not in sys.modules or sys.modules["numba"] is None
        m = kl.KAN([3, 4, 2], seed=0)
        y = m(torch.rand(16, 3))
        y.sum().backward()
        print("ok", kernels.select_backend(torch.rand(16, 3)).name)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=os.environ
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok")


def test_triton_kernels_in_interpreter():
    """The Triton kernels, run by Triton's CPU interpreter (CI installs triton), equal the
    reference: values and both gradients, k = 0, 1, 2, 3, 5, uniform and adapted grids, the inputs
    of :func:`_problem` (inside, at the ends and far outside the grid), float64 (1e-10) and float32
    (1e-5 relative); 70 outputs and 45 samples leave partial tiles in both directions. Then the
    op's CUDA glue with these kernels: gradcheck of values, coefficient, scale and input gradients
    in float64."""
    pytest.importorskip("triton")
    code = textwrap.dedent(
        """
        import sys
        import torch
        sys.path.insert(0, sys.argv[1])  # tests/: this module's _problem
        from test_kernels import _problem
        from kanlab.kernels import gpu, reference
        g = torch.Generator().manual_seed(0)
        for k in (0, 1, 2, 3, 5):
            for uniform in (True, False):
                for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-5)):
                    x, knots, w = _problem(k, uniform, dtype, "cpu", size=(3, 70, 6, 45))
                    gy = torch.randn(45, 70, generator=g, dtype=dtype)
                    y = gpu.forward(x, knots, w, k, uniform)
                    gx, gw, _ = gpu.backward(gy, x, knots, w, None, k, uniform, True, True)
                    xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
                    yr = reference.spline_product(xr, knots, wr, k, uniform)
                    yr.backward(gy)
                    gxr = torch.zeros_like(x) if xr.grad is None else xr.grad
                    for name, a, b in (("y", y, yr), ("gx", gx, gxr), ("gw", gw, wr.grad)):
                        scale = max(1.0, b.abs().max().item())
                        torch.testing.assert_close(
                            a, b, rtol=tol, atol=tol * scale, msg=lambda m: f"{k} {uniform} "
                            f"{dtype} {name}: {m}"
                        )
                    only_w = gpu.backward(gy, x, knots, w, None, k, uniform, False, True)
                    only_x = gpu.backward(gy, x, knots, w, None, k, uniform, True, False)
                    assert only_w[0] is None and torch.equal(only_w[1], gw)
                    assert only_x[1] is None and torch.equal(only_x[0], gx)
        # The CUDA glue of the op (the scale passed to the kernels, the autograd function, the
        # backward's need flags) with the Triton module standing in for the CPU kernels: a
        # backend of its own, registered like the others.
        from kanlab import kernels
        from kanlab.kernels import backends, sparse
        kernels.register_backend(kernels.Backend(
            "triton-interpreter", module="kanlab.kernels.gpu", requires="triton", priority=-1,
            supports=lambda x: x.device.type == "cpu",
        ))
        assert backends.kernels_of("triton-interpreter") is gpu
        for k, uniform in ((3, True), (2, False)):
            _, knots, w = _problem(k, uniform, torch.float64, "cpu", size=(3, 3, 4, 6))
            # gradcheck's finite differences need inputs away from knots (_problem puts one on
            # the last knot), so smooth points inside and just outside the span:
            x = torch.rand(4, 3, generator=g, dtype=torch.float64) * 2.4 - 1.2
            sc = torch.rand(3, 3, generator=g, dtype=torch.float64) + 0.5
            args = tuple(t.clone().requires_grad_() for t in (x, w, sc))
            op = lambda x, w, sc: sparse.spline_product(
                x, knots, w, k, uniform, sc, "triton-interpreter"
            )
            assert torch.autograd.gradcheck(op, args)
            ref = lambda x, w, sc: reference.spline_product(x, knots, w, k, uniform, sc)
            rargs = tuple(t.clone().requires_grad_() for t in (x, w, sc))
            gy = torch.randn(4, 3, generator=g, dtype=torch.float64)
            got = torch.autograd.grad(op(*args), args, gy)
            want = torch.autograd.grad(ref(*rargs), rargs, gy)
            torch.testing.assert_close(op(*args), ref(*rargs), rtol=1e-12, atol=1e-12)
            for a, b in zip(got, want):
                torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
        print("ok")
        """
    )
    env = dict(os.environ, TRITON_INTERPRET="1")
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    out = subprocess.run(
        [sys.executable, "-c", code, tests_dir],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "ok"


def test_reference_is_registered_first_class():
    # The reference backend is always there and always usable: the fallback of every dispatch.
    assert "reference" in kernels.available_backends()
    x, knots, weight = _problem(3, True, torch.float32, "cpu")
    kernels.set_backend("reference")
    y = kernels.spline_product(x, knots, weight, 3, uniform=True)
    torch.testing.assert_close(y, reference.spline_product(x, knots, weight, 3, True))


def test_numba_backend_works_in_forked_child():
    """The kernels' thread pool survives a fork (process pools of the benchmark runner)."""
    pytest.importorskip("numba")
    import multiprocessing as mp

    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # two shares: the pool has a worker thread
    try:
        x, knots, weight = _problem(3, True, torch.float32, "cpu")
        kernels.set_backend("numba")
        want = kernels.spline_product(x, knots, weight, 3, uniform=True)  # starts the pool here
        ctx = mp.get_context("fork")
        with ctx.Pool(1) as pool:
            got = pool.apply_async(_child_product, (x, knots, weight)).get(timeout=60)
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(got, want)


def _child_product(x, knots, weight):
    kernels.set_backend("numba")
    return kernels.spline_product(x, knots, weight, 3, uniform=True)


def test_cpu_thread_paths_agree_bitwise(monkeypatch):
    """Serial, torch's OpenMP team and the fallback thread pool: each output has one owner."""
    pytest.importorskip("numba")
    from kanlab.kernels.cpu import api, threads

    x, knots, weight = _problem(3, False, torch.float32, "cpu")
    gy = torch.randn(x.shape[0], weight.shape[2], generator=torch.Generator().manual_seed(0))

    def run(n_threads: int):
        monkeypatch.setattr(api, "_n_threads", lambda: n_threads)
        y = api.forward(x, knots, weight, 3, False)
        gx, gw, _ = api.backward(gy, x, knots, weight, None, 3, False, True, True)
        return y, gx, gw

    serial = run(1)
    paths = [run(3)]  # the team when torch's libgomp was found, else the pool
    monkeypatch.setattr(threads, "_GOMP", None)
    paths.append(run(3))  # the pool
    for got in paths:
        for a, b in zip(got, serial, strict=True):
            assert torch.equal(a, b)
