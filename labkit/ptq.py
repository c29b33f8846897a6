"""Double Rounding applied to an existing model after training (reviewers' question, METHOD.md §8).

"Can Double Rounding be applied to an existing INT8 model (post-training)?" — :func:`post_training_multi_precision`
quantizes a trained FP32 model to INT8 with no training at all (weight scales from the weights, activation scales
and per-bit batch-norm statistics calibrated on a few batches), then every lower precision is derived from the
INT8 codes by the second rounding. Comparing its accuracy per bit-width with the jointly trained model measures
how much of "nearly lossless" is the rounding and how much is the joint training.
"""
from __future__ import annotations

import torch

from labkit.convert import quantize_model, set_bits
from labkit.nn import SwitchableBatchNorm2d


def _batch_norms_at(model: torch.nn.Module, bits: int) -> list[torch.nn.BatchNorm2d]:
    """The per-bit batch norms that run when the whole model is at ``bits`` (plain BNs of FP32 layers excluded)."""
    return [module.per_bit[str(bits)] for module in model.modules() if isinstance(module, SwitchableBatchNorm2d)]


@torch.no_grad()
def calibrate(model: torch.nn.Module, images: torch.Tensor, bits, batch_size: int = 128,
              batch_norm: bool = True) -> torch.nn.Module:
    """Set the activation scales of each bit-width from ``images`` and, with ``batch_norm``, re-estimate that
    bit-width's batch-norm statistics on them (cumulative average). No weight changes; batch norms of other
    bit-widths and of the FP32 layers keep their statistics."""
    per_bit = {id(n) for s in model.modules() if isinstance(s, SwitchableBatchNorm2d) for n in s.per_bit.values()}
    frozen = [(m, m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
              for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d) and id(m) not in per_bit]
    for b in bits:
        set_bits(model, b)
        model.eval()
        model(images[:batch_size])  # first use initialises this bit-width's activation scales
        if batch_norm:
            norms = _batch_norms_at(model, b)
            momenta = [norm.momentum for norm in norms]
            for norm in norms:
                norm.reset_running_stats()
                norm.momentum = None
            model.train()
            for start in range(0, len(images), batch_size):
                model(images[start:start + batch_size])
            model.eval()
            for norm, momentum in zip(norms, momenta):
                norm.momentum = momentum
            for m, mean, var, count in frozen:  # the FP32 layers' BNs ran in train mode too: put them back
                m.running_mean.copy_(mean), m.running_var.copy_(var), m.num_batches_tracked.copy_(count)
    return model


def post_training_multi_precision(fp32_model: torch.nn.Module, images: torch.Tensor, bits=(8, 6, 4, 2),
                                  method: str = "double_rounding", rounding: str = "half_even",
                                  batch_norm: bool = True) -> torch.nn.Module:
    """A multi-precision INT8 model made from ``fp32_model`` without training (``method="floor"``: truncation).

    Weight scales use the ``max`` rule on the FP32 weights; activation scales and, with ``batch_norm``, the
    per-bit batch norms are calibrated on ``images``. ``fp32_model`` itself is not changed.
    """
    model = quantize_model(fp32_model, bits=bits, method=method, rounding=rounding).eval()
    return calibrate(model, images, bits, batch_norm=batch_norm)


#: The post-training variants notebook 06 compares with the jointly trained model: (label, method, batch_norm).
VARIANTS = (("post-training, Double Rounding", "double_rounding", False),
            ("post-training, Double Rounding + BN re-estimated", "double_rounding", True),
            ("post-training, floor-truncation + BN re-estimated", "floor", True))


def post_training_comparison(fp32_model: torch.nn.Module, jointly_trained: torch.nn.Module, images: torch.Tensor,
                             dataset, bits=(8, 6, 4, 2)) -> list[dict]:
    """Accuracy per bit-width on ``dataset`` of each post-training variant (calibrated on ``images``) and of the
    jointly trained model; every record also carries the FP32 model's accuracy on the same images (``fp32``)."""
    from labkit.evaluate import accuracy_per_bits

    fp32 = accuracy_per_bits(fp32_model, dataset, [32])[32]
    records = []
    for label, method, batch_norm in VARIANTS:
        model = post_training_multi_precision(fp32_model, images, bits, method=method, batch_norm=batch_norm)
        records.append({"label": label, "accuracy": accuracy_per_bits(model, dataset, bits), "fp32": fp32})
    records.append({"label": "jointly trained", "accuracy": accuracy_per_bits(jointly_trained, dataset, bits),
                    "fp32": fp32})
    return records
