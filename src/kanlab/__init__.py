"""kanlab: Kolmogorov-Arnold Networks, fast, compared fairly with MLPs, and interpreted.

The public API is re-exported here explicitly; see ``DESIGN.md`` for the map of modules.
"""

from __future__ import annotations

from kanlab import datasets, kernels, splines
from kanlab.attribution import Attribution, attribute, prune_input
from kanlab.compile import compile_formula, splines_from_symbolic
from kanlab.config import FitConfig, KANConfig, MLPConfig, PruneConfig
from kanlab.io import load, save
from kanlab.layers import KANLinear
from kanlab.models import KAN, MLP, build, count_flops, count_params
from kanlab.plot import plot  # matplotlib is imported only when plot() is called
from kanlab.prune import prune
from kanlab.separability import SeparabilityTree, plot_separability, separability
from kanlab.symbolic import auto_symbolic, fix_symbolic, suggest_symbolic, symbolic_formula
from kanlab.train import History, fit

__version__ = "0.1.0"

__all__ = [
    "KAN",
    "MLP",
    "Attribution",
    "FitConfig",
    "History",
    "KANConfig",
    "KANLinear",
    "MLPConfig",
    "PruneConfig",
    "SeparabilityTree",
    "__version__",
    "attribute",
    "auto_symbolic",
    "build",
    "compile_formula",
    "count_flops",
    "count_params",
    "datasets",
    "fit",
    "fix_symbolic",
    "kernels",
    "load",
    "plot",
    "plot_separability",
    "prune",
    "prune_input",
    "save",
    "separability",
    "splines",
    "splines_from_symbolic",
    "suggest_symbolic",
    "symbolic_formula",
]
