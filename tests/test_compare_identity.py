"""A comparison's identity (issue 18, findings 1, 2, 9 and 10): a trial's key knows its data, a run
folder holds one sweep configuration, sweep.json records the data as used, and a new results store
can be opened by several processes at once."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from kanlab import bench
from kanlab.bench import tasks as bench_tasks
from kanlab.bench.report import aggregate, comparisons
from kanlab.bench.runner import SerialExecutor, run_sweep, run_trials
from kanlab.bench.store import ResultStore, StoreError
from kanlab.bench.sweep import SweepError, expand, parse_sweep

SRC = Path(__file__).resolve().parents[1] / "src"
TINY = """
name = "tiny"
tasks = ["paper/xy"]
seeds = 1
[data]
n_train = 100
n_test = 100
[train]
steps = 2
[kan]
hidden = [[2]]
grids = [[3]]
[mlp]
depths = [1]
"""


def _spec(**over):
    spec = {
        "name": "tiny", "tasks": ["paper/xy"], "seeds": 1,
        "data": {"n_train": 100, "n_test": 100}, "train": {"steps": 1},
        "kan": {"hidden": [[2]], "grids": [[3]]}, "mlp": {"depths": [1]},
    }  # fmt: skip
    spec.update(over)
    return parse_sweep(spec)


def _write_csv(path: Path, seed: int, rows: int = 120) -> Path:
    rng = random.Random(seed)
    lines = ["x1,x2,y"]
    for _ in range(rows):
        a, b = rng.uniform(-1, 1), rng.uniform(-1, 1)
        lines.append(f"{a:.5f},{b:.5f},{a * b + 0.5 * a:.5f}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def _fake(trial):
    # a result that depends on the trial's budget, no training
    return {"status": "ok", "test_error": 1.0 / trial.total_steps, "params": 48, "metric": "rmse"}


def _compare(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """The real CLI in a subprocess: the tiny sweep, serial, into tmp_path/runs."""
    suite = tmp_path / "tiny.toml"
    if not suite.exists():
        suite.write_text(TINY)
    paths = [str(SRC), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    cmd = [sys.executable, "-m", "kanlab", "compare", "--suite", str(suite), "--executor", "serial",
           "--out", str(tmp_path / "runs"), "--no-progress", *args]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return proc


def _run_dir(stderr: str) -> Path:
    line = next(x for x in stderr.splitlines() if x.startswith("kanlab compare: suite"))
    return Path(line.split(" -> ", 1)[1])


def _n_trials(run_dir: Path) -> int:
    with ResultStore(run_dir / "results.sqlite", create=False) as store:
        return len(store)


# ------------------------------------------------------------------------------ the data's identity
def test_csv_task_identity_is_the_file_content(tmp_path):
    first = bench.csv_task(_write_csv(tmp_path / "a" / "data.csv", seed=0), "y")
    assert first.name == f"csv:data.csv:y@{first.sha256[:8]}"
    assert first.sha256 == hashlib.sha256((tmp_path / "a" / "data.csv").read_bytes()).hexdigest()
    same_bytes = tmp_path / "copy" / "data.csv"
    same_bytes.parent.mkdir()
    same_bytes.write_bytes((tmp_path / "a" / "data.csv").read_bytes())
    other = bench.csv_task(_write_csv(tmp_path / "b" / "data.csv", seed=1), "y")
    sweep = _spec()
    keys = {t.name: {x.key for x in expand(sweep, [t])} for t in (first, other)}
    assert first.name != other.name and not keys[first.name] & keys[other.name]
    copy = bench.csv_task(same_bytes, "y")  # the same data elsewhere is the same task
    assert copy.spec() == first.spec()
    assert {t.key for t in expand(sweep, [copy])} == keys[first.name]
    # the file edited after the task was made: its trials must not be stored under the old hash
    _write_csv(tmp_path / "a" / "data.csv", seed=2)
    with pytest.raises(ValueError, match="changed since its task"):
        bench_tasks.load(first)
    with pytest.raises(ValueError, match="make it with csv_task"):
        bench.Task(name="csv:x.csv:y", csv_path=str(same_bytes), target="y")


def test_report_sections_are_per_file_not_per_file_name(tmp_path):
    # two files named data.csv, one store filled by a library user's own loop: two sections
    tasks = [bench.csv_task(_write_csv(tmp_path / d / "data.csv", seed=i), "y")
             for i, d in enumerate("ab")]  # fmt: skip
    with ResultStore(tmp_path / "r.sqlite") as store:
        for task in tasks:
            run_trials(expand(_spec(), [task]), store, SerialExecutor(), trial_fn=_fake)
        stats = aggregate(store.rows())
    assert sorted(stats) == sorted(t.name for t in tasks)
    assert all(len(configs) == 2 for configs in stats.values())  # one KAN and one MLP each


def test_registered_data_identity_is_in_the_key(monkeypatch):
    from kanlab import datasets

    before = {t.key for t in expand(_spec())}
    monkeypatch.setattr(datasets, "GENERATOR_VERSION", datasets.GENERATOR_VERSION + 1)
    after = {t.key for t in expand(_spec())}
    assert not before & after


# ------------------------------------------------------------------------- one configuration a folder
def test_run_sweep_refuses_a_folder_with_other_settings(tmp_path):
    run = tmp_path / "runs" / "tiny"
    summary, _ = run_sweep(_spec(), run, executor="serial")
    assert summary.ok == 2
    record = (run / "sweep.json").read_bytes()
    longer = _spec(train={"steps": 2})
    with pytest.raises(SweepError, match=r"other settings \(train\.steps 1 -> 2\)"):
        run_sweep(longer, run, executor="serial")
    assert (run / "sweep.json").read_bytes() == record and _n_trials(run) == 2
    # resolve_run_dir: the same settings (or more seeds) resume here, others go next to it
    assert bench.resolve_run_dir(tmp_path / "runs", _spec(seeds=3)) == (run, None)
    other, line = bench.resolve_run_dir(tmp_path / "runs", longer)
    from kanlab.bench.identity import fingerprint

    fp = fingerprint(bench.sweep_settings(longer))
    assert other == tmp_path / "runs" / f"tiny-{fp[:8]}"
    assert line == f"settings differ from {run} (train.steps 1 -> 2): this run goes to {other}"


def test_a_store_from_an_earlier_kanlab_is_not_resumed(tmp_path):
    run = tmp_path / "runs" / "tiny"
    with ResultStore(run / "results.sqlite") as store:  # trials, no recorded settings
        store.put("0" * 64, {"task": "paper/xy", "family": "kan", "label": "kan[2,2,1] G=3",
                             "seed": 0, "status": "ok", "config": {"seed": 0}})  # fmt: skip
    with pytest.raises(SweepError, match="earlier kanlab, with no recorded settings"):
        run_sweep(_spec(), run, executor="serial")
    other, line = bench.resolve_run_dir(tmp_path / "runs", _spec())
    assert other != run and "earlier kanlab" in line


def test_report_labels_tell_apart_settings_not_in_the_label(tmp_path):
    # a library user's store with two budgets: no two configurations share a label, and each MLP
    # is compared with the KAN of its own budget
    with ResultStore(tmp_path / "r.sqlite") as store:
        for steps in (15, 45):
            trials = expand(_spec(train={"steps": steps}, seeds=2))
            run_trials(trials, store, SerialExecutor(), trial_fn=_fake)
        stats = aggregate(store.rows())["paper/xy"]
    labels = [c.label for c in stats]
    assert len(labels) == 4 and len(set(labels)) == 4
    assert all(c.label.endswith(f"(train.steps={s})") for c in stats
               for s in [15 if c.err_mean == 1 / 15 else 45])  # fmt: skip
    kans = {c.label for c in stats if c.family == "kan"}
    for mlp in (c for c in stats if c.family == "mlp"):
        assert mlp.group in kans and mlp.group.split(" (")[1] == mlp.label.split(" (")[1]
    (comp,) = comparisons({"paper/xy": stats})
    assert comp.kan.label.endswith("(train.steps=45)")
    assert comp.mlp.label.endswith("(train.steps=45)")


# ------------------------------------------------------------------------------- sweep.json records
def test_sweep_json_records_the_csv_as_used(tmp_path):
    task = bench.csv_task(_write_csv(tmp_path / "data.csv", seed=0, rows=50), "y")
    run = tmp_path / "run"
    run_sweep(_spec(), run, tasks=[task], executor="serial")
    record = json.loads((run / "sweep.json").read_text())

    def values(obj, name):
        if isinstance(obj, dict):
            return [v for k, v in obj.items() if k == name] + [
                x for v in obj.values() for x in values(v, name)]  # fmt: skip
        return [x for v in obj for x in values(v, name)] if isinstance(obj, list) else []

    assert values(record, "n_train") == [40] and values(record, "n_test") == [10]  # 80/20 split
    (entry,) = record["tasks"]
    assert entry["sha256"] == hashlib.sha256((tmp_path / "data.csv").read_bytes()).hexdigest()
    assert entry["csv"] == str((tmp_path / "data.csv").resolve())
    with ResultStore(run / "results.sqlite", create=False) as store:
        assert {r["config"]["data"]["n_train"] for r in store.rows()} == {40}


# --------------------------------------------------------------------------------- the real CLI
@pytest.mark.slow
def test_cli_edited_csv_reruns_and_same_name_elsewhere_gets_its_own_folder(tmp_path):
    data = _write_csv(tmp_path / "a" / "data.csv", seed=0)
    first = _compare(tmp_path, "--csv", str(data), "--target", "y")
    run1 = _run_dir(first.stderr)
    old_task = bench.csv_task(data, "y").name
    assert old_task in first.stdout
    report1 = (run1 / "report.md").read_bytes()

    _write_csv(data, seed=1)  # edited at the same path
    new_task = bench.csv_task(data, "y").name
    second = _compare(tmp_path, "--csv", str(data), "--target", "y")
    assert "2 trials: 0 already done, 2 ok" in second.stderr
    run2 = _run_dir(second.stderr)
    assert run2 != run1 and f"tasks {old_task} -> {new_task}" in second.stderr
    assert new_task in second.stdout and old_task not in second.stdout
    report2 = (run2 / "report.md").read_text()
    assert new_task in report2 and old_task not in report2  # only the new file's results
    assert (run1 / "report.md").read_bytes() == report1 and _n_trials(run1) == 2

    other = _write_csv(tmp_path / "b" / "data.csv", seed=2)  # same file name, another folder
    third = _compare(tmp_path, "--csv", str(other), "--target", "y")
    run3 = _run_dir(third.stderr)
    other_task = bench.csv_task(other, "y").name
    assert run3 not in (run1, run2) and "0 already done" in third.stderr
    assert other_task in third.stdout and old_task not in third.stdout
    assert other_task not in (run1 / "report.md").read_text()


@pytest.mark.slow
def test_cli_more_steps_goes_to_its_own_folder(tmp_path):
    # the README's advice ("give it more steps (--steps)") rerun into the default folder
    args = ("--tasks", "paper/xy", "--seeds", "1")
    first = _compare(tmp_path, *args, "--steps", "2")
    run1 = tmp_path / "runs" / "tiny"
    assert _run_dir(first.stderr) == run1
    saved = {name: (run1 / name).read_bytes() for name in ("report.md", "sweep.json")}

    second = _compare(tmp_path, *args, "--steps", "3")
    run2 = _run_dir(second.stderr)
    assert run2.parent == run1.parent and run2.name.startswith("tiny-") and len(run2.name) == 13
    assert (f"settings differ from {run1} (train.steps 2 -> 3): this run goes to {run2}"
            in second.stderr.splitlines())  # fmt: skip
    assert {name: (run1 / name).read_bytes() for name in saved} == saved
    with ResultStore(run1 / "results.sqlite", create=False) as store:
        assert {r["config"]["train"]["steps"] for r in store.rows()} == {2}
    with ResultStore(run2 / "results.sqlite", create=False) as store:
        assert {r["config"]["train"]["steps"] for r in store.rows()} == {3} and len(store) == 2

    # more seeds with the first settings extend the first run (documented choice)
    third = _compare(tmp_path, "--tasks", "paper/xy", "--seeds", "2", "--steps", "2")
    assert _run_dir(third.stderr) == run1 and "settings differ" not in third.stderr
    assert "4 trials: 2 already done, 2 ok" in third.stderr
    assert json.loads((run1 / "sweep.json").read_text())["seeds"] == [0, 1]


# ------------------------------------------------------------------------------------- the store
def test_new_store_opened_by_many_at_once(tmp_path):
    errors: list[str] = []

    def open_store(path: Path, barrier: threading.Barrier) -> None:
        barrier.wait()
        try:
            ResultStore(path).close()
        except Exception as err:  # collected and shown by the assertion
            errors.append(f"{type(err).__name__}: {err}")

    for i in range(30):  # the old race showed on most rounds
        path = tmp_path / f"s{i}" / "results.sqlite"
        barrier = threading.Barrier(4)
        threads = [threading.Thread(target=open_store, args=(path, barrier)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []
    # a file that is not a store is still refused, and left as it was
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"not a database" * 100)
    with pytest.raises(StoreError, match="not a usable SQLite results store"):
        ResultStore(junk)
    assert junk.read_bytes() == b"not a database" * 100


@pytest.mark.slow  # two interpreters importing kanlab
def test_two_processes_claim_a_new_store_once(tmp_path):
    # of two runs with different settings starting into one new folder, one binds the store and
    # the other is refused (never both recorded, never sweep.json overwritten with other settings)
    path = tmp_path / "results.sqlite"
    code = (
        "import sys\nfrom kanlab.bench.store import ResultStore\n"
        "with ResultStore(sys.argv[1]) as s:\n"
        "    print(s.claim_settings(sys.argv[2], {'who': sys.argv[2]})[0])\n"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(path), name], env=env,
                              stdout=subprocess.PIPE, text=True) for name in ("one", "two")]  # fmt: skip
    winners = {p.communicate(timeout=120)[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs)
    assert len(winners) == 1 and winners <= {"one", "two"}
    with ResultStore(path, create=False) as store:
        assert store.settings() == (next(iter(winners)), {"who": next(iter(winners))})


def test_differences_name_tasks_left_out_or_added():
    from kanlab.bench.identity import differences

    two = {"tasks": [{"name": "paper/xy"}, {"name": "paper/bessel_j0"}], "seeds": 3}
    one = {"tasks": [{"name": "paper/xy"}], "seeds": 3}
    assert differences(two, one) == "tasks paper/bessel_j0 left out"
    assert differences(one, two) == "tasks paper/bessel_j0 added"
    other = {"tasks": [{"name": "feynman/I.6.2"}], "seeds": 3}
    assert differences(one, other) == "tasks paper/xy -> feynman/I.6.2"
