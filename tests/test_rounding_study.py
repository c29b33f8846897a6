"""labkit.rounding_study against an independent brute force in exact rational arithmetic (fractions.Fraction)."""
import math
import re
from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit.quant.rounding import double_round
from labkit.quant import make_weight_quantizer
from labkit.quant.weight import TruncationWeightQuantizer
from labkit.rounding_study import (
    WAYS,
    changed_codes_table,
    check_second_rounding_exercise,
    check_truncation_centre_exercise,
    code_difference_stats,
    codes_three_ways,
    comparison_table,
    error_table,
    first_rounding,
    rounding_errors_table,
    scalar_rounding_table,
    second_rounding_error_stats,
    stats_by_bits,
    tie_rule_disagreement_table,
    tie_rules_table,
    truncation_centre,
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


def ref_centre(high: int, low: int) -> Fraction:
    """The centre of the W/s_h interval a truncated code stands for, minus q_l·2^Δ, in l-bit steps: by enumeration.

    Code q_l = 0 stands for the stored codes 0 … 2^Δ − 1, i.e. for W/s_h in [−1/2, 2^Δ − 1/2): the midpoint of that
    interval, divided by 2^Δ. (Any q_l gives the same offset; q_l = 0 keeps it readable.)
    """
    step = 2 ** (high - low)
    covered = [q for q in range(-(2 ** (high - 1)), 2 ** (high - 1)) if q // step == 0]
    low_end, high_end = Fraction(min(covered)) - HALF, Fraction(max(covered)) + HALF
    return (low_end + high_end) / 2 / step


def ref_values(x_h: Fraction, high: int, low: int, rule: str) -> dict:
    """Ŵ_l / s_l of each way for one exact input (the truncated codes read at the bottom and at the centre)."""
    _, double, direct, floor = ref_three_ways(x_h, high, low, rule)
    return {"direct": Fraction(direct), "double": Fraction(double), "floor_naive": Fraction(floor),
            "floor_centred": floor + ref_centre(high, low)}


def ref_errors(high: int, low: int, rule: str, points_per_code: int) -> dict:
    """(bias, mean |error|, worst |error|) of each way over the grid inputs with |W/s_l| <= 2^(l-1) - 1/2, exactly."""
    step = 2 ** (high - low)
    limit = 2 ** (low - 1) - HALF
    errors = {way: [] for way in WAYS}
    for x in ref_grid(high, points_per_code):
        x_l = x / step
        if abs(x_l) > limit:
            continue
        for way, value in ref_values(x, high, low, rule).items():
            errors[way].append(value - x_l)
    return {way: (sum(e) / len(e), sum(abs(v) for v in e) / len(e), max(abs(v) for v in e))
            for way, e in errors.items()}


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


@pytest.mark.parametrize("rule", ["half_even", "half_up"])
@pytest.mark.parametrize("high,low", [(8, 8), (8, 6), (8, 4), (8, 2), (4, 3), (4, 2)])
def test_bias_mean_and_worst_error_of_every_way_match_brute_force(high, low, rule):
    points = 8
    stats = second_rounding_error_stats(high, low, rule, points_per_code=points)
    reference = ref_errors(high, low, rule, points)
    for way in WAYS:
        bias, mean, worst = reference[way]
        assert getattr(stats, f"bias_{way}") == pytest.approx(float(bias), abs=1e-12), way
        assert getattr(stats, f"mean_error_{way}") == pytest.approx(float(mean), abs=1e-12), way
        assert getattr(stats, f"worst_error_{way}") == pytest.approx(float(worst), abs=1e-12), way
    assert stats.measured == sum(abs(x) / 2 ** (high - low) <= 2 ** (low - 1) - HALF for x in ref_grid(high, points))


@pytest.mark.parametrize("high,low", [(8, 6), (8, 4), (8, 2), (4, 2)])
def test_worst_case_error_within_the_bound(high, low):
    points = 8
    stats = second_rounding_error_stats(high, low, "half_even", points_per_code=points)
    # METHOD.md §1: the worst case grows from 0.5 to 0.5 + 2^-(Δ+1) LSB; the grid gets within 1/(2P·2^Δ) of it.
    delta = high - low
    bound = 0.5 + 2.0 ** -(delta + 1)
    assert stats.worst_case_bound == bound
    assert bound - 1 / (2 * points * 2 ** delta) - 1e-12 <= stats.worst_error_double <= bound
    assert stats.worst_error_direct <= 0.5 and stats.worst_error_floor_centred <= 0.5
    assert stats.worst_error_floor_naive > 0.75  # read at the cell bottom, truncation is off by almost a whole step
    assert stats.worst_error_floor == stats.worst_error_floor_naive  # the codes as they are (what the widget reads)


def test_worst_case_approaches_the_bound_on_a_fine_grid():
    for low, delta in ((6, 2), (4, 4), (2, 6)):
        stats = second_rounding_error_stats(8, low, points_per_code=256)
        assert stats.worst_error_double == pytest.approx(0.5 + 2.0 ** -(delta + 1), abs=1 / (256 * 2 ** delta))


def test_no_second_rounding_no_change():
    stats = second_rounding_error_stats(8, 8)
    assert stats.fraction_double_differs == stats.fraction_floor_differs == 0
    assert stats.worst_case_bound == 0.5 and stats.worst_error_double <= 0.5
    assert stats.bias_floor_naive == stats.bias_floor_centred == stats.bias_direct


def test_naive_truncation_is_biased_by_the_centre_offset_and_the_fair_one_is_not():
    # Over the symmetric measured range (2^l - 1 whole l-bit periods) the naive error is the centred one minus c_Δ
    # everywhere, and the centred truncation is rounding on a shifted grid: bias exactly -c_Δ and 0.
    for stats in error_table(8, (6, 4, 2)):
        centre = truncation_centre(8, stats.low_bits)
        assert stats.bias_floor_naive == pytest.approx(-centre, abs=1e-12)
        assert stats.bias_floor_naive < -0.37  # about half an l-bit step down
        assert stats.bias_floor_centred == pytest.approx(0.0, abs=1e-12)
        assert stats.bias_direct == pytest.approx(0.0, abs=1e-12)
        assert stats.mean_error_floor_centred == pytest.approx(stats.mean_error_direct, abs=1e-12)
        assert stats.mean_error_direct == pytest.approx(0.25, abs=0.002)
        assert stats.mean_error_direct <= stats.mean_error_double < stats.mean_error_direct + 0.02
        assert stats.mean_error_floor_naive > 0.38 and stats.mean_error_floor == stats.mean_error_floor_naive


def test_ties_up_push_double_rounding_up_and_ties_to_even_do_not():
    even, up = error_table(8, (6,), "half_even")[0], error_table(8, (6,), "half_up")[0]
    assert abs(even.bias_double) < 0.005
    # A quarter of the stored codes are ties at Δ = 2, each pushed up by about half a step: about +1/8 LSB.
    assert up.bias_double == pytest.approx(0.125, abs=0.005)


@pytest.mark.parametrize("high,bits", [(8, (8, 6, 4, 2)), (4, (4, 3, 2))])
def test_truncation_centre_is_the_cell_midpoint_and_what_method_floor_uses(high, bits):
    quantizer = TruncationWeightQuantizer(1, bits=bits)
    for low in bits:
        assert truncation_centre(high, low) == ref_centre(high, low) == quantizer.centre(low)
    assert truncation_centre(8, 4) == 15 / 32


@pytest.mark.parametrize("method,way", [("floor", "floor_centred"), ("floor_naive", "floor_naive"),
                                        ("double_rounding", "double")])
def test_the_study_dequantizes_as_the_library_quantizer_of_that_method(method, way):
    torch.manual_seed(1)
    weight = torch.randn(1, 4000, dtype=torch.float64) * 0.05
    scale_h = 0.0011
    quantizer = make_weight_quantizer(method, 1, (8, 6, 4, 2)).double()
    with torch.no_grad():
        quantizer.scale.fill_(scale_h)
    for low in (8, 6, 4, 2):
        result = codes_three_ways(weight[0], scale_h, 8, low)
        library = quantizer(weight, low).detach()[0]
        assert torch.allclose(result.values_of(way), library, rtol=0, atol=1e-15), (method, low)


def test_stats_on_arbitrary_values_and_fully_clipped_inputs():
    torch.manual_seed(0)
    result = codes_three_ways(torch.randn(1000) * 0.3, 0.01, 8, 4)
    stats = code_difference_stats(result)
    assert stats.inputs == 1000 and 0 <= stats.fraction_double_differs < 0.1
    assert stats.codes_double_differs == int((result.double_codes != result.direct_codes).sum())
    assert stats.codes_floor_differs == int((result.floor_codes != result.direct_codes).sum())
    clipped = code_difference_stats(codes_three_ways(torch.tensor([100.0, -100.0]), 0.01, 8, 4))
    assert math.isnan(clipped.worst_error_double) and math.isnan(clipped.bias_floor_centred)
    assert clipped.measured == 0
    with pytest.raises(ValueError, match="way"):
        result.values_of("floor")


def test_stats_by_bits_are_what_the_explorer_reads_out():
    from labkit.widgets import explorer_state

    torch.manual_seed(0)
    values = torch.randn(300) * 0.05
    for stats in stats_by_bits(values, 0.0012, 8, (8, 6, 4, 2)):
        state = explorer_state(values, 0.0012, 8, stats.low_bits)
        assert state["stats"] == stats
        if stats.delta:
            assert f"<b>{stats.codes_double_differs} of {stats.inputs}</b>" in state["readout"]
            floor = f"floor differs for {stats.codes_floor_differs} ({stats.fraction_floor_differs:.1%})"
            assert floor in state["readout"]


# ----------------------------------------------------------------------------- Markdown tables


def table_rows(markdown: str) -> list[list[str]]:
    """The cells of a Markdown table's rows (header and body; the alignment row dropped), split on unescaped |."""
    rows = []
    for line in markdown.splitlines():
        if not line.startswith("|"):
            continue
        cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        if all(set(c) <= set(":-") and c for c in cells):
            continue
        rows.append(cells)
    return rows


def test_tables_are_markdown_with_one_cell_per_column():
    uniform = error_table(8, (6, 4, 2))
    tables = [changed_codes_table(uniform), changed_codes_table(uniform, counts=True), rounding_errors_table(uniform),
              comparison_table(codes_three_ways(torch.tensor([0.095, -0.2, 0.457]), 0.01, 8, 4)),
              scalar_rounding_table([0.457, 0.323], 0.01), tie_rules_table(torch.tensor([-96, -32, 32, 96])),
              tie_rule_disagreement_table()]
    for table in tables:
        rows = table_rows(table)
        assert len(rows) >= 3 and len({len(r) for r in rows}) == 1, table
        assert "-" not in "".join(c for r in rows[1:] for c in r if c[:1].isdigit() or c[:1] == "-"), table


def test_changed_codes_table_says_the_measured_shares():
    rows = table_rows(changed_codes_table(error_table(8, (6, 4, 2))))
    assert [r[2] for r in rows[1:]] == ["12.30%", "2.93%", "0.59%"]
    assert [r[3] for r in rows[1:]] == ["36.91%", "43.95%", "36.91%"]
    counted = table_rows(changed_codes_table(stats_by_bits(torch.tensor([0.0, -0.02, 0.5]), 0.01, 8, (4,)),
                                             counts=True, digits=1))
    # -0.02 -> q_8 = -2: floor -2 >> 4 = -1, direct round(-0.125) = 0; 0.5 -> 50 >> 4 = 3, direct round(3.125) = 3.
    assert counted[1][3] == "1 of 3 (33.3%)"


def test_rounding_errors_table_has_every_way_and_the_bound():
    stats = error_table(8, (4,))
    rows = table_rows(rounding_errors_table(stats))
    assert rows[0] == ["h → l", "way", "bias (mean error)", "mean |error|", "worst |error|"]
    assert [r[1] for r in rows[1:]] == ["direct rounding of W/s_l", "Double Rounding",
                                        "truncation, cell bottom (naive)", "truncation, cell centre (fair)"]
    assert rows[3][2] == "−0.469" and rows[4][2] == "0.000" and rows[2][4].endswith("(bound 0.531)")


def test_comparison_table_marks_rows_where_double_rounding_differs():
    table = comparison_table(codes_three_ways(torch.tensor([23.6, 0.2]), 1.0, 8, 4))  # q=24 -> 1.5 -> 2; direct 1
    rows = table_rows(table)
    assert table.startswith("**INT8 → INT4**") and "c_Δ = 0.46875" in table
    assert rows[1][-1] == "≠" and rows[2][-1] == ""
    assert rows[1][9:11] == ["16.0000", "23.5000"]  # 24 >> 4 = 1, s_l = 16: bottom 1·16, centre (1 + 15/32)·16
    assert "… 1 more rows" in comparison_table(codes_three_ways(torch.tensor([0.1, 0.2]), 0.01, 8, 4), max_rows=1)


def test_scalar_and_tie_tables_by_hand():
    rows = table_rows(scalar_rounding_table([0.457], 0.01, 8, (6,)))
    assert rows[1] == ["0.4570", "45.700", "46", "6", "46/4 = 11.5", "12", "12", "11", "11.4250", "11"]
    ties = table_rows(tie_rules_table(torch.tensor([-96, -32, 32, 96], dtype=torch.int8), 8, 2))
    assert ties[2:] == [["ties to even", "−2", "0", "0", "1"], ["ties up", "−1", "0", "1", "1"],
                        ["floor (q_h >> Δ)", "−2", "−1", "0", "1"]]
    counts = table_rows(tie_rule_disagreement_table(8, (6, 4, 2)))
    assert [r[1:] for r in counts[1:]] == [["32 of 256", "94 of 256"], ["8 of 256", "112 of 256"],
                                           ["2 of 256", "94 of 256"]]


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


@pytest.mark.parametrize("answer,words", [
    (lambda h, l: 0.0, "naive truncation"),
    (lambda h, l: 0.5 if h > l else 0.0, "half an INT-8 step lower"),
    (lambda h, l: (2 ** (h - l) - 1) / 2, "divide by 2^Δ"),
    (lambda h, l: 0.5 - 2.0 ** -(h - l + 1) + (h == l), "nothing is truncated"),
    (lambda h, l: None, "return one number"),
    (lambda h, l: 0.3, "take their mean"),
])
def test_truncation_centre_checker_names_the_mistake(answer, words):
    feedback = check_truncation_centre_exercise(answer)
    assert not feedback.passed and words in feedback.message


def test_truncation_centre_checker_accepts_the_derivation():
    def centre(high_bits, low_bits):
        step = 2 ** (high_bits - low_bits)
        return ((step - 1) / 2) / step  # the mean of the covered codes 0 … 2^Δ - 1, in l-bit steps

    feedback = check_truncation_centre_exercise(centre)
    assert feedback.passed and "10 cases" in feedback.message
    assert "Not implemented" in check_truncation_centre_exercise(lambda h, l: (_ for _ in ()).throw(
        NotImplementedError())).message
