"""Build models by name and record how, so an INT checkpoint can store its architecture as JSON.

``build_model("resnet20", num_classes=10)`` returns the model with ``model.labkit_arch`` set to
``{"name": "resnet20", "kwargs": {"num_classes": 10, "width_multiplier": 1.0}}`` (every architecture
argument, defaults included). ``build_model_from_arch(model.labkit_arch)`` makes the same architecture
again, ready for ``load_state_dict``. Arguments that only choose initial values (``weights``,
``pretrained``) are not part of the architecture and are not recorded.
"""
from __future__ import annotations

import inspect
import json
from typing import Callable, NamedTuple

from torch import nn

from labkit.models import imagenet, resnet_cifar

INIT_ONLY_ARGUMENTS = ("weights", "pretrained")


class ModelSpec(NamedTuple):
    builder: Callable[..., nn.Module]
    dataset: str  # what the default head is for
    preprocessing: dict | None  # input pipeline the weights expect, when the weights fix it


MODELS: dict[str, ModelSpec] = {
    "resnet20": ModelSpec(resnet_cifar.resnet20, "cifar10", None),
    "preact_resnet20": ModelSpec(resnet_cifar.preact_resnet20, "cifar10", None),
    "resnet18": ModelSpec(imagenet.resnet18, "imagenet", imagenet.TORCHVISION_PREPROCESSING),
    "resnet50": ModelSpec(imagenet.resnet50, "imagenet", imagenet.TORCHVISION_PREPROCESSING),
    "mobilenet_v2": ModelSpec(imagenet.mobilenet_v2, "imagenet", imagenet.TORCHVISION_PREPROCESSING),
    "efficientnet_lite0": ModelSpec(
        imagenet.efficientnet_lite0, "imagenet", imagenet.EFFICIENTNET_LITE0_PREPROCESSING
    ),
}


def list_models() -> list[str]:
    """Names ``build_model`` accepts."""
    return sorted(MODELS)


def _spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    return MODELS[name]


def _architecture_kwargs(name: str, builder: Callable, kwargs: dict) -> dict:
    """All architecture arguments of one build (defaults filled in), checked to be JSON-serialisable."""
    try:
        bound = inspect.signature(builder).bind(**kwargs)
    except TypeError as error:
        raise TypeError(f"build_model({name!r}, ...): {error}; {name} accepts {inspect.signature(builder)}") from None
    bound.apply_defaults()
    recorded = {k: v for k, v in bound.arguments.items() if k not in INIT_ONLY_ARGUMENTS}
    try:
        json.dumps(recorded)
    except TypeError as error:
        raise TypeError(f"build_model({name!r}, ...) needs JSON-serialisable arguments: {error}") from None
    return recorded


def build_model(name: str, **kwargs) -> nn.Module:
    """Build the FP32 model ``name`` (see ``list_models()``) and attach its ``labkit_arch`` record."""
    spec = _spec(name)
    arch_kwargs = _architecture_kwargs(name, spec.builder, kwargs)
    model = spec.builder(**kwargs)
    model.labkit_arch = {"name": name, "kwargs": arch_kwargs}
    if spec.preprocessing is not None:
        model.labkit_arch["preprocessing"] = {k: list(v) if isinstance(v, tuple) else v
                                              for k, v in spec.preprocessing.items()}
    return model


def build_model_from_arch(arch: dict | str) -> nn.Module:
    """Rebuild the architecture recorded in ``labkit_arch`` (a dict or its JSON text), randomly initialised.

    No weights are loaded (not even packaged pretrained ones): the caller loads a state_dict next.
    """
    if isinstance(arch, str):
        arch = json.loads(arch)
    if not isinstance(arch, dict) or "name" not in arch:
        raise ValueError(f"an architecture record is {{'name': ..., 'kwargs': {{...}}}}, got {arch!r}")
    kwargs = dict(arch.get("kwargs") or {})
    builder = _spec(arch["name"]).builder
    if "pretrained" in inspect.signature(builder).parameters:
        kwargs["pretrained"] = False
    return build_model(arch["name"], **kwargs)
