"""The bad-input suite: every malformed task file, data file and study config in tests/bad_inputs/ must give
one clear line naming the problem, exit code 2, no traceback, write nothing (the sandbox's snapshot), load no
model (its tripwire) and never hang (a timeout per case). Special files (FIFOs, devices, links), huge and
generated inputs, models and the environment: tests/test_bad_inputs_special.py."""

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
    # templates: only the task's input fields, plainly, each of them
    "tpl_empty_braces.yaml": "'{}' names no field",
    "tpl_positional.yaml": "'{0}' is positional",
    "tpl_conversion.yaml": "'{text!r}' has a conversion",
    "tpl_format_spec.yaml": "'{text:d}' has a format spec",
    "tpl_huge_padding.yaml": "has a conversion",
    "tpl_nested_spec.yaml": "'{text:{text}}' has a format spec",
    "tpl_attribute.yaml": "'{text.upper}' uses attribute or index access",
    "tpl_index.yaml": "'{text[0]}' uses attribute or index access",
    "tpl_gold_answer.yaml": "uses {output}, the gold answer",
    "tpl_record_id.yaml": "'{id}', not among the input fields",
    "tpl_spaces_in_braces.yaml": "'{ text }', not among the input fields",
    "tpl_no_field.yaml": "does not use the input field(s) ['text']",
    "tpl_empty_string.yaml": "does not use the input field(s) ['text']",
    "tpl_unbalanced_close.yaml": "Single '}'",
    "tpl_second_format_bad.yaml": "template 1 '{text:>5}' has a format spec",
    "tpl_misses_a_field.yaml": "does not use the input field(s) ['title']",
    # label words
    "label_empty.yaml": "field 'labels': an empty label word",
    "label_blank.yaml": "field 'labels': an empty label word",
    "label_same_after_strip.yaml": "duplicate label words 'sports' and ' sports '",
    "label_same_after_casefold.yaml": "duplicate label words 'Sports' and 'sports'",
    "label_not_text.yaml": "field 'labels.0'",
    "labels_on_generation.yaml": "only classification tasks have label words",
    "ignore_label_is_a_label.yaml": "field 'ignore_labels'",
    # fields and maps
    "fields_duplicate.yaml": "duplicate field names",
    "field_empty_name.yaml": "'' is not a field name",
    "field_not_identifier.yaml": "'the title' is not a field name",
    "field_named_output.yaml": "'output' is reserved",
    "field_named_id.yaml": "'id' is reserved",
    "fields_empty_list.yaml": "field 'fields'",
    "truncate_field_unknown.yaml": "field 'truncate_field'",
    "label_map_to_non_label.yaml": "maps to ['sport'], not among the label words",
    "label_map_on_generation.yaml": "field 'label_map'",
    "field_map_unknown_key.yaml": "key 'body' is not a field of the task",
    "field_map_to_nothing.yaml": "'text' maps to an empty column name",
    "field_map_not_text.yaml": "field 'field_map.text'",
    "field_map_same_column.yaml": "two fields would read the same column 'body'",
    "field_map_onto_output.yaml": "two fields would read the same column 'output'",
    # numbers
    "shots_negative.yaml": "field 'eval_shots.1'",
    "shots_duplicate.yaml": "duplicate shot counts",
    "shots_empty.yaml": "field 'eval_shots'",
    "shots_huge.yaml": "field 'eval_shots.1': Input should be less than or equal to 1024",
    "shots_not_a_list.yaml": "field 'eval_shots'",
    "fticl_zero.yaml": "field 'fticl_shots.0'",
    "fticl_negative.yaml": "field 'fticl_shots.0'",
    "max_tokens_1e12.yaml": "field 'max_new_tokens'",
    "max_tokens_huge_int.yaml": "field 'max_new_tokens': Input should be less than or equal to 4096",
    "max_tokens_inf.yaml": "field 'max_new_tokens': Input should be a finite number",
    "max_tokens_nan.yaml": "field 'max_new_tokens': Input should be a finite number",
    "max_tokens_bool.yaml": "field 'max_new_tokens'",
    "max_tokens_fraction.yaml": "field 'max_new_tokens'",
    "max_tokens_text.yaml": "field 'max_new_tokens'",
    # names that are paths
    "data_folder_parent.yaml": "field 'data_folder': must be a plain name",
    "data_folder_absolute.yaml": "field 'data_folder': must be a plain name",
    "data_folder_dot.yaml": "field 'data_folder': must be a plain name",
    "data_folder_dotdot.yaml": "field 'data_folder': must be a plain name",
    "data_folder_nested.yaml": "field 'data_folder': must be a plain name",
    "in_domain_path.yaml": "field 'in_domain': must be a plain name",
    "in_domain_empty.yaml": "field 'in_domain': must be a plain name",
    "in_domain_newline.yaml": "field 'in_domain': must be a plain name",
    "name_with_slash.yaml": "field 'name'",
    "name_empty.yaml": "field 'name'",
    "name_not_text.yaml": "field 'name'",
    # YAML that safe_load accepts (or refuses in many lines)
    "yaml_duplicate_key.yaml": "line 7: duplicate key 'labels' (first at line 5)",
    "yaml_duplicate_nested_key.yaml": "line 9: duplicate key 'text' (first at line 8)",
    "yaml_alias_bomb.yaml": "expands to more than 100000 values",
    "yaml_recursive_alias.yaml": "a recursive alias",
    "yaml_python_tag.yaml": "tag '!!python/object/apply:os.system' is not allowed",
    "yaml_custom_tag.yaml": "tag '!secret' is not allowed",
    "yaml_binary_tag.yaml": "tag '!!binary' is not allowed",
    "yaml_set_tag.yaml": "tag '!!set' is not allowed",
    "yaml_two_documents.yaml": "expected a single document",
    "yaml_undefined_alias.yaml": "undefined alias",
    "yaml_huge_int.yaml": "a number of more than 4300 digits",
    "yaml_deep_nesting.yaml": "nesting depth",
    "yaml_nul_escape.yaml": "field 'templates.0': holds a NUL character",
    "yaml_nul_in_label.yaml": "field 'labels.0': holds a NUL character",
    "yaml_surrogate_escape.yaml": "invalid Unicode character escape",
    "yaml_nan_label.yaml": "field 'labels.0': Input should be a finite number",
    "yaml_top_level_text.yaml": "must be a mapping",
    "yaml_tab_indent.yaml": "invalid YAML at line 4",
    "yaml_raw_nul_byte.yaml": "holds a NUL byte",
    "yaml_utf16.yaml": "encoded as UTF-16",
    "yaml_binary_junk.yaml": "holds a NUL byte",
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
    # JSON that json.loads accepts, or refuses with a traceback
    "json_nan.json": "NaN is not a JSON number",
    "json_infinity.json": "Infinity is not a JSON number",
    "json_duplicate_key.json": "duplicate key 'input'",
    "json_huge_int.json": "a number of more than 4300 digits",
    "json_deep_nesting.json": "nested too deeply",
    "json_trailing_garbage.json": "Extra data",
    "json_top_level_text.json": "expected a JSON list",
    "json_list_of_lists.json": "record 0: expected an object",
    "json_bom_then_junk.json": "invalid JSON at line 1 column 1",
    "json_utf16.json": "encoded as UTF-16",
    "json_utf32.json": "encoded as UTF-32",
    "json_raw_nul_byte.json": "holds a NUL byte",
    "json_binary_junk.json": "not valid UTF-8",
    "jsonl_nan.jsonl": "line 2: NaN is not a JSON number",
    "jsonl_surrogate.jsonl": "record 1: field 'input': holds a lone UTF-16 surrogate",
    "jsonl_deep_nesting.jsonl": "line 2: nested too deeply",
    "jsonl_huge_int.jsonl": "line 2: a number of more than 4300 digits",
    "jsonl_duplicate_key.jsonl": "line 2: duplicate key 'output'",
    # records: text that would crash the tokenizer after the model loaded
    "record_surrogate_input.json": "record 1: field 'input': holds a lone UTF-16 surrogate",
    "record_surrogate_label.json": "record 1: field 'output': holds a lone UTF-16 surrogate",
    "record_surrogate_id.json": "record 1: field 'idx': holds a lone UTF-16 surrogate",
    "record_nul_escape.json": "record 1: field 'input': holds a NUL character",
    "record_id_object.json": "record 1: field 'idx': expected an integer or a text id",
    "record_text_bool.json": "record 1: field 'input': expected text, got bool",
    "record_label_list.json": "record 1: field 'output': expected text, got list",
    "record_label_blank.json": "record 1: field 'output': empty text",
    # CSV
    "csv_duplicate_header.csv": "column 'input' appears more than once",
    "csv_unclosed_quote.csv": "invalid CSV",
    "csv_quote_in_quoted.csv": "invalid CSV",
    "csv_extra_field.csv": "line 2 has more fields than the header",
    "csv_header_only.csv": "no usable records",
    "csv_utf16.csv": "encoded as UTF-16",
    "csv_nul_byte.csv": "holds a NUL byte",
    "...json": "no usable set name: must be a plain name, not a path: '..'",
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


VALID_SET = '[{"input": "fine", "output": "positive"}]'


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", sorted(TASK_CASES))
def test_bad_task_file(name, sandbox, capsys):
    """Refused when listed (a task dir) and when named by path, before any data or model is read."""
    task_dir = sandbox.inputs / "tasks"
    task_dir.mkdir()
    shutil.copy(HERE / "tasks" / name, task_dir / name)
    (sandbox.inputs / "set.json").write_text(VALID_SET)
    sandbox.freeze()
    result = run_cli_inprocess(capsys, "tasks", "--task-dir", str(task_dir))
    assert_user_error(result, name, TASK_CASES[name])
    args = ["--test-set", str(sandbox.inputs / "set.json"), "--out", str(sandbox.out)]
    assert_user_error(run_cli_inprocess(capsys, "eval", "--task", str(task_dir / name), *args), TASK_CASES[name])
    sandbox.assert_untouched()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", sorted(DATA_CASES))
def test_bad_data_file(name, sandbox, capsys):
    sandbox.freeze()
    result = run_cli_inprocess(
        capsys, "eval", "--task", "sentiment", "--test-set", str(HERE / "data" / name), "--out", str(sandbox.out)
    )
    assert_user_error(result, name, DATA_CASES[name])
    sandbox.assert_untouched()  # validated before anything is written (or the model loaded)


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
