"""Baseline weight quantizers that keep FP32 master weights (METHOD.md §7).

- :class:`PerBitScaleWeightQuantizer` — MultiQuant / EQ-Net and the paper's "Ours*": a separate learned
  per-channel LSQ scale for every bit-width on shared FP32 weights. Better at 2 bits, 4× the storage.
  Each per-bit scale starts where a careful LSQ user would start it for that bit-width (``init="auto"``, see
  :class:`PerBitScaleWeightQuantizer`), not from the ``max`` rule, which leaves ~90 % of the 2-bit codes at 0.
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
    """Unshared per-bit LSQ scales on FP32 master weights (MultiQuant, the paper's "Ours*", METHOD.md §7).

    What its authors do: MultiQuant / EQ-Net learn a separate LSQ step per bit-width on shared FP32 weights; the
    paper's "Ours*" row (Table 2) unshares the Double Rounding scale the same way. What the lab does: the same,
    with every bit-width's per-channel step initialised by LSQ's own rule for *that* bit-width,
    ``2 · mean|W| / sqrt(2^(b−1) − 1)`` (``init="auto"`` = ``"lsq"``), as a careful LSQ user would.

    Why that rule (measured post-training, no training: the shipped FP32 CIFAR-10 ResNet-20, activation scales and
    per-bit BN re-estimated on 512 training images, top-1 on a fixed 5,000-image test subset, CPU, one seed;
    fraction of 2-bit codes at 0 in brackets):

    ========================  =======  ===============
    init                      4-bit    2-bit
    ========================  =======  ===============
    ``max`` (old default)     81.1 %   33.8 % (90 %)
    ``reference`` (3σ rule)   79.8 %   45.4 % (57 %)
    ``mse`` (per channel)     80.4 %   37.0 % (41 %)
    ``lsq`` (default)         80.2 %   46.3 % (58 %)
    ========================  =======  ===============

    The MSE-optimal step minimises the weight error but not the loss at 2 bits; LSQ's rule is best there and
    within a point of the best at 4 bits. Double Rounding keeps ``max`` (its one shared scale is an 8-bit scale:
    ``lsq`` would clip at 8 bits; ``max`` and ``mse`` measured 80.8/48.4 % and 80.9/48.8 % at 4/2 bits on 1,000
    of those test images, so its default stays).
    """

    method = "per_bit_scale"
    default_init = "lsq"

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
    """Any-Precision DNN weights: DoReFa on the FP32 masters, scaled by ``E = mean|W|`` (METHOD.md §7).

    What its authors do (Yu et al., AAAI 2021; code ``SHI-Labs/Any-Precision-DNNs``):

    - weights (``models/quan_ops.py``, ``weight_quantize_fn``): ``t = tanh W / (2 max|tanh W|) + 1/2`` over the
      whole tensor, ``Ŵ = E · (2 · round((2^b − 1) t) / (2^b − 1) − 1)``, ``E = mean|W|`` detached, the round
      straight-through — this class;
    - activations (``models/resnet_quan.py`` ``Activate``, ``quan_ops.py`` ``activation_quantize_fn``): clamp to
      [0, 1] in place of the ReLU, then ``round((2^b − 1) x) / (2^b − 1)``, straight-through, nothing learned —
      the lab's ``act_init="dorefa"`` (:class:`~labkit.quant.activation.ActivationQuantizer`);
    - one BN per bit-width (``SwitchBatchNorm2d``); the first conv, the 1×1 shortcut convs and the classifier FP32;
    - training (``train.py``, ``train_cifar10.sh``): CIFAR-10 pre-activation ResNet-20 five times as wide, bits
      {1, 2, 4, 8, 32}, from scratch, 200 epochs, batch 128, Adam 1e-3, no weight decay, ×0.1 after epochs 100,
      150, 180; per batch the top bit-width with the hard label, then high → low each from the next higher one's
      softmax, gradients summed, one step — recursive KD, :mod:`labkit.train.kd`.

    What the lab does: the suite row ``8642-any_precision`` uses these weights with the lab's LSQ activations,
    Alg. A.2 and Adam 5e-4; the row ``8642-any_precision-peer`` runs the authors' training rule above on the lab's
    ResNet-20 and bit set {8,6,4,2}, from the same shipped FP32 and at the same budget as every row, and the rows
    ``dorefa-<b>`` train the dedicated models the authors compare with by the same rule. What the lab leaves out:
    the FP32 top precision (there 32 bits takes the hard label and teaches 8 bits; here 8 bits takes it), the
    pre-activation 5×-wide network, and training from scratch. Starting from the lab's post-activation ReLU FP32
    model, whose conv inputs often exceed 1, the [0, 1] clamp costs about 37 points at 8 bits before any step
    (48.0 vs 84.6 % with LSQ activations; 1,000 test images, BN re-estimated), so at the suite's 78 steps the peer
    rows partly measure that recovery; the dedicated DoReFa rows start from the same handicap.
    """

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
