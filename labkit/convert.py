"""Turn an FP32 model into a multi-precision one, and switch its precision (METHOD.md §4, DESIGN.md).

``quantize_model`` runs one probe forward pass (on ``example_input``, or on random data of the model's known
input shape: never a guessed one) to learn, for every convolution and linear layer, the
order in which it runs and whether its input can be negative (then its activation quantizer is the
signed variant, METHOD.md §2), and which quantized layer feeds each batch norm. That *plan* is a plain
dict (stored in INT checkpoints), so a model can be rebuilt identically without probing again.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from labkit.errors import BitWidthError, ExampleInputError, LayerNameError
from labkit.nn import QConv2d, QLinear, QuantizedLayer, SwitchableBatchNorm2d, TransitionalBatchNorm2d
from labkit.quant import WEIGHT_METHODS
from labkit.quant.ranges import check_bit_set, check_bits
from labkit.quant.rounding import check_rounding

QUANTIZABLE = (nn.Conv2d, nn.Linear)


#: Input size of the lab's registered architectures by their dataset (``labkit.models.registry``): one image.
DATASET_INPUT_SHAPES = {"cifar10": (3, 32, 32)}


def known_input_shape(model: nn.Module) -> tuple[int, ...] | None:
    """The shape of one input of ``model`` where it is known without guessing, else None.

    Found from (1) a ``model.input_shape`` attribute, e.g. ``(1, 28, 28)`` (the lab's CIFAR ResNets have
    ``(3, 32, 32)``; set it on your own model), or (2) the architecture record of a model made by
    :func:`labkit.models.build_model` (``labkit_arch``): its dataset's image size, or the crop size of the
    preprocessing its weights expect (224 for the ImageNet models).
    """
    shape = getattr(model, "input_shape", None)
    if shape is not None:
        if (not isinstance(shape, (tuple, list)) or not shape
                or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape)):
            raise ExampleInputError(
                f"model.input_shape = {shape!r} is not the shape of one input (a tuple of positive whole numbers "
                "without the batch dimension, e.g. (3, 32, 32)); fix it or pass example_input=<a batch the model accepts>.")
        return tuple(shape)
    arch = getattr(model, "labkit_arch", None)
    if isinstance(arch, dict) and "name" in arch:
        from labkit.models.registry import MODELS

        spec = MODELS.get(arch["name"])
        crop = (arch.get("preprocessing") or {}).get("crop") or ((spec.preprocessing or {}).get("crop") if spec else None)
        if crop:
            return (3, int(crop), int(crop))
        if spec is not None and spec.dataset in DATASET_INPUT_SHAPES:
            return DATASET_INPUT_SHAPES[spec.dataset]
    return None


def example_input_for(model: nn.Module, batch: int = 2) -> torch.Tensor:
    """A random batch of the model's known input shape (:func:`known_input_shape`) for a probe pass.

    Nothing is guessed: where the shape is not known, :class:`~labkit.errors.ExampleInputError` says to pass
    ``example_input=`` (one batch of the model's data) or to set ``model.input_shape``.
    """
    shape = known_input_shape(model)
    if shape is None:
        raise ExampleInputError(
            f"{type(model).__name__} has to run once on an input so the lab can see which layers run in which order "
            "and which inputs can be negative, and its input shape is not known: pass example_input=<one batch the "
            "model accepts> (e.g. example_input=images[:2]), or set model.input_shape = (C, H, W) (for an MNIST net "
            "(1, 28, 28)).")
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    return torch.randn(batch, *shape, device=device)


def run_probe(model: nn.Module, example_input, given: bool):
    """``model(example_input)``, or one :class:`~labkit.errors.ExampleInputError` naming the input that failed."""
    try:
        return model(example_input)
    except (RuntimeError, ValueError, TypeError, IndexError) as error:
        shape = tuple(example_input.shape) if isinstance(example_input, torch.Tensor) else type(example_input).__name__
        where = "the example_input given" if given else "an input of the model's known input_shape"
        raise ExampleInputError(
            f"{type(model).__name__} did not run on {where} (shape {shape}): {type(error).__name__}: {error}. Pass "
            "example_input=<one batch the model accepts> (e.g. example_input=images[:2]).") from error


@torch.no_grad()
def plan_quantization(model: nn.Module, bits=(8, 6, 4, 2), method: str = "double_rounding",
                      rounding: str = "half_even", keep_first_last: bool = True, example_input=None,
                      grad_mode: str = "lsq", act_init: str = "lsq", weight_init: str = "auto") -> dict:
    """Decide what ``quantize_model`` will do, by one probe forward pass in eval mode."""
    bit_set = check_bit_set(bits)
    if method not in WEIGHT_METHODS:
        raise ValueError(f"method={method!r} is unknown; use one of {sorted(WEIGHT_METHODS)}.")
    check_rounding(rounding)
    if not any(isinstance(m, QUANTIZABLE) for m in model.modules()):
        raise ValueError("the model has no nn.Conv2d or nn.Linear layer to quantize.")
    given = example_input is not None
    if not given:
        example_input = example_input_for(model)
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
        run_probe(model, example_input, given)
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
    if plan.get("absorb_relu", True):  # plans of older checkpoints have no entry: they get the default
        from labkit.relu_absorption import absorb_relus

        absorb_relus(model)
    model.labkit_quant = copy.deepcopy(plan)
    return model.train(model.training)  # new modules take the model's train/eval mode


def quantize_model(model: nn.Module, bits=(8, 6, 4, 2), method: str = "double_rounding", *,
                   rounding: str = "half_even", keep_first_last: bool = True, example_input=None,
                   grad_mode: str = "lsq", act_init: str = "lsq", weight_init: str = "auto",
                   inplace: bool = False, absorb_relu: bool = True) -> nn.Module:
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
        example_input: a batch for the probe pass (one batch of the model's data). Without it, random data of
            the model's known input shape (``model.input_shape``, or the architecture of a ``build_model`` model:
            :func:`known_input_shape`); where that is not known, :class:`~labkit.errors.ExampleInputError`.
        grad_mode: ``"lsq"`` or ``"reference"`` scale gradients (see :mod:`labkit.quant.lsq`).
        act_init: ``"lsq"`` or ``"percentile"`` initialisation of activation scales.
        weight_init: initialisation of the weight scales: ``"auto"`` (each method's measured default:
            ``"max"`` for Double Rounding and truncation, LSQ's rule ``"lsq"`` for the per-bit scales of
            ``"per_bit_scale"`` and ``"lsq"``, min–max for ``"matquant"``), ``"max"`` (max|W| per channel, nothing
            clipped), ``"reference"`` (the authors' ``max(|μ ± 3σ|) / 2^(h−1)``, which clips outliers), ``"mse"``
            (the per-channel step of least squared error at each bit-width) or ``"lsq"`` (LSQ's
            ``2 · mean|W| / sqrt(Q_P)``).
        inplace: modify ``model`` itself instead of a deep copy.
        absorb_relu: let a ReLU whose output only one quantized layer reads run inside that layer's activation
            quantizer (:mod:`labkit.relu_absorption`: the same values and gradients, a faster training step); False
            keeps every ReLU a module of its own (e.g. for a forward hook on it).
    """
    plan = plan_quantization(model, bits, method, rounding, keep_first_last, example_input, grad_mode, act_init,
                             weight_init)
    plan["absorb_relu"] = bool(absorb_relu)
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
    layers, followers = {}, []
    for name, module in model.named_modules():  # one walk over the model for the layers and the batch norms
        if isinstance(module, QuantizedLayer):
            layers[name] = module
        elif hasattr(module, "follow"):  # switchable and transitional batch norms
            followers.append(module)
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
    for module in followers:
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
