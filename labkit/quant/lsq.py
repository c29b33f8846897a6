"""Fake quantization with LSQ straight-through gradients (METHOD.md §3, paper Eq. 13–14).

One autograd function serves the weights at every bit-width of Double Rounding and the activations:

forward (Eq. 1–3, 10–12): with ``v = x / s`` and Δ the number of bits the second rounding drops,
``u = second_round(round(v) / 2^Δ)``, ``q = clip(u, qmin, qmax)``, ``x̂ = q · s · 2^Δ``.
With Δ = 0 this is plain LSQ, ``x̂ = clip(round(x / s), qmin, qmax) · s``.

backward (Eq. 13–14, clipped straight-through estimator):

- ``∂x̂/∂x = 1`` where the code was not clipped (``u == q`` and the stored INT-h code ``round(v)`` is not
  saturated), else 0 — so at every bit the mask follows the stored code, as at h;
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
import os

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


def _forward_kernel(x, scale, qmin: int, qmax: int, shift: int, rounding: str, offset: float = 0.0):
    """``x̂ = (clip(second_round(round(x / s))) + o) · s · 2^Δ`` (Eq. 1–3; ``o`` = 0 but for centred truncation).

    Each step after the first works in place on the kernel's own intermediate (never on ``x``): the same
    arithmetic with fewer allocations, ~0.5× the eager time on activation-sized tensors (measured before
    adoption; ``benchmarks/README.md``).
    """
    codes = shift_round_float((x * scale.reciprocal()).round_(), shift, rounding).clamp_(qmin, qmax)
    if offset:
        codes.add_(offset)
    return codes.mul_(scale * (2.0 ** shift))


def stored_code_saturated(first: torch.Tensor, qmin: int, qmax: int, shift: int) -> torch.Tensor:
    """Where the first rounding ``round(x / s_h)`` lies outside the INT-h range that is stored.

    The INT-h bounds follow from the l-bit ones: ``[qmin · 2^Δ, (qmax + 1) · 2^Δ − 1]`` ([−128, 127] for 8 bits).
    """
    return (first < qmin * (1 << shift)) | (first > (qmax + 1) * (1 << shift) - 1)


def _backward_kernel(grad, x, scale, qmin: int, qmax: int, shift: int, rounding: str, grad_factor: float,
                     offset: float = 0.0):
    """Clipped STE for ``x`` and the LSQ scale gradient ``(q + o) · 2^Δ − v`` (inside) / ``(q + o) · 2^Δ`` (clipped).

    "Clipped" follows the stored INT-h code: an element is clipped at bit l when its l-bit code is (the
    second rounding left the l-bit range) *or* when its INT-h code is saturated (``round(v)`` outside the
    INT-h range). The second condition matters only on the negative side: ``round(v) = −129 … −128 − 2^(Δ−1)``
    rounds back into the l-bit range, yet its stored code is the saturated −128, so it gets 0 as it does at h.
    """
    v = x * scale.reciprocal()
    first = torch.round(v)
    unclipped = shift_round_float(first, shift, rounding)
    codes = unclipped.clamp(qmin, qmax)
    outside = unclipped != codes
    if shift:
        outside |= stored_code_saturated(first, qmin, qmax, shift)
    grad_x = grad.masked_fill(outside, 0.0)
    if offset:
        codes.add_(offset)
    per_element = codes.mul_(2.0 ** shift).sub_(v.masked_fill_(outside, 0.0)).mul_(grad)
    return grad_x, per_element.sum_to_size(scale.shape) * grad_factor


def _reference_backward_kernel(grad, x, scale, qmin: int, qmax: int, shift: int, rounding: str, grad_factor: float,
                               offset: float = 0.0):
    """The authors' gradient: one rounding of ``x / (s · 2^Δ)``, l-bit bounds, no chain factor, lock-step.

    Reproduces their code as it is (METHOD.md §9), including its mask from the unrounded ``x / (s · 2^Δ)``
    against the l-bit bounds, which does not follow the stored INT-h code.
    """
    v_low = x * (scale.reciprocal() * (2.0 ** -shift))
    rounded = torch.round(v_low)
    inside = (rounded >= qmin) & (rounded <= qmax)
    grad_x = torch.where(inside, grad, 0.0)
    per_element = grad * torch.where(inside, rounded + offset - v_low, rounded.clamp(qmin, qmax) + offset)
    return grad_x, per_element.sum().expand(scale.shape) * grad_factor


_KERNELS = {"forward": _forward_kernel, "backward": _backward_kernel}
_COMPILED: dict[str, object] = {}


def use_compile(enabled: bool = True) -> None:
    """Run the fake-quant forward/backward (and :func:`double_round`) as ``torch.compile``-fused kernels.

    Compiling costs seconds on first use per shape and bit-width, then runs the op in one fused loop;
    ``LABKIT_COMPILE=1`` in the environment turns it on at import. Results are the same bit for bit.
    """
    from labkit.quant.rounding import use_fused_double_round

    use_fused_double_round(enabled)
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    if enabled and not _COMPILED:
        _COMPILED.update({name: torch.compile(kernel, dynamic=False) for name, kernel in
                          (("forward", _forward_kernel), ("backward", _backward_kernel))})
    _KERNELS.update(_COMPILED if enabled else {"forward": _forward_kernel, "backward": _backward_kernel})


def compile_enabled() -> bool:
    return _KERNELS["forward"] is not _forward_kernel


class _FakeQuantize(torch.autograd.Function):
    """Saves only ``x`` and the scale; the backward recomputes the codes (less memory than saving masks)."""

    @staticmethod
    def forward(ctx, x, scale, qmin, qmax, shift, rounding, grad_factor, grad_mode, offset):
        ctx.save_for_backward(x, scale)
        ctx.settings = (qmin, qmax, shift, rounding, grad_factor, offset)
        ctx.grad_mode = grad_mode
        return _KERNELS["forward"](x, scale, qmin, qmax, shift, rounding, offset)

    @staticmethod
    def backward(ctx, grad_out):
        x, scale = ctx.saved_tensors
        kernel = _reference_backward_kernel if ctx.grad_mode == "reference" else _KERNELS["backward"]
        grad_x, grad_scale = kernel(grad_out, x, scale, *ctx.settings)
        return grad_x, grad_scale, None, None, None, None, None, None, None


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
    offset: float = 0.0,
) -> torch.Tensor:
    """Quantize-dequantize ``x`` with a learned ``scale`` (broadcastable to ``x``) and LSQ gradients.

    ``shift`` = Δ drops that many bits by the second rounding of Double Rounding, with tie rule
    ``rounding``; ``qmin``/``qmax`` are the bounds of the *final* code. ``offset`` (in units of the final
    code) is added to the code before dequantizing, ``x̂ = (q + offset) · s · 2^Δ``: 0 for Double Rounding,
    the cell centre for the centred truncation baseline. See the module docstring.
    """
    if grad_mode not in GRAD_MODES:
        raise ValueError(f"grad_mode={grad_mode!r} is unknown; use one of {list(GRAD_MODES)}.")
    offset = float(offset)
    if x.dtype in (torch.bfloat16, torch.float16):  # under autocast: quantize in fp32 (bf16 cannot hold v exactly)
        return _FakeQuantize.apply(x.float(), scale.float(), qmin, qmax, shift, rounding, grad_factor, grad_mode,
                                   offset).to(x.dtype)
    return _FakeQuantize.apply(x, scale, qmin, qmax, shift, rounding, grad_factor, grad_mode, offset)


def quantize_codes(x: torch.Tensor, scale: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """First rounding (Eq. 1) as integers: ``clip(round(x / s), qmin, qmax)`` in the smallest int dtype."""
    dtype = torch.int8 if qmin >= -128 and qmax <= 127 else torch.int16 if qmin >= -(1 << 15) and qmax < (1 << 15) else torch.int32
    with torch.no_grad():
        return torch.round(x * scale.reciprocal()).clamp_(qmin, qmax).to(dtype)


if os.environ.get("LABKIT_COMPILE", "") == "1":
    use_compile(True)
