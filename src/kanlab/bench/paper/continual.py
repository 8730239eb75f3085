"""Continual learning (KAN paper section 3.5): five Gaussian peaks shown one at a time.

The target is ``y(x) = sum_c exp(-300 (x - c)^2)`` with peaks at ``c = -0.8, -0.4, 0, 0.4, 0.8``;
phase ``p`` trains only on inputs in ``[c_p - 0.2, c_p + 0.2]`` (evenly spaced), starting from the
model left by phase ``p - 1``. After every phase the RMSE against the target is measured on each
peak's interval (a fixed dense set of points). *Forgetting* is the largest increase of an earlier
peak's error after any later phase over its error right after its own phase: 0 means nothing
learnt was lost (negative: a later phase even improved it).

Models: the paper's KAN [1,1] with G = 200 and zero base (only the spline coefficients train, as in
the official tutorial: the spline scale is one global factor that every phase would move), and an MLP
[1, w, w, 1] with the KAN's parameter count. The 2-D variant (pykan issue #227): inputs (x1, x2),
x2 uniform on [-1, 1] in every phase, the same peaks along x1; KANs [2,1] and [2,5,1] (G = 200, zero
base) and an MLP matched to the [2,1] KAN. There an input's edge function sees the whole range of x2
in every phase, so locality alone does not protect it: measured, not assumed.

The models train on kanlab's reference kernels (pure PyTorch, the same functions as the compiled
ones): with 100 points a phase, compiling the Numba kernels would cost far more than training.
Each model trained through the five phases is one unit in the results store
(:func:`~kanlab.bench.paper.common.cached_unit`).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from kanlab.bench.paper.common import (
    PaperTable,
    UnitCounter,
    cached_unit,
    fmt,
    kernel_backend,
    machine,
    new_figure,
    open_store,
    write_paper_report,
)
from kanlab.bench.store import ResultStore

__all__ = ["CENTERS", "GOAL", "forgetting", "peak_target", "run_continual"]

CENTERS = (-0.8, -0.4, 0.0, 0.4, 0.8)
HALF_WIDTH = 0.2  # each phase's inputs: [c - 0.2, c + 0.2]
SHARPNESS = 300.0
GOAL = 1e-3  # the goal for the KAN's forgetting
N_EVAL = 200  # points per peak interval where errors are measured


def peak_target(x1: Tensor) -> Tensor:
    """``(n,) -> (n,)``: the sum of the five peaks."""
    return sum(torch.exp(-SHARPNESS * (x1 - c) ** 2) for c in CENTERS)


def _inputs(peak: int, n: int, dim: int, seed: int) -> Tensor:
    """``(n, dim)``: x1 evenly over the peak's interval, x2 (if dim 2) uniform on [-1, 1]."""
    c = CENTERS[peak]
    x1 = torch.linspace(c - HALF_WIDTH, c + HALF_WIDTH, n, dtype=torch.get_default_dtype())
    if dim == 1:
        return x1[:, None]
    g = torch.Generator().manual_seed(1000 * seed + peak)
    x2 = torch.rand(n, generator=g, dtype=torch.get_default_dtype()) * 2 - 1
    return torch.stack([x1, x2], dim=1)


def forgetting(errors: Sequence[Sequence[float]]) -> float:
    """``errors[p][i]``: error on peak i after phase p -> max over i < p of
    ``errors[p][i] - errors[i][i]`` (``-inf`` with fewer than two phases)."""
    n = len(errors)
    return max((errors[p][i] - errors[i][i] for p in range(n) for i in range(p)), default=-math.inf)


def _model(kind: str, widths: tuple[int, ...], seed: int) -> torch.nn.Module:
    from kanlab.models import KAN, MLP

    if kind == "kan":
        model = KAN(list(widths), grid_size=200, base_activation="zero", seed=seed)
        for layer in model.layers:  # the coefficients only (the official tutorial's setting)
            layer.scale_base.requires_grad_(False)
            layer.scale_spline.requires_grad_(False)
    else:
        model = MLP(list(widths), activation="silu", seed=seed)
    return model


def _train_unit(kind: str, widths: tuple[int, ...], seed: int, steps: int, n: int) -> dict:
    """Train one model through the five phases; errors[p][i] and 1-D prediction curves."""
    from kanlab.bench.runner import _one_torch_thread  # tiny problems: threads only contend

    with kernel_backend("reference"), _one_torch_thread():
        return _train_phases(kind, widths, seed, steps, n)


def _train_phases(kind: str, widths: tuple[int, ...], seed: int, steps: int, n: int) -> dict:
    from kanlab.models import count_params

    torch.manual_seed(seed)
    model = _model(kind, widths, seed)
    dim = widths[0]
    evals = [_inputs(i, N_EVAL, dim, seed + 7) for i in range(len(CENTERS))]
    plot_x = torch.linspace(-1, 1, 201, dtype=torch.get_default_dtype())
    plot_in = plot_x[:, None] if dim == 1 else torch.stack([plot_x, torch.zeros_like(plot_x)], 1)
    errors, curves = [], []
    start = time.perf_counter()
    for phase in range(len(CENTERS)):
        x = _inputs(phase, n, dim, seed)
        y = peak_target(x[:, 0])[:, None]
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.LBFGS(params, lr=1.0, history_size=10, line_search_fn="strong_wolfe")

        def closure(x: Tensor = x, y: Tensor = y, opt: Any = opt) -> Tensor:
            opt.zero_grad()
            loss = torch.mean((model(x) - y) ** 2)
            loss.backward()
            return loss

        for _ in range(steps):
            opt.step(closure)
        with torch.no_grad():
            errors.append([
                float(torch.sqrt(torch.mean((model(e)[:, 0] - peak_target(e[:, 0])) ** 2)))
                for e in evals
            ])  # fmt: skip
            curves.append([round(float(v), 6) for v in model(plot_in)[:, 0]])
    return {"errors": errors, "forgetting": forgetting(errors), "params": count_params(model),
            "curves": curves, "train_time": time.perf_counter() - start}  # fmt: skip


def _models(dim_models: str) -> list[tuple[str, str, tuple[int, ...]]]:
    from kanlab.bench.sweep import match_mlp
    from kanlab.config import KANConfig
    from kanlab.models import count_params

    out = []
    for dim, shapes in ((1, [(1, 1)]), (2, [(2, 1), (2, 5, 1)])):
        if dim_models == "1d" and dim == 2:
            continue
        for widths in shapes:
            out.append((f"{dim}-D", "kan", widths))
        # coefficients only train: the scales are not counted
        kan = shapes[0]
        n = count_params(KANConfig(widths=kan, grid_size=200)) - 2 * kan[0] * kan[1]
        out.append((f"{dim}-D", "mlp", match_mlp(n, dim, 1, 2, tolerance=0.2)))
    return out


def run_continual(
    *,
    quick: bool = True,
    store: ResultStore | str | Path | None = None,
    out: Path = Path("kanlab-runs/paper/continual"),
    seeds: int = 1,
    steps: int | None = None,
    n_per_phase: int = 100,
    variants: str = "both",
    progress: bool = False,
) -> PaperTable:
    """Run the continual-learning experiment; write ``out/report.md``/``.html`` and
    ``out/continual.png``; -> its :class:`PaperTable`.

    ``steps``: LBFGS steps per phase (default 20 quick, 100 full); ``seeds``: 0..seeds-1;
    ``variants``: ``"both"`` or ``"1d"`` (the 2-D models left out)."""
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    if variants not in ("both", "1d"):
        raise ValueError(f"variants must be 'both' or '1d', got {variants!r}")
    if n_per_phase < 4:
        raise ValueError(f"n_per_phase must be >= 4, got {n_per_phase}")
    steps = steps if steps is not None else (20 if quick else 100)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    db, owned = open_store(store, out)
    counter = UnitCounter()
    results: list[tuple[str, str, tuple[int, ...], list[dict]]] = []
    try:
        for variant, kind, widths in _models(variants):
            per_seed = []
            for seed in range(seeds):
                settings = {"kind": kind, "widths": list(widths), "seed": seed, "steps": steps,
                            "n_per_phase": n_per_phase, "centers": list(CENTERS),
                            "sharpness": SHARPNESS, "grid": 200 if kind == "kan" else None}  # fmt: skip
                if progress:
                    print(
                        f"continual: {kind} {list(widths)} seed {seed}", file=sys.stderr, flush=True
                    )
                per_seed.append(cached_unit(
                    db, "continual", settings,
                    lambda k=kind, w=widths, s=seed: _train_unit(k, w, s, steps, n_per_phase),
                    counter=counter, label=f"{kind}{list(widths)}", family=kind, seed=seed,
                ))  # fmt: skip
            results.append((variant, kind, widths, per_seed))
    finally:
        if owned:
            db.close()
    rows, notes, details = [], [], []
    for variant, kind, widths, per_seed in results:
        forget = max(r["forgetting"] for r in per_seed)
        own = [r["errors"][i][i] for r in per_seed for i in range(len(CENTERS))]
        goal = ("met" if forget <= GOAL else "not met") if kind == "kan" else "-"
        if variant == "2-D":
            paper = "not in the paper (pykan issue #227: users report forgetting)"
        else:
            paper = ("no forgetting (Fig. 3.4, qualitative)" if kind == "kan"
                     else "forgets (Fig. 3.4, qualitative)")  # fmt: skip
        name = f"{'KAN' if kind == 'kan' else 'MLP'} {list(widths)}"
        rows.append((variant, name, str(per_seed[0]["params"]), fmt(max(own)), fmt(forget),
                     paper, goal))  # fmt: skip
        matrix = per_seed[0]["errors"]
        lines = [f"{variant} {name}, seed 0: RMSE on peak i (columns) after phase p (rows)", "",
                 "| phase | " + " | ".join(f"peak {i + 1}" for i in range(len(CENTERS))) + " |",
                 "|---" * (len(CENTERS) + 1) + "|"]  # fmt: skip
        lines += [f"| {p + 1} | " + " | ".join(fmt(e) for e in row) + " |"
                  for p, row in enumerate(matrix)]  # fmt: skip
        details.append("\n".join(lines))
    for variant, name, _, _, forget, _, goal in rows:
        if goal != "-":
            notes.append(f"{variant} {name}: forgetting {forget} -> goal (<= {GOAL:g}) {goal}")
    figure = _plot(results, out / "continual.png")
    table = PaperTable(
        experiment="continual",
        title="KAN paper section 3.5: continual learning on five Gaussian peaks",
        headers=("variant", "model", "params (trained)", "worst error on its own peak",
                 "forgetting: max error increase on earlier peaks", "paper", "goal <= 1e-3"),
        rows=tuple(rows),
        settings={"quick": quick, "steps_per_phase": steps, "n_per_phase": n_per_phase,
                  "seeds": seeds, "optimizer": "lbfgs", "variants": variants},
        wall_time=time.perf_counter() - start, machine=machine(), notes=tuple(notes),
        units_run=counter.run, units_reused=counter.reused, figures=(figure,),
    )  # fmt: skip
    return write_paper_report(table, out, intro=__doc__.split("\n\n")[1], details=details)


def _plot(results: list, path: Path) -> Path:
    fig = new_figure(10.0, 3.6)
    one_d = [(kind, widths, r[0]) for v, kind, widths, r in results if v == "1-D"]
    x = [i / 100 - 1 for i in range(201)]
    true = peak_target(torch.tensor(x, dtype=torch.get_default_dtype())).tolist()
    for row, (kind, widths, res) in enumerate(one_d):
        for p, curve in enumerate(res["curves"]):
            ax = fig.add_subplot(len(one_d), len(CENTERS), row * len(CENTERS) + p + 1)
            ax.plot(x, true, color="0.7", lw=1)
            ax.plot(x, curve, color="tab:blue" if kind == "kan" else "tab:orange", lw=1)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_ylim(-0.3, 1.3)
            if row == 0:
                ax.set_title(f"after phase {p + 1}", fontsize=8)
            if p == 0:
                ax.set_ylabel(f"{kind.upper()} {list(widths)}", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path
