"""Kernel backends: what one is, the registry, and the one decision of which runs a call.

A backend computes the spline product of a layer (see :mod:`kanlab.kernels`) in one of two ways:

- a *function* (``Backend.fn``), as the pure-PyTorch reference does;
- *compiled kernels* of one device (``Backend.module``: the import path of a :class:`KernelModule`,
  e.g. :mod:`kanlab.kernels.cpu.api` for Numba on CPU, :mod:`kanlab.kernels.gpu` for Triton on
  CUDA), run through the custom operator of :mod:`kanlab.kernels.sparse`, which gives them autograd
  and ``torch.compile`` support. Such a backend is *available* when its package (``requires``) is
  installed and the machine has the device; its module is imported on first use. An installed
  package whose kernels fail to import is an error (:class:`BackendError`, naming the backend and
  the import error), never a silent switch to other maths: the backend that runs a call is the
  backend that was chosen.

:func:`choose` is the one decision: the forced backend (:func:`set_backend`) or else the best
available one (highest priority) that supports the input; and calls that compiled kernels cannot
take (another device or dtype than the backend's, knots that require grad, mixed dtypes or
devices) run the reference.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

__all__ = [
    "Backend",
    "BackendError",
    "KernelModule",
    "available_backends",
    "choose",
    "get_backend",
    "installed",
    "kernels_of",
    "load_installed",
    "register_backend",
    "select_backend",
    "set_backend",
]

FAST_DTYPES = (torch.float32, torch.float64)  # what compiled kernels are built for


@runtime_checkable
class KernelModule(Protocol):
    """A device's compiled kernels. x ``(batch, in)``, knots ``(in, G+2k+1)``, weight
    ``(in, G+k, out)``, the per-edge scale ``(in, out)`` or None (ones), grad_y ``(batch, out)``;
    C-contiguous or not, of one dtype and device. The kernels apply the scale themselves, which
    spares the caller the parameter-sized product ``weight * scale`` and its backward."""

    def forward(
        self,
        x: Tensor,
        knots: Tensor,
        weight: Tensor,
        spline_order: int,
        uniform: bool,
        scale: Tensor | None = None,
    ) -> Tensor:
        """y ``(batch, out)`` = ``sum_i scale[i, o] sum_g B_g(x[b, i]) * weight[i, g, o]``."""
        ...

    def backward(
        self,
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
        """Gradients of ``sum(grad_y * y)`` w.r.t. x, weight and scale (None when not needed;
        the scale's comes with the weight's, None without a scale)."""
        ...


# (x, knots, weight, spline_order, uniform, scale=None) -> (batch, out); see kanlab.kernels.
SplineProduct = Callable[..., Tensor]


def _always() -> bool:
    return True


def _everything(x: Tensor) -> bool:
    return True


@dataclass(frozen=True)
class Backend:
    """A spline-product implementation: a function, or the compiled kernels of one device."""

    name: str  # as passed to set_backend
    # (x, knots, weight, spline_order, uniform[, scale=]) -> (batch, out); for compiled kernels
    # (module set) leave it None: the sparse op bound to this backend is filled in.
    fn: SplineProduct | None = None
    available: Callable[[], bool] = _always  # installed and usable on this machine
    supports: Callable[[Tensor], bool] = _everything  # can take this input (device, dtype, size)
    priority: int = 0  # higher wins in automatic choice
    takes_scale: bool = False  # fn accepts a keyword ``scale`` (in, out) (True for compiled ones)
    module: str | None = None  # import path of a KernelModule: the compiled kernels
    requires: str | None = None  # the package the module needs (absent: not installed, no error)

    def __post_init__(self) -> None:
        if self.module is None:
            if self.fn is None:
                raise ValueError(f"backend {self.name!r} needs a function (fn) or a module")
            return
        if self.fn is not None:
            raise ValueError(f"backend {self.name!r}: give a function (fn) or a module, not both")
        from kanlab.kernels import sparse  # (sparse imports this module)

        def fn(x, knots, weight, spline_order, uniform, scale=None, *, _name=self.name):
            return sparse.spline_product(x, knots, weight, spline_order, uniform, scale, _name)

        object.__setattr__(self, "fn", fn)
        object.__setattr__(self, "takes_scale", True)  # every KernelModule applies the scale


class BackendError(RuntimeError):
    """A chosen backend cannot run: its package is installed but its kernels do not import."""


_BACKENDS: dict[str, Backend] = {}
_BY_PRIORITY: tuple[Backend, ...] = ()  # _BACKENDS best first (ties: registration order)
_forced: str | None = None
_LOADED: dict[str, ModuleType] = {}


def register_backend(backend: Backend) -> None:
    """Add (or replace) a backend."""
    global _BY_PRIORITY
    _BACKENDS[backend.name] = backend
    _LOADED.pop(backend.name, None)
    # Sorted here, not on every call: the choice runs for every layer call (~10 us saved).
    _BY_PRIORITY = tuple(sorted(_BACKENDS.values(), key=lambda b: -b.priority))


def installed(package: str) -> bool:
    """Whether ``package`` can be found (without importing it: ``import kanlab`` stays light)."""
    return importlib.util.find_spec(package) is not None


def kernels_of(name: str) -> KernelModule:
    """The compiled kernels of backend ``name``, imported on first use.

    Raises :class:`BackendError` naming the backend, its module and the import error when the
    module does not import (the failure is not remembered: a later call tries again)."""
    entry = _LOADED.get(name)
    backend = _BACKENDS.get(name)
    if backend is None or backend.module is None:
        raise BackendError(f"kernel backend {name!r} has no compiled kernels (known: {_names()})")
    # While sys.modules still holds the module (the import machinery costs ~1.5 us, several times
    # per layer call); a test that removes it from sys.modules is seen.
    if entry is not None and sys.modules.get(backend.module) is entry:
        return entry
    try:
        module = importlib.import_module(backend.module)
    except ImportError as error:
        package = f"{backend.requires} is installed but " if backend.requires else ""
        raise BackendError(
            f"kernel backend {name!r}: {package}its kernels ({backend.module}) failed to import: "
            f"{error!r}. Repair or uninstall {backend.requires or 'it'}, or choose another "
            f"backend with kanlab.kernels.set_backend('reference')."
        ) from error
    if not isinstance(module, KernelModule):
        raise BackendError(
            f"kernel backend {name!r}: {backend.module} lacks forward/backward (a KernelModule)"
        )
    _LOADED[name] = module
    return module


def load_installed() -> list[str]:
    """Import the kernels of every compiled backend whose package is installed, whether or not this
    machine has its device; names best first. Raises :class:`BackendError` for the first that does
    not import (CI calls this: a backend it installed must load)."""
    names = []
    for backend in _BY_PRIORITY:
        if backend.module is not None and (backend.requires is None or installed(backend.requires)):
            kernels_of(backend.name)
            names.append(backend.name)
    return names


def _names() -> list[str]:
    return sorted(_BACKENDS)


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
        raise ValueError(f"unknown kernel backend {name!r}; known: {_names()}")
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
    """The backend a call with input ``x`` will use (see :func:`choose` for the whole call)."""
    if _forced is not None:
        return _BACKENDS[_forced]
    for backend in _BY_PRIORITY:
        if backend.available() and backend.supports(x):
            return backend
    return _BACKENDS["reference"]


def _op_takes(x: Tensor, knots: Tensor, weight: Tensor, scale: Tensor | None) -> bool:
    """Whether the sparse op can take this call (one dtype and device, knots without grad)."""
    return (
        x.dim() == 2
        and weight.dim() == 3
        and x.dtype in FAST_DTYPES
        and knots.dtype == x.dtype
        and weight.dtype == x.dtype
        and knots.device == x.device
        and weight.device == x.device
        and not knots.requires_grad
        and (scale is None or (scale.dtype == x.dtype and scale.device == x.device))
    )


def choose(x: Tensor, knots: Tensor, weight: Tensor, scale: Tensor | None = None) -> Backend:
    """The backend that runs this call: :func:`select_backend`'s, unless it is compiled kernels
    that cannot take the call (another device or dtype, knots that require grad: the compiled
    kernels give no knot gradient); those calls run the reference."""
    backend = select_backend(x)
    if backend.module is None:
        return backend
    # (automatic choice has checked supports already; a forced backend has not)
    if (_forced is not None and not backend.supports(x)) or not _op_takes(x, knots, weight, scale):
        return _BACKENDS["reference"]
    return backend
