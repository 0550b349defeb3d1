"""One definition of what determines a unit's result (ftgen.config: every field not declared a `setting`) drives
the unit's key, the job a worker gets, the store row, the trainer's resume check and change detection. These
tests fail if any of them is computed another way."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ftgen import plan as plan_module
from ftgen.config import EvalParams, TrainConfig, parse_study, result_fields, result_part
from ftgen.driver import Driver
from ftgen.errors import UserError
from ftgen.plan import build_plan, cell_identity, check_changes, run_identity, unit_key
from ftgen.report import Row
from ftgen.store import CELL_COLUMNS, CELL_COORDS, RUN_COLUMNS, RUN_COORDS, Store, canonical_json
from ftgen.tasks import load_task
from ftgen.train import check_resume
from ftgen.units import EvalJob, TrainJob
from ftgen.validate import validate_study

TASK = load_task("sentiment")
DATA = {"train": "0123456789abcdef", "pool": None}

# A different, valid value for every TrainConfig field (a new field must be added here: it needs a decision).
TRAIN_FLIPS = {
    "model": "other-model",
    "task": "question",
    "train_set": "amazonfood",
    "train_size": 9,
    "sample_seed": 3,
    "allow_smaller": True,
    "skip_invalid": True,
    "data_dir": "/elsewhere/paper-data",
    "task_dirs": ["/elsewhere/tasks"],
    "epochs": 3.0,
    "max_steps": 5,
    "lr": 1e-3,
    "lr_schedule": "cosine",
    "warmup_ratio": 0.1,
    "weight_decay": 0.1,
    "max_grad_norm": 2.0,
    "batch_size": 8,
    "micro_batch_size": 2,
    "micro_batch_tokens": 1000,
    "max_length": 512,
    "prompt_format": 1,
    "group_by_length": False,
    "fticl_shots": 2,
    "fticl_pool": "sst2",
    "lora_r": 8,
    "lora_alpha": 4.0,
    "lora_dropout": 0.1,
    "lora_targets": ["q_proj"],
    "qlora": True,
    "gradient_checkpointing": True,
    "seed": 1,
    "dtype": "fp32",
    "save_every": 5,
    "keep_checkpoints": 2,
    "clean_checkpoints": False,
    "log_every": 5,
    "eval_loss": True,
    "report_to": ["tensorboard"],
    "run_name": "another-name",
}
TRAIN_SETTINGS = {"data_dir", "task_dirs", "save_every", "keep_checkpoints", "clean_checkpoints", "log_every"}
TRAIN_SETTINGS |= {"eval_loss", "report_to", "run_name"}

EVAL_BASE = dict(task="sentiment", test_set="sst2", shots=0, fmt=0, scoring="sum", max_new_tokens=None)
EVAL_BASE |= dict(max_length=None, dtype="auto", limit=8, skip_invalid=True, batch_size=16, threads=None)
EVAL_FLIPS = {
    "task": "inference",
    "test_set": "yelp",
    "shots": 3,
    "fmt": 1,
    "scoring": "first-token",
    "max_new_tokens": 5,
    "max_length": 100,
    "dtype": "fp32",
    "limit": 3,
    "skip_invalid": False,
    "batch_size": "auto",
    "threads": 2,
}


def test_every_field_is_a_result_field_or_a_declared_setting():
    assert set(TRAIN_FLIPS) == set(TrainConfig.model_fields), "give each new TrainConfig field a flip value"
    assert set(TrainConfig.model_fields) - set(result_fields(TrainConfig)) == TRAIN_SETTINGS
    assert set(EVAL_FLIPS) == set(EvalParams.model_fields)
    assert set(EvalParams.model_fields) - set(result_fields(EvalParams)) == {"batch_size", "threads"}


def _train_key(cfg: TrainConfig) -> str:
    return unit_key(run_identity(cfg, TASK, DATA))


@pytest.mark.parametrize("name", sorted(TRAIN_FLIPS))
def test_the_run_key_and_the_resume_check_agree_field_by_field(name, tmp_path):
    """Flipping a result field changes the key and the trainer refuses to resume; a setting does neither."""
    base = TrainConfig(task="sentiment", lora_r=4)
    flipped = TrainConfig(**(base.model_dump() | {name: TRAIN_FLIPS[name]}))
    assert getattr(flipped, name) != getattr(base, name)
    key_changes = _train_key(flipped) != _train_key(base)
    try:
        check_resume(base.model_dump(), flipped, tmp_path / "trainer_state.json")
        refused = False
    except UserError as e:
        refused = True
        assert f"{name}: " in str(e)
    assert key_changes == refused == (name not in TRAIN_SETTINGS)


@pytest.mark.parametrize("name", sorted(EVAL_FLIPS))
def test_the_cell_key_follows_the_marking_field_by_field(name):
    base = EvalParams(**EVAL_BASE)
    flipped = EvalParams(**(EVAL_BASE | {name: EVAL_FLIPS[name]}))
    changed = unit_key(cell_identity("base:default", flipped, TASK, DATA)) != unit_key(
        cell_identity("base:default", base, TASK, DATA)
    )
    assert changed == (name in result_fields(EvalParams))


def test_a_unit_key_holds_its_task_definition_its_data_and_its_model():
    """Beyond the config's result fields: the task's YAML definition, the content hashes of the data files and
    (for a cell) the model it evaluates are part of every key."""
    cfg, params = TrainConfig(task="sentiment"), EvalParams(**EVAL_BASE)
    edited = TASK.model_copy(update={"templates": ["### Review:\n{input}\n### Sentiment:", *TASK.templates[1:]]})
    run = unit_key(run_identity(cfg, TASK, DATA))
    assert unit_key(run_identity(cfg, edited, DATA)) != run
    assert unit_key(run_identity(cfg, TASK, DATA | {"train": "fedcba9876543210"})) != run
    assert unit_key(run_identity(cfg, TASK, DATA | {"pool": "0000000000000000"})) != run
    assert unit_key(run_identity(TrainConfig(task="sentiment"), TASK, dict(DATA))) == run  # equal inputs, equal key
    cell = unit_key(cell_identity("base:default", params, TASK, DATA))
    assert unit_key(cell_identity("base:default", params, edited, DATA)) != cell
    assert unit_key(cell_identity("base:default", params, TASK, DATA | {"train": "fedcba9876543210"})) != cell
    assert unit_key(cell_identity("0123456789abcdef", params, TASK, DATA)) != cell  # a trained model, not the base


def test_result_rules_go_into_every_identity(paper_data, monkeypatch):
    plan = _plan(paper_data, TINY)
    monkeypatch.setattr(plan_module, "RESULT_RULES", plan_module.RESULT_RULES + 1)
    bumped = _plan(paper_data, TINY)
    assert not {u.key for u in [*plan.runs, *plan.cells]} & {u.key for u in [*bumped.runs, *bumped.cells]}


TINY = {
    "name": "tiny",
    "train": [{"task": "sentiment", "sizes": [8]}],
    "methods": [{"name": "ft"}, {"name": "fticl", "shots": 2, "lora_r": 8}],
    "hyper": {"lr": [1e-4], "epochs": [1], "seeds": [0]},
    "train_args": {"batch_size": 4, "max_length": 256},
    "eval": {
        "test_sets": {"sentiment": ["sst2"], "question": ["socialqa"]},
        "shots": {"sentiment": [0, 2], "question": [0]},
        "limit": 8,
        "max_new_tokens": {"question": 16},
    },
}


def _plan(paper_data: Path, data: dict):
    return build_plan(validate_study(parse_study(data, "s.yaml"), paper_data, "s.yaml"))


def test_cells_are_resolved_at_plan_time(paper_data):
    """scoring for classification only, max_new_tokens for generation only (the study's override, else the
    task's), the generation batch size for generation cells: one rule, in EvalParams."""
    data = json.loads(json.dumps(TINY))
    data["eval"] |= {"scoring": "first-token", "batch_size": 4, "generation_batch_size": 32}
    plan = _plan(paper_data, data)
    for cell in plan.cells:
        p = cell.params
        if p.task == "sentiment":
            assert (p.scoring, p.max_new_tokens, p.batch_size) == ("first-token", None, 4)
        else:
            assert (p.scoring, p.max_new_tokens, p.batch_size) == (None, 16, 32)
        assert cell.identity == cell_identity(
            cell.identity["model"], p, plan.resolved.tasks[p.task], cell.identity["data"]
        )
    del data["eval"]["max_new_tokens"]
    assert {c.params.max_new_tokens for c in _plan(paper_data, data).cells if c.params.task == "question"} == {
        load_task("question").max_new_tokens
    }


class RecordingExecutor:
    """A stand-in executor: keeps the jobs it is given, runs nothing."""

    def __init__(self) -> None:
        self.jobs: list[tuple[str, object]] = []

    def submit(self, kind: str, job) -> int:
        self.jobs.append((kind, job))
        return len(self.jobs)

    def pending(self) -> int:
        return 0


def test_the_job_is_the_object_the_key_was_hashed_from(paper_data, tmp_path):
    plan = _plan(paper_data, TINY)
    with Store.open_writer(tmp_path) as store:
        store.add([r.row() for r in plan.runs], [c.row() for c in plan.cells])
        ex = RecordingExecutor()
        Driver(plan, store, ex).run()
    by_key = {u.key: u for u in [*plan.runs, *plan.cells]}
    kinds = {kind for kind, _ in ex.jobs}
    assert kinds == {"train", "eval"}  # the base cells and the training runs
    for kind, job in ex.jobs:
        spec = by_key[job.key]
        if kind == "train":
            assert isinstance(job, TrainJob) and job.config is spec.config
            assert (
                unit_key(run_identity(job.config, plan.resolved.tasks[spec.train_task], spec.identity["data"]))
                == job.key
            )
            assert job.config.data_dir == str(paper_data)  # where it runs; not in the key
        else:
            assert isinstance(job, EvalJob) and job.params is spec.params
            task = plan.resolved.tasks[job.params.task]
            assert unit_key(cell_identity(spec.identity["model"], job.params, task, spec.identity["data"])) == job.key


def test_rows_use_the_one_tuple_of_coordinates(paper_data, tmp_path):
    plan = _plan(paper_data, TINY)
    assert all(tuple(r.row()) == RUN_COLUMNS for r in plan.runs)
    assert all(tuple(c.row()) == CELL_COLUMNS for c in plan.cells)
    assert {f for f in Row.__dataclass_fields__} == {"run_key", *RUN_COORDS}
    with Store.open_writer(tmp_path) as store:
        columns = {t: [r[1] for r in store.conn.execute(f"PRAGMA table_info({t})")] for t in ("runs", "cells")}
        store.add([r.row() for r in plan.runs], [c.row() for c in plan.cells])
        stored = store.rows("cells")
    assert set(RUN_COORDS) <= set(columns["runs"]) and set(RUN_COORDS + CELL_COORDS) <= set(columns["cells"])
    # a cell's own coordinates are result fields of its EvalParams: two coordinates never share a key
    for cell, row in zip(plan.cells, stored, strict=True):
        assert json.loads(row["config"]) == cell.identity and row["config"] == canonical_json(cell.identity)
        assert [row[c] for c in CELL_COORDS] == [
            result_part(cell.params)[f] for f in ("task", "test_set", "shots", "fmt")
        ]


def _mark_all_done(store: Store) -> None:
    with store.transaction() as c:
        c.execute("UPDATE runs SET status='done'")
        c.execute("UPDATE cells SET status='done'")


@pytest.mark.parametrize(
    "change, refused",
    [
        ({"train_args": {"batch_size": 4, "max_length": 256, "save_every": 1, "log_every": 3}}, False),
        ({"train_args": {"batch_size": 4, "max_length": 256, "eval_loss": True, "keep_checkpoints": 3}}, False),
        ({"threads": 2}, False),
        ({"eval": TINY["eval"] | {"batch_size": 3, "generation_batch_size": 5}}, False),
        ({"train_args": {"batch_size": 4, "max_length": 200}}, True),
        ({"eval": TINY["eval"] | {"scoring": "mean"}}, True),
        ({"eval": TINY["eval"] | {"dtype": "fp32"}}, True),
    ],
)
def test_change_detection_follows_the_marking(paper_data, tmp_path, change, refused):
    """--rerun-changed is needed exactly when a result field changed for a finished unit."""
    plan = _plan(paper_data, TINY)
    with Store.open_writer(tmp_path) as store:
        store.add([r.row() for r in plan.runs], [c.row() for c in plan.cells])
        _mark_all_done(store)
        new = _plan(paper_data, TINY | change)
        if refused:
            with pytest.raises(UserError, match="--rerun-changed"):
                check_changes(store, new)
        else:
            assert check_changes(store, new) == []
            assert [u.key for u in [*new.runs, *new.cells]] == [u.key for u in [*plan.runs, *plan.cells]]
