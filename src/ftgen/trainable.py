"""The model under training and what moves it: the model loaded with fp32 master weights (full fine-tuning,
a LoRA adapter, or QLoRA's 4-bit base on CUDA), AdamW, the learning-rate schedule, accelerate's Accelerator,
and the final save as a standard Hugging Face checkpoint or PEFT adapter directory (atomic).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from ftgen.checkpoint import atomic_dir
from ftgen.config import TrainConfig
from ftgen.errors import UserError


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


def make_accelerator(compute_dtype: torch.dtype, grad_accum: int, micro_batch_size: int, trackers: list | None = None):
    """accelerate's Accelerator for one training run (`trackers`: ftgen.trackers.make_trackers)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        # accelerate's state is a process-wide singleton; one process may train several models in turn
        # (the study runner) with different precisions or accumulation, so start from a clean state.
        AcceleratorState._reset_state(reset_partial_state=True)
    precision = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(compute_dtype, "no")
    # cpu=True where there is no GPU: only then does accelerate set up gloo DDP between CPU processes (torchrun)
    accelerator = Accelerator(
        mixed_precision=precision,
        gradient_accumulation_steps=grad_accum,
        cpu=not torch.cuda.is_available(),
        log_with=trackers or None,
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
            _sort_adapter_targets(tmp / "adapter_config.json")
            tokenizer.save_pretrained(tmp)


def _sort_adapter_targets(path: Path) -> None:
    """PEFT writes `target_modules` from a set, in an order that changes from process to process: sort it, so a
    rerun saves the same bytes (and the same manifest)."""
    if not path.exists():
        return
    config = json.loads(path.read_text())
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
        path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
