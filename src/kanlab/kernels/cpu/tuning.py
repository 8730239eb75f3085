"""JIT flags, the JIT cache, and the tuning constants and block budgets of the CPU kernels.

Each constant's comment says what it bounds and what the alternatives measured (on the
development machine).

JIT cache: compiled code is cached in this package's ``__pycache__`` when that directory is
writable, or in ``NUMBA_CACHE_DIR`` when that is set; on a read-only install without
``NUMBA_CACHE_DIR`` the cache is off (nothing is written inside site-packages). Numba stamps a
cached function with its own source file only, while a compiled kernel holds the code of every
function it calls, here mostly from sibling modules (the SIMD helpers, the basis): after an edit of
``basis.py`` alone, the cached kernels of ``forward.py`` would still run the old basis. So the
functions of this package are stamped with every module of the package
(:func:`_stamp_whole_package`): any edit recompiles them all, as when the kernels were one file.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence

from numba import njit

_HERE = os.path.dirname(os.path.abspath(__file__))


def _cache_enabled() -> bool:
    if os.environ.get("NUMBA_CACHE_DIR"):
        return True
    here = os.path.dirname(os.path.abspath(__file__))
    cache_dir = os.path.join(here, "__pycache__")
    target = cache_dir if os.path.isdir(cache_dir) else here
    return os.access(target, os.W_OK)


def _package_stamp(also: Sequence[str] = ()) -> bytes:
    """SHA-256 of every module of this package (names and contents), and of the files ``also``."""
    digest = hashlib.sha256()
    paths = [os.path.join(_HERE, n) for n in sorted(os.listdir(_HERE)) if n.endswith(".py")]
    for path in (*paths, *also):
        with open(path, "rb") as f:
            digest.update(os.path.basename(path).encode() + b"\0" + f.read() + b"\0")
    return digest.digest()


def _stamp_whole_package() -> bool:
    """Give the cached functions of this package the stamp (their file, the whole package)."""
    return stamp_with_package(
        lambda py_file: os.path.dirname(os.path.abspath(py_file)) == _HERE, "Cpu"
    )


def stamp_with_package(
    accepts: Callable[[str], bool], tag: str, *, also: Sequence[str] = ()
) -> bool:
    """Cache the functions of the files ``accepts(py_file)`` takes under the stamp (their file,
    the whole package, the files ``also``): for this package, and for a module elsewhere whose
    compiled code embeds this package's kernels (:mod:`kanlab.kernels.cpu_batched`) or another
    module's (``also``: :mod:`kanlab.kernels.cpu_batched_loss` embeds the fused layer's helpers).

    Two cache locators, Numba's own for ``NUMBA_CACHE_DIR`` and for ``__pycache__`` with the
    package's stamp added, are put in front of Numba's list (replacing those of an earlier call
    with the same ``tag``); they decline the functions of any other file. Numba keeps that list
    in its (internal) caching module: when this Numba has no such list, returns False and nothing
    is cached (compiled anew in each process, never stale).
    """
    from numba.core import caching

    impl = getattr(caching, "CacheImpl", None) or getattr(caching, "_CacheImpl", None)
    names = ("UserProvidedCacheLocator", "InTreeCacheLocator")
    bases = [getattr(caching, n, None) or getattr(caching, "_" + n, None) for n in names]
    classes = getattr(impl, "_locator_classes", None)
    if not isinstance(classes, list) or None in bases:
        return False
    stamp = _package_stamp(also)

    def stamped(base):
        class Locator(base):
            kanlab_tag = tag

            def get_source_stamp(self):
                return (super().get_source_stamp(), stamp)

            @classmethod
            def from_function(cls, py_func, py_file):
                if not accepts(py_file):
                    return None
                return super().from_function(py_func, py_file)

        Locator.__name__ = Locator.__qualname__ = f"Kanlab{tag}{base.__name__}"
        return Locator

    classes[:] = [c for c in classes if getattr(c, "kanlab_tag", None) != tag]
    classes[:0] = [stamped(base) for base in bases]
    return True


_CACHE = _cache_enabled() and _stamp_whole_package()
_FASTMATH = {"contract", "reassoc"}
_JIT = {"nogil": True, "cache": _CACHE, "fastmath": _FASTMATH}
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
