"""The CPU backend's entry points (a :class:`kanlab.kernels.backends.KernelModule`):
:func:`forward` and :func:`backward` take torch tensors, prepare the
arrays the kernels share (the per-knots arrays are cached) and run the kernels in parallel.
"""

from __future__ import annotations

import weakref

import torch
from torch import Tensor

from kanlab.kernels.cpu import buffers as _buffers
from kanlab.kernels.cpu import derivatives as _derivatives
from kanlab.kernels.cpu.backward import _grad_weight, _grad_x
from kanlab.kernels.cpu.forward import _forward
from kanlab.kernels.cpu.threads import _dispatch, _n_threads
from kanlab.kernels.cpu.tuning import _large_table

__all__ = ["backward", "derivative_forward", "derivative_input", "derivative_table", "forward"]


# Per-knots arrays (knots, t0, h), cached by tensor identity and in-place version: the grid of a layer
# changes only when its knots do, and recomputing t0/h with torch ops cost ~40 us per kernel call.
_KNOTS_CACHE: dict[int, tuple] = {}


def _knot_arrays(knots: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """knots (in, G+2k+1), t0 (in,) and h (in,), contiguous (the same float ops as
    :func:`kanlab.splines.sparse_basis`, so intervals agree exactly)."""
    key = id(knots)
    entry = _KNOTS_CACHE.get(key)
    if entry is not None and entry[0]() is knots and entry[1] == knots._version:
        return entry[2]
    arrays = knot_origin_and_step(knots)
    if len(_KNOTS_CACHE) > 512:  # stale entries of freed tensors
        _KNOTS_CACHE.clear()
    try:
        _KNOTS_CACHE[key] = (weakref.ref(knots), knots._version, arrays)
    except TypeError:  # not weak-referenceable: no caching
        pass
    return arrays


def knot_origin_and_step(knots: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """knots (..., n) -> knots, t0 (...,) and h (...,), contiguous: the first knot and the uniform
    spacing of each row (same formula, same float ops, as :func:`kanlab.splines.sparse_basis`).
    Leading dimensions are any: (in,) for one layer, (M, in) for a model batch."""
    n = knots.shape[-1]
    kn = knots.detach().contiguous()
    t0 = kn[..., 0].contiguous()
    h = (kn[..., -1] - t0) / (n - 1)
    return kn, t0, h.contiguous()


def _grid(x: Tensor, knots: Tensor) -> tuple[Tensor, ...]:
    """Tensors shared by the kernels: x (batch, in), t0 (in,), h (in,), knots (in, G+2k+1).

    x is not transposed here: the kernels copy the inputs of a block of samples into a small
    (in, block) scratch (cache-hot) instead of a batch-sized transposed copy per call."""
    kn, t0, h = _knot_arrays(knots)
    return x.detach().contiguous(), t0, h, kn


def _scale_array(scale: Tensor | None, weight: Tensor) -> Tensor:
    """The per-edge scale (..., in, out) of weight (..., in, G+k, out), contiguous; ones when
    there is none."""
    if scale is None:
        return torch.ones(*weight.shape[:-2], weight.shape[-1], dtype=weight.dtype)
    return scale.detach().contiguous()


def forward(
    x: Tensor,
    knots: Tensor,
    weight: Tensor,
    spline_order: int,
    uniform: bool,
    scale: Tensor | None = None,
) -> Tensor:
    """x (batch, in), knots (in, G+2k+1), weight (in, G+k, out), scale (in, out) or None
    -> y (batch, out) with the coefficient table ``weight * scale[:, None, :]``."""
    xs, t0, h, kn = _grid(x, knots)
    w = weight.detach().contiguous()
    y = torch.empty(x.shape[0], w.shape[2], dtype=x.dtype)  # zeroed by the kernel
    if x.shape[0] > 0:
        args = (xs, t0, h, kn, w, _scale_array(scale, w), spline_order, uniform, y)
        _dispatch(_forward, args, x.shape[0], _n_threads())
    return y


def backward(
    grad_y: Tensor,
    x: Tensor,
    knots: Tensor,
    weight: Tensor,
    scale: Tensor | None,
    spline_order: int,
    uniform: bool,
    need_x: bool,
    need_weight: bool,
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Gradients w.r.t. x (batch, in), weight (in, G+k, out) and scale (in, out) of
    ``sum(grad_y * y)``; the scale gradient comes with the weight gradient (None without scale)."""
    xs, t0, h, kn = _grid(x, knots)
    gy = grad_y.detach().contiguous()
    w = weight.detach().contiguous()
    sc = _scale_array(scale, w)
    n_threads = _n_threads()
    gx = gw = gs = None
    if need_x:
        gx = torch.empty(x.shape, dtype=x.dtype)  # every entry written by a kernel
    # On large grids the coefficient-gradient kernel also writes gx (one pass over the samples).
    fused = need_x and need_weight and x.shape[0] > 0 and _large_table(w.numpy())
    if need_weight:
        if x.shape[0] > 0:
            gw = _buffers.empty(weight.shape, weight.dtype)  # written whole by the kernel
            gs = torch.empty(weight.shape[0], weight.shape[2], dtype=weight.dtype)
            gx_arg = gx if fused else x.new_empty(0, x.shape[1])
            args = (xs, t0, h, kn, gy, w, sc, gs, gx_arg, spline_order, uniform, gw)
            _dispatch(_grad_weight, args, x.shape[1], n_threads)
        else:
            gw = torch.zeros(weight.shape, dtype=weight.dtype)
            gs = torch.zeros(weight.shape[0], weight.shape[2], dtype=weight.dtype)
    if need_x and not fused and x.shape[0] > 0:
        args = (xs, t0, h, kn, w, sc, gy, spline_order, uniform, gx)
        _dispatch(_grad_x, args, x.shape[0], n_threads)
    return gx, gw, (gs if scale is not None else None)


# ------------------------------------------------------------ higher derivatives (kanlab.kernels.sparse)
def _factor_array(a: Tensor | None, x: Tensor) -> Tensor:
    """The per-(sample, input) factor (batch, in), contiguous; no rows when there is none (ones)."""
    if a is None:
        return x.new_empty(0, x.shape[1])
    return a.detach().contiguous()


def derivative_forward(
    a: Tensor | None,
    x: Tensor,
    knots: Tensor,
    weight: Tensor,
    spline_order: int,
    uniform: bool,
    scale: Tensor | None,
    order: int,
) -> Tensor:
    """``y[b, o] = sum_i a[b, i] scale[i, o] sum_g B^(order)_g(x[b, i]) weight[i, g, o]``
    (batch, out); a (batch, in) or None (ones)."""
    xs, t0, h, kn = _grid(x, knots)
    w = weight.detach().contiguous()
    y = torch.empty(x.shape[0], w.shape[2], dtype=x.dtype)
    args = (xs, t0, h, kn, _factor_array(a, x), w, _scale_array(scale, w))
    _derivatives._product(*(t.numpy() for t in args), spline_order, uniform, order, y.numpy())
    return y


def derivative_input(
    grad_y: Tensor,
    x: Tensor,
    knots: Tensor,
    weight: Tensor,
    spline_order: int,
    uniform: bool,
    scale: Tensor | None,
    order: int,
) -> Tensor:
    """``d[b, i] = sum_o grad_y[b, o] scale[i, o] sum_g B^(order)_g(x[b, i]) weight[i, g, o]``
    (batch, in)."""
    xs, t0, h, kn = _grid(x, knots)
    w = weight.detach().contiguous()
    d = torch.empty(x.shape, dtype=x.dtype)
    args = (xs, t0, h, kn, grad_y.detach().contiguous(), w, _scale_array(scale, w))
    _derivatives._contract(*(t.numpy() for t in args), spline_order, uniform, order, d.numpy())
    return d


def derivative_table(
    a: Tensor | None,
    grad_y: Tensor,
    x: Tensor,
    knots: Tensor,
    weight: Tensor,
    spline_order: int,
    uniform: bool,
    scale: Tensor | None,
    order: int,
) -> tuple[Tensor, Tensor]:
    """With ``U[i, g, o] = sum_b a[b, i] B^(order)_g(x[b, i]) grad_y[b, o]`` (a None: ones):
    ``U * scale`` (in, G+k, out) and ``sum_g U * weight`` (in, out)."""
    xs, t0, h, kn = _grid(x, knots)
    w = weight.detach().contiguous()
    gw = torch.empty(w.shape, dtype=w.dtype)
    gs = torch.empty(w.shape[0], w.shape[2], dtype=w.dtype)
    args = (xs, t0, h, kn, _factor_array(a, x), grad_y.detach().contiguous(), w)
    arrays = (*(t.numpy() for t in args), _scale_array(scale, w).numpy())
    _derivatives._table(*arrays, spline_order, uniform, order, gs.numpy(), gw.numpy())
    return gw, gs
