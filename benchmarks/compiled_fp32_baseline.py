"""The joint step against a careful FP32 user's step: FP32 ResNet-20 under ``torch.compile`` (issue 11, fairness).

``speed_joint`` divides the joint {8,6,4,2} step by four steps of the FP32 model as PyTorch runs it by default
(eager, every ReLU its own operation). An FP32 user can also ``torch.compile`` the model, which fuses batch norm,
ReLU and the residual adds; the lab's quantized model keeps its convolutions and batch norms eager. This script
times, side by side in one process (rounds interleaved, medians of per-round ratios), the eager FP32 step, the
compiled FP32 step and the lab's default joint step, and reports joint ÷ 4 eager FP32 and joint ÷ 4 compiled FP32.

    python benchmarks/compiled_fp32_baseline.py [--threads 1 2] [--rounds 9]

~20 s of compilation per thread count, then ~2 s a round at 1 thread on the lab's 2-core AMD EPYC.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import labkit  # noqa: E402
from labkit.models import build_model  # noqa: E402

BITS = (8, 6, 4, 2)


def _step(model, switched, parameters, bit_set, images, labels):
    optimizer = torch.optim.Adam(parameters, 1e-4)

    def step():
        optimizer.zero_grad(set_to_none=True)
        for bits in bit_set or (None,):
            if bits is not None:
                labkit.set_bits(switched, bits)
            F.cross_entropy(model(images), labels).backward()
        optimizer.step()
    return step


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
    steps = {"fp32_eager": _step(eager, None, eager.parameters(), None, images, labels),
             "fp32_compiled": _step(torch.compile(twin), None, twin.parameters(), None, images, labels),
             "joint": _step(joint, joint, joint.parameters(), BITS, images, labels)}
    start = time.perf_counter()
    steps["fp32_compiled"]()
    compile_s = time.perf_counter() - start
    for _ in range(2):
        for step in steps.values():
            step()
    seconds = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            seconds[name].append(time.perf_counter() - start)

    def ratio(a, b, divide=1.0):
        return round(statistics.median(x / y for x, y in zip(seconds[a], seconds[b])) / divide, 3)
    return {"threads": threads, "rounds": rounds, "compile_first_step_s": round(compile_s, 1),
            "median_step_ms": {name: round(statistics.median(v) * 1e3) for name, v in seconds.items()},
            "fp32_compiled_vs_eager": ratio("fp32_compiled", "fp32_eager"),
            "joint_vs_4x_eager_fp32": ratio("joint", "fp32_eager", len(BITS)),
            "joint_vs_4x_compiled_fp32": ratio("joint", "fp32_compiled", len(BITS))}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args(argv)
    for threads in args.threads:
        print(measure(threads, args.rounds), flush=True)


if __name__ == "__main__":
    main()
