"""`kanlab compare` as a process: interruption, orphaned workers, the run folder's lock, bad --out.

The signal tests run the real CLI in its own session and kill real processes; every process they
start (the CLI, its workers, multiprocessing's resource tracker) is killed in a ``finally`` block,
whatever the outcome. Workers are found as the CLI's children through ``/proc`` (Linux).
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path

import pytest

from kanlab.bench.sweep import expand, load_sweep

SRC = str(Path(__file__).resolve().parents[1] / "src")
ENV = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}

# Trials far too long to finish during a test: the CLI is still running when it is killed.
LONG = """
name = "long"
tasks = ["paper/xy"]
seeds = 2
[data]
n_train = 64
n_test = 64
[train]
steps = 100000
[kan]
hidden = [[2]]
grids = [[3]]
[mlp]
depths = [1]
"""

# Six quick trials (two KANs, each with two matched MLPs).
TINY = """
name = "tiny"
tasks = ["paper/xy"]
seeds = 1
[data]
n_train = 32
n_test = 32
[train]
steps = 4
[kan]
hidden = [[2]]
grids = [[3], [5]]
[mlp]
depths = [1, 2]
"""

LOCK_NAME = ".lock"  # kanlab.bench.lock.LOCK_NAME; imported in the tests that use the module
needs_proc = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")


# ------------------------------------------------------------------------------------ processes
def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, start time) of a live process, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "
    return fields[0], int(fields[1]), int(fields[19])


def _children(pid: int) -> dict[int, int]:
    """{child pid: start time} of the live children of ``pid``."""
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            st = _stat(int(entry.name))
            if st is not None and st[1] == pid and st[0] != "Z":
                out[int(entry.name)] = st[2]
    return out


def _alive(pid: int, start: int) -> bool:
    st = _stat(pid)
    return st is not None and st[0] != "Z" and st[2] == start  # a zombie has exited


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _wait(condition, timeout: float, what: str, proc: subprocess.Popen | None = None):
    """Poll ``condition`` until it is true (returns its value); fail after ``timeout`` s, or as
    soon as ``proc`` has exited."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the CLI exited ({proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


class CLI:
    """`kanlab compare` in its own session, output to files (a pipe held open by an orphaned
    worker would block the reader). ``seen`` collects every descendant ever observed."""

    def __init__(self, tmp_path: Path, *args: str, name: str = "cli") -> None:
        self.err_path = tmp_path / f"{name}.err"
        self.out_path = tmp_path / f"{name}.out"
        cmd = [sys.executable, "-m", "kanlab", "compare", "--no-progress", *args]
        with self.out_path.open("wb") as out, self.err_path.open("wb") as err:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=ENV,
                                         start_new_session=True)  # fmt: skip
        self.seen: dict[int, int] = {}

    def descendants(self) -> dict[int, int]:
        todo, found = [self.proc.pid], {}
        while todo:
            for pid, start in _children(todo.pop()).items():
                found[pid] = start
                todo.append(pid)
        self.seen.update(found)
        return found

    def workers(self) -> list[int]:
        return [p for p in self.descendants() if "spawn_main" in _cmdline(p)]

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def cleanup(self) -> None:
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # the group outlives its leader
        for pid, start in self.seen.items():
            if _alive(pid, start):
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        with suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=30)


def _running_with_workers(tmp_path: Path) -> CLI:
    sweep = tmp_path / "long.toml"
    sweep.write_text(LONG)
    cli = CLI(tmp_path, "--suite", str(sweep), "--out", str(tmp_path / "runs"),
              "--executor", "local", "--workers", "2")  # fmt: skip
    try:
        _wait(lambda: len(cli.workers()) >= 2, 180, "two worker processes", cli.proc)
    except BaseException:
        cli.cleanup()
        raise
    return cli


def _assert_all_gone(cli: CLI, timeout: float = 20.0) -> None:
    assert cli.seen, "no descendant was ever seen"
    _wait(lambda: not any(_alive(p, s) for p, s in cli.seen.items()), timeout,
          f"the workers to exit: {[(p, _cmdline(p)) for p, s in cli.seen.items() if _alive(p, s)]}")  # fmt: skip


def _rows(db: Path) -> list[str]:
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return [r[0] for r in conn.execute("SELECT key FROM trials")]
    except sqlite3.OperationalError:  # no table yet
        return []
    finally:
        conn.close()


# ------------------------------------------------------------------------------------ signals
@needs_proc
@pytest.mark.slow
def test_sigkill_of_compare_takes_its_workers_with_it(tmp_path):
    cli = _running_with_workers(tmp_path)
    try:
        workers = cli.workers()
        os.kill(cli.proc.pid, signal.SIGKILL)  # the main process only, as the OOM killer would
        assert cli.proc.wait(timeout=30) == -signal.SIGKILL
        assert set(workers) <= set(cli.seen)
        _assert_all_gone(cli)
    finally:
        cli.cleanup()


@needs_proc
@pytest.mark.slow
@pytest.mark.parametrize(
    ("signum", "status", "group"),
    [(signal.SIGTERM, 143, False),  # `kill PID`
     (signal.SIGINT, 130, True)],  # Ctrl-C: the terminal signals the whole foreground group
)  # fmt: skip
def test_sigterm_and_ctrl_c_stop_the_workers_and_say_what_was_saved(tmp_path, signum, status,
                                                                     group):  # fmt: skip
    cli = _running_with_workers(tmp_path)
    try:
        (os.killpg if group else os.kill)(cli.proc.pid, signum)
        assert cli.proc.wait(timeout=60) == status, cli.stderr()
        _assert_all_gone(cli)
    finally:
        cli.cleanup()
    err = cli.stderr()
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    match = re.search(r"^interrupted: (\d+) of 4 trials saved \((\d+) in this run\); "
                      r"rerun the same command to resume$", err, re.MULTILINE)  # fmt: skip
    assert match, err
    saved = _rows(tmp_path / "runs" / "long" / "results.sqlite")
    assert int(match[1]) == int(match[2]) == len(saved)
    assert not (tmp_path / "runs" / "long" / LOCK_NAME).exists()  # released on the way out


@needs_proc
@pytest.mark.slow
def test_worker_exits_when_its_parent_is_killed_without_the_death_signal(tmp_path):
    # The portable fallback alone: a grandchild watches its parent the way a worker does (no
    # PR_SET_PDEATHSIG); the parent is SIGKILLed; the grandchild must exit by itself.
    child = tmp_path / "child.py"
    child.write_text(
        "import os, threading, time\n"
        "from kanlab.bench.runner import _watch_parent\n"
        "threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()\n"
        "print(os.getpid(), flush=True)\n"
        "time.sleep(600)\n"
    )
    code = f"import subprocess, sys; sys.exit(subprocess.call([sys.executable, {str(child)!r}]))"
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=ENV,
                              start_new_session=True, text=True)  # fmt: skip
    try:
        line = parent.stdout.readline()  # "" if the child failed (the parent then exits too)
        assert line.strip().isdigit(), f"the child did not start: {line!r}"
        grandchild = int(line)
        start = _stat(grandchild)[2]
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=30)
        _wait(lambda: not _alive(grandchild, start), 10, "the orphan to exit")
    finally:
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(parent.pid, signal.SIGKILL)
        parent.wait(timeout=30)
        parent.stdout.close()


# ------------------------------------------------------------------------------------ the lock
def test_run_lock_refuses_a_second_holder_and_names_the_first(tmp_path):
    from kanlab.bench.lock import RunInUseError, RunLock

    with RunLock(tmp_path, command="kanlab compare --suite quick") as lock:
        holder = json.loads((tmp_path / LOCK_NAME).read_text())
        assert holder["pid"] == os.getpid() and holder["command"] == "kanlab compare --suite quick"
        with pytest.raises(RunInUseError) as exc:  # flock: a second open file conflicts too
            RunLock(tmp_path).acquire()
        message = str(exc.value)
        assert message.startswith(f"{tmp_path} is in use by kanlab compare --suite quick (pid ")
        assert re.search(rf"\(pid {os.getpid()}, started \d\d:\d\d:\d\d\)$", message), message
        assert lock.held
    assert not (tmp_path / LOCK_NAME).exists()  # released and removed
    with RunLock(tmp_path):  # free again
        pass


def test_stale_lock_file_is_taken_over_silently(tmp_path):
    from kanlab.bench.lock import RunLock

    (tmp_path / LOCK_NAME).write_text('{"pid": 999999, "host": "gone", "command": "old"}\n')
    lock = RunLock(tmp_path, command="new")
    lock.acquire()  # nobody holds the flock: no error
    try:
        assert json.loads((tmp_path / LOCK_NAME).read_text())["command"] == "new"
    finally:
        lock.release()


@pytest.mark.slow
def test_lock_dies_with_a_killed_holder(tmp_path):
    from kanlab.bench.lock import RunInUseError, RunLock

    code = ("import sys, time\nfrom kanlab.bench.lock import RunLock\n"
            "RunLock(sys.argv[1]).acquire()\nprint('locked', flush=True)\ntime.sleep(600)\n")  # fmt: skip
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], env=ENV, text=True,
                              stdout=subprocess.PIPE, start_new_session=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunInUseError, match=rf"\(pid {holder.pid}, started "):
            RunLock(tmp_path).acquire()
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
        assert (tmp_path / LOCK_NAME).exists()  # left behind by the crash, but holds no lock
        with RunLock(tmp_path):
            pass
    finally:
        with suppress(ProcessLookupError):
            os.killpg(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
        holder.stdout.close()


@pytest.mark.slow
def test_second_compare_into_the_same_folder_refuses_at_once(tmp_path):
    sweep = tmp_path / "tiny.toml"
    sweep.write_text(TINY)
    out = tmp_path / "runs"
    args = ("--suite", str(sweep), "--out", str(out), "--executor", "serial")
    lock_file = out / "tiny" / LOCK_NAME
    first = CLI(tmp_path, *args, name="first")
    try:

        def locked() -> bool:
            with suppress(OSError, ValueError):
                return json.loads(lock_file.read_text())["pid"] == first.proc.pid
            return False

        _wait(locked, 180, "the first run to take the lock", first.proc)
        os.kill(first.proc.pid, signal.SIGSTOP)  # frozen while holding the lock: no timing race
        second = subprocess.run([sys.executable, "-m", "kanlab", "compare", "--no-progress", *args],
                                capture_output=True, text=True, env=ENV, timeout=180)  # fmt: skip
        assert first.proc.poll() is None  # the second did not wait for the first
        os.kill(first.proc.pid, signal.SIGCONT)
        assert second.returncode == 2, second.stderr
        last = second.stderr.strip().splitlines()[-1]
        assert "Traceback" not in second.stderr, second.stderr
        assert last.startswith(f"Error: {out / 'tiny'} is in use by kanlab compare "), last
        assert re.search(rf"\(pid {first.proc.pid}, started \d\d:\d\d:\d\d\); "
                         r"wait for it or use --out$", last), last  # fmt: skip
        assert first.proc.wait(timeout=300) == 0, first.stderr()
    finally:
        with suppress(ProcessLookupError):
            os.kill(first.proc.pid, signal.SIGCONT)
        first.cleanup()
    # The first ran every trial, the second none: each key once, nothing "already done".
    expected = sorted(t.key for t in expand(load_sweep(sweep)))
    assert sorted(_rows(out / "tiny" / "results.sqlite")) == expected
    assert f"{len(expected)} trials: 0 already done, {len(expected)} ok" in first.stderr()
    assert not lock_file.exists()


# ------------------------------------------------------------------------------------ bad --out
def _kanlab(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kanlab", *args], capture_output=True, text=True,
                          env=ENV, timeout=180)  # fmt: skip


def _one_line_error(result: subprocess.CompletedProcess, *parts: str) -> None:
    # the error is one line (after compare's "suite ... -> folder" line, when it got that far)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("Error: ") and len(lines) <= 2, result.stderr
    assert all(p in lines[-1] for p in parts), lines[-1]


@pytest.mark.slow
def test_out_that_is_not_a_writable_folder_is_one_line(tmp_path):
    sweep = tmp_path / "tiny.toml"
    sweep.write_text(TINY)
    a_file = tmp_path / "results.txt"
    a_file.write_text("not a folder\n")
    compare = ("compare", "--suite", str(sweep), "--executor", "serial", "--no-progress")
    _one_line_error(_kanlab(*compare, "--out", str(a_file)), f"--out: {a_file} is a file")
    _one_line_error(_kanlab(*compare, "--out", str(a_file / "sub")), f"--out: {a_file} is a file")
    if os.geteuid() == 0:  # root writes anywhere a permission bit allows: use a kernel folder
        blocked = Path("/sys/kanlab-test")
    else:
        locked = tmp_path / "read-only"
        locked.mkdir(mode=0o555)
        blocked = locked / "runs"
    result = _kanlab(*compare, "--out", str(blocked))
    _one_line_error(result, "--out: ", str(blocked.parent))
    assert not blocked.exists()
    assert a_file.read_text() == "not a folder\n"  # untouched


@pytest.mark.slow
def test_report_with_bad_paths_is_one_line(tmp_path):
    from kanlab.bench.store import ResultStore

    run = tmp_path / "run"
    ResultStore(run / "results.sqlite").close()  # an empty store is enough
    a_file = tmp_path / "report.txt"
    a_file.write_text("x\n")
    _one_line_error(_kanlab("report", str(run), "--out", str(a_file)), f"--out: {a_file} is a file")
    _one_line_error(_kanlab("report", str(run), "--csv", str(run)), f"--csv: {run} is a folder")
