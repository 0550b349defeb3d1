"""What one unit of a study does, in whatever process an executor runs it: train a run (or build an interpolated
model), or evaluate a cell.

A worker gets a job (`TrainJob`: the run's whole TrainConfig; `InterpolateJob`: a trained run and α; `EvalJob`: the
cell's whole EvalParams), computes, and returns a plain dict; only the driver writes the results store. `Units`
bundles the bodies with the process's `ModelCache`, so consecutive cells on one model load it once.
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
class AttentionSpec:
    """After training: attention shares of the base and the tuned model on `records` records of a test set with
    `shots` in-context examples (ftgen.analysis.attention)."""

    base: str
    task: str
    test_set: str
    shots: int
    records: int
    fmt: int = 0


@dataclass(frozen=True)
class TrainJob:
    key: str
    config: TrainConfig  # data_dir and task_dirs included: where this process finds the data
    out_dir: str
    threads: int | None = None
    drift: DriftSpec | None = None
    attention: AttentionSpec | None = None


@dataclass(frozen=True)
class InterpolateJob:
    """Build θ(α) of the trained run in `tuned_dir` (its `model/` beside train_summary.json) into out_dir/model."""

    key: str
    tuned_dir: str
    base: str  # the base model of a full fine-tuning run (a LoRA adapter names its own)
    alpha: float
    out_dir: str
    threads: int | None = None


@dataclass(frozen=True)
class EvalJob:
    key: str
    model_path: str  # the base model's name, or the trained run's model directory
    params: EvalParams  # the object the cell's key was hashed from
    data_dir: str
    task_dirs: tuple[str, ...]
    desc: str
    base: bool = False  # the study's base model (its identity is recorded with the cell; a run's is its manifest)


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

    def train(self, job: TrainJob | InterpolateJob) -> dict:
        """A run-like unit: a training run, or an interpolated model (both make a model for cells)."""
        return execute_interpolate(job) if isinstance(job, InterpolateJob) else execute_train(job)

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
    summary = {**summary, "environment": train_environment(job.config)}
    if job.drift is not None:
        summary = {**summary, "drift": drift_of_run(out, job.drift, job.config)}
    if job.attention is not None:
        summary = {**summary, "attention": attention_of_run(out, job.attention, job.config)}
    return {"summary": summary, "manifest": manifest(out / "model"), "seconds": time.perf_counter() - t0}


def train_environment(config: TrainConfig) -> dict:
    """What a report cannot learn later about a training run: versions, host, the base model's identity
    (the summary already holds the device and compute dtype)."""
    import platform

    from ftgen.environment import model_identity, versions

    return {"versions": versions(), "host": platform.node(), "base_model": model_identity(config.model)}


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


def execute_interpolate(job: InterpolateJob) -> dict:
    """Save θ(α) of a trained run as a model in job.out_dir/model; return its summary, manifest and seconds."""
    from ftgen.analysis.interpolate import interpolate_model

    set_threads(job.threads)
    out = Path(job.out_dir)
    shutil.rmtree(out, ignore_errors=True)  # a model left by a kill before the store recorded it: built again
    out.mkdir(parents=True)
    t0 = time.perf_counter()
    meta = interpolate_model(job.tuned_dir, job.alpha, out / "model", base=job.base)
    summary = {k: v for k, v in meta.items() if k != "model_dir"} | {"base_model": meta["base"]}
    return {"summary": summary, "manifest": manifest(out / "model"), "seconds": time.perf_counter() - t0}


def attention_spec(resolved, model: str, train_task: str, train_set: str, records: int) -> AttentionSpec | None:
    """The attention analysis of a run on `train_task`: its in-domain test set (else its first evaluated one) with
    the task's first k-shot setting of the study; None when the study evaluates the task 0-shot only."""
    sets = resolved.test_sets.get(train_task) or []
    shots = [k for k in resolved.shots.get(train_task, []) if k > 0]
    if not sets or not shots:
        return None
    test_set = train_set if train_set in sets else sets[0]
    fmt = resolved.cfg.eval.prompt_formats[0]
    return AttentionSpec(model, train_task, test_set, shots[0], records, fmt)


def attention_of_run(out: Path, spec: AttentionSpec, config: TrainConfig) -> dict:
    """Attention shares of the base and the tuned model: in full to OUT/attention.json (kept across a kill: not
    measured twice), the per-model means into the run's summary."""
    from ftgen.analysis import analyze_attention
    from ftgen.files import atomic_write_json, read_json
    from ftgen.tasks import load_task

    path = out / "attention.json"
    if not path.exists():
        task = load_task(spec.task, config.task_dirs)
        args = {"task": task, "test_set": spec.test_set, "shots": spec.shots, "records": spec.records}
        result = {
            name: analyze_attention(model, **args, data_dir=config.data_dir, fmt=spec.fmt)
            for name, model in (("base", spec.base), ("tuned", str(out)))
        }
        atomic_write_json(path, result)
    result = read_json(path)
    first = result["tuned"]
    return {"test_set": first["test_set"], "shots": first["shots"]} | {n: r["mean"] for n, r in result.items()}


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
    metrics["environment"] = eval_environment(job, model)
    return {"metrics": metrics, "predictions": result.predictions, "seconds": time.perf_counter() - t0}


def eval_environment(job: EvalJob, model) -> dict:
    """What a report cannot learn later about a cell: device, dtype, versions, and the base model's identity."""
    from ftgen.environment import model_identity, runtime

    return {**runtime(model), "model": model_identity(job.model_path, model) if job.base else None}
