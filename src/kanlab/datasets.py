"""Data sets: the KAN paper's toy and special functions, the Feynman equations, real sets, CSV.

Every loader returns a :class:`Dataset` (train/test tensors plus a ``meta`` dict saying what the data
is). Synthetic data is drawn from a private seeded ``torch.Generator`` in float64 and converted to the
requested dtype at the end, so the same seed gives bit-identical tensors and never touches the global
RNG. scipy and scikit-learn are imported lazily, inside the loaders that need them.

    ds = get("paper/exp_sin_sq")              # registered tasks; names() lists them
    ds = from_function(f, 2, ranges=(-1, 1))  # any f: (n, n_var) float64 tensor -> (n,) or (n, out)
    ds = from_csv("data.csv", target="y")     # numeric features, numeric or string target
"""

from __future__ import annotations

import csv
import difflib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from kanlab._checks import check_choice, check_float, check_int, check_range
from kanlab._feynman import EXCLUDED as FEYNMAN_EXCLUDED  # row -> why it is not registered

__all__ = [
    "FEYNMAN_EXCLUDED",
    "Dataset",
    "describe",
    "from_arrays",
    "from_csv",
    "from_function",
    "get",
    "names",
]

TASKS = ("regression", "classification")
_MISSING = frozenset({"", "na", "n/a", "nan", "null", "none", "?"})


# ----------------------------------------------------------------------------------------- Dataset
@dataclass(frozen=True, eq=False)
class Dataset:
    """A train/test split. x: float (n, d); y: float (n, out) (regression) or int64 (n,) (classes).

    ``meta`` says what the data is: ``task``, ``n_classes`` (classification), ``feature_names``,
    ``target_name``, ``formula``/``ranges`` (synthetic), ``source``, standardisation statistics.
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
        task = self.meta.get("task")
        if task is None:
            task = "regression" if self.train_y.is_floating_point() else "classification"
            self.meta["task"] = task
        check_choice("Dataset.meta['task']", task, TASKS)
        for split in ("train", "test"):
            x, y = getattr(self, f"{split}_x"), getattr(self, f"{split}_y")
            if not x.is_floating_point() or x.dim() != 2:
                raise ValueError(
                    f"Dataset.{split}_x must be a floating tensor of shape (n, d), "
                    f"got dtype {x.dtype} and shape {tuple(x.shape)}"
                )
            _check_finite_field(f"Dataset.{split}_x", x)
            if task == "regression":
                if not y.is_floating_point() or y.dim() != 2:
                    raise ValueError(
                        f"Dataset.{split}_y must be a floating tensor of shape (n, out) for "
                        f"regression, got dtype {y.dtype} and shape {tuple(y.shape)}"
                    )
                _check_finite_field(f"Dataset.{split}_y", y)
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
        if task == "regression" and self.train_y.shape[1] != self.test_y.shape[1]:
            raise ValueError(
                f"Dataset.train_y has {self.train_y.shape[1]} outputs but test_y has "
                f"{self.test_y.shape[1]}"
            )
        if task == "classification":
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
        if self.task == "classification":
            return int(self.meta["n_classes"])
        return int(self.train_y.shape[1])

    @property
    def task(self) -> str:
        return str(self.meta["task"])

    def to(
        self, dtype: torch.dtype | None = None, device: torch.device | str | None = None
    ) -> Dataset:
        """A copy with x (and regression y) converted; class labels stay int64."""
        if dtype is not None:
            _check_dtype(dtype)

        def cx(t: Tensor) -> Tensor:
            return t.to(device=device, dtype=dtype)

        def cy(t: Tensor) -> Tensor:
            return cx(t) if self.task == "regression" else t.to(device=device)

        return Dataset(
            cx(self.train_x), cy(self.train_y), cx(self.test_x), cy(self.test_y),
            name=self.name, meta=dict(self.meta),
        )  # fmt: skip

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, task={self.task!r}, n_train={self.train_x.shape[0]}, "
            f"n_test={self.test_x.shape[0]}, n_features={self.n_features}, "
            f"n_outputs={self.n_outputs}, dtype={self.train_x.dtype})"
        )


def _check_dtype(dtype: object) -> torch.dtype:
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating torch.dtype (e.g. torch.float32), got {dtype!r}")
    return dtype


def _check_finite_field(name: str, t: Tensor) -> None:
    bad = ~torch.isfinite(t)
    if bool(bad.any()):
        n_nan = int(torch.isnan(t).sum())
        n_inf = int(bad.sum()) - n_nan
        rows = int(bad.reshape(t.shape[0], -1).any(dim=1).sum()) if t.dim() else 1
        raise ValueError(
            f"{name} contains non-finite values: {n_nan} NaN and {n_inf} Inf "
            f"(in {rows} of {t.shape[0] if t.dim() else 1} rows)"
        )


# ------------------------------------------------------------------------------ synthetic data
def _parse_ranges(ranges: object, n_var: int) -> list[tuple[float, float]]:
    """A shared pair (low, high) or one pair per variable -> n_var pairs."""
    if isinstance(ranges, np.ndarray | Tensor):
        ranges = ranges.tolist()
    if isinstance(ranges, Sequence) and not isinstance(ranges, str | bytes):
        if len(ranges) > 0 and all(
            isinstance(r, Sequence | np.ndarray) and not isinstance(r, str | bytes) for r in ranges
        ):
            if len(ranges) != n_var:
                raise ValueError(
                    f"ranges must be one (low, high) pair or {n_var} pairs (one per variable), "
                    f"got {len(ranges)} pairs"
                )
            return [check_range(f"ranges[{i}]", r) for i, r in enumerate(ranges)]
    pair = check_range("ranges", ranges)
    return [pair] * n_var


def _sample(ranges: list[tuple[float, float]], n: int, seed: int) -> Tensor:
    """(n, n_var) float64 uniform on the box, from a private generator seeded with ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.rand(n, len(ranges), generator=gen, dtype=torch.float64)
    low = torch.tensor([r[0] for r in ranges], dtype=torch.float64)
    high = torch.tensor([r[1] for r in ranges], dtype=torch.float64)
    return low + (high - low) * u


def _as_output(y: object, n: int, what: str) -> Tensor:
    """f's value -> (n, out) float64, or a clear error."""
    if not isinstance(y, Tensor):
        try:
            y = torch.as_tensor(np.asarray(y, dtype=np.float64))
        except (TypeError, ValueError) as e:
            raise TypeError(f"{what} must return a tensor or array, got {type(y).__name__}") from e
    y = y.detach().to(torch.float64)
    if y.dim() == 1 and y.shape[0] == n:
        y = y[:, None]
    if y.dim() != 2 or y.shape[0] != n:
        raise ValueError(
            f"{what} must return shape ({n},) or ({n}, out) for {n} inputs, got {tuple(y.shape)}"
        )
    return y


def _synthesize(
    fn: Callable[[Tensor], object],
    ranges: list[tuple[float, float]],
    *,
    n_train: int,
    n_test: int,
    seed: int,
    dtype: torch.dtype,
    name: str,
    normalize_label: bool = False,
    meta: dict[str, Any] | None = None,
) -> Dataset:
    check_int("n_train", n_train, minimum=1)
    check_int("n_test", n_test, minimum=1)
    check_int("seed", seed, minimum=0)
    _check_dtype(dtype)
    n = n_train + n_test
    x = _sample(ranges, n, seed)  # (n, n_var) float64
    y = _as_output(fn(x.clone()), n, f"the function of data set {name!r}")  # (n, out)
    bad = ~torch.isfinite(y).all(dim=1)
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"the function of data set {name!r} returned NaN/Inf for {int(bad.sum())} of {n} "
            f"inputs (e.g. at x = {x[i].tolist()}); choose ranges where it is finite"
        )
    meta = dict(meta or {})
    meta.setdefault("task", "regression")
    meta.setdefault("feature_names", [f"x{i + 1}" for i in range(len(ranges))])
    meta.update(ranges=[list(r) for r in ranges], n_train=n_train, n_test=n_test, seed=seed)
    if normalize_label:
        mean, std = y[:n_train].mean(dim=0), y[:n_train].std(dim=0)
        std = torch.where(std > 0, std, torch.ones_like(std))
        y = (y - mean) / std
        meta.update(y_mean=mean.tolist(), y_std=std.tolist())
    x, y = x.to(dtype), y.to(dtype)
    return Dataset(x[:n_train], y[:n_train], x[n_train:], y[n_train:], name=name, meta=meta)


def from_function(
    f: Callable[[Tensor], object],
    n_var: int,
    *,
    n_train: int = 1000,
    n_test: int = 1000,
    ranges: object = (-1, 1),
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    name: str = "custom",
    normalize_label: bool = False,
) -> Dataset:
    """Sample x uniformly on ``ranges`` and label it with ``f``.

    ``f`` gets a float64 tensor of shape (n, n_var) and returns (n,) or (n, out). ``ranges`` is one
    (low, high) pair shared by all variables or a list of ``n_var`` pairs. Sampling uses a private
    generator seeded with ``seed`` (the same seed gives bit-identical tensors); the first ``n_train``
    draws are the training set. ``normalize_label`` standardises y with the training mean and std
    (kept in ``meta``).
    """
    if not callable(f):
        raise TypeError(f"f must be callable, got {type(f).__name__}")
    check_int("n_var", n_var, minimum=1)
    return _synthesize(
        f, _parse_ranges(ranges, n_var), n_train=n_train, n_test=n_test, seed=seed,
        dtype=dtype, name=name, normalize_label=normalize_label, meta={"source": "from_function"},
    )  # fmt: skip


# --------------------------------------------------------------------------------- real data
def _split_indices(n: int, test_size: float, seed: int) -> tuple[Tensor, Tensor]:
    """Seeded shuffle split -> (train indices, test indices); both non-empty."""
    test_size = check_float("test_size", test_size)
    if not 0.0 < test_size < 1.0:
        raise ValueError(f"test_size must be in (0, 1), got {test_size}")
    check_int("seed", seed, minimum=0)
    n_test = math.ceil(test_size * n)
    if n_test < 1 or n - n_test < 1:
        raise ValueError(
            f"cannot split {n} samples with test_size={test_size}: need at least one sample in "
            f"each split (got {n - n_test} train, {n_test} test)"
        )
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[n_test:], perm[:n_test]


def _standardize(
    train: Tensor, test: Tensor, names: Sequence[str] | None = None
) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """Scale columns with the training mean/std; constant columns get std 1 (named in the stats)."""
    mean = train.mean(dim=0)
    std = train.std(dim=0) if train.shape[0] > 1 else torch.zeros_like(mean)
    const = (std <= 0).nonzero().flatten().tolist()
    std = torch.where(std > 0, std, torch.ones_like(std))
    stats: dict[str, Any] = {"mean": mean.tolist(), "std": std.tolist()}
    if const:
        stats["constant_columns"] = [names[i] for i in const] if names is not None else const
    return (train - mean) / std, (test - mean) / std, stats


def _to_numpy(a: object, name: str) -> np.ndarray:
    if isinstance(a, Tensor):
        return a.detach().cpu().numpy()
    try:
        return np.asarray(a)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name} must be a numpy array or torch tensor, got {type(a)}") from e


def _encode_labels(y: np.ndarray) -> tuple[np.ndarray, list[Any]]:
    classes, idx = np.unique(y, return_inverse=True)
    return idx.astype(np.int64), classes.tolist()


def from_arrays(
    x: object,
    y: object,
    *,
    test_size: float = 0.2,
    seed: int = 0,
    task: str | None = None,
    name: str = "arrays",
    standardize: bool = False,
    dtype: torch.dtype = torch.float32,
    meta: dict[str, Any] | None = None,
) -> Dataset:
    """A seeded shuffle split of in-memory data. x: (n, d); y: (n,) or (n, out).

    The task is classification when y has an integer (or bool/string) dtype, else regression,
    unless ``task`` says otherwise. Class labels are mapped to indices 0..K-1 (the original values
    are kept in ``meta['classes']``). ``standardize`` scales the features with training statistics.
    """
    _check_dtype(dtype)
    xa, ya = _to_numpy(x, "x"), _to_numpy(y, "y")
    if xa.ndim != 2:
        raise ValueError(f"x must have shape (n, d) (2-D), got shape {xa.shape}")
    if ya.ndim not in (1, 2):
        raise ValueError(f"y must have shape (n,) or (n, out), got shape {ya.shape}")
    if xa.shape[0] != ya.shape[0]:
        raise ValueError(f"x has {xa.shape[0]} rows but y has {ya.shape[0]}; they must match")
    if xa.shape[0] < 2:
        raise ValueError(f"need at least 2 samples to split, got {xa.shape[0]}")
    if not np.issubdtype(xa.dtype, np.number) or np.issubdtype(xa.dtype, np.complexfloating):
        raise TypeError(f"x must be real numeric, got dtype {xa.dtype}")
    xa = xa.astype(np.float64)
    bad = ~np.isfinite(xa)
    if bad.any():
        cols = sorted(set(np.nonzero(bad)[1].tolist()))
        raise ValueError(
            f"x contains {int(bad.sum())} non-finite value(s) (NaN or Inf) in "
            f"{int(bad.any(axis=1).sum())} row(s), column(s) {cols}"
        )
    integer_y = ya.dtype.kind in "iub" or ya.dtype.kind in "OUS"
    if task is None:
        task = "classification" if integer_y else "regression"
    check_choice("task", task, TASKS)
    meta = dict(meta or {})
    if task == "classification":
        if ya.ndim == 2 and ya.shape[1] == 1:
            ya = ya[:, 0]
        if ya.ndim != 1:
            raise ValueError(f"classification y must have shape (n,), got {ya.shape}")
        if ya.dtype.kind == "f":
            if not np.isfinite(ya).all() or not (ya == np.round(ya)).all():
                raise ValueError(
                    "classification y must hold integer class labels, got non-integers"
                )
            ya = ya.astype(np.int64)
        yi, classes = _encode_labels(ya)
        meta.setdefault("classes", classes)
        meta["n_classes"] = len(classes)
        yt = torch.from_numpy(yi)
    else:
        if ya.dtype.kind in "OUS":
            raise TypeError(f"regression y must be numeric, got dtype {ya.dtype}")
        ya = ya.astype(np.float64).reshape(ya.shape[0], -1)
        bad = ~np.isfinite(ya)
        if bad.any():
            raise ValueError(f"y contains {int(bad.sum())} non-finite value(s) (NaN or Inf)")
        yt = torch.from_numpy(ya)
    meta["task"] = task
    meta.setdefault("feature_names", [f"x{i + 1}" for i in range(xa.shape[1])])
    xt = torch.from_numpy(xa)
    tr, te = _split_indices(xt.shape[0], test_size, seed)
    trx, tex = xt[tr], xt[te]
    if standardize:
        trx, tex, stats = _standardize(trx, tex, meta["feature_names"])
        meta["x_standardization"] = stats
    meta.update(test_size=test_size, seed=seed)
    if task == "regression":
        ytr, yte = yt[tr].to(dtype), yt[te].to(dtype)
    else:
        ytr, yte = yt[tr], yt[te]
    return Dataset(trx.to(dtype), ytr, tex.to(dtype), yte, name=name, meta=meta)


def _is_float(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def _is_int(s: str) -> bool:
    try:
        int(s)
    except ValueError:
        return False
    return True


def from_csv(
    path: str | Path,
    target: str,
    *,
    test_size: float = 0.2,
    seed: int = 0,
    task: str | None = None,
    standardize: bool = True,
    dtype: torch.dtype = torch.float32,
) -> Dataset:
    """Load a CSV with a header row; ``target`` names the label column, all others are features.

    Features must be numeric and non-constant, with no missing values. A non-numeric target means
    classification (strings are mapped to class indices, kept in ``meta['classes']``); an integer
    target is taken as classification too unless ``task="regression"``. ``standardize`` scales the
    features with the training split's mean and std (kept in ``meta['x_standardization']``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CSV file not found: {str(path)!r}")
    with path.open(newline="", encoding="utf-8-sig") as fh:
        rows = [r for r in csv.reader(fh) if any(c.strip() for c in r)]
    if not rows:
        raise ValueError(f"CSV file {str(path)!r} is empty (no header row)")
    header = [h.strip() for h in rows[0]]
    body = [[c.strip() for c in r] for r in rows[1:]]
    if len(set(header)) != len(header):
        dups = sorted({h for h in header if header.count(h) > 1})
        raise ValueError(f"CSV file {str(path)!r} has duplicate column names: {dups}")
    if target not in header:
        raise ValueError(
            f"target column {target!r} not found in {str(path)!r}; columns are: {header}"
        )
    for i, r in enumerate(body):
        if len(r) != len(header):
            raise ValueError(
                f"CSV file {str(path)!r}: data row {i + 1} has {len(r)} fields but the header "
                f"has {len(header)}"
            )
    if len(body) < 2:
        raise ValueError(f"CSV file {str(path)!r} needs at least 2 data rows, got {len(body)}")
    cols = {h: [r[j] for r in body] for j, h in enumerate(header)}
    missing = {h: sum(v.lower() in _MISSING for v in c) for h, c in cols.items()}
    missing = {h: m for h, m in missing.items() if m}
    if missing:
        n_rows = sum(any(r[j].lower() in _MISSING for j in range(len(header))) for r in body)
        raise ValueError(
            f"CSV file {str(path)!r} has missing values in column(s) "
            f"{', '.join(f'{h!r} ({m} rows)' for h, m in missing.items())}; "
            f"{n_rows} row(s) affected. Drop or impute them first."
        )
    features = [h for h in header if h != target]
    if not features:
        raise ValueError(f"CSV file {str(path)!r} has no feature columns besides {target!r}")
    non_numeric = {h: next(v for v in cols[h] if not _is_float(v)) for h in features
                   if not all(_is_float(v) for v in cols[h])}  # fmt: skip
    if non_numeric:
        raise ValueError(
            f"CSV file {str(path)!r} has non-numeric feature column(s): "
            f"{', '.join(f'{h!r} (e.g. {v!r})' for h, v in non_numeric.items())}; "
            "encode them as numbers first"
        )
    x = np.array([[float(v) for v in cols[h]] for h in features], dtype=np.float64).T  # (n, d)
    bad = ~np.isfinite(x)
    if bad.any():
        named = [features[j] for j in sorted(set(np.nonzero(bad)[1].tolist()))]
        raise ValueError(f"CSV file {str(path)!r} has NaN/Inf in feature column(s) {named}")
    const = [h for j, h in enumerate(features) if np.all(x[:, j] == x[0, j])]
    if const:
        raise ValueError(
            f"CSV file {str(path)!r} has constant feature column(s) {const}: they carry no "
            "information (and cannot be standardised); drop them"
        )
    tcol = cols[target]
    numeric_target = all(_is_float(v) for v in tcol)
    if task is None:
        task = (
            "regression"
            if numeric_target and not all(_is_int(v) for v in tcol)
            else ("classification")
        )
    check_choice("task", task, TASKS)
    if task == "regression":
        if not numeric_target:
            bad_v = next(v for v in tcol if not _is_float(v))
            raise ValueError(
                f"target column {target!r} is non-numeric (e.g. {bad_v!r}); regression needs "
                "numbers (use task='classification' for labels)"
            )
        y: np.ndarray = np.array([float(v) for v in tcol], dtype=np.float64)
    elif all(_is_int(v) for v in tcol):
        y = np.array([int(v) for v in tcol], dtype=np.int64)
    else:
        y = np.array(tcol, dtype=object)
    meta = {
        "source": f"csv:{path}",
        "feature_names": features,
        "target_name": target,
    }
    return from_arrays(
        x, y, test_size=test_size, seed=seed, task=task, name=path.stem,
        standardize=standardize, dtype=dtype, meta=meta,
    )  # fmt: skip


# ------------------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class _Task:
    """A registered data set: how to build it and what it is."""

    summary: str  # one line, shown by describe()
    build: Callable[[int | None, int | None, int, torch.dtype], Dataset]  # (n_tr, n_te, seed, dt)
    details: tuple[str, ...] = ()  # further lines for describe()


def _synthetic_task(
    name: str,
    fn: Callable[[Tensor], object],
    ranges: Sequence[tuple[float, float]],
    *,
    formula: str,
    feature_names: Sequence[str],
    source: str,
    target_name: str = "f",
    details: tuple[str, ...] = (),
    extra_meta: dict[str, Any] | None = None,
) -> _Task:
    ranges = [tuple(map(float, r)) for r in ranges]

    def build(n_tr: int | None, n_te: int | None, seed: int, dtype: torch.dtype) -> Dataset:
        meta = {
            "task": "regression", "formula": formula, "feature_names": list(feature_names),
            "target_name": target_name, "source": source, **(extra_meta or {}),
        }  # fmt: skip
        n_tr, n_te = 1000 if n_tr is None else n_tr, 1000 if n_te is None else n_te
        return _synthesize(
            fn, ranges, n_train=n_tr, n_test=n_te, seed=seed, dtype=dtype, name=name, meta=meta
        )

    box = ", ".join(
        f"{v} in [{lo:g}, {hi:g}]" for v, (lo, hi) in zip(feature_names, ranges, strict=True)
    )
    lines = (f"formula: {formula}", f"inputs (uniform): {box}",
             "default size: 1000 train / 1000 test", f"source: {source}", *details)  # fmt: skip
    return _Task(f"regression, {len(ranges)} input(s)", build, lines)


_PAPER = "Liu et al. 2024, 'KAN: Kolmogorov-Arnold Networks', Fig. 3.1 (toy functions)"


def _bessel_j0(x: Tensor) -> Tensor:
    import scipy.special

    return torch.from_numpy(scipy.special.j0(20.0 * x[:, 0].numpy()))


def _paper_tasks() -> dict[str, _Task]:
    pi = math.pi
    specs: list[tuple[str, Callable[[Tensor], Tensor], int, str]] = [
        ("bessel_j0", _bessel_j0, 1, "J0(20*x)  (Bessel function of the first kind, order 0)"),
        ("exp_sin_sq", lambda x: torch.exp(torch.sin(pi * x[:, 0]) + x[:, 1] ** 2), 2,
         "exp(sin(pi*x)+y**2)"),
        ("xy", lambda x: x[:, 0] * x[:, 1], 2, "x*y"),
        ("exp_sin_100d", lambda x: torch.exp(torch.sin(pi * x / 2).pow(2).mean(dim=1)), 100,
         "exp((1/100)*sum_{i=1..100} sin(pi*x_i/2)**2)"),
        ("exp_sin_4d", lambda x: torch.exp(0.5 * (
            torch.sin(pi * (x[:, 0] ** 2 + x[:, 1] ** 2))
            + torch.sin(pi * (x[:, 2] ** 2 + x[:, 3] ** 2))
        )), 4, "exp((sin(pi*(x1**2+x2**2))+sin(pi*(x3**2+x4**2)))/2)"),
        ("exp_sin_4d_nopi", lambda x: torch.exp(
            torch.sin(x[:, 0] ** 2 + x[:, 1] ** 2) + torch.sin(x[:, 2] ** 2 + x[:, 3] ** 2)
        ), 4, "exp(sin(x1**2+x2**2)+sin(x3**2+x4**2))  (variant without pi, widely quoted)"),
    ]  # fmt: skip
    out = {}
    for short, fn, n_var, formula in specs:
        feats = {1: ["x"], 2: ["x", "y"]}.get(n_var, [f"x{i + 1}" for i in range(n_var)])
        out[f"paper/{short}"] = _synthetic_task(
            f"paper/{short}", fn, [(-1.0, 1.0)] * n_var, formula=formula, feature_names=feats,
            source=_PAPER,
        )  # fmt: skip
    return out


def _special_tasks() -> dict[str, _Task]:
    from kanlab._special import RANGE_NOTE, SPECIAL

    out = {}
    for short, spec in SPECIAL.items():

        def fn(x: Tensor, spec: Any = spec) -> Tensor:
            a, b = x[:, 0].numpy(), x[:, 1].numpy()
            return torch.from_numpy(np.asarray(spec.fn(a, b), dtype=np.float64))

        out[f"special/{short}"] = _synthetic_task(
            f"special/{short}", fn, spec.ranges, formula=spec.formula,
            feature_names=spec.feature_names,
            source="Liu et al. 2024, KAN paper, section 3.2 / Table 2; scipy.special",
            details=(f"ranges: {spec.note}", RANGE_NOTE),
            extra_meta={"range_note": f"{spec.note} {RANGE_NOTE}"},
        )  # fmt: skip
    return out


def _feynman_tasks() -> dict[str, _Task]:
    from kanlab._feynman import EXCLUDED, evaluate_formula, load_table

    out = {}
    for row in load_table():
        if row.filename in EXCLUDED:
            continue

        def fn(x: Tensor, row: Any = row) -> Tensor:
            vals = {v: x[:, i].numpy() for i, v in enumerate(row.variables)}
            return torch.from_numpy(evaluate_formula(row.formula, vals))

        out[f"feynman/{row.filename}"] = _synthetic_task(
            f"feynman/{row.filename}", fn, row.ranges, formula=f"{row.output} = {row.formula}",
            feature_names=row.variables, target_name=row.output,
            source=f"AI Feynman (Udrescu & Tegmark 2020), FeynmanEquations.csv row {row.number}",
            extra_meta={"feynman_number": row.number},
        )  # fmt: skip
    return out


_SKLEARN = {
    "diabetes": ("load_diabetes", "regression", "442 samples, 10 features; y standardised"),
    "breast_cancer": (
        "load_breast_cancer",
        "classification",
        "569 samples, 30 features, 2 classes",
    ),
    "wine": ("load_wine", "classification", "178 samples, 13 features, 3 classes"),
    "digits": ("load_digits", "classification", "1797 samples, 64 features (8x8), 10 classes"),
}


def _sklearn_task(short: str) -> _Task:
    loader, task, what = _SKLEARN[short]

    def build(n_tr: int | None, n_te: int | None, seed: int, dtype: torch.dtype) -> Dataset:
        import sklearn.datasets

        bunch = getattr(sklearn.datasets, loader)()
        feats = [str(f) for f in getattr(bunch, "feature_names", range(bunch.data.shape[1]))]
        meta: dict[str, Any] = {"source": f"sklearn.datasets.{loader} (bundled, no download)",
                                "feature_names": feats}  # fmt: skip
        if task == "classification":
            meta["target_names"] = [str(t) for t in bunch.target_names]
        ds = from_arrays(
            bunch.data, bunch.target, test_size=0.2, seed=seed, task=task, name=f"sklearn/{short}",
            standardize=True, dtype=torch.float64, meta=meta,
        )  # fmt: skip
        trx, trY, tex, teY = ds.train_x, ds.train_y, ds.test_x, ds.test_y
        meta = dict(ds.meta)
        if task == "regression":
            mean, std = trY.mean(dim=0), trY.std(dim=0)
            trY, teY = (trY - mean) / std, (teY - mean) / std
            meta["y_standardization"] = {"mean": mean.tolist(), "std": std.tolist()}
        for label, want, have in (("n_train", n_tr, trx.shape[0]), ("n_test", n_te, tex.shape[0])):
            if want is not None:
                check_int(label, want, minimum=1)
                if want > have:
                    raise ValueError(f"{label}={want} exceeds the {have} samples of that split")
        if n_tr is not None:
            trx, trY = trx[:n_tr], trY[:n_tr]
        if n_te is not None:
            tex, teY = tex[:n_te], teY[:n_te]
        ys = (lambda t: t.to(dtype)) if task == "regression" else (lambda t: t)
        return Dataset(trx.to(dtype), ys(trY), tex.to(dtype), ys(teY), name=ds.name, meta=meta)

    lines = (f"{what}", "fixed seeded split: 20% test; features standardised with train statistics",
             "n_train/n_test (optional) take the first rows of each split",
             f"source: sklearn.datasets.{loader} (bundled with scikit-learn)")  # fmt: skip
    return _Task(task, build, lines)


_REGISTRY: dict[str, _Task] | None = None


def _registry() -> dict[str, _Task]:
    global _REGISTRY
    if _REGISTRY is None:
        reg = {**_paper_tasks(), **_special_tasks(), **_feynman_tasks()}
        reg.update({f"sklearn/{s}": _sklearn_task(s) for s in _SKLEARN})
        _REGISTRY = reg
    return _REGISTRY


def _lookup(name: str) -> _Task:
    reg = _registry()
    if not isinstance(name, str):
        raise TypeError(f"data set name must be a str, got {type(name).__name__}")
    if name in reg:
        return reg[name]
    prefixes = sorted({n.split("/")[0] + "/" for n in reg})
    close = difflib.get_close_matches(name, list(reg), n=5, cutoff=0.6)
    hint = f"close matches: {close}" if close else f"valid prefixes: {prefixes} (see names())"
    if name.startswith("feynman/") and name[8:] in FEYNMAN_EXCLUDED:
        hint = f"excluded: {FEYNMAN_EXCLUDED[name[8:]]}"
    raise ValueError(f"unknown data set {name!r}; {hint}")


def names(prefix: str | None = None) -> list[str]:
    """Registered data set names, sorted; ``prefix`` (e.g. "paper" or "feynman/I.") filters them."""
    reg = sorted(_registry())
    if prefix is None:
        return reg
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str, got {type(prefix).__name__}")
    out = [n for n in reg if n.startswith(prefix)]
    if not out:
        prefixes = sorted({n.split("/")[0] for n in reg})
        raise ValueError(f"no data set name starts with {prefix!r}; valid prefixes: {prefixes}")
    return out


def get(
    name: str,
    *,
    n_train: int | None = None,
    n_test: int | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> Dataset:
    """Build a registered data set (see :func:`names` and :func:`describe`).

    Synthetic sets default to 1000 train / 1000 test points; real sets have a fixed 80/20 split and
    ``n_train``/``n_test`` (optional) take the first rows of each split.
    """
    task = _lookup(name)
    check_int("seed", seed, minimum=0)
    _check_dtype(dtype)
    return task.build(n_train, n_test, seed, dtype)


def describe(name: str) -> str:
    """A few lines on what ``name`` is: task, formula, input ranges, size, source."""
    task = _lookup(name)
    return "\n".join([f"{name}: {task.summary}", *(f"  {line}" for line in task.details)])
