"""CPU backend (``numba``): the sparse spline product as three Numba kernels run in parallel threads.

One concept per module; the package itself imports nothing (``buffers`` works without Numba):

- :mod:`~kanlab.kernels.cpu.tuning`: JIT flags, the JIT cache, tuning constants and block budgets;
- :mod:`~kanlab.kernels.cpu.simd`: the 256-bit vector type and LLVM intrinsics;
- :mod:`~kanlab.kernels.cpu.basis`: the sparse basis of a block of samples, sorting by first row;
- :mod:`~kanlab.kernels.cpu.forward`: the forward product;
- :mod:`~kanlab.kernels.cpu.backward`: the coefficient, scale and input gradients;
- :mod:`~kanlab.kernels.cpu.threads`: parallel shares on torch's OpenMP team or a thread pool;
- :mod:`~kanlab.kernels.cpu.api`: the knot cache and the entry points ``forward`` and
  ``backward`` (the backend's kernel module);
- :mod:`~kanlab.kernels.cpu.buffers`: reused memory for the coefficient gradients;
- :mod:`~kanlab.kernels.cpu.symbolic`: fused passes for a layer's symbolic edges.

Why Numba: the work is three short loop nests (forward, coefficient gradient, input gradient) whose
inner loop is a contiguous ``out``-long multiply-add over k+1 coefficient rows picked per
(sample, input). PyTorch has no fused gather-multiply-accumulate for this, so a compiled loop is
needed. Numba is a well-kept, pip-installable LLVM JIT that compiles such loops to machine code,
lets a few lines of LLVM IR express 256-bit vectors directly (the products use them: left to
the auto-vectoriser, the gathered row loops came out scalar), keeps its compiled code in an on-disk
cache, releases the GIL inside
compiled code, and needs no C++ tool chain at install time (unlike a torch C++ extension) and no GPU
(unlike Triton). It stays an optional dependency (``kanlab[jit]``): when it is not installed,
automatic choice takes the reference backend; an installed Numba whose kernels fail to import is
an error, never a silent fallback (:mod:`kanlab.kernels.backends`).

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

The coefficient gradient is returned in memory reused between steps (:mod:`kanlab.kernels.cpu.buffers`):
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

JIT cache: compiled code is cached in this package's ``__pycache__`` when that directory is
writable, or in ``NUMBA_CACHE_DIR`` when that is set; on a read-only install without
``NUMBA_CACHE_DIR`` the cache is off (nothing is written inside site-packages); an edit of any module
of the package recompiles all of them (see :mod:`~kanlab.kernels.cpu.tuning`). Only float32 and
float64 C-contiguous arrays are compiled (two specialisations per kernel, each compiled at its
first call: a float32 run compiles no float64 code); k and the grid kind are run-time arguments.
The OpenMP team's entry point is compiled per dtype at its first use (a process with one torch
thread, like a sweep's worker, never compiles it). :func:`kanlab.kernels.warm_up` compiles ahead
of time (the first run: ~30 s for float32 on two idle cores, split over processes by a sweep).
"""
