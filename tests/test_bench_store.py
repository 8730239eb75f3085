"""The SQLite results store: keys, durability settings, resume bookkeeping, bad files refused."""

from __future__ import annotations

import csv
import sqlite3

import pytest

from kanlab.bench.store import ResultStore, StoreError, config_key


def _row(**kw):
    row = {"task": "paper/xy", "family": "kan", "label": "kan[2,2,1] G=5", "seed": 0,
           "status": "ok", "config": {"a": 1}, "test_error": 0.5}  # fmt: skip
    row.update(kw)
    return row


def test_config_key_is_canonical_sha256():
    a = {"task": {"name": "paper/xy"}, "seed": 1, "train": {"lr": 1.0, "steps": 3}}
    b = {"train": {"steps": 3, "lr": 1.0}, "seed": 1, "task": {"name": "paper/xy"}}
    assert config_key(a) == config_key(b)  # key order does not matter
    assert len(config_key(a)) == 64 and int(config_key(a), 16) >= 0
    assert config_key(a) != config_key({**a, "seed": 2})
    with pytest.raises(ValueError):
        config_key({"x": float("nan")})  # NaN has no canonical JSON


def test_put_rows_and_wal(tmp_path):
    db = tmp_path / "r.sqlite"
    with ResultStore(db) as store:
        store.put("k1", _row())
        store.put("k2", _row(seed=1, status="diverged", error="non-finite loss at step 3"))
        store.put("k3", _row(seed=2, status="failed", error="boom"))
        store.put("k1", _row(test_error=0.25))  # replace, not duplicate
        assert len(store) == 3
        assert store.finished_keys() == {"k1", "k2"}  # failed trials are retried
        rows = {r["key"]: r for r in store.rows()}
        assert rows["k1"]["test_error"] == 0.25 and rows["k1"]["config"] == {"a": 1}
        assert rows["k2"]["error"].startswith("non-finite")
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("SELECT COUNT(*) FROM trials").fetchone()[0] == 3
    conn.close()


def test_put_refuses_unknown_columns_and_statuses(tmp_path):
    with ResultStore(tmp_path / "r.sqlite") as store:
        with pytest.raises(ValueError, match="unknown result column"):
            store.put("k", _row(bogus=1))
        with pytest.raises(ValueError, match="status"):
            store.put("k", _row(status="great"))


def test_put_many_stores_a_batch_whole_or_not_at_all(tmp_path):
    """A model batch's rows go in one transaction: an error at its second row (a value sqlite
    cannot store) leaves none of them, and a good batch lands whole."""
    with ResultStore(tmp_path / "r.sqlite") as store:
        with pytest.raises(sqlite3.Error):
            store.put_many([("a", _row()), ("b", _row(seed=1, test_error=object()))])
        assert len(store) == 0
        with pytest.raises(ValueError, match="status"):  # checked before anything is written
            store.put_many([("a", _row()), ("b", _row(status="great"))])
        assert len(store) == 0
        store.put_many([("a", _row()), ("b", _row(seed=1))])
        assert store.finished_keys() == {"a", "b"}


def test_committed_rows_survive_without_close(tmp_path):
    db = tmp_path / "r.sqlite"
    store = ResultStore(db)
    store.put("k1", _row())
    # a second connection (another process would be the same) sees the commit immediately
    with ResultStore(db, create=False) as other:
        assert other.finished_keys() == {"k1"}
    store.close()


def test_missing_store_is_reported(tmp_path):
    with pytest.raises(StoreError, match="no results store"):
        ResultStore(tmp_path / "none.sqlite", create=False)
    assert not (tmp_path / "none.sqlite").exists()


def test_corrupt_file_is_reported_and_left_untouched(tmp_path):
    db = tmp_path / "results.sqlite"
    junk = b"this is not a database, but someone's notes\n" * 200
    db.write_bytes(junk)
    with pytest.raises(StoreError, match="not a usable SQLite results store"):
        ResultStore(db)
    assert db.read_bytes() == junk


def test_foreign_sqlite_database_is_refused(tmp_path):
    db = tmp_path / "other.sqlite"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE people (name TEXT)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="not a kanlab results store"):
        ResultStore(db)


def test_truncated_store_is_reported(tmp_path):
    db = tmp_path / "r.sqlite"
    with ResultStore(db) as store:
        for i in range(200):
            store.put(f"k{i}", _row(seed=i, error="x" * 500))
    sqlite3.connect(db).execute("PRAGMA wal_checkpoint(TRUNCATE)").connection.close()
    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 2])
    with pytest.raises(StoreError):
        with ResultStore(db) as store:
            store.rows()


def test_to_csv(tmp_path):
    with ResultStore(tmp_path / "r.sqlite") as store:
        store.put("k1", _row())
        store.put("k2", _row(seed=1, test_error=0.75))
        path = store.to_csv(tmp_path / "out.csv")
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["key"] for r in rows] == ["k1", "k2"]
    assert [float(r["test_error"]) for r in rows] == [0.5, 0.75]
