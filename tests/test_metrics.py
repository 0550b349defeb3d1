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


def test_rouge_l_by_hand_with_stemming():
    assert M.rouge_l(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(100.0)
    # LCS 3 of 3 predicted and 6 reference tokens: P = 1, R = 1/2, F = 2/3
    assert M.rouge_l(["the cat sat"], ["the cat sat on the mat"]) == pytest.approx(200 / 3)
    assert M.rouge_l(["cats running"], ["cat runs"]) == pytest.approx(100.0)  # Porter stemming
    assert M.rouge_l(["a b", "c d"], ["a b", "x y"]) == pytest.approx(50.0)  # mean over records


def test_bleu_is_corpus_bleu_on_0_100():
    same = ["the quick brown fox jumps over the lazy dog"]
    assert M.bleu(same, same) == pytest.approx(100.0)
    assert M.bleu(["completely unrelated words here"], same) == pytest.approx(0.0)
    import sacrebleu

    preds = ["the quick brown fox jumps over a lazy dog", "hello there my friend"]
    refs = ["the quick brown fox jumps over the lazy dog", "hello there my good friend"]
    assert M.bleu(preds, refs) == pytest.approx(sacrebleu.corpus_bleu(preds, [refs]).score)
    assert 0 < M.bleu(preds, refs) < 100


def test_generation_metrics_score_the_first_paragraph_only():
    m = M.generation_metrics(["  the quick brown fox jumps\n\nand then a lot of noise"], ["the quick brown fox jumps"])
    assert m["rouge_l"] == pytest.approx(100.0)
    assert m["bleu"] == pytest.approx(100.0)
