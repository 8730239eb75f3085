"""The registry of named data sets: one lookup (with "did you mean"), ``get``, ``names``, ``describe``.

Names say which registry they come from: ``paper/...`` (:mod:`~kanlab.datasets.paper`),
``special/...`` (:mod:`~kanlab.datasets.special`), ``feynman/...`` (:mod:`~kanlab.datasets.feynman`),
``sklearn/...`` (:mod:`~kanlab.datasets.sklearn_sets`). The entries are made on first use; scipy and
scikit-learn are imported only inside the builders that need them. The public face is
:mod:`kanlab.datasets`.
"""

from __future__ import annotations

import difflib

import torch

from kanlab._checks import check_int
from kanlab.datasets.dataset import Dataset, check_dtype
from kanlab.datasets.feynman import EXCLUDED as FEYNMAN_EXCLUDED  # row -> why it is not registered
from kanlab.datasets.record import DatasetEntry

__all__ = ["GENERATOR_VERSION", "UnknownDatasetError", "describe", "entry", "get", "names"]

#: The version of the registered data sets' builders. A registered set is identified by its name,
#: this version and its (n_train, n_test, seed): bump it whenever any builder would return other
#: data for the same name and arguments (another draw, split, range, formula or scaling), so that
#: results computed on the old data (e.g. a ``kanlab compare`` results store) are not reused.
GENERATOR_VERSION = 1


class UnknownDatasetError(ValueError):
    """A name that is not registered. ``close`` holds the registered names nearest to it (best
    first, at most 5), ``excluded`` the reason when the name is a Feynman row left out on purpose."""

    def __init__(
        self, message: str, *, name: str = "", close: tuple[str, ...] = (), excluded: str = ""
    ) -> None:
        super().__init__(message)
        self.name = name
        self.close = close
        self.excluded = excluded


_REGISTRY: dict[str, DatasetEntry] | None = None


def _registry() -> dict[str, DatasetEntry]:
    global _REGISTRY
    if _REGISTRY is None:
        from kanlab.datasets import feynman, paper, sklearn_sets, special

        reg: dict[str, DatasetEntry] = {}
        for module in (paper, special, feynman, sklearn_sets):
            for e in module.entries():
                if e.name in reg:  # pragma: no cover - a programming error in a table
                    raise RuntimeError(f"data set {e.name!r} is registered twice")
                reg[e.name] = e
        _REGISTRY = reg
    return _REGISTRY


def entry(name: str) -> DatasetEntry:
    """The registry's record of ``name``: kind, description, default KAN hidden widths, builder.

    This is the one lookup of a data set name: an unknown name raises :class:`UnknownDatasetError`
    (a ValueError) listing the close matches, or the valid prefixes when there are none.
    """
    reg = _registry()
    if not isinstance(name, str):
        raise TypeError(f"data set name must be a str, got {type(name).__name__}")
    if name in reg:
        return reg[name]
    prefixes = sorted({n.split("/")[0] + "/" for n in reg})
    close = tuple(difflib.get_close_matches(name, list(reg), n=5, cutoff=0.6))
    hint = f"close matches: {list(close)}" if close else f"valid prefixes: {prefixes} (see names())"
    excluded = ""
    if name.startswith("feynman/") and name[8:] in FEYNMAN_EXCLUDED:
        excluded = FEYNMAN_EXCLUDED[name[8:]]
        hint = f"excluded: {excluded}"
    raise UnknownDatasetError(
        f"unknown data set {name!r}; {hint}", name=name, close=close, excluded=excluded
    )


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
    e = entry(name)
    check_int("seed", seed, minimum=0)
    check_dtype(dtype)
    return e.build(n_train, n_test, seed, dtype)


def describe(name: str) -> str:
    """A few lines on what ``name`` is: kind, description, registry, formula, input ranges, size,
    source, default KAN hidden widths. The first line is ``"<name>: <kind and size>"``."""
    return entry(name).describe()
