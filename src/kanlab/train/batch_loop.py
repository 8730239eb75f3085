"""Batched training: :func:`fit_batch` trains the M models of a :class:`~kanlab.model_batch.KANBatch`
or :class:`~kanlab.model_batch.MLPBatch` at once (issue 19), on one data set shared by the models or
on one data set per model (model m on ``data[m]``; the data sets alike in kind, rows and widths, so
that trials of different tasks with one model shape and fit settings share a batch).

Each model's objective, schedule and History are those of :func:`kanlab.fit` for that model alone:
the MSE ``sum((pred - y)^2) / (rows * outputs)`` or, on a classification data set, the mean
cross-entropy against its labels per model (the optimisers minimise the *sum* over models, whose
gradient on model m's slice is model m's own), the LBFGS loss scale per model and stage
(:func:`kanlab.train.optim.loss_scale`), the same grid updates, grid extensions, mini-batch order
and History rows, each on the model's own data set (grid updates and extensions from its own
training inputs; with one shared data set the batch's kernels read the shared inputs once). LBFGS
is :class:`~kanlab.train.batched_optim.BatchedLBFGS` (kanlab's settings), Adam(W) torch's on the
stacked parameters (exactly per model).

Unlike ``fit``, a model whose loss becomes NaN/Inf does not stop the run: it is restored to its last
parameters (and grid) with a finite loss, frozen (no optimiser step, no grid update moves it; a grid extension
between stages still refines its grid, since a batch holds one grid size), its History ends at the
last finite row, and :attr:`BatchHistories.diverged` names the step. The others go on unchanged.

Callbacks are called when ``fit`` calls them (after each History row), once per model still
training, with that model's :class:`~kanlab.train.StepState` (``model_index`` = m; ``model`` a
standalone copy of model m, built only when there are callbacks). One returning True stops that
model only: it is frozen from then on, like a diverged one (its History ends at that row;
:attr:`BatchHistories.stopped` holds the step), and the others go on. The run ends early once every
model is frozen.

Sparsity regularisation (``lamb > 0``, KAN only) is fit's, per model: the objective is
``loss + lamb * reg`` with :mod:`kanlab.regularization`'s regulariser on each model's edge
activations (:func:`regularizer_per_model`), History's ``reg`` the regulariser before ``lamb``
(0.0 for a model whose ``lamb`` is 0). The weights ``lamb``, ``lamb_l1`` and ``lamb_entropy`` may
differ per model: give ``config`` as a sequence of M FitConfigs equal in every other field.

Free knots (``knot_steps``, KAN only) are fit's, per model (:mod:`kanlab.train.batch_free_knots`):
the last ``knot_steps`` of a stage also train each model's interior knots, with a fresh optimiser
and no grid updates.

Fused training step: where it applies (:func:`fused_loss_applies`: a KAN batch, the MSE, no
sparsity term, no free-knot phase, CPU on one thread with Numba, and grids the fused layer takes),
each objective evaluation is one call of :func:`kanlab.kernels.cpu_batched_loss.mse_and_grads` for
the whole batch (every layer's forward and backward per block of samples, no autograd), which
writes the parameters' ``.grad`` directly; elsewhere the objective runs under autograd as before.
Both give the same values and gradients to rounding (float64: ~1e-15 relative).

Restarts (``restarts > 0``) are fit's, per model (:func:`kanlab.train.restarts.choose_start_batch`):
candidate r of every model trains ``restart_steps`` steps in one batch, and each model keeps its own
best start by training loss before the schedule begins (History's ``restart_losses`` per model).

Not supported yet, refused with an error naming the option: ``torch.distributed`` runs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kanlab import distributed as D
from kanlab import kernels
from kanlab.config import FitConfig
from kanlab.kernels.warm import ALL_PARTS
from kanlab.model_batch import KANBatch, MLPBatch
from kanlab.regularization import EPS
from kanlab.train.batch_free_knots import BatchFreeKnots
from kanlab.train.batched_optim import BatchedLBFGS, batched_adam, step_frozen
from kanlab.train.history import Callback, History, StepState
from kanlab.train.loop import _check_callbacks, _check_data, _kind, _resolve_config
from kanlab.train.optim import batches

__all__ = [
    "PER_MODEL_OPTIONS",
    "BatchHistories",
    "fit_batch",
    "fused_loss_applies",
    "fused_mse_grads",
    "regularizer_per_model",
]

#: the FitConfig fields that may differ between the models of one fit_batch call
PER_MODEL_OPTIONS = ("lamb", "lamb_l1", "lamb_entropy")

# kanlab's LBFGS settings (as kanlab.train.optim.make_optimizer gives torch's LBFGS)
_LBFGS = {"history_size": 10, "max_iter": 20, "tolerance_grad": 1e-32, "tolerance_change": 1e-32}


class BatchHistories(list[History]):
    """The M Histories of :func:`fit_batch` (a list), and per model ``diverged[m]``: None, or a
    message naming the step at which model m's loss became non-finite (it was then frozen), and
    ``stopped[m]``: None, or the step after which a callback stopped model m."""

    def __init__(self, histories: Sequence[History]) -> None:
        super().__init__(histories)
        self.diverged: list[str | None] = [None] * len(histories)
        self.stopped: list[int | None] = [None] * len(histories)


def fit_batch(
    batch: KANBatch | MLPBatch,
    data: Any,
    config: FitConfig | Sequence[FitConfig] | None = None,
    *,
    callbacks: Sequence[Callback] = (),
    **overrides: Any,
) -> BatchHistories:
    """Train every model of ``batch`` in place on ``data``: a kanlab Dataset shared by the models,
    or a sequence of M Datasets (model m on ``data[m]``; the same kind, train rows, test rows,
    input and output widths, else an error naming the data set and what differs). One History each.

    The options are :func:`kanlab.fit`'s (a :class:`FitConfig` and/or keyword overrides) and mean
    the same; ``config`` may also be a sequence of M FitConfigs (model m trains with
    ``config[m]``, the overrides applied to each) that differ only in :data:`PER_MODEL_OPTIONS`
    (the sparsity weights; any other difference is an error naming the field and the models).
    Model m's History equals ``fit(batch.unstack()[m], data_m, config)``'s, ``data_m`` its data
    set (Adam(W): to
    rounding; LBFGS: the batched line search is torch's per model, so to rounding at first and
    then as close as two LBFGS runs on a chaotic objective can be). ``wall_time`` is the batch's
    clock, shared by the models. See the module docstring for divergence, callbacks and what is
    refused.
    """
    if not isinstance(batch, KANBatch | MLPBatch):
        raise TypeError(f"batch must be a KANBatch or MLPBatch, got {type(batch).__name__}")
    cfgs = _resolve_configs(config, overrides, batch.n_models)
    cfg = cfgs[0]
    _refuse_unsupported(batch, cfgs)
    callbacks = _check_callbacks(callbacks)
    kind, run_data = _prepare_data(batch, data, cfg.loss)
    restart_losses: list[list[float]] = [[] for _ in range(batch.n_models)]
    if cfg.restarts:
        from kanlab.train.restarts import choose_start_batch

        restart_losses = choose_start_batch(batch, cfgs, lambda b, cs: fit_batch(b, data, cs))
    run = _BatchRun(batch, run_data, kind, cfgs, callbacks)
    for hist, losses in zip(run.histories, restart_losses, strict=True):
        hist.restart_losses = losses
    for stage, grid in enumerate(run.stages):
        if run.frozen.all():
            break
        run.start_stage(stage, grid)
        for s in range(cfg.steps):
            run.step(s)
            if run.frozen.all():  # every model diverged or was stopped by a callback
                break
    return run.histories


# --------------------------------------------------------------------------- data
@dataclass(frozen=True)
class _Data:
    """A run's data: ``shared`` (every tensor ``(rows, ...)``, for all models; the batch's kernels
    read a shared x once) or per model (every tensor ``(M, rows, ...)``, model m's slice its own)."""

    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    shared: bool

    def train_rows(self, idx: Tensor | None) -> tuple[Tensor, Tensor]:
        """The training inputs and targets of the mini-batch ``idx`` (None: all rows)."""
        x, y = self.train_x, self.train_y
        if idx is None:
            return x, y
        return (x[idx], y[idx]) if self.shared else (x[:, idx], y[:, idx])


# what the data sets of one run must share: (what, its value in a Dataset)
_SAME = (
    ("train rows", lambda d: d.train_x.shape[0]),
    ("test rows", lambda d: d.test_x.shape[0]),
    ("input width", lambda d: d.train_x.shape[-1]),
    ("output width", lambda d: tuple(d.train_y.shape[1:])),
)


def _prepare_data(batch: KANBatch | MLPBatch, data: Any, loss: str | None) -> tuple[str, _Data]:
    """``data`` (one Dataset, or one per model) checked against the batch and the other data sets,
    moved to the batch's dtype and device, and stacked (per model) into :class:`_Data`."""
    p = next(batch.parameters())
    if not isinstance(data, Sequence) or isinstance(data, str | bytes):
        kind = _kind(data, loss)
        _check_data(batch, data, kind)
        d = data.to(dtype=p.dtype, device=p.device) if hasattr(data, "to") else data
        return kind, _Data(d.train_x, d.train_y, d.test_x, d.test_y, shared=True)
    sets = list(data)
    if len(sets) != batch.n_models:
        raise ValueError(
            f"data is a sequence of {len(sets)} data sets but the batch has {batch.n_models} "
            "models (give one Dataset for all, or one per model)"
        )
    kinds = []
    for m, d in enumerate(sets):
        try:
            kinds.append(_kind(d, loss))
        except (TypeError, ValueError) as e:
            raise type(e)(f"data[{m}]: {e}") from None
        if kinds[m] != kinds[0]:
            raise ValueError(
                f"data[{m}] is a {kinds[m]} data set but data[0] is {kinds[0]}: the data sets "
                "of one batch must be of one kind"
            )
        try:
            _check_data(batch, d, kinds[m])
        except (TypeError, ValueError) as e:
            raise type(e)(f"data[{m}]: {e}") from None
        for what, get in _SAME:
            if get(d) != get(sets[0]):
                raise ValueError(
                    f"data[{m}] has {what} {get(d)} but data[0] has {get(sets[0])}: the data sets "
                    "of one batch must have the same train rows, test rows, input and output widths"
                )
    sets = [d.to(dtype=p.dtype, device=p.device) if hasattr(d, "to") else d for d in sets]
    names = ("train_x", "train_y", "test_x", "test_y")
    return kinds[0], _Data(
        *(torch.stack([getattr(d, n) for d in sets]) for n in names), shared=False
    )


# --------------------------------------------------------------------------- checks
def _resolve_configs(config: object, overrides: dict[str, Any], n_models: int) -> list[FitConfig]:
    """Model m's FitConfig: ``config`` (one for all, or one per model) with the ``overrides``;
    per-model configs may differ only in :data:`PER_MODEL_OPTIONS`."""
    if not isinstance(config, Sequence) or isinstance(config, str | bytes):
        return [_resolve_config(config, overrides)] * n_models  # type: ignore[arg-type]
    configs = list(config)
    if len(configs) != n_models:
        raise ValueError(
            f"config is a sequence of {len(configs)} FitConfigs but the batch has {n_models} models"
        )
    for m, c in enumerate(configs):
        if not isinstance(c, FitConfig):
            raise TypeError(f"config[{m}] must be a FitConfig, got {type(c).__name__}")
    cfgs = [_resolve_config(c, overrides) for c in configs]
    for name in FitConfig.field_names():
        if name in PER_MODEL_OPTIONS:
            continue
        first = getattr(cfgs[0], name)
        for m, c in enumerate(cfgs):
            if getattr(c, name) != first:
                raise ValueError(
                    f"config[{m}].{name}={getattr(c, name)!r} differs from config[0].{name}="
                    f"{first!r}: the FitConfigs of one batch may differ only in "
                    f"{', '.join(PER_MODEL_OPTIONS)}"
                )
    return cfgs


def _refuse_unsupported(batch: KANBatch | MLPBatch, cfgs: Sequence[FitConfig]) -> None:
    kind = type(batch).__name__
    cfg = cfgs[0]
    for m, c in enumerate(cfgs):
        if c.lamb > 0 and isinstance(batch, MLPBatch):
            raise ValueError(
                f"lamb={c.lamb} > 0 (model {m}; sparsity on edge activations) needs a KAN batch; "
                f"got {kind}"
            )
    if D.is_distributed():
        raise RuntimeError("fit_batch does not support torch.distributed (data-parallel) runs yet")
    if isinstance(batch, MLPBatch):
        if cfg.grid_schedule is not None:
            raise ValueError(f"grid_schedule needs a KAN batch; got {kind}")
        if any(ks > 0 for ks in cfg.knot_steps_per_stage()):
            raise ValueError(
                f"knot_steps={cfg.knot_steps!r} > 0 (free knots) needs a KAN batch; got {kind}"
            )
        return
    before = batch.grid_size
    for i, g in enumerate(cfg.grid_schedule or ()):
        if g < before:
            where = "the batch's grid" if i == 0 else f"grid_schedule[{i - 1}]"
            raise ValueError(
                f"grid_schedule[{i}]={g} is below {where} ({before}): grid extension would "
                "coarsen the grid and lose what was learned; use an increasing schedule"
            )
        before = g


# --------------------------------------------------------------------------- the maths
def regularizer_per_model(
    norms: Sequence[Tensor], *, lamb_l1: Tensor, lamb_entropy: Tensor, eps: float = EPS
) -> Tensor:
    """(M,) regularisers: :func:`kanlab.regularization.regularizer_from_norms` per model.

    ``norms``: one ``(M, out, in)`` tensor of edge norms per layer (model m's slice is what the
    single-model function takes); ``lamb_l1``, ``lamb_entropy``: (M,) weights, one per model.
    """
    if len(norms) == 0:
        raise ValueError("need at least one layer's activations")
    total = norms[0].new_zeros(norms[0].shape[0])
    for n in norms:
        flat = n.reshape(n.shape[0], -1)  # (M, out*in)
        total_norm = flat.sum(1)
        p = flat / (total_norm + eps).unsqueeze(1)
        total = total + lamb_l1 * total_norm - lamb_entropy * (p * torch.log(p + eps)).sum(1)
    return total


def mse_per_model(pred: Tensor, y: Tensor) -> Tensor:
    """(M,) mean squared errors of ``pred`` (M, rows, out) against ``y``: (rows, out) shared by the
    models or (M, rows, out) one per model; fit's :func:`kanlab.train.step.data_loss_sum` divided by
    the rows, per model."""
    return (pred - y).pow(2).sum(dim=(1, 2)) / y.shape[-1] / y.shape[-2]


def data_loss_per_model(pred: Tensor, y: Tensor, kind: str) -> Tensor:
    """(M,) mean data losses of ``pred`` (M, rows, out): the MSE (:func:`mse_per_model`), or for
    ``kind == "classification"`` the mean cross-entropy against the labels ``y``, (rows,) shared by
    the models or (M, rows) one per model: fit's :func:`kanlab.train.step.data_loss_sum` divided by
    the rows, per model."""
    if kind == "classification":
        target = y.expand(pred.shape[0], y.shape[-1])  # (M, rows)
        ce = F.cross_entropy(pred.transpose(1, 2), target, reduction="none")  # (M, rows)
        return ce.sum(1) / y.shape[-1]
    return mse_per_model(pred, y)


def fused_loss_applies(batch: KANBatch | MLPBatch, x: Tensor) -> bool:
    """Whether :func:`fused_mse_grads` can run ``batch`` on inputs like ``x`` (shared
    ``(rows, in)`` or ``(M, rows, in)``): a KAN batch whose every layer the fused layer kernel
    would run (CPU float32/float64, one torch thread, Numba the backend, G+k and the base
    activation it takes), no knots requiring grad; or an MLP batch the fused MLP kernel takes
    (:func:`kanlab.kernels.cpu_batched_mlp_loss.takes`: SiLU or tanh, narrow layers) on CPU
    float32/float64 with one torch thread and Numba the backend; and no forward hooks on the
    batch or its layers (the fused kernels call no forward; a hook must see every one). The
    caller checks the rest (MSE, no activations needed for a regulariser)."""
    if x.shape[-2] == 0 or _hooked(batch):
        return False
    xm = x[..., :1, :]
    if isinstance(batch, MLPBatch):
        if not batch.numba_runs(xm):
            return False
        from kanlab.kernels.cpu_batched_mlp_loss import takes

        return takes(batch.widths, batch.activation)
    if not isinstance(batch, KANBatch):
        return False
    return all(
        layer._fused(xm) and not layer.knots.requires_grad and layer.coef.dtype == x.dtype
        for layer in batch.layers
    )


def _hooked(batch: nn.Module) -> bool:
    """Whether a forward (pre-)hook would see the batch's or a layer's forward."""
    from torch.nn.modules import module as torch_module

    if torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in batch.modules())


def fused_mse_grads(
    batch: KANBatch | MLPBatch, x: Tensor, y: Tensor, *, weight: Tensor | None = None
) -> tuple[Tensor, list[tuple[Tensor, ...]]]:
    """(M,) MSEs (:func:`mse_per_model`) of ``batch`` on x ``(rows, in)`` or ``(M, rows, in)``
    against y ``(rows, out)`` or ``(M, rows, out)``, and per layer the gradients of
    ``sum_m weight[m] * mse[m]`` (weight (M,), default ones) w.r.t. its parameters
    (:func:`fused_parameters`), shaped as they are; no autograd
    (:mod:`kanlab.kernels.cpu_batched_loss`, :mod:`kanlab.kernels.cpu_batched_mlp_loss`).
    Only where :func:`fused_loss_applies`."""
    if isinstance(batch, MLPBatch):
        from kanlab.kernels import cpu_batched_mlp_loss

        return cpu_batched_mlp_loss.mse_and_grads(
            x, y, weights=[la.weight for la in batch.layers], biases=[la.bias for la in batch.layers],
            activation=batch.activation, weight=weight,
        )  # fmt: skip
    from kanlab.kernels import cpu_batched_loss  # (imported, and compiled, on first use)

    layers = batch.layers
    return cpu_batched_loss.mse_and_grads(
        x, y, knots=[la.knots for la in layers], coef=[la.coef for la in layers],
        scale_spline=[la.scale_spline for la in layers],
        scale_base=[la.scale_base for la in layers], mask=[la.mask for la in layers],
        uniform=[la.grid_uniform for la in layers], spline_order=batch.spline_order,
        base_activation=layers[0].base_activation, weight=weight,
    )  # fmt: skip


def fused_parameters(batch: KANBatch | MLPBatch) -> list[tuple[Tensor, ...]]:
    """Per layer, the parameters whose gradients :func:`fused_mse_grads` gives, in its order:
    (coef, scale_spline, scale_base) of a KAN layer, (weight, bias) of an MLP layer."""
    if isinstance(batch, MLPBatch):
        return [(la.weight, la.bias) for la in batch.layers]
    return [(la.coef, la.scale_spline, la.scale_base) for la in batch.layers]


Row = tuple[float, float, float, float]


@torch.no_grad()
def _evaluate(batch: KANBatch | MLPBatch, data: _Data, kind: str) -> list[Row]:
    """Per model, fit's :func:`kanlab.train.step.evaluate` on its data: (train_loss, test_loss,
    train_metric, test_metric); RMSE for regression, cross-entropy and accuracy for classification."""
    M = batch.n_models
    cols: list[list[float]] = []
    for split in ("train", "test"):
        x, y = getattr(data, f"{split}_x"), getattr(data, f"{split}_y")
        n = x.shape[-2]
        if n == 0:
            cols.append([math.nan] * M)
            cols.append([math.nan] * M)
            continue
        pred = batch(x)
        loss = data_loss_per_model(pred, y, kind).tolist()
        if kind == "classification":
            hits = (pred.argmax(-1) == y).sum(1).tolist()
            cols.append(loss)
            cols.append([float(h) / n for h in hits])
        else:
            rmse = [math.sqrt(v) for v in loss]
            cols.append(rmse)
            cols.append(rmse)
    train_loss, train_metric, test_loss, test_metric = cols
    return list(zip(train_loss, test_loss, train_metric, test_metric, strict=True))


def _loss_scales(base: Tensor) -> Tensor:
    """Per model: :func:`kanlab.train.optim.loss_scale` from the stage-start data loss ``base``."""
    scales = [1.0 if not math.isfinite(b) or b <= 0.0 or b >= 1.0 else min(1.0 / b, 1e12)
              for b in base.tolist()]  # fmt: skip
    return torch.tensor(scales, dtype=torch.float64)


# --------------------------------------------------------------------------- one run
class _BatchRun:
    """The state of one :func:`fit_batch` call (fit's ``_Run`` for M models)."""

    def __init__(
        self, batch: KANBatch | MLPBatch, data: _Data, kind: str, cfgs: Sequence[FitConfig],
        callbacks: tuple[Callback, ...],
    ) -> None:  # fmt: skip
        cfg = cfgs[0]
        self.batch, self.data, self.kind, self.cfg = batch, data, kind, cfg
        self.callbacks = callbacks
        p = next(batch.parameters())
        weights = {name: torch.tensor([getattr(c, name) for c in cfgs], dtype=p.dtype,
                                      device=p.device) for name in PER_MODEL_OPTIONS}  # fmt: skip
        self.lamb, self.lamb_l1, self.lamb_entropy = (weights[n] for n in PER_MODEL_OPTIONS)
        self.sparse = bool((self.lamb > 0).any())  # fit: norms only when lamb > 0
        self.is_kan = isinstance(batch, KANBatch)
        self.update_every = (cfg.grid_update_every or 0) if self.is_kan else 0
        stop = cfg.stop_grid_update_step
        self.stop_updates_at = math.inf if stop is None else stop
        self.n_train = data.train_x.shape[-2]
        self.batches = batches(
            self.n_train, cfg.batch_size, torch.Generator().manual_seed(cfg.seed)
        )
        self.stages: list[int | None] = (
            list(cfg.grid_schedule) if cfg.grid_schedule is not None else [None]
        )
        self.knot_plan = cfg.knot_steps_per_stage()
        M = batch.n_models
        self.frozen = torch.zeros(M, dtype=torch.bool)
        self.histories = BatchHistories([History(kind=kind) for _ in range(M)])
        compile_time = self._warm_up()
        for h in self.histories:
            h.compile_time = compile_time
        self.start = time.perf_counter()
        self.step_index = 0

    def _warm_up(self) -> float:
        """fit's warm-up (the single-model kernels), plus the batched kernels' first call."""
        p = next(self.batch.parameters())
        if not self.is_kan or p.device.type != "cpu":
            return 0.0
        t0 = time.perf_counter()
        kernels.warm_up(p.dtype, ALL_PARTS)  # the fused batch kernels (and training step) too
        x = self.data.train_x[..., :1, :].detach()
        self.batch(x).sum().backward()  # compiles (or loads) the batched kernels
        self.batch.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    # -- parameters ---------------------------------------------------------------------------
    def _state(self) -> list[Tensor]:
        """What a restore puts back: the trained tensors and the buffers (grids), as fit's
        state-dict snapshot (plus the free-knot logits in a free-knot phase)."""
        return [*self.opt_params, *self.batch.buffers()]

    def _snapshot(self) -> list[Tensor]:
        return [t.detach().clone() for t in self._state()]

    @torch.no_grad()
    def _restore(self, models: Tensor, state: list[Tensor]) -> None:
        idx = models.nonzero().flatten()
        for t, s in zip(self._state(), state, strict=True):
            t[idx] = s[idx].to(t.device)

    def _diverge(self, models: Tensor, state: list[Tensor], what: str) -> None:
        """Restore ``models`` to ``state``, freeze them and record why."""
        models = models & ~self.frozen
        if not models.any():
            return
        self._restore(models, state)
        self.frozen |= models
        for m in models.nonzero().flatten().tolist():
            self.histories.diverged[m] = (
                f"non-finite training loss {what} {self.step_index}; model {m} was restored to its "
                "last parameters with a finite loss and frozen"
            )

    # -- stages and steps ---------------------------------------------------------------------
    def start_stage(self, stage: int, grid: int | None) -> None:
        cfg, batch = self.cfg, self.batch
        if grid is not None and grid != batch.grid_size:
            batch.extend_grid(
                grid, self.data.train_x, grid_eps=cfg.grid_eps, margin=cfg.grid_margin
            )
        self.stage = stage
        self.params = [p for p in batch.parameters() if p.requires_grad]
        self.free: BatchFreeKnots | None = None
        self.fused = self._fused_applies()  # (the grids of this stage; off in a free-knot phase)
        self.knot_steps = self.knot_plan[stage]
        self._make_optimizer(self.params, [])
        if cfg.optimizer == "lbfgs":
            with torch.no_grad():
                pred = batch(self.data.train_x)
                base = data_loss_per_model(pred, self.data.train_y, self.kind)
            self.scale = _loss_scales(base).to(base.device)
        else:
            self.scale = None
        self.last_good = self._snapshot()

    def _make_optimizer(self, params: list[Tensor], logits: list[Tensor]) -> None:
        """fit's optimiser (make_optimizer) over ``params`` and free-knot ``logits`` (never
        weight-decayed); frozen models stay frozen."""
        cfg = self.cfg
        self.opt_params = [*params, *logits]
        if cfg.optimizer == "lbfgs":
            self.opt: Any = BatchedLBFGS(self.opt_params, n_models=self.batch.n_models, lr=cfg.lr,
                                         line_search_fn="strong_wolfe", **_LBFGS)  # fmt: skip
            self.opt.diverged |= self.frozen.to(self.opt.diverged.device)
        else:
            self.opt = batched_adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                    decoupled=cfg.optimizer == "adamw")  # fmt: skip
            if logits:
                self.opt.add_param_group({"params": logits, "weight_decay": 0.0})

    def _free_knots(self) -> None:
        """From now to the stage's end the knots train too (fit's ``_free_knots``), with a fresh
        optimiser; the LBFGS loss scale stays the stage's."""
        self.free = BatchFreeKnots(self.batch)  # type: ignore[arg-type]  (KAN batches only)
        self.fused = False  # the knots train too: autograd
        logits = list(self.free.logits)
        self.last_good = [*self.last_good[: len(self.params)], *(t.detach().clone() for t in logits),
                          *self.last_good[len(self.params) :]]  # fmt: skip
        self._make_optimizer(self.params, logits)

    def _fused_applies(self) -> bool:
        """Whether this run's objective can be the fused kernel's (:func:`fused_loss_applies`,
        the MSE, no sparsity term)."""
        return (self.kind == "regression" and not self.sparse
                and fused_loss_applies(self.batch, self.data.train_x))  # fmt: skip

    def _fused_objective(self, xb: Tensor, yb: Tensor, scale: Tensor | None) -> Tensor:
        """(M,) objectives as :meth:`_objective` (no sparsity term) with the gradients of
        ``sum_m scale[m] * objective[m]`` (scale None: ones) written to the parameters' ``.grad``
        by the fused kernel; a model whose objective is not finite gets zero gradients."""
        weight = None if scale is None else scale.to(xb.dtype)
        loss, grads = fused_mse_grads(self.batch, xb, yb, weight=weight)  # type: ignore[arg-type]
        pairs = [(p, g) for ps, gs in zip(fused_parameters(self.batch), grads, strict=True)
                 for p, g in zip(ps, gs, strict=True) if p.requires_grad]  # fmt: skip
        value = loss
        wd = self.cfg.weight_decay if self.cfg.optimizer == "lbfgs" else 0.0
        if wd > 0:
            value = value + 0.5 * wd * sum(p.detach().pow(2).reshape(p.shape[0], -1).sum(1)
                                           for p, _ in pairs)  # fmt: skip
            w = torch.ones_like(loss) if weight is None else weight
            for p, g in pairs:
                g.add_(p.detach() * (wd * w).reshape(-1, *([1] * (p.dim() - 1))))
        finite = torch.isfinite(value)
        for p, g in pairs:
            if not bool(finite.all()):
                g = torch.where(finite.reshape(-1, *([1] * (g.dim() - 1))), g, 0.0)
            p.grad = g
        return value

    def _objective(self, xb: Tensor, yb: Tensor) -> tuple[Tensor, Tensor]:
        """(M,) objectives (fit's), differentiated: the data loss (+ lamb * reg, + LBFGS weight
        decay); and the (M,) regularisers before ``lamb`` (0 where ``lamb`` is 0, as in fit)."""
        if self.sparse:
            acts = self.batch.activations(xb)  # type: ignore[union-attr]  (KAN batches only)
            pred = acts[-1].sum(-1)
            norms = [a.abs().sum(dim=1) / xb.shape[-2] for a in acts]  # (M, out, in) each
            reg = regularizer_per_model(norms, lamb_l1=self.lamb_l1, lamb_entropy=self.lamb_entropy)
            reg = torch.where(self.lamb > 0, reg, torch.zeros_like(reg))
            extra = self.lamb * reg
        else:
            pred = self.batch(xb) if self.free is None else self.free(xb)
            reg = extra = pred.new_zeros(pred.shape[0])
        data_term = data_loss_per_model(pred, yb, self.kind)
        if self.cfg.optimizer == "lbfgs" and self.cfg.weight_decay > 0:
            wd = sum(p.pow(2).reshape(p.shape[0], -1).sum(1) for p in self.params)
            extra = extra + 0.5 * self.cfg.weight_decay * wd
        return data_term + extra, reg

    def _first(self, value: Tensor, reg: Tensor) -> None:
        """Keep the step's first objective and regulariser per model (a callback's ``loss``,
        ``reg``; History's ``reg``)."""
        if self.first is None:
            self.first = (value.detach().tolist(), reg.detach().tolist())

    def _zero_grad(self) -> None:
        for p in self.opt_params:
            p.grad = None

    def _backward(self, value: Tensor) -> None:
        finite = torch.isfinite(value.detach())
        torch.where(finite, value, torch.zeros_like(value)).sum().backward()

    def step(self, s: int) -> None:
        cfg, data = self.cfg, self.data
        if self.knot_steps and s == cfg.steps - self.knot_steps:  # free knots to the stage's end
            self._free_knots()
        if self.update_every and s % self.update_every == 0 and s < self.stop_updates_at:
            if self.free is None:
                self._grid_update()
        xb, yb = data.train_rows(next(self.batches))
        before = self._snapshot()
        self.first: tuple[list[float], list[float]] | None = None
        if cfg.optimizer == "lbfgs":
            scale = self.scale

            def closure() -> Tensor:
                self._zero_grad()
                if self.fused:
                    value = self._fused_objective(xb, yb, scale)
                    self._first(value, torch.zeros_like(value))
                    return value * scale
                value, reg = self._objective(xb, yb)
                self._first(value, reg)
                value = value * scale
                self._backward(value)
                return value.detach()

            moving = ~self.frozen
            obj = self.opt.step(closure)
            bad_start = ~torch.isfinite(obj).cpu()
            if self.free is not None:  # (a model that diverged in its search: its last iterate)
                self.free.write_back(moving & ~bad_start)
            # a model that failed inside its line search is already back at its last finite iterate
            in_search = self.opt.diverged.cpu() & ~self.frozen & ~bad_start
            self._diverge(bad_start, self.last_good, "at step")
            self.frozen |= in_search
            for m in in_search.nonzero().flatten().tolist():
                self.histories.diverged[m] = (
                    f"non-finite training loss in the line search of step {self.step_index}; "
                    f"model {m} stays at its last parameters with a finite loss, frozen"
                )
        else:
            self._zero_grad()
            if self.fused:
                value = self._fused_objective(xb, yb, None)
                self._first(value, torch.zeros_like(value))
            else:
                value, reg = self._objective(xb, yb)
                self._first(value, reg)
                self._backward(value)
            bad = ~torch.isfinite(value.detach()).cpu()
            self._diverge(bad, self.last_good, "at step")
            step_frozen(self.opt, self.frozen.to(self.params[0].device))
            if self.free is not None:
                self.free.write_back(~self.frozen)
        self.last_good = before
        if (self.step_index + 1) % cfg.log_every == 0 or s == cfg.steps - 1:
            self._log(before)
        self.step_index += 1

    def _grid_update(self) -> None:
        """Every model's grid from its training inputs; frozen models keep their state."""
        batch, frozen = self.batch, self.frozen
        saved = [t.detach().clone() for t in batch.state_dict().values()] if frozen.any() else None
        batch.update_grid(
            self.data.train_x, grid_eps=self.cfg.grid_eps, margin=self.cfg.grid_margin
        )
        if saved is not None:
            idx = frozen.nonzero().flatten()
            with torch.no_grad():
                for t, s in zip(batch.state_dict().values(), saved, strict=True):
                    t[idx] = s[idx]

    def _log(self, before: list[Tensor]) -> None:
        """Evaluate, record a History row per model still training, run the callbacks."""
        rows = _evaluate(self.batch, self.data, self.kind)
        bad = torch.tensor([not math.isfinite(row[0]) for row in rows])
        if (bad & ~self.frozen).any():
            self._diverge(bad, before, "after step")
            rows = _evaluate(self.batch, self.data, self.kind)
        grid = self.batch.grid_size if self.is_kan else None
        elapsed = time.perf_counter() - self.start
        assert self.first is not None  # (set by the step's first objective)
        obj, reg = self.first
        training = (~self.frozen).nonzero().flatten().tolist()
        for m in training:
            self.histories[m].append(self.step_index, rows[m], reg[m], grid, elapsed)
        if not self.callbacks:
            return
        stop = torch.zeros_like(self.frozen)
        for m in training:
            state = StepState(self.step_index, self.batch.unstack_one(m), self.histories[m],
                              obj[m], reg[m], self.stage, grid, model_index=m)  # fmt: skip
            stop[m] = any([bool(cb(state)) for cb in self.callbacks])  # every callback sees it
        self._stop(stop)

    def _stop(self, models: Tensor) -> None:
        """Freeze ``models`` (a callback asked them to stop); the others go on."""
        if not models.any():
            return
        self.frozen |= models
        if self.cfg.optimizer == "lbfgs":  # a dropped-out model never moves again
            self.opt.diverged |= models.to(self.opt.diverged.device)
        for m in models.nonzero().flatten().tolist():
            self.histories.stopped[m] = self.step_index
