"""Top-1 accuracy of a model at each bit-width, and of a saved checkpoint (``labkit eval``)."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from labkit.convert import quantized_layers, set_bits
from labkit.errors import CheckpointError

FP32 = 32  # the key of FP32 results


@torch.no_grad()
def count_correct(model: torch.nn.Module, loader, device=None, amp_bf16: bool = False, channels_last: bool = False,
                  progress: str | None = None) -> tuple[int, int]:
    """(correct top-1 predictions, images) of ``model`` in eval mode over ``loader``."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    correct = total = 0
    for images, labels in tqdm(loader, desc=progress, disable=progress is None, leave=False, dynamic_ncols=True):
        images, labels = images.to(device), labels.to(device)
        if channels_last:
            images = images.to(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp_bf16):
            logits = model(images)
        correct += int((logits.argmax(1) == labels).sum())
        total += labels.numel()
    model.train(was_training)
    return correct, total


def fixed_subset(dataset: Dataset, size: int | None, seed: int = 12345) -> Dataset:
    """A seeded random subset of ``size`` samples (the whole dataset when ``size`` is None or too big)."""
    if size is None or size >= len(dataset):
        return dataset
    generator = torch.Generator().manual_seed(seed)
    return Subset(dataset, sorted(torch.randperm(len(dataset), generator=generator)[:size].tolist()))


def top1(model: torch.nn.Module, dataset: Dataset, batch_size: int = 256) -> float:
    """Top-1 accuracy (%) of ``model`` as it is set now (uniform or mixed bits) on ``dataset``."""
    correct, total = count_correct(model, DataLoader(dataset, batch_size=batch_size, shuffle=False))
    return round(100.0 * correct / max(total, 1), 4)


def accuracy_per_bits(model: torch.nn.Module, dataset: Dataset, bits_list, batch_size: int = 256, workers: int = 0,
                      show_progress: bool = False) -> dict[int, float]:
    """Top-1 accuracy (%) of ``model`` on ``dataset`` at each bit-width of ``bits_list`` (FP32 = 32)."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
    results = {}
    for bits in bits_list:
        if bits != FP32:
            set_bits(model, bits)
        correct, total = count_correct(model, loader, progress=f"{bits}-bit" if show_progress else None)
        results[bits] = round(100.0 * correct / max(total, 1), 4)
    return results


def parse_bits(text, trained) -> list[int]:
    """``"all"`` → the trained bit set; ``"4"`` or ``"8,4"`` → those, each checked against the trained set."""
    if text in (None, "all"):
        return list(trained)
    from labkit.quant.ranges import check_bits

    values = []
    for part in str(text).split(","):
        part = part.strip()
        try:
            value = int(part)
        except ValueError:
            value = part  # check_bits explains what a bit-width must be
        values.append(check_bits(value, allowed=trained))
    return values


_DATASET_OF_MODEL = {"resnet20": "cifar10", "preact_resnet20": "cifar10", "efficientnet_lite0": "imagenette",
                     "resnet18": "imagenet", "resnet50": "imagenet", "mobilenet_v2": "imagenet"}


def _eval_sets(dataset: str, model_name: str, root=None) -> dict[str, Dataset]:
    from labkit import data
    from labkit.config import data_root

    normalization = "efficientnet" if model_name.startswith("efficientnet") else "imagenet"
    makers = {
        "cifar10": lambda: {"test": data.cifar10("test", root=root)},
        "imagenette": lambda: {"imagenette-val": data.imagenette("val", labels="1k", normalization=normalization, root=root),
                               "imagenet-val-sample": data.imagenet_val_sample(normalization, root=root)},
        "imagenette-val": lambda: {"imagenette-val": data.imagenette("val", labels="1k", normalization=normalization, root=root)},
        "imagenet-val-sample": lambda: {"imagenet-val-sample": data.imagenet_val_sample(normalization, root=root)},
        "imagenet": lambda: {"val": data.imagenet_folder(Path(root or data_root()) / "imagenet" / "val",
                                                        False, normalization=normalization)},
    }
    makers["imagenet-val"] = makers["imagenet"]
    if dataset not in makers:
        raise CheckpointError(f"--dataset {dataset!r} is unknown; use one of {sorted(makers)}")
    return makers[dataset]()


def evaluation_sets(dataset: str, model_name: str, root=None) -> dict[str, Dataset]:
    """The evaluation sets of ``dataset`` as the lab reports them (Imagenette: its val split *and* the ImageNet
    val sample, both with 1000-class labels), preprocessed for ``model_name``."""
    return _eval_sets(dataset, model_name, root)


def _fp32_model_of(config: dict) -> torch.nn.Module:
    """The FP32 architecture a run's settings describe (CIFAR ResNets with 10 classes unless set)."""
    from labkit.models import build_model

    kwargs = dict(config.get("model_kwargs") or {})
    if config["model"].startswith(("resnet20", "preact_resnet20")):
        kwargs.setdefault("num_classes", 10)
    return build_model(config["model"], **kwargs)


def load_for_eval(path) -> tuple[torch.nn.Module, str, str | None]:
    """(model, architecture name, dataset of its run or None) from a run folder or a checkpoint file."""
    from labkit.models.imagenet import load_state_dict_file
    from labkit.storage import load_int

    path = Path(path)
    run_dataset = None
    if path.is_dir():
        config_file = path / "config.json"
        if config_file.is_file():
            run_dataset = json.loads(config_file.read_text())["config"]["dataset"]
        if (path / "model_int.safetensors").is_file():
            path = path / "model_int.safetensors"
        elif (path / "model_quantized.pt").is_file() and (path / "plan.json").is_file() and config_file.is_file():
            from labkit.convert import apply_plan

            config = json.loads(config_file.read_text())["config"]
            model = apply_plan(_fp32_model_of(config), json.loads((path / "plan.json").read_text()))
            model.load_state_dict(torch.load(path / "model_quantized.pt", map_location="cpu", weights_only=True))
            return model.eval(), config["model"], run_dataset
        elif (path / "model_fp32.pt").is_file():
            if not config_file.is_file():
                raise CheckpointError(f"{path} has model_fp32.pt but no config.json to say its architecture.")
            config = json.loads(config_file.read_text())["config"]
            model = load_state_dict_file(_fp32_model_of(config), path / "model_fp32.pt")
            return model, config["model"], run_dataset
        else:
            raise CheckpointError(f"{path} holds no model_int.safetensors, model_quantized.pt or model_fp32.pt; is the "
                                  "run finished? (labkit train --resume finishes it)")
    model = load_int(path)
    return model, model.labkit_arch["name"] if getattr(model, "labkit_arch", None) else "unknown", run_dataset


def evaluate_checkpoint(path, bits="all", dataset: str | None = None, subset: int | None = None, root=None,
                        show_progress: bool = True) -> dict:
    """Per-bit top-1 of a checkpoint on its evaluation sets: ``{"accuracy": {set: {bits: top1}}, "images": ...}``."""
    model, arch_name, run_dataset = load_for_eval(path)
    trained = quantized_layers(model) and next(iter(quantized_layers(model).values())).bit_set
    bits_list = parse_bits(bits, trained) if trained else [FP32]
    dataset = dataset or run_dataset or _DATASET_OF_MODEL.get(arch_name)
    if dataset is None:
        raise CheckpointError(f"cannot tell which data set {path} was trained on; pass --dataset.")
    results, images = {}, {}
    for name, eval_set in _eval_sets(dataset, arch_name, root).items():
        eval_set = fixed_subset(eval_set, subset)
        images[name] = len(eval_set)
        results[name] = {str(b): v for b, v in accuracy_per_bits(model, eval_set, bits_list, show_progress=show_progress).items()}
    return {"accuracy": results, "images": images}
