"""What a training run records and what its callbacks see: :class:`History`, :class:`StepState`."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

__all__ = ["Callback", "History", "StepState"]


@dataclass
class History:
    """Per logged step: the training record of one :func:`fit` call (lists of equal length).

    ``train_loss``/``test_loss``: RMSE for regression (what the KAN paper reports), cross-entropy for
    classification. ``train_metric``/``test_metric``: RMSE for regression, accuracy for
    classification. ``reg``: the sparsity regulariser before multiplying by ``lamb`` at the start of
    the step (0.0 when ``lamb == 0``: not computed). ``grid_size``: the model's grid (None for an
    MLP). ``wall_time``: seconds since the start of ``fit`` (evaluation included).
    ``compile_time``: seconds ``fit`` spent before its clock started compiling the CPU kernels or
    loading them from Numba's cache (a cold cache: the first run; see
    :func:`kanlab.kernels.warm_up`), in no ``wall_time`` and so not in the time per step.
    ``restart_losses``: with ``restarts > 0``, each restart candidate's training loss after its
    ``restart_steps`` (see :mod:`kanlab.train.restarts`; those steps are in no other list).
    """

    kind: str = "regression"  # "regression" | "classification": which way is better for the metric
    step: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    test_loss: list[float] = field(default_factory=list)
    train_metric: list[float] = field(default_factory=list)
    test_metric: list[float] = field(default_factory=list)
    reg: list[float] = field(default_factory=list)
    grid_size: list[int | None] = field(default_factory=list)
    wall_time: list[float] = field(default_factory=list)
    compile_time: float = 0.0
    restart_losses: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of plain lists."""
        return asdict(self)

    def __len__(self) -> int:
        return len(self.step)

    def append(
        self, step: int, row: tuple[float, float, float, float], reg: float, grid: int | None,
        wall_time: float,
    ) -> None:  # fmt: skip
        """Record one logged step; ``row`` is (train_loss, test_loss, train_metric, test_metric)."""
        self.step.append(step)
        self.train_loss.append(row[0])
        self.test_loss.append(row[1])
        self.train_metric.append(row[2])
        self.test_metric.append(row[3])
        self.reg.append(reg)
        self.grid_size.append(grid)
        self.wall_time.append(wall_time)

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
        return max(vals) if self.kind == "classification" else min(vals)

    @property
    def time_per_step(self) -> float:
        """Mean wall time per step (seconds), evaluation included, kernel compilation excluded."""
        if not self.step:
            return math.nan
        return self.wall_time[-1] / (self.step[-1] + 1)


@dataclass(frozen=True)
class StepState:
    """What a callback sees after a logged step; return True from the callback to stop training.

    ``model_index``: which model of a batch this is (:func:`kanlab.train.fit_batch` calls the
    callbacks once per model still training; True then stops that model only); 0 in ``fit``.
    """

    step: int  # global step index (0-based, counting across grid-schedule stages)
    model: nn.Module
    history: History
    loss: float  # the objective the optimiser saw at the start of this step (loss + lamb * reg)
    reg: float
    stage: int  # index into grid_schedule (0 without one)
    grid_size: int | None
    model_index: int = 0


Callback = Callable[[StepState], bool | None]
