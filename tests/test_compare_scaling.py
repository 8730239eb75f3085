"""Issue 18, findings 3, 4 and 10 (tiny CSV): the units of the data never pick the winner; what a
CSV's target is (regression or classification) is chosen in the open and can be overridden; a CSV
too small to compare on is refused before any trial runs."""

from __future__ import annotations

import math
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import kanlab as kl
from kanlab import bench, datasets
from kanlab.bench.prepare import measure, prepare, regression_errors, standardize_targets
from kanlab.bench.store import ResultStore

SRC = str(Path(kl.__file__).resolve().parents[1])


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


# ------------------------------------------------------------------ finding 4: what the target is
def _integer_csv(path: Path, n: int = 120) -> Path:
    x = _inputs(n, seed=3)
    y = np.round(20 * (np.sin(np.pi * x[:, 0]) + x[:, 1] ** 2)).astype(int)  # ~50 values
    path.write_text("x1,x2,y\n" + "\n".join(
        f"{a:.6f},{b:.6f},{t}" for (a, b), t in zip(x, y, strict=True)) + "\n")  # fmt: skip
    return path


def test_integer_target_kind_is_guessed_with_a_reason(tmp_path):
    many = datasets.from_csv(_integer_csv(tmp_path / "ints.csv"), "y")
    assert many.kind == "regression"
    assert "integer target with" in many.meta["kind_reason"]
    assert "more than 20" in many.meta["kind_reason"]
    labels = tmp_path / "labels.csv"
    labels.write_text("a,b,y\n" + "\n".join(f"{i / 7},{i % 5},{i % 3}" for i in range(30)))
    few = datasets.from_csv(labels, "y")
    assert few.kind == "classification" and "3 distinct values" in few.meta["kind_reason"]
    rare = tmp_path / "rare.csv"  # few values, but one seen once: a quantity, not a label
    rare.write_text("a,b,y\n" + "\n".join(f"{i / 7},{i % 5},{9 if i == 0 else i % 2}"
                                          for i in range(30)))  # fmt: skip
    assert datasets.from_csv(rare, "y").kind == "regression"
    given = datasets.from_csv(labels, "y", kind="regression")
    assert given.kind == "regression" and given.meta["kind_reason"] == "kind='regression' given"
    from kanlab.datasets.tabular import guess_kind

    assert guess_kind(["a", "1"])[0] == "classification"
    assert guess_kind(["0.5", "1"])[0] == "regression"
    # the kind is part of a CSV task's identity
    auto = bench.csv_task(tmp_path / "ints.csv", "y")
    forced = bench.csv_task(tmp_path / "ints.csv", "y", kind="classification")
    assert auto.kind == "regression" and auto.spec()["kind"] == "regression"
    assert forced.spec()["kind"] == "classification" and auto.spec() != forced.spec()
    assert "kind" not in bench.get_task("paper/xy").spec()
    with pytest.raises(ValueError, match="task 'paper/xy' is regression; it cannot be compared as"):
        bench.get_task("paper/xy", kind="classification")


def _cli(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.run([sys.executable, "-m", "kanlab", *argv], capture_output=True, text=True,
                          timeout=300, env=env, cwd=cwd)  # fmt: skip


TINY_SUITE = """
name = "tiny"
tasks = ["paper/xy"]
[kan]
hidden = [[2]]
grids = [[3]]
[mlp]
depths = [1]
"""


def _metrics(db: Path) -> set[str]:
    conn = sqlite3.connect(db)
    try:
        return {m for (m,) in conn.execute("SELECT metric FROM trials")}
    finally:
        conn.close()


@pytest.mark.slow
def test_cli_prints_the_guessed_kind_and_task_overrides_it(tmp_path):
    data = _integer_csv(tmp_path / "ints.csv")
    (tmp_path / "tiny.toml").write_text(TINY_SUITE)
    common = ["compare", "--suite", "tiny.toml", "--csv", str(data), "--target", "y",
              "--executor", "serial", "--seeds", "1", "--steps", "2", "--no-progress"]  # fmt: skip
    auto = _cli(*common, "--out", "auto", cwd=tmp_path)
    assert auto.returncode == 0, auto.stderr
    lines = [ln for ln in auto.stderr.splitlines() if "target 'y' of ints.csv" in ln]
    assert len(lines) == 1, auto.stderr  # the automatic choice, printed with its reason
    line = lines[0]
    assert "integer target with" in line and "distinct values (more than 20): regression" in line
    assert "--task classification overrides" in line
    assert _metrics(tmp_path / "auto" / "tiny-ints" / "results.sqlite") == {"rmse"}
    forced = _cli(*common, "--task", "classification", "--out", "forced", cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert "overrides" not in forced.stderr
    assert _metrics(tmp_path / "forced" / "tiny-ints" / "results.sqlite") == {"accuracy"}


@pytest.mark.slow  # two CLI starts (~2 s each; more on a loaded machine)
def test_cli_task_option_errors_are_one_line(tmp_path):
    data = _integer_csv(tmp_path / "ints.csv")
    bad = _cli("compare", "--csv", str(data), "--target", "y", "--task", "ranking", "--out", "o",
               cwd=tmp_path)  # fmt: skip
    assert bad.returncode == 2
    assert (
        bad.stderr.strip() == "Error: unknown --task 'ranking'; valid: regression, classification"
    )
    clash = _cli("compare", "--tasks", "paper/xy", "--task", "classification", "--out", "o",
                 cwd=tmp_path)  # fmt: skip
    assert clash.returncode == 2 and clash.stderr.count("\n") == 1
    assert "task 'paper/xy' is regression; it cannot be compared as classification" in clash.stderr
    assert not (tmp_path / "o").exists()  # nothing ran


# ------------------------------------------------------------------ finding 10: a too-small CSV
def test_cli_refuses_a_two_row_csv(tmp_path):
    data = tmp_path / "two.csv"
    data.write_text("x1,x2,y\n0.1,0.2,0.3\n0.4,0.1,0.5\n")
    res = _cli("compare", "--csv", str(data), "--target", "y", "--executor", "serial",
               "--seeds", "1", "--steps", "2", "--out", "o", "--no-progress", cwd=tmp_path)  # fmt: skip
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert res.stderr.startswith("Error: CSV file ") and "has 2 data rows" in res.stderr
    assert "1 training and 1 test rows" in res.stderr
    assert "at least 10 training and 2 test rows" in res.stderr
    assert not (tmp_path / "o").exists()
    ok = tmp_path / "thirteen.csv"  # the smallest file that passes
    ok.write_text("x1,x2,y\n" + "\n".join(f"{i / 13},{(i * 7) % 13},{i * 0.1}" for i in range(13)))
    assert bench.csv_task(ok, "y").kind == "regression"
    ok.write_text(ok.read_text().rsplit("\n", 1)[0])  # 12 rows
    with pytest.raises(ValueError, match="has 12 data rows.*9 training and 3 test rows"):
        bench.csv_task(ok, "y")
