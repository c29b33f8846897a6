"""What a mixed-precision allocation costs: MACs, BitOPs and weight size per layer (METHOD.md §6, step 4).

The paper constrains only the average bit-width; BitOPs and model size are the budgets hardware cares
about. ``layer_costs`` measures, by one probe forward pass, the multiply-accumulates (MACs) per image
and the weight count of every ``nn.Conv2d`` / ``nn.Linear`` (quantized or not). Then

- BitOPs of a layer = MACs × weight bits × activation bits; in HASB a layer's weights and its input
  activation share one bit-width, so a layer at b bits costs MACs · b²;
- weight size of a layer = weights × bits (biases, batch norms and scales are not counted).

Totals for an allocation ``{layer: bits}`` count every measured layer that the allocation does not
name, the FP32 first and last layers for instance, at ``FLOAT_BITS = 32`` bits for weights and
activations alike.
"""
from __future__ import annotations

import copy
from typing import Mapping, NamedTuple

import torch
from torch import nn

from labkit.errors import ExampleInputError

FLOAT_BITS = 32  # weights and activations of a layer that is not quantized


class LayerCost(NamedTuple):
    """Cost of one conv/linear layer: MACs per image (for the probe's input size) and weight count (no bias)."""

    macs: int
    params: int


def bitops(macs, weight_bits, act_bits=None):
    """BitOPs of a layer: ``macs × weight_bits × act_bits`` (``act_bits`` defaults to ``weight_bits``, as in HASB)."""
    return macs * weight_bits * (weight_bits if act_bits is None else act_bits)


def model_size_bits(params, bits):
    """Storage of ``params`` weights at ``bits`` bits each, in bits (divide by 8·2²⁰ for MiB)."""
    return params * bits


def _probe_input(model: nn.Module, example_input) -> torch.Tensor:
    """The batch to probe with: ``example_input`` itself, or one random image of the shape it gives, or (``None``)
    of the shape the model states (:func:`labkit.convert.known_input_shape`); MACs depend only on the shape.
    Nothing is guessed: without any of these, :class:`~labkit.errors.ExampleInputError`."""
    from labkit.convert import example_input_for

    if isinstance(example_input, torch.Tensor):
        return example_input
    if example_input is None:
        return example_input_for(model, batch=1)
    if isinstance(example_input, (tuple, list, torch.Size)) and example_input and all(
            isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in example_input):
        parameter = next(model.parameters(), None)
        device = parameter.device if parameter is not None else "cpu"
        return torch.randn(1, *example_input, device=device)  # a shape such as (3, 32, 32): one image
    raise ExampleInputError(f"layer_costs needs example_input: a batch the model accepts (e.g. one batch of your "
                            f"data) or one image's shape such as (3, 32, 32); got {example_input!r}.")


@torch.no_grad()
def layer_costs(model: nn.Module, example_input=None) -> dict[str, LayerCost]:
    """``{name: LayerCost(macs, params)}`` of every conv/linear layer that runs on ``example_input``.

    ``example_input`` is a batch (MACs are divided by its size) or one image's shape such as ``(3, 32, 32)``;
    ``None`` takes the shape the model states (``model.input_shape``, or the image size of a
    ``labkit.models.build_model`` model), else raises :class:`~labkit.errors.ExampleInputError`.
    MACs of a convolution are ``C_out·H_out·W_out · (C_in/groups)·k_h·k_w``, of a linear layer
    ``out_features · in_features`` per input row; biases are not counted. The probe runs on a copy of
    the model in eval mode, so the model itself (lazily initialised activation scales, batch-norm
    statistics) is left as it was. A layer that runs twice counts twice; a layer that never runs is absent.
    """
    probe = copy.deepcopy(model).eval()
    x = _probe_input(probe, example_input)
    images = x.shape[0]
    macs: dict[str, int] = {}
    params: dict[str, int] = {}
    handles = []
    for name, module in probe.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            def hook(mod, args, output, name=name):
                # every output element is one dot product over weight[c_out] (C_in/groups·k_h·k_w or in_features)
                macs[name] = macs.get(name, 0) + output.numel() // images * mod.weight[0].numel()
                params[name] = mod.weight.numel()
            handles.append(module.register_forward_hook(hook))
    try:
        probe(x)
    except RuntimeError as error:  # typically a shape mismatch deep inside the model
        raise ExampleInputError(
            f"the model does not run on an input of shape {tuple(x.shape)} ({error}); pass "
            "example_input=<a batch the model accepts> or the shape of one of its images.") from error
    finally:
        for handle in handles:
            handle.remove()
    return {name: LayerCost(macs[name], params[name]) for name in macs}


def _check_names(costs: Mapping[str, LayerCost], allocation: Mapping[str, int]) -> None:
    unknown = [name for name in allocation if name not in costs]
    if unknown:
        raise KeyError(f"no measured cost for layers {unknown}; measured layers are {list(costs)} "
                       "(run labkit.hasb.cost.layer_costs on the same model).")


def total_bitops(costs: Mapping[str, LayerCost], allocation: Mapping[str, int], float_bits: int = FLOAT_BITS) -> int:
    """BitOPs per image of the model at ``allocation``; layers it does not name count at ``float_bits`` (FP32)."""
    _check_names(costs, allocation)
    return sum(bitops(cost.macs, allocation.get(name, float_bits)) for name, cost in costs.items())


def total_size_bits(costs: Mapping[str, LayerCost], allocation: Mapping[str, int], float_bits: int = FLOAT_BITS) -> int:
    """Weight storage in bits at ``allocation``; layers it does not name count at ``float_bits`` (FP32)."""
    _check_names(costs, allocation)
    return sum(model_size_bits(cost.params, allocation.get(name, float_bits)) for name, cost in costs.items())
