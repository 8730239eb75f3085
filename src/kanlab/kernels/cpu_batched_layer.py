"""A whole KAN layer of M models (spline + base, masks, scales) in one fused Numba kernel: the
model batch's fast path for small grids on one thread (issue 19's per-evaluation target).

``y[m, b, o] = sum_i mask[m,i,o] * (scale_spline[m,i,o] * sum_g B_g(x[m,b,i]) coef[m,i,g,o]
+ scale_base[m,i,o] * act(x[m,b,i]))`` for every model m, with x ``(M, batch, in)`` or one
``(batch, in)`` shared by all models; knots ``(M, in, G+2k+1)``, each model its own.

Why a separate kernel from :mod:`kanlab.kernels.cpu_batched` (which calls the per-model sparse
kernels): for the paper's tiny models (G+k ~ 8 basis functions, out ~ 5) every per-model kernel
call, every torch op (scales times mask, SiLU, ``baddbmm``) and every autograd node cost more
than the arithmetic. Here one call per layer and direction does everything, over blocks of
samples, vectorised over the samples: for each (model, input, block) the basis is evaluated once
*densely* (``B_g`` for all G+k functions, zeros outside the support), so each output is G+k
broadcast multiply-adds over the block with no gather or scatter (cheaper than the sparse k+1
gathers while G+k is small: at most :data:`MAX_DENSE_BASIS`; larger grids take the sparse
kernels). The basis and the base activation of a shared x are computed once per block for all
models; the interval of a sample is found once per (model, input, sample) and shared by all
outputs: on uniform grids by the position formula of the single-model kernels (same float ops,
so the same interval), on adapted grids by the dense Cox-de Boor recursion (half-open intervals,
``0/0 = 0``), which needs no search. Backward recomputes the basis (cheaper than saving it) and
gives the coefficient, scale and (when asked) input gradients in one pass; the scale and mask
products are folded in at the end. SiLU uses an exp written out here (Cody-Waite reduction and a
degree-13 Taylor polynomial, within 2 ulp) because Numba's ``np.exp`` is a scalar libm call that
LLVM does not vectorise.

Results equal the per-model kernels to rounding (float64: ~1e-15 relative), not bit for bit: the
sums run in another order. NaN inputs give NaN outputs, as in the single-model kernels.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit
from torch import Tensor

from kanlab.kernels.cpu.api import _knot_arrays
from kanlab.kernels.cpu.tuning import _CACHE

__all__ = ["ACTIVATION_CODES", "MAX_DENSE_BASIS", "kan_layer", "takes"]

# error_model="numpy": x / 0 gives inf/NaN instead of raising, so divisions carry no check (a
# ZeroDivisionError branch per division kept every loop with one scalar: 1.3 against 0.1 ns)
_JIT = {"nogil": True, "cache": _CACHE, "fastmath": {"contract", "reassoc"}, "error_model": "numpy"}
ACTIVATION_CODES = {"zero": 0, "identity": 1, "silu": 2, "relu": 3}  # base activations fused here
# Largest G+k taken densely: a dense output costs G+k multiply-adds per (sample, input, output)
# against the sparse kernels' k+1 gathers. Measured on 64 [2,5,1] KANs (1000 points, float64, 1
# thread, ms per model-evaluation, fused vs the per-model sparse kernels): uniform grids G+k = 8:
# 0.13 vs 0.25, 13: 0.18 vs 0.25, 18: 0.21 vs 0.26, 24: 0.24 vs 0.27; adapted grids 0.18 vs 0.99
# at 8, 0.42 vs 1.27 at 24.
MAX_DENSE_BASIS = 24
_BLOCK = 128  # samples per block: the dense basis (G+2k, 128) float64 stays in the level-1 cache
_KEEP_ROWS = 64  # a shared x keeps each input's basis (in * (G+2k) rows) for the next models

_LOG2E = 1.4426950408889634
_LN2_HI = 6.93147180369123816490e-01  # ln 2 split so that n * _LN2_HI is exact (fdlibm)
_LN2_LO = 1.90821492927058770002e-10


@njit(inline="always")
def _activation(xs, bs, code, deriv, act, dact, bits, tmp):  # pragma: no cover - compiled
    """act[s] = b(xs[s]) and, with ``deriv``, dact[s] = b'(xs[s]) (torch's formulas)."""
    if code == 1:
        for s in range(bs):
            act[s] = xs[s]
            dact[s] = 1.0
    elif code == 3:
        for s in range(bs):
            v = xs[s]
            act[s] = v if (v > 0.0 or v != v) else 0.0  # relu(NaN) = NaN
            dact[s] = 1.0 if v > 0.0 else 0.0
    elif code == 2:  # silu(x) = x / (1 + exp(-x)); exp by range reduction, vectorised
        for s in range(bs):
            t = -xs[s]
            t = t if t == t else 0.0  # NaN: any finite value (the product with x gives NaN)
            t = min(max(t, -708.0), 708.0)
            nf = np.floor(t * _LOG2E + 0.5)
            r = t - nf * _LN2_HI - nf * _LN2_LO  # |r| <= ln2 / 2
            p = 1.0 / 6227020800.0
            p = p * r + 1.0 / 479001600.0
            p = p * r + 1.0 / 39916800.0
            p = p * r + 1.0 / 3628800.0
            p = p * r + 1.0 / 362880.0
            p = p * r + 1.0 / 40320.0
            p = p * r + 1.0 / 5040.0
            p = p * r + 1.0 / 720.0
            p = p * r + 1.0 / 120.0
            p = p * r + 1.0 / 24.0
            p = p * r + 1.0 / 6.0
            p = p * r + 0.5
            p = p * r + 1.0
            tmp[s] = p * r + 1.0
            bits[s] = (np.int64(nf) + 1023) << 52  # 2**nf as float64 bits
        scale = bits.view(np.float64)
        for s in range(bs):
            sig = 1.0 / (1.0 + tmp[s] * scale[s])
            v = xs[s]
            act[s] = v * sig
            if deriv:
                dact[s] = sig * (1.0 + v * (1.0 - sig))
    else:
        for s in range(bs):
            act[s] = 0.0
            dact[s] = 0.0


@njit(inline="always")
def _scatter(vals, jj, bs, nb, k, n_slots, bd):  # pragma: no cover - compiled
    """bd[g, s] = vals[q, s] for the slot q with jj[s] == g + k - q (slot q holds B_{j-k+q}),
    0 where none matches. ``n_slots`` = k+1, passed as a literal 4 for the cubic case so LLVM
    unrolls the select chain."""
    for g in range(nb):
        for s in range(bs):
            j = jj[s]
            v = 0.0
            for q in range(n_slots):
                a = vals[q, s]
                v = a if j == g + k - q else v
            bd[g, s] = v


@njit(inline="always")
def _basis(
    xs, bs, t0, h, kn, k, uniform, deriv, jj, uu, vals, dvals, bd, dbd, bd2
):  # pragma: no cover
    """Dense basis ``bd[g, s] = B_g(xs[s])`` for g < G+k on the knots ``kn`` (one input of one
    model) and, with ``deriv``, ``dbd[g, s]`` its derivative in x; zero outside the knot span,
    NaN in rows 0..k for NaN samples (as the single-model kernels). ``bd2`` is scratch.

    Written for LLVM's vectoriser (measured: each rule below made a loop 3-10x faster): branches
    sit outside the loops over the block (a store under a branch stops vectorisation), every
    select picks between values already loaded (a load under a branch compiles to a branch), the
    slot count of the cubic case is a literal, and a recursion level reads one array and writes
    another (rows of one array updated in place are not proven independent). On an adapted grid
    with k >= 1 it leaves the degree k-1 rows (nb+1 of them) in ``bd2``: the fused loss takes a
    slope from them (``cpu_batched_loss._slope_from_lower``)."""
    n = kn.shape[0]
    nb = n - k - 1
    if uniform:
        top = n - 2
        inv_h = 1.0 / h
        for s in range(bs):
            pos = (xs[s] - t0) / h  # the single-model kernels' formula: the same interval
            fl = np.floor(pos)
            ok = (fl >= 0.0) & (fl <= top)
            uu[s] = pos - fl if ok else 0.0
            jj[s] = np.int64(fl) if ok else -(k + 2)  # -(k+2): no basis function matches
        if k == 3:  # the default layer in closed form
            for s in range(bs):
                u = uu[s]
                w = 1.0 - u
                u2 = u * u
                vals[0, s] = w * w * w * (1.0 / 6.0)
                vals[1, s] = (3.0 * u2 * u - 6.0 * u2 + 4.0) * (1.0 / 6.0)
                vals[2, s] = (-3.0 * u2 * u + 3.0 * u2 + 3.0 * u + 1.0) * (1.0 / 6.0)
                vals[3, s] = u2 * u * (1.0 / 6.0)
            if deriv:
                for s in range(bs):
                    u = uu[s]
                    w = 1.0 - u
                    u2 = u * u
                    dvals[0, s] = -0.5 * w * w * inv_h
                    dvals[1, s] = (1.5 * u2 - 2.0 * u) * inv_h
                    dvals[2, s] = (-1.5 * u2 + u + 0.5) * inv_h
                    dvals[3, s] = 0.5 * u2 * inv_h
            _scatter(vals, jj, bs, nb, 3, 4, bd)  # vals[r] belongs to B_{j-3+r}
            if deriv:
                _scatter(dvals, jj, bs, nb, 3, 4, dbd)
        else:  # cardinal recursion in u, r descending so each level reads the previous one
            for s in range(bs):
                vals[0, s] = 1.0
                dvals[0, s] = 0.0
            for p in range(1, k + 1):
                inv_p = 1.0 / p
                for r in range(p, -1, -1):
                    for s in range(bs):
                        lower = vals[r - 1, s] if r >= 1 else 0.0
                        upper = vals[r, s] if r <= p - 1 else 0.0
                        if p == k:
                            dvals[r, s] = (lower - upper) * inv_h
                        u = uu[s]
                        vals[r, s] = ((u + (p - r)) * lower + ((r + 1) - u) * upper) * inv_p
            _scatter(vals, jj, bs, nb, k, k + 1, bd)
            if deriv:
                _scatter(dvals, jj, bs, nb, k, k + 1, dbd)
    else:  # adapted grid: dense Cox-de Boor, level 0 the half-open interval indicators
        src = bd if k % 2 == 0 else bd2  # (the last level lands in bd)
        dst = bd2 if k % 2 == 0 else bd
        for q in range(n - 1):
            lo = kn[q]
            hi = kn[q + 1]
            row = src[q]
            for s in range(bs):
                v = xs[s]
                row[s] = ((v >= lo) & (v < hi)) * 1.0
        if deriv and k == 0:
            dbd[:, :bs] = 0.0
        for p in range(1, k + 1):
            for q in range(n - 1 - p):
                dl = kn[q + p] - kn[q]
                dr = kn[q + p + 1] - kn[q + 1]
                il = 1.0 / dl if dl > 0 else 0.0  # 0/0 = 0 (repeated knots)
                ir = 1.0 / dr if dr > 0 else 0.0
                tq = kn[q]
                tr = kn[q + p + 1]
                lower = src[q]
                upper = src[q + 1]
                out = dst[q]
                if deriv and p == k:
                    dq = dbd[q]
                    for s in range(bs):
                        dq[s] = p * (lower[s] * il - upper[s] * ir)
                for s in range(bs):
                    out[s] = (xs[s] - tq) * il * lower[s] + (tr - xs[s]) * ir * upper[s]
            src, dst = dst, src
    bad = 0.0
    for s in range(bs):
        bad += xs[s] - xs[s]  # NaN iff some sample is NaN or infinite (a vectorised test)
    if bad != 0.0:  # NaN samples: NaN in rows 0..k
        for g in range(min(k + 1, nb)):
            for s in range(bs):
                if xs[s] != xs[s]:
                    bd[g, s] = np.nan
                    if deriv:
                        dbd[g, s] = np.nan


@njit(inline="always")
def _accumulate(yo, bs, coef, m, i, o, sc, bd, nb):  # pragma: no cover - compiled
    """yo[s] += sc * sum_g coef[m, i, g, o] * bd[g, s], four rows per pass over the block (one
    load and store of yo per four multiply-adds: a pass per row was bound by them, 3x slower)."""
    _accumulate_from(yo, bs, coef, m, i, o, sc, bd, nb, 0)


@njit(inline="always")
def _accumulate_from(yo, bs, coef, m, i, o, sc, bd, nb, g):  # pragma: no cover - compiled
    """:func:`_accumulate` from row g on."""
    while g + 4 <= nb:
        w0 = coef[m, i, g, o] * sc
        w1 = coef[m, i, g + 1, o] * sc
        w2 = coef[m, i, g + 2, o] * sc
        w3 = coef[m, i, g + 3, o] * sc
        b0, b1, b2, b3 = bd[g], bd[g + 1], bd[g + 2], bd[g + 3]
        for s in range(bs):
            yo[s] += (w0 * b0[s] + w1 * b1[s]) + (w2 * b2[s] + w3 * b3[s])
        g += 4
    while g < nb:
        w = coef[m, i, g, o] * sc
        bg = bd[g]
        for s in range(bs):
            yo[s] += w * bg[s]
        g += 1


@njit(inline="always")
def _dots(gyo, bs, bd, nb, gcoef, m, i, o):  # pragma: no cover - compiled
    """gcoef[m, i, g, o] += sum_s bd[g, s] * gyo[s], four rows per pass (gyo loaded once)."""
    _dots_from(gyo, bs, bd, nb, gcoef, m, i, o, 0)


@njit(inline="always")
def _dots_from(gyo, bs, bd, nb, gcoef, m, i, o, g):  # pragma: no cover - compiled
    """:func:`_dots` from row g on."""
    while g + 4 <= nb:
        b0, b1, b2, b3 = bd[g], bd[g + 1], bd[g + 2], bd[g + 3]
        a0 = 0.0
        a1 = 0.0
        a2 = 0.0
        a3 = 0.0
        for s in range(bs):
            v = gyo[s]
            a0 += b0[s] * v
            a1 += b1[s] * v
            a2 += b2[s] * v
            a3 += b3[s] * v
        gcoef[m, i, g, o] += a0
        gcoef[m, i, g + 1, o] += a1
        gcoef[m, i, g + 2, o] += a2
        gcoef[m, i, g + 3, o] += a3
        g += 4
    while g < nb:
        bg = bd[g]
        acc = 0.0
        for s in range(bs):
            acc += bg[s] * gyo[s]
        gcoef[m, i, g, o] += acc
        g += 1


@njit(inline="always")
def _same_grids(x, kn, uniform):  # pragma: no cover - compiled
    """same[m]: a shared x and model m's knots equal model m-1's (its basis can be reused: all
    models of a fresh batch on one grid range)."""
    n_models = kn.shape[0]
    same = np.zeros(n_models, dtype=np.bool_)
    if x.shape[0] > 1:
        return same
    for m in range(1, n_models):
        eq = uniform[m] == uniform[m - 1]
        for i in range(kn.shape[1]):
            for q in range(kn.shape[2]):
                eq = eq and kn[m, i, q] == kn[m - 1, i, q]
        same[m] = eq
    return same


@njit(**_JIT)
def _forward(x, t0, h, kn, coef, ss, sb, mask, k, uniform, code, y):  # pragma: no cover
    """y (M, batch, out) of the fused layer; x (1 or M, batch, in): one row shared, or per model."""
    n_models, n_in, nb, n_out = coef.shape
    batch = x.shape[1]
    per_model = x.shape[0] > 1
    n = kn.shape[2]
    S = _BLOCK
    same = _same_grids(x, kn, uniform)
    keep = not per_model and n_in * (n - 1) <= _KEEP_ROWS  # one basis per input, kept
    xt = np.empty((n_in, S))
    act = np.empty((n_in, S))
    dact = np.empty(S)
    tmp = np.empty(S)
    bits = np.empty(S, dtype=np.int64)
    jj = np.empty(S, dtype=np.int64)
    uu = np.empty(S)
    vals = np.empty((k + 1, S))
    dvals = np.empty((k + 1, S))
    bdk = np.empty((n_in if keep else 1, n - 1, S))
    bd2 = np.empty((n - 1, S))
    yt = np.empty((n_out, S))
    for b0 in range(0, batch, S):
        bs = min(S, batch - b0)
        for m in range(n_models):
            if m == 0 or per_model:  # stage the block's inputs (once for a shared x)
                mx = m if per_model else 0
                for i in range(n_in):
                    xi = xt[i]
                    for s in range(bs):
                        xi[s] = x[mx, b0 + s, i]
                    if code != 0:
                        _activation(xi, bs, code, False, act[i], dact, bits, tmp)
            yt[:, :bs] = 0.0
            for i in range(n_in):
                bd = bdk[i if keep else 0]
                if not (keep and same[m]):
                    _basis(xt[i], bs, t0[m, i], h[m, i], kn[m, i], k, uniform[m], False,
                           jj, uu, vals, dvals, bd, bd, bd2)  # fmt: skip
                for o in range(n_out):
                    msk = mask[m, i, o]
                    yo = yt[o]
                    if code != 0:
                        wb = sb[m, i, o] * msk
                        ai = act[i]
                        for s in range(bs):
                            yo[s] += wb * ai[s]
                    _accumulate(yo, bs, coef, m, i, o, ss[m, i, o] * msk, bd, nb)
            for s in range(bs):
                for o in range(n_out):
                    y[m, b0 + s, o] = yt[o, s]


@njit(**_JIT)
def _backward(
    x, t0, h, kn, coef, ss, sb, mask, k, uniform, code, gy, need_x, gx, gcoef, gss, gsb
):  # pragma: no cover - compiled
    """Gradients of ``sum(gy * y)``: gcoef (M, in, G+k, out), gss and gsb (M, in, out), and gx
    (like x) when ``need_x`` (summed over the models for a shared x). gcoef, gsb and a shared
    x's gx arrive zeroed; a per-model gx is written whole."""
    n_models, n_in, nb, n_out = coef.shape
    batch = x.shape[1]
    per_model = x.shape[0] > 1
    n = kn.shape[2]
    S = _BLOCK
    same = _same_grids(x, kn, uniform)
    keep = not per_model and n_in * (n - 1) <= _KEEP_ROWS
    xt = np.empty((n_in, S))
    act = np.empty((n_in, S))
    dact = np.empty((n_in, S))
    tmp = np.empty(S)
    bits = np.empty(S, dtype=np.int64)
    jj = np.empty(S, dtype=np.int64)
    uu = np.empty(S)
    vals = np.empty((k + 1, S))
    dvals = np.empty((k + 1, S))
    bdk = np.empty((n_in if keep else 1, n - 1, S))
    dbdk = np.empty((n_in if keep else 1, n - 1, S))
    bd2 = np.empty((n - 1, S))
    gyt = np.empty((n_out, S))
    gxt = np.empty((n_in, S))
    dsum = np.empty(S)
    for b0 in range(0, batch, S):
        bs = min(S, batch - b0)
        for m in range(n_models):
            mx = m if per_model else 0
            if m == 0 or per_model:
                for i in range(n_in):
                    xi = xt[i]
                    for s in range(bs):
                        xi[s] = x[mx, b0 + s, i]
                    if code != 0:
                        _activation(xi, bs, code, need_x, act[i], dact[i], bits, tmp)
            for s in range(bs):
                for o in range(n_out):
                    gyt[o, s] = gy[m, b0 + s, o]
            if need_x:
                gxt[:, :bs] = 0.0
            for i in range(n_in):
                bd = bdk[i if keep else 0]
                dbd = dbdk[i if keep else 0]
                if not (keep and same[m]):
                    _basis(xt[i], bs, t0[m, i], h[m, i], kn[m, i], k, uniform[m], need_x,
                           jj, uu, vals, dvals, bd, dbd, bd2)  # fmt: skip
                for o in range(n_out):
                    gyo = gyt[o]
                    if code != 0:
                        ai = act[i]
                        acc = 0.0
                        for s in range(bs):
                            acc += ai[s] * gyo[s]
                        gsb[m, i, o] += acc
                    _dots(gyo, bs, bd, nb, gcoef, m, i, o)  # unscaled (scales: at the end)
                    if need_x:
                        msk = mask[m, i, o]
                        sc = ss[m, i, o] * msk
                        if code != 0:
                            wb = sb[m, i, o] * msk
                            di = dact[i]
                            for s in range(bs):
                                dsum[s] = wb * di[s]
                        else:
                            dsum[:bs] = 0.0
                        _accumulate(dsum, bs, coef, m, i, o, sc, dbd, nb)
                        gxi = gxt[i]
                        for s in range(bs):
                            gxi[s] += dsum[s] * gyo[s]
            if need_x and per_model:
                for s in range(bs):
                    for i in range(n_in):
                        gx[mx, b0 + s, i] = gxt[i, s]
            elif need_x:  # a shared x: the sum over the models
                for s in range(bs):
                    for i in range(n_in):
                        gx[0, b0 + s, i] += gxt[i, s]
    # fold in the scales and the mask: y = mask * (ss * sum_g coef B_g + sb * act)
    for m in range(n_models):
        for i in range(n_in):
            for o in range(n_out):
                msk = mask[m, i, o]
                sc = ss[m, i, o] * msk
                acc = 0.0
                for g in range(nb):
                    gu = gcoef[m, i, g, o]
                    acc += gu * coef[m, i, g, o]
                    gcoef[m, i, g, o] = gu * sc
                gss[m, i, o] = acc * msk
                gsb[m, i, o] *= msk


# ---------------------------------------------------------------------- driver
def takes(n_basis: int, base_activation: str) -> bool:
    """Whether this kernel handles a layer (the caller checks device, dtype and threads)."""
    return n_basis <= MAX_DENSE_BASIS and base_activation in ACTIVATION_CODES


def _flags(uniform: Tensor) -> np.ndarray:
    return np.ascontiguousarray(uniform.detach().cpu().numpy().astype(np.bool_, copy=False))


def _arrays(t: Tensor) -> np.ndarray:
    return t.detach().contiguous().numpy()


class _Plan:
    """What a call's backward needs beside the tensors: the knot arrays, the grid flags, k and the
    activation code (one argument to ``apply`` instead of five: each argument of a custom
    Function costs Python time per call, which shows at M = 8)."""

    __slots__ = ("code", "flags", "h", "k", "kn", "t0")

    def __init__(self, knots: Tensor, uniform: Tensor, k: int, code: int) -> None:
        self.kn, self.t0, self.h = (a.numpy() for a in _knot_arrays(knots))
        self.flags = _flags(uniform)
        self.k = k
        self.code = code


class _FusedLayer(torch.autograd.Function):
    """Autograd of :func:`kan_layer`: first order, w.r.t. x, coef, scale_spline, scale_base.

    The forward's numpy views of its inputs are kept on ``ctx`` for the backward (no second
    ``detach().contiguous().numpy()`` per tensor); the tensors are saved too, so autograd still
    refuses a backward after an in-place change of any of them."""

    @staticmethod
    def forward(ctx, x, coef, scale_spline, scale_base, mask, plan):
        xs = _arrays(x if x.dim() == 3 else x.unsqueeze(0))
        arrays = (_arrays(coef), _arrays(scale_spline), _arrays(scale_base), _arrays(mask))
        ctx.save_for_backward(x, coef, scale_spline, scale_base, mask)
        ctx.plan = plan
        ctx.x_dim = x.dim()
        ctx.arrays = (xs, *arrays)
        n_models, batch = coef.shape[0], xs.shape[1]
        y = torch.empty(n_models, batch, coef.shape[3], dtype=x.dtype)
        if batch > 0:
            _forward(xs, plan.t0, plan.h, plan.kn, *arrays, plan.k, plan.flags, plan.code,
                     y.numpy())  # fmt: skip
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y):
        ctx.saved_tensors  # noqa: B018 - autograd's check: no input changed in place since forward
        xs, coef, ss, sb, mask = ctx.arrays
        plan = ctx.plan
        needs = ctx.needs_input_grad
        need_x = needs[0]
        dtype = coef.dtype
        # numpy allocations: a few microseconds less each than torch.zeros (called per step)
        if not need_x:
            gx = np.zeros((1, 0, xs.shape[2]), dtype=dtype)
        else:  # a per-model x's gradient is written whole; a shared x's is a sum
            gx = (np.empty if xs.shape[0] > 1 else np.zeros)(xs.shape, dtype=dtype)
        gcoef = np.zeros(coef.shape, dtype=dtype)
        gss = np.zeros(ss.shape, dtype=dtype)
        gsb = np.zeros(sb.shape, dtype=dtype)
        if xs.shape[1] > 0:
            _backward(xs, plan.t0, plan.h, plan.kn, coef, ss, sb, mask, plan.k, plan.flags,
                      plan.code, _arrays(grad_y), bool(need_x), gx, gcoef, gss, gsb)  # fmt: skip
        if need_x:
            gx = torch.from_numpy(gx if ctx.x_dim == 3 else gx[0])
        return (
            gx if need_x else None,
            torch.from_numpy(gcoef) if needs[1] else None,
            torch.from_numpy(gss) if needs[2] else None,
            torch.from_numpy(gsb) if needs[3] else None,
            None,
            None,
        )


def kan_layer(
    x: Tensor,
    knots: Tensor,
    coef: Tensor,
    scale_spline: Tensor,
    scale_base: Tensor,
    mask: Tensor,
    uniform: Tensor,
    *,
    spline_order: int,
    base_activation: str,
) -> Tensor:
    """M KAN layers in one call: x ``(M, batch, in)`` or ``(batch, in)`` (shared), knots
    ``(M, in, G+2k+1)``, coef ``(M, in, G+k, out)``, scales and mask ``(M, in, out)``, uniform
    ``(M,)`` bools -> ``(M, batch, out)``; differentiable (first order) w.r.t. x, coef and the
    scales. float32/float64 CPU tensors of one dtype; G+k <= :data:`MAX_DENSE_BASIS`."""
    n_models, n_in, n_basis, n_out = coef.shape
    if x.dim() not in (2, 3) or x.shape[-1] != n_in or (x.dim() == 3 and x.shape[0] != n_models):
        raise ValueError(
            f"x must be (batch, {n_in}) or ({n_models}, batch, {n_in}), got {tuple(x.shape)}"
        )
    if knots.shape != (n_models, n_in, n_basis + spline_order + 1):
        raise ValueError(
            f"knots must be (M, in, G+2k+1) = {(n_models, n_in, n_basis + spline_order + 1)}, "
            f"got {tuple(knots.shape)}"
        )
    for name, t in (("scale_spline", scale_spline), ("scale_base", scale_base), ("mask", mask)):
        if t.shape != (n_models, n_in, n_out):
            raise ValueError(f"{name} must be (M, in, out), got {tuple(t.shape)}")
    if not takes(n_basis, base_activation):
        raise ValueError(
            f"the fused layer takes G+k <= {MAX_DENSE_BASIS} basis functions and base "
            f"activations {sorted(ACTIVATION_CODES)}, got {n_basis} and {base_activation!r}"
        )
    if knots.requires_grad:
        raise ValueError("knots must not require grad: the fused layer gives no knot gradient")
    plan = _Plan(knots, uniform, int(spline_order), ACTIVATION_CODES[base_activation])
    return _FusedLayer.apply(x, coef, scale_spline, scale_base, mask, plan)
