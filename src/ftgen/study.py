"""A study: the whole grid of one YAML, run into a crash-proof results store.

    plan   = build_plan(validate_study(config, data_dir))   # training runs and evaluation cells, each keyed
    store  = Store.open_writer(out)                          # lock, stale `running` -> `pending`
    check_changes(store, plan)                               # a finished cell computed otherwise: refuse
    drive(plan, store, executor)                             # skip done units, redo the rest

Keys: a unit's key is the hash of the canonical JSON of exactly what determines its result (for a
training run: every TrainConfig field but paths and logging, the task definition, the train and pool
files' content hashes; for a cell: the model's key, the task definition, the test and pool files'
hashes, shots, format, limit, scoring, max_new_tokens, dtype; not batch sizes, threads or the executor).
Its `slot` names its coordinates in the grid; the store holds one live row per slot.

Order (local executor, one worker): the base model's cells first, then for each training run: train,
then evaluate it on every cell. Each model is loaded once for all its cells. With several workers (or
Ray) units run as soon as a worker is free and their model exists. In-context examples at test time are
the first k of the test set's own few-shot pool, as in the paper.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ftgen import progress
from ftgen.config import (
    STUDY_OWNED_TRAIN_FIELDS,
    Resolved,
    StudyConfig,
    load_study,
    resolve_data_dir,
    validate_study,
)
from ftgen.data import read_raw_records
from ftgen.errors import UserError, parse_fields
from ftgen.files import atomic_write_text, ensure_writable_dir
from ftgen.store import Store, canonical_json

# Fields of TrainConfig that do not change the trained weights (paths, logging, checkpoint cadence).
TRAIN_NON_RESULT_FIELDS = {"data_dir", "task_dirs", "save_every", "keep_checkpoints", "clean_checkpoints", "log_every"}


def unit_key(identity: dict) -> str:
    return hashlib.sha256(canonical_json(identity).encode()).hexdigest()[:16]


_file_hashes: dict[str, str] = {}


def file_sha(path: str | Path) -> str:
    """sha256 of a data file's content: a moved data dir keeps its keys, an edited file does not."""
    p = str(Path(path).resolve())
    if p not in _file_hashes:
        _file_hashes[p] = hashlib.sha256(Path(p).read_bytes()).hexdigest()[:16]
    return _file_hashes[p]


def _num(x: float) -> str:
    return f"{x:g}"


@dataclass
class RunSpec:
    """One training run of the grid."""

    key: str
    slot: str
    model: str
    task: str
    train_set: str
    size: int
    method: str
    fticl_k: int
    lora_r: int
    lr: float
    epochs: float
    seed: int
    train: dict  # TrainConfig fields, data_dir excluded (set where it runs)
    identity: dict

    def row(self) -> dict:
        coords = {"train_task": self.task, "train_set": self.train_set, "size": self.size, "method": self.method}
        return {
            "key": self.key,
            "slot": self.slot,
            "model": self.model,
            **coords,
            "lr": self.lr,
            "epochs": self.epochs,
            "seed": self.seed,
            "config": canonical_json(self.identity),
        }


@dataclass
class CellSpec:
    """One evaluation cell: a model (base or trained) on one test set, shots and prompt format."""

    key: str
    slot: str
    model: str  # the base model's name
    run: RunSpec | None  # None = the base model itself
    test_task: str
    test_set: str
    shots: int
    fmt: int
    identity: dict

    def row(self) -> dict:
        r = self.run
        return {
            "key": self.key,
            "slot": self.slot,
            "run_key": r.key if r else None,
            "model": self.model,
            "train_task": r.task if r else None,
            "train_set": r.train_set if r else None,
            "size": r.size if r else None,
            "method": r.method if r else "base",
            "lr": r.lr if r else None,
            "epochs": r.epochs if r else None,
            "seed": r.seed if r else None,
            "test_task": self.test_task,
            "test_set": self.test_set,
            "shots": self.shots,
            "fmt": self.fmt,
            "config": canonical_json(self.identity),
        }


@dataclass
class Plan:
    resolved: Resolved
    runs: list[RunSpec]
    cells: list[CellSpec]
    notes: list[str] = field(default_factory=list)

    @property
    def cfg(self) -> StudyConfig:
        return self.resolved.cfg

    def cells_of(self, run_key: str | None, model: str | None = None) -> list[CellSpec]:
        return [
            c for c in self.cells if (c.run.key if c.run else None) == run_key and (model is None or c.model == model)
        ]


# ---------------------------------------------------------------- the grid


def _train_file(resolved: Resolved, task: str, train_set: str, size: int) -> Path:
    """The file load_train_set reads for this size: exactly that size, else the smallest larger one."""
    if "/" in train_set or train_set.endswith((".json", ".jsonl", ".csv")):
        return Path(train_set)
    by_size = resolved.files[task].train[train_set]
    fitting = [s for s in sorted(by_size) if s >= size]
    return by_size[fitting[0] if fitting else max(by_size)]


def _run_spec(
    resolved: Resolved, i: int, model: str, size: int, method, lr: float, epochs: float, seed: int
) -> RunSpec:
    """One training run: its TrainConfig (validated by the training engine) and its identity."""
    from ftgen.train import TrainConfig

    cfg = resolved.cfg
    task = resolved.tasks[cfg.train[i].task]
    train_set = resolved.train_sets[i]
    k = resolved.fticl_k(method, task.name)
    fields = {
        **cfg.train_args,
        "model": model,
        "task": task.name,
        "train_set": train_set,
        "train_size": size,
        "lr": lr,
        "epochs": epochs,
        "seed": seed,
        "fticl_shots": k,
        "lora_r": method.lora_r or None,
        "task_dirs": cfg.task_dirs,
    }
    if method.lora_alpha is not None:
        fields["lora_alpha"] = method.lora_alpha
    # an error names the study's field (train_args.X, hyper.lr, methods.N.lora_r, ...), not TrainConfig's
    where = {f: f"train_args.{f}" for f in cfg.train_args} | {
        f: p.replace("train.N", f"train.{i}").replace("methods.N", f"methods.{cfg.methods.index(method)}")
        for f, p in STUDY_OWNED_TRAIN_FIELDS.items()
    }
    source = f"{cfg.name}: training run (train.{i}, method {method.display})"
    tc = parse_fields(TrainConfig, fields, source, "a training run", rename=where)
    dump = tc.model_dump()
    pool = file_sha(resolved.files[task.name].pools[tc.fticl_pool or train_set]) if k else None
    identity = {
        "unit": "train",
        "train": {f: v for f, v in dump.items() if f not in TRAIN_NON_RESULT_FIELDS},
        "task_def": task.model_dump(),
        "data": {"train": file_sha(_train_file(resolved, task.name, train_set, size)), "pool": pool},
    }
    slot = (
        f"{model} | {task.name}/{train_set} n={size} | {method.display} | lr={_num(lr)} ep={_num(epochs)} seed={seed}"
    )
    train = {f: v for f, v in dump.items() if f != "data_dir"}
    return RunSpec(
        unit_key(identity),
        slot,
        model,
        task.name,
        train_set,
        size,
        method.display,
        k,
        method.lora_r,
        lr,
        epochs,
        seed,
        train,
        identity,
    )


def build_plan(resolved: Resolved) -> Plan:
    """Expand the config into training runs and evaluation cells (needs the data dir for file hashes)."""
    cfg, data = resolved.cfg, resolved.data_dir
    if data is None:
        raise UserError("a study needs the data: give --data-dir (or data_dir: in the config)")
    ev = cfg.eval
    h = cfg.hyper
    runs = [
        _run_spec(resolved, i, model, size, method, lr, epochs, seed)
        for model in cfg.models
        for i, entry in enumerate(cfg.train)
        for size, method, lr, epochs, seed in itertools.product(entry.sizes, cfg.methods, h.lr, h.epochs, h.seeds)
    ]
    assert len({r.slot for r in runs}) == len(runs), "two training runs share a slot"

    def cells_for(model: str, run: RunSpec | None) -> list[CellSpec]:
        out = []
        model_id = run.key if run else f"base:{model}"
        model_slot = run.slot if run else f"{model} | base"
        for tname, sets in resolved.test_sets.items():
            task = resolved.tasks[tname]
            for s in sets:
                test_file = resolved.files[tname].test[s]
                pool_file = resolved.files[tname].pools.get(s)
                for k in resolved.shots[tname]:
                    if k and pool_file is None:
                        continue  # no few-shot pool: 0-shot only (noted at validation)
                    for fmt in ev.prompt_formats:
                        identity = {
                            "unit": "eval",
                            "model": model_id,
                            "task_def": task.model_dump(),
                            "test_set": s,
                            "data": {"test": file_sha(test_file), "pool": file_sha(pool_file) if k else None},
                            "shots": k,
                            "fmt": fmt,
                            "limit": ev.limit,
                            "skip_invalid": ev.skip_invalid,
                            "scoring": ev.scoring if task.kind == "classification" else None,
                            "max_new_tokens": ev.max_new_tokens.get(tname, task.max_new_tokens)
                            if task.kind == "generation"
                            else None,
                            "max_length": ev.max_length,
                            "dtype": ev.dtype,
                        }
                        slot = f"{model_slot} || {tname}/{s} | {k}-shot | fmt {fmt}"
                        out.append(CellSpec(unit_key(identity), slot, model, run, tname, s, k, fmt, identity))
        return out

    cells: list[CellSpec] = []
    if ev.base:
        for model in cfg.models:
            cells += cells_for(model, None)
    for run in runs:
        cells += cells_for(run.model, run)
    return Plan(resolved, runs, cells, list(resolved.notes))


def load_plan(
    config_path: str | Path,
    data_dir: str | Path | None = None,
    *,
    limit: int | None = None,
    executor: str | None = None,
) -> Plan:
    """Read, override (--limit, --executor), validate and expand a study config."""
    cfg = load_study(config_path)
    overrides: dict = {}
    if limit is not None:
        overrides["eval"] = cfg.eval.model_copy(update={"limit": limit})
    if executor is not None:
        overrides["executor"] = executor
    if overrides:
        cfg = cfg.model_copy(update=overrides)
    data = resolve_data_dir(cfg, data_dir, config_path)
    return build_plan(validate_study(cfg, data.resolve() if data else None, str(config_path)))


# ---------------------------------------------------------------- changed configs


def _flatten(obj: object, prefix: str = "") -> dict[str, object]:
    if isinstance(obj, dict):
        out: dict[str, object] = {}
        for k, v in obj.items():
            out |= _flatten(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    return {prefix: obj}


def config_diff(old: dict, new: dict) -> list[str]:
    """`field: old -> new` for each leaf that differs (task definitions summarised)."""
    a, b = _flatten(old), _flatten(new)
    diffs = []
    for k in sorted(set(a) | set(b)):
        if a.get(k) != b.get(k):
            if k.startswith("task_def."):
                k = "task_def (the task's YAML definition)"
                if any(d.startswith(k) for d in diffs):
                    continue
                diffs.append(k)
            elif k != "model":  # a cell's model key changes with its run: reported at the run
                diffs.append(f"{k}: {a.get(k)!r} -> {b.get(k)!r}")
    return diffs


def check_changes(store: Store, plan: Plan, *, rerun_changed: bool = False) -> list[str]:
    """Rows of the store at a planned slot but with another key.

    Not finished: superseded silently (nothing to lose). Finished: a UserError naming the changed
    fields, unless `rerun_changed` (then the old results are kept, marked `superseded`, and recomputed).
    """
    report: list[str] = []
    for table, specs in (("runs", plan.runs), ("cells", plan.cells)):
        live = store.live_by_slot(table)
        stale_open, changed_done = [], []
        diffs: Counter = Counter()
        for spec in specs:
            row = live.get(spec.slot)
            if row is None or row["key"] == spec.key:
                continue
            if row["status"] == "done":
                changed_done.append(row["key"])
                diffs.update(config_diff(json.loads(row["config"]), spec.identity))
            else:
                stale_open.append(row["key"])
        store.supersede(table, stale_open)
        if changed_done:
            what = "training runs" if table == "runs" else "evaluation cells"
            shown = "; ".join(d for d, _ in diffs.most_common(6)) or "the model they evaluate was retrained"
            report.append(f"{len(changed_done)} finished {what} ({shown})")
            if rerun_changed:
                store.supersede(table, changed_done)
    if report and not rerun_changed:
        raise UserError(
            f"{store.out_dir}: the config changed for results already computed there: {' | '.join(report)}. "
            "Rerun with --rerun-changed to recompute them (old results are kept, marked superseded), or use "
            "another --out"
        )
    return report


# ---------------------------------------------------------------- what one unit does (in any process)


def execute_train(job: dict) -> dict:
    """Train one run into job['out_dir'] (resuming from its checkpoints); return summary and manifest."""
    from ftgen.train import TrainConfig, train

    _threads(job.get("threads"))
    out = Path(job["out_dir"])
    cfg = TrainConfig(**job["train"], data_dir=job["data_dir"])
    if not (out / "checkpoints").exists() and not (out / "train_summary.json").exists() and out.exists():
        shutil.rmtree(out)  # leftovers of a run killed before its first checkpoint: start clean
    t0 = time.perf_counter()
    summary = train(cfg, out, resume=True)
    if job.get("drift"):
        summary = {**summary, "drift": drift_of_run(out, job["drift"], job["data_dir"])}
    return {"summary": summary, "manifest": manifest(out / "model"), "seconds": time.perf_counter() - t0}


def drift_of_run(out: Path, spec: dict, data_dir: str) -> dict:
    """How far the run moved from its base (ftgen.analysis): the full result goes to OUT/drift.json
    (kept across a kill: not measured twice), the compact one into the run's summary."""
    from ftgen.analysis import analyze_drift, compact_drift
    from ftgen.files import atomic_write_json, read_json
    from ftgen.tasks import load_task

    path = out / "drift.json"
    if path.exists():
        return compact_drift(read_json(path))
    tasks = [load_task(t, spec["task_dirs"]) for t in spec["tasks"]]
    result = analyze_drift(
        out, spec["base"], data_dir=data_dir, tasks=tasks, per_task=spec["probe_records"], dtype="fp32"
    )
    atomic_write_json(path, result)
    return compact_drift(result)


def _threads(n: int | None) -> None:
    """torch threads for this unit. On a CPU shared with other work, fewer threads than cores avoid
    OpenMP threads spinning at barriers while their partner thread waits for a core (measured here:
    1 thread generated 3-5x faster than 2 threads on 2 busy cores)."""
    if n:
        import torch

        torch.set_num_threads(n)


def manifest(model_dir: str | Path) -> dict[str, str]:
    """sha256 of every file of a saved model: recorded with the run, checked before its cells load it."""
    root = Path(model_dir)
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h = hashlib.sha256()
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 22), b""):
                    h.update(chunk)
            out[str(p.relative_to(root))] = h.hexdigest()
    return out


_loaded: dict = {}  # the model of the previous cell, kept for the next one (the same process)


def _model(path: str, dtype: str):
    from ftgen.models import load_model

    if _loaded.get("id") != (path, dtype):
        _loaded.clear()
        _loaded.update(id=(path, dtype), model=load_model(path, dtype=dtype))
    return _loaded["model"]


def execute_eval(job: dict) -> dict:
    """Evaluate one cell; return metrics and predictions (only the driver writes the store)."""
    from ftgen.data import load_pool, load_test_set
    from ftgen.evaluate import evaluate
    from ftgen.prompts import select_shots
    from ftgen.tasks import load_task

    _threads(job.get("threads"))
    t0 = time.perf_counter()
    task = load_task(job["task"], job["task_dirs"])
    if job.get("max_new_tokens"):
        task = task.model_copy(update={"max_new_tokens": job["max_new_tokens"]})
    ds = load_test_set(job["data_dir"], task, job["test_set"], limit=job["limit"], skip_invalid=job["skip_invalid"])
    shots = (
        select_shots(load_pool(job["data_dir"], task, job["test_set"]).records, job["shots"]) if job["shots"] else []
    )
    model, tokenizer = _model(job["model_path"], job["dtype"])
    result = evaluate(
        model,
        tokenizer,
        task,
        ds.records,
        shots=shots,
        fmt=job["fmt"],
        scoring=job["scoring"],
        batch_size=job["batch_size"],
        max_length=job["max_length"],
        desc=job["desc"],
    )
    report = {k: v for k, v in vars(ds.report).items() if k != "problems"}
    metrics = {**result.metrics, "data": report, "shot_ids": [s["id"] for s in shots]}
    return {"metrics": metrics, "predictions": result.predictions, "seconds": time.perf_counter() - t0}


# ---------------------------------------------------------------- the driver


def _error_line(err: BaseException) -> str:
    cause = getattr(err, "cause", None) or err  # Ray wraps the task's exception
    text = f"{type(cause).__name__}: {cause}" if not isinstance(cause, UserError) else str(cause)
    return (text.strip().splitlines() or [type(cause).__name__])[0][:500]


def fmt_seconds(seconds: float) -> str:
    """12s, 3m05s, 2h10m, 3.5 days."""
    s = int(round(seconds))
    if s >= 2 * 86400:
        return f"{s / 86400:.1f} days"
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def describe(spec: RunSpec | CellSpec) -> str:
    """A unit in a log line: `train sentiment/amazon n=32 fticl k=2 lr=0.0001 ep=2`."""

    def run_name(r: RunSpec) -> str:
        extra = (f" k={r.fticl_k}" if r.fticl_k else "") + f" lr={_num(r.lr)} ep={_num(r.epochs)}"
        return f"{r.task} n={r.size} {r.method}" + extra + (f" seed={r.seed}" if r.seed else "")

    if isinstance(spec, RunSpec):
        return f"train {spec.task}/{spec.train_set} " + run_name(spec).split(" ", 1)[1]
    who = run_name(spec.run) if spec.run else f"{spec.model} base"
    return f"eval [{who}] on {spec.test_task}/{spec.test_set} {spec.shots}-shot fmt {spec.fmt}"


def drive(plan: Plan, store: Store, executor, data_dir: Path) -> dict:
    """Run every unit not done yet; record each result (only here: the one writer). Returns counts."""
    cfg = plan.cfg
    status = {r["key"]: r for r in store.rows("runs")} | {r["key"]: r for r in store.rows("cells")}
    todo_cells = {c.key for c in plan.cells if status[c.key]["status"] != "done"}
    runs_dir = store.out_dir / "runs"
    jobs: dict[int, tuple[str, RunSpec | CellSpec]] = {}
    total = sum(1 for r in plan.runs if status[r.key]["status"] != "done") + len(todo_cells)
    counts = Counter()
    t_start = time.perf_counter()
    pbar = progress.bar(total=total, desc="study", unit="unit")

    def eval_job(cell: CellSpec, model_path: str) -> dict:
        ev = cfg.eval
        task = plan.resolved.tasks[cell.test_task]
        return {
            "key": cell.key,
            "model_path": model_path,
            "task": cell.test_task,
            "task_dirs": cfg.task_dirs,
            "data_dir": str(data_dir),
            "test_set": cell.test_set,
            "shots": cell.shots,
            "fmt": cell.fmt,
            "limit": ev.limit,
            "skip_invalid": ev.skip_invalid,
            "scoring": ev.scoring if task.kind == "classification" else "sum",
            "batch_size": ev.batch_size if task.kind == "classification" else ev.generation_batch_size or ev.batch_size,
            "max_length": ev.max_length,
            "dtype": ev.dtype,
            "max_new_tokens": ev.max_new_tokens.get(cell.test_task),
            "threads": cfg.threads,
            "desc": f"{cell.test_task}/{cell.test_set} {cell.shots}-shot",
        }

    # a unit is `running` from when the executor starts it (local) or hands it to the cluster (ray)
    executor.on_start = lambda kind, job: store.start("runs" if kind == "train" else "cells", job["key"])

    def submit_cells(cells: list[CellSpec], model_path: str) -> None:
        for c in cells:
            if c.key in todo_cells:
                jobs[executor.submit("eval", execute_eval, eval_job(c, model_path))] = ("eval", c)

    def submit_train(run: RunSpec) -> None:
        job = {
            "key": run.key,
            "train": run.train,
            "data_dir": str(data_dir),
            "out_dir": str(runs_dir / run.key),
            "threads": cfg.threads,
        }
        if cfg.analysis.drift:  # fp32 weights: a bf16 copy would round small updates away
            job["drift"] = {
                "base": run.model,
                "tasks": list(plan.resolved.tasks),
                "task_dirs": cfg.task_dirs,
                "probe_records": cfg.analysis.probe_records,
            }
        jobs[executor.submit("train", execute_train, job)] = ("train", run)

    for model in cfg.models:
        submit_cells(plan.cells_of(None, model), model)
    for run in plan.runs:
        row = store.get("runs", run.key)
        pending = [c for c in plan.cells_of(run.key) if c.key in todo_cells]
        if row["status"] == "done":
            model_dir = runs_dir / run.key / "model"  # not row["model_dir"]: the study dir may have moved
            if pending and manifest(model_dir) != json.loads(row["manifest"] or "{}"):
                progress.log(f"study: the saved model of {run.slot} changed on disk: training it again")
                store.reopen_run(run.key)
                trash = runs_dir / f".trash-{run.key}"  # rename first: a kill mid-delete leaves no half run dir
                shutil.rmtree(trash, ignore_errors=True)
                os.replace(runs_dir / run.key, trash)
                shutil.rmtree(trash, ignore_errors=True)
                pbar.total += 1
                submit_train(run)
            else:
                submit_cells(pending, str(model_dir.absolute()))
        else:
            submit_train(run)

    def log_done(spec, seconds: float, extra: str) -> None:
        done = sum(counts.values())
        elapsed = fmt_seconds(time.perf_counter() - t_start)
        msg = f"[{done}/{total}] {describe(spec)}: {extra} ({fmt_seconds(seconds)}; study {elapsed})"
        pbar.update(1)
        if not progress.is_quiet():
            pbar.write(msg, file=sys.stderr)

    try:
        while executor.pending():
            handle, result, error = executor.next_done()
            kind, spec = jobs.pop(handle)
            if kind == "train":
                if error is None:
                    store.finish_run(
                        spec.key,
                        model_dir=f"runs/{spec.key}/model",
                        manifest=result["manifest"],
                        summary=result["summary"],
                        seconds=result["seconds"],
                    )
                    counts["runs done"] += 1
                    s = result["summary"]
                    log_done(
                        spec,
                        result["seconds"],
                        f"loss {s.get('loss_first_epoch') or 0:.3f} -> {s.get('loss_last_epoch') or 0:.3f}",
                    )
                    submit_cells(plan.cells_of(spec.key), str((runs_dir / spec.key / "model").absolute()))
                else:
                    line = _error_line(error)
                    store.fail("runs", spec.key, line)
                    counts["runs failed"] += 1
                    log_done(spec, 0, f"FAILED: {line}")
                    for c in plan.cells_of(spec.key):
                        if c.key in todo_cells:
                            store.fail("cells", c.key, f"training run failed: {line}")
                            counts["cells failed"] += 1
                            pbar.update(1)
            else:
                if error is None:
                    store.finish_cell(
                        spec.key,
                        metrics=result["metrics"],
                        predictions=result["predictions"],
                        seconds=result["seconds"],
                    )
                    counts["cells done"] += 1
                    m = result["metrics"]
                    log_done(spec, result["seconds"], f"{m['metric']} {m['score']:.1f} (n={m['n']})")
                else:
                    line = _error_line(error)
                    store.fail("cells", spec.key, line)
                    counts["cells failed"] += 1
                    log_done(spec, 0, f"FAILED: {line}")
    finally:
        pbar.close()
    return dict(counts)


def run_study(
    config_path: str | Path,
    out: str | Path,
    *,
    data_dir: str | Path | None = None,
    limit: int | None = None,
    executor: str | None = None,
    rerun_changed: bool = False,
) -> dict:
    """The whole study: plan, lock the store, run what is not done, record. Returns a summary."""
    from ftgen.executors import make_executor

    t0 = time.perf_counter()
    plan = load_plan(config_path, data_dir, limit=limit, executor=executor)
    out = ensure_writable_dir(out, "study output directory")
    for note in plan.notes:
        progress.log(f"study: note: {note}")
    with Store.open_writer(out) as store:
        remove_leftovers(out)
        changed = check_changes(store, plan, rerun_changed=rerun_changed)
        store.add([r.row() for r in plan.runs], [c.row() for c in plan.cells])
        config_text = Path(config_path).read_text(encoding="utf-8")
        store.set_meta("study", plan.cfg.name)
        store.set_meta("config", canonical_json(plan.cfg.model_dump()))
        store.set_meta("data_dir", str(plan.resolved.data_dir))
        atomic_write_text(out / "study.yaml", config_text)
        before = store.counts()
        progress.log(
            f"study {plan.cfg.name}: {len(plan.runs)} training runs, {len(plan.cells)} evaluation cells; "
            f"{before['runs']['done']} runs and {before['cells']['done']} cells already done; executor "
            f"{plan.cfg.executor}"
        )
        ex = make_executor(plan.cfg)
        try:
            counts = drive(plan, store, ex, plan.resolved.data_dir)
        finally:
            ex.shutdown()
            save_calibration(plan, store)
        after = store.counts()
    return {
        "name": plan.cfg.name,
        "out": str(out),
        "seconds": time.perf_counter() - t0,
        "did": counts,
        "runs": after["runs"],
        "cells": after["cells"],
        "changed": changed,
    }


# ---------------------------------------------------------------- dry run: the grid and a time estimate

# Throughput of the default model (SmolLM2-135M, fp32, 1 thread per unit) measured by configs/quick.yaml
# on the 2-core development CPU while other work shared it (load ~4); other models are scaled by
# parameter count; GPUs are not modelled. After each study the ratio of measured to estimated seconds
# per kind of unit is saved (`calibration_path()`) and used from then on.
REF_PARAMS = 135e6
CPU_TRAIN_TOKENS_S = 60.0  # training tokens (forward + backward + optimizer step) per second
CPU_PREFILL_TOKENS_S = 110.0  # prompt tokens per second in evaluation (a shared prefix counted once)
CPU_DECODE_STEPS_S = 1.1  # greedy decoding steps per second for a batch
CPU_MODEL_LOAD_S = 4.0
CHARS_PER_TOKEN = 3.6  # English text, BPE tokenizers of 32k-50k entries
KINDS = ("train", "classify", "generate")


def _param_count(model: str) -> float:
    import re

    if model in ("default", "SmolLM2-135M-Instruct"):
        return REF_PARAMS
    m = re.search(r"(\d+(?:\.\d+)?)\s*([bBmM])\b", model.replace("-", " ").replace("_", " "))
    if m:
        return float(m[1]) * (1e9 if m[2] in "bB" else 1e6)
    return REF_PARAMS


_chars: dict[tuple, tuple[float, float, int]] = {}


def _avg_chars(path: Path, task, fmt: int, n: int | None) -> tuple[float, float, int]:
    """Mean characters of the filled prompt and of the gold answer over the first n records, and their count."""
    key = (str(path), task.name, fmt, n)
    if key not in _chars:
        rows = [r for r in read_raw_records(path)[:n] if isinstance(r, dict)]
        prompt = answer = 0
        for r in rows:
            vals = {f: str(r.get(task.field_map.get(f, f), "")) for f in task.fields}
            prompt += len(task.templates[min(fmt, len(task.templates) - 1)].format_map(vals))
            answer += len(str(r.get(task.field_map.get("output", "output"), "")))
        _chars[key] = (prompt / max(len(rows), 1), answer / max(len(rows), 1), len(rows))
    return _chars[key]


def unit_estimate(plan: Plan, spec: RunSpec | CellSpec) -> tuple[str, float]:
    """(kind, seconds) of one unit before calibration: a cost model from character counts."""
    res = plan.resolved
    scale = _param_count(spec.model) / REF_PARAMS
    if isinstance(spec, RunSpec):
        p, a, _ = _avg_chars(_train_file(res, spec.task, spec.train_set, spec.size), res.tasks[spec.task], 0, spec.size)
        tokens = spec.size * (p + a) * (1 + spec.fticl_k) / CHARS_PER_TOKEN * spec.epochs
        factor = 0.7 if spec.lora_r else 1.0  # LoRA still back-propagates through every activation
        return "train", (tokens / CPU_TRAIN_TOKENS_S * factor + 2 * CPU_MODEL_LOAD_S) * scale
    task = res.tasks[spec.test_task]
    p, a, n = _avg_chars(res.files[spec.test_task].test[spec.test_set], task, spec.fmt, plan.cfg.eval.limit)
    prefix = spec.shots * (p + a) / CHARS_PER_TOKEN
    if task.kind == "classification":
        labels = sum(len(lab) for lab in task.labels) / CHARS_PER_TOKEN + len(task.labels)
        return "classify", (n * (p / CHARS_PER_TOKEN + labels) + prefix) / CPU_PREFILL_TOKENS_S * scale
    # a base model often runs to max_new_tokens; a fine-tuned one stops after about its gold length
    most = plan.cfg.eval.max_new_tokens.get(task.name, task.max_new_tokens)
    new = most if spec.run is None else min(most, 2 * a / CHARS_PER_TOKEN + 4)
    batches = -(-n // (plan.cfg.eval.generation_batch_size or plan.cfg.eval.batch_size))
    return "generate", (
        (n * p / CHARS_PER_TOKEN + prefix) / CPU_PREFILL_TOKENS_S + batches * new / CPU_DECODE_STEPS_S
    ) * scale


def calibration_path() -> Path:
    from ftgen.models import cache_dir

    return cache_dir() / "study_calibration.json"


def _constants() -> list[float]:
    return [CPU_TRAIN_TOKENS_S, CPU_PREFILL_TOKENS_S, CPU_DECODE_STEPS_S]


def load_calibration() -> dict:
    """The saved factors, if they were measured against the current constants."""
    try:
        cal = json.loads(calibration_path().read_text())
    except (OSError, ValueError):
        return {}
    return cal if cal.get("constants") == _constants() else {}


def save_calibration(plan: Plan, store: Store) -> None:
    """measured / estimated seconds per kind of unit, from the units done in this study."""
    done = {r["key"]: r["seconds"] for t in ("runs", "cells") for r in store.rows(t, "status='done'")}
    est: dict[str, float] = dict.fromkeys(KINDS, 0.0)
    got: dict[str, float] = dict.fromkeys(KINDS, 0.0)
    for spec in [*plan.runs, *plan.cells]:
        if done.get(spec.key):
            kind, seconds = unit_estimate(plan, spec)
            est[kind] += seconds
            got[kind] += done[spec.key]
    old = load_calibration()
    factors = {k: round(got[k] / est[k], 3) if est[k] > 1 else old.get(k) for k in KINDS}
    new = {k: v for k, v in factors.items() if v is not None}
    if new:
        new |= {
            "study": plan.cfg.name,
            "host": os.uname().nodename,
            "cpus": os.cpu_count(),
            "when": time.time(),
            "constants": _constants(),
        }
        try:
            atomic_write_text(calibration_path(), json.dumps(new, indent=2))
        except OSError:
            pass  # a read-only cache only loses the calibration


def estimate(plan: Plan, done_keys: set[str] = frozenset()) -> dict:
    """Seconds for the units not done yet, calibrated by the last study measured on this machine."""
    cal = load_calibration()
    by_kind: dict[str, float] = dict.fromkeys(KINDS, 0.0)
    for spec in [*plan.runs, *plan.cells]:
        if spec.key not in done_keys:
            kind, seconds = unit_estimate(plan, spec)
            by_kind[kind] += seconds * cal.get(kind, 1.0)
    models = {c.run.key if c.run else c.model for c in plan.cells if c.key not in done_keys}
    loads = len(models) * CPU_MODEL_LOAD_S
    eval_s = by_kind["classify"] + by_kind["generate"] + loads
    cfg = plan.cfg
    if cfg.executor == "ray":
        at_once = max(1, int((cfg.ray.num_cpus or os.cpu_count() or 1) // cfg.ray.eval_cpus))
    else:
        at_once = cfg.workers
    return {
        "train_s": by_kind["train"],
        "eval_s": eval_s,
        "at_once": at_once,
        "total_s": (by_kind["train"] + eval_s) / at_once,
        "calibrated": bool(cal),
        "calibration": cal,
    }


def print_dry_run(plan: Plan, out: str | Path | None = None) -> None:
    """The grid, the counts and the time estimate (stdout)."""
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 150)
    done: set[str] = set()
    if out is not None and (Path(out) / "results.sqlite").exists():
        with Store.open_reader(out) as store:
            done = {r["key"] for t in ("runs", "cells") for r in store.rows(t, "status='done'")}
    cfg = plan.cfg
    console.print(
        f"study [bold]{cfg.name}[/]: models {', '.join(cfg.models)}; data {plan.resolved.data_dir}; "
        f"executor {cfg.executor}"
    )
    if plan.runs:
        t = Table(title="Training runs", title_justify="left")
        for c in ("key", "model", "task/set", "size", "method", "k", "lr", "epochs", "seed", "state"):
            t.add_column(c)
        for r in plan.runs:
            t.add_row(
                r.key,
                r.model,
                f"{r.task}/{r.train_set}",
                str(r.size),
                r.method,
                str(r.fticl_k or "-"),
                _num(r.lr),
                _num(r.epochs),
                str(r.seed),
                "done" if r.key in done else "to do",
            )
        console.print(t)
    t = Table(title="Evaluation cells", title_justify="left")
    for c in ("test set", "shots", "formats", "models", "cells"):
        t.add_column(c)
    for tname, sets in plan.resolved.test_sets.items():
        for s in sets:
            cells = [c for c in plan.cells if c.test_task == tname and c.test_set == s]
            models = {c.run.key if c.run else c.model for c in cells}
            t.add_row(
                f"{tname}/{s}",
                ", ".join(map(str, sorted({c.shots for c in cells}))),
                ", ".join(map(str, sorted({c.fmt for c in cells}))),
                str(len(models)),
                str(len(cells)),
            )
    console.print(t)
    for note in plan.notes:
        console.print(f"note: {note}")
    est = estimate(plan, done)
    n_done = len([r for r in plan.runs if r.key in done]), len([c for c in plan.cells if c.key in done])
    print(f"{len(plan.runs)} training runs, {len(plan.cells)} evaluation cells")
    if any(n_done):
        print(f"already done in {out}: {n_done[0]} training runs, {n_done[1]} evaluation cells")
    how = (
        f"calibrated by the study '{est['calibration'].get('study')}' measured on this machine"
        if est["calibrated"]
        else "throughput constants of the default model on a shared 2-core CPU"
    )
    at_once = f", {est['at_once']} units at once" if est["at_once"] > 1 else ""
    print(
        f"estimate: ~{fmt_seconds(est['total_s'])} on this machine's CPU "
        f"(compute: training ~{fmt_seconds(est['train_s'])}, "
        f"evaluation ~{fmt_seconds(est['eval_s'])}{at_once}); a cost model from character counts, {how}, scaled by "
        "parameter count (GPUs not modelled)"
    )


# ---------------------------------------------------------------- status


def _writer_alive(out: Path) -> str | None:
    """'pid N on HOST' of the study process writing `out`, if it is alive (read from the lock file, no lock taken)."""
    import re
    import socket

    try:
        text = (out / ".lock").read_text()
    except OSError:
        return None
    m = re.match(r"pid (\d+) on (\S+)", text)
    if not m:
        return None
    if m[2] != socket.gethostname():
        return text  # another machine: cannot tell, assume alive
    try:
        os.kill(int(m[1]), 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return text


def study_status(out: str | Path) -> dict:
    """Counts per status for runs and cells, the running and failed units (read-only, never locks)."""
    with Store.open_reader(out) as store:
        meta = store.meta()
        counts = store.counts()
        running = [r["slot"] for t in ("runs", "cells") for r in store.rows(t, "status='running'")]
        failed = [(r["slot"], r["error"]) for t in ("runs", "cells") for r in store.rows(t, "status='failed'")]
        seconds = store.conn.execute(
            "SELECT (SELECT COALESCE(SUM(seconds), 0) FROM runs WHERE status='done') + "
            "(SELECT COALESCE(SUM(seconds), 0) FROM cells WHERE status='done')"
        ).fetchone()[0]
    return {
        "writer": _writer_alive(Path(out)),
        "name": meta.get("study", "?"),
        "counts": counts,
        "running": running,
        "failed": failed,
        "compute_s": seconds,
    }


# Names of the temp files and dirs an interrupted write leaves (files.atomic_write_*, checkpoint.atomic_dir,
# the trash of a run trained again): hidden, never read, removed when the study starts again.
LEFTOVER_PATTERNS = (".*.tmp", ".*.tmp.*", ".*.old", ".trash-*")


def leftovers(out: str | Path) -> list[Path]:
    found = {p for pattern in LEFTOVER_PATTERNS for p in Path(out).rglob(pattern)}
    return sorted(p for p in found if not any(q in found for q in p.parents))


def remove_leftovers(out: str | Path) -> int:
    """Delete what killed writes left behind (call under the study lock: no one else writes)."""
    paths = leftovers(out)
    for p in paths:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return len(paths)


def check_study(out: str | Path) -> dict:
    """`ftgen status --check`: the store's integrity, and each done run's saved model against its manifest.
    Returns problems (the study is not sound) and notes (harmless: redone or cleaned on the next run)."""
    out = Path(out)
    with Store.open_reader(out) as store:
        problems = store.check()
        runs = store.rows("runs", "status = 'done'")
        running = sum(store.counts()[t]["running"] for t in ("runs", "cells"))
    for r in runs:
        model_dir = out / "runs" / r["key"] / "model"
        if not model_dir.is_dir():
            problems.append(f"run {r['slot']}: done, but its model {model_dir} is missing")
        elif r["manifest"] and manifest(model_dir) != json.loads(r["manifest"]):
            problems.append(f"run {r['slot']}: the files of {model_dir} differ from those recorded when it finished")
    notes = []
    if running and not _writer_alive(out):
        notes.append(f"{running} units left 'running' by a study that died: redone on the next run")
    if found := leftovers(out):
        notes.append(f"{len(found)} temp files of interrupted writes (hidden; removed on the next run)")
    return {"problems": problems, "notes": notes, "runs_checked": len(runs)}
