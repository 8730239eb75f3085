"""kanlab paper special: the shipped Table 1, the name mapping, the sweep end to end and resumed."""

from __future__ import annotations

import sqlite3

import pytest

from kanlab import datasets
from kanlab.bench.paper import run_special
from kanlab.bench.paper.special import DATA, published, task_name


def test_task_names_from_scipy_calls():
    assert task_name("ellipj(x,y)") == "special/ellipj"
    assert task_name("lpmv(2,x,y)") == "special/lpmv_m2"
    assert task_name("sph_harm(1,2,x,y)") == "special/sph_harm_m1_n2"


def test_shipped_table_has_the_15_functions_each_a_registered_task():
    rows = published()
    assert len(rows) == 15 == len(DATA.read_text().splitlines()) - 1
    assert set(rows) <= set(datasets.names("special/"))
    for row in rows.values():
        assert 0 < float(row["best_kan_test_rmse"]) <= float(row["minimal_kan_test_rmse"])
        assert float(row["mlp_test_rmse"]) > 0
    assert rows["special/kv"]["best_kan_test_rmse"] == "2.52e-5"  # one row read by hand


def test_unknown_function_is_named(tmp_path):
    with pytest.raises(ValueError, match="special/nope"):
        run_special(out=tmp_path, functions=("special/nope",))


@pytest.mark.slow
def test_special_tiny_runs_compares_and_resumes(tmp_path):
    kw = dict(quick=True, out=tmp_path, steps=2, functions=("special/ellipj",))
    one = run_special(**kw)
    assert (one.units_run, one.units_reused) == (6, 0)  # (1 KAN + 2 MLPs) x 2 seeds
    (row,) = one.rows
    ref = published()["special/ellipj"]
    assert row[3] == ref["best_kan_test_rmse"] and row[7] == ref["mlp_test_rmse"]
    assert row[4] == ("yes" if float(row[2]) <= float(ref["best_kan_test_rmse"]) else "no")
    assert row[8].split()[0] in ("KAN", "MLP", "tie")  # two seeds a side: a decided verdict
    assert "Table 1" in (tmp_path / "report.md").read_text()
    two = run_special(**kw)
    assert (two.units_run, two.units_reused) == (0, 6) and two.rows == one.rows
    with sqlite3.connect(tmp_path / "results.sqlite") as conn:
        assert conn.execute("SELECT COUNT(*) FROM trials").fetchone()[0] == 6
