"""Baseline weight quantizers that keep FP32 master weights (METHOD.md §7).

- :class:`PerBitScaleWeightQuantizer` — MultiQuant / EQ-Net and the paper's "Ours*": a separate learned
  per-channel LSQ scale for every bit-width on shared FP32 weights. Better at 2 bits, 4× the storage.
  Each per-bit scale starts where a careful LSQ user would start it for that bit-width (``init="auto"``:
  see :data:`PER_BIT_INIT_MEASUREMENT`), not from the 8-bit rule scaled up.
- :class:`DoReFaWeightQuantizer` — Any-Precision DNN: DoReFa quantization of the FP32 masters at every
  bit-width, ``Ŵ = E · (2 · round(k · t) / k − 1)`` with ``t = tanh(W) / (2 max|tanh W|) + 1/2``,
  ``k = 2^b − 1`` and ``E = mean|W|``; no learned parameters.

The floor/truncation baseline (AdaBits / Bit-Mixer) and dedicated LSQ models share the Double Rounding
quantizer's code (:class:`~labkit.quant.weight.TruncationWeightQuantizer` and
:class:`~labkit.quant.weight.LsqWeightQuantizer`); the Matryoshka slicing baseline is :mod:`labkit.quant.matquant`.
"""
from __future__ import annotations

import torch
from torch import nn

from labkit.quant.lsq import fake_quantize, lsq_grad_scale, quantize_codes
from labkit.quant.ranges import int_range
from labkit.quant.weight import WeightQuantizer, channel_view, scale_init


class PerBitScaleWeightQuantizer(WeightQuantizer):
    """Unshared per-bit LSQ scales on FP32 master weights (MultiQuant, the paper's "Ours*")."""

    method = "per_bit_scale"
    default_init = "max"  # MEASURE

    def __init__(self, out_channels: int, bits=(8, 6, 4, 2), rounding: str = "half_even", grad_mode: str = "lsq",
                 init: str = "auto"):
        super().__init__(bits, init)
        self.grad_mode = grad_mode
        # One parameter per bit-width, so an optimizer step at one precision leaves the others untouched.
        self.scale = nn.ParameterDict({str(b): nn.Parameter(torch.ones(out_channels)) for b in self.bit_set})

    @torch.no_grad()
    def reset_scale(self, weight: torch.Tensor) -> None:
        for bits in self.bit_set:
            self.scale[str(bits)].copy_(scale_init(weight, bits, self.init))

    def _scale(self, bits: int) -> torch.Tensor:
        return self.scale[str(bits)]

    def forward(self, weight: torch.Tensor, bits: int) -> torch.Tensor:
        qmin, qmax = int_range(bits)
        return fake_quantize(
            weight,
            channel_view(self._scale(bits), weight),
            qmin,
            qmax,
            grad_factor=lsq_grad_scale(weight[0].numel(), qmax),
            grad_mode=self.grad_mode,
        )

    def codes(self, weight: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
        scale = self._scale(bits).detach()
        return quantize_codes(weight, channel_view(scale, weight), *int_range(bits)), scale.clone()


class DoReFaWeightQuantizer(WeightQuantizer):
    """Any-Precision DNN weights: DoReFa on the FP32 masters, scaled by ``E = mean|W|``."""

    method = "any_precision"

    def __init__(self, out_channels: int, bits=(8, 6, 4, 2), rounding: str = "half_even", grad_mode: str = "lsq",
                 init: str = "auto"):
        super().__init__(bits, init)
        self.out_channels = out_channels

    def reset_scale(self, weight: torch.Tensor) -> None:
        """DoReFa has no learned scale."""

    @staticmethod
    def _normalised(weight: torch.Tensor) -> torch.Tensor:
        t = torch.tanh(weight)
        return t / (2 * t.abs().max().clamp_min(1e-12)) + 0.5

    def forward(self, weight: torch.Tensor, bits: int) -> torch.Tensor:
        levels = (1 << bits) - 1
        t = self._normalised(weight) * levels
        rounded = t + (torch.round(t) - t).detach()  # straight-through round
        return (2 * rounded / levels - 1) * weight.abs().mean().detach()

    def codes(self, weight: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Odd integer codes ``2 · round(k · t) − k`` in [−k, k] and the step ``E / k`` per channel."""
        levels = (1 << bits) - 1
        with torch.no_grad():
            k_t = torch.round(self._normalised(weight) * levels)
            codes = (2 * k_t - levels).to(torch.int16)
            step = (weight.abs().mean() / levels).expand(weight.shape[0]).clone()
        return codes, step
