"""`micro_batch_tokens: auto`: the training micro-batch token cap from the device's memory, resolved to a number
before a run's key is computed.

The cap changes how an optimizer step's examples are cut into forward passes, never which examples a step
holds (`batch_size` stays exact): the gradient is the same sum, added in another order. In fp32 two caps give
the same final weights within float tolerance (tests/test_train.py); under bf16 autocast they differ at bf16
rounding. Because summation order is part of the result, `micro_batch_tokens` stays a result field and "auto"
resolves here first, so a run's key and stored config hold the number it trained with:
    CPU      4096 (what it always was: CPU throughput does not grow with bigger passes; keys stay as they were)
    CUDA     ftgen.memory.token_budget of the device's *total* memory (deterministic: the same number on every
             rerun), capped at micro_batch_size x max_length (a pass never holds more), so every GPU large
             enough for full micro-batches gets the same number and the same keys
A study planned on a CPU and continued on a GPU therefore sees its training runs as changed (and refuses
unless --rerun-changed): the numbers would differ at the rounding level, and the store says so.
An injected FTGEN_MEMORY_LIMIT (ftgen.memory) stands for the device's memory on any machine (tests).

Imports no torch on a machine without NVIDIA's driver: planning a study stays fast.
"""

from __future__ import annotations

import os
from pathlib import Path

from ftgen.config import TrainConfig
from ftgen.errors import UserError

CPU_MICRO_BATCH_TOKENS = 4096


def cuda_possible() -> bool:
    """False when no CUDA device can be there (no NVIDIA driver loaded, or CUDA_VISIBLE_DEVICES hides them all),
    decided without importing torch; True means: ask torch."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    gpus = Path("/proc/driver/nvidia/gpus")
    return gpus.is_dir() and any(gpus.iterdir())


def auto_micro_batch_tokens(cfg: TrainConfig, *, strict: bool = True) -> int:
    """The number "auto" means for this run on this machine (see the module docstring). A run that does not
    fit even one example per pass: a UserError saying why if `strict`, else max_length (a study's plan keeps
    going; its dry run still estimates, and the trainer says why when it runs)."""
    limit = os.environ.get("FTGEN_MEMORY_LIMIT") or None
    if limit is None and not cuda_possible():
        return CPU_MICRO_BATCH_TOKENS
    import torch

    from ftgen.memory import injected_limit, lora_params, token_budget
    from ftgen.models import choose_dtype, load_model_config

    if limit is None and not torch.cuda.is_available():
        return CPU_MICRO_BATCH_TOKENS
    total = injected_limit() or torch.cuda.get_device_properties(0).total_memory
    config = load_model_config(cfg.model)
    try:
        budget = token_budget(
            total, config, choose_dtype(cfg.dtype, "cuda"), max_length=cfg.max_length,
            n_trainable=lora_params(config, cfg.lora_r) if cfg.lora_r else None,
            gradient_checkpointing=cfg.gradient_checkpointing,
        )  # fmt: skip
    except UserError:
        if strict:
            raise
        return cfg.max_length
    return min(budget, cfg.micro_batch_size * cfg.max_length)


def resolve_micro_batch_tokens(cfg: TrainConfig, *, strict: bool = True) -> TrainConfig:
    """`cfg` with micro_batch_tokens a number (or None) instead of "auto" (`strict`: see auto_micro_batch_tokens)."""
    if cfg.micro_batch_tokens != "auto":
        return cfg
    return cfg.model_copy(update={"micro_batch_tokens": auto_micro_batch_tokens(cfg, strict=strict)})
