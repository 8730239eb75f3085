"""CPU kernels for the memory-bound parts of a layer's symbolic edges (``c * f(a * x + b)``).

Why: evaluated with torch ops alone, every symbolic edge costs about a dozen full passes over an
(edges, batch) slab (gather, ``a*x``, ``+ b``, ``f``, ``* c``, index-add, and twice as many in
backward, including the batch reductions for the a, b, c gradients), each slab freshly allocated;
on a CPU that memory traffic, not the arithmetic, made symbolic edges train two to three times
slower than spline edges (which run fused Numba kernels). The function values themselves stay
with torch (its vectorised transcendental functions are 2-4x faster than scalar libm calls from
compiled loops); everything around them is one compiled pass:

- :func:`transpose`: the (batch, in) input as (in, batch) rows, once per forward;
- :func:`affine`: ``z[e] = a[e] * x[in_e] + b[e]`` (the gather fused into the affine map);
- :func:`scatter`: ``y[out_e] += c[e] * f[e] + d[e]`` (scale, shift and index-add fused);
- :func:`backward`: from ``dL/dy``, ``f`` and ``f'``, in one pass: ``dL/dx`` (accumulated per input
  node) and the batch sums giving the a, b, c, d gradients.

Layouts: ``x`` (batch, in), ``y`` and its gradient (batch, out) as the layer holds them (no
transposed copies), per-edge slabs (E, batch); the per-edge constants are read from the layer's
whole (in*out, 4) affine table and (in*out,) mask through the edges' flat positions (no gathered
copies).
Rounding: ``a*x + b`` is a multiply then an add (no fused multiply-add), as torch computes it; the
batch sums of :func:`backward` may be reassociated (vectorised), like the spline kernels' sums.
Serial ``nogil`` loops: one thread per call.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from kanlab.kernels.cpu.tuning import _CACHE

__all__ = ["affine", "backward", "scatter", "transpose"]  # and the KIND_* codes


@njit(cache=_CACHE, nogil=True)
def transpose(a):  # pragma: no cover - compiled
    """a (n, k) -> a C-contiguous (k, n) copy of a.T."""
    out = np.empty((a.shape[1], a.shape[0]), dtype=a.dtype)
    for s in range(a.shape[0]):
        for j in range(a.shape[1]):
            out[j, s] = a[s, j]
    return out


@njit(cache=_CACHE, nogil=True)
def affine(xt, aff, idx, lo, hi, z):  # pragma: no cover - compiled
    """z[e] = a * xt[in_e] + b for the edges lo <= e < hi; z (E, batch), xt (in, batch) the
    transposed input (:func:`transpose`); (a, b) = aff[flat_e, :2] with aff the layer's
    (in*out, 4) table and idx (3, E) the rows (in_e, out_e, flat_e)."""
    n = xt.shape[1]
    for e in range(lo, hi):
        i, p = idx[0, e], idx[2, e]
        ae, be = aff[p, 0], aff[p, 1]
        for s in range(n):
            z[e, s] = ae * xt[i, s] + be


@njit(cache=_CACHE, nogil=True)
def _scatter_rows(f, aff, m, idx, yt):  # pragma: no cover - compiled
    n = yt.shape[1]
    for e in range(f.shape[0]):
        o, p = idx[1, e], idx[2, e]
        ce, de = aff[p, 2] * m[p], aff[p, 3] * m[p]
        for s in range(n):
            yt[o, s] += ce * f[e, s] + de


@njit(cache=_CACHE, nogil=True)
def scatter(f, aff, m, idx, base, has_base, y):  # pragma: no cover - compiled
    """y (batch, out) = base (if has_base, else 0) + the sum over the edges e into each output of
    (c*m) * f[e] + d*m; f (E, batch); c, d from aff[flat_e, 2:], m = m[flat_e] (the flattened
    (in*out,) mask)."""
    yt = np.zeros((y.shape[1], y.shape[0]), dtype=y.dtype)  # (out, batch)
    _scatter_rows(f, aff, m, idx, yt)
    for s in range(y.shape[0]):
        for o in range(y.shape[1]):
            y[s, o] = base[s, o] + yt[o, s] if has_base else yt[o, s]


# Kinds of f' the backward kernel computes itself from z = a*x + b and f (the arithmetic of the
# matching derivative records of kanlab.functions, operation for operation); KIND_SLAB: f' is read
# from the slab the caller filled.
KIND_SLAB, KIND_ONE, KIND_ZERO, KIND_SQUARE, KIND_TANH, KIND_EXP, KIND_SIGMOID, KIND_GAUSSIAN = (
    range(8)
)


@njit(cache=_CACHE, nogil=True)
def _fprime_row(kind, ae, be, xr, fr, out):  # pragma: no cover - compiled
    """out = f' of one edge (a kind other than KIND_SLAB) from its input row xr and its f row fr;
    one simple loop per kind (each vectorises)."""
    n = out.shape[0]
    if kind == KIND_ONE:
        out[:] = 1.0
    elif kind == KIND_ZERO:
        out[:] = 0.0
    elif kind == KIND_SQUARE:
        for s in range(n):
            out[s] = (ae * xr[s] + be) * 2.0
    elif kind == KIND_TANH:
        for s in range(n):
            out[s] = 1.0 - fr[s] * fr[s]
    elif kind == KIND_EXP:
        for s in range(n):
            out[s] = fr[s] if ae * xr[s] + be <= 80.0 else 0.0
    elif kind == KIND_SIGMOID:
        for s in range(n):
            out[s] = fr[s] * (1.0 - fr[s])
    else:  # KIND_GAUSSIAN
        for s in range(n):
            out[s] = (ae * xr[s] + be) * fr[s] * -2.0


@njit(cache=_CACHE, nogil=True, fastmath={"reassoc"})
def _backward_rows(
    xt, gyt, f, fd, aff, m, idx, kinds, need_x, gxt, gaff
):  # pragma: no cover - compiled
    n = xt.shape[1]
    scratch = np.empty(n, dtype=f.dtype)
    for e in range(f.shape[0]):
        i, o, p, kind = idx[0, e], idx[1, e], idx[2, e], kinds[e]
        mp = m[p]
        ce = aff[p, 2] * mp
        cae = ce * aff[p, 0]
        if kind == KIND_SLAB:
            fdr = fd[e]
        else:
            _fprime_row(kind, aff[p, 0], aff[p, 1], xt[i], f[e], scratch)
            fdr = scratch
        sa = sb = sc = sd = 0.0
        for s in range(n):
            g = gyt[o, s]
            gd = g * fdr[s]  # dL/dz / c
            sc += g * f[e, s]
            sd += g
            sa += gd * xt[i, s]
            sb += gd
            if need_x:
                gxt[i, s] += gd * cae
        gaff[p, 0] = ce * sa
        gaff[p, 1] = ce * sb
        gaff[p, 2] = sc * mp
        gaff[p, 3] = sd * mp


@njit(cache=_CACHE, nogil=True)
def backward(xt, gy, f, fd, aff, m, idx, kinds, need_x, gx, gaff):  # pragma: no cover - compiled
    """Gradients of ``sum(gy * y)`` for ``y[:, out_e] += m*c * f(a * x[:, in_e] + b) + m*d``.

    xt (in, batch) the transposed input, gy (batch, out); f (E, batch): f at a*x + b; kinds (E,) int64: how to get f'
    of each edge (``KIND_*``); fd (E, batch): f' at a*x + b on the rows of kind ``KIND_SLAB``
    (other rows are not read). Writes the rows flat_e of gaff (in*out, 4) (the a, b, c, d
    gradients; other rows are left alone) and, when need_x, writes gx (batch, in).
    """
    n_x = xt.shape[0] if need_x else 0
    gxt = np.zeros((n_x, xt.shape[1]), dtype=xt.dtype)  # (in, batch)
    _backward_rows(xt, transpose(gy), f, fd, aff, m, idx, kinds, need_x, gxt, gaff)
    for s in range(gx.shape[0]):
        for i in range(n_x):
            gx[s, i] = gxt[i, s]
