"""benchmarks/speed.py stays runnable: its quick fake-quant group gives rows in the benchmarks/run.py schema, at 1 and
2 threads, with the default path as the value and the other paths beside it."""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import speed  # noqa: E402
from labkit.quant import lsq  # noqa: E402


def test_quick_fakequant_rows_have_the_run_py_schema_at_both_thread_counts():
    threads = torch.get_num_threads()
    default = lsq.fake_quant_path()
    rows = speed.fakequant_section(quick=True, threads=(1, 2), rounds=2)
    assert torch.get_num_threads() == threads  # the caller's count is restored
    assert lsq.fake_quant_path() == default  # and the default path
    assert set(rows) == {f"fakequant_{kind}_vs_torch_t{t}" for kind in ("weight", "activation") for t in (1, 2)}
    for name, entry in rows.items():
        detail = entry["detail"]
        assert entry["value"] > 0 and entry["goal"] == "≤ 0.8 at every bit-width", name
        assert entry["met"] == (entry["value"] <= 0.8), name
        assert detail["threads"] == int(name[-1]) and detail["default_path"] == default
        assert detail["load_average_start"] and detail["load_average_end"]
        table = detail["ratio_by_path_method_bits"]
        assert all(set(by_bits) == set(speed.BITS) for by_bits in table.values())
        main = f"{default}_{'dr_w' if 'weight' in name else 'a'}"
        assert entry["value"] == max(table[main].values())  # the default path, worst over the bit-widths
        assert set(detail["paths"]) == set(lsq.PATHS) and "compiled" in entry["summary"]  # the others beside it
        assert entry["label"] and f"{int(name[-1])} thread" in entry["label"]


def test_side_by_side_pairs_each_round_and_records_cpu_time():
    calls = []
    timer = speed.SideBySide({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")})
    timer.warm_up(2)
    assert calls == ["a", "a", "b", "b"] and timer.cpu == {"a": [], "b": []}  # warm-up samples dropped
    timer.run(3)
    assert calls[4:] == ["a", "b", "b", "a", "a", "b"]  # foundation.interleaved_times: order reversed every round
    assert len(timer.wall["a"]) == len(timer.cpu["b"]) == 3
    timer.wall = {"a": [2.0, 9.0, 4.0], "b": [1.0, 3.0, 1.0]}
    assert timer.ratio("a", "b") == 3.0 and timer.ratio("a", "b", divide=4) == 0.75  # median of per-round ratios


def test_each_thread_count_is_timed_in_its_own_loop():
    """``time_per_thread_count``: every call of the 1-thread candidates comes before any 2-thread call (no round
    switches thread counts between candidates), each call runs at its own count, and every candidate has its rounds."""
    calls = []
    candidates = {f"{name}_t{t}": speed.with_threads(t, lambda name=name, t=t: calls.append((name, t,
                                                                                             torch.get_num_threads())))
                  for t in (2, 1) for name in ("a", "b")}
    before = torch.get_num_threads()
    timer = speed.time_per_thread_count(candidates, 3, dict(lsq._KERNELS), warm_up=1)
    counts = [t for _, t, _ in calls]
    assert counts == [2] * 8 + [1] * 8  # in the candidates' order: t2 (a warm-up and 3 rounds each), then t1
    assert all(t == running for _, t, running in calls)
    assert set(timer.wall) == set(candidates) and all(len(v) == 3 for v in timer.wall.values())
    assert all(len(v) == 3 for v in timer.cpu.values()) and torch.get_num_threads() == before
