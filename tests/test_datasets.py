"""Tests for kanlab.datasets: oracles for every generator, reproducibility, and validation errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import kanlab as kl
from kanlab import datasets

# --------------------------------------------------------------------------------- toy functions
PI = np.pi


def _np_toy(name: str, x: np.ndarray) -> np.ndarray:
    """Independent numpy versions of the paper's toy functions, (n, d) -> (n,)."""
    import scipy.special

    if name == "bessel_j0":
        return scipy.special.j0(20 * x[:, 0])
    if name == "exp_sin_sq":
        return np.exp(np.sin(PI * x[:, 0]) + x[:, 1] ** 2)
    if name == "xy":
        return x[:, 0] * x[:, 1]
    if name == "exp_sin_100d":
        return np.exp(sum(np.sin(PI * x[:, i] / 2) ** 2 for i in range(100)) / 100)
    if name == "exp_sin_4d":
        a = np.sin(PI * (x[:, 0] ** 2 + x[:, 1] ** 2))
        b = np.sin(PI * (x[:, 2] ** 2 + x[:, 3] ** 2))
        return np.exp(0.5 * (a + b))
    if name == "exp_sin_4d_nopi":
        a = np.sin(x[:, 0] ** 2 + x[:, 1] ** 2)
        b = np.sin(x[:, 2] ** 2 + x[:, 3] ** 2)
        return np.exp(a + b)
    raise AssertionError(name)


TOY_DIMS = {
    "bessel_j0": 1,
    "exp_sin_sq": 2,
    "xy": 2,
    "exp_sin_100d": 100,
    "exp_sin_4d": 4,
    "exp_sin_4d_nopi": 4,
}


def test_paper_names_registered() -> None:
    assert datasets.names("paper/") == sorted(f"paper/{n}" for n in TOY_DIMS)


@pytest.mark.parametrize("short", sorted(TOY_DIMS))
def test_paper_toy_matches_numpy_oracle(short: str) -> None:
    ds = datasets.get(f"paper/{short}", n_train=200, n_test=100, dtype=torch.float64)
    d = TOY_DIMS[short]
    assert ds.train_x.shape == (200, d) and ds.test_x.shape == (100, d)
    assert ds.train_y.shape == (200, 1) and ds.test_y.shape == (100, 1)
    assert ds.train_x.dtype == torch.float64 and ds.task == "regression"
    assert ds.n_features == d and ds.n_outputs == 1
    for x, y in ((ds.train_x, ds.train_y), (ds.test_x, ds.test_y)):
        xn = x.numpy()
        assert xn.min() >= -1 and xn.max() <= 1
        np.testing.assert_allclose(y[:, 0].numpy(), _np_toy(short, xn), rtol=1e-12, atol=1e-12)
    # The samples spread over the box (not a constant or a sliver of it).
    assert ds.train_x.min() < -0.9 and ds.train_x.max() > 0.9


def test_default_sizes_and_dtype() -> None:
    ds = datasets.get("paper/exp_sin_sq")
    assert ds.train_x.shape == (1000, 2) and ds.test_x.shape == (1000, 2)
    assert ds.train_x.dtype == torch.float32 and ds.train_y.dtype == torch.float32
    assert ds.meta["formula"] and ds.meta["ranges"] == [[-1.0, 1.0], [-1.0, 1.0]]


def test_seed_reproducible_and_distinct() -> None:
    a = datasets.get("paper/exp_sin_4d", n_train=50, n_test=20, seed=3)
    b = datasets.get("paper/exp_sin_4d", n_train=50, n_test=20, seed=3)
    c = datasets.get("paper/exp_sin_4d", n_train=50, n_test=20, seed=4)
    for f in ("train_x", "train_y", "test_x", "test_y"):
        assert torch.equal(getattr(a, f), getattr(b, f))
        assert not torch.equal(getattr(a, f), getattr(c, f))
    # Train and test points are different draws.
    assert not torch.equal(a.train_x[:20], a.test_x)


def test_sampling_does_not_touch_global_rng() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    datasets.get("paper/xy", n_train=10, n_test=10)
    assert torch.equal(torch.rand(3), expected)


def test_kl_datasets_reexported() -> None:
    assert kl.datasets is datasets
    assert "datasets" in kl.__all__
