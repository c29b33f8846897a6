"""The CI runs of the paper's CIFAR-10 recipes in the smoke profile, end to end through the command line:
joint {8,6,4,2} training → HASB SuperNet (Hessian traces, roulette sampling, Transitional BN) → exact search
→ evaluation of every SubNet."""
import csv
import json
import os
import subprocess
import sys

import pytest

from labkit.config import data_root

CHANCE = 10.0  # CIFAR-10 has 10 classes

pytestmark = pytest.mark.skipif(not (data_root() / "cifar10").is_dir(), reason="needs CIFAR-10 under LABKIT_DATA")


def labkit(*args, timeout=900):
    env = dict(os.environ, LABKIT_PROFILE="smoke", LABKIT_DATA=str(data_root()))
    done = subprocess.run([sys.executable, "-m", "labkit", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def joint_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke") / "x"
    labkit("train", "--recipe", "cifar10-resnet20", "--out", str(out), "--quiet")
    return out


def test_smoke_joint_training_beats_chance_at_every_bit(joint_run):
    metrics = json.loads((joint_run / "metrics.json").read_text())
    assert metrics["profile"] == "smoke" and metrics["recipe"] == "cifar10-resnet20"
    assert set(metrics["accuracy"]) == {"8", "6", "4", "2"}
    evaluated = metrics["budget"]["eval_images"]["test"]
    # 2 points above chance is > 2 standard errors of a chance-level classifier on 1000 images (0.95 points)
    for bits, top1 in metrics["accuracy"].items():
        assert top1 > CHANCE + 2.0, (bits, top1, evaluated)
    assert (joint_run / "model_int.safetensors").is_file() and (joint_run / "log.csv").is_file()
    print("smoke cifar10-resnet20 top-1:", metrics["accuracy"], "on", evaluated, "test images;", metrics["hardware"])


def test_smoke_hasb_chain_traces_supernet_search_evaluation(joint_run, tmp_path):
    supernet = tmp_path / "hasb"
    labkit("train", "--recipe", "cifar10-resnet20-hasb", "--out", str(supernet), "--quiet",
           f"supernet_from={joint_run}", "train_subset=512", "eval_subset=300")
    record = json.loads((supernet / "supernet.json").read_text())
    traces, probabilities = record["average_traces"], record["probabilities"]
    assert len(traces) == 18 and all(value >= 0 for value in traces.values())
    sensitive = {name for name, value in traces.items() if value >= sum(traces.values()) / len(traces)}
    for name, p in probabilities.items():  # Alg. 1: sensitive layers ∝ bits, the others uniform
        expected = {"8": 0.4, "6": 0.3, "4": 0.2, "2": 0.1} if name in sensitive else dict.fromkeys("8642", 0.25)
        assert p == pytest.approx(expected), name
    metrics = json.loads((supernet / "metrics.json").read_text())
    assert all(top1 > CHANCE for top1 in metrics["accuracy"].values()), metrics["accuracy"]
    done = labkit("search", str(supernet), "--avg-bits", "3", "--subset", "200", "--quiet")
    assert "SubNets evaluated" in done.stdout
    with (supernet / "search.csv").open() as stream:
        rows = list(csv.DictReader(stream))
    assert rows and rows[0]["kind"] == "optimum"
    for row in rows:
        allocation = json.loads(row["allocation"])
        assert len(allocation) == 18 and sum(allocation.values()) / 18 <= 3.0 + 1e-9
        assert 0.0 <= float(row["accuracy"]) <= 100.0
    assert (supernet / "pareto.html").stat().st_size > 1000
