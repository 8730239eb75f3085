"""Speed of a KAN training step (forward + backward) against dense KAN formulations and MLPs.

    python benchmarks/layer_speed.py [--quick] [--out results.json] [--rounds 9] [--threads 2]

For each shape (A: KAN [64, 64, 64], batch 1024; B: [784, 64, 10], batch 512) and grid size
G in {5, 20, 100, 500} (k = 3, float32), times forward + backward of ``mean(y ** 2)`` for

- ``kanlab/<backend>``: kl.KAN with each available kernel backend forced (reference, numba, ...);
- ``dense-basis``: the efficient-kan formulation, written here: the dense Cox-de Boor basis
  ``(batch, in, G + k)`` then one matmul with the flattened coefficient table;
- ``pykan``: the official package in speed mode, when importable (skipped with a note otherwise);
- ``mlp-width``: an MLP with the KAN's widths;
- ``mlp-params``: an MLP ``[in, H, out]`` with H chosen to match the KAN's parameter count.

Timing: warm-up steps, then interleaved rounds (every implementation in turn in each round: one
untimed step, then the mean of 3 timed steps in a row; one timed step for implementations slower
than 0.2 s), the median over rounds. Memory: bytes of the tensors autograd saves for backward during one forward
(recorded with ``torch.autograd.graph.saved_tensors_hooks``; parameters excluded): the activation
memory a training step holds between forward and backward, which is what grows with batch and G in
the dense formulations. Transient buffers inside a kernel are not counted.

Grid scaling (kanlab's step at the largest G over its step at G=5) is measured separately, the two
models interleaved in the same rounds, since the table's rows for different grids are minutes apart.

Prints a Markdown table and writes JSON (default ``benchmarks/results/layer_speed.json``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import kanlab as kl
from kanlab import kernels

SHAPES = {"A": ([64, 64, 64], 1024), "B": ([784, 64, 10], 512)}
GRIDS = [5, 20, 100, 500]
ORDER = 3
BURST = 3  # timed steps in a row per implementation and round (fast implementations)


# --------------------------------------------------------------------------- dense-basis KAN
class DenseKANLayer(nn.Module):
    """The efficient-kan formulation: dense B-spline basis, then one matmul (written for this file)."""

    def __init__(self, n_in: int, n_out: int, grid_size: int, k: int, gen: torch.Generator):
        super().__init__()
        h = 2.0 / grid_size
        steps = torch.arange(-k, grid_size + k + 1, dtype=torch.float32)
        self.register_buffer("grid", (steps * h - 1.0).expand(n_in, -1).contiguous())
        self.k = k
        self.base_weight = nn.Parameter(torch.randn(n_out, n_in, generator=gen) / math.sqrt(n_in))
        self.spline_weight = nn.Parameter(
            torch.randn(n_out, n_in, grid_size + k, generator=gen) * 0.1
        )
        self.spline_scaler = nn.Parameter(torch.ones(n_out, n_in))

    def basis(self, x: Tensor) -> Tensor:
        g = self.grid  # (in, G+2k+1)
        xe = x.unsqueeze(-1)  # (batch, in, 1)
        b = ((xe >= g[:, :-1]) & (xe < g[:, 1:])).to(x.dtype)  # (batch, in, G+2k)
        for p in range(1, self.k + 1):
            b = (xe - g[:, : -(p + 1)]) / (g[:, p:-1] - g[:, : -(p + 1)]) * b[..., :-1] + (
                g[:, p + 1 :] - xe
            ) / (g[:, p + 1 :] - g[:, 1:-p]) * b[..., 1:]
        return b  # (batch, in, G+k)

    def forward(self, x: Tensor) -> Tensor:
        base = F.linear(F.silu(x), self.base_weight)
        w = (self.spline_weight * self.spline_scaler.unsqueeze(-1)).reshape(
            self.base_weight.shape[0], -1
        )
        return base + F.linear(self.basis(x).reshape(x.shape[0], -1), w)


def dense_kan(widths: list[int], grid_size: int) -> nn.Module:
    gen = torch.Generator().manual_seed(0)
    return nn.Sequential(
        *[DenseKANLayer(a, b, grid_size, ORDER, gen) for a, b in itertools.pairwise(widths)]
    )


def matched_hidden(n_in: int, n_out: int, params: int) -> int:
    """H with params([in, H, out]) = in*H + H + H*out + out closest to ``params``."""
    return max(1, round((params - n_out) / (n_in + n_out + 1)))


# --------------------------------------------------------------------------- measurement
def training_step(model: nn.Module, x: Tensor, backend: str | None) -> Callable[[], None]:
    params = [p for p in model.parameters() if p.requires_grad]

    def step() -> None:
        if backend is not None:
            kernels.set_backend(backend)
        for p in params:
            p.grad = None
        model(x).pow(2).mean().backward()
        if backend is not None:
            kernels.set_backend("auto")

    return step


def saved_bytes(model: nn.Module, x: Tensor, backend: str | None) -> int:
    param_ids = {id(p) for p in model.parameters()}
    total = 0

    def pack(t: Tensor) -> Tensor:
        nonlocal total
        if id(t) not in param_ids:
            total += t.numel() * t.element_size()
        return t

    if backend is not None:
        kernels.set_backend(backend)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = model(x).pow(2).mean()
    kernels.set_backend("auto")
    del y
    return total


def time_interleaved(
    steps: dict[str, Callable[[], None]], rounds: int, warmup: int, clock: Callable[[], float]
) -> dict[str, list[float]]:
    """Each implementation's step time (ms) in every round. Every round runs each implementation
    in turn; a fast one (warm-up step under 0.2 s) runs one untimed step and then the mean of
    :data:`BURST` timed steps, so that its figure is a training loop's steady state (its own tables
    and allocations hot) rather than the first step after another implementation has swept the
    caches (the dense formulations move up to 1.5 GB per step at G=500)."""
    slow: dict[str, bool] = {}
    for name, step in steps.items():
        for _ in range(warmup):
            t0 = time.perf_counter()
            step()
            slow[name] = time.perf_counter() - t0 > 0.2
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            repeats = 1 if slow[name] else BURST
            if not slow[name]:
                step()
            t0 = clock()
            for _ in range(repeats):
                step()
            times[name].append((clock() - t0) / repeats * 1e3)
    return times


def paired_ratio(times: dict[str, list[float]], name: str, base: str) -> tuple[float, float, float]:
    """Median, min and max over rounds of ``name``'s time over ``base``'s in the same round.

    The two are measured seconds apart, so the ratio is not moved by this VM's drift over
    minutes (its speed changed by up to 50% within a run), unlike the ratio of the medians."""
    ratios = [a / b for a, b in zip(times[name], times[base], strict=True)]
    return statistics.median(ratios), min(ratios), max(ratios)


def build(shape: str, grid_size: int, *, with_dense: bool) -> tuple[dict, Tensor, dict]:
    """Models and step functions of one configuration."""
    widths, batch = SHAPES[shape]
    x = torch.rand(batch, widths[0], generator=torch.Generator().manual_seed(1)) * 2 - 1
    kan = kl.KAN(widths, grid_size=grid_size, spline_order=ORDER, seed=0)
    n_params = kl.count_params(kan)
    hidden = matched_hidden(widths[0], widths[-1], n_params)
    models: dict[str, tuple[nn.Module, str | None]] = {}
    for backend in kernels.available_backends():
        models[f"kanlab/{backend}"] = (kan, backend)
    if with_dense:
        models["dense-basis"] = (dense_kan(widths, grid_size), None)
    try:
        import kan as pykan  # type: ignore[import-not-found]  # noqa: F401

        models["pykan"] = (pykan_model(widths, grid_size), None)
    except ImportError:
        pass
    models["mlp-width"] = (kl.MLP(widths, seed=0), None)
    models["mlp-params"] = (kl.MLP([widths[0], hidden, widths[-1]], seed=0), None)
    info = {"params": n_params, "mlp_hidden": hidden}
    return models, x, info


def pykan_model(widths: list[int], grid_size: int) -> nn.Module:  # pragma: no cover - optional
    from kan import KAN  # type: ignore[import-not-found]

    model = KAN(width=widths, grid=grid_size, k=ORDER, seed=0, auto_save=False)
    model.speed()
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="G in {5, 500}, 3 rounds")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/layer_speed.json"))
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (default 9)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--no-dense", action="store_true", help="skip the dense-basis reference")
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="wall: elapsed time (default); cpu: process CPU time, a proxy for compute on a busy "
        "machine (use with --threads 1: with more threads it also counts spinning workers)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    grids = [5, 500] if args.quick else GRIDS
    rounds = args.rounds or (3 if args.quick else 9)
    warmup = 1 if args.quick else 2
    try:
        import kan  # type: ignore[import-not-found]  # noqa: F401

        pykan_note = "pykan: installed, measured in speed mode"
    except ImportError:
        pykan_note = "pykan: not installed, skipped"

    results = []
    header = (
        "| shape | G | implementation | ms / step | x mlp-params | x mlp-params, paired (range) "
        "| saved MiB |"
    )
    print(
        f"torch {torch.__version__}, {args.threads} threads, float32, k={ORDER}, "
        f"{args.clock} clock; {pykan_note}"
    )
    print(f"load average at start: {os.getloadavg()}")
    print(header)
    print("|---|---|---|---|---|---|---|")
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    for shape in SHAPES:
        for grid_size in grids:
            models, x, info = build(shape, grid_size, with_dense=not args.no_dense)
            steps = {name: training_step(m, x, b) for name, (m, b) in models.items()}
            times = time_interleaved(steps, rounds, warmup, clock)
            base = statistics.median(times["mlp-params"])
            for name, (m, b) in models.items():
                paired, lo, hi = paired_ratio(times, name, "mlp-params")
                row = {
                    "shape": shape,
                    "widths": SHAPES[shape][0],
                    "batch": SHAPES[shape][1],
                    "grid_size": grid_size,
                    "implementation": name,
                    "ms": statistics.median(times[name]),
                    "ratio_to_mlp_params": statistics.median(times[name]) / base,
                    "paired_ratio": paired,
                    "paired_ratio_range": [lo, hi],
                    "rounds_ms": times[name],
                    "saved_bytes": saved_bytes(m, x, b),
                    **info,
                }
                results.append(row)
                print(
                    f"| {shape} | {grid_size} | {name} | {row['ms']:.2f} | "
                    f"{row['ratio_to_mlp_params']:.2f} | {paired:.2f} ({lo:.2f}-{hi:.2f}) | "
                    f"{row['saved_bytes'] / 2**20:.2f} |",
                    flush=True,
                )
    scaling = grid_scaling(grids, rounds, warmup, clock)
    for line in scaling["lines"]:
        print(line)
    summary = targets(results, scaling)
    for line in summary:
        print(line)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "torch": torch.__version__,
        "threads": args.threads,
        "clock": args.clock,
        "rounds": rounds,
        "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average_end": os.getloadavg(),
        "pykan": pykan_note,
        "memory": "bytes saved for backward by autograd during one forward (parameters excluded)",
    }
    args.out.write_text(
        json.dumps(
            {
                "meta": meta,
                "results": results,
                "grid_scaling": scaling["ratios"],
                "targets": summary,
            },
            indent=1,
        )
    )
    print(f"wrote {args.out}")


def grid_scaling(grids: list[int], rounds: int, warmup: int, clock: Callable[[], float]) -> dict:
    """kanlab's step at the largest grid over its step at the smallest, per shape, measured side by
    side (the two models interleaved in the same rounds): the table's rows for different grids are
    minutes apart, and this VM's speed drifts by tens of per cent over minutes."""
    g_lo, g_hi = grids[0], grids[-1]
    ratios, lines = {}, [f"grid scaling, G={g_hi} / G={g_lo}, interleaved side by side:"]
    for shape, (widths, batch) in SHAPES.items():
        x = torch.rand(batch, widths[0], generator=torch.Generator().manual_seed(1)) * 2 - 1
        steps = {
            g: training_step(kl.KAN(widths, grid_size=g, spline_order=ORDER, seed=0), x, None)
            for g in (g_lo, g_hi)
        }
        times = time_interleaved(steps, rounds, warmup, clock)
        lo_ms, hi_ms = statistics.median(times[g_lo]), statistics.median(times[g_hi])
        paired, low, high = paired_ratio(times, g_hi, g_lo)
        ratios[shape] = {"ms_lo": lo_ms, "ms_hi": hi_ms, "ratio": hi_ms / lo_ms}
        ratios[shape].update(paired_ratio=paired, paired_ratio_range=[low, high])
        lines.append(
            f"  {shape}: {hi_ms:.2f} ms / {lo_ms:.2f} ms = {hi_ms / lo_ms:.2f}x; "
            f"paired per round {paired:.2f}x ({low:.2f}-{high:.2f})"
        )
    return {"ratios": ratios, "lines": lines}


def targets(results: list[dict], scaling: dict) -> list[str]:
    """The issue's targets, evaluated on this run (fast backend = best non-reference kanlab)."""

    def ms(shape: str, grid: int, impl: str) -> float | None:
        row = find(shape, grid, impl)
        return None if row is None else row["ms"]

    def find(shape: str, grid: int, impl: str) -> dict | None:
        for r in results:
            if (r["shape"], r["grid_size"], r["implementation"]) == (shape, grid, impl):
                return r
        return None

    fast = [b for b in kernels.available_backends() if b != "reference"]
    if not fast:
        return ["no fast backend available: targets not evaluated"]
    impl = f"kanlab/{fast[0]}"
    lines = [f"targets for {impl}:"]
    grids = sorted({r["grid_size"] for r in results})
    g_lo, g_hi = grids[0], grids[-1]
    for shape, limit in (("A", 1.0), ("B", 1.2)):  # ratios paired per round (see paired_ratio)
        row = find(shape, g_lo, impl)
        if row is not None:
            ratio, (lo, hi) = row["paired_ratio"], row["paired_ratio_range"]
            ok = "met" if ratio <= limit else "NOT met"
            lines.append(
                f"  {shape} G={g_lo}: {ratio:.2f}x mlp-params, median of per-round ratios "
                f"({lo:.2f}-{hi:.2f}; ratio of medians {row['ratio_to_mlp_params']:.2f}x) "
                f"(target <= {limit}x): {ok}"
            )
    if g_hi > g_lo:  # kanlab's default (fastest) backend, measured side by side
        ratio = scaling["ratios"]["A"]["paired_ratio"]
        ok = "met" if ratio <= 1.5 else "NOT met"
        lines.append(
            f"  A G={g_hi} / G={g_lo}: {ratio:.2f}x, median of per-round ratios "
            f"(target <= 1.5x): {ok}"
        )
    for shape in SHAPES:
        for grid, need in ((g_lo, 3.0), (g_hi, 30.0)):
            k, d = ms(shape, grid, impl), ms(shape, grid, "dense-basis")
            if k and d:
                ok = "met" if d / k >= need else "NOT met"
                lines.append(
                    f"  {shape} G={grid}: {d / k:.1f}x faster than dense-basis "
                    f"(target >= {need:g}x): {ok}"
                )
    return lines


if __name__ == "__main__":
    main()
