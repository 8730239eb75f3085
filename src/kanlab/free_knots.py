"""Free-knot training: the interior grid points of every KAN layer trained with the coefficients.

On a coarse grid, where the knots sit matters as much as the coefficients: with 3 intervals the best
cubic spline for sin(pi x) on [-1, 1] has its interior knots near +-0.43, not at the uniform +-1/3 or
at the data's quantiles, and its error is about half. Free-knot least squares (de Boor, *A Practical
Guide to Splines*, ch. XII) treats the knots as unknowns; here they join the model's parameters for
a few optimiser steps.

Parametrisation (per layer input, so the knots stay strictly increasing and inside the current grid
range): the ``G`` interval widths are ``(hi - lo) * softmax(logits)``, with ``lo``/``hi`` the grid's
end points (fixed); the ``k`` extension knots each side follow at the mean interval, as after a grid
update. The differentiated forward evaluates the splines with the reference maths
(:func:`kanlab.splines.coef_to_curve`, differentiable in the knots); after every optimiser step
:meth:`FreeKnotObjective.write_back` installs the knots in the layers, so the model itself (fast
kernels, non-uniform grid) always computes the same function.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kanlab.layers import ACTIVATIONS
from kanlab.models import KAN
from kanlab.splines import bspline_basis, coef_to_curve, extend_knots

# Up to this grid size the dense Cox-de Boor basis is faster than the sparse one (fewer small ops).
_DENSE_MAX_GRID = 5

__all__ = ["FreeKnotObjective"]


class FreeKnotObjective(nn.Module):
    """The training objective's forward with trainable interior knots (see the module docstring).

    ``forward(x, with_norms)`` has the signature of :class:`kanlab.train.step.Objective`; the sparsity
    regulariser is not supported (``with_norms`` must be False). Parameters: the model's, plus one
    ``logits`` tensor ``(in, G)`` per layer.
    """

    def __init__(self, model: KAN) -> None:
        super().__init__()
        if not isinstance(model, KAN):
            raise TypeError(f"free-knot training needs a KAN, got {type(model).__name__}")
        for i, layer in enumerate(model.layers):
            if layer._has_symbolic:
                raise ValueError(
                    f"free-knot training needs numeric edges; layer {i} has symbolic edges "
                    f"{sorted(layer.symbolic_edges())}"
                )
        self.model = model
        self.logits = nn.ParameterList()
        ends = []
        for layer in model.layers:
            grid = self._grid(layer)  # (in, G+1)
            lo, hi = grid[:, :1], grid[:, -1:]
            share = grid.diff(dim=1) / (hi - lo)  # (in, G), sums to 1
            tiny = torch.finfo(grid.dtype).tiny
            self.logits.append(nn.Parameter(share.clamp_min(tiny).log()))
            ends.append(torch.cat([lo, hi], dim=1))
        self._ends = ends  # per layer (in, 2): the fixed grid end points

    @staticmethod
    def _grid(layer: nn.Module) -> Tensor:
        k = layer.spline_order
        return layer.knots[:, k : layer.knots.shape[1] - k].detach()

    def knots(self) -> list[Tensor]:
        """Each layer's knots ``(in, G + 2k + 1)`` from the current logits (differentiable)."""
        out = []
        for layer, logits, ends in zip(self.model.layers, self.logits, self._ends, strict=True):
            lo, hi = ends[:, :1], ends[:, 1:]
            # The cumulative sum of the widths can pass 1 by rounding when the last widths are
            # tiny: clamped, so the interior knots never pass the fixed end (knots stay ordered).
            frac = torch.softmax(logits, dim=1).cumsum(dim=1)[:, :-1].clamp(max=1.0)
            inner = lo + (hi - lo) * frac
            out.append(extend_knots(torch.cat([lo, inner, hi], dim=1), layer.spline_order))
        return out

    def forward(self, x: Tensor, with_norms: bool) -> tuple[Tensor, list[Tensor]]:
        """``(batch, in) -> (batch, out)``, the model's function with the trainable knots."""
        if with_norms:
            raise ValueError("free-knot training does not support the sparsity regulariser")
        pairs = zip(self.model.layers, self.knots(), strict=True)
        for i, (layer, knots) in enumerate(pairs):
            k, weight = layer.spline_order, layer.spline_weight()  # (in, G+k, out)
            if layer.grid_size <= _DENSE_MAX_GRID:  # few basis functions: the dense recursion
                y = torch.einsum("big,igo->bo", bspline_basis(x, knots, k), weight)
            else:
                y = coef_to_curve(x, knots, weight, k, uniform=False).sum(dim=1)  # (batch, out)
            if layer.base_activation != "zero":
                w_b = layer.scale_base * layer._numeric_mask()
                y = y + ACTIVATIONS[layer.base_activation](x) @ w_b
            x = self.model.nodes_of(i, y)  # subnodes -> nodes (multiplication nodes, if any)
        return x, []

    @torch.no_grad()
    def write_back(self) -> None:
        """Install the current knots in the model's layers (a non-uniform grid)."""
        for layer, knots in zip(self.model.layers, self.knots(), strict=True):
            layer.knots = knots.detach().to(layer.knots.dtype).contiguous()
            layer.grid_uniform.fill_(False)
            layer._uniform = False
