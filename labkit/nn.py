"""Quantized layers and switchable batch norm (METHOD.md §1–4).

A quantized layer quantizes its *input* activation with a per-bit :class:`ActivationQuantizer`
(Eq. 4–5) and its *weight* with the chosen weight quantizer (Double Rounding by default, Eq. 1–3),
then runs the ordinary convolution or matrix product. The current bit-width is an attribute,
``layer.bits``, set for a whole model by :func:`labkit.set_bits`. Batch norm is not quantized; one
BN per bit-width (:class:`SwitchableBatchNorm2d`) follows the bit-width of the layer that feeds it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from labkit.quant import ActivationQuantizer, make_weight_quantizer
from labkit.quant.ranges import check_bit_set, check_bits


class QuantizedLayer:
    """Shared behaviour of :class:`QConv2d` and :class:`QLinear`."""

    def _setup_quantizers(self, bits, method, rounding, act_signed, grad_mode, act_init, weight_init):
        self.bit_set = check_bit_set(bits)
        self.method = method
        self.bits = self.bit_set[0]
        self.weight_quantizer = make_weight_quantizer(method, self.weight.shape[0], self.bit_set, rounding, grad_mode,
                                                      weight_init)
        self.act_quantizer = ActivationQuantizer(self.bit_set, signed=act_signed, init=act_init)
        self.weight_quantizer.reset_scale(self.weight)

    def set_bits(self, bits) -> None:
        """Switch this layer to one of its trained bit-widths."""
        self.bits = check_bits(bits, allowed=self.bit_set)

    def quantized_weight(self) -> torch.Tensor:
        """The dequantized weight the forward pass uses at the current bit-width (Eq. 3)."""
        return self.weight_quantizer(self.weight, self.bits)

    def weight_codes(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(integer weight codes, per-output-channel step) at the current bit-width.

        ``(codes + weight_code_offset()) * step`` (broadcast over channels) equals :meth:`quantized_weight`
        bit for bit; the offset is 0 for every method but the centred truncation (``method="floor"``) and
        MatQuant (its zero point), so there ``codes * step`` alone is the weight.
        """
        return self.weight_quantizer.codes(self.weight, self.bits)

    def weight_code_offset(self) -> torch.Tensor:
        """Per-output-channel offset ``o`` (in code units) of the current bit-width: weight = ``(codes + o) · step``."""
        return self.weight_quantizer.code_offset(self.bits)

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        return self.act_quantizer(x, self.bits)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, bits={self.bits} of {list(self.bit_set)}, method={self.method!r}"


class QConv2d(QuantizedLayer, nn.Conv2d):
    """``nn.Conv2d`` with quantized input and weight; ``pre_padding`` (e.g. TF "same" padding) runs first."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, padding_mode="zeros", *, bits=(8, 6, 4, 2), method="double_rounding",
                 rounding="half_even", act_signed=False, grad_mode="lsq", act_init="lsq", weight_init="auto",
                 pre_padding=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode)
        self.pre_padding = pre_padding
        self._setup_quantizers(bits, method, rounding, act_signed, grad_mode, act_init, weight_init)

    @classmethod
    def from_float(cls, conv: nn.Conv2d, **options) -> "QConv2d":
        """A quantized copy of ``conv`` (weights and bias copied, scales initialised from the weights)."""
        pre_padding = getattr(conv, "static_padding", None)
        if pre_padding is not None and not isinstance(pre_padding, nn.ZeroPad2d):
            pre_padding = None  # an Identity: no padding to apply
        layer = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    conv.groups, conv.bias is not None, conv.padding_mode, pre_padding=pre_padding, **options)
        return copy_float_parameters(layer, conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pre_padding is not None:
            x = self.pre_padding(x)
        return self._conv_forward(self.quantize_input(x), self.quantized_weight(), self.bias)


class QLinear(QuantizedLayer, nn.Linear):
    """``nn.Linear`` with quantized input and weight."""

    def __init__(self, in_features, out_features, bias=True, *, bits=(8, 6, 4, 2), method="double_rounding",
                 rounding="half_even", act_signed=False, grad_mode="lsq", act_init="lsq", weight_init="auto"):
        super().__init__(in_features, out_features, bias)
        self._setup_quantizers(bits, method, rounding, act_signed, grad_mode, act_init, weight_init)

    @classmethod
    def from_float(cls, linear: nn.Linear, **options) -> "QLinear":
        """A quantized copy of ``linear`` (weights and bias copied, scales initialised from the weights)."""
        return copy_float_parameters(cls(linear.in_features, linear.out_features, linear.bias is not None, **options), linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.quantize_input(x), self.quantized_weight(), self.bias)


@torch.no_grad()
def copy_float_parameters(layer: QuantizedLayer, source: nn.Module) -> QuantizedLayer:
    """Copy weight and bias of ``source`` into ``layer`` and re-initialise the weight scales from them."""
    layer.weight.copy_(source.weight)
    if source.bias is not None:
        layer.bias.copy_(source.bias)
    layer.weight_quantizer.reset_scale(layer.weight)
    return layer.to(source.weight.device)


class SwitchableBatchNorm2d(nn.Module):
    """One ``BatchNorm2d`` per bit-width (switchable BN, METHOD.md §4); ``bits`` picks the active one.

    ``source`` names the quantized layer whose bit-width this BN follows (set by ``quantize_model``).
    """

    def __init__(self, num_features: int, bits=(8, 6, 4, 2), eps: float = 1e-5, momentum: float | None = 0.1,
                 source: str = ""):
        super().__init__()
        self.bit_set = check_bit_set(bits)
        self.num_features = num_features
        self.bits = self.bit_set[0]
        self.source = source
        self.per_bit = nn.ModuleDict({str(b): nn.BatchNorm2d(num_features, eps=eps, momentum=momentum)
                                      for b in self.bit_set})

    @classmethod
    @torch.no_grad()
    def from_float(cls, bn: nn.BatchNorm2d, bits, source: str = "") -> "SwitchableBatchNorm2d":
        """Every per-bit BN starts as a copy of ``bn`` (its affine parameters and running statistics)."""
        switchable = cls(bn.num_features, bits, bn.eps, bn.momentum, source)
        for per_bit in switchable.per_bit.values():
            per_bit.load_state_dict(bn.state_dict())
        return switchable.to(bn.weight.device if bn.weight is not None else "cpu")

    def set_bits(self, bits) -> None:
        self.bits = check_bits(bits, allowed=self.bit_set)

    def follow(self, layers: dict) -> None:
        """Take the bit-width of the layer that feeds this BN (``layers``: quantized layers by name)."""
        if self.source in layers:
            self.bits = layers[self.source].bits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.per_bit[str(self.bits)](x)

    def extra_repr(self) -> str:
        return f"{self.num_features}, bits={self.bits} of {list(self.bit_set)}, source={self.source!r}"


class TransitionalBatchNorm2d(nn.Module):
    """Transitional BN of the HASB SuperNet (METHOD.md §6 step 3, paper Alg. A.3; Bit-Mixer's TBN).

    In a mixed-precision SubNet the statistics after a layer depend on its own bit-width *and* on the
    bit-width of the layer before it (its input's precision). One ``BatchNorm2d`` per (previous-layer bit,
    this-layer bit) pair, each initialised from the multi-precision model's per-bit BN of this layer's bit.
    ``source`` is the layer whose output this BN normalises; ``predecessor`` the quantized layer before it
    (None for the first quantized layer, which then uses its own bit for both).
    """

    def __init__(self, num_features: int, bits=(8, 6, 4, 2), eps: float = 1e-5, momentum: float | None = 0.1,
                 source: str = "", predecessor: str | None = None):
        super().__init__()
        self.bit_set = check_bit_set(bits)
        self.num_features = num_features
        self.source, self.predecessor = source, predecessor
        self.bits = self.previous_bits = self.bit_set[0]
        self.pairs = nn.ModuleDict({f"{p}_{c}": nn.BatchNorm2d(num_features, eps=eps, momentum=momentum)
                                    for p in self.bit_set for c in self.bit_set})

    @classmethod
    @torch.no_grad()
    def from_switchable(cls, bn: SwitchableBatchNorm2d, predecessor: str | None) -> "TransitionalBatchNorm2d":
        """Every (p, c) BN starts as a copy of the switchable BN's c-bit BN."""
        first = next(iter(bn.per_bit.values()))
        transitional = cls(bn.num_features, bn.bit_set, first.eps, first.momentum, bn.source, predecessor)
        for key, pair in transitional.pairs.items():
            pair.load_state_dict(bn.per_bit[key.split("_")[1]].state_dict())
        return transitional.to(first.weight.device if first.weight is not None else "cpu")

    def follow(self, layers: dict) -> None:
        """Take (bit of the predecessor layer, bit of the source layer) from ``layers``."""
        if self.source in layers:
            self.bits = layers[self.source].bits
        self.previous_bits = layers[self.predecessor].bits if self.predecessor in layers else self.bits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pairs[f"{self.previous_bits}_{self.bits}"](x)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, bits=({self.previous_bits}→{self.bits}) of {list(self.bit_set)}, "
                f"source={self.source!r}, predecessor={self.predecessor!r}")


class ReLUWithQuantizedCopy(nn.ReLU):
    """A ReLU whose output ``into`` reads among others: it also computes ``into``'s quantized input in the same pass.

    Returns ``relu(x)`` like ``nn.ReLU``. In a training step on the compiled fake-quant kernels it also hands ``into``'s
    activation quantizer that quantizer's output on this very tensor (:meth:`ActivationQuantizer.relu_and_quantize`),
    so the ReLU and the quantizer are one loop forward and one backward (:mod:`labkit.relu_absorption`); the values
    and gradients are those of the ReLU and the quantizer run apart, bit for bit. ``layer`` is ``into`` itself, kept
    as a plain reference (it is not a child module of this one).
    """

    def __init__(self, into: str, layer: "QuantizedLayer"):
        super().__init__()
        self.into = into
        object.__setattr__(self, "layer", layer)  # not registered as a submodule: the model owns the layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer.act_quantizer.relu_and_quantize(x, self.layer.bits)

    def extra_repr(self) -> str:
        return f"also quantizes its output for {self.into}"


class AbsorbedReLU(nn.Identity):
    """Where a ReLU was: its work runs inside the activation quantizer of ``into`` (:mod:`labkit.relu_absorption`).

    An identity: it passes the ReLU's input on, and ``into``'s quantizer computes ``relu`` with the same values and
    gradients. A forward hook here sees that input, not a ReLU's output.
    """

    def __init__(self, into: str):
        super().__init__()
        self.into = into

    def extra_repr(self) -> str:
        return f"runs inside {self.into}.act_quantizer"
