"""The one seam through which all spline arithmetic of a layer goes.

A *backend* computes the spline product of a layer,
``y[b, o] = sum_i sum_g B_g(x[b, i]) * weight[i, g, o]`` with x ``(batch, in)``, knots
``(in, G+2k+1)`` and weight ``(in, G+k, out)`` (the coefficient table with the spline scales and the
edge mask already folded in, or, with the optional ``scale`` ``(in, out)``, the raw coefficient
table, the product then using ``weight[i, g, o] * scale[i, o]``: a backend that takes the scale
itself (``Backend.takes_scale``) spares the caller that parameter-sized product and its backward;
for any other backend the dispatcher folds it in). Backends must agree with
:mod:`kanlab.kernels.reference` in values and gradients (w.r.t. x, weight and scale); the tests
check every registered backend against it.

``set_backend(name)`` forces a backend for all later calls (``None`` or ``"auto"`` restores automatic
choice); automatic choice takes the first available backend, in registration order of preference,
that supports the device and dtype of the call, falling back to the reference.

The CPU kernels return coefficient gradients in memory they reuse once no tensor refers to it (no
page faults per step on large grids; see :mod:`kanlab.kernels.cpu.buffers`);
``clear_gradient_memory()`` lets that memory go.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from kanlab.kernels import reference, sparse

__all__ = [
    "Backend",
    "available_backends",
    "clear_gradient_memory",
    "edge_values",
    "get_backend",
    "register_backend",
    "select_backend",
    "set_backend",
    "spline_product",
]


def clear_gradient_memory() -> None:
    """Release the memory the CPU kernels keep for reuse as coefficient gradients (at most four
    arrays per gradient shape; an array still used by a tensor is freed with that tensor)."""
    from kanlab.kernels.cpu import buffers

    buffers.clear()


SplineProduct = Callable[[Tensor, Tensor, Tensor, int, bool], Tensor]


@dataclass(frozen=True)
class Backend:
    """A spline-product implementation."""

    name: str  # as passed to set_backend
    fn: SplineProduct  # (x, knots, weight, spline_order, uniform) -> (batch, out)
    available: Callable[[], bool]  # importable and usable on this machine
    supports: Callable[[Tensor], bool]  # can handle this input (device, dtype, size)
    priority: int = 0  # higher wins in automatic choice
    takes_scale: bool = False  # fn accepts a keyword ``scale`` (in, out) (see the module docstring)


_BACKENDS: dict[str, Backend] = {}
_BY_PRIORITY: tuple[Backend, ...] = ()  # _BACKENDS best first (ties: registration order)
_forced: str | None = None


def register_backend(backend: Backend) -> None:
    """Add (or replace) a backend."""
    global _BY_PRIORITY
    _BACKENDS[backend.name] = backend
    # Sorted here, not on every call: select_backend runs for every layer call (~10 us saved).
    _BY_PRIORITY = tuple(sorted(_BACKENDS.values(), key=lambda b: -b.priority))


# ---------------------------------------------------------------------------- backend registration
# reference: pure PyTorch, any device and dtype (the oracle and the fallback).
# numba: CPU float32/float64, compiled sparse kernels (optional dependency, kanlab[jit]).
# triton: CUDA float32/float64, Triton sparse kernels (needs triton and a GPU).
# The two fast backends are the same custom op (kanlab.kernels.sparse), whose kernel is chosen by
# the tensors' device. Availability is decided without importing the JIT (find_spec), so
# ``import kanlab`` stays light and torch.compile sees plain constants.

register_backend(
    Backend(
        name="reference",
        fn=reference.spline_product,
        available=lambda: True,
        supports=lambda x: True,
        priority=0,
        takes_scale=True,
    )
)

_FAST_DTYPES = (torch.float32, torch.float64)
_HAS_NUMBA = importlib.util.find_spec("numba") is not None
_HAS_TRITON = importlib.util.find_spec("triton") is not None
_cuda_ok: bool | None = None
# Below this many (sample, input) pairs automatic choice keeps the reference path on CPU. Measured
# (KANLinear forward + backward, 2 threads): the compiled path already wins at batch 1 x 2 inputs
# (fixed costs ~0.7 ms vs ~0.9 ms for the ~30 small torch ops of the reference), so it is 0.
NUMBA_MIN_PAIRS = 0


def _triton_available() -> bool:
    global _cuda_ok
    if _cuda_ok is None:
        _cuda_ok = _HAS_TRITON and torch.cuda.is_available()
    return _cuda_ok


def _fast_ok(x: Tensor, knots: Tensor, weight: Tensor, device_type: str) -> bool:
    """Whether the sparse op can take this call (else the reference path runs)."""
    return (
        x.device.type == device_type
        and x.dim() == 2
        and weight.dim() == 3
        and x.dtype in _FAST_DTYPES
        and knots.dtype == x.dtype
        and weight.dtype == x.dtype
        and knots.device == x.device
        and weight.device == x.device
        and not knots.requires_grad
    )


def _numba_product(
    x: Tensor,
    knots: Tensor,
    weight: Tensor,
    spline_order: int,
    uniform: bool,
    scale: Tensor | None = None,
) -> Tensor:
    if not _fast_ok(x, knots, weight, "cpu") or (
        scale is not None and (scale.dtype != x.dtype or scale.device != x.device)
    ):
        return reference.spline_product(x, knots, weight, spline_order, uniform, scale)
    return sparse.spline_product(x, knots, weight, spline_order, uniform, scale)


def _triton_product(
    x: Tensor, knots: Tensor, weight: Tensor, spline_order: int, uniform: bool
) -> Tensor:
    if not _fast_ok(x, knots, weight, "cuda"):
        return reference.spline_product(x, knots, weight, spline_order, uniform)
    return sparse.spline_product(x, knots, weight, spline_order, uniform)


register_backend(
    Backend(
        name="numba",
        fn=_numba_product,
        takes_scale=True,
        available=lambda: _HAS_NUMBA,
        supports=lambda x: (
            x.device.type == "cpu"
            and x.dtype in _FAST_DTYPES
            and x.dim() == 2
            and x.shape[0] * x.shape[1] >= NUMBA_MIN_PAIRS
        ),
        priority=10,
    )
)
register_backend(
    Backend(
        name="triton",
        fn=_triton_product,
        available=_triton_available,
        supports=lambda x: x.device.type == "cuda" and x.dtype in _FAST_DTYPES,
        priority=20,
    )
)


def available_backends() -> list[str]:
    """Names of the backends usable on this machine, best first."""
    return [b.name for b in _BY_PRIORITY if b.available()]


def set_backend(name: str | None) -> None:
    """Force a backend by name; ``None`` or ``"auto"`` returns to automatic choice."""
    global _forced
    if name is None or name == "auto":
        _forced = None
        return
    if name not in _BACKENDS:
        raise ValueError(f"unknown kernel backend {name!r}; known: {sorted(_BACKENDS)}")
    if not _BACKENDS[name].available():
        raise ValueError(
            f"kernel backend {name!r} is not available on this machine "
            f"(available: {available_backends()})"
        )
    _forced = name


def get_backend() -> str:
    """The forced backend's name, or ``"auto"``."""
    return _forced or "auto"


def select_backend(x: Tensor) -> Backend:
    """The backend a call with input ``x`` will use."""
    if _forced is not None:
        return _BACKENDS[_forced]
    for backend in _BY_PRIORITY:
        if backend.available() and backend.supports(x):
            return backend
    return _BACKENDS["reference"]


def spline_product(
    x: Tensor,
    knots: Tensor,
    weight: Tensor,
    spline_order: int,
    *,
    uniform: bool,
    scale: Tensor | None = None,
) -> Tensor:
    """Spline part of a layer: x ``(batch, in)`` -> ``(batch, out)``. See the module docstring.

    ``scale`` ``(in, out)`` (optional): per-edge factors of the coefficient table, i.e. the result
    equals the call with ``weight * scale[:, None, :]`` (values and gradients).
    """
    backend = select_backend(x)
    if scale is None:
        return backend.fn(x, knots, weight, spline_order, uniform)
    if scale.dim() != 2 or weight.dim() != 3 or scale.shape != (weight.shape[0], weight.shape[2]):
        raise ValueError(
            f"scale must have shape (in, out) = {(weight.shape[0], weight.shape[-1])} of the "
            f"weight {tuple(weight.shape)}, got {tuple(scale.shape)}"
        )
    if backend.takes_scale:
        return backend.fn(x, knots, weight, spline_order, uniform, scale=scale)
    return backend.fn(x, knots, weight * scale.unsqueeze(1), spline_order, uniform)


def edge_values(
    x: Tensor, knots: Tensor, weight: Tensor, spline_order: int, *, uniform: bool
) -> Tensor:
    """Per-edge spline outputs ``(batch, out, in)`` (interpretation path; reference maths)."""
    return reference.edge_values(x, knots, weight, spline_order, uniform)
