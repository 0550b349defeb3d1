"""What every `ftgen` command shares: the console and its tables, the option types used by several commands,
and their conventions.

Conventions (tests/test_cli_conventions.py checks them on every command):
- `-h` and `--help` everywhere; `ftgen --version`.
- Help text is plain text (no markup: `ftgen[gpu]` prints as written), defaults shown as `[default: X]`.
- Every on/off option has both forms, `--x/--no-x`, so a later flag can undo an earlier one (or a config file).
- One meaning per option name: `--batch-size` is records per forward pass (as in lm-evaluation-harness);
  training's examples per optimizer step is `--effective-batch-size`.
- `--data-dir` defaults to the environment variable FTGEN_DATA_DIR. Where a config file can name its data (a
  study, `ftgen train --config`), the file wins over the environment; `--data-dir` wins over both.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ftgen.errors import UserError

DATA_DIR_ENV = "FTGEN_DATA_DIR"
PIPED_WIDTH = 120  # columns of a table printed to a pipe or file when COLUMNS is not set

TaskDirOpt = Annotated[list[Path] | None, typer.Option("--task-dir", help="Directory of user task YAML files.")]
DataDirOpt = Annotated[
    Path | None,
    typer.Option("--data-dir", envvar=DATA_DIR_ENV, show_envvar=True, help="Data directory in the paper layout."),
]


def make_console() -> Console:
    """A console as wide as the terminal, or COLUMNS; piped without COLUMNS, PIPED_WIDTH."""
    tty = sys.stdout.isatty() or os.environ.get("COLUMNS", "").isdigit()
    return Console(width=None if tty else PIPED_WIDTH)


console = make_console()


def print_table(title: str, rows: list[dict], columns: list[str], **column_options) -> None:
    """A table of `rows` (dicts) under `title`; `column_options`: column name -> rich add_column options."""
    table = Table(title=title or None, title_justify="left")
    for c in columns:
        table.add_column(c, **column_options.get(c, {}))
    for r in rows:
        table.add_row(*(str(r.get(c, "")) for c in columns))
    console.print(table)


def from_env(ctx: typer.Context, name: str) -> bool:
    """True when parameter `name` got its value from its environment variable, not the command line."""
    source = ctx.get_parameter_source(name)  # typer vendors its own click: compare by name, not by class
    return getattr(source, "name", None) == "ENVIRONMENT"


def csv_values(values: list[str] | str | None) -> list[str]:
    """Values of a repeatable and/or comma-separated option, flattened."""
    items = [values] if isinstance(values, str) else values or []
    return [v.strip() for item in items for v in item.split(",") if v.strip()]


def int_values(option: str, values: list[str] | str | None) -> list[int]:
    try:
        return [int(v) for v in csv_values(values)]
    except ValueError:
        raise UserError(f"{option}: expected comma-separated integers, got '{values}'") from None


def with_default(help: str, default: object) -> str:
    """Help text ending in `[default: X]`, for an option whose value in the code is None until resolved (click
    would print a string default as `[default: (X)]`)."""
    return f"{help}  [default: {default}]"


def switch(flag: str, help: str, **kw):
    """An on/off option with both forms: `--x/--no-x`."""
    return typer.Option(f"{flag}/--no-{flag[2:]}", help=help, **kw)
