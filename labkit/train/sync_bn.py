"""Batch norm over the global batch when several processes train one model (``torchrun``, DDP).

Why this module exists
    With DistributedDataParallel each process sees only its shard of every batch. A plain ``nn.BatchNorm2d``
    would then normalise with the statistics of that shard (a smaller, noisier batch) and keep running
    statistics that differ from process to process, so ``torchrun --nproc_per_node=N labkit train ...`` would
    not train like one process with the same global batch. PyTorch's answer, ``nn.SyncBatchNorm``, works on
    CUDA only: on the CPU (the gloo backend the lab uses on laptops and in CI) it raises "SyncBatchNorm
    expected input tensor to be on GPU". :func:`convert_sync_batchnorm` therefore uses ``nn.SyncBatchNorm``
    on CUDA and :class:`GlobalBatchNorm2d` elsewhere.

:class:`GlobalBatchNorm2d` is an ``nn.BatchNorm2d`` (same parameters and buffers, so state_dicts and
checkpoints move freely between single- and multi-process runs) whose batch statistics are those of the
global batch: per channel, the sum and the count, then the sum of squared deviations from the global mean
(two passes, which is more accurate than sum and sum of squares), each summed over the processes with the
*differentiable* all-reduce (``_AllReduceSum``), so that the backward pass carries every
process's share of the gradient through the shared mean and variance. Running statistics are updated as
``nn.BatchNorm2d`` updates them (momentum, or a cumulative average when ``momentum`` is None; the running
variance unbiased over the global count). In eval mode, and whenever no process group is initialised, it is
exactly ``nn.BatchNorm2d``.
"""
from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["GlobalBatchNorm2d", "convert_sync_batchnorm"]


class _AllReduceSum(torch.autograd.Function):
    """Sum over the processes of a group; the backward sums the incoming gradients the same way.

    (``torch.distributed.nn.functional.all_reduce`` does the same but is deprecated in PyTorch 2.x.)
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group)
        return tensor

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        grad = grad_output.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad, None


def _all_reduce_sum(tensor: torch.Tensor, group) -> torch.Tensor:
    """Differentiable sum of ``tensor`` over the processes of ``group`` (None: the default group)."""
    return _AllReduceSum.apply(tensor, group)


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` whose training statistics are those of the batch over all processes (CPU / gloo).

    ``process_group``: the processes to share statistics with (None: the default group). Without an
    initialised process group the module is plain ``nn.BatchNorm2d``.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, process_group=None, device=None, dtype=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device=device, dtype=dtype)
        self.process_group = process_group

    @classmethod
    @torch.no_grad()
    def from_batchnorm(cls, bn: nn.BatchNorm2d, process_group=None) -> "GlobalBatchNorm2d":
        """A GlobalBatchNorm2d holding ``bn``'s parameters and buffers (the same tensors) and settings."""
        weight = bn.weight if bn.weight is not None else bn.running_mean
        factory = {"device": weight.device, "dtype": weight.dtype} if weight is not None else {}
        out = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats, process_group, **factory)
        if bn.affine:
            out.weight, out.bias = bn.weight, bn.bias
        out.running_mean, out.running_var = bn.running_mean, bn.running_var
        out.num_batches_tracked = bn.num_batches_tracked
        out.train(bn.training)
        return out

    def _global(self) -> bool:
        return dist.is_available() and dist.is_initialized()

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        # As nn.BatchNorm2d: batch statistics in training, and also in eval without running statistics.
        use_batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        if not (use_batch_stats and self._global()):
            return super().forward(input)
        self._check_input_dim(input)
        group = self.process_group
        channels = self.num_features
        x = input.float() if input.dtype in (torch.float16, torch.bfloat16) else input
        dims = [0, 2, 3]
        shape = (1, channels, 1, 1)
        # Pass 1: global per-channel sum and count -> mean. (The count rides along in the input's dtype:
        # exact in float32 up to 2^24 values per channel per global batch.)
        local_count = torch.full((1,), float(x.numel() // channels), dtype=x.dtype, device=x.device)
        totals = _all_reduce_sum(torch.cat([x.sum(dims), local_count]), group)
        count = totals[channels:].detach()
        if float(count) <= 1:
            raise ValueError(f"Expected more than 1 value per channel when training over all processes, got "
                             f"{int(float(count))} (local input size {list(input.shape)})")
        mean = totals[:channels] / count
        # Pass 2: global per-channel sum of squared deviations -> biased variance.
        centered = x - mean.view(shape)
        var = _all_reduce_sum((centered * centered).sum(dims), group) / count
        output = centered * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            output = output * self.weight.view(shape) + self.bias.view(shape)
        if self.training and self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach(), count)
        return output.to(input.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, count: torch.Tensor) -> None:
        """``running ← (1 − f) · running + f · batch`` with nn.BatchNorm2d's factor ``f`` and unbiased variance."""
        factor = 0.0 if self.momentum is None else self.momentum
        if self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average
                factor = 1.0 / float(self.num_batches_tracked)
        if self.running_mean is not None:
            unbiased = var * (count / (count - 1))
            self.running_mean.copy_(factor * mean.to(self.running_mean.dtype) + (1 - factor) * self.running_mean)
            self.running_var.copy_(factor * unbiased.to(self.running_var.dtype) + (1 - factor) * self.running_var)

    def extra_repr(self) -> str:
        return super().extra_repr() + ", global batch statistics"


def convert_sync_batchnorm(model: nn.Module, device=None, process_group=None) -> nn.Module:
    """``model`` with every ``nn.BatchNorm2d`` normalising over the global batch of all processes.

    On CUDA this is ``torch.nn.SyncBatchNorm.convert_sync_batchnorm``; elsewhere each ``nn.BatchNorm2d``
    (including those inside :class:`~labkit.nn.SwitchableBatchNorm2d`) becomes a :class:`GlobalBatchNorm2d`
    sharing its parameters and buffers. Call it before creating the optimizer and wrapping in DDP.
    Returns the converted model (a new module only when ``model`` itself is a batch norm).
    """
    if device is None:
        first = next(model.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
    if torch.device(device).type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model, process_group)
    return _convert_cpu(model, process_group)


def _convert_cpu(module: nn.Module, process_group) -> nn.Module:
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, GlobalBatchNorm2d):
        if type(module).forward is not nn.BatchNorm2d.forward:
            warnings.warn(f"{type(module).__name__} overrides forward(); it is left as it is and normalises "
                          "with this process's share of the batch only.", stacklevel=3)
            return module
        return GlobalBatchNorm2d.from_batchnorm(module, process_group)
    for name, child in module.named_children():
        converted = _convert_cpu(child, process_group)
        if converted is not child:
            setattr(module, name, converted)
    return module
