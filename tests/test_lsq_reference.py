"""The LSQ fake-quantizers of labkit against independent references (METHOD.md §1–3, paper Eq. 1–5, 13–14).

- Δ = 0 (a weight at its highest bit, an activation): PyTorch's own fake-quant ops are the reference, forward
  (``torch.fake_quantize_per_channel_affine``) and gradients (``torch._fake_quantize_learnable_*``, which implement
  the LSQ gradient of Esser et al. with a ``grad_factor``).
- Δ > 0 (a lower bit derived by Double Rounding): a float64 numpy reference for the forward, and autograd through
  an independently written straight-through expression for the gradients (see
  :func:`straight_through_reference` for why it is the same gradient).
- ``grad_mode="reference"``: autograd through an expression written from the METHOD.md §3 [ref-code] sentence.
"""
import math

import numpy as np
import pytest
import torch

from labkit.quant import ActivationQuantizer, DoubleRoundingWeightQuantizer, LsqWeightQuantizer

@pytest.fixture(autouse=True, params=["auto", "fused", "recompute"])
def fake_quant_path(request):
    """Every reference test runs on the default path ("auto": the compiled kernels for training calls where a compiler
    works), on the eager fused path and on the recompute path (issue 11)."""
    from labkit.quant.lsq import DEFAULT_PATH, use_fake_quant_path

    use_fake_quant_path(request.param)
    yield request.param
    use_fake_quant_path(DEFAULT_PATH)


CONV_SHAPE = (12, 5, 3, 3)
LINEAR_SHAPE = (10, 37)


def signed_bounds(bits):
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def make_weight(shape, seed, dtype=torch.float32):
    """Gaussian weights with heavy outliers (some far outside any clipping range)."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=gen, dtype=torch.float64) * 0.05
    flat = w.view(-1)
    flat[::9] *= 8.0
    flat[1::23] = 2.0  # far outliers of both signs in every channel
    flat[2::23] = -2.0
    return w.to(dtype)


def make_scale(weight, bits, seed):
    """Per-channel scales of 0.3–1.5 × (4σ / qmax) of the Gaussian bulk: every channel clips its outliers at
    both ends, some channels clip part of the bulk too."""
    gen = torch.Generator().manual_seed(seed + 1)
    _, qmax = signed_bounds(bits)
    factor = torch.rand(weight.shape[0], generator=gen, dtype=torch.float64) * 1.2 + 0.3
    return (4 * 0.05 / qmax * factor).to(weight.dtype)


def quantizer_with_scale(bit_set, scale, **options):
    quantizer = DoubleRoundingWeightQuantizer(scale.numel(), bit_set, **options).to(scale.dtype)
    with torch.no_grad():
        quantizer.scale.copy_(scale)
    return quantizer


def channel(t, like):
    return t.view(-1, *([1] * (like.dim() - 1)))


# (bit set, the highest bit): Δ = 0 at the high bit of each set, and a dedicated single-bit set.
HIGH_CASES = [((8, 6, 4, 2), 8), ((8,), 8), ((4, 3, 2), 4), ((4,), 4), ((2,), 2)]


# ============================================================================ (a) Δ = 0 forward == PyTorch


@pytest.mark.parametrize("shape", [CONV_SHAPE, LINEAR_SHAPE], ids=["conv", "linear"])
@pytest.mark.parametrize("bit_set,high", HIGH_CASES)
def test_high_bit_forward_equals_torch_fake_quantize_per_channel(shape, bit_set, high):
    w = make_weight(shape, seed=high)
    scale = make_scale(w, high, seed=high)
    qmin, qmax = signed_bounds(high)
    zero_point = torch.zeros(shape[0], dtype=torch.int32)
    expected = torch.fake_quantize_per_channel_affine(w, scale, zero_point, 0, qmin, qmax)
    got = quantizer_with_scale(bit_set, scale)(w, high)
    assert torch.equal(got, expected)
    # and some elements really were clipped, at both ends
    assert (w / channel(scale, w)).round().gt(qmax).any() and (w / channel(scale, w)).round().lt(qmin).any()


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_lsq_single_bit_quantizer_forward_equals_torch(bits):
    w = make_weight(CONV_SHAPE, seed=10 + bits)
    scale = make_scale(w, bits, seed=bits)
    quantizer = LsqWeightQuantizer(CONV_SHAPE[0], (bits,))
    with torch.no_grad():
        quantizer.scale.copy_(scale)
    qmin, qmax = signed_bounds(bits)
    expected = torch.fake_quantize_per_channel_affine(w, scale, torch.zeros(CONV_SHAPE[0], dtype=torch.int32), 0, qmin, qmax)
    assert torch.equal(quantizer(w, bits), expected)


# ============================================================================ (b) Δ = 0 gradients == PyTorch LSQ


def torch_learnable_per_channel(w, scale, qmin, qmax, grad_factor, grad_out):
    w = w.detach().clone().requires_grad_()
    scale = scale.detach().clone().requires_grad_()
    zero_point = torch.zeros(scale.numel(), dtype=w.dtype, requires_grad=True)
    out = torch._fake_quantize_learnable_per_channel_affine(w, scale, zero_point, 0, qmin, qmax, grad_factor)
    (out * grad_out).sum().backward()
    return out.detach(), w.grad, scale.grad


def labkit_weight_grads(quantizer, w, bits, grad_out):
    w = w.detach().clone().requires_grad_()
    quantizer.zero_grad()
    out = quantizer(w, bits)
    (out * grad_out).sum().backward()
    return out.detach(), w.grad, quantizer.scale.grad.clone()


@pytest.mark.parametrize("shape", [CONV_SHAPE, LINEAR_SHAPE], ids=["conv", "linear"])
@pytest.mark.parametrize("bit_set,high", HIGH_CASES)
def test_high_bit_gradients_equal_torch_learnable_fake_quantize(shape, bit_set, high):
    w = make_weight(shape, seed=100 + high)
    scale = make_scale(w, high, seed=100 + high)
    qmin, qmax = signed_bounds(high)
    elements_per_channel = math.prod(shape[1:])
    grad_factor = 1.0 / math.sqrt(elements_per_channel * qmax)
    grad_out = torch.randn(shape, generator=torch.Generator().manual_seed(7))
    out_ref, gw_ref, gs_ref = torch_learnable_per_channel(w, scale, qmin, qmax, grad_factor, grad_out)
    out, gw, gs = labkit_weight_grads(quantizer_with_scale(bit_set, scale), w, high, grad_out)
    assert torch.equal(out, out_ref)
    assert (gw == 0).float().mean() > 0.03, "the test weights should have many clipped elements"
    torch.testing.assert_close(gw, gw_ref, rtol=0, atol=0)
    assert gs.shape == scale.shape
    # The per-element terms differ only by float32 rounding ((x_fq - x) / s vs round(v) - v); sums of N terms.
    torch.testing.assert_close(gs, gs_ref, rtol=1e-5, atol=1e-5 * grad_factor * elements_per_channel ** 0.5)


def test_high_bit_gradient_with_everything_clipped():
    """A scale so small that every element clips: weight gradient 0, scale gradient g·Σ dy·bound."""
    w = make_weight(LINEAR_SHAPE, seed=3)
    w = w.sign() * (w.abs() + 0.01)  # |W| / s >= 1e4 everywhere
    scale = torch.full((LINEAR_SHAPE[0],), 1e-6)
    qmin, qmax = signed_bounds(8)
    grad_factor = 1.0 / math.sqrt(LINEAR_SHAPE[1] * qmax)
    grad_out = torch.randn(LINEAR_SHAPE, generator=torch.Generator().manual_seed(1))
    _, gw_ref, gs_ref = torch_learnable_per_channel(w, scale, qmin, qmax, grad_factor, grad_out)
    _, gw, gs = labkit_weight_grads(quantizer_with_scale((8, 6, 4, 2), scale), w, 8, grad_out)
    assert torch.count_nonzero(gw) == 0
    torch.testing.assert_close(gw, gw_ref, rtol=0, atol=0)
    torch.testing.assert_close(gs, gs_ref, rtol=1e-5, atol=1e-6)


# ============================================================================ (c) activations == PyTorch per-tensor


def activation_scale(quantizer, bits):
    """The learned scale parameter of ``bits`` (one parameter per bit-width, or one vector indexed by bit)."""
    if isinstance(quantizer.scale, torch.nn.ParameterDict):
        return quantizer.scale[str(bits)]
    return quantizer.scale[quantizer.bit_set.index(bits)]


def activation_scale_grad(quantizer, bits):
    if isinstance(quantizer.scale, torch.nn.ParameterDict):
        grad = quantizer.scale[str(bits)].grad
        return torch.zeros(()) if grad is None else grad.reshape(())
    return quantizer.scale.grad[quantizer.bit_set.index(bits)]


@pytest.mark.parametrize("bits", [8, 6, 4, 2])
def test_activation_quantizer_equals_torch_learnable_per_tensor(bits):
    gen = torch.Generator().manual_seed(bits)
    x = torch.randn(4, 3, 7, 5, generator=gen) * 1.5 + 0.5  # some negatives: clipped at 0
    quantizer = ActivationQuantizer((8, 6, 4, 2))
    scales = {8: 0.011, 6: 0.047, 4: 0.21, 2: 0.9}  # several clip at the top
    with torch.no_grad():
        for b, value in scales.items():
            activation_scale(quantizer, b).fill_(value)
        quantizer.initialized.fill_(True)
    qmax = 2 ** bits - 1
    grad_factor = 1.0 / math.sqrt(x.numel() * qmax)
    grad_out = torch.randn(x.shape, generator=gen)

    x1 = x.clone().requires_grad_()
    out = quantizer(x1, bits)
    (out * grad_out).sum().backward()

    x2 = x.clone().requires_grad_()
    s2 = torch.tensor([scales[bits]], requires_grad=True)
    zp = torch.zeros(1, requires_grad=True)
    ref = torch._fake_quantize_learnable_per_tensor_affine(x2, s2, zp, 0, qmax, grad_factor)
    (ref * grad_out).sum().backward()

    assert torch.equal(out.detach(), ref.detach())
    assert out.min() == 0 and out.max() == qmax * s2.detach()[0]  # both ends of the range are used
    torch.testing.assert_close(x1.grad, x2.grad, rtol=0, atol=0)
    torch.testing.assert_close(activation_scale_grad(quantizer, bits), s2.grad[0], rtol=1e-5, atol=1e-6)
    for other in (8, 6, 4, 2):  # only this bit's scale learns
        if other != bits:
            assert activation_scale_grad(quantizer, other) == 0


# ============================================================================ (d) Δ > 0: Double Rounding


def numpy_round_rule(x, rule):
    if rule == "half_even":
        return np.round(x)  # numpy rounds half to even
    if rule == "half_up":
        return np.floor(x + 0.5)
    return np.floor(x)


def numpy_double_rounding_code(w, scale_h, high, low, rule):
    """Unclipped double-rounded code ``u = round_rule(round(W/s_h) / 2^Δ)`` in float64 numpy (first rounding: ties to even)."""
    v = w.detach().double().numpy() / channel(scale_h.detach().double(), w).numpy()
    return numpy_round_rule(np.round(v) / 2.0 ** (high - low), rule)


def numpy_forward(w, scale_h, high, low, rule):
    qmin, qmax = signed_bounds(low)
    u = numpy_double_rounding_code(w, scale_h, high, low, rule)
    return np.clip(u, qmin, qmax) * channel(scale_h.detach().double(), w).numpy() * 2.0 ** (high - low)


def numpy_stored_code_saturated(w, scale_h, high):
    """Where the stored INT-h code ``clip(round(W/s_h))`` is saturated, i.e. ``round(W/s_h)`` is outside the INT-h range."""
    v = w.detach().double().numpy() / channel(scale_h.detach().double(), w).numpy()
    first = np.round(v)
    return (first < -(2 ** (high - 1))) | (first > 2 ** (high - 1) - 1)


def numpy_ste_mask(w, scale_h, high, low, rule):
    """Clipped-STE mask at bit l that follows the stored code: the l-bit code is inside its range and the INT-h
    code is not saturated (a weight whose stored code is saturated gets 0 at every bit, as it does at h)."""
    qmin, qmax = signed_bounds(low)
    u = numpy_double_rounding_code(w, scale_h, high, low, rule)
    return (u >= qmin) & (u <= qmax) & ~numpy_stored_code_saturated(w, scale_h, high)


def clip_ste(ste, code, qmin, qmax, inside=None):
    """``clip(ste)`` whose gradient is 1 where ``inside`` (default: ``qmin <= code <= qmax``, inclusive), else 0."""
    if inside is None:
        inside = (code >= qmin) & (code <= qmax)
    return torch.where(inside, ste, code.clamp(qmin, qmax))


def straight_through_reference(w, scale_h, high, low, rule):
    """``s_l · clip(ste(W / s_l))`` with ``s_l = s_h · 2^Δ``, where ste's value is the double-rounded code.

    Why this gives the gradient that labkit must produce (paper Eq. 13–14 at bit l, chained to s_h):

    * ``ste = u + (v_l − v_l.detach())`` has the *value* u (the double-rounded code, exactly: the bracket is 0)
      and the *derivative* of ``v_l = W / s_l`` (the straight-through estimator: ∂u/∂v_l := 1). It is the
      ``x + (round(x) − x).detach()`` trick rearranged so that the value is the integer exactly.
    * ``clip`` passes the gradient where ``qmin ≤ u ≤ qmax`` (inclusive, Eq. 13: "1 inside [n, p]") and the
      stored INT-h code is not saturated, and blocks it elsewhere: the clipped STE of the stored code. The mask
      is decided on the rounded (unclipped) codes, as PyTorch's learnable fake-quant does at Δ = 0. (It is written with ``torch.where``, not ``torch.clamp``: torch 2.14's clamp
      backward blocks the gradient at exactly ``x == min``/``max``, which would drop the boundary codes.)
    * Then ``∂x̂/∂W = s_l · 1[inside] / s_l = 1[inside]`` and
      ``∂x̂/∂s_l = clamp(u) + s_l · 1[inside] · (−W / s_l²) = (u − v_l)`` inside, ``qmin``/``qmax`` outside —
      Eq. 14 at bit l; autograd multiplies by ``∂s_l/∂s_h = 2^Δ`` (the tied scale), giving
      ``q·2^Δ − v_h`` inside and ``q·2^Δ`` outside, and sums it over each output channel (s_h broadcasts).
    * The LSQ gradient scale ``g = 1/sqrt(N·qmax_l)`` is applied with the ``grad_scale`` trick of lsq-net,
      written ``s.detach() + (s·g − (s·g).detach())`` so that the value is s exactly and the gradient is ×g.
    """
    qmin, qmax = signed_bounds(low)
    grad_factor = 1.0 / math.sqrt(w[0].numel() * qmax)
    s_scaled = scale_h.detach() + (scale_h * grad_factor - (scale_h * grad_factor).detach())
    s_low = channel(s_scaled * 2.0 ** (high - low), w)
    v_low = w / s_low
    code = torch.from_numpy(numpy_double_rounding_code(w, scale_h, high, low, rule)).to(w.dtype)
    ste = code + (v_low - v_low.detach())
    inside = torch.from_numpy(numpy_ste_mask(w, scale_h, high, low, rule))
    return s_low * clip_ste(ste, code, qmin, qmax, inside)


LOW_CASES = [((8, 6, 4, 2), 6), ((8, 6, 4, 2), 4), ((8, 6, 4, 2), 2), ((4, 3, 2), 3), ((4, 3, 2), 2)]


@pytest.mark.parametrize("rule", ["half_even", "half_up", "floor"])
@pytest.mark.parametrize("bit_set,low", LOW_CASES)
def test_lower_bit_forward_on_an_exact_grid_with_ties(bit_set, low, rule):
    """float32, power-of-two scales, W on a grid of s_h/8: ties at the first and the second rounding, exactly."""
    high = bit_set[0]
    channels = 6
    gen = torch.Generator().manual_seed(low)
    scale = 2.0 ** -torch.arange(4, 4 + channels, dtype=torch.float32)
    span = 3 * 2 ** (high - 1) * 8
    eighths = torch.randint(-span, span + 1, (channels, 64), generator=gen).float()
    eighths[:, :8] = torch.tensor([4.0, -4.0, 12.0, -12.0, 32 * 8 + 4, -32 * 8 - 4, 96 * 8, -96 * 8])  # .5 ties
    w = eighths / 8 * scale[:, None]
    got = quantizer_with_scale(bit_set, scale, rounding=rule)(w, low)
    expected = torch.from_numpy(numpy_forward(w, scale, high, low, rule)).float()
    assert torch.equal(got, expected)


@pytest.mark.parametrize("rule", ["half_even", "half_up", "floor"])
@pytest.mark.parametrize("bit_set,low", LOW_CASES)
@pytest.mark.parametrize("shape", [CONV_SHAPE, LINEAR_SHAPE], ids=["conv", "linear"])
def test_lower_bit_forward_and_gradients_equal_straight_through_reference(shape, bit_set, low, rule):
    high = bit_set[0]
    w = make_weight(shape, seed=low * 31 + len(rule), dtype=torch.float64)
    scale = make_scale(w, high, seed=low)
    quantizer = quantizer_with_scale(bit_set, scale, rounding=rule)  # float64 module
    grad_out = torch.randn(shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)

    out, gw, gs = labkit_weight_grads(quantizer, w, low, grad_out)
    np.testing.assert_array_equal(out.numpy(), numpy_forward(w, scale, high, low, rule))

    w_ref = w.clone().requires_grad_()
    s_ref = scale.clone().requires_grad_()
    ref = straight_through_reference(w_ref, s_ref, high, low, rule)
    (ref * grad_out).sum().backward()
    assert torch.equal(out, ref.detach())
    # weight gradient: exactly grad_out times the clipped-STE mask
    mask = torch.from_numpy(numpy_ste_mask(w, scale, high, low, rule))
    assert 0 < mask.sum() < mask.numel(), "the test weights should clip some elements, not all"
    assert torch.equal(gw, grad_out * mask)
    torch.testing.assert_close(gw, w_ref.grad, rtol=1e-15, atol=0)  # autograd's (dy·s_l)/s_l is dy up to 1 ulp
    torch.testing.assert_close(gs, s_ref.grad, rtol=1e-10, atol=1e-12)


def test_far_outliers_get_no_weight_gradient_at_lower_bits():
    """A weight far below the range has zero gradient at every bit (clipping h-first would let -2^(l-1) through)."""
    scale = torch.full((2,), 0.01)
    w = torch.tensor([[-5.0, 5.0, 0.0], [-1.3, 0.004, 1.26]], requires_grad=True)  # ±500 and ±130 steps
    quantizer = quantizer_with_scale((8, 6, 4, 2), scale)
    for low in (8, 6, 4, 2):
        w.grad = None
        quantizer(w, low).sum().backward()
        assert w.grad[0, 0] == 0 and w.grad[0, 1] == 0, f"bits={low}"
        assert w.grad[0, 2] == 1 and w.grad[1, 1] == 1, f"bits={low}"


@pytest.mark.parametrize("low", [6, 4, 2])
def test_lower_bit_float32_gradients_close_to_float64_reference(low):
    w64 = make_weight(CONV_SHAPE, seed=77 + low, dtype=torch.float64)
    w = w64.float()
    scale = make_scale(w, 8, seed=low)
    grad_out = torch.randn(CONV_SHAPE, generator=torch.Generator().manual_seed(9))
    _, gw, gs = labkit_weight_grads(quantizer_with_scale((8, 6, 4, 2), scale), w, low, grad_out)
    w_ref = w.double().requires_grad_()
    s_ref = scale.double().requires_grad_()
    (straight_through_reference(w_ref, s_ref, 8, low, "half_even") * grad_out.double()).sum().backward()
    torch.testing.assert_close(gw.double(), w_ref.grad, rtol=1e-15, atol=0)
    torch.testing.assert_close(gs.double(), s_ref.grad, rtol=1e-4, atol=1e-5)


# ============================================================================ (e) grad_mode="reference"


def ref_code_reference(w, scale_h, high, low):
    """METHOD.md §3 [ref-code], written from its sentence.

    "for the weight at bit l uses v = W / (s_h·2^Δ), the l-bit bounds, a single rounding in the gradient, no 2^Δ
    chain factor": the gradient path is ``s_l · clip(ste(round(v)))`` at l-bit bounds with ``round`` one
    torch-style rounding (ties to even) of ``v = W / s_l``; ``s_l`` has the value ``s_h·2^Δ`` but derivative 1
    w.r.t. s_h. Returns the per-element expression; the lock-step sum over channels is applied by the caller,
    with g = 1/sqrt(N·qmax_l), N = elements per output channel (METHOD.md §3's definition of g; the sentence does
    not say that the [ref-code] changes N when it sums over the whole tensor).
    """
    qmin, qmax = signed_bounds(low)
    shift_factor = 2.0 ** (high - low)
    s_low = channel(scale_h.detach() * shift_factor + (scale_h - scale_h.detach()), w)  # no chain factor
    v_low = w / s_low
    single = torch.from_numpy(np.round(v_low.detach().numpy()))
    ste = single + (v_low - v_low.detach())
    return s_low * clip_ste(ste, single, qmin, qmax)


@pytest.mark.parametrize("bit_set,low", [((8, 6, 4, 2), 8), *LOW_CASES])
def test_reference_grad_mode_is_lock_step_and_matches_ref_code_description(bit_set, low):
    high = bit_set[0]
    w = make_weight(CONV_SHAPE, seed=200 + low, dtype=torch.float64)
    scale = make_scale(w, high, seed=200 + low)
    grad_out = torch.randn(CONV_SHAPE, generator=torch.Generator().manual_seed(11), dtype=torch.float64)

    reference_mode = quantizer_with_scale(bit_set, scale, grad_mode="reference")
    out, gw, gs = labkit_weight_grads(reference_mode, w, low, grad_out)
    lsq_out = quantizer_with_scale(bit_set, scale)(w, low)
    assert torch.equal(out, lsq_out.detach()), "grad_mode must not change the forward"

    # lock-step: every channel receives the same scale gradient
    assert torch.equal(gs, gs[:1].expand_as(gs))

    w_ref = w.clone().requires_grad_()
    s_ref = scale.clone().requires_grad_()
    (ref_code_reference(w_ref, s_ref, high, low) * grad_out).sum().backward()
    _, qmax = signed_bounds(low)
    grad_factor = 1.0 / math.sqrt(w[0].numel() * qmax)
    expected_scale = s_ref.grad.sum() * grad_factor
    torch.testing.assert_close(gs, expected_scale.expand_as(gs), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gw, w_ref.grad, rtol=1e-15, atol=0)


@pytest.mark.parametrize("bit_set,low", [((8, 6, 4, 2), 8), ((8, 6, 4, 2), 4), ((8, 6, 4, 2), 2), ((4, 3, 2), 3)])
def test_reference_grad_mode_on_an_exact_grid_with_ties(bit_set, low):
    """W / s_l hits exact .5 ties: the [ref-code] single rounding is torch.round, i.e. ties to even."""
    high = bit_set[0]
    channels = 4
    scale = 2.0 ** -torch.arange(5, 5 + channels, dtype=torch.float64)
    step = 2 ** (high - low)
    gen = torch.Generator().manual_seed(low)
    halves = torch.randint(-4 * 2 ** low, 4 * 2 ** low + 1, (channels, 40), generator=gen).double()
    halves[:, :6] = torch.tensor([1.0, -1.0, 3.0, -3.0, 5.0, -5.0])  # v_l = ±0.5, ±1.5, ±2.5
    w = halves / 2 * step * scale[:, None]  # W / s_l = halves / 2 exactly
    grad_out = torch.randn(w.shape, generator=gen, dtype=torch.float64)
    _, gw, gs = labkit_weight_grads(quantizer_with_scale(bit_set, scale, grad_mode="reference"), w, low, grad_out)
    w_ref = w.clone().requires_grad_()
    s_ref = scale.clone().requires_grad_()
    (ref_code_reference(w_ref, s_ref, high, low) * grad_out).sum().backward()
    _, qmax = signed_bounds(low)
    expected_scale = s_ref.grad.sum() / math.sqrt(w[0].numel() * qmax)
    torch.testing.assert_close(gs, expected_scale.expand_as(gs), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gw, w_ref.grad, rtol=1e-15, atol=0)
