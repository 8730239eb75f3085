"""Speed and memory of a KAN training step on a CUDA GPU, beside an MLP, the dense formulation and pykan.

    python benchmarks/gpu_speed.py [--quick] [--rounds 7] [--out benchmarks/results/gpu_speed.json]

For each shape (A: KAN [64, 64, 64] batch 1024; B: [784, 64, 10] batch 512; C: [784, 256, 10] batch
4096) and grid size G in {5, 100, 1000} (k = 3, float32), times forward + backward of
``mean(y ** 2)`` (parameter gradients set to None before each step) for

- ``kanlab``: kl.KAN on the Triton backend with its automatic strategy, and each strategy forced
  (``kanlab/tiles``: dense register tiles and tensor-core products, ``kanlab/sparse``: gathers of
  the k+1 rows and atomic gradient adds; see :mod:`kanlab.kernels.gpu`), and the tiles with
  plain float32 products (``kanlab/tiles-ieee``) instead of tf32x3;
- ``mlp-params``: an MLP ``[in, H, out]`` with H matched to the KAN's parameter count (cuBLAS);
- ``dense-basis``: the efficient-kan formulation (dense Cox-de Boor basis, then one matmul), as in
  ``benchmarks/layer_speed.py``, skipped where its basis alone would pass ``--dense-limit`` GB;
- ``pykan``: the official package in ``speed()`` mode, when importable, skipped where its
  constructor's least-squares system would pass ``--pykan-limit`` GB.

All implementations of one shape run interleaved in the same rounds (each round: one untimed step,
then CUDA events around ``--burst`` steps in a row; slow ones time one step), medians over rounds.
Then the peak CUDA memory of one training step of [784, 256, 10] at batch 36,864 (G=5, the size of
efficient-kan issue #23) for kanlab, the MLP, the dense formulation and pykan: the peak over the
memory held before the step (model, input), measured on a second step. Prints Markdown tables and
the issue's targets, and writes JSON.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from layer_speed import dense_kan, matched_hidden

import kanlab as kl
from kanlab import kernels

SHAPES = {"A": ([64, 64, 64], 1024), "B": ([784, 64, 10], 512), "C": ([784, 256, 10], 4096)}
GRIDS = [5, 100, 1000]
ORDER = 3
MEMORY = ([784, 256, 10], 36864, 5)


def _env(**values: str | None):
    """Set (or, with None, remove) environment variables; returns a function restoring them."""
    old = {k: os.environ.get(k) for k in values}

    def apply(vals):
        for k, v in vals.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    apply(values)
    return lambda: apply(old)


def step_fn(model: nn.Module, x: Tensor, env: dict[str, str | None]) -> Callable[[], None]:
    params = [p for p in model.parameters() if p.requires_grad]

    def step() -> None:
        restore = _env(**env)
        try:
            for p in params:
                p.grad = None
            model(x).pow(2).mean().backward()
        finally:
            restore()

    return step


def timed(step: Callable[[], None], repeats: int) -> float:
    """ms per step: CUDA events around ``repeats`` steps in a row."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        step()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / repeats


def pykan_model(widths: list[int], grid: int) -> nn.Module:
    from kan import KAN  # type: ignore[import-not-found]

    model = KAN(width=widths, grid=grid, k=ORDER, seed=0, auto_save=False, device="cuda")
    return model.speed()


def pykan_init_gb(widths: list[int], grid: int) -> float:
    """Size of the least-squares system pykan's constructor solves (per layer: in*out curves of
    G+1 points on G+k bases, float32), the largest."""
    return max(a * b * (grid + 1) * (grid + ORDER) * 4 for a, b in itertools.pairwise(widths)) / 1e9


def dense_gb(widths: list[int], batch: int, grid: int) -> float:
    """The dense basis of the widest layer, float32 (the recursion keeps a few of these)."""
    return batch * max(widths[:-1]) * (grid + 2 * ORDER) * 4 / 1e9


def implementations(widths, batch, grid, args) -> tuple[dict, dict]:
    """name -> (model, env) and notes on what was skipped."""
    kan = kl.KAN(widths, grid_size=grid, spline_order=ORDER, seed=0).cuda()
    n_params = kl.count_params(kan)
    hidden = matched_hidden(widths[0], widths[-1], n_params)
    impls: dict[str, tuple[nn.Module, dict]] = {
        "kanlab": (kan, {"KANLAB_TRITON_STRATEGY": None}),
        "kanlab/sparse": (kan, {"KANLAB_TRITON_STRATEGY": "sparse"}),
    }
    if grid + ORDER <= 256:
        impls["kanlab/tiles"] = (kan, {"KANLAB_TRITON_STRATEGY": "tiles"})
        impls["kanlab/tiles-ieee"] = (
            kan,
            {"KANLAB_TRITON_STRATEGY": "tiles", "KANLAB_TRITON_DOT": "ieee"},
        )
    impls["mlp-params"] = (kl.MLP([widths[0], hidden, widths[-1]], seed=0).cuda(), {})
    notes = {"params": n_params, "mlp_hidden": hidden}
    if dense_gb(widths, batch, grid) <= args.dense_limit:
        impls["dense-basis"] = (dense_kan(widths, grid).cuda(), {})
    else:
        notes["dense-basis"] = f"skipped: basis {dense_gb(widths, batch, grid):.0f} GB"
    if args.pykan:
        if pykan_init_gb(widths, grid) <= args.pykan_limit:
            try:
                impls["pykan"] = (pykan_model(widths, grid), {})
            except torch.cuda.OutOfMemoryError:
                notes["pykan"] = "constructor out of memory"
                torch.cuda.empty_cache()
        else:
            notes["pykan"] = f"skipped: constructor's system {pykan_init_gb(widths, grid):.0f} GB"
    return impls, notes


def run_shape(shape: str, args) -> list[dict]:
    widths, batch = SHAPES[shape]
    x = (torch.rand(batch, widths[0], generator=torch.Generator().manual_seed(1)) * 2 - 1).cuda()
    steps: dict[tuple[int, str], Callable[[], None]] = {}
    notes: dict[int, dict] = {}
    for grid in args.grids:
        impls, notes[grid] = implementations(widths, batch, grid, args)
        for name, (model, env) in impls.items():
            steps[grid, name] = step_fn(model, x, env)
    slow, failed = {}, {}
    for key, step in list(steps.items()):  # warm-up: compile, allocate, classify
        try:
            step()
            slow[key] = timed(step, 1) > 100.0
        except torch.cuda.OutOfMemoryError:
            failed[key] = "out of memory"
            del steps[key]
            torch.cuda.empty_cache()
    times: dict[tuple[int, str], list[float]] = {key: [] for key in steps}
    for rnd in range(args.rounds):
        for key, step in steps.items():
            if slow[key] and rnd >= 3:
                continue
            if not slow[key]:
                step()
            times[key].append(timed(step, 1 if slow[key] else args.burst))
    rows = []
    for grid in args.grids:
        base = statistics.median(times[grid, "mlp-params"])
        for (g, name), ts in times.items():
            if g != grid:
                continue
            ms = statistics.median(ts)
            rows.append(
                {"shape": shape, "widths": widths, "batch": batch, "grid_size": grid,
                 "implementation": name, "ms": ms, "x_mlp": ms / base, "rounds_ms": ts,
                 **{k: v for k, v in notes[grid].items() if k in ("params", "mlp_hidden")}}
            )  # fmt: skip
        for name, why in notes[grid].items():
            if name not in ("params", "mlp_hidden"):
                rows.append(
                    {"shape": shape, "grid_size": grid, "implementation": name, "note": why}
                )
        for (g, name), why in failed.items():
            if g == grid:
                rows.append(
                    {"shape": shape, "grid_size": grid, "implementation": name, "note": why}
                )
    return rows


def peak_memory(model: nn.Module, x: Tensor) -> dict:
    """Peak CUDA memory of a training step above what is held before it (second step measured)."""
    out: dict = {}
    try:
        for _ in range(2):
            for p in model.parameters():
                p.grad = None
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            model(x).pow(2).mean().backward()
            torch.cuda.synchronize()
            out = {
                "held_before_mib": before / 2**20,
                "peak_mib": torch.cuda.max_memory_allocated() / 2**20,
                "step_mib": (torch.cuda.max_memory_allocated() - before) / 2**20,
            }
    except torch.cuda.OutOfMemoryError:
        out = {"note": "out of memory"}
    for p in model.parameters():
        p.grad = None
    torch.cuda.empty_cache()
    return out


def run_memory(args) -> list[dict]:
    widths, batch, grid = MEMORY
    x = (torch.rand(batch, widths[0], generator=torch.Generator().manual_seed(2)) * 2 - 1).cuda()
    rows = []
    kan = kl.KAN(widths, grid_size=grid, spline_order=ORDER, seed=0).cuda()
    hidden = matched_hidden(widths[0], widths[-1], kl.count_params(kan))
    builders = {
        "kanlab": lambda: kan,
        "mlp-params": lambda: kl.MLP([widths[0], hidden, widths[-1]], seed=0).cuda(),
        "dense-basis": lambda: dense_kan(widths, grid).cuda(),
    }
    if args.pykan:
        builders["pykan"] = lambda: pykan_model(widths, grid)
    for name, build in builders.items():
        try:
            model = build()
        except torch.cuda.OutOfMemoryError:
            rows.append({"implementation": name, "note": "constructor out of memory"})
            continue
        row = {"implementation": name, "params": kl.count_params(model), **peak_memory(model, x)}
        rows.append(row)
        del model
        torch.cuda.empty_cache()
    return rows


def targets(rows: list[dict], memory: list[dict]) -> list[str]:
    def ms(shape, grid, impl):
        for r in rows:
            if (r["shape"], r["grid_size"], r["implementation"]) == (shape, grid, impl):
                return r.get("ms")
        return None

    lines = ["targets (kanlab = automatic strategy):"]
    for shape in ("B", "C"):
        k, m = ms(shape, 5, "kanlab"), ms(shape, 5, "mlp-params")
        if k and m:
            ok = "met" if k / m <= 1.5 else "NOT met"
            lines.append(f"  {shape} G=5: {k / m:.2f}x the parameter-matched MLP (<= 1.5x): {ok}")
    for shape in SHAPES:
        lo, hi = ms(shape, 5, "kanlab"), ms(shape, 1000, "kanlab")
        if lo and hi:
            ok = "met" if hi / lo <= 1.3 else "NOT met"
            lines.append(f"  {shape} G=1000 / G=5: {hi / lo:.2f}x (<= 1.3x): {ok}")
        k, d = ms(shape, 100, "kanlab"), ms(shape, 100, "dense-basis")
        if k and d:
            ok = "met" if d / k >= 10 else "NOT met"
            lines.append(f"  {shape} G=100: {d / k:.1f}x faster than dense-basis (>= 10x): {ok}")
    mem = {r["implementation"]: r.get("step_mib") for r in memory}
    if mem.get("kanlab") and mem.get("mlp-params"):
        ratio = mem["kanlab"] / mem["mlp-params"]
        ok = "met" if ratio <= 1.5 else "NOT met"
        lines.append(f"  memory [784,256,10] batch 36864: {ratio:.2f}x the MLP (<= 1.5x): {ok}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (default 7)")
    parser.add_argument("--burst", type=int, default=5, help="steps in a row per timing")
    parser.add_argument("--shapes", default="A,B,C", help="comma-separated subset of A,B,C")
    parser.add_argument("--grids", default=",".join(map(str, GRIDS)))
    parser.add_argument("--dense-limit", type=float, default=20.0, help="GB, dense basis")
    parser.add_argument("--pykan-limit", type=float, default=4.0, help="GB, pykan's constructor")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu_speed.json"))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_speed.py needs a CUDA device")
    args.rounds = args.rounds or (3 if args.quick else 7)
    args.grids = [int(g) for g in args.grids.split(",")]
    try:
        import kan  # type: ignore[import-not-found]  # noqa: F401

        args.pykan = True
    except ImportError:
        args.pykan = False
    import triton

    kernels.set_backend("triton")
    device = torch.cuda.get_device_name()
    meta = {
        "device": device,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": triton.__version__,
        "pykan": args.pykan,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "rounds": args.rounds,
        "burst": args.burst,
    }
    print(f"{device}; torch {torch.__version__} (CUDA {torch.version.cuda}), triton "
          f"{triton.__version__}; pykan {'installed' if args.pykan else 'not installed'}; float32, "
          f"k={ORDER}, matmul TF32 {meta['tf32_matmul']}")  # fmt: skip
    print("| shape | G | implementation | ms / step | x mlp-params |")
    print("|---|---|---|---|---|")
    rows = []
    for shape in args.shapes.split(","):
        for row in run_shape(shape, args):
            rows.append(row)
            label = (
                f"| {shape} {row.get('widths', '')} b{row.get('batch', '')} | {row['grid_size']}"
            )
            if "ms" in row:
                print(f"{label} | {row['implementation']} | {row['ms']:.3f} | {row['x_mlp']:.2f} |")
            else:
                print(f"{label} | {row['implementation']} | {row['note']} | |")
        sys.stdout.flush()
    memory = [] if args.no_memory else run_memory(args)
    if memory:
        print(f"peak memory of one step, {MEMORY[0]} batch {MEMORY[1]}, G={MEMORY[2]}:")
        print("| implementation | params | step MiB (peak - held before) | peak MiB |")
        print("|---|---|---|---|")
        for r in memory:
            if "step_mib" in r:
                print(f"| {r['implementation']} | {r['params']} | {r['step_mib']:.0f} | "
                      f"{r['peak_mib']:.0f} |")  # fmt: skip
            else:
                print(f"| {r['implementation']} | {r.get('params', '')} | {r['note']} | |")
    summary = targets(rows, memory)
    print("\n".join(summary))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"meta": meta, "speed": rows, "memory": memory, "targets": summary}, indent=1)
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
