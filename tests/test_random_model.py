"""`random:CONFIG` models: a Hugging Face config with random weights, for benchmarks and calibration only."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from ftgen.errors import UserError
from ftgen.models import is_random_model, load_model, load_tokenizer, random_model
from helpers import TINY_LLAMA, tiny_random_model


def _config(tmp_path, **changes) -> str:
    return tiny_random_model(tmp_path, **changes).removeprefix("random:")


@given(st.text(max_size=30))
def test_is_random_model_is_the_prefix(rest):
    assert is_random_model("random:" + rest)
    assert not is_random_model(rest) or rest.startswith("random:")
    assert not is_random_model(None) and not is_random_model(["random:x"])


def test_a_json_config_builds_that_shape_with_seeded_weights(tmp_path):
    spec = "random:" + _config(tmp_path)
    model, tok = load_model(spec, dtype="fp32")
    assert type(model).__name__ == "LlamaForCausalLM" and model.dtype == torch.float32 and not model.training
    assert model.config.hidden_size == 64 and len(model.model.layers) == 2
    assert len(tok) == len(load_tokenizer("default")) and tok.pad_token_id is not None  # the default's tokenizer
    again, _ = load_model(spec, dtype="fp32")
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters(), strict=True))
    rng = torch.get_rng_state()
    bf16, _ = load_model(spec, dtype="bf16")
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's random stream is left alone
    assert bf16.dtype == torch.bfloat16
    ids = torch.tensor([tok("Hello there")["input_ids"]])
    assert torch.isfinite(model(ids).logits).all()


def test_a_directory_with_its_own_tokenizer(tmp_path, default_model_dir):
    (tmp_path / "config.json").write_text(json.dumps(TINY_LLAMA | {"vocab_size": 49160}))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(default_model_dir / name, tmp_path / name)
    model, tok = random_model(f"random:{tmp_path}", meta=True)  # meta: shapes only, no weights made
    assert next(model.parameters()).device.type == "meta" and model.config.vocab_size == 49160
    assert tok("Hello")["input_ids"] == load_tokenizer("default")("Hello")["input_ids"]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("random:NOFILE", "expected random:DIR \\(holding config.json\\) or random:FILE.json"),
        ("random:EMPTYDIR", "expected random:DIR \\(holding config.json\\)"),
        ("random:NOTJSON", "not a Hugging Face model config"),
        ("random:SMALLVOCAB", "vocab_size 32000 is smaller than its tokenizer's 49152 tokens"),
    ],
)
def test_bad_random_specs_are_one_user_error(tmp_path, spec, expected):
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.json").write_text('{"model_type": "no-such-architecture"}')
    subst = {
        "NOFILE": str(tmp_path / "missing.json"),
        "EMPTYDIR": str(tmp_path / "empty"),
        "NOTJSON": str(tmp_path / "bad.json"),
        "SMALLVOCAB": _config(tmp_path, vocab_size=32000),
    }
    name, _, key = spec.partition(":")
    with pytest.raises(UserError, match=expected):
        load_model(f"{name}:{subst[key]}", dtype="fp32")


def test_the_engine_runs_on_a_random_model(tmp_path, paper_data):
    from ftgen.data import load_test_set
    from ftgen.evaluate import evaluate
    from ftgen.tasks import load_task

    model, tok = load_model("random:" + _config(tmp_path), dtype="fp32")
    task = load_task("sentiment")
    records = load_test_set(paper_data, task, "sst2", limit=4).records
    result = evaluate(model, tok, task, records)
    assert result.metrics["n"] == 4 and all(p["prediction"] in task.labels for p in result.predictions)
