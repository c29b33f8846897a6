"""benchmarks/speed.py stays runnable: its quick fake-quant section gives rows in the benchmarks/run.py schema."""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import speed  # noqa: E402


def test_quick_fakequant_rows_have_the_run_py_schema():
    threads = torch.get_num_threads()
    try:
        rows = speed.fakequant_section(quick=True, threads=(1,), compiled=False)
    finally:
        torch.set_num_threads(threads)
    assert set(rows) == {"fakequant_weight_vs_torch_t1", "fakequant_activation_vs_torch_t1"}
    for entry in rows.values():
        assert entry["value"] > 0 and entry["goal"].startswith("≤ 0.8") and isinstance(entry["met"], bool)
        table = entry["detail"]["ratio_by_path_method_bits"]
        assert all(set(by_bits) == set(speed.BITS) for by_bits in table.values())
        assert entry["value"] == max(table["fused_dr_wall" if "fused_dr_wall" in table else "fused_wall"].values())
    assert speed.markdown(rows, {"quick": True, "hardware": "h", "torch": "t", "finished": "f",
                                 "load_average_start": "0", "load_average_end": "0"}).count("| `fakequant") == 2
