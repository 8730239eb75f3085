"""kanlab paper special: the shipped Table 1, the name mapping, the sweep end to end and resumed."""

from __future__ import annotations

import math
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
def test_special_tiny_runs_in_parts_compares_and_resumes(tmp_path):
    kw = dict(quick=True, out=tmp_path, steps=2, functions=("special/ellipj",))
    ref = published()["special/ellipj"]
    # part 1: the KANs only (plain and pruned); the MLP column says so, no verdict is named
    kan = run_special(**kw, families=("kan",))
    assert (kan.units_run, kan.units_reused) == (4, 0)  # (1 KAN + 1 pruned KAN) x 2 seeds
    (row,) = kan.rows
    paper_kan = float(ref["best_kan_test_rmse"])
    assert float(row[5]) == pytest.approx(paper_kan, rel=1e-2) and row[11] == ref["mlp_test_rmse"]
    # the minimum over grid stages is below the final-grid minimum (a minimum over more models)
    assert float(row[2]) <= float(row[4])
    stage_ok, final_ok = (cell == "yes" for cell in row[6].split(" / "))
    assert final_ok <= stage_ok and row[6] in ("yes / yes", "yes / no", "no / no")
    for cell, ok in ((row[2], stage_ok), (row[4], final_ok)):
        if not math.isclose(float(cell), paper_kan, rel_tol=5e-3):  # (the cells are rounded)
            assert ok == (float(cell) <= paper_kan)
    assert " at G=" in row[1] and "seed " in row[1]
    assert row[9:11] == ("not measured", "-") and row[12] == "MLP not measured"
    # part 2: the width-5 MLPs, a narrowed protocol (said in the notes): complete, so a verdict
    five = run_special(**kw, families=("mlp",), mlp_widths=(5,))
    assert (five.units_run, five.units_reused) == (2, 0)  # counts the chosen trials (the MLPs)
    assert five.rows[0][:9] == row[:9] and five.rows[0][9].startswith("mlp[2,5,5,1]")
    assert five.rows[0][12].split()[0] in ("KAN", "MLP", "tie")
    assert "narrowed protocol: MLP widths 5 only (whole protocol: 5, 100)" in five.notes
    # the rest of the whole protocol: only the width-100 MLPs train
    one = run_special(**kw)
    assert (one.units_run, one.units_reused) == (2, 6)
    (row,) = one.rows
    assert row[:9] == kan.rows[0][:9] and row[9].startswith("mlp[2,")
    assert float(row[10]) <= float(five.rows[0][10])  # a minimum over more models
    assert float(row[4]) <= float(row[8].split(" ± ")[0])  # the minimum is below the mean
    assert row[12].split()[0] in ("KAN", "MLP", "tie")  # two seeds a side: a decided verdict
    assert not any(n.startswith("narrowed") for n in one.notes)
    report = (tmp_path / "report.md").read_text()
    assert "Table 1" in report and "like for like" in report
    two = run_special(**kw)
    assert (two.units_run, two.units_reused) == (0, 8) and two.rows == one.rows
    with sqlite3.connect(tmp_path / "results.sqlite") as conn:
        assert conn.execute("SELECT COUNT(*) FROM trials").fetchone()[0] == 8
