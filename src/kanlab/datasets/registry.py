"""The registry of named data sets: paper toys, special functions, Feynman equations, sklearn sets.

Tasks are built lazily on first use; scipy and scikit-learn are imported only inside the builders
that need them. The public face is :mod:`kanlab.datasets` (``get``, ``names``, ``describe``).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from kanlab._checks import check_int
from kanlab.datasets.dataset import Dataset, check_dtype
from kanlab.datasets.feynman import EXCLUDED as FEYNMAN_EXCLUDED  # row -> why it is not registered
from kanlab.datasets.synthetic import synthesize
from kanlab.datasets.tabular import from_arrays, standardize_columns

__all__ = ["describe", "get", "names"]


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
        return synthesize(
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
    from kanlab.datasets.special import RANGE_NOTE, SPECIAL

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
    from kanlab.datasets.feynman import EXCLUDED, evaluate_formula, load_table

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
            trY, teY, meta["y_standardization"] = standardize_columns(trY, teY)
        for label, want, have in (("n_train", n_tr, trx.shape[0]), ("n_test", n_te, tex.shape[0])):
            if want is not None:
                check_int(label, want, minimum=1)
                if want > have:
                    raise ValueError(f"{label}={want} exceeds the {have} samples of that split")
        if n_tr is not None:
            trx, trY = trx[:n_tr], trY[:n_tr]
        if n_te is not None:
            tex, teY = tex[:n_te], teY[:n_te]
        return Dataset(trx, trY, tex, teY, name=ds.name, meta=meta).to(dtype)

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
    check_dtype(dtype)
    return task.build(n_train, n_test, seed, dtype)


def describe(name: str) -> str:
    """A few lines on what ``name`` is: task, formula, input ranges, size, source."""
    task = _lookup(name)
    return "\n".join([f"{name}: {task.summary}", *(f"  {line}" for line in task.details)])
