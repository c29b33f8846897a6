"""Exercises: HASB's roulette wheel (METHOD.md §6 step 2, paper Alg. 1).

- :func:`check_roulette_probabilities` — a layer with average HMT t_l ≥ t_m (the mean over layers) samples bit
  b_i with p_i = b_i / Σ b_j, every other layer uniformly;
- :func:`check_roulette_sampler` — the inverse-CDF pick: given ``{bit: p}`` (in the dict's order) and a uniform
  ``u ∈ [0, 1)``, return the first bit whose cumulative probability exceeds u, so bit i owns ``[c_{i−1}, c_i)``;
- :func:`check_roulette_frequencies` — a whole sampler, drawn many times from a seeded ``torch.Generator``:
  the frequencies must pass a chi-square test and the same seed must give the same draws.

References: :mod:`labkit.hasb.roulette` (``roulette_probabilities``, ``_inverse_cdf``, ``sample_bits``).
"""
from __future__ import annotations

import math

import torch
from scipy.stats import chi2

from labkit.exercises.grading import ExerciseFeedback, Failed, call_student, fmt, grader, to_number
from labkit.hasb.roulette import _inverse_cdf, roulette_probabilities

PICK_SIGNATURE = "my_inverse_cdf(probabilities, u) -> bit"
PICK_TODO = "Walk the bits in the dict's order adding p / Σp; return the first bit whose running sum exceeds u."
SAMPLER_SIGNATURE = "my_sampler(probabilities, generator) -> bit"
SAMPLER_TODO = "Draw u = torch.rand((), generator=generator) and return the inverse-CDF pick for u."
PROBS_SIGNATURE = "my_roulette_probabilities(averages, candidates) -> {layer: {bit: p}}"
PROBS_TODO = "Layers with average HMT ≥ the mean get p_i = b_i / Σ b_j; the others 1 / len(candidates)."


def reference_roulette_probabilities(averages: dict[str, float], candidates=(8, 6, 4, 2)) -> dict[str, dict[int, float]]:
    """Alg. 1: sensitive layers (t_l ≥ mean t) get p_i = b_i / Σ b_j; the others sample uniformly."""
    mean = sum(averages.values()) / len(averages)
    total = sum(candidates)
    return {name: {b: (b / total if t >= mean else 1 / len(candidates)) for b in candidates}
            for name, t in averages.items()}


def reference_inverse_cdf(probabilities: dict[int, float], u: float) -> int:
    """The first bit whose cumulative (normalised) probability exceeds ``u``; the last bit with p > 0 if none."""
    total = sum(probabilities.values())
    cumulative = 0.0
    for bit, p in probabilities.items():
        cumulative += p / total
        if u < cumulative:
            return bit
    return [bit for bit, p in probabilities.items() if p > 0][-1]  # the running sum may end just below 1


def reference_roulette_sampler(probabilities: dict[int, float], generator: torch.Generator) -> int:
    """One roulette draw: a uniform from ``generator``, then :func:`reference_inverse_cdf`."""
    return reference_inverse_cdf(probabilities, float(torch.rand((), generator=generator, dtype=torch.float64)))


def _as_bit(value):
    """A student's bit as a plain hashable value (one-element tensors unwrapped, unhashables as their repr)."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    try:
        hash(value)
    except TypeError:
        return repr(value)
    return value


# --------------------------------------------------------------------------------------- inverse-CDF pick

DYADIC = {8: 0.5, 6: 0.25, 4: 0.125, 2: 0.125}   # boundaries 0.5, 0.75, 0.875 are exact in floating point
ASCENDING = {2: 0.25, 4: 0.25, 6: 0.25, 8: 0.25}
SENSITIVE = {8: 0.4, 6: 0.3, 4: 0.2, 2: 0.1}      # the paper's p_i = b_i / Σ b_j for {8,6,4,2}
WITH_ZERO = {8: 0.5, 6: 0.0, 4: 0.5}
WEIGHTS = {8: 8.0, 6: 6.0, 4: 4.0, 2: 2.0}        # not normalised: divide by the total
TENTHS = {b: 0.1 for b in range(2, 12)}           # ten 0.1's add up to 0.9999999999999999
SHORT = {8: 0.4, 6: 0.2, 4: 0.3, 2: 0.1}          # normalised, the running sum ends at 0.9999999999999998
PICK_CASES = (
    [(DYADIC, u) for u in (0.0, 0.3, 0.5, 0.6, 0.75, 0.8, 0.875, 0.99)]
    + [(ASCENDING, u) for u in (0.0, 0.25, 0.7, 0.75)]
    + [(SENSITIVE, u) for u in (0.1, 0.45, 0.65, 0.75, 0.95)]
    + [(WITH_ZERO, u) for u in (0.25, 0.5)]
    + [(WEIGHTS, u) for u in (0.3, 0.5, 0.75, 0.95)]
    + [(TENTHS, 1.0 - 2.0 ** -53), (SHORT, 1.0 - 2.0 ** -53)]
)


def _pick_variant(probabilities, u, less_equal=False, order=None, normalise=True, fallback=True):
    """The inverse-CDF pick with one of the usual mistakes switched on (for the hints)."""
    items = list(probabilities.items()) if order is None else sorted(probabilities.items(), reverse=order == "desc")
    total = sum(probabilities.values()) if normalise else 1.0
    cumulative = 0.0
    for bit, p in items:
        cumulative += p / total
        if (u <= cumulative) if less_equal else (u < cumulative):
            return bit
    return [bit for bit, p in items if p > 0][-1] if fallback else None


_PICK_MISTAKES = (
    (dict(less_equal=True), "A u exactly on a boundary (u = c_i) belongs to the next bit: bit i owns [c_(i−1), c_i), "
                            "so test u < cumulative, not u <= cumulative (that also picks bits with p = 0)."),
    (dict(order="desc"), "You walk the bits sorted high to low; walk them in the dict's own order (the order "
                         "of the candidates), so the same u always maps to the same bit as labkit's sampler."),
    (dict(order="asc"), "You walk the bits sorted low to high; walk them in the dict's own order."),
    (dict(normalise=False), "The probabilities need not add up to 1 (here they are weights 8, 6, 4, 2): divide "
                            "each by their total before accumulating."),
    (dict(fallback=False), "When u (at most 1 − 2^−53 from torch.rand) is not below the last running sum, which "
                           "rounding can leave just under 1 (0.4, 0.2, 0.3, 0.1 divided by their total add up to "
                           "0.9999999999999998), return the last bit with p > 0 instead of falling off the end."),
)


@grader(PICK_SIGNATURE, PICK_TODO)
def check_roulette_sampler(student_fn) -> ExerciseFeedback:
    """Grade the inverse-CDF pick ``student_fn(probabilities, u) -> bit`` (Alg. 1) against labkit's
    ``_inverse_cdf`` on :data:`PICK_CASES`: exact boundaries, p = 0, unnormalised weights, u near 1."""
    answers = []
    for probabilities, u in PICK_CASES:
        case = f"probabilities={probabilities}, u={u!r}"
        got = _as_bit(call_student(student_fn, dict(probabilities), u, case=case, todo=PICK_TODO))
        answers.append((probabilities, u, got, _inverse_cdf(probabilities, u)))
    wrong = [a for a in answers if a[2] != a[3]]
    if not wrong:
        return ExerciseFeedback(True, f"Correct: your pick matches labkit's inverse-CDF sampler on all "
                                      f"{len(answers)} cases (exact boundaries, p = 0, weights, u near 1).")
    probabilities, u, got, expected = wrong[0]
    total, cumulative, edges = sum(probabilities.values()), 0.0, []
    for bit, p in probabilities.items():
        edges.append(f"{bit}: [{fmt(cumulative)}, {fmt(cumulative + p / total)})")
        cumulative += p / total
    hint = next((text for options, text in _PICK_MISTAKES
                 if all(_pick_variant(p, uu, **options) == g for p, uu, g, _ in answers)), "")
    if not hint and all(g == list(p).index(e) for p, _, g, e in wrong):
        hint = "You return the position of the bit in the dict; return the bit itself (its key)."
    if not hint and got is None:
        hint = "Your function returned None: return a bit on every path."
    return ExerciseFeedback(False, f"{len(wrong)} of {len(answers)} picks differ. With probabilities {probabilities} "
                                   f"and u = {u!r} you return {got!r}; expected {expected} (each bit owns "
                                   f"[previous running sum, running sum): {', '.join(edges)}). {hint}".rstrip(),
                            f"probabilities={probabilities}, u={u!r}", expected, got)


# ------------------------------------------------------------------------------------ empirical frequencies

FREQUENCY_CASES = (SENSITIVE, ASCENDING, WITH_ZERO, {4: 0.2, 3: 0.3, 2: 0.5})


@grader(SAMPLER_SIGNATURE, SAMPLER_TODO)
def check_roulette_frequencies(student_fn, draws: int = 10_000, seed: int = 0,
                               significance: float = 1e-4) -> ExerciseFeedback:
    """Draw ``student_fn(probabilities, generator)`` ``draws`` times per case from ``Generator().manual_seed(seed)``;
    fail when a chi-square test rejects the frequencies at ``significance``, a p = 0 bit or a non-candidate is
    drawn, or the same seed does not repeat the draws."""
    for probabilities in FREQUENCY_CASES:
        case = f"probabilities={probabilities}"
        generator = torch.Generator().manual_seed(seed)
        samples = [_as_bit(call_student(student_fn, dict(probabilities), generator, case=case, todo=SAMPLER_TODO))
                   for _ in range(draws)]
        bad = [s for s in samples if s not in probabilities or probabilities[s] == 0]
        if bad:
            strange = bad[0]
            why = "has probability 0" if strange in probabilities else f"is not one of the bits {list(probabilities)}"
            raise Failed(f"With {case} your sampler drew {strange!r}, which {why}.", case, list(probabilities), strange)
        again = torch.Generator().manual_seed(seed)
        repeat = [_as_bit(call_student(student_fn, dict(probabilities), again, case=case)) for _ in range(50)]
        if repeat != samples[:50]:
            raise Failed(f"The same seed gave different draws ({case}): draw u from the generator you are given, "
                         "u = torch.rand((), generator=generator), so a seed reproduces the bits.", case)
        total = sum(probabilities.values())
        live = [b for b, p in probabilities.items() if p > 0]
        counts = {b: samples.count(b) for b in live}
        expected = {b: draws * probabilities[b] / total for b in live}
        statistic = sum((counts[b] - expected[b]) ** 2 / expected[b] for b in live)
        p_value = float(chi2.sf(statistic, len(live) - 1)) if len(live) > 1 else 1.0
        if p_value < significance:
            worst = max(live, key=lambda b: abs(counts[b] - expected[b]) / math.sqrt(expected[b]))
            table = ", ".join(f"{b}: {counts[b] / draws:.1%} (expected {probabilities[b] / total:.0%})" for b in live)
            raise Failed(f"Over {draws} draws with {case} your frequencies are {table}; chi-square = "
                         f"{statistic:.1f} with {len(live) - 1} degrees of freedom, p = {p_value:.2g}: bit {worst} "
                         f"is drawn {counts[worst] / draws:.1%} of the time, expected {probabilities[worst] / total:.0%}.",
                         case, {b: round(expected[b] / draws, 4) for b in live},
                         {b: round(counts[b] / draws, 4) for b in live})
    return ExerciseFeedback(True, f"Correct: {draws} seeded draws per case match the roulette probabilities "
                                  f"(chi-square test at {significance:g}) in all {len(FREQUENCY_CASES)} cases, "
                                  f"and the same seed repeats the draws.")


# ------------------------------------------------------------------------------------------- probabilities

def _show(row: dict) -> str:
    return "{" + ", ".join(f"{b}: {fmt(p)}" for b, p in row.items()) + "}"


PROBABILITY_CASES = (
    ({"layer1.0.conv1": 0.2, "layer1.0.conv2": 3.0, "layer2.0.conv1": 0.7, "layer3.0.conv2": 1.4}, (8, 6, 4, 2)),
    ({"a": 1.0, "b": 2.0, "c": 3.0}, (4, 3, 2)),   # b sits exactly at the mean: sensitive (t_l ≥ t_m)
)


@grader(PROBS_SIGNATURE, PROBS_TODO)
def check_roulette_probabilities(student_fn) -> ExerciseFeedback:
    """Grade ``student_fn(averages, candidates) -> {layer: {bit: p}}`` (Alg. 1) against
    ``labkit.hasb.roulette.roulette_probabilities`` (threshold: the mean)."""
    for averages, candidates in PROBABILITY_CASES:
        mean = sum(averages.values()) / len(averages)
        case = f"averages={averages}, candidates={candidates} (mean {fmt(mean)})"
        got = call_student(student_fn, dict(averages), tuple(candidates), case=case, todo=PROBS_TODO)
        if not isinstance(got, dict) or set(got) != set(averages):
            raise Failed(f"Return a dict with one entry per layer {list(averages)}; you returned "
                         f"{type(got).__name__} {got!r} ({case}).", case, list(averages), got)
        for name, expected in roulette_probabilities(averages, candidates).items():
            row = got[name]
            if not isinstance(row, dict) or set(row) != set(candidates):
                raise Failed(f"For layer {name!r} return {{bit: p}} over the candidates {list(candidates)}; you "
                             f"returned {row!r} ({case}).", case, expected, row)
            values = {b: to_number(row[b], case) for b in candidates}
            if all(math.isclose(values[b], expected[b], rel_tol=1e-9, abs_tol=1e-12) for b in candidates):
                continue
            sensitive = averages[name] >= mean
            weighted = {b: b / sum(candidates) for b in candidates}
            uniform = {b: 1 / len(candidates) for b in candidates}
            if sensitive and values == uniform and averages[name] == mean:
                hint = "A layer exactly at the mean is sensitive: the test is t_l ≥ t_m, not t_l > t_m."
            elif values == (uniform if sensitive else weighted):
                hint = "You swapped the two kinds: the sensitive layers (t_l ≥ mean) get p_i = b_i / Σ b_j."
            elif all(math.isclose(values[b], b, rel_tol=1e-9) for b in candidates):
                hint = f"p_i is b_i divided by Σ b_j = {sum(candidates)}, so the probabilities add up to 1."
            elif math.isclose(sum(values.values()), 1.0, rel_tol=1e-9) and values[max(candidates)] < values[min(candidates)]:
                hint = "Sensitive layers lean to high bits: p_i ∝ b_i, not ∝ 1/b_i."
            else:
                hint = "Sensitive layers (t_l ≥ mean): p_i = b_i / Σ b_j; the others 1/len(candidates)."
            kind = "sensitive" if sensitive else "not sensitive"
            raise Failed(f"Layer {name!r} (t = {fmt(averages[name])}, mean {fmt(mean)}: {kind}) with candidates "
                         f"{list(candidates)}: you return {_show(values)}; expected {_show(expected)}. {hint}",
                         f"layer {name!r}", expected, values)
    return ExerciseFeedback(True, f"Correct: your probabilities match labkit's roulette_probabilities in all "
                                  f"{len(PROBABILITY_CASES)} cases (including a layer exactly at the mean).")
