"""Tests for the data set registry: names that say their registry, one lookup with "did you mean",
a description per entry, the default KAN shapes kept with the entries, and the old "task" names."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from kanlab import datasets
from kanlab.bench.tasks import get_task, task_names
from kanlab.datasets import DatasetEntry, UnknownDatasetError
from kanlab.datasets.record import REGISTRIES


def test_public_names() -> None:
    assert sorted(datasets.__all__) == sorted([
        "FEYNMAN_EXCLUDED", "GENERATOR_VERSION", "KINDS", "TASKS", "Dataset", "DatasetEntry",
        "UnknownDatasetError", "describe", "entry", "from_arrays", "from_csv", "from_function",
        "get", "names",
    ])  # fmt: skip
    assert all(hasattr(datasets, n) for n in datasets.__all__)


# ------------------------------------------------------------------------- names and registries
def test_every_name_says_its_registry_and_describe_says_so() -> None:
    names = datasets.names()
    assert {n.split("/")[0] for n in names} == set(REGISTRIES)
    for name in names:
        e = datasets.entry(name)
        prefix = name.split("/")[0]
        assert e.name == name and e.registry == prefix
        text = datasets.describe(name)
        lines = text.splitlines()
        assert lines[0] == f"{name}: {e.summary}"
        assert lines[1] == f"  {e.description}"
        assert f"  registry {prefix}/: {REGISTRIES[prefix]}" in lines
        assert lines[-1].startswith(f"  default KAN hidden widths: {list(e.kan_hidden)}")
        assert datasets.get(name, n_train=4, n_test=4).kind == e.kind


def test_every_entry_has_a_one_line_description() -> None:
    descriptions = [datasets.entry(n).description for n in datasets.names()]
    for d in descriptions:
        assert d.strip() == d and d and "\n" not in d and len(d) < 200
    assert len(set(descriptions)) == len(descriptions)  # each says which data set it is
    assert "J0(20x)" in datasets.entry("paper/bessel_j0").description
    assert "sn(u | m)" in datasets.entry("special/ellipj").description
    assert datasets.entry("feynman/I.6.2").description.startswith("Feynman equation I.6.2: f = ")
    assert "wine" in datasets.entry("sklearn/wine").description


# ------------------------------------------------------------------------ default KAN shapes
def _todays_rule(name: str) -> tuple[int, ...]:
    """A copy of bench/tasks.py's _PAPER_HIDDEN/_default_hidden before the shapes moved to the
    data set entries: the new values must be exactly these, for every name."""
    paper = {
        "paper/bessel_j0": (),
        "paper/exp_sin_sq": (1,),
        "paper/xy": (2,),
        "paper/exp_sin_100d": (1,),
        "paper/exp_sin_4d": (4, 2),
        "paper/exp_sin_4d_nopi": (4, 2),
    }
    if name in paper:
        return paper[name]
    if name.startswith("sklearn/") and name != "sklearn/diabetes":
        return (8,)
    return (5,)


def test_kan_hidden_of_every_entry_is_todays_value() -> None:
    names = datasets.names()
    assert len(names) == len(task_names()) == 125
    for name in names:
        want = _todays_rule(name)
        assert datasets.entry(name).kan_hidden == want, name
        assert get_task(name).hidden == want, name
        assert type(get_task(name).hidden) is tuple


# ------------------------------------------------------------------------------ one lookup
def test_one_lookup_with_close_matches() -> None:
    with pytest.raises(UnknownDatasetError) as info:
        datasets.entry("paper/xyy")
    e = info.value
    assert isinstance(e, ValueError) and e.name == "paper/xyy" and e.close == ("paper/xy",)
    assert str(e) == "unknown data set 'paper/xyy'; close matches: ['paper/xy']"
    back = pickle.loads(pickle.dumps(e))  # errors travel back from bench workers
    assert str(back) == str(e) and back.close == e.close and back.name == e.name
    with pytest.raises(UnknownDatasetError, match=r"valid prefixes") as info:
        datasets.get("nonsense")
    assert info.value.close == ()
    with pytest.raises(TypeError, match="must be a str"):
        datasets.entry(3)  # type: ignore[arg-type]


def test_bench_task_lookup_is_the_registry_lookup() -> None:
    for bad in ("paper/xyz", "sklearn/wines", "special/jv0"):
        with pytest.raises(UnknownDatasetError) as ds_err:
            datasets.entry(bad)
        with pytest.raises(ValueError) as task_err:
            get_task(bad)
        msg = str(task_err.value)
        assert msg.startswith(
            f"unknown task {bad!r}; did you mean {', '.join(ds_err.value.close)}?"
        )
        assert "`kanlab tasks` lists them all" in msg
    with pytest.raises(ValueError, match=r"^unknown task 'nonsense'\. Valid tasks are 125 names"):
        get_task("nonsense")
    with pytest.raises(TypeError, match="task name must be a str"):
        get_task(None)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ the entry record
def test_entry_validation() -> None:
    def build(n_tr: object, n_te: object, seed: object, dtype: object) -> datasets.Dataset:
        raise AssertionError

    ok = {"name": "paper/t", "kind": "regression", "description": "a test", "summary": "s",
          "kan_hidden": [3, 2], "build": build}  # fmt: skip
    e = DatasetEntry(**ok)  # type: ignore[arg-type]
    assert e.kan_hidden == (3, 2) and e.registry == "paper" and "build" not in repr(e)
    for bad, match in (
        ({"name": "xy"}, r"'<registry>/<name>'.*got 'xy'"),
        ({"name": "mine/xy"}, r"registry in \['feynman', 'paper', 'sklearn', 'special'\]"),
        ({"name": "paper/"}, "got 'paper/'"),
        (
            {"kind": "ranking"},
            r"data set 'paper/t' has unknown kind 'ranking'; valid: regression, classif",
        ),
        ({"description": " "}, "one-line description"),
        ({"description": "two\nlines"}, "one-line description"),
        ({"kan_hidden": (3, 0)}, r"kan_hidden\[1\] of data set 'paper/t' must be >= 1"),
    ):
        with pytest.raises(ValueError, match=match):
            DatasetEntry(**{**ok, **bad})  # type: ignore[arg-type]


# ---------------------------------------------------------------- "kind", and "task" its old name
def _xy(n: int = 10) -> tuple[np.ndarray, np.ndarray]:
    x = np.stack([np.arange(n, dtype=float), np.arange(n, dtype=float) ** 2], axis=1)
    return x, np.arange(n) % 2


def test_kind_and_its_old_name_task() -> None:
    assert datasets.KINDS == datasets.TASKS == ("regression", "classification")
    x, y = _xy()
    ds = datasets.from_arrays(x, y)
    assert ds.kind == ds.task == "classification" and ds.meta["kind"] == "classification"
    assert "task" not in ds.meta and "kind='classification'" in repr(ds)
    # meta["task"] is still accepted on input and stored under its new name.
    t = torch.zeros(4, 2)
    old = datasets.Dataset(t, t[:, :1], t, t[:, :1], meta={"task": "regression", "a": 1})
    assert old.meta == {"a": 1, "kind": "regression"} and old.task == old.kind == "regression"
    same = datasets.Dataset(
        t, t[:, :1], t, t[:, :1], meta={"task": "regression", "kind": "regression"}
    )
    assert same.meta == {"kind": "regression"}
    with pytest.raises(ValueError, match=r"unknown Dataset.meta\['task'\] 'ranking'"):
        datasets.Dataset(t, t[:, :1], t, t[:, :1], meta={"task": "ranking"})
    with pytest.raises(ValueError, match=r"meta\['kind'\] 'classification' and .*\['task'\] 'regr"):
        datasets.Dataset(
            t, t[:, :1], t, t[:, :1], meta={"task": "regression", "kind": "classification"}
        )
    # from_arrays / from_csv: the keyword task= still works; its errors name the keyword used.
    forced = datasets.from_arrays(x, y.astype(float), task="regression")
    assert forced.kind == "regression"
    assert datasets.from_arrays(x, y, task="regression", kind="regression").kind == "regression"
    with pytest.raises(ValueError, match="unknown task 'ranking'"):
        datasets.from_arrays(x, y, task="ranking")
    with pytest.raises(ValueError, match=r"kind='classification' and task='regression' \(its old"):
        datasets.from_arrays(x, y, kind="classification", task="regression")
    # meta["task"] given to from_arrays is replaced by the kind it decides, as before.
    m = datasets.from_arrays(x, y, meta={"task": "regression"})
    assert m.kind == "classification" and "task" not in m.meta


def test_from_csv_accepts_task_keyword(tmp_path: object) -> None:
    p = tmp_path / "i.csv"  # type: ignore[operator]
    p.write_text("u,v\n" + "\n".join(f"{i / 3},{(i * 7) % 5}" for i in range(12)))
    assert datasets.from_csv(p, "v").kind == "classification"
    assert datasets.from_csv(p, "v", task="regression").kind == "regression"
    with pytest.raises(ValueError, match="unknown task 'ranking'"):
        datasets.from_csv(p, "v", task="ranking")
