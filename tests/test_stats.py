"""ftgen.stats against independent references: scipy's exact binomial interval, permutation test, paired t-test
and Pearson interval; normal-approximation intervals on large n; sacrebleu's own bootstrap; hand computations."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats as sps

from ftgen import metrics as M
from ftgen import stats as S

Z95 = sps.norm.ppf(0.975)


def _normal_half_width(values: np.ndarray) -> float:
    return Z95 * values.std(ddof=1) / math.sqrt(len(values))


# ---------------------------------------------------------------- one cell


@pytest.mark.parametrize(("k", "n"), [(0, 1), (1, 1), (0, 40), (40, 40), (17, 40), (123, 250), (3, 7), (249, 250)])
@pytest.mark.parametrize("confidence", [0.95, 0.9])
def test_clopper_pearson_matches_scipy_binomtest(k, n, confidence):
    reference = sps.binomtest(k, n).proportion_ci(confidence_level=confidence, method="exact")
    scores = [100.0] * k + [0.0] * (n - k)
    np.random.default_rng(n).shuffle(scores)
    for given in (scores, [s == 100.0 for s in scores], {f"r{i}": s for i, s in enumerate(scores)}):
        e = S.binomial_interval(given, confidence)
        assert (e.estimate, e.n, e.method) == (pytest.approx(100 * k / n), n, "clopper-pearson")
        assert e.low == pytest.approx(100 * reference.low, abs=1e-9)
        assert e.high == pytest.approx(100 * reference.high, abs=1e-9)
    assert S.score_interval("accuracy", scores, confidence=confidence) == S.binomial_interval(scores, confidence)


def test_binomial_interval_refuses_scores_that_are_not_0_or_100():
    with pytest.raises(ValueError, match="0 or 100"):
        S.binomial_interval([100.0, 50.0])
    with pytest.raises(ValueError, match="0 or 100"):
        S.binomial_interval([1, 0, 1])  # 0/1 would silently read as 1 %
    with pytest.raises(ValueError, match="no records"):
        S.binomial_interval([])


def test_bootstrap_interval_matches_the_normal_approximation_on_large_n():
    values = 100 * np.random.default_rng(0).beta(2, 5, size=3000)  # Rouge-like per-record scores, skewed
    e = S.bootstrap_interval(values)
    half = _normal_half_width(values)
    assert e.estimate == pytest.approx(values.mean())
    assert e.low == pytest.approx(values.mean() - half, abs=0.08 * half)
    assert e.high == pytest.approx(values.mean() + half, abs=0.08 * half)
    assert (e.n, e.method, e.p_value) == (3000, "bootstrap over records", None)
    assert S.score_interval("rouge_l", values) == e


def test_bleu_bootstrap_recomputes_corpus_bleu_like_sacrebleu(paper_data):
    """The BLEU interval against sacrebleu's own bootstrap (its seed, its resamples) on real summaries."""
    from sacrebleu.metrics import BLEU

    refs = [r["output"] for r in json.loads((paper_data / "summary" / "xsum_test_500.json").read_text())[:300]]
    rng = np.random.default_rng(3)
    preds = [" ".join(w for w in ref.split() if rng.random() > 0.3) for ref in refs]  # outputs missing words
    records = S.cell_records("generation", "bleu", range(300), preds, refs)
    e = S.bootstrap_interval(records)
    theirs = BLEU().corpus_score(preds, [refs], n_bootstrap=1000)
    assert e.estimate == pytest.approx(theirs.score) == pytest.approx(M.bleu(preds, refs))
    assert (e.high - e.low) / 2 == pytest.approx(theirs._ci, rel=0.15)  # their CI: half the percentile range
    assert e.low < e.estimate < e.high


def test_every_result_is_seeded_and_reruns_give_the_same_numbers():
    rng = np.random.default_rng(1)
    base = rng.uniform(0, 100, 120)
    tuned = base + rng.normal(1, 8, 120)
    assert S.bootstrap_interval(tuned) == S.bootstrap_interval(tuned)
    assert S.paired_difference(tuned, base, seed=5) == S.paired_difference(tuned, base, seed=5)
    other = S.paired_difference(tuned, base, seed=6)
    assert (other.low, other.high) != (
        S.paired_difference(tuned, base, seed=5).low,
        S.paired_difference(tuned, base, seed=5).high,
    )


def test_reruns_in_new_processes_print_the_same_numbers_whatever_the_hash_seed():
    """String ids come out of sets in a per-process order; the results must not depend on it."""
    code = (
        "from ftgen import stats as S\n"
        "t = {f'r{i}': float(i * 37 % 100) for i in range(50)}\n"
        "b = {f'r{i}': float(i * 53 % 100) for i in range(50)}\n"
        "print(S.paired_difference(t, b), S.group_difference([(t, b), (b, t)]))\n"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": hash_seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for hash_seed in ("1", "2")
    }
    assert len(outputs) == 1 and "Estimate" in outputs.pop()


# ---------------------------------------------------------------- paired differences


def _paired_statistic(x, y, axis):
    return np.mean(x - y, axis=axis)


@pytest.mark.parametrize("data_seed", [0, 1, 2])
def test_paired_p_value_equals_scipy_exact_permutation_test_on_small_n(data_seed):
    rng = np.random.default_rng(data_seed)
    base = rng.uniform(0, 100, 10)
    tuned = base + rng.normal(8, 15, 10)
    reference = sps.permutation_test(
        (tuned, base), _paired_statistic, permutation_type="samples", n_resamples=np.inf, alternative="two-sided"
    )
    e = S.paired_difference(tuned, base)  # 2^10 <= 2000 resamples: enumerated exactly, like scipy
    assert e.estimate == pytest.approx(np.mean(tuned - base))
    assert e.p_value == pytest.approx(reference.pvalue, abs=1e-12)


def test_paired_p_value_on_0_100_accuracy_with_ties_equals_scipy():
    tuned = np.array([100, 100, 0, 100, 100, 0, 100, 100, 100, 0, 100], dtype=float)
    base = np.array([0, 100, 0, 0, 100, 100, 0, 100, 0, 0, 100], dtype=float)
    reference = sps.permutation_test(
        (tuned, base), _paired_statistic, permutation_type="samples", n_resamples=np.inf, alternative="two-sided"
    )
    assert S.paired_difference(tuned, base, resamples=4096).p_value == pytest.approx(reference.pvalue, abs=1e-12)


def test_paired_difference_on_large_n_agrees_with_the_paired_t_test():
    rng = np.random.default_rng(4)
    base = rng.uniform(0, 100, 1500)
    tuned = base + rng.normal(0.6, 12, 1500)
    reference = sps.ttest_rel(tuned, base)
    ci = reference.confidence_interval(0.95)
    e = S.paired_difference(tuned, base)
    half = (ci.high - ci.low) / 2
    assert e.estimate == pytest.approx(np.mean(tuned - base))
    assert e.low == pytest.approx(ci.low, abs=0.08 * half) and e.high == pytest.approx(ci.high, abs=0.08 * half)
    assert 0.01 < reference.pvalue < 0.5
    assert e.p_value == pytest.approx(reference.pvalue, abs=0.03)  # Monte Carlo sign flips (2000) vs t
    assert (e.n, e.n_dropped, e.method) == (1500, 0, "paired bootstrap over records")


def test_a_sampled_p_value_counts_the_observed_split_like_scipy():
    """Beyond 2^n <= resamples the p-value is sampled: (hits + 1) / (resamples + 1), never 0."""
    rng = np.random.default_rng(17)
    base = rng.uniform(0, 50, 200)
    e = S.paired_difference(base + 30, base, resamples=999)
    assert e.p_value == pytest.approx(1 / 1000)


def test_records_are_matched_by_id_and_the_unmatched_are_dropped_and_counted():
    rng = np.random.default_rng(5)
    ids = [f"rec{i}" for i in range(60)]
    tuned = dict(zip(ids, rng.uniform(0, 100, 60), strict=True))
    base = dict(zip(ids, rng.uniform(0, 100, 60), strict=True))
    common = ids[5:55]
    exact = S.paired_difference({i: tuned[i] for i in common}, {i: base[i] for i in common})
    shuffled = list(reversed(ids[5:]))  # tuned misses rec0-4, base misses rec55-59, rows in another order
    e = S.paired_difference({i: tuned[i] for i in shuffled}, {i: base[i] for i in ids[:55]})
    assert e.estimate == pytest.approx(np.mean([tuned[i] - base[i] for i in common]))
    assert (e.n, e.n_dropped) == (50, 10)
    assert (e.low, e.high, e.p_value) == (exact.low, exact.high, exact.p_value)  # row order does not matter
    with pytest.raises(ValueError, match="no record in common"):
        S.paired_difference({"a": 1.0}, {"b": 1.0})


def test_a_difference_of_identical_outputs_is_exactly_zero_with_p_1():
    values = np.random.default_rng(6).uniform(0, 100, 80)
    e = S.paired_difference(values, values)
    assert (e.estimate, e.low, e.high, e.p_value) == (0.0, 0.0, 0.0, 1.0)


def test_a_bleu_difference_is_recomputed_on_paired_resamples():
    refs = ["the cat sat on the mat", "a dog barked at night", "it rained in the city", "the market fell today"] * 10
    good = list(refs)
    bad = [" ".join(r.split()[:2]) for r in refs]
    ids = range(len(refs))
    better = S.cell_records("generation", "bleu", ids, good, refs)
    worse = S.cell_records("generation", "bleu", ids, bad, refs)
    e = S.paired_difference(better, worse)
    assert e.estimate == pytest.approx(M.bleu(good, refs) - M.bleu(bad, refs))
    assert e.excludes_zero and e.p_value < 0.01
    with pytest.raises(ValueError, match="different metrics"):
        S.paired_difference(better, M.per_record_scores("generation", "rouge_l", bad, refs))


# ---------------------------------------------------------------- groups of test sets


def _set(rng, n, effect, noise=10.0):
    base = rng.uniform(0, 100, n)
    ids = [f"id{i}" for i in range(n)]
    return dict(zip(ids, base + rng.normal(effect, noise, n), strict=True)), dict(zip(ids, base, strict=True))


def test_group_mean_is_the_mean_of_per_set_deltas_with_a_stratified_interval():
    rng = np.random.default_rng(7)
    sets = [_set(rng, 800, 2.0, 10), _set(rng, 1500, -1.0, 20), _set(rng, 2500, 0.5, 5)]
    diffs = [np.array([t[i] - b[i] for i in t]) for t, b in sets]
    e = S.group_difference(sets)
    assert e.estimate == pytest.approx(np.mean([d.mean() for d in diffs]))
    half = Z95 * math.sqrt(sum(d.var(ddof=1) / len(d) for d in diffs)) / len(diffs)  # independent strata
    assert e.low == pytest.approx(e.estimate - half, abs=0.1 * half)
    assert e.high == pytest.approx(e.estimate + half, abs=0.1 * half)
    assert (e.n_sets, e.n, e.method) == (3, 4800, "paired bootstrap over records within sets")
    assert 0 <= e.p_value <= 1


def test_group_score_is_the_mean_of_set_scores_with_a_stratified_interval():
    """A group's mean score (the WiSE-FT table's score columns): independent strata, so the half-width is the
    normal approximation sqrt(sum var_i / n_i) / k on large n; one set is that set's bootstrap interval."""
    rng = np.random.default_rng(17)
    sets = [rng.uniform(0, 100, 900), rng.binomial(1, 0.3, 1600) * 100.0, rng.uniform(20, 60, 2500)]
    e = S.group_score([[x] for x in sets])
    assert e.estimate == pytest.approx(np.mean([x.mean() for x in sets]))
    half = Z95 * math.sqrt(sum(x.var(ddof=1) / len(x) for x in sets)) / len(sets)
    assert e.low == pytest.approx(e.estimate - half, abs=0.1 * half)
    assert e.high == pytest.approx(e.estimate + half, abs=0.1 * half)
    assert (e.n_sets, e.n, e.p_value, e.method) == (3, 5000, None, "bootstrap over records within sets")
    assert S.group_score([[sets[0]]]) == S.bootstrap_interval(sets[0])
    two_seeds = S.group_score([[sets[0], sets[0] + 10.0]])
    assert two_seeds == S.seeds_score([sets[0], sets[0] + 10.0]) and two_seeds.sd == pytest.approx(10 / 2**0.5)


def test_group_mean_is_blank_when_a_set_is_missing_unless_the_caller_allows_it():
    rng = np.random.default_rng(8)
    a, b = _set(rng, 50, 1.0), _set(rng, 70, 3.0)
    assert S.group_difference([a, None, b]) is None
    partial = S.group_difference([a, None, b], require_all=False)
    assert partial == S.group_difference([a, b]) and partial.n_sets == 2
    assert S.group_difference([None], require_all=False) is None and S.group_difference([]) is None
    assert S.group_difference([a]) == S.paired_difference(*a)  # a group of one set is the paired difference


# ---------------------------------------------------------------- several seeds


def test_one_seed_reduces_the_hierarchical_bootstrap_to_the_paired_and_stratified_ones():
    rng = np.random.default_rng(9)
    a, b = _set(rng, 90, 1.5), _set(rng, 40, -2.0)
    assert S.seeds_difference([a]) == S.paired_difference(*a)
    assert S.group_difference([[a], [b]]) == S.group_difference([a, b])
    assert S.seeds_score([a[0]]) == S.bootstrap_interval(a[0])


def test_several_seeds_give_mean_and_sd_across_seeds():
    rng = np.random.default_rng(10)
    base = dict(zip(range(200), rng.uniform(0, 100, 200), strict=True))
    runs = [({i: v + rng.normal(shift, 5) for i, v in base.items()}, base) for shift in (1.0, 3.0, 2.5)]
    per_seed = [S.paired_difference(*pair).estimate for pair in runs]
    e = S.seeds_difference(runs)
    assert e.estimate == pytest.approx(np.mean(per_seed))
    assert e.sd == pytest.approx(np.std(per_seed, ddof=1))
    assert e.per_seed == pytest.approx(per_seed)
    assert (e.n_seeds, e.n, e.method) == (3, 200, "paired bootstrap over seeds and records")
    scores = S.seeds_score([t for t, _ in runs])
    assert scores.estimate == pytest.approx(np.mean([np.mean(list(t.values())) for t, _ in runs]))


def test_the_seed_part_of_the_interval_matches_a_normal_approximation_over_seeds():
    """Per-record deltas constant within a seed: only seeds vary, so the interval is that of the seed mean."""
    shifts = np.random.default_rng(11).normal(2.0, 3.0, 400)
    base = {f"r{i}": 50.0 for i in range(4)}
    runs = [({i: 50.0 + s for i in base}, base) for s in shifts]
    e = S.seeds_difference(runs)
    half = _normal_half_width(shifts)
    assert e.estimate == pytest.approx(shifts.mean())
    assert e.low == pytest.approx(shifts.mean() - half, abs=0.1 * half)
    assert e.high == pytest.approx(shifts.mean() + half, abs=0.1 * half)


def test_records_are_resampled_once_for_all_seeds_because_seeds_share_the_test_records():
    """delta(seed, record) = seed effect + record effect: the record effect does not average out over seeds,
    so the interval must carry var(record)/n in full (independent per-seed resampling would divide it by S)."""
    rng = np.random.default_rng(12)
    n, seeds = 300, 40
    record_effect = rng.normal(0, 20, n)
    seed_effect = rng.normal(0, 4, seeds)
    base = {i: 0.0 for i in range(n)}
    runs = [({i: seed_effect[s] + record_effect[i] + rng.normal(0, 1) for i in range(n)}, base) for s in range(seeds)]
    e = S.seeds_difference(runs)
    half = Z95 * math.sqrt(seed_effect.var(ddof=1) / seeds + record_effect.var(ddof=1) / n)
    assert (e.high - e.low) / 2 == pytest.approx(half, rel=0.15)


def test_sets_must_have_the_same_number_of_seeds():
    rng = np.random.default_rng(13)
    a, b = _set(rng, 20, 1.0), _set(rng, 20, 1.0)
    with pytest.raises(ValueError, match="same number of seeds"):
        S.group_difference([[a, a], [b]])
    with pytest.raises(TypeError, match="treated, base"):
        S.group_difference([[a[0], a[1]]])  # a list is read as seeds: its items must be (treated, base) pairs


def test_large_sets_are_resampled_in_chunks_with_the_same_result(monkeypatch):
    rng = np.random.default_rng(14)
    a, b = _set(rng, 300, 1.0), _set(rng, 200, 2.0)
    sets = [[a, a], [b, b]]
    whole = S.group_difference(sets, resamples=500)
    monkeypatch.setattr(S, "_CHUNK_ELEMENTS", 300 * 7)  # 7 rows at a time
    chunked = S.group_difference(sets, resamples=500)
    assert (chunked.low, chunked.high) == (pytest.approx(whole.low, abs=1e-9), pytest.approx(whole.high, abs=1e-9))
    assert (chunked.estimate, chunked.p_value) == (whole.estimate, whole.p_value)


# ---------------------------------------------------------------- correlation


def test_fisher_z_interval_by_hand_and_against_scipy():
    x = [0.2, 1.1, 2.3, 2.9, 4.2, 5.1, 6.3, 7.0]
    y = [1.0, 0.7, 2.9, 2.2, 4.8, 3.9, 7.1, 6.0]
    r = np.corrcoef(x, y)[0, 1]
    z, se = 0.5 * math.log((1 + r) / (1 - r)), 1 / math.sqrt(len(x) - 3)
    c = S.correlation(x, y)
    assert c.r == pytest.approx(r)
    assert (c.low, c.high) == (pytest.approx(math.tanh(z - Z95 * se)), pytest.approx(math.tanh(z + Z95 * se)))
    reference = sps.pearsonr(x, y)
    ci = reference.confidence_interval(0.95)
    assert (c.low, c.high) == (pytest.approx(ci.low), pytest.approx(ci.high))
    assert c.p_value == pytest.approx(reference.pvalue)
    c90 = S.correlation(x, y, confidence=0.9)
    ci90 = reference.confidence_interval(0.9)
    assert (c90.low, c90.high) == (pytest.approx(ci90.low), pytest.approx(ci90.high))


def test_a_correlation_is_a_finding_only_from_5_points_with_an_interval_excluding_0():
    three = S.correlation([1, 2, 3], [1, 2, 4])
    assert three.r is not None and (three.low, three.high) == (None, None) and not S.is_finding(three)
    four = S.correlation([1, 2, 3, 4], [1.0, 2.0, 3.0, 4.1])  # nearly perfect, but only 4 points
    assert four.excludes_zero and not S.is_finding(four)
    five = S.correlation([1, 2, 3, 4, 5], [1.0, 2.0, 3.1, 4.0, 5.2])
    assert S.is_finding(five)
    noise = np.random.default_rng(15).normal(size=(2, 30))
    assert not S.is_finding(S.correlation(noise[0], noise[1]))
    assert S.correlation([1, 1, 1, 1, 1], [1, 2, 3, 4, 5]).r is None  # constant input: r undefined
    assert S.correlation([1], [2]).r is None


# ---------------------------------------------------------------- wins / losses, headline, formatting


def _estimate(value, low, high, **extra):
    return S.Estimate(value, low, high, n=100, method="test", **extra)


def test_headline_reads_as_the_issue_asks():
    h = S.Headline("FTICL − FT", _estimate(2.6, -0.4, 5.6), wins=7, losses=2, neither=0)
    assert S.format_headline(h) == "FTICL − FT = +2.6 [−0.4, +5.6] points, wins 7 / losses 2 of 9 matched cells"
    assert S.format_headline(S.Headline("FT − base", None, 0, 0, 0)) == "FT − base: no matched cells"
    one = S.Headline("FT − base", _estimate(-3.0, -4.0, -2.0), wins=0, losses=1, neither=0)
    assert S.format_headline(one) == "FT − base = −3.0 [−4.0, −2.0] points, wins 0 / losses 1 of 1 matched cell"


def test_a_win_or_a_loss_needs_an_interval_that_excludes_0():
    cells = [
        _estimate(3.0, 0.5, 5.0),
        _estimate(3.0, -0.5, 6.0),
        _estimate(-1.0, -2.0, -0.1),
        _estimate(-1.0, -2.0, 0.0),
    ]
    assert S.wins_losses(cells) == (1, 1, 2)
    assert S.wins_losses([]) == (0, 0, 0)


def test_headline_counts_significant_wins_and_losses_over_matched_cells():
    rng = np.random.default_rng(16)
    cells = [_set(rng, 400, 8.0), _set(rng, 400, -8.0), _set(rng, 400, 0.0), _set(rng, 400, 9.0)]
    h = S.headline("FTICL − FT", cells)
    assert (h.wins, h.losses, h.neither, h.n_cells) == (2, 1, 1, 4)
    assert h.difference == S.group_difference(cells)
    per_cell = [S.paired_difference(*c) for c in cells]
    assert S.wins_losses(per_cell) == (2, 1, 1)
    assert S.headline("x", []).difference is None


def test_table_cell_shows_the_larger_half_of_the_interval_and_marks_deltas_excluding_0():
    score = _estimate(92.5, 88.4, 96.0)  # halves 4.1 and 3.5: the larger is shown
    assert S.format_cell(score, _estimate(7.5, 2.5, 12.0)) == "92.5 ±4.1 (+7.5 ±5.0)*"
    assert S.format_cell(score, _estimate(7.5, -0.5, 12.0)) == "92.5 ±4.1 (+7.5 ±8.0)"
    assert S.format_cell(score, _estimate(-0.04, -1.0, 1.0)) == "92.5 ±4.1 (+0.0 ±1.0)"  # never "-0.0"
    assert S.format_cell(score, _estimate(-2.0, -3.0, -1.0)) == "92.5 ±4.1 (-2.0 ±1.0)*"
    assert S.format_cell(score) == "92.5 ±4.1" and S.format_cell(None) == ""
    assert S.mark(_estimate(1.0, 0.1, 2.0)) == S.MARK and S.mark(_estimate(1.0, 0.0, 2.0)) == ""
    assert S.format_interval(_estimate(2.6, -0.4, 5.6), minus="-") == "+2.6 [-0.4, +5.6]"


# ---------------------------------------------------------------- degenerate outputs


def test_a_constant_classifier_at_the_majority_rate_is_flagged():
    golds = ["no"] * 132 + ["yes"] * 118  # 52.8 % "no", as on the paper-scale paws cells
    flags = S.classification_flags(["no"] * 250, golds, ["yes", "no"])
    assert (flags.majority_label, flags.majority_rate) == ("no", pytest.approx(52.8))
    assert flags.pred_share == {"yes": 0.0, "no": 100.0}
    assert flags.constant and flags.near_majority and flags.distrust and flags.n == 250
    good = ["no"] * 120 + ["yes"] * 12 + ["yes"] * 100 + ["no"] * 18  # 88 % accurate
    ok = S.classification_flags(good, golds, ["yes", "no"])
    assert not ok.constant and not ok.near_majority and not ok.distrust


def test_near_majority_uses_the_given_interval_and_ties_follow_the_label_order():
    golds = ["a", "b", "a", "b"]
    flags = S.classification_flags(["a", "a", "b", "b"], golds, ["b", "a"], interval=_estimate(50.0, 45.0, 55.0))
    assert flags.majority_label == "b" and flags.near_majority and not flags.constant
    narrow = S.classification_flags(["a", "a", "b", "b"], golds, ["b", "a"], interval=_estimate(60.0, 55.0, 65.0))
    assert not narrow.near_majority


def test_generation_flags_count_empty_outputs_and_bare_label_words():
    outputs = ["", "   ", "Positive.", "NO!", "The film is positive overall.", "yes\n\nThen more text", "...", "Nope"]
    flags = S.generation_flags(outputs, ["positive", "negative", "yes", "no"])
    assert flags.empty_share == pytest.approx(100 * 3 / 8)  # "", "   ", "..." have no word
    assert flags.label_word_share == pytest.approx(100 * 3 / 8)  # Positive. / NO! / yes (first paragraph)
    assert flags.label_words == {"no": 1, "positive": 1, "yes": 1} and flags.n == 8
    assert S.normalize_words("  Not_Entailment ,\t") == S.normalize_words("not entailment") == "not entailment"


# ---------------------------------------------------------------- from stored predictions


def test_cell_records_score_like_the_metrics_module():
    preds, golds = ["yes", "no", "no"], ["yes", "yes", "no"]
    acc = S.cell_records("classification", "accuracy", ["a", "b", "c"], preds, golds)
    assert acc.score() == pytest.approx(M.accuracy(preds, golds))
    outputs, refs = ["sat the cat\n\nmore", "a dog"], ["the cat sat", "the dog barked"]
    rouge = S.cell_records("generation", "rouge_l", ["a", "b"], outputs, refs)
    assert rouge.score() == pytest.approx(M.generation_metrics(outputs, refs)["rouge_l"])
    bleu = S.cell_records("generation", "bleu", ["a", "b"], outputs, refs)
    assert bleu.score() == pytest.approx(M.generation_metrics(outputs, refs)["bleu"])
    with pytest.raises(ValueError, match="duplicates"):
        S.Records(("a", "a"), [1.0, 2.0])
