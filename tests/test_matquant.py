"""Matryoshka Quantization (labkit.quant.matquant, issue 14 item 3) against independent references.

- slicing: exact rational arithmetic (:class:`fractions.Fraction`) over every unsigned code;
- the forward grid and the integer path: the dequantization formula written out with Fractions;
- the gradients: autograd through an independently written straight-through expression;
- the multi-bit loss: one backward of the explicitly summed weighted loss.
"""
import copy
import math
from fractions import Fraction

import pytest
import torch
from torch import nn

import labkit
from labkit.quant import MatQuantWeightQuantizer, accumulate_multi_bit_gradients, slice_codes
from labkit.storage import load_int, save_int

BITS = (8, 4, 2)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def ref_round(x: Fraction, rule: str) -> int:
    if rule == "half_even":
        return round(x)
    if rule == "half_up":
        return math.floor(x + Fraction(1, 2))
    return math.floor(x)


def ref_slice(q: int, high: int, low: int, rule: str) -> int:
    return min(max(ref_round(Fraction(q, 2 ** (high - low)), rule), 0), 2 ** low - 1)


@pytest.mark.parametrize("rule", ["half_up", "half_even", "floor"])
@pytest.mark.parametrize("high", [8, 4])
def test_slicing_every_unsigned_code_equals_exact_rational_rounding(high, rule):
    codes = torch.arange(2 ** high, dtype=torch.uint8)
    for low in range(2, high + 1):
        got = slice_codes(codes, high, low, rule)
        assert got.dtype == torch.uint8
        assert got.tolist() == [ref_slice(q, high, low, rule) for q in range(2 ** high)], low


def test_slicing_examples_and_the_top_clip():
    q = torch.tensor([0, 31, 32, 95, 96, 223, 224, 255], dtype=torch.uint8)
    # 8 → 2 bits, half up: 32/64 = .5 → 1, 96/64 = 1.5 → 2, 224/64 = 3.5 → 4 → clipped to 3
    assert slice_codes(q, 8, 2).tolist() == [0, 0, 1, 1, 2, 3, 3, 3]
    assert slice_codes(q, 8, 2, "half_even").tolist() == [0, 0, 0, 1, 2, 3, 3, 3]


def test_slicing_twelve_bit_codes_in_int16():
    codes = torch.arange(2 ** 12, dtype=torch.int16)
    got = slice_codes(codes, 12, 5)
    assert got.dtype == torch.int16
    assert got.tolist() == [ref_slice(q, 12, 5, "half_up") for q in range(2 ** 12)]


def quantizer_with(scale, zero, bits=BITS, dtype=torch.float64):
    quantizer = MatQuantWeightQuantizer(len(scale), bits).to(dtype)
    with torch.no_grad():
        quantizer.scale.copy_(torch.tensor(scale, dtype=dtype))
        quantizer.zero_point.copy_(torch.tensor(zero, dtype=dtype))
    return quantizer


@pytest.mark.parametrize("low", [8, 4, 2])
def test_forward_dequantizes_every_code_on_the_c_bit_grid(low):
    """Weights at every INT8 code's value and between: Ŵ = s · (slice(q_8) · 2^Δ − z), exactly; and
    (codes + code_offset) · step equals it bit for bit."""
    scale, zero = [2.0 ** -6, 3.0 / 1024], [100.0, 37.0]
    quantizer = quantizer_with(scale, zero, dtype=torch.float32)
    steps = torch.arange(-40 * 4, 300 * 4) / 4  # W/s in quarter steps, beyond the range at both ends
    weight = torch.stack([(steps - z) * s for s, z in zip(scale, zero)]).float()
    got = quantizer(weight, low)
    shift = 8 - low
    for c, (s, z) in enumerate(zip(scale, zero)):
        for i, w in enumerate(weight[c].tolist()):
            q8 = min(max(round(Fraction(w) / Fraction(s)) + int(z), 0), 255)
            expected = Fraction(s) * (ref_slice(q8, 8, low, "half_up") * 2 ** shift - int(z))
            assert got[c, i].item() == float(expected), (c, i, low)
    codes, step = quantizer.codes(weight, low)
    assert codes.dtype == torch.uint8 and int(codes.max()) <= 2 ** low - 1
    offset = quantizer.code_offset(low)
    assert torch.equal(offset, -torch.tensor(zero) / 2 ** shift)
    assert torch.equal((codes.float() + offset[:, None]) * step[:, None], got.detach())


def test_minmax_init_covers_each_channel_and_includes_zero():
    torch.manual_seed(0)
    weight = torch.randn(4, 50, dtype=torch.float64)
    weight[3] = weight[3].abs() + 0.5  # all positive: the range is widened to include 0
    quantizer = MatQuantWeightQuantizer(4, BITS).double()
    quantizer.reset_scale(weight)
    low = weight.amin(dim=1).clamp(max=0)
    high = weight.amax(dim=1).clamp(min=0)
    torch.testing.assert_close(quantizer.scale.detach(), (high - low) / 255)
    assert torch.equal(quantizer.zero_point, torch.round(-low / quantizer.scale.detach()))
    assert quantizer.zero_point[3] == 0
    codes = quantizer.high_codes(weight)
    assert codes.dtype == torch.uint8
    assert codes.amin(dim=1).tolist()[:3] == [0, 0, 0] and codes.amax(dim=1).tolist() == [255] * 4
    # at 8 bits every weight is within half a step, but the channel maximum: the rounded zero point can put it up to
    # half a step past code 255 (max/s + z = 255 + (z − (−min/s)))
    error = (quantizer(weight, 8).detach() - weight).abs() / quantizer.scale.detach()[:, None]
    at_max = weight == weight.amax(dim=1, keepdim=True)
    assert float(error[~at_max].max()) <= 0.5 + 1e-9 and float(error[at_max].max()) <= 1.0 + 1e-9


def test_zero_is_not_on_the_sliced_grid_unless_the_step_divides_the_zero_point():
    """A difference from Double Rounding: its grids always hold W = 0; MatQuant's r-bit grid s·(k·2^Δ − z) does only
    when 2^Δ divides z (z = 100 at 8 → 2 bits: 100/64 is not whole)."""
    quantizer = quantizer_with([0.01, 0.01], [100.0, 128.0])
    zero = torch.zeros(2, 1, dtype=torch.float64)
    assert quantizer(zero, 2)[0, 0] != 0 and quantizer(zero, 2)[1, 0] == 0
    dr = labkit.quant.make_weight_quantizer("double_rounding", 2, (8, 4, 2)).double()
    assert torch.equal(dr(zero, 2), zero)


@pytest.mark.parametrize("low", [8, 4, 2])
def test_gradients_equal_a_straight_through_reference(low):
    torch.manual_seed(low)
    weight = torch.randn(5, 30, dtype=torch.float64) * 0.05
    weight[:, 0] = 1.0  # far above the range
    weight[:, 1] = -1.0  # far below
    scale = torch.full((5,), 0.0008, dtype=torch.float64)
    zero = torch.tensor([128.0, 100.0, 37.0, 200.0, 64.0], dtype=torch.float64)
    quantizer = quantizer_with(scale.tolist(), zero.tolist())
    grad_out = torch.randn_like(weight)
    w = weight.clone().requires_grad_()
    out = quantizer(w, low)
    (out * grad_out).sum().backward()

    shift = 8 - low
    g = 1.0 / math.sqrt(30 * (2 ** low - 1))
    s = scale.clone().requires_grad_()
    w_ref = weight.clone().requires_grad_()
    s_scaled = (scale + (s * g - (s * g).detach()))[:, None]
    v = w_ref / s_scaled
    code_c = torch.round(weight / scale[:, None]) + zero[:, None]
    inside_c = (code_c >= 0) & (code_c <= 255)
    sliced = torch.floor(code_c.clamp(0, 255) / 2 ** shift + 0.5)  # half up
    inside = inside_c & (sliced <= 2 ** low - 1)
    value = sliced.clamp(max=2 ** low - 1) * 2 ** shift - zero[:, None]
    ste = torch.where(inside, value + (v - v.detach()), value)
    ref = s_scaled * ste
    (ref * grad_out).sum().backward()
    torch.testing.assert_close(out.detach(), ref.detach(), rtol=1e-12, atol=1e-15)
    assert torch.equal(w.grad, grad_out * inside)
    assert 0 < inside.sum() < inside.numel()
    torch.testing.assert_close(quantizer.scale.grad, s.grad, rtol=1e-10, atol=1e-12)


def small_net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10),
    )


def test_quantize_model_matquant_integer_path_and_int_checkpoint(tmp_path):
    fp32 = small_net()
    model = labkit.quantize_model(fp32, BITS, method="matquant", example_input=torch.randn(2, 3, 12, 12))
    layers = labkit.quantized_layers(model)
    assert all(isinstance(layer.weight_quantizer, MatQuantWeightQuantizer) for layer in layers.values())
    assert all(layer.weight_quantizer.rounding == "half_up" for layer in layers.values())
    x = torch.randn(4, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    model.train()
    for b in BITS:
        labkit.set_bits(model, b)(x)
    model.eval()
    for b in BITS:
        labkit.set_bits(model, b)
        for layer in layers.values():
            codes, step = layer.weight_codes()
            high = layer.weight_quantizer.high_codes(layer.weight)
            assert torch.equal(codes, slice_codes(high, 8, b))
            offset = layer.weight_code_offset().view(-1, 1, 1, 1)
            assert torch.equal((codes.float() + offset) * step.view(-1, 1, 1, 1), layer.quantized_weight().detach())
    with torch.no_grad():
        expected = {b: labkit.set_bits(model, b)(x) for b in BITS}
    loaded = load_int(save_int(model, tmp_path / "matquant.safetensors"), model=fp32)
    for name, layer in labkit.quantized_layers(loaded).items():
        assert layer.weight_quantizer.stored_codes.dtype == torch.uint8
        assert torch.equal(layer.weight_quantizer.stored_codes, layers[name].weight_quantizer.high_codes(layers[name].weight))
    with torch.no_grad():
        for b in BITS:
            assert torch.equal(labkit.set_bits(loaded, b)(x), expected[b]), b
    # a training forward starts from the stored model: float weights = s · (q_8 − z)
    stored = {name: layer.weight_quantizer.stored_codes for name, layer in labkit.quantized_layers(loaded).items()}
    loaded.train()
    loaded(x)
    for name, layer in labkit.quantized_layers(loaded).items():
        quantizer = layer.weight_quantizer
        assert quantizer.stored_codes is None
        assert torch.equal(layer.weight.detach(), quantizer.dequantize_high(stored[name]))
        assert torch.equal(quantizer.high_codes(layer.weight), stored[name])


def test_matquant_refuses_inits_it_does_not_have():
    with pytest.raises(ValueError, match="min–max"):
        MatQuantWeightQuantizer(4, BITS, init="reference")


def test_accumulated_multi_bit_gradient_is_the_gradient_of_the_weighted_sum():
    model = labkit.quantize_model(small_net(), BITS, method="matquant", example_input=torch.randn(2, 3, 12, 12))
    x = torch.randn(6, 3, 12, 12, generator=torch.Generator().manual_seed(2))
    y = torch.randint(0, 10, (6,), generator=torch.Generator().manual_seed(3))
    model.eval()  # fixed BN statistics: both computations see the same function
    with torch.no_grad():
        for b in BITS:  # initialise the activation scales
            labkit.set_bits(model, b)(x)
    reference = copy.deepcopy(model)
    weights = {8: 0.5, 4: 1.0, 2: 2.0}
    losses = accumulate_multi_bit_gradients(model, x, y, weights)
    total = 0
    for b, lam in weights.items():
        labkit.set_bits(reference, b)
        total = total + lam * nn.functional.cross_entropy(reference(x), y)
    total.backward()
    assert set(losses) == set(BITS)
    for (name, p), (_, q) in zip(model.named_parameters(), reference.named_parameters()):
        if q.grad is None:
            assert p.grad is None or not p.grad.any(), name
            continue
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-7, msg=name)
    assert labkit.get_bits(model) == {name: 8 for name in labkit.quantized_layers(model)}
    with pytest.raises(ValueError, match="not quantized for"):
        accumulate_multi_bit_gradients(model, x, y, {6: 1.0})
