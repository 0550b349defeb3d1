"""The evaluation engine on the real default model: prefix cache == plain computation, scoring rules,
batching, truncation and output files."""

from __future__ import annotations

import json

import pytest
import torch
from scipy.stats import binomtest

from ftgen.data import load_pool, load_test_set
from ftgen.errors import UserError
from ftgen.evaluate import _prepare, evaluate, stops, write_eval_outputs
from ftgen.prompts import build_prompt, encode_prompt, encode_text, render_context, select_shots
from ftgen.stats import bootstrap_interval
from ftgen.tasks import load_task


def _data(paper_data, task_name: str, test_set: str, n: int, k: int):
    task = load_task(task_name)
    records = load_test_set(paper_data, task, test_set, limit=n).records
    shots = select_shots(load_pool(paper_data, task, test_set).records, k)
    return task, records, shots


def _max_logprob_diff(a, b, labels) -> float:
    return max(abs(x["logprobs"][lab] - y["logprobs"][lab]) for x, y in zip(a, b, strict=True) for lab in labels)


@pytest.mark.parametrize("fmt", [0, 1])  # format 1 ends in a space, which moves into the labels
def test_prefix_cache_equals_plain_computation_classification(default_model_fp32, paper_data, fmt):
    model, tok = default_model_fp32
    task, records, shots = _data(paper_data, "inference", "gptnli", 6, 1)
    # The 2-token label last: its second token must see the query and " entail", not the other labels,
    # at the position right after the query.
    task = task.model_copy(update={"labels": ["neutral", "contradiction", "entailment"]})
    assert len(encode_text(tok, " entailment")) == 2
    cached = evaluate(model, tok, task, records, shots=shots, fmt=fmt, batch_size=4, prefix_cache=True)
    plain = evaluate(model, tok, task, records, shots=shots, fmt=fmt, batch_size=4, prefix_cache=False)
    assert cached.metrics["context_tokens"] > 0
    assert [p["prediction"] for p in cached.predictions] == [p["prediction"] for p in plain.predictions]
    assert _max_logprob_diff(cached.predictions, plain.predictions, task.labels) < 1e-3
    assert [p["id"] for p in cached.predictions] == [r["id"] for r in records]  # input order kept


def test_prefix_cache_equals_plain_and_hf_generate(default_model_fp32, paper_data):
    model, tok = default_model_fp32
    task, records, shots = _data(paper_data, "question", "socialqa", 4, 1)
    task = task.model_copy(update={"max_new_tokens": 12})
    lengths = {len(encode_prompt(tok, build_prompt(task, r, 0, shots=shots)).query) for r in records}
    assert len(lengths) > 1  # rows of different lengths: left padding after the cached prefix is exercised
    cached = evaluate(model, tok, task, records, shots=shots, batch_size=4, prefix_cache=True)
    plain = evaluate(model, tok, task, records, shots=shots, batch_size=4, prefix_cache=False)
    texts = [p["generated"] for p in cached.predictions]
    assert texts == [p["generated"] for p in plain.predictions]
    assert all(t.strip() for t in texts)
    # and the same as transformers' own greedy decoding, one record at a time
    context = render_context(task, shots, 0)
    for rec, text in zip(records, texts, strict=True):
        ids = torch.tensor([encode_prompt(tok, build_prompt(task, rec, 0, context=context)).prompt_ids])
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False)
        ref = tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
        # ftgen stops at a blank line, generate() runs on: the same text up to there
        assert ref.startswith(text) if stops(text) else ref == text, (ref, text)
    assert cached.metrics["metric"] == "rouge_l" and 0 <= cached.metrics["score"] <= 100
    assert {"rouge_l", "bleu"} <= set(cached.metrics)
    # the score's interval: a bootstrap over the records' Rouge-L, each recomputed here by rouge-score
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"])
    per_record = [100 * scorer.score(p["gold"], p["prediction"])["rougeL"].fmeasure for p in cached.predictions]
    expected = bootstrap_interval(per_record)
    assert expected.estimate == pytest.approx(cached.metrics["score"])
    assert (cached.metrics["ci_low"], cached.metrics["ci_high"]) == pytest.approx((expected.low, expected.high))


@pytest.mark.parametrize(("task_name", "test_set"), [("sentiment", "sst2"), ("detection", "qqp")])
def test_first_token_and_sum_agree_on_single_token_labels(default_model, paper_data, task_name, test_set):
    model, tok = default_model
    task, records, shots = _data(paper_data, task_name, test_set, 6, 0)
    assert all(len(encode_text(tok, " " + lab)) == 1 for lab in task.labels)
    by_sum = evaluate(model, tok, task, records, scoring="sum")
    by_first = evaluate(model, tok, task, records, scoring="first-token")
    assert [p["prediction"] for p in by_sum.predictions] == [p["prediction"] for p in by_first.predictions]
    assert [p["scores"] for p in by_sum.predictions] == [p["scores"] for p in by_first.predictions]


def test_multi_token_label_scoring_rules(default_model, paper_data):
    model, tok = default_model
    task, records, _ = _data(paper_data, "inference", "gptnli", 4, 0)
    n_tokens = {lab: len(encode_text(tok, " " + lab)) for lab in task.labels}
    assert n_tokens["entailment"] == 2
    by_sum = evaluate(model, tok, task, records, scoring="sum")
    by_mean = evaluate(model, tok, task, records, scoring="mean")
    by_first = evaluate(model, tok, task, records, scoring="first-token")
    for s, m, f in zip(by_sum.predictions, by_mean.predictions, by_first.predictions, strict=True):
        assert s["logprobs"] == m["logprobs"] == f["logprobs"]
        for lab in task.labels:
            assert m["scores"][lab] == pytest.approx(s["scores"][lab] / n_tokens[lab])
            assert s["scores"][lab] < 0
        # first-token of "entailment" scores " entail" alone: more likely than the whole word
        assert f["scores"]["entailment"] > s["scores"]["entailment"]
        assert f["scores"]["neutral"] == s["scores"]["neutral"]
    assert set(by_sum.metrics["pred_share"]) == set(task.labels)
    assert sum(by_sum.metrics["pred_share"].values()) == pytest.approx(100.0)


# Measured with memory.SimulatedLimit on these rows (fp32): the longest batch of 8 needs over 40 MB, of 4
# under 30 MB (classification and generation alike), so under 32 MB "auto" must go 16 (or 8) -> ... -> 4.
LIMIT = "32MB"


@pytest.mark.parametrize("kind", ["classification", "generation"])
def test_fp32_results_do_not_depend_on_the_batch_size(default_model_fp32, paper_data, kind):
    model, tok = default_model_fp32
    if kind == "classification":
        task, records, shots = _data(paper_data, "sentiment", "sst2", 16, 2)
    else:
        task, records, shots = _data(paper_data, "question", "socialqa", 8, 1)
        task = task.model_copy(update={"max_new_tokens": 8})
    runs = {b: evaluate(model, tok, task, records, shots=shots, batch_size=b) for b in (1, 3, 16)}
    runs["auto"] = evaluate(model, tok, task, records, shots=shots, batch_size="auto", memory_limit=LIMIT)
    assert [r.metrics["batch_size"] for r in runs.values()] == [1, 3, 16 if kind == "classification" else 8, 4]
    first = runs[1].predictions
    for r in runs.values():
        assert [p["prediction"] for p in r.predictions] == [p["prediction"] for p in first]
        if kind == "classification":
            assert _max_logprob_diff(r.predictions, first, task.labels) < 1e-4
        else:
            assert [p["generated"] for p in r.predictions] == [p["generated"] for p in first]
        assert r.metrics["score"] == runs[1].metrics["score"]


def test_auto_finds_the_largest_halving_that_fits(default_model_fp32, paper_data, monkeypatch):
    model, tok = default_model_fp32
    task, records, shots = _data(paper_data, "sentiment", "sst2", 16, 2)
    monkeypatch.setenv("FTGEN_MEMORY_LIMIT", LIMIT)  # the injected limit, from the environment
    auto = evaluate(model, tok, task, records, shots=shots, batch_size="auto").metrics["batch_size"]
    assert auto == 4
    assert evaluate(model, tok, task, records, shots=shots, batch_size=auto).metrics["batch_size"] == auto  # fits
    with pytest.raises(UserError, match=f"out of memory at batch size {2 * auto}: use batch size auto"):
        evaluate(model, tok, task, records, shots=shots, batch_size=2 * auto)  # twice that does not
    with pytest.raises(UserError, match="out of memory even at batch size 1"):
        evaluate(model, tok, task, records, batch_size="auto", memory_limit="50kB")  # never retries forever


def test_auto_is_16_on_a_cpu(default_model, paper_data):
    model, tok = default_model
    task, records, _ = _data(paper_data, "sentiment", "sst2", 17, 0)
    assert evaluate(model, tok, task, records).metrics["batch_size"] == 16  # "auto" is the default
    assert evaluate(model, tok, task, records[:5], batch_size="auto").metrics["batch_size"] == 5


def test_long_record_is_truncated_counted_and_keeps_the_label_cue(default_model, paper_data):
    model, tok = default_model
    task = load_task("sentiment")
    records = load_test_set(paper_data, task, "yelp", limit=6).records
    long = max(records, key=lambda r: len(r["input"]))
    short = {"id": "short", "input": "Great food.", "output": "positive"}
    max_length = 48
    assert len(encode_prompt(tok, build_prompt(task, long, 0)).prompt_ids) > max_length
    result = evaluate(model, tok, task, [long, short], max_length=max_length)
    assert result.metrics["truncated"] == 1
    assert [p["truncated"] for p in result.predictions] == [True, False]
    assert all(p["prediction"] in task.labels for p in result.predictions)
    _, items = _prepare(task, [long], "", 0, tok, max_length)
    assert items[0].prompt.query.endswith("### Sentiment:")  # the cue the labels continue is never cut
    assert len(items[0].query) + max(map(len, items[0].labels)) <= max_length


def test_outputs_are_written_one_line_per_record(default_model, paper_data, tmp_path):
    model, tok = default_model
    task, records, _ = _data(paper_data, "sentiment", "sst2", 5, 0)
    result = evaluate(model, tok, task, records)
    write_eval_outputs(result, tmp_path / "cell")
    metrics = json.loads((tmp_path / "cell" / "metrics.json").read_text())
    assert {"metric", "score", "n", "truncated", "seconds", "accuracy", "macro_f1", "confusion", "pred_share"} <= set(
        metrics
    )
    assert metrics["metric"] == "accuracy" and metrics["score"] == metrics["accuracy"] and metrics["n"] == 5
    # the score's 95% interval: exact binomial (Clopper-Pearson), as scipy computes it
    correct = round(metrics["score"] * 5 / 100)
    ci = binomtest(correct, 5).proportion_ci(0.95, method="exact")
    assert (metrics["ci_low"], metrics["ci_high"]) == pytest.approx((100 * ci.low, 100 * ci.high))
    lines = (tmp_path / "cell" / "predictions.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert [r["id"] for r in rows] == [r["id"] for r in records]
    for row, rec in zip(rows, records, strict=True):
        assert row["gold"] == rec["output"] and row["prediction"] in task.labels
        assert len(row["prompt_hash"]) == 16 and set(row["scores"]) == set(task.labels)
    assert len({r["prompt_hash"] for r in rows}) == 5
    assert [p.name for p in (tmp_path / "cell").iterdir() if p.name.startswith(".")] == []  # no temp files left


def test_stop_rule_needs_content_before_the_blank_line():
    assert not stops("\n\nWhat")
    assert not stops(" What is it?\n")
    assert stops(" What is it?\n\n")
    assert stops("\nWhat?\n\nMore")


def test_bad_arguments_are_user_errors(default_model, paper_data):
    model, tok = default_model
    task, records, _ = _data(paper_data, "sentiment", "sst2", 2, 0)
    with pytest.raises(UserError, match="no records"):
        evaluate(model, tok, task, [])
    with pytest.raises(UserError, match="unknown scoring"):
        evaluate(model, tok, task, records, scoring="max")
    with pytest.raises(UserError, match="unknown backend"):
        evaluate(model, tok, task, records, backend="tgi")
    with pytest.raises(UserError, match="batch size: expected a positive integer or 'auto'"):
        evaluate(model, tok, task, records, batch_size=0)


def test_vllm_backend_without_vllm_is_a_clear_error(default_model, paper_data):
    try:
        import vllm  # noqa: F401

        pytest.skip("vllm is installed here")
    except ImportError:
        pass
    model, tok = default_model
    task, records, _ = _data(paper_data, "sentiment", "sst2", 2, 0)
    with pytest.raises(UserError, match=r"pip install 'ftgen\[gpu\]'"):
        evaluate(model, tok, task, records, backend="vllm")
