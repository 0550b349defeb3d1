"""Report: tables, deltas, groups and figures from a results store with known numbers (fast).
The report of a real study is checked in test_study.py (slow)."""

from __future__ import annotations

import csv
import json
import re

import pytest

from ftgen.report import StudyData, group_of, write_report
from ftgen.store import Store
from helpers import run_cli

BASE = {  # (test task, set, shots) -> base score
    ("sentiment", "amazon", 0): 50.0,
    ("sentiment", "amazon", 2): 60.0,
    ("sentiment", "sst2", 0): 40.0,
    ("sentiment", "sst2", 2): 45.0,
    ("question", "socialqa", 0): 10.0,
    ("question", "socialqa", 1): 20.0,
}
KL = {"rft16": 0.5, "rft32": 0.7, "rfticl16": 0.1, "rfticl32": 0.3}  # drift measured after each run
DELTA = {
    "ft": {"amazon": 30.0, "sst2": 10.0, "socialqa": -8.0},
    "fticl": {"amazon": 28.0, "sst2": 14.0, "socialqa": -2.0},
}


def _cell(key, run, test_task, test_set, shots, score):
    method = run["method"] if run else "base"
    row = {
        "key": key,
        "slot": f"{run['key'] if run else 'base'}|{test_task}/{test_set}|{shots}",
        "model": "default",
        "run_key": run["key"] if run else None,
        "train_task": run and "sentiment",
        "train_set": run and "amazon",
        "size": run and run["size"],
        "method": method,
        "lr": run and 1e-4,
        "epochs": run and 1,
        "seed": run and 0,
        "test_task": test_task,
        "test_set": test_set,
        "shots": shots,
        "fmt": 0,
        "config": "{}",
    }
    return row, {"metric": "accuracy" if test_task == "sentiment" else "rouge_l", "score": score, "n": 8}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    runs = [{"key": f"r{m}{n}", "method": m, "size": n} for m in ("ft", "fticl") for n in (16, 32)]
    cells = [_cell(f"b{i}", None, t, s, k, v) for i, ((t, s, k), v) in enumerate(BASE.items())]
    for r in runs:
        scale = r["size"] / 16  # twice the data, twice the change
        for i, ((t, s, k), v) in enumerate(BASE.items()):
            cells.append(_cell(f"{r['key']}-{i}", r, t, s, k, v + DELTA[r["method"]][s] * scale))
    with Store.open_writer(out) as st:
        st.set_meta("study", "fake")
        st.add(
            [
                {
                    "key": r["key"],
                    "slot": r["key"],
                    "model": "default",
                    "train_task": "sentiment",
                    "train_set": "amazon",
                    "size": r["size"],
                    "method": r["method"],
                    "lr": 1e-4,
                    "epochs": 1,
                    "seed": 0,
                    "config": "{}",
                }
                for r in runs
            ],
            [row for row, _ in cells],
        )
        for r in runs:
            drift = {"rel_change": KL[r["key"]] / 100, "cosine": 1.0, "kl_mean": KL[r["key"]], "kl_per_task": {}}
            summary = {"records": r["size"], "steps": 2, "drift": drift}
            st.finish_run(r["key"], model_dir="x", manifest={}, summary=summary, seconds=1.0)
        for row, metrics in cells:
            st.finish_cell(row["key"], metrics=metrics, predictions=[], seconds=0.5)
    return out


def test_groups_follow_the_paper():
    d = type("R", (), {"train_task": "sentiment", "train_set": "amazon"})
    assert group_of(d, "sentiment", "amazon") == "ID"
    assert group_of(d, "sentiment", "sst2") == "OOD"
    assert group_of(d, "question", "socialqa") == "cross"


def test_tables_show_score_and_delta_vs_base_at_the_same_shots(study, tmp_path):
    r = write_report(study, tmp_path)
    md = (tmp_path / "main_table.md").read_text()
    assert "### Fine-tuned on sentiment (amazon), evaluated 0-shot" in md
    assert "### Fine-tuned on sentiment (amazon), evaluated k-shot" in md  # sentiment 2-shot, question 1-shot
    assert "| model | ID: amazon | OOD: sst2 | cross: question/socialqa | Δ ID | Δ OOD | Δ cross |" in md
    assert "| model | ID: amazon (2) | OOD: sst2 (2) | cross: question/socialqa (1) |" in md
    assert "| n=16 ft | 80.0 (+30.0) | 50.0 (+10.0) | 2.0 (-8.0) | +30.0 | +10.0 | -8.0 |" in md
    assert "| n=32 fticl | 116.0 (+56.0) | 73.0 (+28.0) | 16.0 (-4.0) | +56.0 | +28.0 | -4.0 |" in md  # k-shot
    assert "| base | 50.0 | 40.0 | 10.0 |" in md
    # FT vs FTICL: mean over sizes 16 and 32 (scale 1 and 2)
    fticl = (tmp_path / "ft_vs_fticl.md").read_text()
    assert "| 0-shot | ft | 2 | +45.0 | +15.0 | -12.0 |" in fticl
    assert "| 0-shot | fticl | 2 | +42.0 | +21.0 | -3.0 |" in fticl
    tex = (tmp_path / "main_table.tex").read_text()
    assert r"\multicolumn{1}{c}{in-domain} & \multicolumn{1}{c}{out-of-domain} & \multicolumn{1}{c}{cross-task}" in tex
    assert "n=16 ft & 80.0 (+30.0) & 50.0 (+10.0) & 2.0 (-8.0)" in tex
    assert r["html"] == tmp_path / "report.html"


def test_csvs_hold_the_numbers(study, tmp_path):
    write_report(study, tmp_path)
    cells = list(csv.DictReader(open(tmp_path / "cells.csv")))
    assert len(cells) == len(BASE) * 5
    row = next(
        c
        for c in cells
        if c["method"] == "fticl" and c["size"] == "32" and c["test_set"] == "socialqa" and c["shots"] == "1"
    )
    assert (row["group"], float(row["score"]), float(row["base_score"]), float(row["delta"])) == ("cross", 16, 20, -4)
    main = list(csv.DictReader(open(tmp_path / "main_table.csv")))
    assert len(main) == 2 * 5  # 2 settings x (base + 4 runs)
    ft16 = next(m for m in main if m["method"] == "ft" and m["size"] == "16" and m["setting"] == "0-shot")
    assert float(ft16["sentiment/amazon"]) == 80 and float(ft16["delta sentiment/amazon"]) == 30
    assert float(ft16["delta cross"]) == -8


def test_figures_and_self_contained_html(study, tmp_path):
    write_report(study, tmp_path)
    figures = ["heatmap_0-shot.png", "heatmap_k-shot.png", "size_curve.png", "ft_vs_fticl.png"]
    figures += ["drift_vs_delta.png", "sweeps.png"]
    for name in figures:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    page = (tmp_path / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len(figures)
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "<link" not in page and "<script" not in page
    assert "116.0 (+56.0)" in page


def test_drift_against_cross_task_delta_with_its_correlation(study, tmp_path):
    import numpy as np

    write_report(study, tmp_path)
    # cross-task deltas (socialqa) per run: ft -8 x scale, fticl -2 x scale; scale = size / 16
    cross = {"rft16": -8.0, "rft32": -16.0, "rfticl16": -2.0, "rfticl32": -4.0}
    keys = sorted(KL)
    r = np.corrcoef([KL[k] for k in keys], [cross[k] for k in keys])[0, 1]
    md = (tmp_path / "drift.md").read_text()
    assert f"| 0-shot | 4 | {r:+.2f} |" in md and f"| k-shot | 4 | {r:+.2f} |" in md
    assert "| sentiment n=32 ft | 0-shot | 0.007 | 0.7 | +60.0 | +20.0 | -16.0 |" in md
    assert "Drift from the base vs generalization" in (tmp_path / "report.html").read_text()
    d = StudyData(study)
    from ftgen.report import swept_params

    assert swept_params(d) == ["size"]


def test_cli_report_and_status(study, tmp_path):
    proc = run_cli("report", str(study), "--to", str(tmp_path / "r"))
    assert proc.returncode == 0, proc.stderr
    assert "Fine-tuned on sentiment (amazon), evaluated 0-shot" in proc.stdout
    assert f"report: {tmp_path / 'r' / 'report.html'}" in proc.stdout
    status = run_cli("status", str(study))
    assert status.returncode == 0 and "done" in status.stdout
    missing = run_cli("report", str(tmp_path / "nothing"))
    assert missing.returncode == 2 and "no study results here" in missing.stderr


def test_data_ignores_superseded_and_unfinished_cells(study, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(study, copy)
    with Store.open_writer(copy) as st:
        st.supersede("cells", ["rft16-0"])
        st.add([], [_cell("new", {"key": "rft16", "method": "ft", "size": 16}, "sentiment", "amazon", 0, 0)[0]])
    d = StudyData(copy)
    ft16 = next(r for r in d.run_rows if r.method == "ft" and r.size == 16)
    assert d.value(ft16, "sentiment", "amazon", (0, 0)) == (None, None)  # pending: not shown
    assert json.loads(json.dumps(d.counts))["cells"]["superseded"] == 1
