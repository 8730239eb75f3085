"""Where a KAN training step's time goes: each CPU kernel call inside real steps, and the rest.

    python benchmarks/step_breakdown.py [--grids 5,500] [--steps 30] [--threads 2] [--out f.json]

Shapes as in ``layer_speed.py`` (A: [64, 64, 64], batch 1024; B: [784, 64, 10], batch 512), k = 3,
float32, forward + backward of ``mean(y**2)`` with the Numba backend. Every call of a compiled
kernel is timed (wall clock) where the layer makes it, inside the step, and summed per layer
into its forward and its backward (on large grids one kernel computes both of a hidden layer's
gradients), so the figures include
what a step does to the caches between kernels (isolated kernel timings miss that). The grids'
steps are interleaved, so the grid-scaling ratio of each part is measured side by side. "rest" is
the step minus the kernels: the base branch (SiLU and its matrix product), autograd, the Python
of the layers and of the kernels' drivers. Prints a Markdown table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import torch

import kanlab as kl
from kanlab import kernels

SHAPES = {"A": ([64, 64, 64], 1024), "B": ([784, 64, 10], 512)}


def timed_dispatch(module, layers: dict[int, str], log: dict[str, float]) -> Callable:
    """A stand-in for ``module._dispatch`` that adds each kernel call's wall time to ``log``, under
    "<layer>: forward" or "<layer>: backward" (the coefficient- and input-gradient kernels of a
    layer together: on large grids one kernel computes both). ``layers`` maps the data address of
    each layer's coefficient table to its name (the kernels get the table itself, not a copy)."""
    dispatch = module._dispatch

    def wrapper(kernel, args, n, n_threads):
        t0 = time.perf_counter()
        dispatch(kernel, args, n, n_threads)
        elapsed = time.perf_counter() - t0
        weight = next(a for a in args if isinstance(a, torch.Tensor) and a.dim() == 3)
        part = "forward" if kernel is module._forward else "backward"
        log[f"{layers.get(weight.data_ptr(), '?')}: {part}"] += elapsed

    return wrapper


def measure(shape: str, grids: list[int], steps: int) -> dict:
    from kanlab.kernels.cpu import api

    widths, batch = SHAPES[shape]
    x = torch.rand(batch, widths[0], generator=torch.Generator().manual_seed(1)) * 2 - 1
    models = {g: kl.KAN(widths, grid_size=g, spline_order=3, seed=0) for g in grids}
    names = {
        g: {
            layer.coef.data_ptr(): f"layer {j} ({layer.in_features}x{layer.out_features})"
            for j, layer in enumerate(model.layers)
        }
        for g, model in models.items()
    }
    per_step: dict[int, list[dict[str, float]]] = {g: [] for g in grids}
    original = api._dispatch
    try:
        for step in range(steps + 3):
            for g, model in models.items():
                log: dict[str, float] = defaultdict(float)
                api._dispatch = timed_dispatch(api, names[g], log)
                for p in model.parameters():
                    p.grad = None
                t0 = time.perf_counter()
                model(x).pow(2).mean().backward()
                total = time.perf_counter() - t0
                api._dispatch = original
                if step >= 3:  # warm-up steps first
                    log["rest"] = total - sum(log.values())
                    log["step"] = total
                    per_step[g].append(dict(log))
    finally:
        api._dispatch = original
    medians = {
        g: {key: statistics.median(s[key] for s in rows) * 1e3 for key in rows[0]}
        for g, rows in per_step.items()
    }
    g_lo, g_hi = grids[0], grids[-1]
    paired = {
        key: statistics.median(
            hi[key] / lo[key] for lo, hi in zip(per_step[g_lo], per_step[g_hi], strict=True)
        )
        for key in per_step[g_hi][0]
    }
    return {"shape": shape, "widths": widths, "batch": batch, "ms": medians, "paired": paired}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grids", default="5,500", help="grid sizes, comma-separated")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per grid")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/step_breakdown.json"))
    args = parser.parse_args()
    if "numba" not in kernels.available_backends():
        raise SystemExit("step_breakdown needs the Numba backend: pip install 'kanlab[jit]'")
    try:
        grids = [int(g) for g in args.grids.split(",")]
    except ValueError:
        grids = []
    if not grids or min(grids) < 1:
        raise SystemExit(f"--grids must be positive integers, comma-separated; got {args.grids!r}")
    torch.set_num_threads(args.threads)
    kernels.set_backend("numba")
    header = "| shape | part | " + " | ".join(f"G={g} ms/step" for g in grids)
    print(f"torch {torch.__version__}, {args.threads} threads, float32, k=3, wall clock")
    print(header + f" | G={grids[-1]} / G={grids[0]}, paired |")
    print("|---|---|" + "---|" * (len(grids) + 1))
    results = []
    for shape in SHAPES:
        row = measure(shape, grids, args.steps)
        results.append(row)
        keys = sorted(row["ms"][grids[0]], key=lambda k: (k in ("rest", "step"), k == "step", k))
        for key in keys:
            cells = " | ".join(f"{row['ms'][g][key]:.3f}" for g in grids)
            print(f"| {shape} | {key} | {cells} | {row['paired'][key]:.2f}x |")
    kernels.set_backend("auto")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"torch": torch.__version__, "threads": args.threads, "steps": args.steps}
    args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
