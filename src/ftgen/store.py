"""The results store of a study: one SQLite database (WAL) in the study's output directory.

    OUT/results.sqlite   tables `runs` (one row per training run), `cells` (one row per evaluation cell,
                         the base model's cells included), `predictions` (one row per done cell), `meta`
    OUT/.lock            exclusive flock held by the one study process that writes

Crash safety, by construction:
- every state change is one transaction; a cell's `done` status, metrics and predictions commit
  together, so a killed process leaves either a done cell with its predictions or no result at all;
- each unit is keyed by the hash of the config that determines its result (`key`, primary key), and
  inserted with ON CONFLICT(key) DO NOTHING: resuming never duplicates a row (a second live row at
  the same slot is still an error);
- a second writer is refused at once by the lock (SQLite itself would wait, then fail "database is
  locked"); under the lock every `running` row found at start is stale (its process died) and is
  reset to `pending`;
- a row's `slot` names its logical coordinates (model, train task, size, method, hyper-parameters,
  test set, shots, format). At most one live (not `superseded`) row per slot, enforced by a unique
  index: a finished result computed with a different config is never mixed with new ones.

`synchronous=FULL`: with WAL, NORMAL already survives a killed process, but may lose the last
commits on power loss; FULL costs one fsync per commit, and a study commits a few hundred times.

Readers (`ftgen status`, `ftgen report`) open the database read-only and never take the lock.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ftgen.errors import UserError

DB_NAME = "results.sqlite"
LOCK_NAME = ".lock"
SCHEMA_VERSION = 1
STATUSES = ("pending", "running", "done", "failed", "superseded")

_COORDS = """
    model TEXT NOT NULL, train_task TEXT, train_set TEXT, size INTEGER, method TEXT,
    lr REAL, epochs INTEGER, seed INTEGER"""
_STATE = """
    status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending','running','done','failed','superseded')),
    config TEXT NOT NULL, error TEXT, attempts INTEGER NOT NULL DEFAULT 0,
    started REAL, finished REAL, seconds REAL, host TEXT"""

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    key TEXT PRIMARY KEY, slot TEXT NOT NULL,{_COORDS},{_STATE},
    model_dir TEXT, manifest TEXT, summary TEXT
);
CREATE TABLE IF NOT EXISTS cells (
    key TEXT PRIMARY KEY, slot TEXT NOT NULL, run_key TEXT,{_COORDS},
    test_task TEXT NOT NULL, test_set TEXT NOT NULL, shots INTEGER NOT NULL, fmt INTEGER NOT NULL,{_STATE},
    metric TEXT, score REAL, n INTEGER, metrics TEXT
);
CREATE TABLE IF NOT EXISTS predictions (
    cell_key TEXT PRIMARY KEY REFERENCES cells(key), rows TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS runs_live_slot ON runs(slot) WHERE status != 'superseded';
CREATE UNIQUE INDEX IF NOT EXISTS cells_live_slot ON cells(slot) WHERE status != 'superseded';
CREATE INDEX IF NOT EXISTS cells_run ON cells(run_key);
"""

RUN_COLUMNS = ("key", "slot", "model", "train_task", "train_set", "size", "method", "lr", "epochs", "seed", "config")
CELL_COLUMNS = (*RUN_COLUMNS[:2], "run_key", *RUN_COLUMNS[2:-1], "test_task", "test_set", "shots", "fmt", "config")


def db_path(out_dir: str | Path) -> Path:
    return Path(out_dir) / DB_NAME


def canonical_json(obj: object) -> str:
    """The one JSON text of a value: sorted keys, no spaces (what keys are hashed from)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


class StudyLock:
    """An exclusive, non-blocking flock on OUT/.lock, held for the whole study."""

    def __init__(self, out_dir: str | Path):
        self.path = Path(out_dir) / LOCK_NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(self._fd)
            raise UserError(
                f"{out_dir}: another ftgen study is already writing this directory ({holder}); "
                "wait for it to finish or use another --out"
            ) from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = -1


def _connect(path: Path, readonly: bool) -> sqlite3.Connection:
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None, timeout=30)
    else:
        conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    conn.row_factory = sqlite3.Row
    return conn


class Store:
    """The results database of one study directory. Use `open_writer` (the study) or `open_reader`."""

    def __init__(self, conn: sqlite3.Connection, out_dir: Path, lock: StudyLock | None = None):
        self.conn = conn
        self.out_dir = out_dir
        self.lock = lock

    # ------------------------------------------------------------------ opening

    @classmethod
    def open_writer(cls, out_dir: str | Path) -> Store:
        """Take the study lock, create the schema, and reset stale `running` rows to `pending`."""
        out_dir = Path(out_dir)
        lock = StudyLock(out_dir)
        try:
            conn = _connect(db_path(out_dir), readonly=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            store = cls(conn, out_dir, lock)
            with store.transaction():
                for stmt in SCHEMA.strip().split(";"):
                    if stmt.strip():
                        conn.execute(stmt)
                version = conn.execute("SELECT value FROM meta WHERE name='schema_version'").fetchone()
                if version is None:
                    conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
                elif int(version[0]) != SCHEMA_VERSION:
                    raise UserError(f"{db_path(out_dir)}: results store schema {version[0]}, expected {SCHEMA_VERSION}")
            store.reset_stale()
            return store
        except BaseException:
            lock.release()
            raise

    @classmethod
    def open_reader(cls, out_dir: str | Path) -> Store:
        """Read-only: works while a study writes (WAL), never takes the study lock."""
        path = db_path(out_dir)
        if not path.exists():
            raise UserError(f"{out_dir}: no study results here ({DB_NAME} not found)")
        try:
            conn = _connect(path, readonly=True)
            conn.execute("SELECT 1 FROM meta LIMIT 1").fetchall()
        except sqlite3.DatabaseError as e:
            if "no such table" in str(e):  # a study is creating it right now
                raise UserError(f"{out_dir}: no study results here yet (the store is being created)") from None
            raise UserError(f"{path}: cannot read the results store: {e}") from None
        return cls(conn, Path(out_dir))

    def close(self) -> None:
        self.conn.close()
        if self.lock is not None:
            self.lock.release()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT; rolled back on any exception."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    # ------------------------------------------------------------------ writing

    def reset_stale(self) -> int:
        """Rows left `running` by a process that died: pending again (we hold the lock, so none is live)."""
        with self.transaction() as c:
            n = c.execute("UPDATE runs SET status='pending' WHERE status='running'").rowcount
            n += c.execute("UPDATE cells SET status='pending' WHERE status='running'").rowcount
        return n

    def set_meta(self, name: str, value: str) -> None:
        with self.transaction() as c:
            c.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (name, value))

    def add(self, runs: Iterable[dict], cells: Iterable[dict]) -> None:
        """Insert planned rows as `pending`; rows already there (same key) are left as they are."""
        with self.transaction() as c:
            for table, columns, rows in (("runs", RUN_COLUMNS, runs), ("cells", CELL_COLUMNS, cells)):
                sql = (
                    f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))}) "
                    "ON CONFLICT(key) DO NOTHING"
                )
                c.executemany(sql, [tuple(r[col] for col in columns) for r in rows])

    def supersede(self, table: str, keys: Iterable[str]) -> None:
        assert table in ("runs", "cells")
        with self.transaction() as c:
            c.executemany(f"UPDATE {table} SET status='superseded' WHERE key=?", [(k,) for k in keys])

    def start(self, table: str, key: str) -> None:
        assert table in ("runs", "cells")
        with self.transaction() as c:
            c.execute(
                f"UPDATE {table} SET status='running', started=?, attempts=attempts+1, error=NULL, host=? WHERE key=?",
                (time.time(), socket.gethostname(), key),
            )

    def finish_run(self, key: str, *, model_dir: str, manifest: dict, summary: dict, seconds: float) -> None:
        with self.transaction() as c:
            c.execute(
                "UPDATE runs SET status='done', model_dir=?, manifest=?, summary=?, finished=?, seconds=? WHERE key=?",
                (model_dir, canonical_json(manifest), json.dumps(summary), time.time(), seconds, key),
            )

    def finish_cell(self, key: str, *, metrics: dict, predictions: list[dict], seconds: float) -> None:
        """The cell's done status, metrics and predictions: one transaction."""
        with self.transaction() as c:
            c.execute("INSERT OR REPLACE INTO predictions VALUES (?, ?)", (key, json.dumps(predictions)))
            c.execute(
                "UPDATE cells SET status='done', metric=?, score=?, n=?, metrics=?, finished=?, seconds=? WHERE key=?",
                (
                    metrics.get("metric"),
                    metrics.get("score"),
                    metrics.get("n"),
                    json.dumps(metrics),
                    time.time(),
                    seconds,
                    key,
                ),
            )

    def fail(self, table: str, key: str, error: str) -> None:
        assert table in ("runs", "cells")
        with self.transaction() as c:
            c.execute(f"UPDATE {table} SET status='failed', error=?, finished=? WHERE key=?", (error, time.time(), key))

    def reopen_run(self, key: str) -> None:
        """A done run whose model files no longer match their manifest: train it again."""
        with self.transaction() as c:
            c.execute("UPDATE runs SET status='pending', manifest=NULL, summary=NULL WHERE key=?", (key,))

    # ------------------------------------------------------------------ reading

    def rows(self, table: str, where: str = "", params: tuple = ()) -> list[dict]:
        assert table in ("runs", "cells", "predictions", "meta")
        sql = f"SELECT * FROM {table}" + (f" WHERE {where}" if where else "") + " ORDER BY rowid"
        return [dict(r) for r in self.conn.execute(sql, params)]

    def get(self, table: str, key: str) -> dict | None:
        rows = self.rows(table, "key=?", (key,))
        return rows[0] if rows else None

    def live_by_slot(self, table: str) -> dict[str, dict]:
        return {r["slot"]: r for r in self.rows(table, "status != 'superseded'")}

    def predictions(self, cell_key: str) -> list[dict] | None:
        row = self.conn.execute("SELECT rows FROM predictions WHERE cell_key=?", (cell_key,)).fetchone()
        return json.loads(row[0]) if row else None

    def counts(self) -> dict[str, dict[str, int]]:
        out = {}
        for table in ("runs", "cells"):
            got = dict(self.conn.execute(f"SELECT status, COUNT(*) FROM {table} GROUP BY status").fetchall())
            out[table] = {s: got.get(s, 0) for s in STATUSES}
        return out

    def check(self) -> list[str]:
        """Integrity problems of the database (empty = sound): SQLite's own check, then the store's invariants."""
        c = self.conn
        problems = [f"sqlite integrity_check: {r[0]}" for r in c.execute("PRAGMA integrity_check") if r[0] != "ok"]
        problems += [
            f"predictions of an unknown cell {r[0]}"
            for r in c.execute("SELECT cell_key FROM predictions WHERE cell_key NOT IN (SELECT key FROM cells)")
        ]
        for table in ("runs", "cells"):
            for slot, n in c.execute(
                f"SELECT slot, COUNT(*) FROM {table} WHERE status != 'superseded' GROUP BY slot HAVING COUNT(*) > 1"
            ):
                problems.append(f"{table}: {n} live rows for one slot: {slot}")
        for key, score, n, metrics, preds in c.execute(
            "SELECT c.key, c.score, c.n, c.metrics, p.rows FROM cells c LEFT JOIN predictions p ON p.cell_key = c.key "
            "WHERE c.status = 'done'"
        ):
            if preds is None or score is None or metrics is None:
                problems.append(f"cell {key}: done without its score, metrics or predictions")
            elif len(json.loads(preds)) != n:
                problems.append(f"cell {key}: {len(json.loads(preds))} predictions for n={n}")
        problems += [
            f"cell {r[0]}: its training run {r[1]} is not in the store"
            for r in c.execute(
                "SELECT key, run_key FROM cells WHERE run_key IS NOT NULL AND run_key NOT IN (SELECT key FROM runs)"
            )
        ]
        for key, summary, manifest in c.execute("SELECT key, summary, manifest FROM runs WHERE status = 'done'"):
            if summary is None or manifest is None:
                problems.append(f"run {key}: done without its summary or manifest")
        return problems

    def meta(self) -> dict[str, str]:
        return {r["name"]: r["value"] for r in self.rows("meta")}
