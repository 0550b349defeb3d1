"""Does a model use its in-context examples at test time? Attention of the answer position, by prompt segment.

For a k-shot prompt (built by ftgen.prompts, as evaluation builds it), the answer position is the last
prompt token: it predicts the first answer token. Its attention weights (eager attention, every layer and
head) are summed over four segments that partition the prompt:

- `sink`: the tokenizer's special prefix (BOS) and the first position. Most LMs put a large,
  content-independent share of attention there (the attention sink, Xiao et al. 2024; in SmolLM2 up to
  ~0.9 of a layer's mass on a short prompt), so it is counted apart;
- `examples`: the in-context examples (the context segment after the special prefix);
- `query`: the tokens of the record's own input fields;
- `template`: the query's template text (instruction, field names, answer cue; the answer position itself).

The four shares sum to 1 per layer and head (a softmax row). They are averaged over heads, then over
records, per layer. `examples_of_content` = examples / (1 - sink): the examples' share of the attention that
goes to content, averaged the same way. `token_share` is each segment's share of the prompt's tokens: the
shares uniform attention would give.
"""

from __future__ import annotations

import random
import re
import string
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from ftgen.analysis.common import METHOD_STYLE, method_colors, model_dir_of, pyplot, run_info, save_figure
from ftgen.data import load_pool, load_test_set
from ftgen.errors import UserError
from ftgen.files import atomic_write_json
from ftgen.prompts import encode_prompt, fit_prompt, render_context, select_shots, special_prefix
from ftgen.tasks import TaskDef

SEGMENTS = ("sink", "examples", "query", "template")
SINK, EXAMPLES, QUERY, TEMPLATE = range(len(SEGMENTS))


@dataclass(frozen=True)
class SegmentedPrompt:
    ids: list[int]  # context + query token ids, exactly as evaluation feeds them
    segments: list[int]  # per position: an index into SEGMENTS
    truncated: bool


def field_spans(task: TaskDef, fmt: int, record: dict, query: str) -> list[tuple[int, int]]:
    """Character spans of the record's field values in `query` (its filled template, possibly truncated)."""
    pieces = list(string.Formatter().parse(task.templates[fmt]))
    spans, text = [], ""
    formatter = string.Formatter()
    for literal, field, spec, conversion in pieces:
        text += literal
        if field is not None:
            value = formatter.format_field(formatter.convert_field(record[field], conversion), spec or "")
            spans.append((len(text), len(text) + len(value)))
            text += value
    if text == query:
        return spans
    # A truncated field: the template's literal text is intact, the values between it are what is left.
    pattern = "".join(re.escape(lit) + ("(.*)" if field is not None else "") for lit, field, _, _ in pieces)
    match = re.fullmatch(pattern, query, flags=re.DOTALL)
    if match is None:
        raise UserError(f"task '{task.name}': cannot locate the record's fields in its prompt")
    return [match.span(i) for i in range(1, len(spans) + 1)]


def token_spans(tokenizer, text: str, ids: list[int]) -> list[tuple[int, int]]:
    """Character span of each token of `ids` (= the encoding of `text`, no special tokens) in `text`."""
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        if list(enc["input_ids"]) == list(ids):
            return [tuple(span) for span in enc["offset_mapping"]]
    # Slow tokenizers: each token ends where the decoded prefix ends.
    ends = [len(tokenizer.decode(ids[: i + 1])) for i in range(len(ids))]
    return list(zip([0, *ends[:-1]], ends, strict=True))


def segment_prompt(task: TaskDef, record: dict, fmt: int, context: str, tokenizer, max_length: int) -> SegmentedPrompt:
    """The prompt's token ids (fitted to `max_length` by the evaluation's truncation rule) and their segments."""
    prompt = fit_prompt(task, {**record, "output": ""}, fmt, context, tokenizer, max_length, reserve=1)
    enc = encode_prompt(tokenizer, prompt)
    n_special = len(special_prefix(tokenizer))
    segments = [SINK] * n_special + [EXAMPLES] * (len(enc.context) - n_special)
    fields = field_spans(task, fmt, record, prompt.query)
    for start, end in token_spans(tokenizer, prompt.query, enc.query):
        in_field = any(start < f_end and f_start < end for f_start, f_end in fields)
        segments.append(QUERY if in_field else TEMPLATE)
    segments[0] = SINK
    return SegmentedPrompt(enc.context + enc.query, segments, prompt.truncated)


def attention_modules(model) -> list[torch.nn.Module]:
    """The attention module of each layer: outermost modules whose class name ends in `Attention`."""
    found: list[tuple[str, torch.nn.Module]] = []
    for name, module in model.named_modules():
        if type(module).__name__.endswith("Attention") and not any(name.startswith(f"{n}.") for n, _ in found):
            found.append((name, module))
    return [m for _, m in found]


@contextmanager
def eager_attention(model):
    """The model with eager attention (the only kind that returns its weights), restored afterwards."""
    before = model.config._attn_implementation
    if before != "eager":
        model.set_attn_implementation("eager")
    try:
        yield model
    finally:
        if before != "eager":
            model.set_attn_implementation(before)


@torch.no_grad()
def last_position_attention(model, ids: list[int]) -> torch.Tensor:
    """(layers, heads, positions) attention weights of the last position (float64), one forward pass.

    Hooks keep only the last row of each layer's weights, so a long prompt never holds every layer's
    full (heads x positions x positions) matrix at once. The model must use eager attention.
    """
    rows: list[torch.Tensor] = []

    def keep(module, args, output):
        if isinstance(output, tuple) and len(output) > 1 and torch.is_tensor(output[1]) and output[1].dim() == 4:
            rows.append(output[1][0, :, -1, :].double().cpu())

    handles = [m.register_forward_hook(keep) for m in attention_modules(model)]
    try:
        device = next(model.parameters()).device
        model(torch.tensor([ids], device=device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    if not rows or len(rows) != model.config.num_hidden_layers:
        raise RuntimeError(
            f"captured attention weights of {len(rows)} layers, expected {model.config.num_hidden_layers}"
        )
    return torch.stack(rows)


def attention_shares(
    model,
    tokenizer,
    task: TaskDef,
    records: list[dict],
    *,
    shots: list[dict],
    fmt: int = 0,
    max_length: int | None = None,
) -> dict:
    """Per layer, the answer position's attention shares by segment (see the module doc), over `records`."""
    from ftgen.models import max_length as model_max_length

    if not records:
        raise UserError(f"task '{task.name}': no records to analyse")
    max_length = max_length or model_max_length(model, tokenizer)
    context = render_context(task, shots, fmt)
    n_layers = model.config.num_hidden_layers
    shares_sum = torch.zeros(n_layers, len(SEGMENTS), dtype=torch.float64)
    content_sum = torch.zeros(n_layers, dtype=torch.float64)
    tokens_sum = torch.zeros(len(SEGMENTS), dtype=torch.float64)
    truncated = 0
    with eager_attention(model):
        for record in records:
            seg = segment_prompt(task, record, fmt, context, tokenizer, max_length)
            onehot = torch.nn.functional.one_hot(torch.tensor(seg.segments), len(SEGMENTS)).double()
            shares = last_position_attention(model, seg.ids) @ onehot  # layers x heads x segments
            shares_sum += shares.mean(1)
            content_sum += (shares[..., EXAMPLES] / (1 - shares[..., SINK]).clamp_min(1e-12)).mean(1)
            tokens_sum += onehot.mean(0)
            truncated += seg.truncated
    n = len(records)
    layers = [
        {
            "layer": i,
            **{s: shares_sum[i, j].item() / n for j, s in enumerate(SEGMENTS)},
            "examples_of_content": content_sum[i].item() / n,
        }
        for i in range(n_layers)
    ]
    keys = [*SEGMENTS, "examples_of_content"]
    return {
        "task": task.name,
        "shots": len(shots),
        "fmt": fmt,
        "records": n,
        "truncated": truncated,
        "layers": layers,
        "mean": {k: sum(e[k] for e in layers) / n_layers for k in keys},
        "token_share": {s: tokens_sum[j].item() / n for j, s in enumerate(SEGMENTS)},
    }


def sample_records(data_dir, task: TaskDef, test_set: str, n: int, seed: int | None = None) -> list[dict]:
    """The first `n` valid records of the test set, or `n` sampled with `seed`."""
    if n < 1:
        raise UserError(f"records: must be >= 1, got {n}")
    records = load_test_set(data_dir, task, test_set, skip_invalid=True).records
    if seed is None:
        return records[:n]
    return random.Random(seed).sample(records, min(n, len(records)))


def analyze_attention(
    model: str,
    *,
    task: TaskDef,
    test_set: str,
    shots: int,
    records: int = 12,
    data_dir: str | Path | None = None,
    fmt: int = 0,
    seed: int | None = None,
    loaded=None,
) -> dict:
    """attention_shares of one model (a run dir, model dir or name) on `records` records of `test_set`, with
    the first `shots` examples of its pool (the paper's choice). `loaded` = its (model, tokenizer), if loaded."""
    from ftgen.models import load_model

    chosen = sample_records(data_dir, task, test_set, records, seed)  # bad input fails before any model loads
    pool = load_pool(data_dir, task, test_set).records if shots else []
    examples = select_shots(pool, shots)
    info = run_info(model)
    m, tokenizer = loaded or load_model(model_dir_of(model), dtype="fp32")
    result = attention_shares(m, tokenizer, task, chosen, shots=examples, fmt=fmt)
    return {"model": str(model), "label": info["label"], "method": info["method"], "test_set": test_set, **result}


def plot_attention(results: dict[str, dict], stem: str | Path) -> list[Path]:
    """Examples' share, examples' share of content and query share per layer, one line per model: .png / .svg."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.4))
    panels = [
        ("examples", "Attention on the in-context examples", "share of the answer position's attention"),
        ("examples_of_content", "Examples' share of the non-sink attention", "examples / (1 - sink)"),
        ("query", "Attention on the record's own input", "share of the answer position's attention"),
    ]
    colors = method_colors([r["method"] for r in results.values()])
    for ax, (key, title, ylabel) in zip(axes, panels, strict=True):
        for (label, r), color in zip(results.items(), colors, strict=True):
            style = METHOD_STYLE.get(r["method"], METHOD_STYLE[None])
            values = [e[key] for e in r["layers"]]
            name = f"{label} ({(r['method'] or 'base').upper()}): mean {r['mean'][key]:.3f}"
            ax.plot(
                range(len(values)), values, color=color, ls=style["linestyle"], marker=style["marker"], ms=3, label=name
            )
        ax.set(title=title, xlabel="layer", ylabel=ylabel, ylim=(0, None))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    first = next(iter(results.values()))
    fig.suptitle(f"{first['task']}/{first['test_set']}, {first['shots']}-shot, {first['records']} records", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, stem)


def write_attention_report(results: dict[str, dict], out_dir: str | Path) -> None:
    """attention.json and attention.png / .svg in `out_dir`."""
    atomic_write_json(Path(out_dir) / "attention.json", results)
    plot_attention(results, Path(out_dir) / "attention")
