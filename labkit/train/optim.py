"""Parameter groups, optimizers and the learning-rate schedule of joint training (METHOD.md §4–5).

Parameters are grouped by *role* (``group["name"]``) and by *precision* (``group["bits"]``): a per-bit
parameter (activation scale, per-bit weight scale, per-bit BN) sits in the group of its bit-width, a shared one
(conv weights, the Double Rounding weight scale) in a group with ``bits=None``. One optimizer step can then give
every precision's own parameters their own learning rate, which Alg. A.1 + ALRS needs (:mod:`labkit.train.alrs`).
With ``shared_scales_per_layer`` every layer's shared weight scale gets a group of its own (``group["layer"]``),
so a SuperNet step can key its ALRS factor on the bit that layer was sampled at.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from labkit.train.alrs import per_bit_parameters, scale_parameters

#: Group roles. "scales": quantization scales (ALRS applies); "weights": conv/linear weights (weight decay);
#: "no_decay": batch norm parameters, biases and everything else (no weight decay).
GROUPS = ("weights", "scales", "no_decay")


def parameter_groups(model: nn.Module, weight_decay: float, shared_scales_per_layer: bool = False) -> list[dict]:
    """Split parameters as the reference code does (scales + BN + biases without decay, weights with it), and
    each role further by precision: ``{"name": role, "bits": b or None, "layer": name or None, "params": [...]}``.

    Order: roles as in :data:`GROUPS`; inside a role the shared group first, then per layer, then high → low bits.
    Empty groups are left out.
    """
    from labkit.convert import quantized_layers

    scales = {id(p) for p in scale_parameters(model)}
    owners = per_bit_parameters(model)
    layer_of: dict[int, tuple[int, str]] = {}
    if shared_scales_per_layer:
        for index, (name, layer) in enumerate(quantized_layers(model).items()):
            for param in layer.weight_quantizer.parameters():
                if id(param) not in owners:
                    layer_of[id(param)] = (index, name)
    buckets: dict[tuple, list] = {}
    seen: set[int] = set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            if id(param) in scales:
                role = "scales"
            elif name == "weight" and isinstance(module, (nn.Conv2d, nn.Linear)):
                role = "weights"
            else:
                role = "no_decay"
            layer = layer_of.get(id(param)) if role == "scales" else None
            buckets.setdefault((role, owners.get(id(param)), layer), []).append(param)

    def order(key):
        role, bits, layer = key
        return GROUPS.index(role), bits is not None, layer[0] if layer else -1, -(bits or 0)

    return [{"name": role, "bits": bits, "layer": layer[1] if layer else None, "params": buckets[(role, bits, layer)],
             "weight_decay": weight_decay if role == "weights" else 0.0}
            for role, bits, layer in sorted(buckets, key=order)]


def make_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float, momentum: float = 0.9,
                   shared_scales_per_layer: bool = False) -> torch.optim.Optimizer:
    """``"adam"`` (the paper's recipe), ``"adamw"`` or ``"sgd"`` (Nesterov momentum) over :func:`parameter_groups`."""
    groups = [g for g in parameter_groups(model, weight_decay, shared_scales_per_layer) if g["params"]]
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


#: Any-Precision DNN's step decay (its CIFAR-10 script: ×0.1 after epochs 100, 150 and 180 of 200), as fractions.
MULTISTEP_MILESTONES = (0.5, 0.75, 0.9)


def multistep_lr(base_lr: float, step: int, total_steps: int, milestones=MULTISTEP_MILESTONES,
                 gamma: float = 0.1) -> float:
    """``base_lr · gamma^k``, k: how many ``milestones`` (fractions of ``total_steps``) ``step`` has reached."""
    return base_lr * gamma ** sum(step >= m * total_steps for m in milestones)


def set_learning_rates(optimizer: torch.optim.Optimizer, lr: float, factor=None) -> None:
    """Set every group's learning rate to ``lr · factor(group)`` (``factor``: a callable, or None for 1 everywhere)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * (factor(group) if factor is not None else 1.0)
