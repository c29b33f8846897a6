"""Layer costs for the bit search (labkit.hasb.cost): MACs and weight counts against hand formulas, totals by hand."""
import pytest
import torch
from torch import nn

import labkit
from labkit.models import build_model
from labkit.hasb.cost import FLOAT_BITS, LayerCost, bitops, layer_costs, model_size_bits, total_bitops, total_size_bits


def conv_macs(c_in, c_out, k, h_out, w_out, groups=1):
    """C_out·H_out·W_out · (C_in/groups)·k² — one multiply-accumulate per weight per output position."""
    return c_out * h_out * w_out * (c_in // groups) * k * k


@pytest.mark.parametrize("conv, size, out_hw", [
    (nn.Conv2d(3, 16, 3, padding=1), 32, 32),                      # same padding
    (nn.Conv2d(16, 32, 3, stride=2, padding=1), 32, 16),           # stride 2: ⌊(32 + 2 − 3)/2⌋ + 1 = 16
    (nn.Conv2d(16, 32, 1, stride=2, bias=False), 32, 16),          # 1×1 downsample, no bias
    (nn.Conv2d(8, 16, 5, padding=0), 20, 16),                      # valid: 20 − 5 + 1 = 16
    (nn.Conv2d(16, 32, 3, padding=1, groups=4), 12, 12),           # grouped
    (nn.Conv2d(32, 32, 3, stride=2, padding=1, groups=32), 15, 8),  # depthwise: ⌊(15 + 2 − 3)/2⌋ + 1 = 8
])
def test_conv_macs_and_params_match_the_hand_formula(conv, size, out_hw):
    (cost,) = layer_costs(conv, (conv.in_channels, size, size)).values()
    k = conv.kernel_size[0]
    assert cost.macs == conv_macs(conv.in_channels, conv.out_channels, k, out_hw, out_hw, conv.groups)
    assert cost.params == conv.out_channels * (conv.in_channels // conv.groups) * k * k  # bias not counted


def test_linear_macs_per_row_and_per_image():
    linear = nn.Linear(64, 10)
    assert layer_costs(linear, (64,)) == {"": LayerCost(macs=640, params=640)}
    assert layer_costs(linear, torch.randn(5, 7, 64))[""].macs == 7 * 640  # 7 rows per image (a sequence)


def test_costs_are_per_image_whatever_the_batch_size():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 10))
    one, eight = layer_costs(model, torch.randn(1, 3, 16, 16)), layer_costs(model, torch.randn(8, 3, 16, 16))
    assert one == eight == {"0": LayerCost(conv_macs(3, 8, 3, 8, 8), 8 * 3 * 9), "3": LayerCost(512 * 10, 5120)}


def tiny_net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    )


def test_quantized_model_has_the_same_costs_and_the_probe_changes_nothing():
    model = tiny_net()
    quantized = labkit.quantize_model(model, example_input=torch.randn(2, 3, 16, 16))
    before = {k: v.clone() for k, v in quantized.state_dict().items()}
    costs = layer_costs(quantized, (3, 16, 16))
    assert costs == layer_costs(model, (3, 16, 16))
    assert costs == {
        "0": LayerCost(conv_macs(3, 8, 3, 16, 16), 8 * 3 * 9),
        "3": LayerCost(conv_macs(8, 16, 3, 8, 8), 16 * 8 * 9),
        "6": LayerCost(conv_macs(16, 16, 3, 8, 8, groups=16), 16 * 9),
        "11": LayerCost(160, 160),
    }
    after = quantized.state_dict()  # activation scales are initialised on first use: the probe ran on a copy
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_totals_count_unnamed_layers_at_32_bits():
    costs = {"first": LayerCost(100, 10), "a": LayerCost(1000, 50), "b": LayerCost(2000, 80), "last": LayerCost(30, 3)}
    allocation = {"a": 4, "b": 2}
    assert FLOAT_BITS == 32
    assert bitops(1000, 4) == 16000 and bitops(1000, 4, 8) == 32000
    assert model_size_bits(50, 4) == 200
    assert total_bitops(costs, allocation) == 100 * 32 * 32 + 1000 * 16 + 2000 * 4 + 30 * 32 * 32
    assert total_size_bits(costs, allocation) == 10 * 32 + 50 * 4 + 80 * 2 + 3 * 32
    assert total_bitops(costs, {**allocation, "first": 8, "last": 8}) == 100 * 64 + 16000 + 8000 + 30 * 64
    with pytest.raises(KeyError, match="no measured cost"):
        total_bitops(costs, {"missing": 4})


def test_resnet20_costs():
    model = build_model("resnet20")
    costs = layer_costs(model, (3, 32, 32))
    assert len(costs) == 20  # 19 convolutions (option-A shortcuts have none) and the classifier
    assert costs["conv1"] == LayerCost(conv_macs(3, 16, 3, 32, 32), 16 * 27)
    assert sum(c.params for c in costs.values()) == sum(m.weight.numel() for m in model.modules()
                                                        if isinstance(m, (nn.Conv2d, nn.Linear)))
    # three stages of 6 convolutions: 16 ch at 32², 32 ch at 16², 64 ch at 8² (first of a stage: stride 2)
    stage = [conv_macs(16, 16, 3, 32, 32)] * 6 + [conv_macs(16, 32, 3, 16, 16)] + [conv_macs(32, 32, 3, 16, 16)] * 5 \
        + [conv_macs(32, 64, 3, 8, 8)] + [conv_macs(64, 64, 3, 8, 8)] * 5
    assert sum(c.macs for c in costs.values()) == conv_macs(3, 16, 3, 32, 32) + sum(stage) + 64 * 10


def test_no_input_or_one_the_model_refuses_is_a_clear_error():
    from labkit.errors import ExampleInputError

    mnist_like = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 26 * 26, 10))  # only 1×28×28
    assert layer_costs(mnist_like, (1, 28, 28))["2"] == LayerCost(4 * 26 * 26 * 10, 4 * 26 * 26 * 10)
    for missing in (None, (), "3x32x32", (3, 0, 32)):
        with pytest.raises(ExampleInputError, match="example_input"):
            layer_costs(mnist_like, missing)
    with pytest.raises(ExampleInputError, match=r"shape \(1, 1, 32, 32\)"):
        layer_costs(mnist_like, (1, 32, 32))
    mnist_like.input_shape = (1, 28, 28)  # a shape the model states
    assert layer_costs(mnist_like) == layer_costs(mnist_like, (1, 28, 28))
    assert layer_costs(build_model("resnet20")) == layer_costs(build_model("resnet20"), (3, 32, 32))  # its arch record
