"""Product starts of auto_symbolic's joint search (kanlab._symbolic_starts) and what they buy."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

import kanlab as kl
from _recipe import recipe_until_symbolic  # tests/ is on sys.path under pytest
from kanlab._symbolic_starts import product_starts

F64 = torch.float64
LIB = ["x", "x^2", "x^3", "x^4", "exp", "log", "sqrt", "tanh", "sin", "abs"]


def inputs(n=200, seed=0):
    """x_1 in [0.5, 2], x_2 in [-3, -1] (one sign each), x_3 in [1, 4]."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(n, 3, generator=g, dtype=F64)
    return torch.stack([0.5 + 1.5 * u[:, 0], -3 + 2 * u[:, 1], 1 + 3 * u[:, 2]], 1)


def power_law(x):
    """-2.5 * x_1^1.5 * |x_2|^-2 * x_3^0.5: negative throughout."""
    return (-2.5 * x[:, 0] ** 1.5 * x[:, 1].abs() ** -2 * x[:, 2] ** 0.5).unsqueeze(1)


def every_edge(model):
    return {(l_idx, o, i) for l_idx, la in enumerate(model.layers)
            for i in range(la.in_features) for o in range(la.out_features)}  # fmt: skip


def test_product_start_holds_the_exponents_and_drops_the_other_nodes():
    # oracle: for an exact power law the log-space least squares gives the exponents and
    # log|constant| exactly; installed, the start evaluates the power law itself
    model = kl.KAN([3, 2, 1], grid_size=3, dtype=F64, seed=0)
    x = inputs()
    y = power_law(x)
    starts = product_starts(model, x, y, every_edge(model))
    assert len(starts) == 2  # one per hidden node
    for j, start in enumerate(starts):
        other = 1 - j
        for i, (sign, w) in enumerate([(1.0, 1.5), (-1.0, -2.0), (1.0, 0.5)]):
            name, (a, b, c, d) = start[(0, j, i)]
            assert (name, a, b, d) == ("log", sign, 0.0, 0.0)
            assert abs(c - w) < 1e-10
        name, (a, b, c, d) = start[(1, 0, j)]
        assert (name, a, c, d) == ("exp", 1.0, -1.0, 0.0)
        assert abs(b - math.log(2.5)) < 1e-10
        dropped = [(1, 0, other)] + [(0, other, i) for i in range(3)]
        assert all(start[e] == ("0", (1.0, 0.0, 0.0, 0.0)) for e in dropped)
        trial = kl.KAN([3, 2, 1], grid_size=3, dtype=F64, seed=0)
        for (l_idx, o, i), (name, params) in start.items():
            trial.layers[l_idx].set_symbolic(i, o, name, params)
        with torch.no_grad():
            torch.testing.assert_close(trial(x), y, rtol=1e-10, atol=0)


def test_product_starts_only_where_they_apply():
    model = kl.KAN([3, 2, 1], grid_size=3, dtype=F64, seed=0)
    x = inputs()
    y = power_law(x)
    edges = every_edge(model)
    assert product_starts(model, x, torch.cat([y, -y]), edges) == []  # target changes sign
    assert product_starts(kl.KAN([3, 1], dtype=F64), x, y, {(0, 0, i) for i in range(3)}) == []
    wide = kl.KAN([3, 2, 2], grid_size=3, dtype=F64, seed=0)
    assert product_starts(wide, x, torch.cat([y, y], 1), every_edge(wide)) == []  # two outputs
    mixed = x.clone()
    mixed[0, 2] = -1.0  # x_3 now takes both signs: log|x_3| cannot be a factor
    assert product_starts(model, mixed, y, edges) == []
    # an edge the caller may not set (e.g. fixed before auto_symbolic) blocks the node's start
    assert len(product_starts(model, x, y, edges - {(0, 1, 2)})) == 1
    # ... and a live edge out of another node that may not be dropped blocks every start
    assert product_starts(model, x, y, edges - {(1, 0, 1)}) == []
    # a pruned input edge is not part of the node's product
    mask = model.layers[0].mask.clone()
    mask[2, 0] = 0.0
    model.layers[0].set_mask(mask)
    starts = product_starts(model, x, y, edges)
    assert (0, 0, 2) not in starts[0] and (0, 1, 2) in starts[1]


def test_joint_products_argument_checked() -> None:
    model = kl.KAN([1, 1], grid_size=3, seed=0, dtype=F64)
    x = torch.linspace(1, 2, 50, dtype=F64)[:, None]
    with pytest.raises(TypeError, match="joint_products"):
        kl.auto_symbolic(model, x, joint_products="yes")


def _rmse(model, ds):
    formula = kl.symbolic_formula(model, precision=None)
    with np.errstate(all="ignore"):
        err = formula(ds.test_x)[:, 0] - ds.test_y.numpy().ravel()
    return float(np.sqrt(np.mean(err**2)))


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")  # small tensors: threads only oversubscribe
def test_recipe_recovers_a_power_law_spread_over_three_nodes():
    # E_den = epsilon*Ef^2/2 (Feynman II.8.31), seed 0: pruning leaves [2, 3, 1], the three nodes
    # sharing the work (each moves the output by 14-63 % of its spread); the per-edge candidates
    # hold no log/exp and the search ended on sin/exp mixtures (RMSE 2.6e-2). The product start
    # gives exp(log eps + 2 log Ef - log 2).
    model, ds = recipe_until_symbolic("feynman/II.8.31", 0)
    assert model.widths[1] >= 2
    old = copy.deepcopy(model)
    kl.auto_symbolic(old, ds.train_x, lib=LIB, joint_products=False)
    kl.fit(old, ds, steps=50, progress=False)
    kl.auto_symbolic(model, ds.train_x, lib=LIB)
    kl.fit(model, ds, steps=50, progress=False)
    assert _rmse(model, ds) <= 1e-8
    assert _rmse(old, ds) > 1e-4


def shared_product_model():
    """Numeric KAN [2, 2, 1] holding x_1*x_2 on [1, 2]^2 over two nodes: both hidden nodes are
    h = log x_1 + log x_2, and the output edges split exp(h) into 0.8 exp(h) - g(h) and
    0.2 exp(h) + g(h), g(h) = 0.5 sin(8 h): the first output edge is no library function."""
    from kanlab.splines import curve_to_coef

    model = kl.KAN([2, 2, 1], grid_size=10, dtype=F64, seed=0, base_activation="zero")
    x = 1 + torch.rand(200, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    l0, l1 = model.layers
    with torch.no_grad():
        for la in (l0, l1):
            la.scale_spline.fill_(1.0)
        l0.update_grid(x)
        logs = torch.log(x).unsqueeze(-1).expand(-1, 2, 2)  # (batch, in, out)
        l0.coef.copy_(curve_to_coef(x, logs, l0.knots, l0.spline_order))
        h = l0(x)  # (batch, 2)
        l1.update_grid(h)
        g = 0.5 * torch.sin(8 * h)
        phi = torch.stack(
            [0.8 * torch.exp(h[:, 0]) - g[:, 0], 0.2 * torch.exp(h[:, 1]) + g[:, 1]], 1
        )
        l1.coef.copy_(curve_to_coef(h, phi.unsqueeze(-1), l1.knots, l1.spline_order))
    return model, x


@pytest.mark.usefixtures("one_thread")  # tiny tensors
def test_product_start_replaces_unfittable_edges_that_share_a_product():
    # The KAN holds x_1*x_2 (to 1e-4), but its output edges fit no library function: per edge
    # they stay numeric (joint_products=False: no formula). The product start keeps node 0 as
    # exp(log x_1 + log x_2) and drops node 1, unfittable edge included: the formula is x_1*x_2.
    model, x = shared_product_model()
    with torch.no_grad():
        assert float((model(x)[:, 0] - x.prod(1)).abs().max()) < 1e-3
    old = copy.deepcopy(model)
    lib = ["x", "x^2", "exp", "log", "sin"]
    report = kl.auto_symbolic(old, x, lib=lib, joint_products=False)
    assert any(not r.fixed for r in report)  # an output edge stays numeric
    with pytest.raises(ValueError, match="not symbolic"):
        kl.symbolic_formula(old)
    report = kl.auto_symbolic(model, x, lib=lib)
    assert all(r.fixed for r in report)
    formula = kl.symbolic_formula(model, precision=None)
    err = formula(x)[:, 0] - x.prod(1).numpy()
    assert float(np.abs(err).max()) < 1e-3
    names = {n for la in model.layers for n in la.symbolic_edges().values()}
    assert names == {"log", "exp", "0"}


@pytest.mark.usefixtures("one_thread")  # tiny tensors
def test_joint_search_skips_refits_that_cannot_win(monkeypatch):
    # Errors below the floor tie, so once the current choice is within 10 % of the floor only a
    # simpler choice can replace it: the search no longer refits choices at least as complex
    # (same result, fewer refits). Recorded: every refit's (complexity, error); the rule checked
    # against the best seen so far, which the search holds.
    from kanlab import symbolic

    model, x = shared_product_model()
    seen = []
    inner = symbolic._joint_error

    def recording(m, choice, *args):
        err, trial = inner(m, choice, *args)
        seen.append((sum(r.complexity for r in choice.values()), err))
        return err, trial

    monkeypatch.setattr(symbolic, "_joint_error", recording)
    floor = 1e-3
    kl.auto_symbolic(model, x, lib=["x", "x^2", "exp", "log", "sin"], joint_floor=floor)
    at_floor = [k for k, (_, err) in enumerate(seen[:-1]) if err <= 0.9 * floor]
    assert at_floor  # the product start reaches the floor
    first = at_floor[0]
    best_complexity = seen[first][0]
    for complexity, err in seen[first + 1 : -1]:  # the last refit is the final one, on all x
        assert complexity < best_complexity
        if err <= 1.1 * floor:
            best_complexity = complexity
    formula = kl.symbolic_formula(model, precision=None)
    assert float(np.abs(formula(x)[:, 0] - x.prod(1).numpy()).max()) < 1e-3
