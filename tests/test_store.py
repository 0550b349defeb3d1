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


@pytest.mark.parametrize("table", ["runs", "cells"])
def test_live_slot_is_unique(tmp_path, table):
    """Every unique slot: a second live row at a slot is refused, however it would get there."""
    row = run_row if table == "runs" else cell_row

    def add(store: Store, r: dict) -> None:
        store.add([r], []) if table == "runs" else store.add([], [r])

    with Store.open_writer(tmp_path) as s:
        add(s, row("old", slot="same"))
        with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
            add(s, row("new", slot="same"))
        add(s, row("other", slot="elsewhere"))
        with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):  # moved into a live slot
            s.conn.execute(f"UPDATE {table} SET slot='same' WHERE key='other'")
        s.supersede(table, ["old"])
        add(s, row("new", slot="same"))
        assert sorted(r["key"] for r in s.rows(table, "status != 'superseded'")) == ["new", "other"]
        with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):  # a superseded row cannot come back to life
            s.conn.execute(f"UPDATE {table} SET status='pending' WHERE key='old'")
        assert len(s.rows(table, "slot='same'")) == 2 and s.live_by_slot(table)["same"]["key"] == "new"


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


# ---------------------------------------------------------------- readers of odd places and damaged stores


def _a_study(out, n_cells: int = 3) -> None:
    """A small finished store: one run, its cells done with predictions."""
    with Store.open_writer(out) as s:
        s.set_meta("study", "s")
        s.add([run_row("r1")], [cell_row(f"c{i}", run_key="r1") for i in range(n_cells)])
        s.finish_run("r1", model_dir="runs/r1/model", manifest={}, summary={"records": 8}, seconds=1)
        for i in range(n_cells):
            preds = [{"id": j, "prediction": "positive"} for j in range(2)]
            metrics = {"metric": "accuracy", "score": 50.0, "n": 2}
            s.finish_cell(f"c{i}", metrics=metrics, predictions=preds, seconds=1)
    (out / "runs" / "r1" / "model").mkdir(parents=True)


@pytest.mark.parametrize("name", ["a#b", "q?mode=rw", "50%off", "x%2541y", "sp ace", "ünï"])
def test_a_store_in_a_directory_with_uri_characters_reads_back(tmp_path, name):
    out = tmp_path / name
    _a_study(out)
    wal = {out / "results.sqlite-wal", out / "results.sqlite-shm"}  # SQLite's own, beside a WAL database
    before = set(tmp_path.rglob("*")) | wal
    with Store.open_reader(out) as r:
        assert r.counts()["cells"]["done"] == 3 and r.status()["name"] == "s"
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            r.conn.execute("UPDATE cells SET status='failed'")
    assert set(tmp_path.rglob("*")) <= before  # no stray file made by a mis-read URI


def test_liveness_comes_from_the_lock_not_the_pid(tmp_path):
    from ftgen.store import lock_holder

    _a_study(tmp_path)
    # a dead study whose pid was reused by a live process (ours): not running
    (tmp_path / ".lock").write_text(f"pid {os.getpid()} on {__import__('socket').gethostname()}")
    assert lock_holder(tmp_path) is None
    with Store.open_reader(tmp_path) as r:
        assert r.status()["writer"] is None
    # a live writer: running, whatever its lock file says
    code = f"import time; from ftgen.store import Store; s = Store.open_writer({str(tmp_path)!r}); print('locked')"
    code += "; import sys; sys.stdout.flush(); time.sleep(60)"
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert lock_holder(tmp_path) == f"pid {holder.pid} on {__import__('socket').gethostname()}"
        for _ in range(20):  # readers probing the lock never make a starting writer fail
            assert lock_holder(tmp_path)
    finally:
        holder.kill()
        holder.wait()
    assert lock_holder(tmp_path) is None  # killed: the kernel released the lock


@pytest.mark.parametrize("kind", ["directory", "fifo", "symlink"])
def test_a_lock_that_is_not_a_file_is_one_line(tmp_path, kind, capsys):
    from helpers import assert_user_error, run_cli_inprocess

    _a_study(tmp_path)
    lock = tmp_path / ".lock"
    lock.unlink()
    if kind == "directory":
        lock.mkdir()
    elif kind == "fifo":
        os.mkfifo(lock)
    else:
        lock.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UserError, match=r"\.lock: .*not ftgen's study lock file"):
        Store.open_writer(tmp_path)
    assert_user_error(run_cli_inprocess(capsys, "status", str(tmp_path)), ".lock")


def _damage(out, how: str) -> None:
    path = db_path(out)
    if how == "garbage":  # overwrite pages in the middle of the file
        size = path.stat().st_size
        with open(path, "r+b") as f:
            f.seek(size // 2 - 4096)
            f.write(os.urandom(8192))
        return
    conn = sqlite3.connect(path)
    if how == "broken predictions":
        conn.execute("UPDATE predictions SET rows='[{\"id\": 1,' WHERE cell_key='c1'")
    elif how == "null score":
        conn.execute("UPDATE cells SET score=NULL WHERE key='c2'")
    elif how == "broken run config":
        conn.execute("UPDATE runs SET config='{not json' WHERE key='r1'")
    conn.commit()
    conn.close()


@pytest.mark.parametrize("how", ["garbage", "broken predictions", "null score", "broken run config"])
def test_a_damaged_store_never_gives_a_traceback(tmp_path, how):
    from helpers import run_cli

    out = tmp_path / "study"
    _a_study(out, n_cells=300)  # several pages, so that garbage lands inside the tables
    _damage(out, how)
    status = run_cli("status", str(out))
    assert "Traceback" not in status.stderr and status.returncode in (0, 2), status.stderr
    if status.returncode == 2:
        assert len(status.stderr.strip().splitlines()) == 1
    check = run_cli("status", str(out), "--check")
    assert check.returncode == 1 and "Traceback" not in check.stderr + check.stdout, (check.stdout, check.stderr)
    problems = [line for line in check.stdout.splitlines() if line.startswith("check: PROBLEM:")]
    assert problems, check.stdout
    expected = {"broken predictions": "c1", "null score": "c2", "broken run config": "r1"}.get(how, "")
    assert any(expected in p for p in problems), problems
    report = run_cli("report", str(out), "--to", str(tmp_path / "report"))
    if how == "broken predictions":  # that cell is marked (no interval), the report goes on
        assert report.returncode == 0, report.stderr
    else:
        assert report.returncode == 2 and "Traceback" not in report.stderr
        assert len(report.stderr.strip().splitlines()) == 1 and "results store" in report.stderr
        assert not (tmp_path / "report").exists()
