"""Higher derivatives of the spline product on CPU: three plain Numba kernels with the m-th
derivative of the basis (m = 0, 1, 2, ...), for the autograd formulas of second and higher
order in :mod:`kanlab.kernels.sparse`.

With ``a`` (batch, in) a per-(sample, input) factor (ones when it has no rows), ``s`` the
per-edge scale (in, out) and ``B^(m)_g`` the m-th derivative of basis function g:

- :func:`_product`: ``y[b, o] = sum_i a[b, i] s[i, o] sum_g B^(m)_g(x[b, i]) W[i, g, o]``;
- :func:`_contract`: ``d[b, i] = sum_o gy[b, o] s[i, o] sum_g B^(m)_g(x[b, i]) W[i, g, o]``;
- :func:`_table`: ``U[i, g, o] = sum_b a[b, i] B^(m)_g(x[b, i]) gy[b, o]``, written as
  ``gw = U * s`` and ``gs[i, o] = sum_g U[i, g, o] W[i, g, o]``.

Each (sample, input) touches only its k+1 non-zero basis functions (:func:`_basis`: the interval
exactly as :func:`kanlab.splines.sparse_basis` chooses it, then the Cox-de Boor recursion up to
degree k - m and m steps of the derivative recursion
``D B_{a,p} = p B_{a,p-1} / (t_{a+p} - t_a) - p B_{a+1,p-1} / (t_{a+p+1} - t_{a+1})``, which on a
uniform grid is ``(B_{a,p-1} - B_{a+1,p-1}) / h``). They are the straightforward loops, not the
vectorised first-order kernels: second derivatives (a PINN's Laplacian) call them, first-order
training never does. Serial ``nogil`` loops: they run on the calling thread.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from kanlab.kernels.cpu.tuning import _CACHE

_OPTS = {"cache": _CACHE, "nogil": True, "error_model": "numpy"}


@njit(**_OPTS)
def _basis(xv, t0i, hi, knots, i, k, uniform, m, n_basis, vals):  # pragma: no cover - compiled
    """The k+1 m-th derivatives of the basis at x = xv for input i into ``vals``; returns the first
    row c (0 <= c <= n_basis - k - 1): ``vals[r]`` belongs to basis function c + r (0 where that
    function does not exist). Outside the knot span: zeros; NaN: NaN."""
    n = knots.shape[1]
    top = n - 2
    top_row = n_basis - k - 1
    if np.isnan(xv):
        for r in range(k + 1):
            vals[r] = np.nan
        return 0
    u = 0.0
    j = 0
    if uniform:
        pos = (xv - t0i) / hi  # same formula as splines.sparse_basis
        fl = np.floor(pos)
        if not (fl >= 0 and fl <= top):
            for r in range(k + 1):
                vals[r] = 0.0
            return 0
        j = int(fl)
        u = pos - fl
    else:
        if xv < knots[i, 0] or not xv < knots[i, n - 1]:
            for r in range(k + 1):
                vals[r] = 0.0
            return 0
        top_knot = n - 1  # invariant: knots[j] <= x < knots[top_knot]
        while top_knot - j > 1:
            mid = (j + top_knot) // 2
            if knots[i, mid] <= xv:
                j = mid
            else:
                top_knot = mid
    if m > k:  # a polynomial of degree k differentiated more than k times
        for r in range(k + 1):
            vals[r] = 0.0
        return min(max(j - k, 0), top_row)
    inv_h = 1.0 / hi
    vals[0] = 1.0
    for p in range(1, k + 1):
        derive = p > k - m  # the last m levels: derivative recursion
        for r in range(p, -1, -1):  # descending: level p - 1 is read before it is overwritten
            lower = vals[r - 1] if r >= 1 else 0.0  # B_{a, p-1}
            upper = vals[r] if r <= p - 1 else 0.0  # B_{a+1, p-1}
            if uniform:
                if derive:
                    vals[r] = (lower - upper) * inv_h
                else:
                    vals[r] = ((u + (p - r)) * lower + ((r + 1) - u) * upper) / p
                continue
            # Knot indices clamped: out-of-range knots only enter basis functions that do not exist.
            a = j - p + r
            ta = knots[i, min(max(a, 0), n - 1)]
            tap = knots[i, min(max(a + p, 0), n - 1)]
            ta1 = knots[i, min(max(a + 1, 0), n - 1)]
            tap1 = knots[i, min(max(a + p + 1, 0), n - 1)]
            new = 0.0
            if r >= 1 and tap - ta > 0:  # 0/0 := 0 (repeated knots)
                new += (p if derive else xv - ta) / (tap - ta) * lower
            if r <= p - 1 and tap1 - ta1 > 0:
                new += (-p if derive else tap1 - xv) / (tap1 - ta1) * upper
            vals[r] = new
    # vals[r] belongs to B_{j-k+r}: move to the clamped first row, zeros for missing functions.
    r0 = j - k
    c = min(max(r0, 0), top_row)
    d = r0 - c
    if d > 0:
        for r in range(k, -1, -1):
            vals[r] = vals[r - d] if r - d >= 0 else 0.0
    elif d < 0:
        for r in range(k + 1):
            vals[r] = vals[r - d] if r - d <= k else 0.0
    return c


@njit(**_OPTS)
def _product(x, t0, h, knots, a, weight, scale, k, uniform, m, y):  # pragma: no cover - compiled
    """``y[b, o] = sum_i a[b, i] s[i, o] sum_g B^(m)_g(x[b, i]) W[i, g, o]`` (a without rows:
    ones); y (batch, out) is overwritten."""
    batch, n_in = x.shape
    n_basis = weight.shape[1]
    n_out = weight.shape[2]
    vals = np.empty(k + 1, dtype=weight.dtype)
    with_a = a.shape[0] > 0
    for b in range(batch):
        for o in range(n_out):
            y[b, o] = 0.0
        for i in range(n_in):
            c = _basis(x[b, i], t0[i], h[i], knots, i, k, uniform, m, n_basis, vals)
            f = a[b, i] if with_a else 1.0
            for r in range(k + 1):
                v = vals[r] * f
                for o in range(n_out):
                    y[b, o] += v * scale[i, o] * weight[i, c + r, o]


@njit(**_OPTS)
def _contract(x, t0, h, knots, gy, weight, scale, k, uniform, m, d):  # pragma: no cover - compiled
    """``d[b, i] = sum_o gy[b, o] s[i, o] sum_g B^(m)_g(x[b, i]) W[i, g, o]``; d (batch, in) is
    overwritten."""
    batch, n_in = x.shape
    n_basis = weight.shape[1]
    n_out = weight.shape[2]
    vals = np.empty(k + 1, dtype=weight.dtype)
    for b in range(batch):
        for i in range(n_in):
            c = _basis(x[b, i], t0[i], h[i], knots, i, k, uniform, m, n_basis, vals)
            acc = 0.0
            for r in range(k + 1):
                part = 0.0
                for o in range(n_out):
                    part += gy[b, o] * scale[i, o] * weight[i, c + r, o]
                acc += vals[r] * part
            d[b, i] = acc


@njit(**_OPTS)
def _table(x, t0, h, knots, a, gy, weight, scale, k, uniform, m, gs, gw):  # pragma: no cover
    """``U[i, g, o] = sum_b a[b, i] B^(m)_g(x[b, i]) gy[b, o]`` (a without rows: ones) written as
    ``gw = U * s`` (in, G+k, out) and ``gs[i, o] = sum_g U[i, g, o] W[i, g, o]`` (in, out); both
    are overwritten."""
    batch, n_in = x.shape
    n_basis = weight.shape[1]
    n_out = weight.shape[2]
    vals = np.empty(k + 1, dtype=weight.dtype)
    u = np.empty((n_basis, n_out), dtype=weight.dtype)
    with_a = a.shape[0] > 0
    for i in range(n_in):
        u[:, :] = 0.0
        for b in range(batch):
            c = _basis(x[b, i], t0[i], h[i], knots, i, k, uniform, m, n_basis, vals)
            f = a[b, i] if with_a else 1.0
            for r in range(k + 1):
                v = vals[r] * f
                for o in range(n_out):
                    u[c + r, o] += v * gy[b, o]
        for o in range(n_out):
            gs[i, o] = 0.0
        for g in range(n_basis):
            for o in range(n_out):
                gw[i, g, o] = u[g, o] * scale[i, o]
                gs[i, o] += u[g, o] * weight[i, g, o]
