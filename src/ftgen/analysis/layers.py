"""Where in the network fine-tuning acts: weight drift and hidden-state similarity per transformer layer.

A layer profile of a run holds, per transformer layer, the mean |ΔW| and the relative change of the whole
layer, of each module type (q/k/v/o_proj, gate/up/down_proj, the norms) and of each module family
(attention, MLP, norm); the parameters outside the layers (embeddings, final norm, LM head) apart; and the
linear CKA between base and tuned hidden states at the output of each layer, on the probe records of the
run's train task (`in_domain`) and of the other tasks (`cross_task`: the mean of the per-task CKAs, each
task weighted equally). It is a view of an `analyze_drift` result (ftgen.analysis.drift), so a study that
stored a run's drift.json gets the profile without another forward pass.

`compare_methods` reads a set of profiles: in which layers FT and FTICL differ most.
"""

from __future__ import annotations

import math
from pathlib import Path

from ftgen.analysis.common import METHOD_STYLE, ModelCache, method_colors, pyplot, run_info, save_figure
from ftgen.analysis.drift import analyze_drift
from ftgen.files import atomic_write_json, atomic_write_text
from ftgen.tasks import TaskDef

FAMILIES = ("attention", "mlp", "norm", "embedding", "head", "other")


def module_family(mtype: str) -> str:
    """attention / mlp / norm / embedding / head / other, from a module type name of the common architectures."""
    name = mtype.lower()
    if "norm" in name or name.startswith("ln"):
        return "norm"
    if "embed" in name or name in ("wte", "wpe"):
        return "embedding"
    if name in ("lm_head", "embed_out", "output"):
        return "head"
    if name in ("q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj", "c_attn", "query_key_value", "dense") or (
        "attn" in name or "attention" in name
    ):
        return "attention"
    if name in ("gate_proj", "up_proj", "down_proj", "gate_up_proj", "c_fc", "fc1", "fc2", "w1", "w2", "w3"):
        return "mlp"
    if "mlp" in name or "dense_h_to_4h" in name or "dense_4h_to_h" in name:
        return "mlp"
    return "other"


def _merge(summaries: list[dict]) -> dict:
    """Drift of a union of groups from their summaries (weights by parameter count; norms are not needed)."""
    params = sum(s["params"] for s in summaries)
    return {
        "mean_abs_change": sum(s["mean_abs_change"] * s["params"] for s in summaries) / params if params else 0.0,
        "params": params,
    }


def layer_profile(drift: dict, *, label: str, train_task: str | None, method: str | None, kind: str | None) -> dict:
    """The layer profile (see the module doc) of an `analyze_drift` result."""
    w = drift["weights"]
    layers = []
    for entry, modules in zip(w["per_layer"], w["per_layer_module"], strict=True):
        families = {}
        for fam in FAMILIES:
            members = [s for m, s in modules["modules"].items() if module_family(m) == fam]
            if members:
                families[fam] = _merge(members)
        layers.append({**entry, "modules": modules["modules"], "families": families})
    profile = {
        "label": label,
        "run": drift["run"],
        "base": drift["base"],
        "train_task": train_task,
        "method": method,
        "kind": kind,
        "total": w["total"],
        "layers": layers,
        "outside_layers": w["outside_layers"],
    }
    if "outputs" in drift:
        per_task = drift["outputs"]["cka_per_task"]
        others = [cka for task, cka in sorted(per_task.items()) if task != train_task]
        profile["cka"] = {
            "in_domain": per_task.get(train_task)[1:] if train_task in per_task else None,
            "cross_task": [sum(v) / len(v) for v in zip(*[c[1:] for c in others], strict=True)] if others else None,
            "all_tasks": drift["outputs"]["cka_per_layer"][1:],
            "per_task": {task: cka[1:] for task, cka in per_task.items()},
            "embeddings": drift["outputs"]["cka_per_layer"][0],
        }
        profile["kl_per_task"] = drift["outputs"]["kl_per_task"]
    return profile


def analyze_layers(
    run: str | Path,
    base: str | None = None,
    *,
    data_dir: str | Path | None,
    tasks: list[TaskDef],
    per_task: int = 8,
    models: ModelCache | None = None,
) -> dict:
    """The layer profile of one run against `base` (default: the base named in its train_summary.json).

    With `data_dir`, the CKA part on `per_task` probe records of each task in `tasks`; fp32 throughout.
    """
    from ftgen.errors import UserError

    info = run_info(run)
    base = base or info["base_model"]
    if base is None:
        raise UserError(f"{run}: no train_summary.json naming its base model: give the base model")
    models = models or ModelCache()
    drift = analyze_drift(run, base, data_dir=data_dir, tasks=tasks, per_task=per_task, base_model=models.get(base))
    return layer_profile(
        drift, label=info["label"], train_task=info["train_task"], method=info["method"], kind=info["kind"]
    )


def _method_means(profiles: list[dict], method: str, pick) -> list[float] | None:
    """Per layer, the mean over the method's profiles of `pick(profile)` (a per-layer list)."""
    rows = [pick(p) for p in profiles if p["method"] == method]
    rows = [r for r in rows if r is not None]
    if not rows or len({len(r) for r in rows}) != 1:
        return None
    return [sum(v) / len(v) for v in zip(*rows, strict=True)]


def _gap(ratio: float) -> float:
    """|log ratio|: how far apart two positive numbers are, whichever is larger (inf if one of them is 0)."""
    return abs(math.log(ratio)) if 0 < ratio < math.inf else math.inf


def compare_methods(profiles: list[dict], top: int = 3) -> dict:
    """In which layers FT and FTICL differ most, with a one-sentence reading.

    Only (train task, full / LoRA) pairs that have both an FT and an FTICL run are compared (all runs if none
    do). Weights: per layer, the mean over runs of each method's mean |ΔW|; layers are ranked by
    |log(FT / FTICL)|. CKA: per layer, the difference of the methods' mean cross-task CKA, ranked by its size.
    """

    def pair_key(p: dict) -> tuple:
        return p["train_task"], p["kind"]

    ft_keys = {pair_key(p) for p in profiles if p["method"] == "ft"}
    fticl_keys = {pair_key(p) for p in profiles if p["method"] == "fticl"}
    if not ft_keys or not fticl_keys:
        return {"sentence": "No comparison: the runs need both an FT and an FTICL run (fticl_shots > 0)."}
    both = ft_keys & fticl_keys
    matched = [p for p in profiles if pair_key(p) in both] if both else profiles
    ft = _method_means(matched, "ft", lambda p: [e["mean_abs_change"] for e in p["layers"]])
    fticl = _method_means(matched, "fticl", lambda p: [e["mean_abs_change"] for e in p["layers"]])
    if ft is None or fticl is None or len(ft) != len(fticl):
        return {"sentence": "No comparison: the FT and FTICL runs have different numbers of layers."}
    ratio = [a / b if b > 0 else (math.inf if a > 0 else 1.0) for a, b in zip(ft, fticl, strict=True)]
    order = sorted(range(len(ratio)), key=lambda i: (-_gap(ratio[i]), i))
    weights = [{"layer": i, "ft": ft[i], "fticl": fticl[i], "ft_over_fticl": ratio[i]} for i in order[:top]]
    total = {m: sum(p["total"]["mean_abs_change"] for p in matched if p["method"] == m) for m in ("ft", "fticl")}
    count = {m: sum(1 for p in matched if p["method"] == m) for m in ("ft", "fticl")}
    ft_all, fticl_all = total["ft"] / count["ft"], total["fticl"] / count["fticl"]
    more, less = ("FT", "FTICL") if ft_all >= fticl_all else ("FTICL", "FT")
    factor = max(ft_all, fticl_all) / min(ft_all, fticl_all) if min(ft_all, fticl_all) > 0 else math.inf
    shown = ", ".join(f"{w['layer']} ({w['ft_over_fticl']:.2f}x)" for w in weights)
    sentence = (
        f"{more} changes the weights more than {less} (mean |ΔW| FT {ft_all:.2e} vs FTICL {fticl_all:.2e}, "
        f"{factor:.2f}x; {count['ft']} vs {count['fticl']} runs); per layer the gap is largest in layers {shown} "
        "(FT / FTICL)"
    )
    result = {"weights": weights, "mean_abs_change": {"ft": ft_all, "fticl": fticl_all}, "runs": count}
    cka_ft = _method_means(matched, "ft", lambda p: (p.get("cka") or {}).get("cross_task"))
    cka_fticl = _method_means(matched, "fticl", lambda p: (p.get("cka") or {}).get("cross_task"))
    if cka_ft and cka_fticl and len(cka_ft) == len(cka_fticl):
        diff = sorted(range(len(cka_ft)), key=lambda i: (-abs(cka_ft[i] - cka_fticl[i]), i))
        result["cka_cross_task"] = [{"layer": i, "ft": cka_ft[i], "fticl": cka_fticl[i]} for i in diff[:top]]
        i = diff[0]
        sentence += (
            f", and the cross-task CKA to the base differs most at layer {i} "
            f"(FT {cka_ft[i]:.3f}, FTICL {cka_fticl[i]:.3f})"
        )
    result["sentence"] = sentence + "."
    return result


def plot_layers(profiles: list[dict], stem: str | Path) -> list[Path]:
    """Mean |ΔW|, relative change, in-domain and cross-task CKA against depth, one line per run: .png / .svg."""
    plt = pyplot()
    has_cka = any("cka" in p for p in profiles)
    fig, axes = plt.subplots(2 if has_cka else 1, 2, figsize=(13, 8.4 if has_cka else 4.2), squeeze=False)
    panels = [
        (axes[0][0], lambda p: [e["mean_abs_change"] for e in p["layers"]], "Mean |ΔW| per layer", "mean |ΔW|"),
        (
            axes[0][1],
            lambda p: [e["rel_change"] for e in p["layers"]],
            "Relative weight change per layer",
            "||ΔW|| / ||W||",
        ),
    ]
    if has_cka:
        panels += [
            (
                axes[1][0],
                lambda p: (p.get("cka") or {}).get("in_domain"),
                "CKA to the base, in-domain probes",
                "linear CKA",
            ),
            (
                axes[1][1],
                lambda p: (p.get("cka") or {}).get("cross_task"),
                "CKA to the base, cross-task probes",
                "linear CKA",
            ),
        ]
    colors = method_colors([p["method"] for p in profiles])
    for ax, pick, title, ylabel in panels:
        for p, color in zip(profiles, colors, strict=True):
            values = pick(p)
            if values is None:
                continue
            style = METHOD_STYLE.get(p["method"], METHOD_STYLE[None])
            name = f"{p['label']} ({(p['method'] or '?').upper()}, {p['train_task'] or '?'})"
            ax.plot(
                range(len(values)), values, color=color, ls=style["linestyle"], marker=style["marker"], ms=3, label=name
            )
        ax.set(title=title, xlabel="layer", ylabel=ylabel)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[1]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, stem)


def layers_markdown(profiles: list[dict], reading: dict) -> str:
    """A short markdown summary: the reading, then per run the total drift and its most-changed layers."""
    lines = [
        reading["sentence"],
        "",
        "| run | method | train task | mean abs dW | most-changed layers | min cross-task CKA |",
    ]
    lines.append("|---|---|---|---|---|---|")
    for p in profiles:
        top = sorted(p["layers"], key=lambda e: -e["mean_abs_change"])[:3]
        cross = (p.get("cka") or {}).get("cross_task")
        low = f"{min(cross):.3f} (layer {cross.index(min(cross))})" if cross else "-"
        lines.append(
            f"| {p['label']} | {(p['method'] or '?').upper()} | {p['train_task'] or '?'} | "
            f"{p['total']['mean_abs_change']:.3e} | {', '.join(str(e['layer']) for e in top)} | {low} |"
        )
    return "\n".join(lines) + "\n"


def write_layers_report(profiles: list[dict], out_dir: str | Path) -> dict:
    """layers.json (profiles + reading), layers.md and layers.png / .svg in `out_dir`; returns the reading."""
    reading = compare_methods(profiles)
    out_dir = Path(out_dir)
    atomic_write_json(out_dir / "layers.json", {"reading": reading, "runs": profiles})
    atomic_write_text(out_dir / "layers.md", layers_markdown(profiles, reading))
    plot_layers(profiles, out_dir / "layers")
    return reading
