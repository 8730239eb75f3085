"""The L-BFGS two-loop recursion of many models in one Numba call: the vector work of
:class:`kanlab.train.batched_optim.BatchedLBFGS`'s new directions on CPU.

Why: in torch the recursion is ~4 small tensor operations per curvature pair and loop (history 10:
~80 operations per direction), each a few microseconds of dispatch for vectors of a few hundred
entries. Profiled on the quick suite (``kanlab compare``, serial, process CPU time), the batched
two-loop was ~24% of training time; here a direction of every waiting model is one call.

Arithmetic: model m's recursion is torch's (``q = -g``; newest pair first ``a_i = ro_i (s_i . q)``,
``q -= a_i y_i``; ``r = h_diag q``; oldest first ``b_i = ro_i (y_i . r)``, ``r += (a_i - b_i)
s_i``), with each dot product summed in order in float64 and the vector held in float64 (float32
models: their vectors are rounded once, at the end). So float64 results equal the torch path to
rounding (dot products summed in another order), float32 ones are the float64 recursion rounded.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from kanlab.kernels.cpu.tuning import _CACHE

__all__ = ["two_loop"]


@njit(nogil=True, cache=_CACHE, error_model="numpy")
def two_loop(g, dirs, stps, slots, ros, counts, h_diag, rows, out):  # pragma: no cover - compiled
    """For each model m in ``rows``: ``out[m] = -H_m g[m]``, H_m its L-BFGS inverse-Hessian
    estimate from its ``counts[m]`` curvature pairs, newest first: pair a is
    ``(dirs[m, slots[m, a]], stps[m, slots[m, a]])`` (y, s) with ``ros[m, a] = 1 / (y . s)``, and
    ``h_diag[m]`` the initial scaling. g, out (M, n); dirs, stps (M, H, n); slots (M, H) int64;
    ros (M, H) and h_diag (M,) float64; counts (M,) and rows int64. Other rows of out untouched."""
    n = g.shape[1]
    q = np.empty(n)
    al = np.empty(slots.shape[1])
    for i in range(rows.shape[0]):
        m = rows[i]
        k = counts[m]
        for p in range(n):
            q[p] = -g[m, p]
        for a in range(k):  # newest first
            sl = slots[m, a]
            acc = 0.0
            for p in range(n):
                acc += stps[m, sl, p] * q[p]
            al[a] = acc * ros[m, a]
            for p in range(n):
                q[p] -= al[a] * dirs[m, sl, p]
        h = h_diag[m]
        for p in range(n):
            q[p] *= h
        for a in range(k - 1, -1, -1):  # oldest first
            sl = slots[m, a]
            acc = 0.0
            for p in range(n):
                acc += dirs[m, sl, p] * q[p]
            c = al[a] - acc * ros[m, a]
            for p in range(n):
                q[p] += c * stps[m, sl, p]
        for p in range(n):
            out[m, p] = q[p]
