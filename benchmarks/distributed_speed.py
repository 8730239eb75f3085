"""Wall time of ``kanlab train`` on one process vs ``torchrun`` with N processes (gloo, CPU).

    python benchmarks/distributed_speed.py [--nproc 2] [--task feynman/I.12.11] [--n-train 20000]
        [--steps 30] [--rounds 1] [--out benchmarks/results/distributed_speed.json]

Each configuration runs the same command (same data, model, optimiser and steps) as a subprocess;
the table gives the median wall time of whole runs (start-up included) and the ms/step that
``kanlab train`` reports, and the ratio to one process. The figure depends on the machine: on a
2-core machine two ranks compete for the cores that one process's BLAS would use.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(cmd: list[str], cwd: str) -> tuple[float, float]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, check=False)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"command failed: {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    match = re.search(r"([\d.]+) ms/step", proc.stdout)
    return wall, float(match.group(1)) if match else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--task", default="feynman/I.12.11")
    ap.add_argument("--n-train", type=int, default=20000)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/distributed_speed.json"))
    args = ap.parse_args()
    train = [
        "-m", "kanlab", "train", "--task", args.task, "--n-train", str(args.n_train),
        "--widths", "8", "--steps", str(args.steps), "--optimizer", "lbfgs", "--no-progress",
    ]  # fmt: skip
    configs = {
        "1 process": [sys.executable, *train, "--out", "one.safetensors"],
        f"torchrun x{args.nproc}": [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={args.nproc}",
            *train,
            "--out",
            "many.safetensors",
        ],
    }
    walls: dict[str, list[float]] = {k: [] for k in configs}
    steps: dict[str, list[float]] = {k: [] for k in configs}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):  # interleaved rounds
            for name, cmd in configs.items():
                wall, ms = run(cmd, tmp)
                walls[name].append(wall)
                steps[name].append(ms)
    base = statistics.median(walls["1 process"])
    rows = []
    print(
        f"task {args.task}, {args.n_train} training rows, KAN [d, 8, 1], LBFGS x {args.steps} steps"
    )
    print(f"{'configuration':<16}{'wall s (median)':>18}{'ms/step':>12}{'vs 1 process':>14}")
    for name in configs:
        wall = statistics.median(walls[name])
        ms = statistics.median(steps[name])
        rows.append({"config": name, "wall_s": wall, "ms_per_step": ms, "ratio": wall / base})
        print(f"{name:<16}{wall:>18.1f}{ms:>12.1f}{wall / base:>13.2f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"args": vars(args) | {"out": str(args.out)}, "rows": rows}, indent=2)
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
