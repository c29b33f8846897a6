"""Measurements behind notebook 02: LSQ straight-through gradients and why ALRS exists (METHOD.md §3, §5).

- :func:`scale_gradient_curve` traces ``x̂`` and the two STE gradients of Eq. 13–14 over a sweep of inputs.
- :func:`gradient_magnitudes` measures, on a real network and batch, how large the weight-scale, activation-scale
  and weight gradients are at each bit-width: the scale gradients grow by an order of magnitude from 8 to 2 bits
  (LSQ's ``g = 1/sqrt(N·p)`` and the clipping terms), the weight gradients do not.
- :func:`alrs_steps` turns those magnitudes into the size of one optimizer step per precision with and without
  the ALRS factors of Eq. 7, and :func:`printed_eq6_rates` evaluates Eq. 6 exactly as printed.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from labkit.convert import quantized_layers, set_bits, trained_bits
from labkit.quant.lsq import fake_quantize, lsq_grad_scale
from labkit.quant.ranges import check_bits, int_range
from labkit.train.alrs import alrs_factors, gradient_term


def scale_gradient_curve(bits: int, high_bits: int = 8, steps: int = 2001, span: float = 2.0) -> dict:
    """``x̂``, ``∂x̂/∂x`` and ``∂x̂/∂s`` (without LSQ's ``g``) over ``x/s_l`` in ``[span·n, span·p]`` (Eq. 13–14).

    The weight is quantized the Double Rounding way: scale ``s_h = 1`` at ``high_bits`` and the second rounding
    to ``bits``, so ``x`` is measured in INT-``bits`` steps (``v_l = x / s_l``). Returns tensors ``v``, ``x_hat``
    (in l-bit steps), ``grad_x`` and ``grad_s`` = ``∂x̂/∂s_l`` (the gradient with respect to the learned ``s_h``
    divided by its ``2^Δ`` chain factor, so every bit-width is on the LSQ scale of Eq. 14), and the bounds.
    """
    bits = check_bits(bits)
    high_bits = check_bits(high_bits, name="high_bits")
    if bits > high_bits:
        raise ValueError(f"bits={bits} is above high_bits={high_bits}; the second rounding only lowers precision.")
    qmin, qmax = int_range(bits)
    shift = high_bits - bits
    v = torch.linspace(span * qmin, span * qmax, steps, dtype=torch.float64)
    x = (v * 2.0**shift).requires_grad_(True)
    x_hat = fake_quantize(x, torch.ones((), dtype=torch.float64), qmin, qmax, shift=shift, grad_factor=1.0)
    grad_x, = torch.autograd.grad(x_hat.sum(), x)
    grad_s = _per_element_scale_grad(x.detach(), qmin, qmax, shift)
    return {"bits": bits, "high_bits": high_bits, "v": v, "x_hat": x_hat.detach() / 2.0**shift,
            "grad_x": grad_x, "grad_s": grad_s / 2.0**shift, "qmin": qmin, "qmax": qmax}


def _per_element_scale_grad(x: torch.Tensor, qmin: int, qmax: int, shift: int) -> torch.Tensor:
    """``∂x̂_i/∂s`` for every element at once: one scale per element, so autograd keeps them apart."""
    scale = torch.ones_like(x, requires_grad=True)
    x_hat = fake_quantize(x, scale, qmin, qmax, shift=shift, grad_factor=1.0)
    grad, = torch.autograd.grad(x_hat.sum(), scale)
    return grad


def gradient_magnitudes(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, bits=None) -> list[dict]:
    """Mean absolute gradients per bit-width on one batch: weight scales, activation scales and weights.

    For each bit-width ``b`` (default: every trained one) the whole model is switched to ``b``, one
    forward/backward of the cross-entropy runs (batch norms in eval mode, so every pass sees the same
    statistics) and, over all quantized layers, the mean ``|∂L/∂s_w|`` (per-channel weight scales),
    ``|∂L/∂s_a|`` (the activation scale of ``b``) and ``|∂L/∂W|`` are recorded, with LSQ's ``g`` of a typical
    layer. The model's bit-widths and gradients are restored afterwards.
    """
    layers = quantized_layers(model)
    bit_list = [check_bits(b, allowed=trained_bits(model)) for b in (bits or trained_bits(model))]
    saved_bits = {name: layer.bits for name, layer in layers.items()}
    was_training = model.training
    model.eval()
    rows = []
    try:
        for b in bit_list:
            model.zero_grad(set_to_none=True)
            set_bits(model, b)
            F.cross_entropy(model(images), labels).backward()
            w_scale, a_scale, w_grad = [], [], []
            for layer in layers.values():
                w_scale.append(layer.weight_quantizer.scale.grad.abs().mean())
                a_scale.append(layer.act_quantizer.scale[str(b)].grad.abs())
                w_grad.append(layer.weight.grad.abs().mean())
            middle = list(layers.values())[len(layers) // 2]
            rows.append({
                "bits": b,
                "weight_scale_grad": float(torch.stack(w_scale).mean()),
                "act_scale_grad": float(torch.stack(a_scale).mean()),
                "weight_grad": float(torch.stack(w_grad).mean()),
                "lsq_g": lsq_grad_scale(middle.weight[0].numel(), int_range(b)[1]),
                "eq6_term": gradient_term([layer.weight_quantizer.scale.grad for layer in layers.values()]),
            })
    finally:
        model.zero_grad(set_to_none=True)
        set_bits(model, saved_bits)
        model.train(was_training)
    top = rows[0]
    for row in rows:
        for key in ("weight_scale_grad", "act_scale_grad", "weight_grad"):
            row[f"{key}_vs_top"] = row[key] / top[key] if top[key] else float("nan")
    return rows


def alrs_steps(magnitudes: list[dict], lr: float = 5e-4, rule: str = "eq7") -> list[dict]:
    """Size of one weight-scale update ``λ_b·|∇s_b|`` per precision, without ALRS and with η_b of Eq. 7.

    The spread between precisions, max/min, is what ALRS shrinks; the ratio columns are relative to the
    top precision.
    """
    factors = alrs_factors([row["bits"] for row in magnitudes], rule)
    top = magnitudes[0]["weight_scale_grad"]
    out = []
    for row in magnitudes:
        b, grad = row["bits"], row["weight_scale_grad"]
        out.append({"bits": b, "eta": factors[b], "step_without": lr * grad, "step_with": lr * factors[b] * grad,
                    "ratio_without": grad / top, "ratio_with": factors[b] * grad / top})
    return out


def printed_eq6_rates(magnitudes: list[dict], lr: float = 5e-4) -> list[dict]:
    """Eq. 6 as printed, ``λ_b = η_b·(λ − G_b)``, with the measured ``G_b``: negative whenever ``G_b > λ``."""
    factors = alrs_factors([row["bits"] for row in magnitudes], "eq7")
    return [{"bits": row["bits"], "G_b": row["eq6_term"], "lr_printed": factors[row["bits"]] * (lr - row["eq6_term"]),
             "lr_eq7": factors[row["bits"]] * lr} for row in magnitudes]


# ------------------------------------------------------------------------------------------- figures


def gradient_curves_figure(curves: list[dict]):
    """Two panels over ``v = x / s_l``: ``∂x̂/∂s`` (Eq. 14) and ``∂x̂/∂x`` (Eq. 13) for each bit-width."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    figure = make_subplots(rows=1, cols=2, subplot_titles=("∂x̂/∂s_l  (Eq. 14; ∂/∂s_h is 2^Δ times this)",
                                                            "∂x̂/∂x  (Eq. 13, clipped STE)"))
    for curve in curves:
        name = f"{curve['bits']}-bit (from INT{curve['high_bits']})"
        v = curve["v"].numpy()
        figure.add_scatter(x=v, y=curve["grad_s"].numpy(), name=name, legendgroup=name, row=1, col=1)
        figure.add_scatter(x=v, y=curve["grad_x"].numpy(), name=name, legendgroup=name, showlegend=False,
                           row=1, col=2)
    figure.update_xaxes(title_text="v = x / s_l  (in l-bit steps)")
    figure.update_layout(height=420, title="LSQ straight-through gradients")
    return figure


def magnitudes_figure(magnitudes: list[dict]):
    """Log-scale bars: mean |gradient| of weight scales, activation scales and weights per bit-width."""
    import plotly.graph_objects as go

    bits = [f"{row['bits']}-bit" for row in magnitudes]
    figure = go.Figure()
    for key, label in (("weight_scale_grad", "weight scales |∂L/∂s_w|"), ("act_scale_grad", "activation scales |∂L/∂s_a|"),
                       ("weight_grad", "weights |∂L/∂W|")):
        figure.add_bar(name=label, x=bits, y=[row[key] for row in magnitudes])
    figure.update_layout(barmode="group", yaxis_type="log", yaxis_title="mean |gradient| (log)", height=420,
                         title="Gradient size per precision, same network, same batch")
    return figure


def alrs_figure(steps: list[dict]):
    """Log-scale bars: weight-scale step size relative to the top precision, without and with ALRS (Eq. 7)."""
    import plotly.graph_objects as go

    bits = [f"{row['bits']}-bit" for row in steps]
    figure = go.Figure()
    figure.add_bar(name="without ALRS (one λ)", x=bits, y=[row["ratio_without"] for row in steps])
    figure.add_bar(name="with ALRS (λ·η_b, Eq. 7)", x=bits, y=[row["ratio_with"] for row in steps])
    figure.update_layout(barmode="group", yaxis_type="log", height=420,
                         yaxis_title="scale step ÷ top-precision step (log)",
                         title="What ALRS does to the size of one scale update")
    return figure


def format_rows(rows: list[dict], columns: list[str]) -> str:
    """A plain-text table of ``rows`` (dicts) restricted to ``columns``; floats in 4 significant digits."""
    def cell(value):
        return f"{value:.4g}" if isinstance(value, float) else str(value)
    widths = [max(len(c), *(len(cell(r[c])) for r in rows)) for c in columns]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(cell(r[c]).rjust(w) for c, w in zip(columns, widths)) for r in rows]
    return "\n".join(lines)
