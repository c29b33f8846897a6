"""Fake quantization with LSQ straight-through gradients (METHOD.md §3, paper Eq. 13–14).

One autograd function serves the weights at every bit-width of Double Rounding and the activations:

forward (Eq. 1–3, 10–12): with ``v = x / s`` and Δ the number of bits the second rounding drops,
``u = second_round(round(v) / 2^Δ)``, ``q = clip(u, qmin, qmax)``, ``x̂ = q · s · 2^Δ``.
With Δ = 0 this is plain LSQ, ``x̂ = clip(round(x / s), qmin, qmax) · s``.

backward (Eq. 13–14, clipped straight-through estimator):

- ``∂x̂/∂x = 1`` where the code was not clipped (``u == q``), else 0;
- ``∂x̂/∂s = q · 2^Δ − v`` where not clipped and ``q · 2^Δ`` where clipped. Since ``x̂ = s_l · q`` with the
  tied scale ``s_l = s · 2^Δ``, this is the LSQ term ``round(v_l) − v_l`` (or the bound) times the chain
  factor ``∂s_l/∂s = 2^Δ``; at Δ = 0 it is exactly PyTorch's learnable fake-quant gradient;
- the scale gradient is summed to the scale's shape (per channel or per tensor) and multiplied by the
  LSQ gradient scale ``g`` (:func:`lsq_grad_scale`).

``grad_mode="reference"`` reproduces the authors' training code instead (METHOD.md §3 [ref-code]):
``v_l = x / (s · 2^Δ)`` with a single rounding in the gradient, no 2^Δ chain factor, and the scale
gradient summed over the whole tensor, so per-channel scales move in lock-step.
"""
from __future__ import annotations

import math

import torch

from labkit.quant.rounding import shift_round_float

GRAD_MODES = ("lsq", "reference")


def lsq_grad_scale(elements: int, qmax: int) -> float:
    """LSQ gradient scale ``g = 1 / sqrt(N · p)`` (Esser et al. 2020; METHOD.md §3).

    ``N`` is the number of elements one scale covers (per output channel for weights, per tensor for
    activations) and ``p = qmax``. Because ``p`` is 1 at 2 bits and 127 at 8 bits, ``g`` is ~11× larger
    at 2 bits: the scale-gradient mismatch that ALRS (Eq. 6–7) corrects.
    """
    return 1.0 / math.sqrt(max(elements, 1) * max(qmax, 1))


class _FakeQuantize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale, qmin, qmax, shift, rounding, grad_factor, grad_mode):
        inv_scale = scale.reciprocal()
        v = x * inv_scale
        unclipped = shift_round_float(torch.round(v), shift, rounding)
        q = unclipped.clamp(qmin, qmax)
        step = scale * (2.0 ** shift)
        out = q * step
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            inside = unclipped == q
            if grad_mode == "reference":
                v_low = x * (inv_scale * (2.0 ** -shift))
                rounded = torch.round(v_low)
                inside = (rounded >= qmin) & (rounded <= qmax)
                scale_term = torch.where(inside, rounded - v_low, rounded.clamp(qmin, qmax))
            else:
                scale_term = q * (2.0 ** shift) - v * inside
            ctx.save_for_backward(inside, scale_term)
            ctx.scale_shape = scale.shape
            ctx.grad_factor = grad_factor
            ctx.grad_mode = grad_mode
        return out

    @staticmethod
    def backward(ctx, grad_out):
        inside, scale_term = ctx.saved_tensors
        grad_x = grad_out * inside if ctx.needs_input_grad[0] else None
        grad_scale = None
        if ctx.needs_input_grad[1]:
            per_element = grad_out * scale_term
            if ctx.grad_mode == "reference":
                grad_scale = per_element.sum().expand(ctx.scale_shape).clone()
            else:
                grad_scale = per_element.sum_to_size(ctx.scale_shape)
            grad_scale = grad_scale * ctx.grad_factor
        return grad_x, grad_scale, None, None, None, None, None, None


def fake_quantize(
    x: torch.Tensor,
    scale: torch.Tensor,
    qmin: int,
    qmax: int,
    *,
    shift: int = 0,
    rounding: str = "half_even",
    grad_factor: float = 1.0,
    grad_mode: str = "lsq",
) -> torch.Tensor:
    """Quantize-dequantize ``x`` with a learned ``scale`` (broadcastable to ``x``) and LSQ gradients.

    ``shift`` = Δ drops that many bits by the second rounding of Double Rounding, with tie rule
    ``rounding``; ``qmin``/``qmax`` are the bounds of the *final* code. See the module docstring.
    """
    if grad_mode not in GRAD_MODES:
        raise ValueError(f"grad_mode={grad_mode!r} is unknown; use one of {list(GRAD_MODES)}.")
    return _FakeQuantize.apply(x, scale, qmin, qmax, shift, rounding, grad_factor, grad_mode)


def quantize_codes(x: torch.Tensor, scale: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """First rounding (Eq. 1) as integers: ``clip(round(x / s), qmin, qmax)`` in the smallest int dtype."""
    dtype = torch.int8 if qmin >= -128 and qmax <= 127 else torch.int16 if qmin >= -(1 << 15) and qmax < (1 << 15) else torch.int32
    with torch.no_grad():
        return torch.round(x * scale.reciprocal()).clamp_(qmin, qmax).to(dtype)
