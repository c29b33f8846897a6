"""HASB roulette (METHOD.md §6 steps 2–3, paper Alg. 1): probabilities, thresholds, sampling, σ schedule.

Probabilities are checked against values worked out by hand ({2,4,6,8} → 10/20/30/40 %), the samplers
against their probabilities with many seeded draws (a chi-square bound at p = 0.001), and the expected
average bit-width against simulation.
"""
import json
import math

import pytest
import torch

from labkit.hasb.roulette import (expected_average_bits, roulette_probabilities, sample_bits,
                                  sample_with_replacement_rate, sensitive_layers, sensitivity_threshold,
                                  sigma_schedule, uniform_probabilities)

AVERAGES = {"a": 1.0, "b": 2.0, "c": 6.0, "d": 3.0}  # mean 3, median 2.5
CHI2_P001 = {1: 10.83, 2: 13.82, 3: 16.27}  # chi-square quantiles at p = 0.001 by degrees of freedom


def chi_square(draws: list[int], probabilities: dict[int, float]) -> float:
    n = len(draws)
    return sum((draws.count(b) - n * p) ** 2 / (n * p) for b, p in probabilities.items() if p > 0)


def test_documented_example_probabilities():
    probabilities = roulette_probabilities(AVERAGES, candidates=(8, 6, 4, 2))
    sensitive = {8: 0.4, 6: 0.3, 4: 0.2, 2: 0.1}  # b_i / Σ b_j with Σ = 20
    uniform = {8: 0.25, 6: 0.25, 4: 0.25, 2: 0.25}
    expected = {"a": uniform, "b": uniform, "c": sensitive, "d": sensitive}
    assert list(probabilities) == list(expected)
    for name, p in expected.items():
        assert probabilities[name] == pytest.approx(p), name
    assert list(probabilities) == list(AVERAGES) and list(probabilities["c"]) == [8, 6, 4, 2]
    assert roulette_probabilities({"x": 1.0}, candidates=(4, 3, 2))["x"] == pytest.approx({4: 4 / 9, 3: 3 / 9, 2: 2 / 9})
    json.dumps(probabilities)  # plain dicts of numbers


def test_uniform_baseline():
    assert uniform_probabilities(AVERAGES, (8, 4)) == {name: {8: 0.5, 4: 0.5} for name in AVERAGES}
    assert uniform_probabilities(["x"], (4, 3, 2))["x"] == pytest.approx({4: 1 / 3, 3: 1 / 3, 2: 1 / 3})
    with pytest.raises(ValueError, match="distinct"):
        uniform_probabilities(["x"], (4, 4))


def test_threshold_rules_on_hand_made_values():
    assert sensitivity_threshold(AVERAGES) == 3.0
    assert sensitive_layers(AVERAGES) == ["c", "d"]  # "at or above": d equals the mean
    assert sensitivity_threshold(AVERAGES, "quantile", q=0.5) == pytest.approx(2.5)
    assert sensitivity_threshold(AVERAGES, "quantile", q=0.0) == 1.0
    assert sensitivity_threshold(AVERAGES, "quantile", q=1.0) == 6.0
    assert sensitivity_threshold(AVERAGES, "quantile", q=0.25) == pytest.approx(1.75)  # linear interpolation
    assert sensitive_layers(AVERAGES, "quantile", q=0.5) == ["c", "d"]
    assert sensitive_layers(AVERAGES, "quantile", q=0.0) == ["a", "b", "c", "d"]
    assert sensitive_layers(AVERAGES, "top_k", k=1) == ["c"]
    assert sensitive_layers(AVERAGES, "top_k", k=3) == ["b", "c", "d"]
    assert sensitive_layers({"x": 1.0, "y": 5.0, "z": 5.0}, "top_k", k=1) == ["y", "z"]  # ties all count
    top = roulette_probabilities(AVERAGES, rule="top_k", k=1)
    assert [name for name, p in top.items() if p[8] == pytest.approx(0.4)] == ["c"]


@pytest.mark.parametrize("bad", [dict(rule="median"), dict(rule="quantile", q=1.5), dict(rule="top_k"),
                                 dict(rule="top_k", k=0), dict(rule="top_k", k=5)])
def test_bad_threshold_arguments_raise(bad):
    with pytest.raises(ValueError):
        sensitivity_threshold(AVERAGES, **bad)


def test_empty_input_raises():
    with pytest.raises(ValueError, match="empty"):
        sensitivity_threshold({})


def test_sampling_frequencies_match_the_probabilities():
    generator = torch.Generator().manual_seed(0)
    probabilities = roulette_probabilities(AVERAGES)
    many = {f"{name}{i}": p for i in range(2000) for name, p in probabilities.items()}
    draws = [sample_bits(many, generator) for _ in range(3)]
    for name in AVERAGES:  # 6000 draws of each kind of layer
        values = [d[f"{name}{i}"] for d in draws for i in range(2000)]
        assert chi_square(values, probabilities[name]) < CHI2_P001[3], name


def test_inverse_cdf_never_draws_a_zero_probability_bit():
    generator = torch.Generator().manual_seed(1)
    probabilities = {f"l{i}": {8: 0.0, 6: 0.5, 4: 0.0, 2: 0.5} for i in range(4000)}
    values = list(sample_bits(probabilities, generator).values())
    assert set(values) == {6, 2}
    assert chi_square(values, {6: 0.5, 2: 0.5}) < CHI2_P001[1]


def test_same_seed_same_bits():
    probabilities = roulette_probabilities({f"l{i}": float(i) for i in range(50)})
    first = sample_bits(probabilities, torch.Generator().manual_seed(3))
    assert sample_bits(probabilities, torch.Generator().manual_seed(3)) == first
    assert sample_bits(probabilities, torch.Generator().manual_seed(4)) != first
    mixed = sample_with_replacement_rate(8, probabilities, 0.5, torch.Generator().manual_seed(3))
    assert sample_with_replacement_rate(8, probabilities, 0.5, torch.Generator().manual_seed(3)) == mixed


@pytest.mark.parametrize("sigma", [0.1, 0.5, 0.9])
def test_replacement_rate_is_sigma(sigma):
    generator = torch.Generator().manual_seed(2)
    n = 20000
    never_default = {f"l{i}": {8: 0.0, 2: 1.0} for i in range(n)}  # every replacement is visible
    changed = sum(b != 8 for b in sample_with_replacement_rate(8, never_default, sigma, generator).values()) / n
    assert abs(changed - sigma) <= 4 * math.sqrt(sigma * (1 - sigma) / n)
    # with the roulette a replacement may draw the default again: P(change) = σ · (1 − p(default))
    roulette = {f"l{i}": {8: 0.4, 6: 0.3, 4: 0.2, 2: 0.1} for i in range(n)}
    rate = sigma * (1 - 0.4)
    changed = sum(b != 8 for b in sample_with_replacement_rate(8, roulette, sigma, generator).values()) / n
    assert abs(changed - rate) <= 4 * math.sqrt(rate * (1 - rate) / n)


def test_sigma_zero_keeps_defaults_and_defaults_may_differ_per_layer():
    probabilities = roulette_probabilities(AVERAGES)
    defaults = {"a": 8, "b": 6, "c": 4, "d": 2}
    assert sample_with_replacement_rate(defaults, probabilities, 0.0, torch.Generator().manual_seed(0)) == defaults
    assert sample_with_replacement_rate(4, probabilities, 0.0) == dict.fromkeys(AVERAGES, 4)
    with pytest.raises(ValueError, match="sigma"):
        sample_with_replacement_rate(4, probabilities, 1.5)


def test_sigma_schedule():
    # 10 warm-up epochs of σ = 0, then σ·(e+1)/E with e, E counted after warm-up: 0.05, 0.10, ..., 0.5
    values = [sigma_schedule(epoch, 20) for epoch in range(20)]
    assert values[:10] == [0.0] * 10
    assert values[10:] == pytest.approx([0.5 * (e + 1) / 10 for e in range(10)])
    # e and E counted over the whole run instead: σ jumps to 0.5·11/20 when warm-up ends
    assert sigma_schedule(9, 20, count="total") == 0.0
    assert sigma_schedule(10, 20, count="total") == pytest.approx(0.275)
    assert sigma_schedule(19, 20, count="total") == pytest.approx(0.5)
    assert sigma_schedule(0, 4, sigma=0.8, warmup=0) == pytest.approx(0.2)
    for bad in (dict(epoch=20, epochs=20), dict(epoch=-1, epochs=20), dict(epoch=0, epochs=10),
                dict(epoch=12, epochs=20, count="global")):
        with pytest.raises(ValueError):
            sigma_schedule(**bad)


def test_expected_average_bits_by_hand():
    sensitive = {"s": {8: 0.4, 6: 0.3, 4: 0.2, 2: 0.1}}  # a roulette draw averages Σb²/Σb = 120/20 = 6
    uniform = {"u": {8: 0.25, 6: 0.25, 4: 0.25, 2: 0.25}}  # 5
    assert expected_average_bits(sensitive, 2, 1.0) == pytest.approx(6.0)
    assert expected_average_bits(uniform, 2, 1.0) == pytest.approx(5.0)
    assert expected_average_bits({**sensitive, **uniform}, 2, 0.5) == pytest.approx((4.0 + 3.5) / 2)
    assert expected_average_bits({**sensitive, **uniform}, 8, 0.0) == 8.0
    # why low averages are rare (METHOD.md §8): replaced layers pull every pass toward 5-6 bits, so at the
    # final σ = 0.5 even the 2-bit pass averages 3.5 to 4 bits
    assert [expected_average_bits(p, 2, 0.5) for p in (uniform, sensitive)] == pytest.approx([3.5, 4.0])


def test_expected_average_bits_matches_simulation():
    generator = torch.Generator().manual_seed(5)
    probabilities = roulette_probabilities({f"l{i}": float(i % 7) for i in range(20)})
    for default, sigma in ((2, 0.5), (8, 0.3), (4, 0.25)):
        steps = [sample_with_replacement_rate(default, probabilities, sigma, generator) for _ in range(1500)]
        simulated = sum(sum(bits.values()) / len(bits) for bits in steps) / len(steps)
        assert simulated == pytest.approx(expected_average_bits(probabilities, default, sigma), abs=0.05)
