"""Where fine-tuning acts, for the report: the layer profiles and attention shares each training run of the study
measured right after training (ftgen.analysis.study_analyses reads them back from the run directories), with a
one-sentence reading of each. Nothing is computed on a model here; a study without drift.json / attention.json
files has no such section.

    acts = where_it_acts(out)   # {"profiles": [...], "layers": sentence | None, "attention": {...}, ...}
"""

from __future__ import annotations

from ftgen.store import Store


def where_it_acts(out) -> dict:
    """Layer profiles and attention shares of the study in `out`, each with its reading (None when not measured)."""
    from ftgen.analysis.study_analyses import study_attention, study_layers  # torch: only when the report has runs

    with Store.open_reader(out) as store, store.readable():
        if not store.rows("runs", "status = 'done'"):
            return {"profiles": [], "layers": None, "attention": {}, "attention_reading": None}
        layers, attention = study_layers(store), study_attention(store)
    profiles = layers["profiles"]
    return {
        "profiles": profiles,
        "layers": layers_sentence(profiles, layers["reading"]) if profiles else None,
        "comparison": layers["reading"],
        "attention": attention["models"],
        "attention_reading": attention["reading"] if attention["models"] else None,
    }


def _top_layers(profiles: list[dict], top: int = 3) -> list[int]:
    """The layers with the largest mean |ΔW| averaged over the profiles (same depth)."""
    depth = min(len(p["layers"]) for p in profiles)
    mean = [sum(p["layers"][i]["mean_abs_change"] for p in profiles) / len(profiles) for i in range(depth)]
    return sorted(range(depth), key=lambda i: (-mean[i], i))[:top]


def layers_sentence(profiles: list[dict], comparison: dict) -> str:
    """compare_methods's sentence when the study has FT and FTICL runs; else, per method, where the weights
    change most and where the cross-task CKA to the base is lowest."""
    if "weights" in comparison:
        return comparison["sentence"]
    parts = []
    for method in dict.fromkeys(p["method"] for p in profiles):
        mine = [p for p in profiles if p["method"] == method]
        depth = min(len(p["layers"]) for p in mine)
        text = (
            f"{(method or '?').upper()} ({len(mine)} run{'s' if len(mine) > 1 else ''}, {depth} layers) changes the "
            f"weights most in layers {', '.join(map(str, _top_layers(mine)))} (mean |ΔW|)"
        )
        cross = [(p.get("cka") or {}).get("cross_task") for p in mine]
        if all(cross):
            mean = [sum(c[i] for c in cross) / len(cross) for i in range(min(map(len, cross)))]
            low = min(range(len(mean)), key=lambda i: (mean[i], i))
            text += f"; its cross-task CKA to the base is lowest at layer {low} ({mean[low]:.3f})"
        parts.append(text)
    return "; ".join(parts) + " (no FT / FTICL comparison: the study trains one method)."
