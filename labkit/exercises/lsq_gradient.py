"""Exercise: the LSQ scale gradient with the clipped straight-through estimator (METHOD.md §3, paper Eq. 13–14).

With ``v = x / s`` and the bounds ``qmin``, ``qmax`` of the bit-width, ``x̂ = clip(round(v), qmin, qmax) · s`` and

    ∂x̂/∂s = round(v) − v   where round(v) is inside [qmin, qmax],
            qmin           where round(v) < qmin,
            qmax           where round(v) > qmax,

times the LSQ gradient scale ``g = 1 / sqrt(N · qmax)`` (N = elements the scale covers). The student returns
each element's contribution ``g · ∂x̂/∂s`` (their sum is the scale's gradient when ∂L/∂x̂ = 1); the grader
compares it with the autograd gradient of :func:`labkit.quant.lsq.fake_quantize` on grids that hit every
integer, every tie ``k + 0.5`` and both clip boundaries exactly.
"""
from __future__ import annotations

import torch

from labkit.exercises.grading import ExerciseFeedback, Failed, call_student, fmt, grader, to_tensor
from labkit.quant.lsq import fake_quantize, lsq_grad_scale

SIGNATURE = "my_scale_gradient(x, scale, qmin, qmax) -> Tensor shaped like x"
TODO = "Inside the range return g·(round(v) − v), below qmin g·qmin, above qmax g·qmax, with v = x / scale."


def reference_lsq_scale_gradient(x: torch.Tensor, scale: float, qmin: int, qmax: int,
                                 gradient_scale: bool = True) -> torch.Tensor:
    """Eq. 14: each element's ``g · ∂x̂/∂s`` — ``round(v) − v`` inside, ``qmin`` below, ``qmax`` above."""
    v = x / scale
    rounded = torch.round(v)
    grad = torch.where(rounded < qmin, qmin, torch.where(rounded > qmax, qmax, rounded - v))
    return grad * (lsq_grad_scale(x.numel(), qmax) if gradient_scale else 1.0)


def autograd_scale_gradient(x: torch.Tensor, scale: float, qmin: int, qmax: int,
                            gradient_scale: bool = True) -> torch.Tensor:
    """The same per-element gradient from labkit's fake-quant autograd (one scale entry per element)."""
    scales = torch.full_like(x, scale, requires_grad=True)
    g = lsq_grad_scale(x.numel(), qmax) if gradient_scale else 1.0
    fake_quantize(x, scales, qmin, qmax, grad_factor=g).sum().backward()
    return scales.grad


def _grid(qmin: int, qmax: int, seed: int) -> torch.Tensor:
    """v on a quarter grid past both bounds (integers, ties, exact bounds), then 64 random values, float64."""
    grid = torch.arange((qmin - 3) * 4, (qmax + 3) * 4 + 1, dtype=torch.float64) / 4
    spread = (qmax - qmin + 6) / 2
    noise = (torch.rand(64, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2 - 1) * spread
    return torch.cat([grid, noise + (qmin + qmax) / 2])


CASES = (  # (name, qmin, qmax, scale): scales are powers of two, so v = x / scale is exact
    ("signed 8-bit weights", -128, 127, 0.5),
    ("signed 2-bit weights", -2, 1, 0.125),
    ("unsigned 4-bit activations", 0, 15, 0.25),
)


def _close(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.isclose(a, b, rtol=1e-5, atol=1e-9)


def _diagnose(got, expected, v, qmin, qmax, g, gradient_scale) -> str:
    """The hint for the first mistake this answer shows, or ``""``."""
    rounded = torch.round(v)
    below, above = rounded < qmin, rounded > qmax
    inside = ~below & ~above
    raw = expected / g
    wrong = ~_close(got, expected)
    if gradient_scale and bool(_close(got, raw).all()):
        return (f"You left out the LSQ gradient scale g = 1/sqrt(N·qmax) = 1/sqrt({v.numel()}·{qmax}) = {fmt(g)} "
                f"(METHOD.md §3): multiply every element by g.")
    if bool(_close(got, -expected).all()):
        return "Every value has the wrong sign: inside it is round(v) − v (not v − round(v)); below qmin, above qmax."
    ratio = got[expected.abs() > 1e-12] / expected[expected.abs() > 1e-12]
    if ratio.numel() and bool(_close(ratio, ratio[0].expand_as(ratio)).all()):
        return (f"Your values are {fmt(ratio[0])} × the expected ones everywhere: check the gradient scale "
                f"g = 1/sqrt(N·qmax) with N = x.numel() = {v.numel()} and qmax = {qmax}.")
    on_edge = (((v < qmin) | (v > qmax)) != (below | above)) | (v == qmin) | (v == qmax)
    if bool(wrong[inside].any()):
        if bool(_close(got, g * (torch.floor(v) - v))[inside].all()):
            return "Inside the range you use floor(v) − v; LSQ rounds to the nearest code: round(v) − v."
        if bool(_close(got, g * (v - rounded))[inside].all()):
            return "Inside the range you return v − round(v); expected round(v) − v (the sign is flipped)."
        ties = (v - torch.floor(v)) == 0.5
        if not bool((wrong & inside & ~ties).any()):
            return ("Only the ties v = k + 0.5 differ: round like the forward pass does, torch.round (half to even: "
                    "0.5 → 0, 1.5 → 2, 2.5 → 2).")
        if bool(_close(got, torch.zeros_like(got))[inside].all()):
            return "Inside the range you return 0; the rounding error round(v) − v is what moves the scale."
    if not bool((wrong & ~on_edge).any()):
        return ("Only values at the clip boundary are wrong: an element is clipped when round(v) leaves "
                "[qmin, qmax], not when v does (v = qmax gives round(v) − v = 0; v = qmin − 0.5 rounds to qmin).")
    clipped = below | above
    if bool(_close(got, g * (rounded - v))[clipped].all()):
        return (f"At the clipped values you return round(v) − v; expected qmin = {qmin} below the range and "
                f"qmax = {qmax} above it: the clipped code is a constant bound, so ∂x̂/∂s is that bound. "
                "Did you forget the clipping?")
    if bool(_close(got, torch.zeros_like(got))[clipped].all()):
        return ("At the clipped values you return 0: that is ∂x̂/∂x (no gradient reaches a clipped x); "
                f"∂x̂/∂s there is the bound, qmin = {qmin} below and qmax = {qmax} above.")
    if bool(_close(got[below], g * torch.full_like(got[below], float(qmax))).all()) and bool(below.any()):
        return f"Below the range you return qmax; expected qmin = {qmin} (the bounds are swapped)."
    return ""


@grader(SIGNATURE, TODO)
def check_lsq_scale_gradient(student_fn, gradient_scale: bool = True) -> ExerciseFeedback:
    """Grade ``student_fn(x, scale, qmin, qmax)`` → per-element ``g · ∂x̂/∂s`` (Eq. 14) against autograd.

    ``gradient_scale=False`` grades the plain ``∂x̂/∂s`` without the LSQ factor g (an easier first version).
    """
    checked = 0
    for index, (name, qmin, qmax, scale) in enumerate(CASES):
        v = _grid(qmin, qmax, seed=index)
        x = v * scale
        g = lsq_grad_scale(x.numel(), qmax) if gradient_scale else 1.0
        expected = autograd_scale_gradient(x, scale, qmin, qmax, gradient_scale)
        case = f"{name}: qmin={qmin}, qmax={qmax}, scale={scale}, {x.numel()} elements"
        got = to_tensor(call_student(student_fn, x.clone(), scale, qmin, qmax, case=case, todo=TODO), case)
        if got.shape != x.shape:
            hint = (" That is the sum over elements (the scale's gradient); return each element's contribution."
                    if got.numel() == 1 and bool(_close(got.double().reshape(()), expected.sum())) else "")
            raise Failed(f"Return one value per element, shape {tuple(x.shape)}; you returned shape "
                         f"{tuple(got.shape)} ({case}).{hint}", case, tuple(x.shape), tuple(got.shape))
        got = got.to(torch.float64)
        wrong = ~_close(got, expected)
        if not bool(wrong.any()):
            checked += x.numel()
            continue
        rounded = torch.round(v)
        region = torch.where(rounded < qmin, 0, torch.where(rounded > qmax, 2, 1))
        plain = (v - torch.floor(v) != 0.5) & (v != qmin) & (v != qmax)  # not a tie, not on a bound
        first = next(int(torch.nonzero(m)[0, 0]) for m in (wrong & (region == 1) & plain, wrong & (region == 1), wrong)
                     if bool(m.any()))
        vi, r, ri = float(v[first]), int(region[first]), float(rounded[first])
        where, formula, value = (("below the range", "qmin", f"{qmin}"),
                                 ("inside the range", "(round(v) − v)", f"({fmt(ri)} − ({fmt(vi)}))"),
                                 ("above the range", "qmax", f"{qmax}"))[r]
        factor = f"g·{formula} = {fmt(g)} · {value} = " if gradient_scale else f"{formula} = {value} = "
        hint = _diagnose(got, expected, v, qmin, qmax, g, gradient_scale)
        raise Failed(f"{int(wrong.sum())} of {x.numel()} values differ ({case}). {where.capitalize()}, at "
                     f"v = x/s = {fmt(vi)} (x = {fmt(vi * scale)}) you return {fmt(float(got[first]))}; expected "
                     f"{factor}{fmt(float(expected[first]))}. {hint}".rstrip(),
                     f"{name}, v = {fmt(vi)}", float(expected[first]), float(got[first]))
    what = "g · ∂x̂/∂s" if gradient_scale else "∂x̂/∂s"
    return ExerciseFeedback(True, f"Correct: your {what} matches labkit's LSQ autograd on all {checked} values "
                                  f"(integers, ties, both clip boundaries; 8-bit, 2-bit and unsigned 4-bit).")
