"""Where a study stands, for `ftgen status`: one row per model (each base model, each training run) with its
state, optimizer steps done / total, elapsed time, ETA and cells done; and an ETA for the whole study.

Steps come from the run's `loss.jsonl` (a line per optimizer step, holding the run's total) or, for a run logged
before totals were written there, its latest checkpoint. The study's ETA is the cost model's (ftgen.costs) for
the units not done yet, each kind of unit (train, classify, generate) scaled by what this study's finished
units took against the model's estimate for them (else by the machine's calibration); a training run under way
counts what its step rate says is left. Failed units count as left: the next run retries them.

Reading never writes and never takes the study lock: it works while a study runs.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from ftgen.errors import UserError
from ftgen.store import Store


@dataclass
class ModelRow:
    """One line of the status table: a base model, or a training run and its cells."""

    name: str
    state: str
    steps: tuple[int, int] | None = None  # done, total
    elapsed_s: float | None = None
    eta_s: float | None = None
    cells: tuple[int, int] = (0, 0)  # done, total
    key: str | None = None


@dataclass
class StudyProgress:
    rows: list[ModelRow]
    eta_s: float | None
    eta_note: str  # how the ETA was made, or why there is none
    factors: dict[str, float] = field(default_factory=dict)


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def training_steps(run_dir: Path) -> tuple[int, int | None, float]:
    """(steps done, total steps or None, training seconds) of a run, from its loss.jsonl (else its checkpoint)."""
    done, total, seconds = 0, None, 0.0
    try:
        lines = (run_dir / "loss.jsonl").read_text(encoding="utf-8").splitlines()
    except OSError:
        lines = []
    for line in reversed(lines):  # the last complete line (a kill may leave a partial one)
        try:
            row = json.loads(line)
        except ValueError:
            continue
        done, total, seconds = row.get("step", 0), row.get("total_steps"), row.get("elapsed_s") or 0.0
        break
    if total is None:  # a run logged before totals were written: its checkpoint knows
        from ftgen.checkpoint import STATE_FILE, latest_checkpoint

        ckpt = latest_checkpoint(run_dir / "checkpoints")
        state = _read_json(ckpt / STATE_FILE) if ckpt is not None else None
        total = state.get("total_steps") if state else None
    return done, total, seconds


def _plan_of(store: Store):
    """The plan of the study as it last ran (its recorded config and data dir)."""
    from ftgen.config import parse_study
    from ftgen.plan import build_plan
    from ftgen.validate import resolve_paths, validate_study

    meta = store.meta()
    if "config" not in meta:
        raise UserError("the store holds no study config yet")
    source = f"{store.out_dir}: the recorded study config"
    cfg = parse_study(json.loads(meta["config"]), source)
    cfg, data_dir = resolve_paths(cfg, meta.get("data_dir"), None)
    return build_plan(validate_study(cfg, data_dir, source))


def _factors(plan, costs, done: dict[str, float]) -> dict[str, float]:
    """measured / estimated seconds per kind of unit over this study's done units; the machine's calibration
    (else 1) for a kind with too little done work to tell."""
    from ftgen.costs import KINDS, load_calibration

    est = dict.fromkeys(KINDS, 0.0)
    got = dict.fromkeys(KINDS, 0.0)
    for spec in [*plan.runs, *plan.cells]:
        if done.get(spec.key):
            kind, seconds = costs.unit(spec)
            est[kind] += seconds
            got[kind] += done[spec.key]
    machine = load_calibration()
    return {k: got[k] / est[k] if est[k] > 1 else float(machine.get(k, 1.0)) for k in KINDS}


def study_progress(store: Store, now: float | None = None) -> StudyProgress:
    """The status table's rows and the study's ETA (None when the plan cannot be rebuilt: the reason is said)."""
    now = time.time() if now is None else now
    with store.readable():
        runs = store.rows("runs", "status != 'superseded'")
        cells = store.rows("cells", "status != 'superseded'")
    rows = _model_rows(store, runs, cells, now)
    try:
        plan = _plan_of(store)
    except (UserError, ValueError, KeyError, OSError) as e:
        return StudyProgress(rows, None, f"unknown: {str(e).splitlines()[0][:160]}")
    from ftgen.costs import CostModel, estimate_at_once

    costs = CostModel(plan)
    by_key = {r["key"]: r for r in runs + cells}
    done = {k: r["seconds"] for k, r in by_key.items() if r["status"] == "done" and r["seconds"]}
    factors = _factors(plan, costs, done)
    by_rate = {r.key: r.eta_s for r in rows if r.eta_s is not None}  # training runs under way, from their steps
    left = 0.0
    kinds: set[str] = set()  # of the units left: the factors worth saying
    rows_by_key = {r.key: r for r in rows if r.key}
    for spec in [*plan.runs, *plan.cells]:
        row = by_key.get(spec.key)
        if row is None or row["status"] == "done":
            continue
        kind, seconds = costs.unit(spec)
        kinds.add(kind)
        seconds *= factors[kind]
        if spec.key in by_rate:
            seconds = by_rate[spec.key]
        elif row["status"] == "running":
            seconds = max(seconds - (now - (row["started"] or now)), 0.0)
        if spec.key in rows_by_key:
            rows_by_key[spec.key].eta_s = seconds
        left += seconds
    at_once = estimate_at_once(plan.cfg)
    how = ", ".join(f"{k} x{f:.2f}" for k, f in factors.items() if k in kinds and f != 1.0) or "none measured yet"
    note = f"cost model x measured/estimated: {how}"
    if at_once > 1:
        note += f"; {at_once} units at once"
    total = left / at_once
    return StudyProgress(rows, total, note, factors)


def _model_rows(store: Store, runs: list[dict], cells: list[dict], now: float) -> list[ModelRow]:
    by_run: dict[str | None, list[dict]] = {}
    for c in cells:
        by_run.setdefault(c["run_key"] or f"base:{c['model']}", []).append(c)
    rows = []
    for model in dict.fromkeys(c["model"] for c in cells if c["run_key"] is None):
        own = by_run[f"base:{model}"]
        states = {c["status"] for c in own}
        state = next((s for s in ("running", "failed", "pending") if s in states), "done")
        elapsed = sum(c["seconds"] or 0 for c in own if c["status"] == "done")
        elapsed += sum(now - c["started"] for c in own if c["status"] == "running" and c["started"])
        rows.append(ModelRow(f"base {model}", state, None, elapsed or None, None, _cells(own)))
    for r in runs:
        folder = store.run_dir(r)
        row = ModelRow(folder.name, r["status"], key=r["key"], cells=_cells(by_run.get(r["key"], [])))
        if r["status"] == "done":
            summary = json.loads(r["summary"]) if r["summary"] else {}
            steps = summary.get("steps") if isinstance(summary, dict) else None
            row.steps = (steps, steps) if steps else None
            row.elapsed_s = r["seconds"]
            if r.get("model_deleted"):
                row.state = "done, model deleted"
        elif r["status"] in ("running", "failed", "pending"):
            done, total, train_s = training_steps(folder)
            row.steps = (done, total) if total else None
            if r["status"] == "running" and r["started"]:
                row.elapsed_s = now - r["started"]
                if done and total:
                    row.eta_s = train_s / done * (total - done)
        rows.append(row)
    return rows


def _cells(cells: list[dict]) -> tuple[int, int]:
    return sum(c["status"] == "done" for c in cells), len(cells)


def fmt_eta(seconds: float | None) -> str:
    from ftgen.progress import fmt_seconds

    if seconds is None or not math.isfinite(seconds):
        return "-"
    return "~" + fmt_seconds(seconds) if seconds >= 1 else "0s"
