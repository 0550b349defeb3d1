"""WiSE-FT weight interpolation: θ(0) and θ(1) equal the base and tuned weights bit for bit and score exactly
like them under ftgen.evaluate, θ(0.5) is the midpoint, for full and LoRA runs; the checkpoints load in plain
transformers; the α trade-off criterion and its figure; the `ftgen analyze interpolate` command."""

from __future__ import annotations

import json

import pytest
import torch
from analysis_helpers import fake_run, lora_adapter, perturbed, save_model, tiny_llama, weights_of
from hypothesis import given, settings
from hypothesis import strategies as st

from ftgen.analysis import best_alphas, interpolate_model
from ftgen.analysis.interpolate import mix, tradeoff_score
from ftgen.data import load_test_set
from ftgen.evaluate import evaluate
from ftgen.models import load_model
from ftgen.tasks import load_task
from helpers import assert_user_error, run_cli_inprocess


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("interp")
    base, tok = tiny_llama(layers=2)
    base_dir = save_model(base, tok, root / "base")
    tuned = perturbed(base, 7, 0.05)
    return base_dir, fake_run(root / "ft", tuned, tok, task="sentiment", fticl_shots=0, base=base_dir)


@pytest.fixture(scope="module")
def lora_run(full_run, tmp_path_factory):
    base_dir, _ = full_run
    return base_dir, lora_adapter(base_dir, tmp_path_factory.mktemp("lora") / "adapter", seed=3)


def scores(model_dir, paper_data) -> tuple[list[dict], float]:
    """Per-record label log-probabilities and the accuracy of the model on 6 sst2 records, 2-shot (ftgen.evaluate)."""
    from ftgen.data import load_pool
    from ftgen.prompts import select_shots

    task = load_task("sentiment")
    model, tok = load_model(str(model_dir), dtype="fp32", device="cpu")
    records = load_test_set(paper_data, task, "sst2").records[:6]
    shots = select_shots(load_pool(paper_data, task, "sst2").records, 2)
    result = evaluate(model, tok, task, records, shots=shots, batch_size=6)
    return [p["logprobs"] for p in result.predictions], result.metrics["score"]


def test_full_run_endpoints_are_exact_and_midpoint_is_the_mean(full_run, paper_data, tmp_path):
    from transformers import AutoModelForCausalLM

    base_dir, run = full_run
    base_w, tuned_w = weights_of(base_dir), weights_of(run / "model")
    out = {}
    for alpha in (0.0, 0.5, 1.0):
        meta = interpolate_model(run, alpha, tmp_path / f"a{alpha}")  # base: from the run's train_summary.json
        assert meta["kind"] == "full" and meta["base"] == str(base_dir) and meta["method"] == "ft"
        assert json.loads((tmp_path / f"a{alpha}" / "interpolation.json").read_text())["alpha"] == alpha
        out[alpha] = weights_of(tmp_path / f"a{alpha}")
    assert set(out[0.0]) == set(base_w)
    for name in base_w:
        assert torch.equal(out[0.0][name], base_w[name]), name
        assert torch.equal(out[1.0][name], tuned_w[name]), name
        assert torch.allclose(out[0.5][name], (base_w[name] + tuned_w[name]) / 2, atol=1e-7), name
    assert not torch.equal(base_w["model.layers.0.mlp.up_proj.weight"], tuned_w["model.layers.0.mlp.up_proj.weight"])
    AutoModelForCausalLM.from_pretrained(tmp_path / "a0.5")  # a plain HF checkpoint
    assert scores(tmp_path / "a0.0", paper_data) == scores(base_dir, paper_data)
    assert scores(tmp_path / "a1.0", paper_data) == scores(run / "model", paper_data)
    assert scores(tmp_path / "a0.5", paper_data)[0] != scores(base_dir, paper_data)[0]


def test_lora_run_scales_the_adapter(lora_run, paper_data, tmp_path):
    base_dir, adapter = lora_run
    merged, _ = load_model(str(adapter), dtype="fp32", device="cpu")  # PEFT merge: W + B A scale
    merged_w = {k: v.detach().clone() for k, v in merged.state_dict().items()}
    base_w = weights_of(base_dir)
    out = {}
    for alpha in (0.0, 0.5, 1.0):
        meta = interpolate_model(adapter, alpha, tmp_path / f"a{alpha}", base=str(base_dir))
        assert meta["kind"] == "lora"
        out[alpha] = weights_of(tmp_path / f"a{alpha}")
    assert not (tmp_path / "a0.5" / "adapter_config.json").exists()  # merged: a standard checkpoint
    moved = 0
    for name, w in base_w.items():
        assert torch.equal(out[0.0][name], w), name
        assert torch.equal(out[1.0][name], merged_w[name]), name
        assert torch.allclose(out[0.5][name], w + 0.5 * (merged_w[name] - w), atol=1e-7), name
        moved += not torch.equal(w, merged_w[name])
    assert moved >= 7 * 2  # every linear layer of both transformer layers
    assert scores(tmp_path / "a0.0", paper_data) == scores(base_dir, paper_data)
    assert scores(tmp_path / "a1.0", paper_data) == scores(adapter, paper_data)


def test_lora_refuses_another_base(lora_run, tmp_path):
    from ftgen.errors import UserError

    _, adapter = lora_run
    with pytest.raises(UserError, match="trained on"):
        interpolate_model(adapter, 0.5, tmp_path / "x", base=str(tmp_path))


finite32 = st.floats(-10, 10, allow_nan=False, width=32)


@settings(max_examples=50, deadline=None)
@given(
    base=st.lists(finite32, min_size=1, max_size=8),
    tuned=st.lists(finite32, min_size=8, max_size=8),
    alpha=st.floats(0, 1),
)
def test_mix_is_exact_at_the_ends_and_between_the_two(base, tuned, alpha):
    b = torch.tensor(base, dtype=torch.float32)
    t = torch.tensor(tuned[: len(base)], dtype=torch.float32)
    assert torch.equal(mix(b, t, 0.0), b) and torch.equal(mix(b, t, 1.0), t)
    m = mix(b, t, alpha)
    assert m.dtype == torch.float32
    low, high = torch.minimum(b, t), torch.maximum(b, t)
    assert ((m >= low - 1e-6) & (m <= high + 1e-6)).all()


def points(task="sentiment", method="ft", rows=()):
    return [{"train_task": task, "method": method, "alpha": a, "id": i, "ood": o, "cross": c} for a, i, o, c in rows]


def test_best_alpha_keeps_the_gain_for_the_least_cross_task_loss():
    curve = points(rows=[(0.25, 4.0, 1.0, -0.5), (0.5, 8.0, 2.0, -1.0), (0.75, 9.0, 2.0, -4.0), (1.0, 10.0, 1.0, -7.0)])
    curve += points(method="fticl", rows=[(0.5, 1.0, 0.0, -3.0), (1.0, 2.0, 0.0, -6.0)])
    result = best_alphas(curve)
    best = {b["method"]: b for b in result["best"]}
    assert best["ft"]["alpha"] == 0.5 and best["ft"]["score"] == 7.0  # 8 - 1 beats 9 - 4 and 10 - 7
    assert best["ft"]["full"] == {"id": 10.0, "ood": 1.0, "cross": -7.0}
    assert best["fticl"]["alpha"] == 0.0  # no α gains more in-domain than it loses: the base (α = 0, added)
    assert "sentiment FT: α = 0.5 keeps +8.0 in-domain (80% of α = 1's +10.0)" in result["sentence"]
    assert "sentiment FTICL: no α" in result["sentence"]


def test_cross_task_gains_earn_nothing_and_ties_go_to_the_smaller_alpha():
    result = best_alphas(points(rows=[(0.5, 5.0, 0.0, 3.0), (1.0, 5.0, 0.0, 9.0)]))
    assert result["best"][0]["alpha"] == 0.5


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from([0.1, 0.25, 0.5, 0.75, 1.0]), st.floats(-20, 20), st.floats(-20, 20)),
        min_size=1,
        max_size=5,
        unique_by=lambda r: r[0],
    )
)
def test_best_alpha_maximises_the_documented_score(rows):
    curve = points(rows=[(a, i, None, c) for a, i, c in rows])
    best = best_alphas(curve)["best"][0]
    assert best["score"] == tradeoff_score(best)
    assert best["score"] >= max([0.0] + [i - max(0.0, -c) for _, i, c in rows])  # α = 0 scores 0


def test_cli_interpolate(capsys, full_run, tmp_path):
    _, run = full_run
    proc = run_cli_inprocess(
        capsys, "analyze", "interpolate", str(run), "--alpha", "0,0.5", "--out", str(tmp_path / "o")
    )
    assert proc.returncode == 0, proc.stderr
    base_w = weights_of(json.loads((tmp_path / "o" / "alpha-0" / "interpolation.json").read_text())["base"])
    assert all(torch.equal(w, base_w[k]) for k, w in weights_of(tmp_path / "o" / "alpha-0").items())
    assert (tmp_path / "o" / "alpha-0.5" / "config.json").exists()


@pytest.mark.parametrize(
    "extra, needle",
    [(["--alpha", "nan"], "--alpha"), (["--alpha", "x"], "--alpha"), (["--alpha", "0.5,0.5"], "distinct")],
)
def test_cli_interpolate_bad_input(capsys, full_run, tmp_path, extra, needle):
    _, run = full_run
    proc = run_cli_inprocess(capsys, "analyze", "interpolate", str(run), "--out", str(tmp_path / "o"), *extra)
    assert_user_error(proc, needle)
    assert not (tmp_path / "o").exists()


def test_cli_interpolate_needs_a_base(capsys, full_run, tmp_path):
    base_dir, _ = full_run
    proc = run_cli_inprocess(capsys, "analyze", "interpolate", str(base_dir), "--out", str(tmp_path / "o"))
    assert_user_error(proc, "base model")
    proc = run_cli_inprocess(capsys, "analyze", "interpolate", str(tmp_path / "none"), "--out", str(tmp_path / "o"))
    assert_user_error(proc, "no such run")
