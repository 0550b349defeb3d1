"""Metrics on a 0-100 scale: accuracy, macro-F1, confusion and label shares for classification;
Rouge-L (F1, with stemming) and corpus BLEU for generation, both on the first paragraph of the output.
"""

from __future__ import annotations

from collections import Counter
from functools import cache


def first_paragraph(text: str) -> str:
    """The text up to its first blank line, stripped: what the paper scores."""
    return text.strip().split("\n\n", 1)[0].strip()


def accuracy(preds: list[str], golds: list[str]) -> float:
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
    return {
        "accuracy": accuracy(preds, golds),
        "macro_f1": macro_f1(preds, golds, labels),
        "confusion": confusion(preds, golds, labels),
        "pred_share": pred_share(preds, labels),
    }


@cache
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(preds: list[str], refs: list[str]) -> float:
    """Mean Rouge-L F1 x 100 (rouge-score, Porter stemming)."""
    if not refs:
        return 0.0
    scorer = _rouge_scorer()
    total = sum(scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(preds, refs, strict=True))
    return 100.0 * total / len(refs)


def bleu(preds: list[str], refs: list[str]) -> float:
    """Corpus BLEU (sacrebleu, default 13a tokenization), already on a 0-100 scale."""
    if not refs:
        return 0.0
    import sacrebleu

    return float(sacrebleu.corpus_bleu(preds, [refs]).score)


def generation_metrics(outputs: list[str], refs: list[str]) -> dict:
    """Rouge-L and BLEU of the first paragraph of each output against its reference."""
    preds = [first_paragraph(o) for o in outputs]
    return {"rouge_l": rouge_l(preds, refs), "bleu": bleu(preds, refs)}
