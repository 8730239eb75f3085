"""The symbolic function library: torch vs sympy oracle, safe variants, registration, bad input."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from kanlab import functions as fl
from kanlab.functions import SymbolicFunction, get_function, library, register_function

NAMES = list(library())


def domain_samples(fn: SymbolicFunction, n: int = 200) -> torch.Tensor:
    """Points inside the function's domain, away from its singularities."""
    lo, hi = fn.domain
    lo, hi = max(lo, -2.0), min(hi, 2.0)
    if fn.domain[0] == 0.0:  # (0, inf): sqrt, log, 1/sqrt
        lo = 0.2
    if (lo, hi) == (-1.0, 1.0):
        lo, hi = -0.95, 0.95
    x = torch.linspace(lo, hi, n, dtype=torch.float64)
    if fn.name.startswith("1/x"):
        x = x[x.abs() > 0.2]
    return x


def test_library_size_and_records():
    lib = library()
    assert len(lib) >= 25
    for name in ("x", "x^2", "x^5", "1/x", "sqrt", "exp", "log", "sin", "cos", "tan", "tanh"):
        assert name in lib
    for name in ("abs", "sgn", "arcsin", "arctan", "arctanh", "gaussian", "0"):
        assert name in lib
    for name, fn in lib.items():
        assert fn.name == name
        assert fn.complexity >= 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        lib["sin"].complexity = 9  # type: ignore[misc]
    # library() hands out a copy: mutating it leaves the registry alone
    lib.pop("sin")
    assert "sin" in library()


@pytest.mark.parametrize("name", NAMES)
def test_torch_matches_sympy(name):
    sympy = pytest.importorskip("sympy")
    fn = get_function(name)
    x = domain_samples(fn)
    z = sympy.Symbol("z", real=True)
    f_np = sympy.lambdify(z, fn.sympy_fn(z), "numpy")
    want = torch.as_tensor(f_np(x.numpy()) * torch.ones_like(x).numpy(), dtype=torch.float64)
    got = fn.torch_fn(x)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_safe_variant_agrees_inside_and_is_finite_everywhere(name):
    fn = get_function(name)
    x = domain_samples(fn)
    torch.testing.assert_close(fn.forward_fn(x), fn.torch_fn(x), rtol=1e-9, atol=1e-9)
    # at poles, domain edges and far outside the domain the safe variant stays finite, and so
    # does its gradient
    wild = torch.tensor(
        [0.0, -0.0, 1.0, -1.0, math.pi / 2, -5.0, 5.0, 50.0, -50.0, 1e-9], dtype=torch.float64
    ).requires_grad_(True)
    y = fn.forward_fn(wild)
    assert torch.isfinite(y).all(), name
    if y.requires_grad:  # "0" is a constant, detached from x
        (g,) = torch.autograd.grad(y.sum(), wild)
        assert torch.isfinite(g).all(), name


def test_singular_functions_have_safe_variants():
    for name in ("1/x", "1/x^2", "sqrt", "log", "tan", "arcsin", "arctanh", "1/sqrt(x)"):
        assert get_function(name).safe_fn is not None, name


def test_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError, match=r"unknown symbolic function 'sinc'.*valid:.*sin"):
        get_function("sinc")
    with pytest.raises(ValueError, match="sinc"):
        library(["sin", "sinc"])
    with pytest.raises(TypeError, match="string"):
        library("sin")  # type: ignore[arg-type]


def _cube_root(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * x.abs() ** (1 / 3)


def _s_cube_root(z):
    import sympy

    return sympy.sign(z) * sympy.Abs(z) ** sympy.Rational(1, 3)


@pytest.fixture
def cbrt():
    fn = SymbolicFunction("cbrt", _cube_root, _s_cube_root, 3)
    register_function(fn)
    yield fn
    fl.unregister_function("cbrt")


def test_register_get_and_unregister(cbrt):
    assert get_function("cbrt") is cbrt
    assert "cbrt" in fl.function_names()
    with pytest.raises(ValueError, match="already registered"):
        register_function(cbrt)
    other = dataclasses.replace(cbrt, complexity=5)
    register_function(other, overwrite=True)
    assert get_function("cbrt").complexity == 5
    with pytest.raises(ValueError, match="built-in"):
        fl.unregister_function("sin")
    with pytest.raises(TypeError):
        register_function("sin")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "err", "msg"),
    [
        ({"name": ""}, ValueError, "non-empty"),
        ({"torch_fn": 3}, TypeError, "torch_fn"),
        ({"complexity": -1}, ValueError, "complexity"),
        ({"complexity": 1.5}, TypeError, "complexity"),
        ({"domain": (1.0, 0.0)}, ValueError, "domain"),
        ({"safe_fn": "no"}, TypeError, "safe_fn"),
    ],
)
def test_record_validation(kwargs, err, msg):
    base = {"name": "f", "torch_fn": torch.sin, "sympy_fn": _s_cube_root, "complexity": 1}
    with pytest.raises(err, match=msg):
        SymbolicFunction(**{**base, **kwargs})
