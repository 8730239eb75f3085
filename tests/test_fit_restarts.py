"""Restarts (kanlab.train.restarts): the best of several short starts is kept, by training loss."""

from __future__ import annotations

import math

import pytest
import torch

import kanlab as kl
from kanlab.config import FitConfig
from kanlab.models import build
from kanlab.train import NonFiniteLossError, fit_batch
from kanlab.train.history import History
from kanlab.train.restarts import candidate_seed, choose_start


def toy(n=64):
    return kl.datasets.from_function(
        lambda x: torch.sin(3 * x[:, 0]) * x[:, 1], 2, n_train=n, n_test=n, seed=0,
        dtype=torch.float64,
    )  # fmt: skip


def fake_train(losses_by_seed, trained):
    """A stand-in for fit: records the candidate's seed and returns its tabled loss (raises for
    ``nan``), without training."""

    def train(model, cfg):
        trained.append((model.config.seed, cfg.steps, cfg.grid_schedule, cfg.progress))
        loss = losses_by_seed[model.config.seed]
        if math.isnan(loss):
            raise NonFiniteLossError("diverged")
        h = History()
        h.append(cfg.steps - 1, (loss, loss, loss, loss), 0.0, None, 0.0)
        return h

    return train


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_the_candidate_with_the_lowest_training_loss_is_loaded():
    model = kl.KAN([2, 1, 1], grid_size=3, seed=7, dtype=torch.float64)
    table = {
        7: 0.5,
        candidate_seed(7, 1): 0.2,
        candidate_seed(7, 2): 0.01,
        candidate_seed(7, 3): 0.3,
    }
    trained = []
    cfg = FitConfig(restarts=3, restart_steps=5, grid_schedule=(3, 5))
    losses = choose_start(model, toy(), cfg, fake_train(table, trained))
    assert losses == [0.5, 0.2, 0.01, 0.3]
    assert trained == [(s, 5, None, False) for s in table]  # short, no schedule, no bar
    winner = build(model.config.replace(seed=candidate_seed(7, 2)))
    for k, v in state(winner).items():
        assert torch.equal(model.state_dict()[k], v), k
    assert model.config.seed == 7  # the model keeps its own configuration


def test_a_diverged_candidate_never_wins_and_all_diverged_leave_the_model_as_given():
    model = kl.MLP([2, 4, 1], seed=1, dtype=torch.float64)
    before = state(model)
    table = {1: math.nan, candidate_seed(1, 1): math.nan}
    losses = choose_start(model, toy(), FitConfig(restarts=1), fake_train(table, []))
    assert losses == [math.inf, math.inf]
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    table[1] = 3.0
    assert choose_start(model, toy(), FitConfig(restarts=1), fake_train(table, [])) == [
        3.0,
        math.inf,
    ]
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())  # candidate 0


@pytest.mark.slow
def test_fit_with_restarts_trains_the_best_start_and_records_the_losses():
    data = toy()
    model = kl.KAN([2, 2, 1], grid_size=3, seed=0, dtype=torch.float64)
    hist = kl.fit(model, data, steps=0, restarts=2, restart_steps=3, progress=False)
    assert len(hist.restart_losses) == 3 and len(hist) == 0
    # steps=0: the model is the winner after its restart_steps; its loss is the minimum
    alone = kl.KAN([2, 2, 1], grid_size=3, seed=0, dtype=torch.float64)
    first = kl.fit(alone, data, steps=3, progress=False, log_every=3).train_loss[-1]
    assert hist.restart_losses[0] == pytest.approx(first, rel=1e-12)  # candidate 0: the model
    with torch.no_grad():
        pred = model(data.train_x)
    rmse = float(((pred - data.train_y) ** 2).mean().sqrt())
    assert rmse == pytest.approx(min(hist.restart_losses), rel=1e-9)
    assert kl.fit(model, data, steps=2, progress=False).restart_losses == []  # off by default


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [("restarts", -1, "restarts"), ("restart_steps", 0, "restart_steps"),
     ("restarts", 1.5, "restarts")],
)  # fmt: skip
def test_bad_restart_options_are_named(field, value, match):
    with pytest.raises((ValueError, TypeError), match=match):
        FitConfig(**{field: value})


def _alone_and_batched(models, cfg, data):
    """Each model trained alone by ``fit`` and all of them by one ``fit_batch`` (copies)."""
    import copy

    from kanlab.model_batch import KANBatch, MLPBatch

    cls = KANBatch if isinstance(models[0], kl.KAN) else MLPBatch
    batch = cls.stack([copy.deepcopy(m) for m in models])
    batched = fit_batch(batch, data, cfg)
    alone = [kl.fit(copy.deepcopy(m), data, cfg) for m in models]
    return batch, batched, alone


@pytest.mark.parametrize("family", ["kan", "mlp"])
def test_fit_batch_restarts_choose_per_model_as_fit_alone_does(family):
    # Adam is exactly per model, so each model's candidates' losses, its choice, the training
    # after it and the final parameters are fit's (to rounding)
    data = toy()
    if family == "kan":
        models = [kl.KAN([2, 2, 1], grid_size=3, seed=s, dtype=torch.float64) for s in (0, 1, 2)]
    else:
        models = [kl.MLP([2, 4, 1], seed=s, dtype=torch.float64) for s in (0, 1, 2)]
    cfg = FitConfig(optimizer="adam", lr=0.05, steps=4, restarts=3, restart_steps=6,
                    progress=False, log_every=1)  # fmt: skip
    _, batched, alone = _alone_and_batched(models, cfg, data)
    for hb, ha in zip(batched, alone, strict=True):
        assert len(hb.restart_losses) == 4
        assert hb.restart_losses == pytest.approx(ha.restart_losses, rel=1e-9)
        assert hb.train_loss == pytest.approx(ha.train_loss, rel=1e-9)
    # the candidates' losses differ per model: the choice is each model's own, not the batch's
    assert batched[0].restart_losses != batched[1].restart_losses


def test_fit_batch_restarts_load_each_models_winner():
    data = toy()
    models = [kl.KAN([2, 2, 1], grid_size=3, seed=s, dtype=torch.float64) for s in (3, 4)]
    cfg = FitConfig(optimizer="adam", lr=0.05, steps=0, restarts=2, restart_steps=5,
                    progress=False)  # fmt: skip
    batch, batched, _ = _alone_and_batched(models, cfg, data)
    for m, model in enumerate(batch.unstack()):
        with torch.no_grad():
            pred = model(data.train_x)
        rmse = float(((pred - data.train_y) ** 2).mean().sqrt())
        assert rmse == pytest.approx(min(batched[m].restart_losses), rel=1e-9)
        assert model.config.seed == models[m].config.seed  # the model keeps its configuration


def test_fit_batch_restarts_lbfgs_first_step_as_fit_alone():
    data = toy()
    models = [kl.KAN([2, 2, 1], grid_size=3, seed=s, dtype=torch.float64) for s in (0, 5)]
    cfg = FitConfig(steps=1, restarts=2, restart_steps=1, progress=False)
    _, batched, alone = _alone_and_batched(models, cfg, data)
    for hb, ha in zip(batched, alone, strict=True):
        assert hb.restart_losses == pytest.approx(ha.restart_losses, rel=1e-9)
