"""Speed of the default paths (issue 11): the ``speed_*`` and ``switchboard`` groups of ``benchmarks/run.py``.

    python benchmarks/run.py --only speed_fakequant,speed_joint,speed_joint_trainer,switchboard
    python benchmarks/run.py --quick --only speed_fakequant      # checks the script

Groups (each a function here returning rows in ``run.py``'s schema, ``{name: {"value", "unit", "goal", "met"?,
"label", "summary", "detail"}}``):

- ``speed_fakequant`` (:func:`fakequant_section`): weight (256×256×3×3, per channel) and activation (per tensor,
  unsigned) fake-quant forward+backward ÷ PyTorch's learnable fused op at the same bit-width, every bit-width of
  {8,6,4,2}, at 1 and 2 threads; the default path (``auto``: compiled kernels for training calls) is the row, the
  ``fused``, ``recompute`` and ``compiled`` paths are beside it.
- ``speed_joint`` (:func:`joint_step_section`): one joint {8,6,4,2} step ÷ 4 FP32 steps, ResNet-20, batch 128, a
  plain ``quantize_model`` + ``set_bits`` loop with Adam, at 1 and 2 threads; default fp32 path as the row, bf16
  autocast, channels_last and the eager fused fake-quant beside it, with epoch times; and FP32 images/s per path.
- ``speed_joint_trainer`` (:func:`joint_trainer_section`): the same ratio through ``JointTrainer.train_step``.
- ``switchboard`` (:func:`switchboard_section`): ``labkit.widgets.measure_switchboard_latency`` (kernel side).
- ``speed_bf16_accuracy`` (:func:`bf16_accuracy_section`): what bf16 autocast does to FP32 fine-tuning.

Timings come from ``foundation.interleaved_times`` / ``foundation.paired_ratio`` (the one timing loop of the
suite): the candidates of a group — every path and both thread counts — run round-robin in this one process, A, B,
C, then C, B, A, …; each ratio is the median over rounds of two times taken in the same round. A 2-thread
candidate sets ``torch.set_num_threads(2)`` before its call and a 1-thread one sets 1, in the same process (the
caller's count is restored after the group). Wall time is the headline; the process CPU time of the same calls
(``time.process_time``, all threads) is in ``detail``, since on a shared machine the wall time also counts the
time other processes held the cores. Every row's ``detail`` gives the load average at the start and end of its
group.
"""
from __future__ import annotations

import math
import os
import re
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # labkit from this checkout
sys.path.insert(0, str(HERE))  # foundation.py

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import labkit  # noqa: E402
from foundation import interleaved_times, paired_ratio  # noqa: E402
from labkit.models import build_model  # noqa: E402
from labkit.quant import lsq  # noqa: E402
from labkit.quant.lsq import fake_quantize, lsq_grad_scale, use_fake_quant_path  # noqa: E402
from labkit.train.arithmetic import resolve_arithmetic  # noqa: E402
from labkit.train.recipes import FAST_ARITHMETIC  # noqa: E402

BITS = (8, 6, 4, 2)
HIGH = 8
THREADS = (1, 2)
FAKEQUANT_GOAL = 0.8
JOINT_GOAL = 1.15
CIFAR10_TRAIN = 50_000


def steps_per_epoch(batch: int) -> int:
    return math.ceil(CIFAR10_TRAIN / batch)
REPORT = "report (no goal set)"


def row(value, unit: str, goal: str, met: bool | None = None, **extra) -> dict:
    entry = {"value": None if value is None else float(value), "unit": unit, "goal": goal}
    if met is not None:
        entry["met"] = bool(met)
    entry.update(extra)
    return entry


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def r3(x: float) -> float:
    return round(float(x), 3)


def with_threads(threads: int, call):
    def run():
        torch.set_num_threads(threads)
        return call()
    return run


class SideBySide:
    """Candidates timed by ``foundation.interleaved_times``, each call's process CPU time recorded beside it.

    ``warm_up`` calls every candidate ``times`` times (the first call's seconds are kept: compile time for the
    compiled path); ``run(rounds)`` gives the wall samples, ``cpu`` the CPU samples of the same calls.
    """

    def __init__(self, candidates: dict):
        self.cpu: dict[str, list[float]] = {name: [] for name in candidates}
        self.first_call_s: dict[str, float] = {}
        self.candidates = {name: self._recording(name, call) for name, call in candidates.items()}

    def _recording(self, name, call):
        def timed():
            start = time.process_time()
            call()
            self.cpu[name].append(time.process_time() - start)
        return timed

    def warm_up(self, times: int = 2) -> None:
        for name, call in self.candidates.items():
            start = time.perf_counter()
            call()
            self.first_call_s[name] = time.perf_counter() - start
            for _ in range(times - 1):
                call()
        for samples in self.cpu.values():
            samples.clear()

    def run(self, rounds: int) -> dict[str, list[float]]:
        self.wall = interleaved_times(self.candidates, rounds)
        return self.wall

    def ratio(self, a: str, b: str, divide: float = 1.0, clock: str = "wall") -> float:
        samples = self.wall if clock == "wall" else self.cpu
        return r3(paired_ratio(samples[a], samples[b]) / divide)

    def ms(self, name: str) -> float:
        return round(statistics.median(self.wall[name]) * 1e3, 2)


def time_side_by_side(candidates: dict, rounds: int, kernels: dict, warm_up: int = 2) -> SideBySide:
    """Warm up and time ``candidates`` side by side; afterwards the fake-quant kernels are ``kernels`` again and
    torch has its thread count back, whatever a candidate set."""
    was = torch.get_num_threads()
    timer = SideBySide(candidates)
    try:
        timer.warm_up(warm_up)
        timer.run(rounds)
    finally:
        lsq._KERNELS.update(kernels)
        torch.set_num_threads(was)
    return timer


def time_per_thread_count(candidates: dict, rounds: int, kernels: dict, warm_up: int = 2) -> SideBySide:
    """:func:`time_side_by_side` for the candidates of each thread count (the ``_t{n}`` ending of their names) in turn,
    merged into one timer. Ratios are only ever taken within one thread count, so nothing is lost, and no call runs
    right after one that set another thread count (OpenMP's pool resized each time): when every thread count shared
    one loop, the FP32 step at 2 threads took 217 ms there against 165 ms in ``compiled_fp32_baseline.py``, which
    times one thread count at a time (2026-12-02)."""
    groups: dict[str, dict] = {}
    for name, call in candidates.items():
        ending = re.search(r"_t\d+$", name)
        groups.setdefault(ending.group(0) if ending else "", {})[name] = call
    merged = SideBySide({})
    merged.wall = {}
    for group in groups.values():
        timer = time_side_by_side(group, rounds, kernels, warm_up)
        merged.wall.update(timer.wall)
        merged.cpu.update(timer.cpu)
        merged.first_call_s.update(timer.first_call_s)
    return merged


def capture_paths(paths=lsq.PATHS) -> dict[str, dict]:
    """The kernel tables of every fake-quant path, taken once, so a timed call switches paths by restoring its table.
    Leaves the default path installed."""
    default = lsq.fake_quant_path()
    tables = {}
    for path in paths:
        use_fake_quant_path(path)
        tables[path] = dict(lsq._KERNELS)
    use_fake_quant_path(default)
    return tables


def alternative_path(default: str) -> str:
    """The path timed beside the default: the eager fused one beside a compiling default, else the compiled one."""
    return "fused" if default in ("auto", "compiled") else "compiled"


def on_path(table: dict, call):
    def run():
        lsq._KERNELS.update(table)
        return call()
    return run


# --------------------------------------------------------------------------------------------- fake-quant

def _labkit_step(x, scale, grad, bits: int, shift: int, signed: bool, rounding: str = "half_even",
                 offset: float = 0.0):
    qmin, qmax = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    factor = lsq_grad_scale(x[0].numel() if signed else x.numel(), qmax)

    def step():
        out = fake_quantize(x, scale, qmin, qmax, shift=shift, rounding=rounding, grad_factor=factor, offset=offset)
        return torch.autograd.grad(out, (x, scale), grad)
    return step


def _torch_weight_step(x, scale, grad, bits: int):
    qmin, qmax = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    zero = torch.zeros(scale.numel())
    factor = lsq_grad_scale(x[0].numel(), qmax)
    return lambda: torch.autograd.grad(torch._fake_quantize_learnable_per_channel_affine(
        x, scale, zero, 0, qmin, qmax, factor), (x, scale), grad)


def _torch_activation_step(x, scale, grad, bits: int):
    qmax = (1 << bits) - 1
    zero = torch.zeros(1)
    factor = lsq_grad_scale(x.numel(), qmax)
    return lambda: torch.autograd.grad(torch._fake_quantize_learnable_per_tensor_affine(
        x, scale, zero, 0, qmax, factor), (x, scale), grad)


def _by_bits(text: dict) -> str:
    return " · ".join(f"{bits}b {value:.2f}" for bits, value in text.items())


def fakequant_section(quick: bool, threads=THREADS, rounds: int | None = None) -> dict:
    """Weight (per channel; Double Rounding from 8 bits, floor as AdaBits, per-bit scales) and activation (per
    tensor, unsigned) fake-quant fwd+bwd ÷ PyTorch's learnable fused op at the same bit-width, every path.

    The row is the default path's Double Rounding (weights) / plain LSQ (activations), worst over {8,6,4,2}.
    """
    start_load = load()
    default = lsq.fake_quant_path()
    channels = 64 if quick else 256
    act_shape = (32, 16, 16, 16) if quick else (128, 16, 32, 32)
    rounds = rounds or (4 if quick else 30)
    gen = torch.Generator().manual_seed(0)
    weight = (torch.randn(channels, channels, 3, 3, generator=gen) * 0.05).requires_grad_()
    grad_w = torch.randn(weight.shape, generator=gen)
    scale8 = weight.detach().flatten(1).abs().amax(1) / 127
    activation = torch.relu(torch.randn(act_shape, generator=gen)).requires_grad_()
    grad_a = torch.randn(act_shape, generator=gen)
    tables = capture_paths()
    paths = [default] + [p for p in lsq.PATHS if p != default]
    candidates = {}
    for bits in BITS:
        shift = HIGH - bits
        tied = (scale8 * 2.0 ** shift).requires_grad_()  # PyTorch's op at b bits, on the tied scale s_8 · 2^Δ
        own = (weight.detach().flatten(1).abs().amax(1) / ((1 << (bits - 1)) - 1)).requires_grad_()
        act_scale = (2 * activation.detach().abs().mean() / math.sqrt((1 << bits) - 1)).reshape(1).requires_grad_()
        per_channel = scale8.view(-1, 1, 1, 1).clone().requires_grad_()
        per_bit = own.detach().view(-1, 1, 1, 1).clone().requires_grad_()
        act_scalar = act_scale.detach().reshape(()).clone().requires_grad_()
        offset = 0.5 - 2.0 ** -(shift + 1) if shift else 0.0
        for t in threads:
            candidates[f"torch_w{bits}_t{t}"] = with_threads(t, _torch_weight_step(weight, tied, grad_w, bits))
            candidates[f"torch_a{bits}_t{t}"] = with_threads(t, _torch_activation_step(activation, act_scale, grad_a,
                                                                                       bits))
            for path in paths:
                steps = {"dr_w": _labkit_step(weight, per_channel, grad_w, bits, shift, True),
                         "floor_w": _labkit_step(weight, per_channel, grad_w, bits, shift, True, "floor", offset),
                         "perbit_w": _labkit_step(weight, per_bit, grad_w, bits, 0, True),
                         "a": _labkit_step(activation, act_scalar, grad_a, bits, 0, False)}
                for kind, step in steps.items():
                    candidates[f"{path}_{kind}{bits}_t{t}"] = with_threads(t, on_path(tables[path], step))
    timer = time_per_thread_count(candidates, rounds, tables[default])
    rows = {}
    for t in threads:
        for kind, methods in (("weight", ("dr_w", "floor_w", "perbit_w")), ("activation", ("a",))):
            reference = "torch_w" if kind == "weight" else "torch_a"
            wall = {f"{path}_{m}": {b: timer.ratio(f"{path}_{m}{b}_t{t}", f"{reference}{b}_t{t}") for b in BITS}
                    for path in paths for m in methods}
            cpu = {f"{path}_{m}": {b: timer.ratio(f"{path}_{m}{b}_t{t}", f"{reference}{b}_t{t}", clock="cpu")
                                   for b in BITS} for path in paths for m in methods}
            main = f"{default}_{methods[0]}"
            value = max(wall[main].values())
            ms = {name.rsplit("_t", 1)[0]: timer.ms(name) for name in candidates
                  if name.endswith(f"_t{t}") and any(f"_{m}" in name for m in methods)
                  or name.startswith(reference) and name.endswith(f"_t{t}")}
            op = ("torch._fake_quantize_learnable_per_channel_affine" if kind == "weight" else
                  "torch._fake_quantize_learnable_per_tensor_affine")
            shape = (f"{channels}×{channels}×3×3 weight, per-channel scale" if kind == "weight" else
                     f"{'×'.join(map(str, act_shape))} post-ReLU activation, per-tensor scale, unsigned")
            beside = "; ".join(f"{path}: {_by_bits(wall[f'{path}_{methods[0]}'])}" for path in paths[1:])
            rows[f"fakequant_{kind}_vs_torch_t{t}"] = row(
                value, f"× time of {op} (fwd+bwd), worst over bits {list(BITS)}",
                f"≤ {FAKEQUANT_GOAL} at every bit-width", value <= FAKEQUANT_GOAL,
                label=f"{kind} fake-quant fwd+bwd ÷ PyTorch's fused learnable "
                      f"{'per-channel' if kind == 'weight' else 'per-tensor'} op, {shape.split(',')[0]}, "
                      f"{t} thread{'s' if t > 1 else ''}, default path ({default}), worst over {{8,6,4,2}}",
                summary=f"default: {_by_bits(wall[main])}; beside it, {beside}; load {start_load}",
                detail={
                    "value_is": f"default path ({default}){', Double Rounding from 8 bits' if kind == 'weight' else ''}"
                                f", worst over bits {list(BITS)}, wall time, {t} thread(s) set with "
                                f"torch.set_num_threads in this process; {shape}; median of {rounds} per-round ratios",
                    "threads": t, "default_path": default, "paths": paths,
                    "ratio_by_path_method_bits": wall, "cpu_time_ratio_by_path_method_bits": cpu,
                    "worst_default_any_method": max(max(v.values()) for k, v in wall.items()
                                                    if k.startswith(default)),
                    "median_ms_wall": ms,
                    "reference": f"{op} at the same bit-width (its own leaf scale: s_8·2^Δ for Double Rounding, "
                                 "which PyTorch cannot double-round, so a reference cost at Δ > 0)",
                    "methods": "dr_w: Double Rounding (shift 8 − b), floor_w: floor from 8 bits (AdaBits/Bit-Mixer), "
                               "perbit_w: a scale of its own per bit-width, a: activation LSQ",
                    "compile_s_first_call": {k.rsplit("_t", 1)[0]: round(v, 2) for k, v in timer.first_call_s.items()
                                             if k.split("_")[0] in ("auto", "compiled") and k.endswith(f"_t{t}")} or None,
                    "compile_error": lsq.compile_error(),
                    "rounds": rounds, "load_average_start": start_load, "load_average_end": load(),
                })
    return rows


# --------------------------------------------------------------------------------------------- joint step

CONFIGS = {
    "fp32": dict(channels_last=False, bf16=False),
    "channels_last": dict(channels_last=True, bf16=False),
    "bf16": dict(channels_last=False, bf16=True),
    "bf16_channels_last": dict(channels_last=True, bf16=True),
}


def _train_step(model, optimizer, images, labels, bit_set, bf16: bool):
    """One plain step: for every bit-width (or once for FP32) forward, loss, backward; then one Adam step."""
    def step():
        optimizer.zero_grad(set_to_none=True)
        for bits in bit_set or (None,):
            if bits is not None:
                labkit.set_bits(model, bits)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = F.cross_entropy(model(images), labels)
            loss.backward()
        optimizer.step()
    return step


def _models(batch: int, channels_last: bool):
    torch.manual_seed(0)
    fp32 = build_model("resnet20")
    joint = labkit.quantize_model(fp32, bits=BITS)
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(batch, 3, 32, 32, generator=gen)
    labels = torch.randint(0, 10, (batch,), generator=gen)
    if channels_last:
        fp32, joint = fp32.to(memory_format=torch.channels_last), joint.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    return fp32.train(), joint.train(), images, labels


def joint_step_section(quick: bool, threads=THREADS, configs=("fp32", "channels_last", "bf16"),
                       rounds: int | None = None) -> dict:
    """Joint {8,6,4,2} step ÷ 4 FP32 steps, ResNet-20, a plain quantize_model + set_bits loop with Adam; FP32
    images/s per configuration. ``fp32`` (the default: no autocast, contiguous, default fake-quant path) is the row;
    the other configurations, the other fake-quant path (:func:`alternative_path`) and the same model with every ReLU
    kept as its own operation (``absorb_relu=False``, :mod:`labkit.relu_absorption`), both on the fp32 configuration,
    are beside it."""
    start_load = load()
    default = lsq.fake_quant_path()
    batch, rounds = (16, rounds or 2) if quick else (128, rounds or 5)
    other = alternative_path(default)
    tables = capture_paths((default, other))
    candidates = {}
    for config in configs:
        options = CONFIGS[config]
        fp32, joint, images, labels = _models(batch, options["channels_last"])
        for t in threads:
            candidates[f"fp32_{config}_t{t}"] = with_threads(t, on_path(tables[default], _train_step(
                fp32, torch.optim.Adam(fp32.parameters(), 1e-4), images, labels, None, options["bf16"])))
            candidates[f"joint_{config}_t{t}"] = with_threads(t, on_path(tables[default], _train_step(
                joint, torch.optim.Adam(joint.parameters(), 1e-4), images, labels, BITS, options["bf16"])))
            if config == "fp32":
                candidates[f"jointother_{config}_t{t}"] = with_threads(t, on_path(tables[other], _train_step(
                    joint, torch.optim.Adam(joint.parameters(), 1e-4), images, labels, BITS, False)))
                kept = labkit.quantize_model(fp32, bits=BITS, absorb_relu=False).train()  # every ReLU its own op
                candidates[f"jointrelu_{config}_t{t}"] = with_threads(t, on_path(tables[default], _train_step(
                    kept, torch.optim.Adam(kept.parameters(), 1e-4), images, labels, BITS, False)))
    timer = time_per_thread_count(candidates, rounds, tables[default], warm_up=1)
    end_load = load()

    def epoch_s(name):
        return round(timer.ms(name) * steps_per_epoch(batch) / 1e3, 1)

    rows = {}
    for t in threads:
        per_config = {}
        for config in configs:
            a, b = f"joint_{config}_t{t}", f"fp32_{config}_t{t}"
            per_config[config] = {
                "joint_vs_4x_fp32": timer.ratio(a, b, len(BITS)),
                "cpu_time_ratio": timer.ratio(a, b, len(BITS), "cpu"),
                "joint_step_ms": timer.ms(a), "fp32_step_ms": timer.ms(b),
                "joint_epoch_s": epoch_s(a), "fp32_epoch_s": epoch_s(b),
                "fp32_images_per_s": round(batch / (timer.ms(b) / 1e3), 1),
                "fp32_step_vs_default": timer.ratio(b, f"fp32_fp32_t{t}"),
                "joint_step_vs_default": timer.ratio(a, f"joint_fp32_t{t}")}
        beside_path = f"jointother_fp32_t{t}"
        per_config[f"{other} fake-quant"] = {
            "joint_vs_4x_fp32": timer.ratio(beside_path, f"fp32_fp32_t{t}", len(BITS)),
            "joint_step_ms": timer.ms(beside_path), "joint_epoch_s": epoch_s(beside_path),
            "joint_step_vs_default": timer.ratio(beside_path, f"joint_fp32_t{t}"),
            "first_call_s": round(timer.first_call_s[beside_path], 1)}
        kept_relus = f"jointrelu_fp32_t{t}"
        per_config["ReLUs kept as modules (absorb_relu=False)"] = {
            "joint_vs_4x_fp32": timer.ratio(kept_relus, f"fp32_fp32_t{t}", len(BITS)),
            "joint_step_ms": timer.ms(kept_relus), "joint_epoch_s": epoch_s(kept_relus),
            "joint_step_vs_default": timer.ratio(kept_relus, f"joint_fp32_t{t}")}
        main = per_config["fp32"]
        common = {"threads": t, "batch": batch, "rounds": rounds, "default_fake_quant_path": default,
                  "epoch_is": f"{steps_per_epoch(batch)} steps of batch {batch} (CIFAR-10 train), bare steps "
                              "without the loader, from the median step time",
                  "load_average_start": start_load, "load_average_end": end_load}
        beside = "; ".join(f"{name} {entry['joint_vs_4x_fp32']:.2f} (epochs {entry.get('fp32_epoch_s', '–')} / "
                           f"{entry['joint_epoch_s']} s)" for name, entry in per_config.items() if name != "fp32")
        value = main["joint_vs_4x_fp32"]
        ts = f"{t} thread{'s' if t > 1 else ''}"
        rows[f"joint_step_vs_4x_fp32_t{t}"] = row(
            value, "× (joint {8,6,4,2} step ÷ 4 FP32 steps of the same configuration)", f"≤ {JOINT_GOAL}",
            value <= JOINT_GOAL,
            label=f"joint {{8,6,4,2}} step ÷ 4 FP32 steps, ResNet-20 batch {batch}, plain quantize_model + set_bits "
                  f"loop, {ts}, default path (fp32, {default} fake-quant)",
            summary=f"epochs FP32 {main['fp32_epoch_s']} s / joint {main['joint_epoch_s']} s; beside it (ratio, "
                    f"epochs FP32 / joint): {beside}; load {start_load}",
            detail={"value_is": f"ResNet-20, batch {batch} random 32×32 images, forward/backward per bit-width then "
                                f"one Adam step, default configuration, {ts} set with torch.set_num_threads in this "
                                f"process, wall time; median of {rounds} per-round ratios. The FP32 steps are eager "
                                "PyTorch, every ReLU its own operation (not compiled); the joint model runs its "
                                "block-internal ReLUs inside the next activation quantizer (labkit.relu_absorption), "
                                "and the same model with every ReLU kept is beside it",
                    "by_configuration": per_config, **common})
        fastest = min(configs, key=lambda c: per_config[c]["fp32_step_ms"])
        for config in configs:
            entry = per_config[config]
            rows[f"fp32_step_images_per_s_{config}_t{t}"] = row(
                entry["fp32_images_per_s"], "images/s (FP32 ResNet-20 training step, batch "
                                            f"{batch}, Adam)", REPORT,
                label=f"FP32 ResNet-20 training step, batch {batch}, {ts}, {config}"
                      + (" (the default)" if config == "fp32" else ""),
                summary=f"{entry['fp32_step_ms']:.0f} ms a step, epoch {entry['fp32_epoch_s']} s; "
                        f"{entry['fp32_step_vs_default']:.2f}× the default's step time; load {start_load}",
                detail={"value_is": f"batch ÷ median step time, {config}, {ts}", **entry, **common})
        slowdown = timer.ratio(f"fp32_fp32_t{t}", f"fp32_{fastest}_t{t}")
        rows[f"fp32_default_vs_fastest_t{t}"] = row(
            slowdown, "× (default FP32 step time ÷ the fastest configuration's)",
            "1: the default is the fastest path (that keeps accuracy: speed_bf16_accuracy)", fastest == "fp32",
            label=f"FP32 ResNet-20 training step: the default (plain) ÷ the fastest of {list(configs)}, {ts}",
            summary=f"fastest: {fastest} ({per_config[fastest]['fp32_images_per_s']} img/s against "
                    f"{main['fp32_images_per_s']}); load {start_load}",
            detail={"fastest": fastest, "images_per_s": {c: per_config[c]["fp32_images_per_s"] for c in configs},
                    **common})
        # what `labkit train --recipe` picks beyond smoke (labkit.train.recipes.FAST_ARITHMETIC, resolved for this
        # device by labkit.train.arithmetic): the goal is that this is the fastest path
        bf16, channels_last = resolve_arithmetic(None, None, torch.device("cpu"))
        recipe = "bf16" if bf16 else ("channels_last" if channels_last else "fp32")
        if recipe in configs:
            lost = timer.ratio(f"fp32_{recipe}_t{t}", f"fp32_{fastest}_t{t}")
            rows[f"fp32_recipe_default_vs_fastest_t{t}"] = row(
                lost, "× (the recipes' default FP32 step time ÷ the fastest configuration's)",
                "1: the default is the fastest path (that keeps accuracy: speed_bf16_accuracy)", recipe == fastest,
                label=f"FP32 ResNet-20 training step: the recipes' default on this CPU ({recipe}) ÷ the fastest of "
                      f"{list(configs)}, {ts}",
                summary=f"fastest: {fastest} ({per_config[fastest]['fp32_images_per_s']} img/s); the recipes' "
                        f"default {recipe} ({per_config[recipe]['fp32_images_per_s']} img/s); load {start_load}",
                detail={"recipe_default": recipe, "fastest": fastest, **common})
    return rows


# --------------------------------------------------------------------------------- through JointTrainer

def joint_trainer_section(quick: bool, threads=THREADS, rounds: int | None = None) -> dict:
    """Joint {8,6,4,2} ``JointTrainer.train_step`` ÷ 4 FP32 ``train_step``, ResNet-20, as ``labkit train`` builds
    them (``training.make_trainer``: Alg. A.2 with ALRS for the joint model, Adam for FP32). The default
    configuration and fake-quant path is the row; the other path (:func:`alternative_path`) is beside it."""
    import tempfile

    import training

    start_load = load()
    default = lsq.fake_quant_path()
    batch, rounds = (16, rounds or 2) if quick else (128, rounds or 5)
    recipe_path = lsq.path_for(FAST_ARITHMETIC["compile_quant"])
    paths = [default, alternative_path(default)]
    tables = capture_paths(tuple(dict.fromkeys(paths + [recipe_path])))
    data = training.RandomImages(batch)
    images, labels, indices = data.images, data.labels, torch.arange(batch)
    with tempfile.TemporaryDirectory() as out_dir:
        trainers = {"fp32": training.make_trainer(None, out_dir, batch_size=batch)}
        # each trainer's config names its path (JointTrainer.train_step selects it), matching its kernel table below
        compile_quant_of = {lsq.path_for(setting): setting for setting in (None, True, False)}
        trainers.update({f"joint{path}": training.make_trainer(BITS, out_dir, batch_size=batch,
                                                               compile_quant=compile_quant_of[path]) for path in paths})
        # what `labkit train --recipe` runs beyond smoke (labkit.train.recipes.FAST_ARITHMETIC): bf16 autocast where
        # the device computes bf16 natively, and its fake-quant path (compiled training kernels where a compiler works)
        trainers.update({name: training.make_trainer(bits, out_dir, batch_size=batch, amp_bf16=None, channels_last=None)
                         for name, bits in (("fp32recipe", None), ("jointrecipe", BITS))})
        recipe_bf16 = trainers["jointrecipe"].amp_bf16
        candidates = {}
        for t in threads:
            for name, trainer in trainers.items():
                table = tables[lsq.path_for(trainer.config.compile_quant) if trainer.bits else default]
                candidates[f"{name}_t{t}"] = with_threads(t, on_path(table, lambda trainer=trainer: trainer.train_step(
                    images, labels, indices, epoch=0)))
        timer = time_per_thread_count(candidates, rounds, tables[default], warm_up=1)
    end_load = load()
    rows = {}
    for t in threads:
        ts = f"{t} thread{'s' if t > 1 else ''}"
        fp32 = f"fp32_t{t}"
        by_path = {path: {"joint_vs_4x_fp32": timer.ratio(f"joint{path}_t{t}", fp32, len(BITS)),
                          "cpu_time_ratio": timer.ratio(f"joint{path}_t{t}", fp32, len(BITS), "cpu"),
                          "joint_step_ms": timer.ms(f"joint{path}_t{t}"),
                          "joint_epoch_s": round(timer.ms(f"joint{path}_t{t}") * steps_per_epoch(batch) / 1e3, 1)}
                   for path in paths}
        fp32_epoch = round(timer.ms(fp32) * steps_per_epoch(batch) / 1e3, 1)
        value = by_path[default]["joint_vs_4x_fp32"]
        beside = "; ".join(f"{path} fake-quant {entry['joint_vs_4x_fp32']:.2f} (joint epoch {entry['joint_epoch_s']} s)"
                           for path, entry in by_path.items() if path != default)
        rows[f"joint_trainer_step_vs_4x_fp32_t{t}"] = row(
            value, "× (JointTrainer.train_step, joint {8,6,4,2} ÷ 4 FP32)", f"≤ {JOINT_GOAL}", value <= JOINT_GOAL,
            label=f"the same through JointTrainer.train_step (Alg. A.2, ALRS), ResNet-20 batch {batch}, {ts}, "
                  f"default path ({default} fake-quant, TrainConfig defaults)",
            summary=f"epochs FP32 {fp32_epoch} s / joint {by_path[default]['joint_epoch_s']} s; beside it: {beside}; "
                    f"load {start_load}",
            detail={"value_is": f"median of {rounds} per-round ratios, wall time, {ts} set with "
                                "torch.set_num_threads in this process; random 32×32 images",
                    "by_fake_quant_path": by_path, "fp32_step_ms": timer.ms(fp32), "fp32_epoch_s": fp32_epoch,
                    "epoch_is": f"{steps_per_epoch(batch)} steps of batch {batch}, bare steps, from the median "
                                "step time",
                    "threads": t, "batch": batch, "rounds": rounds, "default_fake_quant_path": default,
                    "first_call_s": {k: round(v, 1) for k, v in timer.first_call_s.items() if k.startswith("joint")},
                    "load_average_start": start_load, "load_average_end": end_load})
        recipe = timer.ratio(f"jointrecipe_t{t}", f"fp32recipe_t{t}", len(BITS))
        arithmetic = f"{'bf16 autocast' if recipe_bf16 else 'fp32'}, {recipe_path} fake-quant"
        rows[f"joint_trainer_recipe_step_vs_4x_fp32_t{t}"] = row(
            recipe, "× (JointTrainer.train_step, joint {8,6,4,2} ÷ 4 FP32, both at the recipes' default)",
            f"≤ {JOINT_GOAL}", recipe <= JOINT_GOAL,
            label=f"the same at the recipes' default arithmetic ({arithmetic}), {ts}",
            summary=f"epochs FP32 {round(timer.ms(f'fp32recipe_t{t}') * steps_per_epoch(batch) / 1e3, 1)} s / joint "
                    f"{round(timer.ms(f'jointrecipe_t{t}') * steps_per_epoch(batch) / 1e3, 1)} s "
                    f"(the TrainConfig default's joint epoch: {by_path[default]['joint_epoch_s']} s); load {start_load}",
            detail={"value_is": f"median of {rounds} per-round ratios, wall time, {ts}; the FP32 step at the same "
                                "arithmetic (bf16 speeds it up too, so the ratio is not the speed-up)",
                    "amp_bf16": recipe_bf16, "fake_quant": recipe_path, "threads": t, "batch": batch,
                    "fp32_step_ms": timer.ms(f"fp32recipe_t{t}"), "joint_step_ms": timer.ms(f"jointrecipe_t{t}"),
                    "load_average_start": start_load, "load_average_end": end_load})
    return rows


# ---------------------------------------------------------------------------------- the live switchboard

def _cifar_images(split: str, indices) -> tuple[torch.Tensor, torch.Tensor]:
    """Un-augmented, normalised CIFAR-10 images (``cifar10_transforms(train=False)``) and labels."""
    from labkit.data import cifar10, cifar10_transforms

    data = cifar10(split, transform=cifar10_transforms(train=False), in_memory=False)
    pairs = [data[i] for i in indices]
    return torch.stack([image for image, _ in pairs]), torch.tensor([int(label) for _, label in pairs])


def switchboard_section(quick: bool) -> dict:
    """``measure_switchboard_latency`` on the shipped joint ResNet-20 and 256 CIFAR-10 test images (random images
    and a freshly quantized ResNet-20 when no data or checkpoint is there), beside one FP32 forward pass."""
    from labkit.widgets import measure_switchboard_latency

    start_load = load()
    images_n, rounds, moves = (32, 1, 2) if quick else (256, 3, 6)
    try:
        from labkit.checkpoints import load_shipped

        model, fp32 = load_shipped("cifar10-resnet20"), load_shipped("cifar10-resnet20-fp32")
        images, labels = _cifar_images("test", range(images_n))
        source = f"shipped cifar10-resnet20 (and -fp32), the first {images_n} CIFAR-10 test images"
    except Exception as error:  # no data root or no shipped checkpoint: the same compute on random inputs
        torch.manual_seed(0)
        fp32 = build_model("resnet20").eval()
        model = labkit.quantize_model(build_model("resnet20"), bits=BITS).eval()
        gen = torch.Generator().manual_seed(0)
        images, labels = torch.randn(images_n, 3, 32, 32, generator=gen), torch.randint(0, 10, (images_n,),
                                                                                          generator=gen)
        source = (f"a freshly quantized ResNet-20 on {images_n} random images ({type(error).__name__}: "
                  f"{str(error)[:120]})")
    result = measure_switchboard_latency(model, images, labels, fp32_model=fp32, rounds=rounds, layer_moves=moves)
    common = {"source": source, "threads": result["threads"], "load_average_start": start_load,
              "load_average_end": load(), "kernel_side_only": "from the control's change to the last widget message "
              "sent; the browser's rendering is not included (tests/test_browser.py drives a real browser)",
              "measurement": {k: (r3(v) if isinstance(v, float) else v) for k, v in result.items()}}
    ts = f"{result['threads']} thread{'s' if result['threads'] > 1 else ''}"
    uniform, extra = result["uniform_move_ms"], result["per_layer_extra_ms"]
    return {
        "switchboard_uniform_move_ms": row(
            uniform, "ms, a uniform slider move (kernel side, median; trained bit-widths precomputed)",
            f"≤ {result['uniform_goal_ms']:.0f} ms", result["uniform_goal_met"],
            label=f"precision switchboard, uniform move, ResNet-20, {images_n} images, kernel side, {ts}",
            summary=f"max {result['uniform_move_max_ms']:.0f} ms; {result['uniform_per_forward']:.2f}× one "
                    f"forward pass ({result['forward_ms']:.0f} ms); {result['messages_per_uniform_move']:.0f} "
                    f"messages, {result['bytes_per_uniform_move'] / 1e3:.1f} kB; precompute "
                    f"{result['precompute_ms'] / 1e3:.1f} s after opening ({result['open_ms']:.0f} ms); "
                    f"load {start_load}",
            detail={"value_is": f"median over {result['uniform_moves']} moves", **common}),
        "switchboard_per_layer_move_extra_ms": row(
            extra, "ms, a per-layer change minus one forward pass timed just before it (kernel side, median)",
            f"≤ {result['per_layer_extra_goal_ms']:.0f} ms over one forward pass", result["per_layer_goal_met"],
            label=f"precision switchboard, per-layer change to a setting not seen yet, ResNet-20, {images_n} images, "
                  f"kernel side, {ts}",
            summary=f"move {result['per_layer_move_ms']:.0f} ms = {result['per_layer_per_forward']:.2f}× one "
                    f"quantized forward pass ({result['forward_ms']:.0f} ms; FP32 {result['fp32_forward_ms']:.0f} ms"
                    f"); {result['messages_per_layer_move']:.0f} messages, "
                    f"{result['bytes_per_layer_move'] / 1e3:.1f} kB; load {start_load}",
            detail={"value_is": f"median over {result['per_layer_moves']} moves of (move − forward pass)", **common}),
    }


BROWSER_NOTEBOOK = "06_deployment"  # its switchboard: the shipped ResNet-20 on 256 CIFAR-10 test images


def switchboard_browser_section(quick: bool) -> dict:
    """The switchboard end to end in a real browser: ``tests/test_browser.py`` runs ``notebooks/06_deployment`` in
    JupyterLab in headless Chromium (smoke profile) and times, in the page, each key press on the precision slider
    to the readout's and the figures' change in the DOM (``JS_ARM_LATENCY``): the checked move and the move back,
    then more left/right pairs (``LABKIT_BROWSER_LATENCY_MOVES``). The row is the median of key → both changed."""
    import json
    import subprocess
    import tempfile

    start_load = load()
    pairs = 1 if quick else 5
    with tempfile.TemporaryDirectory() as folder:
        record = Path(folder) / "latency.jsonl"
        env = dict(os.environ, LABKIT_BROWSER_LATENCY_FILE=str(record), LABKIT_BROWSER_LATENCY_MOVES=str(pairs),
                   LABKIT_PROFILE="smoke")
        test = f"tests/test_browser.py::test_notebook_widget_in_a_real_browser[{BROWSER_NOTEBOOK}]"
        began = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test], cwd=HERE.parent,
                              env=env, capture_output=True, text=True, timeout=900)
        seconds = time.perf_counter() - began
        if done.returncode != 0 or not record.is_file():
            at = done.stdout.find("browser test of notebooks/")
            raise RuntimeError(f"the browser test failed (exit {done.returncode}): "
                               f"{done.stdout[at:at + 1500] if at >= 0 else done.stdout[-1500:]}")
        moves = [move for line in record.read_text().splitlines() for move in json.loads(line)["moves"]]
    both = [m["both_ms"] for m in moves]
    value = statistics.median(both)
    return {"switchboard_browser_move_ms": row(
        r3(value), "ms, key press → readout and figures changed in the page (median over the moves)", "≤ 150 ms",
        value <= 150,
        label=f"precision switchboard end to end in JupyterLab + headless Chromium, uniform move, ResNet-20, 256 "
              f"images (notebook {BROWSER_NOTEBOOK}, smoke profile)",
        summary=f"{len(moves)} moves: median {value:.0f} ms, max {max(both):.0f} ms; readout alone median "
                f"{statistics.median(m['readout_ms'] for m in moves):.0f} ms, figures "
                f"{statistics.median(m['figure_ms'] for m in moves):.0f} ms; load {start_load}",
        detail={"value_is": "median over the moves of (the later of the readout's and the figures' first DOM change "
                            "− the keydown), performance.now() in the page; the browser's paint after it is not in it",
                "moves": moves, "test": test, "test_seconds": round(seconds, 1), "threads": torch.get_num_threads(),
                "load_average_start": start_load, "load_average_end": load()})}


# ------------------------------------------------------------------------------------------- bf16 accuracy

def bf16_accuracy_section(quick: bool) -> dict:
    """FP32 fine-tuning from the shipped FP32 ResNet-20: the loss curve with bf16 autocast (and channels_last)
    against plain fp32, same seed, same batches, and top-1 on test images after."""
    from labkit.checkpoints import load_shipped

    start_load = load()
    steps, batch, test_images = (10, 64, 256) if quick else (100, 128, 2000)
    order = torch.randperm(50_000, generator=torch.Generator().manual_seed(0))[: steps * batch].tolist()
    train_x, train_y = _cifar_images("train", order)
    batches, labels = train_x.split(batch), train_y.split(batch)
    test_x, test_y = _cifar_images("test", range(test_images))
    curves, accuracy, seconds = {}, {}, {}
    for config in ("fp32", "bf16", "bf16_channels_last"):
        options = CONFIGS[config]
        torch.manual_seed(0)
        model = load_shipped("cifar10-resnet20-fp32").train()
        if options["channels_last"]:
            model = model.to(memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        losses = []
        began = time.perf_counter()
        for x, y in zip(batches, labels):
            x = x.contiguous(memory_format=torch.channels_last) if options["channels_last"] else x
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=options["bf16"]):
                loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            losses.append(float(loss))
        seconds[config] = round(time.perf_counter() - began, 1)
        model.eval()
        with torch.no_grad():
            correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in zip(test_x.split(500), test_y.split(500)))
        accuracy[config] = round(100.0 * correct / test_images, 2)
        curves[config] = [round(v, 4) for v in losses]
    window = max(1, steps // 10)

    def smoothed(values):
        return [statistics.mean(values[i:i + window]) for i in range(0, len(values), window)]

    gap = max(abs(a - b) for a, b in zip(smoothed(curves["bf16"]), smoothed(curves["fp32"])))
    return {"bf16_finetune_loss_gap": row(
        gap, f"max |mean loss bf16 − mean loss fp32| over windows of {window} steps", "report (accuracy check)",
        label=f"bf16 autocast FP32 fine-tuning: loss gap to fp32, {steps} steps of the shipped ResNet-20",
        summary=f"top-1 after ({test_images} test images): {accuracy}; load {start_load}",
        detail={"value_is": f"FP32 fine-tuning of the shipped cifar10-resnet20-fp32, {steps} SGD steps (lr 0.01, "
                            f"momentum 0.9), batch {batch} un-augmented CIFAR-10 train images, same seed and batches",
                "test_top1_percent_after": accuracy, "test_images": test_images,
                "mean_loss_first_last_window": {k: [round(statistics.mean(v[:window]), 4),
                                                    round(statistics.mean(v[-window:]), 4)] for k, v in curves.items()},
                "loss_curves": curves, "seconds": seconds, "threads": torch.get_num_threads(),
                "load_average_start": start_load, "load_average_end": load()})}
