"""Grid refits on fine grids over few data: interval samples keep the function between the data.

Before the fix, ``update_grid``/``extend_grid`` fitted the new coefficients to the old spline at the
training inputs only; an interval with fewer inputs than the basis functions it touches left its
coefficients to the ridge, which pulled them (and the function there) to zero: the [2,1,1] scaling
run's test RMSE blew up to 1.27 at G = 1000 on 1000 training points.
"""

from __future__ import annotations

from itertools import pairwise

import pytest
import torch

import kanlab as kl
from kanlab.splines import coef_to_curve, curve_to_coef, interval_samples, uniform_knots


def smooth_layer(g: int, n_in: int = 1) -> kl.KANLinear:
    """A layer whose splines (grid g on [-1, 1]) are smooth curves, sin(3x + i) on input i."""
    layer = kl.KANLinear(n_in, 1, grid_size=g, dtype=torch.float64)
    x = torch.linspace(-1, 1, 20 * (g + 3), dtype=torch.float64).unsqueeze(1).repeat(1, n_in)
    y = torch.sin(3 * x + torch.arange(n_in, dtype=torch.float64)).unsqueeze(-1)
    with torch.no_grad():
        layer.coef.copy_(curve_to_coef(x, y, layer.knots, 3))
    return layer


def few_points(n: int, n_in: int = 1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, n_in, generator=g, dtype=torch.float64) * 1.8 - 0.9


def spline_part(layer: kl.KANLinear, x: torch.Tensor) -> torch.Tensor:
    return coef_to_curve(x, layer.knots, layer.coef, layer.spline_order)


def test_interval_samples_put_points_in_every_interval_within_the_grid():
    knots = torch.tensor([[-4.0, -3, -2, -1, 0, 0.5, 3, 4, 5, 6]])  # k = 3, G = 3, non-uniform
    pts = interval_samples(knots, 3, per_interval=2)
    assert pts.shape == (3 * 2 + 1, 1)
    assert torch.all(pts[1:] > pts[:-1])  # ascending
    grid = knots[0, 3:-3]
    inside = [int(((pts[:, 0] > a) & (pts[:, 0] < b)).sum()) for a, b in pairwise(grid)]
    assert inside == [2, 2, 2] and pts[-1, 0] == grid[-1]
    two = interval_samples(uniform_knots(2, 4, 3, (-1.0, 1.0), dtype=torch.float64), 3, 3)
    assert two.shape == (13, 2) and torch.equal(two[:, 0], two[:, 1])


@pytest.mark.parametrize("grid_eps", [1.0, 0.02])
def test_extension_far_beyond_the_data_keeps_the_function_between_the_points(grid_eps):
    layer = smooth_layer(10)
    x = few_points(100)  # G = 400 on 100 points: most intervals hold no point
    dense = torch.linspace(float(x.min()), float(x.max()), 3001, dtype=torch.float64).unsqueeze(1)
    before = spline_part(layer, dense)
    layer.extend_grid(400, x, grid_eps=grid_eps)
    assert layer.grid_size == 400
    err = (spline_part(layer, dense) - before).abs().max()
    assert err < 1e-4, f"max change of the function on its data range {err:.3g}"  # old code: ~1


def test_update_of_a_fine_grid_on_few_points_keeps_the_function():
    layer = smooth_layer(300, n_in=2)
    x = few_points(50, n_in=2, seed=3)
    lo, hi = x.min(0).values, x.max(0).values
    dense = lo + (hi - lo) * torch.linspace(0, 1, 2001, dtype=torch.float64).unsqueeze(1)
    before = layer(dense)
    layer.update_grid(x, grid_eps=1.0)
    assert (layer(dense) - before).abs().max() < 1e-6


@pytest.mark.slow
def test_kan_211_extended_to_1000_on_1000_points_predicts_as_before():
    """The scaling run's last extension: [2,1,1], 200 -> 1000 intervals on its 1000 inputs."""
    model = kl.KAN([2, 1, 1], grid_size=5, seed=0, dtype=torch.float64)
    with torch.no_grad():  # smooth, non-trivial edges (a trained model is smooth too)
        for layer in model.layers:
            t = torch.linspace(-1, 1, 200, dtype=torch.float64).unsqueeze(1).repeat(1, 2)[:, :1]
            t = t.repeat(1, layer.in_features)
            y = torch.exp(torch.sin(2 * t)).unsqueeze(-1)
            layer.coef.copy_(curve_to_coef(t, y, layer.knots, 3))
    x = few_points(1000, n_in=2, seed=5)
    model.extend_grid(200, x, grid_eps=1.0)
    test = few_points(1000, n_in=2, seed=6)
    h, h_train = model.layers[0](test)[:, 0], model.layers[0](x)[:, 0]
    test = test[(h > h_train.min()) & (h < h_train.max())]  # the outer grid covers the train h
    assert test.shape[0] > 900
    before = model(test)
    model.extend_grid(1000, x, grid_eps=1.0)
    assert (model(test) - before).abs().max() < 1e-5
