"""Plain-data configurations: what a model is built from and how a training run goes.

- :class:`KANConfig` and :class:`MLPConfig`: every constructor option of :class:`kanlab.KAN` /
  :class:`kanlab.MLP` (the device is not part of a config: it is where a model lives, not what it
  is). ``kanlab.build(cfg)`` or ``KAN.from_config(cfg)`` makes the model; ``model.config`` gives it
  back.
- :class:`FitConfig`: every option of :func:`kanlab.fit` except ``callbacks`` (code, not data).
- :class:`PruneConfig`: the KAN paper's "train sparse, prune, train on" step as a benchmark trial
  runs it before its grid schedule (:class:`kanlab.bench.sweep.Trial`).

Each is a frozen dataclass of JSON-able values (tuples become lists in :meth:`to_dict`) that
validates itself on construction, with the messages the library has always given (they name the
option and the offending value). ``to_dict()``/``from_dict()`` round-trip through JSON;
``from_dict`` and ``replace`` refuse unknown names, listing the valid ones.

Validation happens here, once: the model constructors and ``fit`` build a config from their keyword
arguments, so a bad option fails the same way whichever door it came in by.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import torch

from kanlab._checks import check_choice, check_float, check_int, check_range, check_widths
from kanlab.layers import ACTIVATIONS
from kanlab.mult import layer_arities, normalize_arity, normalize_widths, split_widths

__all__ = [
    "DTYPES",
    "LOSSES",
    "OPTIMIZERS",
    "FitConfig",
    "KANConfig",
    "MLPConfig",
    "PruneConfig",
    "dtype_name",
    "torch_dtype",
]

# Floating dtypes a config may name (``"float32"``, ...); ``None`` means torch's default dtype.
DTYPES: dict[str, torch.dtype] = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
}
OPTIMIZERS = ("lbfgs", "adam", "adamw")
LOSSES = ("mse", "cross_entropy")

_C = TypeVar("_C", bound="_Config")


def dtype_name(dtype: torch.dtype | str | None) -> str | None:
    """A config's dtype name for ``dtype`` (a ``torch.dtype`` or a name; ``None`` stays ``None``)."""
    if dtype is None:
        return None
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating-point dtype, got {dtype}")
        name = str(dtype).removeprefix("torch.")
        if name not in DTYPES:
            raise ValueError(f"unsupported dtype {dtype}; valid: {', '.join(DTYPES)}")
        return name
    if isinstance(dtype, str):
        name = dtype.removeprefix("torch.")
        if name in DTYPES:
            return name
    raise ValueError(f"unknown dtype {dtype!r}; valid: {', '.join(DTYPES)} (or None)")


def torch_dtype(name: str | None) -> torch.dtype | None:
    """The ``torch.dtype`` of a config's dtype name (``None`` for ``None``)."""
    return None if name is None else DTYPES[name]


def _plain(value: Any) -> Any:
    """JSON-ready: tuples become lists, recursively."""
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


class _Config:
    """Shared methods of the configs (each subclass is a frozen dataclass)."""

    _kind: ClassVar[str]

    def _set(self, name: str, value: Any) -> None:  # normalise a field of the frozen instance
        object.__setattr__(self, name, value)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]

    @classmethod
    def _refuse_unknown(cls, names: Any, what: str) -> None:
        valid = cls.field_names()
        unknown = sorted(set(names) - set(valid))
        if unknown:
            raise TypeError(
                f"unknown {cls.__name__} {what} {', '.join(map(repr, unknown))}; "
                f"valid: {', '.join(valid)}"
            )

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict (tuples as lists)."""
        return {name: _plain(getattr(self, name)) for name in self.field_names()}

    @classmethod
    def from_dict(cls: type[_C], data: Mapping[str, Any]) -> _C:
        """The config from :meth:`to_dict`'s output (e.g. parsed JSON); unknown keys are refused."""
        if not isinstance(data, Mapping):
            raise TypeError(f"{cls.__name__}.from_dict needs a mapping, got {type(data).__name__}")
        try:
            cls._refuse_unknown(data, "field(s)")
        except TypeError as err:
            raise ValueError(str(err)) from None
        return cls(**data)

    def replace(self: _C, **changes: Any) -> _C:
        """A copy with ``changes`` applied (validated); unknown names raise a ``TypeError``."""
        self._refuse_unknown(changes, "option(s)")
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


def _per_layer(name: str, value: Any, n_layers: int, check: Any) -> Any:
    """One value for every layer, or a sequence of one value per layer (collapsed to a single value
    when all are equal). ``check(name, v)`` validates and returns one value."""
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        return check(name, value)
    if len(value) != n_layers:
        raise ValueError(
            f"{name} must be one value or one per layer ({n_layers}), got {len(value)}: {value!r}"
        )
    values = tuple(check(f"{name}[{i}]", v) for i, v in enumerate(value))
    return values[0] if len(set(values)) == 1 else values


def _check_seed(seed: object) -> int | None:
    return None if seed is None else check_int("seed", seed, minimum=0)


# --------------------------------------------------------------------------- models
@dataclass(frozen=True)
class KANConfig(_Config):
    """Everything :class:`kanlab.KAN` is built from (see :meth:`kanlab.KAN.from_config`).

    ``grid_size``, ``grid_range`` and ``base_activation`` take one value for every layer or a tuple
    of one value per layer (a model whose layers differ, e.g. one layer extended on its own);
    equal per-layer values collapse to one.

    Multiplication nodes (see :mod:`kanlab.mult`): a widths entry after the inputs may be a pair
    ``(n_sum, n_mult)``; ``mult_arity`` gives their arity. A config without multiplication nodes
    leaves ``mult_arity`` out of :meth:`to_dict` (the dict, and so trial keys and saved files, are
    those of kanlab before multiplication nodes).
    """

    # layer widths, inputs first and outputs last, e.g. (2, 5, 1); an entry after the inputs may be
    # a pair (n_sum, n_mult): sum nodes then multiplication nodes (a pair (n, 0) becomes n)
    widths: tuple[int | tuple[int, int], ...]
    grid_size: int | tuple[int, ...] = 5  # G, the number of grid intervals of each layer
    spline_order: int = 3  # k, the B-spline degree (3 = cubic)
    # (low, high) of each layer's initial uniform grid (update_grid then moves the knots: state)
    grid_range: tuple[float, float] | tuple[tuple[float, float], ...] = (-1.0, 1.0)
    base_activation: str | tuple[str, ...] = "silu"  # the residual function b, see ACTIVATIONS
    noise_scale: float = 0.1  # standard deviation of the initial spline coefficients
    seed: int | None = 0  # seeds the initialisation (None: torch's global RNG)
    dtype: str | None = None  # "float32", "float64", ... (None: torch's default dtype)
    # arity (>= 2) of every multiplication node, or per layer of widths (inputs first) a tuple of
    # one arity per multiplication node (() where none); equal arities collapse to the int, and
    # without multiplication nodes it is 2
    mult_arity: int | tuple[tuple[int, ...], ...] = 2

    _kind: ClassVar[str] = "KAN"

    def __post_init__(self) -> None:
        # The order of the checks is the order the constructors have always checked in.
        self._set("widths", normalize_widths(self.widths))
        self._set("mult_arity", normalize_arity(self.mult_arity, self.n_mult))
        self._set("seed", _check_seed(self.seed))
        n = self.n_layers
        self._set("grid_size", _per_layer("grid_size", self.grid_size, n, _check_grid_size))
        self._set("spline_order", check_int("spline_order", self.spline_order, minimum=0))
        ranges = self.grid_range
        if not (isinstance(ranges, Sequence) and ranges and _is_pair_list(ranges)):
            ranges = check_range("grid_range", ranges)  # one (low, high) for every layer
        else:
            ranges = _per_layer("grid_range", tuple(ranges), n, check_range)
        self._set("grid_range", ranges)
        self._set(
            "base_activation",
            _per_layer("base_activation", self.base_activation, n, _check_activation),
        )
        self._set("noise_scale", check_float("noise_scale", self.noise_scale, minimum=0.0))
        self._set("dtype", dtype_name(self.dtype))

    @property
    def n_layers(self) -> int:
        return len(self.widths) - 1

    @property
    def n_sum(self) -> list[int]:
        """Sum nodes per layer (all nodes of an int widths entry)."""
        return split_widths(self.widths)[0]

    @property
    def n_mult(self) -> list[int]:
        """Multiplication nodes per layer (0 for an int widths entry)."""
        return split_widths(self.widths)[1]

    @property
    def has_mult(self) -> bool:
        return any(self.n_mult)

    @property
    def nodes(self) -> list[int]:
        """Nodes per layer: ``n_sum + n_mult`` (what the next layer's edges read)."""
        return [s + m for s, m in zip(self.n_sum, self.n_mult, strict=True)]

    def arities(self) -> list[list[int]]:
        """The arity of every multiplication node, per layer (``[]`` where none)."""
        return layer_arities(self.mult_arity, self.n_mult)

    def subnodes(self) -> list[int]:
        """Outputs of each edge layer (layers 1..L of widths): ``n_sum + sum(arities)``."""
        return [s + sum(a) for s, a in zip(self.n_sum, self.arities(), strict=True)][1:]

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict; ``mult_arity`` only when there are multiplication nodes."""
        data = super().to_dict()
        if not self.has_mult:
            del data["mult_arity"]
        return data

    def layer_options(self, index: int) -> dict[str, Any]:
        """The options of layer ``index``: grid_size, grid_range and base_activation."""
        return {
            "grid_size": _layer_value(self.grid_size, index),
            "grid_range": self.grid_range[index] if _is_pair_list(self.grid_range)
            else self.grid_range,
            "base_activation": _layer_value(self.base_activation, index),
        }  # fmt: skip

    def layer_grid_sizes(self) -> tuple[int, ...]:
        """The grid size of every layer."""
        return tuple(_layer_value(self.grid_size, i) for i in range(self.n_layers))


def _is_pair_list(value: Any) -> bool:
    """Whether ``value`` is a sequence of (low, high) pairs rather than one pair."""
    return (
        isinstance(value, Sequence)
        and len(value) > 0
        and all(isinstance(v, Sequence) and not isinstance(v, str | bytes) for v in value)
    )


def _layer_value(value: Any, index: int) -> Any:
    return value[index] if isinstance(value, tuple) else value


def _check_grid_size(name: str, value: object) -> int:
    return check_int(name, value, minimum=1)


def _check_activation(name: str, value: object) -> str:
    return check_choice(name, value, list(ACTIVATIONS))


@dataclass(frozen=True)
class MLPConfig(_Config):
    """Everything :class:`kanlab.MLP` is built from (see :meth:`kanlab.MLP.from_config`)."""

    widths: tuple[int, ...]  # layer widths, inputs first and outputs last, e.g. (2, 32, 32, 1)
    activation: str = "silu"  # between layers (none after the last), see ACTIVATIONS
    seed: int | None = 0  # seeds the initialisation (None: torch's global RNG)
    dtype: str | None = None  # "float32", "float64", ... (None: torch's default dtype)

    _kind: ClassVar[str] = "MLP"

    def __post_init__(self) -> None:
        self._set("widths", tuple(check_widths(self.widths)))
        self._set("activation", check_choice("activation", self.activation, list(ACTIVATIONS)))
        self._set("seed", _check_seed(self.seed))
        self._set("dtype", dtype_name(self.dtype))

    @property
    def n_layers(self) -> int:
        return len(self.widths) - 1


# --------------------------------------------------------------------------- training
@dataclass(frozen=True)
class FitConfig(_Config):
    """Every option of :func:`kanlab.fit` (callbacks aside). A *step* is one optimiser update (see
    :mod:`kanlab.train`); ``steps`` counts them per grid stage, as everywhere in kanlab."""

    optimizer: str = "lbfgs"  # "lbfgs" (full batch, strong-Wolfe line search), "adam", "adamw"
    steps: int = 100  # optimiser steps per stage (one stage per grid_schedule entry, else one)
    lr: float = 1.0  # learning rate (LBFGS: the initial step length of the line search)
    batch_size: int | None = None  # Adam(W) mini-batch size (None: full batch)
    loss: str | None = None  # "mse" or "cross_entropy" (None: follows the data set's task)
    lamb: float = 0.0  # weight of the sparsity regulariser (KAN only): loss + lamb * reg
    lamb_l1: float = 1.0  # weight of the edges' L1 norms inside the regulariser
    lamb_entropy: float = 2.0  # weight of the edge-norm entropy inside the regulariser
    grid_update_every: int | None = 10  # update grids every this many steps (0/None: never)
    stop_grid_update_step: int | None = 50  # ... while the step within the stage is below this
    grid_eps: float = 0.02  # grid updates' mix of uniform (1) and data quantiles (0)
    # grid updates/extensions reach this fraction of the data's range beyond it on each side
    grid_margin: float = 0.0
    grid_schedule: tuple[int, ...] | None = None  # e.g. (5, 10, 20): grid size of each stage
    weight_decay: float = 0.0  # L2 penalty (Adam coupled, AdamW decoupled, LBFGS wd/2 |theta|^2)
    seed: int = 0  # seeds the mini-batch order (a CPU run repeats bit for bit)
    progress: bool = True  # show a tqdm progress bar (if tqdm is installed; rank 0 only)
    log_every: int = 1  # evaluate and record a History row every this many steps (and the last)
    knot_steps: int | tuple[int, ...] = 0  # last steps of each stage that also train the knots
    restarts: int = 0  # extra fresh initialisations tried first (kanlab.train.restarts; 0: none)
    restart_steps: int = 20  # steps each restart candidate trains before the best is kept

    def __post_init__(self) -> None:
        # The order of the checks is the order fit has always checked in.
        opt = self.optimizer.lower() if isinstance(self.optimizer, str) else self.optimizer
        self._set("optimizer", check_choice("optimizer", opt, OPTIMIZERS))
        check_int("steps", self.steps, minimum=0)
        if check_float("lr", self.lr, minimum=0.0) == 0.0:
            raise ValueError("lr must be > 0, got 0")
        self._set("lr", float(self.lr))
        if self.batch_size is not None:
            check_int("batch_size", self.batch_size, minimum=1)
            if self.optimizer == "lbfgs":
                raise ValueError("batch_size is for adam/adamw; lbfgs trains on the full batch")
        self._set("lamb", check_float("lamb", self.lamb, minimum=0.0))
        self._set("weight_decay", check_float("weight_decay", self.weight_decay, minimum=0.0))
        check_int("seed", self.seed, minimum=0)
        check_int("log_every", self.log_every, minimum=1)
        if self.grid_update_every is not None:
            check_int("grid_update_every", self.grid_update_every, minimum=0)
        if self.stop_grid_update_step is not None:
            check_int("stop_grid_update_step", self.stop_grid_update_step, minimum=0)
        if not 0.0 <= check_float("grid_eps", self.grid_eps) <= 1.0:
            raise ValueError(f"grid_eps must be in [0, 1], got {self.grid_eps}")
        self._set("grid_eps", float(self.grid_eps))
        self._set("grid_margin", check_float("grid_margin", self.grid_margin, minimum=0.0))
        self._set("grid_schedule", _check_schedule(self.grid_schedule))
        self._set("knot_steps", self._check_knot_steps())
        if self.loss is not None:
            check_choice("loss", self.loss, LOSSES)
        self._set("lamb_l1", check_float("lamb_l1", self.lamb_l1, minimum=0.0))
        self._set("lamb_entropy", check_float("lamb_entropy", self.lamb_entropy, minimum=0.0))
        check_int("restarts", self.restarts, minimum=0)
        check_int("restart_steps", self.restart_steps, minimum=1)
        if not isinstance(self.progress, bool):
            raise TypeError(f"progress must be a bool, got {self.progress!r}")

    @property
    def n_stages(self) -> int:
        """Grid stages: one per ``grid_schedule`` entry (one without a schedule)."""
        return len(self.grid_schedule) if self.grid_schedule is not None else 1

    @property
    def total_steps(self) -> int:
        """Optimiser steps over all stages: ``steps * n_stages``."""
        return self.steps * self.n_stages

    def knot_steps_per_stage(self) -> list[int]:
        """``knot_steps`` as one count per stage (an int applies to every stage)."""
        ks = self.knot_steps
        return [ks] * self.n_stages if isinstance(ks, int) else list(ks)

    def _check_knot_steps(self) -> int | tuple[int, ...]:
        ks = self.knot_steps
        if isinstance(ks, int) and not isinstance(ks, bool):
            plan: Sequence[int] = [ks] * self.n_stages
        elif isinstance(ks, str | bytes) or not isinstance(ks, Sequence):
            raise TypeError(f"knot_steps must be an int or a sequence of ints, got {ks!r}")
        elif len(ks) != self.n_stages:
            raise ValueError(
                f"knot_steps has {len(ks)} entries but there are {self.n_stages} stages "
                "(one per grid_schedule entry)"
            )
        else:
            plan = ks
        for i, n in enumerate(plan):
            name = "knot_steps" if isinstance(ks, int) else f"knot_steps[{i}]"
            if check_int(name, n, minimum=0) == 0:
                continue
            if n > self.steps:
                raise ValueError(f"{name} must be <= steps ({self.steps}), got {n}")
            if self.lamb > 0:
                raise ValueError(f"{name} > 0 (free knots) cannot be combined with lamb > 0")
        return ks if isinstance(ks, int) else tuple(ks)


@dataclass(frozen=True)
class PruneConfig(_Config):
    """The KAN paper's pruned models (section 2.5, its Tables 1 and 2): train at the first grid
    with the sparsity regulariser (``lamb``, :attr:`FitConfig.lamb`) for ``steps`` steps, then
    :func:`kanlab.prune` with these thresholds, then train the smaller model through the fit's own
    grid schedule without the regulariser."""

    lamb: float = 1e-2  # sparsity weight of the pre-pruning stage (the paper: 1e-2 or 1e-3)
    steps: int = 200  # LBFGS steps of that stage, at the schedule's first grid
    node_threshold: float = 1e-2  # kanlab.prune's thresholds (its defaults: the paper's)
    edge_threshold: float = 3e-2

    def __post_init__(self) -> None:
        if check_float("lamb", self.lamb, minimum=0.0) == 0.0:
            raise ValueError("lamb must be > 0 (without the regulariser nothing is sparse), got 0")
        self._set("lamb", float(self.lamb))
        check_int("steps", self.steps, minimum=1)
        for name in ("node_threshold", "edge_threshold"):
            v = check_float(name, getattr(self, name), minimum=0.0)
            if v >= 1.0:
                raise ValueError(f"{name} must be in [0, 1) (a share of importance), got {v}")
            self._set(name, v)


def _check_schedule(schedule: object) -> tuple[int, ...] | None:
    if schedule is None:
        return None
    if isinstance(schedule, str | bytes) or not isinstance(schedule, Sequence):
        raise TypeError(f"grid_schedule must be a sequence of ints, got {schedule!r}")
    if len(schedule) == 0:
        raise ValueError("grid_schedule must not be empty (use None for no schedule)")
    return tuple(check_int(f"grid_schedule[{i}]", g, minimum=1) for i, g in enumerate(schedule))
