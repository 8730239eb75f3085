"""Grid updates and extensions of M layers at once: pure tensor functions over a model dimension.

The same algorithm as :meth:`kanlab.KANLinear.update_grid` / ``extend_grid`` (new knots from the
data's quantiles mixed with a uniform grid, or uniform on the grid range; the current splines
sampled at the data and refitted on the new knots by the ridge least squares of
:func:`kanlab.splines.curve_to_coef`), for the tensors of a :class:`kanlab.KANBatchLayer`.

Every step of that algorithm works input by input (per column: sort, quantiles, basis, one small
least-squares system per input), so M layers of ``in`` inputs are handled as *one wide layer* of
``M * in`` inputs: the spline functions of :mod:`kanlab.splines` run on it unchanged and give each
model what its own layer computes (the same operations on the same numbers). The wide tensors are
processed in chunks of models (:data:`CHUNK_ELEMENTS`), so the dense bases stay small.

Shapes: x ``(M, batch, in)``; knots ``(M, in, G+2k+1)``; coef ``(M, in, G+k, out)``; the per-model
"uniform grid" flags ``(M,)`` bool.
"""

from __future__ import annotations

import torch
from torch import Tensor

from kanlab.splines import (
    coef_to_curve,
    curve_to_coef,
    interval_samples,
    knots_from_data,
    uniform_knots,
)

__all__ = ["CHUNK_ELEMENTS", "data_knots", "range_knots", "refit"]

# At most about this many entries in a chunk's dense basis (batch x models x in x basis functions).
# The spline functions run a few dozen elementwise passes over such tensors, so a chunk that stays
# in cache pays: measured at M=64 [2,5,1], 1000 rows, float64, one thread (ms per update_grid):
# 2^14: 1010, 2^16: 838, 2^17: 689, 2^18: 641, 2^19: 734, 2^20: 1016, 2^22: 1201 (load ~7).
CHUNK_ELEMENTS = 1 << 18


def _wide(x: Tensor) -> Tensor:
    """``(M, batch, in) -> (batch, M * in)``: model m's input i is column ``m * in + i``."""
    n_models, batch, n_in = x.shape
    return x.permute(1, 0, 2).reshape(batch, n_models * n_in)


def data_knots(
    x: Tensor, grid_size: int, spline_order: int, grid_eps: float, *, margin: float = 0.0
) -> Tensor:
    """:func:`kanlab.splines.knots_from_data` per model: x ``(M, batch, in)`` ->
    ``(M, in, G+2k+1)``."""
    n_models, _, n_in = x.shape
    # (M*in, G+2k+1)
    knots = knots_from_data(_wide(x), grid_size, spline_order, grid_eps, margin=margin)
    return knots.reshape(n_models, n_in, -1)


def range_knots(knots: Tensor, new_size: int, spline_order: int) -> tuple[Tensor, Tensor]:
    """Uniform knots of ``new_size`` intervals on each model's current grid range, and the samples
    ``extend_grid`` without data refits on (``4 (new_size + k) + 1`` points spread over the range).

    knots ``(M, in, G+2k+1)`` -> ``(M, in, new_size+2k+1)``, samples ``(M, n_samples, in)``.
    """
    k = spline_order
    n_models, n_in, _ = knots.shape
    lo, hi = knots[..., k], knots[..., -k - 1]  # (M, in): the grid range
    lo_hi = torch.stack([lo, hi], dim=-1).reshape(n_models * n_in, 2)
    new = uniform_knots(n_models * n_in, new_size, k, lo_hi, dtype=knots.dtype)
    n_samples = 4 * (new_size + k) + 1
    frac = torch.linspace(0, 1, n_samples, dtype=knots.dtype, device=knots.device)
    samples = lo.unsqueeze(1) + (hi - lo).unsqueeze(1) * frac.unsqueeze(1)  # (M, n_samples, in)
    return new.reshape(n_models, n_in, -1), samples


def _chunks(n_models: int, per_model: int) -> list[slice]:
    """Slices of models with at most :data:`CHUNK_ELEMENTS` entries each (at least one model)."""
    step = max(1, CHUNK_ELEMENTS // max(1, per_model))
    return [slice(s, min(s + step, n_models)) for s in range(0, n_models, step)]


def _curves(x: Tensor, knots: Tensor, coef: Tensor, uniform: Tensor, k: int) -> Tensor:
    """Every edge's spline at x, per model: :func:`kanlab.splines.coef_to_curve` with each model's
    own ``uniform`` flag. Returns ``(M, batch, in, out)``."""
    n_models, batch, n_in = x.shape
    y = x.new_empty(n_models, batch, n_in, coef.shape[-1])
    for flag in (True, False):
        models = (uniform == flag).nonzero().flatten()
        if models.numel() == 0:
            continue
        sel = models.numel()
        yw = coef_to_curve(
            _wide(x.index_select(0, models)),
            knots.index_select(0, models).reshape(sel * n_in, -1),
            coef.index_select(0, models).reshape(sel * n_in, *coef.shape[2:]),
            k,
            uniform=flag,
        )  # (batch, sel*in, out)
        y[models] = yw.reshape(batch, sel, n_in, -1).permute(1, 0, 2, 3)
    return y


def refit(
    x: Tensor,
    knots: Tensor,
    coef: Tensor,
    uniform: Tensor,
    new_knots: Tensor,
    *,
    new_uniform: bool,
    spline_order: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """``KANLinear._refit`` per model: the coefficients on ``new_knots`` that fit the current
    splines (``knots``, ``coef``, ``uniform``) sampled at ``x`` and at
    :func:`~kanlab.splines.interval_samples` of the new grid.

    Inputs whose new knots have no spread (all samples equal) keep their grid, as in the layer:
    the old knots (or a uniform grid of the new size on the old range), refitted on samples spread
    over that range. x ``(M, batch, in)``, knots ``(M, in, G+2k+1)``, coef ``(M, in, G+k, out)``,
    uniform ``(M,)`` bool, new_knots ``(M, in, G'+2k+1)``; ``new_uniform``: whether the new knots
    are uniform (before that rule). Returns ``(knots (M, in, G'+2k+1), coef (M, in, G'+k, out),
    uniform (M,) bool)``.
    """
    k = spline_order
    n_models, batch, n_in = x.shape
    flags = torch.full((n_models,), new_uniform, dtype=torch.bool, device=uniform.device)
    degenerate = ~(new_knots[..., -1] - new_knots[..., 0] > 0)  # (M, in)
    if bool(degenerate.any()):
        lo, hi = knots[..., k], knots[..., -k - 1]  # (M, in)
        if new_knots.shape == knots.shape:
            keep = knots
            hit = degenerate.any(dim=1).to(uniform.device)
            flags = torch.where(hit, flags & uniform, flags)
        else:  # (in the knots' dtype, as the layer does)
            g = new_knots.shape[-1] - 2 * k - 1
            lo_hi = torch.stack([lo, hi], dim=-1).reshape(n_models * n_in, 2)
            keep = uniform_knots(n_models * n_in, g, k, lo_hi, dtype=new_knots.dtype)
            keep = keep.reshape(n_models, n_in, -1)
        new_knots = torch.where(degenerate.unsqueeze(-1), keep.to(new_knots), new_knots)
        frac = torch.linspace(0, 1, batch, dtype=x.dtype, device=x.device).unsqueeze(1)
        spread = lo.unsqueeze(1) + (hi - lo).unsqueeze(1) * frac  # (M, batch, in)
        x = torch.where(degenerate.unsqueeze(1), spread, x)
    # the data, and points in every new interval (as the layer: no coefficient left to the ridge)
    inside = interval_samples(new_knots.reshape(n_models * n_in, -1), k).to(x)  # (n, M*in)
    x = torch.cat([x, inside.reshape(-1, n_models, n_in).permute(1, 0, 2)], dim=1)
    batch = x.shape[1]
    n_basis = new_knots.shape[-1] - k - 1
    out = []
    for part in _chunks(n_models, batch * n_in * max(n_basis, coef.shape[2])):
        xp, sel = x[part], x[part].shape[0]
        y = _curves(xp, knots[part], coef[part], uniform[part], k)  # (sel, batch, in, out)
        yw = y.permute(1, 0, 2, 3).reshape(batch, sel * n_in, -1)
        kw = new_knots[part].reshape(sel * n_in, -1)
        out.append(curve_to_coef(_wide(xp), yw, kw, k).reshape(sel, n_in, n_basis, -1))
    return new_knots, torch.cat(out), flags
