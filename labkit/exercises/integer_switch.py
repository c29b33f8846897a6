"""Exercise: switch precision on the stored INT8 codes with integer operations only (METHOD.md §1, Eq. 2).

``q_l = clip(round(q_h / 2^Δ), -2^(l-1), 2^(l-1) - 1)`` with Δ = h − l, computed the way integer hardware does:
shifts, masks and adds on the int8 codes, never a float. With ``floor = q_h >> Δ`` and the "half" bit
``(q_h >> (Δ-1)) & 1`` (the first bit shifted out):

- round half up   = floor + half bit                     (= "add half, then shift", without overflow);
- round half even = floor + (half bit AND (any lower bit set OR floor odd)).

The grader compares ``student_fn(codes, high_bits, low_bits)`` with :func:`labkit.quant.rounding.double_round`
on all 256 INT8 codes (shaped like a 4-channel weight), requires int8 in and int8 out, and watches for float ops.
"""
from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode

from labkit.exercises.grading import ExerciseFeedback, Failed, call_student, grader, to_tensor
from labkit.quant.ranges import int_range
from labkit.quant.rounding import check_rounding, double_round

SIGNATURE = "my_integer_switch(codes, high_bits, low_bits) -> int8 Tensor"
TODO = ("floor = codes >> Δ, plus the rounding carry from the bits shifted out (half up: (codes >> (Δ - 1)) & 1), "
        "clipped to the low-bit range.")
FORMULAS = {"floor": "codes >> Δ", "half_up": "(codes >> Δ) + ((codes >> (Δ − 1)) & 1)",
            "half_even": "floor + (half bit & (lower bits ≠ 0 | floor odd)) with floor = codes >> Δ and half bit "
                         "= (codes >> (Δ − 1)) & 1"}


def reference_integer_switch(codes: torch.Tensor, high_bits: int, low_bits: int,
                             rounding: str = "half_up") -> torch.Tensor:
    """Eq. 2 on integers: floor by an arithmetic shift, plus the rounding carry, clipped; the dtype is kept."""
    shift = high_bits - low_bits
    if shift == 0:
        return codes.clone()
    floor = codes >> shift
    half = (codes >> (shift - 1)) & 1
    if rounding == "half_even":
        sticky = (codes & ((1 << (shift - 1)) - 1)) != 0
        half = half & (sticky | (floor & 1).bool()).to(codes.dtype)
    return (floor + half).clamp(max=2 ** (low_bits - 1) - 1)


class _FloatSpy(TorchFunctionMode):
    """Records the torch operations, run inside it, that return a floating-point tensor."""

    def __init__(self):
        super().__init__()
        self.float_ops: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        outputs = result if isinstance(result, (tuple, list)) else (result,)
        if any(isinstance(o, torch.Tensor) and o.is_floating_point() for o in outputs):
            name = getattr(func, "__name__", str(func))
            if name not in self.float_ops:
                self.float_ops.append(name)
        return result


def _hint(got, expected, codes, high_bits, low_bits, rounding) -> str:
    """Name the mistake whole-tensor patterns reveal, or ``""``."""
    shift, (_, lmax) = high_bits - low_bits, int_range(low_bits)
    wide = codes.to(torch.int64)
    if torch.equal(got, double_round(codes, high_bits, low_bits, "floor").to(torch.int64)):
        return "You truncate (a plain shift is floor, the AdaBits/Bit-Mixer baseline); add the rounding bit."
    if torch.equal(got.clamp(max=lmax), expected):
        return (f"Your codes go above {lmax}: rounding up the top INT{high_bits} codes overshoots, so clip to the "
                f"{low_bits}-bit range [{-(lmax + 1)}, {lmax}].")
    other = "half_even" if rounding == "half_up" else "half_up"
    if torch.equal(got, double_round(codes, high_bits, low_bits, other).to(torch.int64)):
        return (f"Your ties go {other.replace('_', '-')}; this check uses {rounding.replace('_', '-')} "
                f"(ties are codes whose shifted-out bits are exactly 100…0).")
    if shift:
        wrapped = ((wide + (1 << (shift - 1))).to(torch.int8).to(torch.int64) >> shift).clamp(max=lmax)
        if torch.equal(got, wrapped) or bool(((got < 0) & (expected > 0) & (wide > 0)).any()):
            return (f"Overflow: codes + 2^(Δ−1) does not fit int8 at the top codes (127 + {1 << (shift - 1)} wraps "
                    f"to {127 + (1 << (shift - 1)) - 256}). Shift first and add the shifted-out half bit: "
                    "(codes >> Δ) + ((codes >> (Δ − 1)) & 1).")
    return ""


@grader(SIGNATURE, TODO)
def check_integer_switch(student_fn, rounding: str = "half_up", high_bits: int = 8,
                         low_bits=(7, 6, 4, 3, 2)) -> ExerciseFeedback:
    """Grade ``student_fn(codes, high_bits, low_bits)`` on all INT8 codes against ``double_round(..., rounding)``
    (``"half_up"``: add half, then shift; ``"half_even"``: as ``torch.round``), integer ops only, dtype kept."""
    check_rounding(rounding)
    qmin, qmax = int_range(high_bits)
    codes = torch.arange(qmin, qmax + 1, dtype=torch.int64).to(torch.int8 if high_bits <= 8 else torch.int16)
    codes = codes.reshape(4, -1)
    float_ops: list[str] = []
    for bits in sorted(set(low_bits), reverse=True):
        case = f"INT{high_bits} -> INT{bits} (Δ = {high_bits - bits}), codes of shape {tuple(codes.shape)}, {codes.dtype}"
        spy = _FloatSpy()
        with spy:
            answer = call_student(student_fn, codes.clone(), high_bits, bits, case=case, todo=TODO)
        got = to_tensor(answer, case, "an integer tensor")
        float_ops += [op for op in spy.float_ops if op not in float_ops]
        if got.shape != codes.shape:
            raise Failed(f"Return one code per input code, shape {tuple(codes.shape)}; you returned shape "
                         f"{tuple(got.shape)} ({case}).", case, tuple(codes.shape), tuple(got.shape))
        expected = double_round(codes, high_bits, bits, rounding).to(torch.int64)
        if got.is_floating_point() and not torch.equal(got, torch.round(got)):
            raise Failed(f"Some outputs are not whole numbers ({case}): codes are integers.", case)
        wrong = got.to(torch.int64) != expected
        if bool(wrong.any()):
            index = tuple(int(i) for i in torch.nonzero(wrong)[0])
            q, shift = int(codes[index]), high_bits - bits
            hint = _hint(got.to(torch.int64), expected, codes, high_bits, bits, rounding)
            raise Failed(f"{int(wrong.sum())} of {codes.numel()} codes differ at {high_bits} -> {bits} bits. "
                         f"q_{high_bits} = {q} (bits {q & ((1 << high_bits) - 1):0{high_bits}b}); "
                         f"{q}/2^{shift} = {q / 2 ** shift:g}: you return {int(got[index])}, expected "
                         f"{int(expected[index])} ({rounding.replace('_', '-')} ties). {hint}".rstrip(),
                         f"q={q}, {high_bits}->{bits} bits", int(expected[index]), int(got[index]))
        if got.dtype != codes.dtype:
            raise Failed(f"Your codes are right but come back as {got.dtype}; keep the stored dtype {codes.dtype} "
                         f"(integer-only switching never widens the INT{high_bits} storage) ({case}).",
                         case, str(codes.dtype), str(got.dtype))
    if float_ops:
        return ExerciseFeedback(False, f"Your codes are right, but your code computes in floating point "
                                       f"({', '.join(float_ops[:4])}). The integer-only path uses shifts, masks and "
                                       f"adds on the int8 codes: {FORMULAS[rounding]}.",
                                "integer-only", "no float ops", float_ops)
    return ExerciseFeedback(True, f"Correct: all {codes.numel()} INT{high_bits} codes match double_round "
                                  f"({rounding.replace('_', '-')} ties) at {', '.join(map(str, sorted(set(low_bits), reverse=True)))} "
                                  f"bits, with integer operations only and the {codes.dtype} dtype kept.")
