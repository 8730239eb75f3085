"""fit_batch's fused training step (kanlab.kernels.cpu_batched_loss through
kanlab.train.batch_loop): used where it applies, not used where it must not be, and equal to the
autograd path it replaces.

Oracle: the same fit_batch with the fused step turned off (``fused_loss_applies`` patched to
False: the objective under autograd, as before the fused step), and autograd on the batch's
forward for one evaluation.
"""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch

import kanlab as kl
from kanlab import datasets
from kanlab.model_batch import KANBatch, MLPBatch
from kanlab.train import batch_loop
from kanlab.train.batch_loop import fit_batch, fused_loss_applies, fused_mse_grads

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("numba") is None, reason="numba is not installed"),
    pytest.mark.usefixtures("one_thread"),
]

KAN_CFG = kl.KANConfig(widths=[2, 3, 1], grid_size=3, dtype="float64")
FIELDS = ("train_loss", "test_loss", "train_metric", "test_metric", "reg", "grid_size", "step")


def data(n: int = 120, seed: int = 0, lo: float = -1.0) -> datasets.Dataset:
    f = lambda x: torch.exp(torch.sin(torch.pi * x[:, 0]) + x[:, 1] ** 2)  # noqa: E731
    return datasets.from_function(
        f, 2, n_train=n, n_test=n, seed=seed, ranges=(lo, 1.0), dtype=torch.float64
    )


@pytest.fixture
def calls(monkeypatch):
    """Counts fit_batch's calls of the fused step."""
    count = [0]
    real = batch_loop.fused_mse_grads

    def spy(*args, **kwargs):
        count[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(batch_loop, "fused_mse_grads", spy)
    return count


def autograd_only(monkeypatch) -> None:
    monkeypatch.setattr(batch_loop, "fused_loss_applies", lambda *args: False)


def pruned_batch(seeds) -> KANBatch:
    """A batch with some edges masked (pruned) in both layers."""
    batch = KANBatch.from_config(KAN_CFG, seeds=seeds)
    batch.layers[0].mask[1, 0, 2] = 0.0
    batch.layers[1].mask[0, 1, 0] = 0.0
    return batch


def assert_same(got, want, rel):
    for g, w in zip(got, want, strict=True):
        for name in FIELDS:
            a, b = getattr(g, name), getattr(w, name)
            assert len(a) == len(b) > 0, name
            for u, v in zip(a, b, strict=True):
                assert u == v if isinstance(u, int) else math.isclose(u, v, rel_tol=rel), name


@pytest.mark.parametrize(
    "opts",
    [
        {"optimizer": "adam", "lr": 0.02, "steps": 30, "grid_update_every": 10},
        {"optimizer": "adam", "lr": 0.02, "steps": 20, "batch_size": 50, "grid_schedule": (3, 5)},
        {"optimizer": "lbfgs", "steps": 1, "grid_update_every": 1},
        {"optimizer": "lbfgs", "steps": 1, "weight_decay": 1e-2},
    ],
    ids=["adam-grid-updates", "adam-minibatch-schedule", "lbfgs-first-step", "lbfgs-weight-decay"],
)
@pytest.mark.parametrize("per_model_data", [False, True], ids=["shared-data", "per-model-data"])
def test_fused_step_runs_and_matches_the_autograd_path(opts, per_model_data, calls, monkeypatch):
    """Histories of the fused path equal those of the autograd path (adapted grids after the grid
    updates, masked edges, a grid extension, mini-batches, per-model data sets; LBFGS over its
    first step, whose up to 20 iterations amplify rounding least)."""
    seeds = [0, 1, 2]
    ds = [data(seed=m, lo=-1.0 - 0.3 * m) for m in seeds] if per_model_data else data()
    opts = {**opts, "log_every": 1, "progress": False}
    got = fit_batch(pruned_batch(seeds), ds, **opts)
    evaluations = calls[0]
    assert evaluations >= opts["steps"] * (len(opts.get("grid_schedule") or (0,)))
    autograd_only(monkeypatch)
    want = fit_batch(pruned_batch(seeds), ds, **opts)
    assert calls[0] == evaluations  # (the oracle ran no fused step)
    assert_same(got, want, rel=1e-10)


def test_one_evaluation_equals_autograd_on_the_batch():
    """fused_mse_grads against autograd through the batch's forward: adapted grids (per model),
    masked edges, per-model inputs, LBFGS-like weights; float64 to 1e-12, float32 to 1e-5."""
    batch = pruned_batch([0, 1, 2, 3])
    g = torch.Generator().manual_seed(0)
    batch.update_grid((torch.rand(4, 200, 2, generator=g, dtype=torch.float64) * 2 - 1) ** 3)
    x = torch.rand(4, 150, 2, generator=g, dtype=torch.float64) * 2.2 - 1.1
    y = torch.randn(150, 1, generator=g, dtype=torch.float64)
    weight = torch.tensor([1.0, 10.0, 0.5, 3.0], dtype=torch.float64)
    for dtype, rel in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        batch = batch.to(dtype)
        xd, yd = x.to(dtype), y.to(dtype)
        assert fused_loss_applies(batch, xd)
        loss, grads = fused_mse_grads(batch, xd, yd, weight=weight.to(dtype))
        want = (batch(xd) - yd).pow(2).sum(dim=(1, 2)) / yd.shape[-1] / yd.shape[-2]
        params = [
            getattr(la, n) for la in batch.layers for n in ("coef", "scale_spline", "scale_base")
        ]
        want_grads = torch.autograd.grad((want * weight.to(dtype)).sum(), params)
        torch.testing.assert_close(loss, want.detach(), rtol=rel, atol=0.0)
        for got_g, want_g in zip([t for la in grads for t in la], want_grads, strict=True):
            tol = rel * float(want_g.abs().max())
            torch.testing.assert_close(got_g, want_g, rtol=0.0, atol=tol)


def hooked(batch):
    batch.layers[0].register_forward_hook(lambda module, inputs, out: None)
    return batch


def classes() -> datasets.Dataset:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(80, 2, generator=g, dtype=torch.float64)
    y = (x[:, 0] > x[:, 1]).long()
    return datasets.from_arrays(
        x.numpy(), y.numpy(), test_size=0.25, seed=0, kind="classification", dtype=torch.float64
    )


def mlp_pair(**changes) -> MLPBatch:
    cfg = kl.MLPConfig(widths=[2, 3, 1], dtype="float64").replace(**changes)
    return MLPBatch.from_config(cfg, seeds=[0, 1])


def kan_pair(**changes) -> KANBatch:
    return KANBatch.from_config(KAN_CFG.replace(**changes), seeds=[0, 1])


# where fit_batch must keep the autograd path: (the batch, fit options, the data set)
REFUSED = {
    "sparsity": (kan_pair, {"lamb": 1e-3}, data),
    "classification": (lambda: kan_pair(widths=[2, 3, 2]), {}, classes),
    "forward-hook": (lambda: hooked(kan_pair()), {}, data),
    "grid-too-large": (lambda: kan_pair(grid_size=30), {}, data),
    "mlp-relu": (lambda: mlp_pair(activation="relu"), {}, data),
    "mlp-wide": (lambda: mlp_pair(widths=[2, 21, 1]), {}, data),
    "mlp-classification": (lambda: mlp_pair(widths=[2, 3, 2]), {}, classes),
    "mlp-one-model": (
        lambda: MLPBatch.from_config(kl.MLPConfig(widths=[2, 3, 1], dtype="float64"), seeds=[0]),
        {},
        data,
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_fused_step_not_used_where_it_must_not_be(case, calls):
    make, opts, ds = REFUSED[case]
    got = fit_batch(make(), ds(), optimizer="adam", steps=3, progress=False, **opts)
    assert calls[0] == 0
    assert all(len(h) == 3 for h in got)


def test_free_knot_steps_leave_the_fused_step(calls):
    """The last knot_steps of a stage train the knots too: autograd there, fused before."""
    batch = KANBatch.from_config(KAN_CFG, seeds=[0, 1])
    fit_batch(batch, data(), optimizer="adam", lr=0.02, steps=6, knot_steps=2, progress=False)
    assert calls[0] == 4  # one evaluation per Adam step, the 4 steps before the knots train


def test_several_threads_leave_the_fused_step():
    """With several torch threads the autograd path keeps its parallel kernels."""
    batch, x = KANBatch.from_config(KAN_CFG, seeds=[0, 1]), data().train_x
    assert fused_loss_applies(batch, x)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert not fused_loss_applies(batch, x)
    finally:
        torch.set_num_threads(threads)


# -- MLP batches (kanlab.kernels.cpu_batched_mlp_loss) -----------------------------------------------
def mlp_batch(activation: str, seeds=(0, 1, 2), widths=(2, 5, 4, 1)) -> MLPBatch:
    cfg = kl.MLPConfig(widths=list(widths), activation=activation, dtype="float64")
    return MLPBatch.from_config(cfg, seeds=list(seeds))


@pytest.mark.parametrize("activation", ["silu", "tanh"])
def test_one_mlp_evaluation_equals_autograd_on_the_batch(activation):
    """The fused MLP loss and gradients against autograd through the batch's forward: 3 hidden
    layers, per-model inputs and targets, LBFGS-like weights, a row count that is not a multiple
    of the kernel's block; float64 to 1e-12, float32 to 1e-5."""
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 301, 2, generator=g, dtype=torch.float64) * 4 - 2
    y = torch.randn(3, 301, 2, generator=g, dtype=torch.float64)
    weight = torch.tensor([1.0, 7.0, 0.25], dtype=torch.float64)
    for dtype, rel in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        batch = mlp_batch(activation, widths=(2, 6, 5, 4, 2)).to(dtype)
        xd, yd = x.to(dtype), y.to(dtype)
        assert fused_loss_applies(batch, xd)
        loss, grads = fused_mse_grads(batch, xd, yd, weight=weight.to(dtype))
        want = (batch(xd) - yd).pow(2).sum(dim=(1, 2)) / yd.shape[-1] / yd.shape[-2]
        params = [p for la in batch.layers for p in (la.weight, la.bias)]
        want_grads = torch.autograd.grad((want * weight.to(dtype)).sum(), params)
        torch.testing.assert_close(loss, want.detach(), rtol=rel, atol=0.0)
        for got_g, want_g in zip([t for la in grads for t in la], want_grads, strict=True):
            assert got_g.dtype == dtype and got_g.shape == want_g.shape
            tol = rel * float(want_g.abs().max())
            torch.testing.assert_close(got_g, want_g, rtol=0.0, atol=tol)


@pytest.mark.parametrize("activation", ["silu", "tanh"])
@pytest.mark.parametrize(
    "opts",
    [{"optimizer": "adam", "lr": 0.02, "steps": 25}, {"optimizer": "lbfgs", "steps": 1},
     {"optimizer": "lbfgs", "steps": 1, "weight_decay": 1e-2}],
    ids=["adam", "lbfgs-first-step", "lbfgs-weight-decay"],
)  # fmt: skip
@pytest.mark.parametrize("per_model_data", [False, True], ids=["shared-data", "per-model-data"])
def test_fused_mlp_step_matches_the_autograd_path(activation, opts, per_model_data, calls,
                                                  monkeypatch):  # fmt: skip
    seeds = (0, 1, 2)
    ds = [data(seed=m, lo=-1.0 - 0.3 * m) for m in seeds] if per_model_data else data()
    opts = {**opts, "log_every": 1, "progress": False}
    got = fit_batch(mlp_batch(activation, seeds), ds, **opts)
    assert calls[0] >= opts["steps"]
    evaluations = calls[0]
    autograd_only(monkeypatch)
    want = fit_batch(mlp_batch(activation, seeds), ds, **opts)
    assert calls[0] == evaluations
    fields = [f for f in FIELDS if f != "grid_size"]
    # (LBFGS's 20 iterations amplify rounding: measured 2e-10 with weight decay)
    rel = 1e-10 if opts["optimizer"] == "adam" else 1e-8
    for g, w in zip(got, want, strict=True):
        for name in fields:
            a, b = getattr(g, name), getattr(w, name)
            assert len(a) == len(b) > 0, name
            for u, v in zip(a, b, strict=True):
                assert math.isclose(u, v, rel_tol=rel, abs_tol=1e-300), (name, u, v)
