"""The one seam through which all spline arithmetic of a layer goes.

A *backend* computes the spline product of a layer,
``y[b, o] = sum_i sum_g B_g(x[b, i]) * weight[i, g, o]`` with x ``(batch, in)``, knots
``(in, G+2k+1)`` and weight ``(in, G+k, out)`` (the coefficient table with the spline scales and the
edge mask already folded in). Backends must agree with :mod:`kanlab.kernels.reference` in values and
gradients (w.r.t. x and weight); the tests check every registered backend against it.

``set_backend(name)`` forces a backend for all later calls (``None`` or ``"auto"`` restores automatic
choice); automatic choice takes the first available backend, in registration order of preference,
that supports the device and dtype of the call, falling back to the reference.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from kanlab.kernels import reference

__all__ = [
    "Backend",
    "available_backends",
    "edge_values",
    "get_backend",
    "register_backend",
    "select_backend",
    "set_backend",
    "spline_product",
]

SplineProduct = Callable[[Tensor, Tensor, Tensor, int, bool], Tensor]


@dataclass(frozen=True)
class Backend:
    """A spline-product implementation."""

    name: str  # as passed to set_backend
    fn: SplineProduct  # (x, knots, weight, spline_order, uniform) -> (batch, out)
    available: Callable[[], bool]  # importable and usable on this machine
    supports: Callable[[Tensor], bool]  # can handle this input (device, dtype, size)
    priority: int = 0  # higher wins in automatic choice


_BACKENDS: dict[str, Backend] = {}
_forced: str | None = None


def register_backend(backend: Backend) -> None:
    """Add (or replace) a backend."""
    _BACKENDS[backend.name] = backend


register_backend(
    Backend(
        name="reference",
        fn=reference.spline_product,
        available=lambda: True,
        supports=lambda x: True,
        priority=0,
    )
)


def available_backends() -> list[str]:
    """Names of the backends usable on this machine, best first."""
    usable = [b for b in _BACKENDS.values() if b.available()]
    return [b.name for b in sorted(usable, key=lambda b: -b.priority)]


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
    for name in available_backends():
        backend = _BACKENDS[name]
        if backend.supports(x):
            return backend
    return _BACKENDS["reference"]


def spline_product(
    x: Tensor, knots: Tensor, weight: Tensor, spline_order: int, *, uniform: bool
) -> Tensor:
    """Spline part of a layer: x ``(batch, in)`` -> ``(batch, out)``. See the module docstring."""
    return select_backend(x).fn(x, knots, weight, spline_order, uniform)


def edge_values(
    x: Tensor, knots: Tensor, weight: Tensor, spline_order: int, *, uniform: bool
) -> Tensor:
    """Per-edge spline outputs ``(batch, out, in)`` (interpretation path; reference maths)."""
    return reference.edge_values(x, knots, weight, spline_order, uniform)
