"""Memory cost of joint training (reviewers' question, METHOD.md §8: "memory cost of per-precision passes").

Measured, not estimated: :func:`saved_activation_bytes` counts the bytes autograd keeps for the backward pass of
one forward (``torch.autograd.graph.saved_tensors_hooks``), so it is exact on any device. Alg. A.2 and the lab's
A.1 both run backward after every precision's forward, so only one precision's activations are alive at a
time; summing the losses of all precisions before one backward (the naïve A.1) keeps all of them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from labkit.convert import get_bits, set_bits, trained_bits


def saved_activation_bytes(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> int:
    """Bytes of the tensors autograd saves for backward during one forward + loss (distinct storages once)."""
    seen: dict[int, int] = {}

    def pack(tensor: torch.Tensor):
        storage = tensor.untyped_storage()
        seen[storage.data_ptr()] = max(seen.get(storage.data_ptr(), 0), storage.nbytes())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = F.cross_entropy(model(images), labels)
    del loss
    return sum(seen.values())


def parameter_bytes(model: torch.nn.Module) -> int:
    """Bytes of every parameter and buffer (FP32 masters, scales, per-bit batch norms)."""
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))


def joint_step_memory(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, bits=None) -> dict:
    """Activation memory of one joint step: per precision, per-precision backward (A.1/A.2), one summed backward.

    Returns ``per_bits`` ({bits: bytes}), ``per_precision_backward`` (the largest single pass: what A.1 and A.2
    keep alive), ``summed_backward`` (all passes kept for one backward), ``parameters`` and ``adam_state``
    (two moments per trainable parameter). The model's bit-widths, mode and buffers (BN statistics) are restored.
    ``summed_backward`` adds the per-pass counts, so it counts the input batch once per precision.
    """
    saved = get_bits(model)
    was_training = model.training
    buffers = {name: buffer.clone() for name, buffer in model.named_buffers()}  # train-mode passes move BN stats
    model.train()
    try:
        per_bits = {}
        for b in (bits or trained_bits(model)):
            set_bits(model, b)
            per_bits[b] = saved_activation_bytes(model, images, labels)
    finally:
        set_bits(model, saved)
        model.train(was_training)
        with torch.no_grad():
            for name, buffer in model.named_buffers():
                if name in buffers:
                    buffer.copy_(buffers[name])
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return {"per_bits": per_bits, "per_precision_backward": max(per_bits.values()),
            "summed_backward": sum(per_bits.values()), "parameters": parameter_bytes(model),
            "adam_state": 2 * trainable, "batch": len(labels)}
