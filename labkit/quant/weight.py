"""Weight quantizers whose lower precisions come from stored integers (METHOD.md §1, §3, §7).

:class:`DoubleRoundingWeightQuantizer` is the paper's quantizer: one learned per-output-channel scale
``s_h`` of the highest bit-width h; the stored INT-h codes are ``q_h = clip(round(W / s_h))`` (Eq. 1)
and every lower bit-width l is derived from them by a second rounding (Eq. 2) and dequantized with the
tied scale ``s_h · 2^Δ`` (Eq. 3). At l = h it is plain LSQ. With ``rounding="floor"`` the second rounding
truncates the low bits: the AdaBits / Bit-Mixer baseline. :class:`LsqWeightQuantizer` is the same
quantizer restricted to one bit-width: a dedicated single-precision LSQ model.
"""
from __future__ import annotations

import torch
from torch import nn

from labkit.quant.lsq import fake_quantize, lsq_grad_scale, quantize_codes
from labkit.quant.ranges import check_bit_set, check_bits, int_range
from labkit.quant.rounding import check_rounding, double_round


def channel_view(scale: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Reshape a per-output-channel vector so it broadcasts over ``weight`` (channels first)."""
    return scale.view(-1, *([1] * (weight.dim() - 1)))


SCALE_INITS = ("max", "reference")


def reference_scale_init(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-channel scale init of the reference code: ``max(|μ − 3σ|, |μ + 3σ|) / 2^(b−1)`` (METHOD.md §3)."""
    flat = weight.detach().flatten(1)
    mean = flat.mean(dim=1)
    std = flat.std(dim=1, unbiased=False) if flat.shape[1] > 1 else flat.abs().squeeze(1)
    spread = torch.maximum((mean - 3 * std).abs(), (mean + 3 * std).abs())
    return (spread / (1 << (bits - 1))).clamp_min(1e-8)


def max_scale_init(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-channel ``max|W| / (2^(b−1) − 1)``: no weight is clipped at the start.

    The 3σ rule clips the largest weights of channels with few weights (a 3×3 depthwise channel has 9):
    a pretrained EfficientNet-Lite0 fell from 81 % to 36 % top-1 at 16 bits with it, and kept 80 % at 8 bits
    with this rule (128 ImageNet val images, no training). So this is the default; ``"reference"`` follows
    the authors' code.
    """
    return (weight.detach().flatten(1).abs().amax(dim=1) / ((1 << (bits - 1)) - 1)).clamp_min(1e-8)


def scale_init(weight: torch.Tensor, bits: int, rule: str = "max") -> torch.Tensor:
    """The initial per-channel scale of ``bits`` by ``rule`` (``"max"`` or ``"reference"``)."""
    if rule not in SCALE_INITS:
        raise ValueError(f"weight_init={rule!r} is unknown; use one of {list(SCALE_INITS)}.")
    return max_scale_init(weight, bits) if rule == "max" else reference_scale_init(weight, bits)


class WeightQuantizer(nn.Module):
    """Common interface: ``forward(weight, bits)`` fake-quantizes, ``codes(weight, bits)`` gives integers."""

    method = "base"
    #: True when every trained precision can be derived from one stored INT-h tensor.
    nested = False

    def __init__(self, bits, init: str = "max"):
        super().__init__()
        self.bit_set = check_bit_set(bits)
        if init not in SCALE_INITS:
            raise ValueError(f"weight_init={init!r} is unknown; use one of {list(SCALE_INITS)}.")
        self.init = init

    @property
    def high_bits(self) -> int:
        return self.bit_set[0]

    def check(self, bits) -> int:
        return check_bits(bits, allowed=self.bit_set)

    def extra_repr(self) -> str:
        return f"bits={list(self.bit_set)}"


class DoubleRoundingWeightQuantizer(WeightQuantizer):
    """Double Rounding (Eq. 1–3, 10–12) with per-channel LSQ scale and gradients (Eq. 13–14).

    Args:
        out_channels: number of output channels (one learned scale each).
        bits: the trained bit set, e.g. ``(8, 6, 4, 2)``; the highest is stored.
        rounding: tie rule of the second rounding, ``"half_even"``, ``"half_up"`` or ``"floor"``.
        grad_mode: ``"lsq"`` (clean per-channel LSQ gradient) or ``"reference"`` (the authors' code).
    """

    method = "double_rounding"
    nested = True

    def __init__(self, out_channels: int, bits=(8, 6, 4, 2), rounding: str = "half_even", grad_mode: str = "lsq",
                 init: str = "max"):
        super().__init__(bits, init)
        self.rounding = check_rounding(rounding)
        self.grad_mode = grad_mode
        self.scale = nn.Parameter(torch.ones(out_channels))
        # Set by :func:`labkit.load_int`: the stored INT-h codes; forward then runs on integers only.
        self.register_buffer("stored_codes", None, persistent=False)
        self._integer_weight_cache: tuple[int, torch.Tensor] | None = None

    @torch.no_grad()
    def reset_scale(self, weight: torch.Tensor) -> None:
        """Initialise ``s_h`` from the weight (``init``: max|W| per channel, or the reference code's 3σ rule)."""
        self.scale.copy_(scale_init(weight, self.high_bits, self.init))

    def shift(self, bits: int) -> int:
        """Δ = h − l, the number of low bits the second rounding drops."""
        return self.high_bits - bits

    def forward(self, weight: torch.Tensor, bits: int) -> torch.Tensor:
        """The dequantized l-bit weight ``Ŵ_l = q_l · s_h · 2^Δ`` used by the layer (Eq. 3)."""
        if self.stored_codes is not None and not (self.training and torch.is_grad_enabled()):
            # Integer-only switching: derive the l-bit codes once per switch, then reuse the weight.
            cache = self._integer_weight_cache
            if cache is None or cache[0] != bits or cache[1].device != weight.device or cache[1].dtype != weight.dtype:
                codes, step = self.codes(weight, bits)
                self._integer_weight_cache = (bits, codes.to(weight.dtype) * channel_view(step, weight))
            return self._integer_weight_cache[1]
        qmin, qmax = int_range(bits)
        grad_factor = lsq_grad_scale(weight[0].numel(), qmax)
        return fake_quantize(
            weight,
            channel_view(self.scale, weight),
            qmin,
            qmax,
            shift=self.shift(bits),
            rounding=self.rounding,
            grad_factor=grad_factor,
            grad_mode=self.grad_mode,
        )

    def high_codes(self, weight: torch.Tensor) -> torch.Tensor:
        """The stored INT-h codes ``q_h = clip(round(W / s_h))`` (Eq. 1)."""
        if self.stored_codes is not None:
            return self.stored_codes
        return quantize_codes(weight, channel_view(self.scale.detach(), weight), *int_range(self.high_bits))

    def codes(self, weight: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(l-bit integer codes from the stored codes by integer arithmetic, per-channel step ``s_h · 2^Δ``)."""
        codes = double_round(self.high_codes(weight), self.high_bits, bits, self.rounding)
        return codes, self.scale.detach() * (2.0 ** self.shift(bits))

    def extra_repr(self) -> str:
        return f"bits={list(self.bit_set)}, rounding={self.rounding!r}, grad_mode={self.grad_mode!r}, init={self.init!r}"


class LsqWeightQuantizer(DoubleRoundingWeightQuantizer):
    """Single-precision LSQ (Esser et al. 2020): the baseline of one dedicated model per bit-width."""

    method = "lsq"

    def __init__(self, out_channels: int, bits=(4,), rounding: str = "half_even", grad_mode: str = "lsq",
                 init: str = "max"):
        bit_set = check_bit_set(bits)
        if len(bit_set) != 1:
            raise ValueError(
                f"method='lsq' trains one dedicated model per bit-width, got bits={list(bit_set)}; "
                "pass a single bit-width such as bits=(4,), or use method='double_rounding' for a bit set."
            )
        super().__init__(out_channels, bit_set, rounding, grad_mode, init)
