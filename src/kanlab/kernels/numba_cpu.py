"""CPU backend: the sparse spline product as three parallel Numba kernels.

Why Numba: the work is three short loop nests (forward, coefficient gradient, input gradient) whose
inner loop is a contiguous ``out``-long multiply-add over k+1 coefficient rows picked per
(sample, input). PyTorch has no fused gather-multiply-accumulate for this, so a compiled loop is
needed. Numba is a well-kept, pip-installable LLVM JIT that compiles exactly such loops to vectorised
machine code, parallelises them with ``prange`` on the threading layer torch also uses (OpenMP), keeps
its compiled code in an on-disk cache, and needs no C++ tool chain at install time (unlike a torch C++
extension) and no GPU (unlike Triton). It stays an optional dependency (``kanlab[jit]``): without it
the dispatcher falls back to the reference path.

Kernels (each thread owns its outputs, so there are no write conflicts and no atomics):

- forward: parallel over blocks of samples; inside a block the loop runs input by input so that one
  input's coefficient table stays in cache while the block's samples read from it. The k+1 basis
  values of a (sample, input) are computed once, kept in a small scratch array, and applied to the
  k+1 contiguous coefficient rows in one pass over ``out``.
- coefficient gradient: parallel over inputs (a thread owns its inputs' rows of the table).
- input gradient: parallel over blocks of samples; needs the derivative of the k+1 basis values.

The basis is recomputed from x in every kernel (O(k^2) per (sample, input), negligible next to the
O(k * out) product), so backward needs only x, the knots and the weight: nothing of size
batch * in * out or batch * in * (G + k) is ever allocated. Costs are O(batch * in * (k + 1) * out),
plus O(parameters) to zero the coefficient gradient, independent of G otherwise.

Numerics follow :func:`kanlab.splines.sparse_basis` exactly in the choice of interval (same formula
for the uniform position, same half-open search for adapted grids), so values agree with the
reference to rounding. NaN inputs give NaN outputs and gradients; inputs outside the knot span give a
zero spline part and zero gradients. Floating-point flags: ``fastmath`` is limited to ``contract``
(fused multiply-add) and ``reassoc`` (lets the dot products of the input gradient vectorise); the flags
that would change NaN/inf semantics (``nnan``, ``ninf``, ``nsz``, ``arcp``, ``afn``) stay off.

JIT cache: compiled code is cached next to this file when that directory is writable, or in
``NUMBA_CACHE_DIR`` when that is set; on a read-only install without ``NUMBA_CACHE_DIR`` the cache is
off (nothing is written inside site-packages). Only float32 and float64 C-contiguous arrays are
compiled (two specialisations per kernel); k and the grid kind are run-time arguments.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from numba import njit
from torch import Tensor

__all__ = ["backward", "forward"]


def _cache_enabled() -> bool:
    if os.environ.get("NUMBA_CACHE_DIR"):
        return True
    here = os.path.dirname(os.path.abspath(__file__))
    cache_dir = os.path.join(here, "__pycache__")
    target = cache_dir if os.path.isdir(cache_dir) else here
    return os.access(target, os.W_OK)


_CACHE = _cache_enabled()
_FASTMATH = {"contract", "reassoc"}
# Samples per block: the basis of a block is computed into scratch arrays input by input, and the
# block's rows of y (block * out) stay in cache while the input's coefficient slices are applied.
_BLOCK = 512


@njit(cache=_CACHE, fastmath=_FASTMATH)
def _block_basis(xt, t0, h, knots, i, b0, b1, k, uniform, deriv, rows, lo, hi, vals, dvals):
    """Sparse basis of samples b0..b1-1 of input i into scratch arrays (slot s = b - b0).

    ``rows[s] = j - k`` is the coefficient row of ``vals[s, 0]`` (j: the interval of x); only
    ``lo[s] <= r <= hi[s]`` are existing basis functions (``lo > hi``: no spline part; ``lo = -1``:
    NaN input). With ``deriv``, ``dvals[s, r]`` is the derivative w.r.t. x.

    One call per (input, block of samples): helper calls per sample would cost reference-count
    updates on every array argument, which dominate at these sizes. The interval follows
    :func:`kanlab.splines.sparse_basis` exactly (same uniform position formula, same half-open
    search); the values come from the in-place triangular recursion, level by level with r
    descending so each level reads the previous one before overwriting it, and from a closed form
    for the uniform cubic case (the default layer).
    """
    n = knots.shape[1]
    n_basis = n - 1 - k
    inv_h = 1.0 / h[i]
    if uniform and k == 3:
        # The default layer, branch-free so that the loop vectorises across samples.
        t0i = t0[i]
        hh = h[i]
        for b in range(b0, b1):
            s = b - b0
            xv = xt[i, b]
            pos = (xv - t0i) / hh
            fl = np.floor(pos)
            inside = (fl >= 0) & (fl <= n - 2)
            j = np.int32(fl if inside else 0.0)
            rows[s] = j - 3
            lo[s] = max(0, 3 - j) if inside else (-1 if xv != xv else 1)
            hi[s] = min(3, n_basis + 2 - j) if inside else (-2 if xv != xv else 0)
            u = pos - fl
            w = 1.0 - u
            u2 = u * u
            vals[s, 0] = w * w * w / 6.0
            vals[s, 1] = (3.0 * u2 * u - 6.0 * u2 + 4.0) / 6.0
            vals[s, 2] = (-3.0 * u2 * u + 3.0 * u2 + 3.0 * u + 1.0) / 6.0
            vals[s, 3] = u2 * u / 6.0
            if deriv:
                dvals[s, 0] = -0.5 * w * w * inv_h
                dvals[s, 1] = (1.5 * u2 - 2.0 * u) * inv_h
                dvals[s, 2] = (-1.5 * u2 + u + 0.5) * inv_h
                dvals[s, 3] = 0.5 * u2 * inv_h
        return
    for b in range(b0, b1):
        s = b - b0
        xv = xt[i, b]
        rows[s] = 0
        lo[s] = 1
        hi[s] = 0
        if np.isnan(xv):
            lo[s] = -1
            hi[s] = -2
            continue
        # ---- interval j with t_j <= x < t_{j+1}; u is the local coordinate on uniform grids
        u = xv - xv
        if uniform:
            pos = (xv - t0[i]) / h[i]
            fl = np.floor(pos)
            if not (fl >= 0 and fl <= n - 2):
                continue
            j = int(fl)
            u = pos - fl
        else:
            if xv < knots[i, 0] or not xv < knots[i, n - 1]:
                continue
            j = 0  # invariant: knots[j] <= x < knots[top]
            top = n - 1
            while top - j > 1:
                mid = (j + top) // 2
                if knots[i, mid] <= xv:
                    j = mid
                else:
                    top = mid
        rows[s] = j - k
        lo[s] = max(0, k - j)
        hi[s] = min(k, n_basis - 1 - j + k)
        # ---- the k+1 values (and derivatives); vals[s, r] belongs to B_{j-k+r}
        if uniform and k == 3:
            w = 1.0 - u
            u2 = u * u
            vals[s, 0] = w * w * w / 6.0
            vals[s, 1] = (3.0 * u2 * u - 6.0 * u2 + 4.0) / 6.0
            vals[s, 2] = (-3.0 * u2 * u + 3.0 * u2 + 3.0 * u + 1.0) / 6.0
            vals[s, 3] = u2 * u / 6.0
            if deriv:
                dvals[s, 0] = -0.5 * w * w * inv_h
                dvals[s, 1] = (1.5 * u2 - 2.0 * u) * inv_h
                dvals[s, 2] = (-1.5 * u2 + u + 0.5) * inv_h
                dvals[s, 3] = 0.5 * u2 * inv_h
            continue
        vals[s, 0] = 1.0
        if deriv:
            dvals[s, 0] = 0.0
        for p in range(1, k + 1):
            last = deriv and p == k
            for r in range(p, -1, -1):
                lower = vals[s, r - 1] if r >= 1 else 0.0  # B_{a, p-1}
                upper = vals[s, r] if r <= p - 1 else 0.0  # B_{a+1, p-1}
                if uniform:  # cardinal recursion in u
                    vals[s, r] = ((u + (p - r)) * lower + ((r + 1) - u) * upper) / p
                    if last:
                        dvals[s, r] = (lower - upper) * inv_h
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
                vals[s, r] = new
                if last:
                    dvals[s, r] = p * (dl - du)


_JIT = {"nogil": True, "cache": _CACHE, "fastmath": _FASTMATH}


@njit(**_JIT)
def _forward(xt, t0, h, knots, weight, k, uniform, b_lo, b_hi, y):  # pragma: no cover - compiled
    """Rows b_lo..b_hi-1 of y (batch, out) = spline product; xt (in, batch), weight (in, G+k, out).

    y must be zeroed. Blocks of samples, input by input inside a block: the input's k+1-row slices
    of the coefficient table are reused by the whole block while they are in cache.
    """
    n_in = xt.shape[0]
    n_out = weight.shape[2]
    block = min(_BLOCK, b_hi - b_lo)
    rows = np.empty(block, dtype=np.int32)
    lo = np.empty(block, dtype=np.int32)
    hi = np.empty(block, dtype=np.int32)
    vals = np.empty((block, k + 1), dtype=weight.dtype)
    for b0 in range(b_lo, b_hi, block):
        b1 = min(b_hi, b0 + block)
        for i in range(n_in):
            _block_basis(xt, t0, h, knots, i, b0, b1, k, uniform, False, rows, lo, hi, vals, vals)
            for b in range(b0, b1):
                s = b - b0
                row0 = rows[s]
                if lo[s] == 0 and hi[s] == 3:  # cubic, interior: one pass over out
                    v0 = vals[s, 0]
                    v1 = vals[s, 1]
                    v2 = vals[s, 2]
                    v3 = vals[s, 3]
                    for o in range(n_out):
                        y[b, o] += (
                            v0 * weight[i, row0, o]
                            + v1 * weight[i, row0 + 1, o]
                            + v2 * weight[i, row0 + 2, o]
                            + v3 * weight[i, row0 + 3, o]
                        )
                elif lo[s] < 0:  # NaN input
                    for o in range(n_out):
                        y[b, o] = np.nan
                else:
                    for r in range(lo[s], hi[s] + 1):
                        v = vals[s, r]
                        for o in range(n_out):
                            y[b, o] += v * weight[i, row0 + r, o]


@njit(**_JIT)
def _grad_weight(xt, t0, h, knots, gy, k, uniform, i_lo, i_hi, gw):  # pragma: no cover - compiled
    """Inputs i_lo..i_hi-1 of gw (in, G+k, out) = coefficient gradient; gw must be zeroed."""
    batch = xt.shape[1]
    n_out = gw.shape[2]
    block = min(_BLOCK, batch)
    rows = np.empty(block, dtype=np.int32)
    lo = np.empty(block, dtype=np.int32)
    hi = np.empty(block, dtype=np.int32)
    vals = np.empty((block, k + 1), dtype=gw.dtype)
    for i in range(i_lo, i_hi):
        for b0 in range(0, batch, block):
            b1 = min(batch, b0 + block)
            _block_basis(xt, t0, h, knots, i, b0, b1, k, uniform, False, rows, lo, hi, vals, vals)
            for b in range(b0, b1):
                s = b - b0
                row0 = rows[s]
                if lo[s] == 0 and hi[s] == 3:
                    v0 = vals[s, 0]
                    v1 = vals[s, 1]
                    v2 = vals[s, 2]
                    v3 = vals[s, 3]
                    for o in range(n_out):
                        g = gy[b, o]
                        gw[i, row0, o] += v0 * g
                        gw[i, row0 + 1, o] += v1 * g
                        gw[i, row0 + 2, o] += v2 * g
                        gw[i, row0 + 3, o] += v3 * g
                elif lo[s] < 0:  # NaN input: NaN into the rows the reference would touch
                    for r in range(k + 1):
                        for o in range(n_out):
                            gw[i, r, o] += np.nan
                else:
                    for r in range(lo[s], hi[s] + 1):
                        v = vals[s, r]
                        for o in range(n_out):
                            gw[i, row0 + r, o] += v * gy[b, o]


@njit(**_JIT)
def _grad_x(xt, t0, h, knots, weight, gy, k, uniform, b_lo, b_hi, gx):  # pragma: no cover
    """Rows b_lo..b_hi-1 of gx (batch, in) = input gradient."""
    n_in = xt.shape[0]
    n_out = weight.shape[2]
    block = min(_BLOCK, b_hi - b_lo)
    rows = np.empty(block, dtype=np.int32)
    lo = np.empty(block, dtype=np.int32)
    hi = np.empty(block, dtype=np.int32)
    vals = np.empty((block, k + 1), dtype=weight.dtype)
    dvals = np.empty((block, k + 1), dtype=weight.dtype)
    zero = np.zeros(1, dtype=weight.dtype)  # a zero of the array dtype (float32 sums stay float32)
    for b0 in range(b_lo, b_hi, block):
        b1 = min(b_hi, b0 + block)
        for i in range(n_in):
            _block_basis(xt, t0, h, knots, i, b0, b1, k, uniform, True, rows, lo, hi, vals, dvals)
            for b in range(b0, b1):
                s = b - b0
                row0 = rows[s]
                acc = zero[0]
                if lo[s] < 0:
                    acc = xt[i, b]  # NaN
                elif k == 0:
                    pass
                elif lo[s] == 0 and hi[s] == 3:
                    d0 = dvals[s, 0]
                    d1 = dvals[s, 1]
                    d2 = dvals[s, 2]
                    d3 = dvals[s, 3]
                    for o in range(n_out):
                        acc += gy[b, o] * (
                            d0 * weight[i, row0, o]
                            + d1 * weight[i, row0 + 1, o]
                            + d2 * weight[i, row0 + 2, o]
                            + d3 * weight[i, row0 + 3, o]
                        )
                else:
                    for r in range(lo[s], hi[s] + 1):
                        d = dvals[s, r]
                        part = zero[0]
                        for o in range(n_out):
                            part += weight[i, row0 + r, o] * gy[b, o]
                        acc += d * part
                gx[b, i] = acc


# ---------------------------------------------------------------------------------------- driver
_POOL: ThreadPoolExecutor | None = None
_POOL_SIZE = 0
_POOL_LOCK = threading.Lock()


def _forget_pool_after_fork() -> None:
    # A forked child (process pools, data loaders) inherits the pool object but not its threads:
    # submitting to it would hang. Start afresh instead.
    global _POOL, _POOL_SIZE, _POOL_LOCK
    _POOL, _POOL_SIZE, _POOL_LOCK = None, 0, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_after_fork)


def _n_threads() -> int:
    # One knob for the user: the kernels use as many threads as torch is allowed to.
    return max(1, torch.get_num_threads())


def _parallel(kernel, args: tuple, n: int, n_threads: int) -> None:
    """Run ``kernel(*args, lo, hi, out)`` over contiguous shares of range(n), one per thread.

    The kernels release the GIL, so a plain thread pool runs them in parallel; each share writes
    its own part of the output (no write conflicts). The calling thread runs the first share.
    """
    global _POOL, _POOL_SIZE
    shares = min(n_threads, n)
    bounds = [n * t // shares for t in range(shares + 1)]
    *inputs, out = args
    if shares <= 1:
        kernel(*inputs, 0, n, out)
        return
    with _POOL_LOCK:
        if _POOL is None or _POOL_SIZE < shares - 1:
            if _POOL is not None:
                _POOL.shutdown(wait=False)
            _POOL = ThreadPoolExecutor(max_workers=shares - 1, thread_name_prefix="kanlab-cpu")
            _POOL_SIZE = shares - 1
        pool = _POOL
    futures = [
        pool.submit(kernel, *inputs, bounds[t], bounds[t + 1], out) for t in range(1, shares)
    ]
    kernel(*inputs, bounds[0], bounds[1], out)
    for f in futures:
        f.result()


def _grid(x: Tensor, knots: Tensor) -> tuple[np.ndarray, ...]:
    """Arrays shared by the kernels: xt (in, batch), t0 (in,), h (in,), knots (in, G+2k+1)."""
    n = knots.shape[1]
    knots = knots.detach().contiguous()
    t0 = knots[:, 0].contiguous()
    h = (knots[:, -1] - t0) / (n - 1)  # same formula as splines.sparse_basis
    xt = x.detach().T.contiguous()
    return xt.numpy(), t0.numpy(), h.numpy(), knots.numpy()


def forward(x: Tensor, knots: Tensor, weight: Tensor, spline_order: int, uniform: bool) -> Tensor:
    """x (batch, in), knots (in, G+2k+1), weight (in, G+k, out) -> y (batch, out)."""
    xt, t0, h, kn = _grid(x, knots)
    w = weight.detach().contiguous()
    y = torch.zeros(x.shape[0], w.shape[2], dtype=x.dtype)
    if x.shape[0] > 0:
        args = (xt, t0, h, kn, w.numpy(), spline_order, uniform, y.numpy())
        _parallel(_forward, args, x.shape[0], _n_threads())
    return y


def backward(
    grad_y: Tensor,
    x: Tensor,
    knots: Tensor,
    weight: Tensor,
    spline_order: int,
    uniform: bool,
    need_x: bool,
    need_weight: bool,
) -> tuple[Tensor | None, Tensor | None]:
    """Gradients w.r.t. x (batch, in) and weight (in, G+k, out) of ``sum(grad_y * y)``."""
    xt, t0, h, kn = _grid(x, knots)
    gy = grad_y.detach().contiguous().numpy()
    n_threads = _n_threads()
    gx = gw = None
    if need_weight:
        gw = torch.zeros(weight.shape, dtype=weight.dtype)
        if x.shape[0] > 0:
            args = (xt, t0, h, kn, gy, spline_order, uniform, gw.numpy())
            _parallel(_grad_weight, args, x.shape[1], n_threads)
    if need_x:
        gx = torch.zeros(x.shape, dtype=x.dtype)
        if x.shape[0] > 0:
            w = weight.detach().contiguous().numpy()
            args = (xt, t0, h, kn, w, gy, spline_order, uniform, gx.numpy())
            _parallel(_grad_x, args, x.shape[0], n_threads)
    return gx, gw
