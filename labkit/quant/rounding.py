"""The second rounding of Double Rounding, on integers only (METHOD.md §1, paper Eq. 2 and 11).

``q_l = clip(round(q_h / 2^Δ), -2^(l-1), 2^(l-1) - 1)`` with Δ = h - l.

Dividing by 2^Δ is an arithmetic shift, so the whole step runs on the stored integer codes without
a float round trip. Three tie rules are offered, because ``q_h / 2^Δ`` lands on an exact .5 often
(8→2 bits: 32/64 = 0.5):

- ``"half_even"``: round half to even, what ``torch.round`` does in the authors' training code;
- ``"half_up"``: add half, then shift (what integer hardware usually does);
- ``"floor"``: a plain shift, i.e. truncation of the low bits (the AdaBits / Bit-Mixer baseline).
"""
from __future__ import annotations

import warnings

import torch

from labkit.quant.ranges import check_bits, int_range

ROUNDING_RULES = ("half_even", "half_up", "floor")


def check_rounding(rounding: str) -> str:
    """Return ``rounding`` if it names a tie rule, else raise a ValueError listing the rules."""
    if rounding not in ROUNDING_RULES:
        raise ValueError(f"rounding={rounding!r} is not a tie rule; use one of {list(ROUNDING_RULES)}.")
    return rounding


def shift_round(q: torch.Tensor, shift: int, rounding: str = "half_even") -> torch.Tensor:
    """``round(q / 2^shift)`` on an integer tensor, with integer operations only and no overflow.

    Every intermediate stays inside the range of ``q``'s dtype, so int8 codes stay int8.
    """
    if shift == 0:
        return q.clone()
    if rounding == "floor":
        return q >> shift
    if rounding == "half_up":
        # floor((q + 2^(shift-1)) / 2^shift) == floor((floor(q / 2^(shift-1)) + 1) / 2)
        halved = q >> (shift - 1)
        carry = halved & 1
        halved >>= 1
        halved += carry
        return halved
    # half_even: floor + floor((remainder + half - 1 + odd(floor)) / 2^shift), i.e. one more when the
    # remainder is above half, or exactly half and floor is odd. Fits the dtype for shift <= bits - 2.
    floor = q >> shift
    remainder = q & ((1 << shift) - 1)
    remainder += floor & 1
    remainder += (1 << (shift - 1)) - 1
    remainder >>= shift
    floor += remainder
    return floor


def double_round(q: torch.Tensor, from_bits: int, to_bits: int, rounding: str = "half_even") -> torch.Tensor:
    """Derive ``to_bits`` codes from stored signed ``from_bits`` codes by integer arithmetic (Eq. 2).

    ``q`` must be an integer tensor of codes in ``int_range(from_bits)``; the result has the same
    dtype, clipped to the signed ``to_bits`` range. ``to_bits == from_bits`` returns a copy.
    """
    from_bits, to_bits = check_bits(from_bits, name="from_bits"), check_bits(to_bits, name="to_bits")
    check_rounding(rounding)
    if to_bits > from_bits:
        raise ValueError(
            f"to_bits={to_bits} is above from_bits={from_bits}: the second rounding only lowers the "
            f"precision; keep the stored {from_bits}-bit codes or store a higher precision."
        )
    if not isinstance(q, torch.Tensor) or q.dtype.is_floating_point or q.dtype.is_complex or q.dtype == torch.bool:
        raise TypeError(
            "double_round works on integer codes (e.g. an int8 tensor); quantize floats first with "
            "round(W / s) and convert with .to(torch.int8)."
        )
    _, qmax = int_range(to_bits)
    kernel = _KERNEL["double_round"]
    if kernel is _shift_round_clip:
        return kernel(q, from_bits - to_bits, rounding, qmax)
    try:
        return kernel(q, from_bits - to_bits, rounding, qmax)
    except Exception as error:  # no working compiler: say so once, in one line, and stay eager
        lines = str(error).strip().splitlines()
        use_fused_double_round(False)
        warnings.warn(f"labkit.quant: torch.compile is unavailable here ({type(error).__name__}: "
                      f"{lines[0] if lines else ''}); double_round runs eagerly (same results).", RuntimeWarning,
                      stacklevel=2)
        return _shift_round_clip(q, from_bits - to_bits, rounding, qmax)


def _shift_round_clip(q: torch.Tensor, shift: int, rounding: str, qmax: int) -> torch.Tensor:
    # Rounding up can overshoot qmax by one; the negative end is exact (-2^(h-1) >> Δ = -2^(l-1)).
    return shift_round(q, shift, rounding).clamp_(max=qmax)


_KERNEL = {"double_round": _shift_round_clip}


def use_fused_double_round(enabled: bool = True) -> None:
    """Run :func:`double_round` as one ``torch.compile``-fused integer loop (one pass over the codes)
    instead of ~7 eager passes; the first call per shape compiles (seconds). Same results bit for bit."""
    if enabled and "compiled" not in _KERNEL:
        _KERNEL["compiled"] = torch.compile(_shift_round_clip, dynamic=None)
    _KERNEL["double_round"] = _KERNEL["compiled"] if enabled else _shift_round_clip


def shift_round_float(q: torch.Tensor, shift: int, rounding: str = "half_even") -> torch.Tensor:
    """The same second rounding on float tensors that hold whole numbers (the fake-quant path).

    Division by a power of two is exact in floating point, so this agrees with :func:`shift_round`
    bit for bit; it lets training avoid an integer round trip.
    """
    if shift == 0:
        return q
    scaled = q * (2.0 ** -shift)
    if rounding == "half_even":
        return torch.round(scaled)
    if rounding == "half_up":
        return torch.floor(scaled + 0.5)
    return torch.floor(scaled)
