"""Bench tasks: a task is a data set, its metric, and the default KAN shapes to compare.

Registered tasks are the data sets of :mod:`kanlab.datasets` (``paper/...``, ``special/...``,
``feynman/...``, ``sklearn/...``), looked up with its one lookup (``datasets.entry``), and their
default KAN hidden widths are the data set entry's ``kan_hidden`` (the paper's shapes for its toy
functions); :func:`csv_task` makes a task from any CSV file. A task is a small
frozen record that pickles cheaply to workers; :func:`load` builds its data (in the worker).

The metric follows the data: RMSE for regression (in the target's own units, see
:mod:`kanlab.bench.prepare`), accuracy for classification. Reports compare models by
the *test error*: the RMSE, or 1 - accuracy, so that lower is better everywhere.

A task knows its data's identity (:meth:`Task.spec`, part of every trial's key): a registered set by
its name and the registry's ``GENERATOR_VERSION`` (its size and seed are in the trial's data spec), a
CSV file by the SHA-256 of its bytes, whose first 8 hex digits are also in the task's name
(``csv:data.csv:y@1a2b3c4d``): an edited file, or another file of the same name, is another task.
"""

from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from kanlab.datasets import Dataset

__all__ = [
    "MIN_TEST_ROWS",
    "MIN_TRAIN_ROWS",
    "Task",
    "csv_task",
    "error_from_metric",
    "file_sha256",
    "get_task",
    "load",
    "resolve_tasks",
    "task_names",
]


@dataclass(frozen=True)
class Task:
    """One comparison problem.

    ``name`` is the registry name (e.g. ``"paper/xy"``) or ``"csv:<file>:<target>@<sha256[:8]>"``.
    ``hidden`` are the default KAN hidden widths (``()`` = no hidden layer: a KAN ``[in, out]``).
    ``csv_path``/``target``/``sha256`` are set for CSV tasks only (:func:`csv_task` sets them),
    and ``kind``: what the target is ("regression" or "classification", given or guessed, see
    :func:`csv_task`); it is part of the task's identity. A registered task's kind is its
    registry's (``None`` here). ``kind_reason`` says why the kind was chosen (for messages; not
    part of the identity).
    """

    name: str
    hidden: tuple[int, ...] = (5,)
    csv_path: str | None = None
    target: str | None = None
    sha256: str | None = None  # a CSV task's file content (hex digest of its bytes)
    kind: str | None = None
    kind_reason: str | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.csv_path is not None and self.sha256 is None:
            raise ValueError(
                f"CSV task {self.name!r} has no sha256 of its file; make it with csv_task()"
            )

    @property
    def is_csv(self) -> bool:
        return self.csv_path is not None

    def spec(self) -> dict[str, object]:
        """The JSON-able identity of the task's data (part of every trial's key): a CSV's name,
        target and content hash (not its path: the same bytes elsewhere are the same data), or a
        registered set's name and generator version (its size and seed are in the trial's data);
        plus the kind when one was given or guessed (CSV tasks)."""
        kind = {} if self.kind is None else {"kind": self.kind}
        if self.is_csv:
            return {"name": self.name, "target": self.target, "sha256": self.sha256, **kind}
        from kanlab.datasets import GENERATOR_VERSION

        return {"name": self.name, "generator": GENERATOR_VERSION, **kind}


@functools.lru_cache(maxsize=1)
def task_names() -> tuple[str, ...]:
    """Names of all registered tasks (the data sets of :mod:`kanlab.datasets`)."""
    from kanlab import datasets

    return tuple(datasets.names())


def get_task(name: str, *, kind: str | None = None) -> Task:
    """The registered task ``name``, with its data set's default KAN hidden widths; an unknown name
    lists close matches (from the data set registry's lookup) and the valid prefixes. ``kind``, if
    given, must be the data set's kind (a registered task's kind cannot be changed)."""
    from kanlab import datasets
    from kanlab._checks import check_choice

    if not isinstance(name, str):
        raise TypeError(f"task name must be a str, got {type(name).__name__}")
    try:
        entry = datasets.entry(name)
    except datasets.UnknownDatasetError as e:
        names = task_names()
        prefixes = sorted({n.split("/", 1)[0] + "/" for n in names})
        hint = f"; did you mean {', '.join(e.close)}?" if e.close else "."
        if e.excluded:
            hint = f"; it is excluded: {e.excluded}."
        raise ValueError(
            f"unknown task {name!r}{hint} Valid tasks are {len(names)} names under "
            f"{', '.join(prefixes)} (e.g. {', '.join(names[:4])}); `kanlab tasks` lists them all"
        ) from None
    if kind is not None and check_choice("kind", kind, datasets.KINDS) != entry.kind:
        raise ValueError(f"task {name!r} is {entry.kind}; it cannot be compared as {kind}")
    return Task(name=name, hidden=entry.kan_hidden)


def resolve_tasks(patterns: list[str]) -> list[Task]:
    """Tasks named by ``patterns``: exact names, or ``prefix/`` / ``prefix/*`` for a whole group
    (e.g. ``"feynman/*"``). Order is kept, duplicates dropped."""
    names = task_names()
    out: list[Task] = []
    for pattern in patterns:
        if pattern.endswith("/*") or pattern.endswith("/"):
            prefix = pattern.rstrip("*")
            group = [n for n in names if n.startswith(prefix)]
            if not group:
                prefixes = sorted({n.split("/", 1)[0] + "/*" for n in names})
                raise ValueError(f"no tasks match {pattern!r}; groups are {', '.join(prefixes)}")
            out.extend(get_task(n) for n in group)
        else:
            out.append(get_task(pattern))
    seen: set[str] = set()
    return [t for t in out if not (t.name in seen or seen.add(t.name))]


def file_sha256(path: str | Path) -> str:
    """The SHA-256 (hex) of a file's bytes."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# A CSV too small to compare on is refused: after the train/test split (20 % test) at least this
# many training rows (a few per parameter is hopeless already; fewer is only noise) and test rows
# (one test row gives an RMSE from one residual, and no accuracy worth the name): 13 data rows.
MIN_TRAIN_ROWS = 10
MIN_TEST_ROWS = 2


def _rows_needed(test_size: float = 0.2) -> int:
    """The fewest data rows whose split (``from_csv``'s default ``test_size``) passes."""
    n = MIN_TRAIN_ROWS + MIN_TEST_ROWS
    while n - math.ceil(test_size * n) < MIN_TRAIN_ROWS or math.ceil(test_size * n) < MIN_TEST_ROWS:
        n += 1
    return n


def csv_task(
    path: str | Path, target: str, *, hidden: tuple[int, ...] = (5,), kind: str | None = None
) -> Task:
    """A task on a CSV file; the file is validated now (a bad file fails before any trial runs) and
    its bytes hashed (the task's identity, and the tail of its name).

    ``kind``: "regression" or "classification"; ``None`` lets :func:`kanlab.datasets.from_csv`
    guess from the target column (the task's ``kind_reason`` says why). A file whose split leaves
    fewer than :data:`MIN_TRAIN_ROWS` training or :data:`MIN_TEST_ROWS` test rows is refused."""
    from kanlab import datasets

    path = Path(path).resolve()
    # raises a clear error on missing/non-numeric/constant data
    ds = datasets.from_csv(path, target, kind=kind)
    n_train, n_test = ds.train_x.shape[0], ds.test_x.shape[0]
    if n_train < MIN_TRAIN_ROWS or n_test < MIN_TEST_ROWS:
        raise ValueError(
            f"CSV file {str(path)!r} has {n_train + n_test} data rows, too few to compare on: its "
            f"split gives {n_train} training and {n_test} test rows; a comparison needs at least "
            f"{MIN_TRAIN_ROWS} training and {MIN_TEST_ROWS} test rows, i.e. {_rows_needed()} or more "
            "data rows"
        )
    sha = file_sha256(path)
    return Task(name=f"csv:{path.name}:{target}@{sha[:8]}", hidden=hidden, csv_path=str(path),
                target=target, sha256=sha, kind=ds.kind,
                kind_reason=ds.meta.get("kind_reason"))  # fmt: skip


def load(
    task: Task,
    *,
    n_train: int | None = None,
    n_test: int | None = None,
    seed: int = 0,
    dtype: torch.dtype | None = None,
) -> Dataset:
    """The task's data set (``n_train``/``n_test`` apply to synthetic data; ``seed`` fixes the draw
    or the split) in ``dtype`` (default float32): its inputs and regression targets (class labels
    stay int64). A CSV file whose bytes no longer match the task's hash is an error (it changed
    after the task was made: its results would be recorded under the old file's identity).

    Every data set is made in float64 (generated, parsed or read) and cast once to ``dtype`` here:
    float32 data are the float64 data rounded once, bit for bit what the registry's float32 gives,
    and float64 data carry no float32 rounding (a float64 trial's precision is not capped by its
    data; see :attr:`kanlab.bench.sweep.Trial.data_dtype`)."""
    import torch

    from kanlab.datasets.dataset import check_dtype

    dtype = torch.float32 if dtype is None else check_dtype(dtype)
    full = _load_cached(
        task.name, task.csv_path, task.target, task.sha256, n_train, n_test, seed, task.kind
    )
    return full if dtype == torch.float64 else full.to(dtype)


@functools.lru_cache(maxsize=8)
def _load_cached(
    name: str,
    csv_path: str | None,
    target: str | None,
    sha256: str | None,
    n_train: int | None,
    n_test: int | None,
    seed: int,
    kind: str | None = None,
) -> Dataset:
    # Cached per process (by content, for a CSV): a worker runs many trials on the same data. One
    # float64 copy per data set; load() casts it to each trial's dtype (a copy not kept).
    import torch

    from kanlab import datasets

    if csv_path is not None:
        found = file_sha256(csv_path)
        if found != sha256:
            raise ValueError(
                f"CSV file {csv_path!r} changed since its task {name!r} was made (sha256 "
                f"{str(sha256)[:8]} -> {found[:8]}); run the comparison again"
            )
        return datasets.from_csv(csv_path, target, seed=seed, kind=kind, dtype=torch.float64)
    return datasets.get(name, n_train=n_train, n_test=n_test, seed=seed, dtype=torch.float64)


def error_from_metric(metric_value: float, task_kind: str) -> float:
    """Lower-is-better error from a metric value: RMSE as is, 1 - accuracy for classification."""
    return 1.0 - metric_value if task_kind == "classification" else metric_value
