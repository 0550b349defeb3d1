"""A study's results store read once for the report: its rows, the per-record values of every done cell, the
task definitions stored with them, and its training runs.

Scores are recomputed here from each done cell's stored predictions with the current metric definitions
(`SCORING`), so a store written by an older ftgen reads as a new one does; the stored score is kept beside
(`stored_score`) and the report says how many differ. Each done cell also gets its degenerate-output flags
(ftgen.stats): for a classification cell the majority-class rate and predicted-label shares, for a generation
cell the shares of empty outputs and of outputs that are just a label word of one of the study's
classification tasks.

The task definition of a cell and of a run is the one stored with it (each unit's config in the store holds its
`task_def`), so the report groups a run's test sets by the definition it was trained under; a store without it
falls back to the task's current definition.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ftgen import stats, study_files
from ftgen.errors import UserError
from ftgen.metrics import first_paragraph
from ftgen.store import RUN_COORDS, Store

SCORING = {
    "accuracy": "accuracy: the predicted label word equals the gold label",
    "rouge_l": "Rouge-L: F1 of rouge-score's sentence-level rougeL on the first paragraph of the output, without "
    "stemming (the paper's: Hugging Face evaluate's default)",
    "bleu": "BLEU: sacrebleu's corpus BLEU (13a tokenization) on the first paragraph of the output",
}


@dataclass(frozen=True)
class Row:
    """The model of one store row: a base model (run_key None) or one training run."""

    model: str
    run_key: str | None
    train_task: str | None
    train_set: str | None
    size: int | None
    method: str
    lr: float | None
    epochs: float | None
    seed: int | None


def row_of(r: dict) -> Row:
    """The Row of a `cells` or `runs` record (a base-model cell has run_key None)."""
    return Row(run_key=r["run_key"] if "run_key" in r else r["key"], **{c: r[c] for c in RUN_COORDS})


@dataclass(frozen=True, order=True)
class TestSet:
    __test__ = False  # not a pytest test class

    task: str
    name: str

    @property
    def label(self) -> str:
        return f"{self.task}/{self.name}"


@dataclass
class CellData:
    """One live cell of the store; `records` and `flags` are set when it is done and its predictions score."""

    key: str
    row: Row
    test: TestSet
    shots: int
    fmt: int
    status: str
    config: dict
    metric: str | None = None
    stored_score: float | None = None
    records: stats.Records | None = None
    flags: stats.ClassificationFlags | stats.GenerationFlags | None = None
    label_words: stats.Records | None = None  # generation: per record 100 if the output is a bare label word
    n_dropped: int = 0  # raw records not scored: invalid, or a gold label meaning "none" (MultiNLI's '-')
    environment: dict | None = None
    problem: str | None = None  # why a done cell has no per-record values

    @property
    def done(self) -> bool:
        return self.status == "done" and self.records is not None

    @property
    def score(self) -> float | None:
        return self.records.score() if self.records is not None else None


@dataclass
class RunData:
    key: str
    row: Row
    status: str
    config: dict  # the run's stored identity: {"train": TrainConfig result fields, "task_def": ...}
    summary: dict = field(default_factory=dict)
    run_dir: Path | None = None
    seconds: float | None = None
    manifest: dict = field(default_factory=dict)  # sha256 of each file of the saved model

    @property
    def train(self) -> dict:
        return self.config.get("train") or {}


def _json(text: str | None, default):
    try:
        value = json.loads(text) if text else default
    except ValueError:
        return default
    return value if isinstance(value, type(default)) else default


UNREADABLE = "unreadable"


def _predictions(store: Store, key: str) -> list | str | None:
    """A cell's stored predictions; UNREADABLE when the row is not JSON (a damaged store: the cell is marked,
    the report goes on; `ftgen status --check` names it)."""
    try:
        return store.predictions(key)
    except ValueError:
        return UNREADABLE


class StudyView:
    """Everything the report reads from a study's store, read-only (safe while the study runs)."""

    def __init__(self, out: str | Path):
        self.out = Path(out)
        with Store.open_reader(out) as store, store.readable():
            self.meta = store.meta()
            self.counts = store.counts()
            cell_rows = store.rows("cells", "status != 'superseded'")
            run_rows = store.rows("runs", "status != 'superseded'")
            predictions = {r["key"]: _predictions(store, r["key"]) for r in cell_rows if r["status"] == "done"}
        self.name = self.meta.get("study", self.out.name)
        started = [r["started"] for r in [*cell_rows, *run_rows] if r["started"]]
        finished = [r["finished"] for r in [*cell_rows, *run_rows] if r["finished"] and r["status"] == "done"]
        self.ran = (min(started, default=None), max(finished, default=None))  # unix times: first start, last finish
        self.config = _json(self.meta.get("config"), {})
        self.runs = {r["key"]: self._run(r) for r in run_rows}
        self.cells = [
            CellData(
                r["key"],
                row_of(r),
                TestSet(r["test_task"], r["test_set"]),
                r["shots"],
                r["fmt"],
                r["status"],
                _json(r["config"], {}),
            )
            for r in cell_rows
        ]
        self.task_defs = self._task_defs()
        self.label_words = sorted(
            {w for t in self.task_defs.values() if t.get("kind") == "classification" for w in t.get("labels", [])}
        )
        by_key = {r["key"]: r for r in cell_rows}
        for c in self.cells:
            if c.status == "done":
                self._score(c, by_key[c.key], predictions.get(c.key))

    def _run(self, r: dict) -> RunData:
        run_dir = study_files.run_dir(self.out, r)  # its loss.jsonl; readable names (runs/<key> in old studies)
        config, summary, manifest = (_json(r[k], {}) for k in ("config", "summary", "manifest"))
        return RunData(r["key"], row_of(r), r["status"], config, summary, run_dir, r["seconds"], manifest)

    def _task_defs(self) -> dict[str, dict]:
        """Task name -> its stored definition (the most recent unit's); the current one where none is stored."""
        defs: dict[str, dict] = {}
        for unit in [*self.runs.values(), *self.cells]:
            if isinstance(unit.config.get("task_def"), dict):
                defs[unit.config["task_def"].get("name")] = unit.config["task_def"]
        names = {c.test.task for c in self.cells} | {r.row.train_task for r in self.runs.values()}
        missing = sorted(n for n in names if n and n not in defs)
        if missing:
            from ftgen.tasks import all_tasks

            try:
                known = all_tasks(self.config.get("task_dirs") or [])
            except UserError:
                known = all_tasks()
            defs |= {n: known[n][0].model_dump() for n in missing if n in known}
        return defs

    def task_def(self, name: str | None) -> dict:
        return self.task_defs.get(name, {}) if name else {}

    def run_task_def(self, run_key: str) -> dict:
        """The task definition a run was trained under (stored with it), else the task's current one."""
        run = self.runs.get(run_key)
        if run is None:
            return {}
        if run.config.get("unit") == "interpolate" and run.config.get("of") in self.runs:
            return self.run_task_def(run.config["of"])  # an interpolated model: the definition its run trained under
        stored = run.config.get("task_def")
        return stored if isinstance(stored, dict) else self.task_def(run.row.train_task)

    def _score(self, c: CellData, row: dict, predictions: list | None) -> None:
        """Per-record values, flags and provenance of a done cell, from its stored predictions."""
        metrics = _json(row["metrics"], {})
        task = self.task_def(c.test.task) or {"kind": "classification" if row["metric"] == "accuracy" else None}
        c.metric, c.stored_score = row["metric"], row["score"]
        data = metrics.get("data") or {}
        c.n_dropped = int(data.get("invalid") or 0) + int(data.get("ignored") or 0)
        c.environment = metrics.get("environment")
        if predictions == UNREADABLE or not isinstance(predictions, (list, type(None))):
            c.problem = "its stored predictions are not readable (see ftgen status --check): no interval, no flags"
            return
        usable = [p for p in predictions or [] if isinstance(p, dict) and {"id", "prediction", "gold"} <= set(p)]
        if not usable or len(usable) != len(predictions or []):
            c.problem = "no per-record predictions stored: no interval, no flags"
            return
        ids = [p["id"] for p in usable]
        preds = [str(p["prediction"]) for p in usable]
        golds = [str(p["gold"]) for p in usable]
        try:
            c.records = stats.cell_records(task.get("kind"), c.metric, ids, preds, golds, bool(task.get("rouge_stem")))
        except ValueError as e:
            c.problem = f"predictions not scorable: {e}"
            return
        if task.get("kind") == "classification":
            c.flags = stats.classification_flags(preds, golds, task.get("labels") or sorted(set(golds)))
        else:
            outputs = [str(p.get("generated", p["prediction"])) for p in usable]
            c.flags = stats.generation_flags(outputs, self.label_words)
            words = {stats.normalize_words(w) for w in self.label_words}
            bare = [stats.normalize_words(first_paragraph(o)) in words for o in outputs]
            c.label_words = stats.Records(tuple(ids), [100.0 * b for b in bare])

    # ------------------------------------------------------------------ what the study covers

    @property
    def complete(self) -> bool:
        live = {t: sum(v for s, v in c.items() if s != "superseded") for t, c in self.counts.items()}
        return all(self.counts[t]["done"] == live[t] for t in ("runs", "cells"))

    def banner(self) -> str | None:
        """`INCOMPLETE: 52 of 80 cells done (...)`, or None for a finished study."""
        if self.complete:
            return None
        cells, runs = self.counts["cells"], self.counts["runs"]
        total = sum(v for s, v in cells.items() if s != "superseded")
        run_total = sum(v for s, v in runs.items() if s != "superseded")
        open_cells = cells["pending"] + cells["running"]
        return (
            f"INCOMPLETE: {cells['done']} of {total} cells done ({cells['failed']} failed, {open_cells} not run yet); "
            f"{runs['done']} of {run_total} training runs done. Means over missing cells are left blank."
        )

    def recomputed_differences(self, tolerance: float = 1e-6) -> int:
        """How many done cells score otherwise under the current metric definitions than when they were stored."""
        return sum(
            1 for c in self.cells if c.done and c.stored_score is not None and abs(c.score - c.stored_score) > tolerance
        )
