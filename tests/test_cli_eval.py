"""`ftgen eval` end to end in a subprocess: outputs and summary, and bad input -> one line, exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def ftgen(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "FTGEN_QUIET": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "ftgen", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=600
    )


def test_eval_end_to_end(paper_data, tmp_path, default_model_dir):
    out = tmp_path / "eval"
    r = ftgen(
        "eval", "--task", "sentiment", "--test-set", "sst2", "--shots", "0,2", "--prompt-format", "0,1",
        "--limit", "4", "--data-dir", str(paper_data), "--out", str(out),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    for k in (0, 2):
        for f in (0, 1):
            cell = out / "sst2" / f"shots{k}_fmt{f}"
            metrics = json.loads((cell / "metrics.json").read_text())
            assert metrics["n"] == 4 and metrics["shots"] == k and metrics["fmt"] == f
            assert metrics["test_set"] == "sst2" and metrics["data"]["raw"] == 4
            assert metrics["batch_size"] == 4  # the default "auto": 16 on a CPU, here all 4 rows at once
            assert len((cell / "predictions.jsonl").read_text().splitlines()) == 4
    summary = json.loads((out / "summary.json").read_text())
    assert [(row["shots"], row["fmt"]) for row in summary["rows"]] == [(0, 0), (0, 1), (2, 0), (2, 1)]
    assert "sst2" in r.stdout and "accuracy" in r.stdout  # the summary table
    first = summary["rows"][0]
    assert first["ci_low"] <= first["score"] <= first["ci_high"] and first["ci_high"] > first["ci_low"]
    assert f"[{first['ci_low']:.1f}, {first['ci_high']:.1f}]" in r.stdout  # every score printed with its interval
    # a second run into the same OUT (another task) adds its rows to summary.json
    r = ftgen(
        "eval", "--task", "detection", "--test-set", "qqp", "--limit", "2", "--data-dir", str(paper_data),
        "--out", str(out),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    rows = json.loads((out / "summary.json").read_text())["rows"]
    assert [(row["task"], row["test_set"]) for row in rows] == [("sentiment", "sst2")] * 4 + [("detection", "qqp")]


def test_eval_skip_invalid_counts_dropped_records(tmp_path, default_model_dir):
    rows = [
        {"input_1": "A man plays a guitar.", "input_2": "A person makes music.", "output": "entailment"},
        {"input_1": "", "input_2": "An empty premise, as in gptnli's record 100.", "output": "neutral"},
        {"input_1": "The cat sleeps.", "input_2": "The cat is running.", "output": "contradiction"},
    ]
    test_file = tmp_path / "mini_test.json"
    test_file.write_text(json.dumps(rows))
    r = ftgen(
        "eval", "--task", "inference", "--test-set", str(test_file), "--skip-invalid", "--scoring", "first-token",
        "--out", str(tmp_path / "out"),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    metrics = json.loads((tmp_path / "out" / "mini_test" / "shots0_fmt0" / "metrics.json").read_text())
    assert metrics["data"]["invalid"] == 1 and metrics["n"] == 2 and metrics["scoring"] == "first-token"


def _bad_model(tmp_path: Path) -> str:
    bad = tmp_path / "broken-model"
    bad.mkdir()
    (bad / "config.json").write_text('{"model_type": "llama", "hidden_size": "not a number"}')
    return str(bad)


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        (["--task", "nope"], "unknown task 'nope'"),
        (["--task", "sentiment", "--test-set", "nope"], "unknown test set 'nope'"),
        (["--task", "sentiment", "--test-set", "sst2", "--shots", "0,9"], "pool has only 8"),
        (["--task", "inference", "--test-set", "snli", "--shots", "3"], "no few-shot pool for 'snli'"),
        (["--task", "sentiment", "--test-set", "EMPTY"], "empty file"),
        (["--task", "sentiment", "--test-set", "EMPTY_LIST"], "no usable records"),
        (["--task", "inference", "--test-set", "gptnli"], "skip_invalid / --skip-invalid"),
        (["--task", "sentiment", "--test-set", "sst2", "--prompt-format", "2"], "prompt format 2 does not exist"),
        (["--task", "sentiment", "--test-set", "sst2", "--scoring", "max"], "unknown rule 'max'"),
        (["--task", "sentiment", "--test-set", "sst2", "--model", "/no/such/model"], "no such directory"),
        (["--task", "sentiment", "--test-set", "sst2", "--model", "BROKEN", "--limit", "2"], "cannot load model"),
        (["--task", "sentiment", "--test-set", "sst2", "--backend", "vllm"], "needs vLLM"),
        (["--task", "sentiment", "--test-set", "sst2", "--batch-size", "0"], "--batch-size: expected a positive"),
        (["--task", "sentiment", "--test-set", "sst2", "--batch-size", "big"], "integer or 'auto', got 'big'"),
        (["--task", "sentiment", "--test-set", "sst2", "--model", "RANDOM"], "random weights are for benchmarks"),
    ],
)
def test_eval_bad_input_is_one_line_exit_2(paper_data, tmp_path, case, expected):
    (tmp_path / "empty.json").write_text("")
    (tmp_path / "empty_list.json").write_text("[]")
    subst = {
        "EMPTY": str(tmp_path / "empty.json"),
        "EMPTY_LIST": str(tmp_path / "empty_list.json"),
        "BROKEN": _bad_model(tmp_path),
        "RANDOM": f"random:{tmp_path / 'llama.json'}",  # refused whether or not the config exists
    }
    args = [subst.get(a, a) for a in case]
    r = ftgen("eval", *args, "--data-dir", str(paper_data), "--out", str(tmp_path / "out"))
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ftgen: error: "), r.stderr
    assert expected in lines[0]
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()  # failed before writing anything


@pytest.mark.slow
def test_bench_eval_smoke(paper_data, default_model_dir):
    """`ftgen bench eval` on tiny sizes: lm-eval runs offline on our custom task and agrees with ftgen."""
    r = ftgen(
        "bench", "eval", "--records", "3", "--sets", "sentiment:sst2", "--shots", "1", "--dtype", "fp32",
        "--only", "classification", "--data-dir", str(paper_data),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert "same prediction 3/3" in r.stdout and "within 1 point: yes" in r.stdout
    assert lines[-1].startswith("eval speedup vs lm-eval: ")
    assert float(lines[-1].rsplit(" ", 1)[1]) > 0
