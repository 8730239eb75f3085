"""Grouping trials into batches: the seeds of one configuration share a batch, nothing else does."""

from __future__ import annotations

import dataclasses

import pytest

from kanlab.bench.groups import batch_key, group_cost, group_trials, longest_first
from kanlab.bench.sweep import expand, parse_sweep
from kanlab.bench.tasks import get_task


def _trials(**over):
    spec = {
        "name": "tiny", "tasks": ["paper/xy"], "seeds": 3,
        "data": {"n_train": 48, "n_test": 48}, "train": {"steps": 2},
        "kan": {"hidden": [[2], [3]], "grids": [[3], [3, 4]]}, "mlp": {"depths": [1, 2]},
    }  # fmt: skip
    spec.update(over)
    return expand(parse_sweep(spec))


def _config_without_seed(t):
    c = t.config()
    del c["seed"]
    return c


def test_groups_are_exactly_the_seeds_of_one_configuration():
    trials = _trials()
    groups = group_trials(trials)
    # every trial exactly once
    flat = [t for g in groups for t in g]
    assert sorted(t.key for t in flat) == sorted(t.key for t in trials) and len(flat) == len(trials)
    for g in groups:
        assert len(g) == 3 and [t.seed for t in g] == [0, 1, 2]
        assert len({batch_key(t) for t in g}) == 1
        assert all(_config_without_seed(t) == _config_without_seed(g[0]) for t in g)
    # different configurations never share a group
    firsts = [_config_without_seed(g[0]) for g in groups]
    assert all(a != b for i, a in enumerate(firsts) for b in firsts[i + 1 :])
    assert len({batch_key(g[0]) for g in groups}) == len(groups)


def test_grouping_is_stable():
    trials = _trials()
    groups = group_trials(trials)
    first_index = [min(trials.index(t) for t in g) for g in groups]
    assert first_index == sorted(first_index)  # groups in the order of their first trial
    for g in groups:
        idx = [trials.index(t) for t in g]
        assert idx == sorted(idx)  # trials in their order within a group
    assert group_trials(list(reversed(trials)))[0][0] == trials[-1]


def test_every_difference_but_the_seed_splits_groups():
    t = _trials(seeds=1)[0]
    assert t.family == "kan"
    other_seed = dataclasses.replace(t, seed=7)
    assert batch_key(other_seed) == batch_key(t)
    assert batch_key(dataclasses.replace(t, group="another label")) == batch_key(t)
    variants = [
        dataclasses.replace(t, model=t.model.replace(spline_order=2)),
        dataclasses.replace(t, model=t.model.replace(base_activation="identity")),
        dataclasses.replace(t, fit=t.fit.replace(lr=0.5)),
        dataclasses.replace(t, fit=t.fit.replace(grid_update_every=5)),
        dataclasses.replace(t, fit=t.fit.replace(log_every=1)),
        dataclasses.replace(t, data=dataclasses.replace(t.data, seed=t.data.seed + 1)),
    ]
    for v in variants:
        assert batch_key(v) != batch_key(t), v
    assert len(group_trials([t, *variants, other_seed])) == len(variants) + 1


def test_tasks_share_a_batch_when_everything_else_is_equal():
    """Each model of a batch trains on its own task's data: trials of different tasks with one
    model and fit configuration (and data sizes) share a key; a given kind splits them."""
    t = _trials(seeds=1)[0]
    other_task = dataclasses.replace(t, task=get_task("paper/exp_sin_sq"))
    assert other_task.task != t.task and batch_key(other_task) == batch_key(t)
    assert group_trials([t, other_task]) == [[t, other_task]]
    sizes = dataclasses.replace(t, data=dataclasses.replace(t.data, n_train=t.data.n_train + 1))
    kind = dataclasses.replace(t, task=dataclasses.replace(t.task, kind="regression"))
    for v in (sizes, kind):
        assert batch_key(v) != batch_key(t), v


def test_unbatchable_trials_are_groups_of_one():
    t = _trials(seeds=1)[0]
    adam = t.fit.replace(optimizer="adam", lr=0.01)
    minibatch = [dataclasses.replace(t, seed=s, fit=adam.replace(batch_size=16)) for s in range(3)]
    for s in minibatch:
        assert batch_key(s) is None
    assert group_trials(minibatch) == [[s] for s in minibatch]
    full_batch = [dataclasses.replace(t, seed=s, fit=adam) for s in range(2)]
    assert batch_key(full_batch[0]) is not None and len(group_trials(full_batch)) == 1
    # sparsity and free knots train batched (fit_batch takes them); their seeds share a batch
    for fit in (t.fit.replace(lamb=0.01), t.fit.replace(knot_steps=1)):
        same = [dataclasses.replace(t, seed=s, fit=fit) for s in range(3)]
        assert batch_key(same[0]) is not None and group_trials(same) == [same]
        assert batch_key(same[0]) != batch_key(t)


def test_max_size_splits_large_groups_in_order():
    t = _trials(seeds=1)[0]
    many = [dataclasses.replace(t, seed=s) for s in range(10)]
    groups = group_trials(many, max_size=4)
    assert [[x.seed for x in g] for g in groups] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="max_size"):
            group_trials(many, max_size=bad)
    with pytest.raises(TypeError, match="Trial"):
        batch_key("not a trial")


def test_group_cost_ranks_larger_and_kan_groups_dearer():
    trials = _trials(seeds=6, kan={"hidden": [[2], [5]], "grids": [[3]]}, mlp={"depths": [1]})
    groups = group_trials(trials)
    by_widths = {(g[0].family, tuple(g[0].model.widths)): g for g in groups}
    kan5 = by_widths[("kan", (2, 5, 1))]
    kan2 = by_widths[("kan", (2, 2, 1))]
    assert group_cost(kan5) > group_cost(kan2) > group_cost(kan2[:3]) > 0
    # a KAN costs more than an MLP of the same sparse FLOPs (factor 3)
    mlp = next(g for g in groups if g[0].family == "mlp")
    mlp_more_steps = [dataclasses.replace(t, fit=t.fit.replace(steps=20)) for t in mlp]
    assert group_cost(mlp_more_steps) > group_cost(mlp)
    assert group_cost([]) == 0.0


def test_longest_first_is_a_stable_reordering_by_cost():
    trials = _trials(seeds=2, kan={"hidden": [[2], [5], [2]], "grids": [[3], [4]]})
    groups = group_trials(trials)
    ordered = longest_first(groups)
    assert sorted(map(id, ordered)) == sorted(map(id, groups))  # a permutation
    costs = [group_cost(g) for g in ordered]
    assert costs == sorted(costs, reverse=True)
    ties = [g for g in ordered if group_cost(g) == costs[0]]
    assert ties == [g for g in groups if group_cost(g) == costs[0]]  # ties keep their order
    assert group_cost(ordered[0]) > group_cost(ordered[-1])  # the order really changed something
    assert ordered[0][0].model.widths[1] == 5
