"""Compiling the CPU kernels before their first timed use: :func:`warm_up`.

On a cold JIT cache (the first run after an install or an edit of :mod:`kanlab.kernels.cpu`) the
first call of each kernel compiles it: measured on the 2-core development machine, ~10 s for the forward kernel,
~14 s for the coefficient gradient and ~5 s for the input gradient per dtype, idle (two to three
times that under load). Counted inside a training run, that made the first trials' time per step
~50x the warm one. :func:`warm_up` makes those first calls on a tiny problem, through the same
entry points and with the same argument types as a layer's calls (:mod:`~kanlab.kernels.cpu.api`),
so that a run can compile (or load from the cache) before its clock starts, say that it is
compiling, and record how long it took.

Parts (:data:`PARTS`): ``forward`` (the forward kernel), ``grad_weight`` (the coefficient and scale
gradients), ``grad_x`` (the input gradient); a training step runs all three. :data:`BATCH_PARTS`:
``batch_forward`` and ``batch_backward``, the fused kernels of a model batch's layers
(:mod:`~kanlab.kernels.cpu_batched_layer`, ~10 s together, float64, idle; and the MLP batch's
:mod:`~kanlab.kernels.cpu_batched_mlp`; ``batch_backward`` also the fused training step of
:mod:`~kanlab.kernels.cpu_batched_loss`, ~12 s more; ``batch_forward`` also the MLP batch's fused
training step, :mod:`~kanlab.kernels.cpu_batched_mlp_loss`, and the batched LBFGS direction,
:mod:`~kanlab.kernels.cpu_lbfgs`), which ``fit_batch`` and a batched sweep warm as well;
``fit`` does not need them. Numba compiles under
one lock per process, so one process compiles one kernel at a time: to use several cores, warm
different parts in different processes, which then load the others' from the JIT cache
(:mod:`kanlab.bench.warm` does this for a sweep's worker processes).

What is warmed is what this process runs: with several torch threads, the OpenMP team's entry point
for the dtype (it holds the three kernels: the first part compiles it, the others find it done),
else the kernels themselves. What compiles is seen through Numba's event API (``numba:compile``): loading
from the cache raises no event. This module imports Numba only when it warms something:
:class:`WarmUp` and the messages are there without it. (It is not in the ``cpu`` package because
an edit of any module there invalidates the compiled kernels, see :mod:`kanlab.kernels.cpu.tuning`.)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from kanlab.kernels.backends import FAST_DTYPES, kernels_of, select_backend

__all__ = [
    "ALL_PARTS",
    "BATCH_PARTS",
    "COMPILING",
    "PARTS",
    "WarmUp",
    "compiled_message",
    "warm_up",
]

PARTS = ("forward", "grad_weight", "grad_x")
BATCH_PARTS = ("batch_forward", "batch_backward")
ALL_PARTS = PARTS + BATCH_PARTS
COMPILING = "compiling CPU kernels (first run only)..."
_READY: set[tuple[torch.dtype, str, bool]] = set()  # (dtype, part, on the team) warmed here
_LOCK = threading.Lock()


def compiled_message(seconds: float) -> str:
    """The line that follows :data:`COMPILING` once the kernels are compiled."""
    return f"compiled in {seconds:.1f} s"


@dataclass(frozen=True)
class WarmUp:
    """What :func:`warm_up` did."""

    seconds: float  # spent in warm_up: compiling, loading from the JIT cache, tiny calls
    cold: tuple[str, ...] = ()  # the parts whose kernels were not in the cache (compiled, or not)


class _NotCached(Exception):
    """Raised at the start of a compilation that a probe (``compile=False``) refuses."""


def _watch(refuse: bool, on_first: Callable[[], None] | None):
    """A listener that sees the compilations of Numba functions in this process (never the loads
    from the cache): counts them and calls ``on_first`` at the first one, or refuses every one."""
    from numba.core import event

    class Watch(event.Listener):
        count = 0

        def on_start(self, _event: event.Event) -> None:
            if refuse:
                raise _NotCached
            self.count += 1
            if self.count == 1 and on_first is not None:
                on_first()

        def on_end(self, _event: event.Event) -> None:
            pass

    return Watch()


def _tiny_problem(dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """x (2, 1), knots (1, 12) (G=5, k=3, uniform), weight (1, 8, 1), scale (1, 1), grad_y (2, 1):
    the argument types of every layer call in this dtype (sizes, k and the grid kind are values)."""
    x = torch.tensor([[-0.5], [0.5]], dtype=dtype)
    knots = torch.linspace(-2.2, 2.2, 12, dtype=dtype).reshape(1, 12)
    weight = torch.ones(1, 8, 1, dtype=dtype)
    return x, knots, weight, torch.ones(1, 1, dtype=dtype), torch.ones(2, 1, dtype=dtype)


def _batch_call(part: str, dtype: torch.dtype) -> None:
    """One model batch layer (M = 1, G = 5, k = 3, SiLU) through the fused kernels, and one
    fused MLP hidden layer (M = 1, 1 -> 1, SiLU)."""
    from kanlab.kernels.cpu_batched_layer import kan_layer

    x, knots, weight, scale, _ = _tiny_problem(dtype)
    coef = weight.unsqueeze(0).requires_grad_(part == "batch_backward")
    y = kan_layer(x, knots.unsqueeze(0), coef, scale.unsqueeze(0), scale.unsqueeze(0),
                  scale.unsqueeze(0), torch.ones(1, dtype=torch.bool), spline_order=3,
                  base_activation="silu")  # fmt: skip
    if part == "batch_backward":
        y.sum().backward()
        # fit_batch's fused training step (kanlab.kernels.cpu_batched_loss): the same layer, MSE
        from kanlab.kernels.cpu_batched_loss import mse_and_grads

        kn, u = knots.unsqueeze(0), torch.ones(1, dtype=torch.bool)
        mse_and_grads(x, x, knots=[kn], coef=[coef], scale_spline=[scale.unsqueeze(0)],
                      scale_base=[scale.unsqueeze(0)], mask=[scale.unsqueeze(0)], uniform=[u],
                      spline_order=3, base_activation="silu")  # fmt: skip
    # the MLP batch's fused hidden layer (kanlab.kernels.cpu_batched_mlp): x is data, as in a
    # first layer (its backward is the one-pass parameter-gradient kernel)
    from kanlab.kernels.cpu_batched_mlp import linear_act

    w = torch.ones(1, 1, 1, dtype=dtype, requires_grad=part == "batch_backward")
    h = linear_act(x, w, torch.zeros(1, 1, dtype=dtype), activation="silu")
    if part == "batch_backward":
        h.sum().backward()
    else:  # (the lighter part): the MLP batch's fused training step and the batched LBFGS
        # direction (kanlab.kernels.cpu_batched_mlp_loss, kanlab.kernels.cpu_lbfgs)
        import numpy as np

        from kanlab.kernels.cpu_batched_mlp_loss import mse_and_grads as mlp_mse_and_grads
        from kanlab.kernels.cpu_lbfgs import two_loop

        w1 = torch.ones(1, 1, 1, dtype=dtype)
        mlp_mse_and_grads(x, x, weights=[w1, w1], biases=[w1[0], w1[0]], activation="silu")
        g = np.ones((1, 2), dtype=x.numpy().dtype)
        pairs = np.ones((1, 1, 2), dtype=g.dtype)
        one = np.ones(1, dtype=np.int64)
        two_loop(g, pairs, pairs, np.zeros((1, 1), dtype=np.int64), np.ones((1, 1)), one,
                 np.ones(1), one - 1, g.copy())  # fmt: skip


def _call(part: str, dtype: torch.dtype) -> None:
    from kanlab.kernels.cpu import tuning

    if part in BATCH_PARTS:
        _batch_call(part, dtype)
        return
    api = kernels_of("numba")  # kanlab.kernels.cpu.api (a BackendError if it does not import)
    x, knots, weight, scale, gy = _tiny_problem(dtype)
    if part == "forward":
        api.forward(x, knots, weight, 3, True, scale)
    elif part == "grad_weight":
        api.backward(gy, x, knots, weight, scale, 3, True, False, True)
        tuning._large_table(weight.numpy())  # backward's choice of the fused pass (both wanted)
    else:
        api.backward(gy, x, knots, weight, scale, 3, True, True, False)


def _one_thread_call(part: str, dtype: torch.dtype) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the kernels themselves, not the team's entry point
    try:
        _call(part, dtype)
    finally:
        torch.set_num_threads(threads)


def _calls(team: bool, compile: bool) -> Callable[[str, torch.dtype], None]:
    """How to call a part: on the path this process runs (the team's entry point with several
    torch threads, else the kernels); a probe of a process on the team calls the kernels (one
    thread for that while): it refuses compilations, which the team's entry point would start
    inside its own (and Numba reports as errors of that one)."""
    return _one_thread_call if team and not compile else _call


def warm_up(
    dtype: torch.dtype = torch.float32,
    parts: Sequence[str] | None = None,
    *,
    compile: bool = True,
    notify: Callable[[str], None] | None = None,
) -> WarmUp:
    """Compile (or load from Numba's cache) the CPU kernels that layer calls in ``dtype`` run, in
    this process, before anything is timed; a no-op for parts already warmed here. Returns what
    it did: seconds spent, the parts that were not in the cache.

    ``parts``: some of :data:`ALL_PARTS` (default: :data:`PARTS`, what ``fit`` runs).
    ``compile=False`` loads what is cached and compiles nothing: the other parts are returned in
    ``cold`` (a probe). ``notify`` gets
    "compiling CPU kernels (first run only)..." when a compilation starts and "compiled in 41.2 s"
    at the end; nothing when everything came from the cache. A no-op (``WarmUp(0.0)``) when CPU
    calls in this dtype do not run the Numba kernels (Numba not installed, another backend
    forced, another dtype).
    """
    parts = PARTS if parts is None else tuple(parts)
    unknown = [p for p in parts if p not in ALL_PARTS]
    if unknown:
        raise ValueError(f"unknown kernel part(s) {unknown}; valid: {', '.join(ALL_PARTS)}")
    if dtype not in FAST_DTYPES or select_backend(torch.empty(1, 1, dtype=dtype)).name != "numba":
        return WarmUp(0.0)
    start = time.perf_counter()
    kernels_of("numba")  # imported (and Numba with it), or a BackendError saying why not
    from numba.core import event

    from kanlab.kernels.cpu.threads import _uses_team

    team = _uses_team(torch.get_num_threads())
    call = _calls(team, compile)
    cold = []
    say = None if notify is None else (lambda: notify(COMPILING))
    with _LOCK:
        watch = _watch(refuse=not compile, on_first=say)
        with event.install_listener("numba:compile", watch):
            for part in parts:
                key = (dtype, part, call is _call and team)  # on the team or not
                if key in _READY:
                    continue
                before = watch.count
                try:
                    call(part, dtype)
                except _NotCached:
                    cold.append(part)
                    continue
                if watch.count > before:
                    cold.append(part)
                _READY.add(key)
    seconds = time.perf_counter() - start
    if watch.count and notify is not None:
        notify(compiled_message(seconds))
    return WarmUp(seconds=seconds, cold=tuple(cold))
