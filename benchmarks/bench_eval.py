"""Benchmark of the evaluation engine (`ftgen bench eval`).

1. Classification, k-shot: ftgen (shared-prefix KV cache, labels as a tree) against lm-evaluation-harness
   (`lm-eval`, hf backend) on the same prompts, records and label words, given to lm-eval as a custom
   task over a local JSON file. Same model directory, dtype and batch size, same process and threads.
   Timed on both sides: prompts in, label log-likelihoods out (`evaluate` / `HFLM.loglikelihood`).
2. Generation: ftgen's batched greedy decoding against a loop of one-record `model.generate` calls
   (greedy, same max new tokens, same stop rule), with identical outputs required.

Run as `ftgen bench eval`, or `python benchmarks/bench_eval.py` from the repository root.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("FTGEN_PAPER_DATA", REPO.parent / "shared" / "paper-data"))
CLASSIFICATION_SETS = ["sentiment:sst2", "inference:multinli", "detection:qqp"]
GENERATION_SET = "question:socialqa"


def _say(msg: str) -> None:
    print(msg, flush=True)


def _parse_set(spec: str) -> tuple[str, str]:
    from ftgen.errors import UserError

    task, sep, name = spec.partition(":")
    if not sep or not task or not name:
        raise UserError(f"benchmark test set '{spec}': write it as TASK:TEST_SET, e.g. sentiment:sst2")
    return task, name


def _load_set(data_dir: Path, spec: str, n: int, shots: int):
    """(task, records, shots) with the paper's choice of shots (the first k of the pool)."""
    from ftgen.data import load_pool, load_test_set
    from ftgen.prompts import select_shots
    from ftgen.tasks import load_task

    task_name, set_name = _parse_set(spec)
    task = load_task(task_name)
    records = load_test_set(data_dir, task, set_name, limit=n, skip_invalid=True).records
    pool = load_pool(data_dir, task, set_name).records if shots else []
    return task, records, select_shots(pool, shots)


# ---------------------------------------------------------------- classification vs lm-eval


def _lm_eval_task(tmp: Path, name: str, task, records: list[dict], shots: list[dict], fmt: int) -> None:
    """A custom lm-eval task: our exact prompt text, our label words with their separator, the gold index."""
    from ftgen.prompts import build_prompt, render_context, separator_after

    context = render_context(task, shots, fmt)
    rows = []
    for rec in records:
        prompt = build_prompt(task, rec, fmt, context=context)
        sep = separator_after(task, prompt.query)
        rows.append(
            {
                "id": rec["id"],
                "prompt": prompt.text,
                "choices": [sep + lab for lab in task.labels],
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

    def __init__(self, lm):
        self.seconds = 0.0
        inner = lm.loglikelihood

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t0

        lm.loglikelihood = timed


def bench_classification(
    data_dir: Path = DEFAULT_DATA,
    sets: list[str] = CLASSIFICATION_SETS,
    records: int = 100,
    shots: int = 4,
    batch_size: int = 16,
    dtype: str = "fp32",
    lm_eval_tokenization: str = "ftgen",
) -> dict:
    """ftgen vs lm-eval on each set: accuracies, examples/s, agreement; returns the totals and speedup.

    fp32 by default: two correct computations in bf16 (different batch shapes, a cached prefix) round
    differently, logits move by ~0.1 nats and 2-4% of near-tie records flip, which can put the
    accuracies 2 points apart on 100 records. In fp32 both sides give the same predictions.
    """
    import torch

    from ftgen.errors import UserError
    from ftgen.evaluate import evaluate
    from ftgen.models import choose_dtype, default_model_dir, load_model
    from ftgen.prompts import render_context

    if lm_eval_tokenization not in ("ftgen", "native"):
        raise UserError(f"--lm-eval-tokenization: use ftgen or native, not '{lm_eval_tokenization}'")

    lm_eval, HFLM, TaskManager = _lm_eval_modules()
    loaded = [(spec, *_load_set(data_dir, spec, records, shots)) for spec in sets]
    model, tokenizer = load_model("default", dtype=dtype)
    torch_dtype = choose_dtype(dtype)
    _say(
        f"classification: default model, {shots}-shot, {records} records per set, batch {batch_size}, "
        f"{str(torch_dtype).removeprefix('torch.')}, {torch.get_num_threads()} threads, "
        f"lm-eval tokenization: {lm_eval_tokenization}"
    )
    if lm_eval_tokenization == "ftgen":
        HFLM = _segmentwise(HFLM)
    lm = HFLM(pretrained=str(default_model_dir()), dtype=torch_dtype, batch_size=batch_size, device="cpu")
    timer = _Timed(lm)
    rows, ours_s, theirs_s, total = [], 0.0, 0.0, 0
    with tempfile.TemporaryDirectory(prefix="ftgen-bench-") as tmp:
        for spec, task, recs, shot_recs in loaded:
            name = "ftgen_bench_" + spec.replace(":", "_")
            _lm_eval_task(Path(tmp), name, task, recs, shot_recs, 0)
        manager = TaskManager(include_path=tmp, include_defaults=False)
        # Warm-up on both sides (first-call kernel set-up, dataset cache), not timed.
        evaluate(model, tokenizer, loaded[0][1], loaded[0][2][:2], shots=loaded[0][3], batch_size=batch_size)
        for spec, task, recs, shot_recs in loaded:
            name = "ftgen_bench_" + spec.replace(":", "_")
            lm.shared_context = render_context(task, shot_recs, 0)
            lm_eval.simple_evaluate(model=lm, tasks=[name], task_manager=manager, limit=2, log_samples=False)
            timer.seconds = 0.0
            res = lm_eval.simple_evaluate(model=lm, tasks=[name], task_manager=manager, log_samples=True)
            lm_s = timer.seconds
            lm_acc = 100.0 * res["results"][name]["acc,none"]
            lm_pred = {}
            for s in res["samples"][name]:
                lls = [r[0] for r in s["filtered_resps"]]
                lm_pred[s["doc"]["id"]] = task.labels[max(range(len(lls)), key=lls.__getitem__)]
            t0 = time.perf_counter()
            result = evaluate(model, tokenizer, task, recs, shots=shot_recs, batch_size=batch_size)
            ours = time.perf_counter() - t0
            same = sum(p["prediction"] == lm_pred.get(p["id"]) for p in result.predictions)
            n = len(recs)
            rows.append(
                {
                    "set": spec,
                    "n": n,
                    "ftgen_acc": result.metrics["accuracy"],
                    "lm_eval_acc": lm_acc,
                    "same_predictions": same,
                    "ftgen_ex_s": n / ours,
                    "lm_eval_ex_s": n / lm_s,
                }
            )
            _say(
                f"  {spec:22s} n={n:4d}  accuracy ftgen {result.metrics['accuracy']:6.2f}  lm-eval {lm_acc:6.2f}  "
                f"(same prediction {same}/{n})   ex/s ftgen {n / ours:7.2f}  lm-eval {n / lm_s:7.2f}  "
                f"x{lm_s / ours:.2f}"
            )
            ours_s, theirs_s, total = ours_s + ours, theirs_s + lm_s, total + n
    agree = all(abs(r["ftgen_acc"] - r["lm_eval_acc"]) <= 1.0 for r in rows)
    speedup = theirs_s / ours_s
    _say(
        f"  total: {total} records, ftgen {total / ours_s:.2f} ex/s, lm-eval {total / theirs_s:.2f} ex/s; "
        f"accuracies within 1 point: {'yes' if agree else 'NO'}"
    )
    _say(f"eval speedup vs lm-eval: {speedup:.2f}")
    del model, lm
    return {"sets": rows, "agree_within_1": agree, "speedup": speedup}


# ---------------------------------------------------------------- generation vs unbatched generate


def bench_generation(
    data_dir: Path = DEFAULT_DATA,
    spec: str = GENERATION_SET,
    records: int = 24,
    shots: int = 1,
    batch_size: int = 16,
    dtype: str = "fp32",
) -> dict:
    """ftgen's batched greedy generation vs one `model.generate` per record; identical outputs required.

    fp32 by default: in bf16 a different batch shape changes the rounding of the matmuls, and greedy
    decoding then parts ways at near-ties, so identity is only a meaningful check in fp32.
    """
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    from ftgen.evaluate import evaluate, stops
    from ftgen.models import load_model
    from ftgen.prompts import build_prompt, encode_prompt, render_context

    task, recs, shot_recs = _load_set(data_dir, spec, records, shots)
    model, tokenizer = load_model("default", dtype=dtype)
    _say(
        f"generation: default model, {spec}, {shots}-shot, {len(recs)} records, batch {batch_size}, "
        f"greedy, max {task.max_new_tokens} new tokens, {str(model.dtype).removeprefix('torch.')}, "
        f"{torch.get_num_threads()} threads"
    )

    class BlankLine(StoppingCriteria):  # the same stop rule as ftgen: a blank line after some content
        def __init__(self, start: int):
            self.start = start

        def __call__(self, input_ids, scores, **kwargs):
            text = tokenizer.decode(input_ids[0, self.start :], skip_special_tokens=True)
            return torch.tensor([stops(text)], device=input_ids.device)

    context = render_context(task, shot_recs, 0)
    evaluate(model, tokenizer, task, recs[:2], shots=shot_recs, batch_size=batch_size)  # warm-up
    t0 = time.perf_counter()
    result = evaluate(model, tokenizer, task, recs, shots=shot_recs, batch_size=batch_size)
    ours = time.perf_counter() - t0

    singles = []
    t0 = time.perf_counter()
    for rec in recs:
        ids = torch.tensor([encode_prompt(tokenizer, build_prompt(task, rec, 0, context=context)).prompt_ids])
        with torch.inference_mode():
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=task.max_new_tokens,
                do_sample=False,
                stopping_criteria=StoppingCriteriaList([BlankLine(ids.shape[1])]),
                pad_token_id=tokenizer.pad_token_id,
            )
        singles.append(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))
    theirs = time.perf_counter() - t0
    same = sum(p["generated"] == s for p, s in zip(result.predictions, singles, strict=True))
    n = len(recs)
    _say(
        f"  ftgen batched {n / ours:.2f} ex/s ({ours:.1f}s), unbatched generate {n / theirs:.2f} ex/s "
        f"({theirs:.1f}s); identical outputs {same}/{n}; rouge_l {result.metrics['rouge_l']:.2f}"
    )
    _say(f"generate speedup vs unbatched: {theirs / ours:.2f}")
    return {"n": n, "identical": same, "ftgen_ex_s": n / ours, "unbatched_ex_s": n / theirs, "speedup": theirs / ours}


def run(
    data_dir: Path = DEFAULT_DATA,
    records: int = 100,
    shots: int = 4,
    sets: list[str] = CLASSIFICATION_SETS,
    gen_set: str = GENERATION_SET,
    gen_records: int = 24,
    gen_shots: int = 1,
    gen_dtype: str = "fp32",
    batch_size: int = 16,
    dtype: str = "fp32",
    lm_eval_tokenization: str = "ftgen",
    parts: tuple[str, ...] = ("classification", "generation"),
) -> dict:
    """Both parts, as `ftgen bench eval` runs them."""
    out = {}
    if "classification" in parts:
        out["classification"] = bench_classification(
            data_dir, sets, records, shots, batch_size, dtype, lm_eval_tokenization
        )
    if "generation" in parts:
        out["generation"] = bench_generation(data_dir, gen_set, gen_records, gen_shots, batch_size, gen_dtype)
    return out


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "src"))
    from ftgen.cli import main

    sys.argv = ["ftgen", "bench", "eval", *sys.argv[1:]]
    main()
