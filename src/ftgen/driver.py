"""The driver of a study: hands the plan's unfinished units to an executor and records each result.

It is the one writer of the results store. Order: the base models' cells first, then every training run;
a run's cells are submitted once its model exists (right away for a run done earlier, after its training
otherwise). A done run whose saved model no longer matches its manifest is trained again before its cells.
A failed run fails its pending cells; the study goes on with the rest.

Interpolated models (plan.InterpolationSpec, `interpolate` in the study's methods) are run-like units too: each
is built (kind "train", an InterpolateJob) once the model of the run it interpolates is there, then its cells
follow like a trained run's. A trained run's model is kept until its interpolations are built as well; one
deleted before (keep_models: false) is trained again when a new interpolation needs it.

    Driver(plan, store, executor).run()      # -> counts; `finished` holds the keys done this time
    Driver(plan, store, executor, selected=keys)   # only these units (`ftgen study --only`); the rest stay pending

Each run's files go to its readable directory (ftgen.store.run_dir). With `keep_models: false` a run's model
is deleted once every cell and interpolation of the run (in the whole plan, not only the selected part) is done;
its drift was measured with the training. A later plan that needs it again (a new test set, say) trains it again.

The executor (ftgen.executors) decides where units run and holds the unit bodies (ftgen.units.Units, or
stand-ins in tests).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from ftgen import progress
from ftgen.errors import UserError
from ftgen.plan import CellSpec, InterpolationSpec, Plan, RunSpec
from ftgen.progress import score_text
from ftgen.store import Store, manifest
from ftgen.units import DriftSpec, EvalJob, InterpolateJob, TrainJob, attention_spec


def error_line(err: BaseException) -> str:
    """A failed unit's error in one line (the store's `error` column, the log)."""
    cause = getattr(err, "cause", None) or err  # Ray wraps the task's exception
    text = f"{type(cause).__name__}: {cause}" if not isinstance(cause, UserError) else str(cause)
    return (text.strip().splitlines() or [type(cause).__name__])[0][:500]


class Driver:
    """Runs every unit of `plan` not done in `store` on `executor`; records results as they come."""

    def __init__(self, plan: Plan, store: Store, executor: Any, selected: set[str] | None = None):
        self.plan, self.store, self.executor = plan, store, executor
        self.runs_dir = store.out_dir / "runs"
        self.status = {r["key"]: r["status"] for t in ("runs", "cells") for r in store.rows(t)}
        self.selected = selected
        self.todo_cells = {c.key for c in plan.cells if self.status[c.key] != "done" and self.wanted(c.key)}
        todo_runs = [r for r in plan.runs if self.status[r.key] != "done" and self.wanted(r.key)]
        self.total = len(todo_runs) + len(self.todo_cells)
        self.jobs: dict[int, RunSpec | CellSpec] = {}
        self.counts: Counter = Counter()
        self.finished: set[str] = set()  # keys of the units done by this driver
        self.building: set[str] = set()  # runs (trained or interpolated) submitted and not finished
        self.waiting: dict[str, list[InterpolationSpec]] = {}  # trained run key -> interpolations waiting for it
        self.intact: dict[str, bool] = {}  # model_intact of done runs, hashed once
        # a unit is `running` from when the executor starts it (local) or hands it to the cluster (ray)
        executor.on_start = lambda kind, job: store.start("runs" if kind == "train" else "cells", job.key)

    def run(self) -> dict:
        """Run until no unit is left; returns counts ("runs done", "cells failed", ...)."""
        self.t_start = time.perf_counter()
        self.bar = progress.bar(total=self.total, desc="study", unit="unit")
        try:
            self.submit_all()
            while self.executor.pending():
                handle, result, error = self.executor.next_done()
                spec = self.jobs.pop(handle)
                if isinstance(spec, RunSpec):
                    self.run_done(spec, result, error)
                else:
                    self.cell_done(spec, result, error)
        finally:
            self.bar.close()
        return dict(self.counts)

    # ------------------------------------------------------------------ submitting

    def wanted(self, key: str) -> bool:
        return self.selected is None or key in self.selected

    def run_dir(self, run: RunSpec) -> Path:
        return self.store.run_dir(run.row())

    def model_dir(self, run: RunSpec) -> Path:
        return (self.run_dir(run) / "model").absolute()  # not the stored model_dir: the study may have moved

    def submit_all(self) -> None:
        for model in self.plan.cfg.models:
            self.submit_cells(self.plan.cells_of(None, model), model)
        for run in self.plan.runs:
            row = self.store.get("runs", run.key)
            pending = [c for c in self.plan.cells_of(run.key) if c.key in self.todo_cells]
            pending += self.open_interpolations(run)  # they read its model too
            if row["status"] != "done":
                if self.wanted(run.key):
                    self.submit_train(run)
            elif pending and not self.model_intact(run):
                self.rebuild(run, len(pending))
            elif pending:
                self.submit_cells(pending, str(self.model_dir(run)))  # (its interpolations come in their turn)
            elif not self.plan.cfg.keep_models and self.model_dir(run).exists():
                self.drop_model(run)  # its cells were done before a kill let it delete the model

    def model_intact(self, run: RunSpec) -> bool:
        """The saved model of a done run is there, with the files recorded when it finished."""
        if run.key not in self.intact:  # hashed once per driver: a model is read by many units
            self.intact[run.key] = manifest(self.model_dir(run)) == _json(self.store.get("runs", run.key)["manifest"])
        return self.intact[run.key]

    def rebuild(self, run: RunSpec, units: int) -> None:
        """A done run whose model was deleted or changed: trained (or interpolated) again for `units` units."""
        row = self.store.get("runs", run.key)
        why = "was deleted (keep_models: false)" if row.get("model_deleted") else "changed on disk"
        progress.log(f"study: the saved model of {run.dir_name} {why}: building it again for {units} units")
        self.store.reopen_run(run.key)
        self.status[run.key] = "pending"
        self.intact.pop(run.key, None)
        self.remove(self.run_dir(run), run.key)
        self.bar.total += 1
        self.submit_train(run)

    def remove(self, path: Path, key: str) -> None:
        """Delete a directory: renamed first, so a kill mid-delete leaves a hidden leftover, never half of it."""
        if not path.exists():
            return
        trash = self.runs_dir / f".trash-{key}"
        shutil.rmtree(trash, ignore_errors=True)
        os.replace(path, trash)
        shutil.rmtree(trash, ignore_errors=True)

    def drop_model(self, run: RunSpec) -> None:
        """keep_models: false: the run's model (and any checkpoints) go; its summary, logs and drift stay."""
        self.store.mark_model_deleted(run.key)
        for name in ("model", "checkpoints"):
            self.remove(self.run_dir(run) / name, run.key)

    def is_done(self, key: str) -> bool:
        return self.status[key] == "done" or key in self.finished

    def all_cells_done(self, run: RunSpec) -> bool:
        """No unit left that reads the run's model: its cells, and the interpolations built from it."""
        users = [*self.plan.cells_of(run.key), *self.plan.interpolations_of(run.key)]
        return all(self.is_done(u.key) for u in users)

    def open_interpolations(self, run: RunSpec) -> list[InterpolationSpec]:
        """The interpolations of a trained run that this driver still has to build."""
        return [i for i in self.plan.interpolations_of(run.key) if not self.is_done(i.key) and self.wanted(i.key)]

    def submit_cells(self, cells: list[CellSpec], model_path: str) -> None:
        cfg = self.plan.cfg
        for c in cells:
            if isinstance(c, InterpolationSpec):
                continue  # submitted by submit_all / run_done, once its trained run is there
            if c.key in self.todo_cells:
                desc = f"{c.test_task}/{c.test_set} {c.shots}-shot"
                data_dir = str(self.plan.resolved.data_dir)
                job = EvalJob(c.key, model_path, c.params, data_dir, tuple(cfg.task_dirs), desc, base=c.run is None)
                self.jobs[self.executor.submit("eval", job)] = c

    def submit_train(self, run: RunSpec) -> None:
        if isinstance(run, InterpolationSpec):
            return self.submit_interpolation(run)
        self.building.add(run.key)
        cfg = self.plan.cfg
        drift = None
        if cfg.analysis.drift:
            drift = DriftSpec(run.model, tuple(self.plan.resolved.tasks), cfg.analysis.probe_records)
        attention = None
        if cfg.analysis.attention:
            records = cfg.analysis.attention_records
            attention = attention_spec(self.plan.resolved, run.model, run.train_task, run.train_set, records)
        job = TrainJob(run.key, run.config, str(self.run_dir(run)), cfg.threads, drift, attention)
        self.jobs[self.executor.submit("train", job)] = run

    def submit_interpolation(self, run: InterpolationSpec) -> None:
        """Build θ(α) now if its trained run's model is there, else once that run finishes (run_done)."""
        tuned = run.of
        if tuned.key not in self.building and tuned.key not in self.finished and self.is_done(tuned.key):
            if not self.model_intact(tuned):  # deleted once its units were done; an interpolation needs it again
                self.rebuild(tuned, 1)
        if tuned.key in self.building or not self.is_done(tuned.key):
            self.waiting.setdefault(tuned.key, []).append(run)
            return
        self.building.add(run.key)
        job = InterpolateJob(
            run.key, str(self.run_dir(tuned)), tuned.model, run.alpha, str(self.run_dir(run)), self.plan.cfg.threads
        )
        self.jobs[self.executor.submit("train", job)] = run

    # ------------------------------------------------------------------ recording

    def run_done(self, run: RunSpec, result: dict | None, error: BaseException | None) -> None:
        self.building.discard(run.key)
        if error is None:
            self.store.finish_run(
                run.key,
                model_dir=str((self.run_dir(run) / "model").relative_to(self.store.out_dir)),
                manifest=result["manifest"],
                summary=result["summary"],
                seconds=result["seconds"],
            )
            self.counts["runs done"] += 1
            self.finished.add(run.key)
            s = result["summary"]
            loss = f"loss {s.get('loss_first_epoch') or 0:.3f} -> {s.get('loss_last_epoch') or 0:.3f}"
            if isinstance(run, InterpolationSpec):
                loss = f"{s.get('kind')} model saved"
            self.log_done(run, result["seconds"], loss)
            self.submit_cells(self.plan.cells_of(run.key), str(self.model_dir(run)))
            for interp in self.waiting.pop(run.key, []):
                self.submit_interpolation(interp)
            self.drop_unneeded(run)  # no cell left to run on it (all done earlier)
            return
        line = error_line(error)
        self.store.fail("runs", run.key, line)
        self.counts["runs failed"] += 1
        self.log_done(run, 0, f"FAILED: {line}")
        self.fail_dependents(run, line)

    def fail_dependents(self, run: RunSpec, line: str) -> None:
        """A run failed: its pending cells fail, and its waiting interpolations with their cells."""
        for c in self.plan.cells_of(run.key):
            if c.key in self.todo_cells:
                self.store.fail("cells", c.key, f"training run failed: {line}")
                self.counts["cells failed"] += 1
                self.bar.update(1)
        for interp in self.waiting.pop(run.key, []):
            self.store.fail("runs", interp.key, f"its trained run failed: {line}")
            self.counts["runs failed"] += 1
            self.bar.update(1)
            self.fail_dependents(interp, line)

    def drop_unneeded(self, run: RunSpec) -> None:
        """keep_models: false: delete the model of `run` once no unit reads it; for an interpolated model, also
        the model of the trained run it was built from."""
        for r in (run, run.of) if isinstance(run, InterpolationSpec) else (run,):
            if not self.plan.cfg.keep_models and self.all_cells_done(r) and self.model_dir(r).exists():
                self.drop_model(r)

    def cell_done(self, cell: CellSpec, result: dict | None, error: BaseException | None) -> None:
        if error is None:
            self.store.finish_cell(
                cell.key, metrics=result["metrics"], predictions=result["predictions"], seconds=result["seconds"]
            )
            self.counts["cells done"] += 1
            self.finished.add(cell.key)
            m = result["metrics"]
            self.log_done(cell, result["seconds"], f"{m['metric']} {score_text(m)} (n={m['n']})")
            if cell.run is not None:
                self.drop_unneeded(cell.run)
            return
        line = error_line(error)
        self.store.fail("cells", cell.key, line)
        self.counts["cells failed"] += 1
        self.log_done(cell, 0, f"FAILED: {line}")

    def log_done(self, spec: RunSpec | CellSpec, seconds: float, extra: str) -> None:
        done = sum(self.counts.values())
        elapsed = progress.fmt_seconds(time.perf_counter() - self.t_start)
        self.bar.update(1)
        if not progress.is_quiet():
            took = f"{progress.fmt_seconds(seconds)}; study {elapsed}"
            self.bar.write(f"[{done}/{self.total}] {spec.describe()}: {extra} ({took})", file=sys.stderr)


def _json(text: str | None) -> object:
    try:
        return json.loads(text or "{}")
    except ValueError:
        return None  # a damaged row never matches: the model is trained again
