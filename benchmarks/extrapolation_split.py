"""Where a KAN's test error comes from as its grid grows: test points inside the training range of
every input and every hidden node's value, against the few outside it (issue 21's diagnosis of the
special functions' rise past G = 20; the scaling experiment's in ``kanlab/bench/paper/scaling.py``).

For each function and grid margin: the special-functions protocol's depth-2 KAN (``TableProtocol``:
[2,5,1], float64, LBFGS over G = 3..200, the margin given here instead of the protocol's), one seed,
``--steps`` per grid; after each stage the test RMSE (standardised target units) of all test
points, of the in-range ones and of the out-of-range ones (their count), and the training RMSE.
Prints a Markdown table (the stages G = 20 and G = 200) and writes every stage to JSON.

Run: ``python benchmarks/extrapolation_split.py --functions special/kv,special/lpmv_m0
--margins 0,0.01 --steps 50 [--out benchmarks/results/extrapolation_split.json]``
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import Any


def stages(name: str, margin: float, steps: int) -> list[dict[str, Any]]:
    """Train the protocol's depth-2 KAN on ``name`` with ``grid_margin=margin``; one dict per stage."""
    import torch

    from kanlab import train
    from kanlab.bench.paper.common import TableProtocol
    from kanlab.bench.runner import _prepared
    from kanlab.bench.spec import DataSpec
    from kanlab.bench.tasks import get_task
    from kanlab.models import KAN

    torch.set_num_threads(1)
    proto = TableProtocol.of(quick=False, steps=steps, depths=(2,))
    data = DataSpec(n_train=1000, n_test=1000, seed=0)
    trial = next(t for t in proto.trials(get_task(name), 2, 1, data) if t.family == "kan")
    _, prep = _prepared(trial, {})
    d = prep.data
    model = KAN.from_config(trial.model)
    out: list[dict[str, Any]] = []

    def record(state: Any) -> None:
        m = state.model
        with torch.no_grad():
            tr, te = m.layer_inputs(d.train_x), m.layer_inputs(d.test_x)
            outside = torch.zeros(d.test_x.shape[0], dtype=torch.bool)
            for a, b in zip(tr, te, strict=True):
                outside |= ((b < a.min(0).values) | (b > a.max(0).values)).any(1)
            err = ((m(d.test_x) - d.test_y) ** 2).sum(1)
            train_rmse = float(((m(d.train_x) - d.train_y) ** 2).mean().sqrt())

        def rmse(mask: Any) -> float:
            return float(err[mask].mean().sqrt()) if bool(mask.any()) else float("nan")

        out.append({"G": state.grid_size, "train": train_rmse,
                    "test": rmse(torch.ones_like(outside)), "inside": rmse(~outside),
                    "outside": rmse(outside), "n_outside": int(outside.sum())})  # fmt: skip

    train.fit(model, d, replace(trial.fit, grid_margin=margin), callbacks=[record])
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--functions", default="special/kv,special/lpmv_m0,special/sph_harm_m0_n1")
    parser.add_argument("--margins", default="0,0.01")
    parser.add_argument("--steps", type=int, default=50, help="LBFGS steps per grid")
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/extrapolation_split.json")
    )
    args = parser.parse_args(argv)
    rows = []
    print("| function | grid margin | test G=20 | test G=200 | in-range G=20 | in-range G=200 | "
          "outside G=200 (n) | train G=200 |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in args.functions.split(","):
        for margin in (float(m) for m in args.margins.split(",")):
            st = stages(name, margin, args.steps)
            rows.append({"function": name, "margin": margin, "steps": args.steps, "stages": st})
            by = {s["G"]: s for s in st}
            a, b = by.get(20, {}), by.get(200, {})
            print(f"| {name} | {margin:g} | {a.get('test', float('nan')):.1e} | "
                  f"{b.get('test', float('nan')):.1e} | {a.get('inside', float('nan')):.1e} | "
                  f"{b.get('inside', float('nan')):.1e} | {b.get('outside', float('nan')):.1e} "
                  f"({b.get('n_outside', 0)}) | {b.get('train', float('nan')):.1e} |")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1), encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
