"""Tests for kanlab.fit, History, callbacks, grid schedules and the sparsity regulariser."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch

import kanlab as kl
from kanlab import datasets
from kanlab.regularization import layer_entropy, layer_l1, sparsity_regularizer
from kanlab.train import NonFiniteLossError, StepState

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def exp_sin_sq(x: torch.Tensor) -> torch.Tensor:
    return torch.exp(torch.sin(torch.pi * x[:, 0]) + x[:, 1] ** 2)


def paper_data(n: int = 100, dtype: torch.dtype = torch.float64) -> datasets.Dataset:
    return datasets.from_function(exp_sin_sq, 2, n_train=n, n_test=n, seed=0, dtype=dtype)


def class_data() -> datasets.Dataset:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(120, 2, generator=g, dtype=torch.float64) * 2 - 1
    y = (x[:, 0] * x[:, 1] > 0).long() + (x[:, 0] > 0.5).long()  # 3 classes
    return datasets.from_arrays(
        x.numpy(), y.numpy(), test_size=0.25, seed=0, kind="classification", dtype=torch.float64
    )


def kan(widths=(2, 1, 1), grid=5, seed=0) -> kl.KAN:
    return kl.KAN(list(widths), grid_size=grid, seed=seed, dtype=torch.float64)


def rmse(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return math.sqrt(float(((model(x) - y) ** 2).mean()))


def params_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------- validation
def test_bad_optimizer_lists_valid_names():
    with pytest.raises(ValueError, match=r"optimizer 'sgd'.*adam, adamw, lbfgs"):
        kl.fit(kan(), paper_data(), optimizer="sgd", steps=1, progress=False)


def test_dataset_with_nan_is_refused():
    ds = paper_data()
    bad = ds.train_x.clone()
    bad[3, 1] = math.nan
    object.__setattr__(ds, "train_x", bad)  # bypass Dataset's own check: fit must check too
    with pytest.raises(ValueError, match=r"data.train_x contains 1 non-finite"):
        kl.fit(kan(), ds, steps=1, progress=False)


@pytest.mark.parametrize(
    ("widths", "match"), [((3, 1), "3 input features|takes 3"), ((2, 2), "2 outputs")]
)
def test_width_mismatch(widths, match):
    with pytest.raises(ValueError, match=match):
        kl.fit(kan(widths), paper_data(), steps=1, progress=False)


def test_too_few_classes_refused():
    with pytest.raises(ValueError, match="class labels up to 2"):
        kl.fit(kl.MLP([2, 2], dtype=torch.float64), class_data(), steps=1, progress=False)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"steps": -1}, ValueError, "steps must be >= 0"),
        ({"lr": 0.0}, ValueError, "lr must be > 0"),
        ({"batch_size": 10}, ValueError, "lbfgs trains on the full batch"),
        ({"grid_eps": 2.0}, ValueError, "grid_eps"),
        ({"log_every": 0}, ValueError, "log_every"),
        ({"grid_schedule": []}, ValueError, "grid_schedule must not be empty"),
        ({"grid_schedule": [3, 0]}, ValueError, r"grid_schedule\[1\]"),
        ({"loss": "cross_entropy"}, ValueError, "does not fit a regression"),
        ({"loss": "hinge"}, ValueError, "unknown loss"),
        ({"callbacks": [1]}, TypeError, "callables"),
    ],
)
def test_option_validation(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        kl.fit(kan(), paper_data(), progress=False, **{"steps": 1, **kwargs})


def test_kan_only_options_refused_for_mlp():
    mlp = kl.MLP([2, 8, 1], dtype=torch.float64)
    with pytest.raises(ValueError, match="lamb > 0.*needs a KAN"):
        kl.fit(mlp, paper_data(), lamb=0.1, steps=1, progress=False)
    with pytest.raises(ValueError, match="grid_schedule needs a KAN"):
        kl.fit(mlp, paper_data(), grid_schedule=[3, 5], steps=1, progress=False)


def test_fit_takes_a_config_and_keyword_overrides():
    ds = paper_data()
    cfg = kl.FitConfig(optimizer="adam", lr=0.05, steps=4, progress=False)
    a, b, c = kan(), kan(), kan()
    h_cfg = kl.fit(a, ds, cfg)
    h_kw = kl.fit(b, ds, optimizer="adam", lr=0.05, steps=4, progress=False)
    assert h_cfg.train_loss == h_kw.train_loss and torch.equal(a(ds.test_x), b(ds.test_x))
    h_over = kl.fit(c, ds, cfg, steps=2)  # a keyword overrides the config's field
    assert len(h_over) == 2 and h_over.train_loss == h_cfg.train_loss[:2]
    assert cfg.steps == 4  # the config itself is unchanged


def test_unknown_fit_option_is_named_with_the_valid_ones():
    with pytest.raises(TypeError, match=r"fit\(\) got unknown option\(s\) 'stepz'; valid: optimizer, "
                       r"steps, .*knot_steps, restarts, restart_steps, callbacks"):  # fmt: skip
        kl.fit(kan(), paper_data(), stepz=3)
    with pytest.raises(TypeError, match="config must be a FitConfig or None, got dict"):
        kl.fit(kan(), paper_data(), {"steps": 3})


# ----------------------------------------------------------------------------- training
@pytest.mark.parametrize(("optimizer", "lr"), [("lbfgs", 1.0), ("adam", 0.1), ("adamw", 0.1)])
def test_kan_loss_decreases(optimizer, lr):
    ds = paper_data()
    model = kan()
    before = rmse(model, ds.train_x, ds.train_y)
    hist = kl.fit(model, ds, optimizer=optimizer, lr=lr, steps=8, progress=False)
    assert len(hist) == 8 and hist.step == list(range(8))
    assert hist.train_loss[-1] < 0.7 * before
    assert hist.test_loss[-1] < 0.7 * before
    assert hist.train_loss[-1] < hist.train_loss[0]
    assert hist.train_metric == hist.train_loss  # regression: both are the RMSE
    # the recorded RMSE is the model's RMSE after the step
    after = rmse(model, ds.test_x, ds.test_y)
    assert hist.test_loss[-1] == pytest.approx(after, rel=1e-12)


@pytest.mark.parametrize(("optimizer", "lr", "batch"), [("lbfgs", 1.0, None), ("adam", 0.05, 25)])
def test_mlp_trained_by_the_same_loop(optimizer, lr, batch):
    ds = paper_data()
    model = kl.MLP([2, 16, 1], dtype=torch.float64)
    hist = kl.fit(model, ds, optimizer=optimizer, lr=lr, batch_size=batch, steps=20, progress=False)
    assert hist.grid_size == [None] * 20
    assert hist.train_loss[-1] < 0.6 * hist.train_loss[0]


def test_classification_uses_cross_entropy_and_accuracy():
    ds = class_data()
    model = kl.KAN([2, 4, 3], grid_size=3, dtype=torch.float64)
    hist = kl.fit(model, ds, optimizer="adam", lr=0.05, steps=30, progress=False)
    with torch.no_grad():
        logits = model(ds.test_x)
    ce = float(torch.nn.functional.cross_entropy(logits, ds.test_y))
    acc = float((logits.argmax(-1) == ds.test_y).double().mean())
    assert hist.test_loss[-1] == pytest.approx(ce, rel=1e-12)
    assert hist.test_metric[-1] == pytest.approx(acc)
    assert hist.train_loss[-1] < hist.train_loss[0]
    assert hist.best_test_metric == max(hist.test_metric)


def test_float32_data_is_converted_to_the_model_dtype():
    ds = paper_data(dtype=torch.float32)
    hist = kl.fit(kan(), ds, steps=2, progress=False)
    assert all(math.isfinite(v) for v in hist.train_loss)


# ----------------------------------------------------------------------------- grids
@pytest.mark.parametrize("optimizer", ["adam", "lbfgs"])
def test_grid_schedule_staircase(optimizer):
    model = kan((2, 3, 1), grid=3)
    hist = kl.fit(model, paper_data(), optimizer=optimizer, lr=0.05, steps=3,
                  grid_schedule=[3, 5, 10], progress=False)  # fmt: skip
    assert hist.grid_size == [3] * 3 + [5] * 3 + [10] * 3
    assert hist.step == list(range(9))
    assert model.grid_size == 10
    assert model.layers[0].coef.shape == (2, 10 + 3, 3)
    assert hist.train_loss[-1] < hist.train_loss[0]


def test_grid_schedule_first_entry_extends_when_different():
    model = kan(grid=5)
    hist = kl.fit(model, paper_data(), optimizer="adam", steps=2, grid_schedule=[7], progress=False)
    assert hist.grid_size == [7, 7] and model.grid_size == 7


@pytest.mark.parametrize("every", [0, None, 1000])
def test_grid_updates_can_be_disabled(every):
    ds = paper_data()
    ds = datasets.Dataset(ds.train_x * 0.3, ds.train_y, ds.test_x * 0.3, ds.test_y)
    model = kan()
    knots = model.layers[0].knots.clone()
    kl.fit(model, ds, optimizer="adam", steps=2, grid_update_every=every, progress=False)
    if every == 1000:  # updates at step 0 of the stage
        assert not torch.equal(model.layers[0].knots, knots)
        assert float(model.layers[0].knots[:, 3].max()) <= 0.31  # moved onto the data's range
    else:
        assert torch.equal(model.layers[0].knots, knots)


def test_grid_updates_stop_at_stop_grid_update_step(monkeypatch):
    calls: list[int] = []
    model = kan()
    original = model.update_grid

    def spy(x, **kw):
        calls.append(len(calls))
        original(x, **kw)

    monkeypatch.setattr(model, "update_grid", spy)
    kl.fit(model, paper_data(), optimizer="adam", steps=12, grid_update_every=3, stop_grid_update_step=7,
           progress=False)  # fmt: skip
    assert len(calls) == 3  # steps 0, 3, 6


# ----------------------------------------------------------------------------- guard, seed, callbacks
def test_non_finite_loss_restores_parameters():
    model = kan()
    initial = params_of(model)
    with pytest.raises(NonFiniteLossError, match=r"step 0"):  # a 1e200 step overflows float64
        kl.fit(model, paper_data(), optimizer="adam", lr=1e200, steps=5, progress=False,
               grid_update_every=0)  # fmt: skip
    restored = params_of(model)
    assert all(torch.equal(restored[k], initial[k]) for k in initial)


class NaNAfter(torch.nn.Module):
    """A model whose output becomes NaN from the 4th forward call of training on."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(2, 1, dtype=torch.float64))
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        y = x @ self.w
        return y * math.nan if self.calls > 6 else y


def test_non_finite_guard_names_step_and_keeps_last_finite_state():
    model = NaNAfter()
    seen: list[dict[str, torch.Tensor]] = []

    def keep(state: StepState) -> None:
        seen.append(params_of(state.model))

    # each step: one training forward + two evaluation forwards; call 7 is step 2's training one
    with pytest.raises(NonFiniteLossError, match=r"at step 2"):
        kl.fit(model, paper_data(), optimizer="adam", lr=0.1, steps=5, progress=False,
               callbacks=[keep])  # fmt: skip
    assert torch.isfinite(model.w).all()
    assert torch.equal(model.w, seen[0]["w"])  # the state whose loss was last seen finite


def test_seed_makes_runs_bit_identical():
    ds = paper_data()

    def run(seed: int) -> tuple[dict, dict]:
        model = kan((2, 3, 1))
        hist = kl.fit(model, ds, optimizer="adam", lr=0.02, batch_size=32, steps=12, seed=seed,
                      grid_update_every=5, progress=False)  # fmt: skip
        hist_d = hist.to_dict()
        del hist_d["wall_time"], hist_d["compile_time"]  # timings
        return hist_d, params_of(model)

    h1, p1 = run(3)
    h2, p2 = run(3)
    h3, _ = run(4)
    assert h1 == h2
    assert all(torch.equal(p1[k], p2[k]) for k in p1)
    assert h1["train_loss"] != h3["train_loss"]  # the seed changes the mini-batch order


def test_callbacks_stop_early_and_see_state():
    states: list[StepState] = []

    def stop_at_3(state: StepState) -> bool:
        states.append(state)
        return state.step == 3

    hist = kl.fit(kan(), paper_data(), optimizer="adam", steps=20, callbacks=[stop_at_3],
                  progress=False)  # fmt: skip
    assert hist.step == [0, 1, 2, 3]
    assert [s.step for s in states] == [0, 1, 2, 3]
    assert states[-1].history is hist and states[-1].grid_size == 5
    assert all(math.isfinite(s.loss) for s in states)


def test_log_every_records_every_nth_and_last():
    hist = kl.fit(kan(), paper_data(), optimizer="adam", steps=10, log_every=3, progress=False)
    assert hist.step == [2, 5, 8, 9]


def test_history_to_dict_and_conveniences():
    hist = kl.fit(kan(), paper_data(), optimizer="adam", steps=3, progress=False)
    d = json.loads(json.dumps(hist.to_dict()))
    for key in ("step", "train_loss", "test_loss", "train_metric", "test_metric", "reg",
                "grid_size", "wall_time"):  # fmt: skip
        assert len(d[key]) == 3
    assert hist.final_test_metric == hist.test_metric[-1]
    assert hist.best_test_metric == min(hist.test_metric)
    assert hist.time_per_step == pytest.approx(hist.wall_time[-1] / 3)
    assert hist.wall_time == sorted(hist.wall_time)


def test_progress_bar_with_and_without_tqdm(monkeypatch, capsys):
    kl.fit(kan(), paper_data(), optimizer="adam", steps=2, progress=True)
    assert "fit" in capsys.readouterr().err  # a bar was drawn (postfix: losses, grid size)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # import fails: silently no bar
    hist = kl.fit(kan(), paper_data(), optimizer="adam", steps=2, progress=True)
    assert len(hist) == 2
    monkeypatch.undo()
    kl.fit(kan(), paper_data(), optimizer="adam", steps=2, progress=False)
    assert capsys.readouterr().err == ""


# ----------------------------------------------------------------------------- regulariser
def naive_regularizer(model: kl.KAN, x: torch.Tensor, lamb_l1: float, lamb_entropy: float):
    """Edge by edge: phi_{o,i} is the layer's output o with every other edge masked off."""
    total = 0.0
    with torch.no_grad():
        for layer in model.layers:
            norms = {}
            mask = layer.mask.clone()
            for i in range(layer.in_features):
                for o in range(layer.out_features):
                    layer.mask.zero_()
                    layer.mask[i, o] = 1.0
                    phi = layer(x)[:, o]
                    norms[i, o] = sum(abs(float(v)) for v in phi) / len(phi)
            layer.mask.copy_(mask)
            l1 = sum(norms.values())
            ent = -sum((n / l1) * math.log(n / l1) for n in norms.values() if n > 0)
            total += lamb_l1 * l1 + lamb_entropy * ent
            x = layer(x)
    return total


def test_regularizer_matches_naive_edge_loop():
    model = kan((2, 3, 2))
    x = torch.rand(50, 2, dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        acts = model.activations(x)
    got = float(sparsity_regularizer(acts, lamb_l1=0.7, lamb_entropy=1.3))
    assert got == pytest.approx(naive_regularizer(model, x, 0.7, 1.3), rel=1e-9)
    # the pieces: uniform edge norms give entropy log(n_edges)
    flat = torch.ones(4, 3, 2, dtype=torch.float64)
    assert float(layer_entropy(flat)) == pytest.approx(math.log(6), rel=1e-9)
    assert float(layer_l1(-flat)) == pytest.approx(6.0)


def test_regularizer_gradient_is_finite_with_dead_edges():
    acts = torch.zeros(5, 2, 3, dtype=torch.float64, requires_grad=True)
    reg = sparsity_regularizer([acts])
    reg.backward()
    assert math.isfinite(float(reg.detach())) and torch.isfinite(acts.grad).all()


def test_fit_records_reg_and_sparsifies():
    ds = paper_data()
    model = kan((2, 3, 1))
    with torch.no_grad():
        expected = float(sparsity_regularizer(model.activations(ds.train_x)))
    opts = {"optimizer": "adam", "lr": 0.05, "steps": 20, "grid_update_every": 0, "progress": False}
    hist = kl.fit(model, ds, lamb=1.0, **opts)
    assert hist.reg[0] == pytest.approx(expected, rel=1e-12)
    assert hist.reg[-1] < hist.reg[0]
    dense = kan((2, 3, 1))
    kl.fit(dense, ds, **opts)
    with torch.no_grad():
        l1 = [sum(float(layer_l1(a)) for a in m.activations(ds.train_x)) for m in (model, dense)]
    assert l1[0] < l1[1]


def test_lbfgs_weight_decay_shrinks_parameters():
    ds = paper_data()
    free, decayed = kan(), kan()
    kl.fit(free, ds, steps=3, grid_update_every=0, progress=False)
    kl.fit(decayed, ds, steps=3, grid_update_every=0, weight_decay=1.0, progress=False)
    norm = [sum(float(p.detach().pow(2).sum()) for p in m.parameters()) for m in (free, decayed)]
    assert norm[1] < norm[0]


# ----------------------------------------------------------------------------- paper (slow)
@pytest.mark.slow
def test_grid_extension_reproduces_the_paper():
    """KAN [2,1,1] on exp(sin(pi x) + y^2), 1000/1000 points, float64, LBFGS, grid 3 -> 50.

    Shorter than the paper's recipe (50 instead of 200 steps per grid, no grid 100) to stay near
    30 s; examples/grid_extension.py runs the full recipe. The last 20 steps of the grid-3 stage
    also train the knots (free-knot splines: there the uniform knots alone give 1.5e-2). Official
    test RMSE (pykan, 200 steps): 1.39e-2, 7.25e-3, 5.02e-4, 1.09e-4, 6.35e-5.
    """
    grids, steps = [3, 5, 10, 20, 50], 50
    knots = [20, 0, 0, 0, 0]  # free knots on the coarsest stage only, as in the example
    official = [1.39e-2, 7.25e-3, 5.02e-4, 1.09e-4, 6.35e-5]
    ds = datasets.get("paper/exp_sin_sq", n_train=1000, n_test=1000, seed=0, dtype=torch.float64)
    model = kl.KAN([2, 1, 1], grid_size=3, seed=0, dtype=torch.float64)
    hist = kl.fit(model, ds, steps=steps, grid_schedule=grids, grid_eps=1.0, knot_steps=knots,
                  progress=False)  # fmt: skip
    rmse = [hist.test_metric[(i + 1) * steps - 1] for i in range(len(grids))]
    assert hist.grid_size[::steps] == grids
    assert all(math.isfinite(v) for v in hist.test_metric)
    assert max(hist.test_metric[steps:]) < 2 * rmse[0]  # never blows up after an extension
    for got, ref in zip(rmse, official, strict=True):
        assert got <= ref  # at least as good as the official code at every grid
    assert rmse[-1] <= 1e-5  # the paper's N^-4 scaling reached by grid 50
