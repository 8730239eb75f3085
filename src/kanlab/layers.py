"""KANLinear: a layer of learnable univariate functions on edges, as the KAN paper defines it.

Each edge (i -> o) computes ``phi_{o,i}(x_i) = mask[i,o] * (w_b[i,o] * b(x_i) + w_s[i,o] * spline_{i,o}(x_i))``
and each output node sums its incoming edges. ``b`` is the residual base function (SiLU by default) and
``spline_{i,o}(x) = sum_g c[i,g,o] B_g(x)`` a B-spline of order k on G grid intervals.

Parameters (shapes): ``coef`` (in, G+k, out), ``scale_base`` w_b (in, out), ``scale_spline`` w_s
(in, out). Buffers: ``knots`` (in, G+2k+1), ``mask`` (in, out) of 0/1, ``grid_uniform`` (a 0-dim bool:
whether the knots are equally spaced, which lets the kernels skip the interval search). Edges
replaced by library functions live in the child module ``symbolic``
(:class:`kanlab.symbolic_edges.SymbolicEdges`, ``None`` until the first edge is fixed).

The mask and forward: change the mask with :meth:`KANLinear.set_mask`, which rebuilds what forward
derives from it (the numeric mask ``mask * (1 - symbolic mask)`` and a host flag "all ones" that
lets forward use the scales as they are, skipping two products and their backward). forward writes
nothing: it only *reads* whether that state is current (the same mask tensor at the same in-place
version, the same symbolic edges); after an in-place edit of ``layer.mask`` or an assignment of a
new tensor it computes the masked scales from the live mask (same values, a little slower) until
the next :meth:`set_mask`. Under ``torch.compile`` it always takes that live path.

Initialisation follows the paper: c ~ N(0, noise_scale^2) with noise_scale = 0.1, w_s = 1, w_b Xavier
uniform, so every edge starts as roughly ``w_b * b(x)`` plus small spline noise.

Inputs outside the knot span ``[t_0, t_{G+2k})`` give a zero spline part: the spline decays smoothly
to zero over the k extension intervals beyond ``grid_range`` and is exactly zero further out. The base
branch still carries such inputs. ``update_grid`` moves the grid to where the data are.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

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
from kanlab.splines import (
    coef_to_curve,
    curve_to_coef,
    interval_samples,
    knots_from_data,
    uniform_knots,
)
from kanlab.symbolic_edges import SymbolicEdges, check_edge

__all__ = ["ACTIVATIONS", "KANLinear", "check_coarsen"]


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


class _MaskState(NamedTuple):
    """What forward derives from the mask and the symbolic edges (built by
    ``KANLinear._rebuild_mask_state``, never in forward), and what it was built from."""

    mask: Tensor  # the mask tensor (identity) ...
    version: int  # ... at this in-place version
    keep: Tensor | None  # the symbolic edges' 1 - symbolic mask (identity); None: no symbolic edge
    numeric: Tensor  # (in, out) mask * keep: the numeric (spline + base) branch's mask
    ones: bool  # numeric is all ones: forward uses the scales as they are


def _rebuild_after_load(layer: KANLinear, incompatible_keys: Any) -> None:
    """Load post-hook: runs after the layer's children (its symbolic edges) are loaded too."""
    layer._rebuild_mask_state()


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
        self.register_module("symbolic", None)  # SymbolicEdges, created by the first set_symbolic
        self.register_load_state_dict_post_hook(_rebuild_after_load)
        self._rebuild_mask_state(ones=True)

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
        sym = self.symbolic
        y = None
        if sym is None or not sym.all_edges:  # every edge symbolic: the numeric branch is skipped
            scale_spline, scale_base = self._masked_scales()
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
        if sym is not None and sym.has_edges:
            y = sym(x2, self.mask, base=y)  # (batch, out): y + the symbolic edges
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
            phi = phi + self.symbolic.activations(x2, self.mask)  # (batch, out, in)
        return phi.reshape(*x.shape[:-1], self.out_features, self.in_features)

    # ------------------------------------------------------------------ mask
    @torch.no_grad()
    def set_mask(self, mask: Tensor) -> None:
        """Set the edge mask ``(in, out)`` (1 = edge on, 0 = pruned; copied into ``self.mask``) and
        rebuild what forward derives from it. Use this rather than editing ``self.mask`` in place:
        forward stays correct after an in-place edit, but takes a slower path until the next call."""
        shape = (self.in_features, self.out_features)
        if not isinstance(mask, Tensor) or tuple(mask.shape) != shape:
            got = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
            raise ValueError(f"mask must be a tensor of shape {shape}, got {got}")
        self.mask.copy_(check_finite("mask", mask))
        self._rebuild_mask_state()

    def _keep(self) -> Tensor | None:
        """``1 - symbolic mask`` (in, out), or None without symbolic edges."""
        sym = self.symbolic
        return sym.keep if sym is not None and sym.has_edges else None

    def _rebuild_mask_state(self, *, ones: bool | None = None) -> None:
        """Derive the numeric mask and the "all ones" host flag (one host sync unless ``ones`` is
        given). Called whenever the mask or the symbolic edges change, never in forward."""
        mask, keep = self.mask, self._keep()
        # a normal tensor even under inference mode: forward saves it for backward
        with torch.inference_mode(False):
            numeric = mask if keep is None else mask * keep
        if ones is None:
            ones = not numeric.is_meta and bool((numeric == 1).all())
        self._mask_state = _MaskState(mask, mask._version, keep, numeric, ones)

    def _current_mask_state(self) -> _MaskState | None:
        """The derived mask state if it matches the live mask and symbolic edges, else None (a
        read: an in-place edit, a new tensor or a functional_call show up as a mismatch)."""
        if torch.compiler.is_compiling():
            return None
        state, mask = self._mask_state, self.mask
        if state.mask is mask and state.version == mask._version and state.keep is self._keep():
            return state
        return None

    def _numeric_mask(self, state: _MaskState | None = None) -> Tensor:
        """The mask of the numeric (spline + base) branch: ``mask * (1 - symbolic mask)``, from
        the derived ``state`` if it is given and current, else from the live tensors."""
        state = state or self._current_mask_state()
        if state is not None:
            return state.numeric
        keep = self._keep()
        return self.mask if keep is None else self.mask * keep

    def _masked_scales(self) -> tuple[Tensor, Tensor]:
        """``(scale_spline, scale_base)`` times the numeric mask; the scales as they are while the
        mask is all ones (bit-identical results, two products and their backward saved)."""
        state = self._current_mask_state()
        if state is not None and state.ones:
            return self.scale_spline, self.scale_base
        mask = self._numeric_mask(state)
        return self.scale_spline * mask, self.scale_base * mask

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
    def update_grid(
        self,
        x: Tensor,
        *,
        grid_eps: float = 0.02,
        grow: Sequence[bool] | Tensor | None = None,
        margin: float = 0.0,
    ) -> None:
        """Move the knots to the distribution of ``x`` ``(batch, in)`` and refit the coefficients so
        the learned function is preserved (in the least-squares sense, on the data and at points
        inside every new interval, so intervals without data keep it too).

        ``grid_eps`` mixes a uniform grid on the data's range into the quantiles (0: quantiles only,
        1: uniform on the data's range). An input whose samples are all equal keeps its knots.
        ``grow`` (one bool per input) marks inputs whose grid only grows: their knots become uniform
        on the union of the current grid range and the data's range (what :class:`kanlab.KAN` does
        for the multiplication nodes a layer reads, see :mod:`kanlab.mult`).
        ``margin`` widens the grid beyond the data's range by that fraction of the range's width on
        each side (:func:`~kanlab.splines.knots_from_data`: inputs just outside the training range
        then meet interior spline pieces, not the steep fall past the grid's end).
        """
        self._check_grid_data(x)
        grid_eps = check_float("grid_eps", grid_eps, minimum=0.0)
        if grid_eps > 1:
            raise ValueError(f"grid_eps must be in [0, 1], got {grid_eps}")
        margin = check_float("margin", margin, minimum=0.0)
        new_knots = knots_from_data(x, self.grid_size, self.spline_order, grid_eps, margin=margin)
        new_knots, uniform = self._grow(x, new_knots, grow, grid_eps == 1.0)
        self._refit(x, new_knots, uniform=uniform)

    def _grow(
        self, x: Tensor, new_knots: Tensor, grow: Sequence[bool] | Tensor | None, uniform: bool
    ) -> tuple[Tensor, bool]:
        """``new_knots`` with the rows of the ``grow`` inputs replaced by uniform knots on the union
        of the current grid range and the range of ``x``; and whether every row is uniform."""
        if grow is None:
            return new_knots, uniform
        flags = torch.as_tensor(grow, dtype=torch.bool, device=new_knots.device).reshape(-1)
        if flags.numel() != self.in_features:
            raise ValueError(
                f"grow must have one flag per input ({self.in_features}), got {flags.numel()}"
            )
        if not bool(flags.any()):
            return new_knots, uniform
        k = self.spline_order
        lo = torch.minimum(x.min(0).values, self.knots[:, k].to(x))
        hi = torch.maximum(x.max(0).values, self.knots[:, -k - 1].to(x))
        g = new_knots.shape[1] - 2 * k - 1
        grown = uniform_knots(self.in_features, g, k, torch.stack([lo, hi], dim=1), dtype=x.dtype)
        knots = torch.where(flags.unsqueeze(1), grown.to(new_knots), new_knots)
        return knots, uniform or bool(flags.all())

    @torch.no_grad()
    def extend_grid(
        self,
        new_size: int,
        x: Tensor | None = None,
        *,
        grid_eps: float = 0.02,
        allow_coarsen: bool = False,
        grow: Sequence[bool] | Tensor | None = None,
        margin: float = 0.0,
    ) -> None:
        """Grid extension (fine-graining) to ``new_size`` intervals, preserving the function.

        Without ``x``: a uniform grid on the current grid range; the refit samples the range densely.
        When the new grid refines the old uniform one (5 -> 10 -> 20 ...), the old spline lies in the
        new spline space and is reproduced exactly (to rounding) on the grid range.
        ``margin`` widens the new grid range by that fraction of its width on each side; without
        ``x`` the refit samples the old spline on the widened range (beyond the old range: as
        it evaluates there, its end basis functions falling to zero within k intervals). Inputs
        that later fall just outside the data's range then meet interior spline pieces rather than
        the fine grid's steep end pieces (``benchmarks/exp_sin_4d.py``: at G=50 a test point 0.5%
        beyond the training range had error 9e-3).
        With ``x`` ``(batch, in)``: the new grid is placed on the data as in :meth:`update_grid` and
        the refit uses the data and points inside every new interval (``grow`` and ``margin`` as
        there: the grid reaches beyond the data's range).

        A ``new_size`` below the current grid size coarsens the grid: the function is then only
        approximated (detail is lost), so it is refused unless ``allow_coarsen=True``.
        """
        check_int("new_size", new_size, minimum=1)
        check_coarsen(new_size, self.grid_size, allow_coarsen)
        margin = check_float("margin", margin, minimum=0.0)
        k = self.spline_order
        if x is not None:
            self._check_grid_data(x)
            new_knots = knots_from_data(x, new_size, k, grid_eps, margin=margin)
            new_knots, uniform = self._grow(x, new_knots, grow, grid_eps == 1.0)
            self._refit(x, new_knots, uniform=uniform)
            return
        lo, hi = self.knots[:, k], self.knots[:, -k - 1]  # (in,) the grid range
        lo, hi = lo - margin * (hi - lo), hi + margin * (hi - lo)
        new_knots = uniform_knots(
            self.in_features, new_size, k, torch.stack([lo, hi], dim=1), dtype=self.knots.dtype
        )
        m = 4 * (new_size + k) + 1
        frac = torch.linspace(0, 1, m, dtype=self.knots.dtype, device=self.knots.device)
        samples = (lo.unsqueeze(0) + (hi - lo).unsqueeze(0) * frac.unsqueeze(1)).contiguous()
        self._refit(samples, new_knots, uniform=True)

    def _refit(self, x: Tensor, new_knots: Tensor, *, uniform: bool) -> None:
        """Fit coefficients on ``new_knots`` to the current splines sampled at ``x`` (batch, in) and
        at :func:`~kanlab.splines.interval_samples` of the new grid (see there why)."""
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
                keep = uniform_knots(
                    self.in_features, g, k, torch.stack([lo, hi], dim=1), dtype=new_knots.dtype
                )
            new_knots = torch.where(degenerate.unsqueeze(1), keep.to(new_knots), new_knots)
            frac = torch.linspace(0, 1, x.shape[0], dtype=x.dtype, device=x.device).unsqueeze(1)
            spread = lo + (hi - lo) * frac  # (batch, in)
            x = torch.where(degenerate, spread, x)
        # the data, and points in every new interval: no coefficient is left to the ridge alone
        x = torch.cat([x, interval_samples(new_knots, self.spline_order).to(x)])
        y = coef_to_curve(x, self.knots, self.coef, self.spline_order, uniform=self._uniform)
        coef = curve_to_coef(x, y, new_knots, self.spline_order)
        self._set_grid(new_knots, coef, uniform=uniform)

    # ------------------------------------------------------------------ pruning
    @torch.no_grad()
    def select(
        self, keep_in: Tensor | Sequence[int], keep_out: Tensor | Sequence[int]
    ) -> KANLinear:
        """A new layer restricted to the inputs ``keep_in`` and outputs ``keep_out`` (increasing
        indices, 1-d): coefficients, scales, knots, mask and symbolic edges sliced, the same
        function on the kept edges. This layer is not changed."""
        keep_in = self._check_keep("keep_in", keep_in, self.in_features)
        keep_out = self._check_keep("keep_out", keep_out, self.out_features)

        def pick(t: Tensor) -> Tensor:  # (in, ..., out) -> (kept in, ..., kept out)
            return t.index_select(0, keep_in).index_select(t.dim() - 1, keep_out).contiguous()

        # its initial draws come from a private generator (the global RNG is not touched)
        new = KANLinear(
            keep_in.numel(), keep_out.numel(), grid_size=self.grid_size,
            spline_order=self.spline_order, grid_range=self.grid_range,
            base_activation=self.base_activation, noise_scale=self.noise_scale,
            generator=torch.Generator(), device=self.coef.device, dtype=self.coef.dtype,
        )  # fmt: skip
        for name in ("coef", "scale_base", "scale_spline"):
            p = getattr(self, name)
            setattr(new, name, nn.Parameter(pick(p), requires_grad=p.requires_grad))
        new.knots = self.knots.index_select(0, keep_in).contiguous()
        new.mask = pick(self.mask)
        new.grid_uniform.copy_(self.grid_uniform)
        new._uniform = self._uniform
        if self.symbolic is not None:
            new.symbolic = self.symbolic.select(keep_in, keep_out)
        new.train(self.training)
        new._rebuild_mask_state()
        return new

    def _check_keep(self, name: str, keep: Tensor | Sequence[int], n: int) -> Tensor:
        idx = torch.as_tensor(keep, device=self.mask.device)
        if idx.dim() != 1 or idx.numel() == 0 or idx.is_floating_point() or idx.dtype == torch.bool:
            raise ValueError(f"{name} must be a non-empty 1-d sequence of indices, got {keep!r}")
        idx = idx.to(torch.int64)
        if bool((idx < 0).any() | (idx >= n).any()) or bool((idx.diff() <= 0).any()):
            raise ValueError(f"{name} must hold increasing indices in [0, {n}), got {keep!r}")
        return idx

    # ------------------------------------------------------------------ state
    # Files written before the symbolic edges moved into the child module (issue 17) hold them as
    # flat keys <prefix>symbolic_mask / _fn / _names / _affine; loading renames them.
    _OLD_SYMBOLIC_KEYS = ("mask", "fn", "names", "affine")

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
        for key in self._OLD_SYMBOLIC_KEYS:
            if prefix + "symbolic_" + key in state_dict:
                state_dict[prefix + "symbolic." + key] = state_dict.pop(prefix + "symbolic_" + key)
        # Create (or drop) the symbolic child the checkpoint holds (or lacks) before it is loaded.
        names = state_dict.get(prefix + "symbolic.names")
        if names is None or prefix + "symbolic.mask" not in state_dict:
            self.symbolic = None  # a numeric checkpoint: no symbolic edges
        elif self.symbolic is None:
            self.symbolic = SymbolicEdges(
                self.in_features, self.out_features, n_bytes=int(names.numel()),
                dtype=self.mask.dtype, device=self.mask.device,
            )  # fmt: skip
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        self._uniform = bool(self.grid_uniform)
        # the mask state is rebuilt by _rebuild_after_load, once the symbolic child is loaded

    def _apply(self, fn: Any, recurse: bool = True) -> KANLinear:  # type: ignore[override]
        # .to(), .double(), .cuda() ... replace the buffers: derive the mask state from the new ones
        # (as torch's RNN modules re-flatten their weights here). The flag survives a move.
        state = self._current_mask_state()
        out = super()._apply(fn, recurse)
        self._rebuild_mask_state(ones=state.ones if state is not None else None)
        return out

    def __setstate__(self, state: dict) -> None:  # copy.deepcopy, pickle
        super().__setstate__(state)
        self._rebuild_mask_state()  # a copy's tensors start at other in-place versions

    # ------------------------------------------------------------------ symbolic edges
    # The edges live in the child module ``self.symbolic`` (kanlab.symbolic_edges); these methods
    # keep the layer's public face and rebuild the mask state after a change.
    @property
    def symbolic_mask(self) -> Tensor | None:
        """(in, out) 0/1: 1 = symbolic edge; None without symbolic edges (``symbolic.mask``)."""
        return None if self.symbolic is None else self.symbolic.mask

    @property
    def symbolic_affine(self) -> nn.Parameter | None:
        """(in, out, 4) the trainable (a, b, c, d) per edge, or None (``symbolic.affine``)."""
        return None if self.symbolic is None else self.symbolic.affine

    @property
    def _has_symbolic(self) -> bool:
        """Host flag: any symbolic edge."""
        return self.symbolic is not None and self.symbolic.has_edges

    def set_symbolic(
        self, i: int, o: int, name: str, affine: Sequence[float] = (1.0, 0.0, 1.0, 0.0)
    ) -> None:
        """Replace edge ``i -> o`` by ``c * f(a*x + b) + d`` with ``f`` the library function
        ``name`` and ``affine = (a, b, c, d)``; the edge's numeric part is switched off (kept, and
        restored by :meth:`unset_symbolic`). Nothing changes if an argument is invalid."""
        sym = self.symbolic
        if sym is None:
            sym = SymbolicEdges(
                self.in_features, self.out_features, dtype=self.mask.dtype, device=self.mask.device
            )
        sym.set(i, o, name, affine)  # checks every argument first
        self.symbolic = sym
        self._rebuild_mask_state()

    def unset_symbolic(self, i: int, o: int) -> None:
        """Return edge ``i -> o`` to its numeric (spline + base) function."""
        if self.symbolic is None:
            check_edge(i, o, self.in_features, self.out_features)
            return
        self.symbolic.unset(i, o)
        self._rebuild_mask_state()

    def symbolic_edges(self) -> dict[tuple[int, int], str]:
        """``{(in, out): function name}`` of the symbolic edges (host sync; not for hot paths)."""
        return {} if self.symbolic is None else self.symbolic.edges()

    def symbolic_function_names(self) -> list[str]:
        """The layer's function vocabulary (``symbolic.fn`` indexes into it)."""
        return [] if self.symbolic is None else self.symbolic.function_names()


def check_coarsen(new_size: int, current: int, allow: bool, where: str = "") -> None:
    """Refuse a grid "extension" to fewer intervals than ``current`` unless ``allow``."""
    if new_size < current and not allow:
        raise ValueError(
            f"extend_grid({new_size}){where} would coarsen the grid from {current} to {new_size} "
            "intervals: the learned function is then only approximated (detail is lost); pass "
            "allow_coarsen=True to do it anyway"
        )
