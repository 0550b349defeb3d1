"""Throughput measured on the device that will do the work: the rates a study's time estimate needs.

`calibrate(model, data_dir)` loads the model once for evaluation and once for training, times a few batches
of each kind of unit on the current device and returns `Rates` in the units of the study's cost model:
    train_tokens_s     trained tokens per second (forward, backward, optimizer step: ftgen's own step)
    prefill_tokens_s   prompt tokens per second in classification (a shared prefix counted once)
    decode_steps_s     greedy decoding steps per second for a batch (generation)
    load_s             seconds to load the model for evaluation
with the peak memory of each kind of unit and the disk one fully fine-tuned model takes. The pieces
(`time_train_steps`, `time_classification`, `time_generation`) take a loaded model, for callers that hold
one already.

Every timing synchronises the device, and each kind runs once untimed first (kernel selection, caches).
Peak memory: CUDA's allocator statistics on a GPU; on a CPU the resident weights (and optimizer state)
plus the most bytes of tensors live at once during the work (ftgen.memory.SimulatedLimit), measured in a
second, untimed pass. A model given as `random:CONFIG` times like the real one: throughput does not depend
on the values of the weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from accelerate.utils.memory import clear_device_cache

from ftgen.device import current_device, device_name, timed
from ftgen.errors import UserError
from ftgen.memory import SimulatedLimit, is_out_of_memory


@dataclass
class Rates:
    """Measured throughput of one model on one device (units: see the module docstring)."""

    model: str
    device: str
    dtype: str
    params: int
    load_s: float
    train_tokens_s: float | None = None
    prefill_tokens_s: float | None = None
    decode_steps_s: float | None = None
    peak_bytes: dict = field(default_factory=dict)  # unit kind (train, classify, generate) -> bytes
    checkpoint_bytes: int = 0  # disk of one fully fine-tuned model: fp32 safetensors
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def _tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def measure(work: Callable[[], object], device: torch.device, resident_bytes: Callable[[], int]) -> tuple[float, int]:
    """(seconds of one synchronised run of `work`, its peak memory in bytes).

    CUDA: one run, the allocator's peak. CPU: a timed run, then a second run under the live-tensor counter
    (which slows it down), plus `resident_bytes()` (weights, optimizer state: allocated before, not counted).
    """
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        with timed(device) as t:
            work()
        return t["seconds"], int(torch.cuda.max_memory_allocated(device))
    with timed(device) as t:
        work()
    with SimulatedLimit(None) as counter:
        work()
    return t["seconds"], resident_bytes() + counter.peak


# ---------------------------------------------------------------- training steps


def time_train_steps(
    model,
    examples: list,
    pad_id: int,
    *,
    batch_size: int = 16,
    micro_batch_size: int = 16,
    micro_batch_tokens: int | None = 4096,
    compute_dtype: torch.dtype = torch.float32,
    steps: int = 2,
    lr: float = 2e-5,
) -> dict:
    """Trained tokens per second of ftgen's step on `model` (fp32 weights, trained in place: pass a copy).

    One optimizer step = `batch_size` examples of `examples` (ftgen.train.Example), cut into micro-batches
    by ftgen's own epoch plan; forward and backward under autocast, gradient clipping, fused AdamW. The
    first step is a warm-up; `steps` more are timed.
    """
    from ftgen.train import ResponseLoss, TrainConfig, collate, epoch_plan, make_optimizer

    device = next(model.parameters()).device
    lengths = [len(e.ids) for e in examples]
    plan = epoch_plan(lengths, batch_size, micro_batch_size, micro_batch_tokens, seed=0, epoch=0)
    if len(plan) < steps + 1:
        raise UserError(f"calibration: {len(examples)} examples make {len(plan)} steps; {steps + 1} needed")
    loss_fn = ResponseLoss(model).train()
    optimizer = make_optimizer(model, TrainConfig(task="calibration", lr=lr))
    autocast = torch.autocast(device.type, dtype=compute_dtype, enabled=compute_dtype != torch.float32)

    def step(k: int) -> None:
        window = [i for mb in plan[k][0] if mb for i in mb]
        n_resp = sum(examples[i].n_answer for i in window)
        for mb in plan[k][0]:
            batch = collate([examples[i] for i in mb], pad_id, device)
            with autocast:
                loss = loss_fn(**batch)
            (loss / n_resp).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def resident() -> int:
        state = [t for s in optimizer.state.values() for t in s.values()]
        return _tensor_bytes(model.parameters()) + _tensor_bytes(state)

    step(0)  # warm-up: allocations, kernel selection, the optimizer's state
    seconds, peak = measure(lambda: [step(k) for k in range(1, steps + 1)], device, resident)
    tokens = sum(lengths[i] for k in range(1, steps + 1) for mb in plan[k][0] if mb for i in mb)
    return {"tokens": tokens, "seconds": seconds, "tokens_s": tokens / seconds, "peak_bytes": peak}


# ---------------------------------------------------------------- evaluation batches


def _eval_pass(model, tokenizer, task, records, shots, batch_size) -> tuple[dict, int]:
    """(metrics of one timed evaluation, peak bytes), after an untimed warm-up on two records."""
    from ftgen.evaluate import evaluate

    device = next(model.parameters()).device
    evaluate(model, tokenizer, task, records[:2], shots=shots, batch_size=batch_size)
    result: dict = {}

    def work() -> None:
        metrics = evaluate(model, tokenizer, task, records, shots=shots, batch_size=batch_size).metrics
        result.setdefault("metrics", metrics)  # the timed run's (a CPU runs it again to count memory)

    seconds, peak = measure(work, device, lambda: _tensor_bytes(model.parameters()))
    return {**result["metrics"], "seconds": seconds}, peak


def time_classification(model, tokenizer, task, records, shots, *, batch_size: int | str = "auto") -> dict:
    """Prompt tokens per second of classification cells (the engine's prefill work over the records)."""
    m, peak = _eval_pass(model, tokenizer, task, records, shots, batch_size)
    return {
        "records": m["n"],
        "seconds": m["seconds"],
        "prefill_tokens_s": m["prompt_tokens"] / m["seconds"],
        "records_s": m["n"] / m["seconds"],
        "batch_size": m["batch_size"],
        "peak_bytes": peak,
    }


def time_generation(
    model, tokenizer, task, records, shots, *, prefill_tokens_s: float, batch_size: int | str = "auto"
) -> dict:
    """Greedy decoding steps per second (per batch) of generation cells; the prefill share, at the measured
    `prefill_tokens_s`, is taken out first."""
    m, peak = _eval_pass(model, tokenizer, task, records, shots, batch_size)
    decode_s = max(m["seconds"] - m["prompt_tokens"] / prefill_tokens_s, 1e-9)
    return {
        "records": m["n"],
        "seconds": m["seconds"],
        "decode_steps": m["decode_steps"],
        "decode_steps_s": m["decode_steps"] / decode_s,
        "records_s": m["n"] / m["seconds"],
        "batch_size": m["batch_size"],
        "peak_bytes": peak,
    }


# ---------------------------------------------------------------- one call: all kinds


def _train_examples(model_name: str, data_dir, task: str, n: int, max_length: int, tokenizer) -> list:
    from ftgen.train import TrainConfig, load_records, tokenize

    cfg = TrainConfig(model=model_name, task=task, train_size=n, data_dir=str(data_dir), max_length=max_length)
    return tokenize(cfg, *load_records(cfg), tokenizer).examples


def calibrate(
    model_name: str,
    data_dir: str | Path,
    *,
    dtype: str = "auto",
    batch_size: int | str = "auto",
    train: dict | None = None,
    classify: tuple[str, str, int, int] = ("sentiment", "sst2", 64, 4),
    generate: tuple[str, str, int, int] = ("question", "socialqa", 32, 1),
    max_new_tokens: int | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> Rates:
    """Rates of `model_name` on the current device (see the module docstring).

    `train`: {task, records, max_length, batch_size, micro_batch_size, micro_batch_tokens, steps, lora_r};
    None skips training. `classify` / `generate`: (task, test set, records, shots). A kind that runs out
    of memory is left None with a note saying so; the others are still measured.
    """
    from ftgen.models import choose_dtype, load_model

    device = current_device()
    compute = choose_dtype(dtype, device.type)
    with timed(device) as load:
        model, tokenizer = load_model(model_name, dtype=dtype)
    n_params = sum(p.numel() for p in model.parameters())
    rates = Rates(model_name, device_name(device), str(compute).removeprefix("torch."), n_params, load["seconds"])
    rates.checkpoint_bytes = 4 * n_params
    log(f"calibrate: {model_name} ({n_params / 1e6:.0f}M params) on {rates.device}, {rates.dtype}")
    _calibrate_eval(rates, model, tokenizer, data_dir, batch_size, classify, generate, max_new_tokens, log)
    del model
    clear_device_cache(garbage_collection=True)
    if train is not None:
        _calibrate_train(rates, model_name, data_dir, compute, train, tokenizer, log)
    return rates


def _calibrate_eval(rates, model, tokenizer, data_dir, batch_size, classify, generate, max_new_tokens, log) -> None:
    from ftgen.eval_run import load_set

    try:
        task, records, shots = load_set(data_dir, *classify)
        c = time_classification(model, tokenizer, task, records, shots, batch_size=batch_size)
        rates.prefill_tokens_s, rates.peak_bytes["classify"] = c["prefill_tokens_s"], c["peak_bytes"]
        log(f"calibrate: classification {c['records_s']:.1f} records/s at batch {c['batch_size']}")
        task, records, shots = load_set(data_dir, *generate)
        if max_new_tokens:
            task = task.model_copy(update={"max_new_tokens": max_new_tokens})
        g = time_generation(
            model, tokenizer, task, records, shots, prefill_tokens_s=c["prefill_tokens_s"], batch_size=batch_size
        )
        rates.decode_steps_s, rates.peak_bytes["generate"] = g["decode_steps_s"], g["peak_bytes"]
        log(f"calibrate: generation {g['records_s']:.1f} records/s at batch {g['batch_size']}")
    except UserError as e:
        rates.notes.append(f"evaluation not measured: {e}")


def _calibrate_train(rates, model_name, data_dir, compute, train: dict, tokenizer, log) -> None:
    from ftgen.models import load_model

    t = {"task": "sentiment", "records": 48, "max_length": 1024, "batch_size": 16, "micro_batch_size": 16}
    t |= {"micro_batch_tokens": 4096, "steps": 2, "lora_r": None} | train
    examples = _train_examples(model_name, data_dir, t["task"], t["records"], t["max_length"], tokenizer)
    model = None
    try:
        model, _ = load_model(model_name, dtype="fp32")
        if t["lora_r"]:
            from peft import LoraConfig, get_peft_model

            model = get_peft_model(
                model, LoraConfig(r=t["lora_r"], lora_alpha=2 * t["lora_r"], target_modules="all-linear")
            )
            rates.notes.append(f"training timed with LoRA r={t['lora_r']}")
        r = time_train_steps(
            model, examples, tokenizer.pad_token_id, batch_size=t["batch_size"], micro_batch_size=t["micro_batch_size"],
            micro_batch_tokens=t["micro_batch_tokens"], compute_dtype=compute, steps=t["steps"],
        )  # fmt: skip
        rates.train_tokens_s, rates.peak_bytes["train"] = r["tokens_s"], r["peak_bytes"]
        log(f"calibrate: training {r['tokens_s']:.0f} tokens/s")
    except Exception as e:
        if not is_out_of_memory(e):
            raise
        rates.notes.append(f"training does not fit on {rates.device} (out of memory): not measured")
    finally:
        del model
        clear_device_cache(garbage_collection=True)
