"""The timings and checks of ``scripts/gpu_check.sh`` on one device, written to ``gpu_check.json`` + ``.txt``.

    python scripts/gpu_check.py OUT_DIR [--device cuda|cpu] [--budget-s 420] [--dry-run]

Timings (synthetic CIFAR-sized data in memory, 50,000 images, so no data set needs to travel to the machine):

- ResNet-20 FP32 and joint {8,6,4,2} (Alg. A.2 + ALRS through ``JointTrainer.train_step``, batch 128): one full
  epoch (390 steps) of the default settings through the whole-batch loader, and ms per step on a batch already
  on the device for plain / bf16 autocast / channels_last / both;
- the same FP32 epoch slice through the loader ``JointTrainer`` builds today (per-image DataLoader, workers);
- a joint {8,6,4,2} ResNet-18 step (torchvision's, 224 px, batch 64), plain and bf16 autocast;
- INT8 → 4-bit switch of all ResNet-18 layers (``labkit.int_switch.CodeBank``) ÷ a copy of the same bytes.

Checks: bf16 autocast and channels_last give finite logits close to the plain ones; ``convert_sync_batchnorm``
puts ``nn.SyncBatchNorm`` in a quantized model, which then trains a step under DDP in a one-process NCCL group;
``torch.cuda.set_sync_debug_mode`` counts the host-device syncs of a quantized forward pass and of a joint step
and names the source lines (the activation quantizer's first-use check among them).

``--dry-run`` (with ``--device cpu``) runs every section with tiny step counts, to test the script without a GPU.
Each section records its own error and the others still run; a section that would start past the budget is
skipped and says so.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import labkit  # noqa: E402
from labkit.cifar_memory import CIFAR10InMemory  # noqa: E402
from labkit.data import make_loader  # noqa: E402
from labkit.int_switch import CodeBank, compiled_switch_error  # noqa: E402
from labkit.models import build_model  # noqa: E402
from labkit.quant.rounding import double_round  # noqa: E402
from labkit.train.config import TrainConfig  # noqa: E402
from labkit.train.distributed import ProcessGroup  # noqa: E402
from labkit.train.loop import JointTrainer  # noqa: E402

JOINT_BITS = (8, 6, 4, 2)
VARIANTS = {"plain": (False, False), "bf16_autocast": (True, False), "channels_last": (False, True),
            "bf16_channels_last": (True, True)}


class Budget:
    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synthetic_cifar(count: int) -> CIFAR10InMemory:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (count, 32, 32, 3), dtype=torch.uint8, generator=generator)
    return CIFAR10InMemory.from_arrays(images, torch.randint(0, 10, (count,), generator=generator).tolist())


def trainer_for(bits, device, out_dir, train_set, amp=False, channels_last=False, arch="resnet20", image_size=32,
                batch=128, num_classes=10) -> JointTrainer:
    """A JointTrainer as a training run builds one (FP32 when ``bits`` is None), on ``device``."""
    torch.manual_seed(0)
    model = build_model(arch, num_classes=num_classes) if arch == "resnet20" else build_model(arch)
    if bits is not None:
        model = labkit.quantize_model(model, bits, example_input=torch.randn(2, 3, image_size, image_size))
    config = TrainConfig(bits=bits, epochs=1, batch_size=batch, workers=None, amp_bf16=amp,
                         channels_last=channels_last, optimizer="adam" if bits else "sgd", lr=5e-4 if bits else 0.05)
    return JointTrainer(model, config, train_set, {}, out_dir, num_classes, show_progress=False,
                        group=ProcessGroup(device=device))


def prepare(trainer: JointTrainer, images: torch.Tensor, labels: torch.Tensor):
    images = images.to(trainer.device, non_blocking=True)
    if trainer.channels_last:
        images = images.to(memory_format=torch.channels_last)
    return images, labels.to(trainer.device, non_blocking=True)


def time_loader_steps(trainer: JointTrainer, loader, steps: int) -> float:
    """Seconds for ``steps`` training steps taking their batches from ``loader`` (device synchronised)."""
    synchronize(trainer.device)
    start = time.perf_counter()
    for _, (images, labels, indices) in zip(range(steps), loader):
        images, labels = prepare(trainer, images, labels)
        trainer.train_step(images, labels, indices, epoch=0)
    synchronize(trainer.device)
    return time.perf_counter() - start


def time_bare_steps(trainer: JointTrainer, batch, steps: int) -> float:
    images, labels, indices = batch
    synchronize(trainer.device)
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step(images, labels, indices, epoch=0)
    synchronize(trainer.device)
    return time.perf_counter() - start


def fast_loader(train_set, batch: int, device: torch.device):
    """The loader the trainer gets with the one-line change (whole batches, with indices)."""
    return make_loader(train_set, batch, train=True, seed=0, with_index=True, pin_memory=device.type == "cuda")


def device_batch(trainer: JointTrainer, train_set, batch: int):
    images, labels, indices = next(iter(fast_loader(train_set, batch, trainer.device)))
    images, labels = prepare(trainer, images, labels)
    return images, labels, indices


# ----------------------------------------------------------------------------------------------- sections
def section_resnet20(scale, device, train_set, out_dir, budget: Budget) -> dict:
    """Epochs through the loader and per-step times of every variant, FP32 and joint."""
    results = {"skipped_for_budget": []}
    for name, bits in (("fp32", None), ("joint_8642", JOINT_BITS)):
        entry = {}
        trainer = trainer_for(bits, device, out_dir, train_set)
        time_loader_steps(trainer, fast_loader(train_set, 128, device), scale["warmup"])
        epoch_s = time_loader_steps(trainer, fast_loader(train_set, 128, device), scale["epoch_steps"])
        entry["epoch_steps"] = scale["epoch_steps"]
        entry["epoch_s_whole_batch_loader"] = round(epoch_s, 3)
        entry["epoch_s_scaled_to_390_steps"] = round(epoch_s / scale["epoch_steps"] * 390, 2)
        batch = device_batch(trainer, train_set, 128)
        time_bare_steps(trainer, batch, scale["warmup"])
        bare_s = time_bare_steps(trainer, batch, scale["epoch_steps"])
        entry["loader_vs_bare_steps"] = round(epoch_s / bare_s, 3)
        if bits is None:  # the loader JointTrainer builds today: per-image DataLoader with worker processes
            slice_steps = min(scale["epoch_steps"], scale["today_steps"])
            today = time_loader_steps(trainer, trainer.train_loader(0, 0), slice_steps)
            entry["today_loader_steps"] = slice_steps
            entry["today_loader_vs_bare_steps"] = round(today / (bare_s / scale["epoch_steps"] * slice_steps), 3)
        per_step = {}
        for variant, (amp, channels_last) in VARIANTS.items():
            if budget.left() <= 0:
                results["skipped_for_budget"].append(f"{name} {variant}")
                continue
            trainer = trainer_for(bits, device, out_dir, train_set, amp=amp, channels_last=channels_last)
            batch = device_batch(trainer, train_set, 128)
            time_bare_steps(trainer, batch, scale["warmup"])
            times = [time_bare_steps(trainer, batch, 1) for _ in range(scale["steps"])]
            per_step[variant] = round(statistics.median(times) * 1e3, 2)
        entry["ms_per_step_on_device_batch"] = per_step
        results[name] = entry
    fp32, joint = results["fp32"]["ms_per_step_on_device_batch"], results["joint_8642"]["ms_per_step_on_device_batch"]
    results["joint_step_vs_4x_fp32"] = {v: round(joint[v] / (4 * fp32[v]), 3)
                                        for v in VARIANTS if v in fp32 and v in joint}
    return results


def section_resnet18(scale, device, out_dir) -> dict:
    size, batch = scale["resnet18_image"], scale["resnet18_batch"]
    images = torch.randn(batch, 3, size, size)
    labels = torch.randint(0, 1000, (batch,))
    dummy = torch.utils.data.TensorDataset(images, labels)
    results = {"image_size": size, "batch": batch}
    for variant in ("plain", "bf16_autocast"):
        trainer = trainer_for(JOINT_BITS, device, out_dir, dummy, amp=variant != "plain", arch="resnet18",
                              image_size=size, batch=batch, num_classes=1000)
        on_device = (images.to(device), labels.to(device), torch.arange(batch))
        time_bare_steps(trainer, on_device, scale["warmup"])
        times = [time_bare_steps(trainer, on_device, 1) for _ in range(scale["resnet18_steps"])]
        results[f"joint_step_ms_{variant}"] = round(statistics.median(times) * 1e3, 2)
    return results


def _trained_quantized_resnet20(device, train_set, out_dir, steps: int = 2) -> torch.nn.Module:
    trainer = trainer_for(JOINT_BITS, device, out_dir, train_set)
    time_loader_steps(trainer, fast_loader(train_set, 128, device), steps)  # initialises the activation scales
    return trainer.model


def section_checks(device, train_set, out_dir) -> dict:
    """bf16 autocast and channels_last against plain FP32 evaluation of a quantized ResNet-20, at every bit-width."""
    model = _trained_quantized_resnet20(device, train_set, out_dir).eval()
    images = device_batch_plain(train_set, device)
    results = {}
    with torch.no_grad():
        for bits in JOINT_BITS:
            labkit.set_bits(model, bits)
            plain = model(images).float()
            with torch.autocast(device.type, dtype=torch.bfloat16):
                bf16 = model(images).float()
            last = model.to(memory_format=torch.channels_last)(images.to(memory_format=torch.channels_last)).float()
            model.to(memory_format=torch.contiguous_format)
            results[str(bits)] = {
                "bf16_finite": bool(torch.isfinite(bf16).all()),
                "bf16_max_abs_diff": round(float((bf16 - plain).abs().max()), 4),
                "bf16_top1_agreement": round(float((bf16.argmax(1) == plain.argmax(1)).float().mean()), 4),
                "channels_last_finite": bool(torch.isfinite(last).all()),
                "channels_last_max_abs_diff": round(float((last - plain).abs().max()), 6),
                "channels_last_top1_agreement": round(float((last.argmax(1) == plain.argmax(1)).float().mean()), 4),
            }
    return results


def device_batch_plain(train_set, device, batch: int = 128) -> torch.Tensor:
    images, _ = next(iter(make_loader(train_set, batch, train=False, seed=0)))
    return images.to(device)


def section_sync_batchnorm(device, train_set, out_dir) -> dict:
    """convert_sync_batchnorm on a quantized ResNet-20, then one DDP training step in a one-process group."""
    import torch.distributed as dist
    from labkit.nn import SwitchableBatchNorm2d
    from labkit.train.sync_bn import GlobalBatchNorm2d, convert_sync_batchnorm

    model = _trained_quantized_resnet20(device, train_set, out_dir).train()
    batch_norms = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    backend = "nccl" if device.type == "cuda" else "gloo"
    rendezvous = Path(tempfile.mkdtemp()) / "rendezvous"
    dist.init_process_group(backend, init_method=f"file://{rendezvous}", rank=0, world_size=1)
    try:
        converted = convert_sync_batchnorm(model, device)
        kinds = collections.Counter(type(m).__name__ for m in converted.modules()
                                    if isinstance(m, (torch.nn.SyncBatchNorm, GlobalBatchNorm2d)))
        switchable = sum(isinstance(m, SwitchableBatchNorm2d) for m in converted.modules())
        ddp = torch.nn.parallel.DistributedDataParallel(
            converted, device_ids=[device.index or 0] if device.type == "cuda" else None, find_unused_parameters=True)
        images = device_batch_plain(train_set, device, 32)
        labels = torch.randint(0, 10, (32,), device=device)
        losses = {}
        for bits in JOINT_BITS:
            labkit.set_bits(converted, bits)
            loss = F.cross_entropy(ddp(images).float(), labels)
            loss.backward()
            losses[str(bits)] = round(float(loss.detach()), 4)
        finite_grads = all(torch.isfinite(p.grad).all() for p in converted.parameters() if p.grad is not None)
    finally:
        dist.destroy_process_group()
    return {"backend": backend, "batch_norms_before": batch_norms, "converted": dict(kinds),
            "switchable_batch_norms": switchable, "ddp_losses": losses, "finite_gradients": bool(finite_grads),
            "note": "one process: SyncBatchNorm runs its single-process path; the all-reduce needs two GPUs"}


def section_host_syncs(device, train_set, out_dir) -> dict:
    """Host-device syncs per quantized forward pass and per joint step, by source line (CUDA only)."""
    if device.type != "cuda":
        return {"skipped": "host-device syncs exist on CUDA only"}
    trainer = trainer_for(JOINT_BITS, device, out_dir, train_set)
    batch = device_batch(trainer, train_set, 128)
    time_bare_steps(trainer, batch, 2)  # first use done: scales initialised

    def count(call) -> tuple[int, dict]:
        synchronize(device)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                call()
            finally:
                torch.cuda.set_sync_debug_mode("default")
        lines = collections.Counter(f"{_relative(w.filename)}:{w.lineno}" for w in caught
                                    if "synchroniz" in str(w.message))
        return sum(lines.values()), dict(lines.most_common(10))

    model = trainer.model
    images = batch[0]

    def forward_eval():
        with torch.no_grad():
            model.eval()
            labkit.set_bits(model, 4)
            model(images)
            model.train()

    forward_count, forward_lines = count(forward_eval)
    step_count, step_lines = count(lambda: trainer.train_step(*batch, epoch=0))
    quantized = len(labkit.quantized_layers(model))
    return {"syncs_per_eval_forward": forward_count, "eval_forward_sources": forward_lines,
            "syncs_per_joint_step": step_count, "joint_step_sources": step_lines, "quantized_layers": quantized}


def _relative(filename: str) -> str:
    path = Path(filename)
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else filename


def section_int_switch(scale, device) -> dict:
    model = labkit.quantize_model(build_model("resnet18"), bits=JOINT_BITS).to(device)
    bank = CodeBank.from_model(model)
    out = torch.empty_like(bank.codes)
    switched = bank.switch(4)
    layers = labkit.quantized_layers(model)
    equal = all(torch.equal(switched[name], double_round(layer.weight_quantizer.high_codes(layer.weight), 8, 4))
                for name, layer in layers.items())
    candidates = {"copy": lambda: out.copy_(bank.codes), "bank_switch": lambda: bank.switch(4)}
    times = {name: [] for name in candidates}
    for call in candidates.values():
        call(), call()
    for round_index in range(scale["switch_rounds"]):
        for name in candidates if round_index % 2 == 0 else list(candidates)[::-1]:
            synchronize(device)
            start = time.perf_counter()
            candidates[name]()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    ratio = statistics.median(a / b for a, b in zip(times["bank_switch"], times["copy"]))
    return {"codes": bank.numel, "equal_to_double_round": equal, "switch_vs_copy": round(ratio, 3),
            "ms": {name: round(statistics.median(t) * 1e3, 4) for name, t in times.items()},
            "compile_error": compiled_switch_error()}


# ---------------------------------------------------------------------------------------------------- main
SCALES = {
    "full": {"warmup": 5, "epoch_steps": 390, "today_steps": 100, "steps": 20, "resnet18_image": 224,
             "resnet18_batch": 64, "resnet18_steps": 10, "switch_rounds": 50, "images": 50_000},
    "dry": {"warmup": 1, "epoch_steps": 2, "today_steps": 2, "steps": 2, "resnet18_image": 64, "resnet18_batch": 2,
            "resnet18_steps": 1, "switch_rounds": 3, "images": 1_024},
}


def text_summary(report: dict) -> str:
    lines = [f"labkit gpu_check on {report['meta']['device_name']} ({report['meta']['mode']} run, "
             f"{report['meta']['seconds']:.0f} s, torch {report['meta']['torch']}, {report['meta']['finished']})"]
    install, tests = report.get("install", {}), report.get("tests", {})
    if install:
        lines.append(f"install: {install.get('how')}; missing after install: {install.get('missing') or 'none'}")
    if tests:
        lines.append(f"CUDA unit tests: {tests.get('summary')} (exit {tests.get('exit_code')})")
    r20 = report["sections"].get("resnet20", {})
    for name in ("fp32", "joint_8642"):
        entry = r20.get(name)
        if isinstance(entry, dict):
            lines.append(f"ResNet-20 {name}: epoch {entry['epoch_s_scaled_to_390_steps']} s (390 steps, whole-batch "
                         f"loader; loader ÷ bare steps {entry['loader_vs_bare_steps']}); ms/step "
                         + ", ".join(f"{k} {v}" for k, v in entry["ms_per_step_on_device_batch"].items())
                         + (f"; today's per-image loader ÷ bare {entry['today_loader_vs_bare_steps']}"
                            if "today_loader_vs_bare_steps" in entry else ""))
    if "joint_step_vs_4x_fp32" in r20:
        ratios = r20["joint_step_vs_4x_fp32"]
        lines.append("joint step ÷ 4 FP32 steps: " + ", ".join(f"{k} {v}" for k, v in ratios.items()))
    r18 = report["sections"].get("resnet18", {})
    if "joint_step_ms_plain" in r18:
        lines.append(f"ResNet-18 joint step ({r18['image_size']} px, batch {r18['batch']}): plain "
                     f"{r18['joint_step_ms_plain']} ms, bf16 autocast {r18['joint_step_ms_bf16_autocast']} ms")
    switch = report["sections"].get("int_switch", {})
    if "switch_vs_copy" in switch:
        lines.append(f"INT8 → 4-bit switch of ResNet-18 ÷ copy: {switch['switch_vs_copy']} (equal to double_round: "
                     f"{switch['equal_to_double_round']})")
    syncs = report["sections"].get("host_syncs", {})
    if "syncs_per_eval_forward" in syncs:
        lines.append(f"host-device syncs: {syncs['syncs_per_eval_forward']} per eval forward "
                     f"({syncs['quantized_layers']} quantized layers), {syncs['syncs_per_joint_step']} per joint step; "
                     f"top sources: {list(syncs['eval_forward_sources'])[:3]}")
    for name, error in report["errors"].items():
        lines.append(f"ERROR in {name}: {error.splitlines()[-1] if error else ''}")
    for name in report["skipped"] + r20.get("skipped_for_budget", []):
        lines.append(f"skipped (budget): {name}")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--budget-s", type=float, default=420.0)
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but PyTorch sees no CUDA device (use --device cpu --dry-run to test the script)")
    scale = SCALES["dry" if args.dry_run else "full"]
    budget = Budget(args.budget_s)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    train_set = synthetic_cifar(scale["images"])
    report = {"meta": {"mode": "dry" if args.dry_run else "full", "device": str(device),
                       "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
                       else platform.processor() or "cpu",
                       "torch": torch.__version__, "cuda": torch.version.cuda, "python": sys.version.split()[0],
                       "cpu_count": os.cpu_count(), "scale": scale, "data": "synthetic uint8 CIFAR-sized images"},
              "sections": {}, "errors": {}, "skipped": [], "section_seconds": {}}
    for name in ("install", "tests"):  # written by gpu_check.sh before this script runs
        path = args.out_dir / f"{name}.json"
        if path.is_file():
            report[name] = json.loads(path.read_text())
    summary = write(report, args.out_dir, started)
    with tempfile.TemporaryDirectory() as out_dir:
        sections = {
            "int_switch": lambda: section_int_switch(scale, device),
            "checks": lambda: section_checks(device, train_set, out_dir),
            "sync_batchnorm": lambda: section_sync_batchnorm(device, train_set, out_dir),
            "host_syncs": lambda: section_host_syncs(device, train_set, out_dir),
            "resnet18": lambda: section_resnet18(scale, device, out_dir),
            "resnet20": lambda: section_resnet20(scale, device, train_set, out_dir, budget),
        }
        for name, run in sections.items():
            if budget.left() <= 0:
                report["skipped"].append(name)
                continue
            section_start = time.perf_counter()
            try:
                report["sections"][name] = run()
            except Exception:  # one broken section must not hide the others
                report["errors"][name] = traceback.format_exc()[-3000:]
            report["section_seconds"][name] = round(time.perf_counter() - section_start, 1)
            print(f"[gpu_check] {name}: {report['section_seconds'][name]} s", flush=True)
            summary = write(report, args.out_dir, started)  # after every section: a killed run keeps its figures
    print(summary, end="")
    return 1 if report["errors"] else 0


def write(report: dict, out_dir: Path, started: float) -> str:
    report["meta"]["seconds"] = round(time.perf_counter() - started, 1)
    report["meta"]["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    (out_dir / "gpu_check.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    summary = text_summary(report)
    (out_dir / "gpu_check.txt").write_text(summary)
    return summary


if __name__ == "__main__":
    sys.exit(main())
