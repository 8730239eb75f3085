"""Data sets: the KAN paper's toy and special functions, the Feynman equations, real sets, CSV.

Every loader returns a :class:`Dataset` (train/test tensors plus a ``meta`` dict saying what the data
is). Synthetic data is drawn from a private seeded ``torch.Generator`` in float64 and converted to the
requested dtype at the end, so the same seed gives bit-identical tensors and never touches the global
RNG. scipy and scikit-learn are imported lazily, inside the loaders that need them.

    ds = get("paper/exp_sin_sq")              # registered tasks; names() lists them
    ds = from_function(f, 2, ranges=(-1, 1))  # any f: (n, n_var) float64 tensor -> (n,) or (n, out)
    ds = from_csv("data.csv", target="y")     # numeric features, numeric or string target

This module is the public face; the code lives in modules of this package, one per concept:
``dataset`` (the container and its validation), ``synthetic`` (``from_function``), ``tabular``
(``from_arrays``, ``from_csv``), ``registry`` (``get``, ``names``, ``describe``), with the task
tables in ``feynman`` and ``special``.
"""

from __future__ import annotations

from kanlab.datasets.dataset import TASKS, Dataset
from kanlab.datasets.feynman import EXCLUDED as FEYNMAN_EXCLUDED  # row -> why it is not registered
from kanlab.datasets.registry import describe, get, names
from kanlab.datasets.synthetic import from_function
from kanlab.datasets.tabular import from_arrays, from_csv

__all__ = [
    "FEYNMAN_EXCLUDED",
    "TASKS",
    "Dataset",
    "describe",
    "from_arrays",
    "from_csv",
    "from_function",
    "get",
    "names",
]
