"""Studies: the driver's bookkeeping (fast, with stand-in units), then real tiny studies end to end (slow):
kill -9 at a random moment and resume = an uninterrupted run; Ray = local; the report of a real study."""

from __future__ import annotations

import json
import os
import random
import re
import signal
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


def kill_seed() -> int:
    """The seed of a kill test's choices: $FTGEN_KILL_SEED replays one, else a fresh one; printed either way."""
    value = os.environ.get("FTGEN_KILL_SEED")
    seed = int(value) if value else random.randrange(10**6)
    print(f"kill seed {seed} (FTGEN_KILL_SEED={seed} replays these choices)", flush=True)
    return seed


def _children(pid: int) -> set[int]:
    kids = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids |= {int(k) for k in (task / "children").read_text().split()}
        except OSError:
            pass
    return kids


def _all_gone(pids: set[int], within: float) -> bool:
    """True once none of `pids` runs; a zombie (exited, not yet reaped: a container's PID 1 may never
    reap orphans) counts as gone."""

    def running(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"
        except (OSError, IndexError):
            return False

    deadline = time.monotonic() + within
    while any(running(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def _wait_until(proc: subprocess.Popen, ready, timeout: float = 600) -> bool:
    """Poll `ready()` while `proc` runs; False if it ended (or the time ran out) first."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if ready():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.slow
def test_kill_9_at_random_moments_then_resume_equals_uninterrupted(paper_data, tmp_path, uninterrupted):
    """Killed twice at seeded moments, then resumed with the same command: the results (scores, per-record
    log-probs, the saved models' file hashes) equal an uninterrupted run's. Kill 1 comes mid-training (after a
    checkpoint: the last step, the final save or the drift analysis), kill 2 while the trained models' cells
    run. Run with 2 worker processes of 1 thread (the local run: 1 process): a killed study leaves no worker."""
    _, _, expected = uninterrupted
    cfg = _write_config(tmp_path, {**TINY, "workers": 2, "threads": 1})
    out = tmp_path / "out"
    args = [sys.executable, "-m", "ftgen", "study", str(cfg), "--data-dir", str(paper_data), "--out", str(out)]
    env = {**os.environ, "FTGEN_QUIET": "1"}
    rng = random.Random(kill_seed())
    tuned_done = "SELECT COUNT(*) FROM cells WHERE status='done' AND run_key IS NOT NULL"
    kills = []
    for phase in ("training", "tuned-eval"):
        if phase == "training":
            ready = lambda: any(out.glob("runs/*/checkpoints/step-*"))  # noqa: E731
        else:  # 10 tuned cells: kill with at least 3 left, so that 2 workers cannot finish them within the delay
            target = min(_store_count(out, tuned_done) + rng.randint(1, 4), 7)
            ready = lambda target=target: _store_count(out, tuned_done) >= target  # noqa: E731
        delay = rng.uniform(0.0, 1.0)
        proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if not _wait_until(proc, ready):
            proc.kill()
            pytest.fail(f"the study ended before its {phase} phase: {proc.communicate()[1][-2000:]}")
        time.sleep(delay)
        assert proc.poll() is None, f"the study ended within {delay:.2f}s of its {phase} phase (kills so far {kills})"
        workers = _children(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        done = _store_count(out, "SELECT COUNT(*) FROM cells WHERE status='done'")
        kills.append(f"{phase}+{delay:.2f}s ({done} cells done)")
        print(f"kill {len(kills)}: {kills[-1]}", flush=True)
        assert _all_gone(workers, within=10), "a worker outlived the killed study"
    assert len(kills) == 2
    status = run_cli("status", str(out))  # readable after the kills, without the lock
    assert status.returncode == 0 and "study process: none" in status.stdout, status.stderr
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, (kills, proc.stderr[-3000:])
    got = _results(out)
    assert got == expected, f"killed at {kills}"
    # the same command once more: nothing to do, nothing changes
    again = run_cli("study", str(cfg), "--data-dir", str(paper_data), "--out", str(out))
    assert again.returncode == 0 and _results(out) == got
    status = run_cli("status", str(out))
    assert re.search(r"runs\s*│\s*0\s*│\s*0\s*│\s*2\s*│\s*0", status.stdout), status.stdout


def _store_count(out: Path, sql: str) -> int:
    from contextlib import closing

    try:
        with closing(sqlite3.connect(f"file:{out / 'results.sqlite'}?mode=ro", uri=True, timeout=5)) as conn:
            return conn.execute(sql).fetchone()[0]
    except sqlite3.Error:  # not created yet
        return 0


# When to kill: right away (start-up, model loading, base-model cells), once a training run is running
# (training steps, checkpoint saves, the final save, drift), once a trained model's cells are running.
PHASES = {
    "start": None,
    "training": "SELECT COUNT(*) FROM runs WHERE status='running'",
    "tuned-eval": "SELECT COUNT(*) FROM cells WHERE status='running' AND run_key IS NOT NULL",
}


@pytest.mark.slow
def test_twenty_kills_in_a_row_with_readers_each_resume_passes_the_check(paper_data, tmp_path, uninterrupted):
    """kill -9 20 times in one run: the study in each phase (see PHASES) and, every 4th time, `ftgen report`.
    While some studies run, `ftgen status` and `ftgen report` read the live store. After each kill
    `ftgen status --check` passes; at the end the results equal an uninterrupted run's."""
    _, _, expected = uninterrupted
    cfg = _write_config(tmp_path, TINY)
    out = tmp_path / "out"
    study = [sys.executable, "-m", "ftgen", "study", str(cfg), "--data-dir", str(paper_data), "--out", str(out)]
    report = [sys.executable, "-m", "ftgen", "report", str(out), "--to", str(tmp_path / "report")]
    env = {**os.environ, "FTGEN_QUIET": "1"}
    seed = kill_seed()
    rng = random.Random(seed)
    kills: list[str] = []
    readers = 0
    for attempt in range(100):
        if len(kills) == 20:
            break
        target = "report" if len(kills) % 4 == 3 and (out / "results.sqlite").exists() else "study"
        finished = _store_count(out, "SELECT COUNT(*) FROM cells WHERE status='done'") == N_CELLS
        # once all is done, what is left to kill is a no-op rerun: its start-up and store writes
        phase = "report" if target == "report" else "start" if finished else rng.choice(list(PHASES))
        proc = subprocess.Popen(
            study if target == "study" else report, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        t0 = time.monotonic()
        if PHASES.get(phase):  # wait for the phase (it may never come: the study finished that part)
            while proc.poll() is None and not _store_count(out, PHASES[phase]) and time.monotonic() - t0 < 300:
                time.sleep(0.1)
        # a no-op rerun of a finished study imports no torch: it is over in well under a second
        low, high = (0.05, 1.0) if finished and target == "study" else (0.3, 4.0 if finished else 8.0)
        moment = rng.uniform(low, high)
        t1 = time.monotonic()
        if target == "study" and attempt % 3 == 0:  # readers of the live store: never fail, never block it
            for args in (["status", str(out)], ["report", str(out), "--to", str(tmp_path / f"live{attempt}")]):
                r = run_cli(*args)
                assert r.returncode == 0 or "no study results here" in r.stderr, (args, r.stderr[-2000:])
                readers += 1
        try:
            proc.wait(timeout=max(moment - (time.monotonic() - t1), 0.01))
            assert proc.returncode == 0, f"{target} failed on its own (seed {seed})"
            continue  # finished before its moment: not a kill
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        if not (out / "results.sqlite").exists():
            continue
        runs = _store_count(out, "SELECT COUNT(*) FROM runs WHERE status='done'")
        cells = _store_count(out, "SELECT COUNT(*) FROM cells WHERE status='done'")
        kills.append(f"{phase}+{moment:.1f}s (then {runs} runs, {cells} cells done)")
        check = run_cli("status", str(out), "--check")
        assert check.returncode == 0 and "check: ok" in check.stdout, (kills, seed, check.stdout[-2000:])
    assert len(kills) == 20, (kills, seed)
    proc = subprocess.run(study, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, (kills, seed, proc.stderr[-3000:])
    assert _results(out) == expected, (kills, seed)
    check = run_cli("status", str(out), "--check")
    assert check.returncode == 0 and "check: ok" in check.stdout and "note" not in check.stdout, check.stdout
    print(f"seed {seed}: {len(kills)} kills, {readers} concurrent readers: " + "; ".join(kills))


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
    figures = ["ft_vs_fticl", "heatmap_0-shot", "heatmap_2-shot", "drift_vs_delta", "loss_curves"]
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
