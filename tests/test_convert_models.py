"""quantize_model on every model of the zoo: what is quantized, signed inputs, padding, and real accuracy."""
import pytest
import torch

import labkit
from labkit.config import data_root
from labkit.convert import quantized_layers
from labkit.models import build_model
from labkit.nn import QConv2d, SwitchableBatchNorm2d

ZOO = ["resnet20", "preact_resnet20", "resnet18", "resnet50", "mobilenet_v2", "efficientnet_lite0"]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def conv_and_linear_count(model):
    return sum(isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) for m in model.modules())


@pytest.mark.parametrize("name", ZOO)
def test_every_layer_but_first_and_last_is_quantized_and_runs_at_every_bit(name):
    torch.manual_seed(0)
    model = build_model(name, pretrained=False) if name == "efficientnet_lite0" else build_model(name)
    size = 32 if "20" in name else 64
    quantized = labkit.quantize_model(model, example_input=torch.randn(2, 3, size, size))
    layers = quantized_layers(quantized)
    assert len(layers) == conv_and_linear_count(model) - 2
    convs_and_linears = [n for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    first, last = quantized.labkit_quant["float_layers"]
    assert first == convs_and_linears[0] and last in convs_and_linears and last not in layers
    assert not isinstance(quantized.get_submodule(first), QConv2d)
    switchable = [m for m in quantized.modules() if isinstance(m, SwitchableBatchNorm2d)]
    assert switchable and all(bn.source in layers for bn in switchable)
    x = torch.randn(2, 3, size, size)
    outputs = {}
    for bits in (8, 6, 4, 2):
        labkit.set_bits(quantized, bits)
        assert set(labkit.get_bits(quantized).values()) == {bits}
        assert all(bn.bits == bits for bn in switchable)
        outputs[bits] = quantized(x)
        assert torch.isfinite(outputs[bits]).all()
    assert not torch.equal(outputs[8], outputs[2])
    outputs[2].sum().backward()
    assert all(layer.weight.grad is not None for layer in layers.values())


def test_signed_activations_only_where_inputs_can_be_negative():
    quantized = labkit.quantize_model(build_model("mobilenet_v2"), example_input=torch.randn(2, 3, 64, 64))
    layers = quantized_layers(quantized)
    signed = {name for name, layer in layers.items() if layer.act_quantizer.signed}
    # MobileNetV2: the 1×1 expansion conv of a block reads the linear bottleneck (no ReLU): signed;
    # the depthwise and projection convs read ReLU6 outputs: unsigned.
    assert "features.2.conv.0.0" in signed
    assert "features.2.conv.1.0" not in signed and "features.2.conv.2" not in signed
    resnet = labkit.quantize_model(build_model("resnet18"), example_input=torch.randn(2, 3, 64, 64))
    assert not any(layer.act_quantizer.signed for layer in quantized_layers(resnet).values())


def test_efficientnet_static_same_padding_is_kept():
    model = build_model("efficientnet_lite0", pretrained=False).eval()
    quantized = labkit.quantize_model(model, bits=(16,), example_input=torch.randn(1, 3, 224, 224)).eval()
    padded = [layer for layer in quantized_layers(quantized).values() if layer.pre_padding is not None]
    assert padded, "the TF-style 'same' padding of strided EfficientNet convs must survive conversion"
    x = torch.randn(1, 3, 224, 224)
    labkit.set_bits(quantized, 16)
    quantized(x)  # initialise activation scales
    assert torch.allclose(quantized(x), model(x), atol=5e-2, rtol=5e-2)


def test_pretrained_efficientnet_keeps_its_accuracy_at_8_bits():
    """Post-training, no fine-tuning: INT8 weights and activations lose little of the FP32 top-1."""
    from labkit.data import imagenet_val_sample
    from labkit.evaluate import accuracy_per_bits, fixed_subset

    if not (data_root() / "imagenet-val-sample").is_dir():
        pytest.skip(f"needs {data_root() / 'imagenet-val-sample'} (set LABKIT_DATA)")
    images = fixed_subset(imagenet_val_sample("efficientnet"), 96)
    model = build_model("efficientnet_lite0").eval()
    fp32 = accuracy_per_bits(model, images, [32], batch_size=48)[32]
    quantized = labkit.quantize_model(model, example_input=torch.randn(2, 3, 224, 224))
    int8 = accuracy_per_bits(quantized, images, [8], batch_size=48)[8]
    assert fp32 > 70.0
    assert int8 >= fp32 - 5.0, (fp32, int8)
