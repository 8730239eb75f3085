"""The KAN papers' 4-variable toy in ``kanlab paper scaling``: exp((sin(pi(x1^2+x2^2)) +
sin(pi(x3^2+x4^2)))/2) on [-1,1]^4 (``paper/exp_sin_4d``), KAN [4,2,1,1] over a grid schedule beside
MLPs [4,w,w,1] and [4,w,w,w,1] (issue 21). Its rows join the scaling report's table.

The recipe is ``benchmarks/exp_sin_4d.py``'s as trials of the results store (so a re-run resumes):
float64, 1000 train / 1000 test points, LBFGS, uniform grid updates (``grid_eps=1``), the best of
8 starts of 20 steps by *training* loss (``FitConfig.restarts=7``: about half the initialisations
never split the inputs into the pairs (x1, x2), (x3, x4)), then 100 steps at each grid of 3, 5, 10,
20, 50. One difference: the benchmark widens the grid by 10% of its range at G = 50 only (an
extension without data, no grid updates in that stage), which a trial's :class:`FitConfig` cannot
say; here every grid update and extension places the grid 1% of the data's range beyond it
(``grid_margin``, as the [2,1,1] protocol, :mod:`kanlab.bench.paper.scaling`), against the same
failure: test points just outside the training range of a hidden value. The benchmark's table in
the README is measured with its own recipe. The MLPs get the KAN's total step budget.

Goal (issue 21): test RMSE <= 1e-4 at G >= 50 on >= 2 of 3 seeds, and the KAN below the MLPs'
Pareto front at every size (its median test RMSE below the best MLP run with at most its
parameters).

Measured (full size, KAN trials, seeds 0-2, 1000 train / 1000 test points): test RMSE at G = 50
3.32e-7, 4.33e-7, 3.54e-7 (G = 20: 9.9e-6 to 1.03e-5), every seed under the goal and ~30x below the
benchmark's 10%-at-G=50 recipe (5.6e-6 to 1.4e-5); the 1% was fixed before the run, not chosen on
this toy's test error.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from kanlab.bench.paper.common import fmt
from kanlab.bench.paper.scaling import stage_errors

__all__ = ["GOAL", "SHAPE", "TASK", "summarize_4d", "trials_4d"]

TASK = "paper/exp_sin_4d"
SHAPE = (4, 2, 1, 1)
GOAL = 1e-4  # test RMSE at G >= 50 on >= 2 of 3 seeds
GRID_MARGIN = 0.01  # as the [2,1,1] protocol's
# quick -> (grids, steps per grid, restarts, restart steps, MLP widths)
SIZES = {
    False: ((3, 5, 10, 20, 50), 100, 7, 20, (4, 8, 16)),
    True: ((3, 5, 10), 20, 4, 10, (4, 8)),
}


def trials_4d(quick: bool, seeds: int, steps: int | None = None) -> list[Any]:
    """The KAN and MLP trials of each seed (``steps``: per grid, replacing the size's own)."""
    from kanlab.bench.spec import DataSpec
    from kanlab.bench.sweep import Trial
    from kanlab.bench.tasks import get_task
    from kanlab.config import FitConfig, KANConfig, MLPConfig

    grids, own_steps, restarts, restart_steps, widths = SIZES[quick]
    steps = own_steps if steps is None else steps
    task = get_task(TASK)
    data = DataSpec(n_train=1000, n_test=1000, seed=0)
    kan_fit = FitConfig(optimizer="lbfgs", steps=steps, grid_schedule=grids, log_every=steps,
                        grid_eps=1.0, grid_margin=GRID_MARGIN, progress=False,
                        restarts=restarts, restart_steps=restart_steps)  # fmt: skip
    total = steps * len(grids) + (restarts + 1) * restart_steps
    mlp_fit = FitConfig(optimizer="lbfgs", steps=total, log_every=total, progress=False)
    out = []
    for seed in range(seeds):
        kan = KANConfig(widths=SHAPE, grid_size=grids[0], dtype="float64")
        out.append(Trial(task=task, model=kan, fit=kan_fit, seed=seed, data=data, group="kan4d"))
        for depth in (2, 3):
            for w in widths:
                mlp = MLPConfig(widths=(4, *(w,) * depth, 1), dtype="float64")
                out.append(Trial(task=task, model=mlp, fit=mlp_fit, seed=seed, data=data,
                                 group="kan4d"))  # fmt: skip
    return out


def summarize_4d(
    rows: Sequence[dict[str, Any]],
) -> tuple[list[tuple[str, ...]], list[str], list[tuple[int, float]], list[tuple[int, float]]]:
    """The 4-D toy's finished store ``rows`` -> (table rows in the scaling table's columns, notes,
    KAN (params, median test RMSE) per grid, MLP (params, mean test RMSE) per size)."""
    from kanlab.config import KANConfig
    from kanlab.models import count_params

    rows = sorted((r for r in rows if r["task"] == TASK and r["status"] == "ok"),
                  key=lambda r: r["seed"])  # fmt: skip
    per_grid = stage_errors(rows)
    mlp: dict[tuple[int, int], list[float]] = {}  # (params, depth) -> per seed
    for r in rows:
        if r["family"] == "mlp":
            depth = len(r["config"]["model"]["widths"]) - 2
            mlp.setdefault((int(r["params"]), depth), []).append(float(r["test_metric"]))
    grids = sorted(per_grid)
    kan_pts = [(count_params(KANConfig(widths=SHAPE, grid_size=g)), statistics.median(per_grid[g]))
               for g in grids]  # fmt: skip
    table: list[tuple[str, ...]] = []
    notes: list[str] = []
    best_mlp = {n: min(v) for (n, _), v in mlp.items()}  # the best single MLP run of each size
    below = []
    for g, (n, med) in zip(grids, kan_pts, strict=True):
        errs = per_grid[g]
        front = min((e for m, e in best_mlp.items() if m <= n), default=None)
        below.append(front is not None and med < front)
        table.append(("KAN [4,2,1,1] (4-D toy)", f"G={g}", str(n), fmt(statistics.fmean(errs)),
                      "-", "-", fmt(med), " / ".join(fmt(e) for e in errs)))  # fmt: skip
    for (n, depth), v in sorted(mlp.items()):
        name = "MLP [4,w,w,1] (4-D toy)" if depth == 2 else "MLP [4,w,w,w,1] (4-D toy)"
        table.append((name, "-", str(n), fmt(statistics.fmean(v)), "-", "-", "-",
                      " / ".join(fmt(e) for e in v)))  # fmt: skip
    mlp_pts = sorted((n, statistics.fmean(v)) for (n, _), v in mlp.items())
    if grids:
        last = per_grid[grids[-1]]
        hits = sum(e <= GOAL for e in last)
        if grids[-1] >= 50:
            verdict = "met" if hits >= 2 else "not met"
            notes.append(f"4-D toy goal (test RMSE <= {GOAL:g} at G = {grids[-1]} on >= 2 seeds): "
                         f"{verdict} ({hits} of {len(last)} seeds)")  # fmt: skip
        else:
            notes.append(f"4-D toy: this size stops at G = {grids[-1]} (the goal is at G >= 50); "
                         f"{hits} of {len(last)} seeds at or below {GOAL:g}")  # fmt: skip
        if best_mlp:
            every = "yes" if all(below) else "no"
            where = ", ".join(f"G={g}: {'below' if b else 'not below'}"
                              for g, b in zip(grids, below, strict=True))  # fmt: skip
            notes.append(f"4-D toy KAN median below the MLP Pareto front (best MLP run with at "
                         f"most its parameters) at every grid: {every} ({where})")  # fmt: skip
    return table, notes, kan_pts, mlp_pts
