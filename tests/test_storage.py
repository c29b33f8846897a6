"""INT-h checkpoints (labkit.storage, METHOD.md §1, DESIGN.md): what is stored, and that it is enough.

Every model here is *trained a little* before it is saved: a training-mode forward/backward at every bit-width
(activation scales initialise, every per-bit BN's running statistics move) and one optimizer step (weights,
weight scales, activation scales and BN affine parameters all leave their init). Then:

- ``load_int(path)`` rebuilds the architecture from the file alone and gives outputs *identical*
  (``torch.equal``) to the trained model at every trained bit-width and at per-layer mixed bit-widths;
- its lower-bit codes come from the stored int8 codes by the integer second rounding (``double_round``), and
  its forward no longer reads any float weight of a quantized layer;
- the file is safetensors only (every byte is header JSON or raw tensor data: no pickle), the quantized weights
  are stored once, as int8, and the size ratio to ``torch.save(state_dict)`` is measured and explained;
- saving is atomic, and models without a registered architecture load with ``model=``.
"""
import io
import json
import os

import pytest
import torch
from safetensors import safe_open

import labkit
from labkit import storage
from labkit.convert import quantized_layers
from labkit.models import build_model
from labkit.quant import double_round
from labkit.storage import CODES_SUFFIX, load_int, save_int

ARCHS = ("resnet20", "preact_resnet20")
# (bits, method, rounding): the paper's set with both tie rules, the truncation baseline, the {4,3,2} set,
# and a dedicated single-precision LSQ model.
CONFIGS = {
    "dr8642-half_even": ((8, 6, 4, 2), "double_rounding", "half_even"),
    "dr8642-half_up": ((8, 6, 4, 2), "double_rounding", "half_up"),
    "floor8642": ((8, 6, 4, 2), "floor", "half_even"),
    "dr432-half_even": ((4, 3, 2), "double_rounding", "half_even"),
    "dr432-half_up": ((4, 3, 2), "double_rounding", "half_up"),
    "lsq4": ((4,), "lsq", "half_even"),
}
INPUT_SHAPE = (2, 3, 32, 32)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny inputs gain nothing from intra-op threads, and on a busy 2-core machine OpenMP's spin-waiting made
    these tests ~20x slower with 2 threads than with 1 (measured). Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_input(seed=1):
    return torch.randn(*INPUT_SHAPE, generator=torch.Generator().manual_seed(seed))


def train_a_little(model, bits, seed=0):
    """Training-mode passes at every bit-width, then one Adam step on every parameter; returns eval model."""
    torch.manual_seed(seed)
    x = make_input(seed + 100)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    optimizer.zero_grad()
    for b in bits:
        labkit.set_bits(model, b)
        model(x).square().mean().backward()
    optimizer.step()
    with torch.no_grad():  # move the BN statistics once more, after the step
        for b in bits:
            labkit.set_bits(model, b)
            model(x)
    model.eval()
    labkit.set_bits(model, max(bits))
    return model


def trained_model(arch, config, seed=0, drop_arch=False):
    bits, method, rounding = CONFIGS[config]
    torch.manual_seed(seed)
    fp32 = build_model(arch)
    if drop_arch:
        del fp32.labkit_arch
    model = labkit.quantize_model(fp32, bits=bits, method=method, rounding=rounding)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    train_a_little(model, bits, seed)
    return model, initial


def outputs(model, bits, x):
    labkit.set_bits(model, bits)
    with torch.no_grad():
        return model(x)


def file_layout(path):
    """(header length, header dict) of a safetensors file, read by hand."""
    with open(path, "rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(length).decode("utf-8"))
    return length, header


def torch_save_size(state_dict):
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    return len(buffer.getvalue())


@pytest.fixture(scope="module", params=[(a, c) for a in ARCHS for c in CONFIGS], ids=lambda p: f"{p[0]}-{p[1]}")
def saved(request, tmp_path_factory):
    """(trained model, its initial state, checkpoint path, model loaded from the path alone, config name)."""
    arch, config = request.param
    model, initial = trained_model(arch, config)
    path = tmp_path_factory.mktemp(f"{arch}-{config}") / "model.safetensors"
    assert save_int(model, path) == path
    loaded = load_int(path)
    return model, initial, path, loaded, config


# --------------------------------------------------------------------------------- the public names


def test_save_and_load_are_public_names():
    """DESIGN.md lists ``labkit.save_int(model, path)`` and ``labkit.load_int(path)`` as stable public names."""
    assert getattr(labkit, "save_int", None) is storage.save_int, "labkit.save_int is not exported"
    assert getattr(labkit, "load_int", None) is storage.load_int, "labkit.load_int is not exported"


# --------------------------------------------------------------------------------- training really moved things


def test_fixture_moved_everything_away_from_init(saved):
    model, initial, *_ = saved
    state = model.state_dict()
    for name, layer in quantized_layers(model).items():
        assert not torch.equal(state[f"{name}.weight"], initial[f"{name}.weight"]), name
        assert not torch.equal(state[f"{name}.weight_quantizer.scale"], initial[f"{name}.weight_quantizer.scale"]), name
        assert bool(layer.act_quantizer.initialized.all()), f"{name}: an activation scale was never initialised"
        act_keys = [k for k in state if k.startswith(f"{name}.act_quantizer.scale")]
        assert act_keys, name
        for key in act_keys:  # one scale per bit-width (however they are stored), each initialised and stepped
            assert not torch.equal(state[key], initial[key]), key
    bn_keys = [k for k in state if ".per_bit." in k and k.endswith(("running_mean", "running_var", "weight"))]
    assert bn_keys
    for key in bn_keys:
        assert not torch.equal(state[key], initial[key]), f"{key} is still at its init"


# --------------------------------------------------------------------------------- identical outputs


def test_loaded_model_matches_trained_model_at_every_bit(saved):
    model, _, path, loaded, config = saved
    bits = CONFIGS[config][0]
    assert loaded is not model and not loaded.training
    assert loaded.labkit_arch == model.labkit_arch
    assert labkit.get_bits(loaded) == {name: max(bits) for name in quantized_layers(model)}, "loads at the highest bit"
    x = make_input()
    seen = []
    for b in bits:
        expected, got = outputs(model, b, x), outputs(loaded, b, x)
        assert torch.equal(expected, got), f"{config}: outputs differ at {b} bits"
        seen.append(expected)
    for a, b in zip(seen, seen[1:]):  # the comparison is not vacuous: precisions really differ
        assert not torch.equal(a, b)


def test_loaded_model_matches_at_mixed_per_layer_bits(saved):
    model, _, path, loaded, config = saved
    bits = CONFIGS[config][0]
    names = list(quantized_layers(model))
    x = make_input(2)
    for offset in range(len(bits)):
        mixed = {name: bits[(i + offset) % len(bits)] for i, name in enumerate(names)}
        labkit.set_bits(model, mixed)
        labkit.set_bits(loaded, mixed)
        assert labkit.get_bits(loaded) == mixed
        with torch.no_grad():
            assert torch.equal(model(x), loaded(x)), f"{config}: mixed bits {offset} differ"


def test_load_at_a_requested_bit_width(saved):
    model, _, path, _, config = saved
    low = min(CONFIGS[config][0])
    loaded = load_int(path, bits=low)
    assert set(labkit.get_bits(loaded).values()) == {low}
    with torch.no_grad():
        got = loaded(make_input())
    assert torch.equal(got, outputs(model, low, make_input()))


# --------------------------------------------------------------------------------- codes come from integers


def test_lower_bit_codes_come_from_the_stored_int8_codes(saved):
    model, _, path, loaded, config = saved
    bits, method, rounding = CONFIGS[config]
    high = max(bits)
    trained_layers, loaded_layers = quantized_layers(model), quantized_layers(loaded)
    assert list(trained_layers) == list(loaded_layers)
    for name, layer in loaded_layers.items():
        quantizer = layer.weight_quantizer
        expected_rounding = "floor" if method == "floor" else rounding
        assert quantizer.rounding == trained_layers[name].weight_quantizer.rounding == expected_rounding
        stored = quantizer.stored_codes
        assert isinstance(stored, torch.Tensor) and stored.dtype == torch.int8, name
        trained = trained_layers[name]
        trained.set_bits(high)
        trained_codes, trained_step = trained.weight_codes()
        assert torch.equal(stored, trained_codes), f"{name}: stored codes are not the trained {high}-bit codes"
        for low in bits:
            layer.set_bits(low)
            trained.set_bits(low)
            codes, step = layer.weight_codes()
            assert codes.dtype == torch.int8
            assert torch.equal(codes, double_round(stored, high, low, expected_rounding)), f"{name} at {low} bits"
            expected_codes, expected_step = trained.weight_codes()
            assert torch.equal(codes, expected_codes) and torch.equal(step, expected_step), f"{name} at {low} bits"
            # (codes + offset) * step is what the forward uses (offset: 0, or the cell centre of method="floor")
            view = step.view(-1, *([1] * (codes.dim() - 1)))
            offset = layer.weight_code_offset().view(-1, *([1] * (codes.dim() - 1)))
            assert torch.equal(layer.quantized_weight(), (codes.to(torch.float32) + offset) * view)
        layer.set_bits(high)
        trained.set_bits(high)
    # 4 bits from 8: the brief's spot check, spelled out
    if high == 8:
        layer = next(iter(loaded_layers.values()))
        layer.set_bits(4)
        assert torch.equal(layer.weight_codes()[0], double_round(layer.weight_quantizer.stored_codes, 8, 4, expected_rounding))
        layer.set_bits(8)


def test_loaded_forward_reads_no_float_weight_of_a_quantized_layer(saved):
    """Poison the float ``.weight`` of every quantized layer of a fresh load, before any forward pass: the
    outputs must still equal the trained model's."""
    model, _, path, _, config = saved
    bits = CONFIGS[config][0]
    loaded = load_int(path)
    x = make_input(3)
    expected = {b: outputs(model, b, x) for b in bits}
    with torch.no_grad():
        for layer in quantized_layers(loaded).values():
            layer.weight.fill_(float("nan"))
    for b in bits:
        assert torch.equal(outputs(loaded, b, x), expected[b]), f"{config}: {b}-bit forward used float weights"


# --------------------------------------------------------------------------------- what the file holds


def test_file_is_safetensors_only_with_int8_codes_and_no_float_copy(saved):
    model, _, path, _, config = saved
    layers = quantized_layers(model)
    state = model.state_dict()
    with safe_open(str(path), framework="pt") as handle:
        keys = set(handle.keys())
        tensors = {key: handle.get_tensor(key) for key in keys}
        metadata = handle.metadata()
    assert metadata["format"] == storage.FORMAT
    assert json.loads(metadata["arch"]) == model.labkit_arch
    assert json.loads(metadata["plan"]) == model.labkit_quant

    quantized_weight_keys = {f"{name}.weight" for name in layers}
    code_keys = {name + CODES_SUFFIX for name in layers}
    # per-bit copies (BN statistics, activation scales) are stacked into one tensor per group, high bit first
    bits = tuple(model.labkit_quant["bits"])
    stacked = {key for key in keys if ".*." in key}
    assert stacked and all(tensors[key].shape[0] == len(bits) for key in stacked)
    unpacked = storage.unpack_per_bit(tensors, bits)
    for key in stacked:
        for index, b in enumerate(bits):
            assert torch.equal(unpacked[key.replace("*", str(b))], tensors[key][index])
    # every key accounted for: the model's state without the quantized float weights, plus their codes
    assert set(unpacked) == (set(state) - quantized_weight_keys) | code_keys
    for key in set(unpacked) - code_keys:
        assert unpacked[key].dtype == state[key].dtype and torch.equal(unpacked[key], state[key]), key
    for name, layer in layers.items():
        codes = tensors[name + CODES_SUFFIX]
        assert codes.dtype == torch.int8 and codes.shape == layer.weight.shape, name
        layer.set_bits(max(layer.bit_set))
        assert torch.equal(codes, layer.weight_codes()[0]), name
    # int8 appears only as weight codes, and no float tensor has the shape of a quantized weight
    assert {k for k, t in tensors.items() if t.dtype == torch.int8} == code_keys
    weight_shapes = {tuple(layer.weight.shape) for layer in layers.values()}
    for key, tensor in tensors.items():
        if tensor.is_floating_point():
            assert tuple(tensor.shape) not in weight_shapes, f"{key} looks like a float copy of a quantized weight"

    # no pickle: every byte of the file is the 8-byte length, the JSON header or raw tensor data
    header_length, header = file_layout(path)
    data_bytes = sum(t.numel() * t.element_size() for t in tensors.values())
    assert os.path.getsize(path) == 8 + header_length + data_bytes
    assert set(header) == keys | {"__metadata__"}
    with open(path, "rb") as handle:
        assert not handle.read(8 + header_length).startswith(b"PK")  # not a torch.save zip either


def test_size_ratio_against_torch_save(saved, capsys):
    model, _, path, _, config = saved
    arch = model.labkit_arch["name"]
    layers = quantized_layers(model)
    quantized_elements = sum(layer.weight.numel() for layer in layers.values())
    with safe_open(str(path), framework="pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    int8_bytes = sum(t.numel() for t in tensors.values() if t.dtype == torch.int8)
    other_bytes = sum(t.numel() * t.element_size() for t in tensors.values() if t.dtype != torch.int8)
    header_length, _ = file_layout(path)
    size = os.path.getsize(path)
    reference = torch_save_size(model.state_dict())
    fp32_reference = torch_save_size(build_model(arch).state_dict())
    ratio = size / reference
    with capsys.disabled():
        print(f"\n[size] {arch} {config}: INT file {size} B / torch.save(quantized state_dict) {reference} B = "
              f"{ratio:.3f}; / torch.save(FP32 model) {fp32_reference} B = {size / fp32_reference:.3f}; "
              f"int8 codes {int8_bytes} B, other tensors {other_bytes} B, header {header_length + 8} B")
    # breakdown: one byte per quantized weight element, the rest is FP32/int64 state plus the JSON header
    assert int8_bytes == quantized_elements
    assert size == 8 + header_length + int8_bytes + other_bytes
    # the floats left: FP first/last layers, per-bit BN, scales; all small next to the codes for ResNet-20
    assert other_bytes < int8_bytes and header_length < int8_bytes / 4
    # the same state in FP32 would take 4 bytes per quantized weight element
    assert reference > 4 * quantized_elements + other_bytes
    if config.startswith(("dr8642", "floor8642")) and arch == "resnet20":
        assert 0.25 < ratio < 0.35, ratio
    assert ratio < 0.35


def test_resaving_a_loaded_model_gives_the_same_checkpoint(saved, tmp_path):
    """Same tensors and metadata (not byte-compared: safetensors writes metadata keys in hash-map order)."""
    _, _, path, loaded, _ = saved
    again = save_int(loaded, tmp_path / "again.safetensors")
    assert os.path.getsize(again) == os.path.getsize(path)
    with safe_open(str(path), framework="pt") as first, safe_open(str(again), framework="pt") as second:
        assert first.metadata() == second.metadata()
        assert set(first.keys()) == set(second.keys())
        for key in first.keys():
            a, b = first.get_tensor(key), second.get_tensor(key)
            assert a.dtype == b.dtype and torch.equal(a, b), key


# --------------------------------------------------------------------------------- atomic writes


def test_save_is_atomic_and_replaces_an_existing_file(tmp_path):
    first, _ = trained_model("resnet20", "dr8642-half_even", seed=0)
    second, _ = trained_model("resnet20", "dr8642-half_even", seed=7)
    path = tmp_path / "ck" / "model.safetensors"  # the folder is created
    save_int(first, path)
    assert os.listdir(path.parent) == ["model.safetensors"], "a temporary file was left behind"
    old = path.read_bytes()
    save_int(second, path)
    assert os.listdir(path.parent) == ["model.safetensors"], "a temporary file was left behind"
    assert path.read_bytes() != old
    x = make_input()
    loaded = load_int(path)
    for b in (8, 2):
        assert torch.equal(outputs(loaded, b, x), outputs(second, b, x))
    save_int(second, str(path))  # str paths too
    assert os.listdir(path.parent) == ["model.safetensors"]


# --------------------------------------------------------------------------------- unknown architectures


def test_model_without_registered_architecture_loads_with_model_argument(tmp_path):
    model, _ = trained_model("resnet20", "dr8642-half_up", drop_arch=True)
    assert not hasattr(model, "labkit_arch")
    path = save_int(model, tmp_path / "anon.safetensors")
    with safe_open(str(path), framework="pt") as handle:
        assert json.loads(handle.metadata()["arch"]) is None
    with pytest.raises(labkit.CheckpointError, match="model="):
        load_int(path)
    fresh = build_model("resnet20")
    del fresh.labkit_arch  # as unknown to the lab as the saved one
    loaded = load_int(path, model=fresh)
    assert list(quantized_layers(loaded)) == list(quantized_layers(model))
    x = make_input()
    for b in (8, 6, 4, 2):
        assert torch.equal(outputs(loaded, b, x), outputs(model, b, x)), b
    # a registered FP32 model of the same architecture works too
    other = load_int(path, model=build_model("resnet20"))
    assert torch.equal(outputs(other, 4, x), outputs(model, 4, x))


# --------------------------------------------------------------------------------- methods with FP32 masters


@pytest.mark.parametrize("method", ["per_bit_scale", "any_precision"])
def test_fp32_master_methods_cannot_be_saved_as_integers(method, tmp_path):
    model = labkit.quantize_model(build_model("resnet20"), bits=(8, 4), method=method)
    path = tmp_path / "m.safetensors"
    with pytest.raises(labkit.CheckpointError) as info:
        save_int(model, path)
    message = str(info.value)
    assert method in message and "FP32 master" in message and "torch.save" in message
    assert not path.exists() and os.listdir(tmp_path) == []
