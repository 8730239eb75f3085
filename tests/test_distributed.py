"""torch.distributed (gloo, 2 spawned CPU processes): primitives and data-parallel fit."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

import _dist_workers as W  # tests/ is on sys.path under pytest (and in spawned children)
from kanlab import distributed as D

WORLD = 2


def spawn(fn, tmp_path: Path, *args) -> list[dict]:
    init_file = tmp_path / "pg_init"
    mp.start_processes(
        fn,
        args=(WORLD, str(init_file), str(tmp_path), *args),
        nprocs=WORLD,
        join=True,
        start_method="spawn",
    )
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def test_single_process_fallbacks() -> None:
    x = torch.arange(6.0).reshape(3, 2)
    assert not D.is_distributed() and D.rank() == 0 and D.world_size() == 1 and D.is_main()
    assert D.gather_rows(x) is x
    assert D.shard(x)[0] is x
    model = torch.nn.Linear(2, 2)
    assert D.wrap(model) is model
    assert D.default_backend("cpu") == "gloo"
    assert D.init_from_env() is False


def test_shard_bounds_cover_rows_once() -> None:
    for n in (5, 6, 7, 100):
        for w in (1, 2, 3):
            bounds = [D.shard_bounds(n, rank_=r, world=w) for r in range(w)]
            assert bounds[0][0] == 0 and bounds[-1][1] == n
            for (_, hi), (lo, _) in itertools.pairwise(bounds):
                assert hi == lo
            sizes = [hi - lo for lo, hi in bounds]
            assert max(sizes) - min(sizes) <= 1


@pytest.mark.slow
def test_primitives_two_ranks(tmp_path: Path) -> None:
    results = spawn(W.primitives, tmp_path)
    expected = torch.cat(
        [torch.arange(r + 2, dtype=torch.float64).unsqueeze(1) + 100 * r for r in range(2)]
    )
    for res in results:
        assert torch.equal(res["full"], expected)
        assert res["total"].item() == 3.0
        assert torch.all(res["weight"] == 0.0)  # rank 0's values everywhere
