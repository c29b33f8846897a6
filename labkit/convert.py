"""Turn an FP32 model into a multi-precision one, and switch its precision (METHOD.md §4, DESIGN.md).

``quantize_model`` runs one probe forward pass to learn, for every convolution and linear layer, the
order in which it runs and whether its input can be negative (then its activation quantizer is the
signed variant, METHOD.md §2), and which quantized layer feeds each batch norm. That *plan* is a plain
dict (stored in INT checkpoints), so a model can be rebuilt identically without probing again.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from labkit.errors import LayerNameError, BitWidthError
from labkit.nn import QConv2d, QLinear, QuantizedLayer, SwitchableBatchNorm2d, TransitionalBatchNorm2d
from labkit.quant import WEIGHT_METHODS
from labkit.quant.ranges import check_bit_set, check_bits
from labkit.quant.rounding import check_rounding

QUANTIZABLE = (nn.Conv2d, nn.Linear)


def _example_input(model: nn.Module) -> torch.Tensor:
    first = next((m for m in model.modules() if isinstance(m, QUANTIZABLE)), None)
    if first is None:
        raise ValueError("the model has no nn.Conv2d or nn.Linear layer to quantize.")
    device = first.weight.device
    if isinstance(first, nn.Conv2d):
        return torch.randn(2, first.in_channels, 64, 64, device=device)
    return torch.randn(2, first.in_features, device=device)


@torch.no_grad()
def plan_quantization(model: nn.Module, bits=(8, 6, 4, 2), method: str = "double_rounding",
                      rounding: str = "half_even", keep_first_last: bool = True, example_input=None,
                      grad_mode: str = "lsq", act_init: str = "lsq", weight_init: str = "auto") -> dict:
    """Decide what ``quantize_model`` will do, by one probe forward pass in eval mode."""
    bit_set = check_bit_set(bits)
    if method not in WEIGHT_METHODS:
        raise ValueError(f"method={method!r} is unknown; use one of {sorted(WEIGHT_METHODS)}.")
    check_rounding(rounding)
    if example_input is None:
        example_input = _example_input(model)
    executed: list[tuple[str, str]] = []  # (kind, name) in execution order
    signed: dict[str, bool] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, QUANTIZABLE) and not isinstance(module, QuantizedLayer):
            def hook(mod, args, name=name):
                executed.append(("layer", name))
                signed[name] = signed.get(name, False) or bool((args[0] < 0).any())
            handles.append(module.register_forward_pre_hook(hook))
        elif isinstance(module, nn.BatchNorm2d):
            handles.append(module.register_forward_pre_hook(lambda mod, args, name=name: executed.append(("bn", name))))
    was_training = model.training
    model.eval()
    try:
        model(example_input)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    order = list(dict.fromkeys(name for kind, name in executed if kind == "layer"))
    if not order:
        raise ValueError("the probe forward pass ran no nn.Conv2d or nn.Linear layer; nothing to quantize.")
    quantized = order[1:-1] if keep_first_last else order
    bn_sources: dict[str, str] = {}
    last_quantized = None
    for kind, name in executed:
        if kind == "layer":
            last_quantized = name if name in quantized else last_quantized
        elif last_quantized is not None and name not in bn_sources:
            bn_sources[name] = last_quantized
    return {
        "bits": list(bit_set),
        "method": method,
        "rounding": rounding,
        "grad_mode": grad_mode,
        "act_init": act_init,
        "weight_init": weight_init,
        "keep_first_last": keep_first_last,
        "float_layers": [name for name in order if name not in quantized],
        "layers": {name: {"act_signed": signed[name]} for name in quantized},
        "bn_sources": bn_sources,
    }


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def apply_plan(model: nn.Module, plan: dict) -> nn.Module:
    """Replace layers and batch norms of ``model`` (in place) as ``plan`` says."""
    options = dict(bits=tuple(plan["bits"]), method=plan["method"], rounding=plan["rounding"],
                   grad_mode=plan["grad_mode"], act_init=plan["act_init"], weight_init=plan.get("weight_init", "max"))
    for name, layer_plan in plan["layers"].items():
        source = model.get_submodule(name)
        cls = QConv2d if isinstance(source, nn.Conv2d) else QLinear
        _set_submodule(model, name, cls.from_float(source, act_signed=layer_plan["act_signed"], **options))
    for name, source_layer in plan["bn_sources"].items():
        bn = model.get_submodule(name)
        _set_submodule(model, name, SwitchableBatchNorm2d.from_float(bn, options["bits"], source=source_layer))
    model.labkit_quant = copy.deepcopy(plan)
    return model.train(model.training)  # new modules take the model's train/eval mode


def quantize_model(model: nn.Module, bits=(8, 6, 4, 2), method: str = "double_rounding", *,
                   rounding: str = "half_even", keep_first_last: bool = True, example_input=None,
                   grad_mode: str = "lsq", act_init: str = "lsq", weight_init: str = "auto",
                   inplace: bool = False) -> nn.Module:
    """A multi-precision copy of ``model``: conv/linear layers quantized, batch norms switchable.

    Args:
        bits: the bit set trained jointly, e.g. ``(8, 6, 4, 2)``; the highest is stored (Double Rounding).
        method: ``"double_rounding"`` (the paper), or a baseline of METHOD.md §7: ``"floor"``
            (truncation from the stored integers, AdaBits/Bit-Mixer, dequantized at the cell centre),
            ``"floor_naive"`` (the same codes dequantized at the cell bottom, as the authors' ablation),
            ``"matquant"`` (Matryoshka slicing of unsigned min–max codes), ``"per_bit_scale"`` (separate
            learned scales per bit on FP32 masters, MultiQuant / "Ours*"), ``"any_precision"`` (DoReFa on
            FP32 masters), ``"lsq"`` (one dedicated single-precision model).
        rounding: tie rule of the second rounding (``"half_even"`` or ``"half_up"``).
        keep_first_last: keep the first and the last layer in FP32, as the paper does.
        example_input: a batch for the probe pass; by default random data shaped for the first layer.
        grad_mode: ``"lsq"`` or ``"reference"`` scale gradients (see :mod:`labkit.quant.lsq`).
        act_init: ``"lsq"`` or ``"percentile"`` initialisation of activation scales.
        weight_init: initialisation of the weight scales: ``"auto"`` (each method's measured default:
            ``"max"`` for Double Rounding and truncation, LSQ's rule ``"lsq"`` for the per-bit scales of
            ``"per_bit_scale"`` and ``"lsq"``, min–max for ``"matquant"``), ``"max"`` (max|W| per channel, nothing
            clipped), ``"reference"`` (the authors' ``max(|μ ± 3σ|) / 2^(h−1)``, which clips outliers), ``"mse"``
            (the per-channel step of least squared error at each bit-width) or ``"lsq"`` (LSQ's
            ``2 · mean|W| / sqrt(Q_P)``).
        inplace: modify ``model`` itself instead of a deep copy.
    """
    plan = plan_quantization(model, bits, method, rounding, keep_first_last, example_input, grad_mode, act_init,
                             weight_init)
    target = model if inplace else copy.deepcopy(model)
    if hasattr(model, "labkit_arch"):
        target.labkit_arch = copy.deepcopy(model.labkit_arch)
    return apply_plan(target, plan)


def quantized_layers(model: nn.Module) -> dict[str, QuantizedLayer]:
    """The quantized layers of ``model`` by qualified name, in module order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, QuantizedLayer)}


def to_supernet(model: nn.Module, example_input=None) -> nn.Module:
    """Replace every switchable BN by a :class:`TransitionalBatchNorm2d` (in place): the HASB SuperNet.

    The predecessor of a layer is the quantized layer that produced the tensor it reads, found in the data flow
    (:func:`labkit.hasb.graph.layer_predecessors`: torch.fx, or a forward pass of ``example_input`` where fx
    cannot trace the model). Returns ``model``; its plan records ``"supernet": True``.
    """
    from labkit.hasb.graph import layer_predecessors

    plan = getattr(model, "labkit_quant", None)
    if plan is None:
        raise ValueError("the model was not made by labkit.quantize_model; quantize it first.")
    predecessor = layer_predecessors(model, list(plan["layers"]), example_input=example_input)
    for name, module in list(model.named_modules()):
        if isinstance(module, SwitchableBatchNorm2d):
            _set_submodule(model, name, TransitionalBatchNorm2d.from_switchable(module, predecessor.get(module.source)))
    plan["supernet"] = True
    set_bits(model, {name: layer.bits for name, layer in quantized_layers(model).items()})
    return model.train(model.training)  # new modules take the model's train/eval mode


def set_bits(model: nn.Module, bits) -> nn.Module:
    """Switch ``model`` to one bit-width (``set_bits(model, 4)``) or per layer (``{name: bits, ...}``).

    A mapping may name some layers only; the others keep their bit-width. Every switchable batch norm
    follows the layer that feeds it. Returns ``model``.
    """
    layers = quantized_layers(model)
    if not layers:
        raise ValueError("the model has no quantized layers; call labkit.quantize_model(model) first.")
    if isinstance(bits, dict):
        unknown = sorted(set(bits) - set(layers))
        if unknown:
            raise LayerNameError(f"no quantized layer named {unknown}; quantized layers are: {list(layers)}")
        checked = {name: check_bits(value, allowed=layers[name].bit_set, name=f"bits[{name!r}]") for name, value in bits.items()}
        for name, value in checked.items():  # assign only once every entry is valid
            layers[name].bits = value
    else:
        trained = set.intersection(*(set(layer.bit_set) for layer in layers.values()))
        value = check_bits(bits, allowed=trained)
        for layer in layers.values():
            layer.bits = value
    for module in model.modules():
        if hasattr(module, "follow"):  # switchable and transitional batch norms
            module.follow(layers)
    return model


def get_bits(model: nn.Module) -> dict[str, int]:
    """The current bit-width of every quantized layer, by name."""
    return {name: layer.bits for name, layer in quantized_layers(model).items()}


def trained_bits(model: nn.Module) -> tuple[int, ...]:
    """The bit set the model was quantized for, high to low."""
    layers = quantized_layers(model)
    if not layers:
        raise BitWidthError("the model has no quantized layers; call labkit.quantize_model(model) first.")
    return next(iter(layers.values())).bit_set
