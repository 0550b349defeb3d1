"""Supervised fine-tuning (and FTICL) of a causal LM on one task: the paper's recipe, full or LoRA.

The recipe reads top to bottom in `train()`: data -> tokens -> model -> optimizer -> loop -> save.

Why a short loop on `accelerate.Accelerator` rather than `transformers.Trainer` / TRL's SFTTrainer
(accelerate still gives DDP / FSDP / DeepSpeed under `accelerate launch`, mixed precision, gradient
sync and sharded checkpoints; transformers gives the model and the schedule; PEFT gives LoRA):
- exact resume: a resumed run ends with the same weights as an uninterrupted one (tested). The
  data order is a pure function of (seed, epoch) and every checkpoint holds model, optimizer,
  schedule, all RNG states and the step together; Trainer does not promise this.
- the loss of an optimizer step is the sum over the response tokens of its whole accumulation window,
  divided by their count (counted up front from the plan, identical on every process, so no
  all-reduce is needed), not a mean of per-micro-batch means;
- the LM head runs only where a label is kept: the decoder gives hidden states, the head (a
  576 x 49152 matmul for the default model, plus the full-vocabulary float upcast and log-softmax)
  is applied to the response positions only. `ftgen bench train` measures this loop against a plain
  Trainer doing the same epoch (padding to the longest, full logits everywhere).
- length grouping: optimizer steps are cut from length-sorted chunks of a seeded shuffle (as HF's
  group_by_length), and each step is split into micro-batches under two caps (micro_batch_size
  examples, micro_batch_tokens padded tokens): short examples go many to a forward pass, long ones
  few, and each micro-batch is padded only to its own longest example (right padding). Fewer, larger
  forward passes matter on CPUs, where every op carries a fixed cost.

Precision: fp32 master weights always; forward/backward under bf16 autocast where `choose_dtype`
picks bf16 (AdamW updates at lr 2e-5 vanish when the weights themselves are bf16).

Scale-out: the same `ftgen train` under `torchrun` (DDP on CPU, gloo) or `accelerate launch` with a
config of configs/accelerate/ (DDP, FSDP, DeepSpeed ZeRO-3 on GPUs). `batch_size` is global; each
process takes every world-th example of a step, so N processes follow a 1-process run (tested).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from torch import nn

from ftgen import progress
from ftgen.checkpoint import STATE_FILE, atomic_dir, latest_checkpoint, prune_checkpoints, read_state
from ftgen.errors import UserError, parse_fields
from ftgen.files import atomic_write_json, atomic_write_jsonl, ensure_writable_dir, read_jsonl

IGNORE = -100
GROUP_CHUNK = 64  # length grouping sorts chunks of GROUP_CHUNK batches (as HF's group_by_length megabatches)
RESUME_FREE_FIELDS = {"save_every", "keep_checkpoints", "clean_checkpoints", "log_every", "eval_loss"}


class TrainConfig(BaseModel):
    """Everything that defines a training run. Defaults = the paper's recipe."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field("default", description="model to fine-tune: 'default', an HF id or a local dir")
    task: str = Field(description="task name (or task YAML path)")
    train_set: str | None = Field(None, description="train set name or file; default: the task's in-domain set")
    train_size: int | None = Field(None, gt=0, description="train on the first N records (all if unset)")
    sample_seed: int | None = Field(None, description="sample the N records with this seed instead of the first N")
    allow_smaller: bool = Field(False, description="train on all records when the set has fewer than N")
    skip_invalid: bool = Field(False, description="drop (and count) invalid records instead of failing")
    data_dir: str | None = Field(None, description="data directory in the paper layout")
    task_dirs: list[str] = Field(default_factory=list, description="directories of user task YAML files")

    epochs: float = Field(2, gt=0, description="passes over the train set (fractions allowed)")
    max_steps: int | None = Field(None, gt=0, description="stop after this many optimizer steps (schedule too)")
    lr: float = Field(2e-5, gt=0, description="peak learning rate")
    lr_schedule: Literal["linear", "cosine", "constant"] = "linear"
    warmup_ratio: float = Field(0.0, ge=0, le=1, description="fraction of the steps spent warming up")
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float | None = Field(1.0, description="gradient clipping norm (None: off)")
    batch_size: int = Field(16, gt=0, description="effective batch: examples per optimizer step, all processes")
    micro_batch_size: int = Field(16, gt=0, description="most examples per forward pass (per process)")
    micro_batch_tokens: int | None = Field(
        4096, gt=0, description="most padded tokens per forward pass (None: micro_batch_size alone decides)"
    )
    max_length: int = Field(1024, gt=8, description="longest training sequence in tokens; longer inputs are cut")
    prompt_format: int = Field(0, ge=0)
    group_by_length: bool = Field(True, description="micro-batches of similar length (pad less)")

    fticl_shots: int = Field(0, ge=0, description="in-context examples prepended to each training prompt")
    fticl_pool: str | None = Field(None, description="few-shot pool (test set name); default: the train set's")

    lora_r: int | None = Field(None, gt=0, description="LoRA rank; None = full fine-tuning")
    lora_alpha: float | None = Field(None, gt=0, description="LoRA alpha (default 2 x rank)")
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    lora_targets: list[str] = Field(default_factory=lambda: ["all-linear"], description="module names to adapt")
    qlora: bool = Field(False, description="4-bit base weights (bitsandbytes, CUDA only) under the LoRA adapter")
    gradient_checkpointing: bool = False

    seed: int = 0
    dtype: str = Field("auto", description="compute dtype: auto, bf16, fp16 or fp32 (master weights stay fp32)")
    save_every: int | None = Field(None, gt=0, description="checkpoint every N optimizer steps")
    keep_checkpoints: int = Field(1, gt=0, description="checkpoints kept while training")
    clean_checkpoints: bool = Field(True, description="delete checkpoints/ once the final model is saved")
    log_every: int = Field(1, gt=0, description="progress-bar update period in steps")
    eval_loss: bool = Field(False, description="measure the train-set loss before and after training (forward only)")

    @field_validator("lora_targets", "task_dirs", mode="before")
    @classmethod
    def _split_commas(cls, v):
        if isinstance(v, str):
            return [s.strip() for s in v.split(",") if s.strip()]
        return v

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.qlora and self.lora_r is None:
            raise ValueError("qlora needs a LoRA rank (lora_r)")
        if not self.lora_targets:
            raise ValueError("lora_targets: give at least one module name (or 'all-linear')")
        return self


def parse_config(data: dict, source: str = "train config") -> TrainConfig:
    """A TrainConfig from a dict (YAML / CLI); a bad field is one UserError line naming it."""
    return parse_fields(TrainConfig, data, source, "a training config")


# ---------------------------------------------------------------- data


@dataclass(frozen=True)
class Example:
    """One training sequence: prompt (context + query) then answer (+ EOS); the loss covers the answer."""

    ids: list[int]
    n_prompt: int

    @property
    def n_answer(self) -> int:
        return len(self.ids) - self.n_prompt


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
    name = cfg.train_set or task.in_domain
    if name is None:
        raise UserError(f"task '{task.name}' has no in-domain train set: give --train-set")
    if cfg.prompt_format >= len(task.templates):
        raise UserError(f"prompt format {cfg.prompt_format} does not exist for task '{task.name}'")
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
            raise UserError(
                f"--fticl-shots {cfg.fticl_shots}: the few-shot pool '{pool.name}' has only "
                f"{len(pool.records)} examples ({pool.source})"
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


def collate(examples: list[Example], pad_id: int, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Right-pad to the longest example; `targets[t]` is the token position t must predict, or IGNORE.

    Position t predicts token t+1, so the answer tokens ids[n_prompt:] are the targets of positions
    n_prompt-1 .. len-2: the last prompt token predicts the first answer token, and the EOS that
    ends the answer is a target too (the mask comes from lengths, not from `id == pad`, so pad == eos
    does not hide it).
    """
    width = max(len(e.ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    targets = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e.ids)
        input_ids[row, :n] = torch.tensor(e.ids)
        attention_mask[row, :n] = 1
        targets[row, e.n_prompt - 1 : n - 1] = torch.tensor(e.ids[e.n_prompt :])
    return {
        "input_ids": input_ids.to(device),
        "attention_mask": attention_mask.to(device),
        "targets": targets.to(device),
    }


def split_micro(indices: list[int], lengths: list[int], micro: int, max_tokens: int | None) -> list[list[int]]:
    """Consecutive micro-batches of at most `micro` examples and `max_tokens` tokens once padded (with a
    token cap, a micro-batch with a long tail is cut in two: see _split_padding)."""
    out: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in indices:
        width = max(longest, lengths[i])
        if current and (len(current) == micro or (max_tokens and (len(current) + 1) * width > max_tokens)):
            out.append(current)
            current, width = [], lengths[i]
        current.append(i)
        longest = width
    out = out + [current] if current else out
    if not max_tokens:  # fixed micro-batches (DeepSpeed fixes its accumulation steps up front)
        return out
    return [part for batch in out for part in _split_padding(batch, lengths)]


def _split_padding(batch: list[int], lengths: list[int], keep: float = 0.9) -> list[list[int]]:
    """Cut a micro-batch in two where that drops over 1 - `keep` of its padded tokens (a long tail).
    On CPUs a forward pass costs about its padded tokens, so fewer tokens beat fewer passes."""
    if len(batch) < 2:
        return [batch]
    by_len = sorted(batch, key=lengths.__getitem__)
    padded = len(by_len) * lengths[by_len[-1]]
    best, cut = min(
        (k * lengths[by_len[k - 1]] + (len(by_len) - k) * lengths[by_len[-1]], k) for k in range(1, len(by_len))
    )
    if best >= keep * padded:
        return [batch]
    return _split_padding(by_len[:cut], lengths, keep) + _split_padding(by_len[cut:], lengths, keep)


def epoch_plan(
    lengths: list[int],
    batch_size: int,
    micro: int,
    max_tokens: int | None,
    seed: int,
    epoch: int,
    world: int = 1,
    group_by_length: bool = True,
    min_micro_batches: int = 1,
) -> list[list[list[list[int] | None]]]:
    """The optimizer steps of one epoch: plan[step][process] = that process's micro-batches.

    A pure function of (seed, epoch): resume replays it exactly. A seeded shuffle is cut into chunks
    of GROUP_CHUNK batches, each chunk sorted by length (as HF's group_by_length), cut into batches of
    `batch_size` examples (one optimizer step each), and the steps are shuffled. Each process takes
    every world-th example of a step and cuts its share into micro-batches under both caps, so short
    examples go many to a forward pass and long ones few. Processes with fewer micro-batches than the
    others (or than `min_micro_batches`) get `None`: a no-op pass that keeps gradient sync in step.
    """
    rng = random.Random(f"ftgen-train:{seed}:{epoch}")
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if group_by_length:
        chunk = batch_size * GROUP_CHUNK
        order = [i for c in range(0, len(order), chunk) for i in sorted(order[c : c + chunk], key=lengths.__getitem__)]
    steps = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if group_by_length:
        rng.shuffle(steps)  # long and short steps interleave
    plan = []
    for step in steps:
        shares = [split_micro(step[r::world], lengths, micro, max_tokens) for r in range(world)]
        width = max(min_micro_batches, *(len(s) for s in shares))
        plan.append([s + [None] * (width - len(s)) for s in shares])
    return plan


# ---------------------------------------------------------------- loss


class ResponseLoss(nn.Module):
    """Summed cross-entropy over the response tokens; the LM head runs only on those positions."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self._no_split_modules = getattr(model, "_no_split_modules", None)  # FSDP auto-wrap reads it
        self.softcap = getattr(model.config, "final_logit_softcapping", None)

    def forward(self, input_ids, attention_mask, targets) -> torch.Tensor:
        hidden = self.model.get_decoder()(
            input_ids=input_ids, attention_mask=attention_mask, use_cache=False
        ).last_hidden_state
        keep = targets != IGNORE
        logits = self.model.get_output_embeddings()(hidden[keep]).float()
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return F.cross_entropy(logits, targets[keep], reduction="sum")


@torch.no_grad()
def check_response_loss(model: nn.Module, examples: list[Example], pad_id: int) -> None:
    """ResponseLoss must equal the model's own loss: catches architectures that post-process their logits.

    One fp32 forward of the two shortest examples, in eval mode (no dropout, no RNG drawn).
    """
    batch = collate(sorted(examples, key=lambda e: len(e.ids))[:2], pad_id, next(model.parameters()).device)
    was_training = model.training
    model.eval()
    ours = ResponseLoss(model)(**batch).item()
    labels = torch.where(batch["attention_mask"].bool(), batch["input_ids"], IGNORE)
    labels[:, 1:] = batch["targets"][:, :-1]  # HF shifts labels itself: label t = target of position t-1
    labels[:, 0] = IGNORE
    n = int((batch["targets"] != IGNORE).sum())
    theirs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels).loss.item() * n
    model.train(was_training)
    if not math.isclose(ours, theirs, rel_tol=1e-3, abs_tol=1e-3):
        raise UserError(
            f"model '{type(model).__name__}': the response-only loss ({ours:.4f}) differs from the model's own "
            f"loss ({theirs:.4f}) on the same tokens; its logits are post-processed in a way ftgen does not know"
        )


@torch.no_grad()
def mean_loss(lossf: nn.Module, examples: list[Example], pad_id: int, device, autocast, batch_size: int = 8) -> float:
    """Mean cross-entropy per response token of a ResponseLoss module over `examples` (no training).

    Batches by length in a fixed order, so the number is reproducible bit for bit.
    """
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].ids))
    total, count = 0.0, 0
    was_training = lossf.training
    lossf.eval()
    for s in range(0, len(order), batch_size):
        batch = [examples[i] for i in order[s : s + batch_size]]
        with autocast():
            total += lossf(**collate(batch, pad_id, device)).item()
        count += sum(e.n_answer for e in batch)
    lossf.train(was_training)
    return total / max(count, 1)


def response_loss(model, examples: list[Example], pad_id: int, *, dtype: str = "auto", batch_size: int = 8) -> float:
    """Mean cross-entropy per response token of an HF / PEFT model on `examples`, as `train` measures it."""
    from ftgen.models import choose_dtype

    device = next(model.parameters()).device
    compute = choose_dtype(dtype, device.type)

    def autocast():
        return torch.autocast(device.type, dtype=compute, enabled=compute != torch.float32)

    return mean_loss(ResponseLoss(model), examples, pad_id, device, autocast, batch_size)


# ---------------------------------------------------------------- model


def check_lora_targets(model: nn.Module, targets: list[str]) -> None:
    """Every LoRA target must name a module of the model (PEFT's own error is less clear)."""
    if targets == ["all-linear"]:
        return
    names = {name for name, _ in model.named_modules() if name}
    leaves = sorted(
        {
            n.rsplit(".", 1)[-1]
            for n, m in model.named_modules()
            if isinstance(m, (nn.Linear, nn.Embedding, nn.Conv1d)) or type(m).__name__ == "Conv1D"
        }
    )
    bad = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if bad:
        raise UserError(
            f"unknown LoRA target module(s) {', '.join(bad)} for this model (valid: {', '.join(leaves[:10])}, "
            "or all-linear)"
        )


def build_model(cfg: TrainConfig, base_path: str, device: torch.device, compute_dtype: torch.dtype):
    """(model, tokenizer): fp32 master weights, with a LoRA adapter when lora_r is set."""
    from ftgen.models import load_model, load_tokenizer

    if cfg.qlora:
        from transformers import AutoModelForCausalLM, BitsAndBytesConfig

        try:
            model = AutoModelForCausalLM.from_pretrained(
                base_path,
                quantization_config=BitsAndBytesConfig(
                    load_in_4bit=True,
                    bnb_4bit_quant_type="nf4",
                    bnb_4bit_use_double_quant=True,
                    bnb_4bit_compute_dtype=compute_dtype,
                ),
                dtype=compute_dtype,
                device_map={"": device},
            )
        except (OSError, ValueError, ImportError) as e:
            raise UserError(f"cannot load '{cfg.model}' in 4 bits: {str(e).splitlines()[0]}") from None
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
        tokenizer = load_tokenizer(base_path)
    else:
        model, tokenizer = load_model(base_path, dtype="fp32", device=str(device), merge_adapter=True)
    model.train()
    if cfg.gradient_checkpointing and not cfg.qlora:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.lora_r is not None:
        from peft import LoraConfig, get_peft_model

        check_lora_targets(model, cfg.lora_targets)
        targets = "all-linear" if cfg.lora_targets == ["all-linear"] else cfg.lora_targets
        lora = LoraConfig(
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha or 2 * cfg.lora_r,
            lora_dropout=cfg.lora_dropout,
            target_modules=targets,
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, lora)
        # The saved adapter must name a base that other tools (PEFT, vLLM, lm-eval) can open as is.
        model.peft_config["default"].base_model_name_or_path = base_path
    return model, tokenizer


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW (fused); biases and norm weights (1-d tensors) get no weight decay (as HF Trainer)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # the fused kernel: one pass over the weights instead of ~10 (5x faster on CPU); HF Trainer's default too
    fused = all(p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(
        [g for g in groups if g["params"]], lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8, fused=fused or None
    )


def make_schedule(optimizer, cfg: TrainConfig, total_steps: int):
    from transformers import get_scheduler

    name = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}[cfg.lr_schedule]
    return get_scheduler(
        name, optimizer, num_warmup_steps=round(cfg.warmup_ratio * total_steps), num_training_steps=total_steps
    )


def make_accelerator(compute_dtype: torch.dtype, grad_accum: int, micro_batch_size: int):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        # accelerate's state is a process-wide singleton; one process may train several models in turn
        # (the study runner) with different precisions or accumulation, so start from a clean state.
        AcceleratorState._reset_state(reset_partial_state=True)
    precision = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(compute_dtype, "no")
    # cpu=True where there is no GPU: only then does accelerate set up gloo DDP between CPU processes (torchrun)
    accelerator = Accelerator(
        mixed_precision=precision, gradient_accumulation_steps=grad_accum, cpu=not torch.cuda.is_available()
    )
    if accelerator.state.deepspeed_plugin is not None:  # DeepSpeed wants it and we prepare no DataLoader
        accelerator.state.deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = micro_batch_size
    return accelerator


def save_final(accelerator, wrapped: nn.Module, tokenizer, target: Path) -> None:
    """The final model as a standard HF checkpoint (full FT) or PEFT adapter dir, written atomically."""
    state = accelerator.get_state_dict(wrapped)  # gathers FSDP / ZeRO-3 shards
    model = accelerator.unwrap_model(wrapped).model
    with atomic_dir(target, is_main=accelerator.is_main_process, barrier=accelerator.wait_for_everyone) as tmp:
        if accelerator.is_main_process:
            state = {k.removeprefix("model."): v for k, v in state.items()}
            model.save_pretrained(tmp, state_dict=state, safe_serialization=True)
            tokenizer.save_pretrained(tmp)


# ---------------------------------------------------------------- logs


def plot_loss(rows: list[dict], path: Path) -> None:
    """loss.png: per-step training loss and its running mean."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    losses = [r["loss"] for r in rows]
    k = max(1, len(rows) // 20)
    smooth = [sum(losses[max(0, i - k + 1) : i + 1]) / len(losses[max(0, i - k + 1) : i + 1]) for i in range(len(rows))]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, losses, alpha=0.35, label="loss per step")
    ax.plot(steps, smooth, label=f"running mean ({k} steps)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy per response token")
    ax.set_title(path.parent.name)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


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

    from ftgen.models import choose_dtype, resolve_model

    out = Path(out_dir)
    ckpt_root = out / "checkpoints"
    summary_path = out / "train_summary.json"
    config_dump = cfg.model_dump()

    # 0. where do we start? (before any heavy work)
    if summary_path.exists() and (out / "model").exists():
        done = json.loads(summary_path.read_text())
        if not resume:
            raise UserError(f"{out} already holds a trained model: choose another --out (or --resume to reuse it)")
        _check_same_config(done["config"], config_dump, summary_path)
        progress.log(f"train: {out} already finished; nothing to do")
        return done
    ckpt = latest_checkpoint(ckpt_root) if resume else None
    if not resume and (ckpt_root.exists() and any(ckpt_root.iterdir())):
        raise UserError(f"{out} holds checkpoints of an earlier run: use --resume to continue it, or another --out")

    # 1. data: every user error surfaces before the model loads
    task, ds, shots = load_records(cfg)
    if cfg.qlora and not torch.cuda.is_available():
        raise UserError("--qlora needs a CUDA GPU (bitsandbytes 4-bit weights); on CPU use --lora-r alone")
    ensure_writable_dir(out)  # a read-only or forbidden --out fails now, not after the model loads

    # 2. precision, processes, seed
    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    compute_dtype = choose_dtype(cfg.dtype, device_type)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if cfg.batch_size % world:
        raise UserError(f"batch size {cfg.batch_size} must be a multiple of the number of processes ({world})")
    # DeepSpeed fixes its accumulation steps up front: fixed micro-batches there, token-capped elsewhere
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    ds_accum = math.ceil(cfg.batch_size // world / cfg.micro_batch_size) if deepspeed else 1
    accelerator = make_accelerator(compute_dtype, ds_accum, cfg.micro_batch_size)
    rank = accelerator.process_index
    assert accelerator.num_processes == world, (accelerator.num_processes, world)
    main = accelerator.is_main_process
    say = progress.log if main else (lambda _: None)  # one voice under DDP
    set_seed(cfg.seed)
    say(
        f"train: compute dtype {str(compute_dtype).removeprefix('torch.')} "
        f"({'autocast, fp32 master weights' if compute_dtype != torch.float32 else 'fp32'}; "
        f"dtype={cfg.dtype}, {device_type}{', ' + str(world) + ' processes' if world > 1 else ''})"
    )

    # 3. model and tokens
    base_path = resolve_model(cfg.model)
    if Path(base_path).exists():
        base_path = str(Path(base_path).resolve())
    model, tokenizer = build_model(cfg, base_path, accelerator.device, compute_dtype)
    data = tokenize(cfg, task, ds, shots, tokenizer)
    examples, pad_id = data.examples, tokenizer.pad_token_id
    if not cfg.qlora:  # 4-bit weights would not match fp32 closely enough for the check
        check_response_loss(model, examples, pad_id)
    lengths = [len(e.ids) for e in examples]
    steps_per_epoch = math.ceil(len(examples) / cfg.batch_size)
    total_steps = math.ceil(cfg.epochs * steps_per_epoch)
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    n_params = sum(p.numel() for p in model.parameters())
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    say(
        f"train: {len(examples)} examples of {task.name}/{data.set_name} ({sum(lengths)} tokens, "
        f"{data.n_truncated} truncated), {total_steps} steps of {cfg.batch_size}, "
        f"{n_trainable / 1e6:.1f}M of {n_params / 1e6:.1f}M params trained"
    )

    # 4. optimizer, schedule, distributed wrapping
    optimizer = make_optimizer(model, cfg)
    scheduler = make_schedule(optimizer, cfg, total_steps)
    wrapped, optimizer = accelerator.prepare(ResponseLoss(model), optimizer)
    accelerator.register_for_checkpointing(scheduler)  # stepped by us once per optimizer step

    # 5. resume: model, optimizer, schedule, RNG states and the step, all from one checkpoint
    def eval_loss() -> float:
        return mean_loss(wrapped, examples, pad_id, accelerator.device, accelerator.autocast)

    start_step, prior_elapsed, prior_tokens, loss_before = 0, 0.0, 0, None
    log_rows: list[dict] = []
    if ckpt is not None:
        state = read_state(ckpt)
        _check_same_config(state["config"], config_dump, ckpt / STATE_FILE)
        accelerator.load_state(str(ckpt))
        start_step, prior_elapsed, prior_tokens = state["step"], state["elapsed_s"], state["tokens"]
        loss_before = state.get("loss_before")
        say(f"train: resuming from {ckpt} (step {start_step} of {total_steps})")
    elif cfg.eval_loss:
        loss_before = eval_loss()
        say(f"train: loss before training {loss_before:.4f}")
    if (out / "loss.jsonl").exists() and ckpt is not None:
        log_rows = [r for r in read_jsonl(out / "loss.jsonl") if r["step"] <= start_step]
    if main:
        out.mkdir(parents=True, exist_ok=True)
        prune_checkpoints(ckpt_root, cfg.keep_checkpoints)  # also drops temp dirs of a killed save
        atomic_write_jsonl(out / "loss.jsonl", log_rows)
    accelerator.wait_for_everyone()

    # 6. the loop
    def save_checkpoint(step: int, tokens: int, elapsed: float) -> None:
        with atomic_dir(ckpt_root / f"step-{step}", is_main=main, barrier=accelerator.wait_for_everyone) as tmp:
            accelerator.save_state(str(tmp))
            if main:
                state = {"step": step, "epoch": step / steps_per_epoch, "total_steps": total_steps}
                state |= {"tokens": tokens, "elapsed_s": elapsed, "world_size": world, "loss_before": loss_before}
                state["config"] = config_dump
                (tmp / STATE_FILE).write_text(json.dumps(state, indent=2))
        if main:
            prune_checkpoints(ckpt_root, cfg.keep_checkpoints)

    def sync(last: bool):
        """Gradients are all-reduced once per step, after the last micro-batch (DeepSpeed: its own rule)."""
        if deepspeed:
            return accelerator.accumulate(wrapped)
        return contextlib.nullcontext() if last else accelerator.no_sync(wrapped)

    # DDP / FSDP average gradients over processes and DeepSpeed divides by its accumulation steps:
    # undo both, so that the gradient is d(sum of the step's response-token losses) / their count.
    grad_scale = world * ds_accum
    micro_tokens = None if deepspeed else cfg.micro_batch_tokens
    shortest = [min(range(len(examples)), key=lengths.__getitem__)]  # stand-in for a no-op micro-batch
    log_file = open(out / "loss.jsonl", "a") if main else None
    bar = progress.bar(total=total_steps, desc="train", unit="step", initial=start_step) if main else None
    plan, plan_epoch = [], -1
    tokens_done, train_time = 0, 0.0
    wrapped.train()
    try:
        for step in range(start_step, total_steps):
            t0 = time.perf_counter()
            epoch, k = divmod(step, steps_per_epoch)
            if epoch != plan_epoch:
                plan = epoch_plan(
                    lengths, cfg.batch_size, cfg.micro_batch_size, micro_tokens, cfg.seed, epoch, world,
                    cfg.group_by_length, ds_accum,
                )  # fmt: skip
                plan_epoch = epoch
            window = [i for share in plan[k] for mb in share if mb for i in mb]  # the step's examples
            n_resp = sum(examples[i].n_answer for i in window)
            step_loss = torch.zeros((), device=accelerator.device)
            mine = plan[k][rank]
            for j, mb in enumerate(mine):
                batch = collate([examples[i] for i in (mb or shortest)], pad_id, accelerator.device)
                with sync(last=j == len(mine) - 1):
                    loss_sum = wrapped(**batch)
                    accelerator.backward(loss_sum * (grad_scale / n_resp if mb else 0.0))
                step_loss += loss_sum.detach() * (mb is not None)
            # clip (or just measure: an infinite norm scales by exactly 1) the window's gradient
            grad_norm = accelerator.clip_grad_norm_(wrapped.parameters(), cfg.max_grad_norm or math.inf)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            loss = accelerator.reduce(step_loss, "sum").item() / n_resp
            step_tokens = sum(lengths[i] for i in window)
            tokens_done += step_tokens
            train_time += time.perf_counter() - t0
            row = {
                "step": step + 1,
                "epoch": round((step + 1) / steps_per_epoch, 4),
                "loss": round(loss, 6),
                "lr": scheduler.get_last_lr()[0],
                "grad_norm": round(float(grad_norm), 6) if grad_norm is not None else None,  # None: DeepSpeed clips
                "tokens": step_tokens,
                "elapsed_s": round(prior_elapsed + train_time, 3),
            }
            log_rows.append(row)
            if main:
                log_file.write(json.dumps(row) + "\n")
                log_file.flush()
                bar.update(1)
                if (step + 1) % cfg.log_every == 0:
                    bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tokens_done / train_time:.0f}")
            if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < total_steps:
                save_checkpoint(step + 1, prior_tokens + tokens_done, prior_elapsed + train_time)
            if stop_after is not None and step + 1 >= stop_after and step + 1 < total_steps:
                say(f"train: stopped after step {step + 1} of {total_steps} (resume to continue)")
                return {"stopped_at": step + 1, "total_steps": total_steps}
    finally:
        if bar is not None:
            bar.close()
        if log_file is not None:
            log_file.close()

    # 7. final model, logs, summary
    loss_after = eval_loss() if cfg.eval_loss else None
    save_final(accelerator, wrapped, tokenizer, out / "model")
    elapsed = prior_elapsed + train_time
    tokens = prior_tokens + tokens_done
    first_epoch = [r["loss"] for r in log_rows if r["step"] <= steps_per_epoch]
    last_epoch = [r["loss"] for r in log_rows if r["step"] > total_steps - steps_per_epoch]
    summary = {
        "config": config_dump,
        "task": task.name,
        "train_set": data.set_name,
        "train_source": data.source,
        "records": data.n_records,
        "truncated": data.n_truncated,
        "data_report": data.load_report,
        "fticl_shots": [s["id"] for s in data.shots],
        "base_model": base_path,
        "model_dir": str((out / "model").resolve()),
        "kind": "lora" if cfg.lora_r is not None else "full",
        "params": n_params,
        "trainable_params": n_trainable,
        "compute_dtype": str(compute_dtype).removeprefix("torch."),
        "device": device_type,
        "world_size": world,
        "steps": total_steps,
        "steps_per_epoch": steps_per_epoch,
        "epochs": total_steps / steps_per_epoch,
        "tokens": tokens,
        "response_tokens_per_epoch": sum(e.n_answer for e in examples),
        "loss_first": log_rows[0]["loss"] if log_rows else None,
        "loss_last": log_rows[-1]["loss"] if log_rows else None,
        "loss_first_epoch": mean(first_epoch),
        "loss_last_epoch": mean(last_epoch),
        "loss_before": loss_before,
        "loss_after": loss_after,
        "elapsed_s": round(elapsed, 2),
        "tokens_per_s": round(tokens / elapsed, 1) if elapsed else None,
        "resumed_from_step": start_step or None,
    }
    if main:
        plot_loss(log_rows, out / "loss.png")
        atomic_write_json(summary_path, summary)
        if cfg.clean_checkpoints:
            shutil.rmtree(ckpt_root, ignore_errors=True)
    accelerator.wait_for_everyone()
    return summary


def _check_same_config(saved: dict, current: dict, where: Path) -> None:
    diff = sorted(
        k for k in set(saved) | set(current) if k not in RESUME_FREE_FIELDS and saved.get(k) != current.get(k)
    )
    if diff:
        shown = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in diff[:4])
        raise UserError(f"cannot resume: the config differs from the one in {where} ({shown})")
