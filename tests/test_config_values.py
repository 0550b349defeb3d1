"""Config values that used to pass `--dry-run` and fail unit by unit at run time (issue 14): every field is typed
with its range, and a bad value is one line naming the field, exit 2, nothing written, in `--dry-run` too.
Also the paths of a study: its name, `--out` against the data directory, `task_dirs` against the YAML."""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from ftgen.config import TrainConfig, parse_study, parse_train_config
from ftgen.errors import UserError
from ftgen.plan import load_plan
from helpers import assert_user_error, run_cli_inprocess

BASE = {
    "name": "v",
    "train": [{"task": "sentiment", "sizes": [8]}],
    "methods": [{"name": "ft"}],
    "hyper": {"lr": [1e-4], "epochs": [1], "seeds": [0]},
    "eval": {"test_sets": {"sentiment": ["sst2"]}, "shots": {"sentiment": [0]}, "limit": 4},
}


def changed(path: str, value) -> dict:
    data = copy.deepcopy(BASE)
    *parents, last = path.split(".")
    node = data
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node.setdefault(p, {})
    node[int(last) if isinstance(node, list) else last] = value
    return data


# class -> (dotted path, value, the field named in the one line)
BAD_VALUES = {
    "closed set: eval.dtype": ("eval.dtype", "fp8", "eval.dtype"),
    "closed set: eval.scoring": ("eval.scoring", "max", "eval.scoring"),
    "closed set: train_args.dtype": ("train_args", {"dtype": "bf8"}, "train_args.dtype"),
    "closed set: train_args.lr_schedule": ("train_args", {"lr_schedule": "step"}, "train_args.lr_schedule"),
    "closed set: eval.batch_size": ("eval.batch_size", "big", "eval.batch_size"),
    "range: eval.max_length 1": ("eval.max_length", 1, "eval.max_length"),
    "range: train_args.max_length 8": ("train_args", {"max_length": 8}, "train_args.max_length"),
    "range: seeds [-1]": ("hyper.seeds", [-1], "hyper.seeds.0"),
    "range: seeds 2**40": ("hyper.seeds", [2**40], "hyper.seeds.0"),
    "range: workers 100000": ("workers", 100000, "workers"),
    "range: threads 100000": ("threads", 100000, "threads"),
    "range: lora_r 1000000": ("methods.0.lora_r", 1000000, "methods.0.lora_r"),
    "range: eval.limit 4000 digits": ("eval.limit", 10**4000, "eval.limit"),
    "range: eval.batch_size 0": ("eval.batch_size", 0, "eval.batch_size"),
    "range: max_new_tokens 1e12": ("eval.max_new_tokens", {"question": 10**12}, "eval.max_new_tokens.question"),
    "range: shots 5000": ("eval.shots", {"sentiment": [0, 5000]}, "eval.shots"),
    "range: probe_records 0": ("analysis.probe_records", 0, "analysis.probe_records"),
    "range: prompt_formats [-1]": ("eval.prompt_formats", [-1], "eval.prompt_formats.0"),
    "range: train_args.lora_dropout 1.5": ("train_args", {"lora_dropout": 1.5}, "train_args.lora_dropout"),
    "range: train_args.keep_checkpoints 0": ("train_args", {"keep_checkpoints": 0}, "train_args.keep_checkpoints"),
    "finite: lr .inf": ("hyper.lr", [math.inf], "hyper.lr"),
    "finite: lr .nan": ("hyper.lr", [math.nan], "hyper.lr"),
    "finite: epochs .inf": ("hyper.epochs", [math.inf], "hyper.epochs.0"),
    "finite: train_args.weight_decay .inf": ("train_args", {"weight_decay": math.inf}, "train_args.weight_decay"),
    "finite: ray.train_gpus .nan": ("ray.train_gpus", math.nan, "ray.train_gpus"),
    "finite: methods.0.lora_alpha .inf": (
        "methods.0",
        {"name": "ft", "lora_r": 8, "lora_alpha": math.inf},
        "lora_alpha",
    ),
    "empty: test_sets {sentiment: []}": ("eval.test_sets", {"sentiment": []}, "eval.test_sets.sentiment"),
    "empty: shots {sentiment: []}": ("eval.shots", {"sentiment": []}, "eval.shots"),
    "empty: sizes []": ("train.0.sizes", [], "train.0.sizes"),
    "path: name '.'": ("name", ".", "name"),
    "path: name '..'": ("name", "..", "name"),
    "path: model ./models/nope": ("models", ["./models/nope"], "models.0"),
    "path: model /nonexistent/model": ("models", ["default", "/nonexistent/model"], "models.1"),
    "path: model ~/no-such-ftgen-model": ("models", ["~/no-such-ftgen-model"], "models.0"),
    "path: model a/b/c": ("models", ["no/such/model"], "models.0"),
    "owned: train_args.task_dirs": ("train_args", {"task_dirs": ["x"]}, "train_args.task_dirs"),
}


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_a_bad_value_is_one_line_naming_the_field(case, paper_data, tmp_path, capsys):
    path, value, field = BAD_VALUES[case]
    cfg = tmp_path / "s.yaml"
    cfg.write_text(yaml.safe_dump(changed(path, value)))
    out = tmp_path / "out"
    args = ["study", str(cfg), "--data-dir", str(paper_data)]
    for extra in (["--dry-run"], ["--out", str(out)]):
        result = run_cli_inprocess(capsys, *args, *extra)
        assert_user_error(result, field)
    assert not out.exists() and not (Path("runs") / "v").exists()


def test_a_hub_id_is_not_taken_for_a_path(paper_data):
    cfg = parse_study(changed("models", ["meta-llama/Llama-2-7b-hf", "default"]), "s.yaml")
    assert cfg.models[0] == "meta-llama/Llama-2-7b-hf"  # owner/name: a Hub id, not checked on disk


def test_a_negative_limit_on_the_command_line(paper_data, tmp_path, capsys):
    cfg = tmp_path / "s.yaml"
    cfg.write_text(yaml.safe_dump(BASE))
    for command in (["study", str(cfg), "--data-dir", str(paper_data)], ["eval", "--task", "sentiment"]):
        result = run_cli_inprocess(capsys, *command, "--limit", "-1", "--out", str(tmp_path / "o"))
        assert_user_error(result, "--limit")
    assert not (tmp_path / "o").exists()


NUMERIC = {
    "workers": (1, 256),
    "threads": (1, 1024),
    "hyper.seeds": (0, 2**32 - 1),
    "eval.limit": (1, 10**9),
    "eval.max_length": (16, 2**20),
    "methods.0.lora_r": (0, 4096),
    "analysis.probe_records": (1, 10_000),
}


@settings(max_examples=120, deadline=None)
@given(
    path=st.sampled_from(sorted(NUMERIC)),
    value=st.one_of(
        st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([True, "7", ""])
    ),
)
def test_numbers_are_accepted_in_range_or_refused_in_one_line(path, value):
    lo, hi = NUMERIC[path]
    data = changed(path, [value] if path == "hyper.seeds" else value)
    try:
        parse_study(data, "s.yaml")
        accepted = True
    except UserError as e:
        accepted = False
        assert "\n" not in str(e) and f"field '{path}" in str(e), str(e)
    in_range = isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi
    whole_float = isinstance(value, float) and math.isfinite(value) and value.is_integer() and lo <= value <= hi
    if accepted:
        assert in_range or whole_float or isinstance(value, (bool, str))  # pydantic's lax mode: True -> 1, "7" -> 7
    else:
        assert not in_range


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--lr", "inf"),
        ("--epochs", "nan"),
        ("--seed", "-1"),
        ("--lora-r", "100000"),
        ("--max-length", "8"),
        ("--dtype", "fp8"),
        ("--lr-schedule", "step"),
        ("--max-grad-norm", "-1"),
        ("--log-every", "0"),
    ],
)
def test_ftgen_train_refuses_a_bad_value_naming_the_flag(flag, value, paper_data, tmp_path, capsys):
    out = tmp_path / "o"
    result = run_cli_inprocess(
        capsys, "train", "--task", "sentiment", "--data-dir", str(paper_data), "--out", str(out), flag, value
    )
    assert_user_error(result, flag)
    assert not out.exists()


def test_train_config_values_from_a_file_name_the_field(paper_data, tmp_path, capsys):
    cfg = tmp_path / "t.yaml"
    cfg.write_text(yaml.safe_dump({"task": "sentiment", "lr": math.inf}))
    result = run_cli_inprocess(capsys, "train", "--config", str(cfg), "--out", str(tmp_path / "o"))
    assert_user_error(result, str(cfg), "field 'lr'")
    with pytest.raises(UserError, match="field 'seed'"):
        parse_train_config({"task": "x", "seed": -1})
    assert TrainConfig(task="x", seed=2**32 - 1).seed == 2**32 - 1


# ---------------------------------------------------------------- paths


def test_out_inside_or_equal_to_the_data_dir_is_refused(paper_data, tmp_path, capsys):
    data = tmp_path / "data"
    (data / "sentiment").mkdir(parents=True)
    for f in ("amazon_train_2000.json", "sst2_test_500.json"):
        os.symlink(paper_data / "sentiment" / f, data / "sentiment" / f)
    cfg = tmp_path / "s.yaml"
    cfg.write_text(yaml.safe_dump(BASE))
    for out in (data, data / "results"):
        for extra in (["--dry-run"], []):
            result = run_cli_inprocess(capsys, "study", str(cfg), "--data-dir", str(data), "--out", str(out), *extra)
            assert_user_error(result, "inside the data directory")
        result = run_cli_inprocess(
            capsys, "train", "--task", "sentiment", "--data-dir", str(data), "--train-size", "8", "--out", str(out)
        )
        assert_user_error(result, "inside the data directory")
    assert sorted(p.name for p in data.rglob("*")) == sorted(
        ["sentiment", "amazon_train_2000.json", "sst2_test_500.json"]
    )


def test_task_dirs_and_data_dir_are_relative_to_the_yaml(paper_data, tmp_path, monkeypatch):
    """A study's relative paths mean the same wherever the command runs."""
    project = tmp_path / "project"
    (project / "tasks").mkdir(parents=True)
    sentiment = yaml.safe_load((Path(__file__).parents[1] / "src/ftgen/task_defs/sentiment.yaml").read_text())
    (project / "tasks" / "mood.yaml").write_text(
        yaml.safe_dump(sentiment | {"name": "mood", "data_folder": "sentiment"})
    )
    os.symlink(paper_data, project / "data")
    data = changed("eval.test_sets", {"mood": ["sst2"]}) | {"task_dirs": ["tasks"], "data_dir": "data"}
    data["eval"]["shots"] = {"mood": [0]}
    (project / "s.yaml").write_text(yaml.safe_dump(data))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    plan = load_plan(Path("..") / "project" / "s.yaml")
    assert plan.cfg.task_dirs == [str((project / "tasks").resolve())]
    assert plan.resolved.data_dir == (project / "data").resolve()
    assert {c.test_task for c in plan.cells} == {"mood"}
    assert all(r.config.task_dirs == plan.cfg.task_dirs for r in plan.runs)
