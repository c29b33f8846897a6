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

Four paths compute the same quantized values and input gradients bit for bit (:func:`use_fake_quant_path`). The eager
paths also give the same scale gradients. The compiled kernels sum an fp32 ``x``'s scale gradient inside the kernel in
float64 (:func:`_sum_to_scale`): the float64 sum of the same per-element terms, rounded once to float32, which differs
from the eager float32 sum by that sum's own rounding error (~1e-7 of the terms' absolute sum; an fp64 ``x``'s is a
float64 sum in another order); for a bf16/fp16 ``x`` they return the terms and ATen sums them, as on the eager paths
(the same bits). So a seeded fp32 run on the compiled kernels follows the eager run to float rounding, not bit for
bit. ``"auto"`` (the default) runs a
training call (gradients wanted) on CPU tensors on the ``"compiled"`` kernels where a compiler works, and everything
else (evaluation, ``no_grad``, and CUDA tensors until ``scripts/gpu_check.sh`` has compared the bits there) on the
eager ``"fused"`` path; where no compiler works, the first training call says so in one warning line and
``"fused"`` takes over. ``"fused"`` computes the output, the scale-gradient residual and the mask in one
forward, so the backward is two elementwise passes and the reduction; ``"recompute"`` saves only ``x`` and recomputes
the codes in the backward (less memory); ``"compiled"`` runs the recompute formulas as ``torch.compile`` kernels, for
every call (for fp32 the backward is one pass over ``grad`` and ``x`` with the reduction fused in), and takes a
bf16/fp16 ``x`` as it is (the casts to the scale's fp32 and back happen inside the kernel).
``benchmarks/README.md`` (group ``speed_fakequant``) times every path against PyTorch's learnable fused ops.
``LABKIT_COMPILE=0`` in the environment makes ``"fused"`` the default, ``LABKIT_COMPILE=1`` ``"compiled"``.

``grad_mode="reference"`` reproduces the authors' training code instead (METHOD.md §3 [ref-code]):
``v_l = x / (s · 2^Δ)`` with a single rounding in the gradient, no 2^Δ chain factor, and the scale
gradient summed over the whole tensor, so per-channel scales move in lock-step.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import warnings

import torch

from labkit.quant.rounding import shift_round_float, use_fused_double_round

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


def code_bounds(qmin: int, qmax: int, shift: int, rounding: str) -> tuple[float, float]:
    """``[lo, hi]``: the first roundings ``round(x / s)`` whose l-bit code is neither clipped nor saturated at INT-h.

    ``lo = qmin · 2^Δ`` (the INT-h bound: below it the stored code is saturated, :func:`stored_code_saturated`);
    ``hi`` is the largest integer whose second rounding is still ``≤ qmax`` (for half-even and half-up
    ``(qmax + 1/2) · 2^Δ − 1``, for floor the INT-h bound ``(qmax + 1) · 2^Δ − 1``; ``qmax`` at Δ = 0). So the
    l-bit code is ``second_round(clip(round(x / s), lo, hi))`` with no clip after it, and the element is inside
    the clipped straight-through estimator exactly when ``round(x / s)`` lies in ``[lo, hi]``.
    """
    return _code_bounds(int(qmin), int(qmax), int(shift), rounding)


@functools.lru_cache(maxsize=None)
def _code_bounds(qmin: int, qmax: int, shift: int, rounding: str) -> tuple[float, float]:
    step = 1 << shift
    candidates = torch.arange(qmax * step, (qmax + 1) * step + 1, dtype=torch.float64)
    kept = candidates[shift_round_float(candidates, shift, rounding) <= qmax]
    return float(qmin * step), float(kept.max())


def _second_round_(codes: torch.Tensor, shift: int, rounding: str) -> torch.Tensor:
    """:func:`shift_round_float` in place on the kernel's own intermediate (the same operations, so the same bits)."""
    if shift:
        codes.mul_(2.0 ** -shift)
        if rounding == "half_even":
            codes.round_()
        elif rounding == "half_up":
            codes.add_(0.5).floor_()
        else:
            codes.floor_()
    return codes


def _dequantize_into(values: torch.Tensor, step: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``values · step`` in the precision of ``values``, stored in ``dtype`` (one pass, no separate cast)."""
    if dtype == values.dtype:
        return values.mul_(step)
    return torch.mul(values, step, out=torch.empty_like(values, dtype=dtype))


def _fused_forward(x, scale, qmin: int, qmax: int, shift: int, rounding: str, offset: float, residual: bool):
    """The fake-quantized ``x`` and, with ``residual``, what the backward needs, computed together.

    Codes: ``c = round(x / s)``, ``q = second_round(clip(c, lo, hi))`` (:func:`code_bounds`: the same codes as
    clipping after the second rounding). With ``residual`` it also returns ``r = (q + o) · 2^Δ − v`` where inside
    and ``(q + o) · 2^Δ`` where clipped (``v = x / s``: the per-element LSQ scale gradient before the upstream
    gradient) and the bool mask ``inside``. Masks are built with float arithmetic (an in-place ``eq_``, a
    multiply by 0/1): ATen's bool-producing and bool-consuming kernels are several times slower on the CPU.
    ``v`` is clipped to ``[lo − 1, hi + 1]`` first, which changes no element that is inside and keeps
    ``v · 0`` finite for infinite inputs. Every value equals the recompute path's bit for bit.
    """
    lo, hi = code_bounds(qmin, qmax, shift, rounding)
    inverse = scale.reciprocal()
    if inverse.dim() == 0 and x.dtype != inverse.dtype:
        inverse = inverse.reshape(1)  # a 0-dim scale would not promote a bf16 x: x / s is computed in fp32
    if not residual:
        codes = _second_round_(torch.mul(x, inverse).round_().clamp_(lo, hi), shift, rounding)
        if offset:
            codes.add_(offset)
        return _dequantize_into(codes, scale * (2.0 ** shift), x.dtype)
    v = torch.mul(x, inverse).clamp_(lo - 1.0, hi + 1.0)
    first = torch.round(v)
    codes = first.clamp(lo, hi)
    keep = first.eq_(codes)  # 1.0 where round(x / s) is in [lo, hi], else 0.0
    _second_round_(codes, shift, rounding)
    if offset:
        codes.add_(offset)
    if shift:
        codes.mul_(2.0 ** shift)  # (q + o) · 2^Δ, exact
    inside = keep.bool()
    residual_values = torch.addcmul(codes, v, keep, value=-1.0, out=v)  # (q + o) · 2^Δ − v · [inside]
    # x̂ = (q + o) · 2^Δ · s, written over the mask's buffer (three full-size buffers in all: fewer fresh pages)
    out = torch.mul(codes, scale, out=keep if keep.dtype == x.dtype else torch.empty_like(codes, dtype=x.dtype))
    return out, residual_values, inside


class _FusedFakeQuantize(torch.autograd.Function):
    """The eager fused path: the forward also computes the scale-gradient residual and the mask, so the backward is
    two elementwise passes and the reduction. Saves ``r`` (float) and the mask (bool) beside ``x`` and the scale.
    A double backward (``create_graph=True``) recomputes through :func:`_backward_kernel`, as the recompute path."""

    @staticmethod
    def forward(ctx, x, scale, qmin, qmax, shift, rounding, grad_factor, offset):
        out, residual_values, inside = _fused_forward(x, scale, qmin, qmax, shift, rounding, offset, True)
        ctx.save_for_backward(x, scale, residual_values, inside)
        ctx.settings = (qmin, qmax, shift, rounding, grad_factor, offset)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, scale, residual_values, inside = ctx.saved_tensors
        grad_factor = ctx.settings[4]
        if torch.is_grad_enabled():  # create_graph: a differentiable backward, the recompute path's
            low = x.dtype != scale.dtype
            grad_x, grad_scale = _backward_kernel(grad_out.to(scale.dtype) if low else grad_out,
                                                  x.to(scale.dtype) if low else x, scale, *ctx.settings)
            return (grad_x.to(x.dtype) if low else grad_x), grad_scale, None, None, None, None, None, None
        grad_x = torch.where(inside, grad_out, 0.0) if ctx.needs_input_grad[0] else None
        grad_scale = None
        if ctx.needs_input_grad[1]:
            grad_scale = torch.mul(residual_values, grad_out).sum_to_size(scale.shape) * grad_factor
        return grad_x, grad_scale, None, None, None, None, None, None


PATHS = ("auto", "fused", "recompute", "compiled")
"""Fake-quant paths: ``"auto"`` (the default: compiled kernels for training calls on CPU tensors where a compiler
works, the eager fused path otherwise), ``"fused"`` (eager), ``"recompute"`` (eager, the backward recomputes the
codes from ``x``), ``"compiled"`` (the recompute kernels fused by ``torch.compile``, for every call)."""


def _path_from_environment(value: str) -> str:
    setting = value.strip().lower()
    if setting in ("", "auto"):
        return "auto"
    if setting in ("0", "false", "off", "no"):
        return "fused"
    if setting in ("1", "true", "on", "yes"):
        return "compiled"
    warnings.warn(f"LABKIT_COMPILE={value!r} is not understood (use 0 for the eager fused path, 1 to compile every "
                  "call, or leave it unset); using the default, auto.", RuntimeWarning, stacklevel=2)
    return "auto"


DEFAULT_PATH = _path_from_environment(os.environ.get("LABKIT_COMPILE", ""))
"""The path at import: ``"auto"``, or what ``LABKIT_COMPILE`` asks for (0: ``"fused"``, 1: ``"compiled"``)."""

_KERNELS: dict[str, object] = {}
_COMPILED: dict[str, object] = {}
_COMPILE_FAILURE: dict[str, str | None] = {"error": None}


def use_fake_quant_path(path: str) -> None:
    """Choose how :func:`fake_quantize` runs (:data:`PATHS`); every path gives the same quantized values and input
    gradients bit for bit (the scale gradient: see the module docstring)."""
    if path not in PATHS:
        raise ValueError(f"path={path!r} is unknown; use one of {list(PATHS)}.")
    if path in ("auto", "compiled"):  # asked for again after a fallback: try the compiler again
        _COMPILE_FAILURE["error"] = None
        _KERNELS.update(forward=_compiled_forward, backward=_compiled_backward)
    else:
        _KERNELS.update(forward=_eager_forward, backward=_eager_backward)
    use_fused_double_round(path == "compiled")
    _KERNELS["path"] = path


def fake_quant_path() -> str:
    """The path :func:`fake_quantize` runs on now (:data:`PATHS`)."""
    return _KERNELS["path"]


def use_compile(enabled: bool = True) -> None:
    """Run every fake-quant forward/backward (and :func:`double_round`) as ``torch.compile``-fused kernels.

    Compiling costs seconds on first use per kernel variant (not per shape or bit-width: the kernels are
    shape-generic; inductor's disk cache makes later processes faster), then runs the op in one fused loop. Outputs
    and input gradients are the same bit for bit; an fp32 scale gradient is summed inside the kernel in float64 (the
    module docstring). Where no compiler works, the first
    call says so in one warning line and the eager fused path takes over. ``use_compile(False)`` selects the eager
    fused path; ``use_fake_quant_path("auto")`` returns to the default.
    """
    use_fake_quant_path("compiled" if enabled else "fused")


def compile_enabled() -> bool:
    """Whether training calls on CPU tensors run the compiled kernels (path ``"compiled"``, or ``"auto"`` before any
    fallback; on CUDA only ``"compiled"`` does, :func:`training_path`)."""
    return _KERNELS["path"] in ("auto", "compiled")


def training_path(device: str | torch.device = "cpu") -> str:
    """The path a training call (gradients wanted) on ``device`` runs on now: ``"auto"`` resolves to ``"compiled"``
    on the CPU and to ``"fused"`` elsewhere."""
    if _KERNELS["path"] == "auto":
        return "compiled" if torch.device(device).type == "cpu" else "fused"
    return _KERNELS["path"]


def path_for(compile_quant: bool | None) -> str:
    """``TrainConfig.compile_quant`` as a path: None the default (:data:`DEFAULT_PATH`), True ``"compiled"``, False
    ``"fused"``."""
    return {None: DEFAULT_PATH, True: "compiled", False: "fused"}[compile_quant]


def select_fake_quant_path(compile_quant: bool | None) -> str:
    """Switch to :func:`path_for` ``(compile_quant)``, except that after a compiler failure in this process a
    compiling path is not tried again (the eager fused path stays); returns the path now on."""
    path = path_for(compile_quant)
    if path in ("auto", "compiled") and _COMPILE_FAILURE["error"] is not None:
        path = "fused"
    if path != _KERNELS["path"]:
        use_fake_quant_path(path)
    return path


@contextlib.contextmanager
def restored_fake_quant_path():
    """On exit, the path that was on at entry is on again, unless the compiler failed inside (then the eager path
    that took over stays): a training run or step chooses its own path without changing the caller's."""
    previous, error = _KERNELS["path"], _COMPILE_FAILURE["error"]
    try:
        yield
    finally:
        if _COMPILE_FAILURE["error"] in (None, error) and _KERNELS["path"] != previous:
            use_fake_quant_path(previous)


def compile_error() -> str | None:
    """Why the compiled path fell back to eager (the compiler's error, one line), or None."""
    return _COMPILE_FAILURE["error"]


_SETTINGS: dict[tuple, torch.Tensor] = {}


def _settings(qmin: int, qmax: int, shift: int, offset: float, like: torch.Tensor) -> torch.Tensor:
    """[qmin, qmax, 2^−Δ, 2^Δ, INT-h low bound, INT-h high bound, offset] as a tensor (not compiled in)."""
    key = (qmin, qmax, shift, offset, like.dtype, like.device)
    if key not in _SETTINGS:
        step = 1 << shift
        _SETTINGS[key] = torch.tensor([qmin, qmax, 1.0 / step, step, qmin * step, (qmax + 1) * step - 1, offset],
                                      dtype=like.dtype, device=like.device)
    return _SETTINGS[key]


def _round_scaled(scaled: torch.Tensor, rounding: str) -> torch.Tensor:
    if rounding == "half_even":
        return torch.round(scaled)
    if rounding == "half_up":
        return torch.floor(scaled + 0.5)
    return torch.floor(scaled)


def _low_precision(x: torch.Tensor, scale: torch.Tensor) -> bool:
    """A bf16/fp16 ``x`` (under autocast) with a wider scale: quantized in the scale's precision, returned in its own."""
    return x.dtype in (torch.bfloat16, torch.float16) and scale.dtype != x.dtype


def _clamp_as_aten(codes: torch.Tensor, settings: torch.Tensor) -> torch.Tensor:
    """``clamp(codes, qmin, qmax)`` as ATen's eager clamp computes it, also for the sign of a zero: a code of −0.0
    (``round`` of a small negative ``x / s``) stays −0.0 at ``qmin = 0``, where inductor's ``maximum`` returns +0.0."""
    return torch.where(codes < settings[0], settings[0], torch.where(codes > settings[1], settings[1], codes))


def _generic_forward_kernel(x, scale, settings, rounding: str, shifted: bool, centred: bool, relu_first: bool = False,
                            keep_relu: bool = False):
    """:func:`_forward_kernel` with the bit-width in ``settings`` (:func:`_settings`), for ``torch.compile``.

    A bf16/fp16 ``x`` is quantized in the scale's precision and the result returned in ``x``'s dtype, as on the fused
    path: the casts are fused into the kernel instead of two passes around it. With ``relu_first`` the kernel
    quantizes ``relu(x)`` (:func:`fake_quantize`'s ``relu_first``): the ReLU is one more operation in the same loop.
    With ``keep_relu`` too it returns ``(relu(x), x̂)``, both written by the same loop (:func:`relu_and_fake_quantize`)."""
    low = _low_precision(x, scale)
    if relu_first:
        x = torch.relu(x)
        rectified = x
    first = torch.round((x.to(scale.dtype) if low else x) * scale.reciprocal())
    codes = _clamp_as_aten(_round_scaled(first * settings[2], rounding) if shifted else first, settings)
    if centred:
        codes = codes + settings[6]
    out = codes * (scale * settings[3])
    out = out.to(x.dtype) if low else out
    return (rectified, out) if keep_relu else out


def _sum_to_scale(per_element: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``per_element`` summed to the scale's shape (over the dimensions the scale broadcasts along), accumulated in
    float64 and returned in the scale's dtype. Inside a compiled kernel the sum is fused into the loop that computes the
    terms; float32 accumulators there (one per vector lane and thread, each over ~10⁵ terms) would lose ~300× more
    than ATen's cascade sum (measured relative error 6e-5 against 2e-7 at one thread on 2M terms; float64: 1e-8)."""
    lead = per_element.dim() - scale.dim()
    dims = tuple(range(lead)) + tuple(lead + i for i, size in enumerate(scale.shape)
                                      if size == 1 and per_element.shape[lead + i] != 1)
    total = per_element.to(torch.float64)
    if dims:
        total = total.sum(dim=dims, keepdim=True)
    return total.reshape(scale.shape).to(scale.dtype)


def _generic_backward_kernel(grad, x, scale, settings, rounding: str, shifted: bool, centred: bool,
                             relu_first: bool = False, grad_relu=None):
    """:func:`_backward_kernel` for ``torch.compile``: (grad_x in ``x``'s dtype, the scale gradient before the factor
    ``g``). For an fp32 ``x`` the reduction is fused into the kernel (:func:`_sum_to_scale`), so the per-element terms
    are never written out: one pass reads ``grad`` and ``x`` and writes ``grad_x``. For a bf16/fp16 ``x`` the kernel
    returns the fp32 terms instead, for ATen to sum, which keeps the eager paths' bits; the fused float64 reduction
    gave no speed-up there (joint step under bf16 autocast, 2 threads, medians of two interleaved runs: 1.39 and 1.36
    against 1.32 and 1.29 × four FP32 steps; no paired interval, so not resolved).

    With ``relu_first`` ``x`` is the ReLU's input: the terms are those of ``relu(x)``, and ∂/∂x is also 0 where
    ``x ≤ 0``, as ReLU's own backward (``threshold_backward``) sets it. ``grad_relu`` (with ``relu_first``) is the
    gradient of the ReLU's own output where other readers use it too (:func:`relu_and_fake_quantize`): it is added to
    the quantizer's ∂/∂x before the ReLU's mask, as autograd sums the two before ReLU's backward."""
    low = _low_precision(x, scale)
    below = None
    if relu_first:
        below = x <= 0
        x = torch.relu(x)
    v = (x.to(scale.dtype) if low else x) * scale.reciprocal()
    first = torch.round(v)
    unclipped = _round_scaled(first * settings[2], rounding) if shifted else first
    codes = _clamp_as_aten(unclipped, settings)
    outside = unclipped != codes
    if shifted:
        outside = outside | (first < settings[4]) | (first > settings[5])
    if centred:
        codes = codes + settings[6]
    per_element = (codes * settings[3] - v.masked_fill(outside, 0.0)) * (grad.to(scale.dtype) if low else grad)
    if grad_relu is None:
        grad_x = grad.masked_fill(outside if below is None else outside | below, 0.0)
    else:
        grad_x = (grad_relu + grad.masked_fill(outside, 0.0)).masked_fill(below, 0.0)
    return grad_x, per_element if low else _sum_to_scale(per_element, scale)


def _eager_forward(x, scale, qmin, qmax, shift, rounding, offset=0.0):
    """:func:`_forward_kernel` for any ``x`` dtype the compiled kernels take (a bf16 ``x`` is quantized in fp32)."""
    if not _low_precision(x, scale):
        return _forward_kernel(x, scale, qmin, qmax, shift, rounding, offset)
    return _forward_kernel(x.to(scale.dtype), scale, qmin, qmax, shift, rounding, offset).to(x.dtype)


def _eager_backward(grad, x, scale, qmin, qmax, shift, rounding, grad_factor, offset=0.0):
    """:func:`_backward_kernel` for any ``x`` dtype the compiled kernels take (grad_x back in ``x``'s dtype)."""
    if not _low_precision(x, scale):
        return _backward_kernel(grad, x, scale, qmin, qmax, shift, rounding, grad_factor, offset)
    grad_x, grad_scale = _backward_kernel(grad.to(scale.dtype), x.to(scale.dtype), scale, qmin, qmax, shift,
                                          rounding, grad_factor, offset)
    return grad_x.to(x.dtype), grad_scale


def _eager_kernel(kernel: str, args: tuple, relu_first: bool, keep_relu: bool = False, grad_relu=None):
    """The eager forward or backward on ``args``; with ``relu_first`` on ``relu(x)``, the backward's ∂/∂x then also
    masked where ``x ≤ 0`` as ReLU's own backward masks it (so the values are those of a separate ReLU, bit for bit).
    ``keep_relu`` and ``grad_relu`` as in the compiled kernels (:func:`_generic_forward_kernel`)."""
    if kernel == "forward":
        x, *rest = args
        rectified = torch.relu(x) if relu_first else x
        out = _eager_forward(rectified, *rest)
        return (rectified, out) if keep_relu else out
    grad, x, *rest = args
    grad_x, grad_scale = _eager_backward(grad, torch.relu(x) if relu_first else x, *rest)
    if grad_relu is not None:
        grad_x = grad_relu + grad_x
    if relu_first:
        grad_x = grad_x.masked_fill(x <= 0, 0.0)
    return grad_x, grad_scale


def _compiled(name: str):
    """The compiled kernel ``name``, built on first use (so ``import labkit`` loads no compiler)."""
    if not _COMPILED:
        # inductor's C++ toolchain check logs a CUDA_HOME warning on machines without CUDA (noise in a notebook)
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
        # Shape-generic kernels (dynamic=True) whose bit-width settings come in a small tensor: one compilation per
        # (kernel, dtype, tie rule, Δ > 0 or not, centred or not, ReLU inside or not, rank and broadcast of the
        # scale, thread count), not per shape and bit.
        _COMPILED.update({kernel: torch.compile(function, dynamic=True) for kernel, function in
                          (("forward", _generic_forward_kernel), ("backward", _generic_backward_kernel))})
    return _COMPILED[name]


def _nhwc(t: torch.Tensor) -> bool:
    """A 4-D channels_last tensor (not also plain contiguous, as a tensor with 1×1 spatial size would be)."""
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


def _to_nhwc(t: torch.Tensor) -> torch.Tensor:
    """The NHWC view of a 4-D tensor; a 1–3-D scale is first padded to 4-D on the left (how it broadcasts)."""
    if t.dim() == 0:
        return t
    if t.dim() < 4:
        t = t.reshape((1,) * (4 - t.dim()) + tuple(t.shape))
    return t.permute(0, 2, 3, 1)


def _from_nhwc(t: torch.Tensor) -> torch.Tensor:
    return t.permute(0, 3, 1, 2)


def _plain(t: torch.Tensor) -> torch.Tensor:
    """``t`` detached: a plain tensor that needs no gradient, the same for every call. Dynamo compiles a parameter's
    shape in statically and guards on ``requires_grad`` and a view's base, so a weight passed as it is would get one
    kernel per shape and bit-width, and every call would check the guards of each kernel in turn."""
    return t.detach()


def _compiled_forward(x, scale, qmin, qmax, shift, rounding, offset=0.0, relu_first=False, keep_relu=False):
    """The compiled forward; a channels_last ``x`` goes in as its contiguous NHWC view and comes back channels_last
    (the compiled kernels write contiguous outputs, which would cost the next conv a layout conversion)."""
    x, scale = _plain(x), _plain(scale)
    nhwc = _nhwc(x)
    out = _compiled("forward")(_to_nhwc(x) if nhwc else x, _to_nhwc(scale) if nhwc else scale,
                               _settings(qmin, qmax, shift, offset, scale), rounding, shift > 0, bool(offset),
                               relu_first, keep_relu)
    if keep_relu:  # not views of the kernel's NHWC outputs: a ReLU's output may be written in place, as PyTorch's
        return tuple(_from_nhwc(t).detach() for t in out) if nhwc else out
    return _from_nhwc(out) if nhwc else out


def _compiled_backward(grad, x, scale, qmin, qmax, shift, rounding, grad_factor, offset=0.0, relu_first=False,
                       grad_relu=None):
    x, scale = _plain(x), _plain(scale)
    nhwc = _nhwc(x)
    if nhwc:  # autograd may hand a gradient in another layout; the eager paths return x's
        grad = grad.contiguous(memory_format=torch.channels_last)
        if grad_relu is not None:
            grad_relu = _to_nhwc(grad_relu.contiguous(memory_format=torch.channels_last))
    grad_x, grad_scale = _compiled("backward")(
        _to_nhwc(grad) if nhwc else grad, _to_nhwc(x) if nhwc else x, _to_nhwc(scale) if nhwc else scale,
        _settings(qmin, qmax, shift, offset, scale), rounding, shift > 0, bool(offset), relu_first, grad_relu)
    if nhwc:  # back to NCHW shapes with channels_last strides, as the eager paths give them
        grad_x = _from_nhwc(grad_x)
    if _low_precision(x, scale):  # the kernel returned the per-element terms: ATen sums them, as on the eager paths
        return grad_x, (_from_nhwc(grad_scale) if nhwc else grad_scale).sum_to_size(scale.shape) * grad_factor
    if nhwc and scale.dim():
        grad_scale = _from_nhwc(grad_scale).reshape(scale.shape)
    return grad_x, grad_scale * grad_factor


def _compile_failed(error: Exception) -> None:
    """Say once, in one line, that the compiled kernels do not run here; continue on the eager fused path."""
    message = str(error).strip().splitlines()
    _COMPILE_FAILURE["error"] = f"{type(error).__name__}: {message[0] if message else ''}"[:300]
    use_fake_quant_path("fused")
    warnings.warn(f"labkit.quant: torch.compile is unavailable here ({_COMPILE_FAILURE['error']}); fake-quant runs "
                  "on the eager fused path (the same values, to float rounding).", RuntimeWarning, stacklevel=3)


def _run(kernel: str, *args, relu_first: bool = False, **pair):
    """Call the installed forward/backward kernel; a compiled one that fails falls back to eager for good.

    ``pair`` passes ``keep_relu`` (forward) or ``grad_relu`` (backward) of :func:`relu_and_fake_quantize` on. The
    eager kernel runs first on the same arguments: where it fails too, the input is at fault (a shape that does not
    broadcast, ...), so its own error is raised and the compiled path stays."""
    function = _KERNELS[kernel]
    if function not in (_compiled_forward, _compiled_backward):
        return _eager_kernel(kernel, args, relu_first, **pair) if relu_first else function(*args)
    try:
        return function(*args, relu_first=relu_first, **pair)
    except Exception as error:  # no working compiler (no C++ toolchain, unsupported platform, ...), or a bad input
        failure = error
    result = _eager_kernel(kernel, args, relu_first, **pair)
    _compile_failed(failure)
    return result


class _FakeQuantize(torch.autograd.Function):
    """The recompute path: saves only ``x`` and the scale; the backward recomputes the codes (less memory). With
    ``eager`` it runs the eager kernels whatever is installed (``"auto"`` off the compiled kernels' ground); with
    ``relu_first`` (compiled kernels, lsq gradients only) ``x`` is the ReLU's input (:func:`fake_quantize`)."""

    @staticmethod
    def forward(ctx, x, scale, qmin, qmax, shift, rounding, grad_factor, grad_mode, offset, eager=False,
                relu_first=False):
        ctx.save_for_backward(x, scale)
        ctx.settings = (qmin, qmax, shift, rounding, grad_factor, offset)
        ctx.grad_mode, ctx.eager, ctx.relu_first = grad_mode, eager, relu_first
        if eager:
            return _eager_kernel("forward", (x, scale, qmin, qmax, shift, rounding, offset), relu_first)
        return _run("forward", x, scale, qmin, qmax, shift, rounding, offset, relu_first=relu_first)

    @staticmethod
    def backward(ctx, grad_out):
        x, scale = ctx.saved_tensors
        if ctx.grad_mode == "reference":
            grad_x, grad_scale = _reference_backward_kernel(grad_out, x, scale, *ctx.settings)
        elif ctx.eager or torch.is_grad_enabled():  # create_graph: the eager kernels, whose backward is differentiable
            # (the compiled kernels take x and the scale detached)
            grad_x, grad_scale = _eager_kernel("backward", (grad_out, x, scale, *ctx.settings), ctx.relu_first)
        else:
            grad_x, grad_scale = _run("backward", grad_out, x, scale, *ctx.settings, relu_first=ctx.relu_first)
        return grad_x, grad_scale, None, None, None, None, None, None, None, None, None


class _ReLUAndFakeQuantize(torch.autograd.Function):
    """``(relu(x), fake_quantize(relu(x)))`` from one compiled loop each way (:func:`relu_and_fake_quantize`).

    Saves ``x`` and the scale. The backward takes both gradients and returns the one ∂/∂x autograd would build for a
    separate ReLU read by the quantizer and by others: the quantizer's masked gradient plus the others', then ReLU's
    mask. Gradients are not materialised, so an output nobody used costs nothing in the backward."""

    @staticmethod
    def forward(ctx, x, scale, qmin, qmax, grad_factor):
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x, scale)
        ctx.settings = (qmin, qmax, 0, "half_even", grad_factor, 0.0)
        return _run("forward", x, scale, qmin, qmax, 0, "half_even", 0.0, relu_first=True, keep_relu=True)

    @staticmethod
    def backward(ctx, grad_relu, grad_out):
        x, scale = ctx.saved_tensors
        if grad_out is None:  # only the ReLU's output was used: ReLU's own backward (x ≤ 0 exactly where relu(x) ≤ 0)
            return (None if grad_relu is None else torch.ops.aten.threshold_backward(grad_relu, x, 0.0)), None, None, \
                None, None
        if torch.is_grad_enabled():  # create_graph: the eager kernels, whose backward is differentiable
            grad_x, grad_scale = _eager_kernel("backward", (grad_out, x, scale, *ctx.settings), True,
                                               grad_relu=grad_relu)
        else:
            grad_x, grad_scale = _run("backward", grad_out, x, scale, *ctx.settings, relu_first=True,
                                      grad_relu=grad_relu)
        return grad_x, grad_scale, None, None, None


def relu_pairing_applies(x: torch.Tensor, scale: torch.Tensor) -> bool:
    """Whether :func:`relu_and_fake_quantize` runs its fused kernels for this call: a training call (gradients wanted)
    on the compiled kernels (``"auto"`` on the CPU, or ``"compiled"``), an ``x`` and scale the fused kernels take
    (:func:`_fused_dtypes`)."""
    wants_grad = torch.is_grad_enabled() and (x.requires_grad or scale.requires_grad)
    path = _KERNELS["path"]
    if path == "auto":
        path = "compiled" if wants_grad and x.device.type == "cpu" else "fused"
    return wants_grad and path == "compiled" and _fused_dtypes(x, scale)


def relu_and_fake_quantize(x: torch.Tensor, scale: torch.Tensor, qmin: int, qmax: int, *,
                           grad_factor: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(r, fake_quantize(r, scale, qmin, qmax, grad_factor=grad_factor))`` with ``r = relu(x)``: the values and the
    gradients of the two separate calls, bit for bit (LSQ gradients, no second rounding: an activation quantizer's).

    For a ReLU whose output a quantized layer reads *and* something else does (the residual shortcut of the next
    ResNet block): where :func:`relu_pairing_applies`, one compiled loop reads ``x`` and writes both tensors, and one
    backward loop reads ``x`` and the two gradients and writes ∂/∂x (for an fp32 ``x`` with the scale gradient summed in
    the same loop; for bf16 ATen sums the per-element terms, as for :func:`fake_quantize`);
    the separate calls make three passes forward (ReLU, quantizer) and six backward (quantizer, the sum of the two
    gradients, ReLU's mask). Elsewhere it is the two separate calls. The backward adds the quantizer's ∂/∂x to the
    gradient of ``r`` once: with two readers of ``r`` (the quantizer and one other) that is autograd's own sum, the same
    bits; with more, autograd would add them in another order (:mod:`labkit.relu_absorption` pairs only the first
    case). ``labkit.nn.ReLUWithQuantizedCopy`` uses it
    (:mod:`labkit.relu_absorption`)."""
    _check_scale_shape(x, scale)
    if relu_pairing_applies(x, scale):
        return _ReLUAndFakeQuantize.apply(x, scale, qmin, qmax, grad_factor)
    rectified = torch.relu(x)
    return rectified, fake_quantize(rectified, scale, qmin, qmax, grad_factor=grad_factor)


def _fused_dtypes(x: torch.Tensor, scale: torch.Tensor) -> bool:
    """The fused path computes in the scale's precision: fp32 (x in fp32/bf16/fp16) or fp64 (x in fp64)."""
    if scale.dtype == torch.float32:
        return x.dtype in (torch.float32, torch.bfloat16, torch.float16) and x.dim() > 0
    return scale.dtype == torch.float64 and x.dtype == torch.float64


def _check_scale_shape(x: torch.Tensor, scale: torch.Tensor) -> None:
    """One clear error for a scale that would change ``x``'s shape (more dimensions, or a size where ``x`` has 1):
    fake quantization returns a tensor of ``x``'s shape, and the compiled kernels would not take such a scale."""
    if scale.dim() > x.dim() or any(s != 1 and s != n for s, n in zip(reversed(scale.shape), reversed(x.shape))):
        from labkit.errors import ScaleShapeError

        raise ScaleShapeError(f"a scale of shape {tuple(scale.shape)} does not broadcast to x's shape {tuple(x.shape)} "
                              "without changing it: give one scale (shape ()), or one per channel shaped to broadcast "
                              "along x, e.g. (C, 1, 1, 1) for a conv weight.")


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
    relu_first: bool = False,
) -> torch.Tensor:
    """Quantize-dequantize ``x`` with a learned ``scale`` (broadcastable to ``x``) and LSQ gradients.

    ``shift`` = Δ drops that many bits by the second rounding of Double Rounding, with tie rule
    ``rounding``; ``qmin``/``qmax`` are the bounds of the *final* code. ``offset`` (in units of the final
    code) is added to the code before dequantizing, ``x̂ = (q + offset) · s · 2^Δ``: 0 for Double Rounding,
    the cell centre for the centred truncation baseline. See the module docstring. Under autocast (a bf16 or
    fp16 ``x``) the quantization is computed in the scale's fp32 and the result returned in ``x``'s dtype.

    ``relu_first=True`` takes the input of a ReLU whose output only this quantizer reads, and quantizes ``relu(x)``
    (``quantize_model`` sets it where a model has such a ReLU: :mod:`labkit.relu_absorption`). Values and gradients
    are those of ``fake_quantize(torch.relu(x), ...)`` on the same path, bit for bit: the eager paths run that ReLU as
    its own operation; the compiled kernels compute it inside their loops, forward and backward, so the ReLU's output
    and its gradient are never written out.
    """
    if grad_mode not in GRAD_MODES:
        raise ValueError(f"grad_mode={grad_mode!r} is unknown; use one of {list(GRAD_MODES)}.")
    _check_scale_shape(x, scale)
    offset = float(offset)
    path = _KERNELS["path"]
    wants_grad = torch.is_grad_enabled() and (x.requires_grad or scale.requires_grad)
    if path == "auto":  # training calls on CPU tensors compiled; evaluation, and CUDA until checked there, eager
        path = "compiled" if wants_grad and x.device.type == "cpu" else "fused"
    eager = path in ("fused", "recompute")  # the installed kernels may be compiled ones (auto) where this is not
    if relu_first:
        if path == "compiled" and grad_mode == "lsq" and _fused_dtypes(x, scale):
            return _FakeQuantize.apply(x, scale, qmin, qmax, shift, rounding, grad_factor, grad_mode, offset, False,
                                       True)
        x = torch.relu(x)  # everywhere else the ReLU runs as its own operation
    if path == "fused" and grad_mode == "lsq" and _fused_dtypes(x, scale):
        if wants_grad:
            return _FusedFakeQuantize.apply(x, scale, qmin, qmax, shift, rounding, grad_factor, offset)
        return _fused_forward(x, scale, qmin, qmax, shift, rounding, offset, False)
    if x.dtype in (torch.bfloat16, torch.float16) and not (path == "compiled" and grad_mode == "lsq"
                                                           and _fused_dtypes(x, scale)):
        # under autocast: quantize in fp32 (bf16 cannot hold v exactly); the compiled kernels cast inside
        return _FakeQuantize.apply(x.float(), scale.float(), qmin, qmax, shift, rounding, grad_factor, grad_mode,
                                   offset, eager).to(x.dtype)
    return _FakeQuantize.apply(x, scale, qmin, qmax, shift, rounding, grad_factor, grad_mode, offset, eager)


def quantize_codes(x: torch.Tensor, scale: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """First rounding (Eq. 1) as integers: ``clip(round(x / s), qmin, qmax)`` in the smallest int dtype."""
    dtype = torch.int8 if qmin >= -128 and qmax <= 127 else torch.int16 if qmin >= -(1 << 15) and qmax < (1 << 15) else torch.int32
    with torch.no_grad():
        return torch.round(x * scale.reciprocal()).clamp_(qmin, qmax).to(dtype)


use_fake_quant_path(DEFAULT_PATH)
