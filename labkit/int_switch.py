"""Integer precision switching near the memory-bandwidth limit (METHOD.md §1, paper Eq. 2; issue 11, item 5).

``q_l = clip(round(q_h / 2^Δ), -2^(l-1), 2^(l-1) - 1)`` with Δ = h − l, on stored INT8 codes, bit for bit as
:func:`labkit.quant.rounding.double_round` computes it -- but in one pass over the bytes, four codes at a time.

How (SIMD within a register): the int8 codes are read as int32 words, four codes a word. Flipping each byte's
sign bit turns a code q into the unsigned u = q + 128, and since 2^Δ divides 128,
``floor(q / 2^Δ) = (u >> Δ) - 2^(7-Δ)``. Every step then stays inside its own byte: a shift followed by a byte
mask (so no bit leaks in from the neighbouring code), the rounding carry (half up: the last bit shifted out;
half even: that bit AND (a lower dropped bit set OR the kept part odd)), the clip at the top (only rounding up
of the largest codes can reach 2^(8-Δ), which is taken back by one), and adding 128 − 2^(7−Δ) before flipping
the sign bits back; no byte ever exceeds 255, so no carry crosses into the next code. With ``torch.compile``
these dozen word operations fuse into one vectorised loop that reads and writes each byte once, like a copy; Δ
and the masks are tensor arguments, so one compilation per tie rule serves every bit-width. Lengths that are
not a multiple of four, misaligned views and machines where no compiler works fall back to ``double_round``
(the last with a one-line warning), with the same results.

:class:`CodeBank` keeps the INT8 codes of all layers of a model in one flat buffer, so switching the whole model
is one kernel call writing into one preallocated output buffer whose per-layer views are the new codes.
"""
from __future__ import annotations

import warnings
from typing import Mapping

import torch

from labkit.quant.ranges import check_bits, int_range
from labkit.quant.rounding import check_rounding, double_round

__all__ = ["CodeBank", "compiled_switch_error", "switch_int8", "use_compiled_switch"]

HIGH_BITS = 8


def _bytes(value: int) -> int:
    """The int32 word whose four bytes are all ``value`` (0..255), as a signed Python int."""
    return int.from_bytes(bytes([value]) * 4, "little", signed=True)


_SIGN, _ONE = _bytes(0x80), _bytes(1)


_CONSTANTS: dict = {}


def _word_constants(shift: int, device) -> torch.Tensor:
    """Δ, Δ−1, 8−Δ and the byte masks/offsets of the word kernel as one int32 tensor (Δ is not compiled in)."""
    key = (shift, device)
    if key not in _CONSTANTS:
        values = [shift, shift - 1, 8 - shift, _bytes(0xFF >> (shift - 1)), _bytes(0xFF >> shift),
                  _bytes((1 << (shift - 1)) - 1), _bytes(128 - (1 << (7 - shift)))]
        _CONSTANTS[key] = torch.tensor(values, dtype=torch.int32, device=device)
    return _CONSTANTS[key]


def _switch_words(words: torch.Tensor, out: torch.Tensor, constants: torch.Tensor, rounding: str) -> torch.Tensor:
    """Eq. 2 on four int8 codes per int32 word of ``words`` (Δ ≥ 1), written into ``out`` (see the module text)."""
    shift, shift_1, top, mask_1, mask_0, low, bias = constants.unbind()
    unsigned = words ^ _SIGN  # every byte: u = q + 128
    if rounding == "floor":
        rounded = (unsigned >> shift) & mask_0
    else:
        halved = (unsigned >> shift_1) & mask_1  # u >> (Δ-1): the kept part and the first dropped bit
        floor = (halved >> 1) & mask_0
        if rounding == "half_up":
            rounded = floor + (halved & _ONE)
        else:  # half even: the first dropped bit AND (a lower dropped bit set OR floor odd)
            sticky = ((unsigned & low) + low) >> shift_1
            rounded = floor + (halved & (sticky | floor) & _ONE)
        rounded = rounded - ((rounded >> top) & _ONE)  # clip: 2^(8-Δ) (above the top code) becomes 2^(8-Δ) - 1
    out.copy_((rounded + bias) ^ _SIGN)
    return out


_STATE: dict = {"compiled": None, "enabled": True, "failed": None}


def use_compiled_switch(enabled: bool = True) -> None:
    """Run :func:`switch_int8` through the compiled word kernel (default) or through ``double_round``."""
    _STATE["enabled"] = bool(enabled)


def compiled_switch_error() -> str | None:
    """Why the compiled kernel is not used (the compiler's error), or None while it works."""
    return _STATE["failed"]


def _word_views(codes: torch.Tensor, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``codes`` and ``out`` as int32 words, or None (length not a multiple of 4, not contiguous, misaligned)."""
    if codes.numel() % 4 or not (codes.is_contiguous() and out.is_contiguous()):
        return None
    try:
        return codes.reshape(-1).view(torch.int32), out.reshape(-1).view(torch.int32)
    except RuntimeError:
        return None


def _compiled_words(words, out_words, shift: int, rounding: str) -> bool:
    """Run the compiled word kernel; False (and eager from now on, said once) when no compiler works."""
    if _STATE["compiled"] is None:
        _STATE["compiled"] = torch.compile(_switch_words, dynamic=None)
    try:
        _STATE["compiled"](words, out_words, _word_constants(shift, words.device), rounding)
        return True
    except Exception as error:  # no working compiler here
        _STATE["failed"] = f"{type(error).__name__}: {error}"[:200]
        warnings.warn(f"labkit.int_switch: torch.compile is unavailable ({_STATE['failed']}); integer switching "
                      "runs eagerly through double_round (same results, slower).", stacklevel=4)
        return False


def switch_int8(codes: torch.Tensor, to_bits: int, rounding: str = "half_even", out: torch.Tensor | None = None,
                from_bits: int = HIGH_BITS) -> torch.Tensor:
    """``double_round(codes, from_bits, to_bits, rounding)`` for int8 codes, bit for bit, in one pass (Eq. 2).

    ``codes``: an int8 tensor of codes in the signed ``from_bits`` range. ``out``: an int8 tensor of the same
    shape to write into (returned). The one-pass kernel serves ``from_bits == 8``; other cases, and
    ``to_bits == from_bits`` (a copy), run ``double_round``.
    """
    from_bits, to_bits = check_bits(from_bits, name="from_bits"), check_bits(to_bits, name="to_bits")
    check_rounding(rounding)
    if not isinstance(codes, torch.Tensor) or codes.dtype != torch.int8:
        raise TypeError(f"switch_int8 takes int8 codes, not {getattr(codes, 'dtype', type(codes).__name__)}; use "
                        "labkit.quant.double_round for other integer dtypes.")
    if out is not None and (not isinstance(out, torch.Tensor) or out.dtype != torch.int8 or out.shape != codes.shape):
        raise ValueError(f"out must be an int8 tensor of shape {tuple(codes.shape)}, got "
                         f"{getattr(out, 'dtype', type(out).__name__)} {tuple(getattr(out, 'shape', ()))}.")
    shift = from_bits - to_bits
    if from_bits == HIGH_BITS and shift > 0 and _STATE["enabled"] and _STATE["failed"] is None:
        target = torch.empty_like(codes, memory_format=torch.contiguous_format) if out is None else out
        views = _word_views(codes, target)
        if views is not None and _compiled_words(*views, shift, rounding):
            return target
    result = double_round(codes, from_bits, to_bits, rounding)
    return result if out is None else out.copy_(result)


class CodeBank:
    """The INT8 codes of many layers in one flat buffer; :meth:`switch` derives all layers' b-bit codes at once.

    ``CodeBank({name: int8 codes})`` or :meth:`from_model` (a model rebuilt by :func:`labkit.load_int`, or any
    model quantized with ``bits`` topped by 8). ``switch(bits)`` returns ``{name: codes}``, views into one
    output buffer that the next ``switch`` overwrites (copy them to keep them).
    """

    def __init__(self, codes: Mapping[str, torch.Tensor], rounding: str = "half_even"):
        if not codes:
            raise ValueError("CodeBank needs at least one layer's codes.")
        bad = [name for name, c in codes.items() if not isinstance(c, torch.Tensor) or c.dtype != torch.int8]
        if bad:
            raise TypeError(f"CodeBank holds int8 codes; {bad[:3]} are not int8 tensors.")
        devices = {c.device for c in codes.values()}
        if len(devices) != 1:
            raise ValueError(f"CodeBank's codes must share one device, got {sorted(map(str, devices))}.")
        self.rounding = check_rounding(rounding)
        self.shapes = {name: tuple(c.shape) for name, c in codes.items()}
        total = sum(c.numel() for c in codes.values())
        padding = torch.zeros(-total % 4, dtype=torch.int8, device=devices.pop())  # whole int32 words
        self.codes = torch.cat([c.reshape(-1) for c in codes.values()] + [padding])
        self._out = torch.empty_like(self.codes)
        self._bounds, start = {}, 0
        for name, c in codes.items():
            self._bounds[name] = (start, start + c.numel())
            start += c.numel()
        self._views = {name: self._out[a:b].view(self.shapes[name]) for name, (a, b) in self._bounds.items()}

    @classmethod
    @torch.no_grad()
    def from_model(cls, model: torch.nn.Module) -> "CodeBank":
        """The stored INT8 codes of every quantized layer of ``model`` (its tie rule must be one for all)."""
        from labkit.convert import quantized_layers

        layers = quantized_layers(model)
        if not layers:
            raise ValueError("the model has no quantized layers; quantize it (labkit.quantize_model) or load_int it.")
        quantizers = {name: layer.weight_quantizer for name, layer in layers.items()}
        not_int8 = [name for name, q in quantizers.items() if not getattr(q, "nested", False) or q.high_bits != 8]
        if not_int8:
            raise ValueError(f"layers {not_int8[:3]} do not derive their bit-widths from stored INT8 codes "
                             "(a nested method whose highest bit-width is 8 does).")
        rules = {q.rounding for q in quantizers.values()}
        if len(rules) != 1:
            raise ValueError(f"the layers use different tie rules {sorted(rules)}; build one CodeBank per rule.")
        codes = {name: q.high_codes(layers[name].weight).to(torch.int8) for name, q in quantizers.items()}
        return cls(codes, rules.pop())

    def __len__(self) -> int:
        return len(self.shapes)

    @property
    def numel(self) -> int:
        """Codes in all layers together."""
        return sum(stop - start for start, stop in self._bounds.values())

    def switch(self, bits: int) -> dict[str, torch.Tensor]:
        """Every layer's ``bits``-bit codes (Eq. 2 from its INT8 codes): views of one reused output buffer."""
        switch_int8(self.codes, bits, self.rounding, out=self._out)
        return dict(self._views)
