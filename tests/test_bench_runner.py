"""The runner: one trial end to end, failure/divergence recording, resume, executors (incl. Dask)."""

from __future__ import annotations

import math

import pytest

import kanlab as kl
from kanlab import train
from kanlab.bench import runner
from kanlab.bench.groups import group_trials
from kanlab.bench.runner import (
    SerialExecutor,
    make_executor,
    run_trial,
    run_trial_group,
    run_trials,
)
from kanlab.bench.store import ResultStore
from kanlab.bench.sweep import expand, parse_sweep


def _serial_group_errors(trials) -> dict[str, float]:
    """key -> test error of each trial, its group trained in this process on one torch thread, as
    every executor's trials run (the fused batch kernels need it; other paths round otherwise)."""
    with runner._one_torch_thread():
        return {t.key: r["test_error"] for g in group_trials(trials)
                for t, r in zip(g, run_trial_group(g), strict=True)}  # fmt: skip


def _trials(**over):
    spec = {
        "name": "tiny", "tasks": ["paper/xy"], "seeds": 2,
        "data": {"n_train": 48, "n_test": 48}, "train": {"steps": 2},
        "kan": {"hidden": [[2]], "grids": [[3]]}, "mlp": {"depths": [1]},
    }  # fmt: skip
    spec.update(over)
    return expand(parse_sweep(spec))


def test_run_trial_trains_and_measures():
    trials = _trials(kan={"hidden": [[2]], "grids": [[3, 4]]}, seeds=1, train={"total_steps": 4})
    for trial in trials:
        row = run_trial(trial)
        assert row["status"] == "ok", row["error"]
        model = kl.KAN([2, 2, 1], grid_size=4) if trial.family == "kan" else kl.MLP(trial.widths)
        assert row["params"] == kl.count_params(model)  # counted after grid extension
        assert row["flops_dense"] == kl.count_flops(model, mode="dense")
        assert row["metric"] == "rmse" and row["test_error"] == row["test_metric"] > 0
        assert math.isfinite(row["time_per_step"]) and row["wall_time"] >= row["time_per_step"]
        assert row["steps"] == 4
        if trial.family == "kan":  # one record per grid stage
            assert [s["grid"] for s in row["extra"]["stages"]] == [3, 4]


def test_divergence_and_errors_are_recorded_not_raised(monkeypatch):
    trial = _trials(seeds=1)[0]

    def nan_fit(*args, **kwargs):
        raise train.NonFiniteLossError("non-finite training loss (nan) at step 7")

    monkeypatch.setattr(train, "fit", nan_fit)
    row = run_trial(trial)
    assert row["status"] == "diverged" and "step 7" in row["error"]

    def broken_fit(*args, **kwargs):
        raise RuntimeError("out of cheese")

    monkeypatch.setattr(train, "fit", broken_fit)
    row = run_trial(trial)
    assert row["status"] == "failed" and "out of cheese" in row["error"]


def _fake(trial):
    if trial.family == "mlp" and trial.seed == 1:
        raise OSError("worker lost")  # as if the executor failed, not the trial
    return {"status": "ok", "test_error": 0.1 + trial.seed, "params": 10, "metric": "rmse"}


def test_run_trials_records_everything_and_resumes(tmp_path):
    trials = _trials()
    assert len(trials) == 4
    with ResultStore(tmp_path / "r.sqlite") as store:
        summary = run_trials(trials, store, SerialExecutor(), trial_fn=_fake)
        assert (summary.ok, summary.failed, summary.skipped) == (3, 1, 0)
        rows = {r["key"]: r for r in store.rows()}
        assert set(rows) == {t.key for t in trials}
        for t in trials:  # each row keeps the trial's configs in full
            extra = rows[t.key]["extra"]
            assert kl.FitConfig.from_dict(extra["fit_config"]) == t.fit
            assert type(t.model).from_dict(extra["model_config"]) == t.model
        failed = [r for r in rows.values() if r["status"] == "failed"]
        assert len(failed) == 1 and "OSError: worker lost" in failed[0]["error"]

        calls = []

        def counting(trial):
            calls.append(trial.key)
            return {"status": "ok", "test_error": 0.5}

        summary = run_trials(trials, store, SerialExecutor(), trial_fn=counting)
        assert summary.skipped == 3 and len(calls) == 1  # only the failed trial is re-run
        assert len(store) == 4 and all(r["status"] == "ok" for r in store.rows())


def test_unknown_executor_lists_valid_ones():
    with pytest.raises(ValueError, match=r"unknown executor 'gpu-farm'; valid: local, serial"):
        with make_executor("gpu-farm"):
            pass


@pytest.mark.slow
def test_dask_local_cluster(tmp_path):
    pytest.importorskip("distributed")
    trials = _trials()
    with make_executor("dask-local", workers=2) as ex, ResultStore(tmp_path / "r.sqlite") as store:
        summary = run_trials(trials, store, ex)
        assert summary.ok == len(trials), [r["error"] for r in store.rows()]
        # batched on Dask too (the 2 seeds of each configuration), and the results equal a serial
        # run's of the same groups: same data, same seeds, deterministic CPU training
        serial = _serial_group_errors(trials)
        for row in store.rows():
            assert row["extra"]["batch"]["size"] == 2 and "fallback" not in row["extra"]["batch"]
            assert row["test_error"] == pytest.approx(serial[row["key"]], rel=1e-5)


@pytest.mark.slow
def test_local_process_pool(tmp_path):
    trials = _trials(seeds=1)
    with make_executor("local", workers=1) as ex, ResultStore(tmp_path / "r.sqlite") as store:
        summary = run_trials(trials, store, ex)
        assert summary.ok == len(trials) == 2, [r["error"] for r in store.rows()]
        serial = {t.key: run_trial(t)["test_error"] for t in trials}  # same result in-process
        for row in store.rows():
            assert row["test_error"] == pytest.approx(serial[row["key"]], rel=1e-5)


@pytest.mark.slow
def test_local_process_pool_batched(tmp_path):
    trials = _trials()  # 2 configurations x 2 seeds: two batches of 2 on two workers
    with make_executor("local", workers=2) as ex, ResultStore(tmp_path / "r.sqlite") as store:
        summary = run_trials(trials, store, ex)
        assert summary.ok == len(trials) == 4, [r["error"] for r in store.rows()]
        serial = _serial_group_errors(trials)
        for row in store.rows():
            assert row["extra"]["batch"]["size"] == 2 and "fallback" not in row["extra"]["batch"]
            assert row["test_error"] == pytest.approx(serial[row["key"]], rel=1e-5)


@pytest.mark.slow
def test_dask_scheduler_address(tmp_path):
    distributed = pytest.importorskip("distributed")
    import logging

    import torch

    threads = torch.get_num_threads()
    cluster = distributed.LocalCluster(
        n_workers=1, threads_per_worker=2, processes=False, protocol="tcp",
        dashboard_address=None, silence_logs=logging.ERROR,
    )  # fmt: skip
    try:
        address = cluster.scheduler_address
        assert address.startswith("tcp://")
        trials = _trials(seeds=1)
        spec = "dask://" + address[len("tcp://") :]
        with make_executor(spec) as ex, ResultStore(tmp_path / "r.sqlite") as store:
            summary = run_trials(trials, store, ex)
            assert summary.ok == len(trials) == 2, [r["error"] for r in store.rows()]
    finally:
        cluster.close()
        torch.set_num_threads(threads)  # its worker threads live in this process


def test_unreachable_dask_scheduler_is_reported():
    pytest.importorskip("distributed")
    with pytest.raises(ValueError, match="cannot reach the Dask scheduler at tcp://127.0.0.1:9"):
        with make_executor("dask://127.0.0.1:9", connect_timeout=1):
            pass


class _RecordingExecutor:
    """Runs each submission at once in this process and records the order (a stand-in pool)."""

    def __init__(self) -> None:
        self.submitted: list = []

    def submit(self, fn, /, *args, **kwargs):
        from concurrent.futures import Future

        self.submitted.append(args[0])
        fut: Future = Future()
        fut.set_result(fn(*args, **kwargs))
        return fut


def test_a_pool_gets_the_groups_longest_first(tmp_path, monkeypatch):
    from kanlab.bench.groups import group_cost

    trials = _trials(kan={"hidden": [[1], [4]], "grids": [[3]]}, mlp={"depths": [1]})
    monkeypatch.setattr(runner, "warm_executor", lambda *a, **k: None)
    executor = _RecordingExecutor()

    def fake_group(group):
        return [{"status": "ok", "test_error": 0.0} for _ in group]

    with ResultStore(tmp_path / "r.sqlite") as store:
        run_trials(trials, store, executor, group_fn=fake_group)
    costs = [group_cost(g) for g in executor.submitted]
    assert len(costs) == len(group_trials(trials)) >= 3
    assert costs == sorted(costs, reverse=True) and costs[0] > costs[-1]
