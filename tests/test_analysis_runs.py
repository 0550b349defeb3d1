"""The analyses on runs that `ftgen.train` really wrote (a tiny Llama, a few steps): the train_summary.json contract
(train task, FT vs FTICL, full vs LoRA, base model) and a trainer-made LoRA adapter interpolated and analysed."""

from __future__ import annotations

import pytest
import torch
from analysis_helpers import save_model, tiny_llama, weights_of

from ftgen.analysis import ModelCache, analyze_layers, compare_methods, interpolate_model, run_info
from ftgen.models import load_model
from ftgen.tasks import load_task
from ftgen.train import TrainConfig, train


@pytest.fixture(scope="module")
def trained(tmp_path_factory, paper_data):
    root = tmp_path_factory.mktemp("trained")
    model, tok = tiny_llama(layers=2)
    base = save_model(model, tok, root / "base")
    common = dict(
        model=str(base), task="sentiment", train_size=8, data_dir=str(paper_data), epochs=1, lr=1e-3,
        batch_size=4, micro_batch_size=4, max_length=256, dtype="fp32",
    )  # fmt: skip
    runs = {"ft": {}, "fticl": {"fticl_shots": 2}, "lora": {"lora_r": 4}}
    for name, extra in runs.items():
        train(TrainConfig(**common, **extra), root / name)
    return base, {name: root / name for name in runs}


def test_run_info_reads_what_the_trainer_wrote(trained):
    base, runs = trained
    infos = {name: run_info(path) for name, path in runs.items()}
    assert [(i["method"], i["kind"], i["train_task"]) for i in infos.values()] == [
        ("ft", "full", "sentiment"),
        ("fticl", "full", "sentiment"),
        ("ft", "lora", "sentiment"),
    ]
    assert infos["fticl"]["fticl_shots"] == 2
    assert all(i["base_model"] == str(base) for i in infos.values())
    assert run_info(runs["ft"] / "model")["label"] == "ft"  # found from the model dir too


def test_layers_of_trained_runs(trained, paper_data):
    _, runs = trained
    tasks = [load_task("sentiment"), load_task("detection")]
    models = ModelCache()
    profiles = [analyze_layers(runs[n], data_dir=paper_data, tasks=tasks, per_task=1, models=models) for n in runs]
    assert all(p["total"]["mean_abs_change"] > 0 for p in profiles)
    lora = profiles[2]
    assert lora["outside_layers"]["embed_tokens"]["mean_abs_change"] == 0.0  # LoRA adapts the linear layers only
    assert all(e["families"]["norm"]["mean_abs_change"] == 0.0 for e in lora["layers"])
    reading = compare_methods(profiles)
    assert reading["runs"] == {"ft": 1, "fticl": 1}  # the LoRA run has no LoRA FTICL partner: left out
    assert "per layer the gap is largest in layers" in reading["sentence"]


def test_trainer_made_lora_adapter_interpolates_to_its_merge(trained, tmp_path):
    base, runs = trained
    merged, _ = load_model(str(runs["lora"] / "model"), dtype="fp32", device="cpu")
    merged_w = merged.state_dict()
    for alpha in (0.0, 1.0):
        meta = interpolate_model(runs["lora"], alpha, tmp_path / str(alpha))
        assert meta["kind"] == "lora" and meta["base"] == str(base)
    base_w = weights_of(base)
    for name, w in weights_of(tmp_path / "0.0").items():
        assert torch.equal(w, base_w[name]), name
    for name, w in weights_of(tmp_path / "1.0").items():
        assert torch.equal(w, merged_w[name]), name
