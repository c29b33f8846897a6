"""The reviewer-question measurements on hand-made search records."""
import json

import pytest

from labkit.hasb.reviewers import accuracy_spread, allocation_comparison


def record(allocation, accuracy):
    return {"allocation": allocation, "avg_bits": sum(allocation.values()) / len(allocation), "accuracy": accuracy}


A = [record({"a": 2, "b": 4}, 50.0), record({"a": 4, "b": 2}, 60.0), record({"a": 4, "b": 4}, 70.0),
     record({"a": 4, "b": 2}, 60.0)]  # the last one repeats a SubNet listed under another target
B = [record({"a": 2, "b": 4}, 55.0), record({"a": 4, "b": 2}, 52.0)]


def test_allocation_comparison_takes_the_most_accurate_subnet_of_each_supernet():
    rows = allocation_comparison(A, B, 3.0)
    assert rows[:-1] == [{"layer": "a", "with_hasb": 4, "without_hasb": 2}, {"layer": "b", "with_hasb": 2, "without_hasb": 4}]
    assert rows[-1] == {"layer": "accuracy", "with_hasb": 60.0, "without_hasb": 55.0}


def test_allocation_comparison_reads_csv_style_records_and_names_missing_averages():
    csv_rows = [dict(r, allocation=json.dumps(r["allocation"]), accuracy=str(r["accuracy"]), avg_bits=str(r["avg_bits"]))
                for r in A]
    assert allocation_comparison(csv_rows, B, 3.0)[-1]["with_hasb"] == 60.0
    with pytest.raises(ValueError, match="reach"):
        allocation_comparison(A, B, 5.0)


def test_accuracy_spread_counts_each_subnet_once():
    rows = accuracy_spread(A)
    assert rows[0] == {"avg_bits": 3.0, "subnets": 2, "min": 50.0, "max": 60.0, "range": 10.0, "mean": 55.0,
                       "stdev": pytest.approx(7.0710678)}
    assert rows[1]["avg_bits"] == 4.0 and rows[1]["subnets"] == 1 and rows[1]["stdev"] == 0.0


# ------------------------------------------------------------------ equal BitOPs next to equal average bits


def brute_force(scores, costs, candidates, keep):
    """The best objective Σ score·bits over every allocation of the scored layers that ``keep(allocation)`` accepts."""
    import itertools

    best, names = None, list(scores)
    for bits in itertools.product(candidates, repeat=len(names)):
        allocation = dict(zip(names, bits))
        if keep(allocation):
            value = sum(scores[n] * allocation[n] for n in names)
            best = value if best is None else max(best, value)
    return best


def test_equal_cost_subnets_match_brute_force():
    from labkit.hasb.cost import FLOAT_BITS, LayerCost
    from labkit.hasb.reviewers import equal_cost_subnets

    scores = {"a": 5.0, "b": 3.0, "c": 0.5, "d": 0.2, "e": 0.1}
    macs = {"a": 4000, "b": 1000, "c": 300, "d": 2500, "e": 800}
    costs = {"stem": LayerCost(100, 27), **{n: LayerCost(m, m // 10) for n, m in macs.items()}, "fc": LayerCost(64, 64)}
    candidates, results = (8, 6, 4, 2), {}
    for reference in (4, 3):  # 3 is no candidate: a cost reference only
        result = equal_cost_subnets(scores, costs, reference, candidates)
        uniform_bitops = sum(m * reference ** 2 for m in macs.values()) + (100 + 64) * FLOAT_BITS ** 2  # by hand
        assert result["uniform"]["bitops"] == result["bitops_budget"] == uniform_bitops
        assert result["uniform"]["available"] == (reference in candidates)
        assert result["uniform"]["avg_bits"] == reference

        def bitops(allocation):
            return sum(macs[n] * b ** 2 for n, b in allocation.items()) + (100 + 64) * FLOAT_BITS ** 2

        at_bits, at_cost = result["equal_avg_bits"], result["equal_bitops"]
        assert at_bits["avg_bits"] <= reference + 1e-12
        assert at_bits["objective"] == pytest.approx(brute_force(
            scores, costs, candidates, lambda a: sum(a.values()) / len(a) <= reference + 1e-12))
        assert at_cost["bitops"] == bitops(at_cost["allocation"]) <= uniform_bitops
        assert at_cost["objective"] == pytest.approx(brute_force(
            scores, costs, candidates, lambda a: bitops(a) <= uniform_bitops))
        assert at_bits["bitops_ratio"] == pytest.approx(bitops(at_bits["allocation"]) / uniform_bitops)
        assert at_cost["bitops_ratio"] <= 1.0
        results[reference] = result
    # the most sensitive layer is also the most expensive: at 4 average bits the ILP SubNet costs 1.55× uniform
    # 4-bit (4000·64 + 1000·36 + 3600·4 + 164·1024 vs 8600·16 + 164·1024), and at equal BitOPs it is another one
    assert results[4]["equal_avg_bits"]["bitops_ratio"] == pytest.approx(
        (4000 * 64 + 1000 * 36 + 3600 * 4 + 164 * 1024) / (8600 * 16 + 164 * 1024))
    assert results[4]["equal_bitops"]["allocation"] != results[4]["equal_avg_bits"]["allocation"]


def test_equal_cost_subnets_count_held_layers_at_their_bit():
    from labkit.hasb.cost import LayerCost
    from labkit.hasb.reviewers import equal_cost_subnets

    scores = {"a": 2.0, "b": 1.0}
    costs = {"a": LayerCost(100, 10), "b": LayerCost(100, 10), "pw": LayerCost(1000, 100)}
    result = equal_cost_subnets(scores, costs, 4, (8, 4, 2), held={"pw": 8})
    assert result["uniform"]["allocation"] == {"a": 4, "b": 4, "pw": 8}
    assert result["bitops_budget"] == 100 * 16 * 2 + 1000 * 64
    assert result["equal_bitops"]["allocation"]["pw"] == 8
    with pytest.raises(ValueError, match="costs"):
        equal_cost_subnets(scores, None, 4)
