"""Classroom exercises: one grader per concept of the paper, each with the instructor's solution.

Every ``check_*`` takes the student's function, runs it on deterministic cases and returns an
:class:`ExerciseFeedback` (``passed``, a message naming the first failing case with the expected and the
returned value); it never raises on a wrong answer or on an exception in the student's code.

- ``check_second_rounding(f)``: ``f(q_h, high_bits, low_bits) -> q_l`` — Double Rounding's second rounding,
  METHOD.md §1, Eq. 2;
- ``check_integer_switch(f)``: ``f(codes, high_bits, low_bits) -> int8 codes`` — the same with integer
  operations only (shifts), §1, Eq. 2;
- ``check_lsq_scale_gradient(f)``: ``f(x, scale, qmin, qmax) -> g·∂x̂/∂s`` per element — §3, Eq. 13–14;
- ``check_alrs_factor(f)``: ``f(bits, high_bits) -> η_b`` — §5, Eq. 7;
- ``check_roulette_probabilities(f)``: ``f(averages, candidates) -> {layer: {bit: p}}`` — §6, Alg. 1;
- ``check_roulette_sampler(f)``: ``f(probabilities, u) -> bit``, the inverse-CDF pick — §6, Alg. 1;
- ``check_roulette_frequencies(f)``: ``f(probabilities, generator) -> bit``, a seeded sampler — §6, Alg. 1;
- ``check_hutchinson_trace(f)``: ``f(loss_fn, weight, probes, generator) -> trace`` — §6 step 1, Alg. 1;
- ``check_imagenet_top1(f)``: ``f(logits, labels, allowed=None) -> top-1 %`` over 1000 classes or a subset
  (notebook 05);
- ``check_bitops(f)``: ``f(conv, (H, W), weight_bits, act_bits) -> (BitOPs, size in bits)`` — §6 step 4.

Each module also holds the instructor's solution, ``reference_*``, which its grader passes.

The student copy of the notebooks (solutions replaced by stubs): ``python -m labkit.exercises.student_copy``.
"""
from __future__ import annotations

from labkit.exercises.alrs import check_alrs_factor, reference_alrs_factor
from labkit.exercises.bitops import check_bitops, reference_conv_cost
from labkit.exercises.grading import ExerciseFeedback
from labkit.exercises.hutchinson import check_hutchinson_trace, reference_hutchinson_trace
from labkit.exercises.imagenet_top1 import check_imagenet_top1, reference_top1
from labkit.exercises.integer_switch import check_integer_switch, reference_integer_switch
from labkit.exercises.lsq_gradient import check_lsq_scale_gradient, reference_lsq_scale_gradient
from labkit.exercises.roulette import (
    check_roulette_frequencies,
    check_roulette_probabilities,
    check_roulette_sampler,
    reference_inverse_cdf,
    reference_roulette_probabilities,
    reference_roulette_sampler,
)
from labkit.exercises.second_rounding import check_second_rounding, reference_second_rounding

__all__ = [
    "ExerciseFeedback",
    "check_alrs_factor",
    "check_bitops",
    "check_hutchinson_trace",
    "check_imagenet_top1",
    "check_integer_switch",
    "check_lsq_scale_gradient",
    "check_roulette_frequencies",
    "check_roulette_probabilities",
    "check_roulette_sampler",
    "check_second_rounding",
    "reference_alrs_factor",
    "reference_conv_cost",
    "reference_hutchinson_trace",
    "reference_integer_switch",
    "reference_inverse_cdf",
    "reference_lsq_scale_gradient",
    "reference_roulette_probabilities",
    "reference_roulette_sampler",
    "reference_second_rounding",
    "reference_top1",
]
