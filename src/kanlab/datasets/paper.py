"""The KAN paper's toy functions (Liu et al. 2024, Fig. 3.1): the ``paper/...`` registry, with the
paper's KAN shape for each.

The public face is :mod:`kanlab.datasets` (``get("paper/xy")``, ``entry("paper/xy").kan_hidden``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from kanlab.datasets.record import DatasetEntry
from kanlab.datasets.synthetic import synthetic_entry

__all__ = ["entries"]

SOURCE = "Liu et al. 2024, 'KAN: Kolmogorov-Arnold Networks', Fig. 3.1 (toy functions)"


def _bessel_j0(x: Tensor) -> Tensor:
    import scipy.special

    return torch.from_numpy(scipy.special.j0(20.0 * x[:, 0].numpy()))


def entries() -> list[DatasetEntry]:
    """The six toy functions, each on [-1, 1]^d."""
    pi = math.pi
    # (short name, f, number of inputs, formula, description, the paper's KAN hidden widths).
    # The hidden widths are those of the KAN the paper uses for each toy function (Table/Figure 3 of
    # Liu et al. 2024); () is no hidden layer, a KAN [in, out].
    specs: list[tuple[str, Callable[[Tensor], Tensor], int, str, str, tuple[int, ...]]] = [
        ("bessel_j0", _bessel_j0, 1, "J0(20*x)  (Bessel function of the first kind, order 0)",
         "Bessel function J0(20x) of one input (the paper's 1-D toy)", ()),
        ("exp_sin_sq", lambda x: torch.exp(torch.sin(pi * x[:, 0]) + x[:, 1] ** 2), 2,
         "exp(sin(pi*x)+y**2)", "exp(sin(pi*x) + y**2), the paper's 2-input composition", (1,)),
        ("xy", lambda x: x[:, 0] * x[:, 1], 2, "x*y", "x*y, the product of two inputs", (2,)),
        ("exp_sin_100d", lambda x: torch.exp(torch.sin(pi * x / 2).pow(2).mean(dim=1)), 100,
         "exp((1/100)*sum_{i=1..100} sin(pi*x_i/2)**2)",
         "exp of the mean of sin(pi*x_i/2)**2 over 100 inputs (high-dimensional toy)", (1,)),
        ("exp_sin_4d", lambda x: torch.exp(0.5 * (
            torch.sin(pi * (x[:, 0] ** 2 + x[:, 1] ** 2))
            + torch.sin(pi * (x[:, 2] ** 2 + x[:, 3] ** 2))
        )), 4, "exp((sin(pi*(x1**2+x2**2))+sin(pi*(x3**2+x4**2)))/2)",
         "exp((sin(pi*(x1**2+x2**2)) + sin(pi*(x3**2+x4**2)))/2), a 4-input, 3-level composition",
         (4, 2)),
        ("exp_sin_4d_nopi", lambda x: torch.exp(
            torch.sin(x[:, 0] ** 2 + x[:, 1] ** 2) + torch.sin(x[:, 2] ** 2 + x[:, 3] ** 2)
        ), 4, "exp(sin(x1**2+x2**2)+sin(x3**2+x4**2))  (variant without pi, widely quoted)",
         "exp(sin(x1**2+x2**2) + sin(x3**2+x4**2)), the 4-input toy without pi", (4, 2)),
    ]  # fmt: skip
    out = []
    for short, fn, n_var, formula, description, hidden in specs:
        feats = {1: ["x"], 2: ["x", "y"]}.get(n_var, [f"x{i + 1}" for i in range(n_var)])
        out.append(synthetic_entry(
            f"paper/{short}", fn, [(-1.0, 1.0)] * n_var, description=description, formula=formula,
            feature_names=feats, source=SOURCE, kan_hidden=hidden,
        ))  # fmt: skip
    return out
