"""Weight scales under Adam (issue 10 item 10): the paper's plain Adam on s vs the opt-in Adam on log s.

Two runs of the reproduction suite's main row (``cifar10-resnet20`` {8,6,4,2}, Double Rounding + ALRS, Alg. A.2)
at the suite budget (one epoch over the fixed 10,000-image subset, batch 128, from the shipped FP32 ResNet-20,
evaluated on the full 10,000-image test set), one torch thread, no data-loader workers. Writes
``docs/results/weight-scales/<variant>.json``. Usage::

    OMP_NUM_THREADS=1 python scripts/measure_weight_scales.py [adam] [log]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from labkit.reproduction import SUITE_BUDGET
from labkit.train.run import source_version
from labkit.train.scale_health import measure_weight_scales

OUT = Path(__file__).resolve().parents[1] / "docs" / "results" / "weight-scales"
VARIANTS = {"adam": {"weight_scale_update": "adam"}, "log": {"weight_scale_update": "log", "weight_scale_log_lr": 20.0}}


def main(names) -> None:
    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)
    for name in names or list(VARIANTS):
        overrides = {**SUITE_BUDGET, "checkpoint_every": 0, "workers": 0, **VARIANTS[name]}
        result = measure_weight_scales("cifar10-resnet20", overrides, "laptop")
        result["source"] = source_version()
        (OUT / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
        print(name, json.dumps(result["weight_scales"]), json.dumps(result["accuracy"]), result["wall_time_s"], "s",
              flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
