"""How far did fine-tuning move the model? Weight drift, output divergence and representation similarity.

The paper explains FTICL's better generalization on generation tasks by a smaller deviation from the base
model. These measures make that checkable for any run:

- weight drift: per layer and per module type, the relative change ||W_ft - W_base||_F / ||W_base||_F and
  the cosine similarity of the flattened weights. For a LoRA run the adapter is merged first, so the change
  is the norm of the merged update B @ A * scale.
- output divergence: on a probe set (records of every task, 0-shot, format 0), the mean KL(P_ft || P_base)
  of the next-token distributions at the response positions (teacher-forced on the gold answer), per task.
- representation similarity: linear CKA between base and fine-tuned hidden states, per layer, over every
  token of the probe set.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import torch

from ftgen.data import load_test_set, scan_task_files
from ftgen.errors import UserError
from ftgen.files import atomic_write_json
from ftgen.models import load_model
from ftgen.prompts import build_prompt, encode_prompt
from ftgen.tasks import TaskDef

LAYER_RE = re.compile(r"\.layers\.(\d+)\.")


def module_type(param_name: str) -> str:
    """`model.layers.3.self_attn.q_proj.weight` -> `q_proj`; `model.embed_tokens.weight` -> `embed_tokens`."""
    parts = param_name.split(".")
    return parts[-2] if parts[-1] in ("weight", "bias") and len(parts) > 1 else parts[-1]


@torch.no_grad()
def weight_drift(base: torch.nn.Module, tuned: torch.nn.Module) -> dict:
    """Relative weight change and cosine similarity, in total, per layer and per module type."""
    base_params = dict(base.named_parameters())
    # Per group: sum ||dW||^2, sum ||W||^2, sum <W_base, W_ft>, sum ||W_ft||^2 -> exact group-level norms.
    sums: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0, 0.0])
    for name, p_ft in tuned.named_parameters():
        if name not in base_params:
            raise UserError(f"parameter {name} of the fine-tuned model is not in the base model")
        w0, w1 = base_params[name].double(), p_ft.double()
        if w0.shape != w1.shape:
            raise UserError(f"parameter {name}: shape {tuple(w1.shape)} differs from the base {tuple(w0.shape)}")
        stats = [(w1 - w0).pow(2).sum().item(), w0.pow(2).sum().item(), (w0 * w1).sum().item(), w1.pow(2).sum().item()]
        m = LAYER_RE.search(name)
        for key in (("total", "all"), ("layer", m.group(1) if m else "other"), ("module", module_type(name))):
            sums[key] = [a + b for a, b in zip(sums[key], stats, strict=True)]

    def summary(s: list[float]) -> dict:
        delta2, base2, dot, tuned2 = s
        return {
            "rel_change": (delta2 / base2) ** 0.5 if base2 else 0.0,
            "cosine": dot / ((base2 * tuned2) ** 0.5) if base2 and tuned2 else 1.0,
        }

    layers = sorted((k[1] for k in sums if k[0] == "layer" and k[1] != "other"), key=int)
    return {
        "total": summary(sums[("total", "all")]),
        "per_layer": [{"layer": int(i), **summary(sums[("layer", i)])} for i in layers],
        "per_module": {k[1]: summary(v) for k, v in sorted(sums.items()) if k[0] == "module"},
    }


def probe_set(data_dir: str | Path, tasks: list[TaskDef], per_task: int = 8) -> list[tuple[TaskDef, dict]]:
    """The first `per_task` valid records of each task's in-domain test set (or its first test set)."""
    probes = []
    for task in tasks:
        files = scan_task_files(data_dir, task)
        if not files.test:
            continue
        name = task.in_domain if task.in_domain in files.test else sorted(files.test)[0]
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


@torch.no_grad()
def output_divergence(
    base, tuned, tokenizer, probes: list[tuple[TaskDef, dict]], max_length: int = 512, cka_tokens: int = 4096
) -> dict:
    """Mean KL(P_ft || P_base) at response positions (per task and overall) and per-layer linear CKA."""
    kl_sum: dict[str, float] = defaultdict(float)
    kl_count: dict[str, int] = defaultdict(int)
    hidden_base: list[list[torch.Tensor]] = []
    hidden_tuned: list[list[torch.Tensor]] = []
    for task, record in probes:
        enc = encode_prompt(tokenizer, build_prompt(task, record, 0))
        ids = (enc.prompt_ids + enc.answer)[-max_length:]
        n_answer = min(len(enc.answer), len(ids) - 1)
        input_ids = torch.tensor([ids], device=base.device)
        out_b = base(input_ids, output_hidden_states=True)
        out_t = tuned(input_ids.to(tuned.device), output_hidden_states=True)
        # Position i predicts token i+1: the answer tokens are predicted from the n_answer positions before them.
        pos = slice(len(ids) - n_answer - 1, len(ids) - 1)
        logp_b = out_b.logits[0, pos].float().log_softmax(-1)
        logp_t = out_t.logits[0, pos].float().log_softmax(-1).to(logp_b.device)
        kl = (logp_t.exp() * (logp_t - logp_b)).sum(-1).clamp_min(0)  # clamp: rounding can give -1e-9
        kl_sum[task.name] += kl.sum().item()
        kl_count[task.name] += n_answer
        hidden_base.append([h[0].float().cpu() for h in out_b.hidden_states])
        hidden_tuned.append([h[0].float().cpu() for h in out_t.hidden_states])
    n_layers = len(hidden_base[0])
    cka = []
    for layer in range(n_layers):
        x = torch.cat([h[layer] for h in hidden_base])[:cka_tokens]
        y = torch.cat([h[layer] for h in hidden_tuned])[:cka_tokens]
        cka.append(linear_cka(x, y))
    per_task = {t: kl_sum[t] / kl_count[t] for t in kl_sum}
    return {
        "kl_mean": sum(kl_sum.values()) / max(sum(kl_count.values()), 1),
        "kl_per_task": per_task,
        "cka_per_layer": cka,  # index 0 = embeddings, i = output of layer i-1
        "probe_records": len(probes),
    }


def model_dir_of(run: str | Path) -> str:
    """A training output dir (holding `model/`) or a model dir / name, as given."""
    path = Path(run)
    return str(path / "model") if (path / "model").is_dir() else str(run)


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
    base_m, tokenizer = base_model or load_model(base, dtype=dtype)
    tuned_m, _ = load_model(model_dir_of(run), dtype=dtype)
    result: dict = {"run": str(run), "base": base, "weights": weight_drift(base_m, tuned_m)}
    if data_dir is not None:
        result["outputs"] = output_divergence(base_m, tuned_m, tokenizer, probe_set(data_dir, tasks, per_task))
    return result


def compact_drift(result: dict) -> dict:
    """The few numbers of an `analyze_drift` result that a study keeps per run (for the report)."""
    w = result["weights"]["total"]
    out = {"rel_change": w["rel_change"], "cosine": w["cosine"]}
    if "outputs" in result:
        o = result["outputs"]
        out |= {"kl_mean": o["kl_mean"], "kl_per_task": o["kl_per_task"], "cka_last": o["cka_per_layer"][-1]}
    return out


def plot_drift(results: dict[str, dict], path: str | Path) -> None:
    """Per-layer relative weight change and CKA, one line per run (FT vs FTICL side by side)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    has_cka = all("outputs" in r for r in results.values())
    fig, axes = plt.subplots(1, 2 if has_cka else 1, figsize=(12 if has_cka else 7, 4.2), squeeze=False)
    for label, r in results.items():
        layers = r["weights"]["per_layer"]
        axes[0][0].plot([x["layer"] for x in layers], [x["rel_change"] for x in layers], marker="o", ms=3, label=label)
        if has_cka:
            axes[0][1].plot(
                range(len(r["outputs"]["cka_per_layer"])),
                r["outputs"]["cka_per_layer"],
                marker="o",
                ms=3,
                label=f"{label} (KL {r['outputs']['kl_mean']:.3f})",
            )
    axes[0][0].set(title="Relative weight change per layer", xlabel="layer", ylabel="||W_ft - W_base|| / ||W_base||")
    if has_cka:
        axes[0][1].set(
            title="Hidden-state similarity to base (linear CKA)", xlabel="layer (0 = embeddings)", ylabel="CKA"
        )
    for ax in axes[0]:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(path).with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def write_drift_report(results: dict[str, dict], out_dir: str | Path) -> None:
    atomic_write_json(Path(out_dir) / "drift.json", results)
    plot_drift(results, Path(out_dir) / "drift.png")
