"""Issue 18, findings 3, 4 and 10 (tiny CSV): the units of the data never pick the winner; what a
CSV's target is (regression or classification) is chosen in the open and can be overridden; a CSV
too small to compare on is refused before any trial runs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

import kanlab as kl
from kanlab import bench, datasets
from kanlab.bench.prepare import measure, prepare, regression_errors, standardize_targets
from kanlab.bench.store import ResultStore


def _write_csv(path: Path, x: np.ndarray, y: np.ndarray) -> Path:
    rows = (",".join(repr(float(v)) for v in (*r, t)) for r, t in zip(x, y, strict=True))
    path.write_text("x1,x2,y\n" + "\n".join(rows) + "\n")
    return path


def _inputs(n: int = 250, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, size=(n, 2))


def _f(x: np.ndarray) -> np.ndarray:
    return np.exp(np.sin(np.pi * x[:, 0]) + x[:, 1] ** 2)  # the paper's exp_sin_sq


# ------------------------------------------------------------------ finding 3: units and winners
def _compare(tmp_path: Path, tag: str, y: np.ndarray, x: np.ndarray) -> dict[str, list[dict]]:
    """A tiny KAN-vs-MLP sweep (2 seeds, a few LBFGS steps) on a CSV; rows by family."""
    task = bench.csv_task(_write_csv(tmp_path / f"{tag}.csv", x, y), "y")
    sweep = bench.parse_sweep({
        "name": tag, "tasks": [task.name], "seeds": 2, "train": {"steps": 5},
        "kan": {"hidden": [[5]], "grids": [[3, 5]]}, "mlp": {"depths": [2]},
    })  # fmt: skip
    _, db = bench.run_sweep(sweep, tmp_path / tag, tasks=[task], executor="serial")
    with ResultStore(db) as store:
        rows = store.rows()
    assert [r["status"] for r in rows] == ["ok"] * 4, [r["error"] for r in rows]
    return {fam: [r for r in rows if r["family"] == fam] for fam in ("kan", "mlp")}


def _mean(rows: list[dict], key: str) -> float:
    return float(np.mean([r[key] if key in r else r["extra"][key] for r in rows]))


@pytest.mark.slow
def test_units_do_not_pick_the_winner(tmp_path, one_thread):
    # The same function with targets y, 100 y and y + 1000: on the old code the MLP/KAN ratio flipped
    # (x100) and the errors grew ~50x (+1000) since nothing was standardised.
    x = _inputs()
    y = _f(x)
    runs = {tag: _compare(tmp_path, tag, t, x)
            for tag, t in (("base", y), ("x100", 100 * y), ("p1000", y + 1000))}  # fmt: skip
    unit = {"base": 1.0, "x100": 100.0, "p1000": 1.0}
    mean = {
        tag: {fam: _mean(rows[fam], "test_metric") for fam in rows} for tag, rows in runs.items()
    }
    ratio = {tag: m["kan"] / m["mlp"] for tag, m in mean.items()}
    for tag, r in ratio.items():  # the same winner by about the same factor
        assert (r < 1) == (ratio["base"] < 1), f"{tag}: KAN/MLP error ratio {r:.3g} vs {ratio}"
        assert abs(math.log(r / ratio["base"])) < math.log(1.25), f"{tag}: {ratio}"
    for tag, m in mean.items():  # errors in the data's own units: 100 y has 100x the RMSE of y
        for fam, err in m.items():
            assert err / unit[tag] == pytest.approx(mean["base"][fam], rel=0.25), (tag, fam)
    # the normalised RMSE does not see the units, and is the RMSE over the training targets' std
    std = float(np.std(y))  # (the whole column's: close to the training split's)
    for tag, rows in runs.items():
        for fam in ("kan", "mlp"):
            nrmse = _mean(rows[fam], "test_nrmse")
            assert nrmse == pytest.approx(_mean(runs["base"][fam], "test_nrmse"), rel=0.25)
            assert nrmse == pytest.approx(_mean(rows[fam], "test_metric") / unit[tag] / std,
                                          rel=0.1)  # fmt: skip
            for r in rows[fam]:
                extra = r["extra"]
                x_scaling = "minmax[-1,1]" if fam == "kan" else "zscore"
                assert extra["scaling"]["x"] == x_scaling and extra["scaling"]["y"] == "zscore"
                assert 0 < extra["train_nrmse"] < 1 and 0 < extra["test_nrmse"] < 1
                # per-stage errors in data units too: the last stage is the trained model
                last = extra["stages"][-1]
                assert last["test_metric"] == pytest.approx(r["test_metric"], rel=1e-6)
                assert last["test_nrmse"] == pytest.approx(extra["test_nrmse"], rel=1e-6)
        assert [s["grid"] for s in rows["kan"][0]["extra"]["stages"]] == [3, 5]


def _regression_set(y: np.ndarray, x: np.ndarray | None = None) -> datasets.Dataset:
    x = _inputs(len(y)) if x is None else x
    return datasets.from_arrays(x, y, seed=0, dtype=torch.float64)


def test_prepare_scales_each_family_from_the_training_split():
    base = _inputs(100)
    x = base * np.array([50.0, 0.01]) + np.array([3.0, -7.0])  # units far from [-1, 1]
    x = np.column_stack([x, np.full(100, 4.0)])  # a constant input column
    y = np.column_stack([_f(base), np.full(100, 2.5)])  # a constant output column
    data = _regression_set(y, x)
    kan = prepare(data, "kan")
    tx = kan.data.train_x
    assert torch.allclose(tx[:, :2].min(0).values, torch.tensor([-1.0, -1.0], dtype=tx.dtype))
    assert torch.allclose(tx[:, :2].max(0).values, torch.tensor([1.0, 1.0], dtype=tx.dtype))
    assert torch.all(tx[:, 2] == 0) and torch.all(kan.data.test_x[:, 2] == 0)  # the middle
    assert prepare(data, "kan", grid_range=(0.0, 2.0)).scaling["x"] == "minmax[0,2]"
    mlp = prepare(data, "mlp")
    mx = mlp.data.train_x
    assert torch.allclose(mx[:, :2].mean(0), torch.zeros(2, dtype=mx.dtype), atol=1e-12)
    assert torch.allclose(mx[:, :2].std(0, correction=0), torch.ones(2, dtype=mx.dtype))
    assert torch.all(mx[:, 2] == 0)
    for prep in (kan, mlp):
        ty = prep.data.train_y
        assert torch.isfinite(ty).all() and torch.isfinite(prep.data.test_y).all()
        assert torch.allclose(ty[:, 0].mean(), torch.zeros((), dtype=ty.dtype), atol=1e-12)
        assert prep.target is not None and prep.target.std[1] == 1.0  # constant: not divided by 0
        assert torch.allclose(prep.target.unscale(ty), data.train_y)
        assert prep.scaling["y"] == "zscore" and prep.scaling["y_std"] == list(prep.target.std)
    # the same seed's data in other units trains on the same numbers
    scaled = standardize_targets(_regression_set(100 * y + 1000, x))[0]
    assert torch.allclose(scaled.train_y, mlp.data.train_y) and torch.allclose(
        scaled.test_y, mlp.data.test_y
    )
    with pytest.raises(ValueError, match="unknown model family 'svm'; valid: kan, mlp"):
        prepare(data, "svm")


def test_classification_inputs_scaled_labels_untouched():
    x = _inputs(60) * 30
    data = datasets.from_arrays(x, (x[:, 0] > 0).astype(np.int64), seed=0)
    prep = prepare(data, "kan")
    assert prep.target is None and prep.scaling == {"x": "minmax[-1,1]", "y": "none"}
    assert torch.equal(prep.data.train_y, data.train_y)
    model = kl.KAN([2, 2, 2], seed=0)
    acc = measure(model, prep, data)
    assert set(acc) == {"train_metric", "test_metric"} and 0 <= acc["test_metric"] <= 1


def test_nrmse_of_several_outputs_is_the_rmse_in_standardised_units():
    y = torch.tensor([[0.0, 0.0], [2.0, 20.0], [4.0, 40.0]], dtype=torch.float64)
    data = datasets.Dataset(y[:, :1].clone(), y, y[:, :1].clone(), y)
    _, target = standardize_targets(data)
    std = torch.tensor(target.std, dtype=torch.float64)
    resid = torch.tensor([[1.0, 10.0], [0.0, 0.0], [-1.0, 0.0]], dtype=torch.float64)
    pred = (
        y + resid - torch.tensor(target.mean, dtype=torch.float64)
    ) / std  # standardised predictions
    rmse, nrmse = regression_errors(pred, y, target)
    assert rmse == pytest.approx(math.sqrt((1 + 100 + 1) / 6))  # common RMS over all outputs
    assert nrmse == pytest.approx(math.sqrt(((resid / std) ** 2).mean().item()))
    rmse100, nrmse100 = regression_errors(pred, 100 * y + 7, standardize_targets(
        datasets.Dataset(y[:, :1], 100 * y + 7, y[:, :1], 100 * y + 7))[1])  # fmt: skip
    assert rmse100 == pytest.approx(100 * rmse) and nrmse100 == pytest.approx(nrmse)
