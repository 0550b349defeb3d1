"""`ftgen train`, generated from ftgen.config.TrainConfig: one option per field (`--field-name`, or the name in
TRAIN_FLAG_NAMES), with the field's description as its help and its default shown as `[default: X]`, so the
command and the model cannot drift apart. Unset options leave the field to the --config file or the model's
default. Errors name the flag the user typed (`--lr`), or the field where it came from the --config file.

`--effective-batch-size` is the field `batch_size` (examples per optimizer step): across ftgen's commands
`--batch-size` means records per forward pass, as in lm-evaluation-harness. The old spelling `--batch-size`
still works here, with a deprecation note. `--data-dir` defaults to FTGEN_DATA_DIR when neither the flag nor
the --config file names the data.
"""

from __future__ import annotations

import inspect
import os
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from ftgen.cli_common import DATA_DIR_ENV, from_env, with_default
from ftgen.errors import UserError

TRAIN_FLAG_NAMES = {"task_dirs": "--task-dir", "batch_size": "--effective-batch-size"}  # flag != --field-name
DEPRECATED_FLAGS = {"--batch-size": "batch_size"}  # old spelling -> field: still accepted, with a note


def train_flag(name: str) -> str:
    return TRAIN_FLAG_NAMES.get(name, "--" + name.replace("_", "-"))


def _plain_type(annotation: Any) -> Any:
    """The command-line type of a field: its type without None, bounds (Annotated) or closed sets (Literal)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        annotation = args[0]
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) is typing.Literal:
        return str
    return annotation if annotation in (int, float, bool, str) else str


def _train_option(name: str, info) -> inspect.Parameter:
    """The `ftgen train` option of one TrainConfig field: its description as help, its default shown."""
    if info.is_required():
        shown = "required here or in --config"
    else:
        default = info.get_default(call_default_factory=True)
        shown = "unset" if default in (None, []) else ",".join(default) if isinstance(default, list) else str(default)
    description = (info.description or name.replace("_", " ")).rstrip(".")
    help_text = description[0].upper() + description[1:] + "."
    literal = [a for a in typing.get_args(info.annotation) if typing.get_origin(a) is typing.Literal]
    choices = typing.get_args(literal[0] if literal else info.annotation)
    if typing.get_origin(info.annotation) is typing.Literal or literal:
        help_text += f" One of {', '.join(map(str, choices))}."
    kind = _plain_type(info.annotation)
    flag = train_flag(name)
    extra: dict[str, Any] = {}
    if name == "task_dirs":
        kind = list[Path] | None
    elif kind is bool:
        flag = f"{flag}/--no-{flag[2:]}"
        kind = bool | None
    else:
        kind = kind | None
    if name == "data_dir":
        extra = {"envvar": DATA_DIR_ENV, "show_envvar": True}
    option = typer.Option(None, flag, help=with_default(help_text, shown), show_default=False, **extra)
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=kind)


def _train_command(
    ctx: typer.Context, out: Path, config: Path | None, resume: bool, batch_size_old: int | None, **options: Any
) -> None:
    """Fine-tune a model on one task's training set (full or LoRA, optionally with in-context examples)."""
    from ftgen.config import FieldError, parse_train_config
    from ftgen.files import read_yaml
    from ftgen.train import train

    values: dict = {}
    if config is not None:
        values = read_yaml(config)
        if not isinstance(values, dict):
            raise UserError(f"{config}: expected a mapping of training fields")
    if batch_size_old is not None:
        if options["batch_size"] is not None:
            raise UserError("--batch-size: give --effective-batch-size alone (--batch-size is its old name)")
        options["batch_size"] = batch_size_old
    if from_env(ctx, "data_dir") and "data_dir" in values:
        options["data_dir"] = None  # the --config file names its data: FTGEN_DATA_DIR is only the fallback
    flagged = {name: value for name, value in options.items() if value is not None}
    values |= flagged
    if "data_dir" in flagged:
        values["data_dir"] = str(flagged["data_dir"])
    if "task_dirs" in flagged:
        values["task_dirs"] = [str(d) for d in flagged["task_dirs"]]
    if "task" not in values:
        raise UserError("give --task (or a --config file naming the task)")
    flags = {name: train_flag(name) for name in flagged}
    if from_env(ctx, "data_dir") and "data_dir" in flags:
        flags["data_dir"] = DATA_DIR_ENV  # an error names where the value came from
    cfg = parse_train_config(values, str(config) if config else "train options", rename=flags)
    if cfg.model.startswith("random:"):  # ftgen.models.RANDOM_PREFIX; benchmarks call ftgen.train.train directly
        raise UserError(
            f"--model {cfg.model}: random weights are for benchmarks and calibration only (ftgen bench), "
            "never for a stored training run"
        )
    try:
        s = train(cfg, out, resume=resume)
    except FieldError as e:  # the library names the field; the user typed a flag
        if e.field not in flags:
            raise
        raise UserError(str(e).replace(f"field '{e.field}'", flags[e.field], 1)) from None
    if os.environ.get("RANK", "0") != "0":  # under torchrun / accelerate launch, process 0 reports
        return
    epochs = f" (epoch means {s['loss_first_epoch']:.4f} -> {s['loss_last_epoch']:.4f})" if s["epochs"] > 1 else ""
    print(
        f"trained {s['kind']} {s['task']}/{s['train_set']} ({s['records']} records, {s['steps']} steps, "
        f"{s['compute_dtype']}): loss {s['loss_first']:.4f} -> {s['loss_last']:.4f} per step{epochs}, "
        f"{s['tokens_per_s']:.0f} tokens/s, {s['elapsed_s']:.1f}s training"
    )
    if s["loss_before"] is not None:
        print(f"train-set loss per response token: {s['loss_before']:.4f} before, {s['loss_after']:.4f} after")
    print(f"model: {Path(out) / s['model_dir']}")
    if batch_size_old is not None:  # said once the run is done: a refused command prints one error line only
        print(
            "ftgen train: note: --batch-size is deprecated here: say --effective-batch-size (examples per optimizer "
            "step); --batch-size means records per forward pass in ftgen eval",
            file=sys.stderr,
        )


def train_command() -> Callable[..., None]:
    """`ftgen train`: --out, --config, --resume, and one option per TrainConfig field."""
    from ftgen.config import TrainConfig

    fixed = [
        inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context),
        inspect.Parameter(
            "out",
            inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option(..., help="Output dir: model/, train_summary.json, loss.jsonl/png, checkpoints/."),
            annotation=Path,
        ),
        inspect.Parameter(
            "config",
            inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option(None, help="YAML file of training fields; command-line options override it."),
            annotation=Path | None,
        ),
        inspect.Parameter(
            "resume",
            inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option(False, "--resume/--no-resume", help="Continue from the latest checkpoint in --out."),
            annotation=bool,
        ),
        inspect.Parameter(
            "batch_size_old",
            inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option(None, "--batch-size", hidden=True, help="Old name of --effective-batch-size."),
            annotation=int | None,
        ),
    ]
    params = fixed + [_train_option(name, info) for name, info in TrainConfig.model_fields.items()]

    def train_cmd(**kwargs: Any) -> None:
        _train_command(**kwargs)

    train_cmd.__doc__ = _train_command.__doc__
    train_cmd.__signature__ = inspect.Signature(params)
    train_cmd.__annotations__ = {p.name: p.annotation for p in params}
    return train_cmd
