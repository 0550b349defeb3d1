import json

import pytest

from ftgen.data import load_pool, load_test_set
from ftgen.errors import UserError
from ftgen.prompts import build_prompt, encode_prompt, fit_prompt, render_context, select_shots
from ftgen.tasks import load_task


def test_few_shot_prompt_is_built_like_the_papers_code(paper_data):
    task = load_task("sentiment")
    prompt_map = json.loads((paper_data / "prompt_map.json").read_text())
    pool = load_pool(paper_data, task, "sst2").records
    record = load_test_set(paper_data, task, "sst2", limit=1).records[0]
    for fmt in (0, 1):
        shots = select_shots(pool, 2)
        template = prompt_map[fmt]["sentiment"]
        expected = "".join(template.format_map(s) + " " + s["output"] + "\n\n" for s in shots)
        expected += template.format_map(record)
        p = build_prompt(task, record, fmt, shots)
        assert p.text == expected
        assert p.answer == " " + record["output"]


def test_shot_selection():
    pool = [{"i": i} for i in range(8)]
    assert select_shots(pool, 3) == pool[:3]
    assert select_shots(pool, 3, seed=7) == select_shots(pool, 3, seed=7) != pool[:3]
    with pytest.raises(UserError, match="only 8"):
        select_shots(pool, 9)
    with pytest.raises(UserError, match="prompt format 2"):
        build_prompt(load_task("sentiment"), {"input": "x", "output": "positive"}, 2)


def test_truncation_cuts_the_input_and_keeps_the_cue(default_model):
    _, tokenizer = default_model
    task = load_task("sentiment")
    record = {"id": "0", "input": "This blender is wonderful. " * 200, "output": "positive"}
    context = render_context(task, [{"input": "Awful.", "output": "negative"}], 0)
    full = fit_prompt(task, record, 0, context, tokenizer, max_tokens=4096)
    assert not full.truncated
    cut = fit_prompt(task, record, 0, context, tokenizer, max_tokens=128, reserve=4)
    assert cut.truncated
    enc = encode_prompt(tokenizer, cut)
    assert len(enc) + 4 <= 128
    assert cut.context == context  # in-context examples are never cut
    assert cut.query.endswith("\n### Sentiment:") and cut.answer == " positive"
    assert cut.query.startswith("### Input:\nThis blender is wonderful.")
    with pytest.raises(UserError, match="does not fit"):
        fit_prompt(task, record, 0, context * 20, tokenizer, max_tokens=64)


def test_encoding_is_segment_wise(default_model):
    _, tokenizer = default_model
    task = load_task("detection")
    record = {"id": "1", "input_1": "A cat sat.", "input_2": "A cat was sitting.", "output": "yes"}
    p = build_prompt(task, record, 0, [{"input_1": "x", "input_2": "y", "output": "no"}])
    enc = encode_prompt(tokenizer, p, answer_suffix=tokenizer.eos_token)
    assert tokenizer.decode(enc.context) == p.context
    assert tokenizer.decode(enc.query) == p.query
    assert tokenizer.decode(enc.answer) == " yes" + tokenizer.eos_token
    assert enc.answer[-1] == tokenizer.eos_token_id
