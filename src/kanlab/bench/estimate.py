"""How long a sweep will take, from throughput measured just now: :func:`estimate`.

    est = estimate(pending, workers=2, batched=True)
    print(est.line())  # estimate: 90 trials in 30 batched groups, ~0.05 core-hours (...)

The model. Trials run in *groups*: with ``batched=True`` the runner's groups
(:func:`kanlab.bench.groups.group_trials`: trials that differ only in seed, trained by one
``fit_batch``), else one trial per group (one ``fit`` each). A group of M models costs, summed over
the stages of its grid schedule (:func:`stages`; one stage without a schedule),

    stage seconds = steps of the stage x step_seconds(shape at the stage's G, M)
                    + grid updates of the stage x update_seconds(shape at the stage's G, M)

where a *shape* is what a step's cost depends on: family, widths, M, training rows, optimiser, MLP
activation, dtype, whether a KAN's grid is adapted (``grid_update_every > 0``: the interval
search of a non-uniform grid costs about 2x a uniform one's), and a KAN's grid size G. G matters:
the batched fused kernel only takes G + k <= 24 (larger grids run per-model sparse kernels: a
step of [2,5,1] x3 on 1000 rows ~20-40 ms at G <= 20, ~150-200 ms at G = 50-200), and a grid
update or extension fits every coefficient table by least squares whose size grows with G (~16 ms
at G = 3, ~0.5 s at G = 200); charging every stage at the first grid's cost read 3-5x under for a
G = 3..200 schedule. Grid updates per stage: steps ``s`` below ``stop_grid_update_step`` with
``s % grid_update_every == 0``; the extension that starts a stage after the first is counted as
one more update of that stage, at its (new) grid. Restart candidates' steps
(:mod:`kanlab.train.restarts`) are charged at the first stage's grid.

Measured: for each shape, :func:`calibrate` trains a real model (``fit`` for M = 1, ``fit_batch``
on a KANBatch/MLPBatch otherwise) of a representative trial's configuration on that trial's own
prepared data for ``steps`` LBFGS (or Adam) steps, with one torch thread as trials run, after a
forward/backward that loads the kernels and one timed grid update that adapts the grid; times are
the calling thread's CPU seconds (trials run on one thread: the core seconds a trial needs, however
busy the machine),
the step's including fit's per-call evaluations. An LBFGS step is up to 20
iterations (~22 evaluations); early steps of a fresh model use them all, as do most later ones
(kanlab's tolerances are 1e-32), so early steps are representative. To keep the calibration to
seconds, shapes are grouped into *kinds* (the same family, layer count, M, rows, optimiser,
activation, dtype, adapted grid); per kind only the cheapest and the most expensive widths by sparse
FLOPs per sample are measured, each at every grid size G that a stage of that kind trains at (a
model of that G: the fused-kernel limit makes the cost jump between grids, so it is measured, not
guessed); the other widths are interpolated linearly in FLOPs between them at the same G, and a G
not measured (only through :func:`interpolate` called directly) linearly in G between the measured
grids that bracket it (:func:`interpolate`; flagged ``measured=False`` in
:attr:`Estimate.throughput`). Measurements are cached per shape (widths, M, ..., G) in ``cache``
across calls. A cold JIT cache is compiled first, announced on the ``kanlab.bench`` logger as
the runner announces it (``compiling CPU kernels (first run only)...``).

Left out (each small next to the steps of a trial of 45+ LBFGS steps): loading and preparing the
data, the per-stage evaluations (loss scale, logged errors), building models, storing results,
starting worker processes and loading their kernels; the cost of a line search that ends early. The
wall time on ``workers`` packs the groups longest first onto the least busy worker (one core each:
trials run with one torch thread), so a few large groups on many workers are not divided.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass

from kanlab.bench.sweep import Trial
from kanlab.config import FitConfig, KANConfig
from kanlab.models import count_flops
from kanlab.mult import widths_label

__all__ = [
    "Estimate",
    "Shape",
    "Throughput",
    "calibrate",
    "estimate",
    "grid_updates",
    "group_seconds",
    "interpolate",
    "makespan",
    "shape_of",
    "stages",
]

Measure = Callable[[Trial, int], tuple[float, float]]


@dataclass(frozen=True)
class Shape:
    """What the cost of one optimiser step of a group depends on (see the module docstring)."""

    family: str  # "kan" or "mlp"
    widths: tuple[int, ...]
    n_models: int  # M: models trained together (1: fit, unbatched)
    n_train: int  # training rows (full-batch LBFGS evaluates all of them)
    optimizer: str
    activation: str  # an MLP's activation; "" for a KAN
    dtype: str  # the model config's dtype ("" : torch's default)
    adapted: bool  # a KAN whose grid is updated, hence non-uniform, while it trains
    flops: int  # sparse forward FLOPs per sample of one model (interpolation coordinate)
    grid: int = 0  # a KAN's grid size G in the stage this cost is for (0 for an MLP)

    @property
    def kind(self) -> tuple[Hashable, ...]:
        """Shapes of one kind are interpolated between by FLOPs."""
        fields = (self.family, len(self.widths) - 1, self.n_models, self.n_train, self.optimizer,
                  self.activation, self.dtype, self.adapted)  # fmt: skip
        return fields

    @property
    def label(self) -> str:
        w = widths_label(self.widths)
        g = f" G={self.grid}" if self.grid else ""
        return f"{self.family}[{w}]{g} x{self.n_models}"


@dataclass(frozen=True)
class Throughput:
    """The measured (or interpolated) cost of one shape."""

    shape: Shape
    step_seconds: float  # one optimiser step of all M models together
    update_seconds: float  # one grid update of all M models (0 for an MLP)
    measured: bool  # False: interpolated between measured shapes of its kind

    @property
    def model_steps_per_second(self) -> float:
        """Optimiser steps per second, counted per model (M per group step)."""
        return self.shape.n_models / self.step_seconds if self.step_seconds > 0 else math.inf


@dataclass(frozen=True)
class Estimate:
    """The estimated cost of running ``trials`` (see the module docstring for the model)."""

    trials: int
    groups: int
    batched: bool
    workers: int
    core_seconds: float  # the sum of every group's estimated seconds (one core each)
    wall_seconds: float  # on ``workers`` cores: groups packed longest first
    calibration_seconds: float  # what measuring took, now (0 when everything was cached)
    measured: int  # shapes measured (the others interpolated)
    throughput: tuple[Throughput, ...]  # per shape
    method: str  # how it was measured, one line

    def line(self) -> str:
        """One line for a person: ``estimate: 15,012 trials in 5,004 batched groups, ...``."""
        how = "batched groups" if self.batched else "unbatched fits"
        return (
            f"estimate: {self.trials:,} trials in {self.groups:,} {how}, "
            f"~{_hours(self.core_seconds)} core-hours (~{_duration(self.wall_seconds)} on "
            f"{self.workers} worker{'s' if self.workers != 1 else ''}), from throughput measured "
            f"just now ({self.calibration_seconds:.1f} s, {self.measured} of "
            f"{len(self.throughput)} shapes)"
        )


def _hours(seconds: float) -> str:
    h = seconds / 3600
    return f"{h:,.1f}" if h >= 1 else f"{h:.2g}"


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:,.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.0f} s"


# --------------------------------------------------------------------------- pure arithmetic
def grid_updates(fit: FitConfig, family: str) -> int:
    """Grid updates plus grid extensions a trial with ``fit`` runs (0 for an MLP)."""
    if family != "kan":
        return 0
    per_stage = 0
    every = fit.grid_update_every or 0
    if every > 0:
        stop = fit.steps if fit.stop_grid_update_step is None else fit.stop_grid_update_step
        per_stage = len(range(0, min(fit.steps, stop), every))
    return per_stage * fit.n_stages + (fit.n_stages - 1)


def stages(trial: Trial) -> list[tuple[int, int, int]]:
    """``(grid, steps, grid updates)`` of each stage of ``trial`` (grid 0 for an MLP): the first
    stage also trains the restart candidates' steps; a later one counts its grid extension as one
    update. The steps add up to ``trial.total_steps``, the updates to :func:`grid_updates`."""
    fit = trial.fit
    grids = trial.grid_schedule or (0,)
    total = grid_updates(fit, trial.family)
    per_stage = (total - (fit.n_stages - 1)) // fit.n_stages
    extra = trial.total_steps - fit.total_steps  # restart candidates, before the first stage
    return [(g, fit.steps + (extra if i == 0 else 0), per_stage + (i > 0 and trial.family == "kan"))
            for i, g in enumerate(grids)]  # fmt: skip


def group_seconds(group: Sequence[Trial], tp: Throughput | Mapping[int, Throughput]) -> float:
    """Estimated seconds of one group (trained together): its longest trial's, each stage's steps
    and updates at the cost of that stage's grid (``tp``: one per grid size, or one for all)."""

    def cost(trial: Trial) -> float:
        total = 0.0
        for grid, steps, updates in stages(trial):
            t = tp if isinstance(tp, Throughput) else _at(tp, grid)
            total += steps * t.step_seconds + updates * t.update_seconds
        return total

    return max(cost(t) for t in group)


def _at(tp: Mapping[int, Throughput], grid: int) -> Throughput:
    if grid not in tp:
        raise ValueError(f"no cost for grid size {grid} (have {sorted(tp)})")
    return tp[grid]


def makespan(costs: Sequence[float], workers: int) -> float:
    """Seconds until ``costs`` (one job each, one worker at a time) finish on ``workers``: longest
    job first onto the least busy worker (LPT; within 4/3 of the best packing)."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    loads = [0.0] * min(workers, max(1, len(costs)))
    for c in sorted(costs, reverse=True):
        i = loads.index(min(loads))
        loads[i] += c
    return max(loads)


def interpolate(measured: Sequence[Throughput], shape: Shape) -> Throughput:
    """``shape``'s cost, linear in FLOPs between the measured shapes of its kind and grid size
    that bracket it (the nearest one outside their range; costs never decrease with FLOPs); a grid
    size not measured: linear in G between the measured grids that bracket it, each interpolated
    in FLOPs first (the nearest grid outside their range; costs never decrease with G)."""
    pts = [t for t in measured if t.shape.kind == shape.kind]
    if not pts:
        raise ValueError(f"no measured shape of the kind of {shape.label} to interpolate from")
    grids = sorted({t.shape.grid for t in pts})
    if shape.grid in grids:
        return _in_flops([t for t in pts if t.shape.grid == shape.grid], shape)
    lo_g = max((g for g in grids if g <= shape.grid), default=grids[0])
    hi_g = min((g for g in grids if g >= shape.grid), default=grids[-1])
    lo = _in_flops([t for t in pts if t.shape.grid == lo_g], shape)
    hi = _in_flops([t for t in pts if t.shape.grid == hi_g], shape)
    f = 0.0 if hi_g == lo_g else (shape.grid - lo_g) / (hi_g - lo_g)
    return _mix(shape, lo, hi, f)


def _mix(shape: Shape, lo: Throughput, hi: Throughput, f: float) -> Throughput:
    def mix(a: float, b: float) -> float:
        return a + f * max(b - a, 0.0)

    return Throughput(shape, mix(lo.step_seconds, hi.step_seconds),
                      mix(lo.update_seconds, hi.update_seconds), measured=False)  # fmt: skip


def _in_flops(pts: Sequence[Throughput], shape: Shape) -> Throughput:
    pts = sorted(pts, key=lambda t: t.shape.flops)
    lo = max((t for t in pts if t.shape.flops <= shape.flops), default=pts[0],
             key=lambda t: t.shape.flops)  # fmt: skip
    hi = min((t for t in pts if t.shape.flops >= shape.flops), default=pts[-1],
             key=lambda t: t.shape.flops)  # fmt: skip
    span = hi.shape.flops - lo.shape.flops
    f = 0.0 if span <= 0 else (shape.flops - lo.shape.flops) / span
    return _mix(shape, lo, hi, f)


def _representatives(shapes: Sequence[Shape]) -> list[Shape]:
    """Per kind: the cheapest and the dearest widths by FLOPs (one if they are the same), each at
    every grid size a shape of the kind has."""
    kinds: dict[Hashable, list[Shape]] = {}
    for s in shapes:
        kinds.setdefault(s.kind, []).append(s)
    out: list[Shape] = []
    for members in kinds.values():
        members = sorted(set(members), key=lambda s: (s.flops, s.widths, s.grid))
        grids = sorted({s.grid for s in members})
        for end in dict.fromkeys((members[0], members[-1])):
            out.extend(dataclasses.replace(end, grid=g) for g in grids)
    return list(dict.fromkeys(out))


# --------------------------------------------------------------------------- shapes and groups
def shape_of(trial: Trial, n_models: int, *, grid: int | None = None) -> Shape:
    """The shape of ``trial`` trained in a group of ``n_models``, in its stage of grid size
    ``grid`` (None: its first stage's; an MLP's is 0)."""
    model, fit = trial.model, trial.fit
    is_kan = isinstance(model, KANConfig)
    if not is_kan:
        grid = 0
    elif grid is None:
        grid = trial.grid_schedule[0]
    return Shape(
        family=trial.family, widths=tuple(model.widths), n_models=n_models,
        n_train=trial.data.n_train, optimizer=fit.optimizer,
        activation="" if is_kan else str(model.activation), dtype=str(model.dtype or ""),
        adapted=is_kan and bool(fit.grid_update_every), flops=count_flops(model, mode="sparse"),
        grid=grid,
    )  # fmt: skip


def _at_grid(trial: Trial, grid: int) -> Trial:
    """``trial`` as a KAN built at grid size ``grid`` and trained there (no schedule): what is
    measured for a stage of that grid (an MLP as it is)."""
    if trial.family != "kan" or not grid:
        return trial
    return dataclasses.replace(trial, model=trial.model.replace(grid_size=grid),
                               fit=trial.fit.replace(grid_schedule=None))  # fmt: skip


def _groups(trials: Sequence[Trial], batched: bool, max_size: int) -> list[list[Trial]]:
    if not batched:
        return [[t] for t in trials]
    from kanlab.bench.groups import group_trials

    return group_trials(list(trials), max_size=max_size)


# --------------------------------------------------------------------------- measuring
def calibrate(
    trial: Trial, n_models: int, *, steps: int = 1, clock: Callable[[], float] = time.thread_time
) -> tuple[float, float]:
    """Seconds of one optimiser step and of one grid update (0 for an MLP) of ``n_models`` models
    of ``trial``'s configuration trained together on its prepared data, measured now by a real
    ``fit`` (M = 1) or ``fit_batch`` of ``steps`` steps (see the module docstring).

    ``clock`` is this thread's CPU time by default: trials run on one thread, so CPU seconds are
    the core seconds a step needs, and other processes on a busy machine do not inflate them (wall
    time on a 2-core machine at load 8 read ~3x more)."""
    import torch

    from kanlab.bench.prepare import prepare
    from kanlab.bench.tasks import load
    from kanlab.model_batch import KANBatch, MLPBatch
    from kanlab.models import build
    from kanlab.train import fit
    from kanlab.train.batch_loop import fit_batch

    raw = load(trial.task, n_train=trial.data.n_train, n_test=trial.data.n_test,
               seed=trial.data.seed, dtype=trial.data_dtype)  # fmt: skip
    is_kan = trial.family == "kan"
    grid_range = trial.model.layer_options(0)["grid_range"] if is_kan else (-1.0, 1.0)
    data = prepare(raw, trial.family, grid_range=grid_range).data
    seeds = list(range(trial.seed, trial.seed + n_models))
    if n_models == 1:
        model = build(trial.model)
    else:
        cls = KANBatch if is_kan else MLPBatch
        model = cls.from_config(trial.model, seeds=seeds)
    p = next(model.parameters())
    x = data.train_x.to(dtype=p.dtype)

    def warm() -> None:  # loads (or compiles) the kernels a step runs: not part of a step
        model(x).sum().backward()
        model.zero_grad(set_to_none=True)

    # fit's one-time costs in a process, not part of a step (its History's clock starts after
    # them): torch's compiler stack, imported at the first optimiser (~1 s CPU), and the kernels
    importlib.import_module("torch._dynamo")
    if is_kan and p.device.type == "cpu":
        from kanlab import kernels
        from kanlab.kernels.warm import ALL_PARTS

        kernels.warm_up(p.dtype, ALL_PARTS)
    warm()
    update = 0.0
    if is_kan:
        start = clock()
        with torch.no_grad():
            model.update_grid(x, grid_eps=trial.fit.grid_eps)  # adapts the grid, as training does
        update = clock() - start
        warm()  # a non-uniform grid runs other kernels
    # (no restarts: a restart candidate's step costs what any step of the model does, and
    # Trial.total_steps counts them)
    cfg = trial.fit.replace(steps=steps, grid_schedule=None, grid_update_every=0, restarts=0,
                            log_every=steps, progress=False, seed=trial.seed)  # fmt: skip
    start = clock()
    hist = fit(model, data, cfg) if n_models == 1 else fit_batch(model, data, cfg)[0]
    spent = clock() - start
    if len(hist.step) == 0:
        raise RuntimeError(f"calibrating {trial.key}: fit ran no step")
    return spent / steps, update


def estimate(
    trials: Sequence[Trial],
    *,
    workers: int,
    batched: bool,
    max_group: int = 64,
    steps: int = 1,
    measure: Measure | None = None,
    cache: dict[Shape, tuple[float, float]] | None = None,
    timer: Callable[[], float] = time.perf_counter,
) -> Estimate:
    """The estimated core and wall seconds of running ``trials`` on ``workers`` cores, batched
    (the runner's groups of at most ``max_group``) or one ``fit`` each, from throughput measured
    now (``steps`` optimiser steps per measured shape; see the module docstring).

    ``measure(trial, M) -> (step seconds, update seconds)`` replaces :func:`calibrate` (tests);
    ``cache`` (shape -> those seconds) is read and filled, so later calls measure nothing twice;
    ``timer`` (a wall clock) times the calibration itself, for the printed line."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an int >= 1, got {workers!r}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    real = measure is None
    if measure is None:

        def measure(trial: Trial, n_models: int) -> tuple[float, float]:
            return calibrate(trial, n_models, steps=steps)

    cache = {} if cache is None else cache
    groups = _groups(trials, batched, max_group)
    # per group: its stages' shapes, one per grid size (the costs it is charged at)
    staged = [({grid: shape_of(g[0], len(g), grid=grid) for grid, _, _ in stages(g[0])}, g)
              for g in groups]  # fmt: skip
    example: dict[Shape, Trial] = {}
    for by_grid, g in staged:
        for s in by_grid.values():
            example.setdefault(s, _at_grid(g[0], s.grid))
    reps = _representatives(list(example))
    for s in reps:  # a representative's widths at a grid only other widths train at
        if s not in example:
            src = next(e for e in example if e.kind == s.kind and e.widths == s.widths)
            example[s] = _at_grid(example[src], s.grid)
    start = timer()
    measured_now = 0
    from kanlab.bench.runner import SerialExecutor, _one_torch_thread
    from kanlab.bench.warm import warm_executor

    with _one_torch_thread():  # as trials run (and many threads on a busy machine only contend)
        todo = [s for s in reps if s not in cache]
        if real and todo:  # a cold JIT cache compiles here, first, as a serial run's: said on
            warm_executor(SerialExecutor(), [example[s] for s in todo])  # the bench logger
        for s in todo:
            if s not in cache:
                cache[s] = measure(example[s], s.n_models)
                measured_now += 1
    calibration = timer() - start if measured_now else 0.0
    measured = [Throughput(s, *cache[s], measured=True) for s in example if s in cache]
    table = {t.shape: t for t in measured}
    for s in example:
        if s not in table:
            table[s] = interpolate(measured, s)
    costs = [group_seconds(g, {grid: table[s] for grid, s in by_grid.items()})
             for by_grid, g in staged]  # fmt: skip
    how = "batched" if batched else "unbatched"
    method = (
        f"{steps} optimiser step(s) of a real {how} fit per measured shape (a KAN's at each grid "
        f"size of its schedule), on its trial's data; {len(measured)} of {len(table)} shapes "
        "measured, the others interpolated in FLOPs"
    )
    return Estimate(
        trials=len(trials), groups=len(groups), batched=batched, workers=workers,
        core_seconds=sum(costs), wall_seconds=makespan(costs, workers) if costs else 0.0,
        calibration_seconds=calibration, measured=len(measured),
        throughput=tuple(table[s] for s in example), method=method,
    )  # fmt: skip
