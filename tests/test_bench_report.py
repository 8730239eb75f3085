"""Reports: Pareto fronts and scaling fits against brute force / closed form; a report from a store."""

from __future__ import annotations

import base64
import random
import re
import statistics

import pytest

from kanlab.bench.report import (
    aggregate,
    comparisons,
    pareto_front,
    scaling_exponent,
    summary_table,
    write_report,
)
from kanlab.bench.store import ResultStore, StoreError
from kanlab.config import KANConfig
from kanlab.models import count_params


def kan_params(widths, grid, k):
    return count_params(KANConfig(widths=widths, grid_size=grid, spline_order=k))


def test_pareto_front_matches_brute_force():
    rng = random.Random(0)
    for _ in range(50):
        pts = [(rng.randint(1, 20), rng.choice([0.1, 0.2, 0.3, 0.5, 1.0])) for _ in range(12)]
        front = pareto_front(pts)
        # brute force: a point is kept iff no other point is <= in size and < in error, or < in
        # size and <= in error; among equal points one is kept
        expected = sorted(
            {
                p
                for p in pts
                if not any(
                    (q[0] <= p[0] and q[1] < p[1]) or (q[0] < p[0] and q[1] <= p[1]) for q in pts
                )
            }
        )
        assert front == expected  # fmt: skip


def test_pareto_front_ignores_non_finite():
    assert pareto_front([(1, float("nan")), (2, 0.5), (3, float("inf"))]) == [(2, 0.5)]


def test_scaling_exponent_recovers_a_power_law():
    pts = [(n, 3.0 * n**-2.0) for n in (10, 40, 100, 1000)]
    assert scaling_exponent(pts) == pytest.approx(2.0, rel=1e-12)
    rng = random.Random(1)
    noisy = [(n, 0.5 * n**-4.0 * (1 + 0.01 * rng.uniform(-1, 1))) for n in (50, 100, 200, 400)]
    assert scaling_exponent(noisy) == pytest.approx(4.0, abs=0.05)
    assert scaling_exponent(pts[:2]) is None  # two points always fit: no evidence
    assert scaling_exponent([(10, 0.1), (10, 0.2), (20, 0.05)]) is None  # 2 distinct sizes


def _fill(store):
    """Task A: KAN (100 params) errors 0.1, 0.3 over seeds; matched MLPs 0.2, 0.4 and 0.5, 0.7.
    Task B: the MLP wins. One diverged KAN seed in B."""
    rows = []
    for seed, (k, m1, m2) in enumerate([(0.1, 0.2, 0.5), (0.3, 0.4, 0.7)]):
        rows += [
            ("A", "kan", "kan[2,5,1] G=5", "kan[2,5,1] G=5", 100, k, seed),
            ("A", "mlp", "mlp[2,10,10,1] silu", "kan[2,5,1] G=5", 101, m1, seed),
            ("A", "mlp", "mlp[2,33,1] silu", "kan[2,5,1] G=5", 100, m2, seed),
            ("A", "kan", "kan[2,5,1] G=10", "kan[2,5,1] G=10", 150, k * 3, seed),
            ("A", "kan", "kan[2,5,1] G=20", "kan[2,5,1] G=20", 250, k * 5, seed),
            ("B", "kan", "kan[1,1] G=5", "kan[1,1] G=5", 10, 0.9, seed),
            ("B", "mlp", "mlp[1,3,1] silu", "kan[1,1] G=5", 10, 0.3, seed),
        ]
    for i, (task, fam, label, group, params, err, seed) in enumerate(rows):
        store.put(f"k{i}", {
            "task": task, "family": fam, "label": label, "group_id": group, "seed": seed,
            "metric": "rmse", "params": params, "flops_dense": params * 10, "test_metric": err,
            "test_error": err, "time_per_step": 0.01, "status": "ok",
            "config": {"task": task, "label": label, "seed": seed},
        })  # fmt: skip
    store.put("div", {"task": "B", "family": "kan", "label": "kan[1,1] G=5", "seed": 2,
                      "status": "diverged", "error": "nan at step 3",
                      "config": {"task": "B", "label": "kan[1,1] G=5", "seed": 2}})  # fmt: skip


def test_aggregate_and_comparisons(tmp_path):
    with ResultStore(tmp_path / "results.sqlite") as store:
        _fill(store)
        rows = store.rows()
    stats = aggregate(rows)
    comps = {c.task: c for c in comparisons(stats)}
    a = comps["A"]
    assert a.kan.label == "kan[2,5,1] G=5" and a.mlp.label == "mlp[2,10,10,1] silu"
    assert a.kan.err_mean == pytest.approx(statistics.mean([0.1, 0.3]))
    assert a.kan.err_std == pytest.approx(statistics.stdev([0.1, 0.3]))
    assert a.winner == "tie"  # 0.1, 0.3 against 0.2, 0.4: within seed noise
    b = comps["B"]
    assert b.winner == "MLP"
    assert (b.kan.n_trials, b.kan.n_ok, b.kan.n_diverged) == (3, 2, 1)
    table = summary_table(rows)
    assert re.search(r"\| A \| RMSE \| kan\[2,5,1\] G=5 \| 100 \| 0\.2 ± 0\.14 \(n=2\) \|", table)


def test_report_from_store(tmp_path):
    run = tmp_path / "run"
    with ResultStore(run / "results.sqlite") as store:
        _fill(store)
    files = write_report(run)
    md = files.markdown.read_text()
    assert "## A" in md and "## B" in md and "| kan[2,5,1] G=10 |" in md
    # task A's bigger KANs are worse (0.6, 1.0 mean): the KAN front is the single point (100, 0.2)
    assert "KAN: alpha: too few points (1 on the Pareto front" in md
    assert "![Pareto front: A](plots/A.png)" in md
    assert {p.name for p in files.plots} == {"A.png", "B.png"}
    html = files.html.read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(images) == 2 and all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in images)
    assert "plots/" not in html  # self-contained: no links to files


def test_report_scaling_line_when_enough_points(tmp_path):
    with ResultStore(tmp_path / "results.sqlite") as store:
        for i, n in enumerate((50, 100, 200, 400)):
            store.put(f"k{i}", {"task": "T", "family": "kan", "label": f"kan G={n}", "seed": 0,
                                "params": n, "test_error": 2.0 * n**-1.5, "status": "ok",
                                "metric": "rmse", "config": {"n": n}})  # fmt: skip
        files = write_report(store)
    assert "KAN: alpha = 1.50 (error ~ N^-alpha over 4 Pareto points)" in files.markdown.read_text()


def test_missing_store_is_reported(tmp_path):
    with pytest.raises(StoreError, match="no results store"):
        write_report(tmp_path)
    assert not (tmp_path / "results.sqlite").exists()


def test_grid_extension_curve_gives_alpha(tmp_path):
    widths, grids = [2, 1, 1], [5, 10, 20]
    with ResultStore(tmp_path / "results.sqlite") as store:
        for seed, scale in enumerate((1.0, 3.0)):
            # error ~ N^-2 along the schedule; seeds differ by a factor, so the mean keeps the slope
            stages = [{"grid": g, "test_metric": scale * kan_params(widths, g, 3) ** -2.0}
                      for g in grids]  # fmt: skip
            store.put(f"k{seed}", {
                "task": "T", "family": "kan", "label": "kan[2,1,1] G=5>10>20", "seed": seed,
                "params": kan_params(widths, 20, 3), "test_error": stages[-1]["test_metric"],
                "metric": "rmse", "status": "ok", "extra": {"stages": stages},
                "config": {"model": {"family": "kan", "widths": widths, "spline_order": 3},
                           "seed": seed},
            })  # fmt: skip
        files = write_report(store)
    md = files.markdown.read_text()
    assert "KAN grid extension (kan[2,1,1], grids 5>10>20; " in md and "alpha = 2.00" in md
