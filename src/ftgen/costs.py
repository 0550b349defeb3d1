"""How long a study will take on this machine: a cost model from character counts, calibrated by the studies
measured here before or by rates measured on this device (`ftgen study --dry-run [--calibrate]` prints it).

Throughput of the default model (SmolLM2-135M, fp32, 1 thread per unit) measured by configs/quick.yaml on the
2-core development CPU while other work shared it (load ~4); other models are scaled by parameter count.
`--dry-run --calibrate` replaces these constants by `UnitRates` measured on the user's device with the study's
own model (ftgen.study_rates): that is how a GPU is estimated. After a study, the ratio of measured to
estimated seconds per kind of unit, over the units it finished, is saved (`calibration_path()`) and used from
then on for the constants (not for measured rates); a study that finished nothing leaves the file as it was.
"""

from __future__ import annotations

import functools
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from ftgen.data import read_raw_records
from ftgen.files import atomic_write_text
from ftgen.plan import CellSpec, InterpolationSpec, Plan, RunSpec, train_file
from ftgen.store import Store
from ftgen.tasks import TaskDef

REF_PARAMS = 135e6
CPU_TRAIN_TOKENS_S = 60.0  # training tokens (forward + backward + optimizer step) per second
CPU_PREFILL_TOKENS_S = 110.0  # prompt tokens per second in evaluation (a shared prefix counted once)
CPU_DECODE_STEPS_S = 1.1  # greedy decoding steps per second for a batch
CPU_MODEL_LOAD_S = 4.0
CHARS_PER_TOKEN = 3.6  # English text, BPE tokenizers of 32k-50k entries
KINDS = ("train", "classify", "generate")


@functools.lru_cache(maxsize=64)
def param_count(model: str) -> float:
    """Parameters of a model: counted from a `random:CONFIG`'s shape, else guessed from its name (`Llama-2-7b`
    -> 7e9); the default model's otherwise."""
    if model in ("default", "SmolLM2-135M-Instruct"):
        return REF_PARAMS
    if model.startswith("random:") and model_config(model):
        return float(params_of(_shape(model)))
    m = re.search(r"(\d+(?:\.\d+)?)\s*([bBmM])\b", model.replace("-", " ").replace("_", " "))
    if m:
        return float(m[1]) * (1e9 if m[2] in "bB" else 1e6)
    return REF_PARAMS


@dataclass(frozen=True)
class UnitRates:
    """Throughput in the cost model's own units: training tokens and prompt tokens as counted from characters
    (CHARS_PER_TOKEN), greedy decoding steps of a batch, seconds to load the model. `source` says where they
    come from (the constants below, or a calibration measured on this machine: ftgen.study_calibration)."""

    train_tokens_s: float = CPU_TRAIN_TOKENS_S
    prefill_tokens_s: float = CPU_PREFILL_TOKENS_S
    decode_steps_s: float = CPU_DECODE_STEPS_S
    load_s: float = CPU_MODEL_LOAD_S
    train_extra_s: float = 0.0  # a training run's seconds besides training, loading, saving: the drift analysis
    auto_batch: int = 16  # the decoding batch that batch_size "auto" reaches (16 on a CPU; measured on a GPU)
    source: str = "constants"


class CostModel:
    """Seconds of each unit of a plan (mean characters per file read once). `rates`: measured rates of a model
    (ftgen.study_calibration), used as they are; a model without them gets the CPU constants scaled by its
    parameter count."""

    def __init__(self, plan: Plan, rates: dict[str, UnitRates] | None = None):
        self.plan = plan
        self.rates = rates or {}
        self._chars: dict[tuple, tuple[float, float, int]] = {}

    def avg_chars(self, path: Path, task: TaskDef, fmt: int, n: int | None) -> tuple[float, float, int]:
        """Mean characters of the filled prompt and of the gold answer over the first n records, and their count."""
        key = (str(path), task.name, fmt, n)
        if key not in self._chars:
            rows = [r for r in read_raw_records(path)[:n] if isinstance(r, dict)]
            prompt = answer = 0
            for r in rows:
                vals = {f: str(r.get(task.field_map.get(f, f), "")) for f in task.fields}
                prompt += len(task.templates[min(fmt, len(task.templates) - 1)].format_map(vals))
                answer += len(str(r.get(task.field_map.get("output", "output"), "")))
            self._chars[key] = (prompt / max(len(rows), 1), answer / max(len(rows), 1), len(rows))
        return self._chars[key]

    def rates_of(self, model: str) -> tuple[UnitRates, float]:
        """(rates, scale): measured rates at scale 1, else the constants and the parameter-count scale."""
        if model in self.rates:
            return self.rates[model], 1.0
        return UnitRates(), param_count(model) / REF_PARAMS

    def work(self, spec: RunSpec | CellSpec) -> tuple[str, dict[str, float]]:
        """(kind, work) of one unit: train_tokens (LoRA discounted), prefill_tokens, decode_steps (of a batch)."""
        res = self.plan.resolved
        if isinstance(spec, InterpolationSpec):  # load two models in fp32, mix them, save one
            return "train", {"model_loads": 3.0}
        if isinstance(spec, RunSpec):
            task = res.tasks[spec.train_task]
            path = train_file(res, spec.train_task, spec.train_set, spec.size)
            p, a, _ = self.avg_chars(path, task, 0, spec.size)
            tokens = spec.size * (p + a) * (1 + spec.fticl_k) / CHARS_PER_TOKEN * spec.epochs
            factor = 0.7 if spec.lora_r else 1.0  # LoRA still back-propagates through every activation
            return "train", {"train_tokens": tokens * factor}
        params = spec.params
        task = res.tasks[params.task]
        p, a, n = self.avg_chars(res.files[params.task].test[params.test_set], task, params.fmt, params.limit)
        prefix = params.shots * (p + a) / CHARS_PER_TOKEN
        if task.kind == "classification":
            labels = sum(len(lab) for lab in task.labels) / CHARS_PER_TOKEN + len(task.labels)
            return "classify", {"prefill_tokens": n * (p / CHARS_PER_TOKEN + labels) + prefix}
        # a base model often runs to max_new_tokens; a fine-tuned one stops after about its gold length
        most = params.max_new_tokens or task.max_new_tokens
        new = most if spec.run is None else min(most, 2 * a / CHARS_PER_TOKEN + 4)
        batch = params.batch_size if isinstance(params.batch_size, int) else self.rates_of(spec.model)[0].auto_batch
        return "generate", {"prefill_tokens": n * p / CHARS_PER_TOKEN + prefix, "decode_steps": -(-n // batch) * new}

    def unit(self, spec: RunSpec | CellSpec) -> tuple[str, float]:
        """(kind, seconds) of one unit (a training run: with loading the model and saving it)."""
        kind, w = self.work(spec)
        r, scale = self.rates_of(spec.model)
        seconds = w.get("train_tokens", 0) / r.train_tokens_s + w.get("prefill_tokens", 0) / r.prefill_tokens_s
        seconds += w.get("decode_steps", 0) / r.decode_steps_s
        if "model_loads" in w:  # an interpolation: loads and a save, no training
            seconds += w["model_loads"] * r.load_s
        elif kind == "train":
            seconds += 2 * r.load_s + r.train_extra_s
        return kind, seconds * scale


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
    if not isinstance(cal, dict) or cal.get("constants") != _constants():
        return {}
    factors = [cal.get(k, 1.0) for k in KINDS]
    return cal if all(isinstance(f, (int, float)) and 0 < f < float("inf") for f in factors) else {}


def save_calibration(plan: Plan, store: Store, finished: set[str]) -> None:
    """measured / estimated seconds per kind of unit, from the units this study finished (`finished` keys)."""
    if not finished:
        return  # only finished work may update the machine's calibration
    done = {r["key"]: r["seconds"] for t in ("runs", "cells") for r in store.rows(t, "status='done'")}
    costs = CostModel(plan)
    est: dict[str, float] = dict.fromkeys(KINDS, 0.0)
    got: dict[str, float] = dict.fromkeys(KINDS, 0.0)
    for spec in [*plan.runs, *plan.cells]:
        if spec.key in finished and done.get(spec.key):
            kind, seconds = costs.unit(spec)
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


def estimate_at_once(cfg) -> int:
    """Units the study runs at once: its local workers, or the Ray cluster's CPUs per evaluation unit."""
    if cfg.executor == "ray":
        return max(1, int((cfg.ray.num_cpus or os.cpu_count() or 1) // cfg.ray.eval_cpus))
    return cfg.workers


def estimate(plan: Plan, done_keys: set[str] = frozenset(), rates: dict[str, UnitRates] | None = None) -> dict:
    """Seconds for the units not done yet: from `rates` measured on this machine for a model (see CostModel),
    else from the constants calibrated by the last study measured on this machine."""
    rates = rates or {}
    cal = load_calibration()
    costs = CostModel(plan, rates)
    by_kind: dict[str, float] = dict.fromkeys(KINDS, 0.0)
    units: dict[str, int] = dict.fromkeys(KINDS, 0)
    for spec in [*plan.runs, *plan.cells]:
        if spec.key not in done_keys:
            kind, seconds = costs.unit(spec)
            by_kind[kind] += seconds * (1.0 if spec.model in rates else cal.get(kind, 1.0))
            units[kind] += 1
    models = {(c.run.key if c.run else c.model): c.model for c in plan.cells if c.key not in done_keys}
    load_s = sum(costs.rates_of(m)[0].load_s for m in models.values())
    eval_s = by_kind["classify"] + by_kind["generate"] + load_s
    at_once = estimate_at_once(plan.cfg)
    return {
        "train_s": by_kind["train"],
        "eval_s": eval_s,
        "by_kind": by_kind,
        "units": units,
        "load_s": load_s,
        "at_once": at_once,
        "total_s": (by_kind["train"] + eval_s) / at_once,
        "calibrated": bool(cal) and len(rates) < len(plan.cfg.models),
        "calibration": cal,
        "measured": sorted(rates),
    }


# ---------------------------------------------------------------- disk


def model_config(model: str) -> dict | None:
    """The config.json of a model if it is on this machine (the default model's cache, a local dir, the Hugging
    Face cache); None otherwise. Never downloads."""
    from ftgen.models import DEFAULT_MODEL, cache_dir

    folders = [cache_dir() / "models" / DEFAULT_MODEL] if model in ("default", DEFAULT_MODEL) else [Path(model)]
    files = [folder / "config.json" for folder in folders]
    if model.startswith("random:"):  # a random-weight model (ftgen.models.random_model): its JSON, or its dir's
        source = Path(model.removeprefix("random:")).expanduser()
        files = [source if source.suffix == ".json" else source / "config.json"]
    for file in files:
        try:
            return json.loads(file.read_text())
        except (OSError, ValueError):
            pass
    try:
        from huggingface_hub import try_to_load_from_cache

        path = try_to_load_from_cache(model, "config.json")
        return json.loads(Path(path).read_text()) if isinstance(path, str) else None
    except Exception:  # not a Hub id, no cache: the name's guess below
        return None


def _shape(model: str) -> dict:
    """Hidden size, layers, MLP size, attention and key/value widths, vocabulary, tied embeddings: from the model's
    config.json, else guessed from its parameter count with Llama-2's proportions (layers = hidden / 128,
    MLP = 2.7 x hidden)."""
    c = model_config(model) or {}
    if all(k in c for k in ("hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads")):
        d, heads = c["hidden_size"], c["num_attention_heads"]
        head_dim = c.get("head_dim") or d // heads
        return {
            "d": d,
            "layers": c["num_hidden_layers"],
            "ff": c["intermediate_size"],
            "q": heads * head_dim,
            "kv": c.get("num_key_value_heads", heads) * head_dim,
            "vocab": c.get("vocab_size", 32000),
            "tied": bool(c.get("tie_word_embeddings", False)),
            "exact": True,
        }
    d = round((param_count(model) * 128 / 12) ** (1 / 3))
    return {"d": d, "layers": max(1, d // 128), "ff": int(2.7 * d), "q": d, "kv": d, "vocab": 32000, "tied": False}


def params_of(shape: dict) -> int:
    """Parameters of a Llama-shaped model."""
    d, ff, q, kv = shape["d"], shape["ff"], shape["q"], shape["kv"]
    layer = d * q + 2 * d * kv + q * d + 3 * d * ff + 2 * d
    return shape["vocab"] * d * (1 if shape["tied"] else 2) + shape["layers"] * layer + d


def lora_params(shape: dict, r: int, targets: list[str]) -> int:
    """Parameters of a LoRA adapter of rank r: r x (fan-in + fan-out) per adapted linear layer (all-linear:
    every linear layer of the blocks; PEFT leaves the LM head out)."""
    d, ff, q, kv = shape["d"], shape["ff"], shape["q"], shape["kv"]
    shapes = {
        "q_proj": (d, q),
        "k_proj": (d, kv),
        "v_proj": (d, kv),
        "o_proj": (q, d),
        "gate_proj": (d, ff),
        "up_proj": (d, ff),
        "down_proj": (ff, d),
    }
    chosen = shapes if targets == ["all-linear"] else {k: v for k, v in shapes.items() if k in targets}
    return shape["layers"] * r * sum(i + o for i, o in chosen.values())


def fmt_bytes(n: float) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def disk_estimate(plan: Plan) -> dict:
    """Disk a study's trained models take (the results store and logs are small beside them).

    Per run: a full fine-tune saves the fp32 weights, 4 B x params (safetensors; the tokenizer adds a few MB);
    a LoRA run its fp32 adapter. While a run trains with `save_every`, each checkpoint holds the fp32 weights and
    AdamW's two moments of the trained parameters (4 B x params + 8 B x trained); keep_checkpoints of them stay,
    plus the one being written. `keep_models: false` keeps at most one model per unit running at once.
    """
    cfg = plan.cfg
    shapes = {m: _shape(m) for m in cfg.models}
    finals, ckpts, lines = [], [], {}
    for run in plan.runs:
        shape = shapes[run.model]
        n = params_of(shape)
        tc = run.config
        interpolated = isinstance(run, InterpolationSpec)  # a full model, never checkpointed
        lora = tc.lora_r and not interpolated
        trained = lora_params(shape, tc.lora_r, tc.lora_targets) if lora else n
        finals.append(4 * trained)
        ckpts.append((4 * n + 8 * trained) * (tc.keep_checkpoints + 1) if tc.save_every and not interpolated else 0)
        how = "exact shape" if shape.get("exact") else "shape guessed from the name"
        kind = f"LoRA r={tc.lora_r} adapter" if lora else "full fp32 checkpoint"
        lines.setdefault(
            (run.model, kind), f"{run.model}: {n / 1e9:.2f}B params ({how}); {kind} {fmt_bytes(4 * trained)}"
        )
    at_once = estimate_at_once(cfg)
    # keep_models: false: a trained model lives while its cells run; interpolated models are built as soon as their
    # run is trained, ahead of their cells, so all of them may be on disk at once
    interpolated = sum(isinstance(r, InterpolationSpec) for r in plan.runs)
    alive = len(finals) if cfg.keep_models else min(len(finals), at_once + interpolated)
    models = sum(finals) if cfg.keep_models else sum(sorted(finals)[-alive:]) if finals else 0
    checkpoints = sum(sorted(ckpts)[-at_once:]) if ckpts else 0
    return {
        "runs": len(finals),
        "keep_models": cfg.keep_models,
        "models_alive": alive,
        "models_bytes": models,
        "checkpoints_bytes": checkpoints,
        "total_bytes": models + checkpoints,
        "models": list(lines.values()),
    }
