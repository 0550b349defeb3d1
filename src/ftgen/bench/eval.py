"""`ftgen bench eval`: the evaluation engine against lm-evaluation-harness and against one-by-one generate.

1. Classification, k-shot: ftgen (shared-prefix KV cache, labels as a tree) against lm-evaluation-harness
   (`lm-eval`, hf backend) on the same prompts, records and label words, given to lm-eval as a custom
   task over a local JSON file. The same loaded model (one copy on the device), dtype and process.
   Batch size: "auto" by default on both sides: on a GPU ftgen's search (ftgen.memory) against lm-eval's
   own `batch_size="auto"` (given ftgen's upper bound, 1024, instead of its default 64); on a CPU both 16.
   Timed on both sides: prompts in, label log-likelihoods out (`evaluate` / `HFLM.loglikelihood`), the
   device synchronised.
2. Generation: ftgen's batched greedy decoding against a loop of one-record `model.generate` calls
   (greedy, same max new tokens, same stop rule), with identical outputs required (in fp32).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from ftgen.bench import default_data_dir, say
from ftgen.device import current_device, device_name, timed
from ftgen.memory import AUTO_MAX_BATCH, CPU_AUTO_BATCH

CLASSIFICATION_SETS = ["sentiment:sst2", "inference:multinli", "detection:qqp"]
GENERATION_SET = "question:socialqa"
_say = say


def _parse_set(spec: str) -> tuple[str, str]:
    from ftgen.errors import UserError

    task, sep, name = spec.partition(":")
    if not sep or not task or not name:
        raise UserError(f"benchmark test set '{spec}': write it as TASK:TEST_SET, e.g. sentiment:sst2")
    return task, name


def _load_set(data_dir: Path, spec: str, n: int, shots: int):
    """(task, records, shots) of a TASK:SET spec, with the paper's choice of shots (the first k of the pool)."""
    from ftgen.eval_run import load_set

    return load_set(data_dir, *_parse_set(spec), n, shots)


# ---------------------------------------------------------------- classification vs lm-eval


def _lm_eval_task(tmp: Path, name: str, task, records: list[dict], shots: list[dict], fmt: int) -> None:
    """A custom lm-eval task: our exact prompt text, our label words with their separator, the gold index."""
    from ftgen.prompts import build_prompt, render_context

    context = render_context(task, shots, fmt)
    rows = []
    for rec in records:
        prompt = build_prompt(task, rec, fmt, context=context)
        rows.append(
            {
                "id": rec["id"],
                "prompt": prompt.text,
                "choices": [prompt.lead + lab for lab in task.labels],
                "gold": task.labels.index(rec["output"]),
            }
        )
    data = tmp / f"{name}.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    # Field names as doc_to_* values: lm-eval reads those fields as they are (no template rendering).
    (tmp / f"{name}.yaml").write_text(
        f"task: {name}\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        "doc_to_text: prompt\n"
        "doc_to_choice: choices\n"
        "doc_to_target: gold\n"
        'target_delimiter: ""\n'
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
    )


def _lm_eval_modules():
    from ftgen.errors import UserError

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # local model dir and local JSON data only: never the network
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as e:
        raise UserError(f"the eval benchmark needs lm-evaluation-harness: pip install 'ftgen[bench]' ({e})") from None
    return lm_eval, HFLM, TaskManager


def _segmentwise(HFLM):
    """HFLM with one change: the shared in-context examples are tokenized apart from the rest of the prompt.

    That is ftgen's canonical rule (prompts.py), so both sides score the very same token ids. Stock HFLM
    tokenizes the whole prompt string, and BPE merges across the shot boundary differ (SmolLM2 reads
    "\\n\\n###" as "\\n", "\\n", "###" but the context's own "\\n\\n" as one token): log-probs then move by up to
    ~0.1 nats and near-tie records flip. `--lm-eval-tokenization native` measures stock HFLM instead.
    """

    class SegmentwiseHFLM(HFLM):
        shared_context = ""

        def tok_encode(self, string, add_special_tokens=None, left_truncate_len=None, **kwargs):
            ctx = self.shared_context
            if not ctx or len(string) <= len(ctx) or not string.startswith(ctx):
                return super().tok_encode(string, add_special_tokens, left_truncate_len, **kwargs)
            ids = super().tok_encode(ctx, add_special_tokens) + super().tok_encode(string[len(ctx) :], False)
            return ids[-left_truncate_len:] if left_truncate_len else ids

    return SegmentwiseHFLM


class _Timed:
    """Wraps HFLM.loglikelihood to time what ftgen's `evaluate` does: prompts in, label scores out."""

    def __init__(self, lm, device):
        self.seconds = 0.0
        inner = lm.loglikelihood

        def timed_call(*args, **kwargs):
            with timed(device) as t:
                result = inner(*args, **kwargs)
            self.seconds += t["seconds"]
            return result

        lm.loglikelihood = timed_call


def _lm_eval_batch(batch_size: int | str, device) -> int | str:
    """lm-eval's batch size: its own "auto" on a GPU; on a CPU the number ftgen's "auto" resolves to."""
    if batch_size == "auto":
        return "auto" if device.type == "cuda" else CPU_AUTO_BATCH
    return int(batch_size)


def _lm_eval_predictions(lm_eval, lm, manager, name: str, task, timer) -> tuple[float, dict, float]:
    """(accuracy, id -> predicted label, seconds) of lm-eval on one custom task, after a 2-record warm-up."""
    lm_eval.simple_evaluate(model=lm, tasks=[name], task_manager=manager, limit=2, log_samples=False)
    timer.seconds = 0.0
    res = lm_eval.simple_evaluate(model=lm, tasks=[name], task_manager=manager, log_samples=True)
    preds = {}
    for sample in res["samples"][name]:
        lls = [r[0] for r in sample["filtered_resps"]]
        preds[sample["doc"]["id"]] = task.labels[max(range(len(lls)), key=lls.__getitem__)]
    return 100.0 * res["results"][name]["acc,none"], preds, timer.seconds


def bench_classification(
    data_dir: Path | None = None,
    sets: list[str] = CLASSIFICATION_SETS,
    records: int = 100,
    shots: int = 4,
    batch_size: int | str = "auto",
    dtype: str = "fp32",
    lm_eval_tokenization: str = "ftgen",
    model: str = "default",
) -> dict:
    """ftgen vs lm-eval on each set: accuracies, examples/s, agreement; returns the totals and speedup.

    fp32 by default: two correct computations in bf16 (different batch shapes, a cached prefix) round
    differently, logits move by ~0.1 nats and 2-4% of near-tie records flip, which can put the
    accuracies 2 points apart on 100 records. In fp32 both sides give the same predictions.
    """
    from ftgen.errors import UserError
    from ftgen.evaluate import evaluate
    from ftgen.models import load_model
    from ftgen.prompts import render_context

    if lm_eval_tokenization not in ("ftgen", "native"):
        raise UserError(f"--lm-eval-tokenization: use ftgen or native, not '{lm_eval_tokenization}'")
    lm_eval, HFLM, TaskManager = _lm_eval_modules()
    data_dir = data_dir or default_data_dir()
    loaded = [(spec, *_load_set(data_dir, spec, records, shots)) for spec in sets]
    lm_model, tokenizer = load_model(model, dtype=dtype)
    device = current_device()
    _say(
        f"classification: {model}, {shots}-shot, {records} records per set, batch {batch_size} "
        f"(lm-eval: {_lm_eval_batch(batch_size, device)}), {str(lm_model.dtype).removeprefix('torch.')} on "
        f"{device_name(device)}, lm-eval tokenization: {lm_eval_tokenization}"
    )
    if lm_eval_tokenization == "ftgen":
        HFLM = _segmentwise(HFLM)
    # one copy of the weights for both sides
    # (lm-eval's "auto" search gets the same upper bound as ftgen's, not its default 64)
    lm = HFLM(
        pretrained=lm_model,
        tokenizer=tokenizer,
        batch_size=_lm_eval_batch(batch_size, device),
        max_batch_size=AUTO_MAX_BATCH,
    )
    timer = _Timed(lm, device)
    rows = []
    with tempfile.TemporaryDirectory(prefix="ftgen-bench-") as tmp:
        for spec, task, recs, shot_recs in loaded:
            _lm_eval_task(Path(tmp), "ftgen_bench_" + spec.replace(":", "_"), task, recs, shot_recs, 0)
        manager = TaskManager(include_path=tmp, include_defaults=False)
        # warm-up (first-call kernel set-up), not timed
        evaluate(lm_model, tokenizer, loaded[0][1], loaded[0][2][:2], shots=loaded[0][3], batch_size=batch_size)
        for spec, task, recs, shot_recs in loaded:
            lm.shared_context = render_context(task, shot_recs, 0)
            name = "ftgen_bench_" + spec.replace(":", "_")
            lm_acc, lm_pred, lm_s = _lm_eval_predictions(lm_eval, lm, manager, name, task, timer)
            with timed(device) as t:
                result = evaluate(lm_model, tokenizer, task, recs, shots=shot_recs, batch_size=batch_size)
            same = sum(p["prediction"] == lm_pred.get(p["id"]) for p in result.predictions)
            row = {"set": spec, "n": len(recs), "ftgen_acc": result.metrics["accuracy"], "lm_eval_acc": lm_acc}
            row |= {"same_predictions": same, "ftgen_s": t["seconds"], "lm_eval_s": lm_s}
            row |= {"ftgen_batch": result.metrics["batch_size"], "lm_eval_batch": getattr(lm, "batch_size", None)}
            rows.append(row)
            _say(
                f"  {spec:22s} n={row['n']:4d}  accuracy ftgen {row['ftgen_acc']:6.2f}  lm-eval {lm_acc:6.2f}  "
                f"(same prediction {same}/{row['n']})   ex/s ftgen {row['n'] / t['seconds']:7.2f}  "
                f"lm-eval {row['n'] / lm_s:7.2f}  x{lm_s / t['seconds']:.2f}"
            )
    return _classification_summary(rows)


def _classification_summary(rows: list[dict]) -> dict:
    total = sum(r["n"] for r in rows)
    ours_s, theirs_s = sum(r["ftgen_s"] for r in rows), sum(r["lm_eval_s"] for r in rows)
    agree = all(abs(r["ftgen_acc"] - r["lm_eval_acc"]) <= 1.0 for r in rows)
    _say(
        f"  total: {total} records, ftgen {total / ours_s:.2f} ex/s, lm-eval {total / theirs_s:.2f} ex/s; "
        f"accuracies within 1 point: {'yes' if agree else 'NO'}"
    )
    _say(f"eval speedup vs lm-eval: {theirs_s / ours_s:.2f}")
    out = {"sets": rows, "agree_within_1": agree, "speedup": theirs_s / ours_s}
    return out | {"ftgen_ex_s": total / ours_s, "lm_eval_ex_s": total / theirs_s}


# ---------------------------------------------------------------- generation vs unbatched generate


def _generate_one_by_one(model, tokenizer, task, records, context: str) -> list[str]:
    """transformers' own greedy `generate`, one record at a time, stopped by ftgen's rule."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    from ftgen.evaluate import stops
    from ftgen.prompts import build_prompt, encode_prompt

    class BlankLine(StoppingCriteria):  # the same stop rule as ftgen: a blank line after some content
        def __init__(self, start: int):
            self.start = start

        def __call__(self, input_ids, scores, **kwargs):
            text = tokenizer.decode(input_ids[0, self.start :], skip_special_tokens=True)
            return torch.tensor([stops(text)], device=input_ids.device)

    device = next(model.parameters()).device
    texts = []
    for rec in records:
        ids = torch.tensor([encode_prompt(tokenizer, build_prompt(task, rec, 0, context=context)).prompt_ids])
        ids = ids.to(device)
        with torch.inference_mode():
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=task.max_new_tokens,
                do_sample=False,
                stopping_criteria=StoppingCriteriaList([BlankLine(ids.shape[1])]),
                pad_token_id=tokenizer.pad_token_id,
            )
        texts.append(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))
    return texts


def bench_generation(
    data_dir: Path | None = None,
    spec: str = GENERATION_SET,
    records: int = 24,
    shots: int = 1,
    batch_size: int | str = "auto",
    dtype: str = "fp32",
    model: str = "default",
) -> dict:
    """ftgen's batched greedy generation vs one `model.generate` per record; identical outputs required.

    fp32 by default: in bf16 a different batch shape changes the rounding of the matmuls, and greedy
    decoding then parts ways at near-ties, so identity is only a meaningful check in fp32.
    """
    from ftgen.evaluate import evaluate
    from ftgen.models import load_model
    from ftgen.prompts import render_context

    task, recs, shot_recs = _load_set(data_dir or default_data_dir(), spec, records, shots)
    lm_model, tokenizer = load_model(model, dtype=dtype)
    device = current_device()
    _say(
        f"generation: {model}, {spec}, {shots}-shot, {len(recs)} records, batch {batch_size}, greedy, max "
        f"{task.max_new_tokens} new tokens, {str(lm_model.dtype).removeprefix('torch.')} on {device_name(device)}"
    )
    evaluate(lm_model, tokenizer, task, recs[:2], shots=shot_recs, batch_size=batch_size)  # warm-up
    with timed(device) as ours:
        result = evaluate(lm_model, tokenizer, task, recs, shots=shot_recs, batch_size=batch_size)
    with timed(device) as theirs:
        singles = _generate_one_by_one(lm_model, tokenizer, task, recs, render_context(task, shot_recs, 0))
    same = sum(p["generated"] == s for p, s in zip(result.predictions, singles, strict=True))
    n, ours_s, theirs_s = len(recs), ours["seconds"], theirs["seconds"]
    _say(
        f"  ftgen batched {n / ours_s:.2f} ex/s ({ours_s:.1f}s, batch {result.metrics['batch_size']}), unbatched "
        f"generate {n / theirs_s:.2f} ex/s ({theirs_s:.1f}s); identical outputs {same}/{n}; "
        f"rouge_l {result.metrics['rouge_l']:.2f}"
    )
    _say(f"generate speedup vs unbatched: {theirs_s / ours_s:.2f}")
    return {
        "n": n,
        "identical": same,
        "ftgen_ex_s": n / ours_s,
        "unbatched_ex_s": n / theirs_s,
        "speedup": theirs_s / ours_s,
    }


def run(
    data_dir: Path | None = None,
    records: int = 100,
    shots: int = 4,
    sets: list[str] = CLASSIFICATION_SETS,
    gen_set: str = GENERATION_SET,
    gen_records: int = 24,
    gen_shots: int = 1,
    gen_dtype: str = "fp32",
    batch_size: int | str = "auto",
    dtype: str = "fp32",
    lm_eval_tokenization: str = "ftgen",
    parts: tuple[str, ...] = ("classification", "generation"),
    model: str = "default",
) -> dict:
    """Both parts, as `ftgen bench eval` runs them."""
    out = {}
    if "classification" in parts:
        out["classification"] = bench_classification(
            data_dir, sets, records, shots, batch_size, dtype, lm_eval_tokenization, model
        )
    if "generation" in parts:
        out["generation"] = bench_generation(data_dir, gen_set, gen_records, gen_shots, batch_size, gen_dtype, model)
    return out
