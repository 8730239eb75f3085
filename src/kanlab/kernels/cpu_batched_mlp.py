"""A hidden MLP layer of M models, ``act(x @ weight^T + bias)``, in one Numba pass: the MLP model
batch's fast path for layers with few inputs (issue 19: the paper suite's MLPs ``[2, 100, 1]``,
``[2, 100, 100, 1]``, ... are dominated by their first layer's elementwise work).

Why: with 2 inputs, ``torch.baddbmm`` does 2 multiply-adds per output and then SiLU, its
backward and the copies each stream the whole ``(M, batch, out)`` tensor through memory again
(measured on 64 ``[2, 100, 1]`` MLPs, 1000 points, float64: bmm, silu, silu_backward and copies
are ~85% of a step). Here each output is computed, activated and its activation derivative
stored in one pass over blocks of samples (the SiLU's exp is the vectorised one of
:mod:`kanlab.kernels.cpu_batched_layer`). The backward: when x needs no gradient (a first layer),
one more pass forms ``grad_pre = grad_y * act'`` (saved) block by block and sums the weight and
bias gradients from it without storing it; otherwise ``grad_pre`` and two ``bmm``, as torch does.

Dispatch (:func:`takes`; the caller checks CPU float32/float64, one torch thread, Numba): SiLU,
at most :data:`MAX_FUSED_IN` inputs (wider layers are matrix products, where BLAS wins) and at
least :data:`MIN_FUSED_OUTPUTS` outputs per sample over the M models (M x out: below it the
torch ops' temporaries stay small and this path measured no faster). Measured (thread CPU ms per
model-evaluation of an MSE step, 1000 shared points, float64, baddbmm path vs this, same run,
machine load ~9 on 2 cores): [2,100,1] M=64: 2.36 vs 1.29 (1.8x), [2,100,100,1] M=64: 6.30 vs
5.27 (1.2x); M=8 of either (M x out = 800) and [2,5,1] at M=8..64: 0.9-1.1x, noise. Results equal
``act(baddbmm(...))`` to rounding (float64: ~1e-15 relative), not bit for bit.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit
from torch import Tensor

from kanlab.kernels.cpu.tuning import _CACHE
from kanlab.kernels.cpu_batched_layer import _activation

__all__ = ["ACTIVATION_CODES", "MAX_FUSED_IN", "MIN_FUSED_OUTPUTS", "linear_act", "pays", "takes"]

_JIT = {"nogil": True, "cache": _CACHE, "fastmath": {"contract", "reassoc"}, "error_model": "numpy"}
ACTIVATION_CODES = {"silu": 2}  # the codes of cpu_batched_layer._activation
# Most inputs taken here: each output costs ``in`` broadcast multiply-adds over a block, which
# beats baddbmm + silu while the elementwise work dominates (64 models, [2 -> 100], 1000 points,
# float64, forward: 3.6x faster); for wide inputs the product dominates and BLAS wins.
MAX_FUSED_IN = 8
MIN_FUSED_OUTPUTS = 2048  # M x out below which MLPBatch keeps baddbmm (see the module docstring)
_BLOCK = 128  # samples per block (the block's pre-activations stay in the level-1 cache)


@njit(**_JIT)
def _forward(x, weight, bias, code, y, dact):  # pragma: no cover - compiled
    """y[m, b, o] = act(bias[m, o] + sum_i x[., b, i] weight[m, o, i]) and dact = act'(same);
    x (1 or M, batch, in): one row shared by the models, or one per model."""
    n_models, n_out, n_in = weight.shape
    batch = x.shape[1]
    per_model = x.shape[0] > 1
    S = _BLOCK
    xt = np.empty((n_in, S))
    pre = np.empty(S)
    ya = np.empty((n_out, S))  # the block's outputs, stored row by row at the end
    da = np.empty((n_out, S))
    tmp = np.empty(S)
    bits = np.empty(S, dtype=np.int64)
    for b0 in range(0, batch, S):
        bs = min(S, batch - b0)
        for m in range(n_models):
            if m == 0 or per_model:  # stage the block's inputs (once for a shared x)
                mx = m if per_model else 0
                for i in range(n_in):
                    for s in range(bs):
                        xt[i, s] = x[mx, b0 + s, i]
            for o in range(n_out):
                bo = bias[m, o]
                for s in range(bs):
                    pre[s] = bo
                for i in range(n_in):
                    w = weight[m, o, i]
                    xi = xt[i]
                    for s in range(bs):
                        pre[s] += w * xi[s]
                _activation(pre, bs, code, True, ya[o], da[o], bits, tmp)
            for s in range(bs):  # contiguous rows of y (a store per output was strided: 4x slower)
                for o in range(n_out):
                    y[m, b0 + s, o] = ya[o, s]
                for o in range(n_out):
                    dact[m, b0 + s, o] = da[o, s]


@njit(**_JIT)
def _grad_params(x, grad_y, dact, gw, gb):  # pragma: no cover - compiled
    """gw[m, o, i] = sum_b g[m, b, o] x[., b, i] and gb[m, o] = sum_b g[m, b, o] with the
    pre-activation gradient g = grad_y * dact, in one pass (g is never stored); gw, gb zeroed."""
    n_models, n_out, n_in = gw.shape
    batch = x.shape[1]
    per_model = x.shape[0] > 1
    S = _BLOCK
    xt = np.empty((n_in, S))
    gt = np.empty((n_out, S))
    for b0 in range(0, batch, S):
        bs = min(S, batch - b0)
        for m in range(n_models):
            if m == 0 or per_model:
                mx = m if per_model else 0
                for i in range(n_in):
                    for s in range(bs):
                        xt[i, s] = x[mx, b0 + s, i]
            for s in range(bs):  # contiguous reads of grad_y and dact rows
                for o in range(n_out):
                    gt[o, s] = grad_y[m, b0 + s, o] * dact[m, b0 + s, o]
            for o in range(n_out):
                go = gt[o]
                acc = 0.0
                for s in range(bs):
                    acc += go[s]
                gb[m, o] += acc
                for i in range(n_in):
                    xi = xt[i]
                    acc = 0.0
                    for s in range(bs):
                        acc += go[s] * xi[s]
                    gw[m, o, i] += acc


def takes(n_in: int, activation: str) -> bool:
    """Whether this kernel can run a layer (the caller checks device, dtype and threads)."""
    return n_in <= MAX_FUSED_IN and activation in ACTIVATION_CODES


def pays(n_models: int, n_in: int, n_out: int, activation: str) -> bool:
    """Whether MLPBatch runs a hidden layer here: :func:`takes` it and M x out is at least
    :data:`MIN_FUSED_OUTPUTS` (where it measured faster than baddbmm + the activation)."""
    return takes(n_in, activation) and n_models * n_out >= MIN_FUSED_OUTPUTS


class _LinearAct(torch.autograd.Function):
    """Autograd of :func:`linear_act`: first order, w.r.t. x, weight and bias."""

    @staticmethod
    def forward(ctx, x, weight, bias, code):
        xs = x if x.dim() == 3 else x.unsqueeze(0)
        n_models, batch, n_out = weight.shape[0], xs.shape[1], weight.shape[1]
        # numpy allocations: for tensors of tens of MB, torch.empty's came with ~2x the page
        # faults (measured: 64 x [2 -> 100] x 1000 float64, 70 ms with torch.empty, 32 ms numpy)
        dtype = np.float64 if x.dtype == torch.float64 else np.float32
        y = np.empty((n_models, batch, n_out), dtype=dtype)
        dact = np.empty((n_models, batch, n_out), dtype=dtype)
        if batch > 0:
            _forward(xs.detach().contiguous().numpy(), weight.detach().contiguous().numpy(),
                     bias.detach().contiguous().numpy(), code, y, dact)  # fmt: skip
        y, dact = torch.from_numpy(y), torch.from_numpy(dact)
        ctx.save_for_backward(x, weight, dact)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y):
        x, weight, dact = ctx.saved_tensors
        needs = ctx.needs_input_grad
        if not needs[0]:  # (the usual case: x is data) weight and bias gradients in one pass
            dtype = dact.numpy().dtype
            gw = np.zeros(weight.shape, dtype=dtype)
            gb = np.zeros(weight.shape[:2], dtype=dtype)
            xs = x if x.dim() == 3 else x.unsqueeze(0)
            if xs.shape[1] > 0:
                _grad_params(xs.detach().contiguous().numpy(), grad_y.contiguous().numpy(),
                             dact.numpy(), gw, gb)  # fmt: skip
            gw = torch.from_numpy(gw) if needs[1] else None
            return None, gw, torch.from_numpy(gb) if needs[2] else None, None
        g = grad_y * dact  # (M, batch, out): the pre-activation's gradient
        gx = gw = gb = None
        if needs[0]:
            gx = torch.bmm(g, weight)  # (M, batch, in)
            if x.dim() == 2:  # a shared x: the sum over the models
                gx = gx.sum(0)
        if needs[1]:
            xs = x if x.dim() == 3 else x.unsqueeze(0).expand(weight.shape[0], *x.shape)
            gw = torch.bmm(g.transpose(1, 2), xs)  # (M, out, in)
        if needs[2]:
            gb = g.sum(1)
        return gx, gw, gb, None


def linear_act(x: Tensor, weight: Tensor, bias: Tensor, *, activation: str) -> Tensor:
    """M layers ``act(x @ weight[m]^T + bias[m])`` in one call: x ``(M, batch, in)`` or
    ``(batch, in)`` (shared), weight ``(M, out, in)``, bias ``(M, out)`` -> ``(M, batch, out)``;
    differentiable (first order). float32/float64 CPU tensors of one dtype; in <= MAX_FUSED_IN."""
    n_models, n_out, n_in = weight.shape
    if x.dim() not in (2, 3) or x.shape[-1] != n_in or (x.dim() == 3 and x.shape[0] != n_models):
        raise ValueError(
            f"x must be (batch, {n_in}) or ({n_models}, batch, {n_in}), got {tuple(x.shape)}"
        )
    if bias.shape != (n_models, n_out):
        raise ValueError(f"bias must be (M, out) = {(n_models, n_out)}, got {tuple(bias.shape)}")
    if not takes(n_in, activation):
        raise ValueError(
            f"the fused MLP layer takes at most {MAX_FUSED_IN} inputs and activations "
            f"{sorted(ACTIVATION_CODES)}, got {n_in} and {activation!r}"
        )
    return _LinearAct.apply(x, weight, bias, ACTIVATION_CODES[activation])
