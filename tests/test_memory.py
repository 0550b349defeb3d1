"""Batch sizes from memory (ftgen.memory): the simulated device limit, the halving search, and the training
token budget, with real tensors and a real forward/backward of Llama-shaped models."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import LlamaConfig, LlamaForCausalLM

from ftgen import memory
from ftgen.errors import UserError

MB = 1_000_000


def test_parse_bytes_and_batch_size_values():
    assert memory.parse_bytes("200MB") == 200 * MB
    assert memory.parse_bytes("1.5GiB") == int(1.5 * 2**30)
    assert memory.parse_bytes("4e9") == 4_000_000_000
    assert memory.parse_bytes(123) == 123
    with pytest.raises(UserError, match="FTGEN_MEMORY_LIMIT"):
        memory.parse_bytes("lots")
    assert memory.check_batch_size("auto") == "auto"
    assert memory.check_batch_size("3") == 3 and memory.check_batch_size(16) == 16
    for bad in ("0", "-2", "x", "3.0", 2.5, None, ""):
        with pytest.raises(UserError, match="--batch-size: expected a positive integer or 'auto'"):
            memory.check_batch_size(bad, "--batch-size")


def test_auto_is_a_fixed_16_on_a_cpu_and_a_search_on_a_gpu_or_under_a_limit():
    assert memory.start_batch_size("auto", 500, "cpu", None) == (16, False)
    assert memory.start_batch_size("auto", 5, "cpu", None) == (5, False)
    assert memory.start_batch_size("auto", 500, "cpu", 10 * MB) == (500, True)
    assert memory.start_batch_size("auto", 5000, "cuda", None) == (memory.AUTO_MAX_BATCH, True)
    assert memory.start_batch_size(7, 500, "cuda", None) == (7, False)


def test_simulated_limit_counts_live_tensors_only():
    with memory.SimulatedLimit(10 * MB) as counter:
        a = torch.empty(6 * MB, dtype=torch.uint8)
        del a  # freed: no longer counts
        b = torch.empty(6 * MB, dtype=torch.uint8)
        view = b[: MB // 2]  # a view shares the storage: not counted twice
        assert counter.peak == 6 * MB
        with pytest.raises(torch.OutOfMemoryError, match="simulated out of memory") as err:
            torch.empty(5 * MB, dtype=torch.uint8)
        del view, b
    from accelerate.utils.memory import should_reduce_batch_size

    assert should_reduce_batch_size(err.value)  # the same test accelerate applies to CUDA's error
    assert memory.is_out_of_memory(err.value)


class _Rows:
    """A stand-in workload: a batch allocates `cost(row)` bytes per row at once, under the simulated limit."""

    def __init__(self, per_row: int = 0, cost=None):
        self.cost = cost or (lambda i: per_row)
        self.tried, self.done = [], []

    def __call__(self, idx: list[int]) -> None:
        self.tried.append(len(idx))
        block = torch.empty(sum(map(self.cost, idx)), dtype=torch.uint8)  # raises past the limit
        del block
        self.done.extend(idx)  # results recorded only once the batch has finished


@settings(max_examples=12, deadline=None)  # each search runs gc.collect (accelerate)
@given(rows=st.integers(1, 300), per_row=st.integers(1000, 50_000), fits=st.integers(1, 400))
def test_auto_halves_to_a_size_that_fits_and_processes_every_row_once(rows, per_row, fits):
    limit = fits * per_row + per_row // 2  # `fits` rows fit, one more does not
    work = _Rows(per_row)
    order = list(range(rows))[::-1]
    used = memory.run_in_batches(work, order, "auto", device="cpu", limit=limit)
    assert work.done == order  # every row once, in order
    start = min(rows, memory.AUTO_MAX_BATCH)
    assert used <= fits  # it fits ...
    assert used == start or used >= (fits + 1) // 2  # ... and is the first halving that does
    expected_tries = [start]
    while expected_tries[-1] > fits:
        expected_tries.append(expected_tries[-1] // 2)
    assert work.tried[: len(expected_tries)] == expected_tries  # halving, never a retry at the same size
    assert all(b <= used for b in work.tried[len(expected_tries) :])


def test_auto_never_retries_forever_and_fixed_sizes_are_not_searched():
    work = _Rows(per_row=10 * MB)
    with pytest.raises(UserError, match="out of memory even at batch size 1"):
        memory.run_in_batches(work, list(range(64)), "auto", device="cpu", limit=MB)
    assert work.tried == [64, 32, 16, 8, 4, 2, 1] and work.done == []
    work = _Rows(per_row=MB)
    with pytest.raises(UserError, match="out of memory at batch size 8: use batch size auto"):
        memory.run_in_batches(work, list(range(64)), 8, device="cpu", limit=4 * MB)
    assert work.tried == [8]
    # rows done before an out-of-memory error keep their results; the failed batch is redone smaller
    work = _Rows(cost=lambda i: MB if i < 8 else 4 * MB)
    assert memory.run_in_batches(work, list(range(16)), "auto", device="cpu", limit=10 * MB) == 2
    assert work.tried == [16, 8, 8, 4, 2, 2, 2, 2] and work.done == list(range(16))


def test_injected_limit_from_the_environment(monkeypatch):
    monkeypatch.delenv(memory.ENV_LIMIT, raising=False)
    assert memory.injected_limit() is None
    monkeypatch.setenv(memory.ENV_LIMIT, "64MB")
    assert memory.injected_limit() == 64 * MB
    assert memory.injected_limit("1kB") == 1000  # an explicit argument wins


# ---------------------------------------------------------------- the training token budget

SMOLLM2_135M = LlamaConfig(
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    vocab_size=49152,
    tie_word_embeddings=True,
)
LLAMA2_7B = LlamaConfig(
    hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32, vocab_size=32000
)


def test_activation_bytes_per_token_by_hand():
    # bf16 autocast: per layer 31 x 576 + 8 x 1536 + 4 x (3 x 64) = 30912 bytes, 30 layers = 927360;
    # + 7 x 576 (embedding, final norm) + 8 x 49152 x 0.25 (head on a quarter of the tokens) + 512 (mask)
    assert memory.activation_bytes_per_token(
        SMOLLM2_135M, torch.bfloat16, response_share=0.25, seq_len=512
    ) == pytest.approx(927360 + 4032 + 98304 + 512)
    # fp32: 32 x 576 + 16 x 1536 + 8 x 192 = 44544 per layer
    assert memory.activation_bytes_per_token(SMOLLM2_135M, torch.float32, response_share=0) == 30 * 44544 + 4032
    # checkpointing keeps a layer's fp32 input per layer, and one layer's activations while recomputing it
    assert (
        memory.activation_bytes_per_token(SMOLLM2_135M, torch.bfloat16, gradient_checkpointing=True, response_share=0)
        == 30 * 4 * 576 + 30912 + 4032
    )


def test_token_budget_with_numbers():
    n = 134_515_008  # SmolLM2-135M's parameters (tied embedding counted once)
    assert memory.count_params(SMOLLM2_135M) == n
    per_token = memory.activation_bytes_per_token(SMOLLM2_135M, torch.bfloat16, response_share=1.0, seq_len=1024)
    assert per_token == 927360 + 4032 + 393216 + 1024
    budget = memory.token_budget(16 * 2**30, SMOLLM2_135M, torch.bfloat16, max_length=1024, n_params=n)
    # 0.8 x 16 GiB - 18 bytes x 134.5M params (weights, grads, AdamW, the bf16 copy), / 1325632 bytes per token
    assert budget == int((0.8 * 16 * 2**30 - 18 * n) / 1325632) == 8541
    # LoRA: only the adapter is trained; checkpointing keeps far less per token; a measured figure wins
    lora = memory.token_budget(16 * 2**30, SMOLLM2_135M, torch.bfloat16, max_length=1024, n_params=n, n_trainable=10**6)
    ckpt = memory.token_budget(
        16 * 2**30, SMOLLM2_135M, torch.bfloat16, max_length=1024, n_params=n, gradient_checkpointing=True
    )
    measured = memory.token_budget(
        16 * 2**30, SMOLLM2_135M, torch.bfloat16, max_length=1024, n_params=n, measured_bytes_per_token=10**6
    )
    assert budget < lora and budget < ckpt and measured == int((0.8 * 16 * 2**30 - 18 * n) / 10**6)


def test_lora_params_count_what_peft_trains():
    from peft import LoraConfig, get_peft_model

    config = LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=500)  # fmt: skip
    model = get_peft_model(LlamaForCausalLM(config), LoraConfig(r=8, target_modules="all-linear"))
    assert memory.lora_params(config, 8) == model.get_nb_trainable_parameters()[0]
    assert memory.lora_params(LLAMA2_7B, 16) == 39_976_960  # as PEFT prints for Llama-2-7B


def test_a_7b_model_does_not_fit_full_fine_tuning_on_80_gb_but_lora_does():
    n = memory.count_params(LLAMA2_7B)
    assert n == 6_738_415_616
    with pytest.raises(UserError, match=r"training does not fit: 74.5 GiB free, 113.0 GiB for weights"):
        memory.token_budget(80 * 10**9, LLAMA2_7B, torch.bfloat16, max_length=1024, n_params=n)
    lora = memory.token_budget(
        80 * 10**9,
        LLAMA2_7B,
        torch.bfloat16,
        max_length=1024,
        n_params=n,
        n_trainable=memory.lora_params(LLAMA2_7B, 16),
    )
    assert 1024 <= lora < 20_000


def test_the_budget_changes_micro_batches_never_the_optimizer_step():
    from ftgen.train import epoch_plan

    lengths = [((i * 37) % 500) + 20 for i in range(200)]
    budget = 1500
    plan = epoch_plan(lengths, 16, 16, budget, seed=0, epoch=0)
    sizes = [sum(len(mb) for mb in step[0]) for step in plan]
    assert sorted(sizes) == [8] + [16] * 12  # each step holds the configured batch (the last one: the rest)
    for step in plan:
        for mb in step[0]:
            assert len(mb) * max(lengths[i] for i in mb) <= budget


def _saved_bytes(model, ids: torch.Tensor, n_resp: int, dtype: torch.dtype) -> int:
    from ftgen.train import Example, ResponseLoss, collate

    batch = collate([Example(row.tolist(), len(row) - n_resp) for row in ids], 0)
    with memory.saved_activation_bytes(model) as saved:
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            ResponseLoss(model)(**batch)
    return saved["bytes"]


@settings(max_examples=6, deadline=None)
@given(
    width=st.sampled_from([(64, 4), (96, 6), (128, 8)]),
    inter=st.integers(100, 400),
    layers=st.integers(1, 3),
    kv_div=st.sampled_from([1, 2]),
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
)
def test_the_per_token_coefficients_match_what_autograd_keeps(width, inter, layers, kv_div, dtype):
    """Re-measure the documented coefficients on random Llama shapes: the bytes autograd saves per extra
    token (two batch sizes, so constants like autocast's weight copies cancel) match the formula."""
    hidden, heads = width
    config = LlamaConfig(
        hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=heads // kv_div, vocab_size=1000,
    )  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).train()
    seq, n_resp = 64, 4
    small = _saved_bytes(model, torch.randint(0, 1000, (2, seq)), n_resp, dtype)
    large = _saved_bytes(model, torch.randint(0, 1000, (6, seq)), n_resp, dtype)
    measured = (large - small) / (4 * seq)
    predicted = memory.activation_bytes_per_token(config, dtype, response_share=n_resp / seq, seq_len=seq)
    assert measured == pytest.approx(predicted, rel=0.1)
