"""kanlab paper scaling: the exponent's interval, the blow-up check, the sweep end to end."""

from __future__ import annotations

import math
import sqlite3

import pytest

from kanlab.bench.paper import run_scaling
from kanlab.bench.paper.scaling import PUBLISHED, blow_ups, exponent_interval


def test_exact_power_law_gives_its_exponent_and_a_closed_interval():
    pts = [(n, 3.0 * n**-4.0) for n in (10, 20, 40, 80)]
    alpha, low, high = exponent_interval(pts)
    assert alpha == pytest.approx(4.0) and low == pytest.approx(4.0, abs=1e-6)
    assert high == pytest.approx(4.0, abs=1e-6)


def test_noisy_power_law_interval_contains_the_exponent_and_widens_with_noise():
    sizes = [10, 20, 40, 80, 160]
    noise = [1.3, 0.8, 1.2, 0.75, 1.1]
    alpha, low, high = exponent_interval(
        [(n, f * n**-2.0) for n, f in zip(sizes, noise, strict=True)]
    )
    assert low < 2.0 < high and low < alpha < high
    more = [f**3 for f in noise]
    _, low3, high3 = exponent_interval([(n, f * n**-2.0) for n, f in zip(sizes, more, strict=True)])
    assert high3 - low3 > high - low
    assert exponent_interval([(10, 1.0), (20, 0.5)]) is None  # two points: no evidence


def test_blow_ups_flag_errors_above_twice_the_best_so_far():
    assert blow_ups([(3, 1e-2), (5, 5e-3), (10, 1e-3), (20, 9e-4)]) == []
    assert blow_ups([(3, 1e-2), (5, 1e-3), (10, 3e-3), (20, math.nan)]) == [10, 20]


@pytest.mark.slow
def test_scaling_tiny_runs_through_the_store_and_resumes(tmp_path):
    one = run_scaling(quick=True, out=tmp_path, steps=2, seeds=1, toy_4d=False)
    assert (one.units_run, one.units_reused) == (5, 0)  # one KAN + 4 MLPs, one seed
    kan = [r for r in one.rows if r[0].startswith("KAN")]
    assert [r[1] for r in kan] == ["G=3", "G=5", "G=10", "G=20", "G=50"]
    for row in kan:  # the published column: the official tutorial's figures, where there is one
        g = int(row[1][2:])
        assert row[4] == (f"{PUBLISHED[g]:.3g}" if g in PUBLISHED else "-")
        assert math.isfinite(float(row[3]))
        assert row[6] == row[3]  # one seed: its median is its mean
    params = [int(r[2]) for r in kan]
    assert params == sorted(params) and params[0] == 3 * (3 + 3) + 6
    report = (tmp_path / "report.md").read_text()
    assert "alpha of KAN" in report and "grids with <= 1000 parameters" in report
    assert (
        "median over seeds (vs parameters" in report
        and "dtype=float64" in report
        and "alpha of KAN [2,1,1] (vs G)" in report
    )
    two = run_scaling(quick=True, out=tmp_path, steps=2, seeds=1, toy_4d=False)
    assert (two.units_run, two.units_reused) == (0, 5) and two.rows == one.rows
    with sqlite3.connect(tmp_path / "results.sqlite") as conn:
        assert conn.execute("SELECT COUNT(*) FROM trials").fetchone()[0] == 5


def test_protocol_float64_uniform_grid_updates_and_chosen_grids():
    from kanlab.bench.paper.scaling import _trials

    trials, grids = _trials(False, 2, 200)
    assert grids == (3, 5, 10, 20, 50, 100, 200, 500, 1000) and len(trials) == 2 * (1 + 6)
    kan = [t for t in trials if t.family == "kan"]
    assert {t.model.dtype for t in trials} == {"float64"}
    assert all(t.fit.grid_eps == 1.0 and t.fit.grid_schedule == grids for t in kan)
    # grids placed 1% of the data's range beyond it (the rise past G = 50: scaling.py's docstring)
    assert all(t.fit.grid_margin == 0.01 for t in kan)
    assert all(t.fit.steps == 200 for t in kan)
    assert all((t.fit.restarts, t.fit.restart_steps) == (9, 20) for t in kan)
    mine, grids = _trials(False, 1, 5, grids=(3, 10), widths=(8,))
    assert grids == (3, 10) and [t.family for t in mine] == ["kan", "mlp"]
    # the MLP gets the KAN's whole step budget: its stages and its 10 restart starts of 20 steps
    assert mine[1].fit.steps == 2 * 5 + 10 * 20 and mine[1].fit.restarts == 0
    bare, _ = _trials(True, 1, 5, grids=(3, 10), widths=(8,), restarts=0)
    assert bare[0].fit.restarts == 0 and bare[1].fit.steps == 10
    quick, _ = _trials(True, 1, 5, grids=(3, 10), widths=(8,))
    assert (quick[0].fit.restarts, quick[0].fit.restart_steps) == (4, 10)
    assert quick[1].fit.steps == 10 + 5 * 10


@pytest.mark.parametrize("grids", [(5, 3), (), (0, 3), (3, 3)])
def test_bad_grids_are_named(tmp_path, grids):
    with pytest.raises(ValueError, match="grids must be increasing"):
        run_scaling(out=tmp_path, grids=grids)


@pytest.mark.parametrize("restarts", [-1, 1.5])
def test_bad_restarts_are_named(tmp_path, restarts):
    with pytest.raises(ValueError, match="restarts must be a non-negative int"):
        run_scaling(out=tmp_path, restarts=restarts)


@pytest.mark.slow
def test_restarts_take_a_stalled_seed_out_of_its_basin():
    """Seed 0 of [2,1,1] stalls (train NRMSE ~0.49 after 20 steps at G = 3, the outer edge
    non-monotone: the scaling module's docstring); the scaling protocol's restarts find a start
    two orders of magnitude better among a few more draws."""
    import torch

    import kanlab as kl
    from kanlab.bench.prepare import prepare
    from kanlab.bench.tasks import get_task, load

    raw = load(get_task("paper/exp_sin_sq"), n_train=1000, n_test=1000, seed=0, dtype=torch.float64)
    data = prepare(raw, "kan", grid_range=(-1.0, 1.0)).data
    opts = dict(grid_eps=1.0, progress=False, log_every=20)

    def start():
        return kl.KAN([2, 1, 1], grid_size=3, seed=0, dtype=torch.float64)

    alone = kl.fit(start(), data, steps=20, **opts).train_loss[-1]
    hist = kl.fit(start(), data, steps=0, restarts=3, restart_steps=20, **opts)
    assert hist.restart_losses[0] == pytest.approx(alone, rel=1e-12) and alone > 0.3
    assert min(hist.restart_losses) < 0.05


def _row(task, family, seed, test, *, widths=None, params=None, stages=None):
    return {"task": task, "family": family, "seed": seed, "status": "ok", "test_metric": test,
            "params": params, "config": {"model": {"widths": widths}},
            "extra": {"stages": stages or []}}  # fmt: skip


def test_summary_of_the_4d_toy_gives_the_goal_and_the_mlp_front_from_its_rows():
    from kanlab.bench.paper.scaling_4d import TASK, summarize_4d
    from kanlab.config import KANConfig
    from kanlab.models import count_params

    n3, n50 = (count_params(KANConfig(widths=(4, 2, 1, 1), grid_size=g)) for g in (3, 50))
    stages = [[{"grid": 3, "test_metric": e3}, {"grid": 50, "test_metric": e50}]
              for e3, e50 in ((4e-3, 5e-6), (5e-3, 2e-4), (3e-3, 9e-5))]  # fmt: skip
    rows = [_row(TASK, "kan", s, st[-1]["test_metric"], stages=st) for s, st in enumerate(stages)]
    # MLPs: one at most n3 parameters (best run 1e-3: the KAN's median 4e-3 is not below it),
    # one between n3 and n50 (best 1e-2), one above n50 (never in the front at a KAN size)
    rows += [_row(TASK, "mlp", s, e, widths=[4, 4, 4, 1], params=n3 - 1)
             for s, e in enumerate((1e-3, 2e-3, 3e-3))]  # fmt: skip
    rows += [
        _row(TASK, "mlp", 0, 1e-2, widths=[4, 8, 8, 8, 1], params=n50 - 1),
        _row(TASK, "mlp", 0, 1e-9, widths=[4, 64, 64, 1], params=n50 + 1),
        _row("paper/exp_sin_sq", "kan", 0, 1e-12, stages=[{"grid": 3, "test_metric": 0}]),
    ]
    table, notes, kan, mlp = summarize_4d(rows)
    assert kan == [(n3, 4e-3), (n50, 9e-5)]  # medians over seeds
    assert [r[0] for r in table] == ["KAN [4,2,1,1] (4-D toy)"] * 2 + [
        "MLP [4,w,w,1] (4-D toy)",
        "MLP [4,w,w,w,1] (4-D toy)",
        "MLP [4,w,w,1] (4-D toy)",
    ]
    assert table[1][7] == "5e-06 / 0.0002 / 9e-05"
    assert mlp == [(n3 - 1, 2e-3), (n50 - 1, 1e-2), (n50 + 1, 1e-9)]
    assert (
        notes[0] == "4-D toy goal (test RMSE <= 0.0001 at G = 50 on >= 2 seeds): met (2 of 3 seeds)"
    )
    assert notes[1].endswith(": no (G=3: not below, G=50: below)")


@pytest.mark.slow
def test_scaling_with_the_4d_toy_tiny_runs_its_trials_and_resumes(tmp_path):
    kw = {"quick": True, "out": tmp_path, "steps": 1, "seeds": 1, "grids": (3, 5),
          "mlp_widths": (4,), "restarts": 0}  # fmt: skip
    one = run_scaling(**kw)
    # [2,1,1]: one KAN + 1 MLP; the 4-D toy: one KAN + MLPs of depth 2 and 3, widths 4 and 8
    assert (one.units_run, one.units_reused) == (2 + 5, 0)
    toy = [r for r in one.rows if r[0] == "KAN [4,2,1,1] (4-D toy)"]
    assert [r[1] for r in toy] == ["G=3", "G=5", "G=10"]
    assert all(math.isfinite(float(r[3])) for r in toy)
    assert sum("(4-D toy)" in r[0] and r[0].startswith("MLP") for r in one.rows) == 4
    report = (tmp_path / "report.md").read_text()
    assert "4-D toy: this size stops at G = 10" in report and "4-D toy KAN median" in report
    two = run_scaling(**kw)
    assert (two.units_run, two.units_reused) == (0, 7) and two.rows == one.rows
