"""End-to-end facts of a real study, checked against its config and the data files, not against another run of
itself: what each training run trained on (its FTICL examples, its records), what each cell evaluated (its shots,
its records, its prompts) and that its score is the metric over the predictions it stored. Then the checks that
must fail: `ftgen status --check` on copies of that study, each damaged one way.

The study is real (training, evaluation, the store) on a tiny random-weight Llama: it takes seconds."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
from pathlib import Path

import pytest
import yaml
from test_train import make_tiny_model

from ftgen.study_files import run_dir
from helpers import run_cli_inprocess

LIMIT = 30  # multinli's raw record 27 has no gold label ('-'): a cell of n = 29
FTICL_K = 1  # not sentiment's default k (2): the method's own k must reach the trainer
SHOTS = {"sentiment": [0, 2], "inference": [0, 3], "question": [0]}
TEST_SETS = {"sentiment": ["sst2"], "inference": ["multinli"], "question": ["socialqa"]}
N_CELLS = 3 * sum(len(TEST_SETS[t]) * len(SHOTS[t]) for t in TEST_SETS)  # the base model and 2 trained ones
LABELS = {"sentiment": ["positive", "negative"], "inference": ["entailment", "neutral", "contradiction"]}


def study_config(model: Path) -> dict:
    return {
        "name": "facts",
        "models": [str(model)],
        "train": [{"task": "sentiment", "sizes": [8]}],
        "methods": [{"name": "ft"}, {"name": "fticl", "shots": FTICL_K, "lora_r": 4}],
        "hyper": {"lr": [1e-3], "epochs": [1], "seeds": [0]},
        "train_args": {"batch_size": 4, "micro_batch_size": 4, "max_length": 256, "dtype": "fp32"},
        "eval": {
            "test_sets": TEST_SETS,
            "shots": SHOTS,
            "limit": LIMIT,
            "max_new_tokens": {"question": 6},
            "scoring": "first-token",
            "dtype": "fp32",
        },
        "analysis": {"drift": False},
    }


@pytest.fixture(scope="module")
def study(paper_data, tmp_path_factory):
    """(out dir, config) of the finished tiny study (run in this process with the real units)."""
    from ftgen.study import run_study

    tmp = tmp_path_factory.mktemp("facts")
    model = make_tiny_model(tmp / "tiny-llama")
    cfg = study_config(model)
    (tmp / "facts.yaml").write_text(yaml.safe_dump(cfg))
    mp = pytest.MonkeyPatch()
    mp.setenv("FTGEN_CACHE", str(tmp / "cache"))  # the calibration this study writes stays in the test's cache
    try:
        summary = run_study(tmp / "facts.yaml", tmp / "out", data_dir=paper_data)
    finally:
        mp.undo()
    assert (summary["runs"]["done"], summary["cells"]["done"]) == (2, N_CELLS), summary
    return tmp / "out", cfg


def _rows(out: Path, table: str) -> list[dict]:
    conn = sqlite3.connect(f"file:{out / 'results.sqlite'}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    rows = [dict(r) for r in conn.execute(f"SELECT * FROM {table}")]
    conn.close()
    return rows


def _raw(paper_data: Path, task: str, name: str) -> list[dict]:
    """The records of a data file, each with its id: its `idx`, else its position in the file."""
    rows = json.loads((paper_data / task / name).read_text())
    return [{**r, "idx": str(r["idx"]) if r.get("idx") is not None else str(i)} for i, r in enumerate(rows)]


def _kept(raw: list[dict], task: str, limit: int) -> list[dict]:
    """The first `limit` raw records, less those without a usable gold label or with an empty text."""
    fields = [f for f in raw[0] if f not in ("idx", "output")]
    labels = LABELS.get(task)
    return [
        r for r in raw[:limit] if all(str(r[f]).strip() for f in fields) and (labels is None or r["output"] in labels)
    ]


def test_training_runs_used_the_examples_their_config_asks_for(study, paper_data):
    out, cfg = study
    pool_ids = [r["idx"] for r in _raw(paper_data, "sentiment", "few_shot/amazon_few_shot.json")]
    runs = {r["method"]: r for r in _rows(out, "runs")}
    assert set(runs) == {"ft", "fticl+lora"}
    for method, k in (("ft", 0), ("fticl+lora", FTICL_K)):
        row = runs[method]
        summary, identity = json.loads(row["summary"]), json.loads(row["config"])
        assert summary["fticl_shots"] == pool_ids[:k]  # the first k of the train set's pool, as the config says
        assert summary["config"]["fticl_shots"] == identity["train"]["fticl_shots"] == k
        assert summary["records"] == 8 and summary["train_set"] == "amazon"
        assert summary["kind"] == ("lora" if k else "full")
        assert summary["steps"] == 2 and summary["config"]["lr"] == cfg["hyper"]["lr"][0]
        assert summary["train_source"].endswith("sentiment/amazon_train_2000.json")  # the smallest file >= 8
    # FTICL prompts are longer by the examples: more tokens per epoch for the same answers
    ft, fticl = (json.loads(runs[m]["summary"]) for m in ("ft", "fticl+lora"))
    assert fticl["response_tokens_per_epoch"] == ft["response_tokens_per_epoch"]
    assert fticl["tokens"] > ft["tokens"]


def _expected_prompt(paper_data: Path, task: str, record: dict, shots: list[dict]) -> str:
    """The README's prompt rule on the paper's own template (prompt_map.json, format 0)."""
    template = json.loads((paper_data / "prompt_map.json").read_text())[0][task]
    context = "".join(template.format(**s) + " " + s["output"] + "\n\n" for s in shots)
    return context + template.format(**record)


def test_each_cell_evaluated_what_its_config_asks_for(study, paper_data):
    """Shot ids = the first k of the test set's own pool; n = the records left of `limit`; the prompts hashed
    as the README's rule builds them from those records and shots."""
    out, _ = study
    cells = _rows(out, "cells")
    preds = {r["cell_key"]: json.loads(r["rows"]) for r in _rows(out, "predictions")}
    assert len(cells) == len(preds) == N_CELLS
    for cell in cells:
        task, test_set, k = cell["test_task"], cell["test_set"], cell["shots"]
        metrics = json.loads(cell["metrics"])
        raw = _raw(paper_data, task, f"{test_set}_test_500.json")
        pool = _raw(paper_data, task, f"few_shot/{test_set}_few_shot.json")
        kept = _kept(raw, task, LIMIT)
        assert metrics["shot_ids"] == [r["idx"] for r in pool[:k]], cell["slot"]
        assert metrics["shots"] == k and metrics["data"]["raw"] == LIMIT
        assert cell["n"] == metrics["n"] == len(kept) == len(preds[cell["key"]]), cell["slot"]
        assert [p["id"] for p in preds[cell["key"]]] == [r["idx"] for r in kept]
        assert metrics["scoring"] == ("first-token" if task in LABELS else None)
        for p, r in zip(preds[cell["key"]], kept, strict=True):
            assert p["gold"] == r["output"]
            if not p["truncated"]:
                text = _expected_prompt(paper_data, task, r, pool[:k])
                assert p["prompt_hash"] == hashlib.sha256(text.encode()).hexdigest()[:16], cell["slot"]
    multinli = [c for c in cells if c["test_set"] == "multinli"]
    assert {c["n"] for c in multinli} == {LIMIT - 1}  # record 27's '-' dropped and counted
    assert all(json.loads(c["metrics"])["data"]["ignored"] == 1 for c in multinli)


def test_each_cell_score_is_its_metric_over_its_stored_predictions(study):
    from rouge_score import rouge_scorer

    out, _ = study
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    preds = {r["cell_key"]: json.loads(r["rows"]) for r in _rows(out, "predictions")}
    for cell in _rows(out, "cells"):
        rows = preds[cell["key"]]
        if cell["test_task"] in LABELS:
            for p in rows:  # the prediction is the label its stored scores rank first (ties: task order)
                best = max(p["scores"].values())
                assert p["prediction"] == next(lab for lab in LABELS[cell["test_task"]] if p["scores"][lab] == best)
            expected = 100 * sum(p["prediction"] == p["gold"] for p in rows) / len(rows)
            assert cell["metric"] == "accuracy"
        else:
            expected = sum(100 * scorer.score(p["gold"], p["prediction"])["rougeL"].fmeasure for p in rows) / len(rows)
            assert cell["metric"] == "rouge_l"
        assert cell["score"] == pytest.approx(expected), cell["slot"]


def test_stored_log_probs_are_those_of_the_model_the_cell_names(study, paper_data):
    """The 2-shot sst2 cell of each model recomputed here: its model loaded from where the study saved it, in the
    cell's dtype (fp32), on the cell's records and shots: the stored log-probs are that model's. The trained
    models moved away from the base: a cell that evaluated another model, or in another dtype, would not match."""
    from ftgen.data import load_pool, load_test_set
    from ftgen.evaluate import evaluate
    from ftgen.models import load_model
    from ftgen.tasks import load_task

    out, cfg = study
    preds = {r["cell_key"]: json.loads(r["rows"]) for r in _rows(out, "predictions")}
    task = load_task("sentiment")
    records = load_test_set(paper_data, task, "sst2", limit=LIMIT).records
    shots = load_pool(paper_data, task, "sst2").records[:2]
    logprobs = {}
    runs = {r["key"]: r for r in _rows(out, "runs")}
    for cell in _rows(out, "cells"):
        if (cell["test_set"], cell["shots"]) != ("sst2", 2):
            continue
        model_dir = cfg["models"][0] if cell["run_key"] is None else run_dir(out, runs[cell["run_key"]]) / "model"
        model, tok = load_model(str(model_dir), dtype="fp32")
        again = evaluate(model, tok, task, records, shots=shots, scoring="first-token").predictions
        stored = preds[cell["key"]]
        assert [p["prediction"] for p in stored] == [p["prediction"] for p in again], cell["slot"]
        for p, q in zip(stored, again, strict=True):
            assert p["logprobs"] == pytest.approx(q["logprobs"], abs=1e-5), cell["slot"]
        logprobs[cell["method"]] = [lp for p in stored for lp in p["logprobs"].values()]
    assert set(logprobs) == {"base", "ft", "fticl+lora"}
    for method in ("ft", "fticl+lora"):
        assert max(abs(a - b) for a, b in zip(logprobs[method], logprobs["base"], strict=True)) > 1e-3, method


# ---------------------------------------------------------------- checks that must fail


def _damaged_copy(study, tmp_path: Path) -> Path:
    out, _ = study
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    return copy


def _sql(out: Path, *statements: str) -> None:
    conn = sqlite3.connect(out / "results.sqlite")
    for s in statements:
        conn.execute(s)
    conn.commit()
    conn.close()


def _flip_a_byte(out: Path, kind: str) -> None:
    (run,) = [r for r in _rows(out, "runs") if json.loads(r["summary"])["kind"] == kind]
    weights = sorted((run_dir(out, run) / "model").glob("*.safetensors"))
    assert weights, run["key"]
    data = bytearray(weights[0].read_bytes())
    data[len(data) // 2] ^= 0x01
    weights[0].write_bytes(bytes(data))


def _drop_one_prediction(out: Path) -> None:
    (key, rows) = next((r["cell_key"], r["rows"]) for r in _rows(out, "predictions"))
    kept = json.dumps(json.loads(rows)[1:]).replace("'", "''")
    _sql(out, f"UPDATE predictions SET rows='{kept}' WHERE cell_key='{key}'")


def _second_live_run_row(out: Path) -> None:
    """A copy of a live run row under another key, its unique index dropped: every column but the key copied,
    whatever columns the table has now."""
    columns = [r["name"] for r in _rows(out, "pragma_table_info('runs')")]
    values = ", ".join("'x' || key" if c == "key" else c for c in columns)
    _sql(out, "DROP INDEX runs_live_slot", f"INSERT INTO runs ({', '.join(columns)}) SELECT {values} FROM runs LIMIT 1")


DAMAGE = {
    "byte-flip-full-model": (lambda out: _flip_a_byte(out, "full"), "differ from those recorded"),
    "byte-flip-lora-adapter": (lambda out: _flip_a_byte(out, "lora"), "differ from those recorded"),
    "model-deleted": (
        lambda out: shutil.rmtree(next(out.glob("runs/*/model"))),
        "its model",
    ),
    "predictions-row-deleted": (
        lambda out: _sql(out, "DELETE FROM predictions WHERE rowid = (SELECT MIN(rowid) FROM predictions)"),
        "done without its predictions",
    ),
    "one-prediction-deleted": (_drop_one_prediction, "predictions for n="),
    "score-lost": (
        lambda out: _sql(out, "UPDATE cells SET score=NULL WHERE rowid = (SELECT MAX(rowid) FROM cells)"),
        "done without its score",
    ),
    "second-live-run-row": (_second_live_run_row, "runs: 2 live rows for one slot"),
}


def test_status_check_passes_on_the_study_as_it_was_written(study, capsys):
    out, _ = study
    result = run_cli_inprocess(capsys, "status", str(out), "--check")
    assert result.returncode == 0 and "check: ok (store integrity, 2 saved models match" in result.stdout


@pytest.mark.parametrize("how", list(DAMAGE))
def test_status_check_fails_on_a_damaged_study(study, tmp_path, capsys, how):
    damage, needle = DAMAGE[how]
    copy = _damaged_copy(study, tmp_path)
    assert run_cli_inprocess(capsys, "status", str(copy), "--check").returncode == 0  # the copy itself is sound
    damage(copy)
    result = run_cli_inprocess(capsys, "status", str(copy), "--check")
    problems = [line for line in result.stdout.splitlines() if line.startswith("check: PROBLEM:")]
    assert result.returncode == 1 and problems, result.stdout
    assert any(needle in p for p in problems), problems
    assert "Traceback" not in result.stdout + result.stderr
