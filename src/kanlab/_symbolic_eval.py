"""Grouped evaluation of a layer's symbolic edges:
``y[:, o] = sum over edges e into o of m_e * (c_e * f_e(a_e * x[:, in_e] + b_e) + d_e)``.

Pure tensor functions used by :class:`kanlab.KANLinear`. The edges come sorted by function, and
each run of edges sharing a function ``f`` is evaluated at once on an edge-major (E_g, batch)
slab: one call of ``f`` per function present, never a Python loop over edges. Two paths, same
values (to rounding) and gradients:

- **fused CPU path** (:mod:`kanlab.kernels.cpu.symbolic`, needs Numba), taken on CPU
  (float32/float64) whenever the spline kernels take their Numba backend
  (``kernels.select_backend``; ``kernels.set_backend("reference")`` turns both off). One compiled
  pass writes ``a*x + b`` of every edge into an (E, batch) slab; torch overwrites each group's
  rows with ``f`` of them (its vectorised transcendental functions); one compiled pass adds
  ``c*f + d`` (and the numeric branch's result, ``base``) into the outputs. The slab of ``f`` is
  the only tensor kept for backward (with a host copy of x), which computes ``f'`` inside the
  gradient kernel for the built-in derivatives that are arithmetic in ``z`` and ``f`` (x, 0, x^2,
  tanh, exp, sigmoid, gaussian), refills a slab with ``a*x + b`` and then ``f'`` for the other
  groups only (the record's ``derivative``, in place for sin/cos, else autograd), and makes one
  compiled pass for the input gradient and the batch sums of the
  (a, b, c, d) gradients. With torch ops alone each edge cost about a dozen freshly allocated
  (E, batch) temporaries and passes (gather, ``*a``, ``+b``, ``*c``, index-add, the concatenation
  of the groups, and twice as many in backward), which made a layer of symbolic edges train
  about three times slower than a layer of spline edges on a CPU. A backward that must itself
  be differentiable (``create_graph=True``: second derivatives, e.g. a PINN's Laplacian)
  differentiates the torch-ops evaluation of the same sum instead (slower, same values).
- **torch ops** (elsewhere: GPU, other dtypes): the same per-group evaluation with autograd all
  the way (higher derivatives work).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from kanlab import functions as _fns
from kanlab import kernels
from kanlab.functions import SymbolicFunction, _zero, get_function

__all__ = ["symbolic_sum"]

Group = tuple[SymbolicFunction, int, int]  # (function, first edge, end edge) of one run


def _torch_sum(
    x2: Tensor,
    affine: Tensor,
    mask: Tensor,
    flat: Tensor,
    index_in: Tensor,
    index_out: Tensor,
    groups: Sequence[Group],
    n_out: int,
) -> Tensor:
    p = affine.reshape(-1, 4).index_select(0, flat)  # (E, 4)
    m = mask.reshape(-1).index_select(0, flat).unsqueeze(1)  # (E, 1) pruning mask
    a, b, c, d = p.unsqueeze(2).unbind(1)  # (E, 1) each
    c, d = c * m, d * m
    xt = x2.T.contiguous().index_select(0, index_in)  # (E, batch): gathers copy whole rows
    z = xt * a + b  # a*x + b (mul + add: faster backward than addcmul)
    y = x2.new_zeros(n_out, x2.shape[0])  # (out, batch)
    sizes = [hi - lo for _, lo, hi in groups]  # the runs cover the E edges in order
    # split, not slicing: its backward is one concatenation, where slices would each fill a zero
    # (E, batch) tensor
    for (fn, lo, hi), zg in zip(groups, z.split(sizes), strict=True):
        if fn.forward_fn is _zero:  # f = 0 adds nothing (a, b, c get zero gradients)
            continue
        y = y.index_add(0, index_out[lo:hi], fn.forward_fn(zg) * c[lo:hi])
    bias = d.new_zeros(n_out).index_add(0, index_out, d.squeeze(1))  # (out,) the d constants
    return (y + bias.unsqueeze(1)).T  # (batch, out)


def _derivative(fn: SymbolicFunction, z: Tensor, f: Tensor) -> Tensor | float:
    """f'(z) of ``fn.forward_fn``: the record's formula, else autograd (elementwise functions)."""
    if fn.derivative is not None:
        return fn.derivative(z, f)
    with torch.enable_grad():
        zl = z.detach().requires_grad_(True)
        fl = fn.forward_fn(zl)
        if not fl.requires_grad:  # f does not depend on its argument
            return 0.0
        return torch.autograd.grad(fl, zl, torch.ones_like(fl))[0]


def _builtin(name: str) -> SymbolicFunction:
    return next(f for f in _fns._BUILTIN if f.name == name)


# In-place forms of built-in forward functions (the same torch kernels, so the same values): the
# fused path overwrites a group's rows of the slab without a fresh tensor and a copy. Keyed by the
# function object itself, so a re-registered name with another function is never mistaken.
_IN_PLACE: dict[object, object] = {
    torch.sin: torch.Tensor.sin_,
    torch.cos: torch.Tensor.cos_,
    torch.tanh: torch.Tensor.tanh_,
    torch.sigmoid: torch.Tensor.sigmoid_,
    torch.atan: torch.Tensor.atan_,
    torch.abs: torch.Tensor.abs_,
    _fns._exp_safe: lambda z: z.clamp_max_(80.0).exp_(),  # torch.exp(z.clamp_max(80.0))
    _builtin("x^2").forward_fn: lambda z: z.pow_(2),  # z**2
    _fns._gaussian: lambda z: z.pow_(2).neg_().exp_(),  # torch.exp(-(z**2))
}


# In-place forms of built-in derivative records that need the slab (values as the record's).
_D_IN_PLACE: dict[object, object] = {
    _fns._d_sin: torch.Tensor.cos_,  # torch.cos(z)
    _fns._d_cos: lambda z: z.sin_().neg_(),  # -torch.sin(z)
}


def _derivative_kinds() -> dict[object, int]:
    """Derivative records whose f' the backward kernel computes itself (see kernels.cpu.symbolic)."""
    from kanlab.kernels.cpu import symbolic as k

    return {
        _fns._d_one: k.KIND_ONE,
        _fns._d_zero: k.KIND_ZERO,
        _builtin("x^2").derivative: k.KIND_SQUARE,
        _fns._d_tanh: k.KIND_TANH,
        _fns._d_exp: k.KIND_EXP,
        _fns._d_sigmoid: k.KIND_SIGMOID,
        _fns._d_gaussian: k.KIND_GAUSSIAN,
    }


class _Plan(NamedTuple):
    """How the fused path evaluates one sequence of groups, worked out once per sequence."""

    forward: tuple  # per group (fn, lo, hi, in-place form of f or None)
    kinds: np.ndarray  # (E,) int64 per-edge KIND_* of the backward kernel
    slab: tuple  # the groups whose f' goes through the slab: (fn, lo, hi, in-place f' or None)


_KINDS: dict[object, int] | None = None  # filled on the first fused call (numba is imported then)
_PLANS: dict[tuple, _Plan] = {}


def _plan(groups: tuple[Group, ...]) -> _Plan:
    """The plan of ``groups`` (cached by the records and ranges: re-registering a name with other
    functions gives other records, hence a new plan)."""
    plan = _PLANS.get(groups)
    if plan is not None:
        return plan
    global _KINDS
    if _KINDS is None:
        _KINDS = _derivative_kinds()
    kinds = np.zeros(groups[-1][2] if groups else 0, dtype=np.int64)  # 0 = KIND_SLAB
    forward, slab = [], []
    for fn, lo, hi in groups:
        f = fn.forward_fn
        kind = 2 if f is _zero else _KINDS.get(fn.derivative, 0)  # 2 = KIND_ZERO
        kinds[lo:hi] = kind
        forward.append((fn, lo, hi, _IN_PLACE.get(f)))
        if kind == 0:
            slab.append((fn, lo, hi, _D_IN_PLACE.get(fn.derivative)))
    if len(_PLANS) > 256:
        _PLANS.clear()
    plan = _PLANS[groups] = _Plan(tuple(forward), kinds, tuple(slab))
    return plan


def _np(t: Tensor) -> np.ndarray:
    return t.detach().contiguous().numpy()


class _FusedSum(torch.autograd.Function):
    """The sum on CPU with the kernels of :mod:`kanlab.kernels.cpu.symbolic`.

    Forward: one kernel call writes ``a*x + b`` of every edge into an (E, batch) slab; torch
    replaces each group's rows by ``f`` of them (in place where ``f`` allows); one kernel call
    writes ``base + sum of c*f + d`` (``base``: the numeric branch, or zeros). The slab of ``f``
    and the transposed input are kept for backward, which fills ``f'`` on a second slab only for
    the groups the kernel cannot derive itself (``_Plan.slab``) and makes one kernel call for all
    gradients. The kernels read the layer's whole affine table and mask through the edges' flat
    positions, so that gathering and masking are neither copies nor autograd nodes, and take
    the (batch, features) layouts (one compiled transpose of x per call). Classic ``forward(ctx,
    ...)`` style: the ``setup_context`` style inspects the signature on every call."""

    @staticmethod
    def forward(ctx, x2, affine, mask, base, idx, plan, graph):  # type: ignore[override]
        from kanlab.kernels.cpu import symbolic as k

        xt = k.transpose(_np(x2))  # (in, batch), kept for backward
        an = _np(affine).reshape(-1, 4)  # (in*out, 4)
        m = mask.detach().reshape(-1).numpy().copy()  # (in*out,): mask values at this call
        n_e = idx.shape[1]
        n = xt.shape[1]
        slab = torch.empty(n_e, n, dtype=x2.dtype)  # (E, batch)
        k.affine(xt, an, idx, 0, n_e, slab.numpy())
        for fn, lo, hi, in_place in plan.forward:
            z = slab[lo:hi]  # (E_g, batch): a*x + b, overwritten by f(a*x + b)
            if fn.forward_fn is _zero:
                z.zero_()
            elif in_place is not None:
                in_place(z)
            else:
                f = fn.forward_fn(z)
                if f.data_ptr() != z.data_ptr() or f.stride() != z.stride():  # not f(x) = x
                    z.copy_(f)
        y = torch.empty(n, mask.shape[1], dtype=x2.dtype)  # (batch, out)
        has_base = base is not None
        bn = _np(base) if has_base else y.numpy()
        k.scatter(slab.numpy(), an, m, idx, bn, has_base, y.numpy())
        ctx.host = (plan, m, idx, xt)  # host copies of the mask and input (values at this call)
        ctx.graph = graph  # what the torch-ops evaluation needs, for a differentiable backward
        ctx.save_for_backward(affine, slab, x2)
        return y

    @staticmethod
    def backward(ctx, grad_y):  # type: ignore[override]
        # A backward that must itself be differentiable (``torch.autograd.grad(...,
        # create_graph=True)``: grad mode is on here only then) differentiates the torch-ops
        # evaluation of the same sum instead, so that second derivatives are right; before, the
        # kernel's gradient was a constant to autograd and a Hessian came out silently 0.
        if torch.is_grad_enabled():
            return _differentiable_backward(ctx, grad_y)
        return _fused_backward(ctx, grad_y)


def _differentiable_backward(ctx: Any, grad_y: Tensor) -> tuple[Tensor | None, ...]:
    """:class:`_FusedSum`'s gradients through torch ops (same values to rounding), with a graph."""
    affine, _, x2 = ctx.saved_tensors
    _, m, _, _ = ctx.host
    flat, index_in, index_out, runs, n_out = ctx.graph
    mask = torch.from_numpy(m).reshape(affine.shape[:2])  # the mask's values at the forward call
    # base is left out of the sum: it usually depends on x2 itself (the numeric branch), and
    # autograd.grad in x2 would count that path too, which autograd then follows again from
    # base's gradient (the direct partial of the sum in base is grad_y)
    wanted = [(i, t) for i, t in enumerate((x2, affine)) if ctx.needs_input_grad[i]]
    y = _torch_sum(x2, affine, mask, flat, index_in, index_out, runs, n_out)
    grads = torch.autograd.grad(
        y, [t for _, t in wanted], grad_y, create_graph=True, allow_unused=True
    )
    out: list[Tensor | None] = [None] * 7
    for (i, _), g in zip(wanted, grads, strict=True):
        out[i] = g
    out[3] = grad_y if ctx.needs_input_grad[3] else None
    return tuple(out)


@torch.no_grad()
def _fused_backward(ctx: Any, grad_y: Tensor) -> tuple[Tensor | None, ...]:
    """:class:`_FusedSum`'s first-order gradients from the fused kernels."""
    from kanlab.kernels.cpu import symbolic as k

    affine, f, _ = ctx.saved_tensors
    plan, m, idx, xt = ctx.host
    an = _np(affine).reshape(-1, 4)
    slab = f  # (E, batch): f' on the rows of the plan's slab groups (other rows not read)
    if plan.slab:
        slab = torch.empty_like(f)
        for fn, lo, hi, in_place in plan.slab:
            k.affine(xt, an, idx, lo, hi, slab.numpy())  # a*x + b, overwritten by f'
            z = slab[lo:hi]
            if in_place is not None:
                in_place(z)
                continue
            fd = _derivative(fn, z, f[lo:hi])
            if isinstance(fd, Tensor):
                z.copy_(fd)
            else:
                z.fill_(fd)
    need_x = ctx.needs_input_grad[0]
    gx = torch.empty((xt.shape[1], xt.shape[0]) if need_x else (0, 0), dtype=f.dtype)
    grad_affine = torch.zeros_like(affine, memory_format=torch.contiguous_format)
    gy = _np(grad_y)  # (batch, out)
    k.backward(
        xt, gy, f.numpy(), slab.numpy(), an, m, idx, plan.kinds, need_x, gx.numpy(),
        grad_affine.numpy().reshape(-1, 4),
    )  # fmt: skip
    grad_base = grad_y if ctx.needs_input_grad[3] else None
    return gx if need_x else None, grad_affine, None, grad_base, None, None, None


def _fused_ok(x2: Tensor) -> bool:
    """Whether the fused CPU kernels take this call (where the spline kernels take Numba)."""
    return (
        x2.device.type == "cpu"
        and x2.dtype in (torch.float32, torch.float64)
        and kernels.select_backend(x2).name == "numba"
    )


def symbolic_sum(
    x2: Tensor,
    affine: Tensor,
    mask: Tensor,
    flat: Tensor,
    index_in: Tensor,
    index_out: Tensor,
    groups: Sequence[tuple[str, int, int]],
    n_out: int,
    *,
    base: Tensor | None = None,
    host_index: np.ndarray | None = None,
) -> Tensor:
    """``base + y`` with ``y[:, o] = sum over edges e into o of m_e * (c_e * f_e(a_e * x[:, in_e]
    + b_e) + d_e)``.

    Shapes: ``x2`` (batch, in); ``affine`` (in, out, 4) the (a, b, c, d) table; ``mask``
    (in, out) the 0/1 pruning mask m; ``flat``, ``index_in``, ``index_out`` (E,) int64, the
    symbolic edges' positions in the flattened (in, out) table and their input and output nodes,
    sorted so that each group's edges are contiguous; ``groups`` the (function name, start, end)
    runs in that order; ``base`` (batch, out) or None (zeros), added to the result (in the same
    pass on CPU); ``host_index`` optionally the (3, E) int64 array of rows (index_in, index_out,
    flat) on the host, to spare rebuilding it. Returns (batch, out). Differentiable in ``x2``,
    ``affine`` and ``base``.
    """
    runs = tuple((get_function(name), lo, hi) for name, lo, hi in groups)
    if _fused_ok(x2):
        if host_index is None:
            host_index = np.stack([index_in.numpy(), index_out.numpy(), flat.numpy()])
        graph = (flat, index_in, index_out, runs, n_out)
        return _FusedSum.apply(x2, affine, mask, base, host_index, _plan(runs), graph)
    y = _torch_sum(x2, affine, mask, flat, index_in, index_out, runs, n_out)
    return y if base is None else base + y
