"""Drift of a fine-tuned model from its base: the paper's mean |ΔW| (per module type, per layer) against a
direct torch computation, LoRA drift as the merged update, KL and CKA on real forwards of the default model."""

import copy
import json
import math

import pytest
import torch
from analysis_helpers import lora_adapter, perturbed, save_model, tiny_llama
from hypothesis import given, settings
from hypothesis import strategies as st

from ftgen.analysis import analyze_drift, compact_drift, linear_cka, output_divergence, probe_set, weight_drift
from ftgen.analysis.drift import layer_of, module_type
from ftgen.tasks import load_task
from helpers import run_cli


@pytest.fixture(scope="module")
def probes(paper_data):
    return probe_set(paper_data, [load_task("sentiment"), load_task("detection")], per_task=2)


def test_untrained_copy_has_zero_drift(default_model_fp32, probes):
    model, tokenizer = default_model_fp32
    twin = copy.deepcopy(model)
    drift = weight_drift(model, twin)
    n_params = sum(p.numel() for p in model.parameters())  # tied embeddings / LM head count once
    assert drift["total"] == {
        "mean_abs_change": 0.0,
        "rel_change": 0.0,
        "cosine": pytest.approx(1.0),
        "params": n_params,
    }
    assert all(x["rel_change"] == 0.0 and x["mean_abs_change"] == 0.0 for x in drift["per_layer"])
    assert len(drift["per_layer"]) == len(drift["per_layer_module"]) == model.config.num_hidden_layers
    assert {"q_proj", "down_proj", "embed_tokens"} <= set(drift["per_module"])
    assert set(drift["outside_layers"]) == {"embed_tokens", "norm"}  # SmolLM2 ties its LM head to the embeddings
    out = output_divergence(model, twin, tokenizer, probes)
    assert out["kl_mean"] == 0.0 and set(out["kl_per_task"]) == {"sentiment", "detection"}
    assert out["cka_per_layer"] == pytest.approx([1.0] * (model.config.num_hidden_layers + 1))
    assert set(out["cka_per_task"]) == {"sentiment", "detection"}
    for cka in out["cka_per_task"].values():
        assert cka == pytest.approx([1.0] * (model.config.num_hidden_layers + 1))


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
    assert layers[5]["mean_abs_change"] == pytest.approx(0.02 * math.sqrt(2 / math.pi), rel=0.01)  # E|N(0, s^2)|
    out = output_divergence(model, twin, tokenizer, probes)
    assert out["kl_mean"] > 0 and all(v >= 0 for v in out["kl_per_task"].values())
    assert out["cka_per_layer"][5] == pytest.approx(1.0)  # layers before the change see the same inputs
    assert out["cka_per_layer"][-1] < 1.0
    assert all(cka[5] == pytest.approx(1.0) and cka[-1] < 1.0 for cka in out["cka_per_task"].values())


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
    result = json.loads((tmp_path / "d" / "drift.json").read_text())
    drifts = {k: v["weights"]["total"]["rel_change"] for k, v in result.items()}
    mean_abs = {k: v["weights"]["total"]["mean_abs_change"] for k, v in result.items()}
    kls = {k: v["outputs"]["kl_mean"] for k, v in result.items()}
    assert 0 < drifts["lr1e-06"] < drifts["lr0.0001"]
    assert 0 < mean_abs["lr1e-06"] < mean_abs["lr0.0001"]
    assert 0 <= kls["lr1e-06"] < kls["lr0.0001"]
    assert "mean |Δw|" in proc.stdout
    assert (tmp_path / "d" / "drift.png").stat().st_size > 10_000
    assert (tmp_path / "d" / "drift.svg").read_text().lstrip().startswith("<?xml")


# ---------------------------------------------------------------- the paper's mean |ΔW| against torch


def direct_drift(base, tuned) -> dict:
    """mean |ΔW| and relative change per (layer, module type), computed plainly from the two state dicts."""
    base_sd, tuned_sd = base.state_dict(), tuned.state_dict()
    groups: dict = {}
    for name, _ in tuned.named_parameters():  # named_parameters: a tied LM head once
        w0, w1 = base_sd[name].double(), tuned_sd[name].double()
        key = (layer_of(name), module_type(name))
        g = groups.setdefault(key, {"abs": 0.0, "n": 0, "d2": 0.0, "b2": 0.0})
        g["abs"] += (w1 - w0).abs().sum().item()
        g["n"] += w0.numel()
        g["d2"] += (w1 - w0).pow(2).sum().item()
        g["b2"] += w0.pow(2).sum().item()
    return groups


ANY = object()


def combine(groups: dict, layer=ANY, module=ANY) -> tuple[float, float]:
    """(mean |ΔW|, relative change) of the groups of `layer` (None: outside the layers) and `module`."""
    chosen = [g for (lay, mod), g in groups.items() if layer in (ANY, lay) and module in (ANY, mod)]
    n = sum(g["n"] for g in chosen)
    return sum(g["abs"] for g in chosen) / n, math.sqrt(sum(g["d2"] for g in chosen) / sum(g["b2"] for g in chosen))


@pytest.fixture(scope="module")
def tiny():
    return tiny_llama(layers=3)


MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "input_layernorm", "norm"]


@settings(max_examples=12, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    scale=st.floats(1e-6, 1e-1),
    changed=st.sets(st.sampled_from([*MODULES, "embed_tokens"]), min_size=1),
    layers=st.sets(st.integers(0, 2), min_size=1),
)
def test_mean_abs_change_matches_a_direct_torch_computation(tiny, seed, scale, changed, layers):
    model, _ = tiny

    def where(name):
        return module_type(name) in changed and (layer_of(name) is None or layer_of(name) in layers)

    twin = perturbed(model, seed, scale, where)
    drift = weight_drift(model, twin)
    groups = direct_drift(model, twin)
    close = {"rel": 1e-9, "abs": 1e-15}

    def measures(summary: dict) -> tuple[float, float]:
        return summary["mean_abs_change"], summary["rel_change"]

    assert measures(drift["total"]) == pytest.approx(combine(groups), **close)
    for entry, modules in zip(drift["per_layer"], drift["per_layer_module"], strict=True):
        assert measures(entry) == pytest.approx(combine(groups, layer=entry["layer"]), **close)
        for m, s in modules["modules"].items():
            assert measures(s) == pytest.approx(combine(groups, layer=entry["layer"], module=m), **close)
    for m, s in drift["per_module"].items():
        assert measures(s) == pytest.approx(combine(groups, module=m), **close)
    for m, s in drift["outside_layers"].items():
        assert s["mean_abs_change"] == pytest.approx(combine(groups, layer=None, module=m)[0], **close)
    # the groups that were not perturbed did not move at all
    for entry in drift["per_layer_module"]:
        for m, s in entry["modules"].items():
            assert (s["mean_abs_change"] > 0) == (m in changed and entry["layer"] in layers)


def test_lora_drift_is_the_merged_update(tiny, tmp_path):
    model, tok = tiny
    base_dir = save_model(model, tok, tmp_path / "base")
    adapter = lora_adapter(base_dir, tmp_path / "adapter", seed=1)
    result = analyze_drift(adapter, str(base_dir), data_dir=None, tasks=[])
    assert "outputs" not in result
    from peft import PeftModel

    peft_model = PeftModel.from_pretrained(tiny_llama(layers=3)[0], str(adapter))
    scale = peft_model.peft_config["default"].lora_alpha / peft_model.peft_config["default"].r
    expected_abs, n = {}, {}
    for name, module in peft_model.named_modules():
        if hasattr(module, "lora_A") and "default" in module.lora_A:
            delta = (module.lora_B["default"].weight @ module.lora_A["default"].weight).double() * scale
            mtype = name.split(".")[-1]
            expected_abs[mtype] = expected_abs.get(mtype, 0.0) + delta.abs().sum().item()
            n[mtype] = n.get(mtype, 0) + delta.numel()
    per_module = result["weights"]["per_module"]
    for mtype in expected_abs:
        assert per_module[mtype]["mean_abs_change"] == pytest.approx(expected_abs[mtype] / n[mtype], rel=1e-5)
    assert per_module["embed_tokens"]["mean_abs_change"] == 0.0  # LoRA on all-linear leaves the embeddings
    assert per_module["input_layernorm"]["mean_abs_change"] == 0.0
    compact = compact_drift(result)
    assert compact["mean_abs_change"] == result["weights"]["total"]["mean_abs_change"] > 0
    assert compact["mean_abs_change_per_module"]["q_proj"] == per_module["q_proj"]["mean_abs_change"]
    assert json.loads(json.dumps(result)) == result  # JSON-serialisable as a study unit must be


def test_kl_matches_a_direct_computation_on_full_logits(tiny, paper_data):
    """KL(P_ft || P_base) at the answer positions, against torch's kl_div on every position's logits."""
    from ftgen.prompts import build_prompt, encode_prompt

    model, tok = tiny
    twin = perturbed(model, 5, 0.05)
    probes = probe_set(paper_data, [load_task("question")], per_task=2)
    out = output_divergence(model, twin, tok, probes)
    total, count = 0.0, 0
    for task, record in probes:
        enc = encode_prompt(tok, build_prompt(task, record, 0))
        ids = torch.tensor([enc.prompt_ids + enc.answer])
        n = len(enc.answer)
        with torch.no_grad():
            logp_b = model(ids).logits[0, -n - 1 : -1].log_softmax(-1)
            logp_t = twin(ids).logits[0, -n - 1 : -1].log_softmax(-1)
        total += torch.nn.functional.kl_div(logp_b, logp_t, log_target=True, reduction="sum").item()
        count += n
    assert out["kl_mean"] == pytest.approx(total / count, rel=1e-5)
    assert out["kl_per_task"]["question"] == out["kl_mean"] > 0
