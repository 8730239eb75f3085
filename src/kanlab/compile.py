"""Formula to KAN: :func:`compile_formula` builds a KAN that evaluates a sympy formula exactly.

The algorithm (expression tree -> levels -> layers):

1. **Expression tree -> nodes** (:mod:`kanlab._compile_graph`). A KAN edge computes
   ``c * f(a*u + b) + d`` with ``f`` from the symbolic library (:mod:`kanlab.functions`), so the
   tree is cut into nodes, each computed from nodes one layer below:

   - a sum (``sympy.Add``) is a *sum node*: one edge per term, constant multiples and nested sums
     flattened, the additive constant in the first edge's ``d``;
   - a product of n >= 2 non-constant factors is a *multiplication node* of arity n (or, with
     ``max_arity``, a balanced tree of products of at most that many factors); each factor is one
     subnode, itself a sum of edges; the numeric coefficient goes into the first factor;
   - a function of an argument, ``sin(pi*x + 1)``, is an edge ``sin`` with ``a = pi, b = 1`` from
     the node of the argument's non-constant part (a variable, or the sum/product node of a longer
     argument); integer and half-integer powers the library has (``x^2 .. x^5``, ``1/x .. 1/x^5``,
     ``sqrt``, ``x^1.5``, ``1/sqrt(x)``) are edges too, so ``a/b`` is ``a * (1/x)(b)``;
   - any other power ``u**e`` is ``exp(e * log(u))`` (exact where ``u > 0``, checked below), a
     constant base ``b**e`` is ``exp(log(b) * e)``;
   - a function outside the library (a Bessel function, ``sinh``, ...) is refused with a
     ValueError naming it and listing the library.

2. **Levels.** A node's depth is one more than the deepest node it reads. Every edge reads a node
   exactly one layer below, so a shallower value is *carried* up by identity edges (``"x"``); nodes
   are shared (``x*y`` used twice, carries of one variable to one layer). A layer has one edge per
   (input, output) pair, so two terms of one sum that read the same node (``x + sin(x)``) put one of
   them into a node of its own (one more layer if that node sits right below the sum).

3. **Layers.** Layer ``l`` holds the nodes of depth ``l`` reachable from the output (the inputs are
   layer 0, all variables in order, used or not), sum nodes first, then multiplication nodes. The
   KAN gets the widths ``[n_var, [n_sum, n_mult], ..., 1]`` and ``mult_arity`` per node; each term
   becomes ``layer.set_symbolic(i, o, f, (a, b, c, d))`` and every other edge is switched off with
   the layer's mask (0), as pruning does, so it never contributes, not even after splines.

**Exactness.** In float64 the model evaluates the formula to rounding: on random points in range,
``|f_kan - f| <= 1e-12 * max(|f|, rms(f))`` with ``rms(f)`` the root mean square of ``f`` over the
points (the scale term covers points where ``f`` crosses zero by cancellation). The layer's forward
uses each function's singularity-safe variant (``1/x`` clamps ``|z| < 1e-4``, ``exp`` clamps
``z > 80`` ...); the compiled model is checked on samples of the ranges (``n_samples`` random points
plus the corners of the box when there are at most 10 variables): each edge's argument is
continuous on the box, so it takes every value between its smallest and largest sampled value;
the function is evaluated on a dense grid of that interval (and at 0 if inside). An argument that
leaves the function's domain, hits a pole, or enters a clamp there is refused with a ValueError
naming the subexpression, so the model is never silently approximate. (The interval comes from
samples: an extreme strictly between them, or a clamp zone narrower than the grid spacing, such
as ``tan`` within 1e-4 of a pole, can escape the check.)

**Training further.** :func:`splines_from_symbolic` (or ``to_splines=True``) turns symbolic edges
into B-splines initialised by a least-squares fit to each edge's function on its node's range; the
model then trains with :func:`kanlab.fit` like any KAN.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from kanlab._checks import check_finite, check_int
from kanlab._compile_graph import Graph
from kanlab.datasets.synthetic import _parse_ranges
from kanlab.functions import get_function
from kanlab.models import KAN, check_kan_input
from kanlab.splines import coef_to_curve, curve_to_coef, uniform_knots

__all__ = ["compile_formula", "splines_from_symbolic"]

# Spellings of library functions that sympy does not know, for formulas given as strings.
_ALIASES = {"arcsin": "asin", "arccos": "acos", "arctan": "atan", "arctanh": "atanh", "ln": "log"}
_MAX_CORNERS = 10  # the box's corners join the samples up to this many variables (2^10 points)


def compile_formula(
    expr: Any,
    variables: Sequence[Any],
    ranges: Sequence[float] | Sequence[Sequence[float]],
    *,
    dtype: torch.dtype = torch.float64,
    max_arity: int | None = None,
    grid_size: int = 20,
    spline_order: int = 3,
    to_splines: bool = False,
    n_samples: int = 1000,
    seed: int = 0,
) -> KAN:
    """A KAN with symbolic edges (and multiplication nodes) that evaluates ``expr`` exactly.

    Args:
        expr: a sympy expression, or a string sympy parses (``arcsin``, ``ln`` ... accepted;
            parsing evaluates Python: pass trusted strings only).
        variables: the input variables in input order: sympy symbols or names (matched by name).
        ranges: one ``(low, high)`` per variable, or one pair for all.
        dtype: the model's dtype (float64 for the exactness above).
        max_arity: longest product in one multiplication node (None: one node per product;
            2: a balanced tree of binary products).
        grid_size, spline_order: the (unused until :func:`splines_from_symbolic`) spline grid.
        to_splines: switch every edge to a spline fitted to its function on the ranges.
        n_samples, seed: the random points in range of the exactness check and spline fit.

    Returns a :class:`kanlab.KAN` mapping ``(batch, len(variables)) -> (batch, 1)``. The algorithm
    and the exactness criterion are in the module docstring. Raises ValueError for a function
    outside the library, a free symbol that is not a variable, or a formula the model cannot
    evaluate exactly on the ranges.
    """
    names = _variable_names(variables)
    expr = _parse(expr, names)
    symbols = _symbols(expr, names)
    box = _parse_ranges(ranges, len(names))
    if max_arity is not None:
        check_int("max_arity", max_arity, minimum=2)
    check_int("n_samples", n_samples, minimum=1)
    graph = Graph(symbols, len(names), max_arity=max_arity)
    root = graph.root(expr)
    layout = _layout(graph, root, len(names))
    model, labels = _build(graph, layout, dtype, grid_size, spline_order, seed)
    x = _samples(box, n_samples, seed, dtype)
    _check_exact(model, x, labels)
    if to_splines:
        splines_from_symbolic(model, x)
    return model


# ---------------------------------------------------------------------- parsing
def _variable_names(variables: Sequence[Any]) -> list[str]:
    if isinstance(variables, str | bytes) or not isinstance(variables, Sequence):
        raise TypeError(
            f"variables must be a sequence of sympy symbols or names, got {variables!r}"
        )
    names = [v if isinstance(v, str) else getattr(v, "name", None) for v in variables]
    if not names or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"variables must be non-empty names or sympy symbols, got {variables!r}")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"variables must have distinct names; repeated: {', '.join(dup)}")
    return names  # type: ignore[return-value]


def _parse(expr: Any, names: list[str]) -> Any:
    import sympy as sp

    if isinstance(expr, str):
        local: dict[str, Any] = {n: sp.Symbol(n) for n in names}
        local.update({k: getattr(sp, v) for k, v in _ALIASES.items() if k not in local})
        try:
            return sp.sympify(expr, locals=local)
        except (sp.SympifyError, SyntaxError, TypeError) as e:
            raise ValueError(f"cannot parse the formula {expr!r}: {e}") from None
    if isinstance(expr, bool) or not isinstance(expr, sp.Basic | int | float):
        raise TypeError(f"expr must be a sympy expression or a string, got {type(expr).__name__}")
    return sp.sympify(expr)


def _symbols(expr: Any, names: list[str]) -> dict[Any, int]:
    """The formula's free symbols -> input index (by name); unknown symbols are refused."""
    index = {n: i for i, n in enumerate(names)}
    extra = sorted(s.name for s in expr.free_symbols if s.name not in index)
    if extra:
        raise ValueError(
            f"the formula has symbols that are not variables: {', '.join(extra)} "
            f"(variables: {', '.join(names)})"
        )
    return {s: index[s.name] for s in expr.free_symbols}


# ---------------------------------------------------------------------- layers
def _layout(graph: Graph, root: int, n_var: int) -> list[list[int]]:
    """Node ids per layer: inputs, then per depth the nodes the root reads (sums first)."""
    depth = graph.depth(root)
    seen, stack = {root}, [root]
    while stack:
        for part in graph.nodes[stack.pop()].parts:
            for t in part.terms:
                if t.node not in seen:
                    seen.add(t.node)
                    stack.append(t.node)
    layers: list[list[int]] = [list(range(n_var))]
    for d in range(1, depth + 1):
        here = sorted(n for n in seen if graph.depth(n) == d)
        layers.append([n for n in here if graph.nodes[n].kind == "sum"] + [
            n for n in here if graph.nodes[n].kind == "mult"
        ])  # fmt: skip
    return layers


def _build(
    graph: Graph, layout: list[list[int]], dtype: torch.dtype, grid: int, k: int, seed: int
) -> tuple[KAN, dict[tuple[int, int, int], str]]:
    """The KAN of the layout, its edges set; also the subexpression of each edge, for messages."""
    nodes = graph.nodes
    widths: list[Any] = [len(layout[0])]
    arity: list[tuple[int, ...]] = [()]
    for ids in layout[1:]:
        mult = [len(nodes[n].parts) for n in ids if nodes[n].kind == "mult"]
        widths.append([len(ids) - len(mult), len(mult)] if mult else len(ids))
        arity.append(tuple(mult))
    options: dict[str, Any] = {"mult_arity": tuple(arity)} if any(arity) else {}
    model = KAN(widths, grid_size=grid, spline_order=k, seed=seed, dtype=dtype, **options)
    labels: dict[tuple[int, int, int], str] = {}
    for l_idx, (below, ids) in enumerate(itertools.pairwise(layout)):
        layer = model.layers[l_idx]
        pos = {n: i for i, n in enumerate(below)}
        mask = torch.zeros_like(layer.mask)
        sub = 0  # subnode index: sum nodes, then each factor of each product, in order
        for n in ids:
            for part in nodes[n].parts:
                if not part.terms:  # a constant output: an edge "0" carrying it in d
                    layer.set_symbolic(0, sub, "0", (1.0, 0.0, 0.0, part.d))
                    mask[0, sub] = 1.0
                for j, t in enumerate(part.terms):
                    i = pos[t.node]
                    layer.set_symbolic(i, sub, t.fn, (t.a, t.b, t.c, part.d if j == 0 else 0.0))
                    mask[i, sub] = 1.0
                    labels[(l_idx, i, sub)] = t.label
                sub += 1
        layer.set_mask(mask)
    return model, labels


# ---------------------------------------------------------------------- checks
def _samples(box: list[tuple[float, float]], n: int, seed: int, dtype: torch.dtype) -> Tensor:
    """``n`` uniform points in the box (a private generator), plus its corners for few variables."""
    gen = torch.Generator().manual_seed(seed)
    low = torch.tensor([r[0] for r in box], dtype=torch.float64)
    high = torch.tensor([r[1] for r in box], dtype=torch.float64)
    x = low + (high - low) * torch.rand(n, len(box), generator=gen, dtype=torch.float64)
    if len(box) <= _MAX_CORNERS:
        corners = torch.tensor(list(itertools.product(*box)), dtype=torch.float64)
        x = torch.cat([x, corners])
    return x.to(dtype)


@torch.no_grad()
def _check_exact(model: KAN, x: Tensor, labels: dict[tuple[int, int, int], str]) -> None:
    """Refuse a model whose edges leave their function's domain, or enter the clamp of its
    singularity-safe variant, on the samples ``x``."""
    for l_idx, (layer, xl) in enumerate(zip(model.layers, model.layer_inputs(x), strict=True)):
        affine = layer.symbolic_affine
        for (i, o), name in layer.symbolic_edges().items():
            fn = get_function(name)
            a, b = affine[i, o, 0], affine[i, o, 1]
            z = _argument_span(a * xl[:, i] + b)
            exact, safe = fn.torch_fn(z), fn.forward_fn(z)
            what = labels.get((l_idx, i, o), name)
            span = f"[{float(z.min()):.4g}, {float(z.max()):.4g}]"
            if not bool(torch.isfinite(exact).all()):
                raise ValueError(
                    f"cannot compile exactly: {what} is undefined on the ranges ({name} is not "
                    f"finite for some arguments in {span}: a pole, or outside its domain)"
                )
            if not bool(torch.isclose(safe, exact, rtol=1e-12, atol=0.0).all()):
                raise ValueError(
                    f"cannot compile exactly: {name} in {what} gets arguments in {span} on the "
                    "ranges, where a layer evaluates its singularity-safe variant (clamped near "
                    "poles and domain edges), not the function itself"
                )
    check_finite("the compiled model's output on the ranges", model(x))


def _argument_span(z: Tensor, n: int = 4097) -> Tensor:
    """The sampled arguments ``z`` plus a dense grid of ``[min z, max z]`` and 0 if inside it: an
    edge's argument is continuous on the (connected) box, so it takes every value in between."""
    lo, hi = z.min(), z.max()
    dense = torch.linspace(0, 1, n, dtype=z.dtype) * (hi - lo) + lo
    zero = z.new_zeros(1 if bool(lo <= 0) and bool(hi >= 0) else 0)
    return torch.cat([z, dense, zero])


# ---------------------------------------------------------------------- splines
@torch.no_grad()
def splines_from_symbolic(model: KAN, x: Tensor, *, n_points: int | None = None) -> KAN:
    """Switch every symbolic edge of ``model`` to a B-spline fitted to its function; in place.

    Each layer's grid becomes uniform on the range its input nodes take on ``x`` ``(batch, in)``
    (per node; the layer's grid size and order are kept), and each symbolic edge
    ``c * f(a*u + b) + d`` becomes ``spline(u)`` (scale 1, base weight 0) fitted by least squares
    on ``n_points`` evenly spaced points of that range (default ``10 * (G + k)``). Numeric edges keep
    their function (their spline refitted on the new grid, as ``update_grid`` does); masked edges
    stay off. Node ranges are taken from the symbolic model before any layer changes. Returns
    ``model``.
    """
    layers, x = check_kan_input(model, x)
    inputs = model.layer_inputs(x)
    for layer, xl in zip(layers, inputs, strict=True):
        _layer_to_splines(layer, xl, n_points)
    return model


def _layer_to_splines(layer: Any, xl: Tensor, n_points: int | None) -> None:
    k, g, n_in = layer.spline_order, layer.grid_size, layer.in_features
    m = check_int("n_points", n_points, minimum=2) if n_points is not None else 10 * (g + k)
    lo, hi = xl.min(0).values, xl.max(0).values  # (in,)
    pad = torch.where(hi - lo > 0, 0.0, 1e-3 * (1.0 + lo.abs()))  # a constant node: a small span
    lo, hi = lo - pad, hi + pad
    frac = torch.linspace(0, 1, m, dtype=xl.dtype, device=xl.device).unsqueeze(1)
    s = lo + (hi - lo) * frac  # (m, in) evenly spaced points of each node's range
    knots = uniform_knots(n_in, g, k, torch.stack([lo, hi], dim=1), dtype=layer.knots.dtype)
    old = coef_to_curve(s, layer.knots, layer.coef, k, uniform=layer._uniform)  # (m, in, out)
    sym = layer.symbolic_mask
    if sym is None or not layer._has_symbolic:
        target, is_sym = old, torch.zeros_like(layer.mask, dtype=torch.bool)
    else:
        is_sym = sym > 0  # (in, out)
        values = layer.symbolic.activations(s, torch.ones_like(layer.mask))  # (m, out, in)
        target = torch.where(is_sym, values.transpose(1, 2), old)
    coef = curve_to_coef(s, target, knots, k)
    layer._set_grid(knots, coef, uniform=True)  # the layer's own installer: knots and coef
    layer.scale_spline.copy_(torch.where(is_sym, 1.0, layer.scale_spline))
    layer.scale_base.copy_(torch.where(is_sym, 0.0, layer.scale_base))
    for i, o in layer.symbolic_edges():
        layer.unset_symbolic(i, o)
