"""Weight interpolation between a base model and its fine-tuned run (WiSE-FT, Wortsman et al. 2022).

θ(α) = (1 − α)·θ_base + α·θ_tuned. α = 0 is the base model, α = 1 the fine-tuned one, and values between
trade the in-domain gain of fine-tuning against what it cost elsewhere. For a LoRA run the adapter is scaled
instead: θ(α) = θ_base + α·B·A·scale, merged (the same line, computed without rounding the base twice).
Each θ(α) is saved as a standard Hugging Face checkpoint dir that `AutoModelForCausalLM.from_pretrained`,
`ftgen eval` and every other tool load as is.

`best_alphas` picks, per train task and method, the α that keeps the most in-domain gain for the least
cross-task loss (the report draws the curves, with intervals: ftgen.report.interpolation).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ftgen.analysis.common import finite, model_dir_of, run_info
from ftgen.analysis.drift import paired_parameters
from ftgen.checkpoint import atomic_dir
from ftgen.errors import UserError
from ftgen.models import is_adapter_dir, load_model, resolve_model


def mix(base: torch.Tensor, tuned: torch.Tensor, alpha: float) -> torch.Tensor:
    """(1 − α)·base + α·tuned, computed in float64 and returned in tuned's dtype.

    This form (not base + α·(tuned − base)) is exact at the ends: α = 0 gives base and α = 1 gives tuned, bit
    for bit.
    """
    return ((1 - alpha) * base.double() + alpha * tuned.double()).to(tuned.dtype)


def _interpolate_full(model_dir: str, base: str, alpha: float):
    tuned, tokenizer = load_model(model_dir, dtype="fp32", device="cpu")
    base_model, _ = load_model(base, dtype="fp32", device="cpu")
    with torch.no_grad():
        for _, w0, w1 in paired_parameters(base_model, tuned):
            w1.copy_(mix(w0, w1, alpha))
    return tuned, tokenizer


def _interpolate_lora(adapter_dir: str, alpha: float):
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    config = json.loads((Path(adapter_dir) / "adapter_config.json").read_text(encoding="utf-8"))
    if config.get("modules_to_save"):
        raise UserError(f"{adapter_dir}: adapters with fully trained modules (modules_to_save) are not supported")
    if config.get("use_dora"):
        raise UserError(f"{adapter_dir}: DoRA adapters are not supported (their update is not linear in the scale)")
    base_model, tokenizer = load_model(config["base_model_name_or_path"], dtype="fp32", device="cpu")
    model = PeftModel.from_pretrained(base_model, adapter_dir)
    for module in model.modules():
        if isinstance(module, LoraLayer):
            for name in module.scaling:  # scale_layer skips α = 1 and touches only active adapters: set it here
                module.scaling[name] *= alpha
    return model.merge_and_unload(), tokenizer


def interpolate_model(run: str | Path, alpha: float, out_dir: str | Path, *, base: str | None = None) -> dict:
    """Save θ(α) of `run` (a training output dir or a model / adapter dir) as a checkpoint in `out_dir`.

    `base`: the base model of a full fine-tuning run (default: the base named in its train_summary.json); a
    LoRA adapter names its own base. `out_dir` gets the weights, the tokenizer and `interpolation.json`, all
    at once (written into a temp dir, then renamed). Returns what interpolation.json holds.
    """
    alpha = finite(float(alpha), "alpha")
    model_dir = model_dir_of(run)
    if not Path(model_dir).is_dir():
        raise UserError(f"{run}: no such run or model directory")
    info = run_info(run)
    if is_adapter_dir(model_dir):
        adapter_base = json.loads((Path(model_dir) / "adapter_config.json").read_text()).get("base_model_name_or_path")
        if base is not None and adapter_base and resolve_model(base) != adapter_base:
            raise UserError(f"--base {base}: the adapter {model_dir} was trained on {adapter_base}")
        model, tokenizer = _interpolate_lora(model_dir, alpha)
        kind, base = "lora", adapter_base
    else:
        base = base or info["base_model"]
        if base is None:
            raise UserError(f"{run}: no train_summary.json naming its base model: give the base model")
        model, tokenizer = _interpolate_full(model_dir, base, alpha)
        kind = "full"
    meta = {
        "alpha": alpha,
        "kind": kind,
        "base": base,
        "tuned": str(run),
        "method": info["method"],
        "train_task": info["train_task"],
    }
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "interpolation.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return {**meta, "model_dir": str(out_dir)}


# ---------------------------------------------------------------- the trade-off against α


def tradeoff_score(point: dict) -> float:
    """ΔID − max(0, −Δcross): the in-domain gain, less the cross-task loss (a cross-task gain is not added)."""
    return point["id"] - max(0.0, -point["cross"])


def _curves(points: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """Points by (train task, method), sorted by α, with α = 0 (the base: every delta 0) added if absent."""
    curves: dict[tuple[str, str], list[dict]] = {}
    for p in points:
        for key in ("train_task", "method", "alpha"):
            if key not in p:
                raise UserError(f"trade-off point {p}: missing '{key}'")
        curves.setdefault((p["train_task"], p["method"]), []).append(p)
    for key, curve in curves.items():
        if not any(p["alpha"] == 0 for p in curve):
            curve.append({"train_task": key[0], "method": key[1], "alpha": 0.0, "id": 0.0, "ood": 0.0, "cross": 0.0})
        curve.sort(key=lambda p: p["alpha"])
    return dict(sorted(curves.items()))


def best_alphas(points: list[dict]) -> dict:
    """Per train task and method, the α that keeps the most in-domain gain for the least cross-task loss.

    `points`: one dict per (train_task, method, alpha) with the group-mean deltas vs the base model, in points:
    `id`, `ood`, `cross` (None where not measured). α = 0 is the base model itself (every delta 0) and is added
    where absent.

    Criterion: maximise score(α) = ΔID(α) − max(0, −Δcross(α)), i.e. in-domain gain minus cross-task loss,
    one point for one point; a cross-task gain earns nothing, so the choice never trades in-domain points for
    cross-task ones. Ties go to the smaller α (closer to the base). Points without `id` or `cross` are skipped.
    Returns {"best": [...one per curve...], "sentence": one reading}.
    """
    best = []
    for (task, method), curve in _curves(points).items():
        scored = [p for p in curve if p.get("id") is not None and p.get("cross") is not None]
        top = max(scored, key=lambda p: (tradeoff_score(p), -p["alpha"]))
        full = next((p for p in scored if p["alpha"] == 1), None)
        best.append(
            {
                "train_task": task,
                "method": method,
                "alpha": top["alpha"],
                "id": top["id"],
                "ood": top.get("ood"),
                "cross": top["cross"],
                "score": tradeoff_score(top),
                "full": None if full is None else {k: full.get(k) for k in ("id", "ood", "cross")},
            }
        )
    return {"best": best, "sentence": _sentence(best)}


def _sentence(best: list[dict]) -> str:
    parts = []
    for b in best:
        where = f"{b['train_task']} {b['method'].upper()}"
        if b["alpha"] == 0:
            parts.append(f"{where}: no α gains more in-domain than it loses cross-task (best: the base, α = 0)")
            continue
        kept = ""
        if b["full"] and b["full"]["id"] and b["full"]["id"] > 0 and b["alpha"] != 1:
            kept = f" ({100 * b['id'] / b['full']['id']:.0f}% of α = 1's {b['full']['id']:+.1f})"
        cost = f"; α = 1: cross-task {b['full']['cross']:+.1f}" if b["full"] and b["alpha"] != 1 else ""
        parts.append(
            f"{where}: α = {b['alpha']:g} keeps {b['id']:+.1f} in-domain{kept} at {b['cross']:+.1f} cross-task{cost}"
        )
    return "; ".join(parts) + "." if parts else "No trade-off points."
