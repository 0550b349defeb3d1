"""Calibration (ftgen.calibrate): rates measured with a real (tiny, random-weight) model on this device."""

from __future__ import annotations

import json

import torch

from ftgen.calibrate import Rates, calibrate, time_generation, time_train_steps
from helpers import tiny_random_model


def test_calibrate_measures_every_kind_on_this_device(tmp_path, paper_data):
    train = {"records": 12, "max_length": 128, "batch_size": 4, "micro_batch_size": 4, "steps": 1}
    rates = calibrate(
        tiny_random_model(tmp_path), paper_data, classify=("sentiment", "sst2", 6, 1),
        generate=("question", "socialqa", 3, 1), max_new_tokens=6, train=train,
    )  # fmt: skip
    assert isinstance(rates, Rates) and rates.notes == []
    assert "(cpu" in rates.device and rates.dtype in ("bfloat16", "float32")
    assert rates.train_tokens_s > 0 and rates.prefill_tokens_s > 0 and rates.decode_steps_s > 0 and rates.load_s > 0
    weights = 4 * rates.params  # the training copy is fp32
    assert rates.checkpoint_bytes == weights
    assert rates.peak_bytes["train"] > 3 * weights  # weights + AdamW moments + activations and gradients
    assert set(rates.peak_bytes) == {"train", "classify", "generate"}
    assert json.loads(json.dumps(rates.as_dict()))["params"] == rates.params


def test_time_train_steps_times_ftgens_own_steps(tmp_path, paper_data):
    from ftgen.models import load_model
    from ftgen.train import TrainConfig, epoch_plan, load_records, tokenize

    model, tok = load_model(tiny_random_model(tmp_path), dtype="fp32")
    cfg = TrainConfig(model="default", task="sentiment", train_size=12, data_dir=str(paper_data), max_length=128)
    examples = tokenize(cfg, *load_records(cfg), tok).examples
    before = [p.detach().clone() for p in model.parameters()]
    r = time_train_steps(model, examples, tok.pad_token_id, batch_size=4, micro_batch_size=2, steps=2, lr=1e-3)
    plan = epoch_plan([len(e.ids) for e in examples], 4, 2, 4096, seed=0, epoch=0)
    assert r["tokens"] == sum(len(examples[i].ids) for k in (1, 2) for mb in plan[k][0] for i in mb)
    assert r["tokens_s"] == r["tokens"] / r["seconds"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))  # it trained


def test_time_generation_counts_decoding_steps(tmp_path, paper_data):
    from ftgen.data import load_test_set
    from ftgen.models import load_model
    from ftgen.tasks import load_task

    model, tok = load_model(tiny_random_model(tmp_path), dtype="fp32")
    task = load_task("question").model_copy(update={"max_new_tokens": 5})
    records = load_test_set(paper_data, task, "socialqa", limit=4).records
    g = time_generation(model, tok, task, records, [], prefill_tokens_s=1e9, batch_size=2)
    assert g["batch_size"] == 2 and 0 < g["decode_steps"] <= 2 * 4  # two batches, at most 4 steps after the first
    assert g["decode_steps_s"] > 0
