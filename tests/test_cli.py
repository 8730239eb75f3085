"""The kanlab CLI: listing, bad input, an end-to-end compare on a CSV, resume after kill -9."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kanlab.bench.store import ResultStore
from kanlab.bench.sweep import expand, load_sweep
from kanlab.cli import main

TINY = """
name = "tiny"
tasks = ["paper/xy"]
seeds = 2
[data]
n_train = 64
n_test = 64
[train]
steps = 6
[kan]
hidden = [[2]]
grids = [[3], [5]]
[mlp]
depths = [1, 2]
"""


def _run(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def test_tasks_lists_groups(capsys):
    code, out, _ = _run(["tasks", "paper/"], capsys)
    assert code == 0
    names = [line.split()[0] for line in out.splitlines()]
    assert "paper/exp_sin_sq" in names and "paper/bessel_j0" in names
    assert all(n.startswith("paper/") for n in names)
    # each line says what the task is (issue 18: the listing gave only kind and size)
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert "regression, 2 input(s)" in lines["paper/xy"]
    assert lines["paper/xy"].endswith("x*y, the product of two inputs")
    assert "J0(20x)" in lines["paper/bessel_j0"]
    code, _, err = _run(["tasks", "nope/"], capsys)
    assert code == 2 and "groups: feynman/, paper/" in err


def test_unknown_task_and_option_list_valid_names(capsys, tmp_path):
    code, _, err = _run(["compare", "--tasks", "paper/xyz", "--out", str(tmp_path)], capsys)
    assert code == 2 and "unknown task 'paper/xyz'" in err and "paper/xy" in err
    code, _, err = _run(["compare", "--executor", "gpu-farm"], capsys)
    flat = " ".join(err.replace("│", " ").split())  # typer draws the message in a wrapped box
    assert code == 2 and "unknown executor 'gpu-farm'; valid: local, serial, dask-local," in flat
    assert "dask://HOST:PORT" in flat
    code, _, err = _run(["compare", "--suite", "huge", "--out", str(tmp_path)], capsys)
    assert code == 2 and "not a built-in suite (paper, quick)" in err
    assert not any(tmp_path.iterdir())  # nothing written for bad input


def test_steps_per_stage_or_per_trial(capsys, tmp_path):
    code, _, err = _run(["compare", "--steps", "2", "--total-steps", "6", "--out", str(tmp_path)],
                        capsys)  # fmt: skip
    assert code == 2 and "give --steps (per grid stage) or --total-steps (per trial)" in err
    assert not any(tmp_path.iterdir())


def test_bad_sweep_file_names_the_field(capsys, tmp_path):
    sweep = tmp_path / "s.toml"
    sweep.write_text(TINY.replace("depths = [1, 2]", "depths = [1, -2]"))
    code, _, err = _run(["compare", "--suite", str(sweep), "--out", str(tmp_path)], capsys)
    assert code == 2 and "field 'mlp.depths[1]'" in err


def test_bad_csv_is_reported(capsys, tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("a,b,y\n1,,3\n2,5,6\n3,4,1\n")
    code, _, err = _run(["compare", "--csv", str(path), "--target", "y"], capsys)
    assert code == 2 and "missing values" in err and "'b'" in err
    code, _, err = _run(["compare", "--csv", str(path)], capsys)
    assert code == 2 and "--csv and --target go together" in err


def test_report_on_missing_or_corrupt_store(capsys, tmp_path):
    code, _, err = _run(["report", str(tmp_path)], capsys)
    assert code == 2 and "no results store" in err
    db = tmp_path / "results.sqlite"
    db.write_bytes(b"garbage" * 1000)
    code, _, err = _run(["report", str(tmp_path)], capsys)
    assert code == 2 and "not a usable SQLite results store" in err
    assert db.read_bytes() == b"garbage" * 1000


@pytest.mark.slow
def test_compare_on_csv_end_to_end(capsys, tmp_path):
    import random

    rng = random.Random(0)
    lines = ["x1,x2,target"]
    for _ in range(80):
        a, b = rng.uniform(-1, 1), rng.uniform(-1, 1)
        lines.append(f"{a:.5f},{b:.5f},{a * b + 0.5 * a:.5f}")
    data = tmp_path / "prod.csv"
    data.write_text("\n".join(lines) + "\n")
    sweep = tmp_path / "tiny.toml"
    sweep.write_text(TINY.replace("seeds = 2", "seeds = 1"))
    argv = ["compare", "--suite", str(sweep), "--csv", str(data), "--target", "target",
            "--executor", "serial", "--out", str(tmp_path / "runs"), "--no-progress"]  # fmt: skip
    code, out, err = _run(argv, capsys)
    assert code == 0, err
    run = tmp_path / "runs" / "tiny-prod"
    assert "csv:prod.csv:target" in out and "| best KAN |" in out
    assert (run / "report.md").exists() and (run / "report.html").exists()
    code, out2, _ = _run(["report", str(run), "--csv", str(tmp_path / "all.csv")], capsys)
    assert code == 0 and out2 == out  # the same table from the stored results
    assert len((tmp_path / "all.csv").read_text().splitlines()) == 1 + 6


def _count(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        try:
            return conn.execute("SELECT COUNT(*) FROM trials").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.OperationalError:  # the table is not created yet
        return 0


@pytest.mark.slow
def test_resume_after_kill_9(tmp_path):
    sweep = tmp_path / "tiny.toml"
    sweep.write_text(TINY.replace("n_train = 64", "n_train = 32").replace("steps = 6", "steps = 4"))
    out = tmp_path / "runs"
    db = out / "tiny" / "results.sqlite"
    cmd = [sys.executable, "-m", "kanlab", "compare", "--suite", str(sweep), "--out", str(out),
           "--executor", "serial", "--no-progress"]  # fmt: skip
    total = len(expand(load_sweep(sweep)))
    assert total == 12
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while _count(db) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)  # the whole process group, as a crash would
    finally:
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    with ResultStore(db, create=False) as store:
        before = {r["key"]: r["finished_at"] for r in store.rows()}
    assert 2 <= len(before) < total

    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{len(before)} already done" in rerun.stderr
    with ResultStore(db, create=False) as store:
        rows = store.rows()
    keys = [r["key"] for r in rows]
    assert sorted(keys) == sorted(t.key for t in expand(load_sweep(sweep)))  # each exactly once
    assert all(r["status"] == "ok" for r in rows)
    after = {r["key"]: r["finished_at"] for r in rows}
    assert all(after[k] == v for k, v in before.items())  # finished trials were not re-run


def _labelled_csv(path: Path, n: int = 120) -> Path:
    """Two features and an integer target with 3 values: guessed as classification."""
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(n, 2))
    y = (x[:, 0] > 0).astype(int) + (x[:, 1] > 0.5).astype(int)
    lines = ["a,b,y"] + [f"{a:.6f},{b:.6f},{c}" for (a, b), c in zip(x, y, strict=True)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_train_on_csv_says_its_guessed_kind_and_takes_kind(tmp_path, capsys):
    """kanlab train --csv prints the kind it guessed for the target (and how to override it), and
    --kind overrides the guess; a bad --kind, or --kind with a registered task, is one line."""
    data = _labelled_csv(tmp_path / "d.csv")
    common = ["train", "--csv", str(data), "--target", "y", "--steps", "2", "--no-progress"]
    code, out, err = _run([*common, "--out", str(tmp_path / "a.safetensors")], capsys)
    assert code in (0, None)
    assert "classification" in err and "--kind regression overrides" in err
    assert "accuracy" in out
    argv = [*common, "--kind", "regression", "--out", str(tmp_path / "b.safetensors")]
    code, out, err = _run(argv, capsys)
    assert code in (0, None)
    assert "RMSE" in out and "overrides" not in err
    code, _, err = _run([*common, "--kind", "ranking"], capsys)
    assert code == 2 and "unknown --kind 'ranking'" in err
    code, _, err = _run(["train", "--task", "paper/xy", "--kind", "regression"], capsys)
    assert code == 2 and "--kind applies to --csv data" in err
