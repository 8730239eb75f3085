"""Shared fixtures."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module's tests: their models are tiny, and threads only add overhead
    (and oversubscription when other jobs share the CPU). The previous count is restored."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _fixed_global_rng():
    """Every test starts from the same global RNG state (torch, numpy, random): a test that draws
    unseeded data (``torch.rand``) sees the same numbers on every run and in any order, so a failure
    reproduces. Tests that care about seeds still pass their own."""
    import random

    import numpy as np

    random.seed(0)
    np.random.seed(0)  # noqa: NPY002 (tests that call the legacy global np.random.* API)
    torch.manual_seed(0)
    yield
