"""The symbolic function library: the candidate functions ``f`` an edge can be replaced by.

An edge fixed to ``f`` computes ``y = c * f(a * x + b) + d``. Each library entry is a frozen
:class:`SymbolicFunction` record holding

- ``torch_fn``: the exact function (used when fitting: candidates that leave ``f``'s domain on the
  data give non-finite values and are discarded, so a fit never relies on clamping);
- ``safe_fn``: a singularity-safe variant (poles and domain edges clamped) used in a layer's forward
  pass, so training never produces NaN/Inf when an edge's input wanders outside the domain;
- ``sympy_fn``: builds the sympy expression from a sympy argument (sympy is imported lazily, on call);
- ``complexity``: a small integer used to prefer simple functions among equally good fits
  (the KAN paper's values: x = 1, x^2 = 2, sin = 2, arcsin = 4, ...);
- ``domain``: an interval where ``torch_fn`` is finite and well-conditioned (used to sample test data).

Users add their own with :func:`register_function`. Names are looked up with :func:`get_function`,
which lists the valid names when a name is unknown.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "SymbolicFunction",
    "function_names",
    "get_function",
    "library",
    "register_function",
    "unregister_function",
]

# Distance kept from poles and domain edges by the safe variants.
_EPS = 1e-4


@dataclass(frozen=True)
class SymbolicFunction:
    """One candidate edge function ``f`` (see the module docstring)."""

    name: str  # the key used by fix_symbolic / suggest_symbolic, e.g. "sin", "x^2"
    torch_fn: Callable[[Tensor], Tensor]  # exact f, elementwise
    sympy_fn: Callable[[Any], Any]  # sympy argument -> sympy expression of f
    complexity: int  # >= 0; lower is simpler
    safe_fn: Callable[[Tensor], Tensor] | None = None  # forward-pass variant; None: torch_fn
    domain: tuple[float, float] = (-math.inf, math.inf)  # where torch_fn is finite

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name must be a non-empty string, got {self.name!r}")
        for field in ("torch_fn", "sympy_fn"):
            if not callable(getattr(self, field)):
                raise TypeError(f"{field} of function {self.name!r} must be callable")
        if self.safe_fn is not None and not callable(self.safe_fn):
            raise TypeError(f"safe_fn of function {self.name!r} must be callable or None")
        if isinstance(self.complexity, bool) or not isinstance(self.complexity, int):
            raise TypeError(f"complexity of {self.name!r} must be an int, got {self.complexity!r}")
        if self.complexity < 0:
            raise ValueError(f"complexity of {self.name!r} must be >= 0, got {self.complexity}")
        lo, hi = self.domain
        if not lo < hi:
            raise ValueError(f"domain of {self.name!r} must have low < high, got {self.domain}")

    @property
    def forward_fn(self) -> Callable[[Tensor], Tensor]:
        """The function a layer evaluates in forward: ``safe_fn`` if given, else ``torch_fn``."""
        return self.safe_fn if self.safe_fn is not None else self.torch_fn


def _sp() -> Any:
    import sympy  # lazy: `import kanlab` must not import sympy

    return sympy


# ---------------------------------------------------------------------- safe helpers
def _away_from_zero(x: Tensor) -> Tensor:
    """x with |x| >= _EPS, keeping the sign (0 maps to +_EPS)."""
    sign = torch.where(x >= 0, 1.0, -1.0).to(x.dtype)
    return sign * x.abs().clamp_min(_EPS)


def _positive(x: Tensor) -> Tensor:
    return x.clamp_min(_EPS)


def _unit(x: Tensor) -> Tensor:
    return x.clamp(-1 + _EPS, 1 - _EPS)


# Module-level named functions (not lambdas) keep models picklable.
def _x(x: Tensor) -> Tensor:
    return x


def _zero(x: Tensor) -> Tensor:
    return torch.zeros_like(x)


def _pow(n: int) -> Callable[[Tensor], Tensor]:
    def f(x: Tensor) -> Tensor:
        return x**n

    f.__name__ = f"pow{n}"
    return f


def _inv_pow(n: int, *, safe: bool) -> Callable[[Tensor], Tensor]:
    def f(x: Tensor) -> Tensor:
        return (_away_from_zero(x) if safe else x) ** (-n)

    f.__name__ = f"inv_pow{n}{'_safe' if safe else ''}"
    return f


def _sqrt_safe(x: Tensor) -> Tensor:
    return torch.sqrt(_positive(x))


def _pow15(x: Tensor) -> Tensor:
    return x**1.5


def _pow15_safe(x: Tensor) -> Tensor:
    return x.clamp_min(0) ** 1.5


def _rsqrt_safe(x: Tensor) -> Tensor:
    return torch.rsqrt(_positive(x))


def _exp_safe(x: Tensor) -> Tensor:
    return torch.exp(x.clamp_max(80.0))


def _log_safe(x: Tensor) -> Tensor:
    return torch.log(_positive(x))


def _tan_safe(x: Tensor) -> Tensor:
    return torch.sin(x) / _away_from_zero(torch.cos(x))


def _arcsin_safe(x: Tensor) -> Tensor:
    return torch.asin(_unit(x))


def _arccos_safe(x: Tensor) -> Tensor:
    return torch.acos(_unit(x))


def _arctanh_safe(x: Tensor) -> Tensor:
    return torch.atanh(_unit(x))


def _gaussian(x: Tensor) -> Tensor:
    return torch.exp(-(x**2))


def _cosh_safe(x: Tensor) -> Tensor:
    return torch.cosh(x.clamp(-80.0, 80.0))


# ---------------------------------------------------------------------- sympy builders
def _sx(z: Any) -> Any:
    return z


def _s_zero(z: Any) -> Any:
    return _sp().Integer(0)


def _s_pow(n: Any) -> Callable[[Any], Any]:
    def f(z: Any) -> Any:
        sp = _sp()
        return z ** (sp.Rational(n) if isinstance(n, str) else sp.Integer(n))

    return f


def _s_call(name: str) -> Callable[[Any], Any]:
    def f(z: Any) -> Any:
        return getattr(_sp(), name)(z)

    return f


def _s_gaussian(z: Any) -> Any:
    return _sp().exp(-(z**2))


def _s_sigmoid(z: Any) -> Any:
    return 1 / (1 + _sp().exp(-z))


_INF = math.inf
_BUILTIN: tuple[SymbolicFunction, ...] = (
    SymbolicFunction("0", _zero, _s_zero, 0),
    SymbolicFunction("x", _x, _sx, 1),
    SymbolicFunction("x^2", _pow(2), _s_pow(2), 2),
    SymbolicFunction("x^3", _pow(3), _s_pow(3), 3),
    SymbolicFunction("x^4", _pow(4), _s_pow(4), 3),
    SymbolicFunction("x^5", _pow(5), _s_pow(5), 3),
    SymbolicFunction("1/x", _inv_pow(1, safe=False), _s_pow(-1), 2, _inv_pow(1, safe=True)),
    SymbolicFunction("1/x^2", _inv_pow(2, safe=False), _s_pow(-2), 2, _inv_pow(2, safe=True)),
    SymbolicFunction("1/x^3", _inv_pow(3, safe=False), _s_pow(-3), 3, _inv_pow(3, safe=True)),
    SymbolicFunction("1/x^4", _inv_pow(4, safe=False), _s_pow(-4), 4, _inv_pow(4, safe=True)),
    SymbolicFunction("1/x^5", _inv_pow(5, safe=False), _s_pow(-5), 5, _inv_pow(5, safe=True)),
    SymbolicFunction("sqrt", torch.sqrt, _s_call("sqrt"), 2, _sqrt_safe, (0.0, _INF)),
    SymbolicFunction("x^1.5", _pow15, _s_pow("3/2"), 4, _pow15_safe, (0.0, _INF)),
    SymbolicFunction("1/sqrt(x)", torch.rsqrt, _s_pow("-1/2"), 2, _rsqrt_safe, (0.0, _INF)),
    SymbolicFunction("exp", torch.exp, _s_call("exp"), 2, _exp_safe),
    SymbolicFunction("log", torch.log, _s_call("log"), 2, _log_safe, (0.0, _INF)),
    SymbolicFunction("abs", torch.abs, _s_call("Abs"), 3),
    SymbolicFunction("sin", torch.sin, _s_call("sin"), 2),
    SymbolicFunction("cos", torch.cos, _s_call("cos"), 2),
    SymbolicFunction("tan", torch.tan, _s_call("tan"), 3, _tan_safe, (-1.5, 1.5)),
    SymbolicFunction("tanh", torch.tanh, _s_call("tanh"), 3),
    SymbolicFunction("sgn", torch.sign, _s_call("sign"), 3),
    SymbolicFunction("arcsin", torch.asin, _s_call("asin"), 4, _arcsin_safe, (-1.0, 1.0)),
    SymbolicFunction("arccos", torch.acos, _s_call("acos"), 4, _arccos_safe, (-1.0, 1.0)),
    SymbolicFunction("arctan", torch.atan, _s_call("atan"), 4),
    SymbolicFunction("arctanh", torch.atanh, _s_call("atanh"), 4, _arctanh_safe, (-1.0, 1.0)),
    SymbolicFunction("gaussian", _gaussian, _s_gaussian, 3),
    SymbolicFunction("cosh", torch.cosh, _s_call("cosh"), 3, _cosh_safe),
    SymbolicFunction("sigmoid", torch.sigmoid, _s_sigmoid, 4),
)

_LIBRARY: dict[str, SymbolicFunction] = {f.name: f for f in _BUILTIN}


def register_function(fn: SymbolicFunction, *, overwrite: bool = False) -> SymbolicFunction:
    """Add ``fn`` to the library (``overwrite=True`` to replace an entry of the same name)."""
    if not isinstance(fn, SymbolicFunction):
        raise TypeError(f"fn must be a SymbolicFunction, got {type(fn).__name__}")
    if fn.name in _LIBRARY and not overwrite:
        raise ValueError(
            f"a function named {fn.name!r} is already registered; pass overwrite=True to replace it"
        )
    _LIBRARY[fn.name] = fn
    return fn


def unregister_function(name: str) -> None:
    """Remove the entry ``name`` (built-in entries cannot be removed)."""
    get_function(name)
    if any(f.name == name for f in _BUILTIN):
        raise ValueError(f"{name!r} is a built-in function and cannot be unregistered")
    del _LIBRARY[name]


def function_names() -> list[str]:
    """Names of all registered functions, in registration order."""
    return list(_LIBRARY)


def get_function(name: str | SymbolicFunction) -> SymbolicFunction:
    """The library entry called ``name`` (a record passes through unchanged)."""
    if isinstance(name, SymbolicFunction):
        return name
    if name not in _LIBRARY:
        raise ValueError(f"unknown symbolic function {name!r}; valid: {', '.join(_LIBRARY)}")
    return _LIBRARY[name]


def library(names: list[str] | tuple[str, ...] | None = None) -> dict[str, SymbolicFunction]:
    """The library as ``{name: record}`` (a copy): all entries, or those named in ``names``."""
    if names is None:
        return dict(_LIBRARY)
    if isinstance(names, str):
        raise TypeError(f"names must be a list of function names, got the string {names!r}")
    return {n: get_function(n) for n in names}
