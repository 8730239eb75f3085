"""The CPU kernels with a model dimension: M splines of one shape, each with its own knots, in
one call (for :mod:`kanlab.model_batch`).

The counterpart of :mod:`kanlab.kernels.cpu.api` with a leading model dimension ``M`` on every
tensor: x ``(M, batch, in)``, knots ``(M, in, G+2k+1)``, weight ``(M, in, G+k, out)``, scale
``(M, in, out)`` or None, grad_y ``(M, batch, out)``; ``uniform`` one flag for all models or one
per model. Model m's output is exactly what :mod:`kanlab.kernels.cpu.api` gives for model m alone
(the same compiled kernels on the same arrays, bit for bit).

How: small ``@njit`` loops over the models (:func:`_forward_models`, :func:`_backward_models`) call
the per-model kernels of :mod:`kanlab.kernels.cpu` (``_forward``, ``_grad_weight``, ``_grad_x``)
from compiled code, so one Python call serves all M models: the per-call costs of the single-model
path (argument preparation, dispatch, autograd nodes: most of a tiny model's time) are paid once
per batch instead of once per model (``benchmarks/model_batch_speed.py``). With one torch thread (a sweep's
workers) the models run serially on the calling thread with the GIL released. With more threads,
each model runs through :mod:`kanlab.kernels.cpu.api` in turn (parallel over its samples or inputs
on torch's team), so a large batch keeps its parallelism.

Compilation: this module is imported only by the model batch's forward (never by ``import
kanlab``); its two loops compile at their first call per dtype (the per-model kernels they call
are compiled or loaded from the JIT cache as for single models). Their cached code embeds the
per-model kernels, so it is stamped with the whole :mod:`kanlab.kernels.cpu` package as well as
this file (:func:`kanlab.kernels.cpu.tuning.stamp_with_package`): an edit of either recompiles them.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from numba import njit
from torch import Tensor

from kanlab.kernels.cpu import api as _api
from kanlab.kernels.cpu.backward import _grad_weight, _grad_x
from kanlab.kernels.cpu.forward import _forward
from kanlab.kernels.cpu.threads import _n_threads
from kanlab.kernels.cpu.tuning import _CACHE as _CPU_CACHE
from kanlab.kernels.cpu.tuning import _large_table, stamp_with_package

__all__ = ["backward", "batched_spline", "forward"]

_THIS_FILE = os.path.abspath(__file__)


# cached code embeds the per-model kernels: stamped with the kernels/cpu package too
_CACHE = _CPU_CACHE and stamp_with_package(lambda f: os.path.abspath(f) == _THIS_FILE, "CpuBatched")


@njit(nogil=True, cache=_CACHE)
def _forward_models(x, t0, h, knots, weight, scale, k, uniform, y):  # pragma: no cover - compiled
    """y[m] = model m's spline product, for every m (``_forward`` on model m's arrays)."""
    first = np.int64(0)  # a variable: a literal 0 would compile another copy of the kernel
    batch = x.shape[1]
    for m in range(x.shape[0]):
        _forward(
            x[m], t0[m], h[m], knots[m], weight[m], scale[m], k, uniform[m], first, batch, y[m]
        )


@njit(nogil=True, cache=_CACHE)
def _backward_models(
    x, t0, h, knots, gy, weight, scale, k, uniform, need_x, need_weight, fused, gs, gx, gw
):  # pragma: no cover - compiled
    """Per model: the coefficient and scale gradients (gw[m], gs[m]) when ``need_weight``, the
    input gradient gx[m] when ``need_x`` (inside the coefficient-gradient kernel when ``fused``)."""
    first = np.int64(0)
    n_models, batch, n_in = x.shape
    no_gx = np.empty((0, n_in), dtype=x.dtype)  # _grad_weight leaves gx alone when not fused
    for m in range(n_models):
        if need_weight:
            gxm = gx[m] if fused else no_gx
            _grad_weight(
                x[m],
                t0[m],
                h[m],
                knots[m],
                gy[m],
                weight[m],
                scale[m],
                gs[m],
                gxm,
                k,
                uniform[m],
                first,
                n_in,
                gw[m],
            )
        if need_x and not fused:
            _grad_x(
                x[m],
                t0[m],
                h[m],
                knots[m],
                weight[m],
                scale[m],
                gy[m],
                k,
                uniform[m],
                first,
                batch,
                gx[m],
            )


# ---------------------------------------------------------------------- driver
def _check(x: Tensor, knots: Tensor, weight: Tensor, scale: Tensor | None) -> None:
    if x.dim() != 3 or knots.dim() != 3 or weight.dim() != 4:
        raise ValueError(
            f"x must be (M, batch, in), knots (M, in, n) and weight (M, in, G+k, out), got "
            f"x {tuple(x.shape)}, knots {tuple(knots.shape)}, weight {tuple(weight.shape)}"
        )
    n_models, _, n_in = x.shape
    if knots.shape[:2] != (n_models, n_in) or weight.shape[:2] != (n_models, n_in):
        raise ValueError(
            f"x {tuple(x.shape)}, knots {tuple(knots.shape)} and weight {tuple(weight.shape)} "
            f"must agree in M and in"
        )
    if scale is not None and scale.shape != (n_models, n_in, weight.shape[3]):
        raise ValueError(
            f"scale must be (M, in, out) = {(n_models, n_in, weight.shape[3])}, "
            f"got {tuple(scale.shape)}"
        )
    for name, t in (("knots", knots), ("weight", weight), ("scale", scale)):
        if t is not None and (t.dtype != x.dtype or t.device.type != "cpu"):
            raise ValueError(
                f"{name} must be a CPU tensor of x's dtype {x.dtype}, got {t.dtype} on {t.device}"
            )
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"x must be a float32/float64 CPU tensor, got {x.dtype} on {x.device}")


def _uniform_flags(uniform: object, n_models: int) -> np.ndarray:
    """One grid-kind flag per model: a bool for all, or M flags (sequence, array or tensor)."""
    if isinstance(uniform, bool | np.bool_):
        return np.full(n_models, bool(uniform), dtype=np.bool_)
    if isinstance(uniform, Tensor):
        uniform = uniform.detach().cpu().numpy()
    flags = np.ascontiguousarray(np.asarray(uniform, dtype=np.bool_)).reshape(-1)
    if flags.shape != (n_models,):
        raise ValueError(f"uniform must be a bool or {n_models} flags, got {uniform!r}")
    return flags


def forward(
    x: Tensor,
    knots: Tensor,
    weight: Tensor,
    spline_order: int,
    uniform: object,
    scale: Tensor | None = None,
) -> Tensor:
    """x (M, batch, in), knots (M, in, G+2k+1), weight (M, in, G+k, out), scale (M, in, out) or
    None, uniform a bool or M flags -> y (M, batch, out); no autograd (see :func:`batched_spline`)."""
    _check(x, knots, weight, scale)
    n_models, batch, _ = x.shape
    flags = _uniform_flags(uniform, n_models)
    y = torch.empty(n_models, batch, weight.shape[3], dtype=x.dtype)
    if batch == 0 or n_models == 0:
        return y
    if _n_threads() > 1:  # each model in parallel over its samples (torch's team)
        for m in range(n_models):
            sm = None if scale is None else scale[m]
            y[m] = _api.forward(x[m], knots[m], weight[m], spline_order, bool(flags[m]), sm)
        return y
    kn, t0, h = (a.numpy() for a in _api.knot_origin_and_step(knots))
    w = weight.detach().contiguous()
    sc = _api._scale_array(scale, w)
    xs = x.detach().contiguous()
    _forward_models(xs.numpy(), t0, h, kn, w.numpy(), sc.numpy(), spline_order, flags, y.numpy())
    return y


def backward(
    grad_y: Tensor,
    x: Tensor,
    knots: Tensor,
    weight: Tensor,
    scale: Tensor | None,
    spline_order: int,
    uniform: object,
    need_x: bool,
    need_weight: bool,
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Gradients w.r.t. x (M, batch, in), weight (M, in, G+k, out) and scale (M, in, out) of
    ``sum(grad_y * y)``; the scale's comes with the weight's (None without scale)."""
    _check(x, knots, weight, scale)
    n_models, batch, n_in = x.shape
    flags = _uniform_flags(uniform, n_models)
    gx = torch.empty(x.shape, dtype=x.dtype) if need_x else None
    gw = gs = None
    if need_weight:
        gw = torch.zeros(weight.shape, dtype=weight.dtype)  # (written whole when batch > 0)
        gs = torch.zeros(n_models, n_in, weight.shape[3], dtype=weight.dtype)
    if batch == 0 or n_models == 0:
        if gx is not None:
            gx.zero_()
        return gx, gw, (gs if scale is not None else None)
    if _n_threads() > 1:
        for m in range(n_models):
            sm = None if scale is None else scale[m]
            gxm, gwm, gsm = _api.backward(
                grad_y[m],
                x[m],
                knots[m],
                weight[m],
                sm,
                spline_order,
                bool(flags[m]),
                need_x,
                need_weight,
            )
            if need_x:
                gx[m] = gxm
            if need_weight:
                gw[m] = gwm
                if scale is not None:
                    gs[m] = gsm
        return gx, gw, (gs if scale is not None else None)
    kn, t0, h = (a.numpy() for a in _api.knot_origin_and_step(knots))
    w = weight.detach().contiguous()
    sc = _api._scale_array(scale, w)
    fused = need_x and need_weight and _large_table(w.numpy()[0])  # as the CPU backend
    none3 = np.empty((n_models, 0, 0), dtype=w.numpy().dtype)  # (arrays a call does not use)
    none4 = np.empty((n_models, 0, 0, 0), dtype=w.numpy().dtype)
    _backward_models(
        x.detach().contiguous().numpy(),
        t0,
        h,
        kn,
        grad_y.detach().contiguous().numpy(),
        w.numpy(),
        sc.numpy(),
        spline_order,
        flags,
        bool(need_x),
        bool(need_weight),
        bool(fused),
        gs.numpy() if need_weight else none3,
        gx.numpy() if need_x else none3,
        gw.numpy() if need_weight else none4,
    )
    return gx, gw, (gs if scale is not None else None)


class _BatchedSpline(torch.autograd.Function):
    """Autograd for :func:`batched_spline` (first order: gradients w.r.t. x, weight, scale)."""

    @staticmethod
    def forward(ctx, x, knots, weight, scale, spline_order, flags):
        ctx.save_for_backward(x, knots, weight, scale)
        ctx.spline_order = spline_order
        ctx.flags = flags
        return forward(x, knots, weight, spline_order, flags, scale)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y):
        x, knots, weight, scale = ctx.saved_tensors
        need_x = ctx.needs_input_grad[0]
        need_weight = ctx.needs_input_grad[2] or (scale is not None and ctx.needs_input_grad[3])
        gx, gw, gs = backward(
            grad_y, x, knots, weight, scale, ctx.spline_order, ctx.flags, need_x, need_weight
        )
        return (
            gx,
            None,
            gw if ctx.needs_input_grad[2] else None,
            gs if scale is not None and ctx.needs_input_grad[3] else None,
            None,
            None,
        )


def batched_spline(
    x: Tensor,
    knots: Tensor,
    weight: Tensor,
    spline_order: int,
    uniform: object,
    scale: Tensor | None = None,
) -> Tensor:
    """``y[m, b, o] = sum_i scale[m, i, o] sum_g B_g(x[m, b, i]; knots[m, i]) weight[m, i, g, o]``,
    differentiable w.r.t. x, weight and scale (the knots are constants).

    x (M, batch, in), knots (M, in, G+2k+1), weight (M, in, G+k, out), scale (M, in, out) or None
    (ones); ``uniform``: True/False for all models or M flags (whether model m's knots are equally
    spaced). float32/float64 CPU tensors of one dtype -> (M, batch, out).
    """
    if knots.requires_grad:
        raise ValueError(
            "knots must not require grad: the batched CPU kernels give no knot gradient"
        )
    _check(x, knots, weight, scale)
    flags = _uniform_flags(uniform, x.shape[0])
    return _BatchedSpline.apply(x, knots, weight, scale, spline_order, flags)
