"""The Poisson problem of the KAN paper (section 3.4), solved as a PINN by KANs and MLPs.

``u_xx + u_yy = f`` on ``[-1, 1]^2`` with ``u = 0`` on the boundary, where
``f = -pi^2 (1 + 4 y^2) sin(pi x) sin(pi y^2) + 2 pi sin(pi x) cos(pi y^2)``; the exact solution is
``u = sin(pi x) sin(pi y^2)``. The loss is ``alpha * mean |u_xx + u_yy - f|^2`` over ``n_i`` random
interior points plus ``mean u^2`` over ``n_b`` boundary points (``alpha = 0.01``). The Laplacian is
taken with ``torch.autograd.grad(..., create_graph=True)`` twice through the model, so a KAN's
training differentiates its spline kernels three times (kanlab's fast kernels carry those formulas).

Errors, on a fixed ``m x m`` grid of the square: ``L2^2 = mean (u - u*)^2`` and
``H1^2 = L2^2 + mean |grad u - grad u*|^2``, logged during training with the training time spent so
far (the kernels are compiled and warmed before the clock starts). Each model trained is one unit
in the results store.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from kanlab.bench.paper.common import (
    PaperTable,
    UnitCounter,
    cached_unit,
    fmt,
    machine,
    new_figure,
    open_store,
    write_paper_report,
)
from kanlab.bench.store import ResultStore

__all__ = ["exact_solution", "laplacian", "run_pde", "source"]

PI = math.pi


def exact_solution(x: Tensor) -> Tensor:
    """``(n, 2) -> (n,)``: u* = sin(pi x) sin(pi y^2)."""
    return torch.sin(PI * x[:, 0]) * torch.sin(PI * x[:, 1] ** 2)


def exact_gradient(x: Tensor) -> Tensor:
    """``(n, 2) -> (n, 2)``: grad u*."""
    a, b = x[:, 0], x[:, 1]
    ux = PI * torch.cos(PI * a) * torch.sin(PI * b**2)
    uy = torch.sin(PI * a) * 2 * PI * b * torch.cos(PI * b**2)
    return torch.stack([ux, uy], dim=1)


def source(x: Tensor) -> Tensor:
    """``(n, 2) -> (n,)``: f = Laplacian of u*."""
    a, b = x[:, 0], x[:, 1]
    return -(PI**2) * (1 + 4 * b**2) * torch.sin(PI * a) * torch.sin(
        PI * b**2
    ) + 2 * PI * torch.sin(PI * a) * torch.cos(PI * b**2)


def laplacian(model: torch.nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """``(n, 2) -> (u (n,), u_xx + u_yy (n,))``, differentiable w.r.t. the model's parameters."""
    x = x.detach().requires_grad_(True)
    u = model(x)[:, 0]
    (g,) = torch.autograd.grad(u.sum(), x, create_graph=True)  # (n, 2)
    (gx,) = torch.autograd.grad(g[:, 0].sum(), x, create_graph=True)
    (gy,) = torch.autograd.grad(g[:, 1].sum(), x, create_graph=True)
    return u, gx[:, 0] + gy[:, 1]


def _points(n_i: int, n_b: int, seed: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    interior = torch.rand(n_i, 2, generator=g) * 2 - 1
    t = torch.rand(n_b, generator=g) * 2 - 1
    side = torch.arange(n_b) % 4
    ones = torch.ones(n_b)
    bx = torch.where(side == 0, -ones, torch.where(side == 1, ones, t))
    by = torch.where(side == 2, -ones, torch.where(side == 3, ones, t))
    return interior, torch.stack([bx, by], dim=1)


def _errors(model: torch.nn.Module, test: Tensor) -> tuple[float, float]:
    x = test.detach().requires_grad_(True)
    u = model(x)[:, 0]
    (g,) = torch.autograd.grad(u.sum(), x)
    l2 = float(torch.mean((u.detach() - exact_solution(test)) ** 2))
    h1 = l2 + float(torch.mean(torch.sum((g - exact_gradient(test)) ** 2, dim=1)))
    return l2, h1


def _build(kind: str, widths: list[int], grid: int, seed: int) -> torch.nn.Module:
    from kanlab.models import KAN, MLP

    if kind == "kan":
        return KAN(widths, grid_size=grid, seed=seed)
    return MLP(widths, activation="tanh", seed=seed)


def _train_unit(s: dict[str, Any]) -> dict[str, Any]:
    from kanlab.bench.runner import _one_torch_thread
    from kanlab.models import count_params

    with _one_torch_thread():
        torch.manual_seed(s["seed"])
        model = _build(s["kind"], s["widths"], s["grid"], s["seed"])
        interior, boundary = _points(s["n_i"], s["n_b"], s["seed"])
        side = torch.linspace(-1, 1, s["m"])
        test = torch.cartesian_prod(side, side)
        f = source(interior)
        laplacian(model, interior[:8])[1].sum().backward()  # warm: compile the kernels
        model.zero_grad()
        opt = torch.optim.LBFGS(model.parameters(), lr=1.0, history_size=10,
                                line_search_fn="strong_wolfe")  # fmt: skip

        def closure() -> Tensor:
            opt.zero_grad()
            _, lap = laplacian(model, interior)
            loss = s["alpha"] * torch.mean((lap - f) ** 2) + torch.mean(model(boundary) ** 2)
            loss.backward()
            return loss

        curve = [(0, 0.0, *_errors(model, test))]
        clock = 0.0
        for step in range(1, s["steps"] + 1):
            t0 = time.perf_counter()
            loss = float(opt.step(closure).detach())
            clock += time.perf_counter() - t0
            if not math.isfinite(loss):
                break
            if step % s["log_every"] == 0 or step == s["steps"]:
                curve.append((step, clock, *_errors(model, test)))
    return {"params": count_params(model), "curve": curve, "train_time": clock,
            "final_loss": loss}  # fmt: skip


def _models(quick: bool) -> list[tuple[str, list[int], int]]:
    if quick:
        return [("kan", [2, 5, 1], 5), ("kan", [2, 10, 1], 5), ("mlp", [2, 20, 20, 20, 1], 0),
                ("mlp", [2, 50, 50, 50, 1], 0)]  # fmt: skip
    return [("kan", [2, 10, 1], g) for g in (5, 10, 20)] + [
        ("mlp", [2, w, w, w, 1], 0) for w in (10, 30, 100)
    ]


def time_to(curve: list, target: float) -> float | None:
    """Training seconds until the L2^2 error first reached ``target`` (None: never)."""
    return next((t for _, t, l2, _ in curve if l2 <= target), None)


def run_pde(
    *,
    quick: bool = True,
    store: ResultStore | str | Path | None = None,
    out: Path = Path("kanlab-runs/paper/pde"),
    seeds: int = 1,
    steps: int | None = None,
    n_interior: int | None = None,
    n_boundary: int | None = None,
    progress: bool = False,
) -> PaperTable:
    """Train each model of the PDE experiment (quick: KAN [2,5,1], [2,10,1] G=5 and MLPs of depth
    3-4 and width 20, 50; full: KAN [2,10,1] G=5, 10, 20 and MLPs of width 10, 30, 100, depth 4)
    with LBFGS; write ``out/report.md``/``.html`` and ``out/pde.png``; -> its :class:`PaperTable`.

    ``steps`` (default 30 quick, 500 full), ``n_interior``/``n_boundary`` (default 400/80 quick,
    the paper's 10000/800 full); ``seeds``: 0..seeds-1 (the table shows seed 0's curve, the
    best final error over seeds)."""
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    steps = steps if steps is not None else (30 if quick else 500)
    n_i = n_interior if n_interior is not None else (400 if quick else 10000)
    n_b = n_boundary if n_boundary is not None else (80 if quick else 800)
    for name, v, low in (("steps", steps, 1), ("n_interior", n_i, 1), ("n_boundary", n_b, 4)):
        if v < low:
            raise ValueError(f"{name} must be >= {low}, got {v}")
    start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    db, owned = open_store(store, out)
    counter = UnitCounter()
    results = []
    try:
        for kind, widths, grid in _models(quick):
            runs = []
            for seed in range(seeds):
                s = {"kind": kind, "widths": widths, "grid": grid, "seed": seed, "steps": steps,
                     "n_i": n_i, "n_b": n_b, "alpha": 0.01, "m": 50 if quick else 100,
                     "log_every": max(1, steps // 30), "optimizer": "lbfgs",
                     "dtype": str(torch.get_default_dtype())}  # fmt: skip
                if progress:
                    print(f"pde: {kind} {widths} G={grid} seed {seed}", file=sys.stderr, flush=True)
                runs.append(cached_unit(db, "pde", s, lambda s=s: _train_unit(s), counter=counter,
                                        label=f"{kind}{widths}", family=kind, seed=seed))  # fmt: skip
            results.append((kind, widths, grid, runs))
    finally:
        if owned:
            db.close()
    return _table(results, quick, steps, n_i, n_b, seeds, start, counter, out)


def _table(
    results: list,
    quick: bool,
    steps: int,
    n_i: int,
    n_b: int,
    seeds: int,
    start: float,
    counter: UnitCounter,
    out: Path,
) -> PaperTable:
    rows, best = [], {}
    for kind, widths, grid, runs in results:
        finals = [r["curve"][-1] for r in runs]
        l2 = min(c[2] for c in finals)
        h1 = min(c[3] for c in finals)
        best.setdefault(kind, []).append(l2)
        name = f"KAN {widths} G={grid}" if kind == "kan" else f"MLP {widths} tanh"
        paper = ("~1e-7 ([2,10,1], ~10^2 params)" if kind == "kan"
                 else "~1e-5 (width 100, depth 4, ~10^4 params)")  # fmt: skip
        c0 = runs[0]["curve"]
        rows.append((name, str(runs[0]["params"]), fmt(l2), fmt(h1), paper,
                     fmt(runs[0]["train_time"], 3), fmt(time_to(c0, 1e-7)),
                     fmt(time_to(c0, 1e-5))))  # fmt: skip
    notes = []
    if best.get("kan"):
        k = min(best["kan"])
        notes.append(f"best KAN L2^2 {fmt(k)}: goal (<= 1e-7) {'met' if k <= 1e-7 else 'not met'}")
    if best.get("kan") and best.get("mlp"):
        m_best = min(best["mlp"])
        kan_runs = [r for kind, *_, runs in results if kind == "kan" for r in runs]
        mlp_runs = [r for kind, *_, runs in results if kind == "mlp" for r in runs]
        t_kan = min((t for r in kan_runs if (t := time_to(r["curve"], m_best)) is not None),
                    default=None)  # fmt: skip
        t_mlp = min(time_to(r["curve"], m_best) or math.inf for r in mlp_runs)
        notes.append(
            f"best MLP L2^2 {fmt(m_best)}, reached in {fmt(t_mlp)} s of training; the KANs reach "
            f"it in {fmt(t_kan) if t_kan is not None else 'never (not within these steps)'} s"
        )
    notes.append("MLPs use tanh (smooth second derivatives); KANs silu base, no grid updates.")
    fig = _plot(results, out / "pde.png")
    table = PaperTable(
        experiment="pde",
        title="KAN paper section 3.4: Poisson equation (PINN)",
        headers=("model", "params", "L2^2 error", "H1^2 error", "paper (L2^2)",
                 "train time (s)", "time to L2^2 <= 1e-7 (s)", "time to L2^2 <= 1e-5 (s)"),
        rows=tuple(rows),
        settings={"quick": quick, "steps": steps, "optimizer": "lbfgs", "n_i": n_i, "n_b": n_b,
                  "alpha": 0.01, "seeds": seeds},
        wall_time=time.perf_counter() - start, machine=machine(), notes=tuple(notes),
        units_run=counter.run, units_reused=counter.reused, figures=(fig,),
    )  # fmt: skip
    return write_paper_report(table, out, intro=__doc__.split("\n\n")[1])


def _plot(results: list, path: Path) -> Path:
    fig = new_figure(10.0, 3.6)
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for kind, widths, grid, runs in results:
        curve = runs[0]["curve"]
        label = f"KAN {widths} G={grid}" if kind == "kan" else f"MLP {widths}"
        style = "-" if kind == "kan" else "--"
        ax1.plot([c[0] for c in curve], [max(c[2], 1e-14) for c in curve], style, label=label)
        ax2.scatter([runs[0]["params"]], [max(curve[-1][2], 1e-14)],
                    color="tab:blue" if kind == "kan" else "tab:orange")  # fmt: skip
    ax1.set(xlabel="LBFGS step", ylabel="L2^2 error", yscale="log")
    ax2.set(xlabel="parameters", ylabel="final L2^2 error", xscale="log", yscale="log")
    ax1.legend(fontsize=7)
    for ax in (ax1, ax2):
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path
