"""CPU backend: the sparse spline product as three Numba kernels run in parallel threads.

Why Numba: the work is three short loop nests (forward, coefficient gradient, input gradient) whose
inner loop is a contiguous ``out``-long multiply-add over k+1 coefficient rows picked per
(sample, input). PyTorch has no fused gather-multiply-accumulate for this, so a compiled loop is
needed. Numba is a well-kept, pip-installable LLVM JIT that compiles exactly such loops to vectorised
machine code (AVX2 FMA here), keeps its compiled code in an on-disk cache, releases the GIL inside
compiled code, and needs no C++ tool chain at install time (unlike a torch C++ extension) and no GPU
(unlike Triton). It stays an optional dependency (``kanlab[jit]``): without it the dispatcher falls
back to the reference path.

Parallelism: the kernels are serial ``@njit(nogil=True)`` loops over a range of their parallel
dimension, run in parallel chunks on *torch's own OpenMP team* when torch's libgomp is loaded
(``GOMP_parallel`` calls a Numba ``cfunc`` on each team thread; threads take chunks from an atomic
counter), else on a small thread pool; as many threads as ``torch.get_num_threads()``. Why not a
separate pool or ``@njit(parallel=True)``: torch's idle OpenMP workers spin after every torch op,
and threads of any other pool then fight them for the cores (a KAN step with a separate pool ran
~10x slower on 2 threads than on 1 until ``OMP_WAIT_POLICY=PASSIVE``); and ``parallel=True``'s
parfor lowering made a cold compile of the six specialisations take ~50 s instead of ~20 s, paid
by the test suite on every fresh checkout. Each chunk writes its own part of the output, so there
are no write conflicts and no atomics on data:

- forward: shares of samples; inside a share, blocks of samples and, per block, input by input so
  that one input's k+1-row slices of the coefficient table are reused by the whole block. The
  basis of (block, input) is computed once into small scratch arrays (branch-free and vectorised
  across samples for the uniform cubic case), then applied to the k+1 contiguous coefficient rows
  in one pass over ``out``.
- coefficient gradient: shares of inputs (a thread owns its inputs' rows of the table).
- input gradient: shares of samples; needs the derivative of the k+1 basis values.

The basis is recomputed from x in every kernel (O(k^2) per (sample, input), small next to the
O(k * out) product), so backward needs only x, the knots and the weight: nothing of size
batch * in * out or batch * in * (G + k) is ever allocated. Costs are O(batch * in * (k + 1) * out),
plus O(parameters) to zero the coefficient gradient, independent of G otherwise (a large G only
makes the coefficient rows of one input spread over more memory).

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

import ctypes
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from llvmlite import ir
from numba import carray, cfunc, njit, types
from numba.extending import intrinsic
from torch import Tensor

__all__ = ["backward", "backward_scaled", "forward"]


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
def _block_basis(xt, t0, h, knots, i, b0, b1, k, uniform, deriv, rows, lo, hi, uu, vals, dvals):
    """Sparse basis of samples b0..b1-1 of input i into scratch arrays (slot s = b - b0).

    ``rows[s] = j - k`` is the coefficient row of ``vals[0, s]`` (j: the interval of x); only
    ``lo[s] <= r <= hi[s]`` are existing basis functions (``lo > hi``: no spline part; ``lo = -1``:
    NaN input). With ``deriv``, ``dvals[r, s]`` is the derivative w.r.t. x.

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
        # The default layer, in four simple loops over the block that LLVM vectorises (one fused
        # loop with the NaN/outside branches stayed scalar: ~4x slower). uu: local coordinates.
        t0i = t0[i]
        hh = h[i]
        one = hh - hh + 1  # 1 in the array dtype (float32 maths stays float32); hh is finite
        top = n - 2  # last interval
        m = b1 - b0
        xs = xt[i, b0:b1]
        for s in range(m):
            pos = (xs[s] - t0i) / hh  # same formula as splines.sparse_basis
            fl = np.floor(pos)
            uu[s] = pos - fl
            rows[s] = np.int32(min(max(fl, -1.0), top + 1.0))  # interval, clamped to [-1, n - 1]
        for s in range(m):
            j = rows[s]
            inside = (j >= 0) & (j <= top)
            lo[s] = max(0, 3 - j) if inside else 1
            hi[s] = min(3, n_basis + 2 - j) if inside else 0
            rows[s] = j - 3
        for s in range(m):
            if xs[s] != xs[s]:  # NaN input
                lo[s] = -1
                hi[s] = -2
        sixth = one / 6
        for s in range(m):
            u = uu[s]
            w = one - u
            u2 = u * u
            vals[0, s] = w * w * w * sixth
            vals[1, s] = (3 * u2 * u - 6 * u2 + 4) * sixth
            vals[2, s] = (-3 * u2 * u + 3 * u2 + 3 * u + 1) * sixth
            vals[3, s] = u2 * u * sixth
        if deriv:
            half = one / 2
            inv_hh = one / hh
            for s in range(m):
                u = uu[s]
                w = one - u
                u2 = u * u
                dvals[0, s] = -half * w * w * inv_hh
                dvals[1, s] = (3 * half * u2 - 2 * u) * inv_hh
                dvals[2, s] = (-3 * half * u2 + u + half) * inv_hh
                dvals[3, s] = half * u2 * inv_hh
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
        # ---- the k+1 values (and derivatives); vals[r, s] belongs to B_{j-k+r}
        if uniform and k == 3:
            w = 1.0 - u
            u2 = u * u
            vals[0, s] = w * w * w / 6.0
            vals[1, s] = (3.0 * u2 * u - 6.0 * u2 + 4.0) / 6.0
            vals[2, s] = (-3.0 * u2 * u + 3.0 * u2 + 3.0 * u + 1.0) / 6.0
            vals[3, s] = u2 * u / 6.0
            if deriv:
                dvals[0, s] = -0.5 * w * w * inv_h
                dvals[1, s] = (1.5 * u2 - 2.0 * u) * inv_h
                dvals[2, s] = (-1.5 * u2 + u + 0.5) * inv_h
                dvals[3, s] = 0.5 * u2 * inv_h
            continue
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


_JIT = {"nogil": True, "cache": _CACHE, "fastmath": _FASTMATH}


@njit(**_JIT)
def _forward(xt, t0, h, knots, weight, scale, k, uniform, b_lo, b_hi, y):  # pragma: no cover
    """Rows b_lo..b_hi-1 of y (batch, out) = spline product; xt (in, batch), weight (in, G+k, out),
    scale (in, out): the per-edge factor applied to input i's coefficient columns.

    y must be zeroed. Blocks of samples, input by input inside a block: the input's k+1-row slices
    of the coefficient table are reused by the whole block while they are in cache.
    """
    n_in = xt.shape[0]
    n_out = weight.shape[2]
    block = min(_BLOCK, b_hi - b_lo)
    rows = np.empty(block, dtype=np.int32)
    lo = np.empty(block, dtype=np.int32)
    hi = np.empty(block, dtype=np.int32)
    uu = np.empty(block, dtype=weight.dtype)
    vals = np.empty((k + 1, block), dtype=weight.dtype)
    for b0 in range(b_lo, b_hi, block):
        b1 = min(b_hi, b0 + block)
        for i in range(n_in):
            _block_basis(
                xt, t0, h, knots, i, b0, b1, k, uniform, False, rows, lo, hi, uu, vals, vals
            )
            for b in range(b0, b1):
                s = b - b0
                row0 = rows[s]
                if lo[s] == 0 and hi[s] == 3:  # cubic, interior: one pass over out
                    v0 = vals[0, s]
                    v1 = vals[1, s]
                    v2 = vals[2, s]
                    v3 = vals[3, s]
                    for o in range(n_out):
                        y[b, o] += scale[i, o] * (
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
                        v = vals[r, s]
                        for o in range(n_out):
                            y[b, o] += v * weight[i, row0 + r, o] * scale[i, o]


@njit(**_JIT)
def _grad_weight(
    xt, t0, h, knots, gy, weight, scale, gs, k, uniform, i_lo, i_hi, gw
):  # pragma: no cover
    """Inputs i_lo..i_hi-1 of the coefficient gradient gw (in, G+k, out) and of the scale gradient
    gs (in, out); neither needs to be zeroed.

    Per input: zero its slab of gw (while it is about to be used: cache-hot), accumulate the
    unscaled gradient ``U[g, o] = sum_b B_g(x[b, i]) gy[b, o]``, then one pass over the slab gives
    ``gs[i, o] = sum_g U[g, o] weight[i, g, o]`` and ``gw[i, g, o] = U[g, o] scale[i, o]``.
    """
    batch = xt.shape[1]
    n_basis = gw.shape[1]
    n_out = gw.shape[2]
    block = min(_BLOCK, batch)
    rows = np.empty(block, dtype=np.int32)
    lo = np.empty(block, dtype=np.int32)
    hi = np.empty(block, dtype=np.int32)
    uu = np.empty(block, dtype=gw.dtype)
    vals = np.empty((k + 1, block), dtype=gw.dtype)
    for i in range(i_lo, i_hi):
        gw[i] = 0.0
        for b0 in range(0, batch, block):
            b1 = min(batch, b0 + block)
            _block_basis(
                xt, t0, h, knots, i, b0, b1, k, uniform, False, rows, lo, hi, uu, vals, vals
            )
            for b in range(b0, b1):
                s = b - b0
                row0 = rows[s]
                if lo[s] == 0 and hi[s] == 3:
                    v0 = vals[0, s]
                    v1 = vals[1, s]
                    v2 = vals[2, s]
                    v3 = vals[3, s]
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
                        v = vals[r, s]
                        for o in range(n_out):
                            gw[i, row0 + r, o] += v * gy[b, o]
        gs[i] = 0.0
        for g in range(n_basis):
            for o in range(n_out):
                u = gw[i, g, o]
                gs[i, o] += u * weight[i, g, o]
                gw[i, g, o] = u * scale[i, o]


@njit(**_JIT)
def _grad_x(xt, t0, h, knots, weight, scale, gy, k, uniform, b_lo, b_hi, gx):  # pragma: no cover
    """Rows b_lo..b_hi-1 of gx (batch, in) = input gradient."""
    n_in = xt.shape[0]
    n_out = weight.shape[2]
    block = min(_BLOCK, b_hi - b_lo)
    rows = np.empty(block, dtype=np.int32)
    lo = np.empty(block, dtype=np.int32)
    hi = np.empty(block, dtype=np.int32)
    uu = np.empty(block, dtype=weight.dtype)
    vals = np.empty((k + 1, block), dtype=weight.dtype)
    dvals = np.empty((k + 1, block), dtype=weight.dtype)
    zero = np.zeros(1, dtype=weight.dtype)  # a zero of the array dtype (float32 sums stay float32)
    for b0 in range(b_lo, b_hi, block):
        b1 = min(b_hi, b0 + block)
        for i in range(n_in):
            _block_basis(
                xt, t0, h, knots, i, b0, b1, k, uniform, True, rows, lo, hi, uu, vals, dvals
            )
            for b in range(b0, b1):
                s = b - b0
                row0 = rows[s]
                acc = zero[0]
                if lo[s] < 0:
                    acc = xt[i, b]  # NaN
                elif k == 0:
                    pass
                elif lo[s] == 0 and hi[s] == 3:
                    d0 = dvals[0, s]
                    d1 = dvals[1, s]
                    d2 = dvals[2, s]
                    d3 = dvals[3, s]
                    for o in range(n_out):
                        acc += (gy[b, o] * scale[i, o]) * (
                            d0 * weight[i, row0, o]
                            + d1 * weight[i, row0 + 1, o]
                            + d2 * weight[i, row0 + 2, o]
                            + d3 * weight[i, row0 + 3, o]
                        )
                else:
                    for r in range(lo[s], hi[s] + 1):
                        d = dvals[r, s]
                        part = zero[0]
                        for o in range(n_out):
                            part += weight[i, row0 + r, o] * (gy[b, o] * scale[i, o])
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


# ------------------------------------------------------------------- OpenMP bridge (torch's team)
# torch runs its own ops on an OpenMP team whose idle workers spin for a while after every parallel
# region. Threads of any other pool (ours, or Numba's own threading layers) then fight those
# spinning workers for the cores: measured on 2 cores, a KAN training step took ~13x longer with 2
# threads than with 1. So when torch's OpenMP runtime (libgomp) is found in the process, the kernels
# run *on torch's team*: ``GOMP_parallel`` calls a Numba ``cfunc`` on every team thread, and the
# threads take chunks of the range from a shared atomic counter. Elsewhere (no libgomp: macOS,
# Windows, other builds) the thread pool above is used.

_SLOTS = 48  # int64 parameter block: 8 header slots, then 4 per array (address, shape)


@intrinsic
def _as_pointer(typingctx, address):  # pragma: no cover - compiled
    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(types.voidptr))

    return types.voidptr(types.int64), codegen


@intrinsic
def _fetch_add(typingctx, address, value):  # pragma: no cover - compiled
    def codegen(context, builder, signature, args):
        pointer = builder.inttoptr(args[0], ir.IntType(64).as_pointer())
        return builder.atomic_rmw("add", pointer, args[1], "monotonic")

    return types.int64(types.int64, types.int64), codegen


@njit(cache=_CACHE)
def _arr1(p, m, dt):  # pragma: no cover - compiled
    return carray(_as_pointer(p[8 + 4 * m]), (p[9 + 4 * m],), dt)


@njit(cache=_CACHE)
def _arr2(p, m, dt):  # pragma: no cover - compiled
    return carray(_as_pointer(p[8 + 4 * m]), (p[9 + 4 * m], p[10 + 4 * m]), dt)


@njit(cache=_CACHE)
def _arr3(p, m, dt):  # pragma: no cover - compiled
    q = 8 + 4 * m
    return carray(_as_pointer(p[q]), (p[q + 1], p[q + 2], p[q + 3]), dt)


@njit(cache=_CACHE)
def _run(p, dt):  # pragma: no cover - compiled
    """One team thread: take chunks [lo, lo + chunk) of range(n) until none is left."""
    kind = p[6]
    xt, t0, h, knots = _arr2(p, 0, dt), _arr1(p, 1, dt), _arr1(p, 2, dt), _arr2(p, 3, dt)
    k, uniform = p[3], p[4] != 0
    n, chunk = p[1], p[2]
    while True:
        lo = _fetch_add(p[5], chunk)
        if lo >= n:
            return
        hi = min(lo + chunk, n)
        if kind == 0:
            w, sc, y = _arr3(p, 4, dt), _arr2(p, 5, dt), _arr2(p, 6, dt)
            _forward(xt, t0, h, knots, w, sc, k, uniform, lo, hi, y)
        elif kind == 1:
            gy, w, sc, gs = _arr2(p, 4, dt), _arr3(p, 5, dt), _arr2(p, 6, dt), _arr2(p, 7, dt)
            _grad_weight(xt, t0, h, knots, gy, w, sc, gs, k, uniform, lo, hi, _arr3(p, 8, dt))
        else:
            w, sc, gy, gx = _arr3(p, 4, dt), _arr2(p, 5, dt), _arr2(p, 6, dt), _arr2(p, 7, dt)
            _grad_x(xt, t0, h, knots, w, sc, gy, k, uniform, lo, hi, gx)


@cfunc(types.void(types.voidptr), cache=_CACHE)
def _team_entry(data):  # pragma: no cover - compiled
    p = carray(data, (_SLOTS,), np.int64)
    if p[7] == 4:
        _run(p, np.float32)
    else:
        _run(p, np.float64)


def _find_gomp():  # -> ctypes function GOMP_parallel of torch's OpenMP runtime, or None
    if os.environ.get("KANLAB_CPU_THREADS") == "pool":
        return None
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "libgomp" in line and "/" in line}
    except OSError:
        return None
    torch_dir = os.path.dirname(torch.__file__)
    for path in sorted(paths, key=lambda q: not q.startswith(torch_dir)):  # torch's first
        try:
            function = ctypes.CDLL(path).GOMP_parallel
        except (OSError, AttributeError):
            continue
        function.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
        function.restype = None
        return function
    return None


_GOMP = _find_gomp()
_GOMP_PID = os.getpid()  # libgomp's team does not survive fork: children use the thread pool
_KIND = {_forward: 0, _grad_weight: 1, _grad_x: 2}


def _team(kernel, args: tuple, n: int, n_threads: int) -> None:
    """Run ``kernel`` over range(n) on torch's OpenMP team (see the section comment)."""
    *arrays, out = (a for a in args if isinstance(a, np.ndarray))
    k, uniform = (a for a in args if not isinstance(a, np.ndarray))
    arrays.append(out)
    p = np.zeros(_SLOTS, dtype=np.int64)
    chunk = max(1, -(-n // (2 * n_threads)))
    p[1:5] = (n, chunk, k, int(uniform))
    p[5] = p.ctypes.data  # address of the atomic counter p[0]
    p[6] = _KIND[kernel]
    p[7] = out.dtype.itemsize
    for m, a in enumerate(arrays):
        assert a.flags.c_contiguous and a.dtype == out.dtype
        p[8 + 4 * m] = a.ctypes.data
        p[9 + 4 * m : 9 + 4 * m + a.ndim] = a.shape
    _GOMP(_team_entry.address, p.ctypes.data, n_threads, 0)


def _grid(x: Tensor, knots: Tensor) -> tuple[np.ndarray, ...]:
    """Arrays shared by the kernels: xt (in, batch), t0 (in,), h (in,), knots (in, G+2k+1)."""
    n = knots.shape[1]
    knots = knots.detach().contiguous()
    t0 = knots[:, 0].contiguous()
    h = (knots[:, -1] - t0) / (n - 1)  # same formula as splines.sparse_basis
    xt = x.detach().T.contiguous()
    return xt.numpy(), t0.numpy(), h.numpy(), knots.numpy()


def _dispatch(kernel, args: tuple, n: int, n_threads: int) -> None:
    if n_threads <= 1:
        *inputs, out = args
        kernel(*inputs, 0, n, out)
    elif _GOMP is not None and os.getpid() == _GOMP_PID:
        _team(kernel, args, n, n_threads)
    else:
        _parallel(kernel, args, n, n_threads)


def _scale_array(scale: Tensor | None, weight: Tensor) -> np.ndarray:
    """The per-edge scale (in, out) as a contiguous array; ones when there is none."""
    if scale is None:
        return np.ones((weight.shape[0], weight.shape[2]), dtype=weight.numpy().dtype)
    return scale.detach().contiguous().numpy()


def forward(
    x: Tensor,
    knots: Tensor,
    weight: Tensor,
    spline_order: int,
    uniform: bool,
    scale: Tensor | None = None,
) -> Tensor:
    """x (batch, in), knots (in, G+2k+1), weight (in, G+k, out), scale (in, out) or None
    -> y (batch, out) with the coefficient table ``weight * scale[:, None, :]``."""
    xt, t0, h, kn = _grid(x, knots)
    w = weight.detach().contiguous()
    y = torch.zeros(x.shape[0], w.shape[2], dtype=x.dtype)
    if x.shape[0] > 0:
        args = (xt, t0, h, kn, w.numpy(), _scale_array(scale, w), spline_order, uniform, y.numpy())
        _dispatch(_forward, args, x.shape[0], _n_threads())
    return y


def backward_scaled(
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
    """Gradients w.r.t. x (batch, in), weight (in, G+k, out) and scale (in, out) of
    ``sum(grad_y * y)``; the scale gradient comes with the weight gradient (None without scale)."""
    xt, t0, h, kn = _grid(x, knots)
    gy = grad_y.detach().contiguous().numpy()
    w = weight.detach().contiguous()
    sc = _scale_array(scale, w)
    n_threads = _n_threads()
    gx = gw = gs = None
    if need_weight:
        if x.shape[0] > 0:
            gw = torch.empty(weight.shape, dtype=weight.dtype)  # zeroed by the kernel
            gs = torch.empty(weight.shape[0], weight.shape[2], dtype=weight.dtype)
            args = (xt, t0, h, kn, gy, w.numpy(), sc, gs.numpy(), spline_order, uniform)
            _dispatch(_grad_weight, (*args, gw.numpy()), x.shape[1], n_threads)
        else:
            gw = torch.zeros(weight.shape, dtype=weight.dtype)
            gs = torch.zeros(weight.shape[0], weight.shape[2], dtype=weight.dtype)
    if need_x:
        gx = torch.zeros(x.shape, dtype=x.dtype)
        if x.shape[0] > 0:
            args = (xt, t0, h, kn, w.numpy(), sc, gy, spline_order, uniform, gx.numpy())
            _dispatch(_grad_x, args, x.shape[0], n_threads)
    return gx, gw, (gs if scale is not None else None)


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
    gx, gw, _ = backward_scaled(
        grad_y, x, knots, weight, None, spline_order, uniform, need_x, need_weight
    )
    return gx, gw
