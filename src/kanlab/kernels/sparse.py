"""The fast spline product as one PyTorch custom operator with a hand-written backward.

``torch.ops.kanlab.spline_product(x, knots, weight, k, uniform, scale)`` computes
``y[b, o] = sum_i scale[i, o] * sum_g B_g(x[b, i]) * weight[i, g, o]`` (``scale`` (in, out) is
optional: None means ones) touching only the k+1 non-zero basis functions per (sample, input).
Applying the per-edge scale inside the kernels spares a layer the parameter-sized product
``coef * scale`` (and its backward) on every step. It is a ``torch.library.custom_op`` with

- the kernels of the backend the dispatcher chose (its last argument, the backend's name: the
  Numba kernels of :mod:`kanlab.kernels.cpu` for CPU, the Triton kernels of
  :mod:`kanlab.kernels.gpu` for CUDA), imported on first use
  (:func:`kanlab.kernels.backends.kernels_of`: kernels that fail to import raise a clear error);
- a fake (meta) implementation, so ``torch.compile`` traces a model through the op without a graph
  break (the op stays opaque in the graph and runs the compiled kernels at run time);
- a registered autograd formula whose backward is a second custom op,
  ``kanlab::spline_product_backward``, returning the gradients w.r.t. x, weight and scale (every
  :class:`~kanlab.kernels.backends.KernelModule` applies the scale itself). Gradients w.r.t.
  the knots are not computed (knots are buffers); calls with knots that require grad are routed to
  the reference path by the dispatcher. Double backward is not supported.

Saved for backward: x ``(batch, in)``, knots, weight and scale (parameter-sized) only. The basis (and its
derivative) is recomputed in the backward kernels, so nothing of size batch * in * out or
batch * in * (G + k) is kept between forward and backward.
"""

from __future__ import annotations

import torch
from torch import Tensor

from kanlab.kernels.backends import kernels_of

__all__ = ["spline_product"]


def _forward_kernels(
    x: Tensor,
    knots: Tensor,
    weight: Tensor,
    spline_order: int,
    uniform: bool,
    scale: Tensor | None,
    backend: str,
) -> Tensor:
    """``kanlab::spline_product`` (registered below; also called directly on the eager path)."""
    return kernels_of(backend).forward(x, knots, weight, spline_order, uniform, scale)


_spline_product_op = torch.library.custom_op("kanlab::spline_product", mutates_args=())(
    _forward_kernels
)


@_spline_product_op.register_fake  # (the op's schema comes from _forward_kernels' annotations)
def _(x, knots, weight, spline_order, uniform, scale, backend):
    return x.new_empty(x.shape[0], weight.shape[2])


def _backward_kernels(
    grad_y: Tensor,
    x: Tensor,
    knots: Tensor,
    weight: Tensor,
    spline_order: int,
    uniform: bool,
    need_x: bool,
    need_weight: bool,
    scale: Tensor | None,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor]:
    """``kanlab::spline_product_backward`` (registered below; also called directly on the eager
    path)."""
    gx, gw, gs = kernels_of(backend).backward(
        grad_y, x, knots, weight, scale, spline_order, uniform, need_x, need_weight
    )
    # A custom op returns tensors only: an unneeded gradient comes back as an empty tensor.
    gx = gx if need_x and gx is not None else x.new_empty(0)
    gw = gw if need_weight and gw is not None else weight.new_empty(0)
    gs = gs if need_weight and gs is not None else weight.new_empty(0)
    return gx, gw, gs


_spline_product_backward_op = torch.library.custom_op(
    "kanlab::spline_product_backward", mutates_args=()
)(_backward_kernels)


@_spline_product_backward_op.register_fake
def _(grad_y, x, knots, weight, spline_order, uniform, need_x, need_weight, scale, backend):
    gx = x.new_empty(x.shape) if need_x else x.new_empty(0)
    gw = weight.new_empty(weight.shape) if need_weight else weight.new_empty(0)
    with_scale = need_weight and scale is not None
    gs = scale.new_empty(scale.shape) if with_scale else weight.new_empty(0)
    return gx, gw, gs


def _setup_context(ctx, inputs, output) -> None:
    x, knots, weight, spline_order, uniform, scale, backend = inputs
    # (batch, in), (in, G+2k+1), (in, G+k, out), (in, out) or None
    ctx.save_for_backward(x, knots, weight, scale)
    ctx.spline_order = spline_order
    ctx.uniform = uniform
    ctx.backend = backend


def _backward(ctx, grad_y: Tensor, *, eager: bool = False):
    x, knots, weight, scale = ctx.saved_tensors
    need_x, _, need_weight = ctx.needs_input_grad[:3]
    need_scale = scale is not None and ctx.needs_input_grad[5]
    if not (need_x or need_weight or need_scale):
        return None, None, None, None, None, None, None
    # The scale gradient comes out of the coefficient-gradient kernel.
    need_table = need_weight or need_scale
    backward_op = _backward_kernels if eager else torch.ops.kanlab.spline_product_backward
    gx, gw, gs = backward_op(
        grad_y, x, knots, weight, ctx.spline_order, ctx.uniform, need_x, need_table, scale,
        ctx.backend,
    )  # fmt: skip
    return (
        gx if need_x else None,
        None,
        gw if need_weight else None,
        None,
        None,
        gs if need_scale else None,
        None,
    )


_spline_product_op.register_autograd(_backward, setup_context=_setup_context)


class _EagerSplineProduct(torch.autograd.Function):
    """The same forward and backward as the custom op, without the op's dispatch: in eager mode a
    custom op costs ~100 us of Python per call and per backward (argument normalisation, the
    autograd wrapper, re-dispatch), several times the kernel time of a small layer. Under
    ``torch.compile`` the op itself is used (it traces without a graph break)."""

    # The classic form (ctx as forward's first argument): with a separate setup_context, every
    # apply() binds its arguments through inspect.signature (~60 us).
    @staticmethod
    def forward(ctx, x, knots, weight, spline_order, uniform, scale, backend):
        y = _forward_kernels(x, knots, weight, spline_order, uniform, scale, backend)
        _setup_context(ctx, (x, knots, weight, spline_order, uniform, scale, backend), y)
        return y

    @staticmethod
    def backward(ctx, grad_y: Tensor):
        # With create_graph (grad mode on here) go through the backward op: it has no autograd
        # formula, so differentiating its outputs again raises a clear error instead of silently
        # treating the gradient as a constant.
        return _backward(ctx, grad_y, eager=not torch.is_grad_enabled())


def spline_product(
    x: Tensor,
    knots: Tensor,
    weight: Tensor,
    spline_order: int,
    uniform: bool,
    scale: Tensor | None,
    backend: str,
) -> Tensor:
    """x ``(batch, in)``, knots ``(in, G+2k+1)``, weight ``(in, G+k, out)``, scale ``(in, out)``
    or None -> ``(batch, out)`` (the table is ``weight * scale[:, None, :]``), computed by the
    compiled kernels of ``backend`` (the dispatcher's choice, :func:`kanlab.kernels.backends.choose`:
    one dtype and device, knots without grad)."""
    if torch.compiler.is_compiling():
        op = torch.ops.kanlab.spline_product
        return op(x, knots, weight, spline_order, uniform, scale, backend)
    return _EagerSplineProduct.apply(x, knots, weight, spline_order, uniform, scale, backend)
