"""A study killed mid-training resumes from its checkpoint after its data directory moved: what determines a
result (ftgen.config's result fields) is one definition shared by the unit key and the trainer's resume check,
and the data directory's place is not part of it. Real training on a tiny random-weight Llama."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from test_train import assert_same_weights, make_tiny_model

from ftgen.config import TrainConfig
from ftgen.plan import load_plan
from ftgen.study import run_study
from ftgen.train import train
from ftgen.units import TrainJob, Units


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama")


def _data_dir(paper_data: Path, where: Path) -> Path:
    """A data dir of the sentiment task (links to the paper's files: moving the dir keeps them)."""
    for name in ("amazon_train_2000.json", "sst2_test_500.json", "few_shot/sst2_few_shot.json"):
        (where / "sentiment" / name).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(paper_data / "sentiment" / name, where / "sentiment" / name)
    return where


def _config(tmp_path: Path, tiny: Path, steps_per_epoch: int = 2) -> Path:
    cfg = {
        "name": "moved",
        "models": [str(tiny)],
        "train": [{"task": "sentiment", "sizes": [4 * steps_per_epoch]}],
        "methods": [{"name": "ft"}],
        "hyper": {"lr": [1e-3], "epochs": [2], "seeds": [0]},
        "train_args": {"batch_size": 4, "micro_batch_size": 2, "max_length": 96, "save_every": 1, "dtype": "fp32"},
        "eval": {"test_sets": {"sentiment": ["sst2"]}, "shots": {"sentiment": [0]}, "limit": 4, "base": False},
        "analysis": {"drift": False},
        "threads": 1,
    }
    path = tmp_path / "moved.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


class KilledAfterOneStep(Units):
    """The study process dies during training, right after the run's first checkpoint."""

    def train(self, job: TrainJob) -> dict:
        train(job.config, job.out_dir, resume=True, stop_after=1)
        raise RuntimeError("killed")


def _summary(out: Path) -> dict:
    conn = sqlite3.connect(f"file:{out / 'results.sqlite'}?mode=ro", uri=True)
    (summary,) = conn.execute("SELECT summary FROM runs WHERE status='done'").fetchone()
    conn.close()
    return json.loads(summary)


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    """A cache of the test's own: a study's calibration never reaches the machine's (the tiny model needs none)."""
    monkeypatch.setenv("FTGEN_CACHE", str(tmp_path / "cache"))


def test_a_stopped_study_resumes_after_its_data_dir_moved(paper_data, tmp_path, tiny, own_cache):
    first = _data_dir(paper_data, tmp_path / "data")
    cfg, out = _config(tmp_path, tiny), tmp_path / "out"
    s = run_study(cfg, out, data_dir=first, units=KilledAfterOneStep())
    assert s["runs"]["failed"] == 1
    (run,) = load_plan(cfg, first).runs
    assert [p.name for p in (out / "runs" / run.dir_name / "checkpoints").iterdir()] == ["step-1"]

    moved = tmp_path / "moved-data"
    os.replace(first, moved)
    s = run_study(cfg, out, data_dir=moved)
    assert (s["runs"]["done"], s["cells"]["done"]) == (1, 1) and s["changed"] == []
    summary = _summary(out)
    assert summary["resumed_from_step"] == 1 and summary["config"]["data_dir"] == str(moved.resolve())
    # the same weights as a run that was never interrupted (the run's own config, the new place)
    straight = TrainConfig(**(run.config.model_dump() | {"data_dir": str(moved)}))
    train(straight, tmp_path / "straight")
    assert_same_weights(tmp_path / "straight" / "model", out / "runs" / run.dir_name / "model")
    assert run_study(cfg, out, data_dir=moved)["did"] == {}  # nothing left, nothing refused


@pytest.mark.slow
def test_a_killed_study_resumes_after_its_data_dir_moved(paper_data, tmp_path, tiny, own_cache):
    """The same with a real `ftgen study` process and kill -9 once a checkpoint exists."""
    first = _data_dir(paper_data, tmp_path / "data")
    cfg, out = _config(tmp_path, tiny, steps_per_epoch=6), tmp_path / "out"
    args = [sys.executable, "-m", "ftgen", "study", str(cfg), "--out", str(out), "--data-dir"]
    env = {**os.environ, "FTGEN_QUIET": "1"}  # FTGEN_CACHE: the test's own
    proc = subprocess.Popen([*args, str(first)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not list(out.glob("runs/*/checkpoints/step-2")):
        assert proc.poll() is None and time.monotonic() < deadline, "the study ended before its step-2 checkpoint"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    moved = tmp_path / "moved-data"
    shutil.move(first, moved)
    resumed = subprocess.run([*args, str(moved)], env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert _summary(out)["resumed_from_step"] >= 2
