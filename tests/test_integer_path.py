"""The integer path of quantized layers (DESIGN.md: ``weight_codes()`` / ``quantized_weight()``; METHOD.md §1, §7).

For the nested methods (Double Rounding and the two truncation baselines) every lower precision must come from
the stored INT-h codes by :func:`labkit.quant.double_round` alone, and ``(codes + offset) × step`` must reproduce
the training fake-quant weight bit for bit, for either tie rule (the offset is 0 but for the centred truncation,
``method="floor"``, where it is the cell centre ``1/2 − 2^−(Δ+1)``). Also: bit switching of whole models
(``set_bits`` / ``get_bits``, switchable BN) and the baselines' codes.
"""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import labkit
from labkit.nn import QConv2d, QLinear, SwitchableBatchNorm2d
from labkit.quant import double_round, int_range

NESTED_METHODS = ("double_rounding", "floor", "floor_naive")
TIE_RULES = ("half_even", "half_up")
BIT_SETS = ((8, 6, 4, 2), (4, 3, 2))


def seeded_conv(seed, in_channels=4, out_channels=6, kernel=3, bias=True):
    torch.manual_seed(seed)
    conv = nn.Conv2d(in_channels, out_channels, kernel, padding=1, bias=bias)
    with torch.no_grad():
        flat = conv.weight.view(-1)
        flat[::7] *= 6.0  # outliers beyond the 3σ init range: clipped at the high bit
        flat[3::11] = 0.0
    return conv


def channel(step, like):
    return step.view(-1, *([1] * (like.dim() - 1)))


def effective_rule(method, rounding):
    return "floor" if method.startswith("floor") else rounding


def expected_offset(method, shift):
    """The cell centre of the centred truncation, from its definition: the mean of the 2^Δ INT-h codes a truncated
    code covers, minus the bottom one, in l-bit code units: ((2^Δ − 1) / 2) / 2^Δ."""
    return ((2 ** shift - 1) / 2) / 2 ** shift if method == "floor" else 0.0


def check_layer_integer_path(layer, method, rounding):
    """codes × step == quantized_weight bit for bit at every bit; lower codes == double_round(high codes)."""
    bit_set = layer.bit_set
    high = bit_set[0]
    rule = effective_rule(method, rounding)
    assert layer.weight_quantizer.rounding == rule
    layer.set_bits(high)
    high_codes, high_step = layer.weight_codes()
    for bits in bit_set:
        layer.set_bits(bits)
        codes, step = layer.weight_codes()
        offset = layer.weight_code_offset()
        weight = layer.quantized_weight()
        assert not codes.dtype.is_floating_point and codes.dtype != torch.bool, codes.dtype
        assert codes.shape == layer.weight.shape
        assert step.shape == offset.shape == (layer.weight.shape[0],)
        assert torch.equal(offset, torch.full_like(offset, expected_offset(method, high - bits))), f"bits={bits}"
        qmin, qmax = int_range(bits)
        assert int(codes.min()) >= qmin and int(codes.max()) <= qmax, f"bits={bits}"
        dequantized = (codes.to(weight.dtype) + channel(offset, weight)) * channel(step, weight)
        assert torch.equal(dequantized, weight.detach()), f"bits={bits}"
        assert torch.equal(codes, double_round(high_codes, high, bits, rule)), f"bits={bits}"
        # the tied scale: s_l = s_h · 2^Δ, exactly
        assert torch.equal(step, high_step * 2.0 ** (high - bits)), f"bits={bits}"
    # the high codes use the whole signed range, so the clipping and the full negative code are exercised
    assert int(high_codes.min()) == int_range(high)[0] and int(high_codes.max()) == int_range(high)[1]


@pytest.mark.parametrize("bit_set", BIT_SETS, ids=["8642", "432"])
@pytest.mark.parametrize("rounding", TIE_RULES)
@pytest.mark.parametrize("method", NESTED_METHODS)
def test_qconv2d_integer_path_matches_fake_quant(method, rounding, bit_set):
    layer = QConv2d.from_float(seeded_conv(1), bits=bit_set, method=method, rounding=rounding,
                               weight_init="reference")  # the 3σ init clips the outliers
    check_layer_integer_path(layer, method, rounding)


@pytest.mark.parametrize("bit_set", BIT_SETS, ids=["8642", "432"])
@pytest.mark.parametrize("rounding", TIE_RULES)
@pytest.mark.parametrize("method", NESTED_METHODS)
def test_qlinear_integer_path_matches_fake_quant(method, rounding, bit_set):
    torch.manual_seed(2)
    linear = nn.Linear(40, 7)
    with torch.no_grad():
        linear.weight.view(-1)[::5] *= 7.0
    layer = QLinear.from_float(linear, bits=bit_set, method=method, rounding=rounding, weight_init="reference")
    check_layer_integer_path(layer, method, rounding)


@pytest.mark.parametrize("rounding", TIE_RULES)
@pytest.mark.parametrize("method", NESTED_METHODS)
def test_integer_path_with_exact_ties_at_every_shift(method, rounding):
    """Power-of-two scales and weights on the INT-h grid: every second rounding sees exact .5 ties."""
    layer = QConv2d.from_float(seeded_conv(3, in_channels=64, out_channels=4, kernel=2), bits=(8, 6, 4, 2),
                               method=method, rounding=rounding)
    with torch.no_grad():
        layer.weight_quantizer.scale.copy_(2.0 ** -torch.arange(6, 10, dtype=torch.float32))
        codes = torch.arange(-128, 128, dtype=torch.float32).repeat(4, 1).view(4, 64, 2, 2)
        layer.weight.copy_(codes * channel(layer.weight_quantizer.scale, codes))
    check_layer_integer_path(layer, method, rounding)


@pytest.mark.parametrize("method", NESTED_METHODS)
def test_floor_method_ignores_the_tie_rule(method):
    even, up = (QConv2d.from_float(seeded_conv(4), bits=(8, 6, 4, 2), method=method, rounding=r) for r in TIE_RULES)
    differs = {}
    for bits in (8, 6, 4, 2):
        even.set_bits(bits)
        up.set_bits(bits)
        differs[bits] = not torch.equal(even.weight_codes()[0], up.weight_codes()[0])
    assert not differs[8]  # the stored codes never depend on the tie rule
    if method.startswith("floor"):
        assert not any(differs.values())
    else:  # the two tie rules of Double Rounding really differ somewhere at a lower bit
        assert any(differs.values())


def test_layer_forward_uses_the_integer_weights():
    layer = QConv2d.from_float(seeded_conv(5), bits=(8, 6, 4, 2))
    x = torch.relu(torch.randn(2, 4, 9, 9, generator=torch.Generator().manual_seed(0)))
    for bits in (8, 6, 4, 2):
        layer.set_bits(bits)
        codes, step = layer.weight_codes()
        expected = F.conv2d(layer.quantize_input(x), codes.float() * channel(step, codes), layer.bias, padding=1)
        assert torch.equal(layer(x), expected), bits


# ----------------------------------------------------------------------------- whole models


def small_net():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10),
    )
    with torch.no_grad():
        for index in (3, 6):
            net[index].weight.view(-1)[::7] *= 6.0  # outliers: clipped at the high bit
    return net


def quantized_net(bits=(8, 6, 4, 2), **options):
    return labkit.quantize_model(small_net(), bits, example_input=torch.randn(2, 3, 12, 12), **options)


@pytest.mark.parametrize("bit_set", BIT_SETS, ids=["8642", "432"])
@pytest.mark.parametrize("rounding", TIE_RULES)
@pytest.mark.parametrize("method", NESTED_METHODS)
def test_quantize_model_integer_path(method, rounding, bit_set):
    model = quantized_net(bit_set, method=method, rounding=rounding, weight_init="reference")  # clips outliers
    layers = labkit.quantized_layers(model)
    assert list(layers) == ["3", "6"]  # first and last layers stay FP
    for layer in layers.values():
        check_layer_integer_path(layer, method, rounding)
    for bits in bit_set:  # and the same through set_bits on the model
        labkit.set_bits(model, bits)
        for layer in layers.values():
            codes, step = layer.weight_codes()
            offset = channel(layer.weight_code_offset(), codes)
            assert torch.equal((codes.float() + offset) * channel(step, codes), layer.quantized_weight().detach())


def test_set_bits_and_get_bits_int_and_dict():
    model = quantized_net()
    bns = {name: m for name, m in model.named_modules() if isinstance(m, SwitchableBatchNorm2d)}
    assert {name: bn.source for name, bn in bns.items()} == {"4": "3", "7": "6"}
    assert isinstance(model[1], nn.BatchNorm2d)  # the BN after the FP first layer stays a plain BN
    assert labkit.get_bits(model) == {"3": 8, "6": 8}
    assert labkit.trained_bits(model) == (8, 6, 4, 2)

    assert labkit.set_bits(model, 4) is model
    assert labkit.get_bits(model) == {"3": 4, "6": 4}
    assert all(bn.bits == 4 for bn in bns.values())

    labkit.set_bits(model, {"6": 2})  # partial dict: "3" keeps 4
    assert labkit.get_bits(model) == {"3": 4, "6": 2}
    assert (bns["4"].bits, bns["7"].bits) == (4, 2)  # each BN follows its source layer

    labkit.set_bits(model, {"3": 8, "6": 6})
    assert labkit.get_bits(model) == {"3": 8, "6": 6}
    assert (bns["4"].bits, bns["7"].bits) == (8, 6)
    assert all(type(b) is int for b in labkit.get_bits(model).values())


def test_switchable_bn_uses_the_per_bit_statistics():
    model = quantized_net()
    x = torch.randn(4, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    bn = model[4]
    with torch.no_grad():
        for bits, per_bit in bn.per_bit.items():
            per_bit.bias.fill_(float(bits))  # make the per-bit BNs distinguishable
    model.eval()
    labkit.set_bits(model, {"3": 2})
    captured = {}
    handle = bn.register_forward_hook(lambda m, i, o: captured.update(out=o))
    model(x)
    handle.remove()
    expected = bn.per_bit["2"](model[3](model[2](model[1](model[0](x)))))
    assert torch.equal(captured["out"], expected)


# ----------------------------------------------------------------------------- baselines


BASELINES = [("per_bit_scale", (8, 6, 4, 2)), ("any_precision", (8, 6, 4, 2)), ("lsq", (4,)), ("lsq", (8,))]


@pytest.mark.parametrize("method,bit_set", BASELINES)
def test_baselines_forward_backward_and_codes(method, bit_set):
    model = quantized_net(bit_set, method=method)
    x = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(2))
    for bits in bit_set:
        labkit.set_bits(model, bits)
        model.zero_grad()
        out = model(x)
        out.square().mean().backward()
        assert torch.isfinite(out).all()
        for name, layer in labkit.quantized_layers(model).items():
            assert layer.weight.grad is not None and torch.isfinite(layer.weight.grad).all(), name
            assert layer.weight.grad.abs().sum() > 0, name
            for pname, p in layer.weight_quantizer.named_parameters():
                if p.grad is not None:
                    assert torch.isfinite(p.grad).all(), (name, pname)
            codes, step = layer.weight_codes()
            weight = layer.quantized_weight().detach()
            assert not codes.dtype.is_floating_point
            assert torch.equal(layer.weight_code_offset(), torch.zeros(layer.weight.shape[0]))
            dequantized = codes.to(weight.dtype) * channel(step, weight)
            if method == "any_precision":
                levels = 2 ** bits - 1
                assert int(codes.abs().max()) <= levels and bool((codes.remainder(2) == 1).all())  # odd codes
                torch.testing.assert_close(dequantized, weight, rtol=1e-5, atol=1e-6)
            else:
                qmin, qmax = int_range(bits)
                assert int(codes.min()) >= qmin and int(codes.max()) <= qmax
                assert torch.equal(dequantized, weight), (name, bits)
    if method == "per_bit_scale":  # each bit's own scales received gradient at its pass
        layer = labkit.quantized_layers(model)["3"]
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.weight_quantizer.parameters())


def test_lsq_method_rejects_a_bit_set():
    with pytest.raises(ValueError, match="single"):
        QConv2d.from_float(seeded_conv(0), bits=(8, 4), method="lsq")
