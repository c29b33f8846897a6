"""The CI run of the paper's CIFAR-10 recipe: ``labkit train --recipe cifar10-resnet20`` in the smoke profile."""
import json
import os
import subprocess
import sys

import pytest

from labkit.config import data_root

CHANCE = 10.0  # CIFAR-10 has 10 classes


@pytest.mark.skipif(not (data_root() / "cifar10").is_dir(), reason="needs CIFAR-10 under LABKIT_DATA")
def test_smoke_joint_training_beats_chance_at_every_bit(tmp_path):
    out = tmp_path / "x"
    env = dict(os.environ, LABKIT_PROFILE="smoke", LABKIT_DATA=str(data_root()))
    done = subprocess.run([sys.executable, "-m", "labkit", "train", "--recipe", "cifar10-resnet20", "--out", str(out),
                           "--quiet"], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["profile"] == "smoke" and metrics["recipe"] == "cifar10-resnet20"
    assert set(metrics["accuracy"]) == {"8", "6", "4", "2"}
    evaluated = metrics["budget"]["eval_images"]["test"]
    # 2 points above chance is > 2 standard errors of a chance-level classifier on 1000 images (0.95 points)
    for bits, top1 in metrics["accuracy"].items():
        assert top1 > CHANCE + 2.0, (bits, top1, evaluated)
    assert (out / "model_int.safetensors").is_file() and (out / "log.csv").is_file()
    print("smoke cifar10-resnet20 top-1:", metrics["accuracy"], "on", evaluated, "test images;", metrics["hardware"])
