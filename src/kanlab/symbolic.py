"""Symbolic regression of KAN edges: fit ``y ~ c * f(a*x + b) + d``, replace edges, read formulas.

- :func:`fit_params` fits one library function to samples ``(x, y)``: a coarse-to-fine grid search
  over ``(a, b)`` (all grid points evaluated at once as a ``(Na, Nb, n)`` tensor) with the linear
  least-squares optimum of ``(c, d)`` in closed form at every grid point; it returns the parameters
  and R^2.
- :func:`suggest_symbolic` ranks library functions for one edge by fit and simplicity.
- :func:`fix_symbolic` / :func:`auto_symbolic` replace edges by their symbolic functions (trainable
  affine parameters, see ``KANLinear.set_symbolic``).
- :func:`symbolic_formula` composes the symbolic edges into one sympy expression per output.

sympy is imported lazily (only by :func:`symbolic_formula`).
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from kanlab import _symbolic_refit as _refit
from kanlab._checks import check_finite, check_float, check_int, check_range
from kanlab._symbolic_starts import product_starts
from kanlab.functions import SymbolicFunction, get_function, library
from kanlab.layers import KANLinear
from kanlab.models import check_kan_input, kan_layers
from kanlab.mult import layout, subnode_groups

__all__ = [
    "EdgeFit",
    "FitResult",
    "Formula",
    "auto_symbolic",
    "fit_params",
    "fix_symbolic",
    "suggest_symbolic",
    "symbolic_formula",
]


@dataclass(frozen=True)
class FitResult:
    """A fitted candidate: ``y ~ c * f(a*x + b) + d``."""

    name: str  # library function name
    params: tuple[float, float, float, float]  # (a, b, c, d)
    r2: float  # coefficient of determination on the fitted samples (1 = exact)
    complexity: int  # the function's complexity
    score: float = math.nan  # ranking score of suggest_symbolic (lower is better)


@dataclass(frozen=True)
class EdgeFit:
    """What :func:`auto_symbolic` did with one edge."""

    layer: int
    out_index: int
    in_index: int
    fit: FitResult | None  # the chosen fit, None if no candidate reached r2_threshold
    fixed: bool  # whether the edge was replaced


# ---------------------------------------------------------------------- fitting one function
def _as_vector(name: str, v: object) -> Tensor:
    if not isinstance(v, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(v).__name__}")
    if not v.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {v.dtype}")
    return check_finite(name, v.detach().reshape(-1).to(torch.float64))


def _r2_grid(f: Tensor, yc: Tensor, var_y: Tensor) -> Tensor:
    """R^2 of the best affine map of each row of ``f`` (..., n) onto ``y`` (centred ``yc`` (n,)),
    shape (...); rows with non-finite or (numerically) constant values get -1.

    Only reductions touch the big tensor (no masks or centred copies), which keeps the grid search
    memory-bound: var(f) comes from the raw moments, trusted only when it is not a tiny difference
    of large numbers (relative variance > 1e-9).
    """
    n = f.shape[-1]
    ones = torch.ones(n, dtype=f.dtype, device=f.device)
    s1 = (f @ ones) / n  # matrix-vector products: much faster than .sum(-1) on CPU
    s2 = (f.square() @ ones) / n
    cov = (f @ yc) / n
    var_f = s2 - s1 * s1
    ok = torch.isfinite(s2) & torch.isfinite(cov) & (var_f > 1e-9 * s2)
    r2 = torch.where(ok, cov * cov / (var_f * var_y).clamp_min(1e-300), -1.0)
    return r2.clamp(max=1.0)


def _affine_fit(fx: Tensor, yv: Tensor) -> tuple[float, float, float]:
    """Least-squares ``y ~ c * fx + d`` on centred data: (c, d, R^2); R^2 = -1 if fx is unusable."""
    if not bool(torch.isfinite(fx).all()):
        return 0.0, float(yv.mean()), -1.0
    fc, yc = fx - fx.mean(), yv - yv.mean()
    var_f, var_y = float(fc @ fc), float(yc @ yc)
    if var_f <= 1e-12 * float(fx @ fx) or var_f == 0.0:
        return 0.0, float(yv.mean()), -1.0
    c = float(fc @ yc) / var_f
    d = float(yv.mean()) - c * float(fx.mean())
    res = yv - (c * fx + d)
    return c, d, 1.0 - float(res @ res) / var_y


def fit_params(
    x: Tensor,
    y: Tensor,
    fn: str | SymbolicFunction,
    *,
    a_range: Sequence[float] = (-10.0, 10.0),
    b_range: Sequence[float] = (-10.0, 10.0),
    grid_number: int = 101,
    iterations: int = 3,
    max_points: int = 64,
) -> FitResult:
    """Fit ``y ~ c * f(a*x + b) + d`` for the library function ``fn``.

    Args:
        x, y: samples, any shape with the same number of elements (flattened; float64 inside).
        fn: a library name (e.g. ``"sin"``) or a :class:`SymbolicFunction`.
        a_range, b_range: the initial search box for ``a`` and ``b`` of ``f(a*u + b)`` where
            ``u`` is ``x`` rescaled to [-1, 1] (so the box fits any scale of ``x``; for data on
            [-1, 1] it is the box for ``a`` and ``b`` themselves). The returned parameters are
            in the units of ``x``.
        grid_number: grid points per axis (the search evaluates grid_number^2 candidates at once).
        iterations: coarse-to-fine rounds; each round shrinks the box to the best point's
            neighbouring grid cells, so the final resolution is about
            ``range / (grid_number / 2)^iterations``.
        max_points: the search uses at most this many evenly spaced samples (sorted by x); the
            final ``(c, d)`` and R^2 use all samples.

    Candidates ``(a, b)`` for which ``f(a*x + b)`` is not finite on the data (outside ``f``'s
    domain, e.g. log of a negative number) are never chosen. If ``y`` is constant the result is
    ``c = 0, d = y`` with R^2 = 1.

    Raises:
        ValueError: on non-finite data, fewer than 3 samples, a different number of x and y
            values, or constant ``x`` (the function cannot be identified).
    """
    f = get_function(fn)
    xv, yv = _as_vector("x", x), _as_vector("y", y)
    if xv.numel() != yv.numel():
        raise ValueError(
            f"x and y must have the same number of samples, got {xv.numel()} and {yv.numel()}"
        )
    if xv.numel() < 3:
        raise ValueError(f"fitting needs at least 3 samples, got {xv.numel()}")
    a_lo, a_hi = check_range("a_range", a_range)
    b_lo, b_hi = check_range("b_range", b_range)
    check_int("grid_number", grid_number, minimum=3)
    check_int("iterations", iterations, minimum=1)
    check_int("max_points", max_points, minimum=3)
    if float(xv.max() - xv.min()) <= 1e-12 * (1 + float(xv.abs().max())):
        raise ValueError(
            f"x is constant (all {xv.numel()} samples equal {float(xv[0]):.6g}): the edge's input "
            "does not vary on these data, so its function cannot be fitted"
        )
    y_mean = yv.mean()
    yc = yv - y_mean
    var_y = (yc * yc).mean()
    if float(var_y) <= 1e-30 * (1 + float(y_mean) ** 2):
        return FitResult(f.name, (1.0, 0.0, 0.0, float(y_mean)), 1.0, f.complexity)

    # The search runs on u = x rescaled to [-1, 1], so the boxes do not depend on the scale of x
    # (a hidden node may vary over 0.05 or over 50); the result is mapped back at the end.
    mid, half = float(xv.max() + xv.min()) / 2, float(xv.max() - xv.min()) / 2
    u = (xv - mid) / half
    # The search subsample: evenly spaced in the x-sorted order, so it spans the whole x range.
    order = torch.argsort(u)
    if u.numel() > max_points:
        order = order[torch.linspace(0, u.numel() - 1, max_points).round().long()]
    xs, ys = u[order], yv[order]
    ysc = ys - ys.mean()
    var_ys = (ysc * ysc).mean()

    n = grid_number
    for _ in range(iterations):
        a = torch.linspace(a_lo, a_hi, n, dtype=torch.float64)
        b = torch.linspace(b_lo, b_hi, n, dtype=torch.float64)
        z = torch.addcmul(b.view(1, n, 1), a.view(n, 1, 1), xs)  # a*x + b: (Na, Nb, n_points)
        with torch.no_grad():
            r2 = _r2_grid(f.torch_fn(z), ysc, var_ys)
        best = int(torch.argmax(r2))
        ia, ib = divmod(best, n)
        a_best, b_best = float(a[ia]), float(b[ib])
        a_lo, a_hi = float(a[max(ia - 1, 0)]), float(a[min(ia + 1, n - 1)])
        b_lo, b_hi = float(b[max(ib - 1, 0)]), float(b[min(ib + 1, n - 1)])

    with torch.no_grad():
        c, d, r2 = _affine_fit(f.torch_fn(a_best * u + b_best), yv)
    a_x, b_x = a_best / half, b_best - a_best * mid / half  # a*u + b = a_x * x + b_x
    if r2 < 0:  # the best candidate is constant or undefined on the full data
        return FitResult(f.name, (a_x, b_x, 0.0, float(y_mean)), 0.0, f.complexity)
    return FitResult(f.name, (a_x, b_x, c, d), r2, f.complexity)


# ---------------------------------------------------------------------- edges of a model
def _check_edge(model: object, layer: int, out_index: int, in_index: int) -> KANLinear:
    layers = kan_layers(model)
    check_int("layer", layer, minimum=0)
    if layer >= len(layers):
        raise ValueError(f"layer must be < {len(layers)} (the model's depth), got {layer}")
    la = layers[layer]
    check_int("out_index", out_index, minimum=0)
    check_int("in_index", in_index, minimum=0)
    if out_index >= la.out_features or in_index >= la.in_features:
        raise ValueError(
            f"edge (layer={layer}, out={out_index}, in={in_index}) does not exist: layer {layer} has "
            f"{la.in_features} inputs and {la.out_features} outputs"
        )
    return la


@torch.no_grad()
def _edge_samples(
    model: Any, layer: int, out_index: int, in_index: int, x: Tensor
) -> tuple[Tensor, Tensor]:
    """The edge's input and output on the data: two ``(batch,)`` tensors."""
    inputs = model.layer_inputs(x)[layer]  # (batch, in)
    phi = model.layers[layer].activations(inputs)  # (batch, out, in)
    return inputs[:, in_index], phi[:, out_index, in_index]


def _score(r2: float, complexity: int, weight_simple: float) -> float:
    # The KAN paper's ranking: log2 of the unexplained variance, traded against complexity.
    return (1 - weight_simple) * math.log2(1 + 1e-5 - min(r2, 1.0)) + weight_simple * complexity


def _lib(lib: Sequence[str] | dict[str, SymbolicFunction] | None) -> dict[str, SymbolicFunction]:
    if isinstance(lib, dict):
        return {k: get_function(v) for k, v in lib.items()}
    out = library(None if lib is None else list(lib))
    if not out:
        raise ValueError("lib must name at least one function")
    return out


def _rank(
    xs: Tensor, ys: Tensor, lib: dict[str, SymbolicFunction], weight_simple: float, **fit_kw: Any
) -> list[FitResult]:
    fits = []
    for f in lib.values():
        r = fit_params(xs, ys, f, **fit_kw)
        fits.append(
            FitResult(
                r.name, r.params, r.r2, r.complexity, _score(r.r2, r.complexity, weight_simple)
            )
        )
    return sorted(fits, key=lambda r: (r.score, -r.r2))


def suggest_symbolic(
    model: Any,
    layer: int,
    out_index: int,
    in_index: int,
    x: Tensor,
    lib: Sequence[str] | None = None,
    *,
    topk: int = 5,
    weight_simple: float = 0.8,
    **fit_kw: Any,
) -> list[FitResult]:
    """Rank library functions for edge ``in_index -> out_index`` of ``layer`` on the model input
    ``x`` (batch, widths[0]), best first (the top ``topk``).

    Score (lower is better): ``(1 - w) * log2(1 + 1e-5 - R^2) + w * complexity`` with
    ``w = weight_simple``, so a simpler function wins unless a complex one fits much better.
    ``fit_kw`` goes to :func:`fit_params`.
    """
    _check_edge(model, layer, out_index, in_index)
    check_int("topk", topk, minimum=1)
    w = check_float("weight_simple", weight_simple, minimum=0.0)
    if w > 1:
        raise ValueError(f"weight_simple must be in [0, 1], got {weight_simple}")
    functions = _lib(lib)
    xs, ys = _edge_samples(model, layer, out_index, in_index, check_kan_input(model, x)[1])
    return _rank(xs, ys, functions, w, **fit_kw)[:topk]


def fix_symbolic(
    model: Any,
    layer: int,
    out_index: int,
    in_index: int,
    name: str,
    x: Tensor | None = None,
    **fit_kw: Any,
) -> FitResult | None:
    """Replace edge ``in_index -> out_index`` of ``layer`` by the library function ``name``.

    With ``x`` (model inputs, (batch, widths[0])): ``(a, b, c, d)`` are fitted to the edge's current
    function on those data and the fit is returned. Without: identity parameters ``(1, 0, 1, 0)``,
    returns None. The parameters stay trainable. Nothing is changed if an argument is invalid.
    """
    la = _check_edge(model, layer, out_index, in_index)
    f = get_function(name)
    if x is None:
        la.set_symbolic(in_index, out_index, f.name)
        return None
    xs, ys = _edge_samples(model, layer, out_index, in_index, check_kan_input(model, x)[1])
    fit = fit_params(xs, ys, f, **fit_kw)
    la.set_symbolic(in_index, out_index, f.name, fit.params)
    return fit


def _all_constant_into(la: KANLinear, node: int) -> bool:
    """Whether every live edge of ``la`` into its output ``node`` is the constant ``"0"`` (so the
    node is constant because auto_symbolic dropped its inputs: no warning needed)."""
    names = la.symbolic_edges()
    live = torch.nonzero(la.mask[:, node] > 0).flatten().tolist()
    return bool(live) and all(names.get((i, node)) == "0" for i in live)


@torch.no_grad()
def _drop_if_negligible(
    model: Any, l_idx: int, i: int, o: int, mean: float, x: Tensor, tol: float
) -> bool:
    """Fix edge ``i -> o`` of layer ``l_idx`` of ``model`` to the constant ``mean`` if that moves
    the model's output on ``x`` by at most ``tol`` times its standard deviation (RMS, per output,
    the largest); otherwise leave the model untouched (the trial runs on a copy). Returns whether
    the edge was fixed."""
    trial = copy.deepcopy(model)
    params = (1.0, 0.0, 0.0, mean)
    trial.layers[l_idx].set_symbolic(i, o, "0", params)
    before = model(x)  # (batch, out)
    change = (trial(x) - before).square().mean(0).sqrt()  # (out,)
    scale = before.std(0).clamp_min(torch.finfo(before.dtype).tiny)
    if not (bool(torch.isfinite(change).all()) and float((change / scale).max()) <= tol):
        return False
    model.layers[l_idx].set_symbolic(i, o, "0", params)
    return True


# ---------------------------------------------------------------------- joint choice of edges
def _near_ties(
    ranked: list[FitResult], order: dict[str, int], thr: float, ratio: float, floor: float, k: int
) -> list[FitResult]:
    """The edge's candidates for the joint search: the best-ranked fit, then the simplest fits
    (complexity, then library order) whose unexplained variance ``1 - R^2`` is at most
    ``max(ratio * best, floor)``, at most ``k`` in all."""
    good = [r for r in ranked if r.r2 >= thr]
    best = min(1.0 - r.r2 for r in good)
    tol = max(ratio * best, floor)
    near = sorted(
        (r for r in good if 1.0 - r.r2 <= tol), key=lambda r: (r.complexity, order[r.name])
    )
    out = [good[0]]
    for r in near:
        if len(out) >= k:
            break
        if r.name not in {c.name for c in out}:
            out.append(r)
    return out


def _joint_error(
    model: Any,
    choice: dict[tuple[int, int, int], FitResult],
    x: Tensor,
    target: Tensor,
    steps: int,
) -> tuple[float, Any]:
    """Install ``choice`` (edge -> fit) on a copy of ``model``, refit the symbolic edges' affine
    constants (LBFGS, ``steps`` steps, the splines stay fixed) to ``target`` on ``x``; returns the
    RMS error divided by the target's standard deviation (inf if not finite) and the copy."""
    trial = copy.deepcopy(model)
    for (l_idx, o, i), fit in choice.items():
        trial.layers[l_idx].set_symbolic(i, o, fit.name, fit.params)
    scale = float(target.std().clamp_min(torch.finfo(target.dtype).tiny))
    p = _refit.plan(trial)
    if p is not None:  # all live edges symbolic: Levenberg-Marquardt to convergence
        theta, rms = _refit.levenberg_marquardt(
            p, _refit.read_theta(trial, p), x, target, iterations=steps
        )
        _refit.write_theta(trial, p, theta)
        return (rms / scale if math.isfinite(rms) else math.inf), trial
    params = [la.symbolic_affine for la in trial.layers if la.symbolic_affine is not None]
    for q in trial.parameters():
        q.requires_grad_(False)
    for q in params:
        q.requires_grad_(True)
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = (trial(x) - target).square().mean()
        if torch.isfinite(loss):
            loss.backward()
        return loss

    before = [q.detach().clone() for q in params]
    try:
        opt.step(closure)
    except RuntimeError:  # a line search that met a non-finite value: keep the initial fit
        pass
    with torch.no_grad():
        err = float((trial(x) - target).square().mean().sqrt()) / scale
        if not math.isfinite(err):
            for q, b in zip(params, before, strict=True):
                q.copy_(b)
            err = float((trial(x) - target).square().mean().sqrt()) / scale
    for q in trial.parameters():
        q.requires_grad_(True)
    return (err if math.isfinite(err) else math.inf), trial


def _final_refit(
    work: Any, chosen: dict[tuple[int, int, int], FitResult], x: Tensor, model: Any, steps: int
) -> Any:
    """``work`` with the ``chosen`` functions, their constants refitted jointly to the numeric
    ``model``'s output on all of ``x`` and, when every live edge is symbolic, rewritten in the
    canonical form of ``_symbolic_refit.canonical`` (the same function, better conditioned for the
    training that usually follows)."""
    with torch.no_grad():
        target = model(x)
    work = _joint_error(work, chosen, x, target, max(steps, 50))[1]
    p = _refit.plan(work)
    if p is not None:
        _refit.write_theta(work, p, _refit.canonical(p, _refit.read_theta(work, p)))
    return work


def _single_node_starts(
    cur: dict[tuple[int, int, int], FitResult], cands: dict[tuple[int, int, int], list[FitResult]]
) -> list[dict[tuple[int, int, int], FitResult]]:
    """Choices that keep one node of a hidden layer: its outgoing candidate edges all take one of
    their candidate functions, every other node's outgoing candidate edges the constant ``"0"``.
    Only where the edges out of that layer are all candidates and each has a ``"0"``."""
    out: list[dict[tuple[int, int, int], FitResult]] = []
    by_layer: dict[int, dict[int, list[tuple[int, int, int]]]] = {}
    for e in cands:
        by_layer.setdefault(e[0], {}).setdefault(e[2], []).append(e)
    for nodes in by_layer.values():
        if len(nodes) < 2:
            continue
        for keep, kept in nodes.items():
            others = [e for n, es in nodes.items() if n != keep for e in es]
            zeros = {e: next((r for r in cands[e] if r.name == "0"), None) for e in others}
            if any(z is None for z in zeros.values()):
                continue
            names = sorted({r.name for e in kept for r in cands[e] if r.name != "0"})
            for name in names:
                trial = dict(cur)
                trial.update(zeros)  # type: ignore[arg-type]
                for e in kept:
                    trial[e] = next((r for r in cands[e] if r.name == name), cur[e])
                out.append(trial)
    return out


def _joint_search(
    model: Any,
    cands: dict[tuple[int, int, int], list[FitResult]],
    x: Tensor,
    target: Tensor,
    steps: int,
    max_evals: int,
    floor: float,
    order: dict[str, int],
    functions: dict[str, SymbolicFunction] | None = None,
    loose: frozenset[tuple[int, int, int]] = frozenset(),
) -> dict[tuple[int, int, int], FitResult]:
    """Choose one candidate per edge by the whole model's error after refitting the constants.

    Starts from the better of "each edge's best-ranked fit" and "each edge's simplest non-constant
    candidate", then tries moves while they help: one edge at a time, then one function for all
    the candidate edges into one node (or out of one node) at once (the constant only for the
    edges out of a node: dropping it). A move is taken when it cuts the error by
    more than 10 %, or keeps it within 10 % and lowers the total complexity; errors below
    ``floor`` count as ``floor`` (the KAN itself is only that close to the data, so smaller
    differences say nothing). At most ``max_evals`` refits. With ``functions`` (the library; it
    must hold ``log`` and ``exp``), product starts (:mod:`kanlab._symbolic_starts`) are tried
    before the single-node starts; they may also drop the ``loose`` edges (numeric edges no
    library function fits: the choices without a product start leave them numeric)."""
    evals = 0

    def score(ch: dict[tuple[int, int, int], FitResult]) -> tuple[float, int]:
        nonlocal evals
        evals += 1
        err = _joint_error(model, ch, x, target, steps)[0]
        return max(err, floor), sum(r.complexity for r in ch.values())

    def better(a: tuple[float, int], b: tuple[float, int]) -> bool:
        return a[0] < 0.9 * b[0] or (a[0] <= 1.1 * b[0] and a[1] < b[1])

    def hopeless(ch: dict[tuple[int, int, int], FitResult], b: tuple[float, int]) -> bool:
        # errors count as >= floor: once b's error is within 10 % of the floor, only a simpler
        # choice can be better, so a choice at least as complex is not worth its refit
        return 0.9 * b[0] <= floor and sum(r.complexity for r in ch.values()) >= b[1]

    best_rank = {e: c[0] for e, c in cands.items()}
    # the simplest non-constant candidate (ties: library order)
    simple = {
        e: min((r for r in c if r.name != "0"), key=lambda r: (r.complexity, order[r.name]))
        for e, c in cands.items()
    }
    cur, cur_s = best_rank, score(best_rank)
    if simple != best_rank:
        s = score(simple)
        if better(s, cur_s) or s[0] <= 1.1 * cur_s[0]:
            cur, cur_s = simple, s
    # product starts: one node exp(sum of logs), the exponents fitted in log space; the other
    # nodes dropped. Tried first: they are few (one per node) and, for a product or power law,
    # exact where no choice among the per-edge candidates is
    if functions is not None and "log" in functions and "exp" in functions:
        for start in product_starts(model, x, target, cands.keys() | loose):
            if evals >= max_evals:
                break
            trial = dict(cur)
            for e, (name, params) in start.items():
                trial[e] = FitResult(
                    name, params, 0.0, functions[name].complexity if name != "0" else 0
                )
            if hopeless(trial, cur_s):
                continue
            s = score(trial)
            if better(s, cur_s):
                cur, cur_s = trial, s
    # single-node starts: keep one node of a hidden layer (each function of its outgoing edges
    # as a group) and drop the others' outgoing edges. Products and power laws are one node,
    # exp(sum of logs); pruning often leaves two or three nodes that share the work, and
    # dropping them is a move of several edges at once that no single move finds.
    for start in _single_node_starts(cur, cands):
        if evals >= max_evals:
            break
        if hopeless(start, cur_s):
            continue
        s = score(start)
        if better(s, cur_s):
            cur, cur_s = start, s
    # moves: (edges, name); single edges first, then groups (edges into / out of a node); the
    # constant "0" only for single edges and for all edges out of a node (dropping the node)
    groups: dict[tuple[str, int, int], list[tuple[int, int, int]]] = {}
    for e in cands:
        groups.setdefault(("into", e[0], e[1]), []).append(e)
        groups.setdefault(("from", e[0], e[2]), []).append(e)
    moves = []
    for e in cands:
        moves += [([e], n) for n in sorted({r.name for r in cands[e]})]
    for (kind, _, _), edges in groups.items():
        if len(edges) > 1:
            names = {r.name for e in edges for r in cands[e]}
            moves += [(edges, n) for n in sorted(names) if n != "0" or kind == "from"]
    # steepest descent: each round scores every move from the current choice (single edges
    # first, then groups, stopping at the first of the two kinds that helps) and takes the best
    n_single = sum(len(edges) == 1 for edges, _ in moves)
    while evals < max_evals:
        best_move = None
        for kind in (moves[:n_single], moves[n_single:]):
            for edges, name in kind:
                trial = dict(cur)
                for e in edges:
                    trial[e] = next((r for r in cands[e] if r.name == name), cur[e])
                if trial == cur or evals >= max_evals or hopeless(trial, cur_s):
                    continue
                s = score(trial)
                if better(s, cur_s) and (best_move is None or better(s, best_move[1])):
                    best_move = (trial, s)
            if best_move is not None:
                break
        if best_move is None:
            break
        cur, cur_s = best_move
    return cur


def auto_symbolic(
    model: Any,
    x: Tensor,
    lib: Sequence[str] | None = None,
    *,
    r2_threshold: float = 0.9,
    weight_simple: float = 0.8,
    drop_tolerance: float = 1e-2,
    joint: bool = True,
    joint_candidates: int = 3,
    joint_steps: int = 20,
    joint_max_evals: int = 60,
    joint_floor: float = 1e-3,
    refit_targets: bool = True,
    joint_products: bool = True,
    **fit_kw: Any,
) -> list[EdgeFit]:
    """Replace every live numeric edge by its best library function, layer by layer.

    For each edge (mask on, not yet symbolic) the candidates are ranked as in
    :func:`suggest_symbolic`; the best-ranked one with ``R^2 >= r2_threshold`` is fixed. An edge
    that no candidate fits that well is judged by what it does to the model's output: if replacing
    it by its mean (the constant function ``"0"`` with ``d`` = the mean) moves the output by at most
    ``drop_tolerance`` times the output's standard deviation (RMS over ``x``, largest over the
    outputs), it is fixed to that constant (a node that hardly matters, e.g. one left over by
    pruning that only fits noise, no longer blocks :func:`symbolic_formula`); otherwise it stays
    numeric (unless a product start of the joint search, below, drops it).
    ``drop_tolerance=0`` gives the old behaviour (such edges always stay numeric).
    Later layers are fitted on the outputs of the already-fixed earlier layers. An edge whose
    input is constant on ``x`` is fixed to ``"0"`` with ``d`` = its constant value (a warning says
    so). The model is changed only if every fit succeeds.

    Each edge of a later layer is fitted from its input as the already-fixed earlier layers
    compute it to what the edge computes in the numeric model (its spline at the numeric input):
    the composition is what has to match, so when an earlier edge's fitted function reshapes a
    node (x*y held by the KAN as F(g(x) + g(y)) with g fitted by x^2), the edge that reads the
    node absorbs the change. ``refit_targets=False`` is the old rule (the edge's spline evaluated
    at the new inputs).

    With ``joint=True`` (the default) the choice among good fits is then made by the whole model,
    not by each edge's R^2 alone: on a short range sin and exp imitate a square or a line to
    R^2 > 0.9999, and a product x*y held as ((x+y)^2 - (x-y)^2)/4 comes out as a mixture whose
    composed formula is off by 1e-3 to 1e-2. Each fitted edge keeps up to ``joint_candidates``
    candidates (its best-ranked fit, then the simplest fits whose ``1 - R^2`` is within 100 times
    the best's, or below 1e-2), plus the constant ``"0"`` when ``drop_tolerance > 0`` (a node
    left over by pruning that only helps the numeric fit is dropped when the model does as well
    without it); each choice of one candidate per edge is scored by the model's relative RMS
    error against the numeric model's output on (at most 256 rows of) ``x`` after refitting the
    constants of all symbolic edges jointly: Levenberg-Marquardt, at most ``joint_steps``
    iterations, when every live edge is symbolic (:mod:`kanlab._symbolic_refit`; it converges
    to the best constants of the choice, so an exact choice scores the numeric model's own
    error), else ``joint_steps`` LBFGS steps. The search starts from the better of the
    best-ranked and the simplest choice, then tries product starts (``joint_products=True``, the
    default, with ``log`` and ``exp`` in the library; :mod:`kanlab._symbolic_starts`): for each
    node of the last hidden layer whose inputs keep one sign, that node as ``exp`` of a sum of
    ``log`` edges, the exponents fitted by least squares in log space, every other node of the
    layer dropped (its edges the constant ``"0"``, an unfittable edge that matters included, which
    otherwise stays numeric): products, ratios and power laws of one-signed inputs, which a
    pruned KAN spreads over several nodes whose edges fit neither ``log`` nor ``exp``. Then
    single-node starts (keep one node of a hidden
    layer, each function of its outgoing edges, drop the others' outgoing edges: products and
    power laws are one node, exp of a sum of logs, which pruning often leaves spread over two or
    three nodes), then descends: each round scores every single-edge move (or, if none helps,
    every move of one function for all edges into or out of a node) and takes the best one that
    cuts the error by 10 % or keeps it within 10 % with less total complexity; errors below
    ``joint_floor`` count as equal; once the current choice's error is within 10 % of the floor,
    choices at least as complex are not refitted (they cannot win). At most ``joint_max_evals``
    refits (auto_symbolic takes 1-5 s of CPU on one thread for the [2-3, 1-5, 1] KANs of the
    recipe).

    Finally (with ``joint=True``, whether or not a search ran) the chosen functions' constants
    are refitted jointly on all of ``x`` (at least 50 iterations) and, when every live edge is
    symbolic, installed in a canonical form with the same values: linear edges ``(1, 0, c, d)``,
    powers, sqrt and log with ``|a| = 1``, exp with ``|c| = 1``, the constants of a hidden sum
    node's edges moved into the next edges' ``b`` and an output's constants onto one edge.
    Per-edge fits leave e.g. ``c*(a*x + b) + d`` with ``a ~ 3e-4`` and ``b, d ~ 1e4`` of opposite
    signs: exact, but the LBFGS training that usually follows stalls on it (F = mu*Nn stayed at
    RMSE 7e-3; canonical: x_1*x_2 to rounding). ``joint=False`` is the old rule (per-edge
    constants, no refit).

    Returns one :class:`EdgeFit` per visited edge (a dropped edge's fit is the ``"0"`` fit, with
    its R^2 on the edge, 0).
    """
    layers, x = check_kan_input(model, x)
    thr = check_float("r2_threshold", r2_threshold)
    w = check_float("weight_simple", weight_simple, minimum=0.0)
    if w > 1:
        raise ValueError(f"weight_simple must be in [0, 1], got {weight_simple}")
    drop_tol = check_float("drop_tolerance", drop_tolerance, minimum=0.0)
    check_int("joint_candidates", joint_candidates, minimum=1)
    check_int("joint_steps", joint_steps, minimum=1)
    check_int("joint_max_evals", joint_max_evals, minimum=1)
    joint_floor = check_float("joint_floor", joint_floor, minimum=0.0)
    if not isinstance(refit_targets, bool):
        raise TypeError(f"refit_targets must be a bool, got {refit_targets!r}")
    if not isinstance(joint_products, bool):
        raise TypeError(f"joint_products must be a bool, got {joint_products!r}")
    functions = _lib(lib)
    order = {name: k for k, name in enumerate(functions)}
    work = copy.deepcopy(model)  # all-or-nothing: fit on a copy, install at the end
    report: list[EdgeFit] = []
    cands: dict[tuple[int, int, int], list[FitResult]] = {}  # edge -> joint-search candidates
    loose: set[tuple[int, int, int]] = set()  # unfittable edges that matter (left numeric)
    with torch.no_grad():
        numeric_acts = model.activations(x)  # per layer (batch, out, in): the fits' targets
    for l_idx, la in enumerate(work.layers):
        with torch.no_grad():
            inputs = work.layer_inputs(x)[l_idx]
            # each edge is fitted from its input as the fixed earlier layers compute it to what
            # the edge computes in the numeric model (on the numeric input): the composition is
            # what must match, and when an earlier edge's function reshapes its node (x*y held by
            # the KAN as F(g(x) + g(y)), g fitted by x^2), the edge reading it absorbs the change
            # (F becomes linear) instead of being fitted to its spline at inputs it never saw
            phi = numeric_acts[l_idx] if refit_targets else la.activations(inputs)
        live = la.mask > 0
        if la.symbolic_mask is not None:
            live = live & (la.symbolic_mask == 0)
        for i, o in torch.nonzero(live).tolist():
            xs, ys = inputs[:, i], phi[:, o, i]
            if float(xs.max() - xs.min()) <= 1e-12 * (1 + float(xs.abs().max())):
                d = float(ys.mean())
                if not (l_idx > 0 and _all_constant_into(work.layers[l_idx - 1], i)):
                    warnings.warn(
                        f"edge (layer={l_idx}, out={o}, in={i}) has a constant input on x; "
                        f"fixed to the constant {d:.6g}",
                        stacklevel=2,
                    )
                fit = FitResult("0", (1.0, 0.0, 0.0, d), 1.0, 0)
                la.set_symbolic(i, o, "0", fit.params)
                report.append(EdgeFit(l_idx, o, i, fit, True))
                continue
            ranked = _rank(xs, ys, functions, w, **fit_kw)
            good = [r for r in ranked if r.r2 >= thr]
            if good:
                la.set_symbolic(i, o, good[0].name, good[0].params)
                near = _near_ties(ranked, order, thr, 100.0, 1e-2, joint_candidates)
                # and the constant: an edge (or a node, moved as a group) that only helps the
                # numeric fit is dropped when the refitted model does as well without it
                zero = FitResult("0", (1.0, 0.0, 0.0, float(ys.mean())), 0.0, 0)
                cands[(l_idx, o, i)] = [*near, zero] if drop_tol > 0 else near
            elif drop_tol > 0 and _drop_if_negligible(
                work, l_idx, i, o, float(ys.mean()), x, drop_tol
            ):
                zero = FitResult("0", (1.0, 0.0, 0.0, float(ys.mean())), 0.0, 0)
                report.append(EdgeFit(l_idx, o, i, zero, True))
                continue
            elif drop_tol > 0:
                loose.add((l_idx, o, i))  # numeric, unless a product start drops it
            report.append(EdgeFit(l_idx, o, i, good[0] if good else ranked[0], bool(good)))
    if joint and cands:
        sub = x
        if x.shape[0] > 256:  # evenly spread rows: the refits run on at most 256 points
            sub = x[torch.linspace(0, x.shape[0] - 1, 256).round().long()]
        with torch.no_grad():
            target = model(sub)
        chosen = {e: c[0] for e, c in cands.items()}
        if any(len(c) > 1 for c in cands.values()):
            chosen = _joint_search(
                work, cands, sub, target, joint_steps, joint_max_evals, joint_floor, order,
                functions if joint_products else None, frozenset(loose),
            )  # fmt: skip
        work = _final_refit(work, chosen, x, model, joint_steps)
        report = [
            EdgeFit(r.layer, r.out_index, r.in_index, chosen[key], True)
            if (key := (r.layer, r.out_index, r.in_index)) in chosen
            else r
            for r in report
        ]
    for orig, new in zip(layers, work.layers, strict=True):
        orig.load_state_dict(new.state_dict())
    return report


# ---------------------------------------------------------------------- formulas
@dataclass(frozen=True)
class Formula:
    """The symbolic model: one sympy expression per output, and a numeric evaluator.

    Indexing and iteration go over ``exprs``; ``formula(x)`` evaluates all outputs on ``x``
    (batch, n_in) (a tensor or array) and returns a float64 numpy array (batch, n_out).
    """

    exprs: list[Any]  # sympy expressions, one per output
    variables: list[Any]  # sympy symbols of the inputs, in input order
    fn: Callable[..., Any]  # sympy.lambdify(variables, exprs, "numpy")

    def __len__(self) -> int:
        return len(self.exprs)

    def __getitem__(self, k: int) -> Any:
        return self.exprs[k]

    def __iter__(self) -> Iterator[Any]:
        return iter(self.exprs)

    def __call__(self, x: Tensor | np.ndarray) -> np.ndarray:
        arr = x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)
        arr = arr.astype(np.float64)
        if arr.ndim != 2 or arr.shape[1] != len(self.variables):
            raise ValueError(f"x must have shape (batch, {len(self.variables)}), got {arr.shape}")
        outs = self.fn(*arr.T)
        return np.stack(
            [np.broadcast_to(np.asarray(o, dtype=np.float64), arr.shape[:1]) for o in outs], 1
        )


def _round_floats(expr: Any, precision: int) -> Any:
    import sympy as sp

    reps = {}
    for f in expr.atoms(sp.Float):
        r = round(float(f), precision)
        if r == int(r):
            reps[f] = sp.Integer(int(r))
        else:
            text = f"{r:.{precision}f}".rstrip("0")
            digits = len(text.replace("-", "").replace(".", "").lstrip("0"))
            reps[f] = sp.Float(text, max(digits, 1))
    return expr.xreplace(reps)


def _exact_units(expr: Any) -> Any:
    """The constants that are exactly 1.0, -1.0 or 0.0 as the integers 1, -1, 0 (the value is
    unchanged, so a full-precision formula reads ``x_1*x_2``, not ``1.0*x_1*x_2``); every other
    constant stays the float it is."""
    import sympy as sp

    reps = {f: sp.Integer(int(f)) for f in expr.atoms(sp.Float) if float(f) in (1.0, -1.0, 0.0)}
    return expr.xreplace(reps) if reps else expr


def _edge_expr(fn: SymbolicFunction, z: Any, p: list[float]) -> Any:
    import sympy as sp

    a, b, c, d = (sp.Float(v) for v in p)
    if fn.name == "exp" and p[2] > 0:  # c * exp(u) = exp(u + log c): reads better, same value
        return sp.exp(a * z + b + sp.Float(math.log(p[2]))) + d
    return c * fn.sympy_fn(a * z + b) + d


def symbolic_formula(
    model: Any, var_names: Sequence[str] | None = None, precision: int | None = 4
) -> Formula:
    """Compose the symbolic edges into one sympy expression per output.

    A multiplication node (:mod:`kanlab.mult`) becomes the product of its subnodes' sums. Every
    live edge (mask on) must be symbolic; otherwise a ValueError lists the numeric ones (fix
    them with :func:`fix_symbolic` / :func:`auto_symbolic`, or prune them). Products and powers of
    sums are expanded, then every constant is rounded to ``precision`` decimal places (constants
    that round to an integer become exact integers, to 0 vanish); ``precision=None`` keeps full
    precision (only constants that are exactly 1.0, -1.0 or 0.0 become the integers 1, -1, 0: the
    same values, so an identity edge reads ``x_1``, not ``1.0*x_1``). Variables are named
    ``x_1, x_2, ...`` unless ``var_names`` is given.
    """
    layers = kan_layers(model)
    import sympy as sp

    n_in = layers[0].in_features
    if var_names is None:
        var_names = [f"x_{i + 1}" for i in range(n_in)]
    var_names = list(var_names)
    if len(var_names) != n_in or not all(isinstance(v, str) and v for v in var_names):
        raise ValueError(f"var_names must be {n_in} non-empty strings, got {var_names!r}")
    if precision is not None:
        check_int("precision", precision, minimum=0)
    numeric = []
    for l_idx, la in enumerate(layers):
        sym = la.symbolic_mask if la.symbolic_mask is not None else torch.zeros_like(la.mask)
        for i, o in torch.nonzero((la.mask != 0) & (sym == 0)).tolist():
            numeric.append(f"(layer={l_idx}, out={o}, in={i})")
    if numeric:
        shown = ", ".join(numeric[:10]) + (
            f" and {len(numeric) - 10} more" if len(numeric) > 10 else ""
        )
        raise ValueError(
            f"{len(numeric)} live edge(s) are not symbolic: {shown}; fix them with fix_symbolic or "
            "auto_symbolic, or prune them, before asking for a formula"
        )
    variables = [sp.Symbol(v, real=True) for v in var_names]
    nodes: list[Any] = list(variables)
    lay = layout(model)
    for l_idx, la in enumerate(layers):
        edges = la.symbolic_edges()
        mask = la.mask.detach().cpu()
        affine = la.symbolic_affine.detach().cpu().double() if edges else None
        new_nodes: list[Any] = [sp.Integer(0)] * la.out_features
        for (i, o), name in sorted(edges.items()):
            m = float(mask[i, o])
            if m == 0:
                continue
            p = affine[i, o].tolist()
            p[2], p[3] = p[2] * m, p[3] * m
            new_nodes[o] = new_nodes[o] + _edge_expr(get_function(name), nodes[i], p)
        # subnodes -> nodes: a sum node is its subnode, a multiplication node their product
        nodes = [sp.Mul(*(new_nodes[s] for s in g)) for g in subnode_groups(*lay[l_idx + 1])]
    exprs = []
    for e in nodes:
        e = sp.expand(
            e, deep=True, mul=True, multinomial=True, power_exp=False, power_base=False, log=False
        )
        e = _round_floats(e, precision) if precision is not None else _exact_units(e)
        exprs.append(e)
    fn = sp.lambdify(variables, exprs, "numpy")
    return Formula(exprs, variables, fn)
