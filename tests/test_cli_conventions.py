"""The conventions of every `ftgen` command (ftgen.cli_common), checked on the real command tree: `-h` and
`--help`, `--version`, help text printed as written (no bracket eaten by a markup renderer), one default style,
`--x/--no-x` switches, one meaning per option name, FTGEN_DATA_DIR as the default of every --data-dir."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from typer.main import get_command
from typer.testing import CliRunner

from ftgen import __version__
from ftgen.cli import app
from helpers import run_cli

ROOT = get_command(app)
ACTIONS = {"--help", "--version"}  # flags that act and exit: no --no- twin


def commands(group=ROOT, path=()):
    """(path, click command) of every command and group, the root included."""
    yield path, group
    for name, sub in getattr(group, "commands", {}).items():
        yield from commands(sub, (*path, name))


ALL = list(commands())
IDS = [" ".join(p) or "ftgen" for p, _ in ALL]


def options(command):
    return [p for p in command.params if getattr(p, "opts", None) and p.param_type_name == "option"]


def rendered_help(path) -> str:
    result = CliRunner().invoke(app, [*path, "-h"], env={"COLUMNS": "100"}, terminal_width=100)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("path, command", ALL, ids=IDS)
def test_h_and_help_print_the_same_help(path, command):
    short = rendered_help(path)
    long = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "100"}, terminal_width=100).output
    assert short == long and short.startswith("Usage: ")
    assert "-h, --help" in short


def test_version():
    proc = run_cli("--version")
    assert (proc.returncode, proc.stdout.strip()) == (0, f"ftgen {__version__}")
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", __version__)


def _words(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize("path, command", ALL, ids=IDS)
def test_help_text_is_printed_as_written(path, command):
    """Every option's and argument's help, and the command's own, appears whole in the rendered help: nothing
    in brackets was taken for markup (as `pip install 'ftgen[gpu]'` once lost its `[gpu]`). Defaults read
    `[default: X]`, never `(default: X)` or `[default: (X)]`."""
    shown = _words(rendered_help(path))
    texts = [p.help for p in command.params if getattr(p, "help", None) and not getattr(p, "hidden", False)]
    if command.help:
        texts.append(command.help.split("\n\n")[0])
    for text in texts:
        assert "\\[" not in text, f"a markup escape in help text: {text!r}"
        assert _words(text) in shown, f"{' '.join(path)}: help text not shown as written: {text!r}"
    assert "(default" not in shown.lower() and "[default: (" not in shown
    assert "ftgen[gpu]" in _words(rendered_help(["eval"]))


@pytest.mark.parametrize("path, command", ALL, ids=IDS)
def test_switches_have_both_forms(path, command):
    for p in options(command):
        if getattr(p, "is_flag", False) and not set(p.opts) & ACTIONS and not p.hidden:
            assert p.secondary_opts and all(o.startswith("--no-") for o in p.secondary_opts), (path, p.opts)


def test_every_data_dir_defaults_to_ftgen_data_dir():
    found = [(path, p) for path, c in ALL for p in c.params if p.name == "data_dir"]
    assert len(found) >= 10
    for path, p in found:
        assert p.envvar == "FTGEN_DATA_DIR", path


MEANINGS = {  # option name -> what every command's help says it is
    "--batch-size": "forward pass",
    "--effective-batch-size": "optimizer step",
    "--micro-batch-size": "forward pass",
    "--shots": "in-context examples",
    "--out": "",
}


def _meanings(skip: tuple[str, ...] = ()) -> list[str]:
    wrong = []
    for path, command in ALL:
        for p in options(command):
            for opt in [] if p.hidden else p.opts:
                if opt in MEANINGS and " ".join(path) not in skip and MEANINGS[opt] not in (p.help or "").lower():
                    wrong.append(f"ftgen {' '.join(path)} {opt}: {p.help}")
    return wrong


def test_one_meaning_per_option_name():
    assert _meanings() == []


def test_study_data_dir_from_the_environment_and_the_file_wins(paper_data, tmp_path):
    """FTGEN_DATA_DIR is the default of --data-dir; a study file that names its data wins over it."""
    study = {"name": "env", "train": [], "eval": {"test_sets": {"sentiment": ["sst2"]}, "shots": [0], "limit": 4}}
    cfg = tmp_path / "s.yaml"
    cfg.write_text(yaml.safe_dump(study))
    env = {"FTGEN_DATA_DIR": str(paper_data)}
    proc = run_cli("study", str(cfg), "--dry-run", "--out", str(tmp_path / "o"), env=env)
    assert proc.returncode == 0 and f"data {paper_data.resolve()}" in proc.stdout, proc.stderr
    cfg.write_text(yaml.safe_dump({**study, "data_dir": str(paper_data)}))
    proc = run_cli("study", str(cfg), "--dry-run", "--out", str(tmp_path / "o"), env={"FTGEN_DATA_DIR": "/nowhere"})
    assert proc.returncode == 0 and f"data {paper_data.resolve()}" in proc.stdout, proc.stderr
    bad = run_cli("study", str(cfg), "--dry-run", "--data-dir", "/nowhere", "--out", str(tmp_path / "o"), env=env)
    assert bad.returncode == 2 and "/nowhere: data directory not found" in bad.stderr  # the flag wins over both
    assert not Path(tmp_path / "o").exists()
