"""`micro_batch_tokens: auto` (ftgen.auto_tokens): the training micro-batch token cap from the device's memory,
resolved before a run's key. The cap changes how a step is cut into forward passes, never the step itself."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_train import loss_rows, make_tiny_model, tiny_cfg, weights

from ftgen.auto_tokens import CPU_MICRO_BATCH_TOKENS, auto_micro_batch_tokens, resolve_micro_batch_tokens
from ftgen.batching import epoch_plan
from ftgen.config import TrainConfig, parse_study
from ftgen.memory import activation_bytes_per_token, count_params, training_state_bytes
from ftgen.plan import build_plan
from ftgen.train import train
from ftgen.validate import validate_study


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    return str(make_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama"))


def _limit_for(model: str, tokens: int, max_length: int) -> int:
    """An injected memory size in which `tokens` padded tokens of fp32 training fit (token_budget's arithmetic)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model)
    n = count_params(config)
    per_token = activation_bytes_per_token(config, torch.float32, seq_len=max_length)
    return int((training_state_bytes(n, n) + per_token * (tokens + 0.5)) / 0.8) + 1


@given(
    lengths=st.lists(st.integers(1, 300), min_size=1, max_size=60),
    batch=st.integers(1, 9),
    micro=st.integers(1, 9),
    caps=st.lists(st.integers(1, 3000) | st.none(), min_size=2, max_size=2),
    seed=st.integers(0, 3),
)
@settings(max_examples=150, deadline=None)
def test_the_token_cap_never_changes_which_examples_a_step_holds(lengths, batch, micro, caps, seed):
    steps = []
    for cap in caps:
        plan = epoch_plan(lengths, batch, micro, cap, seed, 0)
        steps.append([sorted(i for mb in step[0] if mb for i in mb) for step in plan])
        for step in plan:
            for mb in step[0]:
                # a pass holds one example at least; more only while the padded tokens stay under the cap
                assert mb and (len(mb) == 1 or cap is None or len(mb) * max(lengths[i] for i in mb) <= cap)
    assert steps[0] == steps[1]


def test_auto_on_a_cpu_is_4096_without_importing_torch_for_it(monkeypatch):
    monkeypatch.delenv("FTGEN_MEMORY_LIMIT", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # no CUDA device can be there
    cfg = TrainConfig(task="sentiment")
    assert cfg.micro_batch_tokens == "auto"
    assert auto_micro_batch_tokens(cfg) == CPU_MICRO_BATCH_TOKENS
    assert resolve_micro_batch_tokens(cfg).micro_batch_tokens == CPU_MICRO_BATCH_TOKENS
    assert resolve_micro_batch_tokens(cfg.model_copy(update={"micro_batch_tokens": 300})).micro_batch_tokens == 300


def test_auto_follows_the_memory_and_fp32_weights_do_not_depend_on_it(tiny_model, paper_data, tmp_path, monkeypatch):
    """Under an injected memory size that holds ~200 tokens, auto cuts the steps into smaller passes; the run
    still takes exactly batch_size examples per step, and fp32 ends with the same weights as a 4096-token cap
    (within float tolerance: only the order of the gradient's sum differs)."""
    kw = dict(task="question", train_size=16, batch_size=8, micro_batch_size=8, epochs=2, dtype="fp32")
    base = tiny_cfg(tiny_model, paper_data, **kw)
    monkeypatch.setenv("FTGEN_MEMORY_LIMIT", str(_limit_for(tiny_model, 200, base.max_length)))
    auto = resolve_micro_batch_tokens(base.model_copy(update={"micro_batch_tokens": "auto"}))
    assert auto.micro_batch_tokens == 200
    monkeypatch.delenv("FTGEN_MEMORY_LIMIT")
    s_auto = train(auto, tmp_path / "auto")
    s_big = train(base.model_copy(update={"micro_batch_tokens": 4096}), tmp_path / "big")
    assert json.loads((tmp_path / "auto" / "train_summary.json").read_text())["config"]["micro_batch_tokens"] == 200
    assert s_auto["steps"] == s_big["steps"] == 4  # 16 records / 8 per step x 2 epochs: the effective batch is kept
    for a, b in zip(loss_rows(tmp_path / "auto"), loss_rows(tmp_path / "big"), strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    wa, wb = weights(tmp_path / "auto" / "model"), weights(tmp_path / "big" / "model")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5)  # ~1e-6 apart after 4 Adam steps


def test_a_study_key_holds_the_resolved_number(paper_data, monkeypatch, tiny_model):
    """The run's config and key carry the number auto resolved to on this machine: another memory size, another
    key (the numbers would differ at float rounding); the CPU's number is the 4096 keys always held."""
    study = {
        "name": "t",
        "models": [tiny_model],
        "train": [{"task": "sentiment", "sizes": [8]}],
        "methods": [{"name": "ft"}],
        "hyper": {"lr": [1e-4], "epochs": [1], "seeds": [0]},
        "train_args": {"batch_size": 4, "max_length": 96, "dtype": "fp32"},
        "eval": {"test_sets": {"sentiment": ["sst2"]}, "shots": {"sentiment": [0]}, "limit": 4},
    }

    def run_of():
        return build_plan(validate_study(parse_study(study, "s.yaml"), paper_data, "s.yaml")).runs[0]

    monkeypatch.delenv("FTGEN_MEMORY_LIMIT", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    cpu = run_of()
    assert cpu.config.micro_batch_tokens == 4096 and cpu.identity["train"]["micro_batch_tokens"] == 4096
    monkeypatch.setenv("FTGEN_MEMORY_LIMIT", str(_limit_for(tiny_model, 150, 96)))
    small = run_of()
    assert small.config.micro_batch_tokens == 150 and small.key != cpu.key
    study["train_args"]["micro_batch_tokens"] = 4096  # a fixed number: the same key on every machine
    assert run_of().key == cpu.key


def test_a_run_that_cannot_fit_is_refused_when_it_trains_but_still_planned(tiny_model, paper_data, monkeypatch):
    from ftgen.errors import UserError

    cfg = tiny_cfg(tiny_model, paper_data, dtype="fp32").model_copy(update={"micro_batch_tokens": "auto"})
    monkeypatch.setenv("FTGEN_MEMORY_LIMIT", "1000")
    with pytest.raises(UserError, match="training does not fit"):
        resolve_micro_batch_tokens(cfg)
    assert resolve_micro_batch_tokens(cfg, strict=False).micro_batch_tokens == cfg.max_length
