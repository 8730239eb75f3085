"""Pruned benchmark trials (``Trial(prune=PruneConfig(...))``: the KAN paper's "train sparse, prune,
train on") and the tables' minimum over grid stages (``PaperTally``)."""

from __future__ import annotations

import math

import pytest

from kanlab import PruneConfig, train
from kanlab.bench.groups import batch_key, group_trials
from kanlab.bench.paper.common import FamilyResult, PaperTally, _best_stage
from kanlab.bench.prepare import measure
from kanlab.bench.runner import _prepared, run_trial
from kanlab.bench.spec import DataSpec
from kanlab.bench.sweep import Trial
from kanlab.bench.tasks import get_task
from kanlab.config import FitConfig, KANConfig, MLPConfig
from kanlab.models import build, count_params
from kanlab.prune import prune

TASK = get_task("special/sph_harm_m0_n1")  # a function of the second input alone
DATA = DataSpec(n_train=200, n_test=100, seed=0)
FIT = FitConfig(steps=4, grid_schedule=(3, 5), log_every=4, progress=False, grid_margin=0.01)
KAN = KANConfig(widths=(2, 3, 1), grid_size=3, dtype="float64")
PLAN = PruneConfig(lamb=1e-2, steps=6)


def _trial(**over):
    kw = dict(task=TASK, model=KAN, fit=FIT, seed=1, data=DATA, prune=PLAN)
    kw.update(over)
    return Trial(**kw)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lamb": 0.0}, "lamb must be > 0"),
        ({"lamb": -1.0}, "lamb must be >= 0"),
        ({"lamb": math.nan}, "lamb must be finite"),
        ({"steps": 0}, "steps must be >= 1"),
        ({"node_threshold": 1.0}, r"node_threshold must be in \[0, 1\)"),
        ({"edge_threshold": -0.1}, "edge_threshold must be >= 0"),
    ],
)
def test_prune_config_refuses_bad_values_naming_them(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        PruneConfig(**kwargs)


def test_prune_config_round_trips_and_refuses_unknown_fields():
    plan = PruneConfig(lamb=1e-3, steps=50, node_threshold=0.0, edge_threshold=0.05)
    assert PruneConfig.from_dict(plan.to_dict()) == plan
    with pytest.raises(ValueError, match="unknown PruneConfig field"):
        PruneConfig.from_dict({"lamb": 1e-2, "grid": 3})


def test_a_pruned_trial_is_its_own_configuration_and_trains_alone():
    plain, pruned = _trial(prune=None), _trial()
    assert "prune" not in plain.config()  # (unpruned keys are as they were)
    assert pruned.config()["prune"] == PLAN.to_dict() and pruned.key != plain.key
    assert _trial(prune=PruneConfig(lamb=1e-3, steps=6)).key != pruned.key
    assert pruned.label == "kan[2,3,1] G=3>5 pruned lamb=0.01"
    assert pruned.total_steps == plain.total_steps + PLAN.steps == 14
    assert batch_key(pruned) is None and batch_key(plain) is not None
    seeds = [_trial(seed=s) for s in range(3)]
    assert group_trials(seeds) == [[t] for t in seeds]  # seeds prune to different widths
    with pytest.raises(ValueError, match="prune is for KAN trials"):
        _trial(model=MLPConfig(widths=(2, 3, 1)))
    with pytest.raises(TypeError, match="prune must be a PruneConfig"):
        _trial(prune={"lamb": 1e-2})


def test_run_trial_trains_sparse_prunes_then_runs_the_schedule():
    trial = _trial()
    row = run_trial(trial)
    assert row["status"] == "ok", row.get("error")
    # the same three steps by hand: the sparse stage at the first grid, prune, the schedule
    raw, prepared = _prepared(trial, {})
    model = build(trial.model)
    sparse = FIT.replace(lamb=PLAN.lamb, steps=PLAN.steps, grid_schedule=None, seed=trial.seed)
    train.fit(model, prepared.data, sparse)
    before = measure(model, prepared, raw)["test_metric"]
    pruned = prune(model, prepared.data.train_x)
    at_prune = count_params(pruned)  # at the first grid
    hist = train.fit(pruned, prepared.data, trial.fit)
    info = row["extra"]["prune"]
    assert info["sparse_test_metric"] == before
    assert info["widths"] == list(pruned.widths) and info["params_after"] == at_prune
    assert info["params_before"] == count_params(model) >= info["params_after"]
    assert row["params"] == count_params(pruned)
    assert row["test_metric"] == measure(pruned, prepared, raw)["test_metric"]
    assert row["steps"] == PLAN.steps + hist.step[-1] + 1
    # the stages are the schedule's (the sparse stage is not a point of the scaling curve)
    assert [s["grid"] for s in row["extra"]["stages"]] == [3, 5]


def test_run_trial_without_the_regulariser_would_differ():
    # the sparse stage matters: an unpruned trial of the same model ends elsewhere
    assert run_trial(_trial())["test_metric"] != run_trial(_trial(prune=None))["test_metric"]


def _row(label, stages, *, seed=0, widths=None, status="ok"):
    extra = {"stages": [{"grid": g, "test_metric": e} for g, e in stages]}
    if widths is not None:
        extra["prune"] = {"widths": widths}
    final = stages[-1][1] if stages else math.nan
    return {"label": label, "seed": seed, "extra": extra, "test_error": final, "status": status}


def test_best_stage_is_the_lowest_error_after_any_stage_with_its_place():
    rows = [
        _row("kan[2,5,1] G=3>5>10", [(3, 1e-2), (5, 4e-4), (10, 6e-4)], seed=0),
        _row(
            "kan[2,5,1] G=3>5>10 pruned lamb=0.01",
            [(3, 1e-2), (5, 3e-4), (10, math.nan)],
            seed=2,
            widths=[2, 1, 1],
        ),
    ]
    err, label = _best_stage(rows)
    assert err == 3e-4
    assert label == "kan[2,5,1] G=3>5>10 pruned lamb=0.01 at G=5, pruned to [2,1,1], seed 2"
    err, label = _best_stage(rows[:1])
    assert err == 4e-4 and label == "kan[2,5,1] G=3>5>10 at G=5, seed 0"
    # a row without stages (an MLP) counts its final error
    mlp = {"label": "mlp[2,5,1] silu", "seed": 1, "extra": {}, "test_error": 2e-3}
    assert _best_stage([mlp]) == (2e-3, "mlp[2,5,1] silu, seed 1")
    assert _best_stage([]) is None


def test_paper_tally_counts_both_selections_and_skips_incomplete_families():
    tally = PaperTally()
    done = FamilyResult("kan", 2, 2, best_min=2e-4, best_min_label="k", best_stage=5e-5,
                        best_stage_label="k at G=20")  # fmt: skip
    cells = tally.cells(done, 1e-4)
    assert cells == ("k at G=20", "5e-05", "k", "0.0002", "0.0001", "yes / no")
    assert (tally.stage, tally.final, tally.judged) == (1, 0, 1)
    part = FamilyResult("kan", 2, 1)
    assert tally.cells(part, 1e-4)[-1] == "partial (1 of 2 trials)"
    assert tally.cells(FamilyResult("kan", 2, 2, best_min=1e-5, best_stage=1e-5), 1e-4)[-1] == (
        "yes / yes"
    )
    assert (tally.stage, tally.final, tally.judged) == (2, 1, 2)
    note = tally.note("function", 15, "goal", final_grid=10)
    assert note.startswith("kanlab's best KAN at or below the paper's best KAN on 2 of 2 function")
    assert "on 1 with each trial's final grid (G = 10) only" in note
