"""Shipped checkpoints: provenance records, and every file in data/checkpoints loads into its architecture."""
import json

import pytest
import torch

from labkit.checkpoints import SHIPPED_DIR, provenance, ship_run, shipped
from labkit.errors import CheckpointError
from labkit.models import build_model


def fake_run(folder, argv, accuracy):
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"config": {"recipe": "cifar10-resnet20-fp32"}, "profile": "laptop"}))
    (folder / "metrics.json").write_text(json.dumps({
        "recipe": "cifar10-resnet20-fp32", "profile": "laptop", "budget": {"epochs": 2}, "hardware": "CPU: test",
        "accuracy": accuracy}))
    (folder / "run.json").write_text(json.dumps({"sessions": [
        {"wall_time_s": 10.0, "source": "abc1234", "argv": argv},
        {"wall_time_s": 5.5, "source": "abc1234", "argv": argv + ["--resume"]}]}))
    torch.save(build_model("resnet20").state_dict(), folder / "model_fp32.pt")
    return folder


def test_provenance_and_ship_round_trip(tmp_path):
    argv = ["/venv/bin/labkit", "train", "--recipe", "cifar10-resnet20-fp32", "--out", "runs/a b", "epochs=2"]
    run = fake_run(tmp_path / "run", argv, {"32": 80.5})
    record = provenance(run)
    assert record["command"] == "LABKIT_PROFILE=laptop labkit train --recipe cifar10-resnet20-fp32 --out 'runs/a b' epochs=2"
    assert record["wall_time_s"] == 15.5 and record["sessions"] == 2 and record["source"] == ["abc1234"]
    target = ship_run(run, "demo", destination=tmp_path / "shipped", notes="test")
    path, meta = shipped("demo", destination=tmp_path / "shipped")
    assert path == target and path.suffix == ".pt" and meta["accuracy"] == {"32": 80.5} and meta["notes"] == "test"
    assert meta["bytes"] == path.stat().st_size


def test_unfinished_run_and_unknown_name_are_clear_errors(tmp_path):
    (tmp_path / "half").mkdir()
    with pytest.raises(CheckpointError, match="not a finished labkit run"):
        provenance(tmp_path / "half")
    with pytest.raises(CheckpointError, match="no shipped checkpoint 'nope'"):
        shipped("nope", destination=tmp_path)


@pytest.mark.parametrize("meta", sorted(SHIPPED_DIR.glob("*.json")), ids=lambda p: p.stem)
def test_every_shipped_checkpoint_loads_into_its_architecture(meta):
    import labkit
    from labkit.models.imagenet import load_state_dict_file

    path, record = shipped(meta.stem)
    config = record["config"]
    if path.suffix == ".safetensors":
        model = labkit.load_int(path)
        assert sorted(labkit.trained_bits(model)) == sorted(config["bits"])
    else:
        kwargs = dict(config.get("model_kwargs") or {})
        model = load_state_dict_file(build_model(config["model"], **kwargs), path)
    assert record["accuracy"] and all(0 <= v <= 100 for v in record["accuracy"].values())
    assert max(record["accuracy"].values()) > 50  # the top precision works; a collapsed 2-bit (0 %) is a result
    assert record["command"].startswith("LABKIT_PROFILE=") and record["hardware"] and record["wall_time_s"] > 0
    assert model is not None


def test_init_from_shipped_name_finds_the_file_or_lists_the_shipped_fp32_models():
    """``init_from=shipped:<name>`` (the suite's start, issue 12) is that file; a wrong name is one clear error."""
    from labkit.errors import LabkitError
    from labkit.train import TrainConfig
    from labkit.train.run import SHIPPED_CHECKPOINTS, resolve_init

    found = resolve_init(TrainConfig(init_from="shipped:cifar10-resnet20-fp32-laptop"))
    assert found == SHIPPED_CHECKPOINTS / "cifar10-resnet20-fp32-laptop.pt" and found.is_file()
    with pytest.raises(LabkitError, match="no shipped checkpoint nope.pt.*cifar10-resnet20-fp32-laptop"):
        resolve_init(TrainConfig(init_from="shipped:nope"))


def test_the_suite_starts_from_the_fp32_model_its_drops_are_measured_against():
    from labkit.reproduction import SUITE_BUDGET, SUITE_FP32, _fp32_accuracy

    assert SUITE_BUDGET["init_from"] == f"shipped:{SUITE_FP32}"
    assert _fp32_accuracy() == shipped(SUITE_FP32)[1]["accuracy"]["32"]


def test_a_run_records_the_sha256_of_the_fp32_start_it_resolved():
    import hashlib

    from labkit.train import TrainConfig
    from labkit.train.run import SHIPPED_CHECKPOINTS, init_record

    record = init_record(TrainConfig(init_from="shipped:cifar10-resnet20-fp32-laptop"))
    path = SHIPPED_CHECKPOINTS / "cifar10-resnet20-fp32-laptop.pt"
    assert record == {"path": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    assert init_record(TrainConfig(init_from=None)) is None
