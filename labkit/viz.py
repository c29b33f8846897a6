"""Plotly figures for the notebooks: plain functions that return ``go.Figure`` (testable without a browser).

Each notebook's figures sit in their own section below, named after what they show.
"""
from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from labkit.rounding_study import SecondRoundingStats, ThreeWayCodes

# One colour per way of getting l-bit codes, shared by every figure of notebook 01.
WAY_COLORS = {"direct": "#1f77b4", "double": "#d62728", "floor": "#7f7f7f", "bound": "#2ca02c"}
WAY_NAMES = {
    "direct": "direct rounding of W/s_l",
    "double": "Double Rounding (from INT-h)",
    "floor": "floor / truncation (from INT-h)",
}


# ------------------------------------------------------------------ notebook 01: Double Rounding on scalars


def codes_vs_input_traces(result: ThreeWayCodes) -> list[go.Scatter]:
    """The staircase traces of :func:`codes_vs_input_figure`: direct, double, floor, then the differing inputs.

    Inputs are sorted so that each way draws as a staircase; the fourth trace marks inputs whose Double
    Rounding code differs from direct rounding. The order never changes, so a widget can update traces in place.
    """
    values = result.values.reshape(-1).to("cpu")
    order = values.argsort()
    x = values[order].tolist()
    codes = {way: getattr(result, f"{way}_codes").reshape(-1).to("cpu")[order].tolist()
             for way in ("direct", "double", "floor")}
    traces = [
        go.Scatter(x=x, y=codes[way], name=WAY_NAMES[way], mode="lines", line_shape="hv",
                   line=dict(color=WAY_COLORS[way], width=2, dash="dot" if way == "floor" else None))
        for way in ("direct", "double", "floor")
    ]
    differs = [i for i, (double, direct) in enumerate(zip(codes["double"], codes["direct"])) if double != direct]
    traces.append(go.Scatter(
        x=[x[i] for i in differs],
        y=[codes["double"][i] for i in differs],
        name="double ≠ direct", mode="markers",
        marker=dict(color=WAY_COLORS["double"], size=7, symbol="x"),
    ))
    return traces


def codes_vs_input_title(result: ThreeWayCodes) -> str:
    """The title of :func:`codes_vs_input_figure` for ``result``'s bit-widths and tie rule."""
    return (f"INT{result.high_bits} → INT{result.low_bits} codes vs input "
            f"(Δ = {result.delta}, ties {result.rounding.replace('_', '-')})")


def codes_vs_input_figure(result: ThreeWayCodes, title: str | None = None) -> go.Figure:
    """Staircase of the l-bit code against the input W for direct rounding, Double Rounding and floor (Eq. 1–3)."""
    figure = go.Figure(codes_vs_input_traces(result))
    figure.update_layout(
        title=title or codes_vs_input_title(result),
        xaxis_title="input W", yaxis_title=f"INT{result.low_bits} code q_l",
        legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0), template="plotly_white",
    )
    return figure


def code_difference_figure(result: ThreeWayCodes, title: str | None = None) -> go.Figure:
    """Bars: how many inputs have ``code − direct code`` = −2, −1, 0, +1, … for Double Rounding and for floor."""
    direct = result.direct_codes.reshape(-1).long()
    diffs = {way: (getattr(result, f"{way}_codes").reshape(-1).long() - direct) for way in ("double", "floor")}
    low = min(int(d.min()) for d in diffs.values())
    high = max(int(d.max()) for d in diffs.values())
    steps = list(range(min(low, -1), max(high, 1) + 1))
    figure = go.Figure([
        go.Bar(x=steps, y=[int((d == k).sum()) for k in steps], name=WAY_NAMES[way],
               marker_color=WAY_COLORS[way])
        for way, d in diffs.items()
    ])
    figure.update_layout(
        title=title or (f"INT{result.high_bits} → INT{result.low_bits}: code minus direct-rounding code "
                        f"({direct.numel()} inputs)"),
        xaxis=dict(title="code difference (l-bit LSB)", tickmode="array", tickvals=steps),
        yaxis=dict(title="number of inputs", type="log"), barmode="group", template="plotly_white",
    )
    return figure


def error_summary_figure(stats: list[SecondRoundingStats], title: str | None = None) -> go.Figure:
    """Two panels against the target bit-width: share of codes that differ from direct rounding, and worst-case error.

    The worst-case panel also draws the analytic bound ``0.5 + 2^-(Δ+1)`` LSB of Double Rounding for comparison.
    """
    stats = sorted(stats, key=lambda s: s.low_bits, reverse=True)
    bits = [f"{s.high_bits}→{s.low_bits}" for s in stats]
    figure = make_subplots(rows=1, cols=2, subplot_titles=(
        "codes that differ from direct rounding", "worst-case error (l-bit LSB)"))
    for way in ("double", "floor"):
        figure.add_trace(go.Bar(
            x=bits, y=[getattr(s, f"fraction_{way}_differs") for s in stats], name=WAY_NAMES[way],
            marker_color=WAY_COLORS[way], legendgroup=way,
            text=[f"{getattr(s, f'fraction_{way}_differs'):.2%}" for s in stats], textposition="outside",
        ), row=1, col=1)
    for way in ("direct", "double", "floor"):
        figure.add_trace(go.Scatter(
            x=bits, y=[getattr(s, f"worst_error_{way}") for s in stats], name=WAY_NAMES[way],
            mode="lines+markers", line=dict(color=WAY_COLORS[way]), legendgroup=way,
            showlegend=way == "direct",
        ), row=1, col=2)
    figure.add_trace(go.Scatter(
        x=bits, y=[s.worst_case_bound for s in stats], name="bound 0.5 + 2^-(Δ+1)", mode="lines",
        line=dict(color=WAY_COLORS["bound"], dash="dash"),
    ), row=1, col=2)
    rule = stats[0].rounding.replace("_", "-") if stats else ""
    figure.update_layout(
        title=title or f"The extra error of the second rounding, uniformly spread inputs (ties {rule})",
        barmode="group", template="plotly_white", legend=dict(orientation="h", yanchor="top", y=-0.15, x=0),
    )
    figure.update_yaxes(tickformat=".0%", row=1, col=1)
    figure.update_yaxes(rangemode="tozero", row=1, col=2)
    return figure
