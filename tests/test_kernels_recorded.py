"""The kernels' outputs on fixed problems are bitwise the ones recorded in ``tests/data/``.

The other kernel tests compare every backend with the reference within a tolerance; this one
guards refactors of the kernels (moving code between modules, changing the dispatch): values and
gradients (x, weight, scale) of the numba and reference backends must not change by a single bit.
The problems cover k = 0, 1, 2, 3, 5, uniform and adapted grids, float32 and float64, a small grid
(G=5), a medium one (G=100) and a large one (G=300: the large-grid paths), 11 and 40 outputs (a
partial vector at the end of a row; at G=300 a table in and over the fused pass's ordering
threshold), 600 samples (several blocks), and 1 and 2 threads; through the public seam
(``kanlab.kernels.spline_product`` and autograd) with the scale, without it, and with only the
input or only the coefficient gradient wanted (different kernels run).

The file holds, per output, its shape, dtype, the first 128 bits of the SHA-256 of its bytes (equal
digests: bitwise equal tensors; the tensors themselves would take ~15 MB) and its last values as
``float.hex`` (to see how far a changed output moved). Inputs come from ``numpy.random.RandomState`` (a stream NumPy
keeps fixed) and from :mod:`kanlab.splines` (knots); their digests are recorded too, so a changed
input is told apart from a changed kernel.

Compiled code and BLAS calls can round differently on another CPU or another torch/numba build, so
the comparison runs only where the recording's fingerprint (host CPU, torch, numba, llvmlite
versions) matches; elsewhere the test skips, saying why (``.ci/check_skips.py`` prints that skip
apart from the others; to compare there, re-record on that machine from a commit whose kernels are
known good). Record with ``python tests/test_kernels_recorded.py`` (writes
``tests/data/kernels_recorded.json``).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
from collections.abc import Iterator

import numpy as np
import pytest
import torch

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "kernels_recorded.json")
K_VALUES = (0, 1, 2, 3, 5)
GRIDS = (5, 100, 300)
OUTS = (11, 40)
DTYPES = {"float32": torch.float32, "float64": torch.float64}
N_IN, BATCH = 3, 600
THREADS = (1, 2)
TAIL = 2  # last values kept as float.hex per output (the first rows are outside the grid: 0)
# The calls made per problem: which tensors require grad (x, weight, scale); scale=None when not
# in the name. numba runs all of them on every thread count; the reference the first two.
VARIANTS = {
    "scaled": (True, True, True),
    "unscaled": (True, True, None),
    "x_only": (True, False, False),
    "weight_only": (False, True, True),
}
REFERENCE_VARIANTS = ("scaled", "unscaled")


def _fingerprint() -> dict[str, str]:
    import llvmlite
    import llvmlite.binding
    import numba

    return {
        "cpu": llvmlite.binding.get_host_cpu_name(),
        "torch": torch.__version__,
        "numba": numba.__version__,
        "llvmlite": llvmlite.__version__,
    }


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().contiguous().numpy().tobytes()).hexdigest()[:32]


def _tail(t: torch.Tensor) -> list[str]:
    return [float(v).hex() for v in t.detach().reshape(-1)[-TAIL:].double().tolist()]


def _record(t: torch.Tensor) -> list:
    """[shape, dtype, digest, last values] of an output."""
    return [list(t.shape), str(t.dtype).removeprefix("torch."), _digest(t), _tail(t)]


def _problems() -> Iterator[tuple[str, dict]]:
    """(key, inputs) of every fixed problem, in a fixed order."""
    from kanlab.splines import knots_from_data, uniform_knots

    seed = 0
    for dtype_name, dtype in DTYPES.items():
        for k in K_VALUES:
            for uniform in (True, False):
                for grid in GRIDS:
                    for n_out in OUTS:
                        seed += 1
                        rs = np.random.RandomState(seed)
                        if uniform:
                            knots = uniform_knots(N_IN, grid, k, (-1.0, 1.0), dtype=dtype)
                        else:
                            data = torch.from_numpy(rs.standard_normal((300, N_IN)) * 0.6)
                            knots = knots_from_data(data.to(dtype), grid, k, 0.02)
                        # Inputs: many outside the grid's core, few outside, spread over it.
                        x = np.stack(
                            [
                                rs.standard_normal(BATCH) * 1.3,
                                rs.standard_normal(BATCH) * 0.4,
                                rs.uniform(-1.1, 1.1, BATCH),
                            ],
                            axis=1,
                        )
                        x = torch.from_numpy(x).to(dtype)
                        x[:4] = torch.tensor([50.0, -50.0, 1e3, -1e3], dtype=dtype).unsqueeze(1)
                        x[4] = knots[:, 0] - 0.01  # just below the first knot
                        x[5] = knots[:, -1]  # on the last knot (outside: half-open intervals)
                        weight = torch.from_numpy(rs.standard_normal((N_IN, grid + k, n_out)))
                        scale = torch.from_numpy(rs.standard_normal((N_IN, n_out)))
                        scale[1, 2] = 0.0  # a masked edge
                        gy = torch.from_numpy(rs.standard_normal((BATCH, n_out)))
                        inputs = {
                            "x": x,
                            "knots": knots.contiguous(),
                            "weight": weight.to(dtype),
                            "scale": scale.to(dtype),
                            "gy": gy.to(dtype),
                            "k": k,
                            "uniform": uniform,
                        }
                        kind = "uniform" if uniform else "adapted"
                        yield f"{dtype_name}/k{k}/{kind}/G{grid}/out{n_out}", inputs


@contextlib.contextmanager
def _setup(backend: str, threads: int):
    from kanlab import kernels

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    kernels.set_backend(backend)
    try:
        yield
    finally:
        kernels.set_backend(None)
        torch.set_num_threads(previous)


def _outputs(p: dict, variant: str) -> dict[str, torch.Tensor]:
    """y and the wanted gradients of ``sum(y * gy)`` through ``kernels.spline_product``."""
    from kanlab import kernels

    need_x, need_w, need_s = VARIANTS[variant]
    x = p["x"].clone().requires_grad_(need_x)
    w = p["weight"].clone().requires_grad_(need_w)
    s = None if need_s is None else p["scale"].clone().requires_grad_(need_s)
    y = kernels.spline_product(x, p["knots"], w, p["k"], uniform=p["uniform"], scale=s)
    names = [n for n, t in (("gx", x), ("gw", w), ("gs", s)) if t is not None and t.requires_grad]
    wrt = [{"gx": x, "gw": w, "gs": s}[n] for n in names]
    grads = torch.autograd.grad(y, wrt, p["gy"], allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, wrt, strict=True)]
    return {"y": y.detach(), **dict(zip(names, grads, strict=True))}  # (k=0: gx unused: zeros)


def _runs() -> Iterator[tuple[str, int, str]]:
    """(backend, threads, variant) of every recorded call."""
    for threads in THREADS:
        for variant in VARIANTS:
            yield "numba", threads, variant
    for variant in REFERENCE_VARIANTS:
        yield "reference", 1, variant


def record() -> None:
    """Compute every problem and write the data file (run on code whose kernels are trusted)."""
    problems = {}
    for key, p in _problems():
        entry = {
            "inputs": {n: _digest(p[n]) for n in ("x", "knots", "weight", "scale", "gy")},
            "outputs": {},
        }
        for backend, threads, variant in _runs():
            with _setup(backend, threads):
                outs = _outputs(p, variant)
            run = f"{backend}/{variant}"
            recorded = entry["outputs"].setdefault(run, {n: _record(t) for n, t in outs.items()})
            for n, t in outs.items():  # every thread count gives bitwise the same outputs
                if recorded[n][2] != _digest(t):
                    raise AssertionError(f"{key} {run} {n}: threads={threads} differs")
        problems[key] = entry
    with open(DATA, "w") as f:  # one problem per line
        f.write(f'{{"fingerprint": {json.dumps(_fingerprint())},\n"problems": {{\n')
        lines = [f"{json.dumps(key)}: {json.dumps(entry)}" for key, entry in problems.items()]
        f.write(",\n".join(lines) + "\n}}\n")
    print(f"wrote {len(problems)} problems to {DATA}")


def _load() -> dict:
    with open(DATA) as f:
        return json.load(f)


def test_kernel_outputs_are_bitwise_the_recorded_ones():
    if importlib.util.find_spec("numba") is None:
        pytest.skip("numba is not installed")
    data = _load()
    here = _fingerprint()
    if data["fingerprint"] != here:
        pytest.skip(f"kernel outputs recorded on {data['fingerprint']}, this is {here}")
    problems = dict(_problems())
    assert sorted(problems) == sorted(data["problems"])
    changed = []
    for key, p in problems.items():
        entry = data["problems"][key]
        for n, want in entry["inputs"].items():
            assert _digest(p[n]) == want, f"{key}: input {n} changed (not a kernel change)"
        for backend, threads, variant in _runs():
            with _setup(backend, threads):
                outs = _outputs(p, variant)
            recorded = entry["outputs"][f"{backend}/{variant}"]
            assert sorted(outs) == sorted(recorded), (key, backend, variant)
            for n, t in outs.items():
                shape, dtype, digest, tail = recorded[n]
                assert [list(t.shape), str(t.dtype)] == [shape, f"torch.{dtype}"], (key, n)
                if _digest(t) != digest:
                    run = f"{key} {backend} threads={threads} {variant} {n}"
                    changed.append(f"{run}: ends {_tail(t)}, recorded {tail}")
    assert not changed, "outputs differ from the recorded ones:\n" + "\n".join(changed[:40])
    # The numba kernels ran (not the reference maths): their float32 sums round differently.
    differ = [
        key
        for key, entry in data["problems"].items()
        if key.startswith("float32")
        and entry["outputs"]["numba/scaled"]["y"][2] != entry["outputs"]["reference/scaled"]["y"][2]
    ]
    assert len(differ) > len(problems) // 4, differ


if __name__ == "__main__":
    record()
