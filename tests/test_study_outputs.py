"""What a study leaves for people: readable run directories (and studies from before them), `--only` subsets,
`keep_models: false`, and `ftgen export` checked against its JSON Schema. The driver runs for real on the paper
data; the units are stand-ins that write a model file and score the real test records (fast)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
import sqlite3
from pathlib import Path

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_study import TINY, FakeUnits, _write_config

from ftgen import metrics as M
from ftgen.errors import UserError
from ftgen.export import schema
from ftgen.plan import load_plan, select_units
from ftgen.store import Store
from ftgen.study import run_study
from ftgen.study_files import run_dir_name
from helpers import assert_user_error, run_cli

SAFE_NAME = re.compile(r"^[A-Za-z0-9_+-][A-Za-z0-9._+-]*$")


class ScoringUnits(FakeUnits):
    """FakeUnits whose cells score the real test records: predictions shaped as ftgen.evaluate makes them."""

    def eval(self, job) -> dict:
        from ftgen.data import load_test_set
        from ftgen.tasks import load_task

        self.calls.append(f"eval {job.key} on {job.model_path}")
        if job.key in self.fail or self.fail_all:
            raise RuntimeError("boom")
        p = job.params
        task = load_task(p.task)
        ds = load_test_set(job.data_dir, task, p.test_set, limit=p.limit, skip_invalid=p.skip_invalid)
        preds = []
        for i, r in enumerate(ds.records):
            base = {"id": r["id"], "prompt_hash": hashlib.sha256(str(r).encode()).hexdigest()[:16], "gold": r["output"]}
            if task.kind == "classification":
                guess = task.labels[i % len(task.labels)]
                scores = {lab: -1.0 - (lab != guess) for lab in task.labels}
                preds.append(base | {"prediction": guess, "scores": scores, "logprobs": scores, "truncated": False})
            else:
                text = " ".join(r["output"].split()[: 1 + i % 4]) + "\n\nrambling on"
                preds.append(base | {"prediction": M.first_paragraph(text), "generated": text, "truncated": False})
        golds = [x["gold"] for x in preds]
        if task.kind == "classification":
            m = M.classification_metrics([x["prediction"] for x in preds], golds, task.labels)
            score = m["accuracy"]
        else:
            m = M.generation_metrics([x["generated"] for x in preds], golds)
            score = m[task.metric]
        metrics = {**m, "metric": task.metric, "score": score, "n": len(preds)}
        return {"metrics": metrics, "predictions": preds, "seconds": 0.1}


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    """A cache of the test's own: stand-in units must never calibrate the machine's estimates."""
    monkeypatch.setenv("FTGEN_CACHE", str(tmp_path / "cache"))


# ---------------------------------------------------------------- readable run directories


coords = st.fixed_dictionaries(
    {
        "model": st.text(min_size=1, max_size=40),
        "train_task": st.from_regex(r"[A-Za-z0-9_-]{1,20}", fullmatch=True),
        "train_set": st.text(min_size=1, max_size=60),
        "size": st.integers(1, 10**9),
        "method": st.from_regex(r"[A-Za-z0-9_.+-]{1,30}", fullmatch=True),
        "lr": st.floats(1e-9, 10, allow_nan=False),
        "epochs": st.floats(0.01, 1e4, allow_nan=False),
        "seed": st.integers(0, 2**32 - 1),
    }
)
keys = st.text(alphabet="0123456789abcdef", min_size=16, max_size=16)


@settings(max_examples=300, deadline=None)
@given(coords, keys, keys)
def test_run_dir_names_are_safe_readable_and_keyed(c, key, other):
    name = run_dir_name(c, key)
    assert SAFE_NAME.match(name) and len(name.encode()) <= 200, name
    assert name.endswith("-" + key[:6]) and name == run_dir_name(dict(c), key)  # a pure function of the row
    assert f"-n{c['size']}-" in name and f"-s{c['seed']}-" in name
    if key[:6] != other[:6]:
        assert run_dir_name(c, other) != name


def test_the_paper_grid_names_every_run_for_people(paper_data):
    plan = load_plan(Path(__file__).parents[1] / "configs" / "paper.yaml", paper_data)
    names = [r.dir_name for r in plan.runs]
    assert len(set(names)) == len(names) == 39
    assert "Llama-2-7b-hf-sentiment-amazon-n2000-fticl-k1-lr2e-05-ep2-s0-" in " ".join(names)
    run = plan.runs[0]
    assert run.dir_name == f"Llama-2-7b-hf-summary-xsum-n2000-ft-lr2e-05-ep2-s0-{run.key[:6]}"
    assert run.config.run_name == run.dir_name  # loss.png's title and the trackers' run name


def _drop_column(out: Path, table: str, column: str) -> None:
    conn = sqlite3.connect(out / "results.sqlite")
    conn.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
    conn.commit()
    conn.close()


@pytest.mark.usefixtures("own_cache")
def test_a_study_from_before_readable_names_is_read_then_renamed(paper_data, tmp_path):
    """An old study: run dirs named by key, model_dir 'runs/<key>/model', no model_deleted column. Readers find
    its runs; the next `ftgen study` renames the dirs (no retraining) and records the new paths."""
    cfg, out = _write_config(tmp_path, TINY), tmp_path / "out"
    run_study(cfg, out, data_dir=paper_data, units=ScoringUnits())
    plan = load_plan(cfg, paper_data)
    for run in plan.runs:  # make it look as the old code left it
        os.replace(out / "runs" / run.dir_name, out / "runs" / run.key)
    conn = sqlite3.connect(out / "results.sqlite")
    conn.execute("UPDATE runs SET model_dir = 'runs/' || key || '/model'")
    conn.commit()
    conn.close()
    _drop_column(out, "runs", "model_deleted")
    check = run_cli("status", str(out), "--check")
    assert check.returncode == 0 and "check: ok (store integrity, 2 saved models" in check.stdout, check.stdout
    assert all(run.key in check.stdout for run in plan.runs)  # the table names each run by the dir it is in

    units = ScoringUnits()
    s = run_study(cfg, out, data_dir=paper_data, units=units)
    assert units.calls == [] and s["runs"]["done"] == 2
    assert sorted(p.name for p in (out / "runs").iterdir()) == sorted(r.dir_name for r in plan.runs)
    with Store.open_reader(out) as store:
        assert {r["model_dir"] for r in store.rows("runs")} == {f"runs/{r.dir_name}/model" for r in plan.runs}
    check = run_cli("status", str(out), "--check")
    assert check.returncode == 0 and all(run.dir_name in check.stdout for run in plan.runs), check.stdout


# ---------------------------------------------------------------- --only


@pytest.mark.usefixtures("own_cache")
def test_only_runs_a_subset_and_leaves_the_rest_pending(paper_data, tmp_path):
    cfg, out = _write_config(tmp_path, TINY), tmp_path / "out"
    plan = load_plan(cfg, paper_data)
    base_detection = {c.key for c in plan.cells if c.run is None and c.test_task == "detection"}
    assert select_units(plan, ["detection"]) == base_detection  # no run is trained for a test task
    with pytest.raises(UserError, match="'question' is neither a train task"):
        select_units(plan, ["question"])

    units = ScoringUnits()
    s = run_study(cfg, out, data_dir=paper_data, units=units, only=["detection"])
    assert (s["runs"]["done"], s["cells"]["done"], s["not_selected"]) == (0, 1, 2 + 14)
    assert [c.split()[0] for c in units.calls] == ["eval"]
    # trained now: the sentiment runs and all their cells, and the base cells their deltas need
    units = ScoringUnits()
    s = run_study(cfg, out, data_dir=paper_data, units=units, only=["sentiment"])
    assert (s["runs"]["done"], s["cells"]["done"], s["not_selected"]) == (2, 15, 0)
    assert sum(c.startswith("train") for c in units.calls) == 2 and len(units.calls) == 2 + 14
    # a test task once its runs exist: their cells on it (none left here), nothing trained again
    assert run_study(cfg, out, data_dir=paper_data, units=ScoringUnits(), only=["detection"])["did"] == {}

    bad = run_cli("study", str(cfg), "--data-dir", str(paper_data), "--out", str(tmp_path / "x"), "--only", "nope")
    assert_user_error(bad, "--only: 'nope' is neither a train task (sentiment) nor a test task")
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------- keep_models: false


def _models(out: Path) -> list[str]:
    return sorted(p.parent.name for p in out.glob("runs/*/model"))


@pytest.mark.usefixtures("own_cache")
def test_keep_models_false_deletes_each_model_once_its_cells_are_done(paper_data, tmp_path):
    data = {**TINY, "keep_models": False}
    cfg, out = _write_config(tmp_path, data), tmp_path / "out"
    plan = load_plan(cfg, paper_data)
    first = plan.cells_of(plan.runs[0].key)[0].key
    s = run_study(cfg, out, data_dir=paper_data, units=ScoringUnits(fail={first}))  # one cell fails: model kept
    assert s["cells"]["failed"] == 1 and _models(out) == [plan.runs[0].dir_name]
    run_study(cfg, out, data_dir=paper_data, units=ScoringUnits())  # the retry needs no training
    assert _models(out) == [] and all((out / "runs" / r.dir_name).is_dir() for r in plan.runs)
    check = run_cli("status", str(out), "--check")
    assert check.returncode == 0 and "2 trained models deleted once their cells were done" in check.stdout
    assert "done, model deleted" in run_cli("status", str(out)).stdout

    # a later plan needs the models again (a new test set): trained again, only the new cells evaluated
    more = json.loads(json.dumps(data))
    more["eval"]["test_sets"]["inference"] = ["multinli"]
    more["eval"]["shots"]["inference"] = [0]
    cfg = _write_config(tmp_path, more)
    units = ScoringUnits()
    s = run_study(cfg, out, data_dir=paper_data, units=units)
    assert sorted(c.split()[0] for c in units.calls) == ["eval"] * 3 + ["train"] * 2
    assert s["cells"]["done"] == 18 and _models(out) == []
    assert run_cli("status", str(out), "--check").returncode == 0

    # killed after marking a model deleted but before deleting it: the next start deletes it, check is ok meanwhile
    run = load_plan(cfg, paper_data).runs[0]
    (out / "runs" / run.dir_name / "model").mkdir()
    (out / "runs" / run.dir_name / "model" / "weights.bin").write_bytes(b"x")
    assert run_cli("status", str(out), "--check").returncode == 0
    assert run_study(cfg, out, data_dir=paper_data, units=ScoringUnits())["did"] == {} and _models(out) == []


# ---------------------------------------------------------------- export


EXPORT_STUDY = {
    **TINY,
    "eval": {
        **TINY["eval"],
        "test_sets": {"sentiment": ["amazon"], "question": ["socialqa"]},
        "shots": {"sentiment": [0], "question": [0]},
    },
}


def _validate_export(folder: Path) -> dict:
    results = json.loads((folder / "results.json").read_text())
    jsonschema.validate(results, schema(), format_checker=jsonschema.FormatChecker())
    line_schema = {**schema()["$defs"]["prediction"], "$defs": schema()["$defs"]}
    for cell in results["cells"]:
        lines = [json.loads(x) for x in (folder / cell["predictions"]).read_text().splitlines()]
        assert len(lines) == cell["n"]
        for line in lines:
            jsonschema.validate(line, line_schema)
        if cell["metric"] != "bleu":  # the records' scores make the cell's score
            assert sum(x["score"] for x in lines) / len(lines) == pytest.approx(cell["score"])
        metrics = json.loads((folder / cell["predictions"]).with_name("metrics.json").read_text())
        assert metrics["score"] == cell["score"]
    return results


@pytest.mark.usefixtures("own_cache")
def test_export_follows_its_schema_with_inputs_scores_and_deltas(paper_data, tmp_path):
    data = {**EXPORT_STUDY, "export": True}
    cfg, out = _write_config(tmp_path, data), tmp_path / "out"
    old = os.umask(0o027)
    try:
        s = run_study(cfg, out, data_dir=paper_data, units=ScoringUnits())
    finally:
        os.umask(old)
    assert s["export"]["cells"] == 6
    results = _validate_export(out / "export")
    assert results["study"]["name"] == "tiny" and results["provenance"]["ftgen_version_study"]
    assert [r["name"] for r in results["runs"]] == [r.dir_name for r in load_plan(cfg, paper_data).runs]
    assert all(r["model_kept"] and r["summary"]["loss_last_epoch"] == 0.5 for r in results["runs"])
    cells = {(c["model_dir_name"], c["test_set"]): c for c in results["cells"]}
    base = cells[("base-default", "amazon")]
    assert base["delta"] is None and base["inputs"] == "included"
    for c in results["cells"]:
        if c["run_key"]:
            twin = cells[("base-default", c["test_set"])]
            assert c["base_score"] == twin["score"] and c["delta"] == pytest.approx(c["score"] - twin["score"])
            assert c["delta_ci_low"] <= c["delta"] <= c["delta_ci_high"]
        assert c["ci_low"] <= c["score"] <= c["ci_high"]  # the report's intervals (test_report.py: their values)
    # the records' input fields are the test file's
    records = json.loads((paper_data / "sentiment" / "amazon_test_500.json").read_text())
    first = json.loads((out / "export" / base["predictions"]).read_text().splitlines()[0])
    assert first["input"] == {"input": records[0]["input"]} and first["gold"] == records[0]["output"]
    gen = json.loads((out / "export" / cells[("base-default", "socialqa")]["predictions"]).read_text().split("\n")[0])
    assert gen["generated"].startswith(gen["prediction"]) and gen["metric"] == "rouge_l" and "scores" not in gen
    # modes: what a plain open / mkdir would give under the umask
    for path in [out / "export", *(out / "export").rglob("*")]:
        assert path.stat().st_mode & 0o777 == (0o750 if path.is_dir() else 0o640), path


@pytest.mark.usefixtures("own_cache")
def test_export_cli_without_the_data_says_why_inputs_are_missing(paper_data, tmp_path):
    data_copy = tmp_path / "data"
    for task in ("sentiment", "question"):
        shutil.copytree(paper_data / task, data_copy / task)
    cfg, out = _write_config(tmp_path, EXPORT_STUDY), tmp_path / "out"
    run_study(cfg, out, data_dir=data_copy, units=ScoringUnits())
    shutil.rmtree(data_copy)
    proc = run_cli("export", str(out), "--to", str(tmp_path / "exp"), env={"FTGEN_DATA_DIR": ""})
    assert proc.returncode == 0, proc.stderr
    assert f"export: {tmp_path / 'exp'}/results.json and 6 cells' predictions.jsonl" in proc.stdout
    results = _validate_export(tmp_path / "exp")
    assert {c["inputs"] for c in results["cells"]} == {"not included: no data directory known (give --data-dir)"}
    # the data elsewhere (FTGEN_DATA_DIR: a fallback) with an edited file: its cells say so
    (tmp_path / "elsewhere" / "question").mkdir(parents=True)
    shutil.copytree(paper_data / "sentiment", tmp_path / "elsewhere" / "sentiment")
    shutil.copytree(paper_data / "question", tmp_path / "elsewhere" / "question", dirs_exist_ok=True)
    edited = tmp_path / "elsewhere" / "question" / "socialqa_test_500.json"
    edited.write_text(edited.read_text().replace("a", "A", 1))
    proc = run_cli(
        "export", str(out), "--to", str(tmp_path / "exp"), env={"FTGEN_DATA_DIR": str(tmp_path / "elsewhere")}
    )
    assert proc.returncode == 0, proc.stderr
    results = _validate_export(tmp_path / "exp")
    inputs = {c["test_set"]: c["inputs"] for c in results["cells"]}
    assert inputs["amazon"] == "included" and "is not the file the cell read" in inputs["socialqa"]
    assert_user_error(run_cli("export", str(tmp_path / "nothing")), "no study results here")


def test_schema_rejects_what_it_should():
    """The schema is not a rubber stamp: a missing field, a score out of range, a wrong type fail."""
    s = schema()
    jsonschema.Draft202012Validator.check_schema(s)
    line = {"id": "1", "prompt_hash": "0123456789abcdef", "input": {"input": "x"}, "gold": "a", "prediction": "a"}
    line |= {"metric": "accuracy", "score": 100.0}
    validator = jsonschema.Draft202012Validator({**s["$defs"]["prediction"], "$defs": s["$defs"]})
    assert validator.is_valid(line)
    for bad in ({"score": 101}, {"metric": "f1"}, {"input": {"input": 3}}, {"prompt_hash": "xyz"}, {"extra": 1}):
        assert not validator.is_valid(line | bad), bad
    assert not validator.is_valid({k: v for k, v in line.items() if k != "gold"})


# ---------------------------------------------------------------- ftgen status


@pytest.mark.usefixtures("own_cache")
def test_status_per_run_table_and_eta(paper_data, tmp_path):
    """A study half done, one run training (3 of 8 steps in its loss.jsonl, 10 s a step): the table shows each
    model's state, steps, elapsed time, ETA and cells; the study's ETA adds the cost model's estimate of what is
    left to the running run's own; every line fits 120 columns."""
    from ftgen.status import study_progress

    cfg, out = _write_config(tmp_path, TINY), tmp_path / "out"
    run_study(cfg, out, data_dir=paper_data, units=ScoringUnits(), only=["detection"])
    run = load_plan(cfg, paper_data).runs[0]
    folder = out / "runs" / run.dir_name
    folder.mkdir(parents=True)
    rows = [{"step": i, "loss": 1.0, "elapsed_s": 10.0 * i, "total_steps": 8} for i in (1, 2, 3)]
    (folder / "loss.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 4, "lo')  # a kill
    with Store.open_writer(out) as store:
        store.start("runs", run.key)
        started = store.get("runs", run.key)["started"]
    with Store.open_reader(out) as store:
        p = study_progress(store, now=started + 40)
    by_name = {r.name: r for r in p.rows}
    assert [r.name for r in p.rows] == ["base default", run.dir_name, load_plan(cfg, paper_data).runs[1].dir_name]
    base, running, pending = by_name["base default"], by_name[run.dir_name], p.rows[2]
    assert (base.state, base.cells) == ("pending", (1, 5))
    assert (running.state, running.steps, running.elapsed_s, running.eta_s) == ("running", (3, 8), 40, 50)
    assert (pending.state, pending.steps, pending.cells) == ("pending", None, (0, 5)) and pending.eta_s > 0
    assert p.eta_s > running.eta_s + pending.eta_s  # and the cells left

    proc = run_cli("status", str(out), env={"COLUMNS": "120"})
    assert proc.returncode == 0, proc.stderr
    assert max(len(line) for line in proc.stdout.splitlines()) <= 120, proc.stdout
    line = next(x for x in proc.stdout.splitlines() if run.dir_name in x)
    assert re.search(r"running\s*│\s*3/8\s*│", line), line
    assert re.search(r"ETA of the study: ~\d", proc.stdout), proc.stdout
    # the data gone: the table still, the study's ETA unknown and why
    with Store.open_writer(out) as store:
        store.set_meta("data_dir", str(tmp_path / "gone"))
    with Store.open_reader(out) as store:
        p = study_progress(store)
    assert p.eta_s is None and "data directory not found" in p.eta_note and len(p.rows) == 3


# ---------------------------------------------------------------- GPU configs and the disk estimate

CONFIGS = Path(__file__).parents[1] / "configs"


def test_disk_estimate_counts_real_parameters(default_model_dir, tmp_path):
    """The shape arithmetic behind the disk estimate against real models: the default model's checkpoint (its
    tensors counted from the safetensors header) and a PEFT LoRA adapter on a tiny Llama."""
    from peft import LoraConfig, get_peft_model
    from safetensors import safe_open
    from test_train import make_tiny_model
    from transformers import AutoModelForCausalLM

    from ftgen.costs import _shape, lora_params, params_of

    with safe_open(str(default_model_dir / "model.safetensors"), "pt") as f:
        real = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    shape = _shape(str(default_model_dir))  # (this test's FTGEN_CACHE is its own: name the machine's cache)
    assert shape["exact"] and params_of(shape) == real
    tiny = make_tiny_model(tmp_path / "tiny")
    model = AutoModelForCausalLM.from_pretrained(tiny)
    assert params_of(_shape(str(tiny))) == sum(p.numel() for p in model.parameters())
    peft = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    trained = sum(p.numel() for p in peft.parameters() if p.requires_grad)
    assert lora_params(_shape(str(tiny)), 4, ["all-linear"]) == trained


def test_paper_grids_disk_and_the_lora_config_for_one_gpu(paper_data):
    from ftgen.costs import disk_estimate

    full = load_plan(CONFIGS / "paper.yaml", paper_data)
    d = disk_estimate(full)
    assert d["runs"] == 39 and 0.9e12 < d["models_bytes"] < 1.3e12  # ~27 GB a run: ~1 TB
    lean = full.cfg.model_copy(update={"keep_models": False})
    one = disk_estimate(dataclasses.replace(full, resolved=dataclasses.replace(full.resolved, cfg=lean)))
    assert one["models_alive"] == 1 and one["models_bytes"] == d["models_bytes"] / 39

    lora = load_plan(CONFIGS / "paper-lora.yaml", paper_data)
    assert len(lora.runs) == 39 and {r.slot.split(" | ")[0] for r in lora.runs} == {"meta-llama/Llama-2-7b-hf"}
    for run in lora.runs:
        c = run.config
        assert (c.lora_r, c.dtype, c.gradient_checkpointing) == (16, "bf16", True)
        assert c.micro_batch_tokens == c.micro_batch_size * c.max_length and c.batch_size == 16
    d = disk_estimate(lora)
    assert d["models_bytes"] < 10e9 and "LoRA r=16 adapter" in d["models"][0]
    proc = run_cli("study", str(CONFIGS / "paper-lora.yaml"), "--dry-run", "--data-dir", str(paper_data))
    assert proc.returncode == 0 and "39 training runs, 5840 evaluation cells" in proc.stdout, proc.stderr
    assert re.search(r"disk: ~[\d.]+ GB at the peak", proc.stdout), proc.stdout
