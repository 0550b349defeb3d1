"""Task definitions are data: one YAML file per task, validated with pydantic.

Built-in tasks live in `ftgen/task_defs/`. Users add tasks with their own YAML files, found in the
directories named by `--task-dir` / `$FTGEN_TASK_DIRS` (colon-separated), or given as a path.
"""

from __future__ import annotations

import os
import string
from functools import cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ftgen.errors import UserError, parse_fields
from ftgen.files import read_yaml

BUILTIN_DIR = Path(__file__).parent / "task_defs"


class TaskDef(BaseModel):
    """What a task is: its fields, prompt templates, label words and metric."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_\-]+$")
    kind: Literal["classification", "generation"]
    description: str = ""
    fields: list[str] = Field(min_length=1, description="input fields every record must have")
    templates: list[str] = Field(min_length=1, description="one prompt template per prompt format")
    labels: list[str] = Field(default_factory=list, description="label words (classification)")
    ignore_labels: list[str] = Field(
        default_factory=list, description="gold labels meaning 'no gold label': such records are dropped"
    )
    metric: Literal["accuracy", "rouge_l", "bleu"]
    max_new_tokens: int = Field(60, gt=0)
    answer_separator: str = Field(" ", description="text between the prompt and the answer")
    shot_separator: str = Field("\n\n", description="text after each in-context example")
    truncate_field: str | None = Field(None, description="field cut when a prompt is too long")
    field_map: dict[str, str] = Field(
        default_factory=dict, description="our field (or 'output') -> field name in the data files"
    )
    label_map: dict[str, str] = Field(default_factory=dict, description="raw label in the data -> label word")
    data_folder: str | None = Field(None, description="folder of the task in a paper-layout data dir")
    fticl_shots: list[int] = Field(default_factory=list, description="the paper's k for FTICL")
    eval_shots: list[int] = Field(default_factory=lambda: [0], description="the paper's k at test time")
    in_domain: str | None = Field(None, description="the test set named like the train set")

    @field_validator("templates")
    @classmethod
    def _templates_parse(cls, templates: list[str]) -> list[str]:
        for i, t in enumerate(templates):
            try:
                list(string.Formatter().parse(t))
            except ValueError as e:
                raise ValueError(f"template {i} is not a valid format string: {e}") from None
        return templates

    @model_validator(mode="after")
    def _consistent(self) -> TaskDef:
        for i, t in enumerate(self.templates):
            used = {name for _, name, _, _ in string.Formatter().parse(t) if name}
            unknown = used - set(self.fields)
            if unknown:
                raise ValueError(f"templates[{i}] uses {sorted(unknown)}, not among fields {self.fields}")
        if self.kind == "classification":
            if len(self.labels) < 2:
                raise ValueError("labels: a classification task needs at least 2 label words")
            if len(set(self.labels)) != len(self.labels):
                raise ValueError("labels: duplicate label words")
            if self.metric != "accuracy":
                raise ValueError("metric: a classification task is scored by accuracy")
        elif self.labels:
            raise ValueError("labels: only classification tasks have label words")
        elif self.metric == "accuracy":
            raise ValueError("metric: a generation task is scored by rouge_l or bleu")
        if self.truncate_field is not None and self.truncate_field not in self.fields:
            raise ValueError(f"truncate_field: {self.truncate_field!r} is not among fields {self.fields}")
        return self

    @property
    def folder(self) -> str:
        return self.data_folder or self.name


def parse_task(data: object, source: str) -> TaskDef:
    return parse_fields(TaskDef, data, source, "a task file")


def task_dirs(extra: list[str | Path] | None = None) -> list[Path]:
    dirs = [Path(d) for d in (extra or [])]
    env = os.environ.get("FTGEN_TASK_DIRS", "")
    dirs += [Path(d) for d in env.split(os.pathsep) if d]
    return dirs


def _task_files(extra_dirs: list[str | Path] | None) -> list[tuple[Path, str]]:
    found = [(p, "built-in") for p in sorted(BUILTIN_DIR.glob("*.yaml"))]
    for d in task_dirs(extra_dirs):
        if not d.is_dir():
            raise UserError(f"{d}: task directory not found")
        found += [(p, "user") for p in sorted(d.glob("*.y*ml"))]
    return found


@cache
def _load_task_file(path: Path) -> TaskDef:
    return parse_task(read_yaml(path), str(path))


def all_tasks(extra_dirs: list[str | Path] | None = None) -> dict[str, tuple[TaskDef, str]]:
    """name -> (task, origin). A user task may override a built-in; two user tasks may not share a name."""
    tasks: dict[str, tuple[TaskDef, str]] = {}
    for path, origin in _task_files(extra_dirs):
        task = _load_task_file(path.resolve())
        if task.name in tasks and tasks[task.name][1] != "built-in":
            raise UserError(f"{path}: task name '{task.name}' is already defined in {tasks[task.name][1]}")
        tasks[task.name] = (task, "built-in" if origin == "built-in" else str(path))
    return tasks


def load_task(name_or_path: str, extra_dirs: list[str | Path] | None = None) -> TaskDef:
    """A task by name (built-in or user) or by the path of its YAML file."""
    if name_or_path.endswith((".yaml", ".yml")) or os.sep in name_or_path:
        return _load_task_file(Path(name_or_path).resolve())
    tasks = all_tasks(extra_dirs)
    if name_or_path not in tasks:
        raise UserError(f"unknown task '{name_or_path}' (known: {', '.join(sorted(tasks))})")
    return tasks[name_or_path][0]
