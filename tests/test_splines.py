"""Oracle and invariant tests for kanlab.splines (against scipy and closed forms)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.interpolate import BSpline

from kanlab.splines import (
    bspline_basis,
    coef_to_curve,
    curve_to_coef,
    dense_from_sparse,
    is_uniform,
    knots_from_data,
    sparse_basis,
    uniform_knots,
)

ORDERS = [0, 1, 2, 3, 4, 5]


def random_knots(n_in: int, n_knots: int, seed: int) -> torch.Tensor:
    """Strictly increasing random knots per input, on different ranges."""
    g = torch.Generator().manual_seed(seed)
    gaps = torch.rand(n_in, n_knots - 1, generator=g, dtype=torch.float64) + 0.05
    start = torch.randn(n_in, 1, generator=g, dtype=torch.float64)
    return torch.cat([start, start + gaps.cumsum(1)], dim=1)


def interior_points(knots: torch.Tensor, n: int, seed: int, margin: float = 0.0) -> torch.Tensor:
    """x (n, in) uniform on [t_0 - margin, t_last + margin], away from the knots themselves."""
    g = torch.Generator().manual_seed(seed)
    lo, hi = knots[:, 0] - margin, knots[:, -1] + margin
    x = lo + (hi - lo) * torch.rand(n, knots.shape[0], generator=g, dtype=torch.float64)
    return x


@pytest.mark.parametrize("k", ORDERS)
def test_dense_basis_matches_scipy(k: int) -> None:
    knots = random_knots(3, 7 + 2 * k + 1, seed=k)  # G = 7
    x = interior_points(knots, 200, seed=10 + k)
    ours = bspline_basis(x, knots, k).numpy()  # (batch, in, G+k)
    assert ours.shape == (200, 3, 7 + k)
    for i in range(3):
        t = knots[i].numpy()
        for j in range(ours.shape[2]):
            elem = BSpline.basis_element(t[j : j + k + 2], extrapolate=False)
            ref = np.nan_to_num(elem(x[:, i].numpy()), nan=0.0)
            np.testing.assert_allclose(ours[:, i, j], ref, atol=1e-12, rtol=0)


@pytest.mark.parametrize("k", ORDERS)
def test_spline_values_match_scipy(k: int) -> None:
    knots = random_knots(2, 6 + 2 * k + 1, seed=100 + k)
    g = torch.Generator().manual_seed(k)
    coef = torch.randn(2, 6 + k, 3, generator=g, dtype=torch.float64)
    # scipy's base interval is [t_k, t_{n-k-1}]: compare there.
    lo, hi = knots[:, k], knots[:, -k - 1]
    x = lo + (hi - lo) * torch.rand(150, 2, generator=g, dtype=torch.float64)
    ours = coef_to_curve(x, knots, coef, k, uniform=False).numpy()
    for i in range(2):
        for o in range(3):
            ref = BSpline(knots[i].numpy(), coef[i, :, o].numpy(), k, extrapolate=False)
            np.testing.assert_allclose(ours[:, i, o], ref(x[:, i].numpy()), atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("k", ORDERS)
def test_partition_of_unity_on_grid_range(k: int) -> None:
    knots = uniform_knots(4, 9, k, (-2.0, 3.0), dtype=torch.float64)
    x = torch.linspace(-2.0, 3.0 - 1e-9, 301, dtype=torch.float64).unsqueeze(1).expand(-1, 4)
    total = bspline_basis(x, knots, k).sum(-1)
    torch.testing.assert_close(total, torch.ones_like(total), atol=1e-13, rtol=0)


@pytest.mark.parametrize("k", ORDERS)
@pytest.mark.parametrize("uniform", [True, False])
def test_sparse_equals_dense(k: int, uniform: bool) -> None:
    g = 8
    knots = (
        uniform_knots(3, g, k, (-1.0, 1.5), dtype=torch.float64)
        if uniform
        else random_knots(3, g + 2 * k + 1, seed=7 * k + 1)
    )
    # Include points outside the whole knot span and in the extension zones.
    x = interior_points(knots, 500, seed=k, margin=0.7)
    start, values = sparse_basis(x, knots, k, uniform=uniform)
    assert start.dtype == torch.int64 and values.shape == (500, 3, k + 1)
    assert int(start.min()) >= 0 and int(start.max()) <= g - 1
    dense = bspline_basis(x, knots, k)
    torch.testing.assert_close(dense_from_sparse(start, values, g + k), dense, atol=1e-12, rtol=0)


@pytest.mark.parametrize("k", [1, 3])
def test_uniform_path_equals_search_path(k: int) -> None:
    knots = uniform_knots(2, 6, k, (-1.0, 1.0), dtype=torch.float64)
    assert is_uniform(knots)
    x = interior_points(knots, 300, seed=3, margin=0.3)
    s1, v1 = sparse_basis(x, knots, k, uniform=True)
    s2, v2 = sparse_basis(x, knots, k, uniform=False)
    d1 = dense_from_sparse(s1, v1, 6 + k)
    d2 = dense_from_sparse(s2, v2, 6 + k)
    torch.testing.assert_close(d1, d2, atol=1e-12, rtol=0)


def test_outside_span_is_zero_and_nan_propagates() -> None:
    knots = uniform_knots(1, 5, 3, (-1.0, 1.0), dtype=torch.float64)
    x = torch.tensor([[-10.0], [10.0], [float("nan")], [float("inf")]], dtype=torch.float64)
    for uniform in (True, False):
        _, values = sparse_basis(x, knots, 3, uniform=uniform)
        assert torch.all(values[:2] == 0)
        assert torch.isnan(values[2]).any()
        assert torch.all(values[3] == 0)


def test_is_uniform_detects_adapted_grid() -> None:
    x = torch.randn(500, 2, dtype=torch.float64) ** 3
    assert not is_uniform(knots_from_data(x, 5, 3, grid_eps=0.02))
    assert is_uniform(knots_from_data(x, 5, 3, grid_eps=1.0))


def test_knots_from_data_quantiles() -> None:
    x = torch.arange(101, dtype=torch.float64).unsqueeze(1) ** 2  # skewed
    knots = knots_from_data(x, 4, 2, grid_eps=0.0)
    grid = knots[0, 2:-2]
    torch.testing.assert_close(
        grid, torch.tensor([0.0, 625.0, 2500.0, 5625.0, 10000.0], dtype=torch.float64)
    )
    h = 10000.0 / 4
    torch.testing.assert_close(knots[0, :2], torch.tensor([-2 * h, -h], dtype=torch.float64))


@pytest.mark.parametrize("k", [1, 2, 3])
def test_curve_to_coef_recovers_exact_spline(k: int) -> None:
    knots = random_knots(2, 5 + 2 * k + 1, seed=k)
    g = torch.Generator().manual_seed(0)
    coef = torch.randn(2, 5 + k, 3, generator=g, dtype=torch.float64)
    x = interior_points(knots, 400, seed=1)
    y = coef_to_curve(x, knots, coef, k, uniform=False)
    fitted = curve_to_coef(x, y, knots, k)
    torch.testing.assert_close(fitted, coef, atol=1e-7, rtol=1e-7)


def test_curve_to_coef_rank_deficient_stays_finite() -> None:
    knots = uniform_knots(2, 10, 3, (-1.0, 1.0), dtype=torch.float64)
    # All samples in one small interval, many repeated: most coefficients are undetermined.
    x = torch.full((50, 2), 0.05, dtype=torch.float64)
    x[:10] = 0.07
    y = torch.sin(3 * x).unsqueeze(-1).expand(-1, -1, 2)
    coef = curve_to_coef(x, y, knots, 3)
    assert torch.isfinite(coef).all()
    # the fit still reproduces the samples
    torch.testing.assert_close(coef_to_curve(x, knots, coef, 3, uniform=True), y, atol=1e-6, rtol=0)
    # and the undetermined coefficients stay small (ridge pulls them to zero, not to infinity)
    assert coef.abs().max() < 10


@pytest.mark.parametrize("threads", [1, 2])
def test_curve_to_coef_fine_grids_with_several_threads(threads: int) -> None:
    """G = 300 on 2 inputs (303 x 303 systems): torch's batched LU solve failed here with 2 threads
    (MKL: "Pivots given to lu_solve must all be >= 1"); the fit must work and match numpy's solve
    of the same normal equations, whatever torch's thread count."""
    knots = uniform_knots(2, 300, 3, (-1.0, 1.0), dtype=torch.float64)
    x = torch.linspace(-1, 1, 2000, dtype=torch.float64).unsqueeze(1).repeat(1, 2)
    y = torch.sin(3 * x + torch.tensor([0.0, 1.0], dtype=torch.float64)).unsqueeze(-1)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        coef = curve_to_coef(x, y, knots, 3)
    finally:
        torch.set_num_threads(before)
    a = bspline_basis(x, knots, 3).permute(1, 0, 2).numpy()  # (in, batch, G+k)
    for i in range(2):
        ata = a[i].T @ a[i]
        diag = np.diag(ata)
        lam = 1e-10 * (diag + 1e-2 * diag.mean() + 1e-300)  # curve_to_coef's default ridge
        want = np.linalg.solve(ata + np.diag(lam), a[i].T @ y[:, i].numpy())
        np.testing.assert_allclose(coef[i].numpy(), want, rtol=1e-8, atol=1e-10)
    err = (coef_to_curve(x, knots, coef, 3, uniform=True) - y).abs().max()
    assert err < 1e-9


def test_curve_to_coef_float32_and_shape_errors() -> None:
    knots = uniform_knots(1, 5, 3, (-1.0, 1.0))
    x = torch.linspace(-1, 1, 64).unsqueeze(1)
    y = torch.cos(2 * x).unsqueeze(-1)
    coef = curve_to_coef(x, y, knots, 3)
    assert coef.dtype == torch.float32 and coef.shape == (1, 8, 1)
    err = (coef_to_curve(x[:-1], knots, coef, 3, uniform=True) - y[:-1]).abs().max()
    assert err < 1e-2
    with pytest.raises(ValueError, match=r"\(batch, in, out\)"):
        curve_to_coef(x, y[:, :, 0], knots, 3)


def test_uniform_knots_layout() -> None:
    knots = uniform_knots(2, 4, 2, (0.0, 1.0), dtype=torch.float64)
    expected = torch.tensor([-0.5, -0.25, 0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5], dtype=torch.float64)
    torch.testing.assert_close(knots, expected.expand(2, -1))
