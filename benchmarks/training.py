"""Cost of one-shot joint training: one {8,6,4,2} step ÷ (4 × one FP32 step), ResNet-20, batch 128.

Both steps run through the lab's own engine (``JointTrainer.train_step``: Alg. A.2 with ALRS for the joint
model, plain Adam for FP32) on the same batch, interleaved (A, B, A, B, …) so that the ratio is measured side
by side. A ratio of 1 would mean quantization itself is free; the goal is ≤ 1.15. The fake-quant kernels run
eagerly and, in a second pair, fused by ``torch.compile`` (``use_compile(True)``).

    python benchmarks/training.py [--rounds N] [--threads T] [--json PATH]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import labkit  # noqa: E402
from labkit.config import hardware_summary  # noqa: E402
from labkit.models import build_model  # noqa: E402
from labkit.quant.lsq import use_compile  # noqa: E402
from labkit.train.config import TrainConfig  # noqa: E402
from labkit.train.loop import JointTrainer  # noqa: E402


class RandomImages(Dataset):
    def __init__(self, count: int = 256, image_size: int = 32, num_classes: int = 10):
        generator = torch.Generator().manual_seed(0)
        self.images = torch.randn(count, 3, image_size, image_size, generator=generator)
        self.labels = torch.randint(0, num_classes, (count,), generator=generator)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return self.images[index], int(self.labels[index])


def make_trainer(bits, out_dir: str, arch: str = "resnet20", image_size: int = 32, batch_size: int = 128,
                 num_classes: int = 10) -> JointTrainer:
    """A ``JointTrainer`` for ``arch`` (FP32 when ``bits`` is None) on random images, as a training run builds it."""
    torch.manual_seed(0)
    model = build_model(arch, num_classes=num_classes)
    if bits is not None:
        model = labkit.quantize_model(model, bits, example_input=torch.randn(2, 3, image_size, image_size))
    config = TrainConfig(bits=bits, epochs=1, batch_size=batch_size, workers=0)
    data = RandomImages(2 * batch_size, image_size, num_classes)
    return JointTrainer(model, config, data, {}, out_dir, num_classes, show_progress=False)


def step_timer(trainer: JointTrainer, images, labels, indices):
    def step() -> float:
        start = time.perf_counter()
        trainer.train_step(images, labels, indices, epoch=0)
        return time.perf_counter() - start
    return step


def measure(rounds: int, batch_size: int = 128) -> dict:
    data = RandomImages(batch_size)
    images, labels, indices = data.images, data.labels, torch.arange(batch_size)
    results = {}
    with tempfile.TemporaryDirectory() as out_dir:
        for mode in ("eager", "compiled"):
            use_compile(mode == "compiled")
            joint = step_timer(make_trainer((8, 6, 4, 2), out_dir, batch_size=batch_size), images, labels, indices)
            fp32 = step_timer(make_trainer(None, out_dir, batch_size=batch_size), images, labels, indices)
            warm_start = time.perf_counter()
            for _ in range(2):
                joint(), fp32()
            warm_up_s = time.perf_counter() - warm_start
            joint_times, fp32_times = [], []
            for _ in range(rounds):
                joint_times.append(joint())
                fp32_times.append(fp32())
            ratios = [j / (4 * f) for j, f in zip(joint_times, fp32_times)]
            results[mode] = {"ratio": round(statistics.median(ratios), 3),
                             "joint_step_ms": round(1e3 * statistics.median(joint_times), 1),
                             "fp32_step_ms": round(1e3 * statistics.median(fp32_times), 1),
                             "warm_up_s": round(warm_up_s, 1)}
    use_compile(False)
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = measure(args.rounds)
    best = min(results.values(), key=lambda r: r["ratio"])
    summary = {"joint_step_vs_4x_fp32": {"value": best["ratio"], "unit": "× (joint step ÷ 4 FP32 steps)",
                                         "goal": "≤ 1.15", "met": best["ratio"] <= 1.15, "details": results}}
    print(f"hardware: {hardware_summary()}; torch {torch.__version__}; {args.threads} thread(s); "
          f"load average {list(round(x, 2) for x in __import__('os').getloadavg())}")
    for mode, row in results.items():
        print(f"{mode:>9}: joint {row['joint_step_ms']:8.1f} ms, FP32 {row['fp32_step_ms']:7.1f} ms, "
              f"ratio {row['ratio']:.3f} (goal ≤ 1.15)")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
