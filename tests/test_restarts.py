"""Tests for kanlab.train.restarts.best_of_starts: the kept start is the one with the lowest training
loss, each start is exactly the plain fit of its seed, and bad input is refused by name."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import kanlab as kl
from kanlab import datasets
from kanlab.train import NonFiniteLossError
from kanlab.train.restarts import StartsRecord, best_of_starts

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

OPTS = {"steps": 4, "progress": False}


def data() -> datasets.Dataset:
    def f(x: torch.Tensor) -> torch.Tensor:
        return torch.exp(torch.sin(torch.pi * x[:, 0]) + x[:, 1] ** 2)

    return datasets.from_function(f, 2, n_train=60, n_test=60, seed=0, dtype=torch.float64)


def build(seed: int) -> kl.KAN:
    return kl.KAN([2, 1, 1], grid_size=3, seed=seed, dtype=torch.float64)


def rmse(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float(torch.sqrt(torch.mean((model(x) - y) ** 2)))


def test_keeps_the_start_with_the_lowest_training_loss_and_each_start_is_its_plain_fit():
    ds = data()
    seeds = [3, 0, 7]
    model, history, record = best_of_starts(build, ds, seeds=seeds, **OPTS)
    # oracle: every start trained on its own with fit, as a user would
    alone = []
    for s in seeds:
        m = build(s)
        alone.append(kl.fit(m, ds, **OPTS).train_loss[-1])
    assert record.seeds == tuple(seeds)
    assert list(record.train_loss) == alone  # bit for bit: a CPU fit repeats
    assert len(set(alone)) == len(alone)  # the starts differ, so the choice matters
    assert record.chosen == alone.index(min(alone))
    assert record.chosen_seed == seeds[record.chosen]
    assert history.train_loss[-1] == min(alone)
    assert rmse(model, ds.train_x, ds.train_y) == pytest.approx(min(alone), rel=1e-12)


def test_one_seed_is_fit_of_that_seed():
    ds = data()
    model, history, record = best_of_starts(build, ds, seeds=[5], **OPTS)
    plain = build(5)
    plain_history = kl.fit(plain, ds, **OPTS)
    assert record == StartsRecord((5,), (plain_history.train_loss[-1],), 0)
    assert history.train_loss == plain_history.train_loss
    for (name, a), (_, b) in zip(model.state_dict().items(), plain.state_dict().items(),
                                 strict=True):  # fmt: skip
        assert torch.equal(a, b), name


def test_ties_keep_the_first_start():
    ds = data()
    built: list[kl.KAN] = []

    def same(seed: int) -> kl.KAN:  # every start the same model: equal losses
        built.append(build(0))
        return built[-1]

    model, _, record = best_of_starts(same, ds, seeds=[4, 2, 9], **OPTS)
    assert model is built[0] and len(built) == 3
    assert record.train_loss[0] == record.train_loss[1] == record.train_loss[2]
    assert record.chosen == 0 and record.chosen_seed == 4


def _diverging(seed: int) -> kl.MLP:
    mlp = kl.MLP([2, 3, 1], seed=seed, dtype=torch.float64)
    if seed % 2 == 0:
        with torch.no_grad():
            next(mlp.parameters()).fill_(math.inf)  # the first layer's weights
    return mlp


def test_a_diverging_start_counts_as_infinitely_bad_and_all_diverging_raises():
    ds = data()
    _, _, record = best_of_starts(_diverging, ds, seeds=[0, 1, 2], **OPTS)
    assert record.train_loss[0] == math.inf and record.train_loss[2] == math.inf
    assert math.isfinite(record.train_loss[1]) and record.chosen == 1
    with pytest.raises(NonFiniteLossError):
        best_of_starts(_diverging, ds, seeds=[0, 2], **OPTS)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"seeds": []}, ValueError, "seeds must not be empty"),
        ({"seeds": [1, 2, 1]}, ValueError, r"seeds must be distinct.*\(1, 2, 1\)"),
        ({"seeds": [0, -1]}, ValueError, r"seeds\[1\] must be >= 0, got -1"),
        ({"seeds": 3}, TypeError, "seeds must be a sequence of ints, got 3"),
        ({"seeds": [0], "build": 5}, TypeError, "build must be a callable"),
        ({"seeds": [0], "build": lambda s: "model"}, TypeError, r"build\(0\) must return .* str"),
        ({"seeds": [0], "stepz": 3}, TypeError, "unknown option.*'stepz'"),
    ],
)
def test_bad_input_is_refused_by_name(kwargs, error, match):
    kwargs = {"build": build, **kwargs}
    with pytest.raises(error, match=match):
        best_of_starts(kwargs.pop("build"), data(), **kwargs, progress=False)


@pytest.mark.slow
def test_exp_sin_4d_benchmark_runs_end_to_end_at_a_tiny_size(tmp_path):
    """benchmarks/exp_sin_4d.py (the recipe: best of starts, grid schedule, MLPs, Pareto front) on
    100 points, 2 starts of 3 steps, grids 3 and 5 of 3 steps, one MLP width."""
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "exp_sin_4d.json"
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    cmd = [sys.executable, str(root / "benchmarks" / "exp_sin_4d.py"), "--seeds", "2",
           "--starts", "2", "--start-steps", "3", "--steps", "3", "--grids", "3,5",
           "--mlp-widths", "4", "--n-train", "100", "--margin-grids", "5", "--grid-margin",
           "0.25", "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    runs = result["kan"]
    assert [r["seed"] for r in runs] == [0, 1]
    for r in runs:
        # seed s tries the initialisations 2s, 2s+1 and keeps the lowest training loss
        assert [s["seed"] for s in r["starts"]] == [2 * r["seed"], 2 * r["seed"] + 1]
        best = min(r["starts"], key=lambda s: s["train_rmse"])
        assert r["chosen_seed"] == best["seed"]
        assert [(s["stage"], s["grid"]) for s in r["stages"]] == [
            ("starts", 3),
            ("grid", 3),
            ("grid", 5),
        ]
        assert r["stages"][0]["train_rmse"] == pytest.approx(best["train_rmse"], rel=1e-9)
        assert r["stages"][1]["params"] < r["stages"][2]["params"]
        # G=5 extends without data onto the G=3 grid range widened by 25% each side and keeps it
        assert [s["margin"] for s in r["stages"][1:]] == [0.0, 0.25]
        ranges = r["stages"][1]["grid_ranges"], r["stages"][2]["grid_ranges"]
        for before, after in zip(*ranges, strict=True):
            for (lo, hi), (lo2, hi2) in zip(before, after, strict=True):
                assert lo2 == pytest.approx(lo - 0.25 * (hi - lo), abs=1e-12)
                assert hi2 == pytest.approx(hi + 0.25 * (hi - lo), abs=1e-12)
        assert all(math.isfinite(s["test_rmse"]) and s["wall_s"] >= 0 for s in r["stages"])
        assert len(r["chosen"]["pairs"]) == 2 and r["chosen"]["psi_turns"] >= 0
    assert sorted(m["params"] for m in result["mlp"]) == [45, 45, 65, 65]
    for f in result["front"]:  # the front row's verdict is what its numbers say
        tests = [r["stages"][1 + [3, 5].index(f["grid"])]["test_rmse"] for r in runs]
        assert f["kan_median_test"] == pytest.approx(sorted(tests)[0] / 2 + sorted(tests)[1] / 2)
        smaller = [m for m in result["mlp"] if m["params"] <= f["params"]]
        assert f["mlp_front_test"] == min(m["test_rmse"] for m in smaller)
        assert f["below_front"] == (f["kan_median_test"] < f["mlp_front_test"])
    assert "KAN vs the MLP Pareto front" in proc.stdout
