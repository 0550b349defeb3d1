"""`ftgen bench train`: ftgen's trainer against a plain `transformers.Trainer` and TRL's `SFTTrainer`.

All of them fine-tune the same model on the same token ids (ftgen's prompt builder, EOS included) for one
epoch, and every optimizer step sees the same examples in the same order: ftgen's epoch plan (length-
grouped steps of `batch_size` examples, a seeded shuffle) is flattened into one sequence, and the
baselines read it sequentially (`train_sampling_strategy="sequential"`) in micro-batches of
`baseline_micro_batch_size` x `batch_size / baseline_micro_batch_size` accumulation steps. Same learning
rate, linear schedule, no warm-up, fused AdamW, clipping at 1.0, autocast over fp32 master weights, loss on
the response tokens only, normalised by the response tokens of the whole optimizer step (transformers and
TRL pass `num_items_in_batch`; ftgen counts them from its plan). The first optimizer step therefore
starts from the same weights on the same 16 examples: its loss agrees across trainers (printed), and the
final train-set losses agree within a few percent (bf16 rounding, different micro-batch shapes).

They differ in what ftgen is built to do better:
- Trainer: micro-batches padded to their longest example, the LM head and a full-vocabulary fp32
  log-softmax on every position;
- TRL SFTTrainer (completion-only loss, `completion_mask` from the same ids): the same micro-batches,
  its fused LM-head loss, gradient checkpointing on as TRL ships it (`--no-trl-gradient-checkpointing`:
  off, the same work per step as ftgen);
- ftgen: each step cut into micro-batches under a 16-example / 4096-padded-token cap, so short examples
  share one forward pass; the LM head on response positions only.

Throughput = real (non-pad) tokens of the epoch / seconds of the training loop (loading, set-up and
saving excluded on every side). Quality = mean cross-entropy per response token of each trained model on
the training records, measured afterwards by the same function. MFU = 6 x N x tokens/s / peak, the
peak measured as the best large matmul in the compute dtype on the device that trained (synchronised,
before every round: a busy machine lowers it); `mfu_needed` counts the LM head on response tokens only
(the work the task needs, the same for every trainer).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ftgen.bench import default_data_dir, say
from ftgen.device import current_device, device_name, matmul_peak, synchronize
from ftgen.errors import UserError

BASELINES = {"trainer": "Trainer", "trl": "TRL"}  # --baseline value -> name in the output
LOSS_TOLERANCE = 0.05  # final train-set losses this close (relative) "agree"


def step_order(cfg, lengths: list[int]) -> list[int]:
    """The examples of ftgen's first epoch in the order its optimizer steps take them."""
    from ftgen.train import epoch_plan

    plan = epoch_plan(lengths, cfg.batch_size, cfg.micro_batch_size, cfg.micro_batch_tokens, cfg.seed, 0)
    return [i for step in plan for share in step for mb in share if mb for i in mb]


@dataclass
class Bench:
    """What every trainer of one benchmark shares."""

    cfg: object  # ftgen.train.TrainConfig
    tokenizer: object
    examples: list  # ftgen.train.Example, tokenized once
    order: list[int] | None  # ftgen's step order for the baselines; None: they shuffle themselves
    micro: int  # the baselines' micro-batch
    compute: torch.dtype
    device: torch.device
    trl_checkpointing: bool  # TRL's default: on

    def ordered(self) -> list:
        return [self.examples[i] for i in self.order] if self.order is not None else self.examples


def _training_args(cls, b: Bench, out: Path, **extra):
    """Arguments shared by the Trainer and TRL baselines: ftgen's recipe; data read in order, or shuffled."""
    if b.cfg.batch_size % b.micro:
        raise UserError(f"--baseline-micro-batch-size {b.micro} must divide --effective-batch-size {b.cfg.batch_size}")
    return cls(
        output_dir=str(out),
        per_device_train_batch_size=b.micro,
        gradient_accumulation_steps=b.cfg.batch_size // b.micro,
        num_train_epochs=1,
        learning_rate=b.cfg.lr,
        lr_scheduler_type="linear",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        bf16=b.compute == torch.bfloat16,
        fp16=b.compute == torch.float16,
        use_cpu=b.device.type == "cpu",
        seed=b.cfg.seed,
        train_sampling_strategy="sequential" if b.order is not None else "random",
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        **extra,
    )


def _counting(collate, padded: dict):
    def wrapped(features):
        batch = collate(features)
        padded["tokens"] += batch["input_ids"].numel()
        return batch

    return wrapped


def _loop_clock(device: torch.device):
    """A callback timing the training loop alone, from its first step to its end, as ftgen times its own loop
    (set-up before it - wrapping the model, building the optimizer and data loader - is left out on both sides)."""
    from transformers import TrainerCallback

    class LoopClock(TrainerCallback):
        start = end = None

        def on_train_begin(self, args, state, control, **kwargs):
            synchronize(device)
            self.start = time.perf_counter()

        def on_train_end(self, args, state, control, **kwargs):
            synchronize(device)
            self.end = time.perf_counter()

    return LoopClock()


def _fit(trainer, device: torch.device) -> dict:
    from transformers import PrinterCallback

    padded = {"tokens": 0}
    trainer.remove_callback(PrinterCallback)  # no per-step dicts on stdout
    trainer.data_collator = _counting(trainer.data_collator, padded)
    clock = _loop_clock(device)
    trainer.add_callback(clock)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    model = trainer.model
    trainer.accelerator.free_memory()  # its references to the model and optimizer state: gone before the next round
    seconds = clock.end - clock.start
    return {"model": model, "seconds": seconds, "padded_tokens": padded["tokens"], "step_losses": losses}


def run_trainer(b: Bench, out: Path) -> dict:
    """A plain transformers.Trainer on the same ids (and ftgen's order, unless b.order is None): micro-batches
    padded to their longest example, full logits everywhere."""
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from ftgen.models import load_model

    model, _ = load_model(b.cfg.model, dtype="fp32", device=str(b.device))
    rows = [{"input_ids": e.ids, "labels": [-100] * e.n_prompt + e.ids[e.n_prompt :]} for e in b.ordered()]
    b.tokenizer.padding_side = "right"
    collate = DataCollatorForSeq2Seq(b.tokenizer, padding="longest", label_pad_token_id=-100)
    trainer = Trainer(model=model.train(), args=_training_args(TrainingArguments, b, out), train_dataset=rows,
                      data_collator=collate)  # fmt: skip
    return _fit(trainer, b.device)


def run_trl(b: Bench, out: Path) -> dict:
    """TRL's SFTTrainer on the same ids (and ftgen's order, unless b.order is None): completion-only loss from a
    completion_mask, its own collator and fused LM-head loss."""
    try:
        from datasets import Dataset
        from datasets.utils.logging import disable_progress_bar
        from trl import SFTConfig, SFTTrainer
    except ImportError as e:
        raise UserError(f"--baseline trl needs TRL: pip install 'ftgen[bench]' ({e})") from None
    from ftgen import progress
    from ftgen.models import load_model

    if progress.is_quiet():
        disable_progress_bar()
    model, _ = load_model(b.cfg.model, dtype="fp32", device=str(b.device))
    rows = [{"input_ids": e.ids, "completion_mask": [0] * e.n_prompt + [1] * e.n_answer} for e in b.ordered()]
    args = _training_args(
        SFTConfig, b, out, completion_only_loss=True, max_length=b.cfg.max_length, packing=False, padding_free=False,
        gradient_checkpointing=b.trl_checkpointing,
    )  # fmt: skip
    trainer = SFTTrainer(model=model.train(), args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=b.tokenizer)  # fmt: skip
    return _fit(trainer, b.device)


def _setup(data_dir, task, records, max_length, batch_size, micro_batch_size, micro_batch_tokens, lr, model, dtype):
    from ftgen.auto_tokens import resolve_micro_batch_tokens
    from ftgen.models import load_tokenizer
    from ftgen.train import TrainConfig, load_records, tokenize

    overrides = {"micro_batch_size": micro_batch_size, "micro_batch_tokens": micro_batch_tokens}
    cfg = TrainConfig(
        model=model, task=task, train_size=records, data_dir=str(data_dir), epochs=1, lr=lr, batch_size=batch_size,
        max_length=max_length, dtype=dtype, **{k: v for k, v in overrides.items() if v is not None},
    )  # fmt: skip
    cfg = resolve_micro_batch_tokens(cfg)
    tokenizer = load_tokenizer(model)
    examples = tokenize(cfg, *load_records(cfg), tokenizer).examples
    return cfg, tokenizer, examples


def _round(who: str, r: int, b: Bench, tmp: Path) -> dict:
    """One trainer's epoch and the train-set loss of the model it produced."""
    from ftgen.models import load_model
    from ftgen.train import response_loss, train

    if who == "ftgen":
        s = train(b.cfg, tmp / f"ftgen-{r}")
        trained, _ = load_model(str(tmp / f"ftgen-{r}" / "model"), dtype="fp32", device=str(b.device))
        steps = [json.loads(line)["loss"] for line in (tmp / f"ftgen-{r}" / "loss.jsonl").read_text().splitlines()]
        result = {"seconds": s["elapsed_s"], "step_losses": steps, "params": s["params"]}
    else:
        result = (run_trainer if who == "trainer" else run_trl)(b, tmp / f"{who}-{r}")
        trained = result.pop("model")
    result["loss"] = response_loss(trained, b.examples, b.tokenizer.pad_token_id, dtype=b.cfg.dtype)
    del trained
    if b.device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def run(
    data_dir: Path | None = None,
    task: str = "sentiment",
    records: int = 128,
    max_length: int = 512,
    batch_size: int = 16,
    baseline_micro_batch_size: int = 4,
    micro_batch_size: int | None = None,
    micro_batch_tokens: int | None = None,
    lr: float = 2e-5,
    model: str = "default",
    repeat: int = 1,
    baselines: tuple[str, ...] = ("trainer",),
    dtype: str = "auto",
    out: Path | None = None,
    baseline_order: str = "ftgen",
    trl_checkpointing: bool = True,
) -> dict:
    """Train one epoch with ftgen and each baseline (`repeat` rounds, rotating which goes first; the best
    time counts); print tokens/s, losses, MFU; the last lines are the speedups.

    `baseline_order="random"` lets the baselines shuffle the data themselves (a diagnostic: different
    examples per optimizer step, which is how their final losses used to differ from ftgen's by 7-14%).
    `trl_checkpointing`: TRL's gradient checkpointing, on by default in TRL (as users get it); off, TRL
    does the same work per step as ftgen.
    """
    from ftgen.models import choose_dtype

    bad = [b for b in baselines if b not in BASELINES]
    if bad or not baselines:
        raise UserError(f"--baseline: use {' or '.join(BASELINES)} (comma list), not '{','.join(bad)}'")
    if baseline_order not in ("ftgen", "random"):
        raise UserError(f"--baseline-order: use ftgen or random, not '{baseline_order}'")
    device = current_device()
    cfg, tokenizer, examples = _setup(
        data_dir or default_data_dir(), task, records, max_length, batch_size, micro_batch_size, micro_batch_tokens,
        lr, model, dtype,
    )  # fmt: skip
    compute = choose_dtype(cfg.dtype, device.type)
    lengths = [len(e.ids) for e in examples]
    order = step_order(cfg, lengths) if baseline_order == "ftgen" else None
    tokens = sum(lengths)
    say(
        f"bench train: {task}, {len(examples)} records, {tokens} tokens ({sum(e.n_answer for e in examples)} "
        f"response), max length {max_length}, batch {batch_size}, lr {lr}, 1 epoch, "
        f"{str(compute).removeprefix('torch.')} on {device_name(device)}"
    )
    how = (
        "same batches in the same order for all: ftgen's epoch plan, read sequentially by the baselines"
        if order is not None
        else "the baselines shuffle the data themselves (--baseline-order random)"
    )
    micro = baseline_micro_batch_size
    say(f"  {how}; baseline micro-batches of {micro} x {batch_size // micro} accumulation")
    if "trl" in baselines:
        checkpointing = "on (TRL's default)" if trl_checkpointing else "off (--no-trl-gradient-checkpointing)"
        say(f"  TRL: gradient checkpointing {checkpointing}")
    bench = Bench(cfg, tokenizer, examples, order, micro, compute, device, trl_checkpointing)
    peak = matmul_peak(device, compute)

    results: dict[str, dict] = {}
    names = ["ftgen", *baselines]
    with tempfile.TemporaryDirectory(prefix="ftgen-bench-train-") as tmp:
        for r in range(repeat):
            for who in names[r % len(names) :] + names[: r % len(names)]:
                say(f"round {r + 1}/{repeat}: {who} ...")
                peak = max(peak, matmul_peak(device, compute))  # the device's best, whatever else runs on it
                res = _round(who, r, bench, Path(tmp))
                best = results.get(who)
                if best is None or res["seconds"] < best["seconds"]:
                    results[who] = res
                say(f"  {who}: {tokens / res['seconds']:.1f} tokens/s, final loss {res['loss']:.4f}")
    name = str(compute).removeprefix("torch.")
    say(f"measured {name} matmul peak on {device_name(device)}: {peak / 1e12:.2f} TFLOP/s (best before each round)")
    return _report(results, cfg, examples, peak, device, baselines, out, repeat)


def _report(results: dict, cfg, examples, peak: float, device, baselines, out: Path | None, repeat: int) -> dict:
    lengths = [len(e.ids) for e in examples]
    tokens, resp_tokens = sum(lengths), sum(e.n_answer for e in examples)
    n_params = results["ftgen"]["params"]
    mcfg = model_config(cfg.model)
    head = mcfg.vocab_size * mcfg.hidden_size
    needed = 6 * (n_params - head) * tokens + 6 * head * resp_tokens
    ours_padded = sum(max(lengths[i] for i in mb) * len(mb) for mb in _ftgen_micro_batches(cfg, lengths))
    results["ftgen"]["padded_tokens"] = ours_padded
    for r in results.values():
        r["tokens_per_s"] = tokens / r["seconds"]
        r["mfu"] = 6 * n_params * r["tokens_per_s"] / peak
        r["mfu_needed"] = needed / r["seconds"] / peak
        r["padding_efficiency"] = tokens / r["padded_tokens"]
        r["first_step_loss"] = r["step_losses"][0] if r["step_losses"] else math.nan
        pairs = list(zip(r["step_losses"], results["ftgen"]["step_losses"], strict=False))
        r["step_loss_gap"] = max((abs(a - b) / b for a, b in pairs), default=math.nan)  # vs ftgen, step by step
    names = ["ftgen", *baselines]
    say(f"{'':24}" + "".join(f"{BASELINES.get(n, n):>12}" for n in names))
    rows = [("seconds", "{:.1f}"), ("tokens_per_s", "{:.0f}"), ("padding_efficiency", "{:.0%}"), ("mfu", "{:.1%}")]
    rows += [("mfu_needed", "{:.1%}"), ("first_step_loss", "{:.4f}"), ("step_loss_gap", "{:.1%}"), ("loss", "{:.4f}")]
    for key, fmt in rows:
        say(f"{key:24}" + "".join(f"{fmt.format(results[n][key]):>12}" for n in names))
    say(
        f"mfu = 6 x N x tokens/s / the measured peak of {device_name(device)} (N = {n_params / 1e6:.1f}M params); "
        "mfu_needed counts the head on response tokens only; first_step_loss: the same examples and weights; "
        "step_loss_gap: the largest step-by-step loss difference from ftgen's; "
        "loss = train-set cross-entropy per response token after the epoch"
    )
    summary = {"device": device_name(device), "peak_flops": peak, "tokens": tokens, "records": len(examples)}
    summary |= {"task": cfg.task, "max_length": cfg.max_length, "repeat": repeat, "results": results}
    summary |= {"load_average": os.getloadavg()[0]}
    ours = results["ftgen"]
    for b in baselines:
        gap = abs(ours["loss"] - results[b]["loss"]) / results[b]["loss"]
        verdict = "agree" if gap <= LOSS_TOLERANCE else "DIFFER"
        pair = f"{ours['loss']:.4f} vs {results[b]['loss']:.4f}"
        say(f"final losses vs {BASELINES[b]} {verdict}: {pair} ({gap:.1%} apart)")
        summary[f"speedup_{b}"] = ours["tokens_per_s"] / results[b]["tokens_per_s"]
        summary[f"losses_agree_{b}"] = gap <= LOSS_TOLERANCE
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(summary, indent=2) + "\n")
        say(f"wrote {out}")
    for b in baselines:
        say(f"train speedup vs {'baseline' if b == 'trainer' else BASELINES[b]}: {summary[f'speedup_{b}']:.2f}")
    return summary


def model_config(name: str):
    """The Hugging Face config of a model name (random: specs included), without loading weights."""
    from ftgen.models import load_model_config

    return load_model_config(name)


def _ftgen_micro_batches(cfg, lengths: list[int]) -> list[list[int]]:
    from ftgen.train import epoch_plan

    plan = epoch_plan(lengths, cfg.batch_size, cfg.micro_batch_size, cfg.micro_batch_tokens, cfg.seed, 0)
    return [mb for step in plan for share in step for mb in share if mb]
