"""Sweeps: tasks x model configurations x seeds -> trials, with MLPs size-matched to each KAN.

A sweep is a small TOML (or YAML) file::

    name = "quick"
    tasks = ["paper/exp_sin_sq", "paper/xy"]   # names, or groups like "feynman/*"
    seeds = 2                                  # 2 -> seeds 0, 1; or an explicit list [0, 5]

    [data]                 # the same data for every model and seed
    n_train = 1000
    n_test = 1000
    seed = 0

    [train]                # the same fit() budget for every model
    optimizer = "lbfgs"
    steps = 40             # total optimiser steps per trial (a KAN's grid stages share them)
    lr = 1.0

    [kan]
    hidden = ["task", [5, 5]]      # hidden widths; "task" = the task's default shape
    grids = [[3, 5, 10], [10]]     # grid schedules; [G] = a fixed grid G
    spline_order = 3

    [mlp]
    depths = [2, 3]                # hidden layers
    activations = ["silu"]
    match = "params"               # or "flops" (dense-equivalent forward FLOPs)
    tolerance = 0.05

Fairness: for every KAN configuration and every MLP family (depth x activation) the MLP's widths are
chosen so that its parameter count (or FLOPs) matches the KAN's at its final grid within
``tolerance``; the MLP then gets exactly the KAN's total number of optimiser steps, the same optimiser,
the same data and the same seeds.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from kanlab.bench.tasks import Task, csv_task, load, resolve_tasks

__all__ = [
    "DataSpec",
    "KANSpec",
    "MLPSpec",
    "SizeMatchWarning",
    "Sweep",
    "SweepError",
    "TrainSpec",
    "Trial",
    "builtin_suites",
    "expand",
    "load_sweep",
    "match_mlp",
    "parse_sweep",
    "with_csv",
]


class SweepError(ValueError):
    """A sweep file or dict with an error; the message names the field."""


class SizeMatchWarning(UserWarning):
    """No MLP of a requested depth matches a KAN's size within the tolerance; that MLP is skipped
    (tiny KANs: parameter counts of small MLPs are too coarse)."""


@dataclass(frozen=True)
class DataSpec:
    n_train: int | None = 1000  # samples for synthetic tasks (None: the data set's default)
    n_test: int | None = 1000
    seed: int = (
        0  # the data draw / split: fixed across model seeds, so every model sees the same data
    )


@dataclass(frozen=True)
class TrainSpec:
    optimizer: str = "lbfgs"  # "lbfgs" | "adam" | "adamw"
    steps: int = 100  # total optimiser steps per trial
    lr: float = 1.0
    batch_size: int | None = None  # Adam(W) only
    lamb: float = 0.0  # sparsity regularisation (KAN only; 0 for a fair comparison)
    grid_update_every: int = 10
    stop_grid_update_step: int = 50


@dataclass(frozen=True)
class KANSpec:
    hidden: tuple[tuple[int, ...] | None, ...] = (None,)  # None = the task's default hidden widths
    grids: tuple[tuple[int, ...], ...] = ((5,),)  # grid schedules; (G,) = fixed grid
    spline_order: int = 3


@dataclass(frozen=True)
class MLPSpec:
    depths: tuple[int, ...] = (2,)  # number of hidden layers
    activations: tuple[str, ...] = ("silu",)
    match: str = "params"  # "params" | "flops"
    tolerance: float = 0.05  # relative mismatch allowed


@dataclass(frozen=True)
class Sweep:
    name: str = "sweep"
    tasks: tuple[str, ...] = ("paper/exp_sin_sq",)
    seeds: tuple[int, ...] = (0, 1)
    data: DataSpec = field(default_factory=DataSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    kan: KANSpec = field(default_factory=KANSpec)
    mlp: MLPSpec = field(default_factory=MLPSpec)

    def replace(self, **changes: Any) -> Sweep:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Trial:
    """One model trained once: everything that determines its result, plus its comparison group."""

    task: Task
    family: str  # "kan" | "mlp"
    widths: tuple[int, ...]
    seed: int
    data: DataSpec
    train: TrainSpec
    steps: int  # total optimiser steps (steps per stage x stages for a KAN schedule)
    grid_schedule: tuple[int, ...] = ()  # KAN: grid sizes per stage
    spline_order: int = 3  # KAN
    activation: str = "silu"  # MLP
    group: str = ""  # label of the KAN configuration this trial is compared within (not in key)

    @property
    def label(self) -> str:
        w = ",".join(map(str, self.widths))
        if self.family == "kan":
            return f"kan[{w}] G={'>'.join(map(str, self.grid_schedule))}"
        return f"mlp[{w}] {self.activation}"

    @property
    def steps_per_stage(self) -> int:
        return self.steps // max(1, len(self.grid_schedule))

    def config(self) -> dict[str, Any]:
        """The canonical configuration (what the store's key hashes)."""
        import kanlab

        train = dataclasses.asdict(self.train)
        train["steps"] = self.steps
        model: dict[str, Any] = {"family": self.family, "widths": list(self.widths)}
        if self.family == "kan":
            model.update(grid_schedule=list(self.grid_schedule), spline_order=self.spline_order)
        else:
            model.update(activation=self.activation)
            for name in ("grid_update_every", "stop_grid_update_step"):
                train.pop(name)  # no grid: these options do not change an MLP's training
        return {
            "task": self.task.spec(),
            "data": dataclasses.asdict(self.data),
            "model": model,
            "train": train,
            "seed": self.seed,
            "kanlab_version": kanlab.__version__,
        }

    @property
    def key(self) -> str:
        from kanlab.bench.store import config_key

        return config_key(self.config())


# ---------------------------------------------------------------------------- parameter matching
def _mlp_params(widths: Sequence[int]) -> int:
    return sum(a * b + b for a, b in itertools.pairwise(widths))


def _mlp_flops(widths: Sequence[int], activation: str) -> int:
    from kanlab.models import ACTIVATION_FLOPS

    linear = sum(2 * a * b + b for a, b in itertools.pairwise(widths))
    return linear + sum(widths[1:-1]) * ACTIVATION_FLOPS.get(activation, 4)


def match_mlp(
    target: int,
    n_in: int,
    n_out: int,
    depth: int,
    *,
    activation: str = "silu",
    match: str = "params",
    tolerance: float = 0.05,
) -> tuple[int, ...]:
    """Widths ``(n_in, w, ..., w, w_last, n_out)`` of an MLP with ``depth`` hidden layers whose
    parameter count (``match="params"``) or forward FLOPs per sample (``"flops"``) is within
    ``tolerance`` of ``target``.

    Uniform hidden widths are preferred; when no uniform width is close enough (small budgets
    are coarse: one more unit adds ``n_in + n_out + 1`` parameters to a one-layer MLP), the last
    hidden layer may differ (1 to 2w units, as close to w as the tolerance allows), which refines
    the count in steps of about ``w``. Raises
    ``ValueError`` when no MLP of this depth fits (e.g. a target below the smallest MLP)."""
    if match not in ("params", "flops"):
        raise ValueError(f"unknown match {match!r}; valid: flops, params")

    def cost(widths: tuple[int, ...]) -> int:
        return _mlp_params(widths) if match == "params" else _mlp_flops(widths, activation)

    best: tuple[tuple[float, int, float], tuple[int, ...]] | None = None
    for w in range(1, 10_000_000):
        if depth == 1:
            lasts = [w]
        else:
            # the cost is linear in the last hidden width: solve for it, then try its neighbours
            c1 = cost((n_in, *([w] * (depth - 1)), 1, n_out))
            slope = cost((n_in, *([w] * (depth - 1)), 2, n_out)) - c1
            guess = 1 + round((target - c1) / slope)
            lasts = sorted({min(max(v, 1), 2 * w) for v in (guess - 1, guess, guess + 1, w)})
        for last in lasts:
            widths = (n_in, *([w] * (depth - 1)), last, n_out)
            rel = abs(cost(widths) - target) / target
            score = (rel if rel > tolerance else 0.0, abs(w - last), rel)
            if best is None or score < best[0]:
                best = (score, widths)
        # the cheapest MLP of this width already overshoots: wider ones only get further away
        if cost((n_in, *([w] * (depth - 1)), 1 if depth > 1 else w, n_out)) > target * (
            1 + tolerance
        ):
            break
    assert best is not None
    rel = best[0][-1]
    if rel > tolerance:
        raise ValueError(
            f"no MLP with {depth} hidden layer(s) has {match} within {tolerance:.0%} of {target} "
            f"(closest: widths {list(best[1])}, {cost(best[1])}); change the KAN size or depth"
        )
    return best[1]


# ---------------------------------------------------------------------------------- expansion
def _kan_size(widths: tuple[int, ...], grid: int, k: int) -> tuple[int, int]:
    import kanlab as kl

    kan = kl.KAN(list(widths), grid_size=grid, spline_order=k, seed=0)
    return kl.count_params(kan), kl.count_flops(kan, mode="dense")


def expand(sweep: Sweep, tasks: Sequence[Task] | None = None) -> list[Trial]:
    """All trials of ``sweep`` (``tasks`` overrides the sweep's task names), without duplicates.

    Loads each task's data once (in this process) to learn its input/output widths. An MLP family
    that cannot match a KAN's size is skipped with a :class:`SizeMatchWarning`."""
    if tasks is None:
        tasks = resolve_tasks(list(sweep.tasks))
    trials: dict[str, Trial] = {}
    for task in tasks:
        ds = load(task, n_train=sweep.data.n_train, n_test=sweep.data.n_test, seed=sweep.data.seed)
        n_in, n_out = ds.n_features, ds.n_outputs
        for hidden in sweep.kan.hidden:
            hidden = task.hidden if hidden is None else hidden
            kan_widths = (n_in, *hidden, n_out)
            for schedule in sweep.kan.grids:
                per_stage = max(1, round(sweep.train.steps / len(schedule)))
                steps = per_stage * len(schedule)
                common = dict(task=task, data=sweep.data, train=sweep.train, steps=steps)
                kan_trial = Trial(
                    family="kan", widths=kan_widths, grid_schedule=tuple(schedule),
                    spline_order=sweep.kan.spline_order, seed=0, **common,
                )  # fmt: skip
                group = kan_trial.label
                params, flops = _kan_size(kan_widths, schedule[-1], sweep.kan.spline_order)
                target = params if sweep.mlp.match == "params" else flops
                mlps = []
                for depth in sweep.mlp.depths:
                    for act in sweep.mlp.activations:
                        try:
                            widths = match_mlp(
                                target, n_in, n_out, depth, activation=act,
                                match=sweep.mlp.match, tolerance=sweep.mlp.tolerance,
                            )  # fmt: skip
                        except ValueError as err:
                            warnings.warn(
                                f"task {task.name}, {group}: skipping the {depth}-layer {act} "
                                f"MLP: {err}",
                                SizeMatchWarning,
                                stacklevel=2,
                            )
                            continue
                        mlps.append(
                            Trial(family="mlp", widths=widths, activation=act, seed=0, **common)
                        )
                for seed in sweep.seeds:
                    for t in (kan_trial, *mlps):
                        t = dataclasses.replace(t, seed=seed, group=group)
                        trials.setdefault(t.key, t)
    return list(trials.values())


# ---------------------------------------------------------------------------------- parsing
_SECTIONS: dict[str, type] = {"data": DataSpec, "train": TrainSpec, "kan": KANSpec, "mlp": MLPSpec}
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
    for sec, cls in _SECTIONS.items():
        raw = data.get(sec, {})
        if not isinstance(raw, Mapping):
            raise _fail(source, sec, f"must be a table, got {raw!r}")
        valid = [f.name for f in dataclasses.fields(cls)]
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
    seeds_raw = data.get("seeds", 2)
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
    t = sections["train"]
    lr = t.get("lr", 1.0)
    if (
        isinstance(lr, bool)
        or not isinstance(lr, int | float)
        or not (math.isfinite(lr) and lr > 0)
    ):
        raise _fail(source, "train.lr", f"must be a positive number, got {lr!r}")
    lamb = t.get("lamb", 0.0)
    if isinstance(lamb, bool) or not isinstance(lamb, int | float) or not lamb >= 0:
        raise _fail(source, "train.lamb", f"must be a number >= 0, got {lamb!r}")
    optimizer = _choice(source, "train.optimizer", t.get("optimizer", "lbfgs"),
                        ("lbfgs", "adam", "adamw"))  # fmt: skip
    batch = _int(source, "train.batch_size", t.get("batch_size"), 1, optional=True)
    if batch is not None and optimizer == "lbfgs":
        raise _fail(source, "train.batch_size", "is for adam/adamw; lbfgs trains on the full batch")
    train_spec = TrainSpec(
        optimizer=optimizer,
        steps=_int(source, "train.steps", t.get("steps", 100), 1),  # type: ignore[arg-type]
        lr=float(lr),
        batch_size=batch,
        lamb=float(lamb),
        grid_update_every=_int(source, "train.grid_update_every",
                               t.get("grid_update_every", 10), 0),  # type: ignore[arg-type]
        stop_grid_update_step=_int(source, "train.stop_grid_update_step",
                                   t.get("stop_grid_update_step", 50), 0),  # type: ignore[arg-type]
    )  # fmt: skip
    k = sections["kan"]
    hidden: list[tuple[int, ...] | None] = []
    for i, h in enumerate(_nonempty(source, "kan.hidden", k.get("hidden", ["task"]))):
        if h == "task":
            hidden.append(None)
        elif isinstance(h, str) or not isinstance(h, Sequence):
            raise _fail(source, f"kan.hidden[{i}]", f'must be "task" or a list of ints, got {h!r}')
        else:
            hidden.append(_int_list(source, f"kan.hidden[{i}]", h, 1))
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
        kan=kan_spec, mlp=mlp_spec,
    )  # fmt: skip


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


def with_csv(sweep: Sweep, path: str | Path, target: str) -> tuple[Sweep, list[Task]]:
    """The sweep retargeted at one CSV task (validated now)."""
    task = csv_task(path, target)
    return sweep.replace(tasks=(task.name,)), [task]
