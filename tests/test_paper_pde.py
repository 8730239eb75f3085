"""kanlab paper pde: the PINN pieces against the exact solution, and the experiment end to end."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kanlab.bench.paper import EXPERIMENTS, PaperTable, run_pde
from kanlab.bench.paper.pde import (
    PDEProtocol,
    _errors,
    _extend,
    _points,
    _protocol,
    _train_unit,
    _update,
    _updates_at,
    exact_solution,
    laplacian,
    source,
    time_to,
)
from kanlab.bench.runner import _one_torch_thread
from kanlab.cli import main
from kanlab.models import KAN, count_params

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


def _kan_with_random_splines(seed: int) -> KAN:
    model = KAN([2, 10, 1], grid_size=5, seed=seed).double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.layers:
            layer.coef.copy_(0.1 * torch.randn(layer.coef.shape, generator=g, dtype=torch.float64))
    return model


@pytest.mark.parametrize("seed", [0, 1])
def test_grid_extension_after_an_update_keeps_the_solution_and_its_laplacian(seed):
    # Training's order: the grids are moved to the points (uniform on each layer's input range),
    # then extended on the same points (5 -> 10 -> 20). The extension refines the same uniform grid:
    # the old splines lie in the new spline space, so u and its Laplacian (what the PINN loss
    # sees) are kept up to the least-squares refit's rounding.
    with _one_torch_thread():  # (a busy machine stalls a 2-thread team on such small calls)
        _check_extension(_kan_with_random_splines(seed), seed)


def _check_extension(model: KAN, seed: int) -> None:
    interior, boundary = (p.double() for p in _points(512, 64, seed))
    points = torch.cat([interior, boundary])
    _update(model, points)
    k = model.layers[1].spline_order
    hidden = model.layers[0](points).detach()  # (n, 10): the second layer's inputs
    assert torch.allclose(model.layers[1].knots[:, k], hidden.min(0).values, atol=1e-12)
    assert torch.allclose(model.layers[1].knots[:, -k - 1], hidden.max(0).values, atol=1e-12)
    u0, lap0 = laplacian(model, interior)
    assert lap0.abs().max() > 0.1  # a non-trivial Laplacian to keep
    params = [count_params(model)]
    for grid in (10, 20):
        _extend(model, grid, points)
        u, lap = laplacian(model, interior)
        assert torch.allclose(u, u0, rtol=0, atol=1e-8)
        assert torch.allclose(lap, lap0, rtol=0, atol=1e-5)
        params.append(count_params(model))
    assert params[0] < params[1] < params[2]


def test_training_extends_the_grid_stage_by_stage():
    proto = PDEProtocol(quick=True, steps=(2, 3), grids=(3, 6), n_i=40, n_b=8, seeds=1,
                        dtype="float64", max_iter=3)  # fmt: skip
    r = _train_unit(proto.unit("kan", [2, 3, 1], 0))
    grids = [st[0] for st in r["stages"]]
    assert grids == [3, 6]
    expected = [count_params(KAN([2, 3, 1], grid_size=g)) for g in (3, 6)]
    assert [st[1] for st in r["stages"]] == expected and r["params"] == expected[-1]
    assert [st[2] for st in r["stages"]] == [2, 5]  # steps per stage, counted across stages
    steps = [c[0] for c in r["curve"]]
    times = [c[1] for c in r["curve"]]
    assert steps == [0, 1, 2, 3, 4, 5] and times == sorted(times)  # logged every step
    assert r["curve"][-1][2] < r["curve"][0][2]  # it learnt something
    assert 0 < r["evaluations"] <= 5 * (3 * 25 + 1)  # LBFGS: <= max_iter * (1 + line search)
    mlp = _train_unit(proto.unit("mlp", [2, 4, 1], 0))
    assert [c[0] for c in mlp["curve"]][-1] == 5  # as many steps as the KAN's stages together
    assert [st[2] for st in mlp["stages"]] == [5]  # in one stage


def test_grid_updates_every_5_steps_before_step_50():
    s = PDEProtocol(quick=True, steps=(30, 30), grids=(5, 10), n_i=40, n_b=8, seeds=1,
                    dtype="float64").unit("kan", [2, 5, 1], 0)  # fmt: skip
    assert [t for t in range(60) if _updates_at(t, s)] == list(range(0, 50, 5))
    assert not any(_updates_at(t, {**s, "grid_update_every": 0}) for t in range(60))


def test_the_stored_key_records_the_schedule():
    kw = dict(quick=True, steps=(2, 2), n_i=40, n_b=8, seeds=1, dtype="float64")
    one = PDEProtocol(grids=(5, 10), **kw)
    assert one.unit("kan", [2, 5, 1], 0) == PDEProtocol(grids=(5, 10), **kw).unit(
        "kan", [2, 5, 1], 0
    )
    two = PDEProtocol(grids=(5, 10, 20), **{**kw, "steps": (2, 2, 2)})
    assert one.unit("kan", [2, 5, 1], 0)["grids"] == [5, 10]
    assert one.unit("kan", [2, 5, 1], 0) != two.unit("kan", [2, 5, 1], 0)
    assert one.unit("mlp", [2, 5, 1], 0) != two.unit("mlp", [2, 5, 1], 0)  # trains longer
    assert one.total_steps == 4 and two.total_steps == 6


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        (dict(grids=(10, 5)), "grids must not decrease"),
        (dict(grids=()), "grids must be a non-empty"),
        (dict(grids=(5, 0)), "got (5, 0)"),
        (dict(dtype="half"), "'half'"),
        (dict(steps=0), "steps must be >= 1, got 0"),
        (dict(seeds=0), "seeds must be >= 1, got 0"),
        (dict(grid_update_every=-1), "grid_update_every must be >= 0, got -1"),
        (dict(models=[("cnn", [2, 1])]), "got 'cnn'"),
        (dict(models=[("kan", [3, 1])]), "got [3, 1]"),
        (dict(models=[]), "at least one model"),
    ],
)
def test_bad_settings_are_refused_by_name(tmp_path, kw, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        run_pde(out=tmp_path, **kw)
    assert not (tmp_path / "results.sqlite").exists()


@pytest.mark.slow
def test_pde_tiny_runs_reports_and_resumes(tmp_path):
    kw = dict(quick=True, out=tmp_path, steps=1, n_interior=30, n_boundary=8)
    one = run_pde(**kw)
    assert (one.units_run, one.units_reused) == (4, 0)
    assert [r[0] for r in one.rows][:2] == ["KAN [2, 5, 1] G=5->10", "KAN [2, 10, 1] G=5->10"]
    for row in one.rows:
        assert 0 < float(row[2]) <= float(row[3])  # L2^2 <= H1^2
    report = (tmp_path / "report.md").read_text()
    assert "~1e-7 ([2,10,1]" in report and (tmp_path / "pde.png").exists()
    g10 = count_params(KAN([2, 10, 1], grid_size=10))
    assert f"| KAN [2, 10, 1] G=5->10 | 10 | {g10} | 2 |" in report  # stage table: G=10 at step 2
    two = run_pde(**kw)  # the same settings: every unit read back from the store
    assert (two.units_run, two.units_reused) == (0, 4) and two.rows == one.rows
    three = run_pde(**kw, grids=(5,))  # another schedule: new units (the MLPs train less)
    assert (three.units_run, three.units_reused) == (4, 0)
    env = {**os.environ, "PYTHONPATH": SRC}
    cmd = [sys.executable, "-m", "kanlab", "paper", "pde", "--quick", "--out", str(tmp_path)]
    bad = subprocess.run([*cmd, "--seeds", "0"], env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "--seeds" in bad.stderr


def test_steps_per_grid_are_one_count_or_one_per_grid():
    assert _protocol(False, 1, None, None, None, None, "float64", 5).steps == (20, 20, 20, 40)
    assert _protocol(True, 1, None, None, None, None, "float64", 5).steps == (10, 10)
    assert _protocol(True, 1, 3, (5, 10, 20), None, None, "float64", 5).steps == (3, 3, 3)
    proto = _protocol(True, 1, [1, 2, 4], (5, 10, 20), None, None, "float64", 5)
    assert proto.steps == (1, 2, 4) and proto.total_steps == 7
    assert proto.unit("kan", [2, 5, 1], 0)["steps"] == [1, 2, 4]


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ((20, 20), "steps must give one count per grid (3 grids (5, 10, 20)), got 2: (20, 20)"),
        ((20, 0, 5), "steps must be >= 1, got 0"),
    ],
)
def test_bad_steps_per_grid_are_refused_by_name(tmp_path, steps, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        run_pde(out=tmp_path, grids=(5, 10, 20), steps=steps)


@pytest.mark.parametrize("steps", [True, 2.0, (20, 2.5, 5), (20, True, 5), "20"])
def test_steps_of_the_wrong_type_are_refused_by_name(tmp_path, steps):
    with pytest.raises(TypeError, match=re.escape(f"of ints (one per grid), got {steps!r}")):
        run_pde(out=tmp_path, grids=(5, 10, 20), steps=steps)


def _cli(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def test_cli_passes_grids_and_steps_to_the_pde_runner(tmp_path, capsys, monkeypatch):
    calls = []

    def fake(**kw):
        calls.append(kw)
        return PaperTable(experiment="pde", title="t", headers=("a",), rows=(("1",),),
                          settings={}, wall_time=0.0, machine="m")  # fmt: skip

    monkeypatch.setitem(EXPERIMENTS, "pde", fake)
    base = ["paper", "pde", "--out", str(tmp_path)]
    assert _cli([*base, "--grids", "5,10,20,40", "--steps", "20,20,20,40"], capsys)[0] == 0
    assert _cli([*base, "--steps", "7"], capsys)[0] == 0
    assert _cli(base, capsys)[0] == 0
    assert calls[0]["grids"] == [5, 10, 20, 40] and calls[0]["steps"] == [20, 20, 20, 40]
    assert calls[1]["steps"] == 7 and "grids" not in calls[1]
    assert "steps" not in calls[2] and "grids" not in calls[2]  # the runner's defaults


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["pde", "--steps", "20,x"], "--steps must be comma-separated integers, got '20,x'"),
        (["pde", "--grids", "5,10", "--steps", "1,2,3"], "steps must give one count per grid"),
        (["pde", "--grids", "10,5"], "grids must not decrease"),
        (["scaling", "--grids", "5"], "--grids applies to pde only, not 'scaling'"),
        (["special", "--steps", "5"], "--steps applies to pde only, not 'special'"),
    ],
)
def test_cli_refuses_bad_grids_and_steps_in_one_line(tmp_path, capsys, argv, message):
    code, _, err = _cli(["paper", *argv, "--out", str(tmp_path)], capsys)
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "results.sqlite").exists()
