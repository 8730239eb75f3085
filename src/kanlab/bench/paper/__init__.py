"""The KAN paper's experiments (Liu et al. 2024), each one function and one command, beside the
published numbers: ``kanlab paper continual|pde|scaling|special|feynman [--quick]``.

Each ``run_<name>(*, quick, store, out, seeds, progress, ...)`` returns a
:class:`~kanlab.bench.paper.common.PaperTable` and writes ``out/report.md``, ``out/report.html``
and its figure; re-running resumes from the results store (``out/results.sqlite`` by default):
finished units are read back, never trained or stored twice.
"""

from __future__ import annotations

from collections.abc import Callable

from kanlab.bench.paper.common import PaperTable
from kanlab.bench.paper.continual import run_continual
from kanlab.bench.paper.feynman import run_feynman
from kanlab.bench.paper.pde import run_pde
from kanlab.bench.paper.scaling import run_scaling
from kanlab.bench.paper.special import run_special

__all__ = [
    "EXPERIMENTS",
    "PaperTable",
    "run_continual",
    "run_feynman",
    "run_pde",
    "run_scaling",
    "run_special",
]

#: name -> runner, what ``kanlab paper <name>`` calls
EXPERIMENTS: dict[str, Callable[..., PaperTable]] = {
    "continual": run_continual,
    "feynman": run_feynman,
    "pde": run_pde,
    "scaling": run_scaling,
    "special": run_special,
}
