"""The forward product of the CPU kernels: ``y[b] = sum_i scale[i] * sum_r B_r(x[b, i]) *
weight[i, row + r]`` over a range of samples (:func:`_forward`), with the per-sample vector
products (:func:`_apply`) and the bucketed cubic form for small and medium grids
(:func:`_apply_sorted`).
"""

from __future__ import annotations

import numpy as np
from numba import literally, njit

from kanlab.kernels.cpu.basis import _block_basis, _large_grid_order, _sort_rows, _transpose
from kanlab.kernels.cpu.simd import (
    _comb4,
    _combk,
    _get,
    _ld,
    _st,
    _vfma,
    _vload,
    _vmul,
    _vsplat,
    _vstore,
    _width,
)
from kanlab.kernels.cpu.tuning import (
    _GROUP,
    _JIT,
    _WINDOW_ROWS,
    _Y_BYTES_SORTED,
    _Y_BYTES_SORTED_MEDIUM,
    _block_size,
    _large_grid,
    _rows_budget,
)


@njit(inline="always")
def _apply4(weight, scale, p, sc, yo, o, y, v0, v1, v2, v3, count):  # pragma: no cover
    t = _comb4(weight, p + o, weight.shape[2], v0, v1, v2, v3, count)
    _st(y, yo + o, _vfma(_ld(scale, sc + o, count), t, _ld(y, yo + o, count)), count)


@njit(inline="always")
def _applyk(weight, scale, vals, s, k, p, sc, yo, o, y, count):  # pragma: no cover
    t = _combk(weight, p + o, weight.shape[2], vals, s, k, count)
    _st(y, yo + o, _vfma(_ld(scale, sc + o, count), t, _ld(y, yo + o, count)), count)


@njit(**_JIT)
def _apply(weight, scale, rows, vals, order, ordered, i, b0, b1, k, y):  # pragma: no cover
    """``y[b] += scale[i] * sum_r vals[r, s] * weight[i, rows[s] + r]`` for b = b0 + s, s = 0..b1-b0-1
    (in the block's ``order``, a permutation, when ``ordered``: a compile-time constant), in
    vectors (full ones, then one masked vector for the rest of the row).

    A function of its own (per input and block) so that LLVM allocates registers for this loop
    alone: inside the whole kernel it spilled the loop's pointers to the stack. The basis values
    are broadcast once per sample (LLVM cannot hoist them: it cannot prove y does not alias them).
    """
    n_basis = weight.shape[1]
    n_out = weight.shape[2]
    lanes = _width(weight)
    full = n_out - n_out % lanes
    rest = n_out - full
    sc = i * n_out
    # one compiled loop per value of ordered (a run-time select of s cost 5-10% on small grids)
    literally(ordered)
    for m in range(b1 - b0):
        s = order[m] if ordered else m
        b = b0 + s
        p = (i * n_basis + rows[s]) * n_out
        yo = b * n_out
        if k == 3:
            v0 = _vsplat(weight, vals[0, s])
            v1 = _vsplat(weight, vals[1, s])
            v2 = _vsplat(weight, vals[2, s])
            v3 = _vsplat(weight, vals[3, s])
            for o in range(0, full, lanes):
                _apply4(weight, scale, p, sc, yo, o, y, v0, v1, v2, v3, lanes)
            if rest:
                _apply4(weight, scale, p, sc, yo, full, y, v0, v1, v2, v3, rest)
        else:
            for o in range(0, full, lanes):
                _applyk(weight, scale, vals, s, k, p, sc, yo, o, y, lanes)
            if rest:
                _applyk(weight, scale, vals, s, k, p, sc, yo, full, y, rest)


@njit(inline="always")
def _scaled_row(weight, q, f, count):  # pragma: no cover - compiled
    """``count`` lanes of the coefficient table at flat offset q times the scale lanes f."""
    return _vmul(f, _ld(weight, q, count))


@njit(**_JIT)
def _apply_sorted(weight, scale, vals, starts, order, i, yp, stride):  # pragma: no cover
    """Cubic case of :func:`_apply` with the block's samples sorted by first row (small and medium
    grids): ``yp[s * stride + o] += scale[i, o] sum_r vals[r, s] weight[i, row + r, o]``, yp a
    padded (block, stride) scratch (stride: out rounded up to whole vectors).

    Two vectors of output lanes at a time, the rows are walked in order with a window of the four
    scaled rows a bucket of samples needs (row, row+1, row+2, row+3) held in registers: each step
    loads one new row and shifts the window, and every sample of the bucket is updated with 8
    FMAs, 2 loads and 2 stores of its y lanes per pair of vectors, instead of 8 coefficient
    loads, 2 scale loads and 10 multiply-adds (measured 11.8 -> 8 ns per (sample, input) at out=64
    on small grids, and about half the time at out=10, where the padded rows spare the masked
    stores of a row's tail, slow on AMD cores). Reloading all four rows per bucket instead of
    sliding the window cost as much on small grids and ~30% more at G=40 to 100, where buckets
    hold few samples. With about one sample per row (G=500) the loop's unpredictable bucket
    sizes made it ~20% slower than the per-sample form, which large grids keep.
    """
    n_basis = weight.shape[1]
    n_out = weight.shape[2]
    lanes = _width(weight)
    nb = vals.shape[1]
    n_rows = starts.shape[0] - 1
    sc = i * n_out
    base = i * n_basis * n_out
    for o in range(0, stride, 2 * lanes):
        ca = min(lanes, n_out - o)
        fa = _ld(scale, sc + o, ca)
        q = base + o
        a0 = _scaled_row(weight, q, fa, ca)
        a1 = _scaled_row(weight, q + n_out, fa, ca)
        a2 = _scaled_row(weight, q + 2 * n_out, fa, ca)
        if o + lanes < stride:
            cb = min(lanes, n_out - o - lanes)
            fb = _ld(scale, sc + o + lanes, cb)
            e0 = _scaled_row(weight, q + lanes, fb, cb)
            e1 = _scaled_row(weight, q + n_out + lanes, fb, cb)
            e2 = _scaled_row(weight, q + 2 * n_out + lanes, fb, cb)
            for row in range(n_rows):
                q = base + (row + 3) * n_out + o
                a3 = _scaled_row(weight, q, fa, ca)
                e3 = _scaled_row(weight, q + lanes, fb, cb)
                for m in range(_get(starts, row), _get(starts, row + 1)):
                    s = _get(order, m)
                    p = s * stride + o
                    v = _vsplat(yp, _get(vals, s))
                    y0 = _vfma(v, a0, _vload(yp, p))
                    y1 = _vfma(v, e0, _vload(yp, p + lanes))
                    v = _vsplat(yp, _get(vals, s + nb))
                    y0 = _vfma(v, a1, y0)
                    y1 = _vfma(v, e1, y1)
                    v = _vsplat(yp, _get(vals, s + 2 * nb))
                    y0 = _vfma(v, a2, y0)
                    y1 = _vfma(v, e2, y1)
                    v = _vsplat(yp, _get(vals, s + 3 * nb))
                    _vstore(yp, p, _vfma(v, a3, y0))
                    _vstore(yp, p + lanes, _vfma(v, e3, y1))
                a0, a1, a2 = a1, a2, a3
                e0, e1, e2 = e1, e2, e3
        else:
            for row in range(n_rows):
                a3 = _scaled_row(weight, base + (row + 3) * n_out + o, fa, ca)
                for m in range(_get(starts, row), _get(starts, row + 1)):
                    s = _get(order, m)
                    p = s * stride + o
                    y0 = _vfma(_vsplat(yp, _get(vals, s)), a0, _vload(yp, p))
                    y0 = _vfma(_vsplat(yp, _get(vals, s + nb)), a1, y0)
                    y0 = _vfma(_vsplat(yp, _get(vals, s + 2 * nb)), a2, y0)
                    _vstore(yp, p, _vfma(_vsplat(yp, _get(vals, s + 3 * nb)), a3, y0))
                a0, a1, a2 = a1, a2, a3


@njit(**_JIT)
def _forward(x, t0, h, knots, weight, scale, k, uniform, b_lo, b_hi, y):  # pragma: no cover
    """Rows b_lo..b_hi-1 of y (batch, out) = spline product; x (batch, in), weight (in, G+k, out),
    scale (in, out): the per-edge factor applied to input i's coefficient columns. y need not be
    zeroed.

    Blocks of samples (their rows of y stay in cache), input by input inside a block: the input's
    k+1-row slices of the coefficient table are reused by the whole block while they are in cache.
    Per (sample, input): ``y[b] += scale[i] * sum_r vals[r] * weight[i, rows + r]`` in vectors.
    Cubic splines on small and medium grids take the bucketed form (:func:`_apply_sorted`) on a
    padded copy of the block's rows of y.
    """
    n_in = x.shape[1]
    n_basis = weight.shape[1]
    n_out = weight.shape[2]
    n_rows = n_basis - k
    lanes = _width(weight)
    big = _large_grid(weight)
    bucketed = k == 3 and n_rows <= _WINDOW_ROWS
    stride = -(-n_out // lanes) * lanes if bucketed else n_out  # y row length in the block scratch
    budget = _rows_budget(weight)
    if bucketed:
        # medium grids: as many samples per block in float64 as in float32 (buckets of few
        # samples cost branch mispredictions: float64 ran 1.1-1.4x the per-sample form at half)
        budget = _Y_BYTES_SORTED_MEDIUM // 4 * weight.itemsize if big else _Y_BYTES_SORTED
    block = _block_size(stride, weight.itemsize, b_hi - b_lo, budget)
    rows = np.empty(block, dtype=np.int32)
    uu = np.empty(block, dtype=weight.dtype)
    vals = np.empty((k + 1, block), dtype=weight.dtype)
    xb = np.empty((_GROUP, block), dtype=weight.dtype)
    yp = np.empty(block * stride if bucketed else 0, dtype=weight.dtype)
    zero = _vsplat(weight, 0.0)
    starts = np.empty(n_rows + 1, dtype=np.int64)
    counts = np.empty((4, n_rows), dtype=np.int64)
    order = np.empty(block, dtype=np.int32)  # the block's samples sorted by first row
    for b0 in range(b_lo, b_hi, block):
        b1 = min(b_hi, b0 + block)
        m = b1 - b0
        if bucketed:
            for q in range(0, m * stride, lanes):
                _vstore(yp, q, zero)
        else:
            for q in range(b0 * n_out, b1 * n_out, lanes):  # the block's rows are contiguous
                _st(y, q, zero, min(lanes, b1 * n_out - q))
        for i in range(n_in):
            if i % _GROUP == 0:
                _transpose(x, b0, b1, i, min(n_in, i + _GROUP), xb)
            _block_basis(
                xb[i % _GROUP], t0, h, knots, i, m, k, uniform, False, n_basis, rows, uu, vals, vals
            )
            if bucketed:
                _sort_rows(rows, m, n_rows, starts, counts, order)
                _apply_sorted(weight, scale, vals, starts, order, i, yp, stride)
                continue
            if big:  # a constant flag: _apply is compiled for each value
                _large_grid_order(rows, m, starts, order)
                _apply(weight, scale, rows, vals, order, True, i, b0, b1, k, y)
            else:
                _apply(weight, scale, rows, vals, order, False, i, b0, b1, k, y)
        if bucketed:
            for s in range(m):
                for o in range(n_out):
                    y[b0 + s, o] = yp[s * stride + o]
