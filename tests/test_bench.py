"""`ftgen bench` as a user runs it: from the package (no source tree needed), bad options in one line."""

from __future__ import annotations

import json
import re

import pytest

from helpers import run_cli, run_cli_inprocess


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["train", "--baseline", "deepspeed"], "--baseline: use trainer or trl"),
        (["eval", "--batch-size", "0"], "--batch-size: expected a positive integer or 'auto'"),
        (["gpu", "--steps", "models,nope"], "--steps: unknown step(s) nope"),
        (["gpu", "--paper-config", "no/such.yaml", "--quick"], "no/such.yaml: no such study config"),
    ],
)
def test_bench_bad_options_are_one_line(capsys, paper_data, tmp_path, args, expected):
    out = ["--out", str(tmp_path / "o")] if args[0] == "gpu" else []
    r = run_cli_inprocess(capsys, "bench", *args, "--data-dir", str(paper_data), *out)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().count("\n") == 0 and expected in r.stderr, r.stderr
    assert not (tmp_path / "o").exists()


def test_bench_runs_from_the_installed_package_alone(tmp_path):
    """As from a normal (non-editable) install: the package copied elsewhere, no benchmarks/ beside it."""
    import os
    import shutil
    import subprocess
    import sys

    import ftgen

    site = tmp_path / "site"
    shutil.copytree(os.path.dirname(ftgen.__file__), site / "ftgen", ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "PYTHONPATH": str(site), "FTGEN_QUIET": "1"}
    code = "import ftgen.bench.train as t, ftgen.bench.gpu, ftgen.bench.eval; print(t.__file__)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.startswith(str(site)), r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "ftgen", "bench", "train", "--help"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert r.returncode == 0 and "--baseline" in r.stdout, r.stderr


@pytest.mark.slow
def test_bench_gpu_quick_runs_every_step_end_to_end(paper_data, tmp_path, default_model_dir):
    """The device check at tiny sizes on this CPU: every step runs, bench train's baselines see the same batches."""
    out = tmp_path / "check"
    r = run_cli("bench", "gpu", "--quick", "--out", str(out), "--data-dir", str(paper_data), timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary) == ["models", "eval", "train", "estimate", "study"]
    assert all(s["status"] == "ok" for s in summary.values()), summary
    assert r.stdout.strip().splitlines()[-1] == "bench gpu: 5 of 5 steps ok"
    # bench train: the peak measured on the device that trained, named; the same first step for every trainer
    assert re.search(r"matmul peak on .+\(cpu, \d+ threads\): [0-9.]+ TFLOP/s", r.stdout)
    first = re.search(r"first_step_loss\s+([0-9.]+)\s+([0-9.]+)\s+([0-9.]+)", r.stdout)
    ours, trainer, trl = map(float, first.groups())
    assert trainer == pytest.approx(ours, rel=0.01) and trl == pytest.approx(ours, rel=0.01)
    assert "final losses vs Trainer agree" in r.stdout and "final losses vs TRL agree" in r.stdout
    assert re.search(r"^train speedup vs TRL: [0-9.]+$", r.stdout, re.M)
    # the estimate: rates measured with a random-weight model, fed to the paper grid
    assert summary["estimate"]["paper grid: units"] == "39 runs, 5840 cells"
    assert json.loads((out / "rates.json").read_text())["model"].startswith("random:")
    assert "end to end" in summary["study"]
