import math

import numpy as np
import pytest

from stats import (
    bootstrap_diff,
    bootstrap_gap_closed,
    format_mcnemar,
    format_paired,
    gap_closed,
    mcnemar,
    mean_ci,
    mean_std,
    paired,
)

T_975_2 = 4.302652729911275  # Student's t, 97.5% quantile, 2 degrees of freedom (tables)


def test_mean_std_uses_n_minus_1_and_one_value_has_std_zero():
    assert mean_std([1, 2, 3, 4]) == pytest.approx((2.5, math.sqrt(5 / 3)))
    assert mean_std([0.97]) == (0.97, 0.0)
    with pytest.raises(ValueError):
        mean_std([])


def test_paired_differences_and_t_interval():
    p = paired([0.99, 0.98, 0.97], [0.98, 0.96, 0.94])  # differences 0.01, 0.02, 0.03
    h = T_975_2 * 0.01 / math.sqrt(3)
    assert p["seeds"] == 3
    assert p["mean"] == pytest.approx(0.02) and p["std"] == pytest.approx(0.01)
    assert p["ci95"] == pytest.approx([0.02 - h, 0.02 + h])
    assert paired([1, 2], [1, 2]) == {"mean": 0.0, "std": 0.0, "seeds": 2, "ci95": [0.0, 0.0]}


def test_paired_one_seed_has_no_interval_and_unequal_lengths_are_rejected():
    assert paired([0.9], [0.8]) == {"mean": pytest.approx(0.1), "std": 0.0, "seeds": 1, "ci95": [None, None]}
    with pytest.raises(ValueError):
        paired([1, 2, 3], [1, 2])
    with pytest.raises(ValueError):
        paired([], [])


def test_gap_closed():
    assert gap_closed(0.985, 0.98, 0.99) == pytest.approx(0.5)
    assert gap_closed(0.99, 0.98, 0.99) == pytest.approx(1.0)
    assert gap_closed(0.97, 0.98, 0.99) == pytest.approx(-1.0)
    assert gap_closed(0.97, 0.98, 0.98) is None
    assert gap_closed(0.99, 0.98, 0.97) is None  # a teacher worse than the student alone: no gap


def test_format_paired():
    p = {"mean": 0.0123, "std": 0.004, "seeds": 3, "ci95": [0.0023, 0.0223]}
    assert format_paired(p) == "+0.0123 ± 0.0040 (95% CI +0.0023 .. +0.0223, n=3)"
    assert format_paired(p, scale=100, digits=2) == "+1.23 ± 0.40 (95% CI +0.23 .. +2.23, n=3)"
    assert format_paired(paired([0.5], [0.6]), digits=2) == "-0.10 (n=1, no CI)"


def correctness(both, a_only, b_only, neither):
    """Per-example correctness of two models with the given cell counts, the cells interleaved (not in blocks)."""
    a = [True] * both + [True] * a_only + [False] * b_only + [False] * neither
    b = [True] * both + [False] * a_only + [True] * b_only + [False] * neither
    order = np.random.default_rng(0).permutation(len(a))
    return np.array(a)[order], np.array(b)[order]


@pytest.mark.parametrize(
    "a_only,b_only,p",
    [
        (0, 6, 2 / 2**6),  # 0.03125: both tails of Binomial(6, 1/2) at their extremes
        (6, 0, 2 / 2**6),
        (5, 5, 1.0),
        (1, 9, 2 * (1 + 10) / 2**10),  # P(X <= 1) + P(X >= 9), X ~ Binomial(10, 1/2)
        (2, 8, 2 * (1 + 10 + 45) / 2**10),
        (3, 4, 1.0),
        (0, 0, 1.0),  # no discordant examples: no evidence either way
    ],
)
def test_mcnemar_exact_p_values_by_hand(a_only, b_only, p):
    a, b = correctness(50, a_only, b_only, 7)
    m = mcnemar(a, b)
    assert m == {"n": 57 + a_only + b_only, "a_only": a_only, "b_only": b_only, "p_value": pytest.approx(p, rel=1e-12)}
    assert type(m["p_value"]) is float and type(m["a_only"]) is int  # JSON-ready


def test_mcnemar_takes_lists_and_0_1_and_refuses_bad_input():
    assert mcnemar([1, 0, 1, 1], [True, True, False, False])["a_only"] == 2
    with pytest.raises(ValueError):
        mcnemar([True, False], [True])
    with pytest.raises(ValueError):
        mcnemar([], [])
    with pytest.raises(ValueError):
        mcnemar([3, 7, 1], [3, 2, 1])  # predicted labels, not correctness
    with pytest.raises(ValueError):
        mcnemar([[[True, False]]], [[[True, False]]])  # 3-D
    with pytest.raises(ValueError):
        mcnemar([[True, False], [False, False]], [[True, False]])  # two models against one


def test_mcnemar_pools_pairs_given_as_rows():
    rng = np.random.default_rng(5)
    a, b = rng.random((3, 200)) < 0.9, rng.random((3, 200)) < 0.8
    pooled = mcnemar(a, b)
    assert pooled == mcnemar(a.ravel(), b.ravel())
    assert pooled["n"] == 600
    assert pooled["a_only"] == sum(mcnemar(x, y)["a_only"] for x, y in zip(a, b))


def test_bootstrap_sides_of_several_models_are_scored_by_their_mean():
    rng = np.random.default_rng(6)
    a, b, t = rng.random((3, 500)) < 0.9, rng.random((3, 500)) < 0.8, rng.random((2, 500)) < 0.95
    r = bootstrap_diff(a, b, n_boot=500)
    assert r["mean"] == pytest.approx(a.mean() - b.mean())
    assert r["ci95"][0] < r["mean"] < r["ci95"][1]
    assert bootstrap_diff(a[:1], b[:1], n_boot=500) == bootstrap_diff(a[0], b[0], n_boot=500)  # one row = 1-D
    g = bootstrap_gap_closed(a, b, t, n_boot=500)
    assert g["value"] == pytest.approx((a.mean() - b.mean()) / (t.mean() - b.mean()))
    assert g["ci95"][0] < g["value"] < g["ci95"][1]
    with pytest.raises(ValueError):
        bootstrap_diff(a, b[:, :400])  # other test examples


def test_mean_ci_is_the_t_interval_and_paired_is_it_of_the_differences():
    r = mean_ci([1.0, 2.0, 3.0])
    assert r["mean"] == 2.0 and r["std"] == 1.0 and r["seeds"] == 3
    assert r["ci95"] == pytest.approx([2 - T_975_2 / 3**0.5, 2 + T_975_2 / 3**0.5])
    assert paired([3.0, 5.0, 7.0], [2.0, 3.0, 4.0]) == r
    assert mean_ci([0.5])["ci95"] == [None, None]


def test_format_mcnemar():
    m = {"n": 10000, "a_only": 12, "b_only": 30, "p_value": 0.0063863}
    assert format_mcnemar(m) == "A only 12, B only 30, p = 0.0064 (McNemar exact, n=10000)"
    underflow = format_mcnemar({"n": 30000, "a_only": 236, "b_only": 4553, "p_value": 0.0}, "residual", "plain")
    assert underflow.endswith("plain only 4553, p < 1e-300 (McNemar exact, n=30000)")
    m = {"n": 60000, "a_only": 1, "b_only": 90, "p_value": 7.3e-26}
    cell = "student only 1, alone only 90, p = 7.3e-26 (McNemar exact, n=60000)"
    assert format_mcnemar(m, "student", "alone") == cell


def test_bootstrap_diff_contains_the_observed_difference_and_matches_the_paired_standard_error():
    a, b = correctness(900, 40, 20, 40)  # acc 0.94 vs 0.92, n = 1000
    r = bootstrap_diff(a, b, n_boot=4000)
    assert r["mean"] == pytest.approx(0.02) and r["n_boot"] == 4000
    lo, hi = r["ci95"]
    assert lo < 0.02 < hi
    # Paired: the variance of the mean difference is (p_a + p_b - (p_a - p_b)^2) / n, from the 60 discordant
    # examples only (resampling A and B independently would give a ~1.5x wider interval here).
    se = math.sqrt((0.04 + 0.02 - 0.02**2) / 1000)
    assert (hi - lo) / 2 == pytest.approx(1.96 * se, rel=0.1)


def test_bootstrap_diff_shrinks_with_n_and_is_zero_for_identical_models():
    a, b = correctness(900, 40, 20, 40)
    small = bootstrap_diff(a, b, n_boot=2000)["ci95"]
    big = bootstrap_diff(np.tile(a, 16), np.tile(b, 16), n_boot=2000)["ci95"]  # same rates, 16x the examples
    assert (big[1] - big[0]) == pytest.approx((small[1] - small[0]) / 4, rel=0.15)
    assert big[0] < 0.02 < big[1]
    assert bootstrap_diff(a, a, n_boot=100) == {"mean": 0.0, "ci95": [0.0, 0.0], "n_boot": 100}


def test_bootstrap_is_deterministic_by_seed_and_chunked_for_large_test_sets():
    a, b = correctness(900, 40, 20, 40)
    assert bootstrap_diff(a, b, n_boot=500, seed=3) == bootstrap_diff(a, b, n_boot=500, seed=3)
    assert bootstrap_diff(a, b, n_boot=500, seed=3)["ci95"] != bootstrap_diff(a, b, n_boot=500, seed=4)["ci95"]
    # 60k examples: drawn in chunks (not one 60k x n_boot index array), still deterministic and sensible.
    big_a, big_b = correctness(57000, 1200, 600, 1200)
    r = bootstrap_diff(big_a, big_b, n_boot=300, seed=1)
    assert r == bootstrap_diff(big_a, big_b, n_boot=300, seed=1)
    assert r["mean"] == pytest.approx(0.01) and r["ci95"][0] < 0.01 < r["ci95"][1]


def test_bootstrap_refuses_bad_input():
    with pytest.raises(ValueError):
        bootstrap_diff([True, False], [True])
    with pytest.raises(ValueError):
        bootstrap_diff([], [])
    with pytest.raises(ValueError):
        bootstrap_diff([True], [False], n_boot=0)
    with pytest.raises(ValueError):
        bootstrap_gap_closed([True, False], [True, False], [True])
    with pytest.raises(ValueError):
        bootstrap_gap_closed([], [], [])


def nested(n, *rights):
    """One correctness vector per count: the first `right` of n examples correct (so the models nest)."""
    return [np.arange(n) < r for r in rights]


def test_bootstrap_gap_closed_on_a_constructed_example():
    # Teacher right on 900 of 1000, alone on 800, student on 850: half the gap closed.
    student, alone, teacher = nested(1000, 850, 800, 900)
    r = bootstrap_gap_closed(student, alone, teacher, n_boot=2000)
    assert r["value"] == pytest.approx(0.5) and r["n_boot"] == 2000 and r["undefined"] == 0
    lo, hi = r["ci95"]
    # Nested models: the gap closed is the share of the resampled teacher-only examples (~100) the student gets,
    # a proportion near 0.5 with sd about sqrt(0.25 / 100) = 0.05.
    assert 0.35 < lo < 0.5 < hi < 0.65
    assert (hi - lo) / 2 == pytest.approx(1.96 * 0.05, rel=0.15)
    assert bootstrap_gap_closed(student, alone, teacher, n_boot=2000) == r


def test_bootstrap_gap_closed_counts_and_drops_undefined_resamples():
    # The teacher's lead is one example: a resample misses it with probability (1 - 1/n)^n ~ 1/e.
    student, alone, teacher = nested(1000, 801, 800, 801)
    r = bootstrap_gap_closed(student, alone, teacher, n_boot=2000)
    assert r["value"] == pytest.approx(1.0)
    assert r["undefined"] / 2000 == pytest.approx(math.exp(-1), abs=0.04)
    assert r["ci95"] == [1.0, 1.0]  # whenever the gap exists, the student closes all of it
    # No lead at all: every resample is undefined, and so is the observed value.
    same = bootstrap_gap_closed(*nested(100, 60, 70, 70), n_boot=50)
    assert same == {"value": None, "ci95": [None, None], "n_boot": 50, "undefined": 50}
