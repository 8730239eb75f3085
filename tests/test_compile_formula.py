"""compile_formula: a formula becomes a KAN of symbolic edges and multiplication nodes that
evaluates it to rounding (float64), refuses what it cannot represent, trains on as splines, and
round-trips through save/load.

Oracles: the Feynman table's own formula evaluator (an ``ast`` interpreter on numpy, independent of
sympy and of the compiler) and ``sympy.lambdify``. Exactness is the module's criterion:
``|f_kan - f| <= 1e-12 * max(|f|, rms(f))`` on random points in range (rms over those points).
(``tests/test_compile.py`` is about compiling the CPU kernels, hence this file's name.)
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import kanlab as kl
from kanlab.compile import compile_formula, splines_from_symbolic
from kanlab.datasets.feynman import evaluate_formula, load_table

sp = pytest.importorskip("sympy")

RTOL = 1e-12

# 26 rows of the Feynman table: sums, products of up to 9 variables, quotients, nested quotients
# (I.27.6, II.11.28), powers (squares to 1/x^5 and half powers), exp, log, sin, cos, tanh, arcsin,
# and shared subexpressions (I.41.16, II.35.18, III.4.33).
FEYNMAN = [
    "I.6.2a", "I.6.2", "I.6.2b", "I.9.18", "I.10.7", "I.11.19", "I.12.11", "I.13.12",
    "I.15.3x", "I.16.6", "I.18.4", "I.24.6", "I.26.2", "I.27.6", "I.30.3", "I.34.14",
    "I.37.4", "I.40.1", "I.41.16", "I.44.4", "II.6.15a", "II.11.28", "II.35.18", "II.35.21",
    "III.10.19", "III.19.51",
]  # fmt: skip


def _row(name: str):
    return next(r for r in load_table() if r.filename == name)


def _points(ranges, n: int = 256, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    lo = torch.tensor([a for a, _ in ranges], dtype=torch.float64)
    hi = torch.tensor([b for _, b in ranges], dtype=torch.float64)
    return lo + (hi - lo) * torch.rand(n, len(ranges), generator=gen, dtype=torch.float64)


def _rel_err(model, x: torch.Tensor, f: np.ndarray) -> float:
    """max |f_kan - f| / max(|f|, rms(f)) over the points (the module's criterion)."""
    with torch.no_grad():
        got = model(x)[:, 0].numpy()
    f = np.broadcast_to(np.asarray(f, dtype=np.float64), got.shape)
    scale = np.maximum(np.abs(f), np.sqrt(np.mean(f**2)))
    return float(np.max(np.abs(got - f) / scale))


def _sympy_err(model, expr, symbols, ranges, n: int = 256) -> float:
    shared = isinstance(ranges[0], int | float)  # one (low, high) pair for all variables
    x = _points([ranges] * len(symbols) if shared else ranges, n)
    f = sp.lambdify(symbols, expr, "numpy")(*x.numpy().T)
    return _rel_err(model, x, f)


def test_feynman_list_is_long_enough():
    assert len(set(FEYNMAN)) >= 20
    assert {r.filename for r in load_table()} >= set(FEYNMAN)


@pytest.mark.parametrize("name", FEYNMAN)
def test_feynman_equation_is_exact(name):
    """Each equation, compiled from its table string on its own ranges, matches the table's own
    evaluator to 1e-12 relative on 256 random in-range points (other points than the compiler's);
    every live edge is symbolic."""
    row = _row(name)
    model = compile_formula(row.formula, row.variables, row.ranges, n_samples=100)
    x = _points(row.ranges)
    f = evaluate_formula(row.formula, {v: x[:, i].numpy() for i, v in enumerate(row.variables)})
    assert np.all(np.isfinite(f))
    assert _rel_err(model, x, f) <= RTOL
    for layer in model.layers:
        live = layer.mask > 0
        assert bool(live.any())
        assert torch.equal(live, layer.symbolic_mask > 0)


def test_products_use_multiplication_nodes_and_library_powers():
    """x*y is one multiplication node of arity 2 fed by identity edges; x/y feeds it x and 1/y;
    x*y*z is one node of arity 3, or a tree of binary products with max_arity=2."""
    x, y, z = sp.symbols("x y z")
    m = compile_formula(x * y, [x, y], (-2, 2))
    assert m.config.widths == (2, (0, 1))
    assert m.mult_arity == [[], [2]]
    assert m.layers[0].symbolic_edges() == {(0, 0): "x", (1, 1): "x"}
    m = compile_formula(x / y, [x, y], (0.5, 2))
    assert m.layers[0].symbolic_edges() == {(0, 0): "x", (1, 1): "1/x"}
    assert compile_formula(x * y * z, [x, y, z], (-1, 1)).mult_arity == [[], [3]]
    m2 = compile_formula(x * y * z, [x, y, z], (-1, 1), max_arity=2)
    assert m2.mult_arity == [[], [2], [2]]
    for model, e in [(m, x / y), (m2, x * y * z)]:
        assert _sympy_err(model, e, [x, y, z][: model.widths[0]], (0.5, 2)) <= RTOL


def test_nested_functions():
    """exp(sin(pi x) + y^2) is the paper's [2, 1, 1]: sin and x^2 into one sum, exp after it."""
    x, y = sp.symbols("x y")
    e = sp.exp(sp.sin(sp.pi * x) + y**2)
    m = compile_formula(e, [x, y], (-1, 1))
    assert m.config.widths == (2, 1, 1)
    assert m.layers[0].symbolic_edges() == {(0, 0): "sin", (1, 0): "x^2"}
    assert m.layers[1].symbolic_edges() == {(0, 0): "exp"}
    assert float(m.layers[0].symbolic_affine[0, 0, 0].detach()) == pytest.approx(np.pi, abs=0)
    assert _sympy_err(m, e, [x, y], (-1, 1)) <= RTOL
    deeper = sp.log(2 + sp.cos(sp.exp(x) * y)) + sp.tanh(sp.sqrt(x + 2))
    m = compile_formula(deeper, [x, y], (-1, 1))
    assert _sympy_err(m, deeper, [x, y], (-1, 1)) <= RTOL


def test_constants():
    """A constant formula, constant factors and offsets (pi, E, sqrt(2)), constant powers 2**x."""
    x, y = sp.symbols("x y")
    m = compile_formula(sp.Rational(7, 2), [x, y], (-1, 1))
    with torch.no_grad():
        out = m(_points([(-1, 1)] * 2, 10))
    assert torch.equal(out, torch.full((10, 1), 3.5, dtype=torch.float64))
    for e in [sp.pi * x + sp.E, sp.sqrt(2) * (x - y) / (2 * sp.sqrt(sp.pi)) - 1, 2**x, x**y]:
        m = compile_formula(e, [x, y], (0.5, 2))
        assert _sympy_err(m, e, [x, y], (0.5, 2)) <= RTOL, e


def test_shared_input_and_skipped_layers():
    """x + sin(x) reads x twice (one edge per pair: a second node), a variable the formula does not
    use keeps its input with no live edge, and shallow values are carried by identity edges."""
    x, y, w = sp.symbols("x y w")
    e = x + sp.sin(x) + sp.exp(sp.cos(y * x)) * y
    m = compile_formula(e, [x, y, w], (-1, 1))
    assert _sympy_err(m, e, [x, y, w], (-1, 1)) <= RTOL
    assert not bool(m.layers[0].mask[2].any())  # w: no edge
    names = [set(la.symbolic_edges().values()) for la in m.layers]
    assert "x" in set().union(*names[1:])  # carried values


def test_string_and_sympy_give_the_same_model():
    x, y = sp.symbols("x y")
    text = "exp(-x**2/2)*arcsin(y)/(1 + x*y) + ln(2 + x)"
    e = sp.exp(-(x**2) / 2) * sp.asin(y) / (1 + x * y) + sp.log(2 + x)
    a = compile_formula(text, ["x", "y"], [(-0.5, 0.5), (-0.9, 0.9)])
    b = compile_formula(e, [x, y], [(-0.5, 0.5), (-0.9, 0.9)])
    assert a.config == b.config
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert _sympy_err(a, e, [x, y], [(-0.5, 0.5), (-0.9, 0.9)]) <= RTOL


def test_symbolic_formula_reads_back_the_expression():
    """A sum-only compiled model's symbolic_formula (full precision) equals the input formula."""
    x, y = sp.symbols("x_1 x_2", real=True)
    e = sp.exp(sp.sin(sp.pi * x) + y**2) + 3 * sp.cos(2 * y + 1)
    m = compile_formula(e, [x, y], (-1, 1))
    got = kl.symbolic_formula(m, precision=None)[0]
    assert _sympy_err(m, got, [x, y], (-1, 1)) <= RTOL
    x_test = _points([(-1, 1)] * 2, 64).numpy()
    want = sp.lambdify([x, y], e)(*x_test.T)
    back = sp.lambdify([x, y], got)(*x_test.T)
    assert np.max(np.abs(back - want)) <= 1e-12 * np.max(np.abs(want))


@pytest.mark.parametrize(
    ("text", "rounded"),
    [("x*y", "x_1*x_2"), ("x*y/z", "x_1*x_2/x_3"), ("z*exp(sin(pi*x) + y**2)", None),
     ("(x + y)/(1 + x*y)", None)],
)  # fmt: skip
def test_symbolic_formula_of_compiled_products(text, rounded):
    """A compiled model with multiplication nodes reads back as products: the full-precision
    formula evaluates to the input formula (1e-12 relative) and, where the rounding of the default
    precision is exact, the default formula is the expression itself."""
    names = ["x", "y", "z"]
    m = compile_formula(text, names, (0.5, 2.0))
    assert m.has_mult
    formula = kl.symbolic_formula(m, precision=None)
    x_test = _points([(0.5, 2.0)] * 3, 64).numpy()
    want = sp.lambdify(sp.symbols(names), sp.sympify(text))(*x_test.T)
    got = formula(x_test)[:, 0]
    assert np.max(np.abs(got - want)) <= 1e-12 * np.max(np.abs(want))
    if rounded is not None:
        expr = kl.symbolic_formula(m)[0]
        diff = expr.subs({s: sp.Symbol(s.name) for s in expr.free_symbols})
        assert sp.simplify(diff - sp.sympify(rounded)) == 0, expr


def test_function_outside_the_library_is_refused():
    x, y = sp.symbols("x y")
    with pytest.raises(ValueError, match=r"besselj is not in the symbolic library.*exp.*sin"):
        compile_formula(sp.besselj(0, 20 * x) + y**2, [x, y], (-1, 1))
    with pytest.raises(ValueError, match="sinh"):
        compile_formula("sinh(x)", ["x"], (-1, 1))
    with pytest.raises(ValueError, match="foo"):
        compile_formula("foo(x)", ["x"], (-1, 1))


def test_inexact_on_the_ranges_is_refused():
    """Where a layer's singularity-safe variant would clamp, or the formula is undefined, the
    compiler refuses instead of approximating: sqrt reaching 0 at a corner of I.8.14, log of
    negative values, 1/x across a pole."""
    row = _row("I.8.14")
    with pytest.raises(ValueError, match=r"sqrt.*singularity-safe"):
        compile_formula(row.formula, row.variables, row.ranges)
    with pytest.raises(ValueError, match=r"log\(x\).*undefined"):
        compile_formula("log(x)", ["x"], (-1, 1))
    with pytest.raises(ValueError, match="undefined"):
        compile_formula("1/x", ["x"], (-1, 1))
    ok = compile_formula("1/x", ["x"], (0.1, 1))  # the same function away from the pole
    assert _sympy_err(ok, 1 / sp.Symbol("x"), ["x"], (0.1, 1)) <= RTOL


def test_bad_arguments_name_the_problem():
    x, y = sp.symbols("x y")
    with pytest.raises(ValueError, match="not variables: y"):
        compile_formula(x + y, [x], (-1, 1))
    with pytest.raises(ValueError, match="repeated: x"):
        compile_formula(x, ["x", "x"], (-1, 1))
    with pytest.raises(ValueError, match="2 pairs"):
        compile_formula(x + y, [x, y], [(-1, 1), (0, 1), (0, 2)])
    with pytest.raises(ValueError, match="low < high"):
        compile_formula(x, [x], (1, -1))
    with pytest.raises(TypeError, match="expr must be"):
        compile_formula([x], [x], (-1, 1))
    with pytest.raises(ValueError, match="max_arity must be >= 2"):
        compile_formula(x * y, [x, y], (-1, 1), max_arity=1)
    with pytest.raises(ValueError, match="cannot parse"):
        compile_formula("x +* (", ["x"], (-1, 1))


def test_save_load_round_trip(tmp_path):
    """A compiled model with multiplication nodes and carried values saves and loads to equal
    outputs."""
    pytest.importorskip("safetensors")
    row = _row("I.41.16")
    model = compile_formula(row.formula, row.variables, row.ranges, n_samples=50)
    assert model.has_mult
    kl.save(model, tmp_path / "m.safetensors")
    back = kl.load(tmp_path / "m.safetensors")
    x = _points(row.ranges, 64)
    with torch.no_grad():
        assert torch.equal(back(x), model(x))


@pytest.mark.slow  # 3-10 s on a loaded 2-core machine, most of it the first float64 fit
def test_to_splines_then_fit():
    """The edges switched to splines (grid 20, fitted to each edge's function on its node's range)
    approximate the formula; two LBFGS steps lower the loss."""
    u, v = sp.symbols("u v")
    e = (u + v) / (1 + u * v)  # the paper's relativistic velocity addition: products, 1/x
    rng = [(-0.8, 0.8), (-0.8, 0.8)]
    model = compile_formula(e, [u, v], rng, grid_size=20, to_splines=True, n_samples=500)
    assert all(la.symbolic_edges() == {} for la in model.layers)
    f = sp.lambdify([u, v], e)

    def target(x: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(f(x[:, 0].numpy(), x[:, 1].numpy())).unsqueeze(1)

    ds = kl.datasets.from_function(target, 2, n_train=200, n_test=400, ranges=rng,
                                   dtype=torch.float64, seed=3)  # fmt: skip
    with torch.no_grad():
        rmse = float(((model(ds.test_x) - ds.test_y) ** 2).mean().sqrt())
    assert rmse <= 1e-5 * float(ds.test_y.std())  # measured ~5e-7 of the std
    hist = kl.fit(model, ds, steps=2, progress=False, grid_update_every=0)
    assert hist.train_loss[-1] < hist.train_loss[0]


def test_splines_from_symbolic_keeps_numeric_edges():
    """On a KAN with one symbolic edge among numeric ones: the numeric edges keep their function
    (refitted on the new grid), the symbolic edge becomes a close spline; the output barely moves."""
    model = kl.KAN([2, 3, 1], grid_size=10, seed=0, dtype=torch.float64)
    model.layers[0].set_symbolic(0, 1, "sin", (2.0, 0.5, 0.7, 0.1))
    x = _points([(-1, 1)] * 2, 400)
    with torch.no_grad():
        before, edges_before = model(x), model.layers[0].activations(x)
    splines_from_symbolic(model, x)
    assert model.layers[0].symbolic_edges() == {}
    assert float(model.layers[0].scale_base[0, 1].detach()) == 0.0
    with torch.no_grad():
        after, edges_after = model(x), model.layers[0].activations(x)
    sym_edge = edges_before[:, 1, 0]  # 0.7 sin(2x + 0.5) + 0.1 as a spline on 10 intervals
    assert float((edges_after[:, 1, 0] - sym_edge).abs().max()) <= 1e-3 * float(
        sym_edge.abs().max()
    )
    assert float((after - before).abs().max()) <= 3e-2 * float(before.abs().max())
    with pytest.raises(ValueError, match="shape"):
        splines_from_symbolic(model, torch.zeros(4, 3, dtype=torch.float64))
