"""Activation quantizer: one learned scale per bit-width (METHOD.md §2, paper Eq. 4–5).

After a ReLU, ``q_b = clip(round(X / s_b), 0, 2^b − 1)`` and ``X̂ = q_b · s_b`` (unsigned, zero-point 0).
Activations are not stored, so every bit-width keeps its own scale (no nesting). For inputs that are not
post-ReLU (MobileNetV2 linear bottlenecks, residual sums) the signed variant quantizes ``X − β`` on the
signed b-bit range with a learned offset ``β`` per bit-width (LSQ+, METHOD.md §2 [ref-code]).

Scales are initialised on first use from the data: the LSQ rule ``2 · mean|X| / sqrt(p)`` or, with
``init="percentile"``, the 0.1/99.9 percentile range divided by the number of steps; with the percentile rule
the signed variant's offset maps the code range onto that percentile range (``β = p0.1 − qmin · s``), so only
the tails are clipped on data that is not centred on 0. (With the LSQ rule the offset starts at 0.)

``init="dorefa"`` is Any-Precision DNN's activation quantizer (DoReFa-Net's, METHOD.md §7), not an initialisation
of a learned scale: ``X̂ = round((2^b − 1) · clamp(X, 0, 1)) / (2^b − 1)`` with a straight-through round, i.e. the
same fake-quantizer on ``clamp(X, 0, 1)`` with the step fixed at ``1 / (2^b − 1)``, not trained (unsigned inputs).

``relu_first`` (set by ``quantize_model``, :mod:`labkit.relu_absorption`) means the input is the *input* of a ReLU
whose output only this quantizer reads: the quantizer computes that ReLU itself, with the same values and gradients.
:meth:`ActivationQuantizer.relu_and_quantize` serves a ReLU whose output this quantizer reads among others
(``labkit.nn.ReLUWithQuantizedCopy``): it computes the ReLU and this quantizer's output together and keeps the
latter for the quantizer's next call on that very tensor.
"""
from __future__ import annotations

import weakref

import torch
from torch import nn

from labkit.quant.lsq import fake_quantize, lsq_grad_scale, relu_and_fake_quantize, relu_pairing_applies
from labkit.quant.ranges import check_bit_set, check_bits, int_range

INIT_RULES = ("lsq", "percentile", "dorefa")

# quantizer -> (input, its key, output) from relu_and_quantize, for that quantizer's next call. Outside the module, so
# a copy or a pickle of the model never carries tensors of an unfinished forward pass.
_PREPARED: "weakref.WeakKeyDictionary[ActivationQuantizer, tuple]" = weakref.WeakKeyDictionary()


def _outside_backward_and_checkpoints() -> bool:
    """No backward pass is running (a reentrant checkpoint recomputes its segment inside one) and no saved-tensor hooks
    are on (a non-reentrant checkpoint's segment). A ReLU pairs only then, and its layer uses the kept output only then:
    a checkpointed segment must save the same tensors when it is recomputed. Private autograd queries (torch 2.14);
    where they are missing, nothing pairs."""
    try:
        return torch._C._current_graph_task_id() == -1 and \
            torch._C._autograd._top_saved_tensors_default_hooks(False) is None
    except (AttributeError, RuntimeError, TypeError):
        return False


def _world_size() -> int:
    """Processes training together (1 without an initialised torch.distributed process group)."""
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class ActivationQuantizer(nn.Module):
    """Per-bit LSQ activation quantizer, unsigned (after ReLU) or signed with a learned offset."""

    #: The input is a ReLU's input, and the ReLU runs inside the fake-quant (set by :mod:`labkit.relu_absorption`).
    relu_first = False

    def __init__(self, bits=(8, 6, 4, 2), signed: bool = False, init: str = "lsq"):
        super().__init__()
        if init not in INIT_RULES:
            raise ValueError(f"init={init!r} is unknown; use one of {list(INIT_RULES)}.")
        self.bit_set = check_bit_set(bits)
        self.signed = bool(signed)
        self.init = init
        # One parameter per bit-width, so an optimizer step at one precision leaves the others untouched.
        self.scale = nn.ParameterDict({str(b): nn.Parameter(torch.ones(())) for b in self.bit_set})
        self.offset = nn.ParameterDict({str(b): nn.Parameter(torch.zeros(())) for b in self.bit_set}) if self.signed else None
        self.register_buffer("initialized", torch.zeros(len(self.bit_set), dtype=torch.bool))
        self._flags_seen: tuple | None = None  # ((id, version) of `initialized`, its values) last read
        if init == "dorefa":
            self._fix_dorefa_range()

    @torch.no_grad()
    def _fix_dorefa_range(self) -> None:
        """DoReFa activations: the range [0, 1] in ``2^b − 1`` steps, fixed (the step is not a learned parameter)."""
        if self.signed:
            from labkit.config import ConfigError

            raise ConfigError("act_init='dorefa' (Any-Precision / DoReFa activations) clamps the input to [0, 1]; "
                              "it needs unsigned (post-ReLU) inputs, and this layer's can be negative. Use "
                              "act_init='lsq' for this model.")
        for bits in self.bit_set:
            self.scale[str(bits)].fill_(1.0 / int_range(bits, signed=False)[1]).requires_grad_(False)
        self.initialized.fill_(True)

    def is_initialized(self, bits: int) -> bool:
        """Whether the scale of ``bits`` was set from data. Reads the ``initialized`` buffer only when it changed
        (its version counter moved, or it was replaced), so a forward pass does not wait for a GPU to answer."""
        index = self.index(bits)
        flags = self.initialized
        try:
            key = (id(flags), flags._version)
        except RuntimeError:  # an inference-mode tensor keeps no version counter: read it
            return bool(flags[index])
        if self._flags_seen is None or self._flags_seen[0] != key:
            self._flags_seen = (key, flags.tolist())
        return self._flags_seen[1][index]

    def index(self, bits: int) -> int:
        return self.bit_set.index(check_bits(bits, allowed=self.bit_set))

    @torch.no_grad()
    def initialize(self, x: torch.Tensor, bits: int) -> None:
        """Set the scale of ``bits`` from a batch (and, with the percentile rule, the offset of the signed variant so
        that its code range covers the percentile range: the range is centred on the data, not on 0)."""
        index = self.index(bits)
        qmin, qmax = int_range(bits, signed=self.signed)
        x = x.detach()
        x = x if x.dtype == torch.float64 else x.float()
        if self.signed:
            self.offset[str(bits)].zero_()
        if self.init == "percentile":
            sample = x.flatten()
            if sample.numel() > 1_000_000:
                sample = sample[torch.randperm(sample.numel(), device=sample.device)[:1_000_000]]
            low, high = torch.quantile(sample, torch.tensor([0.001, 0.999], device=sample.device))
            if not self.signed:
                low = low.clamp_min(0.0)
            scale = ((high - low) / (qmax - qmin)).clamp_min(1e-8)
            # Signed: the offset maps the code range onto the percentile range, qmin·s + β = low and
            # qmax·s + β = high, so data that is not centred on 0 (e.g. in [−1, 5]) is not clipped.
            offset = low - qmin * scale if self.signed else None
            if self.training and _world_size() > 1:  # every process starts from rank 0's scale (and offset)
                packed = torch.stack([scale, offset if offset is not None else scale]).to(x.dtype).contiguous()
                torch.distributed.broadcast(packed, src=0)
                scale, offset = packed[0], (packed[1] if offset is not None else None)
            if offset is not None:
                self.offset[str(bits)].copy_(offset)
        else:
            # Under DDP every process must start from the same scale: that of the global batch.
            totals = torch.stack([x.abs().sum(dtype=torch.float64),
                                  torch.tensor(float(x.numel()), dtype=torch.float64, device=x.device)])
            if self.training and _world_size() > 1:
                torch.distributed.all_reduce(totals)
            scale = 2 * totals[0] / totals[1] / (qmax ** 0.5)
        self.scale[str(bits)].copy_(scale.clamp_min(1e-8))
        self.initialized[index] = True

    def can_absorb_relu(self) -> bool:
        """Whether a ReLU before this quantizer can run inside it: unsigned LSQ codes (a learned scale, no clamp
        to [0, 1] first)."""
        return not self.signed and self.init in ("lsq", "percentile")

    def _grad_factor(self, x: torch.Tensor, qmax: int) -> float:
        # N of LSQ's g = 1/sqrt(N p) is the activations this scale covers in the (global) batch.
        return lsq_grad_scale(x.numel() * (_world_size() if self.training else 1), qmax)

    def _prepared_key(self, x: torch.Tensor, bits: int) -> tuple:
        """What must be the same when the kept output is used: the bit-width, the tensor's and the scale's versions
        (nothing wrote to either in between), grad mode, train/eval mode, and no backward or checkpoint around."""
        scale = self.scale[str(bits)]
        return (bits, x._version, scale._version, id(scale), torch.is_grad_enabled(), self.training,
                _outside_backward_and_checkpoints())

    def relu_and_quantize(self, x: torch.Tensor, bits: int) -> torch.Tensor:
        """``relu(x)``; in training mode, where the fused kernels run (:func:`labkit.quant.lsq.relu_pairing_applies`),
        this quantizer's output on it is computed in the same loop and kept for this quantizer's next call with that
        very tensor, at the same bit-width (else it is dropped and the call quantizes as always). Same values and
        gradients as a ReLU followed by this quantizer (:func:`labkit.quant.lsq.relu_and_fake_quantize`).

        Not inside a backward pass or a checkpointed segment (:func:`_outside_backward_and_checkpoints`), and not where
        the scale lives on another device than ``x`` (a ``DataParallel`` replica, whose ReLU still names the original
        layer). Not in evaluation mode: there a gradient is wanted for HASB's Hessian traces (``create_graph=True``), and a
        second derivative through the paired node sums its terms in another order than through a separate ReLU (the
        same value to float rounding, ~1e-5 relative, not the same bits)."""
        _PREPARED.pop(self, None)
        scale = self.scale[str(bits)]
        if not self.training or self.relu_first or not self.can_absorb_relu() or not self.is_initialized(bits) or \
                not relu_pairing_applies(x, scale) or scale.device != x.device or not _outside_backward_and_checkpoints():
            return torch.relu(x)
        qmin, qmax = int_range(bits, signed=False)
        rectified, out = relu_and_fake_quantize(x, scale, qmin, qmax, grad_factor=self._grad_factor(x, qmax))
        _PREPARED[self] = (rectified, self._prepared_key(rectified, bits), out)
        return rectified

    def forward(self, x: torch.Tensor, bits: int) -> torch.Tensor:
        prepared = _PREPARED.pop(self, None) if _PREPARED else None
        if prepared is not None and prepared[0] is x and prepared[1] == self._prepared_key(x, bits):
            return prepared[2]
        if self.relu_first and not self.can_absorb_relu():
            from labkit.config import ConfigError

            raise ConfigError(f"relu_first is set on an activation quantizer with signed={self.signed}, "
                              f"init={self.init!r}; only unsigned LSQ quantizers take a ReLU in. Set "
                              "relu_first = False and put the ReLU back.")
        if self.init == "dorefa":  # clamp first, as DoReFa does: no gradient above 1 (not even within half a step)
            x = x.clamp(0.0, 1.0)
        if not self.is_initialized(bits):
            self.initialize(torch.relu(x.detach()) if self.relu_first else x, bits)  # no graph node (checkpoints)
        qmin, qmax = int_range(bits, signed=self.signed)
        grad_factor = self._grad_factor(x, qmax)
        scale = self.scale[str(bits)]
        if self.offset is None:
            return fake_quantize(x, scale, qmin, qmax, grad_factor=grad_factor, relu_first=self.relu_first)
        offset = self.offset[str(bits)]
        return fake_quantize(x - offset, scale, qmin, qmax, grad_factor=grad_factor) + offset

    def extra_repr(self) -> str:
        relu = ", relu_first=True" if self.relu_first else ""
        return f"bits={list(self.bit_set)}, signed={self.signed}, init={self.init!r}{relu}"
