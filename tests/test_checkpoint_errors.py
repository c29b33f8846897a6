"""Bad INT checkpoints: every one gets one clear ``labkit.CheckpointError`` (or ``BitWidthError`` for a bad
bit-width) that names the problem and says what to do, and nothing is lost on the way:

- the file on disk is byte-for-byte unchanged after a failed load;
- a failed save over a good checkpoint leaves the good one intact (and no temporary file behind);
- an FP32 model handed to ``load_int(path, model=...)`` is left as it was when the load fails;
- loading never unpickles anything (a pickle that would run code is refused without running it).
"""
import copy as copy_module
import json
import os
import pickle
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import labkit
from labkit import storage
from labkit.convert import quantized_layers
from labkit.models import build_model, preact_resnet20, resnet20
from labkit.storage import load_int, save_int

BITS = (8, 6, 4, 2)
REMEDY = ("save_int", "model=", "load it into", "pass a matching model", "pass an FP32 model", "re-create")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny inputs gain nothing from intra-op threads, and on a busy 2-core machine OpenMP's spin-waiting made
    these tests ~20x slower with 2 threads than with 1 (measured). Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_input(seed=1):
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """(trained ResNet-20 {8,6,4,2}, path of its INT checkpoint, reference outputs per bit)."""
    torch.manual_seed(0)
    model = labkit.quantize_model(build_model("resnet20"), bits=BITS)
    x = make_input(5)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    for b in BITS:
        labkit.set_bits(model, b)
        model(x).square().mean().backward()
    optimizer.step()
    model.eval()
    path = tmp_path_factory.mktemp("good") / "resnet20.safetensors"
    save_int(model, path)
    x = make_input()
    with torch.no_grad():
        reference = {b: labkit.set_bits(model, b)(x) for b in BITS}
    labkit.set_bits(model, 8)
    return model, path, reference


@pytest.fixture
def copy(good, tmp_path):
    """A private copy of the good checkpoint, to damage."""
    target = tmp_path / "copy.safetensors"
    shutil.copyfile(good[1], target)
    return target


def header_length(path):
    with open(path, "rb") as handle:
        return int.from_bytes(handle.read(8), "little")


def rewrite_metadata(source, target, **changes):
    """Write ``source``'s tensors to ``target`` with metadata entries changed (None removes one)."""
    with safe_open(str(source), framework="pt") as handle:
        metadata = dict(handle.metadata())
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    metadata.update(changes)
    save_file(tensors, str(target), metadata={k: v for k, v in metadata.items() if v is not None})
    return target


def expect_load_error(path, *fragments, error=labkit.CheckpointError, good=None, **kwargs):
    """``load_int(path, **kwargs)`` raises one ``error`` naming every fragment and a remedy; the file is unchanged."""
    before = path.read_bytes() if path.is_file() else None
    existed = path.exists()
    try:
        loaded = load_int(path, **kwargs)
    except error as raised:
        caught = raised
        message = str(raised)
    else:
        detail = ""
        if good is not None:  # say how bad the silent load is
            x = make_input()
            differs = [b for b in BITS if not torch.equal(labkit.set_bits(loaded, b)(x), good[2][b])]
            detail = f"; its outputs differ from the saved model's at bits {differs}" if differs else ""
        pytest.fail(f"load_int({path.name}, {kwargs}) did not raise {error.__name__}: it loaded silently{detail}")
    assert caught.__cause__ is None and (caught.__context__ is None or caught.__suppress_context__), \
        "one clear error, not a chain of tracebacks"
    for fragment in fragments:
        assert fragment.lower() in message.lower(), f"{fragment!r} not in: {message}"
    if error is labkit.CheckpointError:
        assert any(remedy in message for remedy in REMEDY), f"no 'what to do' in: {message}"
    if before is not None:
        assert path.read_bytes() == before, "a failed load changed the file"
    else:
        assert path.exists() == existed, "a failed load created or removed something at the path"
    return message


# --------------------------------------------------------------------------------- missing


def test_missing_path(tmp_path):
    missing = tmp_path / "nowhere" / "model.safetensors"
    expect_load_error(missing, "no checkpoint", str(missing), "save_int")
    assert not (tmp_path / "nowhere").exists()


def test_a_folder_is_not_a_checkpoint(tmp_path):
    expect_load_error(tmp_path, "no checkpoint", str(tmp_path))


# --------------------------------------------------------------------------------- another architecture


def test_resnet20_checkpoint_into_preact_resnet20(good):
    _, path, _ = good
    message = expect_load_error(path, "architecture", "resnet20", "preact_resnet20",
                                model=build_model("preact_resnet20"))
    assert "matching" in message


def test_resnet20_checkpoint_into_resnet20_with_100_classes(good):
    _, path, _ = good
    expect_load_error(path, "architecture", "100", model=build_model("resnet20", num_classes=100))


@pytest.mark.parametrize("builder", [preact_resnet20, lambda: resnet20(num_classes=100)], ids=["preact", "classes100"])
def test_another_architecture_without_a_registry_record(good, builder):
    """Models not made by build_model carry no ``labkit_arch``: the tensor shapes and names must catch it."""
    _, path, _ = good
    model = builder()
    assert not hasattr(model, "labkit_arch")
    expect_load_error(path, "another architecture", model=model)


EDITED_ARCHS = {
    "preact_resnet20": {"name": "preact_resnet20", "kwargs": {"num_classes": 10, "width_multiplier": 1.0}},
    "num_classes_100": {"name": "resnet20", "kwargs": {"num_classes": 100, "width_multiplier": 1.0}},
    "width_2": {"name": "resnet20", "kwargs": {"num_classes": 10, "width_multiplier": 2.0}},
    "resnet18": {"name": "resnet18", "kwargs": {"num_classes": 1000}},
    "unknown_name": {"name": "resnet21", "kwargs": {}},
    "unknown_kwarg": {"name": "resnet20", "kwargs": {"depth": 3}},
    "no_name_key": {"kwargs": {"num_classes": 10}},
    "not_a_dict": "resnet20",
}


@pytest.mark.parametrize("edit", list(EDITED_ARCHS))
def test_checkpoint_whose_metadata_arch_was_edited(good, tmp_path, edit):
    """The tensors are a ResNet-20's; the metadata claims something else. One CheckpointError, whatever it says."""
    _, path, _ = good
    edited = rewrite_metadata(path, tmp_path / "edited.safetensors", arch=json.dumps(EDITED_ARCHS[edit]))
    expect_load_error(edited, str(edited))


# --------------------------------------------------------------------------------- truncated


@pytest.mark.parametrize("cut", ["half", "10_bytes", "header_only", "last_byte"])
def test_truncated_file(copy, cut):
    data = copy.read_bytes()
    keep = {"half": len(data) // 2, "10_bytes": 10, "header_only": 8 + header_length(copy),
            "last_byte": len(data) - 1}[cut]
    copy.write_bytes(data[:keep])
    expect_load_error(copy, str(copy), "truncated", "save_int")


# --------------------------------------------------------------------------------- corrupted


@pytest.mark.parametrize("where", ["first_data_byte", "middle", "last_byte"])
def test_flipped_byte_in_tensor_data_is_caught_by_the_checksum(copy, where):
    data = bytearray(copy.read_bytes())
    start = 8 + header_length(copy)
    position = {"first_data_byte": start, "middle": (start + len(data)) // 2, "last_byte": len(data) - 1}[where]
    data[position] ^= 0x10
    copy.write_bytes(bytes(data))
    expect_load_error(copy, str(copy), "corrupted", "checksum", "save_int")


def _header_position(path, needle, offset=0):
    text = path.read_bytes()[8:8 + header_length(path)]
    index = text.find(needle.encode())
    assert index >= 0, needle
    return 8 + index + offset


HEADER_FLIPS = {
    # structure of the safetensors header
    "length_field": (lambda p: 3, 0x40),
    "opening_brace": (lambda p: 8, 0x01),
    "invalid_utf8_in_tensor_index": (lambda p: _header_position(p, '"dtype"', 2), 0xFF),
    "dtype_of_codes": (lambda p: _header_position(p, '"dtype":"I8"', 9), 0x1C),  # I8 -> U8, a valid dtype
    "shape_digit": (lambda p: _header_position(p, '"shape":[16,16,3,3]', 17), 0x01),  # [16,16,3,3] -> [16,16,3,2]
    "offset_digit": (lambda p: _header_position(p, '"data_offsets":[0,', 16), 0x01),  # [0,n] -> [1,n]
    "tensor_name": (lambda p: _header_position(p, "layer2.1.conv1.weight_codes", 3), 0x01),
    "header_padding": (lambda p: 8 + header_length(p) - 1, 0x01),
    # labkit metadata (one JSON string per entry)
    "format": (lambda p: _header_position(p, "labkit-int/1", 0), 0x01),
    "checksum_digit": (lambda p: _header_position(p, '"sha256":"', 12), 0x01),
    "arch_key_name": (lambda p: _header_position(p, '\\"name\\"', 2), 0x01),
    "arch_value": (lambda p: _header_position(p, '\\"resnet20\\"', 8), 0x01),  # resnet20 -> resnet21
    "plan_method": (lambda p: _header_position(p, "double_rounding", 0), 0x01),
    "plan_rounding": (lambda p: _header_position(p, "half_even", 0), 0x01),
    "plan_bits": (lambda p: _header_position(p, '\\"bits\\": [8, 6, 4, 2]', 20), 0x01),  # [8,6,4,2] -> [8,6,4,3]
    "plan_key": (lambda p: _header_position(p, '\\"bn_sources\\"', 2), 0x01),  # "bn_sources" -> "cn_sources"
    "plan_bn_source": (lambda p: _header_position(p, '\\"layer1.0.bn1\\": \\"layer1.0.conv1', 26), 0x01),
    "plan_json_syntax": (lambda p: _header_position(p, '\\"bits\\": [', 10), 0x01),
}


@pytest.mark.parametrize("flip", list(HEADER_FLIPS))
def test_flipped_byte_in_the_header(good, copy, flip):
    """Any damage to the JSON header, structural or in labkit's metadata, must be refused, never loaded
    into a model that then computes something else."""
    locate, mask = HEADER_FLIPS[flip]
    data = bytearray(copy.read_bytes())
    position = locate(copy)
    data[position] ^= mask
    copy.write_bytes(bytes(data))
    expect_load_error(copy, str(copy), good=good)


# --------------------------------------------------------------------------------- not a checkpoint


def test_text_file(tmp_path):
    path = tmp_path / "notes.safetensors"
    path.write_text("These are my notes about Double Rounding, not a checkpoint.\n" * 20)
    expect_load_error(path, str(path), "not a readable labkit INT checkpoint", "save_int")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.safetensors"
    path.write_bytes(b"")
    expect_load_error(path, str(path), "save_int")


def test_torch_save_pickle(good, tmp_path):
    path = tmp_path / "model.pt"
    torch.save(good[0].state_dict(), path)
    expect_load_error(path, str(path), "not a readable labkit INT checkpoint", "save_int")


class _RunsCodeWhenUnpickled:
    marker = None

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_malicious_pickle_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    payload = _RunsCodeWhenUnpickled()
    payload.marker = str(marker)
    for name, write in (("raw.pkl", lambda p: p.write_bytes(pickle.dumps(payload))),
                        ("torch.pt", lambda p: torch.save({"weights": payload}, p))):
        path = tmp_path / name
        write(path)
        expect_load_error(path, str(path))
        assert not marker.exists(), f"loading {name} ran code from a pickle"


def test_safetensors_file_without_labkit_metadata(good, tmp_path):
    path = tmp_path / "plain.safetensors"
    save_file({k: v.contiguous() for k, v in good[0].state_dict().items()}, str(path))
    message = expect_load_error(path, str(path), "safetensors", "not a labkit INT checkpoint", "save_int")
    assert storage.FORMAT in message


def test_safetensors_file_with_another_format(good, tmp_path):
    path = rewrite_metadata(good[1], tmp_path / "other.safetensors", format="labkit-int/999")
    expect_load_error(path, str(path), "labkit-int/999", "save_int")


@pytest.mark.parametrize("entry", ["arch", "plan", "sha256"])
def test_checkpoint_missing_a_metadata_entry(good, tmp_path, entry):
    path = rewrite_metadata(good[1], tmp_path / "partial.safetensors", **{entry: None})
    expect_load_error(path, str(path))


# --------------------------------------------------------------------------------- wrong model= / bits=


def test_model_already_quantized(good):
    model, path, _ = good
    before = {k: v.clone() for k, v in model.state_dict().items()}
    expect_load_error(path, "FP32 model", "already quantized", model=model)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_unregistered_checkpoint_without_model_argument(good, tmp_path):
    anonymous = copy_module.deepcopy(good[0])
    del anonymous.labkit_arch  # as if built by hand, not by build_model
    path = save_int(anonymous, tmp_path / "anon.safetensors")
    expect_load_error(path, "model=", "architecture")


def test_bits_not_in_the_trained_set(good):
    message = expect_load_error(good[1], "bits=5", "[8, 6, 4, 2]", error=labkit.BitWidthError, bits=5)
    assert "trained" in message


def test_bits_above_the_stored_precision(good):
    message = expect_load_error(good[1], "bits=16", "[8, 6, 4, 2]", error=labkit.BitWidthError, bits=16)
    assert "above the stored precision" in message


@pytest.mark.parametrize("case", ["preact_no_arch", "classes100_no_arch", "bits5"])
def test_a_failed_load_leaves_the_given_model_as_it_was(good, case):
    """The FP32 model passed as ``model=`` is the user's: a failed load must not leave it half-quantized
    (a retry with the right checkpoint would then fail with 'already quantized')."""
    _, path, _ = good
    model, kwargs, error = {
        "preact_no_arch": (preact_resnet20(), {}, labkit.CheckpointError),
        "classes100_no_arch": (resnet20(num_classes=100), {}, labkit.CheckpointError),
        "bits5": (build_model("resnet20"), {"bits": 5}, labkit.BitWidthError),
    }[case]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(error):
        load_int(path, model=model, **kwargs)
    replaced = sorted(quantized_layers(model))
    assert not replaced, f"the failed load replaced {len(replaced)} layers of the given model, e.g. {replaced[:3]}"
    assert not hasattr(model, "labkit_quant")
    after = model.state_dict()
    assert set(after) == set(before) and all(torch.equal(before[k], after[k]) for k in before)


# --------------------------------------------------------------------------------- failed saves lose nothing


def _fp32_model():
    return build_model("resnet20")


def _per_bit_scale_model():
    return labkit.quantize_model(build_model("resnet20"), bits=BITS, method="per_bit_scale")


def _any_precision_model():
    return labkit.quantize_model(build_model("resnet20"), bits=BITS, method="any_precision")


@pytest.mark.parametrize("make, fragments", [
    (_fp32_model, ("quantize",)),
    (_per_bit_scale_model, ("per_bit_scale", "FP32 master")),
    (_any_precision_model, ("any_precision", "FP32 master")),
], ids=["not_quantized", "per_bit_scale", "any_precision"])
def test_failed_save_keeps_the_good_checkpoint(good, copy, make, fragments):
    before = copy.read_bytes()
    with pytest.raises(labkit.CheckpointError) as info:
        save_int(make(), copy)
    for fragment in fragments:
        assert fragment in str(info.value)
    assert copy.read_bytes() == before
    assert os.listdir(copy.parent) == [copy.name], "a temporary file was left behind"
    loaded = load_int(copy)
    assert torch.equal(labkit.set_bits(loaded, 4)(make_input()), good[2][4])


def test_a_write_that_dies_half_way_keeps_the_good_checkpoint(good, copy, monkeypatch):
    """Disk full / killed mid-write: the half-written temporary file goes, the old checkpoint stays."""
    before = copy.read_bytes()

    def dies_half_way(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(before[: len(before) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(storage, "save_file", dies_half_way)
    with pytest.raises(OSError):
        save_int(good[0], copy)
    assert copy.read_bytes() == before
    assert os.listdir(copy.parent) == [copy.name], "a temporary file was left behind"
