"""fit_batch with and without its fused training step, side by side in one run (issue 19).

One quick-suite-like group: M KANs (``--widths``, seeds 0..M-1) trained by ``fit_batch`` with
LBFGS over the grid schedule ``--grids`` (``--steps`` per stage, grid updates as fit's defaults)
on ``paper/exp_sin_sq`` (1000 train / 1000 test points, float64, one thread). The two paths run
interleaved, repeat by repeat, on fresh copies of the same models: ``fused`` (the default:
:func:`kanlab.train.batch_loop.fused_mse_grads` where it applies) and ``autograd`` (the fused
step turned off: the objective under autograd through the per-layer kernels, as before it).
Prints median seconds per fit (CPU time of this thread, or wall with ``--clock wall``), the
speed-up, and the largest relative difference of the final test RMSEs (LBFGS amplifies rounding
differences, so the trajectories may part); writes JSON to ``--out``.

    PYTHONPATH=src python benchmarks/fit_batch_fused.py --out /tmp/fit_batch_fused.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import kanlab as kl
from kanlab.model_batch import KANBatch
from kanlab.train import batch_loop

CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", default="2,5,1")
    parser.add_argument("--grids", default="3,5,10")
    parser.add_argument("--models", type=int, nargs="+", default=[3, 64])
    parser.add_argument("--steps", type=int, default=10, help="LBFGS steps per grid stage")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="cpu")
    parser.add_argument("--out", type=Path, default=Path("/tmp/fit_batch_fused.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    widths = [int(w) for w in args.widths.split(",")]
    grids = tuple(int(g) for g in args.grids.split(","))
    ds = kl.datasets.get("paper/exp_sin_sq").to(dtype=torch.float64)
    cfg = kl.KANConfig(widths=widths, grid_size=grids[0], dtype="float64")
    fit = {"optimizer": "lbfgs", "steps": args.steps, "grid_schedule": grids, "progress": False}
    real = batch_loop.fused_loss_applies
    now = CLOCKS[args.clock]
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else []
    print(
        f"fit_batch, LBFGS, {args.steps} steps per stage of {grids}, widths {widths}, "
        f"{ds.train_x.shape[0]} points, float64, 1 thread, {args.clock} clock; load {' '.join(load)}"
    )
    header = f"{'M':>4}{'fused s':>10}{'autograd s':>12}{'speed-up':>10}{'max rel dRMSE':>15}"
    print(header)
    print("-" * len(header))
    rows = []
    for n_models in args.models:
        models = KANBatch.from_config(cfg, seeds=range(n_models)).unstack()
        times: dict[str, list[float]] = {"fused": [], "autograd": []}
        rmse: dict[str, list[float]] = {}
        for _ in range(args.repeats):
            for path in ("fused", "autograd"):
                batch = KANBatch.stack(models)
                batch_loop.fused_loss_applies = real if path == "fused" else lambda *a: False
                try:
                    t0 = now()
                    hists = batch_loop.fit_batch(batch, ds, **fit)
                    times[path].append(now() - t0)
                finally:
                    batch_loop.fused_loss_applies = real
                rmse[path] = [h.test_metric[-1] for h in hists]
        fused, auto = (statistics.median(times[p]) for p in ("fused", "autograd"))
        diff = max(
            abs(a - b) / abs(b) for a, b in zip(rmse["fused"], rmse["autograd"], strict=True)
        )
        rows.append({"n_models": n_models, "fused_s": fused, "autograd_s": auto,
                     "speed_up": auto / fused, "max_rel_test_rmse_diff": diff})  # fmt: skip
        print(f"{n_models:>4}{fused:>10.3f}{auto:>12.3f}{auto / fused:>10.2f}{diff:>15.2e}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"widths": widths, "grids": grids, "steps": args.steps,
                                    "clock": args.clock, "repeats": args.repeats,
                                    "loadavg_start": load, "rows": rows}, indent=2))  # fmt: skip
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
