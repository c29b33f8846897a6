"""Export one precision of a multi-precision model to ONNX with QuantizeLinear/DequantizeLinear (QDQ).

A Double-Rounding model is one set of stored INT-h weight codes and per-bit activation scales; a
deployment runs *one* precision. :func:`export_onnx` picks it (uniform, ``bits=4``, or mixed per layer,
``bits={"layer1.0.conv1": 8, ...}``) and writes an ONNX graph in the standard QDQ form that runtimes
such as onnxruntime, TensorRT or OpenVINO turn into integer kernels:

- **weights** (METHOD.md §1, Eq. 1–3): each quantized layer's weight is an integer initializer holding the
  l-bit codes ``q_l = clip(round(q_h / 2^Δ))`` that the integer second rounding (Eq. 2,
  :func:`labkit.quant.double_round`) derives from the stored INT-h codes ``q_h`` — the same integers the
  PyTorch model uses, never floats quantized again — followed by ``DequantizeLinear`` with the tied
  per-output-channel scale ``s_h · 2^Δ`` (Eq. 3), ``axis=0`` and zero point 0. The initializer has the
  narrowest ONNX integer type that holds the codes: ``INT2`` (opset 25) for 2-bit, ``INT4`` (opset 21) for
  3- and 4-bit, ``INT8`` otherwise (ONNX has no 6-bit type), so the weights of a 4-bit file take half and
  of a 2-bit file a quarter of the bytes of the 8-bit one (ONNX packs INT4 two and INT2 four to a byte);
- **activations** (METHOD.md §2, Eq. 4–5): each quantized layer's input goes through
  ``QuantizeLinear → Clip → DequantizeLinear`` with the scale ``s_b`` of its bit-width b.

How the b-bit range is kept exact: ONNX ``QuantizeLinear`` saturates to its whole 8-bit type
(``uint8`` [0, 255], ``int8`` [-128, 127]), but a b-bit code lives in ``[0, 2^b − 1]`` (unsigned, after a
ReLU) or ``[-2^(b−1), 2^(b−1) − 1]`` (signed). For b < 8 an integer ``Clip`` to the b-bit bounds sits
between ``QuantizeLinear`` and ``DequantizeLinear``. Since clipping to [0, 255] and then to [0, 2^b − 1]
is the same as clipping to [0, 2^b − 1], the codes are exactly ``clip(round(X / s_b), 0, 2^b − 1)`` of
Eq. 4, with no rescaling of the scale. At b = 8 the range is the type's own and no ``Clip`` is written.

Signed activations with a learned offset β (the LSQ+ variant, METHOD.md §2 [ref-code]) are quantized as
``X̂ = clip(round((X − β) / s_b)) · s_b + β``. An ONNX integer zero point could only hold ``β / s_b``
rounded to a whole number, which changes the result, so the graph computes it exactly as
``Sub(β) → QuantizeLinear(int8, zero point 0) → Clip → DequantizeLinear → Add(β)``.

Two limits follow from the 8-bit QDQ types: layers must run at 8 bits or fewer (``BitWidthError``
otherwise), and the integer codes of the weights must fit ``int8``. The opset is the lowest that holds the
weight types (17, 21 with INT4, 25 with INT2); an explicit lower opset keeps every weight in ``int8``, for
runtimes that read no INT4/INT2 (the file is then as large as the 8-bit one). Rounding: ``QuantizeLinear`` rounds
half to even, as ``torch.round`` in the lab's quantizers does; it divides by the scale where the lab
multiplies by ``1 / s``, so a value within one float ulp of a rounding boundary may land on the
neighbouring code (about one code in 10^7; :func:`verify_onnx` counts them).

Learned weight scales can turn negative in training (the shipped ResNet-20 has 323 of 672 such
channels); ``q · s`` is unaffected. By default the graph keeps them, so its int8 initializers are
exactly the model's codes; ``weight_sign="fold"`` writes ``(−q, −s)`` instead for runtimes that insist
on positive scales (:func:`fold_weight_sign`).

The first and last layers that the paper keeps in FP32 (METHOD.md §4) stay float ``Conv``/``Gemm``; the
batch norm of the chosen precision (switchable or transitional BN) is exported as a plain
``BatchNormalization``.
"""
from __future__ import annotations

import copy
import json
import os
import tempfile
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from labkit.convert import get_bits, quantized_layers, set_bits
from labkit.errors import BitWidthError, LabkitError
from labkit.nn import QConv2d, QuantizedLayer, SwitchableBatchNorm2d, TransitionalBatchNorm2d
from labkit.quant.ranges import check_bits, int_range

DEFAULT_OPSET = 17  # the opset of an all-int8 graph (what every current runtime reads)
MIN_OPSET = 13  # per-channel DequantizeLinear (axis=0) needs opset 13
TORCH_MAX_OPSET = 20  # the TorchScript-based exporter's highest opset in torch 2.14; above it onnx converts
MAX_OPSET = 25  # INT2 tensors (onnx >= 1.20); onnxruntime 1.32 runs DequantizeLinear on them
MAX_EXPORT_BITS = 8  # QDQ with int8 / uint8 tensors
# ONNX integer types for the weight codes, narrowest first: (name, signed range, first opset that has it).
WEIGHT_TYPES = (("int2", -2, 1, 25), ("int4", -8, 7, 21), ("int8", -128, 127, MIN_OPSET))
INPUT_NAME, OUTPUT_NAME = "input", "logits"

_IMAGE_SIZE_OF_MODEL = {"resnet20": 32, "preact_resnet20": 32, "resnet18": 224, "resnet50": 224,
                        "mobilenet_v2": 224, "efficientnet_lite0": 224}


# ------------------------------------------------------------------------------------ QDQ building blocks
def _constant(g, value: torch.Tensor):
    return g.op("Constant", value_t=value)


class _ActivationQDQ(torch.autograd.Function):
    """``clip(round(x / s), qmin, qmax) · s`` (Eq. 4–5); exported as QuantizeLinear → [Clip] → DequantizeLinear.

    The forward repeats the lab's fake-quant arithmetic (:func:`labkit.quant.fake_quantize` at Δ = 0)
    so the export view computes what the PyTorch model computes, bit for bit.
    """

    @staticmethod
    def forward(ctx, x, scale, qmin: int, qmax: int):
        return torch.round(x * scale.reciprocal()).clamp(qmin, qmax) * scale

    @staticmethod
    def symbolic(g, x, scale, qmin: int, qmax: int):
        dtype = torch.int8 if qmin < 0 else torch.uint8
        zero_point = _constant(g, torch.tensor(0, dtype=dtype))
        codes = g.op("QuantizeLinear", x, scale, zero_point)
        type_min, type_max = (-128, 127) if qmin < 0 else (0, 255)
        if (qmin, qmax) != (type_min, type_max):  # b < 8: narrow the 8-bit type to the b-bit range, exactly
            codes = g.op("Clip", codes, _constant(g, torch.tensor(qmin, dtype=dtype)),
                         _constant(g, torch.tensor(qmax, dtype=dtype)))
        return g.op("DequantizeLinear", codes, scale, zero_point)


class _WeightDequantize(torch.autograd.Function):
    """``Ŵ_l = q_l · step`` per output channel (Eq. 3); exported as int8 initializer → DequantizeLinear(axis=0)."""

    @staticmethod
    def forward(ctx, codes, step):
        return codes.to(step.dtype) * step.view(-1, *([1] * (codes.dim() - 1)))

    @staticmethod
    def symbolic(g, codes, step):
        channels = step.type().sizes()[0]
        zero_point = _constant(g, torch.zeros(channels, dtype=torch.int8))
        return g.op("DequantizeLinear", codes, step, zero_point, axis_i=0)


WEIGHT_SIGNS = ("keep", "fold")


def fold_weight_sign(codes: torch.Tensor, step: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Move a negative per-channel weight step into its codes: ``q · s = (−q) · (−s)``, exactly.

    LSQ training can drive a channel's scale ``s_h`` below zero (the product ``q · s`` does not care), but
    some QDQ runtimes require positive scales. Negating an integer and a float is exact, so a folded
    channel dequantizes to the same weights bit for bit; its codes lie in ``[−2^(l−1) + 1, 2^(l−1)]``, the
    l-bit range mirrored (one above the signed l-bit maximum, still inside int8 for l ≤ 7). A channel
    whose codes include −128 (possible only at 8 bits) cannot be negated inside int8 and is left as it
    is. Returns (codes, step, number of channels left with a negative step).
    """
    negative = step < 0
    lowest = codes.flatten(1).amin(dim=1) if codes.numel() else torch.zeros_like(step, dtype=codes.dtype)
    foldable = negative & (lowest > -128)
    view = foldable.view(-1, *([1] * (codes.dim() - 1)))
    return torch.where(view, -codes, codes), torch.where(foldable, -step, step), int((negative & ~foldable).sum())


def _check_dequantization(layer: QuantizedLayer, name: str, codes: torch.Tensor, step: torch.Tensor) -> None:
    """Refuse a layer whose own dequantized weight is not ``codes · step`` (what DequantizeLinear computes).

    The export reads the quantizer's own dequantization (:meth:`QuantizedLayer.quantized_weight`) rather than
    assuming Eq. 3: a scheme that dequantizes elsewhere in the cell (e.g. at its centre, ``(q + ½) · step``)
    would be exported wrong by a zero-point-0 ``DequantizeLinear``. Float noise is far below a quarter step.
    """
    with torch.no_grad():
        own = layer.quantized_weight().detach().to(step.dtype)
    dequantized = codes.to(step.dtype) * step.view(-1, *([1] * (codes.dim() - 1)))
    tolerance = 0.25 * step.abs().view(-1, *([1] * (codes.dim() - 1)))
    if own.shape != dequantized.shape or bool(((own - dequantized).abs() > tolerance).any()):
        raise LabkitError(
            f"layer {name!r} (method={layer.method!r}) dequantizes its {layer.bits}-bit weights differently from "
            "codes x step, which is all a zero-point-0 ONNX DequantizeLinear computes; this method cannot be "
            "exported as QDQ (export a Double Rounding model, rounding 'half_even' or 'half_up')."
        )


class ExportQuantizedLayer(nn.Module):
    """One quantized conv/linear layer frozen at one bit-width, written with QDQ-mapped ops.

    Holds the l-bit weight codes (``int8`` buffer ``weight_codes``), the per-channel step ``s_h · 2^Δ``
    (``weight_step``), the activation scale ``s_b`` (``act_scale``) and, for signed inputs, the offset β
    (``act_offset``). Its forward equals the source layer's forward at that bit-width.
    ``weight_sign="keep"`` stores the model's codes and steps unchanged; ``"fold"`` moves negative steps
    into the codes (:func:`fold_weight_sign`).
    """

    def __init__(self, layer: QuantizedLayer, name: str = "", weight_sign: str = "keep"):
        super().__init__()
        bits = layer.bits
        codes, step = layer.weight_codes()
        codes, step = codes.detach().to(torch.int32), step.detach().to(layer.weight.dtype)
        if not bool((step != 0).all()):
            raise LabkitError(f"layer {name!r} has a weight scale of 0 at {bits} bits; ONNX QDQ needs non-zero scales.")
        if weight_sign == "fold":
            codes, step, left = fold_weight_sign(codes, step)
            if left:
                raise LabkitError(
                    f"layer {name!r} has {left} channel(s) with a negative weight scale whose {bits}-bit codes include "
                    "-128, so (-q, -s) does not fit int8; export with weight_sign='keep' (exact, negative scales) "
                    "or at a lower bit-width."
                )
        _check_dequantization(layer, name, codes, step)
        if codes.numel() and (int(codes.min()) < -128 or int(codes.max()) > 127):
            raise BitWidthError(
                f"layer {name!r} has {bits}-bit weight codes in [{int(codes.min())}, {int(codes.max())}], which do "
                f"not fit int8 (method={layer.method!r}); export it at a lower bit-width."
            )
        quantizer = layer.act_quantizer
        if not bool(quantizer.initialized[quantizer.index(bits)]):
            raise LabkitError(
                f"layer {name!r} has no activation scale for {bits} bits yet (it is set on the first forward pass "
                f"at that bit-width); run the model on real data at bits={bits} (labkit.set_bits) before exporting."
            )
        act_scale = quantizer.scale[str(bits)].detach().clone()
        if not float(act_scale) > 0:
            raise LabkitError(
                f"layer {name!r} has an activation scale <= 0 at {bits} bits; ONNX QDQ needs positive scales."
            )
        self.bits = bits
        self.signed = quantizer.signed
        self.act_range = int_range(bits, signed=self.signed)
        self.register_buffer("weight_codes", codes.to(torch.int8).contiguous())
        self.register_buffer("weight_step", step.contiguous())
        self.register_buffer("act_scale", act_scale)
        self.register_buffer("act_offset", quantizer.offset[str(bits)].detach().clone() if self.signed else None)
        self.bias = None if layer.bias is None else nn.Parameter(layer.bias.detach().clone(), requires_grad=False)
        if isinstance(layer, QConv2d):
            if layer.padding_mode != "zeros":
                raise LabkitError(f"layer {name!r} uses padding_mode={layer.padding_mode!r}; only 'zeros' is exported.")
            self.conv = dict(stride=layer.stride, padding=layer.padding, dilation=layer.dilation, groups=layer.groups)
            self.pre_padding = copy.deepcopy(layer.pre_padding)
        else:
            self.conv, self.pre_padding = None, None

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.act_offset is None:
            return _ActivationQDQ.apply(x, self.act_scale, *self.act_range)
        return _ActivationQDQ.apply(x - self.act_offset, self.act_scale, *self.act_range) + self.act_offset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pre_padding is not None:
            x = self.pre_padding(x)
        x = self.quantize_input(x)
        weight = _WeightDequantize.apply(self.weight_codes, self.weight_step)
        if self.conv is None:
            return F.linear(x, weight, self.bias)
        return F.conv2d(x, weight, self.bias, **self.conv)

    def extra_repr(self) -> str:
        kind = "conv2d" if self.conv is not None else "linear"
        return f"{kind}, bits={self.bits}, signed={self.signed}, weight={tuple(self.weight_codes.shape)}"


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


@torch.no_grad()
def export_view(model: nn.Module, weight_sign: str = "keep") -> nn.Module:
    """An eval-mode copy of ``model`` at its current bit-widths, ready for the ONNX exporter.

    Every quantized layer becomes an :class:`ExportQuantizedLayer` and every switchable / transitional
    batch norm the plain ``BatchNorm2d`` of its current bit-width(s). ``model`` itself is not changed.
    """
    _check_quantized(model)
    if weight_sign not in WEIGHT_SIGNS:
        raise LabkitError(f"weight_sign={weight_sign!r} is unknown; use one of {list(WEIGHT_SIGNS)}.")
    view = copy.deepcopy(model).eval()
    for name, layer in quantized_layers(view).items():
        _set_submodule(view, name, ExportQuantizedLayer(layer, name, weight_sign))
    for name, module in list(view.named_modules()):
        if isinstance(module, SwitchableBatchNorm2d):
            _set_submodule(view, name, module.per_bit[str(module.bits)])
        elif isinstance(module, TransitionalBatchNorm2d):
            _set_submodule(view, name, module.pairs[f"{module.previous_bits}_{module.bits}"])
    return view.eval()


# ------------------------------------------------------------------------------------------------ bits
def _checked_bits(model: nn.Module, bits) -> dict[str, int]:
    """The per-layer bit-widths ``bits`` asks for, validated without changing ``model``."""
    layers = quantized_layers(model)
    if bits is None:
        wanted = get_bits(model)
    elif isinstance(bits, Mapping):
        unknown = sorted(set(bits) - set(layers))
        if unknown:
            raise BitWidthError(
                f"bits names no quantized layer {unknown}; give bit-widths for these layers: {list(layers)}."
            )
        wanted = get_bits(model)
        wanted.update({name: check_bits(value, allowed=layers[name].bit_set, name=f"bits[{name!r}]")
                       for name, value in bits.items()})
    else:
        trained = sorted(set.intersection(*(set(layer.bit_set) for layer in layers.values())), reverse=True)
        value = check_bits(bits, allowed=trained)
        wanted = {name: value for name in layers}
    too_wide = {name: value for name, value in wanted.items() if value > MAX_EXPORT_BITS}
    if too_wide:
        first = next(iter(too_wide))
        raise BitWidthError(
            f"ONNX QDQ export stores int8/uint8 codes, so every layer must run at <= {MAX_EXPORT_BITS} bits; "
            f"{len(too_wide)} layer(s) would run at more (e.g. {first!r} at {too_wide[first]}); pass "
            f"bits={MAX_EXPORT_BITS} or lower."
        )
    return wanted


def _check_quantized(model: nn.Module) -> None:
    if not quantized_layers(model):
        raise LabkitError(
            "the model has no quantized layers, so there is no integer precision to export; quantize it "
            "(labkit.quantize_model) or load an INT checkpoint (labkit.load_int). An FP32 model exports with "
            "plain torch.onnx.export."
        )


class _AtBits:
    """Context manager: ``model`` at the per-layer ``bits``, restored to its own bit-widths on exit."""

    def __init__(self, model: nn.Module, bits: dict[str, int]):
        self.model, self.bits = model, bits

    def __enter__(self):
        self.previous = get_bits(self.model)
        set_bits(self.model, self.bits)
        return self.model

    def __exit__(self, *exc):
        set_bits(self.model, self.previous)
        return False


def default_example_input(model: nn.Module) -> torch.Tensor:
    """A random ``1×3×32×32`` (CIFAR) or ``1×3×224×224`` (ImageNet) batch for a model from ``build_model``."""
    arch = getattr(model, "labkit_arch", None) or {}
    size = _IMAGE_SIZE_OF_MODEL.get(arch.get("name"))
    if size is None:
        raise LabkitError(
            "cannot tell the input shape of this model (it was not built by labkit.models.build_model); pass "
            "example_input=<one input batch>, e.g. torch.randn(1, 3, 32, 32)."
        )
    device = next(model.parameters()).device
    return torch.randn(1, 3, size, size, device=device)


def _bits_summary(bits: dict[str, int]) -> int | dict[str, int]:
    values = set(bits.values())
    return values.pop() if len(values) == 1 else dict(bits)


# ---------------------------------------------------------------------------------------------- export
def export_onnx(model: nn.Module, path, bits=None, example_input: torch.Tensor | None = None,
                opset: int | None = None, weight_sign: str = "keep") -> Path:
    """Write one precision of a quantized model as an ONNX QDQ graph; return the path.

    Args:
        model: a multi-precision model (``labkit.quantize_model``, ``labkit.load_int``); not changed: its
            bit-widths are restored after the export.
        path: the ``.onnx`` file to write (folders are created).
        bits: ``None`` (the model's current bit-widths), one trained bit-width for every layer (``4``), or
            a mapping ``{layer_name: bits}`` for mixed precision (layers not named keep their current
            bit-width), as :func:`labkit.set_bits` takes it. At most 8 bits (int8/uint8 QDQ).
        example_input: one input batch that fixes the graph's input shape (the batch axis stays dynamic);
            by default ``1×3×32×32`` for CIFAR models and ``1×3×224×224`` for ImageNet models.
        opset: ``None`` (default): the lowest opset that holds the narrowest weight types — 17 for an
            all-int8 graph, 21 when a layer stores ``INT4`` codes, 25 for ``INT2``. An explicit opset from 13
            (the first with per-channel ``DequantizeLinear``) to 25 limits the weight types to what it has
            (int8 below 21, INT4 from 21, INT2 from 25). Graphs above opset 20 are written at 20 by torch
            and converted by ``onnx.version_converter`` (the ops used have no semantic change up to 25).
        weight_sign: what to do with channels whose learned weight scale went negative in training.
            ``"keep"`` (default): the int8 initializers are exactly the model's l-bit codes and the
            scales keep their sign (valid ONNX; onnxruntime runs it exactly). ``"fold"``: store
            ``(−q, −s)`` so every scale is positive, as some runtimes require; exact, but the folded
            codes lie in the mirrored range ``[−2^(l−1) + 1, 2^(l−1)]`` and a channel holding code −128
            at 8 bits cannot be folded (LabkitError). See :func:`fold_weight_sign`.

    The graph: weights as INT2/INT4/INT8 l-bit codes from the stored INT-h codes (METHOD.md Eq. 2) →
    ``DequantizeLinear`` (per-channel scale ``s_h · 2^Δ``, Eq. 3, axis 0); inputs of quantized layers
    through ``QuantizeLinear → Clip → DequantizeLinear`` with their per-bit scale (Eq. 4–5). Input
    ``"input"``, output ``"logits"``; the metadata ``labkit.bits`` holds the per-layer bit-widths and
    ``labkit.weight_types`` the ONNX type of each layer's weight codes.
    See the module docstring for why the result is exact.

    Raises:
        BitWidthError: ``bits`` is not a trained bit-width, names an unknown layer, or exceeds 8.
        LabkitError: the model has no quantized layers, or a layer cannot be written as QDQ.
    """
    import onnx

    _check_quantized(model)
    check_opset(opset)
    wanted = _checked_bits(model, bits)
    if example_input is None:
        example_input = default_example_input(model)
    with _AtBits(model, wanted):
        view = export_view(model, weight_sign)
    negative = sum(int((layer.weight_step < 0).sum()) for layer in view.modules()
                   if isinstance(layer, ExportQuantizedLayer))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        codes = {name: layer.weight_codes for name, layer in view.named_modules()
                 if isinstance(layer, ExportQuantizedLayer)}
        types = {name: narrowest_weight_type(values, opset) for name, values in codes.items()}
        target = opset if opset is not None else max(
            [DEFAULT_OPSET] + [next(t[3] for t in WEIGHT_TYPES if t[0] == kind) for kind in types.values()])
        _write_graph(view, example_input, temporary, min(target, TORCH_MAX_OPSET))
        graph = at_opset(onnx.load(temporary), target)
        narrow_weight_initializers(graph, {f"{name}.weight_codes": kind for name, kind in types.items()})
        plan = getattr(model, "labkit_quant", None) or {}
        metadata = {"labkit.bits": json.dumps(wanted), "labkit.weight_types": json.dumps(types),
                    "labkit.method": str(plan.get("method", "")),
                    "labkit.rounding": str(plan.get("rounding", "")),
                    "labkit.bit_set": json.dumps(plan.get("bits", [])),
                    "labkit.weight_sign": weight_sign, "labkit.negative_weight_scales": str(negative)}
        for key, value in metadata.items():
            entry = graph.metadata_props.add()
            entry.key, entry.value = key, value
        graph.doc_string = (f"labkit Double Rounding QDQ export at bits={_bits_summary(wanted)} (weights: "
                            "INT2/INT4/INT8 codes -> DequantizeLinear; activations: QuantizeLinear -> Clip -> "
                            "DequantizeLinear)")
        onnx.save(graph, temporary)
        os.replace(temporary, path)  # a failed export leaves no half-written file behind
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return path


def check_opset(opset) -> None:
    """``None`` (choose from the weight types) or a whole opset from 13 to 25, else a LabkitError."""
    if opset is None:
        return
    import onnx

    highest = min(MAX_OPSET, onnx.defs.onnx_opset_version())
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= highest:
        raise LabkitError(f"opset={opset!r} is not supported; pass an ONNX opset from {MIN_OPSET} to {highest} "
                          f"(onnx {onnx.__version__} is installed), or leave it out: the lowest opset that holds "
                          "the weight types.")


def available_weight_types() -> tuple[str, ...]:
    """The weight types the installed onnx can write: INT4 needs onnx >= 1.16 (opset 21), INT2 onnx >= 1.20
    (opset 25), each with its ``ml_dtypes`` type. Reading them needs a runtime as new: onnxruntime >= 1.24 for
    INT2 (IR version 13; 1.23 reads up to IR 11), INT4 ran in every onnxruntime from 1.22 tried."""
    import ml_dtypes
    import onnx

    newest = onnx.defs.onnx_opset_version()
    return tuple(kind for kind, _, _, first_opset in WEIGHT_TYPES
                 if kind == "int8" or (hasattr(onnx.TensorProto, kind.upper()) and hasattr(ml_dtypes, kind)
                                       and newest >= first_opset))


def narrowest_weight_type(codes: torch.Tensor, opset: int | None = None) -> str:
    """The narrowest ONNX integer type (``"int2"``, ``"int4"``, ``"int8"``) holding every code, within ``opset``.

    ``opset=None`` allows every type the installed onnx can write (:func:`available_weight_types`; the export
    then raises its opset to the one the type needs).
    """
    lowest, highest = (int(codes.min()), int(codes.max())) if codes.numel() else (0, 0)
    available = available_weight_types()
    for kind, type_min, type_max, first_opset in WEIGHT_TYPES:
        if kind in available and type_min <= lowest and highest <= type_max and (opset is None or opset >= first_opset):
            return kind
    raise BitWidthError(f"weight codes in [{lowest}, {highest}] do not fit int8.")


def at_opset(graph, opset: int):
    """``graph`` (an ``onnx.ModelProto``) converted to ``opset``, with the IR version that opset needs."""
    import onnx
    from onnx import version_converter

    current = next(entry.version for entry in graph.opset_import if entry.domain in ("", "ai.onnx"))
    if opset != current:
        graph = version_converter.convert_version(graph, opset)
        graph.graph.ClearField("value_info")  # the converter's inferred shapes: not needed, ~8 % of a 2-bit file
    graph.ir_version = max(graph.ir_version, onnx.helper.find_min_ir_version_for(list(graph.opset_import)))
    return graph


def _packed_tensor(name: str, values, kind: str):
    """An initializer of ONNX type ``kind`` holding the integers ``values``, packed in ``raw_data``."""
    import ml_dtypes  # onnx's own dependency for its 4- and 2-bit types
    import numpy as np
    from onnx import numpy_helper

    dtype = {"int2": ml_dtypes.int2, "int4": ml_dtypes.int4, "int8": np.int8}[kind]
    return numpy_helper.from_array(np.asarray(values).astype(np.int8).astype(dtype), name)


def narrow_weight_initializers(graph, kinds: Mapping[str, str]) -> None:
    """Store each named int8 weight initializer as the ONNX type ``kinds[name]``, in place.

    The codes are unchanged (INT4 / INT2 tensors are packed two / four to a byte in ``raw_data``); the
    ``DequantizeLinear`` that reads the codes gets a zero point of the same type (ONNX requires it), a
    fresh initializer ``<name>_zero_point``, and constants no node reads any more are dropped.
    """
    import numpy as np
    from onnx import numpy_helper

    initializers = {init.name: init for init in graph.graph.initializer}
    for name, kind in kinds.items():
        if kind == "int8":
            continue
        values = numpy_helper.to_array(initializers[name])
        initializers[name].CopyFrom(_packed_tensor(name, values, kind))
        readers = [node for node in graph.graph.node if node.op_type == "DequantizeLinear" and node.input[0] == name]
        zero_name = f"{name}_zero_point"
        channels = values.shape[0] if values.ndim else 1
        graph.graph.initializer.append(_packed_tensor(zero_name, np.zeros(channels, np.int8), kind))
        for node in readers:
            if len(node.input) >= 3:
                node.input[2] = zero_name
            else:
                node.input.append(zero_name)
    _drop_unused_constants(graph)


def _drop_unused_constants(graph) -> None:
    used = {name for node in graph.graph.node for name in node.input} | {o.name for o in graph.graph.output}
    for node in [n for n in graph.graph.node if n.op_type == "Constant" and n.output[0] not in used]:
        graph.graph.node.remove(node)
    for init in [i for i in graph.graph.initializer if i.name not in used]:
        graph.graph.initializer.remove(init)


def _write_graph(view: nn.Module, example_input: torch.Tensor, path: str, opset: int) -> None:
    """``torch.onnx.export`` of the export view with the TorchScript-based exporter (custom QDQ symbolics)."""
    with torch.no_grad(), warnings.catch_warnings():
        # torch 2.14 defaults to the torch.export-based exporter, which needs the onnxscript package and
        # cannot take the custom QDQ symbolics above; the TorchScript-based exporter (dynamo=False) can,
        # and announces its deprecation on every call. Only these known notices are silenced.
        warnings.filterwarnings("ignore", message=r"You are using the legacy TorchScript-based ONNX export",
                                category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r"The feature will be removed", category=DeprecationWarning)
        # A strided Slice (the option-A shortcut's x[:, :, ::2, ::2]) is left for the runtime, not folded: harmless.
        warnings.filterwarnings("ignore", message=r"Constant folding - Only steps=1 can be constant folded",
                                category=UserWarning)
        torch.onnx.export(view, (example_input,), path, dynamo=False, opset_version=opset,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})


def qdq_summary(path) -> dict:
    """Counts in an exported graph: ``QuantizeLinear``/``DequantizeLinear``/``Clip`` nodes and integer weights.

    ``weight_types`` counts the integer weight initializers (more than one dimension) by ONNX type,
    ``weight_values`` their codes and ``weight_bytes`` the bytes they take in the file (INT4 / INT2 packed);
    ``int8_weights`` / ``int8_weight_values`` the int8 ones alone. Also the opset, the per-layer bits stored in
    the metadata (``{}`` for a graph not written by :func:`export_onnx`) and the file size ``bytes``.
    """
    import onnx

    graph = onnx.load(str(path))
    ops = [node.op_type for node in graph.graph.node]
    names = {onnx.TensorProto.INT8: "int8", onnx.TensorProto.INT4: "int4", onnx.TensorProto.INT2: "int2"}
    weights = [init for init in graph.graph.initializer if init.data_type in names and len(init.dims) > 1]
    int8 = [init for init in weights if init.data_type == onnx.TensorProto.INT8]
    metadata = {entry.key: entry.value for entry in graph.metadata_props}
    types: dict[str, int] = {}
    for init in weights:
        types[names[init.data_type]] = types.get(names[init.data_type], 0) + 1
    return {
        "quantize_linear": ops.count("QuantizeLinear"),
        "dequantize_linear": ops.count("DequantizeLinear"),
        "clip": ops.count("Clip"),
        "weight_types": types,
        "weight_values": sum(int(torch.Size(init.dims).numel()) for init in weights),
        "weight_bytes": sum(_tensor_bytes(init) for init in weights),
        "int8_weights": len(int8),
        "int8_weight_values": sum(int(torch.Size(init.dims).numel()) for init in int8),
        "opset": next(entry.version for entry in graph.opset_import if entry.domain in ("", "ai.onnx")),
        "bits": json.loads(metadata.get("labkit.bits", "{}")),
        "weight_type_of_layer": json.loads(metadata.get("labkit.weight_types", "{}")),
        "negative_weight_scales": int(metadata.get("labkit.negative_weight_scales", "0")),
        "bytes": Path(path).stat().st_size,
    }


def _tensor_bytes(init) -> int:
    """Bytes an integer initializer's values take in the file (INT4 / INT2 packed in ``raw_data``)."""
    return len(init.raw_data) if init.HasField("raw_data") else init.ByteSize()


# ---------------------------------------------------------------------------------------------- verify
def _batches(inputs) -> Iterable[tuple[torch.Tensor, torch.Tensor | None]]:
    if isinstance(inputs, torch.Tensor):
        yield inputs, None
        return
    for item in inputs:
        if isinstance(item, torch.Tensor):
            yield item, None
        else:
            yield item[0], item[1]


def activation_probes(graph) -> list[dict]:
    """Every activation ``QuantizeLinear → [Clip] → DequantizeLinear`` chain of an ONNX graph.

    Each entry: ``input`` (the float tensor quantized), ``codes`` (the integer tensor dequantized),
    ``scale`` (float), ``qmin``/``qmax`` (the code range after the optional Clip) and ``dtype``.
    """
    from onnx import numpy_helper

    values = {init.name: numpy_helper.to_array(init) for init in graph.graph.initializer}
    for node in graph.graph.node:
        if node.op_type == "Constant":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    consumers: dict[str, list] = {}
    for node in graph.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    probes = []
    for node in graph.graph.node:
        if node.op_type != "QuantizeLinear" or len(node.input) < 3 or node.input[2] not in values:
            continue
        zero_point = values[node.input[2]]
        info = torch.iinfo(torch.int8 if zero_point.dtype.kind == "i" else torch.uint8)
        qmin, qmax, codes = info.min, info.max, node.output[0]
        following = consumers.get(codes, [])
        if len(following) == 1 and following[0].op_type == "Clip":
            clip = following[0]
            qmin, qmax, codes = int(values[clip.input[1]]), int(values[clip.input[2]]), clip.output[0]
        probes.append({"input": node.input[0], "codes": codes, "scale": float(values[node.input[1]]),
                       "zero_point": int(zero_point), "qmin": qmin, "qmax": qmax, "dtype": zero_point.dtype})
    return probes


@torch.no_grad()
def verify_onnx(model: nn.Module, path, inputs, bits=None, atol: float = 1e-4) -> dict:
    """Run the ONNX graph in onnxruntime (CPUExecutionProvider) against ``model`` at ``bits``.

    Args:
        model: the PyTorch model the graph was exported from (run in eval mode; its bit-widths and
            train/eval mode are restored afterwards).
        path: the ``.onnx`` file.
        inputs: one input tensor, or an iterable of tensors or ``(images, labels)`` batches (a DataLoader).
        bits: the precision to compare at, as :func:`export_onnx` takes it (``None``: the bit-widths
            stored in the graph's metadata, else the model's current ones).
        atol: an image *matches* when all its logits agree within ``atol``.

    Returns a dict: ``max_abs_diff`` / ``mean_abs_diff`` of the logits, ``max_abs_logit``,
    ``top1_agreement`` and ``matching_images`` (fractions of images), ``images``, ``bits``,
    ``activation_codes`` (codes checked) and ``activation_code_mismatches``, and with labels
    ``torch_top1`` / ``onnx_top1`` (fractions).

    Why the logits need not agree bit for bit: the two runtimes sum convolutions in different orders,
    so float tensors differ by ~1e-6 relative. Where such a value lies on a rounding boundary of the
    next quantizer (Eq. 4) it lands on the neighbouring code, one step ``s_b`` away, and later layers
    carry that step to the logits (a bigger step at 2 bits). To show that the graph's quantizers are
    nevertheless the lab's, every activation ``QuantizeLinear → Clip`` output is compared with
    ``clip(round(x · (1/s_b)))`` of the *same* float input ``x`` taken from onnxruntime:
    ``activation_code_mismatches`` counts the codes that differ (expected: 0, or a few where ONNX's
    ``x / s`` and the lab's ``x · (1/s)`` fall on opposite sides of a tie).
    """
    import onnx
    import onnxruntime

    _check_quantized(model)
    if bits is not None:
        _checked_bits(model, bits)  # a bad bit-width is reported before a missing file
    if not Path(path).is_file():
        raise LabkitError(f"no ONNX file at {path}; write one with labkit.export.export_onnx(model, path, bits).")
    wanted = _checked_bits(model, bits if bits is not None else (qdq_summary(path)["bits"] or None))
    graph = onnx.load(str(path))
    probes = activation_probes(graph)
    known = {value.name for value in graph.graph.output}
    for probe in probes:
        for name, element in ((probe["input"], onnx.TensorProto.FLOAT),
                              (probe["codes"], onnx.helper.np_dtype_to_tensor_dtype(probe["dtype"]))):
            if name not in known:
                graph.graph.output.append(onnx.helper.make_tensor_value_info(name, element, None))
                known.add(name)
    session = onnxruntime.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    output_names = [value.name for value in session.get_outputs()]
    logits_name = OUTPUT_NAME if OUTPUT_NAME in output_names else output_names[0]
    max_diff = sum_diff = max_logit = 0.0
    agree = matching = images = elements = codes_checked = code_mismatches = labelled = 0
    correct = {"torch": 0, "onnx": 0}
    was_training = model.training
    model.eval()
    try:
        with _AtBits(model, wanted):
            device = next(model.parameters()).device
            for batch, labels in _batches(inputs):
                expected = model(batch.to(device)).float().cpu()
                outputs = dict(zip(output_names, session.run(None, {input_name: batch.detach().cpu().float().numpy()})))
                got = torch.from_numpy(outputs[logits_name])
                diff = (got - expected).abs()
                max_diff = max(max_diff, float(diff.max()))
                sum_diff += float(diff.sum())
                elements += diff.numel()
                max_logit = max(max_logit, float(expected.abs().max()))
                agree += int((got.argmax(1) == expected.argmax(1)).sum())
                matching += int((diff.flatten(1).amax(1) <= atol).sum())
                images += batch.shape[0]
                for probe in probes:
                    x = torch.from_numpy(outputs[probe["input"]])
                    reference = torch.round(x * torch.tensor(probe["scale"]).reciprocal()) + probe["zero_point"]
                    reference = reference.clamp(probe["qmin"], probe["qmax"])
                    codes = torch.from_numpy(outputs[probe["codes"]].astype("int32"))
                    code_mismatches += int((codes != reference).sum())
                    codes_checked += codes.numel()
                if labels is not None:
                    labels = labels.cpu()
                    correct["torch"] += int((expected.argmax(1) == labels).sum())
                    correct["onnx"] += int((got.argmax(1) == labels).sum())
                    labelled += labels.numel()
    finally:
        model.train(was_training)
    if images == 0:
        raise LabkitError("verify_onnx got no inputs; pass a tensor or a non-empty iterable of batches.")
    result = {"max_abs_diff": max_diff, "mean_abs_diff": sum_diff / max(elements, 1), "max_abs_logit": max_logit,
              "top1_agreement": agree / images, "matching_images": matching / images, "images": images,
              "bits": _bits_summary(wanted), "activation_codes": codes_checked,
              "activation_code_mismatches": code_mismatches}
    if labelled:
        result.update(torch_top1=correct["torch"] / labelled, onnx_top1=correct["onnx"] / labelled)
    return result
