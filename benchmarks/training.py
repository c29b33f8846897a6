"""Cost of one-shot joint training through the lab's own engine: one {8,6,4,2} ``JointTrainer.train_step`` ÷
(4 × one FP32 ``train_step``), ResNet-20, batch 128, at 1 and 2 threads — ``run.py``'s ``speed_joint_trainer``.

``make_trainer`` builds both trainers as a training run does (Alg. A.2 with ALRS for the joint model, plain Adam for
FP32); ``run.py``'s ``scaling`` and ``profile`` groups use it too. The measurement itself is
``speed.joint_trainer_section`` (the suite's one timing loop, ``foundation.interleaved_times``).

    python benchmarks/training.py [--rounds N] [--json PATH]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch.utils.data import Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import labkit  # noqa: E402
from labkit.config import hardware_summary  # noqa: E402
from labkit.models import build_model  # noqa: E402
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
                 num_classes: int = 10, **config) -> JointTrainer:
    """A ``JointTrainer`` for ``arch`` (FP32 when ``bits`` is None) on random images, as a training run builds it;
    ``config`` goes to ``TrainConfig`` (e.g. ``amp_bf16=True``)."""
    torch.manual_seed(0)
    model = build_model(arch, num_classes=num_classes)
    if bits is not None:
        model = labkit.quantize_model(model, bits, example_input=torch.randn(2, 3, image_size, image_size))
    settings = TrainConfig(bits=bits, epochs=1, batch_size=batch_size, workers=0, **config)
    data = RandomImages(2 * batch_size, image_size, num_classes)
    return JointTrainer(model, settings, data, {}, out_dir, num_classes, show_progress=False)


def main(argv=None) -> int:
    import speed

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    rows = speed.joint_trainer_section(args.quick, rounds=args.rounds)
    print(f"hardware: {hardware_summary()}; torch {torch.__version__}")
    for name, entry in rows.items():
        print(f"{name}: {entry['value']:.3f} (goal {entry['goal']}, met {entry['met']}); {entry['summary']}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
