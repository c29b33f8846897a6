"""Speed of the default paths (issue 11 items 1–2): fake-quant against PyTorch's fused ops, the joint step against
FP32 steps, and what bf16 autocast and channels_last do on this CPU — the default beside the opt-in paths.

    python benchmarks/speed.py                       # every section → benchmarks/speed_results.{json,md}
    python benchmarks/speed.py --quick               # smaller inputs, fewer rounds: checks the script (~2 min)
    python benchmarks/speed.py --only fakequant      # sections: fakequant, joint_step, bf16_accuracy
    python benchmarks/speed.py --threads 1,2 --compiled   # thread counts; also time the opt-in compiled kernels

Every figure is measured side by side in this one process: the candidates of a section (every path, every thread
count) run round-robin, A, B, C, then C, B, A, …, and each ratio is the median over rounds of the ratio of two
times taken in the same round. Wall time is the headline (what a user waits for); the CPU time of the process
(``time.process_time``, all threads) is given beside it, since on a shared machine the wall time also counts the
time other processes held the cores. The load average is recorded at the start and end of every section.
``measure(quick, sections, threads)`` returns the rows in the schema of ``benchmarks/run.py``.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # labkit from this checkout

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import labkit  # noqa: E402
from labkit.config import hardware_summary  # noqa: E402
from labkit.models import build_model  # noqa: E402
from labkit.quant import lsq  # noqa: E402
from labkit.quant.lsq import fake_quantize, lsq_grad_scale, use_fake_quant_path  # noqa: E402

SECTIONS = ("fakequant", "joint_step", "bf16_accuracy")
DEFAULT_JSON = HERE / "speed_results.json"
DEFAULT_MD = HERE / "speed_results.md"
BITS = (8, 6, 4, 2)
HIGH = 8
FAKEQUANT_GOAL = 0.8
JOINT_GOAL = 1.15
STEPS_PER_EPOCH = math.ceil(50_000 / 128)  # CIFAR-10 train set at batch 128


def row(value, unit: str, goal: str, met: bool | None = None, **extra) -> dict:
    entry = {"value": None if value is None else float(value), "unit": unit, "goal": goal}
    if met is not None:
        entry["met"] = bool(met)
    entry.update(extra)
    return entry


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def interleaved(candidates: dict, rounds: int, progress: str = "") -> dict[str, dict[str, list[float]]]:
    """Wall and process-CPU seconds per call of every candidate, round-robin, the order reversed every round."""
    names = list(candidates)
    samples = {name: {"wall": [], "cpu": []} for name in names}
    gc.collect()
    for index in range(rounds):
        if progress:
            print(f"{progress}: round {index + 1}/{rounds}, load {load()}", file=sys.stderr, flush=True)
        for name in names if index % 2 == 0 else names[::-1]:
            wall, cpu = time.perf_counter(), time.process_time()
            candidates[name]()
            samples[name]["cpu"].append(time.process_time() - cpu)
            samples[name]["wall"].append(time.perf_counter() - wall)
    return samples


def ratio(samples, a: str, b: str, clock: str = "wall", divide: float = 1.0) -> float:
    return round(statistics.median(x / y for x, y in zip(samples[a][clock], samples[b][clock])) / divide, 3)


def median_ms(samples, name: str, clock: str = "wall") -> float:
    return round(statistics.median(samples[name][clock]) * 1e3, 3)


def with_threads(threads: int, call):
    def run():
        torch.set_num_threads(threads)
        return call()
    return run


# --------------------------------------------------------------------------------------------- fake-quant

def _labkit_step(x, scale, grad, path: str, bits: int, shift: int, signed: bool, rounding: str = "half_even",
                 offset: float = 0.0):
    qmin, qmax = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    elements = x[0].numel() if signed else x.numel()
    factor = lsq_grad_scale(elements, qmax)

    def step():
        lsq._KERNELS.update(_PATH_KERNELS[path])  # switch path without re-wrapping compiled kernels
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


_PATH_KERNELS: dict[str, dict] = {}


def _capture_paths(compiled: bool) -> list[str]:
    """The kernel tables of every path, taken once (``use_compile`` wraps new compiled objects per call)."""
    paths = ["fused", "recompute"] + (["compiled"] if compiled else [])
    for path in paths:
        use_fake_quant_path(path)
        _PATH_KERNELS[path] = dict(lsq._KERNELS)
    use_fake_quant_path("fused")
    return paths


def fakequant_section(quick: bool, threads: tuple[int, ...], compiled: bool) -> dict:
    """Weight (per channel, every bit of {8,6,4,2} from 8; Double Rounding, floor, per-bit) and activation
    (per tensor, unsigned) fake-quant fwd+bwd ÷ PyTorch's learnable fused op at the same bit-width."""
    start_load = load()
    channels = 64 if quick else 256
    act_shape = (32, 16, 16, 16) if quick else (128, 16, 32, 32)
    rounds = 8 if quick else 30
    gen = torch.Generator().manual_seed(0)
    weight = (torch.randn(channels, channels, 3, 3, generator=gen) * 0.05).requires_grad_()
    grad_w = torch.randn(weight.shape, generator=gen)
    scale8 = (weight.detach().flatten(1).abs().amax(1) / 127)
    activation = torch.relu(torch.randn(act_shape, generator=gen)).requires_grad_()
    grad_a = torch.randn(act_shape, generator=gen)
    paths = _capture_paths(compiled)
    candidates, compile_s = {}, {}
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
                candidates[f"{path}_dr_w{bits}_t{t}"] = with_threads(t, _labkit_step(
                    weight, per_channel, grad_w, path, bits, shift, True))
                candidates[f"{path}_floor_w{bits}_t{t}"] = with_threads(t, _labkit_step(
                    weight, per_channel, grad_w, path, bits, shift, True, "floor", offset))
                candidates[f"{path}_perbit_w{bits}_t{t}"] = with_threads(t, _labkit_step(
                    weight, per_bit, grad_w, path, bits, 0, True))
                candidates[f"{path}_a{bits}_t{t}"] = with_threads(t, _labkit_step(
                    activation, act_scalar, grad_a, path, bits, 0, False))
    for name, call in candidates.items():  # warm-up; compiled kernels compile here (timed apart)
        began = time.perf_counter()
        call()
        if name.startswith("compiled"):
            compile_s[name] = round(time.perf_counter() - began, 2)
        call()
    samples = interleaved(candidates, rounds)
    lsq._KERNELS.update(_PATH_KERNELS["fused"])
    rows = {}
    for t in threads:
        for kind, methods in (("weight", ("dr", "floor", "perbit")), ("activation", (None,))):
            table = {}
            for path in paths:
                for method in methods:
                    for clock in ("wall", "cpu"):
                        key = f"{path}" + (f"_{method}" if method else "") + f"_{clock}"
                        table[key] = {}
                        for bits in BITS:
                            name = f"{path}_{method}_w{bits}_t{t}" if method else f"{path}_a{bits}_t{t}"
                            reference = f"torch_{'w' if method else 'a'}{bits}_t{t}"
                            table[key][bits] = ratio(samples, name, reference, clock)
            default_key = "fused_dr_wall" if kind == "weight" else "fused_wall"
            value = max(table[default_key].values())
            worst_any = max(max(v.values()) for k, v in table.items() if k.startswith("fused") and k.endswith("wall"))
            prefix = "w" if kind == "weight" else "a"
            ms = {name.replace(f"_t{t}", ""): median_ms(samples, name) for name in candidates
                  if name.endswith(f"_t{t}") and f"_{prefix}" in name and ("_w" in name) == (kind == "weight")}
            op = ("torch._fake_quantize_learnable_per_channel_affine" if kind == "weight" else
                  "torch._fake_quantize_learnable_per_tensor_affine")
            shape = f"{channels}×{channels}×3×3 weight, per-channel scale" if kind == "weight" else \
                f"{'×'.join(map(str, act_shape))} post-ReLU activation, per-tensor scale, unsigned"
            rows[f"fakequant_{kind}_vs_torch_t{t}"] = row(
                value, f"× time of {op} (fwd+bwd)", f"≤ {FAKEQUANT_GOAL} at every bit-width", value <= FAKEQUANT_GOAL,
                detail={
                    "value_is": f"default (fused) path, {'Double Rounding ' if kind == 'weight' else ''}worst over "
                                f"bits {list(BITS)}, wall time, {t} thread(s); {shape}; median of per-round ratios",
                    "worst_default_any_method": worst_any,
                    "ratio_by_path_method_bits": table,
                    "median_ms_wall": ms,
                    "reference": f"{op} at the same bit-width (its own leaf scale: s_8·2^Δ for Double Rounding, "
                                 "which PyTorch cannot double-round, so a reference cost at Δ > 0)",
                    "compile_s_first_call": {k: v for k, v in compile_s.items() if k.endswith(f"_t{t}")} or None,
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


def _train_step(model, optimizer, images, labels, bit_set, bf16: bool, path: str = "fused"):
    """One plain step: for every bit-width (or once for FP32) forward, loss, backward; then one Adam step."""
    def step():
        lsq._KERNELS.update(_PATH_KERNELS[path])
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


def joint_step_section(quick: bool, threads: tuple[int, ...], configs=tuple(CONFIGS), compiled: bool = False,
                       rounds: int | None = None) -> dict:
    """Joint {8,6,4,2} step ÷ 4 FP32 steps, ResNet-20, plain quantize_model + set_bits loop with Adam. The plain
    fp32 configuration also runs the joint step on the previous default (``recompute``) and, with ``compiled``,
    the opt-in compiled fake-quant path, each beside the same FP32 step."""
    start_load = load()
    batch, rounds = (32, rounds or 3) if quick else (128, rounds or 5)
    paths = _capture_paths(compiled)
    candidates = {}
    for config in configs:
        options = CONFIGS[config]
        fp32, joint, images, labels = _models(batch, options["channels_last"])
        for t in threads:
            candidates[f"fp32_{config}_t{t}"] = with_threads(t, _train_step(
                fp32, torch.optim.Adam(fp32.parameters(), 1e-4), images, labels, None, options["bf16"]))
            candidates[f"joint_{config}_t{t}"] = with_threads(t, _train_step(
                joint, torch.optim.Adam(joint.parameters(), 1e-4), images, labels, BITS, options["bf16"]))
            if config == "fp32":
                for path in paths[1:]:
                    candidates[f"joint{path}_{config}_t{t}"] = with_threads(t, _train_step(
                        joint, torch.optim.Adam(joint.parameters(), 1e-4), images, labels, BITS, False, path))
    for call in candidates.values():
        call()
    samples = interleaved(candidates, rounds, "joint_step")
    rows = {}
    for config in configs:
        for t in threads:
            a, b = f"joint_{config}_t{t}", f"fp32_{config}_t{t}"
            value = ratio(samples, a, b, divide=len(BITS))
            plain = f"fp32_fp32_t{t}"
            rows[f"joint_step_vs_4x_fp32_{config}_t{t}"] = row(
                value, "× (joint {8,6,4,2} step ÷ 4 FP32 steps of the same configuration)", f"≤ {JOINT_GOAL}",
                value <= JOINT_GOAL,
                detail={
                    "value_is": f"ResNet-20, batch {batch} random 32×32 images, plain quantize_model + set_bits loop "
                                f"(forward/backward per bit-width, one Adam step), {config}, {t} thread(s), wall "
                                f"time; median of per-round ratios, {rounds} rounds",
                    "cpu_time_ratio": ratio(samples, a, b, "cpu", len(BITS)),
                    "joint_step_ms": median_ms(samples, a), "fp32_step_ms": median_ms(samples, b),
                    "fp32_epoch_s": round(median_ms(samples, b) * STEPS_PER_EPOCH / 1e3, 1),
                    "joint_epoch_s": round(median_ms(samples, a) * STEPS_PER_EPOCH / 1e3, 1),
                    "epoch_is": f"{STEPS_PER_EPOCH} steps of batch {batch} (CIFAR-10), bare steps without the loader",
                    "fp32_images_per_s": round(batch / (median_ms(samples, b) / 1e3), 1),
                    "fp32_step_vs_plain_fp32": ratio(samples, b, plain) if b != plain and plain in samples else 1.0,
                    "joint_step_vs_plain_joint": ratio(samples, a, f"joint_fp32_t{t}")
                    if f"joint_fp32_t{t}" in samples else 1.0,
                    "other_paths_vs_4x_fp32": {path: ratio(samples, f"joint{path}_{config}_t{t}", b, divide=len(BITS))
                                               for path in paths[1:] if f"joint{path}_{config}_t{t}" in samples},
                    "other_paths_joint_step_ms": {path: median_ms(samples, f"joint{path}_{config}_t{t}")
                                                  for path in paths[1:] if f"joint{path}_{config}_t{t}" in samples},
                    "load_average_start": start_load, "load_average_end": load(),
                })
    return rows


# ------------------------------------------------------------------------------------------- bf16 accuracy

def _cifar_images(split: str, indices) -> tuple[torch.Tensor, torch.Tensor]:
    """Un-augmented, normalised CIFAR-10 images (``cifar10_transforms(train=False)``) and labels."""
    from labkit.data import cifar10, cifar10_transforms

    data = cifar10(split, transform=cifar10_transforms(train=False))
    pairs = [data[i] for i in indices]
    return torch.stack([image for image, _ in pairs]), torch.tensor([int(label) for _, label in pairs])


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
        detail={"value_is": f"FP32 fine-tuning of the shipped cifar10-resnet20-fp32, {steps} SGD steps (lr 0.01, "
                            f"momentum 0.9), batch {batch} un-augmented CIFAR-10 train images, same seed and batches",
                "test_top1_percent_after": accuracy, "test_images": test_images,
                "mean_loss_first_last_window": {k: [round(statistics.mean(v[:window]), 4),
                                                    round(statistics.mean(v[-window:]), 4)] for k, v in curves.items()},
                "loss_curves": curves, "seconds": seconds, "threads": torch.get_num_threads(),
                "load_average_start": start_load, "load_average_end": load()})}


# ------------------------------------------------------------------------------------------------ output

def measure(quick: bool = False, sections=SECTIONS, threads=(1, 2), compiled: bool = False,
            configs=tuple(CONFIGS), rounds: int | None = None) -> dict:
    rows = {}
    was = torch.get_num_threads()
    try:
        if "fakequant" in sections:
            rows.update(fakequant_section(quick, tuple(threads), compiled))
        if "joint_step" in sections:
            rows.update(joint_step_section(quick, tuple(threads), tuple(configs), compiled, rounds))
        if "bf16_accuracy" in sections:
            torch.set_num_threads(max(threads))
            rows.update(bf16_accuracy_section(quick))
    finally:
        torch.set_num_threads(was)
        use_fake_quant_path("fused")
    return rows


def markdown(rows: dict, meta: dict) -> str:
    lines = [f"# Speed (`benchmarks/speed.py`{' --quick' if meta['quick'] else ''})", "",
             f"{meta['hardware']}; torch {meta['torch']}; measured {meta['finished']}; load average "
             f"{meta['load_average_start']} → {meta['load_average_end']} (1, 5, 15 min).", "",
             "| row | value | goal | met | detail |", "|---|---|---|---|---|"]
    for name, entry in rows.items():
        detail = entry.get("detail", {})
        extra = ""
        if name.startswith("fakequant"):
            table = detail["ratio_by_path_method_bits"]
            extra = "; ".join(f"{k.replace('_wall', '')}: " + ", ".join(f"{b}b {v}" for b, v in table[k].items())
                              for k in table if k.endswith("_wall"))
            extra += (f" (CPU-time, default: {table['fused_dr_cpu' if 'fused_dr_cpu' in table else 'fused_cpu']}); "
                      f"load {detail['load_average_start']}")
        elif name.startswith("joint_step"):
            extra = (f"joint {detail['joint_step_ms']:.0f} ms, FP32 {detail['fp32_step_ms']:.0f} ms "
                     f"({detail['fp32_images_per_s']} img/s); epoch FP32 {detail['fp32_epoch_s']} s, joint "
                     f"{detail['joint_epoch_s']} s; CPU-time ratio {detail['cpu_time_ratio']}; load "
                     f"{detail['load_average_start']}")
            if detail.get("other_paths_vs_4x_fp32"):
                extra += "; other fake-quant paths: " + ", ".join(
                    f"{path} {value}" for path, value in detail["other_paths_vs_4x_fp32"].items())
        elif name.startswith("bf16"):
            extra = (f"top-1 after ({detail['test_images']} test images): {detail['test_top1_percent_after']}; mean "
                     f"loss first/last window: {detail['mean_loss_first_last_window']}; {detail['threads']} thread(s), "
                     f"load {detail['load_average_start']}")
        met = {True: "yes", False: "NO"}.get(entry.get("met"), "–")
        lines.append(f"| `{name}` | {entry['value']:.3f} | {entry['goal']} | {met} | {extra} |")
    lines += ["", "Ratios are medians of per-round ratios of wall times taken side by side in one process "
              "(`benchmarks/speed.py` docstring); `detail` in `speed_results.json` has every path, bit-width and "
              "the CPU-time ratios."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated: {', '.join(SECTIONS)}")
    parser.add_argument("--threads", default="1,2", help="comma-separated torch thread counts (default 1,2)")
    parser.add_argument("--compiled", action="store_true", help="also time the opt-in torch.compile kernels")
    parser.add_argument("--configs", default=",".join(CONFIGS),
                        help=f"joint_step configurations, comma-separated: {', '.join(CONFIGS)}")
    parser.add_argument("--rounds", type=int, default=None, help="joint_step rounds (default 5, quick 3)")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    parser.add_argument("--md", type=Path, default=DEFAULT_MD)
    args = parser.parse_args(argv)
    sections = [s for s in args.only.split(",") if s]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {unknown}; choose from {', '.join(SECTIONS)}")
    threads = tuple(int(t) for t in args.threads.split(","))
    meta = {"command": " ".join(sys.argv), "hardware": hardware_summary(), "torch": torch.__version__,
            "quick": args.quick, "threads": list(threads), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "load_average_start": load(), "started": datetime.datetime.now().isoformat(timespec="seconds")}
    configs = tuple(c for c in args.configs.split(",") if c)
    if sorted(set(configs) - set(CONFIGS)):
        parser.error(f"unknown configuration(s); choose from {', '.join(CONFIGS)}")
    rows = measure(args.quick, sections, threads, args.compiled, configs, args.rounds)
    meta.update(load_average_end=load(), finished=datetime.datetime.now().isoformat(timespec="seconds"))
    previous = json.loads(args.json.read_text()) if args.json.exists() else {}
    merged = {k: v for k, v in previous.items() if k != "_meta"}
    merged.update(rows)
    merged["_meta"] = meta
    args.json.write_text(json.dumps(merged, indent=1, ensure_ascii=False) + "\n")
    args.md.write_text(markdown({k: v for k, v in merged.items() if k != "_meta"}, meta))
    print(markdown(rows, meta))
    return rows


if __name__ == "__main__":
    main()
