"""Data sets: the KAN paper's toy and special functions, the Feynman equations, real sets, CSV.

Every loader returns a :class:`Dataset` (train/test tensors plus a ``meta`` dict saying what the data
is). Synthetic data is drawn from a private seeded ``torch.Generator`` in float64 and converted to the
requested dtype at the end, so the same seed gives bit-identical tensors and never touches the global
RNG. scipy and scikit-learn are imported lazily, inside the loaders that need them.

    ds = get("paper/exp_sin_sq")              # registered data sets; names() lists them
    entry("paper/xy").kan_hidden              # (2,): the paper's KAN [2, 2, 1] for x*y
    ds = from_function(f, 2, ranges=(-1, 1))  # any f: (n, n_var) float64 tensor -> (n,) or (n, out)
    ds = from_csv("data.csv", target="y")     # numeric features, numeric or string target

Registered names say which registry they come from: ``paper/...`` (the paper's toy functions),
``special/...`` (its special functions), ``feynman/...`` (the AI Feynman table), ``sklearn/...``
(sets bundled with scikit-learn).

This module is the public face; the code lives in modules of this package, one per concept:
``dataset`` (the container and its validation), ``record`` (``DatasetEntry``, the registry's record
of a data set), ``registry`` (the one lookup: ``entry``, ``get``, ``names``, ``describe``),
``synthetic`` (``from_function``), ``tabular`` (``from_arrays``, ``from_csv``), and one module per
registry: ``paper``, ``special``, ``feynman``, ``sklearn_sets``.
"""

from __future__ import annotations

from kanlab.datasets.dataset import KINDS, TASKS, Dataset
from kanlab.datasets.feynman import EXCLUDED as FEYNMAN_EXCLUDED  # row -> why it is not registered
from kanlab.datasets.record import DatasetEntry
from kanlab.datasets.registry import (
    GENERATOR_VERSION,
    UnknownDatasetError,
    describe,
    entry,
    get,
    names,
)
from kanlab.datasets.synthetic import from_function
from kanlab.datasets.tabular import from_arrays, from_csv

__all__ = [
    "FEYNMAN_EXCLUDED",
    "GENERATOR_VERSION",
    "KINDS",
    "TASKS",
    "Dataset",
    "DatasetEntry",
    "UnknownDatasetError",
    "describe",
    "entry",
    "from_arrays",
    "from_csv",
    "from_function",
    "get",
    "names",
]
