"""Multiplication nodes (KAN 2.0's MultKAN): x*y from data to the formula x_1*x_2.

A KAN ``[2, [0, 1], 1]`` has one hidden node, a multiplication node: it multiplies two subnodes,
each a sum of edge functions of the inputs (see :mod:`kanlab.mult`). On x*y with x, y uniform on
[-1, 1] (200 training points, float64) the script

1. trains it with sparsity regularisation (LBFGS, 30 steps),
2. prunes the edges it does not need (each factor keeps one input),
3. replaces every edge by its best library function (``auto_symbolic``) and retrains the constants,
4. prints the formula (``x_1*x_2``) and its error at full precision.

Run ``python examples/mult_nodes.py`` (a few seconds; add ``--docs docs`` to also write the network
plots of the trained and of the symbolic model, the product drawn as a x marker, to
``docs/mult_trained.png`` and ``docs/mult_symbolic.png``).
"""

from __future__ import annotations

import argparse
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import kanlab as kl

F64 = torch.float64


@dataclass(frozen=True)
class MultResult:
    formula: Any  # kanlab Formula at 4 places
    max_error: float  # max |formula - x*y| at full precision on 1000 test points
    pruned_widths: list[int]
    seconds: float


def xy_data(n: int = 200, seed: int = 0) -> kl.datasets.Dataset:
    """x*y on [-1, 1]^2: ``n`` training and 1000 test points."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 2, generator=gen, dtype=F64) * 2 - 1
    t = torch.rand(1000, 2, generator=gen, dtype=F64) * 2 - 1
    return kl.datasets.Dataset(x, x[:, :1] * x[:, 1:], t, t[:, :1] * t[:, 1:], name="x*y", meta={})


def run(seed: int = 0, *, docs: Path | None = None) -> MultResult:
    start = time.perf_counter()
    ds = xy_data()
    model = kl.KAN([2, [0, 1], 1], grid_size=5, seed=seed, dtype=F64)
    kl.fit(model, ds, steps=30, lamb=1e-3, progress=False)
    pruned = kl.prune(model, ds.train_x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a function fit may touch its search bounds
        kl.auto_symbolic(pruned, ds.train_x)
    kl.fit(pruned, ds, steps=30, progress=False)  # the constants of the symbolic edges
    formula = kl.symbolic_formula(pruned)
    full = kl.symbolic_formula(pruned, precision=None)
    err = float(abs(full(ds.test_x)[:, 0] - ds.test_y[:, 0].numpy()).max())
    seconds = time.perf_counter() - start
    if docs is not None:
        x = ds.train_x
        kl.plot(model, x, title="trained [2, [0, 1], 1]", path=docs / "mult_trained.png")
        kl.plot(pruned, x, title="pruned, symbolic", path=docs / "mult_symbolic.png")
    return MultResult(formula, err, list(pruned.widths), seconds)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=Path, default=None, help="write the two PNG plots here")
    parser.add_argument("--seed", type=int, default=0, help="initialisation seed")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # tiny tensors: threads only add overhead
    if args.docs is not None:
        args.docs.mkdir(parents=True, exist_ok=True)
    res = run(args.seed, docs=args.docs)
    print(f"pruned widths {res.pruned_widths}")
    print(f"formula y_1 = {res.formula[0]}  (constants rounded to 4 places)")
    print(f"max |formula - x*y| at full precision: {res.max_error:.1e}")
    print(f"wall time {res.seconds:.1f} s")


if __name__ == "__main__":
    main()
