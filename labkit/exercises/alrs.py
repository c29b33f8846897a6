"""Exercise: the ALRS learning-rate factor η_b of the quantization scales (METHOD.md §5, paper Eq. 7).

With Δ = h − b (h the highest bit-width of the set):

    η_b = 10^(−Δ/2)            if Δ is even   ({8,6,4,2} → 1, 0.1, 0.01, 0.001)
    η_b = 5 · 10^(−(Δ+1)/2)    if Δ is odd    ({4,3,2}   → 1, 0.5, 0.1)

The grader compares ``student_fn(bits, high_bits)`` with :func:`labkit.train.alrs.alrs_factors` (``rule="eq7"``).
"""
from __future__ import annotations

import math

from labkit.exercises.grading import ExerciseFeedback, Failed, call_student, fmt, grader, to_number
from labkit.train.alrs import alrs_factors

SIGNATURE = "my_alrs_factor(bits, high_bits) -> float"
TODO = "With Δ = high_bits − bits return 10^(−Δ/2) for even Δ and 5·10^(−(Δ+1)/2) for odd Δ."
BIT_SETS = ((8, 6, 4, 2), (4, 3, 2), (8, 7, 6, 5, 4, 3, 2), (16, 8, 5, 2))


def reference_alrs_factor(bits: int, high_bits: int) -> float:
    """Eq. 7: η_b = 10^(−Δ/2) for even Δ = h − b, else 5 · 10^(−(Δ+1)/2)."""
    delta = high_bits - bits
    return 10.0 ** (-delta / 2) if delta % 2 == 0 else 5.0 * 10.0 ** (-(delta + 1) / 2)


_MISTAKES = (  # (wrong formula of Δ, hint); checked on every graded (bits, h) pair
    (lambda d: 10.0 ** (-d / 2),
     "For odd Δ Eq. 7 is 5·10^(−(Δ+1)/2) (Δ = 1 → 0.5), not 10^(−Δ/2) (Δ = 1 → 0.316): treat odd Δ separately."),
    (lambda d: 0.1 ** d,
     "You use 0.1^Δ: the exponent is −Δ/2, so the factor drops ×0.1 per two bits, not per bit (for a step-one "
     "bit set this is the authors' code's geometric rule 0.1^k, not Eq. 7)."),
    (lambda d: 10.0 ** (d / 2) if d % 2 == 0 else 5.0 * 10.0 ** ((d - 1) / 2),
     "Your factor grows as the precision drops: Δ = high_bits − bits is ≥ 0 and η_b ≤ 1 (the lower the precision, "
     "the smaller its scales' learning rate)."),
    (lambda d: 10.0 ** (-d / 2) if d % 2 == 0 else 5.0 * 10.0 ** (-(d - 1) / 2),
     "Odd Δ: the exponent is −(Δ+1)/2, not −(Δ−1)/2 (Δ = 1 → 5·10^−1 = 0.5)."),
    (lambda d: 10.0 ** (-d / 2) if d % 2 == 0 else 0.5 * 10.0 ** (-(d - 1) / 2),
     "Odd Δ: you give 0.5·10^(−(Δ−1)/2), which is right only at Δ = 1; Eq. 7 is 5·10^(−(Δ+1)/2) (Δ = 3 → 0.05)."),
)


@grader(SIGNATURE, TODO)
def check_alrs_factor(student_fn, bit_sets=BIT_SETS) -> ExerciseFeedback:
    """Grade ``student_fn(bits, high_bits) -> η_b`` (Eq. 7) on every bit of each set in ``bit_sets``."""
    answers = []  # (bit_set, bits, high, delta, got, expected)
    for bit_set in bit_sets:
        factors = alrs_factors(bit_set, rule="eq7")
        high = max(factors)
        for bits, expected in factors.items():
            case = f"bits={bits}, high_bits={high} (bit set {list(factors)})"
            got = call_student(student_fn, bits, high, case=case, todo=TODO)
            if isinstance(got, dict):
                raise Failed(f"Return one number η_b for the given bits, not a dict ({case}).", case, expected, got)
            answers.append((list(factors), bits, high, high - bits, to_number(got, case), expected))
    wrong = [a for a in answers if not math.isclose(a[4], a[5], rel_tol=1e-9, abs_tol=1e-15)]
    if not wrong:
        return ExerciseFeedback(True, f"Correct: your η_b matches labkit's alrs_factors(rule='eq7') at all "
                                      f"{len(answers)} bit-widths of {len(bit_sets)} bit sets (Δ from 0 to "
                                      f"{max(a[3] for a in answers)}).")
    bit_set, bits, high, delta, got, expected = wrong[0]
    formula = f"10^(−{delta}/2)" if delta % 2 == 0 else f"5·10^(−({delta}+1)/2)"
    hint = next((text for wrong_formula, text in _MISTAKES
                 if all(math.isclose(a[4], wrong_formula(a[3]), rel_tol=1e-9, abs_tol=1e-15) for a in answers)), "")
    if not hint and delta == 0:
        hint = "At the highest precision (Δ = 0) the factor is 1: those scales keep the base learning rate λ."
    if not hint:
        parity = "even" if delta % 2 == 0 else "odd"
        hint = f"Check the {parity}-Δ branch."
    return ExerciseFeedback(False, f"{len(wrong)} of {len(answers)} factors differ. In the bit set {bit_set}, at "
                                   f"bits={bits} (h={high}, Δ={delta}) you return {fmt(got)}; expected "
                                   f"{formula} = {fmt(expected)}. {hint}",
                            f"bits={bits}, high_bits={high}", expected, got)
