"""The KAN-vs-MLP comparison suite: tasks, fair sweeps, a resumable results store, runner, reports.

    from kanlab import bench
    sweep = bench.load_sweep("quick")                      # or a .toml/.yaml file
    summary, db = bench.run_sweep(sweep, "kanlab-runs/quick", executor="local")
    bench.write_report("kanlab-runs/quick")                # report.md, report.html, plots/

Modules: :mod:`~kanlab.bench.tasks` (what to learn), :mod:`~kanlab.bench.spec` (the sweep file),
:mod:`~kanlab.bench.sweep` (trials: task, model config, fit config, seed; MLPs size matched),
:mod:`~kanlab.bench.runner` (where to run), :mod:`~kanlab.bench.store` (SQLite results),
:mod:`~kanlab.bench.report` (tables, seed statistics and the winner test, plots),
:mod:`~kanlab.bench.identity` (a run folder holds one sweep configuration: its fingerprint,
``resolve_run_dir``), :mod:`~kanlab.bench.prepare` (each family's input scaling, standardised
targets, errors back in the data's units), :mod:`~kanlab.bench.lock` (one run per run folder).
``kanlab compare`` drives them from the command line.
"""

from __future__ import annotations

from kanlab.bench.identity import resolve_run_dir, sweep_settings
from kanlab.bench.report import summary_table, write_report
from kanlab.bench.runner import RunSummary, make_executor, run_sweep, run_trial, run_trials
from kanlab.bench.store import ResultStore, StoreError, config_key
from kanlab.bench.sweep import (
    Sweep,
    SweepError,
    Trial,
    builtin_suites,
    expand,
    load_sweep,
    match_mlp,
    parse_sweep,
)
from kanlab.bench.tasks import Task, csv_task, get_task, resolve_tasks, task_names

__all__ = [
    "ResultStore",
    "RunSummary",
    "StoreError",
    "Sweep",
    "SweepError",
    "Task",
    "Trial",
    "builtin_suites",
    "config_key",
    "csv_task",
    "expand",
    "get_task",
    "load_sweep",
    "make_executor",
    "match_mlp",
    "parse_sweep",
    "resolve_run_dir",
    "resolve_tasks",
    "run_sweep",
    "run_trial",
    "run_trials",
    "summary_table",
    "sweep_settings",
    "task_names",
    "write_report",
]
