"""ALRS (METHOD.md §5, paper Eq. 6–7): the per-precision learning-rate factors of the quantization scales.

The expected values are the ones METHOD.md §5 prints ({8,6,4,2}: 1, 0.1, 0.01, 0.001; {4,3,2}: 1, 0.5, 0.1),
the reference code's geometric rule 0.1^k, and small examples of the floored gradient term worked out by hand.
"""
import io
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import labkit
from labkit.errors import LabkitError
from labkit.train.alrs import AdaptiveScaleLR, gradient_term

# Written out by hand from METHOD.md §5 (Eq. 7 as printed there), high bit first.
EQ7_PRINTED = {
    (8, 6, 4, 2): [1.0, 0.1, 0.01, 0.001],
    (4, 3, 2): [1.0, 0.5, 0.1],
}
# Eq. 7 worked by hand for every Δ from 0 to 6: even Δ → 10^(−Δ/2), odd Δ → 5·10^(−(Δ+1)/2).
EQ7_BY_HAND = {
    (8, 7, 6, 5, 4, 3, 2): [1.0, 0.5, 0.1, 0.05, 0.01, 0.005, 0.001],
    (6, 3): [1.0, 0.05],
    (8,): [1.0],
}


@pytest.mark.parametrize("bits", list(EQ7_PRINTED) + list(EQ7_BY_HAND))
def test_eq7_factors_match_method_md(bits):
    expected = {**EQ7_PRINTED, **EQ7_BY_HAND}[bits]
    factors = labkit.alrs_factors(bits)
    assert list(factors) == list(bits), "one factor per bit-width, high to low"
    assert [factors[b] for b in bits] == pytest.approx(expected, rel=1e-12)


def test_eq7_is_the_default_rule_and_order_of_the_input_does_not_matter():
    assert labkit.alrs_factors((2, 8, 4, 6)) == pytest.approx(labkit.alrs_factors((8, 6, 4, 2), rule="eq7"))
    assert labkit.alrs_factors((2, 8, 4, 6)) == pytest.approx({8: 1.0, 6: 0.1, 4: 0.01, 2: 0.001})


@pytest.mark.parametrize("bits", [(8, 6, 4, 2), (4, 3, 2), (8, 7, 6, 5, 4, 3, 2), (5,)])
def test_geometric_rule_is_a_tenth_per_position(bits):
    factors = labkit.alrs_factors(bits, rule="geometric")
    for position, b in enumerate(bits):
        assert factors[b] == pytest.approx(10.0 ** (-position), rel=1e-12)


def test_geometric_differs_from_eq7_on_odd_gaps():
    assert labkit.alrs_factors((4, 3, 2), rule="geometric") == pytest.approx({4: 1.0, 3: 0.1, 2: 0.01})


def test_rule_none_is_all_ones():
    assert labkit.alrs_factors((8, 6, 4, 2), rule="none") == {8: 1.0, 6: 1.0, 4: 1.0, 2: 1.0}


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="rule"):
        labkit.alrs_factors((8, 4), rule="cubic")
    with pytest.raises(LabkitError):
        labkit.alrs_factors((8, 1))
    with pytest.raises(ValueError, match="floor"):
        AdaptiveScaleLR((8, 4), floor=0.0)
    with pytest.raises(ValueError, match="floor"):
        AdaptiveScaleLR((8, 4), floor=-0.5)


# ------------------------------------------------------------------------------------------ gradient term
def test_multiplier_without_gradient_term_is_eta():
    alrs = AdaptiveScaleLR((4, 3, 2))
    assert [alrs.multiplier(b, [torch.tensor([0.9])]) for b in (4, 3, 2)] == pytest.approx([1.0, 0.5, 0.1])


def test_gradient_term_by_hand():
    # Three scale tensors of one precision. Per tensor: clip each gradient to [-1, 1], take max |.|, cap at 1.
    grads = [torch.tensor([0.3, -0.5]), torch.tensor([2.0, 0.1]), torch.tensor([-0.05])]
    # 0.5, 1.0 (2.0 clipped), 0.05 → mean 0.5166…
    g = (0.5 + 1.0 + 0.05) / 3
    assert gradient_term(grads) == pytest.approx(g, rel=1e-6)
    alrs = AdaptiveScaleLR((8, 6, 4, 2), use_gradient_term=True, floor=0.1)
    # λ_6 / λ = η_6 · max(1 − G, floor) = 0.1 · (1 − 0.51667)
    assert alrs.multiplier(6, grads) == pytest.approx(0.1 * (1 - g), rel=1e-6)
    assert alrs.last_term[6] == pytest.approx(g, rel=1e-6)


def test_gradient_term_floor_by_hand():
    # Every gradient ≥ 1: G = 1, so 1 − G = 0 and the floor keeps the rate positive.
    grads = [torch.tensor([5.0]), torch.tensor([-1e6, 0.0])]
    alrs = AdaptiveScaleLR((4, 3, 2), use_gradient_term=True, floor=0.25)
    assert alrs.multiplier(3, grads) == pytest.approx(0.5 * 0.25, rel=1e-9)
    assert alrs.multiplier(4, grads) == pytest.approx(1.0 * 0.25, rel=1e-9)


def test_gradient_term_ignores_missing_gradients():
    grads = [None, torch.tensor([0.2]), torch.empty(0)]
    assert gradient_term(grads) == pytest.approx(0.2, rel=1e-6)
    alrs = AdaptiveScaleLR((8, 4), use_gradient_term=True)
    assert alrs.multiplier(8, []) == pytest.approx(1.0), "no gradients: G = 0, the factor alone"


finite_or_huge = st.floats(allow_nan=False, allow_infinity=True, width=32)


@settings(max_examples=150, deadline=None)
@given(
    values=st.lists(st.lists(finite_or_huge, min_size=1, max_size=5), min_size=1, max_size=6),
    scale=st.sampled_from([1e-6, 1e-3, 1.0, 1e3, 1e30]),
    bits=st.sampled_from([8, 6, 4, 2]),
    floor=st.sampled_from([1e-3, 0.1, 0.5, 1.0]),
    rule=st.sampled_from(["eq7", "geometric"]),
)
def test_gradient_term_never_gives_a_rate_at_or_below_zero(values, scale, bits, floor, rule):
    grads = [torch.tensor(v, dtype=torch.float32) * scale for v in values]
    alrs = AdaptiveScaleLR((8, 6, 4, 2), rule=rule, use_gradient_term=True, floor=floor)
    eta = labkit.alrs_factors((8, 6, 4, 2), rule)[bits]
    m = alrs.multiplier(bits, grads)
    assert math.isfinite(m)
    assert m > 0.0
    assert eta * floor * (1 - 1e-9) <= m <= eta * (1 + 1e-9)
    # And the printed Eq. 6 relation, floored: m = η·max(1 − G, floor) with G from the clipped max-abs values.
    per_tensor = [min(max(min(abs(float(x)), 1.0) for x in g.flatten()), 1.0) for g in grads]
    g_hand = sum(per_tensor) / len(per_tensor)
    assert m == pytest.approx(eta * max(1.0 - g_hand, floor), rel=1e-5, abs=1e-12)


# --------------------------------------------------------------------------------------------- state dict
def test_state_dict_round_trip_through_a_weights_only_file():
    alrs = AdaptiveScaleLR((8, 6, 4, 2), rule="geometric", use_gradient_term=True, floor=0.2)
    alrs.multiplier(8, [torch.tensor([0.4])])
    alrs.multiplier(2, [torch.tensor([0.9, -0.1])])
    buffer = io.BytesIO()
    torch.save(alrs.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)

    other = AdaptiveScaleLR((4, 3, 2))  # different settings, all overwritten by the state
    other.load_state_dict(state)
    assert other.factors == alrs.factors
    assert other.rule == "geometric" and other.use_gradient_term is True and other.floor == 0.2
    assert other.last_term == pytest.approx({8: 0.4, 2: 0.9})
    grads = [torch.tensor([0.3])]
    for b in (8, 6, 4, 2):
        assert other.multiplier(b, grads) == alrs.multiplier(b, grads)
