"""Measurements that answer the ICLR reviewers' HASB questions (METHOD.md §8), as plain functions.

- the HMT distribution per layer: :func:`labkit.hasb.hmt_distribution`;
- which bit each layer gets with and without HASB at equal average bits: :func:`allocation_comparison`;
- how much accuracy varies among SubNets with the same average bits: :func:`accuracy_spread`;
- the ILP SubNets at equal average bits and at equal BitOPs to a uniform model: :func:`equal_cost_subnets`.
Records are those of :func:`labkit.hasb.sweep` / ``labkit search`` (``search.csv`` rows read back work too).
"""
from __future__ import annotations

import json
import statistics
from collections import defaultdict


def _allocation(record) -> dict[str, int]:
    allocation = record["allocation"]
    return {k: int(v) for k, v in (json.loads(allocation) if isinstance(allocation, str) else allocation).items()}


def _best_at(records, avg_bits: float, tolerance: float = 1e-6) -> dict:
    matching = [r for r in records if abs(float(r["avg_bits"]) - avg_bits) <= tolerance]
    if not matching:
        reached = sorted({round(float(r["avg_bits"]), 4) for r in records})
        raise ValueError(f"no SubNet with {avg_bits} average bits; the records reach {reached}")
    return max(matching, key=lambda r: float(r["accuracy"]))


def allocation_comparison(with_hasb, without_hasb, avg_bits: float) -> list[dict]:
    """Per layer, the bits of the most accurate SubNet at ``avg_bits`` of each SuperNet, side by side.

    Returns rows ``{"layer", "with_hasb", "without_hasb"}`` in layer order, plus a last row ``"accuracy"``.
    """
    best_a, best_b = _best_at(with_hasb, avg_bits), _best_at(without_hasb, avg_bits)
    a, b = _allocation(best_a), _allocation(best_b)
    rows = [{"layer": name, "with_hasb": a[name], "without_hasb": b.get(name)} for name in a]
    rows.append({"layer": "accuracy", "with_hasb": float(best_a["accuracy"]), "without_hasb": float(best_b["accuracy"])})
    return rows


def accuracy_spread(records) -> list[dict]:
    """For every average bit-width reached, the SubNets' accuracy: count, min, max, max − min, mean, stdev."""
    by_average = defaultdict(dict)
    for record in records:  # the same SubNet can be listed under several targets: count it once
        key = tuple(sorted(_allocation(record).items()))
        by_average[round(float(record["avg_bits"]), 6)][key] = float(record["accuracy"])
    rows = []
    for average in sorted(by_average):
        values = list(by_average[average].values())
        rows.append({"avg_bits": average, "subnets": len(values), "min": min(values), "max": max(values),
                     "range": max(values) - min(values), "mean": statistics.fmean(values),
                     "stdev": statistics.stdev(values) if len(values) > 1 else 0.0})
    return rows


def sampling_gap(candidates) -> dict:
    """How different HASB's roulette is from uniform sampling for a candidate set (the reviewers' {8,4} case).

    Returns the expected bit-width a sensitive layer draws (``p_i = b_i / Σ b_j``, Alg. 1), the expected
    bit-width of a uniform draw, their gap in bits, and the probability of the top bit under each.
    """
    from labkit.hasb.roulette import roulette_probabilities

    probabilities = roulette_probabilities({"sensitive": 1.0, "other": 0.0}, candidates, rule="mean")
    sensitive, uniform = probabilities["sensitive"], probabilities["other"]
    top = max(sensitive)
    expected_sensitive = sum(b * p for b, p in sensitive.items())
    expected_uniform = sum(b * p for b, p in uniform.items())
    return {"candidates": tuple(sorted(sensitive, reverse=True)), "expected_sensitive": expected_sensitive,
            "expected_uniform": expected_uniform, "gap_bits": expected_sensitive - expected_uniform,
            "top_bit_sensitive": sensitive[top], "top_bit_uniform": uniform[top]}


def equal_cost_subnets(scores, costs, reference_bits: int, candidates=(8, 6, 4, 2), *, weights=None, held=None,
                       exact_average: bool = False) -> dict[str, dict]:
    """The ILP SubNets to set against uniform ``reference_bits``: at equal average bits *and* at equal BitOPs.

    Equal average bits is what the paper compares at (Alg. 2: mean(b) = ω), but it is not a cost: the ILP puts
    the sensitive layers at high bits, and a layer's BitOPs grow with b², so at the same mean the SubNet can cost
    much more than the uniform model (issue 10: the lab's 3.00-bit SubNet costs 1.28× uniform 3-bit). So:

    - ``"uniform"``: every searched layer at ``reference_bits`` (need not be a candidate: then it is only a cost
      reference, ``available`` False);
    - ``"equal_avg_bits"``: :func:`labkit.hasb.search.search_bits` with ``avg_bits=reference_bits`` (mean ≤ ω, or
      ``== ω`` with ``exact_average``);
    - ``"equal_bitops"``: ``search_bits`` with no bound on the mean and ``bitops_budget`` = the uniform model's
      BitOPs (``Σ MACs·b²``, FP32 layers of ``costs`` at 32 bits and ``held`` layers at their bit on both sides).

    Each entry: ``allocation`` (searched layers, then held ones), ``avg_bits`` (mean over the searched layers,
    ``weights`` as in ``search_bits``), ``bitops``, ``bitops_ratio`` (to uniform), ``size`` (weight bits),
    ``objective`` (Σ score·bits) and ``available`` (every bit is a candidate, so the SuperNet can run it); the
    result also holds ``bitops_budget``, to pass on to ``neighbour_subnets``/``sweep`` for more SubNets at that
    cost. ``scores``/``costs``/``held`` as in ``search_bits``; ``costs`` is needed
    (``labkit.hasb.cost.layer_costs(model, example_input)``).
    """
    from labkit.hasb.cost import total_bitops, total_size_bits
    from labkit.hasb.search import search_bits
    from labkit.quant.ranges import check_bit_set, check_bits

    if costs is None:
        raise ValueError("equal_cost_subnets needs the layers' costs: pass "
                         "costs=labkit.hasb.cost.layer_costs(model, example_input).")
    reference_bits = check_bits(reference_bits, name="reference_bits")
    bit_set = check_bit_set(candidates)
    held = dict(held or {})
    names = list(scores)
    weight = {name: 1.0 for name in names} if weights is None else {name: float(weights[name]) for name in names}

    def describe(allocation, uniform_bitops=None):
        bitops = total_bitops(costs, allocation)
        return {"allocation": dict(allocation),
                "avg_bits": sum(weight[n] * allocation[n] for n in names) / sum(weight.values()),
                "bitops": bitops, "bitops_ratio": bitops / uniform_bitops if uniform_bitops else 1.0,
                "size": total_size_bits(costs, allocation),
                "objective": sum(float(scores[n]) * allocation[n] for n in names),
                "available": all(allocation[n] in bit_set for n in names)}

    uniform = describe({**dict.fromkeys(names, reference_bits), **held})
    budget = uniform["bitops"]
    options = dict(costs=costs, weights=weights, held=held)
    at_average = search_bits(scores, bit_set, float(reference_bits), exact_average=exact_average, **options)
    at_bitops = search_bits(scores, bit_set, None, bitops_budget=budget, **options)
    return {"uniform": uniform, "equal_avg_bits": describe(at_average, budget),
            "equal_bitops": describe(at_bitops, budget), "bitops_budget": budget}
