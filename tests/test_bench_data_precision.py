"""A trial's data precision: data sets are made in float64 and cast once to the trial's data dtype
(float64 for a float64 model, float32 otherwise), so a float64 trial is not capped by float32
rounding of its data, float32 trials see exactly the data they always had, and the keys say which."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from kanlab import datasets, train
from kanlab.bench import runner, tasks
from kanlab.bench.runner import SerialExecutor, run_trial, run_trials
from kanlab.bench.spec import DataSpec
from kanlab.bench.store import ResultStore
from kanlab.bench.sweep import Trial
from kanlab.bench.tasks import csv_task, get_task, load
from kanlab.config import FitConfig, KANConfig, MLPConfig

SPLITS = ("train_x", "train_y", "test_x", "test_y")
F32, F64 = torch.float32, torch.float64


def _same(a: datasets.Dataset, b: datasets.Dataset, *, meta: bool = True) -> bool:
    """Bit for bit: every tensor's dtype and values, and the meta (unless ``meta=False``)."""
    return (a.meta == b.meta or not meta) and all(
        getattr(a, f).dtype == getattr(b, f).dtype and torch.equal(getattr(a, f), getattr(b, f))
        for f in SPLITS
    )


def _not_float32(t: torch.Tensor) -> torch.Tensor:
    """Where float64 values ``t`` are not representable in float32."""
    return t.to(F32).to(F64) != t


def _todays_load(task, *, n_train=None, n_test=None, seed=0, dtype=None):
    """The loader before this change: the registry's (or from_csv's) default float32, whatever
    the trial's dtype."""
    if task.is_csv:
        return datasets.from_csv(task.csv_path, task.target, seed=seed, kind=task.kind)
    return datasets.get(task.name, n_train=n_train, n_test=n_test, seed=seed)


def _trial(model, *, n: int = 48, steps: int = 2, task: str = "paper/exp_sin_sq", seed: int = 0):
    fit = FitConfig(optimizer="lbfgs", steps=steps, log_every=steps, progress=False)
    data = DataSpec(n_train=n, n_test=n, seed=0)
    return Trial(task=get_task(task), model=model, fit=fit, seed=seed, data=data)


def _capture(monkeypatch) -> list:
    """Record the data each train.fit call trains on (then train as usual)."""
    seen: list = []
    real = train.fit

    def recording_fit(model, data, *args, **kwargs):
        seen.append(data)
        return real(model, data, *args, **kwargs)

    monkeypatch.setattr(train, "fit", recording_fit)
    return seen


def test_every_registered_set_in_float64_rounds_to_its_float32_bit_for_bit():
    # the premise of keeping float32 trials as they were: every builder computes in float64 and
    # casts at the end, so float64 data cast to float32 are the float32 data, meta included
    for name in datasets.names():
        full = datasets.get(name, n_train=16, n_test=16, dtype=F64)
        assert _same(full.to(F32), datasets.get(name, n_train=16, n_test=16)), name
        task = get_task(name)
        assert _same(load(task, n_train=16, n_test=16), datasets.get(name, n_train=16, n_test=16))


def test_a_float64_trials_data_are_the_float64_generation_bit_for_bit():
    trial = _trial(KANConfig(widths=(2, 1, 1), grid_size=3, dtype="float64"))
    assert trial.data_dtype == F64
    raw, prepared = runner._prepared(trial, {})
    generated = datasets.get("paper/exp_sin_sq", n_train=48, n_test=48, seed=0, dtype=F64)
    assert _same(raw, generated)
    assert bool(_not_float32(raw.train_y).any()) and bool(_not_float32(raw.train_x).any())
    for f in SPLITS:
        assert getattr(prepared.data, f).dtype == F64


def test_the_cache_holds_one_float64_copy_per_data_set():
    tasks._load_cached.cache_clear()
    task = get_task("paper/xy")
    wide = load(task, n_train=20, n_test=20, dtype=F64)
    narrow = load(task, n_train=20, n_test=20)  # float32: cast from the cached float64
    assert tasks._load_cached.cache_info().currsize == 1
    assert wide.train_x.dtype == F64 and narrow.train_x.dtype == F32
    again = load(task, n_train=20, n_test=20, dtype=F64)
    assert again.train_x is wide.train_x  # the cached tensors, not a copy per call
    with pytest.raises(TypeError, match=r"dtype must be a floating torch.dtype.*int64"):
        load(task, dtype=torch.int64)


def test_float32_trials_train_on_the_data_and_give_the_rows_they_did(monkeypatch):
    seen = _capture(monkeypatch)
    trials = [_trial(KANConfig(widths=(2, 1, 1), grid_size=3)),  # torch's default dtype
              _trial(MLPConfig(widths=(2, 4, 1), dtype="float32"))]  # fmt: skip
    with runner._one_torch_thread():
        rows = [run_trial(t) for t in trials]
        monkeypatch.setattr(runner, "load", _todays_load)
        before = [run_trial(t) for t in trials]
    assert len(seen) == 4
    for new, old in zip(seen[:2], seen[2:], strict=True):
        assert _same(new, old) and new.train_x.dtype == F32
    for new, old in zip(rows, before, strict=True):
        assert new["status"] == old["status"] == "ok", (new["error"], old["error"])
        for k in ("train_metric", "test_metric", "test_error", "params"):
            assert new[k] == old[k], k
        assert new["extra"]["stages"] == old["extra"]["stages"]
        assert new["extra"]["scaling"] == old["extra"]["scaling"]


def test_float32_keys_are_unchanged_and_float64_keys_differ():
    # literal keys that the code before this change gave (paper/exp_sin_sq, 64/32 rows, 3 LBFGS
    # steps, seed 0): float32 ones must stay; a float64 trial's must not be the old one (a store's
    # float64 rows computed on float32 data are not its results). They also change with the kanlab
    # version, TRAINING_SEMANTICS or GENERATOR_VERSION (see test_bench_sweep's stable keys).
    task = get_task("paper/exp_sin_sq")
    data = DataSpec(n_train=64, n_test=32, seed=0)
    fit = FitConfig(optimizer="lbfgs", steps=3, progress=False)

    def key(model) -> str:
        return Trial(task=task, model=model, fit=fit, seed=0, data=data).key

    kan, mlp = KANConfig(widths=(2, 1, 1), grid_size=5), MLPConfig(widths=(2, 4, 1))
    assert key(kan) == "be9399deb2545fd7b5a9d7ef38c401321aacdfa78bdf81809d283a9edd620ef9"
    assert key(kan.replace(dtype="float32")) == (
        "190d2a8eedfcdc5ea06fe9fe77dd9313220398e1b69131087ff8cab4ab81a8d4"
    )
    assert key(mlp) == "21491f6c9b7d742e05008053d8ac2d513ea20237c1f79850e226e929c22f5578"
    old64 = {
        "12d1884bc57505417a1219bea446af16a1a288534617b78cd7b9828aa9d6125e",  # KAN
        "56c0627574548ddd3c7d8ce0236c5c4c1d44da50837883f950484565097f7748",  # MLP
    }
    new64 = {key(kan.replace(dtype="float64")), key(mlp.replace(dtype="float64"))}
    assert not new64 & old64 and len(new64) == 2
    config = Trial(task=task, model=kan.replace(dtype="float64"), fit=fit, seed=0, data=data)
    assert config.config()["data"] == {"n_train": 64, "n_test": 32, "seed": 0,
                                       "precision": "float64"}  # fmt: skip
    plain = Trial(task=task, model=kan, fit=fit, seed=0, data=data).config()["data"]
    assert plain == {"n_train": 64, "n_test": 32, "seed": 0}


def test_a_csv_tasks_float64_trial_gets_the_files_float64_values(tmp_path: Path):
    # values with more digits than float32 holds: a float64 trial sees them as parsed
    rows = ["a,b,y"] + [f"{i / 7:.17g},{1 + i / 3:.17g},{math.exp(i / 11):.17g}" for i in range(40)]
    path = tmp_path / "d.csv"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    task = csv_task(path, "y")
    trial = Trial(task=task, model=KANConfig(widths=(2, 1, 1), grid_size=3, dtype="float64"),
                  fit=FitConfig(steps=1, progress=False), seed=0,
                  data=DataSpec(n_train=None, n_test=None, seed=0))  # fmt: skip
    raw, _ = runner._prepared(trial, {})
    parsed = datasets.from_csv(path, "y", seed=0, dtype=F64)  # (meta: its kind guessed, not given)
    assert _same(raw, parsed, meta=False) and bool(_not_float32(raw.train_y).any())
    values = {float(v) for line in rows[1:] for v in line.split(",")[2:]}
    assert set(raw.train_y[:, 0].tolist()) | set(raw.test_y[:, 0].tolist()) == values
    # and a float32 trial on it gets what it got before
    narrow = Trial(task=task, model=KANConfig(widths=(2, 1, 1), grid_size=3), fit=trial.fit,
                   seed=0, data=trial.data)  # fmt: skip
    assert _same(runner._prepared(narrow, {})[0], _todays_load(task, seed=0))


def test_run_trials_trains_a_float64_kan_on_unrounded_targets(tmp_path: Path, monkeypatch):
    seen = _capture(monkeypatch)
    loaded: list = []
    real_load = runner.load

    def recording_load(*args, **kwargs):
        loaded.append(real_load(*args, **kwargs))
        return loaded[-1]

    monkeypatch.setattr(runner, "load", recording_load)
    trial = _trial(KANConfig(widths=(2, 1, 1), grid_size=3, dtype="float64"), n=64, steps=3)
    with ResultStore(tmp_path / "r.sqlite") as store:
        summary = run_trials([trial], store, SerialExecutor())
        (row,) = store.rows()
    assert summary.ok == 1, row["error"]
    (data,) = seen  # what the model trained on: standardised float64 targets
    assert data.train_y.dtype == F64 and bool(_not_float32(data.train_y).all())
    (raw,) = loaded  # what it was scored against: the float64 generation itself
    y = raw.train_y
    assert y.dtype == F64 and bool(_not_float32(y).any())
    generated = datasets.get("paper/exp_sin_sq", n_train=64, n_test=64, seed=0, dtype=F64)
    assert _same(raw, generated)
    assert row["key"] == trial.key and row["config"]["data"]["precision"] == "float64"
    assert math.isfinite(row["test_metric"])
