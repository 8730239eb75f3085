"""Formula to KAN: compile formulas into exact KANs, then train one further as splines.

1. Compiles a few rows of the Feynman table (on their own variable ranges) and a nested toy,
   prints each KAN's widths (``[n_sum, n_mult]`` pairs where a layer multiplies) and its largest
   relative error against the table's formula on random in-range points
   (``|f_kan - f| / max(|f|, rms f)``, float64).
2. Shows what is refused: a function outside the symbolic library, a formula undefined on its ranges.
3. Switches the relativistic velocity addition (u + v) / (1 + uv) to splines (grid 20, each spline
   fitted to its edge's function), prints the RMSE, trains 3 LBFGS steps, saves and reloads it.

Run ``python examples/compile_formula.py`` (about 10 s, most of it imports and the first fit).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import sympy as sp
import torch

import kanlab as kl
from kanlab.datasets.feynman import evaluate_formula, load_table

ROWS = ("I.6.2", "I.9.18", "I.16.6", "I.41.16", "II.35.18", "III.10.19")


def _points(ranges: list[tuple[float, float]], n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    lo = torch.tensor([a for a, _ in ranges], dtype=torch.float64)
    hi = torch.tensor([b for _, b in ranges], dtype=torch.float64)
    return lo + (hi - lo) * torch.rand(n, len(ranges), generator=gen, dtype=torch.float64)


def _rel_err(model: kl.KAN, x: torch.Tensor, f: np.ndarray) -> float:
    with torch.no_grad():
        got = model(x)[:, 0].numpy()
    return float(np.max(np.abs(got - f) / np.maximum(np.abs(f), np.sqrt(np.mean(f**2)))))


def exact_models(n: int) -> None:
    table = {r.filename: r for r in load_table()}
    print(f"{'equation':10} {'widths':34} rel. error  formula")
    for name in ROWS:
        row = table[name]
        model = kl.compile_formula(row.formula, row.variables, row.ranges)
        x = _points(list(row.ranges), n, seed=1)
        f = evaluate_formula(row.formula, {v: x[:, i].numpy() for i, v in enumerate(row.variables)})
        widths = str(list(model.config.widths)).replace(" ", "")
        print(f"{name:10} {widths:34} {_rel_err(model, x, f):.1e}     {row.formula}")
    x1, x2 = sp.symbols("x_1 x_2")
    toy = sp.exp(sp.sin(sp.pi * x1) + x2**2)
    model = kl.compile_formula(toy, [x1, x2], (-1, 1))
    x = _points([(-1, 1)] * 2, n, seed=1)
    f = sp.lambdify([x1, x2], toy)(*x.numpy().T)
    widths = str(list(model.config.widths)).replace(" ", "")
    print(f"{'toy':10} {widths:34} {_rel_err(model, x, f):.1e}     {toy}")


def refusals() -> None:
    for expr, ranges in [("besselj(0, 20*x) + y**2", (-1, 1)), ("log(x - y)", (0, 1))]:
        try:
            kl.compile_formula(expr, ["x", "y"], ranges)
        except ValueError as e:
            print(f"refused {expr!r}: {str(e)[:110]}...")


def train_further(steps: int) -> None:
    u, v = sp.symbols("u v")
    expr = (u + v) / (1 + u * v)
    ranges = [(-0.8, 0.8), (-0.8, 0.8)]
    model = kl.compile_formula(expr, [u, v], ranges, grid_size=20, to_splines=True)
    f = sp.lambdify([u, v], expr)

    def target(x: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(f(x[:, 0].numpy(), x[:, 1].numpy())).unsqueeze(1)

    ds = kl.datasets.from_function(
        target, 2, n_train=300, n_test=300, ranges=ranges, dtype=torch.float64, seed=0
    )

    def rmse() -> float:
        with torch.no_grad():
            return float(((model(ds.test_x) - ds.test_y) ** 2).mean().sqrt())

    print(f"(u+v)/(1+uv) as splines, grid 20: test RMSE {rmse():.2e}")
    # no grid updates: the grids already sit on the ranges of the nodes
    hist = kl.fit(model, ds, steps=steps, progress=False, grid_update_every=0)
    loss = f"{hist.train_loss[0]:.2e} -> {hist.train_loss[-1]:.2e}"
    print(f"{steps} LBFGS steps: train RMSE {loss}, test RMSE {rmse():.2e}")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "velocity.safetensors"
        kl.save(model, path)
        back = kl.load(path)
        with torch.no_grad():
            same = torch.equal(back(ds.test_x), model(ds.test_x))
    print(f"saved and reloaded: equal outputs = {same}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=1000, help="test points per formula")
    parser.add_argument("--steps", type=int, default=3, help="LBFGS steps on the spline KAN")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    exact_models(args.points)
    refusals()
    train_further(args.steps)
    print(f"wall time {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
