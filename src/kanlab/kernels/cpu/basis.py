"""The sparse B-spline basis of a block of samples, as the CPU kernels use it.

:func:`_block_basis` computes, for one input and a block of samples, the first coefficient row of
each sample and its k+1 basis values (and derivatives) in a normalised form that needs no branch
in the products; :func:`_transpose` stages a block's inputs contiguously; :func:`_sort_rows` and
:func:`_large_grid_order` order a block's samples by first row (the bucketed and the large-grid
paths of the products).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from kanlab.kernels.cpu.tuning import _CACHE, _FASTMATH, _JIT


@njit(inline="always")
def _shift(s, r0, k, top_row, vals, dvals, deriv):  # pragma: no cover - compiled
    """Move the values of sample s (first row r0 outside [0, top_row]) to the clamped first row:
    slots whose basis function does not exist become 0."""
    c = min(max(r0, 0), top_row)
    d = r0 - c
    if d > 0:  # past the top: new[r] = old[r - d], descending so reads precede writes
        for r in range(k, -1, -1):
            vals[r, s] = vals[r - d, s] if r - d >= 0 else 0.0
            if deriv:
                dvals[r, s] = dvals[r - d, s] if r - d >= 0 else 0.0
    elif d < 0:  # below the bottom: new[r] = old[r - d], ascending
        for r in range(k + 1):
            vals[r, s] = vals[r - d, s] if r - d <= k else 0.0
            if deriv:
                dvals[r, s] = dvals[r - d, s] if r - d <= k else 0.0
    return c


@njit(inline="always")
def _fill(s, k, value, vals, dvals, deriv):  # pragma: no cover - compiled
    for r in range(k + 1):
        vals[r, s] = value
        if deriv:
            dvals[r, s] = value


@njit(inline="always")
def _piece(e, p0, p1, p2, p3, zero):  # pragma: no cover - compiled
    """The cubic piece at distance e (0..3) from a sample's interval, 0 past the support."""
    return p0 if e == 0 else (p1 if e == 1 else (p2 if e == 2 else (p3 if e == 3 else zero)))


@njit(inline="always")
def _normalise4(rows, vals, xs, m, top_row, nan, zero):  # pragma: no cover - compiled
    """Cubic values of the block's m slots (vals[r, s]: the piece at distance 3 - r from interval
    rows[s], unclamped) moved to the clamped first row, by selects; NaN samples get NaN. rows is
    read, not changed."""
    v0, v1, v2, v3 = vals[0], vals[1], vals[2], vals[3]
    for s in range(m):
        j = rows[s]
        d = j - min(max(j - 3, 0), top_row)  # the distance of slot 0
        p3, p2, p1, p0 = v0[s], v1[s], v2[s], v3[s]
        bad = xs[s] != xs[s]
        a0 = _piece(d, p0, p1, p2, p3, zero)
        a1 = _piece(d - 1, p0, p1, p2, p3, zero)
        a2 = _piece(d - 2, p0, p1, p2, p3, zero)
        a3 = _piece(d - 3, p0, p1, p2, p3, zero)
        v0[s] = nan if bad else a0
        v1[s] = nan if bad else a1
        v2[s] = nan if bad else a2
        v3[s] = nan if bad else a3


@njit(cache=_CACHE, fastmath=_FASTMATH)
def _block_basis(
    xs, t0, h, knots, i, m, k, uniform, deriv, n_basis, rows, uu, vals, dvals
):  # pragma: no cover - compiled
    """Sparse basis of input i at the m values ``xs[:m]`` (a block of samples, slot s) into scratch
    arrays, in a
    normalised form that needs no branch in the products: for *every* sample,
    ``spline = sum_r vals[r, s] * coef[rows[s] + r]`` with ``0 <= rows[s] <= n_basis - k - 1``;
    slots of basis functions that do not exist hold 0, samples outside the knot span hold zeros,
    NaN samples hold NaN (in rows 0..k). With ``deriv``, ``dvals`` holds the derivatives w.r.t. x.

    One call per (input, block of samples): helper calls per sample would cost reference-count
    updates on every array argument, which dominate at these sizes. The interval follows
    :func:`kanlab.splines.sparse_basis` exactly (same uniform position formula, same half-open
    search); the values come from the in-place triangular recursion, level by level with r
    descending so each level reads the previous one before overwriting it, and from a closed form
    for the uniform cubic case (the default layer).
    """
    n = knots.shape[1]
    top = n - 2  # last interval
    top_row = n_basis - k - 1
    inv_h = 1.0 / h[i]
    if uniform and k == 3:
        # The default layer, in simple loops over the block that LLVM vectorises; the rare samples
        # near or outside the ends of the grid are fixed up afterwards. uu: local coordinates.
        t0i = t0[i]
        hh = h[i]
        # Constants in the array dtype: Numba types int and float literals as 64-bit, and
        # float32 <op> int64 is float64, which had the float32 basis computed in float64 (half
        # the vector width, plus conversions). Values read back from a float array keep its dtype.
        uu[0] = 1
        one = uu[0]
        uu[0] = -1
        low = uu[0]
        uu[0] = top + 1
        high = uu[0]
        two = one + one
        three = two + one
        four = two + two
        six = three + three
        sixth = one / six
        half = one / two
        for s in range(m):
            pos = (xs[s] - t0i) / hh  # same formula as splines.sparse_basis
            fl = np.floor(pos)
            uu[s] = pos - fl
            rows[s] = np.int32(min(max(fl, low), high))  # interval, clamped to [-1, n - 1]
        for s in range(m):
            u = uu[s]
            w = one - u
            u2 = u * u
            vals[0, s] = w * w * w * sixth
            vals[1, s] = (three * u2 * u - six * u2 + four) * sixth
            vals[2, s] = (-three * u2 * u + three * u2 + three * u + one) * sixth
            vals[3, s] = u2 * u * sixth
        if deriv:
            inv_hh = one / hh
            for s in range(m):
                u = uu[s]
                w = one - u
                u2 = u * u
                dvals[0, s] = -half * w * w * inv_hh
                dvals[1, s] = (three * half * u2 - two * u) * inv_hh
                dvals[2, s] = (-three * half * u2 + u + half) * inv_hh
                dvals[3, s] = half * u2 * inv_hh
        edge = 0  # samples outside the core intervals (or NaN): none for most trained layers
        for s in range(m):  # (a reduction without branches, vectorised)
            r0 = rows[s] - 3
            edge += (r0 < 0) | (r0 > top_row) | (xs[s] != xs[s])
        if edge == 0:
            for s in range(m):
                rows[s] -= 3
            return
        if 4 * edge < m:  # a few: per-sample branches, mostly predictable, cost less than selects
            for s in range(m):
                j = rows[s]
                r0 = j - 3
                if r0 >= 0 and r0 <= top_row and xs[s] == xs[s]:
                    rows[s] = r0
                elif xs[s] != xs[s]:
                    rows[s] = 0
                    _fill(s, 3, np.nan, vals, dvals, deriv)
                elif j < 0 or j > top:
                    rows[s] = 0
                    _fill(s, 3, 0.0, vals, dvals, deriv)
                else:
                    rows[s] = _shift(s, r0, 3, top_row, vals, dvals, deriv)
            return
        # Many samples lie in the first or last k intervals (part of their basis functions do
        # not exist), outside the knots, or are NaN: normalise every sample with selects, no
        # branches. Slot r of the clamped first row c holds the piece at distance j - c - r
        # (vals[3 - e] holds the piece at distance e), 0 past the support. Measured on case B's
        # hidden layer at initialisation (60% of the inputs outside [-1, 1]): per-sample
        # branches (mispredicted) made each kernel ~3x slower per (sample, input) than in-grid
        # data.
        uu[0] = np.nan  # NaN and 0 in the array dtype (uu is no longer needed)
        nan = uu[0]
        zero = one - one
        _normalise4(rows, vals, xs, m, top_row, nan, zero)
        if deriv:
            _normalise4(rows, dvals, xs, m, top_row, nan, zero)
        for s in range(m):
            rows[s] = 0 if xs[s] != xs[s] else min(max(rows[s] - 3, 0), top_row)
        return
    for s in range(m):
        xv = xs[s]
        rows[s] = 0
        if np.isnan(xv):
            _fill(s, k, np.nan, vals, dvals, deriv)
            continue
        # ---- interval j with t_j <= x < t_{j+1}; u is the local coordinate on uniform grids
        u = xv - xv
        j = 0
        if uniform:
            pos = (xv - t0[i]) / h[i]
            fl = np.floor(pos)
            if not (fl >= 0 and fl <= top):
                _fill(s, k, 0.0, vals, dvals, deriv)
                continue
            j = int(fl)
            u = pos - fl
        else:
            if xv < knots[i, 0] or not xv < knots[i, n - 1]:
                _fill(s, k, 0.0, vals, dvals, deriv)
                continue
            top_knot = n - 1  # invariant: knots[j] <= x < knots[top_knot]
            while top_knot - j > 1:
                mid = (j + top_knot) // 2
                if knots[i, mid] <= xv:
                    j = mid
                else:
                    top_knot = mid
        # ---- the k+1 values (and derivatives); vals[r, s] belongs to B_{j-k+r}
        vals[0, s] = 1.0
        if deriv:
            dvals[0, s] = 0.0
        for p in range(1, k + 1):
            last = deriv and p == k
            for r in range(p, -1, -1):
                lower = vals[r - 1, s] if r >= 1 else 0.0  # B_{a, p-1}
                upper = vals[r, s] if r <= p - 1 else 0.0  # B_{a+1, p-1}
                if uniform:  # cardinal recursion in u
                    vals[r, s] = ((u + (p - r)) * lower + ((r + 1) - u) * upper) / p
                    if last:
                        dvals[r, s] = (lower - upper) * inv_h
                    continue
                # B_{a,p} = (x - t_a)/(t_{a+p} - t_a) B_{a,p-1} + (t_{a+p+1} - x)/(...) B_{a+1,p-1};
                # 0/0 := 0 (repeated knots). Knot indices are clamped: out-of-range knots only
                # enter basis functions that do not exist.
                a = j - p + r
                ta = knots[i, min(max(a, 0), n - 1)]
                tap = knots[i, min(max(a + p, 0), n - 1)]
                ta1 = knots[i, min(max(a + 1, 0), n - 1)]
                tap1 = knots[i, min(max(a + p + 1, 0), n - 1)]
                new = 0.0
                dl = 0.0
                du = 0.0
                if r >= 1 and tap - ta > 0:
                    new += (xv - ta) / (tap - ta) * lower
                    dl = lower / (tap - ta)
                if r <= p - 1 and tap1 - ta1 > 0:
                    new += (tap1 - xv) / (tap1 - ta1) * upper
                    du = upper / (tap1 - ta1)
                vals[r, s] = new
                if last:
                    dvals[r, s] = p * (dl - du)
        r0 = j - k
        rows[s] = r0 if 0 <= r0 <= top_row else _shift(s, r0, k, top_row, vals, dvals, deriv)


@njit(**_JIT)
def _large_grid_order(rows, m, counts, order):  # pragma: no cover - compiled
    """For a table too large for the level-1 cache: the block's m samples sorted by first row
    (``order``), so that consecutive samples reuse the same coefficient rows from the level-1
    cache (measured 1.5-1.9x faster at G=500); ``counts`` (n_rows + 1,) is scratch.

    A plain counting sort: with about one sample per row, the four interleaved counter sets of
    :func:`_sort_rows` (there against store-to-load stalls between samples of one row) only add
    work per row. This sort, without the prefetch of the next input's table that preceded it,
    measured 10-15% faster for the whole forward at G=300 to 500 (1 thread)."""
    n_rows = counts.shape[0] - 1
    for q in range(n_rows + 1):
        counts[q] = 0
    for s in range(m):
        counts[rows[s] + 1] += 1
    for q in range(n_rows):
        counts[q + 1] += counts[q]  # counts[q]: the first slot of row q
    for s in range(m):
        q = rows[s]
        order[counts[q]] = s
        counts[q] += 1


@njit(**_JIT)
def _transpose(x, b0, b1, i0, i1, xb):  # pragma: no cover - compiled
    """``xb[j, s] = x[b0 + s, i0 + j]``: inputs i0..i1-1 over a block of samples, each input
    contiguous. The forward and the coefficient gradient transpose groups of ``_GROUP`` inputs:
    a whole block's inputs at once (784 x 128 float32, 400 KB for case B) overflowed the level-2
    cache. The input gradient's blocks are small (64 samples): it transposes them whole, which
    measured 4-11% faster there than groups."""
    for b in range(b0, b1):
        for i in range(i0, i1):
            xb[i - i0, b - b0] = x[b, i]


@njit(**_JIT)
def _sort_rows(rows, m, n_rows, starts, counts, order):  # pragma: no cover - compiled
    """Counting sort of the slots 0..m-1 by ``rows[s]`` (0 <= rows < n_rows): the slots whose
    first coefficient row is q are ``order[starts[q] : starts[q + 1]]``; ``counts`` (4, n_rows)
    is scratch.

    Four interleaved sets of counters (slot s uses set s % 4): with one set, consecutive slots of
    the same row wait on each other's counter update (a store-to-load round trip per slot; measured
    3.4 against 1.9 ns per slot at G=5). Inside a bucket the slots come set by set."""
    for j in range(4):
        for q in range(n_rows):
            counts[j, q] = 0
    m4 = m - m % 4
    for s in range(0, m4, 4):
        counts[0, rows[s]] += 1
        counts[1, rows[s + 1]] += 1
        counts[2, rows[s + 2]] += 1
        counts[3, rows[s + 3]] += 1
    for s in range(m4, m):
        counts[s - m4, rows[s]] += 1
    total = 0
    starts[0] = 0
    for q in range(n_rows):
        for j in range(4):
            c = counts[j, q]
            counts[j, q] = total
            total += c
        starts[q + 1] = total
    for s in range(0, m4, 4):
        q = rows[s]
        order[counts[0, q]] = s
        counts[0, q] += 1
        q = rows[s + 1]
        order[counts[1, q]] = s + 1
        counts[1, q] += 1
        q = rows[s + 2]
        order[counts[2, q]] = s + 2
        counts[2, q] += 1
        q = rows[s + 3]
        order[counts[3, q]] = s + 3
        counts[3, q] += 1
    for s in range(m4, m):
        q = rows[s]
        order[counts[s - m4, q]] = s
        counts[s - m4, q] += 1
