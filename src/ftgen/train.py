"""Supervised fine-tuning (and FTICL) of a causal LM on one task: the paper's recipe, full or LoRA.

The recipe reads top to bottom in `train()`: data -> tokens -> model -> optimizer -> loop -> save. The
config is ftgen.config.TrainConfig; the batch order is ftgen.batching; the loss is ftgen.loss; the model,
optimizer and accelerator are built by ftgen.trainable.

Why a short loop on `accelerate.Accelerator` rather than `transformers.Trainer` / TRL's SFTTrainer
(accelerate still gives DDP / FSDP / DeepSpeed under `accelerate launch`, mixed precision, gradient
sync and sharded checkpoints; transformers gives the model and the schedule; PEFT gives LoRA):
- exact resume: a resumed run ends with the same weights as an uninterrupted one (tested). The
  data order is a pure function of (seed, epoch) and every checkpoint holds model, optimizer,
  schedule, all RNG states and the step together; Trainer does not promise this. A run resumes only
  under the config it started with: its result fields (ftgen.config) equal; settings such as the data
  directory's place or the checkpoint cadence may change.
- the loss of an optimizer step is the sum over the response tokens of its whole accumulation window,
  divided by their count (counted up front from the plan, identical on every process, so no
  all-reduce is needed), not a mean of per-micro-batch means;
- the LM head runs only where a label is kept (ftgen.loss). `ftgen bench train` measures this loop
  against a plain Trainer doing the same epoch (padding to the longest, full logits everywhere).
- length grouping (ftgen.batching): short examples go many to a forward pass, long ones few.

Precision: fp32 master weights always; forward/backward under bf16 autocast where `choose_dtype`
picks bf16 (AdamW updates at lr 2e-5 vanish when the weights themselves are bf16).

Scale-out: the same `ftgen train` under `torchrun` (DDP on CPU, gloo) or `accelerate launch` with a
config of configs/accelerate/ (DDP, FSDP, DeepSpeed ZeRO-3 on GPUs). `batch_size` is global; each
process takes every world-th example of a step, so N processes follow a 1-process run (tested).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ftgen import progress
from ftgen.auto_tokens import resolve_micro_batch_tokens
from ftgen.batching import Example, collate, epoch_plan
from ftgen.checkpoint import STATE_FILE, atomic_dir, latest_checkpoint, prune_checkpoints, read_state
from ftgen.config import FieldError, TrainConfig, changed_result_fields, check_out_dir
from ftgen.errors import UserError
from ftgen.files import atomic_write_json, atomic_write_jsonl, ensure_writable_dir, read_jsonl
from ftgen.loss import ResponseLoss, check_response_loss, mean_loss
from ftgen.loss import response_loss as response_loss  # re-exported: benchmarks import it from here
from ftgen.trackers import check_trackers, end_trackers, log_step, make_trackers, start_trackers
from ftgen.trainable import build_model, make_accelerator, make_optimizer, make_schedule, save_final

# ---------------------------------------------------------------- data


@dataclass
class TrainData:
    examples: list[Example]
    set_name: str
    source: str
    n_records: int
    n_truncated: int
    shots: list[dict]
    load_report: dict


def load_records(cfg: TrainConfig):
    """(task, train DataSet, FTICL shots): every data check runs here, before any model is loaded."""
    from ftgen.data import load_pool, load_train_set
    from ftgen.prompts import select_shots
    from ftgen.tasks import load_task

    task = load_task(cfg.task, cfg.task_dirs)
    name = cfg.train_set or task.default_train_set
    if name is None:
        raise FieldError("train_set", f"task '{task.name}' has no in-domain train set: name one")
    if cfg.prompt_format >= len(task.templates):
        raise FieldError("prompt_format", f"{cfg.prompt_format}: task '{task.name}' has {len(task.templates)} formats")
    ds = load_train_set(
        cfg.data_dir,
        task,
        name,
        cfg.train_size,
        sample_seed=cfg.sample_seed,
        allow_smaller=cfg.allow_smaller,
        skip_invalid=cfg.skip_invalid,
    )
    shots: list[dict] = []
    if cfg.fticl_shots:
        pool = load_pool(cfg.data_dir, task, cfg.fticl_pool or ds.name)
        if cfg.fticl_shots > len(pool.records):
            raise FieldError(
                "fticl_shots",
                f"{cfg.fticl_shots} in-context examples asked for, but the few-shot pool '{pool.name}' has only "
                f"{len(pool.records)} ({pool.source})",
            )
        shots = select_shots(pool.records, cfg.fticl_shots)
    return task, ds, shots


def tokenize(cfg: TrainConfig, task, ds, shots: list[dict], tokenizer) -> TrainData:
    """Encode every record with the evaluation prompt builder: context (FTICL shots) + query + answer + EOS."""
    from ftgen.prompts import encode_prompt, fit_prompt, render_context

    if tokenizer.eos_token is None:
        raise UserError("the tokenizer has no EOS token: training could not teach the model to stop")
    context = render_context(task, shots, cfg.prompt_format)
    examples, truncated = [], 0
    for record in ds.records:
        prompt = fit_prompt(
            task, record, cfg.prompt_format, context, tokenizer, cfg.max_length, answer_suffix=tokenizer.eos_token
        )
        enc = encode_prompt(tokenizer, prompt, answer_suffix=tokenizer.eos_token)
        examples.append(Example(enc.context + enc.query + enc.answer, len(enc.context) + len(enc.query)))
        truncated += prompt.truncated
    report = {k: v for k, v in vars(ds.report).items() if k != "problems"}
    return TrainData(examples, ds.name, ds.source, len(ds.records), truncated, shots, report)


# ---------------------------------------------------------------- logs


def loss_figure(rows: list[dict], title: str):
    """The figure of loss.png: the loss of each optimizer step and, with more than 20 steps, its running mean
    (over a twentieth of the steps)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    losses = [r["loss"] for r in rows]
    k = max(1, len(rows) // 20)
    fig, ax = plt.subplots(figsize=(7, 4))
    few = len(rows) <= 20
    ax.plot(steps, losses, alpha=1.0 if k == 1 else 0.35, marker="o" if few else None, label="loss per step")
    if k > 1:  # a mean over one step is the loss itself
        smooth = [sum(losses[max(0, i - k + 1) : i + 1]) / min(k, i + 1) for i in range(len(rows))]
        ax.plot(steps, smooth, label=f"running mean ({k} steps)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy per response token")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    return fig


def plot_loss(rows: list[dict], path: Path, title: str) -> None:
    """loss.png (see loss_figure), written atomically."""
    import matplotlib.pyplot as plt

    fig = loss_figure(rows, title)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def method_label(cfg: TrainConfig) -> str:
    """`FT`, `FTICL k=2`, `FT, LoRA r=8`: how the run was fine-tuned."""
    label = f"FTICL k={cfg.fticl_shots}" if cfg.fticl_shots else "FT"
    return label + (f", QLoRA r={cfg.lora_r}" if cfg.qlora else f", LoRA r={cfg.lora_r}" if cfg.lora_r else "")


def run_title(cfg: TrainConfig, task: str, train_set: str, records: int, out: Path) -> str:
    """loss.png's title: the run's readable name, then what it trained on and how."""
    what = f"{task}/{train_set}, {records} records, {method_label(cfg)}, lr {cfg.lr:g}, seed {cfg.seed}"
    return f"{cfg.run_name or out.resolve().name}\n{what}"


def mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


# ---------------------------------------------------------------- the recipe


def train(cfg: TrainConfig, out_dir: str | Path, *, resume: bool = False, stop_after: int | None = None) -> dict:
    """Fine-tune per `cfg` into `out_dir`; return the train summary (also in out_dir/train_summary.json).

    `resume=True` continues from the latest checkpoint in out_dir (or starts fresh if there is none;
    returns the existing summary if the run already finished). `stop_after=k` stops once k optimizer
    steps are done, as a kill would (for time-boxed runs and tests); resume later.
    """
    from accelerate.utils import set_seed

    out = Path(out_dir)
    cfg = resolve_micro_batch_tokens(cfg)  # "auto" -> a number, as a study's key holds it (ftgen.auto_tokens)
    # 0. where do we start? (before any heavy work)
    if (done := finished_summary(cfg, out, resume)) is not None:
        return done
    ckpt = latest_checkpoint(out / "checkpoints") if resume else None
    if not resume and (out / "checkpoints").is_dir() and any((out / "checkpoints").iterdir()):
        raise UserError(f"{out} holds checkpoints of an earlier run: use --resume to continue it, or another --out")

    # 1. data: every user error surfaces before the model loads
    task, ds, shots = load_records(cfg)
    if cfg.qlora and not torch.cuda.is_available():
        raise FieldError("qlora", "needs a CUDA GPU (bitsandbytes 4-bit weights); on a CPU use lora_r alone")
    check_trackers(cfg.report_to)
    check_out_dir(out, cfg.data_dir)
    ensure_writable_dir(out)  # a read-only or forbidden --out fails now, not after the model loads

    # 2. precision, processes, seed, trackers
    hw = Hardware.for_run(cfg, make_trackers(cfg, out))
    say = progress.log if hw.accelerator.is_main_process else (lambda _: None)  # one voice under DDP
    set_seed(cfg.seed)
    say(hw.describe(cfg))

    # 3. model and tokens
    base_path = resolve_base(cfg.model)
    model, tokenizer = build_model(cfg, base_path, hw.accelerator.device, hw.compute_dtype)
    data = tokenize(cfg, task, ds, shots, tokenizer)
    if not cfg.qlora:  # 4-bit weights would not match fp32 closely enough for the check
        check_response_loss(model, data.examples, tokenizer.pad_token_id)

    # 4. optimizer, schedule, distributed wrapping
    n_params = sum(p.numel() for p in model.parameters())  # before wrapping: FSDP shards them
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    loop = Loop.build(cfg, hw, model, data.examples, tokenizer.pad_token_id)
    say(
        f"train: {len(data.examples)} examples of {task.name}/{data.set_name} ({sum(loop.lengths)} tokens, "
        f"{data.n_truncated} truncated), {loop.total_steps} steps of {cfg.batch_size}, "
        f"{n_trainable / 1e6:.1f}M of {n_params / 1e6:.1f}M params trained"
    )

    # 5. resume: model, optimizer, schedule, RNG states and the step, all from one checkpoint
    state = restore(loop, ckpt, out, say)
    start_trackers(hw.accelerator, cfg, state.start_step)

    # 6. the loop
    try:
        stopped = run_steps(loop, state, out, stop_after, say)
    finally:
        end_trackers(hw.accelerator)  # flush and close them, also when a step fails
    if stopped is not None:
        return stopped

    # 7. final model, logs, summary
    loss_after = loop.eval_loss() if cfg.eval_loss else None
    save_final(hw.accelerator, loop.wrapped, tokenizer, out / "model")
    about = {"task": task.name, "base_model": base_path, "params": n_params, "trainable_params": n_trainable}
    summary = summarize(loop, state, data, about, loss_after=loss_after)
    if hw.accelerator.is_main_process:
        plot_loss(state.log_rows, out / "loss.png", run_title(cfg, task.name, data.set_name, data.n_records, out))
        atomic_write_json(out / "train_summary.json", summary)
        if cfg.clean_checkpoints:
            shutil.rmtree(out / "checkpoints", ignore_errors=True)
    hw.accelerator.wait_for_everyone()
    return summary


def finished_summary(cfg: TrainConfig, out: Path, resume: bool) -> dict | None:
    """The summary of a run already finished in `out` (with `resume`), else None."""
    summary_path = out / "train_summary.json"
    if not (summary_path.exists() and (out / "model").exists()):
        return None
    done = json.loads(summary_path.read_text())
    if not resume:
        raise UserError(f"{out} already holds a trained model: choose another --out (or --resume to reuse it)")
    check_resume(done["config"], cfg, summary_path)
    progress.log(f"train: {out} already finished; nothing to do")
    return done


def check_resume(saved: dict, current: TrainConfig, where: Path) -> None:
    """A run continues only under the config it started with: its result fields (ftgen.config) all equal.
    Settings may differ: a moved data directory, another checkpoint cadence, logging."""
    now = current.model_dump()
    diff = changed_result_fields(TrainConfig, saved, now)
    if diff:
        shown = ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in diff[:4])
        raise UserError(f"cannot resume: the config differs from the one in {where} ({shown})")


def resolve_base(model: str) -> str:
    """The model to load: the default model's cached dir, an absolute local dir, or a Hub id."""
    from ftgen.models import resolve_model

    path = resolve_model(model)
    return str(Path(path).resolve()) if Path(path).exists() else path


@dataclass
class Hardware:
    """Where and how this process computes: accelerate's Accelerator, the compute dtype, the processes."""

    accelerator: Any
    compute_dtype: torch.dtype
    device_type: str
    world: int
    deepspeed: bool
    ds_accum: int  # DeepSpeed's fixed accumulation steps (fixed micro-batches there, token-capped elsewhere)

    @classmethod
    def for_run(cls, cfg: TrainConfig, trackers: list | None = None) -> Hardware:
        from ftgen.models import choose_dtype

        device_type = "cuda" if torch.cuda.is_available() else "cpu"
        compute_dtype = choose_dtype(cfg.dtype, device_type)
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if cfg.batch_size % world:
            raise FieldError("batch_size", f"{cfg.batch_size} is not a multiple of the processes ({world})")
        deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
        ds_accum = math.ceil(cfg.batch_size // world / cfg.micro_batch_size) if deepspeed else 1
        accelerator = make_accelerator(compute_dtype, ds_accum, cfg.micro_batch_size, trackers)
        assert accelerator.num_processes == world, (accelerator.num_processes, world)
        return cls(accelerator, compute_dtype, device_type, world, deepspeed, ds_accum)

    def describe(self, cfg: TrainConfig) -> str:
        how = "autocast, fp32 master weights" if self.compute_dtype != torch.float32 else "fp32"
        where = self.device_type + (f", {self.world} processes" if self.world > 1 else "")
        return f"train: compute dtype {dtype_name(self.compute_dtype)} ({how}; dtype={cfg.dtype}, {where})"


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@dataclass
class Loop:
    """What the optimizer loop works on: the wrapped model, optimizer, schedule, examples and step counts."""

    cfg: TrainConfig
    hw: Hardware
    wrapped: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    examples: list[Example]
    pad_id: int
    steps_per_epoch: int
    total_steps: int

    @classmethod
    def build(cls, cfg: TrainConfig, hw: Hardware, model: nn.Module, examples: list[Example], pad_id: int) -> Loop:
        steps_per_epoch = math.ceil(len(examples) / cfg.batch_size)
        total_steps = math.ceil(cfg.epochs * steps_per_epoch)
        if cfg.max_steps:
            total_steps = min(total_steps, cfg.max_steps)
        optimizer = make_optimizer(model, cfg)
        scheduler = make_schedule(optimizer, cfg, total_steps)
        wrapped, optimizer = hw.accelerator.prepare(ResponseLoss(model), optimizer)
        hw.accelerator.register_for_checkpointing(scheduler)  # stepped by us once per optimizer step
        return cls(cfg, hw, wrapped, optimizer, scheduler, examples, pad_id, steps_per_epoch, total_steps)

    @functools.cached_property
    def lengths(self) -> list[int]:
        return [len(e.ids) for e in self.examples]

    def eval_loss(self) -> float:
        acc = self.hw.accelerator
        return mean_loss(self.wrapped, self.examples, self.pad_id, acc.device, acc.autocast)

    def plan(self, epoch: int) -> list[list[list[list[int] | None]]]:
        cfg, hw = self.cfg, self.hw
        micro_tokens = None if hw.deepspeed else cfg.micro_batch_tokens
        return epoch_plan(
            self.lengths, cfg.batch_size, cfg.micro_batch_size, micro_tokens, cfg.seed, epoch, hw.world,
            cfg.group_by_length, hw.ds_accum,
        )  # fmt: skip

    def sync(self, last: bool):
        """Gradients are all-reduced once per step, after the last micro-batch (DeepSpeed: its own rule)."""
        acc = self.hw.accelerator
        if self.hw.deepspeed:
            return acc.accumulate(self.wrapped)
        return contextlib.nullcontext() if last else acc.no_sync(self.wrapped)


@dataclass
class RunState:
    """Where a run stands: restored from a checkpoint, advanced by the loop."""

    start_step: int = 0
    prior_elapsed: float = 0.0  # training seconds and tokens before this process (a resumed run)
    prior_tokens: int = 0
    loss_before: float | None = None
    log_rows: list[dict] = field(default_factory=list)
    train_time: float = 0.0  # ... and in this process
    tokens_done: int = 0


def restore(loop: Loop, ckpt: Path | None, out: Path, say: Callable[[str], None]) -> RunState:
    """The state of a resumed run (from its checkpoint), or of a fresh one; loss.jsonl rewritten to match."""
    acc = loop.hw.accelerator
    state = RunState()
    if ckpt is not None:
        saved = read_state(ckpt)
        check_resume(saved["config"], loop.cfg, ckpt / STATE_FILE)
        acc.load_state(str(ckpt))
        state.start_step, state.prior_elapsed, state.prior_tokens = saved["step"], saved["elapsed_s"], saved["tokens"]
        state.loss_before = saved.get("loss_before")
        say(f"train: resuming from {ckpt} (step {state.start_step} of {loop.total_steps})")
        if (out / "loss.jsonl").exists():
            state.log_rows = [r for r in read_jsonl(out / "loss.jsonl") if r["step"] <= state.start_step]
    elif loop.cfg.eval_loss:
        state.loss_before = loop.eval_loss()
        say(f"train: loss before training {state.loss_before:.4f}")
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        prune_checkpoints(out / "checkpoints", loop.cfg.keep_checkpoints)  # also drops temp dirs of a killed save
        atomic_write_jsonl(out / "loss.jsonl", state.log_rows)
    acc.wait_for_everyone()
    return state


def optimizer_step(loop: Loop, step_plan: list[list[list[int] | None]]) -> tuple[float, float | None, list[int]]:
    """One optimizer step over its micro-batches: (loss per response token, gradient norm, the step's examples)."""
    acc, examples = loop.hw.accelerator, loop.examples
    window = [i for share in step_plan for mb in share if mb for i in mb]  # the step's examples, all processes
    n_resp = sum(examples[i].n_answer for i in window)
    # DDP / FSDP average gradients over processes and DeepSpeed divides by its accumulation steps:
    # undo both, so that the gradient is d(sum of the step's response-token losses) / their count.
    grad_scale = loop.hw.world * loop.hw.ds_accum
    shortest = [min(range(len(examples)), key=loop.lengths.__getitem__)]  # stand-in for a no-op micro-batch
    step_loss = torch.zeros((), device=acc.device)
    mine = step_plan[acc.process_index]
    for j, mb in enumerate(mine):
        batch = collate([examples[i] for i in (mb or shortest)], loop.pad_id, acc.device)
        with loop.sync(last=j == len(mine) - 1):
            loss_sum = loop.wrapped(**batch)
            acc.backward(loss_sum * (grad_scale / n_resp if mb else 0.0))
        step_loss += loss_sum.detach() * (mb is not None)
    # clip (or just measure: an infinite norm scales by exactly 1) the window's gradient
    grad_norm = acc.clip_grad_norm_(loop.wrapped.parameters(), loop.cfg.max_grad_norm or math.inf)
    loop.optimizer.step()
    loop.scheduler.step()
    loop.optimizer.zero_grad(set_to_none=True)
    loss = acc.reduce(step_loss, "sum").item() / n_resp
    return loss, (float(grad_norm) if grad_norm is not None else None), window


def run_steps(
    loop: Loop, state: RunState, out: Path, stop_after: int | None, say: Callable[[str], None]
) -> dict | None:
    """The optimizer steps from state.start_step: log each, checkpoint every save_every; a dict if stopped early."""
    cfg, main = loop.cfg, loop.hw.accelerator.is_main_process
    log_file = open(out / "loss.jsonl", "a") if main else None
    bar = progress.bar(total=loop.total_steps, desc="train", unit="step", initial=state.start_step) if main else None
    plan, plan_epoch = [], -1
    loop.wrapped.train()
    try:
        for step in range(state.start_step, loop.total_steps):
            t0 = time.perf_counter()
            epoch, k = divmod(step, loop.steps_per_epoch)
            if epoch != plan_epoch:
                plan, plan_epoch = loop.plan(epoch), epoch
            loss, grad_norm, window = optimizer_step(loop, plan[k])
            step_tokens = sum(loop.lengths[i] for i in window)
            state.tokens_done += step_tokens
            state.train_time += time.perf_counter() - t0
            row = {
                "step": step + 1,
                "epoch": round((step + 1) / loop.steps_per_epoch, 4),
                "loss": round(loss, 6),
                "lr": loop.scheduler.get_last_lr()[0],
                "grad_norm": round(grad_norm, 6) if grad_norm is not None else None,  # None: DeepSpeed clips
                "tokens": step_tokens,
                "elapsed_s": round(state.prior_elapsed + state.train_time, 3),
                "total_steps": loop.total_steps,  # `ftgen status` reads a run's progress from its last line
            }
            state.log_rows.append(row)
            log_step(loop.hw.accelerator, cfg, {**row, "tokens_per_s": state.tokens_done / max(state.train_time, 1e-9)})
            if main:
                log_file.write(json.dumps(row) + "\n")
                log_file.flush()
                bar.update(1)
                if (step + 1) % cfg.log_every == 0:
                    bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{state.tokens_done / state.train_time:.0f}")
            if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < loop.total_steps:
                save_checkpoint(loop, state, out / "checkpoints", step + 1)
            if stop_after is not None and step + 1 >= stop_after and step + 1 < loop.total_steps:
                say(f"train: stopped after step {step + 1} of {loop.total_steps} (resume to continue)")
                return {"stopped_at": step + 1, "total_steps": loop.total_steps}
    finally:
        if bar is not None:
            bar.close()
        if log_file is not None:
            log_file.close()
    return None


def save_checkpoint(loop: Loop, state: RunState, ckpt_root: Path, step: int) -> None:
    """Model, optimizer, schedule, RNG states (accelerate) and the step, written atomically as step-N/."""
    acc, main = loop.hw.accelerator, loop.hw.accelerator.is_main_process
    with atomic_dir(ckpt_root / f"step-{step}", is_main=main, barrier=acc.wait_for_everyone) as tmp:
        acc.save_state(str(tmp))
        if main:
            saved = {"step": step, "epoch": step / loop.steps_per_epoch, "total_steps": loop.total_steps}
            saved |= {"tokens": state.prior_tokens + state.tokens_done}
            saved |= {"elapsed_s": state.prior_elapsed + state.train_time, "world_size": loop.hw.world}
            saved |= {"loss_before": state.loss_before, "config": loop.cfg.model_dump()}
            (tmp / STATE_FILE).write_text(json.dumps(saved, indent=2))
    if main:
        prune_checkpoints(ckpt_root, loop.cfg.keep_checkpoints)


def summarize(loop: Loop, state: RunState, data: TrainData, about: dict, *, loss_after: float | None) -> dict:
    """train_summary.json: the config, the method, the data, the model (`about`: task, base_model, params,
    trainable_params), the losses, the speed. Paths of the run's own files are relative to its directory
    (`model_dir`: "model"), so a moved run (or study) still reads right."""
    rows, spe, total = state.log_rows, loop.steps_per_epoch, loop.total_steps
    elapsed = state.prior_elapsed + state.train_time
    tokens = state.prior_tokens + state.tokens_done
    first_epoch = [r["loss"] for r in rows if r["step"] <= spe]
    last_epoch = [r["loss"] for r in rows if r["step"] > total - spe]
    cfg = loop.cfg
    return {
        "config": cfg.model_dump(),
        "run_name": cfg.run_name,
        "method": "fticl" if cfg.fticl_shots else "ft",
        "method_label": method_label(cfg),
        "task": about["task"],
        "train_set": data.set_name,
        "train_source": data.source,
        "records": data.n_records,
        "truncated": data.n_truncated,
        "data_report": data.load_report,
        "fticl_shots": [s["id"] for s in data.shots],
        "base_model": about["base_model"],
        "model_dir": "model",
        "kind": "lora" if cfg.lora_r is not None else "full",
        "params": about["params"],
        "trainable_params": about["trainable_params"],
        "compute_dtype": dtype_name(loop.hw.compute_dtype),
        "device": loop.hw.device_type,
        "world_size": loop.hw.world,
        "steps": total,
        "steps_per_epoch": spe,
        "epochs": total / spe,
        "tokens": tokens,
        "response_tokens_per_epoch": sum(e.n_answer for e in loop.examples),
        "loss_first": rows[0]["loss"] if rows else None,
        "loss_last": rows[-1]["loss"] if rows else None,
        "loss_first_epoch": mean(first_epoch),
        "loss_last_epoch": mean(last_epoch),
        "loss_before": state.loss_before,
        "loss_after": loss_after,
        "elapsed_s": round(elapsed, 2),
        "tokens_per_s": round(tokens / elapsed, 1) if elapsed else None,
        "resumed_from_step": state.start_step or None,
    }
