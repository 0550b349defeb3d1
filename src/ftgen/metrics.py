"""Metrics on a 0-100 scale: what one evaluation cell scores, as a whole and per record.

Classification: accuracy, macro-F1, confusion and label shares. Generation, on the first paragraph of the
output: Rouge-L F1 as the paper computed it (Hugging Face `evaluate`'s rouge, i.e. rouge-score's sentence-level
`rougeL` without stemming, stemming as an option) and corpus BLEU (sacrebleu's defaults). Per-record values feed
the confidence intervals of `ftgen.stats`: 0/100 correctness, Rouge-L F1 x 100, and for BLEU, which is not a mean
of per-record scores, each record's sufficient statistics (n-gram matches and lengths) so that a resample of
records can recompute corpus BLEU exactly. Every metrics dict states `n_scored`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from functools import cache

import numpy as np


def first_paragraph(text: str) -> str:
    """The text up to its first blank line, stripped: what the paper scores (idempotent)."""
    return text.strip().split("\n\n", 1)[0].strip()


def accuracy(preds: list[str], golds: list[str]) -> float:
    """Share (%) of predictions equal to their gold label (0.0 with no records)."""
    if not golds:
        return 0.0
    return 100.0 * sum(p == g for p, g in zip(preds, golds, strict=True)) / len(golds)


def confusion(preds: list[str], golds: list[str], labels: list[str]) -> dict[str, dict[str, int]]:
    """gold -> predicted -> count, every label present (zeros included) so tables line up."""
    table = {g: dict.fromkeys(labels, 0) for g in labels}
    for p, g in zip(preds, golds, strict=True):
        table.setdefault(g, dict.fromkeys(labels, 0))
        table[g][p] = table[g].get(p, 0) + 1
    return table


def macro_f1(preds: list[str], golds: list[str], labels: list[str]) -> float:
    """Mean over `labels` of each label's F1 (0 where a label is never predicted nor gold)."""
    if not labels:
        return 0.0
    pairs = list(zip(preds, golds, strict=True))
    f1s = []
    for lab in labels:
        tp = sum(p == lab and g == lab for p, g in pairs)
        fp = sum(p == lab and g != lab for p, g in pairs)
        fn = sum(p != lab and g == lab for p, g in pairs)
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return 100.0 * sum(f1s) / len(f1s)


def pred_share(preds: list[str], labels: list[str]) -> dict[str, float]:
    """Share (%) of the predictions going to each label: a collapsed model shows 100 on one label."""
    counts = Counter(preds)
    n = max(len(preds), 1)
    return {lab: 100.0 * counts.get(lab, 0) / n for lab in labels}


def classification_metrics(preds: list[str], golds: list[str], labels: list[str]) -> dict:
    """Accuracy, macro-F1, confusion, predicted-label shares and the number of records scored."""
    return {
        "accuracy": accuracy(preds, golds),
        "macro_f1": macro_f1(preds, golds, labels),
        "confusion": confusion(preds, golds, labels),
        "pred_share": pred_share(preds, labels),
        "n_scored": len(golds),
    }


@cache
def _rouge_scorer(stem: bool):
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=stem)


def rouge_l_scores(preds: Sequence[str], refs: Sequence[str], stem: bool = False) -> list[float]:
    """Per-record Rouge-L F1 x 100: rouge-score's sentence-level `rougeL` (one LCS over the whole text).

    rouge-score lower-cases, splits on anything that is not [a-z0-9] and, with `stem`, Porter-stems words longer
    than 3 characters. The paper's scorer (`evaluate`'s rouge) does not stem; it reports the median of 1000
    unseeded bootstrap means, which differs from this exact mean only by its resampling noise.
    """
    scorer = _rouge_scorer(stem)
    return [100.0 * scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(preds, refs, strict=True)]


def rouge_l(preds: list[str], refs: list[str], stem: bool = False) -> float:
    """Mean Rouge-L F1 x 100 over records (no stemming unless `stem`); 0.0 with no records."""
    if not refs:
        return 0.0
    return float(np.mean(rouge_l_scores(preds, refs, stem)))


@cache
def _bleu_metric():
    from sacrebleu.metrics import BLEU

    return BLEU()  # the paper's `BLEU()`: 13a tokenization, exp smoothing, case-sensitive


def bleu(preds: list[str], refs: list[str]) -> float:
    """Corpus BLEU (sacrebleu, default 13a tokenization), already on a 0-100 scale; 0.0 with no records."""
    if not refs:
        return 0.0
    return float(_bleu_metric().corpus_score(list(preds), [list(refs)]).score)


def bleu_statistics(preds: Sequence[str], refs: Sequence[str]) -> np.ndarray:
    """Per-record BLEU sufficient statistics, shape (n, 10): lengths, then matched and total 1- to 4-grams.

    Corpus BLEU is a function of their sum over records (`bleu_from_statistics`), which is how sacrebleu's own
    bootstrap and paired tests recompute it on resampled records.
    """
    if len(preds) != len(refs):
        raise ValueError(f"{len(preds)} predictions for {len(refs)} references")
    if not refs:
        return np.zeros((0, 10))
    return np.asarray(_bleu_metric()._extract_corpus_statistics(list(preds), [list(refs)]), dtype=np.float64)


def bleu_from_statistics(sums: np.ndarray) -> np.ndarray:
    """Corpus BLEU (0-100) from statistics summed over records: shape (..., 10) -> (...)."""
    sums = np.asarray(sums, dtype=np.float64)
    flat = sums.reshape(-1, sums.shape[-1])
    metric = _bleu_metric()
    scores = np.array([metric._compute_score_from_stats(row).score for row in flat.tolist()], dtype=np.float64)
    return scores.reshape(sums.shape[:-1])


def generation_metrics(outputs: list[str], refs: list[str], stem: bool = False) -> dict:
    """Rouge-L and BLEU of the first paragraph of each output against its reference, and n scored."""
    preds = [first_paragraph(o) for o in outputs]
    return {"rouge_l": rouge_l(preds, refs, stem), "bleu": bleu(preds, refs), "n_scored": len(refs)}


def per_record_scores(
    kind: str, metric: str, predictions: Sequence[str], golds: Sequence[str], stem: bool = False
) -> list[float]:
    """Each record's score on 0-100, whose mean is the cell's score: 0/100 correctness or Rouge-L F1 x 100.

    Generation predictions may be raw outputs or the stored first paragraphs (the first paragraph is scored
    either way). BLEU is a corpus metric, not a mean of per-record scores: use `bleu_statistics`.
    """
    if len(predictions) != len(golds):
        raise ValueError(f"{len(predictions)} predictions for {len(golds)} gold answers")
    if kind == "classification" and metric == "accuracy":
        return [100.0 if p == g else 0.0 for p, g in zip(predictions, golds, strict=True)]
    if kind == "generation" and metric == "rouge_l":
        return rouge_l_scores([first_paragraph(p) for p in predictions], golds, stem)
    if kind == "generation" and metric == "bleu":
        raise ValueError("bleu is a corpus metric with no per-record score: use bleu_statistics")
    raise ValueError(f"no per-record score for metric {metric!r} of a {kind} task")
