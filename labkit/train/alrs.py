"""ALRS — Adaptive Learning Rate Scaling of the quantization scales (METHOD.md §5, paper Eq. 6–7).

The LSQ scale gradient is ~11× larger at 2 bits than at 8 bits (``g = 1/sqrt(N·p)``), so one learning
rate cannot suit every precision of a jointly trained model. ALRS gives the scales of precision b their
own learning rate ``λ_b`` while the weights keep ``λ``.

- ``rule="eq7"`` (default, the paper): ``η_b = 10^(−Δ/2)`` for even Δ = h − b, ``5 · 10^(−(Δ+1)/2)`` for odd Δ;
  {8,6,4,2} → 1, 0.1, 0.01, 0.001 and {4,3,2} → 1, 0.5, 0.1.
- ``rule="geometric"`` (the authors' code): ``0.1^k`` for the k-th bit-width of the list, high to low.
- ``gradient_term=True`` (opt-in, Eq. 6): ``λ_b = η_b · λ · max(1 − G_b, floor)`` with
  ``G_b = (1/L) Σ_i min(max|clip(∇s_b^i, 1)|, 1)`` over the L layers' weight scales. Eq. 6 as printed subtracts
  ``G_b`` from ``λ`` directly, which is negative at ``λ = 5e-4`` since scale gradients are 1e-3…1e-1
  (METHOD.md §5 [open]); the lab uses the gradient term relative to ``λ`` and never lets the factor fall
  below ``floor`` (> 0), so no learning rate reaches zero or below. ``G_b`` averages over the L quantized
  layers' **weight** scales at precision b (one value per layer), as the paper writes it; activation scales do
  not enter it.

What ALRS applies to (``alrs_scope``, :func:`alrs_rule_for`):

- ``"paper"`` (default): the paper's method, Double Rounding, and its own truncation ablation (``floor`` and
  ``floor_naive``: the same quantizer, one weight scale shared by every precision, the second rounding
  replaced by a shift, as the authors' code does with a flag, METHOD.md §9). That is what Eq. 6–7 were written
  for: one weight scale receives every precision's LSQ gradient, which is ~11× larger at 2 bits.
- Every other method (``per_bit_scale`` — MultiQuant / EQ-Net / the paper's "Ours*" —, ``any_precision``,
  dedicated ``lsq``, ``matquant`` and any later baseline) trains **every scale at λ, with no η_b**: that is how
  their own authors (and a careful LSQ user) train their scales. (``matquant`` shares one weight scale across its
  sliced precisions like Double Rounding, but ALRS is this paper's idea, not MatQuant's, so its own recipe does
  without it; the suite compares it with Double Rounding without ALRS as well.) A separate parameter has no other
  precision to be protected from, and Adam normalises each parameter's step to about λ whatever its gradient
  size, so η_b would only slow it down: the 2-bit weight scale of ``per_bit_scale`` would move
  η_2·λ = 5e-7 per step. ``alrs_scope="all"`` restores ALRS for every method (the lab's old behaviour, an
  ablation).

Under Alg. A.1 (one optimizer step per batch) a learning rate can only be set per parameter group, so the
parameters of each precision (per-bit activation scales and offsets, per-bit BN, per-bit weight scales) sit in
their own group and get λ·λ_b/λ there (:mod:`labkit.train.optim`). The shared weight scale of Double Rounding is
fed by every precision within that one step; ALRS can only weight each precision's share of its gradient,
``Σ_b η_b ∇_b``. With SGD that equals per-precision learning rates; with Adam, which divides the update by its
running RMS, it changes the direction of the step (how much each precision counts), not its size, which stays
about λ. Only Alg. A.2 gives the shared scale a per-precision step size.

In the HASB SuperNet stage (``supernet_alrs``): Alg. A.3 trains with one λ, so by default every scale is at λ
(``"one_lr"``); ``"sampled_bit"`` keys each layer's factor on the bit that layer was sampled at in the pass.
"""
from __future__ import annotations

import torch

from labkit.quant.ranges import check_bit_set

ALRS_RULES = ("eq7", "geometric", "none")
ALRS_SCOPES = ("paper", "all")
SUPERNET_ALRS = ("one_lr", "sampled_bit")
#: Methods whose weight scale is one scale shared by every precision, trained with the paper's recipe.
PAPER_ALRS_METHODS = ("double_rounding", "floor", "floor_naive")


def alrs_rule_for(method: str, rule: str, scope: str = "paper", supernet: bool = False,
                  supernet_alrs: str = "one_lr") -> str:
    """The ALRS rule a run really applies: ``rule`` for the paper's method, ``"none"`` (every scale at λ) for the
    baselines with separate per-bit scales (unless ``scope="all"``) and for an Alg. A.3 SuperNet (``"one_lr"``)."""
    if scope not in ALRS_SCOPES:
        raise ValueError(f"alrs_scope={scope!r} is unknown; use one of {list(ALRS_SCOPES)}.")
    if supernet_alrs not in SUPERNET_ALRS:
        raise ValueError(f"supernet_alrs={supernet_alrs!r} is unknown; use one of {list(SUPERNET_ALRS)}.")
    if supernet and supernet_alrs == "one_lr":
        return "none"
    if scope == "paper" and method not in PAPER_ALRS_METHODS:
        return "none"
    return rule


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
    """``G_b = (1/L) Σ_i min(max|clip(∇s_b^i, 1)|, 1)`` of Eq. 6: one gradient tensor per layer ``i``.

    Pass the L layers' weight-scale gradients of precision b (:func:`layer_weight_scales`), one tensor per
    layer; missing (``None``) or empty ones are left out of the mean.
    """
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


def per_bit_parameters(model: torch.nn.Module) -> dict[int, int]:
    """``{id(parameter): bit}`` for every parameter that belongs to one precision only.

    Per-bit activation scales and offsets, per-bit weight scales (``per_bit_scale``), switchable BN: any
    ``ParameterDict`` / ``ModuleDict`` keyed by bit-widths. A Transitional BN pair ``"p_c"`` belongs to ``c``,
    the bit of the layer it follows. Parameters not listed (conv weights, the shared Double Rounding weight
    scale, first/last layers) are shared by every precision.
    """
    from labkit.nn import TransitionalBatchNorm2d

    owners: dict[int, int] = {}
    for module in model.modules():
        if isinstance(module, TransitionalBatchNorm2d):
            for key, pair in module.pairs.items():
                for param in pair.parameters():
                    owners[id(param)] = int(key.split("_")[1])
        elif isinstance(module, (torch.nn.ParameterDict, torch.nn.ModuleDict)):
            keys = list(module.keys())
            if not keys or not all(str(k).isdigit() for k in keys):
                continue
            for key in keys:
                item = module[key]
                params = [item] if isinstance(item, torch.nn.Parameter) else list(item.parameters())
                for param in params:
                    owners.setdefault(id(param), int(key))
    return owners


def layer_weight_scales(model: torch.nn.Module, bits: int | None = None) -> dict[str, list[torch.nn.Parameter]]:
    """Per quantized layer, its weight-scale parameters that precision ``bits`` uses (shared or that bit's own)."""
    from labkit.convert import quantized_layers

    owners = per_bit_parameters(model)
    return {name: [p for p in layer.weight_quantizer.parameters() if owners.get(id(p), bits) == bits]
            for name, layer in quantized_layers(model).items()}


def scale_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The learned quantization scales (and activation offsets) of every quantized layer."""
    from labkit.convert import quantized_layers

    params = []
    for layer in quantized_layers(model).values():
        for quantizer in (layer.weight_quantizer, layer.act_quantizer):
            params.extend(quantizer.parameters())  # includes the per-bit ParameterDicts
    return params
