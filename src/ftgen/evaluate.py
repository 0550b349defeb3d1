"""Evaluation engine: classification by label scoring, batched greedy generation, shared-prefix KV cache.

Every record of a test set gets the same in-context examples, so its prompts share one prefix (the
rendered shots, plus BOS where the tokenizer adds one). We run that prefix through the model once and
reuse its KV cache for every record and every label: k-shot evaluation then costs about what 0-shot
costs. `prefix_cache=False` is the plain reference computation (each label scored on the full prompt,
as lm-evaluation-harness does); the tests hold the two equal.

Classification: each label word (with the answer separator) is scored as a continuation of the prompt.
One forward pass per batch scores all labels: a row is `[left pad][query][label 1][label 2]...` and a
4D attention mask lets each label see the prefix and the query but not the other labels (a tree of
continuations), with position ids that restart after the query for every label. Scoring rules:
    sum          sum of the label's token log-probs (default)
    mean         that sum divided by the number of tokens (length-normalised)
    first-token  the log-prob of the label's first token only (the paper's rule)

Generation: greedy, batched with left padding after the cached prefix (explicit position ids keep every
row's positions equal to its unpadded ones), rows sorted by length, finished rows dropped from the batch.
A row stops at EOS, at `max_new_tokens`, or once its stripped output contains a blank line; the metric
sees the first paragraph of the stripped output, as in the paper.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ftgen import metrics as M
from ftgen.errors import UserError
from ftgen.files import atomic_write_json, atomic_write_jsonl, ensure_writable_dir
from ftgen.progress import bar
from ftgen.prompts import Prompt, encode_prompt, encode_text, fit_prompt, render_context, separator_after
from ftgen.tasks import TaskDef

SCORING = ("sum", "mean", "first-token")
BACKENDS = ("hf", "vllm")
STOP = "\n\n"  # a blank line ends a generated answer


@dataclass
class EvalResult:
    metrics: dict  # metric, score (0-100), n, truncated, seconds + the task kind's metrics
    predictions: list[dict]  # one per record, in input order


@dataclass
class _Item:
    """One record, ready for the model."""

    record: dict
    prompt: Prompt
    query: list[int]  # token ids after the shared context
    labels: list[list[int]]  # classification: ids of separator + label word, in task.labels order


def prompt_hash(text: str) -> str:
    """sha256 of the full prompt text, first 16 hex digits."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def stops(text: str) -> bool:
    """True once a generated text holds a blank line after some content."""
    return STOP in text.lstrip()


# ---------------------------------------------------------------- preparation


def _prepare(task: TaskDef, records: list[dict], context: str, fmt: int, tokenizer, max_length: int):
    """(context ids, items): fit each record's prompt in max_length and tokenize it segment-wise."""
    label_ids: dict[str, list[int]] = {}

    def encode_label(text: str) -> list[int]:
        if text not in label_ids:
            label_ids[text] = encode_text(tokenizer, text)
        return label_ids[text]

    if task.kind == "classification":
        # Room for the longest label under either separator, so that every label's continuation fits.
        seps = {task.answer_separator, ""}
        reserve = max(len(encode_label(s + lab)) for lab in task.labels for s in seps)
    else:
        reserve = task.max_new_tokens
    context_ids = None
    items = []
    for rec in records:
        # The gold answer is not part of the input: fit the prompt with an empty answer plus the reserve.
        prompt = fit_prompt(task, {**rec, "output": ""}, fmt, context, tokenizer, max_length, reserve=reserve)
        enc = encode_prompt(tokenizer, prompt)
        context_ids = enc.context if context_ids is None else context_ids
        sep = separator_after(task, prompt.query)
        labels = [encode_label(sep + lab) for lab in task.labels] if task.kind == "classification" else []
        if any(not ids for ids in labels):
            raise UserError(f"task '{task.name}': a label word encodes to no tokens")
        items.append(_Item(rec, prompt, enc.query, labels))
    return context_ids or [], items


def _batches(order: list[int], batch_size: int) -> list[list[int]]:
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


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
def _label_logprobs_tree(model, items: list[_Item], prefix, n_prefix: int, pad_id: int) -> list[list[list[float]]]:
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
def _label_logprobs_plain(model, items: list[_Item], context_ids: list[int], pad_id: int) -> list[list[list[float]]]:
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


def _classify_hf(model, tokenizer, items, context_ids, batch_size, prefix_cache, tick) -> list[list[list[float]]]:
    pad_id = _pad_id(tokenizer)
    tree = prefix_cache and _tree_mask_ok(model)
    prefix = _encode_prefix(model, context_ids) if tree else None
    # Longest first: the largest batch comes first (an out-of-memory error shows at once), little padding.
    order = sorted(range(len(items)), key=lambda i: (-len(items[i].query), i))
    result: list = [None] * len(items)
    for idx in _batches(order, batch_size):
        batch = [items[i] for i in idx]
        if tree:
            scores = _label_logprobs_tree(model, batch, prefix, len(context_ids), pad_id)
        else:
            scores = _label_logprobs_plain(model, batch, context_ids, pad_id)
        for i, s in zip(idx, scores, strict=True):
            result[i] = s
        tick(len(idx))
    return result


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
    model, tokenizer, items: list[_Item], prefix, context_ids: list[int], max_new_tokens: int, eos: set[int]
) -> list[str]:
    """Greedy continuations of a batch of prompts, stopped per row (EOS, blank line, max_new_tokens)."""
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
    return [tokenizer.decode(g, skip_special_tokens=True) for g in generated]


def _generate_hf(model, tokenizer, task, items, context_ids, batch_size, prefix_cache, tick) -> list[str]:
    prefix = _encode_prefix(model, context_ids) if prefix_cache else None
    eos = _eos_ids(model, tokenizer)
    order = sorted(range(len(items)), key=lambda i: (-len(items[i].query), i))
    result: list = [None] * len(items)
    for idx in _batches(order, batch_size):
        texts = _generate_batch(
            model, tokenizer, [items[i] for i in idx], prefix, context_ids, task.max_new_tokens, eos
        )
        for i, t in zip(idx, texts, strict=True):
            result[i] = t
        tick(len(idx))
    return result


# ---------------------------------------------------------------- vLLM backend (GPU, optional)


def _vllm():
    try:
        import vllm
    except ImportError:
        raise UserError("--backend vllm needs vLLM on a GPU machine: pip install 'ftgen[gpu]'") from None
    return vllm


def load_vllm(name_or_path: str, dtype: str = "auto"):
    """(vllm.LLM, tokenizer) with prefix caching on; an adapter must be merged into a checkpoint first."""
    from ftgen.models import is_adapter_dir, resolve_model

    vllm = _vllm()
    path = resolve_model(name_or_path)
    if is_adapter_dir(path):
        raise UserError(f"{path}: the vllm backend takes a full checkpoint, not an adapter dir (merge it first)")
    names = {"auto": "auto", "bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
    llm = vllm.LLM(model=path, dtype=names.get(dtype, dtype), enable_prefix_caching=True)
    return llm, llm.get_tokenizer()


def _vllm_max_length(llm) -> int:
    return int(llm.llm_engine.model_config.max_model_len)


def _classify_vllm(llm, items, context_ids) -> list[list[list[float]]]:
    vllm = _vllm()
    from vllm.inputs import TokensPrompt

    # vLLM's automatic prefix caching shares the context's KV blocks across all these requests.
    prompts = [TokensPrompt(prompt_token_ids=context_ids + it.query + lab) for it in items for lab in it.labels]
    params = vllm.SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=1)
    outs = iter(llm.generate(prompts, params, use_tqdm=False))
    result = []
    for it in items:
        per_label = []
        for lab in it.labels:
            plp = next(outs).prompt_logprobs
            n = len(context_ids) + len(it.query)
            per_label.append([plp[n + t][tok].logprob for t, tok in enumerate(lab)])
        result.append(per_label)
    return result


def _generate_vllm(llm, task, items, context_ids) -> list[str]:
    vllm = _vllm()
    from vllm.inputs import TokensPrompt

    prompts = [TokensPrompt(prompt_token_ids=context_ids + it.query) for it in items]
    params = vllm.SamplingParams(max_tokens=task.max_new_tokens, temperature=0.0)
    texts = []
    for out in llm.generate(prompts, params, use_tqdm=False):
        text = out.outputs[0].text
        # vLLM's stop strings would also stop on a leading blank line: cut after the same rule instead.
        lead = len(text) - len(text.lstrip())
        cut = text.find(STOP, lead)
        texts.append(text if cut < 0 else text[: cut + len(STOP)])
    return texts


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
    batch_size: int = 16,
    max_length: int | None = None,
    backend: str = "hf",
    prefix_cache: bool = True,
    desc: str = "eval",
) -> EvalResult:
    """Evaluate a loaded model on `records` of `task` with `shots` as in-context examples.

    `max_length` defaults to the model's limit; prompts longer than it are truncated by the documented
    rule (the query's input field is cut) and counted in `metrics["truncated"]`. `prefix_cache=False`
    runs the plain reference computation (no shared KV cache, no label tree). `backend="vllm"` takes a
    `vllm.LLM` as `model` (see `load_vllm`). `desc` labels the progress bar.
    """
    if scoring not in SCORING:
        raise UserError(f"unknown scoring '{scoring}' (use {', '.join(SCORING)})")
    if backend not in BACKENDS:
        raise UserError(f"unknown backend '{backend}' (use {', '.join(BACKENDS)})")
    if not records:
        raise UserError(f"task '{task.name}': no records to evaluate")
    if batch_size < 1:
        raise UserError(f"batch size must be >= 1, got {batch_size}")
    if backend == "vllm":
        _vllm()  # installed?
    t0 = time.perf_counter()
    shots = shots or []
    if max_length is None:
        from ftgen.models import max_length as model_max_length

        max_length = _vllm_max_length(model) if backend == "vllm" else model_max_length(model, tokenizer)
    context = render_context(task, shots, fmt)
    context_ids, items = _prepare(task, records, context, fmt, tokenizer, max_length)

    with bar(total=len(items), desc=desc, unit="rec") as pbar:
        if task.kind == "classification":
            if backend == "vllm":
                logprobs = _classify_vllm(model, items, context_ids)
            else:
                logprobs = _classify_hf(model, tokenizer, items, context_ids, batch_size, prefix_cache, pbar.update)
        elif backend == "vllm":
            texts = _generate_vllm(model, task, items, context_ids)
        else:
            texts = _generate_hf(model, tokenizer, task, items, context_ids, batch_size, prefix_cache, pbar.update)

    predictions = []
    golds = [it.record["output"] for it in items]
    if task.kind == "classification":
        preds = []
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
        task_metrics = M.classification_metrics(preds, golds, task.labels)
        score = task_metrics["accuracy"]
    else:
        for it, text in zip(items, texts, strict=True):
            predictions.append(
                {
                    "id": it.record["id"],
                    "prompt_hash": prompt_hash(it.prompt.text),
                    "prediction": M.first_paragraph(text),
                    "gold": it.record["output"],
                    "generated": text,
                    "truncated": it.prompt.truncated,
                }
            )
        task_metrics = M.generation_metrics(texts, golds)
        score = task_metrics[task.metric]
    seconds = time.perf_counter() - t0
    metrics = {
        "metric": task.metric,
        "score": score,
        "n": len(items),
        "truncated": sum(it.prompt.truncated for it in items),
        "seconds": round(seconds, 3),
        "examples_per_s": round(len(items) / seconds, 3) if seconds > 0 else None,
        "task": task.name,
        "shots": len(shots),
        "fmt": fmt,
        "scoring": scoring if task.kind == "classification" else None,
        "max_length": max_length,
        "context_tokens": len(context_ids),
        "backend": backend,
        **task_metrics,
    }
    return EvalResult(metrics, predictions)


def write_eval_outputs(result: EvalResult, out_dir: Path) -> None:
    """metrics.json and predictions.jsonl (one line per record) in out_dir, each written atomically."""
    out_dir = Path(out_dir)
    atomic_write_json(out_dir / "metrics.json", result.metrics)
    atomic_write_jsonl(out_dir / "predictions.jsonl", result.predictions)


# ---------------------------------------------------------------- `ftgen eval`


@dataclass
class _Cell:
    test_set: str
    records: list[dict]
    report: object  # ftgen.data.LoadReport
    shots: list[dict]
    k: int
    fmt: int


def plan_eval(
    task: TaskDef,
    data_dir: str | Path | None,
    test_sets: list[str] | None,
    shots: list[int],
    fmts: list[int],
    *,
    limit: int | None = None,
    skip_invalid: bool = False,
    shot_seed: int | None = None,
) -> list[_Cell]:
    """Load and check every test set, pool and format up front, so bad input fails before the model loads."""
    from ftgen.data import load_pool, load_test_set, scan_task_files
    from ftgen.prompts import select_shots

    if not shots:
        raise UserError("--shots: give at least one number of in-context examples")
    if not fmts:
        raise UserError("--prompt-format: give at least one prompt format")
    for f in fmts:
        if not 0 <= f < len(task.templates):
            raise UserError(
                f"prompt format {f} does not exist for task '{task.name}' "
                f"(it has {len(task.templates)}: 0..{len(task.templates) - 1})"
            )
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be >= 1, got {limit}")
    if not test_sets:
        if data_dir is None:
            raise UserError("give --test-set, or --data-dir to evaluate every test set of the task")
        test_sets = sorted(scan_task_files(data_dir, task).test)
        if not test_sets:
            raise UserError(f"no test sets for task '{task.name}' in {data_dir}")
    cells = []
    for name in dict.fromkeys(test_sets):
        ds = load_test_set(data_dir, task, name, limit=limit, skip_invalid=skip_invalid)
        pool = load_pool(data_dir, task, name).records if any(shots) else []
        for k in dict.fromkeys(shots):
            chosen = select_shots(pool, k, shot_seed)
            cells += [_Cell(ds.name, ds.records, ds.report, chosen, k, f) for f in dict.fromkeys(fmts)]
    return cells


def run_eval(
    model_name: str,
    task_name: str,
    out: str | Path,
    *,
    data_dir: str | Path | None = None,
    test_sets: list[str] | None = None,
    shots: Sequence[int] = (0,),
    fmts: Sequence[int] = (0,),
    limit: int | None = None,
    scoring: str = "sum",
    batch_size: int = 16,
    shot_seed: int | None = None,
    skip_invalid: bool = False,
    dtype: str = "auto",
    max_length: int | None = None,
    backend: str = "hf",
    task_dirs: list[str | Path] | None = None,
) -> list[dict]:
    """What `ftgen eval` does: check all input, load the model once, evaluate every (test set, shots, format).

    Writes OUT/<test_set>/shots<k>_fmt<f>/{metrics.json,predictions.jsonl} and OUT/summary.json;
    returns the summary rows.
    """
    from ftgen.models import choose_dtype, load_model
    from ftgen.progress import log
    from ftgen.tasks import load_task

    task = load_task(task_name, task_dirs)
    if scoring not in SCORING:
        raise UserError(f"--scoring: unknown rule '{scoring}' (use {', '.join(SCORING)})")
    if backend not in BACKENDS:
        raise UserError(f"--backend: unknown backend '{backend}' (use {', '.join(BACKENDS)})")
    if batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {batch_size}")
    if max_length is not None and max_length < 1:
        raise UserError(f"--max-length must be >= 1, got {max_length}")
    choose_dtype(dtype)  # an unknown dtype fails here, before anything is loaded
    cells = plan_eval(
        task, data_dir, test_sets, list(shots), list(fmts), limit=limit, skip_invalid=skip_invalid, shot_seed=shot_seed
    )
    for ds_name, report in {c.test_set: c.report for c in cells}.items():
        if report.invalid or report.ignored:
            log(f"ftgen: {ds_name}: {report.kept} records kept ({report.invalid} invalid, {report.ignored} unlabelled)")

    ensure_writable_dir(out)  # before the model loads: a read-only --out fails at once
    try:
        if backend == "vllm":
            model, tokenizer = load_vllm(model_name, dtype)
        else:
            model, tokenizer = load_model(model_name, dtype=dtype, verbose=True)
    except UserError:
        raise
    except Exception as e:  # a broken checkpoint fails in many ways; the user needs the one line
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"cannot load model '{model_name}': {first}") from None

    out = Path(out)
    rows = []
    for c in cells:
        result = evaluate(
            model,
            tokenizer,
            task,
            c.records,
            shots=c.shots,
            fmt=c.fmt,
            scoring=scoring,
            batch_size=batch_size,
            max_length=max_length,
            backend=backend,
            desc=f"{c.test_set} {c.k}-shot fmt {c.fmt}",
        )
        report = {k: v for k, v in vars(c.report).items() if k != "problems"}
        result.metrics.update(
            model=model_name, test_set=c.test_set, data=report, shot_ids=[s["id"] for s in c.shots], shot_seed=shot_seed
        )
        cell_dir = out / c.test_set / f"shots{c.k}_fmt{c.fmt}"
        write_eval_outputs(result, cell_dir)
        m = result.metrics
        row = {
            "model": model_name,
            "task": task.name,
            "test_set": c.test_set,
            "shots": c.k,
            "fmt": c.fmt,
            "metric": m["metric"],
            "score": round(m["score"], 2),
            "n": m["n"],
            "truncated": m["truncated"],
            "seconds": m["seconds"],
            "ex_s": m["examples_per_s"],
            "dir": str(cell_dir),
        }
        if task.kind == "classification":
            row["macro_f1"] = round(m["macro_f1"], 2)
            row["pred_share"] = {lab: round(v, 1) for lab, v in m["pred_share"].items()}
        else:
            row["bleu"] = round(m["bleu"], 2)
        rows.append(row)
        log(f"ftgen: {c.test_set} {c.k}-shot fmt {c.fmt}: {m['metric']} {m['score']:.2f} ({m['n']} records)")
    _update_summary(out / "summary.json", rows)
    return rows


def _update_summary(path: Path, rows: list[dict]) -> None:
    """Merge rows into OUT/summary.json: several `ftgen eval` runs (tasks, models) may share one OUT."""
    import json

    def key(r: dict) -> tuple:
        return r.get("model"), r.get("task"), r.get("test_set"), r.get("shots"), r.get("fmt")

    try:
        previous = json.loads(path.read_text()).get("rows", []) if path.exists() else []
    except (OSError, ValueError, AttributeError):
        previous = []  # unreadable: rewritten from this run's rows
    new = {key(r) for r in rows}
    atomic_write_json(path, {"rows": [r for r in previous if key(r) not in new] + rows})
