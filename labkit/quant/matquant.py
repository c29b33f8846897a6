"""Matryoshka Quantization (MatQuant): nested int8 → int4 → int2 by slicing the most significant bits.

Nair, Datta, Dean, Jain, Kusupati, "Matryoshka Quantization", ICML 2025 (arXiv 2502.06786). A peer of Double
Rounding (issue 14 item 3): one stored c-bit integer tensor serves every lower precision r by keeping its r most
significant bits. The lab implements it as far as the paper and the one public implementation of its slicing
(IST-DASLab's MatGPTQ, ``quant_utils_matgpqt.py``) define it; what the lab could not verify is said below.

**Grid** (the paper's base quantizers are per-channel min–max, asymmetric, on *unsigned* codes)::

    q_c = clip(round(W / s) + z, 0, 2^c − 1)          s = (max − min) / (2^c − 1),  z = round(−min / s)

with ``min``/``max`` of each output channel (the lab widens them to include 0, so z ∈ [0, 2^c − 1]). The
integer zero point z is fixed at that init; the scale s is learned with the LSQ gradient (as for the lab's
other baselines, so all train in the same engine).

**Slicing** to r bits, Δ = c − r, integer operations only (:func:`slice_codes`)::

    q_r = clip(round(q_c / 2^Δ), 0, 2^r − 1)          (the paper's S(q_c, r) = q_r · 2^Δ)

``round`` is the MatGPTQ one: add the highest dropped bit, i.e. ties round *up* (``"half_up"``); the clip
catches the top codes that round up past 2^r − 1.

**Dequantization** with the c-bit scale and zero point (the sliced code lives on the c-bit grid)::

    Ŵ_r = s · (q_r · 2^Δ − z)  =  (q_r − z / 2^Δ) · (s · 2^Δ)

so the integer path is ``codes = q_r``, ``step = s · 2^Δ`` and a per-channel ``code_offset = −z / 2^Δ``
(fractional unless 2^Δ divides z: an export must add it in float, or store ``q_r << Δ`` with zero point z).

**Where it differs from Double Rounding** (METHOD.md §1): Double Rounding uses a *signed symmetric* grid
without a zero point, ``[−2^(h−1), 2^(h−1) − 1]``, whose lower grids ``q_l · s_h · 2^Δ`` always contain 0 and
stay symmetric about it; MatQuant's unsigned grid is centred on the channel's min–max range, so its r-bit grid
``s · (k · 2^Δ − z)`` contains W = 0 only when 2^Δ divides z. Tie rule: Double Rounding's authors round half to
even (``torch.round``), MatGPTQ half up. Clipping: Double Rounding's top code can overflow by one at l < h and is
clipped (e.g. 96/64 → 2 → 1 at 8 → 2 bits), MatQuant's top 2^(Δ−1) codes likewise collapse onto 2^r − 1.

**Training** (the paper's QAT variant): one model, the loss a weighted sum over the bit-widths,
``Σ_r λ_r · L(model at r bits)``, one optimizer step on it (:func:`accumulate_multi_bit_gradients` computes
the same gradient one precision at a time). The lab's default weights are λ_r = 1 for every r.

**Not verified** (no official code exists): the exact λ_r of the paper's runs (it reports re-weighting
ablations), whether its QAT learns the zero point or clips the min–max range, how it treats ties and the clip
at the top in its own code (the lab follows MatGPTQ), its co-distillation and "extra precision" outlier bit
(not implemented). The paper reports LLMs only; no CNN results exist to compare with.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from labkit.quant.ranges import check_bits
from labkit.quant.rounding import check_rounding, shift_round, shift_round_float
from labkit.quant.weight import WeightQuantizer, channel_view

MATQUANT_INITS = ("auto", "max", "minmax")
"""Scale inits MatQuant accepts: ``"minmax"`` (= ``"max"`` = ``"auto"``): the channel's min–max range, nothing clipped."""


def unsigned_dtype(bits: int) -> torch.dtype:
    """The smallest integer dtype holding unsigned ``bits``-bit codes [0, 2^bits − 1]."""
    return torch.uint8 if bits <= 8 else torch.int16 if bits <= 15 else torch.int32


def slice_codes(q: torch.Tensor, from_bits: int, to_bits: int, rounding: str = "half_up") -> torch.Tensor:
    """MatQuant's slicing on integers: ``clip(round(q / 2^Δ), 0, 2^to_bits − 1)`` of unsigned ``from_bits`` codes.

    ``q`` is an integer tensor of codes in [0, 2^from_bits − 1]; ``rounding`` is ``"half_up"`` (MatGPTQ: add the
    highest dropped bit), ``"half_even"`` or ``"floor"`` (plain truncation). Same dtype as ``q``.
    """
    from_bits, to_bits = check_bits(from_bits, name="from_bits"), check_bits(to_bits, name="to_bits")
    check_rounding(rounding)
    if to_bits > from_bits:
        raise ValueError(f"to_bits={to_bits} is above from_bits={from_bits}: slicing only drops bits.")
    if not isinstance(q, torch.Tensor) or q.dtype.is_floating_point or q.dtype.is_complex or q.dtype == torch.bool:
        raise TypeError("slice_codes works on integer codes (e.g. a uint8 tensor of unsigned codes).")
    return shift_round(q, from_bits - to_bits, rounding).clamp_(max=(1 << to_bits) - 1)


def _slice_float(codes_c: torch.Tensor, shift: int, rounding: str, top: int) -> torch.Tensor:
    """:func:`slice_codes` on float tensors holding whole numbers (the fake-quant path): the same values exactly."""
    return shift_round_float(codes_c, shift, rounding).clamp_(max=top)


class _MatQuantFakeQuantize(torch.autograd.Function):
    """``Ŵ = (slice(clip(round(W/s) + z)) − z/2^Δ) · s · 2^Δ`` with LSQ straight-through gradients.

    Backward (Eq. 13–14 on MatQuant's grid, mask following the stored c-bit code): ``∂Ŵ/∂W = 1`` where neither
    the c-bit code nor the sliced code was clipped, else 0; ``∂Ŵ/∂s = (q_r·2^Δ − z) − W/s`` inside and
    ``q_r·2^Δ − z`` where clipped, summed per channel and times the LSQ factor ``g``.
    """

    @staticmethod
    def forward(ctx, x, scale, zero, high_bits, shift, rounding, grad_factor):
        ctx.save_for_backward(x, scale, zero)
        ctx.settings = (high_bits, shift, rounding, grad_factor)
        codes, _, _ = _mat_codes(x, scale, zero, high_bits, shift, rounding)
        return _dequantize(codes, scale, zero, shift)

    @staticmethod
    def backward(ctx, grad):
        x, scale, zero = ctx.saved_tensors
        high_bits, shift, rounding, grad_factor = ctx.settings
        codes, v, inside = _mat_codes(x, scale, zero, high_bits, shift, rounding)
        grad_x = grad.masked_fill(~inside, 0.0)
        value = codes * (2.0 ** shift) - zero  # q_r · 2^Δ − z: the dequantized value in units of s
        per_element = torch.where(inside, value - v, value) * grad
        return grad_x, per_element.sum_to_size(scale.shape) * grad_factor, None, None, None, None, None


def _mat_codes(x, scale, zero, high_bits: int, shift: int, rounding: str):
    """(sliced codes as floats, v = x/s, where neither the c-bit code nor the sliced code was clipped)."""
    v = x * scale.reciprocal()
    unclipped_c = torch.round(v) + zero
    top_c, top_r = (1 << high_bits) - 1, (1 << (high_bits - shift)) - 1
    codes_c = unclipped_c.clamp(0, top_c)
    unclipped_r = shift_round_float(codes_c, shift, rounding)
    codes = unclipped_r.clamp(max=top_r)
    inside = (unclipped_c == codes_c) & (unclipped_r == codes)
    return codes, v, inside


def _dequantize(codes, scale, zero, shift: int):
    """``(q_r − z / 2^Δ) · (s · 2^Δ)``: the same float operations as the integer path (``code_offset``, ``step``)."""
    return (codes - zero * (2.0 ** -shift)) * (scale * (2.0 ** shift))


class MatQuantWeightQuantizer(WeightQuantizer):
    """MatQuant weights (``method="matquant"``): unsigned min–max INT-c codes stored, lower bits by slicing.

    See the module docstring for the grid, the slicing, where it differs from Double Rounding and what is not
    verified. ``stored_codes`` behaves as for Double Rounding: set by ``load_int``, used in eval mode, dropped at
    the first training forward (the float weights are first set to the stored codes' values, so training
    starts from the stored model).
    """

    method = "matquant"
    nested = True
    default_init = "minmax"

    def __init__(self, out_channels: int, bits=(8, 4, 2), rounding: str = "half_up", grad_mode: str = "lsq",
                 init: str = "auto"):
        if init not in MATQUANT_INITS:
            raise ValueError(f"method='matquant' initialises its grid from each channel's min–max range; pass "
                             f"weight_init in {list(MATQUANT_INITS)} (got {init!r}).")
        super().__init__(bits, "max")
        self.init = "minmax"
        if grad_mode != "lsq":
            raise ValueError("method='matquant' has the LSQ gradient only; pass grad_mode='lsq'.")
        self.rounding = check_rounding(rounding)
        self.grad_mode = grad_mode
        self.out_channels = out_channels
        self.scale = nn.Parameter(torch.ones(out_channels))
        self.register_buffer("zero_point", torch.zeros(out_channels))  # whole numbers in [0, 2^c − 1]
        self.register_buffer("stored_codes", None, persistent=False)
        self._integer_weight_cache: tuple[int, torch.Tensor] | None = None

    def shift(self, bits: int) -> int:
        return self.high_bits - bits

    @torch.no_grad()
    def reset_scale(self, weight: torch.Tensor) -> None:
        """Min–max per output channel, widened to include 0: ``s = (max − min)/(2^c − 1)``, ``z = round(−min/s)``."""
        flat = weight.detach().flatten(1)
        low = flat.amin(dim=1).clamp(max=0.0)
        high = flat.amax(dim=1).clamp(min=0.0)
        top = (1 << self.high_bits) - 1
        scale = ((high - low) / top).clamp_min(1e-8)
        self.scale.copy_(scale)
        self.zero_point.copy_(torch.round(-low / scale).clamp(0, top))

    def drop_stored_codes(self) -> None:
        self.stored_codes = None
        self._integer_weight_cache = None

    def forward(self, weight: torch.Tensor, bits: int) -> torch.Tensor:
        bits = self.check(bits)
        if self.stored_codes is not None:
            if self.training and torch.is_grad_enabled():
                with torch.no_grad():  # train from the stored model, then quantize the float weights from now on
                    weight.copy_(self.dequantize_high(self.stored_codes).to(weight.dtype))
                self.drop_stored_codes()
            else:
                cache = self._integer_weight_cache
                if cache is None or cache[0] != bits or cache[1].device != weight.device or cache[1].dtype != weight.dtype:
                    codes, step = self.codes(weight, bits)
                    offset = channel_view(self.code_offset(bits), weight).to(weight.dtype)
                    self._integer_weight_cache = (bits, (codes.to(weight.dtype) + offset) * channel_view(step, weight))
                return self._integer_weight_cache[1]
        grad_factor = 1.0 / math.sqrt(max(weight[0].numel(), 1) * ((1 << bits) - 1))  # LSQ's g, Q_P = 2^r − 1
        return _MatQuantFakeQuantize.apply(weight, channel_view(self.scale, weight),
                                           channel_view(self.zero_point.to(weight.dtype), weight),
                                           self.high_bits, self.shift(bits), self.rounding, grad_factor)

    def dequantize_high(self, codes: torch.Tensor) -> torch.Tensor:
        """The float weight of stored INT-c codes: ``s · (q_c − z)``."""
        view = channel_view(self.scale.detach(), codes)
        return (codes.to(view.dtype) - channel_view(self.zero_point.to(view.dtype), codes)) * view

    def high_codes(self, weight: torch.Tensor) -> torch.Tensor:
        """The stored unsigned INT-c codes ``clip(round(W / s) + z, 0, 2^c − 1)``."""
        if self.stored_codes is not None:
            return self.stored_codes
        with torch.no_grad():
            view = channel_view(self.scale.detach(), weight)
            codes = torch.round(weight * view.reciprocal()) + channel_view(self.zero_point.to(weight.dtype), weight)
            return codes.clamp_(0, (1 << self.high_bits) - 1).to(unsigned_dtype(self.high_bits))

    def codes(self, weight: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(r-bit codes sliced from the stored codes by integer arithmetic, per-channel step ``s · 2^Δ``)."""
        bits = self.check(bits)
        codes = slice_codes(self.high_codes(weight), self.high_bits, bits, self.rounding)
        return codes, self.scale.detach() * (2.0 ** self.shift(bits))

    def code_offset(self, bits: int) -> torch.Tensor:
        """``−z / 2^Δ`` per channel: the weight is ``(codes + offset) · step``."""
        return -self.zero_point.to(self.scale.dtype) * (2.0 ** -self.shift(self.check(bits)))

    def extra_repr(self) -> str:
        return f"bits={list(self.bit_set)}, rounding={self.rounding!r}, init='minmax'"


def accumulate_multi_bit_gradients(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                                   bit_weights: dict | None = None, loss_fn=None) -> dict[int, float]:
    """MatQuant's training objective ``Σ_r λ_r · L(model at r bits)``: its gradient, accumulated into ``.grad``.

    One forward/backward per bit-width r (the model switched with :func:`labkit.set_bits`), each loss scaled by
    λ_r (default 1 for every trained bit-width), so the parameters' ``.grad`` hold the gradient of the weighted
    sum — the same as one backward of the summed loss, with one precision's activations in memory at a time.
    The caller zeroes the gradients before and takes one optimizer step after (like Alg. A.1). Returns the
    per-bit loss values; the model is left at its highest bit-width.
    """
    from labkit.convert import set_bits, trained_bits

    loss_fn = loss_fn or nn.functional.cross_entropy
    bits_set = trained_bits(model)
    weights = {b: 1.0 for b in bits_set} if bit_weights is None else {int(b): float(w) for b, w in bit_weights.items()}
    unknown = sorted(set(weights) - set(bits_set))
    if unknown:
        raise ValueError(f"bit_weights names {unknown}, which the model was not quantized for; use bits from "
                         f"{list(bits_set)}.")
    losses = {}
    for bits in sorted(weights, reverse=True):
        set_bits(model, bits)
        loss = loss_fn(model(images), labels)
        (loss * weights[bits]).backward()
        losses[bits] = float(loss.detach())
    set_bits(model, max(bits_set))
    return losses
