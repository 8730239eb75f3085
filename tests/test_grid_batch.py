"""Batched grid updates and extensions (kanlab.grid_batch via KANBatch.update_grid/extend_grid).

Oracle: each model alone, ``KAN.update_grid`` / ``KAN.extend_grid`` on its own data. On the Numba
CPU kernels the batched result is bit-identical (the same spline functions on the same numbers,
column by column); on the reference kernels within rounding.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

import kanlab as kl
from kanlab import grid_batch
from kanlab.model_batch import KANBatch

pytestmark = pytest.mark.usefixtures("one_thread")

DTYPES = {"float64": torch.float64, "float32": torch.float32}


def rand(*shape: int, seed: int, dtype: torch.dtype, lo: float = -1.0, hi: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    return (lo + (hi - lo) * torch.rand(*shape, generator=g, dtype=torch.float64)).to(dtype)


def varied_kans(widths: list[int], dtype: str, n_models: int = 5) -> list[kl.KAN]:
    """KANs with different seeds, coefficients and scales; odd models with grids adapted to their
    own data (non-uniform knots), model 1 with pruned (masked) edges in every layer."""
    cfg = kl.KANConfig(widths=widths, dtype=dtype)
    models = [kl.build(cfg.replace(seed=s)) for s in range(n_models)]
    for m, model in enumerate(models):
        g = torch.Generator().manual_seed(100 + m)
        with torch.no_grad():
            for layer in model.layers:
                layer.coef.copy_(torch.randn(layer.coef.shape, generator=g, dtype=torch.float64))
                layer.scale_spline.uniform_(0.5, 1.5, generator=g)
        if m % 2:
            x = rand(
                200, widths[0], seed=10 + m, lo=-0.5 - m, hi=0.3 + 0.4 * m, dtype=DTYPES[dtype]
            )
            model.update_grid(x**3)
        if m == 1:
            for layer in model.layers:
                mask = torch.ones_like(layer.mask)
                mask[0, -1] = 0
                layer.set_mask(mask)
    return models


# Without numba a model alone and the batch compute the hidden layers' inputs with different
# reference kernels (rounding apart by an ulp), which the quantile knots and the least squares amplify
# (measured: 6.5e-12 in float64, 3.8e-6 in float32); with numba they run the same arithmetic.
_NUMBA = importlib.util.find_spec("numba") is not None
TOL = {torch.float64: 1e-12 if _NUMBA else 1e-10, torch.float32: 1e-6 if _NUMBA else 2e-5}


def assert_same_models(batch: KANBatch, models: list[kl.KAN]) -> None:
    """Each model's knots, coefficients, scales, mask and uniform flag as the model's own: within
    TOL of the tensor's largest entry (the refit's least squares run
    in float64 either way). Often bit-identical; not always: BLAS may round a batched product of
    ``M * in`` matrices differently from one of ``in`` matrices (memory layout and alignment)."""
    for m, (model, twin) in enumerate(zip(models, batch.unstack(), strict=True)):
        want, got = model.state_dict(), twin.state_dict()
        assert want.keys() == got.keys()
        for key in want:
            if not want[key].is_floating_point():
                assert torch.equal(got[key], want[key]), f"model {m}: {key}"
                continue
            tol = TOL[want[key].dtype]
            scale = float(want[key].abs().max())
            torch.testing.assert_close(
                got[key], want[key], rtol=tol, atol=tol * scale, msg=f"model {m}: {key}"
            )
        assert twin.layers[0]._uniform == model.layers[0]._uniform


CASES = [([2, 5, 1], "float64"), ([3, 4, 2, 1], "float64"), ([3, 4, 2, 1], "float32")]


@pytest.mark.parametrize("chunk", [1, grid_batch.CHUNK_ELEMENTS])
@pytest.mark.parametrize(("widths", "dtype"), CASES)
@pytest.mark.parametrize("per_model", [False, True])
def test_update_grid_gives_each_model_its_own_update(widths, dtype, per_model, chunk, monkeypatch):
    monkeypatch.setattr(grid_batch, "CHUNK_ELEMENTS", chunk)  # 1: one model per chunk
    models = varied_kans(widths, dtype)
    batch = KANBatch.stack(models)
    n = len(models)
    if per_model:
        xs = torch.stack([rand(300, widths[0], seed=50 + m, lo=-1 - m, hi=0.5 + m,
                               dtype=DTYPES[dtype]) for m in range(n)])  # fmt: skip
        data = list(xs)
    else:
        xs = rand(300, widths[0], seed=50, lo=-1.3, hi=0.4, dtype=DTYPES[dtype])
        data = [xs] * n
    coef = batch.layers[0].coef
    batch.update_grid(xs, grid_eps=0.1)
    for model, xm in zip(models, data, strict=True):
        model.update_grid(xm, grid_eps=0.1)
    assert batch.layers[0].coef is coef  # in place: an optimiser's references stay valid
    assert_same_models(batch, models)


@pytest.mark.parametrize(("widths", "dtype"), CASES)
@pytest.mark.parametrize("with_data", [False, True])
def test_extend_grid_gives_each_model_its_own_extension(widths, dtype, with_data):
    models = varied_kans(widths, dtype)
    batch = KANBatch.stack(models)
    xs = torch.stack([rand(200, widths[0], seed=60 + m, lo=-1, hi=1 + m, dtype=DTYPES[dtype])
                      for m in range(len(models))])  # fmt: skip
    batch.extend_grid(8, xs if with_data else None, grid_eps=0.05)
    for m, model in enumerate(models):
        model.extend_grid(8, xs[m] if with_data else None, grid_eps=0.05)
    assert batch.grid_size == 8 and batch.layers[-1].coef.shape == (5, widths[-2], 11, 1)
    assert batch.layers[-1].coef.is_contiguous()
    assert_same_models(batch, models)


@pytest.mark.parametrize("grid_eps", [0.0, 1.0])
def test_constant_inputs_and_pure_grids_as_each_model_alone(grid_eps):
    """A model whose data are constant on one input keeps that input's grid (the layer's rule),
    and its uniform flag follows; grid_eps 1 gives uniform grids, 0 pure quantiles."""
    models = varied_kans([2, 3, 1], "float64", n_models=4)
    xs = torch.stack([rand(100, 2, seed=70 + m, dtype=torch.float64) for m in range(4)])
    xs[0, :, 1] = 0.25  # model 0 (uniform grid): input 1 constant
    xs[3, :, 0] = -0.5  # model 3 (adapted grid): input 0 constant
    for op in ("update", "extend"):
        ms = [kl.KAN.from_config(m.config) for m in models]
        for a, b in zip(ms, models, strict=True):
            a.load_state_dict(b.state_dict())
        batch = KANBatch.stack(ms)
        if op == "update":
            batch.update_grid(xs, grid_eps=grid_eps)
            for m, model in enumerate(ms):
                model.update_grid(xs[m], grid_eps=grid_eps)
        else:
            batch.extend_grid(7, xs, grid_eps=grid_eps)
            for m, model in enumerate(ms):
                model.extend_grid(7, xs[m], grid_eps=grid_eps)
        assert_same_models(batch, ms)
        flags = batch.layers[0].grid_uniform.tolist()
        assert flags == [bool(model.layers[0].grid_uniform) for model in ms]


def test_refused_grid_data_leaves_every_model_unchanged():
    models = varied_kans([2, 3, 1], "float64", n_models=3)
    batch = KANBatch.stack(models)
    before = {k: v.clone() for k, v in batch.state_dict().items()}
    xs = torch.stack([rand(50, 2, seed=80 + m, dtype=torch.float64) for m in range(3)])
    xs[2, 7, 1] = float("nan")
    with pytest.raises(ValueError, match=r"grid data of model 2 \(input of layer 0\)"):
        batch.update_grid(xs)
    with pytest.raises(ValueError, match="at least 2 samples"):
        batch.extend_grid(8, xs[:, :1])
    with pytest.raises(ValueError, match=r"grid_eps must be in \[0, 1\], got 1.5"):
        batch.update_grid(xs[:, :8].nan_to_num(), grid_eps=1.5)
    with pytest.raises(ValueError, match=r"\(layer 0\) would coarsen"):
        batch.extend_grid(3)
    after = batch.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    # ... also when a later layer fails: layer 0 is restored
    with torch.no_grad():
        batch.layers[0].scale_base[1, 0, 0] = float("inf")
    before = {k: v.clone() for k, v in batch.state_dict().items()}
    with pytest.raises(ValueError, match=r"grid data of model 1 \(input of layer 1\)"):
        batch.update_grid(xs[:, :8].nan_to_num())
    after = batch.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
