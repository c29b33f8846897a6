"""Four ways to get l-bit weights from the same INT-h storage, side by side: the study of notebook 01 (METHOD.md §1).

Double Rounding (paper Eq. 1–3) stores one INT-h tensor and derives every lower precision from it:

1. first rounding, stored:  ``q_h = clip(round(W / s_h), -2^(h-1), 2^(h-1) - 1)``            (Eq. 1)
2. second rounding:         ``q_l = clip(round(q_h / 2^Δ), -2^(l-1), 2^(l-1) - 1)``, Δ = h - l (Eq. 2)
3. dequantize:              ``Ŵ_l = q_l · s_h · 2^Δ``                                       (Eq. 3)

This module compares Double Rounding with the alternatives a reader should have in mind:

- **direct rounding** of ``W / s_l`` with the tied scale ``s_l = s_h · 2^Δ`` (what one rounding from FP32
  master weights gives; needs the FP32 weights at switching time);
- **truncation** (floor) of the stored codes, ``q_h >> Δ`` (the AdaBits / Bit-Mixer baseline, METHOD.md §7), with
  two ways to dequantize the truncated code (:func:`truncation_centre`):

  * at the **bottom** of the INT-h cells it covers, ``Ŵ_l = q_l · s_l``: the Double Rounding authors' own
    truncation ablation (METHOD.md §9, "without centring"); ``method="floor_naive"`` in :mod:`labkit.quant`.
    Every weight is biased down by almost half an l-bit step.
  * at their **centre**, ``Ŵ_l = (q_l + c_Δ) · s_l`` with ``c_Δ = 1/2 − 2^−(Δ+1)``: the fair truncation a
    careful user deploys; ``method="floor"`` in :mod:`labkit.quant` (``TruncationWeightQuantizer``). AdaBits and
    Bit-Mixer describe their lower precisions as truncated (low bits dropped); where their code places the
    dequantized value the lab could not check.

It measures, never assumes, how often the codes differ, how biased each way is and how large the error gets.
The tables are Markdown (render them with ``IPython.display.Markdown``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from html import escape

import torch

from labkit.quant.ranges import check_bits, int_range
from labkit.quant.rounding import double_round

TIE_RULES = ("half_even", "half_up")
"""Tie rules of the second rounding that round to nearest; ``"floor"`` (truncation) is always computed as well."""

WAYS = ("direct", "double", "floor_naive", "floor_centred")
"""The four ways of getting an l-bit weight, in the order the tables and figures show them."""

WAY_LABELS = {
    "direct": "direct rounding of W/s_l",
    "double": "Double Rounding",
    "floor_naive": "truncation, cell bottom (naive)",
    "floor_centred": "truncation, cell centre (fair)",
}
"""Short names of :data:`WAYS` for tables and legends."""

TIE_RULE_NAMES = {"half_even": "ties to even", "half_up": "ties up", "floor": "floor (q_h >> Δ)"}


def check_tie_rule(rounding: str) -> str:
    """Return ``rounding`` if it is a round-to-nearest tie rule, else raise a ValueError that says what to pass."""
    if rounding not in TIE_RULES:
        raise ValueError(
            f"rounding={rounding!r} is not a round-to-nearest tie rule; use one of {list(TIE_RULES)} "
            f"(floor/truncation is always returned as well, in .floor_codes)."
        )
    return rounding


def code_dtype(bits: int) -> torch.dtype:
    """The smallest signed integer dtype that stores ``bits``-bit codes (int8 up to 8 bits, else int16)."""
    return torch.int8 if check_bits(bits) <= 8 else torch.int16


def round_to_nearest(x: torch.Tensor, rounding: str = "half_even") -> torch.Tensor:
    """Round a float tensor to the nearest whole number; ties to even (``torch.round``) or up (``floor(x + 0.5)``)."""
    check_tie_rule(rounding)
    return torch.round(x) if rounding == "half_even" else torch.floor(x + 0.5)


def truncation_centre(high_bits: int, low_bits: int) -> float:
    """``c_Δ = 1/2 − 2^−(Δ+1)``: where a truncated code's cells are centred, in l-bit steps above ``q_l`` (0 at Δ = 0).

    The truncated code ``q_l = q_h >> Δ`` stands for the 2^Δ stored codes ``q_l·2^Δ … q_l·2^Δ + 2^Δ − 1``, i.e. for
    ``W / s_h`` in ``[q_l·2^Δ − 1/2, q_l·2^Δ + 2^Δ − 1/2)``, whose centre is ``q_l·2^Δ + (2^Δ − 1)/2`` INT-h steps:
    ``q_l + c_Δ`` l-bit steps. The same offset as ``TruncationWeightQuantizer.centre`` (``method="floor"``).
    """
    high_bits, low_bits = check_bits(high_bits, name="high_bits"), check_bits(low_bits, name="low_bits")
    delta = high_bits - low_bits
    return 0.0 if delta <= 0 else 0.5 - 2.0 ** -(delta + 1)


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
    """The stored INT-h codes and the l-bit codes by Double Rounding, direct rounding and truncation, for the same W.

    Three kinds of codes, four ways (:data:`WAYS`): the truncated codes are dequantized at the bottom or at the
    centre of their cells (:meth:`values_of`).
    """

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
    def floor_centre(self) -> float:
        """``c_Δ`` of :func:`truncation_centre`: the fair truncation dequantizes at ``(q_l + c_Δ) · s_l``."""
        return truncation_centre(self.high_bits, self.low_bits)

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
    def floor_naive_values(self) -> torch.Tensor:
        """``q_l · s_l`` for the truncated codes: their cells' bottom (the authors' ablation, ``"floor_naive"``)."""
        return self.floor_codes.to(self.values.dtype) * self.scale_l

    @property
    def floor_centred_values(self) -> torch.Tensor:
        """``(q_l + c_Δ) · s_l`` for the truncated codes: the centre of their cells (``method="floor"``)."""
        return (self.floor_codes.to(self.values.dtype) + self.floor_centre) * self.scale_l

    def values_of(self, way: str) -> torch.Tensor:
        """The dequantized l-bit weights ``Ŵ_l`` of one of :data:`WAYS`."""
        if way not in WAYS:
            raise ValueError(f"way={way!r} is unknown; use one of {list(WAYS)}.")
        return getattr(self, f"{way}_values")


def codes_three_ways(values, scale_h: float, high_bits: int = 8, low_bits: int = 4,
                     rounding: str = "half_even") -> ThreeWayCodes:
    """Quantize ``values`` to l bits three ways from the same INT-h storage (METHOD.md §1, Eq. 1–3).

    ``rounding`` ("half_even" or "half_up") is the tie rule of the integer second rounding; the direct rounding
    uses the same rule (its ties have probability zero for real-valued inputs). The truncated (floor) codes are
    always included. ``low_bits == high_bits`` gives the INT-h codes three times.
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
    """How the four ways compare (:data:`WAYS`): codes that differ from direct rounding, and the errors in l-bit LSB.

    The error of a way is ``(Ŵ_l − W) / s_l``, measured over the inputs of :func:`unclipped_mask` only (so it is a
    rounding error, not a clipping error): ``bias_*`` is its mean (the systematic shift), ``mean_error_*`` the mean
    of its absolute value and ``worst_error_*`` the largest absolute value.
    """

    high_bits: int
    low_bits: int
    rounding: str
    inputs: int                       # number of inputs compared
    measured: int                     # of them, inside unclipped_mask (where the errors are measured)
    fraction_double_differs: float    # share of inputs whose Double Rounding code != direct code
    fraction_floor_differs: float     # share of inputs whose truncated code q_h >> Δ != direct code
    max_code_difference: int          # max |double code - direct code|
    worst_error_direct: float         # max |Ŵ_l - W| / s_l over the measured inputs
    worst_error_double: float
    worst_error_floor_naive: float
    worst_error_floor_centred: float
    mean_error_direct: float          # mean |Ŵ_l - W| / s_l over the measured inputs
    mean_error_double: float
    mean_error_floor_naive: float
    mean_error_floor_centred: float
    bias_direct: float                # mean (Ŵ_l - W) / s_l over the measured inputs
    bias_double: float
    bias_floor_naive: float
    bias_floor_centred: float

    @property
    def delta(self) -> int:
        """Δ = h − l."""
        return self.high_bits - self.low_bits

    @property
    def worst_case_bound(self) -> float:
        """The analytic bound on the Double Rounding error, ``0.5 + 2^-(Δ+1)`` LSB (0.5 when Δ = 0), for comparison."""
        return 0.5 if self.delta == 0 else 0.5 + 2.0 ** -(self.delta + 1)

    @property
    def codes_double_differs(self) -> int:
        """How many inputs have a Double Rounding code that differs from the direct one."""
        return round(self.fraction_double_differs * self.inputs)

    @property
    def codes_floor_differs(self) -> int:
        """How many inputs have a truncated code that differs from the direct one."""
        return round(self.fraction_floor_differs * self.inputs)

    # The truncated codes read as they are (q_l · s_l), i.e. the naive truncation: what the staircase of codes shows.
    @property
    def worst_error_floor(self) -> float:
        """:attr:`worst_error_floor_naive`: the error of the truncated codes read as they are, ``q_l · s_l``."""
        return self.worst_error_floor_naive

    @property
    def mean_error_floor(self) -> float:
        """:attr:`mean_error_floor_naive`: the error of the truncated codes read as they are, ``q_l · s_l``."""
        return self.mean_error_floor_naive


def unclipped_mask(result: ThreeWayCodes) -> torch.Tensor:
    """True where no way clips: ``|W / s_l| ≤ 2^(l−1) − 1/2``, the widest range symmetric around 0 all ways cover.

    Inside it ``W / s_h`` is inside the INT-h cells and ``W / s_l`` inside the l-bit cells of rounding, so the errors
    measured there are rounding errors, not clipping errors. It is symmetric because the signed ranges are not
    (one more negative code): over a lopsided range the mean error would measure the range, not the rounding.
    """
    _, lmax = int_range(result.low_bits)
    x_l = result.values / result.scale_l
    return x_l.abs() <= lmax + 0.5


def code_difference_stats(result: ThreeWayCodes) -> SecondRoundingStats:
    """Compare the ways of :func:`codes_three_ways` on whatever inputs it was given."""
    direct = result.direct_codes.to(torch.int64)
    double = result.double_codes.to(torch.int64)
    floor = result.floor_codes.to(torch.int64)
    inputs = direct.numel()
    if inputs == 0:
        raise ValueError("no inputs to compare; pass at least one value.")
    mask = unclipped_mask(result)
    x_l = (result.values / result.scale_l).to(torch.float64)[mask]
    errors = {way: (result.values_of(way) / result.scale_l).to(torch.float64)[mask] - x_l for way in WAYS}
    nan = float("nan")

    def reduce(way, how):
        e = errors[way]
        if not e.numel():
            return nan
        return float({"worst": e.abs().max, "mean": e.abs().mean, "bias": e.mean}[how]())

    return SecondRoundingStats(
        high_bits=result.high_bits,
        low_bits=result.low_bits,
        rounding=result.rounding,
        inputs=inputs,
        measured=int(mask.sum()),
        fraction_double_differs=float((double != direct).sum()) / inputs,
        fraction_floor_differs=float((floor != direct).sum()) / inputs,
        max_code_difference=int((double - direct).abs().max()),
        **{f"worst_error_{way}": reduce(way, "worst") for way in WAYS},
        **{f"mean_error_{way}": reduce(way, "mean") for way in WAYS},
        **{f"bias_{way}": reduce(way, "bias") for way in WAYS},
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


def stats_by_bits(values, scale_h: float, high_bits: int = 8, bit_choices=(8, 6, 4, 2),
                  rounding: str = "half_even") -> list[SecondRoundingStats]:
    """:func:`code_difference_stats` of the same ``values`` at each l in ``bit_choices`` (high to low).

    With the values and scale given to :func:`labkit.widgets.precision_explorer`, these are the numbers its
    readout shows at each slider position.
    """
    bits = sorted({check_bits(b) for b in bit_choices}, reverse=True)
    return [code_difference_stats(codes_three_ways(values, scale_h, high_bits, b, rounding)) for b in bits]


# ------------------------------------------------------------------------------------------- Markdown tables


def markdown_table(header: list[str], rows: list[list], align: str | None = None) -> str:
    """A Markdown table; ``align`` is one letter per column, ``l`` or ``r`` (default: first left, others right)."""
    align = align or "l" + "r" * (len(header) - 1)
    if len(align) != len(header) or any(len(row) != len(header) for row in rows):
        raise ValueError("every row and the alignment need one entry per header column.")
    rule = ["---:" if a == "r" else ":---" for a in align]

    def line(cells) -> str:
        return "| " + " | ".join(_cell(c) for c in cells) + " |"

    return "\n".join([line(header), "| " + " | ".join(rule) + " |", *(line(row) for row in rows)])


def _cell(value) -> str:
    """A table cell: ``|`` escaped; whole numbers (codes) with a real minus sign, like :func:`_number`."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value).replace("-", "−")
    return str(value).replace("|", "\\|")


def _number(x: float, digits: int = 3, signed: bool = False) -> str:
    """``x`` with ``digits`` decimals and a real minus sign; a value that rounds to zero shows as 0 (never −0)."""
    text = f"{x:.{digits}f}"
    if float(text) == 0:
        return f"{0:.{digits}f}"
    if signed and x > 0:
        text = "+" + text
    return text.replace("-", "−")


def _bits(high_bits: int, low_bits: int) -> str:
    return f"{high_bits} → {low_bits}"


def _share(count: int, total: int, digits: int) -> str:
    return f"{count} of {total} ({count / total:.{digits}%})"


def changed_codes_table(stats: list[SecondRoundingStats], counts: bool = False, digits: int = 2) -> str:
    """Markdown: per target bit-width, the share of inputs whose Double Rounding / truncated code differs from direct.

    ``counts=True`` writes "n of N (p %)" as the explorer's readout does (there with ``digits=1``).
    """
    header = ["h → l", "tie rule", "Double Rounding ≠ direct", "truncation ≠ direct", "largest code difference"]
    rows = []
    for s in stats:
        if counts:
            double, floor = (_share(s.codes_double_differs, s.inputs, digits),
                             _share(s.codes_floor_differs, s.inputs, digits))
        else:
            double, floor = f"{s.fraction_double_differs:.{digits}%}", f"{s.fraction_floor_differs:.{digits}%}"
        rows.append([_bits(s.high_bits, s.low_bits), TIE_RULE_NAMES[s.rounding], double, floor,
                     s.max_code_difference])
    return markdown_table(header, rows, "llrrr")


def rounding_errors_table(stats: list[SecondRoundingStats], ways=WAYS) -> str:
    """Markdown: per target bit-width and way, the error ``(Ŵ_l − W) / s_l``: bias (mean), mean |error|, worst |error|.

    The Double Rounding row also gives the analytic bound ``0.5 + 2^−(Δ+1)`` on its worst case.
    """
    header = ["h → l", "way", "bias (mean error)", "mean |error|", "worst |error|"]
    rows = []
    for s in stats:
        for i, way in enumerate(ways):
            worst = _number(getattr(s, f"worst_error_{way}"))
            if way == "double":
                worst += f" (bound {_number(s.worst_case_bound)})"
            rows.append([_bits(s.high_bits, s.low_bits) if i == 0 else "", WAY_LABELS[way],
                         _number(getattr(s, f"bias_{way}"), signed=True),
                         _number(getattr(s, f"mean_error_{way}")), worst])
    return markdown_table(header, rows, "llrrr")


def comparison_table(result: ThreeWayCodes, max_rows: int | None = None) -> str:
    """Markdown, one row per input: W, W/s_h, the stored code, W/s_l, the three l-bit codes and Ŵ_l of the four ways.

    The last column marks with ``≠`` the rows where Double Rounding's code differs from direct rounding's.
    """
    h, l, d = result.high_bits, result.low_bits, result.delta
    caption = (f"**INT{h} → INT{l}** (Δ = {d}, s_h = {result.scale_h:g}, s_l = s_h·2^{d} = {result.scale_l:g}, "
               f"{TIE_RULE_NAMES[result.rounding]}; truncation centre c_Δ = {result.floor_centre:g})")
    header = ["W", "W/s_h", f"q_{h}", "W/s_l", "direct code", "Double Rounding code", "truncated code",
              "Ŵ direct", "Ŵ Double Rounding", "Ŵ trunc. bottom", "Ŵ trunc. centre", "DR ≠ direct"]
    values = result.values.reshape(-1)
    rows_shown = values.numel() if max_rows is None else min(max_rows, values.numel())
    codes = {name: getattr(result, f"{name}_codes").reshape(-1) for name in ("high", "direct", "double", "floor")}
    dequantized = {way: result.values_of(way).reshape(-1) for way in WAYS}
    rows = []
    for i in range(rows_shown):
        w = float(values[i])
        direct, double = int(codes["direct"][i]), int(codes["double"][i])
        rows.append([_number(w, 4), _number(w / result.scale_h), int(codes["high"][i]), _number(w / result.scale_l),
                     direct, double, int(codes["floor"][i]),
                     *(_number(float(dequantized[way][i]), 4) for way in WAYS), "≠" if double != direct else ""])
    table = markdown_table(header, rows, "r" * (len(header) - 1) + "l")
    more = f"\n\n… {values.numel() - rows_shown} more rows" if rows_shown < values.numel() else ""
    return f"{caption}\n\n{table}{more}"


def scalar_rounding_table(values, scale_h: float, high_bits: int = 8, bit_choices=(6, 4, 2)) -> str:
    """Markdown, one row per value and target bit-width: the stored code, the second rounding under both tie rules,
    the truncated code and the direct rounding, worked out as by hand (Eq. 1–2)."""
    header = ["W", "W/s_h", f"stored q_{high_bits}", "l", f"q_{high_bits} / 2^Δ", "Double Rounding, ties to even",
              "Double Rounding, ties up", "truncated q_h >> Δ", "W/s_l", "direct rounding"]
    rows = []
    for w in _as_float(values).reshape(-1).tolist():
        for bits in sorted({check_bits(b) for b in bit_choices}, reverse=True):
            even = codes_three_ways(torch.tensor([w]), scale_h, high_bits, bits, "half_even")
            up = codes_three_ways(torch.tensor([w]), scale_h, high_bits, bits, "half_up")
            q_h = int(even.high_codes)
            rows.append([_number(w, 4), _number(w / scale_h), q_h, bits,
                         f"{_cell(q_h)}/{2 ** even.delta} = {q_h / 2 ** even.delta:g}".replace("-", "−"),
                         int(even.double_codes), int(up.double_codes), int(even.floor_codes),
                         _number(w / even.scale_l, 4), int(even.direct_codes)])
    return markdown_table(header, rows, "r" * len(header))


def tie_rules_table(codes, high_bits: int = 8, low_bits: int = 2) -> str:
    """Markdown: stored codes (columns) through the second rounding under each tie rule and under floor."""
    codes = torch.as_tensor(codes)
    delta = check_bits(high_bits, name="high_bits") - check_bits(low_bits, name="low_bits")
    header = [f"q_{high_bits}", *(int(q) for q in codes)]
    rows = [[f"q_{high_bits} / 2^{delta}", *(f"{int(q) / 2 ** delta:g}".replace("-", "−") for q in codes)]]
    for rule in ("half_even", "half_up", "floor"):
        rows.append([TIE_RULE_NAMES[rule], *(int(c) for c in double_round(codes, high_bits, low_bits, rule))])
    return markdown_table(header, rows)


def tie_rule_disagreement_table(high_bits: int = 8, bit_choices=(6, 4, 2)) -> str:
    """Markdown: of all 2^h stored codes, how many get another l-bit code under the two tie rules, and under floor."""
    high_bits = check_bits(high_bits, name="high_bits")
    qmin, qmax = int_range(high_bits)
    every_code = torch.arange(qmin, qmax + 1).to(code_dtype(high_bits))
    total = every_code.numel()
    header = ["h → l", "ties to even ≠ ties up", "floor ≠ ties to even"]
    rows = []
    for bits in sorted({check_bits(b) for b in bit_choices}, reverse=True):
        even, up, floor = (double_round(every_code, high_bits, bits, rule)
                           for rule in ("half_even", "half_up", "floor"))
        rows.append([_bits(high_bits, bits), f"{int((even != up).sum())} of {total}",
                     f"{int((floor != even).sum())} of {total}"])
    return markdown_table(header, rows)


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


def check_truncation_centre_exercise(student_function,
                                     bit_sets=((8, (6, 4, 2, 7, 5, 3, 8)), (4, (3, 2, 4)))) -> ExerciseFeedback:
    """Grade ``student_function(high_bits, low_bits) -> c`` against :func:`truncation_centre` (in l-bit steps).

    ``c`` places the truncated code ``q_l = q_h >> Δ`` at the centre of the INT-h cells it stands for,
    ``Ŵ_l = (q_l + c) · s_l`` (``method="floor"``). The feedback recognises the usual slips: the bottom of the
    cells (0, the naive truncation), the centre in INT-h steps instead of l-bit steps, and forgetting that the
    first INT-h cell starts half an INT-h step below ``q_l · 2^Δ`` (1/2). The cases run in the order given, so
    the first failing one tells these slips apart (Δ = 2 first: at Δ = 1 two of them give the same number).
    """
    for high_bits, lows in bit_sets:
        for low_bits in lows:
            expected = truncation_centre(high_bits, low_bits)
            case = f"high_bits={high_bits}, low_bits={low_bits}"
            try:
                answer = student_function(high_bits, low_bits)
            except NotImplementedError:
                return ExerciseFeedback(False, "Not implemented yet: replace `raise NotImplementedError()` with the "
                                               "offset c (in l-bit steps) of the centre of a truncated code's cells.")
            except Exception as error:  # the student's code may fail in any way; report it instead of crashing
                return ExerciseFeedback(False, f"Your function raised {type(error).__name__}: {error} ({case}).",
                                        case=case)
            try:
                value = float(answer)
            except (TypeError, ValueError):
                return ExerciseFeedback(False, f"At {case} your function returned {answer!r}; return one number, "
                                               f"the offset c in l-bit steps.", case=case)
            if abs(value - expected) <= 1e-9:
                continue
            delta = high_bits - low_bits
            if delta == 0:
                hint = "With Δ = 0 nothing is truncated: the stored code is used as it is, so c = 0."
            elif abs(value) <= 1e-9:
                hint = ("0 dequantizes at the bottom of the cells: that is the naive truncation, biased by almost "
                        "half a step. Which W/s_h does the truncated code stand for, on average?")
            elif abs(value - (2 ** delta - 1) / 2) <= 1e-9:
                hint = f"That is the centre in INT-{high_bits} steps; divide by 2^Δ = {2 ** delta} for l-bit steps."
            elif abs(value - 0.5) <= 1e-9:
                hint = (f"1/2 would be right if the cells started exactly at q_l·2^Δ; the first stored code's cell "
                        f"starts half an INT-{high_bits} step lower (W/s_h ≥ q_h − 1/2).")
            else:
                hint = (f"Code q_l stands for the stored codes q_l·2^Δ … q_l·2^Δ + 2^Δ − 1 (Δ = {delta}); take their "
                        f"mean, subtract q_l·2^Δ and divide by 2^Δ.")
            return ExerciseFeedback(False, f"At {case} your function returned {value:g}; expected {expected:g}. "
                                           f"{hint}", case=case, expected=expected, got=value)
    cases = sum(len(lows) for _, lows in bit_sets)
    return ExerciseFeedback(True, f"Correct: your offset matches labkit's truncation_centre in all {cases} cases "
                                  f"(the same c_Δ that method=\"floor\" uses).")
