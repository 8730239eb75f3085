"""The CPU kernels' reused gradient memory: reused only when nothing refers to it any more."""

from __future__ import annotations

import pytest
import torch

import kanlab as kl
from kanlab.kernels.cpu import buffers as _buffers

BIG = (300, 1000)  # 1.2 MB of float32: pooled


@pytest.fixture(autouse=True)
def _fresh_pool():
    _buffers.clear()
    yield
    _buffers.clear()


def test_memory_is_reused_once_released():
    a = _buffers.empty(BIG, torch.float32)
    pointer = a.data_ptr()
    del a
    b = _buffers.empty(BIG, torch.float32)
    assert b.data_ptr() == pointer
    assert b.shape == BIG and b.dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_pooled_memory_is_cache_line_aligned_and_writable(dtype):
    """The CPU kernels write pooled gradients with streaming stores, which need 32-byte aligned
    vectors: every pooled tensor starts on a 64-byte boundary, whatever malloc returned."""
    tensors = [_buffers.empty((3, 101, 1000), dtype) for _ in range(3)]  # several allocations
    for t in tensors:
        assert t.data_ptr() % 64 == 0
        assert t.is_contiguous() and t.shape == (3, 101, 1000) and t.dtype == dtype
        t.fill_(1.5)
    assert all(bool(torch.all(t == 1.5)) for t in tensors)


def test_memory_in_use_is_never_handed_out_again():
    a = _buffers.empty(BIG, torch.float32)
    a.fill_(3.0)
    b = _buffers.empty(BIG, torch.float32)
    assert b.data_ptr() != a.data_ptr()
    b.fill_(-1.0)
    assert torch.all(a == 3.0)


def test_a_view_or_an_array_keeps_the_memory_in_use():
    a = _buffers.empty(BIG, torch.float32)
    pointer = a.data_ptr()
    view = a[1:]
    del a
    assert _buffers.empty(BIG, torch.float32).data_ptr() != pointer
    array = view.numpy()
    del view
    assert _buffers.empty(BIG, torch.float32).data_ptr() != pointer
    del array
    assert _buffers.empty(BIG, torch.float32).data_ptr() == pointer


def test_small_tensors_and_other_dtypes_are_not_pooled():
    small = _buffers.empty((10, 10), torch.float32)
    assert small.shape == (10, 10)
    ints = _buffers.empty(BIG, torch.int32)
    assert ints.dtype == torch.int32
    assert _buffers.pooled_bytes() == 0
    _buffers.empty(BIG, torch.float64)
    assert _buffers.pooled_bytes() == 300 * 1000 * 8


def test_the_pool_keeps_a_bounded_number_per_shape():
    held = [_buffers.empty(BIG, torch.float32) for _ in range(_buffers._PER_SHAPE + 3)]
    assert len({t.data_ptr() for t in held}) == len(held)
    assert _buffers.pooled_bytes() == _buffers._PER_SHAPE * 300 * 1000 * 4
    kl.kernels.clear_gradient_memory()
    assert _buffers.pooled_bytes() == 0


def test_a_kept_gradient_is_not_overwritten_by_the_next_backward():
    """A KAN large enough for pooled coefficient gradients: a gradient the user keeps across a
    zero_grad(set_to_none=True) stays intact; one the user drops is reused."""
    pytest.importorskip("numba")
    torch.manual_seed(0)
    model = kl.KAN([40, 40, 4], grid_size=200)
    layer = model.layers[0]
    assert layer.coef.numel() * 4 >= _buffers._MIN_BYTES
    x1, x2 = torch.rand(64, 40) * 2 - 1, torch.rand(64, 40) * 2 - 1

    def gradient(x):
        model.zero_grad(set_to_none=True)
        model(x).square().mean().backward()
        return layer.coef.grad

    kept = gradient(x1)
    kept_copy = kept.clone()
    second = gradient(x2)
    assert second.data_ptr() != kept.data_ptr()
    torch.testing.assert_close(kept, kept_copy, rtol=0, atol=0)
    pointers = {kept.data_ptr(), second.data_ptr()}
    del kept, second
    third = gradient(x1)
    assert third.data_ptr() in pointers  # released memory is reused
    torch.testing.assert_close(third, kept_copy, rtol=0, atol=0)
