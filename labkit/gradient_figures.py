"""Figures and tables of notebook 02 (:mod:`labkit.gradient_study`): plotly figures and Markdown tables.

Every bit-width keeps the colour it has in the other notebooks (:func:`labkit.viz.bit_color`); a legend entry
is one bit-width (or one set-up) in every panel it appears in. Tables are Markdown strings for
``IPython.display.Markdown``, so a notebook shows them rendered, not as source.
"""
from __future__ import annotations

import math

from labkit.viz import bit_color

#: Colours of the "without ALRS" / "with ALRS" bars, the same in every panel.
ALRS_COLORS = {"none": "#7f7f7f", "eq7": "#d62728"}
ALRS_NAMES = {"none": "without ALRS (every scale at λ)", "eq7": "with ALRS (scales of b at λ·η_b, Eq. 7)"}


def gradient_curves_figure(curves: list[dict]):
    """One row per bit-width, each with its own x range: ``∂x̂/∂s_l`` (Eq. 14) left, ``∂x̂/∂x`` (Eq. 13) right.

    ``curves`` come from :func:`labkit.gradient_study.scale_gradient_curve`. The x axis of a row is ``v = x / s_l``
    in that bit-width's steps, so a 2-bit row spans a few steps where an 8-bit one spans hundreds; the dotted
    lines are where clipping starts (``clip_low`` / ``clip_high`` of the curve).
    """
    from plotly.subplots import make_subplots

    titles = []
    for curve in curves:
        bits, high = curve["bits"], curve["high_bits"]
        titles += [f"{bits}-bit (from INT{high}): scale gradient ∂x̂/∂s_l, n = {curve['qmin']}, p = {curve['qmax']}",
                   f"{bits}-bit: input gradient ∂x̂/∂x (clipped STE)"]
    figure = make_subplots(rows=len(curves), cols=2, subplot_titles=titles, horizontal_spacing=0.08,
                           vertical_spacing=0.5 / max(len(curves), 1))
    for row, curve in enumerate(curves, start=1):
        name, color = f"{curve['bits']}-bit", bit_color(curve["bits"])
        v = curve["v"].numpy()
        figure.add_scatter(x=v, y=curve["grad_s"].numpy(), name=name, legendgroup=name, line=dict(color=color),
                           row=row, col=1)
        figure.add_scatter(x=v, y=curve["grad_x"].numpy(), name=name, legendgroup=name, showlegend=False,
                           line=dict(color=color), row=row, col=2)
        for col in (1, 2):
            for edge in (curve["clip_low"], curve["clip_high"]):
                figure.add_vline(x=edge, line=dict(color="#555", dash="dot", width=1), row=row, col=col)
        figure.update_yaxes(title_text="∂x̂/∂s_l", row=row, col=1)
        figure.update_yaxes(title_text="∂x̂/∂x", range=[-0.1, 1.15], row=row, col=2)
        figure.update_xaxes(title_text="v = x / s_l  (in l-bit steps)", row=row, col=1)
        figure.update_xaxes(title_text="v = x / s_l  (in l-bit steps)", row=row, col=2)
    figure.update_layout(height=300 * len(curves) + 80, legend_title_text="bit-width",
                         title="LSQ straight-through gradients (dotted: where clipping starts)",
                         margin=dict(t=90))
    return figure


def magnitudes_figure(magnitudes: list[dict]):
    """Log-scale bars: mean |gradient| of weight scales, activation scales and weights per bit-width."""
    import plotly.graph_objects as go

    bits = [f"{row['bits']}-bit" for row in magnitudes]
    figure = go.Figure()
    for key, label, color in (("weight_scale_grad", "weight scales |∂L/∂s_w|", "#d62728"),
                              ("act_scale_grad", "activation scales |∂L/∂s_a|", "#9467bd"),
                              ("weight_grad", "weights |∂L/∂W|", "#1f77b4")):
        figure.add_bar(name=label, x=bits, y=[row[key] for row in magnitudes], marker_color=color)
    figure.update_layout(barmode="group", height=420, legend_title_text="gradient of",
                         title="Gradient size per precision: same network, same batch")
    figure.update_yaxes(type="log", exponentformat="power", title_text="mean |gradient|  (log scale)")
    figure.update_xaxes(title_text="precision of the forward/backward pass")
    return figure


def step_sizes_figure(sgd_steps: list[dict], adam_steps: list[dict], lr: float = 5e-4):
    """Weight-scale step per precision, without and with ALRS: the SGD reading (``λ_b·|∇s_w|``, left) and the
    Adam steps measured through the optimizer (mean ``|Δs_w|``, right), on one log axis; dashed: λ.

    ``sgd_steps`` from :func:`labkit.gradient_study.alrs_steps`, ``adam_steps`` from
    :func:`labkit.gradient_study.compare_adam_steps` (rules ``"none"`` and ``"eq7"``).
    """
    from plotly.subplots import make_subplots

    figure = make_subplots(rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.06, subplot_titles=(
        "if the optimizer were SGD: λ_b · |∇s_w|", "Adam, measured: mean |Δs_w| per step"))
    values = []
    for rule, sgd_key in (("none", "step_without"), ("eq7", "step_with")):
        x = [f"{row['bits']}-bit" for row in sgd_steps]
        y = [row[sgd_key] for row in sgd_steps]
        figure.add_bar(x=x, y=y, name=ALRS_NAMES[rule], legendgroup=rule, marker_color=ALRS_COLORS[rule],
                       row=1, col=1)
        x = [f"{row['bits']}-bit" for row in adam_steps]
        y2 = [row[f"weight_scale_step_{rule}"] for row in adam_steps]
        figure.add_bar(x=x, y=y2, name=ALRS_NAMES[rule], legendgroup=rule, showlegend=False,
                       marker_color=ALRS_COLORS[rule], row=1, col=2)
        values += y + y2
    figure.add_hline(y=lr, line=dict(color="#333", dash="dash", width=1), row=1, col="all")
    for axis in ("x", "x2"):  # a log axis takes annotation positions in log10 units
        figure.add_annotation(xref=f"{axis} domain", x=0.0, yref="y", y=math.log10(lr), text=f"λ = {lr:g}",
                              showarrow=False, xanchor="left", yanchor="bottom", font=dict(size=11))
    positive = [v for v in values if v > 0]
    low, high = math.log10(min(positive + [lr])) - 0.3, math.log10(max(positive + [lr])) + 0.3
    figure.update_yaxes(type="log", range=[low, high], exponentformat="power")
    figure.update_yaxes(title_text="weight-scale step per optimizer step  (log scale)", row=1, col=1)
    figure.update_xaxes(title_text="precision of the pass")
    figure.update_layout(barmode="group", height=440, legend_title_text="learning rate of the scales",
                         title="What ALRS does to one weight-scale update", legend=dict(orientation="h", y=-0.25))
    return figure


# ------------------------------------------------------------------------------------------- tables


def _cell(value, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return format(value, fmt) if fmt else str(value)


def markdown_rows(rows: list[dict], columns) -> str:
    """A Markdown table of ``rows`` (dicts); ``columns`` = ``[(key, header, format), ...]`` (format as for
    :func:`format`, e.g. ``".3g"``; ``""`` for ``str``, left-aligned; numbers are right-aligned). A missing or
    NaN value shows as ``–``."""
    lines = ["| " + " | ".join(header for _, header, _ in columns) + " |",
             "|" + "".join(":---|" if not fmt else "---:|" for _, _, fmt in columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(key), fmt) for key, _, fmt in columns) + " |")
    return "\n".join(lines)


INIT_NAMES = {"max": "`max`", "reference": "`reference` (3σ)"}
GRAD_MODE_NAMES = {"lsq": "`lsq`", "reference": "`reference`"}


def ratio_table(rows: list[dict]) -> str:
    """Markdown: per (init, gradient mode) of :func:`labkit.gradient_study.scale_gradient_ratios`, the mean
    weight-scale gradient per bit-width, the lowest/highest ratio, its chain factor, the clipped weights and the
    lowest-bit codes at 0 (both in % of all quantized weights)."""
    bits = sorted(rows[0]["grad"], reverse=True)
    high, low = bits[0], bits[-1]
    flat = [{"init": INIT_NAMES.get(r["init"], r["init"]), "mode": GRAD_MODE_NAMES.get(r["grad_mode"], r["grad_mode"]),
             **{f"g{b}": r["grad"][b] for b in bits}, "ratio": r["ratio"], "chain": r["chain"],
             "tied": r["ratio_per_tied_scale"], "clip_high": 100 * r["clipped_high"],
             "clip_low": 100 * r["clipped_low"], "zero_low": 100 * r["zero_codes_low"]} for r in rows]
    columns = [("init", "weight-scale init", ""), ("mode", "gradient", "")]
    columns += [(f"g{b}", f"{b}-bit", ".3g") for b in bits]
    columns += [("ratio", f"{low}-bit ÷ {high}-bit", ",.1f"), ("chain", "chain factor 2^Δ", ".0f"),
                ("tied", "ratio ÷ 2^Δ", ",.1f"), ("clip_high", f"clipped at {high} bits", ".2f"),
                ("clip_low", f"clipped at {low} bits", ".1f"), ("zero_low", f"{low}-bit codes at 0", ".0f")]
    return markdown_rows(flat, columns)


def adam_table(steps: list[dict]) -> str:
    """Markdown: per precision, η_b, the scale learning rates and the measured Adam steps without / with ALRS
    (:func:`labkit.gradient_study.compare_adam_steps`)."""
    columns = [("bits", "precision", "d"), ("eta", "η_b", "g"),
               ("weight_scale_step_none", "\\|Δs_w\\| without ALRS", ".2e"),
               ("weight_scale_step_eq7", "\\|Δs_w\\| with ALRS", ".2e"),
               ("weight_scale_relative_step_eq7", "\\|Δs_w\\|/s_w with ALRS", ".1e"),
               ("act_scale_step_none", "\\|Δs_a\\| without", ".2e"),
               ("act_scale_step_eq7", "\\|Δs_a\\| with", ".2e"),
               ("against_own_gradient_eq7", "steps against own ∇ (with)", ".0%"),
               ("against_lowest_bit_gradient_eq7", "steps against lowest-bit ∇ (with)", ".0%")]
    return markdown_rows(steps, columns)


def _count(n, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def suite_budget_sentence(records: list[dict]) -> str:
    """One sentence on what the suite rows were measured with (profile, budget, test images, seeds, hardware)."""
    if not records:
        return ""
    budget, hardware = records[0]["budget"], records[0]["hardware"]
    seeds = sorted({r.get("seeds", 1) for r in records})
    test = budget.get("eval_images", {}).get("test")
    epochs = budget.get("epochs", "?")
    parts = [f"{budget.get('profile', '?')} profile: {_count(epochs, 'epoch')} on "
             f"{budget.get('train_images', 0):,} training images, batch {budget.get('batch_size', '?')} "
             f"({budget.get('steps', '?')} batches)"]
    if test:
        parts.append(f"top-1 on {test:,} test images")
    parts.append(f"{' or '.join(map(str, seeds))} {'seed' if seeds == [1] else 'seeds'} per row")
    return "Measured at the " + ", ".join(parts) + f"; {hardware}."
