"""One ``fit()`` loop for KANs and MLPs: optimisers, sparsity, grid updates and schedules, History.

A *step* is one optimiser update: one ``LBFGS.step(closure)`` on the full training set, or one Adam(W)
update on one mini-batch (batches come from shuffled epochs; ``batch_size=None`` means full batch).
After every ``log_every``-th step (and the last) the model is evaluated on the full training and test
sets and a row is appended to :class:`History`; callbacks run after each logged row.

Under ``torch.distributed`` (e.g. ``torchrun``) the same call trains data-parallel; see
:mod:`kanlab.distributed` for the method. Three seams route through it: :func:`_local_rows` (the
contiguous block of a batch's rows a rank trains on), :func:`_grid_inputs` (the inputs a grid update
sees: all ranks' rows, so the grids agree) and :func:`_reduce_sums` (metric sums all-reduced before
dividing). Losses are therefore sums over a rank's rows divided by the *global* row count, and
metrics are computed from global sums and counts, never from local means. Without a process group
every seam is the identity.

Options for KANs only (the sparsity regulariser ``lamb > 0``, ``grid_schedule`` and free knots
``knot_steps > 0``) raise a ``ValueError`` for any other model; the grid-update options (``grid_update_every``,
``stop_grid_update_step``, ``grid_eps``) have non-zero defaults and are ignored for models without a
grid, so the same call trains a KAN and an MLP.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kanlab import distributed as D
from kanlab._checks import check_choice, check_finite, check_float, check_int
from kanlab.free_knots import FreeKnotObjective
from kanlab.models import KAN
from kanlab.regularization import regularizer_from_norms

__all__ = ["OPTIMIZERS", "History", "NonFiniteLossError", "StepState", "fit"]

OPTIMIZERS = ("lbfgs", "adam", "adamw")
LOSSES = ("mse", "cross_entropy")


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or Inf; the model holds the last parameters with a finite loss."""


@dataclass
class History:
    """Per logged step: the training record of one :func:`fit` call (lists of equal length).

    ``train_loss``/``test_loss``: RMSE for regression (what the KAN paper reports), cross-entropy for
    classification. ``train_metric``/``test_metric``: RMSE for regression, accuracy for
    classification. ``reg``: the sparsity regulariser before multiplying by ``lamb`` at the start of
    the step (0.0 when ``lamb == 0``: not computed). ``grid_size``: the model's grid (None for an
    MLP). ``wall_time``: seconds since the start of ``fit`` (evaluation included).
    """

    task: str = "regression"  # "regression" | "classification": which way is better for the metric
    step: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    test_loss: list[float] = field(default_factory=list)
    train_metric: list[float] = field(default_factory=list)
    test_metric: list[float] = field(default_factory=list)
    reg: list[float] = field(default_factory=list)
    grid_size: list[int | None] = field(default_factory=list)
    wall_time: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of plain lists."""
        return asdict(self)

    def __len__(self) -> int:
        return len(self.step)

    @property
    def final_test_metric(self) -> float:
        """The test metric after the last logged step (NaN if nothing was logged)."""
        return self.test_metric[-1] if self.test_metric else math.nan

    @property
    def best_test_metric(self) -> float:
        """The lowest test RMSE (regression) or highest test accuracy (classification)."""
        vals = [v for v in self.test_metric if not math.isnan(v)]
        if not vals:
            return math.nan
        return max(vals) if self.task == "classification" else min(vals)

    @property
    def time_per_step(self) -> float:
        """Mean wall time per step (seconds), evaluation included."""
        if not self.step:
            return math.nan
        return self.wall_time[-1] / (self.step[-1] + 1)


@dataclass(frozen=True)
class StepState:
    """What a callback sees after a logged step; return True from the callback to stop training."""

    step: int  # global step index (0-based, counting across grid-schedule stages)
    model: nn.Module
    history: History
    loss: float  # the objective the optimiser saw at the start of this step (loss + lamb * reg)
    reg: float
    stage: int  # index into grid_schedule (0 without one)
    grid_size: int | None


Callback = Callable[[StepState], bool | None]


# --------------------------------------------------------------------------- seams (distributed)
def _local_rows(*tensors: Tensor) -> tuple[Tensor, ...]:
    """This rank's contiguous block of rows (all of them on one rank)."""
    return D.shard(*tensors)


def _grid_inputs(train_x: Tensor) -> Tensor:
    """The inputs a grid update sees: every rank's training rows, in rank order (so identical on
    every rank and equal to the single-process training inputs)."""
    return D.gather_rows(_local_rows(train_x)[0])


def _reduce_sums(sums: dict[str, float], device: torch.device) -> dict[str, float]:
    """All-reduce (sum) metric accumulators across ranks; the identity on one rank."""
    if not D.is_distributed():
        return sums
    keys = sorted(sums)
    total = D.all_reduce_sum(
        torch.tensor([sums[k] for k in keys], dtype=torch.float64, device=device)
    )
    return dict(zip(keys, total.tolist(), strict=True))


def _update_grid(model: nn.Module, train_x: Tensor, grid_eps: float, new_size: int | None) -> None:
    """A collective grid update (``new_size`` None) or extension; rank 0's result is broadcast so
    every rank holds bit-identical knots and coefficients."""
    x = _grid_inputs(train_x)
    if new_size is None:
        model.update_grid(x, grid_eps=grid_eps)
    else:
        model.extend_grid(new_size, x, grid_eps=grid_eps)
    D.broadcast_module(model)


class _Objective(nn.Module):
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
        return acts[-1].sum(-1), [a.abs().sum(dim=0) for a in acts]


# --------------------------------------------------------------------------- helpers
def _check_data(model: nn.Module, data: Any, task: str) -> None:
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
    if task == "regression":
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


def _model_dtype_device(model: nn.Module) -> tuple[torch.dtype, torch.device]:
    p = next(model.parameters(), None)
    if p is None:
        raise ValueError("model has no parameters to train")
    return p.dtype, p.device


def _grid_size(model: nn.Module) -> int | None:
    if not isinstance(model, KAN):
        return None
    return max(layer.grid_size for layer in model.layers)


def _snapshot(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _make_optimizer(
    name: str,
    params: list[nn.Parameter],
    lr: float,
    weight_decay: float,
    extra: Sequence[nn.Parameter] = (),
) -> torch.optim.Optimizer:
    """The optimiser over ``params`` and ``extra`` (free-knot logits: never weight-decayed)."""
    if name == "lbfgs":  # (weight decay is a term of the closure's objective, on params only)
        # As the official KAN code: history 10, strong-Wolfe line search, up to 20 inner iterations
        # per step, and tolerances that never stop early (steps stay comparable with the paper's).
        return torch.optim.LBFGS(
            [*params, *extra],
            lr=lr,
            history_size=10,
            max_iter=20,
            line_search_fn="strong_wolfe",
            tolerance_grad=1e-32,
            tolerance_change=1e-32,
        )
    cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
    groups = [{"params": params}]
    if extra:
        groups.append({"params": list(extra), "weight_decay": 0.0})
    return cls(groups, lr=lr, weight_decay=weight_decay)


@torch.no_grad()
def _loss_scale(model: nn.Module, x: Tensor, y: Tensor, task: str, n_global: int) -> float:
    """A constant factor for the LBFGS objective of one stage: 1 / (data loss at the stage start).

    torch's LBFGS skips its curvature update when ``y.s <= 1e-10`` (a fixed threshold); near the
    accuracies the KAN paper reaches (MSE ~ 1e-10) that would disable the quasi-Newton update and
    stall training. A constant factor changes neither the minimiser nor the strong-Wolfe steps.
    Only ever scales up (never below 1), at most by 1e12.
    """
    base = float(D.all_reduce_sum(_data_loss_sum(model(x), y, task)) / n_global)
    if not math.isfinite(base) or base <= 0.0 or base >= 1.0:
        return 1.0
    return min(1.0 / base, 1e12)


def _batches(n: int, batch_size: int | None, gen: torch.Generator) -> Iterator[Tensor | None]:
    """Index batches from shuffled epochs, forever; ``None`` means the full set."""
    if batch_size is None or batch_size >= n:
        while True:
            yield None
    while True:
        perm = torch.randperm(n, generator=gen)
        yield from perm.split(batch_size)


def _data_loss_sum(pred: Tensor, y: Tensor, task: str) -> Tensor:
    """The loss summed over rows (MSE: averaged over outputs); divide by the row count for the mean."""
    if task == "classification":
        return F.cross_entropy(pred, y, reduction="sum")
    return (pred - y).pow(2).sum() / y.shape[-1]


@torch.no_grad()
def _evaluate(model: nn.Module, data: Any, task: str) -> tuple[float, float, float, float]:
    """(train_loss, test_loss, train_metric, test_metric) from sums reduced across ranks."""
    sums: dict[str, float] = {}
    for split in ("train", "test"):
        x, y = getattr(data, f"{split}_x"), getattr(data, f"{split}_y")
        if x.shape[0] >= D.world_size():  # (else every rank counts all rows: the ratio holds)
            x, y = _local_rows(x, y)
        pred = model(x) if x.shape[0] else None
        sums[f"{split}_n"] = float(x.shape[0])
        if pred is None:
            sums[f"{split}_a"] = sums[f"{split}_b"] = 0.0
        elif task == "classification":
            sums[f"{split}_a"] = float(F.cross_entropy(pred, y, reduction="sum"))
            sums[f"{split}_b"] = float((pred.argmax(-1) == y).sum())
        else:
            sums[f"{split}_a"] = float((pred - y).pow(2).sum() / y.shape[-1])
            sums[f"{split}_b"] = 0.0
    sums = _reduce_sums(sums, data.train_x.device)
    out = []
    for split in ("train", "test"):
        n = sums[f"{split}_n"]
        mean = sums[f"{split}_a"] / n if n else math.nan
        if task == "classification":
            out.append((mean, sums[f"{split}_b"] / n if n else math.nan))
        else:
            out.append((math.sqrt(mean), math.sqrt(mean)))
    return out[0][0], out[1][0], out[0][1], out[1][1]


def _progress(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is an optional dependency (extras cli/bench): no bar then
        return None
    return tqdm(total=total, desc="fit", leave=False, dynamic_ncols=True)


def _knot_steps_per_stage(knot_steps: int | Sequence[int], n_stages: int) -> list[int]:
    """``knot_steps`` as one count per stage (an int applies to every stage)."""
    if isinstance(knot_steps, int) and not isinstance(knot_steps, bool):
        return [knot_steps] * n_stages
    if isinstance(knot_steps, str | bytes) or not isinstance(knot_steps, Sequence):
        raise TypeError(f"knot_steps must be an int or a sequence of ints, got {knot_steps!r}")
    if len(knot_steps) != n_stages:
        raise ValueError(
            f"knot_steps has {len(knot_steps)} entries but there are {n_stages} stages "
            "(one per grid_schedule entry)"
        )
    return list(knot_steps)


def _validate_options(
    model: nn.Module, *, optimizer: str, steps: int, lr: float, batch_size: int | None, lamb: float,
    grid_update_every: int | None, stop_grid_update_step: int | None, grid_eps: float,
    grid_schedule: Sequence[int] | None, weight_decay: float, seed: int, log_every: int,
    callbacks: Sequence[Callback], knot_steps: int | Sequence[int] = 0,
) -> str:  # fmt: skip
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module (KAN or MLP), got {type(model).__name__}")
    opt = check_choice("optimizer", optimizer.lower() if isinstance(optimizer, str) else optimizer,
                       OPTIMIZERS)  # fmt: skip
    check_int("steps", steps, minimum=0)
    if check_float("lr", lr, minimum=0.0) == 0.0:
        raise ValueError("lr must be > 0, got 0")
    if batch_size is not None:
        check_int("batch_size", batch_size, minimum=1)
        if opt == "lbfgs":
            raise ValueError("batch_size is for adam/adamw; lbfgs trains on the full batch")
    check_float("lamb", lamb, minimum=0.0)
    check_float("weight_decay", weight_decay, minimum=0.0)
    check_int("seed", seed, minimum=0)
    check_int("log_every", log_every, minimum=1)
    if grid_update_every is not None:
        check_int("grid_update_every", grid_update_every, minimum=0)
    if stop_grid_update_step is not None:
        check_int("stop_grid_update_step", stop_grid_update_step, minimum=0)
    if not 0.0 <= check_float("grid_eps", grid_eps) <= 1.0:
        raise ValueError(f"grid_eps must be in [0, 1], got {grid_eps}")
    is_kan = isinstance(model, KAN)
    if grid_schedule is not None:
        if isinstance(grid_schedule, str | bytes) or not isinstance(grid_schedule, Sequence):
            raise TypeError(f"grid_schedule must be a sequence of ints, got {grid_schedule!r}")
        if len(grid_schedule) == 0:
            raise ValueError("grid_schedule must not be empty (use None for no schedule)")
        for i, g in enumerate(grid_schedule):
            check_int(f"grid_schedule[{i}]", g, minimum=1)
        if not is_kan:
            raise ValueError(f"grid_schedule needs a KAN; got {type(model).__name__}")
    if lamb > 0 and not is_kan:
        raise ValueError(
            f"lamb > 0 (sparsity on edge activations) needs a KAN; got {type(model).__name__}"
        )
    n_stages = len(grid_schedule) if grid_schedule is not None else 1
    for i, ks in enumerate(_knot_steps_per_stage(knot_steps, n_stages)):
        name = "knot_steps" if isinstance(knot_steps, int) else f"knot_steps[{i}]"
        if check_int(name, ks, minimum=0) == 0:
            continue
        if not is_kan:
            raise ValueError(f"{name} > 0 (free knots) needs a KAN; got {type(model).__name__}")
        if ks > steps:
            raise ValueError(f"{name} must be <= steps ({steps}), got {ks}")
        if lamb > 0:
            raise ValueError(f"{name} > 0 (free knots) cannot be combined with lamb > 0")
    for cb in callbacks:
        if not callable(cb):
            raise TypeError(f"callbacks must be callables, got {cb!r}")
    return opt


# --------------------------------------------------------------------------- fit
def fit(
    model: nn.Module,
    data: Any,
    *,
    optimizer: str = "lbfgs",
    steps: int = 100,
    lr: float = 1.0,
    batch_size: int | None = None,
    loss: str | None = None,
    lamb: float = 0.0,
    lamb_l1: float = 1.0,
    lamb_entropy: float = 2.0,
    grid_update_every: int | None = 10,
    stop_grid_update_step: int | None = 50,
    grid_eps: float = 0.02,
    grid_schedule: Sequence[int] | None = None,
    weight_decay: float = 0.0,
    seed: int = 0,
    progress: bool = True,
    callbacks: Sequence[Callback] = (),
    log_every: int = 1,
    knot_steps: int | Sequence[int] = 0,
) -> History:
    """Train ``model`` (a KAN or an MLP) on ``data`` (a :class:`kanlab.datasets.Dataset`) in place.

    Args:
        optimizer: "lbfgs" (torch's, strong-Wolfe line search, full batch), "adam" or "adamw".
        steps: optimiser steps (per stage with ``grid_schedule``).
        lr: learning rate (LBFGS: the initial step length of the line search).
        batch_size: mini-batch size for Adam(W) (``None``: full batch).
        loss: "mse" or "cross_entropy"; ``None`` follows ``data.task``.
        lamb, lamb_l1, lamb_entropy: sparsity regularisation (KAN only), see
            :mod:`kanlab.regularization`; the objective is ``loss + lamb * reg``.
        grid_update_every: update the grids from the training inputs every this many steps of each
            stage while the step (within the stage) is below ``stop_grid_update_step``; 0 or None
            disables. ``grid_eps``: the grid update's uniform/quantile mix.
        grid_schedule: e.g. ``[5, 10, 20]``: train ``steps`` at each grid size, extending the grid
            (on the training inputs) between stages, with a fresh optimiser per stage.
        weight_decay: L2 penalty (Adam: coupled, AdamW: decoupled, LBFGS: ``wd/2 * |theta|^2``).
        seed: seeds the mini-batch order; a CPU run is repeatable bit for bit.
        progress: show a tqdm bar (if tqdm is installed). callbacks: called with a
            :class:`StepState` after each logged step; one returning True stops training.
        log_every: evaluate and record a History row every this many steps (and after the last).
        knot_steps: the last ``knot_steps`` of each stage's ``steps`` also train the interior knots
            (free-knot splines, :mod:`kanlab.free_knots`; KAN only, ``lamb == 0``): a fresh
            optimiser takes the knots with the other parameters, no grid updates run, and the
            grid ends non-uniform. Costs more per step (reference spline maths); pays off on
            coarse grids, where the knots' positions limit the error. A sequence gives one count
            per ``grid_schedule`` stage (e.g. free knots on the coarse stages only).

    Raises:
        NonFiniteLossError: the loss became NaN/Inf; the message names the step and the model is
            restored to the last parameters whose loss was finite.
    """
    callbacks = tuple(callbacks)
    opt_name = _validate_options(
        model, optimizer=optimizer, steps=steps, lr=lr, batch_size=batch_size, lamb=lamb,
        grid_update_every=grid_update_every, stop_grid_update_step=stop_grid_update_step,
        grid_eps=grid_eps, grid_schedule=grid_schedule, weight_decay=weight_decay, seed=seed,
        log_every=log_every, callbacks=callbacks, knot_steps=knot_steps,
    )  # fmt: skip
    task = getattr(data, "task", "regression")
    check_choice("data.task", task, ["regression", "classification"])
    expected = "cross_entropy" if task == "classification" else "mse"
    if loss is not None and check_choice("loss", loss, LOSSES) != expected:
        raise ValueError(f"loss {loss!r} does not fit a {task} data set (use {expected!r})")
    _check_data(model, data, task)
    dtype, device = _model_dtype_device(model)
    if hasattr(data, "to"):
        data = data.to(dtype=dtype, device=device)

    is_kan = isinstance(model, KAN)
    every = grid_update_every if is_kan else 0
    stop_at = math.inf if stop_grid_update_step is None else stop_grid_update_step
    n_train = data.train_x.shape[0]
    if n_train < D.world_size():
        raise ValueError(f"{n_train} training rows cannot give each of {D.world_size()} ranks one")
    train_x, train_y = _local_rows(data.train_x, data.train_y)
    gen = torch.Generator().manual_seed(seed)  # the same on every rank: one global batch order
    batches = _batches(n_train, batch_size, gen)
    stages: list[int | None] = list(grid_schedule) if grid_schedule is not None else [None]
    knot_plan = _knot_steps_per_stage(knot_steps, len(stages))
    history = History(task=task)
    bar = _progress(steps * len(stages), progress and D.is_main())
    start = time.perf_counter()
    step = 0
    try:
        for stage, g in enumerate(stages):
            if g is not None and g != _grid_size(model):
                _update_grid(model, data.train_x, grid_eps, g)
            params = [p for p in model.parameters() if p.requires_grad]
            net = D.wrap(_Objective(model))  # rebuilt per stage: a grid extension swaps parameters
            opt = _make_optimizer(opt_name, params, lr, weight_decay)
            scale = 1.0
            if opt_name == "lbfgs":
                scale = _loss_scale(model, train_x, train_y, task, n_train)
            last_good = _snapshot(model)
            free: FreeKnotObjective | None = None
            stage_knot_steps = knot_plan[stage]
            for s in range(steps):
                if stage_knot_steps and s == steps - stage_knot_steps:  # free knots to the end
                    free = FreeKnotObjective(model)
                    net = D.wrap(free)
                    opt = _make_optimizer(opt_name, params, lr, weight_decay, free.logits)
                if every and s % every == 0 and s < stop_at and free is None:
                    _update_grid(model, data.train_x, grid_eps, None)
                before = _snapshot(model)
                obj, reg = _one_step(
                    net, opt, opt_name, data, train_x, train_y, next(batches), task,
                    lamb, lamb_l1, lamb_entropy, weight_decay, params, scale,
                )  # fmt: skip
                if free is not None:
                    free.write_back()
                if not math.isfinite(obj):
                    model.load_state_dict(last_good)
                    raise NonFiniteLossError(
                        f"non-finite training loss ({obj}) at step {step}; the model was "
                        "restored to the last parameters with a finite loss"
                    )
                last_good = before
                if (step + 1) % log_every == 0 or s == steps - 1:
                    row = _evaluate(model, data, task)
                    if not math.isfinite(row[0]):
                        model.load_state_dict(last_good)
                        raise NonFiniteLossError(
                            f"non-finite training loss ({row[0]}) after step {step}; the model "
                            "was restored to the last parameters with a finite loss"
                        )
                    _record(history, step, row, reg, _grid_size(model), start)
                    if bar is not None:
                        bar.set_postfix(loss=f"{row[0]:.3g}", test=f"{row[1]:.3g}",
                                        grid=_grid_size(model), refresh=False)  # fmt: skip
                    state = StepState(step, model, history, obj, reg, stage, _grid_size(model))
                    stop = [bool(cb(state)) for cb in callbacks]  # every callback sees each row
                    if any(stop):
                        return history
                if bar is not None:
                    bar.update(1)
                step += 1
    finally:
        if bar is not None:
            bar.close()
    return history


def _record(
    history: History, step: int, row: tuple[float, ...], reg: float, g: int | None, start: float
) -> None:
    history.step.append(step)
    history.train_loss.append(row[0])
    history.test_loss.append(row[1])
    history.train_metric.append(row[2])
    history.test_metric.append(row[3])
    history.reg.append(reg)
    history.grid_size.append(g)
    history.wall_time.append(time.perf_counter() - start)


def _one_step(
    net: nn.Module, opt: torch.optim.Optimizer, opt_name: str, data: Any, x: Tensor, y: Tensor,
    idx: Tensor | None, task: str, lamb: float, lamb_l1: float, lamb_entropy: float,
    weight_decay: float, params: list[nn.Parameter], scale: float,
) -> tuple[float, float]:  # fmt: skip
    """One optimiser step; returns (objective, reg) at the parameters before the step. The
    optimiser minimises ``scale * objective`` (see :func:`_loss_scale`).

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
    first: list[tuple[float, float]] = []

    def closure() -> Tensor:
        opt.zero_grad(set_to_none=True)
        pred, norm_sums = net(xb, with_norms=lamb > 0)
        data_term = _data_loss_sum(pred, yb, task) / n_batch  # this rank's share of the mean
        extra = data_term.new_zeros(())
        reg = None
        if lamb > 0:
            norms = [D.all_reduce_sum_autograd(n) / n_batch for n in norm_sums]
            reg = regularizer_from_norms(norms, lamb_l1=lamb_l1, lamb_entropy=lamb_entropy)
            extra = extra + lamb * reg
        if opt_name == "lbfgs" and weight_decay > 0:
            extra = extra + 0.5 * weight_decay * sum(p.pow(2).sum() for p in params)
        value = D.all_reduce_sum(data_term.detach()) + extra.detach()  # the global objective
        if not first:
            first.append((float(value), float(reg.detach()) if reg is not None else 0.0))
        if torch.isfinite(value):
            ((world * data_term + extra) * scale).backward()
        return value * scale

    if opt_name == "lbfgs":
        opt.step(closure)
    else:
        closure()
        if math.isfinite(first[0][0]):
            opt.step()
    return first[0]
