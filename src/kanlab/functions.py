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
- ``domain``: an interval where ``torch_fn`` is finite and well-conditioned (used to sample test data);
- ``derivative`` (optional): ``(z, f(z)) -> f'(z)`` of the forward-pass variant, exactly as autograd
  differentiates it (zero where a safe clamp is active); used by the fused CPU evaluation of edges,
  which otherwise finds it with autograd.

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
    # derivative of forward_fn: (z, f = forward_fn(z)) -> f'(z) as a tensor or a constant; None:
    # found by autograd when needed (only a speed-up for the fused CPU evaluation of edges)
    derivative: Callable[[Tensor, Tensor], Tensor | float] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name must be a non-empty string, got {self.name!r}")
        for field in ("torch_fn", "sympy_fn"):
            if not callable(getattr(self, field)):
                raise TypeError(f"{field} of function {self.name!r} must be callable")
        for field in ("safe_fn", "derivative"):
            if getattr(self, field) is not None and not callable(getattr(self, field)):
                raise TypeError(f"{field} of function {self.name!r} must be callable or None")
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


# ---------------------------------------------------------------------- derivatives
# d forward_fn / dz from (z, f): the values autograd gives forward_fn (a clamp's gradient is zero
# where the clamp is active, and at NaN), written out so the fused CPU path needs no autograd.
def _d_one(z: Tensor, f: Tensor) -> float:
    return 1.0


def _d_zero(z: Tensor, f: Tensor) -> float:
    return 0.0


def _d_pow(n: int) -> Callable[[Tensor, Tensor], Tensor]:
    def d(z: Tensor, f: Tensor) -> Tensor:
        return z * 2.0 if n == 2 else z ** (n - 1) * float(n)

    d.__name__ = f"d_pow{n}"
    return d


def _d_inv_pow(n: int) -> Callable[[Tensor, Tensor], Tensor]:
    def d(z: Tensor, f: Tensor) -> Tensor:
        s = _away_from_zero(z)
        return torch.where(z.abs() >= _EPS, s ** (-n - 1) * float(-n), 0.0)

    d.__name__ = f"d_inv_pow{n}"
    return d


def _d_sqrt(z: Tensor, f: Tensor) -> Tensor:
    return torch.where(z >= _EPS, 0.5 / f, 0.0)


def _d_pow15(z: Tensor, f: Tensor) -> Tensor:
    return torch.where(z >= 0, z.clamp_min(0) ** 0.5 * 1.5, 0.0)


def _d_rsqrt(z: Tensor, f: Tensor) -> Tensor:
    return torch.where(z >= _EPS, f**3 * -0.5, 0.0)


def _d_exp(z: Tensor, f: Tensor) -> Tensor:
    return torch.where(z <= 80.0, f, 0.0)


def _d_log(z: Tensor, f: Tensor) -> Tensor:
    return torch.where(z >= _EPS, 1.0 / _positive(z), 0.0)


def _d_abs(z: Tensor, f: Tensor) -> Tensor:
    return torch.sign(z).nan_to_num(0.0)


def _d_sin(z: Tensor, f: Tensor) -> Tensor:
    return torch.cos(z)


def _d_cos(z: Tensor, f: Tensor) -> Tensor:
    return -torch.sin(z)


def _d_tan(z: Tensor, f: Tensor) -> Tensor:
    c = torch.cos(z)
    w = _away_from_zero(c)
    return torch.where(c.abs() >= _EPS, (c + torch.sin(z) * f) / w, c / w)


def _d_tanh(z: Tensor, f: Tensor) -> Tensor:
    return 1.0 - f * f


def _inside_unit(z: Tensor) -> Tensor:
    return (z >= -1 + _EPS) & (z <= 1 - _EPS)


def _d_arcsin(z: Tensor, f: Tensor) -> Tensor:
    u = _unit(z)
    return torch.where(_inside_unit(z), torch.rsqrt(1.0 - u * u), 0.0)


def _d_arccos(z: Tensor, f: Tensor) -> Tensor:
    return -_d_arcsin(z, f)


def _d_arctan(z: Tensor, f: Tensor) -> Tensor:
    return 1.0 / (z * z + 1.0)


def _d_arctanh(z: Tensor, f: Tensor) -> Tensor:
    u = _unit(z)
    return torch.where(_inside_unit(z), 1.0 / (1.0 - u * u), 0.0)


def _d_gaussian(z: Tensor, f: Tensor) -> Tensor:
    return z * f * -2.0


def _d_cosh(z: Tensor, f: Tensor) -> Tensor:
    return torch.where((z >= -80.0) & (z <= 80.0), torch.sinh(z.clamp(-80.0, 80.0)), 0.0)


def _d_sigmoid(z: Tensor, f: Tensor) -> Tensor:
    return f * (1.0 - f)


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


def _inv_pow_record(n: int, complexity: int) -> SymbolicFunction:
    """The record of ``1/x^n`` (``1/x`` for n = 1), with its singularity-safe variant."""
    name = "1/x" if n == 1 else f"1/x^{n}"
    return SymbolicFunction(
        name,
        _inv_pow(n, safe=False),
        _s_pow(-n),
        complexity,
        _inv_pow(n, safe=True),
        derivative=_d_inv_pow(n),
    )


_BUILTIN: tuple[SymbolicFunction, ...] = (
    SymbolicFunction("0", _zero, _s_zero, 0, derivative=_d_zero),
    SymbolicFunction("x", _x, _sx, 1, derivative=_d_one),
    SymbolicFunction("x^2", _pow(2), _s_pow(2), 2, derivative=_d_pow(2)),
    SymbolicFunction("x^3", _pow(3), _s_pow(3), 3, derivative=_d_pow(3)),
    SymbolicFunction("x^4", _pow(4), _s_pow(4), 3, derivative=_d_pow(4)),
    SymbolicFunction("x^5", _pow(5), _s_pow(5), 3, derivative=_d_pow(5)),
    *(_inv_pow_record(n, complexity) for n, complexity in ((1, 2), (2, 2), (3, 3), (4, 4), (5, 5))),
    SymbolicFunction("sqrt", torch.sqrt, _s_call("sqrt"), 2, _sqrt_safe, (0.0, _INF), _d_sqrt),
    SymbolicFunction("x^1.5", _pow15, _s_pow("3/2"), 4, _pow15_safe, (0.0, _INF), _d_pow15),
    SymbolicFunction(
        "1/sqrt(x)", torch.rsqrt, _s_pow("-1/2"), 2, _rsqrt_safe, (0.0, _INF), _d_rsqrt
    ),
    SymbolicFunction("exp", torch.exp, _s_call("exp"), 2, _exp_safe, derivative=_d_exp),
    SymbolicFunction("log", torch.log, _s_call("log"), 2, _log_safe, (0.0, _INF), _d_log),
    SymbolicFunction("abs", torch.abs, _s_call("Abs"), 3, derivative=_d_abs),
    SymbolicFunction("sin", torch.sin, _s_call("sin"), 2, derivative=_d_sin),
    SymbolicFunction("cos", torch.cos, _s_call("cos"), 2, derivative=_d_cos),
    SymbolicFunction("tan", torch.tan, _s_call("tan"), 3, _tan_safe, (-1.5, 1.5), _d_tan),
    SymbolicFunction("tanh", torch.tanh, _s_call("tanh"), 3, derivative=_d_tanh),
    SymbolicFunction("sgn", torch.sign, _s_call("sign"), 3, derivative=_d_zero),
    SymbolicFunction(
        "arcsin", torch.asin, _s_call("asin"), 4, _arcsin_safe, (-1.0, 1.0), _d_arcsin
    ),
    SymbolicFunction(
        "arccos", torch.acos, _s_call("acos"), 4, _arccos_safe, (-1.0, 1.0), _d_arccos
    ),
    SymbolicFunction("arctan", torch.atan, _s_call("atan"), 4, derivative=_d_arctan),
    SymbolicFunction(
        "arctanh", torch.atanh, _s_call("atanh"), 4, _arctanh_safe, (-1.0, 1.0), _d_arctanh
    ),
    SymbolicFunction("gaussian", _gaussian, _s_gaussian, 3, derivative=_d_gaussian),
    SymbolicFunction("cosh", torch.cosh, _s_call("cosh"), 3, _cosh_safe, derivative=_d_cosh),
    SymbolicFunction("sigmoid", torch.sigmoid, _s_sigmoid, 4, derivative=_d_sigmoid),
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
