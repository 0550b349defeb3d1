"""`ftgen export OUT`: a study's results as plain files any tool reads, beside its SQLite store.

    OUT/export/results.json       the study, provenance, runs and cells (schema: ftgen/schemas/results.schema.json)
    OUT/export/<model>/<test_task>/<test_set>/shots<k>_fmt<f>/predictions.jsonl   one line per scored record
                                                                  .../metrics.json   the cell's metrics

`<model>` is the run's directory name (ftgen.store.run_dir_name) or `base-<model>`: the same layout as
`ftgen eval --out`, one level per model and task above it. A prediction line holds the record's id, the hash
of its full prompt, its input fields (read back from the test file the cell read, when that file is still
there with the same sha256; else `input` is null and the cell says why), the gold answer, the prediction,
the per-label scores (classification) or the generated text (generation), and the record's own score under
the cell's metric (null for BLEU, a corpus metric). The whole export is written into a temp directory and
renamed into place: a reader sees the old export or the new one.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

from ftgen import __version__
from ftgen.checkpoint import atomic_dir
from ftgen.errors import UserError
from ftgen.store import CELL_COORDS, RUN_COORDS, Store
from ftgen.study_files import name_part, run_dir_name

SCHEMA_FILE = Path(__file__).parent / "schemas" / "results.schema.json"
FORMAT_VERSION = 1  # of results.json; its schema's `format_version` const


def schema() -> dict:
    """The JSON Schema of results.json (shipped with the package)."""
    return json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))


def _iso(t: float | None) -> str | None:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat(timespec="seconds") if t else None


def _json(text: str | None) -> Any:
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


def _line(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False)


def model_part(cell: dict) -> str:
    """The folder of a cell's model in the export: its run's directory name, or `base-<model>`."""
    if cell["run_key"] is None:
        return "base-" + name_part(Path(str(cell["model"]).rstrip("/")).name)
    return run_dir_name(cell, cell["run_key"])


class _Inputs:
    """The input fields of the records a cell scored, read back from its test file when that file is unchanged
    (its sha256 equals the one in the cell's identity). Each file is read once per export."""

    def __init__(self, data_dir: Path | None):
        self.data_dir = data_dir
        self._sets: dict[tuple, tuple[dict | None, str]] = {}

    def __call__(self, identity: dict) -> tuple[dict | None, str]:
        """({record id: input fields} or None, "included" or why not)."""
        from ftgen.tasks import TaskDef

        key = (identity.get("task"), identity.get("test_set"), identity.get("limit"), identity.get("skip_invalid"))
        if key not in self._sets:
            try:
                task = TaskDef.model_validate(identity["task_def"])
                self._sets[key] = self._read(task, identity)
            except (KeyError, ValueError, OSError, UserError) as e:
                self._sets[key] = None, f"not included: {str(e).splitlines()[0][:200]}"
        return self._sets[key]

    def _read(self, task, identity: dict) -> tuple[dict | None, str]:
        from ftgen.data import load_test_set
        from ftgen.plan import FileHashes

        if self.data_dir is None:
            return None, "not included: no data directory known (give --data-dir)"
        ds = load_test_set(
            self.data_dir, task, identity["test_set"], limit=identity["limit"], skip_invalid=identity["skip_invalid"]
        )
        if FileHashes()(ds.source) != (identity.get("data") or {}).get("test"):
            return None, f"not included: {ds.source} is not the file the cell read (its sha256 differs)"
        return {str(r["id"]): {f: r[f] for f in task.fields} for r in ds.records}, "included"


def _record_scores(cell: dict, identity: dict, predictions: list[dict]) -> list[float | None]:
    from ftgen import metrics as M

    task = identity.get("task_def") or {}
    try:
        golds = [p["gold"] for p in predictions]
        preds = [p.get("generated", p["prediction"]) for p in predictions]
        return M.per_record_scores(task.get("kind"), cell["metric"], preds, golds, bool(task.get("rouge_stem")))
    except (KeyError, ValueError):  # BLEU (a corpus metric) or an unknown kind: no per-record score
        return [None] * len(predictions)


def _records(cell: dict, identity: dict, predictions: list[dict]):
    """The cell's per-record values as `ftgen report` scores them (ftgen.stats); None when not scorable."""
    from ftgen import stats

    task = identity.get("task_def") or {}
    try:
        ids = [p["id"] for p in predictions]
        preds, golds = [str(p["prediction"]) for p in predictions], [str(p["gold"]) for p in predictions]
        stem = bool(task.get("rouge_stem"))
        return stats.cell_records(task.get("kind"), cell["metric"], ids, preds, golds, stem) if predictions else None
    except (KeyError, TypeError, ValueError):
        return None


def _intervals(metric: str | None, records, base_records) -> dict:
    """95% intervals of a cell's score and of its paired change vs the base (ftgen.stats, seeded: the report's)."""
    from ftgen import stats

    out: dict = dict.fromkeys(("ci_low", "ci_high", "delta_ci_low", "delta_ci_high"))
    try:
        if records is not None:
            e = stats.score_interval(metric, records)
            out |= {"ci_low": e.low, "ci_high": e.high}
        if records is not None and base_records is not None:
            d = stats.paired_difference(records, base_records)
            out |= {"delta_ci_low": d.low, "delta_ci_high": d.high}
    except ValueError:  # no record in common with the base, or nothing to resample
        pass
    return out


def _prediction_lines(cell: dict, identity: dict, predictions: list[dict], inputs: dict | None) -> list[dict]:
    scores = _record_scores(cell, identity, predictions)
    lines = []
    for p, score in zip(predictions, scores, strict=True):
        line = {"id": p.get("id"), "prompt_hash": p.get("prompt_hash")}
        line["input"] = inputs.get(str(p.get("id"))) if inputs is not None else None
        line |= {"gold": p.get("gold"), "prediction": p.get("prediction")}
        line |= {k: p[k] for k in ("scores", "logprobs", "generated", "truncated") if k in p}
        line |= {"metric": cell["metric"], "score": score}
        lines.append(line)
    return lines


def _run_entry(store: Store, r: dict) -> dict:
    identity = _json(r["config"]) or {}
    summary = _json(r["summary"])
    folder = store.run_dir(r)
    kept = r["status"] == "done" and not r.get("model_deleted") and (folder / "model").is_dir()
    return {
        "key": r["key"],
        "name": folder.name,
        "dir": str(folder.relative_to(store.out_dir)),
        **{c: r[c] for c in RUN_COORDS},
        "status": r["status"],
        "error": r["error"],
        "seconds": r["seconds"],
        "started": _iso(r["started"]),
        "finished": _iso(r["finished"]) if r["status"] in ("done", "failed") else None,
        "host": r["host"],
        "model_kept": kept,
        "config": identity.get("train"),
        "data": identity.get("data"),
        "summary": {k: v for k, v in summary.items() if k != "config"} if isinstance(summary, dict) else None,
    }


def _cell_entry(c: dict, base: dict | None, predictions_path: str | None, inputs: str, intervals: dict) -> dict:
    identity = _json(c["config"]) or {}
    params = {k: v for k, v in identity.items() if k not in ("unit", "rules", "model", "task_def", "data")}
    base_score = base["score"] if base is not None and base["status"] == "done" else None
    score = c["score"] if c["status"] == "done" else None
    delta = score - base_score if score is not None and base_score is not None and c["run_key"] else None
    return {
        "key": c["key"],
        "run_key": c["run_key"],
        "model_dir_name": model_part(c),
        **{k: c[k] for k in RUN_COORDS},
        **{k: c[k] for k in CELL_COORDS},
        "status": c["status"],
        "error": c["error"],
        "metric": c["metric"] if c["status"] == "done" else None,
        "score": score,
        "n": c["n"] if c["status"] == "done" else None,
        "base_score": base_score,
        "delta": delta,
        **(intervals if c["run_key"] else intervals | {"delta_ci_low": None, "delta_ci_high": None}),
        "seconds": c["seconds"],
        "host": c["host"],
        "params": params,
        "data": identity.get("data"),
        "metrics": _json(c["metrics"]) if c["status"] == "done" else None,
        "predictions": predictions_path,
        "inputs": inputs,
    }


def _provenance(store: Store, runs: list[dict], cells: list[dict]) -> dict:
    meta = store.meta()
    rows = runs + cells
    rules = sorted({(_json(r["config"]) or {}).get("rules") for r in rows} - {None})
    started = [r["started"] for r in rows if r["started"]]
    finished = [r["finished"] for r in rows if r["finished"] and r["status"] == "done"]
    return {
        "ftgen_version_study": meta.get("ftgen_version"),
        "ftgen_version_export": __version__,
        "store_schema_version": int(meta.get("schema_version", 0)),
        "result_rules": rules,
        "hosts": sorted({r["host"] for r in rows if r["host"]}),
        "first_started": _iso(min(started)) if started else None,
        "last_finished": _iso(max(finished)) if finished else None,
        "exported_at": _iso(dt.datetime.now(dt.timezone.utc).timestamp()),
    }


def find_data_dir(store: Store, data_dir: str | Path | None, fallback: str | Path | None) -> Path | None:
    """Where the study's test files are now: `data_dir`, else where the study read them, else `fallback` (default
    FTGEN_DATA_DIR): the first of these that is a directory."""
    env = os.environ.get("FTGEN_DATA_DIR") or None
    for candidate in (data_dir, store.meta().get("data_dir"), fallback or env):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


def build_export(
    store: Store, data_dir: str | Path | None = None, fallback: str | Path | None = None
) -> tuple[dict, dict[str, list[dict]]]:
    """(results.json's content, {relative path: (prediction lines, metrics)}) of the store's live rows."""
    meta = store.meta()
    read_inputs = _Inputs(find_data_dir(store, data_dir, fallback))
    with store.readable():
        runs = store.rows("runs", "status != 'superseded'")
        cells = store.rows("cells", "status != 'superseded'")
    base = {(c["model"], *(c[k] for k in CELL_COORDS)): c for c in cells if c["run_key"] is None}
    files: dict[str, list[dict]] = {}
    found: dict[str, tuple[str | None, str]] = {}  # cell key -> (path of its predictions, inputs)
    records: dict[str, object] = {}  # cell key -> its per-record values (stats.Records) when scorable
    for c in cells:
        identity = _json(c["config"]) or {}
        path, inputs = None, "not included: the cell is not done"
        if c["status"] == "done":
            predictions = store.predictions(c["key"]) or []
            by_id, inputs = read_inputs(identity)
            path = f"{model_part(c)}/{name_part(c['test_task'])}/{name_part(c['test_set'])}"
            path += f"/shots{c['shots']}_fmt{c['fmt']}"
            files[path] = [_prediction_lines(c, identity, predictions, by_id), _json(c["metrics"])]
            path += "/predictions.jsonl"
            records[c["key"]] = _records(c, identity, predictions)
        found[c["key"]] = path, inputs
    cell_entries = []
    for c in cells:
        b = base.get((c["model"], *(c[k] for k in CELL_COORDS)))
        intervals = _intervals(c["metric"], records.get(c["key"]), records.get(b["key"]) if b else None)
        cell_entries.append(_cell_entry(c, b, *found[c["key"]], intervals))
    results = {
        "format_version": FORMAT_VERSION,
        "study": {
            "name": meta.get("study"),
            "config": _json(meta.get("config")),
            "data_dir": meta.get("data_dir"),
            "out_dir": str(store.out_dir.absolute()),
        },
        "provenance": _provenance(store, runs, cells),
        "counts": store.counts(),
        "runs": [_run_entry(store, r) for r in runs],
        "cells": cell_entries,
    }
    return results, files


def write_export(
    store: Store, to: str | Path, data_dir: str | Path | None = None, fallback: str | Path | None = None
) -> dict:
    """Write results.json and every done cell's predictions.jsonl and metrics.json under `to`, atomically as a
    whole (the old export, if any, is replaced). `data_dir` / `fallback`: see find_data_dir. Returns
    {"dir", "cells", "records"}."""
    results, files = build_export(store, data_dir, fallback)
    to = Path(to)
    with atomic_dir(to) as tmp:  # a temp dir renamed into place (fsynced, modes per the umask): plain writes inside
        for path, (lines, metrics) in files.items():
            (tmp / path).mkdir(parents=True, exist_ok=True)
            (tmp / path / "predictions.jsonl").write_text("".join(_line(x) + "\n" for x in lines), encoding="utf-8")
            (tmp / path / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
        (tmp / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return {"dir": str(to), "cells": len(files), "records": sum(len(lines) for lines, _ in files.values())}
