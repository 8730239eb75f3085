"""Sweeps into trials: tasks x model configurations x seeds, with MLPs size-matched to each KAN.

Fairness: for every KAN configuration and every MLP family (depth x activation) the MLP's widths are
chosen so that its parameter count (or FLOPs) matches the KAN's at its final grid within
``tolerance``; the MLP then gets exactly the KAN's total number of optimiser steps (one stage of
``steps x stages``), the same optimiser, the same data and the same seeds.

A trial is ``(task, model config, fit config, seed)`` (:class:`Trial`): a
:class:`~kanlab.config.KANConfig` or :class:`~kanlab.config.MLPConfig` and a
:class:`~kanlab.config.FitConfig` whose ``steps`` are per stage, as everywhere in kanlab. The sweep
file itself is parsed by :mod:`kanlab.bench.spec` (its names are re-exported here).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kanlab import __version__
from kanlab.bench.spec import (
    DataSpec,
    KANSpec,
    MLPSpec,
    Sweep,
    SweepError,
    builtin_suites,
    load_sweep,
    parse_sweep,
)
from kanlab.bench.tasks import Task, csv_task, load, resolve_tasks
from kanlab.config import FitConfig, KANConfig, MLPConfig, PruneConfig
from kanlab.models import count_flops, count_params
from kanlab.mult import widths_label

__all__ = [
    "TRAINING_SEMANTICS",
    "DataSpec",
    "KANSpec",
    "MLPSpec",
    "SizeMatchWarning",
    "Sweep",
    "SweepError",
    "Trial",
    "builtin_suites",
    "data_spec",
    "expand",
    "load_sweep",
    "match_mlp",
    "parse_sweep",
    "with_csv",
]


class SizeMatchWarning(UserWarning):
    """No MLP of a requested depth matches a KAN's size within the tolerance; that MLP is skipped
    (tiny KANs: parameter counts of small MLPs are too coarse)."""


#: The version of what a trial's configuration *means* to kanlab's training (how data is prepared and
#: scaled, how fit() runs a configuration): part of every trial's key. Bump it whenever the same
#: configuration would train differently, so that a results store written before is not resumed with
#: results computed under the old semantics (its trials run again; a run folder from before holds
#: other settings, so ``kanlab compare`` starts a new one next to it). 2: targets standardised on the
#: training split for every model (issue 18).
TRAINING_SEMANTICS = 2

# Fit options that change an MLP's training (the others are KAN-only and left at their defaults).
_MLP_FIT = ("optimizer", "lr", "batch_size", "loss", "weight_decay", "restarts", "restart_steps")


@dataclass(frozen=True)
class Trial:
    """One model trained once: ``(task, model config, fit config, seed)``, the data it sees, and
    its comparison group. The seed is the model's and the fit's (set in both configs)."""

    task: Task
    model: KANConfig | MLPConfig
    fit: FitConfig  # steps per grid stage; grid_schedule for a KAN with grid extension
    seed: int
    data: DataSpec
    group: str = ""  # label of the KAN configuration this trial is compared within (not in key)
    # a KAN trained sparse, pruned, then through its fit (kanlab.bench.runner.run_trial); None: not
    prune: PruneConfig | None = None

    def __post_init__(self) -> None:
        if self.prune is not None:
            if not isinstance(self.prune, PruneConfig):
                raise TypeError(f"prune must be a PruneConfig or None, got {self.prune!r}")
            if not isinstance(self.model, KANConfig):
                raise ValueError("prune is for KAN trials: an MLP has no edges to prune")
        if self.model.seed != self.seed:
            object.__setattr__(self, "model", self.model.replace(seed=self.seed))
        if self.fit.seed != self.seed:
            object.__setattr__(self, "fit", self.fit.replace(seed=self.seed))

    @property
    def family(self) -> str:
        return "kan" if isinstance(self.model, KANConfig) else "mlp"

    @property
    def widths(self) -> tuple[int | tuple[int, int], ...]:
        return self.model.widths

    @property
    def grid_schedule(self) -> tuple[int, ...]:
        """A KAN's grid size per stage (``()`` for an MLP)."""
        if not isinstance(self.model, KANConfig):
            return ()
        return self.fit.grid_schedule or self.model.layer_grid_sizes()[:1]

    @property
    def data_dtype(self) -> torch.dtype:
        """The dtype of the data the trial trains and is scored on: float64 for a float64 model
        (the data at full precision: nothing caps its error at float32's rounding), float32 for
        every other model (the float32 data such trials have always had; a float16/bfloat16 model
        is fed them as before). Data sets are made in float64 and cast once to this dtype
        (:func:`kanlab.bench.tasks.load`); a float64 trial's key records it (:meth:`config`)."""
        return torch.float64 if self.model.dtype == "float64" else torch.float32

    @property
    def total_steps(self) -> int:
        """Optimiser steps over all stages, plus the restart candidates' (``(restarts + 1) *
        restart_steps`` with ``restarts > 0``: :mod:`kanlab.train.restarts`) and a pruned trial's
        sparse stage (``prune.steps``)."""
        f = self.fit
        pruning = self.prune.steps if self.prune is not None else 0
        return f.total_steps + ((f.restarts + 1) * f.restart_steps if f.restarts else 0) + pruning

    @property
    def label(self) -> str:
        """``kan[2,5,1] G=3>5`` / ``mlp[2,32,1] silu``, a pruned trial's KAN ``kan[2,5,1] G=3>5
        pruned lamb=0.01`` (its widths before pruning); a layer with multiplication nodes reads
        ``2+1x`` (2 sum + 1 multiplication node: :func:`kanlab.mult.widths_label`)."""
        w = widths_label(self.widths)
        if isinstance(self.model, KANConfig):
            pruned = f" pruned lamb={self.prune.lamb:g}" if self.prune is not None else ""
            return f"kan[{w}] G={'>'.join(map(str, self.grid_schedule))}{pruned}"
        return f"mlp[{w}] {self.model.activation}"

    def config(self) -> dict[str, Any]:
        """The canonical configuration: what the store's key hashes, and what reports group by.

        It covers everything that changes the result: the task's data identity (a CSV's content
        hash, a registered set's generator version; :meth:`Task.spec`), the data's size and seed,
        the model and fit configurations, the seed and :data:`TRAINING_SEMANTICS`. Its layout is
        the store's format: ``train.steps`` there is the trial's *total* steps (all stages),
        ``model.grid_schedule`` a KAN's grid per stage; a config field that earlier versions could
        not set appears only when it differs from its default. Stores written before the data
        identity and the semantics version entered the key do not resume: their trials run again.
        A float64 trial's data carry ``"precision": "float64"`` (:attr:`data_dtype`): before it,
        float64 trials trained on float32-rounded data, and their rows are not its results; every
        other trial's key is as it was. A pruned trial adds ``"prune"`` (:class:`PruneConfig`)."""
        f, m = self.fit, self.model
        train: dict[str, Any] = {"optimizer": f.optimizer, "steps": f.total_steps, "lr": f.lr,
                                 "batch_size": f.batch_size, "lamb": f.lamb}  # fmt: skip
        model: dict[str, Any] = {"family": self.family, "widths": list(m.widths)}
        if isinstance(m, KANConfig):
            model.update(grid_schedule=list(self.grid_schedule), spline_order=m.spline_order)
            train.update(grid_update_every=f.grid_update_every,
                         stop_grid_update_step=f.stop_grid_update_step)  # fmt: skip
            model.update(_non_default(m, {"widths", "grid_size", "spline_order", "seed"}))
        else:
            model.update(activation=m.activation)
            model.update(_non_default(m, {"widths", "activation", "seed"}))
        train.update(_non_default(f, {*train, "grid_schedule", "seed", "progress", "log_every"}))
        data: dict[str, Any] = dataclasses.asdict(self.data)
        if self.data_dtype == torch.float64:
            data["precision"] = "float64"
        out = {
            "task": self.task.spec(),
            "data": data,
            "model": model,
            "train": train,
            "seed": self.seed,
            "semantics": TRAINING_SEMANTICS,
            "kanlab_version": __version__,
        }
        if self.prune is not None:  # (absent otherwise: the keys of other trials are unchanged)
            out["prune"] = self.prune.to_dict()
        return out

    @property
    def key(self) -> str:
        from kanlab.bench.store import config_key

        return config_key(self.config())


def _non_default(cfg: Any, skip: set[str]) -> dict[str, Any]:
    """The fields of ``cfg`` (a config) not in ``skip`` whose values differ from the defaults."""
    out = {}
    for f in dataclasses.fields(cfg):
        if f.name in skip or f.default is dataclasses.MISSING:
            continue
        value = getattr(cfg, f.name)
        if value != f.default:
            out[f.name] = cfg.to_dict()[f.name]
    return out


# ---------------------------------------------------------------------------- parameter matching
def match_mlp(
    target: int,
    n_in: int,
    n_out: int,
    depth: int,
    *,
    activation: str = "silu",
    match: str = "params",
    tolerance: float = 0.05,
) -> tuple[int, ...]:
    """Widths ``(n_in, w, ..., w, w_last, n_out)`` of an MLP with ``depth`` hidden layers whose
    parameter count (``match="params"``) or forward FLOPs per sample (``"flops"``) is within
    ``tolerance`` of ``target``.

    Uniform hidden widths are preferred; when no uniform width is close enough (small budgets
    are coarse: one more unit adds ``n_in + n_out + 1`` parameters to a one-layer MLP), the last
    hidden layer may differ (1 to 2w units, as close to w as the tolerance allows), which refines
    the count in steps of about ``w``. Raises
    ``ValueError`` when no MLP of this depth fits (e.g. a target below the smallest MLP)."""
    if match not in ("params", "flops"):
        raise ValueError(f"unknown match {match!r}; valid: flops, params")

    def cost(widths: tuple[int, ...]) -> int:
        cfg = MLPConfig(widths=widths, activation=activation)
        return count_params(cfg) if match == "params" else count_flops(cfg)

    best: tuple[tuple[float, int, float], tuple[int, ...]] | None = None
    for w in range(1, 10_000_000):
        if depth == 1:
            lasts = [w]
        else:
            # the cost is linear in the last hidden width: solve for it, then try its neighbours
            c1 = cost((n_in, *([w] * (depth - 1)), 1, n_out))
            slope = cost((n_in, *([w] * (depth - 1)), 2, n_out)) - c1
            guess = 1 + round((target - c1) / slope)
            lasts = sorted({min(max(v, 1), 2 * w) for v in (guess - 1, guess, guess + 1, w)})
        for last in lasts:
            widths = (n_in, *([w] * (depth - 1)), last, n_out)
            rel = abs(cost(widths) - target) / target
            score = (rel if rel > tolerance else 0.0, abs(w - last), rel)
            if best is None or score < best[0]:
                best = (score, widths)
        # the cheapest MLP of this width already overshoots: wider ones only get further away
        if cost((n_in, *([w] * (depth - 1)), 1 if depth > 1 else w, n_out)) > target * (
            1 + tolerance
        ):
            break
    assert best is not None
    rel = best[0][-1]
    if rel > tolerance:
        raise ValueError(
            f"no MLP with {depth} hidden layer(s) has {match} within {tolerance:.0%} of {target} "
            f"(closest: widths {list(best[1])}, {cost(best[1])}); change the KAN size or depth"
        )
    return best[1]


# ---------------------------------------------------------------------------------- expansion
def _mlp_fit(train: FitConfig, total_steps: int) -> FitConfig:
    """An MLP's fit: the sweep's options that apply to an MLP, ``total_steps`` in one stage."""
    shared = {name: getattr(train, name) for name in _MLP_FIT}
    return FitConfig(**shared, steps=total_steps, log_every=max(1, total_steps), progress=False)


def data_spec(sweep: Sweep, task: Task) -> DataSpec:
    """The data ``task``'s trials use: the sweep's ``[data]`` for a registered set; for a CSV, the
    split's real sizes (rows after the split; the sweep's n_train/n_test apply to synthetic sets
    only) with the sweep's split seed."""
    if not task.is_csv:
        return sweep.data
    ds = load(task, n_train=sweep.data.n_train, n_test=sweep.data.n_test, seed=sweep.data.seed)
    return DataSpec(n_train=int(ds.train_x.shape[0]), n_test=int(ds.test_x.shape[0]),
                    seed=sweep.data.seed)  # fmt: skip


def expand(sweep: Sweep, tasks: Sequence[Task] | None = None) -> list[Trial]:
    """All trials of ``sweep`` (``tasks`` overrides the sweep's task names), without duplicates.

    Loads each task's data once (in this process) to learn its input/output widths. An MLP family
    that cannot match a KAN's size is skipped with a :class:`SizeMatchWarning`."""
    if tasks is None:
        tasks = resolve_tasks(list(sweep.tasks))
    trials: dict[str, Trial] = {}
    for task in tasks:
        ds = load(task, n_train=sweep.data.n_train, n_test=sweep.data.n_test, seed=sweep.data.seed)
        n_in, n_out = ds.n_features, ds.n_outputs
        data = data_spec(sweep, task)
        for hidden in sweep.kan.hidden:
            hidden = task.hidden if hidden is None else hidden
            kan_widths = (n_in, *hidden, n_out)
            for schedule in sweep.kan.grids:
                per_stage = sweep.steps_per_stage(len(schedule))
                kan_fit = sweep.train.replace(
                    steps=per_stage, grid_schedule=tuple(schedule), log_every=max(1, per_stage),
                    progress=False,
                )  # fmt: skip
                kan = KANConfig(widths=kan_widths, grid_size=schedule[0],
                                spline_order=sweep.kan.spline_order)  # fmt: skip
                kan_trial = Trial(task=task, model=kan, fit=kan_fit, seed=0, data=data)
                group = kan_trial.label
                final = kan.replace(grid_size=schedule[-1])  # the size an MLP is matched to
                target = (
                    count_params(final) if sweep.mlp.match == "params"
                    else count_flops(final, mode="dense")
                )  # fmt: skip
                mlp_fit = _mlp_fit(sweep.train, kan_fit.total_steps)
                mlps = []
                for depth in sweep.mlp.depths:
                    for act in sweep.mlp.activations:
                        try:
                            widths = match_mlp(
                                target, n_in, n_out, depth, activation=act,
                                match=sweep.mlp.match, tolerance=sweep.mlp.tolerance,
                            )  # fmt: skip
                        except ValueError as err:
                            warnings.warn(
                                f"task {task.name}, {group}: skipping the {depth}-layer {act} "
                                f"MLP: {err}",
                                SizeMatchWarning,
                                stacklevel=2,
                            )
                            continue
                        mlp = MLPConfig(widths=widths, activation=act)
                        mlps.append(Trial(task=task, model=mlp, fit=mlp_fit, seed=0, data=data))
                for seed in sweep.seeds:
                    for t in (kan_trial, *mlps):
                        t = dataclasses.replace(t, seed=seed, group=group)
                        trials.setdefault(t.key, t)
    return list(trials.values())


def with_csv(sweep: Sweep, path: str | Path, target: str) -> tuple[Sweep, list[Task]]:
    """The sweep retargeted at one CSV task (validated now)."""
    task = csv_task(path, target)
    return sweep.replace(tasks=(task.name,)), [task]
