"""The scoring rules that make ftgen's numbers comparable with the paper's (README "Evaluation rules"), held on
two real tokenizers: the default model's byte-level BPE and a Llama-2-style SentencePiece tokenizer built
offline (tests/helpers.py), whose `" yes"` on its own starts with a bare "▁" token.

- a prompt that ends in whitespace has it moved into the answer, and answers are tokenized as they follow a
  word: the answer's token ids are those of prompt + answer tokenized as one string;
- first-token scoring refuses labels that start with the same token, up front (before a model loads);
- Rouge-L without stemming unless the task sets `rouge_stem`;
- every metrics file counts the records scored and those dropped, by reason.
"""

from __future__ import annotations

import json
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ftgen import metrics as M
from ftgen.config import parse_study
from ftgen.data import load_test_set
from ftgen.errors import UserError
from ftgen.evaluate import evaluate
from ftgen.prompts import (
    build_prompt,
    check_first_token_scoring,
    encode_labels,
    encode_prompt,
    encode_text,
    first_token_clash,
    render_context,
)
from ftgen.tasks import TaskDef, all_tasks, load_task
from ftgen.validate import validate_study
from helpers import assert_user_error, llama_style_tokenizer, run_cli, run_cli_inprocess

BUILTIN = [t for t, origin in all_tasks().values() if origin == "built-in"]


TEST_SET = {"sentiment": "amazon", "inference": "multinli", "detection": "paws", "question": "socialqa"}
TEST_SET["summary"] = "xsum"


def _records(paper_data, task: TaskDef, n: int = 3) -> list[dict]:
    return load_test_set(paper_data, task, TEST_SET[task.name], limit=n + 2, skip_invalid=True).records[:n]


@pytest.fixture(scope="module")
def llama_tok(paper_data):
    """Trained on the very records and templates the tests encode, so that words are whole tokens (as in a
    real vocabulary) and the boundary, not unknown characters, is what is tested."""
    corpus = [t for task in BUILTIN for t in task.templates + task.labels]
    for task in BUILTIN:
        corpus += [r[f] for r in _records(paper_data, task) for f in [*task.fields, "output"]]
    return llama_style_tokenizer(corpus)


@pytest.fixture(scope="module", params=["default", "llama-style"])
def tokenizer(request, default_model_dir, llama_tok):
    if request.param == "default":
        from ftgen.models import load_tokenizer

        return load_tokenizer("default")
    return llama_tok


# ---------------------------------------------------------------- the prompt / answer boundary


def test_trailing_whitespace_moves_into_the_answer(paper_data):
    task = load_task("inference")  # format 1 ends with "The relation is "
    record = load_test_set(paper_data, task, "rte", limit=1).records[0]
    p1, p0 = build_prompt(task, record, 1), build_prompt(task, record, 0)
    assert p1.query.endswith("The relation is") and p1.answer == " " + record["output"] and p1.lead == " "
    assert p0.query.endswith("### Inference:") and p0.answer == " " + record["output"]
    # the in-context examples read as before: the same text, whitespace and all
    context = render_context(task, [record], 1)
    assert context == task.templates[1].format_map(record) + record["output"] + "\n\n"


@given(
    body=st.text(alphabet=string.ascii_letters + ":?#", min_size=1, max_size=12),
    trailing=st.text(alphabet=" \n\t", max_size=3),
    sep=st.sampled_from([" ", "", "\n"]),
)
@settings(max_examples=200, deadline=None)
def test_the_prompt_text_is_kept_and_only_the_boundary_moves(body, trailing, sep):
    task = TaskDef(
        name="t", kind="classification", fields=["text"], templates=["{text} " + body + trailing],
        labels=["yes", "no"], metric="accuracy", answer_separator=sep,
    )  # fmt: skip
    record = {"id": "0", "text": "hello", "output": "yes"}
    p = build_prompt(task, record, 0)
    assert not p.query[-1:].isspace()
    assert p.lead == (trailing or sep)
    assert p.query + p.answer == "hello " + body + (trailing or sep) + "yes"


def _formats(task: TaskDef) -> list[int]:
    return list(range(len(task.templates)))


@pytest.mark.parametrize("task", BUILTIN, ids=lambda t: t.name)
def test_answers_are_the_tokens_a_model_would_produce_after_the_prompt(task, tokenizer, paper_data):
    """Segment-wise ids (query, then answer) equal the ids of query + answer tokenized as one string, for the
    gold answer and, in classification, for every label word, in every format."""
    for fmt in _formats(task):
        for record in _records(paper_data, task):
            answers = task.labels if task.kind == "classification" else [record["output"]]
            for answer in answers:
                p = build_prompt(task, {**record, "output": answer}, fmt)
                enc = encode_prompt(tokenizer, p)
                assert enc.query + enc.answer == encode_text(tokenizer, p.query + p.answer), (fmt, answer)
            if task.kind == "classification":
                p = build_prompt(task, {**record, "output": ""}, fmt)
                q = encode_text(tokenizer, p.query)
                for label, ids in zip(task.labels, encode_labels(tokenizer, task, p.lead), strict=True):
                    assert q + ids == encode_text(tokenizer, p.query + p.lead + label), (fmt, label)


def test_the_old_rules_broke_the_boundary_on_both_tokenizers(tokenizer, paper_data):
    """What the rules fix (the test above can fail): a prompt ending in a space, or an answer tokenized on its
    own by a SentencePiece tokenizer, gives label ids that no model produces after the prompt."""
    task = load_task("inference")
    record = _records(paper_data, task, 1)[0]
    prompt = task.templates[1].format_map(record)  # "... The relation is "
    old = encode_text(tokenizer, prompt) + encode_text(tokenizer, "entailment")
    assert old != encode_text(tokenizer, prompt + "entailment")


def test_a_sentencepiece_label_on_its_own_starts_with_a_bare_space_token(llama_tok):
    """Llama-2's trap, reproduced: " yes" alone starts with "▁" for every label, so first-token scoring would
    always pick the first label; as a continuation the labels start with their own word."""
    for task in BUILTIN:
        if task.kind != "classification":
            continue
        alone = [encode_text(llama_tok, " " + label) for label in task.labels]
        assert {ids[0] for ids in alone} == {llama_tok.convert_tokens_to_ids("▁")}
        firsts = [ids[0] for ids in encode_labels(llama_tok, task, " ")]
        assert len(set(firsts)) == len(firsts)
        assert first_token_clash(llama_tok, task, " ") is None


# ---------------------------------------------------------------- first-token scoring: refused on a tie

WORDS = """entailed entailing sarcastic sarcasm contradiction contradictory contrary entailment entertain neutral
neutrality positive positively negative negatively negotiation yesterday nothing notion position posture""".split()


def _clashing_labels(tokenizer) -> list[str]:
    """Two words of WORDS whose " word" continuations start with the same token under `tokenizer`."""
    firsts: dict[int, str] = {}
    for w in WORDS:
        first = encode_text(tokenizer, "a " + w)[len(encode_text(tokenizer, "a")) :][0]
        if first in firsts:
            return [firsts[first], w]
        firsts[first] = w
    pytest.fail("no two words share a first token: extend WORDS")


def _task_with_labels(labels: list[str], **kw) -> TaskDef:
    inference = load_task("inference")
    data = inference.model_dump() | {"name": "clash", "labels": [*labels, "neutral"], "ignore_labels": []}
    return TaskDef(**(data | kw))


def test_labels_sharing_a_first_token_are_refused(tokenizer):
    labels = _clashing_labels(tokenizer)
    task = _task_with_labels(labels)
    assert first_token_clash(tokenizer, task, " ")[:2] == tuple(labels)
    with pytest.raises(UserError, match=f"labels '{labels[0]}' and '{labels[1]}' start with the same token"):
        check_first_token_scoring(tokenizer, task, [0, 1], "m")
    for builtin in BUILTIN:  # the paper's tasks pass on both tokenizers
        if builtin.kind == "classification":
            check_first_token_scoring(tokenizer, builtin, _formats(builtin), "m")


def test_the_engine_refuses_a_tie_too(default_model, paper_data):
    """Where the up-front check cannot see the lead (a template ending in a field), the engine checks the
    label ids it scores; sum scoring of the same task runs."""
    model, tok = default_model
    labels = _clashing_labels(tok)
    task = _task_with_labels(labels)
    records = [{"id": "0", "input_1": "A cat sat.", "input_2": "A cat is sitting.", "output": labels[0]}]
    with pytest.raises(UserError, match="first-token scoring cannot tell them apart"):
        evaluate(model, tok, task, records, scoring="first-token")
    result = evaluate(model, tok, task, records, scoring="sum")
    assert result.metrics["n_scored"] == 1


def _clash_task_file(tmp_path, tokenizer) -> str:
    labels = _clashing_labels(tokenizer)
    path = tmp_path / "tasks" / "clash.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(_task_with_labels(labels).model_dump(exclude_defaults=True)))
    return str(path)


def test_ftgen_eval_refuses_first_token_ties_before_the_model_loads(tmp_path, capsys, monkeypatch, paper_data):
    from ftgen import models

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(models, "load_model", no_model)
    task_file = _clash_task_file(tmp_path, models.load_tokenizer("default"))
    test_file = tmp_path / "t.json"
    test_file.write_text(json.dumps([{"input_1": "a", "input_2": "b", "output": "neutral"}]))
    out = tmp_path / "out"
    args = ["eval", "--task", task_file, "--test-set", str(test_file), "--out", str(out)]
    r = run_cli_inprocess(capsys, *args, "--scoring", "first-token")
    assert_user_error(r, "first-token scoring cannot tell them apart", "prompt format 0")
    assert not out.exists()


def test_study_validation_refuses_first_token_ties(tmp_path, default_model_dir, monkeypatch):
    from ftgen.models import load_tokenizer

    _clash_task_file(tmp_path, load_tokenizer("default"))
    data = {
        "name": "s",
        "task_dirs": [str(tmp_path / "tasks")],
        "train": [{"task": "sentiment", "sizes": [8]}],
        "methods": [{"name": "ft"}],
        "eval": {"test_sets": {"sentiment": ["sst2"], "clash": ["rte"]}, "prompt_formats": [0, 1], "limit": 4},
    }
    cfg = parse_study(data | {"eval": data["eval"] | {"scoring": "sum"}}, "s.yaml")
    validate_study(cfg, None, "s.yaml")  # sum scoring: no tokenizer check
    cfg = parse_study(data | {"eval": data["eval"] | {"scoring": "first-token"}}, "s.yaml")
    with pytest.raises(UserError, match=r"s.yaml: field 'eval.scoring': task 'clash' prompt format 0: labels"):
        validate_study(cfg, None, "s.yaml")
    # a model whose tokenizer is not here (a Hub id not downloaded) is left to the engine, with a note
    data["models"] = ["default", "nobody-here/no-such-model"]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="task 'clash'"):
        validate_study(parse_study(data | {"eval": data["eval"] | {"scoring": "first-token"}}, "s.yaml"), None, "s")
    data["models"] = ["nobody-here/no-such-model"]
    cfg = parse_study(data | {"eval": data["eval"] | {"scoring": "first-token"}}, "s.yaml")
    assert any("no-such-model is not here" in n for n in validate_study(cfg, None, "s.yaml").notes)
    data["models"] = ["default"]
    del data["eval"]["test_sets"]["clash"]
    validate_study(parse_study(data | {"eval": data["eval"] | {"scoring": "first-token"}}, "s.yaml"), None, "s.yaml")


# ---------------------------------------------------------------- Rouge-L stemming, n scored / dropped


def test_rouge_stem_is_a_task_option_passed_through_evaluation(default_model_fp32, paper_data):
    from rouge_score import rouge_scorer

    model, tok = default_model_fp32
    question = load_task("question").model_copy(update={"max_new_tokens": 12})
    records = load_test_set(paper_data, question, "socialqa", limit=3).records
    for stem in (False, True):
        task = question.model_copy(update={"rouge_stem": stem})
        result = evaluate(model, tok, task, records)
        scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=stem)
        preds = [p["prediction"] for p in result.predictions]
        expected = sum(scorer.score(r["output"], p)["rougeL"].fmeasure for r, p in zip(records, preds, strict=True)) / 3
        assert result.metrics["rouge_l"] == pytest.approx(100 * expected)
        assert result.metrics["rouge_stem"] is stem
        assert result.metrics["rouge_l"] == pytest.approx(M.rouge_l(preds, [r["output"] for r in records], stem))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"rouge_stem": "yes"}, "rouge_stem"),
        ({"rouge_stem": 1}, "rouge_stem"),
    ],
)
def test_rouge_stem_takes_a_boolean(change, message):
    from ftgen.tasks import parse_task

    data = load_task("question").model_dump(exclude_defaults=True) | change
    with pytest.raises(UserError, match=message):
        parse_task(data, "q.yaml")
    with pytest.raises(UserError, match="only generation tasks compute Rouge-L"):
        parse_task(load_task("sentiment").model_dump(exclude_defaults=True) | {"rouge_stem": True}, "s.yaml")


def test_ftgen_eval_counts_scored_and_dropped_records(tmp_path, default_model_dir):
    rows = [
        {"input_1": "A man plays a guitar.", "input_2": "A person makes music.", "output": "entailment"},
        {"input_1": "", "input_2": "An empty premise.", "output": "neutral"},  # invalid
        {"input_1": "The cat sleeps.", "input_2": "The cat is running.", "output": "-"},  # no gold label
        {"input_1": "It rains.", "input_2": "It is dry.", "output": "contradiction"},
    ]
    test_file = tmp_path / "mini_test.json"
    test_file.write_text(json.dumps(rows))
    out = tmp_path / "out"
    r = run_cli(
        "eval", "--task", "inference", "--test-set", str(test_file), "--skip-invalid", "--out", str(out),
        env={"HF_HUB_OFFLINE": "1", "COLUMNS": "300"},  # wide enough for the table's header
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    metrics = json.loads((out / "mini_test" / "shots0_fmt0" / "metrics.json").read_text())
    assert (metrics["n"], metrics["n_scored"], metrics["n_dropped"]) == (2, 2, 2)
    assert metrics["dropped"] == {"ignored_label": 1, "invalid": 1}
    [row] = json.loads((out / "summary.json").read_text())["rows"]
    assert (row["n_scored"], row["n_dropped"], row["dropped"]) == (2, 2, {"ignored_label": 1, "invalid": 1})
    header = next(line for line in r.stdout.splitlines() if "n_scored" in line)
    assert "dropped" in header
    assert "2 (1 ignored label, 1 invalid)" in r.stdout


def test_a_study_cell_counts_scored_and_dropped_records(tmp_path, default_model_dir):
    from ftgen.config import EvalParams
    from ftgen.units import EvalJob, ModelCache, execute_eval

    rows = [
        {"input_1": "A man plays a guitar.", "input_2": "A person makes music.", "output": "entailment"},
        {"input_1": "The cat sleeps.", "input_2": "The cat is running.", "output": "-"},  # no gold label
        {"input_1": "It rains.", "input_2": "", "output": "contradiction"},  # invalid
        {"input_1": "It rains.", "input_2": "It is dry.", "output": "contradiction"},
    ]
    (tmp_path / "inference").mkdir()
    (tmp_path / "inference" / "mini_test_4.json").write_text(json.dumps(rows))
    params = EvalParams(
        task="inference", test_set="mini", shots=0, fmt=1, scoring="first-token", max_new_tokens=None,
        max_length=None, dtype="fp32", limit=None, skip_invalid=True,
    )  # fmt: skip
    job = EvalJob("k", "default", params, str(tmp_path), (), "cell")
    metrics = execute_eval(job, ModelCache())["metrics"]
    assert (metrics["n_scored"], metrics["n_dropped"]) == (2, 2)
    assert metrics["dropped"] == {"ignored_label": 1, "invalid": 1}
