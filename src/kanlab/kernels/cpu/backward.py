"""The backward products of the CPU kernels: the coefficient and scale gradients over a range of
inputs (:func:`_grad_weight`, which on large grids also computes the input gradient in the same
pass) and the input gradient over a range of samples (:func:`_grad_x`), with their row updates,
bucketed sums and the fused per-sample pass (:func:`_pair_products`).
"""

from __future__ import annotations

import numpy as np
from numba import literally, njit

from kanlab.kernels.cpu.basis import _block_basis, _large_grid_order, _sort_rows, _transpose
from kanlab.kernels.cpu.simd import (
    _aligned,
    _comb4,
    _combk,
    _ld,
    _st,
    _store_fence,
    _vadd,
    _vfma,
    _vload,
    _vmul,
    _vsplat,
    _vstore,
    _vstore_stream,
    _vsum,
    _width,
)
from kanlab.kernels.cpu.tuning import (
    _GROUP,
    _GW_BYTES,
    _GW_BYTES_SMALL_GRID,
    _JIT,
    _SORT_MIN,
    _SORTED_FUSED_BYTES,
    _block_size,
    _large_grid,
    _rows_budget,
)


@njit(inline="always")
def _update4(g, q, gw, v0, v1, v2, v3, count):  # pragma: no cover - compiled
    """The four rows at flat offset q of gw (stride out) += v_r * g, on ``count`` lanes."""
    n = gw.shape[2]
    _st(gw, q, _vfma(v0, g, _ld(gw, q, count)), count)
    _st(gw, q + n, _vfma(v1, g, _ld(gw, q + n, count)), count)
    _st(gw, q + 2 * n, _vfma(v2, g, _ld(gw, q + 2 * n, count)), count)
    _st(gw, q + 3 * n, _vfma(v3, g, _ld(gw, q + 3 * n, count)), count)


@njit(inline="always")
def _updatek(g, vals, s, k, q, gw, count):  # pragma: no cover - compiled
    """The k+1 rows at flat offset q of gw += vals[r, s] * g, on ``count`` lanes."""
    for r in range(k + 1):
        qr = q + r * gw.shape[2]
        _st(gw, qr, _vfma(_vsplat(gw, vals[r, s]), g, _ld(gw, qr, count)), count)


@njit(inline="always")
def _accumulate4(gy, p, go, o, gw, v0, v1, v2, v3, count):  # pragma: no cover - compiled
    _update4(_ld(gy, go + o, count), p + o, gw, v0, v1, v2, v3, count)


@njit(inline="always")
def _accumulatek(gy, vals, s, k, p, go, o, gw, count):  # pragma: no cover - compiled
    _updatek(_ld(gy, go + o, count), vals, s, k, p + o, gw, count)


@njit(**_JIT)
def _accumulate(gy, rows, vals, i, b0, b1, k, gw):  # pragma: no cover - compiled
    """``gw[i, rows[s] + r] += vals[r, s] * gy[b]`` for b = b0..b1-1 (s = b - b0), in vectors."""
    n_basis = gw.shape[1]
    n_out = gw.shape[2]
    lanes = _width(gw)
    full = n_out - n_out % lanes
    rest = n_out - full
    for b in range(b0, b1):
        s = b - b0
        p = (i * n_basis + rows[s]) * n_out
        go = b * n_out
        if k == 3:
            v0 = _vsplat(gw, vals[0, s])
            v1 = _vsplat(gw, vals[1, s])
            v2 = _vsplat(gw, vals[2, s])
            v3 = _vsplat(gw, vals[3, s])
            for o in range(0, full, lanes):
                _accumulate4(gy, p, go, o, gw, v0, v1, v2, v3, lanes)
            if rest:
                _accumulate4(gy, p, go, full, gw, v0, v1, v2, v3, rest)
        else:
            for o in range(0, full, lanes):
                _accumulatek(gy, vals, s, k, p, go, o, gw, lanes)
            if rest:
                _accumulatek(gy, vals, s, k, p, go, full, gw, rest)


@njit(inline="always")
def _bucket_pair(gy, vals, order, m0, m1, b0, q, o, gw):  # pragma: no cover - compiled
    """Lanes o..o+2w-1 of the four rows starting at flat offset q of gw (stride out) += the sum
    over the slots order[m0:m1] (same first row) of ``vals[r, s] * gy[b0 + s]``, in registers."""
    n = gw.shape[2]
    lanes = _width(gw)
    a0 = _vsplat(gw, 0.0)
    a1, a2, a3, c0, c1, c2, c3 = a0, a0, a0, a0, a0, a0, a0
    for m in range(m0, m1):
        s = order[m]
        go = (b0 + s) * n + o
        g = _vload(gy, go)
        e = _vload(gy, go + lanes)
        v = _vsplat(gw, vals[0, s])
        a0 = _vfma(v, g, a0)
        c0 = _vfma(v, e, c0)
        v = _vsplat(gw, vals[1, s])
        a1 = _vfma(v, g, a1)
        c1 = _vfma(v, e, c1)
        v = _vsplat(gw, vals[2, s])
        a2 = _vfma(v, g, a2)
        c2 = _vfma(v, e, c2)
        v = _vsplat(gw, vals[3, s])
        a3 = _vfma(v, g, a3)
        c3 = _vfma(v, e, c3)
    q = q + o
    _vstore(gw, q, _vadd(_vload(gw, q), a0))
    _vstore(gw, q + lanes, _vadd(_vload(gw, q + lanes), c0))
    _vstore(gw, q + n, _vadd(_vload(gw, q + n), a1))
    _vstore(gw, q + n + lanes, _vadd(_vload(gw, q + n + lanes), c1))
    _vstore(gw, q + 2 * n, _vadd(_vload(gw, q + 2 * n), a2))
    _vstore(gw, q + 2 * n + lanes, _vadd(_vload(gw, q + 2 * n + lanes), c2))
    _vstore(gw, q + 3 * n, _vadd(_vload(gw, q + 3 * n), a3))
    _vstore(gw, q + 3 * n + lanes, _vadd(_vload(gw, q + 3 * n + lanes), c3))


@njit(inline="always")
def _bucket_one(gy, vals, order, m0, m1, b0, q, o, gw, count):  # pragma: no cover - compiled
    """As :func:`_bucket_pair` for ``count`` lanes o..o+count-1 (one vector, maybe masked)."""
    n = gw.shape[2]
    a0 = _vsplat(gw, 0.0)
    a1, a2, a3 = a0, a0, a0
    for m in range(m0, m1):
        s = order[m]
        g = _ld(gy, (b0 + s) * n + o, count)
        a0 = _vfma(_vsplat(gw, vals[0, s]), g, a0)
        a1 = _vfma(_vsplat(gw, vals[1, s]), g, a1)
        a2 = _vfma(_vsplat(gw, vals[2, s]), g, a2)
        a3 = _vfma(_vsplat(gw, vals[3, s]), g, a3)
    q = q + o
    _st(gw, q, _vadd(_ld(gw, q, count), a0), count)
    _st(gw, q + n, _vadd(_ld(gw, q + n, count), a1), count)
    _st(gw, q + 2 * n, _vadd(_ld(gw, q + 2 * n, count), a2), count)
    _st(gw, q + 3 * n, _vadd(_ld(gw, q + 3 * n, count), a3), count)


@njit(**_JIT)
def _accumulate_sorted(gy, vals, starts, order, n_rows, i, b0, gw):  # pragma: no cover
    """Cubic case of :func:`_accumulate` with the block's samples sorted by first row: the four
    rows of a bucket are accumulated in registers over all its samples and written once (the
    per-sample form is bound by its four read-modify-write row updates per sample)."""
    n_basis = gw.shape[1]
    n_out = gw.shape[2]
    lanes = _width(gw)
    pairs = n_out - n_out % (2 * lanes)
    for row in range(n_rows):
        m0 = starts[row]
        m1 = starts[row + 1]
        if m0 == m1:
            continue
        q = (i * n_basis + row) * n_out
        for o in range(0, pairs, 2 * lanes):
            _bucket_pair(gy, vals, order, m0, m1, b0, q, o, gw)
        for o in range(pairs, n_out, lanes):
            _bucket_one(gy, vals, order, m0, m1, b0, q, o, gw, min(lanes, n_out - o))


@njit(inline="always")
def _dot4g(weight, scale, g, p, sc, o, acc, d0, d1, d2, d3, count):  # pragma: no cover
    """acc + g * scale[sc + o:] * (sum_r d_r * weight rows at p + o), g: grad_y's lanes."""
    t = _comb4(weight, p + o, weight.shape[2], d0, d1, d2, d3, count)
    return _vfma(_vmul(g, _ld(scale, sc + o, count)), t, acc)


@njit(inline="always")
def _dotkg(weight, scale, g, dvals, s, k, p, sc, o, acc, count):  # pragma: no cover
    t = _combk(weight, p + o, weight.shape[2], dvals, s, k, count)
    return _vfma(_vmul(g, _ld(scale, sc + o, count)), t, acc)


@njit(**_JIT)
def _pair_products(
    gy, weight, scale, basis, ordered, accumulate, i, b0, b1, k, u, gx
):  # pragma: no cover - compiled
    """The backward products of input i over samples b0..b1-1, one pass per (sample, input), from
    the block's ``basis = (rows, vals, dvals, order)`` (first rows, basis values, their
    derivatives, the samples sorted by first row):

    - ``gx[b, i] = sum_o gy[b, o] scale[i, o] sum_r dvals[r, s] weight[i, rows[s] + r, o]`` (one
      vector dot product per sample; the input-gradient kernel's, and the fused pass's, so the two
      give bitwise the same gx);
    - with ``accumulate``, also ``u[0, rows[s] + r] += vals[r, s] * gy[b]`` (as
      :func:`_accumulate` into a one-input table): large grids, when the coefficient gradient is
      wanted too;

    for b = b0 + s, s in the block's ``order`` (sorted by first row) when ``ordered``, else in
    order. Both flags are compile-time constants (``literally``: one compiled loop per value; a
    run-time choice of the order cost 1.03-1.05x at G=100). Without ``accumulate``, ``vals`` and
    ``u`` are not read.

    Fused: the input gradient's coefficient loads and multiply-adds overlap the gradient's row
    updates, and each vector of grad_y is loaded once for both (a second load measured 1.035x the
    time: LLVM cannot merge loads across the updates' stores). Measured 1 thread, 64x64 layer,
    batch 1024, both kernels against this pass (unordered): 0.68x the time at G=40, 0.72x at
    G=100, 0.80x at G=200, 0.93x at G=500.

    Order: sorted by first row, consecutive samples share coefficient rows, so the input
    gradient's loads hit the level-1 cache. Measured against the unordered fused pass (1 thread,
    64x64, batch 1024, warm and flushed caches): 0.78-0.93x at G=500, 0.93-0.99x at G=300,
    0.91-1.01x at G=200, but 1.06-1.09x at G=100 (a 26 KB table, in the level-2 cache anyway); so
    only tables over :data:`_SORTED_FUSED_BYTES` are ordered there. The coefficient gradient alone
    stays unordered: sorted, its row updates wait on each other's stores (1.1-1.27x), also with two
    sorted halves interleaved (1.13-1.19x). Interleaving the halves here, or blocks of two samples
    per row instead of 512 samples, did not help either (1.02-1.03x; 0.89-0.93x at G=500 but 1.08x
    at G=300 and no change in a whole step)."""
    rows, vals, dvals, order = basis
    n_basis = weight.shape[1]
    n_out = weight.shape[2]
    lanes = _width(weight)
    full = n_out - n_out % lanes
    rest = n_out - full
    sc = i * n_out
    zero = _vsplat(weight, 0.0)
    literally(ordered)
    literally(accumulate)
    for m in range(b1 - b0):
        s = order[m] if ordered else m
        b = b0 + s
        pu = rows[s] * n_out
        pw = (i * n_basis + rows[s]) * n_out
        go = b * n_out
        acc = zero
        if k == 3:
            v0 = _vsplat(weight, vals[0, s]) if accumulate else zero
            v1 = _vsplat(weight, vals[1, s]) if accumulate else zero
            v2 = _vsplat(weight, vals[2, s]) if accumulate else zero
            v3 = _vsplat(weight, vals[3, s]) if accumulate else zero
            d0 = _vsplat(weight, dvals[0, s])
            d1 = _vsplat(weight, dvals[1, s])
            d2 = _vsplat(weight, dvals[2, s])
            d3 = _vsplat(weight, dvals[3, s])
            for o in range(0, full, lanes):  # grad_y's lanes loaded once for both products
                g = _ld(gy, go + o, lanes)
                if accumulate:
                    _update4(g, pu + o, u, v0, v1, v2, v3, lanes)
                acc = _dot4g(weight, scale, g, pw, sc, o, acc, d0, d1, d2, d3, lanes)
            if rest:
                g = _ld(gy, go + full, rest)
                if accumulate:
                    _update4(g, pu + full, u, v0, v1, v2, v3, rest)
                acc = _dot4g(weight, scale, g, pw, sc, full, acc, d0, d1, d2, d3, rest)
        else:
            for o in range(0, full, lanes):
                g = _ld(gy, go + o, lanes)
                if accumulate:
                    _updatek(g, vals, s, k, pu + o, u, lanes)
                acc = _dotkg(weight, scale, g, dvals, s, k, pw, sc, o, acc, lanes)
            if rest:
                g = _ld(gy, go + full, rest)
                if accumulate:
                    _updatek(g, vals, s, k, pu + full, u, rest)
                acc = _dotkg(weight, scale, g, dvals, s, k, pw, sc, full, acc, rest)
        gx[b, i] = _vsum(acc)


@njit(inline="always")
def _scale_pass(u_table, uo, weight, scale, i, o, gs, gw, count):  # pragma: no cover - compiled
    """Columns o..o+count-1 of input i, from the unscaled gradient U (G+k, out) at flat offset uo
    of u_table (gw itself when uo = i * (G+k) * out: each U entry is read before it is written):
    ``gs = sum_g U * weight`` and ``gw = U * scale`` (gw written once, never read)."""
    n_basis = gw.shape[1]
    n_out = gw.shape[2]
    sc = i * n_out
    f = _ld(scale, sc + o, count)
    acc = _vsplat(gw, 0.0)
    for g in range(n_basis):
        q = (i * n_basis + g) * n_out + o
        u = _ld(u_table, uo + g * n_out + o, count)
        acc = _vfma(u, _ld(weight, q, count), acc)
        _st(gw, q, _vmul(u, f), count)
    _st(gs, sc + o, acc, count)


@njit(**_JIT)
def _scale_pass_rows(u_table, weight, scale, i, gsum, gs, gw):  # pragma: no cover - compiled
    """Input i, from the unscaled gradient U (G+k, out): ``gs[i] = sum_g U[g] * weight[i, g]`` and
    ``gw[i] = U * scale[i]``, row after row (gw written once, in memory order, never read); U is
    left zeroed for the next input (on the streamed path each vector is cleared right after it is
    read, while its line is in the level-1 cache: measured 0.96x the kernel's time of a separate
    clearing pass at G=500, 64x64, 1 thread).

    When gw's rows are whole aligned vectors, it is written with streaming stores: a plain store
    first reads the line from memory (gw is too large to stay in cache between steps), so the
    8 MB gradient of a 64x64 layer at G=500 cost 16 MB of memory traffic instead of 8."""
    n_basis = gw.shape[1]
    n_out = gw.shape[2]
    lanes = _width(gw)
    sc = i * n_out
    zero = _vsplat(gw, 0.0)
    for o in range(0, n_out, lanes):
        _st(gsum, o, zero, min(lanes, n_out - o))
    # Two copies of the row loop: one loop choosing the store per vector (stream or masked) ran
    # the streamed pass ~10x slower (4.6 against 0.41 ms per 64x64 layer at G=500, 1 thread).
    if n_out % lanes == 0 and _aligned(gw):  # every row's vectors 32-byte aligned: streamed
        for g in range(n_basis):
            q = (i * n_basis + g) * n_out
            for o in range(0, n_out, lanes):
                u = _vload(u_table, g * n_out + o)
                _vstore(u_table, g * n_out + o, zero)
                _vstore(gsum, o, _vfma(u, _vload(weight, q + o), _vload(gsum, o)))
                _vstore_stream(gw, q + o, _vmul(u, _vload(scale, sc + o)))
        _store_fence()
    else:
        for g in range(n_basis):
            q = (i * n_basis + g) * n_out
            for o in range(0, n_out, lanes):
                count = min(lanes, n_out - o)
                u = _ld(u_table, g * n_out + o, count)
                _st(gsum, o, _vfma(u, _ld(weight, q + o, count), _ld(gsum, o, count)), count)
                _st(gw, q + o, _vmul(u, _ld(scale, sc + o, count)), count)
        slab = n_basis * n_out  # cleared in whole vectors (masked stores are slow on AMD cores)
        for q in range(0, slab, lanes):
            _st(u_table, q, zero, min(lanes, slab - q))
    for o in range(0, n_out, lanes):
        count = min(lanes, n_out - o)
        _st(gs, sc + o, _ld(gsum, o, count), count)


@njit(**_JIT)
def _grad_weight(
    x, t0, h, knots, gy, weight, scale, gs, gx, k, uniform, i_lo, i_hi, gw
):  # pragma: no cover
    """Inputs i_lo..i_hi-1 of the coefficient gradient gw (in, G+k, out) and of the scale gradient
    gs (in, out); neither needs to be zeroed.

    Accumulate the unscaled gradient ``U[i, g, o] = sum_b B_g(x[b, i]) gy[b, o]``, then one pass
    per input gives ``gs[i, o] = sum_g U[i, g, o] weight[i, g, o]`` and
    ``gw[i, g, o] = U[i, g, o] scale[i, o]``.

    - Small grids: U is accumulated in gw itself, for a group of ``_GROUP`` inputs at a time,
      block of samples by block, every input of the group per block: the block's rows of grad_y
      (128 KiB at out=64) stay in cache for the whole group, and so do the group's U tables (streaming the
      whole of grad_y once per input, 256 KiB for case A, ran ~2x slower per (sample, input)
      than for case B's 128 KiB). The scale pass then works in place.
    - Large grids: input by input, U in a scratch table reused for every input (it stays in
      cache), and the pass writes the parameter-sized gw once, row by row, in memory order: that
      pass is the part of the cost that grows with G. When gx has the batch's rows (the input
      gradient is wanted too), columns i_lo..i_hi-1 of gx are computed in the same pass over the
      samples (:func:`_pair_products`); otherwise gx is not touched.
    """
    batch = x.shape[0]
    n_basis = gw.shape[1]
    n_out = gw.shape[2]
    lanes = _width(gw)
    slab = n_basis * n_out
    big = _large_grid(gw)
    block = _block_size(n_out, gw.itemsize, batch, _GW_BYTES if big else _GW_BYTES_SMALL_GRID)
    rows = np.empty(block, dtype=np.int32)
    uu = np.empty(block, dtype=gw.dtype)
    vals = np.empty((k + 1, block), dtype=gw.dtype)
    fused = big and gx.shape[0] == batch  # the input gradient in the same pass (large grids)
    ordered = fused and slab * gw.itemsize > _SORTED_FUSED_BYTES  # samples by first row
    dvals = np.empty((k + 1, block if fused else 0), dtype=gw.dtype)
    xb = np.empty((_GROUP, block), dtype=gw.dtype)  # a group of inputs over the block, transposed
    n_rows = n_basis - k  # possible first rows of a sample's k+1 coefficient rows
    starts = np.empty(n_rows + 1, dtype=np.int64)
    counts = np.empty((4, n_rows), dtype=np.int64)
    order = np.empty(block, dtype=np.int32)
    u_table = np.empty((1, n_basis, n_out) if big else (1, 1, 1), dtype=gw.dtype)
    gsum = np.empty(n_out, dtype=gw.dtype)
    basis = (rows, vals, dvals, order)  # a block's basis, as _pair_products takes it
    zero = _vsplat(gw, 0.0)
    full = n_out - n_out % lanes
    if not big:
        for q in range(i_lo * slab, i_hi * slab, lanes):
            _st(gw, q, zero, min(lanes, i_hi * slab - q))
        for g0 in range(i_lo, i_hi, _GROUP):  # groups of inputs: their U tables stay in cache
            for b0 in range(0, batch, block):
                b1 = min(batch, b0 + block)
                for i in range(g0, min(i_hi, g0 + _GROUP)):
                    _accumulate_block(
                        x,
                        t0,
                        h,
                        knots,
                        gy,
                        k,
                        uniform,
                        i,
                        b0,
                        b1,
                        i - g0,
                        _GROUP,
                        xb,
                        rows,
                        uu,
                        vals,
                        starts,
                        counts,
                        order,
                        i,
                        gw,
                    )
        for i in range(i_lo, i_hi):
            for o in range(0, full, lanes):
                _scale_pass(gw, i * slab, weight, scale, i, o, gs, gw, lanes)
            if full < n_out:
                _scale_pass(gw, i * slab, weight, scale, i, full, gs, gw, n_out - full)
        return
    for q in range(0, slab, lanes):  # cleared once: each input's pass leaves it zeroed
        _st(u_table, q, zero, min(lanes, slab - q))
    # The scratch table's one input, as a variable: a literal 0 typed the callees' argument as
    # Literal[int](0), a second compiled copy of _accumulate and _accumulate_sorted next to the
    # small grids' (int64) one (~2 s more of each cold compile).
    table_row = np.int64(0)
    for i in range(i_lo, i_hi):
        for b0 in range(0, batch, block):
            b1 = min(batch, b0 + block)
            if fused:
                m = b1 - b0
                _transpose(x, b0, b1, i, i + 1, xb)
                _block_basis(
                    xb[0], t0, h, knots, i, m, k, uniform, True, n_basis, rows, uu, vals, dvals
                )
                if ordered:  # constant flags: _pair_products is compiled for each value
                    _large_grid_order(rows, m, starts, order)
                    _pair_products(gy, weight, scale, basis, True, True, i, b0, b1, k, u_table, gx)
                else:
                    _pair_products(gy, weight, scale, basis, False, True, i, b0, b1, k, u_table, gx)
                continue
            _accumulate_block(
                x,
                t0,
                h,
                knots,
                gy,
                k,
                uniform,
                i,
                b0,
                b1,
                0,
                1,
                xb,
                rows,
                uu,
                vals,
                starts,
                counts,
                order,
                table_row,
                u_table,
            )
        _scale_pass_rows(u_table, weight, scale, i, gsum, gs, gw)


@njit(inline="always")
def _accumulate_block(
    x,
    t0,
    h,
    knots,
    gy,
    k,
    uniform,
    i,
    b0,
    b1,
    slot,
    group,
    xb,
    rows,
    uu,
    vals,
    starts,
    counts,
    order,
    target,
    u,
):  # pragma: no cover - compiled
    """``u[target] += sum_b B(x[b, i]) gy[b]`` over the block b0..b1-1 (u: (n, G+k, out)); inputs
    are transposed into xb in groups of ``group``, when ``slot`` (the input's place in its run of
    inputs) starts a group."""
    m = b1 - b0
    n_basis = u.shape[1]
    n_rows = n_basis - k
    if slot % group == 0:
        _transpose(x, b0, b1, i, min(x.shape[1], i + group), xb)
    _block_basis(
        xb[slot % group], t0, h, knots, i, m, k, uniform, False, n_basis, rows, uu, vals, vals
    )
    if k == 3 and m >= _SORT_MIN * n_rows:
        _sort_rows(rows, m, n_rows, starts, counts, order)
        _accumulate_sorted(gy, vals, starts, order, n_rows, target, b0, u)
    else:
        _accumulate(gy, rows, vals, target, b0, b1, k, u)


@njit(**_JIT)
def _grad_x(x, t0, h, knots, weight, scale, gy, k, uniform, b_lo, b_hi, gx):  # pragma: no cover
    """Rows b_lo..b_hi-1 of gx (batch, in) = input gradient (every entry written: no zeroing).

    ``gx[b, i] = sum_o gy[b, o] scale[i, o] sum_r dvals[r] weight[i, rows + r, o]``: blocks of
    samples (their rows of gy stay in cache), input by input, one vector dot product per pair.
    """
    n_in = x.shape[1]
    n_basis = weight.shape[1]
    n_out = weight.shape[2]
    budget = _rows_budget(weight)
    block = _block_size(n_out, weight.itemsize, b_hi - b_lo, budget)
    rows = np.empty(block, dtype=np.int32)
    uu = np.empty(block, dtype=weight.dtype)
    vals = np.empty((k + 1, block), dtype=weight.dtype)
    dvals = np.empty((k + 1, block), dtype=weight.dtype)
    xb = np.empty((n_in, block), dtype=weight.dtype)
    big = _large_grid(weight)
    starts = np.empty(n_basis - k + 1, dtype=np.int64)
    order = np.empty(block, dtype=np.int32)  # the block's samples sorted by first row, when big
    no_table = np.empty((1, 1, 1), dtype=weight.dtype)  # _pair_products accumulates nothing here
    basis = (rows, vals, dvals, order)
    first_input = np.int64(0)  # a variable: a literal 0 compiled another copy of _transpose
    for b0 in range(b_lo, b_hi, block):
        b1 = min(b_hi, b0 + block)
        _transpose(x, b0, b1, first_input, n_in, xb)
        for i in range(n_in):
            _block_basis(
                xb[i], t0, h, knots, i, b1 - b0, k, uniform, True, n_basis, rows, uu, vals, dvals
            )
            if big:  # constant flags: _pair_products is compiled for each value
                _large_grid_order(rows, b1 - b0, starts, order)
                _pair_products(gy, weight, scale, basis, True, False, i, b0, b1, k, no_table, gx)
            else:
                _pair_products(gy, weight, scale, basis, False, False, i, b0, b1, k, no_table, gx)
