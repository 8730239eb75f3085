"""Checkpoints: ``save(model, path)`` / ``load(path)`` for KAN and MLP models.

Format: one safetensors file. The tensors are the model's ``state_dict`` (parameters and buffers:
coefficients, scales, knots, masks, and a layer's symbolic-edge buffers when it has any); the
safetensors header metadata holds, under the key ``"kanlab"``, a JSON config that says how to rebuild
the model (class, widths, grid sizes, spline order, activations, dtype) and a SHA-256 digest of the
tensor data. Nothing is pickled, so loading a file never runs code.

Loading checks, in order, with a ``ValueError`` naming the problem: the file is a safetensors file
(complete, header parses), it is a kanlab checkpoint (config present, known format version and class),
the digest matches (no truncation or tampering of the tensor data), the tensors fit the config.

Saving is atomic: the bytes go to a temporary file in the target's directory, which is flushed,
fsynced and renamed over the target; a crash mid-save leaves the previous checkpoint untouched.

Extension point: ``config["symbolic"]`` (optional) lists the symbolic edges per layer as
``{"in,out": function name}``; the edges themselves travel in the layer's tensors, and loading checks
that the rebuilt layers have exactly these edges.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kanlab._checks import check_widths
from kanlab.layers import ACTIVATIONS
from kanlab.models import KAN, MLP

__all__ = ["FORMAT_VERSION", "load", "model_config", "save"]

FORMAT_VERSION = 1
_KEY = "kanlab"  # the metadata key of the config
_DTYPES = {str(d): d for d in (torch.float16, torch.bfloat16, torch.float32, torch.float64)}


# --------------------------------------------------------------------------- config
def _layer_symbolic(layer: nn.Module) -> dict[str, str] | None:
    edges = layer.symbolic_edges() if hasattr(layer, "symbolic_edges") else {}
    return {f"{i},{o}": name for (i, o), name in sorted(edges.items())} or None


def model_config(model: nn.Module) -> dict[str, Any]:
    """The JSON-ready description :func:`load` rebuilds ``model`` from (tensors excluded)."""
    dtype = str(next(model.parameters()).dtype)
    if type(model) is KAN:
        layers = list(model.layers)
        config: dict[str, Any] = {
            "class": "KAN",
            "widths": list(model.widths),
            "spline_order": model.spline_order,
            "grid_sizes": [layer.grid_size for layer in layers],
            "base_activations": [layer.base_activation for layer in layers],
            "grid_ranges": [list(layer.grid_range) for layer in layers],
            "dtype": dtype,
        }
        symbolic = [_layer_symbolic(layer) for layer in layers]
        if any(s is not None for s in symbolic):
            config["symbolic"] = symbolic
        return config
    if type(model) is MLP:
        return {
            "class": "MLP",
            "widths": list(model.widths),
            "activation": model.activation,
            "dtype": dtype,
        }
    raise TypeError(f"save supports kanlab.KAN and kanlab.MLP models, got {type(model).__name__}")


def _build(config: dict[str, Any]) -> nn.Module:
    """A model with the config's architecture (parameters to be overwritten by the state dict)."""
    try:
        cls = config["class"]
        widths = check_widths(config["widths"])
        dtype = _DTYPES[config["dtype"]]
        if cls == "MLP":
            act = config["activation"]
            if act not in ACTIVATIONS:
                raise ValueError(f"unknown activation {act!r}")
            return MLP(widths, activation=act, seed=0, dtype=dtype)
        if cls != "KAN":
            raise ValueError(f"unknown model class {cls!r} (known: KAN, MLP)")
        n_layers = len(widths) - 1
        sizes, acts = config["grid_sizes"], config["base_activations"]
        if len(sizes) != n_layers or len(acts) != n_layers:
            raise ValueError(f"grid_sizes/base_activations need {n_layers} entries")
        if any(a not in ACTIVATIONS for a in acts):
            raise ValueError(f"unknown base activation in {acts}")
        model = KAN(widths, grid_size=sizes[0], spline_order=config["spline_order"],
                    base_activation=acts[0], seed=0, dtype=dtype)  # fmt: skip
        ranges = config.get("grid_ranges") or [layer.grid_range for layer in model.layers]
        for layer, act, rng in zip(model.layers, acts, ranges, strict=True):
            layer.base_activation = act
            layer.grid_range = (float(rng[0]), float(rng[1]))
        return model
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"invalid kanlab checkpoint config ({err!r}): {config}") from None


# --------------------------------------------------------------------------- bytes
def _digest(tensors: dict[str, Tensor], config: dict[str, Any]) -> str:
    """SHA-256 over the config (less the digest itself) and every tensor's name, dtype, shape, bytes."""
    h = hashlib.sha256()
    body = {k: v for k, v in config.items() if k != "sha256"}
    h.update(json.dumps(body, sort_keys=True).encode())
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.contiguous().view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _write_all(fh: Any, data: bytes) -> None:
    """Write ``data`` to the open file (a seam the fault tests interrupt)."""
    view = memoryview(data)
    while view:
        n = fh.write(view[: 1 << 20])
        view = view[n:]


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            _write_all(fh, data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable (best effort; not possible on every platform)
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def save(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """Write ``model`` (a KAN or an MLP) to ``path`` as safetensors + JSON config, atomically."""
    from safetensors.torch import save as st_save  # optional dependency (extra "io")

    config = {"format": "kanlab", "version": FORMAT_VERSION, **model_config(model)}
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"path {str(path)!r} is a directory; give a file name")
    if not path.parent.is_dir():
        raise ValueError(f"directory {str(path.parent)!r} does not exist")
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    config["sha256"] = _digest(tensors, config)
    data = st_save(tensors, metadata={_KEY: json.dumps(config)})
    _write_atomic(path, data)


def _read_header(data: bytes, path: Path) -> dict[str, Any]:
    bad = f"{str(path)!r} is not a valid safetensors file"
    if len(data) < 8:
        raise ValueError(f"{bad}: only {len(data)} bytes")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise ValueError(f"{bad} (truncated or another format): header of {n} bytes announced")
    try:
        header = json.loads(data[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{bad}: the header is not JSON ({err})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{bad}: the header is not a JSON object")
    return header


def load(path: str | os.PathLike[str], *, device: torch.device | str | None = None) -> nn.Module:
    """Rebuild the model saved by :func:`save` (outputs identical bit for bit)."""
    from safetensors import SafetensorError
    from safetensors.torch import load as st_load

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {str(path)!r}")
    data = path.read_bytes()
    meta = _read_header(data, path).get("__metadata__") or {}
    if _KEY not in meta:
        raise ValueError(f"{str(path)!r} is a safetensors file but not a kanlab checkpoint")
    try:
        config = json.loads(meta[_KEY])
    except json.JSONDecodeError as err:
        raise ValueError(f"{str(path)!r}: the kanlab config is not valid JSON ({err})") from None
    if not isinstance(config, dict) or config.get("format") != "kanlab":
        raise ValueError(f"{str(path)!r}: the kanlab config is malformed: {config!r}")
    if config.get("version") != FORMAT_VERSION:
        raise ValueError(
            f"{str(path)!r}: checkpoint format version {config.get('version')!r}; this kanlab "
            f"reads version {FORMAT_VERSION}"
        )
    try:
        tensors = st_load(data)
    except SafetensorError as err:
        raise ValueError(f"{str(path)!r} is corrupt (truncated or modified): {err}") from None
    if _digest(tensors, config) != config.get("sha256"):
        raise ValueError(
            f"{str(path)!r} is corrupt: its config or tensor data do not match the checksum in "
            "its header (truncated or modified file)"
        )
    model = _build(config)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{str(path)!r}: the tensors do not match the config: {err}") from None
    _check_loaded(model, config, path)
    return model.to(device) if device is not None else model


def _check_loaded(model: nn.Module, config: dict[str, Any], path: Path) -> None:
    if not isinstance(model, KAN):
        return
    sizes = [layer.grid_size for layer in model.layers]
    if sizes != config["grid_sizes"]:
        raise ValueError(
            f"{str(path)!r}: the knots give grid sizes {sizes}, the config says "
            f"{config['grid_sizes']}"
        )
    symbolic = config.get("symbolic") or [None] * len(sizes)
    found = [_layer_symbolic(layer) for layer in model.layers]
    if found != list(symbolic):
        raise ValueError(
            f"{str(path)!r}: the symbolic edges in the tensors {found} differ from the config's "
            f"{symbolic}"
        )
