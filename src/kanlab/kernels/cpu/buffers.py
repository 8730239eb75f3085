"""Reused memory for the parameter-sized gradients the CPU kernels return.

A coefficient gradient is as large as the coefficient table (8 MB for a 64x64 layer at G=500). A
fresh one on every backward is served by the C allocator from newly mapped pages: on the
development VM that cost ~2000-4000 page faults and 3-9 ms of system time per training step of a
[64, 64, 64] KAN at G=500, more than the kernels themselves.

:func:`empty` hands out a tensor over a NumPy array that this module keeps. ``torch.from_numpy``
makes the tensor's storage hold a reference to the array, and every tensor or view made from it
shares that storage, so while any of them lives (the ``.grad`` autograd stored, a view the user
kept, an optimizer's reference) the array's reference count stays above the pool's own; only an
array that nothing else refers to is handed out again. A gradient the user still holds is never
overwritten. After ``zero_grad()`` (``set_to_none=True``, PyTorch's default) the next backward
reuses the memory without page faults.

Pooled arrays start on a 64-byte boundary, so the kernels can write them with streaming stores.
The pool keeps at most :data:`_PER_SHAPE` arrays per (shape, dtype) and only arrays of at least
:data:`_MIN_BYTES`; :func:`clear` drops them all.
"""

from __future__ import annotations

import math
import sys
import threading

import numpy as np
import torch
from torch import Tensor

__all__ = ["clear", "empty", "pooled_bytes"]

_MIN_BYTES = 1 << 20
_PER_SHAPE = 4
_ALIGN = 64
_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}
_POOL: dict[tuple[tuple[int, ...], torch.dtype], list[np.ndarray]] = {}
_LOCK = threading.Lock()


def _free(arrays: list[np.ndarray], j: int) -> bool:
    # References: the list's and getrefcount's argument. Anything more is a live tensor's storage.
    return sys.getrefcount(arrays[j]) == 2


def _aligned_empty(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An uninitialised array whose data starts on a 64-byte boundary (a cache line; the CPU
    kernels' streaming stores need 32-byte aligned vectors)."""
    raw = np.empty(math.prod(shape) * dtype.itemsize + _ALIGN, dtype=np.uint8)
    skip = -raw.ctypes.data % _ALIGN
    return raw[skip : skip + math.prod(shape) * dtype.itemsize].view(dtype).reshape(shape)


def empty(shape: tuple[int, ...] | torch.Size, dtype: torch.dtype) -> Tensor:
    """An uninitialised CPU tensor of ``shape`` and ``dtype`` (float32/float64), from the pool when
    it is large; any other tensor comes from ``torch.empty``."""
    shape = tuple(int(d) for d in shape)
    kind = _DTYPES.get(dtype)
    if kind is None or math.prod(shape) * np.dtype(kind).itemsize < _MIN_BYTES:
        return torch.empty(shape, dtype=dtype)
    with _LOCK:
        arrays = _POOL.setdefault((shape, dtype), [])
        for j in range(len(arrays)):
            if _free(arrays, j):
                return torch.from_numpy(arrays[j])
        array = _aligned_empty(shape, np.dtype(kind))
        if len(arrays) < _PER_SHAPE:
            arrays.append(array)
        return torch.from_numpy(array)


def pooled_bytes() -> int:
    """Bytes the pool keeps (in use or free)."""
    with _LOCK:
        return sum(a.nbytes for arrays in _POOL.values() for a in arrays)


def clear() -> None:
    """Forget every pooled array (memory returns once no tensor uses it)."""
    with _LOCK:
        _POOL.clear()
