"""Writes the format-version-1 checkpoints in this folder (run once, with kanlab at commit f0437f7,
before checkpoints stored a KANConfig/MLPConfig). Kept to document how the files were made; the
test (tests/test_io.py::test_version_1_checkpoints_still_load) loads them and compares each model's
outputs on ``inputs(d)`` with ``outputs.json`` bit for bit.

    PYTHONPATH=src python tests/data/checkpoints_v1/make.py
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

import kanlab as kl

HERE = Path(__file__).parent


def inputs(d: int, dtype: torch.dtype) -> torch.Tensor:
    """16 deterministic points in [-1.3, 1.3]^d (no RNG: the same on every torch version)."""
    n = 16
    t = torch.arange(n * d, dtype=torch.float64).reshape(n, d)
    return (torch.sin(1.7 * t + 0.3) * 1.3).to(dtype)


def models() -> dict[str, torch.nn.Module]:
    f64 = torch.float64
    out: dict[str, torch.nn.Module] = {}
    out["kan_f64"] = kl.KAN([2, 3, 1], grid_size=4, seed=3, dtype=f64)
    out["kan_f32_k2_identity"] = kl.KAN(
        [3, 2, 2], grid_size=6, spline_order=2, base_activation="identity", seed=1
    )
    out["mlp_f64_tanh"] = kl.MLP([2, 5, 1], activation="tanh", seed=2, dtype=f64)
    out["mlp_f32"] = kl.MLP([3, 4, 4, 2], seed=7)
    ext = kl.KAN([2, 3, 1], grid_size=4, seed=5, dtype=f64)
    x = inputs(2, f64)
    ext.update_grid(x)  # non-uniform knots
    ext.extend_grid(9, x)  # grid extension 4 -> 9
    ext.layers[1].mask[1, 0] = 0.0  # a pruned edge
    out["kan_f64_extended"] = ext
    fitted = kl.KAN([2, 2, 1], grid_size=3, seed=0, dtype=f64)
    ds = kl.datasets.from_function(
        lambda v: torch.sin(3 * v[:, :1]) * v[:, 1:], 2, n_train=60, n_test=20, dtype=f64
    )
    kl.fit(fitted, ds, optimizer="adam", lr=0.05, steps=3, grid_schedule=[3, 6], progress=False)
    out["kan_f64_fit_schedule"] = fitted
    mixed = kl.KAN([2, 3, 1], grid_size=5, seed=4, dtype=f64)
    mixed.layers[0].extend_grid(7)  # layers with different grid sizes
    out["kan_f64_mixed_grids"] = mixed
    per_layer = kl.KAN([2, 3, 1], grid_size=4, seed=3, dtype=f64)
    per_layer.layers[1].base_activation = "tanh"
    per_layer.layers[0].grid_range = (-2.0, 3.0)
    out["kan_f64_per_layer_options"] = per_layer
    sym = kl.KAN([2, 2, 1], grid_size=5, seed=6, dtype=f64)
    kl.fix_symbolic(sym, 0, 0, 0, "sin")
    kl.fix_symbolic(sym, 0, 1, 1, "x^2")
    kl.fix_symbolic(sym, 1, 0, 0, "exp")
    with torch.no_grad():
        sym.layers[0].symbolic_affine[0, 0] = torch.tensor([2.0, 0.5, 0.7, -0.1], dtype=f64)
    out["kan_f64_symbolic"] = sym
    return out


def main() -> None:
    record = {}
    for name, model in models().items():
        kl.save(model, HERE / f"{name}.safetensors")
        dtype = next(model.parameters()).dtype
        x = inputs(model.widths[0], dtype)
        with torch.no_grad():
            y = model(x).double()
        record[name] = {
            "dtype": str(dtype).removeprefix("torch."),
            "outputs": [[v.hex() for v in row] for row in y.tolist()],
        }
    (HERE / "outputs.json").write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
