"""The benchmark suite's command keeps working: a cheap subset of ``benchmarks/run.py`` writes well-formed JSON.

Benchmarks are not tests (no time is asserted); this only stops the script from rotting: its command line,
the ``{name: {"value", "unit", "goal", "met"?, ...}}`` schema and the ``_meta`` block.
"""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "benchmarks" / "run.py"


def check_schema(results: dict) -> None:
    meta = results["_meta"]
    assert isinstance(meta["hardware"], str) and meta["hardware"].startswith("CPU:")
    assert isinstance(meta["threads"], int) and meta["threads"] >= 1
    assert isinstance(meta["seconds"], (int, float))
    for name, entry in results.items():
        if name.startswith("_"):
            continue
        assert {"value", "unit", "goal"} <= set(entry), name
        assert isinstance(entry["unit"], str) and isinstance(entry["goal"], str), name
        if "error" in entry:
            assert isinstance(entry["error"], str), name
        else:
            assert isinstance(entry["value"], (int, float)), name
        if "met" in entry:
            assert isinstance(entry["met"], bool), name


def test_quick_checkpoint_size_subset_writes_the_schema(tmp_path):
    out = tmp_path / "results.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(
        [sys.executable, str(RUN), "--quick", "--only", "checkpoint_size", "--skip-notebooks", "--out", str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads(out.read_text())
    check_schema(results)
    rows = [name for name in results if not name.startswith("_")]
    assert "checkpoint_size_ratio_resnet20" in rows and "checkpoint_size_ratio_resnet18" in rows
    assert all(results[name]["group"] == "checkpoint_size" and "error" not in results[name] for name in rows)
    assert 0.2 < results["checkpoint_size_ratio_resnet20"]["value"] < 0.4
    assert results["_meta"]["groups"] == ["checkpoint_size"]
    assert "checkpoint_size_ratio_resnet18" in completed.stdout  # the printed table


def test_unknown_group_is_refused(monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))  # run.py adds benchmarks/ to the path: undone afterwards
    before = {name: sys.modules.get(name) for name in ("foundation", "training", "speed", "loading", "switching")}
    try:
        spec = importlib.util.spec_from_file_location("benchmarks_run", RUN)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        with pytest.raises(SystemExit):
            module.parse_args(["--only", "no_such_group"])
        args = module.parse_args(["--only", "hessian,scaling", "--only", "notebooks", "--skip-notebooks"])
        assert args.groups == ["hessian", "scaling"]
        args = module.parse_args(["--only", "switchboard,speed_joint_trainer,speed_fakequant,speed_joint"])
        assert args.groups == ["speed_fakequant", "speed_joint", "speed_joint_trainer", "switchboard"]
    finally:
        for name, previous in before.items():
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous


def load_module(name: str, path: Path, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_switchboard_group_writes_goal_rows_and_drops_retired_groups(tmp_path):
    out = tmp_path / "results.json"
    kept = {"value": 0.26, "unit": "×", "goal": "≤ 0.27", "met": True, "group": "checkpoint_size", "mode": "full",
            "measured": "2026-01-01T00:00:00"}
    retired = {**kept, "group": "joint_step"}  # a group run.py no longer has
    out.write_text(json.dumps({"_meta": {"command": "earlier"}, "checkpoint_size_ratio_resnet20": kept,
                               "joint_step_vs_4x_fp32_eager": retired}))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    completed = subprocess.run([sys.executable, str(RUN), "--quick", "--only", "switchboard", "--out", str(out)],
                               cwd=tmp_path, env=env, capture_output=True, text=True, timeout=170)
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads(out.read_text())
    check_schema(results)
    assert results["_meta"]["groups"] == ["switchboard"] and results["_meta"]["previous_meta"]["command"] == "earlier"
    assert results["checkpoint_size_ratio_resnet20"] == kept and "joint_step_vs_4x_fp32_eager" not in results
    new = {name: entry for name, entry in results.items()
           if not name.startswith("_") and name != "checkpoint_size_ratio_resnet20"}
    assert set(new) == {"switchboard_uniform_move_ms", "switchboard_per_layer_move_extra_ms"}
    for name, entry in new.items():
        assert "error" not in entry, entry.get("error")
        assert entry["goal"].startswith("≤ 150 ms") and isinstance(entry["met"], bool), name
        assert entry["met"] == (entry["value"] <= 150), name
        assert entry["label"] and entry["summary"] and entry["mode"] == "quick"
        assert entry["detail"]["threads"] == 1 and entry["detail"]["load_average_start"]


HAND_MADE = {
    "_meta": {"hardware": "CPU: test", "threads": 1, "load_start": [1.0], "load_end": [2.0]},
    "fakequant_weight_vs_torch_t1": {"value": 0.5134, "unit": "× time of torch's op", "goal": "≤ 0.8", "met": True,
                                     "label": "weight fake-quant, 1 thread", "summary": "compiled: 8b 0.30 | 2b 0.2",
                                     "group": "speed_fakequant", "mode": "full", "measured": "2026-12-01T12:08:09"},
    "joint_step_vs_4x_fp32_t2": {"value": 1.4, "unit": "× (joint ÷ 4 FP32)", "goal": "≤ 1.15", "met": False,
                                 "label": "joint step, 2 threads", "group": "speed_joint", "mode": "quick",
                                 "measured": "2026-12-01T12:09:00"},
    "fp32_step_images_per_s_fp32_t1": {"value": 342.9, "unit": "images/s", "goal": "report (no goal set)",
                                       "group": "speed_joint", "mode": "full", "measured": "2026-12-01T12:09:00"},
    "hessian": {"value": None, "unit": "", "goal": "report (no goal set)", "error": "Traceback\nValueError: bad",
                "group": "hessian", "mode": "full", "measured": "2026-12-01T12:10:00"},
}


def test_table_generator_writes_one_markdown_row_per_result(monkeypatch):
    write_table = load_module("write_table", ROOT / "benchmarks" / "write_table.py", monkeypatch)
    lines = write_table.table_rows(HAND_MADE)
    assert lines == [
        "| measurement | value | goal | met | measured | beside it (other paths, setup) |",
        "|---|---|---|---|---|---|",
        "| weight fake-quant, 1 thread | 0.513× | ≤ 0.8 | yes | 2026-12-01 12:08 | "
        "`fakequant_weight_vs_torch_t1`; compiled: 8b 0.30 \\| 2b 0.2 |",
        "| joint step, 2 threads | 1.4× | ≤ 1.15 | **no** | 2026-12-01 12:09 (quick) | `joint_step_vs_4x_fp32_t2` |",
        "| `fp32_step_images_per_s_fp32_t1` (images/s) | 343 img/s | report (no goal set) | report | "
        "2026-12-01 12:09 | `fp32_step_images_per_s_fp32_t1` |",
        "| `hessian` () | — | report (no goal set) | error | 2026-12-01 12:10 | `hessian`; error: ValueError: bad |",
    ]
    text = write_table.section(HAND_MADE, note="Measured beside two training jobs.")
    assert text.startswith("## Benchmarks\n") and "1 of the 2 rows with a goal meet it" in text
    assert "Measured beside two training jobs." in text and "\n".join(lines) in text


def test_table_generator_replaces_only_the_benchmarks_section(monkeypatch):
    write_table = load_module("write_table", ROOT / "benchmarks" / "write_table.py", monkeypatch)
    readme = "# labkit\n\n## Layout\nkeep me\n\n## Benchmarks\nold table\n| a |\n\n## Later\nkeep me too\n"
    new = write_table.replace_section(readme, "## Benchmarks\n\nnew\n\n")
    assert new == "# labkit\n\n## Layout\nkeep me\n\n## Benchmarks\n\nnew\n\n## Later\nkeep me too\n"
    assert write_table.replace_section("x\n## Benchmarks\nold\n", "## Benchmarks\nnew\n\n") == "x\n## Benchmarks\nnew\n"
    with pytest.raises(SystemExit):
        write_table.replace_section("no heading\n", "## Benchmarks\n")
