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

Readers (`ftgen status`, `ftgen report`) open the database read-only and never take the lock. Whether a study
is writing is decided by the lock itself (`lock_holder`: a non-blocking shared flock), never by the pid written
in it (a dead study's pid may belong to another process by now). A damaged store (garbage in the file, a row
that is not JSON, a done cell without its score) never gives a traceback: `check` lists each problem in one
line, and readers that cannot go on refuse in one line.

The study directory also holds one folder per training run, named for people, the model manifests and the
leftovers of killed writes (ftgen.study_files). A study from before readable run names holds `runs/<key>/`:
`name_run_dirs` renames them when a study starts. A study with `keep_models: false` deletes a model once its
cells are done: the run stays done, its row records when (`model_deleted`).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sqlite3
import stat
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from ftgen.errors import UserError, one_line
from ftgen.files import WRITE_ERRNOS, write_error_line
from ftgen.study_files import leftovers, manifest, remove_leftovers, run_dir, run_dir_name  # noqa: F401 (re-exported)

DB_NAME = "results.sqlite"
LOCK_NAME = ".lock"
SCHEMA_VERSION = 1
STATUSES = ("pending", "running", "done", "failed", "superseded")

# A row's coordinates in the grid, spelled once (with their SQL types): the schema, the plan's rows (ftgen.plan)
# and the report's rows (ftgen.report) use these names. A base-model cell has method 'base' and no train_* /
# hyper-parameter coordinates.
_RUN_COORD_TYPES = {
    "model": "TEXT NOT NULL",
    "train_task": "TEXT",
    "train_set": "TEXT",
    "size": "INTEGER",
    "method": "TEXT",
    "lr": "REAL",
    "epochs": "INTEGER",
    "seed": "INTEGER",
}
_CELL_COORD_TYPES = {
    "test_task": "TEXT NOT NULL",
    "test_set": "TEXT NOT NULL",
    "shots": "INTEGER NOT NULL",
    "fmt": "INTEGER NOT NULL",
}
RUN_COORDS = tuple(_RUN_COORD_TYPES)
CELL_COORDS = tuple(_CELL_COORD_TYPES)  # a cell's own, after the RUN_COORDS of its model
_RUN_COORD_SQL = ", ".join(f"{c} {t}" for c, t in _RUN_COORD_TYPES.items())
_CELL_COORD_SQL = ", ".join(f"{c} {t}" for c, t in _CELL_COORD_TYPES.items())
_STATE = """
    status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending','running','done','failed','superseded')),
    config TEXT NOT NULL, error TEXT, attempts INTEGER NOT NULL DEFAULT 0,
    started REAL, finished REAL, seconds REAL, host TEXT"""

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    key TEXT PRIMARY KEY, slot TEXT NOT NULL, {_RUN_COORD_SQL},{_STATE},
    model_dir TEXT, manifest TEXT, summary TEXT, model_deleted REAL
);
CREATE TABLE IF NOT EXISTS cells (
    key TEXT PRIMARY KEY, slot TEXT NOT NULL, run_key TEXT, {_RUN_COORD_SQL},
    {_CELL_COORD_SQL},{_STATE},
    metric TEXT, score REAL, n INTEGER, metrics TEXT
);
CREATE TABLE IF NOT EXISTS predictions (
    cell_key TEXT PRIMARY KEY REFERENCES cells(key), rows TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS runs_live_slot ON runs(slot) WHERE status != 'superseded';
CREATE UNIQUE INDEX IF NOT EXISTS cells_live_slot ON cells(slot) WHERE status != 'superseded';
CREATE INDEX IF NOT EXISTS cells_run ON cells(run_key);
"""

# Columns added after SCHEMA_VERSION 1 was released: added to older stores when a study opens them.
ADDED_COLUMNS = {"runs": {"model_deleted": "REAL"}}

RUN_COLUMNS = ("key", "slot", *RUN_COORDS, "config")
CELL_COLUMNS = ("key", "slot", "run_key", *RUN_COORDS, *CELL_COORDS, "config")


def db_path(out_dir: str | Path) -> Path:
    return Path(out_dir) / DB_NAME


def canonical_json(obj: object) -> str:
    """The one JSON text of a value: sorted keys, no spaces (what keys are hashed from)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return name
    return "not a regular file"


def _open_lock(path: Path, flags: int) -> int:
    """A descriptor of OUT/.lock; anything there but a regular file is one UserError line (never opened:
    a FIFO would block)."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        mode = stat.S_IFREG
    if not stat.S_ISREG(mode):
        raise UserError(f"{path}: {_kind(mode)}, not ftgen's study lock file: remove it")
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
    except OSError as e:
        if e.errno in WRITE_ERRNOS:  # the place cannot take the study: the CLI's one line for unwritable places
            raise
        raise UserError(f"{path}: cannot open the study lock file: {e.strerror}") from None


def _try_flock(fd: int, kind: int, tries: int) -> bool:
    """A non-blocking flock, tried a few times: a reader's probe holds a shared lock for microseconds."""
    for attempt in range(tries):
        try:
            fcntl.flock(fd, kind | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if attempt + 1 < tries:
                time.sleep(0.05)
    return False


def _lock_text(fd: int) -> str:
    return os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"


def lock_holder(out_dir: str | Path) -> str | None:
    """'pid N on HOST' of the study process writing `out_dir` now, or None: decided by the lock itself."""
    path = Path(out_dir) / LOCK_NAME
    if not os.path.lexists(path):
        return None
    fd = _open_lock(path, os.O_RDONLY)
    try:
        if _try_flock(fd, fcntl.LOCK_SH, tries=1):
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        return _lock_text(fd)
    finally:
        os.close(fd)


class StudyLock:
    """An exclusive, non-blocking flock on OUT/.lock, held for the whole study."""

    def __init__(self, out_dir: str | Path):
        self.path = Path(out_dir) / LOCK_NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = _open_lock(self.path, os.O_RDWR | os.O_CREAT)
        if not _try_flock(self._fd, fcntl.LOCK_EX, tries=5):
            holder = _lock_text(self._fd)
            os.close(self._fd)
            raise UserError(
                f"{out_dir}: another ftgen study is already writing this directory ({holder}); "
                "wait for it to finish or use another --out"
            )
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = -1


def _connect(path: Path, readonly: bool) -> sqlite3.Connection:
    if readonly:  # a URI: the path percent-encoded, so '#', '?' and '%' in a directory name stay in the path
        uri = path.absolute().as_uri() + "?mode=ro"
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=30)
    else:
        conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    conn.row_factory = sqlite3.Row
    return conn


def _damaged(path: Path, err: sqlite3.DatabaseError) -> UserError:
    return UserError(one_line(f"{path}: the results store is damaged ({err}); ftgen status --check lists its problems"))


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
            store = cls(conn, out_dir, lock)
            store._create_schema()
            store.reset_stale()
            return store
        except sqlite3.DatabaseError as e:
            lock.release()
            if write_error_line(e):  # a full disk or an unwritable place: the CLI says so in one line
                raise
            raise _damaged(db_path(out_dir), e) from None
        except BaseException:
            lock.release()
            raise

    def _create_schema(self) -> None:
        conn = self.conn
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        with self.transaction():
            for stmt in SCHEMA.strip().split(";"):
                if stmt.strip():
                    conn.execute(stmt)
            version = conn.execute("SELECT value FROM meta WHERE name='schema_version'").fetchone()
            if version is None:
                conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            elif version[0] != str(SCHEMA_VERSION):
                raise UserError(f"{self.path}: results store schema {version[0]}, expected {SCHEMA_VERSION}")
            for table, columns in ADDED_COLUMNS.items():
                have = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
                for name, kind in columns.items():
                    if name not in have:
                        conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")

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
            raise UserError(one_line(f"{path}: cannot read the results store: {e}")) from None
        return cls(conn, Path(out_dir))

    @property
    def path(self) -> Path:
        return db_path(self.out_dir)

    @contextmanager
    def readable(self) -> Iterator[None]:
        """Reads of a damaged database become one UserError line, not a traceback."""
        try:
            yield
        except sqlite3.DatabaseError as e:
            raise _damaged(self.path, e) from None

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
        """A run done: `model_dir` relative to the study directory (it may move)."""
        with self.transaction() as c:
            c.execute(
                "UPDATE runs SET status='done', model_dir=?, manifest=?, summary=?, finished=?, seconds=?, "
                "model_deleted=NULL WHERE key=?",
                (model_dir, canonical_json(manifest), json.dumps(summary), time.time(), seconds, key),
            )

    def mark_model_deleted(self, key: str) -> None:
        """keep_models: false: the run's model is about to be deleted; the run stays done. Recorded first, so a
        kill before the files are gone leaves a model that the next start deletes, never a 'missing' one."""
        with self.transaction() as c:
            c.execute("UPDATE runs SET model_deleted=? WHERE key=? AND status='done'", (time.time(), key))

    def name_run_dirs(self) -> int:
        """Rename the run directories of a study from before readable names (`runs/<key>`) to their readable
        names, and record the new model paths. Under the study lock; a kill halfway leaves each directory under
        one name or the other, and `run_dir` finds either."""
        renamed = 0
        for row in self.rows("runs"):
            legacy = self.out_dir / "runs" / row["key"]
            named = self.out_dir / "runs" / run_dir_name(row, row["key"])
            if legacy.is_dir() and not named.exists():
                os.replace(legacy, named)
                renamed += 1
            model_dir = str(named.relative_to(self.out_dir) / "model")
            if row["model_dir"] not in (None, model_dir) and named.is_dir():
                with self.transaction() as c:
                    c.execute("UPDATE runs SET model_dir=? WHERE key=?", (model_dir, row["key"]))
        return renamed

    def trained_runs(self) -> set[str]:
        """Keys of the runs done whose model was kept."""
        return {r["key"] for r in self.rows("runs", "status='done'") if not r.get("model_deleted")}

    def run_dir(self, row: Mapping) -> Path:
        """The directory of a run (a store row, or anything with its key and RUN_COORDS)."""
        return run_dir(self.out_dir, row)

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
            c.execute(
                "UPDATE runs SET status='pending', manifest=NULL, summary=NULL, model_deleted=NULL WHERE key=?", (key,)
            )

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

    # ------------------------------------------------------------------ status and check (`ftgen status`)

    def status(self) -> dict:
        """Counts per status, the running and failed units, the compute time of done units, the writer."""
        with self.readable():
            counts = self.counts()
            running = [r["slot"] for t in ("runs", "cells") for r in self.rows(t, "status='running'")]
            failed = [(r["slot"], r["error"]) for t in ("runs", "cells") for r in self.rows(t, "status='failed'")]
            seconds = sum(
                self.conn.execute(f"SELECT COALESCE(SUM(seconds), 0) FROM {t} WHERE status='done'").fetchone()[0]
                for t in ("runs", "cells")
            )
            name = self.meta().get("study", "?")
        return {
            "writer": lock_holder(self.out_dir),
            "name": name,
            "counts": counts,
            "running": running,
            "failed": failed,
            "compute_s": seconds,
        }

    def check(self) -> dict:
        """`ftgen status --check`: problems (the study is not sound: the database, its rows, the saved models
        against their manifests), notes (harmless: redone or cleaned on the next run), runs checked."""
        problems = self.problems(full=True)
        runs: list[dict] = []
        running = 0
        try:
            runs = [r for r in self.rows("runs", "status = 'done'") if _is_json(r["manifest"], dict)]
            running = sum(self.counts()[t]["running"] for t in ("runs", "cells"))
        except sqlite3.DatabaseError:
            pass  # a damaged file: problems() says so
        deleted = [r for r in runs if r.get("model_deleted")]  # keep_models: false: gone on purpose
        kept = [r for r in runs if not r.get("model_deleted")]
        problems += [p for r in kept if (p := self._model_problem(r))]
        notes = []
        if deleted:
            notes.append(f"{len(deleted)} trained models deleted once their cells were done (keep_models: false)")
        if running and not lock_holder(self.out_dir):
            notes.append(f"{running} units left 'running' by a study that died: redone on the next run")
        if found := leftovers(self.out_dir):
            notes.append(f"{len(found)} temp files of interrupted writes (hidden; removed on the next run)")
        return {"problems": [one_line(p) for p in problems], "notes": notes, "runs_checked": len(kept)}

    def require_sound(self) -> None:
        """For readers that use every finished row (the report): one UserError line if the store is damaged."""
        problems = self.problems(full=False)
        if problems:
            more = f" and {len(problems) - 1} more" if len(problems) > 1 else ""
            raise UserError(
                one_line(f"{self.path}: the results store is damaged: {problems[0]}{more}; see ftgen status --check")
            )

    def problems(self, full: bool = True) -> list[str]:
        """Integrity problems of the database (empty = sound): SQLite's own check, then the store's invariants.
        `full=False`: SQLite's quick check and what a report reads (scores, metrics, configs, summaries)."""
        checks = [self._sqlite_problems, self._result_problems]
        if full:
            checks += [self._invariant_problems, self._prediction_problems]
        problems: list[str] = []
        for check in checks:
            try:
                problems += check(full)
            except sqlite3.DatabaseError as e:  # the file itself is damaged: nothing further can be read
                return problems + [f"sqlite: {e}"]
        return problems

    def _sqlite_problems(self, full: bool) -> list[str]:
        pragma = "integrity_check" if full else "quick_check"
        return [f"sqlite {pragma}: {r[0]}" for r in self.conn.execute(f"PRAGMA {pragma}") if r[0] != "ok"]

    def _result_problems(self, full: bool) -> list[str]:
        """Done cells with a score and metrics, live runs with a readable config (and summary when done)."""
        problems = []
        sql = "SELECT key, score, metrics FROM cells WHERE status = 'done'"
        for key, score, metrics in self.conn.execute(sql):
            if not isinstance(score, (int, float)) or not _is_json(metrics, dict):
                problems.append(f"cell {key}: done without its score or readable metrics")
        sql = "SELECT key, status, config, summary, manifest FROM runs WHERE status != 'superseded'"
        for key, status, config, summary, files in self.conn.execute(sql):
            if not _is_json(config, dict):
                problems.append(f"run {key}: its config is not readable JSON")
            if status == "done" and not (_is_json(summary, dict) and _is_json(files, dict)):
                problems.append(f"run {key}: done without a readable summary or manifest")
        return problems

    def _invariant_problems(self, full: bool) -> list[str]:
        c = self.conn
        problems = [
            f"predictions of an unknown cell {r[0]}"
            for r in c.execute("SELECT cell_key FROM predictions WHERE cell_key NOT IN (SELECT key FROM cells)")
        ]
        for table in ("runs", "cells"):
            for slot, n in c.execute(
                f"SELECT slot, COUNT(*) FROM {table} WHERE status != 'superseded' GROUP BY slot HAVING COUNT(*) > 1"
            ):
                problems.append(f"{table}: {n} live rows for one slot: {slot}")
        problems += [
            f"cell {r[0]}: its training run {r[1]} is not in the store"
            for r in c.execute(
                "SELECT key, run_key FROM cells WHERE run_key IS NOT NULL AND run_key NOT IN (SELECT key FROM runs)"
            )
        ]
        return problems

    def _prediction_problems(self, full: bool) -> list[str]:
        problems = []
        sql = "SELECT c.key, c.n, p.rows FROM cells c LEFT JOIN predictions p ON p.cell_key = c.key"
        sql += " WHERE c.status = 'done'"
        for key, n, rows in self.conn.execute(sql):
            if rows is None:
                problems.append(f"cell {key}: done without its predictions")
            elif not _is_json(rows, list):
                problems.append(f"cell {key}: its predictions are not readable JSON")
            elif len(json.loads(rows)) != n:
                problems.append(f"cell {key}: {len(json.loads(rows))} predictions for n={n}")
        return problems

    def _model_problem(self, run: dict) -> str | None:
        """A done run's saved model: present, and its files as recorded when it finished."""
        model_dir = self.run_dir(run) / "model"  # not run["model_dir"]: the study may have moved
        if not model_dir.is_dir():
            return f"run {run['slot']}: done, but its model {model_dir} is missing"
        if manifest(model_dir) != json.loads(run["manifest"]):
            return f"run {run['slot']}: the files of {model_dir} differ from those recorded when it finished"
        return None

    def meta(self) -> dict[str, str]:
        return {r["name"]: r["value"] for r in self.rows("meta")}


def _is_json(text: object, kind: type) -> bool:
    try:
        return isinstance(text, str) and isinstance(json.loads(text), kind)
    except ValueError:
        return False
