"""Evaluation of symbolic edges (kanlab._symbolic_eval, kernels.symbolic_cpu): both paths against a
naive per-edge loop, gradcheck, the derivative records against autograd, save/load."""

from __future__ import annotations

import math

import pytest
import torch

import kanlab as kl
from kanlab import _symbolic_eval, kernels
from kanlab.functions import SymbolicFunction, get_function, library

F64 = torch.float64
BUILTIN = [f.name for f in kl.functions._BUILTIN]


@pytest.fixture(params=["fused", "torch"])
def path(request):
    """Run the test on the fused CPU kernels (needs Numba) and on the torch-op path."""
    if request.param == "fused":
        pytest.importorskip("numba")
        kernels.set_backend("numba")
    else:
        kernels.set_backend("reference")
    yield request.param
    kernels.set_backend(None)


def rand(*shape, seed=0, lo=-1.0, hi=1.0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=g, dtype=dtype) * (hi - lo) + lo


def mixed_layer(names, n_in=4, n_out=5, seed=0, dtype=F64, numeric_left=0):
    """A layer whose edges cycle through ``names`` (the last ``numeric_left`` stay splines), with
    random affine constants and a mask with a pruned and a half-weighted edge."""
    layer = kl.KANLinear(n_in, n_out, dtype=dtype, generator=torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(seed + 1)
    edges = [(i, o) for i in range(n_in) for o in range(n_out)]
    for k, (i, o) in enumerate(edges[: len(edges) - numeric_left]):
        a, b, c, d = (torch.rand(4, generator=g) * 1.6 - 0.8).tolist()
        layer.set_symbolic(i, o, names[k % len(names)], (a + math.copysign(0.5, a), b, c, d))
    with torch.no_grad():
        layer.mask[0, 0] = 0.0
        layer.mask[1, n_out - 1] = 0.5
    return layer


def naive_sum(layer, x):
    """Symbolic part of ``layer(x)`` edge by edge, autograd through each ``forward_fn``."""
    y = x.new_zeros(x.shape[0], layer.out_features)
    cols = [y[:, o] for o in range(layer.out_features)]
    for (i, o), name in layer.symbolic_edges().items():
        a, b, c, d = layer.symbolic_affine[i, o]
        f = get_function(name).forward_fn(a * x[:, i] + b)
        cols[o] = cols[o] + layer.mask[i, o] * (c * f + d)
    return torch.stack(cols, dim=1)


def assert_matches_naive(layer, x, y, ref):
    """y and the gradients of y.sum() w.r.t. x and the affine parameters equal the naive loop's."""
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)
    g = torch.autograd.grad(y.sum(), (x, layer.symbolic_affine))
    r = torch.autograd.grad(ref.sum(), (x, layer.symbolic_affine))
    for u, v in zip(g, r, strict=True):
        torch.testing.assert_close(u, v, rtol=1e-12, atol=1e-12)


def _numeric_activations(layer, x):
    phi = kernels.edge_values(
        x, layer.knots, layer.coef * layer.scale_spline.unsqueeze(1), layer.spline_order,
        uniform=layer._uniform,
    )  # fmt: skip
    base = kl.layers.ACTIVATIONS[layer.base_activation](x)
    return (phi + base.unsqueeze(1) * layer.scale_base.T) * layer.mask.T


# ---------------------------------------------------------------------- values and gradients
@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_symbolic_sum_matches_naive_loop_for_every_builtin(path, dtype):
    names = BUILTIN  # 29 functions, "0" included, over 7 x 5 = 35 edges
    layer = mixed_layer(names, n_in=7, n_out=5, dtype=dtype)
    x = rand(64, 7, seed=2, lo=-1.5, hi=1.5, dtype=dtype).requires_grad_(True)
    y = layer.symbolic(x, layer.mask)
    ref = naive_sum(layer, x)
    tol = {"rtol": 1e-10, "atol": 1e-10} if dtype == F64 else {"rtol": 2e-5, "atol": 2e-5}
    torch.testing.assert_close(y, ref, **tol)
    w = rand(64, 5, seed=3, dtype=dtype)  # a generic upstream gradient
    gx, ga = torch.autograd.grad((y * w).sum(), (x, layer.symbolic_affine))
    rx, ra = torch.autograd.grad((ref * w).sum(), (x, layer.symbolic_affine))
    torch.testing.assert_close(gx, rx, **tol)
    torch.testing.assert_close(ga, ra, **tol)
    assert (layer.symbolic.fn >= 0).all()  # every edge symbolic


def test_paths_agree_and_fused_runs_where_numba_does():
    pytest.importorskip("numba")
    layer = mixed_layer(["sin", "x^2", "exp", "tanh", "x", "0"], numeric_left=3)
    x = rand(50, 4, seed=4)
    assert _symbolic_eval._fused_ok(x)
    outs = {}
    for backend in ("numba", "reference"):
        kernels.set_backend(backend)
        try:
            xx = x.clone().requires_grad_(True)
            y = layer(xx)
            y.pow(2).sum().backward()
            outs[backend] = (y.detach(), xx.grad, layer.symbolic_affine.grad.clone())
            layer.zero_grad()
            assert _symbolic_eval._fused_ok(x) == (backend == "numba")
        finally:
            kernels.set_backend(None)
    for u, v in zip(outs["numba"], outs["reference"], strict=True):
        torch.testing.assert_close(u, v, rtol=1e-10, atol=1e-10)


def test_layer_forward_is_numeric_plus_symbolic_and_numeric_params_get_no_gradient(path):
    layer = mixed_layer(["sin", "x^3", "gaussian"], numeric_left=6)
    x = rand(40, 4, seed=5)
    y = layer(x)
    torch.testing.assert_close(
        y, naive_sum(layer, x) + _numeric_activations(layer, x).mul((1 - layer.symbolic_mask).T)
        .sum(-1), rtol=1e-10, atol=1e-10,
    )  # fmt: skip
    y.sum().backward()
    sym = layer.symbolic_mask > 0
    assert float(layer.scale_base.grad[sym].abs().sum()) == 0.0
    assert float(layer.coef.grad.permute(0, 2, 1)[sym].abs().sum()) == 0.0
    # pruned symbolic edge: no gradient for its constants
    assert float(layer.symbolic_affine.grad[0, 0].abs().sum()) == 0.0


def test_gradcheck_mixed_layer(path):
    layer = mixed_layer(["tanh", "x^2", "sin", "1/x", "x", "sqrt", "0"], n_in=3, n_out=3)
    x = rand(6, 3, seed=6).requires_grad_(True)
    aff = layer.symbolic_affine.detach().clone().requires_grad_(True)

    def f(xx, a):
        return torch.func.functional_call(layer, {"symbolic.affine": a}, (xx,))

    assert torch.autograd.gradcheck(f, (x, aff))


def test_registered_function_without_derivative_and_identity_like_functions(path):
    def cube_plus(z):
        return z**3 + z

    def passthrough(z):  # returns its argument itself: must not be overwritten later
        return z

    fns = [
        SymbolicFunction("test_cube_plus", cube_plus, lambda s: s**3 + s, 3),
        SymbolicFunction("test_passthrough", passthrough, lambda s: s, 1),
    ]
    for fn in fns:
        kl.functions.register_function(fn)
    try:
        layer = mixed_layer(["test_cube_plus", "test_passthrough", "sin"], n_in=3, n_out=4)
        x = rand(30, 3, seed=7).requires_grad_(True)
        y = layer.symbolic(x, layer.mask)
        ref = naive_sum(layer, x)
        assert_matches_naive(layer, x, y, ref)
    finally:
        for fn in fns:
            kl.functions.unregister_function(fn.name)


def test_backward_twice_with_retained_graph_and_empty_batch(path):
    layer = mixed_layer(["exp", "x", "cos"], n_in=2, n_out=3)
    x = rand(20, 2, seed=8).requires_grad_(True)
    y = layer.symbolic(x, layer.mask)
    g1 = torch.autograd.grad(y.sum(), x, retain_graph=True)[0]
    g2 = torch.autograd.grad(y.sum(), x)[0]
    assert torch.equal(g1, g2)
    empty = torch.zeros(0, 2, dtype=F64, requires_grad=True)
    out = layer(empty)
    assert out.shape == (0, 3)
    out.sum().backward()
    assert empty.grad.shape == (0, 2)


def test_second_derivatives_on_both_paths(path):
    """Second derivatives through symbolic edges are right on both paths (the fused path's
    backward used to be a constant to autograd: a Hessian came out silently 0 or raised):
    against the naive per-edge sum, and gradgradcheck in float64 in x and the constants."""
    layer = mixed_layer(["sin", "x^2", "exp", "tanh", "x"], n_in=2, n_out=3)
    x = rand(5, 2, seed=9).requires_grad_(True)
    (g,) = torch.autograd.grad(layer.symbolic(x, layer.mask).sum(), x, create_graph=True)
    (h,) = torch.autograd.grad(g.pow(2).sum(), x)
    (r,) = torch.autograd.grad(
        torch.autograd.grad(naive_sum(layer, x).sum(), x, create_graph=True)[0].pow(2).sum(), x
    )
    torch.testing.assert_close(h, r)
    assert float(h.abs().max()) > 0
    aff = layer.symbolic_affine.detach().clone().requires_grad_(True)

    def f(xx, a):
        return torch.func.functional_call(layer, {"symbolic.affine": a}, (xx,))

    assert torch.autograd.gradgradcheck(f, (x.detach().requires_grad_(True), aff))


def test_hessian_of_a_kan_with_numeric_and_symbolic_edges_matches_reference():
    """A whole KAN (spline edges and symbolic edges in one layer, then a second layer): the Hessian
    of its output in x on the Numba kernels equals the reference kernels' (the symbolic part's
    second derivative was dropped on the fused path while the spline part's kept the graph)."""
    pytest.importorskip("numba")
    model = kl.KAN([2, 3, 1], seed=0, dtype=F64)
    model.layers[0].set_symbolic(0, 1, "sin", (2.0, 0.1, 1.5, 0.0))
    model.layers[0].set_symbolic(1, 2, "x^2", (1.0, 0.0, 0.7, 0.2))
    x0 = rand(4, 2, seed=10)

    def hessians():
        x = x0.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(model(x).sum(), x, create_graph=True)
        rows = [torch.autograd.grad(g[:, i].sum(), x, retain_graph=True)[0] for i in range(2)]
        return torch.stack(rows, 1)  # (batch, 2, 2): the per-sample Hessians

    hs = {}
    for backend in ("numba", "reference"):
        kernels.set_backend(backend)
        try:
            hs[backend] = hessians()
        finally:
            kernels.set_backend(None)
    torch.testing.assert_close(hs["numba"], hs["reference"], rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------- derivative records
@pytest.mark.parametrize("name", list(library()))
def test_derivative_record_matches_autograd_of_forward_fn(name):
    fn = get_function(name)
    g = torch.Generator().manual_seed(10)
    special = [0.0, -0.0, 1e-4, -1e-4, 5e-5, 1 - 1e-4, -1 + 1e-4, 1.0, -1.0, 80.0, 81.0, -81.0]
    z = torch.cat(
        [
            torch.randn(500, generator=g, dtype=F64) * 3,
            torch.tensor([*special, math.nan], dtype=F64),
        ]
    ).requires_grad_(True)
    f = fn.forward_fn(z)
    (auto,) = torch.autograd.grad(f.sum(), z) if f.requires_grad else (torch.zeros_like(z),)
    assert fn.derivative is not None
    d = torch.as_tensor(fn.derivative(z.detach(), f.detach()), dtype=F64).expand_as(z)
    torch.testing.assert_close(d, auto, rtol=1e-12, atol=1e-12, equal_nan=True)


# ---------------------------------------------------------------------- state
def test_save_load_round_trip_with_symbolic_edges_is_bit_identical(tmp_path):
    model = kl.KAN([3, 4, 2], seed=1, dtype=F64)
    for k, (i, o) in enumerate([(0, 0), (1, 2), (2, 3), (0, 3)]):
        model.layers[0].set_symbolic(i, o, ["sin", "x^2", "exp", "x"][k], (1.1, 0.2, 0.7, -0.1))
    model.layers[1].set_symbolic(2, 1, "tanh", (0.9, 0.0, 1.3, 0.4))
    path = tmp_path / "m.safetensors"
    kl.save(model, path)
    loaded = kl.load(path)
    x = rand(32, 3, seed=11)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert loaded.layers[0].symbolic_edges() == model.layers[0].symbolic_edges()


def test_derivative_field_must_be_callable():
    with pytest.raises(TypeError, match="derivative"):
        SymbolicFunction("bad", torch.sin, lambda s: s, 2, derivative="cos")


# ---------------------------------------------------------------------- caches and layouts
def _reference_forward(layer, x):
    """layer(x) from the definitions: numeric edges (masked, symbolic ones off) + naive symbolic."""
    keep = (1 - layer.symbolic_mask).T if layer.symbolic_mask is not None else 1.0
    return _numeric_activations(layer, x).mul(keep).sum(-1) + naive_sum(layer, x)


def test_forward_follows_in_place_edits_of_mask_and_affine(path):
    """The cached numeric mask and host index never serve stale values: in-place edits of the
    mask and the affine table, set/unset_symbolic between forwards all show up."""
    layer = mixed_layer(["sin", "tanh", "x^2"], numeric_left=7)
    x = rand(30, 4, seed=12)
    torch.testing.assert_close(layer(x), _reference_forward(layer, x), rtol=1e-10, atol=1e-10)
    with torch.no_grad():
        layer.mask[2, 3] = 0.0  # a numeric edge (numeric_left=7: the last edges)
        layer.mask[0, 1] = 0.25  # a symbolic edge
        layer.symbolic_affine[0, 2] *= 1.5
    torch.testing.assert_close(layer(x), _reference_forward(layer, x), rtol=1e-10, atol=1e-10)
    layer.set_symbolic(3, 4, "exp", (0.5, 0.1, 0.3, -0.2))
    layer.unset_symbolic(0, 2)
    y = layer(x)
    assert (3, 4) in layer.symbolic_edges() and (0, 2) not in layer.symbolic_edges()
    torch.testing.assert_close(y, _reference_forward(layer, x), rtol=1e-10, atol=1e-10)
    layer.mask = torch.ones_like(layer.mask)  # a new tensor (same version number possible)
    torch.testing.assert_close(layer(x), _reference_forward(layer, x), rtol=1e-10, atol=1e-10)


def test_load_state_dict_refreshes_caches(path):
    src = mixed_layer(["cos", "x"], numeric_left=8, seed=3)
    dst = mixed_layer(["sigmoid", "gaussian", "x^2"], numeric_left=2, seed=4)
    x = rand(25, 4, seed=13)
    dst(x)  # fill dst's caches
    dst.load_state_dict(src.state_dict())
    with torch.no_grad():
        assert torch.equal(dst(x), src(x))


def test_inference_mode_forward_does_not_poison_training():
    layer = mixed_layer(["sin", "x"], numeric_left=6)
    x = rand(20, 4, seed=14)
    with torch.inference_mode():
        y0 = layer(x)
    y = layer(x)  # must not reuse an inference tensor in the graph
    y.pow(2).sum().backward()
    assert torch.equal(y.detach(), y0)
    assert layer.scale_base.grad is not None and layer.symbolic_affine.grad is not None


def test_re_registered_function_is_picked_up(path):
    name = "test_swap"
    kl.functions.register_function(SymbolicFunction(name, torch.sin, lambda s: s, 2))
    try:
        layer = mixed_layer([name, "tanh"], n_in=2, n_out=3)
        x = rand(15, 2, seed=15).requires_grad_(True)
        layer.symbolic(x, layer.mask)  # plans the groups with the first record
        kl.functions.register_function(
            SymbolicFunction(name, torch.cos, lambda s: s, 2), overwrite=True
        )
        y = layer.symbolic(x, layer.mask)
        ref = naive_sum(layer, x)  # resolves the name now: cos
        assert_matches_naive(layer, x, y, ref)
    finally:
        kl.functions.unregister_function(name)


def test_base_is_added_and_gets_the_upstream_gradient(path):
    layer = mixed_layer(["exp", "sigmoid", "gaussian", "x^2", "0"], n_in=3, n_out=4)
    x = rand(70, 3, seed=16).requires_grad_(True)
    base = rand(70, 4, seed=17).requires_grad_(True)
    y = layer.symbolic(x, layer.mask, base=base)
    torch.testing.assert_close(y, base + naive_sum(layer, x), rtol=1e-12, atol=1e-12)
    w = rand(70, 4, seed=18)
    gb, gx = torch.autograd.grad((y * w).sum(), (base, x))
    assert torch.equal(gb, w)
    (rx,) = torch.autograd.grad((naive_sum(layer, x) * w).sum(), x)
    torch.testing.assert_close(gx, rx, rtol=1e-10, atol=1e-10)


def test_non_contiguous_and_batched_inputs_match_contiguous(path):
    layer = mixed_layer(["sin", "tanh", "x"], numeric_left=5)
    wide = rand(600, 8, seed=19)  # > one kernel block of samples, odd strides below
    x = wide[:, ::2]  # (600, 4) non-contiguous
    assert not x.is_contiguous()
    with torch.no_grad():  # the symbolic part exactly; the whole layer to rounding (BLAS)
        assert torch.equal(
            layer.symbolic(x, layer.mask), layer.symbolic(x.contiguous(), layer.mask)
        )
        torch.testing.assert_close(layer(x), layer(x.contiguous()), rtol=1e-12, atol=1e-12)
        x3 = x.contiguous().reshape(20, 30, 4)
        torch.testing.assert_close(layer(x3).reshape(600, -1), layer(x), rtol=1e-12, atol=1e-12)
