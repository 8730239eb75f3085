"""Best of several short starts: train one candidate model per seed for a few steps, keep the one
with the lowest training loss (the validation-free choice: the test set never picks the model).

Why: a KAN's basin is set in its first optimiser steps. On ``paper/exp_sin_4d`` (KAN [4,2,1,1]) about
half the initialisations fall into a local minimum at the first grid (G = 3) that no later grid
extension leaves: the inner layer does not split the inputs into the pairs (x1, x2), (x3, x4) and the
outer edge turns non-monotone (see ``benchmarks/exp_sin_4d.py``). Which basin a start is in shows
after ~10 LBFGS steps (training RMSE ~1e-2 against >= 0.16 there), so a few short starts cost little
next to the grid schedule that follows and make a stall unlikely (p^n for n starts that each stall
with probability p).

:func:`best_of_starts` takes a ``build(seed) -> model`` factory and the options of
:func:`kanlab.fit`; it returns the chosen model (trained), its History and a :class:`StartsRecord`
of every start's loss. With one seed it is ``fit(build(seed), data, ...)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from kanlab._checks import check_int
from kanlab.config import FitConfig
from kanlab.train.history import History
from kanlab.train.loop import NonFiniteLossError, fit

__all__ = ["StartsRecord", "best_of_starts"]


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
    and return ``(model, history, record)`` of the start with the lowest final training loss.

    A start whose loss becomes non-finite (:class:`kanlab.train.NonFiniteLossError`) counts as
    infinitely bad; if every start does, the last error is raised. The starts run one after the
    other (each a fresh model), so memory is that of two models at a time.
    """
    if not callable(build):
        raise TypeError(f"build must be a callable seed -> model, got {type(build).__name__}")
    if isinstance(seeds, str | bytes) or not isinstance(seeds, Sequence):
        raise TypeError(f"seeds must be a sequence of ints, got {seeds!r}")
    if len(seeds) == 0:
        raise ValueError("seeds must not be empty: best_of_starts needs at least one start")
    seeds = tuple(check_int(f"seeds[{i}]", s, minimum=0) for i, s in enumerate(seeds))
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct (a repeated seed repeats a start), got {seeds}")
    best: tuple[nn.Module, History] | None = None
    chosen = -1
    losses: list[float] = []
    error: NonFiniteLossError | None = None
    for seed in seeds:
        model = build(seed)
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"build({seed}) must return a torch.nn.Module, got {type(model).__name__}"
            )
        try:
            history = fit(model, data, config, **fit_options)
        except NonFiniteLossError as err:
            error = err
            losses.append(math.inf)
            continue
        loss = history.train_loss[-1] if len(history) else math.inf
        loss = loss if math.isfinite(loss) else math.inf
        if best is None or loss < losses[chosen]:
            best, chosen = (model, history), len(losses)
        losses.append(loss)
    if best is None:
        assert error is not None
        raise error
    return best[0], best[1], StartsRecord(seeds, tuple(losses), chosen)
