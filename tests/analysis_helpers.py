"""Tiny random Llama models, perturbed copies and fake training runs for the analysis tests (seconds, not minutes)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch


def tiny_llama(layers: int = 3, seed: int = 0, tie: bool = True):
    """A random-weight Llama (width 32) over the default model's tokenizer, in eval mode: (model, tokenizer)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from ftgen.models import load_tokenizer

    tok = load_tokenizer("default")
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=tie,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    return LlamaForCausalLM(config).eval(), tok


def perturbed(model, seed: int, scale: float, where=lambda name: True):
    """A copy of `model` with N(0, scale^2) noise added to the parameters whose name satisfies `where`."""
    twin = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in twin.named_parameters():
            if where(name):
                p.add_(torch.randn(p.shape, generator=gen) * scale)
    return twin


def save_model(model, tokenizer, path: Path) -> Path:
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def fake_run(path: Path, model, tokenizer, *, task: str, fticl_shots: int, base: str | Path, kind: str = "full"):
    """A directory shaped like an `ftgen train` output: model/ and a train_summary.json naming task and method."""
    save_model(model, tokenizer, path / "model")
    summary = {
        "config": {"task": task, "fticl_shots": fticl_shots},
        "task": task,
        "kind": kind,
        "base_model": str(base),
    }
    (path / "train_summary.json").write_text(json.dumps(summary), encoding="utf-8")
    return path


def lora_adapter(base_dir: Path, path: Path, seed: int = 0, r: int = 2) -> Path:
    """A LoRA adapter (all linear layers) on the model in `base_dir`, with random A and B, saved in `path`."""
    from peft import LoraConfig, get_peft_model

    from ftgen.models import load_model

    base, tok = load_model(str(base_dir), dtype="fp32", device="cpu")
    peft_model = get_peft_model(base, LoraConfig(r=r, lora_alpha=2 * r, target_modules="all-linear", lora_dropout=0))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    peft_model.peft_config["default"].base_model_name_or_path = str(base_dir)
    peft_model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def weights_of(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the safetensors files in a checkpoint dir."""
    from safetensors.torch import load_file

    out = {}
    for f in sorted(Path(path).glob("*.safetensors")):
        out |= load_file(f)
    assert out, f"no weights in {path}"
    return out
