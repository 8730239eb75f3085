"""GPU backend: the sparse spline product as three Triton kernels (CUDA tensors).

Imported lazily by :mod:`kanlab.kernels.sparse` the first time a CUDA tensor reaches the op (and only
when ``triton`` is importable), so importing kanlab never needs Triton or a GPU.

Split of the work, kept deliberately simple:

- the sparse basis ``start (batch, in)``, ``values (batch, in, k+1)`` and, for backward, its
  derivative come from the tested PyTorch functions (:func:`kanlab.splines.sparse_basis`,
  :func:`kanlab.kernels.sparse.basis_with_derivative`): O(batch * in * (k+1)) memory, a few fused
  element-wise launches on a GPU;
- the Triton kernels do the O(batch * in * (k+1) * out) part, gathering the k+1 contiguous
  coefficient rows of each (sample, input) without ever forming the dense basis:
  ``forward``   y[b, o]  = sum_i sum_r V[b,i,r] * W[i, S[b,i]+r, o]   (one program per tile of y)
  ``grad_w``    gW[i, S[b,i]+r, o] += V[b,i,r] * gy[b, o]            (atomic adds: samples share rows)
  ``grad_x``    gx[b, i] = sum_r D[b,i,r] * sum_o W[i, S[b,i]+r, o] * gy[b, o]

Nothing of size batch * in * out or batch * in * (G+k) is allocated. The coefficient gradient uses
atomic adds, so its summation order (and last bits) may vary from run to run.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from kanlab.kernels.sparse import basis_with_derivative
from kanlab.splines import sparse_basis

__all__ = ["backward", "forward"]

_BLOCK_B = 32


@triton.jit
def _forward_kernel(
    s_ptr,  # (batch, in) int32: first coefficient row
    v_ptr,  # (batch, in, K1) basis values
    w_ptr,  # (in, NB, out) coefficients
    y_ptr,  # (batch, out)
    batch,
    n_in,
    n_basis,
    n_out,
    K1: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_O: tl.constexpr,
):
    offs_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_o = tl.program_id(1) * BLOCK_O + tl.arange(0, BLOCK_O)
    mask_b = offs_b < batch
    mask = mask_b[:, None] & (offs_o < n_out)[None, :]
    acc = tl.zeros((BLOCK_B, BLOCK_O), dtype=y_ptr.dtype.element_ty)
    for i in range(0, n_in):
        pair = offs_b.to(tl.int64) * n_in + i  # (BLOCK_B,)
        start = tl.load(s_ptr + pair, mask=mask_b, other=0).to(tl.int64)
        for r in tl.static_range(K1):
            v = tl.load(v_ptr + pair * K1 + r, mask=mask_b, other=0.0)
            row = i * n_basis + start + r  # (BLOCK_B,)
            w = tl.load(w_ptr + row[:, None] * n_out + offs_o[None, :], mask=mask, other=0.0)
            acc += v[:, None] * w
    tl.store(y_ptr + offs_b[:, None].to(tl.int64) * n_out + offs_o[None, :], acc, mask=mask)


@triton.jit
def _grad_weight_kernel(
    s_ptr,
    v_ptr,
    gy_ptr,  # (batch, out)
    gw_ptr,  # (in, NB, out), zeroed
    batch,
    n_in,
    n_basis,
    n_out,
    K1: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_O: tl.constexpr,
):
    i = tl.program_id(1)
    offs_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_o = tl.program_id(2) * BLOCK_O + tl.arange(0, BLOCK_O)
    mask_b = offs_b < batch
    mask = mask_b[:, None] & (offs_o < n_out)[None, :]
    gy = tl.load(
        gy_ptr + offs_b[:, None].to(tl.int64) * n_out + offs_o[None, :], mask=mask, other=0.0
    )
    pair = offs_b.to(tl.int64) * n_in + i
    start = tl.load(s_ptr + pair, mask=mask_b, other=0).to(tl.int64)
    for r in tl.static_range(K1):
        v = tl.load(v_ptr + pair * K1 + r, mask=mask_b, other=0.0)
        row = i * n_basis + start + r
        tl.atomic_add(gw_ptr + row[:, None] * n_out + offs_o[None, :], v[:, None] * gy, mask=mask)


@triton.jit
def _grad_x_kernel(
    s_ptr,
    d_ptr,  # (batch, in, K1) basis derivatives
    w_ptr,
    gy_ptr,
    gx_ptr,  # (batch, in)
    batch,
    n_in,
    n_basis,
    n_out,
    K1: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_O: tl.constexpr,
):
    i = tl.program_id(1)
    offs_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    mask_b = offs_b < batch
    pair = offs_b.to(tl.int64) * n_in + i
    start = tl.load(s_ptr + pair, mask=mask_b, other=0).to(tl.int64)
    acc = tl.zeros((BLOCK_B,), dtype=gx_ptr.dtype.element_ty)
    for o0 in range(0, n_out, BLOCK_O):
        offs_o = o0 + tl.arange(0, BLOCK_O)
        mask = mask_b[:, None] & (offs_o < n_out)[None, :]
        gy = tl.load(
            gy_ptr + offs_b[:, None].to(tl.int64) * n_out + offs_o[None, :], mask=mask, other=0.0
        )
        for r in tl.static_range(K1):
            d = tl.load(d_ptr + pair * K1 + r, mask=mask_b, other=0.0)
            row = i * n_basis + start + r
            w = tl.load(w_ptr + row[:, None] * n_out + offs_o[None, :], mask=mask, other=0.0)
            acc += d * tl.sum(w * gy, axis=1)
    tl.store(gx_ptr + pair, acc, mask=mask_b)


def _block_o(n_out: int) -> int:
    return max(16, min(64, triton.next_power_of_2(n_out)))


def forward(x: Tensor, knots: Tensor, weight: Tensor, spline_order: int, uniform: bool) -> Tensor:
    """x (batch, in), knots (in, G+2k+1), weight (in, G+k, out) -> y (batch, out)."""
    batch, n_in = x.shape
    _, n_basis, n_out = weight.shape
    y = torch.empty(batch, n_out, dtype=x.dtype, device=x.device)
    if batch == 0:
        return y
    start, values = sparse_basis(x.detach(), knots, spline_order, uniform=uniform)
    w = weight.detach().contiguous()
    block_o = _block_o(n_out)
    grid = (triton.cdiv(batch, _BLOCK_B), triton.cdiv(n_out, block_o))
    _forward_kernel[grid](
        start.to(torch.int32).contiguous(),
        values.contiguous(),
        w,
        y,
        batch,
        n_in,
        n_basis,
        n_out,
        K1=spline_order + 1,
        BLOCK_B=_BLOCK_B,
        BLOCK_O=block_o,
    )
    return y


def backward(
    grad_y: Tensor,
    x: Tensor,
    knots: Tensor,
    weight: Tensor,
    spline_order: int,
    uniform: bool,
    need_x: bool,
    need_weight: bool,
) -> tuple[Tensor | None, Tensor | None]:
    """Gradients w.r.t. x (batch, in) and weight (in, G+k, out) of ``sum(grad_y * y)``."""
    batch, n_in = x.shape
    _, n_basis, n_out = weight.shape
    gx = torch.zeros(x.shape, dtype=x.dtype, device=x.device) if need_x else None
    gw = (
        torch.zeros(weight.shape, dtype=weight.dtype, device=weight.device) if need_weight else None
    )
    if batch == 0:
        return gx, gw
    start, values, dvalues = basis_with_derivative(x, knots, spline_order, uniform)
    start = start.to(torch.int32).contiguous()
    gy = grad_y.detach().contiguous()
    block_o = _block_o(n_out)
    common = {"K1": spline_order + 1, "BLOCK_B": _BLOCK_B, "BLOCK_O": block_o}
    if gw is not None:
        grid = (triton.cdiv(batch, _BLOCK_B), n_in, triton.cdiv(n_out, block_o))
        _grad_weight_kernel[grid](
            start, values.contiguous(), gy, gw, batch, n_in, n_basis, n_out, **common
        )
    if gx is not None:
        w = weight.detach().contiguous()
        grid = (triton.cdiv(batch, _BLOCK_B), n_in)
        _grad_x_kernel[grid](
            start, dvalues.contiguous(), w, gy, gx, batch, n_in, n_basis, n_out, **common
        )
        gx = torch.where(torch.isnan(x), x.detach(), gx)  # NaN in, NaN out (as on the CPU)
    return gx, gw
