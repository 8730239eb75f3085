"""Per-model cost of one forward+backward of an MSE: a model batch vs a Python loop over models.

For M = 1, 8, 64 models of widths [2, 5, 1] (default) on 1000 shared points, float64, one torch
thread: the time of ``sum_m mse(batch(x)[m], y)`` forward + backward (``kanlab.model_batch``)
divided by M, next to the loop ``for model in models: mse(model(x), y).backward()`` over single
models (kanlab's own fast kernels) divided by M; KANs on uniform grids and after ``update_grid``
(adapted grids, each model on its own data), and MLPs of the same widths. Medians of ``--repeats``
timings of ``--inner`` evaluations each, all in one run. Prints a table and writes JSON to ``--out``.

    PYTHONPATH=src python benchmarks/model_batch_speed.py --out /tmp/model_batch_speed.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

import kanlab as kl
from kanlab.model_batch import KANBatch, MLPBatch


def median_ms(step: Callable[[], None], *, repeats: int, inner: int) -> float:
    """Median over ``repeats`` of the mean time of ``inner`` calls of ``step``, in ms."""
    step()  # warm-up (kernel compilation, allocator)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            step()
        times.append((time.perf_counter() - t0) / inner * 1e3)
    return statistics.median(times)


def loop_step(models: list, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    params = [p for model in models for p in model.parameters()]

    def step() -> None:
        for p in params:
            p.grad = None
        for model in models:
            torch.mean((model(x) - y) ** 2).backward()

    return step


def batch_step(batch: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    params = list(batch.parameters())

    def step() -> None:
        for p in params:
            p.grad = None
        # sum over models of each model's MSE: (M, batch, out) -> per-model mean -> sum
        torch.mean((batch(x) - y) ** 2, dim=(1, 2)).sum().backward()

    return step


def models_for(family: str, widths: list[int], n_models: int, adapted: bool) -> list:
    if family == "mlp":
        cfg = kl.MLPConfig(widths=widths, dtype="float64")
        return [kl.build(cfg.replace(seed=s)) for s in range(n_models)]
    cfg = kl.KANConfig(widths=widths, dtype="float64")
    models = [kl.build(cfg.replace(seed=s)) for s in range(n_models)]
    if adapted:
        for s, model in enumerate(models):
            g = torch.Generator().manual_seed(1000 + s)
            model.update_grid(
                (torch.rand(500, widths[0], generator=g, dtype=torch.float64) * 2 - 1) ** 3
            )
    return models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[2, 5, 1])
    parser.add_argument("--models", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--points", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--inner", type=int, default=0, help="evaluations per timing (0: auto)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/model_batch_speed.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.points, args.widths[0], generator=g, dtype=torch.float64) * 2 - 1
    y = torch.rand(args.points, args.widths[-1], generator=g, dtype=torch.float64)
    rows = []
    header = f"{'model':<18}{'M':>5}{'loop ms/model':>15}{'batch ms/model':>16}{'loop/batch':>12}"
    print(
        f"widths {args.widths}, {args.points} points, float64, 1 thread; forward+backward of an MSE"
    )
    print(header)
    print("-" * len(header))
    for family, adapted in (("kan", False), ("kan", True), ("mlp", False)):
        name = {"kan": "KAN adapted" if adapted else "KAN uniform", "mlp": "MLP"}[family]
        for n_models in args.models:
            models = models_for(family, args.widths, n_models, adapted)
            batch = (MLPBatch if family == "mlp" else KANBatch).stack(models)
            inner = args.inner or max(1, 64 // n_models)
            loop = median_ms(loop_step(models, x, y), repeats=args.repeats, inner=inner) / n_models
            batched = median_ms(batch_step(batch, x, y), repeats=args.repeats, inner=inner)
            batched /= n_models
            rows.append({"model": name, "widths": args.widths, "n_models": n_models,
                         "loop_ms_per_model": loop, "batch_ms_per_model": batched})  # fmt: skip
            print(f"{name:<18}{n_models:>5}{loop:>15.4f}{batched:>16.4f}{loop / batched:>12.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"points": args.points, "threads": 1, "dtype": "float64",
                                    "repeats": args.repeats, "rows": rows}, indent=2))  # fmt: skip
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
