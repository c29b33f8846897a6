"""Foundation benchmarks of labkit: fake-quant speed, integer bit switching, INT checkpoint size.

Run ``python benchmarks/foundation.py [--quick] [--json PATH] [--threads N]`` (from any directory). Every figure is a
ratio (or size) measured side by side in this one process: the candidates of one measurement run round-robin,
A, B, A, B, … (the order reversed every other round), and each figure is a median over rounds. Nothing here
asserts a time; ``met`` only says whether a figure reaches its goal on this machine. See ``benchmarks/README.md``.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

# Import labkit from this checkout whatever the current directory is (and even if the installed copy is stale).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

import labkit  # noqa: E402
from labkit.config import hardware_summary  # noqa: E402
from labkit.models import build_model  # noqa: E402
from labkit.quant.lsq import fake_quantize, lsq_grad_scale, use_compile  # noqa: E402
from labkit.quant.ranges import int_range  # noqa: E402
from labkit.quant import lsq as _lsq  # noqa: E402
from labkit.quant import rounding as _rounding  # noqa: E402
from labkit.quant.rounding import double_round, use_fused_double_round  # noqa: E402
from labkit.quant.weight import channel_view  # noqa: E402
from labkit.storage import CODES_SUFFIX, int_state, load_int, save_int  # noqa: E402

HIGH_BITS, LOW_BITS = 8, 4
SHIFT = HIGH_BITS - LOW_BITS


# ----------------------------------------------------------------------------------------------- timing helpers

def interleaved_times(candidates: dict, rounds: int, inner: int = 1) -> dict[str, list[float]]:
    """Seconds per call of every candidate, measured round-robin (order reversed every other round)."""
    names = list(candidates)
    samples = {name: [] for name in names}
    gc.collect()
    for round_index in range(rounds):
        for name in names if round_index % 2 == 0 else names[::-1]:
            call = candidates[name]
            start = time.perf_counter()
            for _ in range(inner):
                call()
            samples[name].append((time.perf_counter() - start) / inner)
    return samples


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1e3


def paired_ratio(numerator: list[float], denominator: list[float]) -> float:
    """Median over rounds of numerator/denominator, each pair timed in the same round."""
    return statistics.median(a / b for a, b in zip(numerator, denominator))


def first_call_seconds(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def result(value: float, unit: str, goal: str, met: bool, details: dict) -> dict:
    return {"value": float(value), "unit": unit, "goal": goal, "met": bool(met), "details": details}


def capture_mode() -> tuple[dict, dict]:
    """The kernels that ``use_compile`` / ``use_fused_double_round`` last installed (labkit's own objects).

    A timed call that switched modes by calling them would time their bookkeeping too; the candidates below
    switch by restoring a snapshot taken once after the public call: the same state, at the cost of two dict
    updates.
    """
    return dict(_lsq._KERNELS), dict(_rounding._KERNEL)


def restore_mode(snapshot: tuple[dict, dict]) -> None:
    _lsq._KERNELS.update(snapshot[0])
    _rounding._KERNEL.update(snapshot[1])


def in_mode(snapshot: tuple[dict, dict], step):
    def call():
        restore_mode(snapshot)
        return step()
    return call


# ------------------------------------------------------------------- 1. weight fake-quant vs PyTorch's fused op

def _conv_weight(channels: int, seed: int = 0):
    """A ResNet-sized 3×3 conv weight, its per-channel 8-bit scale (leaf), and an upstream gradient."""
    generator = torch.Generator().manual_seed(seed)
    weight = (torch.randn(channels, channels, 3, 3, generator=generator) * 0.05).requires_grad_()
    scale = (weight.detach().flatten(1).abs().amax(1) / 127).requires_grad_()
    grad_out = torch.randn(channels, channels, 3, 3, generator=generator)
    return weight, scale, grad_out


def ours_step(weight, scale, grad_out, bits: int, rounding: str = "half_even"):
    """Forward + backward of labkit's Double Rounding weight fake-quant, as QConv2d calls it."""
    qmin, qmax = int_range(bits)
    out = fake_quantize(weight, channel_view(scale, weight), qmin, qmax, shift=HIGH_BITS - bits,
                        rounding=rounding, grad_factor=lsq_grad_scale(weight[0].numel(), qmax))
    return torch.autograd.grad(out, (weight, scale), grad_out)


def torch_step(weight, scale, zero_point, grad_out, bits: int):
    """Forward + backward of ``torch._fake_quantize_learnable_per_channel_affine`` with the same LSQ factor."""
    qmin, qmax = int_range(bits)
    out = torch._fake_quantize_learnable_per_channel_affine(
        weight, scale, zero_point, 0, qmin, qmax, lsq_grad_scale(weight[0].numel(), qmax))
    return torch.autograd.grad(out, (weight, scale), grad_out)


def weight_fakequant_vs_torch_fused(rounds: int = 30, channel_counts=(256, 512)) -> dict:
    """Time(ours fwd+bwd) ÷ time(PyTorch learnable per-channel fake-quant fwd+bwd), eager and compiled."""
    was_mode = capture_mode()
    torch._dynamo.reset()
    use_compile(False)
    eager_mode = capture_mode()
    use_compile(True)
    compiled_mode = capture_mode()
    per_shape = {}
    for channels in channel_counts:
        weight, scale, grad_out = _conv_weight(channels)
        zero_point = torch.zeros(channels)
        # PyTorch's op at 4 bits, with the tied 4-bit scale s_8 · 2^Δ as its own leaf: the reference cost at Δ > 0.
        scale_low = (scale.detach() * 2.0 ** SHIFT).requires_grad_()

        restore_mode(eager_mode)
        ours_out = ours_step(weight, scale, grad_out, HIGH_BITS)
        reference = torch_step(weight, scale, zero_point, grad_out, HIGH_BITS)
        check = {
            "max_abs_diff_grad_weight": float((ours_out[0] - reference[0]).abs().max()),
            "max_rel_diff_grad_scale": float(((ours_out[1] - reference[1]).abs() / reference[1].abs().clamp_min(1e-12)).max()),
        }

        steps = {
            "ours_8bit": lambda: ours_step(weight, scale, grad_out, HIGH_BITS),
            "ours_8to4_half_even": lambda: ours_step(weight, scale, grad_out, LOW_BITS, "half_even"),
            "ours_8to4_half_up": lambda: ours_step(weight, scale, grad_out, LOW_BITS, "half_up"),
        }
        compile_seconds = {}
        restore_mode(compiled_mode)
        for name, step in steps.items():
            compile_seconds[name] = first_call_seconds(step)  # minus one steady call below
        candidates = {"torch_8bit": lambda: torch_step(weight, scale, zero_point, grad_out, HIGH_BITS),
                      "torch_4bit": lambda: torch_step(weight, scale_low, zero_point, grad_out, LOW_BITS)}
        for name, step in steps.items():
            candidates[f"{name}_eager"] = in_mode(eager_mode, step)
            candidates[f"{name}_compiled"] = in_mode(compiled_mode, step)
        for call in candidates.values():  # warm-up (caches, allocator)
            call()
            call()
        samples = interleaved_times(candidates, rounds)
        ms = {name: round(median_ms(values), 3) for name, values in samples.items()}
        ratios = {}
        for name in steps:
            reference_name = "torch_8bit" if name == "ours_8bit" else "torch_4bit"
            for mode in ("eager", "compiled"):
                ratios[f"{name}_{mode}_vs_{reference_name}"] = round(
                    paired_ratio(samples[f"{name}_{mode}"], samples[reference_name]), 3)
        per_shape[f"{channels}x{channels}x3x3"] = {
            "ratio": ratios,
            "median_ms": ms,
            "compile_s": {name: round(max(seconds - ms[f"{name}_compiled"] / 1e3, 0.0), 2)
                          for name, seconds in compile_seconds.items()},
            "check_vs_torch_8bit": check,
        }
    restore_mode(was_mode)
    compiled_8bit = {shape: entry["ratio"]["ours_8bit_compiled_vs_torch_8bit"] for shape, entry in per_shape.items()}
    value = max(compiled_8bit.values())
    return result(value, "× time of torch op", "≤ 0.8", value <= 0.8, {
        "value_is": "compiled (use_compile(True)) 8-bit Δ=0 ratio, worst over the shapes; "
                    "fwd+bwd, per-channel scale, LSQ grad factor, median of per-round ratios",
        "compiled_ratio_by_shape": compiled_8bit,
        "eager_ratio_by_shape": {shape: entry["ratio"]["ours_8bit_eager_vs_torch_8bit"] for shape, entry in per_shape.items()},
        "rounds": rounds,
        "shapes": per_shape,
        "note": "Δ=4 rows compare ours (8-bit codes → 4 bits by the 2nd rounding) with PyTorch's op run directly "
                "at 4 bits (one rounding, scale s_8·16): PyTorch has no double-rounding op, so this is a reference "
                "cost, not the same computation. compile_s = first call minus a steady call (may hit Inductor's "
                "on-disk cache on re-runs).",
    })


# ------------------------------------------------------------- 2. integer bit switching vs FP32 re-quantization

RULES = ("half_even", "half_up", "floor")
GOAL_RULES = ("half_even", "half_up")
BLOCK_ELEMENTS = 1 << 16  # 256 KiB of FP32 per block: the block's passes stay in the L2 cache


def _requant_one(w, inverse_scale):
    return torch.round(w * inverse_scale).clamp_(-8, 7).to(torch.int8)


def _requant_plain(masters, inverse_scales):
    return [_requant_one(w, inv) for w, inv in zip(masters, inverse_scales)]


def _make_requant_buffered(masters, inverse_scales):
    """FP32 → 4-bit codes with preallocated float and int8 buffers: mul(out=), round_, clamp_, copy_ to int8."""
    floats = [torch.empty_like(w) for w in masters]
    codes = [torch.empty_like(w, dtype=torch.int8) for w in masters]

    def requant():
        for w, inv, buffer, out in zip(masters, inverse_scales, floats, codes):
            torch.mul(w, inv, out=buffer).round_().clamp_(-8, 7)
            out.copy_(buffer)  # whole numbers, so the float → int8 conversion is exact
        return codes
    return requant


def _make_requant_blocked(masters, inverse_scales):
    """The buffered steps on blocks of whole output channels (~BLOCK_ELEMENTS weights) through one scratch
    buffer, so that mul/round/clamp/copy of a block run in cache and only W (4 B) and the codes (1 B) go to memory."""
    codes = [torch.empty_like(w, dtype=torch.int8) for w in masters]
    blocks = []
    for w, inv, out in zip(masters, inverse_scales, codes):
        rows = max(1, BLOCK_ELEMENTS // w[0].numel())
        blocks.extend((w[r:r + rows], inv[r:r + rows], out[r:r + rows]) for r in range(0, w.shape[0], rows))
    scratch = torch.empty(max(w.numel() for w, _, _ in blocks))

    def requant():
        for w, inv, out in blocks:
            buffer = scratch[:w.numel()].view(w.shape)
            torch.mul(w, inv, out=buffer).round_().clamp_(-8, 7)
            out.copy_(buffer)
        return codes
    return requant


def _make_half_even_preallocated(codes):
    """Information only, not labkit code: the same integer half-even steps as ``shift_round`` written into
    preallocated int8 buffers, to show how much of the eager cost is allocation (checked equal to labkit)."""
    buffers = [(torch.empty_like(c), torch.empty_like(c), torch.empty_like(c)) for c in codes]
    mask, half_minus_one = (1 << SHIFT) - 1, (1 << (SHIFT - 1)) - 1
    _, qmax = int_range(LOW_BITS)

    def switch():
        for q, (floor, remainder, parity) in zip(codes, buffers):
            torch.bitwise_right_shift(q, SHIFT, out=floor)
            torch.bitwise_and(q, mask, out=remainder)
            remainder += torch.bitwise_and(floor, 1, out=parity)
            remainder += half_minus_one
            remainder >>= SHIFT
            floor += remainder
            floor.clamp_(max=qmax)
        return [floor for floor, _, _ in buffers]
    return switch


def _switch_all(codes, rounding):
    """labkit's switch: ``labkit.quant.double_round`` on every layer (eager or fused, whichever is installed)."""
    return [double_round(c, HIGH_BITS, LOW_BITS, rounding) for c in codes]


def _all_equal(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def int8_switch_vs_fp32_requant(rounds: int = 30) -> dict:
    """Time to switch every quantized layer of ResNet-18 from its INT8 codes to 4 bits, vs re-quantizing FP32.

    Headline: labkit's fused path (``use_fused_double_round(True)``, then ``double_round`` per layer) against the
    fastest eager FP32 re-quantization. Eager vs eager and compiled vs compiled are in the details.
    """
    torch.manual_seed(0)
    model = labkit.quantize_model(build_model("resnet18"), bits=(8, 6, 4, 2))
    layers = labkit.quantized_layers(model)
    with torch.no_grad():
        codes = [layer.weight_quantizer.high_codes(layer.weight).contiguous() for layer in layers.values()]
        masters = [layer.weight.detach().contiguous() for layer in layers.values()]
        inverse_scales = [channel_view((layer.weight_quantizer.scale.detach() * 2.0 ** SHIFT).reciprocal(), layer.weight)
                          for layer in layers.values()]
    flat_codes = torch.cat([c.reshape(-1) for c in codes])
    elements = flat_codes.numel()
    assert all(c.dtype == torch.int8 for c in codes)

    was_mode = capture_mode()
    torch._dynamo.reset()
    use_fused_double_round(False)
    eager_mode = capture_mode()

    eager_codes = {rule: _switch_all(codes, rule) for rule in RULES}
    # How often the direct 4-bit rounding of W disagrees with the double-rounded codes (METHOD.md §1: ~3 %).
    direct = _requant_plain(masters, inverse_scales)
    disagreement = {rule: sum(int((a != b).sum()) for a, b in zip(eager_codes[rule], direct)) / elements
                    for rule in RULES}

    # labkit's public path: a model loaded from an INT checkpoint switches via layer.weight_codes().
    with tempfile.TemporaryDirectory() as directory:
        loaded = load_int(save_int(model, Path(directory) / "resnet18.safetensors"), bits=LOW_BITS)
    loaded_layers = list(labkit.quantized_layers(loaded).values())
    training_layers = list(layers.values())
    labkit.set_bits(model, LOW_BITS)

    requant_buffered = _make_requant_buffered(masters, inverse_scales)
    requant_blocked = _make_requant_blocked(masters, inverse_scales)
    assert _all_equal(requant_buffered(), direct) and _all_equal(requant_blocked(), direct)
    half_even_preallocated = _make_half_even_preallocated(codes)
    assert _all_equal(half_even_preallocated(), eager_codes["half_even"])

    eager_fp32 = {
        "fp32_requant_plain": lambda: _requant_plain(masters, inverse_scales),
        "fp32_requant_buffered": requant_buffered,
        "fp32_requant_blocked": requant_blocked,
    }
    candidates = dict(eager_fp32)
    for rule in RULES:
        candidates[f"eager_int8_{rule}"] = in_mode(eager_mode, lambda rule=rule: _switch_all(codes, rule))
    candidates.update({
        "eager_int8_half_even_one_flat_buffer": in_mode(
            eager_mode, lambda: double_round(flat_codes, HIGH_BITS, LOW_BITS, "half_even")),
        "eager_int8_half_even_preallocated_sketch": half_even_preallocated,
        "api_loaded_model_weight_codes_eager": in_mode(eager_mode, lambda: [l.weight_codes() for l in loaded_layers]),
        "api_training_model_weight_codes_eager": in_mode(eager_mode, lambda: [l.weight_codes() for l in training_layers]),
    })

    compile_seconds, fused_equal, compile_error = {}, {}, None
    try:
        use_fused_double_round(True)  # labkit's own switch: double_round runs as one compiled integer kernel
        fused_mode = capture_mode()
        fused = {rule: in_mode(fused_mode, lambda rule=rule: _switch_all(codes, rule)) for rule in RULES}
        for rule in RULES:  # the first call compiles (per shape); timed apart, minus a steady call below
            compile_seconds[f"fused_int8_{rule}"] = first_call_seconds(fused[rule])
            fused_equal[rule] = _all_equal(fused[rule](), eager_codes[rule])
        compiled_one = torch.compile(_requant_one, dynamic=None)  # the same per-layer structure as double_round
        compiled_list = torch.compile(_requant_plain, dynamic=False)  # one graph over all layers
        compiled_fp32 = {
            "compiled_fp32_requant_per_layer": lambda: [compiled_one(w, inv) for w, inv in zip(masters, inverse_scales)],
            "compiled_fp32_requant_one_graph": lambda: compiled_list(masters, inverse_scales),
        }
        for name, call in compiled_fp32.items():
            compile_seconds[name] = first_call_seconds(call)
            if not _all_equal(call(), direct):
                raise RuntimeError(f"{name} differs from the eager FP32 re-quantization")
        candidates.update({f"fused_int8_{rule}": fused[rule] for rule in RULES})
        candidates["api_loaded_model_weight_codes_fused"] = in_mode(
            fused_mode, lambda: [l.weight_codes() for l in loaded_layers])
        candidates.update(compiled_fp32)
    except Exception as error:  # no working compiler: report it and keep the eager rows
        compile_error = f"{type(error).__name__}: {error}"[:300]
        compile_seconds = {}
    restore_mode(eager_mode)

    for call in candidates.values():  # warm-up (caches, allocator, any remaining compile)
        call()
        call()
    samples = interleaved_times(candidates, rounds)
    restore_mode(was_mode)
    ms = {name: round(median_ms(values), 3) for name, values in samples.items()}

    def compare(int_prefix: str, fp32_name: str) -> dict:
        return {rule: {"int8_ms": ms[f"{int_prefix}{rule}"], "fp32_ms": ms[fp32_name],
                       "speedup": round(paired_ratio(samples[fp32_name], samples[f"{int_prefix}{rule}"]), 2)}
                for rule in RULES}

    fp32_eager_name = min(eager_fp32, key=lambda name: ms[name])
    eager_rows = compare("eager_int8_", fp32_eager_name)
    headline, compiled_rows, bandwidth, fp32_compiled_name = None, None, None, None
    if compile_error is None:
        headline = compare("fused_int8_", fp32_eager_name)
        fp32_compiled_name = min(compiled_fp32, key=lambda name: ms[name])
        compiled_rows = compare("fused_int8_", fp32_compiled_name)
        # Bytes each fused kernel must move per weight: read the code (1) + write the code (1) for INT8,
        # read the FP32 master (4) + write the code (1) for FP32; per-channel scales are negligible.
        bandwidth = {
            "bytes_per_weight_int8": 2, "bytes_per_weight_fp32": 5, "bytes_ratio_fp32_over_int8": 2.5,
            **{f"GB_per_s_fused_int8_{rule}": round(2 * elements / ms[f"fused_int8_{rule}"] / 1e6, 2) for rule in RULES},
            "GB_per_s_compiled_fp32": round(5 * elements / ms[fp32_compiled_name] / 1e6, 2),
        }
    fused_vs_each = None
    if headline is not None:
        fused_vs_each = {name: {rule: round(paired_ratio(samples[name], samples[f"fused_int8_{rule}"]), 2)
                                for rule in GOAL_RULES} for name in eager_fp32}
        value = min(headline[r]["speedup"] for r in GOAL_RULES)
        met = all(headline[r]["speedup"] >= 10 and headline[r]["int8_ms"] <= 10 and fused_equal[r] for r in GOAL_RULES)
        value_is = ("labkit fused path (use_fused_double_round(True), then labkit.quant.double_round per layer) vs "
                    f"the fastest eager FP32 re-quantization ({fp32_eager_name}); smaller of half_even and half_up; "
                    "median of per-round ratios; compile time excluded (compile_s)")
    else:
        value = min(eager_rows[r]["speedup"] for r in GOAL_RULES)
        met = False
        value_is = "compile failed (compile_error): eager INT8 vs eager FP32 instead, not the goal's comparison"
    steady = {name: ms[name] / 1e3 for name in compile_seconds}
    return result(value, "× faster (FP32 time ÷ INT8 time)", "≥ 10× and ≤ 10 ms (half_even and half_up)", met, {
        "value_is": value_is,
        "layers": len(codes),
        "weights_switched": elements,
        "headline_fused_int8_vs_eager_fp32": headline,
        "fused_equals_eager_double_round_all_layers": fused_equal or None,
        "fp32_eager_baseline": fp32_eager_name,
        "fused_speedup_vs_each_eager_fp32": fused_vs_each,
        "eager_int8_vs_eager_fp32": eager_rows,
        "fp32_compiled_baseline": fp32_compiled_name,
        "compiled_int8_vs_compiled_fp32": compiled_rows,
        "bandwidth": bandwidth,
        "median_ms_all": ms,
        "compile_s": {k: round(max(v - steady.get(k, 0.0), 0.0), 2) for k, v in compile_seconds.items()} or None,
        "compile_error": compile_error,
        "codes_differing_from_direct_4bit_rounding": {k: round(v, 4) for k, v in disagreement.items()},
        "rounds": rounds,
        "note": [
            "fused_int8_* = labkit.quant.double_round on every layer's INT8 codes after use_fused_double_round(True): "
            "one compiled integer kernel per layer (per-call Python and guard overhead included). eager_int8_* = the "
            "same calls with the eager kernel (5 ATen passes for half_up, 8 for half_even, 2 for floor).",
            "fp32_eager_baseline = the fastest of three eager re-quantizations of the FP32 masters to the same 4-bit "
            "codes round(W*(1/s_4)).clamp(-8,7).to(int8): plain; buffered (preallocated buffers); blocked (the "
            "buffered steps per ~64 K-weight block through one cache-resident scratch buffer).",
            "compiled_int8_vs_compiled_fp32 is the kernel-vs-kernel comparison: both sides one fused loop, the FP32 "
            "side the faster of a per-layer compiled function and one compiled graph over all layers. Both are "
            "memory-bound, so the ratio is bounded by the bytes each moves per weight (INT8 1 read + 1 write, FP32 "
            "4 read + 1 write: 2.5×), not by the 10× of the headline, which mostly measures eager FP32's extra passes.",
            "Why the compiled INT8 kernel does not reach 2.5× here (see bandwidth): Inductor's CPU loop steps 16 codes "
            "at a time (the FP32 vector width, a quarter of an AVX-512 register of int8) and x86 has no 8-bit shift, "
            "so every >> is emulated; half_even/half_up are compute-bound, floor (one shift) comes closer. The "
            "tensors (11 MB codes, 45 MB masters) also fit the 480 MiB L3 that lscpu reports on the development "
            "machine, which softens FP32's extra bytes.",
            "eager_int8_half_even_preallocated_sketch is benchmark-local (not labkit): the same integer steps without "
            "allocations. api_* rows time layer.weight_codes() on every layer at 4 bits (which also multiplies the "
            "step); a training model has no stored codes, so it first re-quantizes the FP32 masters to INT8.",
            "compile_s = first all-layer call minus a steady call (Inductor's on-disk cache shortens re-runs).",
        ],
    })


# --------------------------------------------------------------------------------- 3. INT checkpoint size ratio

def _category(key: str, plan: dict) -> str:
    layer = key.rsplit(".", 1)[0]
    if key.endswith(CODES_SUFFIX):
        return "int_codes"
    if any(key.startswith(name + ".") for name in plan["float_layers"]):
        return "fp32_first_last_layers"
    if key.endswith(".weight") and layer in plan["layers"]:
        return "fp32_master_weights"
    if ".per_bit." in key:
        return "per_bit_bn"
    if ".weight_quantizer.scale" in key:
        return "weight_scales"
    if ".act_quantizer." in key:
        return "activation_scales"
    if key.endswith(".bias") and layer in plan["layers"]:
        return "quantized_layer_bias"
    return "other_fp32 (plain BN after an FP32 layer)"


def _bytes_by_category(state: dict, plan: dict) -> dict[str, int]:
    totals = Counter()
    for key, tensor in state.items():
        totals[_category(key, plan)] += tensor.numel() * tensor.element_size()
    return dict(totals)


def _safetensors_header_bytes(path: Path) -> dict[str, int]:
    """Bytes of a safetensors file's JSON header: its ``__metadata__`` entry and the per-tensor index."""
    with open(path, "rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(length))
    metadata = len(json.dumps(header.get("__metadata__", {}), separators=(",", ":")).encode())
    return {"metadata": metadata, "tensor_index": 8 + length - metadata}


def _checkpoint_sizes(arch: str, keep_first_last: bool, directory: Path) -> dict:
    torch.manual_seed(0)
    model = labkit.quantize_model(build_model(arch), bits=(8, 6, 4, 2), keep_first_last=keep_first_last)
    int_path = save_int(model, directory / f"{arch}_{keep_first_last}.safetensors")
    fp32_path = directory / f"{arch}_{keep_first_last}.pt"
    torch.save(model.state_dict(), fp32_path)
    int_bytes, fp32_bytes = int_path.stat().st_size, fp32_path.stat().st_size
    plan = model.labkit_quant
    state = int_state(model)
    int_parts = _bytes_by_category(state, plan)
    header = _safetensors_header_bytes(int_path)
    int_parts["header: tensor index"] = header["tensor_index"]
    int_parts["header: metadata (arch, plan, sha256)"] = header["metadata"]
    int_parts["other file bytes"] = int_bytes - sum(int_parts.values())
    fp32_parts = _bytes_by_category(model.state_dict(), plan)
    fp32_parts["file_overhead (zip, pickle)"] = fp32_bytes - sum(fp32_parts.values())
    return {
        "ratio": round(int_bytes / fp32_bytes, 4),
        "tensors_in_int_file": len(state),
        "per_bit_bn_tensors": sum(_category(key, plan) == "per_bit_bn" for key in state),
        "int_file_bytes": int_bytes,
        "fp32_state_dict_bytes": fp32_bytes,
        "int_file_parts_bytes": int_parts,
        # Each part's share of the ratio: part bytes ÷ FP32 file bytes (they add up to the ratio).
        "int_file_parts_share_of_ratio": {k: round(v / fp32_bytes, 4) for k, v in int_parts.items()},
        "fp32_file_parts_bytes": fp32_parts,
    }


def int8_checkpoint_size_ratio() -> dict:
    """Bytes of ``save_int`` ÷ bytes of ``torch.save(state_dict)`` of the same multi-precision model."""
    cases = {}
    with tempfile.TemporaryDirectory() as directory:
        for arch in ("resnet20", "resnet18"):
            for keep_first_last in (True, False):
                cases[f"{arch}_keep_first_last={keep_first_last}"] = _checkpoint_sizes(arch, keep_first_last, Path(directory))
    value = cases["resnet18_keep_first_last=False"]["ratio"]
    notes = []
    for name, case in cases.items():
        shares = case["int_file_parts_share_of_ratio"]
        extras = sorted(((k, v) for k, v in shares.items() if k != "int_codes"), key=lambda kv: -kv[1])
        shown = [(k, v) for k, v in extras if v >= 0.002]
        rest = case["ratio"] - shares["int_codes"] - sum(v for _, v in shown)
        verdict = "meets 0.27" if case["ratio"] <= 0.27 else f"above 0.27 by {case['ratio'] - 0.27:.4f}"
        notes.append(f"{name}: {case['ratio']:.4f} ({verdict}) = INT codes {shares['int_codes']:.4f} + "
                     + " + ".join(f"{k} {v:.4f}" for k, v in shown) + f" + rest {rest:.4f}; "
                     f"{case['tensors_in_int_file']} tensors, {case['per_bit_bn_tensors']} of them per-bit BN "
                     "(each stacked over the bit-widths)")
    return result(value, "× bytes of torch.save(state_dict)", "≤ 0.27", value <= 0.27, {
        "value_is": "ResNet-18 with keep_first_last=False",
        "ratios": {name: case["ratio"] for name, case in cases.items()},
        "cases": cases,
        "note": notes,
    })


# ----------------------------------------------------------------------------------------------------- output

def _format(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _detail_lines(details, prefix: str = "") -> list[str]:
    """One line per leaf; a dict of plain values goes on one line as ``key: a=1, b=2``."""
    lines = []
    for key, value in details.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value and all(not isinstance(v, (dict, list)) for v in value.values()):
            lines.append(f"{name}: " + ", ".join(f"{k}={_format(v)}" for k, v in value.items()))
        elif isinstance(value, dict) and value:
            lines.extend(_detail_lines(value, name + "."))
        elif isinstance(value, list):
            lines.append(f"{name}:")
            lines.extend(f"  - {_format(item)}" for item in value)
        else:
            lines.append(f"{name}: {_format(value)}")
    return lines


def print_table(results: dict, environment: dict) -> None:
    print(f"labkit foundation benchmarks ({environment['mode']} run, {environment['seconds']:.0f} s)")
    print(f"hardware: {environment['hardware']}")
    print(f"torch {environment['torch']}, {environment['threads']} threads; load average at start/end: "
          f"{environment['load_start']} / {environment['load_end']}")
    print()
    header = f"{'measurement':34} {'value':>9}  {'unit':36} {'goal':42} met"
    print(header)
    print("-" * len(header))
    for name, entry in results.items():
        print(f"{name:34} {entry['value']:>9.4g}  {entry['unit']:36} {entry['goal']:42} {'yes' if entry['met'] else 'NO'}")
    for name, entry in results.items():
        print()
        print(f"[{name}] details")
        for line in _detail_lines(entry["details"]):
            print(f"  {line}")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and one conv shape (< 60 s)")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1: on a shared machine a multi-threaded op waits for "
                             "every thread to be scheduled, which times the scheduler rather than the kernels)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    load_start = [round(x, 2) for x in os.getloadavg()]
    if args.quick:
        results = {
            "weight_fakequant_vs_torch_fused": weight_fakequant_vs_torch_fused(rounds=10, channel_counts=(256,)),
            "int8_switch_vs_fp32_requant": int8_switch_vs_fp32_requant(rounds=10),
            "int8_checkpoint_size_ratio": int8_checkpoint_size_ratio(),
        }
    else:
        results = {
            "weight_fakequant_vs_torch_fused": weight_fakequant_vs_torch_fused(rounds=100),
            "int8_switch_vs_fp32_requant": int8_switch_vs_fp32_requant(rounds=100),
            "int8_checkpoint_size_ratio": int8_checkpoint_size_ratio(),
        }
    environment = {
        "mode": "quick" if args.quick else "full",
        "hardware": hardware_summary(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "load_start": load_start,
        "load_end": [round(x, 2) for x in os.getloadavg()],
        "seconds": time.perf_counter() - started,
    }
    print_table(results, environment)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"environment": environment, "results": results}, indent=2, ensure_ascii=False) + "\n")
    return results


if __name__ == "__main__":
    main()
