"""Integer switching near its limit (issue 11, item 5): INT8 → b-bit of all ResNet-18 layers ÷ a copy of the bytes.

torchvision's ResNet-18 (``build_model("resnet18")``) quantized by ``labkit.quantize_model`` with bits
(8, 6, 4, 2), saved with ``save_int`` and rebuilt with ``load_int``: 19 quantized layers, 11.16 M INT8 codes.
Candidates, timed round-robin in this one process (median over rounds; ratios are medians of per-round ratios):

- ``copy_flat``: ``out.copy_(codes)`` of all the codes in one flat int8 buffer into a preallocated one -- the
  memory-bandwidth floor (the same bytes read and written once); ``copy_per_layer``: ``clone()`` per layer;
- ``bank_switch``: ``labkit.int_switch.CodeBank.switch(4)`` -- the one-pass word kernel over the same flat buffer
  into its preallocated output (the headline, against ``copy_flat``);
- ``switch_int8_per_layer``: ``switch_int8(codes, 4)`` per layer (19 calls, new tensors), against ``copy_per_layer``;
- ``double_round_per_layer_eager``: ``labkit.quant.double_round`` per layer, eager -- what the model's
  ``weight_codes()`` runs today;
- ``fp32_requant_per_layer``: ``round(W / (s·2^Δ)).clamp(-8, 7).to(int8)`` from the FP32 masters per layer, eager
  (what switching costs without stored codes; ``foundation.py`` §2 has more FP32 variants).

Every candidate's codes are checked equal to ``double_round``'s (and the FP32 re-quantization's agreement with the
double-rounded codes is reported) before timing.
"""
from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch

import labkit
from labkit.int_switch import CodeBank, compiled_switch_error, switch_int8
from labkit.models import build_model
from labkit.quant.rounding import double_round
from labkit.quant.weight import channel_view

LOW_BITS = 4
RULES = ("half_even", "half_up", "floor")


def _times(candidates: dict, rounds: int) -> dict[str, list[float]]:
    names = list(candidates)
    samples = {name: [] for name in names}
    for round_index in range(rounds):
        for name in names if round_index % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            candidates[name]()
            samples[name].append(time.perf_counter() - start)
    return samples


def _ratio(numerator: list[float], denominator: list[float]) -> float:
    return round(statistics.median(a / b for a, b in zip(numerator, denominator)), 3)


def measure(rounds: int = 40) -> dict:
    """Per tie rule: milliseconds of every candidate and the ratios to the copies and to FP32 re-quantization."""
    torch.manual_seed(0)
    results, first_call_s = {}, {}
    for rule in RULES:
        model = labkit.quantize_model(build_model("resnet18"), bits=(8, 6, 4, 2), rounding=rule)
        with tempfile.TemporaryDirectory() as directory:
            loaded = labkit.load_int(labkit.save_int(model, Path(directory) / "resnet18.safetensors"))
        layers = labkit.quantized_layers(loaded)
        codes = [layer.weight_quantizer.stored_codes for layer in layers.values()]
        masters = [layer.weight.detach().contiguous() for layer in labkit.quantized_layers(model).values()]
        inverse = [channel_view((layer.weight_quantizer.scale.detach() * 2.0 ** (8 - LOW_BITS)).reciprocal(),
                                layer.weight) for layer in labkit.quantized_layers(model).values()]
        bank = CodeBank.from_model(loaded)
        flat_out = torch.empty_like(bank.codes)
        start = time.perf_counter()
        switched = bank.switch(LOW_BITS)  # the first call compiles the kernel for this tie rule
        first_call_s[rule] = round(time.perf_counter() - start, 2)
        reference = [double_round(c, 8, LOW_BITS, rule) for c in codes]
        assert all(torch.equal(switched[name], ref) for name, ref in zip(layers, reference))
        assert all(torch.equal(switch_int8(c, LOW_BITS, rule), ref) for c, ref in zip(codes, reference))
        requant = [torch.round(w * inv).clamp_(-8, 7).to(torch.int8) for w, inv in zip(masters, inverse)]
        disagree = sum(int((a != b).sum()) for a, b in zip(requant, reference)) / bank.numel
        candidates = {
            "copy_flat": lambda: flat_out.copy_(bank.codes),
            "bank_switch": lambda: bank.switch(LOW_BITS),
            "copy_per_layer": lambda: [c.clone() for c in codes],
            "switch_int8_per_layer": lambda: [switch_int8(c, LOW_BITS, rule) for c in codes],
            "double_round_per_layer_eager": lambda: [double_round(c, 8, LOW_BITS, rule) for c in codes],
            "fp32_requant_per_layer": lambda: [torch.round(w * inv).clamp_(-8, 7).to(torch.int8)
                                               for w, inv in zip(masters, inverse)],
        }
        for call in candidates.values():  # warm-up (caches, allocator, shapes the compiler has not seen)
            call(), call()
        samples = _times(candidates, rounds)
        ms = {name: round(statistics.median(t) * 1e3, 3) for name, t in samples.items()}
        results[rule] = {
            "fast_vs_copy": _ratio(samples["bank_switch"], samples["copy_flat"]),
            "per_layer_switch_vs_per_layer_copy": _ratio(samples["switch_int8_per_layer"], samples["copy_per_layer"]),
            "double_round_eager_vs_copy": _ratio(samples["double_round_per_layer_eager"], samples["copy_flat"]),
            "fp32_requant_vs_copy": _ratio(samples["fp32_requant_per_layer"], samples["copy_flat"]),
            "speedup_vs_fp32_requant": _ratio(samples["fp32_requant_per_layer"], samples["bank_switch"]),
            "speedup_vs_double_round_eager": _ratio(samples["double_round_per_layer_eager"], samples["bank_switch"]),
            "ms": ms,
            "first_call_s": first_call_s[rule],
            "fp32_requant_disagrees_with_double_round": round(disagree, 4),
        }
    common = {"layers": len(codes), "codes": bank.numel, "to_bits": LOW_BITS, "rounds": rounds,
              "compile_error": compiled_switch_error(), "threads": torch.get_num_threads()}
    value_is = ("CodeBank.switch(4) of all 19 ResNet-18 layers (one-pass word kernel, labkit.int_switch) ÷ "
                "out.copy_ of the same int8 bytes in one flat buffer; median of per-round ratios")
    return {"by_rule": results, "common": common, "value_is": value_is}
