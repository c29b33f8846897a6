"""Deployment facts (labkit.deployment, benchmarks/deployment.py): sizes counted by hand, BitOPs from MACs, timing rows.

References: the weight counts of the model's own layers (bytes = count × bits / 8, FP32 layers × 4), the
BitOPs definition of METHOD.md §6 on hand-counted MACs of the first conv, and the schema of the JSON written.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

import labkit
from labkit.deployment import FP32_LABEL, SWITCHABLE_LABEL, export_precisions, facts_table, latency_facts, size_facts

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = ROOT / "data" / "checkpoints" / "cifar10-resnet20.safetensors"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = labkit.load_int(CHECKPOINT)
    files = export_precisions(model, tmp_path_factory.mktemp("deployment"), fp32_model=_fp32_like(model))
    return model, files


def _fp32_like(model):
    from labkit.models import build_model

    torch.manual_seed(0)
    return build_model("resnet20").eval()


def test_sizes_follow_the_bits(exported):
    model, files = exported
    assert list(files) == [FP32_LABEL, "8-bit", "6-bit", "4-bit", "2-bit", SWITCHABLE_LABEL]
    rows = {row["label"]: row for row in size_facts(model, files)}
    quantized = sum(layer.weight.numel() for layer in labkit.quantized_layers(model).values())
    float_layers = model.conv1.weight.numel() + model.fc.weight.numel()  # kept FP32 (METHOD.md §4)
    assert rows[FP32_LABEL]["weight_bytes"] == 4 * (quantized + float_layers)
    for bits, stored in ((8, 8), (6, 8), (4, 4), (2, 2)):  # ONNX has no 6-bit type: int8
        assert rows[f"{bits}-bit"]["weight_bytes"] == quantized * stored // 8 + 4 * float_layers
    assert rows[SWITCHABLE_LABEL]["weight_bytes"] == rows["8-bit"]["weight_bytes"]  # the INT8 codes, once
    assert rows["4-bit"]["weight_types"] == "float32/int4" and rows["2-bit"]["weight_types"] == "float32/int2"
    sizes = [rows[label]["file_bytes"] for label in (FP32_LABEL, "8-bit", "4-bit", "2-bit")]
    assert sizes == sorted(sizes, reverse=True)
    # BitOPs (METHOD.md §6): the FP32 first conv, 3 -> 16 channels, 3x3, 32x32 output: MACs by hand
    first_conv = 16 * 32 * 32 * 3 * 9
    assert rows["8-bit"]["gbitops"] > rows["4-bit"]["gbitops"] > rows["2-bit"]["gbitops"] > first_conv * 32 * 32 / 1e9
    assert rows[SWITCHABLE_LABEL]["gbitops"] == {b: rows[f"{b}-bit"]["gbitops"] for b in (8, 6, 4, 2)}
    eight_minus_four = (rows["8-bit"]["gbitops"] - rows["4-bit"]["gbitops"]) * 1e9
    macs = eight_minus_four / (64 - 16)  # the quantized layers' MACs, from two precisions
    three_by_three = 9
    by_hand = (6 * 16 * 16 * 32 * 32 + 32 * 16 * 16 * 16 + 5 * 32 * 32 * 16 * 16 + 64 * 32 * 8 * 8
               + 5 * 64 * 64 * 8 * 8) * three_by_three  # stages 1-3 (stride 2 at the start of 2 and 3)
    assert macs == pytest.approx(by_hand, rel=1e-12)
    assert rows[FP32_LABEL]["gbitops"] == pytest.approx((macs + first_conv + 640) * 1024 / 1e9, rel=1e-9)


def test_latency_rows_are_side_by_side(exported):
    model, files = exported
    small = {label: files[label] for label in ("8-bit", "2-bit", SWITCHABLE_LABEL)}
    latency = latency_facts(small, batch_sizes=(1, 4), rounds=2, min_seconds=0.0, switchable_bits=(8, 2))
    assert latency["reference"] == "8-bit"
    assert set(latency["ms"]) == {"8-bit", "2-bit", "switchable @ 8-bit", "switchable @ 2-bit"}
    for label, per_batch in latency["ms"].items():
        assert set(per_batch) == {1, 4} and all(ms > 0 for ms in per_batch.values())
    assert latency["ratio"]["8-bit"] == {1: 1.0, 4: 1.0}
    table = facts_table(size_facts(model, small), latency)
    lines = table.splitlines()
    assert lines[0].startswith("| file | file size (KiB)") and "batch 4 ÷ 8-bit" in lines[0]
    assert len(lines) == 2 + 2 + 4  # header, rule, two files, the switchable file at four bit-widths
    assert lines[-1].startswith("| switchable @ 2-bit (one file)")


def test_benchmark_script_writes_its_files(tmp_path):
    spec = importlib.util.spec_from_file_location("deployment_benchmark", ROOT / "benchmarks" / "deployment.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "facts.json"
    assert script.main(["--quick", "--rounds", "1", "--batches", "1", "--out", str(out)]) == 0
    written = json.loads(out.read_text())
    assert {"_meta", "sizes", "latency"} <= set(written)
    assert written["_meta"]["onnxruntime"] and written["_meta"]["rounds"] == 1
    assert [row["label"] for row in written["sizes"]] == [FP32_LABEL, "8-bit", "6-bit", "4-bit", "2-bit",
                                                          SWITCHABLE_LABEL]
    markdown = out.with_suffix(".md").read_text()
    assert "| 2-bit |" in markdown and "dequantizing" in markdown


def test_notebook_tables_are_markdown(exported):
    from labkit.deployment import check_table, cost_table, export_and_check, post_training_table, storage_table
    from labkit.hasb.cost import layer_costs

    model, files = exported
    images = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    rows = export_and_check(model, Path(files["8-bit"]).parent / "checked", {"4-bit": 4}, images)
    table = check_table(rows).splitlines()
    assert table[0].startswith("| file | size (KiB)") and table[2].startswith("| 4-bit |") and "18 × INT4" in table[2]
    assert rows[0]["summary"]["weight_types"] == {"int4": 18} and rows[0]["check"]["images"] == 8
    costs = layer_costs(model, (3, 32, 32))
    names = list(labkit.quantized_layers(model))
    cost = cost_table(costs, {"8-bit": {n: 8 for n in names}, "2-bit": {n: 2 for n in names}}).splitlines()
    assert len(cost) == 4 and cost[3].startswith("| 2-bit |")
    records = [{"label": "a", "accuracy": {8: 90.0, 2: 10.04}}, {"label": "b", "accuracy": {8: 80.0, 2: 20.0}}]
    assert post_training_table(records).splitlines()[2] == "| a | 90.0 | 10.0 |"
    fp32 = ROOT / "data" / "checkpoints" / "cifar10-resnet20-fp32.pt"
    storage = storage_table(CHECKPOINT, fp32).splitlines()
    assert storage[2].startswith("| weight codes (INT-h) |") and storage[-1].startswith("| FP32 checkpoint")
