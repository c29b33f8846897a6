"""labkit.int_switch: the one-pass INT8 → b-bit switch equals double_round bit for bit (all 256 codes, every
bit-width, every tie rule, compiled and fallback paths), and CodeBank switches every layer of a model at once."""
from __future__ import annotations

import pytest
import torch

import labkit
from labkit import int_switch
from labkit.errors import BitWidthError
from labkit.models import build_model
from labkit.quant.rounding import ROUNDING_RULES, double_round

ALL_CODES = torch.arange(-128, 128, dtype=torch.int8)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])  # scripts/gpu_check.sh runs the cuda cases


def hand_rounded(code: int, shift: int, rounding: str, to_bits: int) -> int:
    """Eq. 2 on one code with exact rational arithmetic: an independent reference for double_round itself."""
    from fractions import Fraction

    value = Fraction(code, 2 ** shift)
    if rounding == "floor":
        rounded = value.numerator // value.denominator
    elif rounding == "half_up":
        rounded = (value + Fraction(1, 2)).numerator // (value + Fraction(1, 2)).denominator
    else:
        rounded = round(value)  # Python rounds a Fraction half to even
    return max(-(2 ** (to_bits - 1)), min(2 ** (to_bits - 1) - 1, rounded))


@pytest.fixture(params=["compiled", "fallback"])
def path(request):
    int_switch.use_compiled_switch(request.param == "compiled")
    yield request.param
    int_switch.use_compiled_switch(True)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("rounding", ROUNDING_RULES)
def test_all_256_codes_every_bit_width_equal_double_round(path, rounding, device):
    codes = ALL_CODES.repeat(4).reshape(16, 64).to(device)  # 1024 codes: whole int32 words, a 2-D weight-like shape
    for to_bits in range(2, 9):
        got = int_switch.switch_int8(codes, to_bits, rounding)
        assert got.dtype == torch.int8 and got.shape == codes.shape and got.device == codes.device
        assert torch.equal(got, double_round(codes, 8, to_bits, rounding)), (to_bits, rounding)
        got = got.cpu()
        expected = [hand_rounded(c, 8 - to_bits, rounding, to_bits) for c in range(-128, 128)]
        assert got.reshape(-1)[:256].tolist() == expected, (to_bits, rounding)
    if path == "compiled":
        assert int_switch.compiled_switch_error() is None  # the word kernel ran, not the fallback


@pytest.mark.parametrize("rounding", ROUNDING_RULES)
def test_odd_lengths_views_and_out_buffers(rounding):
    codes = torch.randint(-128, 128, (3, 7, 5), dtype=torch.int8)  # 105 codes: not whole words
    assert torch.equal(int_switch.switch_int8(codes, 3, rounding), double_round(codes, 8, 3, rounding))
    flat = torch.randint(-128, 128, (4097,), dtype=torch.int8)
    view = flat[1:]  # 4096 codes starting one byte into the storage: cannot be read as int32 words
    assert torch.equal(int_switch.switch_int8(view, 4, rounding), double_round(view, 8, 4, rounding))
    transposed = flat[:4096].reshape(64, 64).t()  # not contiguous
    assert torch.equal(int_switch.switch_int8(transposed, 5, rounding), double_round(transposed, 8, 5, rounding))
    out = torch.full((64, 64), 99, dtype=torch.int8)
    square = flat[:4096].reshape(64, 64).clone()
    returned = int_switch.switch_int8(square, 2, rounding, out=out)
    assert returned is out and torch.equal(out, double_round(square, 8, 2, rounding))
    assert torch.equal(int_switch.switch_int8(square, 8, rounding), square)  # Δ = 0: a copy


def test_lower_stored_precisions_go_through_double_round():
    codes = torch.arange(-32, 32, dtype=torch.int8)  # INT6 codes kept in int8
    for to_bits in (2, 3, 4, 5, 6):
        assert torch.equal(int_switch.switch_int8(codes, to_bits, from_bits=6), double_round(codes, 6, to_bits))


def test_bad_input_is_one_clear_error():
    with pytest.raises(TypeError, match="int8 codes"):
        int_switch.switch_int8(torch.zeros(8, dtype=torch.int32), 4)
    with pytest.raises(TypeError, match="int8 codes"):
        int_switch.switch_int8(torch.zeros(8), 4)
    with pytest.raises(BitWidthError):
        int_switch.switch_int8(torch.zeros(8, dtype=torch.int8), 1)
    with pytest.raises(ValueError, match="above from_bits"):
        int_switch.switch_int8(torch.zeros(8, dtype=torch.int8), 8, from_bits=6)
    with pytest.raises(ValueError, match="tie rule"):
        int_switch.switch_int8(torch.zeros(8, dtype=torch.int8), 4, rounding="nearest")
    with pytest.raises(ValueError, match="out must be an int8 tensor of shape"):
        int_switch.switch_int8(torch.zeros(8, dtype=torch.int8), 4, out=torch.zeros(4, dtype=torch.int8))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("rounding", ["half_even", "half_up"])
def test_code_bank_switches_every_layer_like_each_layer_alone(tmp_path, rounding, device):
    torch.manual_seed(0)
    model = labkit.quantize_model(build_model("resnet20"), bits=(8, 6, 4, 2), rounding=rounding)
    loaded = labkit.load_int(labkit.save_int(model, tmp_path / "m.safetensors")).to(device)
    bank = int_switch.CodeBank.from_model(loaded)
    layers = labkit.quantized_layers(loaded)
    assert len(bank) == len(layers) and bank.rounding == rounding
    assert bank.numel == sum(layer.weight.numel() for layer in layers.values())
    for bits in (8, 6, 4, 2, 3):
        switched = bank.switch(bits)
        for name, layer in layers.items():
            stored = layer.weight_quantizer.stored_codes
            assert switched[name].shape == stored.shape
            assert torch.equal(switched[name], double_round(stored, 8, bits, rounding)), (name, bits)
        if bits in (8, 6, 4, 2):  # the codes the model itself derives at that bit-width
            labkit.set_bits(loaded, bits)
            name, layer = next(iter(layers.items()))
            assert torch.equal(switched[name], layer.weight_codes()[0])


def test_code_bank_refuses_what_it_cannot_hold():
    with pytest.raises(ValueError, match="at least one"):
        int_switch.CodeBank({})
    with pytest.raises(TypeError, match="int8"):
        int_switch.CodeBank({"a": torch.zeros(4, dtype=torch.int16)})
    with pytest.raises(ValueError, match="no quantized layers"):
        int_switch.CodeBank.from_model(build_model("resnet20"))
    with pytest.raises(ValueError, match="stored INT8 codes"):
        int_switch.CodeBank.from_model(labkit.quantize_model(build_model("resnet20"), bits=(6, 4)))
