"""A study's throughput measured on this machine: `ftgen study CONFIG --dry-run --calibrate`.

For each model of the study, one unit of each kind runs in miniature on the current device with the study's
own settings (dtype, threads, batch sizes, max length, shots, prompt format):
    train      a warm-up step, then CALIB_TRAIN_STEPS timed optimizer steps of the model's first training run
    classify   the first CALIB_RECORDS records of its costliest classification cell of the base model
    generate   one decoding batch of its costliest generation cell, at most CALIB_NEW_TOKENS new tokens
timed by ftgen.calibrate (synchronised; peak memory from CUDA's allocator, or counted on a CPU). Each one
becomes a rate in the cost model's units (ftgen.costs.CostModel.work, tokens counted from characters): the
cost model's work of the miniature unit divided by its measured seconds, so the cost model's characters-per-
token guess cancels out. Decoding is measured in steps of a batch (the prefill share, at the measured
prefill rate, taken out first). ftgen.costs.estimate extrapolates the rates over the whole grid.

The drift analysis after each training run (`analysis: {drift: true}`) is timed too, the base model against
itself (the same work). What it does not see: a fresh process's first-run costs (imports), saving a model
(counted as one more load), and other work sharing the machine between calibration and study.

The rates and peaks are cached in $FTGEN_CACHE/calibration/ (one JSON per model, device, dtypes and
threads); a dry run without --calibrate uses a cached one and says so. A `random:CONFIG` model calibrates
like a real one (a 7B shape, no download): throughput does not depend on the weights' values. Nothing is
written in the study's output directory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path

from ftgen.costs import REF_PARAMS, CostModel, UnitRates, param_count
from ftgen.plan import CellSpec, Plan

CALIB_RECORDS = 16  # classification records timed (the costliest cell's first ones)
CALIB_NEW_TOKENS = 8  # decoding steps timed per generation batch
CALIB_TRAIN_STEPS = 2  # optimizer steps timed, after one warm-up step
CALIB_MAX_BATCH = 64  # records of the one generation batch timed, when the cell's batch size is "auto"


@dataclasses.dataclass
class ModelRates:
    """One model's measured rates on one device (cost-model units), peak memory per unit kind, raw numbers."""

    model: str
    device: str
    dtypes: str  # "eval fp32, train fp32"
    threads: int | None
    rates: UnitRates
    peak_bytes: dict = dataclasses.field(default_factory=dict)  # kind -> bytes
    measured: dict = dataclasses.field(default_factory=dict)  # kind -> {seconds, tokens, records, ...}
    notes: list[str] = dataclasses.field(default_factory=list)
    when: float = 0.0

    def as_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> ModelRates:
        return cls(**(d | {"rates": UnitRates(**d["rates"])}))


# ---------------------------------------------------------------- what a model's units run with


def _unit_settings(plan: Plan, model: str) -> tuple[str, str, int | None]:
    """(evaluation dtype, training dtype, threads) of a model's units in this study."""
    cells = [c for c in plan.cells if c.model == model]
    runs = [r for r in plan.runs if r.model == model]
    eval_dtype = cells[0].params.dtype if cells else "auto"
    train_dtype = runs[0].config.dtype if runs else eval_dtype
    return eval_dtype, train_dtype, plan.cfg.threads


def cache_file(model: str, device: str, dtypes: str, threads: int | None) -> Path:
    """$FTGEN_CACHE/calibration/<model>-<hash of model, device, dtypes, threads>.json."""
    from ftgen.models import cache_dir

    ident = json.dumps([model, device, dtypes, threads])
    stem = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in model.rsplit("/", 1)[-1])[-40:]
    return cache_dir() / "calibration" / f"{stem}-{hashlib.sha256(ident.encode()).hexdigest()[:12]}.json"


def _dtypes(plan: Plan, model: str, device_type: str) -> tuple[str, str, str, int | None]:
    from ftgen.models import choose_dtype

    eval_dtype, train_dtype, threads = _unit_settings(plan, model)
    ev = str(choose_dtype(eval_dtype, device_type)).removeprefix("torch.")
    tr = str(choose_dtype(train_dtype, device_type)).removeprefix("torch.")
    return eval_dtype, train_dtype, f"eval {ev}, train {tr}", threads


def cached_rates(plan: Plan) -> dict[str, ModelRates]:
    """The cached calibrations of the study's models on this device, with its dtypes and threads (may be none)."""
    from ftgen.models import cache_dir

    if not (cache_dir() / "calibration").is_dir():
        return {}  # nothing cached: no torch import for a plain dry run
    from ftgen.device import current_device, device_name

    device = current_device()
    found = {}
    for model in plan.cfg.models:
        *_, dtypes, threads = _dtypes(plan, model, device.type)
        path = cache_file(model, _device_label(device, threads, device_name), dtypes, threads)
        try:
            found[model] = ModelRates.from_json(json.loads(path.read_text()))
        except (OSError, ValueError, TypeError, KeyError):
            continue
    return found


def _device_label(device, threads: int | None, device_name: Callable) -> str:
    """The device's name; a CPU's with the threads a unit runs with (not this process's)."""
    name = device_name(device)
    return name.split(" (cpu,")[0] + f" (cpu, {threads or 'all'} threads)" if device.type == "cpu" else name


# ---------------------------------------------------------------- measuring


def _costliest(costs: CostModel, cells: list[CellSpec], kind: str) -> CellSpec | None:
    chosen = [c for c in cells if costs.work(c)[0] == kind]
    return max(chosen, key=lambda c: costs.unit(c)[1]) if chosen else None


def _mini_cell(cell: CellSpec, records: int, new_tokens: int | None = None) -> CellSpec:
    params = cell.params.model_copy(update={"limit": min(cell.params.limit or records, records)})
    if new_tokens is not None:
        params = params.model_copy(update={"max_new_tokens": new_tokens})
    return dataclasses.replace(cell, params=params)


def _time_cell(model, tokenizer, cell: CellSpec, plan: Plan) -> tuple[dict, float, int]:
    """(metrics, seconds, peak bytes) of one evaluation cell, after a warm-up on its first two records."""
    from ftgen.calibrate import measure
    from ftgen.data import load_pool, load_test_set
    from ftgen.evaluate import evaluate
    from ftgen.prompts import select_shots
    from ftgen.tasks import load_task

    p, data_dir = cell.params, plan.resolved.data_dir
    task = load_task(p.task, list(plan.cfg.task_dirs))
    if p.max_new_tokens is not None:
        task = task.model_copy(update={"max_new_tokens": p.max_new_tokens})
    records = load_test_set(data_dir, task, p.test_set, limit=p.limit, skip_invalid=True).records
    shots = select_shots(load_pool(data_dir, task, p.test_set).records, p.shots) if p.shots else []

    def run(rows):
        return evaluate(
            model, tokenizer, task, rows, shots=shots, fmt=p.fmt, scoring=p.scoring or "sum",
            batch_size=p.batch_size, max_length=p.max_length,
        )  # fmt: skip

    run(records[:2])  # warm-up
    result: dict = {}
    params = list(model.parameters())
    device = params[0].device
    seconds, peak = measure(
        lambda: result.setdefault("m", run(records).metrics), device, lambda: sum(t.nbytes for t in params)
    )
    return result["m"], seconds, peak


def _measure_eval(mr: ModelRates, plan: Plan, costs: CostModel, log: Callable[[str], None]) -> dict:
    """Load the model for evaluation, time its costliest classification and generation cells in miniature."""
    from ftgen.device import current_device, timed
    from ftgen.models import load_model

    model_name = mr.model
    base = [c for c in plan.cells if c.model == model_name and c.run is None] or [
        c for c in plan.cells if c.model == model_name
    ]
    if not base:
        return {}
    dtype = base[0].params.dtype
    with timed(current_device()) as load:
        model, tokenizer = load_model(model_name, dtype=dtype)
    rates = {"load_s": load["seconds"]}
    cell = _costliest(costs, base, "classify")
    if cell is not None:
        mini = _mini_cell(cell, CALIB_RECORDS)
        m, seconds, peak = _time_cell(model, tokenizer, mini, plan)
        rates["prefill_tokens_s"] = costs.work(mini)[1]["prefill_tokens"] / seconds
        mr.peak_bytes["classify"] = peak
        mr.measured["classify"] = {"cell": mini.describe(), "records": m["n"], "seconds": round(seconds, 3)}
        log(f"calibrate: {mini.describe()}: {m['n']} records in {seconds:.1f}s")
    cell = _costliest(costs, base, "generate")
    if cell is not None:
        batch = cell.params.batch_size if isinstance(cell.params.batch_size, int) else CALIB_MAX_BATCH
        most = cell.params.max_new_tokens or plan.resolved.tasks[cell.params.task].max_new_tokens
        mini = _mini_cell(cell, batch, min(most, CALIB_NEW_TOKENS))
        m, seconds, peak = _time_cell(model, tokenizer, mini, plan)
        prefill_rate = rates.get("prefill_tokens_s") or costs.rates_of(model_name)[0].prefill_tokens_s
        prefill_s = costs.work(mini)[1]["prefill_tokens"] / prefill_rate
        decode_s = max(seconds - prefill_s, 0.1 * seconds)  # a prefill guess above the whole time: decoding still costs
        rates["decode_steps_s"] = m["decode_steps"] / decode_s
        if cell.params.batch_size == "auto":  # what auto reaches on this device: all the rows fit, or less
            from ftgen.memory import AUTO_MAX_BATCH, CPU_AUTO_BATCH

            fits_all = AUTO_MAX_BATCH if next(model.parameters()).device.type == "cuda" else CPU_AUTO_BATCH
            rates["auto_batch"] = m["batch_size"] if m["batch_size"] < m["n"] else fits_all
        mr.peak_bytes["generate"] = peak
        mr.measured["generate"] = {
            "cell": mini.describe(), "records": m["n"], "decode_steps": m["decode_steps"], "seconds": round(seconds, 3)
        }  # fmt: skip
        log(f"calibrate: {mini.describe()}: {m['n']} records, {m['decode_steps']} decoding steps in {seconds:.1f}s")
    if plan.runs and plan.cfg.analysis.drift:
        rates["train_extra_s"] = _time_drift(model, tokenizer, plan) + 2 * rates["load_s"]
        mr.measured["drift"] = {"seconds": round(rates["train_extra_s"], 3)}
        log(f"calibrate: drift analysis after a training run ~{rates['train_extra_s']:.1f}s (with its two loads)")
    del model
    return rates


def _time_drift(model, tokenizer, plan: Plan) -> float:
    """Seconds of the drift analysis that follows each training run (ftgen.units.drift_of_run), the base model
    against itself: the same weight comparison and the same forward passes over the probe records."""
    from ftgen.analysis.drift import output_divergence, probe_set, weight_drift
    from ftgen.device import timed

    probes = probe_set(plan.resolved.data_dir, list(plan.resolved.tasks.values()), plan.cfg.analysis.probe_records)
    with timed(next(model.parameters()).device) as t:
        weight_drift(model, model)
        output_divergence(model, model, tokenizer, probes)
    return t["seconds"]


def _measure_train(mr: ModelRates, plan: Plan, costs: CostModel, log: Callable[[str], None]) -> dict:
    """Time a few optimizer steps of the model's first training run (its batch sizes, max length, dtype, LoRA)."""
    from ftgen.calibrate import time_train_steps
    from ftgen.memory import is_out_of_memory
    from ftgen.models import choose_dtype, load_model
    from ftgen.train import load_records, tokenize

    runs = [r for r in plan.runs if r.model == mr.model]
    if not runs:
        return {}
    run = runs[0]
    n = run.config.batch_size * (CALIB_TRAIN_STEPS + 1)
    cfg = run.config.model_copy(update={"train_size": min(n, run.size), "allow_smaller": True})
    model = None
    try:
        model, tokenizer = load_model(mr.model, dtype="fp32")  # the trainer's fp32 master weights
        examples = tokenize(cfg, *load_records(cfg), tokenizer).examples
        if cfg.lora_r:
            from peft import LoraConfig, get_peft_model

            alpha = cfg.lora_alpha or 2 * cfg.lora_r
            model = get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=alpha, target_modules=cfg.lora_targets))
        steps = min(CALIB_TRAIN_STEPS, max(1, -(-len(examples) // cfg.batch_size) - 1))
        r = time_train_steps(
            model, examples, tokenizer.pad_token_id, batch_size=cfg.batch_size,
            micro_batch_size=cfg.micro_batch_size, micro_batch_tokens=_micro_tokens(cfg), steps=steps,
            compute_dtype=choose_dtype(cfg.dtype, next(model.parameters()).device.type), lr=cfg.lr,
        )  # fmt: skip
    except Exception as e:
        if not is_out_of_memory(e):
            raise
        mr.notes.append("training does not fit on this device (out of memory): not measured")
        return {}
    finally:
        del model
    # cost-model tokens per real token of these examples: the cost model's count is from characters
    mini = dataclasses.replace(run, size=len(examples), epochs=1.0)
    per_real = costs.work(mini)[1]["train_tokens"] / sum(len(e.ids) for e in examples)
    mr.peak_bytes["train"] = r["peak_bytes"]
    mr.measured["train"] = {"run": run.describe(), "tokens": r["tokens"], "seconds": round(r["seconds"], 3)}
    log(f"calibrate: {run.describe()}: {steps} steps, {r['tokens']} tokens in {r['seconds']:.1f}s")
    return {"train_tokens_s": r["tokens"] / r["seconds"] * per_real}


def _micro_tokens(cfg) -> int | None:
    value = cfg.micro_batch_tokens
    return value if isinstance(value, int) or value is None else None


def calibrate_model(plan: Plan, model: str, log: Callable[[str], None] = lambda _: None) -> ModelRates:
    """Measure one model's rates with the study's settings on the current device; cache and return them."""
    import torch
    from accelerate.utils.memory import clear_device_cache

    from ftgen.device import current_device, device_name
    from ftgen.files import atomic_write_json

    device = current_device()
    _, _, dtypes, threads = _dtypes(plan, model, device.type)
    label = _device_label(device, threads, device_name)
    mr = ModelRates(model, label, dtypes, threads, UnitRates())
    constants = CostModel(plan)  # the work of a unit is the same with any rates
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)  # as a unit runs (ftgen.units.set_threads)
    try:
        log(f"calibrate: {model} on {label}, {dtypes}")
        measured = _measure_eval(mr, plan, constants, log)
        clear_device_cache(garbage_collection=True)
        measured |= _measure_train(mr, plan, constants, log)
        clear_device_cache(garbage_collection=True)
    finally:
        torch.set_num_threads(before)
    scale = param_count(model) / REF_PARAMS  # a kind not measured keeps the constants, scaled as without --calibrate
    fill = {f: getattr(UnitRates(), f) / scale for f in ("train_tokens_s", "prefill_tokens_s", "decode_steps_s")}
    missing = [f for f in fill if f not in measured]
    if missing:
        mr.notes.append(f"not measured, from the CPU constants: {', '.join(missing)}")
    mr.rates = UnitRates(**(fill | measured), source=f"measured on {label} by --calibrate")
    mr.when = time.time()
    try:
        atomic_write_json(cache_file(model, label, dtypes, threads), mr.as_json())
    except OSError:
        mr.notes.append("the calibration cache is not writable: rates not kept for later dry runs")
    return mr


def calibrate_plan(plan: Plan, log: Callable[[str], None] = lambda _: None) -> dict[str, ModelRates]:
    """Every model of the study, measured (see the module docstring)."""
    return {model: calibrate_model(plan, model, log) for model in plan.cfg.models}


def unit_rates(found: dict[str, ModelRates]) -> dict[str, UnitRates]:
    return {m: r.rates for m, r in found.items()}
