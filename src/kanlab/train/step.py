"""One training step's maths: the differentiated objective, one optimiser step, evaluation.

Data-parallel runs (see :mod:`kanlab.distributed`) go through the same code: each rank computes its
rows' loss *sums*, divided by the *global* row count, and metrics from sums reduced over ranks.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kanlab import distributed as D
from kanlab.config import FitConfig
from kanlab.regularization import regularizer_from_norms

__all__ = ["Objective", "data_loss_sum", "evaluate", "one_step"]


class Objective(nn.Module):
    """The differentiated forward of a training step, as a module so that ``DistributedDataParallel``
    can wrap it: the prediction and, for the sparsity regulariser, each layer's sums of edge
    magnitudes over the batch ``(out, in)`` (means need the global row count)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, with_norms: bool) -> tuple[Tensor, list[Tensor]]:
        if not with_norms:
            return self.model(x), []
        acts = self.model.activations(x)  # list of (batch, out, in)
        pred = acts[-1].sum(-1)  # the last layer's outputs: its subnodes with multiplication nodes
        if getattr(self.model, "has_mult", False):
            pred = self.model.nodes_of(len(acts) - 1, pred)
        return pred, [a.abs().sum(dim=0) for a in acts]


def data_loss_sum(pred: Tensor, y: Tensor, kind: str) -> Tensor:
    """The loss summed over rows (MSE: averaged over outputs); divide by the row count for the mean."""
    if kind == "classification":
        return F.cross_entropy(pred, y, reduction="sum")
    return (pred - y).pow(2).sum() / y.shape[-1]


def one_step(
    net: nn.Module, opt: Any, cfg: FitConfig, data: Any, x: Tensor, y: Tensor,
    idx: Tensor | None, kind: str, params: list[nn.Parameter], scale: float,
) -> tuple[float, float]:  # fmt: skip
    """One optimiser step; returns (objective, reg) at the parameters before the step. The
    optimiser (:func:`kanlab.train.optim.make_optimizer`'s) minimises ``scale * objective`` (see
    :func:`kanlab.train.optim.loss_scale`); LBFGS takes the closure's scalar as its one model's loss.

    ``x, y`` are this rank's rows of the full training set (used when ``idx`` is None); ``idx`` is a
    global mini-batch, of which this rank takes its contiguous block. The data term is this rank's
    loss sum over the *global* batch size, times the world size because DDP averages gradients; the
    regulariser sees edge norms all-reduced with autograd (its backward sums over ranks, which DDP's
    average undoes); the value LBFGS sees is the global objective, the same on every rank.
    """
    if idx is None:
        xb, yb, n_batch = x, y, data.train_x.shape[0]
    else:
        lo, hi = D.shard_bounds(idx.shape[0])  # may be empty for a short last batch
        local = idx[lo:hi]
        xb, yb, n_batch = data.train_x[local], data.train_y[local], idx.shape[0]
    world = D.world_size()
    lamb, lbfgs = cfg.lamb, cfg.optimizer == "lbfgs"
    first: list[tuple[float, float]] = []

    def closure() -> Tensor:
        opt.zero_grad(set_to_none=True)
        pred, norm_sums = net(xb, with_norms=lamb > 0)
        data_term = data_loss_sum(pred, yb, kind) / n_batch  # this rank's share of the mean
        extra = data_term.new_zeros(())
        reg = None
        if lamb > 0:
            norms = [D.all_reduce_sum_autograd(n) / n_batch for n in norm_sums]
            reg = regularizer_from_norms(norms, lamb_l1=cfg.lamb_l1, lamb_entropy=cfg.lamb_entropy)
            extra = extra + lamb * reg
        if lbfgs and cfg.weight_decay > 0:
            extra = extra + 0.5 * cfg.weight_decay * sum(p.pow(2).sum() for p in params)
        value = D.all_reduce_sum(data_term.detach()) + extra.detach()  # the global objective
        if not first:
            first.append((float(value), float(reg.detach()) if reg is not None else 0.0))
        if torch.isfinite(value):
            ((world * data_term + extra) * scale).backward()
        return value * scale

    if lbfgs:
        opt.step(closure)
    else:
        closure()
        if math.isfinite(first[0][0]):
            opt.step()
    return first[0]


@torch.no_grad()
def evaluate(model: nn.Module, data: Any, kind: str) -> tuple[float, float, float, float]:
    """(train_loss, test_loss, train_metric, test_metric) from sums reduced across ranks."""
    sums: dict[str, float] = {}
    for split in ("train", "test"):
        x, y = getattr(data, f"{split}_x"), getattr(data, f"{split}_y")
        if x.shape[0] >= D.world_size():  # (else every rank counts all rows: the ratio holds)
            x, y = D.shard(x, y)
        pred = model(x) if x.shape[0] else None
        sums[f"{split}_n"] = float(x.shape[0])
        if pred is None:
            sums[f"{split}_a"] = sums[f"{split}_b"] = 0.0
        elif kind == "classification":
            sums[f"{split}_a"] = float(F.cross_entropy(pred, y, reduction="sum"))
            sums[f"{split}_b"] = float((pred.argmax(-1) == y).sum())
        else:
            sums[f"{split}_a"] = float((pred - y).pow(2).sum() / y.shape[-1])
            sums[f"{split}_b"] = 0.0
    sums = D.reduce_sums(sums, data.train_x.device)
    out = []
    for split in ("train", "test"):
        n = sums[f"{split}_n"]
        mean = sums[f"{split}_a"] / n if n else math.nan
        if kind == "classification":
            out.append((mean, sums[f"{split}_b"] / n if n else math.nan))
        else:
            out.append((math.sqrt(mean), math.sqrt(mean)))
    return out[0][0], out[1][0], out[0][1], out[1][1]
