"""fit's ms per LBFGS step and per Adam step, for source trees side by side (e.g. before and after).

    python benchmarks/fit_step_speed.py --trees before=/path/to/old/src,after=src
                                        [--rounds 5] [--lbfgs-steps 10] [--adam-steps 50] [--out f.json]

KAN [2, 5, 1], grid 5, k = 3, float64, 1000 training points of exp(sin(pi x) + y^2), full batch, no
grid updates, 1 thread: what the optimiser and the model cost per step, nothing else. Each tree runs
in its own worker process (``PYTHONPATH=<tree>``), which warms up (kernel compilation, the first
steps) and then times one ``fit`` call per round; the trees' rounds are interleaved and medians
reported, wall clock and the process's CPU time (robust to other jobs on a shared machine).
Prints a Markdown table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def worker(rounds: int, lbfgs_steps: int, adam_steps: int) -> None:
    import torch

    import kanlab as kl

    torch.set_num_threads(1)

    def f(x: torch.Tensor) -> torch.Tensor:
        return torch.exp(torch.sin(torch.pi * x[:, 0]) + x[:, 1] ** 2)

    ds = kl.datasets.from_function(f, 2, n_train=1000, n_test=1000, seed=0, dtype=torch.float64)
    runs = {"lbfgs": ("lbfgs", 1.0, lbfgs_steps), "adam": ("adam", 1e-2, adam_steps)}

    def once(name: str) -> float:
        optimizer, lr, steps = runs[name]
        model = kl.KAN([2, 5, 1], grid_size=5, seed=0, dtype=torch.float64)
        t0, c0 = time.perf_counter(), time.process_time()
        kl.fit(model, ds, optimizer=optimizer, lr=lr, steps=steps, grid_update_every=0,
               log_every=steps, progress=False)  # fmt: skip
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        return wall / steps * 1e3, cpu / steps * 1e3

    for name in runs:  # warm-up
        once(name)
    for _ in range(rounds):
        line = input()  # the parent says when: the trees take turns
        row = {}
        for name in runs:
            row[name], row[f"{name}_cpu"] = once(name)
        print(json.dumps(row), flush=True)
        if line == "last":
            break


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trees", required=True, help="name=path/to/src,... (one or more)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--lbfgs-steps", type=int, default=10)
    parser.add_argument("--adam-steps", type=int, default=50)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/fit_step_speed.json"))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.rounds, args.lbfgs_steps, args.adam_steps)
        return
    trees = dict(item.split("=", 1) for item in args.trees.split(","))
    procs = {}
    for name, src in trees.items():
        env = {**os.environ, "PYTHONPATH": str(Path(src).resolve()), "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, __file__, "--worker", "--trees", "-", "--rounds", str(args.rounds),
               "--lbfgs-steps", str(args.lbfgs_steps), "--adam-steps", str(args.adam_steps)]  # fmt: skip
        procs[name] = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       text=True)  # fmt: skip
    keys = ("lbfgs", "adam", "lbfgs_cpu", "adam_cpu")
    times: dict[str, dict[str, list[float]]] = {n: {k: [] for k in keys} for n in trees}
    for r in range(args.rounds):
        for name, proc in procs.items():
            proc.stdin.write("last\n" if r == args.rounds - 1 else "go\n")
            proc.stdin.flush()
            row = json.loads(proc.stdout.readline())
            for k, v in row.items():
                times[name][k].append(v)
    for proc in procs.values():
        proc.wait()
    print(f"KAN [2,5,1] G=5 float64, 1000 points, 1 thread, median of {args.rounds} rounds "
          f"({args.lbfgs_steps} LBFGS / {args.adam_steps} Adam steps per fit)")  # fmt: skip
    print("| tree | ms / LBFGS step | ms / Adam step | CPU ms / LBFGS step | CPU ms / Adam step |")
    print("|---|---|---|---|---|")
    rows = []
    for name, ts in times.items():
        med = {k: statistics.median(v) for k, v in ts.items()}
        rows.append({"tree": name, "src": trees[name], "median_ms": med, "raw": ts})
        print(f"| {name} | {med['lbfgs']:.2f} | {med['adam']:.3f} | {med['lbfgs_cpu']:.2f} | "
              f"{med['adam_cpu']:.3f} |")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
