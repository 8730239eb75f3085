"""kanlab paper pde: the PINN pieces against the exact solution, and the experiment end to end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kanlab.bench.paper import run_pde
from kanlab.bench.paper.pde import _errors, exact_solution, laplacian, source, time_to

SRC = str(Path(__file__).resolve().parents[1] / "src")


class Exact(torch.nn.Module):
    def forward(self, x):
        return exact_solution(x)[:, None]


def test_laplacian_of_the_exact_solution_is_the_source_term():
    x = torch.rand(64, 2, dtype=torch.float64) * 2 - 1
    u, lap = laplacian(Exact(), x)
    assert torch.allclose(u, exact_solution(x))
    assert torch.allclose(lap, source(x), atol=1e-10)


def test_exact_solution_has_zero_errors_and_vanishes_on_the_boundary():
    side = torch.linspace(-1, 1, 11, dtype=torch.float64)
    grid = torch.cartesian_prod(side, side)
    assert _errors(Exact(), grid) == pytest.approx((0.0, 0.0), abs=1e-24)
    edge = torch.stack([side, torch.ones_like(side)], 1)
    assert torch.allclose(exact_solution(edge), torch.zeros(11, dtype=torch.float64), atol=1e-12)
    shifted = torch.nn.Module()
    shifted.forward = lambda x: exact_solution(x)[:, None] + 0.1  # error 0.1 everywhere
    assert _errors(shifted, grid) == pytest.approx((0.01, 0.01))  # gradient unchanged


def test_time_to_reads_the_first_step_under_the_target():
    curve = [(0, 0.0, 1.0, 2.0), (5, 1.5, 1e-6, 1e-5), (10, 3.0, 1e-8, 1e-7)]
    assert time_to(curve, 1e-5) == 1.5 and time_to(curve, 1e-7) == 3.0
    assert time_to(curve, 1e-9) is None


@pytest.mark.slow
def test_pde_tiny_runs_reports_and_resumes(tmp_path):
    kw = dict(quick=True, out=tmp_path, steps=2, n_interior=30, n_boundary=8)
    one = run_pde(**kw)
    assert (one.units_run, one.units_reused) == (4, 0)
    assert [r[0] for r in one.rows][:2] == ["KAN [2, 5, 1] G=5", "KAN [2, 10, 1] G=5"]
    for row in one.rows:
        assert 0 < float(row[2]) <= float(row[3])  # L2^2 <= H1^2
    report = (tmp_path / "report.md").read_text()
    assert "~1e-7 ([2,10,1]" in report and (tmp_path / "pde.png").exists()
    two = run_pde(**kw)  # the same settings: every unit read back from the store
    assert (two.units_run, two.units_reused) == (0, 4) and two.rows == one.rows
    env = {**os.environ, "PYTHONPATH": SRC}
    cmd = [sys.executable, "-m", "kanlab", "paper", "pde", "--quick", "--out", str(tmp_path)]
    bad = subprocess.run([*cmd, "--seeds", "0"], env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "--seeds" in bad.stderr
