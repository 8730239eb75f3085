"""Batched reference spline evaluation in pure PyTorch: M models, each with its own knots.

The model-batch counterpart of :mod:`kanlab.kernels.reference`, for :mod:`kanlab.model_batch`:
every tensor carries a leading model dimension ``M`` and model ``m`` only ever sees its own knots
and coefficients. Correctness first: the dense Cox-de Boor basis ``(M, batch, in, G+k)`` is built
(cost grows with G, like efficient-kan) and contracted with the coefficients by one ``bmm``.
The knots are constants here (the grid methods move them): autograd differentiates with respect to
x, the coefficients and the scales. The ratios of knot differences are inverted once per call, on
the small knot tensors, so the recursion over the large tensors is products and differences only.

Shapes: ``M`` models, ``in`` inputs, ``out`` outputs, spline order ``k``, ``G`` grid intervals
(one G for all M models), ``n = G + 2k + 1`` knots per input.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["batched_basis", "batched_spline_product"]


def _safe_inverse(den: Tensor) -> Tensor:
    """1 / den with 0 where den == 0 (repeated knots: the Cox-de Boor convention 0/0 = 0).

    Applied to knot differences only (small tensors, no gradient), so the recursion over the
    large ``(M, batch, in, ...)`` tensors is products and differences, with no ``where``."""
    ok = den > 0
    return torch.where(ok, 1.0 / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(den))


def batched_basis(x: Tensor, knots: Tensor, spline_order: int) -> Tensor:
    """Dense B-spline basis of M models by the Cox-de Boor recursion, per-model knots.

    x ``(M, batch, in)``; knots ``(M, in, n)`` non-decreasing per input, ``n = G + 2k + 1``.
    Returns ``(M, batch, in, G + k)``: entry ``[m, b, i, g]`` is ``B_g(x[m, b, i])`` on the knots
    ``knots[m, i]``. Intervals are half-open ``[t_j, t_{j+1})``; outside ``[t_0, t_{n-1})`` every
    basis function is zero (the conventions of :mod:`kanlab.splines`).
    """
    if (
        x.dim() != 3
        or knots.dim() != 3
        or x.shape[0] != knots.shape[0]
        or x.shape[2] != knots.shape[1]
    ):
        raise ValueError(
            f"x must be (M, batch, in) and knots (M, in, n) with the same M and in, got "
            f"x {tuple(x.shape)} and knots {tuple(knots.shape)}"
        )
    t = knots.unsqueeze(1)  # (M, 1, in, n)
    xe = x.unsqueeze(-1)  # (M, batch, in, 1)
    basis = ((xe >= t[..., :-1]) & (xe < t[..., 1:])).to(x.dtype)  # (M, batch, in, n-1)
    for p in range(1, spline_order + 1):
        inv_left = _safe_inverse(t[..., p:-1] - t[..., : -(p + 1)])  # (M, 1, in, n-1-p)
        inv_right = _safe_inverse(t[..., p + 1 :] - t[..., 1:-p])
        left = (xe - t[..., : -(p + 1)]) * inv_left  # (M, batch, in, n-1-p)
        right = (t[..., p + 1 :] - xe) * inv_right
        basis = left * basis[..., :-1] + right * basis[..., 1:]  # (M, batch, in, n-1-p)
    return basis  # (M, batch, in, G+k)


def batched_spline_product(x: Tensor, knots: Tensor, weight: Tensor, spline_order: int) -> Tensor:
    """``y[m, b, o] = sum_i sum_g B_g(x[m, b, i]; knots[m, i]) * weight[m, i, g, o]``.

    x ``(M, batch, in)``; knots ``(M, in, G+2k+1)``; weight ``(M, in, G+k, out)`` (the
    coefficients with any scale and mask already folded in) -> ``(M, batch, out)``.
    """
    n_models, n_in, n_basis, n_out = weight.shape
    basis = batched_basis(x, knots, spline_order)  # (M, batch, in, G+k)
    if basis.shape[-1] != n_basis:
        raise ValueError(
            f"knots give {basis.shape[-1]} basis functions per input but weight has {n_basis}"
        )
    flat = basis.reshape(n_models, x.shape[1], n_in * n_basis)  # (M, batch, in*(G+k))
    return torch.bmm(flat, weight.reshape(n_models, n_in * n_basis, n_out))  # (M, batch, out)
