"""Exercise: the second rounding of Double Rounding (METHOD.md §1, paper Eq. 2), graded on every INT-h code.

The grader is :func:`labkit.rounding_study.check_second_rounding_exercise` (notebook 01); this module adds
the callable check and the instructor's solution.
"""
from __future__ import annotations

import torch

from labkit.exercises.grading import ExerciseFeedback, not_callable
from labkit.rounding_study import check_second_rounding_exercise

SIGNATURE = "my_second_rounding(q_h, high_bits, low_bits) -> Tensor"


def reference_second_rounding(q_h: torch.Tensor, high_bits: int, low_bits: int) -> torch.Tensor:
    """Eq. 2: ``clip(round(q_h / 2^Δ), -2^(l-1), 2^(l-1) - 1)``, Δ = h − l, ties to even (``torch.round``)."""
    qmin, qmax = -(2 ** (low_bits - 1)), 2 ** (low_bits - 1) - 1
    return torch.round(q_h.double() / 2 ** (high_bits - low_bits)).clamp(qmin, qmax).to(q_h.dtype)


def check_second_rounding(student_fn, high_bits: int = 8, low_bits=(6, 4, 2),
                          rounding: str = "half_even") -> ExerciseFeedback:
    """Grade ``student_fn(q_h, high_bits, low_bits) -> q_l`` on every INT-h code (Eq. 2); see
    :func:`labkit.rounding_study.check_second_rounding_exercise`, which this calls after checking that
    ``student_fn`` is a function (and with a ``None`` result reported as a forgotten ``return``)."""
    if not callable(student_fn):
        return not_callable(student_fn, SIGNATURE, "check_second_rounding")

    def returns_something(*args):
        result = student_fn(*args)
        if result is None:
            raise TypeError("it returned None: did you forget `return`?")
        return result

    return check_second_rounding_exercise(returns_something, high_bits, low_bits, rounding)
