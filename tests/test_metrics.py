"""Metrics on hand-checked inputs (0-100 scale)."""

from __future__ import annotations

import pytest

from ftgen import metrics as M


def test_first_paragraph_strips_and_cuts_at_the_first_blank_line():
    assert M.first_paragraph("  The cat sat.\n\nThen it left.") == "The cat sat."
    assert M.first_paragraph("\n\nA\nB\n\nC") == "A\nB"  # a leading blank line is not the end
    assert M.first_paragraph("one line") == "one line"
    assert M.first_paragraph("  \n ") == ""


def test_accuracy_macro_f1_confusion_by_hand():
    preds = ["a", "a", "b", "b"]
    golds = ["a", "b", "b", "b"]
    assert M.accuracy(preds, golds) == 75.0
    # F1(a) = 2*1 / (2*1 + 1 + 0) = 2/3 ; F1(b) = 2*2 / (2*2 + 0 + 1) = 4/5
    assert M.macro_f1(preds, golds, ["a", "b"]) == pytest.approx(100 * (2 / 3 + 4 / 5) / 2)
    assert M.confusion(preds, golds, ["a", "b"]) == {"a": {"a": 1, "b": 0}, "b": {"a": 1, "b": 2}}
    assert M.pred_share(preds, ["a", "b"]) == {"a": 50.0, "b": 50.0}


def test_a_collapsed_predictor_is_visible():
    golds = ["positive", "negative", "negative", "positive", "negative"]
    preds = ["negative"] * 5
    m = M.classification_metrics(preds, golds, ["positive", "negative"])
    assert m["pred_share"] == {"positive": 0.0, "negative": 100.0}
    assert m["accuracy"] == 60.0
    # F1(negative) = 6/8, F1(positive) = 0: macro-F1 exposes the collapse that accuracy hides
    assert m["macro_f1"] == pytest.approx(100 * 0.75 / 2)
    assert m["confusion"]["positive"] == {"positive": 0, "negative": 2}


def test_macro_f1_counts_a_never_seen_label_as_zero():
    assert M.macro_f1(["x", "x"], ["x", "x"], ["x", "y", "z"]) == pytest.approx(100 / 3)


def test_classification_metrics_state_n_scored():
    assert M.classification_metrics(["a", "b", "a"], ["a", "a", "a"], ["a", "b"])["n_scored"] == 3
    assert M.generation_metrics(["x y", "z"], ["x y", "w"])["n_scored"] == 2


# ---------------------------------------------------------------- Rouge-L against rouge-score


def _reference_rouge(kind: str, pred: str, ref: str, stem: bool = False) -> float:
    """rouge-score itself, as Hugging Face `evaluate`'s rouge calls it (target = reference)."""
    from rouge_score import rouge_scorer

    return 100 * rouge_scorer.RougeScorer([kind], use_stemmer=stem).score(ref, pred)[kind].fmeasure


def test_rouge_l_is_the_longest_common_subsequence_not_unigram_overlap():
    # same words in another order: Rouge-1 is 100, Rouge-L only counts the LCS "the cat" (2 of 3 tokens)
    assert _reference_rouge("rouge1", "sat the cat", "the cat sat") == pytest.approx(100.0)
    assert M.rouge_l(["sat the cat"], ["the cat sat"]) == pytest.approx(200 / 3)
    assert M.rouge_l(["sat the cat"], ["the cat sat"]) == pytest.approx(
        _reference_rouge("rougeL", "sat the cat", "the cat sat")
    )
    # LCS 3 of 3 predicted and 6 reference tokens: P = 1, R = 1/2, F = 2/3
    assert M.rouge_l(["the cat sat"], ["the cat sat on the mat"]) == pytest.approx(200 / 3)
    assert M.rouge_l(["a b", "c d"], ["a b", "x y"]) == pytest.approx(50.0)  # mean over records


def test_rouge_l_is_sentence_level_rougeL_not_rougeLsum():
    # rougeLsum takes the union LCS per line (100 here); the paper's `rougeL` is one LCS over the whole text
    pred, ref = "a b\nc d", "c d\na b"
    assert _reference_rouge("rougeLsum", pred, ref) == pytest.approx(100.0)
    assert _reference_rouge("rougeL", pred, ref) == pytest.approx(50.0)
    assert M.rouge_l([pred], [ref]) == pytest.approx(50.0)


def test_rouge_l_does_not_stem_by_default_as_the_paper_computed_it():
    assert M.rouge_l(["cats running"], ["cat runs"]) == pytest.approx(0.0)
    assert M.rouge_l_scores(["cats running"], ["cat runs"]) == [0.0]
    assert M.per_record_scores("generation", "rouge_l", ["cats running"], ["cat runs"]) == [0.0]
    assert M.rouge_l(["cats running"], ["cat runs"], stem=True) == pytest.approx(100.0)  # Porter stemming
    assert M.generation_metrics(["cats running"], ["cat runs"], stem=True)["rouge_l"] == pytest.approx(100.0)
    assert M.generation_metrics(["cats running"], ["cat runs"])["rouge_l"] == pytest.approx(0.0)


TEXTS = [
    ("The cat sat on the mat.", "the cat sat on a mat"),
    ("Hello, world!", "hello world"),  # case and punctuation are not tokens
    ("", ""),
    ("", "a reference"),
    ("a prediction", ""),
    ("!!! ...", "?"),
    ("Prices rose 3.5% in 2023; analysts expect more", "In 2023 prices rose by 3.5 percent"),
    ("studies show the runners were running", "a study showed runners run"),
    ("Café naïve résumé", "cafe naive resume"),  # rouge-score keeps only [a-z0-9]
    ("line one\nline two", "line two\nline one"),
]


@pytest.mark.parametrize("stem", [False, True])
def test_rouge_l_per_record_matches_rouge_score_on_edge_cases(stem):
    preds, refs = [p for p, _ in TEXTS], [r for _, r in TEXTS]
    expected = [_reference_rouge("rougeL", p, r, stem) for p, r in TEXTS]
    assert M.rouge_l_scores(preds, refs, stem) == pytest.approx(expected)
    assert M.rouge_l(preds, refs, stem) == pytest.approx(sum(expected) / len(expected))
    assert M.rouge_l([""], [""]) == 0.0 and M.rouge_l([], []) == 0.0
    assert M.rouge_l(["Hello, world!"], ["hello world"]) == pytest.approx(100.0)


# ---------------------------------------------------------------- BLEU against sacrebleu


BLEU_CASES = [
    (
        ["the quick brown fox jumps over a lazy dog", "hello there my friend"],
        ["the quick brown fox jumps over the lazy dog", "hello there my good friend"],
    ),
    ([""], ["a reference that the output misses"]),  # empty output: brevity penalty 0
    (["", "the same words"], ["some words", "the same words"]),
    (["ok"], ["ok"]),  # shorter than 4 tokens: no 4-gram at all
    (["a b c"], ["x y z"]),  # no match
    (["It ends with a tokenized period ."], ["It ends with a tokenized period."]),
    (["Müller sagt: „Ja“ – 42 %!"], ["Müller sagt „ja“ 42 %"]),
    (["the the the the the the the"], ["the cat is on the mat"]),  # clipped counts
]


@pytest.mark.parametrize(("preds", "refs"), BLEU_CASES)
def test_bleu_matches_sacrebleu_on_edge_cases(preds, refs):
    import sacrebleu

    expected = sacrebleu.corpus_bleu(preds, [refs]).score
    assert M.bleu(preds, refs) == pytest.approx(expected)
    assert M.bleu_from_statistics(M.bleu_statistics(preds, refs).sum(0)) == pytest.approx(expected)


def test_bleu_is_corpus_bleu_not_a_mean_of_sentence_bleu():
    same = ["the quick brown fox jumps over the lazy dog"]
    assert M.bleu(same, same) == pytest.approx(100.0)
    assert M.bleu(["completely unrelated words here"], same) == pytest.approx(0.0)
    preds = ["the quick brown fox jumps over the lazy dog", "hello"]
    refs = ["the quick brown fox jumps over the lazy dog", "goodbye my old friend"]
    corpus = M.bleu(preds, refs)
    sentence_mean = (M.bleu(preds[:1], refs[:1]) + M.bleu(preds[1:], refs[1:])) / 2
    assert 0 < corpus < 100 and corpus != pytest.approx(sentence_mean)


def test_bleu_from_summed_statistics_equals_sacrebleu_on_resampled_records():
    """What the bootstrap relies on: corpus BLEU of a resample (duplicates included) from summed statistics."""
    import numpy as np
    import sacrebleu

    preds = ["the cat sat on the mat", "a dog barked", "", "it rained all day long in the city", "yes"]
    refs = ["the cat is on the mat", "the dog barked loudly", "nothing here", "it rained all day in town", "no"]
    stats = M.bleu_statistics(preds, refs)
    assert stats.shape == (5, 10)
    rng = np.random.default_rng(7)
    draws = rng.integers(0, 5, size=(6, 5))
    vectorised = M.bleu_from_statistics(np.stack([stats[d].sum(0) for d in draws]))
    assert vectorised.shape == (6,)
    for d, score in zip(draws, vectorised, strict=True):
        assert score == pytest.approx(sacrebleu.corpus_bleu([preds[i] for i in d], [[refs[i] for i in d]]).score)


def test_generation_metrics_score_the_first_paragraph_only():
    m = M.generation_metrics(["  the quick brown fox jumps\n\nand then a lot of noise"], ["the quick brown fox jumps"])
    assert m["rouge_l"] == pytest.approx(100.0)
    assert m["bleu"] == pytest.approx(100.0)


# ---------------------------------------------------------------- per-record scores


def test_per_record_scores_average_to_the_cell_score():
    preds, golds = ["yes", "no", "no", "yes"], ["yes", "yes", "no", "no"]
    scores = M.per_record_scores("classification", "accuracy", preds, golds)
    assert scores == [100.0, 0.0, 100.0, 0.0]
    assert sum(scores) / len(scores) == M.accuracy(preds, golds)
    outputs = ["sat the cat\n\nand more", "the dog ran", ""]
    refs = ["the cat sat", "the dog ran away", "something"]
    per = M.per_record_scores("generation", "rouge_l", outputs, refs)
    assert per == pytest.approx([200 / 3, 100 * 6 / 7, 0.0])  # the first paragraph of each output is scored
    assert sum(per) / 3 == pytest.approx(M.generation_metrics(outputs, refs)["rouge_l"])
    assert M.per_record_scores("generation", "rouge_l", ["cats"], ["cat"], stem=True) == [100.0]


@pytest.mark.parametrize(
    ("kind", "metric", "preds", "golds", "message"),
    [
        ("generation", "bleu", ["a"], ["a"], "corpus metric"),
        ("classification", "rouge_l", ["a"], ["a"], "no per-record score"),
        ("generation", "accuracy", ["a"], ["a"], "no per-record score"),
        ("classification", "accuracy", ["a", "b"], ["a"], "2 predictions for 1"),
    ],
)
def test_per_record_scores_refuse_what_has_no_per_record_score(kind, metric, preds, golds, message):
    with pytest.raises(ValueError, match=message):
        M.per_record_scores(kind, metric, preds, golds)
