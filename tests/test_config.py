"""Study config: every bad field is a UserError naming it; the grid expands as the lists say; keys are stable."""

from __future__ import annotations

import copy
import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ftgen.config import parse_study
from ftgen.errors import UserError
from ftgen.plan import build_plan
from ftgen.tasks import load_task
from ftgen.validate import default_shots, validate_study
from helpers import assert_user_error, run_cli

BASE = {
    "name": "t",
    "train": [{"task": "sentiment", "sizes": [16, 32]}, {"task": "question", "train_set": "socialqa", "sizes": [16]}],
    "methods": [{"name": "ft"}, {"name": "fticl", "shots": {"sentiment": 2, "question": 1}}],
    "hyper": {"lr": [1e-4], "epochs": [1], "seeds": [0]},
    "eval": {
        "test_sets": {"sentiment": ["amazon", "sst2"], "question": ["socialqa", "tweetqa"], "inference": ["snli"]},
        "shots": {"sentiment": [0, 2], "question": [0, 1], "inference": [0, 3]},
        "limit": 8,
    },
}


def with_change(path: str, value):
    """BASE with the value at a dotted path replaced (or deleted with value=...)."""
    data = copy.deepcopy(BASE)
    *parents, last = path.split(".")
    node = data
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node.setdefault(p, {})
    if isinstance(node, list):
        node[int(last)] = value
    elif value is ...:
        del node[last]
    else:
        node[last] = value
    return data


def plan_of(data, paper_data):
    return build_plan(validate_study(parse_study(data, "s.yaml"), paper_data, "s.yaml"))


@pytest.mark.parametrize(
    "path, value, field",
    [
        ("name", "has space", "name"),
        ("bogus", 1, "bogus"),
        ("train.0.sizes", [0], "train.0.sizes.0"),
        ("train.0.sizes", [16, 16], "train.0.sizes"),
        ("train.0.size", [16], "train.0.size"),
        ("methods.0.name", "sft", "methods.0.name"),
        ("methods.1.shots", {"sentiment": 0}, "methods.1.shots.sentiment"),
        ("methods.1.shots", "two", "methods.1.shots"),
        ("hyper.lr", [-1.0], "hyper.lr"),
        ("hyper.epochs", ["x"], "hyper.epochs.0"),
        ("hyper.seed", [0], "hyper.seed"),
        ("eval.shots", {"sentiment": [0, "x"]}, "eval.shots.sentiment.1"),
        ("eval.shots", {"sentiment": [-1]}, "eval.shots"),
        ("eval.test_sets", "some", "eval.test_sets"),
        ("eval.test_sets", {"sentiment": ["amazon", 3]}, "eval.test_sets.sentiment.1"),
        ("eval.limit", 0, "eval.limit"),
        ("eval.prompt_formats", [0, 0], "eval.prompt_formats"),
        ("executor", "spark", "executor"),
        ("ray.train_gpus", -1, "ray.train_gpus"),
    ],
)
def test_schema_errors_name_the_field(path, value, field):
    with pytest.raises(UserError) as e:
        parse_study(with_change(path, value), "s.yaml")
    assert f"field '{field}'" in str(e.value)
    assert str(e.value).startswith("s.yaml: ")


@pytest.mark.parametrize(
    "path, value, field",
    [
        ("train.0.task", "sentimen", "train.0.task"),
        ("train.1.train_set", "nope", "train.1.train_set"),
        ("train.0.sizes", [7000], "train.0.sizes.0"),
        ("methods.1.shots", {"inference": 3}, "methods.1.shots.inference"),
        ("methods.1.shots", 9, "methods.1.shots"),  # the pools hold 8
        ("methods.0.shots", 2, "methods.0.shots"),  # ft takes no in-context examples
        ("methods.1.label", "ft", "methods.1.label"),
        ("eval.test_sets.sentiment", ["amazon", "imdb"], "eval.test_sets.sentiment.1"),
        ("eval.test_sets.sentimental", ["x"], "eval.test_sets.sentimental"),
        ("eval.shots.sentiment", [0, 9], "eval.shots.sentiment"),
        ("eval.shots.summary", [0], "eval.shots.summary"),
        ("eval.prompt_formats", [0, 2], "eval.prompt_formats.1"),
        ("eval.max_new_tokens", {"sentiment": 8}, "eval.max_new_tokens.sentiment"),
        ("train_args", {"lr": 1e-3}, "train_args.lr"),
        ("train_args", {"learning_rate": 1e-3}, "train_args.learning_rate"),
    ],
)
def test_semantic_errors_name_the_field(paper_data, path, value, field):
    cfg = parse_study(with_change(path, value), "s.yaml")
    with pytest.raises(UserError) as e:
        validate_study(cfg, paper_data, "s.yaml")
    assert f"field '{field}'" in str(e.value), str(e.value)


def test_bad_train_args_value_is_named(paper_data):
    cfg = parse_study(with_change("train_args", {"lora_dropout": 1.5}), "s.yaml")
    with pytest.raises(UserError, match="field 'train_args.lora_dropout': Input should be less than 1"):
        build_plan(validate_study(cfg, paper_data, "s.yaml"))
    cfg = parse_study(with_change("methods.1.lora_r", 8) | {"train_args": {"lora_targets": []}}, "s.yaml")
    with pytest.raises(UserError, match="lora_targets: give at least one module name"):
        build_plan(validate_study(cfg, paper_data, "s.yaml"))


def test_grid_counts(paper_data):
    plan = plan_of(BASE, paper_data)
    # runs: sentiment 2 sizes + question 1 size, x 2 methods
    assert len(plan.runs) == (2 + 1) * 2
    # cells per model: sentiment 2 sets x 2 shots + question 2 x 2 + snli 0-shot only (no few-shot pool)
    per_model = 2 * 2 + 2 * 2 + 1
    assert len(plan.cells) == per_model * (1 + len(plan.runs))
    assert any("snli" in n and "0-shot" in n for n in plan.notes)
    fticl = [r for r in plan.runs if r.method == "fticl"]
    assert {(r.train_task, r.fticl_k) for r in fticl} == {("sentiment", 2), ("question", 1)}
    assert all(r.config.lora_r is None for r in plan.runs)
    assert len({c.key for c in plan.cells}) == len(plan.cells) and len({c.slot for c in plan.cells}) == len(plan.cells)


def test_defaults_all_test_sets_and_paper_shots(paper_data):
    data = {"name": "t", "train": [{"task": "detection", "sizes": [16]}], "eval": {"limit": 4}}
    plan = plan_of(data, paper_data)
    res = plan.resolved
    assert set(res.test_sets) == {"detection", "inference", "question", "sentiment", "summary"}
    assert res.test_sets["detection"][0] == "paws"  # in-domain first
    assert res.test_sets["sentiment"] == ["amazon", "amazonfood", "sst2", "yelp"]
    for name, shots in res.shots.items():
        assert shots == default_shots(load_task(name))
    assert res.shots["inference"] == [0, 3] and res.shots["summary"] == [0, 1]
    assert len(plan.runs) == 1 and plan.runs[0].method == "ft"


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    lrs=st.lists(st.sampled_from([1e-5, 2e-5, 5e-5, 1e-4]), min_size=1, max_size=3, unique=True),
    epochs=st.lists(st.sampled_from([1, 2, 3, 0.5]), min_size=1, max_size=2, unique=True),
    seeds=st.lists(st.integers(0, 5), min_size=1, max_size=3, unique=True),
    sizes=st.lists(st.sampled_from([8, 16, 100, 2000]), min_size=1, max_size=3, unique=True),
    n_methods=st.integers(1, 2),
)
def test_grid_is_the_product_of_the_lists(paper_data, lrs, epochs, seeds, sizes, n_methods):
    data = copy.deepcopy(BASE)
    data["train"] = [{"task": "sentiment", "sizes": sizes}]
    data["methods"] = BASE["methods"][:n_methods]
    data["methods"][-1:] = [{"name": m["name"]} for m in data["methods"][-1:]]
    data["hyper"] = {"lr": lrs, "epochs": epochs, "seeds": seeds}
    plan = plan_of(data, paper_data)
    assert len(plan.runs) == len(sizes) * n_methods * len(lrs) * len(epochs) * len(seeds)
    assert len({r.key for r in plan.runs}) == len(plan.runs)
    assert len(plan.cells) == 9 * (1 + len(plan.runs))


def test_keys_change_with_what_determines_the_result(paper_data, tmp_path):
    plan = plan_of(BASE, paper_data)
    again = plan_of(copy.deepcopy(BASE), paper_data)
    assert [r.key for r in plan.runs] == [r.key for r in again.runs]
    assert [c.key for c in plan.cells] == [c.key for c in again.cells]

    # a larger record limit: every cell changes, no training run does
    bigger = plan_of(with_change("eval.limit", 9), paper_data)
    assert [r.key for r in bigger.runs] == [r.key for r in plan.runs]
    assert not {c.key for c in bigger.cells} & {c.key for c in plan.cells}

    # fewer new tokens for question generation: only the question cells change
    short = BASE | {"eval": BASE["eval"] | {"max_new_tokens": {"question": 16}}}
    old_keys = {c.key for c in plan.cells}
    changed = {c.slot for c in plan_of(short, paper_data).cells if c.key not in old_keys}
    assert changed and all("question/" in slot.split("||")[1] for slot in changed)

    # another learning rate: every training run and its cells change; the base model's cells do not
    lr = plan_of(with_change("hyper.lr", [2e-4]), paper_data)
    assert not {r.key for r in lr.runs} & {r.key for r in plan.runs}
    base_keys = {c.key for c in plan.cells if c.run is None}
    assert base_keys == {c.key for c in lr.cells if c.run is None}
    assert not ({c.key for c in lr.cells} - base_keys) & {c.key for c in plan.cells}

    # the data moved elsewhere (same content): the same keys; a file edited: its cells change
    moved = tmp_path / "data"
    for task in ("sentiment", "question", "inference"):
        shutil.copytree(paper_data / task, moved / task)
    m = plan_of(BASE, moved)
    assert [c.key for c in m.cells] == [c.key for c in plan.cells]
    sst2 = moved / "sentiment" / "sst2_test_500.json"
    sst2.write_text(sst2.read_text().replace("a", "A", 1))
    edited = plan_of(BASE, moved)
    changed = {c.slot for c in edited.cells} - {c.slot for c in edited.cells if c.key in {x.key for x in plan.cells}}
    assert changed and all("sentiment/sst2" in s for s in changed)


def test_dry_run_prints_grid_and_estimate(paper_data, tmp_path):
    cfg = tmp_path / "s.yaml"
    import yaml

    cfg.write_text(yaml.safe_dump(BASE))
    proc = run_cli("study", str(cfg), "--data-dir", str(paper_data), "--dry-run", "--out", str(tmp_path / "o"))
    assert proc.returncode == 0, proc.stderr
    assert "6 training runs, 63 evaluation cells" in proc.stdout
    assert "estimate: ~" in proc.stdout
    assert not (tmp_path / "o").exists()  # a dry run writes nothing


def test_cli_reports_a_bad_config_in_one_line(paper_data, tmp_path):
    import yaml

    cfg = tmp_path / "s.yaml"
    cfg.write_text(yaml.safe_dump(with_change("eval.shots.sentiment", [0, 9])))
    proc = run_cli("study", str(cfg), "--data-dir", str(paper_data), "--out", str(tmp_path / "o"))
    assert_user_error(proc, "eval.shots.sentiment", "9 shots")
    cfg.write_text("name: t\ntrain: [{task: sentiment, sizes: [8]}\n")
    assert_user_error(run_cli("study", str(cfg), "--dry-run", "--data-dir", str(paper_data)), "invalid YAML")
