"""One switchable ONNX file (labkit.export_switchable): INT8 codes stored once, the precision a graph input.

References: the fixed-precision export of the same model (labkit.export.export_onnx) run in onnxruntime, the
lab's integer second rounding ``labkit.quant.double_round`` and a numpy rounding of ``q / 2^Δ`` (METHOD.md
Eq. 2) for every INT8 code, and the PyTorch model itself.
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
from labkit.export import export_onnx
from labkit.export_switchable import (SwitchableSession, export_switchable_onnx, layer_code_outputs,
                                      second_rounding_graph, switchable_view, verify_switchable)
from labkit.quant import double_round

CHECKPOINTS = Path(__file__).resolve().parents[1] / "data" / "checkpoints"
RESNET = CHECKPOINTS / "cifar10-resnet20.safetensors"
SUPERNET = CHECKPOINTS / "cifar10-resnet20-hasb-supernet.safetensors"
ALL_CODES = np.arange(-128, 128, dtype=np.int8)


def numpy_second_rounding(codes: np.ndarray, high: int, low: int, rounding: str) -> np.ndarray:
    """Eq. 2 in float64: clip(round(q / 2^Δ), -2^(l-1), 2^(l-1) - 1) with the tie rule spelled out."""
    value = codes.astype(np.float64) / 2.0 ** (high - low)
    rounded = {"half_even": np.round(value), "half_up": np.floor(value + 0.5), "floor": np.floor(value)}[rounding]
    return np.clip(rounded, -(2 ** (low - 1)), 2 ** (low - 1) - 1).astype(np.int64)


def session(model_proto) -> onnxruntime.InferenceSession:
    return onnxruntime.InferenceSession(model_proto.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def images():
    return torch.randn(48, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("rounding", ["half_even", "half_up", "floor"])
def test_graph_second_rounding_equals_double_round_for_all_int8_codes(rounding):
    """The integer ops the switchable file writes, run by onnxruntime on all 256 INT8 codes, at every l."""
    bit_set = (8, 7, 6, 5, 4, 3, 2)
    graph = session(second_rounding_graph(8, bit_set, rounding))
    for low in bit_set:
        got = graph.run(None, {"codes": ALL_CODES, "bits": np.array(low, np.int64)})[0]
        assert got.dtype == np.int8
        expected = double_round(torch.from_numpy(ALL_CODES), 8, low, rounding).numpy()
        np.testing.assert_array_equal(got, expected)
        np.testing.assert_array_equal(got.astype(np.int64), numpy_second_rounding(ALL_CODES, 8, low, rounding))
    # the 8 -> 2 ties the tie rules disagree on (METHOD.md §1): 32/64 = 0.5 and 96/64 = 1.5
    ties = graph.run(None, {"codes": np.array([32, 96, -32, -96], np.int8), "bits": np.array(2, np.int64)})[0]
    assert ties.tolist() == {"half_even": [0, 1, 0, -2], "half_up": [1, 1, 0, -1], "floor": [0, 1, -1, -2]}[rounding]


def test_graph_second_rounding_from_four_bits():
    graph = session(second_rounding_graph(4, (4, 3, 2), "half_even"))
    codes = np.arange(-8, 8, dtype=np.int8)
    for low in (4, 3, 2):
        got = graph.run(None, {"codes": codes, "bits": np.array(low, np.int64)})[0]
        np.testing.assert_array_equal(got.astype(np.int64), numpy_second_rounding(codes, 4, low, "half_even"))


def all_codes_model(rounding: str) -> nn.Module:
    """The shipped ResNet-20 with one layer's stored codes replaced by every INT8 code (9 times each)."""
    model = labkit.load_int(RESNET)
    layers = labkit.quantized_layers(model)
    for layer in layers.values():  # before any forward pass, so no integer weight is cached yet
        layer.weight_quantizer.rounding = rounding
    target = layers["layer1.0.conv1"].weight_quantizer  # 16 x 16 x 3 x 3 = 9 x 256 codes
    shape = target.stored_codes.shape
    target.stored_codes = torch.from_numpy(np.tile(ALL_CODES, 9)).reshape(shape).clone()
    return model


@pytest.mark.parametrize("rounding", ["half_even", "half_up"])
def test_codes_in_the_exported_graph_equal_double_round(tmp_path, rounding):
    model = all_codes_model(rounding)
    path = export_switchable_onnx(model, tmp_path / "switchable.onnx")
    graph = onnx.load(str(path))
    outputs = layer_code_outputs(graph)
    assert sorted(outputs) == sorted(labkit.quantized_layers(model))
    for value in outputs.values():
        graph.graph.output.append(onnx.helper.make_tensor_value_info(value, onnx.TensorProto.INT8, None))
    runner = session(graph)
    names = [o.name for o in runner.get_outputs()]
    stored = {init.name[len("body."):-len(".stored_codes")]: numpy_helper.to_array(init).copy()
              for init in graph.graph.initializer if init.name.endswith(".stored_codes")}
    assert set(np.unique(stored["layer1.0.conv1"])) == set(ALL_CODES.tolist())
    for bits in (8, 6, 4, 2):
        got = dict(zip(names, runner.run(None, {"input": np.zeros((1, 3, 32, 32), np.float32),
                                                "bits": np.array([bits], np.int64)})))
        for layer, value in outputs.items():
            expected = double_round(torch.from_numpy(stored[layer]), 8, bits, rounding).numpy()
            np.testing.assert_array_equal(got[value], expected)
        np.testing.assert_array_equal(got[outputs["layer1.0.conv1"]].astype(np.int64),
                                      numpy_second_rounding(stored["layer1.0.conv1"], 8, bits, rounding))


def fixed_logits(model, bits, images, tmp_path) -> np.ndarray:
    path = export_onnx(model, tmp_path / "fixed.onnx", bits=bits)
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"input": images.numpy()})[0]


def mixed_allocation(model) -> dict[str, int]:
    names = list(labkit.quantized_layers(model))
    return {name: (8, 6, 4, 2)[(7 * i) % 4] for i, name in enumerate(names)}


@pytest.mark.parametrize("checkpoint", [RESNET, SUPERNET], ids=["switchable-bn", "hasb-transitional-bn"])
def test_logits_equal_the_fixed_precision_export(checkpoint, images, tmp_path):
    """At every trained bit-width and a mixed allocation, the one file gives the fixed export's logits exactly."""
    model = labkit.load_int(checkpoint)
    path = export_switchable_onnx(model, tmp_path / "switchable.onnx")
    runner = SwitchableSession(path)
    assert runner.bit_set == [8, 6, 4, 2] and runner.layers == list(labkit.quantized_layers(model))
    mixed = mixed_allocation(model)
    assert len(set(mixed.values())) == 4
    for bits in (8, 6, 4, 2, mixed):
        np.testing.assert_array_equal(runner.run(images, bits), fixed_logits(model, bits, images, tmp_path))
    # the same mixed allocation as a list in the metadata's layer order
    np.testing.assert_array_equal(runner.run(images, list(mixed.values())), runner.run(images, mixed))
    assert labkit.get_bits(model) == {name: 8 for name in runner.layers}  # the model is not changed


def test_one_file_stores_the_codes_once(tmp_path):
    model = labkit.load_int(RESNET)
    path = export_switchable_onnx(model, tmp_path / "switchable.onnx")
    graph = onnx.load(str(path))
    integer = [init for init in graph.graph.initializer
               if init.data_type == onnx.TensorProto.INT8 and len(init.dims) > 1]
    assert len(integer) == 18 and all(init.name.endswith(".stored_codes") for init in integer)
    assert sum(int(np.prod(init.dims)) for init in integer) == sum(
        layer.weight.numel() for layer in labkit.quantized_layers(model).values())
    ops = {node.op_type for node in graph.graph.node}
    assert {"BitShift", "BitwiseAnd", "Clip", "Gather", "DequantizeLinear", "QuantizeLinear"} <= ops
    assert [i.name for i in graph.graph.input] == ["input", "bits"]
    eight = Path(export_onnx(model, tmp_path / "w8.onnx", bits=8)).stat().st_size
    assert Path(path).stat().st_size < 1.25 * eight  # one file, about the size of the 8-bit one


def test_view_is_the_model(images):
    model = labkit.load_int(SUPERNET)
    view = switchable_view(model)
    for bits in (8, 6, 4, 2, mixed_allocation(model)):
        labkit.set_bits(model, bits)
        vector = torch.tensor([bits] if isinstance(bits, int) else list(bits.values()))
        with torch.no_grad():
            assert torch.equal(view(images[:8], vector), model(images[:8]))


def test_untrained_bits_are_refused_or_give_nan(tmp_path, images):
    model = labkit.load_int(RESNET)
    runner = SwitchableSession(export_switchable_onnx(model, tmp_path / "switchable.onnx"))
    with pytest.raises(BitWidthError, match="trained at"):
        runner.run(images[:2], 3)
    with pytest.raises(BitWidthError, match="no quantized layer"):
        runner.run(images[:2], {"no.such.layer": 4})
    with pytest.raises(BitWidthError, match="one per quantized layer"):
        runner.run(images[:2], [8, 4])
    with pytest.raises(BitWidthError, match="whole number"):
        runner.run(images[:2], 4.0)
    for bits in (3, 9, 100, -1, 0):  # straight into onnxruntime: the graph cannot raise, its logits are NaN
        logits = runner.session.run(None, {"input": images[:2].numpy(), "bits": np.array([bits], np.int64)})[0]
        assert np.isnan(logits).all()
    with pytest.raises(LabkitError, match="not a switchable"):
        SwitchableSession(export_onnx(model, tmp_path / "fixed.onnx", bits=4))


class SignedNet(nn.Module):
    """conv (FP) → conv (unsigned input) → conv (signed input, LSQ+ offset) → pool → linear (quantized) → linear."""

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


def test_signed_inputs_with_offset(tmp_path):
    torch.manual_seed(0)
    model = labkit.quantize_model(SignedNet(), bits=(8, 4, 2), example_input=torch.randn(2, 3, 8, 8)).eval()
    assert model.labkit_quant["layers"]["conv2"]["act_signed"] is True
    data = torch.randn(32, 3, 8, 8)
    for bits in (8, 4, 2):
        labkit.set_bits(model, bits)
        model(data)
    with torch.no_grad():
        for bits in (8, 4, 2):
            model.conv2.act_quantizer.offset[str(bits)].fill_(0.123)
    labkit.set_bits(model, 8)
    path = export_switchable_onnx(model, tmp_path / "signed.onnx", example_input=data[:1])
    runner = SwitchableSession(path)
    for bits in (8, 4, 2, {"conv1": 2, "conv2": 8, "fc1": 4}):
        fixed = export_onnx(model, tmp_path / "fixed.onnx", bits=bits, example_input=data[:1])
        expected = onnxruntime.InferenceSession(str(fixed), providers=["CPUExecutionProvider"]).run(
            None, {"input": data.numpy()})[0]
        np.testing.assert_array_equal(runner.run(data, bits), expected)


def test_methods_without_nested_integers_are_refused(tmp_path):
    model = labkit.quantize_model(SignedNet(), bits=(8, 4), method="per_bit_scale",
                                  example_input=torch.randn(2, 3, 8, 8)).eval()
    for bits in (8, 4):
        labkit.set_bits(model, bits)
        model(torch.randn(4, 3, 8, 8))
    with pytest.raises(LabkitError, match="one stored integer set"):
        export_switchable_onnx(model, tmp_path / "x.onnx", example_input=torch.randn(1, 3, 8, 8))
    with pytest.raises(LabkitError, match="opset"):
        export_switchable_onnx(model, tmp_path / "x.onnx", opset=17)


def test_verify_against_pytorch(images, tmp_path):
    model = labkit.load_int(RESNET)
    path = export_switchable_onnx(model, tmp_path / "switchable.onnx")
    results = verify_switchable(model, path, images[:32])
    assert sorted(results) == [2, 4, 6, 8]
    for result in results.values():
        assert result["images"] == 32 and result["top1_agreement"] >= 0.95
        assert result["max_abs_diff"] < 0.1 * result["max_abs_logit"]


def test_cli_export_switchable(tmp_path, capsys):
    out = tmp_path / "model.onnx"
    assert main(["export", str(RESNET), "--bits", "switchable", "--out", str(out), "--check", "16"]) == 0
    printed = capsys.readouterr().out
    assert out.is_file() and "switchable" in printed and "[18] for one per layer" in printed
    for bits in (8, 6, 4, 2):
        assert f"{bits}-bit: onnxruntime vs PyTorch" in printed
    assert printed.count("top-1 agreement") == 4


def test_graph_codes_are_the_stored_codes_second_rounded(tmp_path):
    from labkit.export_switchable import graph_codes
    from labkit.storage import read_int

    model = labkit.load_int(RESNET)
    path = export_switchable_onnx(model, tmp_path / "switchable.onnx")
    tensors, _ = read_int(RESNET)  # the checkpoint's own INT8 codes, not the graph's initializers
    mixed = mixed_allocation(model)
    for bits in (8, 4, 2, mixed):
        codes = graph_codes(path, bits)
        assert sorted(codes) == sorted(mixed)
        for layer, values in codes.items():
            low = bits if isinstance(bits, int) else bits[layer]
            stored = tensors[f"{layer}.weight_codes"]
            np.testing.assert_array_equal(values, double_round(stored, 8, low, "half_even").numpy())


def test_player_drives_onnxruntime(tmp_path, images):
    import re

    from labkit.export_widgets import SwitchableOnnxPlayer, switchable_state

    model = labkit.load_int(RESNET)
    path = export_switchable_onnx(model, tmp_path / "switchable.onnx")
    labels = torch.arange(len(images)) % 10
    player = SwitchableOnnxPlayer(path, images, labels, class_names=[f"class {i}" for i in range(10)], model=model)
    assert player.state["bits"] == 8 and player.slider.value == 8
    for bits in (2, 6, 8):
        state = player.update(bits)
        expected = SwitchableSession(path).run(images, bits).argmax(1)
        assert state["accuracy"] == pytest.approx(float((expected == labels.numpy()).mean()))
        assert state["agreement"] >= 0.95 and len(state["predictions"]) == 8
        assert re.search(r"Accuracy \d+\.\d+ %", player.readout.value) and f"{bits}-bit" in player.readout.value
        assert state["predictions"][0]["predicted"] == f"class {expected[0]}"
    assert player.slider.value == 8
    with pytest.raises(BitWidthError, match="trained at"):
        player.update(3)
    with pytest.raises(BitWidthError, match="trained at"):
        switchable_state(player.session, images, labels, 5)
