"""Tests for kanlab.save / kanlab.load: round trips, atomic saves, corrupt and foreign files."""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as st_save

import kanlab as kl
from kanlab import io


def data_x(n: int = 64, d: int = 2, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, d, generator=g, dtype=dtype) * 2.4 - 1.2


def same_outputs(a: torch.nn.Module, b: torch.nn.Module, x: torch.Tensor) -> bool:
    with torch.no_grad():
        return torch.equal(a(x), b(x))


def kan_model() -> kl.KAN:
    return kl.KAN([2, 3, 1], grid_size=4, seed=3, dtype=torch.float64)


# ----------------------------------------------------------------------------- round trips
@pytest.mark.parametrize(
    "make",
    [
        kan_model,
        lambda: kl.KAN([3, 2, 2], grid_size=6, spline_order=2, base_activation="identity"),
        lambda: kl.MLP([2, 5, 1], activation="tanh", dtype=torch.float64),
    ],
)
def test_round_trip_is_bit_identical(tmp_path, make):
    model = make()
    x = data_x(d=model.widths[0], dtype=next(model.parameters()).dtype)
    path = tmp_path / "m.safetensors"
    kl.save(model, path)
    loaded = kl.load(path)
    assert type(loaded) is type(model)
    assert loaded.widths == model.widths
    assert same_outputs(model, loaded, x)
    sd, ld = model.state_dict(), loaded.state_dict()
    assert sd.keys() == ld.keys() and all(torch.equal(sd[k], ld[k]) for k in sd)


def test_round_trip_after_grid_update_and_extension(tmp_path):
    model = kan_model()
    x = data_x()
    model.update_grid(x)
    model.extend_grid(9, x)
    model.layers[1].mask[1, 0] = 0.0  # a pruned edge travels too
    kl.save(model, tmp_path / "m.safetensors")
    loaded = kl.load(tmp_path / "m.safetensors")
    assert loaded.grid_size == 9 and not loaded.layers[0]._uniform
    assert torch.equal(loaded.layers[1].mask, model.layers[1].mask)
    assert same_outputs(model, loaded, x)
    # the loaded model keeps working: grid extension from the checkpoint's non-uniform grid (equal
    # to rounding only: the refit's coefficient table is not contiguous in memory, a loaded one is)
    loaded.extend_grid(12, x)
    model.extend_grid(12, x)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=1e-12, atol=1e-12)


def test_round_trip_after_fit_with_grid_schedule(tmp_path):
    ds = kl.datasets.from_function(
        lambda x: torch.sin(3 * x[:, :1]) * x[:, 1:], 2, n_train=60, n_test=20, dtype=torch.float64
    )
    model = kan_model()
    kl.fit(model, ds, optimizer="adam", steps=2, grid_schedule=[4, 7], progress=False)
    kl.save(model, tmp_path / "m.safetensors")
    assert same_outputs(model, kl.load(tmp_path / "m.safetensors", device="cpu"), ds.test_x)


def test_per_layer_options_are_restored(tmp_path):
    model = kan_model()
    model.layers[1].base_activation = "tanh"
    model.layers[0].grid_range = (-2.0, 3.0)
    kl.save(model, tmp_path / "m.safetensors")
    loaded = kl.load(tmp_path / "m.safetensors")
    assert [la.base_activation for la in loaded.layers] == ["silu", "tanh"]
    assert loaded.layers[0].grid_range == (-2.0, 3.0)
    assert same_outputs(model, loaded, data_x())


def test_load_never_unpickles(tmp_path, monkeypatch):
    kl.save(kan_model(), tmp_path / "m.safetensors")

    def refuse(*args, **kwargs):
        raise AssertionError("pickle used")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    assert isinstance(kl.load(tmp_path / "m.safetensors"), kl.KAN)


# ----------------------------------------------------------------------------- atomic save
def test_interrupted_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "m.safetensors"
    old = kan_model()
    kl.save(old, path)
    before = path.read_bytes()

    def crash(fh, data):
        fh.write(data[: len(data) // 2])
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(io, "_write_all", crash)
    new = kl.KAN([2, 3, 1], grid_size=4, seed=99, dtype=torch.float64)
    with pytest.raises(OSError, match="simulated"):
        kl.save(new, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temp litter
    assert same_outputs(old, kl.load(path), data_x())


def test_save_refuses_bad_targets_and_models(tmp_path):
    with pytest.raises(ValueError, match="is a directory"):
        kl.save(kan_model(), tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        kl.save(kan_model(), tmp_path / "missing" / "m.safetensors")
    with pytest.raises(TypeError, match="Linear"):
        kl.save(torch.nn.Linear(2, 1), tmp_path / "m.safetensors")
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        kl.load(tmp_path / "absent.safetensors")


# ----------------------------------------------------------------------------- corrupt files
def saved_bytes(tmp_path) -> bytes:
    kl.save(kan_model(), tmp_path / "m.safetensors")
    return (tmp_path / "m.safetensors").read_bytes()


def split(data: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def join(header: dict, body: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + body


@pytest.mark.parametrize("keep", [0.99, 0.5, 0.01])
def test_truncated_file(tmp_path, keep):
    data = saved_bytes(tmp_path)
    bad = tmp_path / "t.safetensors"
    bad.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ValueError, match="truncated|not a valid safetensors"):
        kl.load(bad)


def test_tampered_config(tmp_path):
    header, body = split(saved_bytes(tmp_path))
    config = json.loads(header["__metadata__"]["kanlab"])
    config["base_activations"] = ["relu", "silu"]  # same tensors, different function
    header["__metadata__"]["kanlab"] = json.dumps(config)
    bad = tmp_path / "t.safetensors"
    bad.write_bytes(join(header, body))
    with pytest.raises(ValueError, match="do not match the checksum"):
        kl.load(bad)


def test_tampered_tensor_bytes(tmp_path):
    data = bytearray(saved_bytes(tmp_path))
    data[-3] ^= 0xFF  # flip bits in the last tensor's data
    bad = tmp_path / "t.safetensors"
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="do not match the checksum"):
        kl.load(bad)


def test_tampered_header_bytes(tmp_path):
    data = bytearray(saved_bytes(tmp_path))
    data[9] = ord("}")  # break the JSON header
    bad = tmp_path / "t.safetensors"
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="header is not JSON"):
        kl.load(bad)


def test_config_that_does_not_fit_the_tensors(tmp_path):
    # a self-consistent file (valid checksum) whose config names a different architecture
    model = kan_model()
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    config = {"format": "kanlab", "version": io.FORMAT_VERSION, **io.model_config(model)}
    config["config"]["widths"] = [2, 4, 1]
    config["sha256"] = io._digest(tensors, config)
    bad = tmp_path / "t.safetensors"
    bad.write_bytes(st_save(tensors, metadata={"kanlab": json.dumps(config)}))
    with pytest.raises(ValueError, match="tensors do not match the config"):
        kl.load(bad)


@pytest.mark.parametrize(
    ("edit", "nested", "match"),
    [
        ({"version": 99}, {}, "format version 99"),
        ({"class": "Transformer"}, {}, "unknown model class"),
        ({"grid_sizes": [4]}, {}, "invalid kanlab checkpoint config"),
        ({"dtype": "torch.int8"}, {}, "invalid kanlab checkpoint config"),
        ({}, {"grid_size": [4]}, r"invalid kanlab checkpoint config.*grid_size"),
        ({}, {"dtype": "int8"}, r"invalid kanlab checkpoint config.*unknown dtype 'int8'"),
        ({}, {"depth": 3}, r"invalid kanlab checkpoint config.*unknown KANConfig field.*'depth'"),
    ],
)
def test_bad_config_fields(tmp_path, edit, nested, match):
    model = kan_model()
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    config = {"format": "kanlab", "version": io.FORMAT_VERSION, **io.model_config(model), **edit}
    config["config"].update(nested)
    config["sha256"] = io._digest(tensors, config)
    bad = tmp_path / "t.safetensors"
    bad.write_bytes(st_save(tensors, metadata={"kanlab": json.dumps(config)}))
    with pytest.raises(ValueError, match=match):
        kl.load(bad)


def test_files_of_other_formats(tmp_path):
    pickled = tmp_path / "model.pt"
    torch.save(kan_model().state_dict(), pickled)
    with pytest.raises(ValueError, match="not a valid safetensors"):
        kl.load(pickled)
    text = tmp_path / "notes.txt"
    text.write_text("hello, this is not a checkpoint\n")
    with pytest.raises(ValueError, match="not a valid safetensors"):
        kl.load(text)
    plain = tmp_path / "plain.safetensors"
    plain.write_bytes(st_save({"w": torch.ones(2)}))
    with pytest.raises(ValueError, match="not a kanlab checkpoint"):
        kl.load(plain)


# ----------------------------------------------------------------------------- old files
V1 = Path(__file__).parent / "data" / "checkpoints_v1"


def _v1_inputs(d: int, dtype: torch.dtype) -> torch.Tensor:
    # as tests/data/checkpoints_v1/make.py made them
    t = torch.arange(16 * d, dtype=torch.float64).reshape(16, d)
    return (torch.sin(1.7 * t + 0.3) * 1.3).to(dtype)


@pytest.mark.parametrize("name", sorted(json.loads((V1 / "outputs.json").read_text())))
def test_version_1_checkpoints_still_load(name):
    """Files written by kanlab before checkpoints stored a config (format version 1) load, and the
    models compute what they computed when saved (outputs recorded then)."""
    record = json.loads((V1 / "outputs.json").read_text())[name]
    header, _ = split((V1 / f"{name}.safetensors").read_bytes())
    assert json.loads(header["__metadata__"]["kanlab"])["version"] == 1
    model = kl.load(V1 / f"{name}.safetensors")
    dtype = getattr(torch, record["dtype"])
    assert next(model.parameters()).dtype == dtype
    outputs = [[float.fromhex(v) for v in row] for row in record["outputs"]]
    expected = torch.tensor(outputs, dtype=torch.float64)
    with torch.no_grad():
        got = model(_v1_inputs(model.widths[0], dtype)).double()
    # equal to rounding (the kernels that run may differ from the recording's: numba or not)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(got, expected, rtol=tol, atol=tol)
    # and it round-trips through the current format unchanged
    again = io.model_config(model)
    assert again["class"] == type(model).__name__ and kl.build(model.config).config == model.config


def test_version_1_details_are_kept(tmp_path):
    mixed = kl.load(V1 / "kan_f64_mixed_grids.safetensors")
    assert [la.grid_size for la in mixed.layers] == [7, 5] and mixed.grid_size == 7
    assert mixed.config.grid_size == (7, 5)
    per_layer = kl.load(V1 / "kan_f64_per_layer_options.safetensors")
    assert [la.base_activation for la in per_layer.layers] == ["silu", "tanh"]
    assert per_layer.layers[0].grid_range == (-2.0, 3.0)
    sym = kl.load(V1 / "kan_f64_symbolic.safetensors")
    assert sym.layers[0].symbolic_edges() == {(0, 0): "sin", (1, 1): "x^2"}
    ext = kl.load(V1 / "kan_f64_extended.safetensors")
    assert ext.grid_size == 9 and not ext.layers[0]._uniform and ext.layers[1].mask[1, 0] == 0
    for model in (mixed, per_layer, sym, ext):  # saved again in the current format: the same model
        kl.save(model, tmp_path / "m.safetensors")
        again = kl.load(tmp_path / "m.safetensors")
        x = _v1_inputs(2, torch.float64)
        assert again.config == model.config and same_outputs(model, again, x)


def test_checkpoint_stores_the_config(tmp_path):
    model = kl.KAN([2, 3, 1], grid_size=4, seed=3, noise_scale=0.05, dtype=torch.float64)
    model.extend_grid(6)
    kl.save(model, tmp_path / "m.safetensors")
    header, _ = split((tmp_path / "m.safetensors").read_bytes())
    record = json.loads(header["__metadata__"]["kanlab"])
    assert record["version"] == io.FORMAT_VERSION == 2 and record["class"] == "KAN"
    assert kl.KANConfig.from_dict(record["config"]) == model.config
    assert record["config"]["grid_size"] == 6 and record["config"]["noise_scale"] == 0.05
    assert record["config"]["seed"] == 3 and record["config"]["dtype"] == "float64"
    assert kl.load(tmp_path / "m.safetensors").config == model.config
