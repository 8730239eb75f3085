"""The CPU kernels compiled before a sweep's first trial: :func:`warm_executor`.

On a cold JIT cache (the first run after an install) every worker process compiled the CPU kernels
at its first KAN trial, all of them, at the same time as the others: on 2 cores, two workers spent
~75-170 s each compiling the same code while the progress bar, counting those trials, promised
an hour. Now, before any trial is submitted, one worker probes the cache (loading what is there);
when something is missing, this says so (``compiling CPU kernels (first run only)...`` on the
``kanlab.bench`` logger, which ``kanlab compare`` prints), has the workers compile *different*
parts at once (the kernels of a training step, split into about equal shares, see
:data:`_COST`), each writing Numba's cache, and then says how long it took. The trials start
after that, so the bar's estimate is not polluted; each worker loads what the others compiled
when its first KAN trial warms up (:func:`kanlab.kernels.warm_up`, called by ``fit`` before its
clock starts: the time is in the trial's ``extra["compile_time"]``, not its time per step).

Executors: local processes as above; the serial executor warms in this process; Dask workers
warm in their own processes at their first trial (their caches are theirs), not here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from concurrent.futures import Executor, ProcessPoolExecutor

import torch

from kanlab import kernels
from kanlab.bench.sweep import Trial
from kanlab.config import KANConfig, torch_dtype
from kanlab.kernels.warm import ALL_PARTS, COMPILING, compiled_message

__all__ = ["warm_executor"]

_log = logging.getLogger("kanlab.bench")
# Relative compile time of each part (measured: ~14 s coefficient gradient, ~10 s forward, ~5 s
# input gradient for float32 on the development machine, idle); shares are balanced on these.
# The fused kernels of model batches (a batched sweep's): ~4 s forward, ~6 s backward (float64).
_COST = {"grad_weight": 14.0, "forward": 10.0, "grad_x": 5.0, "batch_forward": 4.0,
         "batch_backward": 6.0}  # fmt: skip


def _dtypes(trials: Sequence[Trial]) -> list[torch.dtype]:
    """The dtypes of the KAN trials (a config without one: torch's default, as a worker builds)."""
    found = {
        torch_dtype(t.model.dtype) or torch.get_default_dtype()
        for t in trials
        if isinstance(t.model, KANConfig)
    }
    return sorted(found, key=str)


def _shares(parts: Sequence[tuple[torch.dtype, str]], n: int) -> list[list[tuple]]:
    """``parts`` in at most ``n`` shares of about equal compile time (largest first, each to the
    share with the least so far)."""
    shares: list[list[tuple]] = [[] for _ in range(max(1, min(n, len(parts))))]
    load = [0.0] * len(shares)
    for part in sorted(parts, key=lambda p: -_COST[p[1]]):
        j = load.index(min(load))
        shares[j].append(part)
        load[j] += _COST[part[1]]
    return shares


def _warm_share(share: Sequence[tuple[torch.dtype, str]]) -> float:
    """Compile one share of the kernels in this (worker) process; seconds spent."""
    start = time.perf_counter()
    for dtype, part in share:
        kernels.warm_up(dtype, (part,))
    return time.perf_counter() - start


def warm_executor(executor: Executor, trials: Sequence[Trial]) -> float | None:
    """Compile the CPU kernels ``trials`` will run before they are submitted to ``executor`` (see
    the module docstring); returns the seconds spent compiling, or None when nothing was compiled
    here (all in the cache already, no KAN trial, no Numba, or a remote executor)."""
    dtypes = _dtypes(trials)
    if not dtypes:
        return None
    from kanlab.bench.runner import SerialExecutor

    if isinstance(executor, SerialExecutor):
        start = time.perf_counter()
        cold = [kernels.warm_up(d, ALL_PARTS, notify=_log.info).cold for d in dtypes]
        return time.perf_counter() - start if any(cold) else None
    if not isinstance(executor, ProcessPoolExecutor):
        return None
    try:
        probes = [executor.submit(kernels.warm_up, d, ALL_PARTS, compile=False) for d in dtypes]
        cold = [
            (d, p) for d, probe in zip(dtypes, probes, strict=True) for p in probe.result().cold
        ]
        if not cold:
            return None
        _log.info(COMPILING)
        start = time.perf_counter()
        workers = getattr(executor, "_max_workers", None) or 1
        for share in [executor.submit(_warm_share, s) for s in _shares(cold, workers)]:
            share.result()
    except Exception as err:  # the trials then compile (or fail) on their own, and say why
        _log.warning(f"the CPU kernels were not compiled ahead of the trials: {err!r}")
        return None
    seconds = time.perf_counter() - start
    _log.info(compiled_message(seconds))
    return seconds
