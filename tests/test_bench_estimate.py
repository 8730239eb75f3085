"""The cost estimate of a sweep (kanlab.bench.estimate) and `kanlab compare`'s use of it (issue 19).

Unit tests check the model's arithmetic with a fake measurement and a fake clock; one slow test
checks the estimate from real measurements against the measured time of running the same trials;
CLI tests run the real command in a subprocess."""

from __future__ import annotations

import dataclasses
import itertools
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kanlab.bench.estimate import (
    Estimate,
    Shape,
    Throughput,
    calibrate,
    estimate,
    grid_updates,
    group_seconds,
    interpolate,
    makespan,
    shape_of,
    stages,
)
from kanlab.bench.sweep import expand, parse_sweep
from kanlab.config import FitConfig

SRC = str(Path(__file__).resolve().parents[1] / "src")

TINY = """
name = "{name}"
tasks = ["paper/xy"]
seeds = 2
[data]
n_train = 100
n_test = 100
[train]
steps = 3
[kan]
hidden = [[2]]
grids = [[3], [3, 5]]
[mlp]
depths = [1, 2]
"""


def _trials(seeds: int = 2):
    import tomllib

    spec = tomllib.loads(TINY.format(name="tiny").replace("seeds = 2", f"seeds = {seeds}"))
    return expand(parse_sweep(spec))


def _fake_cost(flops: int, grid: int, n_models: int) -> tuple[float, float]:
    """The fake's (step, update) seconds: linear in M, FLOPs and the grid size G."""
    return 0.01 * n_models + flops * 1e-6 + grid * 1e-3, 0.1 * n_models + grid * 0.01


def _fake_measure(calls: list):
    """:func:`_fake_cost` of the shape of the trial it is given (at its grid); records each call."""

    def measure(trial, n_models):
        calls.append((trial, n_models))
        s = shape_of(trial, n_models)
        return _fake_cost(s.flops, s.grid, n_models)

    return measure


# ----------------------------------------------------------------------------- arithmetic
def test_grid_updates_count_updates_and_extensions():
    # quick-suite kind: 15 steps per stage, updates at 0 and 10 of each of 3 stages, 2 extensions
    quick = FitConfig(steps=15, grid_update_every=10, stop_grid_update_step=50,
                      grid_schedule=(3, 5, 10))  # fmt: skip
    assert grid_updates(quick, "kan") == 2 * 3 + 2
    # paper-suite kind: 100 per stage, updates at 0..40 (stop 50) of 6 stages, 5 extensions
    paper = FitConfig(steps=100, grid_update_every=10, stop_grid_update_step=50,
                      grid_schedule=(3, 5, 10, 20, 50, 100))  # fmt: skip
    assert grid_updates(paper, "kan") == 5 * 6 + 5
    assert grid_updates(paper.replace(grid_update_every=0), "kan") == 5  # extensions only
    assert grid_updates(FitConfig(steps=7, stop_grid_update_step=None, grid_update_every=3),
                        "kan") == 3  # 0, 3, 6  # fmt: skip
    assert grid_updates(paper, "mlp") == 0


def test_makespan_packs_longest_first():
    assert makespan([3, 3, 2, 2, 2], 2) == 7  # LPT: {3,2,2} and {3,2}
    assert makespan([3, 3, 2, 2, 2], 1) == 12
    assert makespan([5, 1], 8) == 5  # more workers than jobs: the longest job
    with pytest.raises(ValueError, match="workers must be >= 1, got 0"):
        makespan([1.0], 0)


def _shape(flops: int, **kw) -> Shape:
    base = dict(family="kan", widths=(2, 5, 1), n_models=3, n_train=1000, optimizer="lbfgs",
                activation="", dtype="", adapted=True, flops=flops)  # fmt: skip
    return Shape(**{**base, **kw})


def test_interpolate_linear_in_flops_within_a_kind():
    pts = [Throughput(_shape(100), 1.0, 0.5, True), Throughput(_shape(300), 3.0, 0.5, True),
           Throughput(_shape(200, n_models=8), 99.0, 9.0, True)]  # another kind: ignored  # fmt: skip
    mid = interpolate(pts, _shape(200))
    assert mid.step_seconds == pytest.approx(2.0) and mid.update_seconds == pytest.approx(0.5)
    assert not mid.measured
    assert interpolate(pts, _shape(50)).step_seconds == pytest.approx(
        1.0
    )  # nearest, no extrapolation
    assert interpolate(pts, _shape(900)).step_seconds == pytest.approx(3.0)
    # a noisy measurement where more FLOPs cost less: never below the cheaper point
    noisy = [Throughput(_shape(100), 2.0, 0.0, True), Throughput(_shape(300), 1.0, 0.0, True)]
    assert interpolate(noisy, _shape(200)).step_seconds == pytest.approx(2.0)
    with pytest.raises(ValueError, match=r"no measured shape of the kind of kan\[2,5,1\] x4"):
        interpolate(pts, _shape(200, n_models=4))


def test_interpolate_in_grid_size_between_measured_grids():
    pts = [Throughput(_shape(100, grid=3), 1.0, 0.1, True),
           Throughput(_shape(100, grid=23), 3.0, 2.1, True),
           Throughput(_shape(300, grid=3), 2.0, 0.2, True),
           Throughput(_shape(300, grid=23), 6.0, 4.2, True)]  # fmt: skip
    assert interpolate(pts, _shape(300, grid=23)).step_seconds == pytest.approx(6.0)  # that grid
    mid = interpolate(pts, _shape(200, grid=13))  # FLOPs at each grid (1.5, 4.5), then G
    assert mid.step_seconds == pytest.approx(3.0) and mid.update_seconds == pytest.approx(1.65)
    assert interpolate(pts, _shape(100, grid=200)).step_seconds == pytest.approx(3.0)  # nearest
    assert _shape(100, grid=23).label == "kan[2,5,1] G=23 x3"


def test_stages_split_steps_and_updates_by_grid():
    fit = FitConfig(steps=100, grid_update_every=10, stop_grid_update_step=50,
                    grid_schedule=(3, 5, 10), restarts=1, restart_steps=20)  # fmt: skip
    kan = _trials(seeds=1)[0]
    kan = dataclasses.replace(kan, fit=fit)
    assert stages(kan) == [(3, 100 + 40, 5), (5, 100, 6), (10, 100, 6)]
    assert sum(s for _, s, _ in stages(kan)) == kan.total_steps
    assert sum(u for _, _, u in stages(kan)) == grid_updates(fit, "kan")
    mlp = next(t for t in _trials(seeds=1) if t.family == "mlp")
    assert stages(mlp) == [(0, mlp.total_steps, 0)]
    with pytest.raises(ValueError, match=r"no cost for grid size 5 \(have \[3\]\)"):
        group_seconds([kan], {3: Throughput(_shape(100, grid=3), 1.0, 1.0, True)})


def test_later_stages_are_charged_at_their_own_grid():
    """A schedule's later stages cost what a step and an update at their grid cost, measured at
    that grid: a fake whose steps cost 10x more from G = 50 on (as the fused kernel's limit does)
    charges the G = 3 stage 1x and the G = 50, 100 stages 10x (charging every stage at the first
    grid, the estimate read 3x under here)."""
    kan = _trials(seeds=1)[0]
    kan = dataclasses.replace(kan, fit=kan.fit.replace(steps=10, grid_update_every=0,
                                                       grid_schedule=(3, 50, 100)))  # fmt: skip
    seen = []

    def measure(trial, n_models):
        g = trial.model.grid_size  # the model measured is built at the stage's grid
        seen.append((g, trial.fit.grid_schedule))
        return (1.0 if g < 50 else 10.0), g / 10

    est = estimate([kan], workers=1, batched=False, measure=measure)
    # 10 steps at 1 s, then 10 at 10 s and an extension (5 s) and 10 at 10 s and one (10 s)
    assert est.core_seconds == pytest.approx(10 * 1 + (10 * 10 + 5) + (10 * 10 + 10))
    assert sorted(seen) == [(3, None), (50, None), (100, None)]
    assert est.measured == 3 and {t.shape.grid for t in est.throughput} == {3, 50, 100}


def test_a_representative_is_measured_at_grids_only_other_widths_train_at():
    base = _trials(seeds=1)[0]
    small = dataclasses.replace(base, model=base.model.replace(widths=(2, 1, 1)),
                                fit=base.fit.replace(grid_schedule=(3,)))  # fmt: skip
    mid = dataclasses.replace(base, model=base.model.replace(widths=(2, 3, 1)),
                              fit=base.fit.replace(grid_schedule=(3, 5, 20)))  # fmt: skip
    big = dataclasses.replace(base, model=base.model.replace(widths=(2, 5, 1)),
                              fit=base.fit.replace(grid_schedule=(3, 5)))  # fmt: skip
    calls: list = []
    est = estimate([small, mid, big], workers=1, batched=False, measure=_fake_measure(calls))
    got = sorted((t.model.widths[1], t.model.grid_size) for t, _ in calls)
    assert got == [(1, 3), (1, 5), (1, 20), (5, 3), (5, 5), (5, 20)]
    assert est.core_seconds == pytest.approx(_by_hand([small, mid, big], 1))


def _by_hand(trials, n_models: int) -> float:
    """The fake measurement's cost of ``trials`` run in groups of ``n_models``, stage by stage at
    each stage's grid (its step time is linear in FLOPs, so interpolating between measured
    shapes is exact)."""
    total = 0.0
    flops = {t: shape_of(t, n_models).flops for t in trials}
    for t in trials:
        for grid, steps, updates in stages(t):
            step, update = _fake_cost(flops[t], grid, n_models)
            total += (steps * step + updates * update) / n_models  # the trial's share of its group
    return total


def test_estimate_extrapolates_each_group_from_the_measured_step():
    trials = _trials()  # 2 KAN configs + their MLPs, 2 seeds each
    calls: list = []
    clock = itertools.count(start=100.0, step=2.5)  # a fake clock: 2.5 s between readings
    est = estimate(trials, workers=2, batched=True, measure=_fake_measure(calls),
                   timer=lambda: next(clock))  # fmt: skip
    assert isinstance(est, Estimate) and est.batched and est.trials == len(trials)
    assert est.groups == len(trials) // 2  # the two seeds of each configuration share a batch
    assert all(n == 2 for _, n in calls) and all(tp.shape.n_models == 2 for tp in est.throughput)
    # one kind of KAN, one of each MLP depth: the KAN measured at G = 3 and at G = 5 (its
    # extension's stage), built at that grid
    kan_calls = sorted(t.model.grid_size for t, _ in calls if t.family == "kan")
    assert kan_calls == [3, 5]
    assert est.calibration_seconds == 2.5  # one reading before and one after the measurements
    assert est.core_seconds == pytest.approx(_by_hand(trials, 2))
    assert est.core_seconds / 2 <= est.wall_seconds <= est.core_seconds
    # the KANs: 3 steps x 1 stage (an update at step 0) and 3 x 2 stages (2 updates, 1 extension)
    kan = [t for t in trials if t.family == "kan" and t.seed == 0]
    assert sorted((t.total_steps, grid_updates(t.fit, "kan")) for t in kan) == [(3, 1), (6, 3)]


def test_unbatched_estimate_is_one_fit_per_trial_and_the_cache_is_reused():
    trials = _trials()
    calls: list = []
    cache: dict = {}
    est = estimate(trials, workers=1, batched=False, measure=_fake_measure(calls), cache=cache)
    assert est.groups == est.trials == len(trials) and not est.batched
    assert all(n == 1 for _, n in calls) and len(calls) == est.measured == len(cache)
    # one worker: wall time is the sum; each trial: steps x step + updates x update (M = 1)
    assert est.wall_seconds == pytest.approx(est.core_seconds)
    assert est.core_seconds == pytest.approx(_by_hand(trials, 1))
    tp = est.throughput[0]  # the first KAN's (one stage, G = 3)
    assert tp.shape.grid == 3 and trials[0].grid_schedule == (3,)
    assert group_seconds([trials[0]], tp) == pytest.approx(_by_hand(trials[:1], 1))
    again = estimate(trials, workers=1, batched=False, measure=_fake_measure(calls), cache=cache)
    assert len(calls) == est.measured  # nothing measured twice
    assert again.calibration_seconds == 0.0 and again.core_seconds == est.core_seconds


def test_only_representatives_of_a_kind_are_measured():
    # five shapes of one kind: the cheapest and the dearest are measured, the others interpolated
    import dataclasses

    base = _trials(seeds=1)[0]  # a KAN trial
    hidden = [1, 2, 3, 4, 5]
    trials = [dataclasses.replace(base, model=base.model.replace(widths=(2, h, 1)))
              for h in hidden]  # fmt: skip
    calls: list = []
    est = estimate(trials, workers=1, batched=False, measure=_fake_measure(calls))
    assert sorted(t.model.widths[1] for t, _ in calls) == [1, 5]
    assert est.measured == 2 and len(est.throughput) == 5
    tp = {t.shape.widths[1]: t for t in est.throughput}
    assert [tp[h].measured for h in hidden] == [True, False, False, False, True]
    steps = [tp[h].step_seconds for h in hidden]
    assert steps == sorted(steps) and steps[0] < steps[-1]
    # linear in FLOPs between the two: exact for the fake's linear cost
    assert tp[3].step_seconds == pytest.approx(_fake_cost(tp[3].shape.flops, 3, 1)[0])


def test_estimate_refuses_bad_options():
    with pytest.raises(ValueError, match="workers must be an int >= 1, got 0"):
        estimate(_trials(), workers=0, batched=True, measure=_fake_measure([]))
    with pytest.raises(ValueError, match="steps must be an int >= 1, got 0"):
        estimate(_trials(), workers=1, batched=True, steps=0, measure=_fake_measure([]))


def test_line_names_trials_groups_hours_and_calibration():
    est = Estimate(trials=15012, groups=5004, batched=True, workers=2, core_seconds=9.8 * 3600,
                   wall_seconds=4.9 * 3600, calibration_seconds=3.24, measured=18,
                   throughput=(), method="")  # fmt: skip
    assert est.line() == (
        "estimate: 15,012 trials in 5,004 batched groups, ~9.8 core-hours (~4.9 h on 2 workers), "
        "from throughput measured just now (3.2 s, 18 of 0 shapes)"
    )


# ----------------------------------------------------------------------------- real measurement
@pytest.mark.slow
def test_estimate_is_within_a_factor_3_of_running_the_trials():
    """The estimate from real calibration vs. the measured CPU time of the same trials run one
    after the other in this thread (the runner's single-trial path, one torch thread)."""
    import dataclasses

    import torch

    from kanlab.bench.runner import run_trial

    trials = [t for t in _trials() if t.total_steps > 3]  # the grid-extension KAN and its MLPs
    trials = [dataclasses.replace(t, fit=t.fit.replace(steps=8 if t.family == "kan" else 16))
              for t in trials]  # 16 steps a trial  # fmt: skip
    est = estimate(trials, workers=1, batched=False)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = time.thread_time()  # core seconds, as the estimate's (a busy machine's wall
        rows = [run_trial(t) for t in trials]  # time would be several times more)
        actual = time.thread_time() - start
    finally:
        torch.set_num_threads(before)
    assert all(r["status"] == "ok" for r in rows), rows
    ratio = est.core_seconds / actual
    assert 1 / 3 <= ratio <= 3, (est.core_seconds, actual, est.method)


# ----------------------------------------------------------------------------- the CLI
def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.run([sys.executable, "-m", "kanlab", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


@pytest.mark.slow
def test_compare_estimate_only_prints_and_trains_nothing(tmp_path):
    sweep = tmp_path / "tiny.toml"
    sweep.write_text(TINY.format(name="tiny"))
    out = tmp_path / "runs"
    r = _cli("compare", "--suite", str(sweep), "--estimate-only", "--workers", "2",
             "--out", str(out), cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    n = len(_trials())
    line = next(x for x in r.stderr.splitlines() if x.startswith("estimate:"))
    assert line.startswith(f"estimate: {n} trials in {n // 2} batched groups, ~")
    assert "on 2 workers), from throughput measured just now (" in line
    assert "unbatched" not in r.stderr  # only the paper suite shows both
    assert not (out / "tiny" / "results.sqlite").exists() and "| best KAN |" not in r.stdout


@pytest.mark.slow
def test_compare_prints_the_estimate_before_training_and_not_when_done(tmp_path):
    sweep = tmp_path / "paper.toml"  # named like the paper suite: the unbatched one is printed too
    sweep.write_text(TINY.format(name="paper").replace("seeds = 2", "seeds = 1"))
    args = ("compare", "--suite", str(sweep), "--executor", "serial", "--no-progress",
            "--out", str(tmp_path / "runs"))  # fmt: skip
    r = _cli(*args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    est = [i for i, x in enumerate(lines) if x.startswith("estimate:")]
    done = next(i for i, x in enumerate(lines) if " trials: 0 already done" in x)
    assert len(est) == 2 and est[-1] < done, r.stderr  # both estimates come before the training
    assert "batched groups" in lines[est[0]] and "unbatched fits" in lines[est[1]]
    assert re.search(r" \(unbatched/batched: \d+\.\dx\)$", lines[est[1]]), lines[est[1]]
    again = _cli(*args, cwd=tmp_path)  # everything finished: nothing to estimate
    assert again.returncode == 0 and "estimate:" not in again.stderr, again.stderr
    only = _cli(*args, "--estimate-only", cwd=tmp_path)
    n = len(_trials(seeds=1))
    assert only.returncode == 0
    assert f"estimate: nothing to run (all {n} trials finished)" in only.stderr


def test_a_failing_calibration_is_one_line(tmp_path, monkeypatch, capsys):
    import kanlab.bench.estimate as est_mod
    from kanlab.cli import main

    def broken(trial, n_models, **kw):
        raise RuntimeError("no kernels here")

    monkeypatch.setattr(est_mod, "calibrate", broken)
    sweep = tmp_path / "tiny.toml"
    sweep.write_text(TINY.format(name="tiny"))
    with pytest.raises(SystemExit) as exc:
        main(["compare", "--suite", str(sweep), "--estimate-only", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert "Error: cannot estimate the run: RuntimeError: no kernels here" in err


def test_calibrate_times_steps_and_updates_with_its_cpu_clock():
    """calibrate reads its ``clock`` (CPU time by default, not the History's wall time) around the
    grid update and around the whole fit: a fake clock that advances 1 s per reading gives
    exactly 1 s per update and 1 s / steps per step."""
    ticks = itertools.count()
    kan = next(t for t in _trials() if t.family == "kan")
    step, update = calibrate(kan, 1, steps=4, clock=lambda: float(next(ticks)))
    assert (step, update) == (0.25, 1.0)
    mlp = next(t for t in _trials() if t.family == "mlp")
    step, update = calibrate(mlp, 2, steps=2, clock=lambda: float(next(ticks)))
    assert (step, update) == (0.5, 0.0)


def test_restart_steps_are_counted_and_not_timed_as_one_step(monkeypatch):
    """A trial with restarts trains ``(restarts + 1) * restart_steps`` more steps (its
    ``total_steps`` counts them, so the estimate does), and calibrate times plain steps: its
    fit runs without restarts (else one "step" would be 50 steps: the estimate read 0.6 core-hours
    for a sweep that trained in 2 minutes)."""
    import tomllib

    import kanlab.train
    import kanlab.train.batch_loop

    text = TINY.format(name="r").replace("steps = 3", "steps = 3\nrestarts = 4\nrestart_steps = 10")
    trials = expand(parse_sweep(tomllib.loads(text)))
    kan = next(t for t in trials if t.family == "kan" and t.fit.n_stages == 2)
    assert kan.total_steps == 3 * 2 + 5 * 10
    mlp = next(t for t in trials if t.family == "mlp" and t.group == kan.label)
    assert (mlp.fit.restarts, mlp.fit.restart_steps) == (4, 10)  # the MLPs train the same loop
    assert mlp.total_steps == kan.total_steps  # ... with the same budget
    seen = []
    real_fit, real_batch = kanlab.train.fit, kanlab.train.batch_loop.fit_batch

    def spy(real):
        def run(model, data, cfg, **kw):
            seen.append(cfg.restarts)
            return real(model, data, cfg, **kw)

        return run

    monkeypatch.setattr(kanlab.train, "fit", spy(real_fit))
    monkeypatch.setattr(kanlab.train.batch_loop, "fit_batch", spy(real_batch))
    calibrate(kan, 1, steps=1)
    calibrate(mlp, 2, steps=1)
    assert seen == [0, 0]
