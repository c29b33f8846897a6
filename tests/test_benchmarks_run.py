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
    before = {name: sys.modules.get(name) for name in ("foundation", "training")}
    try:
        spec = importlib.util.spec_from_file_location("benchmarks_run", RUN)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        with pytest.raises(SystemExit):
            module.parse_args(["--only", "no_such_group"])
        args = module.parse_args(["--only", "hessian,scaling", "--only", "notebooks", "--skip-notebooks"])
        assert args.groups == ["hessian", "scaling"]
    finally:
        for name, previous in before.items():
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous
