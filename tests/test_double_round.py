"""labkit.quant.double_round (METHOD.md §1, Eq. 2) against independent references.

References, none of which reuses the library's shift tricks:
- exact rational arithmetic with :class:`fractions.Fraction`: Python's built-in ``round()`` on a Fraction rounds
  half to even; half-up is ``floor(x + 1/2)``; floor is Python's ``//``;
- for the exhaustive int16 sweep, numpy in float64 (``q / 2^Δ`` is exact there; ``np.round`` is half-to-even).
"""
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit.errors import BitWidthError
from labkit.quant import double_round, int_range

RULES = ("half_even", "half_up", "floor")
HALF = Fraction(1, 2)


# ----------------------------------------------------------------------------- independent references


def ref_round(x: Fraction, rule: str) -> int:
    if rule == "half_even":
        return round(x)  # Fraction.__round__ with no ndigits: banker's rounding
    if rule == "half_up":
        return math.floor(x + HALF)
    assert rule == "floor"
    return math.floor(x)


def ref_clip(n: int, bits: int) -> int:
    return max(-(2 ** (bits - 1)), min(2 ** (bits - 1) - 1, n))


def ref_double_round(q: int, from_bits: int, to_bits: int, rule: str) -> int:
    step = 2 ** (from_bits - to_bits)
    if rule == "floor":
        return ref_clip(q // step, to_bits)
    return ref_clip(ref_round(Fraction(q, step), rule), to_bits)


def all_codes(bits: int) -> list[int]:
    return list(range(-(2 ** (bits - 1)), 2 ** (bits - 1)))


def numpy_double_round(q: np.ndarray, from_bits: int, to_bits: int, rule: str) -> np.ndarray:
    x = q.astype(np.float64) / float(2 ** (from_bits - to_bits))  # exact: a power-of-two division of |q| < 2^53
    if rule == "half_even":
        r = np.round(x)  # numpy rounds half to even
    elif rule == "half_up":
        r = np.floor(x + 0.5)
    else:
        r = np.floor(x)
    return np.clip(r, -(2 ** (to_bits - 1)), 2 ** (to_bits - 1) - 1).astype(np.int64)


def test_the_references_themselves():
    # Sanity of the references (so a failure below is the library's): ties, negatives, floor.
    assert [ref_round(Fraction(k, 2), "half_even") for k in (-5, -3, -1, 1, 3, 5)] == [-2, -2, 0, 0, 2, 2]
    assert [ref_round(Fraction(k, 2), "half_up") for k in (-5, -3, -1, 1, 3, 5)] == [-2, -1, 0, 1, 2, 3]
    assert [ref_double_round(q, 8, 2, "floor") for q in (-128, -65, -64, -1, 0, 63, 64, 127)] == [-2, -2, -1, -1, 0, 0, 1, 1]


# ----------------------------------------------------------------------------- the documented examples


def test_method_md_tie_examples_8_to_2():
    q = torch.tensor([32, 96], dtype=torch.int8)
    assert double_round(q, 8, 2, "half_even").tolist() == [0, 1]  # 0.5 -> 0; 1.5 -> 2 -> clipped to 1
    assert double_round(q, 8, 2, "half_up").tolist() == [1, 1]    # 0.5 -> 1; 1.5 -> 2 -> clipped to 1
    assert double_round(q, 8, 2, "floor").tolist() == [0, 1]
    assert double_round(q, 8, 2).tolist() == [0, 1]  # the default tie rule is half_even (torch.round)


# ----------------------------------------------------------------------------- exhaustive over all codes


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("to_bits", range(2, 9))
def test_exhaustive_int8_matches_fraction_reference_and_properties(to_bits, rule):
    codes = all_codes(8)
    q = torch.tensor(codes, dtype=torch.int8)
    out = double_round(q, 8, to_bits, rule)
    assert out.dtype == torch.int8
    assert torch.equal(q, torch.tensor(codes, dtype=torch.int8)), "the input codes were modified"
    got = out.tolist()
    assert got == [ref_double_round(c, 8, to_bits, rule) for c in codes]
    # range
    qmin, qmax = int_range(to_bits)
    assert (qmin, qmax) == (-(2 ** (to_bits - 1)), 2 ** (to_bits - 1) - 1)
    assert min(got) >= qmin and max(got) <= qmax
    assert min(got) == qmin and max(got) == qmax  # both ends are reached from the full INT8 range
    # monotone non-decreasing in q (codes are in increasing order)
    assert all(a <= b for a, b in zip(got, got[1:]))
    # floor(q / 2^Δ) <= result <= floor + 1
    step = 2 ** (8 - to_bits)
    for c, r in zip(codes, got):
        assert c // step <= r <= c // step + 1
    if rule == "floor":
        assert got == [c // step for c in codes]  # truncation never needs the clip


@pytest.mark.parametrize("rule", RULES)
def test_exhaustive_int16_matches_numpy_reference(rule):
    codes = np.arange(-(2 ** 15), 2 ** 15, dtype=np.int64)
    q = torch.from_numpy(codes.astype(np.int16))
    for to_bits in range(2, 17):
        out = double_round(q, 16, to_bits, rule)
        assert out.dtype == torch.int16
        got = out.numpy().astype(np.int64)
        np.testing.assert_array_equal(got, numpy_double_round(codes, 16, to_bits, rule), err_msg=f"16->{to_bits}")
        assert np.all(np.diff(got) >= 0)  # monotone
        floor = codes // 2 ** (16 - to_bits)
        assert np.all((got - floor >= 0) & (got - floor <= 1))
    assert torch.equal(q, torch.from_numpy(codes.astype(np.int16))), "the input codes were modified"


@pytest.mark.parametrize("rule", RULES)
def test_int8_extremes_do_not_overflow_at_any_shift(rule):
    values = [127, -128, 126, -127, 125, -1, 0, 1, 64, -64, 96, -96, 32, -32]
    q = torch.tensor(values, dtype=torch.int8)
    for to_bits in range(2, 9):
        out = double_round(q, 8, to_bits, rule)
        assert out.dtype == torch.int8
        assert out.tolist() == [ref_double_round(v, 8, to_bits, rule) for v in values], f"8->{to_bits}"


# ----------------------------------------------------------------------------- random, against Fractions


@st.composite
def codes_and_bits(draw):
    from_bits = draw(st.integers(2, 16))
    to_bits = draw(st.integers(2, from_bits))
    qmin, qmax = -(2 ** (from_bits - 1)), 2 ** (from_bits - 1) - 1
    edge = st.sampled_from([qmin, qmin + 1, qmax - 1, qmax, 0, -1, 1])
    values = draw(st.lists(st.one_of(st.integers(qmin, qmax), edge), min_size=1, max_size=40))
    fitting = [d for d in (torch.int8, torch.int16, torch.int32, torch.int64) if torch.iinfo(d).bits >= from_bits]
    dtype = draw(st.sampled_from(fitting))
    rule = draw(st.sampled_from(RULES))
    return values, from_bits, to_bits, dtype, rule


@settings(max_examples=200, deadline=None)
@given(codes_and_bits())
def test_random_codes_match_fraction_reference(case):
    values, from_bits, to_bits, dtype, rule = case
    q = torch.tensor(values, dtype=dtype)
    out = double_round(q, from_bits, to_bits, rule)
    assert out.dtype == dtype
    assert out.shape == q.shape
    assert out.tolist() == [ref_double_round(v, from_bits, to_bits, rule) for v in values]


@settings(max_examples=100, deadline=None)
@given(
    values=st.lists(st.integers(-(2 ** 10), 2 ** 10), min_size=2, max_size=30),
    from_bits=st.integers(2, 8),
    data=st.data(),
)
def test_monotone_in_q_for_random_pairs(values, from_bits, data):
    to_bits = data.draw(st.integers(2, from_bits))
    rule = data.draw(st.sampled_from(RULES))
    q = torch.tensor(sorted(ref_clip(v, from_bits) for v in values), dtype=torch.int16)
    out = double_round(q, from_bits, to_bits, rule).tolist()
    assert all(a <= b for a, b in zip(out, out[1:]))


def test_multidimensional_shape_preserved():
    q = torch.arange(-128, 128, dtype=torch.int8).reshape(4, 8, 2, 4)
    out = double_round(q, 8, 4, "half_up")
    assert out.shape == q.shape
    assert out.flatten().tolist() == [ref_double_round(c, 8, 4, "half_up") for c in range(-128, 128)]


# ----------------------------------------------------------------------------- to_bits == from_bits


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("bits,dtype", [(8, torch.int8), (4, torch.int8), (16, torch.int16), (2, torch.int64)])
def test_same_bits_returns_equal_values_as_a_copy(bits, dtype, rule):
    q = torch.tensor(all_codes(bits), dtype=dtype)
    out = double_round(q, bits, bits, rule)
    assert out.dtype == dtype
    assert torch.equal(out, q)
    out.fill_(0)  # documented as a copy: writing to it leaves the stored codes alone
    assert torch.equal(q, torch.tensor(all_codes(bits), dtype=dtype))


# ----------------------------------------------------------------------------- clip at h first == clip at end


@settings(max_examples=200, deadline=None)
@given(
    unclipped=st.lists(st.integers(-(2 ** 12), 2 ** 12), min_size=1, max_size=40),
    high=st.integers(2, 10),
    data=st.data(),
)
def test_clipping_at_high_bits_first_equals_clipping_only_at_the_end(unclipped, high, data):
    """METHOD.md §1: clip(round(clip_h(n) / 2^Δ)) at l bits == clip(round(n / 2^Δ)) at l bits, n = round(W/s_h)."""
    low = data.draw(st.integers(2, high))
    rule = data.draw(st.sampled_from(RULES))
    stored = torch.tensor([ref_clip(n, high) for n in unclipped], dtype=torch.int16)  # the stored INT-h codes
    got = double_round(stored, high, low, rule).tolist()
    step = 2 ** (high - low)
    only_at_end = [ref_clip(n // step if rule == "floor" else ref_round(Fraction(n, step), rule), low) for n in unclipped]
    assert got == only_at_end


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bool])
def test_non_integer_tensors_are_rejected(dtype):
    q = torch.tensor([1, 0, 1], dtype=dtype)
    with pytest.raises(TypeError):
        double_round(q, 8, 4)


def test_non_tensor_input_is_rejected():
    with pytest.raises(TypeError):
        double_round([1, 2, 3], 8, 4)


@pytest.mark.parametrize("from_bits,to_bits", [(4, 8), (2, 3), (8, 16)])
def test_to_bits_above_from_bits_is_rejected(from_bits, to_bits):
    with pytest.raises(ValueError, match="above"):
        double_round(torch.zeros(3, dtype=torch.int8), from_bits, to_bits)


@pytest.mark.parametrize("rounding", ["nearest", "round", "ceil", "HALF_EVEN", "", None])
def test_unknown_rounding_is_rejected(rounding):
    with pytest.raises(ValueError, match="half_even"):  # the message lists the valid rules
        double_round(torch.zeros(3, dtype=torch.int8), 8, 4, rounding)


@pytest.mark.parametrize("from_bits,to_bits", [(8, 1), (8, 0), (17, 8), (8, 2.5)])
def test_invalid_bit_widths_are_rejected(from_bits, to_bits):
    with pytest.raises(BitWidthError):
        double_round(torch.zeros(3, dtype=torch.int32), from_bits, to_bits)
