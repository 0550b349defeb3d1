"""How far did fine-tuning move the model? Weight drift, output divergence and representation similarity.

The paper explains FTICL's better generalization on generation tasks by a smaller deviation from the base
model, measured as the mean absolute weight change. These measures make that checkable for any run:

- weight drift, in total, per layer, per module type and per (layer, module type):
  - `mean_abs_change`: mean |W_ft - W_base| over the parameters (the paper's measure: Socialqa FTICL
    7.95e-5 vs FT 8.54e-5 on Llama-2-7b);
  - `rel_change`: ||W_ft - W_base||_F / ||W_base||_F;
  - `cosine`: cosine similarity of the flattened weights.
  Tied parameters (embeddings = LM head) count once. For a LoRA run the adapter is merged first, so the
  change is the merged update B @ A * scale.
- output divergence: on a probe set (records of every task, 0-shot, format 0), the mean KL(P_ft || P_base)
  of the next-token distributions at the response positions (teacher-forced on the gold answer), per task.
- representation similarity: linear CKA between base and fine-tuned hidden states, per layer, over the
  probe tokens of each task and of all tasks. The first position of each sequence is left out: it holds the
  attention-sink activations (in SmolLM2 their norm is ~100x the other tokens'), which would make linear
  CKA the similarity of that one token.
"""

from __future__ import annotations

import inspect
import re
from collections import defaultdict
from pathlib import Path

import torch

from ftgen.analysis.common import model_dir_of, pyplot, save_figure
from ftgen.data import load_test_set, scan_task_files
from ftgen.errors import UserError
from ftgen.files import atomic_write_json
from ftgen.models import load_model
from ftgen.prompts import build_prompt, encode_prompt
from ftgen.tasks import TaskDef

LAYER_RE = re.compile(r"\.(?:layers|h|layer|blocks)\.(\d+)\.")
# per group: parameter count, sum |dW|, sum dW^2, sum W_base^2, sum <W_base, W_ft>, sum W_ft^2
N_STATS = 6


def module_type(param_name: str) -> str:
    """`model.layers.3.self_attn.q_proj.weight` -> `q_proj`; `model.embed_tokens.weight` -> `embed_tokens`."""
    parts = param_name.split(".")
    return parts[-2] if parts[-1] in ("weight", "bias") and len(parts) > 1 else parts[-1]


def layer_of(param_name: str) -> int | None:
    """The transformer layer a parameter belongs to (`...layers.3...` -> 3), None outside the layers."""
    m = LAYER_RE.search(param_name)
    return int(m.group(1)) if m else None


def paired_parameters(base: torch.nn.Module, tuned: torch.nn.Module):
    """(name, base weight, tuned weight) for every parameter of `tuned` (tied ones once), checked to match."""
    base_params = dict(base.named_parameters())
    for name, p_ft in tuned.named_parameters():
        if name not in base_params:
            raise UserError(f"parameter {name} of the fine-tuned model is not in the base model")
        p_base = base_params[name]
        if p_base.shape != p_ft.shape:
            raise UserError(f"parameter {name}: shape {tuple(p_ft.shape)} differs from the base {tuple(p_base.shape)}")
        yield name, p_base, p_ft


def _stats(w0: torch.Tensor, w1: torch.Tensor) -> torch.Tensor:
    w0, w1 = w0.detach().double(), w1.detach().to(w0.device).double()
    delta = w1 - w0
    return torch.stack(
        [
            torch.tensor(float(w0.numel()), dtype=torch.float64, device=w0.device),
            delta.abs().sum(),
            delta.pow(2).sum(),
            w0.pow(2).sum(),
            (w0 * w1).sum(),
            w1.pow(2).sum(),
        ]
    ).cpu()


def drift_summary(stats: torch.Tensor) -> dict:
    """The drift measures of one group from its summed statistics."""
    numel, abs_sum, delta2, base2, dot, tuned2 = stats.tolist()
    return {
        "mean_abs_change": abs_sum / numel if numel else 0.0,
        "rel_change": (delta2 / base2) ** 0.5 if base2 else 0.0,
        "cosine": dot / ((base2 * tuned2) ** 0.5) if base2 and tuned2 else 1.0,
        "params": int(numel),
    }


@torch.no_grad()
def weight_drift(base: torch.nn.Module, tuned: torch.nn.Module) -> dict:
    """Weight drift in total, per layer, per module type, and per (layer, module type) (see the module doc).

    `outside_layers` holds the parameters of no transformer layer (embeddings, final norm, LM head).
    """
    groups: dict[tuple[int | None, str], torch.Tensor] = defaultdict(lambda: torch.zeros(N_STATS, dtype=torch.float64))
    for name, w0, w1 in paired_parameters(base, tuned):
        groups[(layer_of(name), module_type(name))] += _stats(w0, w1)
    # Sums of exact per-group statistics: every level's norms and means are exact, not averages of averages.
    per_layer: dict[int, torch.Tensor] = defaultdict(lambda: torch.zeros(N_STATS, dtype=torch.float64))
    per_module: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros(N_STATS, dtype=torch.float64))
    for (layer, mtype), s in groups.items():
        per_module[mtype] += s
        if layer is not None:
            per_layer[layer] += s
    layers = sorted(per_layer)
    return {
        "total": drift_summary(sum(groups.values())),
        "per_layer": [{"layer": i, **drift_summary(per_layer[i])} for i in layers],
        "per_module": {m: drift_summary(s) for m, s in sorted(per_module.items())},
        "per_layer_module": [
            {
                "layer": i,
                "modules": {m: drift_summary(s) for (layer, m), s in sorted(groups.items(), key=_order) if layer == i},
            }
            for i in layers
        ],
        "outside_layers": {
            m: drift_summary(s) for (layer, m), s in sorted(groups.items(), key=_order) if layer is None
        },
    }


def _order(item) -> tuple:
    (layer, mtype), _ = item
    return (-1 if layer is None else layer, mtype)


def in_domain_sets(task: TaskDef) -> list[str]:
    """The task's in-domain test sets (the paper's Table 1), in the task's order."""
    return list(task.in_domain)


def probe_set(data_dir: str | Path, tasks: list[TaskDef], per_task: int = 8) -> list[tuple[TaskDef, dict]]:
    """The first `per_task` valid records of each task's (first) in-domain test set (or its first test set)."""
    if per_task < 1:
        raise UserError(f"probe records per task must be >= 1, got {per_task}")
    probes = []
    for task in tasks:
        files = scan_task_files(data_dir, task)
        if not files.test:
            continue
        name = next((s for s in in_domain_sets(task) if s in files.test), sorted(files.test)[0])
        ds = load_test_set(data_dir, task, name, skip_invalid=True)
        probes += [(task, r) for r in ds.records[:per_task]]
    if not probes:
        raise UserError(f"{data_dir}: no test records to probe with")
    return probes


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA of two (tokens x features) matrices (Kornblith et al. 2019); 1.0 for identical inputs."""
    x = x.double() - x.double().mean(0, keepdim=True)
    y = y.double() - y.double().mean(0, keepdim=True)
    cross = (y.T @ x).pow(2).sum()
    norm = (x.T @ x).pow(2).sum().sqrt() * (y.T @ y).pow(2).sum().sqrt()
    return (cross / norm).item() if norm > 0 else 1.0


def _spread(tokens: int, keep: int) -> torch.Tensor:
    """`keep` evenly spaced indices out of `tokens` (all of them if there are fewer)."""
    if tokens <= keep:
        return torch.arange(tokens)
    return torch.linspace(0, tokens - 1, keep).round().long()


def _forward_tail(model, input_ids: torch.Tensor, keep: int):
    """Forward with every hidden state; logits of the last `keep` positions where the model can skip the rest."""
    if "logits_to_keep" in inspect.signature(model.forward).parameters:
        return model(input_ids, output_hidden_states=True, logits_to_keep=keep)
    return model(input_ids, output_hidden_states=True)


@torch.no_grad()
def output_divergence(
    base, tuned, tokenizer, probes: list[tuple[TaskDef, dict]], max_length: int = 512, cka_tokens: int = 1024
) -> dict:
    """Mean KL(P_ft || P_base) at response positions (per task and overall), and per-layer linear CKA per task
    and over all tasks (at most `cka_tokens` tokens per task, evenly spread over its probe records)."""
    kl_sum: dict[str, float] = defaultdict(float)
    kl_count: dict[str, int] = defaultdict(int)
    hidden: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = defaultdict(list)  # task -> (base, tuned)
    for task, record in probes:
        enc = encode_prompt(tokenizer, build_prompt(task, record, 0))
        ids = (enc.prompt_ids + enc.answer)[-max_length:]
        n_answer = min(len(enc.answer), len(ids) - 1)
        input_ids = torch.tensor([ids], device=base.device)
        # Position i predicts token i+1: the answer tokens are predicted from the n_answer positions before them.
        # Only the last n_answer + 1 positions' logits are computed (the LM head is ~20% of a forward pass).
        out_b = _forward_tail(base, input_ids, n_answer + 1)
        out_t = _forward_tail(tuned, input_ids.to(tuned.device), n_answer + 1)
        logp_b = out_b.logits[0, -n_answer - 1 : -1].float().log_softmax(-1)
        logp_t = out_t.logits[0, -n_answer - 1 : -1].float().log_softmax(-1).to(logp_b.device)
        kl = (logp_t.exp() * (logp_t - logp_b)).sum(-1).clamp_min(0)  # clamp: rounding can give -1e-9
        kl_sum[task.name] += kl.sum().item()
        kl_count[task.name] += n_answer
        skip = 1 if len(ids) > 1 else 0  # the attention-sink position (see the module doc)
        hidden[task.name].append(
            (
                torch.stack([h[0, skip:].float().cpu() for h in out_b.hidden_states]),
                torch.stack([h[0, skip:].float().cpu() for h in out_t.hidden_states]),
            )
        )
    per_task_states = {}
    for name, pairs in hidden.items():
        hb, ht = torch.cat([b for b, _ in pairs], 1), torch.cat([t for _, t in pairs], 1)
        keep = _spread(hb.shape[1], cka_tokens)
        per_task_states[name] = (hb[:, keep], ht[:, keep])
    n_states = next(iter(per_task_states.values()))[0].shape[0]
    all_b = torch.cat([b for b, _ in per_task_states.values()], 1)
    all_t = torch.cat([t for _, t in per_task_states.values()], 1)
    return {
        "kl_mean": sum(kl_sum.values()) / max(sum(kl_count.values()), 1),
        "kl_per_task": {t: kl_sum[t] / kl_count[t] for t in kl_sum},
        # index 0 = embeddings, i = output of layer i-1 (the last one after the model's final norm)
        "cka_per_layer": [linear_cka(all_b[i], all_t[i]) for i in range(n_states)],
        "cka_per_task": {t: [linear_cka(b[i], y[i]) for i in range(n_states)] for t, (b, y) in per_task_states.items()},
        "cka_tokens": {t: int(b.shape[1]) for t, (b, _) in per_task_states.items()},
        "probe_records": len(probes),
    }


def analyze_drift(
    run: str | Path,
    base: str,
    *,
    data_dir: str | Path | None,
    tasks: list[TaskDef],
    per_task: int = 8,
    dtype: str = "fp32",
    base_model=None,
) -> dict:
    """Weight drift plus (with `data_dir`) output divergence of one fine-tuned model against its base.

    `base_model` = an already loaded (model, tokenizer) of `base`, to share it across runs.
    """
    probes = probe_set(data_dir, tasks, per_task) if data_dir is not None else None  # bad data: before loading
    base_m, tokenizer = base_model or load_model(base, dtype=dtype)
    tuned_m, _ = load_model(model_dir_of(run), dtype=dtype)
    result: dict = {"run": str(run), "base": base, "weights": weight_drift(base_m, tuned_m)}
    if probes is not None:
        result["outputs"] = output_divergence(base_m, tuned_m, tokenizer, probes)
    return result


def compact_drift(result: dict) -> dict:
    """The few numbers of an `analyze_drift` result that a study keeps per run (for the report)."""
    w = result["weights"]
    total = w["total"]
    out = {"rel_change": total["rel_change"], "cosine": total["cosine"]}
    if "mean_abs_change" in total:  # results written before the paper's measure was added lack it
        out["mean_abs_change"] = total["mean_abs_change"]
        out["mean_abs_change_per_module"] = {m: s["mean_abs_change"] for m, s in w["per_module"].items()}
    if "outputs" in result:
        o = result["outputs"]
        out |= {"kl_mean": o["kl_mean"], "kl_per_task": o["kl_per_task"], "cka_last": o["cka_per_layer"][-1]}
    return out


def plot_drift(results: dict[str, dict], stem: str | Path) -> list[Path]:
    """Per-layer mean |dW| and relative change, and per-layer CKA, one line per run: `stem`.png / .svg."""
    plt = pyplot()
    has_cka = all("outputs" in r for r in results.values())
    fig, axes = plt.subplots(1, 3 if has_cka else 2, figsize=(16 if has_cka else 11, 4.2), squeeze=False)
    for label, r in results.items():
        layers = r["weights"]["per_layer"]
        x = [e["layer"] for e in layers]
        if "mean_abs_change" in r["weights"]["total"]:
            axes[0][0].plot(x, [e["mean_abs_change"] for e in layers], marker="o", ms=3, label=label)
        axes[0][1].plot(x, [e["rel_change"] for e in layers], marker="o", ms=3, label=label)
        if has_cka:
            cka = r["outputs"]["cka_per_layer"]
            axes[0][2].plot(range(len(cka)), cka, marker="o", ms=3, label=f"{label} (KL {r['outputs']['kl_mean']:.3f})")
    axes[0][0].set(title="Mean |ΔW| per layer (the paper's drift)", xlabel="layer", ylabel="mean |W_ft - W_base|")
    axes[0][1].set(title="Relative weight change per layer", xlabel="layer", ylabel="||W_ft - W_base|| / ||W_base||")
    if has_cka:
        axes[0][2].set(
            title="Hidden-state similarity to base (linear CKA)", xlabel="layer (0 = embeddings)", ylabel="CKA"
        )
    for ax in axes[0]:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[1]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, stem)


def write_drift_report(results: dict[str, dict], out_dir: str | Path) -> None:
    """drift.json and drift.png / drift.svg in `out_dir`."""
    atomic_write_json(Path(out_dir) / "drift.json", results)
    plot_drift(results, Path(out_dir) / "drift")
