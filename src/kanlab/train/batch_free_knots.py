"""Free-knot training for a model batch: :class:`~kanlab.free_knots.FreeKnotObjective` per model,
vectorised over the M models of a :class:`~kanlab.model_batch.KANBatch` (used by ``fit_batch``).

The parametrisation is FreeKnotObjective's, per model and layer input: the ``G`` interval widths are
``(hi - lo) * softmax(logits)`` with the grid's end points fixed, and ``k`` extension knots each side
at the mean interval. The logits are one ``(M, in, G)`` parameter per layer (model m's slice is what
FreeKnotObjective holds for model m alone); the differentiated forward evaluates the splines on the
batched reference basis (differentiable in the knots), and :meth:`BatchFreeKnots.write_back`
installs the knots of the chosen models in the batch's layers.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kanlab.kernels.batched_reference import batched_basis
from kanlab.layers import ACTIVATIONS
from kanlab.model_batch import KANBatch
from kanlab.splines import extend_knots

__all__ = ["BatchFreeKnots"]


def _grid(knots: Tensor, spline_order: int) -> Tensor:
    """The ``G + 1`` grid points ``(M, in, G + 1)`` of knots ``(M, in, G + 2k + 1)``."""
    return knots[..., spline_order : knots.shape[-1] - spline_order].detach()


class BatchFreeKnots(nn.Module):
    """Trainable interior knots for every model of ``batch``: ``logits`` holds one ``(M, in, G)``
    parameter per layer; calling it maps x ``(rows, in)`` (shared) or ``(M, rows, in)`` (one per
    model) to ``(M, rows, out)``, the batch's function with the knots the logits give."""

    def __init__(self, batch: KANBatch) -> None:
        super().__init__()
        if not isinstance(batch, KANBatch):
            raise TypeError(f"free-knot training needs a KANBatch, got {type(batch).__name__}")
        self.batch = batch
        self.logits = nn.ParameterList()
        ends = []
        for layer in batch.layers:
            grid = _grid(layer.knots, layer.spline_order)  # (M, in, G+1)
            lo, hi = grid[..., :1], grid[..., -1:]
            share = grid.diff(dim=-1) / (hi - lo)  # (M, in, G), sums to 1
            tiny = torch.finfo(grid.dtype).tiny
            self.logits.append(nn.Parameter(share.clamp_min(tiny).log()))
            ends.append(torch.cat([lo, hi], dim=-1))
        self._ends = ends  # per layer (M, in, 2): the fixed grid end points

    def knots(self) -> list[Tensor]:
        """Each layer's knots ``(M, in, G + 2k + 1)`` from the current logits (differentiable)."""
        out = []
        for layer, logits, ends in zip(self.batch.layers, self.logits, self._ends, strict=True):
            lo, hi = ends[..., :1], ends[..., 1:]
            frac = torch.softmax(logits, dim=-1).cumsum(dim=-1)[..., :-1].clamp(max=1.0)
            grid = torch.cat([lo, lo + (hi - lo) * frac, hi], dim=-1)  # (M, in, G+1)
            M, n_in, _ = grid.shape
            knots = extend_knots(grid.reshape(M * n_in, -1), layer.spline_order)
            out.append(knots.reshape(M, n_in, -1))
        return out

    def forward(self, x: Tensor) -> Tensor:
        """x ``(rows, in)`` shared by the models, or ``(M, rows, in)`` -> ``(M, rows, out)``."""
        batch = self.batch
        h = x if x.dim() == 3 else x.unsqueeze(0).expand(batch.n_models, *x.shape)  # (M, rows, in)
        for layer, knots in zip(batch.layers, self.knots(), strict=True):
            weight = layer.coef * (layer.scale_spline * layer.mask).unsqueeze(
                2
            )  # (M, in, G+k, out)
            y = torch.einsum("mbig,migo->mbo", batched_basis(h, knots, layer.spline_order), weight)
            if layer.base_activation != "zero":
                base = ACTIVATIONS[layer.base_activation](h)
                y = torch.baddbmm(y, base, layer.scale_base * layer.mask)
            h = y
        return h

    @torch.no_grad()
    def write_back(self, models: Tensor) -> None:
        """Install the current knots of ``models`` ((M,) bool) in the batch's layers (non-uniform
        grids); the other models keep theirs."""
        idx = models.to(self.batch.layers[0].knots.device).nonzero().flatten()
        for layer, knots in zip(self.batch.layers, self.knots(), strict=True):
            layer.knots[idx] = knots[idx].to(layer.knots.dtype)
            layer.grid_uniform[idx] = False
