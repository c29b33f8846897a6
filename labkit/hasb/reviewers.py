"""Measurements that answer the ICLR reviewers' HASB questions (METHOD.md §8), as plain functions.

- the HMT distribution per layer: :func:`labkit.hasb.hmt_distribution`;
- which bit each layer gets with and without HASB at equal average bits: :func:`allocation_comparison`;
- how much accuracy varies among SubNets with the same average bits: :func:`accuracy_spread`.
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
