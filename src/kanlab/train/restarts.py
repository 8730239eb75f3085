"""Restarts: several short starts from fresh initialisations, the one with the lowest *training*
loss kept (the test set never picks the model).

Why: a KAN's basin is set in its first optimiser steps, and some initialisations fall into one that
no amount of training (nor later grid extension) leaves. Measured cases:

- the paper's [2,1,1] KAN on exp(sin(pi x) + y^2) (:mod:`kanlab.bench.paper.scaling`): on about 4
  seeds in 6 the first LBFGS step bends the outer edge into a non-monotone bump over the hidden
  node's range, one input's edge then gets no gradient and the fit stalls at RMSE ~0.5;
- ``paper/exp_sin_4d`` (KAN [4,2,1,1]): about half the initialisations do not split the inputs into
  the pairs (x1, x2), (x3, x4) at G = 3 and the outer edge turns non-monotone
  (``benchmarks/exp_sin_4d.py``).

Which basin a run is in shows within 10-20 LBFGS steps, so a few short starts cost little next to
the grid schedule that follows (a stall then needs all n starts to stall: p^n).

Two entry points share one choice (:func:`_best_start`: a start whose loss is not finite never
wins; the first of equal losses does):

- ``fit(..., restarts=r, restart_steps=s)`` (:func:`choose_start`): candidate 0 is the model as
  given, candidate i a fresh build of its configuration with seed :func:`candidate_seed`; the best
  is loaded into the model, then ``fit`` trains it as usual; ``fit_batch`` does the same per model
  (:func:`choose_start_batch`: candidate r of every model trains in one batch, and each model
  keeps its own best, so model m ends as ``fit`` alone would choose). Off by default in
  :class:`~kanlab.config.FitConfig` (``restarts=0``): it costs ``(r + 1) * s`` extra steps and a
  fresh draw replaces the model's own initialisation, which suits a freshly built model only (a
  pruned or partly symbolic model would lose its structure), and it is measured on the toys above.
- :func:`best_of_starts` (``build(seed) -> model`` for each of ``seeds``, each trained by a whole
  ``fit``): the chosen model, its History and a :class:`StartsRecord` of every start's loss.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from kanlab._checks import check_int
from kanlab.config import FitConfig
from kanlab.models import KAN, MLP, build
from kanlab.train.history import History

__all__ = [
    "SEED_STRIDE",
    "StartsRecord",
    "best_of_starts",
    "candidate_seed",
    "choose_start",
    "choose_start_batch",
]

SEED_STRIDE = (
    1_000_003  # candidate r of seed s draws seed s + r * SEED_STRIDE (distinct for s < it)
)


def candidate_seed(seed: int | None, r: int) -> int | None:
    """The initialisation seed of restart candidate ``r`` (1, 2, ...) of a model seeded ``seed``
    (None stays None: torch's global RNG)."""
    return None if seed is None else seed + r * SEED_STRIDE


@dataclass(frozen=True)
class _Choice:
    best: tuple[nn.Module, History] | None  # None: no start reached a finite loss
    chosen: int  # index of the best start (-1: none)
    losses: tuple[float, ...]  # each start's final training loss (inf: not finite or diverged)
    error: FloatingPointError | None  # the last divergence, if any


def _best_start(candidates: Iterable[nn.Module], train: Callable[[nn.Module], History]) -> _Choice:
    """Train each candidate with ``train`` (one after the other: two models in memory at a time)
    and keep the lowest final training loss; a start that diverges (``NonFiniteLossError``) or
    ends at a non-finite loss never wins; the first of equal losses does."""
    from kanlab.train.loop import NonFiniteLossError

    best: tuple[nn.Module, History] | None = None
    chosen, losses, error = -1, [], None
    for cand in candidates:
        try:
            hist = train(cand)
        except NonFiniteLossError as err:
            error = err
            losses.append(math.inf)
            continue
        loss = hist.train_loss[-1] if len(hist) else math.inf
        losses.append(loss if math.isfinite(loss) else math.inf)
        if losses[-1] < (losses[chosen] if best is not None else math.inf):
            best, chosen = (cand, hist), len(losses) - 1
    return _Choice(best, chosen, tuple(losses), error)


def choose_start(
    model: nn.Module, data: Any, cfg: FitConfig, train: Callable[[nn.Module, FitConfig], History]
) -> list[float]:
    """Train ``cfg.restarts + 1`` candidates ``cfg.restart_steps`` steps each at the model's grid
    (candidate 0: a copy of ``model`` as given; candidate r: the model's configuration with seed
    :func:`candidate_seed`), with ``cfg``'s options but no grid schedule, free knots or progress
    bar; load the best (:func:`_best_start`) into ``model`` (if every candidate diverges, ``model``
    is left as given). ``train(model, cfg)`` is ``fit``.
    Returns each candidate's final training loss (inf: it diverged)."""
    if not isinstance(model, KAN | MLP):
        raise TypeError(f"restarts need a KAN or an MLP (built from its config), got {type(model)}")
    short = _short(cfg)
    p = next(model.parameters())
    config = model.config

    def candidates() -> Iterable[nn.Module]:
        yield copy.deepcopy(model)
        for r in range(1, cfg.restarts + 1):
            yield build(config.replace(seed=candidate_seed(config.seed, r)), device=p.device)

    choice = _best_start(candidates(), lambda cand: train(cand, short))
    if choice.best is not None:
        model.load_state_dict(choice.best[0].state_dict())
    return list(choice.losses)


def _short(cfg: FitConfig) -> FitConfig:
    """A restart candidate's configuration: ``cfg``'s options, ``restart_steps`` steps at the
    model's grid, no grid schedule, free knots or progress bar."""
    return cfg.replace(
        restarts=0, steps=cfg.restart_steps, grid_schedule=None, knot_steps=0, progress=False,
        log_every=cfg.restart_steps,
    )  # fmt: skip


def choose_start_batch(
    batch: Any, cfgs: Sequence[FitConfig], train: Callable[[Any, list[FitConfig]], Any]
) -> list[list[float]]:
    """:func:`choose_start` for each model of a ``KANBatch``/``MLPBatch`` at once: candidate r
    (0: a copy of the batch as given; r >= 1: every model's configuration with seed
    :func:`candidate_seed`) trains as one batch with ``train(candidate, configs)`` (``fit_batch``
    with each model's short configuration); model m keeps its lowest final training loss (a
    diverged model's counts as inf; the first of equal losses wins; if all of model m's
    candidates diverge, it is left as given) and the chosen models are loaded into ``batch``.
    Returns each model's candidate losses."""
    short = [_short(c) for c in cfgs]
    restarts = cfgs[0].restarts
    configs = batch.configs
    device = next(batch.parameters()).device
    M = batch.n_models
    losses: list[list[float]] = [[] for _ in range(M)]
    chosen: list[nn.Module | None] = [None] * M
    for r in range(restarts + 1):
        if r == 0:
            cand = copy.deepcopy(batch)
        else:
            fresh = [
                build(c.replace(seed=candidate_seed(c.seed, r)), device=device) for c in configs
            ]
            cand = type(batch).stack(fresh)
        hists = train(cand, short)
        for m, hist in enumerate(hists):
            loss = hist.train_loss[-1] if len(hist) else math.inf
            if hists.diverged[m] is not None or not math.isfinite(loss):
                loss = math.inf
            best = min(losses[m], default=math.inf)
            losses[m].append(loss)
            if loss < best:
                chosen[m] = cand.unstack_one(m)
    if any(c is not None for c in chosen):
        kept = [c if c is not None else batch.unstack_one(m) for m, c in enumerate(chosen)]
        batch.load_state_dict(type(batch).stack(kept).state_dict())
    return losses


@dataclass(frozen=True)
class StartsRecord:
    """What :func:`best_of_starts` tried: one entry per start, in the order of ``seeds``."""

    seeds: tuple[int, ...]  # the seed each candidate was built with
    train_loss: tuple[float, ...]  # its final training loss (inf: the start diverged)
    chosen: int  # index (into seeds) of the kept start: the lowest training loss, first on ties

    @property
    def chosen_seed(self) -> int:
        return self.seeds[self.chosen]


def best_of_starts(
    build: Callable[[int], nn.Module],
    data: Any,
    *,
    seeds: Sequence[int],
    config: FitConfig | None = None,
    **fit_options: Any,
) -> tuple[nn.Module, History, StartsRecord]:
    """Train ``build(seed)`` for each of ``seeds`` with ``fit(model, data, config, **fit_options)``
    and return ``(model, history, record)`` of the best start (:func:`_best_start`).

    If no start ends at a finite loss, the last divergence is raised (``NonFiniteLossError``)."""
    from kanlab.train.loop import NonFiniteLossError, fit

    if not callable(build):
        raise TypeError(f"build must be a callable seed -> model, got {type(build).__name__}")
    if isinstance(seeds, str | bytes) or not isinstance(seeds, Sequence):
        raise TypeError(f"seeds must be a sequence of ints, got {seeds!r}")
    if len(seeds) == 0:
        raise ValueError("seeds must not be empty: best_of_starts needs at least one start")
    seeds = tuple(check_int(f"seeds[{i}]", s, minimum=0) for i, s in enumerate(seeds))
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct (a repeated seed repeats a start), got {seeds}")

    def candidates() -> Iterable[nn.Module]:
        for seed in seeds:
            model = build(seed)
            if not isinstance(model, nn.Module):
                raise TypeError(
                    f"build({seed}) must return a torch.nn.Module, got {type(model).__name__}"
                )
            yield model

    choice = _best_start(candidates(), lambda m: fit(m, data, config, **fit_options))
    if choice.best is None:
        raise choice.error or NonFiniteLossError(
            f"every start's training loss is non-finite: {choice.losses}"
        )
    return choice.best[0], choice.best[1], StartsRecord(seeds, choice.losses, choice.chosen)
