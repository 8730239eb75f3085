"""Worker functions for tests/test_distributed.py, run in spawned processes (gloo, CPU).

Kept in their own module so the spawned children import them without importing the test file.
"""

from __future__ import annotations

import gc
import os

import torch
import torch.distributed as dist


def init(rank: int, world: int, init_file: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)


def finish(failed: bool) -> None:
    """End the group as a run should: after a barrier when this rank succeeded (a rank that tears its
    gloo group down while the other still works can abort with "terminate called without an active
    exception"; CI saw it once), without one when it failed (the others may never reach it)."""
    from kanlab import distributed as D

    if failed:
        dist.destroy_process_group()
    else:
        D.shutdown()


def primitives(rank: int, world: int, init_file: str, out_dir: str) -> None:
    from kanlab import distributed as D

    init(rank, world, init_file)
    failed = True
    try:
        assert D.is_distributed() and D.rank() == rank and D.world_size() == world
        # uneven shards: rank r holds r + 2 rows with values identifying (rank, row)
        x = torch.arange(rank + 2, dtype=torch.float64).unsqueeze(1) + 100 * rank
        full = D.gather_rows(x)
        total = D.all_reduce_sum(torch.tensor([float(rank + 1)]))
        model = torch.nn.Linear(3, 2)
        with torch.no_grad():
            model.weight.fill_(float(rank))
        D.broadcast_module(model, src=0)
        result = {"full": full, "total": total, "weight": model.weight.detach().clone()}
        # A DDP wrapper (it holds the group) that only the garbage collector can free, as fit
        # leaves them: shutdown must free it while the group is still up.
        gc.disable()
        cycle = [D.wrap(torch.nn.Linear(3, 2))]
        cycle.append(cycle)
        del cycle
        failed = False
    finally:
        finish(failed)
    ddp = torch.nn.parallel.DistributedDataParallel
    result["ddp_alive"] = sum(isinstance(o, ddp) for o in gc.get_objects())  # before any collection
    gc.enable()
    torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))


def fit_run(rank: int, world: int, init_file: str, out_dir: str, runs: list[dict]) -> None:
    """Run each option set of ``runs`` with the same fit call as a single process would."""
    import kanlab as kl

    init(rank, world, init_file)
    failed = True
    try:
        results = []
        for options in runs:
            if options.get("fail_rank") == rank:
                raise RuntimeError(f"rank {rank} failed on purpose")
            model, history = run_fit(options)
            state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            results.append({"state": state, "history": history.to_dict()})
            if rank == 0:
                kl.save(model, os.path.join(out_dir, f"model{len(results)}.safetensors"))
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
        failed = False
    finally:
        finish(failed)


def run_fit(options: dict):
    """The same fit call for single-process and distributed runs."""
    import kanlab as kl

    data = kl.datasets.get("paper/exp_sin_sq", n_train=101, n_test=51, dtype=torch.float64)
    widths = options.get("widths", [2, 3, 1])  # e.g. [2, [1, 1], 1]: multiplication nodes
    model = kl.KAN(widths, grid_size=3, seed=0, dtype=torch.float64)
    history = kl.fit(
        model,
        data,
        optimizer=options.get("optimizer", "lbfgs"),
        steps=options.get("steps", 6),
        lr=options.get("lr", 1.0),
        batch_size=options.get("batch_size"),
        lamb=options.get("lamb", 0.0),
        grid_update_every=2,
        stop_grid_update_step=5,
        grid_schedule=options.get("grid_schedule"),
        progress=False,
    )
    return model, history
