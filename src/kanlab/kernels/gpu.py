"""GPU backend: the spline product of a KAN layer as Triton kernels (CUDA tensors).

Imported lazily by :mod:`kanlab.kernels.sparse` the first time a CUDA tensor reaches the op (and only
when ``triton`` is importable), so importing kanlab never needs Triton or a GPU.

Every kernel computes the k+1 non-zero B-splines of its (sample, input) pairs itself, in registers:

- uniform knots: the interval from ``floor((x - t_0) / h)`` and the values (and derivatives) as the
  cardinal polynomials of the local coordinate u, by Horner's rule on a (k+1, k+1) coefficient table
  (:func:`cardinal_polynomials`, exact rationals rounded once);
- any other knots: a binary search for the interval and the triangular Cox-de Boor recursion on the
  2k+2 surrounding knots (a (block, k+1) tile per level).

So nothing of size batch * in * (k+1) or batch * in * (G+k) is ever written to memory: a forward
allocates y, a backward the gradients (and a scale's gradient its own (in, out)); the memory of a
KAN step is the model's own tensors and the activations between layers.

Two strategies, chosen per call by :func:`strategy` (``KANLAB_TRITON_STRATEGY`` forces one):

- ``"sparse"`` (any grid; float64): the products gather the k+1 contiguous coefficient rows of each
  (sample, input), cost independent of G:
  ``y[b, o] = sum_i s[i, o] sum_r V[b,i,r] W[i, S[b,i]+r, o]``,
  ``gx[b, i] = sum_r D[b,i,r] sum_o W[i, S+r, o] s[i, o] gy[b, o]`` and, in the same pass, atomic
  adds ``gT[i, S+r, o] += V[b,i,r] gy[b, o]`` (on large grids samples rarely share rows);
- ``"tiles"`` (float32, small grids: G+k up to :data:`TILES_MAX_BASIS`): each input's local dense
  basis tile (block, G+k padded to a power of two) lives only in registers and meets the
  coefficients in ``tl.dot`` (tensor cores, "tf32x3": float32 accuracy): y += B_i W_i,
  gx_i = sum_g D_i * (gy W_i^T), gT_i += B_i^T gy. On small grids every sample of a batch hits the
  same G+k rows: gathers would re-read them once per sample, atomics would serialise on them.

Then, with a scale, one pass ``gs[i, o] = sum_g W[i,g,o] gT[i,g,o]`` and ``gW = s * gT``
(``s`` the per-edge scale (in, out); ``gT`` the gradient of the unscaled table). Work on one output
tile may be split over inputs (so that small batches still fill the GPU): those partial sums meet
in atomic adds, as do the coefficient gradients, so their last bits may vary from run to run.
"""

from __future__ import annotations

import functools
import os
from fractions import Fraction

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = [
    "TILES_MAX_BASIS",
    "backward",
    "cardinal_polynomials",
    "derivative_forward",
    "derivative_input",
    "derivative_table",
    "forward",
    "strategy",
]

_BLOCK_B = 32  # samples per program
# Largest G + k (rounded up to a power of two, at least 16) for the "tiles" strategy.
TILES_MAX_BASIS = 32


# ---------------------------------------------------------------------------- basis maths (host)
@functools.cache
def _cardinal_rationals(k: int) -> tuple[tuple[Fraction, ...], ...]:
    """Exact coefficients ``P[r][d]``: the non-zero cardinal B-spline r (the one starting r - k
    intervals before x's interval) is ``sum_d P[r][d] u^d`` at local coordinate u in [0, 1).
    The recursion of :func:`kanlab.splines._cardinal_values`, on polynomials."""
    polys = [[Fraction(1)]]  # level 0: one basis, the constant 1
    for p in range(1, k + 1):
        new = []
        for r in range(p + 1):
            acc = [Fraction(0)] * (p + 1)
            if r >= 1:  # (u + p - r) * N_{r-1}
                for d, c in enumerate(polys[r - 1]):
                    acc[d] += c * (p - r)
                    acc[d + 1] += c
            if r <= p - 1:  # (r + 1 - u) * N_r
                for d, c in enumerate(polys[r]):
                    acc[d] += c * (r + 1)
                    acc[d + 1] -= c
            new.append([c / p for c in acc])
        polys = new
    return tuple(tuple(row) for row in polys)


@functools.cache
def _polynomial_table(k: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``(2, k+1, k+1)``: [0] the values' coefficients, [1] the derivatives' (d/du), padded."""
    vals = _cardinal_rationals(k)
    table = [[float(c) for c in row] for row in vals]
    deriv = [[float(d * row[d]) for d in range(1, k + 1)] + [0.0] for row in vals]
    return torch.tensor([table, deriv], dtype=dtype, device=device).contiguous()


def cardinal_polynomials(k: int) -> Tensor:
    """The float64 table ``(k+1, k+1)`` of :func:`_cardinal_rationals` (for tests)."""
    return _polynomial_table(k, torch.float64, torch.device("cpu"))[0]


# ---------------------------------------------------------------------------- basis maths (device)
@triton.jit
def _horner(u, poly_ptr, r: tl.constexpr, K: tl.constexpr):
    """sum_d poly[r, d] u^d for d = 0..K (poly row-major (K+1, K+1))."""
    v = tl.zeros_like(u) + tl.load(poly_ptr + r * (K + 1) + K)
    for e in tl.static_range(K):
        v = v * u + tl.load(poly_ptr + r * (K + 1) + (K - 1 - e))
    return v


@triton.jit
def _safe_div(num, den):
    ok = den > 0
    return tl.where(ok, num / tl.where(ok, den, 1.0), 0.0)


@triton.jit
def _locate_uniform(x, krow_ptr, n_knots):
    """Interval j (int32, 0 where outside), local coordinate u and the inside flag; as
    :func:`kanlab.splines.sparse_basis` on equally spaced knots."""
    t0 = tl.load(krow_ptr)
    h = (tl.load(krow_ptr + n_knots - 1) - t0) / (n_knots - 1)
    s = (x - t0) / h
    fl = tl.floor(s)
    inside = (fl >= 0) & (fl <= n_knots - 2)
    j = tl.where(inside, fl, 0.0).to(tl.int32)
    return j, s - fl, inside, h


@triton.jit
def _locate_adapted(x, krow_ptr, n_knots, n_steps):
    """Interval j (``searchsorted(knots, x, right=True) - 1`` clamped to [0, n-2]) and the inside
    flag, by a branch-free binary search of ``n_steps`` >= log2(n_knots + 1) rounds."""
    lo = tl.zeros(x.shape, dtype=tl.int32)
    hi = lo + n_knots
    for _ in range(n_steps):
        active = lo < hi
        mid = (lo + hi) // 2
        t = tl.load(krow_ptr + tl.minimum(mid, n_knots - 1))
        right = t <= x
        lo = tl.where(active & right, mid + 1, lo)
        hi = tl.where(active & ~right, mid, hi)
    j = lo - 1
    inside = (j >= 0) & (j <= n_knots - 2) & (x < tl.load(krow_ptr + n_knots - 1))
    return tl.minimum(tl.maximum(j, 0), n_knots - 2), inside


@triton.jit
def _knot(krow_ptr, m, n_knots):
    return tl.load(krow_ptr + tl.minimum(tl.maximum(m, 0), n_knots - 1))


@triton.jit
def _shift_right(vals, cols):
    """(B, KP) -> (B, KP) with column c holding column c - 1 (0 in column 0); a select, so a NaN
    stays in its sample's row."""
    sel = (cols[:, None] + 1) == cols[None, :]  # (KP src, KP dst)
    moved = tl.where(sel[None, :, :], vals[:, :, None], 0.0)
    return tl.sum(moved, axis=1)


@triton.jit
def _de_boor(x, j, krow_ptr, n_knots, cols, LEVELS: tl.constexpr):
    """Columns c = 0..LEVELS of the result: B_{j - LEVELS + c, LEVELS}(x) for x in interval j,
    as a (B, KP) tile (further columns 0). Knot indices outside the vector are clamped: they only
    enter basis functions that do not exist (the caller zeroes those)."""
    xe = x[:, None]
    vals = tl.where(cols[None, :] == 0, 1.0, 0.0) + tl.zeros_like(xe)
    for p in tl.static_range(1, LEVELS + 1):
        i = j[:, None] - p + cols[None, :]  # (B, KP) basis index of column c at level p
        t_i = _knot(krow_ptr, i, n_knots)
        t_i1 = _knot(krow_ptr, i + 1, n_knots)
        t_ip = _knot(krow_ptr, i + p, n_knots)
        t_ip1 = _knot(krow_ptr, i + p + 1, n_knots)
        left = _safe_div(xe - t_i, t_ip - t_i) * _shift_right(vals, cols)
        right = _safe_div(t_ip1 - xe, t_ip1 - t_i1) * vals
        vals = tl.where(cols[None, :] <= p, left + right, 0.0)
    return vals


@triton.jit
def _adapted_with_derivative(x, j, krow_ptr, n_knots, cols, K: tl.constexpr):
    """(values, derivatives), each (B, KP): column c is basis j - K + c of order K and its
    derivative ``K (B_{a,K-1} / (t_{a+K} - t_a) - B_{a+1,K-1} / (t_{a+K+1} - t_{a+1}))``."""
    if K == 0:
        vals = tl.where(cols[None, :] == 0, 1.0, 0.0) + tl.zeros_like(x[:, None])
        dvals = tl.zeros_like(vals)
    else:
        low = _de_boor(x, j, krow_ptr, n_knots, cols, K - 1)  # column c: B_{j-K+1+c, K-1}
        xe = x[:, None]
        a = j[:, None] - K + cols[None, :]
        t_a = _knot(krow_ptr, a, n_knots)
        t_a1 = _knot(krow_ptr, a + 1, n_knots)
        t_ak = _knot(krow_ptr, a + K, n_knots)
        t_ak1 = _knot(krow_ptr, a + K + 1, n_knots)
        lower = _shift_right(low, cols)  # column c: B_{a, K-1}; low itself is B_{a+1, K-1}
        vals = _safe_div(xe - t_a, t_ak - t_a) * lower + _safe_div(t_ak1 - xe, t_ak1 - t_a1) * low
        dvals = K * (_safe_div(lower, t_ak - t_a) - _safe_div(low, t_ak1 - t_a1))
    keep = cols[None, :] <= K
    return tl.where(keep, vals, 0.0), tl.where(keep, dvals, 0.0)


@triton.jit
def _column(tile, cols, r: tl.constexpr):
    return tl.sum(tl.where(cols[None, :] == r, tile, 0.0), axis=1)


@triton.jit
def _locate(x, krow_ptr, n_knots, n_steps, cols, K: tl.constexpr, UNIFORM: tl.constexpr):
    """Where each x lies: (j, u, h, inside, vals, dvals). Uniform knots: interval j, local
    coordinate u, spacing h (vals/dvals unused zeros). Other knots: j and the (B, KP) tiles of
    the k+1 values and derivatives from the Cox-de Boor recursion (u, h unused)."""
    if UNIFORM:
        j, u, inside, h = _locate_uniform(x, krow_ptr, n_knots)
        vals = tl.zeros_like(x[:, None] * cols[None, :])
        dvals = vals
    else:
        j, inside = _locate_adapted(x, krow_ptr, n_knots, n_steps)
        vals, dvals = _adapted_with_derivative(x, j, krow_ptr, n_knots, cols, K)
        u = x
        h = x
    return j, u, h, inside, vals, dvals


@triton.jit
def _basis_r(x, j, u, h, inside, vals, dvals, poly_ptr, n_basis, cols, r: tl.constexpr,
             K: tl.constexpr, UNIFORM: tl.constexpr, DERIV: tl.constexpr):  # fmt: skip
    """Basis j - K + r at each x (its derivative d/dx with DERIV): 0 where it does not exist or x
    lies outside the knots; NaN where x is NaN."""
    if UNIFORM:
        if DERIV:
            v = _horner(u, poly_ptr + (K + 1) * (K + 1), r, K) / h
        else:
            v = _horner(u, poly_ptr, r, K)
    else:
        if DERIV:
            v = _column(dvals, cols, r)
        else:
            v = _column(vals, cols, r)
    idx = j - K + r
    keep = ((idx >= 0) & (idx < n_basis) & inside) | (x != x)  # NaN in, NaN out
    return tl.where(keep, v, 0.0)


@triton.jit
def _dense_tile(x, krow_ptr, poly_ptr, n_knots, n_basis, n_steps, cols, g,
                K: tl.constexpr, UNIFORM: tl.constexpr, DERIV: tl.constexpr):  # fmt: skip
    """The local dense basis (or derivative) tile (B, NBP): column g holds B_g(x) (B'_g(x))."""
    j, u, h, inside, vals, dvals = _locate(x, krow_ptr, n_knots, n_steps, cols, K, UNIFORM)
    dense = tl.zeros_like(x[:, None] * g[None, :])
    for r in tl.static_range(K + 1):
        v = _basis_r(x, j, u, h, inside, vals, dvals, poly_ptr, n_basis, cols, r, K, UNIFORM, DERIV)
        dense = tl.where(g[None, :] == (j - K + r)[:, None], v[:, None], dense)
    return dense


# ---------------------------------------------------------------------------- product kernels
@triton.jit
def _forward_kernel(
    x_ptr,  # (batch, in)
    knots_ptr,  # (in, n_knots)
    poly_ptr,  # (2, K+1, K+1)
    w_ptr,  # (in, n_basis, out)
    s_ptr,  # (in, out) scale, or w_ptr when HAS_SCALE is False
    y_ptr,  # (batch, out); zeroed when SPLIT
    batch, n_in, n_knots, n_basis, n_out, n_steps, per_split,
    K: tl.constexpr, KP: tl.constexpr, UNIFORM: tl.constexpr, HAS_SCALE: tl.constexpr,
    TILES: tl.constexpr, NBP: tl.constexpr, PRECISION: tl.constexpr, SPLIT: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_O: tl.constexpr,
):  # fmt: skip
    """One program per (block of samples, block of outputs, share of the inputs)."""
    offs_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_o = tl.program_id(1) * BLOCK_O + tl.arange(0, BLOCK_O)
    i_lo = tl.program_id(2) * per_split
    i_hi = tl.minimum(i_lo + per_split, n_in)
    cols = tl.arange(0, KP)
    g = tl.arange(0, NBP)
    mask_b = offs_b < batch
    mask_o = offs_o < n_out
    mask = mask_b[:, None] & mask_o[None, :]
    rows_b = offs_b.to(tl.int64) * n_in
    acc = tl.zeros((BLOCK_B, BLOCK_O), dtype=y_ptr.dtype.element_ty)
    for i in range(i_lo, i_hi):
        x = tl.load(x_ptr + rows_b + i, mask=mask_b, other=0.0)
        krow = knots_ptr + i * n_knots
        if HAS_SCALE:
            s = tl.load(s_ptr + i * n_out + offs_o, mask=mask_o, other=0.0)
        if TILES:
            dense = _dense_tile(
                x, krow, poly_ptr, n_knots, n_basis, n_steps, cols, g, K, UNIFORM, False
            )
            rows = (i * n_basis + g).to(tl.int64)
            w_mask = (g < n_basis)[:, None] & mask_o[None, :]
            w = tl.load(w_ptr + rows[:, None] * n_out + offs_o[None, :], mask=w_mask, other=0.0)
            if HAS_SCALE:
                w = w * s[None, :]
            acc = tl.dot(dense, w, acc, input_precision=PRECISION)
        else:
            j, u, h, inside, vals, dvals = _locate(x, krow, n_knots, n_steps, cols, K, UNIFORM)
            part = tl.zeros((BLOCK_B, BLOCK_O), dtype=y_ptr.dtype.element_ty)
            for r in tl.static_range(K + 1):
                v = _basis_r(
                    x, j, u, h, inside, vals, dvals, poly_ptr, n_basis, cols, r, K, UNIFORM, False
                )
                row = tl.minimum(tl.maximum(j - K + r, 0), n_basis - 1).to(tl.int64) + i * n_basis
                w = tl.load(w_ptr + row[:, None] * n_out + offs_o[None, :], mask=mask, other=0.0)
                part += v[:, None] * w
            if HAS_SCALE:
                acc += part * s[None, :]
            else:
                acc += part
    ptrs = y_ptr + offs_b[:, None].to(tl.int64) * n_out + offs_o[None, :]
    if SPLIT:
        tl.atomic_add(ptrs, acc, mask=mask)
    else:
        tl.store(ptrs, acc, mask=mask)


@triton.jit
def _grad_x_sparse_kernel(
    x_ptr, knots_ptr, poly_ptr, w_ptr, s_ptr,
    gy_ptr,  # (batch, out)
    gx_ptr,  # (batch, in)
    gt_ptr,  # (in, n_basis, out) zeroed, for SCATTER (the unscaled table's gradient)
    batch, n_in, n_knots, n_basis, n_out, n_steps,
    K: tl.constexpr, KP: tl.constexpr, UNIFORM: tl.constexpr, HAS_SCALE: tl.constexpr,
    NEED_X: tl.constexpr, SCATTER: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_O: tl.constexpr,
):  # fmt: skip
    """One program per (block of samples, input): the input gradient, and with SCATTER the atomic
    coefficient-gradient adds of the same (sample, input) pairs (one pass over gy)."""
    i = tl.program_id(1)
    offs_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.arange(0, KP)
    mask_b = offs_b < batch
    pair = offs_b.to(tl.int64) * n_in + i
    x = tl.load(x_ptr + pair, mask=mask_b, other=0.0)
    krow = knots_ptr + i * n_knots
    j, u, h, inside, vals, dvals = _locate(x, krow, n_knots, n_steps, cols, K, UNIFORM)
    acc = tl.zeros((BLOCK_B,), dtype=gx_ptr.dtype.element_ty)
    for o0 in range(0, n_out, BLOCK_O):
        offs_o = o0 + tl.arange(0, BLOCK_O)
        mask_o = offs_o < n_out
        mask = mask_b[:, None] & mask_o[None, :]
        gy = tl.load(
            gy_ptr + offs_b[:, None].to(tl.int64) * n_out + offs_o[None, :], mask=mask, other=0.0
        )
        if NEED_X and HAS_SCALE:
            s = tl.load(s_ptr + i * n_out + offs_o, mask=mask_o, other=0.0)
            gys = gy * s[None, :]
        else:
            gys = gy
        for r in tl.static_range(K + 1):
            row = tl.minimum(tl.maximum(j - K + r, 0), n_basis - 1).to(tl.int64) + i * n_basis
            ptrs = row[:, None] * n_out + offs_o[None, :]
            if NEED_X:
                d = _basis_r(
                    x, j, u, h, inside, vals, dvals, poly_ptr, n_basis, cols, r, K, UNIFORM, True
                )
                w = tl.load(w_ptr + ptrs, mask=mask, other=0.0)
                acc += d * tl.sum(w * gys, axis=1)
            if SCATTER:
                v = _basis_r(
                    x, j, u, h, inside, vals, dvals, poly_ptr, n_basis, cols, r, K, UNIFORM, False
                )
                tl.atomic_add(gt_ptr + ptrs, v[:, None] * gy, mask=mask)
    if NEED_X:
        acc = tl.where(x != x, x, acc)  # NaN in, NaN out (as on the CPU)
        tl.store(gx_ptr + pair, acc, mask=mask_b)


@triton.jit
def _grad_x_tiles_kernel(
    x_ptr, knots_ptr, poly_ptr, w_ptr, s_ptr, gy_ptr, gx_ptr,
    batch, n_in, n_knots, n_basis, n_out, n_steps, per_split,
    K: tl.constexpr, KP: tl.constexpr, UNIFORM: tl.constexpr, HAS_SCALE: tl.constexpr,
    NBP: tl.constexpr, PRECISION: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_O: tl.constexpr,
):  # fmt: skip
    """One program per (block of samples, share of the inputs): gx_i = sum_g D_i * (gy W_i^T),
    the block's gy tiles staying hot in cache across the share's inputs."""
    offs_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    i_lo = tl.program_id(1) * per_split
    i_hi = tl.minimum(i_lo + per_split, n_in)
    cols = tl.arange(0, KP)
    g = tl.arange(0, NBP)
    mask_b = offs_b < batch
    for i in range(i_lo, i_hi):
        pair = offs_b.to(tl.int64) * n_in + i
        x = tl.load(x_ptr + pair, mask=mask_b, other=0.0)
        krow = knots_ptr + i * n_knots
        dense = _dense_tile(x, krow, poly_ptr, n_knots, n_basis, n_steps, cols, g, K, UNIFORM, True)
        rows = (i * n_basis + g).to(tl.int64)
        proj = tl.zeros((BLOCK_B, NBP), dtype=gx_ptr.dtype.element_ty)
        for o0 in range(0, n_out, BLOCK_O):
            offs_o = o0 + tl.arange(0, BLOCK_O)
            mask_o = offs_o < n_out
            gy = tl.load(
                gy_ptr + offs_b[:, None].to(tl.int64) * n_out + offs_o[None, :],
                mask=mask_b[:, None] & mask_o[None, :],
                other=0.0,
            )
            w_mask = (g < n_basis)[:, None] & mask_o[None, :]
            w = tl.load(w_ptr + rows[:, None] * n_out + offs_o[None, :], mask=w_mask, other=0.0)
            if HAS_SCALE:
                w = w * tl.load(s_ptr + i * n_out + offs_o, mask=mask_o, other=0.0)[None, :]
            proj = tl.dot(gy, tl.trans(w), proj, input_precision=PRECISION)  # (B, NBP)
        gx = tl.sum(dense * proj, axis=1)
        gx = tl.where(x != x, x, gx)  # NaN in, NaN out (as on the CPU)
        tl.store(gx_ptr + pair, gx, mask=mask_b)


@triton.jit
def _grad_w_tiles_kernel(
    x_ptr, knots_ptr, poly_ptr, gy_ptr,
    gt_ptr,  # (in, n_basis, out) zeroed: the unscaled table's gradient
    batch, n_in, n_knots, n_basis, n_out, n_steps, per_split,
    K: tl.constexpr, KP: tl.constexpr, UNIFORM: tl.constexpr, NBP: tl.constexpr,
    PRECISION: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_O: tl.constexpr,
):  # fmt: skip
    """One program per (input, block of outputs, share of the batch): gT[i, :, o-block] of its
    share as a sum of (NBP, BLOCK_B) x (BLOCK_B, BLOCK_O) products of the local dense basis."""
    i = tl.program_id(0)
    offs_o = tl.program_id(1) * BLOCK_O + tl.arange(0, BLOCK_O)
    b_lo = tl.program_id(2) * per_split
    b_hi = tl.minimum(b_lo + per_split, batch)
    cols = tl.arange(0, KP)
    g = tl.arange(0, NBP)
    mask_o = offs_o < n_out
    krow = knots_ptr + i * n_knots
    acc = tl.zeros((NBP, BLOCK_O), dtype=gt_ptr.dtype.element_ty)
    for b0 in range(b_lo, b_hi, BLOCK_B):
        offs_b = b0 + tl.arange(0, BLOCK_B)
        mask_b = offs_b < b_hi
        x = tl.load(x_ptr + offs_b.to(tl.int64) * n_in + i, mask=mask_b, other=0.0)
        dense = _dense_tile(
            x, krow, poly_ptr, n_knots, n_basis, n_steps, cols, g, K, UNIFORM, False
        )
        dense = tl.where(mask_b[:, None], dense, 0.0)
        gy = tl.load(
            gy_ptr + offs_b[:, None].to(tl.int64) * n_out + offs_o[None, :],
            mask=mask_b[:, None] & mask_o[None, :],
            other=0.0,
        )
        acc = tl.dot(tl.trans(dense), gy, acc, input_precision=PRECISION)
    rows = i * n_basis + g
    ptrs = gt_ptr + rows[:, None].to(tl.int64) * n_out + offs_o[None, :]
    tl.atomic_add(ptrs, acc, mask=(g < n_basis)[:, None] & mask_o[None, :])


@triton.jit
def _finalize_kernel(
    w_ptr, s_ptr,
    gt_ptr,  # (in, n_basis, out): in, the unscaled table's gradient; out, the coefficients'
    gs_ptr,  # (in, out): the scale's gradient
    n_basis, n_out,
    BLOCK_O: tl.constexpr,
):  # fmt: skip
    """gs[i, o] = sum_g W[i,g,o] gT[i,g,o]; then gT *= s (one pass over both tables)."""
    i = tl.program_id(0)
    offs_o = tl.program_id(1) * BLOCK_O + tl.arange(0, BLOCK_O)
    mask_o = offs_o < n_out
    s = tl.load(s_ptr + i * n_out + offs_o, mask=mask_o, other=0.0)
    acc = tl.zeros((BLOCK_O,), dtype=gs_ptr.dtype.element_ty)
    base = i.to(tl.int64) * n_basis * n_out
    for g in range(0, n_basis):
        ptrs = base + g * n_out + offs_o
        gt = tl.load(gt_ptr + ptrs, mask=mask_o, other=0.0)
        acc += gt * tl.load(w_ptr + ptrs, mask=mask_o, other=0.0)
        tl.store(gt_ptr + ptrs, gt * s, mask=mask_o)
    tl.store(gs_ptr + i * n_out + offs_o, acc, mask=mask_o)


# ---------------------------------------------------------------------------- launch glue
def _block_o(n_out: int) -> int:
    return max(16, min(64, triton.next_power_of_2(n_out)))


def _nbp(n_basis: int) -> int:
    return max(16, triton.next_power_of_2(n_basis))


def strategy(n_basis: int, dtype: torch.dtype) -> str:
    """ "tiles" (float32 and G+k <= :data:`TILES_MAX_BASIS`) or "sparse"; the environment variable
    ``KANLAB_TRITON_STRATEGY`` forces one (benchmarks compare both; "tiles" is refused past
    G+k = 256, where its register tiles would spill)."""
    forced = os.environ.get("KANLAB_TRITON_STRATEGY")
    if forced:
        if forced not in ("tiles", "sparse"):
            raise ValueError(f"KANLAB_TRITON_STRATEGY must be 'tiles' or 'sparse', got {forced!r}")
        return "sparse" if forced == "tiles" and _nbp(n_basis) > 256 else forced
    return "tiles" if dtype == torch.float32 and _nbp(n_basis) <= TILES_MAX_BASIS else "sparse"


def _precision(dtype: torch.dtype) -> str:
    """tl.dot precision of the tiles: float32 "tf32x3" (three TF32 products: float32 accuracy,
    about 1e-6 relative) unless ``KANLAB_TRITON_DOT`` says otherwise ("ieee": plain float32
    multiply-adds, "tf32": one TF32 product, ~1e-3); float64 "ieee"."""
    if dtype == torch.float64:
        return "ieee"
    return os.environ.get("KANLAB_TRITON_DOT", "tf32x3")


@functools.cache
def _multiprocessors(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def _shares(total: int, programs: int, device: torch.device, minimum: int) -> int:
    """Into how many shares to split a loop of ``total`` iterations so that ``programs`` times the
    shares fill the GPU (~4 programs per multiprocessor), each share ``minimum`` long or more."""
    sms = _multiprocessors(device) if device.type == "cuda" else 8
    want = max(1, -(-4 * sms // programs))
    return max(1, min(want, total // minimum))


def _setup(x: Tensor, knots: Tensor, weight: Tensor, spline_order: int, uniform: bool):
    k = spline_order
    n_basis = weight.shape[1]
    tiles = strategy(n_basis, x.dtype) == "tiles"
    knots = knots.detach().contiguous()
    n_knots = knots.shape[1]
    meta = {"K": k, "KP": max(2, triton.next_power_of_2(k + 1)), "UNIFORM": bool(uniform)}
    return tiles, knots, n_knots, meta, _polynomial_table(k, x.dtype, x.device)


def forward(
    x: Tensor,
    knots: Tensor,
    weight: Tensor,
    spline_order: int,
    uniform: bool,
    scale: Tensor | None = None,
) -> Tensor:
    """x (batch, in), knots (in, G+2k+1), weight (in, G+k, out), scale (in, out) or None ->
    y (batch, out)."""
    batch, n_in = x.shape
    _, n_basis, n_out = weight.shape
    if batch == 0:
        return torch.empty(batch, n_out, dtype=x.dtype, device=x.device)
    tiles, knots, n_knots, meta, poly = _setup(x, knots, weight, spline_order, uniform)
    w = weight.detach().contiguous()
    s = w if scale is None else scale.detach().contiguous()
    block_o = _block_o(n_out)
    grid = (triton.cdiv(batch, _BLOCK_B), triton.cdiv(n_out, block_o))
    splits = _shares(n_in, grid[0] * grid[1], x.device, minimum=16)
    per_split = -(-n_in // splits)
    splits = -(-n_in // per_split)
    alloc = torch.zeros if splits > 1 else torch.empty
    y = alloc(batch, n_out, dtype=x.dtype, device=x.device)
    _forward_kernel[(*grid, splits)](
        x.detach().contiguous(), knots, poly, w, s, y,
        batch, n_in, n_knots, n_basis, n_out, n_knots.bit_length(), per_split,
        **meta, HAS_SCALE=scale is not None, TILES=tiles, NBP=_nbp(n_basis) if tiles else 16,
        PRECISION=_precision(x.dtype), SPLIT=splits > 1, BLOCK_B=_BLOCK_B, BLOCK_O=block_o,
    )  # fmt: skip
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
    """Gradients of ``sum(grad_y * y)`` w.r.t. x (batch, in), weight (in, G+k, out) and scale
    (in, out) (None when ``scale`` is None or not needed)."""
    batch, n_in = x.shape
    _, n_basis, n_out = weight.shape
    gx = torch.zeros(x.shape, dtype=x.dtype, device=x.device) if need_x else None
    gt = (
        torch.zeros(weight.shape, dtype=weight.dtype, device=weight.device) if need_weight else None
    )
    gs = None
    if need_weight and scale is not None:
        gs = torch.zeros(scale.shape, dtype=scale.dtype, device=scale.device)
    if batch == 0 or not (need_x or need_weight):
        return gx, gt, gs
    tiles, knots, n_knots, meta, poly = _setup(x, knots, weight, spline_order, uniform)
    xc = x.detach().contiguous()
    w = weight.detach().contiguous()
    s = w if scale is None else scale.detach().contiguous()
    gy = grad_y.detach().contiguous()
    dims = (batch, n_in, n_knots, n_basis, n_out, n_knots.bit_length())
    block_o = _block_o(n_out)
    n_b = triton.cdiv(batch, _BLOCK_B)
    has_scale = scale is not None
    if tiles:
        nbp, precision = _nbp(n_basis), _precision(x.dtype)
        if need_x:
            splits = _shares(n_in, n_b, x.device, minimum=4)
            per_split = -(-n_in // splits)
            _grad_x_tiles_kernel[(n_b, -(-n_in // per_split))](
                xc, knots, poly, w, s, gy, gx, *dims, per_split, **meta, HAS_SCALE=has_scale,
                NBP=nbp, PRECISION=precision, BLOCK_B=_BLOCK_B, BLOCK_O=block_o,
            )  # fmt: skip
        if need_weight:
            n_o = triton.cdiv(n_out, block_o)
            splits = _shares(batch, n_in * n_o, x.device, minimum=4 * _BLOCK_B)
            per_split = -(-batch // splits)
            _grad_w_tiles_kernel[(n_in, n_o, -(-batch // per_split))](
                xc, knots, poly, gy, gt, *dims, per_split, **meta, NBP=nbp,
                PRECISION=precision, BLOCK_B=_BLOCK_B, BLOCK_O=block_o,
            )  # fmt: skip
    else:
        _grad_x_sparse_kernel[(n_b, n_in)](
            xc, knots, poly, w, s, gy, gx if need_x else xc, gt if need_weight else w,
            *dims, **meta, HAS_SCALE=has_scale, NEED_X=need_x, SCATTER=need_weight,
            BLOCK_B=_BLOCK_B, BLOCK_O=block_o,
        )  # fmt: skip
    if gt is not None and has_scale:
        _finalize_kernel[(n_in, triton.cdiv(n_out, block_o))](
            w, s, gt, gs, n_basis, n_out, BLOCK_O=block_o
        )
    return gx, gt, gs


# ---------------------------------------------------------------- higher derivatives (kernels)
# For the autograd formulas of second and higher order (kanlab.kernels.sparse): the same products
# with the M-th derivative of the basis, B^(M), and a per-(sample, input) factor a. Plain sparse
# kernels (gathers and atomic adds, one strategy): first-order training never runs them.
@triton.jit
def _derivative_tile(x, j, u, h, krow_ptr, n_knots, cols,
                     K: tl.constexpr, M: tl.constexpr, UNIFORM: tl.constexpr):  # fmt: skip
    """(B, KP): column c is the M-th derivative of basis j - K + c (order K) at x (columns past K
    zero): the recursion in the local coordinate u (uniform knots) or on the knots up to degree
    K - M, then M levels of ``D B_{a,p} = p B_{a,p-1} / (t_{a+p} - t_a) - p B_{a+1,p-1} /
    (t_{a+p+1} - t_{a+1})`` (``(B_{a,p-1} - B_{a+1,p-1}) / h`` on uniform knots)."""
    xe = x[:, None]
    vals = tl.where(cols[None, :] == 0, 1.0, 0.0) + tl.zeros_like(xe)
    for p in tl.static_range(1, K + 1):
        lower = _shift_right(vals, cols)  # column c: B_{a, p-1} (vals itself: B_{a+1, p-1})
        if UNIFORM:
            if p > K - M:
                new = (lower - vals) / h
            else:
                c = cols[None, :].to(x.dtype)
                ue = u[:, None]
                new = ((ue + (p - c)) * lower + ((c + 1) - ue) * vals) / p
        else:
            a = j[:, None] - p + cols[None, :]
            t_a = _knot(krow_ptr, a, n_knots)
            t_a1 = _knot(krow_ptr, a + 1, n_knots)
            t_ap = _knot(krow_ptr, a + p, n_knots)
            t_ap1 = _knot(krow_ptr, a + p + 1, n_knots)
            if p > K - M:
                new = p * (_safe_div(lower, t_ap - t_a) - _safe_div(vals, t_ap1 - t_a1))
            else:
                new = (
                    _safe_div(xe - t_a, t_ap - t_a) * lower
                    + _safe_div(t_ap1 - xe, t_ap1 - t_a1) * vals
                )
        vals = tl.where(cols[None, :] <= p, new, 0.0)
    if M > K:
        vals = tl.zeros_like(vals)
    return vals


@triton.jit
def _derivative_locate(x, krow_ptr, n_knots, n_steps, cols,
                       K: tl.constexpr, M: tl.constexpr, UNIFORM: tl.constexpr):  # fmt: skip
    """(j, inside, tile) of each x: its interval, whether it lies inside the knots, and the
    :func:`_derivative_tile`."""
    if UNIFORM:
        j, u, inside, h = _locate_uniform(x, krow_ptr, n_knots)
    else:
        j, inside = _locate_adapted(x, krow_ptr, n_knots, n_steps)
        u = x
        h = x
    return j, inside, _derivative_tile(x, j, u, h, krow_ptr, n_knots, cols, K, M, UNIFORM)


@triton.jit
def _derivative_r(x, j, inside, tile, n_basis, cols, r: tl.constexpr, K: tl.constexpr):
    """Column r of the tile: 0 where its basis function does not exist or x lies outside the
    knots, NaN where x is NaN; and the flat coefficient row it multiplies."""
    idx = j - K + r
    keep = ((idx >= 0) & (idx < n_basis) & inside) | (x != x)
    v = tl.where(keep, _column(tile, cols, r), 0.0)
    return v, tl.minimum(tl.maximum(idx, 0), n_basis - 1).to(tl.int64)


@triton.jit
def _derivative_forward_kernel(
    x_ptr, knots_ptr, a_ptr, w_ptr, s_ptr, y_ptr,
    batch, n_in, n_knots, n_basis, n_out, n_steps,
    K: tl.constexpr, KP: tl.constexpr, M: tl.constexpr, UNIFORM: tl.constexpr,
    HAS_A: tl.constexpr, HAS_SCALE: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_O: tl.constexpr,
):  # fmt: skip
    """One program per (block of samples, block of outputs):
    ``y[b, o] = sum_i a[b, i] s[i, o] sum_g B^(M)_g(x[b, i]) W[i, g, o]``."""
    offs_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_o = tl.program_id(1) * BLOCK_O + tl.arange(0, BLOCK_O)
    cols = tl.arange(0, KP)
    mask_b = offs_b < batch
    mask_o = offs_o < n_out
    mask = mask_b[:, None] & mask_o[None, :]
    acc = tl.zeros((BLOCK_B, BLOCK_O), dtype=y_ptr.dtype.element_ty)
    for i in range(0, n_in):
        pair = offs_b.to(tl.int64) * n_in + i
        x = tl.load(x_ptr + pair, mask=mask_b, other=0.0)
        j, inside, tile = _derivative_locate(x, knots_ptr + i * n_knots, n_knots, n_steps, cols,
                                             K, M, UNIFORM)  # fmt: skip
        part = tl.zeros((BLOCK_B, BLOCK_O), dtype=y_ptr.dtype.element_ty)
        for r in tl.static_range(K + 1):
            v, row = _derivative_r(x, j, inside, tile, n_basis, cols, r, K)
            row = row + i * n_basis
            w = tl.load(w_ptr + row[:, None] * n_out + offs_o[None, :], mask=mask, other=0.0)
            part += v[:, None] * w
        if HAS_A:
            part = part * tl.load(a_ptr + pair, mask=mask_b, other=0.0)[:, None]
        if HAS_SCALE:
            part = part * tl.load(s_ptr + i * n_out + offs_o, mask=mask_o, other=0.0)[None, :]
        acc += part
    tl.store(y_ptr + offs_b[:, None].to(tl.int64) * n_out + offs_o[None, :], acc, mask=mask)


@triton.jit
def _derivative_pairs_kernel(
    x_ptr, knots_ptr, a_ptr, w_ptr, s_ptr, gy_ptr,
    d_ptr,  # (batch, in), CONTRACT: sum_o gy s sum_g B^(M)_g W
    gt_ptr,  # (in, n_basis, out) zeroed, TABLE: += a B^(M)_g gy (atomic adds)
    batch, n_in, n_knots, n_basis, n_out, n_steps,
    K: tl.constexpr, KP: tl.constexpr, M: tl.constexpr, UNIFORM: tl.constexpr,
    HAS_A: tl.constexpr, HAS_SCALE: tl.constexpr, CONTRACT: tl.constexpr, TABLE: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_O: tl.constexpr,
):  # fmt: skip
    """One program per (block of samples, input): the contraction of each pair with gy, or the
    unscaled table's atomic adds."""
    i = tl.program_id(1)
    offs_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.arange(0, KP)
    mask_b = offs_b < batch
    pair = offs_b.to(tl.int64) * n_in + i
    x = tl.load(x_ptr + pair, mask=mask_b, other=0.0)
    j, inside, tile = _derivative_locate(x, knots_ptr + i * n_knots, n_knots, n_steps, cols,
                                         K, M, UNIFORM)  # fmt: skip
    if HAS_A:
        f = tl.load(a_ptr + pair, mask=mask_b, other=0.0)
    acc = tl.zeros((BLOCK_B,), dtype=x_ptr.dtype.element_ty)
    for o0 in range(0, n_out, BLOCK_O):
        offs_o = o0 + tl.arange(0, BLOCK_O)
        mask_o = offs_o < n_out
        mask = mask_b[:, None] & mask_o[None, :]
        gy = tl.load(
            gy_ptr + offs_b[:, None].to(tl.int64) * n_out + offs_o[None, :], mask=mask, other=0.0
        )
        if CONTRACT and HAS_SCALE:
            gys = gy * tl.load(s_ptr + i * n_out + offs_o, mask=mask_o, other=0.0)[None, :]
        else:
            gys = gy
        for r in tl.static_range(K + 1):
            v, row = _derivative_r(x, j, inside, tile, n_basis, cols, r, K)
            ptrs = (row + i * n_basis)[:, None] * n_out + offs_o[None, :]
            if CONTRACT:
                w = tl.load(w_ptr + ptrs, mask=mask, other=0.0)
                acc += v * tl.sum(w * gys, axis=1)
            if TABLE:
                if HAS_A:
                    v = v * f
                tl.atomic_add(gt_ptr + ptrs, v[:, None] * gy, mask=mask)
    if CONTRACT:
        tl.store(d_ptr + pair, acc, mask=mask_b)


def _derivative_setup(x: Tensor, knots: Tensor, spline_order: int, uniform: bool, order: int):
    knots = knots.detach().contiguous()
    k = spline_order
    meta = {"K": k, "KP": max(2, triton.next_power_of_2(k + 1)), "M": order, "UNIFORM": uniform}
    return knots, knots.shape[1], meta


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
    batch, n_in = x.shape
    _, n_basis, n_out = weight.shape
    y = torch.zeros(batch, n_out, dtype=x.dtype, device=x.device)
    if batch == 0:
        return y
    knots, n_knots, meta = _derivative_setup(x, knots, spline_order, uniform, order)
    xc = x.detach().contiguous()
    w = weight.detach().contiguous()
    block_o = _block_o(n_out)
    _derivative_forward_kernel[(triton.cdiv(batch, _BLOCK_B), triton.cdiv(n_out, block_o))](
        xc, knots, xc if a is None else a.detach().contiguous(), w,
        w if scale is None else scale.detach().contiguous(), y,
        batch, n_in, n_knots, n_basis, n_out, n_knots.bit_length(), **meta,
        HAS_A=a is not None, HAS_SCALE=scale is not None, BLOCK_B=_BLOCK_B, BLOCK_O=block_o,
    )  # fmt: skip
    return y


def _derivative_pairs(a, grad_y, x, knots, weight, spline_order, uniform, scale, order, table):
    batch, n_in = x.shape
    _, n_basis, n_out = weight.shape
    out = torch.zeros(weight.shape if table else x.shape, dtype=x.dtype, device=x.device)
    if batch == 0:
        return out
    knots, n_knots, meta = _derivative_setup(x, knots, spline_order, uniform, order)
    xc = x.detach().contiguous()
    w = weight.detach().contiguous()
    _derivative_pairs_kernel[(triton.cdiv(batch, _BLOCK_B), n_in)](
        xc, knots, xc if a is None else a.detach().contiguous(), w,
        w if scale is None else scale.detach().contiguous(), grad_y.detach().contiguous(),
        xc if table else out, out if table else w,
        batch, n_in, n_knots, n_basis, n_out, n_knots.bit_length(), **meta,
        HAS_A=a is not None, HAS_SCALE=scale is not None, CONTRACT=not table, TABLE=table,
        BLOCK_B=_BLOCK_B, BLOCK_O=_block_o(n_out),
    )  # fmt: skip
    return out


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
    return _derivative_pairs(
        None, grad_y, x, knots, weight, spline_order, uniform, scale, order, False
    )


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
) -> tuple[Tensor, Tensor | None]:
    """With ``U[i, g, o] = sum_b a[b, i] B^(order)_g(x[b, i]) grad_y[b, o]`` (a None: ones):
    ``U * scale`` (in, G+k, out) and ``sum_g U * weight`` (in, out; None without a scale)."""
    gt = _derivative_pairs(a, grad_y, x, knots, weight, spline_order, uniform, scale, order, True)
    if scale is None:
        return gt, None
    gs = torch.zeros(scale.shape, dtype=scale.dtype, device=scale.device)
    block_o = _block_o(weight.shape[2])
    _finalize_kernel[(weight.shape[0], triton.cdiv(weight.shape[2], block_o))](
        weight.detach().contiguous(), scale.detach().contiguous(), gt, gs, weight.shape[1],
        weight.shape[2], BLOCK_O=block_o,
    )  # fmt: skip
    return gt, gs
