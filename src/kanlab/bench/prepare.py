"""The data each model family trains on in a comparison, and its errors back in the data's units.

    prep = prepare(data, "kan", grid_range=(-1.0, 1.0))   # -> Prepared(data, target, scaling)
    fit(model, prep.data, ...)
    errs = measure(model, prep, data)   # test/train RMSE in data units, NRMSE; or accuracy

Why: an unscaled comparison lets the *units* pick the winner. A target in [0, 1000] or ×1e6 makes
the loss landscape (and LBFGS's line search) different for each family, so the same function could
name the MLP or the KAN depending on the units, or diverge (issue 18, finding 3). So, for every
model of a comparison:

- **Regression targets** are standardised per output column with the *training* split's mean and
  (population) standard deviation: ``y' = (y - mean) / std``. A constant column gets std 1.
- **Inputs** are scaled the way each family needs, from the training split only (so every seed of
  a trial sees the same data): a KAN's to its first layer's grid range by min-max (the training
  split's min -> low, max -> high; its default grid is ``(-1, 1)``, see
  :class:`kanlab.config.KANConfig`), an MLP's by z-score. A constant input column maps to the
  middle of the range (min-max) or to 0 (z-score): it is never divided by zero.
- Classification: inputs as above, class labels untouched.

The statistics come from the training split alone; the test split reuses them (a test value may fall
outside the grid range: splines extend and the residual activation carries on).

Errors (:func:`measure`) are computed from the trained model's predictions, un-standardised, in the
data's units. For ``out`` output columns with residuals ``r_ij`` (row i, column j):

- ``rmse = sqrt(mean_ij r_ij^2)``: in the target's units (with several outputs, their common RMS;
  as the training history has always reported it);
- ``nrmse = sqrt(mean_ij (r_ij / std_j)^2)``: the RMSE in standardised units, i.e. the training
  objective's square root; with one output simply ``rmse / std``. 1.0 means "no better than
  predicting the training mean"; it does not change with the target's units or offset.

Everything here is a function of its arguments (nothing is trained, written or printed).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from kanlab.datasets import Dataset

__all__ = [
    "FAMILIES",
    "Prepared",
    "TargetScaling",
    "measure",
    "minmax_inputs",
    "prepare",
    "regression_errors",
    "standardize_targets",
    "zscore_inputs",
]

FAMILIES = ("kan", "mlp")  # model families and how their inputs are scaled: min-max, z-score


@dataclass(frozen=True)
class TargetScaling:
    """How regression targets were standardised: ``y' = (y - mean) / std``, one entry per column."""

    mean: tuple[float, ...]  # the training split's mean of each output column
    std: tuple[float, ...]  # its population std (1.0 for a constant column: never divides by 0)

    def unscale(self, y: Tensor) -> Tensor:
        """Standardised values (n, out) back in the data's units (float64)."""
        return y.double() * _row(self.std, y) + _row(self.mean, y)

    def to_dict(self) -> dict[str, list[float]]:
        return {"y_mean": list(self.mean), "y_std": list(self.std)}


@dataclass(frozen=True)
class Prepared:
    """A data set as one model family trains on it."""

    data: Dataset  # scaled inputs; standardised targets (regression)
    target: TargetScaling | None  # what undoes the target scaling (None: classification)
    scaling: dict[str, Any]  # JSON-able record, e.g. {"x": "minmax[-1,1]", "y": "zscore", ...}


def _row(values: Sequence[float], like: Tensor) -> Tensor:
    return torch.tensor(values, dtype=torch.float64, device=like.device)


def _replace(data: Dataset, **tensors: Tensor) -> Dataset:
    """A copy of ``data`` with some tensors replaced (cast back to their old dtypes)."""
    fields = {f: getattr(data, f) for f in ("train_x", "train_y", "test_x", "test_y")}
    for name, t in tensors.items():
        fields[name] = t.to(fields[name].dtype)
    return Dataset(**fields, name=data.name, meta=dict(data.meta))


def minmax_inputs(data: Dataset, low: float = -1.0, high: float = 1.0) -> tuple[Dataset, str]:
    """Inputs mapped by the training split's min/max to ``[low, high]`` (a constant column to the
    middle); -> (the data, a label such as ``"minmax[-1,1]"``)."""
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"min-max range must be finite with low < high, got ({low}, {high})")
    train = data.train_x.double()
    lo, hi = train.min(dim=0).values, train.max(dim=0).values
    span = hi - lo
    const = span <= 0
    mid = (low + high) / 2
    # x' = mid + (x - centre) * scale: the training split's [min, max] onto [low, high]; a constant
    # column (span 0) is only shifted, its one training value onto the middle
    centre = torch.where(const, lo, (lo + hi) / 2)
    scale = torch.where(const, 1.0, (high - low) / torch.where(const, 1.0, span))

    def f(x: Tensor) -> Tensor:
        return mid + (x.double() - centre) * scale

    label = f"minmax[{low:g},{high:g}]"
    return _replace(data, train_x=f(data.train_x), test_x=f(data.test_x)), label


def zscore_inputs(data: Dataset) -> tuple[Dataset, str]:
    """Inputs standardised with the training split's mean and population std (a constant column
    is only centred); -> (the data, ``"zscore"``)."""
    mean, std = _mean_std(data.train_x)

    def f(x: Tensor) -> Tensor:
        return (x.double() - mean) / std

    return _replace(data, train_x=f(data.train_x), test_x=f(data.test_x)), "zscore"


def _mean_std(t: Tensor) -> tuple[Tensor, Tensor]:
    """Per-column mean and population std (1 where the column is constant), in float64."""
    t = t.double()
    mean = t.mean(dim=0)
    std = t.std(dim=0, correction=0)
    return mean, torch.where(std > 0, std, torch.ones_like(std))


def standardize_targets(data: Dataset) -> tuple[Dataset, TargetScaling]:
    """Regression targets standardised per column with the training split's mean and population
    std (a constant column: std 1); -> (the data, the statistics that undo it)."""
    if data.kind != "regression":
        raise ValueError(f"only regression targets are standardised; {data.name!r} is {data.kind}")
    mean, std = _mean_std(data.train_y)
    scaled = _replace(
        data,
        train_y=(data.train_y.double() - mean) / std,
        test_y=(data.test_y.double() - mean) / std,
    )
    return scaled, TargetScaling(mean=tuple(mean.tolist()), std=tuple(std.tolist()))


def prepare(
    data: Dataset, family: str, *, grid_range: tuple[float, float] = (-1.0, 1.0)
) -> Prepared:
    """``data`` as ``family`` ("kan" or "mlp") trains on it in a comparison (see the module
    docstring). ``grid_range``: a KAN's first-layer grid range, where its inputs are mapped."""
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; valid: {', '.join(FAMILIES)}")
    if family == "kan":
        scaled, x_label = minmax_inputs(data, *grid_range)
    else:
        scaled, x_label = zscore_inputs(data)
    scaling: dict[str, Any] = {"x": x_label}
    if data.kind != "regression":
        scaling["y"] = "none"
        return Prepared(data=scaled, target=None, scaling=scaling)
    scaled, target = standardize_targets(scaled)
    scaling.update(y="zscore", **target.to_dict())
    return Prepared(data=scaled, target=target, scaling=scaling)


def regression_errors(pred: Tensor, y: Tensor, target: TargetScaling) -> tuple[float, float]:
    """(RMSE in the data's units, NRMSE) of standardised predictions ``pred`` (n, out) against
    targets ``y`` (n, out) in the data's units; NaN for an empty split or non-finite predictions."""
    if y.shape[0] == 0:
        return math.nan, math.nan
    resid = target.unscale(pred) - y.double()  # (n, out), data units
    rmse = math.sqrt(float(resid.pow(2).mean()))
    nrmse = math.sqrt(float((resid / _row(target.std, resid)).pow(2).mean()))
    return rmse, nrmse


@torch.no_grad()
def measure(model: nn.Module, prepared: Prepared, raw: Dataset) -> dict[str, float]:
    """The trained ``model``'s errors on both splits: ``{train,test}_metric`` (RMSE in the data's
    units, or accuracy) and, for regression, ``{train,test}_nrmse``. ``prepared`` is what the model
    trained on; ``raw`` the data in its own units (the targets compared against)."""
    p = next(model.parameters())
    out: dict[str, float] = {}
    for split in ("train", "test"):
        x = getattr(prepared.data, f"{split}_x").to(device=p.device, dtype=p.dtype)
        pred = model(x)
        y = getattr(raw, f"{split}_y").to(p.device)
        if prepared.target is None:  # classification: accuracy
            n = y.shape[0]
            out[f"{split}_metric"] = float((pred.argmax(-1) == y).sum()) / n if n else math.nan
        else:
            rmse, nrmse = regression_errors(pred, y, prepared.target)
            out[f"{split}_metric"], out[f"{split}_nrmse"] = rmse, nrmse
    return out
