import json

import pytest
import torch

from ftgen.errors import UserError
from ftgen.models import choose_dtype, gguf_path, load_model, max_length


def test_cached_default_model_is_a_plain_checkpoint(default_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = json.loads((default_model_dir / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert (default_model_dir / "model.safetensors").exists()
    model = AutoModelForCausalLM.from_pretrained(default_model_dir)  # bare load, as other tools do
    tokenizer = AutoTokenizer.from_pretrained(default_model_dir)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    assert tokenizer.eos_token == "<|im_end|>"


def test_cached_model_equals_the_gguf_model(default_model_dir):
    """The rebuilt checkpoint computes exactly what transformers' GGUF loader computes."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = gguf_path()
    ref = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    ours = AutoModelForCausalLM.from_pretrained(default_model_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(default_model_dir)
    ids = tok("The capital of France is Paris.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.allclose(ref(ids).logits, ours(ids).logits, atol=1e-4)


def test_default_model_knows_english(default_model_fp32):
    """A real pretrained model: fluent text is far more likely than the same words shuffled."""
    model, tokenizer = default_model_fp32

    def loss(text):
        ids = tokenizer(text, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            return model(ids, labels=ids).loss.item()

    fluent = "The cat sat on the mat and looked out of the window at the birds."
    shuffled = "window mat the at looked sat birds the cat of and on out the The."
    assert loss(fluent) < loss(shuffled) - 1.0
    assert tokenizer.pad_token is not None
    assert max_length(model, tokenizer) == 8192 and max_length(model, tokenizer, cap=1024) == 1024


def test_dtype_choice(monkeypatch):
    assert choose_dtype("fp32") == torch.float32
    monkeypatch.setenv("FTGEN_DTYPE", "bf16")
    assert choose_dtype("auto") == torch.bfloat16
    monkeypatch.delenv("FTGEN_DTYPE")
    with pytest.raises(UserError, match="unknown dtype"):
        choose_dtype("int3")


def test_unloadable_model(tmp_path):
    with pytest.raises(UserError, match="cannot load model"):
        load_model(str(tmp_path))  # an empty directory
    with pytest.raises(UserError, match="no such directory"):
        load_model("./no/such/model")
