"""Explicit 256-bit SIMD for the CPU kernels: a vector type of an array's dtype and the LLVM
intrinsics the products are written with (loads and stores, masked ones for a row's tail,
streaming stores, broadcast, fused multiply-add, lane sums), plus the row combinations built on
them (:func:`_comb4`, :func:`_combk`).
"""

from __future__ import annotations

from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

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
