"""Issue 10: fair baselines and the details that departed from the paper (METHOD.md §1–3, §7, §9).

Each test checks against an independent reference (a brute force over every INT8 code in exact rational
arithmetic, a hand-computed case, or a clean re-computation) and fails on the code before the fix:

- item 1: ``method="floor"`` dequantizes the truncated codes at the centre of the INT-h cells they cover
  (``floor_naive`` keeps the bottom of the cell);
- item 5: the signed activation quantizer's percentile init centres its range on the data;
- item 6: the straight-through mask at l < h follows the stored INT-h code;
- item 7: a model made by ``load_int`` never evaluates stale stored codes after its float weights move.
"""
import math
from fractions import Fraction

import pytest
import torch
from torch import nn

import labkit
from labkit.quant import ActivationQuantizer, DoubleRoundingWeightQuantizer, TruncationWeightQuantizer
from labkit.storage import load_int, save_int

BITS = (8, 6, 4, 2)
ALL_INT8 = list(range(-128, 128))


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True, params=["auto", "fused", "recompute"])
def fake_quant_path(request):
    """Every reference test runs on the default path ("auto": the compiled kernels for training calls where a compiler
    works), on the eager fused path and on the recompute path (issue 11)."""
    from labkit.quant.lsq import DEFAULT_PATH, use_fake_quant_path

    use_fake_quant_path(request.param)
    yield request.param
    use_fake_quant_path(DEFAULT_PATH)


def with_scale(quantizer, scale):
    with torch.no_grad():
        quantizer.scale.copy_(scale)
    return quantizer


# ============================================================================ item 1: centred truncation


def cell_centre(q_h: int, shift: int) -> Fraction:
    """Brute force: the mean of every INT8 code that truncates to the same l-bit code as ``q_h``."""
    cell = [q for q in ALL_INT8 if q // 2 ** shift == q_h // 2 ** shift]
    assert len(cell) == 2 ** shift
    return Fraction(sum(cell), len(cell))


@pytest.mark.parametrize("low", [8, 6, 4, 2])
def test_floor_dequantizes_every_int8_code_at_the_centre_of_its_cell(low):
    """All 256 INT8 codes as weights (scale 2^-5, exact): the l-bit weight is the centre of the truncated cell."""
    scale = 2.0 ** -5
    quantizer = with_scale(TruncationWeightQuantizer(1, BITS), torch.tensor([scale]))
    weight = torch.tensor([ALL_INT8], dtype=torch.float32) * scale
    got = quantizer(weight, low)[0].tolist()
    shift = 8 - low
    expected = [float(cell_centre(q, shift) * Fraction(scale)) for q in ALL_INT8]
    assert got == expected
    # the closed form the docstring gives: (q_l + 1/2 − 2^−(Δ+1)) · s_h · 2^Δ
    closed = [float((Fraction(q // 2 ** shift) + Fraction(1, 2) - Fraction(1, 2 ** (shift + 1))) * 2 ** shift
                    * Fraction(scale)) for q in ALL_INT8]
    assert got == closed
    assert quantizer.centre(low) == float(Fraction(1, 2) - Fraction(1, 2 ** (shift + 1)))


@pytest.mark.parametrize("low", [6, 4, 2])
def test_floor_naive_keeps_the_bottom_of_the_cell(low):
    scale = 2.0 ** -5
    naive = labkit.quant.make_weight_quantizer("floor_naive", 1, BITS)
    with_scale(naive, torch.tensor([scale]))
    weight = torch.tensor([ALL_INT8], dtype=torch.float32) * scale
    shift = 8 - low
    assert naive(weight, low)[0].tolist() == [(q // 2 ** shift) * 2 ** shift * scale for q in ALL_INT8]


@pytest.mark.parametrize("low", [6, 4, 2])
def test_centred_truncation_is_unbiased_and_naive_truncation_is_not(low):
    """Weights spread uniformly over the INT8 range: centred truncation has mean error ~0 (like rounding), the naive
    one −(2^Δ − 1)/2 INT8 steps (the bias notebook 01 teaches)."""
    scale = 0.01
    weight = torch.linspace(-128.49, 127.49, 200_001, dtype=torch.float64)[None] * scale
    shift = 8 - low
    errors = {}
    for method in ("floor", "floor_naive", "double_rounding"):
        quantizer = labkit.quant.make_weight_quantizer(method, 1, BITS).double()
        with_scale(quantizer, torch.tensor([scale], dtype=torch.float64))
        errors[method] = float((quantizer(weight, low).detach() - weight).mean() / scale)
    assert abs(errors["floor"]) < 0.02 * 2 ** shift
    assert errors["floor_naive"] == pytest.approx(-(2 ** shift - 1) / 2, abs=0.02 * 2 ** shift)


def test_floor_integer_path_and_gradient_follow_the_centre():
    """codes = q_h >> Δ from the stored codes, offset = centre; the scale gradient is the LSQ term of the centred
    value ``(q + c)·2^Δ − v`` (autograd through an independent straight-through expression)."""
    torch.manual_seed(0)
    weight = (torch.randn(5, 40, dtype=torch.float64) * 0.05)
    scale = torch.full((5,), 0.002, dtype=torch.float64)
    quantizer = with_scale(TruncationWeightQuantizer(5, BITS).double(), scale)
    for low in (6, 4, 2):
        shift = 8 - low
        codes, step = quantizer.codes(weight, low)
        high = quantizer.high_codes(weight)
        assert torch.equal(codes, high >> shift)
        offset = quantizer.code_offset(low)
        assert torch.equal((codes.double() + offset[:, None]) * step[:, None], quantizer(weight, low))

        w = weight.clone().requires_grad_()
        s = scale.clone().requires_grad_()
        quantizer.scale.grad = None
        out = quantizer(w, low)
        grad_out = torch.randn_like(weight)
        (out * grad_out).sum().backward()
        # reference: s_l · (clip(ste(W / s_l)) + c), the code being the truncated stored code
        qmin, qmax = -(2 ** (low - 1)), 2 ** (low - 1) - 1
        g = 1.0 / math.sqrt(40 * qmax)
        s_scaled = scale + (s * g - (s * g).detach())
        s_low = (s_scaled * 2.0 ** shift)[:, None]
        v_low = w / s_low
        first = torch.round(weight / scale[:, None])
        code = torch.floor(first.clamp(-128, 127) / 2 ** shift)
        inside = (first >= -128) & (first <= 127)  # floor never clips at l beyond the INT-h clip
        ste = torch.where(inside, code + (v_low - v_low.detach()), code)
        ref = s_low * (ste + quantizer.centre(low))
        w_ref, s_ref_grad = torch.autograd.grad((ref * grad_out).sum(), (w, s))
        assert torch.equal(out.detach(), ref.detach())
        torch.testing.assert_close(quantizer.scale.grad, s_ref_grad, rtol=1e-10, atol=1e-12)


def test_methods_registry_names_both_truncations():
    from labkit.quant import WEIGHT_METHODS

    assert WEIGHT_METHODS["floor"][0] is TruncationWeightQuantizer
    assert WEIGHT_METHODS["floor_naive"] == (DoubleRoundingWeightQuantizer, "floor")


# ============================================================================ item 5: signed percentile init


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("low,high", [(-1.0, 5.0), (-7.0, 0.5), (2.0, 3.0)])
def test_signed_percentile_init_centres_the_range_on_asymmetric_data(bits, low, high):
    """Uniform data on [low, high]: after the init at most the 0.1/99.9 percentile tails (0.2 %) are clipped, and
    the representable range is the percentile range."""
    x = torch.linspace(low, high, 100_001)
    quantizer = ActivationQuantizer((bits,), signed=True, init="percentile")
    out = quantizer(x, bits).detach()
    s = float(quantizer.scale[str(bits)].detach())
    clipped = (out - x).abs() > s / 2 + 1e-6 * (high - low)
    assert float(clipped.float().mean()) <= 0.0021
    p_low, p_high = torch.quantile(x, torch.tensor([0.001, 0.999])).tolist()
    assert float(out.min()) == pytest.approx(p_low, abs=s * 0.51)
    assert float(out.max()) == pytest.approx(p_high, abs=s * 0.51)
    assert s == pytest.approx((p_high - p_low) / (2 ** bits - 1), rel=1e-5)


def test_unsigned_percentile_init_is_unchanged():
    """The unsigned variant keeps the authors' rule (p99.9 − max(p0.1, 0)) / (2^b − 1) (METHOD.md §9), no offset."""
    x = torch.linspace(-1.0, 4.0, 10_001)
    quantizer = ActivationQuantizer((8,), init="percentile")
    quantizer(x, 8)
    p_high = float(torch.quantile(x, 0.999))
    assert float(quantizer.scale["8"].detach()) == pytest.approx(p_high / 255, rel=1e-5)
    assert quantizer.offset is None


# ============================================================================ item 6: STE mask of the stored code


def reference_ste_mask(v: Fraction, low: int, rule: str) -> bool:
    """Independent rule: the gradient passes iff the stored INT8 code ``clip(round(v))`` is not saturated and the
    l-bit code derived from it lies inside the l-bit range before its final clip."""
    q = round(v)  # Fraction.__round__: half to even, like torch.round
    if q < -128 or q > 127:
        return False
    x = Fraction(q, 2 ** (8 - low))
    code = round(x) if rule == "half_even" else math.floor(x + Fraction(1, 2)) if rule == "half_up" else math.floor(x)
    return -(2 ** (low - 1)) <= code <= 2 ** (low - 1) - 1


def test_ste_mask_hand_computed_8_to_2():
    """s_h = 1. round(v) = −129, −150, −160 are saturated INT8 codes (stored as −128): 0 at 2 bits as at 8 bits
    (the old mask let them through: −129/64 → −2 is inside the 2-bit range). −128 and −128.4 store −128: 1."""
    v = torch.tensor([[-129.0, -150.0, -160.0, -128.0, -128.4, 127.0, 128.0, 0.3]], requires_grad=True)
    quantizer = with_scale(DoubleRoundingWeightQuantizer(1, BITS), torch.ones(1))
    expected = {8: [0, 0, 0, 1, 1, 1, 0, 1], 2: [0, 0, 0, 1, 1, 0, 0, 1]}  # 127/64 → 2 is clipped at 2 bits
    for low, mask in expected.items():
        v.grad = None
        quantizer(v, low).sum().backward()
        assert v.grad[0].tolist() == mask, low


@pytest.mark.parametrize("rule", ["half_even", "half_up", "floor"])
@pytest.mark.parametrize("low", [6, 4, 2])
def test_ste_mask_and_scale_gradient_follow_the_stored_code(rule, low):
    """Brute force over v = W/s_h on a grid of 1/8 across and beyond the INT8 range (one channel per weight):
    weight gradient = the independent mask; scale gradient at a saturated code = the bound −128 (or ≥ the top),
    exactly as at 8 bits."""
    v = torch.arange(-200 * 8, 200 * 8 + 1, dtype=torch.float64) / 8
    weight = v[:, None].clone().requires_grad_()
    quantizer = with_scale(DoubleRoundingWeightQuantizer(len(v), BITS, rounding=rule).double(),
                           torch.ones(len(v), dtype=torch.float64))
    quantizer(weight, low).sum().backward()
    expected = torch.tensor([reference_ste_mask(Fraction(int(k), 8), low, rule)
                             for k in torch.arange(-200 * 8, 200 * 8 + 1)], dtype=torch.float64)
    assert torch.equal(weight.grad[:, 0], expected)
    qmax = 2 ** (low - 1) - 1
    g = 1.0 / math.sqrt(qmax)
    below = torch.round(v) < -128
    assert torch.equal(quantizer.scale.grad[below], torch.full((int(below.sum()),), -128.0 * g, dtype=torch.float64))


def test_reference_grad_mode_keeps_the_authors_mask():
    """grad_mode="reference" reproduces the authors' code (METHOD.md §9): its mask is the unrounded x / s_l against
    the l-bit bounds, so −129 (x_l = −2.02, rounds to −2) passes there; documented, not changed."""
    v = torch.tensor([[-129.0]], requires_grad=True)
    quantizer = with_scale(DoubleRoundingWeightQuantizer(1, BITS, grad_mode="reference"), torch.ones(1))
    quantizer(v, 2).sum().backward()
    assert v.grad.item() == 1.0


# ============================================================================ item 7: no stale stored codes


def small_net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10),
    )


def fake_quant_outputs(model, x, bits):
    """The reference: the same model with every stored code removed, i.e. quantizing its current float weights."""
    import copy

    reference = copy.deepcopy(model)
    for layer in labkit.quantized_layers(reference).values():
        layer.weight_quantizer.stored_codes = None
    reference.eval()
    with torch.no_grad():
        return {b: labkit.set_bits(reference, b)(x) for b in bits}


@pytest.mark.parametrize("method", ["double_rounding", "floor"])
def test_load_int_model_fine_tuned_evaluates_its_current_weights(tmp_path, method):
    fp32 = small_net()
    model = labkit.quantize_model(fp32, BITS, method=method, example_input=torch.randn(2, 3, 12, 12))
    x = torch.randn(8, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    model.train()
    for b in BITS:  # initialise activation scales and BN statistics
        labkit.set_bits(model, b)(x)
    path = save_int(model, tmp_path / "m.safetensors")
    loaded = load_int(path, model=fp32)
    layers = labkit.quantized_layers(loaded)
    assert all(layer.weight_quantizer.stored_codes is not None for layer in layers.values())
    before = {name: layer.weight_quantizer.stored_codes.clone() for name, layer in layers.items()}
    with torch.no_grad():  # evaluating keeps the integer path (nothing moved)
        for b in BITS:
            labkit.set_bits(loaded, b)(x)
    assert all(layer.weight_quantizer.stored_codes is not None for layer in layers.values())

    # a short fine-tune
    loaded.train()
    optimizer = torch.optim.SGD(loaded.parameters(), lr=0.05)
    target = torch.randint(0, 10, (8,), generator=torch.Generator().manual_seed(2))
    for step in range(4):
        labkit.set_bits(loaded, BITS[step % len(BITS)])
        optimizer.zero_grad()
        nn.functional.cross_entropy(loaded(x), target).backward()
        optimizer.step()
    loaded.eval()
    moved = sum(int((layer.weight_quantizer.high_codes(layer.weight) != before[name]).sum())
                for name, layer in layers.items())
    assert moved > 0, "the fine-tune should change some INT8 codes"
    expected = fake_quant_outputs(loaded, x, BITS)
    with torch.no_grad():
        for b in BITS:
            assert torch.equal(labkit.set_bits(loaded, b)(x), expected[b]), b
    for name, layer in layers.items():  # the integer path too: codes of the current weights
        quantizer = layer.weight_quantizer
        fresh = torch.round(layer.weight.detach() / quantizer.scale.detach()[:, None, None, None]).clamp(-128, 127)
        assert torch.equal(quantizer.high_codes(layer.weight).float(), fresh), name


def test_load_int_model_keeps_its_integer_path_until_it_trains(tmp_path):
    """Evaluating (with or without gradients) and BN re-estimation (train mode, no gradients) keep the stored codes:
    the loaded model stays integer-only; only a training forward hands the model over to its float weights."""
    fp32 = small_net()
    model = labkit.quantize_model(fp32, BITS, example_input=torch.randn(2, 3, 12, 12))
    x = torch.randn(4, 3, 12, 12, generator=torch.Generator().manual_seed(3))
    model.train()
    for b in BITS:
        labkit.set_bits(model, b)(x)
    loaded = load_int(save_int(model, tmp_path / "m.safetensors"), model=fp32)
    quantizers = [layer.weight_quantizer for layer in labkit.quantized_layers(loaded).values()]
    labkit.set_bits(loaded, 4)(x)  # eval mode, gradients enabled
    loaded.train()
    with torch.no_grad():
        loaded(x)  # BN re-estimation
    assert all(q.stored_codes is not None for q in quantizers)
    loaded(x)  # a training forward
    assert all(q.stored_codes is None for q in quantizers)


# ============================================================================ item 2: per-bit scale inits


def test_per_bit_scales_start_at_lsq_rule_of_their_own_bit_width():
    """Gaussian weights: LSQ's rule gives the 2-bit step 2·mean|W| ≈ 1.596σ, so the codes at 0 are |W| < s/2, a
    fraction erf(0.798/√2) ≈ 0.575 (the max rule put ~95 % there: its 2-bit step is max|W| ≈ 4σ)."""
    torch.manual_seed(0)
    weight = torch.randn(16, 4096)
    quantizer = labkit.quant.make_weight_quantizer("per_bit_scale", 16, BITS)
    quantizer.reset_scale(weight)
    for bits in BITS:
        qmax = 2 ** (bits - 1) - 1
        expected = 2 * weight.abs().mean(dim=1) / math.sqrt(qmax)
        torch.testing.assert_close(quantizer.scale[str(bits)].detach(), expected)
    codes, _ = quantizer.codes(weight, 2)
    zero = float((codes == 0).float().mean())
    s = float(2 * math.sqrt(2 / math.pi))  # 2·E|Z|, in units of σ
    assert zero == pytest.approx(math.erf(s / 2 / math.sqrt(2)), abs=0.01)


def test_dedicated_lsq_starts_at_lsq_rule_and_double_rounding_keeps_max():
    torch.manual_seed(1)
    weight = torch.randn(4, 300)
    lsq = labkit.quant.make_weight_quantizer("lsq", 4, (2,))
    lsq.reset_scale(weight)
    torch.testing.assert_close(lsq.scale.detach(), 2 * weight.abs().mean(dim=1))
    dr = labkit.quant.make_weight_quantizer("double_rounding", 4, BITS)
    dr.reset_scale(weight)
    torch.testing.assert_close(dr.scale.detach(), weight.abs().amax(dim=1) / 127)
    assert dr.init == "max" and lsq.init == "lsq"


@pytest.mark.parametrize("bits", [2, 4])
def test_mse_init_is_the_least_squares_step_up_to_its_grid(bits):
    """Against a dense brute force (10,000 steps): the chosen step's squared error is within 0.1 % of the best."""
    from labkit.quant.weight import mse_scale_init

    torch.manual_seed(bits)
    weight = torch.randn(3, 500, dtype=torch.float64) * torch.tensor([[0.01], [0.1], [1.0]])
    weight[:, 0] *= 8  # an outlier per channel
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1

    def error(w, s):
        return float(((w / s).round().clamp(qmin, qmax) * s - w).square().sum())

    got = mse_scale_init(weight, bits)
    for c in range(3):
        top = float(weight[c].abs().max()) / qmax
        best = min(error(weight[c], top * k / 10_000) for k in range(1, 10_001))
        assert error(weight[c], float(got[c])) <= best * 1.001


def test_weight_init_auto_is_the_plan_default_and_rejects_unknown_rules():
    model = labkit.quantize_model(small_net(), BITS, example_input=torch.randn(2, 3, 12, 12))
    assert model.labkit_quant["weight_init"] == "auto"
    with pytest.raises(ValueError, match="weight_init"):
        labkit.quantize_model(small_net(), BITS, example_input=torch.randn(2, 3, 12, 12), weight_init="median")
