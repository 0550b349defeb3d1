"""Benchmark of training (`ftgen bench train`): ftgen's trainer against a plain `transformers.Trainer`.

Both fine-tune the same model on the same records for one epoch, from the same token ids (ftgen's
prompt builder), with the same effective batch (16 examples per optimizer step), learning rate,
linear schedule, seed, fused AdamW, clipping and bf16 autocast over fp32 master weights. They differ
in what ftgen is built to do better:
- baseline: the paper's recipe as written with Trainer: micro-batches of 4 in random order padded to
  their longest example (DataCollatorForSeq2Seq) x 4 accumulation, labels -100 on the prompt, the LM
  head and the full-vocabulary fp32 log-softmax on every position;
- ftgen (its defaults): length-grouped steps split into micro-batches of up to 16 examples / 4096
  padded tokens (so short examples share one forward pass), the LM head on response positions only.

Throughput = real (non-pad) tokens of the epoch / seconds of the training loop (model loading and
saving excluded on both sides). Quality = the mean cross-entropy per response token of each trained
model on the training records, measured afterwards by the same function: the two must be close.

MFU = achieved model FLOP/s / peak, with the peak measured here as the best of repeated large bf16
matmuls. Model FLOPs per trained token, as usual, = 6 x N (N = all parameters, the tied 49k x 576
embedding counted once, since it is the LM head's matmul): forward 2N + backward 4N; attention's
O(seq) term is left out (under 10% at these lengths). A second figure counts only the FLOPs the
task needs: 6 x N_body per token + 6 x (vocab x width) per response token (the head is not needed on
prompt positions); on that measure both trainers do the same work, so its ratio is the speedup.

Run as `ftgen bench train`, or `python benchmarks/bench_train.py` from the repository root.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("FTGEN_PAPER_DATA", REPO.parent / "shared" / "paper-data"))


def _say(msg: str) -> None:
    print(msg, flush=True)


def matmul_peak(dtype: torch.dtype = torch.bfloat16, n: int = 2048, reps: int = 8) -> float:
    """Best FLOP/s of an n x n x n matmul in `dtype` on this machine (the MFU denominator)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.matmul(a, b)  # warm-up: kernel selection, page faults
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def _baseline(cfg, micro_batch_size: int, examples, tokenizer, base_path: str, out: Path) -> dict:
    """A plain transformers.Trainer on the same token ids: pad to longest, full logits everywhere."""
    from transformers import (
        AutoModelForCausalLM,
        DataCollatorForSeq2Seq,
        PrinterCallback,
        Trainer,
        TrainingArguments,
    )

    from ftgen.models import choose_dtype

    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    rows = [{"input_ids": e.ids, "labels": [-100] * e.n_prompt + e.ids[e.n_prompt :]} for e in examples]
    tokenizer.padding_side = "right"
    collate = DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=-100)
    padded = {"tokens": 0}

    def counting_collate(features):
        batch = collate(features)
        padded["tokens"] += batch["input_ids"].numel()
        return batch

    bf16 = choose_dtype(cfg.dtype, "cpu") == torch.bfloat16
    args = TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=micro_batch_size,
        gradient_accumulation_steps=cfg.batch_size // micro_batch_size,
        num_train_epochs=1,
        learning_rate=cfg.lr,
        lr_scheduler_type="linear",
        weight_decay=0.0,
        max_grad_norm=1.0,
        bf16=bf16,
        use_cpu=not torch.cuda.is_available(),
        seed=cfg.seed,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=counting_collate)
    trainer.remove_callback(PrinterCallback)  # no per-step dicts on stdout
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"model": trainer.model, "seconds": seconds, "padded_tokens": padded["tokens"], "step_losses": losses}


def run(
    data_dir: Path = DEFAULT_DATA,
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
    out: Path | None = None,
) -> dict:
    """Train one epoch both ways (`repeat` times, alternating which goes first; the best time counts);
    print tokens/s, losses, MFU; the last line is the speedup."""
    from ftgen.models import load_model, load_tokenizer, resolve_model
    from ftgen.train import TrainConfig, epoch_plan, load_records, response_loss, tokenize, train

    overrides = {"micro_batch_size": micro_batch_size, "micro_batch_tokens": micro_batch_tokens}
    cfg = TrainConfig(
        model=model,
        task=task,
        train_size=records,
        data_dir=str(data_dir),
        epochs=1,
        lr=lr,
        batch_size=batch_size,
        max_length=max_length,
        **{k: v for k, v in overrides.items() if v is not None},
    )
    base_path = resolve_model(model)
    tokenizer = load_tokenizer(base_path)
    examples = tokenize(cfg, *load_records(cfg), tokenizer).examples
    lengths = [len(e.ids) for e in examples]
    tokens, resp_tokens = sum(lengths), sum(e.n_answer for e in examples)
    plan = epoch_plan(lengths, batch_size, cfg.micro_batch_size, cfg.micro_batch_tokens, cfg.seed, 0)
    ours_passes = [mb for step in plan for mb in step[0] if mb]
    ours_padded = sum(max(lengths[i] for i in mb) * len(mb) for mb in ours_passes)
    _say(
        f"bench train: {task}, {len(examples)} records, {tokens} tokens ({resp_tokens} response), max length "
        f"{max_length}, batch {batch_size}, lr {lr}, 1 epoch, {torch.get_num_threads()} threads"
    )
    _say(
        f"  ftgen: length-grouped steps, micro-batches of <= {cfg.micro_batch_size} examples and "
        f"<= {cfg.micro_batch_tokens} tokens ({len(ours_passes)} forward passes); baseline: "
        f"{baseline_micro_batch_size} x {batch_size // baseline_micro_batch_size} accumulation, random order "
        f"({math.ceil(len(examples) / baseline_micro_batch_size)} forward passes)"
    )
    peak = matmul_peak(torch.bfloat16)
    _say(f"measured bf16 matmul peak: {peak / 1e9:.0f} GFLOP/s (fp32: {matmul_peak(torch.float32) / 1e9:.0f})")

    ours = {"seconds": math.inf, "padded_tokens": ours_padded}
    base = {"seconds": math.inf}
    with tempfile.TemporaryDirectory(prefix="ftgen-bench-train-") as tmp:
        for r in range(repeat):
            for who in ("ftgen", "baseline") if r % 2 == 0 else ("baseline", "ftgen"):
                _say(f"round {r + 1}/{repeat}: {who} ...")
                if who == "ftgen":
                    run_dir = Path(tmp) / f"ftgen-{r}"
                    s = train(cfg, run_dir)
                    ours["seconds"] = min(ours["seconds"], s["elapsed_s"])
                    ours["mean_step_loss"] = s["loss_first_epoch"]
                    trained, _ = load_model(str(run_dir / "model"), dtype="fp32")
                    ours["loss"] = response_loss(trained, examples, tokenizer.pad_token_id, dtype=cfg.dtype)
                    del trained
                else:
                    b = _baseline(cfg, baseline_micro_batch_size, examples, tokenizer, base_path, Path(tmp) / "base")
                    base["seconds"] = min(base["seconds"], b["seconds"])
                    base["padded_tokens"] = b["padded_tokens"]
                    base["loss"] = response_loss(b["model"], examples, tokenizer.pad_token_id, dtype=cfg.dtype)
                    base["mean_step_loss"] = sum(b["step_losses"]) / max(len(b["step_losses"]), 1)
                    del b
                _say(f"  {who}: {tokens / (ours if who == 'ftgen' else base)['seconds']:.1f} tokens/s (best so far)")

    n_params = s["params"]
    from transformers import AutoConfig

    mcfg = AutoConfig.from_pretrained(base_path)
    head = mcfg.vocab_size * mcfg.hidden_size
    needed = 6 * (n_params - head) * tokens + 6 * head * resp_tokens
    for r in (ours, base):
        r["tokens_per_s"] = tokens / r["seconds"]
        r["mfu"] = 6 * n_params * r["tokens_per_s"] / peak
        r["mfu_needed"] = needed / r["seconds"] / peak
        r["padding_efficiency"] = tokens / r["padded_tokens"]
    _say(f"{'':24}{'ftgen':>12}{'baseline':>12}")
    for key, fmt in [
        ("seconds", "{:.1f}"),
        ("tokens_per_s", "{:.0f}"),
        ("padding_efficiency", "{:.0%}"),
        ("mfu", "{:.1%}"),
        ("mfu_needed", "{:.1%}"),
        ("mean_step_loss", "{:.4f}"),
        ("loss", "{:.4f}"),
    ]:
        _say(f"{key:24}{fmt.format(ours[key]):>12}{fmt.format(base[key]):>12}")
    _say(
        "mfu = 6 x N x tokens/s / peak (N = %.1fM params); mfu_needed counts the head on response tokens only; "
        "loss = train-set cross-entropy per response token after the epoch" % (n_params / 1e6)
    )
    gap = abs(ours["loss"] - base["loss"]) / base["loss"]
    verdict = "agree" if gap < 0.1 else "DIFFER"
    _say(f"final losses {verdict}: {ours['loss']:.4f} vs {base['loss']:.4f} ({gap:.1%} apart)")
    speedup = ours["tokens_per_s"] / base["tokens_per_s"]
    result = {"ftgen": ours, "baseline": base, "peak_flops": peak, "tokens": tokens, "speedup": speedup}
    result |= {"records": len(examples), "task": task, "max_length": max_length, "losses_agree": gap < 0.1}
    result |= {"repeat": repeat, "baseline_micro_batch_size": baseline_micro_batch_size}
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2) + "\n")
        _say(f"wrote {out}")
    _say(f"train speedup vs baseline: {speedup:.2f}")
    return result


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "src"))
    from ftgen.cli import main

    sys.argv = ["ftgen", "bench", "train", *sys.argv[1:]]
    main()
