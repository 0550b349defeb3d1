"""The per-run analyses of a study, read back from its run directories for the report: layer profiles and
attention shares. Nothing is computed here: each training unit of the study measured them once, right after its
training, and kept them beside its model (keyed, resumable and skipped when done with the run itself):

    runs/<run>/drift.json       analysis.drift (on by default): weights, KL and CKA vs the base model, per layer;
                                a layer profile is a view of it (ftgen.analysis.layers.layer_profile)
    runs/<run>/attention.json   analysis.attention (off by default): the answer position's attention shares of
                                the base and the tuned model, k-shot, on the train task's in-domain test set

    profiles = study_layers(store)      # {"profiles": [...], "reading": compare_methods(...)}
    shares = study_attention(store)     # {"models": {label: result}, "reading": one sentence}

A run measured before its study asked for an analysis has no file: it is left out (the analyses are part of
the training unit, so they are not added to runs already trained).
"""

from __future__ import annotations

import json
from pathlib import Path

from ftgen.analysis.layers import compare_methods, layer_profile
from ftgen.store import Store


def _trained_runs(store: Store) -> list[dict]:
    """Done runs that trained a model (not interpolated models), in the study's order."""
    runs = []
    for row in store.rows("runs", "status = 'done'"):
        try:
            identity = json.loads(row["config"] or "{}")
        except ValueError:
            continue
        if isinstance(identity, dict) and identity.get("unit") == "train":
            runs.append(row)
    return runs


def _read(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # not measured (or a damaged file): the run is left out
    return data if isinstance(data, dict) else None


def _method(row: dict) -> str:
    """ft or fticl (the analyses' two method styles), from the run's fticl shots; a label would lose that."""
    identity = json.loads(row["config"])
    return "fticl" if (identity.get("train") or {}).get("fticl_shots") else "ft"


def study_layers(store: Store) -> dict:
    """Layer profiles of every trained run with a drift.json, and where FT and FTICL differ most."""
    profiles = []
    for row in _trained_runs(store):
        run_dir = store.run_dir(row)
        drift = _read(run_dir / "drift.json")
        if drift is None or "weights" not in drift:
            continue
        kind = "lora" if (json.loads(row["config"]).get("train") or {}).get("lora_r") else "full"
        profile = layer_profile(drift, label=run_dir.name, train_task=row["train_task"], method=_method(row), kind=kind)
        profiles.append(profile | {"run_key": row["key"], "study_method": row["method"]})
    return {"profiles": profiles, "reading": compare_methods(profiles) if profiles else None}


def study_attention(store: Store) -> dict:
    """Attention shares of every trained run with an attention.json, and of the base model on the same test
    sets (once per test set and shots), with a one-sentence reading of the examples' share."""
    models: dict[str, dict] = {}
    for row in _trained_runs(store):
        result = _read(store.run_dir(row) / "attention.json")
        if result is None or "tuned" not in result or "base" not in result:
            continue
        tuned, base = result["tuned"], result["base"]
        where = f"{tuned['task']}/{tuned['test_set']} {tuned['shots']}-shot"
        models.setdefault(f"base on {where}", base | {"method": None, "train_task": None})
        label = f"{store.run_dir(row).name}"
        models[label] = tuned | {"method": _method(row), "train_task": row["train_task"], "run_key": row["key"]}
    return {"models": models, "reading": _attention_sentence(models)}


def _attention_sentence(models: dict[str, dict]) -> str | None:
    """Mean share of the answer position's attention on the in-context examples, base vs FT vs FTICL."""
    groups: dict[str, list[float]] = {}
    for r in models.values():
        groups.setdefault((r["method"] or "base").upper(), []).append(r["mean"]["examples"])
    if not groups:
        return None
    parts = [f"{name} {sum(v) / len(v):.3f}" for name, v in sorted(groups.items(), key=lambda kv: kv[0] != "BASE")]
    return "Share of the answer position's attention on the in-context examples (mean over layers): " + ", ".join(parts)
