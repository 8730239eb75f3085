"""KANLinear: oracle against a naive per-edge reference, gradcheck, grid invariants, bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import kanlab as kl
from kanlab.splines import bspline_basis, uniform_knots


def make_layer(n_in=3, n_out=4, *, k=3, g=5, seed=0, dtype=torch.float64, **kw) -> kl.KANLinear:
    gen = torch.Generator().manual_seed(seed)
    layer = kl.KANLinear(n_in, n_out, grid_size=g, spline_order=k, generator=gen, dtype=dtype, **kw)
    with torch.no_grad():  # non-trivial scales and coefficients
        layer.scale_spline.uniform_(0.5, 1.5, generator=gen)
        layer.coef.normal_(0, 1, generator=gen)
    return layer


def naive_forward(layer: kl.KANLinear, x: torch.Tensor) -> torch.Tensor:
    """phi_{o,i}(x_i) = mask * (w_b * silu(x_i) + w_s * sum_g c B_g(x_i)), summed per node, by loops."""
    basis = bspline_basis(x, layer.knots, layer.spline_order)  # (batch, in, G+k)
    out = torch.zeros(x.shape[0], layer.out_features, dtype=x.dtype)
    for o in range(layer.out_features):
        for i in range(layer.in_features):
            spline = basis[:, i, :] @ layer.coef[i, :, o]
            phi = layer.scale_base[i, o] * F.silu(x[:, i]) + layer.scale_spline[i, o] * spline
            out[:, o] += layer.mask[i, o] * phi
    return out


def data(n=64, n_in=3, seed=1, lo=-1.0, hi=1.0, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return lo + (hi - lo) * torch.rand(n, n_in, generator=g, dtype=dtype)


def test_in_place_mask_edit_is_seen_by_forward_and_gradients() -> None:
    """forward skips the mask products while the mask is all ones (a cached host flag): an
    in-place edit of the mask (as pruning does) must switch it back, values and gradients."""
    layer = kl.KANLinear(3, 4, grid_size=5, dtype=torch.float64)
    x = data()
    torch.testing.assert_close(layer(x), naive_forward(layer, x), atol=1e-12, rtol=1e-12)
    with torch.no_grad():
        layer.mask[1, 2] = 0.0
    torch.testing.assert_close(layer(x), naive_forward(layer, x), atol=1e-12, rtol=1e-12)
    layer(x).sum().backward()
    assert layer.scale_spline.grad[1, 2] == 0 and layer.scale_base.grad[1, 2] == 0
    assert layer.scale_spline.grad[0, 2] != 0


@pytest.mark.parametrize("k", [0, 1, 2, 3, 5])
def test_forward_matches_naive_reference(k: int) -> None:
    layer = make_layer(k=k)
    layer.mask[1, 2] = 0.0
    x = data(lo=-1.6, hi=1.6)  # includes the extension zones and beyond
    torch.testing.assert_close(layer(x), naive_forward(layer, x), atol=1e-12, rtol=1e-12)


def test_forward_matches_naive_after_update_grid() -> None:
    layer = make_layer()
    x = data(n=200) ** 3
    layer.update_grid(x)
    assert not layer._uniform
    torch.testing.assert_close(layer(x), naive_forward(layer, x), atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("adapted", [False, True])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_gradcheck_inputs_and_parameters(k: int, adapted: bool) -> None:
    layer = make_layer(n_in=2, n_out=2, k=k, g=4)
    x = data(n=12, n_in=2, seed=5)
    if adapted:
        layer.update_grid(data(n=100, n_in=2, seed=6) ** 3)
    names = ("coef", "scale_base", "scale_spline")

    def fn(x, *params):
        return torch.func.functional_call(layer, dict(zip(names, params, strict=True)), (x,))

    inputs = (x, *(getattr(layer, n).detach().clone() for n in names))
    inputs = tuple(t.requires_grad_(True) for t in inputs)
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7)


def test_activations_sum_to_forward_and_shapes() -> None:
    layer = make_layer(n_in=3, n_out=5)
    x = data(n=40, lo=-1.3, hi=1.3)
    acts = layer.activations(x)
    assert acts.shape == (40, 5, 3)
    torch.testing.assert_close(acts.sum(-1), layer(x), atol=1e-12, rtol=1e-12)
    # edge (o=2, i=1) alone, by hand
    basis = bspline_basis(x, layer.knots, 3)
    phi = layer.scale_base[1, 2] * F.silu(x[:, 1]) + layer.scale_spline[1, 2] * (
        basis[:, 1] @ layer.coef[1, :, 2]
    )
    torch.testing.assert_close(acts[:, 2, 1], phi)


def test_leading_dimensions() -> None:
    layer = make_layer(n_in=3, n_out=2)
    x = data(n=24).reshape(2, 4, 3, 3)
    y = layer(x)
    assert y.shape == (2, 4, 3, 2)
    torch.testing.assert_close(y.reshape(-1, 2), layer(x.reshape(-1, 3)))
    assert layer.activations(x).shape == (2, 4, 3, 2, 3)


def test_base_activations() -> None:
    x = data(n=30)
    zero = make_layer(base_activation="zero")
    spline_only = zero(x)
    with torch.no_grad():
        zero.scale_spline.zero_()
    torch.testing.assert_close(zero(x), torch.zeros_like(spline_only))
    ident = make_layer(base_activation="identity")
    with torch.no_grad():
        ident.scale_spline.zero_()
    torch.testing.assert_close(ident(x), x @ ident.scale_base)


def test_initialisation_follows_paper() -> None:
    gen = torch.Generator().manual_seed(3)
    layer = kl.KANLinear(200, 100, generator=gen, dtype=torch.float64)
    assert torch.all(layer.scale_spline == 1)
    assert abs(layer.coef.std().item() - 0.1) < 0.005
    bound = (6 / 300) ** 0.5
    assert layer.scale_base.abs().max() <= bound
    assert layer.scale_base.abs().max() > 0.95 * bound
    assert torch.all(layer.mask == 1)


def test_outside_grid_spline_part_is_zero() -> None:
    layer = make_layer(base_activation="zero")
    x = torch.tensor([[5.0, -5.0, 100.0]], dtype=torch.float64)
    assert torch.all(layer(x) == 0)


def test_update_grid_uniform_on_same_range_is_exact() -> None:
    layer = make_layer(n_in=2, n_out=3)
    x = data(n=300, n_in=2)
    x[0], x[1] = -1.0, 1.0  # data span the grid range exactly
    before = layer(x)
    knots_before = layer.knots.clone()
    layer.update_grid(x, grid_eps=1.0)
    torch.testing.assert_close(layer.knots, knots_before, atol=1e-12, rtol=0)
    torch.testing.assert_close(layer(x), before, atol=1e-9, rtol=1e-9)


def test_update_grid_preserves_function_on_data() -> None:
    gen = torch.Generator().manual_seed(0)
    layer = kl.KANLinear(2, 2, grid_size=10, generator=gen, dtype=torch.float64)
    # a smooth learned function: fit the spline to sin curves first
    xs = torch.linspace(-1, 1, 400, dtype=torch.float64).unsqueeze(1).expand(-1, 2)
    target = torch.sin(2 * xs).unsqueeze(-1).expand(-1, -1, 2)
    with torch.no_grad():
        layer.coef.copy_(kl.splines.curve_to_coef(xs, target, layer.knots, 3))
    x = (data(n=500, n_in=2, seed=9) * 0.8) ** 3  # concentrated near 0
    before = layer(x)
    layer.update_grid(x)
    assert not torch.equal(layer.knots[:, 3], torch.full((2,), -1.0, dtype=torch.float64))
    rel = (layer(x) - before).norm() / before.norm()
    assert rel < 1e-4


def test_update_grid_rejects_non_finite_and_bad_shape() -> None:
    layer = make_layer(n_in=2)
    x = data(n=20, n_in=2)
    x[3, 1] = float("nan")
    coef = layer.coef.clone()
    with pytest.raises(ValueError, match="non-finite"):
        layer.update_grid(x)
    x[3, 1] = float("inf")
    with pytest.raises(ValueError, match="non-finite"):
        layer.update_grid(x)
    assert torch.equal(layer.coef, coef)  # untouched
    with pytest.raises(ValueError, match=r"\(batch, 2\)"):
        layer.update_grid(data(n=20, n_in=2).unsqueeze(0))
    with pytest.raises(ValueError, match="grid_eps"):
        layer.update_grid(data(n=20, n_in=2), grid_eps=2.0)


def test_update_grid_constant_input_keeps_its_knots() -> None:
    layer = make_layer(n_in=2)
    x = data(n=50, n_in=2)
    x[:, 0] = 0.3
    old = layer.knots[0].clone()
    layer.update_grid(x)
    torch.testing.assert_close(layer.knots[0], old)
    assert torch.isfinite(layer.coef).all()


@pytest.mark.parametrize("k", [1, 2, 3])
def test_extend_grid_refinement_preserves_function(k: int) -> None:
    layer = make_layer(n_in=3, n_out=2, k=k, g=5, grid_range=(-1.0, 2.0))
    x = data(n=400, lo=-1.0, hi=2.0)
    before = layer(x)
    for g in (10, 20, 40):
        layer.extend_grid(g)
        assert layer.grid_size == g and layer.coef.shape == (3, g + k, 2)
        assert layer._uniform
        rel = (layer(x) - before).norm() / before.norm()
        assert rel < 1e-8, (g, rel.item())


def test_extend_grid_with_data() -> None:
    layer = make_layer(n_in=2, n_out=2)
    x = data(n=400, n_in=2)
    before = layer(x)
    layer.extend_grid(12, x)
    assert layer.grid_size == 12
    assert not layer._uniform  # placed on the data
    rel = (layer(x) - before).norm() / before.norm()
    assert rel < 1e-2  # not a refinement of the old grid: approximate


def test_state_dict_round_trip_with_resize() -> None:
    layer = make_layer()
    x = data(n=100)
    layer.update_grid(x)
    layer.extend_grid(9)
    layer.update_grid(x)
    fresh = kl.KANLinear(3, 4, dtype=torch.float64)
    fresh.load_state_dict(layer.state_dict())
    assert fresh.grid_size == 9 and fresh._uniform == layer._uniform
    assert torch.equal(fresh(x), layer(x))
    wrong = kl.KANLinear(2, 4, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="inputs"):
        wrong.load_state_dict(layer.state_dict())


@pytest.mark.parametrize(
    ("kwargs", "exc", "pattern"),
    [
        ({"grid_size": 0}, ValueError, "grid_size must be >= 1, got 0"),
        ({"grid_size": 2.5}, TypeError, "grid_size must be an int"),
        ({"spline_order": -1}, ValueError, "spline_order must be >= 0, got -1"),
        (
            {"grid_range": (1.0, 1.0)},
            ValueError,
            r"grid_range must have low < high, got \(1.0, 1.0\)",
        ),
        ({"grid_range": (0.0, float("nan"))}, ValueError, "grid_range"),
        ({"grid_range": 3.0}, ValueError, "grid_range must be a pair"),
        ({"base_activation": "swish"}, ValueError, "unknown base_activation 'swish'; valid: "),
        ({"noise_scale": -0.1}, ValueError, "noise_scale must be >= 0"),
        ({"dtype": torch.int64}, TypeError, "floating-point dtype"),
    ],
)
def test_bad_constructor_arguments(kwargs, exc, pattern) -> None:
    with pytest.raises(exc, match=pattern):
        kl.KANLinear(3, 2, **kwargs)


def test_bad_widths_of_layer() -> None:
    with pytest.raises(ValueError, match="in_features must be >= 1, got 0"):
        kl.KANLinear(0, 2)
    with pytest.raises(ValueError, match="out_features must be >= 1, got -3"):
        kl.KANLinear(2, -3)


def test_bad_forward_input() -> None:
    layer = kl.KANLinear(3, 2)
    with pytest.raises(ValueError, match=r"shape \(\.\.\., 3\).*got \(5, 4\)"):
        layer(torch.zeros(5, 4))
    with pytest.raises(TypeError, match="floating-point tensor, got dtype torch.int64"):
        layer(torch.zeros(5, 3, dtype=torch.int64))
    with pytest.raises(
        TypeError, match="torch.float64 but the model's parameters are torch.float32"
    ):
        layer(torch.zeros(5, 3, dtype=torch.float64))
    with pytest.raises(TypeError, match="must be a torch.Tensor, got list"):
        layer([[0.0, 0.0, 0.0]])


def test_forward_has_no_side_effects() -> None:
    layer = make_layer()
    state = {k: v.clone() for k, v in layer.state_dict().items()}
    x = data()
    layer(x)
    layer.activations(x)
    for k, v in layer.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_extend_grid_with_constant_input_and_contiguous_coef() -> None:
    layer = make_layer(n_in=2, n_out=3)
    x = data(n=60, n_in=2)
    x[:, 1] = -0.4
    grid = torch.linspace(-1, 1, 50, dtype=torch.float64).unsqueeze(1).expand(-1, 2)
    before = layer(grid)
    layer.extend_grid(10, x)
    assert layer.grid_size == 10 and layer.coef.is_contiguous()
    assert torch.isfinite(layer.coef).all()
    # the constant input got a uniform grid of the new size on its old range, refit over that range
    torch.testing.assert_close(layer.knots[1, 3], torch.tensor(-1.0, dtype=torch.float64))
    torch.testing.assert_close(layer.knots[1, -4], torch.tensor(1.0, dtype=torch.float64))
    only_second = layer.activations(grid)[:, :, 1]
    layer2 = make_layer(n_in=2, n_out=3)
    ref = layer2.activations(grid)[:, :, 1]
    assert (only_second - ref).abs().max() < 0.05 * ref.abs().max()
    assert before.shape == (50, 3)


# ---------------------------------------------------------------------- checkpoints of older code
DATA = Path(__file__).parent / "data"


@pytest.mark.parametrize("name", ["symbolic", "pruned", "extended"])
def test_checkpoints_written_before_the_symbolic_child_module_load_unchanged(name: str) -> None:
    """Files written by the code before issue 17 moved the symbolic edges into a child module
    (flat keys ``layers.<l>.symbolic_mask`` ...; see tests/data/make_layer_checkpoints.py) load
    with bit-identical outputs, on every kernel backend they were recorded with."""
    pytest.importorskip("safetensors")
    from safetensors.torch import load_file

    from kanlab import kernels

    recorded = load_file(DATA / "layer_checkpoints_outputs.safetensors")
    model = kl.load(DATA / f"layer_checkpoint_{name}.safetensors")
    x = recorded[f"x_{name}"]
    backends = [b for b in kernels.available_backends() if f"y_{name}_{b}" in recorded]
    assert "reference" in backends
    try:
        for backend in backends:
            kernels.set_backend(backend)
            with torch.no_grad():
                assert torch.equal(model(x), recorded[f"y_{name}_{backend}"]), backend
    finally:
        kernels.set_backend(None)


# ---------------------------------------------------------------------- mask state, select
def _snapshot(module: torch.nn.Module) -> dict:
    """Every attribute of the module and its children, and every entry of their dicts."""
    snap = {}
    for name, m in module.named_modules():
        for key, value in vars(m).items():
            snap[name, key] = value
            if isinstance(value, dict):
                for k2, v2 in value.items():
                    snap[name, key, k2] = v2
    return snap


def _mixed_layer() -> kl.KANLinear:
    layer = make_layer()
    layer.set_symbolic(0, 1, "sin", (1.5, 0.1, 0.8, -0.2))
    layer.set_symbolic(2, 3, "x^2", (0.7, 0.0, 1.1, 0.3))
    layer.set_mask(torch.tensor([[1, 1, 0, 1], [1, 1, 1, 1], [1, 0.5, 1, 1]], dtype=torch.float64))
    return layer


@pytest.mark.parametrize("kind", ["plain", "masked", "mixed", "edited in place"])
def test_forward_assigns_no_attribute(kind: str) -> None:
    """DESIGN: nothing in forward writes caches. forward, activations and spline_weight, with and
    without autograd, leave every attribute (and every parameter, buffer, child) the same object."""
    layer = make_layer() if kind == "plain" else _mixed_layer()
    if kind == "masked":
        layer.unset_symbolic(0, 1)
        layer.unset_symbolic(2, 3)
    if kind == "edited in place":
        with torch.no_grad():
            layer.mask[1, 1] = 0.0
    before = _snapshot(layer)
    x = data()
    layer(x).sum().backward()
    layer.activations(x)
    layer.spline_weight()
    with torch.no_grad():
        layer(x)
    with torch.inference_mode():
        layer(x)
    after = _snapshot(layer)
    assert after.keys() == before.keys()
    assert all(after[k] is before[k] for k in before), [
        k for k in before if after[k] is not before[k]
    ]


def test_set_mask_rebuilds_the_state_forward_reads() -> None:
    layer = make_layer()
    x = data()
    assert layer._current_mask_state().ones  # a fresh layer: the scales as they are
    mask = torch.ones(3, 4, dtype=torch.float64)
    mask[1, 2] = 0.0
    layer.set_mask(mask)
    state = layer._current_mask_state()
    assert state is not None and not state.ones and torch.equal(layer.mask, mask)
    torch.testing.assert_close(layer(x), naive_forward(layer, x), atol=1e-12, rtol=1e-12)
    layer.set_mask(torch.ones(3, 4))  # another dtype: copied into the buffer
    assert layer._current_mask_state().ones and layer.mask.dtype == torch.float64
    torch.testing.assert_close(layer(x), naive_forward(layer, x), atol=1e-12, rtol=1e-12)
    with torch.no_grad():
        layer.mask[0, 0] = 0.0  # in place: the state is no longer current, forward reads the mask
    assert layer._current_mask_state() is None
    torch.testing.assert_close(layer(x), naive_forward(layer, x), atol=1e-12, rtol=1e-12)
    with pytest.raises(ValueError, match=r"mask must be a tensor of shape \(3, 4\), got \(4, 3\)"):
        layer.set_mask(torch.ones(4, 3))
    with pytest.raises(ValueError, match="mask.*finite"):
        layer.set_mask(torch.full((3, 4), float("nan")))


def test_mask_state_follows_symbolic_edges_copies_moves_and_loads() -> None:
    import copy

    layer = _mixed_layer()
    x = data()
    state = layer._current_mask_state()
    assert state is not None and not state.ones
    assert torch.equal(state.numeric, layer.mask * (1 - layer.symbolic_mask))
    y = layer(x)
    copied = copy.deepcopy(layer)
    assert copied._current_mask_state() is not None and torch.equal(copied(x), y)
    moved = copy.deepcopy(layer).float()
    assert moved._current_mask_state() is not None
    torch.testing.assert_close(moved(x.float()), y.float(), atol=1e-5, rtol=1e-5)
    fresh = make_layer(seed=5)
    fresh.load_state_dict(layer.state_dict())  # creates the symbolic child, then the state
    assert fresh._current_mask_state() is not None and torch.equal(fresh(x), y)
    # a change made on the child directly: the layer's state is stale, forward stays right
    layer.symbolic.unset(0, 1)
    assert layer._current_mask_state() is None
    layer.unset_symbolic(2, 3)  # through the layer: rebuilt
    state = layer._current_mask_state()
    assert state is not None and state.keep is None and not state.ones
    torch.testing.assert_close(layer(x), naive_forward(layer, x), atol=1e-12, rtol=1e-12)


def test_state_dicts_with_the_old_flat_symbolic_keys_load() -> None:
    """Before issue 17 a layer's symbolic state had flat keys (symbolic_mask, symbolic_fn,
    symbolic_names, symbolic_affine); they load into the child module ``symbolic``."""
    layer = _mixed_layer()
    new_keys = {k for k in layer.state_dict() if k.startswith("symbolic")}
    assert new_keys == {"symbolic.mask", "symbolic.fn", "symbolic.names", "symbolic.affine"}
    old = {k.replace("symbolic.", "symbolic_"): v for k, v in layer.state_dict().items()}
    fresh = make_layer(seed=2)
    fresh.load_state_dict(old)  # strict: every key used
    x = data()
    assert torch.equal(fresh(x), layer(x))
    assert fresh.symbolic_edges() == {(0, 1): "sin", (2, 3): "x^2"}


def test_select_slices_every_tensor_and_keeps_the_kept_edges() -> None:
    layer = _mixed_layer()
    x = data(n=80, lo=-1.3, hi=1.3)
    layer.update_grid(x)  # non-uniform knots
    layer.scale_base.requires_grad_(False)
    layer.eval()
    rng = torch.random.get_rng_state()
    small = layer.select([0, 2], torch.tensor([1, 3]))
    assert torch.equal(torch.random.get_rng_state(), rng)  # no draw from the global RNG
    assert (small.in_features, small.out_features) == (2, 2) and small.grid_size == layer.grid_size
    assert small.symbolic_edges() == {(0, 0): "sin", (1, 1): "x^2"}
    assert not small._uniform and not bool(small.grid_uniform) and not small.training
    assert not small.scale_base.requires_grad and small.coef.requires_grad
    assert small.coef.is_contiguous() and small._current_mask_state() is not None
    for name in ("coef", "scale_base", "scale_spline", "mask", "symbolic_mask", "symbolic_affine"):
        big = getattr(layer, name)
        want = (
            big[[0, 2]][:, :, [1, 3]]
            if big.dim() == 3 and name == "coef"
            else big[[0, 2]][:, [1, 3]]
        )
        assert torch.equal(getattr(small, name), want), name
    want = layer.activations(x)[:, [1, 3]][:, :, [0, 2]]
    torch.testing.assert_close(small.activations(x[:, [0, 2]]), want, atol=1e-13, rtol=1e-13)
    assert layer.in_features == 3 and layer.symbolic_edges() == {(0, 1): "sin", (2, 3): "x^2"}
    for bad, pattern in [
        ([0, 3], r"keep_in must hold increasing indices in \[0, 3\), got \[0, 3\]"),
        ([2, 0], "increasing"),
        ([], "non-empty"),
        ([0.0, 1.0], "indices"),
        ([[0, 1]], "1-d"),
    ]:
        with pytest.raises(ValueError, match=pattern):
            layer.select(bad, [0])


def test_compiled_forward_with_masked_and_symbolic_edges_matches_eager() -> None:
    """torch.compile(fullgraph=True) traces the live-mask path (masked scales, symbolic edges on
    the torch path of the reference backend) with no graph break."""
    from kanlab import kernels

    torch._dynamo.reset()
    model = kl.KAN([3, 4, 2], seed=0, dtype=torch.float64)
    mask = torch.ones(3, 4, dtype=torch.float64)
    mask[1, 2] = 0.0
    model.layers[0].set_mask(mask)
    model.layers[1].set_symbolic(2, 1, "sin", (1.2, 0.1, 0.9, 0.0))
    x = data()
    kernels.set_backend("reference")
    try:
        eager = model(x)
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")(x)
    finally:
        kernels.set_backend(None)
        torch._dynamo.reset()
    torch.testing.assert_close(compiled, eager, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("k", [1, 3])
def test_extend_grid_with_margin_widens_the_range_and_keeps_the_function_on_the_old_one(
    k: int,
) -> None:
    layer = make_layer(n_in=3, n_out=2, k=k, g=5, grid_range=(-1.0, 2.0))
    x = data(n=400, lo=-1.0, hi=2.0)
    before = layer(x)
    layer.extend_grid(20, margin=0.1)
    assert layer.grid_size == 20 and layer._uniform
    lo, hi = layer.knots[:, k], layer.knots[:, -k - 1]
    torch.testing.assert_close(lo, torch.full_like(lo, -1.3))
    torch.testing.assert_close(hi, torch.full_like(hi, 2.3))
    torch.testing.assert_close(layer.knots.diff(dim=1), torch.full_like(layer.knots[:, 1:], 0.18))
    rel = ((layer(x) - before).norm() / before.norm()).item()
    # a least-squares refit (20 intervals on the wider range do not refine 5): no worse than the
    # plain extension to a grid that does not refine the old one either (5 -> 12)
    plain = make_layer(n_in=3, n_out=2, k=k, g=5, grid_range=(-1.0, 2.0))
    plain.extend_grid(12)
    rel_plain = ((plain(x) - before).norm() / before.norm()).item()
    assert 0 < rel < rel_plain < 0.05, (rel, rel_plain)
    # inputs a little outside the old range now lie inside the grid, on the continued spline
    out = torch.tensor([[-1.05, 2.05, 2.1]], dtype=torch.float64)
    assert torch.isfinite(layer(out)).all()


def test_extend_grid_margin_zero_is_the_plain_extension_and_a_negative_margin_is_refused() -> None:
    # (a margin with data was refused before; it now widens the data's range: test_grid_margin.py)
    a, b = make_layer(g=5), make_layer(g=5)
    a.extend_grid(10)
    b.extend_grid(10, margin=0.0)
    torch.testing.assert_close(a.knots, b.knots, rtol=0, atol=0)
    torch.testing.assert_close(a.coef, b.coef, rtol=0, atol=0)
    with pytest.raises(ValueError, match="margin"):
        b.extend_grid(20, data(), margin=-0.1)
    with pytest.raises(ValueError, match="margin"):
        b.extend_grid(20, margin=-0.1)
    assert b.grid_size == 10  # refused before any change
    model = kl.KAN([3, 2, 1], grid_size=5, seed=0, dtype="float64")
    with pytest.raises(ValueError, match="margin"):
        model.extend_grid(10, data(), margin=-0.1)
    assert [la.grid_size for la in model.layers] == [5, 5]
    model.extend_grid(10, margin=0.5)
    assert [la.grid_size for la in model.layers] == [10, 10]
    lo = model.layers[0].knots[:, 3]  # (-1, 1) widened by half its width each side
    torch.testing.assert_close(lo, torch.full_like(lo, -2.0))


def test_extension_of_a_constant_input_keeps_a_float64_uniform_grid():
    """An input whose data are constant gets a uniform grid of the new size on its old range, built
    in the layer's dtype (it was built in float32 and cast: knots off by ~1e-8 in a float64 layer)."""
    layer = kl.KANLinear(2, 1, grid_size=5, dtype=torch.float64, grid_range=(-1.0, 1.0 / 3.0))
    x = torch.rand(64, 2, dtype=torch.float64) * 1.2 - 0.9
    x[:, 1] = 0.25  # constant
    layer.extend_grid(7, x, grid_eps=1.0)
    want = uniform_knots(1, 7, 3, (-1.0, 1.0 / 3.0), dtype=torch.float64)[0]
    assert torch.equal(layer.knots[1], want)
