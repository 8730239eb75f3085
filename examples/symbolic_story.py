"""The KAN story in one script: from data to the formula exp(x_2^2 + sin(pi x_1)).

On ``paper/exp_sin_sq`` (f = exp(sin(pi x_1) + x_2^2) on [-1, 1]^2) it

1. trains a KAN [2, 5, 1] with sparsity regularisation,
2. prunes it to its essential graph [2, 1, 1] and retrains it briefly,
3. extends the grid from 5 to 10 intervals and retrains,
4. replaces every edge by its best library function (``auto_symbolic``),
5. retrains the affine constants (a, b, c, d) of the symbolic edges,
6. prints the formula and its test RMSE.

Run ``python examples/symbolic_story.py`` (add ``--docs docs`` to also write the network plots
before and after pruning, and of the symbolic model, as PNG files there).
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import kanlab as kl


@dataclass(frozen=True)
class StoryConfig:
    dataset: str = "paper/exp_sin_sq"
    n_train: int = 1000  # training points (the test set has as many)
    widths: tuple[int, ...] = (2, 5, 1)  # the initial, deliberately too wide network
    seed: int = 2  # initialisation seed
    sparse_steps: int = 15  # LBFGS steps with the sparsity regulariser
    lamb: float = 0.01  # regularisation strength (the paper's value)
    lamb_entropy: float = 2.0  # weight of the entropy term inside the regulariser
    node_threshold: float = 1e-2  # pruning thresholds (importance shares, see kanlab.prune)
    edge_threshold: float = 3e-2
    pruned_steps: int = 10  # LBFGS steps after pruning, on the 5-interval grid
    fine_grid: int = 10  # grid extension target
    fine_steps: int = 10  # LBFGS steps on the fine grid
    lib: tuple[str, ...] = ("x", "x^2", "x^3", "x^4", "exp", "log", "sqrt", "tanh", "sin", "abs")
    r2_threshold: float = 0.99  # auto_symbolic fixes an edge only if some function fits this well
    affine_steps: int = 20  # LBFGS steps on the symbolic model's affine constants
    precision: int = 4  # decimal places of the printed formula


@dataclass
class StoryResult:
    formula: Any  # kanlab.symbolic.Formula at the chosen precision
    exact: Any  # the same formula at full precision
    test_rmse: float  # RMSE of the full-precision formula on the test set
    rounded_rmse: float  # RMSE of the rounded formula on the test set
    pruned_widths: list[int]
    seconds: float
    stages: dict[str, float] = field(default_factory=dict)  # test RMSE after each stage
    times: dict[str, float] = field(default_factory=dict)  # seconds since the start, per stage


def run(cfg: StoryConfig = StoryConfig(), *, docs: Path | None = None) -> StoryResult:
    start = time.perf_counter()
    ds = kl.datasets.get(cfg.dataset, n_train=cfg.n_train, n_test=cfg.n_train, dtype=torch.float64)
    x = ds.train_x
    stages: dict[str, float] = {}
    times: dict[str, float] = {}

    def done(stage: str, rmse: float) -> None:
        stages[stage], times[stage] = rmse, time.perf_counter() - start

    model = kl.KAN(
        list(cfg.widths), grid_size=5, spline_order=3, seed=cfg.seed, dtype=torch.float64
    )

    hist = kl.fit(
        model,
        ds,
        steps=cfg.sparse_steps,
        lamb=cfg.lamb,
        lamb_entropy=cfg.lamb_entropy,
        progress=False,
    )
    done("sparse", hist.test_loss[-1])
    if docs is not None:
        kl.plot(model, x, title="trained with sparsity", path=docs / "story_before_prune.png")

    model = kl.prune(model, x, node_threshold=cfg.node_threshold, edge_threshold=cfg.edge_threshold)
    pruned_widths = list(model.widths)
    if docs is not None:
        kl.plot(model, x, title="pruned", path=docs / "story_after_prune.png")
    hist = kl.fit(model, ds, steps=cfg.pruned_steps, progress=False)
    done("pruned", hist.test_loss[-1])

    hist = kl.fit(model, ds, steps=cfg.fine_steps, grid_schedule=[cfg.fine_grid], progress=False)
    done("fine_grid", hist.test_loss[-1])

    kl.auto_symbolic(model, x, lib=list(cfg.lib), r2_threshold=cfg.r2_threshold)
    with torch.no_grad():
        done("symbolic", float(((model(ds.test_x) - ds.test_y) ** 2).mean().sqrt()))
    hist = kl.fit(model, ds, steps=cfg.affine_steps, grid_update_every=0, progress=False)
    done("affine", hist.test_loss[-1])
    if docs is not None:
        kl.plot(model, x, title="symbolic", path=docs / "story_symbolic.png")

    formula = kl.symbolic_formula(model, precision=cfg.precision)
    exact = kl.symbolic_formula(model, precision=None)
    y = ds.test_y.numpy().reshape(len(ds.test_y), -1)
    rmse = float(np.sqrt(np.mean((exact(ds.test_x) - y) ** 2)))
    rounded = float(np.sqrt(np.mean((formula(ds.test_x) - y) ** 2)))
    seconds = time.perf_counter() - start
    return StoryResult(formula, exact, rmse, rounded, pruned_widths, seconds, stages, times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--docs",
        "--out",
        type=Path,
        default=None,
        help="write the network plots before/after pruning (PNG) to this folder",
    )
    args = parser.parse_args(argv)
    if args.docs is not None:
        args.docs.mkdir(parents=True, exist_ok=True)
    # The tensors here are tiny (1000 x 5): extra threads only add synchronisation overhead.
    torch.set_num_threads(1)
    res = run(docs=args.docs)
    print(f"pruned to {res.pruned_widths}")
    for stage, value in res.stages.items():
        print(f"  test RMSE after {stage:10s} {value:.3e}   (t = {res.times[stage]:5.1f} s)")
    for k, expr in enumerate(res.formula):
        print(f"formula y_{k + 1} = {expr}")
    print(
        f"test RMSE of the formula: {res.test_rmse:.3e} (full precision), "
        f"{res.rounded_rmse:.3e} (rounded to {StoryConfig.precision} places)"
    )
    print(f"wall time: {res.seconds:.1f} s")
    if not math.isfinite(res.test_rmse):
        raise SystemExit("the formula is not finite on the test set")


if __name__ == "__main__":
    main()
