"""Three ways to get l-bit weight codes, side by side: the study behind notebook 01 (METHOD.md §1).

Double Rounding (paper Eq. 1–3) stores one INT-h tensor and derives every lower precision from it:

1. first rounding, stored:  ``q_h = clip(round(W / s_h), -2^(h-1), 2^(h-1) - 1)``            (Eq. 1)
2. second rounding:         ``q_l = clip(round(q_h / 2^Δ), -2^(l-1), 2^(l-1) - 1)``, Δ = h - l (Eq. 2)
3. dequantize:              ``Ŵ_l = q_l · s_h · 2^Δ``                                       (Eq. 3)

This module compares the Double Rounding codes with the two alternatives a reader should have in mind:

- **direct rounding** of ``W / s_l`` with the tied scale ``s_l = s_h · 2^Δ`` (what one rounding from FP32
  master weights gives; needs the FP32 weights at switching time);
- **floor**: truncating the stored codes, ``q_h >> Δ`` (the AdaBits / Bit-Mixer baseline).

It measures, never assumes, how often the second rounding changes a code and how large the error gets.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from html import escape

import torch

from labkit.quant.ranges import check_bits, int_range
from labkit.quant.rounding import double_round

TIE_RULES = ("half_even", "half_up")
"""Tie rules of the second rounding that round to nearest; ``"floor"`` is always computed as the third way."""


def check_tie_rule(rounding: str) -> str:
    """Return ``rounding`` if it is a round-to-nearest tie rule, else raise a ValueError that says what to pass."""
    if rounding not in TIE_RULES:
        raise ValueError(
            f"rounding={rounding!r} is not a round-to-nearest tie rule; use one of {list(TIE_RULES)} "
            f"(floor/truncation is always returned as the third way, in .floor_codes)."
        )
    return rounding


def code_dtype(bits: int) -> torch.dtype:
    """The smallest signed integer dtype that stores ``bits``-bit codes (int8 up to 8 bits, else int16)."""
    return torch.int8 if check_bits(bits) <= 8 else torch.int16


def round_to_nearest(x: torch.Tensor, rounding: str = "half_even") -> torch.Tensor:
    """Round a float tensor to the nearest whole number; ties to even (``torch.round``) or up (``floor(x + 0.5)``)."""
    check_tie_rule(rounding)
    return torch.round(x) if rounding == "half_even" else torch.floor(x + 0.5)


def _as_float(values) -> torch.Tensor:
    values = torch.as_tensor(values)
    if not values.dtype.is_floating_point:
        values = values.to(torch.float64)
    return values


def first_rounding(values, scale_h: float, high_bits: int = 8) -> torch.Tensor:
    """Eq. 1: the stored INT-h codes ``clip(round(W / s_h), -2^(h-1), 2^(h-1) - 1)`` (``torch.round``: ties to even)."""
    high_bits = check_bits(high_bits, name="high_bits")
    if not scale_h > 0:
        raise ValueError(f"scale_h must be a positive number, got {scale_h!r}.")
    qmin, qmax = int_range(high_bits)
    codes = torch.round(_as_float(values) / scale_h).clamp_(qmin, qmax)
    return codes.to(code_dtype(high_bits))


def direct_rounding(values, scale_h: float, high_bits: int = 8, low_bits: int = 4,
                    rounding: str = "half_even") -> torch.Tensor:
    """One rounding of ``W / s_l`` with the tied scale ``s_l = s_h · 2^Δ`` (METHOD.md §1), clipped to l bits.

    This is what rounding FP32 master weights at the l-bit scale would give; Double Rounding never computes it.
    """
    high_bits, low_bits = check_bits(high_bits, name="high_bits"), check_bits(low_bits, name="low_bits")
    scale_l = scale_h * 2.0 ** (high_bits - low_bits)
    qmin, qmax = int_range(low_bits)
    codes = round_to_nearest(_as_float(values) / scale_l, rounding).clamp_(qmin, qmax)
    return codes.to(code_dtype(low_bits))


@dataclass(frozen=True)
class ThreeWayCodes:
    """The stored INT-h codes and the l-bit codes by Double Rounding, direct rounding and floor, for the same inputs."""

    values: torch.Tensor        # W, the float inputs
    scale_h: float              # s_h, the one learned weight scale
    high_bits: int              # h
    low_bits: int               # l
    rounding: str               # tie rule of the second rounding (and of the direct rounding)
    high_codes: torch.Tensor    # q_h, Eq. 1 (what is stored)
    double_codes: torch.Tensor  # round(q_h / 2^Δ), Eq. 2, integer-only
    direct_codes: torch.Tensor  # round(W / s_l)
    floor_codes: torch.Tensor   # q_h >> Δ (truncation)

    @property
    def delta(self) -> int:
        """Δ = h − l."""
        return self.high_bits - self.low_bits

    @property
    def scale_l(self) -> float:
        """The tied l-bit scale ``s_l = s_h · 2^Δ``."""
        return self.scale_h * 2.0 ** self.delta

    @property
    def high_values(self) -> torch.Tensor:
        """``q_h · s_h``: the dequantized stored weights."""
        return self.high_codes.to(self.values.dtype) * self.scale_h

    @property
    def double_values(self) -> torch.Tensor:
        """Eq. 3: ``Ŵ_l = q_l · s_h · 2^Δ`` for the Double Rounding codes."""
        return self.double_codes.to(self.values.dtype) * self.scale_l

    @property
    def direct_values(self) -> torch.Tensor:
        """``q_l · s_l`` for the direct-rounding codes."""
        return self.direct_codes.to(self.values.dtype) * self.scale_l

    @property
    def floor_values(self) -> torch.Tensor:
        """``q_l · s_l`` for the truncated codes."""
        return self.floor_codes.to(self.values.dtype) * self.scale_l


def codes_three_ways(values, scale_h: float, high_bits: int = 8, low_bits: int = 4,
                     rounding: str = "half_even") -> ThreeWayCodes:
    """Quantize ``values`` to l bits three ways from the same INT-h storage (METHOD.md §1, Eq. 1–3).

    ``rounding`` ("half_even" or "half_up") is the tie rule of the integer second rounding; the direct rounding
    uses the same rule (its ties have probability zero for real-valued inputs). The floor codes are always
    included. ``low_bits == high_bits`` gives the INT-h codes three times.
    """
    high_bits, low_bits = check_bits(high_bits, name="high_bits"), check_bits(low_bits, name="low_bits")
    check_tie_rule(rounding)
    if low_bits > high_bits:
        raise ValueError(
            f"low_bits={low_bits} is above high_bits={high_bits}: the stored INT-{high_bits} codes only give "
            f"lower precisions; pick low_bits <= {high_bits}."
        )
    values = _as_float(values)
    high_codes = first_rounding(values, scale_h, high_bits)
    return ThreeWayCodes(
        values=values,
        scale_h=float(scale_h),
        high_bits=high_bits,
        low_bits=low_bits,
        rounding=rounding,
        high_codes=high_codes,
        double_codes=double_round(high_codes, high_bits, low_bits, rounding),
        direct_codes=direct_rounding(values, scale_h, high_bits, low_bits, rounding),
        floor_codes=double_round(high_codes, high_bits, low_bits, "floor"),
    )


def uniform_inputs(high_bits: int = 8, points_per_code: int = 64, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Uniformly spread values of ``W / s_h`` over the INT-h range ``[-2^(h-1) - 1/2, 2^(h-1) - 1/2)``.

    A deterministic grid: ``points_per_code`` evenly spaced midpoints in the cell of every INT-h code, so each
    stored code is equally frequent and no input sits exactly on a first-rounding tie. Use it with ``scale_h = 1``.
    """
    high_bits = check_bits(high_bits, name="high_bits")
    if points_per_code < 1:
        raise ValueError(f"points_per_code must be at least 1, got {points_per_code}.")
    qmin, qmax = int_range(high_bits)
    count = (qmax - qmin + 1) * points_per_code
    return qmin - 0.5 + (torch.arange(count, dtype=dtype) + 0.5) / points_per_code


@dataclass(frozen=True)
class SecondRoundingStats:
    """How the l-bit codes of Double Rounding and of floor compare with direct rounding (errors in l-bit LSB)."""

    high_bits: int
    low_bits: int
    rounding: str
    inputs: int                       # number of inputs compared
    fraction_double_differs: float    # share of inputs whose Double Rounding code != direct code
    fraction_floor_differs: float     # share of inputs whose floor code != direct code
    max_code_difference: int          # max |double code - direct code|
    worst_error_direct: float         # max |q_l - W/s_l| over unclipped inputs, in l-bit LSB
    worst_error_double: float
    worst_error_floor: float
    mean_error_direct: float          # mean |q_l - W/s_l| over unclipped inputs, in l-bit LSB
    mean_error_double: float
    mean_error_floor: float

    @property
    def delta(self) -> int:
        """Δ = h − l."""
        return self.high_bits - self.low_bits

    @property
    def worst_case_bound(self) -> float:
        """The analytic bound on the Double Rounding error, ``0.5 + 2^-(Δ+1)`` LSB (0.5 when Δ = 0), for comparison."""
        return 0.5 if self.delta == 0 else 0.5 + 2.0 ** -(self.delta + 1)


def unclipped_mask(result: ThreeWayCodes) -> torch.Tensor:
    """True where neither range clips: ``W/s_h`` inside the INT-h cells and ``W/s_l`` inside the l-bit cells.

    Errors are measured only there, so that they are rounding errors, not clipping errors.
    """
    hmin, hmax = int_range(result.high_bits)
    lmin, lmax = int_range(result.low_bits)
    x_h = result.values / result.scale_h
    x_l = result.values / result.scale_l
    return (x_h >= hmin - 0.5) & (x_h <= hmax + 0.5) & (x_l >= lmin - 0.5) & (x_l <= lmax + 0.5)


def code_difference_stats(result: ThreeWayCodes) -> SecondRoundingStats:
    """Compare the three ways of :func:`codes_three_ways` on whatever inputs it was given."""
    direct = result.direct_codes.to(torch.int64)
    double = result.double_codes.to(torch.int64)
    floor = result.floor_codes.to(torch.int64)
    inputs = direct.numel()
    if inputs == 0:
        raise ValueError("no inputs to compare; pass at least one value.")
    x_l = (result.values / result.scale_l).to(torch.float64)
    mask = unclipped_mask(result)

    def worst(codes):
        errors = (codes.to(torch.float64) - x_l)[mask].abs()
        return float(errors.max()) if errors.numel() else float("nan")

    def mean(codes):
        errors = (codes.to(torch.float64) - x_l)[mask].abs()
        return float(errors.mean()) if errors.numel() else float("nan")

    return SecondRoundingStats(
        high_bits=result.high_bits,
        low_bits=result.low_bits,
        rounding=result.rounding,
        inputs=inputs,
        fraction_double_differs=float((double != direct).sum()) / inputs,
        fraction_floor_differs=float((floor != direct).sum()) / inputs,
        max_code_difference=int((double - direct).abs().max()),
        worst_error_direct=worst(direct),
        worst_error_double=worst(double),
        worst_error_floor=worst(floor),
        mean_error_direct=mean(direct),
        mean_error_double=mean(double),
        mean_error_floor=mean(floor),
    )


def second_rounding_error_stats(high_bits: int = 8, low_bits: int = 4, rounding: str = "half_even",
                                points_per_code: int = 64) -> SecondRoundingStats:
    """Measure the extra error of the second rounding for uniformly spread ``W / s_h`` (METHOD.md §1).

    Uses the grid of :func:`uniform_inputs` (``points_per_code`` per INT-h code) with ``s_h = 1``.
    """
    inputs = uniform_inputs(high_bits, points_per_code)
    return code_difference_stats(codes_three_ways(inputs, 1.0, high_bits, low_bits, rounding))


def error_table(high_bits: int = 8, bit_choices=(6, 4, 2), rounding: str = "half_even",
                points_per_code: int = 64) -> list[SecondRoundingStats]:
    """:func:`second_rounding_error_stats` for each l in ``bit_choices`` (high to low), e.g. 8→6, 8→4, 8→2."""
    bits = sorted({check_bits(b) for b in bit_choices}, reverse=True)
    return [second_rounding_error_stats(high_bits, b, rounding, points_per_code) for b in bits]


# ----------------------------------------------------------------------------------------------- text tables


def format_comparison_table(result: ThreeWayCodes, max_rows: int | None = None) -> str:
    """A side-by-side text table: W, W/s_h, the stored code, then the l-bit code and Ŵ_l of each way.

    Rows where Double Rounding differs from direct rounding are marked with ``*``.
    """
    h, l, d = result.high_bits, result.low_bits, result.delta
    header = (f"{'W':>9} {'W/s_h':>8} {'q_' + str(h):>5} {'W/s_l':>8} | {'direct':>6} {'double':>6} {'floor':>5} | "
              f"{'Ŵ direct':>9} {'Ŵ double':>9} {'Ŵ floor':>9}")
    lines = [f"INT{h} -> INT{l} (Δ = {d}, s_h = {result.scale_h:g}, s_l = s_h·2^{d} = {result.scale_l:g}, "
             f"tie rule {result.rounding})", header, "-" * len(header)]
    values = result.values.reshape(-1)
    rows = values.numel() if max_rows is None else min(max_rows, values.numel())
    for i in range(rows):
        w = float(values[i])
        direct, double, floor = (int(c.reshape(-1)[i]) for c in
                                 (result.direct_codes, result.double_codes, result.floor_codes))
        mark = " *" if double != direct else ""
        lines.append(
            f"{w:>9.4f} {w / result.scale_h:>8.3f} {int(result.high_codes.reshape(-1)[i]):>5} "
            f"{w / result.scale_l:>8.3f} | {direct:>6} {double:>6} {floor:>5} | "
            f"{direct * result.scale_l:>9.4f} {double * result.scale_l:>9.4f} {floor * result.scale_l:>9.4f}{mark}"
        )
    if rows < values.numel():
        lines.append(f"... {values.numel() - rows} more rows")
    return "\n".join(lines)


def format_stats_table(stats: list[SecondRoundingStats]) -> str:
    """A text table of :class:`SecondRoundingStats` rows: share of codes changed and worst/mean errors in LSB."""
    header = (f"{'h->l':>6} {'tie rule':>9} | {'double≠direct':>13} {'floor≠direct':>12} | "
              f"{'worst direct':>12} {'worst double':>12} {'bound':>7} {'worst floor':>11} | "
              f"{'mean direct':>11} {'mean double':>11} {'mean floor':>10}")
    lines = [header, "-" * len(header)]
    for s in stats:
        lines.append(
            f"{str(s.high_bits) + '->' + str(s.low_bits):>6} {s.rounding:>9} | "
            f"{s.fraction_double_differs:>13.2%} {s.fraction_floor_differs:>12.2%} | "
            f"{s.worst_error_direct:>12.4f} {s.worst_error_double:>12.4f} {s.worst_case_bound:>7.4f} "
            f"{s.worst_error_floor:>11.4f} | {s.mean_error_direct:>11.4f} {s.mean_error_double:>11.4f} "
            f"{s.mean_error_floor:>10.4f}"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------- exercise


@dataclass(frozen=True)
class ExerciseFeedback:
    """The verdict of an exercise check: ``passed`` and a message that says what to fix.

    ``case``, ``expected`` and ``got`` optionally name the first failing case and its two values (the message
    already says them in words). Printed it is the message; in Jupyter it renders as a green or red box.
    """

    passed: bool
    message: str
    case: str | None = None
    expected: object = field(default=None, compare=False)
    got: object = field(default=None, compare=False)

    def __str__(self) -> str:
        return self.message

    def _repr_html_(self) -> str:
        color, title = ("#1a7f37", "&#10003; Correct") if self.passed else ("#cf222e", "&#10007; Not yet")
        rows = "".join(
            f"<tr><th style='text-align:left;padding-right:1em'>{label}</th><td><code>{escape(str(value))}</code></td></tr>"
            for label, value in (("case", self.case), ("expected", self.expected), ("got", self.got))
            if value is not None
        )
        table = f"<table style='margin-top:.4em'>{rows}</table>" if rows and not self.passed else ""
        return (f"<div class='labkit-feedback labkit-feedback-{'pass' if self.passed else 'fail'}' "
                f"style='border-left:4px solid {color};padding:.4em .8em;margin:.3em 0'>"
                f"<b style='color:{color}'>{title}</b><div style='white-space:pre-wrap'>{escape(self.message)}</div>"
                f"{table}</div>")


def _explain_code(q: int, high_bits: int, low_bits: int) -> str:
    d = high_bits - low_bits
    return f"q_{high_bits} = {q} -> {low_bits} bits: {q}/2^{d} = {q}/{2 ** d} = {q / 2 ** d:g}"


def check_second_rounding_exercise(student_function, high_bits: int = 8, low_bits=(6, 4, 2),
                                   rounding: str = "half_even") -> ExerciseFeedback:
    """Grade ``student_function(q_h, high_bits, low_bits) -> q_l`` against :func:`double_round` on every INT-h code.

    The feedback names the first wrong code and recognises the usual mistakes: truncating (floor) instead of
    rounding, forgetting the clip to the l-bit range, and the other tie rule.
    """
    high_bits = check_bits(high_bits, name="high_bits")
    check_tie_rule(rounding)
    qmin, qmax = int_range(high_bits)
    all_codes = torch.arange(qmin, qmax + 1, dtype=torch.int64).to(code_dtype(high_bits))
    other_rule = "half_up" if rounding == "half_even" else "half_even"
    for bits in sorted({check_bits(b) for b in low_bits}, reverse=True):
        expected = double_round(all_codes, high_bits, bits, rounding).to(torch.int64)
        try:
            answer = student_function(all_codes.clone(), high_bits, bits)
        except NotImplementedError:
            return ExerciseFeedback(False, "Not implemented yet: replace `raise NotImplementedError()` with your "
                                           "second rounding (round q_h / 2^Δ, then clip to the l-bit range).")
        except Exception as error:  # the student's code may fail in any way; report it instead of crashing
            return ExerciseFeedback(False, f"Your function raised {type(error).__name__}: {error} "
                                           f"(called with {all_codes.numel()} INT{high_bits} codes, "
                                           f"{high_bits} -> {bits} bits).")
        answer = torch.as_tensor(answer)
        if answer.shape != expected.shape:
            return ExerciseFeedback(False, f"At {high_bits} -> {bits} bits your function returned shape "
                                           f"{tuple(answer.shape)}; return one code per input, shape "
                                           f"{tuple(expected.shape)}.")
        if answer.dtype.is_floating_point:
            if not bool(torch.all(answer == torch.round(answer))):
                return ExerciseFeedback(False, f"At {high_bits} -> {bits} bits some outputs are not whole numbers; "
                                               f"codes are integers: round q_h / 2^Δ.")
        answer = answer.to(torch.int64)
        if torch.equal(answer, expected):
            continue
        first = int(torch.nonzero(answer != expected)[0, 0])
        q = int(all_codes[first])
        example = (f"{_explain_code(q, high_bits, bits)}; you returned {int(answer[first])}, "
                   f"expected {int(expected[first])}.")
        lmin, lmax = int_range(bits)
        codes64 = all_codes.to(torch.int64)
        shift = high_bits - bits
        if torch.equal(answer, double_round(all_codes, high_bits, bits, "floor").to(torch.int64)):
            hint = ("You truncate (floor, a plain shift), which is the AdaBits/Bit-Mixer baseline; Double Rounding "
                    "rounds to the nearest code.")
        elif torch.equal(answer.clamp(lmin, lmax), expected):
            hint = (f"Your codes leave the {bits}-bit range [{lmin}, {lmax}]: clip after rounding "
                    f"(e.g. {(lmax * 2 + 1) << (shift - 1) if shift else qmax}/{2 ** shift} rounds up past {lmax}).")
        elif torch.equal(answer, double_round(all_codes, high_bits, bits, other_rule).to(torch.int64)):
            hint = (f"Your ties go the {other_rule.replace('_', '-')} way; this check uses "
                    f"{rounding.replace('_', '-')} (torch.round rounds half to even: 0.5 -> 0, 1.5 -> 2).")
        elif shift and not bool(((answer != expected) & (codes64 % (1 << shift) != (1 << (shift - 1)))).any()):
            hint = "Only exact ties (q_h / 2^Δ ending in .5) are wrong: check your tie rule."
        else:
            hint = "Compute round(q_h / 2^Δ) with Δ = high_bits - low_bits, then clip to [-2^(l-1), 2^(l-1) - 1]."
        wrong = int((answer != expected).sum())
        return ExerciseFeedback(False, f"{wrong} of {expected.numel()} codes differ at {high_bits} -> {bits} bits. "
                                       f"{example} {hint}")
    rule = rounding.replace("_", "-")
    bit_list = ", ".join(str(b) for b in sorted(set(low_bits), reverse=True))
    return ExerciseFeedback(True, f"Correct: all {all_codes.numel()} INT{high_bits} codes match "
                                  f"labkit's double_round at {bit_list} bits ({rule} ties).")
