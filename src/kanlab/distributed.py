"""Data-parallel training with ``torch.distributed`` (PyTorch's own engine, nothing home-made).

``kanlab.fit`` runs unchanged under ``torchrun`` (or any launcher that sets up a process group): the
model is wrapped in ``DistributedDataParallel``, each rank trains on its contiguous shard of the
training rows, and the loss, metrics and History are global. Only rank 0 shows progress bars and
writes files. Without a process group every function here is the identity, so the same code runs
single-process.

**Grid updates and extensions are collective.** A grid update places knots at quantiles of the
layer's inputs; quantiles of a local shard differ from rank to rank and the ranks would silently
drift apart. So the inputs a grid update sees are gathered from all ranks (``all_gather`` of every
shard, concatenated in rank order): since the shards are contiguous blocks in rank order, every rank
sees exactly the full training inputs, in the single-process order, and computes the same knots and
least-squares refit as a single process would. To make the result bit-for-bit identical on every
rank even where kernels are not deterministic (GPU reductions), rank 0's parameters and buffers are
then broadcast to all ranks.

*Cost* per grid update: one ``all_gather`` of the N x d training inputs (N rows in all) and one
broadcast of the model's parameters and buffers (O(parameters)); the refit itself is O(N (G+k)^2) per
input, done redundantly on every rank. Grid updates are rare (every ``grid_update_every`` steps, only
early in training), so this is a small share of the run. For data that do not fit one rank's memory,
pass a strided subsample as the grid inputs; quantiles need only a few thousand points.

**The training seams.** :func:`kanlab.fit` reaches the process group only through this module:
:func:`shard` (the contiguous block of a batch's rows a rank trains on), :func:`grid_inputs` (the
inputs a grid update sees: all ranks' rows, so the grids agree), :func:`reduce_sums` (metric sums
all-reduced before dividing) and :func:`agreed_grid_update` (a grid update or extension every rank
performs identically), besides :func:`wrap` and the reductions used inside the loss.

Exactness of full-batch training: each rank's loss is its shard's sum divided by the global N, and
DDP's gradient average is undone by a factor of ``world_size``, so gradients are the global
full-batch gradients; the loss value handed to LBFGS's line search is all-reduced, so every rank
takes the same step. Backend: ``gloo`` for CPU, ``nccl`` for CUDA, chosen by :func:`default_backend`.
"""

from __future__ import annotations

import datetime
import gc
import inspect
import os

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = [
    "agreed_grid_update",
    "all_reduce_sum",
    "all_reduce_sum_autograd",
    "broadcast_module",
    "default_backend",
    "gather_rows",
    "grid_inputs",
    "init_from_env",
    "is_distributed",
    "is_main",
    "rank",
    "reduce_sums",
    "shard",
    "shard_bounds",
    "world_size",
    "wrap",
]


def is_distributed() -> bool:
    """Whether a process group with more than one rank is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """The number of ranks (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    """Whether this rank writes files, checkpoints and progress bars (rank 0)."""
    return rank() == 0


def default_backend(device: torch.device | str | None = None) -> str:
    """``nccl`` for CUDA devices (when NCCL is available), ``gloo`` otherwise."""
    dev = torch.device(device) if device is not None else None
    use_cuda = (dev is None and torch.cuda.is_available()) or (
        dev is not None and dev.type == "cuda"
    )
    return "nccl" if use_cuda and dist.is_nccl_available() else "gloo"


def init_from_env(
    *, backend: str | None = None, device: torch.device | str | None = None, timeout_s: float = 300
) -> bool:
    """Start the process group from a launcher's environment (``torchrun`` sets ``RANK``,
    ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``). Returns whether a group is running.

    Does nothing when the variables are absent (single process) or a group already runs.
    """
    if dist.is_initialized():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    backend = backend or default_backend(device)
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return True


def shutdown() -> None:
    """Wait for every rank, then end the process group (no-op without one).

    For the end of a run that owns its group (e.g. ``kanlab train`` under torchrun): a rank that
    exits while its gloo group is alive and another rank still works (rank 0 saving) can abort in
    the group's C++ destructors ("terminate called without an active exception").

    The garbage collection in between frees ``DistributedDataParallel`` wrappers that ``fit`` left in
    reference cycles (they hold the group): the group's C++ side is then torn down here, while every
    rank is past the barrier, rather than whenever the collector next runs or at interpreter exit."""
    if dist.is_initialized():
        dist.barrier()
        gc.collect()
        dist.destroy_process_group()


def shard_bounds(n: int, *, rank_: int | None = None, world: int | None = None) -> tuple[int, int]:
    """Rows ``[lo, hi)`` of rank ``rank_`` when ``n`` rows are split into contiguous blocks in rank
    order (the first ``n % world`` ranks get one row more, like ``numpy.array_split``)."""
    r = rank() if rank_ is None else rank_
    w = world_size() if world is None else world
    base, extra = divmod(n, w)
    lo = r * base + min(r, extra)
    return lo, lo + base + (1 if r < extra else 0)


def shard(*tensors: Tensor) -> tuple[Tensor, ...]:
    """This rank's contiguous block of rows of each tensor (all tensors must have the same length)."""
    n = tensors[0].shape[0]
    if any(t.shape[0] != n for t in tensors):
        raise ValueError(f"shard: tensors have different lengths {[t.shape[0] for t in tensors]}")
    if not is_distributed():
        return tensors
    lo, hi = shard_bounds(n)
    if hi <= lo:
        raise ValueError(f"shard: {n} rows cannot give every one of {world_size()} ranks a row")
    return tuple(t[lo:hi] for t in tensors)


def gather_rows(x: Tensor) -> Tensor:
    """Every rank's rows concatenated in rank order, on every rank (shards may differ in length)."""
    if not is_distributed():
        return x
    w = world_size()
    n_local = torch.tensor([x.shape[0]], dtype=torch.int64, device=x.device)
    sizes = [torch.zeros_like(n_local) for _ in range(w)]
    dist.all_gather(sizes, n_local)
    counts = [int(s.item()) for s in sizes]
    m = max(counts)
    padded = x.new_zeros((m, *x.shape[1:]))
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in range(w)]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([p[:c] for p, c in zip(parts, counts, strict=True)], dim=0)


def all_reduce_sum(values: Tensor) -> Tensor:
    """Sum a tensor over ranks (a copy; the identity without a process group)."""
    if not is_distributed():
        return values
    out = values.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; the gradient of every rank's input is the sum of all ranks' output gradients."""

    @staticmethod
    def forward(ctx, values: Tensor) -> Tensor:  # type: ignore[override]
        out = values.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        out = grad.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out


def all_reduce_sum_autograd(values: Tensor) -> Tensor:
    """Sum over ranks with a gradient: the backward sums the incoming gradients over ranks too.
    The identity without a process group."""
    if not is_distributed():
        return values
    return _AllReduceSum.apply(values)


@torch.no_grad()
def broadcast_module(model: nn.Module, *, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers to every rank, in place (shapes must agree)."""
    if not is_distributed():
        return
    for t in [*model.parameters(), *model.buffers()]:
        dist.broadcast(t.data, src=src)
    # Layers keep host mirrors of some buffers (e.g. KANLinear._uniform); refresh them.
    for module in model.modules():
        if hasattr(module, "grid_uniform") and hasattr(module, "_uniform"):
            module._uniform = bool(module.grid_uniform)


def wrap(model: nn.Module) -> nn.Module:
    """``DistributedDataParallel(model)`` under a process group (the model itself otherwise)."""
    if not is_distributed():
        return model
    device_ids = None
    p = next(model.parameters())
    if p.is_cuda:
        device_ids = [p.device.index]
    # find_unused_parameters (an extra graph traversal per step) only where parameters may be left
    # out of the graph: a "zero" base function, or symbolic edges (an all-symbolic layer skips its
    # spline branch). Buffers (knots) are kept equal by the collective grid updates, so DDP need not sync
    # them every forward (syncing them at construction is harmless: they are equal).
    ddp = nn.parallel.DistributedDataParallel
    params = inspect.signature(ddp).parameters
    no_sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {}
    no_sync = no_sync or {"broadcast_buffers": False}  # torch before 2.13
    unused = any(
        getattr(m, "base_activation", None) == "zero" or getattr(m, "_has_symbolic", False)
        for m in model.modules()
    )
    return ddp(model, device_ids=device_ids, find_unused_parameters=unused, **no_sync)


# --------------------------------------------------------------------------- training seams
def grid_inputs(train_x: Tensor) -> Tensor:
    """The inputs a grid update sees: every rank's training rows, in rank order (so identical on
    every rank and equal to the single-process training inputs). ``train_x`` is the full training
    set; each rank contributes its :func:`shard`."""
    return gather_rows(shard(train_x)[0])


def reduce_sums(sums: dict[str, float], device: torch.device) -> dict[str, float]:
    """All-reduce (sum) metric accumulators across ranks; the identity on one rank."""
    if not is_distributed():
        return sums
    keys = sorted(sums)
    total = all_reduce_sum(
        torch.tensor([sums[k] for k in keys], dtype=torch.float64, device=device)
    )
    return dict(zip(keys, total.tolist(), strict=True))


def agreed_grid_update(
    model: nn.Module,
    train_x: Tensor,
    grid_eps: float,
    new_size: int | None,
    margin: float = 0.0,
) -> None:
    """A collective grid update (``new_size`` None) or extension of ``model`` on the training inputs
    ``train_x`` (the full set); rank 0's result is broadcast so every rank holds bit-identical knots
    and coefficients. ``margin``: as ``KAN.update_grid``'s."""
    x = grid_inputs(train_x)
    if new_size is None:
        model.update_grid(x, grid_eps=grid_eps, margin=margin)
    else:
        model.extend_grid(new_size, x, grid_eps=grid_eps, margin=margin)
    broadcast_module(model)
