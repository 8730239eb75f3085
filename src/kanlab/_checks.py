"""Input validation shared by the library: every error names the argument, expected and actual."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor


def check_int(name: str, value: object, *, minimum: int) -> int:
    """An integer >= minimum (bools are refused)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(
            f"{name} must be an int >= {minimum}, got {value!r} ({type(value).__name__})"
        )
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_float(name: str, value: object, *, minimum: float | None = None) -> float:
    """A finite real number, optionally >= minimum."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if minimum is not None and v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return v


def check_range(name: str, value: object) -> tuple[float, float]:
    """A pair (low, high) of finite numbers with low < high."""
    if isinstance(value, str | bytes) or not isinstance(value, Sequence) or len(value) != 2:
        raise ValueError(f"{name} must be a pair (low, high), got {value!r}")
    low = check_float(f"{name}[0]", value[0])
    high = check_float(f"{name}[1]", value[1])
    if not low < high:
        raise ValueError(f"{name} must have low < high, got {value!r}")
    return low, high


def check_widths(widths: object) -> list[int]:
    """Layer widths: a sequence of at least two positive ints."""
    if isinstance(widths, str | bytes) or not isinstance(widths, Sequence):
        raise TypeError(f"widths must be a sequence of ints, got {widths!r}")
    if len(widths) < 2:
        raise ValueError(
            f"widths must have at least two entries (inputs, outputs), got {list(widths)}"
        )
    for i, w in enumerate(widths):
        check_int(f"widths[{i}]", w, minimum=1)
    return list(widths)


def check_choice(name: str, value: object, choices: Sequence[str]) -> str:
    """One of a fixed set of option names."""
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; valid: {', '.join(sorted(choices))}")
    return str(value)


def check_input(
    x: object, in_features: int, *, name: str = "x", dtype: torch.dtype | None = None
) -> Tensor:
    """A floating tensor whose last dimension is ``in_features`` (and of ``dtype`` if given).

    Static checks only (no host sync), so this is cheap in ``forward`` and safe under torch.compile.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() < 1 or x.shape[-1] != in_features:
        raise ValueError(
            f"{name} must have shape (..., {in_features}) (last dimension = in_features), "
            f"got {tuple(x.shape)}"
        )
    if dtype is not None and x.dtype != dtype:
        raise TypeError(
            f"{name} has dtype {x.dtype} but the model's parameters are {dtype}; "
            f"convert one of them (e.g. x.to({dtype}) or model.to({x.dtype}))"
        )
    return x


def check_finite(name: str, x: Tensor) -> Tensor:
    """Refuse NaN/Inf, saying how many entries are bad (a host sync: not for hot paths)."""
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        n = int(bad.sum())
        raise ValueError(f"{name} contains {n} non-finite value(s) (NaN or Inf) out of {x.numel()}")
    return x
