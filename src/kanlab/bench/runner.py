"""Run trials on any ``concurrent.futures.Executor`` and record each result as it completes.

    with make_executor("local") as ex, ResultStore("run/results.sqlite") as store:
        summary = run_trials(trials, store, ex)

Workers only compute (:func:`run_trial` returns a plain dict); the parent process writes every result
to the store the moment its future completes, one durable commit per trial. A trial that raises is
recorded as ``failed`` with its error text, one whose loss turns NaN/Inf as ``diverged``; neither stops
the sweep. Trials already finished in the store are skipped, so re-running resumes a killed sweep.

Executors (:func:`make_executor`):

- ``"local"`` (default): a ``ProcessPoolExecutor`` with one worker per core, started with the
  ``spawn`` method (safe with torch's threads) and each worker limited to one torch thread, so workers
  do not oversubscribe the cores.
- ``"dask://HOST:PORT"``: an existing Dask cluster, via ``distributed.Client(addr).get_executor()``.
- ``"dask-local"``: a Dask ``LocalCluster`` started here (``workers`` threads in this process).
- ``"serial"``: in this process, one trial at a time (debugging).

Every trial runs with one torch thread (workers, remote Dask workers, and this process while a
serial or dask-local executor is open); parallelism comes from running trials side by side.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kanlab import __version__
from kanlab.bench.store import FINISHED_STATUSES, ResultStore
from kanlab.bench.sweep import Sweep, Trial, expand
from kanlab.bench.tasks import Task, error_from_metric, load
from kanlab.bench.warm import warm_executor
from kanlab.models import build, count_flops, count_params

__all__ = [
    "EXECUTORS",
    "RunSummary",
    "SerialExecutor",
    "make_executor",
    "run_sweep",
    "run_trial",
    "run_trials",
]

EXECUTORS = ("local", "serial", "dask-local", "dask://HOST:PORT")


# ------------------------------------------------------------------------------------ one trial
def run_trial(trial: Trial) -> dict[str, Any]:
    """Train ``trial``'s model on its task and return the store row (never raises for a training
    failure: the error is returned as ``status="failed"`` or ``"diverged"``)."""
    from kanlab import train  # looked up at call time (tests replace train.fit)

    start = time.perf_counter()
    row: dict[str, Any] = {"status": "ok", "error": None}
    try:
        data = load(trial.task, n_train=trial.data.n_train, n_test=trial.data.n_test,
                    seed=trial.data.seed)  # fmt: skip
        row["metric"] = "accuracy" if data.kind == "classification" else "rmse"
        model = build(trial.model)
        row["params"] = count_params(model)  # at the first grid; replaced after training
        hist = train.fit(model, data, trial.fit)
        row.update(
            params=count_params(model),
            flops=count_flops(model, mode="sparse"),
            flops_dense=count_flops(model, mode="dense"),
            train_metric=hist.train_metric[-1],
            test_metric=hist.final_test_metric,
            steps=hist.step[-1] + 1,
            time_per_step=hist.time_per_step,
        )
        row["test_error"] = error_from_metric(row["test_metric"], data.kind)
        # One logged row per grid stage: the KAN's error at each grid size (a free scaling curve).
        row["extra"] = {
            "stages": [
                {"grid": g, "test_metric": m, "train_metric": tm}
                for g, m, tm in zip(
                    hist.grid_size, hist.test_metric, hist.train_metric, strict=True
                )
            ]
        }
        row["extra"]["compile_time"] = hist.compile_time  # kernels compiled/loaded: not per step
        if not math.isfinite(row["test_metric"]):
            row.update(status="diverged", error="non-finite test metric after training")
    except train.NonFiniteLossError as err:
        row.update(status="diverged", error=str(err))
    except Exception as err:  # a failed trial is recorded, never stops the sweep
        tb = traceback.format_exception(type(err), err, err.__traceback__, limit=-3)
        row.update(status="failed", error="".join(tb).strip()[-2000:])
    row["wall_time"] = time.perf_counter() - start
    return row


# ------------------------------------------------------------------------------------ executors
class SerialExecutor(Executor):
    """Runs each submitted call at once, in this process (for debugging and tiny sweeps)."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        fut: Future = Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except BaseException as err:
            fut.set_exception(err)
        return fut


def _init_worker() -> None:
    # One torch thread per worker process: n workers on n cores, not n x n threads.
    import torch

    torch.set_num_threads(1)


@contextlib.contextmanager
def _one_torch_thread() -> Iterator[None]:
    # Trials running in this process: one torch thread each (several intra-op threads per tiny
    # model only contend, and under load OpenMP barriers make training many times slower).
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def make_executor(
    spec: str | None = "local", *, workers: int | None = None, connect_timeout: float = 10.0
) -> Iterator[Executor]:
    """An executor for ``spec`` (see the module docstring), shut down on exit.

    ``workers``: local processes or dask-local worker threads (default: one per core).
    ``connect_timeout``: seconds to wait for a ``dask://`` scheduler."""
    spec = spec or "local"
    n = workers or os.cpu_count() or 1
    if spec == "local":
        import multiprocessing

        ex = ProcessPoolExecutor(
            max_workers=n, mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
        )  # fmt: skip
        try:
            yield ex
        finally:
            ex.shutdown(wait=True, cancel_futures=True)
    elif spec == "serial":
        with _one_torch_thread():
            yield SerialExecutor()
    elif spec == "dask-local" or spec.startswith("dask://"):
        try:
            from distributed import Client, LocalCluster
        except ImportError:
            raise ValueError(
                f"executor {spec!r} needs dask.distributed: pip install 'kanlab[dask]'"
            ) from None
        # Dask logs cluster life-cycle chatter at INFO/WARNING; keep the CLI output clean.
        for name in ("distributed", "distributed.worker", "distributed.scheduler"):
            logging.getLogger(name).setLevel(logging.ERROR)
        if spec == "dask-local":
            cluster = LocalCluster(
                n_workers=1, threads_per_worker=n, processes=False, dashboard_address=None,
                silence_logs=logging.ERROR,
            )  # fmt: skip
            client = Client(cluster)
        else:
            cluster = None
            address = "tcp://" + spec[len("dask://") :]
            try:
                client = Client(address, timeout=connect_timeout)
            except OSError as err:
                raise ValueError(f"cannot reach the Dask scheduler at {address}: {err}") from None
        try:
            if cluster is None:
                client.run(_init_worker)  # worker processes of a remote cluster
                yield client.get_executor(pure=False)
            else:
                with _one_torch_thread():  # the local cluster's workers are threads of this process
                    yield client.get_executor(pure=False)
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
    else:
        raise ValueError(f"unknown executor {spec!r}; valid: {', '.join(EXECUTORS)}")


# ------------------------------------------------------------------------------------ the sweep
def _failed(err: BaseException) -> dict[str, Any]:
    return {"status": "failed", "error": f"{type(err).__name__}: {err}"}


def _completed(
    executor: Executor, trials: Sequence[Trial], trial_fn: Callable[[Trial], dict[str, Any]]
) -> Iterator[tuple[Trial, dict[str, Any]]]:
    """(trial, result) pairs in order of completion. An exception from the executor itself (a
    worker process that died, a lost Dask worker) becomes a ``failed`` result."""
    if isinstance(executor, SerialExecutor):  # one at a time, so each is stored before the next
        for trial in trials:
            try:
                yield trial, trial_fn(trial)
            except Exception as err:
                yield trial, _failed(err)
        return
    futures: dict[Future, Trial] = {executor.submit(trial_fn, t): t for t in trials}
    try:
        for fut in as_completed(futures):
            trial = futures.pop(fut)
            try:
                yield trial, fut.result()
            except Exception as err:
                yield trial, _failed(err)
    finally:
        for fut in futures:
            fut.cancel()


@dataclass(frozen=True)
class RunSummary:
    total: int  # trials in the sweep
    skipped: int  # already finished in the store
    ok: int
    failed: int
    diverged: int
    wall_time: float  # seconds for this run


def _store_row(trial: Trial, result: dict[str, Any]) -> dict[str, Any]:
    # the trial's configs in full (the key's layout is the store's older format), with the result
    extra = {**(result.get("extra") or {}), "model_config": trial.model.to_dict(),
             "fit_config": trial.fit.to_dict()}  # fmt: skip
    return {
        "task": trial.task.name, "family": trial.family, "label": trial.label,
        "group_id": trial.group, "seed": trial.seed, "config": trial.config(),
        "kanlab_version": __version__, **result, "extra": extra,
    }  # fmt: skip


def run_trials(
    trials: Sequence[Trial],
    store: ResultStore,
    executor: Executor,
    *,
    progress: bool = False,
    on_result: Callable[[Trial, dict[str, Any]], None] | None = None,
    trial_fn: Callable[[Trial], dict[str, Any]] = run_trial,
) -> RunSummary:
    """Run the trials not yet finished in ``store`` on ``executor``; record each as it completes.

    ``progress`` shows a tqdm bar over trials; ``on_result`` is called in this process after each
    result is committed. An exception raised by the executor itself (e.g. a worker process that
    died) is recorded as a ``failed`` trial as well."""
    start = time.perf_counter()
    done = store.finished_keys(FINISHED_STATUSES)
    pending = [t for t in trials if t.key not in done]
    warm_executor(executor, pending)  # a cold JIT cache: the kernels compiled before the bar starts
    counts = {"ok": 0, "failed": 0, "diverged": 0}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(trials), initial=len(trials) - len(pending), unit="trial",
                   desc="trials", dynamic_ncols=True)  # fmt: skip
    completed = _completed(executor, pending, trial_fn)
    try:
        for trial, result in completed:
            store.put(trial.key, _store_row(trial, result))
            counts[result["status"]] += 1
            if on_result is not None:
                on_result(trial, result)
            if bar is not None:
                bar.set_postfix(ok=counts["ok"], failed=counts["failed"],
                                diverged=counts["diverged"], refresh=False)  # fmt: skip
                bar.update(1)
    finally:
        completed.close()  # cancels the futures not started yet
        if bar is not None:
            bar.close()
    return RunSummary(
        total=len(trials), skipped=len(trials) - len(pending), wall_time=time.perf_counter() - start,
        **counts,
    )  # fmt: skip


def run_sweep(
    sweep: Sweep,
    run_dir: str | Path,
    *,
    tasks: Sequence[Task] | None = None,
    executor: str | None = "local",
    workers: int | None = None,
    progress: bool = False,
) -> tuple[RunSummary, Path]:
    """Expand ``sweep`` (optionally on ``tasks``), run it into ``run_dir/results.sqlite`` and return
    the summary and the store's path. ``run_dir/sweep.json`` records the sweep as run."""
    import dataclasses
    import json

    run_dir = Path(run_dir)
    trials = expand(sweep, tasks)  # validates tasks and sizes before anything is written
    run_dir.mkdir(parents=True, exist_ok=True)
    db = run_dir / "results.sqlite"
    with ResultStore(db) as store:
        spec = dataclasses.asdict(sweep)
        if tasks is not None:
            spec["tasks"] = [t.spec() for t in tasks]
        (run_dir / "sweep.json").write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")
        with make_executor(executor, workers=workers) as ex:
            summary = run_trials(trials, store, ex, progress=progress)
    return summary, db
