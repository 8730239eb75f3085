"""The fused hidden MLP layer of a model batch (kanlab.kernels.cpu_batched_mlp).

Oracle: ``silu(baddbmm(bias, x, weight^T))`` in plain torch (autograd), and each model alone
through MLPBatch.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

import kanlab as kl
from kanlab.model_batch import MLPBatch

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("numba") is None, reason="numba is not installed"
)

F64 = torch.float64


@pytest.fixture(autouse=True)
def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _fm():
    from kanlab.kernels import cpu_batched_mlp

    return cpu_batched_mlp


def case(n_models=3, batch=300, n_in=2, n_out=7, *, shared=False, seed=0, scale=3.0):
    """x, weight (M, out, in), bias (M, out); pre-activations over about [-15, 15] (both tails
    of the SiLU's exp), all requiring grad."""
    g = torch.Generator().manual_seed(seed)
    shape = (batch, n_in) if shared else (n_models, batch, n_in)
    x = (torch.rand(shape, generator=g, dtype=F64) * 2 - 1) * scale
    weight = torch.randn(n_models, n_out, n_in, generator=g, dtype=F64) * 2
    bias = torch.randn(n_models, n_out, generator=g, dtype=F64)
    return tuple(t.requires_grad_() for t in (x, weight, bias))


def reference(x, weight, bias):
    xb = x if x.dim() == 3 else x.unsqueeze(0).expand(weight.shape[0], *x.shape)
    return torch.nn.functional.silu(torch.baddbmm(bias.unsqueeze(1), xb, weight.transpose(1, 2)))


def run(x, weight, bias):
    return _fm().linear_act(x, weight, bias, activation="silu")


@pytest.mark.parametrize("shared", [False, True], ids=["per-model-x", "shared-x"])
@pytest.mark.parametrize("n_in", [1, 2, 5, 8])
def test_forward_and_gradients_equal_the_reference(shared, n_in):
    x, weight, bias = case(n_in=n_in, shared=shared, batch=300)  # 300: a partial last block
    y = run(x, weight, bias)
    expected = reference(x, weight, bias)
    torch.testing.assert_close(y, expected, rtol=1e-13, atol=1e-13)
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(5), dtype=F64)
    got = torch.autograd.grad(y, (x, weight, bias), gy)
    want = torch.autograd.grad(expected, (x, weight, bias), gy)
    for name, a, b in zip(("x", "weight", "bias"), got, want, strict=True):
        assert a.shape == b.shape, name
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-11, msg=name)


@pytest.mark.parametrize("shared", [False, True], ids=["per-model-x", "shared-x"])
def test_gradcheck_float64(shared):
    x, weight, bias = case(n_models=2, batch=9, n_in=2, n_out=3, shared=shared, seed=1)
    assert torch.autograd.gradcheck(run, (x, weight, bias), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("shared", [False, True], ids=["per-model-x", "shared-x"])
def test_data_x_takes_the_one_pass_parameter_gradients(shared):
    """x without grad (a first layer): the weight and bias gradients come from the one-pass
    kernel; equal to the reference, and gradcheck in float64."""
    x, weight, bias = case(n_in=3, shared=shared, batch=300, seed=4)
    x = x.detach()
    y = run(x, weight, bias)
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(6), dtype=F64)
    got = torch.autograd.grad(y, (weight, bias), gy)
    want = torch.autograd.grad(reference(x, weight, bias), (weight, bias), gy)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-11)
    small = case(n_models=2, batch=9, n_in=2, n_out=3, shared=shared, seed=7)
    xs = small[0].detach()
    assert torch.autograd.gradcheck(lambda w, b: run(xs, w, b), small[1:], eps=1e-6, atol=1e-7)


def test_extreme_and_nan_pre_activations():
    x, weight, bias = (t.detach() for t in case(n_models=2, batch=20, seed=2))
    x = x.clone()
    x[0, 3, 0] = float("nan")
    x[1, 4] = 500.0  # silu's exp is clamped: large outputs stay finite and exact
    x[1, 5] = -500.0
    y = run(x, weight, bias)
    expected = reference(x, weight, bias)
    assert torch.isnan(y[0, 3]).all() and int(torch.isnan(y).sum()) == y.shape[2]
    ok = ~torch.isnan(expected)
    torch.testing.assert_close(y[ok], expected[ok], rtol=1e-13, atol=1e-13)


def test_float32_matches_the_reference():
    x, weight, bias = (t.detach().float() for t in case(seed=3))
    y = run(x, weight, bias)
    assert y.dtype == torch.float32
    expected = reference(x.double(), weight.double(), bias.double())
    torch.testing.assert_close(y.double(), expected, rtol=1e-5, atol=1e-5)


def test_empty_batch_and_bad_input():
    x, weight, bias = case()
    empty = x[:, :0].detach().requires_grad_()
    y = run(empty, weight, bias)
    assert y.shape == (3, 0, 7)
    gx, gw, gb = torch.autograd.grad(y.sum(), (empty, weight, bias))
    assert gx.shape == empty.shape and not gw.any() and not gb.any()
    with pytest.raises(ValueError, match=r"x must be \(batch, 2\) or \(3, batch, 2\)"):
        run(x[:1], weight, bias)
    with pytest.raises(ValueError, match="bias must be"):
        run(x, weight, bias[:, :3])
    with pytest.raises(ValueError, match="at most 8 inputs"):
        run(torch.zeros(3, 4, 9, dtype=F64), torch.zeros(3, 7, 9, dtype=F64), bias)
    with pytest.raises(ValueError, match="activations"):
        _fm().linear_act(x, weight, bias, activation="tanh")


@pytest.mark.parametrize(
    ("widths", "n_fused"),
    [([2, 600, 1], 1), ([1, 4, 600, 1], 1), ([2, 5, 1], 0), ([2, 9, 9, 1], 0)],
)
def test_mlp_batch_runs_the_fused_layer_where_it_pays_and_matches_each_model_alone(
    widths, n_fused, monkeypatch
):
    """MLPBatch (4 models, one thread) calls the fused layer for hidden layers with at most 8
    inputs and M x out >= 2048 (the second case: a layer whose x needs a gradient), and each
    model's output and gradients equal that MLP alone to rounding either way."""
    fm = _fm()
    calls = []
    real = fm.linear_act
    monkeypatch.setattr(fm, "linear_act", lambda *a, **k: calls.append(1) or real(*a, **k))
    cfg = kl.MLPConfig(widths=widths, dtype="float64")
    models = [kl.build(cfg.replace(seed=s)) for s in range(4)]
    batch = MLPBatch.stack(models)
    x = torch.rand(50, widths[0], generator=torch.Generator().manual_seed(0), dtype=F64) * 2 - 1
    y = batch(x)
    assert len(calls) == n_fused
    y.square().sum().backward()
    for m, model in enumerate(models):
        ym = model(x)
        torch.testing.assert_close(y[m], ym, rtol=1e-13, atol=1e-13)
        ym.square().sum().backward()
        for (name, p), pb in zip(model.named_parameters(), _params_of(batch, m), strict=True):
            torch.testing.assert_close(pb, p.grad, rtol=1e-11, atol=1e-12, msg=name)


def _params_of(batch, m):
    for lin in batch.layers:
        yield lin.weight.grad[m]
        yield lin.bias.grad[m]
