"""Quantizers of the lab: integer ranges, Double Rounding, LSQ autograd, weight/activation quantizers, baselines."""
from __future__ import annotations

from labkit.quant.activation import ActivationQuantizer
from labkit.quant.baselines import DoReFaWeightQuantizer, PerBitScaleWeightQuantizer
from labkit.quant.lsq import fake_quantize, lsq_grad_scale, quantize_codes
from labkit.quant.matquant import MatQuantWeightQuantizer, accumulate_multi_bit_gradients, slice_codes
from labkit.quant.ranges import check_bit_set, check_bits, int_range
from labkit.quant.rounding import ROUNDING_RULES, double_round
from labkit.quant.weight import (SCALE_INITS, DoubleRoundingWeightQuantizer, LsqWeightQuantizer,
                                 TruncationWeightQuantizer, WeightQuantizer)

#: ``method=`` name → (weight quantizer class, forced tie rule or None). METHOD.md §7.
#: ``"floor"`` is truncation dequantized at the cell centre (fair); ``"floor_naive"`` at the cell bottom (biased).
WEIGHT_METHODS = {
    "double_rounding": (DoubleRoundingWeightQuantizer, None),
    "floor": (TruncationWeightQuantizer, "floor"),
    "floor_naive": (DoubleRoundingWeightQuantizer, "floor"),
    "matquant": (MatQuantWeightQuantizer, "half_up"),
    "per_bit_scale": (PerBitScaleWeightQuantizer, None),
    "any_precision": (DoReFaWeightQuantizer, None),
    "lsq": (LsqWeightQuantizer, None),
}


def make_weight_quantizer(method: str, out_channels: int, bits, rounding: str = "half_even", grad_mode: str = "lsq",
                          init: str = "auto") -> WeightQuantizer:
    """Build the weight quantizer that ``method=`` names (see :data:`WEIGHT_METHODS`)."""
    if method not in WEIGHT_METHODS:
        raise ValueError(f"method={method!r} is unknown; use one of {sorted(WEIGHT_METHODS)}.")
    cls, forced_rounding = WEIGHT_METHODS[method]
    return cls(out_channels, bits, rounding=forced_rounding or rounding, grad_mode=grad_mode, init=init)


__all__ = [
    "ActivationQuantizer",
    "DoReFaWeightQuantizer",
    "DoubleRoundingWeightQuantizer",
    "LsqWeightQuantizer",
    "MatQuantWeightQuantizer",
    "PerBitScaleWeightQuantizer",
    "ROUNDING_RULES",
    "SCALE_INITS",
    "TruncationWeightQuantizer",
    "WEIGHT_METHODS",
    "WeightQuantizer",
    "accumulate_multi_bit_gradients",
    "check_bit_set",
    "check_bits",
    "double_round",
    "fake_quantize",
    "int_range",
    "lsq_grad_scale",
    "make_weight_quantizer",
    "quantize_codes",
    "slice_codes",
]
