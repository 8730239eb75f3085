"""The KAN paper's 15 special functions (Liu et al. 2024, section 3.2 / Table 2), via scipy: the
``special/...`` registry.

Each task is a function of two inputs evaluated with ``scipy.special`` (imported lazily). Neither the
paper nor the official code fixes the input box of these tasks, so the ranges below are our choice:
boxes on which every function is finite and of order one (see RANGE_NOTE and each spec's ``note``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from kanlab.datasets.record import DatasetEntry
from kanlab.datasets.synthetic import synthetic_entry

__all__ = ["RANGE_NOTE", "SPECIAL", "SpecialSpec", "entries", "sph_harm_real"]

RANGE_NOTE = (
    "Input ranges chosen by kanlab (the KAN paper does not state them): boxes where the function "
    "is finite and of order one."
)


@dataclass(frozen=True)
class SpecialSpec:
    """One data set: f(x1, x2) on numpy float64 arrays, with its box and a readable formula."""

    formula: str  # what f computes, in scipy's terms
    feature_names: tuple[str, str]  # meaning of the two inputs
    ranges: tuple[tuple[float, float], tuple[float, float]]  # [low, high] of each input
    fn: Callable[[np.ndarray, np.ndarray], np.ndarray]  # (n,), (n,) -> (n,)
    note: str  # why these ranges / which output
    title: str  # what the function is, in words (the entry's one-line description)


def sph_harm_real(n: int, m: int, theta: np.ndarray, phi: np.ndarray) -> np.ndarray:
    """Re Y_n^m(theta, phi); theta is the polar angle in [0, pi], phi the azimuth in [0, 2 pi].

    scipy >= 1.15 has ``sph_harm_y(n, m, theta, phi)``; older versions only
    ``sph_harm(m, n, azimuth, polar)`` (arguments in the other order), removed in scipy 1.17.
    """
    import scipy.special as sp

    if hasattr(sp, "sph_harm_y"):
        return np.real(sp.sph_harm_y(n, m, theta, phi))
    return np.real(sp.sph_harm(m, n, phi, theta))  # pragma: no cover - old scipy


def _sp() -> object:
    import scipy.special as sp

    return sp


_ELL = ((0.0, 1.0), (0.0, 1.0))
_BESSEL = ((0.0, 1.0), (1.0, 2.0))
_LEG = ((0.0, 2.0), (-0.9, 0.9))
_ANG = ((0.0, float(np.pi)), (0.0, float(2 * np.pi)))
_ELL_NOTE = "u (or phi) and the parameter m both in [0, 1] (m must lie in [0, 1])."
_BES_NOTE = (
    "order v in [0, 1], argument x in [1, 2]: away from x = 0, where yv and kv diverge and "
    "jv, iv behave like x**v."
)
_LEG_NOTE = (
    "degree v in [0, 2] (covers the integer degrees 0, 1, 2), x in [-0.9, 0.9]: non-integer "
    "degrees are singular at x = -1."
)
_ANG_NOTE = "polar angle theta in [0, pi], azimuth phi in [0, 2 pi] (the full sphere)."


def _lpmv(m: int) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    return lambda v, x: _sp().lpmv(m, v, x)


def _ylm(n: int, m: int) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    return lambda theta, phi: sph_harm_real(n, m, theta, phi)


SPECIAL: dict[str, SpecialSpec] = {
    "ellipj": SpecialSpec(
        "sn(u | m) = scipy.special.ellipj(u, m)[0] (the sn output of the Jacobian elliptic "
        "functions sn, cn, dn, ph)",
        ("u", "m"), _ELL, lambda u, m: _sp().ellipj(u, m)[0], _ELL_NOTE,
        "Jacobian elliptic function sn(u | m)",
    ),
    "ellipkinc": SpecialSpec(
        "F(phi | m) = scipy.special.ellipkinc(phi, m) (incomplete elliptic integral, 1st kind)",
        ("phi", "m"), _ELL, lambda p, m: _sp().ellipkinc(p, m), _ELL_NOTE,
        "incomplete elliptic integral of the first kind F(phi | m)",
    ),
    "ellipeinc": SpecialSpec(
        "E(phi | m) = scipy.special.ellipeinc(phi, m) (incomplete elliptic integral, 2nd kind)",
        ("phi", "m"), _ELL, lambda p, m: _sp().ellipeinc(p, m), _ELL_NOTE,
        "incomplete elliptic integral of the second kind E(phi | m)",
    ),
    "jv": SpecialSpec(
        "J_v(x) = scipy.special.jv(v, x) (Bessel, 1st kind)",
        ("v", "x"), _BESSEL, lambda v, x: _sp().jv(v, x), _BES_NOTE,
        "Bessel function of the first kind J_v(x)",
    ),
    "yv": SpecialSpec(
        "Y_v(x) = scipy.special.yv(v, x) (Bessel, 2nd kind)",
        ("v", "x"), _BESSEL, lambda v, x: _sp().yv(v, x), _BES_NOTE,
        "Bessel function of the second kind Y_v(x)",
    ),
    "kv": SpecialSpec(
        "K_v(x) = scipy.special.kv(v, x) (modified Bessel, 2nd kind)",
        ("v", "x"), _BESSEL, lambda v, x: _sp().kv(v, x), _BES_NOTE,
        "modified Bessel function of the second kind K_v(x)",
    ),
    "iv": SpecialSpec(
        "I_v(x) = scipy.special.iv(v, x) (modified Bessel, 1st kind)",
        ("v", "x"), _BESSEL, lambda v, x: _sp().iv(v, x), _BES_NOTE,
        "modified Bessel function of the first kind I_v(x)",
    ),
    **{
        f"lpmv_m{m}": SpecialSpec(
            f"P_v^{m}(x) = scipy.special.lpmv({m}, v, x) (associated Legendre function, order {m})",
            ("v", "x"), _LEG, _lpmv(m), _LEG_NOTE,
            f"associated Legendre function P_v^{m}(x) of order {m}",
        )
        for m in (0, 1, 2)
    },
    **{
        f"sph_harm_m{m}_n{n}": SpecialSpec(
            f"Re Y_{n}^{m}(theta, phi) = Re scipy.special.sph_harm_y({n}, {m}, theta, phi) "
            "(spherical harmonic, real part)",
            ("theta", "phi"), _ANG, _ylm(n, m), _ANG_NOTE,
            f"real part of the spherical harmonic Y_{n}^{m}(theta, phi)",
        )
        for (m, n) in ((0, 1), (1, 1), (0, 2), (1, 2), (2, 2))
    },
}  # fmt: skip


SOURCE = "Liu et al. 2024, KAN paper, section 3.2 / Table 2; scipy.special"


def entries() -> list[DatasetEntry]:
    """One regression entry per function of :data:`SPECIAL`, on its box."""
    out = []
    for short, spec in SPECIAL.items():

        def fn(x: Tensor, spec: Any = spec) -> Tensor:
            a, b = x[:, 0].numpy(), x[:, 1].numpy()
            return torch.from_numpy(np.asarray(spec.fn(a, b), dtype=np.float64))

        out.append(synthetic_entry(
            f"special/{short}", fn, spec.ranges, description=spec.title, formula=spec.formula,
            feature_names=spec.feature_names, source=SOURCE,
            details=(f"ranges: {spec.note}", RANGE_NOTE),
            extra_meta={"range_note": f"{spec.note} {RANGE_NOTE}"},
        ))  # fmt: skip
    return out
