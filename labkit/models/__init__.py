"""The FP32 model zoo: CIFAR ResNet-20 variants and ImageNet networks, built by name."""
from labkit.models.registry import build_model, build_model_from_arch, list_models
from labkit.models.resnet_cifar import preact_resnet20, resnet20

__all__ = ["build_model", "build_model_from_arch", "list_models", "preact_resnet20", "resnet20"]
