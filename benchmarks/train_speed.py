"""Time per ``kl.fit`` step: KAN (each kernel backend) vs the parameter-matched MLP.

    python benchmarks/train_speed.py [--quick] [--out results.json] [--steps 20] [--threads 2]

Shapes as in ``layer_speed.py`` (A: [64, 64, 64], batch 1024; B: [784, 64, 10], batch 512), G = 5
and 100, k = 3, float32, Adam with mini-batches of that size on a synthetic regression set. Each
measurement is one ``fit`` call of ``--steps`` steps (no grid updates, one evaluation at the end)
divided by the number of steps, after a warm-up call; implementations are interleaved over rounds
and the median is reported. Prints a Markdown table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import kanlab as kl
from kanlab import kernels

SHAPES = {"A": ([64, 64, 64], 1024), "B": ([784, 64, 10], 512)}


def dataset(widths: list[int], batch: int) -> kl.datasets.Dataset:
    n_out = widths[-1]

    def target(x: torch.Tensor) -> torch.Tensor:  # (n, in) -> (n, out)
        return torch.sin(3 * x[:, :n_out]) * x[:, -n_out:]

    return kl.datasets.from_function(
        target, widths[0], n_train=4 * batch, n_test=batch, seed=0, name="train-speed"
    )


def fit_ms_per_step(model: torch.nn.Module, data, batch: int, steps: int, backend: str | None):
    if backend is not None:
        kernels.set_backend(backend)
    try:
        t0 = time.perf_counter()
        kl.fit(
            model,
            data,
            optimizer="adam",
            steps=steps,
            lr=1e-3,
            batch_size=batch,
            grid_update_every=None,
            stop_grid_update_step=None,
            progress=False,
            log_every=steps,
        )
        return (time.perf_counter() - t0) / steps * 1e3
    finally:
        kernels.set_backend("auto")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="G = 5 only, 2 rounds")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/train_speed.json"))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    grids = [5] if args.quick else [5, 100]
    rounds = args.rounds or (2 if args.quick else 5)
    results = []
    print(f"torch {torch.__version__}, {args.threads} threads, Adam, {args.steps} steps per fit")
    print("| shape | G | model | ms / fit step | x mlp-params |")
    print("|---|---|---|---|---|")
    for shape, (widths, batch) in SHAPES.items():
        data = dataset(widths, batch)
        for grid_size in grids:
            kan = kl.KAN(widths, grid_size=grid_size, seed=0)
            n_params = kl.count_params(kan)
            hidden = max(1, round((n_params - widths[-1]) / (widths[0] + widths[-1] + 1)))
            mlp = kl.MLP([widths[0], hidden, widths[-1]], seed=0)
            runs = {f"kan/{b}": (kan, b) for b in kernels.available_backends()}
            runs["mlp-params"] = (mlp, None)
            for model, backend in runs.values():  # warm-up (JIT, allocator)
                fit_ms_per_step(model, data, batch, 2, backend)
            times: dict[str, list[float]] = {name: [] for name in runs}
            for _ in range(rounds):
                for name, (model, backend) in runs.items():
                    times[name].append(fit_ms_per_step(model, data, batch, args.steps, backend))
            base = statistics.median(times["mlp-params"])
            for name, ts in times.items():
                ms = statistics.median(ts)
                row = {
                    "shape": shape,
                    "grid_size": grid_size,
                    "model": name,
                    "ms_per_step": ms,
                    "ratio_to_mlp_params": ms / base,
                    "params": n_params,
                    "mlp_hidden": hidden,
                }
                results.append(row)
                print(
                    f"| {shape} | {grid_size} | {name} | {ms:.2f} | {ms / base:.2f} |", flush=True
                )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"torch": torch.__version__, "threads": args.threads, "steps": args.steps}
    args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
