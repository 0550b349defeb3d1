import copy

import pytest
import torch

from ftgen.analysis import linear_cka, output_divergence, probe_set, weight_drift
from ftgen.tasks import load_task
from helpers import run_cli


@pytest.fixture(scope="module")
def probes(paper_data):
    return probe_set(paper_data, [load_task("sentiment"), load_task("detection")], per_task=2)


def test_untrained_copy_has_zero_drift(default_model_fp32, probes):
    model, tokenizer = default_model_fp32
    twin = copy.deepcopy(model)
    drift = weight_drift(model, twin)
    assert drift["total"] == {"rel_change": 0.0, "cosine": pytest.approx(1.0)}
    assert all(x["rel_change"] == 0.0 for x in drift["per_layer"])
    assert len(drift["per_layer"]) == model.config.num_hidden_layers
    assert {"q_proj", "down_proj", "embed_tokens"} <= set(drift["per_module"])
    out = output_divergence(model, twin, tokenizer, probes)
    assert out["kl_mean"] == 0.0 and set(out["kl_per_task"]) == {"sentiment", "detection"}
    assert out["cka_per_layer"] == pytest.approx([1.0] * (model.config.num_hidden_layers + 1))


def test_perturbed_layer_drifts_and_kl_is_positive(default_model_fp32, probes):
    model, tokenizer = default_model_fp32
    twin = copy.deepcopy(model)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in twin.model.layers[5].parameters():
            p.add_(torch.randn_like(p) * 0.02)
    drift = weight_drift(model, twin)
    layers = {x["layer"]: x for x in drift["per_layer"]}
    assert layers[5]["rel_change"] > 0.01 and layers[4]["rel_change"] == 0.0
    assert 0 < drift["total"]["rel_change"] < layers[5]["rel_change"]
    out = output_divergence(model, twin, tokenizer, probes)
    assert out["kl_mean"] > 0 and all(v >= 0 for v in out["kl_per_task"].values())
    assert out["cka_per_layer"][5] == pytest.approx(1.0)  # layers before the change see the same inputs
    assert out["cka_per_layer"][-1] < 1.0


def test_linear_cka_properties():
    torch.manual_seed(0)
    x = torch.randn(200, 16)
    q, _ = torch.linalg.qr(torch.randn(16, 16))
    assert linear_cka(x, x) == pytest.approx(1.0)
    assert linear_cka(x, 3 * x @ q) == pytest.approx(1.0)  # invariant to rotation and scale
    assert linear_cka(x, torch.randn(200, 16)) < 0.3


@pytest.mark.slow
def test_larger_lr_drifts_more(paper_data, tmp_path):
    from ftgen.train import TrainConfig, train

    drifts = {}
    for lr in (1e-6, 1e-4):
        cfg = TrainConfig(
            task="sentiment",
            train_set="amazon",
            train_size=16,
            epochs=1,
            lr=lr,
            batch_size=8,
            micro_batch_size=4,
            max_length=128,
            data_dir=str(paper_data),
            seed=0,
        )
        train(cfg, tmp_path / f"lr{lr}")
    proc = run_cli(
        "analyze",
        "drift",
        str(tmp_path / "lr1e-06"),
        str(tmp_path / "lr0.0001"),
        "--data-dir",
        str(paper_data),
        "--probe-tasks",
        "sentiment",
        "--per-task",
        "2",
        "--out",
        str(tmp_path / "d"),
    )
    assert proc.returncode == 0, proc.stderr
    import json

    result = json.loads((tmp_path / "d" / "drift.json").read_text())
    drifts = {k: v["weights"]["total"]["rel_change"] for k, v in result.items()}
    kls = {k: v["outputs"]["kl_mean"] for k, v in result.items()}
    assert 0 < drifts["lr1e-06"] < drifts["lr0.0001"]
    assert 0 <= kls["lr1e-06"] < kls["lr0.0001"]
    assert (tmp_path / "d" / "drift.png").stat().st_size > 10_000
