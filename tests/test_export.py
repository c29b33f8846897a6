"""ONNX QDQ export of one precision (labkit.export): the graph against the PyTorch model in onnxruntime.

References are independent of the exporter: the stored INT8 codes second-rounded with numpy (METHOD.md
Eq. 2, round half to even), the model's own dequantized weights (Eq. 3) and its forward pass.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from onnx import numpy_helper
from torch import nn

import labkit
from labkit.cli import main
from labkit.errors import BitWidthError, LabkitError
from labkit.export import export_onnx, export_view, qdq_summary, verify_onnx

CHECKPOINT = Path(__file__).resolve().parents[1] / "data" / "checkpoints" / "cifar10-resnet20.safetensors"
LAYERS = 18  # quantized convolutions of ResNet-20 (first conv and fc stay FP32)


@pytest.fixture(scope="module")
def resnet():
    return labkit.load_int(CHECKPOINT)


@pytest.fixture(scope="module")
def images():
    """128 CIFAR-10 test images (with labels) when the data is there, else 128 seeded random inputs."""
    from labkit.config import data_root

    if (data_root() / "cifar10").is_dir():
        from labkit.data import cifar10

        test = cifar10("test")
        pairs = [test[i] for i in range(0, 1280, 10)]
        return [(torch.stack([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs]))]
    return [torch.randn(128, 3, 32, 32, generator=torch.Generator().manual_seed(0))]


def initializers(path) -> dict[str, np.ndarray]:
    return {init.name: numpy_helper.to_array(init) for init in onnx.load(str(path)).graph.initializer}


ONNX_TYPE = {"int8": onnx.TensorProto.INT8, "int4": onnx.TensorProto.INT4, "int2": onnx.TensorProto.INT2}
TYPE_RANGE = {"int8": (-128, 127), "int4": (-8, 7), "int2": (-2, 1)}


def expected_weight_type(bits: int, weight_sign: str = "keep") -> str:
    """The narrowest ONNX type of the l-bit codes: signed l-bit range, or its mirror (one higher) when folded."""
    highest = 2 ** (bits - 1) - (0 if weight_sign == "fold" else 1)
    return next(kind for kind in ("int2", "int4", "int8") if highest <= TYPE_RANGE[kind][1])


def unpack_codes(init) -> np.ndarray:
    """Signed integers from an initializer's raw bytes by hand: ONNX packs INT4 two and INT2 four to a byte,
    lowest bits first, two's complement (onnx IR spec, "4-bit/2-bit integer types")."""
    raw = np.frombuffer(init.raw_data, np.uint8)
    width = {onnx.TensorProto.INT8: 8, onnx.TensorProto.INT4: 4, onnx.TensorProto.INT2: 2}[init.data_type]
    count = int(np.prod(init.dims))
    per_byte = 8 // width
    fields = np.stack([(raw >> (width * k)) & ((1 << width) - 1) for k in range(per_byte)], axis=1).reshape(-1)
    fields = fields[:count].astype(np.int64)
    return np.where(fields >= 1 << (width - 1), fields - (1 << width), fields).reshape(tuple(init.dims))


def second_round_numpy(stored: np.ndarray, bits: int) -> np.ndarray:
    """Eq. 2 by numpy: clip(round_half_even(q_8 / 2^(8-l)), -2^(l-1), 2^(l-1) - 1)."""
    return np.clip(np.round(stored.astype(np.float64) / 2.0 ** (8 - bits)), -(2 ** (bits - 1)), 2 ** (bits - 1) - 1)


def check_graph(path, bits: dict[str, int], model, weight_sign: str = "keep", kinds: str | None = None) -> None:
    """QDQ node counts, and int8 initializers equal to the model's l-bit codes (Eq. 2) and steps (Eq. 3)."""
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph)
    summary = qdq_summary(path)
    narrow = sum(b < 8 for b in bits.values())
    assert summary["quantize_linear"] == len(bits)  # one per quantized activation
    assert summary["dequantize_linear"] == 2 * len(bits)  # activation + weight
    assert summary["clip"] == narrow  # b < 8 narrows the 8-bit type exactly
    assert sum(summary["weight_types"].values()) == len(bits)
    assert summary["bits"] == bits
    tensors = initializers(path)
    stored = {init.name: init for init in graph.graph.initializer}
    layers = labkit.quantized_layers(model)
    for name, b in bits.items():
        kind = kinds or expected_weight_type(b, weight_sign)
        assert stored[f"{name}.weight_codes"].data_type == ONNX_TYPE[kind]
        assert summary["weight_type_of_layer"][name] == kind
        codes, step = unpack_codes(stored[f"{name}.weight_codes"]), tensors[f"{name}.weight_step"]
        np.testing.assert_array_equal(codes, tensors[f"{name}.weight_codes"].astype(np.int64))  # onnx reads the same
        assert step.dtype == np.float32
        quantizer = layers[name].weight_quantizer
        expected_codes = second_round_numpy(quantizer.stored_codes.numpy(), b)
        expected_step = quantizer.scale.detach().numpy() * np.float32(2.0 ** (8 - b))
        if weight_sign == "fold":
            negative = (expected_step < 0).reshape(-1, 1, 1, 1)
            expected_codes, expected_step = np.where(negative, -expected_codes, expected_codes), np.abs(expected_step)
            assert (step > 0).all() and codes.min() >= -(2 ** (b - 1)) and codes.max() <= 2 ** (b - 1)
        else:
            assert codes.min() >= -(2 ** (b - 1)) and codes.max() <= 2 ** (b - 1) - 1
        np.testing.assert_array_equal(codes.astype(np.int64), expected_codes.astype(np.int64))
        np.testing.assert_array_equal(step, expected_step)
        assert float(tensors[f"{name}.act_scale"]) == float(layers[name].act_quantizer.scale[str(b)].detach())


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_uniform_precision_matches_pytorch(resnet, images, tmp_path, bits):
    before = labkit.get_bits(resnet)
    path = export_onnx(resnet, tmp_path / f"resnet20-w{bits}.onnx", bits=bits)
    assert labkit.get_bits(resnet) == before  # the model keeps its own precision
    check_graph(path, {name: bits for name in labkit.quantized_layers(resnet)}, resnet)
    result = verify_onnx(resnet, path, images, bits=bits)
    assert result["images"] == 128 and result["bits"] == bits
    assert result["top1_agreement"] >= 0.99
    assert result["mean_abs_diff"] < 0.01 * result["max_abs_logit"]
    assert result["matching_images"] >= 0.5  # most images: no code moved by float noise anywhere
    # every activation code of the graph is the lab's clip(round(x / s_b)) of the same input (Eq. 4)
    assert result["activation_codes"] > 10**6
    assert result["activation_code_mismatches"] <= 1e-6 * result["activation_codes"]
    if "onnx_top1" in result:
        assert abs(result["onnx_top1"] - result["torch_top1"]) <= 0.01


def test_low_bit_files_shrink(resnet, tmp_path):
    """INT4 / INT2 initializers (opset 21 / 25): weight bytes 1/2 and 1/4 of the 8-bit export's, files smaller."""
    summaries = {bits: qdq_summary(export_onnx(resnet, tmp_path / f"w{bits}.onnx", bits=bits)) for bits in (8, 6, 4, 2)}
    values = summaries[8]["weight_values"]
    assert values == sum(layer.weight.numel() for layer in labkit.quantized_layers(resnet).values())
    assert {bits: s["opset"] for bits, s in summaries.items()} == {8: 17, 6: 17, 4: 21, 2: 25}
    assert {bits: s["weight_types"] for bits, s in summaries.items()} == {
        8: {"int8": LAYERS}, 6: {"int8": LAYERS}, 4: {"int4": LAYERS}, 2: {"int2": LAYERS}}
    assert summaries[8]["weight_bytes"] == values
    assert summaries[4]["weight_bytes"] == values // 2 and summaries[2]["weight_bytes"] == values // 4
    # the 6-bit graph has the same nodes as the 4- and 2-bit ones (a Clip per activation), int8 weights:
    # the files differ by the weight bytes saved, within a few hundred bytes of zero-point bookkeeping
    assert summaries[8]["bytes"] > summaries[4]["bytes"] > summaries[2]["bytes"]
    assert abs(summaries[6]["bytes"] - summaries[4]["bytes"] - values // 2) < 2048
    assert abs(summaries[4]["bytes"] - summaries[2]["bytes"] - values // 4) < 2048
    # an explicit opset below 21 keeps int8 storage (for runtimes without INT4), same codes
    old = export_onnx(resnet, tmp_path / "w4-opset17.onnx", bits=4, opset=17)
    assert qdq_summary(old)["weight_types"] == {"int8": LAYERS} and qdq_summary(old)["opset"] == 17
    check_graph(old, {name: 4 for name in labkit.quantized_layers(resnet)}, resnet, weight_sign="keep", kinds="int8")
    four = export_onnx(resnet, tmp_path / "w2-opset21.onnx", bits=2, opset=21)
    assert qdq_summary(four)["weight_types"] == {"int4": LAYERS}


def test_two_bit_weights_fall_back_to_int4_without_int2(resnet, images, tmp_path, monkeypatch):
    """An onnx older than 1.20 has no INT2: the 2-bit codes go into INT4 (opset 21), still exact and smaller."""
    import labkit.export as export_module

    monkeypatch.setattr(export_module, "available_weight_types", lambda: ("int4", "int8"))
    path = export_onnx(resnet, tmp_path / "w2-int4.onnx", bits=2)
    summary = qdq_summary(path)
    assert summary["weight_types"] == {"int4": LAYERS} and summary["opset"] == 21
    check_graph(path, {name: 2 for name in labkit.quantized_layers(resnet)}, resnet, kinds="int4")
    assert verify_onnx(resnet, path, images, bits=2)["top1_agreement"] >= 0.99


def test_mixed_precision(resnet, images, tmp_path):
    names = list(labkit.quantized_layers(resnet))
    mixed = {name: (8, 6, 4, 2)[i % 4] for i, name in enumerate(names)}
    mixed[names[0]] = 2
    path = export_onnx(resnet, tmp_path / "mixed.onnx", bits=mixed)
    check_graph(path, mixed, resnet)
    result = verify_onnx(resnet, path, images)  # bits read back from the graph's metadata
    assert result["bits"] == mixed
    assert result["top1_agreement"] >= 0.99
    assert result["activation_code_mismatches"] <= 1e-6 * result["activation_codes"]


def test_partial_mapping_keeps_other_layers(resnet, tmp_path):
    name = next(iter(labkit.quantized_layers(resnet)))
    path = export_onnx(resnet, tmp_path / "one.onnx", bits={name: 2})
    stored = qdq_summary(path)["bits"]
    assert stored[name] == 2 and set(list(stored.values())[1:]) == {8}
    assert qdq_summary(path)["clip"] == 1


@pytest.mark.parametrize("bits,weight_sign", [(8, "keep"), (4, "keep"), (4, "fold"), (2, "fold")])
def test_dequantized_weights_equal_the_model(resnet, tmp_path, bits, weight_sign):
    """onnxruntime's DequantizeLinear output is the model's own weight (Eq. 3) bit for bit, negative scales included."""
    path = export_onnx(resnet, tmp_path / "w.onnx", bits=bits, weight_sign=weight_sign)
    check_graph(path, {name: bits for name in labkit.quantized_layers(resnet)}, resnet, weight_sign)
    graph = onnx.load(str(path))
    dequantized = {node.input[0]: node.output[0] for node in graph.graph.node
                   if node.op_type == "DequantizeLinear" and node.input[0].endswith(".weight_codes")}
    assert len(dequantized) == LAYERS
    for output in dequantized.values():
        graph.graph.output.append(onnx.helper.make_tensor_value_info(output, onnx.TensorProto.FLOAT, None))
    session = onnxruntime.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    outputs = dict(zip(names, session.run(None, {"input": np.zeros((1, 3, 32, 32), np.float32)})))
    labkit.set_bits(resnet, bits)
    for name, layer in labkit.quantized_layers(resnet).items():
        expected = layer.quantized_weight().detach().numpy()
        np.testing.assert_array_equal(outputs[dequantized[f"{name}.weight_codes"]], expected)
    labkit.set_bits(resnet, 8)
    # the shipped checkpoint has channels whose learned scale is negative: kept, or folded away
    negative = sum(int((layer.weight_quantizer.scale < 0).sum()) for layer in labkit.quantized_layers(resnet).values())
    assert negative > 0
    assert qdq_summary(path)["negative_weight_scales"] == (negative if weight_sign == "keep" else 0)


def test_a_layer_dequantized_off_the_grid_is_refused(tmp_path, monkeypatch):
    """The export reads the quantizer's own dequantization: one at the cell centre, (q + 1/2) * step, is refused."""
    model = labkit.load_int(CHECKPOINT)
    layer = labkit.quantized_layers(model)["layer2.1.conv1"]
    codes, step = layer.weight_codes()
    centre = (codes.float() + 0.5) * step.view(-1, 1, 1, 1)
    monkeypatch.setattr(layer, "quantized_weight", lambda: centre)  # kept by the export's deep copy
    with pytest.raises(LabkitError, match="layer2.1.conv1.*dequantizes"):
        export_onnx(model, tmp_path / "centre.onnx", bits=8)


def test_fold_is_refused_where_int8_cannot_hold_it(resnet, tmp_path):
    with pytest.raises(LabkitError, match="weight_sign='keep'"):
        export_onnx(resnet, tmp_path / "w8.onnx", bits=8, weight_sign="fold")


def test_export_view_is_the_model(resnet, images):
    """The module the exporter traces computes exactly what the PyTorch model computes."""
    batch = images[0][0] if isinstance(images[0], tuple) else images[0]
    for bits in (8, 2):
        labkit.set_bits(resnet, bits)
        with torch.no_grad():
            assert torch.equal(export_view(resnet)(batch[:16]), resnet(batch[:16]))
    labkit.set_bits(resnet, 8)


class TinyNet(nn.Module):
    """conv (FP) → relu → conv (unsigned input) → conv (signed input) → relu → pool → linear → linear (FP)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 5)

    def forward(self, x):
        x = self.bn1(self.conv1(torch.relu(self.stem(x))))
        x = torch.relu(self.conv2(x)).mean((2, 3))
        return self.fc2(torch.relu(self.fc1(x)))


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    model = labkit.quantize_model(TinyNet(), bits=(8, 4, 2), example_input=torch.randn(2, 3, 8, 8)).eval()
    assert model.labkit_quant["layers"]["conv2"]["act_signed"] is True
    assert model.labkit_quant["layers"]["conv1"]["act_signed"] is False
    data = torch.randn(64, 3, 8, 8)
    for bits in (8, 4, 2):
        labkit.set_bits(model, bits)
        model(data)  # first use sets the activation scales
    with torch.no_grad():  # a learned LSQ+ offset that is not a multiple of the scale
        for bits in (8, 4, 2):
            model.conv2.act_quantizer.offset[str(bits)].fill_(0.123)
    return model, data


@pytest.mark.parametrize("bits", [8, 4])
def test_signed_activations_with_offset(tiny, tmp_path, bits):
    model, data = tiny
    path = export_onnx(model, tmp_path / "tiny.onnx", bits=bits, example_input=data[:1])
    graph = onnx.load(str(path))
    ops = [node.op_type for node in graph.graph.node]
    assert ops.count("QuantizeLinear") == 3 and ops.count("Sub") == 1 and ops.count("Add") >= 1
    eight_bit = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
    zero_points = [node.attribute[0].t.data_type for node in graph.graph.node if node.op_type == "Constant"
                   and node.attribute[0].t.dims == [] and node.attribute[0].t.data_type in eight_bit]
    assert onnx.TensorProto.INT8 in zero_points and onnx.TensorProto.UINT8 in zero_points
    assert qdq_summary(path)["weight_types"] == {"int8" if bits == 8 else "int4": 3}  # conv1, conv2, fc1
    labkit.set_bits(model, bits)
    with torch.no_grad():
        assert torch.equal(export_view(model)(data), model(data))
    result = verify_onnx(model, path, data, bits=bits)
    assert result["top1_agreement"] == 1.0
    assert result["max_abs_diff"] < 1e-4 * max(1.0, result["max_abs_logit"])
    assert result["activation_code_mismatches"] == 0


def test_bad_bits_raise_and_change_nothing(resnet, tiny, tmp_path):
    before = labkit.get_bits(resnet)
    target = tmp_path / "bad.onnx"
    with pytest.raises(BitWidthError, match="trained bit set"):
        export_onnx(resnet, target, bits=3)
    with pytest.raises(BitWidthError, match="at least 2"):
        export_onnx(resnet, target, bits=1)
    for value in ("4", 4.5, True, [4]):
        with pytest.raises(BitWidthError, match="whole number"):
            export_onnx(resnet, target, bits=value)
    with pytest.raises(BitWidthError, match="layer1.0.conv1"):
        export_onnx(resnet, target, bits={"no.such.layer": 4})
    with pytest.raises(BitWidthError, match=r"bits\['layer1.0.conv1'\]"):
        export_onnx(resnet, target, bits={"layer1.0.conv1": 5})
    assert labkit.get_bits(resnet) == before and not target.exists()
    with pytest.raises(BitWidthError, match="trained bit set"):
        verify_onnx(resnet, target, torch.zeros(1, 3, 32, 32), bits=3)
    wide = labkit.quantize_model(TinyNet(), bits=(16, 8), example_input=torch.randn(2, 3, 8, 8))
    with pytest.raises(BitWidthError, match="<= 8 bits"):
        export_onnx(wide, target, bits=16, example_input=torch.randn(1, 3, 8, 8))


def test_unquantized_or_unready_models_raise(tmp_path):
    with pytest.raises(LabkitError, match="no quantized layers"):
        export_onnx(TinyNet(), tmp_path / "fp32.onnx", example_input=torch.randn(1, 3, 8, 8))
    fresh = labkit.quantize_model(TinyNet(), bits=(8, 4), example_input=torch.randn(2, 3, 8, 8))
    with pytest.raises(LabkitError, match="no activation scale for 4 bits"):
        export_onnx(fresh, tmp_path / "fresh.onnx", bits=4, example_input=torch.randn(1, 3, 8, 8))
    with pytest.raises(LabkitError, match="example_input"):
        fresh(torch.randn(2, 3, 8, 8))
        export_onnx(fresh, tmp_path / "fresh.onnx", bits=8)
    with pytest.raises(LabkitError, match="opset"):
        export_onnx(fresh, tmp_path / "fresh.onnx", bits=8, example_input=torch.randn(1, 3, 8, 8), opset=12)
    with pytest.raises(LabkitError, match="weight_sign"):
        export_onnx(fresh, tmp_path / "fresh.onnx", bits=8, example_input=torch.randn(1, 3, 8, 8), weight_sign="flip")


def test_cli_export(tmp_path, capsys):
    out = tmp_path / "model-w2.onnx"
    assert main(["export", str(CHECKPOINT), "--bits", "2", "--out", str(out), "--check", "32"]) == 0
    printed = capsys.readouterr().out
    assert out.is_file() and "2-bit" in printed and "18 QuantizeLinear" in printed and "KiB" in printed
    assert "opset 25" in printed and "18 INT2" in printed
    assert "top-1 agreement 100.00 %" in printed
    mixed = tmp_path / "mixed.onnx"
    assert main(["export", str(CHECKPOINT), "--bits", "layer1.0.conv1=2,layer3.2.conv2=4", "--out", str(mixed)]) == 0
    assert qdq_summary(mixed)["bits"]["layer3.2.conv2"] == 4 and "mixed" in capsys.readouterr().out
    assert main(["export", str(CHECKPOINT), "--bits", "3", "--out", str(tmp_path / "bad.onnx")]) == 1
    assert "trained bit set" in capsys.readouterr().err
