"""`ftgen train`, generated from ftgen.config.TrainConfig: one option per field (`--field-name`, or the name in
TRAIN_FLAG_NAMES), with the field's description and default as its help, so the command and the model cannot
drift apart. Unset options leave the field to the --config file or the model's default. Errors name the flag
the user typed (`--lr`), or the field where it came from the --config file.
"""

from __future__ import annotations

import inspect
import os
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from ftgen.errors import UserError

TRAIN_FLAG_NAMES = {"task_dirs": "--task-dir"}  # a field whose flag is not --field-name


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
    """The `ftgen train` option of one TrainConfig field: its description and default as help."""
    if info.is_required():
        shown = "required, here or in --config"
    else:
        default = info.get_default(call_default_factory=True)
        shown = "unset" if default in (None, []) else ",".join(default) if isinstance(default, list) else str(default)
        shown = f"default: {shown}"
    if typing.get_origin(info.annotation) is typing.Literal:
        shown = f"one of {', '.join(typing.get_args(info.annotation))}; {shown}"
    help_text = f"{(info.description or name.replace('_', ' ')).rstrip('.')}. ({shown})"
    kind = _plain_type(info.annotation)
    flag = train_flag(name)
    if name == "task_dirs":
        kind = list[Path] | None
    elif kind is bool:
        flag = f"{flag}/--no-{flag[2:]}"
        kind = bool | None
    else:
        kind = kind | None
    option = typer.Option(None, flag, help=help_text, show_default=False)
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=kind)


def _train_command(out: Path, config: Path | None, resume: bool, **options: Any) -> None:
    """Fine-tune a model on one task's training set (full or LoRA, optionally with in-context examples)."""
    from ftgen.config import FieldError, parse_train_config
    from ftgen.files import read_yaml
    from ftgen.train import train

    values: dict = {}
    if config is not None:
        values = read_yaml(config)
        if not isinstance(values, dict):
            raise UserError(f"{config}: expected a mapping of training fields")
    flagged = {name: value for name, value in options.items() if value is not None}
    values |= flagged
    if "data_dir" in flagged:
        values["data_dir"] = str(flagged["data_dir"])
    if "task_dirs" in flagged:
        values["task_dirs"] = [str(d) for d in flagged["task_dirs"]]
    if "task" not in values:
        raise UserError("give --task (or a --config file naming the task)")
    flags = {name: train_flag(name) for name in flagged}
    cfg = parse_train_config(values, str(config) if config else "train options", rename=flags)
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
    print(f"model: {s['model_dir']}")


def train_command() -> Callable[..., None]:
    """`ftgen train`: --out, --config, --resume, and one option per TrainConfig field."""
    from ftgen.config import TrainConfig

    fixed = [
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
            default=typer.Option(False, "--resume", help="Continue from the latest checkpoint in --out."),
            annotation=bool,
        ),
    ]
    params = fixed + [_train_option(name, info) for name, info in TrainConfig.model_fields.items()]

    def train_cmd(**kwargs: Any) -> None:
        _train_command(**kwargs)

    train_cmd.__doc__ = _train_command.__doc__
    train_cmd.__signature__ = inspect.Signature(params)
    train_cmd.__annotations__ = {p.name: p.annotation for p in params}
    return train_cmd
