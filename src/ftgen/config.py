"""The study config: one YAML file describing the whole grid, validated up front.

    name: quick
    models: [default]                      # HF ids or local paths too
    train:                                 # one entry per train task
      - {task: sentiment, train_set: amazon, sizes: [200]}
    methods:                               # ft = plain fine-tuning; fticl = k in-context examples per training prompt
      - {name: ft}
      - {name: fticl, shots: {sentiment: 2}}   # or one int for every task; LoRA with lora_r: 8
    hyper: {lr: [2e-5], epochs: [2], seeds: [0]}   # lists expand into a grid
    train_args: {batch_size: 16}           # any other field of ftgen.train.TrainConfig
    eval:
      test_sets: all                       # or {task: [sets] | all}
      shots: {sentiment: [0, 2]}           # default per task: [0, first non-zero of the task's eval_shots]
      prompt_formats: [0]
      limit: 250
      max_new_tokens: {question: 32}       # default: the task's own (60, as in the paper)
    executor: local                        # or ray; `workers: 2` runs 2 units at once in local processes
    analysis: {drift: true, probe_records: 4}   # per run: weight drift and KL vs the base (ftgen.analysis)

Every problem is a UserError naming the field by its dotted path (`eval.shots.sentiment.1`). Checks
that need the tasks run in `validate_study`; those that need the data (test-set names, pool sizes,
train sizes) run there too when a data directory is known.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, field_validator

from ftgen.data import TaskFiles, read_raw_records, scan_task_files
from ftgen.errors import UserError, parse_fields
from ftgen.files import read_yaml
from ftgen.tasks import TaskDef, all_tasks


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TrainEntry(_Strict):
    """One train task: its train set and the train sizes to fine-tune on."""

    task: str
    train_set: str | None = Field(None, description="default: the task's in-domain set")
    sizes: list[PositiveInt] = Field(min_length=1)

    @field_validator("sizes")
    @classmethod
    def _unique(cls, sizes: list[int]) -> list[int]:
        if len(set(sizes)) != len(sizes):
            raise ValueError("duplicate sizes")
        return sizes


class Method(_Strict):
    """How to fine-tune: plain (`ft`) or with k in-context examples in each training prompt (`fticl`)."""

    name: Literal["ft", "fticl"]
    label: str | None = Field(None, pattern=r"^[A-Za-z0-9_.+\-]+$", description="default: name (+lora)")
    shots: PositiveInt | dict[str, PositiveInt] | None = Field(
        None, description="fticl: k, one for all tasks or per train task; default the task's first fticl_shots"
    )
    lora_r: int = Field(0, ge=0, description="0 = full fine-tuning")
    lora_alpha: PositiveInt | None = None

    @property
    def display(self) -> str:
        return self.label or (self.name + ("+lora" if self.lora_r else ""))


class Hyper(_Strict):
    """Hyper-parameter lists: every combination is one training run (per task, size and method)."""

    lr: list[float] = Field([2e-5], min_length=1)
    epochs: list[PositiveFloat] = Field([2], min_length=1)
    seeds: list[int] = Field([0], min_length=1)

    @field_validator("lr")
    @classmethod
    def _positive(cls, lrs: list[float]) -> list[float]:
        if any(lr <= 0 for lr in lrs):
            raise ValueError("learning rates must be > 0")
        return lrs


class EvalSpec(_Strict):
    test_sets: Literal["all"] | dict[str, list[str] | Literal["all"]] = Field(
        "all", description="all test sets of all tasks, or {task: [sets] | all}"
    )
    shots: list[int] | dict[str, list[int]] | None = Field(
        None, description="test-time shots, for every task or per task; default [0, the task's first k]"
    )
    prompt_formats: list[int] = Field([0], min_length=1)
    limit: PositiveInt | None = Field(250, description="first N raw records of each test file (the paper: 250)")
    max_new_tokens: dict[str, PositiveInt] = Field(
        default_factory=dict, description="generation tasks: {task: N} instead of the task's max_new_tokens"
    )
    skip_invalid: bool = True
    scoring: str = "sum"
    batch_size: PositiveInt = 16
    generation_batch_size: PositiveInt | None = Field(
        None, description="default: batch_size; decoding runs one step per batch and token, so bigger pays more"
    )
    max_length: PositiveInt | None = None
    dtype: str = Field("auto", description="compute dtype of evaluation (auto: bf16 where the CPU/GPU runs it fast)")
    base: bool = Field(True, description="evaluate the base model(s) too (needed for deltas)")

    @field_validator("shots")
    @classmethod
    def _shots(cls, shots):
        lists = shots.values() if isinstance(shots, dict) else [shots] if shots is not None else []
        for lst in lists:
            if not lst:
                raise ValueError("an empty list of shots")
            if any(k < 0 for k in lst):
                raise ValueError("shots must be >= 0")
            if len(set(lst)) != len(lst):
                raise ValueError("duplicate shots")
        return shots

    @field_validator("prompt_formats")
    @classmethod
    def _formats(cls, fmts: list[int]) -> list[int]:
        if any(f < 0 for f in fmts) or len(set(fmts)) != len(fmts):
            raise ValueError("prompt formats must be distinct and >= 0")
        return fmts


class RayOptions(_Strict):
    address: str | None = Field(None, description="an existing cluster; default: start a local one")
    num_cpus: int | None = Field(None, gt=0, description="CPUs of the local cluster (default: all)")
    train_cpus: float = Field(1, gt=0)
    train_gpus: float = Field(0, ge=0)
    eval_cpus: float = Field(1, gt=0)
    eval_gpus: float = Field(0, ge=0)


class AnalysisSpec(_Strict):
    drift: bool = Field(True, description="after each training run: weight drift and KL vs the base model")
    probe_records: PositiveInt = Field(4, description="records per evaluated task in the drift probe set")


class StudyConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")
    models: list[str] = Field(["default"], min_length=1)
    data_dir: str | None = Field(None, description="paper-layout data dir; --data-dir wins")
    task_dirs: list[str] = Field(default_factory=list, description="directories of user task YAML files")
    train: list[TrainEntry] = Field(default_factory=list)
    methods: list[Method] = Field(default_factory=lambda: [Method(name="ft")], min_length=1)
    hyper: Hyper = Hyper()
    train_args: dict[str, Any] = Field(default_factory=dict, description="other ftgen.train.TrainConfig fields")
    eval: EvalSpec = EvalSpec()
    executor: Literal["local", "ray"] = "local"
    workers: PositiveInt = Field(1, description="local: units run at once (1 = in this process; more = processes)")
    threads: PositiveInt | None = Field(
        None, description="torch threads per unit (default: torch's own); 1 thread per worker on a shared CPU"
    )
    ray: RayOptions = RayOptions()
    analysis: AnalysisSpec = AnalysisSpec()

    @field_validator("models")
    @classmethod
    def _models(cls, models: list[str]) -> list[str]:
        if len(set(models)) != len(models):
            raise ValueError("duplicate models")
        return models


# Fields a study sets itself for each training run: they may not appear under train_args.
STUDY_OWNED_TRAIN_FIELDS = {
    "model": "models",
    "task": "train.N.task",
    "train_set": "train.N.train_set",
    "train_size": "train.N.sizes",
    "data_dir": "data_dir",
    "lr": "hyper.lr",
    "epochs": "hyper.epochs",
    "seed": "hyper.seeds",
    "fticl_shots": "methods.N.shots",
    "lora_r": "methods.N.lora_r",
    "lora_alpha": "methods.N.lora_alpha",
}


def parse_study(data: object, source: str = "study config") -> StudyConfig:
    return parse_fields(StudyConfig, data, source, "a study config")


def load_study(path: str | Path) -> StudyConfig:
    return parse_study(read_yaml(path), str(path))


# ---------------------------------------------------------------- semantic checks (tasks, data)


@dataclass
class Resolved:
    """The config checked against the tasks (and the data, when a data directory is known)."""

    cfg: StudyConfig
    data_dir: Path | None
    tasks: dict[str, TaskDef]  # every task the study trains or evaluates
    train_sets: list[str]  # per cfg.train entry
    test_sets: dict[str, list[str]]  # evaluated task -> its test sets, in-domain first
    shots: dict[str, list[int]]  # evaluated task -> test-time shots
    files: dict[str, TaskFiles] = field(default_factory=dict)  # task -> its files (with a data dir)
    notes: list[str] = field(default_factory=list)  # things the user should know (skipped cells)

    def fticl_k(self, method: Method, task: str) -> int:
        return fticl_k(method, self.tasks[task])

    def pool_size(self, task: str, test_set: str) -> int | None:
        """Examples in the few-shot pool of a test set; None = no pool file."""
        files = self.files.get(task)
        if files is None or test_set not in files.pools:
            return None
        return len(read_raw_records(files.pools[test_set]))


def fticl_k(method: Method, task: TaskDef) -> int:
    """k in-context examples per training prompt for `task` (0 for plain ft)."""
    if method.name == "ft":
        return 0
    if isinstance(method.shots, int):
        return method.shots
    if isinstance(method.shots, dict) and task.name in method.shots:
        return method.shots[task.name]
    return task.fticl_shots[0]


def _fail(source: str, path: str, msg: str) -> None:
    raise UserError(f"{source}: field '{path}': {msg}")


def default_shots(task: TaskDef) -> list[int]:
    """0-shot and the task's first k-shot setting of the paper."""
    k = next((s for s in task.eval_shots if s > 0), None)
    return [0, k] if k else [0]


def resolve_data_dir(cfg: StudyConfig, cli_data_dir: str | Path | None, config_path: str | Path | None) -> Path | None:
    """--data-dir wins; a relative `data_dir` in the YAML is relative to the YAML file."""
    if cli_data_dir is not None:
        return Path(cli_data_dir)
    if cfg.data_dir is None:
        return None
    path = Path(cfg.data_dir)
    if not path.is_absolute() and config_path is not None:
        path = Path(config_path).parent / path
    return path


def validate_study(cfg: StudyConfig, data_dir: str | Path | None, source: str = "study config") -> Resolved:
    """Every check that needs the task definitions or the data; UserError naming the field."""
    known = {name: t for name, (t, _) in all_tasks(cfg.task_dirs).items()}

    def task(name: str, path: str) -> TaskDef:
        if name not in known:
            _fail(source, path, f"unknown task '{name}' (known: {', '.join(sorted(known))})")
        return known[name]

    data = Path(data_dir) if data_dir is not None else None
    if data is not None and not data.is_dir():
        raise UserError(f"{data}: data directory not found")
    files: dict[str, TaskFiles] = {}

    def files_of(t: TaskDef) -> TaskFiles | None:
        if data is None:
            return None
        if t.name not in files:
            files[t.name] = scan_task_files(data, t)
        return files[t.name]

    # train tasks, train sets, sizes
    train_sets = []
    train_tasks = []
    for i, entry in enumerate(cfg.train):
        t = task(entry.task, f"train.{i}.task")
        if entry.task in train_tasks:
            _fail(source, f"train.{i}.task", f"task '{entry.task}' is listed twice (give all its sizes in one entry)")
        train_tasks.append(entry.task)
        name = entry.train_set or t.in_domain
        if name is None:
            _fail(source, f"train.{i}.train_set", f"task '{t.name}' has no in-domain set: name the train set")
        train_sets.append(name)
        tf = files_of(t)
        if tf is not None and "/" not in name and not name.endswith((".json", ".jsonl", ".csv")):
            if name not in tf.train:
                known_sets = ", ".join(sorted(tf.train)) or "none"
                msg = f"no train set '{name}' for task '{t.name}' (known: {known_sets})"
                _fail(source, f"train.{i}.train_set", msg)
            biggest = max(tf.train[name])
            for j, size in enumerate(entry.sizes):
                if size > biggest and not cfg.train_args.get("allow_smaller"):
                    _fail(source, f"train.{i}.sizes.{j}", f"{size} records asked for, the largest file has {biggest}")

    # methods
    labels = [m.display for m in cfg.methods]
    for i, m in enumerate(cfg.methods):
        if m.display in labels[:i]:
            _fail(source, f"methods.{i}.label", f"two methods are labelled '{m.display}': give each a distinct label")
        if m.name == "ft" and m.shots is not None:
            _fail(source, f"methods.{i}.shots", "only fticl takes in-context examples")
        if m.lora_alpha is not None and not m.lora_r:
            _fail(source, f"methods.{i}.lora_alpha", "set lora_r too (lora_r: 0 is full fine-tuning)")
        if isinstance(m.shots, dict):
            for name in m.shots:
                if name not in train_tasks:
                    msg = f"'{name}' is not a train task ({', '.join(train_tasks)})"
                    _fail(source, f"methods.{i}.shots.{name}", msg)
        if m.name == "fticl":
            for entry in cfg.train:
                t = known[entry.task]
                if m.shots is None and not t.fticl_shots:
                    _fail(source, f"methods.{i}.shots", f"task '{t.name}' has no default fticl_shots: give k")

    # train_args: fields of the training engine's TrainConfig that the study does not set itself
    for name in cfg.train_args:
        if name in STUDY_OWNED_TRAIN_FIELDS:
            _fail(source, f"train_args.{name}", f"set by the study: use '{STUDY_OWNED_TRAIN_FIELDS[name]}'")
    train_fields = _train_config_fields()
    if train_fields is not None:
        for name in cfg.train_args:
            if name not in train_fields:
                _fail(source, f"train_args.{name}", "not a training option (see ftgen.train.TrainConfig)")

    # evaluation: tasks, test sets, shots, formats
    ev = cfg.eval
    if ev.test_sets == "all":
        eval_names = train_tasks + sorted(n for n in known if n not in train_tasks)
        if data is not None:  # 'all' means the tasks that have data here
            eval_names = [n for n in eval_names if (data / known[n].folder).is_dir()]
        wanted: dict[str, list[str] | str] = {n: "all" for n in eval_names}
    else:
        wanted = dict(ev.test_sets)
        for name in wanted:
            task(name, f"eval.test_sets.{name}")
    for name in ev.max_new_tokens:
        if task(name, f"eval.max_new_tokens.{name}").kind != "generation":
            _fail(source, f"eval.max_new_tokens.{name}", f"task '{name}' is not a generation task")
    if isinstance(ev.shots, dict):
        for name in ev.shots:
            task(name, f"eval.shots.{name}")
            if name not in wanted:
                _fail(source, f"eval.shots.{name}", f"task '{name}' is not evaluated (not in eval.test_sets)")
    test_sets: dict[str, list[str]] = {}
    shots: dict[str, list[int]] = {}
    notes: list[str] = []
    for name, sets in wanted.items():
        t = known[name]
        for j, fmt in enumerate(ev.prompt_formats):
            if fmt >= len(t.templates):
                _fail(source, f"eval.prompt_formats.{j}", f"task '{name}' has {len(t.templates)} prompt formats")
        tf = files_of(t)
        if sets == "all":
            if tf is None:
                raise UserError(f"{source}: eval.test_sets: 'all' needs the data: give --data-dir (or data_dir:)")
            sets = sorted(tf.test, key=lambda s: (s != t.in_domain, s))
        elif tf is not None:
            for j, s in enumerate(sets):
                if s not in tf.test:
                    _fail(
                        source,
                        f"eval.test_sets.{name}.{j}",
                        f"no test set '{s}' for task '{name}' (known: {', '.join(sorted(tf.test))})",
                    )
        if len(set(sets)) != len(sets):
            _fail(source, f"eval.test_sets.{name}", "duplicate test sets")
        test_sets[name] = list(sets)
        shots[name] = list(
            ev.shots.get(name, default_shots(t)) if isinstance(ev.shots, dict) else ev.shots or default_shots(t)
        )
    for i, m in enumerate(cfg.methods):  # the fticl pool must exist beside a train set and hold k examples
        for entry, train_set in zip(cfg.train, train_sets, strict=True):
            tf = files_of(known[entry.task])
            if m.name != "fticl" or tf is None:
                continue
            k = fticl_k(m, known[entry.task])
            pool = tf.pools.get(train_set)
            if pool is None:
                _fail(source, f"methods.{i}", f"fticl needs the few-shot pool of '{train_set}' (none found)")
            if k > len(read_raw_records(pool)):
                _fail(source, f"methods.{i}.shots", f"k={k} but the pool of '{train_set}' has fewer examples")

    resolved = Resolved(
        cfg,
        data,
        {n: known[n] for n in dict.fromkeys(train_tasks + list(wanted))},
        train_sets,
        test_sets,
        shots,
        files,
        notes,
    )
    if data is not None:  # shots must fit the pool of every test set
        for name, sets in test_sets.items():
            for s in sets:
                size = resolved.pool_size(name, s)
                ks = [k for k in shots[name] if k > 0]
                if ks and size is None:
                    notes.append(f"{name}/{s} has no few-shot pool: only its 0-shot cells are run")
                elif ks and max(ks) > size:
                    where = f"eval.shots.{name}" if isinstance(ev.shots, dict) and name in ev.shots else "eval.shots"
                    _fail(source, where, f"{max(ks)} shots, but the pool of {name}/{s} has {size} examples")
    return resolved


def _train_config_fields() -> set[str] | None:
    """The training engine's option names, or None while it is not installed."""
    try:
        from ftgen.train import TrainConfig
    except ImportError:
        return None
    return set(TrainConfig.model_fields)
