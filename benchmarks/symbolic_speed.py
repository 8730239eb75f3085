"""Training speed of KANs with symbolic edges versus the same KANs without.

For each architecture, three variants of the same model are timed on one training iteration
(forward + backward of an MSE loss + an Adam update) on a fixed batch:

- ``numeric``: all edges are splines (the baseline);
- ``half``: every second edge of every layer replaced by a library function (several functions
  mixed, so the grouped evaluation runs several groups);
- ``all``: every edge symbolic (the spline branch is skipped).

The ratio ``time(variant) / time(numeric)`` is what matters: symbolic edges are evaluated grouped by
function (one call of each function present, never a Python loop over edges; on CPU the rest is
fused into compiled loops, see ``kanlab._symbolic_eval``), so it should stay near 1 (the issue asks
for at most 2). ``half`` pays for both branches: the spline kernels still run over every edge.
Medians over repeats after a warm-up, variants timed round-robin. Prints a table and writes JSON.

Run: ``python benchmarks/symbolic_speed.py [--json benchmarks/symbolic_speed.json]``
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

import kanlab as kl

FUNCTIONS = ["sin", "x^2", "exp", "tanh", "x"]


def make(widths: list[int], variant: str) -> kl.KAN:
    model = kl.KAN(widths, seed=0, dtype=torch.float64)
    if variant == "numeric":
        return model
    k = 0
    for layer in model.layers:
        for i in range(layer.in_features):
            for o in range(layer.out_features):
                if variant == "all" or (i + o) % 2 == 0:
                    layer.set_symbolic(i, o, FUNCTIONS[k % len(FUNCTIONS)], (1.0, 0.0, 0.5, 0.0))
                    k += 1
    return model


def stepper(model: kl.KAN, x: torch.Tensor, y: torch.Tensor):
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = (model(x) - y).pow(2).mean()
        loss.backward()
        opt.step()

    return step


def time_variants(
    steps: dict[str, object], repeats: int, warmup: int
) -> dict[str, tuple[float, float]]:
    """Median (wall, CPU) seconds per step of each variant, timed round-robin (so a change in
    machine load hits every variant alike). CPU time (``time.process_time``) is the steadier figure
    on a shared machine: it does not count time the process waits for a core."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            t, c = time.perf_counter(), time.process_time()
            step()
            times[name].append((time.perf_counter() - t, time.process_time() - c))
    return {
        name: (statistics.median(w for w, _ in ts), statistics.median(c for _, c in ts))
        for name, ts in times.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="symbolic-edge training speed")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for widths in ([2, 5, 1], [4, 8, 8, 1], [10, 20, 10]):
        gen = torch.Generator().manual_seed(0)
        x = torch.rand(args.batch, widths[0], generator=gen, dtype=torch.float64) * 2 - 1
        y = torch.rand(args.batch, widths[-1], generator=gen, dtype=torch.float64)
        steps = {v: stepper(make(widths, v), x, y) for v in ("numeric", "half", "all")}
        secs = time_variants(steps, args.repeats, warmup=5)
        for variant, (wall, cpu) in secs.items():
            rows.append(
                {
                    "widths": widths,
                    "variant": variant,
                    "ms_per_step": wall * 1e3,
                    "cpu_ms_per_step": cpu * 1e3,
                    "ratio_vs_numeric": wall / secs["numeric"][0],
                    "cpu_ratio_vs_numeric": cpu / secs["numeric"][1],
                }
            )
    print(
        f"{'widths':>14} {'variant':>8} {'ms/step':>9} {'ratio':>6} {'cpu ms':>8} {'cpu ratio':>9}"
    )
    for r in rows:
        print(
            f"{r['widths']!s:>14} {r['variant']:>8} {r['ms_per_step']:9.2f} "
            f"{r['ratio_vs_numeric']:6.2f} {r['cpu_ms_per_step']:8.2f} "
            f"{r['cpu_ratio_vs_numeric']:9.2f}"
        )
    if args.json is not None:
        meta = {
            "batch": args.batch,
            "repeats": args.repeats,
            "threads": args.threads,
            "torch": torch.__version__,
            "machine": platform.machine(),
        }
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
