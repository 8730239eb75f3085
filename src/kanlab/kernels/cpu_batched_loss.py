"""The MSE of M KANs and the gradient of every parameter of every layer in one Numba call: the
model batch's training step for small grids on one thread (issue 19's per-evaluation target).

``loss[m] = sum((kan_m(x_m) - y_m)^2) / (rows * out)`` for each model m of a stack of KAN layers
(the layers of :mod:`kanlab.kernels.cpu_batched_layer`: spline + base branch, scales, mask), and
the gradients of ``sum_m weight[m] * loss[m]`` w.r.t. each layer's ``coef``, ``scale_spline`` and
``scale_base``. x ``(batch, in)`` shared by the models or ``(M, batch, in)``; y likewise.

Why one kernel for the whole step instead of a fused kernel per layer under autograd: at the
paper's sizes ([2,5,1], 1000 points) a layer's arithmetic is microseconds, and the per-layer
calls paid for it again in the hidden activations written to memory and read back, an autograd
node per layer, the MSE's torch ops, and a backward that recomputed every basis (saving them
cost more: 13-20 MB at M = 64). Here, per block of samples and model, the forward runs through
the layers keeping each layer's inputs, base activations and dense bases (with their derivatives
for the hidden layers) for that block only (a few hundred KB at most, in the level-2 cache), the
residual gives the output gradient, and the backward walks the layers back on what the forward
just computed. Nothing of size batch x anything leaves the kernel. The block computations are
the fused layer's own (its basis, activation, multiply-add and dot helpers, inlined here), except
for the hidden inputs of a layer with one output (the last of [2,5,1]): there the basis, the
edge's output and its slope in x are one pass (a closed form on uniform cubic grids,
:func:`_cubic_hidden`; the slope from the degree k-1 rows on others, :func:`_slope_from_lower`)
and no derivative rows are stored. The results equal the per-layer path to rounding (float64:
~1e-15 relative), not bit for bit.

Parameters are passed flat: each kind (coef; scale_spline, scale_base, mask) is one 1-D array
holding every layer's ``(M, ...)`` tensor in turn, so one compiled kernel serves any depth (a
tuple of per-layer arrays would compile once per number of layers); the gradients come back in
the same layout and the driver hands out views of them. A single model is M = 1.

Compilation: this module's cached code embeds :mod:`kanlab.kernels.cpu_batched_layer`'s
helpers, so it is stamped with that file too (an edit of either recompiles it).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence

import numpy as np
import torch
from numba import njit
from torch import Tensor

from kanlab.kernels import cpu_batched_layer as _layer
from kanlab.kernels.cpu.tuning import _CACHE as _CPU_CACHE
from kanlab.kernels.cpu.tuning import stamp_with_package
from kanlab.kernels.cpu_batched_layer import (
    ACTIVATION_CODES,
    _accumulate_from,
    _activation,
    _basis,
    _dots_from,
    takes,
)

__all__ = ["LayerGrads", "mse_and_grads", "takes"]

_THIS_FILE = os.path.abspath(__file__)
_CACHE = _CPU_CACHE and stamp_with_package(
    lambda f: os.path.abspath(f) == _THIS_FILE, "CpuBatchedLoss", also=(_layer.__file__,)
)
_JIT = {"nogil": True, "cache": _CACHE, "fastmath": {"contract", "reassoc"}, "error_model": "numpy"}
# samples per block: every layer's dense bases of a block stay in the level-2 cache. Measured at
# 64 [2,5,1] KANs, 1000 points (ms per model-evaluation, uniform / adapted grids): 32: 0.121 /
# 0.156, 64: 0.095 / 0.127, 128: 0.082 / 0.105, 256: 0.074 / 0.094, 512: 0.078 / 0.100, 1024:
# 0.099 / 0.112 (each inner loop has a fixed cost: longer blocks amortise it, until the bases
# leave the cache). After the fused hidden inputs, 256, 512 and 1024 measured alike (0.049-0.053)
_BLOCK = 256


@njit(inline="always")
def _cubic_dense(xs, bs, t0, h, nb, deriv, pos, bd, dbd):  # pragma: no cover - compiled
    """The dense cubic basis on a uniform grid, row by row in closed form: ``bd[g, s] =
    N((x_s - t0) / h - g)`` with N the cardinal cubic B-spline on [0, 4) (in the distance d from
    its centre: 2/3 - d^2 + d^3/2 for d < 1, (2 - d)^3 / 6 for d < 2, else 0), and with ``deriv``
    ``dbd[g, s]`` its derivative in x; ``pos`` is scratch. Equal to
    :func:`~kanlab.kernels.cpu_batched_layer._basis` to rounding (half-open support included; NaN
    samples: NaN in rows 0..3, as there) but one loop per row, no interval index and no select
    chain over the k+1 slots: the hidden layers compute a basis per model and block, and there
    the loops' count and their selects were the cost."""
    inv_h = 1.0 / h
    for s in range(bs):
        p = (xs[s] - t0) / h
        pos[s] = p if p == p else -8.0  # NaN: outside every support (rows 0..3 set below)
    if deriv:
        for g in range(nb):
            row = bd[g]
            drow = dbd[g]
            c = 2.0 + g
            for s in range(bs):
                t = pos[s] - c  # the signed distance from B_g's centre
                d = abs(t)
                d2 = d * d
                e = max(2.0 - d, 0.0)
                e2 = e * e
                inner = d < 1.0
                row[s] = (2.0 / 3.0 - d2 + 0.5 * d2 * d) if inner else e2 * e * (1.0 / 6.0)
                slope = (d * (1.5 * d - 2.0)) if inner else -0.5 * e2
                drow[s] = (slope if t >= 0.0 else -slope) * inv_h
    else:
        for g in range(nb):
            row = bd[g]
            c = 2.0 + g
            for s in range(bs):
                d = abs(pos[s] - c)
                d2 = d * d
                e = max(2.0 - d, 0.0)
                row[s] = (2.0 / 3.0 - d2 + 0.5 * d2 * d) if d < 1.0 else e * e * e * (1.0 / 6.0)
    bad = 0.0
    for s in range(bs):
        bad += xs[s] - xs[s]  # NaN iff some sample is NaN or infinite
    if bad != 0.0:
        for g in range(min(4, nb)):
            for s in range(bs):
                if xs[s] != xs[s]:
                    bd[g, s] = np.nan
                    if deriv:
                        dbd[g, s] = np.nan


@njit(inline="always")
def _cardinal6(t):  # pragma: no cover - compiled
    """(6 N(t), -2 dN/dt) of the centred cardinal cubic B-spline N (support (-2, 2)), with e =
    (2 - |t|)+ and f = (e - 1)+ = (1 - |t|)+: ``6 N = e^3 - 4 f^3`` (on |t| < 1 the two terms
    give 4 - 6 t^2 + 3 |t|^3, beyond it the second is 0) and ``-2 dN/dt = sign(t) (e^2 - 4 f^2)``
    (e^2 - 4 f^2 = (e - 2f)(e + 2f) >= 0: a copysign). Two clamps instead of both pieces and a
    select between them, and the factors 1/6 and -1/2 left to the caller's weights: 8 multiplies
    and multiply-adds per row and sample, the step's bottleneck, instead of 10 (no cancellation in
    N: 6 N >= 1 where f > 0; the slope's is an absolute 1e-16, it is O(1) over the support)."""
    d = abs(t)
    e = max(2.0 - d, 0.0)
    f = max(e - 1.0, 0.0)
    e2 = e * e
    f2 = f * f
    return e2 * e - 4.0 * (f2 * f), np.copysign(e2 - 4.0 * f2, t)


@njit(inline="always")
def _cubic_edge4(pos, bs, g, w, v, bd, yo, dyo):  # pragma: no cover - compiled
    """Rows g..g+3 of :func:`_cubic_hidden`: bd[g + q, s] = 6 N(pos[s] - 2 - g - q) and, in the
    same pass, yo[s] += sum_q w[q] * bd[g + q, s], dyo[s] += sum_q v[q] * -2 N'(...) (N, N':
    :func:`_cardinal6`, in units of the grid step); w, v: 4-tuples.
    (The rows are written out here: through a helper storing them, the loop was not vectorised.)"""
    r0, r1, r2, r3 = bd[g], bd[g + 1], bd[g + 2], bd[g + 3]
    w0, w1, w2, w3 = w
    v0, v1, v2, v3 = v
    c = 2.0 + g
    for s in range(bs):
        t = pos[s] - c
        n0, s0 = _cardinal6(t)
        n1, s1 = _cardinal6(t - 1.0)
        n2, s2 = _cardinal6(t - 2.0)
        n3, s3 = _cardinal6(t - 3.0)
        r0[s] = n0
        r1[s] = n1
        r2[s] = n2
        r3[s] = n3
        yo[s] += (w0 * n0 + w1 * n1) + (w2 * n2 + w3 * n3)
        dyo[s] += (v0 * s0 + v1 * s1) + (v2 * s2 + v3 * s3)


@njit(inline="always")
def _cubic_hidden(
    xs, bs, t0, h, nb, a, da, wb, coef, m, i, sc, pos, bd, yo, dyo, init
):  # pragma: no cover - compiled
    """A hidden input on a uniform cubic grid whose layer has one output, fused: the dense basis
    of :func:`_cubic_dense` times 6, ``bd[g, s] = 6 B_g(xs[s])`` (the caller divides the
    coefficient gradients by 6), the edge's output ``yo[s]`` (= with ``init``, else +=)
    ``wb * a[s] + sc * sum_g coef[m, i, g, 0] * B_g(xs[s])`` (:func:`_edge`) and its slope in x,
    ``dyo[s] = wb * da[s] + sc * sum_g coef[m, i, g, 0] * B_g'(xs[s])``, which the backward
    multiplies by the output's gradient. Basis, output and slope in one pass over four rows at a
    time: the derivatives are never stored, the rows are used while in registers (the separate
    basis, edge and slope passes were half the step's time: 2 x 11 rows stored per input and read
    back from the level-2 cache). ``pos``: scratch (S,)."""
    inv_h = 1.0 / h
    w_unit = sc * (1.0 / 6.0)  # (the rows hold 6 B_g, the slopes -2 B_g' h)
    v_unit = sc * -0.5 * inv_h
    for s in range(bs):
        p = (xs[s] - t0) * inv_h  # (not / h: N is continuous, an ulp of p moves it by one)
        pos[s] = p if p == p else -8.0  # NaN: outside every support (set below)
    if init:  # the base term (a pass of its own: one loop body below, not three)
        for s in range(bs):
            yo[s] = wb * a[s]
            dyo[s] = wb * da[s]
    else:
        for s in range(bs):
            yo[s] += wb * a[s]
            dyo[s] = wb * da[s]
    g = 0
    while g < nb:
        # rows g..g+3; past the last basis function a zero weight and a scratch row (bd has G+2k
        # rows, nb = G+k of them basis functions, so g + 3 < nb + k always has a row)
        c0 = coef[m, i, g, 0]
        c1 = coef[m, i, g + 1, 0] if g + 1 < nb else 0.0
        c2 = coef[m, i, g + 2, 0] if g + 2 < nb else 0.0
        c3 = coef[m, i, g + 3, 0] if g + 3 < nb else 0.0
        w = (c0 * w_unit, c1 * w_unit, c2 * w_unit, c3 * w_unit)
        v = (c0 * v_unit, c1 * v_unit, c2 * v_unit, c3 * v_unit)
        _cubic_edge4(pos, bs, g, w, v, bd, yo, dyo)
        g += 4
    bad = 0.0
    for s in range(bs):
        bad += xs[s] - xs[s]  # NaN iff some sample is NaN or infinite
    if bad != 0.0:  # NaN samples: NaN in rows 0..3 (as _cubic_dense), so in the output and slope
        for s in range(bs):
            if xs[s] != xs[s]:
                for g in range(min(4, nb)):
                    bd[g, s] = np.nan
                yo[s] = np.nan
                dyo[s] = np.nan


@njit(inline="always")
def _hidden_mode(layer, k, n_out, uniform):  # pragma: no cover - compiled
    """How layer ``layer``'s inputs run for one model: 1, :func:`_cubic_hidden` (uniform cubic
    grid, one output); 2, :func:`_slope_from_lower` after the values-only basis (other grids, one
    output); 0, the general path (the input layer, several outputs: derivative rows)."""
    if layer == 0 or n_out != 1:
        return 0
    if uniform:
        return 1 if k == 3 else 0
    return 2 if k >= 1 else 0


@njit(inline="always")
def _slope_from_lower(dyo, bs, xs, da, wb, coef, m, i, sc, kn, k, nb, low, wts):  # pragma: no cover
    """The slope of a hidden input's single edge, ``dyo[s] = wb * da[s] + sc * sum_g coef[m, i, g,
    0] B_g'(xs[s])``, from the degree k-1 basis ``low`` (nb+1 rows, which the dense recursion of
    :func:`~kanlab.kernels.cpu_batched_layer._basis` leaves in its scratch): ``B_g' = k (L_g /
    (t_{g+k} - t_g) - L_{g+1} / (t_{g+k+1} - t_{g+1}))`` (1/0 = 0, as there), so ``sum_g v_g B_g' =
    sum_j L_j k (v_j - v_{j-1}) / (t_{j+k} - t_j)`` (v_{-1} = v_nb = 0): one multiply-add per
    lower row instead of a derivative row per basis function stored and read back. ``wts``:
    scratch (>= nb+1,). NaN samples: NaN (as the derivative rows there)."""
    for j in range(nb + 1):
        d = kn[j + k] - kn[j]
        inv = k / d if d > 0 else 0.0
        vj = coef[m, i, j, 0] * sc if j < nb else 0.0
        vp = coef[m, i, j - 1, 0] * sc if j >= 1 else 0.0
        wts[j] = (vj - vp) * inv
    for s in range(bs):
        dyo[s] = wb * da[s]
    g = 0
    while g + 4 <= nb + 1:
        w0, w1, w2, w3 = wts[g], wts[g + 1], wts[g + 2], wts[g + 3]
        r0, r1, r2, r3 = low[g], low[g + 1], low[g + 2], low[g + 3]
        for s in range(bs):
            dyo[s] += (w0 * r0[s] + w1 * r1[s]) + (w2 * r2[s] + w3 * r3[s])
        g += 4
    while g < nb + 1:
        w0 = wts[g]
        r0 = low[g]
        for s in range(bs):
            dyo[s] += w0 * r0[s]
        g += 1
    bad = 0.0
    for s in range(bs):
        bad += xs[s] - xs[s]  # NaN iff some sample is NaN or infinite
    if bad != 0.0:
        for s in range(bs):
            if xs[s] != xs[s]:
                dyo[s] = np.nan


@njit(inline="always")
def _edge(yo, bs, a, wb, coef, m, i, o, sc, bd, nb, init):  # pragma: no cover - compiled
    """yo[s] (= with ``init``, else +=) ``wb * a[s] + sc * sum_g coef[m, i, g, o] * bd[g, s]``: one
    edge's output (or, on the derivatives, its slope), the base term in the first pass over four
    basis rows (the fused layer's ``_accumulate`` plus a pass for the base: fewer loops, each with
    its fixed cost, and one load and store of yo less)."""
    g = 0
    if nb >= 4:
        w0 = coef[m, i, 0, o] * sc
        w1 = coef[m, i, 1, o] * sc
        w2 = coef[m, i, 2, o] * sc
        w3 = coef[m, i, 3, o] * sc
        b0, b1, b2, b3 = bd[0], bd[1], bd[2], bd[3]
        if init:
            for s in range(bs):
                yo[s] = wb * a[s] + ((w0 * b0[s] + w1 * b1[s]) + (w2 * b2[s] + w3 * b3[s]))
        else:
            for s in range(bs):
                yo[s] += wb * a[s] + ((w0 * b0[s] + w1 * b1[s]) + (w2 * b2[s] + w3 * b3[s]))
        g = 4
    elif init:
        for s in range(bs):
            yo[s] = wb * a[s]
    else:
        for s in range(bs):
            yo[s] += wb * a[s]
    _accumulate_from(yo, bs, coef, m, i, o, sc, bd, nb, g)


@njit(inline="always")
def _edge_dots(gyo, bs, a, bd, nb, gcoef, m, i, o):  # pragma: no cover - compiled
    """gcoef[m, i, g, o] += sum_s bd[g, s] * gyo[s] (unscaled) and returns sum_s a[s] * gyo[s]
    (the base scale's), the base in the first pass over four rows (as :func:`_edge`)."""
    a_sum = 0.0
    g = 0
    if nb >= 4:
        b0, b1, b2, b3 = bd[0], bd[1], bd[2], bd[3]
        a0 = 0.0
        a1 = 0.0
        a2 = 0.0
        a3 = 0.0
        for s in range(bs):
            v = gyo[s]
            a_sum += a[s] * v
            a0 += b0[s] * v
            a1 += b1[s] * v
            a2 += b2[s] * v
            a3 += b3[s] * v
        gcoef[m, i, 0, o] += a0
        gcoef[m, i, 1, o] += a1
        gcoef[m, i, 2, o] += a2
        gcoef[m, i, 3, o] += a3
        g = 4
    else:
        for s in range(bs):
            a_sum += a[s] * gyo[s]
    _dots_from(gyo, bs, bd, nb, gcoef, m, i, o, g)
    return a_sum


@njit(inline="always")
def _weights4(coef, m, i, g, o, sc):  # pragma: no cover - compiled
    """coef[m, i, g + q, o] * sc for q < 4."""
    return (coef[m, i, g, o] * sc, coef[m, i, g + 1, o] * sc, coef[m, i, g + 2, o] * sc,
            coef[m, i, g + 3, o] * sc)  # fmt: skip


@njit(inline="always")
def _add4(gcoef, m, i, g, o, a0, a1, a2, a3):  # pragma: no cover - compiled
    """gcoef[m, i, g + q, o] += a_q for q < 4."""
    gcoef[m, i, g, o] += a0
    gcoef[m, i, g + 1, o] += a1
    gcoef[m, i, g + 2, o] += a2
    gcoef[m, i, g + 3, o] += a3


@njit(inline="always")
def _edge_pair(y0, y1, bs, a, wb0, wb1, coef, m, i, o, sc0, sc1, bd, nb, init):  # pragma: no cover
    """:func:`_edge` for outputs o (into y0) and o+1 (into y1) in the same passes: each basis row
    and the activation loaded once for both, half the loops (each with its fixed cost)."""
    g = 0
    if nb >= 4:
        w0, w1, w2, w3 = _weights4(coef, m, i, 0, o, sc0)
        u0, u1, u2, u3 = _weights4(coef, m, i, 0, o + 1, sc1)
        b0, b1, b2, b3 = bd[0], bd[1], bd[2], bd[3]
        if init:
            for s in range(bs):
                p0, p1, p2, p3, av = b0[s], b1[s], b2[s], b3[s], a[s]
                y0[s] = wb0 * av + ((w0 * p0 + w1 * p1) + (w2 * p2 + w3 * p3))
                y1[s] = wb1 * av + ((u0 * p0 + u1 * p1) + (u2 * p2 + u3 * p3))
        else:
            for s in range(bs):
                p0, p1, p2, p3, av = b0[s], b1[s], b2[s], b3[s], a[s]
                y0[s] += wb0 * av + ((w0 * p0 + w1 * p1) + (w2 * p2 + w3 * p3))
                y1[s] += wb1 * av + ((u0 * p0 + u1 * p1) + (u2 * p2 + u3 * p3))
        g = 4
    elif init:
        for s in range(bs):
            y0[s] = wb0 * a[s]
            y1[s] = wb1 * a[s]
    else:
        for s in range(bs):
            y0[s] += wb0 * a[s]
            y1[s] += wb1 * a[s]
    while g + 4 <= nb:
        w0, w1, w2, w3 = _weights4(coef, m, i, g, o, sc0)
        u0, u1, u2, u3 = _weights4(coef, m, i, g, o + 1, sc1)
        b0, b1, b2, b3 = bd[g], bd[g + 1], bd[g + 2], bd[g + 3]
        for s in range(bs):
            p0, p1, p2, p3 = b0[s], b1[s], b2[s], b3[s]
            y0[s] += (w0 * p0 + w1 * p1) + (w2 * p2 + w3 * p3)
            y1[s] += (u0 * p0 + u1 * p1) + (u2 * p2 + u3 * p3)
        g += 4
    while g < nb:
        w0 = coef[m, i, g, o] * sc0
        u0 = coef[m, i, g, o + 1] * sc1
        bg = bd[g]
        for s in range(bs):
            y0[s] += w0 * bg[s]
            y1[s] += u0 * bg[s]
        g += 1


@njit(inline="always")
def _edge_dots_pair(gy0, gy1, bs, a, bd, nb, gcoef, m, i, o):  # pragma: no cover - compiled
    """:func:`_edge_dots` for outputs o (gradient gy0) and o+1 (gy1) in the same passes; returns
    both base sums."""
    e0 = 0.0
    e1 = 0.0
    g = 0
    while g + 4 <= nb:
        b0, b1, b2, b3 = bd[g], bd[g + 1], bd[g + 2], bd[g + 3]
        p0 = p1 = p2 = p3 = q0 = q1 = q2 = q3 = 0.0
        if g == 0:  # (the base in the first pass)
            for s in range(bs):
                v, u, av = gy0[s], gy1[s], a[s]
                e0 += av * v
                e1 += av * u
                p0 += b0[s] * v
                p1 += b1[s] * v
                p2 += b2[s] * v
                p3 += b3[s] * v
                q0 += b0[s] * u
                q1 += b1[s] * u
                q2 += b2[s] * u
                q3 += b3[s] * u
        else:
            for s in range(bs):
                v, u = gy0[s], gy1[s]
                p0 += b0[s] * v
                p1 += b1[s] * v
                p2 += b2[s] * v
                p3 += b3[s] * v
                q0 += b0[s] * u
                q1 += b1[s] * u
                q2 += b2[s] * u
                q3 += b3[s] * u
        _add4(gcoef, m, i, g, o, p0, p1, p2, p3)
        _add4(gcoef, m, i, g, o + 1, q0, q1, q2, q3)
        g += 4
    if nb < 4:
        for s in range(bs):
            e0 += a[s] * gy0[s]
            e1 += a[s] * gy1[s]
    while g < nb:
        bg = bd[g]
        p0 = q0 = 0.0
        for s in range(bs):
            p0 += bg[s] * gy0[s]
            q0 += bg[s] * gy1[s]
        gcoef[m, i, g, o] += p0
        gcoef[m, i, g, o + 1] += q0
        g += 1
    return e0, e1


@njit(inline="always")
def _same_first_grids(per_x, kn, uniform, n0):  # pragma: no cover - compiled
    """same[m]: a shared x and model m's first-layer knots equal model m-1's, so model m-1's
    first-layer basis of the block serves model m too (a fresh batch on one grid range)."""
    n_models = kn.shape[0]
    same = np.zeros(n_models, dtype=np.bool_)
    if per_x:
        return same
    for m in range(1, n_models):
        eq = uniform[0, m] == uniform[0, m - 1]
        for i in range(n0):
            for q in range(kn.shape[2]):
                eq = eq and kn[m, i, q] == kn[m - 1, i, q]
        same[m] = eq
    return same


@njit(**_JIT)
def _mse_grads(
    x,
    y,
    widths,
    kn,
    t0,
    h,
    uniform,
    coef,
    ss,
    sb,
    mask,
    k,
    code,
    weight,
    loss,
    gcoef,
    gss,
    gsb,
    bd,
    dbd,
):  # pragma: no cover - compiled
    """x (1 or M, batch, widths[0]), y (1 or M, batch, widths[-1]); kn (M, R, G+2k+1), t0 and h
    (M, R), R = sum(widths[:-1]): layer l's input i is row ``sum(widths[:l]) + i``; uniform (L, M).
    coef: layer l's (M, in, G+k, out) in turn, flat; ss, sb, mask: layer l's (M, in, out) in turn.
    Writes loss (M,) (each model's MSE) and the gradients of ``sum_m weight[m] * loss[m]``
    (gcoef like coef, gss like ss, gsb like sb; all three arrive zeroed). bd, dbd: scratch
    (R, G+2k, _BLOCK) float64 for the block's dense bases and their derivatives."""
    n_layers = widths.shape[0] - 1
    n_models = kn.shape[0]
    nb = kn.shape[2] - k - 1
    n = kn.shape[2]
    batch = x.shape[1]
    per_x = x.shape[0] > 1
    per_y = y.shape[0] > 1
    n_out = widths[n_layers]
    S = _BLOCK
    # offsets: node rows (inputs of layer l, then the outputs), flat parameter arrays
    node = np.zeros(n_layers + 2, dtype=np.int64)
    coff = np.zeros(n_layers + 1, dtype=np.int64)
    soff = np.zeros(n_layers + 1, dtype=np.int64)
    for layer in range(n_layers + 1):
        node[layer + 1] = node[layer] + widths[layer]
    for layer in range(n_layers):
        coff[layer + 1] = coff[layer] + n_models * widths[layer] * nb * widths[layer + 1]
        soff[layer + 1] = soff[layer] + n_models * widths[layer] * widths[layer + 1]
    n_rows = node[n_layers]  # rows with a basis: the inputs of every layer
    same = _same_first_grids(per_x, kn, uniform, widths[0])
    z = np.empty((node[n_layers + 1], S))  # node values of the block
    gz = np.empty((node[n_layers + 1], S))  # their gradients
    act = np.zeros((n_rows, S))  # (zeros: no base activation is a zero term)
    dact = np.zeros((n_rows, S))
    bd2 = np.empty((n - 1, S))
    tmp = np.empty(S)
    bits = np.empty(S, dtype=np.int64)
    jj = np.empty(S, dtype=np.int64)
    uu = np.empty(S)
    vals = np.empty((k + 1, S))
    dvals = np.empty((k + 1, S))
    dsum = np.empty(S)
    ds = np.empty((n_rows, S))  # fused hidden inputs: the slope of their edge (one output)
    wts = np.empty(n)
    sq = np.zeros(n_models)
    for b0 in range(0, batch, S):
        bs = min(S, batch - b0)
        for m in range(n_models):
            if m == 0 or per_x:  # stage the block's inputs (once for a shared x)
                mx = m if per_x else 0
                for i in range(widths[0]):
                    xi = z[i]
                    for s in range(bs):
                        xi[s] = x[mx, b0 + s, i]
                    if code != 0:
                        _activation(xi, bs, code, False, act[i], dact[i], bits, tmp)
            # forward through the layers
            for layer in range(n_layers):
                n_in = widths[layer]
                n_o = widths[layer + 1]
                c4 = coef[coff[layer] : coff[layer + 1]].reshape((n_models, n_in, nb, n_o))
                ss3 = ss[soff[layer] : soff[layer + 1]].reshape((n_models, n_in, n_o))
                sb3 = sb[soff[layer] : soff[layer + 1]].reshape((n_models, n_in, n_o))
                mk3 = mask[soff[layer] : soff[layer + 1]].reshape((n_models, n_in, n_o))
                hidden = layer > 0
                mode = _hidden_mode(layer, k, n_o, uniform[layer, m])
                for i in range(n_in):
                    r = node[layer] + i
                    xi = z[r]
                    if hidden and code != 0:
                        _activation(xi, bs, code, True, act[r], dact[r], bits, tmp)
                    if mode == 1:  # basis, output and slope in one pass (no derivative rows)
                        msk = mk3[m, i, 0]
                        _cubic_hidden(xi, bs, t0[m, r], h[m, r], nb, act[r], dact[r],
                                      sb3[m, i, 0] * msk, c4, m, i, ss3[m, i, 0] * msk, uu,
                                      bd[r], z[node[layer + 1]], ds[r], i == 0)  # fmt: skip
                        continue
                    if mode == 2:  # the values, then the slope from the degree k-1 rows
                        _basis(xi, bs, t0[m, r], h[m, r], kn[m, r], k, False, False, jj, uu, vals,
                               dvals, bd[r], dbd[r], bd2)  # fmt: skip
                        msk = mk3[m, i, 0]
                        _slope_from_lower(ds[r], bs, xi, dact[r], sb3[m, i, 0] * msk, c4, m, i,
                                          ss3[m, i, 0] * msk, kn[m, r], k, nb, bd2, wts)  # fmt: skip
                    elif (hidden or not same[m]) and k == 3 and uniform[layer, m]:
                        _cubic_dense(xi, bs, t0[m, r], h[m, r], nb, hidden, uu, bd[r], dbd[r])
                    elif hidden or not same[m]:
                        _basis(xi, bs, t0[m, r], h[m, r], kn[m, r], k, uniform[layer, m], hidden,
                               jj, uu, vals, dvals, bd[r], dbd[r], bd2)  # fmt: skip
                    nxt = node[layer + 1]
                    for o in range(0, n_o - 1, 2):  # (outputs in pairs: rows loaded once)
                        m0, m1 = mk3[m, i, o], mk3[m, i, o + 1]
                        _edge_pair(z[nxt + o], z[nxt + o + 1], bs, act[r], sb3[m, i, o] * m0,
                                   sb3[m, i, o + 1] * m1, c4, m, i, o, ss3[m, i, o] * m0,
                                   ss3[m, i, o + 1] * m1, bd[r], nb, i == 0)  # fmt: skip
                    if n_o % 2 == 1:
                        o = n_o - 1
                        msk = mk3[m, i, o]
                        _edge(z[nxt + o], bs, act[r], sb3[m, i, o] * msk, c4, m, i, o,
                              ss3[m, i, o] * msk, bd[r], nb, i == 0)  # fmt: skip
            # residual: the output gradient of weight[m] * mse_m
            my = m if per_y else 0
            c = 2.0 * weight[m] / (batch * n_out)
            acc = 0.0
            for o in range(n_out):
                yo = z[node[n_layers] + o]
                go = gz[node[n_layers] + o]
                for s in range(bs):
                    d = yo[s] - y[my, b0 + s, o]
                    acc += d * d
                    go[s] = c * d
            sq[m] += acc
            # backward through the layers, on the bases just computed
            for layer in range(n_layers - 1, -1, -1):
                n_in = widths[layer]
                n_o = widths[layer + 1]
                c4 = coef[coff[layer] : coff[layer + 1]].reshape((n_models, n_in, nb, n_o))
                g4 = gcoef[coff[layer] : coff[layer + 1]].reshape((n_models, n_in, nb, n_o))
                ss3 = ss[soff[layer] : soff[layer + 1]].reshape((n_models, n_in, n_o))
                sb3 = sb[soff[layer] : soff[layer + 1]].reshape((n_models, n_in, n_o))
                mk3 = mask[soff[layer] : soff[layer + 1]].reshape((n_models, n_in, n_o))
                gsb3 = gsb[soff[layer] : soff[layer + 1]].reshape((n_models, n_in, n_o))
                hidden = layer > 0
                mode = _hidden_mode(layer, k, n_o, uniform[layer, m])
                for i in range(n_in):
                    r = node[layer] + i
                    gxi = gz[r]
                    if mode != 0:  # the slope of the edge is ds[r], from the forward
                        gyo = gz[node[layer + 1]]
                        gsb3[m, i, 0] += _edge_dots(gyo, bs, act[r], bd[r], nb, g4, m, i, 0)
                        dr = ds[r]
                        for s in range(bs):
                            gxi[s] = dr[s] * gyo[s]
                        continue
                    # unscaled coefficient gradients (the scales: at the end), outputs in pairs
                    nxt = node[layer + 1]
                    for o in range(0, n_o - 1, 2):
                        e0, e1 = _edge_dots_pair(gz[nxt + o], gz[nxt + o + 1], bs, act[r], bd[r], nb,
                                                 g4, m, i, o)  # fmt: skip
                        gsb3[m, i, o] += e0
                        gsb3[m, i, o + 1] += e1
                    if n_o % 2 == 1:
                        o = n_o - 1
                        gsb3[m, i, o] += _edge_dots(gz[nxt + o], bs, act[r], bd[r], nb, g4, m, i, o)
                    if not hidden:
                        continue
                    gxi[:bs] = 0.0
                    for o in range(n_o):  # the input's gradient: the edges' slopes
                        gyo = gz[nxt + o]
                        msk = mk3[m, i, o]
                        _edge(dsum, bs, dact[r], sb3[m, i, o] * msk, c4, m, i, o,
                              ss3[m, i, o] * msk, dbd[r], nb, True)  # fmt: skip
                        for s in range(bs):
                            gxi[s] += dsum[s] * gyo[s]
    for m in range(n_models):
        loss[m] = sq[m] / (batch * n_out)
    # fold in the scales and the mask: y = mask * (ss * sum_g coef B_g + sb * act), per layer
    for layer in range(n_layers):
        n_in = widths[layer]
        n_o = widths[layer + 1]
        c4 = coef[coff[layer] : coff[layer + 1]].reshape((n_models, n_in, nb, n_o))
        g4 = gcoef[coff[layer] : coff[layer + 1]].reshape((n_models, n_in, nb, n_o))
        ss3 = ss[soff[layer] : soff[layer + 1]].reshape((n_models, n_in, n_o))
        mk3 = mask[soff[layer] : soff[layer + 1]].reshape((n_models, n_in, n_o))
        gss3 = gss[soff[layer] : soff[layer + 1]].reshape((n_models, n_in, n_o))
        gsb3 = gsb[soff[layer] : soff[layer + 1]].reshape((n_models, n_in, n_o))
        for m in range(n_models):
            # (fused hidden inputs: their rows held 6 B_g, so their sums are 6x)
            unit = 1.0 / 6.0 if _hidden_mode(layer, k, n_o, uniform[layer, m]) == 1 else 1.0
            for i in range(n_in):
                for o in range(n_o):
                    msk = mk3[m, i, o]
                    sc = ss3[m, i, o] * msk
                    a = 0.0
                    for g in range(nb):
                        gu = g4[m, i, g, o] * unit
                        a += gu * c4[m, i, g, o]
                        g4[m, i, g, o] = gu * sc
                    gss3[m, i, o] = a * msk
                    gsb3[m, i, o] *= msk


# ---------------------------------------------------------------------- driver
class LayerGrads(tuple):
    """One layer's gradients: ``(coef, scale_spline, scale_base)``, shaped as the parameters."""

    __slots__ = ()

    @property
    def coef(self) -> Tensor:
        return self[0]

    @property
    def scale_spline(self) -> Tensor:
        return self[1]

    @property
    def scale_base(self) -> Tensor:
        return self[2]


def _np(t: Tensor) -> np.ndarray:
    return t.detach().numpy()


_WORK: dict[tuple[int, int, int], tuple[np.ndarray, np.ndarray]] = {}


def _workspace(n_rows: int, n_basis_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """The kernel's scratch for the block's bases, kept per thread and shape: fresh ~100-300 KB
    arrays per call cost page faults that showed at small M."""
    key = (threading.get_ident(), n_rows, n_basis_rows)
    work = _WORK.get(key)
    if work is None:
        if len(_WORK) > 32:  # (threads gone, shapes of finished runs)
            _WORK.clear()
        shape = (n_rows, n_basis_rows, _BLOCK)
        work = _WORK[key] = (np.empty(shape), np.empty(shape))
    return work


def _rows(x: Tensor, n_models: int, width: int, name: str) -> np.ndarray:
    """x ``(batch, width)`` or ``(M, batch, width)`` -> a ``(1 or M, batch, width)`` array."""
    x3 = x.unsqueeze(0) if x.dim() == 2 else x
    if x3.dim() != 3 or x3.shape[0] not in (1, n_models) or x3.shape[2] != width:
        raise ValueError(
            f"{name} must be (batch, {width}) or ({n_models}, batch, {width}), got {tuple(x.shape)}"
        )
    return np.ascontiguousarray(_np(x3))


def mse_and_grads(
    x: Tensor,
    y: Tensor,
    *,
    knots: Sequence[Tensor],
    coef: Sequence[Tensor],
    scale_spline: Sequence[Tensor],
    scale_base: Sequence[Tensor],
    mask: Sequence[Tensor],
    uniform: Sequence[Tensor],
    spline_order: int,
    base_activation: str,
    weight: Tensor | None = None,
) -> tuple[Tensor, list[LayerGrads]]:
    """The MSE of each of M KANs and the gradients of ``sum_m weight[m] * mse[m]`` (weight: (M,),
    default ones) w.r.t. every layer's coef and scales, without autograd.

    x ``(batch, w0)`` shared or ``(M, batch, w0)``; y ``(batch, wL)`` or ``(M, batch, wL)``. Per
    layer l (sequences of L tensors): knots ``(M, in, G+2k+1)``, coef ``(M, in, G+k, out)``,
    scale_spline, scale_base and mask ``(M, in, out)``, uniform ``(M,)`` bools; one G for all
    layers, G+k <= :data:`~kanlab.kernels.cpu_batched_layer.MAX_DENSE_BASIS`. float32/float64
    CPU tensors of one dtype. Returns mse ``(M,)`` and one :class:`LayerGrads` per layer."""
    n_layers = len(coef)
    lists = (knots, scale_spline, scale_base, mask, uniform)
    if n_layers == 0 or any(len(t) != n_layers for t in lists):
        raise ValueError(
            "knots, coef, scale_spline, scale_base, mask and uniform must hold one tensor per "
            f"layer, got lengths {[len(t) for t in (knots, coef, *lists[1:])]}"
        )
    n_models, _, n_basis, _ = coef[0].shape
    if not takes(n_basis, base_activation):
        raise ValueError(
            f"the fused loss takes G+k <= {_layer.MAX_DENSE_BASIS} basis functions and base "
            f"activations {sorted(ACTIVATION_CODES)}, got {n_basis} and {base_activation!r}"
        )
    widths = [coef[0].shape[1]]
    for layer, c in enumerate(coef):
        n_in, n_out = widths[-1], c.shape[3]
        want = (n_models, n_in, n_basis, n_out)
        if tuple(c.shape) != want:
            raise ValueError(f"coef[{layer}] must be {want}, got {tuple(c.shape)}")
        if tuple(knots[layer].shape) != (n_models, n_in, n_basis + spline_order + 1):
            raise ValueError(
                f"knots[{layer}] must be {(n_models, n_in, n_basis + spline_order + 1)}, got "
                f"{tuple(knots[layer].shape)}"
            )
        for name, t in (("scale_spline", scale_spline), ("scale_base", scale_base), ("mask", mask)):
            if tuple(t[layer].shape) != (n_models, n_in, n_out):
                raise ValueError(
                    f"{name}[{layer}] must be {(n_models, n_in, n_out)}, got {tuple(t[layer].shape)}"
                )
        widths.append(n_out)
    xs = _rows(x, n_models, widths[0], "x")
    ys = _rows(y, n_models, widths[-1], "y")
    if xs.shape[1] != ys.shape[1]:
        raise ValueError(f"x has {xs.shape[1]} rows but y has {ys.shape[1]}")
    if xs.dtype != ys.dtype or xs.dtype != _np(coef[0]).dtype:
        raise ValueError(f"x, y and the parameters must have one dtype, got {xs.dtype}, {ys.dtype}")
    # numpy from here: each torch op costs microseconds, which show at small M
    kn = np.concatenate([_np(t) for t in knots], axis=1)  # (M, R, G+2k+1), a copy
    t0 = np.ascontiguousarray(kn[:, :, 0])
    h = (kn[:, :, -1] - t0) / (kn.shape[2] - 1)  # (knot_origin_and_step's float ops)
    flags = np.stack([_np(u) for u in uniform]).astype(np.bool_, copy=False)
    c_flat, ss_flat, sb_flat, mk_flat = (
        np.concatenate([_np(t).ravel() for t in p]) for p in (coef, scale_spline, scale_base, mask)
    )
    w = (
        np.ones(n_models, dtype=c_flat.dtype)
        if weight is None
        else _np(weight).astype(c_flat.dtype)
    )
    loss = np.zeros(n_models, dtype=c_flat.dtype)
    gc, gss, gsb = np.zeros_like(c_flat), np.zeros_like(ss_flat), np.zeros_like(sb_flat)
    bd, dbd = _workspace(kn.shape[1], kn.shape[2] - 1)
    _mse_grads(xs, ys, np.asarray(widths, dtype=np.int64), kn, t0, h, flags, c_flat, ss_flat,
               sb_flat, mk_flat, int(spline_order), ACTIVATION_CODES[base_activation],
               np.ascontiguousarray(w), loss, gc, gss, gsb, bd, dbd)  # fmt: skip
    grads = []
    c0 = s0 = 0
    for c, sc in zip(coef, scale_spline, strict=True):
        c1, s1 = c0 + c.numel(), s0 + sc.numel()
        grads.append(LayerGrads((torch.from_numpy(gc[c0:c1].reshape(c.shape)),
                                 torch.from_numpy(gss[s0:s1].reshape(sc.shape)),
                                 torch.from_numpy(gsb[s0:s1].reshape(sc.shape)))))  # fmt: skip
        c0, s0 = c1, s1
    return torch.from_numpy(loss), grads
