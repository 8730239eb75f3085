"""B-spline maths as pure tensor functions (no modules, no state).

Conventions used everywhere in kanlab (shapes in comments):

- ``in`` inputs, ``out`` outputs, spline order ``k`` (degree; k=3 is cubic), ``G`` grid intervals.
- A layer's knots are a tensor ``knots`` of shape ``(in, G + 2k + 1)``, non-decreasing per input. The
  first and last ``k`` intervals extend the grid range, so the ``G + k`` basis functions
  ``B_0 .. B_{G+k-1}`` form a partition of unity on ``[t_k, t_{G+k}]`` (the *grid range*).
- A spline's coefficient table has shape ``(in, G + k, out)``: for each input, ``G + k`` rows of
  ``out`` numbers. Rows are contiguous in ``out``, so the ``k + 1`` rows a sample needs are one
  contiguous block (the fast kernels rely on this).
- Intervals are half-open, ``[t_j, t_{j+1})``. Outside ``[t_0, t_{G+2k})`` every basis function is
  zero, so a spline is zero there: inputs far outside the grid give no spline signal (a layer's base
  branch still carries it). Between ``t_0`` and ``t_k`` (and symmetrically at the top) the spline
  decays smoothly to zero, as in the official implementation.

Two forms of the basis:

- the *dense* form, :func:`bspline_basis`, the textbook Cox-de Boor recursion over all ``G + k``
  functions, ``(batch, in) -> (batch, in, G + k)``; cost grows with G;
- the *sparse* form, :func:`sparse_basis`: for each x the index of the first of its ``k + 1``
  non-zero basis functions and their values, ``(batch, in) -> (batch, in), (batch, in, k + 1)``. On a
  uniform grid the values are the cardinal B-spline polynomials of the local coordinate (no search);
  on any other grid a binary search finds the interval and the local (triangular) recursion gives the
  values. Cost is independent of G.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "bspline_basis",
    "coef_to_curve",
    "curve_to_coef",
    "dense_from_sparse",
    "extend_knots",
    "interval_samples",
    "is_uniform",
    "knots_from_data",
    "sparse_basis",
    "uniform_knots",
]


def uniform_knots(
    in_features: int,
    grid_size: int,
    spline_order: int,
    grid_range: Sequence[float] | Tensor = (-1.0, 1.0),
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Uniform knots on ``grid_range`` extended by ``k`` intervals each side.

    ``grid_range`` is a pair ``(low, high)`` shared by all inputs, or a tensor ``(in, 2)``.
    Returns ``(in, G + 2k + 1)``.
    """
    lo_hi = torch.as_tensor(grid_range, dtype=dtype or torch.get_default_dtype(), device=device)
    if lo_hi.dim() == 1:
        lo_hi = lo_hi.expand(in_features, 2)
    lo, hi = lo_hi[:, :1], lo_hi[:, 1:]  # (in, 1)
    h = (hi - lo) / grid_size
    steps = torch.arange(
        -spline_order, grid_size + spline_order + 1, dtype=lo_hi.dtype, device=lo_hi.device
    )
    # lo + i*h rather than a cumulative sum: every knot is computed from the range directly.
    return lo + steps * h  # (in, G+2k+1)


def extend_knots(grid: Tensor, spline_order: int) -> Tensor:
    """Add ``k`` knots on each side of a grid ``(in, G + 1)``, spaced by its mean interval."""
    g = grid.shape[1] - 1
    h = (grid[:, -1:] - grid[:, :1]) / g  # (in, 1)
    steps = torch.arange(1, spline_order + 1, dtype=grid.dtype, device=grid.device)
    below = grid[:, :1] - steps.flip(0) * h
    above = grid[:, -1:] + steps * h
    return torch.cat([below, grid, above], dim=1)  # (in, G+2k+1)


def interval_samples(knots: Tensor, spline_order: int, per_interval: int = 2) -> Tensor:
    """``per_interval`` points inside every grid interval of ``knots`` ``(in, G + 2k + 1)``, plus
    the grid's right end: ``(G * per_interval + 1, in)``, one column per input (ascending).

    A refit onto new knots samples the old spline here as well as at the data: an interval that
    holds fewer data points than the k + 1 basis functions it touches (a fine grid on few data:
    G = 500 on 1000 points) otherwise leaves its coefficients to the ridge, which pulls them to
    zero and the function there with them (the test error blows up between the training points).
    """
    k = spline_order
    inner = knots[:, k : knots.shape[1] - k]  # (in, G + 1): the grid points
    left, width = inner[:, :-1], inner[:, 1:] - inner[:, :-1]  # (in, G)
    frac = (torch.arange(per_interval, dtype=knots.dtype, device=knots.device) + 0.5) / per_interval
    pts = left.unsqueeze(-1) + width.unsqueeze(-1) * frac  # (in, G, per_interval)
    pts = torch.cat([pts.flatten(1), inner[:, -1:]], dim=1)  # (in, G * per_interval + 1)
    return pts.t().contiguous()


def knots_from_data(
    x: Tensor, grid_size: int, spline_order: int, grid_eps: float, *, margin: float = 0.0
) -> Tensor:
    """Knots adapted to the data, as in the KAN paper's grid update.

    The ``G + 1`` grid points are a mix of the data's quantiles and a uniform grid on the data's range:
    ``grid_eps * uniform + (1 - grid_eps) * quantiles``; ``grid_eps = 1`` gives a uniform grid,
    ``grid_eps = 0`` a purely quantile one. Then ``k`` knots are added each side.

    ``margin`` > 0 stretches the grid points about the data's range so that it reaches ``margin``
    times the range's width beyond each end (uniform stays uniform on the widened range). Why: the
    spline falls towards zero within ``k`` intervals past its grid range, so an input just outside
    the training range (a test point) meets that fall, which is steeper the finer the grid
    (:mod:`kanlab.bench.paper.scaling`: one test point 0.0014 beyond the range had error 0.08 at
    G = 1000); with a margin it meets interior spline pieces.

    x: ``(batch, in)``. Returns ``(in, G + 2k + 1)``.
    """
    xs = torch.sort(x, dim=0).values.T  # (in, batch)
    n = xs.shape[1]
    idx = torch.linspace(0, n - 1, grid_size + 1, device=x.device).round().long()
    adaptive = xs[:, idx]  # (in, G+1)
    lo, hi = xs[:, :1], xs[:, -1:]
    frac = torch.linspace(0, 1, grid_size + 1, dtype=x.dtype, device=x.device)
    uniform = lo + (hi - lo) * frac  # (in, G+1)
    grid = grid_eps * uniform + (1.0 - grid_eps) * adaptive
    if margin > 0:  # the span of the grid points is the data's range
        lo, hi = grid[:, :1], grid[:, -1:]
        grid = lo - margin * (hi - lo) + (grid - lo) * (1.0 + 2.0 * margin)
    return extend_knots(grid, spline_order)


def is_uniform(knots: Tensor, *, rtol: float | None = None) -> bool:
    """Whether every input's knots are equally spaced (within ``rtol`` of the mean spacing)."""
    if rtol is None:
        rtol = 1e-10 if knots.dtype == torch.float64 else 1e-5
    d = knots.diff(dim=1)
    mean = d.mean(dim=1, keepdim=True)
    return bool(((d - mean).abs() <= rtol * mean.abs()).all() and (mean > 0).all())


def _safe_ratio(num: Tensor, den: Tensor) -> Tensor:
    """num / den with 0 where den == 0 (the Cox-de Boor convention for repeated knots).

    Written so that the gradient is finite too (no NaN from the unused branch of ``where``).
    """
    ok = den > 0
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(num))


def bspline_basis(x: Tensor, knots: Tensor, spline_order: int) -> Tensor:
    """Dense B-spline basis by the Cox-de Boor recursion.

    x: ``(batch, in)``; knots: ``(in, n)`` non-decreasing with ``n = G + 2k + 1``.
    Returns ``(batch, in, n - 1 - k)`` = ``(batch, in, G + k)``.
    """
    t = knots.unsqueeze(0)  # (1, in, n)
    xe = x.unsqueeze(-1)  # (batch, in, 1)
    basis = ((xe >= t[..., :-1]) & (xe < t[..., 1:])).to(x.dtype)  # (batch, in, n-1)
    for p in range(1, spline_order + 1):
        # B_{i,p} = (x - t_i)/(t_{i+p} - t_i) B_{i,p-1} + (t_{i+p+1} - x)/(t_{i+p+1} - t_{i+1}) B_{i+1,p-1}
        left = _safe_ratio(xe - t[..., : -(p + 1)], t[..., p:-1] - t[..., : -(p + 1)])
        right = _safe_ratio(t[..., p + 1 :] - xe, t[..., p + 1 :] - t[..., 1:-p])
        basis = left * basis[..., :-1] + right * basis[..., 1:]
    return basis


def _cardinal_values(u: Tensor, spline_order: int) -> Tensor:
    """The k+1 non-zero cardinal B-splines at local coordinate u in [0, 1).

    u: ``(...)``. Returns ``(..., k + 1)``: entry r is the basis function that starts r - k intervals
    before this one. Uniform-knot Cox-de Boor, level by level:
    ``N^p_r = ((u + p - r) N^{p-1}_{r-1} + (r + 1 - u) N^{p-1}_r) / p``.
    """
    vals = torch.ones_like(u).unsqueeze(-1)  # (..., 1)
    ue = u.unsqueeze(-1)
    for p in range(1, spline_order + 1):
        r = torch.arange(p + 1, dtype=u.dtype, device=u.device)
        zero = torch.zeros_like(vals[..., :1])
        lower = torch.cat([zero, vals], dim=-1)  # N^{p-1}_{r-1}
        upper = torch.cat([vals, zero], dim=-1)  # N^{p-1}_r
        vals = ((ue + p - r) * lower + (r + 1 - ue) * upper) / p
    return vals


def _local_values(x: Tensor, knots: Tensor, interval: Tensor, spline_order: int) -> Tensor:
    """The k+1 non-zero B-splines at x in interval j of an arbitrary knot vector.

    x, interval: ``(batch, in)``; knots ``(in, n)``. Returns ``(batch, in, k + 1)``.
    The triangular recursion needs knots t_{j-k+1} .. t_{j+k}; near the ends these do not exist, so the
    knot vector is padded. Padded knots only enter basis functions that do not exist (they are zeroed
    by the caller); the real ones depend on real knots only.
    """
    k = spline_order
    batch, n_in = x.shape
    if k == 0:
        return torch.ones(batch, n_in, 1, dtype=x.dtype, device=x.device)
    span = knots[:, -1:] - knots[:, :1]
    pad = torch.arange(1, k + 2, dtype=knots.dtype, device=knots.device) * (span + 1.0)
    padded = torch.cat([knots[:, :1] - pad.flip(-1), knots, knots[:, -1:] + pad], dim=1)
    # window m = -k .. k+1 around j, in padded indices j + (k+1) + m.
    offs = torch.arange(-k, k + 2, device=x.device)
    idx = interval.T.unsqueeze(-1) + (k + 1) + offs  # (in, batch, 2k+2)
    win = padded.gather(1, idx.reshape(n_in, -1)).reshape(n_in, batch, 2 * k + 2)
    win = win.permute(1, 0, 2)  # (batch, in, 2k+2); win[..., m + k] = t_{j+m}

    def t(m: int) -> Tensor:
        return win[..., m + k]

    xe = x
    vals = [torch.ones_like(x)]
    for p in range(1, k + 1):
        new = []
        for r in range(p + 1):
            i = -p + r  # basis index relative to j
            term = torch.zeros_like(x)
            if r >= 1:  # (x - t_i) / (t_{i+p} - t_i) * N^{p-1}_{r-1}
                term = term + _safe_ratio(xe - t(i), t(i + p) - t(i)) * vals[r - 1]
            if r <= p - 1:  # (t_{i+p+1} - x) / (t_{i+p+1} - t_{i+1}) * N^{p-1}_r
                term = term + _safe_ratio(t(i + p + 1) - xe, t(i + p + 1) - t(i + 1)) * vals[r]
            new.append(term)
        vals = new
    return torch.stack(vals, dim=-1)


def sparse_basis(
    x: Tensor, knots: Tensor, spline_order: int, *, uniform: bool | None = None
) -> tuple[Tensor, Tensor]:
    """Sparse B-spline basis: the start index and the ``k + 1`` non-zero values for each x.

    x: ``(batch, in)``; knots: ``(in, G + 2k + 1)``.
    Returns ``(start, values)``: ``start`` ``(batch, in)`` int64 in ``[0, G - 1]`` and ``values``
    ``(batch, in, k + 1)`` such that ``dense[b, i, start + r] == values[b, i, r]`` and all other dense
    entries are zero. Basis functions that do not exist (near the ends of the knot vector) and inputs
    outside ``[t_0, t_{G+2k})`` get value 0; ``start`` is clamped so every index is valid. NaN inputs
    give NaN values (they are never silently turned into numbers).

    ``uniform=True`` uses the closed-form cardinal polynomials (the knots must be equally spaced);
    ``None`` checks the knots (a host sync; layers pass the flag they keep).
    """
    k = spline_order
    n = knots.shape[1]
    n_basis = n - 1 - k  # G + k
    if uniform is None:
        uniform = is_uniform(knots)
    if uniform:
        t0 = knots[:, 0]
        h = (knots[:, -1] - t0) / (n - 1)
        s = (x - t0) / h  # (batch, in), position in units of intervals
        fl = torch.floor(s)
        inside = (fl >= 0) & (fl <= n - 2)
        interval = torch.where(inside, fl, torch.zeros_like(fl)).long()
        values = _cardinal_values(s - fl, k)
    else:
        xt = x.T.contiguous()  # (in, batch)
        interval = torch.searchsorted(knots.contiguous(), xt, right=True).T - 1
        inside = (interval >= 0) & (interval <= n - 2)
        # Repeated last knots: searchsorted lands on an empty interval; only x < t_{n-1} counts.
        inside = inside & (x < knots[:, -1])
        interval = interval.clamp(0, n - 2)
        values = _local_values(x, knots, interval, k)
    # Basis r of interval j is B_{j - k + r}; keep only 0 <= j - k + r <= G + k - 1.
    raw_start = interval - k
    r = torch.arange(k + 1, device=x.device)
    idx = raw_start.unsqueeze(-1) + r
    keep = (idx >= 0) & (idx < n_basis) & inside.unsqueeze(-1)
    nan = torch.isnan(x).unsqueeze(-1)
    values = torch.where(keep | nan, values, torch.zeros_like(values))
    start = raw_start.clamp(0, n_basis - (k + 1))
    # Shift values so that values[..., r] belongs to basis start + r after clamping.
    shift = start - raw_start  # >= 0 near the low end, <= 0 near the high end
    if k > 0:
        src = (r + shift.unsqueeze(-1)).clamp(0, k)
        moved = values.gather(-1, src)
        valid = ((r + shift.unsqueeze(-1)) >= 0) & ((r + shift.unsqueeze(-1)) <= k)
        values = torch.where(valid, moved, torch.zeros_like(moved))
    return start, values


def dense_from_sparse(start: Tensor, values: Tensor, n_basis: int) -> Tensor:
    """Scatter the sparse form into the dense ``(batch, in, n_basis)`` basis."""
    k1 = values.shape[-1]
    idx = start.unsqueeze(-1) + torch.arange(k1, device=start.device)
    out = values.new_zeros(*values.shape[:-1], n_basis)
    return out.scatter_add(-1, idx, values)


def coef_to_curve(
    x: Tensor, knots: Tensor, coef: Tensor, spline_order: int, *, uniform: bool | None = None
) -> Tensor:
    """Evaluate every edge's spline. x ``(batch, in)``, coef ``(in, G+k, out)`` -> ``(batch, in, out)``."""
    start, values = sparse_basis(x, knots, spline_order, uniform=uniform)
    basis = dense_from_sparse(start, values, coef.shape[1])  # (batch, in, G+k)
    return torch.einsum("big,igo->bio", basis, coef)


# torch 2.13's batched LU solve on the CPU (MKL) fails for matrices of ~200 rows and more when torch
# runs several threads ("Pivots given to lu_solve must all be greater or equal to 1"): a grid of
# G >= ~200 with the default threads. From this size on, curve_to_coef solves its (positive
# definite) systems by Cholesky, one matrix at a time (the result of a matrix then does not depend
# on the batch it comes in); below it, the batched LU solve as before (results unchanged).
_LU_MAX = 128


def curve_to_coef(
    x: Tensor, y: Tensor, knots: Tensor, spline_order: int, *, ridge: float = 1e-10
) -> Tensor:
    """Least-squares coefficients of splines through sampled curves.

    x: ``(batch, in)``; y: ``(batch, in, out)`` (the value of edge (i, o) at x[:, i]); knots
    ``(in, G + 2k + 1)``. Returns coef ``(in, G + k, out)`` minimising
    ``sum_b |B(x_b) c - y_b|^2 + sum_g lam_g c_g^2`` with ``lam_g = ridge * (B^T B)_gg`` (plus a
    floor of ``ridge / 100`` times the mean diagonal).

    The small ridge keeps the system positive definite when it is rank-deficient (intervals with no
    samples, repeated x): coefficients that the data do not determine go to zero instead of to
    infinity, and the result is always finite. The solve runs in float64 whatever the input dtype
    (grid updates are rare and small), then casts back.
    """
    if y.dim() != 3 or y.shape[:2] != x.shape:
        raise ValueError(
            f"curve_to_coef: y must have shape (batch, in, out) = ({x.shape[0]}, {x.shape[1]}, out), "
            f"got {tuple(y.shape)}"
        )
    dtype = x.dtype
    x64, y64, t64 = x.double(), y.double(), knots.double()
    a = bspline_basis(x64, t64, spline_order).permute(1, 0, 2)  # (in, batch, G+k)
    ata = a.transpose(1, 2) @ a  # (in, G+k, G+k)
    aty = a.transpose(1, 2) @ y64.permute(1, 0, 2)  # (in, G+k, out)
    diag = ata.diagonal(dim1=1, dim2=2)  # (in, G+k)
    # Ridge relative to each basis function's own weight (a uniform ~ridge relative bias), plus a
    # floor for functions that no sample touches so the system stays positive definite.
    floor = 1e-2 * diag.mean(dim=1, keepdim=True) + 1e-300
    lam = ridge * (diag + floor)  # (in, G+k)
    system = ata + torch.diag_embed(lam)  # symmetric positive definite (the ridge)
    if system.shape[-1] < _LU_MAX:
        coef = torch.linalg.solve(system, aty)
    else:  # one Cholesky per matrix: see _LU_MAX
        coef = torch.empty_like(aty)
        for i in range(system.shape[0]):
            chol, info = torch.linalg.cholesky_ex(system[i])
            if int(info) == 0:
                coef[i] = torch.cholesky_solve(aty[i], chol)
            else:  # not numerically positive definite (not seen)
                coef[i] = torch.linalg.solve(system[i], aty[i])
    return coef.to(dtype)
