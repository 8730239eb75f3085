"""fit's optimisers are the model batch's (kanlab.train.batched_optim) with one model; oracles: torch's.

Each test drives ``kl.fit`` itself and replays the same objective with ``torch.optim``: LBFGS over
its first step (every evaluation of every inner iteration), Adam(W) over 100 steps of History.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

import kanlab as kl
from kanlab import datasets
from kanlab.train import NonFiniteLossError
from kanlab.train.batched_optim import BatchedLBFGS
from kanlab.train.optim import loss_scale, make_optimizer

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

F64 = torch.float64
KANLAB = {"history_size": 10, "max_iter": 20, "tolerance_grad": 1e-32, "tolerance_change": 1e-32}


def close(a: torch.Tensor | float, b: torch.Tensor | float, rtol: float = 1e-9) -> bool:
    a, b = torch.as_tensor(a, dtype=F64), torch.as_tensor(b, dtype=F64)
    return bool(((a - b).abs() <= rtol * b.abs().clamp(min=1e-12)).all())


def data(n: int = 100) -> datasets.Dataset:
    def f(x: torch.Tensor) -> torch.Tensor:
        return torch.exp(torch.sin(torch.pi * x[:, 0]) + x[:, 1] ** 2)

    return datasets.from_function(f, 2, n_train=n, n_test=n, seed=0, dtype=F64)


def recorder(model: torch.nn.Module, calls: list[tuple[list[torch.Tensor], torch.Tensor]]):
    """A forward hook that records (parameters, output) of every forward call of ``model``."""

    def hook(module, args, out):
        calls.append(([p.detach().clone() for p in module.parameters()], out.detach().clone()))

    return model.register_forward_hook(hook)


def test_fit_lbfgs_first_step_matches_torch_lbfgs():
    """fit's LBFGS is BatchedLBFGS with one model, and its first step (20 inner iterations, every
    line-search evaluation: parameters and loss) is torch.optim.LBFGS(strong_wolfe)'s within 1e-9."""
    ds = data()
    model = kl.KAN([2, 3, 1], grid_size=5, seed=0, dtype=F64)
    ref = copy.deepcopy(model)
    assert isinstance(make_optimizer("lbfgs", list(model.parameters()), 1.0, 0.0), BatchedLBFGS)

    ours: list = []
    handle = recorder(model, ours)
    kl.fit(model, ds, optimizer="lbfgs", steps=1, lr=1.0, grid_update_every=0, progress=False)
    handle.remove()
    ours = ours[:-2]  # (the last two forwards are the History row's evaluation)

    theirs: list = []
    handle = recorder(ref, theirs)
    x, y, n = ds.train_x, ds.train_y, ds.train_x.shape[0]
    scale = loss_scale(ref, x, y, "regression", n)  # fit's first forward, as fit computes it
    opt = torch.optim.LBFGS(list(ref.parameters()), lr=1.0, line_search_fn="strong_wolfe", **KANLAB)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = (ref(x) - y).pow(2).sum() / y.shape[-1] / n * scale
        loss.backward()
        return loss

    opt.step(closure)
    handle.remove()
    assert opt.state[opt.param_groups[0]["params"][0]]["n_iter"] == 20
    assert len(ours) == len(theirs) > 21  # the scale's forward, then every evaluation
    for k, ((p_ours, out_ours), (p_ref, out_ref)) in enumerate(zip(ours, theirs, strict=True)):
        for a, b in zip(p_ours, p_ref, strict=True):
            assert close(a, b), (k, (a - b).abs().max())
        loss_ours, loss_ref = (out_ours - y).pow(2).mean(), (out_ref - y).pow(2).mean()
        assert close(loss_ours, loss_ref), (k, float(loss_ours), float(loss_ref))
    for a, b in zip(model.parameters(), ref.parameters(), strict=True):
        assert close(a.detach(), b.detach())


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_fit_adam_history_matches_torch_adam_100_steps(optimizer):
    ds = data()
    model = kl.KAN([2, 3, 1], grid_size=5, seed=0, dtype=F64)
    ref = copy.deepcopy(model)
    hist = kl.fit(model, ds, optimizer=optimizer, steps=100, lr=1e-2, weight_decay=1e-3,
                  grid_update_every=0, log_every=1, progress=False)  # fmt: skip
    cls = torch.optim.AdamW if optimizer == "adamw" else torch.optim.Adam
    opt = cls(ref.parameters(), lr=1e-2, weight_decay=1e-3)
    x, y, n = ds.train_x, ds.train_y, ds.train_x.shape[0]
    assert len(hist.train_loss) == 100
    for k in range(100):
        opt.zero_grad()
        ((ref(x) - y).pow(2).sum() / y.shape[-1] / n).backward()
        opt.step()
        with torch.no_grad():
            train = math.sqrt(float((ref(x) - y).pow(2).mean()))
            test = math.sqrt(float((ref(ds.test_x) - ds.test_y).pow(2).mean()))
        assert close(hist.train_loss[k], train), (k, hist.train_loss[k], train)
        assert close(hist.test_loss[k], test), (k, hist.test_loss[k], test)
    for a, b in zip(model.parameters(), ref.parameters(), strict=True):
        assert close(a.detach(), b.detach())


class NaNFrom(torch.nn.Module):
    """A linear model whose output is NaN from its ``k``-th forward call on."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([[0.3], [-0.2]], dtype=F64))
        self.k, self.calls = k, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        y = x @ self.w
        return y * math.nan if self.calls >= self.k else y


def test_fit_lbfgs_divergence_in_the_line_search_keeps_the_last_finite_iterate():
    # forward 1: the loss scale; 2: the step's start; 3..: the line searches of step 0
    model = NaNFrom(k=8)
    start = model.w.detach().clone()
    seen: list[torch.Tensor] = []
    model.register_forward_hook(lambda m, a, out: seen.append(m.w.detach().clone()))
    with pytest.raises(NonFiniteLossError, match=r"line search of step 0"):
        kl.fit(model, data(), optimizer="lbfgs", steps=3, progress=False)
    assert model.calls == 8  # it stopped at the first non-finite evaluation
    assert torch.isfinite(model.w).all()
    assert not torch.equal(model.w.detach(), start)  # it had moved ...
    assert any(torch.equal(model.w.detach(), w) for w in seen[1:7])  # ... to an evaluated point
