"""The ``kanlab`` command line (typer). Each command parses its options and calls the library.

    kanlab compare                       # the quick suite into ./kanlab-runs/quick, then its report
    kanlab compare --suite paper --executor dask://HOST:8786
    kanlab compare --csv data.csv --target y [--task regression|classification]
    kanlab report kanlab-runs/quick
    kanlab tasks feynman/
    kanlab train --task paper/exp_sin_sq --widths 2,5,1 --out kan.safetensors
    torchrun --nproc_per_node=2 -m kanlab train --task feynman/I.6.2 --steps 100   # data-parallel

To add a command, write a function decorated with ``@app.command()`` that validates its options and
calls into the library; raise :class:`CLIError` (or let a ``ValueError`` from the library through) for
bad input: :func:`main` prints it as one line, without a traceback, and exits with status 2.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from kanlab.bench.runner import RunSummary
    from kanlab.bench.sweep import Sweep
    from kanlab.bench.tasks import Task

__all__ = ["CLIError", "app", "main"]

app = typer.Typer(
    name="kanlab",
    help="Kolmogorov-Arnold Networks: fair KAN-vs-MLP comparisons, training and interpretation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class CLIError(Exception):
    """Bad input for a command: printed as ``Error: <message>``, exit status 2."""


def _split(values: list[str] | None) -> list[str]:
    """Repeated and/or comma-separated option values -> a flat list."""
    return [v.strip() for item in values or [] for v in item.split(",") if v.strip()]


def _check_executor(value: str) -> str:
    from kanlab.bench.runner import EXECUTORS

    if value in ("local", "serial", "dask-local") or (
        value.startswith("dask://") and len(value) > len("dask://")
    ):
        return value
    raise typer.BadParameter(f"unknown executor {value!r}; valid: {', '.join(EXECUTORS)}")


@app.command()
def compare(
    suite: Annotated[
        str, typer.Option(help="Built-in suite (quick, paper) or a sweep .toml/.yaml file.")
    ] = "quick",
    tasks: Annotated[
        list[str] | None,
        typer.Option(
            help="Tasks to run instead of the suite's (comma-separated or repeated; "
            "groups like 'feynman/*')."
        ),
    ] = None,
    seeds: Annotated[int | None, typer.Option(min=1, help="Number of seeds (0..N-1).")] = None,
    steps: Annotated[
        int | None,
        typer.Option(min=1, help="Optimiser steps per grid stage (overrides the suite's)."),
    ] = None,
    total_steps: Annotated[
        int | None,
        typer.Option(min=1, help="Instead: steps per trial, shared by a KAN's grid stages."),
    ] = None,
    executor: Annotated[
        str,
        typer.Option(
            callback=_check_executor,
            help="local (process pool), serial, dask-local, or dask://HOST:PORT.",
        ),
    ] = "local",
    workers: Annotated[
        int | None, typer.Option(min=1, help="Local worker processes (default: one per core).")
    ] = None,
    out: Annotated[
        Path,
        typer.Option(
            help="Output folder; the run goes to OUT/<suite name>, or to OUT/<suite name>-<hash> "
            "when that holds a run with other settings."
        ),
    ] = Path("kanlab-runs"),
    csv: Annotated[
        Path | None, typer.Option(help="Compare on a CSV file instead (needs --target).")
    ] = None,
    target: Annotated[str | None, typer.Option(help="The CSV's target column.")] = None,
    task_kind: Annotated[
        str | None,
        typer.Option(
            "--task",
            help="regression or classification: what the CSV's target is (default: chosen from "
            "the column, and printed); for registered tasks, checked against theirs.",
        ),
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar over trials.")] = True,
    batch: Annotated[
        bool,
        typer.Option(
            help="Train the trials of one model and fit configuration (its seeds and tasks) "
            "as one model batch (--no-batch: each model trained alone, as before)."
        ),
    ] = True,
    estimate_only: Annotated[
        bool,
        typer.Option(
            "--estimate-only",
            help="Print the run's estimated cost (measured on this machine now) and exit.",
        ),
    ] = False,
) -> None:
    """Run a KAN-vs-MLP sweep (resuming a previous run in the same folder), then write its report.

    Before training, prints an estimate of the trials still to run, from throughput measured now
    (kanlab.bench.estimate); the paper suite's also gives the unbatched one beside it."""
    from kanlab import bench
    from kanlab.datasets import KINDS

    if task_kind is not None and task_kind not in KINDS:
        raise CLIError(f"unknown --task {task_kind!r}; valid: {', '.join(KINDS)}")
    sweep = bench.load_sweep(suite)
    task_list = None
    if csv is not None or target is not None:
        if csv is None or target is None:
            raise CLIError("--csv and --target go together (the CSV file and its target column)")
        if tasks:
            raise CLIError("use either --csv/--target or --tasks, not both")
        task = bench.csv_task(csv, target, kind=task_kind)
        if task_kind is None:
            other = next(k for k in KINDS if k != task.kind)
            typer.echo(f"kanlab compare: target {target!r} of {csv.name}: {task.kind_reason} "
                       f"(--task {other} overrides)", err=True)  # fmt: skip
        task_list = [task]
        sweep = sweep.replace(name=f"{sweep.name}-{csv.stem}", tasks=(task.name,))
    elif tasks:
        task_list = bench.resolve_tasks(_split(tasks))
        sweep = sweep.replace(tasks=tuple(t.name for t in task_list))
    if task_kind is not None and csv is None:  # registered tasks: their kind is checked
        for t in task_list or bench.resolve_tasks(list(sweep.tasks)):
            bench.get_task(t.name, kind=task_kind)
    if seeds is not None:
        sweep = sweep.replace(seeds=tuple(range(seeds)))
    if steps is not None and total_steps is not None:
        raise CLIError("give --steps (per grid stage) or --total-steps (per trial), not both")
    if steps is not None:
        sweep = sweep.replace(train=sweep.train.replace(steps=steps), total_steps=None)
    if total_steps is not None:
        sweep = sweep.replace(total_steps=total_steps)
    _check_folder(out / sweep.name, "--out")
    with _run_folder_guard(out / sweep.name):  # in use by another run: one line, at once
        run_dir, moved = bench.resolve_run_dir(out, sweep, task_list)  # one configuration/folder
    if moved:
        typer.echo(moved, err=True)
    typer.echo(f"kanlab compare: suite {sweep.name!r} -> {run_dir}", err=True)
    _log_to_stderr("kanlab.bench")  # e.g. "compiling CPU kernels (first run only)..." (cold cache)
    with _run_folder_guard(run_dir):
        _print_estimate(
            sweep, task_list, run_dir, workers=workers, only=estimate_only, batched=batch
        )
        if estimate_only:
            return
        summary, db = bench.run_sweep(
            sweep, run_dir, tasks=task_list, executor=executor, workers=workers, progress=progress,
            batch=batch,
        )  # fmt: skip
    typer.echo(
        f"{summary.total} trials: {summary.skipped} already done, {summary.ok} ok, "
        f"{summary.diverged} diverged, {summary.failed} failed in {summary.wall_time:.1f} s",
        err=True,
    )
    rows = _print_report(db, run_dir)
    if rows and not any(r["status"] == "ok" for r in rows):
        msg = (
            f"Error: all {len(rows)} trials failed or diverged (reasons above); nothing to compare"
        )
        typer.secho(msg, err=True, fg=typer.colors.RED)
        raise typer.Exit(1)


def _print_estimate(
    sweep: Sweep,
    tasks: list[Task] | None,
    run_dir: Path,
    *,
    workers: int | None,
    only: bool,
    batched: bool = True,
) -> None:
    """Print the estimated cost of the trials of ``sweep`` not yet finished in ``run_dir`` (none:
    nothing printed, or a line saying so with ``only``), ``batched`` or not as the run trains; for
    the paper suite the other one as well, with their ratio."""
    import warnings

    from kanlab import bench
    from kanlab.bench.estimate import estimate
    from kanlab.bench.lock import RunLock
    from kanlab.bench.store import FINISHED_STATUSES
    from kanlab.bench.sweep import SizeMatchWarning

    with warnings.catch_warnings():
        if not only:  # the run's own expansion says them (once)
            warnings.simplefilter("ignore", SizeMatchWarning)
        trials = bench.expand(sweep, tasks)  # validates the sweep before anything is written
    if not only:  # a folder the run cannot create fails now, not after the calibration
        run_dir.mkdir(parents=True, exist_ok=True)
    db = run_dir / "results.sqlite"
    done: set[str] = set()
    if db.exists():  # read under the folder's lock: RunInUseError if a run is in it now
        with RunLock(run_dir), bench.ResultStore(db, create=False) as store:
            done = set(store.finished_keys(FINISHED_STATUSES))
    pending = [t for t in trials if t.key not in done]
    if not pending:
        if only:
            typer.echo(f"estimate: nothing to run (all {len(trials)} trials finished)", err=True)
        return
    n = workers or os.cpu_count() or 1
    try:
        first = estimate(pending, workers=n, batched=batched)  # the way this run trains
        typer.echo(first.line(), err=True)
        if sweep.name == "paper":  # the other way beside it, measured the same way: the ratio
            other = estimate(pending, workers=n, batched=not batched)
            b, u = (first, other) if batched else (other, first)
            ratio = u.core_seconds / b.core_seconds if b.core_seconds > 0 else 0
            typer.echo(f"{other.line()} (unbatched/batched: {ratio:.1f}x)", err=True)
    except Exception as err:  # the estimate only informs: the run goes on without it
        if only:
            raise CLIError(f"cannot estimate the run: {type(err).__name__}: {err}") from None
        typer.echo(f"estimate: not available ({type(err).__name__}: {err})", err=True)


@contextlib.contextmanager
def _run_folder_guard(run_dir: Path) -> Iterator[None]:
    """Around a run: SIGINT/SIGTERM stop the workers and exit 128 + the signal with the count of
    trials saved (they stay: a rerun resumes); a run folder that is in use by another run or
    cannot be created is one line."""
    from kanlab.bench.lock import RunInUseError
    from kanlab.bench.runner import Interrupted, stop_on_signals

    try:
        with stop_on_signals():
            yield
    except RunInUseError as err:
        raise CLIError(f"{err}; wait for it or use --out") from None
    except OSError as err:
        if not err.filename or Path(err.filename) not in (run_dir, *run_dir.parents):
            raise
        raise CLIError(f"--out: cannot create {err.filename} ({err.strerror})") from None
    except Interrupted as err:
        typer.echo(_interrupted(err.summary), err=True)
        raise typer.Exit(128 + err.signum) from None


def _interrupted(summary: RunSummary | None) -> str:
    if summary is None:
        saved = "no trial saved in this run"
    else:
        new = summary.ok + summary.diverged + summary.failed
        saved = f"{summary.skipped + new} of {summary.total} trials saved ({new} in this run)"
    return f"interrupted: {saved}; rerun the same command to resume"


def _check_folder(path: Path, option: str) -> None:
    """A one-line error unless ``path`` is a folder, or can be made one (its nearest existing
    ancestor is a folder this process may write in). Creates nothing."""
    for p in (path, *path.parents):
        if not (p.exists() or p.is_symlink()):
            continue
        if not p.is_dir():
            raise CLIError(f"{option}: {p} is a file, not a folder")
        if not os.access(p, os.W_OK | os.X_OK):
            raise CLIError(f"{option}: cannot write in {p} (permission denied)")
        return


class _EchoHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        typer.echo(self.format(record), err=True)


def _log_to_stderr(name: str) -> None:
    """The library's notes on logger ``name`` (INFO and up), one plain line each on stderr."""
    logger = logging.getLogger(name)
    if not any(isinstance(h, _EchoHandler) for h in logger.handlers):
        logger.addHandler(_EchoHandler())
    logger.setLevel(logging.INFO)


def _print_report(db: Path, run_dir: Path, out: Path | None = None) -> list[dict]:
    """Print the summary table and the failure reasons, write the report; returns the rows."""
    from kanlab import bench
    from kanlab.bench.report import failure_summary

    with bench.ResultStore(db, create=False) as store:
        rows = store.rows()
        typer.echo(bench.summary_table(rows))
        failures = failure_summary(rows)
        if failures:
            typer.echo(failures)
        files = bench.write_report(store, out or run_dir)
    typer.echo(f"report: {files.markdown} and {files.html}", err=True)
    return rows


@app.command()
def report(
    run_dir: Annotated[
        Path, typer.Argument(help="A run folder (with results.sqlite) or a .sqlite file.")
    ],
    out: Annotated[
        Path | None, typer.Option(help="Where to write the report (default: the run folder).")
    ] = None,
    csv: Annotated[Path | None, typer.Option(help="Also export every trial to this CSV.")] = None,
) -> None:
    """Print the KAN-vs-MLP table of a finished (or partial) run and write report.md/.html."""
    from kanlab import bench

    db = run_dir / "results.sqlite" if run_dir.is_dir() else run_dir
    if not db.exists():
        raise CLIError(f"no results store at {db} (run `kanlab compare --out ...` first)")
    if out is not None:
        _check_folder(out, "--out")
    if csv is not None and csv.is_dir():
        raise CLIError(f"--csv: {csv} is a folder, not a file")
    if csv is not None:
        with bench.ResultStore(db, create=False) as store:
            store.to_csv(csv)
        typer.echo(f"trials exported to {csv}", err=True)
    _print_report(db, db.parent, out)


@app.command()
def paper(
    experiment: Annotated[str, typer.Argument(help="continual, pde, scaling, special or feynman.")],
    quick: Annotated[
        bool, typer.Option("--quick", help="The small size (minutes on 2 cores).")
    ] = False,
    out: Annotated[
        Path | None,
        typer.Option(help="Report folder (default: kanlab-runs/paper/<experiment>[-quick])."),
    ] = None,
    store: Annotated[
        Path | None,
        typer.Option(help="Results store to resume from (default: OUT/results.sqlite)."),
    ] = None,
    seeds: Annotated[
        int | None, typer.Option(min=1, help="Number of seeds (0..N-1; default per experiment).")
    ] = None,
    grids: Annotated[
        str | None, typer.Option(help="pde: the KANs' grid schedule, e.g. '5,10,20,40'.")
    ] = None,
    steps: Annotated[
        str | None,
        typer.Option(help="pde: LBFGS steps on each grid, one count or one per grid, e.g. '20'."),
    ] = None,
    family: Annotated[
        list[str] | None,
        typer.Option(help="special/feynman: train only this family (kan, mlp; repeatable)."),
    ] = None,
    mlp_width: Annotated[
        list[int] | None,
        typer.Option(help="special/feynman: keep only MLPs of this width (5, 100; repeatable)."),
    ] = None,
    depth: Annotated[
        list[int] | None,
        typer.Option(help="special/feynman, full size: keep only these depths (2-6; repeatable)."),
    ] = None,
    prune_lamb: Annotated[
        list[float] | None,
        typer.Option(
            help="special/feynman: keep only the pruned KANs of this sparsity weight (full size "
            "1e-2, 1e-3; quick 1e-2; repeatable); 0: no pruned KANs."
        ),
    ] = None,
) -> None:
    """Run one of the KAN paper's experiments (resuming from its store) and print kanlab's
    numbers beside the published ones; writes report.md/.html and the figure into OUT. special and
    feynman can run in parts into one store: --family trains one family (the other reads "not
    measured" or "partial"); --depth, --mlp-width and --prune-lamb narrow the protocol (the notes
    say so)."""
    from kanlab.bench.paper import EXPERIMENTS

    if experiment not in EXPERIMENTS:
        raise CLIError(f"unknown experiment {experiment!r}; valid: {', '.join(EXPERIMENTS)}")
    parts = {"families": tuple(_split(family)), "mlp_widths": tuple(mlp_width or ()),
             "depths": tuple(depth or ())}  # fmt: skip
    parts = {k: v for k, v in parts.items() if v}
    if prune_lamb:  # (0 alone: no pruned KANs, an empty tuple that must not be dropped)
        parts["prune_lambdas"] = tuple(v for v in prune_lamb if v != 0)
    if parts:
        from kanlab.bench.paper.common import TableProtocol, check_families

        if experiment not in ("special", "feynman"):
            raise CLIError(
                "--family/--mlp-width/--depth/--prune-lamb are for special and feynman only"
            )
        try:  # refused here, before any training, as one line
            check_families(parts.get("families", ("kan",)))
            TableProtocol.of(quick=quick, steps=1, depths=parts.get("depths"),
                             mlp_widths=parts.get("mlp_widths"),
                             prune_lambdas=parts.get("prune_lambdas"))  # fmt: skip
        except ValueError as err:
            raise CLIError(str(err)) from None
    out = out or Path("kanlab-runs/paper") / (experiment + ("-quick" if quick else ""))
    _check_folder(out, "--out")
    options: dict[str, object] = {} if seeds is None else {"seeds": seeds}
    for name, value in (("grids", grids), ("steps", steps)):
        if value is not None and experiment != "pde":
            raise CLIError(f"--{name} applies to pde only, not {experiment!r}")
        ints = _ints(name, value)
        if ints is not None:
            options[name] = ints[0] if name == "steps" and len(ints) == 1 else ints
    options.update(parts)
    table = EXPERIMENTS[experiment](quick=quick, out=out, store=store, progress=True, **options)
    typer.echo(table.markdown())
    for note in table.notes:
        typer.echo(f"- {note}")
    typer.echo(
        f"wall time {table.wall_time:.1f} s; units trained {table.units_run}, "
        f"reused {table.units_reused}; report: {table.report}",
        err=True,
    )


@app.command()
def tasks(
    prefix: Annotated[
        str | None, typer.Argument(help="Only names starting with this, e.g. 'paper/'.")
    ] = None,
) -> None:
    """List the registered tasks (data sets) with a one-line description."""
    from kanlab import datasets
    from kanlab.bench import task_names

    names = [n for n in task_names() if prefix is None or n.startswith(prefix)]
    if not names:
        groups = sorted({n.split("/", 1)[0] + "/" for n in task_names()})
        raise CLIError(f"no task starts with {prefix!r}; groups: {', '.join(groups)}")
    entries = [datasets.entry(n) for n in names]
    width = max(len(n) for n in names)
    kinds = max(len(e.summary) for e in entries)
    for e in entries:  # name, kind and size, then what the data is (one line each)
        typer.echo(f"{e.name:<{width}}  {e.summary:<{kinds}}  {e.description}")


def _ints(name: str, value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        return [int(v) for v in _split([value])]
    except ValueError:
        raise CLIError(f"--{name} must be comma-separated integers, got {value!r}") from None


@app.command()
def train(
    task: Annotated[
        str | None, typer.Option(help="A registered task, e.g. paper/exp_sin_sq.")
    ] = None,
    csv: Annotated[Path | None, typer.Option(help="Train on a CSV file (needs --target).")] = None,
    target: Annotated[str | None, typer.Option(help="The CSV's target column.")] = None,
    kind: Annotated[
        str | None,
        typer.Option(
            help="regression or classification: what the CSV's target is (default: chosen from "
            "the column, and printed)."
        ),
    ] = None,
    model: Annotated[str, typer.Option(help="kan or mlp.")] = "kan",
    widths: Annotated[
        str | None,
        typer.Option(help="Hidden widths, e.g. '5' or '16,16' (inputs/outputs from data)."),
    ] = None,
    grid_size: Annotated[
        int | None,
        typer.Option(min=1, help="KAN grid intervals G (default 5, or the schedule's first)."),
    ] = None,
    grid_schedule: Annotated[
        str | None, typer.Option(help="Grid extension staircase, e.g. '3,5,10,20'.")
    ] = None,
    optimizer: Annotated[str, typer.Option(help="lbfgs, adam or adamw.")] = "lbfgs",
    steps: Annotated[int, typer.Option(min=0, help="Steps (per grid stage).")] = 100,
    lr: Annotated[float, typer.Option(help="Learning rate.")] = 1.0,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Mini-batch (adam/adamw).")] = None,
    lamb: Annotated[float, typer.Option(min=0.0, help="Sparsity regularisation (KAN).")] = 0.0,
    n_train: Annotated[
        int | None, typer.Option(min=1, help="Training rows (generated tasks).")
    ] = None,
    seed: Annotated[int, typer.Option(min=0, help="Model and data seed.")] = 0,
    dtype: Annotated[str, typer.Option(help="float32 or float64.")] = "float32",
    device: Annotated[
        str | None, typer.Option(help="cpu or cuda (default: cuda if available).")
    ] = None,
    out: Annotated[Path, typer.Option(help="Checkpoint written by rank 0.")] = Path(
        "model.safetensors"
    ),
    progress: Annotated[bool, typer.Option(help="Progress bar (rank 0 only).")] = True,
) -> None:
    """Train one KAN or MLP on a task or CSV and save it. Runs data-parallel when launched by
    torchrun (gloo on CPU, nccl on GPU, chosen automatically); only rank 0 prints and writes."""
    import torch

    from kanlab import datasets, io
    from kanlab import distributed as D
    from kanlab.config import DTYPES, FitConfig, KANConfig, MLPConfig
    from kanlab.datasets import KINDS
    from kanlab.models import build
    from kanlab.train import fit

    if (task is None) == (csv is None):
        raise CLIError("give exactly one of --task or --csv (with --target)")
    if (csv is None) != (target is None):
        raise CLIError("--csv and --target go together (the CSV file and its target column)")
    if kind is not None and kind not in KINDS:
        raise CLIError(f"unknown --kind {kind!r}; valid: {', '.join(KINDS)}")
    if kind is not None and csv is None:
        raise CLIError("--kind applies to --csv data (a registered task has its own kind)")
    dtypes = {name: DTYPES[name] for name in ("float32", "float64")}
    if dtype not in dtypes:
        raise CLIError(f"unknown dtype {dtype!r}; valid: {', '.join(dtypes)}")
    if model not in ("kan", "mlp"):
        raise CLIError(f"unknown model {model!r}; valid: kan, mlp")
    hidden = _ints("widths", widths) or ([5] if model == "kan" else [32, 32])
    schedule = _ints("grid-schedule", grid_schedule)
    # the model starts at the schedule's first grid unless --grid-size says otherwise (a larger
    # --grid-size than the schedule's first is refused by fit: that would coarsen the grid)
    first_grid = grid_size if grid_size is not None else (schedule[0] if schedule else 5)
    fit_config = FitConfig(
        optimizer=optimizer, steps=steps, lr=lr, batch_size=batch_size, lamb=lamb,
        grid_schedule=schedule, seed=seed, progress=progress,
    )  # fmt: skip
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    D.init_from_env(device=device)
    if device == "cuda" and D.is_distributed():
        device = f"cuda:{torch.cuda.current_device()}"
    if csv is not None:
        data = datasets.from_csv(csv, target, seed=seed, dtype=dtypes[dtype], kind=kind)
        if kind is None and D.is_main():  # a guess is said, with how to override it
            other = next(k for k in KINDS if k != data.kind)
            typer.echo(f"kanlab train: target {target!r} of {csv.name}: "
                       f"{data.meta.get('kind_reason')} (--kind {other} overrides)", err=True)  # fmt: skip
    else:
        data = datasets.get(task, n_train=n_train, seed=seed, dtype=dtypes[dtype])
    full = (data.n_features, *hidden, data.n_outputs)
    model_config = (
        KANConfig(widths=full, grid_size=first_grid, seed=seed, dtype=dtype)
        if model == "kan"
        else MLPConfig(widths=full, seed=seed, dtype=dtype)
    )
    net = build(model_config, device=device)
    history = fit(net, data, fit_config)
    if D.is_main():
        io.save(net, out)
        metric = "RMSE" if data.kind == "regression" else "accuracy"
        typer.echo(
            f"{model} {list(full)} on {data.name}: test {metric} {history.final_test_metric:.4g} "
            f"after {len(history)} steps on {D.world_size()} rank(s), "
            f"{history.time_per_step * 1e3:.1f} ms/step; saved {out}"
        )
    # Every rank waits for rank 0's save, then the group ends cleanly. Not on errors: a failing rank
    # must exit at once so the launcher stops the others (a barrier would make it wait for them).
    D.shutdown()


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``kanlab`` script and ``python -m kanlab``."""
    import warnings

    from kanlab.bench.store import StoreError

    # library warnings (e.g. an MLP size that cannot be matched) as one plain line each
    warnings.formatwarning = lambda message, category, *args, **kwargs: (
        f"warning: {message} ({category.__name__})\n"
    )
    try:
        # standalone mode: typer/click print usage errors (unknown options, bad values) themselves
        app(args=argv, prog_name="kanlab")
    except (CLIError, StoreError, ValueError, FileNotFoundError) as err:
        typer.secho(f"Error: {err}", err=True, fg=typer.colors.RED)
        sys.exit(2)
    except OSError as err:  # a path that cannot be written (read-only, not a folder): one line
        if not err.filename:
            raise
        typer.secho(f"Error: {err.strerror or err}: {err.filename}", err=True, fg=typer.colors.RED)
        sys.exit(2)
