"""Paired A/B/C of ReLU absorption and pairing (:mod:`labkit.relu_absorption`) in a joint {8,6,4,2} training step.

The same ResNet-20 (batch 128, random 32×32 images, the default fake-quant path) quantized three times and trained
side by side in one process:

- ``default``: ``quantize_model``'s default, ``absorb_relu=True``: the 9 block-internal ReLUs run inside the next
  activation quantizer, and the 9 ReLUs that a quantized layer reads among others (after each residual sum and the
  stem's) are :class:`labkit.nn.ReLUWithQuantizedCopy` modules (ReLU and quantizer in one loop each way);
- ``absorbed_only``: the same, with those 9 turned back into plain ``nn.ReLU`` modules (the default before pairing);
- ``kept``: ``absorb_relu=False``, every ReLU its own operation.

Every round times one joint step of each, in an order that rotates (ABC, BCA, CAB, then the same reversed), so each arm
runs in each position equally often; each per-round ratio is a sample. A result is the mean ratio with its 95 % t-interval over rounds
(``labkit.statistics.paired_difference`` against 1): "real" only where the interval excludes 1.

    python benchmarks/relu_absorption_ab.py [--rounds 40] [--threads 1 2] [--json benchmarks/relu_absorption_results.json]

~3.9 s a round at 1 thread and ~2.5 s at 2 on the lab's 2-core AMD EPYC (plus ~40 s of warm-up).
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
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))  # speed.py (which puts this checkout's labkit first)

from speed import BITS, _train_step  # noqa: E402

import labkit  # noqa: E402
from labkit.config import hardware_summary  # noqa: E402
from labkit.models import build_model  # noqa: E402
from labkit.nn import ReLUWithQuantizedCopy  # noqa: E402
from labkit.quant import lsq  # noqa: E402
from labkit.statistics import paired_difference, verdict  # noqa: E402


RATIOS = (("default", "kept"), ("absorbed_only", "kept"), ("default", "absorbed_only"))


def without_pairing(model: nn.Module) -> nn.Module:
    """``model`` with every :class:`~labkit.nn.ReLUWithQuantizedCopy` turned back into a plain ``nn.ReLU``."""
    for name, module in list(model.named_modules()):
        if isinstance(module, ReLUWithQuantizedCopy):
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, nn.ReLU())
    return model


def measure(threads: int, rounds: int, batch: int = 128) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    fp32 = build_model("resnet20")
    models = {"default": labkit.quantize_model(fp32, bits=BITS),
              "absorbed_only": without_pairing(labkit.quantize_model(fp32, bits=BITS)),
              "kept": labkit.quantize_model(fp32, bits=BITS, absorb_relu=False)}
    for name in ("default", "absorbed_only"):
        models[name].load_state_dict(models["kept"].state_dict())
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(batch, 3, 32, 32, generator=gen)
    labels = torch.randint(0, 10, (batch,), generator=gen)
    steps = {name: _train_step(model.train(), torch.optim.Adam(model.parameters(), 1e-4), images, labels, BITS, False)
             for name, model in models.items()}
    for _ in range(2):  # warm-up: compilation, first-use scale init, allocator
        for step in steps.values():
            step()
    seconds = {name: [] for name in models}
    for index in range(rounds):
        names = list(models)  # every arm in every position equally often: rotate, and reverse every other cycle
        order = names[index % len(names):] + names[:index % len(names)]
        if (index // len(names)) % 2:
            order = order[::-1]
        for name in order:
            start = time.perf_counter()
            steps[name]()
            seconds[name].append(time.perf_counter() - start)
    ratios = {}
    for top, bottom in RATIOS:
        difference = paired_difference([a / b for a, b in zip(seconds[top], seconds[bottom])], [1.0] * rounds)
        ratios[f"{top}/{bottom}"] = {"mean": round(1 + difference.mean, 4), "low": round(1 + difference.low, 4),
                                     "high": round(1 + difference.high, 4), "verdict": verdict(difference)}
    return {"threads": threads, "rounds": rounds, "batch": batch, "fake_quant_path": lsq.training_path("cpu"),
            "ratios": ratios,
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
        for name, ratio in result["ratios"].items():
            print(f"{threads} thread(s): joint step {name.replace('/', ' ÷ ')} = {ratio['mean']:.3f} "
                  f"[{ratio['low']:.3f}, {ratio['high']:.3f}] (95 %, {args.rounds} rounds): {ratio['verdict']}",
                  flush=True)
        print(f"{threads} thread(s): median steps {result['median_step_s']} s", flush=True)
    meta["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    if args.json:
        args.json.write_text(json.dumps({"_meta": meta, "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
