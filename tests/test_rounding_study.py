"""labkit.rounding_study against an independent brute force in exact rational arithmetic (fractions.Fraction)."""
import math
from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit.quant.rounding import double_round
from labkit.rounding_study import (
    check_second_rounding_exercise,
    code_difference_stats,
    codes_three_ways,
    error_table,
    first_rounding,
    format_comparison_table,
    format_stats_table,
    second_rounding_error_stats,
    uniform_inputs,
)

HALF = Fraction(1, 2)


# ----------------------------------------------------------------------------- the brute-force reference


def ref_round(x: Fraction, rule: str) -> int:
    """Round a Fraction: Python's round() on a Fraction rounds half to even; half_up is floor(x + 1/2)."""
    return round(x) if rule == "half_even" else math.floor(x + HALF)


def ref_clip(q: int, bits: int) -> int:
    return max(-(2 ** (bits - 1)), min(2 ** (bits - 1) - 1, q))


def ref_three_ways(x_h: Fraction, high: int, low: int, rule: str):
    """(q_h, double, direct, floor) for one exact input ``x_h = W / s_h``, written from METHOD.md §1 directly."""
    step = 2 ** (high - low)
    q_h = ref_clip(round(x_h), high)                          # Eq. 1 (torch.round: ties to even)
    double = ref_clip(ref_round(Fraction(q_h, step), rule), low)   # Eq. 2
    direct = ref_clip(ref_round(x_h / step, rule), low)       # round(W / s_l), s_l = s_h 2^Δ
    floor = ref_clip(q_h // step, low)                        # truncation
    return q_h, double, direct, floor


def ref_grid(high: int, points_per_code: int):
    """The same uniformly spread inputs as uniform_inputs, built from Fractions."""
    qmin = -(2 ** (high - 1))
    return [qmin - HALF + Fraction(2 * i + 1, 2 * points_per_code) for i in range(2 ** high * points_per_code)]


def exact_fraction_differs(high: int, low: int, rule: str, way: str = "double") -> Fraction:
    """The exact share of a continuous uniform W/s_h on [qmin - 1/2, qmax + 1/2) whose code differs from direct.

    Interval arithmetic: in each INT-h cell the double/floor code is constant; the direct code changes only at
    the breakpoints (k + 1/2)·2^Δ, so summing the lengths of the sub-intervals where they disagree is exact.
    """
    step = 2 ** (high - low)
    qmin, qmax = -(2 ** (high - 1)), 2 ** (high - 1) - 1
    total = Fraction(0)
    for c in range(qmin, qmax + 1):
        derived = ref_clip(ref_round(Fraction(c, step), rule) if way == "double" else c // step, low)
        lo, hi = c - HALF, c + HALF
        cuts = sorted({lo, hi} | {(k + HALF) * step for k in range(-2 ** high, 2 ** high)
                                  if lo < (k + HALF) * step < hi})
        for a, b in zip(cuts, cuts[1:]):
            if ref_clip(ref_round((a + b) / 2 / step, rule), low) != derived:
                total += b - a
    return total / 2 ** high


def ref_worst_error(high: int, low: int, rule: str, points_per_code: int, way: str) -> Fraction:
    """Max |q_l - W/s_l| in l-bit LSB over the grid inputs that neither range clips, by brute force."""
    step = 2 ** (high - low)
    qmin_l, qmax_l = -(2 ** (low - 1)), 2 ** (low - 1) - 1
    index = {"double": 1, "direct": 2, "floor": 3}[way]
    worst = Fraction(0)
    for x in ref_grid(high, points_per_code):
        x_l = x / step
        if not (qmin_l - HALF <= x_l <= qmax_l + HALF):
            continue
        worst = max(worst, abs(ref_three_ways(x, high, low, rule)[index] - x_l))
    return worst


# ----------------------------------------------------------------------------- codes, exactly


@pytest.mark.parametrize("rule", ["half_even", "half_up"])
@pytest.mark.parametrize("high,low", [(8, 8), (8, 6), (8, 4), (8, 2), (4, 3), (4, 2)])
def test_codes_three_ways_match_brute_force_on_the_grid(high, low, rule):
    points = 4
    result = codes_three_ways(uniform_inputs(high, points), 1.0, high, low, rule)
    expected = list(zip(*(ref_three_ways(x, high, low, rule) for x in ref_grid(high, points))))
    for codes, ref in zip((result.high_codes, result.double_codes, result.direct_codes, result.floor_codes), expected):
        assert codes.tolist() == list(ref)


@settings(max_examples=200, deadline=None)
@given(
    units=st.lists(st.floats(-300, 300, allow_nan=False), min_size=1, max_size=20),
    exponent=st.integers(-12, 3),
    low=st.sampled_from([8, 6, 4, 2]),
    rule=st.sampled_from(["half_even", "half_up"]),
)
def test_codes_three_ways_match_brute_force_on_any_input(units, exponent, low, rule):
    scale_h = 2.0 ** exponent  # a power of two: W / s_h is exact in floating point, so Fractions can check it
    values = torch.tensor(units, dtype=torch.float64) * scale_h
    result = codes_three_ways(values, scale_h, 8, low, rule)
    for i, w in enumerate(values.tolist()):
        q_h, double, direct, floor = ref_three_ways(Fraction(w) / Fraction(scale_h), 8, low, rule)
        assert int(result.high_codes[i]) == q_h
        assert int(result.double_codes[i]) == double
        assert int(result.direct_codes[i]) == direct
        assert int(result.floor_codes[i]) == floor
    assert torch.equal(result.double_values, result.double_codes.double() * scale_h * 2 ** (8 - low))


def test_double_codes_are_double_round_of_the_stored_codes():
    result = codes_three_ways(torch.linspace(-2, 2, 999), 0.013, 8, 4)
    assert result.high_codes.dtype == torch.int8
    assert torch.equal(result.double_codes, double_round(result.high_codes, 8, 4))


def test_first_rounding_clips_to_the_full_negative_code():
    codes = first_rounding(torch.tensor([-5.0, -1.285, 1.275, 5.0, 0.005, 0.015]), 0.01, 8)
    assert codes.tolist() == [-128, -128, 127, 127, 0, 2]  # 0.5 -> 0 and 1.5 -> 2: ties to even


def test_the_tie_examples_of_method_md():
    # 8 -> 2 bits: 32/64 = 0.5 -> 0 (half even) or 1 (half up); 96/64 = 1.5 -> 2 -> clipped to 1; floor: 0 and 1.
    even = codes_three_ways(torch.tensor([32.0, 96.0]), 1.0, 8, 2, "half_even")
    up = codes_three_ways(torch.tensor([32.0, 96.0]), 1.0, 8, 2, "half_up")
    assert even.double_codes.tolist() == [0, 1]
    assert up.double_codes.tolist() == [1, 1]
    assert even.floor_codes.tolist() == [0, 1]


def test_bad_arguments_say_what_to_pass():
    with pytest.raises(ValueError, match="low_bits"):
        codes_three_ways(torch.zeros(3), 1.0, 4, 8)
    with pytest.raises(ValueError, match="half_even"):
        codes_three_ways(torch.zeros(3), 1.0, 8, 4, "floor")
    with pytest.raises(ValueError, match="positive"):
        codes_three_ways(torch.zeros(3), 0.0, 8, 4)


# ----------------------------------------------------------------------------- the measured statistics


@pytest.mark.parametrize("rule", ["half_even", "half_up"])
@pytest.mark.parametrize("high,low", [(8, 6), (8, 4), (8, 2), (4, 3), (4, 2)])
def test_fraction_differing_equals_the_exact_continuous_share(high, low, rule):
    stats = second_rounding_error_stats(high, low, rule, points_per_code=64)
    assert stats.fraction_double_differs == pytest.approx(float(exact_fraction_differs(high, low, rule)), abs=1e-12)
    assert stats.fraction_floor_differs == pytest.approx(
        float(exact_fraction_differs(high, low, rule, way="floor")), abs=1e-12)
    assert stats.max_code_difference == 1


@pytest.mark.parametrize("rule", ["half_even", "half_up"])
@pytest.mark.parametrize("low,method_md", [(6, 0.12), (4, 0.03), (2, 0.006)])
def test_fraction_differing_agrees_with_method_md(low, method_md, rule):
    # METHOD.md §1: "the codes differ for about 12 % of weights at 8→6, 3 % at 8→4, 0.6 % at 8→2".
    stats = second_rounding_error_stats(8, low, rule)
    assert stats.fraction_double_differs == pytest.approx(method_md, rel=0.1)


@pytest.mark.parametrize("high,low", [(8, 6), (8, 4), (8, 2), (4, 2)])
def test_worst_case_error_matches_brute_force_and_the_bound(high, low):
    points = 8
    stats = second_rounding_error_stats(high, low, "half_even", points_per_code=points)
    for way in ("direct", "double", "floor"):
        assert getattr(stats, f"worst_error_{way}") == pytest.approx(
            float(ref_worst_error(high, low, "half_even", points, way)), abs=1e-12)
    # METHOD.md §1: the worst case grows from 0.5 to 0.5 + 2^-(Δ+1) LSB; the grid gets within 1/(2P·2^Δ) of it.
    delta = high - low
    bound = 0.5 + 2.0 ** -(delta + 1)
    assert stats.worst_case_bound == bound
    assert bound - 1 / (2 * points * 2 ** delta) - 1e-12 <= stats.worst_error_double <= bound
    assert stats.worst_error_direct <= 0.5
    assert stats.worst_error_floor > 0.75  # truncation can be off by almost a whole code


def test_worst_case_approaches_the_bound_on_a_fine_grid():
    for low, delta in ((6, 2), (4, 4), (2, 6)):
        stats = second_rounding_error_stats(8, low, points_per_code=256)
        assert stats.worst_error_double == pytest.approx(0.5 + 2.0 ** -(delta + 1), abs=1 / (256 * 2 ** delta))


def test_no_second_rounding_no_change():
    stats = second_rounding_error_stats(8, 8)
    assert stats.fraction_double_differs == stats.fraction_floor_differs == 0
    assert stats.worst_case_bound == 0.5 and stats.worst_error_double <= 0.5


def test_mean_error_barely_moves_but_floor_is_biased():
    for stats in error_table(8, (6, 4, 2)):
        assert stats.mean_error_direct == pytest.approx(0.25, abs=0.002)
        assert stats.mean_error_direct <= stats.mean_error_double < stats.mean_error_direct + 0.02
        assert stats.mean_error_floor > 0.35


def test_stats_on_arbitrary_values_and_fully_clipped_inputs():
    torch.manual_seed(0)
    result = codes_three_ways(torch.randn(1000) * 0.3, 0.01, 8, 4)
    stats = code_difference_stats(result)
    assert stats.inputs == 1000 and 0 <= stats.fraction_double_differs < 0.1
    clipped = code_difference_stats(codes_three_ways(torch.tensor([100.0, -100.0]), 0.01, 8, 4))
    assert math.isnan(clipped.worst_error_double)


def test_text_tables():
    result = codes_three_ways(torch.tensor([0.095, 0.2]), 0.01, 8, 4)  # 9.5 -> 10 (even) -> 10/16 = 0.625 ...
    table = format_comparison_table(result)
    assert "INT8 -> INT4" in table and len(table.splitlines()) == 5
    assert "... 1 more rows" in format_comparison_table(result, max_rows=1)
    marked = format_comparison_table(codes_three_ways(torch.tensor([23.6]), 1.0, 8, 4))  # q=24 -> 1.5 -> 2; direct 1
    assert marked.rstrip().endswith("*")
    text = format_stats_table(error_table(8, (6, 4, 2)))
    assert "12.30%" in text and "2.93%" in text and "0.59%" in text


# ----------------------------------------------------------------------------- the exercise checker


def solution(q_h, high_bits, low_bits):
    shift = high_bits - low_bits
    return torch.clamp(torch.round(q_h.double() / 2 ** shift), -2 ** (low_bits - 1), 2 ** (low_bits - 1) - 1).long()


def test_exercise_checker_accepts_a_correct_solution():
    feedback = check_second_rounding_exercise(solution)
    assert feedback.passed and "256" in feedback.message


@pytest.mark.parametrize("wrong,words", [
    (lambda q, h, l: q.long() >> (h - l), "truncate"),
    (lambda q, h, l: torch.round(q.double() / 2 ** (h - l)).long(), "clip"),
    (lambda q, h, l: torch.floor(q.double() / 2 ** (h - l) + 0.5).clamp(-2 ** (l - 1), 2 ** (l - 1) - 1), "half-up"),
    (lambda q, h, l: solution(q, h, l)[:-1], "shape"),
    (lambda q, h, l: q.double() / 2 ** (h - l), "whole numbers"),
])
def test_exercise_checker_names_the_mistake(wrong, words):
    feedback = check_second_rounding_exercise(wrong)
    assert not feedback.passed and words in feedback.message


def test_exercise_checker_reports_unfinished_and_crashing_code():
    def unfinished(q, h, l):
        raise NotImplementedError()

    def crashing(q, h, l):
        return q.nonexistent

    assert "Not implemented" in check_second_rounding_exercise(unfinished).message
    assert "AttributeError" in check_second_rounding_exercise(crashing).message
    half_up = check_second_rounding_exercise(solution, rounding="half_up")
    assert not half_up.passed and "half-even way" in half_up.message
