"""Joint least-squares refit of a KAN's symbolic constants: all edges' ``(a, b, c, d)`` at once.

Used by :func:`kanlab.auto_symbolic`. Fitting each edge's ``c * f(a*x + b) + d`` to its own spline
(``symbolic.fit_params``) gets each edge to R^2 > 0.9999, but the composed formula is then only as
good as the sum of those per-edge errors (1e-3 to 1e-1 on products such as x*y held as
((x+y)^2 - (x-y)^2)/4). Here the constants of every symbolic edge are fitted together to the
model's target output, so the function choice is judged, and installed, at its best constants.

The method is Levenberg-Marquardt on the residual ``r(theta) = model(x; theta) - target`` with the
Jacobian by forward-mode differentiation written out (:func:`evaluate_jacobian`: one pass carrying
the (batch, nodes, P) derivatives; P is at most a few hundred for the pruned KANs this serves). Near a solution it
converges quadratically, which the first-order LBFGS refits it replaces did not (20 steps left
errors of 1e-3 on exact function choices). Redundant constants (``d`` of two edges into one
node, ``a`` and ``c`` of a linear edge) make ``J^T J`` singular; the damping term keeps each step
defined (Marquardt's scaling by the diagonal plus a tiny multiple of the identity).

Pure tensor functions over a *plan* read once from the model: per layer the live symbolic edges
(input, output, function, mask value) grouped by function, and the node layout (multiplication
nodes multiply their subnodes). Only all-symbolic models are planned (``plan`` returns None when a
live edge is numeric; the caller then falls back to a first-order refit).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from kanlab.functions import get_function
from kanlab.mult import combine, layout

__all__ = [
    "Plan",
    "canonical",
    "evaluate",
    "evaluate_jacobian",
    "levenberg_marquardt",
    "plan",
    "read_theta",
    "write_theta",
]


@dataclass(frozen=True)
class _Layer:
    ins: Tensor  # (E,) int64 input node of each live symbolic edge (grouped by function)
    outs: Tensor  # (E,) int64 output subnode of each edge
    mask: Tensor  # (E,) the edges' mask values (the pruning mask multiplies c and d)
    flat: Tensor  # (E,) int64 position of each edge in the layer's flattened (in, out) table
    groups: tuple[tuple[Any, int, int], ...]  # (function record, start, end) runs of the edges
    n_sub: int  # outputs (subnodes) of the layer
    n_sum: int  # sum nodes among the next layer's nodes
    arities: tuple[int, ...]  # the next layer's multiplication nodes


@dataclass(frozen=True)
class Plan:
    """How to evaluate an all-symbolic KAN from a flat constant vector ``theta`` (E_total * 4,)."""

    layers: tuple[_Layer, ...]
    sizes: tuple[int, ...]  # edges per layer (theta holds 4 numbers per edge, layer by layer)


def plan(model: Any) -> Plan | None:
    """The plan of ``model``'s symbolic edges, or None if some live edge is numeric."""
    lay = layout(model)
    layers, sizes = [], []
    for l_idx, la in enumerate(model.layers):
        live = la.mask > 0  # (in, out)
        sym = la.symbolic_mask
        if sym is None or bool((live & (sym == 0)).any()):
            return None
        edges = la.symbolic_edges()
        order = sorted((name, i, o) for (i, o), name in edges.items() if bool(live[i, o]))
        ins, outs, groups, start = [], [], [], 0
        for name, i, o in order:
            if groups and groups[-1][0] == name:
                groups[-1][2] += 1
            else:
                groups.append([name, start, start + 1])
            ins.append(i)
            outs.append(o)
            start += 1
        dev = la.mask.device
        ii = torch.tensor(ins, dtype=torch.int64, device=dev)
        oo = torch.tensor(outs, dtype=torch.int64, device=dev)
        n_sum, arities = lay[l_idx + 1]
        layers.append(
            _Layer(
                ins=ii,
                outs=oo,
                mask=la.mask[ii, oo].detach(),
                flat=ii * la.out_features + oo,
                groups=tuple((get_function(n), s, e) for n, s, e in groups),
                n_sub=la.out_features,
                n_sum=n_sum,
                arities=tuple(arities),
            )
        )
        sizes.append(len(order))
    return Plan(tuple(layers), tuple(sizes))


def read_theta(model: Any, p: Plan) -> Tensor:
    """The planned edges' constants as one flat vector (a, b, c, d per edge, layer by layer)."""
    parts = [
        la.symbolic_affine.detach().reshape(-1, 4).index_select(0, pl.flat).reshape(-1)
        for la, pl in zip(model.layers, p.layers, strict=True)
    ]
    return torch.cat(parts).clone()


@torch.no_grad()
def write_theta(model: Any, p: Plan, theta: Tensor) -> None:
    """Install ``theta`` (as read by :func:`read_theta`) into the model's symbolic constants."""
    for la, pl, th in zip(
        model.layers, p.layers, theta.split([4 * s for s in p.sizes]), strict=True
    ):
        table = la.symbolic_affine.data.view(-1, 4)
        table.index_copy_(0, pl.flat, th.reshape(-1, 4).to(table.dtype))


def evaluate(p: Plan, theta: Tensor, x: Tensor) -> Tensor:
    """The all-symbolic model's output (batch, out) at constants ``theta``; pure, so that
    ``torch.func`` transforms apply."""
    h = x
    for pl, th in zip(p.layers, theta.split([4 * s for s in p.sizes]), strict=True):
        a, b, c, d = th.reshape(-1, 4).unbind(1)  # (E,) each
        z = h.index_select(1, pl.ins) * a + b  # (batch, E)
        parts = [fn.forward_fn(z[:, lo:hi]) for fn, lo, hi in pl.groups]
        f = parts[0] if len(parts) == 1 else torch.cat(parts, 1)
        v = f * (c * pl.mask) + d * pl.mask  # (batch, E)
        sub = h.new_zeros(h.shape[0], pl.n_sub).index_add(1, pl.outs, v)
        h = combine(sub, pl.n_sum, list(pl.arities))
    return h


@torch.no_grad()
def canonical(p: Plan, theta: Tensor) -> Tensor:
    """The same function with better-conditioned constants (``theta`` is not modified).

    Per-edge fits leave linear edges as ``c * (a*x + b) + d`` with ``a ~ 1e-4``, ``c ~ 1e3`` and
    ``b, d ~ 1e4`` of opposite signs that cancel: exact, but a first-order optimiser (the recipe's
    LBFGS fit after auto_symbolic) then stalls at 1e-4 on them. So a linear edge becomes
    ``(1, 0, c*a, c*b + d)`` (and powers, sqrt and log get ``|a| = 1``, exp ``|c| = 1``, each
    with the same values); the constants ``d`` of the edges into a hidden sum node are moved into
    the ``b`` of the node's outgoing edges (``f(a*(h + D) + b) = f(a*h + (a*D + b))``); and the
    ``d`` of the edges into an output (or into a factor of a multiplication node, which cannot pass
    them on) are summed into its first edge. Masked-out edges (mask 0) are left as they are."""
    th = theta.detach().clone().reshape(-1, 4)
    starts = [0]
    for s in p.sizes:
        starts.append(starts[-1] + s)
    for k, pl in enumerate(p.layers):
        rows = range(starts[k], starts[k + 1])
        live = [(r, e) for e, r in enumerate(rows) if float(pl.mask[e]) != 0.0]
        for r, e in live:
            th[r] = torch.tensor(_canonical_edge(_name_of(pl, e), *th[r].tolist()), dtype=th.dtype)
        node_d: dict[int, float] = {}
        for r, e in live:
            o = int(pl.outs[e])
            node_d[o] = node_d.get(o, 0.0) + float(th[r, 3]) * float(pl.mask[e])
            th[r, 3] = 0.0
        nxt = p.layers[k + 1] if k + 1 < len(p.layers) else None
        for o, dsum in node_d.items():
            if nxt is not None and o < pl.n_sum:  # a hidden sum node: into its readers' b
                for e2 in range(nxt.ins.numel()):
                    if int(nxt.ins[e2]) == o:
                        r2 = starts[k + 1] + e2
                        th[r2, 1] += th[r2, 0] * dsum
                if any(int(nxt.ins[e2]) == o for e2 in range(nxt.ins.numel())):
                    continue
            first = next(r for r, e in live if int(pl.outs[e]) == o)
            e_first = first - starts[k]
            th[first, 3] = dsum / float(pl.mask[e_first])
    return th.reshape(-1)


_DEGREE = {"x^2": 2.0, "x^3": 3.0, "x^4": 4.0, "sqrt": 0.5}  # f(s*u) = s^k f(u) for s > 0


def _canonical_edge(name: str, a: float, b: float, c: float, d: float) -> tuple[float, ...]:
    """Edge constants giving the same ``c * f(a*x + b) + d`` with ``|a| = 1`` where ``f`` allows
    it (x, powers, sqrt, log) or ``|c| = 1`` (exp); other functions are left as they are."""
    if a == 0.0 or not all(math.isfinite(v) for v in (a, b, c, d)):
        return a, b, c, d
    s = abs(a)
    if name == "x":
        return 1.0, 0.0, c * a, c * b + d
    if name in _DEGREE:  # c * (a x + b)^k = c s^k (sign(a) x + b/s)^k
        return math.copysign(1.0, a), b / s, c * s ** _DEGREE[name], d
    if name == "log":  # c log(a x + b) = c log(sign(a) x + b/s) + c log(s)
        return math.copysign(1.0, a), b / s, c, d + c * math.log(s)
    if name == "exp" and c != 0.0:  # c exp(a x + b) = sign(c) exp(a x + b + log|c|)
        return a, b + math.log(abs(c)), math.copysign(1.0, c), d
    return a, b, c, d


def _name_of(pl: _Layer, e: int) -> str:
    return next(fn.name for fn, lo, hi in pl.groups if lo <= e < hi)


def _derivative(fn: Any, z: Tensor, f: Tensor) -> Tensor:
    """f'(z) of the record's forward function (its derivative record, else autograd)."""
    if fn.derivative is not None:
        d = fn.derivative(z, f)
        return d if isinstance(d, Tensor) else torch.full_like(z, float(d))
    with torch.enable_grad():
        zl = z.detach().requires_grad_(True)
        fl = fn.forward_fn(zl)
        if not fl.requires_grad:
            return torch.zeros_like(z)
        return torch.autograd.grad(fl, zl, torch.ones_like(fl))[0]


@torch.no_grad()
def evaluate_jacobian(p: Plan, theta: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    """The output (batch, out) and its Jacobian in ``theta`` (batch, out, P), by forward-mode
    differentiation written out (chain rule layer by layer, the product rule at multiplication
    nodes): a few small dense products, where ``torch.func.jacfwd`` over :func:`evaluate` took
    tens of milliseconds per call in decomposed ``index_add`` kernels."""
    n_p = theta.numel()
    h = x
    dh = x.new_zeros(*x.shape, n_p)  # (batch, nodes, P)
    offset = 0
    for pl, th in zip(p.layers, theta.split([4 * s for s in p.sizes]), strict=True):
        n_e = pl.ins.numel()
        a, b, c, d = th.reshape(-1, 4).unbind(1)  # (E,) each
        hin = h.index_select(1, pl.ins)  # (batch, E)
        z = hin * a + b
        f = torch.empty_like(z)
        fp = torch.empty_like(z)
        for fn, lo, hi in pl.groups:
            f[:, lo:hi] = fn.forward_fn(z[:, lo:hi])
            fp[:, lo:hi] = _derivative(fn, z[:, lo:hi], f[:, lo:hi])
        cm, dm = c * pl.mask, d * pl.mask
        v = f * cm + dm  # (batch, E)
        # dv/dtheta: through the edge's input (earlier constants), and its own a, b, c, d
        dv = dh.index_select(1, pl.ins) * (fp * cm * a).unsqueeze(2)  # (batch, E, P)
        idx = offset + 4 * torch.arange(n_e, device=x.device)
        rows = torch.arange(n_e, device=x.device)
        dv[:, rows, idx] += fp * cm * hin  # d/da
        dv[:, rows, idx + 1] += fp * cm  # d/db
        dv[:, rows, idx + 2] += f * pl.mask  # d/dc
        dv[:, rows, idx + 3] += pl.mask  # d/dd
        sub = h.new_zeros(h.shape[0], pl.n_sub).index_add(1, pl.outs, v)
        dsub = h.new_zeros(h.shape[0], pl.n_sub, n_p).index_add(1, pl.outs, dv)
        if pl.arities:  # multiplication nodes: the product rule, factor by factor
            nodes, dnodes = [sub[:, : pl.n_sum]], [dsub[:, : pl.n_sum]]
            start = pl.n_sum
            for ar in pl.arities:
                val, dval = sub[:, start], dsub[:, start]
                for t in range(start + 1, start + ar):
                    dval = dval * sub[:, t, None] + val[:, None] * dsub[:, t]
                    val = val * sub[:, t]
                nodes.append(val[:, None])
                dnodes.append(dval[:, None])
                start += ar
            sub, dsub = torch.cat(nodes, 1), torch.cat(dnodes, 1)
        h, dh = sub, dsub
        offset += 4 * n_e
    return h, dh


def _loss(p: Plan, theta: Tensor, x: Tensor, target: Tensor) -> float:
    r = evaluate(p, theta, x) - target
    v = float(r.square().sum())
    return v if math.isfinite(v) else math.inf


def levenberg_marquardt(
    p: Plan,
    theta: Tensor,
    x: Tensor,
    target: Tensor,
    *,
    iterations: int = 40,
    rtol: float = 1e-15,
) -> tuple[Tensor, float]:
    """Minimise ``sum (evaluate(p, theta, x) - target)^2`` over ``theta`` from the given start.

    Returns the best ``theta`` found and its RMS error. Stops after ``iterations`` accepted or
    rejected steps, or when an accepted step improves the loss by less than ``rtol`` of it, or
    when the damping grows past 1e12 (no descent left at this precision)."""
    theta = theta.detach().clone()
    loss = _loss(p, theta, x, target)
    n = target.numel()
    if not math.isfinite(loss) or theta.numel() == 0:
        return theta, math.sqrt(loss / n) if math.isfinite(loss) else math.inf
    mu = 1e-3
    eye = torch.eye(theta.numel(), dtype=theta.dtype, device=theta.device)
    jac = None
    for _ in range(iterations):
        if loss == 0.0:
            break
        if jac is None:
            out, jac = evaluate_jacobian(p, theta, x)
            r = (out - target).reshape(-1)
            jac = jac.reshape(r.numel(), -1)  # (N, P)
            if not bool(torch.isfinite(jac).all()):
                break
            jtj, g = jac.T @ jac, jac.T @ r
            diag = jtj.diagonal().clone()
            floor = 1e-12 * float(diag.max().clamp_min(1e-300))
        step_mat = jtj + mu * (torch.diag(diag) + floor * eye)
        sol, info = torch.linalg.solve_ex(step_mat, -g)
        cand = theta + sol if int(info) == 0 else theta
        new = _loss(p, cand, x, target) if int(info) == 0 else math.inf
        if new < loss:
            gain = (loss - new) / loss
            theta, loss, jac = cand, new, None
            mu = max(mu / 3, 1e-12)
            if gain < rtol:
                break
        else:
            mu *= 4
            if mu > 1e12:
                break
    return theta, math.sqrt(loss / n)
