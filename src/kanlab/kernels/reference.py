"""Reference spline product in pure PyTorch: sparse basis -> dense basis -> one matmul.

This is the correctness oracle and the fallback for every device and dtype. It costs
O(batch * in * (G + k) * out) and keeps the dense basis ``(batch, in, G + k)`` for backward, like
efficient-kan; the fast backends avoid both.
"""

from __future__ import annotations

import torch
from torch import Tensor

from kanlab.splines import dense_from_sparse, sparse_basis


def spline_product(
    x: Tensor,
    knots: Tensor,
    weight: Tensor,
    spline_order: int,
    uniform: bool,
    scale: Tensor | None = None,
) -> Tensor:
    """``y[b, o] = sum_i sum_g B_g(x[b, i]) * weight[i, g, o] * scale[i, o]``.

    x ``(batch, in)``; knots ``(in, G+2k+1)``; weight ``(in, G+k, out)``; scale ``(in, out)`` or
    None (ones) -> ``(batch, out)``.
    """
    if scale is not None:
        weight = weight * scale.unsqueeze(1)  # (in, G+k, out)
    n_in, n_basis, n_out = weight.shape
    start, values = sparse_basis(x, knots, spline_order, uniform=uniform)
    basis = dense_from_sparse(start, values, n_basis)  # (batch, in, G+k)
    return basis.reshape(x.shape[0], n_in * n_basis) @ weight.reshape(n_in * n_basis, n_out)


def edge_values(
    x: Tensor, knots: Tensor, weight: Tensor, spline_order: int, uniform: bool
) -> Tensor:
    """Per-edge spline outputs ``(batch, out, in)``: ``sum_g B_g(x[b, i]) * weight[i, g, o]``."""
    start, values = sparse_basis(x, knots, spline_order, uniform=uniform)
    basis = dense_from_sparse(start, values, weight.shape[1])  # (batch, in, G+k)
    return torch.einsum("big,igo->boi", basis, weight)
