"""The FP32 model zoo: sizes checked against hand formulas, JSON architecture round trips, real pretrained weights."""
import functools
import json
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from labkit.errors import CheckpointError
from labkit.models import build_model, build_model_from_arch, list_models, preact_resnet20, resnet20
from labkit.models.imagenet import EFFICIENTNET_LITE0_PREPROCESSING, efficientnet_lite0_weights_path
from labkit.models.resnet_cifar import ZeroPadShortcut

ALL_MODELS = ["resnet20", "preact_resnet20", "resnet18", "resnet50", "mobilenet_v2", "efficientnet_lite0"]
EVAL_IMAGES = 40


@functools.lru_cache(maxsize=None)
def default_model(name):
    """One shared default build per name, for tests that only read the model."""
    return build_model(name)


def count_parameters(model):
    return sum(p.numel() for p in model.parameters())


def resnet20_parameters_by_hand(c1, c2, c3, classes, preactivation=False):
    """ResNet-20 size from its layer list: 3x3 convs without bias, 2 parameters per BN channel, a linear head."""
    convs = 9 * (3 * c1 + 6 * c1 * c1 + c1 * c2 + 5 * c2 * c2 + c2 * c3 + 5 * c3 * c3)
    if preactivation:  # each block normalises its input and its middle; one BN after the last block
        bn_channels = (6 * c1) + (c1 + 5 * c2) + (c2 + 5 * c3) + c3
    else:  # stem BN, then two BNs on each block's output channels
        bn_channels = c1 + 6 * c1 + 6 * c2 + 6 * c3
    return convs + 2 * bn_channels + c3 * classes + classes


# ----------------------------------------------------------------------------------- CIFAR ResNet-20


def test_resnet20_has_the_published_size():
    assert count_parameters(resnet20()) == 269_722  # "0.27M" in He et al. 2016, Table 6


@pytest.mark.parametrize("preactivation", [False, True])
@pytest.mark.parametrize("width, classes", [(1.0, 10), (0.5, 100), (2.0, 10)])
def test_resnet20_size_matches_hand_formula(preactivation, width, classes):
    builder = preact_resnet20 if preactivation else resnet20
    model = builder(num_classes=classes, width_multiplier=width)
    c1, c2, c3 = (int(round(c * width)) for c in (16, 32, 64))
    assert count_parameters(model) == resnet20_parameters_by_hand(c1, c2, c3, classes, preactivation)


@pytest.mark.parametrize("builder", [resnet20, preact_resnet20])
def test_resnet20_structure_and_output_shape(builder):
    model = builder(num_classes=10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 19 and len([m for m in model.modules() if isinstance(m, nn.Linear)]) == 1
    layers = [name for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert layers[0] == "conv1" and layers[-1] == "fc"  # registration order = execution order
    model.eval()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_option_a_shortcut_subsamples_and_pads_zero_channels():
    x = torch.randn(2, 16, 8, 8)
    y = ZeroPadShortcut(16, 32, stride=2)(x)
    assert y.shape == (2, 32, 4, 4)
    assert torch.equal(y[:, :16], x[:, :, ::2, ::2]) and not y[:, 16:].any()


@pytest.mark.parametrize("builder", [resnet20, preact_resnet20])
def test_every_relu_is_its_own_out_of_place_module(builder):
    model = builder()
    calls = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.ReLU):
            assert not module.inplace, name
            module.register_forward_hook(lambda m, i, o, name=name: calls.__setitem__(name, calls.get(name, 0) + 1))
    model(torch.randn(1, 3, 32, 32))
    assert calls and set(calls.values()) == {1}
    assert len(calls) == sum(isinstance(m, nn.ReLU) for m in model.modules())


def test_resnet20_kaiming_init():
    conv = resnet20().layer3[1].conv1  # 64 -> 64, fan_out = 64 * 9
    expected_std = (2.0 / (64 * 9)) ** 0.5
    assert abs(conv.weight.std().item() / expected_std - 1) < 0.05


# ----------------------------------------------------------------------------------- ImageNet models


@pytest.mark.parametrize(
    "name, millions", [("resnet18", 11.69), ("resnet50", 25.56), ("mobilenet_v2", 3.50), ("efficientnet_lite0", 4.65)]
)
def test_imagenet_model_sizes(name, millions):
    assert round(count_parameters(default_model(name)) / 1e6, 2) == millions


@pytest.mark.parametrize("name", ALL_MODELS)
def test_all_weights_live_in_swappable_modules(name):
    """quantize_model swaps modules, so every weight must sit in a Conv2d, Linear or BatchNorm2d module."""
    for module_name, module in default_model(name).named_modules():
        if isinstance(module, (nn.ReLU, nn.ReLU6)):
            assert not module.inplace, module_name
        if any(True for _ in module.parameters(recurse=False)):
            assert isinstance(module, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)), (module_name, type(module))


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "mobilenet_v2"])
def test_torchvision_pretrained_flag_explains_the_offline_route(name):
    with pytest.raises(ValueError, match="weights="):
        build_model(name, pretrained=True)


def test_torchvision_weights_from_a_local_file(tmp_path):
    source = build_model("resnet18")
    path = tmp_path / "resnet18.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)

    loaded = build_model("resnet18", weights=str(path))
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), loaded.state_dict().values()))
    assert "weights" not in loaded.labkit_arch["kwargs"]

    fine_tune = build_model("resnet18", num_classes=10, weights=path)  # new head, pretrained body
    assert torch.equal(fine_tune.conv1.weight, source.conv1.weight) and fine_tune.fc.out_features == 10

    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        build_model("resnet18", weights=tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="another architecture"):
        build_model("mobilenet_v2", weights=path)


def test_efficientnet_lite0_loads_the_packaged_weights():
    model = build_model("efficientnet_lite0")
    shipped = torch.load(efficientnet_lite0_weights_path(), map_location="cpu", weights_only=True)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in shipped.items())
    assert len(shipped) == len(model.state_dict())
    assert model.labkit_arch["preprocessing"]["mean"] == [0.5, 0.5, 0.5]
    assert model.labkit_arch["preprocessing"]["std"] == [0.5, 0.5, 0.5]
    new_head = build_model("efficientnet_lite0", num_classes=10)
    assert torch.equal(new_head._conv_stem.weight, shipped["_conv_stem.weight"])


# ----------------------------------------------------------------------------------- registry


def test_list_models_names_all_six():
    assert list_models() == sorted(ALL_MODELS)


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(ValueError, match="resnet20.*") as error:
        build_model("resnet21")
    assert all(name in str(error.value) for name in ALL_MODELS)


def test_unknown_argument_is_a_clear_type_error():
    with pytest.raises(TypeError, match="num_classes"):
        build_model("resnet20", classes=10)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_architecture_round_trips_through_json(name):
    model = build_model(name, num_classes=5).eval()
    text = json.dumps(model.labkit_arch)
    assert json.loads(text)["name"] == name

    rebuilt = build_model_from_arch(text).eval()
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    assert rebuilt.labkit_arch == model.labkit_arch
    x = torch.randn(1, 3, 32, 32)  # every model pools globally, so a small input exercises all its layers
    with torch.no_grad():
        out = model(x)
        torch.testing.assert_close(rebuilt(x), out, rtol=0, atol=0)
    assert out.shape == (1, 5)


def test_rebuild_keeps_width_and_skips_pretrained_loading():
    model = build_model("resnet20", num_classes=100, width_multiplier=0.5)
    assert model.labkit_arch == {"name": "resnet20", "kwargs": {"num_classes": 100, "width_multiplier": 0.5}}
    assert build_model_from_arch(model.labkit_arch).fc.weight.shape == (100, 32)

    pretrained = build_model("efficientnet_lite0")
    fresh = build_model_from_arch(pretrained.labkit_arch)
    assert not torch.equal(fresh._conv_stem.weight, pretrained._conv_stem.weight)


# ----------------------------------------------------------------------------------- real ImageNet images


def _data_root() -> Path:
    """LABKIT_DATA, else ../shared/data next to the repository (where this machine keeps its data)."""
    env = os.environ.get("LABKIT_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _wnid_to_index(classes_file: Path) -> dict:
    """imagenet_classes.txt: line i is 'wnid<TAB>name' of ImageNet-1K class i."""
    lines = classes_file.read_text().splitlines()
    return {line.split("\t")[0]: index for index, line in enumerate(lines) if line.strip()}


def _evenly_spread_images(folder: Path, count: int) -> list:
    files = sorted(folder.glob("*/*.JPEG"))
    step = max(1, len(files) // count)
    return files[::step][:count]


def test_pretrained_efficientnet_lite0_classifies_real_imagenet_images():
    from PIL import Image
    from torchvision import transforms

    root = _data_root()
    sample, classes_file = root / "imagenet-val-sample", root / "imagenet_classes.txt"
    if not sample.is_dir() or not classes_file.is_file():
        pytest.skip(
            f"ImageNet val sample not found: expected {sample}/<wnid>/*.JPEG and {classes_file}; "
            "set LABKIT_DATA to the folder that holds them."
        )
    wnid_to_index = _wnid_to_index(classes_file)
    assert len(wnid_to_index) == 1000
    files = _evenly_spread_images(sample, EVAL_IMAGES)
    assert len(files) == EVAL_IMAGES

    p = EFFICIENTNET_LITE0_PREPROCESSING
    preprocess = transforms.Compose([
        transforms.Resize(p["resize"]),
        transforms.CenterCrop(p["crop"]),
        transforms.ToTensor(),
        transforms.Normalize(p["mean"], p["std"]),
    ])
    images = torch.stack([preprocess(Image.open(f).convert("RGB")) for f in files])
    labels = torch.tensor([wnid_to_index[f.parent.name] for f in files])

    model = build_model("efficientnet_lite0").eval()
    with torch.no_grad():
        top1 = (model(images).argmax(dim=1) == labels).float().mean().item()
    assert top1 > 0.6, f"top-1 {top1:.3f} on {EVAL_IMAGES} images; the full 1300-image sample gives 0.825"
