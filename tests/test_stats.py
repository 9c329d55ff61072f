import math

import pytest

from stats import format_paired, gap_closed, mean_std, paired

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
