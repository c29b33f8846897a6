"""Paired A/B of ReLU absorption (:mod:`labkit.relu_absorption`) in a joint {8,6,4,2} training step.

The same ResNet-20 (batch 128, random 32×32 images, the default fake-quant path) quantized twice, with
``absorb_relu=True`` (the default: the 9 block-internal ReLUs run inside the next activation quantizer) and
``absorb_relu=False`` (every ReLU its own operation), trained side by side in one process: every round times one joint
step of each, in alternating order, and the per-round ratio absorbed ÷ kept is the sample. The result is the mean ratio
with its 95 % t-interval over rounds (``labkit.statistics.paired_difference`` against 1): "real" only where the interval
excludes 1.

    python benchmarks/relu_absorption_ab.py [--rounds 40] [--threads 1 2] [--json benchmarks/relu_absorption_results.json]

~2.6 s a round at 1 thread and ~1.8 s at 2 on the lab's 2-core AMD EPYC (plus ~30 s of warm-up).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # speed.py (which puts this checkout's labkit first)

from speed import BITS, _train_step  # noqa: E402

import labkit  # noqa: E402
from labkit.config import hardware_summary  # noqa: E402
from labkit.models import build_model  # noqa: E402
from labkit.quant import lsq  # noqa: E402
from labkit.statistics import paired_difference, verdict  # noqa: E402


def measure(threads: int, rounds: int, batch: int = 128) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    fp32 = build_model("resnet20")
    models = {"absorbed": labkit.quantize_model(fp32, bits=BITS),
              "kept": labkit.quantize_model(fp32, bits=BITS, absorb_relu=False)}
    models["absorbed"].load_state_dict(models["kept"].state_dict())
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(batch, 3, 32, 32, generator=gen)
    labels = torch.randint(0, 10, (batch,), generator=gen)
    steps = {name: _train_step(model.train(), torch.optim.Adam(model.parameters(), 1e-4), images, labels, BITS, False)
             for name, model in models.items()}
    for _ in range(2):  # warm-up: compilation, first-use scale init, allocator
        for step in steps.values():
            step()
    ratios, seconds = [], {name: [] for name in models}
    for index in range(rounds):
        order = ("absorbed", "kept") if index % 2 == 0 else ("kept", "absorbed")
        for name in order:
            start = time.perf_counter()
            steps[name]()
            seconds[name].append(time.perf_counter() - start)
        ratios.append(seconds["absorbed"][-1] / seconds["kept"][-1])
    difference = paired_difference(ratios, [1.0] * rounds)
    return {"threads": threads, "rounds": rounds, "batch": batch, "fake_quant_path": lsq.training_path("cpu"),
            "ratio_mean": round(1 + difference.mean, 4), "ratio_low": round(1 + difference.low, 4),
            "ratio_high": round(1 + difference.high, 4), "verdict": verdict(difference),
            "median_step_s": {name: round(sorted(values)[len(values) // 2], 4) for name, values in seconds.items()}}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    meta = {"when": datetime.datetime.now().isoformat(timespec="seconds"), "hardware": hardware_summary(),
            "cores": os.cpu_count(), "torch": torch.__version__,
            "load_average_start": [round(v, 2) for v in os.getloadavg()]}
    results = []
    for threads in args.threads:
        result = measure(threads, args.rounds)
        results.append(result)
        print(f"{threads} thread(s): joint step absorbed ÷ kept = {result['ratio_mean']:.3f} "
              f"[{result['ratio_low']:.3f}, {result['ratio_high']:.3f}] (95 %, {args.rounds} rounds): "
              f"{result['verdict']}; median steps {result['median_step_s']} s", flush=True)
    meta["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    if args.json:
        args.json.write_text(json.dumps({"_meta": meta, "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
