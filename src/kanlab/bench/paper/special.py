"""The special functions of the KAN paper's Table 1 (section 3.2): kanlab's best KAN and MLP per
function beside the published best-KAN and MLP test RMSE (shipped in
``data/kan_paper_special_functions.csv``, a verbatim copy of the transcribed table).

Protocol (reduced at the quick size): KANs of width 5 trained with LBFGS and grid extension, MLPs
of width 5 and 100 with the KAN's step budget, several seeds; the best configuration per family is
the lowest mean test RMSE over seeds, and the verdict is :func:`kanlab.bench.report.seed_verdict`'s
(as ``kanlab compare`` gives it). All runs are trials through
:func:`kanlab.bench.runner.run_trials` (resumable). The input boxes are kanlab's
(:mod:`kanlab.datasets.special`; the paper does not state its own), so the published RMSE is a
reference point, not the same data.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from kanlab.bench.paper.common import (
    PaperTable,
    TableProtocol,
    best_per_family,
    check_sizes,
    fmt,
    machine,
    run_paper_trials,
    write_paper_report,
)
from kanlab.bench.store import ResultStore

__all__ = ["published", "run_special", "task_name"]

DATA = Path(__file__).with_name("data") / "kan_paper_special_functions.csv"
QUICK_FUNCTIONS = ("special/ellipj", "special/jv", "special/sph_harm_m0_n1")


def task_name(scipy_call: str) -> str:
    """The registry name of a Table 1 row from its scipy call: ``lpmv(1,x,y)`` ->
    ``special/lpmv_m1``, ``sph_harm(1,2,x,y)`` -> ``special/sph_harm_m1_n2``."""
    name, args = re.fullmatch(r"(\w+)\((.*)\)", scipy_call.replace(" ", "")).groups()
    nums = [a for a in args.split(",") if a.isdigit()]
    if name == "lpmv":
        return f"special/lpmv_m{nums[0]}"
    if name == "sph_harm":
        return f"special/sph_harm_m{nums[0]}_n{nums[1]}"
    return f"special/{name}"


# the file's calls and shapes hold unquoted commas: a row is read by its pattern, not split on ","
_ROW = re.compile(
    r"(?P<name>[^,]+),(?P<scipy_call>\w+\([^)]*\)),(?P<minimal_kan_shape>\[[^\]]*\]),"
    r"(?P<minimal_kan_test_rmse>[^,]+),(?P<best_kan_shape>\[[^\]]*\]),"
    r"(?P<best_kan_test_rmse>[^,]+),(?P<mlp_test_rmse>[^,]+)"
)


def published() -> dict[str, dict[str, str]]:
    """Registry name -> the shipped row of Table 1 (strings, as transcribed)."""
    out = {}
    for line in DATA.read_text(encoding="utf-8").splitlines()[1:]:
        match = _ROW.fullmatch(line.strip())
        if match is None:
            raise ValueError(f"{DATA.name}: unreadable row {line!r}")
        out[task_name(match["scipy_call"])] = match.groupdict()
    return out


def run_special(
    *,
    quick: bool = True,
    store: ResultStore | str | Path | None = None,
    out: Path = Path("kanlab-runs/paper/special"),
    seeds: int = 2,
    steps: int | None = None,
    functions: tuple[str, ...] | None = None,
    executor: str = "serial",
    progress: bool = False,
) -> PaperTable:
    """Run Table 1 (quick: 3 functions, KAN [2,5,1], G = 3, 5, 10, 20 LBFGS steps per grid, MLPs
    [2,5,5,1] and [2,100,100,1]; full: all 15, depths 2-4, G up to 200, 200 steps per grid); write
    ``out/report.md``/``.html``; -> its :class:`PaperTable`."""
    from kanlab.bench.report import aggregate, seed_verdict
    from kanlab.bench.spec import DataSpec
    from kanlab.bench.tasks import get_task

    steps = check_sizes(seeds, steps, 20 if quick else 200)
    paper = published()
    names = functions or (QUICK_FUNCTIONS if quick else tuple(paper))
    unknown = [n for n in names if n not in paper]
    if unknown:
        raise ValueError(f"not a Table 1 function: {unknown}; valid: {sorted(paper)}")
    protocol = TableProtocol.of(quick=quick, steps=steps)
    data = DataSpec(n_train=1000, n_test=1000, seed=0)
    trials = []
    for name in names:
        trials += protocol.trials(get_task(name), 2, seeds, data)
    start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary, rows = run_paper_trials(trials, store, out, executor=executor, progress=progress)
    stats = aggregate(rows)
    table_rows, wins = [], 0
    for name in names:
        k, m = best_per_family(stats.get(name, []))
        verdict = seed_verdict(k.errors if k else (), m.errors if m else ())
        ref = paper[name]
        beat = k is not None and k.err_mean <= float(ref["best_kan_test_rmse"])
        wins += beat
        table_rows.append((
            name, k.label if k else "-", fmt(k.err_mean if k else None),
            ref["best_kan_test_rmse"], "yes" if beat else "no", m.label if m else "-",
            fmt(m.err_mean if m else None), ref["mlp_test_rmse"], verdict.text(),
        ))  # fmt: skip
    notes = (
        f"kanlab's best KAN at or below the paper's best KAN on {wins} of {len(names)} "
        f"function(s) (issue goal: >= 12 of 15 at full size)",
        f"trials: {summary.total} ({summary.skipped} found finished in the store)",
    )
    table = PaperTable(
        experiment="special",
        title="KAN paper Table 1: special functions",
        headers=("function", "kanlab best KAN", "test RMSE", "paper best KAN", "KAN <= paper",
                 "kanlab best MLP", "test RMSE", "paper MLP", "verdict (KAN vs MLP, seeds)"),
        rows=tuple(table_rows),
        settings={"quick": quick, "grids": list(protocol.grids), "steps_per_grid": steps, "seeds": seeds,
                  "optimizer": "lbfgs", "n_train": 1000},
        wall_time=time.perf_counter() - start, machine=machine(), notes=notes,
        units_run=summary.total - summary.skipped, units_reused=summary.skipped,
    )  # fmt: skip
    return write_paper_report(table, out, intro=__doc__.split("\n\n")[0])
