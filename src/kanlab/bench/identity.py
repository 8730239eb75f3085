"""What a run is: a sweep's settings as run, their fingerprint, how two differ, and the run folder.

A run folder (``results.sqlite`` and ``sweep.json``) holds one sweep configuration, so that its report
never mixes budgets or data. The configuration is :func:`sweep_settings`: every task with its data
identity and the data its trials use (a CSV's SHA-256 and its real training/test rows; a registered
set's generator version, size and seed), the ``[train]`` options, ``total_steps``, ``[kan]``,
``[mlp]``, :data:`~kanlab.bench.sweep.TRAINING_SEMANTICS` and the kanlab version (both are in every
trial's key). Its :func:`fingerprint` is recorded in the store (:meth:`ResultStore.claim_settings`)
and in ``sweep.json``.

Seeds are *not* part of it: running more seeds into a folder (``--seeds 3`` after ``--seeds 2``) is
the same configuration extended, and resumes it (the report's statistics are over the seeds the
store holds; ``sweep.json`` lists them all). Any other change is another configuration:
:func:`~kanlab.bench.runner.run_sweep` refuses a folder that holds one, and :func:`resolve_run_dir`
(what ``kanlab compare`` uses) picks ``OUT/<name>`` when it is free or holds the same settings,
otherwise ``OUT/<name>-<fingerprint[:8]>``, with a line saying why.

:func:`distinct_labels` keeps reports honest for stores filled by other means (a library user's
own loop): configurations that differ only in settings their labels do not show get those settings
appended to their labels, and tasks of one name but different data get their own sections.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from kanlab import __version__
from kanlab.bench.lock import RunLock
from kanlab.bench.store import ResultStore, config_key
from kanlab.bench.sweep import TRAINING_SEMANTICS, Sweep, data_spec
from kanlab.bench.tasks import Task, resolve_tasks

__all__ = [
    "differences",
    "distinct_labels",
    "fingerprint",
    "resolve_run_dir",
    "sweep_record",
    "sweep_settings",
]

# FitConfig fields that each trial sets itself (not settings of the sweep).
_PER_TRIAL = ("grid_schedule", "seed", "progress", "log_every")

K = TypeVar("K", bound=Hashable)


def _plain(value: Any) -> Any:
    """JSON-able form (tuples as lists), as stored."""
    return json.loads(json.dumps(value))


def sweep_settings(sweep: Sweep, tasks: Sequence[Task] | None = None) -> dict[str, Any]:
    """The sweep as run (``tasks`` overrides the sweep's names), seeds and name left out: see the
    module docstring. Loads each task's data (cached) to learn a CSV's real split sizes."""
    if tasks is None:
        tasks = resolve_tasks(list(sweep.tasks))
    task_settings = [
        {**t.spec(), "hidden": list(t.hidden), "data": dataclasses.asdict(data_spec(sweep, t))}
        for t in tasks
    ]
    train = {k: v for k, v in sweep.train.to_dict().items() if k not in _PER_TRIAL}
    return _plain({
        "tasks": sorted(task_settings, key=lambda t: t["name"]),
        "train": train,
        "total_steps": sweep.total_steps,
        "kan": dataclasses.asdict(sweep.kan),
        "mlp": dataclasses.asdict(sweep.mlp),
        "semantics": TRAINING_SEMANTICS,
        "kanlab_version": __version__,
    })  # fmt: skip


def fingerprint(settings: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON of :func:`sweep_settings`' output."""
    return config_key(settings)


def _show(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists are values)."""
    if not isinstance(value, Mapping):
        return {prefix: value}
    out: dict[str, Any] = {}
    for k, v in value.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def differences(old: Mapping[str, Any], new: Mapping[str, Any], *, limit: int = 4) -> str:
    """What changed from settings ``old`` to ``new``, e.g. ``"train.steps 15 -> 45"``: tasks
    replaced (an edited CSV is another task: ``csv:d.csv:y@1a2b3c4d -> csv:d.csv:y@5e6f7a8b``), then
    each other setting, at most ``limit`` items. ``old == {}`` is a store from an earlier kanlab."""
    if not old:
        return "it holds results of an earlier kanlab, with no recorded settings"
    items = []
    before = {t["name"]: t for t in old.get("tasks", [])}
    after = {t["name"]: t for t in new.get("tasks", [])}
    gone = [n for n in before if n not in after]
    added = [n for n in after if n not in before]
    if gone and added:
        items.append(f"tasks {', '.join(gone)} -> {', '.join(added)}")
    elif gone:
        items.append(f"tasks {', '.join(gone)} left out")
    elif added:
        items.append(f"tasks {', '.join(added)} added")
    for name in (n for n in after if n in before):
        a, b = _flat(before[name]), _flat(after[name])
        items += [f"{name}: {k} {_show(a.get(k))} -> {_show(b.get(k))}"
                  for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]  # fmt: skip
    a = _flat({k: v for k, v in old.items() if k != "tasks"})
    b = _flat({k: v for k, v in new.items() if k != "tasks"})
    items += [f"{k} {_show(a.get(k))} -> {_show(b.get(k))}"
              for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]  # fmt: skip
    more = len(items) - limit
    return "; ".join(items[:limit]) + (f"; and {more} more" if more > 0 else "")


def resolve_run_dir(
    out_root: str | Path, sweep: Sweep, tasks: Sequence[Task] | None = None
) -> tuple[Path, str | None]:
    """The folder a run of ``sweep`` goes to, and a line to print when it is not the usual one.

    ``out_root/<sweep name>`` when it holds no results store, an empty one, or one with the same
    settings (a resumed or seed-extended run); otherwise ``out_root/<name>-<fingerprint[:8]>``
    and a line naming the differences, e.g. ``settings differ from kanlab-runs/quick (train.steps
    15 -> 45): this run goes to kanlab-runs/quick-3f9a01bc``."""
    settings = sweep_settings(sweep, tasks)
    fp = fingerprint(settings)
    base = Path(out_root) / sweep.name
    db = base / "results.sqlite"
    if not db.is_file():
        return base, None
    # Under the folder's lock: a run in progress there is RunInUseError at once, never a read of a
    # store whose writer holds it (a stopped writer would make this open wait, then fail).
    with RunLock(base), ResultStore(db, create=False) as store:
        found = store.settings()
    if found is None or found[0] == fp:
        return base, None
    other = Path(out_root) / f"{sweep.name}-{fp[:8]}"
    why = differences(found[1], settings)
    return other, f"settings differ from {base} ({why}): this run goes to {other}"


def sweep_record(
    run_dir: Path, sweep: Sweep, tasks: Sequence[Task], settings: Mapping[str, Any]
) -> dict[str, Any]:
    """The content of ``run_dir/sweep.json`` for a run of ``sweep``: name, fingerprint, seeds (all
    the folder's runs have used: more seeds extend a run), the settings, and each CSV's path."""
    fp = fingerprint(settings)
    seeds = set(sweep.seeds)
    try:
        previous = json.loads((run_dir / "sweep.json").read_text(encoding="utf-8"))
        if isinstance(previous, dict) and previous.get("fingerprint") == fp:
            seeds |= set(previous.get("seeds") or ())
    except (OSError, ValueError):
        pass
    paths = {t.name: t.csv_path for t in tasks if t.is_csv}
    task_list = [{**t, **({"csv": paths[t["name"]]} if t["name"] in paths else {})}
                 for t in settings["tasks"]]  # fmt: skip
    return {"name": sweep.name, "fingerprint": fp, "seeds": sorted(seeds), **settings,
            "tasks": task_list}  # fmt: skip


def distinct_labels(
    first_rows: Mapping[K, Mapping[str, Any]],
) -> dict[K, tuple[str, str, str]]:
    """``(section, label, group)`` for each configuration of a store, given one row of each (as
    :meth:`ResultStore.rows` returns them, keyed by any configuration key).

    The section is the task's name; tasks of one name but different data identity (``config
    ["task"]``) get the differing fields appended, e.g. ``paper/xy (task.generator=2)``. Within a section,
    configurations of one family and label that differ in other settings get them appended, e.g.
    ``kan[2,2,1] G=3>5>10 (train.steps=135)``, and an MLP's group (the KAN label it was matched to)
    follows its KAN's new label."""
    config = {k: dict(r.get("config") or {}) for k, r in first_rows.items()}
    by_name = _buckets(first_rows, lambda k: first_rows[k]["task"])
    section = {k: first_rows[k]["task"] + _suffix(
                   {"task": config[k].get("task")}, [{"task": config[o].get("task")} for o in b])
               for b in by_name.values() for k in b}  # fmt: skip
    by_label = _buckets(first_rows, lambda k: (section[k], first_rows[k]["family"],
                                               first_rows[k]["label"]))  # fmt: skip
    label = {k: first_rows[k]["label"] + _suffix(config[k], [config[o] for o in b])
             for b in by_label.values() for k in b}  # fmt: skip
    out: dict[K, tuple[str, str, str]] = {}
    for k, r in first_rows.items():
        group = r.get("group_id") or r["label"]
        kans = by_label.get((section[k], "kan", group), [])
        if r["family"] != "kan" and len(kans) > 1:  # the KAN whose varying settings it shares
            mine, paths = _flat(config[k]), _varying([config[o] for o in kans])
            agree = [o for o in kans if all(mine.get(p, v) == v for p in paths
                                            for v in [_flat(config[o]).get(p)])]  # fmt: skip
            group = label[agree[0]] if len(agree) == 1 else group
        elif r["family"] != "kan" and kans:
            group = label[kans[0]]
        out[k] = (section[k], label[k], group)
    return out


def _buckets(keys: Mapping[K, Any], by: Any) -> dict[Any, list[K]]:
    out: dict[Any, list[K]] = {}
    for k in keys:
        out.setdefault(by(k), []).append(k)
    return out


def _varying(configs: Sequence[Mapping[str, Any]]) -> list[str]:
    """The (flattened) settings whose values are not the same in all ``configs``, seed aside."""
    flat = [_flat(c) for c in configs]
    paths = {p for f in flat for p in f if p != "seed" and any(g.get(p) != f[p] for g in flat)}
    return sorted(paths)


def _suffix(config: Mapping[str, Any], same: Sequence[Mapping[str, Any]]) -> str:
    """`` (path=value, ...)`` for the settings of ``config`` that vary among ``same`` (its own
    configuration among them); ``""`` when none do."""
    mine = _flat(config)
    items = [f"{p}={_show(mine.get(p))}" for p in _varying(same)]
    return f" ({', '.join(items)})" if items else ""
