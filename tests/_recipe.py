"""The official KAN tutorial's recipe (issue 20, part 5) up to ``auto_symbolic``, shared by the
symbolic tests: KAN [n, 5, 1], grid 3, LBFGS 50 steps with lamb 1e-3, prune, 50 steps, grid 10,
50 steps (float64, 1000 training and 1000 test points)."""

from __future__ import annotations

import torch

import kanlab as kl


def recipe_until_symbolic(name: str, seed: int) -> tuple[kl.KAN, kl.datasets.Dataset]:
    """The recipe on the registered data set ``name`` with ``seed`` (data and initialisation)."""
    f64 = torch.float64
    ds = kl.datasets.get(name, n_train=1000, n_test=1000, seed=seed, dtype=f64)
    model = kl.KAN([ds.train_x.shape[1], 5, 1], grid_size=3, spline_order=3, seed=seed, dtype=f64)
    kl.fit(model, ds, steps=50, lamb=1e-3, progress=False)
    model = kl.prune(model, ds.train_x)
    kl.fit(model, ds, steps=50, progress=False)
    model.extend_grid(10, ds.train_x)
    kl.fit(model, ds, steps=50, progress=False)
    return model, ds
