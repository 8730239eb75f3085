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

The backends, registered below once (:mod:`kanlab.kernels.backends` holds the protocol, the
registry and the choice):

- ``reference``: pure PyTorch (:mod:`kanlab.kernels.reference`), any device and dtype, higher-order
  autograd; the oracle, and what runs calls that no other backend takes;
- ``numba``: CPU float32/float64, the compiled sparse kernels of :mod:`kanlab.kernels.cpu`
  (optional dependency, ``kanlab[jit]``);
- ``triton``: CUDA float32/float64, the Triton kernels of :mod:`kanlab.kernels.gpu` (needs triton
  and a GPU).

The Numba kernels compile on their first call when Numba's cache does not hold them (the first run
after an install); :func:`warm_up` does that ahead of time, so that training can keep it out of its
time per step and say that it is compiling (:mod:`kanlab.kernels.warm`).

``set_backend(name)`` forces a backend for all later calls (``None`` or ``"auto"`` restores automatic
choice); automatic choice takes the available backend of highest priority that supports the input.
A backend is available when its package is installed (decided without importing it, so
``import kanlab`` stays light and ``torch.compile`` sees plain constants); an installed package
whose kernels fail to import raises :class:`~kanlab.kernels.backends.BackendError` on first use
instead of running other maths.

The CPU kernels return coefficient gradients in memory they reuse once no tensor refers to it (no
page faults per step on large grids; see :mod:`kanlab.kernels.cpu.buffers`);
``clear_gradient_memory()`` lets that memory go.
"""

from __future__ import annotations

import torch
from torch import Tensor

from kanlab.kernels import reference
from kanlab.kernels.backends import (
    FAST_DTYPES,
    Backend,
    available_backends,
    choose,
    get_backend,
    installed,
    register_backend,
    select_backend,
    set_backend,
)
from kanlab.kernels.warm import WarmUp, warm_up

__all__ = [
    "Backend",
    "WarmUp",
    "available_backends",
    "clear_gradient_memory",
    "edge_values",
    "get_backend",
    "register_backend",
    "select_backend",
    "set_backend",
    "spline_product",
    "warm_up",
]


def clear_gradient_memory() -> None:
    """Release the memory the CPU kernels keep for reuse as coefficient gradients (at most four
    arrays per gradient shape; an array still used by a tensor is freed with that tensor)."""
    from kanlab.kernels.cpu import buffers

    buffers.clear()


# ---------------------------------------------------------------------------- backend registration
_HAS_NUMBA = installed("numba")
_HAS_TRITON = installed("triton")
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


register_backend(
    Backend(name="reference", fn=reference.spline_product, priority=0, takes_scale=True)
)
register_backend(
    Backend(
        name="numba",
        module="kanlab.kernels.cpu.api",
        requires="numba",
        available=lambda: _HAS_NUMBA,
        supports=lambda x: (
            x.device.type == "cpu"
            and x.dtype in FAST_DTYPES
            and x.dim() == 2
            and x.shape[0] * x.shape[1] >= NUMBA_MIN_PAIRS
        ),
        priority=10,
    )
)
register_backend(
    Backend(
        name="triton",
        module="kanlab.kernels.gpu",
        requires="triton",
        available=_triton_available,
        supports=lambda x: x.device.type == "cuda" and x.dtype in FAST_DTYPES,
        priority=20,
    )
)


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
    backend = choose(x, knots, weight, scale)
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


EDGE_BLOCK_MAX = 4096  # most in * in * out that edge_values runs as one block-diagonal product


def edge_values(
    x: Tensor, knots: Tensor, weight: Tensor, spline_order: int, *, uniform: bool
) -> Tensor:
    """Per-edge spline outputs ``(batch, out, in)``: ``sum_g B_g(x[b, i]) * weight[i, g, o]``.

    On a compiled backend, one :func:`spline_product` call with a block-diagonal table (input i
    feeds only the outputs ``(o, i)``: ``(in, G+k, out * in)``), so the sparsity regulariser's
    edge values and their gradients (coefficients and x) run on the fast kernels; the table has
    ``in`` times the entries, so wide layers (``in * in * out`` above :data:`EDGE_BLOCK_MAX`) keep
    the reference maths. Measured on the official recipe's sparse fit (KAN [2,5,1], 1000 points,
    adapted grids): the reference path was ~8 of its ~25 profiled CPU seconds (torch ops of the
    non-uniform Cox-de Boor recursion)."""
    backend = choose(x, knots, weight)
    n_in, n_basis, n_out = weight.shape
    if backend.module is None or n_in * n_in * n_out > EDGE_BLOCK_MAX:
        return reference.edge_values(x, knots, weight, spline_order, uniform)
    eye = torch.eye(n_in, dtype=weight.dtype, device=weight.device)
    block = (weight.unsqueeze(-1) * eye[:, None, None, :]).reshape(n_in, n_basis, n_out * n_in)
    return backend.fn(x, knots, block, spline_order, uniform).reshape(-1, n_out, n_in)
