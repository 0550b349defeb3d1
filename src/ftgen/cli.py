"""The `ftgen` command line. Each command wraps a function of the Python API and prints its result."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ftgen import progress
from ftgen.errors import UserError

app = typer.Typer(
    help="Measure how fine-tuning a causal LM on one task changes it on its other domains and on other tasks.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Inspect and validate datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")

out = Console(width=None if sys.stdout.isatty() else 150)
TaskDirOpt = Annotated[list[Path] | None, typer.Option("--task-dir", help="Directory of user task YAML files.")]
DataDirOpt = Annotated[Path | None, typer.Option("--data-dir", help="Data directory in the paper layout.")]


@app.callback()
def _root(quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or status lines.")] = False):
    progress.set_quiet(quiet)


def print_table(title: str, rows: list[dict], columns: list[str]) -> None:
    table = Table(title=title, title_justify="left")
    for c in columns:
        table.add_column(c)
    for r in rows:
        table.add_row(*(str(r.get(c, "")) for c in columns))
    out.print(table)


@app.command("tasks")
def tasks_cmd(task_dir: TaskDirOpt = None):
    """List the built-in and user tasks."""
    from ftgen.tasks import all_tasks

    rows = [
        {
            "name": name,
            "kind": t.kind,
            "fields": ", ".join(t.fields),
            "labels": " / ".join(t.labels),
            "metric": t.metric,
            "formats": len(t.templates),
            "from": origin,
        }
        for name, (t, origin) in sorted(all_tasks(task_dir).items())
    ]
    print_table("Tasks", rows, ["name", "kind", "fields", "labels", "metric", "formats", "from"])


@data_app.command("check")
def data_check_cmd(
    data_dir: Annotated[Path, typer.Argument(help="Data directory in the paper layout.")],
    task_dir: TaskDirOpt = None,
    strict: Annotated[bool, typer.Option(help="Fail on the first invalid record instead of counting.")] = False,
):
    """Validate every file of a data directory; print sets, sizes and label balance."""
    from ftgen.data import check_data_dir
    from ftgen.tasks import all_tasks

    tasks = [t for t, _ in all_tasks(task_dir).values()]
    rows = check_data_dir(data_dir, tasks, skip_invalid=not strict)
    print_table(f"Data in {data_dir}", rows, ["task", "set", "role", "records", "invalid", "ignored", "labels"])
    bad = [r for r in rows if r["invalid"]]
    for r in bad:
        for p in r["problems"]:
            print(f"invalid: {p}", file=sys.stderr)
    ignored = sum(r["ignored"] for r in rows)
    print(
        f"{len(rows)} files, {sum(r['records'] for r in rows)} usable records, "
        f"{sum(r['invalid'] for r in rows)} invalid, {ignored} with an ignored label"
    )
    if bad:
        raise typer.Exit(1)


@app.command("models")
def models_cmd():
    """Show the default model, the cached models and the compute dtype chosen for this machine."""
    from ftgen.models import DEFAULT_MODEL, cache_dir, choose_dtype, default_device

    models = cache_dir() / "models"
    cached = sorted(p.name for p in models.iterdir() if (p / "config.json").exists()) if models.is_dir() else []
    device = default_device()
    print(f"default model: {DEFAULT_MODEL} ({'cached' if DEFAULT_MODEL in cached else 'built on first use'})")
    print(f"cache: {models}")
    for name in cached:
        print(f"  {name}")
    print(f"device: {device}, dtype: {str(choose_dtype('auto', device)).removeprefix('torch.')}")


@app.command("prepare")
def prepare_cmd(data_dir: DataDirOpt = None, task_dir: TaskDirOpt = None):
    """Build the default model's cached checkpoint and (with --data-dir) validate the data."""
    from ftgen.models import default_model_dir

    print(f"default model: {default_model_dir()}")
    if data_dir is not None:
        data_check_cmd(data_dir, task_dir)


def main() -> None:
    """Entry point: user errors become one line on stderr and exit code 2, never a traceback."""
    try:
        code = app(standalone_mode=False)
    except UserError as e:
        print(f"ftgen: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("ftgen: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as e:
        # click's usage errors (typer may vendor its own click, so match by shape, not by class)
        if hasattr(e, "format_message") and hasattr(e, "exit_code"):
            print(f"ftgen: error: {e.format_message()}", file=sys.stderr)
            sys.exit(2)
        if type(e).__name__ == "Abort":
            print("ftgen: interrupted", file=sys.stderr)
            sys.exit(130)
        raise
    sys.exit(code if isinstance(code, int) else 0)
