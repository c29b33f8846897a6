"""Weight quantizers whose lower precisions come from stored integers (METHOD.md §1, §3, §7).

:class:`DoubleRoundingWeightQuantizer` is the paper's quantizer: one learned per-output-channel scale
``s_h`` of the highest bit-width h; the stored INT-h codes are ``q_h = clip(round(W / s_h))`` (Eq. 1)
and every lower bit-width l is derived from them by a second rounding (Eq. 2) and dequantized with the
tied scale ``s_h · 2^Δ`` (Eq. 3). At l = h it is plain LSQ.

The truncation baseline (AdaBits / Bit-Mixer, METHOD.md §7) derives the l-bit codes by a plain shift
``q_h >> Δ``. :class:`TruncationWeightQuantizer` (``method="floor"``) dequantizes them at the centre of the
INT-h cells they cover, the fair version; ``method="floor_naive"`` (a Double Rounding quantizer with
``rounding="floor"``) dequantizes them at the bottom of those cells, as the Double Rounding authors' own
truncation ablation does (METHOD.md §9), which biases every weight down by about half an l-bit step.
:class:`LsqWeightQuantizer` is the Double Rounding quantizer restricted to one bit-width: a dedicated
single-precision LSQ model.

The integer path of every quantizer: ``codes(weight, bits)`` gives (integer codes, per-channel step) and
``code_offset(bits)`` a per-channel offset in code units, with ``(codes + offset) · step`` equal to the
forward weight bit for bit; the offset is 0 except for the centred truncation (and MatQuant's zero point).
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


SCALE_INITS = ("auto", "max", "reference", "mse", "lsq")
"""Weight-scale init rules: ``"auto"`` is each method's own default (:attr:`WeightQuantizer.default_init`)."""

MSE_CANDIDATES = 200
"""Candidate steps of the ``"mse"`` init: ``k / MSE_CANDIDATES · max|W| / qmax`` for k = 1 … MSE_CANDIDATES."""


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
    with this rule (128 ImageNet val images, no training). So this is the Double Rounding default;
    ``"reference"`` follows the authors' code.
    """
    return (weight.detach().flatten(1).abs().amax(dim=1) / ((1 << (bits - 1)) - 1)).clamp_min(1e-8)


def lsq_scale_init(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """LSQ's own init (Esser et al. 2020), per channel: ``2 · mean|W| / sqrt(2^(b−1) − 1)``."""
    return (2 * weight.detach().flatten(1).abs().mean(dim=1) / (((1 << (bits - 1)) - 1) ** 0.5)).clamp_min(1e-8)


@torch.no_grad()
def mse_scale_init(weight: torch.Tensor, bits: int, candidates: int = MSE_CANDIDATES) -> torch.Tensor:
    """Per channel, the step of :data:`MSE_CANDIDATES` candidates (fractions of ``max|W| / qmax``) that
    minimises ``Σ (W − clip(round(W / s), qmin, qmax) · s)²`` on the signed b-bit grid (full negative code).

    A grid search, so it is exact up to the candidate spacing (0.5 % of the max rule's step); it is what a
    careful PTQ/LSQ user does at low bits, where the max rule wastes most levels on a few outliers.
    """
    qmin, qmax = int_range(bits)
    flat = weight.detach().flatten(1).double()
    top = (flat.abs().amax(dim=1) / qmax).clamp_min(1e-12)
    best_error = torch.full_like(top, float("inf"))
    best = top.clone()
    for k in range(1, candidates + 1):
        step = top * (k / candidates)
        error = ((flat / step[:, None]).round().clamp(qmin, qmax) * step[:, None] - flat).square().sum(dim=1)
        better = error < best_error
        best_error = torch.where(better, error, best_error)
        best = torch.where(better, step, best)
    return best.to(weight.dtype).clamp_min(1e-8)


_SCALE_RULES = {"max": max_scale_init, "reference": reference_scale_init, "mse": mse_scale_init,
                "lsq": lsq_scale_init}


def check_scale_init(rule: str) -> str:
    if rule not in SCALE_INITS:
        raise ValueError(f"weight_init={rule!r} is unknown; use one of {list(SCALE_INITS)}.")
    return rule


def scale_init(weight: torch.Tensor, bits: int, rule: str = "max") -> torch.Tensor:
    """The initial per-channel scale of ``bits`` by ``rule`` (``"max"``, ``"reference"``, ``"mse"`` or ``"lsq"``)."""
    check_scale_init(rule)
    if rule == "auto":
        raise ValueError("weight_init='auto' is resolved by the quantizer (its default_init); pass a concrete rule.")
    return _SCALE_RULES[rule](weight, bits)


class WeightQuantizer(nn.Module):
    """Common interface: ``forward(weight, bits)`` fake-quantizes, ``codes(weight, bits)`` gives integers.

    ``init="auto"`` resolves to the class's :attr:`default_init`, the rule measured best for that method.
    """

    method = "base"
    #: True when every trained precision can be derived from one stored INT-h tensor.
    nested = False
    #: The scale init ``"auto"`` stands for.
    default_init = "max"

    def __init__(self, bits, init: str = "auto"):
        super().__init__()
        self.bit_set = check_bit_set(bits)
        check_scale_init(init)
        self.init = self.default_init if init == "auto" else init

    @property
    def high_bits(self) -> int:
        return self.bit_set[0]

    def check(self, bits) -> int:
        return check_bits(bits, allowed=self.bit_set)

    def code_offset(self, bits: int) -> torch.Tensor:
        """Per-output-channel offset ``o`` in code units: the weight is ``(codes + o) · step`` (0 here)."""
        return torch.zeros_like(self._offset_like())

    def _offset_like(self) -> torch.Tensor:
        scale = getattr(self, "scale", None)
        if isinstance(scale, torch.Tensor):
            return scale.detach()
        if isinstance(scale, nn.ParameterDict):
            return next(iter(scale.values())).detach()
        return torch.zeros(self.out_channels)

    def extra_repr(self) -> str:
        return f"bits={list(self.bit_set)}"


class DoubleRoundingWeightQuantizer(WeightQuantizer):
    """Double Rounding (Eq. 1–3, 10–12) with per-channel LSQ scale and gradients (Eq. 13–14).

    Args:
        out_channels: number of output channels (one learned scale each).
        bits: the trained bit set, e.g. ``(8, 6, 4, 2)``; the highest is stored.
        rounding: tie rule of the second rounding, ``"half_even"``, ``"half_up"`` or ``"floor"`` (with
            ``"floor"`` this is the naive truncation baseline, ``method="floor_naive"``).
        grad_mode: ``"lsq"`` (clean per-channel LSQ gradient) or ``"reference"`` (the authors' code).
        init: the scale init rule (:data:`SCALE_INITS`); ``"auto"`` = ``"max"``.

    ``stored_codes`` (set by :func:`labkit.load_int`) holds the INT-h codes of a checkpoint; the forward pass
    in eval mode (or without gradients) then runs on them alone and never reads the float weights. The first
    *training* forward (train mode, gradients enabled) sets the float weights to the stored codes × scale and drops
    the codes (:meth:`drop_stored_codes`): training moves the float weights and the scale, so from then on every path
    (forward, :meth:`codes`, ``save_int``, export) quantizes the current float weights and no stale code is
    ever evaluated. Fine-tune a loaded model in train mode: in eval mode its forward uses the stored integers,
    which carry no gradient to the weights or their scale.
    """

    method = "double_rounding"
    nested = True

    def __init__(self, out_channels: int, bits=(8, 6, 4, 2), rounding: str = "half_even", grad_mode: str = "lsq",
                 init: str = "auto"):
        super().__init__(bits, init)
        self.rounding = check_rounding(rounding)
        self.grad_mode = grad_mode
        self.scale = nn.Parameter(torch.ones(out_channels))
        # Set by :func:`labkit.load_int`: the stored INT-h codes; forward then runs on integers only.
        self.register_buffer("stored_codes", None, persistent=False)
        self._integer_weight_cache: tuple[int, torch.Tensor] | None = None

    @torch.no_grad()
    def reset_scale(self, weight: torch.Tensor) -> None:
        """Initialise ``s_h`` from the weight by the ``init`` rule (:func:`scale_init`)."""
        self.scale.copy_(scale_init(weight, self.high_bits, self.init))

    def shift(self, bits: int) -> int:
        """Δ = h − l, the number of low bits the second rounding drops."""
        return self.high_bits - bits

    def centre(self, bits: int) -> float:
        """The dequantization offset in l-bit code units (0: Double Rounding dequantizes at ``q_l · s_h · 2^Δ``)."""
        return 0.0

    def code_offset(self, bits: int) -> torch.Tensor:
        return torch.full_like(self.scale.detach(), self.centre(bits))

    def drop_stored_codes(self) -> None:
        """Forget the stored INT-h codes (and the integer weights derived from them): the float weights are the model."""
        self.stored_codes = None
        self._integer_weight_cache = None

    def forward(self, weight: torch.Tensor, bits: int) -> torch.Tensor:
        """The dequantized l-bit weight ``Ŵ_l = (q_l + centre) · s_h · 2^Δ`` used by the layer (Eq. 3)."""
        if self.stored_codes is not None:
            if self.training and torch.is_grad_enabled():
                # A training forward: from here on the float weights and the scale move, so the stored codes would go
                # stale; start the float weights at the stored codes × scale, drop the codes, quantize the weights.
                with torch.no_grad():
                    weight.copy_(self.stored_codes.to(weight.dtype) * channel_view(self.scale.detach(), weight))
                self.drop_stored_codes()
            else:
                # Integer-only switching: derive the l-bit codes once per switch, then reuse the weight.
                cache = self._integer_weight_cache
                if cache is None or cache[0] != bits or cache[1].device != weight.device or cache[1].dtype != weight.dtype:
                    codes, step = self.codes(weight, bits)
                    dequantized = (codes.to(weight.dtype) + self.centre(bits)) * channel_view(step, weight)
                    self._integer_weight_cache = (bits, dequantized)
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
            offset=self.centre(bits),
        )

    def high_codes(self, weight: torch.Tensor) -> torch.Tensor:
        """The stored INT-h codes ``q_h = clip(round(W / s_h))`` (Eq. 1)."""
        if self.stored_codes is not None:
            return self.stored_codes
        return quantize_codes(weight, channel_view(self.scale.detach(), weight), *int_range(self.high_bits))

    def codes(self, weight: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(l-bit integer codes from the stored codes by integer arithmetic, per-channel step ``s_h · 2^Δ``).

        The forward weight is ``(codes + code_offset(bits)) · step``; the offset is 0 for Double Rounding.
        """
        codes = double_round(self.high_codes(weight), self.high_bits, bits, self.rounding)
        return codes, self.scale.detach() * (2.0 ** self.shift(bits))

    def extra_repr(self) -> str:
        return f"bits={list(self.bit_set)}, rounding={self.rounding!r}, grad_mode={self.grad_mode!r}, init={self.init!r}"


class TruncationWeightQuantizer(DoubleRoundingWeightQuantizer):
    """The truncation baseline at its best (``method="floor"``; AdaBits / Bit-Mixer, METHOD.md §7).

    The l-bit codes are the stored INT-h codes with the low Δ bits dropped, ``q_l = q_h >> Δ`` (floor), the
    same integers a plain shift gives. Code ``q_l`` covers the 2^Δ INT-h codes ``q_h ∈ [q_l·2^Δ, q_l·2^Δ + 2^Δ − 1]``,
    i.e. the real interval ``W / s_h ∈ [q_l·2^Δ − 1/2, q_l·2^Δ + 2^Δ − 1/2)``; both have their centre at
    ``q_h = q_l·2^Δ + (2^Δ − 1)/2``. So the weight is dequantized there::

        Ŵ_l = (q_l + c_Δ) · s_h · 2^Δ,   c_Δ = 1/2 − 2^−(Δ+1)   (c_0 = 0: plain LSQ at h)

    which makes truncation unbiased (its mean error over a cell is 0, as for rounding). For 8 → 4 bits
    c = 15/32, for 8 → 2 bits c = 63/128. The shift ``q_h >> Δ`` maps [−2^(h−1), 2^(h−1) − 1] exactly onto
    [−2^(l−1), 2^(l−1) − 1], so no l-bit clipping occurs beyond the INT-h clip, and the top and bottom cells
    are whole cells too.

    What the authors do: the papers of AdaBits and Bit-Mixer describe the lower precisions as truncated
    (least significant bits dropped); how they dequantize the truncated codes the lab could not check in
    their code. The Double Rounding authors' own truncation ablation (METHOD.md §9) dequantizes at
    ``q_l · s_h · 2^Δ``, the bottom of the cell, without centring; that is ``method="floor_naive"`` here,
    kept for notebook 01's lesson about the bias. What the lab does: the centred dequantization above, the
    version a careful user of truncation would deploy (the dequantization offset is a per-channel constant,
    free at run time: ``code_offset(bits)`` gives it to the integer path and the export).
    """

    method = "floor"

    def __init__(self, out_channels: int, bits=(8, 6, 4, 2), rounding: str = "floor", grad_mode: str = "lsq",
                 init: str = "auto"):
        super().__init__(out_channels, bits, "floor", grad_mode, init)

    def centre(self, bits: int) -> float:
        """``c_Δ = 1/2 − 2^−(Δ+1)``: the centre of the INT-h cells a truncated code covers, in l-bit code units."""
        shift = self.shift(self.check(bits))
        return 0.5 - 2.0 ** -(shift + 1)


class LsqWeightQuantizer(DoubleRoundingWeightQuantizer):
    """Single-precision LSQ (Esser et al. 2020): the baseline of one dedicated model per bit-width.

    What its authors do: LSQ initialises the step as ``2 · mean|W| / sqrt(Q_P)`` and trains it. What the lab does
    by default (``init="auto"`` = ``"lsq"``): the same rule, per output channel, for the model's one bit-width;
    post-training it measured best at 2 bits among the rules offered (the table in
    :class:`labkit.quant.baselines.PerBitScaleWeightQuantizer`: a dedicated model gets the same per-bit numbers).
    """

    method = "lsq"
    default_init = "lsq"

    def __init__(self, out_channels: int, bits=(4,), rounding: str = "half_even", grad_mode: str = "lsq",
                 init: str = "auto"):
        bit_set = check_bit_set(bits)
        if len(bit_set) != 1:
            raise ValueError(
                f"method='lsq' trains one dedicated model per bit-width, got bits={list(bit_set)}; "
                "pass a single bit-width such as bits=(4,), or use method='double_rounding' for a bit set."
            )
        super().__init__(out_channels, bit_set, rounding, grad_mode, init)
