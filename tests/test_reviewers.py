"""The reviewer-question measurements on hand-made search records."""
import json

import pytest

from labkit.hasb.reviewers import accuracy_spread, allocation_comparison


def record(allocation, accuracy):
    return {"allocation": allocation, "avg_bits": sum(allocation.values()) / len(allocation), "accuracy": accuracy}


A = [record({"a": 2, "b": 4}, 50.0), record({"a": 4, "b": 2}, 60.0), record({"a": 4, "b": 4}, 70.0),
     record({"a": 4, "b": 2}, 60.0)]  # the last one repeats a SubNet listed under another target
B = [record({"a": 2, "b": 4}, 55.0), record({"a": 4, "b": 2}, 52.0)]


def test_allocation_comparison_takes_the_most_accurate_subnet_of_each_supernet():
    rows = allocation_comparison(A, B, 3.0)
    assert rows[:-1] == [{"layer": "a", "with_hasb": 4, "without_hasb": 2}, {"layer": "b", "with_hasb": 2, "without_hasb": 4}]
    assert rows[-1] == {"layer": "accuracy", "with_hasb": 60.0, "without_hasb": 55.0}


def test_allocation_comparison_reads_csv_style_records_and_names_missing_averages():
    csv_rows = [dict(r, allocation=json.dumps(r["allocation"]), accuracy=str(r["accuracy"]), avg_bits=str(r["avg_bits"]))
                for r in A]
    assert allocation_comparison(csv_rows, B, 3.0)[-1]["with_hasb"] == 60.0
    with pytest.raises(ValueError, match="reach"):
        allocation_comparison(A, B, 5.0)


def test_accuracy_spread_counts_each_subnet_once():
    rows = accuracy_spread(A)
    assert rows[0] == {"avg_bits": 3.0, "subnets": 2, "min": 50.0, "max": 60.0, "range": 10.0, "mean": 55.0,
                       "stdev": pytest.approx(7.0710678)}
    assert rows[1]["avg_bits"] == 4.0 and rows[1]["subnets"] == 1 and rows[1]["stdev"] == 0.0
