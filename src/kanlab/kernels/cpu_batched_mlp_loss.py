"""The MSE of M small MLPs and every parameter gradient, in one Numba call (no autograd): the
fused training step of :func:`kanlab.train.fit_batch` for MLP batches, as
:mod:`kanlab.kernels.cpu_batched_loss` is for KAN batches.

Why: the quick suite's matched MLPs ([2,5,5,4,1], [2,13,13,1], ...) do ~10-100 kFLOP per sample
and model, so a batched evaluation under autograd (a baddbmm, an activation and their backward
per layer, ~30 tensor operations) is dispatch overhead: profiled at ~2.5 ms per evaluation of 3
``[2,5,5,4,1]`` models on 1000 points, whose arithmetic is ~1 MFLOP.

What it computes, per model m (blocks of :data:`_BLOCK` samples, activations held transposed
``(width, block)`` so the inner loops run over samples): the forward pass ``h_{l+1} =
act(W_l h_l + b_l)`` (no activation after the last layer), the loss ``sum (h_L - y)^2 / (rows *
outputs)`` and, by backpropagation, the gradients of ``weight[m] * loss[m]`` w.r.t. every
``W_l``, ``b_l``. All arithmetic is float64 (float32 models: their parameters and data are read
in float64 and the results rounded once), so float64 results equal autograd's to rounding and
float32 ones are closer to the exact values than float32 autograd. SiLU is
:mod:`kanlab.kernels.cpu_batched_layer`'s vectorised one; tanh is numpy's.

Dispatch (:func:`takes`): SiLU or tanh, every width at most :data:`MAX_WIDTH` (wider layers are
matrix products, where BLAS wins: measured beside the constant). Measured on 3 ``[2,5,5,4,1]``
MLPs, 20 LBFGS steps of ``fit_batch`` on 1000 points: 0.79 s thread CPU under autograd, 0.40 s
here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from numba import njit
from torch import Tensor

from kanlab.kernels.cpu.tuning import _CACHE
from kanlab.kernels.cpu_batched_layer import _activation

__all__ = ["ACTIVATION_CODES", "MAX_WIDTH", "mse_and_grads", "takes"]

_JIT = {"nogil": True, "cache": _CACHE, "fastmath": {"contract", "reassoc"}, "error_model": "numpy"}
ACTIVATION_CODES = {"silu": 2, "tanh": 4}  # 2: cpu_batched_layer._activation's SiLU
# widest layer taken: each output is `in` broadcast multiply-adds over a block, which beats
# autograd's batched products only for narrow layers. Thread CPU ms per model-evaluation (1000
# shared points, float32, SiLU, fused vs autograd, same process, load ~7 on 2 cores): [2,16^3,1]
# M=64 0.25 vs 0.36; [2,20^3,1] M=64 0.37 vs 0.40; [2,24^3,1] M=64 0.49 vs 0.48, M=8 0.58 vs
# 0.46; [2,32^3,1] M=64 1.00 vs 0.84, M=3 1.00 vs 0.76
MAX_WIDTH = 20
_BLOCK = 128  # samples per block (a block's activations of every layer stay in cache)


def takes(widths: Sequence[int], activation: str) -> bool:
    """Whether :func:`mse_and_grads` takes MLPs of ``widths`` with ``activation``."""
    return activation in ACTIVATION_CODES and max(widths) <= MAX_WIDTH


@njit(**_JIT)
def _act(z, bs, code, a, da, bits, tmp):  # pragma: no cover - compiled
    if code == 4:
        for s in range(bs):
            t = np.tanh(z[s])
            a[s] = t
            da[s] = 1.0 - t * t
    else:
        _activation(z, bs, code, True, a, da, bits, tmp)


@njit(**_JIT)
def _mse_grads(x, y, params, offsets, widths, code, wts, loss, grads):  # pragma: no cover
    """x (1 or M, N, w0), y (1 or M, N, wL), params (M, P): layer l's weight (w_{l+1}, w_l)
    row-major at offsets[2l] and its bias at offsets[2l+1]; grads (M, P) zeroed; loss (M,)."""
    n_models = params.shape[0]
    n_rows = x.shape[1]
    n_layers = widths.shape[0] - 1
    w_max = 0
    for w in widths:
        w_max = max(w_max, w)
    S = _BLOCK
    h = np.empty((n_layers + 1, w_max, S))  # every layer's input (and the output), transposed
    d = np.empty((n_layers, w_max, S))  # act' of each hidden layer's pre-activation
    delta = np.empty((w_max, S))
    delta2 = np.empty((w_max, S))
    z = np.empty(S)
    a = np.empty(S)
    da = np.empty(S)
    tmp = np.empty(S)
    bits = np.empty(S, dtype=np.int64)
    w_out = widths[n_layers]
    inv = 1.0 / (n_rows * w_out)
    for m in range(n_models):
        xm = 0 if x.shape[0] == 1 else m
        ym = 0 if y.shape[0] == 1 else m
        total = 0.0
        scale = 2.0 * inv * wts[m]
        for b0 in range(0, n_rows, S):
            bs = min(S, n_rows - b0)
            for i in range(widths[0]):
                for s in range(bs):
                    h[0, i, s] = x[xm, b0 + s, i]
            for layer in range(n_layers):
                n_in, n_out = widths[layer], widths[layer + 1]
                ow, ob = offsets[2 * layer], offsets[2 * layer + 1]
                hidden = layer < n_layers - 1
                for o in range(n_out):
                    bias = params[m, ob + o]
                    for s in range(bs):
                        z[s] = bias
                    for i in range(n_in):
                        w = params[m, ow + o * n_in + i]
                        for s in range(bs):
                            z[s] += w * h[layer, i, s]
                    if hidden:
                        _act(z, bs, code, a, da, bits, tmp)
                        for s in range(bs):
                            h[layer + 1, o, s] = a[s]
                            d[layer, o, s] = da[s]
                    else:
                        for s in range(bs):
                            h[layer + 1, o, s] = z[s]
            for o in range(w_out):
                for s in range(bs):
                    r = h[n_layers, o, s] - y[ym, b0 + s, o]
                    total += r * r
                    delta[o, s] = scale * r
            for layer in range(n_layers - 1, -1, -1):
                n_in, n_out = widths[layer], widths[layer + 1]
                ow, ob = offsets[2 * layer], offsets[2 * layer + 1]
                for o in range(n_out):
                    acc = 0.0
                    for s in range(bs):
                        acc += delta[o, s]
                    grads[m, ob + o] += acc
                    for i in range(n_in):
                        acc = 0.0
                        for s in range(bs):
                            acc += delta[o, s] * h[layer, i, s]
                        grads[m, ow + o * n_in + i] += acc
                if layer > 0:
                    for i in range(n_in):
                        for s in range(bs):
                            delta2[i, s] = 0.0
                        for o in range(n_out):
                            w = params[m, ow + o * n_in + i]
                            for s in range(bs):
                                delta2[i, s] += w * delta[o, s]
                        for s in range(bs):
                            delta2[i, s] *= d[layer - 1, i, s]
                    delta, delta2 = delta2, delta
        loss[m] = total * inv


def _rows(t: Tensor, n_models: int, width: int, name: str) -> np.ndarray:
    """``(rows, width)`` or ``(M, rows, width)`` -> a contiguous float64 ``(1 or M, rows, width)``."""
    t3 = t.unsqueeze(0) if t.dim() == 2 else t
    if t3.dim() != 3 or t3.shape[0] not in (1, n_models) or t3.shape[2] != width:
        raise ValueError(
            f"{name} must be (rows, {width}) or ({n_models}, rows, {width}), got {tuple(t.shape)}"
        )
    return np.ascontiguousarray(t3.detach().to(torch.float64).numpy())


def mse_and_grads(
    x: Tensor,
    y: Tensor,
    *,
    weights: Sequence[Tensor],
    biases: Sequence[Tensor],
    activation: str,
    weight: Tensor | None = None,
) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
    """The MSE of each of M MLPs (layer l: ``weights[l]`` (M, out, in), ``biases[l]`` (M, out);
    ``activation`` after every layer but the last) on x ``(rows, in)`` shared or ``(M, rows,
    in)``, against y ``(rows, out)`` or ``(M, rows, out)``, and per layer the gradients of
    ``sum_m weight[m] * mse[m]`` (weight (M,), default ones) w.r.t. (weight, bias), shaped and
    typed as the parameters; no autograd. -> ((M,) losses in the parameters' dtype, grads)."""
    if activation not in ACTIVATION_CODES:
        raise ValueError(
            f"activation must be one of {sorted(ACTIVATION_CODES)}, got {activation!r}"
        )
    if len(weights) != len(biases) or not weights:
        raise ValueError(f"need one bias per weight, got {len(weights)} and {len(biases)}")
    n_models = weights[0].shape[0]
    dtype = weights[0].dtype
    widths = [weights[0].shape[2]] + [w.shape[1] for w in weights]
    for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
        if w.shape != (n_models, widths[i + 1], widths[i]) or b.shape != (n_models, widths[i + 1]):
            raise ValueError(
                f"layer {i}: weight {tuple(w.shape)} / bias {tuple(b.shape)} do not chain the "
                f"widths {widths} of {n_models} models"
            )
    xa = _rows(x, n_models, widths[0], "x")
    ya = _rows(y, n_models, widths[-1], "y")
    if xa.shape[1] != ya.shape[1]:
        raise ValueError(f"x has {xa.shape[1]} rows but y has {ya.shape[1]}")
    flat = []
    offsets = []
    off = 0
    for w, b in zip(weights, biases, strict=True):
        for p in (w, b):
            offsets.append(off)
            off += p[0].numel()
            flat.append(p.detach().reshape(n_models, -1))
    params = np.ascontiguousarray(torch.cat(flat, 1).to(torch.float64).numpy())
    wts = np.ones(n_models) if weight is None else weight.detach().to(torch.float64).numpy()
    loss = np.zeros(n_models)
    grads = np.zeros_like(params)
    _mse_grads(xa, ya, params, np.asarray(offsets, dtype=np.int64),
               np.asarray(widths, dtype=np.int64), ACTIVATION_CODES[activation],
               np.ascontiguousarray(wts), loss, grads)  # fmt: skip
    g = torch.from_numpy(grads).to(dtype)
    out = []
    for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
        gw = g[:, offsets[2 * i] : offsets[2 * i] + w[0].numel()].reshape(w.shape)
        gb = g[:, offsets[2 * i + 1] : offsets[2 * i + 1] + b[0].numel()].reshape(b.shape)
        out.append((gw, gb))
    return torch.from_numpy(loss).to(dtype), out
