"""Restarts: several short starts from fresh initialisations, the best by training loss kept.

Why: some initialisations fall into a basin that no amount of training leaves. The measured case is
the paper's [2,1,1] KAN on exp(sin(pi x) + y^2) (:mod:`kanlab.bench.paper.scaling`): on about 4 seeds
in 6 the first LBFGS step bends the outer edge into a non-monotone bump over the hidden node's
range, one input's edge then gets no gradient and the fit stalls at RMSE ~0.5 for good. Which basin
a run falls into shows within a few dozen steps, so a few short starts and keeping the best is a
cheap, general remedy. It is off by default in :class:`~kanlab.config.FitConfig` (``restarts=0``):
it costs ``(restarts + 1) * restart_steps`` extra steps and a fresh draw replaces the model's own
initialisation, which suits a freshly built model only (a pruned or partly symbolic model would lose
its structure), and it is measured on that toy alone.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

from torch import nn

from kanlab.config import FitConfig
from kanlab.models import KAN, MLP, build
from kanlab.train.history import History

__all__ = ["SEED_STRIDE", "candidate_seed", "choose_start"]

SEED_STRIDE = (
    1_000_003  # candidate r of seed s draws seed s + r * SEED_STRIDE (distinct for s < it)
)


def candidate_seed(seed: int | None, r: int) -> int | None:
    """The initialisation seed of restart candidate ``r`` (1, 2, ...) of a model seeded ``seed``
    (None stays None: torch's global RNG)."""
    return None if seed is None else seed + r * SEED_STRIDE


def choose_start(
    model: nn.Module, data: Any, cfg: FitConfig, train: Callable[[nn.Module, FitConfig], History]
) -> list[float]:
    """Train ``cfg.restarts + 1`` candidates ``cfg.restart_steps`` steps each at the model's grid
    (candidate 0: a copy of ``model`` as given; candidate r: the model's configuration with seed
    :func:`candidate_seed`), with ``cfg``'s options but no grid schedule, free knots or progress
    bar; load the one with the lowest final training loss into ``model`` (the first on a tie; a
    candidate whose loss turns non-finite never wins; if all do, ``model`` is left as given).
    ``train(model, cfg)`` is ``fit``.
    Returns each candidate's final training loss (inf: it diverged)."""
    if not isinstance(model, KAN | MLP):
        raise TypeError(f"restarts need a KAN or an MLP (built from its config), got {type(model)}")
    from kanlab.train.loop import NonFiniteLossError

    short = cfg.replace(
        restarts=0, steps=cfg.restart_steps, grid_schedule=None, knot_steps=0, progress=False,
        log_every=cfg.restart_steps,
    )  # fmt: skip
    p = next(model.parameters())
    config = model.config
    losses: list[float] = []
    best, best_loss = None, math.inf
    for r in range(cfg.restarts + 1):
        if r == 0:
            cand = copy.deepcopy(model)
        else:
            cand = build(config.replace(seed=candidate_seed(config.seed, r)), device=p.device)
        try:
            loss = train(cand, short).train_loss[-1]
        except NonFiniteLossError:
            loss = math.inf
        losses.append(loss if math.isfinite(loss) else math.inf)
        if losses[-1] < best_loss:
            best, best_loss = cand, losses[-1]
    if best is not None:  # (every candidate diverged: the model stays as given)
        model.load_state_dict(best.state_dict())
    return losses
