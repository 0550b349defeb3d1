"""The bad-input suite: every malformed task file, data file and study config in tests/bad_inputs/ must give
one clear line naming the problem, exit code 2, no traceback, and write nothing."""

from __future__ import annotations

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
