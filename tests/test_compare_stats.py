"""Issue 18, findings 5, 6 and 10: seed statistics in the compare summary, a winner only beyond seed
noise, failed and diverged seeds counted (never silently dropped), failure reasons printed."""

from __future__ import annotations

import math
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from kanlab.bench import report
from kanlab.bench.report import aggregate, comparisons, summary_table, write_report
from kanlab.bench.spec import Sweep, load_sweep, parse_sweep
from kanlab.bench.store import ResultStore

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _row(family, label, seed, err, *, status="ok", error=None, extra=None, task="paper/xy",
         group="kan[2,2,1] G=5>10>20", params=150):  # fmt: skip
    """A store row as ResultStore.rows() returns it (only the fields the report reads)."""
    return {
        "task": task, "family": family, "label": label, "group_id": group, "seed": seed,
        "metric": "rmse", "params": params, "flops_dense": params * 10,
        "test_error": err if status == "ok" else None, "test_metric": err,
        "time_per_step": 0.01, "status": status, "error": error, "extra": extra,
        "config": {"task": task, "label": label, "seed": seed},
    }  # fmt: skip


KAN, MLP = "kan[2,2,1] G=5>10>20", "mlp[2,10,10,1] silu"


def _pair(kan_errors, mlp_errors, **kw):
    return [_row("kan", KAN, s, e, **kw) for s, e in enumerate(kan_errors)] + [
        _row("mlp", MLP, s, e, **kw) for s, e in enumerate(mlp_errors)
    ]


def _table_row(table: str, task: str = "paper/xy") -> list[str]:
    line = next(x for x in table.splitlines() if x.startswith(f"| {task} |"))
    return [c.strip() for c in line.strip("|").split(" | ")]


# ------------------------------------------------------------------------- finding 5: seed noise
def test_paper_xy_seed_spread_is_a_tie():
    """The README's paper/xy row: KAN seeds 1.9e-5 and 9.5e-4, MLP 4.1e-4 and 5.9e-4. The old
    summary said "KAN (1.03x)" (ratio of arithmetic means) although the KAN's seeds span 50x."""
    rows = _pair([1.9e-5, 9.5e-4], [4.1e-4, 5.9e-4])
    (comp,) = comparisons(aggregate(rows))
    assert comp.winner == "tie"
    cells = _table_row(summary_table(rows))
    # the ratio of geometric means with an interval that straddles 1
    m = re.fullmatch(r"tie \(KAN ([\d.]+)x \[([\d.e+-]+)x-([\d.e+-]+)x\]\)", cells[-1])
    assert m, cells[-1]
    ratio, lo, hi = map(float, m.groups())
    assert ratio == pytest.approx(10 ** statistics.fmean([math.log10(4.1e-4), math.log10(5.9e-4)])
                                  / 10 ** statistics.fmean([math.log10(1.9e-5), math.log10(9.5e-4)]),
                                  rel=0.01)  # fmt: skip
    assert lo < 1 < hi


@pytest.mark.parametrize(
    ("kan", "mlp", "winner"),
    [([1.0e-4, 1.2e-4, 1.1e-4], [1.0e-2, 1.1e-2, 0.9e-2], "KAN"),
     ([3.74e-5, 3.76e-5], [4.6e-4, 4.9e-4], "KAN"),  # 2 tight seeds a side are enough
     ([0.20, 0.25, 0.22], [0.010, 0.012, 0.011], "MLP")],
)  # fmt: skip
def test_clearly_separated_seeds_name_the_winner(kan, mlp, winner):
    rows = _pair(kan, mlp)
    (comp,) = comparisons(aggregate(rows))
    assert comp.winner == winner
    cell = _table_row(summary_table(rows))[-1]
    m = re.fullmatch(rf"{winner} ([\d.]+)x \[([\d.]+)x-([\d.]+)x\]", cell)
    assert m, cell
    ratio, lo, hi = map(float, m.groups())
    assert 1 < lo <= ratio <= hi


def test_verdict_is_deterministic_and_symmetric():
    a, b = [1.9e-5, 9.5e-4, 2e-4], [4.1e-4, 5.9e-4, 5e-4]
    v1, v2 = report.seed_verdict(a, b), report.seed_verdict(a, b)
    assert v1 == v2
    w = report.seed_verdict(b, a)  # the sides swapped: the same ratio, the other family
    assert (w.winner, w.better) == (v1.winner, "MLP" if v1.better == "KAN" else "KAN")
    assert (w.ratio, w.low, w.high) == pytest.approx((v1.ratio, v1.low, v1.high))


def test_one_seed_is_undecided_and_never_reads_plus_minus_zero():
    """One of two KAN seeds diverged: the old summary read "0.172 ± 0" and named a winner."""
    rows = [_row("kan", KAN, 0, 0.172),
            _row("kan", KAN, 1, None, status="diverged", error="non-finite test metric"),
            _row("mlp", MLP, 0, 0.3), _row("mlp", MLP, 1, 0.35)]  # fmt: skip
    (comp,) = comparisons(aggregate(rows))
    assert comp.winner == "undecided"
    cells = _table_row(summary_table(rows))
    assert cells[4] == "0.172 (n=1 of 2; 1 diverged)"
    assert cells[-1] == "undecided (n=1)"
    assert "± 0 " not in summary_table(rows) and "± 0 |" not in summary_table(rows)


# ---------------------------------------------------------------- finding 6: failed seeds counted
def test_stats_over_seeds_count_what_did_not_finish():
    rows = [_row("kan", KAN, s, e) for s, e in enumerate([0.1, 0.2, 0.6])]
    rows += [_row("kan", KAN, 3, None, status="failed", error="ValueError: boom"),
             _row("kan", KAN, 4, None, status="diverged", error="nan")]  # fmt: skip
    (stats,) = aggregate(rows)["paper/xy"]
    assert (stats.n_trials, stats.n_ok, stats.n_failed, stats.n_diverged) == (5, 3, 1, 1)
    assert stats.err_mean == pytest.approx(0.3)
    assert stats.err_median == pytest.approx(0.2)
    assert stats.err_std == pytest.approx(statistics.stdev([0.1, 0.2, 0.6]))
    assert stats.errors == (0.1, 0.2, 0.6) and not stats.complete


def test_a_config_with_a_diverged_seed_is_not_best():
    """KAN A: one seed at 1e-6, the other diverged; KAN B: both seeds at ~1e-3. The old code picked A
    (its mean over the one seed that converged); A may be best only when no KAN finished all seeds."""
    a, b = "kan[2,2,1] G=20", "kan[2,2,1] G=5"
    rows = [_row("kan", a, 0, 1e-6, group=a),
            _row("kan", a, 1, None, status="diverged", error="nan", group=a),
            _row("kan", b, 0, 1.0e-3, group=b), _row("kan", b, 1, 1.1e-3, group=b),
            _row("mlp", MLP, 0, 5e-3, group=b), _row("mlp", MLP, 1, 6e-3, group=b)]  # fmt: skip
    (comp,) = comparisons(aggregate(rows))
    assert comp.kan.label == b and comp.kan.complete
    cells = _table_row(summary_table(rows))
    assert cells[2] == b and cells[4].endswith("(n=2)")

    # no KAN finished all its seeds: the best partial one is used and the table says so
    partial = [r for r in rows if r["label"] != b or r["seed"] == 0]
    partial.append(_row("kan", b, 1, None, status="failed", error="ValueError: x", group=b))
    (comp,) = comparisons(aggregate(partial))
    assert comp.kan.label == a
    cells = _table_row(summary_table(partial))
    assert cells[4] == "1e-06 (n=1 of 2; 1 diverged)"
    assert cells[-1] == "undecided (n=1)"


def test_nrmse_shown_when_recorded_and_absent_from_old_stores():
    rows = [_row("kan", KAN, s, e, extra={"test_nrmse": e / 2}) for s, e in enumerate([0.1, 0.3])]
    rows += [_row("mlp", MLP, s, e, extra={"test_nrmse": e / 2}) for s, e in enumerate([0.2, 0.4])]
    table = summary_table(rows)
    assert "| nRMSE (KAN / MLP) |" in table.splitlines()[0]
    assert "| 0.1 / 0.15 |" in table
    old = summary_table(_pair([0.1, 0.3], [0.2, 0.4]))  # rows without the key
    assert "nRMSE" not in old and "| paper/xy |" in old


# ------------------------------------------------------------------- finding 10: failure reasons
TRACEBACK = """Traceback (most recent call last):
  File "/x/kanlab/train/loop.py", line 12, in fit
    check(data)
    ~~~~~^^^^^^
  File "/x/kanlab/train/loop.py", line 40, in check
    raise ValueError(f"need at least 2 rows, got {n}")
ValueError: need at least 2 rows, got 1
"""


def test_failure_reasons_one_line_per_distinct_reason():
    rows = [_row("kan", KAN, s, None, status="failed", error=TRACEBACK) for s in range(3)]
    rows += [
        _row("mlp", MLP, 0, None, status="failed", error="TypeError: bad config"),
        _row("mlp", MLP, 1, None, status="diverged", error=(
            "non-finite training loss (nan) after step 17; the model was restored")),
        _row("mlp", MLP, 2, None, status="diverged", error=(
            "non-finite training loss (nan) after step 4; the model was restored")),
        _row("mlp", MLP, 3, None, status="failed", error=None),
        _row("mlp", MLP, 4, 0.1),
    ]  # fmt: skip
    assert report.failure_reasons(rows) == [
        ("ValueError: need at least 2 rows, got 1", 3),
        ("diverged: non-finite training loss (nan) after step N; the model was restored", 2),
        ("TypeError: bad config", 1),
        ("no error message recorded", 1),
    ]
    text = report.failure_summary(rows)
    assert text.splitlines()[0] == "7 of 8 trials did not finish (5 failed, 2 diverged); reasons:"
    assert "  ValueError: need at least 2 rows, got 1 (3)" in text.splitlines()
    assert report.failure_summary(_pair([0.1], [0.2])) == ""


def test_report_files_list_failure_reasons(tmp_path):
    with ResultStore(tmp_path / "results.sqlite") as store:
        for i, row in enumerate(_pair([0.1, 0.3], [0.2, 0.4])):
            store.put(f"k{i}", row)
        store.put("bad", _row("kan", KAN, 2, None, status="failed", error=TRACEBACK))
        files = write_report(store)
    md = files.markdown.read_text()
    assert "## Trials that failed or diverged (1 of 5)" in md
    assert "- `ValueError: need at least 2 rows, got 1` (1)" in md
    assert "Welch" in md and "tie" in md  # the rule is stated in the intro
    assert "<code>ValueError: need at least 2 rows, got 1</code> (1)" in files.html.read_text()


# ------------------------------------------------------------------------------------ seeds
def test_at_least_three_seeds_by_default():
    assert len(Sweep().seeds) >= 3
    assert len(parse_sweep({}).seeds) >= 3
    assert len(load_sweep("quick").seeds) >= 3 and len(load_sweep("paper").seeds) >= 3


# ------------------------------------------------------------------------------------ the CLI
TINY = """
name = "tiny"
tasks = ["paper/xy"]
seeds = 2
[data]
n_train = 32
n_test = 32
[train]
steps = 2
[kan]
hidden = [[2]]
grids = [[3]]
[mlp]
depths = [1]
"""

# The real CLI with kanlab.train.fit replaced (the runner looks it up at call time; --executor serial
# runs the trials in this process) so trials fail the same way on any machine, without training;
# fit_batch too (a batch it refuses with a ValueError trains one by one through fit).
FAILING_FIT = """
import sys
import kanlab.train
real_fit = kanlab.train.fit
def fit(model, data, config=None, **kwargs):
    if sys.argv[1] == "all" or type(model).__name__ == "KAN":
        raise ValueError("need at least 2 rows, got 1")
    return real_fit(model, data, config, **kwargs)
kanlab.train.fit = fit
import kanlab.train.batch_loop as batch_loop
real_fit_batch = batch_loop.fit_batch
def fit_batch(batch, data, config=None, **kwargs):  # a batch refused: its trials go through fit
    if sys.argv[1] == "all" or type(batch).__name__ == "KANBatch":
        raise ValueError("need at least 2 rows, got 1")
    return real_fit_batch(batch, data, config, **kwargs)
batch_loop.fit_batch = fit_batch
from kanlab.cli import main
main(sys.argv[2:])
"""


def _cli(tmp_path, *argv):
    env = {**os.environ, "PYTHONPATH": SRC}
    cmd = [sys.executable, "-c", FAILING_FIT, *argv]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env,
                          cwd=tmp_path)  # fmt: skip


@pytest.mark.slow
def test_cli_prints_failure_reasons_and_fails_when_nothing_finished(tmp_path):
    sweep = tmp_path / "tiny.toml"
    sweep.write_text(TINY)
    args = ["compare", "--suite", str(sweep), "--executor", "serial", "--no-progress"]

    # the KAN trials fail, the MLPs finish: the reason is printed after the table, exit 0
    done = _cli(tmp_path, "kan", *args, "--out", str(tmp_path / "some"))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "2 of 4 trials did not finish (2 failed, 0 diverged); reasons:" in lines
    assert "  ValueError: need at least 2 rows, got 1 (2)" in lines
    again = _cli(tmp_path, "kan", "report", str(tmp_path / "some" / "tiny"))
    assert again.returncode == 0 and again.stdout == done.stdout

    # every trial fails: the reasons, then a one-line error and exit status 1
    failed = _cli(tmp_path, "all", *args, "--out", str(tmp_path / "none"))
    assert failed.returncode == 1, failed.stderr
    assert "  ValueError: need at least 2 rows, got 1 (4)" in failed.stdout.splitlines()
    errors = [x for x in failed.stderr.splitlines() if x.startswith("Error")]
    assert errors == ["Error: all 4 trials failed or diverged (reasons above); nothing to compare"]
    assert "Traceback" not in failed.stderr
