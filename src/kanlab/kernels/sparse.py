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
  the reference path by the dispatcher;
- derivatives of every higher order (``create_graph=True``: a PINN's Laplacian, and the gradient
  of a loss built from it w.r.t. the parameters): the backward op has an autograd formula too, in
  terms of three more custom ops that together are closed under differentiation (below).

Higher orders. Every quantity here is a partial derivative of one scalar form
``Phi_m(a, gy, x, W, s) = sum_{b,i,o} a[b,i] gy[b,o] s[i,o] sum_g B^(m)_g(x[b,i]) W[i,g,o]``
(``B^(m)`` the m-th derivative of the basis): the three ops give its partial derivatives w.r.t.
gy (``kanlab::spline_basis_product``, (batch, out)), a (``kanlab::spline_basis_contract``,
(batch, in)) and W and s (``kanlab::spline_basis_table``, (in, G+k, out) and (in, out)); its
derivative w.r.t. x is ``a`` times the a-derivative of ``Phi_{m+1}``. The forward is the product
with m = 0 and a = ones, the input gradient the contraction with m = 1, the coefficient and
scale gradients the table with m = 0, and the vector-Jacobian product of each op is again a sum of
the three ops (of order m or m + 1), so any order of derivative is available. Those three cases
run the first-order kernels (their speed is unchanged); the others run each backend's derivative
kernels (``derivative_forward``, ``derivative_input``, ``derivative_table`` of its kernel
module: plain loops over the k+1 non-zero basis functions, for m up to k; beyond, zeros).

Saved for backward: x ``(batch, in)``, knots, weight and scale (parameter-sized) only. The basis (and its
derivative) is recomputed in the backward kernels, so nothing of size batch * in * out or
batch * in * (G + k) is kept between forward and backward.
"""

from __future__ import annotations

import torch
from torch import Tensor

from kanlab.kernels.backends import BackendError, kernels_of

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


# ------------------------------------------------------------------------------ higher derivatives
def _derivative_kernels(backend: str):
    kernels = kernels_of(backend)
    if not hasattr(kernels, "derivative_table"):
        raise BackendError(
            f"kernel backend {backend!r} has no derivative kernels (derivative_forward, "
            f"derivative_input, derivative_table): second derivatives need them; use "
            f"kanlab.kernels.set_backend('reference')"
        )
    return kernels


def _basis_product(
    a: Tensor | None,
    x: Tensor,
    knots: Tensor,
    weight: Tensor,
    spline_order: int,
    uniform: bool,
    scale: Tensor | None,
    order: int,
    backend: str,
) -> Tensor:
    """``kanlab::spline_basis_product``: ``y[b, o] = sum_i a[b, i] scale[i, o]
    sum_g B^(order)_g(x[b, i]) weight[i, g, o]`` (batch, out); a None: ones."""
    if order == 0 and a is None:
        return kernels_of(backend).forward(x, knots, weight, spline_order, uniform, scale)
    kernels = _derivative_kernels(backend)
    return kernels.derivative_forward(a, x, knots, weight, spline_order, uniform, scale, order)


def _basis_contract(
    grad_y: Tensor,
    x: Tensor,
    knots: Tensor,
    weight: Tensor,
    spline_order: int,
    uniform: bool,
    scale: Tensor | None,
    order: int,
    backend: str,
) -> Tensor:
    """``kanlab::spline_basis_contract``: ``d[b, i] = sum_o grad_y[b, o] scale[i, o]
    sum_g B^(order)_g(x[b, i]) weight[i, g, o]`` (batch, in)."""
    if order == 1:
        kernels = kernels_of(backend)
        gx, _, _ = kernels.backward(
            grad_y, x, knots, weight, scale, spline_order, uniform, True, False
        )
        return gx
    kernels = _derivative_kernels(backend)
    return kernels.derivative_input(grad_y, x, knots, weight, spline_order, uniform, scale, order)


def _basis_table(
    a: Tensor | None,
    grad_y: Tensor,
    x: Tensor,
    knots: Tensor,
    weight: Tensor,
    spline_order: int,
    uniform: bool,
    scale: Tensor | None,
    order: int,
    backend: str,
) -> tuple[Tensor, Tensor]:
    """``kanlab::spline_basis_table``: with ``U[i, g, o] = sum_b a[b, i] B^(order)_g(x[b, i])
    grad_y[b, o]``, ``U * scale`` (in, G+k, out) and ``sum_g U * weight`` (in, out) (an empty
    tensor without a scale)."""
    if order == 0 and a is None:
        kernels = kernels_of(backend)
        _, gw, gs = kernels.backward(
            grad_y, x, knots, weight, scale, spline_order, uniform, False, True
        )
    else:
        kernels = _derivative_kernels(backend)
        gw, gs = kernels.derivative_table(
            a, grad_y, x, knots, weight, spline_order, uniform, scale, order
        )
    return gw, (gs if scale is not None else weight.new_empty(0))


_product_op = torch.library.custom_op("kanlab::spline_basis_product", mutates_args=())(
    _basis_product
)
_contract_op = torch.library.custom_op("kanlab::spline_basis_contract", mutates_args=())(
    _basis_contract
)
_table_op = torch.library.custom_op("kanlab::spline_basis_table", mutates_args=())(_basis_table)


@_product_op.register_fake
def _(a, x, knots, weight, spline_order, uniform, scale, order, backend):
    return x.new_empty(x.shape[0], weight.shape[2])


@_contract_op.register_fake
def _(grad_y, x, knots, weight, spline_order, uniform, scale, order, backend):
    return x.new_empty(x.shape)


@_table_op.register_fake
def _(a, grad_y, x, knots, weight, spline_order, uniform, scale, order, backend):
    gs = scale.new_empty(scale.shape) if scale is not None else weight.new_empty(0)
    return weight.new_empty(weight.shape), gs


def _add(p: Tensor | None, q: Tensor | None) -> Tensor | None:
    return q if p is None else (p if q is None else p + q)


def _form_grads(a, gy, x, knots, weight, scale, k, uniform, order, backend, need):
    """Gradients of ``Phi_order(a, gy, x, weight, scale)`` (module docstring) w.r.t. (a, gy, x,
    weight, scale), each None unless ``need`` (five flags) asks for it (a None: ones)."""
    need_a, need_gy, need_x, need_w, need_s = need
    need_s = need_s and scale is not None
    ops = torch.ops.kanlab
    ga = ggy = gx = gw = gs = None
    if need_a:
        ga = ops.spline_basis_contract(gy, x, knots, weight, k, uniform, scale, order, backend)
    if need_gy:
        ggy = ops.spline_basis_product(a, x, knots, weight, k, uniform, scale, order, backend)
    if need_x:
        gx = ops.spline_basis_contract(gy, x, knots, weight, k, uniform, scale, order + 1, backend)
        gx = gx if a is None else a * gx
    if need_w or need_s:
        gw, gs = ops.spline_basis_table(a, gy, x, knots, weight, k, uniform, scale, order, backend)
    return ga, ggy, gx, (gw if need_w else None), (gs if need_s else None)


def _table_grads(a, gy, x, knots, weight, scale, k, uniform, order, backend, cw, cs, need):
    """Gradients w.r.t. (a, gy, x, weight, scale) of ``sum(cw * gw) + sum(cs * gs)`` with
    ``gw, gs = spline_basis_table(a, gy, x, knots, weight, k, uniform, scale, order)``; cw, cs
    None: zero. That sum is ``Phi_order(a, gy, x, E, ones)`` with the table
    ``E = cw * scale + cs * weight``, and its weight and scale gradients are a table of the
    cotangents: ``cs * U`` and ``sum_g cw * U``."""
    need_a, need_gy, need_x, need_w, need_s = need
    if scale is None:
        cs = None  # (the empty second output)
    table = None
    if cw is not None:
        table = cw if scale is None else cw * scale.unsqueeze(1)
    if cs is not None:
        table = _add(table, cs.unsqueeze(1) * weight)
    ga = ggy = gx = gw = gs = None
    if table is not None and (need_a or need_gy or need_x):
        flags = (need_a, need_gy, need_x, False, False)
        ga, ggy, gx, _, _ = _form_grads(
            a, gy, x, knots, table, None, k, uniform, order, backend, flags
        )
    if scale is not None and ((need_w and cs is not None) or (need_s and cw is not None)):
        cw_t = cw if cw is not None else torch.zeros_like(weight)
        cs_t = cs if cs is not None else torch.zeros_like(scale)
        ops = torch.ops.kanlab
        gw, gs = ops.spline_basis_table(a, gy, x, knots, cw_t, k, uniform, cs_t, order, backend)
        gw = gw if need_w and cs is not None else None
        gs = gs if need_s and cw is not None else None
    return ga, ggy, gx, gw, gs


def _defined(t: Tensor | None) -> Tensor | None:
    return t if t is not None and t.numel() > 0 else None


def _setup_product(ctx, inputs, output) -> None:
    a, x, knots, weight, k, uniform, scale, order, backend = inputs
    ctx.save_for_backward(a, x, knots, weight, scale)
    ctx.args = (k, uniform, order, backend)


def _backward_product(ctx, grad):
    a, x, knots, weight, scale = ctx.saved_tensors
    k, uniform, order, backend = ctx.args
    n = ctx.needs_input_grad
    need = (n[0] and a is not None, False, n[1], n[3], n[6])
    ga, _, gx, gw, gs = _form_grads(
        a, grad, x, knots, weight, scale, k, uniform, order, backend, need
    )
    return ga, gx, None, gw, None, None, gs, None, None


def _setup_contract(ctx, inputs, output) -> None:
    gy, x, knots, weight, k, uniform, scale, order, backend = inputs
    ctx.save_for_backward(gy, x, knots, weight, scale)
    ctx.args = (k, uniform, order, backend)


def _backward_contract(ctx, grad):
    gy, x, knots, weight, scale = ctx.saved_tensors
    k, uniform, order, backend = ctx.args
    n = ctx.needs_input_grad
    need = (False, n[0], n[1], n[3], n[6])
    _, ggy, gx, gw, gs = _form_grads(
        grad, gy, x, knots, weight, scale, k, uniform, order, backend, need
    )
    return ggy, gx, None, gw, None, None, gs, None, None


def _setup_table(ctx, inputs, output) -> None:
    a, gy, x, knots, weight, k, uniform, scale, order, backend = inputs
    ctx.save_for_backward(a, gy, x, knots, weight, scale)
    ctx.args = (k, uniform, order, backend)


def _backward_table(ctx, grad_w, grad_s):
    a, gy, x, knots, weight, scale = ctx.saved_tensors
    k, uniform, order, backend = ctx.args
    n = ctx.needs_input_grad
    need = (n[0] and a is not None, n[1], n[2], n[4], n[7])
    cw, cs = _defined(grad_w), _defined(grad_s)
    ga, ggy, gx, gw, gs = _table_grads(
        a, gy, x, knots, weight, scale, k, uniform, order, backend, cw, cs, need
    )
    return ga, ggy, gx, None, gw, None, None, gs, None, None


_product_op.register_autograd(_backward_product, setup_context=_setup_product)
_contract_op.register_autograd(_backward_contract, setup_context=_setup_contract)
_table_op.register_autograd(_backward_table, setup_context=_setup_table)


def _setup_backward(ctx, inputs, output) -> None:
    grad_y, x, knots, weight, k, uniform, need_x, need_weight, scale, backend = inputs
    ctx.save_for_backward(grad_y, x, knots, weight, scale)
    ctx.args = (k, uniform, need_x, need_weight, backend)


def _backward_of_backward(ctx, grad_gx, grad_gw, grad_gs):
    """The backward op's outputs are the contraction of order 1 (gx) and the table of order 0
    (gw, gs) of the same arguments: their vector-Jacobian products, summed."""
    gy, x, knots, weight, scale = ctx.saved_tensors
    k, uniform, need_x, need_weight, backend = ctx.args
    n = ctx.needs_input_grad
    need = (False, n[0], n[1], n[3], n[8])
    totals: list[Tensor | None] = [None] * 5
    cx = _defined(grad_gx) if need_x else None
    if cx is not None:
        parts = _form_grads(cx, gy, x, knots, weight, scale, k, uniform, 1, backend, need)
        totals = [_add(p, q) for p, q in zip(totals, parts, strict=True)]
    cw = _defined(grad_gw) if need_weight else None
    cs = _defined(grad_gs) if need_weight else None
    if cw is not None or cs is not None:
        parts = _table_grads(
            None, gy, x, knots, weight, scale, k, uniform, 0, backend, cw, cs, need
        )
        totals = [_add(p, q) for p, q in zip(totals, parts, strict=True)]
    _, ggy, gx, gw, gs = totals
    return ggy, gx, None, gw, None, None, None, None, gs, None


_spline_product_backward_op.register_autograd(_backward_of_backward, setup_context=_setup_backward)


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
        # With create_graph (grad mode on here) go through the backward op: its autograd formula
        # gives the second (and higher) derivatives.
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
