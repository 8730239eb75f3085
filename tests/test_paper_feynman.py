"""kanlab paper feynman: the shipped Table 2 rows, their ids confirmed against the AI Feynman table,
the dimensionless data, the sweep end to end and resumed."""

from __future__ import annotations

import dataclasses
import math
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kanlab.bench.paper import EXPERIMENTS, run_feynman
from kanlab.bench.paper.feynman import DATA, confirm, published, sample
from kanlab.datasets.feynman import load_table

SRC = str(Path(__file__).resolve().parents[1] / "src")


def test_shipped_rows_parse_and_every_id_is_confirmed():
    rows = published()
    assert len(rows) == 9 == len(DATA.read_text().splitlines()) - 1
    ids = {r.filename for r in load_table()}
    for name, row in rows.items():
        assert name in ids
        assert confirm(row) is None, name
        nums = [float(getattr(row, f"{k}_test_rmse")) for k in ("human_kan", "pruned_kan",
                                                                "unpruned_kan", "mlp")]  # fmt: skip
        assert all(0 < v < 1e-2 for v in nums)
        assert row.best_kan == min(nums[:3])
    # rows read by hand from kan_paper_results.md
    assert rows["I.37.4"].pruned_kan_test_rmse == "4.91e-6"
    assert rows["II.2.42"].mlp_test_rmse == "1.81e-4"
    assert rows["I.40.1"].pruned_kan_shape == "[2,2,1,1,2,1]"
    assert rows["I.12.11"].variables == ("a", "theta")
    assert "run_feynman" in EXPERIMENTS["feynman"].__name__


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"prefactor": "q"}, "deviates from the AI Feynman formula"),  # Ef dropped
        ({"paper_formula": "1+a*cos(theta)"}, "deviates"),
        ({"pruned_kan_shape": "[3,2,1,1]"}, "2 variables but the paper's shape"),
        ({"equation": "I.99.9"}, "'I.99.9' is not in FeynmanEquations.csv"),
    ],
)
def test_confirm_rejects_a_row_that_is_not_its_equation(change, reason):
    row = dataclasses.replace(published()["I.12.11"], **change)
    why = confirm(row)
    assert why is not None and reason in why


def test_dimensionless_data_follows_the_substitution():
    # oracle: I.12.11's AI Feynman variables q, Ef, B, v, theta ~ U[1, 5]; a = B v / Ef
    x, y, dev = sample(published()["I.12.11"], 500, seed=3)
    assert x.shape == (500, 2) and y.shape == (500,) and dev < 1e-12
    a, theta = x[:, 0], x[:, 1]
    assert a.min() >= 1 / 5 and a.max() <= 25 and theta.min() >= 1 and theta.max() <= 5
    np.testing.assert_allclose(y, 1 + a * np.sin(theta), rtol=1e-14)
    again = sample(published()["I.12.11"], 500, seed=3)
    assert np.array_equal(again[0], x)  # the seed fixes the draw (data files are reproducible)


def test_unknown_equation_is_named(tmp_path):
    with pytest.raises(ValueError, match="I.99.9"):
        run_feynman(out=tmp_path, equations=("I.99.9",))


@pytest.mark.slow
def test_feynman_tiny_runs_compares_and_resumes(tmp_path):
    kw = dict(quick=True, out=tmp_path, steps=2, equations=("I.6.2",))
    one = run_feynman(**kw)
    assert (one.units_run, one.units_reused) == (8, 0)  # (1 KAN + 1 pruned + 2 MLPs) x 2 seeds
    (row,) = one.rows
    ref = published()["I.6.2"]
    assert row[0] == "I.6.2" and row[1] == ref.paper_formula
    # columns: KAN over grid stages (label, RMSE), final grid (label, RMSE), paper, <=, KAN best
    # mean, MLP (label, RMSE), paper MLP, verdict
    assert float(row[6]) == pytest.approx(ref.best_kan, rel=1e-2) and row[12] == ref.mlp_test_rmse
    assert math.isfinite(float(row[3])) and math.isfinite(float(row[11]))
    assert float(row[3]) <= float(row[5])
    stage_ok, final_ok = (cell == "yes" for cell in row[7].split(" / "))
    assert final_ok <= stage_ok and row[7] in ("yes / yes", "yes / no", "no / no")
    for cell, ok in ((row[3], stage_ok), (row[5], final_ok)):
        if not math.isclose(float(cell), ref.best_kan, rel_tol=5e-3):  # (the cells are rounded)
            assert ok == (float(cell) <= ref.best_kan)
    assert row[13].split()[0] in ("KAN", "MLP", "tie")
    report = (tmp_path / "report.md").read_text()
    assert "Table 2" in report and "dimensionless" in report and "confirmed" in report
    header = (tmp_path / "data" / "I.6.2.csv").read_text().splitlines()
    assert header[0] == "theta,sigma,f" and len(header) == 1251
    two = run_feynman(**kw)
    assert (two.units_run, two.units_reused) == (0, 8) and two.rows == one.rows
    with sqlite3.connect(tmp_path / "results.sqlite") as conn:
        assert conn.execute("SELECT COUNT(*) FROM trials").fetchone()[0] == 8


@pytest.mark.slow
def test_cli_quick_end_to_end_and_rerun_trains_nothing(tmp_path):
    env = {**os.environ, "PYTHONPATH": SRC}
    cmd = [sys.executable, "-m", "kanlab", "paper", "feynman", "--quick", "--out", str(tmp_path)]
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr
    assert "units trained 24, reused 0" in first.stderr  # 3 equations x 4 models x 2 seeds
    rows = [line for line in first.stdout.splitlines() if line.startswith(("| I.", "| II."))]
    assert [r.split("|")[1].strip() for r in rows] == ["I.6.2", "I.12.11", "II.38.3"]
    assert "ids confirmed against FeynmanEquations.csv: I.6.2, I.12.11, II.38.3" in first.stdout
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stderr
    assert "units trained 0, reused 24" in second.stderr and rows[0] in second.stdout
