"""Property tests (hypothesis) of ftgen.stats: what must hold for every input, not just the hand-picked ones."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from ftgen import stats as S

FAST = {"resamples": 300}  # fewer resamples keep the properties quick; they hold for any number
scores = st.lists(st.floats(0, 100, allow_nan=False), min_size=1, max_size=40)
correct = st.lists(st.sampled_from([0.0, 100.0]), min_size=1, max_size=60)
seeds = st.integers(0, 2**31 - 1)


@st.composite
def paired(draw, min_size=1, max_size=40):
    n = draw(st.integers(min_size, max_size))
    pair = st.lists(st.floats(0, 100, allow_nan=False), min_size=n, max_size=n)
    return np.array(draw(pair)), np.array(draw(pair))


@settings(max_examples=60, deadline=None)
@given(values=correct)
def test_accuracy_intervals_contain_the_estimate_and_stay_within_0_100(values):
    for e in (S.binomial_interval(values), S.bootstrap_interval(values, **FAST)):
        assert 0.0 <= e.low <= e.estimate <= e.high <= 100.0


@settings(max_examples=60, deadline=None)
@given(values=scores, seed=seeds)
def test_bootstrap_interval_contains_the_mean_and_lies_within_the_data(values, seed):
    e = S.bootstrap_interval(values, seed=seed, **FAST)
    assert min(values) - 1e-9 <= e.low <= e.estimate <= e.high <= max(values) + 1e-9
    assert e.estimate == np.mean(values) or abs(e.estimate - np.mean(values)) < 1e-9


@settings(max_examples=40, deadline=None)
@given(k=st.integers(0, 50), extra=st.integers(0, 50))
def test_clopper_pearson_widens_with_less_data(k, extra):
    n = k + extra
    if n == 0:
        return
    small = S.binomial_interval([100.0] * k + [0.0] * extra)
    large = S.binomial_interval([100.0] * (4 * k) + [0.0] * (4 * extra))  # same rate, 4x the records
    assert small.high - small.low > large.high - large.low


@settings(max_examples=40, deadline=None)
@given(values=scores)
def test_bootstrap_widens_with_less_data(values):
    small = S.bootstrap_interval(values, **FAST)
    large = S.bootstrap_interval(values * 4, **FAST)  # same distribution, 4x the records
    assert small.high - small.low >= large.high - large.low - 1e-9


@settings(max_examples=60, deadline=None)
@given(pair=paired(), seed=seeds)
def test_a_paired_difference_is_antisymmetric_with_a_p_value_in_0_1(pair, seed):
    tuned, base = pair
    forward = S.paired_difference(tuned, base, seed=seed, **FAST)
    backward = S.paired_difference(base, tuned, seed=seed, **FAST)
    assert 0.0 < forward.p_value <= 1.0 and forward.p_value == backward.p_value
    assert forward.low <= forward.estimate <= forward.high
    assert abs(forward.estimate + backward.estimate) < 1e-9
    assert abs(forward.low + backward.high) < 1e-7 and abs(forward.high + backward.low) < 1e-7


@settings(max_examples=30, deadline=None)
@given(sets=st.lists(paired(min_size=2, max_size=15), min_size=1, max_size=4), seed=seeds)
def test_a_group_mean_is_the_mean_of_its_per_set_differences(sets, seed):
    group = S.group_difference([(t, b) for t, b in sets], seed=seed, **FAST)
    per_set = [S.paired_difference(t, b, **FAST).estimate for t, b in sets]
    assert abs(group.estimate - np.mean(per_set)) < 1e-9
    assert group.n_sets == len(sets) and group.n == sum(len(t) for t, _ in sets)
    assert group.low <= group.estimate <= group.high and 0.0 < group.p_value <= 1.0
    assert S.group_difference([*[(t, b) for t, b in sets], None]) is None


@settings(max_examples=30, deadline=None)
@given(runs=st.lists(paired(min_size=3, max_size=3), min_size=1, max_size=5))
def test_seeds_give_mean_and_sd_of_the_per_seed_differences(runs):
    ids = ["a", "b", "c"]
    pairs = [(dict(zip(ids, t, strict=True)), dict(zip(ids, b, strict=True))) for t, b in runs]
    e = S.seeds_difference(pairs, **FAST)
    per_seed = [np.mean(t - b) for t, b in runs]
    assert abs(e.estimate - np.mean(per_seed)) < 1e-9 and e.n_seeds == len(runs)
    assert (e.sd is None) == (len(runs) == 1)
    if e.sd is not None:
        assert abs(e.sd - np.std(per_seed, ddof=1)) < 1e-7
    assert e.low <= e.estimate <= e.high


@settings(max_examples=60, deadline=None)
@given(xy=st.lists(st.tuples(st.floats(-1e3, 1e3), st.floats(-1e3, 1e3)), min_size=2, max_size=30))
def test_a_correlation_interval_contains_r_and_lies_within_minus_1_1(xy):
    x, y = zip(*xy, strict=True)
    c = S.correlation(x, y)
    if c.r is None:
        return
    assert -1.0 <= c.r <= 1.0 and 0.0 <= c.p_value <= 1.0
    assert (c.low is None) == (len(xy) < 4)
    if c.low is not None:
        assert -1.0 <= c.low <= c.r + 1e-12 and c.r - 1e-12 <= c.high <= 1.0
    assert not S.is_finding(c) or (c.n >= 5 and c.excludes_zero)


@settings(max_examples=60, deadline=None)
@given(value=st.floats(-100, 100), low_gap=st.floats(0, 50), high_gap=st.floats(0, 50))
def test_a_table_cell_shows_the_larger_half_of_its_interval(value, low_gap, high_gap):
    e = S.Estimate(value, value - low_gap, value + high_gap, n=1, method="test")
    text = S.format_cell(e, e)
    shown = float(text.split("±")[1].split()[0])
    assert shown >= round(max(low_gap, high_gap), 1) - 1e-9
    assert text.endswith(S.MARK) == e.excludes_zero
    assert "-0.0" not in text
