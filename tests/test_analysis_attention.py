"""Attention of the answer position by prompt segment: the segments partition the very prompt evaluation feeds
(every task, a second decoding path for the token spans), the shares sum to 1 over the context, and the hooked
weights equal those of `output_attentions=True`, on a tiny Llama and on a real 2-shot prompt of the default model."""

from __future__ import annotations

import json
import string

import pytest
import torch
from analysis_helpers import save_model, tiny_llama
from hypothesis import given, settings
from hypothesis import strategies as st

from ftgen.analysis import analyze_attention, attention_shares, write_attention_report
from ftgen.analysis.attention import (
    EXAMPLES,
    QUERY,
    SEGMENTS,
    SINK,
    TEMPLATE,
    eager_attention,
    field_spans,
    last_position_attention,
    segment_prompt,
    token_spans,
)
from ftgen.analysis.drift import in_domain_sets
from ftgen.data import load_pool, load_test_set
from ftgen.evaluate import _prepare
from ftgen.prompts import render_context, select_shots
from ftgen.tasks import TaskDef, load_task
from helpers import assert_user_error, run_cli_inprocess

ALL_TASKS = ["sentiment", "detection", "inference", "question", "summary"]


def context_and_records(paper_data, task, test_set, shots, n=3):
    pool = load_pool(paper_data, task, test_set).records
    return render_context(task, select_shots(pool, shots)), load_test_set(paper_data, task, test_set).records[:n]


@pytest.fixture(scope="module")
def tokenizer():
    from ftgen.models import load_tokenizer

    return load_tokenizer("default")


@pytest.mark.parametrize("name", ALL_TASKS)
def test_segments_partition_the_prompt_that_evaluation_feeds(paper_data, tokenizer, name):
    task = load_task(name)
    test_set = in_domain_sets(task)[0]
    context, records = context_and_records(paper_data, task, test_set, shots=1)
    ctx_ids, items = _prepare(task, records, context, 0, tokenizer, 2048)
    for record, item in zip(records, items, strict=True):
        seg = segment_prompt(task, record, 0, context, tokenizer, 2048)
        assert seg.ids == ctx_ids + item.query  # the same token ids as the evaluation
        assert len(seg.segments) == len(seg.ids) and seg.segments[0] == SINK
        by = {s: [i for i, g in zip(seg.ids, seg.segments, strict=True) if g == k] for k, s in enumerate(SEGMENTS)}
        assert tokenizer.decode(ctx_ids) == tokenizer.decode(by["sink"] + by["examples"])  # context first
        query_text = tokenizer.decode(by["query"])
        for field in task.fields:
            assert record[field].strip()[:40] in query_text
        template = tokenizer.decode(by["template"])
        assert task.templates[0].split("{")[0].strip() in template  # e.g. "### Input:"
        assert seg.segments[-1] == TEMPLATE  # the answer position is the template's answer cue


def test_truncated_query_still_splits_fields_from_template(paper_data, tokenizer):
    task = load_task("summary")
    context, records = context_and_records(paper_data, task, "xsum", shots=1, n=1)
    seg = segment_prompt(task, records[0], 0, context, tokenizer, max_length=len(tokenizer(context)["input_ids"]) + 60)
    assert seg.truncated
    assert QUERY in seg.segments and seg.segments[-1] == TEMPLATE
    assert (
        tokenizer.decode([i for i, g in zip(seg.ids, seg.segments, strict=True) if g == TEMPLATE])
        .strip()
        .endswith("### Summary:")
    )


class SlowTokenizer:
    """The default tokenizer seen as a slow one: no offsets, so token spans come from decoding."""

    is_fast = False

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, *args, **kwargs):
        kwargs.pop("return_offsets_mapping", None)
        return self.inner(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_token_spans_agree_between_offsets_and_decoding(paper_data, tokenizer):
    task = load_task("inference")
    context, records = context_and_records(paper_data, task, "multinli", shots=2)
    slow = SlowTokenizer(tokenizer)
    for record in records:
        fast_seg = segment_prompt(task, record, 0, context, tokenizer, 2048)
        assert segment_prompt(task, record, 0, context, slow, 2048) == fast_seg
        query = task.templates[0].format_map(record)
        ids = tokenizer(query, add_special_tokens=False)["input_ids"]
        assert "".join(query[s:e] for s, e in token_spans(slow, query, ids)) == query


field_text = st.text(alphabet=string.ascii_letters + " .,\n", min_size=1, max_size=30)


@settings(max_examples=60, deadline=None)
@given(
    literals=st.lists(st.text(alphabet="#:- \n" + string.ascii_uppercase, max_size=12), min_size=3, max_size=3),
    values=st.lists(field_text, min_size=2, max_size=2),
    cut=st.integers(0, 29),
)
def test_field_spans_find_the_values_also_after_a_cut(literals, values, cut):
    """The spans of a filled template's values; after a cut of field a (truncation), what is left of it."""
    template = f"{literals[0]}{{a}}{literals[1]}{{b}}{literals[2]}"
    task = TaskDef(name="t", kind="generation", fields=["a", "b"], templates=[template], metric="rouge_l")
    record = {"a": values[0], "b": values[1]}
    query = template.format_map(record)
    spans = field_spans(task, 0, record, query)
    assert [query[s:e] for s, e in spans] == values
    short = values[0][: min(cut, len(values[0]) - 1)]
    cut_query = template.format_map({"a": short, "b": values[1]})
    cut_spans = field_spans(task, 0, record, cut_query)
    pieces = [cut_query[s:e] for s, e in cut_spans]
    assert "".join([literals[0], pieces[0], literals[1], pieces[1], literals[2]]) == cut_query
    if literals[1] not in values[1] + literals[2] and literals[1] not in short:  # no ambiguous literal
        assert pieces == [short, values[1]]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    model, tok = tiny_llama(layers=3)
    return model, tok, save_model(model, tok, tmp_path_factory.mktemp("att") / "tiny")


def reference_rows(model, ids) -> torch.Tensor:
    """The last position's attention from output_attentions=True (no hooks): layers x heads x positions."""
    with eager_attention(model), torch.no_grad():
        out = model(torch.tensor([ids]), output_attentions=True)
    return torch.stack([a[0, :, -1, :].double() for a in out.attentions])


def test_shares_sum_to_one_over_the_context_on_a_tiny_model(tiny, paper_data):
    model, tok, _ = tiny
    task = load_task("detection")
    context, records = context_and_records(paper_data, task, "qqp", shots=2)
    seg = segment_prompt(task, records[0], 0, context, tok, 2048)
    with eager_attention(model):
        rows = last_position_attention(model, seg.ids)
    assert rows.shape == (3, 4, len(seg.ids))
    assert rows.sum(-1) == pytest.approx(torch.ones(3, 4, dtype=torch.float64), abs=1e-6)
    assert torch.allclose(rows, reference_rows(model, seg.ids), atol=1e-7)
    shares = attention_shares(
        model, tok, task, records, shots=select_shots(load_pool(paper_data, task, "qqp").records, 2)
    )
    for layer in shares["layers"]:
        assert sum(layer[s] for s in SEGMENTS) == pytest.approx(1.0, abs=1e-6)
        assert all(0 <= layer[s] <= 1 for s in SEGMENTS)
    assert sum(shares["token_share"].values()) == pytest.approx(1.0)
    assert shares["records"] == 3 and shares["shots"] == 2
    assert model.config._attn_implementation != "eager"  # restored after the analysis


def test_zero_shot_has_no_example_share(tiny, paper_data):
    model, tok, _ = tiny
    task = load_task("sentiment")
    records = load_test_set(paper_data, task, "sst2").records[:2]
    shares = attention_shares(model, tok, task, records, shots=[])
    assert all(layer["examples"] == 0.0 for layer in shares["layers"])
    assert shares["token_share"]["examples"] == 0.0


def test_real_two_shot_prompt_of_the_default_model(default_model_fp32, paper_data):
    model, tok = default_model_fp32
    task = load_task("sentiment")
    context, records = context_and_records(paper_data, task, "sst2", shots=2, n=2)
    for record in records:
        seg = segment_prompt(task, record, 0, context, tok, 2048)
        with eager_attention(model):
            rows = last_position_attention(model, seg.ids)
        reference = reference_rows(model, seg.ids)
        assert torch.allclose(rows, reference, atol=1e-6)
        onehot = torch.nn.functional.one_hot(torch.tensor(seg.segments), len(SEGMENTS)).double()
        per_head = rows @ onehot
        assert per_head.sum(-1) == pytest.approx(torch.ones(per_head.shape[:2], dtype=torch.float64), abs=1e-5)
        assert (per_head[..., EXAMPLES] > 0).all() and (per_head[..., QUERY] > 0).all()
    result = analyze_attention(
        "default", task=task, test_set="sst2", shots=2, records=2, data_dir=paper_data, loaded=(model, tok)
    )
    assert result["shots"] == 2 and result["records"] == 2 and len(result["layers"]) == model.config.num_hidden_layers
    assert 0 < result["mean"]["examples"] < 1 and 0 < result["mean"]["examples_of_content"] < 1
    assert sum(result["mean"][s] for s in SEGMENTS) == pytest.approx(1.0, abs=1e-6)


def test_cli_attention(capsys, tiny, paper_data, tmp_path):
    _, _, model_dir = tiny
    out = tmp_path / "att"
    proc = run_cli_inprocess(
        capsys,
        "analyze", "attention", str(model_dir), "--task", "sentiment", "--test-set", "sst2", "--shots", "2",
        "--records", "3", "--data-dir", str(paper_data), "--out", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "examples" in proc.stdout and "token share" in proc.stdout
    saved = json.loads((out / "attention.json").read_text())
    assert saved["tiny"]["records"] == 3 and saved["tiny"]["method"] is None
    assert (out / "attention.png").exists() and "<svg" in (out / "attention.svg").read_text()
    again = tmp_path / "again"
    write_attention_report(saved, again)
    assert json.loads((again / "attention.json").read_text()) == saved


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--shots", "99"], "99 shots"),
        (["--test-set", "nosuchset"], "nosuchset"),
        (["--records", "0"], "records"),
        (["--task", "nosuchtask"], "unknown task"),
    ],
)
def test_cli_attention_bad_input(capsys, tiny, paper_data, tmp_path, extra, needle):
    _, _, model_dir = tiny
    base = ["analyze", "attention", str(model_dir), "--task", "sentiment", "--test-set", "sst2"]
    proc = run_cli_inprocess(capsys, *base, "--data-dir", str(paper_data), "--out", str(tmp_path / "o"), *extra)
    assert_user_error(proc, needle)
    assert not (tmp_path / "o" / "attention.json").exists()
