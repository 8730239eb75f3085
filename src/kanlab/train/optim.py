"""The optimiser set-up of a training stage: the optimiser, the LBFGS loss scale, the batch order."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn

from kanlab import distributed as D
from kanlab.train.batched_optim import BatchedLBFGS, batched_adam
from kanlab.train.step import data_loss_sum

__all__ = ["batches", "loss_scale", "make_optimizer"]


def make_optimizer(
    name: str,
    params: list[nn.Parameter],
    lr: float,
    weight_decay: float,
    extra: Sequence[nn.Parameter] = (),
) -> BatchedLBFGS | torch.optim.Optimizer:
    """The optimiser over ``params`` and ``extra`` (free-knot logits: never weight-decayed).

    The model batch's optimisers (:mod:`kanlab.train.batched_optim`) with one model, so that ``fit``
    and ``fit_batch`` run the same code: LBFGS is :class:`BatchedLBFGS` on the model's parameters
    as they are (``stacked=False``: a leading model dimension of 1, read through reshapes that share
    their storage); Adam(W) is :func:`batched_adam`.
    """
    if name == "lbfgs":  # (weight decay is a term of the closure's objective, on params only)
        # As the official KAN code: history 10, strong-Wolfe line search, up to 20 inner iterations
        # per step, and tolerances that never stop early (steps stay comparable with the paper's).
        return BatchedLBFGS(
            [*params, *extra],
            n_models=1,
            stacked=False,
            lr=lr,
            history_size=10,
            max_iter=20,
            line_search_fn="strong_wolfe",
            tolerance_grad=1e-32,
            tolerance_change=1e-32,
        )
    return batched_adam(
        params, lr=lr, weight_decay=weight_decay, decoupled=name == "adamw", no_decay=extra
    )


@torch.no_grad()
def loss_scale(model: nn.Module, x: Tensor, y: Tensor, kind: str, n_global: int) -> float:
    """A constant factor for the LBFGS objective of one stage: 1 / (data loss at the stage start).

    LBFGS (torch's rule, which BatchedLBFGS follows) skips its curvature update when
    ``y.s <= 1e-10`` (a fixed threshold); near the accuracies the KAN paper reaches (MSE ~ 1e-10)
    that would disable the quasi-Newton update and stall training. A constant factor changes
    neither the minimiser nor the strong-Wolfe steps. Only ever scales up (never below 1), at most
    by 1e12.
    """
    base = float(D.all_reduce_sum(data_loss_sum(model(x), y, kind)) / n_global)
    if not math.isfinite(base) or base <= 0.0 or base >= 1.0:
        return 1.0
    return min(1.0 / base, 1e12)


def batches(n: int, batch_size: int | None, gen: torch.Generator) -> Iterator[Tensor | None]:
    """Index batches from shuffled epochs, forever; ``None`` means the full set."""
    if batch_size is None or batch_size >= n:
        while True:
            yield None
    while True:
        perm = torch.randperm(n, generator=gen)
        yield from perm.split(batch_size)
