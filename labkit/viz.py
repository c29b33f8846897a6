"""Plotly figures for the notebooks: plain functions that return ``go.Figure`` (testable without a browser).

Each notebook's figures sit in their own section below, named after what they show.
"""
from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from labkit.rounding_study import WAYS, SecondRoundingStats, ThreeWayCodes

# One colour per way of getting l-bit codes, shared by every figure of notebook 01.
WAY_COLORS = {"direct": "#1f77b4", "double": "#d62728", "floor": "#7f7f7f", "bound": "#2ca02c",
              "floor_naive": "#7f7f7f", "floor_centred": "#9467bd"}
WAY_NAMES = {
    "direct": "direct rounding of W/s_l",
    "double": "Double Rounding (from INT-h)",
    "floor": "floor / truncation q_h >> Δ (from INT-h)",
    "floor_naive": "truncation, dequantized at the cell bottom (naive)",
    "floor_centred": "truncation, dequantized at the cell centre (fair)",
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
    counts = {way: [int((d == k).sum()) for k in steps] for way, d in diffs.items()}
    figure = go.Figure([
        go.Bar(x=steps, y=counts[way], name=WAY_NAMES[way], marker_color=WAY_COLORS[way]) for way in diffs
    ])
    ticks = power_of_ten_ticks(max(max(c) for c in counts.values()))
    figure.update_layout(
        title=title or (f"INT{result.high_bits} → INT{result.low_bits}: code minus direct-rounding code "
                        f"({direct.numel()} inputs)"),
        xaxis=dict(title="code difference (l-bit LSB)", tickmode="array", tickvals=steps),
        yaxis=dict(title="number of inputs (log scale)", type="log", tickmode="array", tickvals=ticks,
                   ticktext=[f"{t:,}" for t in ticks], range=[-0.1, math.log10(ticks[-1]) + 0.1]),
        barmode="group", template="plotly_white",
    )
    return figure


def power_of_ten_ticks(largest: float) -> list[int]:
    """1, 10, 100, … up to the first power of ten at or above ``largest`` (at least 10): a log axis's ticks."""
    ticks = [1]
    while ticks[-1] < max(largest, 10):
        ticks.append(ticks[-1] * 10)
    return ticks


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


def rounding_errors_figure(stats: list[SecondRoundingStats], title: str | None = None) -> go.Figure:
    """Three panels against the target bit-width, one bar per way (:data:`labkit.rounding_study.WAYS`): the bias
    (mean of ``(Ŵ_l − W) / s_l``), the mean |error| and the worst |error|, with Double Rounding's bound dashed."""
    stats = sorted(stats, key=lambda s: s.low_bits, reverse=True)
    bits = [f"{s.high_bits}→{s.low_bits}" for s in stats]
    panels = (("bias", "bias: mean error"), ("mean_error", "mean |error|"), ("worst_error", "worst |error|"))
    figure = make_subplots(rows=1, cols=3, subplot_titles=[name for _, name in panels], horizontal_spacing=0.08)
    for col, (key, _) in enumerate(panels, start=1):
        for way in WAYS:
            figure.add_trace(go.Bar(
                x=bits, y=[getattr(s, f"{key}_{way}") for s in stats], name=WAY_NAMES[way],
                marker_color=WAY_COLORS[way], legendgroup=way, showlegend=col == 1,
            ), row=1, col=col)
        figure.update_yaxes(title_text="error (l-bit LSB)" if col == 1 else None, row=1, col=col)
        figure.update_xaxes(title_text="target bit-width h→l", row=1, col=col)
    figure.add_trace(go.Scatter(
        x=bits, y=[s.worst_case_bound for s in stats], name="Double Rounding bound 0.5 + 2^-(Δ+1)",
        mode="markers", marker=dict(color=WAY_COLORS["bound"], symbol="line-ew-open", size=28, line_width=3),
    ), row=1, col=3)
    rule = stats[0].rounding.replace("_", "-") if stats else ""
    figure.update_layout(
        title=title or f"Error of each way, uniformly spread inputs (ties {rule})",
        barmode="group", template="plotly_white", height=500,
        legend=dict(orientation="h", yanchor="top", y=-0.3, x=0), margin=dict(b=150),
    )
    return figure


def signed_error_figure(result: ThreeWayCodes, ways=("double", "floor_naive", "floor_centred"),
                        title: str | None = None) -> go.Figure:
    """One row per way: the signed error ``(Ŵ_l − W) / s_l`` against the input W, its mean (the bias) dashed.

    The naive truncation's sawtooth sits below zero (bias ≈ −1/2 LSB); centred, it straddles zero like rounding.
    """
    values = result.values.reshape(-1).to("cpu", torch.float64)
    order = values.argsort()
    x = values[order]
    figure = make_subplots(rows=len(ways), cols=1, shared_xaxes=True, vertical_spacing=0.06,
                           subplot_titles=[WAY_NAMES[way] for way in ways])
    for row, way in enumerate(ways, start=1):
        error = ((result.values_of(way).reshape(-1).to("cpu", torch.float64)[order] - x) / result.scale_l)
        figure.add_trace(go.Scatter(x=x.tolist(), y=error.tolist(), name=WAY_NAMES[way], mode="lines",
                                    line=dict(color=WAY_COLORS[way], width=1.5), showlegend=False), row=row, col=1)
        mean = float(error.mean())
        figure.add_hline(y=mean, line=dict(color=WAY_COLORS[way], dash="dash"), row=row, col=1,
                         annotation_text=f"mean {round(mean, 3) + 0.0:+.3f}".replace("-", "−"),  # never "−0.000"
                         annotation_position="top right")
        figure.update_yaxes(title_text="error (LSB)", range=[-1.1, 1.1], zeroline=True, row=row, col=1)
    figure.update_xaxes(title_text="input W", row=len(ways), col=1)
    figure.update_layout(
        title=title or (f"INT{result.high_bits} → INT{result.low_bits}: signed error (Ŵ_l − W) / s_l "
                        f"against W (Δ = {result.delta})"),
        template="plotly_white", height=220 * len(ways) + 120,
    )
    return figure


# ------------------------------------------------------------------ notebooks 03/04/06: switching a whole model

# One colour per bit-width, shared by the switchboard's figures (higher precision = cooler colour).
BIT_COLORS = {16: "#17becf", 8: "#1f77b4", 7: "#17becf", 6: "#2ca02c", 5: "#bcbd22", 4: "#ff7f0e", 3: "#e377c2",
              2: "#d62728"}
RIGHT_COLOR, WRONG_COLOR = "#2ca02c", "#d62728"


def bit_color(bits: int) -> str:
    """The colour of ``bits`` in the switchboard figures (grey for a bit-width without its own colour)."""
    return BIT_COLORS.get(int(bits), "#7f7f7f")


def denormalize_images(images, mean, std) -> np.ndarray:
    """``(N, C, H, W)`` normalized image tensor → ``(N, H, W, 3)`` uint8 RGB array for display (undoes ``Normalize``)."""
    images = torch.as_tensor(images).detach().to("cpu", torch.float32)
    if images.dim() == 3:
        images = images.unsqueeze(0)
    mean = torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    pixels = (images * std + mean).clamp(0, 1)
    if pixels.shape[1] == 1:
        pixels = pixels.expand(-1, 3, -1, -1)
    return (pixels * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def prediction_labels(state: dict) -> tuple[list[str], list[str]]:
    """(caption, colour) of each sample image of a switchboard state: ``"✓ cat 93%"`` / ``"✗ dog 51% (cat)"``."""
    texts, colors = [], []
    for p in state["predictions"]:
        mark = "✓" if p["correct"] else "✗"
        truth = "" if p["correct"] else f"<br>(true: {p['true']})"
        texts.append(f"{mark} {p['predicted']} {p['confidence']:.0%}{truth}")
        colors.append(RIGHT_COLOR if p["correct"] else WRONG_COLOR)
    return texts, colors


def predictions_title(state: dict) -> str:
    """The title of :func:`predictions_figure`: precision and how many sample images are right."""
    right = sum(p["correct"] for p in state["predictions"])
    return f"Sample predictions at {state['precision']}: {right} of {len(state['predictions'])} right"


def predictions_figure(images, state: dict, mean, std, columns: int = 4) -> go.Figure:
    """A grid of the first sample images of the batch, each captioned with the predicted class and confidence.

    Green captions are right, red ones wrong (with the true class). ``images`` is the normalized batch the state was
    computed on; ``mean``/``std`` undo the normalization (e.g. ``labkit.data.CIFAR10_MEAN``/``CIFAR10_STD``). The
    images never change with the bit-width, only the captions, so a widget updates the annotations in place.
    """
    count = len(state["predictions"])
    pixels = denormalize_images(images[:count], mean, std)
    columns = max(1, min(columns, count))
    rows = max(1, math.ceil(count / columns))
    texts, colors = prediction_labels(state)
    figure = make_subplots(rows=rows, cols=columns, subplot_titles=texts or None,
                           horizontal_spacing=0.02, vertical_spacing=0.12 if rows > 1 else 0.0)
    for i in range(count):
        figure.add_trace(go.Image(z=pixels[i], hoverinfo="skip"), row=i // columns + 1, col=i % columns + 1)
    for annotation, color in zip(figure.layout.annotations, colors):
        annotation.font = dict(color=color, size=12)
    figure.update_xaxes(visible=False)
    figure.update_yaxes(visible=False)
    figure.update_layout(title=predictions_title(state), template="plotly_white", height=170 * rows + 90,
                         width=150 * columns + 60, margin=dict(l=10, r=10, t=80, b=10))
    return figure


def code_histogram_title(state: dict) -> str:
    """The title of :func:`code_histogram_figure`: layer, bit-width, weights and the share of zero codes."""
    counts = state["code_histogram"]
    total = sum(counts.values())
    zeros = counts.get(0, 0) / max(total, 1)
    return (f"{state['layer']}: INT{state['layer_bits']} weight codes "
            f"({total:,} weights, {zeros:.1%} are 0)")


def code_histogram_bars(state: dict) -> dict:
    """The bar properties and axis of :func:`code_histogram_figure`, so a widget can update them in place."""
    codes, counts = list(state["code_histogram"]), list(state["code_histogram"].values())
    bits = state["layer_bits"]
    return {
        "x": codes, "y": counts, "marker_color": bit_color(bits), "name": f"{bits}-bit codes",
        "title": code_histogram_title(state), "xaxis_title": f"INT{bits} code q_{bits}",
        "xaxis_range": [codes[0] - 0.5, codes[-1] + 0.5],
    }


def code_histogram_figure(state: dict) -> go.Figure:
    """Bars: how many weights of the shown layer have each integer code of its b-bit range (zeros included).

    At 8 bits the codes spread over [-128, 127]; every lower precision is the Double Rounding of those same
    integers (METHOD.md §1, Eq. 2), so the bars merge into 2^b bins.
    """
    bars = code_histogram_bars(state)
    figure = go.Figure(go.Bar(x=bars["x"], y=bars["y"], marker_color=bars["marker_color"], name=bars["name"],
                              showlegend=True, hovertemplate="code %{x}: %{y} weights<extra></extra>"))
    figure.update_layout(
        title=dict(text=bars["title"], font=dict(size=14), x=0.02, xanchor="left", y=0.97, yanchor="top"),
        template="plotly_white", bargap=0.05,
        xaxis=dict(title=bars["xaxis_title"], range=bars["xaxis_range"]),
        yaxis=dict(title="number of weights"), width=620, height=360, margin=dict(t=60, b=50, l=60, r=20),
        # The bars take the colour of the layer's bit-width, the same colour as that layer's bar in the error chart.
        legend=dict(title_text="colour = bit-width", x=1.0, xanchor="right", y=1.0, yanchor="top",
                    bgcolor="rgba(255,255,255,0.8)"),
    )
    return figure


def quant_error_title(state: dict) -> str:
    """The title of :func:`quant_error_figure`."""
    return f"Relative weight error per layer, ‖Ŵ_b − W_ref‖ / ‖W_ref‖, vs {state['quant_error_reference']}"


# A log axis when the errors span more than this factor (a mixed model's 8- and 2-bit layers), a linear one below.
LOG_AXIS_SPAN = 20.0


def quant_error_bars(state: dict) -> dict:
    """The bar properties and y-axis of :func:`quant_error_figure`, so a widget can update them in place.

    The y-axis fits the errors shown: logarithmic when every error is positive and they span more than
    :data:`LOG_AXIS_SPAN` (so the small errors of 8-bit layers stay visible beside 2-bit ones), otherwise linear
    from 0 to a little above the largest. When every error is 0 (all layers at the reference precision) the axis
    keeps a small range and ``note`` says why the bars are flat.
    """
    names = list(state["quant_error"])
    bits = [state["bits"][name] for name in names]
    errors = [float(state["quant_error"][name]) for name in names]
    largest = max(errors, default=0.0)
    positive = [e for e in errors if e > 0]
    note = ""
    if positive and len(positive) == len(errors) and largest / min(positive) > LOG_AXIS_SPAN:
        low, high = math.log10(min(positive)), math.log10(largest)
        pad = 0.1 * (high - low)
        axis_type, axis_range, axis_title = "log", [low - pad, high + 2 * pad], "relative error (log scale)"
    else:
        top = largest * 1.15 if largest > 0 else 1e-3
        axis_type, axis_range, axis_title = "linear", [0.0, top], "relative error"
        if largest == 0:
            note = (f"Every layer is at the precision of the reference ({state['quant_error_reference']}), "
                    "so the error is 0 by definition.<br>Lower bit-widths are Double Rounded from these codes: "
                    "move the slider to see their error.")
    return {
        "x": names,
        "y": errors,
        "marker_color": [bit_color(b) for b in bits],
        "marker_line_width": [3 if name == state["layer"] else 0 for name in names],
        "text": [f"{b}b" for b in bits],
        "yaxis_type": axis_type,
        "yaxis_range": axis_range,
        "yaxis_title": axis_title,
        "yaxis_showticklabels": largest > 0,  # no made-up scale under bars that are all 0
        "note": note,
    }


def quant_error_figure(state: dict) -> go.Figure:
    """Bars: for every quantized layer, the relative error of its dequantized weight at its current bit-width.

    The reference is the highest stored precision (so the top bit-width shows 0) or an FP32 state dict. Bar colour
    and label give each layer's bit-width; the layer whose codes are shown is outlined. The y-axis fits the errors
    (:func:`quant_error_bars`); a note in the plot says when they are all 0.
    """
    bars = quant_error_bars(state)
    figure = go.Figure(go.Bar(
        x=bars["x"], y=bars["y"], text=bars["text"], textposition="outside", cliponaxis=False,
        marker=dict(color=bars["marker_color"], line=dict(color="black", width=bars["marker_line_width"])),
        hovertemplate="%{x} (%{text}): %{y:.3g}<extra></extra>",
    ))
    figure.add_annotation(text=bars["note"], visible=bool(bars["note"]), xref="paper", yref="paper", x=0.5, y=0.5,
                          showarrow=False, font=dict(size=13, color="#444"), bgcolor="rgba(255,255,255,0.8)")
    figure.update_layout(
        title=dict(text=quant_error_title(state), font=dict(size=13), x=0.02, xanchor="left", y=0.97,
                   yanchor="top"), template="plotly_white",
        xaxis=dict(title="quantized layer (execution order)", tickangle=-45),
        yaxis=dict(title=bars["yaxis_title"], type=bars["yaxis_type"], range=bars["yaxis_range"],
                   showticklabels=bars["yaxis_showticklabels"]),
        width=820, height=380, margin=dict(t=60, b=110, l=60, r=20),  # the title on the plot, no gap under it
    )
    return figure


# ------------------------------------------------------------------ notebook 06: post-training vs joint training

#: Colour of each post-training method in :func:`post_training_figure` (the record's ``method``).
PTQ_COLORS = {"double_rounding": "#1f77b4", "floor": "#9467bd", "floor_naive": "#7f7f7f",
              "jointly trained": "#2ca02c"}
#: The narrowest x-range of a panel of :func:`post_training_figure`, in points of top-1.
PTQ_MIN_SPAN = 4.0


def post_training_figure(records: list[dict], title: str = "An existing FP32 model, no training, vs joint training"):
    """A dot plot of :func:`labkit.ptq.post_training_comparison` records: one panel per bit-width, one line per
    model, x = top-1 (%), the bar = ±1 binomial standard error of one measurement on the records' ``images``
    (:func:`labkit.ptq.standard_error`); the FP32 model dashed where it is near the dots. Each panel has its own
    x-range (at least :data:`PTQ_MIN_SPAN` points), so 8-bit differences of a point are not squashed next to
    2-bit ones of fifty.
    """
    from labkit.ptq import short_label, standard_error

    bits = list(records[0]["accuracy"])
    images = records[0]["images"]
    labels = [short_label(r) for r in records][::-1]  # the first record on top
    figure = make_subplots(rows=1, cols=len(bits), shared_yaxes=True, horizontal_spacing=0.025,
                           column_titles=[f"{b}-bit" for b in bits])
    fp32 = records[0].get("fp32")
    for col, bit in enumerate(bits, start=1):
        xs = [r["accuracy"][bit] for r in records]
        errors = [standard_error(x, images) for x in xs]
        figure.add_trace(go.Scatter(
            x=xs, y=[short_label(r) for r in records], mode="markers", showlegend=False,
            marker=dict(size=11, color=[PTQ_COLORS.get(r.get("method"), "#555555") for r in records]),
            error_x=dict(type="data", array=errors, visible=True, thickness=1.5, width=4),
            customdata=errors, hovertemplate=f"%{{y}}, {bit}-bit: %{{x:.1f}} %% ± %{{customdata:.1f}}<extra></extra>",
        ), row=1, col=col)
        low = min(x - e for x, e in zip(xs, errors))
        top = max(x + e for x, e in zip(xs, errors))
        if fp32 is not None and fp32 - top <= 3.0:
            figure.add_vline(x=fp32, line_dash="dash", line_color="#777777", row=1, col=col)
            top = max(top, fp32)
        pad = max((PTQ_MIN_SPAN - (top - low)) / 2, 0.0) + 0.5
        figure.update_xaxes(range=[max(low - pad, -1.0), min(top + pad, 101.0)], title_text="top-1 (%)",
                            row=1, col=col)
    figure.update_yaxes(categoryorder="array", categoryarray=labels, showgrid=True, automargin=True)
    note = (f"Dot: top-1 on {images:,} test images; bar: ±1 binomial standard error of one measurement."
            + (f" Dashed: the FP32 model, {fp32:.1f} % (where it is near the dots)." if fp32 is not None else ""))
    top, bottom = 80, 100
    height = top + bottom + 50 * len(records)
    figure.update_layout(title=dict(text=title, y=0.97, yanchor="top"), template="plotly_white", height=height,
                         margin=dict(l=10, r=20, t=top, b=bottom))
    # paper coordinates count in plot-area heights: the note goes 72 px below the plot, under the axis titles
    figure.add_annotation(text=note, xref="paper", yref="paper", x=0, y=-72 / (height - top - bottom),
                          showarrow=False, xanchor="left", yanchor="top", align="left",
                          font=dict(size=11, color="#555555"))
    return figure
