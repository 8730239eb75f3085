"""Joint refit of symbolic constants (kanlab._symbolic_refit) and what auto_symbolic does with it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import kanlab as kl
from _recipe import recipe_until_symbolic  # tests/ is on sys.path under pytest
from kanlab import _symbolic_refit as refit

F64 = torch.float64


def rand(*shape, seed=0, lo=-1.0, hi=1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=g, dtype=F64) * (hi - lo) + lo


def all_symbolic(widths, names, seed=0, **kw):
    """A KAN whose every edge is symbolic, functions cycling through ``names``, with varied
    constants (a, b, c, d); log and sqrt get b = 40, which keeps their arguments inside their
    domain for inputs in [1, 2] (outside it they are clamped, not the exact functions)."""
    model = kl.KAN(widths, dtype=F64, seed=seed, **kw)
    g = torch.Generator().manual_seed(seed)
    k = 0
    for la in model.layers:
        for i in range(la.in_features):
            for o in range(la.out_features):
                a, c, d = (float(v) for v in torch.rand(3, generator=g, dtype=F64))
                name = names[k % len(names)]
                b = 40.0 if name in ("log", "sqrt") else 2.0
                la.set_symbolic(i, o, name, (0.3 + 0.4 * a, b, c - 0.5, d))
                k += 1
    return model


NAMES = ["x", "x^2", "sin", "exp", "tanh", "log", "sqrt", "x^3", "0", "x^4", "abs"]


@pytest.mark.parametrize("widths", [[2, 3, 1], [3, [2, 1], 2], [2, 2, 2, 1]])
def test_evaluate_and_jacobian_match_the_model_and_autodiff(widths):
    # oracle: the layer's own forward, and autograd's (reverse-mode, row by row) Jacobian
    model = all_symbolic(widths, NAMES)
    x = rand(40, model.layers[0].in_features, lo=1.0, hi=2.0)
    p = refit.plan(model)
    assert p is not None
    theta = refit.read_theta(model, p)
    with torch.no_grad():
        ref = model(x)
    out = refit.evaluate(p, theta, x)
    torch.testing.assert_close(out, ref, rtol=1e-13, atol=1e-13)
    out2, jac = refit.evaluate_jacobian(p, theta, x)
    torch.testing.assert_close(out2, ref, rtol=1e-13, atol=1e-13)
    naive = torch.autograd.functional.jacobian(lambda t: refit.evaluate(p, t, x), theta)
    torch.testing.assert_close(jac, naive, rtol=1e-11, atol=1e-11)
    assert float(jac.abs().amax()) > 0  # the check compares something


def test_evaluate_gradcheck():
    model = all_symbolic([2, [1, 1], 1], ["x^2", "sin", "exp", "x", "tanh"])
    p = refit.plan(model)
    theta = refit.read_theta(model, p).requires_grad_(True)
    x = rand(6, 2, lo=1.0, hi=2.0)
    assert torch.autograd.gradcheck(lambda t: refit.evaluate(p, t, x), (theta,))


def test_write_theta_round_trip_and_plan_refuses_numeric_edges():
    model = all_symbolic([2, 2, 1], NAMES)
    p = refit.plan(model)
    theta = refit.read_theta(model, p)
    refit.write_theta(model, p, theta * 2)
    torch.testing.assert_close(refit.read_theta(model, p), theta * 2, rtol=0, atol=0)
    model.layers[1].unset_symbolic(0, 0)
    assert refit.plan(model) is None
    pruned = kl.KAN([2, 2, 1], dtype=F64, seed=0)  # a masked numeric edge does not count
    for la in pruned.layers:
        for i in range(la.in_features):
            for o in range(la.out_features):
                la.set_symbolic(i, o, "x")
    pruned.layers[0].unset_symbolic(1, 1)
    mask = pruned.layers[0].mask.clone()
    mask[1, 1] = 0
    pruned.layers[0].set_mask(mask)
    assert refit.plan(pruned) is not None


def test_canonical_keeps_the_function_and_normalises_constants():
    model = all_symbolic([2, 3, 2], NAMES, seed=3)
    x = rand(50, 2, lo=1.0, hi=2.0)
    p = refit.plan(model)
    theta = refit.read_theta(model, p)
    new = refit.canonical(p, theta)
    torch.testing.assert_close(
        refit.evaluate(p, new, x), refit.evaluate(p, theta, x), rtol=1e-12, atol=1e-12
    )
    th = new.reshape(-1, 4)
    names = [fn.name for pl in p.layers for fn, lo, hi in pl.groups for _ in range(lo, hi)]
    for name, (a, b, c, _d) in zip(names, th.tolist(), strict=True):
        if name == "x":
            assert (a, b) == (1.0, 0.0)
        if name in ("x^2", "x^3", "x^4", "sqrt", "log"):
            assert abs(a) == 1.0
        if name == "exp":
            assert abs(c) == 1.0
    n0 = p.sizes[0]
    assert th[:n0, 3].abs().max() == 0  # hidden sum nodes pass their constants on
    outs = p.layers[1].outs.tolist()  # one constant per output, on its first edge
    assert sum(th[n0 + e, 3] != 0 for e in range(len(outs))) <= 2


def exact_product_kan():
    """x_1 * x_2 = ((x_1 + x_2)^2 - (x_1 - x_2)^2) / 4 as a symbolic KAN [2, 2, 1]."""
    model = kl.KAN([2, 2, 1], dtype=F64, seed=0)
    l0, l1 = model.layers
    for i, o, c in ((0, 0, 1.0), (1, 0, 1.0), (0, 1, 1.0), (1, 1, -1.0)):
        l0.set_symbolic(i, o, "x", (1.0, 0.0, c, 0.0))
    l1.set_symbolic(0, 0, "x^2", (1.0, 0.0, 0.25, 0.0))
    l1.set_symbolic(1, 0, "x^2", (1.0, 0.0, -0.25, 0.0))
    return model


def exact_power_law_kan():
    """x_1 * x_2^2 / x_3 = exp(log x_1 + 2 log x_2 - log x_3) as a symbolic KAN [3, 1, 1]."""
    model = kl.KAN([3, 1, 1], dtype=F64, seed=0)
    for i, c in enumerate((1.0, 2.0, -1.0)):
        model.layers[0].set_symbolic(i, 0, "log", (1.0, 0.0, c, 0.0))
    model.layers[1].set_symbolic(0, 0, "exp", (1.0, 0.0, 1.0, 0.0))
    return model


@pytest.mark.parametrize(
    ("build", "lo", "truth"),
    [
        (exact_product_kan, -1.0, lambda x: x[:, 0] * x[:, 1]),
        (exact_power_law_kan, 1.0, lambda x: x[:, 0] * x[:, 1] ** 2 / x[:, 2]),
    ],
)
def test_levenberg_marquardt_recovers_perturbed_exact_constants(build, lo, truth):
    # oracle: KANs whose edges are exactly known functions. Each constant perturbed by ~1e-2
    # (what per-edge fits to splines leave): the composed output is off by ~1e-2; the joint
    # refit to the exact outputs brings it back to rounding, which per-edge fitting cannot.
    model = build()
    n_in = model.layers[0].in_features
    x = rand(300, n_in, seed=1, lo=lo, hi=lo + 2.0 if lo < 0 else 5.0)
    y = truth(x).unsqueeze(1)
    with torch.no_grad():
        torch.testing.assert_close(model(x), y, rtol=1e-12, atol=1e-12)  # the premise
    p = refit.plan(model)
    theta = refit.read_theta(model, p)
    g = torch.Generator().manual_seed(2)
    start = theta + 1e-2 * torch.randn(theta.shape, generator=g, dtype=F64)
    before = float((refit.evaluate(p, start, x) - y).square().mean().sqrt())
    assert before > 1e-3
    fitted, rms = refit.levenberg_marquardt(p, start, x, y)
    assert rms < 1e-12 * float(y.std())
    refit.write_theta(model, p, refit.canonical(p, fitted))
    formula = kl.symbolic_formula(model, precision=None)
    xt = rand(200, n_in, seed=5, lo=lo, hi=lo + 2.0 if lo < 0 else 5.0)
    err = np.abs(formula(xt)[:, 0] - truth(xt).numpy()).max()
    assert err < 1e-10 * float(truth(xt).abs().max())


def test_levenberg_marquardt_keeps_the_start_when_nothing_improves():
    model = exact_product_kan()
    x = rand(50, 2)
    p = refit.plan(model)
    theta = refit.read_theta(model, p)
    with torch.no_grad():
        y = model(x)
    fitted, rms = refit.levenberg_marquardt(p, theta, x, y)
    assert rms == 0.0 or rms < 1e-15
    torch.testing.assert_close(fitted, theta, rtol=0, atol=1e-14)


@pytest.mark.slow
def test_recipe_recovers_mu_n_exactly():
    # F = mu*Nn (Feynman I.12.1), seed 0 prunes to [2, 2, 1]. Before the joint Levenberg-Marquardt
    # refit the search picked x, x, x, x, x^2, x^2 only after 50-step LBFGS refits and the
    # formula stayed at RMSE 7e-3 (ill-conditioned constants c*(a*x + b) + d with a ~ 3e-4, b, d ~
    # 1e4 stall the recipe's last fit); now x_1*x_2 to rounding.
    lib = ["x", "x^2", "x^3", "x^4", "exp", "log", "sqrt", "tanh", "sin", "abs"]
    model, ds = recipe_until_symbolic("feynman/I.12.1", 0)
    kl.auto_symbolic(model, ds.train_x, lib=lib)
    kl.fit(model, ds, steps=50, progress=False)
    formula = kl.symbolic_formula(model, precision=None)
    rmse = float(np.sqrt(np.mean((formula(ds.test_x)[:, 0] - ds.test_y.numpy().ravel()) ** 2)))
    assert rmse <= 1e-8
    assert math.isfinite(rmse)


def linear_chain_model():
    """Numeric KAN [2, 1, 1] whose splines hold 0.5 x_1 - 0.1, 0.3 x_2 + 0.1 and 2 h + 0.5
    (h stays inside the grid, [-1, 1])."""
    from kanlab.splines import curve_to_coef

    model = kl.KAN([2, 1, 1], grid_size=5, dtype=F64, seed=0, base_activation="zero")
    l0, l1 = model.layers
    xs = torch.linspace(-1, 1, 200, dtype=F64).unsqueeze(1)
    with torch.no_grad():
        y0 = torch.stack([0.5 * xs[:, 0] - 0.1, 0.3 * xs[:, 0] + 0.1], 1).unsqueeze(-1)
        l0.coef.copy_(curve_to_coef(xs.expand(-1, 2), y0, l0.knots, l0.spline_order))
        l1.coef.copy_(curve_to_coef(xs, (2 * xs + 0.5).unsqueeze(-1), l1.knots, l1.spline_order))
        for la in (l0, l1):
            la.scale_spline.fill_(1.0)
    return model


def test_auto_symbolic_installs_canonical_constants():
    # Per-edge fits of a line come out as c*(a*x + b) + d with tiny a and huge b, d that cancel
    # (the LBFGS fit of the recipe then stalls on them); auto_symbolic now installs (1, 0, c, d)
    # with the hidden node's constant passed on, and the same function.
    model = linear_chain_model()
    x = rand(300, 2, seed=4)
    with torch.no_grad():
        before = model(x)
    kl.auto_symbolic(model, x, lib=["x", "x^2", "exp"])
    l0, l1 = model.layers
    assert set(l0.symbolic_edges().values()) == {"x"} and set(l1.symbolic_edges().values()) == {"x"}
    p0 = l0.symbolic_affine.detach()[:, 0]  # (in, 4) of the edges into hidden node 0
    torch.testing.assert_close(p0[:, :2], torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=F64))
    assert float(p0[:, 3].abs().max()) == 0.0  # passed on to the next edge's b
    assert abs(float(p0[0, 2] / p0[1, 2]) - 0.5 / 0.3) < 1e-4  # (the scale may move to layer 1)
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, rtol=0, atol=1e-6)
    formula = kl.symbolic_formula(model, precision=None)
    truth = 2 * (0.5 * x[:, 0] - 0.1 + 0.3 * x[:, 1] + 0.1) + 0.5
    assert np.abs(formula(x)[:, 0] - truth.numpy()).max() < 1e-6
