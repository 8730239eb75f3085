"""CPU kernels for the memory-bound parts of a layer's symbolic edges (``c * f(a * x + b)``).

Why: evaluated with torch ops alone, every symbolic edge costs about a dozen full passes over an
(edges, batch) slab (gather, ``a*x``, ``+ b``, ``f``, ``* c``, index-add, and twice as many in
backward, including the batch reductions for the a, b, c gradients), each slab freshly allocated;
on a CPU that memory traffic, not the arithmetic, made symbolic edges train two to three times
slower than spline edges (which run fused Numba kernels). The function values themselves stay
with torch (its vectorised transcendental functions are 2-4x faster than scalar libm calls from
compiled loops); everything around them is one compiled pass:

- :func:`affine`: ``z[e] = a[e] * x[in_e] + b[e]`` (the gather fused into the affine map);
- :func:`scatter`: ``y[out_e] += c[e] * f[e] + d[e]`` (scale, shift and index-add fused);
- :func:`backward`: from ``dL/dy``, ``f`` and ``f'``, in one pass: ``dL/dx`` (accumulated per input
  node) and the batch sums giving the a, b, c, d gradients.

Arrays are edge-major: ``x`` as (in, batch), ``y`` as (out, batch), per-edge slabs (E, batch).
Rounding: ``a*x + b`` is a multiply then an add (no fused multiply-add), as torch computes it; the
batch sums of :func:`backward` may be reassociated (vectorised), like the spline kernels' sums.
Serial ``nogil`` loops: one thread per call.
"""

from __future__ import annotations

from numba import njit

from kanlab.kernels.numba_cpu import _CACHE

__all__ = ["affine", "backward", "scatter"]


@njit(cache=_CACHE, nogil=True)
def affine(xt, a, b, e_in, z):  # pragma: no cover - compiled
    """z (E, batch) = a[e] * xt[e_in[e]] + b[e]; xt (in, batch)."""
    n = xt.shape[1]
    for e in range(z.shape[0]):
        i, ae, be = e_in[e], a[e], b[e]
        for s in range(n):
            z[e, s] = ae * xt[i, s] + be


@njit(cache=_CACHE, nogil=True)
def scatter(f, c, d, e_out, y):  # pragma: no cover - compiled
    """y (out, batch) += c[e] * f[e] + d[e] for each edge e; f (E, batch)."""
    n = y.shape[1]
    for e in range(f.shape[0]):
        o, ce, de = e_out[e], c[e], d[e]
        for s in range(n):
            y[o, s] += ce * f[e, s] + de


@njit(cache=_CACHE, nogil=True, fastmath={"reassoc"})
def backward(xt, gy, f, fd, a, c, e_in, e_out, need_x, gx, grads):  # pragma: no cover - compiled
    """Gradients of ``sum(gy * y)`` for ``y[out_e] += c[e] * f(a[e] * x[in_e] + b[e]) + d[e]``.

    f, fd (E, batch): f and f' at a*x + b. Writes grads (4, E) (the a, b, c, d gradients) and,
    when need_x, adds into gx (in, batch).
    """
    n = xt.shape[1]
    for e in range(f.shape[0]):
        i, o, ce = e_in[e], e_out[e], c[e]
        cae = ce * a[e]
        sa = sb = sc = sd = 0.0
        for s in range(n):
            g = gy[o, s]
            gd = g * fd[e, s]  # dL/dz / c
            sc += g * f[e, s]
            sd += g
            sa += gd * xt[i, s]
            sb += gd
            if need_x:
                gx[i, s] += gd * cae
        grads[0, e] = ce * sa
        grads[1, e] = ce * sb
        grads[2, e] = sc
        grads[3, e] = sd
