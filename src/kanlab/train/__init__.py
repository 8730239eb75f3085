"""One ``fit()`` loop for KANs and MLPs: optimisers, sparsity, grid updates and schedules, History.

A *step* is one optimiser update: one ``LBFGS.step(closure)`` on the full training set, or one Adam(W)
update on one mini-batch (batches come from shuffled epochs; ``batch_size=None`` means full batch).
``steps`` counts them per grid stage (one stage per ``grid_schedule`` entry, else one), everywhere in
kanlab. After every ``log_every``-th step (and the last) the model is evaluated on the full training
and test sets and a row is appended to :class:`History`; callbacks run after each logged row.

The options are the fields of :class:`kanlab.config.FitConfig`: ``fit(model, data, config)``, or
keywords (``fit(model, data, steps=50)``), which override the config's fields.

Under ``torch.distributed`` (e.g. ``torchrun``) the same call trains data-parallel; see
:mod:`kanlab.distributed` for the method and its seams (the rows a rank trains on, the inputs a
grid update sees, metric sums reduced across ranks). Losses are sums over a rank's rows divided by
the *global* row count, and metrics are computed from global sums and counts, never from local
means. Without a process group every seam is the identity.

Options for KANs only (the sparsity regulariser ``lamb > 0``, ``grid_schedule`` and free knots
``knot_steps > 0``) raise a ``ValueError`` for any other model; the grid-update options (``grid_update_every``,
``stop_grid_update_step``, ``grid_eps``) have non-zero defaults and are ignored for models without a
grid, so the same call trains a KAN and an MLP.

Modules: :mod:`~kanlab.train.history` (History, StepState, callbacks), :mod:`~kanlab.train.optim`
(optimisers, the LBFGS loss scale, mini-batch order), :mod:`~kanlab.train.step` (the objective, one
optimiser step, evaluation), :mod:`~kanlab.train.loop` (``fit``), :mod:`~kanlab.train.batched_optim`
(LBFGS and Adam for M models stacked on a leading dimension, each model independent),
:mod:`~kanlab.train.batch_loop` (``fit_batch``: M models of a :mod:`kanlab.model_batch` batch
trained as ``fit`` trains each, on one data set or one per model; ``fit`` runs the same optimisers
with M = 1, and ``kanlab compare`` trains its trials in such batches),
:mod:`~kanlab.train.batch_free_knots` (free knots per model of a batch).
"""

from __future__ import annotations

from kanlab.config import OPTIMIZERS, FitConfig
from kanlab.train.batch_loop import BatchHistories, fit_batch
from kanlab.train.history import Callback, History, StepState
from kanlab.train.loop import NonFiniteLossError, fit

__all__ = [
    "OPTIMIZERS",
    "BatchHistories",
    "Callback",
    "FitConfig",
    "History",
    "NonFiniteLossError",
    "StepState",
    "fit",
    "fit_batch",
]
