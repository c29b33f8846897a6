"""Plotly figures and readers for notebook 04 (HASB): the HMT distribution, allocations, accuracy spread."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import plotly.graph_objects as go

from labkit.hasb.hessian import HMTDistribution


def read_search_csv(path) -> list[dict]:
    """The records of a ``search.csv`` written by ``labkit search`` (allocation parsed, numbers as floats)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; run `labkit search RUN_DIR` on a finished SuperNet run first.")
    records = []
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            row["allocation"] = {k: int(v) for k, v in json.loads(row["allocation"]).items()}
            for key in ("target_avg_bits", "avg_bits", "objective", "bitops", "size", "accuracy"):
                if row.get(key) not in (None, ""):
                    row[key] = float(row[key])
            records.append(row)
    return records


def hmt_figure(distribution: HMTDistribution, layer_order=None, title: str = "Average Hessian trace per layer"):
    """Bars of the average HMT per layer (log scale) with the mean and median lines; sensitive layers coloured."""
    values = dict(distribution.ranked)
    layers = list(layer_order or values)
    sensitive = set(distribution.sensitive)
    figure = go.Figure(go.Bar(
        x=layers, y=[values[name] for name in layers],
        marker_color=["#d62728" if name in sensitive else "#1f77b4" for name in layers],
        hovertemplate="%{x}: %{y:.3g}<extra></extra>"))
    figure.add_hline(y=distribution.threshold, line_dash="dash", annotation_text=f"threshold {distribution.threshold:.3g}")
    if distribution.threshold != distribution.mean:
        figure.add_hline(y=distribution.mean, line_dash="longdash", annotation_text=f"mean {distribution.mean:.3g}")
    figure.add_hline(y=distribution.median, line_dash="dot", annotation_text=f"median {distribution.median:.3g}",
                     annotation_position="bottom right")
    figure.update_layout(title=title + " (red: sensitive, at or above the threshold)", yaxis_type="log",
                         yaxis_title="|tr H| / parameters (log)", height=420)
    return figure


def allocation_figure(rows: list[dict], title: str = "Bits per layer at equal average bits"):
    """Two bar series over layers: the allocation with HASB and without (rows of ``allocation_comparison``)."""
    layers = [r for r in rows if r["layer"] != "accuracy"]
    accuracy = next((r for r in rows if r["layer"] == "accuracy"), None)
    figure = go.Figure()
    for key, label in (("with_hasb", "with HASB"), ("without_hasb", "uniform sampling")):
        suffix = f" ({accuracy[key]:.1f} %)" if accuracy else ""
        figure.add_bar(name=label + suffix, x=[r["layer"] for r in layers], y=[r[key] for r in layers])
    figure.update_layout(barmode="group", title=title, yaxis_title="bits", height=420)
    return figure


def spread_figure(spreads: dict[str, list[dict]], title: str = "Accuracy spread of SubNets at equal average bits"):
    """Min–max bands and means of SubNet accuracy per average bit-width, one series per SuperNet."""
    figure = go.Figure()
    for name, rows in spreads.items():
        x = [r["avg_bits"] for r in rows]
        figure.add_scatter(x=x, y=[r["mean"] for r in rows], name=f"{name}: mean", mode="lines+markers",
                           error_y={"type": "data", "symmetric": False,
                                    "array": [r["max"] - r["mean"] for r in rows],
                                    "arrayminus": [r["mean"] - r["min"] for r in rows]})
    figure.update_layout(title=title + " (bars: min to max)", xaxis_title="average bits",
                         yaxis_title="top-1 (%)", height=420)
    return figure


#: Run files of the lab's own measured runs, committed in the repository (``docs/results/<run>/``).
COMMITTED_RESULTS = Path(__file__).resolve().parents[2] / "docs" / "results"


def committed_supernet_traces(run: str = "cifar10-resnet20-hasb-laptop") -> dict[str, float]:
    """The average HMT per layer that the committed SuperNet run ``run`` was trained and searched with."""
    record = COMMITTED_RESULTS / run / "supernet.json"
    if not record.is_file():
        raise FileNotFoundError(f"{record} does not exist; runs committed: "
                                f"{sorted(p.name for p in COMMITTED_RESULTS.iterdir()) if COMMITTED_RESULTS.is_dir() else []}")
    return json.loads(record.read_text())["average_traces"]


def committed_search(run: str) -> list[dict]:
    """The evaluated SubNets of the committed run ``run`` (its ``search.csv``)."""
    return read_search_csv(COMMITTED_RESULTS / run / "search.csv")
