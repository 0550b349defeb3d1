"""Statistics behind ftgen's tables: intervals, paired differences, group means, seeds, correlations, flags.

Everything is on the 0-100 scale of the tables. Inputs are plain: one cell's per-record values keyed by record
id (a Mapping, a plain sequence, or `Records`, which can also carry a corpus metric such as BLEU); outputs are
small frozen dataclasses. Every resampling function takes `seed` (default 0, so reruns print the same) and
draws its `resamples` at once as a matrix of record indices. Methods, each named again where it is used:

- accuracy: exact binomial (Clopper-Pearson) interval;
- a mean of per-record scores (Rouge-L F1): percentile bootstrap over records;
- a corpus metric (BLEU): percentile bootstrap that recomputes the metric on each resample of records;
- a difference (vs the base, FTICL vs FT): records matched by id, the others dropped and counted; interval by
  paired bootstrap over records; two-sided p-value by a paired sign-flip permutation test (each record's two
  outputs swapped at random; exact enumeration when 2^n <= resamples);
- a group mean over test sets (ID / OOD / cross-task): the mean of per-set differences; stratified bootstrap
  (records resampled within each set, independently);
- several seeds: mean ± sd across seeds; bootstrap that resamples seeds, then records. Records are crossed with
  seeds (every seed is scored on the same test records), so one resample of records serves every drawn seed:
  resampling them independently per seed would let record noise average out over seeds and narrow the
  interval falsely. With one seed this is exactly the paired (or stratified) bootstrap.
"""

from __future__ import annotations

import math
import string
import unicodedata
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import stats as sps

from ftgen import metrics as M

DEFAULT_SEED = 0
RESAMPLES = 2000
CONFIDENCE = 0.95
MARK = "*"  # appended to a delta whose interval excludes 0
_CHUNK_ELEMENTS = 1 << 21  # a resample matrix is drawn in row chunks of at most this many entries (memory bound)

Scorer = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True, eq=False)
class Records:
    """One cell's per-record values keyed by record id, and how they make the cell's score.

    `values` has shape (n,): per-record scores whose mean is the score (accuracy as 0/100, Rouge-L F1 x 100);
    or (n, m): per-record statistics whose sum over records `corpus_score` turns into the score (BLEU).
    """

    ids: tuple
    values: np.ndarray
    corpus_score: Scorer | None = None

    def __post_init__(self) -> None:
        values = np.asarray(self.values, dtype=np.float64)
        values = values[:, None] if values.ndim == 1 else values
        ids = tuple(self.ids)
        if values.ndim != 2 or (self.corpus_score is None and values.shape[1] != 1):
            raise ValueError(f"values: expected one score per record, got shape {values.shape}")
        if len(ids) != len(values):
            raise ValueError(f"{len(ids)} record ids for {len(values)} values")
        if len(set(ids)) != len(ids):
            raise ValueError("record ids: duplicates")
        if not np.isfinite(values).all():
            raise ValueError("values: not all finite")
        object.__setattr__(self, "ids", ids)
        object.__setattr__(self, "values", values)

    @property
    def n(self) -> int:
        return len(self.ids)

    def score(self) -> float:
        """The cell's score: the mean of the values, or the corpus metric of their sum."""
        return float(_score(self.values.sum(0), self.n, self.corpus_score))


RecordsLike = Records | Mapping[Hashable, float] | Sequence[float] | np.ndarray
Pair = tuple[RecordsLike, RecordsLike]  # (treated, base) on the same test set


def as_records(x: RecordsLike) -> Records:
    """`Records` from a Mapping id -> score, or from a plain sequence (ids are then the positions)."""
    if isinstance(x, Records):
        return x
    if isinstance(x, Mapping):
        return Records(tuple(x), list(x.values()))
    values = np.asarray(x, dtype=np.float64)
    return Records(tuple(range(len(values))), values)


def cell_records(
    kind: str,
    metric: str,
    ids: Sequence[Hashable],
    predictions: Sequence[str],
    golds: Sequence[str],
    stem: bool = False,
) -> Records:
    """A cell's `Records` from its stored predictions: per-record scores, or BLEU's per-record statistics."""
    if metric == "bleu" and kind == "generation":
        preds = [M.first_paragraph(p) for p in predictions]
        return Records(tuple(ids), M.bleu_statistics(preds, golds), M.bleu_from_statistics)
    return Records(tuple(ids), M.per_record_scores(kind, metric, predictions, golds, stem))


def _score(sums: np.ndarray, n: int, corpus_score: Scorer | None) -> np.ndarray:
    """Scores from values summed over n records, shape (..., m) -> (...): their mean, or the corpus metric."""
    return sums[..., 0] / n if corpus_score is None else np.asarray(corpus_score(sums), dtype=np.float64)


@dataclass(frozen=True)
class Estimate:
    """A number on the 0-100 scale with its confidence interval [low, high] and how it was obtained.

    A percentile interval is widened, if need be, to contain the estimate (a corpus metric's resamples can
    fall all on one side of it). For a difference: n = matched records, n_dropped = records on one side only,
    p_value = two-sided sign-flip permutation test. Over seeds: estimate = mean, sd = sd of per_seed (ddof 1).
    """

    estimate: float
    low: float
    high: float
    n: int
    method: str
    confidence: float = CONFIDENCE
    p_value: float | None = None
    n_dropped: int = 0
    n_sets: int = 1
    n_seeds: int = 1
    sd: float | None = None
    per_seed: tuple[float, ...] = ()

    @property
    def half_width(self) -> float:
        """The larger of the interval's two halves (an asymmetric interval is shown by its larger half)."""
        return max(self.estimate - self.low, self.high - self.estimate)

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def as_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------- one cell


def binomial_interval(correct: RecordsLike, confidence: float = CONFIDENCE) -> Estimate:
    """Accuracy with its exact binomial (Clopper-Pearson) interval; `correct`: per-record 0/100 or booleans."""
    if isinstance(correct, Records):
        values = correct.values[:, 0]
    else:
        values = np.asarray(list(correct.values()) if isinstance(correct, Mapping) else correct)
        values = values * 100.0 if values.dtype == np.bool_ else values.astype(np.float64)
    if values.ndim != 1 or not np.isin(values, (0.0, 100.0)).all():
        raise ValueError("accuracy: per-record scores must be 0 or 100")
    n, k = len(values), int(np.count_nonzero(values))
    if n == 0:
        raise ValueError("accuracy: no records")
    alpha = 1.0 - confidence
    low = sps.beta.ppf(alpha / 2, k, n - k + 1) if k > 0 else 0.0
    high = sps.beta.ppf(1 - alpha / 2, k + 1, n - k) if k < n else 1.0
    return Estimate(100.0 * k / n, 100.0 * float(low), 100.0 * float(high), n, "clopper-pearson", confidence)


def bootstrap_interval(
    records: RecordsLike, *, seed: int = DEFAULT_SEED, resamples: int = RESAMPLES, confidence: float = CONFIDENCE
) -> Estimate:
    """A cell's score with its percentile-bootstrap interval over records (a corpus metric is recomputed)."""
    return _compare([[(as_records(records), None)]], seed, resamples, confidence)


def score_interval(metric: str, records: RecordsLike, **options) -> Estimate:
    """A cell's score and interval by its metric: Clopper-Pearson for accuracy, bootstrap for the others."""
    if metric == "accuracy":
        return binomial_interval(records, options.get("confidence", CONFIDENCE))
    return bootstrap_interval(records, **options)


# ---------------------------------------------------------------- differences, groups, seeds


def paired_difference(
    treated: RecordsLike,
    base: RecordsLike,
    *,
    seed: int = DEFAULT_SEED,
    resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
) -> Estimate:
    """treated − base on records matched by id: paired bootstrap interval, sign-flip permutation p-value."""
    return _compare([[(as_records(treated), as_records(base))]], seed, resamples, confidence)


def group_difference(
    sets: Sequence[Pair | list[Pair] | None],
    *,
    require_all: bool = True,
    seed: int = DEFAULT_SEED,
    resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
) -> Estimate | None:
    """Mean over test sets of per-set paired differences, stratified bootstrap (records resampled per set).

    Each set is a (treated, base) tuple, a list of them (one per seed, in the same seed order for every set),
    or None when the set is missing. A missing set blanks the result (None) unless `require_all` is False, in
    which case the sets present go in; `n_sets` says how many did. None as well when no set is present.
    """
    present = [_seed_pairs(s) for s in sets if s is not None]
    if not present or (require_all and len(present) < len(sets)):
        return None
    return _compare(present, seed, resamples, confidence)


def seeds_difference(
    pairs: Sequence[Pair], *, seed: int = DEFAULT_SEED, resamples: int = RESAMPLES, confidence: float = CONFIDENCE
) -> Estimate:
    """Mean ± sd over seeds of per-seed paired differences on one test set, hierarchical bootstrap interval.

    `pairs`: one (treated, base) per seed. The interval accounts for seeds and records; the p-value flips
    records only (the same flip for every seed), so it ignores seed-to-seed variation: read the interval.
    """
    return _compare([_seed_pairs(list(pairs))], seed, resamples, confidence)


def seeds_score(
    runs: Sequence[RecordsLike],
    *,
    seed: int = DEFAULT_SEED,
    resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
) -> Estimate:
    """Mean ± sd over seeds of one cell's score, hierarchical bootstrap interval (seeds, then records): the
    group score of a group of one set."""
    return group_score([runs], seed=seed, resamples=resamples, confidence=confidence)


def group_score(
    sets: Sequence[Sequence[RecordsLike]],
    *,
    seed: int = DEFAULT_SEED,
    resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
) -> Estimate:
    """Mean over test sets of the sets' scores, stratified bootstrap (records resampled per set; seeds too).

    Each set is its runs' records, one per seed, in the same seed order for every set.
    """
    return _compare([[(as_records(r), None) for r in runs] for runs in sets], seed, resamples, confidence)


def _seed_pairs(entry: Pair | list[Pair]) -> list[tuple[Records, Records]]:
    pairs = entry if isinstance(entry, list) else [entry]
    if not pairs or not all(isinstance(p, tuple) and len(p) == 2 for p in pairs):
        raise TypeError("a set is a (treated, base) tuple or a list of them, one per seed")
    return [(as_records(t), as_records(b)) for t, b in pairs]


@dataclass(frozen=True)
class _Stratum:
    """One test set of a comparison: per seed, the treated and base values on the records every run has."""

    treated: np.ndarray  # (seeds, n, m)
    base: np.ndarray | None  # (seeds, n, m), None for a score rather than a difference
    corpus_score: Scorer | None
    n_dropped: int

    @property
    def n(self) -> int:
        return self.treated.shape[1]

    def _delta(self, treated_sums: np.ndarray, base_sums: np.ndarray | None) -> np.ndarray:
        score = _score(treated_sums, self.n, self.corpus_score)
        return score if base_sums is None else score - _score(base_sums, self.n, self.corpus_score)

    def point(self) -> np.ndarray:
        """Per seed: the score, or treated − base, on all matched records. Shape (seeds,)."""
        base = None if self.base is None else self.base.sum(1)
        return self._delta(self.treated.sum(1), base)

    def resampled(self, counts: np.ndarray) -> np.ndarray:
        """Per resample (rows of record counts) and seed, shape (rows, seeds)."""
        treated = np.matmul(counts, self.treated).swapaxes(0, 1)  # (seeds, rows, m) -> (rows, seeds, m)
        base = None if self.base is None else np.matmul(counts, self.base).swapaxes(0, 1)
        return self._delta(treated, base)

    def flipped(self, masks: np.ndarray) -> np.ndarray:
        """treated − base with each masked record's two values swapped, shape (rows, seeds)."""
        swap = np.matmul(masks, self.base - self.treated).swapaxes(0, 1)
        return self._delta(self.treated.sum(1) + swap, self.base.sum(1) - swap)


def _stratum(runs: list[tuple[Records, Records | None]]) -> _Stratum:
    """Match every run of one set by record id; records missing from any run are dropped and counted."""
    sides = [r for pair in runs for r in pair if r is not None]
    scorers = {id(r.corpus_score) for r in sides}
    widths = {r.values.shape[1] for r in sides}
    if len(scorers) != 1 or len(widths) != 1:
        raise ValueError("the compared cells are scored by different metrics")
    common = set(sides[0].ids).intersection(*(r.ids for r in sides[1:]))
    union = set().union(*(r.ids for r in sides))
    if not common:
        raise ValueError("no record in common between the compared cells")
    order = sorted(common, key=lambda i: (str(i), type(i).__name__))  # results do not depend on row order

    def aligned(r: Records) -> np.ndarray:
        position = {rid: i for i, rid in enumerate(r.ids)}
        return r.values[[position[rid] for rid in order]]

    treated = np.stack([aligned(t) for t, _ in runs])
    base = None if runs[0][1] is None else np.stack([aligned(b) for _, b in runs])
    return _Stratum(treated, base, sides[0].corpus_score, len(union) - len(common))


def _compare(sets: list[list[tuple]], seed: int, resamples: int, confidence: float) -> Estimate:
    """The engine: mean over sets and seeds of scores or differences, bootstrap interval and sign-flip p."""
    if resamples < 1:
        raise ValueError("resamples: must be at least 1")
    strata = [_stratum(runs) for runs in sets]
    n_seeds = {len(runs) for runs in sets}
    if len(n_seeds) != 1:
        raise ValueError("every set needs the same number of seeds")
    seeds = n_seeds.pop()
    per_seed = np.mean([st.point() for st in strata], axis=0)
    estimate = float(per_seed.mean())
    replicates = _bootstrap(strata, seeds, seed, resamples)
    alpha = 1.0 - confidence
    low, high = (float(q) for q in np.quantile(replicates, [alpha / 2, 1 - alpha / 2]))
    paired = strata[0].base is not None
    method = ("paired " if paired else "") + "bootstrap over " + ("seeds and " if seeds > 1 else "") + "records"
    return Estimate(
        estimate,
        min(low, estimate),
        max(high, estimate),
        n=sum(st.n for st in strata),
        method=method + (" within sets" if len(strata) > 1 else ""),
        confidence=confidence,
        p_value=float(_sign_flip_p(strata, estimate, seed, resamples)) if paired else None,
        n_dropped=sum(st.n_dropped for st in strata),
        n_sets=len(strata),
        n_seeds=seeds,
        sd=float(np.std(per_seed, ddof=1)) if seeds > 1 else None,
        per_seed=tuple(float(x) for x in per_seed) if seeds > 1 else (),
    )


def _row_chunks(resamples: int, strata: list[_Stratum]) -> list[int]:
    size = max(1, min(resamples, _CHUNK_ELEMENTS // max(st.n for st in strata)))
    return [min(size, resamples - start) for start in range(0, resamples, size)]


def _counts(rng: np.random.Generator, n: int, rows: int) -> np.ndarray:
    """How often each of n records is drawn in each of `rows` resamples (n draws with replacement each)."""
    index = rng.integers(0, n, size=(rows, n)) + n * np.arange(rows)[:, None]
    return np.bincount(index.ravel(), minlength=rows * n).reshape(rows, n).astype(np.float64)


def _bootstrap(strata: list[_Stratum], seeds: int, seed: int, resamples: int) -> np.ndarray:
    """Replicates of the mean over sets and seeds: seeds resampled (when several), records within each set.

    Each set draws from its own stream, so sets are resampled independently and chunking changes nothing."""
    record_rngs = [np.random.default_rng([seed, 0, k]) for k in range(len(strata))]
    seed_rng = np.random.default_rng([seed, 1])
    out = []
    for rows in _row_chunks(resamples, strata):
        weights = _counts(seed_rng, seeds, rows) / seeds if seeds > 1 else np.ones((rows, 1))
        total = sum(
            (st.resampled(_counts(rng, st.n, rows)) * weights).sum(1)
            for st, rng in zip(strata, record_rngs, strict=True)
        )
        out.append(total / len(strata))
    return np.concatenate(out)


def _sign_flip_p(strata: list[_Stratum], observed: float, seed: int, resamples: int) -> float:
    """Two-sided p of a paired sign-flip permutation test: each record's treated and base values swapped at
    random (the same swap for every seed); exact over all 2^n swaps when that is no more than `resamples`."""
    total = sum(st.n for st in strata)
    if total < 60 and 2**total <= resamples:
        masks = ((np.arange(2**total)[:, None] >> np.arange(total)) & 1).astype(np.float64)
        bounds = np.cumsum([0] + [st.n for st in strata])
        parts = [st.flipped(masks[:, a:b]) for st, a, b in zip(strata, bounds[:-1], bounds[1:], strict=True)]
        null = sum(p.mean(1) for p in parts) / len(strata)
        return _two_sided(null, observed) / len(null)
    rngs = [np.random.default_rng([seed, 2, k]) for k in range(len(strata))]
    chunks = []
    for rows in _row_chunks(resamples, strata):
        masks = [rng.integers(0, 2, size=(rows, st.n)).astype(np.float64) for st, rng in zip(strata, rngs, strict=True)]
        chunks.append(sum(st.flipped(m).mean(1) for st, m in zip(strata, masks, strict=True)) / len(strata))
    null = np.concatenate(chunks)
    return (_two_sided(null, observed) + 1) / (len(null) + 1)  # the observed split counts as one draw


def _two_sided(null: np.ndarray, observed: float) -> int:
    """How many null statistics are at least as far from 0 as the observed one (float ties count)."""
    return int(np.count_nonzero(np.abs(null) >= abs(observed) - 1e-9 * max(1.0, abs(observed))))


# ---------------------------------------------------------------- correlation


@dataclass(frozen=True)
class Correlation:
    """Pearson's r with its Fisher-z interval (None below 4 points) and t-test p-value; r None if undefined."""

    r: float | None
    low: float | None
    high: float | None
    n: int
    p_value: float | None
    confidence: float = CONFIDENCE

    @property
    def excludes_zero(self) -> bool:
        return self.low is not None and (self.low > 0 or self.high < 0)


def correlation(x: Sequence[float], y: Sequence[float], confidence: float = CONFIDENCE) -> Correlation:
    """Pearson's r (scipy) with its Fisher z interval: tanh(atanh(r) ± z_(1-α/2) / sqrt(n − 3)), n >= 4."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError("correlation: x and y need the same length")
    n = len(x)
    if n < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return Correlation(None, None, None, n, None, confidence)
    result = sps.pearsonr(x, y)
    r = float(np.clip(result.statistic, -1.0, 1.0))
    if n < 4:
        return Correlation(r, None, None, n, float(result.pvalue), confidence)
    z_crit = sps.norm.ppf(1 - (1 - confidence) / 2)
    with np.errstate(divide="ignore"):
        z = np.arctanh(r)
    half = z_crit / math.sqrt(n - 3)
    return Correlation(r, float(np.tanh(z - half)), float(np.tanh(z + half)), n, float(result.pvalue), confidence)


def is_finding(c: Correlation, min_points: int = 5) -> bool:
    """Whether a correlation may be printed as a finding: at least `min_points` points, interval excludes 0."""
    return c.n >= min_points and c.excludes_zero


# ---------------------------------------------------------------- wins / losses and the headline


def wins_losses(differences: Iterable[Estimate]) -> tuple[int, int, int]:
    """(wins, losses, neither): cells whose interval lies above 0, below 0, or contains it."""
    diffs = list(differences)
    wins = sum(d.low > 0 for d in diffs)
    losses = sum(d.high < 0 for d in diffs)
    return wins, losses, len(diffs) - wins - losses


@dataclass(frozen=True)
class Headline:
    """One answer: the mean difference over matched cells with its interval, and per-cell wins / losses."""

    label: str
    difference: Estimate | None
    wins: int
    losses: int
    neither: int

    @property
    def n_cells(self) -> int:
        return self.wins + self.losses + self.neither


def headline(
    label: str,
    cells: Sequence[Pair | list[Pair]],
    *,
    seed: int = DEFAULT_SEED,
    resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
) -> Headline:
    """`label` (e.g. "FTICL − FT") over matched cells: stratified-bootstrap mean, per-cell paired wins / losses.

    Each cell is a (treated, base) tuple on one test set, or a list of them, one per seed.
    """
    options = {"seed": seed, "resamples": resamples, "confidence": confidence}
    per_cell = [_compare([_seed_pairs(c)], **options) for c in cells]
    overall = group_difference(list(cells), **options) if cells else None
    return Headline(label, overall, *wins_losses(per_cell))


# ---------------------------------------------------------------- degenerate outputs


@dataclass(frozen=True)
class ClassificationFlags:
    """Signs that a classification cell's score reflects a collapsed predictor, not the task."""

    majority_label: str
    majority_rate: float  # % of gold labels that are the most frequent label
    pred_share: dict[str, float]  # % of predictions per label
    constant: bool  # every prediction is the same label
    near_majority: bool  # the majority rate lies within the score's interval
    n: int

    @property
    def distrust(self) -> bool:
        return self.constant or self.near_majority


def classification_flags(
    predictions: Sequence[str], golds: Sequence[str], labels: Sequence[str], interval: Estimate | None = None
) -> ClassificationFlags:
    """Majority-class rate, predicted-label shares, constant predictions, and whether the majority rate lies
    within the accuracy's interval (Clopper-Pearson from the predictions unless `interval` is given)."""
    if not golds or len(predictions) != len(golds):
        raise ValueError(f"{len(predictions)} predictions for {len(golds)} gold labels")
    counts = Counter(golds)
    order = {lab: i for i, lab in enumerate(labels)}
    majority = max(counts, key=lambda g: (counts[g], -order.get(g, len(order)), str(g)))
    rate = 100.0 * counts[majority] / len(golds)
    if interval is None:
        interval = binomial_interval([100.0 if p == g else 0.0 for p, g in zip(predictions, golds, strict=True)])
    return ClassificationFlags(
        majority_label=majority,
        majority_rate=rate,
        pred_share=M.pred_share(list(predictions), list(labels)),
        constant=len(set(predictions)) == 1,
        near_majority=interval.low <= rate <= interval.high,
        n=len(golds),
    )


@dataclass(frozen=True)
class GenerationFlags:
    """Shares (%) of a generation cell's outputs that are empty, or just a label word of another task."""

    empty_share: float
    label_word_share: float
    label_words: dict[str, int] = field(default_factory=dict)  # label word -> outputs that are just that word
    n: int = 0


def normalize_words(text: str) -> str:
    """Case-folded, punctuation removed, whitespace collapsed: "  Positive. " -> "positive"."""
    kept = "".join(" " if unicodedata.category(ch).startswith("P") or ch in string.punctuation else ch for ch in text)
    return " ".join(kept.casefold().split())


def generation_flags(outputs: Sequence[str], label_words: Iterable[str]) -> GenerationFlags:
    """Share of outputs with no words left after normalisation (`normalize_words` of the first paragraph), and
    of outputs that are exactly one of `label_words` after the same normalisation."""
    if not outputs:
        raise ValueError("generation flags: no outputs")
    words = {normalize_words(w): w for w in label_words}
    normal = [normalize_words(M.first_paragraph(o)) for o in outputs]
    seen = Counter(words[t] for t in normal if t and t in words)
    n = len(outputs)
    return GenerationFlags(
        empty_share=100.0 * sum(not t for t in normal) / n,
        label_word_share=100.0 * sum(seen.values()) / n,
        label_words=dict(sorted(seen.items())),
        n=n,
    )


# ---------------------------------------------------------------- formatting


def _number(x: float, digits: int, sign: bool = False, minus: str = "-") -> str:
    """7.5, or +7.5 / -7.5 with `sign`; a value that rounds to zero never prints as -0.0."""
    text = f"{x:+.{digits}f}"
    if float(text) == 0 or (not sign and text[0] == "+"):
        text = ("+" if sign else "") + text[1:]
    return text.replace("-", minus)


def mark(e: Estimate | Correlation | None) -> str:
    """MARK when the interval excludes 0, else ""."""
    return MARK if e is not None and e.excludes_zero else ""


def format_cell(score: Estimate | None, delta: Estimate | None = None, digits: int = 1) -> str:
    """A table cell: `92.5 ±4.1 (+7.5 ±5.0)*`. ± is the 95% interval's half-width; an asymmetric interval is
    shown by its larger half ([low, high] stay in the Estimate for CSV and plots). `*` (MARK) when the delta's
    interval excludes 0; blank without a score. Signs are ASCII hyphen-minus."""
    if score is None:
        return ""
    text = f"{_number(score.estimate, digits)} ±{score.half_width:.{digits}f}"
    if delta is not None:
        text += f" ({_number(delta.estimate, digits, sign=True)} ±{delta.half_width:.{digits}f}){mark(delta)}"
    return text


def format_interval(e: Estimate, digits: int = 1, minus: str = "−") -> str:
    """`+2.6 [−0.4, +5.6]`: a signed estimate with its interval (typographic minus by default)."""
    low, high = _number(e.low, digits, True, minus), _number(e.high, digits, True, minus)
    return f"{_number(e.estimate, digits, True, minus)} [{low}, {high}]"


def format_headline(h: Headline, digits: int = 1) -> str:
    """`FTICL − FT = +2.6 [−0.4, +5.6] points, wins 7 / losses 2 of 9 matched cells`."""
    if h.difference is None:
        return f"{h.label}: no matched cells"
    cells = "cell" if h.n_cells == 1 else "cells"
    return (
        f"{h.label} = {format_interval(h.difference, digits)} points, "
        f"wins {h.wins} / losses {h.losses} of {h.n_cells} matched {cells}"
    )
