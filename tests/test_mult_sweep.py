"""Multiplication nodes in sweeps: ``kan.hidden`` pairs, labels, matched MLPs and a run end to end."""

from __future__ import annotations

import pytest

import kanlab as kl
from kanlab.bench.runner import SerialExecutor, run_trials
from kanlab.bench.spec import SweepError
from kanlab.bench.store import ResultStore
from kanlab.bench.sweep import expand, load_sweep, parse_sweep
from kanlab.mult import widths_label


def _spec(hidden):
    return {
        "name": "m", "tasks": ["paper/xy"], "seeds": 1,
        "data": {"n_train": 32, "n_test": 32}, "train": {"steps": 2},
        "kan": {"hidden": hidden, "grids": [[3]]}, "mlp": {"depths": [1]},
    }  # fmt: skip


def test_widths_label_writes_pairs_as_sum_plus_mult() -> None:
    assert widths_label((2, (2, 1), 1)) == "2,2+1x,1"
    assert widths_label([2, [0, 3], 5, 1]) == "2,0+3x,5,1"
    assert widths_label((4, 1)) == "4,1"


def test_hidden_pairs_parse_to_mult_kans_with_labels_and_matched_mlps() -> None:
    sweep = parse_sweep(_spec([[[2, 1]], [3], [[3, 0]]]))
    assert sweep.kan.hidden == (((2, 1),), (3,), (3,))  # [n, 0] is the plain n
    trials = expand(sweep)
    kans = [t for t in trials if t.family == "kan"]
    assert [t.model.widths for t in kans] == [(2, (2, 1), 1), (2, 3, 1)]  # (3,) twice: one trial
    mult = kans[0]
    assert mult.model.has_mult and mult.label == "kan[2,2+1x,1] G=3"
    # the MLP compared with the mult KAN is sized on its parameter count (5 % tolerance)
    target = kl.count_params(mult.model)
    assert target == kl.count_params(kl.KAN.from_config(mult.model))
    mlps = [t for t in trials if t.family == "mlp" and t.group == mult.label]
    assert len(mlps) == 1
    assert abs(kl.count_params(mlps[0].model) - target) <= 0.05 * target


@pytest.mark.parametrize(
    ("hidden", "field"),
    [([[[2, 1, 1]]], "kan.hidden[0][0]"), ([[[0, 0]]], "kan.hidden[0][0]"),
     ([[[2, -1]]], "kan.hidden[0][0][1]"), ([[2, "x"]], "kan.hidden[0][1]"),
     (["wide"], "kan.hidden[0]")],
)  # fmt: skip
def test_bad_hidden_pairs_name_the_field(hidden, field) -> None:
    pattern = f"field '{field}'".replace("[", r"\[").replace("]", r"\]")
    with pytest.raises(SweepError, match=pattern):
        parse_sweep(_spec(hidden), source="my.toml")


def test_toml_spec_takes_a_pair(tmp_path) -> None:
    path = tmp_path / "s.toml"
    path.write_text('name = "t"\ntasks = ["paper/xy"]\n[kan]\nhidden = [[[2, 1]], [2]]\n')
    assert load_sweep(path).kan.hidden == (((2, 1),), (2,))


@pytest.mark.slow
def test_a_sweep_with_a_mult_kan_runs_end_to_end(tmp_path) -> None:
    trials = expand(parse_sweep(_spec([[[0, 1]], [2]])))
    kans = {t.model.widths: t for t in trials if t.family == "kan"}
    assert set(kans) == {(2, (0, 1), 1), (2, 2, 1)}
    with ResultStore(tmp_path / "r.sqlite") as store:
        summary = run_trials(trials, store, SerialExecutor())
        assert (summary.ok, summary.failed) == (len(trials), 0)
        rows = {r["key"]: r for r in store.rows()}
    mult, plain = kans[(2, (0, 1), 1)], kans[(2, 2, 1)]
    assert mult.key != plain.key and {mult.key, plain.key} <= set(rows)
    row = rows[mult.key]
    assert row["status"] == "ok" and row["label"] == "kan[2,0+1x,1] G=3"
    assert row["config"]["model"]["widths"] == [2, [0, 1], 1]
    assert rows[plain.key]["config"]["model"]["widths"] == [2, 2, 1]
    back = kl.KANConfig.from_dict(row["extra"]["model_config"])
    assert back == mult.model and back.has_mult
    assert row["test_error"] == row["test_error"]  # a number, not NaN
