"""Exercise: what one convolution costs at given bits — BitOPs and weight size (METHOD.md §6 step 4).

For ``nn.Conv2d(C_in, C_out, k, stride, padding, dilation, groups)`` on an H × W input:

    H_out = ⌊(H + 2·padding − dilation·(k − 1) − 1) / stride⌋ + 1      (the same for W)
    MACs  = C_out · H_out · W_out · (C_in / groups) · k_h · k_w           (per image, bias not counted)
    BitOPs = MACs · weight_bits · act_bits
    size   = weight count · weight_bits  (in bits; biases, BN and scales not counted)

The grader compares ``student_fn(layer, input_size, weight_bits, act_bits) -> (bitops, size_bits)`` with
:func:`labkit.hasb.cost.layer_costs`, :func:`~labkit.hasb.cost.bitops` and :func:`~labkit.hasb.cost.model_size_bits`.
"""
from __future__ import annotations

import math

from torch import nn

from labkit.exercises.grading import ExerciseFeedback, Failed, call_student, fmt, grader, to_number
from labkit.hasb.cost import bitops, layer_costs, model_size_bits

SIGNATURE = "my_conv_cost(layer, input_size, weight_bits, act_bits) -> (bitops, size_bits)"
TODO = "MACs = C_out·H_out·W_out·(C_in/groups)·k_h·k_w; return (MACs·weight_bits·act_bits, weights·weight_bits)."


def reference_conv_cost(layer: nn.Conv2d, input_size, weight_bits: int, act_bits: int) -> tuple[int, int]:
    """(BitOPs per image, weight bits) of a convolution on an ``input_size = (H, W)`` input."""
    out = [(size + 2 * pad - dil * (k - 1) - 1) // stride + 1 for size, pad, dil, k, stride in
           zip(input_size, layer.padding, layer.dilation, layer.kernel_size, layer.stride)]
    macs = layer.out_channels * out[0] * out[1] * (layer.in_channels // layer.groups) * math.prod(layer.kernel_size)
    return macs * weight_bits * act_bits, layer.weight.numel() * weight_bits


def _cases():
    """(name, layer, (H, W), weight_bits, act_bits); the weights' values do not matter."""
    return (
        ("3×3 conv, stride 1, padding 1", nn.Conv2d(16, 16, 3, padding=1, bias=False), (32, 32), 8, 8),
        ("3×3 conv, stride 2", nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), (32, 32), 4, 4),
        ("5×5 conv, no padding", nn.Conv2d(3, 8, 5, bias=False), (12, 12), 8, 8),
        ("3×3 conv with a bias", nn.Conv2d(8, 16, 3, padding=1, bias=True), (16, 16), 6, 6),
        ("1×1 conv, 2-bit weights and 4-bit activations", nn.Conv2d(32, 64, 1, bias=False), (8, 8), 2, 4),
        ("depthwise 3×3 conv (groups = channels)", nn.Conv2d(32, 32, 3, padding=1, groups=32, bias=False), (16, 16), 4, 4),
        ("3×1 conv, stride (2, 1), dilation 2", nn.Conv2d(8, 8, (3, 1), stride=(2, 1), padding=(2, 0), dilation=(2, 1),
                                                         bias=False), (10, 7), 8, 4),
    )


def _hints(layer, size, wb, ab, got_ops, got_size, macs, params):
    """Hints for the BitOPs and the size answer (each ``""`` when no known mistake fits)."""
    h, w = size
    in_macs = layer.out_channels * h * w * (layer.in_channels // layer.groups) * math.prod(layer.kernel_size)
    no_groups = macs * layer.groups
    no_pad = layer.out_channels * math.prod(
        (s - d * (k - 1) - 1) // st + 1 for s, d, k, st in zip(size, layer.dilation, layer.kernel_size, layer.stride)
    ) * (layer.in_channels // layer.groups) * math.prod(layer.kernel_size)
    ops = [  # (what the mistake gives, hint)
        (2 * macs * wb * ab, "You count 2 operations per multiply-accumulate (FLOPs); BitOPs count one per MAC."),
        (macs, "Multiply the MACs by weight_bits × act_bits."),
        (macs * wb, "BitOPs = MACs × weight_bits × act_bits: you left out the activation bits."),
        (macs * wb * wb, "The activations are at act_bits: BitOPs = MACs × weight_bits × act_bits, not × weight_bits²."),
        (macs * (wb + ab), "BitOPs multiply the two bit-widths (MACs × weight_bits × act_bits), not add them."),
        (in_macs * wb * ab, f"The MACs use the output size H_out × W_out (stride {layer.stride}), not the input size."),
        (no_groups * wb * ab, f"Each output channel of a grouped conv sees only C_in/groups = "
                              f"{layer.in_channels // layer.groups} input channels (groups = {layer.groups})."),
        (no_pad * wb * ab, f"H_out and W_out include the padding {layer.padding}: "
                           "⌊(H + 2·padding − dilation·(k − 1) − 1) / stride⌋ + 1."),
    ]
    bias = layer.out_channels if layer.bias is not None else 0
    sizes = [
        ((params + bias) * wb, "Biases are not counted in the weight size (they stay FP32, like BN and the scales)."),
        (params * wb + bias * 32, "Biases are not counted in the weight size (they stay FP32, like BN and the scales)."),
        (params * wb / 8, "Give the size in bits, not bytes."),
        (params, "Multiply the weight count by weight_bits."),
        (params * layer.groups * wb, f"A grouped conv's weight has C_in/groups = {layer.in_channels // layer.groups} "
                                     "input channels per filter: count layer.weight.numel()."),
        (params * ab, "The weights are stored at weight_bits, not act_bits."),
    ]
    first = lambda pairs, got: next((text for value, text in pairs if math.isclose(got, value)), "")  # noqa: E731
    return first([p for p in ops if p[0] != macs * wb * ab], got_ops), first([p for p in sizes if p[0] != params * wb], got_size)


@grader(SIGNATURE, TODO)
def check_bitops(student_fn) -> ExerciseFeedback:
    """Grade ``student_fn(layer, (H, W), weight_bits, act_bits) -> (BitOPs, size in bits)`` on seven convolutions."""
    cases = _cases()
    for name, layer, size, wb, ab in cases:
        cost = layer_costs(layer, (layer.in_channels, *size))[""]
        expected_ops, expected_size = bitops(cost.macs, wb, ab), model_size_bits(cost.params, wb)
        case = f"{name}: {layer}, input {size[0]}×{size[1]}, weight_bits={wb}, act_bits={ab}"
        answer = call_student(student_fn, layer, size, wb, ab, case=case, todo=TODO)
        if not isinstance(answer, (tuple, list)) or len(answer) != 2:
            raise Failed(f"Return a pair (bitops, size_bits); you returned {type(answer).__name__} {answer!r} "
                         f"({case}).", case, (expected_ops, expected_size), answer)
        got_ops, got_size = to_number(answer[0], case), to_number(answer[1], case)
        ops_ok, size_ok = math.isclose(got_ops, expected_ops), math.isclose(got_size, expected_size)
        if ops_ok and size_ok:
            continue
        ops_hint, size_hint = _hints(layer, size, wb, ab, got_ops, got_size, cost.macs, cost.params)
        out = cost.macs // (layer.out_channels * (layer.in_channels // layer.groups) * math.prod(layer.kernel_size))
        if not ops_ok:
            raise Failed(f"{case}: you return BitOPs = {fmt(got_ops)}; expected {fmt(expected_ops)} = MACs "
                         f"{cost.macs} (C_out·H_out·W_out·(C_in/groups)·k_h·k_w with H_out·W_out = {out}) "
                         f"× {wb} × {ab}. {ops_hint}".rstrip(), name, expected_ops, got_ops)
        raise Failed(f"{case}: you return size = {fmt(got_size)} bits; expected {fmt(expected_size)} = "
                     f"{cost.params} weights × {wb} bits. {size_hint}".rstrip(), name, expected_size, got_size)
    return ExerciseFeedback(True, f"Correct: BitOPs and weight size match labkit.hasb.cost on all {len(cases)} "
                                  "convolutions (stride, no padding, bias, mixed bits, depthwise, dilation).")
