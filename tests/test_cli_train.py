"""`ftgen train` is generated from TrainConfig: one option per field, with the field's description and default;
errors name the flag the user typed, or the field where it came from a --config file."""

from __future__ import annotations

import yaml
from typer.main import get_command

from ftgen.cli import app
from ftgen.cli_train import train_flag
from ftgen.config import TrainConfig
from helpers import assert_user_error, run_cli_inprocess


def _options() -> dict[str, object]:
    command = get_command(app).commands["train"]
    return {p.name: p for p in command.params}


def test_every_train_config_field_is_an_option_with_its_default_and_description():
    options = _options()
    assert set(options) == set(TrainConfig.model_fields) | {"out", "config", "resume", "batch_size_old"}
    for name, info in TrainConfig.model_fields.items():
        opt = options[name]
        assert train_flag(name) in opt.opts, (name, opt.opts)
        assert info.description.rstrip(".").lower() in opt.help.lower(), name
        if info.is_required():
            assert "[default: required here or in --config]" in opt.help
        else:
            default = info.get_default(call_default_factory=True)
            shown = "unset" if default in (None, []) else ",".join(default) if isinstance(default, list) else default
            assert opt.help.endswith(f"[default: {shown}]"), (name, opt.help)
        if info.annotation is bool:  # both ways: --x and --no-x
            assert opt.secondary_opts == ["--no-" + train_flag(name)[2:]], name
    assert "--max-grad-norm" in options["max_grad_norm"].opts and "--log-every" in options["log_every"].opts
    assert options["batch_size"].opts == ["--effective-batch-size"] and options["batch_size_old"].hidden


def test_the_old_batch_size_flag_still_works_with_a_note(paper_data, tmp_path, capsys):
    """`ftgen train --batch-size N` (the old name of --effective-batch-size) sets the same field (a note on stderr
    once the run is done: tests/test_train.py); both at once is refused."""
    args = ["train", "--task", "sentiment", "--data-dir", str(paper_data), "--train-size", "8", "--lr", "inf"]
    result = run_cli_inprocess(capsys, *args, "--batch-size", "3", "--out", str(tmp_path / "a"))
    assert_user_error(result, "field '--lr'")  # parsed past the batch size: the value was taken
    result = run_cli_inprocess(capsys, *args[:-2], "--batch-size", "0", "--out", str(tmp_path / "a"))
    assert_user_error(result, "field '--effective-batch-size'")  # the field's own check, under its current name
    both = ["--batch-size", "4", "--effective-batch-size", "4", "--out", str(tmp_path / "b")]
    assert_user_error(run_cli_inprocess(capsys, *args, *both), "--effective-batch-size alone")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_library_error_names_the_flag_or_the_config_field(paper_data, tmp_path, capsys):
    args = ["train", "--task", "sentiment", "--data-dir", str(paper_data), "--train-size", "8"]
    result = run_cli_inprocess(capsys, *args, "--fticl-shots", "9", "--out", str(tmp_path / "a"))
    assert_user_error(result, "--fticl-shots: 9 in-context examples", "has only 8")
    cfg = tmp_path / "t.yaml"
    cfg.write_text(yaml.safe_dump({"fticl_shots": 9}))
    result = run_cli_inprocess(capsys, *args, "--config", str(cfg), "--out", str(tmp_path / "b"))
    assert_user_error(result, "field 'fticl_shots': 9 in-context examples")
    result = run_cli_inprocess(capsys, *args, "--lora-r", "4", "--qlora", "--out", str(tmp_path / "c"))
    assert_user_error(result, "--qlora: needs a CUDA GPU")
    assert not any((tmp_path / d).exists() for d in "abc")


def test_options_override_the_config_file(paper_data, tmp_path, capsys):
    cfg = tmp_path / "t.yaml"
    cfg.write_text(yaml.safe_dump({"task": "sentiment", "lr": 5.0e-5, "group_by_length": False}))
    result = run_cli_inprocess(capsys, "train", "--config", str(cfg), "--lr", "inf", "--out", str(tmp_path / "o"))
    assert_user_error(result, "field '--lr'")  # the flag won over the file's valid value, and is refused
