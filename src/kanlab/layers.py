"""KANLinear: a layer of learnable univariate functions on edges, as the KAN paper defines it.

Each edge (i -> o) computes ``phi_{o,i}(x_i) = mask[i,o] * (w_b[i,o] * b(x_i) + w_s[i,o] * spline_{i,o}(x_i))``
and each output node sums its incoming edges. ``b`` is the residual base function (SiLU by default) and
``spline_{i,o}(x) = sum_g c[i,g,o] B_g(x)`` a B-spline of order k on G grid intervals.

Parameters (shapes): ``coef`` (in, G+k, out), ``scale_base`` w_b (in, out), ``scale_spline`` w_s
(in, out). Buffers: ``knots`` (in, G+2k+1), ``mask`` (in, out) of 0/1, ``grid_uniform`` (a 0-dim bool:
whether the knots are equally spaced, which lets the kernels skip the interval search).

Initialisation follows the paper: c ~ N(0, noise_scale^2) with noise_scale = 0.1, w_s = 1, w_b Xavier
uniform, so every edge starts as roughly ``w_b * b(x)`` plus small spline noise.

Inputs outside the knot span ``[t_0, t_{G+2k})`` give a zero spline part: the spline decays smoothly
to zero over the k extension intervals beyond ``grid_range`` and is exactly zero further out. The base
branch still carries such inputs. ``update_grid`` moves the grid to where the data are.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kanlab import kernels
from kanlab._checks import (
    check_choice,
    check_finite,
    check_float,
    check_input,
    check_int,
    check_range,
)
from kanlab._symbolic_eval import symbolic_sum
from kanlab.functions import get_function
from kanlab.splines import coef_to_curve, curve_to_coef, knots_from_data, uniform_knots

__all__ = ["ACTIVATIONS", "KANLinear"]


def _identity(x: Tensor) -> Tensor:
    return x


def _zero(x: Tensor) -> Tensor:
    return torch.zeros_like(x)


# Named, module-level functions (not lambdas) so that models pickle and configs stay JSON.
ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "silu": F.silu,
    "identity": _identity,
    "zero": _zero,
    "gelu": F.gelu,
    "relu": F.relu,
    "tanh": torch.tanh,
}


class KANLinear(nn.Module):
    """A KAN layer ``(..., in_features) -> (..., out_features)``.

    Args:
        in_features, out_features: widths.
        grid_size: G, the number of grid intervals (>= 1).
        spline_order: k, the B-spline order (degree; >= 0; 3 = cubic).
        grid_range: (low, high) of the initial uniform grid.
        base_activation: residual base function b: one of ``ACTIVATIONS`` ("silu", "identity",
            "zero", ...).
        noise_scale: standard deviation of the initial spline coefficients.
        generator: a ``torch.Generator`` for the initialisation (``None``: the global RNG).
        device, dtype: as for ``torch.nn.Linear``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        grid_size: int = 5,
        spline_order: int = 3,
        grid_range: Sequence[float] = (-1.0, 1.0),
        base_activation: str = "silu",
        noise_scale: float = 0.1,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.in_features = check_int("in_features", in_features, minimum=1)
        self.out_features = check_int("out_features", out_features, minimum=1)
        check_int("grid_size", grid_size, minimum=1)
        self.spline_order = check_int("spline_order", spline_order, minimum=0)
        self.grid_range = check_range("grid_range", grid_range)
        self.base_activation = check_choice("base_activation", base_activation, list(ACTIVATIONS))
        self.noise_scale = check_float("noise_scale", noise_scale, minimum=0.0)
        dtype = dtype or torch.get_default_dtype()
        if not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating-point dtype, got {dtype}")
        n_in, n_out, k = in_features, out_features, spline_order

        def rand(*shape: int, normal: bool) -> Tensor:
            draw = torch.randn if normal else torch.rand
            return draw(*shape, generator=generator, dtype=dtype).to(device)

        self.coef = nn.Parameter(rand(n_in, grid_size + k, n_out, normal=True) * noise_scale)
        bound = math.sqrt(6.0 / (n_in + n_out))  # Xavier uniform
        self.scale_base = nn.Parameter((rand(n_in, n_out, normal=False) * 2 - 1) * bound)
        self.scale_spline = nn.Parameter(torch.ones(n_in, n_out, dtype=dtype, device=device))
        knots = uniform_knots(n_in, grid_size, k, self.grid_range, dtype=dtype, device=device)
        self.register_buffer("knots", knots)
        self.register_buffer("mask", torch.ones(n_in, n_out, dtype=dtype, device=device))
        self.register_buffer("grid_uniform", torch.tensor(True, device=device))
        self._uniform = True  # host mirror of grid_uniform, read in forward without a sync
        self._init_symbolic()

    # ------------------------------------------------------------------ properties
    @property
    def grid_size(self) -> int:
        """G, the number of grid intervals."""
        return self.knots.shape[1] - 2 * self.spline_order - 1

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"grid_size={self.grid_size}, spline_order={self.spline_order}, "
            f"base_activation={self.base_activation!r}, uniform_grid={self._uniform}"
        )

    # ------------------------------------------------------------------ forward
    def _flat_input(self, x: Tensor) -> Tensor:
        check_input(x, self.in_features, dtype=self.coef.dtype)
        return x.reshape(-1, self.in_features)

    def spline_weight(self) -> Tensor:
        """The coefficient table with spline scales and mask folded in: ``(in, G+k, out)``."""
        return self.coef * (self.scale_spline * self._numeric_mask()).unsqueeze(1)

    def forward(self, x: Tensor) -> Tensor:
        """``(..., in) -> (..., out)``."""
        x2 = self._flat_input(x)  # (batch, in)
        y = None
        if not self._all_symbolic:  # with every edge symbolic the numeric branch is skipped
            if self._mask_is_ones():  # the common case: the scales as they are
                scale_spline, scale_base = self.scale_spline, self.scale_base
            else:
                mask = self._numeric_mask()
                scale_spline, scale_base = self.scale_spline * mask, self.scale_base * mask
            y = kernels.spline_product(
                x2,
                self.knots,
                self.coef,
                self.spline_order,
                uniform=self._uniform,
                scale=scale_spline,  # (in, out): spline_weight() = coef * scale, fused
            )  # (batch, out)
            if self.base_activation != "zero":  # y + act(x) @ scale_base in one GEMM call
                y = torch.addmm(y, ACTIVATIONS[self.base_activation](x2), scale_base)
        if self._has_symbolic:
            y = self._symbolic_sum(x2, base=y)  # (batch, out): y + the symbolic edges
        return y.reshape(*x.shape[:-1], self.out_features)

    def activations(self, x: Tensor) -> Tensor:
        """Edge outputs ``phi_{o,i}(x_i)``: ``(..., in) -> (..., out, in)``; summing over the last
        dimension gives ``forward(x)``."""
        x2 = self._flat_input(x)
        phi = kernels.edge_values(
            x2, self.knots, self.spline_weight(), self.spline_order, uniform=self._uniform
        )  # (batch, out, in)
        if self.base_activation != "zero":
            base = ACTIVATIONS[self.base_activation](x2)  # (batch, in)
            phi = phi + base.unsqueeze(1) * (self.scale_base * self._numeric_mask()).T
        if self._has_symbolic:
            flat = self._sym_out * self.in_features + self._sym_in  # (E,) into (out*in)
            sym = phi.new_zeros(self.out_features * self.in_features, x2.shape[0])
            sym = sym.index_add(0, flat, self._symbolic_values(x2))  # (out*in, batch)
            phi = phi + sym.T.reshape(x2.shape[0], self.out_features, self.in_features)
        return phi.reshape(*x.shape[:-1], self.out_features, self.in_features)

    # ------------------------------------------------------------------ grids
    def _set_grid(self, knots: Tensor, coef: Tensor, *, uniform: bool) -> None:
        """Install new knots and coefficients (grid size may change)."""
        if coef.shape == self.coef.shape:
            self.coef.data.copy_(coef)
        else:  # fresh standard strides: LBFGS flattens gradients with view(), DDP wants matching
            # gradient strides (a solver's output can be column-major, or odd on size-1 dims)
            fresh = torch.empty(coef.shape, dtype=self.coef.dtype, device=self.coef.device)
            self.coef = nn.Parameter(fresh.copy_(coef), requires_grad=self.coef.requires_grad)
        self.knots = knots.to(self.knots.dtype).contiguous()
        self.grid_uniform.fill_(uniform)
        self._uniform = uniform

    def _check_grid_data(self, x: Tensor) -> Tensor:
        check_input(x, self.in_features, name="x", dtype=self.coef.dtype)
        if x.dim() != 2:
            raise ValueError(f"x must have shape (batch, {self.in_features}), got {tuple(x.shape)}")
        if x.shape[0] < 2:
            raise ValueError(f"x must have at least 2 samples to place a grid, got {x.shape[0]}")
        return check_finite("x", x)

    @torch.no_grad()
    def update_grid(self, x: Tensor, *, grid_eps: float = 0.02) -> None:
        """Move the knots to the distribution of ``x`` ``(batch, in)`` and refit the coefficients so
        the learned function is preserved (in the least-squares sense, on the data).

        ``grid_eps`` mixes a uniform grid on the data's range into the quantiles (0: quantiles only,
        1: uniform on the data's range). An input whose samples are all equal keeps its knots.
        """
        self._check_grid_data(x)
        grid_eps = check_float("grid_eps", grid_eps, minimum=0.0)
        if grid_eps > 1:
            raise ValueError(f"grid_eps must be in [0, 1], got {grid_eps}")
        new_knots = knots_from_data(x, self.grid_size, self.spline_order, grid_eps)
        self._refit(x, new_knots, uniform=grid_eps == 1.0)

    @torch.no_grad()
    def extend_grid(
        self, new_size: int, x: Tensor | None = None, *, grid_eps: float = 0.02
    ) -> None:
        """Grid extension (fine-graining) to ``new_size`` intervals, preserving the function.

        Without ``x``: a uniform grid on the current grid range; the refit samples the range densely.
        When the new grid refines the old uniform one (5 -> 10 -> 20 ...), the old spline lies in the
        new spline space and is reproduced exactly (to rounding) on the grid range.
        With ``x`` ``(batch, in)``: the new grid is placed on the data as in :meth:`update_grid` and
        the refit uses the data.
        """
        check_int("new_size", new_size, minimum=1)
        k = self.spline_order
        if x is not None:
            self._check_grid_data(x)
            new_knots = knots_from_data(x, new_size, k, grid_eps)
            self._refit(x, new_knots, uniform=grid_eps == 1.0)
            return
        lo, hi = self.knots[:, k], self.knots[:, -k - 1]  # (in,) the grid range
        new_knots = uniform_knots(
            self.in_features, new_size, k, torch.stack([lo, hi], dim=1), dtype=self.knots.dtype
        )
        m = 4 * (new_size + k) + 1
        frac = torch.linspace(0, 1, m, dtype=self.knots.dtype, device=self.knots.device)
        samples = (lo.unsqueeze(0) + (hi - lo).unsqueeze(0) * frac.unsqueeze(1)).contiguous()
        self._refit(samples, new_knots, uniform=True)

    def _refit(self, x: Tensor, new_knots: Tensor, *, uniform: bool) -> None:
        """Fit coefficients on ``new_knots`` to the current splines sampled at ``x`` (batch, in)."""
        # Inputs whose data have no spread keep their grid (a zero-width grid is meaningless): the old
        # knots, or a uniform grid of the new size on the old grid range, refit on samples spread
        # over that range (the data would pin the function at one point only).
        width = new_knots[:, -1] - new_knots[:, 0]
        degenerate = ~(width > 0)  # (in,)
        if bool(degenerate.any()):
            k = self.spline_order
            lo, hi = self.knots[:, k], self.knots[:, -k - 1]  # (in,)
            if new_knots.shape == self.knots.shape:
                keep = self.knots
                uniform = uniform and self._uniform
            else:  # uniform rows: the layer stays uniform if the other rows are
                g = new_knots.shape[1] - 2 * k - 1
                keep = uniform_knots(self.in_features, g, k, torch.stack([lo, hi], dim=1))
            new_knots = torch.where(degenerate.unsqueeze(1), keep.to(new_knots), new_knots)
            frac = torch.linspace(0, 1, x.shape[0], dtype=x.dtype, device=x.device).unsqueeze(1)
            spread = lo + (hi - lo) * frac  # (batch, in)
            x = torch.where(degenerate, spread, x)
        y = coef_to_curve(x, self.knots, self.coef, self.spline_order, uniform=self._uniform)
        coef = curve_to_coef(x, y, new_knots, self.spline_order)
        self._set_grid(new_knots, coef, uniform=uniform)

    # ------------------------------------------------------------------ state
    def _load_from_state_dict(  # type: ignore[override]
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        # A checkpoint may hold a different grid size (after grid extension): resize first.
        knots = state_dict.get(prefix + "knots")
        coef = state_dict.get(prefix + "coef")
        if knots is not None and coef is not None and knots.shape != self.knots.shape:
            if knots.shape[0] != self.in_features or coef.shape[0] != self.in_features:
                error_msgs.append(
                    f"{prefix}knots: checkpoint has {knots.shape[0]} inputs, layer has "
                    f"{self.in_features}"
                )
            else:
                self.knots = torch.empty_like(
                    knots, dtype=self.knots.dtype, device=self.knots.device
                )
                self.coef = nn.Parameter(
                    torch.empty(coef.shape, dtype=self.coef.dtype, device=self.coef.device),
                    requires_grad=self.coef.requires_grad,
                )
        self._prepare_symbolic_load(state_dict, prefix)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        self._uniform = bool(self.grid_uniform)
        self._rebuild_symbolic()

    # ------------------------------------------------------------------ symbolic edges
    # An edge may be replaced by a library function: phi(x) = c * f(a*x + b) + d with trainable
    # (a, b, c, d). State (created on the first fixed edge, so a purely numeric layer has no extra
    # parameters, buffers or state_dict keys):
    #   symbolic_mask   (in, out) 0/1 buffer: 1 = symbolic edge (its numeric part is switched off);
    #   symbolic_fn     (in, out) int64 buffer: index into the layer's name list, -1 = none;
    #   symbolic_names  (n_bytes,) uint8 buffer: the names, newline-joined UTF-8 (so a state_dict is
    #                   self-contained and function ids never depend on registration order);
    #   symbolic_affine (in, out, 4) Parameter: (a, b, c, d) per edge.
    # For forward, the symbolic edges are sorted by function into index buffers _sym_in/_sym_out (E,)
    # and a host list of (name, start, end) groups, rebuilt (with host syncs) only when edges change:
    # forward evaluates each function once on its group's (n_edges, batch) slab, never edge by edge
    # (kanlab._symbolic_eval: fused CPU kernels around torch's f, or torch ops on other devices).
    def _init_symbolic(self) -> None:
        self.register_buffer("symbolic_mask", None)
        self.register_buffer("symbolic_fn", None)
        self.register_buffer("symbolic_names", None)
        self.register_parameter("symbolic_affine", None)
        self.register_buffer("_sym_in", None, persistent=False)
        self.register_buffer("_sym_out", None, persistent=False)
        self.register_buffer("_sym_flat", None, persistent=False)
        self.register_buffer("_numeric_keep", None, persistent=False)
        self._sym_sizes: list[int] = []
        self._sym_host: np.ndarray | None = None  # (3, E) int64 rows in, out, flat on the host
        self._numeric_cache: tuple | None = None  # see _numeric_mask
        self._ones_cache: tuple | None = None  # see _mask_is_ones
        self._sym_groups: list[tuple[str, int, int]] = []
        self._has_symbolic = False  # host flag: any symbolic edge (forward's only extra cost)
        self._all_symbolic = False  # host flag: every edge symbolic (numeric branch skipped)

    def _numeric_mask(self) -> Tensor:
        """The mask of the numeric (spline + base) branch: ``mask * (1 - symbolic_mask)``.

        Cached while ``mask`` and the symbolic edges stay the same tensors at the same in-place
        version (an in-place edit of the mask, e.g. pruning, or a rebuild recomputes it)."""
        if not self._has_symbolic:
            return self.mask
        mask, keep = self.mask, self._numeric_keep
        if torch.compiler.is_compiling():
            return mask * keep
        versions = (mask._version, keep._version)
        c = self._numeric_cache  # (mask, keep, versions, mask * keep)
        if c is not None and c[0] is mask and c[1] is keep and c[2] == versions:
            return c[3]
        out = mask * keep
        if not torch.is_inference_mode_enabled():  # inference tensors cannot be saved for backward
            self._numeric_cache = (mask, keep, versions, out)
        return out

    def _mask_is_ones(self) -> bool:
        """Host flag: no symbolic edge and every edge unmasked, so forward can use the scales
        directly (saving two products and their backward per call; bit-identical results).

        Cached per mask tensor and in-place version: one host sync when the mask changes."""
        if self._has_symbolic or torch.compiler.is_compiling():
            return False
        mask = self.mask
        c = self._ones_cache  # (mask, version, flag)
        if c is not None and c[0] is mask and c[1] == mask._version:
            return c[2]
        flag = bool((mask == 1).all())
        self._ones_cache = (mask, mask._version, flag)
        return flag

    def _alloc_symbolic(self, n_bytes: int = 0) -> None:
        n_in, n_out = self.in_features, self.out_features
        dev, dt = self.mask.device, self.mask.dtype
        self.symbolic_mask = torch.zeros(n_in, n_out, dtype=dt, device=dev)
        self.symbolic_fn = torch.full((n_in, n_out), -1, dtype=torch.int64, device=dev)
        self.symbolic_names = torch.zeros(n_bytes, dtype=torch.uint8, device=dev)
        affine = torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=dt, device=dev)
        self.symbolic_affine = nn.Parameter(affine.expand(n_in, n_out, 4).clone())

    def symbolic_function_names(self) -> list[str]:
        """The layer's function vocabulary (``symbolic_fn`` indexes into it)."""
        if self.symbolic_names is None or self.symbolic_names.numel() == 0:
            return []
        return bytes(self.symbolic_names.cpu().tolist()).decode("utf-8").split("\n")

    def _set_symbolic_names(self, names: list[str]) -> None:
        data = list("\n".join(names).encode("utf-8"))
        self.symbolic_names = torch.tensor(data, dtype=torch.uint8, device=self.mask.device)

    def _check_edge(self, i: int, o: int) -> None:
        check_int("in index i", i, minimum=0)
        check_int("out index o", o, minimum=0)
        if i >= self.in_features or o >= self.out_features:
            raise ValueError(
                f"edge (in={i}, out={o}) is outside the layer's {self.in_features} inputs and "
                f"{self.out_features} outputs"
            )

    @torch.no_grad()
    def set_symbolic(
        self, i: int, o: int, name: str, affine: Sequence[float] = (1.0, 0.0, 1.0, 0.0)
    ) -> None:
        """Replace edge ``i -> o`` by ``c * f(a*x + b) + d`` with ``f`` the library function
        ``name`` and ``affine = (a, b, c, d)``; the edge's numeric part is switched off (kept, and
        restored by :meth:`unset_symbolic`)."""
        self._check_edge(i, o)
        fn = get_function(name)
        vals = [check_float(f"affine[{j}]", v) for j, v in enumerate(affine)]
        if len(vals) != 4:
            raise ValueError(f"affine must be 4 numbers (a, b, c, d), got {len(vals)}")
        if self.symbolic_mask is None:
            self._alloc_symbolic()
        names = self.symbolic_function_names()
        if fn.name not in names:
            names.append(fn.name)
            self._set_symbolic_names(names)
        self.symbolic_fn[i, o] = names.index(fn.name)
        self.symbolic_mask[i, o] = 1.0
        self.symbolic_affine[i, o] = torch.tensor(vals, dtype=self.symbolic_affine.dtype)
        self._rebuild_symbolic()

    @torch.no_grad()
    def unset_symbolic(self, i: int, o: int) -> None:
        """Return edge ``i -> o`` to its numeric (spline + base) function."""
        self._check_edge(i, o)
        if self.symbolic_mask is None:
            return
        self.symbolic_mask[i, o] = 0.0
        self.symbolic_fn[i, o] = -1
        self._rebuild_symbolic()

    def symbolic_edges(self) -> dict[tuple[int, int], str]:
        """``{(in, out): function name}`` of the symbolic edges (host sync; not for hot paths)."""
        if self.symbolic_mask is None:
            return {}
        names = self.symbolic_function_names()
        ii, oo = torch.nonzero(self.symbolic_mask > 0, as_tuple=True)
        ids = self.symbolic_fn[ii, oo]
        return {
            (int(i), int(o)): names[int(k)]
            for i, o, k in zip(ii.tolist(), oo.tolist(), ids.tolist(), strict=True)
        }

    def _rebuild_symbolic(self) -> None:
        """Sort the symbolic edges by function into the index buffers used by forward."""
        if self.symbolic_mask is None:
            self._has_symbolic = self._all_symbolic = False
            self._numeric_keep = None
            self._sym_host = None
            self._numeric_cache = None
            return
        names = self.symbolic_function_names()
        live = self.symbolic_mask > 0
        ins, outs, groups, start = [], [], [], 0
        for k, name in enumerate(names):
            ii, oo = torch.nonzero(live & (self.symbolic_fn == k), as_tuple=True)
            if ii.numel():
                ins.append(ii)
                outs.append(oo)
                groups.append((name, start, start + ii.numel()))
                start += ii.numel()
        bad = live & ((self.symbolic_fn < 0) | (self.symbolic_fn >= len(names)))
        if bool(bad.any()):
            raise ValueError(f"symbolic_fn holds ids outside the layer's names {names}")
        empty = torch.zeros(0, dtype=torch.int64, device=self.mask.device)
        self._sym_in = torch.cat(ins) if ins else empty
        self._sym_out = torch.cat(outs) if outs else empty
        self._sym_groups = groups
        self._sym_sizes = [e - s for _, s, e in groups]
        self._sym_flat = self._sym_in * self.out_features + self._sym_out
        index = torch.stack([self._sym_in, self._sym_out, self._sym_flat])  # (3, E)
        self._sym_host = index.cpu().numpy()
        self._numeric_keep = 1 - self.symbolic_mask  # (in, out) folded into the numeric mask
        self._numeric_cache = None
        self._has_symbolic = start > 0
        self._all_symbolic = bool((self.symbolic_mask > 0).all())

    def _symbolic_values(self, x2: Tensor) -> Tensor:
        """Outputs of the symbolic edges, transposed: ``(batch, in) -> (E, batch)`` in ``_sym_in``
        order. Edge-major layout: gathers copy whole rows and per-edge constants broadcast along
        rows, about twice as fast on CPU as the (batch, E) layout."""
        flat = self._sym_flat  # (E,) index into the flattened (in, out)
        p = self.symbolic_affine.reshape(-1, 4).index_select(0, flat)  # (E, 4)
        m = self.mask.reshape(-1).index_select(0, flat).unsqueeze(1)  # (E, 1) pruning mask
        xt = x2.T.contiguous().index_select(0, self._sym_in)  # (E, batch)
        z = xt * p[:, 0:1] + p[:, 1:2]  # a*x + b (mul + add: faster backward than addcmul)
        # split (not slicing): its backward is one cat, where slices would each fill a zero tensor
        parts = [
            get_function(name).forward_fn(zg)
            for (name, _, _), zg in zip(self._sym_groups, z.split(self._sym_sizes, 0), strict=True)
        ]
        f = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)  # (E, batch)
        return f * (p[:, 2:3] * m) + p[:, 3:4] * m  # c*f + d, masked

    def _symbolic_sum(self, x2: Tensor, base: Tensor | None = None) -> Tensor:
        """Sum of the symbolic edges into each output: ``(batch, in) -> (batch, out)``, evaluated
        one function group at a time (see :mod:`kanlab._symbolic_eval`), plus ``base``
        ``(batch, out)`` if given (added in the same pass)."""
        return symbolic_sum(
            x2, self.symbolic_affine, self.mask, self._sym_flat, self._sym_in, self._sym_out,
            self._sym_groups, self.out_features, base=base, host_index=self._sym_host,
        )  # fmt: skip

    def _prepare_symbolic_load(self, state_dict: dict, prefix: str) -> None:
        """Create (or resize) the symbolic slots a checkpoint holds before its tensors are copied."""
        names = state_dict.get(prefix + "symbolic_names")
        if names is None or prefix + "symbolic_mask" not in state_dict:
            if self.symbolic_mask is not None:  # a numeric checkpoint: drop the symbolic slots
                self.symbolic_mask = self.symbolic_fn = self.symbolic_names = None
                self.symbolic_affine = None
            return
        n_bytes = int(names.numel())
        if self.symbolic_mask is None:
            self._alloc_symbolic(n_bytes)
        elif self.symbolic_names.numel() != n_bytes:
            self.symbolic_names = torch.zeros(n_bytes, dtype=torch.uint8, device=self.mask.device)
