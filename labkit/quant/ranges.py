"""Integer ranges of b-bit codes and the validation of bit-widths (METHOD.md §1–2)."""
from __future__ import annotations

import numbers

from labkit.errors import BitWidthError

MIN_BITS = 2
MAX_BITS = 16


def check_bits(bits, *, allowed=None, name: str = "bits") -> int:
    """Return ``bits`` as an int, or raise one :class:`BitWidthError` that says what to pass instead.

    A bit-width is a whole number from 2 to 16 (a signed 1-bit code holds only {-1, 0}); when
    ``allowed`` is given (the bit set a model was trained for), it must also be one of those.
    """
    allowed = tuple(sorted({int(b) for b in allowed}, reverse=True)) if allowed is not None else None
    valid = f"one of the trained bit-widths {list(allowed)}" if allowed else f"a whole number from {MIN_BITS} to {MAX_BITS}"
    if isinstance(bits, bool) or not isinstance(bits, numbers.Real) or not float(bits).is_integer():
        raise BitWidthError(
            f"{name} must be a whole number of bits, got {bits!r} ({type(bits).__name__}); pass {valid}, e.g. "
            f"{allowed[-1] if allowed else 4}."
        )
    bits = int(bits)
    if bits < MIN_BITS or bits > MAX_BITS:
        raise BitWidthError(
            f"{name}={bits} is outside {MIN_BITS}..{MAX_BITS}: Double Rounding needs at least "
            f"{MIN_BITS} bits (a signed 1-bit code holds only {{-1, 0}}) and the lab stores at most "
            f"{MAX_BITS}-bit integers; pass {valid}."
        )
    if allowed is not None:
        if bits not in allowed:
            above = " (above the stored precision)" if bits > max(allowed) else ""
            raise BitWidthError(
                f"{name}={bits}{above} is not in the trained bit set {list(allowed)}: this model has "
                f"batch-norm statistics and activation scales only for those; use one of them or "
                f"train with bits including {bits}."
            )
    return bits


def check_bit_set(bits) -> tuple[int, ...]:
    """Validate a bit set such as ``(8, 6, 4, 2)``; return it sorted high to low, without repeats."""
    if isinstance(bits, (str, bytes)) or not hasattr(bits, "__iter__"):
        bits = (bits,)
    checked = tuple(sorted({check_bits(b) for b in bits}, reverse=True))
    if not checked:
        raise BitWidthError("the bit set is empty; pass at least one bit-width such as (8, 6, 4, 2).")
    return checked


def int_range(bits, signed: bool = True) -> tuple[int, int]:
    """(qmin, qmax) of a b-bit integer code (METHOD.md §1 and §2).

    Signed codes use the full negative code, ``[-2^(b-1), 2^(b-1) - 1]`` ([-128, 127] at 8 bits);
    unsigned codes (activations after ReLU, Eq. 4) use ``[0, 2^b - 1]``.
    """
    bits = check_bits(bits)
    if signed:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1
