"""Checkpoints: ``save(model, path)`` / ``load(path)`` for KAN and MLP models.

Format: one safetensors file. The tensors are the model's ``state_dict`` (parameters and buffers:
coefficients, scales, knots, masks, and a layer's symbolic-edge buffers when it has any); the
safetensors header metadata holds, under the key ``"kanlab"``, a JSON record::

    {"format": "kanlab", "version": 2, "class": "KAN" | "MLP",
     "config": model.config.to_dict(),        # a KANConfig / MLPConfig: how to rebuild the model
     "symbolic": [...],                        # optional, see below
     "sha256": "..."}                          # digest of the record and the tensor data

``load`` rebuilds the model from its config (:func:`kanlab.build`) and copies the tensors in. The
config describes the model as it is (each layer's grid size after grid extension, the widths after
pruning, the dtype), so the tensors fit the rebuilt model as they are. Nothing is pickled, so
loading a file never runs code.

Files of format version 1 (kanlab before configs: per-layer lists ``grid_sizes``,
``base_activations``, ``grid_ranges`` and a ``dtype`` like ``"torch.float32"`` at the top level)
still load: :func:`_config_from_v1` turns their record into the config.

Loading checks, in order, with a ``ValueError`` naming the problem: the file is a safetensors file
(complete, header parses), it is a kanlab checkpoint (record present, known format version), the
digest matches (no truncation or tampering of the tensor data), the record is valid (known class,
a valid config, no unknown keys), the tensors fit the config.

Saving is atomic: the bytes go to a temporary file in the target's directory, which is flushed,
fsynced and renamed over the target; a crash mid-save leaves the previous checkpoint untouched.

Extension point: ``record["symbolic"]`` (optional) lists the symbolic edges per layer as
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

from kanlab.config import KANConfig, MLPConfig
from kanlab.models import KAN, MLP, build

__all__ = ["FORMAT_VERSION", "load", "model_config", "save"]

FORMAT_VERSION = 2
READS = (1, 2)  # format versions load() reads
_KEY = "kanlab"  # the metadata key of the record
_CLASSES: dict[str, type[KANConfig] | type[MLPConfig]] = {"KAN": KANConfig, "MLP": MLPConfig}
_KEYS = {"format", "version", "class", "config", "symbolic", "sha256"}  # a version-2 record


# --------------------------------------------------------------------------- config
def _layer_symbolic(layer: nn.Module) -> dict[str, str] | None:
    edges = layer.symbolic_edges() if hasattr(layer, "symbolic_edges") else {}
    return {f"{i},{o}": name for (i, o), name in sorted(edges.items())} or None


def model_config(model: nn.Module) -> dict[str, Any]:
    """The JSON-ready record :func:`load` rebuilds ``model`` from (tensors excluded): its class,
    its config, and its symbolic edges (a KAN with any)."""
    if type(model) not in (KAN, MLP):
        raise TypeError(
            f"save supports kanlab.KAN and kanlab.MLP models, got {type(model).__name__}"
        )
    record: dict[str, Any] = {"class": type(model).__name__, "config": model.config.to_dict()}
    if isinstance(model, KAN):
        symbolic = [_layer_symbolic(layer) for layer in model.layers]
        if any(s is not None for s in symbolic):
            record["symbolic"] = symbolic
    return record


def _config_from_v1(record: dict[str, Any]) -> KANConfig | MLPConfig:
    """The config of a format-version-1 record (per-layer lists, ``dtype`` as ``"torch.float32"``;
    the seed was not stored: 0, as version 1 rebuilt with)."""
    cls, dtype = record["class"], record["dtype"]
    if cls == "MLP":
        return MLPConfig(widths=record["widths"], activation=record["activation"], dtype=dtype)
    if cls != "KAN":
        raise ValueError(f"unknown model class {cls!r} (known: KAN, MLP)")
    options: dict[str, Any] = {}
    if record.get("grid_ranges"):
        options["grid_range"] = record["grid_ranges"]
    return KANConfig(
        widths=record["widths"], grid_size=record["grid_sizes"],
        spline_order=record["spline_order"], base_activation=record["base_activations"],
        dtype=dtype, **options,
    )  # fmt: skip


def _config_of(record: dict[str, Any]) -> KANConfig | MLPConfig:
    """The model config a checkpoint record describes (any version :data:`READS` lists)."""
    try:
        if record["version"] == 1:
            return _config_from_v1(record)
        unknown = sorted(set(record) - _KEYS)
        if unknown:
            raise ValueError(f"unknown record key(s) {unknown}; valid: {sorted(_KEYS)}")
        cls = record["class"]
        if cls not in _CLASSES:
            raise ValueError(f"unknown model class {cls!r} (known: KAN, MLP)")
        return _CLASSES[cls].from_dict(record["config"])
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"invalid kanlab checkpoint config ({err!r}): {record}") from None


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
    if config.get("version") not in READS:
        raise ValueError(
            f"{str(path)!r}: checkpoint format version {config.get('version')!r}; this kanlab "
            f"reads versions {', '.join(map(str, READS))}"
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
    model_cfg = _config_of(config)
    model = build(model_cfg)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{str(path)!r}: the tensors do not match the config: {err}") from None
    _check_loaded(model, model_cfg, config.get("symbolic"), path)
    return model.to(device) if device is not None else model


def _check_loaded(
    model: nn.Module, config: KANConfig | MLPConfig, symbolic: list | None, path: Path
) -> None:
    if not isinstance(model, KAN):
        return
    assert isinstance(config, KANConfig)
    sizes = [layer.grid_size for layer in model.layers]
    if sizes != list(config.layer_grid_sizes()):
        raise ValueError(
            f"{str(path)!r}: the knots give grid sizes {sizes}, the config says "
            f"{list(config.layer_grid_sizes())}"
        )
    symbolic = symbolic or [None] * len(sizes)
    found = [_layer_symbolic(layer) for layer in model.layers]
    if found != list(symbolic):
        raise ValueError(
            f"{str(path)!r}: the symbolic edges in the tensors {found} differ from the config's "
            f"{symbolic}"
        )
