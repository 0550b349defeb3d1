"""Results store: WAL, one writer (refused at once), stale rows redone, results and predictions atomic."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

from ftgen.errors import UserError
from ftgen.store import Store, db_path


def run_row(key: str, slot: str | None = None) -> dict:
    return {
        "key": key,
        "slot": slot or f"slot-{key}",
        "model": "default",
        "train_task": "sentiment",
        "train_set": "amazon",
        "size": 16,
        "method": "ft",
        "lr": 1e-4,
        "epochs": 1,
        "seed": 0,
        "config": json.dumps({"lr": 1e-4}),
    }


def cell_row(key: str, slot: str | None = None, run_key: str | None = None, config: dict | None = None) -> dict:
    return {
        "key": key,
        "slot": slot or f"cell-{key}",
        "run_key": run_key,
        "model": "default",
        "train_task": None,
        "train_set": None,
        "size": None,
        "method": "base",
        "lr": None,
        "epochs": None,
        "seed": None,
        "test_task": "sentiment",
        "test_set": "amazon",
        "shots": 0,
        "fmt": 0,
        "config": json.dumps(config or {"limit": 8}),
    }


def test_wal_full_sync_and_schema(tmp_path):
    with Store.open_writer(tmp_path) as s:
        assert s.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert s.conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        s.add([run_row("r1")], [cell_row("c1", run_key="r1")])
        s.add([run_row("r1")], [cell_row("c1", run_key="r1")])  # resume: INSERT OR IGNORE, no duplicate
        assert len(s.rows("runs")) == 1 and len(s.rows("cells")) == 1
        assert s.get("cells", "c1")["status"] == "pending"


def test_second_writer_is_refused_at_once_from_another_process(tmp_path):
    code = textwrap.dedent(f"""
        import sys, time
        from ftgen.store import Store
        s = Store.open_writer({str(tmp_path)!r})
        print("locked", flush=True)
        time.sleep(60)
    """)
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        t0 = time.perf_counter()
        with pytest.raises(
            UserError, match=f"another ftgen study is already writing this directory \\(pid {holder.pid}"
        ):
            Store.open_writer(tmp_path)
        assert time.perf_counter() - t0 < 1.0  # refused at once, not after SQLite's busy timeout
        # readers never take the lock: status works while the study runs
        with Store.open_reader(tmp_path) as r:
            assert r.counts()["cells"]["pending"] == 0
    finally:
        holder.kill()
        holder.wait()
    # the holder died (kill -9 semantics): the kernel released its flock, a new writer gets in
    Store.open_writer(tmp_path).close()


def test_stale_running_rows_are_reset_under_the_lock(tmp_path):
    with Store.open_writer(tmp_path) as s:
        s.add([run_row("r1")], [cell_row("c1"), cell_row("c2")])
        s.start("runs", "r1")
        s.start("cells", "c1")
        s.finish_cell("c2", metrics={"metric": "accuracy", "score": 50.0, "n": 2}, predictions=[{"id": 1}], seconds=1)
    # the process "died" with r1 and c1 running
    with Store.open_writer(tmp_path) as s:
        assert s.get("runs", "r1")["status"] == "pending"
        assert s.get("cells", "c1")["status"] == "pending"
        assert s.get("cells", "c1")["attempts"] == 1  # the count of tries survives
        assert s.get("cells", "c2")["status"] == "done"


def test_live_slot_is_unique(tmp_path):
    with Store.open_writer(tmp_path) as s:
        s.add([], [cell_row("old", slot="same")])
        with pytest.raises(sqlite3.IntegrityError):
            s.add([], [cell_row("new", slot="same")])
        s.supersede("cells", ["old"])
        s.add([], [cell_row("new", slot="same")])
        assert [r["key"] for r in s.rows("cells", "status != 'superseded'")] == ["new"]


def test_done_and_predictions_commit_together(tmp_path):
    with Store.open_writer(tmp_path) as s:
        s.add([], [cell_row("c1")])
        # the status update fails after the predictions row was inserted: both must roll back
        s.conn.execute("CREATE TRIGGER boom BEFORE UPDATE OF status ON cells BEGIN SELECT RAISE(ABORT, 'x'); END")
        with pytest.raises(sqlite3.DatabaseError):
            s.finish_cell(
                "c1", metrics={"metric": "accuracy", "score": 1.0, "n": 1}, predictions=[{"id": 1}], seconds=1
            )
        s.conn.execute("DROP TRIGGER boom")
        assert s.predictions("c1") is None and s.get("cells", "c1")["status"] == "pending"


KILLED_WRITER = """
import sys
from ftgen.store import Store
s = Store.open_writer(sys.argv[1])
s.add([], [{"key": f"c{i}", "slot": f"s{i}", "run_key": None, "model": "m", "train_task": None, "train_set": None,
            "size": None, "method": "base", "lr": None, "epochs": None, "seed": None, "test_task": "t",
            "test_set": "x", "shots": 0, "fmt": 0, "config": "{}"} for i in range(100000)])
print("ready", flush=True)
preds = [{"id": j, "prediction": "positive" * 50} for j in range(400)]  # ~0.25 MB per cell: writes take a while
for i in range(100000):
    s.start("cells", f"c{i}")
    s.finish_cell(f"c{i}", metrics={"metric": "accuracy", "score": float(i), "n": 400}, predictions=preds, seconds=0)
"""


def test_kill_9_mid_write_leaves_done_cells_with_their_predictions(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(1.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert db_path(tmp_path).with_name("results.sqlite-wal").exists()  # killed with its WAL not checkpointed
    with Store.open_writer(tmp_path) as s:  # stale `running` -> pending
        counts = s.counts()["cells"]
        assert counts["running"] == 0 and counts["done"] > 0
        done = {r["key"] for r in s.rows("cells", "status='done'")}
        with_preds = {r[0] for r in s.conn.execute("SELECT cell_key FROM predictions")}
        assert done == with_preds
        for key in list(done)[:3]:
            assert len(s.predictions(key)) == 400
        assert s.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_reader_sees_committed_rows_while_writer_is_in_a_transaction(tmp_path):
    with Store.open_writer(tmp_path) as w:
        w.add([], [cell_row("c1")])
        w.conn.execute("BEGIN IMMEDIATE")
        w.conn.execute("UPDATE cells SET status='done' WHERE key='c1'")
        with Store.open_reader(tmp_path) as r:  # WAL: no "database is locked", sees the last commit
            assert r.get("cells", "c1")["status"] == "pending"
            with pytest.raises(sqlite3.OperationalError, match="readonly"):
                r.conn.execute("UPDATE cells SET status='failed'")
        w.conn.execute("COMMIT")


def test_reader_of_a_missing_study_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no study results here"):
        Store.open_reader(tmp_path / "nothing")
    assert not (tmp_path / "nothing").exists()
