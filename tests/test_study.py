"""Studies: the driver's bookkeeping (fast, with stand-in units), then real tiny studies end to end (slow):
kill -9 at a random moment and resume = an uninterrupted run; Ray = local; the report of a real study."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from ftgen.config import parse_study
from ftgen.driver import Driver
from ftgen.errors import UserError
from ftgen.executors import LocalExecutor
from ftgen.plan import build_plan, check_changes
from ftgen.store import Store, manifest
from ftgen.study_files import run_dir
from ftgen.validate import validate_study
from helpers import assert_user_error, run_cli

# The tiny study of the end-to-end tests: 1 train task, full FT and FTICL with LoRA (both kinds of saved model),
# 8 train records (2 optimizer steps, a checkpoint after the first), 8 records per test set, classification
# only (generation cells are covered by the evaluation engine's tests); fp32: on CPUs bf16 pays a kernel
# compilation for every new tensor shape, slower for short runs.
TINY = {
    "name": "tiny",
    "train": [{"task": "sentiment", "sizes": [8]}],
    "methods": [{"name": "ft"}, {"name": "fticl", "shots": 2, "lora_r": 8}],
    "hyper": {"lr": [1e-4], "epochs": [1], "seeds": [0]},
    "train_args": {"batch_size": 4, "micro_batch_size": 4, "max_length": 256, "save_every": 1, "dtype": "fp32"},
    "eval": {
        "test_sets": {"sentiment": ["amazon", "sst2"], "detection": ["paws"]},
        "shots": {"sentiment": [0, 2], "detection": [0]},
        "limit": 8,
        "batch_size": 8,
        "dtype": "fp32",
    },
    "threads": 1,  # on a busy 2-core CI machine, 2 torch threads wait on each other (see units.set_threads)
}
N_RUNS, N_CELLS = 2, 3 * 5


def plan_for(data: dict, paper_data: Path):
    return build_plan(validate_study(parse_study(data, "tiny.yaml"), paper_data, "tiny.yaml"))


# ---------------------------------------------------------------- fast: the driver with stand-in units


class FakeUnits:
    """Stand-ins for ftgen.units.Units, passed to the executor: record the order, fail on demand, write a model."""

    def __init__(self, fail: set[str] = frozenset(), fail_all: bool = False):
        self.calls: list[str] = []
        self.fail = set(fail)
        self.fail_all = fail_all

    def train(self, job) -> dict:
        self.calls.append(f"train {job.key}")
        if self.fail_all:
            raise RuntimeError("no room")
        model = Path(job.out_dir) / "model"
        model.mkdir(parents=True, exist_ok=True)
        (model / "weights.bin").write_bytes(job.key.encode())
        summary = {"loss_first_epoch": 1.0, "loss_last_epoch": 0.5}
        return {"summary": summary, "manifest": manifest(model), "seconds": 0.1}

    def eval(self, job) -> dict:
        self.calls.append(f"eval {job.key} on {job.model_path}")
        if job.key in self.fail or self.fail_all:
            raise RuntimeError("boom\nsecond line")
        metrics = {"metric": "accuracy", "score": float(len(self.calls)), "n": 8}
        return {"metrics": metrics, "predictions": [{"id": "0", "prediction": "positive"}], "seconds": 0.1}


@pytest.fixture
def fake_units():
    return FakeUnits()


def _session(plan, out: Path, units: FakeUnits, **kw) -> dict:
    with Store.open_writer(out) as store:
        check_changes(store, plan, **kw)
        store.add([r.row() for r in plan.runs], [c.row() for c in plan.cells])
        return Driver(plan, store, LocalExecutor(units)).run()


def test_local_order_failures_and_retry(paper_data, tmp_path, fake_units):
    plan = plan_for(TINY, paper_data)
    assert (len(plan.runs), len(plan.cells)) == (N_RUNS, N_CELLS)
    bad = plan.cells_of(plan.runs[1].key)[2].key
    fake_units.fail = {bad}
    counts = _session(plan, tmp_path, fake_units)
    assert counts == {"runs done": 2, "cells done": N_CELLS - 1, "cells failed": 1}
    # base cells first, then each run: train, then all its cells (its model loaded once)
    kinds = [c.split()[0] + (" base" if c.endswith(" on default") else "") for c in fake_units.calls]
    assert kinds == ["eval base"] * 5 + ["train"] + ["eval"] * 5 + ["train"] + ["eval"] * 5
    with Store.open_reader(tmp_path) as s:
        failed = s.rows("cells", "status='failed'")
        assert [r["key"] for r in failed] == [bad] and failed[0]["error"] == "RuntimeError: boom"
        assert s.predictions(bad) is None
    # rerun: only the failed cell runs again (its model is not retrained), nothing is duplicated
    fake_units.calls.clear()
    fake_units.fail = set()
    counts = _session(plan, tmp_path, fake_units)
    assert counts == {"cells done": 1} and fake_units.calls == [
        f"eval {bad} on {tmp_path / 'runs' / plan.runs[1].dir_name / 'model'}"
    ]
    with Store.open_reader(tmp_path) as s:
        assert s.counts()["cells"]["done"] == N_CELLS and len(s.rows("cells")) == N_CELLS
        assert s.get("cells", bad)["attempts"] == 2
        assert s.conn.execute("SELECT COUNT(*) FROM predictions").fetchone()[0] == N_CELLS


def test_progress_lines_print_each_score_with_its_interval(paper_data, tmp_path, capsys, monkeypatch):
    """Not quiet: a line per finished unit, each cell's score with the interval its metrics carry."""
    from ftgen import progress

    class WithIntervals(FakeUnits):
        def eval(self, job) -> dict:
            result = super().eval(job)
            score = result["metrics"]["score"]
            result["metrics"] |= {"ci_low": score / 2, "ci_high": score + 2.5}
            return result

    monkeypatch.setattr(progress, "_quiet", False)
    _session(plan_for(TINY, paper_data), tmp_path, WithIntervals())
    lines = [line for line in capsys.readouterr().err.splitlines() if "accuracy" in line]
    assert len(lines) == N_CELLS
    assert lines[0].startswith(f"[1/{N_RUNS + N_CELLS}] ") and ": accuracy 1.0 [0.5, 3.5] (n=8)" in lines[0]


def test_a_lost_model_is_trained_again_before_its_cells(paper_data, tmp_path, fake_units):
    plan = plan_for(TINY, paper_data)
    run = plan.runs[0]
    first = plan.cells_of(run.key)[0].key
    fake_units.fail = {first}
    _session(plan, tmp_path, fake_units)
    (tmp_path / "runs" / run.dir_name / "model" / "weights.bin").unlink()  # the model no longer matches its manifest
    fake_units.calls.clear()
    fake_units.fail = set()
    _session(plan, tmp_path, fake_units)
    assert [c.split()[0] for c in fake_units.calls] == ["train", "eval"]


def test_changed_config_is_reported_not_mixed(paper_data, tmp_path, fake_units):
    plan = plan_for(TINY, paper_data)
    _session(plan, tmp_path, fake_units)
    changed = json.loads(json.dumps(TINY))
    changed["eval"]["limit"] = 6
    changed["train_args"]["max_length"] = 200  # not a coordinate of the grid (lr would be: a new row)
    new = plan_for(changed, paper_data)
    with pytest.raises(UserError) as e:
        _session(new, tmp_path, fake_units)
    msg = str(e.value)
    assert "2 finished training runs" in msg and "train.max_length: 256 -> 200" in msg
    assert f"{N_CELLS} finished evaluation cells" in msg and "limit: 8 -> 6" in msg and "--rerun-changed" in msg
    with Store.open_reader(tmp_path) as s:  # nothing was touched
        assert s.counts()["cells"] == {"pending": 0, "running": 0, "done": N_CELLS, "failed": 0, "superseded": 0}
    fake_units.calls.clear()
    _session(new, tmp_path, fake_units, rerun_changed=True)
    assert len(fake_units.calls) == N_RUNS + N_CELLS
    with Store.open_reader(tmp_path) as s:
        c = s.counts()["cells"]
        assert c["done"] == N_CELLS and c["superseded"] == N_CELLS
        # one live row per slot; the old results are kept
        live = s.rows("cells", "status != 'superseded'")
        assert len({r["slot"] for r in live}) == len(live) == N_CELLS
        assert all(json.loads(r["config"])["limit"] == 6 for r in live)


def test_worker_processes_run_the_units_they_are_given(paper_data, tmp_path):
    """The pool executor installs the units once per worker process (their model cache arrives empty)."""
    import pickle

    from ftgen.executors import PoolExecutor
    from ftgen.units import Units

    units = Units()
    units.models._id, units.models._model = ("m", "fp32"), object()
    assert pickle.loads(pickle.dumps(units)).models._id is None
    plan = plan_for(TINY, paper_data)
    with Store.open_writer(tmp_path) as store:
        store.add([r.row() for r in plan.runs], [c.row() for c in plan.cells])
        ex = PoolExecutor(2, FakeUnits())
        try:
            counts = Driver(plan, store, ex).run()
        finally:
            ex.shutdown()
        assert counts == {"runs done": N_RUNS, "cells done": N_CELLS}
        assert store.counts()["cells"]["done"] == N_CELLS


def test_only_finished_work_updates_the_calibration(paper_data, tmp_path, monkeypatch):
    """A study whose units all fail leaves the machine's calibration file as it was; finished work writes it."""
    from ftgen.costs import calibration_path, load_calibration
    from ftgen.study import run_study

    monkeypatch.setenv("FTGEN_CACHE", str(tmp_path / "cache"))
    cfg, out = _write_config(tmp_path, TINY), tmp_path / "out"
    s = run_study(cfg, out, data_dir=paper_data, units=FakeUnits(fail_all=True))
    assert (s["runs"]["failed"], s["cells"]["failed"]) == (N_RUNS, N_CELLS)
    assert not calibration_path().exists()
    calibration_path().parent.mkdir(parents=True)
    calibration_path().write_text('{"theirs": 1}')
    run_study(cfg, out, data_dir=paper_data, units=FakeUnits(fail_all=True))
    assert calibration_path().read_text() == '{"theirs": 1}'
    s = run_study(cfg, out, data_dir=paper_data, units=FakeUnits())
    assert s["cells"]["done"] == N_CELLS and load_calibration()["study"] == "tiny"
    before = calibration_path().read_text()
    assert run_study(cfg, out, data_dir=paper_data, units=FakeUnits())["did"] == {}  # nothing new finished
    assert calibration_path().read_text() == before


# ---------------------------------------------------------------- slow: real studies through the CLI


def _write_config(tmp_path: Path, data: dict, name: str = "tiny.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def _results(out: Path) -> dict[str, dict]:
    """What a finished study computed, for comparing two studies: every live done cell's score and per-record
    prediction, label scores and log-probs, and every run's saved model as the sha256 of its files (checked
    against the files on disk). Also checks that nothing is duplicated."""
    conn = sqlite3.connect(f"file:{out / 'results.sqlite'}?mode=ro", uri=True)
    rows = conn.execute(
        "SELECT c.slot, c.score, c.status, p.rows FROM cells c LEFT JOIN predictions p ON p.cell_key = c.key"
    ).fetchall()
    assert len({r[0] for r in rows}) == len(rows), "a slot appears twice"
    assert all(r[2] == "done" and r[3] is not None for r in rows), [r[:3] for r in rows if r[2] != "done"]
    conn.row_factory = sqlite3.Row
    runs = [dict(r) for r in conn.execute("SELECT * FROM runs")]
    conn.close()
    assert [r["status"] for r in runs] == ["done"] * N_RUNS
    models = {}
    for run in runs:
        slot = run["slot"]
        models[slot] = json.loads(run["manifest"])
        assert manifest(run_dir(out, run) / "model") == models[slot], f"the files of {slot} changed after it finished"
        assert any(name.endswith(".safetensors") for name in models[slot])
    cells = {
        r[0]: (r[1], [(p["id"], p["prediction"], p["scores"], p["logprobs"]) for p in json.loads(r[3])]) for r in rows
    }
    return {"cells": cells, "models": models}


def run_uninterrupted(paper_data: Path, tmp: Path) -> tuple[Path, float, dict]:
    """The tiny study run once, start to end, with the local executor: (out dir, seconds, results). The session
    fixture `uninterrupted` (conftest.py) runs it once for every test that compares a study with it."""
    cfg = _write_config(tmp, TINY)
    t0 = time.perf_counter()
    proc = run_cli("study", str(cfg), "--data-dir", str(paper_data), "--out", str(tmp / "out"))
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"{N_RUNS} training runs and {N_CELLS} evaluation cells done" in proc.stdout
    return tmp / "out", seconds, _results(tmp / "out")


@pytest.mark.slow
def test_second_study_on_the_same_dir_is_refused_while_the_first_runs(paper_data, tmp_path):
    cfg = _write_config(tmp_path, TINY)
    out = tmp_path / "out"
    args = [sys.executable, "-m", "ftgen", "study", str(cfg), "--data-dir", str(paper_data), "--out", str(out)]
    first = subprocess.Popen(args, env={**os.environ, "FTGEN_QUIET": "1"}, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if (out / ".lock").exists() and (out / ".lock").read_text():
                break
            time.sleep(0.1)
        second = run_cli("study", str(cfg), "--data-dir", str(paper_data), "--out", str(out))
        assert_user_error(second, "another ftgen study is already writing this directory", f"pid {first.pid}")
    finally:
        first.kill()
        first.wait()


@pytest.mark.slow
def test_ray_executor_gives_the_same_results_as_local(paper_data, tmp_path, uninterrupted):
    pytest.importorskip("ray")
    _, _, expected = uninterrupted
    data = {**TINY, "executor": "ray", "ray": {"num_cpus": 2}}  # a local Ray cluster: 2 workers at a time
    cfg = _write_config(tmp_path, data)
    proc = run_cli("study", str(cfg), "--data-dir", str(paper_data), "--out", str(tmp_path / "out"), timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _results(tmp_path / "out") == expected


@pytest.mark.slow
def test_report_of_a_real_study(uninterrupted, tmp_path, default_model_dir):
    from ftgen.environment import fingerprint, versions

    out, _, _ = uninterrupted
    proc = run_cli("report", str(out), "--to", str(tmp_path / "report"), env={"COLUMNS": "120"})
    assert proc.returncode == 0, proc.stderr
    folder = tmp_path / "report"
    figures = ["ft_vs_fticl", "heatmap_0-shot", "heatmap_2-shot", "drift_vs_delta", "loss_curves", "layers"]
    for name in ["main_table.md", "main_table.csv", "main_table.tex", "cells.csv", "claims.md", "provenance.json"]:
        assert (folder / name).stat().st_size > 0, name
    for name in figures:
        assert (folder / f"{name}.png").stat().st_size > 0 and (folder / f"{name}.svg").stat().st_size > 0, name
    *lines, path = proc.stdout.splitlines()
    assert max(map(len, lines)) <= 120 and path == f"report: {folder / 'report.html'}"
    text = " ".join(proc.stdout.split())
    # ft (full) and fticl (LoRA) are not matched: no FTICL − FT, and each method against its base
    assert "0-shot, in-domain: FTICL − FT: no matched cells FT − base = " in text and "FTICL − base = " in text
    page = (folder / "report.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)  # nothing fetched from a network
    assert page.count("data:image/svg+xml;base64,") == len(figures) and not (folder / "sweeps.png").exists()
    # each run's drift from its base, measured after training (analysis.drift defaults to on)
    conn = sqlite3.connect(f"file:{out / 'results.sqlite'}?mode=ro", uri=True)
    summaries = [json.loads(r[0]) for r in conn.execute("SELECT summary FROM runs")]
    conn.close()
    for s in summaries:
        drift = s["drift"]
        assert 0 < drift["rel_change"] < 1 and 0 < drift["cosine"] <= 1 and drift["mean_abs_change"] > 0
        assert drift["kl_mean"] > 0 and set(drift["kl_per_task"]) == {"sentiment", "detection"}
        assert s["environment"]["versions"] == versions()
        assert s["environment"]["base_model"]["resolved"] == "SmolLM2-135M-Instruct"
    correlations = [line for line in (folder / "drift.md").read_text().splitlines() if " vs Δ " in line]
    assert correlations and all("n=2" in line and "(a finding)" not in line for line in correlations)
    md = (folder / "main_table.md").read_text()
    assert "| ID: amazon | OOD: sst2 | cross: detection/paws |" in md
    rows = list(csv_rows(folder / "cells.csv"))
    assert len(rows) == N_CELLS
    for r in rows:
        assert float(r["ci_low"]) <= float(r["score"]) <= float(r["ci_high"]) and r["n"] == "8"
        if r["method"] != "base":
            assert float(r["delta"]) == pytest.approx(float(r["score"]) - float(r["base_score"]), abs=1e-3)
            assert float(r["delta_ci_low"]) <= float(r["delta"]) <= float(r["delta_ci_high"])
    # provenance: what the units recorded when they ran
    p = json.loads((folder / "provenance.json").read_text())
    assert p["base_models"] == [
        {
            "name": "default",
            "resolved": "SmolLM2-135M-Instruct",
            "path": str(default_model_dir.resolve()),
            "sha256": fingerprint(default_model_dir),
            "revision": None,
        }
    ]
    assert [(e["device"], e["dtype"]) for e in p["runtime"]["evaluation"]] == [("cpu", "fp32")]
    assert p["runtime"]["versions"] == [versions()] and p["status"] == "complete"
    assert {s["set"]: s["n_scored"] for s in p["test_sets"]} == {"amazon": [8], "sst2": [8], "paws": [8]}
    assert all(m["sha256"] for m in p["trained_models"]) and "name: tiny" in p["study_yaml"]


def csv_rows(path: Path):
    import csv

    with open(path, newline="") as f:
        yield from csv.DictReader(f)
