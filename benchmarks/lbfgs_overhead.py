"""What BatchedLBFGS itself costs per closure call, at M = 1, 8, 64 models, beside torch's LBFGS.

    python benchmarks/lbfgs_overhead.py [--models 1,8,64] [--steps 5] [--rounds 5]
                                        [--baseline old_batched_optim.py] [--out f.json]

The problem is cheap on purpose (per model: a 100-parameter ripple-and-Rosenbrock objective), so
that the optimiser's own work dominates: overhead per closure call = (step time - time inside the
closure) / closure calls; for scale, the last column is what one closure call of a real problem
costs (a batch of M KANs [2, 5, 1] on 1000 points, forward + backward). kanlab's settings
(history 10, 20 iterations, tolerances 1e-32), float64, 1 thread. Times are this thread's CPU
time (``time.thread_time``), not wall clock, so that other jobs on a shared machine do not count.
``--baseline`` takes another version of ``batched_optim.py`` (e.g. ``git show
0fbc5c9:src/kanlab/train/batched_optim.py > old.py``) and times it side by side. Implementations
are interleaved over rounds; medians. Prints a Markdown table, writes JSON.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import time
from pathlib import Path

import torch

import kanlab as kl
from kanlab.train.batched_optim import BatchedLBFGS

KANLAB = {"history_size": 10, "max_iter": 20, "tolerance_grad": 1e-32, "tolerance_change": 1e-32}


def problem(n_models: int, n: int = 100):
    g = torch.Generator().manual_seed(0)
    w0 = torch.randn(n_models, n, generator=g, dtype=torch.float64)
    freq = torch.linspace(1, 5, n_models, dtype=torch.float64)[:, None]

    def losses(w: torch.Tensor) -> torch.Tensor:
        chain = 10 * (w[:, 1:] - w[:, :-1] ** 2) ** 2 + (1 - w[:, :-1]) ** 2
        return chain.sum(1) + torch.sin(freq * w).sum(1) + 0.1 * (w**2).sum(1)

    return w0, losses


def time_batched(cls, n_models: int, steps: int) -> tuple[float, int]:
    w0, losses = problem(n_models)
    w = w0.clone().requires_grad_()
    opt = cls([w], n_models=n_models, **KANLAB)
    inside, calls = 0.0, 0

    def closure() -> torch.Tensor:
        nonlocal inside, calls
        t0 = time.thread_time()
        w.grad = None
        out = losses(w)
        out.sum().backward()
        inside += time.thread_time() - t0
        calls += 1
        return out.detach()

    t0 = time.thread_time()
    for _ in range(steps):
        opt.step(closure)
    total = time.thread_time() - t0
    return (total - inside) / calls * 1e3, calls


def time_torch(steps: int) -> tuple[float, int]:
    w0, losses = problem(1)
    w = w0.clone().requires_grad_()
    opt = torch.optim.LBFGS([w], line_search_fn="strong_wolfe", **KANLAB)
    inside, calls = 0.0, 0

    def closure() -> torch.Tensor:
        nonlocal inside, calls
        t0 = time.thread_time()
        opt.zero_grad()
        out = losses(w).sum()
        out.backward()
        inside += time.thread_time() - t0
        calls += 1
        return out

    t0 = time.thread_time()
    for _ in range(steps):
        opt.step(closure)
    total = time.thread_time() - t0
    return (total - inside) / calls * 1e3, calls


def model_eval_ms(n_models: int, reps: int = 20) -> float:
    """For scale: one forward + backward of the summed MSE of M batched KANs [2, 5, 1] (grid 5,
    float64) on 1000 shared points, as ``fit_batch``'s closure does it (CPU time, ms)."""
    from kanlab.model_batch import KANBatch

    batch = KANBatch.stack(
        [kl.KAN([2, 5, 1], grid_size=5, seed=s, dtype=torch.float64) for s in range(n_models)]
    )
    x = torch.rand(1000, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 - 1
    y = torch.sin(torch.pi * x[:, :1]) + x[:, 1:] ** 2

    def once() -> None:
        for p in batch.parameters():
            p.grad = None
        ((batch(x) - y) ** 2).mean((1, 2)).sum().backward()

    once()
    t0 = time.thread_time()
    for _ in range(reps):
        once()
    return (time.thread_time() - t0) / reps * 1e3


def load(path: Path):
    spec = importlib.util.spec_from_file_location("baseline_batched_optim", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.BatchedLBFGS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="1,8,64")
    parser.add_argument("--steps", type=int, default=5, help="LBFGS steps per measurement")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--baseline", type=Path, default=None, help="an older batched_optim.py")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/lbfgs_overhead.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    models = [int(m) for m in args.models.split(",")]
    impls = {"new": BatchedLBFGS}
    if args.baseline is not None:
        impls = {"baseline": load(args.baseline), **impls}
    runs = {}
    for m in models:
        if m == 1:
            runs["torch.optim.LBFGS, M=1"] = lambda: time_torch(args.steps)
        for name, cls in impls.items():
            runs[f"{name}, M={m}"] = lambda cls=cls, m=m: time_batched(cls, m, args.steps)
    for run in runs.values():  # warm-up
        run()
    times: dict[str, list[float]] = {k: [] for k in runs}
    calls: dict[str, int] = {}
    for _ in range(args.rounds):
        for k, run in runs.items():
            ms, calls[k] = run()
            times[k].append(ms)
    print(f"torch {torch.__version__}, 1 thread, float64, {args.steps} LBFGS steps, "
          f"median of {args.rounds}")  # fmt: skip
    evals = {m: model_eval_ms(m) for m in models}
    print("| optimiser | closure calls | overhead ms / closure call | per model | "
          "KAN [2,5,1] batch fwd+bwd ms (for scale) |")  # fmt: skip
    print("|---|---|---|---|---|")
    rows = []
    for k, ts in times.items():
        ms, m = statistics.median(ts), int(k.rsplit("=", 1)[1])
        rows.append({"run": k, "calls": calls[k], "overhead_ms_per_call": ms, "n_models": m,
                     "model_eval_ms": evals[m]})  # fmt: skip
        print(f"| {k} | {calls[k]} | {ms:.3f} | {ms / m:.4f} | {evals[m]:.3f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"torch": torch.__version__, "rows": rows}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
