"""Model batches (kanlab.model_batch): each model of a batch against the same model alone.

Oracle everywhere: the individual kanlab models (their own fast kernels, their own grid methods).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.func import functional_call

import kanlab as kl
from kanlab.kernels.batched_reference import batched_basis
from kanlab.model_batch import KANBatch, MLPBatch
from kanlab.splines import bspline_basis

pytestmark = pytest.mark.usefixtures("one_thread")

F64 = torch.float64
KAN_CFG = kl.KANConfig(widths=[2, 5, 1], dtype="float64")
MLP_CFG = kl.MLPConfig(widths=[2, 5, 3], dtype="float64")
SEEDS = [0, 3, 7]


def points(n: int = 120, n_in: int = 2, *, seed: int = 1, lo=-1.0, hi=1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return lo + (hi - lo) * torch.rand(n, n_in, generator=g, dtype=F64)


def perturbed_kans(seeds=SEEDS) -> list[kl.KAN]:
    """KANs with non-trivial scales and coefficients (initial ones are near-identical shapes)."""
    models = [kl.build(KAN_CFG.replace(seed=s)) for s in seeds]
    for s, model in enumerate(models):
        g = torch.Generator().manual_seed(100 + s)
        with torch.no_grad():
            for layer in model.layers:
                layer.coef.normal_(0, 1, generator=g)
                layer.scale_spline.uniform_(0.5, 1.5, generator=g)
    return models


def adapted_kans() -> list[kl.KAN]:
    """Each model's grid adapted to different data (different ranges and distributions)."""
    models = perturbed_kans()
    for m, model in enumerate(models):
        x = points(200, seed=10 + m, lo=-0.5 - m, hi=0.3 + 0.8 * m) ** (m + 1)
        model.update_grid(x)
    return models


def assert_rows_equal(y: torch.Tensor, models, xs, tol: float = 1e-12) -> None:
    assert y.shape == (len(models), xs[0].shape[0], models[0].widths[-1])
    for m, (model, x) in enumerate(zip(models, xs, strict=True)):
        torch.testing.assert_close(y[m], model(x), rtol=0, atol=tol, msg=f"model {m}")


def assert_same_state(a: torch.nn.Module, b: torch.nn.Module, *, rel: float = 0.0) -> None:
    """Equal state dicts: bit for bit, or floats within ``rel`` of each tensor's largest entry."""
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        if rel and sa[key].is_floating_point():
            scale = float(sa[key].abs().max()) or 1.0
            err = float((sa[key] - sb[key]).abs().max())
            assert err <= rel * scale, (key, err, scale)
        else:
            assert torch.equal(sa[key], sb[key]), key


# ---------------------------------------------------------------------- basis
def test_batched_basis_equals_per_model_cox_de_boor():
    models = adapted_kans()
    knots = torch.stack([model.layers[0].knots for model in models])  # (M, in, n)
    x = torch.stack([points(50, seed=20 + m, lo=-3, hi=3) for m in range(len(models))])
    basis = batched_basis(x, knots, 3)
    for m in range(len(models)):
        expected = bspline_basis(x[m], knots[m], 3)  # (batch, in, G+k): model m alone
        torch.testing.assert_close(basis[m], expected, rtol=0, atol=1e-14)


# ---------------------------------------------------------------------- KAN forward
def test_kan_from_config_equals_build_shared_and_per_model_input():
    batch = KANBatch.from_config(KAN_CFG, seeds=SEEDS)
    models = [kl.build(KAN_CFG.replace(seed=s)) for s in SEEDS]
    x = points(seed=2)
    assert_rows_equal(batch(x), models, [x] * 3)
    xs = torch.stack([points(seed=30 + m, lo=-1.5, hi=1.5) for m in range(3)])
    assert_rows_equal(batch(xs), models, list(xs))
    assert batch.n_models == 3 and batch.widths == [2, 5, 1] and batch.grid_size == 5


def test_kan_stack_equals_models_on_adapted_grids_and_masks():
    models = adapted_kans()
    models[1].layers[0].set_mask(torch.tensor([[1.0, 0, 1, 1, 0], [1, 1, 0, 1, 1]], dtype=F64))
    assert not any(model.layers[0]._uniform for model in models)  # adapted, per model
    batch = KANBatch.stack(models)
    xs = torch.stack([points(seed=40 + m, lo=-2.5, hi=2.5) for m in range(3)])  # also outside
    assert_rows_equal(batch(xs), models, list(xs))
    x = points(seed=5, lo=-2, hi=2)
    assert_rows_equal(batch(x), models, [x] * 3)


def test_kan_forward_has_no_side_effects_and_stack_copies():
    models = adapted_kans()
    before = [{k: v.clone() for k, v in model.state_dict().items()} for model in models]
    batch = KANBatch.stack(models)
    state = {k: v.clone() for k, v in batch.state_dict().items()}
    batch(points())
    for key, value in batch.state_dict().items():
        assert torch.equal(value, state[key]), key
    with torch.no_grad():  # the batch shares no storage with the models
        batch.layers[0].coef.add_(1.0)
        batch.layers[0].knots.mul_(2.0)
    for model, saved in zip(models, before, strict=True):
        for key, value in model.state_dict().items():
            assert torch.equal(value, saved[key]), key


def test_kan_unstack_gives_the_stacked_models_back_exactly():
    models = adapted_kans()
    models[2].layers[1].scale_base.requires_grad_(False)
    models[0].layers[1].scale_base.requires_grad_(False)
    models[1].layers[1].scale_base.requires_grad_(False)
    back = KANBatch.stack(models).unstack()
    x = points(seed=8, lo=-2, hi=2)
    for model, twin in zip(models, back, strict=True):
        assert_same_state(model, twin)
        assert twin.config == model.config
        assert twin.layers[0]._uniform is False
        assert not twin.layers[1].scale_base.requires_grad and twin.layers[1].coef.requires_grad
        assert torch.equal(twin(x), model(x))


# ---------------------------------------------------------------------- KAN gradients
def test_kan_gradcheck_float64_tiny():
    cfg = kl.KANConfig(widths=[2, 2, 1], grid_size=3, dtype="float64")
    models = [kl.build(cfg.replace(seed=s)) for s in (0, 1)]
    models[1].update_grid(points(50, seed=3, lo=-0.7, hi=0.9) ** 3)
    batch = KANBatch.stack(models)
    names = [n for n, _ in batch.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for p in batch.parameters())
    x = points(6, seed=4, lo=-0.9, hi=0.9).expand(2, 6, 2).clone().requires_grad_(True)

    def f(x, *ps):
        return functional_call(batch, dict(zip(names, ps, strict=True)), (x,))

    assert torch.autograd.gradcheck(f, (x, *params), eps=1e-6, atol=1e-7)


def test_kan_gradient_of_summed_losses_is_each_models_gradient():
    models = adapted_kans()
    batch = KANBatch.stack(models)
    x, target = points(seed=6), points(seed=7)[:, :1]
    loss = sum(torch.mean((y - target) ** 2) for y in batch(x))
    loss.backward()
    for m, model in enumerate(models):
        torch.mean((model(x) - target) ** 2).backward()
        for i, layer in enumerate(model.layers):
            for name in ("coef", "scale_base", "scale_spline"):
                got = getattr(batch.layers[i], name).grad[m]
                torch.testing.assert_close(got, getattr(layer, name).grad, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------- KAN grids
@pytest.mark.parametrize("per_model", [False, True])
def test_kan_update_grid_equals_each_models_update(per_model):
    models = perturbed_kans()
    batch = KANBatch.stack(models)
    coef = batch.layers[0].coef
    if per_model:
        xs = torch.stack([points(150, seed=50 + m, lo=-1 - m, hi=0.5 + m) for m in range(3)])
        data = list(xs)
    else:
        xs = points(150, seed=50, lo=-1.3, hi=0.4)
        data = [xs] * 3
    batch.update_grid(xs, grid_eps=0.1)
    for model, xm in zip(models, data, strict=True):
        model.update_grid(xm, grid_eps=0.1)
    assert batch.layers[0].coef is coef  # in place: an optimiser's references stay valid
    for model, twin in zip(models, batch.unstack(), strict=True):  # (the batch solves the refits'
        assert_same_state(model, twin, rel=1e-12)  # M x in systems as one: BLAS may round apart)
    x = points(seed=9, lo=-2, hi=2)
    assert_rows_equal(batch(x), models, [x] * 3)


@pytest.mark.parametrize("with_data", [False, True])
def test_kan_extend_grid_equals_each_models_extension(with_data):
    models = adapted_kans()
    batch = KANBatch.stack(models)
    xs = torch.stack([points(150, seed=60 + m, lo=-1, hi=1 + m) for m in range(3)])
    batch.extend_grid(10, xs if with_data else None)
    for m, model in enumerate(models):
        model.extend_grid(10, xs[m] if with_data else None)
    assert batch.grid_size == 10 and batch.layers[1].coef.shape == (3, 5, 13, 1)
    for model, twin in zip(models, batch.unstack(), strict=True):
        assert_same_state(model, twin, rel=1e-12)  # (as in the update test)
        assert twin.config == model.config
    assert_rows_equal(batch(xs), models, list(xs))


# ---------------------------------------------------------------------- KAN refusals
def test_kan_batch_refuses_what_it_does_not_support():
    a, b = kl.build(KAN_CFG), kl.build(KAN_CFG.replace(grid_size=7))
    with pytest.raises(ValueError, match="same grid size.*model 1 has 7"):
        KANBatch.stack([a, b])
    with pytest.raises(ValueError, match="same widths"):
        KANBatch.stack([a, kl.build(KAN_CFG.replace(widths=[2, 4, 1]))])
    with pytest.raises(ValueError, match="same layer spline_order"):
        KANBatch.stack([a, kl.build(KAN_CFG.replace(spline_order=2))])
    sym = kl.build(KAN_CFG)
    sym.layers[0].set_symbolic(0, 0, "sin")
    with pytest.raises(ValueError, match="model 1 has symbolic edges"):
        KANBatch.stack([a, sym])
    with pytest.raises(ValueError, match="non-empty sequence of KAN"):
        KANBatch.stack([])
    with pytest.raises(TypeError, match=r"models\[1\] must be a KAN, got MLP"):
        KANBatch.stack([a, kl.build(MLP_CFG)])
    with pytest.raises(TypeError, match="needs a KANConfig"):
        KANBatch.from_config(MLP_CFG, seeds=[0])
    with pytest.raises(ValueError, match="seeds must be a non-empty"):
        KANBatch.from_config(KAN_CFG, seeds=[])
    batch = KANBatch.stack([a, a])
    with pytest.raises(ValueError, match=r"\(batch, 2\) or \(2, batch, 2\).*\(3, 10, 2\)"):
        batch(torch.zeros(3, 10, 2, dtype=F64))
    with pytest.raises(TypeError, match="dtype"):
        batch(torch.zeros(10, 2, dtype=torch.float32))


# ---------------------------------------------------------------------- MLPs
def test_mlp_from_config_equals_build_shared_and_per_model_input():
    batch = MLPBatch.from_config(MLP_CFG, seeds=SEEDS)
    models = [kl.build(MLP_CFG.replace(seed=s)) for s in SEEDS]
    x = points(seed=2)
    assert_rows_equal(batch(x), models, [x] * 3)
    xs = torch.stack([points(seed=30 + m) for m in range(3)])
    assert_rows_equal(batch(xs), models, list(xs))


def test_mlp_stack_unstack_and_gradients():
    models = [kl.build(MLP_CFG.replace(seed=s, activation="tanh")) for s in SEEDS]
    batch = MLPBatch.stack(models)
    back = batch.unstack()
    for model, twin in zip(models, back, strict=True):
        assert_same_state(model, twin)
        assert twin.config == model.config
    x, target = points(seed=6), points(seed=7, n_in=3)
    assert_rows_equal(batch(x), models, [x] * 3)
    sum(torch.mean((y - target) ** 2) for y in batch(x)).backward()
    for m, model in enumerate(models):
        torch.mean((model(x) - target) ** 2).backward()
        for i, lin in enumerate(model.layers):
            for name in ("weight", "bias"):
                got = getattr(batch.layers[i], name).grad[m]
                torch.testing.assert_close(got, getattr(lin, name).grad, rtol=1e-10, atol=1e-12)


def test_mlp_batch_refusals():
    with pytest.raises(ValueError, match="same activation"):
        MLPBatch.stack([kl.build(MLP_CFG), kl.build(MLP_CFG.replace(activation="relu"))])
    with pytest.raises(ValueError, match="same widths"):
        MLPBatch.stack([kl.build(MLP_CFG), kl.build(MLP_CFG.replace(widths=[2, 4, 3]))])
    with pytest.raises(TypeError, match="needs an MLPConfig"):
        MLPBatch.from_config(KAN_CFG, seeds=[0])


# ---------------------------------------------------------------------- benchmark script
@pytest.mark.slow  # a subprocess importing torch and kanlab: ~4 s on a loaded 2-core VM
def test_benchmark_script_writes_a_row_per_family_and_size(tmp_path):
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "speed.json"
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    cmd = [sys.executable, str(root / "benchmarks" / "model_batch_speed.py"), "--models", "1", "2",
           "--widths", "2,3,1", "--points", "40", "--repeats", "1", "--inner", "1",
           "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out.read_text())["rows"]
    families = ("KAN uniform", "KAN adapted", "MLP")
    # the KAN batches also get a row of fit_batch's fused step, where it runs (Numba installed)
    fused = ("batch", "fused") if importlib.util.find_spec("numba") is not None else ("batch",)
    kinds = {name: fused if name.startswith("KAN") else ("batch",) for name in families}
    assert [(r["model"], r["kind"], r["n_models"]) for r in rows] == [
        *((name, "single", 1) for name in families),
        *((name, kind, m) for name in families for m in (1, 2) for kind in kinds[name]),
    ]
    assert all(r["widths"] == [2, 3, 1] and r["ms_per_model_eval"] > 0 for r in rows)
    assert rows[0]["x_faster_than_single_kan"] == 1.0
    assert rows[2]["x_faster_than_single_mlp"] == 1.0
    assert "vs KAN" in proc.stdout and "vs MLP" in proc.stdout
