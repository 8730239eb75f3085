"""Issue 19's per-evaluation table: ms per model-evaluation, single models against model batches.

One model-evaluation = forward + backward of an MSE w.r.t. all of a model's parameters on
``--points`` shared points (float64, one torch/Numba thread). Rows, for each ``--widths``:

- single models (kanlab's own fast kernels, one model per call): KAN on a uniform grid, KAN after
  ``update_grid`` (adapted grid), MLP of the same widths;
- model batches (``kanlab.model_batch``: ``sum_m mse(batch(x)[m], y)`` forward + backward, divided
  by M) of the same KANs (uniform, adapted: each model's grid adapted to its own data) and MLPs, at
  M = ``--models`` (1, 8, 64, 256);
- for the KAN batches (where fit_batch takes its fused step), kind ``fused``: the same objective
  and gradients by ``fit_batch``'s fused training step
  (:func:`kanlab.train.batch_loop.fused_mse_grads`: one Numba call for the loss and every
  parameter gradient, written to ``.grad`` as fit_batch does), timed interleaved with the
  ``batch`` row of the same models (repeat by repeat), so the two are compared under one load.

Columns: ms per model-evaluation, and how many times faster than the single-model KAN on a uniform
grid (issue 19's "1.0 ms" row, measured here in the same run) and than the single-model MLP.
Medians of ``--repeats`` timings of ``--inner`` evaluations each, all in one run. ``--clock cpu``
times the calling thread's CPU time (``time.thread_time``) instead of wall time: on a machine shared
with other jobs it is not inflated by waiting for a core. Prints a table, writes JSON to ``--out``.

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

CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}


def median_ms(step: Callable[[], None], *, repeats: int, inner: int, clock: str) -> float:
    """Median over ``repeats`` of the mean time of ``inner`` calls of ``step``, in ms."""
    now = CLOCKS[clock]
    step()  # warm-up (kernel compilation, allocator)
    times = []
    for _ in range(repeats):
        t0 = now()
        for _ in range(inner):
            step()
        times.append((now() - t0) / inner * 1e3)
    return statistics.median(times)


def single_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    params = list(model.parameters())

    def step() -> None:
        for p in params:
            p.grad = None
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


def fused_batch_step(
    batch: KANBatch, x: torch.Tensor, y: torch.Tensor
) -> Callable[[], None] | None:
    """fit_batch's fused step: the loss and the gradients without autograd, set as ``.grad``;
    None where fit_batch would not take it (no Numba, G+k > 24, ...): no fused row then."""
    from kanlab.train.batch_loop import fused_loss_applies, fused_mse_grads

    if not fused_loss_applies(batch, x):
        return None

    def step() -> None:
        _, grads = fused_mse_grads(batch, x, y)
        for layer, (g_coef, g_ss, g_sb) in zip(batch.layers, grads, strict=True):
            layer.coef.grad, layer.scale_spline.grad, layer.scale_base.grad = g_coef, g_ss, g_sb

    return step


def median_ms_interleaved(
    steps: list[Callable[[], None]], *, repeats: int, inner: int, clock: str
) -> list[float]:
    """:func:`median_ms` of each step, the steps' repeats interleaved (A B A B ...)."""
    now = CLOCKS[clock]
    for step in steps:
        step()  # warm-up
    times: list[list[float]] = [[] for _ in steps]
    for _ in range(repeats):
        for step, acc in zip(steps, times, strict=True):
            t0 = now()
            for _ in range(inner):
                step()
            acc.append((now() - t0) / inner * 1e3)
    return [statistics.median(t) for t in times]


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


FAMILIES = (("KAN uniform", "kan", False), ("KAN adapted", "kan", True), ("MLP", "mlp", False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--widths", nargs="+", default=["2,5,1", "4,4,2,1"], help="comma-separated, e.g. 2,5,1"
    )
    parser.add_argument("--models", type=int, nargs="+", default=[1, 8, 64, 256])
    parser.add_argument("--points", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--inner", type=int, default=0, help="evaluations per timing (0: auto)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall")
    parser.add_argument("--out", type=Path, default=Path("/tmp/model_batch_speed.json"))
    args = parser.parse_args()
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else []
    torch.set_num_threads(1)
    rows = []
    header = f"{'model':<16}{'kind':<8}{'M':>5}{'ms/model-eval':>15}{'vs KAN':>9}{'vs MLP':>9}"
    print(
        f"{args.points} points, float64, 1 thread, {args.clock} clock; forward+backward of an "
        f"MSE; 'vs': times faster than the single-model KAN (uniform grid) / MLP; load "
        f"{' '.join(load) or '?'}"
    )
    for spec in args.widths:
        widths = [int(w) for w in spec.split(",")]
        g = torch.Generator().manual_seed(0)
        x = torch.rand(args.points, widths[0], generator=g, dtype=torch.float64) * 2 - 1
        y = torch.rand(args.points, widths[-1], generator=g, dtype=torch.float64)
        timed = []  # (name, kind, M, ms per model-evaluation)
        for name, family, adapted in FAMILIES:
            (model,) = models_for(family, widths, 1, adapted)
            inner = args.inner or 32
            ms = median_ms(single_step(model, x, y), repeats=args.repeats, inner=inner,
                           clock=args.clock)  # fmt: skip
            timed.append((name, "single", 1, ms))
        for name, family, adapted in FAMILIES:
            for n_models in args.models:
                models = models_for(family, widths, n_models, adapted)
                batch = (MLPBatch if family == "mlp" else KANBatch).stack(models)
                inner = args.inner or max(1, 64 // n_models)
                steps = [batch_step(batch, x, y)]
                fused = fused_batch_step(batch, x, y) if family == "kan" else None
                if fused is not None:
                    steps.append(fused)
                times = median_ms_interleaved(steps, repeats=args.repeats, inner=inner,
                                              clock=args.clock)  # fmt: skip
                for kind, ms in zip(("batch", "fused"), times, strict=False):
                    timed.append((name, kind, n_models, ms / n_models))
        kan_ms = timed[0][3]
        mlp_ms = timed[2][3]
        print(f"\nwidths {widths}")
        print(header)
        print("-" * len(header))
        for name, kind, n_models, ms in timed:
            rows.append({"widths": widths, "model": name, "kind": kind, "n_models": n_models,
                         "ms_per_model_eval": ms, "x_faster_than_single_kan": kan_ms / ms,
                         "x_faster_than_single_mlp": mlp_ms / ms})  # fmt: skip
            print(
                f"{name:<16}{kind:<8}{n_models:>5}{ms:>15.4f}{kan_ms / ms:>9.2f}{mlp_ms / ms:>9.2f}"
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"points": args.points, "threads": 1, "dtype": "float64",
                                    "clock": args.clock, "repeats": args.repeats,
                                    "loadavg_start": load, "rows": rows}, indent=2))  # fmt: skip
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
