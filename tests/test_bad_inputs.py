"""The bad-input suite: every malformed task file, data file and study config in tests/bad_inputs/ must give
one clear line naming the problem, exit code 2, no traceback, and write nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from helpers import assert_user_error, run_cli_inprocess

HERE = Path(__file__).parent / "bad_inputs"

# file -> a piece of the one-line message that names the problem
TASK_CASES = {
    "truncated.yaml": "invalid YAML",
    "unknown_field.yaml": "colour",
    "wrong_type_fields.yaml": "fields",
    "bad_kind.yaml": "kind",
    "one_label.yaml": "labels",
    "duplicate_labels.yaml": "duplicate label",
    "placeholder_not_a_field.yaml": "body",
    "unbalanced_brace.yaml": "templates",
    "negative_max_tokens.yaml": "max_new_tokens",
    "generation_with_accuracy.yaml": "metric",
    "empty.yaml": "empty file",
    "list_not_mapping.yaml": "mapping",
    "non_utf8.yaml": "not valid UTF-8",
    "bad_name.yaml": "name",
    "missing_templates.yaml": "templates",
}

DATA_CASES = {
    "truncated.json": "invalid JSON",
    "not_a_list.json": "expected a JSON list",
    "empty_list.json": "no usable records",
    "empty_file.json": "empty file",
    "missing_field.json": "record 1: field 'input': missing",
    "empty_text.json": "record 1: field 'input': empty text",
    "unknown_label.json": "label 'neutral' is not one of",
    "wrong_type.json": "record 1: field 'input': expected text",
    "record_not_object.json": "record 1: expected an object",
    "null_label.json": "record 1: field 'output': missing",
    "bad_line.jsonl": "invalid JSON on line 2",
    "wrong_suffix.txt": "unsupported file type",
    "no_output_column.csv": "field 'output': missing",
    "non_utf8.json": "not valid UTF-8",
}

STUDY_CASES = {
    "bad_name.yaml": "field 'name'",
    "bad_prompt_format.yaml": "field 'eval.prompt_formats.0': task 'sentiment' has 2 prompt formats",
    "duplicate_method_labels.yaml": "field 'methods.1.label'",
    "duplicate_models.yaml": "field 'models': duplicate models",
    "empty.yaml": "empty file",
    "ft_with_shots.yaml": "field 'methods.0.shots': only fticl",
    "fticl_shots_beyond_pool.yaml": "field 'methods.0.shots': k=50",
    "list_not_mapping.yaml": "must be a mapping",
    "max_new_tokens_on_classification.yaml": "not a generation task",
    "missing_data_dir.yaml": "/nonexistent/paper-data: data directory not found",
    "negative_lr.yaml": "field 'hyper.lr'",
    "negative_size.yaml": "field 'train.0.sizes.0'",
    "non_utf8.yaml": "not valid UTF-8",
    "shots_beyond_pool.yaml": "field 'eval.shots.sentiment': 50 shots",
    "size_too_big.yaml": "field 'train.0.sizes.0': 99999 records",
    "study_owned_train_arg.yaml": "field 'train_args.lr': set by the study",
    "task_listed_twice.yaml": "field 'train.1.task'",
    "truncated.yaml": "invalid YAML",
    "unknown_field.yaml": "field 'epochz': unknown field",
    "unknown_task.yaml": "unknown task 'sentimental'",
    "unknown_test_set.yaml": "no test set 'imdb'",
    "unknown_train_arg.yaml": "field 'train_args.batch': not a training option",
    "workers_not_a_number.yaml": "field 'workers'",
    "wrong_type_lr.yaml": "field 'hyper.lr.0'",
    "zero_limit.yaml": "field 'eval.limit'",
    "zero_size.yaml": "field 'train.0.sizes.0'",
}


@pytest.mark.parametrize("name", sorted(TASK_CASES))
def test_bad_task_file(name, tmp_path, capsys):
    task_dir = tmp_path / "tasks"
    task_dir.mkdir()
    shutil.copy(HERE / "tasks" / name, task_dir / name)
    result = run_cli_inprocess(capsys, "tasks", "--task-dir", str(task_dir))
    assert_user_error(result, name, TASK_CASES[name])


@pytest.mark.parametrize("name", sorted(DATA_CASES))
def test_bad_data_file(name, tmp_path, capsys):
    out = tmp_path / "out"
    result = run_cli_inprocess(
        capsys, "eval", "--task", "sentiment", "--test-set", str(HERE / "data" / name), "--out", str(out)
    )
    assert_user_error(result, name, DATA_CASES[name])
    assert not out.exists()  # validated before anything is written (or the model loaded)


def test_unreadable_and_missing_files(tmp_path, capsys):
    locked = tmp_path / "locked.json"
    locked.write_text('[{"input": "x", "output": "positive"}]')
    locked.chmod(0)
    import os

    if os.access(locked, os.R_OK):  # root reads anything: make it a directory instead
        locked.chmod(0o644)
        locked.unlink()
        locked.mkdir()
        needle = "is a directory"
    else:
        needle = "not readable"
    out = tmp_path / "out"
    assert_user_error(
        run_cli_inprocess(capsys, "eval", "--task", "sentiment", "--test-set", str(locked), "--out", str(out)),
        needle,
    )
    assert_user_error(
        run_cli_inprocess(
            capsys, "eval", "--task", "sentiment", "--test-set", str(tmp_path / "gone.json"), "--out", str(out)
        ),
        "gone.json",
        "not found",
    )
    assert_user_error(run_cli_inprocess(capsys, "tasks", "--task-dir", str(tmp_path / "nodir")), "nodir")
    assert not out.exists()


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--shots", "9", "--test-set", "sst2"], "only 8"),
        (["--shots", "-1", "--test-set", "sst2"], "shots"),
        (["--shots", "two", "--test-set", "sst2"], "--shots"),
        (["--test-set", "imdb"], "unknown test set 'imdb'"),
        (["--test-set", "sst2", "--prompt-format", "5"], "prompt format 5"),
        (["--test-set", "sst2", "--limit", "0"], "limit"),
    ],
)
def test_bad_eval_arguments(args, needle, paper_data, tmp_path, capsys):
    out = tmp_path / "out"
    result = run_cli_inprocess(
        capsys, "eval", "--task", "sentiment", "--data-dir", str(paper_data), "--out", str(out), *args
    )
    assert_user_error(result, needle)
    assert not out.exists()


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--train-size", "0"], "train"),
        (["--train-size", "-3"], "train"),
        (["--train-size", "7000"], "--allow-smaller"),
        (["--train-size", "16", "--fticl-shots", "9"], "only 8"),
        (["--train-size", "16", "--train-set", "imdb"], "imdb"),
    ],
)
def test_bad_train_arguments(args, needle, paper_data, tmp_path, capsys):
    out = tmp_path / "out"
    result = run_cli_inprocess(
        capsys, "train", "--task", "sentiment", "--data-dir", str(paper_data), "--out", str(out), *args
    )
    assert_user_error(result, needle)
    assert not (out / "model").exists()


def test_every_bad_input_file_has_a_case():
    for folder, cases in (("tasks", TASK_CASES), ("data", DATA_CASES | LONG), ("studies", STUDY_CASES)):
        assert sorted(p.name for p in (HERE / folder).iterdir()) == sorted(cases), folder


LONG = {"huge_record.json": "one 1 MB record: valid, truncated by the documented rule and counted"}


def test_a_1mb_record_is_truncated_and_counted(default_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["eval", "--model", str(default_model_dir), "--task", "sentiment", "--max-length", "256"]
    result = run_cli_inprocess(capsys, *args, "--test-set", str(HERE / "data" / "huge_record.json"), "--out", str(out))
    assert result.returncode == 0, result.stderr
    metrics = json.loads(next(out.rglob("metrics.json")).read_text())
    assert metrics["n"] == 1 and metrics["truncated"] == 1


@pytest.mark.parametrize("name", sorted(STUDY_CASES))
def test_bad_study_config(name, paper_data, tmp_path, capsys):
    out = tmp_path / "out"
    data = [] if name == "missing_data_dir.yaml" else ["--data-dir", str(paper_data)]
    result = run_cli_inprocess(capsys, "study", str(HERE / "studies" / name), *data, "--out", str(out))
    assert_user_error(result, STUDY_CASES[name])
    assert not out.exists()  # validated before the results store is created
    dry = run_cli_inprocess(capsys, "study", str(HERE / "studies" / name), *data, "--dry-run")
    assert_user_error(dry, STUDY_CASES[name])


def test_a_study_config_that_is_missing_or_a_directory(tmp_path, capsys):
    assert_user_error(run_cli_inprocess(capsys, "study", str(tmp_path / "gone.yaml")), "gone.yaml", "not found")
    assert_user_error(run_cli_inprocess(capsys, "study", str(tmp_path)), str(tmp_path))
