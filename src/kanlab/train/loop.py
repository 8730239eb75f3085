"""The training loop: :func:`fit` and the state of one run (stages, steps, logging, callbacks)."""

from __future__ import annotations

import importlib
import math
import sys
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from kanlab import distributed as D
from kanlab import kernels
from kanlab._checks import check_choice, check_finite
from kanlab.config import FitConfig
from kanlab.free_knots import FreeKnotObjective
from kanlab.models import KAN
from kanlab.train.batched_optim import BatchedLBFGS
from kanlab.train.history import Callback, History, StepState
from kanlab.train.optim import batches, loss_scale, make_optimizer
from kanlab.train.step import Objective, evaluate, one_step

__all__ = ["NonFiniteLossError", "fit"]


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or Inf; the model holds the last parameters with a finite loss."""


def fit(
    model: nn.Module,
    data: Any,
    config: FitConfig | None = None,
    *,
    callbacks: Sequence[Callback] = (),
    **overrides: Any,
) -> History:
    """Train ``model`` (a KAN or an MLP) on ``data`` (a :class:`kanlab.datasets.Dataset`) in place.

    The options are the fields of :class:`kanlab.config.FitConfig` (each documented there), given
    as ``config``, as keywords (``fit(model, data, steps=50, lr=0.5)``), or both: a keyword
    overrides the config's field; an unknown keyword is a ``TypeError`` listing the valid ones.

    - optimizer: "lbfgs" (strong-Wolfe line search, full batch: torch's algorithm, run by
      :class:`kanlab.train.batched_optim.BatchedLBFGS` with one model), "adam" or "adamw".
    - steps: optimiser steps (per stage with ``grid_schedule``).
    - lr: learning rate (LBFGS: the initial step length of the line search).
    - batch_size: mini-batch size for Adam(W) (``None``: full batch).
    - loss: "mse" or "cross_entropy"; ``None`` follows ``data.kind``.
    - lamb, lamb_l1, lamb_entropy: sparsity regularisation (KAN only), see
      :mod:`kanlab.regularization`; the objective is ``loss + lamb * reg``.
    - grid_update_every: update the grids from the training inputs every this many steps of each
      stage while the step (within the stage) is below ``stop_grid_update_step``; 0 or None
      disables. ``grid_eps``: the grid update's uniform/quantile mix; ``grid_margin``: how far
      (a fraction of the data's range, each side) grid updates and extensions place the grid
      beyond the training inputs' range (``KAN.update_grid``'s ``margin``).
    - grid_schedule: e.g. ``[5, 10, 20]``: train ``steps`` at each grid size, extending the grid
      (on the training inputs) between stages, with a fresh optimiser per stage.
    - weight_decay: L2 penalty (Adam: coupled, AdamW: decoupled, LBFGS: ``wd/2 * |theta|^2``).
    - seed: seeds the mini-batch order; a CPU run is repeatable bit for bit.
    - progress: show a tqdm bar (if tqdm is installed).
    - log_every: evaluate and record a History row every this many steps (and after the last).
    - knot_steps: the last ``knot_steps`` of each stage's ``steps`` also train the interior knots
      (free-knot splines, :mod:`kanlab.free_knots`; KAN only, ``lamb == 0``): a fresh
      optimiser takes the knots with the other parameters, no grid updates run, and the
      grid ends non-uniform. Costs more per step (reference spline maths); pays off on
      coarse grids, where the knots' positions limit the error. A sequence gives one count
      per ``grid_schedule`` stage (e.g. free knots on the coarse stages only).
    - restarts, restart_steps: first train ``restarts + 1`` candidates (the model as given and
      ``restarts`` fresh initialisations) ``restart_steps`` steps each and keep the one with the
      lowest training loss, then train it as above (:mod:`kanlab.train.restarts`: for a freshly
      built KAN or MLP; off by default).

    ``callbacks`` are called with a :class:`StepState` after each logged step; one returning True
    stops training.

    Raises:
        NonFiniteLossError: the loss became NaN/Inf; the message names the step and the model is
            restored to the last parameters whose loss was finite.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module (KAN or MLP), got {type(model).__name__}")
    cfg = _resolve_config(config, overrides)
    _check_kan_only_options(model, cfg)
    callbacks = _check_callbacks(callbacks)
    kind = _kind(data, cfg.loss)
    data = _prepare_data(model, data, kind)
    losses = []
    if cfg.restarts:
        from kanlab.train.restarts import choose_start

        losses = choose_start(model, data, cfg, lambda m, c: fit(m, data, c))
    run = _Run(model, data, kind, cfg, callbacks)
    run.history.restart_losses = losses
    try:
        for stage, grid in enumerate(run.stages):
            run.start_stage(stage, grid)
            for s in range(cfg.steps):
                if run.step(s):  # a callback asked to stop
                    return run.history
    finally:
        run.close()
    return run.history


# --------------------------------------------------------------------------- checks
def _resolve_config(config: FitConfig | None, overrides: dict[str, Any]) -> FitConfig:
    """The run's options: ``config`` (default: FitConfig()) with the keyword ``overrides``."""
    if config is not None and not isinstance(config, FitConfig):
        raise TypeError(f"config must be a FitConfig or None, got {type(config).__name__}")
    valid = FitConfig.field_names()
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise TypeError(
            f"fit() got unknown option(s) {', '.join(map(repr, unknown))}; valid: "
            f"{', '.join(valid)}, callbacks"
        )
    if config is None:
        return FitConfig(**overrides)
    return config.replace(**overrides) if overrides else config


def _check_kan_only_options(model: nn.Module, cfg: FitConfig) -> None:
    """Options for KANs only are refused for any other model; a KAN's grid schedule must not
    coarsen its grid (a stage below the grid before it only approximates the learned function)."""
    if isinstance(model, KAN):
        before = model.grid_size
        for i, g in enumerate(cfg.grid_schedule or ()):
            if g < before:
                where = "the model's grid" if i == 0 else f"grid_schedule[{i - 1}]"
                raise ValueError(
                    f"grid_schedule[{i}]={g} is below {where} ({before}): grid extension would "
                    "coarsen the grid and lose what was learned; use an increasing schedule "
                    "(or call model.extend_grid(..., allow_coarsen=True) yourself)"
                )
            before = g
        return
    kind = type(model).__name__
    if cfg.grid_schedule is not None:
        raise ValueError(f"grid_schedule needs a KAN; got {kind}")
    if cfg.lamb > 0:
        raise ValueError(f"lamb > 0 (sparsity on edge activations) needs a KAN; got {kind}")
    for i, ks in enumerate(cfg.knot_steps_per_stage()):
        if ks > 0:
            name = "knot_steps" if isinstance(cfg.knot_steps, int) else f"knot_steps[{i}]"
            raise ValueError(f"{name} > 0 (free knots) needs a KAN; got {kind}")


def _check_callbacks(callbacks: Sequence[Callback]) -> tuple[Callback, ...]:
    callbacks = tuple(callbacks)
    for cb in callbacks:
        if not callable(cb):
            raise TypeError(f"callbacks must be callables, got {cb!r}")
    return callbacks


def _kind(data: Any, loss: str | None) -> str:
    """The data set's kind ("regression" or "classification"), checked against ``loss``."""
    kind = getattr(data, "kind", "regression")
    check_choice("data.kind", kind, ["regression", "classification"])
    expected = "cross_entropy" if kind == "classification" else "mse"
    if loss is not None and loss != expected:
        raise ValueError(f"loss {loss!r} does not fit a {kind} data set (use {expected!r})")
    return kind


def _prepare_data(model: nn.Module, data: Any, kind: str) -> Any:
    """``data`` checked against the model and moved to its dtype and device."""
    _check_data(model, data, kind)
    p = next(model.parameters(), None)
    if p is None:
        raise ValueError("model has no parameters to train")
    return data.to(dtype=p.dtype, device=p.device) if hasattr(data, "to") else data


def _check_data(model: nn.Module, data: Any, kind: str) -> None:
    for name in ("train_x", "train_y", "test_x", "test_y"):
        if not isinstance(getattr(data, name, None), Tensor):
            raise TypeError(f"data must be a kanlab Dataset (with tensor {name}), got {type(data)}")
        check_finite(f"data.{name}", getattr(data, name))
    widths = getattr(model, "widths", None)
    if widths is None:
        return
    n_in = data.train_x.shape[-1]
    if data.train_x.dim() != 2 or n_in != widths[0]:
        raise ValueError(
            f"data has {n_in} input features (train_x {tuple(data.train_x.shape)}) but the model "
            f"takes {widths[0]} (widths {widths})"
        )
    if kind == "regression":
        n_out = data.train_y.shape[-1] if data.train_y.dim() == 2 else -1
        if n_out != widths[-1]:
            raise ValueError(
                f"data has train_y of shape {tuple(data.train_y.shape)} but the model has "
                f"{widths[-1]} outputs (widths {widths}); regression targets must be (n, out)"
            )
    else:
        n_classes = int(data.train_y.max()) + 1 if data.train_y.numel() else 0
        if n_classes > widths[-1]:
            raise ValueError(
                f"data has class labels up to {n_classes - 1} but the model has only "
                f"{widths[-1]} outputs (widths {widths})"
            )


# --------------------------------------------------------------------------- one run
def _grid_size(model: nn.Module) -> int | None:
    return model.grid_size if isinstance(model, KAN) else None


def _snapshot(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _progress(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is an optional dependency (extras cli/bench): no bar then
        return None
    return tqdm(total=total, desc="fit", leave=False, dynamic_ncols=True)


def _warm_up(model: nn.Module, say: bool) -> float:
    """One-time costs of a process's first run, paid before the run's clock starts: compiling (or
    loading from the JIT cache) the CPU kernels a KAN on the CPU runs, whose seconds are returned
    (a cold cache prints that it is compiling when ``say``); and torch's import of its compiler
    stack at the first optimiser built in a process (~2 s, not returned)."""
    importlib.import_module("torch._dynamo")
    p = next(model.parameters(), None)
    if not isinstance(model, KAN) or p is None or p.device.type != "cpu":
        return 0.0
    notify = (lambda line: print(line, file=sys.stderr, flush=True)) if say else None
    return kernels.warm_up(p.dtype, notify=notify).seconds


class _Run:
    """The state of one :func:`fit` call: stages, the current stage's optimiser, the step count."""

    def __init__(
        self, model: nn.Module, data: Any, kind: str, cfg: FitConfig,
        callbacks: tuple[Callback, ...],
    ) -> None:  # fmt: skip
        self.model, self.data, self.kind, self.cfg, self.callbacks = (
            model, data, kind, cfg, callbacks,
        )  # fmt: skip
        self.update_every = (cfg.grid_update_every or 0) if isinstance(model, KAN) else 0
        stop = cfg.stop_grid_update_step
        self.stop_updates_at = math.inf if stop is None else stop
        self.n_train = data.train_x.shape[0]
        if self.n_train < D.world_size():
            raise ValueError(
                f"{self.n_train} training rows cannot give each of {D.world_size()} ranks one"
            )
        self.train_x, self.train_y = D.shard(data.train_x, data.train_y)
        gen = torch.Generator().manual_seed(cfg.seed)  # the same on every rank: one global order
        self.batches = batches(self.n_train, cfg.batch_size, gen)
        self.stages: list[int | None] = (
            list(cfg.grid_schedule) if cfg.grid_schedule is not None else [None]
        )
        self.knot_plan = cfg.knot_steps_per_stage()
        self.history = History(kind=kind)
        self.history.compile_time = _warm_up(model, cfg.progress and D.is_main())
        self.bar = _progress(cfg.total_steps, cfg.progress and D.is_main())
        self.start = time.perf_counter()  # after the kernels' compilation: not in the time per step
        self.step_index = 0  # global, across stages

    def start_stage(self, stage: int, grid: int | None) -> None:
        """Extend the grid to the stage's size and set up a fresh optimiser."""
        cfg, model = self.cfg, self.model
        if grid is not None and grid != _grid_size(model):
            D.agreed_grid_update(model, self.data.train_x, cfg.grid_eps, grid, cfg.grid_margin)
        self.stage = stage
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.net = D.wrap(Objective(model))  # rebuilt per stage: an extension swaps parameters
        self.opt = make_optimizer(cfg.optimizer, self.params, cfg.lr, cfg.weight_decay)
        self.scale = 1.0
        if cfg.optimizer == "lbfgs":
            self.scale = loss_scale(model, self.train_x, self.train_y, self.kind, self.n_train)
        self.last_good = _snapshot(model)
        self.free: FreeKnotObjective | None = None
        self.knot_steps = self.knot_plan[stage]

    def step(self, s: int) -> bool:
        """Step ``s`` of the stage: free knots or a grid update if due, one optimiser step, a
        History row (and callbacks) if due. Returns True when a callback asks to stop."""
        cfg = self.cfg
        if self.knot_steps and s == cfg.steps - self.knot_steps:  # free knots to the stage's end
            self._free_knots()
        if self.update_every and s % self.update_every == 0 and s < self.stop_updates_at:
            if self.free is None:
                D.agreed_grid_update(
                    self.model, self.data.train_x, cfg.grid_eps, None, cfg.grid_margin
                )
        before = _snapshot(self.model)
        obj, reg = one_step(
            self.net, self.opt, cfg, self.data, self.train_x, self.train_y, next(self.batches),
            self.kind, self.params, self.scale,
        )  # fmt: skip
        if self.free is not None:
            self.free.write_back()
        if not math.isfinite(obj):
            self._restore(f"non-finite training loss ({obj}) at step {self.step_index}")
        if isinstance(self.opt, BatchedLBFGS) and bool(self.opt.diverged[0]):
            # (the optimiser has put the model back at its last iterate with a finite loss)
            raise NonFiniteLossError(
                f"non-finite training loss in the line search of step {self.step_index}; the "
                "model was restored to the last parameters with a finite loss"
            )
        self.last_good = before
        if (self.step_index + 1) % cfg.log_every == 0 or s == cfg.steps - 1:
            if self._log(obj, reg):
                return True
        if self.bar is not None:
            self.bar.update(1)
        self.step_index += 1
        return False

    def _free_knots(self) -> None:
        """From now to the stage's end the knots train too, with a fresh optimiser."""
        self.free = FreeKnotObjective(self.model)
        self.net = D.wrap(self.free)
        cfg = self.cfg
        self.opt = make_optimizer(
            cfg.optimizer, self.params, cfg.lr, cfg.weight_decay, self.free.logits
        )

    def _log(self, obj: float, reg: float) -> bool:
        """Evaluate, record a History row, run the callbacks; True if one asks to stop."""
        row = evaluate(self.model, self.data, self.kind)
        if not math.isfinite(row[0]):
            self._restore(f"non-finite training loss ({row[0]}) after step {self.step_index}")
        grid = _grid_size(self.model)
        elapsed = time.perf_counter() - self.start
        self.history.append(self.step_index, row, reg, grid, elapsed)
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{row[0]:.3g}", test=f"{row[1]:.3g}", grid=grid,
                                 refresh=False)  # fmt: skip
        state = StepState(self.step_index, self.model, self.history, obj, reg, self.stage, grid)
        stop = [bool(cb(state)) for cb in self.callbacks]  # every callback sees each row
        return any(stop)

    def _restore(self, what: str) -> None:
        self.model.load_state_dict(self.last_good)
        raise NonFiniteLossError(
            f"{what}; the model was restored to the last parameters with a finite loss"
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
