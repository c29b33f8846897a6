"""labkit.statistics: paired differences over seeds, checked by hand and against scipy.stats.ttest_rel."""
import math

import pytest
from scipy import stats

from labkit.errors import LabkitError
from labkit.statistics import NOT_RESOLVED, REAL, paired_difference, verdict

# Student's t quantiles t_{0.975, df} from a printed table (not from scipy).
T_975 = {2: 4.302653, 3: 3.182446}


def test_a_hand_computed_case_that_is_not_resolved():
    # d = 1, 2, 3: mean 2, sd 1, half-width t_{0.975,2} · 1 / sqrt(3)
    difference = paired_difference({0: 10.0, 1: 12.0, 2: 14.0}, {0: 9.0, 1: 10.0, 2: 11.0})
    half = T_975[2] / math.sqrt(3)
    assert (difference.mean, difference.sd, difference.n) == (pytest.approx(2.0), pytest.approx(1.0), 3)
    assert difference.low == pytest.approx(2.0 - half, abs=1e-5)
    assert difference.high == pytest.approx(2.0 + half, abs=1e-5)
    assert difference.low < 0 < difference.high
    assert verdict(difference) == NOT_RESOLVED == "not resolved at this budget"


def test_a_hand_computed_case_that_is_real():
    # d = 1.0, 1.2, 0.8, 1.0: mean 1, sd sqrt(0.08 / 3), half-width t_{0.975,3} · sd / 2
    difference = paired_difference([81.0, 81.2, 80.8, 81.0], [80.0, 80.0, 80.0, 80.0])
    sd = math.sqrt(0.08 / 3)
    assert difference.sd == pytest.approx(sd)
    assert difference.low == pytest.approx(1.0 - T_975[3] * sd / 2, abs=1e-5)
    assert difference.high == pytest.approx(1.0 + T_975[3] * sd / 2, abs=1e-5)
    assert difference.resolved and difference.verdict() == REAL == "real"
    assert difference.interval_text() == "+1.00 [+0.74, +1.26]"
    # the same, negative: still real
    assert paired_difference([80.0] * 4, [81.0, 81.2, 80.8, 81.0]).verdict() == REAL


@pytest.mark.parametrize("a, b", [
    ([70.1, 68.4, 69.9, 71.3, 70.0], [68.2, 68.9, 67.1, 69.0, 68.8]),
    ([83.47, 83.10, 82.95], [83.52, 82.71, 83.30]),
])
def test_the_interval_is_the_paired_t_tests(a, b):
    ours = paired_difference(a, b)
    reference = stats.ttest_rel(a, b).confidence_interval(confidence_level=0.95)
    assert (ours.low, ours.high) == (pytest.approx(reference.low), pytest.approx(reference.high))
    assert ours.mean == pytest.approx(sum(x - y for x, y in zip(a, b)) / len(a))


def test_only_the_seeds_both_rows_have_are_paired():
    difference = paired_difference({0: 5.0, 1: 6.0, 2: 9.0}, {1: 4.0, 2: 8.0, 3: 0.0})
    assert difference.seeds == (1, 2) and difference.n == 2 and difference.mean == pytest.approx(1.5)


def test_one_seed_is_never_resolved():
    difference = paired_difference({0: 90.0}, {0: 10.0})  # 80 points, one seed: still no interval
    assert difference.n == 1 and difference.low is None and difference.sd is None
    assert verdict(difference) == NOT_RESOLVED
    assert difference.interval_text() == "+80.00 (1 seed, no interval)"


def test_bad_input_gets_one_clear_error():
    with pytest.raises(LabkitError, match="no seed is in both"):
        paired_difference({0: 1.0}, {1: 1.0})
    with pytest.raises(LabkitError, match="confidence"):
        paired_difference([1.0, 2.0], [1.0, 2.0], confidence=95)
    with pytest.raises(LabkitError, match="a_by_seed"):
        paired_difference(3.0, [1.0])
