"""ALRS — Adaptive Learning Rate Scaling of the quantization scales (METHOD.md §5, paper Eq. 6–7).

The LSQ scale gradient is ~11× larger at 2 bits than at 8 bits (``g = 1/sqrt(N·p)``), so one learning
rate cannot suit every precision of a jointly trained model. ALRS gives the scales of precision b their
own learning rate ``λ_b`` while the weights keep ``λ``.

- ``rule="eq7"`` (default, the paper): ``η_b = 10^(−Δ/2)`` for even Δ = h − b, ``5 · 10^(−(Δ+1)/2)`` for odd Δ;
  {8,6,4,2} → 1, 0.1, 0.01, 0.001 and {4,3,2} → 1, 0.5, 0.1.
- ``rule="geometric"`` (the authors' code): ``0.1^k`` for the k-th bit-width of the list, high to low.
- ``gradient_term=True`` (opt-in, Eq. 6): ``λ_b = η_b · λ · max(1 − G_b, floor)`` with
  ``G_b = (1/L) Σ_i min(max|clip(∇s_b^i, 1)|, 1)`` over the L scale tensors. Eq. 6 as printed subtracts
  ``G_b`` from ``λ`` directly, which is negative at ``λ = 5e-4`` since scale gradients are 1e-3…1e-1
  (METHOD.md §5 [open]); the lab uses the gradient term relative to ``λ`` and never lets the factor fall
  below ``floor`` (> 0), so no learning rate reaches zero or below.
"""
from __future__ import annotations

import torch

from labkit.quant.ranges import check_bit_set

ALRS_RULES = ("eq7", "geometric", "none")


def alrs_factors(bits, rule: str = "eq7") -> dict[int, float]:
    """``{bit: η_b}`` for a bit set (paper Eq. 7, or the reference code's geometric rule)."""
    bit_set = check_bit_set(bits)
    if rule not in ALRS_RULES:
        raise ValueError(f"rule={rule!r} is unknown; use one of {list(ALRS_RULES)}.")
    high = bit_set[0]
    factors = {}
    for position, bit in enumerate(bit_set):
        delta = high - bit
        if rule == "none":
            factors[bit] = 1.0
        elif rule == "geometric":
            factors[bit] = 0.1 ** position
        elif delta % 2 == 0:
            factors[bit] = 10.0 ** (-delta / 2)
        else:
            factors[bit] = 5.0 * 10.0 ** (-(delta + 1) / 2)
    return factors


def gradient_term(scale_gradients) -> float:
    """``G_b = (1/L) Σ_i min(max|clip(∇s_b^i, 1)|, 1)`` of Eq. 6 over the given gradient tensors."""
    values = [float(g.detach().clamp(-1.0, 1.0).abs().max().clamp(max=1.0)) for g in scale_gradients if g is not None and g.numel()]
    return sum(values) / len(values) if values else 0.0


class AdaptiveScaleLR:
    """The learning-rate multiplier of the scales at each precision (Eq. 6–7), recomputed every step."""

    def __init__(self, bits, rule: str = "eq7", use_gradient_term: bool = False, floor: float = 0.1):
        if not 0.0 < floor <= 1.0:
            raise ValueError(f"floor={floor} must be in (0, 1]: it keeps every learning rate above zero.")
        self.factors = alrs_factors(bits, rule)
        self.rule = rule
        self.use_gradient_term = use_gradient_term
        self.floor = floor
        self.last_term: dict[int, float] = {}

    def multiplier(self, bits: int, scale_gradients=()) -> float:
        """``λ_b / λ`` for precision ``bits``, given that precision's scale gradients (Eq. 6 opt-in)."""
        factor = self.factors[bits]
        if self.use_gradient_term:
            term = gradient_term(scale_gradients)
            self.last_term[bits] = term
            factor *= max(1.0 - term, self.floor)
        return factor

    def state_dict(self) -> dict:
        return {"factors": {str(k): v for k, v in self.factors.items()}, "rule": self.rule,
                "use_gradient_term": self.use_gradient_term, "floor": self.floor,
                "last_term": {str(k): v for k, v in self.last_term.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.factors = {int(k): float(v) for k, v in state["factors"].items()}
        self.rule, self.use_gradient_term, self.floor = state["rule"], state["use_gradient_term"], state["floor"]
        self.last_term = {int(k): float(v) for k, v in state["last_term"].items()}


def scale_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The learned quantization scales (and activation offsets) of every quantized layer."""
    from labkit.convert import quantized_layers

    params = []
    for layer in quantized_layers(model).values():
        for quantizer in (layer.weight_quantizer, layer.act_quantizer):
            params.extend(quantizer.parameters())  # includes the per-bit ParameterDicts
    return params
