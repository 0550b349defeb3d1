"""A study's plan: its training runs and evaluation cells, each keyed by exactly what determines its result.

    plan = load_plan("study.yaml", data_dir)      # read, validate, expand the grid
    plan.runs, plan.cells                         # RunSpec (a TrainConfig), CellSpec (an EvalParams)

Keys. A unit's identity is the result part of its config object (ftgen.config.result_part: every field not
marked a setting), the task definition, the content hashes of the data files it reads and RESULT_RULES; its key
is the hash of that identity. So a moved data directory keeps every key, an edited file changes the keys of
the units that read it, and batch sizes, threads or paths change none. A cell's identity holds its model's:
the run's key (retrained model, new cells) or `base:<model>`. An interpolated model (`interpolate` in the
study's methods: `InterpolationSpec`) is a run-like unit keyed by its trained run's key and α.

Slots. A unit's `slot` names its coordinates in the grid (ftgen.store.RUN_COORDS / CELL_COORDS); the store
holds one live row per slot. `check_changes` finds rows at a planned slot whose key differs: the config
changed for a unit that may already be done.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ftgen.auto_tokens import resolve_micro_batch_tokens
from ftgen.config import (
    RESULT_RULES,
    STUDY_OWNED_TRAIN_FIELDS,
    EvalParams,
    Method,
    StudyConfig,
    TrainConfig,
    parse_study,
    parse_train_config,
    result_part,
)
from ftgen.errors import UserError, parse_fields
from ftgen.files import read_yaml
from ftgen.store import CELL_COORDS, RUN_COORDS, Store, canonical_json
from ftgen.study_files import run_dir_name
from ftgen.tasks import TaskDef
from ftgen.validate import Resolved, resolve_paths, validate_study


def unit_key(identity: dict) -> str:
    return hashlib.sha256(canonical_json(identity).encode()).hexdigest()[:16]


def run_identity(config: TrainConfig, task: TaskDef, data: dict) -> dict:
    """What determines a training run's weights: its config's result fields, its task, its data files."""
    train = result_part(config)
    return {"unit": "train", "rules": RESULT_RULES, "train": train, "task_def": task.model_dump(), "data": data}


def cell_identity(model: str, params: EvalParams, task: TaskDef, data: dict) -> dict:
    """What determines a cell's score: the model's identity, the cell's result fields, its task, its data files."""
    cell = result_part(params)
    return {"unit": "eval", "rules": RESULT_RULES, "model": model, **cell, "task_def": task.model_dump(), "data": data}


class FileHashes:
    """sha256 of data files' content, each file read once per plan."""

    def __init__(self) -> None:
        self._seen: dict[Path, str] = {}

    def __call__(self, path: str | Path) -> str:
        p = Path(path).resolve()
        if p not in self._seen:
            self._seen[p] = hashlib.sha256(p.read_bytes()).hexdigest()[:16]
        return self._seen[p]


def _num(x: float) -> str:
    return f"{x:g}"


@dataclass
class RunSpec:
    """One training run of the grid: its coordinates (RUN_COORDS), its config and its identity."""

    key: str
    model: str
    train_task: str
    train_set: str
    size: int
    method: str
    lr: float
    epochs: float
    seed: int
    fticl_k: int
    lora_r: int
    config: TrainConfig
    identity: dict

    @property
    def slot(self) -> str:
        return (
            f"{self.model} | {self.train_task}/{self.train_set} n={self.size} | {self.method} | "
            f"lr={_num(self.lr)} ep={_num(self.epochs)} seed={self.seed}"
        )

    def row(self) -> dict:
        coords = {c: getattr(self, c) for c in RUN_COORDS}
        return {"key": self.key, "slot": self.slot, **coords, "config": canonical_json(self.identity)}

    @property
    def dir_name(self) -> str:
        """Its directory under OUT/runs/: `sentiment-amazon-n2000-fticl-lr2e-05-ep2-s0-1834dd` (store.run_dir_name)."""
        return run_dir_name({c: getattr(self, c) for c in RUN_COORDS}, self.key)

    @property
    def name(self) -> str:
        """The run in a log line: `sentiment n=32 fticl k=2 lr=0.0001 ep=2`."""
        extra = (f" k={self.fticl_k}" if self.fticl_k else "") + f" lr={_num(self.lr)} ep={_num(self.epochs)}"
        return f"{self.train_task} n={self.size} {self.method}" + extra + (f" seed={self.seed}" if self.seed else "")

    def describe(self) -> str:
        """`train sentiment/amazon n=32 fticl k=2 lr=0.0001 ep=2`."""
        return f"train {self.train_task}/{self.train_set} " + self.name.split(" ", 1)[1]


def interpolation_identity(of: RunSpec, alpha: float) -> dict:
    """What determines an interpolated model: the trained run's identity (through its key) and α."""
    return {"unit": "interpolate", "rules": RESULT_RULES, "of": of.key, "alpha": alpha}


@dataclass
class InterpolationSpec(RunSpec):
    """A run-like unit: θ(α) = (1 − α)·θ_base + α·θ_tuned of the trained run `of` (ftgen.analysis.interpolate).

    It has `of`'s coordinates with method `<of's method>@<α>` (`ft@0.5`: `@` is never in a method label), a row in
    the runs table, a directory under runs/ and cells of its own, keyed by `of`'s key and α."""

    of: RunSpec | None = None
    alpha: float = 1.0

    @property
    def name(self) -> str:
        return f"{self.of.name} α={_num(self.alpha)}"

    def describe(self) -> str:
        return f"interpolate {self.of.train_task}/{self.of.train_set} " + self.name.split(" ", 1)[1]


def _interpolation_specs(cfg: StudyConfig, runs: list[RunSpec]) -> list[InterpolationSpec]:
    """One unit per trained run of each `interpolate` method's `of`, per α."""
    specs = []
    for interp in cfg.interpolations:
        for run in (r for r in runs if r.method == interp.of):
            for alpha in interp.alphas or []:
                identity = interpolation_identity(run, alpha)
                coords = {c: getattr(run, c) for c in RUN_COORDS} | {"method": f"{run.method}@{_num(alpha)}"}
                extra = {"fticl_k": run.fticl_k, "lora_r": run.lora_r, "config": run.config, "identity": identity}
                specs.append(InterpolationSpec(key=unit_key(identity), **coords, **extra, of=run, alpha=alpha))
    return specs


@dataclass
class CellSpec:
    """One evaluation cell: a model (base or trained) on one test set, shots and prompt format."""

    key: str
    model: str  # the base model's name
    run: RunSpec | None  # None = the base model itself
    params: EvalParams
    identity: dict

    test_task = property(lambda self: self.params.task)
    test_set = property(lambda self: self.params.test_set)
    shots = property(lambda self: self.params.shots)
    fmt = property(lambda self: self.params.fmt)

    @property
    def slot(self) -> str:
        model_slot = self.run.slot if self.run else f"{self.model} | base"
        return f"{model_slot} || {self.test_task}/{self.test_set} | {self.shots}-shot | fmt {self.fmt}"

    def row(self) -> dict:
        r = self.run
        coords = {c: getattr(r, c) for c in RUN_COORDS} if r else dict.fromkeys(RUN_COORDS)
        if r is None:
            coords |= {"model": self.model, "method": "base"}
        coords |= {c: getattr(self, c) for c in CELL_COORDS}
        key = {"key": self.key, "slot": self.slot, "run_key": r.key if r else None}
        return {**key, **coords, "config": canonical_json(self.identity)}

    def describe(self) -> str:
        who = self.run.name if self.run else f"{self.model} base"
        return f"eval [{who}] on {self.test_task}/{self.test_set} {self.shots}-shot fmt {self.fmt}"


@dataclass
class Plan:
    resolved: Resolved
    runs: list[RunSpec]
    cells: list[CellSpec]
    notes: list[str] = field(default_factory=list)

    @property
    def cfg(self) -> StudyConfig:
        return self.resolved.cfg

    def interpolations_of(self, run_key: str) -> list[InterpolationSpec]:
        """The interpolated models built from the trained run `run_key`."""
        return [r for r in self.runs if isinstance(r, InterpolationSpec) and r.of.key == run_key]

    def cells_of(self, run_key: str | None, model: str | None = None) -> list[CellSpec]:
        return [
            c for c in self.cells if (c.run.key if c.run else None) == run_key and (model is None or c.model == model)
        ]


# ---------------------------------------------------------------- the grid


def train_file(resolved: Resolved, task: str, train_set: str, size: int) -> Path:
    """The file load_train_set reads for this size: exactly that size, else the smallest larger one."""
    if "/" in train_set or train_set.endswith((".json", ".jsonl", ".csv")):
        return Path(train_set)
    by_size = resolved.files[task].train[train_set]
    fitting = [s for s in sorted(by_size) if s >= size]
    return by_size[fitting[0] if fitting else max(by_size)]


def _run_spec(resolved: Resolved, i: int, method: Method, grid: tuple, hashes: FileHashes) -> RunSpec:
    """One training run: its TrainConfig (validated as the trainer will) and its identity."""
    model, size, lr, epochs, seed = grid
    cfg = resolved.cfg
    task = resolved.tasks[cfg.train[i].task]
    train_set = resolved.train_sets[i]
    k = resolved.fticl_k(method, task.name)
    fields = cfg.train_args | {
        "model": model,
        "task": task.name,
        "train_set": train_set,
        "train_size": size,
        "lr": lr,
        "epochs": epochs,
        "seed": seed,
        "fticl_shots": k,
        "lora_r": method.lora_r or None,
        "data_dir": str(resolved.data_dir),
        "task_dirs": cfg.task_dirs,
    }
    if method.lora_alpha is not None:
        fields["lora_alpha"] = method.lora_alpha
    # an error names the study's field (train_args.X, hyper.lr, methods.N.lora_r, ...), not TrainConfig's
    m = cfg.methods.index(method)
    where = {f: f"train_args.{f}" for f in cfg.train_args} | {
        f: p.replace("train.N", f"train.{i}").replace("methods.N", f"methods.{m}")
        for f, p in STUDY_OWNED_TRAIN_FIELDS.items()
    }
    tc = parse_train_config(fields, f"{cfg.name}: training run (train.{i}, method {method.display})", where)
    tc = resolve_micro_batch_tokens(tc, strict=False)  # "auto" -> this machine's number, before the key
    files = resolved.files[task.name]
    data = {
        "train": hashes(train_file(resolved, task.name, train_set, size)),
        "pool": hashes(files.pools[tc.fticl_pool or train_set]) if k else None,
    }
    identity = run_identity(tc, task, data)
    coords = (model, task.name, train_set, size, method.display, lr, epochs, seed)
    spec = RunSpec(unit_key(identity), *coords, k, method.lora_r, tc, identity)
    spec.config = tc.model_copy(update={"run_name": spec.dir_name})  # a setting: the key stays as it is
    return spec


def eval_params(resolved: Resolved, task: TaskDef, test_set: str, shots: int, fmt: int) -> EvalParams:
    """A cell's parameters, every default and per-kind rule resolved here, once (the key and the worker read them)."""
    cfg = resolved.cfg
    ev = cfg.eval
    classify = task.kind == "classification"
    values = {
        "task": task.name,
        "test_set": test_set,
        "shots": shots,
        "fmt": fmt,
        "scoring": ev.scoring if classify else None,
        "max_new_tokens": None if classify else ev.max_new_tokens.get(task.name, task.max_new_tokens),
        "max_length": ev.max_length,
        "dtype": ev.dtype,
        "limit": ev.limit,
        "skip_invalid": ev.skip_invalid,
        "batch_size": ev.batch_size if classify else ev.generation_batch_size or ev.batch_size,
        "threads": cfg.threads,
    }
    return parse_fields(EvalParams, values, f"{cfg.name}: cell {task.name}/{test_set}", "an evaluation cell")


def _cells_for(resolved: Resolved, model: str, run: RunSpec | None, hashes: FileHashes) -> list[CellSpec]:
    """Every cell of one model (the base model, or the model a run trains)."""
    model_id = run.key if run else f"base:{model}"
    cells = []
    for tname, sets in resolved.test_sets.items():
        task = resolved.tasks[tname]
        for s in sets:
            test_file = resolved.files[tname].test[s]
            pool_file = resolved.files[tname].pools.get(s)
            for k in resolved.shots[tname]:
                if k and pool_file is None:
                    continue  # no few-shot pool: 0-shot only (noted at validation)
                for fmt in resolved.cfg.eval.prompt_formats:
                    params = eval_params(resolved, task, s, k, fmt)
                    data = {"test": hashes(test_file), "pool": hashes(pool_file) if k else None}
                    identity = cell_identity(model_id, params, task, data)
                    cells.append(CellSpec(unit_key(identity), model, run, params, identity))
    return cells


def build_plan(resolved: Resolved) -> Plan:
    """Expand the config into training runs and evaluation cells (needs the data dir for file hashes)."""
    cfg = resolved.cfg
    if resolved.data_dir is None:
        raise UserError("a study needs the data: give --data-dir (or data_dir: in the config)")
    hashes = FileHashes()
    h = cfg.hyper
    runs = [
        _run_spec(resolved, i, method, (model, size, lr, epochs, seed), hashes)
        for model in cfg.models
        for i, entry in enumerate(cfg.train)
        for size, method, lr, epochs, seed in itertools.product(entry.sizes, cfg.train_methods, h.lr, h.epochs, h.seeds)
    ]
    runs += _interpolation_specs(cfg, runs)  # after the runs they are built from (the driver's order)
    assert len({r.slot for r in runs}) == len(runs), "two training runs share a slot"
    assert len({r.dir_name for r in runs}) == len(runs), "two training runs share a directory name"
    twins = [(a, b) for a, b in itertools.combinations(runs, 2) if a.key == b.key]
    if twins:
        a, b = twins[0]
        raise UserError(f"{cfg.name}: field 'methods': methods {a.method} and {b.method} train the same model")
    cells: list[CellSpec] = []
    for model in cfg.models if cfg.eval.base else []:
        cells += _cells_for(resolved, model, None, hashes)
    for run in runs:
        cells += _cells_for(resolved, run.model, run, hashes)
    return Plan(resolved, runs, cells, list(resolved.notes))


def load_study(path: str | Path) -> StudyConfig:
    return parse_study(read_yaml(path), str(path))


def load_plan(
    config_path: str | Path,
    data_dir: str | Path | None = None,
    *,
    limit: int | None = None,
    executor: str | None = None,
    allow_random: bool = False,
) -> Plan:
    """Read, override (--limit, --executor), validate and expand a study config. `allow_random`: accept
    `random:CONFIG` models (a dry run: no result is stored)."""
    cfg = load_study(config_path)
    overrides: dict = {}
    if limit is not None:
        overrides["eval"] = cfg.eval.model_dump() | {"limit": limit}
    if executor is not None:
        overrides["executor"] = executor
    if overrides:  # validated like the file's own values
        cfg = parse_study(cfg.model_dump() | overrides, f"{config_path} (with command-line options)")
    cfg, data = resolve_paths(cfg, data_dir, config_path)
    return build_plan(validate_study(cfg, data, str(config_path), allow_random=allow_random))


# ---------------------------------------------------------------- changed configs


def _flatten(obj: object, prefix: str = "") -> dict[str, object]:
    if isinstance(obj, dict):
        out: dict[str, object] = {}
        for k, v in obj.items():
            out |= _flatten(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    return {prefix: obj}


def config_diff(old: dict, new: dict) -> list[str]:
    """`field: old -> new` for each leaf of two identities that differs (task definitions summarised)."""
    a, b = _flatten(old), _flatten(new)
    diffs = []
    for k in sorted(set(a) | set(b)):
        if a.get(k) != b.get(k):
            if k.startswith("task_def."):
                k = "task_def (the task's YAML definition)"
                if any(d.startswith(k) for d in diffs):
                    continue
                diffs.append(k)
            elif k != "model":  # a cell's model key changes with its run: reported at the run
                diffs.append(f"{k}: {a.get(k)!r} -> {b.get(k)!r}")
    return diffs


def check_changes(store: Store, plan: Plan, *, rerun_changed: bool = False) -> list[str]:
    """Rows of the store at a planned slot but with another key.

    Not finished: superseded silently (nothing to lose). Finished: a UserError naming the changed
    fields, unless `rerun_changed` (then the old results are kept, marked `superseded`, and recomputed).
    """
    report: list[str] = []
    for table, specs in (("runs", plan.runs), ("cells", plan.cells)):
        live = store.live_by_slot(table)
        stale_open, changed_done = [], []
        diffs: Counter = Counter()
        for spec in specs:
            row = live.get(spec.slot)
            if row is None or row["key"] == spec.key:
                continue
            if row["status"] == "done":
                changed_done.append(row["key"])
                diffs.update(config_diff(_stored_identity(row), spec.identity))
            else:
                stale_open.append(row["key"])
        store.supersede(table, stale_open)
        if changed_done:
            what = "training runs" if table == "runs" else "evaluation cells"
            shown = "; ".join(d for d, _ in diffs.most_common(6)) or "the model they evaluate was retrained"
            report.append(f"{len(changed_done)} finished {what} ({shown})")
            if rerun_changed:
                store.supersede(table, changed_done)
    if report and not rerun_changed:
        raise UserError(
            f"{store.out_dir}: the config changed for results already computed there: {' | '.join(report)}. "
            "Rerun with --rerun-changed to recompute them (old results are kept, marked superseded), or use "
            "another --out"
        )
    return report


def _stored_identity(row: dict) -> dict:
    try:
        return json.loads(row["config"])
    except (TypeError, ValueError):  # a damaged row: every field shows as changed
        return {}


# ---------------------------------------------------------------- a subset: `ftgen study --only TASK`


def check_only(plan: Plan, only: list[str]) -> None:
    """Every name given to --only is a train task or an evaluated task of the study."""
    train = list(dict.fromkeys(r.train_task for r in plan.runs))
    tested = list(plan.resolved.test_sets)
    for name in only:
        if name not in train and name not in tested:
            raise UserError(
                f"--only: '{name}' is neither a train task ({', '.join(train) or 'none'}) nor a test task "
                f"({', '.join(tested)}) of study {plan.cfg.name}"
            )


def select_units(plan: Plan, only: list[str], trained: set[str] = frozenset()) -> set[str]:
    """Keys of the units `ftgen study --only TASK...` runs; the others stay pending for a later run.

    - the training runs on TASK, and every cell of them (all test sets: ID, OOD, cross-task);
    - the cells on TASK's test sets of every model that exists: the base model, and runs already trained
      (a run not on TASK is never trained, and a run whose model was deleted is left for later);
    - the base model's cells that the selected cells need for their deltas.

    `trained`: keys of the runs done whose model is there (Store.trained_runs).
    """
    check_only(plan, only)
    wanted = set(only)
    runs = {r.key for r in plan.runs if r.train_task in wanted}
    have_model = set(trained)
    cells = {
        c.key
        for c in plan.cells
        if c.run is not None and (c.run.key in runs or (c.test_task in wanted and c.run.key in have_model))
    }
    tuned = {(c.model, c.test_task, c.test_set, c.shots, c.fmt) for c in plan.cells if c.key in cells}
    cells |= {
        c.key
        for c in plan.cells
        if c.run is None and (c.test_task in wanted or (c.model, c.test_task, c.test_set, c.shots, c.fmt) in tuned)
    }
    return runs | cells
