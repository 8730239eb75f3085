"""Writes the checkpoints that tests/test_layers.py loads to check that files written before the
thin-KANLinear refactor (issue 17: symbolic edges moved to a child module) still load with the same
outputs. Run once, with the code *before* that refactor (commit f0437f7), from the repository root:

    PYTHONPATH=src python tests/data/make_layer_checkpoints.py

It writes three kanlab checkpoints (``kanlab.save``: safetensors + JSON config) and
``layer_checkpoints_outputs.safetensors``, which holds the inputs ``x_<name>`` and the outputs
``y_<name>_<backend>`` of each model on them, per kernel backend available at the time
("reference" always, "numba" where it was installed). Re-running it with later code would write
files in the later format, which is not what the test is about.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

import kanlab as kl
from kanlab import kernels

HERE = Path(__file__).parent
F64 = torch.float64


def rand(*shape: int, seed: int, lo: float = -1.0, hi: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=g, dtype=F64) * (hi - lo) + lo


def symbolic_model() -> kl.KAN:
    """[3, 4, 2] with symbolic edges of several functions in both layers, a symbolic edge masked
    off, a numeric edge masked off and a half-weighted symbolic edge."""
    model = kl.KAN([3, 4, 2], grid_size=5, seed=7, dtype=F64)
    la, lb = model.layers
    la.set_symbolic(0, 0, "sin", (2.0, 0.3, 0.7, -0.1))
    la.set_symbolic(1, 2, "x^2", (1.3, -0.2, 0.5, 0.05))
    la.set_symbolic(2, 3, "exp", (0.6, 0.1, 0.4, 0.2))
    la.set_symbolic(1, 0, "sin", (1.1, 0.0, -0.8, 0.0))
    lb.set_symbolic(3, 1, "tanh", (0.9, 0.1, 1.2, -0.3))
    lb.set_symbolic(0, 0, "x", (1.0, 0.0, 0.25, 0.1))
    with torch.no_grad():
        la.mask[1, 0] = 0.0  # a masked symbolic edge
        la.mask[2, 1] = 0.0  # a masked numeric edge
        lb.mask[3, 1] = 0.5  # a half-weighted symbolic edge
    return model


def pruned_model() -> kl.KAN:
    """[3, 5, 2] with hidden node 1 and input 2 made negligible, pruned with prune_inputs=True to
    [2, 4, 2], with a symbolic edge in each layer (fixed before pruning) and masked edges."""
    model = kl.KAN([3, 5, 2], grid_size=6, seed=11, dtype=F64)
    la, lb = model.layers
    with torch.no_grad():
        lb.scale_base[1].mul_(1e-6)  # hidden node 1 feeds almost nothing
        lb.scale_spline[1].mul_(1e-6)
        la.scale_base[2].mul_(1e-6)  # input 2 feeds almost nothing
        la.scale_spline[2].mul_(1e-6)
        la.scale_base[0, 3].mul_(1e-5)  # a weak edge, masked by the edge threshold
        la.scale_spline[0, 3].mul_(1e-5)
    la.set_symbolic(1, 4, "cos", (1.5, 0.2, 0.6, -0.05))
    lb.set_symbolic(2, 1, "x^2", (0.8, 0.1, 0.3, 0.0))
    x = rand(200, 3, seed=1)
    pruned, kept = kl.prune(model, x, node_threshold=1e-3, edge_threshold=1e-4, prune_inputs=True)
    assert kept == [0, 1], kept
    assert pruned.widths == [2, 4, 2], pruned.widths
    assert bool((pruned.layers[0].mask == 0).any())
    return pruned


def extended_model() -> kl.KAN:
    """[2, 3, 1] float32 with grids moved to the data (non-uniform) and extended 5 -> 8, then
    extended again on a uniform grid in the second layer (mixed grid sizes 8 and 12)."""
    model = kl.KAN([2, 3, 1], grid_size=5, seed=5, dtype=torch.float32)
    x = rand(300, 2, seed=2).pow(3).float()
    model.update_grid(x)
    model.extend_grid(8, x)
    model.layers[1].extend_grid(12)
    return model


def main() -> None:
    models = {"symbolic": symbolic_model(), "pruned": pruned_model(), "extended": extended_model()}
    widths = {"symbolic": 3, "pruned": 2, "extended": 2}
    tensors = {}
    for name, model in models.items():
        x = rand(50, widths[name], seed=3, lo=-1.3, hi=1.3).to(next(model.parameters()).dtype)
        tensors[f"x_{name}"] = x
        for backend in kernels.available_backends():
            if backend == "triton":
                continue
            kernels.set_backend(backend)
            with torch.no_grad():
                tensors[f"y_{name}_{backend}"] = model(x).contiguous()
        kernels.set_backend(None)
        kl.save(model, HERE / f"layer_checkpoint_{name}.safetensors")
    save_file(tensors, HERE / "layer_checkpoints_outputs.safetensors")
    print(sorted(tensors))


if __name__ == "__main__":
    main()
