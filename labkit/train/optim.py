"""Parameter groups, optimizers and the learning-rate schedule of joint training (METHOD.md §4)."""
from __future__ import annotations

import math

import torch
from torch import nn

from labkit.train.alrs import scale_parameters

#: Group names. "scales": quantization scales (ALRS applies); "weights": conv/linear weights (weight decay);
#: "no_decay": batch norm parameters, biases and everything else (no weight decay).
GROUPS = ("weights", "scales", "no_decay")


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Split parameters as the reference code does: scales + BN + biases without decay, weights with it."""
    scales = {id(p) for p in scale_parameters(model)}
    groups = {name: [] for name in GROUPS}
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            if id(param) in scales:
                groups["scales"].append(param)
            elif name == "weight" and isinstance(module, (nn.Conv2d, nn.Linear)):
                groups["weights"].append(param)
            else:
                groups["no_decay"].append(param)
    return [
        {"name": "weights", "params": groups["weights"], "weight_decay": weight_decay},
        {"name": "scales", "params": groups["scales"], "weight_decay": 0.0},
        {"name": "no_decay", "params": groups["no_decay"], "weight_decay": 0.0},
    ]


def make_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float, momentum: float = 0.9) -> torch.optim.Optimizer:
    """``"adam"`` (the paper's recipe), ``"adamw"`` or ``"sgd"`` (Nesterov momentum) over :func:`parameter_groups`."""
    groups = [g for g in parameter_groups(model, weight_decay) if g["params"]]
    for group in groups:
        group["base_lr"] = lr
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=momentum > 0)
    raise ValueError(f"optimizer={name!r} is unknown; use 'adam', 'adamw' or 'sgd'.")


def cosine_lr(base_lr: float, step: int, total_steps: int, warmup_steps: int = 0, final_lr: float = 0.0) -> float:
    """Cosine decay from ``base_lr`` to ``final_lr`` over ``total_steps`` (linear warm-up first if asked)."""
    if warmup_steps and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = min(max(step - warmup_steps, 0) / max(total_steps - warmup_steps, 1), 1.0)
    return final_lr + 0.5 * (base_lr - final_lr) * (1.0 + math.cos(math.pi * progress))


def set_learning_rates(optimizer: torch.optim.Optimizer, lr: float, multipliers: dict[str, float] | None = None) -> None:
    """Set every group's learning rate to ``lr`` times its multiplier (ALRS sets the "scales" one)."""
    multipliers = multipliers or {}
    for group in optimizer.param_groups:
        group["lr"] = lr * multipliers.get(group.get("name", ""), 1.0)
