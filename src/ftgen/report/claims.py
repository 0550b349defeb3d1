"""The paper's claims, checked against a study's own numbers: confirmed / refuted / inconclusive / not covered.

Each claim is one function over the computed table (ftgen.report.table) whose docstring is its verdict rule, the
text the report prints beside the verdict. A "cell" is one row on one test set in one setting; its difference has
a 95% interval (paired over records, and over seeds when there are several; ftgen.stats); a pooled mean over cells
is the stratified-bootstrap mean of the per-cell differences (stats.headline). A significant win / loss is a cell
whose interval lies above / below 0. "FT" is plain fine-tuning, full or LoRA; "FTICL" fine-tuning with in-context
examples; FTICL − FT uses matched runs only.

A verdict's evidence ends with how many of the cells it compared are flagged to distrust (constant
predictions, a score within its interval of the majority rate, degenerate generations): a verdict that rests on
them is only as good as they are.

A claim the study's grid bears on but whose cells are not complete yet (pending, failed, not scorable) is
inconclusive, with that reason; "not covered by this study" means the grid has no cell for it at all.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

from ftgen import stats
from ftgen.report.table import GROUPS, Model, Setting, Table, pooled_headline

VERDICTS = ("confirmed", "refuted", "inconclusive", "not covered by this study")
NO_HELP_MARGIN = 1.0  # points: "does not help" = the interval of the gain stays below this
RARE_SHARE = 5.0  # %: a share whose 95% upper bound is below this is "hardly ever"


@dataclass(frozen=True)
class Claim:
    number: str
    text: str  # the paper's claim
    rule: str  # how this report decides, plainly
    verdict: str
    evidence: str  # the study's numbers behind the verdict


# A claim's cells: per seed (a, b) records of a complete cell; [] for a cell of the grid not complete yet; None
# for a comparison the grid does not hold.
Cells = list[list[tuple] | None]


def _pooled(label: str, cells: Cells) -> stats.Headline | None:
    h = pooled_headline(label, cells)
    return h if h.difference is not None else None


def _undecided(cells: Cells) -> tuple[str, str]:
    """The verdict without a complete cell: inconclusive when the grid holds cells for it, else not covered."""
    if any(c is not None for c in cells):
        n = sum(c is not None for c in cells)
        return VERDICTS[2], f"none of its {n} cells is complete (pending, failed or not scorable)"
    return VERDICTS[3], "the study has no cell for this comparison"


def _directional(label: str, cells: Cells, sign: int) -> tuple[str, str]:
    """confirmed if the pooled interval lies on the claimed side of 0, refuted if on the other, else
    inconclusive (see _undecided without complete cells)."""
    h = _pooled(label, cells)
    if h is None or h.difference is None:
        return _undecided(cells)
    d = h.difference
    verdict = VERDICTS[2]
    if d.excludes_zero:
        verdict = VERDICTS[0] if (d.estimate > 0) == (sign > 0) else VERDICTS[1]
    return verdict, stats.format_headline(h)


def _kind(t: Table, task: str | None) -> str | None:
    return t.view.task_def(task).get("kind")


def _runs(t: Table, *, fticl: bool | None = None, kind: str | None = None) -> list[Model]:
    return [
        m
        for m in t.trained  # interpolated models are neither FT nor FTICL
        if (fticl is None or m.fticl == fticl) and (kind is None or _kind(t, m.train_task) == kind)
    ]


def _vs_base(t: Table, models: list[Model], groups: tuple[str, ...]) -> Cells:
    """Each grid cell of the models in the groups against its base ([] until both are done)."""
    sets = [(m, ts, s) for m in models for s in t.settings for g in groups for ts in t.group_sets(m, s, g)]
    return [t.vs_base(m, ts, s) or [] for m, ts, s in sets]


def _matched(t: Table, kind: str, groups: tuple[str, ...]) -> Cells:
    """FTICL − FT on each grid cell of the matched pairs of a kind of train task ([] until both are done)."""
    pairs = [p for p in t.pairs if _kind(t, p.ft.train_task) == kind]
    sets = [(p, ts, s) for p in pairs for s in t.settings for g in groups for ts in t.group_sets(p.ft, s, g)]
    return [t.fticl_vs_ft(p, ts, s) or [] for p, ts, s in sets]


def _between(t: Table, a: Model, sa: Setting, b: Model, sb: Setting, test) -> list[tuple] | None:
    """Per seed (a, b) records of two done cells on the same test set (seeds paired in order); [] while one is
    not done, None when the grid does not hold both."""
    ca, cb = t.cell(a, test, sa), t.cell(b, test, sb)
    if ca is None or cb is None:
        return None
    if not (ca.done and cb.done):
        return []
    if b.is_base:
        return [(r, cb.records[0]) for r in ca.records]
    return list(zip(ca.records, cb.records, strict=False)) if len(ca.records) == len(cb.records) else []


def _flagged(t: Table, cells: Cells, decided: tuple[str, str]) -> tuple[str, str]:
    """(verdict, evidence) with how many of the table cells behind the comparisons are flagged to distrust
    (constant predictions, the majority rate, degenerate outputs: Table.distrusted), so that a verdict resting
    on them says so."""
    owner = {id(r): c for c in t.cells.values() for r in c.records if r is not None}
    used = {id(owner[id(r)]): owner[id(r)] for runs in cells if runs for pair in runs for r in pair if id(r) in owner}
    bad = sum(1 for c in used.values() if c.distrust)
    verdict, evidence = decided
    return verdict, evidence + (f"; {bad} of the {len(used)} cells compared are flagged to distrust (†)" if bad else "")


# ---------------------------------------------------------------- the claims


def claim_1(t: Table) -> Claim:
    """Over FT rows of every train task but sentiment, on their in-domain sets: the FT model 0-shot minus the
    base model with its first k-shot setting (paired on the same records). Confirmed if the pooled interval lies
    above 0, refuted if below, inconclusive otherwise."""
    cells = []
    for m in _runs(t, fticl=False):
        if m.train_task == "sentiment":
            continue
        base = t.base_of(m)
        for fmt in t.fmts:
            for test in t.test_sets if base else []:
                if t.group_of(m, test) == "ID":
                    cells.append(_between(t, m, Setting(0, fmt), base, Setting(1, fmt), test))
    return _claim(
        "1",
        "FT evaluated 0-shot beats the base model with in-context examples in-domain (except sentiment)",
        claim_1,
        *_flagged(t, cells, _directional("FT 0-shot − base k-shot", cells, +1)),
    )


def claim_2(t: Table) -> Claim:
    """Over FT rows, every test set and k-shot setting: k-shot minus 0-shot of the same model on the same records.
    Refuted if the pooled interval lies above 0 or more than half the cells are significant wins; confirmed if at
    most a quarter are significant wins (and the pooled interval does not lie above 0); inconclusive otherwise."""
    cells = [
        _between(t, m, s, m, Setting(0, s.fmt), test)
        for m in _runs(t, fticl=False)
        for s in t.settings
        if s.rank > 0
        for test in t.test_sets
    ]
    h = _pooled("k-shot − 0-shot of FT models", cells)
    if h is None or h.difference is None:
        return _claim("2", CLAIM_2, claim_2, *_undecided(cells))
    if h.difference.low > 0 or h.wins > h.n_cells / 2:
        verdict = VERDICTS[1]
    elif h.wins <= h.n_cells / 4:
        verdict = VERDICTS[0]
    else:
        verdict = VERDICTS[2]
    return _claim("2", CLAIM_2, claim_2, *_flagged(t, cells, (verdict, stats.format_headline(h))))


CLAIM_2 = "test-time in-context examples rarely help a fine-tuned model"


def claim_3(t: Table) -> Claim:
    """Over rows that differ only by train size, each larger size minus the next smaller one, per test set and
    setting. Confirmed if more data is significantly worse in at least 5% of the cells (chance alone gives
    about 2.5%); refuted if it is significantly better in at least three quarters and worse in none;
    inconclusive otherwise."""
    lines: dict[tuple, list[Model]] = {}
    for m in _runs(t):
        lines.setdefault((m.model, m.train_task, m.method, m.lr, m.epochs, m.seeds), []).append(m)
    cells = []
    for models in lines.values():
        models.sort(key=lambda m: m.size or 0)
        for small, large in zip(models, models[1:], strict=False):
            cells += [_between(t, large, s, small, s, test) for s in t.settings for test in t.test_sets]
    h = _pooled("larger − smaller train size", cells)
    if h is None or h.difference is None:
        return _claim("3", CLAIM_3, claim_3, *_undecided(cells))
    if h.losses >= max(1, math.ceil(0.05 * h.n_cells)):
        verdict = VERDICTS[0]
    elif h.wins >= 0.75 * h.n_cells and h.losses == 0:
        verdict = VERDICTS[1]
    else:
        verdict = VERDICTS[2]
    return _claim("3", CLAIM_3, claim_3, *_flagged(t, cells, (verdict, stats.format_headline(h))))


CLAIM_3 = "more training data is not consistently better"


def claim_4(t: Table) -> Claim:
    """Over FT rows of generation train tasks, their out-of-domain cells in every setting: the delta vs the base.
    Confirmed if the pooled interval lies below 0, refuted if above, inconclusive otherwise."""
    cells = _vs_base(t, _runs(t, fticl=False, kind="generation"), ("OOD",))
    text = "fine-tuning on a generation task hurts the same task out-of-domain"
    return _claim("4", text, claim_4, *_flagged(t, cells, _directional("FT − base, OOD", cells, -1)))


def claim_5(t: Table) -> Claim:
    """Over FT rows of classification train tasks, their out-of-domain cells in every setting: the delta vs the
    base. Confirmed if the pooled interval lies above 0, refuted if below, inconclusive otherwise."""
    cells = _vs_base(t, _runs(t, fticl=False, kind="classification"), ("OOD",))
    text = "fine-tuning on a classification task helps the same task out-of-domain"
    return _claim("5", text, claim_5, *_flagged(t, cells, _directional("FT − base, OOD", cells, +1)))


def claim_7(t: Table) -> Claim:
    """Over rows trained on classification tasks, on generation test sets in every setting: the share of outputs
    that are just a label word of one of the study's classification tasks, minus the base model's on the same
    records. Confirmed if the pooled interval lies above 0; refuted if the tuned models' pooled share has a 95%
    upper bound (Clopper-Pearson) below 5%; inconclusive otherwise."""
    cells, hits, total = [], 0, 0
    for m in _runs(t, kind="classification"):
        for s in t.settings:
            for test in t.test_sets:
                cell = t.cell(m, test, s)
                base = t.base_cell(cell) if cell else None
                if _kind(t, test.task) != "generation" or base is None:
                    continue
                words = [p.label_words for p in cell.parts] if cell.done and base.done else [None]
                if all(w is not None for w in words) and base.parts[0].label_words is not None:
                    cells.append([(w, base.parts[0].label_words) for w in words])
                    hits += sum(int(np.count_nonzero(w.values)) for w in words)
                    total += sum(w.n for w in words)
                else:
                    cells.append([])  # in the grid, not complete yet
    verdict, evidence = _directional("bare label words, tuned − base (%)", cells, +1)
    if total and verdict != VERDICTS[0]:
        share = stats.binomial_interval([100.0] * hits + [0.0] * (total - hits))
        evidence += f"; tuned share {share.estimate:.1f}% [{share.low:.1f}, {share.high:.1f}] of {total} outputs"
        verdict = VERDICTS[1] if share.high < RARE_SHARE else VERDICTS[2]
    text = "models fine-tuned on classification emit label words on generation tasks"
    return _claim("7", text, claim_7, verdict, evidence)


def claim_10(t: Table) -> Claim:
    """Over matched FT / FTICL rows of generation train tasks, their out-of-domain cells in every setting:
    FTICL − FT. Confirmed if the pooled interval lies above 0, refuted if below, inconclusive otherwise."""
    cells = _matched(t, "generation", ("OOD",))
    text = "for generation tasks, FTICL generalizes better than FT out-of-domain"
    return _claim("10", text, claim_10, *_flagged(t, cells, _directional("FTICL − FT, OOD", cells, +1)))


def claim_11(t: Table) -> Claim:
    """Over matched FT / FTICL rows of generation train tasks, their cross-task cells in every setting:
    FTICL − FT. Confirmed if the pooled interval lies above 0, refuted if below, inconclusive otherwise."""
    cells = _matched(t, "generation", ("cross",))
    text = "for generation tasks, FTICL generalizes better than FT cross-task"
    return _claim("11", text, claim_11, *_flagged(t, cells, _directional("FTICL − FT, cross-task", cells, +1)))


def claim_12(t: Table) -> Claim:
    """Over matched FT / FTICL runs (per seed) with a drift measure: the ratio of their mean |Δw| (the paper's
    drift), FTICL / FT; geometric mean with a 95% t-interval over the runs' log-ratios. Confirmed if the interval
    lies below 1, refuted if above 1, inconclusive otherwise (and with a single pair)."""
    logs = []
    for p in t.pairs:
        for a, b in zip(p.fticl.run_keys, p.ft.run_keys, strict=True):
            da, db = (t.view.runs[k].summary.get("drift") or {} for k in (a, b))
            if (da.get("mean_abs_change") or 0) > 0 and (db.get("mean_abs_change") or 0) > 0:
                logs.append(math.log(da["mean_abs_change"] / db["mean_abs_change"]))
    text = "FTICL moves the weights less (mean |Δw|) than FT"
    if not logs:
        keys = [k for p in t.pairs for k in (*p.fticl.run_keys, *p.ft.run_keys)]
        if any(t.view.runs[k].status != "done" for k in keys):
            return _claim("12", text, claim_12, VERDICTS[2], "the matched runs are not all trained yet")
        return _claim("12", text, claim_12, VERDICTS[3], "no matched FT / FTICL runs with a drift measure")
    mean = float(np.mean(logs))
    if len(logs) < 2:
        return _claim("12", text, claim_12, VERDICTS[2], f"FTICL / FT = {math.exp(mean):.3f} from 1 matched pair")
    half = sps.t.ppf(0.975, len(logs) - 1) * float(np.std(logs, ddof=1)) / math.sqrt(len(logs))
    low, high = math.exp(mean - half), math.exp(mean + half)
    verdict = VERDICTS[0] if high < 1 else VERDICTS[1] if low > 1 else VERDICTS[2]
    evidence = f"FTICL / FT mean |Δw| = {math.exp(mean):.3f} [{low:.3f}, {high:.3f}] over {len(logs)} matched runs"
    return _claim("12", text, claim_12, verdict, evidence)


def claim_13(t: Table) -> Claim:
    """Over matched FT / FTICL rows of classification train tasks, every group and setting: FTICL − FT.
    Confirmed if the pooled interval stays below +1 point (no gain of a point or more), refuted if it lies above
    0, inconclusive otherwise."""
    cells = _matched(t, "classification", GROUPS)
    h = _pooled("FTICL − FT", cells)
    text = "for classification tasks, FTICL does not help over FT"
    if h is None or h.difference is None:
        return _claim("13", text, claim_13, *_undecided(cells))
    d = h.difference
    verdict = VERDICTS[1] if d.low > 0 else VERDICTS[0] if d.high < NO_HELP_MARGIN else VERDICTS[2]
    return _claim("13", text, claim_13, *_flagged(t, cells, (verdict, stats.format_headline(h))))


def _claim(number: str, text: str, rule: Callable, verdict: str, evidence: str) -> Claim:
    return Claim(number, text, " ".join((rule.__doc__ or "").split()), verdict, evidence)


CLAIMS = (claim_1, claim_2, claim_3, claim_4, claim_5, claim_7, claim_10, claim_11, claim_12, claim_13)


def check_claims(t: Table) -> list[Claim]:
    """Every claim of the paper this report checks, in the paper's numbering (an unfinished study's verdicts say
    so: they may change once it is done)."""
    claims = [check(t) for check in CLAIMS]
    if t.view.complete:
        return claims
    return [Claim(c.number, c.text, c.rule, c.verdict, c.evidence + " (the study is not finished)") for c in claims]
