"""Synthetic data: sample x uniformly on a box, label it with a function (``from_function``), and the
registry entry of such a data set (``synthetic_entry``: the paper toys, special functions, Feynman).

Sampling uses a private seeded ``torch.Generator`` in float64 (never the global RNG); tensors are
converted to the requested dtype at the end, so the same seed gives bit-identical data.
The public face is :mod:`kanlab.datasets`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from kanlab._checks import check_int, check_range
from kanlab.datasets.dataset import Dataset, check_dtype
from kanlab.datasets.record import DEFAULT_KAN_HIDDEN, DatasetEntry
from kanlab.datasets.tabular import standardize_columns

__all__ = ["from_function", "synthesize", "synthetic_entry"]


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


def synthesize(
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
    check_dtype(dtype)
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
    meta.setdefault("kind", "regression")
    meta.setdefault("feature_names", [f"x{i + 1}" for i in range(len(ranges))])
    meta.update(ranges=[list(r) for r in ranges], n_train=n_train, n_test=n_test, seed=seed)
    y_train, y_test = y[:n_train], y[n_train:]
    if normalize_label:
        y_train, y_test, stats = standardize_columns(y_train, y_test)
        meta.update(y_mean=stats["mean"], y_std=stats["std"])
    return Dataset(x[:n_train], y_train, x[n_train:], y_test, name=name, meta=meta).to(dtype)


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
    return synthesize(
        f, _parse_ranges(ranges, n_var), n_train=n_train, n_test=n_test, seed=seed,
        dtype=dtype, name=name, normalize_label=normalize_label, meta={"source": "from_function"},
    )  # fmt: skip


def synthetic_entry(
    name: str,
    fn: Callable[[Tensor], object],
    ranges: Sequence[tuple[float, float]],
    *,
    description: str,
    formula: str,
    feature_names: Sequence[str],
    source: str,
    target_name: str = "f",
    details: tuple[str, ...] = (),
    extra_meta: dict[str, Any] | None = None,
    kan_hidden: tuple[int, ...] = DEFAULT_KAN_HIDDEN["regression"],
) -> DatasetEntry:
    """The registry entry of ``fn`` sampled uniformly on the box ``ranges`` (1000 / 1000 points by
    default). ``fn`` gets (n, len(ranges)) float64 and returns (n,) or (n, out)."""
    ranges = [tuple(map(float, r)) for r in ranges]

    def build(n_tr: int | None, n_te: int | None, seed: int, dtype: torch.dtype) -> Dataset:
        meta = {
            "kind": "regression", "formula": formula, "feature_names": list(feature_names),
            "target_name": target_name, "source": source, **(extra_meta or {}),
        }  # fmt: skip
        n_tr, n_te = 1000 if n_tr is None else n_tr, 1000 if n_te is None else n_te
        return synthesize(
            fn, ranges, n_train=n_tr, n_test=n_te, seed=seed, dtype=dtype, name=name, meta=meta
        )

    box = ", ".join(
        f"{v} in [{lo:g}, {hi:g}]" for v, (lo, hi) in zip(feature_names, ranges, strict=True)
    )
    lines = (f"formula: {formula}", f"inputs (uniform): {box}",
             "default size: 1000 train / 1000 test", f"source: {source}", *details)  # fmt: skip
    return DatasetEntry(
        name=name, kind="regression", description=description,
        summary=f"regression, {len(ranges)} input(s)", kan_hidden=kan_hidden, build=build,
        details=lines,
    )  # fmt: skip
