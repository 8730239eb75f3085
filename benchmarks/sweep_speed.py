"""Sweep throughput: trials per minute, unbatched (a loop of ``fit``) vs batched (``fit_batch``).

For M = 1, 8, 64, 256 models of KAN [2,5,1] (on paper/exp_sin_sq) and KAN [4,4,2,1] (on
paper/exp_sin_4d), and the MLP of 2 hidden layers matched to each KAN's parameter count at its
final grid, trained as a sweep trains them: the task's data prepared per family as the runner does
(1000 training points), LBFGS with the quick suite's kind of settings (a grid schedule, grid updates
every 10 steps), M seeds of one configuration. Side by side in one run, one torch thread:

- unbatched: ``fit`` of one model after another (what the runner did before issue 19): the time of
  ``min(M, --loop-cap)`` fits (it is linear in M), as trials per minute;
- batched: one ``fit_batch`` of the M models (a KANBatch / MLPBatch), as M trials per its time.

Each (model, M) runs both ways once per round, ``--rounds`` rounds interleaved, after an untimed
warm-up (kernels, torch's imports); the table gives the medians. Short trials by default
(``--steps 3`` per stage on ``--schedule 3,5``: 6 LBFGS steps a trial) so the script takes minutes;
``--steps 15 --schedule 3,5,10`` is the quick suite's own budget. Then the paper suite's estimate
(:func:`kanlab.bench.estimate.estimate`) batched and unbatched, from throughput measured now
(``--no-estimate`` skips it: the paper suite's expansion alone takes ~10 s).

    PYTHONPATH=src python benchmarks/sweep_speed.py --out /tmp/sweep_speed.json
    PYTHONPATH=src python benchmarks/sweep_speed.py --models 1,8 --rounds 1 --no-estimate  # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import warnings
from pathlib import Path

import torch

from kanlab.bench.prepare import prepare
from kanlab.bench.sweep import match_mlp
from kanlab.bench.tasks import get_task, load
from kanlab.config import FitConfig, KANConfig, MLPConfig
from kanlab.model_batch import KANBatch, MLPBatch
from kanlab.models import build, count_params
from kanlab.train import fit
from kanlab.train.batch_loop import fit_batch

SHAPES = {(2, 5, 1): "paper/exp_sin_sq", (4, 4, 2, 1): "paper/exp_sin_4d"}


def configs(widths: tuple[int, ...], schedule: tuple[int, ...], mlp: bool) -> list:
    kan = KANConfig(widths=widths, grid_size=schedule[0])
    out = [kan]
    if mlp:  # 2 hidden layers, parameter-matched to the KAN at its final grid (as the suites do)
        target = count_params(kan.replace(grid_size=schedule[-1]))
        out.append(MLPConfig(widths=match_mlp(target, widths[0], widths[-1], 2)))
    return out


def fit_config(cfg: KANConfig | MLPConfig, steps: int, schedule: tuple[int, ...]) -> FitConfig:
    base = FitConfig(optimizer="lbfgs", lr=1.0, progress=False)  # grid updates: every 10 steps
    if isinstance(cfg, KANConfig):
        return base.replace(steps=steps, grid_schedule=schedule, log_every=steps)
    total = steps * len(schedule)  # an MLP gets the KAN's total steps in one stage
    return base.replace(steps=total, log_every=total)


def run_unbatched(cfg, data, fcfg: FitConfig, n: int) -> float:
    """Seconds of ``n`` single fits (seeds 0..n-1) one after the other."""
    start = time.perf_counter()
    for seed in range(n):
        fit(build(cfg.replace(seed=seed)), data, fcfg.replace(seed=seed))
    return time.perf_counter() - start


def run_batched(cfg, data, fcfg: FitConfig, m: int) -> float:
    """Seconds of one fit_batch of ``m`` models (seeds 0..m-1)."""
    cls = KANBatch if isinstance(cfg, KANConfig) else MLPBatch
    start = time.perf_counter()
    fit_batch(cls.from_config(cfg, seeds=list(range(m))), data, fcfg)
    return time.perf_counter() - start


def label(cfg: KANConfig | MLPConfig) -> str:
    fam = "KAN" if isinstance(cfg, KANConfig) else "MLP"
    return f"{fam} [{','.join(map(str, cfg.widths))}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="1,8,64,256", help="values of M, comma-separated")
    ap.add_argument("--steps", type=int, default=3, help="LBFGS steps per grid stage")
    ap.add_argument("--schedule", default="3,5", help="the KANs' grid schedule")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians)")
    ap.add_argument("--loop-cap", type=int, default=8, help="at most this many unbatched fits")
    ap.add_argument("--n-train", type=int, default=1000)
    ap.add_argument("--no-mlp", action="store_true", help="KANs only")
    ap.add_argument("--no-estimate", action="store_true", help="skip the paper-suite estimate")
    ap.add_argument("--workers", type=int, default=2, help="workers of the paper-suite estimate")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/sweep_speed.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    models = [int(v) for v in args.models.split(",")]
    schedule = tuple(int(v) for v in args.schedule.split(","))

    cases = []  # (cfg, data, fit config)
    for widths, task_name in SHAPES.items():
        raw = load(get_task(task_name), n_train=args.n_train, n_test=1000, seed=0)
        for cfg in configs(widths, schedule, not args.no_mlp):
            fam = "kan" if isinstance(cfg, KANConfig) else "mlp"
            data = prepare(raw, fam).data
            cases.append((cfg, data, fit_config(cfg, args.steps, schedule)))
    for cfg, data, fcfg in cases:  # warm-up: kernels, torch's compiler import, first calls
        run_unbatched(cfg, data, fcfg.replace(steps=1), 1)
        run_batched(cfg, data, fcfg.replace(steps=1), 2)

    times: dict[tuple[str, int], dict[str, list[float]]] = {}
    for r in range(args.rounds):
        for cfg, data, fcfg in cases:
            for m in models:
                n = min(m, args.loop_cap)
                t_loop = run_unbatched(cfg, data, fcfg, n)
                t_batch = run_batched(cfg, data, fcfg, m)
                rec = times.setdefault((label(cfg), m), {"unbatched_s": [], "batched_s": []})
                rec["unbatched_s"].append(t_loop / n)  # seconds per trial
                rec["batched_s"].append(t_batch / m)
                print(f"  round {r + 1}: {label(cfg)} M={m}: {t_loop / n:.3f} s/trial unbatched, "
                      f"{t_batch / m:.4f} s/trial batched", flush=True)  # fmt: skip

    steps_per_trial = args.steps * len(schedule)
    print(f"\ntrials per minute, {steps_per_trial} LBFGS steps a trial (grid schedule "
          f"{schedule}, {args.steps} per stage), {args.n_train} points, 1 thread, median of "
          f"{args.rounds} round(s); load average {os.getloadavg()[0]:.1f}\n")  # fmt: skip
    print("| model | M | unbatched (loop of fit) | batched (fit_batch) | batched / unbatched |")
    print("|---|---|---|---|---|")
    rows = []
    for (name, m), rec in times.items():
        loop, batch = statistics.median(rec["unbatched_s"]), statistics.median(rec["batched_s"])
        row = {"model": name, "M": m, "unbatched_trials_per_min": 60 / loop,
               "batched_trials_per_min": 60 / batch, "speedup": loop / batch,
               "unbatched_fits_timed": min(m, args.loop_cap), **rec}  # fmt: skip
        rows.append(row)
        print(f"| {name} | {m} | {60 / loop:,.0f} | {60 / batch:,.0f} | {loop / batch:.2f}x |")

    settings = {**vars(args), "out": str(args.out), "steps_per_trial": steps_per_trial}
    result: dict = {
        "settings": {**settings, "threads": 1, "loadavg": os.getloadavg()},
        "rows": rows,
    }
    if not args.no_estimate:
        result["paper_estimate"] = paper_estimate(args.workers)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"\nJSON: {args.out}")


def paper_estimate(workers: int) -> dict:
    """The paper suite's estimate, batched and unbatched, as ``kanlab compare`` prints it."""
    from kanlab.bench.estimate import estimate
    from kanlab.bench.sweep import expand, load_sweep

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MLP sizes that cannot be matched (skipped, as in a run)
        trials = expand(load_sweep("paper"))
    out = {}
    print("\npaper suite:")
    for batched in (True, False):
        est = estimate(trials, workers=workers, batched=batched)
        print(" ", est.line())
        out["batched" if batched else "unbatched"] = {
            "trials": est.trials, "groups": est.groups, "core_hours": est.core_seconds / 3600,
            "wall_hours": est.wall_seconds / 3600, "workers": workers,
            "calibration_s": est.calibration_seconds, "method": est.method,
        }  # fmt: skip
    ratio = out["unbatched"]["core_hours"] / out["batched"]["core_hours"]
    print(f"  unbatched / batched: {ratio:.1f}x")
    out["unbatched_over_batched"] = ratio
    return out


if __name__ == "__main__":
    main()
