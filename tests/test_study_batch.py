"""A study's `eval.batch_size: auto` (the default) end to end: cells run with the batch that fits (here an injected
memory limit forces the halving a GPU would do), and fp32 results equal those of a fixed batch."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import yaml
from test_train import make_tiny_model

from ftgen.config import parse_study
from ftgen.study import run_study


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama")


def _study(tmp_path: Path, tiny: Path, batch: int | None) -> Path:
    cfg = {
        "name": "batches",
        "models": [str(tiny)],
        "eval": {
            "test_sets": {"sentiment": ["sst2"], "question": ["socialqa"]},
            "shots": {"sentiment": [0, 2], "question": [0]},
            "limit": 8,
            "max_new_tokens": {"question": 8},
            "dtype": "fp32",
        }
        | ({"batch_size": batch} if batch else {}),
        "threads": 1,
    }
    path = tmp_path / f"batch-{batch or 'auto'}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _cells(out: Path) -> dict[str, tuple]:
    conn = sqlite3.connect(f"file:{out / 'results.sqlite'}?mode=ro", uri=True)
    rows = conn.execute(
        "SELECT c.slot, c.score, c.metrics, p.rows FROM cells c JOIN predictions p ON p.cell_key = c.key "
        "WHERE c.status = 'done'"
    ).fetchall()
    conn.close()
    return {slot: (score, json.loads(metrics), json.loads(preds)) for slot, score, metrics, preds in rows}


def test_auto_is_the_default():
    assert parse_study({"name": "x", "models": ["default"]}, "x.yaml").eval.batch_size == "auto"


def test_a_study_at_batch_auto_equals_a_fixed_batch_in_fp32(paper_data, tmp_path, tiny, monkeypatch):
    monkeypatch.setenv("FTGEN_CACHE", str(tmp_path / "cache"))  # the machine's calibration stays untouched
    monkeypatch.setenv("FTGEN_MEMORY_LIMIT", "3000000")  # 3 MB of activations: batch 8 does not fit
    run_study(_study(tmp_path, tiny, None), tmp_path / "auto", data_dir=paper_data)
    monkeypatch.delenv("FTGEN_MEMORY_LIMIT")
    run_study(_study(tmp_path, tiny, 16), tmp_path / "fixed", data_dir=paper_data)
    auto, fixed = _cells(tmp_path / "auto"), _cells(tmp_path / "fixed")
    assert auto.keys() == fixed.keys() and len(auto) == 3  # batch_size is a setting: the same cells
    used = {slot: m["batch_size"] for slot, (_, m, _) in auto.items()}
    assert all(1 <= b < 8 for b in used.values()), used  # halved from 8 (the rows) under the limit
    assert {m["batch_size"] for _, m, _ in fixed.values()} == {8}  # 16, capped at the 8 rows
    for slot in auto:
        (score_a, _, preds_a), (score_f, _, preds_f) = auto[slot], fixed[slot]
        assert score_a == score_f, slot
        assert [p["prediction"] for p in preds_a] == [p["prediction"] for p in preds_f], slot
