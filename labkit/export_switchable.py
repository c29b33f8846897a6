"""One ONNX file for every precision: the INT-h codes stored once, the bit-width an input of the graph.

The paper's promise (METHOD.md §1) is "store the highest-bit integer model, switch precision without FP32".
:func:`export_switchable_onnx` writes that as a file a runtime runs. The graph has two inputs:

- ``input``: the images (float32, ``N×3×H×W``, the batch axis dynamic);
- ``bits``: an int64 tensor, either of shape ``[1]`` — one bit-width for every quantized layer — or of shape
  ``[L]`` — one bit-width per quantized layer, in the order of :func:`labkit.quantized_layers` (module
  order; the metadata ``labkit.layers`` lists the names). A bit-width the model was not trained at gives
  NaN logits (ONNX has no way to raise an error from inside a graph); :class:`SwitchableSession` checks
  the values before it runs.

For each quantized layer the graph holds the stored INT-h codes ``q_h`` (one ``int8`` initializer), the
weight scale ``s_h``, and small per-bit tables; at run time it picks the layer's bit-width ``l`` from
``bits`` and derives the l-bit codes by the integer second rounding (Eq. 2) with the model's own tie rule,
on integers only:

1. offset: ``u = q_h + 2^(h−1)`` as ``uint32`` (ONNX ``BitShift`` is defined for unsigned integers only;
   adding 2^(h−1) moves the codes to ``[0, 2^h − 1]`` and adds the whole number ``2^(h−1−Δ)`` to
   ``u / 2^Δ``, so no rounding decision changes);
2. ``BitShift`` right by Δ = h − l and the carry of the tie rule, as :func:`labkit.quant.shift_round`
   computes it — ``floor``: none; ``half_up``: the last bit shifted out; ``half_even``:
   ``(2·(u mod 2^Δ) + (⌊u/2^Δ⌋ & 1) + 2^Δ − 1) >> (Δ + 1)`` (the lab's formula on a doubled remainder, so
   that Δ = 0 needs no special case);
3. ``Clip`` to ``2^l − 1`` (the top of the signed l-bit range plus the offset; rounding up can overshoot
   by one, the bottom is exact), then the offset ``2^(l−1)`` is subtracted: the signed l-bit codes;
4. ``DequantizeLinear`` with the tied step ``s_h · 2^Δ`` (Eq. 3; a power-of-two multiple, exact in float).

Each quantized layer's input goes through ``QuantizeLinear → Clip → DequantizeLinear`` with the scale and
integer range of its bit-width (Eq. 4–5; at 8 bits the ``Clip`` is the identity), and each batch norm uses
the parameters of the bit-width that feeds it — a switchable BN (METHOD.md §4) one row per bit, a
transitional BN of the HASB SuperNet one row per (previous-layer bit, own bit) pair — selected by
``Gather`` from per-bit stacks and applied by a plain ``BatchNormalization``. Every operation and value is
the one the fixed-precision export (:func:`labkit.export.export_onnx`) writes for that bit-width, so the
logits in onnxruntime are the same; the BN is not folded into the weight steps because that would change
the float rounding and with it this equality (a runtime that folds does so in both files alike).
"""
from __future__ import annotations

import copy
import json
import os
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from labkit.convert import get_bits, quantized_layers, set_bits
from labkit.errors import BitWidthError, LabkitError
from labkit.export import (INPUT_NAME, MAX_EXPORT_BITS, OUTPUT_NAME, ExportQuantizedLayer, _AtBits,
                           _check_quantized, _set_submodule, default_example_input)
from labkit.nn import QuantizedLayer, SwitchableBatchNorm2d, TransitionalBatchNorm2d
from labkit.quant import double_round

BITS_NAME = "bits"
SWITCHABLE_OPSET = 18  # BitwiseAnd
TABLE_SIZE = MAX_EXPORT_BITS + 2  # tables indexed by the bit-width itself, clipped to [0, 9]; 9 = "too many"
ROUNDINGS = ("half_even", "half_up", "floor")


# ------------------------------------------------------------------------------------------ graph pieces
def _const(g, values, dtype=torch.int64):
    return g.op("Constant", value_t=torch.tensor(values, dtype=dtype))


def _gather(g, table, index):
    return g.op("Gather", table, index, axis_i=0)


class _ExpandBits(torch.autograd.Function):
    """``bits`` ([1] or [L]) → one bit-width per quantized layer ([L]); ONNX ``Expand``."""

    @staticmethod
    def forward(ctx, bits, layers: int):
        return bits.reshape(-1).expand(layers).clone()

    @staticmethod
    def symbolic(g, bits, layers: int):
        return g.op("Expand", bits, _const(g, [layers]))


class _LayerBits(torch.autograd.Function):
    """The bit-width of layer ``index`` as a scalar, clipped to [0, TABLE_SIZE − 1] (the tables' rows)."""

    @staticmethod
    def forward(ctx, all_bits, index: int):
        return all_bits[index].clamp(0, TABLE_SIZE - 1)

    @staticmethod
    def symbolic(g, all_bits, index: int):
        picked = g.op("Gather", all_bits, _const(g, index), axis_i=0)
        return g.op("Clip", picked, _const(g, 0), _const(g, TABLE_SIZE - 1))


def second_rounding_tables(high_bits: int, bit_set) -> dict[str, list[int]]:
    """Integer tables indexed by the bit-width l (rows 0..9; untrained rows hold harmless values).

    ``shift`` Δ = h − l, ``shift_plus_one`` Δ + 1, ``low_mask`` 2^(Δ+1) − 1, ``half_minus_one`` 2^Δ − 1,
    ``top`` 2^l − 1 (the clip of the offset codes) and ``offset`` 2^(l−1).
    """
    tables = {key: [0] * TABLE_SIZE for key in ("shift", "shift_plus_one", "low_mask", "half_minus_one", "top",
                                                "offset")}
    for bits in range(TABLE_SIZE):
        trained = bits in bit_set
        delta = high_bits - bits if trained else 0
        width = bits if trained else high_bits
        tables["shift"][bits] = delta
        tables["shift_plus_one"][bits] = delta + 1
        tables["low_mask"][bits] = (1 << (delta + 1)) - 1
        tables["half_minus_one"][bits] = (1 << delta) - 1
        tables["top"][bits] = (1 << width) - 1
        tables["offset"][bits] = 1 << (width - 1)
    return tables


def second_rounding_nodes(prefix: str, stored: str, bits: str, output: str, high_bits: int, bit_set,
                          rounding: str) -> tuple[list, list]:
    """ONNX nodes (and their table initializers) deriving signed l-bit int8 codes ``output`` from the stored
    signed h-bit int8 codes ``stored`` (Eq. 2), for the scalar int64 bit-width ``bits``; integers only.

    Returns ``(nodes, initializers)``; every name made here starts with ``prefix``. The steps are those of
    the module docstring: offset to unsigned, ``BitShift``, the carry of the tie rule, ``Clip``, offset back.
    """
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    nodes, initializers, count = [], [], [0]

    def table(key: str, values) -> str:
        initializers.append(numpy_helper.from_array(np.asarray(values, dtype=np.uint32), f"{prefix}.table.{key}"))
        return f"{prefix}.table.{key}"

    def op(kind: str, *inputs: str, **attributes) -> str:
        count[0] += 1
        name = f"{prefix}.{kind.lower()}_{count[0]}"
        nodes.append(helper.make_node(kind, list(inputs), [name], name=name, **attributes))
        return name

    def pick(key: str) -> str:
        return op("Gather", table(key, tables[key]), bits, axis=0)

    tables = second_rounding_tables(high_bits, bit_set)
    one, zero = table("one", 1), table("zero", 0)
    half_range = f"{prefix}.table.half_range"
    initializers.append(numpy_helper.from_array(np.asarray(1 << (high_bits - 1), dtype=np.int32),
                                                f"{prefix}.table.half_range"))
    shift = pick("shift")
    widened = op("Cast", stored, to=TensorProto.INT32)
    offset_codes = op("Cast", op("Add", widened, half_range), to=TensorProto.UINT32)
    floor = op("BitShift", offset_codes, shift, direction="RIGHT")
    if rounding == "floor":
        rounded = floor
    elif rounding == "half_up":
        # floor(u / 2^(Δ−1)) from the doubled codes (so Δ = 0 needs no case); its last bit is the carry
        halved = op("BitShift", op("BitShift", offset_codes, one, direction="LEFT"), shift, direction="RIGHT")
        carry = op("BitwiseAnd", halved, one)
        rounded = op("Add", op("BitShift", halved, one, direction="RIGHT"), carry)
    else:  # half_even: one more when the remainder is above half, or exactly half and the floor is odd
        remainder = op("BitwiseAnd", op("BitShift", offset_codes, one, direction="LEFT"), pick("low_mask"))
        odd = op("BitwiseAnd", floor, one)
        total = op("Add", op("Add", remainder, odd), pick("half_minus_one"))
        rounded = op("Add", floor, op("BitShift", total, pick("shift_plus_one"), direction="RIGHT"))
    clipped = op("Clip", rounded, zero, pick("top"))
    signed = op("Sub", op("Cast", clipped, to=TensorProto.INT32), op("Cast", pick("offset"), to=TensorProto.INT32))
    nodes.append(helper.make_node("Cast", [signed], [output], name=f"{prefix}.codes", to=TensorProto.INT8))
    return nodes, initializers


def second_rounding_graph(high_bits: int, bit_set, rounding: str, opset: int = SWITCHABLE_OPSET):
    """A stand-alone ONNX model of :func:`second_rounding_nodes`: inputs ``codes`` (int8) and ``bits`` (int64
    scalar), output ``rounded`` (int8) — the exact ops the switchable export writes, for tests and teaching."""
    from onnx import TensorProto, helper

    nodes, initializers = second_rounding_nodes("second_rounding", "codes", "bits", "rounded", high_bits, bit_set,
                                                rounding)
    graph = helper.make_graph(nodes, "second_rounding",
                              [helper.make_tensor_value_info("codes", TensorProto.INT8, ["n"]),
                               helper.make_tensor_value_info("bits", TensorProto.INT64, [])],
                              [helper.make_tensor_value_info("rounded", TensorProto.INT8, ["n"])], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = helper.find_min_ir_version_for(list(model.opset_import))
    return model


def switchable_weight_nodes(prefix: str, stored: str, bits: str, high_scale: str, power_of_two: str,
                            high_bits: int, bit_set, rounding: str) -> tuple[list, list, str, str]:
    """The l-bit codes and step of one layer at the run-time ``bits``: :func:`second_rounding_nodes`, and the
    step ``s_h · 2^Δ`` as ``Mul(high_scale, Gather(power_of_two, bits))`` (Eq. 3).

    Returns ``(nodes, initializers, codes name, step name)``; ``DequantizeLinear(codes, step)`` is the weight.
    """
    from onnx import helper

    codes, step = f"{prefix}.codes", f"{prefix}.step"
    nodes, initializers = second_rounding_nodes(prefix, stored, bits, codes, high_bits, bit_set, rounding)
    nodes.append(helper.make_node("Gather", [power_of_two, bits], [f"{prefix}.power_of_two_picked"], axis=0,
                                  name=f"{prefix}.power_of_two_picked"))
    nodes.append(helper.make_node("Mul", [high_scale, f"{prefix}.power_of_two_picked"], [step], name=step))
    return nodes, initializers, codes, step


def _expand_switchable_weights(graph) -> None:
    """Replace each ``labkit::SwitchableWeight`` placeholder the tracer wrote by its integer ops, in place."""
    import numpy as np
    from onnx import helper, numpy_helper

    shapes = {init.name: list(init.dims) for init in graph.graph.initializer}
    position = 0
    while position < len(graph.graph.node):
        node = graph.graph.node[position]
        if node.domain != _DOMAIN or node.op_type != "SwitchableWeight":
            position += 1
            continue
        settings = json.loads(next(a for a in node.attribute if a.name == "settings").s.decode())
        prefix = settings["prefix"]
        stored, bits, high_scale, power_of_two = node.input
        nodes, initializers, codes, step = switchable_weight_nodes(prefix, stored, bits, high_scale, power_of_two,
                                                                   settings["high_bits"], settings["bit_set"],
                                                                   settings["rounding"])
        channels = shapes[stored][0]
        initializers.append(numpy_helper.from_array(np.zeros(channels, np.int8), f"{prefix}.zero_point"))
        nodes.append(helper.make_node("DequantizeLinear", [codes, step, f"{prefix}.zero_point"], [node.output[0]],
                                      axis=0, name=f"{prefix}.weight"))
        graph.graph.node.remove(node)
        for offset, new in enumerate(nodes):
            graph.graph.node.insert(position + offset, new)
        graph.graph.initializer.extend(initializers)
        position += len(nodes)
    for entry in list(graph.opset_import):
        if entry.domain == _DOMAIN:
            graph.opset_import.remove(entry)


def _share_tables(graph) -> None:
    """One copy of each identical small integer table (the second-rounding tables repeat for every layer)."""
    from onnx import numpy_helper

    first: dict[tuple, str] = {}
    rename: dict[str, str] = {}
    for init in list(graph.graph.initializer):
        if ".table." in init.name:
            key = (init.data_type, tuple(init.dims), numpy_helper.to_array(init).tobytes())
            if key in first:
                rename[init.name] = first[key]
                graph.graph.initializer.remove(init)
            else:
                first[key] = init.name
    for node in graph.graph.node:
        for position, name in enumerate(node.input):
            if name in rename:
                node.input[position] = rename[name]


def _short_value_names(graph) -> None:
    """Rename intermediate values to ``t0, t1, …`` and drop node names (the tracer's scope paths take a third
    of the file); inputs, outputs, initializers and each layer's ``<layer>.codes`` / ``<layer>.step`` keep theirs."""
    keep = {v.name for v in graph.graph.input} | {v.name for v in graph.graph.output}
    keep |= {init.name for init in graph.graph.initializer}
    rename: dict[str, str] = {}
    for node in graph.graph.node:
        node.name = ""
        for position, name in enumerate(node.output):
            if name in keep or name.endswith((".codes", ".step")):
                continue
            rename[name] = f"t{len(rename)}"
            node.output[position] = rename[name]
    for node in graph.graph.node:
        for position, name in enumerate(node.input):
            if name in rename:
                node.input[position] = rename[name]


_DOMAIN = "labkit"


class _SwitchableWeight(torch.autograd.Function):
    """``Ŵ_l = double_round(q_h, h, l) · s_h · 2^Δ`` (Eq. 2–3) for the run-time bit-width ``bits``."""

    @staticmethod
    def forward(ctx, stored_codes, bits, high_scale, power_of_two, high_bits: int, bit_set, rounding: str,
                prefix: str, shape: tuple):
        value = int(bits)
        codes = double_round(stored_codes, high_bits, value, rounding)
        step = high_scale * power_of_two[value]
        return codes.to(step.dtype) * step.view(-1, *([1] * (codes.dim() - 1)))

    @staticmethod
    def symbolic(g, stored_codes, bits, high_scale, power_of_two, high_bits: int, bit_set, rounding: str,
                 prefix: str, shape: tuple):
        # A placeholder the tracer can type (it knows no uint32 and loses the kernel shape through the
        # integer ops); :func:`_expand_switchable_weights` replaces it by :func:`switchable_weight_nodes`.
        settings = json.dumps({"prefix": prefix, "high_bits": high_bits, "bit_set": list(bit_set),
                               "rounding": rounding})
        weight = g.op(f"{_DOMAIN}::SwitchableWeight", stored_codes, bits, high_scale, power_of_two,
                      settings_s=settings)
        weight.setType(torch._C.TensorType.create_from_tensor(torch.empty(shape)))  # conv needs the kernel shape
        return weight


class _SwitchableActivation(torch.autograd.Function):
    """``clip(round(x / s_b), qmin_b, qmax_b) · s_b`` (Eq. 4–5) with the scale and range of the run-time bits."""

    @staticmethod
    def forward(ctx, x, bits, scales, row_of_bits, lowest, highest, signed: bool):
        value = int(bits)
        scale = scales[row_of_bits[value]]
        return torch.round(x * scale.reciprocal()).clamp(lowest[value], highest[value]) * scale

    @staticmethod
    def symbolic(g, x, bits, scales, row_of_bits, lowest, highest, signed: bool):
        dtype = torch.int8 if signed else torch.uint8
        scale = _gather(g, scales, _gather(g, _const(g, row_of_bits), bits))
        zero_point = g.op("Constant", value_t=torch.tensor(0, dtype=dtype))
        codes = g.op("QuantizeLinear", x, scale, zero_point)
        low, high = _gather(g, _const(g, lowest, dtype), bits), _gather(g, _const(g, highest, dtype), bits)
        codes = g.op("Clip", codes, low, high)
        return g.op("DequantizeLinear", codes, scale, zero_point)


class _Select(torch.autograd.Function):
    """Row ``row_of_bits[bits]`` of a per-bit stack (ONNX ``Gather`` of ``Gather``)."""

    @staticmethod
    def forward(ctx, stack, bits, row_of_bits):
        return stack[row_of_bits[int(bits)]]

    @staticmethod
    def symbolic(g, stack, bits, row_of_bits):
        return _gather(g, stack, _gather(g, _const(g, row_of_bits), bits))


class _SelectPair(torch.autograd.Function):
    """Row ``nb · row[previous] + row[bits]`` of a per-(previous bit, bit) stack (transitional BN)."""

    @staticmethod
    def forward(ctx, stack, previous, bits, row_of_bits, count: int):
        return stack[count * row_of_bits[int(previous)] + row_of_bits[int(bits)]]

    @staticmethod
    def symbolic(g, stack, previous, bits, row_of_bits, count: int):
        rows = _const(g, row_of_bits)
        index = g.op("Add", g.op("Mul", _gather(g, rows, previous), _const(g, count)), _gather(g, rows, bits))
        return _gather(g, stack, index)


# --------------------------------------------------------------------------------------------- modules
class _BitsState:
    """The per-layer bit-widths of the current forward pass, shared by the export modules."""

    def __init__(self, layers: int):
        self.layers, self.all_bits, self.cache = layers, None, {}

    def start(self, bits: torch.Tensor) -> None:
        self.all_bits, self.cache = _ExpandBits.apply(bits, self.layers), {}

    def of_layer(self, index: int) -> torch.Tensor:
        if index not in self.cache:
            self.cache[index] = _LayerBits.apply(self.all_bits, index)
        return self.cache[index]


def _rows(bit_set) -> list[int]:
    """``rows[b]``: the row of bit-width b in a per-bit stack (untrained b: row 0; the weights then are NaN)."""
    order = list(bit_set)
    return [order.index(b) if b in order else 0 for b in range(TABLE_SIZE)]


class SwitchableExportLayer(nn.Module):
    """One quantized conv/linear layer at the run-time bit-width: stored INT-h codes + per-bit tables.

    Built from the fixed-precision :class:`~labkit.export.ExportQuantizedLayer` of every trained bit-width,
    so each value it selects is the one the fixed export writes.
    """

    def __init__(self, layer: QuantizedLayer, name: str, index: int, state: _BitsState, fixed: dict):
        super().__init__()
        quantizer = layer.weight_quantizer
        rounding = getattr(quantizer, "rounding", None)
        if not getattr(quantizer, "nested", False) or rounding not in ROUNDINGS or not hasattr(quantizer, "high_codes"):
            raise LabkitError(
                f"layer {name!r} (method={layer.method!r}) does not derive its lower precisions from one stored "
                "integer set, so one switchable file cannot hold it; export each precision with "
                "labkit.export.export_onnx, or train with method='double_rounding'."
            )
        self.bit_set, self.high_bits, self.rounding = tuple(layer.bit_set), quantizer.high_bits, rounding
        if self.high_bits > MAX_EXPORT_BITS:
            raise BitWidthError(f"layer {name!r} stores {self.high_bits}-bit codes; the switchable file stores int8, "
                                f"so train with at most {MAX_EXPORT_BITS} bits.")
        self.index, self.state, self.name = index, state, name
        with torch.no_grad():
            stored = quantizer.high_codes(layer.weight).detach().to(torch.int8).contiguous()
            high_scale = quantizer.scale.detach().clone().float()
        power_of_two = torch.full((TABLE_SIZE,), float("nan"))
        for bits, view in fixed.items():
            power_of_two[bits] = 2.0 ** (self.high_bits - bits)
            step = high_scale * power_of_two[bits]
            codes = double_round(stored, self.high_bits, bits, rounding)
            if not (torch.equal(codes.to(torch.int8), view.weight_codes) and torch.equal(step, view.weight_step)):
                raise LabkitError(f"layer {name!r}: the {bits}-bit codes or steps are not the second rounding of the "
                                  "stored codes (Eq. 2-3), so they cannot be derived in the graph.")
        self.register_buffer("stored_codes", stored)
        self.register_buffer("high_scale", high_scale)
        self.register_buffer("power_of_two", power_of_two)
        first = fixed[self.bit_set[0]]
        self.signed = first.signed
        self.rows = _rows(self.bit_set)
        self.register_buffer("act_scales", torch.stack([fixed[b].act_scale.reshape(()) for b in self.bit_set]))
        self.register_buffer("act_offsets", torch.stack([fixed[b].act_offset.reshape(()) for b in self.bit_set])
                             if self.signed else None)
        self.lowest = [fixed[b].act_range[0] if b in fixed else 0 for b in range(TABLE_SIZE)]
        self.highest = [fixed[b].act_range[1] if b in fixed else 0 for b in range(TABLE_SIZE)]
        self.bias = first.bias
        self.conv, self.pre_padding = first.conv, first.pre_padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bits = self.state.of_layer(self.index)
        if self.pre_padding is not None:
            x = self.pre_padding(x)
        if self.signed:
            offset = _Select.apply(self.act_offsets, bits, self.rows)
            x = _SwitchableActivation.apply(x - offset, bits, self.act_scales, self.rows, self.lowest, self.highest,
                                            True) + offset
        else:
            x = _SwitchableActivation.apply(x, bits, self.act_scales, self.rows, self.lowest, self.highest, False)
        weight = _SwitchableWeight.apply(self.stored_codes, bits, self.high_scale, self.power_of_two, self.high_bits,
                                         self.bit_set, self.rounding, self.name, tuple(self.stored_codes.shape))
        if self.conv is None:
            return F.linear(x, weight, self.bias)
        return F.conv2d(x, weight, self.bias, **self.conv)


class SwitchableExportBatchNorm(nn.Module):
    """The batch norm of the run-time bit-width(s): per-bit (or per-pair) stacks, one ``BatchNormalization``."""

    def __init__(self, module: nn.Module, index: dict[str, int], state: _BitsState):
        super().__init__()
        self.bit_set, self.state = tuple(module.bit_set), state
        if isinstance(module, TransitionalBatchNorm2d):
            norms = [module.pairs[f"{p}_{c}"] for p in self.bit_set for c in self.bit_set]
            self.source = index.get(module.source)
            self.previous = index.get(module.predecessor, self.source)
        else:
            norms = [module.per_bit[str(b)] for b in self.bit_set]
            self.source, self.previous = index.get(module.source), None
        if self.source is None:
            raise LabkitError(f"batch norm after {module.source!r} follows no quantized layer of the model; "
                              "the switchable export cannot tell its bit-width.")
        eps = {norm.eps for norm in norms}
        if len(eps) != 1 or not all(norm.track_running_stats for norm in norms):
            raise LabkitError("the per-bit batch norms differ in eps or keep no running statistics; cannot export.")
        self.eps = eps.pop()
        channels = norms[0].num_features

        def stack(getter, default):
            return torch.stack([getter(norm).detach().float() if getter(norm) is not None else
                                torch.full((channels,), default) for norm in norms])

        self.register_buffer("gamma", stack(lambda n: n.weight, 1.0))
        self.register_buffer("beta", stack(lambda n: n.bias, 0.0))
        self.register_buffer("mean", stack(lambda n: n.running_mean, 0.0))
        self.register_buffer("var", stack(lambda n: n.running_var, 1.0))
        self.rows = _rows(self.bit_set)

    def _pick(self, stack: torch.Tensor) -> torch.Tensor:
        bits = self.state.of_layer(self.source)
        if self.previous is None:
            return _Select.apply(stack, bits, self.rows)
        return _SelectPair.apply(stack, self.state.of_layer(self.previous), bits, self.rows, len(self.bit_set))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self._pick(self.mean), self._pick(self.var), self._pick(self.gamma),
                            self._pick(self.beta), False, 0.0, self.eps)


class SwitchableExportModel(nn.Module):
    """``forward(images, bits)``: the model at the per-layer bit-widths ``bits`` (shape [1] or [L])."""

    def __init__(self, body: nn.Module, state: _BitsState, layer_names: list[str]):
        super().__init__()
        self.body, self.state, self.layer_names = body, state, layer_names

    def forward(self, x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
        self.state.start(bits)
        return self.body(x)


@torch.no_grad()
def switchable_view(model: nn.Module) -> SwitchableExportModel:
    """An eval-mode copy of ``model`` whose forward takes ``(images, bits)``; ``model`` is not changed."""
    _check_quantized(model)
    layers = quantized_layers(model)
    names = list(layers)
    fixed: dict[str, dict[int, ExportQuantizedLayer]] = {name: {} for name in names}
    with _AtBits(model, get_bits(model)):
        for bits in sorted({b for layer in layers.values() for b in layer.bit_set}, reverse=True):
            if bits > MAX_EXPORT_BITS:
                raise BitWidthError(f"the model is trained at {bits} bits; the switchable file holds at most "
                                    f"{MAX_EXPORT_BITS}-bit (int8) codes.")
            holding = {name: bits for name, layer in layers.items() if bits in layer.bit_set}
            set_bits(model, holding)
            for name in holding:
                fixed[name][bits] = ExportQuantizedLayer(layers[name], name)
    state = _BitsState(len(names))
    index = {name: i for i, name in enumerate(names)}
    body = copy.deepcopy(model).eval()
    for i, name in enumerate(names):
        _set_submodule(body, name, SwitchableExportLayer(layers[name], name, i, state, fixed[name]))
    for name, module in list(body.named_modules()):
        if isinstance(module, (SwitchableBatchNorm2d, TransitionalBatchNorm2d)):
            _set_submodule(body, name, SwitchableExportBatchNorm(module, index, state))
    return SwitchableExportModel(body.eval(), state, names).eval()


# ---------------------------------------------------------------------------------------------- export
def export_switchable_onnx(model: nn.Module, path, example_input: torch.Tensor | None = None,
                           opset: int = SWITCHABLE_OPSET) -> Path:
    """Write one ONNX file that runs the model at any trained bit-width chosen at run time; return the path.

    Args:
        model: a Double Rounding multi-precision model (``labkit.load_int``, ``labkit.quantize_model``), with
            switchable or transitional (HASB SuperNet) batch norm; not changed.
        path: the ``.onnx`` file to write.
        example_input: one input batch fixing the image shape (batch axis dynamic); by default the model's
            dataset size (see :func:`labkit.export.default_example_input`).
        opset: 18 to 20 (``BitwiseAnd`` needs 18; the TorchScript-based exporter writes up to 20).

    The graph's inputs are ``input`` and ``bits`` (int64, shape [1] for one bit-width everywhere, or [L] for
    one per quantized layer in the order of the metadata ``labkit.layers``); its output ``logits``. See the
    module docstring for the integer second rounding inside the graph.

    Raises:
        LabkitError: the model is not quantized, its method stores no nested integers, or a layer cannot
            be written as QDQ (see :func:`labkit.export.export_onnx`).
    """
    import onnx

    if isinstance(opset, bool) or not isinstance(opset, int) or not 18 <= opset <= 20:
        raise LabkitError(f"opset={opset!r}: the switchable export needs an opset from 18 (BitwiseAnd) to 20.")
    view = switchable_view(model)
    if example_input is None:
        example_input = default_example_input(model)
    start = torch.tensor([max(view.body.get_submodule(view.layer_names[0]).bit_set)], dtype=torch.int64)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"You are using the legacy TorchScript-based ONNX export",
                                    category=DeprecationWarning)
            warnings.filterwarnings("ignore", message=r"The feature will be removed", category=DeprecationWarning)
            warnings.filterwarnings("ignore", message=r"Constant folding - Only steps=1", category=UserWarning)
            # the forwards below read the traced bit-width as a Python int; their symbolics keep it a graph input
            warnings.filterwarnings("ignore", message=r"Converting a tensor to a Python integer",
                                    category=torch.jit.TracerWarning)
            torch.onnx.export(view, (example_input.cpu(), start), temporary, dynamo=False, opset_version=opset,
                              input_names=[INPUT_NAME, BITS_NAME], output_names=[OUTPUT_NAME],
                              custom_opsets={_DOMAIN: 1},
                              dynamic_axes={INPUT_NAME: {0: "batch"}, BITS_NAME: {0: "layers_or_one"},
                                            OUTPUT_NAME: {0: "batch"}})
        graph = onnx.load(temporary)
        _expand_switchable_weights(graph)
        _share_tables(graph)
        _short_value_names(graph)
        layers = quantized_layers(model)
        plan = getattr(model, "labkit_quant", None) or {}
        metadata = {"labkit.switchable": "1", "labkit.layers": json.dumps(view.layer_names),
                    "labkit.bit_sets": json.dumps({name: list(layer.bit_set) for name, layer in layers.items()}),
                    "labkit.method": str(plan.get("method", "")),
                    "labkit.rounding": json.dumps({name: layer.weight_quantizer.rounding
                                                   for name, layer in layers.items()})}
        for key, value in metadata.items():
            entry = graph.metadata_props.add()
            entry.key, entry.value = key, value
        graph.doc_string = ("labkit switchable Double Rounding export: int8 codes stored once; input 'bits' (int64, "
                            "[1] or one per quantized layer) picks the precision; integer second rounding in the graph")
        onnx.checker.check_model(graph)
        onnx.save(graph, temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return path


# ------------------------------------------------------------------------------------------------- run
class SwitchableSession:
    """An onnxruntime session of a switchable file, with the bit-widths checked before each run.

    ``session.run(images, bits)``: ``bits`` is one trained bit-width (``4``), a mapping ``{layer: bits}``
    (layers not named run at ``default``), or a sequence with one bit-width per layer (``session.layers``).
    """

    def __init__(self, path, threads: int | None = None, options=None):
        import onnx
        import onnxruntime

        self.path = Path(path)
        if not self.path.is_file():
            raise LabkitError(f"no ONNX file at {path}; write one with "
                              "labkit.export_switchable.export_switchable_onnx.")
        metadata = {entry.key: entry.value for entry in onnx.load(str(self.path), load_external_data=False)
                    .metadata_props}
        if metadata.get("labkit.switchable") != "1":
            raise LabkitError(f"{path} is not a switchable labkit export (no 'bits' input); run it with onnxruntime "
                              "directly, or write one with export_switchable_onnx.")
        self.layers: list[str] = json.loads(metadata["labkit.layers"])
        self.bit_sets: dict[str, list[int]] = json.loads(metadata["labkit.bit_sets"])
        self.bit_set = sorted(set.intersection(*(set(v) for v in self.bit_sets.values())), reverse=True)
        if options is None:
            options = onnxruntime.SessionOptions()
            if threads is not None:
                options.intra_op_num_threads = threads
        self.session = onnxruntime.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])

    def bits_input(self, bits, default: int | None = None):
        """The int64 ``bits`` input for ``bits`` (see the class docstring), checked against the trained bit sets."""
        import numpy as np

        if isinstance(bits, Mapping):
            unknown = sorted(set(bits) - set(self.layers))
            if unknown:
                raise BitWidthError(f"bits names no quantized layer {unknown}; the layers are {self.layers}.")
            fill = self.bit_set[0] if default is None else default
            values = [bits.get(name, fill) for name in self.layers]
        elif isinstance(bits, (list, tuple)) or (hasattr(bits, "shape") and getattr(bits, "ndim", 0) > 0):
            values = [int(b) for b in bits]
            if len(values) != len(self.layers):
                raise BitWidthError(f"bits has {len(values)} entries; give one per quantized layer "
                                    f"({len(self.layers)}) or a single bit-width.")
        else:
            if isinstance(bits, bool) or not isinstance(bits, int):
                raise BitWidthError(f"bits={bits!r} must be a whole number, a {{layer: bits}} mapping or a list.")
            values = [bits] * len(self.layers)
        for name, value in zip(self.layers, values):
            if isinstance(value, bool) or not isinstance(value, int) or value not in self.bit_sets[name]:
                raise BitWidthError(f"layer {name!r} was trained at {self.bit_sets[name]} bits, not {value!r}.")
        if len(set(values)) == 1:
            return np.array([values[0]], dtype=np.int64)
        return np.array(values, dtype=np.int64)

    def run(self, images, bits, default: int | None = None):
        """Logits (numpy) of ``images`` (a tensor or array ``N×3×H×W``) at ``bits``."""
        import numpy as np

        if isinstance(images, torch.Tensor):
            images = images.detach().cpu().float().numpy()
        feed = {INPUT_NAME: np.ascontiguousarray(images, dtype=np.float32), BITS_NAME: self.bits_input(bits, default)}
        return self.session.run([OUTPUT_NAME], feed)[0]


_INTEGER_OPS = {"Cast", "Add", "Sub", "BitShift", "BitwiseAnd", "Clip", "Gather", "Constant"}


def layer_code_outputs(graph) -> dict[str, str]:
    """``{layer: name of the graph value holding its derived l-bit codes}`` for a switchable export.

    Found by walking the graph, not by names: each per-channel (``axis``) ``DequantizeLinear`` whose codes
    are computed, through integer ops only, from a ``*.stored_codes`` initializer. Tests and the notebook add
    these values as outputs to read the integers the graph computes.
    """
    producers = {out: node for node in graph.graph.node for out in node.output}
    stored = {init.name for init in graph.graph.initializer if init.name.endswith(".stored_codes")}
    found = {}
    for node in graph.graph.node:
        if node.op_type != "DequantizeLinear" or not any(a.name == "axis" for a in node.attribute):
            continue  # activation DequantizeLinear nodes are per tensor (no axis)
        frontier, seen = [node.input[0]], set()
        while frontier:
            name = frontier.pop()
            if name in seen:
                continue
            seen.add(name)
            if name in stored:
                layer = name[: -len(".stored_codes")]
                found[layer[len("body."):] if layer.startswith("body.") else layer] = node.input[0]
                break
            if name in producers and producers[name].op_type in _INTEGER_OPS:
                frontier.extend(producers[name].input)
    return found


def graph_codes(path, bits) -> dict:
    """``{layer: int8 numpy array}``: the l-bit codes the switchable file at ``path`` computes for ``bits``.

    Runs the graph in onnxruntime with every layer's derived codes (:func:`layer_code_outputs`) as extra
    outputs, on one zero image; ``bits`` as :meth:`SwitchableSession.bits_input` takes it. These integers are
    what each layer's ``DequantizeLinear`` multiplies by its step.
    """
    import numpy as np
    import onnx
    import onnxruntime

    runner = SwitchableSession(path)
    graph = onnx.load(str(path))
    outputs = layer_code_outputs(graph)
    for value in outputs.values():
        graph.graph.output.append(onnx.helper.make_tensor_value_info(value, onnx.TensorProto.INT8, None))
    session = onnxruntime.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    shape = [d.dim_value or 1 for d in graph.graph.input[0].type.tensor_type.shape.dim]
    feed = {INPUT_NAME: np.zeros(shape, np.float32), BITS_NAME: runner.bits_input(bits)}
    names = [o.name for o in session.get_outputs()]
    values = dict(zip(names, session.run(None, feed)))
    return {layer: values[value] for layer, value in outputs.items()}


@torch.no_grad()
def verify_switchable(model: nn.Module, path, inputs, bits=None) -> dict:
    """Run a switchable file in onnxruntime against ``model`` at each trained bit-width (or at ``bits``).

    Args:
        model: the PyTorch model the file was exported from (its bit-widths and mode are restored).
        path: the switchable ``.onnx`` file.
        inputs: a tensor, or an iterable of tensors or ``(images, labels)`` batches.
        bits: ``None`` (every bit-width all layers share) or a list of the precisions to check, each as
            :meth:`SwitchableSession.bits_input` takes it (an int or a ``{layer: bits}`` mapping).

    Returns ``{label: {"top1_agreement", "max_abs_diff", "max_abs_logit", "images"}}`` with label the bit-width
    (or ``"mixed"`` plus its index for a mapping). Why the logits need not agree bit for bit with PyTorch:
    see :func:`labkit.export.verify_onnx` (float summation order; a code on a rounding boundary).
    """
    from labkit.export import _batches

    session = SwitchableSession(path)
    choices = list(session.bit_set) if bits is None else list(bits)
    results = {}
    was_training = model.training
    model.eval()
    try:
        for position, choice in enumerate(choices):
            wanted = dict(choice) if isinstance(choice, Mapping) else choice
            label = wanted if isinstance(wanted, int) else f"mixed {position}"
            agree = images = 0
            max_diff = max_logit = 0.0
            with _AtBits(model, get_bits(model)):
                set_bits(model, wanted)
                device = next(model.parameters()).device
                for batch, _ in _batches(inputs):
                    expected = model(batch.to(device)).float().cpu()
                    got = torch.from_numpy(session.run(batch, wanted))
                    max_diff = max(max_diff, float((got - expected).abs().max()))
                    max_logit = max(max_logit, float(expected.abs().max()))
                    agree += int((got.argmax(1) == expected.argmax(1)).sum())
                    images += batch.shape[0]
            if images == 0:
                raise LabkitError("verify_switchable got no inputs; pass a tensor or a non-empty iterable of batches.")
            results[label] = {"top1_agreement": agree / images, "max_abs_diff": max_diff, "max_abs_logit": max_logit,
                              "images": images}
    finally:
        model.train(was_training)
    return results
