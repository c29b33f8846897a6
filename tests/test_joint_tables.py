"""labkit.joint_tables: notebook 03's Markdown tables carry exactly the numbers they are given."""
from pathlib import Path

from labkit.joint_tables import (accuracy_comparison_table, memory_sentence, memory_table, recipe_table,
                                 shipped_model_summary)
from labkit.train.recipes import recipe_config

MIB = 1024 * 1024


def cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def test_memory_table_in_mib_and_multiples_of_fp32():
    memory = {"per_bits": {8: 3 * MIB, 2: 3 * MIB}, "per_precision_backward": 3 * MIB, "summed_backward": 6 * MIB,
              "parameters": MIB // 4, "adam_state": MIB // 2, "batch": 16}
    lines = memory_table(memory, 2 * MIB).splitlines()
    assert cells(lines[2]) == ["FP32 forward", "2.0", "1.00×"]
    assert cells(lines[3]) == ["quantized forward at 8 bits", "3.0", "1.50×"]
    assert cells(lines[-1]) == ["one summed backward over 2 passes", "6.0", "3.00×"]
    assert all(len(cells(line)) == 3 for line in lines)
    assert "batch of 16 test images (smoke profile)" in memory_sentence(memory, "smoke")
    assert "0.25 MiB" in memory_sentence(memory, "smoke") and "0.50 MiB" in memory_sentence(memory, "smoke")


def test_recipe_table_shows_the_configs_values():
    config = recipe_config("cifar10-resnet20", profile="paper")
    table = recipe_table(config)
    rows = {cells(line)[0]: cells(line)[1] for line in table.splitlines()[2:]}
    assert rows["`bits`"] == "{8,6,4,2}" and rows["`lr`"] == "`0.0005`" and rows["`epochs`"] == "`200`"
    assert rows["`algorithm`"] == "`a2`"


def test_shipped_summary_and_accuracy_table(tmp_path):
    joint, fp32 = tmp_path / "joint.safetensors", tmp_path / "fp32.pt"
    joint.write_bytes(b"x" * 2048)
    fp32.write_bytes(b"x" * 8192)
    record = {"command": "labkit train --recipe r", "profile": "laptop", "hardware": "CPU: 2 cores",
              "wall_time_s": 1200.0,
              "budget": {"epochs": 3, "train_images": 20000, "batch_size": 128, "steps": 468, "passes_per_step": 4}}
    text = shipped_model_summary(joint, record, fp32)
    assert "2 KiB" in text and "8 KiB" in text and "(0.25×)" in text and "20,000 training images" in text
    assert "468 steps, 4 passes per step" in text and "in 20 min" in text and "`labkit train --recipe r`" in text
    table = accuracy_comparison_table({"8": 83.44, "2": 75.02}, {8: 83.1, 2: 74.0}, 2000, 10000).splitlines()
    assert cells(table[0])[1:] == ["8-bit", "2-bit"]
    assert cells(table[2]) == ["recorded at training time (10,000 test images)", "83.44", "75.02"]
    assert cells(table[3]) == ["measured now (2,000 test images)", "83.10", "74.00"]
