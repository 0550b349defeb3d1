"""What one unit of a study does, in whatever process an executor runs it: train a run, or evaluate a cell.

A worker gets a job (`TrainJob`: the run's whole TrainConfig; `EvalJob`: the cell's whole EvalParams), computes,
and returns a plain dict; only the driver writes the results store. `Units` bundles the two bodies with the
process's `ModelCache`, so consecutive cells on one model load it once.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from ftgen.config import EvalParams, TrainConfig
from ftgen.store import manifest


@dataclass(frozen=True)
class DriftSpec:
    """After training: weight drift and KL from the base model on a few records of each task (ftgen.analysis)."""

    base: str
    tasks: tuple[str, ...]
    probe_records: int


@dataclass(frozen=True)
class TrainJob:
    key: str
    config: TrainConfig  # data_dir and task_dirs included: where this process finds the data
    out_dir: str
    threads: int | None = None
    drift: DriftSpec | None = None


@dataclass(frozen=True)
class EvalJob:
    key: str
    model_path: str  # the base model's name, or the trained run's model directory
    params: EvalParams  # the object the cell's key was hashed from
    data_dir: str
    task_dirs: tuple[str, ...]
    desc: str


class ModelCache:
    """The last model loaded in this process, kept for the next cell that evaluates it."""

    def __init__(self) -> None:
        self._id: tuple[str, str] | None = None
        self._model = None

    def __reduce__(self):
        return ModelCache, ()  # a cache never travels to another process: it arrives empty

    def get(self, path: str, dtype: str):
        """(model, tokenizer) of `path` in `dtype`, loaded unless it is the one held."""
        from ftgen.models import load_model

        if self._id != (path, dtype):
            self._id, self._model = None, None  # free the old model before loading the next
            self._model = load_model(path, dtype=dtype)
            self._id = (path, dtype)
        return self._model


class Units:
    """The unit bodies of one process and its model cache (a cache never travels to another process)."""

    def __init__(self) -> None:
        self.models = ModelCache()

    def train(self, job: TrainJob) -> dict:
        return execute_train(job)

    def eval(self, job: EvalJob) -> dict:
        return execute_eval(job, self.models)


def set_threads(n: int | None) -> None:
    """torch threads for this unit. On a CPU shared with other work, fewer threads than cores avoid
    OpenMP threads spinning at barriers while their partner thread waits for a core (measured here:
    1 thread generated 3-5x faster than 2 threads on 2 busy cores)."""
    if n:
        import torch

        torch.set_num_threads(n)


def execute_train(job: TrainJob) -> dict:
    """Train one run into job.out_dir (resuming from its checkpoints); return summary, manifest and seconds."""
    from ftgen.train import train

    set_threads(job.threads)
    out = Path(job.out_dir)
    if out.exists() and not (out / "checkpoints").exists() and not (out / "train_summary.json").exists():
        shutil.rmtree(out)  # leftovers of a run killed before its first checkpoint: start clean
    t0 = time.perf_counter()
    summary = train(job.config, out, resume=True)
    if job.drift is not None:
        summary = {**summary, "drift": drift_of_run(out, job.drift, job.config)}
    return {"summary": summary, "manifest": manifest(out / "model"), "seconds": time.perf_counter() - t0}


def drift_of_run(out: Path, spec: DriftSpec, config: TrainConfig) -> dict:
    """How far the run moved from its base (ftgen.analysis): the full result goes to OUT/drift.json
    (kept across a kill: not measured twice), the compact one into the run's summary."""
    from ftgen.analysis import analyze_drift, compact_drift
    from ftgen.files import atomic_write_json, read_json
    from ftgen.tasks import load_task

    path = out / "drift.json"
    if path.exists():
        return compact_drift(read_json(path))
    tasks = [load_task(t, config.task_dirs) for t in spec.tasks]
    # fp32 weights: a bf16 copy would round small updates away
    result = analyze_drift(
        out, spec.base, data_dir=config.data_dir, tasks=tasks, per_task=spec.probe_records, dtype="fp32"
    )
    atomic_write_json(path, result)
    return compact_drift(result)


def execute_eval(job: EvalJob, models: ModelCache) -> dict:
    """Evaluate one cell; return metrics, predictions and seconds (only the driver writes the store)."""
    from ftgen.data import load_pool, load_test_set
    from ftgen.evaluate import evaluate
    from ftgen.prompts import select_shots
    from ftgen.tasks import load_task

    p = job.params
    set_threads(p.threads)
    t0 = time.perf_counter()
    task = load_task(p.task, list(job.task_dirs))
    if p.max_new_tokens is not None:
        task = task.model_copy(update={"max_new_tokens": p.max_new_tokens})
    ds = load_test_set(job.data_dir, task, p.test_set, limit=p.limit, skip_invalid=p.skip_invalid)
    shots = select_shots(load_pool(job.data_dir, task, p.test_set).records, p.shots) if p.shots else []
    model, tokenizer = models.get(job.model_path, p.dtype)
    result = evaluate(
        model,
        tokenizer,
        task,
        ds.records,
        shots=shots,
        fmt=p.fmt,
        scoring=p.scoring or "sum",  # generation scores no labels: any rule gives the same result
        batch_size=p.batch_size,
        max_length=p.max_length,
        data_report=ds.report,
        desc=job.desc,
    )
    report = {k: v for k, v in vars(ds.report).items() if k != "problems"}
    metrics = {**result.metrics, "data": report, "shot_ids": [s["id"] for s in shots]}
    return {"metrics": metrics, "predictions": result.predictions, "seconds": time.perf_counter() - t0}
