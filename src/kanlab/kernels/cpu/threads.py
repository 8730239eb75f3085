"""How the CPU kernels run in parallel: shares of a range on torch's own OpenMP team when torch's
libgomp is loaded (:func:`_team`), else on a small thread pool (:func:`_parallel`); as many
threads as ``torch.get_num_threads()``. :func:`_dispatch` picks one.
"""

from __future__ import annotations

import array
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

from kanlab.kernels.cpu.backward import _grad_weight, _grad_x
from kanlab.kernels.cpu.forward import _forward
from kanlab.kernels.cpu.tuning import _CACHE, _large_grid

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
    """One team thread: take chunks [lo, lo + chunk) of range(n) until none is left.

    Two chunks per thread balance the load when a thread is held up; but a sample-parallel kernel
    (forward, input gradient) on a large grid reads the whole coefficient table once per chunk,
    so there each thread takes one chunk: measured on case A at G=500 (2 threads), a training
    step 0.80x the time of two chunks per thread (0.75x on case B); no change at G=5."""
    kind = p[6]
    x, t0, h, knots = _arr2(p, 0, dt), _arr1(p, 1, dt), _arr1(p, 2, dt), _arr2(p, 3, dt)
    k, uniform = p[3], p[4] != 0
    n, n_threads = p[1], p[2]
    per_thread = 1 if kind != 1 and _large_grid(_arr3(p, 4, dt)) else 2  # slot 4: the weight
    chunk = max(1, -(-n // (per_thread * n_threads)))
    while True:
        lo = _fetch_add(p[5], chunk)
        if lo >= n:
            return
        hi = min(lo + chunk, n)
        if kind == 0:
            w, sc, y = _arr3(p, 4, dt), _arr2(p, 5, dt), _arr2(p, 6, dt)
            _forward(x, t0, h, knots, w, sc, k, uniform, lo, hi, y)
        elif kind == 1:
            gy, w, sc, gs = _arr2(p, 4, dt), _arr3(p, 5, dt), _arr2(p, 6, dt), _arr2(p, 7, dt)
            gx, gw = _arr2(p, 8, dt), _arr3(p, 9, dt)
            _grad_weight(x, t0, h, knots, gy, w, sc, gs, gx, k, uniform, lo, hi, gw)
        else:
            w, sc, gy, gx = _arr3(p, 4, dt), _arr2(p, 5, dt), _arr2(p, 6, dt), _arr2(p, 7, dt)
            _grad_x(x, t0, h, knots, w, sc, gy, k, uniform, lo, hi, gx)


def _team_entry32(data):  # pragma: no cover - compiled
    _run(carray(data, (_SLOTS,), np.int64), np.float32)


def _team_entry64(data):  # pragma: no cover - compiled
    _run(carray(data, (_SLOTS,), np.int64), np.float64)


# The team's entry points, one per dtype (by element size), each compiled (or loaded from the JIT
# cache) on its first use: decorated at import, one entry for both dtypes compiled the three kernels
# twice over in every process that imported this module (~75 s of a cold first run, on 2 cores),
# also in processes that never run on the team (one torch thread: the sweep's workers) or never
# in float64.
_TEAM_ENTRIES = {4: _team_entry32, 8: _team_entry64}
_TEAM_COMPILED: dict[int, object] = {}
_TEAM_LOCK = threading.Lock()


def _team_entry(itemsize: int) -> int:
    """The address of the team's entry point for arrays of ``itemsize`` bytes per element."""
    entry = _TEAM_COMPILED.get(itemsize)
    if entry is None:
        with _TEAM_LOCK:
            entry = _TEAM_COMPILED.get(itemsize)
            if entry is None:
                entry = cfunc(types.void(types.voidptr), cache=_CACHE)(_TEAM_ENTRIES[itemsize])
                _TEAM_COMPILED[itemsize] = entry
    return entry.address


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
    """Run ``kernel`` over range(n) on torch's OpenMP team (see the section comment); ``args`` are
    the kernel's arguments with tensors for arrays (addresses from ``data_ptr``: a numpy array's
    ``.ctypes.data`` cost ~1.5 us each, ~20 us per call in all)."""
    tensors = [a for a in args if isinstance(a, Tensor)]
    k, uniform = (a for a in args if not isinstance(a, Tensor))
    out = tensors[-1]
    slots = [0, n, n_threads, k, int(uniform), 0, _KIND[kernel], out.element_size()]
    for a in tensors:  # C-contiguous, of one dtype: the callers below make them so
        shape = a.shape
        slots.append(a.data_ptr())
        slots.extend(shape)
        slots.extend((0,) * (3 - len(shape)))
    slots.extend((0,) * (_SLOTS - len(slots)))
    p = array.array("q", slots)  # int64; a torch or numpy array from a list cost 2-8 us
    address = p.buffer_info()[0]
    p[5] = address  # of the atomic counter p[0]
    _GOMP(_team_entry(out.element_size()), address, n_threads, 0)


def _uses_team(n_threads: int) -> bool:
    """Whether :func:`_dispatch` runs the kernels on torch's OpenMP team (else on the kernels
    themselves: serially, or in the thread pool)."""
    return n_threads > 1 and _GOMP is not None and os.getpid() == _GOMP_PID


def _dispatch(kernel, args: tuple, n: int, n_threads: int) -> None:
    """``kernel(*args, 0, n, out)`` in shares of range(n); tensors in ``args`` are the kernel's
    arrays (the last one is the output)."""
    if _uses_team(n_threads):
        _team(kernel, args, n, n_threads)
        return
    *inputs, out = (a.numpy() if isinstance(a, Tensor) else a for a in args)
    if n_threads <= 1:
        kernel(*inputs, 0, n, out)
    else:
        _parallel(kernel, (*inputs, out), n, n_threads)
