"""Transitional BN predecessors follow the data flow (issue 10 item 8; METHOD.md §6 step 3, paper Alg. A.3).

The expected maps are written from the architectures, by hand: in a residual block each conv of the residual
branch reads the previous one, the first reads the block input, a downsample conv reads the block input too,
and the next block reads the sum, whose main path is the branch's last conv. The stem conv is FP32, so whatever
reads its output has no quantized predecessor (None). Execution order gets torchvision ResNets wrong: the
downsample conv runs after conv2.
"""
import pytest
import torch
import torchvision
from torch import nn

import labkit
from labkit.errors import ExampleInputError
from labkit.hasb.graph import layer_predecessors, pointwise_convs
from labkit.models import build_model
from labkit.nn import TransitionalBatchNorm2d

RESNET18 = {  # torchvision ResNet-18, written out in full
    "layer1.0.conv1": None, "layer1.0.conv2": "layer1.0.conv1",
    "layer1.1.conv1": "layer1.0.conv2", "layer1.1.conv2": "layer1.1.conv1",
    "layer2.0.conv1": "layer1.1.conv2", "layer2.0.conv2": "layer2.0.conv1", "layer2.0.downsample.0": "layer1.1.conv2",
    "layer2.1.conv1": "layer2.0.conv2", "layer2.1.conv2": "layer2.1.conv1",
    "layer3.0.conv1": "layer2.1.conv2", "layer3.0.conv2": "layer3.0.conv1", "layer3.0.downsample.0": "layer2.1.conv2",
    "layer3.1.conv1": "layer3.0.conv2", "layer3.1.conv2": "layer3.1.conv1",
    "layer4.0.conv1": "layer3.1.conv2", "layer4.0.conv2": "layer4.0.conv1", "layer4.0.downsample.0": "layer3.1.conv2",
    "layer4.1.conv1": "layer4.0.conv2", "layer4.1.conv2": "layer4.1.conv1",
}


def residual_expected(blocks_per_stage, convs_per_block, downsample_blocks):
    """The map of a ResNet whose stages hold ``blocks_per_stage`` blocks of ``convs_per_block`` convs
    (``layer{s}.{b}.conv{i}``); ``downsample_blocks``: the (stage, block) pairs with a ``downsample.0`` conv."""
    expected, block_input = {}, None  # the stem is FP32
    for stage, count in enumerate(blocks_per_stage, start=1):
        for block in range(count):
            previous = block_input
            for i in range(1, convs_per_block + 1):
                expected[f"layer{stage}.{block}.conv{i}"] = previous
                previous = f"layer{stage}.{block}.conv{i}"
            if (stage, block) in downsample_blocks:
                expected[f"layer{stage}.{block}.downsample.0"] = block_input
            block_input = previous
    return expected


def mobilenet_v2_expected():
    """torchvision MobileNetV2: features.0 (FP32 stem), 17 inverted residuals (t, c, n, s), features.18 (1×1)."""
    expected, previous, index = {}, None, 1
    for t, _, n, _ in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                       (6, 320, 1, 1)):
        for _ in range(n):
            block = f"features.{index}.conv"
            convs = [f"{block}.0.0", f"{block}.1"] if t == 1 else [f"{block}.0.0", f"{block}.1.0", f"{block}.2"]
            for conv in convs:  # expand (t > 1), depthwise, project; the sum's main path is the project conv
                expected[conv] = previous
                previous = conv
            index += 1
    expected["features.18.0"] = previous
    return expected


CASES = {
    "resnet18": (lambda: torchvision.models.resnet18(), RESNET18),
    "resnet50": (lambda: torchvision.models.resnet50(),
                 residual_expected((3, 4, 6, 3), 3, {(1, 0), (2, 0), (3, 0), (4, 0)})),
    "mobilenet_v2": (lambda: torchvision.models.mobilenet_v2(), mobilenet_v2_expected()),
    "resnet20": (lambda: build_model("resnet20"), residual_expected((3, 3, 3), 2, set())),
}


def quantized(name):
    build, expected = CASES[name]
    torch.manual_seed(0)
    example = torch.randn(1, 3, 32, 32)
    return labkit.quantize_model(build(), (8, 4), example_input=example), example, expected


@pytest.mark.parametrize("name", list(CASES))
def test_predecessors_follow_the_data_flow(name):
    model, example, expected = quantized(name)
    assert set(labkit.quantized_layers(model)) == set(expected)
    assert layer_predecessors(model, method="fx") == expected
    assert layer_predecessors(model, method="hooks", example_input=example) == expected


@pytest.mark.parametrize("name", list(CASES))
def test_transitional_batch_norms_are_keyed_on_the_data_flow_predecessor(name):
    model, _, expected = quantized(name)
    labkit.to_supernet(model)
    norms = {m.source: m.predecessor for m in model.modules() if isinstance(m, TransitionalBatchNorm2d)}
    assert norms == expected  # every quantized layer of these models is followed by a batch norm
    if name == "resnet18":
        assert model.get_submodule("layer2.0.downsample.1").predecessor == "layer1.1.conv2"
        assert model.get_submodule("layer2.1.bn1").predecessor == "layer2.0.conv2"


def test_the_predecessor_bits_select_the_transitional_batch_norm():
    model, _, _ = quantized("resnet18")
    labkit.to_supernet(model)
    labkit.set_bits(model, 8)
    labkit.set_bits(model, {"layer1.1.conv2": 4, "layer2.0.conv2": 4})
    assert model.get_submodule("layer2.0.downsample.1").previous_bits == 4  # reads layer1.1.conv2's output
    assert model.get_submodule("layer2.0.downsample.1").bits == 8
    assert model.get_submodule("layer2.1.bn1").previous_bits == 4  # reads the sum: main path layer2.0.conv2


class DataDependent(nn.Module):
    """fx cannot trace the ``if`` on a tensor's value; the residual's main path is ``b`` (two layers deep)."""

    def __init__(self):
        super().__init__()
        self.stem, self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 1)
        self.side, self.c, self.fc = nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 3, padding=1), nn.Linear(4, 2)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        y = self.b(torch.relu(self.a(x)))
        if float(y.mean()) > -1e9:  # always true, but data-dependent
            y = y + self.side(x)
        y = torch.cat([self.side(x), y], dim=1)[:, 4:]  # cat of a 1-deep and a 2-deep operand: the deeper wins
        return self.fc(self.c(y).mean((2, 3)))


def test_an_untraceable_model_uses_a_real_forward_pass():
    model = DataDependent()
    layers = ["a", "b", "side", "c"]
    expected = {"a": None, "b": "a", "side": None, "c": "b"}
    with pytest.raises(labkit.errors.LabkitError, match="method='hooks'"):
        layer_predecessors(model, layers, method="fx")
    with pytest.raises(ExampleInputError, match="example_input="):
        layer_predecessors(model, layers)
    assert layer_predecessors(model, layers, example_input=torch.randn(2, 3, 8, 8)) == expected
    model.input_shape = (3, 8, 8)  # a shape the model states: no example input needed
    assert layer_predecessors(model, layers) == expected
    with pytest.raises(ExampleInputError, match=r"shape \(2, 3\)"):
        layer_predecessors(model, layers, example_input=torch.randn(2, 3))


def test_pointwise_convs_are_the_1x1_convolutions():
    model, _, _ = quantized("resnet18")
    assert pointwise_convs(model) == ["layer2.0.downsample.0", "layer3.0.downsample.0", "layer4.0.downsample.0"]
    assert pointwise_convs(build_model("resnet20")) == []
