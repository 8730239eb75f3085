"""kanlab: Kolmogorov-Arnold Networks, fast, compared fairly with MLPs, and interpreted.

The public API is re-exported here explicitly; see ``DESIGN.md`` for the map of modules.
"""

from __future__ import annotations

from kanlab import datasets, kernels, splines
from kanlab.io import load, save
from kanlab.layers import KANLinear
from kanlab.models import KAN, MLP, count_flops, count_params
from kanlab.train import History, fit

__version__ = "0.1.0"

__all__ = [
    "KAN",
    "MLP",
    "History",
    "KANLinear",
    "__version__",
    "count_flops",
    "count_params",
    "datasets",
    "fit",
    "kernels",
    "load",
    "save",
    "splines",
]
