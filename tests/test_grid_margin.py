"""Grid margins on data: ``update_grid``/``extend_grid(x, margin=m)``, ``FitConfig.grid_margin``.

A grid placed on the data's range ends at the extreme training inputs; past the grid's end the
spline falls towards zero within k intervals, so a test input slightly outside the training range
meets that fall, steeper the finer the grid (the rise of the [2,1,1] scaling curve past G = 50,
:mod:`kanlab.bench.paper.scaling`). A margin places the grid beyond the data's range.
Oracles: the closed-form widened grid; the learned function (sin) at a point just outside the
data; each model alone for the batched update.
"""

from __future__ import annotations

import math

import pytest
import torch

import kanlab as kl
from kanlab.model_batch import KANBatch
from kanlab.splines import curve_to_coef, knots_from_data

pytestmark = pytest.mark.usefixtures("one_thread")


def points(n: int, lo: float, hi: float, seed: int, n_in: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return lo + (hi - lo) * torch.rand(n, n_in, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("k", [1, 3])
def test_knots_from_data_margin_widens_the_uniform_grid_by_the_fraction_of_the_range(k):
    x = points(300, -0.7, 1.9, seed=0)
    lo, hi = x.min(0).values, x.max(0).values
    m, g = 0.05, 8
    knots = knots_from_data(x, g, k, 1.0, margin=m)  # (in, G + 2k + 1)
    width = (hi - lo) * (1 + 2 * m)
    step = width / g
    want = (lo - m * (hi - lo)).unsqueeze(1) + step.unsqueeze(1) * torch.arange(
        -k, g + k + 1, dtype=torch.float64
    )
    torch.testing.assert_close(knots, want, rtol=0, atol=1e-13)
    # margin 0 is the grid on the data's range, bit for bit
    torch.testing.assert_close(knots_from_data(x, g, k, 1.0, margin=0.0),
                               knots_from_data(x, g, k, 1.0), rtol=0, atol=0)  # fmt: skip


def test_knots_from_data_margin_stretches_a_quantile_grid_about_the_data_range():
    x = points(500, 0.0, 1.0, seed=1) ** 3  # skewed: quantile knots crowd near 0
    plain = knots_from_data(x, 6, 3, 0.0)
    wide = knots_from_data(x, 6, 3, 0.0, margin=0.1)
    lo, hi = plain[:, 3:4], plain[:, -4:-3]
    # the same affine map of every grid point: lo - 0.1 (hi - lo) + (t - lo) * 1.2
    torch.testing.assert_close(wide[:, 3:-3], lo - 0.1 * (hi - lo) + (plain[:, 3:-3] - lo) * 1.2)
    assert bool((wide[:, 3] < x.min(0).values).all())
    assert bool((wide[:, -4] > x.max(0).values).all())


def sin_layer(g: int) -> kl.KANLinear:
    """A 1-in, 1-out layer (zero base branch) whose spline on [-1.2, 1.2] is sin(pi x), G = ``g``."""
    layer = kl.KANLinear(1, 1, grid_size=g, spline_order=3, base_activation="zero",
                         grid_range=(-1.2, 1.2),
                         dtype=torch.float64)  # fmt: skip
    xs = torch.linspace(-1.2, 1.2, 20 * g + 1, dtype=torch.float64).unsqueeze(1)
    coef = curve_to_coef(xs, torch.sin(math.pi * xs).unsqueeze(-1), layer.knots, 3)
    with torch.no_grad():
        layer.coef.copy_(coef)
        layer.scale_spline.fill_(1.0)
    return layer


def test_update_grid_margin_keeps_the_function_just_outside_the_training_range():
    """Training inputs on [-0.99, 0.99] at G = 200 (interval 0.0099); x = 0.995 lies half an
    interval beyond them. Without a margin the refitted spline there is in its fall past the grid's
    end; with margin 0.01 it is an interior piece that reproduces sin (to the refit's accuracy)."""
    x = torch.linspace(-0.99, 0.99, 400, dtype=torch.float64).unsqueeze(1)
    out = torch.tensor([[0.995], [-0.995]], dtype=torch.float64)
    want = torch.sin(math.pi * out)
    errs = {}
    for m in (0.0, 0.01):
        layer = sin_layer(200)
        layer.update_grid(x, grid_eps=1.0, margin=m)
        assert layer.grid_size == 200
        with torch.no_grad():
            errs[m] = float((layer(out) - want).abs().max())
            inside = float((layer(x) - torch.sin(math.pi * x)).abs().max())
        assert inside < 1e-8, (m, inside)  # the function is kept on the data either way
    assert errs[0.01] < 1e-8 < 1e-4 < errs[0.0], errs  # measured 3e-11 and 6.6e-4


def test_kan_extend_grid_with_data_and_margin_places_each_layer_beyond_its_inputs():
    model = kl.KAN([2, 3, 1], grid_size=5, seed=0, dtype="float64")
    x = points(200, -0.8, 0.6, seed=2)
    with torch.no_grad():
        before = model(x)
    model.extend_grid(12, x, grid_eps=1.0, margin=0.1)  # data + margin: allowed now
    k = 3
    lo, hi = model.layers[0].knots[:, k], model.layers[0].knots[:, -k - 1]
    dlo, dhi = x.min(0).values, x.max(0).values
    torch.testing.assert_close(lo, dlo - 0.1 * (dhi - dlo))
    torch.testing.assert_close(hi, dhi + 0.1 * (dhi - dlo))
    with torch.no_grad():
        h = model.layer_inputs(x)[1]  # the second layer's inputs after the extension
        rel = float((model(x) - before).norm() / before.norm())
    assert bool((model.layers[1].knots[:, k] < h.min(0).values).all())
    assert rel < 0.05, rel  # 5 -> 12 on a new range: a least-squares refit, not exact
    with pytest.raises(ValueError, match="margin"):
        model.update_grid(x, margin=-0.1)


def test_kan_batch_margin_gives_each_model_its_own_widened_grid():
    cfg = kl.KANConfig(widths=(2, 3, 1), grid_size=5, dtype="float64")
    models = [kl.build(cfg.replace(seed=s)) for s in range(3)]
    xs = torch.stack([points(150, -1.0, 1.0 + m, seed=10 + m) for m in range(3)])
    twins = [kl.KAN.from_config(m.config) for m in models]
    for a, b in zip(twins, models, strict=True):
        a.load_state_dict(b.state_dict())
    batch = KANBatch.stack(twins)
    batch.update_grid(xs, grid_eps=1.0, margin=0.05)
    batch.extend_grid(9, xs, grid_eps=1.0, margin=0.05)
    for m, model in enumerate(models):
        model.update_grid(xs[m], grid_eps=1.0, margin=0.05)
        model.extend_grid(9, xs[m], grid_eps=1.0, margin=0.05)
    for model, twin in zip(models, batch.unstack(), strict=True):
        for key, want in model.state_dict().items():
            got = twin.state_dict()[key]
            if want.is_floating_point():
                torch.testing.assert_close(
                    got, want, rtol=1e-9, atol=1e-10 * float(want.abs().max())
                )
            else:
                assert torch.equal(got, want), key
    with pytest.raises(ValueError, match="margin"):
        batch.extend_grid(12, margin=0.1)  # the batch's extension without data keeps each range


def test_fit_grid_margin_reaches_the_grid_updates_and_is_checked():
    ds = kl.datasets.from_function(lambda x: torch.sin(3 * x[:, :1]) + x[:, 1:] ** 2, n_var=2,
                                   n_train=120, n_test=40, seed=0)  # fmt: skip
    x = ds.train_x.double()
    model = kl.KAN([2, 1, 1], grid_size=5, seed=0, dtype="float64")
    kl.fit(model, ds, steps=2, grid_update_every=1, grid_eps=1.0, grid_margin=0.02,
           progress=False, grid_schedule=(5, 8))  # fmt: skip
    lo, hi = model.layers[0].knots[:, 3], model.layers[0].knots[:, -4]
    dlo, dhi = x.min(0).values, x.max(0).values
    torch.testing.assert_close(lo, dlo - 0.02 * (dhi - dlo))
    torch.testing.assert_close(hi, dhi + 0.02 * (dhi - dlo))
    assert model.layers[0].grid_size == 8
    with pytest.raises(ValueError, match="grid_margin"):
        kl.FitConfig(grid_margin=-0.01)
    with pytest.raises(TypeError, match="grid_margin"):
        kl.FitConfig(grid_margin="wide")
