"""kanlab paper continual: the forgetting measure, resume through the store, the CLI end to end."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from kanlab.bench.paper import run_continual
from kanlab.bench.paper.continual import CENTERS, forgetting, peak_target

SRC = str(Path(__file__).resolve().parents[1] / "src")


def test_forgetting_is_the_largest_increase_on_an_earlier_peak():
    errors = [
        [0.1, 9.0, 9.0],
        [0.4, 0.2, 9.0],  # peak 1 got worse by 0.3
        [0.15, 0.9, 0.3],  # peak 2 got worse by 0.7 (the largest), peak 1 by 0.05
    ]
    assert forgetting(errors) == pytest.approx(0.7)
    assert forgetting([[0.5, 1.0], [0.25, 0.1]]) == pytest.approx(-0.25)  # improved: negative


def test_target_has_unit_peaks_at_the_centres():
    import torch

    y = peak_target(torch.tensor(CENTERS, dtype=torch.float64))
    assert torch.allclose(y, torch.ones(5, dtype=torch.float64), atol=1e-6)


@pytest.mark.parametrize("bad", [{"seeds": 0}, {"variants": "3d"}, {"steps": 0}])
def test_bad_options_are_one_line_errors(tmp_path, bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        run_continual(quick=True, out=tmp_path, **bad)


def _rows(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT COUNT(*) FROM trials").fetchone()[0]


@pytest.mark.slow
def test_resume_trains_only_the_missing_units(tmp_path):
    one = run_continual(quick=True, out=tmp_path, steps=2, n_per_phase=10, variants="1d")
    assert (one.units_run, one.units_reused) == (2, 0)  # the 1-D KAN and its MLP
    both = run_continual(quick=True, out=tmp_path, steps=2, n_per_phase=10)
    assert (both.units_run, both.units_reused) == (3, 2)  # the 2-D models only
    assert _rows(tmp_path / "results.sqlite") == 5
    assert [r[:2] for r in both.rows[:2]] == [r[:2] for r in one.rows]
    assert both.rows[0][4] == one.rows[0][4]  # the stored unit's forgetting, read back


@pytest.mark.slow
def test_cli_quick_end_to_end_and_rerun_trains_nothing(tmp_path):
    env = {**os.environ, "PYTHONPATH": SRC}
    cmd = [sys.executable, "-m", "kanlab", "paper", "continual", "--quick", "--out", str(tmp_path)]
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    assert "units trained 5, reused 0" in first.stderr
    kan = next(line for line in first.stdout.splitlines() if "| 1-D | KAN [1, 1]" in line)
    cells = [c.strip() for c in kan.strip("|").split("|")]
    assert float(cells[4]) <= 1e-3 and cells[6] == "met"  # the paper's claim, measured
    report = (tmp_path / "report.md").read_text()
    assert kan in report and "continual.png" in report
    assert (tmp_path / "continual.png").stat().st_size > 1000
    assert (tmp_path / "report.html").read_text().count("data:image/png;base64,") == 1
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr
    assert "units trained 0, reused 5" in second.stderr
    assert kan in second.stdout and _rows(tmp_path / "results.sqlite") == 5


def test_cli_names_an_unknown_experiment(tmp_path):
    env = {**os.environ, "PYTHONPATH": SRC}
    cmd = [sys.executable, "-m", "kanlab", "paper", "knots", "--out", str(tmp_path)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert "unknown experiment 'knots'" in res.stderr and "continual" in res.stderr
