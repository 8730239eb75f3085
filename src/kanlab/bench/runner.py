"""Run trials on any ``concurrent.futures.Executor`` and record each result as it completes.

    with make_executor("local") as ex, ResultStore("run/results.sqlite") as store:
        summary = run_trials(trials, store, ex)

Trials that can share a fit (one model and fit configuration: its seeds, and its tasks of one input
width, :mod:`kanlab.bench.groups`) are one task on the executor: :func:`run_trial_group` trains
them as one model batch (``fit_batch``) and returns one row per trial, as :func:`run_trial` would
(``batch=False``: one trial per task).
Workers only compute (plain dicts); the parent process writes every result to the store the moment
its future completes, one durable commit per trial. A trial that raises is recorded as ``failed``
with its error text, one whose loss turns NaN/Inf as ``diverged``; neither stops the sweep. Trials
already finished in the store are skipped, so re-running resumes a killed sweep (the unfinished
trials regrouped).

Executors (:func:`make_executor`):

- ``"local"`` (default): a ``ProcessPoolExecutor`` with one worker per core, started with the
  ``spawn`` method (safe with torch's threads) and each worker limited to one torch thread, so workers
  do not oversubscribe the cores. Workers ignore SIGINT (Ctrl-C reaches the whole process group; the
  parent decides) and exit within a second when the parent dies, even by ``kill -9``
  (``PR_SET_PDEATHSIG`` on Linux, and a thread that watches the parent everywhere). Leaving the
  executor's ``with`` block by an exception (an error, Ctrl-C) terminates the workers at once
  instead of waiting for their trials.
- ``"dask://HOST:PORT"``: an existing Dask cluster, via ``distributed.Client(addr).get_executor()``.
- ``"dask-local"``: a Dask ``LocalCluster`` started here (``workers`` threads in this process).
- ``"serial"``: in this process, one trial at a time (debugging).

Interruption: inside :func:`stop_on_signals`, SIGINT and SIGTERM raise :class:`Interrupted` in the
main thread; :func:`run_trials` re-raises any ``KeyboardInterrupt`` as :class:`Interrupted` carrying
the partial :class:`RunSummary` (each trial already committed stays in the store).

Every trial runs with one torch thread (workers, remote Dask workers, and this process while a
serial or dask-local executor is open); parallelism comes from running trials side by side.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from functools import partial
from multiprocessing.context import SpawnContext, SpawnProcess
from pathlib import Path
from typing import Any

from kanlab import __version__
from kanlab.bench.lock import RunLock
from kanlab.bench.prepare import measure
from kanlab.bench.store import FINISHED_STATUSES, ResultStore
from kanlab.bench.sweep import Sweep, Trial, expand
from kanlab.bench.tasks import Task, error_from_metric, load
from kanlab.bench.warm import warm_executor
from kanlab.model_batch import KANBatch, MLPBatch
from kanlab.models import build, count_flops, count_params

__all__ = [
    "EXECUTORS",
    "Interrupted",
    "RunSummary",
    "SerialExecutor",
    "make_executor",
    "run_sweep",
    "run_trial",
    "run_trial_group",
    "run_trials",
    "stop_on_signals",
]

EXECUTORS = ("local", "serial", "dask-local", "dask://HOST:PORT")
MAX_BATCH = 64  # trials per model batch at most (a configuration with more seeds is split)


# ------------------------------------------------------------------------------------ one trial
def run_trial(trial: Trial) -> dict[str, Any]:
    """Train ``trial``'s model on its task and return the store row (never raises for a training
    failure: the error is returned as ``status="failed"`` or ``"diverged"``).

    The model trains on its task's data as :func:`kanlab.bench.prepare.prepare` makes it for its
    family (inputs scaled per family, regression targets standardised on the training split), so
    that the units of the data cannot pick the winner. Its errors are then measured on the trained
    model itself, back in the data's units: ``test_metric``/``train_metric`` are the RMSE in the
    target's units (or the accuracy); ``extra["test_nrmse"]``/``extra["train_nrmse"]`` the RMSE in
    standardised units (see :mod:`kanlab.bench.prepare`); ``extra["stages"]`` the same per grid
    stage (measured on the model at each logged step, so exact for any number of outputs);
    ``extra["scaling"]`` what was done to the data; ``extra["batch"]`` ``{"size": 1, "index": 0}``
    (trained alone by :func:`kanlab.fit`; see :func:`run_trial_group`)."""
    from kanlab import train  # looked up at call time (tests replace train.fit)

    start = time.perf_counter()
    row = _new_row()
    try:
        raw, prepared = _prepared(trial, row)
        model = build(trial.model)
        row["params"] = count_params(model)  # at the first grid; replaced after training
        fit, pruning = trial.fit, None
        if trial.prune is not None:
            model, pruning = _sparse_then_pruned(model, trial, prepared, raw)
            fit = fit.replace(restarts=0)  # (restarts would re-initialise the pruned model)
        logged: list[dict[str, float]] = []  # errors in data units at each History row

        def log_errors(state: train.StepState) -> None:
            logged.append(measure(state.model, prepared, raw))

        hist = train.fit(model, prepared.data, fit, callbacks=[log_errors])
        row.update(_trained(model, hist, logged, prepared, raw))
        if pruning is not None:
            row["steps"] += pruning["steps"]
            row["extra"]["prune"] = pruning
    except train.NonFiniteLossError as err:
        row.update(status="diverged", error=str(err))
    except Exception as err:  # a failed trial is recorded, never stops the sweep
        row.update(_failure(err))
    row["wall_time"] = time.perf_counter() - start
    row.setdefault("extra", {})["batch"] = {"size": 1, "index": 0}
    return row


def _sparse_then_pruned(
    model: Any, trial: Trial, prepared: Any, raw: Any
) -> tuple[Any, dict[str, Any]]:
    """A pruned trial's first part (:class:`~kanlab.config.PruneConfig`): ``model`` trained at its
    first grid with the sparsity regulariser, then :func:`kanlab.prune` on the training inputs;
    -> (the pruned model, what was done: its widths, parameters and test error before and after)."""
    from kanlab import train
    from kanlab.prune import prune

    plan = trial.prune
    sparse = trial.fit.replace(lamb=plan.lamb, steps=plan.steps, grid_schedule=None, knot_steps=0)
    train.fit(model, prepared.data, sparse)
    before = measure(model, prepared, raw)["test_metric"]
    pruned = prune(model, prepared.data.train_x, node_threshold=plan.node_threshold,
                   edge_threshold=plan.edge_threshold)  # fmt: skip
    return pruned, {
        "steps": plan.steps,
        "widths": list(pruned.widths),
        "params_before": count_params(model),
        "params_after": count_params(pruned),
        "sparse_test_metric": before,
        "pruned_test_metric": measure(pruned, prepared, raw)["test_metric"],
    }


def run_trial_group(trials: Sequence[Trial]) -> list[dict[str, Any]]:
    """Train ``trials`` (one :func:`~kanlab.bench.groups.batch_key`: one model and fit
    configuration, any seeds and tasks) as one model batch; -> one store row per trial, in order,
    each the row :func:`run_trial` makes (same keys and meanings), plus ``extra["batch"]``.

    Each task's data is loaded and prepared once; model m is ``build(trials[m].model)`` (bit for
    bit), stacked into a :class:`~kanlab.model_batch.KANBatch`/:class:`~kanlab.model_batch.MLPBatch`
    and trained by :func:`kanlab.train.fit_batch` with the trials' (shared) fit configuration, on
    the task's data when they share one (the seeds of a configuration) and else each on its own
    task's data; the per-stage errors come from its per-model callbacks. Trials whose data differ
    in kind or size (e.g. a CSV file's rows) go to separate batches. A model whose loss turns
    non-finite gets a ``diverged`` row (the batch trains the others on); an error of the whole batch
    gives each trial a ``failed`` row. ``extra["batch"]``: ``size`` M, ``index`` m, the batch's own
    ``wall_time`` and ``time_per_step``; the row's ``wall_time``/``time_per_step`` are those divided
    by M (the amortised cost of one model, comparable across batch sizes). A single trial, and a
    group for which ``fit_batch`` raises a ``ValueError`` (an option it does not support; a bad
    input to one model), train one by one with :func:`run_trial` (then ``extra["batch"]`` has
    ``group``, the group's size, and ``fallback``, the reason), so each trial gets its own status
    and error."""
    trials = list(trials)
    if len(trials) == 1:
        return [run_trial(trials[0])]
    _check_group(trials)
    start = time.perf_counter()
    rows = [_new_row() for _ in trials]
    try:
        data = _group_data(trials, rows)
    except Exception as err:  # loading or preparing failed: each trial alone says why
        reason = f"data not loaded for the batch ({type(err).__name__}: {err}); trained one by one"
        return [_fell_back(run_trial(t), len(trials), reason) for t in trials]
    parts: dict[tuple, list[int]] = {}  # data of one kind and size -> the trials' indices
    for m, (raw, _) in enumerate(data):
        shape = (raw.kind, tuple(raw.train_x.shape), tuple(raw.test_x.shape))
        parts.setdefault(shape, []).append(m)
    out: list[dict[str, Any]] = [{} for _ in trials]
    for idx in parts.values():
        if len(idx) == 1:
            out[idx[0]] = run_trial(trials[idx[0]])
            continue
        sub = _train_batch([trials[m] for m in idx], [rows[m] for m in idx],
                           [data[m] for m in idx], start)  # fmt: skip
        for m, row in zip(idx, sub, strict=True):
            out[m] = row
    return out


def _group_data(trials: Sequence[Trial], rows: Sequence[dict[str, Any]]) -> list[tuple[Any, Any]]:
    """(raw, prepared) data of each trial; one object per distinct task (seeds share it)."""
    cache: dict[Any, tuple[Any, Any]] = {}
    out = []
    for trial, row in zip(trials, rows, strict=True):
        key = (trial.task, trial.data)
        if key not in cache:
            cache[key] = _prepared(trial, row)
        raw = cache[key][0]
        row["metric"] = "accuracy" if raw.kind == "classification" else "rmse"
        out.append(cache[key])
    return out


def _train_batch(
    trials: Sequence[Trial],
    rows: Sequence[dict[str, Any]],
    data: Sequence[tuple[Any, Any]],
    start: float,
) -> list[dict[str, Any]]:
    """:func:`run_trial_group`'s batch of trials whose data have one kind and size (``start``: the
    group's clock, data loading included, as a single trial's)."""
    from kanlab import train
    from kanlab.train import batch_loop  # looked up at call time (tests replace its fit_batch)

    M = len(trials)
    hist = None
    try:
        models = [build(t.model) for t in trials]
        batch = (KANBatch if trials[0].family == "kan" else MLPBatch).stack(models)
        params = count_params(models[0])  # at the first grid, as run_trial's diverged rows
        logged: list[list[dict[str, float]]] = [[] for _ in trials]

        def log_errors(state: train.StepState) -> None:
            raw, prepared = data[state.model_index]
            logged[state.model_index].append(measure(state.model, prepared, raw))

        shared = all(d is data[0] for d in data)  # one task: the shared-input path (faster)
        fit_data = data[0][1].data if shared else [p.data for _, p in data]
        try:
            hists = batch_loop.fit_batch(batch, fit_data, trials[0].fit, callbacks=[log_errors])
        except ValueError as err:  # refused (an option it does not support), or a model's bad
            # input (e.g. a grid update on non-finite values): one by one, each trial its own row
            reason = f"fit_batch raised ValueError ({err}); trained one by one"
            return [_fell_back(run_trial(t), M, reason) for t in trials]
        trained = batch.unstack()
        for m, row in enumerate(rows):
            row["params"] = params
            if hists.diverged[m] is not None:
                row.update(status="diverged", error=hists.diverged[m])
                continue
            hist = hists[m]
            raw, prepared = data[m]
            try:
                row.update(_trained(trained[m], hist, logged[m], prepared, raw))
            except Exception as err:  # measuring one model failed: that trial only
                row.update(_failure(err))
    except Exception as err:  # the batch as a whole failed: every trial is recorded as failed
        failure = _failure(err)
        for row in rows:
            row.update(failure)
    wall = time.perf_counter() - start
    per_step = hist.time_per_step if hist is not None else math.nan  # the batch's (shared clock)
    for m, row in enumerate(rows):
        row["wall_time"] = wall / M
        if "time_per_step" in row:
            row["time_per_step"] = per_step / M
        info = {"size": M, "index": m, "wall_time": wall, "time_per_step": per_step}
        row.setdefault("extra", {})["batch"] = info
    return list(rows)


def _check_group(trials: Sequence[Trial]) -> None:
    from kanlab.bench.groups import batch_key

    keys = [batch_key(t) for t in trials]
    if not trials or keys[0] is None or any(k != keys[0] for k in keys):
        labels = [f"{t.label} seed {t.seed}" for t in trials]
        raise ValueError(
            f"trials cannot share one batch (batch keys {keys}): {labels}; "
            "group them with kanlab.bench.groups.group_trials"
        )


def _new_row() -> dict[str, Any]:
    return {"status": "ok", "error": None}


def _prepared(trial: Trial, row: dict[str, Any]) -> tuple[Any, Any]:
    """(raw data, data prepared for the trial's family); sets ``row["metric"]``."""
    from kanlab.bench.prepare import prepare

    raw = load(trial.task, n_train=trial.data.n_train, n_test=trial.data.n_test,
               seed=trial.data.seed, dtype=trial.data_dtype)  # fmt: skip
    row["metric"] = "accuracy" if raw.kind == "classification" else "rmse"
    grid_range = (
        trial.model.layer_options(0)["grid_range"] if trial.family == "kan" else (-1.0, 1.0)
    )
    return raw, prepare(raw, trial.family, grid_range=grid_range)


def _trained(
    model: Any, hist: Any, logged: Sequence[dict[str, float]], prepared: Any, raw: Any
) -> dict[str, Any]:
    """The row's results for a trained ``model`` and its History (``logged``: the errors in data
    units at each History row)."""
    final = measure(model, prepared, raw)
    out: dict[str, Any] = dict(
        params=count_params(model),
        flops=count_flops(model, mode="sparse"),
        flops_dense=count_flops(model, mode="dense"),
        train_metric=final["train_metric"],
        test_metric=final["test_metric"],
        steps=hist.step[-1] + 1,
        time_per_step=hist.time_per_step,
    )
    out["test_error"] = error_from_metric(out["test_metric"], raw.kind)
    # One logged row per grid stage: the KAN's error at each grid size (a free scaling curve).
    out["extra"] = {
        "stages": [{"grid": g, **errs} for g, errs in zip(hist.grid_size, logged, strict=True)],
        "scaling": prepared.scaling,
        **{k: v for k, v in final.items() if k.endswith("_nrmse")},
    }
    out["extra"]["compile_time"] = hist.compile_time  # kernels compiled/loaded: not per step
    if not math.isfinite(out["test_metric"]):
        out.update(status="diverged", error="non-finite test metric after training")
    return out


def _failure(err: BaseException) -> dict[str, Any]:
    tb = traceback.format_exception(type(err), err, err.__traceback__, limit=-3)
    return {"status": "failed", "error": "".join(tb).strip()[-2000:]}


def _fell_back(row: dict[str, Any], group_size: int, reason: str) -> dict[str, Any]:
    row["extra"]["batch"].update(group=group_size, fallback=reason)
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


def _init_local_worker(parent_pid: int) -> None:
    """Initializer of a local pool's worker: ignore Ctrl-C, die with the parent, one torch thread."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # already ignored since spawn (_QuietSpawnProcess)
    if sys.platform.startswith("linux"):
        try:  # the kernel sends SIGTERM when the parent (the thread that spawned us) ends
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:  # the parent died before the death signal was set
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent_pid,), name="kanlab-watch-parent",
                     daemon=True).start()  # fmt: skip
    _init_worker()


def _watch_parent(parent_pid: int, interval: float = 0.5) -> None:
    # The portable fallback: on POSIX an orphan is re-parented (its ppid changes); on Windows it is
    # not, so the parent's process handle (multiprocessing's sentinel) tells instead.
    import multiprocessing

    parent = multiprocessing.parent_process()
    while True:
        time.sleep(interval)
        if os.name == "posix":
            gone = os.getppid() != parent_pid
        else:  # pragma: no cover - Windows
            gone = parent is not None and not parent.is_alive()
        if gone:
            os._exit(1)


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    # Signal dispositions can only change in the main thread; elsewhere this does nothing.
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_DFL if previous is None else previous)


class _QuietSpawnProcess(SpawnProcess):
    """A spawned process that ignores SIGINT from its first instruction: an ignored signal stays
    ignored across exec and Python keeps it so, so a Ctrl-C while a worker still imports torch
    prints no traceback (the initializer runs only after those imports)."""

    def start(self) -> None:
        with _sigint_ignored():
            super().start()


class _QuietSpawnContext(SpawnContext):
    Process = _QuietSpawnProcess


def _stop_workers(ex: ProcessPoolExecutor, timeout: float = 5.0) -> None:
    """Cancel the pending trials and terminate the pool's workers now (SIGTERM, then SIGKILL after
    ``timeout`` seconds), without waiting for the running trials."""
    # Python 3.14's ex.terminate_workers() does the same; before it, the pool's own dict of them.
    procs = list((getattr(ex, "_processes", None) or {}).values())
    ex.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        if p.is_alive():
            p.terminate()
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join(1.0)


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
        ex = ProcessPoolExecutor(
            max_workers=n, mp_context=_QuietSpawnContext(), initializer=_init_local_worker,
            initargs=(os.getpid(),),
        )  # fmt: skip
        try:
            yield ex
        except BaseException:  # an error or an interruption: do not wait for the running trials
            _stop_workers(ex)
            raise
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


GroupFn = Callable[[Sequence[Trial]], list[dict[str, Any]]]


def _each_trial(trial_fn: Callable[[Trial], dict[str, Any]], group: Sequence[Trial]) -> list[Any]:
    """A group run one trial at a time by ``trial_fn`` (an exception fails that trial only)."""
    out: list[Any] = []
    for trial in group:
        try:
            out.append(trial_fn(trial))
        except Exception as err:
            out.append(_failed(err))
    return out


def _checked(group: Sequence[Trial], results: Any) -> list[dict[str, Any]]:
    if not isinstance(results, list) or len(results) != len(group):
        raise RuntimeError(
            f"a group of {len(group)} trials returned {type(results).__name__} "
            f"{len(results) if isinstance(results, list) else ''}: expected one row per trial"
        )
    return results


def _completed(
    executor: Executor, groups: Sequence[Sequence[Trial]], group_fn: GroupFn
) -> Iterator[list[tuple[Trial, dict[str, Any]]]]:
    """Each group's (trial, result) pairs, group by group in order of completion (one future per
    group). An exception from the executor itself (a worker process that died, a lost Dask worker)
    or from ``group_fn`` becomes a ``failed`` result for every trial of its group."""

    def pairs(group: Sequence[Trial], get: Callable[[], Any]) -> list[tuple[Trial, Any]]:
        try:
            return list(zip(group, _checked(group, get()), strict=True))
        except Exception as err:
            return [(t, _failed(err)) for t in group]

    if isinstance(executor, SerialExecutor):  # one at a time, so each is stored before the next
        for group in groups:
            yield pairs(group, lambda g=group: group_fn(g))
        return
    futures: dict[Future, Sequence[Trial]] = {executor.submit(group_fn, g): g for g in groups}
    try:
        for fut in as_completed(futures):
            yield pairs(futures.pop(fut), fut.result)
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


class Interrupted(KeyboardInterrupt):
    """A run stopped by SIGINT (Ctrl-C) or SIGTERM. ``signum``: the signal; ``summary``: the trials
    committed by then (set by :func:`run_trials`; ``None`` if the run stopped outside it)."""

    def __init__(self, signum: int, summary: RunSummary | None = None) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)
        self.summary = summary


@contextlib.contextmanager
def stop_on_signals(signums: Sequence[int] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[None]:
    """Within: each of ``signums`` raises :class:`Interrupted` in the main thread (SIGTERM's default
    would end the process at once, with no clean-up: workers left running, no message). Only the
    first signal raises; later ones are ignored while the run cleans up (a few seconds at most).
    The previous handlers are restored on exit. Outside the main thread this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired: list[int] = []

    def handler(signum: int, frame: object) -> None:
        if not fired:
            fired.append(signum)
            raise Interrupted(signum)

    previous = {s: signal.signal(s, handler) for s in signums}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, signal.SIG_DFL if h is None else h)


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
    group_fn: GroupFn | None = None,
    batch: bool = True,
    max_batch: int = MAX_BATCH,
) -> RunSummary:
    """Run the trials not yet finished in ``store`` on ``executor``; record each as it completes.

    ``batch`` (default): the pending trials are grouped by
    :func:`~kanlab.bench.groups.group_trials` (one model and fit configuration: its seeds and the
    tasks of one input width, at most ``max_batch`` per group) and each group is one task on the
    executor, trained as one model batch by ``group_fn`` (default :func:`run_trial_group`; with a
    custom ``trial_fn`` and no ``group_fn``, the group's trials run one by one through
    ``trial_fn``); its rows are committed one per trial, in one transaction, when the group
    completes (a kill leaves a batch wholly stored or not at all). ``batch=False``: one task per
    trial, as before. On any executor but :class:`SerialExecutor` the tasks are submitted longest
    first (:func:`~kanlab.bench.groups.longest_first`), so a pool packs them like LPT.

    ``progress`` shows a tqdm bar over trials; ``on_result`` is called in this process after each
    result is committed. An exception raised by the executor itself (e.g. a worker process that
    died) is recorded as ``failed`` for the trials of its task. A ``KeyboardInterrupt`` comes out as
    :class:`Interrupted` with the summary of the trials committed until then; a rerun runs only the
    trials not finished (regrouped), so no trial is recorded twice."""
    from kanlab.bench.groups import group_trials, longest_first

    start = time.perf_counter()
    done = store.finished_keys(FINISHED_STATUSES)
    pending = [t for t in trials if t.key not in done]
    groups = group_trials(pending, max_size=max_batch) if batch else [[t] for t in pending]
    if not isinstance(executor, SerialExecutor):  # a pool: longest first packs like LPT
        groups = longest_first(groups)
    if group_fn is None:
        group_fn = run_trial_group if trial_fn is run_trial else partial(_each_trial, trial_fn)
    warm_executor(executor, pending)  # a cold JIT cache: the kernels compiled before the bar starts
    counts = {"ok": 0, "failed": 0, "diverged": 0}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(trials), initial=len(trials) - len(pending), unit="trial",
                   desc="trials", dynamic_ncols=True)  # fmt: skip

    def summary() -> RunSummary:
        return RunSummary(total=len(trials), skipped=len(trials) - len(pending),
                          wall_time=time.perf_counter() - start, **counts)  # fmt: skip

    completed = _completed(executor, groups, group_fn)
    try:
        for done_pairs in completed:  # a group's rows in one transaction: whole or none
            store.put_many([(trial.key, _store_row(trial, result)) for trial, result in done_pairs])
            for trial, result in done_pairs:
                counts[result["status"]] += 1
                if on_result is not None:
                    on_result(trial, result)
                if bar is not None:
                    bar.set_postfix(ok=counts["ok"], failed=counts["failed"],
                                    diverged=counts["diverged"], refresh=False)  # fmt: skip
                    bar.update(1)
    except KeyboardInterrupt as err:  # Ctrl-C, or a signal under stop_on_signals
        raise Interrupted(getattr(err, "signum", signal.SIGINT), summary()) from None
    finally:
        completed.close()  # cancels the futures not started yet
        if bar is not None:
            bar.close()
    return summary()


def run_sweep(
    sweep: Sweep,
    run_dir: str | Path,
    *,
    tasks: Sequence[Task] | None = None,
    executor: str | None = "local",
    workers: int | None = None,
    progress: bool = False,
    batch: bool = True,
) -> tuple[RunSummary, Path]:
    """Expand ``sweep`` (optionally on ``tasks``), run it into ``run_dir/results.sqlite`` and return
    the summary and the store's path. ``run_dir/sweep.json`` records the sweep as run (with
    ``"batching"``: whether the seeds of a configuration trained as one model batch, see
    :func:`run_trials`; each row's ``extra["batch"]`` says how it was trained).

    Batching is not part of a trial's key, nor of the folder's settings: a trial trained in a batch
    is the same configuration, initialised bit for bit as alone and trained on the same objective
    by the same optimiser, per model; only rounding differs (LBFGS: equal to ~1e-9 over the first
    step, then as two runs of a chaotic optimiser may part, like runs on another CPU or thread
    count, which are not in the key either). So a folder resumes across ``batch`` on/off, and the
    seeds of a configuration stay one configuration in the reports.

    A run folder holds one sweep configuration (:mod:`~kanlab.bench.identity`; more seeds extend
    it): a ``SweepError`` naming the differences (e.g. ``train.steps 15 -> 45``) refuses a folder
    whose store holds other settings, before anything is written there;
    :func:`~kanlab.bench.identity.resolve_run_dir` picks a free folder."""
    import json

    from kanlab.bench.identity import differences, fingerprint, sweep_record, sweep_settings
    from kanlab.bench.sweep import SweepError
    from kanlab.bench.tasks import resolve_tasks

    run_dir = Path(run_dir)
    tasks = list(tasks) if tasks is not None else resolve_tasks(list(sweep.tasks))
    trials = expand(sweep, tasks)  # validates tasks and sizes before anything is written
    settings = sweep_settings(sweep, tasks)
    fp = fingerprint(settings)
    run_dir.mkdir(parents=True, exist_ok=True)
    db = run_dir / "results.sqlite"
    with RunLock(run_dir), ResultStore(db) as store:  # RunInUseError if another run is in it
        found_fp, found = store.claim_settings(fp, settings)
        if found_fp != fp:
            raise SweepError(
                f"{run_dir} holds a run with other settings ({differences(found, settings)}); "
                "run into another folder (kanlab compare picks one: bench.resolve_run_dir)"
            )
        record = sweep_record(run_dir, sweep, tasks, settings)
        record["batching"] = {"enabled": batch, "max_size": MAX_BATCH}
        (run_dir / "sweep.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        with make_executor(executor, workers=workers) as ex:
            summary = run_trials(trials, store, ex, progress=progress, batch=batch)
    return summary, db
