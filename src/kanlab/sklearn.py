"""scikit-learn estimators: :class:`KANRegressor` and :class:`KANClassifier`.

They wrap a :class:`kanlab.KAN` trained by :func:`kanlab.fit`, so they work in ``Pipeline``,
``GridSearchCV`` and ``cross_val_score``. Inputs are standardised (per feature, on the training set)
unless ``standardize=False``; the regressor also standardises its targets internally (predictions are
returned in the original units). Importing this module imports scikit-learn; ``import kanlab`` does
not import this module.

    from kanlab.sklearn import KANRegressor
    reg = KANRegressor(hidden=(5,), grid_size=5, steps=50).fit(X, y)
    reg.predict(X_new); reg.score(X_test, y_test)

The fitted KAN is ``estimator.model_`` (save it with :func:`kanlab.save`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, check_random_state, validate_data

from kanlab.config import FitConfig, KANConfig
from kanlab.datasets import Dataset
from kanlab.models import KAN
from kanlab.train import fit

__all__ = ["KANClassifier", "KANRegressor"]

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


class _KANEstimator(BaseEstimator):
    """Shared fit/predict machinery; subclasses say how targets are encoded."""

    _kind = "regression"

    def __init__(
        self,
        hidden: Sequence[int | Sequence[int]] = (5,),
        *,
        grid_size: int = 5,
        spline_order: int = 3,
        steps: int = 50,
        optimizer: str = "lbfgs",
        lr: float = 1.0,
        batch_size: int | None = None,
        lamb: float = 0.0,
        grid_update_every: int | None = 10,
        stop_grid_update_step: int | None = 50,
        grid_schedule: Sequence[int] | None = None,
        weight_decay: float = 0.0,
        standardize: bool = True,
        dtype: str = "float64",
        random_state: int | np.random.RandomState | None = 0,
    ) -> None:
        self.hidden = hidden
        self.grid_size = grid_size
        self.spline_order = spline_order
        self.steps = steps
        self.optimizer = optimizer
        self.lr = lr
        self.batch_size = batch_size
        self.lamb = lamb
        self.grid_update_every = grid_update_every
        self.stop_grid_update_step = stop_grid_update_step
        self.grid_schedule = grid_schedule
        self.weight_decay = weight_decay
        self.standardize = standardize
        self.dtype = dtype
        self.random_state = random_state

    # ------------------------------------------------------------------ helpers
    def _torch_dtype(self) -> torch.dtype:
        if self.dtype not in _DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; valid: {', '.join(_DTYPES)}")
        return _DTYPES[self.dtype]

    def _seed(self) -> int:
        if isinstance(self.random_state, int | np.integer) and self.random_state >= 0:
            return int(self.random_state)
        return int(check_random_state(self.random_state).randint(0, 2**31 - 1))

    def _to_tensor(self, x: np.ndarray) -> torch.Tensor:
        # a copy (np.array) so read-only inputs never reach torch.from_numpy
        return torch.from_numpy(np.array(x, dtype=np.float64)).to(self._torch_dtype())

    def _scale_x(self, x: np.ndarray) -> np.ndarray:
        return (x - self.x_mean_) / self.x_scale_

    def _fit(self, x: np.ndarray, y_train: torch.Tensor, n_out: int) -> None:
        if x.shape[0] < 2:
            raise ValueError(f"a KAN needs at least 2 samples to fit, got {x.shape[0]} sample")
        hidden = [self.hidden] if isinstance(self.hidden, int) else list(self.hidden)
        if self.standardize:
            self.x_mean_ = x.mean(axis=0)
            std = x.std(axis=0)
            self.x_scale_ = np.where(std > 0, std, 1.0)
        else:
            self.x_mean_ = np.zeros(x.shape[1])
            self.x_scale_ = np.ones(x.shape[1])
        seed = self._seed()
        self.model_ = KAN.from_config(self._model_config(x.shape[1], hidden, n_out, seed))
        train_x = self._to_tensor(self._scale_x(x))
        empty_y = y_train[:0]
        meta: dict[str, Any] = {"kind": self._kind}
        if self._kind == "classification":
            meta["n_classes"] = n_out
        data = Dataset(train_x, y_train, train_x[:0], empty_y, name="sklearn", meta=meta)
        self.history_ = fit(self.model_, data, self._fit_config(seed))

    def _model_config(
        self, n_in: int, hidden: list[int | Sequence[int]], n_out: int, seed: int
    ) -> KANConfig:
        """The KAN this estimator's parameters describe."""
        self._torch_dtype()  # float32 or float64 only
        # with a grid schedule the model starts at its first grid (grid_size is not used)
        grid = self.grid_schedule[0] if self.grid_schedule else self.grid_size
        return KANConfig(widths=(n_in, *hidden, n_out), grid_size=grid,
                         spline_order=self.spline_order, seed=seed, dtype=self.dtype)  # fmt: skip

    def _fit_config(self, seed: int) -> FitConfig:
        """The training run this estimator's parameters describe."""
        return FitConfig(
            optimizer=self.optimizer, steps=self.steps, lr=self.lr, batch_size=self.batch_size,
            lamb=self.lamb, grid_update_every=self.grid_update_every,
            stop_grid_update_step=self.stop_grid_update_step, grid_schedule=self.grid_schedule,
            weight_decay=self.weight_decay, seed=seed, progress=False,
        )  # fmt: skip

    def _forward(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "model_")
        x = validate_data(self, X, reset=False, dtype=np.float64)
        with torch.no_grad():
            out = self.model_(self._to_tensor(self._scale_x(x)))
        return out.double().numpy()


class KANRegressor(RegressorMixin, _KANEstimator):
    """A KAN regressor (single or multiple outputs). Parameters: see :class:`_KANEstimator`'s
    signature; ``hidden`` are the hidden widths (``()`` for a one-layer KAN; an entry may be a pair
    ``[n_sum, n_mult]`` for multiplication nodes, see :mod:`kanlab.mult`)."""

    _kind = "regression"

    def fit(self, X: Any, y: Any) -> KANRegressor:
        x, y = validate_data(self, X, y, dtype=np.float64, y_numeric=True, multi_output=True)
        y = np.asarray(y, dtype=np.float64)
        self._y_1d = y.ndim == 1
        y2 = y.reshape(-1, 1) if y.ndim == 1 else y
        self.y_mean_ = y2.mean(axis=0)
        std = y2.std(axis=0)
        self.y_scale_ = np.where(std > 0, std, 1.0)
        y_train = self._to_tensor((y2 - self.y_mean_) / self.y_scale_)
        self._fit(x, y_train, y2.shape[1])
        return self

    def predict(self, X: Any) -> np.ndarray:
        out = self._forward(X) * self.y_scale_ + self.y_mean_
        return out[:, 0] if self._y_1d else out

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags


class KANClassifier(ClassifierMixin, _KANEstimator):
    """A KAN classifier: one output (logit) per class, trained with cross-entropy."""

    _kind = "classification"

    def fit(self, X: Any, y: Any) -> KANClassifier:
        x, y = validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y)
        self.classes_, idx = np.unique(y, return_inverse=True)
        y_train = torch.from_numpy(np.asarray(idx, dtype=np.int64).reshape(-1))
        self._fit(x, y_train, len(self.classes_))
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        logits = torch.from_numpy(self._forward(X))
        return torch.softmax(logits, dim=-1).numpy()

    def predict(self, X: Any) -> np.ndarray:
        idx = self._forward(X).argmax(axis=1)  # first: raises NotFittedError before fit
        return self.classes_[idx]
