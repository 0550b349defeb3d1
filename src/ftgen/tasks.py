"""Task definitions are data: one YAML file per task, validated with pydantic when it is loaded.

Built-in tasks live in `ftgen/task_defs/`. Users add tasks with their own YAML files, found in the
directories named by `--task-dir` / `$FTGEN_TASK_DIRS` (colon-separated), or given as a path.

In-domain, out-of-domain, cross-task (the paper's definitions): a task lists its in-domain test sets
(`in_domain: [amazon, amazonfood]`; a single name is accepted too); every other test set of the task is
out-of-domain, and every other task's test sets are cross-task for a model trained on it. The built-in tasks
follow the paper's Table 1. The first in-domain set is the default train set.

Everything that would fail later, after a model has loaded, is refused here: a template may use only the
task's input fields, each plainly (`{text}`: no `{}`, `{0}`, `{text!r}`, `{text:>9}`, `{text.x}`,
`{text[0]}`, and never `{output}`, the gold answer), and every template uses every field. Label words are
non-empty and distinct once stripped and case-folded; field names are unique identifiers; maps point at
fields and label words; shot counts and `max_new_tokens` are bounded; folder and set names are plain names
that cannot leave the data directory.
"""

from __future__ import annotations

import os
import re
import string
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ftgen.errors import UserError, parse_fields
from ftgen.files import check_tree, list_dir, read_yaml, stat_input

BUILTIN_DIR = Path(__file__).parent / "task_defs"
MAX_NEW_TOKENS = 4096
MAX_SHOTS = 1024
# generous bounds that no real task nears: a million label words (a forward pass each) or a 10 MB template
# would pass here and then stall or fail only after the model loaded
MAX_ITEMS = 256  # fields, templates
MAX_LABELS = 1000
MAX_TEMPLATE_CHARS = 20_000
MAX_WORD_CHARS = 1000  # a label word, a separator
RESERVED_FIELDS = ("output", "id")  # every record has them: the gold answer and the record's id


def plain_name(value: str) -> str:
    """A folder or set name: one path component that stays inside its parent (no separator, not . or ..)."""
    if not value or value != value.strip():
        raise ValueError("must be a plain name: non-empty, no leading or trailing spaces")
    if value in (".", "..") or any(sep in value for sep in ("/", "\\", os.sep)):
        raise ValueError(f"must be a plain name, not a path: '{_short(value)}' (no '/', not '.' or '..')")
    if len(value) > 200:
        raise ValueError(f"must be a plain name: '{_short(value)}' is too long (over 200 characters)")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError(f"must be a plain name: '{_short(value)}' holds control characters")
    return value


PlainName = Annotated[str, AfterValidator(plain_name)]
Count = Annotated[int, Strict()]  # YAML gives ints; 1e12 (a float) and true are not counts


def _short(text: str, n: int = 40) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def template_problem(template: str, fields: list[str]) -> str | None:
    """Why `template` is not a plain prompt template over `fields`, or None if it is."""
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as e:
        return f"not a valid format string: {e}"
    example = "{" + fields[0] + "}"
    used = set()
    for _, name, spec, conversion in parts:
        if name is None:
            continue
        shown = "{" + _short(name) + "}"
        base = re.split(r"[.\[]", name, maxsplit=1)[0]
        if not name:
            return f"'{{}}' names no field: name an input field, e.g. {example}"
        if base.isdigit():
            return f"'{shown}' is positional: name an input field, e.g. {example}"
        if base == "output":
            return "uses {output}, the gold answer: a prompt must not contain it"
        if base != name:
            return f"'{shown}' uses attribute or index access: write the field plainly, e.g. {example}"
        if name not in fields:
            return f"uses '{shown}', not among the input fields {fields}"
        if conversion is not None:
            return f"'{{{name}!{_short(conversion)}}}' has a conversion: write the field plainly, e.g. {shown}"
        if spec:
            return f"'{{{name}:{_short(spec)}}}' has a format spec: write the field plainly, e.g. {shown}"
        used.add(name)
    if missing := [f for f in fields if f not in used]:
        return f"does not use the input field(s) {missing}: every template shows every field"
    return None


class TaskDef(BaseModel):
    """What a task is: its fields, prompt templates, label words and metric."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_\-]+$", max_length=100)
    kind: Literal["classification", "generation"]
    description: str = Field("", max_length=MAX_TEMPLATE_CHARS)
    fields: list[Annotated[str, Field(max_length=100)]] = Field(
        min_length=1, max_length=MAX_ITEMS, description="input fields every record must have"
    )
    templates: list[Annotated[str, Field(max_length=MAX_TEMPLATE_CHARS)]] = Field(
        min_length=1, max_length=MAX_ITEMS, description="one prompt template per prompt format"
    )
    labels: list[Annotated[str, Field(max_length=MAX_WORD_CHARS)]] = Field(
        default_factory=list, max_length=MAX_LABELS, validate_default=True, description="label words (classification)"
    )
    ignore_labels: list[Annotated[str, Field(max_length=MAX_WORD_CHARS)]] = Field(
        default_factory=list, max_length=MAX_LABELS, description="gold labels meaning 'no gold label': dropped"
    )
    metric: Literal["accuracy", "rouge_l", "bleu"]
    rouge_stem: Annotated[bool, Strict()] = Field(
        False, description="Porter-stem words before Rouge-L (generation); the paper does not (the default)"
    )
    max_new_tokens: Count = Field(60, gt=0, le=MAX_NEW_TOKENS)
    answer_separator: str = Field(" ", max_length=MAX_WORD_CHARS, description="text between prompt and answer")
    shot_separator: str = Field("\n\n", max_length=MAX_WORD_CHARS, description="text after each in-context example")
    truncate_field: str | None = Field(None, description="field cut when a prompt is too long")
    field_map: dict[str, str] = Field(
        default_factory=dict, description="our field (or 'output') -> field name in the data files"
    )
    label_map: dict[str, str] = Field(default_factory=dict, description="raw label in the data -> label word")
    data_folder: PlainName | None = Field(None, description="folder of the task in a paper-layout data dir")
    fticl_shots: list[Annotated[Count, Field(ge=1, le=MAX_SHOTS)]] = Field(
        default_factory=list, description="the paper's k for FTICL"
    )
    eval_shots: list[Annotated[Count, Field(ge=0, le=MAX_SHOTS)]] = Field(
        default_factory=lambda: [0], min_length=1, description="the paper's k at test time"
    )
    in_domain: list[str] = Field(
        default_factory=list,
        max_length=MAX_ITEMS,
        description="the task's in-domain test sets (the paper's Table 1); the first is the default train set",
    )

    @model_validator(mode="before")
    @classmethod
    def _plain_data(cls, data: Any) -> Any:
        """A NUL or a lone surrogate anywhere would pass here and crash the tokenizer after the model loaded
        (read_yaml checks its files; a task built in Python gets the same check)."""
        try:
            check_tree(data, "task")
        except UserError as e:
            raise ValueError(str(e).removeprefix("task: ")) from None
        return data

    @field_validator("fields")
    @classmethod
    def _fields(cls, fields: list[str]) -> list[str]:
        for f in fields:
            if not f.isidentifier():
                raise ValueError(f"'{_short(f)}' is not a field name (letters, digits, _; not starting with a digit)")
            if f in RESERVED_FIELDS:
                raise ValueError(f"'{f}' is reserved (every record has it): name the input fields only")
        if len(set(fields)) != len(fields):
            raise ValueError(f"duplicate field names in {fields}")
        return fields

    @field_validator("templates")
    @classmethod
    def _templates(cls, templates: list[str], info: ValidationInfo) -> list[str]:
        fields = info.data.get("fields")
        if fields:  # else `fields` itself was refused, and says so
            for i, t in enumerate(templates):
                if problem := template_problem(t, fields):
                    raise ValueError(f"template {i} {problem}")
        return templates

    @field_validator("labels")
    @classmethod
    def _labels(cls, labels: list[str], info: ValidationInfo) -> list[str]:
        kind = info.data.get("kind")
        if kind == "generation" and labels:
            raise ValueError("only classification tasks have label words")
        if kind == "classification" and len(labels) < 2:
            raise ValueError("a classification task needs at least 2 label words")
        _distinct_words(labels, "label word")
        return labels

    @field_validator("ignore_labels")
    @classmethod
    def _ignore_labels(cls, ignore: list[str], info: ValidationInfo) -> list[str]:
        _distinct_words(ignore, "ignored label")
        scored = {w.strip().casefold() for w in info.data.get("labels") or []}
        if both := [w for w in ignore if w.strip().casefold() in scored]:
            raise ValueError(f"{both} are label words too: a gold label is either scored or ignored")
        return ignore

    @field_validator("metric")
    @classmethod
    def _metric(cls, metric: str, info: ValidationInfo) -> str:
        kind = info.data.get("kind")
        if kind == "classification" and metric != "accuracy":
            raise ValueError("a classification task is scored by accuracy")
        if kind == "generation" and metric == "accuracy":
            raise ValueError("a generation task is scored by rouge_l or bleu")
        return metric

    @field_validator("rouge_stem")
    @classmethod
    def _rouge_stem(cls, stem: bool, info: ValidationInfo) -> bool:
        if stem and info.data.get("kind") == "classification":
            raise ValueError("only generation tasks compute Rouge-L")
        return stem

    @field_validator("truncate_field")
    @classmethod
    def _truncate_field(cls, name: str | None, info: ValidationInfo) -> str | None:
        fields = info.data.get("fields")
        if name is not None and fields and name not in fields:
            raise ValueError(f"'{_short(name)}' is not among the fields {fields}")
        return name

    @field_validator("field_map")
    @classmethod
    def _field_map(cls, mapping: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        fields = info.data.get("fields") or []
        for ours, theirs in mapping.items():
            if fields and ours not in [*fields, "output"]:
                raise ValueError(f"key '{_short(ours)}' is not a field of the task ({', '.join([*fields, 'output'])})")
            if not theirs.strip():
                raise ValueError(f"'{ours}' maps to an empty column name")
        columns = [mapping.get(f, f) for f in [*fields, "output"]]  # unmapped fields read their own name
        if dupes := sorted({c for c in columns if columns.count(c) > 1}):
            raise ValueError(f"two fields would read the same column '{_short(dupes[0])}'")
        return mapping

    @field_validator("label_map", mode="before")
    @classmethod
    def _raw_labels_as_text(cls, mapping: object) -> object:
        """`{0: negative, 1: positive}` in YAML has int keys: raw labels are compared as text."""
        if isinstance(mapping, dict):
            return {str(k) if isinstance(k, int) and not isinstance(k, bool) else k: v for k, v in mapping.items()}
        return mapping

    @field_validator("label_map")
    @classmethod
    def _label_map(cls, mapping: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        if mapping and info.data.get("kind") == "generation":
            raise ValueError("only classification tasks map raw labels to label words")
        labels = info.data.get("labels")
        if labels is not None:
            allowed = [*labels, *(info.data.get("ignore_labels") or [])]
            if bad := sorted({v for v in mapping.values() if v not in allowed}):
                raise ValueError(f"maps to {[_short(b) for b in bad]}, not among the label words {labels}")
        return mapping

    @field_validator("fticl_shots", "eval_shots")
    @classmethod
    def _no_duplicate_shots(cls, shots: list[int]) -> list[int]:
        if len(set(shots)) != len(shots):
            raise ValueError(f"duplicate shot counts in {shots}")
        return shots

    @field_validator("in_domain", mode="before")
    @classmethod
    def _in_domain_as_list(cls, value: object) -> object:
        """A single name is still accepted (`in_domain: xsum`, the old form): a list of one."""
        if value is None:
            return []
        return [value] if isinstance(value, str) else value

    @field_validator("in_domain")
    @classmethod
    def _in_domain(cls, names: list[str]) -> list[str]:
        for name in names:
            plain_name(name)
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate test sets in {names}")
        return names

    @property
    def folder(self) -> str:
        return self.data_folder or self.name

    @property
    def default_train_set(self) -> str | None:
        """The train set used when none is named: the first in-domain set (None when the task lists none)."""
        return self.in_domain[0] if self.in_domain else None


def _distinct_words(words: list[str], what: str) -> None:
    seen: dict[str, str] = {}
    for w in words:
        key = w.strip().casefold()
        if not key:
            raise ValueError(f"an empty {what} ('{w}'): it would match every answer")
        if key in seen:
            a, b = _short(seen[key]), _short(w)
            raise ValueError(f"duplicate {what}s '{a}' and '{b}' (the same once stripped and case-folded)")
        seen[key] = w


def parse_task(data: object, source: str) -> TaskDef:
    return parse_fields(TaskDef, data, source, "a task file")


def task_dirs(extra: list[str | Path] | None = None) -> list[Path]:
    dirs = [Path(d) for d in (extra or [])]
    env = os.environ.get("FTGEN_TASK_DIRS", "")
    dirs += [Path(d) for d in env.split(os.pathsep) if d]
    return dirs


def _task_files(extra_dirs: list[str | Path] | None) -> list[tuple[Path, str]]:
    """(file, origin) of every task: built-in first, then each user dir once, in order."""
    found = [(p, "built-in") for p in sorted(BUILTIN_DIR.glob("*.yaml"))]
    seen_dirs = set()
    for d in task_dirs(extra_dirs):
        try:
            stat_input(d, "dir")
        except UserError as e:
            raise UserError(f"task directory {e}") from None
        if (real := os.path.realpath(d)) in seen_dirs:  # the same dir by --task-dir and $FTGEN_TASK_DIRS
            continue
        seen_dirs.add(real)
        found += [(p, "user") for p in list_dir(d) if p.suffix in (".yaml", ".yml") and not p.name.startswith(".")]
    return found


def _load_task_file(path: str | Path) -> TaskDef:
    st = stat_input(path, "file")  # before anything opens it: a symlink loop or a FIFO is one line, not a hang
    return _parse_task_file(str(path), os.path.realpath(path), (st.st_mtime_ns, st.st_size, st.st_ino))


@cache
def _parse_task_file(path: str, real_path: str, stamp: tuple[int, int, int]) -> TaskDef:
    """Parsed once per version of the file (the stamp makes an edited file parse again)."""
    return parse_task(read_yaml(path), path)


def all_tasks(extra_dirs: list[str | Path] | None = None) -> dict[str, tuple[TaskDef, str]]:
    """name -> (task, origin). A user task may override a built-in; two user tasks may not share a name."""
    tasks: dict[str, tuple[TaskDef, str]] = {}
    for path, origin in _task_files(extra_dirs):
        task = _load_task_file(path)
        if task.name in tasks and tasks[task.name][1] != "built-in":
            raise UserError(f"{path}: task name '{task.name}' is already defined in {tasks[task.name][1]}")
        tasks[task.name] = (task, "built-in" if origin == "built-in" else str(path))
    return tasks


def load_task(name_or_path: str, extra_dirs: list[str | Path] | None = None) -> TaskDef:
    """A task by name (built-in or user) or by the path of its YAML file."""
    if name_or_path.endswith((".yaml", ".yml")) or os.sep in name_or_path or "/" in name_or_path:
        return _load_task_file(name_or_path)
    tasks = all_tasks(extra_dirs)
    if name_or_path not in tasks:
        raise UserError(f"unknown task '{_short(name_or_path)}' (known: {', '.join(sorted(tasks))})")
    return tasks[name_or_path][0]


def in_domain_list(task_def: dict | None) -> list[str] | None:
    """A stored task definition's in-domain sets (an older store holds one name); None when unknown."""
    if not task_def or "in_domain" not in task_def:
        return None
    value = task_def["in_domain"]
    return [value] if isinstance(value, str) else list(value or [])
