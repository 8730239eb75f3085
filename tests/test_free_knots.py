"""Tests for free-knot training (kanlab.free_knots and fit's knot_steps)."""

from __future__ import annotations

import math

import pytest
import torch

import kanlab as kl
from kanlab import datasets
from kanlab.free_knots import FreeKnotObjective

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def sin_data(n: int = 200) -> datasets.Dataset:
    return datasets.from_function(
        lambda x: torch.sin(torch.pi * x[:, 0]), 1, n_train=n, n_test=n, seed=0,
        dtype=torch.float64,
    )  # fmt: skip


def test_objective_matches_the_model_before_and_after_write_back():
    model = kl.KAN([2, 3, 1], grid_size=4, seed=0, dtype=torch.float64)
    x = torch.rand(64, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2 - 1
    model.update_grid(x, grid_eps=0.0)  # a non-uniform grid
    obj = FreeKnotObjective(model)
    with torch.no_grad():
        torch.testing.assert_close(obj(x, with_norms=False)[0], model(x))
        for logits in obj.logits:  # move the knots
            logits.add_(torch.linspace(-0.5, 0.5, logits.shape[1], dtype=torch.float64))
        moved = obj(x, with_norms=False)[0]
        obj.write_back()
        torch.testing.assert_close(model(x), moved)  # the fast kernels see the same knots
    for layer in model.layers:
        assert not layer._uniform and bool(layer.grid_uniform) is False


def test_knots_stay_ordered_with_fixed_ends():
    model = kl.KAN([2, 2, 1], grid_size=5, seed=0, dtype=torch.float64)
    obj = FreeKnotObjective(model)
    ends = [layer.knots[:, [3, -4]].clone() for layer in model.layers]
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):  # extreme widths: before the clamp, 22 of 200 draws gave unordered knots
        with torch.no_grad():
            for logits in obj.logits:
                logits.copy_(torch.randn(logits.shape, generator=gen, dtype=torch.float64) * 20)
        for knots, end in zip(obj.knots(), ends, strict=True):
            assert bool((knots.diff(dim=1) >= 0).all())
            torch.testing.assert_close(knots[:, [3, -4]], end)


def test_gradcheck_in_the_knots():
    model = kl.KAN([2, 2, 1], grid_size=3, seed=0, dtype=torch.float64)
    obj = FreeKnotObjective(model)
    x = (
        torch.rand(16, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 1.8
        - 0.9
    )

    def f(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(obj, {"logits.0": a, "logits.1": b}, (x, False))[0]

    a = obj.logits[0].detach().clone().requires_grad_(True)
    b = obj.logits[1].detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(f, (a, b))


def test_free_knots_beat_fixed_knots_on_a_coarse_grid():
    # sin(pi x) with 3 cubic intervals: the best interior knots are near +-0.43, not +-1/3.
    ds = sin_data()
    opts = {"steps": 30, "grid_eps": 1.0, "progress": False}
    fixed = kl.KAN([1, 1], grid_size=3, seed=0, dtype=torch.float64)
    free = kl.KAN([1, 1], grid_size=3, seed=0, dtype=torch.float64)
    h_fixed = kl.fit(fixed, ds, **opts)
    h_free = kl.fit(free, ds, knot_steps=20, **opts)
    assert h_free.final_test_metric < 0.7 * h_fixed.final_test_metric
    inner = free.layers[0].knots[0, 4:6]
    assert 0.38 < float(-inner[0]) < 0.5 and 0.38 < float(inner[1]) < 0.5
    assert all(math.isfinite(v) for v in h_free.train_metric)


@pytest.mark.parametrize("optimizer", ["adamw", "lbfgs"])
def test_free_knots_with_weight_decay_move_the_knots(optimizer):
    # both optimiser paths (LBFGS: one flat parameter list; AdamW: the logits in their own group,
    # without weight decay) train the knots, which stay strictly increasing
    ds = sin_data(100)
    model = kl.KAN([1, 1], grid_size=3, seed=0, dtype=torch.float64)
    before = model.layers[0].knots.clone()
    lr = 0.05 if optimizer == "adamw" else 1.0
    hist = kl.fit(model, ds, optimizer=optimizer, lr=lr, steps=10, knot_steps=5,
                  weight_decay=1e-4, grid_update_every=0, progress=False)  # fmt: skip
    assert all(math.isfinite(v) for v in hist.train_metric)
    knots = model.layers[0].knots
    assert not torch.equal(knots, before) and bool((knots.diff(dim=1) > 0).all())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"knot_steps": -1}, "knot_steps must be >= 0"),
        ({"knot_steps": 3}, r"knot_steps must be <= steps \(2\)"),
        ({"knot_steps": 1, "lamb": 0.1}, "cannot be combined with lamb"),
        ({"knot_steps": [1, 1]}, "2 entries but there are 1 stages"),
        ({"knot_steps": [1, 3], "grid_schedule": [3, 5]}, r"knot_steps\[1\] must be <= steps"),
    ],
)
def test_knot_steps_validation(kwargs, match):
    model = kl.KAN([1, 1], grid_size=3, seed=0, dtype=torch.float64)
    with pytest.raises(ValueError, match=match):
        kl.fit(model, sin_data(20), steps=2, progress=False, **kwargs)


def test_knot_steps_need_a_kan_without_symbolic_edges():
    with pytest.raises(ValueError, match="needs a KAN"):
        kl.fit(kl.MLP([1, 4, 1], dtype=torch.float64), sin_data(20), steps=2, knot_steps=1,
               progress=False)  # fmt: skip
    model = kl.KAN([1, 1], grid_size=3, seed=0, dtype=torch.float64)
    model.layers[0].set_symbolic(0, 0, "sin")
    with pytest.raises(ValueError, match="symbolic edges"):
        FreeKnotObjective(model)


def test_knot_steps_per_stage_free_only_the_chosen_stages():
    """knot_steps=[n, 0]: the knots move in the first stage only and stay fixed in the second."""
    model = kl.KAN([1, 1], grid_size=3, seed=0, dtype=torch.float64)
    seen = []
    kl.fit(
        model, sin_data(100), steps=4, grid_schedule=[3, 6], knot_steps=[2, 0], progress=False,
        callbacks=[lambda state: seen.append(model.layers[0].knots.clone())],
    )  # fmt: skip
    first, second = seen[:4], seen[4:]
    assert not torch.equal(first[1], first[3])  # moved while free (steps 2 and 3)
    assert all(torch.equal(second[0], kn) for kn in second)  # fixed in the second stage
    with pytest.raises(TypeError, match="int or a sequence"):
        kl.fit(model, sin_data(20), steps=2, knot_steps="2", progress=False)
