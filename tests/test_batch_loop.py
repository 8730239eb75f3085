"""fit_batch (kanlab.train.batch_loop): each model of a batch against ``kanlab.fit`` on that model.

Oracle: the same model (``batch.unstack()[m]`` before training) trained alone by ``kanlab.fit`` with
the same options.
"""

from __future__ import annotations

import math

import pytest
import torch

import kanlab as kl
from kanlab import datasets
from kanlab.model_batch import KANBatch, MLPBatch
from kanlab.regularization import regularizer_from_norms
from kanlab.train import StepState
from kanlab.train.batch_loop import fit_batch, regularizer_per_model

pytestmark = pytest.mark.usefixtures("one_thread")

KAN_CFG = kl.KANConfig(widths=[2, 3, 1], grid_size=3, dtype="float64")
MLP_CFG = kl.MLPConfig(widths=[2, 5, 1], dtype="float64")
SEEDS = [0, 1, 2, 3]
EIGHT = list(range(8))  # the equivalence tests: 8 models batched
FIELDS = ("train_loss", "test_loss", "train_metric", "test_metric", "reg", "grid_size", "step")


def data(n: int = 120) -> datasets.Dataset:
    f = lambda x: torch.exp(torch.sin(torch.pi * x[:, 0]) + x[:, 1] ** 2)  # noqa: E731
    return datasets.from_function(f, 2, n_train=n, n_test=n, seed=0, dtype=torch.float64)


def close(a: list, b: list, rel: float = 1e-9) -> bool:
    if len(a) != len(b):
        return False
    for u, v in zip(a, b, strict=True):
        if u is None or v is None or isinstance(u, int):
            if u != v:
                return False
        elif not math.isclose(u, v, rel_tol=rel, abs_tol=0.0):
            return False
    return True


def assert_same_history(got: kl.History, want: kl.History, rel: float = 1e-9) -> None:
    for name in FIELDS:
        assert close(getattr(got, name), getattr(want, name), rel), (
            name,
            getattr(got, name)[:5],
            getattr(want, name)[:5],
        )


def alone(batch, ds, **opts) -> list[kl.History]:
    """Each model of ``batch`` (as it is now) trained alone by fit."""
    return [kl.fit(model, ds, progress=False, **opts) for model in batch.unstack()]


ADAM = {"optimizer": "adam", "lr": 0.02, "steps": 100, "log_every": 7}


@pytest.mark.parametrize("grid_updates", [0, 10], ids=["no_grid_updates", "grid_updates"])
def test_adam_matches_fit_per_model(grid_updates):
    ds = data()
    batch = KANBatch.from_config(KAN_CFG, seeds=EIGHT)
    want = alone(batch, ds, grid_update_every=grid_updates, **ADAM)
    got = fit_batch(batch, ds, grid_update_every=grid_updates, progress=False, **ADAM)
    assert len(got) == 8 and got.diverged == [None] * 8
    for g, w in zip(got, want, strict=True):
        assert len(g) == 15  # steps 6, 13, ..., 97 and the last
        assert_same_history(g, w)
        assert g.grid_size == [3] * 15


def test_adam_mini_batches_match_fit():
    ds = data()
    batch = KANBatch.from_config(KAN_CFG, seeds=[5, 6])
    opts = {**ADAM, "steps": 30, "batch_size": 32, "seed": 4, "optimizer": "adamw"}
    opts["weight_decay"] = 1e-3
    want = alone(batch, ds, **opts)
    got = fit_batch(batch, ds, progress=False, **opts)
    for g, w in zip(got, want, strict=True):
        assert_same_history(g, w)


@pytest.mark.slow
def test_lbfgs_first_step_matches_fit_then_stays_close():
    ds = data()
    batch = KANBatch.from_config(KAN_CFG, seeds=EIGHT)
    opts = {"optimizer": "lbfgs", "steps": 20, "grid_update_every": 0}
    want = alone(batch, ds, **opts)
    got = fit_batch(batch, ds, progress=False, **opts)
    for g, w in zip(got, want, strict=True):
        assert len(g) == len(w) == 20
        assert math.isclose(g.train_loss[0], w.train_loss[0], rel_tol=1e-9)
        assert math.isclose(g.test_loss[0], w.test_loss[0], rel_tol=1e-9)
        assert 1 / 1.5 <= g.test_loss[-1] / w.test_loss[-1] <= 1.5
        assert g.test_loss[-1] < 0.5 * g.test_loss[0]  # it trains


@pytest.mark.slow
def test_grid_schedule_follows_fit():
    ds = data()
    batch = KANBatch.from_config(KAN_CFG, seeds=EIGHT)
    opts = {**ADAM, "steps": 20, "log_every": 5, "grid_schedule": (3, 5, 10)}
    opts["grid_update_every"] = 7
    want = alone(batch, ds, **opts)
    got = fit_batch(batch, ds, progress=False, **opts)
    for g, w in zip(got, want, strict=True):
        assert g.grid_size == [3] * 4 + [5] * 4 + [10] * 4
        assert_same_history(g, w)
    assert batch.grid_size == 10
    # each model its own adapted grid (from its own layer-1 outputs)
    knots = batch.layers[1].knots
    assert not torch.equal(knots[0], knots[1])


def test_mlp_batch_adam_matches_fit():
    ds = data()
    batch = MLPBatch.from_config(MLP_CFG, seeds=SEEDS)
    want = alone(batch, ds, **ADAM)
    got = fit_batch(batch, ds, progress=False, **ADAM)
    for g, w in zip(got, want, strict=True):
        assert_same_history(g, w)
        assert g.grid_size == [None] * len(g)


def poison_after(batch: KANBatch, model: int, calls: int) -> None:
    """From the ``calls``-th forward on, model ``model``'s output is NaN (deterministic)."""
    count = [0]

    def hook(module, inputs, out):
        count[0] += 1
        if count[0] > calls:
            out = out.clone()
            out[model] = math.nan
        return out

    batch.layers[-1].register_forward_hook(hook)


def test_diverged_model_is_frozen_and_the_others_go_on():
    ds = data()
    opts = {**ADAM, "steps": 30, "log_every": 1, "grid_update_every": 10}
    healthy = [s for s in EIGHT if s != 1]
    clean = KANBatch.from_config(KAN_CFG, seeds=healthy)
    want = [*alone(clean, ds, **opts)]
    batch = KANBatch.from_config(KAN_CFG, seeds=EIGHT)
    reference = KANBatch.from_config(KAN_CFG, seeds=EIGHT)
    # forwards: 1 warm-up, then per step one objective and two evaluations (train, test); from the
    # 11th step's objective on, model 1's loss is NaN
    poison_after(batch, 1, 1 + 3 * 10)
    # a hook keeps fit_batch on the autograd path (the fused step runs no forward): the reference
    # gets a hook that never fires, so that both run the same arithmetic (compared bit for bit)
    poison_after(reference, 1, 10**9)
    got = fit_batch(batch, ds, progress=False, **opts)
    assert [got.diverged[m] for m in healthy] == [None] * 7
    assert "step 10" in got.diverged[1] and "frozen" in got.diverged[1]
    assert len(got[1]) == 10  # rows of steps 0..9, then frozen
    for g, w in zip([got[m] for m in healthy], want, strict=True):  # each as its solo fit
        assert_same_history(g, w)
    # model 1 holds its parameters before step 9 (its last finite objective was at step 9's start)
    ref = fit_batch(reference, ds, progress=False, **{**opts, "steps": 9})
    assert ref.diverged == [None] * 8
    for p, q in zip(batch.parameters(), reference.parameters(), strict=True):
        assert torch.equal(p[1], q[1])
        assert torch.isfinite(p).all()
    # ... and its grid too (the grid update of step 10 is undone with the parameters)
    for p, q in zip(batch.buffers(), reference.buffers(), strict=True):
        assert torch.equal(p[1], q[1])


def test_model_whose_init_blows_up_is_frozen_at_once():
    ds = data()
    batch = KANBatch.from_config(KAN_CFG, seeds=[0, 1])
    with torch.no_grad():
        batch.layers[-1].scale_base[1] = 1e200  # its squared error overflows to inf
    start = [p[1].detach().clone() for p in batch.parameters()]
    got = fit_batch(batch, ds, progress=False, optimizer="lbfgs", steps=3, grid_update_every=2)
    assert got.diverged[0] is None and "step 0" in got.diverged[1]
    assert len(got[0]) == 3 and len(got[1]) == 0
    assert got[0].test_loss[-1] < got[0].test_loss[0]
    lone = KANBatch.from_config(KAN_CFG, seeds=[0])
    want = fit_batch(lone, ds, progress=False, optimizer="lbfgs", steps=3, grid_update_every=2)
    assert_same_history(got[0], want[0])
    for p, s in zip(batch.parameters(), start, strict=True):
        assert torch.equal(p[1], s)


def test_kan_only_options_are_refused_for_mlps():
    batch = MLPBatch.from_config(MLP_CFG, seeds=[0])
    with pytest.raises(ValueError, match=r"knot_steps=2 > 0 \(free knots\) needs a KAN batch"):
        fit_batch(batch, data(), steps=5, knot_steps=2)


def test_bad_batch_and_mlp_grid_schedule_refused():
    with pytest.raises(ValueError, match="grid_schedule needs a KAN"):
        fit_batch(MLPBatch.from_config(MLP_CFG, seeds=[0]), data(), grid_schedule=(3, 5))
    with pytest.raises(TypeError, match="KANBatch or MLPBatch"):
        fit_batch(kl.build(KAN_CFG), data())


def classes(n: int = 160) -> datasets.Dataset:
    """Three classes from the angle of a point around (0.5, 0.5), with noise."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 2, generator=g, dtype=torch.float64)
    angle = torch.atan2(x[:, 1] - 0.5, x[:, 0] - 0.5) + 0.3 * torch.randn(n, generator=g)
    y = ((angle + math.pi) / (2 * math.pi) * 3).long().clamp(0, 2)
    return datasets.from_arrays(
        x.numpy(), y.numpy(), test_size=0.25, seed=0, kind="classification", dtype=torch.float64
    )


CLS_CFG = KAN_CFG.replace(widths=[2, 3, 3])


@pytest.mark.parametrize("family", ["kan", "mlp"])
def test_classification_adam_matches_fit(family):
    ds = classes()
    if family == "kan":
        batch = KANBatch.from_config(CLS_CFG, seeds=SEEDS)
    else:
        batch = MLPBatch.from_config(MLP_CFG.replace(widths=[2, 5, 3]), seeds=SEEDS)
    opts = {**ADAM, "steps": 40, "lr": 0.05, "log_every": 4}
    want = alone(batch, ds, **opts)
    got = fit_batch(batch, ds, progress=False, **opts)
    for g, w in zip(got, want, strict=True):
        assert g.kind == w.kind == "classification"
        assert_same_history(g, w)
        assert all(0.0 <= a <= 1.0 for a in g.test_metric)
    assert got[0].train_loss[-1] < got[0].train_loss[0]  # it trains
    assert len({tuple(g.train_loss) for g in got}) == 4  # the models differ


def test_classification_lbfgs_first_step_matches_fit():
    ds = classes()
    batch = KANBatch.from_config(CLS_CFG, seeds=SEEDS[:3])
    opts = {"optimizer": "lbfgs", "steps": 3, "grid_update_every": 2}
    want = alone(batch, ds, **opts)
    got = fit_batch(batch, ds, progress=False, **opts)
    for g, w in zip(got, want, strict=True):
        assert math.isclose(g.train_loss[0], w.train_loss[0], rel_tol=1e-9)
        assert math.isclose(g.test_loss[0], w.test_loss[0], rel_tol=1e-9)
        assert g.train_metric[0] == w.train_metric[0]


class Recorder:
    """A callback that records what it sees and stops model ``stop_model`` from ``stop_at`` on."""

    def __init__(self, x: torch.Tensor, stop_model: int = -1, stop_at: int = 0) -> None:
        self.x, self.stop_model, self.stop_at = x, stop_model, stop_at
        self.seen: dict[int, list[tuple]] = {}

    def __call__(self, state: StepState) -> bool:
        with torch.no_grad():
            out = state.model(self.x).flatten().tolist()
        row = (state.step, state.loss, state.reg, state.stage, state.grid_size, len(state.history))
        self.seen.setdefault(state.model_index, []).append((row, out))
        return state.model_index == self.stop_model and state.step >= self.stop_at


def same_rows(got: list[tuple], want: list[tuple]) -> None:
    assert len(got) == len(want)
    for (g, g_out), (w, w_out) in zip(got, want, strict=True):
        assert g[0] == w[0] and g[3:] == w[3:], (g, w)
        assert close(list(g[1:3]), list(w[1:3])), (g, w)
        assert close(g_out, w_out), (g_out, w_out)


@pytest.mark.parametrize("optimizer", ["adam", "lbfgs"])
def test_callbacks_per_model_and_one_model_stopped_early(optimizer):
    ds = data()
    probe = ds.test_x[:5]
    opts = {"optimizer": optimizer, "steps": 8, "log_every": 2, "grid_update_every": 3}
    if optimizer == "adam":
        opts.update(lr=0.02, steps=20)
    batch = KANBatch.from_config(KAN_CFG, seeds=SEEDS[:3])
    solo_models = batch.unstack()
    # each model alone, by fit, with the same callback (model 1 stops after the step-3 row)
    solo = []
    for m, model in enumerate(solo_models):
        rec = Recorder(probe, stop_model=0 if m == 1 else -1, stop_at=3)
        solo.append((kl.fit(model, ds, progress=False, callbacks=[rec], **opts), rec.seen[0]))
    rec = Recorder(probe, stop_model=1, stop_at=3)
    seen_twice = Recorder(probe)  # a second callback sees every state too
    got = fit_batch(batch, ds, progress=False, callbacks=[rec, seen_twice], **opts)
    assert got.stopped == [None, 3, None] and got.diverged == [None] * 3
    assert len(got[1]) == 2 and len(got[0]) == len(got[2]) == opts["steps"] // 2
    for m in range(3):
        hist, seen = solo[m]
        assert got[m].step == hist.step
        if optimizer == "adam":
            assert_same_history(got[m], hist)
            same_rows(rec.seen[m], seen)
        else:  # LBFGS: the first logged row to rounding (it amplifies rounding later)
            assert close(got[m].test_loss[:1], hist.test_loss[:1])
            same_rows(rec.seen[m][:1], seen[:1])
        assert rec.seen[m] == seen_twice.seen[m]
        assert [r[0][5] for r in rec.seen[m]] == list(range(1, len(got[m]) + 1))
    # model 1 stayed where its callback stopped it: fit's model 1 after its run (LBFGS: to its
    # amplified rounding; the models trained 8 steps differ by ~1e-2 here, the stopped one after 4
    # by 3e-7 before the grid refit sampled every interval, 5e-5 since: a different trajectory)
    with torch.no_grad():
        out = batch(probe)[1].flatten()
        want = solo_models[1](probe).flatten()
    # (either of fit_batch's paths, fused or autograd)
    assert close(out.tolist(), want.tolist(), rel=1e-3 if optimizer == "lbfgs" else 1e-9)


def test_all_models_stopped_ends_the_run():
    ds = data()
    batch = KANBatch.from_config(KAN_CFG, seeds=[0, 1])
    calls = []

    def stop_all(state: StepState) -> bool:
        calls.append((state.model_index, state.step))
        return True

    got = fit_batch(batch, ds, progress=False, callbacks=[stop_all], grid_schedule=(3, 5), **ADAM)
    assert calls == [(0, 6), (1, 6)]
    assert got.stopped == [6, 6] and [len(h) for h in got] == [1, 1]
    assert batch.grid_size == 3  # the second stage never started


def test_unstack_one_is_model_m_of_unstack():
    batch = KANBatch.from_config(KAN_CFG, seeds=SEEDS)
    x = data().test_x
    for m, model in enumerate(batch.unstack()):
        assert torch.equal(batch.unstack_one(m)(x), model(x))
    with pytest.raises(ValueError, match="m=4"):
        batch.unstack_one(4)
    mlps = MLPBatch.from_config(MLP_CFG, seeds=SEEDS)
    assert torch.equal(mlps.unstack_one(2)(x), mlps.unstack()[2](x))


def test_callbacks_must_be_callable():
    with pytest.raises(TypeError, match="callbacks must be callables"):
        fit_batch(KANBatch.from_config(KAN_CFG, seeds=[0]), data(), callbacks=[1], steps=2)


def test_regularizer_per_model_is_the_single_model_one():
    g = torch.Generator().manual_seed(3)
    norms = [torch.rand(4, 3, 2, generator=g, dtype=torch.float64) for _ in range(2)]
    norms[1][2] = 0.0  # a model whose layer is all zero (the eps keeps it finite)
    l1 = torch.tensor([1.0, 0.5, 0.0, 2.0], dtype=torch.float64)
    ent = torch.tensor([2.0, 0.0, 1.0, 3.0], dtype=torch.float64)
    got = regularizer_per_model(norms, lamb_l1=l1, lamb_entropy=ent)
    assert got.shape == (4,)
    for m in range(4):
        want = regularizer_from_norms(
            [n[m] for n in norms], lamb_l1=float(l1[m]), lamb_entropy=float(ent[m])
        )
        assert math.isclose(float(got[m]), float(want), rel_tol=1e-12)


def per_model_lamb() -> list[kl.FitConfig]:
    base = kl.FitConfig(grid_update_every=5, progress=False)
    return [
        base.replace(lamb=0.0),
        base.replace(lamb=1e-3),
        base.replace(lamb=1e-2, lamb_entropy=0.0),
        base.replace(lamb=1e-2, lamb_l1=0.5),
    ]


def test_per_model_lamb_adam_matches_fit_with_that_lamb():
    ds = data()
    batch = KANBatch.from_config(KAN_CFG, seeds=SEEDS)
    cfgs = [c.replace(**{**ADAM, "steps": 40}) for c in per_model_lamb()]
    want = [kl.fit(model, ds, c) for model, c in zip(batch.unstack(), cfgs, strict=True)]
    got = fit_batch(batch, ds, cfgs)
    assert got[0].reg == [0.0] * len(got[0])  # lamb 0: not computed, as in fit
    assert all(r > 0 for h in got[1:] for r in h.reg)
    for g, w in zip(got, want, strict=True):
        assert_same_history(g, w)


def test_per_model_lamb_lbfgs_first_step_matches_fit():
    ds = data()
    batch = KANBatch.from_config(KAN_CFG, seeds=SEEDS)
    cfgs = [c.replace(optimizer="lbfgs", steps=2) for c in per_model_lamb()]
    want = [kl.fit(model, ds, c) for model, c in zip(batch.unstack(), cfgs, strict=True)]
    got = fit_batch(batch, ds, cfgs)
    for g, w in zip(got, want, strict=True):
        assert close(g.reg[:1], w.reg[:1]) and close(g.test_loss[:1], w.test_loss[:1])


def test_one_lamb_for_all_models_matches_fit():
    ds = data()
    batch = KANBatch.from_config(KAN_CFG, seeds=SEEDS[:2])
    opts = {**ADAM, "steps": 20, "lamb": 1e-2}
    want = alone(batch, ds, **opts)
    got = fit_batch(batch, ds, progress=False, **opts)
    for g, w in zip(got, want, strict=True):
        assert_same_history(g, w)


def test_per_model_configs_may_differ_only_in_the_sparsity_weights():
    batch = KANBatch.from_config(KAN_CFG, seeds=[0, 1, 2])
    base = kl.FitConfig(steps=2)
    with pytest.raises(ValueError, match=r"config\[2\]\.lr=0\.5 differs from config\[0\]\.lr=1\.0"):
        fit_batch(batch, data(), [base, base.replace(lamb=0.1), base.replace(lr=0.5)])
    with pytest.raises(ValueError, match="sequence of 2 FitConfigs but the batch has 3"):
        fit_batch(batch, data(), [base, base])
    with pytest.raises(TypeError, match=r"config\[1\] must be a FitConfig"):
        fit_batch(batch, data(), [base, {"lamb": 0.1}, base])
    mlps = MLPBatch.from_config(MLP_CFG, seeds=[0, 1])
    with pytest.raises(ValueError, match=r"lamb=0\.1 > 0 \(model 1.*needs a KAN batch"):
        fit_batch(mlps, data(), [base, base.replace(lamb=0.1)])


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_free_knots_match_fit_per_model(optimizer):
    ds = data()
    batch = KANBatch.from_config(KAN_CFG, seeds=SEEDS)
    opts = {**ADAM, "optimizer": optimizer, "steps": 12, "log_every": 3, "grid_update_every": 4}
    opts.update(grid_schedule=(3, 5), knot_steps=(5, 3), weight_decay=1e-3)
    want = alone(batch, ds, **opts)
    got = fit_batch(batch, ds, progress=False, **opts)
    for g, w in zip(got, want, strict=True):
        assert_same_history(g, w)
    # each model's knots moved on their own (non-uniform, not the grid update's)
    models = batch.unstack()
    for layer in batch.layers:
        assert not layer.grid_uniform.any()
    assert not torch.equal(batch.layers[0].knots[0], batch.layers[0].knots[1])
    x = ds.test_x
    with torch.no_grad():
        out = batch(x)
    for m, model in enumerate(models):
        assert torch.allclose(out[m], model(x), rtol=0, atol=1e-12)


def test_free_knots_lbfgs_first_step_matches_fit():
    ds = data()
    batch = KANBatch.from_config(KAN_CFG, seeds=SEEDS)
    opts = {"optimizer": "lbfgs", "steps": 3, "knot_steps": 2, "grid_update_every": 1}
    want = alone(batch, ds, **opts)
    got = fit_batch(batch, ds, progress=False, **opts)
    for g, w in zip(got, want, strict=True):
        assert close(g.test_loss[:2], w.test_loss[:2])  # step 0 and the first free-knot step
        assert 1 / 1.5 <= g.test_loss[-1] / w.test_loss[-1] <= 1.5


# --------------------------------------------------------------------------- one data set per model
FUNCS = [
    lambda x: torch.exp(torch.sin(torch.pi * x[:, 0]) + x[:, 1] ** 2),
    lambda x: x[:, 0] * x[:, 1],
    lambda x: torch.sin(3 * x[:, 0]) - x[:, 1],
    lambda x: torch.tanh(2 * x[:, 0] + x[:, 1] ** 3),
]


def tasks(n: int = 120, count: int = 8) -> list[datasets.Dataset]:
    """``count`` different regression data sets of one shape: different functions, seeds and input
    ranges (so each model's grid updates see different inputs)."""
    return [
        datasets.from_function(FUNCS[m % 4], 2, n_train=n, n_test=n - 20, seed=m,
                               ranges=(-1 - 0.5 * m, 1 + 0.25 * m), dtype=torch.float64)
        for m in range(count)
    ]  # fmt: skip


def alone_each(batch, sets, **opts) -> list[kl.History]:
    """Model m of ``batch`` (as it is now) trained alone by fit on ``sets[m]``, and the models."""
    models = batch.unstack()
    hists = [
        kl.fit(model, d, progress=False, **opts) for model, d in zip(models, sets, strict=True)
    ]
    return hists, models


@pytest.mark.parametrize("grid_updates", [0, 10], ids=["no_grid_updates", "grid_updates"])
def test_per_model_data_adam_matches_fit_on_each_data_set(grid_updates):
    sets = tasks()
    batch = KANBatch.from_config(KAN_CFG, seeds=EIGHT)
    opts = {**ADAM, "steps": 60, "log_every": 6, "grid_update_every": grid_updates}
    want, models = alone_each(batch, sets, **opts)
    got = fit_batch(batch, sets, progress=False, **opts)
    assert got.diverged == [None] * 8
    for m, (g, w) in enumerate(zip(got, want, strict=True)):
        assert len(g) == 10
        assert_same_history(g, w)
        for layer, solo in zip(batch.layers, models[m].layers, strict=True):
            assert torch.allclose(layer.knots[m], solo.knots, rtol=1e-9, atol=1e-12)
    assert len({g.train_loss[-1] for g in got}) == 8  # each its own task


def test_per_model_data_adam_mini_batches_match_fit():
    sets = tasks(count=3)
    batch = KANBatch.from_config(KAN_CFG, seeds=[5, 6, 7])
    opts = {**ADAM, "steps": 30, "batch_size": 32, "seed": 4, "optimizer": "adamw"}
    opts.update(weight_decay=1e-3, grid_update_every=7)
    want, _ = alone_each(batch, sets, **opts)
    got = fit_batch(batch, sets, progress=False, **opts)
    for g, w in zip(got, want, strict=True):
        assert_same_history(g, w)


def test_per_model_data_lbfgs_first_step_matches_fit():
    sets = tasks(count=4)
    batch = KANBatch.from_config(KAN_CFG, seeds=SEEDS)
    opts = {"optimizer": "lbfgs", "steps": 2, "grid_update_every": 1}
    want, _ = alone_each(batch, sets, **opts)
    got = fit_batch(batch, sets, progress=False, **opts)
    for g, w in zip(got, want, strict=True):
        for name in ("train_loss", "test_loss", "train_metric", "test_metric"):
            assert math.isclose(getattr(g, name)[0], getattr(w, name)[0], rel_tol=1e-9), name


def test_per_model_data_grid_schedule_each_grid_from_its_own_data():
    sets = tasks(count=4)
    batch = KANBatch.from_config(KAN_CFG, seeds=SEEDS)
    opts = {**ADAM, "steps": 12, "log_every": 4, "grid_schedule": (3, 5), "grid_update_every": 5}
    want, models = alone_each(batch, sets, **opts)
    got = fit_batch(batch, sets, progress=False, **opts)
    for m, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g.grid_size == [3] * 3 + [5] * 3
        assert_same_history(g, w)
        for layer, solo in zip(batch.layers, models[m].layers, strict=True):
            assert torch.allclose(layer.knots[m], solo.knots, rtol=1e-9, atol=1e-12)
    # the first layer's grid spans each model's own input range
    lo = batch.layers[0].knots[:, 0, batch.spline_order]
    assert torch.allclose(lo, torch.stack([d.train_x[:, 0].min() for d in sets]), atol=0.1)


def test_per_model_data_mlp_adam_matches_fit():
    sets = tasks(count=4)
    batch = MLPBatch.from_config(MLP_CFG, seeds=SEEDS)
    want, _ = alone_each(batch, sets, **ADAM)
    got = fit_batch(batch, sets, progress=False, **ADAM)
    for g, w in zip(got, want, strict=True):
        assert_same_history(g, w)


def class_tasks(count: int = 4, n: int = 160) -> list[datasets.Dataset]:
    """``count`` classification data sets of one shape, each with its own labels."""
    out = []
    for m in range(count):
        g = torch.Generator().manual_seed(m)
        x = torch.rand(n, 2, generator=g, dtype=torch.float64)
        angle = torch.atan2(x[:, 1] - 0.5, x[:, 0] - 0.5) + 0.7 * m
        angle = angle + 0.3 * torch.randn(n, generator=g, dtype=torch.float64)  # noisy labels
        y = (torch.remainder(angle + math.pi, 2 * math.pi) / (2 * math.pi) * 3).long().clamp(0, 2)
        out.append(datasets.from_arrays(x.numpy(), y.numpy(), test_size=0.25, seed=m,
                                        kind="classification", dtype=torch.float64))  # fmt: skip
    return out


@pytest.mark.parametrize("family", ["kan", "mlp"])
def test_per_model_data_classification_matches_fit(family):
    sets = class_tasks()
    if family == "kan":
        batch = KANBatch.from_config(CLS_CFG, seeds=SEEDS)
    else:
        batch = MLPBatch.from_config(MLP_CFG.replace(widths=[2, 5, 3]), seeds=SEEDS)
    opts = {**ADAM, "steps": 40, "lr": 0.05, "log_every": 4}
    want, _ = alone_each(batch, sets, **opts)
    got = fit_batch(batch, sets, progress=False, **opts)
    for g, w in zip(got, want, strict=True):
        assert g.kind == "classification"
        assert_same_history(g, w)


def test_per_model_data_classification_lbfgs_first_step_matches_fit():
    sets = class_tasks(count=3)
    batch = KANBatch.from_config(CLS_CFG, seeds=SEEDS[:3])
    # (no grid updates: with them, model 2's first LBFGS step amplifies kernel rounding to ~2e-9,
    # exactly as it does when it trains on its data set shared, on today's path)
    opts = {"optimizer": "lbfgs", "steps": 2, "grid_update_every": 0}
    want, _ = alone_each(batch, sets, **opts)
    got = fit_batch(batch, sets, progress=False, **opts)
    for g, w in zip(got, want, strict=True):
        assert math.isclose(g.train_loss[0], w.train_loss[0], rel_tol=1e-9)
        assert math.isclose(g.test_loss[0], w.test_loss[0], rel_tol=1e-9)
        assert g.train_metric[0] == w.train_metric[0] and g.test_metric[0] == w.test_metric[0]


def test_per_model_data_sparsity_matches_fit():
    sets = tasks(count=3)
    batch = KANBatch.from_config(KAN_CFG, seeds=SEEDS[:3])
    base = kl.FitConfig(**{**ADAM, "steps": 12, "log_every": 3, "grid_update_every": 4})
    cfgs = [base.replace(lamb=lamb) for lamb in (0.0, 0.01, 0.1)]
    models = batch.unstack()
    want = [kl.fit(mo, d, c, progress=False) for mo, d, c in zip(models, sets, cfgs, strict=True)]
    got = fit_batch(batch, sets, cfgs, progress=False)
    for g, w in zip(got, want, strict=True):
        assert_same_history(g, w)
    assert got[2].reg[0] > 0


@pytest.mark.parametrize("optimizer", ["adam", "lbfgs"])
def test_per_model_data_free_knots_match_fit(optimizer):
    sets = tasks(count=3)
    batch = KANBatch.from_config(KAN_CFG, seeds=SEEDS[:3])
    if optimizer == "adam":
        opts = {**ADAM, "steps": 12, "log_every": 3, "grid_update_every": 4}
        opts.update(grid_schedule=(3, 5), knot_steps=(5, 3))
    else:  # the first free-knot step
        opts = {"optimizer": "lbfgs", "steps": 2, "knot_steps": 1, "grid_update_every": 1}
    want, models = alone_each(batch, sets, **opts)
    got = fit_batch(batch, sets, progress=False, **opts)
    for m, (g, w) in enumerate(zip(got, want, strict=True)):
        assert_same_history(g, w)
        for layer, solo in zip(batch.layers, models[m].layers, strict=True):
            assert torch.allclose(layer.knots[m], solo.knots, rtol=1e-9, atol=1e-12)
        assert not batch.layers[0].grid_uniform[m]  # its knots moved


def test_per_model_data_callbacks_see_each_models_own_history():
    sets = tasks(count=3)
    batch = KANBatch.from_config(KAN_CFG, seeds=SEEDS[:3])
    seen: dict[int, list[float]] = {}

    def record(state: StepState) -> bool:
        seen.setdefault(state.model_index, []).append(state.history.train_loss[-1])
        return state.model_index == 1 and state.step >= 5

    opts = {**ADAM, "steps": 12, "log_every": 3}
    want, _ = alone_each(batch, sets, **opts)
    got = fit_batch(batch, sets, progress=False, callbacks=[record], **opts)
    assert got.stopped == [None, 5, None]
    for m in (0, 2):
        assert_same_history(got[m], want[m])
        assert close(seen[m], want[m].train_loss)
    assert close(seen[1], want[1].train_loss[:2])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: datasets.Dataset(d.train_x[:-1], d.train_y[:-1], d.test_x, d.test_y),
         r"data\[2\] has train rows 119 but data\[0\] has 120"),
        (lambda d: datasets.Dataset(d.train_x, d.train_y, d.test_x[:5], d.test_y[:5]),
         r"data\[2\] has test rows 5 but data\[0\] has 100"),
        (lambda d: datasets.Dataset(d.train_x, d.train_y.repeat(1, 2), d.test_x,
                                    d.test_y.repeat(1, 2)),
         r"data\[2\]: .*1 outputs"),
        (lambda d: datasets.Dataset(d.train_x.repeat(1, 2), d.train_y, d.test_x.repeat(1, 2),
                                    d.test_y),
         r"data\[2\]: data has 4 input features"),
        (lambda d: class_tasks(1, n=160)[0], r"data\[2\] is a classification data set but data\[0\] "
         "is regression"),
        (lambda d: "not data", r"data\[2\]: data must be a kanlab Dataset"),
    ],
    ids=["train_rows", "test_rows", "output_width", "input_width", "kind", "not_a_dataset"],
)  # fmt: skip
def test_per_model_data_mismatch_refused(change, message):
    sets = tasks(count=3)
    sets[2] = change(sets[2])
    batch = KANBatch.from_config(KAN_CFG, seeds=SEEDS[:3])
    with pytest.raises((ValueError, TypeError), match=message):
        fit_batch(batch, sets, steps=2)


def test_per_model_data_needs_one_data_set_per_model():
    batch = KANBatch.from_config(KAN_CFG, seeds=SEEDS[:3])
    with pytest.raises(ValueError, match="sequence of 2 data sets but the batch has 3 models"):
        fit_batch(batch, tasks(count=2), steps=2)


def test_per_model_data_a_data_set_that_overflows_freezes_only_its_model():
    sets = tasks(count=3)
    d = sets[1]  # its targets square to inf: model 1's loss is non-finite from the start
    sets[1] = datasets.Dataset(d.train_x, d.train_y * 1e200, d.test_x, d.test_y * 1e200)
    batch = KANBatch.from_config(KAN_CFG, seeds=SEEDS[:3])
    start = [p[1].detach().clone() for p in batch.parameters()]
    opts = {**ADAM, "steps": 12, "log_every": 3, "grid_update_every": 5}
    want, _ = alone_each(batch, [sets[0], sets[0], sets[2]], **opts)
    got = fit_batch(batch, sets, progress=False, **opts)
    assert got.diverged[0] is None and got.diverged[2] is None
    assert "step 0" in got.diverged[1] and len(got[1]) == 0
    assert_same_history(got[0], want[0])
    assert_same_history(got[2], want[2])
    for p, s in zip(batch.parameters(), start, strict=True):
        assert torch.equal(p[1], s)
