"""Layer-resolved drift on tiny random Llamas: the per-layer, per-module numbers against a direct computation,
CKA of a model with itself (1.0) and with a perturbed copy (< 1), the in-domain / cross-task split, the FT vs
FTICL reading, the figure files, and the `ftgen analyze layers` command."""

from __future__ import annotations

import json
import math

import pytest
from analysis_helpers import fake_run, perturbed, save_model, tiny_llama

from ftgen.analysis import ModelCache, analyze_layers, compare_methods, write_layers_report
from ftgen.analysis.drift import layer_of, module_type
from ftgen.analysis.layers import module_family
from ftgen.tasks import load_task
from helpers import assert_user_error, run_cli_inprocess

TASKS = ["sentiment", "detection", "inference"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny base and three runs: FT and FTICL on sentiment (FT moved layer 1's MLP most), and FT on detection."""
    root = tmp_path_factory.mktemp("layers")
    base, tok = tiny_llama(layers=3)
    base_dir = save_model(base, tok, root / "base")

    def mlp_of(layer):
        return lambda name: layer_of(name) == layer and module_family(module_type(name)) == "mlp"

    ft = perturbed(perturbed(base, 1, 0.02, mlp_of(1)), 2, 0.002, lambda name: True)
    fticl = perturbed(perturbed(base, 3, 0.005, mlp_of(1)), 4, 0.002, lambda name: True)
    return {
        "base": base_dir,
        "models": {"ft": ft, "fticl": fticl, "base": base},
        "ft": fake_run(root / "ft", ft, tok, task="sentiment", fticl_shots=0, base=base_dir),
        "fticl": fake_run(root / "fticl", fticl, tok, task="sentiment", fticl_shots=2, base=base_dir),
        "same": fake_run(root / "same", base, tok, task="detection", fticl_shots=0, base=base_dir),
    }


@pytest.fixture(scope="module")
def profiles(runs, paper_data):
    tasks = [load_task(t) for t in TASKS]
    models = ModelCache()
    return {
        name: analyze_layers(runs[name], data_dir=paper_data, tasks=tasks, per_task=2, models=models)
        for name in ("ft", "fticl", "same")
    }


def test_layer_drift_matches_a_direct_computation(runs, profiles):
    base, ft = runs["models"]["base"], runs["models"]["ft"]
    p = profiles["ft"]
    assert (p["train_task"], p["method"], p["label"]) == ("sentiment", "ft", "ft")
    assert len(p["layers"]) == base.config.num_hidden_layers
    base_params = dict(base.named_parameters())
    for entry in p["layers"]:
        i = entry["layer"]
        names = [n for n, _ in ft.named_parameters() if layer_of(n) == i]
        deltas = {n: (w.double() - base_params[n].double()) for n, w in ft.named_parameters() if n in names}
        n_params = sum(d.numel() for d in deltas.values())
        assert entry["mean_abs_change"] == pytest.approx(sum(d.abs().sum().item() for d in deltas.values()) / n_params)
        base_norm = math.sqrt(sum(base_params[n].double().pow(2).sum().item() for n in names))
        delta_norm = math.sqrt(sum(d.pow(2).sum().item() for d in deltas.values()))
        assert entry["rel_change"] == pytest.approx(delta_norm / base_norm)
        for n, d in deltas.items():
            module = entry["modules"][module_type(n)]
            assert module["mean_abs_change"] == pytest.approx(d.abs().mean().item())
        mlp = [d for n, d in deltas.items() if module_family(module_type(n)) == "mlp"]
        expected = sum(d.abs().sum().item() for d in mlp) / sum(d.numel() for d in mlp)
        assert entry["families"]["mlp"]["mean_abs_change"] == pytest.approx(expected)
        assert set(entry["families"]) == {"attention", "mlp", "norm"}
    assert set(p["outside_layers"]) == {"embed_tokens", "norm"}
    assert json.loads(json.dumps(p)) == p


def test_cka_is_one_for_the_model_itself_and_below_one_after_a_change(profiles):
    same = profiles["same"]["cka"]
    for values in [same["in_domain"], same["cross_task"], *same["per_task"].values()]:
        assert values == pytest.approx([1.0] * 3)
    assert profiles["same"]["total"]["mean_abs_change"] == 0.0
    ft = profiles["ft"]["cka"]
    assert len(ft["in_domain"]) == len(ft["cross_task"]) == 3
    assert all(v < 1.0 for v in ft["in_domain"] + ft["cross_task"])


def test_in_domain_is_the_train_task_and_cross_task_the_mean_of_the_others(profiles):
    ft, same = profiles["ft"]["cka"], profiles["same"]["cka"]
    assert set(ft["per_task"]) == set(TASKS)
    assert ft["in_domain"] == ft["per_task"]["sentiment"]
    others = [ft["per_task"]["detection"], ft["per_task"]["inference"]]
    assert ft["cross_task"] == pytest.approx([(a + b) / 2 for a, b in zip(*others, strict=True)])
    assert same["in_domain"] == same["per_task"]["detection"]  # that run trained on detection


def test_reading_names_the_layer_where_ft_and_fticl_differ_most(profiles):
    reading = compare_methods([profiles["ft"], profiles["fticl"], profiles["same"]])
    assert reading["weights"][0]["layer"] == 1
    assert reading["weights"][0]["ft_over_fticl"] > 2
    assert reading["runs"] == {"ft": 1, "fticl": 1}  # the detection run has no FTICL partner: left out
    assert reading["mean_abs_change"]["ft"] > reading["mean_abs_change"]["fticl"]
    assert "FT changes the weights more than FTICL" in reading["sentence"] and "layers 1 (" in reading["sentence"]
    assert "cross-task CKA" in reading["sentence"] and reading["cka_cross_task"][0]["layer"] in (0, 1, 2)
    alone = compare_methods([profiles["ft"]])
    assert alone["sentence"].startswith("No comparison")


def test_report_files(profiles, tmp_path):
    reading = write_layers_report(list(profiles.values()), tmp_path)
    saved = json.loads((tmp_path / "layers.json").read_text())
    assert saved["reading"] == reading and len(saved["runs"]) == 3
    assert reading["sentence"] in (tmp_path / "layers.md").read_text()
    assert (tmp_path / "layers.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = (tmp_path / "layers.svg").read_text()
    assert "<svg" in svg and "FTICL" in svg  # the legend tells the methods apart


def test_cli_layers(capsys, runs, paper_data, tmp_path):
    out = tmp_path / "out"
    proc = run_cli_inprocess(
        capsys,
        "analyze", "layers", str(runs["ft"]), str(runs["fticl"]), "--data-dir", str(paper_data),
        "--probe-tasks", "sentiment,detection", "--per-task", "1", "--out", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "FT changes the weights more" in proc.stdout and "layers 1 (" in proc.stdout
    saved = json.loads((out / "layers.json").read_text())
    assert [r["label"] for r in saved["runs"]] == ["ft", "fticl"]
    assert (out / "layers.svg").exists() and (out / "layers.png").exists()


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["no/such/run"], "no/such/run"),
        (["--per-task", "0"], "probe records"),
        (["--probe-tasks", "nosuchtask"], "unknown task"),
    ],
)
def test_cli_layers_bad_input(capsys, runs, paper_data, tmp_path, extra, needle):
    args = ["analyze", "layers", str(runs["ft"]), "--data-dir", str(paper_data), "--out", str(tmp_path / "o")]
    proc = run_cli_inprocess(capsys, *args, *extra)
    assert_user_error(proc, needle)
    assert not (tmp_path / "o").exists()


def test_weights_only_without_data(runs, tmp_path):
    profiles = [analyze_layers(runs[name], data_dir=None, tasks=[]) for name in ("ft", "fticl")]
    assert all("cka" not in p for p in profiles)
    reading = write_layers_report(profiles, tmp_path)
    assert "cross-task CKA" not in reading["sentence"] and reading["weights"][0]["layer"] == 1
    assert (tmp_path / "layers.png").exists() and (tmp_path / "layers.svg").exists()


def test_module_families_and_an_untied_head():
    from ftgen.analysis import weight_drift
    from ftgen.analysis.layers import layer_profile

    names = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert [module_family(m) for m in names] == ["attention"] * 4 + ["mlp"] * 3
    assert [module_family(m) for m in ("input_layernorm", "post_attention_layernorm", "norm")] == ["norm"] * 3
    assert (module_family("embed_tokens"), module_family("lm_head"), module_family("c_attn")) == (
        "embedding",
        "head",
        "attention",
    )
    model, _ = tiny_llama(layers=2, tie=False)
    twin = perturbed(model, 0, 0.01, lambda name: name.startswith("lm_head"))
    drift = {"run": "x", "base": "y", "weights": weight_drift(model, twin)}
    profile = layer_profile(drift, label="x", train_task=None, method=None, kind="full")
    assert set(profile["outside_layers"]) == {"embed_tokens", "norm", "lm_head"}
    assert profile["outside_layers"]["lm_head"]["mean_abs_change"] > 0
    assert profile["outside_layers"]["embed_tokens"]["mean_abs_change"] == 0.0  # untied: the head moved alone
    assert all(e["mean_abs_change"] == 0.0 for e in profile["layers"])
