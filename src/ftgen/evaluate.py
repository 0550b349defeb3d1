"""Evaluation engine: classification by label scoring, batched greedy generation, shared-prefix KV cache.

Every record of a test set gets the same in-context examples, so its prompts share one prefix (the
rendered shots, plus BOS where the tokenizer adds one). We run that prefix through the model once and
reuse its KV cache for every record and every label: k-shot evaluation then costs about what 0-shot
costs. `prefix_cache=False` is the plain reference computation (each label scored on the full prompt,
as lm-evaluation-harness does); the tests hold the two equal.

Classification: each label word, after the prompt's lead (ftgen.prompts: a space, or the whitespace the template
ended in), is scored as a continuation of the prompt, tokenized as it follows a word (`encode_labels`).
One forward pass per batch scores all labels: a row is `[left pad][query][label 1][label 2]...` and a
4D attention mask lets each label see the prefix and the query but not the other labels (a tree of
continuations), with position ids that restart after the query for every label. Scoring rules:
    sum          sum of the label's token log-probs (default)
    mean         that sum divided by the number of tokens (length-normalised)
    first-token  the log-prob of the label's first token only (the paper's rule); refused for labels that start
                 with the same token (every record would get the first of them)

Generation: greedy, batched with left padding after the cached prefix (explicit position ids keep every
row's positions equal to its unpadded ones), rows sorted by length, finished rows dropped from the batch.
A row stops at EOS, at `max_new_tokens`, or once its stripped output contains a blank line; the metric
sees the first paragraph of the stripped output, as in the paper.

Batch size: rows are batched longest first; `batch_size="auto"` (the default) takes the largest batch
that fits on a GPU, halving on out-of-memory, and 16 on a CPU (ftgen.memory). Results do not depend on
the batch: in fp32 the predictions are identical for every batch size (tested); in bf16 a different
batch shape rounds the matmuls differently, so log-probs move in the last bits and a near-tie record
may flip (the only difference).

The vLLM backend lives in ftgen.vllm_backend, the `ftgen eval` runner in ftgen.eval_run.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ftgen import metrics as M
from ftgen import stats
from ftgen.errors import UserError
from ftgen.files import atomic_write_json, atomic_write_jsonl
from ftgen.memory import check_batch_size, injected_limit, run_in_batches
from ftgen.progress import bar
from ftgen.prompts import Prompt, encode_labels, encode_prompt, fit_prompt, render_context, template_lead
from ftgen.tasks import TaskDef

SCORING = ("sum", "mean", "first-token")
BACKENDS = ("hf", "vllm")
STOP = "\n\n"  # a blank line ends a generated answer


@dataclass
class EvalResult:
    metrics: dict  # metric, score (0-100), n, truncated, seconds + the task kind's metrics
    predictions: list[dict]  # one per record, in input order


@dataclass
class Item:
    """One record, ready for a backend: its prompt and token ids (the shared context is apart)."""

    record: dict
    prompt: Prompt
    query: list[int]  # token ids after the shared context
    labels: list[list[int]]  # classification: ids of lead + label word, in task.labels order


def prompt_hash(text: str) -> str:
    """sha256 of the full prompt text, first 16 hex digits."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def stops(text: str) -> bool:
    """True once a generated text holds a blank line after some content."""
    return STOP in text.lstrip()


def cut_at_stop(text: str) -> str:
    """A text generated past the stop rule, cut right after its first blank line that follows some content."""
    lead = len(text) - len(text.lstrip())
    cut = text.find(STOP, lead)
    return text if cut < 0 else text[: cut + len(STOP)]


# ---------------------------------------------------------------- preparation


def _prepare(task: TaskDef, records: list[dict], context: str, fmt: int, tokenizer, max_length: int):
    """(context ids, items): fit each record's prompt in max_length and tokenize it segment-wise."""
    labels_after: dict[str, list[list[int]]] = {}  # lead -> label ids (the lead rarely varies within a format)

    def labels_of(lead: str) -> list[list[int]]:
        if lead not in labels_after:
            labels_after[lead] = encode_labels(tokenizer, task, lead)
            if any(not ids for ids in labels_after[lead]):
                raise UserError(f"task '{task.name}': a label word encodes to no tokens")
        return labels_after[lead]

    if task.kind == "classification":
        # Room for the longest label after the format's lead, so that every label's continuation fits.
        reserve = max(map(len, labels_of(template_lead(task, fmt))))
    else:
        reserve = task.max_new_tokens
    context_ids = None
    items = []
    for rec in records:
        # The gold answer is not part of the input: fit the prompt with an empty answer plus the reserve.
        prompt = fit_prompt(task, {**rec, "output": ""}, fmt, context, tokenizer, max_length, reserve=reserve)
        enc = encode_prompt(tokenizer, prompt)
        context_ids = enc.context if context_ids is None else context_ids
        labels = labels_of(prompt.lead) if task.kind == "classification" else []
        items.append(Item(rec, prompt, enc.query, labels))
    return context_ids or [], items


def _check_first_tokens(task: TaskDef, items: list[Item]) -> None:
    """First-token scoring needs labels that start with different tokens (else the first label always wins)."""
    for labels in {tuple(tuple(lab) for lab in it.labels) for it in items}:
        first_label: dict[int, str] = {}
        for label, ids in zip(task.labels, labels, strict=True):
            if ids[0] in first_label:
                raise UserError(
                    f"task '{task.name}': labels '{first_label[ids[0]]}' and '{label}' start with the same token "
                    f"({ids[0]}) under this tokenizer, so first-token scoring cannot tell them apart "
                    "(use scoring sum or mean)"
                )
            first_label[ids[0]] = label


def _longest_first(items: list[Item]) -> list[int]:
    """Row order for batching: longest first (the costliest batch runs first, little padding), ties by index."""
    return sorted(range(len(items)), key=lambda i: (-len(items[i].query), i))


# ---------------------------------------------------------------- HF backend: shared pieces


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _pad_id(tokenizer) -> int:
    pad = tokenizer.pad_token_id
    return pad if pad is not None else (tokenizer.eos_token_id or 0)


def _keeps_logits(model) -> bool:
    """Whether forward takes `logits_to_keep` (computing the LM head only where needed)."""
    return "logits_to_keep" in inspect.signature(model.forward).parameters


def _forward(model, input_ids, *, keep: int, **kwargs):
    """Logits of the last `keep` positions (all positions' logits are costly with a large vocabulary)."""
    if _keeps_logits(model):
        return model(input_ids=input_ids, logits_to_keep=keep, **kwargs).logits
    return model(input_ids=input_ids, **kwargs).logits[:, -keep:]


def _cache_kwarg(model) -> str:
    """transformers 5 calls the KV cache argument `cache`; older releases `past_key_values`."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


@torch.inference_mode()
def _encode_prefix(model, context_ids: list[int]):
    """The KV cache of the shared context (batch 1), or None if there is no context."""
    if not context_ids:
        return None
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    ids = torch.tensor([context_ids], device=_device(model))
    _forward(model, ids, keep=1, use_cache=True, **{_cache_kwarg(model): cache})
    return cache


def _expand(prefix, n: int):
    """A fresh copy of the prefix cache with batch size n (the model appends to the copy, not the prefix)."""
    if prefix is None:
        from transformers import DynamicCache

        return DynamicCache()
    cache = copy.deepcopy(prefix)
    if n > 1:
        cache.batch_repeat_interleave(n)
    return cache


def _tree_mask_ok(model) -> bool:
    # The label tree needs a custom 4D mask; sdpa and eager take one, flash-attention kernels do not.
    return getattr(model.config, "_attn_implementation", "sdpa") in ("sdpa", "eager")


# ---------------------------------------------------------------- HF backend: classification


@torch.inference_mode()
def _label_logprobs_tree(model, items: list[Item], prefix, n_prefix: int, pad_id: int) -> list[list[list[float]]]:
    """Per item, per label, the log-prob of each label token: one forward, all labels as a tree."""
    device, dtype = _device(model), model.dtype
    rows, segs, poss = [], [], []
    for it in items:
        ids, seg, pos = list(it.query), [0] * len(it.query), list(range(len(it.query)))
        for k, lab in enumerate(it.labels, 1):
            ids += lab
            seg += [k] * len(lab)
            pos += range(len(it.query), len(it.query) + len(lab))
        rows.append(ids), segs.append(seg), poss.append(pos)
    n, width = len(rows), max(map(len, rows))
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    seg = torch.full((n, width), -1, dtype=torch.long)
    position_ids = torch.zeros((n, width), dtype=torch.long)
    for b, (ids, s, p) in enumerate(zip(rows, segs, poss, strict=True)):  # left padding: every row ends at `width`
        input_ids[b, width - len(ids) :] = torch.tensor(ids)
        seg[b, width - len(ids) :] = torch.tensor(s)
        position_ids[b, width - len(ids) :] = torch.tensor(p)
    position_ids += n_prefix
    i = torch.arange(width)
    causal = i[:, None] >= i[None, :]
    sq, sk = seg[:, :, None], seg[:, None, :]
    # A token sees the query and its own label, never another label nor padding ...
    allowed = causal & (sk >= 0) & ((sk == 0) | (sk == sq))
    # ... and padding sees itself: a fully masked row would make NaNs that leak through 0-weights.
    allowed |= torch.eye(width, dtype=torch.bool)
    allowed = torch.cat([torch.ones(n, width, n_prefix, dtype=torch.bool), allowed], dim=-1)
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]

    keep = max(sum(map(len, it.labels)) for it in items) + 1
    kwargs = {_cache_kwarg(model): _expand(prefix, n)} if prefix is not None else {}
    logits = _forward(
        model,
        input_ids.to(device),
        keep=keep,
        attention_mask=mask.to(device),
        position_ids=position_ids.to(device),
        use_cache=prefix is not None,
        **kwargs,
    )
    logprobs = torch.log_softmax(logits.float(), dim=-1).cpu()
    out = []
    for b, it in enumerate(items):
        total = sum(map(len, it.labels))
        last_query = keep - total - 1  # window index of the last query token
        per_label, offset = [], keep - total
        for lab in it.labels:
            # Token 0 of every label is predicted by the last query token, token t by label token t-1.
            src = [last_query] + list(range(offset, offset + len(lab) - 1))
            per_label.append(logprobs[b, src, lab].tolist())
            offset += len(lab)
        out.append(per_label)
    return out


@torch.inference_mode()
def _label_logprobs_plain(model, items: list[Item], context_ids: list[int], pad_id: int) -> list[list[list[float]]]:
    """The reference computation: every (record, label) is a full sequence, no cache, no tree."""
    device = _device(model)
    rows = [context_ids + it.query + lab for it in items for lab in it.labels]
    n, width = len(rows), max(map(len, rows))
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    attn = torch.zeros((n, width), dtype=torch.long)
    for b, ids in enumerate(rows):
        input_ids[b, width - len(ids) :] = torch.tensor(ids)
        attn[b, width - len(ids) :] = 1
    position_ids = (attn.cumsum(1) - 1).clamp(min=0)  # left padding: positions as if unpadded
    keep = max(len(lab) for it in items for lab in it.labels) + 1
    logits = _forward(
        model, input_ids.to(device), keep=keep, attention_mask=attn.to(device), position_ids=position_ids.to(device)
    )
    logprobs = torch.log_softmax(logits.float(), dim=-1).cpu()
    out, r = [], 0
    for it in items:
        per_label = []
        for lab in it.labels:
            src = list(range(keep - len(lab) - 1, keep - 1))
            per_label.append(logprobs[r, src, lab].tolist())
            r += 1
        out.append(per_label)
    return out


def _classify_hf(model, tokenizer, items, context_ids, batch_size, prefix_cache, tick, limit) -> tuple[list, int]:
    """(per item, per label, token log-probs; the batch size used)."""
    pad_id = _pad_id(tokenizer)
    tree = prefix_cache and _tree_mask_ok(model)
    prefix = _encode_prefix(model, context_ids) if tree else None
    result: list = [None] * len(items)

    def process(idx: list[int]) -> None:
        batch = [items[i] for i in idx]
        if tree:
            scores = _label_logprobs_tree(model, batch, prefix, len(context_ids), pad_id)
        else:
            scores = _label_logprobs_plain(model, batch, context_ids, pad_id)
        for i, s in zip(idx, scores, strict=True):
            result[i] = s
        tick(len(idx))

    used = run_in_batches(process, _longest_first(items), batch_size, device=_device(model), limit=limit)
    return result, used


def label_score(token_logprobs: list[float], scoring: str) -> float:
    """One label's score from its token log-probs under a scoring rule."""
    if scoring == "sum":
        return sum(token_logprobs)
    if scoring == "mean":
        return sum(token_logprobs) / len(token_logprobs)
    if scoring == "first-token":
        return token_logprobs[0]
    raise UserError(f"unknown scoring '{scoring}' (use {', '.join(SCORING)})")


# ---------------------------------------------------------------- HF backend: generation


def _eos_ids(model, tokenizer) -> set[int]:
    ids = set()
    for source in (getattr(model, "generation_config", None), model.config, tokenizer):
        eos = getattr(source, "eos_token_id", None)
        ids |= set(eos) if isinstance(eos, (list, tuple)) else ({eos} if eos is not None else set())
    return ids


@torch.inference_mode()
def _generate_batch(
    model, tokenizer, items: list[Item], prefix, context_ids: list[int], max_new_tokens: int, eos: set[int]
) -> tuple[list[str], int]:
    """(greedy continuations of a batch of prompts, stopped per row (EOS, blank line, max_new_tokens);
    the number of decoding steps the batch took)."""
    device = _device(model)
    n_prefix = len(context_ids) if prefix is not None else 0
    rows = [it.query if prefix is not None else context_ids + it.query for it in items]
    n, width = len(rows), max(map(len, rows))
    input_ids = torch.full((n, width), _pad_id(tokenizer), dtype=torch.long)
    attn = torch.zeros((n, n_prefix + width), dtype=torch.long)
    attn[:, :n_prefix] = 1
    for b, ids in enumerate(rows):  # left padding, after the prefix: [prefix][pad][query]
        input_ids[b, width - len(ids) :] = torch.tensor(ids)
        attn[b, n_prefix + width - len(ids) :] = 1
    position_ids = n_prefix + (attn[:, n_prefix:].cumsum(1) - 1).clamp(min=0)
    cache = _expand(prefix, n)
    cache_kw = _cache_kwarg(model)
    attn, position_ids = attn.to(device), position_ids.to(device)
    logits = _forward(
        model,
        input_ids.to(device),
        keep=1,
        attention_mask=attn,
        position_ids=position_ids,
        use_cache=True,
        **{cache_kw: cache},
    )
    next_ids = logits[:, -1].float().argmax(-1)
    last_pos = position_ids[:, -1]
    generated: list[list[int]] = [[] for _ in rows]
    active = list(range(n))  # rows of `items` still in the batch
    steps = 0
    for step in range(max_new_tokens):
        keep = []
        for r, b in enumerate(active):
            tok = int(next_ids[r])
            if tok in eos:
                continue
            generated[b].append(tok)
            if step + 1 < max_new_tokens and not stops(tokenizer.decode(generated[b], skip_special_tokens=True)):
                keep.append(r)
        if not keep:
            break
        steps += 1
        if len(keep) < len(active):  # drop finished rows: no more compute spent on them
            sel = torch.tensor(keep, device=device)
            cache.batch_select_indices(sel)
            attn, next_ids, last_pos = attn[sel], next_ids[sel], last_pos[sel]
            active = [active[r] for r in keep]
        attn = torch.cat([attn, attn.new_ones((len(active), 1))], dim=1)
        last_pos = last_pos + 1
        logits = _forward(
            model,
            next_ids[:, None],
            keep=1,
            attention_mask=attn,
            position_ids=last_pos[:, None],
            use_cache=True,
            **{cache_kw: cache},
        )
        next_ids = logits[:, -1].float().argmax(-1)
    return [tokenizer.decode(g, skip_special_tokens=True) for g in generated], steps


def _generate_hf(model, tokenizer, task, items, context_ids, batch_size, prefix_cache, tick, limit):
    """(generated texts; the batch size used; decoding steps over all batches)."""
    prefix = _encode_prefix(model, context_ids) if prefix_cache else None
    eos = _eos_ids(model, tokenizer)
    result: list = [None] * len(items)
    steps = 0

    def process(idx: list[int]) -> None:
        nonlocal steps
        batch = [items[i] for i in idx]
        texts, n = _generate_batch(model, tokenizer, batch, prefix, context_ids, task.max_new_tokens, eos)
        for i, t in zip(idx, texts, strict=True):
            result[i] = t
        steps += n
        tick(len(idx))

    used = run_in_batches(process, _longest_first(items), batch_size, device=_device(model), limit=limit)
    return result, used, steps


# ---------------------------------------------------------------- the engine


def evaluate(
    model,
    tokenizer,
    task: TaskDef,
    records: list[dict],
    *,
    shots: list[dict] | None = None,
    fmt: int = 0,
    scoring: str = "sum",
    batch_size: int | str = "auto",
    max_length: int | None = None,
    backend: str = "hf",
    prefix_cache: bool = True,
    memory_limit: int | str | None = None,
    data_report=None,
    desc: str = "eval",
) -> EvalResult:
    """Evaluate a loaded model on `records` of `task` with `shots` as in-context examples.

    `max_length` defaults to the model's limit; prompts longer than it are truncated by the documented
    rule (the query's input field is cut) and counted in `metrics["truncated"]`. `batch_size`: records
    per forward pass, or "auto" (see ftgen.memory; the size used is `metrics["batch_size"]`).
    `memory_limit` (bytes or "200MB"; default: FTGEN_MEMORY_LIMIT) simulates a device that holds no more,
    for tests. `prefix_cache=False` runs the plain reference computation (no shared KV cache, no label
    tree). `backend="vllm"` takes a `vllm.LLM` as `model` (see ftgen.vllm_backend.load_vllm).
    `data_report`: the test set's `ftgen.data.LoadReport`, whose dropped records (ignored labels, invalid
    records) the metrics count beside the records scored. `desc` labels the progress bar.
    """
    if scoring not in SCORING:
        raise UserError(f"unknown scoring '{scoring}' (use {', '.join(SCORING)})")
    if backend not in BACKENDS:
        raise UserError(f"unknown backend '{backend}' (use {', '.join(BACKENDS)})")
    if not records:
        raise UserError(f"task '{task.name}': no records to evaluate")
    batch_size = check_batch_size(batch_size, "batch size")
    limit = injected_limit(memory_limit)
    if backend == "vllm":
        from ftgen import vllm_backend

        vllm_backend.vllm_module()  # installed?
    t0 = time.perf_counter()
    shots = shots or []
    if max_length is None:
        max_length = _model_max_length(model, tokenizer, backend)
    context = render_context(task, shots, fmt)
    context_ids, items = _prepare(task, records, context, fmt, tokenizer, max_length)
    if scoring == "first-token" and task.kind == "classification":
        _check_first_tokens(task, items)
    with bar(total=len(items), desc=desc, unit="rec") as pbar:
        run = _run_backend(model, tokenizer, task, items, context_ids, backend, batch_size, prefix_cache, pbar, limit)
    if task.kind == "classification":
        predictions, task_metrics = _classification_outputs(task, items, run["logprobs"], scoring)
    else:
        predictions, task_metrics = _generation_outputs(task, items, run["texts"])
    task_metrics |= record_counts(len(items), data_report) | score_interval(task, predictions)
    seconds = time.perf_counter() - t0
    work = len(context_ids) + sum(len(it.query) + sum(map(len, it.labels)) for it in items)
    metrics = {
        "metric": task.metric,
        "score": task_metrics["accuracy" if task.kind == "classification" else task.metric],
        "n": len(items),
        "truncated": sum(it.prompt.truncated for it in items),
        "seconds": round(seconds, 3),
        "examples_per_s": round(len(items) / seconds, 3) if seconds > 0 else None,
        "task": task.name,
        "shots": len(shots),
        "fmt": fmt,
        "scoring": scoring if task.kind == "classification" else None,
        **({"rouge_stem": task.rouge_stem} if task.kind == "generation" else {}),
        "max_length": max_length,
        "context_tokens": len(context_ids),
        "prompt_tokens": work,  # context once + every query (+ label) token: the prefill work
        "backend": backend,
        "batch_size": run["batch_size"],
        **({"decode_steps": run["steps"]} if "steps" in run else {}),
        **task_metrics,
    }
    return EvalResult(metrics, predictions)


def _model_max_length(model, tokenizer, backend: str) -> int:
    if backend == "vllm":
        from ftgen.vllm_backend import vllm_max_length

        return vllm_max_length(model)
    from ftgen.models import max_length

    return max_length(model, tokenizer)


def _run_backend(model, tokenizer, task, items, context_ids, backend, batch_size, prefix_cache, pbar, limit) -> dict:
    """The model's raw output for every item: label log-probs or generated texts, and how it was batched."""
    if backend == "vllm":
        from ftgen import vllm_backend

        if task.kind == "classification":
            out = {"logprobs": vllm_backend.classify(model, items, context_ids)}
        else:
            out = {"texts": [cut_at_stop(t) for t in vllm_backend.generate(model, task, items, context_ids)]}
        pbar.update(len(items))
        return out | {"batch_size": None}  # vLLM schedules its own batches
    if task.kind == "classification":
        logprobs, used = _classify_hf(
            model, tokenizer, items, context_ids, batch_size, prefix_cache, pbar.update, limit
        )
        return {"logprobs": logprobs, "batch_size": used}
    texts, used, steps = _generate_hf(
        model, tokenizer, task, items, context_ids, batch_size, prefix_cache, pbar.update, limit
    )
    return {"texts": texts, "batch_size": used, "steps": steps}


def _classification_outputs(task: TaskDef, items: list[Item], logprobs, scoring: str) -> tuple[list[dict], dict]:
    """(one prediction row per item, the task metrics): the label with the best score wins."""
    predictions, preds = [], []
    for it, lps in zip(items, logprobs, strict=True):
        scores = {lab: label_score(lp, scoring) for lab, lp in zip(task.labels, lps, strict=True)}
        pred = max(task.labels, key=lambda lab: scores[lab])  # ties: the first label in task order
        preds.append(pred)
        predictions.append(
            {
                "id": it.record["id"],
                "prompt_hash": prompt_hash(it.prompt.text),
                "prediction": pred,
                "gold": it.record["output"],
                "scores": scores,
                "logprobs": {lab: sum(lp) for lab, lp in zip(task.labels, lps, strict=True)},
                "truncated": it.prompt.truncated,
            }
        )
    golds = [it.record["output"] for it in items]
    return predictions, M.classification_metrics(preds, golds, task.labels)


def _generation_outputs(task: TaskDef, items: list[Item], texts: list[str]) -> tuple[list[dict], dict]:
    """(one prediction row per item, the task metrics): the metric sees each output's first paragraph."""
    predictions = [
        {
            "id": it.record["id"],
            "prompt_hash": prompt_hash(it.prompt.text),
            "prediction": M.first_paragraph(text),
            "gold": it.record["output"],
            "generated": text,
            "truncated": it.prompt.truncated,
        }
        for it, text in zip(items, texts, strict=True)
    ]
    return predictions, M.generation_metrics(texts, [it.record["output"] for it in items], stem=task.rouge_stem)


def score_interval(task: TaskDef, predictions: list[dict]) -> dict:
    """The score's 95% interval from the per-record predictions, computed as the report does (ftgen.stats:
    Clopper-Pearson for accuracy, a seeded bootstrap over records for Rouge-L and BLEU)."""
    metric = "accuracy" if task.kind == "classification" else task.metric
    positions = range(len(predictions))  # one cell: records need no id to match, and test-set ids may repeat
    preds, golds = [str(p["prediction"]) for p in predictions], [str(p["gold"]) for p in predictions]
    e = stats.score_interval(metric, stats.cell_records(task.kind, metric, positions, preds, golds, task.rouge_stem))
    return {"ci_low": e.low, "ci_high": e.high, "ci_method": e.method}


def record_counts(n_scored: int, data_report=None) -> dict:
    """The records a cell scored and those its test set dropped, by reason (from a `ftgen.data.LoadReport`)."""
    dropped = {
        "ignored_label": getattr(data_report, "ignored", 0),  # e.g. MultiNLI's '-': no gold label to score
        "invalid": getattr(data_report, "invalid", 0),  # skipped by --skip-invalid / skip_invalid
    }
    return {"n_scored": n_scored, "n_dropped": sum(dropped.values()), "dropped": dropped}


def write_eval_outputs(result: EvalResult, out_dir: Path) -> None:
    """metrics.json and predictions.jsonl (one line per record) in out_dir, each written atomically."""
    out_dir = Path(out_dir)
    atomic_write_json(out_dir / "metrics.json", result.metrics)
    atomic_write_jsonl(out_dir / "predictions.jsonl", result.predictions)
