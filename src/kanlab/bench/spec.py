"""Sweep specs: the TOML (or YAML) file of a comparison, parsed into a :class:`Sweep`.

A sweep is a small file::

    name = "quick"
    tasks = ["paper/exp_sin_sq", "paper/xy"]   # names, or groups like "feynman/*"
    seeds = 3                                  # 3 -> seeds 0, 1, 2; or an explicit list [0, 5]

    [data]                 # the same data for every model and seed
    n_train = 1000
    n_test = 1000
    seed = 0

    [train]                # fit() options (FitConfig fields), the same for every model
    optimizer = "lbfgs"
    steps = 20             # optimiser steps per grid stage, as in fit()
    # total_steps = 60     # or: each trial's budget, shared by its stages (round(60 / stages) each)
    lr = 1.0

    [kan]
    hidden = ["task", [5, 5]]      # hidden widths; "task" = the task's default shape
    # hidden = [[[2, 1]]]          # a layer [n_sum, n_mult]: 2 sum + 1 multiplication node
    grids = [[3, 5, 10], [10]]     # grid schedules; [G] = a fixed grid G
    spline_order = 3

    [mlp]
    depths = [2, 3]                # hidden layers
    activations = ["silu"]
    match = "params"               # or "flops" (dense-equivalent forward FLOPs)
    tolerance = 0.05

The ``[train]`` table holds :class:`~kanlab.config.FitConfig` fields (less those each trial sets:
``grid_schedule``, ``seed``, ``progress``, ``log_every``), plus ``total_steps`` as the alternative to
``steps``. Every error names the field. :mod:`kanlab.bench.sweep` turns a sweep into trials.

**Multiplication nodes** (:mod:`kanlab.mult`): a hidden layer in ``kan.hidden`` is an int (sum
nodes) or a pair ``[n_sum, n_mult]``, exactly as in ``KAN([2, [2, 1], 1])``: ``hidden = [[[2, 1]]]``
is one KAN whose single hidden layer has 2 sum nodes and 1 multiplication node (of arity 2, the
default; a pair ``[n, 0]`` is the plain ``n``). Labels write such a layer ``2+1x``
(``kan[2,2+1x,1] G=5``); the matched MLPs are sized on the KAN's parameter (or FLOP) count as for
any KAN.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from kanlab.config import FitConfig

__all__ = [
    "DataSpec",
    "KANSpec",
    "MLPSpec",
    "Sweep",
    "SweepError",
    "builtin_suites",
    "load_sweep",
    "parse_sweep",
]


class SweepError(ValueError):
    """A sweep file or dict with an error; the message names the field."""


@dataclass(frozen=True)
class DataSpec:
    n_train: int | None = 1000  # samples for synthetic tasks (None: the data set's default)
    n_test: int | None = 1000
    seed: int = (
        0  # the data draw / split: fixed across model seeds, so every model sees the same data
    )


@dataclass(frozen=True)
class KANSpec:
    # hidden layers of each KAN: ints (sum nodes) or (n_sum, n_mult) pairs; None = the task's default
    hidden: tuple[tuple[int | tuple[int, int], ...] | None, ...] = (None,)
    grids: tuple[tuple[int, ...], ...] = ((5,),)  # grid schedules; (G,) = fixed grid
    spline_order: int = 3


@dataclass(frozen=True)
class MLPSpec:
    depths: tuple[int, ...] = (2,)  # number of hidden layers
    activations: tuple[str, ...] = ("silu",)
    match: str = "params"  # "params" | "flops"
    tolerance: float = 0.05  # relative mismatch allowed


# Seeds per configuration unless a sweep says otherwise: the report names a winner only beyond seed
# noise, which needs at least 2 finished seeds per side; 3 leave 2 when one diverges.
DEFAULT_SEEDS = 3


def _default_train() -> FitConfig:
    return FitConfig(progress=False)


@dataclass(frozen=True)
class Sweep:
    name: str = "sweep"
    tasks: tuple[str, ...] = ("paper/exp_sin_sq",)
    seeds: tuple[int, ...] = tuple(range(DEFAULT_SEEDS))
    data: DataSpec = field(default_factory=DataSpec)
    train: FitConfig = field(default_factory=_default_train)  # steps: per grid stage
    total_steps: int | None = None  # instead: each trial's steps, shared by its stages
    kan: KANSpec = field(default_factory=KANSpec)
    mlp: MLPSpec = field(default_factory=MLPSpec)

    def replace(self, **changes: Any) -> Sweep:
        return dataclasses.replace(self, **changes)

    def steps_per_stage(self, n_stages: int) -> int:
        """A KAN trial's steps per grid stage: ``train.steps``, or ``total_steps`` shared by the
        stages (at least one each)."""
        if self.total_steps is None:
            return self.train.steps
        return max(1, round(self.total_steps / n_stages))


# Fit options that a trial sets itself (not in a sweep's [train] table).
_PER_TRIAL = ("grid_schedule", "seed", "progress", "log_every")


# ---------------------------------------------------------------------------------- parsing
def _names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


# The fields of each table: [train] holds FitConfig fields, less those each trial sets.
_SECTIONS: dict[str, tuple[str, ...]] = {
    "data": _names(DataSpec),
    "train": (*(n for n in FitConfig.field_names() if n not in _PER_TRIAL), "total_steps"),
    "kan": _names(KANSpec),
    "mlp": _names(MLPSpec),
}
_TOP = ("name", "tasks", "seeds", *_SECTIONS)


def _fail(source: str, field_name: str, msg: str) -> SweepError:
    return SweepError(f"{source}: field {field_name!r}: {msg}")


def _int(source: str, name: str, v: Any, minimum: int, *, optional: bool = False) -> int | None:
    if v is None and optional:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise _fail(source, name, f"must be an int >= {minimum}, got {v!r}")
    return v


def _int_list(source: str, name: str, v: Any, minimum: int) -> tuple[int, ...]:
    if isinstance(v, str) or not isinstance(v, Sequence):
        raise _fail(source, name, f"must be a list of ints, got {v!r}")
    return tuple(_int(source, f"{name}[{i}]", x, minimum) for i, x in enumerate(v))  # type: ignore[misc]


def _hidden_layer(source: str, name: str, v: Any) -> int | tuple[int, int]:
    """One hidden layer: an int >= 1 (sum nodes) or a pair ``[n_sum, n_mult]`` (``[n, 0]`` -> n)."""
    if isinstance(v, str) or not isinstance(v, Sequence):
        return _int(source, name, v, 1)  # type: ignore[return-value]
    if len(v) != 2:
        raise _fail(source, name, f"must be an int or a pair [n_sum, n_mult], got {v!r}")
    n_sum = _int(source, f"{name}[0]", v[0], 0)
    n_mult = _int(source, f"{name}[1]", v[1], 0)
    assert n_sum is not None and n_mult is not None
    if n_sum + n_mult < 1:
        raise _fail(source, name, f"must have at least one node, got {list(v)!r}")
    return (n_sum, n_mult) if n_mult else n_sum


def _choice(source: str, name: str, v: Any, choices: Sequence[str]) -> str:
    if v not in choices:
        raise _fail(source, name, f"must be one of {', '.join(choices)}; got {v!r}")
    return v


def _nonempty(source: str, name: str, v: Any) -> Sequence[Any]:
    if isinstance(v, str) or not isinstance(v, Sequence) or len(v) == 0:
        raise _fail(source, name, f"must be a non-empty list, got {v!r}")
    return v


def parse_sweep(data: Mapping[str, Any], *, source: str = "sweep") -> Sweep:
    """A :class:`Sweep` from a dict (a parsed TOML/YAML file). Every error names the field."""
    if not isinstance(data, Mapping):
        raise SweepError(f"{source}: must be a table of fields, got {type(data).__name__}")
    unknown = sorted(set(data) - set(_TOP))
    if unknown:
        raise _fail(source, unknown[0], f"unknown field; valid: {', '.join(_TOP)}")
    sections: dict[str, dict[str, Any]] = {}
    for sec, valid in _SECTIONS.items():
        raw = data.get(sec, {})
        if not isinstance(raw, Mapping):
            raise _fail(source, sec, f"must be a table, got {raw!r}")
        bad = sorted(set(raw) - set(valid))
        if bad:
            raise _fail(source, f"{sec}.{bad[0]}", f"unknown field; valid: {', '.join(valid)}")
        sections[sec] = dict(raw)

    name = data.get("name", "sweep")
    if not isinstance(name, str) or not name or "/" in name:
        raise _fail(source, "name", f"must be a non-empty string without '/', got {name!r}")
    tasks = _nonempty(source, "tasks", data.get("tasks", ["paper/exp_sin_sq"]))
    for i, t in enumerate(tasks):
        if not isinstance(t, str):
            raise _fail(source, f"tasks[{i}]", f"must be a task name, got {t!r}")
    seeds_raw = data.get("seeds", DEFAULT_SEEDS)
    if isinstance(seeds_raw, int) and not isinstance(seeds_raw, bool):
        seeds = tuple(range(_int(source, "seeds", seeds_raw, 1)))  # type: ignore[arg-type]
    else:
        seeds = _int_list(source, "seeds", _nonempty(source, "seeds", seeds_raw), 0)

    d = sections["data"]
    data_spec = DataSpec(
        n_train=_int(source, "data.n_train", d.get("n_train", 1000), 2, optional=True),
        n_test=_int(source, "data.n_test", d.get("n_test", 1000), 1, optional=True),
        seed=_int(source, "data.seed", d.get("seed", 0), 0),  # type: ignore[arg-type]
    )
    train_spec, total_steps = _parse_train(source, sections["train"])
    k = sections["kan"]
    hidden: list[tuple[int | tuple[int, int], ...] | None] = []
    for i, h in enumerate(_nonempty(source, "kan.hidden", k.get("hidden", ["task"]))):
        if h == "task":
            hidden.append(None)
        elif isinstance(h, str) or not isinstance(h, Sequence):
            raise _fail(
                source, f"kan.hidden[{i}]",
                f'must be "task" or a list of ints or [n_sum, n_mult] pairs, got {h!r}',
            )  # fmt: skip
        else:
            hidden.append(tuple(_hidden_layer(source, f"kan.hidden[{i}][{j}]", w)
                                for j, w in enumerate(h)))  # fmt: skip
    grids = []
    for i, g in enumerate(_nonempty(source, "kan.grids", k.get("grids", [[5]]))):
        if isinstance(g, int) and not isinstance(g, bool):
            g = [g]
        grids.append(
            _int_list(source, f"kan.grids[{i}]", _nonempty(source, f"kan.grids[{i}]", g), 1)
        )
    kan_spec = KANSpec(
        hidden=tuple(hidden),
        grids=tuple(grids),
        spline_order=_int(source, "kan.spline_order", k.get("spline_order", 3), 0),  # type: ignore[arg-type]
    )
    m = sections["mlp"]
    from kanlab.layers import ACTIVATIONS

    acts = _nonempty(source, "mlp.activations", m.get("activations", ["silu"]))
    tol = m.get("tolerance", 0.05)
    if isinstance(tol, bool) or not isinstance(tol, int | float) or not 0 < tol < 1:
        raise _fail(source, "mlp.tolerance", f"must be a number in (0, 1), got {tol!r}")
    mlp_spec = MLPSpec(
        depths=_int_list(source, "mlp.depths", _nonempty(source, "mlp.depths",
                                                          m.get("depths", [2])), 1),
        activations=tuple(
            _choice(source, f"mlp.activations[{i}]", a, [n for n in ACTIVATIONS if n != "zero"])
            for i, a in enumerate(acts)
        ),
        match=_choice(source, "mlp.match", m.get("match", "params"), ("params", "flops")),
        tolerance=float(tol),
    )  # fmt: skip
    return Sweep(
        name=name, tasks=tuple(tasks), seeds=seeds, data=data_spec, train=train_spec,
        total_steps=total_steps, kan=kan_spec, mlp=mlp_spec,
    )  # fmt: skip


def _parse_train(source: str, table: Mapping[str, Any]) -> tuple[FitConfig, int | None]:
    """The [train] table: a FitConfig (``steps`` per grid stage) and ``total_steps`` if given."""
    t = dict(table)
    total = t.pop("total_steps", None)
    if total is not None:
        if "steps" in t:
            raise _fail(source, "train.total_steps",
                        "give steps (per grid stage) or total_steps (per trial), not both")  # fmt: skip
        total = _int(source, "train.total_steps", total, 1)
    else:
        _int(source, "train.steps", t.get("steps", 100), 1)  # a trial needs a step
    if "knot_steps" in t:  # one count for every stage (the stages differ between KANs)
        _int(source, "train.knot_steps", t["knot_steps"], 0)
    try:
        return FitConfig(**t, progress=False), total
    except (TypeError, ValueError) as err:
        raise _fail(source, f"train.{_option_named(err, t)}", str(err)) from None


def _option_named(err: Exception, given: Mapping[str, Any]) -> str:
    """The option a FitConfig error is about: its messages start with the option's name (or
    "unknown <name>"); otherwise the first option given."""
    words = str(err).split()
    if words and words[0] == "unknown":
        words = words[1:]
    name = words[0].split("[")[0] if words else ""
    return name if name in FitConfig.field_names() else next(iter(given), "steps")


def builtin_suites() -> list[str]:
    """Names of the sweep files shipped with kanlab (``quick``, ``paper``)."""
    files = resources.files("kanlab.bench").joinpath("suites").iterdir()
    return sorted(f.name[: -len(".toml")] for f in files if f.name.endswith(".toml"))


def load_sweep(suite: str | Path) -> Sweep:
    """A built-in suite by name (``"quick"``, ``"paper"``) or a ``.toml``/``.yaml``/``.yml`` file."""
    text: str
    path = Path(suite)
    if isinstance(suite, str) and suite in builtin_suites():
        source = f"suite {suite!r}"
        text = resources.files("kanlab.bench").joinpath("suites", f"{suite}.toml").read_text()
        kind = "toml"
    elif path.is_file():
        source = str(path)
        text = path.read_text(encoding="utf-8")
        kind = "yaml" if path.suffix.lower() in (".yaml", ".yml") else "toml"
        if path.suffix.lower() not in (".toml", ".yaml", ".yml"):
            raise SweepError(f"{source}: sweep files must end in .toml, .yaml or .yml")
    else:
        raise SweepError(
            f"unknown suite {str(suite)!r}: not a built-in suite ({', '.join(builtin_suites())}) "
            "and no such file"
        )
    if kind == "toml":
        try:
            import tomllib
        except ImportError:  # Python 3.10: the backport has the same API
            import tomli as tomllib  # type: ignore[no-redef]

        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise SweepError(f"{source}: invalid TOML: {err}") from None
    else:
        try:
            import yaml
        except ImportError:
            raise SweepError(
                f"{source}: reading YAML needs pyyaml (pip install 'kanlab[bench]')"
            ) from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise SweepError(f"{source}: invalid YAML: {err}") from None
    return parse_sweep(data if data is not None else {}, source=source)
