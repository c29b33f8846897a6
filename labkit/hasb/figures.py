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


SERIES_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")


def _subnet_accuracies(records) -> dict[float, list[tuple[float, float | None]]]:
    """``{average bits: [(accuracy, standard deviation over seeds or None), ...]}``, each SubNet once.

    A record's ``accuracy`` is a number, or a list of per-seed accuracies (then the point is their mean and the
    error bar their standard deviation).
    """
    import statistics

    from labkit.hasb.reviewers import _allocation

    groups: dict[float, dict] = {}
    for record in records:
        value = record["accuracy"]
        if isinstance(value, (list, tuple)):
            values = [float(v) for v in value]
            point = (statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None)
        else:
            point = (float(value), None)
        key = tuple(sorted(_allocation(record).items())) if "allocation" in record else len(groups)
        groups.setdefault(round(float(record["avg_bits"]), 6), {})[key] = point
    return {average: list(points.values()) for average, points in groups.items()}


def spread_figure(spreads: dict[str, list[dict]], title: str = "Accuracy spread of SubNets at equal average bits"):
    """The accuracy of the SubNets at each average bit-width, one colour per SuperNet, side by side.

    ``spreads``: ``{SuperNet name: records}``. Records of :func:`labkit.hasb.sweep` / ``search.csv`` (with
    ``accuracy``, a number or a list of per-seed values, and ``avg_bits``) give, per average bit-width and
    SuperNet, a box (quartiles, median; dashed line: mean) and every SubNet as a dot, jittered sideways inside its
    SuperNet's slot, with a ±1 standard deviation error bar where there are seeds. Rows of
    :func:`labkit.hasb.reviewers.accuracy_spread` (``mean``/``min``/``max``) give the mean with a min-to-max bar.
    The average bit-widths are evenly spaced categories on the x axis (labelled with their value); the
    SuperNets' slots are offset around each, so nothing is drawn on top of another series.
    """
    import numpy as np

    names = list(spreads)
    groups = {name: (_subnet_accuracies(rows) if rows and "accuracy" in rows[0] else
                     {round(float(r["avg_bits"]), 6): r for r in rows}) for name, rows in spreads.items()}
    averages = sorted({average for group in groups.values() for average in group})
    position = {average: i for i, average in enumerate(averages)}
    slot = 0.8 / max(len(names), 1)  # width of one SuperNet's slot at one average
    rng = np.random.default_rng(0)  # the same jitter every time
    figure = go.Figure()
    for i, name in enumerate(names):
        colour = SERIES_COLOURS[i % len(SERIES_COLOURS)]
        offset = (i - (len(names) - 1) / 2) * slot
        group = groups[name]
        if spreads[name] and "accuracy" in spreads[name][0]:
            box_x, box_y, dot_x, dot_y, dot_error = [], [], [], [], []
            for average, points in group.items():
                centre = position[average] + offset
                box_x += [centre] * len(points)
                box_y += [accuracy for accuracy, _ in points]
                dot_x += list(centre + rng.uniform(-0.3, 0.3, len(points)) * slot)
                dot_y += [accuracy for accuracy, _ in points]
                dot_error += [0.0 if error is None else error for _, error in points]
            figure.add_box(x=box_x, y=box_y, name=name, legendgroup=name, marker_color=colour, boxmean=True,
                           boxpoints=False, width=0.7 * slot, hoverinfo="y")
            seeds = any(error for error in dot_error)
            figure.add_scatter(x=dot_x, y=dot_y, mode="markers", name=f"{name}: SubNets", legendgroup=name,
                               showlegend=False, marker=dict(color=colour, size=5, opacity=0.7),
                               error_y=dict(type="data", array=dot_error, visible=seeds, thickness=1),
                               hovertemplate="%{y:.2f} %<extra>" + name + "</extra>")
        else:
            rows = [group[average] for average in averages if average in group]
            figure.add_scatter(x=[position[round(float(r["avg_bits"]), 6)] + offset for r in rows],
                               y=[r["mean"] for r in rows], name=f"{name}: mean", mode="markers",
                               marker=dict(color=colour, size=9),
                               error_y={"type": "data", "symmetric": False,
                                        "array": [r["max"] - r["mean"] for r in rows],
                                        "arrayminus": [r["mean"] - r["min"] for r in rows]})
    has_records = any(rows and "accuracy" in rows[0] for rows in spreads.values())
    how = "box: quartiles and median, dashed: mean; dots: SubNets" if has_records else "dots: mean; bars: min to max"
    figure.update_layout(title=f"{title} ({how})", xaxis_title="average bit-width of the SubNet",
                         yaxis_title="top-1 accuracy (%)", height=420, boxmode="overlay", template="plotly_white",
                         legend_title_text="SuperNet")
    figure.update_xaxes(tickmode="array", tickvals=list(range(len(averages))),
                        ticktext=[f"{average:.2f}" for average in averages], range=[-0.5, len(averages) - 0.5])
    return figure


#: Run files of the lab's own measured runs, committed in the repository (``docs/results/<run>/``).
COMMITTED_RESULTS = Path(__file__).resolve().parents[2] / "docs" / "results"


def committed_supernet_traces(run: str = "hasb-seeds/hasb-s0") -> dict[str, float]:
    """The average HMT per layer that the committed SuperNet run ``run`` was trained and searched with."""
    record = COMMITTED_RESULTS / run / "supernet.json"
    if not record.is_file():
        raise FileNotFoundError(f"{record} does not exist; runs committed: "
                                f"{sorted(p.name for p in COMMITTED_RESULTS.iterdir()) if COMMITTED_RESULTS.is_dir() else []}")
    return json.loads(record.read_text())["average_traces"]


def committed_search(run: str) -> list[dict]:
    """The evaluated SubNets of the committed run ``run`` (its ``search.csv``)."""
    return read_search_csv(COMMITTED_RESULTS / run / "search.csv")


def seed_comparison_figure(rows, a: str = "HASB", b: str = "uniform sampling",
                           title: str = "HASB vs uniform sampling over training seeds"):
    """Each compared quantity (x) of :func:`labkit.hasb.seed_study.seed_comparison`, in two panels sharing x: on top
    the two rules side by side (mean over seeds with a ±1 standard deviation bar, every seed as a small dot); below
    the paired difference a − b with its 95 % interval over seeds (:class:`labkit.statistics.PairedDifference`),
    with a zero line, filled where the interval excludes zero."""
    import statistics

    from plotly.subplots import make_subplots

    from labkit.hasb.seed_study import SUMMARIES

    short = {"equal_avg_bits": "3.00 avg bits", "equal_bitops": "BitOPs of uniform 3-bit"}
    labels = [f"uniform {r['summary']}-bit" if r["budget"] == "uniform_bits" else
              f"{SUMMARIES[r['summary']]}<br>at {short[r['budget']]}" for r in rows]
    figure = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08, row_heights=[0.6, 0.4],
                           subplot_titles=("top-1 of each rule: mean ± sd over seeds, dots = seeds",
                                           f"paired difference {a} − {b}, 95 % interval over seeds"))
    for i, (key, name) in enumerate((("a", a), ("b", b))):
        colour = SERIES_COLOURS[i % len(SERIES_COLOURS)]
        offset = -0.15 if i == 0 else 0.15
        means = [statistics.fmean(r[key].values()) for r in rows]
        sds = [statistics.stdev(r[key].values()) if len(r[key]) > 1 else 0.0 for r in rows]
        figure.add_scatter(x=[j + offset for j in range(len(rows))], y=means, mode="markers", name=f"{name}: mean ± sd",
                           marker=dict(color=colour, size=10, symbol="circle" if i == 0 else "diamond"),
                           error_y=dict(type="data", array=sds, thickness=1.5),
                           hovertemplate="%{y:.2f} %<extra>" + name + "</extra>", row=1, col=1)
        dots_x = [j + offset + 0.06 for j, r in enumerate(rows) for _ in r[key]]
        dots_y = [v for r in rows for v in r[key].values()]
        figure.add_scatter(x=dots_x, y=dots_y, mode="markers", name=f"{name}: one seed",
                           marker=dict(color=colour, size=5, opacity=0.5), hovertemplate="%{y:.2f} %<extra></extra>",
                           row=1, col=1)
    differences = [r["difference"] for r in rows]
    has_interval = [d.low is not None for d in differences]
    figure.add_scatter(x=list(range(len(rows))), y=[d.mean for d in differences], mode="markers",
                       name=f"{a} − {b}: mean, 95 % interval",
                       marker=dict(color="#444444", size=9, symbol=["circle" if d.resolved else "circle-open"
                                                                    for d in differences]),
                       error_y=dict(type="data", symmetric=False, visible=any(has_interval), thickness=1.5,
                                    array=[d.high - d.mean if d.low is not None else 0.0 for d in differences],
                                    arrayminus=[d.mean - d.low if d.low is not None else 0.0 for d in differences]),
                       hovertemplate="%{y:+.2f} points<extra></extra>", row=2, col=1)
    figure.add_hline(y=0.0, line=dict(color="#999999", dash="dash"), row=2, col=1)
    figure.update_layout(title=title + " (filled dot below: interval excludes zero)", height=720,
                         template="plotly_white", legend_title_text="sampling rule",
                         legend=dict(orientation="h", yanchor="top", y=-0.3, x=0), margin=dict(b=170))
    figure.update_yaxes(title_text="top-1 accuracy (%)", row=1, col=1)
    figure.update_yaxes(title_text="difference (points)", row=2, col=1)
    figure.update_xaxes(tickmode="array", tickvals=list(range(len(rows))), ticktext=labels, row=2, col=1)
    return figure
