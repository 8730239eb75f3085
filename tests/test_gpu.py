"""The Triton (GPU) kernels: their maths on the CPU (Triton's interpreter) and, on a CUDA machine,
the kernels themselves against the CPU reference, under torch.compile, in training and in memory.

Tests marked ``gpu`` skip without a CUDA device (CI has none; ``.ci/run`` runs them where one is
found). The interpreter tests need only the triton package (CI installs it).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import kanlab as kl
from kanlab import kernels
from kanlab.splines import _cardinal_values, knots_from_data, uniform_knots

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(autouse=True)
def _auto_backend():
    yield
    kernels.set_backend("auto")


def _gpu_module():
    pytest.importorskip("triton")
    from kanlab.kernels import gpu as triton_gpu

    return triton_gpu


@pytest.mark.parametrize("k", [0, 1, 2, 3, 4, 5])
def test_cardinal_polynomials_match_the_recursion(k):
    """The kernels' Horner tables equal the cardinal B-spline recursion of kanlab.splines (values
    and, by autograd of the recursion, derivatives) at points across [0, 1)."""
    gpu = _gpu_module()
    u = torch.linspace(0, 1, 97, dtype=torch.float64)[:-1].requires_grad_(True)
    want = _cardinal_values(u, k)  # (97, k+1)
    table = gpu._polynomial_table(k, torch.float64, torch.device("cpu"))  # (2, k+1, k+1)
    powers = u.detach().unsqueeze(-1) ** torch.arange(k + 1, dtype=torch.float64)  # (n, k+1)
    torch.testing.assert_close(powers @ table[0].T, want.detach(), rtol=0, atol=1e-14)
    if k == 0:  # the constant 1
        dwant = torch.zeros(u.shape[0], 1, dtype=torch.float64)
    else:
        grads = [
            torch.autograd.grad(want[:, r].sum(), u, retain_graph=True)[0] for r in range(k + 1)
        ]
        dwant = torch.stack(grads, -1)
    torch.testing.assert_close(powers @ table[1].T, dwant, rtol=0, atol=1e-13)
    assert torch.equal(gpu.cardinal_polynomials(k), table[0])


def test_strategy_choice_and_override(monkeypatch):
    gpu = _gpu_module()
    assert gpu.strategy(8, torch.float32) == "tiles"
    assert gpu.strategy(8, torch.float64) == "sparse"
    assert gpu.strategy(103, torch.float32) == "sparse"
    monkeypatch.setenv("KANLAB_TRITON_STRATEGY", "sparse")
    assert gpu.strategy(8, torch.float32) == "sparse"
    monkeypatch.setenv("KANLAB_TRITON_STRATEGY", "tiles")
    assert gpu.strategy(103, torch.float64) == "tiles"
    assert gpu.strategy(1003, torch.float32) == "sparse"  # register tiles would spill
    monkeypatch.setenv("KANLAB_TRITON_STRATEGY", "dense")
    with pytest.raises(ValueError, match="KANLAB_TRITON_STRATEGY must be 'tiles' or 'sparse'"):
        gpu.strategy(8, torch.float32)


_INTERPRETER_CHECK = """
import os, sys
import torch
sys.path.insert(0, sys.argv[1])
from test_kernels import _problem
from kanlab.kernels import gpu as triton_gpu, reference
# Split every loop that can be split (several shares of inputs and of the batch), as on a GPU.
triton_gpu._shares = lambda total, programs, device, minimum: max(1, min(3, total))
g = torch.Generator().manual_seed(0)
for strategy in ("tiles", "sparse"):
    os.environ["KANLAB_TRITON_STRATEGY"] = strategy
    for k, uniform in ((0, True), (2, False), (3, True), (3, False)):
        for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-5)):
            x, knots, w = _problem(k, uniform, dtype, "cpu", size=(4, 12, 4, 20))
            x[7, 1] = float("nan")
            x[8, 0] = float("inf")
            gy = torch.randn(20, 12, generator=g, dtype=dtype)
            sc = torch.rand(4, 12, generator=g, dtype=dtype) + 0.5
            y = triton_gpu.forward(x, knots, w, k, uniform, sc)
            gx, gw, gs = triton_gpu.backward(gy, x, knots, w, sc, k, uniform, True, True)
            want_y = reference.spline_product(x, knots, w, k, uniform, sc)
            assert torch.equal(torch.isnan(y), torch.isnan(want_y)), (strategy, k, "NaN rows")
            assert torch.isnan(gx[7, 1]) and gx[8, 0] == 0, (strategy, k, gx[7:9])
            # Gradients against the reference on the finite rows (the reference's are NaN at inf).
            ok = torch.isfinite(x).all(1)
            gx, gw, gs = triton_gpu.backward(
                gy[ok], x[ok], knots, w, sc, k, uniform, True, True
            )
            xr, wr, sr = (t.clone().requires_grad_() for t in (x[ok], w, sc))
            yr = reference.spline_product(xr, knots, wr, k, uniform, sr)
            yr.backward(gy[ok])
            gxr = torch.zeros_like(xr) if xr.grad is None else xr.grad
            got = (("y", y[ok], yr), ("gx", gx, gxr), ("gw", gw, wr.grad), ("gs", gs, sr.grad))
            for name, a, b in got:
                atol = tol * max(1.0, b.abs().max().item())
                torch.testing.assert_close(
                    a, b, rtol=tol, atol=atol, msg=lambda m: f"{strategy} {k} {uniform} "
                    f"{dtype} {name}: {m}"
                )
            if dtype == torch.float32:
                continue
            # Unscaled entry points and the need flags.
            y0 = triton_gpu.forward(x[ok], knots, w, k, uniform)
            torch.testing.assert_close(
                y0, reference.spline_product(x[ok], knots, w, k, uniform), rtol=tol, atol=atol
            )
            only_x = triton_gpu.backward(gy[ok], x[ok], knots, w, None, k, uniform, True, False)
            only_w = triton_gpu.backward(gy[ok], x[ok], knots, w, None, k, uniform, False, True)
            assert only_x[1] is None and only_w[0] is None and only_w[2] is None
print("ok")
"""


@pytest.mark.slow
def test_triton_strategies_in_interpreter():
    """Both strategies ("tiles" and "sparse"), with every loop split into shares as on a GPU, equal
    the reference in Triton's CPU interpreter: values and the x, table and scale gradients, k = 0,
    2, 3, uniform and adapted knots, float64 (1e-10) and float32 (1e-5); NaN in gives NaN out and
    an infinite input no spline part and a zero gradient."""
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONWARNINGS="ignore")
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    code = textwrap.dedent(_INTERPRETER_CHECK)
    out = subprocess.run(
        [sys.executable, "-c", code, tests_dir],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "ok"


# ---------------------------------------------------------------------------- on a CUDA device
def _cuda_problem(k: int, uniform: bool, dtype: torch.dtype, size=(6, 37, 9, 300), seed=0):
    n_in, n_out, grid, batch = size
    g = torch.Generator().manual_seed(seed)
    if uniform:
        knots = uniform_knots(n_in, grid, k, (-1.0, 1.0), dtype=dtype)
    else:
        knots = knots_from_data(
            torch.randn(500, n_in, generator=g, dtype=dtype) * 0.6, grid, k, 0.02
        )
    x = torch.randn(batch, n_in, generator=g, dtype=dtype) * 1.2
    x[:2] = torch.tensor([40.0, -40.0], dtype=dtype).unsqueeze(1)  # far outside
    weight = torch.randn(n_in, grid + k, n_out, generator=g, dtype=dtype)
    scale = torch.rand(n_in, n_out, generator=g, dtype=dtype) + 0.5
    gy = torch.randn(batch, n_out, generator=g, dtype=dtype)
    return x, knots, weight, scale, gy


def _value_and_grads(backend, device, x, knots, weight, scale, gy, k, uniform):
    kernels.set_backend(backend)
    ts = [t.to(device).clone().requires_grad_(True) for t in (x, weight, scale)]
    y = kernels.spline_product(ts[0], knots.to(device), ts[1], k, uniform=uniform, scale=ts[2])
    grads = torch.autograd.grad(y, ts, gy.to(device))
    return [t.detach().cpu() for t in (y, *grads)]


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("strategy", ["sparse", "tiles"])
@pytest.mark.parametrize("uniform", [True, False], ids=["uniform", "adapted"])
@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_cuda_float64_equals_cpu_reference(k, uniform, strategy, monkeypatch):
    """CUDA float64 (both strategies) equals the CPU reference within 1e-10 relative: value and
    the gradients w.r.t. x, the table and the scale."""
    pytest.importorskip("triton")
    monkeypatch.setenv("KANLAB_TRITON_STRATEGY", strategy)
    problem = _cuda_problem(k, uniform, torch.float64)
    want = _value_and_grads("reference", "cpu", *problem, k, uniform)
    got = _value_and_grads("triton", "cuda", *problem, k, uniform)
    for name, a, b in zip(("y", "gx", "gw", "gs"), got, want, strict=True):
        scale = max(1.0, b.abs().max().item())
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10 * scale, msg=name)
    # NaN in, NaN out; +-inf: no spline part (as the CPU kernels and the reference).
    x, knots, weight, scale, _ = problem
    x = x.clone()
    x[5, 1], x[6, 0], x[7, 2] = float("nan"), float("inf"), float("-inf")
    kernels.set_backend("triton")
    y = kernels.spline_product(x.cuda(), knots.cuda(), weight.cuda(), k, uniform=uniform)
    kernels.set_backend("reference")
    want_y = kernels.spline_product(x, knots, weight, k, uniform=uniform)
    assert torch.equal(torch.isnan(y.cpu()), torch.isnan(want_y))
    ok = torch.isfinite(want_y)
    torch.testing.assert_close(y.cpu()[ok], want_y[ok], rtol=1e-10, atol=1e-9)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("strategy", ["sparse", "tiles"])
@pytest.mark.parametrize("uniform", [True, False], ids=["uniform", "adapted"])
@pytest.mark.parametrize("k", [1, 3, 5])
def test_cuda_float32_matches_float64_reference(k, uniform, strategy, monkeypatch):
    """float32 on CUDA (tiles: tf32x3 tensor-core products) within 1e-5 of the float64 CPU
    reference, relative to each result's largest entry; also with several input shares."""
    pytest.importorskip("triton")
    monkeypatch.setenv("KANLAB_TRITON_STRATEGY", strategy)
    for size in ((6, 37, 9, 300), (80, 20, 9, 40)):  # the second splits the inputs
        p64 = _cuda_problem(k, uniform, torch.float64, size=size)
        p32 = [t.float() for t in p64]
        want = _value_and_grads("reference", "cpu", *p64, k, uniform)
        got = _value_and_grads("triton", "cuda", *p32, k, uniform)
        for name, a, b in zip(("y", "gx", "gw", "gs"), got, want, strict=True):
            scale = b.abs().max().item()
            torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-5 * scale, msg=name)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_cuda_compile_fullgraph_matches_eager(backend):
    """torch.compile(fullgraph=True) traces a KAN on CUDA through the op with no graph break."""
    pytest.importorskip("triton")
    torch._dynamo.reset()
    model = kl.KAN([4, 8, 3], seed=0).cuda()
    x = torch.rand(64, 4, device="cuda") * 2 - 1
    eager = model(x)
    eager.pow(2).sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    y = compiled(x)
    y.pow(2).sum().backward()
    torch.testing.assert_close(y, eager, rtol=1e-5, atol=1e-5)
    for p, g in zip(model.parameters(), grads, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
@needs_cuda
def test_cuda_fit_equals_cpu_fit_in_float64():
    """fit() on CUDA (Triton kernels, grid updates to adapted grids, a grid extension) follows the
    CPU run: float64 Adam, the same data and seed, parameters equal to 1e-8."""
    pytest.importorskip("triton")
    ds = kl.datasets.get("paper/exp_sin_sq", n_train=256, n_test=64, dtype=torch.float64)
    models = {}
    for device in ("cpu", "cuda"):
        model = kl.KAN([2, 3, 1], grid_size=4, seed=0, dtype=torch.float64).to(device)
        kl.fit(
            model, ds, optimizer="adam", lr=1e-2, steps=12, grid_update_every=4,
            grid_schedule=[4, 8], progress=False,
        )  # fmt: skip
        models[device] = model
    assert not models["cuda"].layers[0]._uniform  # the adapted-grid kernels ran
    for (name, a), b in zip(
        models["cpu"].state_dict().items(), models["cuda"].state_dict().values(), strict=True
    ):
        if a.is_floating_point():
            torch.testing.assert_close(b.cpu(), a, rtol=1e-8, atol=1e-8, msg=name)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("uniform", [True, False], ids=["uniform", "adapted"])
def test_cuda_kernels_allocate_only_their_results(uniform):
    """A forward allocates y and a backward the gradients, nothing of size batch*in*(k+1): the
    basis lives in registers (peak CUDA memory above the inputs, with 2 MiB for the allocator's
    rounding, against 8 MiB for the sparse basis of this problem)."""
    pytest.importorskip("triton")
    k, batch, n_in, n_out = 3, 8192, 64, 8
    x, knots, weight, scale, gy = (
        t.cuda() for t in _cuda_problem(k, uniform, torch.float32, size=(n_in, n_out, 9, batch))
    )
    kernels.set_backend("triton")
    for _ in range(2):  # the second run is measured (kernels compiled, allocator warm)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        with torch.no_grad():
            y = kernels.spline_product(x, knots, weight, k, uniform=uniform, scale=scale)
        torch.cuda.synchronize()
        forward_extra = torch.cuda.max_memory_allocated() - base
        del y
    slack = 2 * 2**20
    assert forward_extra <= batch * n_out * 4 + slack
    assert batch * n_in * (k + 1) * 4 > 3 * slack  # the basis would not hide in the slack
    from kanlab.kernels import gpu as triton_gpu

    for _ in range(2):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        grads = triton_gpu.backward(gy, x, knots, weight, scale, k, uniform, True, True)
        torch.cuda.synchronize()
        backward_extra = torch.cuda.max_memory_allocated() - base
        del grads
    results = x.numel() + weight.numel() + scale.numel()
    assert backward_extra <= results * 4 + slack
