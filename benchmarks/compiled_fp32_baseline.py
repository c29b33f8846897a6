"""The joint step against a careful FP32 user's step: FP32 ResNet-20 under ``torch.compile`` (issue 11, fairness).

``speed_joint`` divides the joint {8,6,4,2} step by four steps of the FP32 model as PyTorch runs it by default
(eager, every ReLU its own operation). An FP32 user can also ``torch.compile`` the model, which fuses batch norm,
ReLU and the residual adds; the lab's quantized model keeps its convolutions and batch norms eager. This script
times, side by side in one process (rounds interleaved), the eager FP32 step, the compiled FP32 step and the lab's
default joint step, and reports per-round ratios (median, mean and its 95 % t-interval over rounds): compiled ÷
eager FP32, joint ÷ 4 eager FP32 and joint ÷ 4 compiled FP32.

    python benchmarks/compiled_fp32_baseline.py [--threads 1 2] [--rounds 15]

~20 s of compilation per thread count, then ~2 s a round at 1 thread on the lab's 2-core AMD EPYC.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # speed.py (which puts this checkout's labkit first)

from speed import BITS, _train_step  # noqa: E402

import labkit  # noqa: E402
from labkit.models import build_model  # noqa: E402
from labkit.statistics import paired_difference  # noqa: E402


def _ratio(seconds: dict, a: str, b: str, divide: float = 1.0) -> dict:
    """Per-round ``a ÷ (divide · b)``: its median and the 95 % t-interval of its mean over rounds."""
    ratios = [x / (divide * y) for x, y in zip(seconds[a], seconds[b])]
    difference = paired_difference(ratios, [1.0] * len(ratios))
    return {"median": round(statistics.median(ratios), 3), "mean": round(1 + difference.mean, 3),
            "low": round(1 + difference.low, 3), "high": round(1 + difference.high, 3)}


def measure(threads: int, rounds: int, batch: int = 128) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    eager = build_model("resnet20").train()
    twin = build_model("resnet20").train()
    twin.load_state_dict(eager.state_dict())
    joint = labkit.quantize_model(eager, bits=BITS).train()
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(batch, 3, 32, 32, generator=gen)
    labels = torch.randint(0, 10, (batch,), generator=gen)

    def step(model, parameters, bit_set):
        return _train_step(model, torch.optim.Adam(parameters, 1e-4), images, labels, bit_set, False)
    steps = {"fp32_eager": step(eager, eager.parameters(), None),
             "fp32_compiled": step(torch.compile(twin), twin.parameters(), None),
             "joint": step(joint, joint.parameters(), BITS)}
    start = time.perf_counter()
    steps["fp32_compiled"]()
    compile_s = time.perf_counter() - start
    for _ in range(2):
        for run in steps.values():
            run()
    seconds = {name: [] for name in steps}
    for index in range(rounds):
        for name in (list(steps) if index % 2 == 0 else list(steps)[::-1]):  # A, B, C, then C, B, A, ...
            start = time.perf_counter()
            steps[name]()
            seconds[name].append(time.perf_counter() - start)
    return {"threads": threads, "rounds": rounds, "compile_first_step_s": round(compile_s, 1),
            "median_step_ms": {name: round(statistics.median(v) * 1e3) for name, v in seconds.items()},
            "fp32_compiled_vs_eager": _ratio(seconds, "fp32_compiled", "fp32_eager"),
            "joint_vs_4x_eager_fp32": _ratio(seconds, "joint", "fp32_eager", len(BITS)),
            "joint_vs_4x_compiled_fp32": _ratio(seconds, "joint", "fp32_compiled", len(BITS))}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args(argv)
    for threads in args.threads:
        print(measure(threads, args.rounds), flush=True)


if __name__ == "__main__":
    main()
