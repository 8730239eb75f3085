"""In-memory and CSV data: seeded splits, label mapping, standardisation (``from_arrays``, ``from_csv``).

The public face is :mod:`kanlab.datasets`.
"""

from __future__ import annotations

import csv
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from kanlab._checks import check_choice, check_float, check_int
from kanlab.datasets.dataset import KINDS, Dataset, check_dtype

__all__ = [
    "MAX_CLASSES",
    "MIN_PER_CLASS",
    "from_arrays",
    "from_csv",
    "guess_kind",
    "standardize_columns",
]

_MISSING = frozenset({"", "na", "n/a", "nan", "null", "none", "?"})

# How from_csv tells class labels from an integer-valued quantity when no kind is given: an integer
# target is taken as class labels only with at most MAX_CLASSES distinct values, each seen at least
# MIN_PER_CLASS times (a label seen once cannot be both learned and tested); otherwise it is a
# regression target (counts, years, prices in cents, ...).
MAX_CLASSES = 20
MIN_PER_CLASS = 2


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


def standardize_columns(
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


def _kind_option(kind: str | None, task: str | None) -> tuple[str | None, str]:
    """``kind`` or its old name ``task`` -> (the value, the name the caller used)."""
    if task is None:
        return kind, "kind"
    if kind is not None and kind != task:
        raise ValueError(
            f"kind={kind!r} and task={task!r} (its old name) disagree; give one of them"
        )
    return task, "task"


def from_arrays(
    x: object,
    y: object,
    *,
    test_size: float = 0.2,
    seed: int = 0,
    kind: str | None = None,
    name: str = "arrays",
    standardize: bool = False,
    dtype: torch.dtype = torch.float32,
    meta: dict[str, Any] | None = None,
    task: str | None = None,
) -> Dataset:
    """A seeded shuffle split of in-memory data. x: (n, d); y: (n,) or (n, out).

    The kind is classification when y has an integer (or bool/string) dtype, else regression,
    unless ``kind`` says otherwise (``task`` is its old name, still accepted); ``meta['kind_reason']``
    says which. Class labels are
    mapped to indices 0..K-1 (the original values are kept in ``meta['classes']``). ``standardize``
    scales the features with training statistics.
    """
    kind, kind_arg = _kind_option(kind, task)
    check_dtype(dtype)
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
    meta = dict(meta or {})
    if kind is None:
        kind = "classification" if integer_y else "regression"
        meta.setdefault("kind_reason", f"y of dtype {ya.dtype}: {kind}")
    check_choice(kind_arg, kind, KINDS)
    meta.setdefault("kind_reason", f"{kind_arg}={kind!r} given")
    if kind == "classification":
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
    meta.pop("task", None)  # the old name of "kind": ours wins, as it always did
    meta["kind"] = kind
    meta.setdefault("feature_names", [f"x{i + 1}" for i in range(xa.shape[1])])
    xt = torch.from_numpy(xa)
    tr, te = _split_indices(xt.shape[0], test_size, seed)
    trx, tex = xt[tr], xt[te]
    if standardize:
        trx, tex, stats = standardize_columns(trx, tex, meta["feature_names"])
        meta["x_standardization"] = stats
    meta.update(test_size=test_size, seed=seed)
    return Dataset(trx, yt[tr], tex, yt[te], name=name, meta=meta).to(dtype)


def _parses(s: str, kind: type[float] | type[int]) -> bool:
    """Whether ``kind(s)`` succeeds (a CSV cell that reads as a float / an int)."""
    try:
        kind(s)
    except ValueError:
        return False
    return True


def _is_float(s: str) -> bool:
    return _parses(s, float)


def _is_int(s: str) -> bool:
    return _parses(s, int)


def guess_kind(values: Sequence[str]) -> tuple[str, str]:
    """(kind, reason) for a CSV target column given as its cells' text.

    - a non-numeric value: classification (labels);
    - integers with at most :data:`MAX_CLASSES` distinct values, each seen at least
      :data:`MIN_PER_CLASS` times: classification;
    - integers otherwise (many distinct values, or a value seen only once): regression;
    - numbers that are not all integers (e.g. ``0.5``, ``2.0``): regression.
    """
    bad = next((v for v in values if not _is_float(v)), None)
    if bad is not None:
        return "classification", f"non-numeric target (e.g. {bad!r}): classification"
    non_int = next((v for v in values if not _is_int(v)), None)
    if non_int is not None:
        return "regression", f"numeric target not all integers (e.g. {non_int!r}): regression"
    counts = Counter(int(v) for v in values)
    k = len(counts)
    if k > MAX_CLASSES:
        return "regression", (
            f"integer target with {k} distinct values (more than {MAX_CLASSES}): regression"
        )
    once = sum(c < MIN_PER_CLASS for c in counts.values())
    if once:
        return "regression", (
            f"integer target with {k} distinct values, {once} of them seen fewer than "
            f"{MIN_PER_CLASS} times: regression"
        )
    return "classification", (
        f"integer target with {k} distinct values (at most {MAX_CLASSES}), each seen at least "
        f"{MIN_PER_CLASS} times: classification"
    )


def from_csv(
    path: str | Path,
    target: str,
    *,
    test_size: float = 0.2,
    seed: int = 0,
    kind: str | None = None,
    standardize: bool = True,
    dtype: torch.dtype = torch.float32,
    task: str | None = None,
) -> Dataset:
    """Load a CSV with a header row; ``target`` names the label column, all others are features.

    Features must be numeric and non-constant, with no missing values. ``kind`` ("regression" or
    "classification"; ``task`` is its old name, still accepted) says what the target is; without it
    :func:`guess_kind` decides: a non-numeric target, or an integer one with few distinct values
    each seen a few times, means classification (labels are mapped to class indices, kept in
    ``meta['classes']``); any other numeric target means regression. ``meta['kind_reason']`` says
    why (e.g. "integer target with 37 distinct values (more than 20): regression"); pass ``kind`` to
    override. ``standardize`` scales the features with the training split's mean and std (kept in
    ``meta['x_standardization']``).
    """
    kind, kind_arg = _kind_option(kind, task)
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
    if kind is None:
        kind, reason = guess_kind(tcol)
    else:
        reason = f"{kind_arg}={kind!r} given"
    check_choice(kind_arg, kind, KINDS)
    if kind == "regression":
        if not numeric_target:
            bad_v = next(v for v in tcol if not _is_float(v))
            raise ValueError(
                f"target column {target!r} is non-numeric (e.g. {bad_v!r}); regression needs "
                "numbers (use kind='classification' for labels)"
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
        "kind_reason": reason,
    }
    return from_arrays(
        x, y, test_size=test_size, seed=seed, kind=kind, name=path.stem,
        standardize=standardize, dtype=dtype, meta=meta,
    )  # fmt: skip
