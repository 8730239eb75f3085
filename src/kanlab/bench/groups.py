"""Which trials can share one batched fit (issue 19): one model and fit configuration, any seeds
and tasks.

Trials share a batch iff everything but the seed and the task is the same: the data's sizes and
split seed, the task's given kind (CSV tasks), the model family and configuration (widths, spline
order, grid, activations, ...) and the fit configuration (optimiser, steps, grid schedule, grid
updates, ...). Each model of a batch trains on its own task's data (the seeds of one task share
it); the runner splits a batch whose tasks' data differ in kind or size (a CSV file's rows, a
bundled set's size) into batches of equal data. The paper suite's 15,216 trials have 229 shapes:
batches of up to 64 instead of the 3 seeds of one configuration. :func:`batch_key` says
so as a string; :func:`group_trials` cuts a list of trials into such groups.

A trial whose fit the batched trainer cannot run as it runs alone gets no key (``None``) and a group
of its own, trained alone as before: mini-batches (``batch_size``: fit draws them in an order seeded
by the trial's seed; a batch shares one order). The runner falls back to single fits if
``fit_batch`` refuses a group (a ``ValueError``, e.g. an option it does not support).

:func:`longest_first` orders groups by :func:`group_cost` (a static guess, no measuring) so that
the runner submits the longest first: on a pool of W workers, groups taken in submission order
then pack like LPT (what :mod:`kanlab.bench.estimate` assumes for its wall time) instead of the
largest groups starting last and running alone at the end.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence

from kanlab.bench.sweep import TRAINING_SEMANTICS, Trial
from kanlab.config import KANConfig
from kanlab.models import count_flops

__all__ = ["batch_key", "group_cost", "group_trials", "longest_first"]


def _batchable(trial: Trial) -> bool:
    # mini-batches: fit draws them in an order seeded by each trial's own seed, but a batch shares
    # one order, so its seeds would not train as they do alone. KANBatch holds no multiplication
    # nodes: such a KAN trains alone.
    # A pruned trial's model changes shape mid-run (seeds prune to different widths): alone.
    return (
        trial.fit.batch_size is None
        and not getattr(trial.model, "has_mult", False)
        and trial.prune is None
    )


def batch_key(trial: Trial) -> str | None:
    """A key equal for two trials iff they can train in one batch (``None``: this trial cannot be
    batched). It hashes the data's sizes and split seed, a task's given kind, the family, the
    model and fit configurations in full except their seed (so widths, spline order, grid, grid
    schedule and activations, and every fit option), and the training semantics; the trial's
    comparison label (``group``) is left out."""
    if not isinstance(trial, Trial):
        raise TypeError(f"batch_key needs a Trial, got {type(trial).__name__}")
    if not _batchable(trial):
        return None
    model = {k: v for k, v in trial.model.to_dict().items() if k != "seed"}
    fit = {k: v for k, v in trial.fit.to_dict().items() if k != "seed"}
    what = {
        "task_kind": trial.task.kind,  # (a task's identity is not in: tasks share batches)
        "data": dataclasses.asdict(trial.data),
        "family": trial.family,
        "model": model,
        "fit": fit,
        "semantics": TRAINING_SEMANTICS,
    }
    text = json.dumps(what, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def group_trials(trials: Sequence[Trial], *, max_size: int = 64) -> list[list[Trial]]:
    """``trials`` cut into batches: each group's trials share a :func:`batch_key`, at most
    ``max_size`` per group (a larger set is split in order); an unbatchable trial is a group of one.

    Stable: groups come in the order of their first trial, and trials keep their order within a
    group; every trial is in exactly one group."""
    if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1:
        raise ValueError(f"max_size must be an int >= 1, got {max_size!r}")
    groups: list[list[Trial]] = []
    open_group: dict[str, list[Trial]] = {}  # batch key -> its last group, while not full
    for trial in trials:
        key = batch_key(trial)
        if key is None:
            groups.append([trial])
            continue
        group = open_group.get(key)
        if group is None or len(group) >= max_size:
            group = open_group[key] = []
            groups.append(group)
        group.append(trial)
    return groups


# group_cost's constants, fitted by eye to the quick suite's 24 groups (201 LBFGS steps, 1000
# points, M = 3 and 6; one run on 2 busy cores): a group step costs a fixed ~0.06 s (Python,
# line search, small torch ops) plus ~0.06 s per 1e6 model-sample-FLOPs, and a KAN ~3x its sparse
# FLOPs (basis, grid updates). Only the order matters: e.g. kan[2,5,1] x6 (106 s) > mlp[2,17,17,1]
# x6 (45 s) > kan[2,1,1] x3 (39-63 s) > mlp[1,4,1,1] x3 (12 s).
_STEP_OVERHEAD_FLOPS = 1e6  # the fixed cost of a group step, in model-sample-FLOPs
_KAN_FACTOR = 3.0


def group_cost(group: Sequence[Trial]) -> float:
    """A relative cost of training ``group`` as one batch, for ordering only (no unit): its
    longest trial's steps times (a fixed cost per step + models x training rows x sparse forward
    FLOPs per sample, x3 for a KAN)."""
    if not group:
        return 0.0
    first = group[0]
    factor = _KAN_FACTOR if isinstance(first.model, KANConfig) else 1.0
    steps = max(t.total_steps for t in group)
    work = len(group) * first.data.n_train * count_flops(first.model, mode="sparse") * factor
    return steps * (_STEP_OVERHEAD_FLOPS + work)


def longest_first(groups: Sequence[Sequence[Trial]]) -> list[Sequence[Trial]]:
    """``groups`` by decreasing :func:`group_cost` (stable: equal costs keep their order)."""
    costs = [group_cost(g) for g in groups]
    order = sorted(range(len(groups)), key=lambda i: -costs[i])
    return [groups[i] for i in order]
