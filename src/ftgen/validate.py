"""The study config checked against the task definitions and the data: `validate_study` -> `Resolved`.

The schema (ftgen.config) has already checked each field's type and range; here come the checks that need to
know the tasks (names, prompt formats, kinds, default shots) or the files of the data directory (train and
test sets, sizes, few-shot pools). Every problem is a UserError naming the field by its dotted path
(`eval.shots.sentiment`), raised before anything is written or any model loads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ftgen.config import STUDY_OWNED_TRAIN_FIELDS, Method, StudyConfig, TrainConfig
from ftgen.data import TaskFiles, read_raw_records, scan_task_files
from ftgen.errors import UserError
from ftgen.tasks import TaskDef, all_tasks


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


def default_shots(task: TaskDef) -> list[int]:
    """0-shot and the task's first k-shot setting of the paper."""
    k = next((s for s in task.eval_shots if s > 0), None)
    return [0, k] if k else [0]


def resolve_paths(
    cfg: StudyConfig, cli_data_dir: str | Path | None, config_path: str | Path | None
) -> tuple[StudyConfig, Path | None]:
    """(cfg with absolute `task_dirs`, the data dir): relative paths in the YAML are relative to the YAML file;
    --data-dir (relative to the current directory) wins over `data_dir`."""
    base = Path(config_path).parent if config_path is not None else Path(".")

    def absolute(p: str) -> Path:
        path = Path(p).expanduser()
        return (path if path.is_absolute() else base / path).resolve()

    cfg = cfg.model_copy(update={"task_dirs": [str(absolute(d)) for d in cfg.task_dirs]})
    if cli_data_dir is not None:
        return cfg, Path(cli_data_dir).resolve()
    return cfg, absolute(cfg.data_dir) if cfg.data_dir is not None else None


def validate_study(
    cfg: StudyConfig, data_dir: str | Path | None, source: str = "study config", *, allow_random: bool = False
) -> Resolved:
    """Every check that needs the task definitions or the data; UserError naming the field. `allow_random`:
    `random:CONFIG` models pass (a dry run, which stores no result); else they are refused."""
    checker = _Checker(cfg, data_dir, source)
    checker.allow_random = allow_random
    return checker.run()


class _Checker:
    """validate_study's state: the known tasks, and the data files scanned so far."""

    def __init__(self, cfg: StudyConfig, data_dir: str | Path | None, source: str):
        self.cfg, self.source = cfg, source
        self.known = {name: t for name, (t, _) in all_tasks(cfg.task_dirs).items()}
        self.data = Path(data_dir) if data_dir is not None else None
        if self.data is not None and not self.data.is_dir():
            raise UserError(f"{self.data}: data directory not found")
        self.files: dict[str, TaskFiles] = {}

    def fail(self, path: str, msg: str) -> None:
        raise UserError(f"{self.source}: field '{path}': {msg}")

    def task(self, name: str, path: str) -> TaskDef:
        if name not in self.known:
            self.fail(path, f"unknown task '{name}' (known: {', '.join(sorted(self.known))})")
        return self.known[name]

    def files_of(self, t: TaskDef) -> TaskFiles | None:
        if self.data is None:
            return None
        if t.name not in self.files:
            self.files[t.name] = scan_task_files(self.data, t)
        return self.files[t.name]

    def run(self) -> Resolved:
        self.check_models()
        train_sets = self.check_train()
        self.check_methods()
        self.check_interpolations()
        self.check_train_args()
        wanted = self.wanted_test_sets()
        test_sets = {name: self.test_sets_of(name, sets) for name, sets in wanted.items()}
        shots = {name: self.shots_of(self.known[name]) for name in wanted}
        self.check_fticl_pools(train_sets)
        train_tasks = [e.task for e in self.cfg.train]
        tasks = {n: self.known[n] for n in dict.fromkeys(train_tasks + list(wanted))}
        deferred = self.check_first_token_scoring([self.known[n] for n in wanted])
        resolved = Resolved(self.cfg, self.data, tasks, train_sets, test_sets, shots, self.files, deferred)
        if self.data is not None:
            resolved.notes += self.check_eval_pools(resolved)
        return resolved

    allow_random = False

    def check_models(self) -> None:
        from ftgen.hub import check_model_name

        for i, model in enumerate(self.cfg.models):
            if model.startswith("random:"):  # ftgen.models.RANDOM_PREFIX (no torch import here)
                self.check_random_model(f"models.{i}", model)
                continue
            try:
                check_model_name(model)
            except UserError as e:
                self.fail(f"models.{i}", str(e))

    def check_first_token_scoring(self, evaluated: list[TaskDef]) -> list[str]:
        """First-token scoring needs, under each model's tokenizer, labels that start with different tokens in
        every prompt format (the tokenizer alone is loaded: cheap, and before any model). A model whose tokenizer
        is not here (a Hub id not downloaded yet) is checked by the engine when its cells run: returns notes."""
        classified = [t for t in evaluated if t.kind == "classification"]
        if self.cfg.eval.scoring != "first-token" or not classified:
            return []
        from ftgen.models import load_tokenizer
        from ftgen.prompts import check_first_token_scoring

        notes = []
        for model in self.cfg.models:
            try:
                tokenizer = load_tokenizer(model)
            except UserError:
                notes.append(f"the tokenizer of {model} is not here: its first-token ties are checked when it runs")
                continue
            for t in classified:
                try:
                    check_first_token_scoring(tokenizer, t, list(self.cfg.eval.prompt_formats), model)
                except UserError as e:
                    self.fail("eval.scoring", str(e))
        return notes

    def check_random_model(self, path: str, model: str) -> None:
        if not self.allow_random:
            self.fail(
                path,
                f"'{model}': random weights are for estimates and benchmarks only (ftgen study --dry-run "
                "[--calibrate], ftgen bench), never for stored results",
            )
        source = Path(model.removeprefix("random:")).expanduser()
        if not (source / "config.json" if source.is_dir() else source).is_file() or not (
            source.is_dir() or source.suffix == ".json"
        ):
            self.fail(path, f"'{model}': expected random:DIR (holding config.json) or random:FILE.json")

    def check_train(self) -> list[str]:
        """The train set of each entry (default: its task's first in-domain set), checked against the data."""
        train_sets, seen = [], []
        for i, entry in enumerate(self.cfg.train):
            t = self.task(entry.task, f"train.{i}.task")
            if entry.task in seen:
                self.fail(f"train.{i}.task", f"task '{entry.task}' is listed twice (give all its sizes in one entry)")
            seen.append(entry.task)
            name = entry.train_set or t.default_train_set
            if name is None:
                self.fail(f"train.{i}.train_set", f"task '{t.name}' has no in-domain set: name the train set")
            train_sets.append(name)
            tf = self.files_of(t)
            if tf is None or "/" in name or name.endswith((".json", ".jsonl", ".csv")):
                continue
            if name not in tf.train:
                known_sets = ", ".join(sorted(tf.train)) or "none"
                self.fail(f"train.{i}.train_set", f"no train set '{name}' for task '{t.name}' (known: {known_sets})")
            biggest = max(tf.train[name])
            for j, size in enumerate(entry.sizes):
                if size > biggest and not self.cfg.train_args.get("allow_smaller"):
                    self.fail(f"train.{i}.sizes.{j}", f"{size} records asked for, the largest file has {biggest}")
        return train_sets

    def check_methods(self) -> None:
        train_tasks = [e.task for e in self.cfg.train]
        labels = [m.display for m in self.cfg.methods]
        for i, m in enumerate(self.cfg.methods):
            if m.display in labels[:i]:
                self.fail(f"methods.{i}.label", f"two methods are labelled '{m.display}': give each a distinct label")
            if m.name == "ft" and m.shots is not None:
                self.fail(f"methods.{i}.shots", "only fticl takes in-context examples")
            if m.lora_alpha is not None and not m.lora_r:
                self.fail(f"methods.{i}.lora_alpha", "set lora_r too (lora_r: 0 is full fine-tuning)")
            for name in m.shots if isinstance(m.shots, dict) else {}:
                if name not in train_tasks:
                    self.fail(f"methods.{i}.shots.{name}", f"'{name}' is not a train task ({', '.join(train_tasks)})")
            for entry in self.cfg.train if m.name == "fticl" and m.shots is None else []:
                if not self.known[entry.task].fticl_shots:
                    self.fail(f"methods.{i}.shots", f"task '{entry.task}' has no default fticl_shots: give k")

    def check_interpolations(self) -> None:
        """`interpolate` names a method of this study that trains, once."""
        trained = [m.display for m in self.cfg.train_methods]
        seen: list[str] = []
        for i, m in enumerate(self.cfg.methods):
            if m.trains:
                continue
            if m.of not in trained:
                self.fail(f"methods.{i}.of", f"'{m.of}' is not a method that trains (known: {', '.join(trained)})")
            if m.of in seen:
                self.fail(f"methods.{i}.of", f"'{m.of}' is interpolated twice (give all its alphas in one entry)")
            seen.append(m.of)

    def check_train_args(self) -> None:
        """train_args: fields of TrainConfig that the study does not set itself."""
        for name in self.cfg.train_args:
            if name in STUDY_OWNED_TRAIN_FIELDS:
                self.fail(f"train_args.{name}", f"set by the study: use '{STUDY_OWNED_TRAIN_FIELDS[name]}'")
            if name not in TrainConfig.model_fields:
                self.fail(f"train_args.{name}", "not a training option (see ftgen train --help)")

    def wanted_test_sets(self) -> dict[str, list[str] | str]:
        """Evaluated task -> its test sets as the config names them ('all' = every set in the data)."""
        ev = self.cfg.eval
        train_tasks = [e.task for e in self.cfg.train]
        if ev.test_sets == "all":
            names = train_tasks + sorted(n for n in self.known if n not in train_tasks)
            if self.data is not None:  # 'all' means the tasks that have data here
                names = [n for n in names if (self.data / self.known[n].folder).is_dir()]
            wanted: dict[str, list[str] | str] = dict.fromkeys(names, "all")
        else:
            wanted = dict(ev.test_sets)
            for name in wanted:
                self.task(name, f"eval.test_sets.{name}")
        for name in ev.max_new_tokens:
            if self.task(name, f"eval.max_new_tokens.{name}").kind != "generation":
                self.fail(f"eval.max_new_tokens.{name}", f"task '{name}' is not a generation task")
        for name in ev.shots if isinstance(ev.shots, dict) else {}:
            self.task(name, f"eval.shots.{name}")
            if name not in wanted:
                self.fail(f"eval.shots.{name}", f"task '{name}' is not evaluated (not in eval.test_sets)")
        return wanted

    def test_sets_of(self, name: str, sets: list[str] | str) -> list[str]:
        t = self.known[name]
        for j, fmt in enumerate(self.cfg.eval.prompt_formats):
            if fmt >= len(t.templates):
                self.fail(f"eval.prompt_formats.{j}", f"task '{name}' has {len(t.templates)} prompt formats")
        tf = self.files_of(t)
        if sets == "all":
            if tf is None:
                raise UserError(f"{self.source}: eval.test_sets: 'all' needs the data: give --data-dir (or data_dir:)")
            rank = {s: i for i, s in enumerate(t.in_domain)}  # in-domain sets first, in the task's order
            sets = sorted(tf.test, key=lambda s: (rank.get(s, len(rank)), s))
            if not sets:
                self.fail(f"eval.test_sets.{name}", f"no test set of task '{name}' in {tf.folder}")
        elif tf is not None:
            for j, s in enumerate(sets):
                if s not in tf.test:
                    known = ", ".join(sorted(tf.test))
                    self.fail(f"eval.test_sets.{name}.{j}", f"no test set '{s}' for task '{name}' (known: {known})")
        if len(set(sets)) != len(sets):
            self.fail(f"eval.test_sets.{name}", "duplicate test sets")
        return list(sets)

    def shots_of(self, t: TaskDef) -> list[int]:
        shots = self.cfg.eval.shots
        if isinstance(shots, dict):
            return list(shots.get(t.name, default_shots(t)))
        return list(shots or default_shots(t))

    def check_fticl_pools(self, train_sets: list[str]) -> None:
        """The fticl pool must exist beside a train set and hold k examples."""
        for i, m in enumerate(self.cfg.methods):
            for entry, train_set in zip(self.cfg.train, train_sets, strict=True):
                tf = self.files_of(self.known[entry.task])
                if m.name != "fticl" or tf is None:
                    continue
                k = fticl_k(m, self.known[entry.task])
                pool = tf.pools.get(train_set)
                if pool is None:
                    self.fail(f"methods.{i}", f"fticl needs the few-shot pool of '{train_set}' (none found)")
                if k > len(read_raw_records(pool)):
                    self.fail(f"methods.{i}.shots", f"k={k} but the pool of '{train_set}' has fewer examples")

    def check_eval_pools(self, resolved: Resolved) -> list[str]:
        """Shots must fit the pool of every test set; returns notes on sets evaluated 0-shot only."""
        notes = []
        ev_shots = self.cfg.eval.shots
        for name, sets in resolved.test_sets.items():
            ks = [k for k in resolved.shots[name] if k > 0]
            for s in sets if ks else []:
                size = resolved.pool_size(name, s)
                if size is None:
                    notes.append(f"{name}/{s} has no few-shot pool: only its 0-shot cells are run")
                elif max(ks) > size:
                    where = f"eval.shots.{name}" if isinstance(ev_shots, dict) and name in ev_shots else "eval.shots"
                    self.fail(where, f"{max(ks)} shots, but the pool of {name}/{s} has {size} examples")
        return notes
