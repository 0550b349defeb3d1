"""Where a study's numbers come from: the model (resolved, with its path and fingerprint), the study YAML, the
versions, device and dtype its units recorded when they ran (ftgen.environment), the dates, and per test set its
metric, scoring rule and n (scored and dropped), plus the training hyper-parameters. `provenance.json` and the
top of report.html.

A store written before ftgen recorded these says "not recorded" for them rather than guessing.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter

from ftgen.environment import versions
from ftgen.files import read_text
from ftgen.report.table import INTERVALS, Table
from ftgen.report.view import SCORING
from ftgen.store import canonical_json

NOT_RECORDED = "not recorded (a store written before ftgen recorded it)"
TRAIN_FIELDS = ("lr", "epochs", "batch_size", "max_length", "lr_schedule", "warmup_ratio", "weight_decay", "dtype")
TRAIN_FIELDS += ("lora_r", "fticl_shots", "train_size", "seed", "max_grad_norm")


def _iso(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(t)) if t else "unknown"


def _distinct(values: list) -> list:
    """Each distinct value once, in order of first appearance (dicts compared by content)."""
    seen = {}
    for v in values:
        if v is not None:
            seen.setdefault(canonical_json(v), v)
    return list(seen.values())


def _base_models(t: Table) -> list[dict]:
    """Each base model as its cells recorded it (resolved name, path, fingerprint), or by name only."""
    recorded = [c.environment.get("model") for c in t.view.cells if c.row.run_key is None and c.environment]
    recorded += [(r.summary.get("environment") or {}).get("base_model") for r in t.view.runs.values()]
    found = _distinct(recorded)
    names = {m["name"] for m in found if isinstance(m, dict)}
    missing = sorted({m.model for m in t.models} - names)
    return found + [{"name": n, "resolved": NOT_RECORDED} for n in missing]


def _trained_models(t: Table) -> list[dict]:
    out = []
    for m in t.models:
        for key, seed in zip(m.run_keys, m.seeds, strict=True):
            run = t.view.runs[key]
            digest = hashlib.sha256(canonical_json(run.manifest).encode()).hexdigest() if run.manifest else None
            out.append(
                {
                    "run": t.label(m),
                    "seed": seed,
                    "key": key,
                    "status": run.status,
                    "model_dir": str(run.run_dir / "model") if run.run_dir else None,
                    "sha256": digest,  # of the manifest (file -> sha256) recorded when the run finished
                    "device": run.summary.get("device"),
                    "compute_dtype": run.summary.get("compute_dtype"),
                }
            )
    return out


def _test_sets(t: Table) -> list[dict]:
    out = []
    for test in t.test_sets:
        cells = [c for c in t.view.cells if c.test == test]
        done = [c for c in cells if c.done]
        config = cells[0].config if cells else {}
        metric = next((c.metric for c in done), None) or t.view.task_def(test.task).get("metric")
        rule = config.get("scoring") if t.view.task_def(test.task).get("kind") == "classification" else None
        out.append(
            {
                "task": test.task,
                "set": test.name,
                "metric": metric,
                "definition": SCORING.get(metric, metric),
                "scoring_rule": rule
                or (f"greedy, at most {config['max_new_tokens']} new tokens" if config.get("max_new_tokens") else None),
                "limit": config.get("limit"),
                "n_scored": sorted(Counter(c.records.n for c in done)),
                "n_dropped": sorted(Counter(c.n_dropped for c in done)),
                "cells_done": len(done),
                "cells": len(cells),
            }
        )
    return out


def _training(t: Table) -> dict:
    """Every training option's distinct values over the study's runs (lr, epochs, batch, ...)."""
    runs = [r.train for r in t.view.runs.values() if r.train]
    values = {f: _distinct([r.get(f) for r in runs]) for f in TRAIN_FIELDS}
    return {f: v for f, v in values.items() if v}


def _runtime(t: Table) -> dict:
    envs = [c.environment for c in t.view.cells if c.environment]
    train = [r.summary for r in t.view.runs.values() if r.summary]
    return {
        "evaluation": _distinct([{k: e.get(k) for k in ("device", "device_name", "dtype", "host")} for e in envs])
        or NOT_RECORDED,
        "training": _distinct([{"device": s.get("device"), "compute_dtype": s.get("compute_dtype")} for s in train])
        or NOT_RECORDED,
        "versions": _distinct(
            [e.get("versions") for e in envs] + [(s.get("environment") or {}).get("versions") for s in train]
        )
        or NOT_RECORDED,
    }


def provenance(t: Table) -> dict:
    """Everything `provenance.json` holds (see the module docstring)."""
    view = t.view
    yaml_path = view.out / "study.yaml"
    limits = _distinct([c.config.get("limit") for c in view.cells]) or ["all"]
    return {
        "study": view.name,
        "status": view.banner() or "complete",
        "report_written": _iso(time.time()),
        "study_ran": {"first_start": _iso(view.ran[0]), "last_finish": _iso(view.ran[1])},
        "base_models": _base_models(t),
        "trained_models": _trained_models(t),
        "runtime": _runtime(t),
        "report_versions": versions(),
        "training": _training(t),
        "evaluation": {"limit": limits, "prompt_formats": t.fmts, "data_dir": view.meta.get("data_dir")},
        "test_sets": _test_sets(t),
        "scores": (
            "recomputed from each cell's stored predictions with the current metric definitions "
            f"({view.recomputed_differences()} done cells differ from their stored score)"
        ),
        "intervals": INTERVALS,
        "study_yaml": read_text(yaml_path) if yaml_path.is_file() else None,
        "config": view.config,
    }


def to_json(p: dict) -> str:
    return json.dumps(p, indent=2, ensure_ascii=False) + "\n"
