"""The :class:`Dataset` container (train/test tensors plus ``meta``) and its validation.

The public face is :mod:`kanlab.datasets`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from kanlab._checks import check_choice

__all__ = ["KINDS", "TASKS", "Dataset", "check_dtype", "check_finite_field"]

KINDS = ("regression", "classification")  # what a data set's y is (Dataset.kind)
TASKS = KINDS  # the old name of KINDS, kept for callers


@dataclass(frozen=True, eq=False)
class Dataset:
    """A train/test split. x: float (n, d); y: float (n, out) (regression) or int64 (n,) (classes).

    ``meta`` says what the data is: ``kind`` ("regression" or "classification"; inferred from
    y's dtype when absent), ``n_classes`` (classification), ``feature_names``, ``target_name``,
    ``formula``/``ranges`` (synthetic), ``source``, standardisation statistics. ``meta["task"]``,
    the old name of ``meta["kind"]``, is still accepted and stored as ``"kind"``.
    """

    train_x: Tensor  # (n_train, d) floating
    train_y: Tensor  # (n_train, out) floating, or (n_train,) int64 class indices
    test_x: Tensor  # (n_test, d)
    test_y: Tensor  # (n_test, out) or (n_test,)
    name: str = "dataset"
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for f in ("train_x", "train_y", "test_x", "test_y"):
            v = getattr(self, f)
            if not isinstance(v, Tensor):
                raise TypeError(f"Dataset.{f} must be a torch.Tensor, got {type(v).__name__}")
        if not isinstance(self.meta, dict):
            raise TypeError(f"Dataset.meta must be a dict, got {type(self.meta).__name__}")
        object.__setattr__(
            self, "meta", dict(self.meta)
        )  # our own copy: the caller's is not edited
        key = _take_old_kind_key(self.meta)
        kind = self.meta.get("kind")
        if kind is None:
            kind = "regression" if self.train_y.is_floating_point() else "classification"
            self.meta["kind"] = kind
        check_choice(f"Dataset.meta[{key!r}]", kind, KINDS)
        for split in ("train", "test"):
            x, y = getattr(self, f"{split}_x"), getattr(self, f"{split}_y")
            if not x.is_floating_point() or x.dim() != 2:
                raise ValueError(
                    f"Dataset.{split}_x must be a floating tensor of shape (n, d), "
                    f"got dtype {x.dtype} and shape {tuple(x.shape)}"
                )
            check_finite_field(f"Dataset.{split}_x", x)
            if kind == "regression":
                if not y.is_floating_point() or y.dim() != 2:
                    raise ValueError(
                        f"Dataset.{split}_y must be a floating tensor of shape (n, out) for "
                        f"regression, got dtype {y.dtype} and shape {tuple(y.shape)}"
                    )
                check_finite_field(f"Dataset.{split}_y", y)
            elif y.dtype != torch.int64 or y.dim() != 1:
                raise ValueError(
                    f"Dataset.{split}_y must be an int64 tensor of shape (n,) (class indices) for "
                    f"classification, got dtype {y.dtype} and shape {tuple(y.shape)}"
                )
            if x.shape[0] != y.shape[0]:
                raise ValueError(
                    f"Dataset.{split}_x has {x.shape[0]} rows but {split}_y has {y.shape[0]}"
                )
        if self.train_x.shape[1] != self.test_x.shape[1]:
            raise ValueError(
                f"Dataset.train_x has {self.train_x.shape[1]} features but test_x has "
                f"{self.test_x.shape[1]}"
            )
        if kind == "regression" and self.train_y.shape[1] != self.test_y.shape[1]:
            raise ValueError(
                f"Dataset.train_y has {self.train_y.shape[1]} outputs but test_y has "
                f"{self.test_y.shape[1]}"
            )
        if kind == "classification":
            labels = torch.cat([self.train_y, self.test_y])
            n_classes = self.meta.get("n_classes")
            if n_classes is None:
                n_classes = int(labels.max()) + 1 if labels.numel() else 0
                self.meta["n_classes"] = n_classes
            if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= n_classes):
                raise ValueError(
                    f"Dataset labels must lie in [0, {n_classes}) (meta['n_classes']), got "
                    f"range [{int(labels.min())}, {int(labels.max())}]"
                )

    @property
    def n_features(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def n_outputs(self) -> int:
        """Output width of a model for this data: out dims (regression) or n_classes."""
        if self.kind == "classification":
            return int(self.meta["n_classes"])
        return int(self.train_y.shape[1])

    @property
    def kind(self) -> str:
        """ "regression" (float y of shape (n, out)) or "classification" (int64 class indices)."""
        return str(self.meta["kind"])

    @property
    def task(self) -> str:
        """The old name of :attr:`kind`, kept for callers."""
        return self.kind

    def to(
        self, dtype: torch.dtype | None = None, device: torch.device | str | None = None
    ) -> Dataset:
        """A copy with x (and regression y) converted; class labels stay int64."""
        if dtype is not None:
            check_dtype(dtype)

        def cx(t: Tensor) -> Tensor:
            return t.to(device=device, dtype=dtype)

        def cy(t: Tensor) -> Tensor:
            return cx(t) if self.kind == "regression" else t.to(device=device)

        return Dataset(
            cx(self.train_x), cy(self.train_y), cx(self.test_x), cy(self.test_y),
            name=self.name, meta=dict(self.meta),
        )  # fmt: skip

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, kind={self.kind!r}, n_train={self.train_x.shape[0]}, "
            f"n_test={self.test_x.shape[0]}, n_features={self.n_features}, "
            f"n_outputs={self.n_outputs}, dtype={self.train_x.dtype})"
        )


def _take_old_kind_key(meta: dict[str, Any]) -> str:
    """Move ``meta["task"]`` (the old name) to ``meta["kind"]``; -> the key the caller used."""
    if "task" not in meta:
        return "kind"
    old = meta.pop("task")
    if "kind" in meta and meta["kind"] != old:
        raise ValueError(
            f"Dataset.meta['kind'] {meta['kind']!r} and Dataset.meta['task'] {old!r} (its old "
            "name) disagree; give one of them"
        )
    meta["kind"] = old
    return "task"


def check_dtype(dtype: object) -> torch.dtype:
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating torch.dtype (e.g. torch.float32), got {dtype!r}")
    return dtype


def check_finite_field(name: str, t: Tensor) -> None:
    bad = ~torch.isfinite(t)
    if bool(bad.any()):
        n_nan = int(torch.isnan(t).sum())
        n_inf = int(bad.sum()) - n_nan
        rows = int(bad.reshape(t.shape[0], -1).any(dim=1).sum()) if t.dim() else 1
        raise ValueError(
            f"{name} contains non-finite values: {n_nan} NaN and {n_inf} Inf "
            f"(in {rows} of {t.shape[0] if t.dim() else 1} rows)"
        )
