"""The results store: one SQLite file, one row per trial, keyed by a hash of the trial's configuration.

Crash safety comes from SQLite itself: the database runs in WAL mode with ``synchronous=FULL``, and
the runner commits each result as soon as its future completes, so a sweep killed at any moment (even
``kill -9``) loses at most the trials that were in flight. Only the parent process writes; workers return
results. Re-running a sweep asks :meth:`ResultStore.finished_keys` which trials to skip.

An existing file that is not a kanlab store (or not SQLite at all) is reported, never replaced. Several
processes may open the same new store at once: the schema is created inside one ``BEGIN IMMEDIATE``
transaction (``CREATE TABLE IF NOT EXISTS``), so one creates it and the others find it.

A store belongs to one sweep configuration: :meth:`ResultStore.claim_settings` records its
fingerprint and settings in the ``meta`` table the first time (atomically) and reports them after.
"""

from __future__ import annotations

import csv
import hashlib
import json
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "COLUMNS",
    "FINISHED_STATUSES",
    "STATUSES",
    "ResultStore",
    "StoreError",
    "config_key",
]

SCHEMA_VERSION = 1
STATUSES = ("ok", "failed", "diverged")
# Trials with these statuses are not re-run: "ok" and "diverged" are deterministic outcomes of the
# configuration; "failed" (an exception) may be transient or fixed by then, so it is retried.
FINISHED_STATUSES = ("ok", "diverged")

# (name, SQL type) of every column after the key; results are written by name.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("task", "TEXT NOT NULL"),
    ("family", "TEXT NOT NULL"),  # "kan" or "mlp"
    ("label", "TEXT NOT NULL"),  # the model configuration, e.g. "kan[2,5,1] G=3>5>10"
    ("group_id", "TEXT"),  # the KAN configuration an MLP was size-matched to (its own for a KAN)
    ("seed", "INTEGER NOT NULL"),
    ("metric", "TEXT"),  # "rmse" or "accuracy"
    ("params", "INTEGER"),
    ("flops", "INTEGER"),  # forward FLOPs per sample, sparse count (what kanlab computes)
    ("flops_dense", "INTEGER"),  # forward FLOPs per sample, dense-equivalent count
    ("train_metric", "REAL"),
    ("test_metric", "REAL"),
    ("test_error", "REAL"),  # rmse, or 1 - accuracy: lower is better for every task
    ("steps", "INTEGER"),  # optimisation steps actually run
    ("wall_time", "REAL"),  # seconds for the whole trial (data, model, training)
    ("time_per_step", "REAL"),  # seconds per training step
    ("status", "TEXT NOT NULL"),
    ("error", "TEXT"),
    ("config", "TEXT NOT NULL"),  # the canonical configuration as JSON
    ("extra", "TEXT"),  # JSON: per-stage results and other details
    ("kanlab_version", "TEXT"),
    ("finished_at", "REAL"),  # unix time
)
_NAMES = tuple(name for name, _ in COLUMNS)


class StoreError(RuntimeError):
    """The results file is missing, not a database, or not a kanlab results store."""


def config_key(config: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON of ``config``: keys sorted, no whitespace, floats by
    ``repr``. Equal configurations give equal keys in any process and Python version."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class ResultStore:
    """A results store at ``path`` (a ``.sqlite`` file).

    Args:
        path: the database file.
        create: make a new store if ``path`` does not exist (``False``: a missing file is an error,
            as when building a report).

    Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, path: str | Path, *, create: bool = True) -> None:
        self.path = Path(path)
        if not self.path.exists():
            if not create:
                raise StoreError(f"no results store at {self.path} (run `kanlab compare` first)")
            self.path.parent.mkdir(parents=True, exist_ok=True)
        elif self.path.is_dir():
            raise StoreError(f"{self.path} is a directory, not a results store")
        try:
            self._conn = sqlite3.connect(self.path, timeout=30.0)
            self._init_schema()
        except sqlite3.DatabaseError as err:
            if hasattr(self, "_conn"):
                self._conn.close()
            raise StoreError(
                f"{self.path} is not a usable SQLite results store ({err}); it was left untouched "
                "- move it away or choose another output directory"
            ) from err

    # -- setup -----------------------------------------------------------------------------------

    def _init_schema(self) -> None:
        conn = self._conn
        # quick_check reads every page: a truncated or overwritten file fails here, not mid-sweep.
        row = conn.execute("PRAGMA quick_check").fetchone()
        if row is None or row[0] != "ok":
            raise sqlite3.DatabaseError(f"integrity check failed: {row[0] if row else 'no answer'}")
        # Look and create under one write lock: another process opening the same new file at the
        # same moment waits here (the busy timeout), then finds the tables this one committed.
        conn.execute("BEGIN IMMEDIATE")
        try:
            tables = {
                r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
            if tables and not {"trials", "meta"} <= tables:
                raise StoreError(
                    f"{self.path} is an SQLite database but not a kanlab results store "
                    f"(tables: {', '.join(sorted(tables))}); it was left untouched"
                )
            if not tables:
                cols = ", ".join(f"{name} {sql}" for name, sql in COLUMNS)
                conn.execute(f"CREATE TABLE IF NOT EXISTS trials (key TEXT PRIMARY KEY, {cols})")
                conn.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT)")
                conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)",
                             (str(SCHEMA_VERSION),))  # fmt: skip
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
        # Switching to WAL needs the file to itself and SQLite does not wait for that (no busy
        # handler): another process opening the store at this moment makes it fail, so retry.
        deadline = time.monotonic() + 30.0
        while True:
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError as err:
                if "locked" not in str(err) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        conn.execute("PRAGMA synchronous=FULL")
        version = conn.execute("SELECT value FROM meta WHERE name='schema_version'").fetchone()
        if version is None or version[0] != str(SCHEMA_VERSION):
            found = version[0] if version else "none"
            raise StoreError(
                f"{self.path} has results-store schema version {found}; this kanlab reads "
                f"version {SCHEMA_VERSION}"
            )

    # -- writing ---------------------------------------------------------------------------------

    def put(self, key: str, row: Mapping[str, Any]) -> None:
        """Insert or replace the trial ``key`` and commit (durable when this returns).

        ``row`` maps column names (see :data:`COLUMNS`) to values; ``config`` and ``extra`` may be
        dicts (stored as JSON). Unknown names are refused."""
        self.put_many([(key, row)])

    def put_many(self, items: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
        """:meth:`put` for several trials in one transaction: all of them are stored, or (a
        process killed before the commit) none. A batched sweep stores a model batch's trials so,
        and a rerun finds each batch whole or not at all."""
        prepared = []
        for key, row in items:
            unknown = set(row) - set(_NAMES)
            if unknown:
                raise ValueError(
                    f"unknown result column(s) {sorted(unknown)}; valid: {list(_NAMES)}"
                )
            status = row.get("status")
            if status not in STATUSES:
                raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
            values = dict(row)
            for name in ("config", "extra"):
                if isinstance(values.get(name), Mapping):
                    values[name] = json.dumps(values[name], sort_keys=True)
            values.setdefault("finished_at", time.time())
            prepared.append((key, values))
        with self._conn:
            for key, values in prepared:
                names = ["key", *values]
                marks = ", ".join("?" for _ in names)
                self._conn.execute(
                    f"INSERT OR REPLACE INTO trials ({', '.join(names)}) VALUES ({marks})",
                    [key, *values.values()],
                )

    def claim_settings(
        self, fingerprint: str, settings: Mapping[str, Any]
    ) -> tuple[str, dict[str, Any]]:
        """The sweep configuration this store holds, as ``(fingerprint, settings)``; a store without
        one and without trials is bound to ``fingerprint``/``settings`` now (atomically: of two
        processes claiming a new store, one binds it and the other gets the first one's).

        A store with trials but no recorded configuration (written by an earlier kanlab) returns
        ``("", {})``: its settings are unknown."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            found = self._recorded()
            if found is None:
                text = json.dumps(settings, sort_keys=True)
                conn.executemany("INSERT INTO meta VALUES (?, ?)",
                                 [("fingerprint", fingerprint), ("settings", text)])  # fmt: skip
                found = (fingerprint, json.loads(text))
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
        return found

    def settings(self) -> tuple[str, dict[str, Any]] | None:
        """The recorded ``(fingerprint, settings)`` (see :meth:`claim_settings`): ``None`` for a store
        still free (no configuration, no trials), ``("", {})`` for one from an earlier kanlab."""
        return self._recorded()

    def _recorded(self) -> tuple[str, dict[str, Any]] | None:
        rows = dict(self._conn.execute(
            "SELECT name, value FROM meta WHERE name IN ('fingerprint', 'settings')"
        ).fetchall())  # fmt: skip
        if "fingerprint" in rows:
            return rows["fingerprint"], json.loads(rows.get("settings") or "{}")
        if self._conn.execute("SELECT 1 FROM trials LIMIT 1").fetchone() is not None:
            return "", {}
        return None

    # -- reading ---------------------------------------------------------------------------------

    def finished_keys(self, statuses: Iterable[str] = FINISHED_STATUSES) -> set[str]:
        """Keys of the trials whose status is in ``statuses`` (by default: not to be re-run)."""
        statuses = tuple(statuses)
        marks = ", ".join("?" for _ in statuses)
        cur = self._conn.execute(f"SELECT key FROM trials WHERE status IN ({marks})", statuses)
        return {r[0] for r in cur}

    def rows(self, *, task: str | None = None) -> list[dict[str, Any]]:
        """All trials (optionally of one task) as dicts, ``config``/``extra`` decoded."""
        sql = "SELECT * FROM trials"
        args: tuple[Any, ...] = ()
        if task is not None:
            sql += " WHERE task = ?"
            args = (task,)
        cur = self._conn.execute(sql + " ORDER BY task, family, label, seed", args)
        names = [d[0] for d in cur.description]
        out = []
        for values in cur:
            row = dict(zip(names, values, strict=True))
            for name in ("config", "extra"):
                if row.get(name):
                    row[name] = json.loads(row[name])
            out.append(row)
        return out

    def __len__(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM trials").fetchone()[0])

    def to_csv(self, path: str | Path) -> Path:
        """Write every trial as one CSV row (JSON columns kept as JSON text); returns the path."""
        path = Path(path)
        cur = self._conn.execute("SELECT * FROM trials ORDER BY task, family, label, seed")
        names = [d[0] for d in cur.description]
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(names)
            writer.writerows(cur)
        return path

    # -- lifetime --------------------------------------------------------------------------------

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
