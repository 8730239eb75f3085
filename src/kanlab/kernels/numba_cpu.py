"""CPU backend: the sparse spline product as three Numba kernels run in parallel threads.

Why Numba: the work is three short loop nests (forward, coefficient gradient, input gradient) whose
inner loop is a contiguous ``out``-long multiply-add over k+1 coefficient rows picked per
(sample, input). PyTorch has no fused gather-multiply-accumulate for this, so a compiled loop is
needed. Numba is a well-kept, pip-installable LLVM JIT that compiles such loops to machine code,
lets a few lines of LLVM IR express 256-bit vectors directly (the products below use them: left to
the auto-vectoriser, the gathered row loops came out scalar), keeps its compiled code in an on-disk
cache, releases the GIL inside
compiled code, and needs no C++ tool chain at install time (unlike a torch C++ extension) and no GPU
(unlike Triton). It stays an optional dependency (``kanlab[jit]``): without it the dispatcher falls
back to the reference path.

Parallelism: the kernels are serial ``@njit(nogil=True)`` loops over a range of their parallel
dimension, run in parallel chunks on *torch's own OpenMP team* when torch's libgomp is loaded
(``GOMP_parallel`` calls a Numba ``cfunc`` on each team thread; threads take chunks from an atomic
counter), else on a small thread pool; as many threads as ``torch.get_num_threads()``. Why not a
separate pool or ``@njit(parallel=True)``: torch's idle OpenMP workers spin after every torch op,
and threads of any other pool then fight them for the cores (a KAN step with a separate pool ran
~10x slower on 2 threads than on 1 until ``OMP_WAIT_POLICY=PASSIVE``); and ``parallel=True``'s
parfor lowering made a cold compile of the six specialisations take ~50 s instead of ~20 s, paid
by the test suite on every fresh checkout. Each chunk writes its own part of the output, so there
are no write conflicts and no atomics on data:

- forward: shares of samples; inside a share, blocks of samples (their inputs transposed into a
  small scratch, 16 inputs at a time) and, per block, input by input so that one input's
  k+1-row slices of the coefficient table are reused by the whole block. The basis of (block,
  input) is computed once into scratch arrays in a normalised form (every sample has k+1 values
  on k+1 existing rows, zeros where a basis function does not exist, so the products have no
  branches). Cubic splines up to 200 possible first rows (G <= 200; the default layer has
  G=5): the block's samples are sorted by first row and the rows are walked in order, two
  vectors of output lanes at a time, with a window of the four scaled coefficient rows in
  registers (one new row per step) while each bucket's samples are updated, on a copy of the
  block's rows of y padded to whole vectors (no masked stores). Other orders, and larger grids:
  per sample, the k+1 contiguous coefficient rows applied in 256-bit vectors over ``out`` (a
  masked vector for the tail); when an input's table does not fit the level-1 cache, the
  block's samples are taken in the order of their first row.
- coefficient gradient: shares of inputs (a thread owns its inputs' rows of the table). On small
  grids, 16 inputs at a time over blocks of 512 samples, the unscaled sums accumulated in the
  gradient itself (cubic: a block's samples sorted by first row, each row's sums in registers
  over all its samples), then one pass per input writes the scaled gradient in place and the
  scale gradient. On large grids, input by input into a cache-resident scratch table, and the
  pass writes the gradient with streaming stores.
- input gradient: shares of samples; one vector dot product per (sample, input) with the
  derivative of the k+1 basis values (ordered as the per-sample forward on large grids). On
  large grids the sample-parallel kernels take one chunk per thread (each chunk reads the whole
  table). On large grids, when the coefficient gradient is wanted too (a hidden layer in
  training), the input gradient is computed inside the coefficient-gradient kernel instead, in
  the same pass over each input's samples (shares of inputs: a thread writes its inputs'
  columns of gx); when an input's table is larger than the level-1 cache (32 KiB), that pass
  takes the samples in the order of their first row, as the input-gradient kernel does.

The coefficient gradient is returned in memory reused between steps (:mod:`kanlab.kernels._buffers`):
a fresh parameter-sized tensor per backward cost more in page faults than the kernels at G=500.

The basis is recomputed from x in every kernel (O(k^2) per (sample, input), small next to the
O(k * out) product), so backward needs only x, the knots and the weight: nothing of size
batch * in * out or batch * in * (G + k) is ever allocated. Costs are O(batch * in * (k + 1) * out),
plus O(parameters) to write the coefficient gradient, independent of G otherwise (a large G only
makes the coefficient rows of one input spread over more memory, level-2 instead of level-1 cache;
with sorting, the products cost ~1.5-2x their G=5 time per (sample, input) at G=500 on the
development machine, when the tables come from main memory).

Numerics follow :func:`kanlab.splines.sparse_basis` exactly in the choice of interval (same formula
for the uniform position, same half-open search for adapted grids), so values agree with the
reference to rounding. NaN inputs give NaN outputs and gradients; inputs outside the knot span give a
zero spline part and zero gradients. Floating-point flags: ``fastmath`` is limited to ``contract``
(fused multiply-add) and ``reassoc`` (lets the dot products of the input gradient vectorise); the flags
that would change NaN/inf semantics (``nnan``, ``ninf``, ``nsz``, ``arcp``, ``afn``) stay off.

JIT cache: compiled code is cached next to this file when that directory is writable, or in
``NUMBA_CACHE_DIR`` when that is set; on a read-only install without ``NUMBA_CACHE_DIR`` the cache is
off (nothing is written inside site-packages). Only float32 and float64 C-contiguous arrays are
compiled (two specialisations per kernel); k and the grid kind are run-time arguments.
"""

from __future__ import annotations

import array
import ctypes
import os
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from llvmlite import ir
from numba import carray, cfunc, literally, njit, types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model
from torch import Tensor

from kanlab.kernels import _buffers

__all__ = ["backward", "backward_scaled", "forward"]


def _cache_enabled() -> bool:
    if os.environ.get("NUMBA_CACHE_DIR"):
        return True
    here = os.path.dirname(os.path.abspath(__file__))
    cache_dir = os.path.join(here, "__pycache__")
    target = cache_dir if os.path.isdir(cache_dir) else here
    return os.access(target, os.W_OK)


_CACHE = _cache_enabled()
_FASTMATH = {"contract", "reassoc"}
# Bytes of output rows per block of samples (forward: rows of y, read and written once per input;
# input gradient: rows of grad_y, read once per input). Measured on the case A/B shapes (1 thread):
# when an input's coefficient table fits the level-1 cache (small grids), blocks whose rows also fit
# it are 5-11% faster (16 KiB); when it does not (G=500), a block's samples are sorted by first row
# (see _large_grid_order) and larger blocks give each row more samples while it is in the level-1
# cache (256 KiB: ~13% faster than 64 KiB at G=500). The bucketed cubic forward was fastest at
# 32 KiB of padded rows on small grids (128 samples of 64 float32; 64 and 256 samples were slower)
# and at 128 KiB on medium ones (G=100: 1.5x faster than 32 KiB, whose buckets held few samples).
_Y_BYTES_SMALL_GRID = 16384
_Y_BYTES = 262144
_Y_BYTES_SORTED = 32768
_Y_BYTES_SORTED_MEDIUM = 131072
_SORTED_FUSED_BYTES = 32768  # larger tables: the fused backward takes samples by first row
_GROUP = 16  # inputs transposed together (one 64-byte line of float32 per sample)
_SMALL_TABLE_BYTES = 8192  # an input's (G+k, out) table at most this big counts as a small grid
# Coefficient gradient, samples per block: on large grids the block only bounds the scratch arrays
# (grad_y is streamed once per input); on small grids a block's rows of grad_y are reused by a group
# of inputs, and 512 samples (128 KiB at out=64) measured 0-8% faster than 256 and ~11% faster
# than 128.
_GW_BYTES = 1 << 20
_GW_BYTES_SMALL_GRID = 131072
# The cubic coefficient gradient sorts a block's samples by first coefficient row when the block has
# at least this many samples per possible row (small grids): a row's gradient sums then stay in
# registers over all its samples instead of four read-modify-writes per sample. With fewer samples
# per row, sorting costs more than it saves (measured 1.3x slower at G=500 than the per-sample form).
# The cubic forward takes the bucketed form (_apply_sorted) whenever a sample's first coefficient
# row has at most _WINDOW_ROWS possible values (that is, G <= 200), whatever the block's size (a
# threshold on the block would make results depend on how threads split the batch). Measured per
# 1 thread against the per-sample form, float32 at out=64: equal at G=5, 7% faster at G=20, 25%
# at G=40, 16% at G=100, 5-13% at G=200, -4 to +5% at G=250, ~20% slower at G=500 (float64:
# 17% faster at G=40, 10% at G=100, 2-7% slower at G=250). Past that (and for the input
# gradient), the products sort a block's samples so that consecutive samples share level-1
# resident rows.
_SORT_MIN = 4
_WINDOW_ROWS = 200


# ---------------------------------------------------------------------------------- explicit SIMD
# The products are written with 256-bit vectors (8 float32 or 4 float64 lanes, AVX2 FMA) through a
# few LLVM intrinsics instead of scalar loops left to the auto-vectoriser: with k+1 coefficient rows,
# a scale row and an output row in flight, LLVM's run-time alias checks made it give up or emit
# scalar code (measured ~190 ns per (sample, input) pair for a scalar-compiled 64-wide product
# against ~12 ns with the vectors below). A vector lives in one register (an LLVM vector value);
# loads and stores are unaligned; lanes past a row's end are handled by scalar tails.


class _Vec(types.Type):
    """A 256-bit vector of an array's dtype: 8 float32 or 4 float64 lanes."""

    def __init__(self, dtype):
        self.dtype = dtype
        self.width = 32 // (dtype.bitwidth // 8)
        super().__init__(name=f"kanlab.Vec({dtype}x{self.width})")


@register_model(_Vec)
class _VecModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        element = dmm.lookup(fe_type.dtype).get_value_type()
        super().__init__(dmm, fe_type, ir.VectorType(element, fe_type.width))


def _element_pointer(context, builder, array_type, array, index):
    data = context.make_array(array_type)(context, builder, array).data
    return builder.gep(data, [index])


@intrinsic
def _width(typingctx, array):  # pragma: no cover - compiled
    """Lanes of a vector of the array's dtype."""
    lanes = _Vec(array.dtype).width

    def codegen(context, builder, signature, args):
        return ir.Constant(ir.IntType(64), lanes)

    return types.intp(array), codegen


@intrinsic
def _vload(typingctx, array, index):  # pragma: no cover - compiled
    """Lanes ``array.flat[index : index + width]`` (C-contiguous array)."""
    vec = _Vec(array.dtype)

    def codegen(context, builder, signature, args):
        pointer = _element_pointer(context, builder, signature.args[0], args[0], args[1])
        vtype = context.get_value_type(vec)
        return builder.load(
            builder.bitcast(pointer, vtype.as_pointer()), align=vec.dtype.bitwidth // 8, typ=vtype
        )

    return vec(array, types.intp), codegen


@intrinsic
def _vstore(typingctx, array, index, value):  # pragma: no cover - compiled
    """``array.flat[index : index + width] = value``."""

    def codegen(context, builder, signature, args):
        pointer = _element_pointer(context, builder, signature.args[0], args[0], args[1])
        pointer = builder.bitcast(pointer, args[2].type.as_pointer())
        builder.store(args[2], pointer, align=signature.args[0].dtype.bitwidth // 8)
        return context.get_dummy_value()

    return types.none(array, types.intp, value), codegen


def _lane_mask(builder, count, lanes):
    """``<lanes x i1>``: lane l is on when l < count."""
    index = ir.Constant(ir.VectorType(ir.IntType(64), lanes), list(range(lanes)))
    wide = ir.Constant(ir.VectorType(ir.IntType(64), lanes), ir.Undefined)
    for lane in range(lanes):
        wide = builder.insert_element(wide, count, ir.Constant(ir.IntType(32), lane))
    return builder.icmp_signed("<", index, wide)


def _masked_intrinsic(builder, kind, vtype):
    mask = ir.VectorType(ir.IntType(1), vtype.count)
    name = f"llvm.masked.{kind}.v{vtype.count}{vtype.element.intrinsic_name}.p0"
    pointer = vtype.as_pointer()
    if kind == "load":
        signature = ir.FunctionType(vtype, [pointer, ir.IntType(32), mask, vtype])
    else:
        signature = ir.FunctionType(ir.VoidType(), [vtype, pointer, ir.IntType(32), mask])
    return cgutils.get_or_insert_function(builder.module, signature, name)


@intrinsic
def _vload_n(typingctx, array, index, count):  # pragma: no cover - compiled
    """The first ``count`` (< width) lanes of ``array.flat[index:]``; the other lanes are 0 and
    their memory is not touched (a row's tail)."""
    vec = _Vec(array.dtype)

    def codegen(context, builder, signature, args):
        pointer = _element_pointer(context, builder, signature.args[0], args[0], args[1])
        vtype = context.get_value_type(vec)
        mask = _lane_mask(builder, args[2], vec.width)
        align = ir.Constant(ir.IntType(32), vec.dtype.bitwidth // 8)
        zero = ir.Constant(vtype, [0.0] * vec.width)
        function = _masked_intrinsic(builder, "load", vtype)
        return builder.call(
            function, [builder.bitcast(pointer, vtype.as_pointer()), align, mask, zero]
        )

    return vec(array, types.intp, types.intp), codegen


@intrinsic
def _vstore_n(typingctx, array, index, value, count):  # pragma: no cover - compiled
    """``array.flat[index : index + count] = value[:count]`` (count < width)."""

    def codegen(context, builder, signature, args):
        pointer = _element_pointer(context, builder, signature.args[0], args[0], args[1])
        vtype = args[2].type
        mask = _lane_mask(builder, args[3], vtype.count)
        align = ir.Constant(ir.IntType(32), signature.args[0].dtype.bitwidth // 8)
        function = _masked_intrinsic(builder, "store", vtype)
        builder.call(function, [args[2], builder.bitcast(pointer, vtype.as_pointer()), align, mask])
        return context.get_dummy_value()

    return types.none(array, types.intp, value, types.intp), codegen


@intrinsic
def _vstore_stream(typingctx, array, index, value):  # pragma: no cover - compiled
    """``array.flat[index : index + width] = value`` as a non-temporal (streaming) store: the line
    is written without being read into the cache first. The address must be 32-byte aligned
    (callers check :func:`_aligned`); :func:`_store_fence` orders such stores before others."""

    def codegen(context, builder, signature, args):
        pointer = _element_pointer(context, builder, signature.args[0], args[0], args[1])
        pointer = builder.bitcast(pointer, args[2].type.as_pointer())
        store = builder.store(args[2], pointer, align=32)
        store.set_metadata("nontemporal", builder.module.add_metadata([ir.IntType(32)(1)]))
        return context.get_dummy_value()

    return types.none(array, types.intp, value), codegen


@intrinsic
def _store_fence(typingctx):  # pragma: no cover - compiled
    """``sfence``: streaming stores made so far become visible before any later store."""

    def codegen(context, builder, signature, args):
        function = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), []), "llvm.x86.sse.sfence"
        )
        builder.call(function, [])
        return context.get_dummy_value()

    return types.none(), codegen


@intrinsic
def _aligned(typingctx, array):  # pragma: no cover - compiled
    """Whether the array's data starts on a 32-byte boundary."""

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        address = builder.ptrtoint(data, ir.IntType(64))
        low = builder.and_(address, ir.IntType(64)(31))
        return builder.icmp_unsigned("==", low, ir.IntType(64)(0))

    return types.boolean(array), codegen


@intrinsic
def _get(typingctx, array, index):  # pragma: no cover - compiled
    """``array.flat[index]`` for an index known to be >= 0: plain indexing with an index read from
    an array adds the negative-index wrap-around (three instructions per access) to a loop whose
    body is a handful of vector operations."""

    def codegen(context, builder, signature, args):
        return builder.load(_element_pointer(context, builder, signature.args[0], args[0], args[1]))

    return array.dtype(array, types.intp), codegen


@njit(inline="always")
def _ld(array, index, count):  # pragma: no cover - compiled
    """``count`` lanes from ``array.flat[index:]`` (all of them when count is the width)."""
    if count == _width(array):
        return _vload(array, index)
    return _vload_n(array, index, count)


@njit(inline="always")
def _st(array, index, value, count):  # pragma: no cover - compiled
    if count == _width(array):
        _vstore(array, index, value)
    else:
        _vstore_n(array, index, value, count)


@intrinsic
def _vsplat(typingctx, array, scalar):  # pragma: no cover - compiled
    """A vector of the array's dtype with every lane equal to ``scalar``."""
    vec = _Vec(array.dtype)

    def codegen(context, builder, signature, args):
        value = context.cast(builder, args[1], signature.args[1], vec.dtype)
        out = ir.Constant(context.get_value_type(vec), ir.Undefined)
        for lane in range(vec.width):
            out = builder.insert_element(out, value, ir.Constant(ir.IntType(32), lane))
        return out

    return vec(array, scalar), codegen


@intrinsic
def _vfma(typingctx, a, b, c):  # pragma: no cover - compiled
    """``a * b + c`` lane by lane, fused (one rounding)."""

    def codegen(context, builder, signature, args):
        vtype = args[0].type
        name = f"llvm.fma.v{vtype.count}{vtype.element.intrinsic_name}"
        function = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vtype, [vtype] * 3), name
        )
        return builder.call(function, args)

    return a(a, b, c), codegen


@intrinsic
def _vmul(typingctx, a, b):  # pragma: no cover - compiled
    def codegen(context, builder, signature, args):
        return builder.fmul(*args)

    return a(a, b), codegen


@intrinsic
def _vadd(typingctx, a, b):  # pragma: no cover - compiled
    def codegen(context, builder, signature, args):
        return builder.fadd(*args)

    return a(a, b), codegen


@intrinsic
def _vsum(typingctx, a):  # pragma: no cover - compiled
    """Sum of the lanes (pairwise halving)."""

    def codegen(context, builder, signature, args):
        value, lanes = args[0], signature.args[0].width
        while lanes > 1:
            half = lanes // 2
            pick = ir.VectorType(ir.IntType(32), half)
            low = builder.shuffle_vector(value, value, ir.Constant(pick, list(range(half))))
            high = builder.shuffle_vector(value, value, ir.Constant(pick, list(range(half, lanes))))
            value, lanes = builder.fadd(low, high), half
        return builder.extract_element(value, ir.Constant(ir.IntType(32), 0))

    return a.dtype(a), codegen


@njit(inline="always")
def _comb4(w, p, n, v0, v1, v2, v3, count):  # pragma: no cover - compiled
    """``v0 * w[p] + v1 * w[p + n] + v2 * w[p + 2n] + v3 * w[p + 3n]`` on ``count`` lanes."""
    t = _vmul(v0, _ld(w, p, count))
    t = _vfma(v1, _ld(w, p + n, count), t)
    t = _vfma(v2, _ld(w, p + 2 * n, count), t)
    return _vfma(v3, _ld(w, p + 3 * n, count), t)


@njit(inline="always")
def _combk(w, p, n, vals, s, k, count):  # pragma: no cover - compiled
    """``sum_r vals[r, s] * w[p + r n]`` on ``count`` lanes, any order k."""
    t = _vmul(_vsplat(w, vals[0, s]), _ld(w, p, count))
    for r in range(1, k + 1):
        t = _vfma(_vsplat(w, vals[r, s]), _ld(w, p + r * n, count), t)
    return t


@njit(inline="always")
def _large_grid(table):  # pragma: no cover - compiled
    """Whether an input's (G+k, out) slice of the table (in, G+k, out) is too large for the
    level-1 cache: the kernels' large-grid paths."""
    return table.shape[1] * table.shape[2] * table.itemsize > _SMALL_TABLE_BYTES


@njit(cache=_CACHE)
def _large_table(weight):  # pragma: no cover - compiled
    """:func:`_large_grid` for the Python driver (which kernels run in backward)."""
    return _large_grid(weight)


@njit(cache=_CACHE)
def _rows_budget(weight):  # pragma: no cover - compiled
    """Bytes of output rows per block for the forward and input-gradient kernels."""
    return _Y_BYTES if _large_grid(weight) else _Y_BYTES_SMALL_GRID


@njit(cache=_CACHE)
def _block_size(n_out, itemsize, batch, budget):  # pragma: no cover - compiled
    """Samples per block: their output rows fill about ``budget`` bytes (8 to 512 samples)."""
    return max(1, min(batch, max(8, min(512, budget // (n_out * itemsize)))))


# --------------------------------------------------------------------------------------- basis
@njit(inline="always")
def _shift(s, r0, k, top_row, vals, dvals, deriv):  # pragma: no cover - compiled
    """Move the values of sample s (first row r0 outside [0, top_row]) to the clamped first row:
    slots whose basis function does not exist become 0."""
    c = min(max(r0, 0), top_row)
    d = r0 - c
    if d > 0:  # past the top: new[r] = old[r - d], descending so reads precede writes
        for r in range(k, -1, -1):
            vals[r, s] = vals[r - d, s] if r - d >= 0 else 0.0
            if deriv:
                dvals[r, s] = dvals[r - d, s] if r - d >= 0 else 0.0
    elif d < 0:  # below the bottom: new[r] = old[r - d], ascending
        for r in range(k + 1):
            vals[r, s] = vals[r - d, s] if r - d <= k else 0.0
            if deriv:
                dvals[r, s] = dvals[r - d, s] if r - d <= k else 0.0
    return c


@njit(inline="always")
def _fill(s, k, value, vals, dvals, deriv):  # pragma: no cover - compiled
    for r in range(k + 1):
        vals[r, s] = value
        if deriv:
            dvals[r, s] = value


@njit(inline="always")
def _piece(e, p0, p1, p2, p3, zero):  # pragma: no cover - compiled
    """The cubic piece at distance e (0..3) from a sample's interval, 0 past the support."""
    return p0 if e == 0 else (p1 if e == 1 else (p2 if e == 2 else (p3 if e == 3 else zero)))


@njit(inline="always")
def _normalise4(rows, vals, xs, m, top_row, nan, zero):  # pragma: no cover - compiled
    """Cubic values of the block's m slots (vals[r, s]: the piece at distance 3 - r from interval
    rows[s], unclamped) moved to the clamped first row, by selects; NaN samples get NaN. rows is
    read, not changed."""
    v0, v1, v2, v3 = vals[0], vals[1], vals[2], vals[3]
    for s in range(m):
        j = rows[s]
        d = j - min(max(j - 3, 0), top_row)  # the distance of slot 0
        p3, p2, p1, p0 = v0[s], v1[s], v2[s], v3[s]
        bad = xs[s] != xs[s]
        a0 = _piece(d, p0, p1, p2, p3, zero)
        a1 = _piece(d - 1, p0, p1, p2, p3, zero)
        a2 = _piece(d - 2, p0, p1, p2, p3, zero)
        a3 = _piece(d - 3, p0, p1, p2, p3, zero)
        v0[s] = nan if bad else a0
        v1[s] = nan if bad else a1
        v2[s] = nan if bad else a2
        v3[s] = nan if bad else a3


@njit(cache=_CACHE, fastmath=_FASTMATH)
def _block_basis(
    xs, t0, h, knots, i, m, k, uniform, deriv, n_basis, rows, uu, vals, dvals
):  # pragma: no cover - compiled
    """Sparse basis of input i at the m values ``xs[:m]`` (a block of samples, slot s) into scratch
    arrays, in a
    normalised form that needs no branch in the products: for *every* sample,
    ``spline = sum_r vals[r, s] * coef[rows[s] + r]`` with ``0 <= rows[s] <= n_basis - k - 1``;
    slots of basis functions that do not exist hold 0, samples outside the knot span hold zeros,
    NaN samples hold NaN (in rows 0..k). With ``deriv``, ``dvals`` holds the derivatives w.r.t. x.

    One call per (input, block of samples): helper calls per sample would cost reference-count
    updates on every array argument, which dominate at these sizes. The interval follows
    :func:`kanlab.splines.sparse_basis` exactly (same uniform position formula, same half-open
    search); the values come from the in-place triangular recursion, level by level with r
    descending so each level reads the previous one before overwriting it, and from a closed form
    for the uniform cubic case (the default layer).
    """
    n = knots.shape[1]
    top = n - 2  # last interval
    top_row = n_basis - k - 1
    inv_h = 1.0 / h[i]
    if uniform and k == 3:
        # The default layer, in simple loops over the block that LLVM vectorises; the rare samples
        # near or outside the ends of the grid are fixed up afterwards. uu: local coordinates.
        t0i = t0[i]
        hh = h[i]
        # Constants in the array dtype: Numba types int and float literals as 64-bit, and
        # float32 <op> int64 is float64, which had the float32 basis computed in float64 (half
        # the vector width, plus conversions). Values read back from a float array keep its dtype.
        uu[0] = 1
        one = uu[0]
        uu[0] = -1
        low = uu[0]
        uu[0] = top + 1
        high = uu[0]
        two = one + one
        three = two + one
        four = two + two
        six = three + three
        sixth = one / six
        half = one / two
        for s in range(m):
            pos = (xs[s] - t0i) / hh  # same formula as splines.sparse_basis
            fl = np.floor(pos)
            uu[s] = pos - fl
            rows[s] = np.int32(min(max(fl, low), high))  # interval, clamped to [-1, n - 1]
        for s in range(m):
            u = uu[s]
            w = one - u
            u2 = u * u
            vals[0, s] = w * w * w * sixth
            vals[1, s] = (three * u2 * u - six * u2 + four) * sixth
            vals[2, s] = (-three * u2 * u + three * u2 + three * u + one) * sixth
            vals[3, s] = u2 * u * sixth
        if deriv:
            inv_hh = one / hh
            for s in range(m):
                u = uu[s]
                w = one - u
                u2 = u * u
                dvals[0, s] = -half * w * w * inv_hh
                dvals[1, s] = (three * half * u2 - two * u) * inv_hh
                dvals[2, s] = (-three * half * u2 + u + half) * inv_hh
                dvals[3, s] = half * u2 * inv_hh
        edge = 0  # samples outside the core intervals (or NaN): none for most trained layers
        for s in range(m):  # (a reduction without branches, vectorised)
            r0 = rows[s] - 3
            edge += (r0 < 0) | (r0 > top_row) | (xs[s] != xs[s])
        if edge == 0:
            for s in range(m):
                rows[s] -= 3
            return
        if 4 * edge < m:  # a few: per-sample branches, mostly predictable, cost less than selects
            for s in range(m):
                j = rows[s]
                r0 = j - 3
                if r0 >= 0 and r0 <= top_row and xs[s] == xs[s]:
                    rows[s] = r0
                elif xs[s] != xs[s]:
                    rows[s] = 0
                    _fill(s, 3, np.nan, vals, dvals, deriv)
                elif j < 0 or j > top:
                    rows[s] = 0
                    _fill(s, 3, 0.0, vals, dvals, deriv)
                else:
                    rows[s] = _shift(s, r0, 3, top_row, vals, dvals, deriv)
            return
        # Many samples lie in the first or last k intervals (part of their basis functions do
        # not exist), outside the knots, or are NaN: normalise every sample with selects, no
        # branches. Slot r of the clamped first row c holds the piece at distance j - c - r
        # (vals[3 - e] holds the piece at distance e), 0 past the support. Measured on case B's
        # hidden layer at initialisation (60% of the inputs outside [-1, 1]): per-sample
        # branches (mispredicted) made each kernel ~3x slower per (sample, input) than in-grid
        # data.
        uu[0] = np.nan  # NaN and 0 in the array dtype (uu is no longer needed)
        nan = uu[0]
        zero = one - one
        _normalise4(rows, vals, xs, m, top_row, nan, zero)
        if deriv:
            _normalise4(rows, dvals, xs, m, top_row, nan, zero)
        for s in range(m):
            rows[s] = 0 if xs[s] != xs[s] else min(max(rows[s] - 3, 0), top_row)
        return
    for s in range(m):
        xv = xs[s]
        rows[s] = 0
        if np.isnan(xv):
            _fill(s, k, np.nan, vals, dvals, deriv)
            continue
        # ---- interval j with t_j <= x < t_{j+1}; u is the local coordinate on uniform grids
        u = xv - xv
        j = 0
        if uniform:
            pos = (xv - t0[i]) / h[i]
            fl = np.floor(pos)
            if not (fl >= 0 and fl <= top):
                _fill(s, k, 0.0, vals, dvals, deriv)
                continue
            j = int(fl)
            u = pos - fl
        else:
            if xv < knots[i, 0] or not xv < knots[i, n - 1]:
                _fill(s, k, 0.0, vals, dvals, deriv)
                continue
            top_knot = n - 1  # invariant: knots[j] <= x < knots[top_knot]
            while top_knot - j > 1:
                mid = (j + top_knot) // 2
                if knots[i, mid] <= xv:
                    j = mid
                else:
                    top_knot = mid
        # ---- the k+1 values (and derivatives); vals[r, s] belongs to B_{j-k+r}
        vals[0, s] = 1.0
        if deriv:
            dvals[0, s] = 0.0
        for p in range(1, k + 1):
            last = deriv and p == k
            for r in range(p, -1, -1):
                lower = vals[r - 1, s] if r >= 1 else 0.0  # B_{a, p-1}
                upper = vals[r, s] if r <= p - 1 else 0.0  # B_{a+1, p-1}
                if uniform:  # cardinal recursion in u
                    vals[r, s] = ((u + (p - r)) * lower + ((r + 1) - u) * upper) / p
                    if last:
                        dvals[r, s] = (lower - upper) * inv_h
                    continue
                # B_{a,p} = (x - t_a)/(t_{a+p} - t_a) B_{a,p-1} + (t_{a+p+1} - x)/(...) B_{a+1,p-1};
                # 0/0 := 0 (repeated knots). Knot indices are clamped: out-of-range knots only
                # enter basis functions that do not exist.
                a = j - p + r
                ta = knots[i, min(max(a, 0), n - 1)]
                tap = knots[i, min(max(a + p, 0), n - 1)]
                ta1 = knots[i, min(max(a + 1, 0), n - 1)]
                tap1 = knots[i, min(max(a + p + 1, 0), n - 1)]
                new = 0.0
                dl = 0.0
                du = 0.0
                if r >= 1 and tap - ta > 0:
                    new += (xv - ta) / (tap - ta) * lower
                    dl = lower / (tap - ta)
                if r <= p - 1 and tap1 - ta1 > 0:
                    new += (tap1 - xv) / (tap1 - ta1) * upper
                    du = upper / (tap1 - ta1)
                vals[r, s] = new
                if last:
                    dvals[r, s] = p * (dl - du)
        r0 = j - k
        rows[s] = r0 if 0 <= r0 <= top_row else _shift(s, r0, k, top_row, vals, dvals, deriv)


_JIT = {"nogil": True, "cache": _CACHE, "fastmath": _FASTMATH}


@njit(inline="always")
def _apply4(weight, scale, p, sc, yo, o, y, v0, v1, v2, v3, count):  # pragma: no cover
    t = _comb4(weight, p + o, weight.shape[2], v0, v1, v2, v3, count)
    _st(y, yo + o, _vfma(_ld(scale, sc + o, count), t, _ld(y, yo + o, count)), count)


@njit(inline="always")
def _applyk(weight, scale, vals, s, k, p, sc, yo, o, y, count):  # pragma: no cover
    t = _combk(weight, p + o, weight.shape[2], vals, s, k, count)
    _st(y, yo + o, _vfma(_ld(scale, sc + o, count), t, _ld(y, yo + o, count)), count)


@njit(**_JIT)
def _apply(weight, scale, rows, vals, order, ordered, i, b0, b1, k, y):  # pragma: no cover
    """``y[b] += scale[i] * sum_r vals[r, s] * weight[i, rows[s] + r]`` for b = b0 + s, s = 0..b1-b0-1
    (in the block's ``order``, a permutation, when ``ordered``: a compile-time constant), in
    vectors (full ones, then one masked vector for the rest of the row).

    A function of its own (per input and block) so that LLVM allocates registers for this loop
    alone: inside the whole kernel it spilled the loop's pointers to the stack. The basis values
    are broadcast once per sample (LLVM cannot hoist them: it cannot prove y does not alias them).
    """
    n_basis = weight.shape[1]
    n_out = weight.shape[2]
    lanes = _width(weight)
    full = n_out - n_out % lanes
    rest = n_out - full
    sc = i * n_out
    # one compiled loop per value of ordered (a run-time select of s cost 5-10% on small grids)
    literally(ordered)
    for m in range(b1 - b0):
        s = order[m] if ordered else m
        b = b0 + s
        p = (i * n_basis + rows[s]) * n_out
        yo = b * n_out
        if k == 3:
            v0 = _vsplat(weight, vals[0, s])
            v1 = _vsplat(weight, vals[1, s])
            v2 = _vsplat(weight, vals[2, s])
            v3 = _vsplat(weight, vals[3, s])
            for o in range(0, full, lanes):
                _apply4(weight, scale, p, sc, yo, o, y, v0, v1, v2, v3, lanes)
            if rest:
                _apply4(weight, scale, p, sc, yo, full, y, v0, v1, v2, v3, rest)
        else:
            for o in range(0, full, lanes):
                _applyk(weight, scale, vals, s, k, p, sc, yo, o, y, lanes)
            if rest:
                _applyk(weight, scale, vals, s, k, p, sc, yo, full, y, rest)


@njit(inline="always")
def _scaled_row(weight, q, f, count):  # pragma: no cover - compiled
    """``count`` lanes of the coefficient table at flat offset q times the scale lanes f."""
    return _vmul(f, _ld(weight, q, count))


@njit(**_JIT)
def _apply_sorted(weight, scale, vals, starts, order, i, yp, stride):  # pragma: no cover
    """Cubic case of :func:`_apply` with the block's samples sorted by first row (small and medium
    grids): ``yp[s * stride + o] += scale[i, o] sum_r vals[r, s] weight[i, row + r, o]``, yp a
    padded (block, stride) scratch (stride: out rounded up to whole vectors).

    Two vectors of output lanes at a time, the rows are walked in order with a window of the four
    scaled rows a bucket of samples needs (row, row+1, row+2, row+3) held in registers: each step
    loads one new row and shifts the window, and every sample of the bucket is updated with 8
    FMAs, 2 loads and 2 stores of its y lanes per pair of vectors, instead of 8 coefficient
    loads, 2 scale loads and 10 multiply-adds (measured 11.8 -> 8 ns per (sample, input) at out=64
    on small grids, and about half the time at out=10, where the padded rows spare the masked
    stores of a row's tail, slow on AMD cores). Reloading all four rows per bucket instead of
    sliding the window cost as much on small grids and ~30% more at G=40 to 100, where buckets
    hold few samples. With about one sample per row (G=500) the loop's unpredictable bucket
    sizes made it ~20% slower than the per-sample form, which large grids keep.
    """
    n_basis = weight.shape[1]
    n_out = weight.shape[2]
    lanes = _width(weight)
    nb = vals.shape[1]
    n_rows = starts.shape[0] - 1
    sc = i * n_out
    base = i * n_basis * n_out
    for o in range(0, stride, 2 * lanes):
        ca = min(lanes, n_out - o)
        fa = _ld(scale, sc + o, ca)
        q = base + o
        a0 = _scaled_row(weight, q, fa, ca)
        a1 = _scaled_row(weight, q + n_out, fa, ca)
        a2 = _scaled_row(weight, q + 2 * n_out, fa, ca)
        if o + lanes < stride:
            cb = min(lanes, n_out - o - lanes)
            fb = _ld(scale, sc + o + lanes, cb)
            e0 = _scaled_row(weight, q + lanes, fb, cb)
            e1 = _scaled_row(weight, q + n_out + lanes, fb, cb)
            e2 = _scaled_row(weight, q + 2 * n_out + lanes, fb, cb)
            for row in range(n_rows):
                q = base + (row + 3) * n_out + o
                a3 = _scaled_row(weight, q, fa, ca)
                e3 = _scaled_row(weight, q + lanes, fb, cb)
                for m in range(_get(starts, row), _get(starts, row + 1)):
                    s = _get(order, m)
                    p = s * stride + o
                    v = _vsplat(yp, _get(vals, s))
                    y0 = _vfma(v, a0, _vload(yp, p))
                    y1 = _vfma(v, e0, _vload(yp, p + lanes))
                    v = _vsplat(yp, _get(vals, s + nb))
                    y0 = _vfma(v, a1, y0)
                    y1 = _vfma(v, e1, y1)
                    v = _vsplat(yp, _get(vals, s + 2 * nb))
                    y0 = _vfma(v, a2, y0)
                    y1 = _vfma(v, e2, y1)
                    v = _vsplat(yp, _get(vals, s + 3 * nb))
                    _vstore(yp, p, _vfma(v, a3, y0))
                    _vstore(yp, p + lanes, _vfma(v, e3, y1))
                a0, a1, a2 = a1, a2, a3
                e0, e1, e2 = e1, e2, e3
        else:
            for row in range(n_rows):
                a3 = _scaled_row(weight, base + (row + 3) * n_out + o, fa, ca)
                for m in range(_get(starts, row), _get(starts, row + 1)):
                    s = _get(order, m)
                    p = s * stride + o
                    y0 = _vfma(_vsplat(yp, _get(vals, s)), a0, _vload(yp, p))
                    y0 = _vfma(_vsplat(yp, _get(vals, s + nb)), a1, y0)
                    y0 = _vfma(_vsplat(yp, _get(vals, s + 2 * nb)), a2, y0)
                    _vstore(yp, p, _vfma(_vsplat(yp, _get(vals, s + 3 * nb)), a3, y0))
                a0, a1, a2 = a1, a2, a3


@njit(**_JIT)
def _large_grid_order(rows, m, counts, order):  # pragma: no cover - compiled
    """For a table too large for the level-1 cache: the block's m samples sorted by first row
    (``order``), so that consecutive samples reuse the same coefficient rows from the level-1
    cache (measured 1.5-1.9x faster at G=500); ``counts`` (n_rows + 1,) is scratch.

    A plain counting sort: with about one sample per row, the four interleaved counter sets of
    :func:`_sort_rows` (there against store-to-load stalls between samples of one row) only add
    work per row. This sort, without the prefetch of the next input's table that preceded it,
    measured 10-15% faster for the whole forward at G=300 to 500 (1 thread)."""
    n_rows = counts.shape[0] - 1
    for q in range(n_rows + 1):
        counts[q] = 0
    for s in range(m):
        counts[rows[s] + 1] += 1
    for q in range(n_rows):
        counts[q + 1] += counts[q]  # counts[q]: the first slot of row q
    for s in range(m):
        q = rows[s]
        order[counts[q]] = s
        counts[q] += 1


@njit(**_JIT)
def _transpose(x, b0, b1, i0, i1, xb):  # pragma: no cover - compiled
    """``xb[j, s] = x[b0 + s, i0 + j]``: inputs i0..i1-1 over a block of samples, each input
    contiguous. The forward and the coefficient gradient transpose groups of ``_GROUP`` inputs:
    a whole block's inputs at once (784 x 128 float32, 400 KB for case B) overflowed the level-2
    cache. The input gradient's blocks are small (64 samples): it transposes them whole, which
    measured 4-11% faster there than groups."""
    for b in range(b0, b1):
        for i in range(i0, i1):
            xb[i - i0, b - b0] = x[b, i]


@njit(**_JIT)
def _forward(x, t0, h, knots, weight, scale, k, uniform, b_lo, b_hi, y):  # pragma: no cover
    """Rows b_lo..b_hi-1 of y (batch, out) = spline product; x (batch, in), weight (in, G+k, out),
    scale (in, out): the per-edge factor applied to input i's coefficient columns. y need not be
    zeroed.

    Blocks of samples (their rows of y stay in cache), input by input inside a block: the input's
    k+1-row slices of the coefficient table are reused by the whole block while they are in cache.
    Per (sample, input): ``y[b] += scale[i] * sum_r vals[r] * weight[i, rows + r]`` in vectors.
    Cubic splines on small and medium grids take the bucketed form (:func:`_apply_sorted`) on a
    padded copy of the block's rows of y.
    """
    n_in = x.shape[1]
    n_basis = weight.shape[1]
    n_out = weight.shape[2]
    n_rows = n_basis - k
    lanes = _width(weight)
    big = _large_grid(weight)
    bucketed = k == 3 and n_rows <= _WINDOW_ROWS
    stride = -(-n_out // lanes) * lanes if bucketed else n_out  # y row length in the block scratch
    budget = _rows_budget(weight)
    if bucketed:
        # medium grids: as many samples per block in float64 as in float32 (buckets of few
        # samples cost branch mispredictions: float64 ran 1.1-1.4x the per-sample form at half)
        budget = _Y_BYTES_SORTED_MEDIUM // 4 * weight.itemsize if big else _Y_BYTES_SORTED
    block = _block_size(stride, weight.itemsize, b_hi - b_lo, budget)
    rows = np.empty(block, dtype=np.int32)
    uu = np.empty(block, dtype=weight.dtype)
    vals = np.empty((k + 1, block), dtype=weight.dtype)
    xb = np.empty((_GROUP, block), dtype=weight.dtype)
    yp = np.empty(block * stride if bucketed else 0, dtype=weight.dtype)
    zero = _vsplat(weight, 0.0)
    starts = np.empty(n_rows + 1, dtype=np.int64)
    counts = np.empty((4, n_rows), dtype=np.int64)
    order = np.empty(block, dtype=np.int32)  # the block's samples sorted by first row
    for b0 in range(b_lo, b_hi, block):
        b1 = min(b_hi, b0 + block)
        m = b1 - b0
        if bucketed:
            for q in range(0, m * stride, lanes):
                _vstore(yp, q, zero)
        else:
            for q in range(b0 * n_out, b1 * n_out, lanes):  # the block's rows are contiguous
                _st(y, q, zero, min(lanes, b1 * n_out - q))
        for i in range(n_in):
            if i % _GROUP == 0:
                _transpose(x, b0, b1, i, min(n_in, i + _GROUP), xb)
            _block_basis(
                xb[i % _GROUP], t0, h, knots, i, m, k, uniform, False, n_basis, rows, uu, vals, vals
            )
            if bucketed:
                _sort_rows(rows, m, n_rows, starts, counts, order)
                _apply_sorted(weight, scale, vals, starts, order, i, yp, stride)
                continue
            if big:  # a constant flag: _apply is compiled for each value
                _large_grid_order(rows, m, starts, order)
                _apply(weight, scale, rows, vals, order, True, i, b0, b1, k, y)
            else:
                _apply(weight, scale, rows, vals, order, False, i, b0, b1, k, y)
        if bucketed:
            for s in range(m):
                for o in range(n_out):
                    y[b0 + s, o] = yp[s * stride + o]


@njit(inline="always")
def _update4(g, q, gw, v0, v1, v2, v3, count):  # pragma: no cover - compiled
    """The four rows at flat offset q of gw (stride out) += v_r * g, on ``count`` lanes."""
    n = gw.shape[2]
    _st(gw, q, _vfma(v0, g, _ld(gw, q, count)), count)
    _st(gw, q + n, _vfma(v1, g, _ld(gw, q + n, count)), count)
    _st(gw, q + 2 * n, _vfma(v2, g, _ld(gw, q + 2 * n, count)), count)
    _st(gw, q + 3 * n, _vfma(v3, g, _ld(gw, q + 3 * n, count)), count)


@njit(inline="always")
def _updatek(g, vals, s, k, q, gw, count):  # pragma: no cover - compiled
    """The k+1 rows at flat offset q of gw += vals[r, s] * g, on ``count`` lanes."""
    for r in range(k + 1):
        qr = q + r * gw.shape[2]
        _st(gw, qr, _vfma(_vsplat(gw, vals[r, s]), g, _ld(gw, qr, count)), count)


@njit(inline="always")
def _accumulate4(gy, p, go, o, gw, v0, v1, v2, v3, count):  # pragma: no cover - compiled
    _update4(_ld(gy, go + o, count), p + o, gw, v0, v1, v2, v3, count)


@njit(inline="always")
def _accumulatek(gy, vals, s, k, p, go, o, gw, count):  # pragma: no cover - compiled
    _updatek(_ld(gy, go + o, count), vals, s, k, p + o, gw, count)


@njit(**_JIT)
def _accumulate(gy, rows, vals, i, b0, b1, k, gw):  # pragma: no cover - compiled
    """``gw[i, rows[s] + r] += vals[r, s] * gy[b]`` for b = b0..b1-1 (s = b - b0), in vectors."""
    n_basis = gw.shape[1]
    n_out = gw.shape[2]
    lanes = _width(gw)
    full = n_out - n_out % lanes
    rest = n_out - full
    for b in range(b0, b1):
        s = b - b0
        p = (i * n_basis + rows[s]) * n_out
        go = b * n_out
        if k == 3:
            v0 = _vsplat(gw, vals[0, s])
            v1 = _vsplat(gw, vals[1, s])
            v2 = _vsplat(gw, vals[2, s])
            v3 = _vsplat(gw, vals[3, s])
            for o in range(0, full, lanes):
                _accumulate4(gy, p, go, o, gw, v0, v1, v2, v3, lanes)
            if rest:
                _accumulate4(gy, p, go, full, gw, v0, v1, v2, v3, rest)
        else:
            for o in range(0, full, lanes):
                _accumulatek(gy, vals, s, k, p, go, o, gw, lanes)
            if rest:
                _accumulatek(gy, vals, s, k, p, go, full, gw, rest)


@njit(**_JIT)
def _sort_rows(rows, m, n_rows, starts, counts, order):  # pragma: no cover - compiled
    """Counting sort of the slots 0..m-1 by ``rows[s]`` (0 <= rows < n_rows): the slots whose
    first coefficient row is q are ``order[starts[q] : starts[q + 1]]``; ``counts`` (4, n_rows)
    is scratch.

    Four interleaved sets of counters (slot s uses set s % 4): with one set, consecutive slots of
    the same row wait on each other's counter update (a store-to-load round trip per slot; measured
    3.4 against 1.9 ns per slot at G=5). Inside a bucket the slots come set by set."""
    for j in range(4):
        for q in range(n_rows):
            counts[j, q] = 0
    m4 = m - m % 4
    for s in range(0, m4, 4):
        counts[0, rows[s]] += 1
        counts[1, rows[s + 1]] += 1
        counts[2, rows[s + 2]] += 1
        counts[3, rows[s + 3]] += 1
    for s in range(m4, m):
        counts[s - m4, rows[s]] += 1
    total = 0
    starts[0] = 0
    for q in range(n_rows):
        for j in range(4):
            c = counts[j, q]
            counts[j, q] = total
            total += c
        starts[q + 1] = total
    for s in range(0, m4, 4):
        q = rows[s]
        order[counts[0, q]] = s
        counts[0, q] += 1
        q = rows[s + 1]
        order[counts[1, q]] = s + 1
        counts[1, q] += 1
        q = rows[s + 2]
        order[counts[2, q]] = s + 2
        counts[2, q] += 1
        q = rows[s + 3]
        order[counts[3, q]] = s + 3
        counts[3, q] += 1
    for s in range(m4, m):
        q = rows[s]
        order[counts[s - m4, q]] = s
        counts[s - m4, q] += 1


@njit(inline="always")
def _bucket_pair(gy, vals, order, m0, m1, b0, q, o, gw):  # pragma: no cover - compiled
    """Lanes o..o+2w-1 of the four rows starting at flat offset q of gw (stride out) += the sum
    over the slots order[m0:m1] (same first row) of ``vals[r, s] * gy[b0 + s]``, in registers."""
    n = gw.shape[2]
    lanes = _width(gw)
    a0 = _vsplat(gw, 0.0)
    a1, a2, a3, c0, c1, c2, c3 = a0, a0, a0, a0, a0, a0, a0
    for m in range(m0, m1):
        s = order[m]
        go = (b0 + s) * n + o
        g = _vload(gy, go)
        e = _vload(gy, go + lanes)
        v = _vsplat(gw, vals[0, s])
        a0 = _vfma(v, g, a0)
        c0 = _vfma(v, e, c0)
        v = _vsplat(gw, vals[1, s])
        a1 = _vfma(v, g, a1)
        c1 = _vfma(v, e, c1)
        v = _vsplat(gw, vals[2, s])
        a2 = _vfma(v, g, a2)
        c2 = _vfma(v, e, c2)
        v = _vsplat(gw, vals[3, s])
        a3 = _vfma(v, g, a3)
        c3 = _vfma(v, e, c3)
    q = q + o
    _vstore(gw, q, _vadd(_vload(gw, q), a0))
    _vstore(gw, q + lanes, _vadd(_vload(gw, q + lanes), c0))
    _vstore(gw, q + n, _vadd(_vload(gw, q + n), a1))
    _vstore(gw, q + n + lanes, _vadd(_vload(gw, q + n + lanes), c1))
    _vstore(gw, q + 2 * n, _vadd(_vload(gw, q + 2 * n), a2))
    _vstore(gw, q + 2 * n + lanes, _vadd(_vload(gw, q + 2 * n + lanes), c2))
    _vstore(gw, q + 3 * n, _vadd(_vload(gw, q + 3 * n), a3))
    _vstore(gw, q + 3 * n + lanes, _vadd(_vload(gw, q + 3 * n + lanes), c3))


@njit(inline="always")
def _bucket_one(gy, vals, order, m0, m1, b0, q, o, gw, count):  # pragma: no cover - compiled
    """As :func:`_bucket_pair` for ``count`` lanes o..o+count-1 (one vector, maybe masked)."""
    n = gw.shape[2]
    a0 = _vsplat(gw, 0.0)
    a1, a2, a3 = a0, a0, a0
    for m in range(m0, m1):
        s = order[m]
        g = _ld(gy, (b0 + s) * n + o, count)
        a0 = _vfma(_vsplat(gw, vals[0, s]), g, a0)
        a1 = _vfma(_vsplat(gw, vals[1, s]), g, a1)
        a2 = _vfma(_vsplat(gw, vals[2, s]), g, a2)
        a3 = _vfma(_vsplat(gw, vals[3, s]), g, a3)
    q = q + o
    _st(gw, q, _vadd(_ld(gw, q, count), a0), count)
    _st(gw, q + n, _vadd(_ld(gw, q + n, count), a1), count)
    _st(gw, q + 2 * n, _vadd(_ld(gw, q + 2 * n, count), a2), count)
    _st(gw, q + 3 * n, _vadd(_ld(gw, q + 3 * n, count), a3), count)


@njit(**_JIT)
def _accumulate_sorted(gy, vals, starts, order, n_rows, i, b0, gw):  # pragma: no cover
    """Cubic case of :func:`_accumulate` with the block's samples sorted by first row: the four
    rows of a bucket are accumulated in registers over all its samples and written once (the
    per-sample form is bound by its four read-modify-write row updates per sample)."""
    n_basis = gw.shape[1]
    n_out = gw.shape[2]
    lanes = _width(gw)
    pairs = n_out - n_out % (2 * lanes)
    for row in range(n_rows):
        m0 = starts[row]
        m1 = starts[row + 1]
        if m0 == m1:
            continue
        q = (i * n_basis + row) * n_out
        for o in range(0, pairs, 2 * lanes):
            _bucket_pair(gy, vals, order, m0, m1, b0, q, o, gw)
        for o in range(pairs, n_out, lanes):
            _bucket_one(gy, vals, order, m0, m1, b0, q, o, gw, min(lanes, n_out - o))


@njit(inline="always")
def _dot4g(weight, scale, g, p, sc, o, acc, d0, d1, d2, d3, count):  # pragma: no cover
    """acc + g * scale[sc + o:] * (sum_r d_r * weight rows at p + o), g: grad_y's lanes."""
    t = _comb4(weight, p + o, weight.shape[2], d0, d1, d2, d3, count)
    return _vfma(_vmul(g, _ld(scale, sc + o, count)), t, acc)


@njit(inline="always")
def _dotkg(weight, scale, g, dvals, s, k, p, sc, o, acc, count):  # pragma: no cover
    t = _combk(weight, p + o, weight.shape[2], dvals, s, k, count)
    return _vfma(_vmul(g, _ld(scale, sc + o, count)), t, acc)


@njit(**_JIT)
def _pair_products(
    gy, weight, scale, basis, ordered, accumulate, i, b0, b1, k, u, gx
):  # pragma: no cover - compiled
    """The backward products of input i over samples b0..b1-1, one pass per (sample, input), from
    the block's ``basis = (rows, vals, dvals, order)`` (first rows, basis values, their
    derivatives, the samples sorted by first row):

    - ``gx[b, i] = sum_o gy[b, o] scale[i, o] sum_r dvals[r, s] weight[i, rows[s] + r, o]`` (one
      vector dot product per sample; the input-gradient kernel's, and the fused pass's, so the two
      give bitwise the same gx);
    - with ``accumulate``, also ``u[0, rows[s] + r] += vals[r, s] * gy[b]`` (as
      :func:`_accumulate` into a one-input table): large grids, when the coefficient gradient is
      wanted too;

    for b = b0 + s, s in the block's ``order`` (sorted by first row) when ``ordered``, else in
    order. Both flags are compile-time constants (``literally``: one compiled loop per value; a
    run-time choice of the order cost 1.03-1.05x at G=100). Without ``accumulate``, ``vals`` and
    ``u`` are not read.

    Fused: the input gradient's coefficient loads and multiply-adds overlap the gradient's row
    updates, and each vector of grad_y is loaded once for both (a second load measured 1.035x the
    time: LLVM cannot merge loads across the updates' stores). Measured 1 thread, 64x64 layer,
    batch 1024, both kernels against this pass (unordered): 0.68x the time at G=40, 0.72x at
    G=100, 0.80x at G=200, 0.93x at G=500.

    Order: sorted by first row, consecutive samples share coefficient rows, so the input
    gradient's loads hit the level-1 cache. Measured against the unordered fused pass (1 thread,
    64x64, batch 1024, warm and flushed caches): 0.78-0.93x at G=500, 0.93-0.99x at G=300,
    0.91-1.01x at G=200, but 1.06-1.09x at G=100 (a 26 KB table, in the level-2 cache anyway); so
    only tables over :data:`_SORTED_FUSED_BYTES` are ordered there. The coefficient gradient alone
    stays unordered: sorted, its row updates wait on each other's stores (1.1-1.27x), also with two
    sorted halves interleaved (1.13-1.19x). Interleaving the halves here, or blocks of two samples
    per row instead of 512 samples, did not help either (1.02-1.03x; 0.89-0.93x at G=500 but 1.08x
    at G=300 and no change in a whole step)."""
    rows, vals, dvals, order = basis
    n_basis = weight.shape[1]
    n_out = weight.shape[2]
    lanes = _width(weight)
    full = n_out - n_out % lanes
    rest = n_out - full
    sc = i * n_out
    zero = _vsplat(weight, 0.0)
    literally(ordered)
    literally(accumulate)
    for m in range(b1 - b0):
        s = order[m] if ordered else m
        b = b0 + s
        pu = rows[s] * n_out
        pw = (i * n_basis + rows[s]) * n_out
        go = b * n_out
        acc = zero
        if k == 3:
            v0 = _vsplat(weight, vals[0, s]) if accumulate else zero
            v1 = _vsplat(weight, vals[1, s]) if accumulate else zero
            v2 = _vsplat(weight, vals[2, s]) if accumulate else zero
            v3 = _vsplat(weight, vals[3, s]) if accumulate else zero
            d0 = _vsplat(weight, dvals[0, s])
            d1 = _vsplat(weight, dvals[1, s])
            d2 = _vsplat(weight, dvals[2, s])
            d3 = _vsplat(weight, dvals[3, s])
            for o in range(0, full, lanes):  # grad_y's lanes loaded once for both products
                g = _ld(gy, go + o, lanes)
                if accumulate:
                    _update4(g, pu + o, u, v0, v1, v2, v3, lanes)
                acc = _dot4g(weight, scale, g, pw, sc, o, acc, d0, d1, d2, d3, lanes)
            if rest:
                g = _ld(gy, go + full, rest)
                if accumulate:
                    _update4(g, pu + full, u, v0, v1, v2, v3, rest)
                acc = _dot4g(weight, scale, g, pw, sc, full, acc, d0, d1, d2, d3, rest)
        else:
            for o in range(0, full, lanes):
                g = _ld(gy, go + o, lanes)
                if accumulate:
                    _updatek(g, vals, s, k, pu + o, u, lanes)
                acc = _dotkg(weight, scale, g, dvals, s, k, pw, sc, o, acc, lanes)
            if rest:
                g = _ld(gy, go + full, rest)
                if accumulate:
                    _updatek(g, vals, s, k, pu + full, u, rest)
                acc = _dotkg(weight, scale, g, dvals, s, k, pw, sc, full, acc, rest)
        gx[b, i] = _vsum(acc)


@njit(inline="always")
def _scale_pass(u_table, uo, weight, scale, i, o, gs, gw, count):  # pragma: no cover - compiled
    """Columns o..o+count-1 of input i, from the unscaled gradient U (G+k, out) at flat offset uo
    of u_table (gw itself when uo = i * (G+k) * out: each U entry is read before it is written):
    ``gs = sum_g U * weight`` and ``gw = U * scale`` (gw written once, never read)."""
    n_basis = gw.shape[1]
    n_out = gw.shape[2]
    sc = i * n_out
    f = _ld(scale, sc + o, count)
    acc = _vsplat(gw, 0.0)
    for g in range(n_basis):
        q = (i * n_basis + g) * n_out + o
        u = _ld(u_table, uo + g * n_out + o, count)
        acc = _vfma(u, _ld(weight, q, count), acc)
        _st(gw, q, _vmul(u, f), count)
    _st(gs, sc + o, acc, count)


@njit(**_JIT)
def _scale_pass_rows(u_table, weight, scale, i, gsum, gs, gw):  # pragma: no cover - compiled
    """Input i, from the unscaled gradient U (G+k, out): ``gs[i] = sum_g U[g] * weight[i, g]`` and
    ``gw[i] = U * scale[i]``, row after row (gw written once, in memory order, never read); U is
    left zeroed for the next input (on the streamed path each vector is cleared right after it is
    read, while its line is in the level-1 cache: measured 0.96x the kernel's time of a separate
    clearing pass at G=500, 64x64, 1 thread).

    When gw's rows are whole aligned vectors, it is written with streaming stores: a plain store
    first reads the line from memory (gw is too large to stay in cache between steps), so the
    8 MB gradient of a 64x64 layer at G=500 cost 16 MB of memory traffic instead of 8."""
    n_basis = gw.shape[1]
    n_out = gw.shape[2]
    lanes = _width(gw)
    sc = i * n_out
    zero = _vsplat(gw, 0.0)
    for o in range(0, n_out, lanes):
        _st(gsum, o, zero, min(lanes, n_out - o))
    # Two copies of the row loop: one loop choosing the store per vector (stream or masked) ran
    # the streamed pass ~10x slower (4.6 against 0.41 ms per 64x64 layer at G=500, 1 thread).
    if n_out % lanes == 0 and _aligned(gw):  # every row's vectors 32-byte aligned: streamed
        for g in range(n_basis):
            q = (i * n_basis + g) * n_out
            for o in range(0, n_out, lanes):
                u = _vload(u_table, g * n_out + o)
                _vstore(u_table, g * n_out + o, zero)
                _vstore(gsum, o, _vfma(u, _vload(weight, q + o), _vload(gsum, o)))
                _vstore_stream(gw, q + o, _vmul(u, _vload(scale, sc + o)))
        _store_fence()
    else:
        for g in range(n_basis):
            q = (i * n_basis + g) * n_out
            for o in range(0, n_out, lanes):
                count = min(lanes, n_out - o)
                u = _ld(u_table, g * n_out + o, count)
                _st(gsum, o, _vfma(u, _ld(weight, q + o, count), _ld(gsum, o, count)), count)
                _st(gw, q + o, _vmul(u, _ld(scale, sc + o, count)), count)
        slab = n_basis * n_out  # cleared in whole vectors (masked stores are slow on AMD cores)
        for q in range(0, slab, lanes):
            _st(u_table, q, zero, min(lanes, slab - q))
    for o in range(0, n_out, lanes):
        count = min(lanes, n_out - o)
        _st(gs, sc + o, _ld(gsum, o, count), count)


@njit(**_JIT)
def _grad_weight(
    x, t0, h, knots, gy, weight, scale, gs, gx, k, uniform, i_lo, i_hi, gw
):  # pragma: no cover
    """Inputs i_lo..i_hi-1 of the coefficient gradient gw (in, G+k, out) and of the scale gradient
    gs (in, out); neither needs to be zeroed.

    Accumulate the unscaled gradient ``U[i, g, o] = sum_b B_g(x[b, i]) gy[b, o]``, then one pass
    per input gives ``gs[i, o] = sum_g U[i, g, o] weight[i, g, o]`` and
    ``gw[i, g, o] = U[i, g, o] scale[i, o]``.

    - Small grids: U is accumulated in gw itself, for a group of ``_GROUP`` inputs at a time,
      block of samples by block, every input of the group per block: the block's rows of grad_y
      (128 KiB at out=64) stay in cache for the whole group, and so do the group's U tables (streaming the
      whole of grad_y once per input, 256 KiB for case A, ran ~2x slower per (sample, input)
      than for case B's 128 KiB). The scale pass then works in place.
    - Large grids: input by input, U in a scratch table reused for every input (it stays in
      cache), and the pass writes the parameter-sized gw once, row by row, in memory order: that
      pass is the part of the cost that grows with G. When gx has the batch's rows (the input
      gradient is wanted too), columns i_lo..i_hi-1 of gx are computed in the same pass over the
      samples (:func:`_pair_products`); otherwise gx is not touched.
    """
    batch = x.shape[0]
    n_basis = gw.shape[1]
    n_out = gw.shape[2]
    lanes = _width(gw)
    slab = n_basis * n_out
    big = _large_grid(gw)
    block = _block_size(n_out, gw.itemsize, batch, _GW_BYTES if big else _GW_BYTES_SMALL_GRID)
    rows = np.empty(block, dtype=np.int32)
    uu = np.empty(block, dtype=gw.dtype)
    vals = np.empty((k + 1, block), dtype=gw.dtype)
    fused = big and gx.shape[0] == batch  # the input gradient in the same pass (large grids)
    ordered = fused and slab * gw.itemsize > _SORTED_FUSED_BYTES  # samples by first row
    dvals = np.empty((k + 1, block if fused else 0), dtype=gw.dtype)
    xb = np.empty((_GROUP, block), dtype=gw.dtype)  # a group of inputs over the block, transposed
    n_rows = n_basis - k  # possible first rows of a sample's k+1 coefficient rows
    starts = np.empty(n_rows + 1, dtype=np.int64)
    counts = np.empty((4, n_rows), dtype=np.int64)
    order = np.empty(block, dtype=np.int32)
    u_table = np.empty((1, n_basis, n_out) if big else (1, 1, 1), dtype=gw.dtype)
    gsum = np.empty(n_out, dtype=gw.dtype)
    basis = (rows, vals, dvals, order)  # a block's basis, as _pair_products takes it
    zero = _vsplat(gw, 0.0)
    full = n_out - n_out % lanes
    if not big:
        for q in range(i_lo * slab, i_hi * slab, lanes):
            _st(gw, q, zero, min(lanes, i_hi * slab - q))
        for g0 in range(i_lo, i_hi, _GROUP):  # groups of inputs: their U tables stay in cache
            for b0 in range(0, batch, block):
                b1 = min(batch, b0 + block)
                for i in range(g0, min(i_hi, g0 + _GROUP)):
                    _accumulate_block(
                        x,
                        t0,
                        h,
                        knots,
                        gy,
                        k,
                        uniform,
                        i,
                        b0,
                        b1,
                        i - g0,
                        _GROUP,
                        xb,
                        rows,
                        uu,
                        vals,
                        starts,
                        counts,
                        order,
                        i,
                        gw,
                    )
        for i in range(i_lo, i_hi):
            for o in range(0, full, lanes):
                _scale_pass(gw, i * slab, weight, scale, i, o, gs, gw, lanes)
            if full < n_out:
                _scale_pass(gw, i * slab, weight, scale, i, full, gs, gw, n_out - full)
        return
    for q in range(0, slab, lanes):  # cleared once: each input's pass leaves it zeroed
        _st(u_table, q, zero, min(lanes, slab - q))
    for i in range(i_lo, i_hi):
        for b0 in range(0, batch, block):
            b1 = min(batch, b0 + block)
            if fused:
                m = b1 - b0
                _transpose(x, b0, b1, i, i + 1, xb)
                _block_basis(
                    xb[0], t0, h, knots, i, m, k, uniform, True, n_basis, rows, uu, vals, dvals
                )
                if ordered:  # constant flags: _pair_products is compiled for each value
                    _large_grid_order(rows, m, starts, order)
                    _pair_products(gy, weight, scale, basis, True, True, i, b0, b1, k, u_table, gx)
                else:
                    _pair_products(gy, weight, scale, basis, False, True, i, b0, b1, k, u_table, gx)
                continue
            _accumulate_block(
                x,
                t0,
                h,
                knots,
                gy,
                k,
                uniform,
                i,
                b0,
                b1,
                0,
                1,
                xb,
                rows,
                uu,
                vals,
                starts,
                counts,
                order,
                0,
                u_table,
            )
        _scale_pass_rows(u_table, weight, scale, i, gsum, gs, gw)


@njit(inline="always")
def _accumulate_block(
    x,
    t0,
    h,
    knots,
    gy,
    k,
    uniform,
    i,
    b0,
    b1,
    slot,
    group,
    xb,
    rows,
    uu,
    vals,
    starts,
    counts,
    order,
    target,
    u,
):  # pragma: no cover - compiled
    """``u[target] += sum_b B(x[b, i]) gy[b]`` over the block b0..b1-1 (u: (n, G+k, out)); inputs
    are transposed into xb in groups of ``group``, when ``slot`` (the input's place in its run of
    inputs) starts a group."""
    m = b1 - b0
    n_basis = u.shape[1]
    n_rows = n_basis - k
    if slot % group == 0:
        _transpose(x, b0, b1, i, min(x.shape[1], i + group), xb)
    _block_basis(
        xb[slot % group], t0, h, knots, i, m, k, uniform, False, n_basis, rows, uu, vals, vals
    )
    if k == 3 and m >= _SORT_MIN * n_rows:
        _sort_rows(rows, m, n_rows, starts, counts, order)
        _accumulate_sorted(gy, vals, starts, order, n_rows, target, b0, u)
    else:
        _accumulate(gy, rows, vals, target, b0, b1, k, u)


@njit(**_JIT)
def _grad_x(x, t0, h, knots, weight, scale, gy, k, uniform, b_lo, b_hi, gx):  # pragma: no cover
    """Rows b_lo..b_hi-1 of gx (batch, in) = input gradient (every entry written: no zeroing).

    ``gx[b, i] = sum_o gy[b, o] scale[i, o] sum_r dvals[r] weight[i, rows + r, o]``: blocks of
    samples (their rows of gy stay in cache), input by input, one vector dot product per pair.
    """
    n_in = x.shape[1]
    n_basis = weight.shape[1]
    n_out = weight.shape[2]
    budget = _rows_budget(weight)
    block = _block_size(n_out, weight.itemsize, b_hi - b_lo, budget)
    rows = np.empty(block, dtype=np.int32)
    uu = np.empty(block, dtype=weight.dtype)
    vals = np.empty((k + 1, block), dtype=weight.dtype)
    dvals = np.empty((k + 1, block), dtype=weight.dtype)
    xb = np.empty((n_in, block), dtype=weight.dtype)
    big = _large_grid(weight)
    starts = np.empty(n_basis - k + 1, dtype=np.int64)
    order = np.empty(block, dtype=np.int32)  # the block's samples sorted by first row, when big
    no_table = np.empty((1, 1, 1), dtype=weight.dtype)  # _pair_products accumulates nothing here
    basis = (rows, vals, dvals, order)
    for b0 in range(b_lo, b_hi, block):
        b1 = min(b_hi, b0 + block)
        _transpose(x, b0, b1, 0, n_in, xb)
        for i in range(n_in):
            _block_basis(
                xb[i], t0, h, knots, i, b1 - b0, k, uniform, True, n_basis, rows, uu, vals, dvals
            )
            if big:  # constant flags: _pair_products is compiled for each value
                _large_grid_order(rows, b1 - b0, starts, order)
                _pair_products(gy, weight, scale, basis, True, False, i, b0, b1, k, no_table, gx)
            else:
                _pair_products(gy, weight, scale, basis, False, False, i, b0, b1, k, no_table, gx)


# ---------------------------------------------------------------------------------------- driver
_POOL: ThreadPoolExecutor | None = None
_POOL_SIZE = 0
_POOL_LOCK = threading.Lock()


def _forget_pool_after_fork() -> None:
    # A forked child (process pools, data loaders) inherits the pool object but not its threads:
    # submitting to it would hang. Start afresh instead.
    global _POOL, _POOL_SIZE, _POOL_LOCK
    _POOL, _POOL_SIZE, _POOL_LOCK = None, 0, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_after_fork)


def _n_threads() -> int:
    # One knob for the user: the kernels use as many threads as torch is allowed to.
    return max(1, torch.get_num_threads())


def _parallel(kernel, args: tuple, n: int, n_threads: int) -> None:
    """Run ``kernel(*args, lo, hi, out)`` over contiguous shares of range(n), one per thread.

    The kernels release the GIL, so a plain thread pool runs them in parallel; each share writes
    its own part of the output (no write conflicts). The calling thread runs the first share.
    """
    global _POOL, _POOL_SIZE
    shares = min(n_threads, n)
    bounds = [n * t // shares for t in range(shares + 1)]
    *inputs, out = args
    if shares <= 1:
        kernel(*inputs, 0, n, out)
        return
    with _POOL_LOCK:
        if _POOL is None or _POOL_SIZE < shares - 1:
            if _POOL is not None:
                _POOL.shutdown(wait=False)
            _POOL = ThreadPoolExecutor(max_workers=shares - 1, thread_name_prefix="kanlab-cpu")
            _POOL_SIZE = shares - 1
        pool = _POOL
    futures = [
        pool.submit(kernel, *inputs, bounds[t], bounds[t + 1], out) for t in range(1, shares)
    ]
    kernel(*inputs, bounds[0], bounds[1], out)
    for f in futures:
        f.result()


# ------------------------------------------------------------------- OpenMP bridge (torch's team)
# torch runs its own ops on an OpenMP team whose idle workers spin for a while after every parallel
# region. Threads of any other pool (ours, or Numba's own threading layers) then fight those
# spinning workers for the cores: measured on 2 cores, a KAN training step took ~13x longer with 2
# threads than with 1. So when torch's OpenMP runtime (libgomp) is found in the process, the kernels
# run *on torch's team*: ``GOMP_parallel`` calls a Numba ``cfunc`` on every team thread, and the
# threads take chunks of the range from a shared atomic counter. Elsewhere (no libgomp: macOS,
# Windows, other builds) the thread pool above is used.

_SLOTS = 48  # int64 parameter block: 8 header slots, then 4 per array (address, shape)


@intrinsic
def _as_pointer(typingctx, address):  # pragma: no cover - compiled
    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(types.voidptr))

    return types.voidptr(types.int64), codegen


@intrinsic
def _fetch_add(typingctx, address, value):  # pragma: no cover - compiled
    def codegen(context, builder, signature, args):
        pointer = builder.inttoptr(args[0], ir.IntType(64).as_pointer())
        return builder.atomic_rmw("add", pointer, args[1], "monotonic")

    return types.int64(types.int64, types.int64), codegen


@njit(cache=_CACHE)
def _arr1(p, m, dt):  # pragma: no cover - compiled
    return carray(_as_pointer(p[8 + 4 * m]), (p[9 + 4 * m],), dt)


@njit(cache=_CACHE)
def _arr2(p, m, dt):  # pragma: no cover - compiled
    return carray(_as_pointer(p[8 + 4 * m]), (p[9 + 4 * m], p[10 + 4 * m]), dt)


@njit(cache=_CACHE)
def _arr3(p, m, dt):  # pragma: no cover - compiled
    q = 8 + 4 * m
    return carray(_as_pointer(p[q]), (p[q + 1], p[q + 2], p[q + 3]), dt)


@njit(cache=_CACHE)
def _run(p, dt):  # pragma: no cover - compiled
    """One team thread: take chunks [lo, lo + chunk) of range(n) until none is left.

    Two chunks per thread balance the load when a thread is held up; but a sample-parallel kernel
    (forward, input gradient) on a large grid reads the whole coefficient table once per chunk,
    so there each thread takes one chunk: measured on case A at G=500 (2 threads), a training
    step 0.80x the time of two chunks per thread (0.75x on case B); no change at G=5."""
    kind = p[6]
    x, t0, h, knots = _arr2(p, 0, dt), _arr1(p, 1, dt), _arr1(p, 2, dt), _arr2(p, 3, dt)
    k, uniform = p[3], p[4] != 0
    n, n_threads = p[1], p[2]
    per_thread = 1 if kind != 1 and _large_grid(_arr3(p, 4, dt)) else 2  # slot 4: the weight
    chunk = max(1, -(-n // (per_thread * n_threads)))
    while True:
        lo = _fetch_add(p[5], chunk)
        if lo >= n:
            return
        hi = min(lo + chunk, n)
        if kind == 0:
            w, sc, y = _arr3(p, 4, dt), _arr2(p, 5, dt), _arr2(p, 6, dt)
            _forward(x, t0, h, knots, w, sc, k, uniform, lo, hi, y)
        elif kind == 1:
            gy, w, sc, gs = _arr2(p, 4, dt), _arr3(p, 5, dt), _arr2(p, 6, dt), _arr2(p, 7, dt)
            gx, gw = _arr2(p, 8, dt), _arr3(p, 9, dt)
            _grad_weight(x, t0, h, knots, gy, w, sc, gs, gx, k, uniform, lo, hi, gw)
        else:
            w, sc, gy, gx = _arr3(p, 4, dt), _arr2(p, 5, dt), _arr2(p, 6, dt), _arr2(p, 7, dt)
            _grad_x(x, t0, h, knots, w, sc, gy, k, uniform, lo, hi, gx)


@cfunc(types.void(types.voidptr), cache=_CACHE)
def _team_entry(data):  # pragma: no cover - compiled
    p = carray(data, (_SLOTS,), np.int64)
    if p[7] == 4:
        _run(p, np.float32)
    else:
        _run(p, np.float64)


def _find_gomp():  # -> ctypes function GOMP_parallel of torch's OpenMP runtime, or None
    if os.environ.get("KANLAB_CPU_THREADS") == "pool":
        return None
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "libgomp" in line and "/" in line}
    except OSError:
        return None
    torch_dir = os.path.dirname(torch.__file__)
    for path in sorted(paths, key=lambda q: not q.startswith(torch_dir)):  # torch's first
        try:
            function = ctypes.CDLL(path).GOMP_parallel
        except (OSError, AttributeError):
            continue
        function.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
        function.restype = None
        return function
    return None


_GOMP = _find_gomp()
_GOMP_PID = os.getpid()  # libgomp's team does not survive fork: children use the thread pool
_KIND = {_forward: 0, _grad_weight: 1, _grad_x: 2}


def _team(kernel, args: tuple, n: int, n_threads: int) -> None:
    """Run ``kernel`` over range(n) on torch's OpenMP team (see the section comment); ``args`` are
    the kernel's arguments with tensors for arrays (addresses from ``data_ptr``: a numpy array's
    ``.ctypes.data`` cost ~1.5 us each, ~20 us per call in all)."""
    tensors = [a for a in args if isinstance(a, Tensor)]
    k, uniform = (a for a in args if not isinstance(a, Tensor))
    out = tensors[-1]
    slots = [0, n, n_threads, k, int(uniform), 0, _KIND[kernel], out.element_size()]
    for a in tensors:  # C-contiguous, of one dtype: the callers below make them so
        shape = a.shape
        slots.append(a.data_ptr())
        slots.extend(shape)
        slots.extend((0,) * (3 - len(shape)))
    slots.extend((0,) * (_SLOTS - len(slots)))
    p = array.array("q", slots)  # int64; a torch or numpy array from a list cost 2-8 us
    address = p.buffer_info()[0]
    p[5] = address  # of the atomic counter p[0]
    _GOMP(_team_entry.address, address, n_threads, 0)


# Per-knots arrays (knots, t0, h), cached by tensor identity and in-place version: the grid of a layer
# changes only when its knots do, and recomputing t0/h with torch ops cost ~40 us per kernel call.
_KNOTS_CACHE: dict[int, tuple] = {}


def _knot_arrays(knots: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """knots (in, G+2k+1), t0 (in,) and h (in,), contiguous (the same float ops as
    :func:`kanlab.splines.sparse_basis`, so intervals agree exactly)."""
    key = id(knots)
    entry = _KNOTS_CACHE.get(key)
    if entry is not None and entry[0]() is knots and entry[1] == knots._version:
        return entry[2]
    n = knots.shape[1]
    kn = knots.detach().contiguous()
    t0 = kn[:, 0].contiguous()
    h = (kn[:, -1] - t0) / (n - 1)  # same formula (same float ops) as splines.sparse_basis
    arrays = (kn, t0, h.contiguous())
    if len(_KNOTS_CACHE) > 512:  # stale entries of freed tensors
        _KNOTS_CACHE.clear()
    try:
        _KNOTS_CACHE[key] = (weakref.ref(knots), knots._version, arrays)
    except TypeError:  # not weak-referenceable: no caching
        pass
    return arrays


def _grid(x: Tensor, knots: Tensor) -> tuple[Tensor, ...]:
    """Tensors shared by the kernels: x (batch, in), t0 (in,), h (in,), knots (in, G+2k+1).

    x is not transposed here: the kernels copy the inputs of a block of samples into a small
    (in, block) scratch (cache-hot) instead of a batch-sized transposed copy per call."""
    kn, t0, h = _knot_arrays(knots)
    return x.detach().contiguous(), t0, h, kn


def _dispatch(kernel, args: tuple, n: int, n_threads: int) -> None:
    """``kernel(*args, 0, n, out)`` in shares of range(n); tensors in ``args`` are the kernel's
    arrays (the last one is the output)."""
    if n_threads > 1 and _GOMP is not None and os.getpid() == _GOMP_PID:
        _team(kernel, args, n, n_threads)
        return
    *inputs, out = (a.numpy() if isinstance(a, Tensor) else a for a in args)
    if n_threads <= 1:
        kernel(*inputs, 0, n, out)
    else:
        _parallel(kernel, (*inputs, out), n, n_threads)


def _scale_array(scale: Tensor | None, weight: Tensor) -> Tensor:
    """The per-edge scale (in, out), contiguous; ones when there is none."""
    if scale is None:
        return torch.ones(weight.shape[0], weight.shape[2], dtype=weight.dtype)
    return scale.detach().contiguous()


def forward(
    x: Tensor,
    knots: Tensor,
    weight: Tensor,
    spline_order: int,
    uniform: bool,
    scale: Tensor | None = None,
) -> Tensor:
    """x (batch, in), knots (in, G+2k+1), weight (in, G+k, out), scale (in, out) or None
    -> y (batch, out) with the coefficient table ``weight * scale[:, None, :]``."""
    xs, t0, h, kn = _grid(x, knots)
    w = weight.detach().contiguous()
    y = torch.empty(x.shape[0], w.shape[2], dtype=x.dtype)  # zeroed by the kernel
    if x.shape[0] > 0:
        args = (xs, t0, h, kn, w, _scale_array(scale, w), spline_order, uniform, y)
        _dispatch(_forward, args, x.shape[0], _n_threads())
    return y


def backward_scaled(
    grad_y: Tensor,
    x: Tensor,
    knots: Tensor,
    weight: Tensor,
    scale: Tensor | None,
    spline_order: int,
    uniform: bool,
    need_x: bool,
    need_weight: bool,
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Gradients w.r.t. x (batch, in), weight (in, G+k, out) and scale (in, out) of
    ``sum(grad_y * y)``; the scale gradient comes with the weight gradient (None without scale)."""
    xs, t0, h, kn = _grid(x, knots)
    gy = grad_y.detach().contiguous()
    w = weight.detach().contiguous()
    sc = _scale_array(scale, w)
    n_threads = _n_threads()
    gx = gw = gs = None
    if need_x:
        gx = torch.empty(x.shape, dtype=x.dtype)  # every entry written by a kernel
    # On large grids the coefficient-gradient kernel also writes gx (one pass over the samples).
    fused = need_x and need_weight and x.shape[0] > 0 and _large_table(w.numpy())
    if need_weight:
        if x.shape[0] > 0:
            gw = _buffers.empty(weight.shape, weight.dtype)  # written whole by the kernel
            gs = torch.empty(weight.shape[0], weight.shape[2], dtype=weight.dtype)
            gx_arg = gx if fused else x.new_empty(0, x.shape[1])
            args = (xs, t0, h, kn, gy, w, sc, gs, gx_arg, spline_order, uniform, gw)
            _dispatch(_grad_weight, args, x.shape[1], n_threads)
        else:
            gw = torch.zeros(weight.shape, dtype=weight.dtype)
            gs = torch.zeros(weight.shape[0], weight.shape[2], dtype=weight.dtype)
    if need_x and not fused and x.shape[0] > 0:
        args = (xs, t0, h, kn, w, sc, gy, spline_order, uniform, gx)
        _dispatch(_grad_x, args, x.shape[0], n_threads)
    return gx, gw, (gs if scale is not None else None)


def backward(
    grad_y: Tensor,
    x: Tensor,
    knots: Tensor,
    weight: Tensor,
    spline_order: int,
    uniform: bool,
    need_x: bool,
    need_weight: bool,
) -> tuple[Tensor | None, Tensor | None]:
    """Gradients w.r.t. x (batch, in) and weight (in, G+k, out) of ``sum(grad_y * y)``."""
    gx, gw, _ = backward_scaled(
        grad_y, x, knots, weight, None, spline_order, uniform, need_x, need_weight
    )
    return gx, gw
