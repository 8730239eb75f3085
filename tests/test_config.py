"""Configs: JSON round trips, unknown names refused, validation shared with the constructors and fit,
models rebuilt from configs bit for bit."""

from __future__ import annotations

import json

import pytest
import torch

import kanlab as kl
from kanlab.config import FitConfig, KANConfig, MLPConfig

CONFIGS = [
    KANConfig(widths=(2, 5, 1)),
    KANConfig(widths=[3, 4, 2], grid_size=7, spline_order=2, grid_range=[-2, 3],
              base_activation="tanh", noise_scale=0.3, seed=None, dtype=torch.float64),
    KANConfig(widths=(2, 3, 1), grid_size=(7, 5), grid_range=((-2.0, 3.0), (-1.0, 1.0)),
              base_activation=("silu", "identity")),
    MLPConfig(widths=(2, 32, 32, 1)),
    MLPConfig(widths=[3, 8, 2], activation="gelu", seed=4, dtype="float32"),
    FitConfig(),
    FitConfig(optimizer="ADAM", steps=7, lr=1, batch_size=16, loss="mse", weight_decay=0.01,
              grid_schedule=[3, 5], knot_steps=[2, 0], grid_update_every=None, progress=False),
]  # fmt: skip


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: type(c).__name__)
def test_json_round_trip(cfg):
    text = json.dumps(cfg.to_dict())
    back = type(cfg).from_dict(json.loads(text))
    assert back == cfg and back.to_dict() == cfg.to_dict()
    assert hash(back) == hash(cfg)  # frozen and hashable: usable as a key


def test_values_are_normalised():
    cfg = CONFIGS[1]
    assert cfg.widths == (3, 4, 2) and cfg.grid_range == (-2.0, 3.0) and cfg.dtype == "float64"
    assert KANConfig(widths=(2, 3, 1), grid_size=[4, 4], base_activation=["relu", "relu"]) == (
        KANConfig(widths=(2, 3, 1), grid_size=4, base_activation="relu")
    )  # equal per-layer values collapse to one
    fit = CONFIGS[-1]
    assert fit.optimizer == "adam" and fit.lr == 1.0 and isinstance(fit.lr, float)
    assert fit.grid_schedule == (3, 5) and fit.knot_steps == (2, 0) and fit.total_steps == 14


@pytest.mark.parametrize("cls", [KANConfig, MLPConfig, FitConfig])
def test_unknown_names_are_refused(cls):
    base = {"widths": [2, 1]} if cls is not FitConfig else {}
    with pytest.raises(ValueError, match=rf"unknown {cls.__name__} field\(s\) 'colour', 'size'"):
        cls.from_dict({**base, "size": 3, "colour": "red"})
    cfg = cls.from_dict(base)
    with pytest.raises(TypeError, match=rf"unknown {cls.__name__} option\(s\) 'stepz'; valid: "):
        cfg.replace(stepz=3)
    with pytest.raises(TypeError, match="needs a mapping"):
        cls.from_dict([("widths", [2, 1])])


def test_replace_validates():
    cfg = KANConfig(widths=(2, 5, 1))
    assert cfg.replace(grid_size=10).grid_size == 10 and cfg.grid_size == 5
    with pytest.raises(ValueError, match="grid_size must be >= 1, got 0"):
        cfg.replace(grid_size=0)
    with pytest.raises(ValueError, match=r"grid_size must be one value or one per layer \(2\)"):
        cfg.replace(grid_size=(3, 4, 5))


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"grid_size": 0}, ValueError, "grid_size must be >= 1, got 0"),
        ({"grid_size": 2.5}, TypeError, "grid_size must be an int"),
        ({"grid_size": (3, 0)}, ValueError, r"grid_size\[1\] must be >= 1, got 0"),
        ({"spline_order": -1}, ValueError, "spline_order must be >= 0"),
        ({"grid_range": (1.0, -1.0)}, ValueError, "grid_range must have low < high"),
        ({"base_activation": "softmax"}, ValueError, "unknown base_activation 'softmax'"),
        ({"noise_scale": -0.1}, ValueError, "noise_scale must be >= 0.0"),
        ({"seed": -1}, ValueError, "seed must be >= 0, got -1"),
        ({"dtype": torch.int32}, TypeError, "dtype must be a floating-point dtype"),
        ({"dtype": "float8"}, ValueError, "unknown dtype 'float8'"),
    ],
)
def test_kan_options_fail_the_same_way_through_either_door(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        KANConfig(widths=(2, 3, 1), **kwargs)
    with pytest.raises(exc, match=match):
        kl.KAN([2, 3, 1], **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"optimizer": "sgd"}, ValueError, r"optimizer 'sgd'.*adam, adamw, lbfgs"),
        ({"steps": -1}, ValueError, "steps must be >= 0"),
        ({"lr": 0.0}, ValueError, "lr must be > 0"),
        ({"batch_size": 10}, ValueError, "lbfgs trains on the full batch"),
        ({"grid_eps": 2.0}, ValueError, "grid_eps"),
        ({"log_every": 0}, ValueError, "log_every"),
        ({"grid_schedule": []}, ValueError, "grid_schedule must not be empty"),
        ({"grid_schedule": [3, 0]}, ValueError, r"grid_schedule\[1\]"),
        ({"loss": "hinge"}, ValueError, "unknown loss"),
        ({"knot_steps": 5, "steps": 3}, ValueError, r"knot_steps must be <= steps \(3\), got 5"),
        ({"knot_steps": [1], "grid_schedule": [3, 5]}, ValueError, "knot_steps has 1 entries"),
        ({"knot_steps": 1, "lamb": 0.1}, ValueError, "cannot be combined with lamb > 0"),
        ({"lamb_l1": -1.0}, ValueError, "lamb_l1 must be >= 0.0"),
        ({"progress": "yes"}, TypeError, "progress must be a bool"),
    ],
)
def test_fit_options_validated_once(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        FitConfig(**kwargs)


def test_kan_from_config_is_the_constructor_bit_for_bit():
    kw = {"grid_size": 7, "spline_order": 2, "grid_range": (-2.0, 3.0), "noise_scale": 0.3,
          "base_activation": "tanh", "seed": 11, "dtype": torch.float64}  # fmt: skip
    direct = kl.KAN([3, 4, 2], **kw)
    for model in (kl.KAN.from_config(direct.config), kl.build(direct.config)):
        assert type(model) is kl.KAN and model.config == direct.config
        for (n1, p1), (n2, p2) in zip(
            direct.state_dict().items(), model.state_dict().items(), strict=True
        ):
            assert n1 == n2 and torch.equal(p1, p2)
    mlp = kl.MLP([2, 8, 1], activation="tanh", seed=3, dtype=torch.float64)
    again = kl.build(mlp.config)
    assert type(again) is kl.MLP and all(
        torch.equal(a, b) for a, b in zip(mlp.parameters(), again.parameters(), strict=True)
    )
    with pytest.raises(TypeError, match="build needs a KANConfig or an MLPConfig, got FitConfig"):
        kl.build(FitConfig())
    with pytest.raises(TypeError, match="KAN.from_config needs a KANConfig, got MLPConfig"):
        kl.KAN.from_config(mlp.config)


def test_model_config_describes_the_model_as_it_is_now():
    model = kl.KAN([2, 3, 1], grid_size=4, seed=5, noise_scale=0.2, dtype=torch.float64)
    assert model.config == KANConfig(widths=(2, 3, 1), grid_size=4, seed=5, noise_scale=0.2,
                                     dtype="float64")  # fmt: skip
    x = torch.rand(50, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 - 1
    model.extend_grid(9, x)  # grid extension: the config follows the shapes
    assert model.config.grid_size == 9 and model.grid_size == 9
    model.layers[0].extend_grid(12)  # one layer on its own: per-layer sizes; grid_size the largest
    assert model.config.grid_size == (12, 9) and model.grid_size == 12
    fresh = kl.build(model.config)
    fresh.load_state_dict(model.state_dict())  # the shapes fit without resizing
    assert torch.equal(fresh(x), model(x))
    pruned = kl.prune(model, x, node_threshold=0.5, edge_threshold=0.0)
    assert pruned.config.widths == tuple(pruned.widths) and pruned.config.widths[1] < 3
    assert model.float().config.dtype == "float32"
    mlp = kl.MLP([2, 4, 1]).double()
    assert mlp.config == MLPConfig(widths=(2, 4, 1), dtype="float64")
