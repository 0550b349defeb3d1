"""Independent references for the numbers evaluation produces, in the style of lm-evaluation-harness's tests.

- Label scoring: every rule (sum, mean, first-token) against the log-probabilities of a separate plain forward
  pass (`model(input_ids).logits`, log_softmax, gather), on prompts whose token ids the test builds itself from
  the task's template and the README's prompt rule. Three models: the real default model, a tiny random model
  with the default tokenizer, and a tiny random model with a second tokenizer (a byte-level BPE trained here,
  which puts a BOS before every text and splits every label word into several tokens).
- Label assignment: a stand-in model whose LM head is a bias alone (zero weights), so that every position's
  log-probabilities are `bias - logsumexp(bias)` whatever the prompt: the preferred label of each rule is known
  in closed form. 2- and 3-label tasks, every label order, each label preferred in turn.
- Generation: a cell's Rouge-L and BLEU recomputed with rouge-score and sacrebleu from the texts it stored.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import math
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from test_train import make_tiny_model

from ftgen.data import load_pool, load_test_set
from ftgen.errors import UserError
from ftgen.evaluate import evaluate, write_eval_outputs
from ftgen.models import load_model, load_tokenizer
from ftgen.tasks import load_task

RULES = {
    "sum": lambda lps: sum(lps),
    "mean": lambda lps: sum(lps) / len(lps),
    "first-token": lambda lps: lps[0],
}


# ---------------------------------------------------------------- models


def make_bpe_model(path: Path, paper_data: Path) -> Path:
    """A 2-layer random Llama with a byte-level BPE tokenizer of 400 tokens trained on paper data; the tokenizer
    puts <s> before every text (as Llama's does), so the special-prefix path of prompt encoding is exercised."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    texts = []
    for name in ("sentiment/amazon_test_500.json", "inference/multinli_test_500.json"):
        for record in json.loads((paper_data / name).read_text())[:200]:
            texts += [v for v in record.values() if isinstance(v, str)]
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(texts, trainer)
    bpe.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", bpe.token_to_id("<s>"))]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", unk_token="<unk>", model_max_length=2048
    )
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=2048,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(1)
    LlamaForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


class Models:
    """name -> (model, tokenizer, the BOS ids its tokenizer puts before a text), each built on first use: the
    default model (the session's fp32 copy), two tiny random models with two tokenizers. The BOS ids are stated
    here and checked against the tokenizer."""

    def __init__(self, request, tmp_path_factory, paper_data: Path):
        self.request, self.tmp, self.paper_data, self.loaded = request, tmp_path_factory, paper_data, {}

    def __getitem__(self, name: str):
        if name == "default":
            return (*self.request.getfixturevalue("default_model_fp32"), [])
        if name not in self.loaded:
            if name == "tiny":  # random weights, the default model's tokenizer
                model, tok = load_model(str(make_tiny_model(self.tmp.mktemp("tiny") / "tiny-llama")), dtype="fp32")
                bos = []
            else:  # random weights, a BPE tokenizer of its own that adds <s>
                path = make_bpe_model(self.tmp.mktemp("bpe") / "bpe-llama", self.paper_data)
                model, tok = load_model(str(path), dtype="fp32")
                bos = [tok.bos_token_id]
            assert tok("a")["input_ids"] == bos + tok("a", add_special_tokens=False)["input_ids"]
            self.loaded[name] = (model, tok, bos)
        return self.loaded[name]


@pytest.fixture(scope="module")
def models(request, tmp_path_factory, paper_data) -> Models:
    return Models(request, tmp_path_factory, paper_data)


# ---------------------------------------------------------------- the reference computation


def reference_ids(tok, bos: list[int], task, record: dict, shots: list[dict], fmt: int = 0) -> tuple[list[int], str]:
    """Prompt token ids by the README's rule, written out here: each shot is template + " " + answer + a blank
    line, then the record's template; context and query are tokenized apart, the context after the BOS."""
    template = task.templates[fmt]
    assert not template[-1].isspace()  # the answer separator " " applies

    def fill(r: dict) -> str:
        return template.format(**{f: r[f] for f in task.fields})

    def encode(text: str) -> list[int]:
        return tok(text, add_special_tokens=False)["input_ids"] if text else []

    context = "".join(fill(s) + " " + s["output"] + "\n\n" for s in shots)
    return bos + encode(context) + encode(fill(record)), context + fill(record)


@torch.inference_mode()
def reference_logprobs(model, prompt_ids: list[int], label_ids: list[int]) -> list[float]:
    """log P(label token t | prompt, label tokens < t) from one plain forward pass of the whole sequence."""
    logits = model(input_ids=torch.tensor([prompt_ids + label_ids])).logits[0].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    n = len(prompt_ids)
    return [logprobs[n - 1 + t, token].item() for t, token in enumerate(label_ids)]


def _shortest(records: list[dict], n: int) -> list[dict]:
    """The n records of the least text (the default model's forward passes stay cheap), in file order."""
    return sorted(sorted(records, key=lambda r: len(json.dumps(r)))[:n], key=records.index)


def _case(paper_data: Path, setup: str):
    """(task, records, shots) of a scoring case with multi-token labels."""
    if setup.startswith("inference"):  # 3 labels; " entailment" is 2 tokens in SmolLM2's vocabulary
        task = load_task("inference")
        records = _shortest(load_test_set(paper_data, task, "gptnli", limit=20).records, 3)
        k = int(setup[-1])
        return task, records, load_pool(paper_data, task, "gptnli").records[:k]
    # 2 labels sharing their first token (" thumbs"): first-token refuses them, sum and mean tell them apart
    task = load_task("sentiment").model_copy(update={"labels": ["thumbs up", "thumbs down"]})
    words = {"positive": "thumbs up", "negative": "thumbs down"}
    sentiment = load_task("sentiment")
    records = _shortest(load_test_set(paper_data, sentiment, "sst2", limit=20).records, 3)
    records = [{**r, "output": words[r["output"]]} for r in records]
    shots = [{**s, "output": words[s["output"]]} for s in load_pool(paper_data, sentiment, "sst2").records]
    return task, records, shots[:2]


CASES = [(name, setup) for name in ("tiny", "bpe") for setup in ("inference-0", "inference-1", "thumbs-2")]
CASES += [("default", "inference-1"), ("default", "thumbs-2")]  # the real model on CPU: ~1 s per forward pass


@pytest.mark.parametrize(("name", "setup"), CASES)
def test_every_scoring_rule_equals_a_plain_forward_pass(models, paper_data, name, setup):
    model, tok, bos = models[name]
    task, records, shots = _case(paper_data, setup)
    records = records[:2] if name == "default" else records
    labels = {lab: tok(" " + lab, add_special_tokens=False)["input_ids"] for lab in task.labels}
    assert max(map(len, labels.values())) > 1  # multi-token labels: the rules differ
    reference = []
    for rec in records:
        ids, text = reference_ids(tok, bos, task, rec, shots)
        reference.append(({lab: reference_logprobs(model, ids, lab_ids) for lab, lab_ids in labels.items()}, text))
    combos = list(itertools.product([True, False], RULES))
    if name == "default":  # the real model's plain path once (each rule is applied by the same code)
        combos = [c for c in combos if c[0] or c[1] == "first-token"]
    for prefix_cache, rule in combos:
        if rule == "first-token" and setup.startswith("thumbs"):  # a first-token tie: refused, not scored
            with pytest.raises(UserError, match="start with the same token"):
                evaluate(model, tok, task, records, shots=shots, scoring=rule, prefix_cache=prefix_cache)
            continue
        result = evaluate(model, tok, task, records, shots=shots, scoring=rule, batch_size=2, prefix_cache=prefix_cache)
        for pred, (ref, text) in zip(result.predictions, reference, strict=True):
            assert pred["prompt_hash"] == hashlib.sha256(text.encode()).hexdigest()[:16]  # the prompt built as above
            want = {lab: RULES[rule](lps) for lab, lps in ref.items()}
            assert pred["scores"] == pytest.approx(want, abs=2e-4), (rule, prefix_cache)
            assert pred["logprobs"] == pytest.approx({lab: sum(lps) for lab, lps in ref.items()}, abs=2e-4)
            best = max(want.values())
            if sorted(want.values())[-2] < best - 1e-3:  # a clear winner: the prediction is it
                assert pred["prediction"] == max(want, key=want.get), (rule, want)


# ---------------------------------------------------------------- stand-in models with a known preference


def standin_model(vocab: int, bias: dict[int, float]):
    """A tiny Llama whose LM head is zero weights plus `bias`: every position predicts softmax(bias)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    head = torch.nn.Linear(16, vocab, bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        for token, value in bias.items():
            head.bias[token] = value
    model.lm_head = head
    return model.eval()


def analytic_scores(vocab: int, bias: dict[int, float], labels: dict[str, list[int]]) -> dict[str, dict[str, float]]:
    """rule -> label -> score, in closed form: log P(token) = bias[token] - logsumexp(bias) at every position."""
    full = torch.zeros(vocab, dtype=torch.float64)
    for token, value in bias.items():
        full[token] = value
    logz = torch.logsumexp(full, 0).item()
    lps = {lab: [full[t].item() - logz for t in ids] for lab, ids in labels.items()}
    return {rule: {lab: f(lp) for lab, lp in lps.items()} for rule, f in RULES.items()}


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("default")


def _label_ids(tok, labels: list[str]) -> dict[str, list[int]]:
    return {lab: tok(" " + lab, add_special_tokens=False)["input_ids"] for lab in labels}


def _assign(tok, task, records, bias, *, scoring: str, prefix_cache: bool, shots=()):
    """evaluate() with a fresh stand-in model of this bias."""
    model = standin_model(len(tok), bias)
    return evaluate(model, tok, task, records, shots=list(shots), scoring=scoring, prefix_cache=prefix_cache)


@pytest.mark.parametrize("prefix_cache", [True, False])
@pytest.mark.parametrize(
    ("task_name", "test_set"), [("sentiment", "sst2"), ("detection", "paws"), ("inference", "rte")]
)
def test_the_preferred_label_wins_in_every_label_order(tokenizer, paper_data, task_name, test_set, prefix_cache):
    """Each label made certain in turn, under every order of the task's labels (a swap of scores fails)."""
    base = load_task(task_name)
    records = load_test_set(paper_data, base, test_set, limit=2).records
    shots = load_pool(paper_data, base, test_set).records[:1]
    ids = _label_ids(tokenizer, base.labels)
    for order in itertools.permutations(base.labels):
        task = base.model_copy(update={"labels": list(order)})
        for preferred in base.labels:
            bias = {t: 12.0 for t in ids[preferred]}
            expected = analytic_scores(len(tokenizer), bias, ids)
            for scoring in RULES:
                result = _assign(
                    tokenizer, task, records, bias, scoring=scoring, prefix_cache=prefix_cache, shots=shots
                )
                assert [p["prediction"] for p in result.predictions] == [preferred] * len(records), (order, scoring)
                for p in result.predictions:
                    assert p["scores"] == pytest.approx(expected[scoring], abs=1e-3)
                golds = [r["output"] for r in records]
                assert result.metrics["accuracy"] == 100.0 * sum(g == preferred for g in golds) / len(golds)


def test_the_rules_pick_different_labels_where_they_should(tokenizer, paper_data):
    """' entailment' is [' entail', 'ment']: a likely first token and an unlikely second one. first-token and mean
    pick entailment, sum picks neutral; a rule that scored the last token instead would pick neutral too."""
    task = load_task("inference")
    records = load_test_set(paper_data, task, "rte", limit=2).records
    ids = _label_ids(tokenizer, task.labels)
    entail, ment = ids["entailment"]
    bias = {entail: 10.0, ment: -2.0, ids["neutral"][0]: 3.0, ids["contradiction"][0]: 0.5}
    expected = analytic_scores(len(tokenizer), bias, ids)
    winners = {rule: max(s, key=s.get) for rule, s in expected.items()}
    assert winners == {"sum": "neutral", "mean": "entailment", "first-token": "entailment"}
    last_token = {lab: bias.get(t[-1], 0.0) for lab, t in ids.items()}
    assert max(last_token, key=last_token.get) == "neutral"  # the classic bug would be visible
    for prefix_cache in (True, False):
        for rule, winner in winners.items():
            result = _assign(tokenizer, task, records, bias, scoring=rule, prefix_cache=prefix_cache)
            assert {p["prediction"] for p in result.predictions} == {winner}, rule
            assert result.predictions[0]["scores"] == pytest.approx(expected[rule], abs=1e-3)


@pytest.mark.parametrize("order", [["positive", "negative"], ["negative", "positive"]])
def test_a_tie_goes_to_the_first_label_in_task_order(tokenizer, order):
    """A stand-in model with no preference (every token equally likely): under first-token the labels tie
    exactly and the first label in the task's order wins."""
    task = load_task("sentiment").model_copy(update={"labels": order})
    records = [{"id": "0", "input": "Loved it.", "output": "positive"}]
    first = _assign(tokenizer, task, records, {}, scoring="first-token", prefix_cache=True).predictions[0]
    assert first["scores"]["positive"] == first["scores"]["negative"] and first["prediction"] == order[0]


@pytest.mark.parametrize("order", [["thumbs up", "thumbs down"], ["thumbs down", "thumbs up"]])
def test_labels_sharing_a_first_token_are_refused_by_first_token_and_told_apart_by_sum_and_mean(tokenizer, order):
    """' thumbs up' and ' thumbs down' share their first token: first-token scoring would tie them on every
    record, so it is refused in one line; sum and mean tell them apart."""
    task = load_task("sentiment").model_copy(update={"labels": order})
    ids = _label_ids(tokenizer, order)
    bias = {ids["thumbs up"][1]: 5.0}  # sum and mean prefer "up"
    records = [{"id": "0", "input": "Loved it.", "output": "thumbs up"}]
    with pytest.raises(UserError, match="start with the same token"):
        _assign(tokenizer, task, records, bias, scoring="first-token", prefix_cache=True)
    for rule in ("sum", "mean"):
        assert (
            _assign(tokenizer, task, records, bias, scoring=rule, prefix_cache=True).predictions[0]["prediction"]
            == "thumbs up"
        )


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n_labels=st.sampled_from([2, 3]),
    values=st.lists(st.floats(-8, 12, allow_nan=False), min_size=4, max_size=4),
    rule=st.sampled_from(list(RULES)),
    order_seed=st.integers(0, 5),
    prefix_cache=st.booleans(),
)
def test_any_bias_gives_the_closed_form_winner(tokenizer, n_labels, values, rule, order_seed, prefix_cache):
    """For any LM-head bias on the label tokens, the prediction is the closed-form argmax of the rule."""
    task = load_task("inference" if n_labels == 3 else "sentiment")
    labels = list(itertools.permutations(task.labels))[order_seed % math.factorial(n_labels)]
    task = task.model_copy(update={"labels": list(labels)})
    ids = _label_ids(tokenizer, task.labels)
    tokens = sorted({t for lab in ids.values() for t in lab})
    bias = dict(zip(tokens, values, strict=False))
    expected = analytic_scores(len(tokenizer), bias, ids)[rule]
    ranked = sorted(expected.values())
    assume(ranked[-1] - ranked[-2] > 1e-3)  # no near-tie: the winner is unambiguous
    records = [{"id": "0", "input": "Fine.", "input_1": "A man runs.", "input_2": "A person moves.", "output": "x"}]
    pred = _assign(tokenizer, task, records, bias, scoring=rule, prefix_cache=prefix_cache).predictions[0]
    assert pred["prediction"] == max(expected, key=expected.get)
    assert pred["scores"] == pytest.approx(expected, abs=1e-3)


# ---------------------------------------------------------------- generation scores from the stored texts


def test_a_generation_score_equals_its_recomputation_from_the_stored_texts(default_model_fp32, paper_data, tmp_path):
    import sacrebleu
    from rouge_score import rouge_scorer

    model, tok = default_model_fp32
    task = load_task("question").model_copy(update={"max_new_tokens": 16})
    records = load_test_set(paper_data, task, "socialqa", limit=4).records
    shots = load_pool(paper_data, task, "socialqa").records[:1]
    write_eval_outputs(evaluate(model, tok, task, records, shots=shots, batch_size=4), tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    raw = {str(r["idx"]): r for r in json.loads((paper_data / "question" / "socialqa_test_500.json").read_text())}
    golds = [raw[row["id"]]["output"] for row in rows]
    assert [row["gold"] for row in rows] == golds
    for row in rows:  # what is scored: the first paragraph of the generated text
        assert row["prediction"] == row["generated"].strip().split("\n\n")[0].strip()
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    rouge = [100 * scorer.score(g, row["prediction"])["rougeL"].fmeasure for row, g in zip(rows, golds, strict=True)]
    assert metrics["metric"] == "rouge_l" and metrics["n"] == len(rows) == 4
    assert metrics["score"] == pytest.approx(sum(rouge) / len(rouge)) and metrics["score"] > 0
    assert metrics["rouge_l"] == metrics["score"]
    bleu = sacrebleu.corpus_bleu([row["prediction"] for row in rows], [golds]).score
    assert metrics["bleu"] == pytest.approx(bleu)


# ---------------------------------------------------------------- positions after the shared prefix


def _record_forward_calls(model, monkeypatch) -> list[dict]:
    """Every forward call's input_ids, position_ids and attention mask (the signature kept: evaluate reads it)."""
    calls: list[dict] = []
    original = model.forward

    @functools.wraps(original)
    def forward(*args, **kwargs):
        calls.append({k: kwargs.get(k) for k in ("input_ids", "position_ids", "attention_mask")})
        return original(*args, **kwargs)

    monkeypatch.setattr(model, "forward", forward)
    return calls


def _real_positions(call: dict, row: int, n_real: int) -> list[int]:
    """The position ids a left-padded row gives its last `n_real` (real) tokens."""
    return call["position_ids"][row, -n_real:].tolist()


@pytest.mark.parametrize("kind", ["classification", "generation"])
def test_tokens_after_the_cached_prefix_get_the_positions_of_the_unpadded_sequence(
    models, paper_data, monkeypatch, kind
):
    """With the shared prefix cached, a record's tokens (left-padded in a batch) must sit at the positions they
    have in the plain sequence `prefix + query + label` (RoPE sees a gap or an overlap otherwise); each new token
    of greedy decoding one further. Checked on the position ids the model is given."""
    model, tok, bos = models["tiny"]
    task = load_task("sentiment" if kind == "classification" else "question")
    if kind == "generation":
        task = task.model_copy(update={"max_new_tokens": 3})
    set_name = "sst2" if kind == "classification" else "socialqa"
    records = load_test_set(paper_data, task, set_name, limit=3).records
    shots = load_pool(paper_data, task, set_name).records[:1]
    queries = [reference_ids(tok, bos, task, r, shots)[0] for r in records]
    n_prefix = len(queries[0]) - len(tok(task.templates[0].format(**records[0]), add_special_tokens=False)["input_ids"])
    lengths = [len(q) - n_prefix for q in queries]
    assert n_prefix > 0 and len(set(lengths)) > 1  # a real prefix, rows of different lengths: padding in play
    calls = _record_forward_calls(model, monkeypatch)
    evaluate(model, tok, task, records, shots=shots, batch_size=3, prefix_cache=True)
    prefix_call, batch_call = calls[0], calls[1]
    assert prefix_call["input_ids"].shape[1] == n_prefix  # the prefix alone, at positions 0..n_prefix-1
    assert prefix_call["position_ids"] is None or prefix_call["position_ids"][0].tolist() == list(range(n_prefix))
    order = sorted(range(len(records)), key=lambda i: (-lengths[i], i))  # the batch's rows: longest first
    labels = (
        [] if kind == "generation" else [tok(" " + lab, add_special_tokens=False)["input_ids"] for lab in task.labels]
    )
    for row, i in enumerate(order):
        query_positions = list(range(n_prefix, n_prefix + lengths[i]))
        n_real = lengths[i] + sum(map(len, labels))
        got = _real_positions(batch_call, row, n_real)
        expected = query_positions + [n_prefix + lengths[i] + t for lab in labels for t in range(len(lab))]
        assert got == expected, (kind, row)
    if kind == "generation":  # each decoding step: one position after the last
        for step, call in enumerate(calls[2:], 1):  # step s feeds the s-th new token: at n_prefix + length + s - 1
            rows = call["position_ids"][:, 0].tolist()
            assert rows and set(rows) <= {n_prefix + lengths[i] + step - 1 for i in order}, step
        assert len(calls) > 2
