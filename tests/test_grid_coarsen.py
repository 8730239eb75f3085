"""Grid "extension" to fewer intervals is refused unless asked for (issue 18, finding 12)."""

from __future__ import annotations

import pytest
import torch

import kanlab as kl


def _data(n: int = 200) -> torch.Tensor:
    return torch.rand(n, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 - 1


def test_model_extend_to_smaller_grid_is_refused_and_leaves_the_model_unchanged() -> None:
    model = kl.KAN([2, 3, 1], grid_size=10, seed=0, dtype=torch.float64)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"coarsen the grid from 10 to 5 .*allow_coarsen=True"):
        model.extend_grid(5, _data())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.grid_size == 10


def test_layer_extend_to_smaller_grid_is_refused() -> None:
    layer = kl.KANLinear(2, 3, grid_size=8, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"extend_grid\(4\) would coarsen the grid from 8 to 4"):
        layer.extend_grid(4)


def test_allow_coarsen_does_it() -> None:
    model = kl.KAN([2, 3, 1], grid_size=10, seed=0, dtype=torch.float64)
    model.extend_grid(5, _data(), allow_coarsen=True)
    assert model.grid_size == 5


def test_refining_and_same_size_still_work() -> None:
    model = kl.KAN([2, 3, 1], grid_size=5, seed=0, dtype=torch.float64)
    x = _data()
    model.extend_grid(10)  # refining (exactness is tested in test_layers/test_models)
    assert model.grid_size == 10
    model.extend_grid(10, x)  # a refit at the same size on the data: allowed
    assert model.grid_size == 10


@pytest.mark.parametrize(("grid", "schedule", "where"), [
    (10, (5, 10), "the model's grid"),
    (3, (3, 10, 5), r"grid_schedule\[1\]"),
])  # fmt: skip
def test_fit_refuses_a_coarsening_schedule_before_training(grid, schedule, where) -> None:
    ds = kl.datasets.get("paper/xy", n_train=50, n_test=20, dtype=torch.float64)
    model = kl.KAN([2, 2, 1], grid_size=grid, seed=0, dtype=torch.float64)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=rf"grid_schedule\[\d\]=\d+ is below {where}"):
        kl.fit(model, ds, steps=1, grid_schedule=schedule, progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_sklearn_estimator_with_a_schedule_starts_at_its_first_grid() -> None:
    # grid_size defaults to 5: with grid_schedule (3, 5) the model used to be built at 5 and
    # silently coarsened to 3 by the first stage; it now starts at the schedule's first grid
    import numpy as np

    from kanlab.sklearn import KANRegressor

    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (60, 2))
    est = KANRegressor(hidden=(2,), steps=2, grid_schedule=(3, 5)).fit(x, x[:, 0] * x[:, 1])
    assert est.history_.grid_size[0] == 3 and est.model_.grid_size == 5
