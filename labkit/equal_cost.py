"""SubNets at equal average bits and at equal BitOPs, measured on one SuperNet (notebook 04, issue 10 item 12).

Equal average bits is what the paper compares at (Alg. 2: mean(b) = ω), but it is not a cost: the ILP gives the
sensitive layers the most bits, a layer's BitOPs grow with b², and the lab's 3.00-bit SubNet costs about 1.28× the
BitOPs of uniform 3-bit. :func:`labkit.hasb.equal_cost_subnets` finds the SubNets at both; this module measures
them on a SuperNet beside the uniform bit-widths it can run, image by image, so that a difference between two of
them comes with an interval over the test images (:func:`paired_difference`):

- :func:`correct_per_image`: which test images a model gets right at an allocation;
- :func:`paired_difference`: the accuracy difference of two models on the *same* images, with a 95 % interval
  (normal approximation of the mean of the per-image differences, each −1, 0 or +1);
- :func:`equal_cost_rows`, :func:`equal_cost_table`, :func:`cost_pareto_figure`: the comparison as rows, as a
  Markdown table and as a figure of accuracy against BitOPs.

The interval covers the choice of test images only. It says nothing about training noise: two SuperNets trained
once each (HASB and uniform sampling) cannot be told apart by it, which needs several training seeds.
"""
from __future__ import annotations

import math
import statistics
from typing import Mapping

import torch

from labkit.errors import LabkitError

#: How a difference whose interval contains zero is described (issue 12: real only where an interval excludes 0).
NOT_RESOLVED = "not resolved at this budget"


def correct_per_image(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, bits=None,
                      batch_size: int = 250) -> torch.Tensor:
    """A bool tensor, one entry per image: is ``model``'s top-1 prediction right, at ``bits``?

    ``bits``: one bit-width or an allocation ``{layer: bits}`` (:func:`labkit.convert.set_bits`); ``None`` uses
    the model as it is set. The model's bit-widths and train/eval mode are restored afterwards.
    """
    from labkit.convert import get_bits, quantized_layers, set_bits

    images, labels = torch.as_tensor(images), torch.as_tensor(labels)
    if len(images) != len(labels) or not len(images):
        raise LabkitError(f"need as many labels as images, at least one: got {len(images)} images, "
                          f"{len(labels)} labels.")
    before = get_bits(model) if quantized_layers(model) else None
    was_training = model.training
    model.eval()
    try:
        if bits is not None:
            set_bits(model, bits if isinstance(bits, int) else dict(bits))
        device = next(model.parameters()).device
        out = []
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                logits = model(images[start:start + batch_size].to(device))
                out.append(logits.argmax(1).cpu() == labels[start:start + batch_size])
        return torch.cat(out)
    finally:
        if before is not None:
            set_bits(model, before)
        model.train(was_training)


def paired_difference(correct_a, correct_b, confidence: float = 0.95) -> dict:
    """Accuracy of A minus accuracy of B on the same images, in points, with a ``confidence`` interval.

    Per image the difference is d = a − b ∈ {−1, 0, 1}; the estimate is 100·mean(d) and the interval
    100·(mean(d) ± z·s/√n), s the sample standard deviation of d and z the normal quantile (1.96 at 95 %).
    Pairing removes what the images share (both right or both wrong), so the interval is much narrower than
    comparing two unpaired accuracies. Returns ``difference``, ``low``, ``high``, ``images``, ``confidence`` and
    ``resolved`` (the interval excludes zero).
    """
    a = torch.as_tensor(correct_a).to(torch.float64).flatten()
    b = torch.as_tensor(correct_b).to(torch.float64).flatten()
    if a.shape != b.shape or a.numel() < 2:
        raise LabkitError(f"paired_difference needs two equal-length results over the same images, at least 2; got "
                          f"{a.numel()} and {b.numel()}.")
    if not 0.0 < confidence < 1.0:
        raise LabkitError(f"confidence={confidence!r} must be between 0 and 1 (e.g. 0.95).")
    d = (a - b).tolist()
    mean = statistics.fmean(d)
    half = statistics.NormalDist().inv_cdf(0.5 + confidence / 2) * statistics.stdev(d) / math.sqrt(len(d))
    low, high = 100.0 * (mean - half), 100.0 * (mean + half)
    return {"difference": 100.0 * mean, "low": low, "high": high, "images": len(d), "confidence": confidence,
            "resolved": low > 0.0 or high < 0.0}


def describe_difference(result: dict, a: str, b: str) -> str:
    """One sentence for a :func:`paired_difference` result: the difference, its interval, and whether it is real."""
    verdict = "the interval excludes zero" if result["resolved"] else NOT_RESOLVED
    return (f"{a} minus {b}: {result['difference']:+.1f} points ({result['confidence']:.0%} interval "
            f"{result['low']:+.1f} to {result['high']:+.1f}, {result['images']} test images): {verdict}.")


ROW_NAMES = {"uniform": "uniform {b}-bit", "equal_avg_bits": "ILP SubNet at {b}.00 average bits",
             "equal_bitops": "ILP SubNet at the BitOPs of uniform {b}-bit"}


def equal_cost_rows(model, comparison: Mapping, costs, images, labels, uniform_bits=(8, 4, 2),
                    progress=True) -> list[dict]:
    """The SubNets of :func:`labkit.hasb.equal_cost_subnets` and the uniform ``uniform_bits``, measured on ``model``.

    One row each: ``key`` (``"uniform"``, ``"equal_avg_bits"``, ``"equal_bitops"``, ``"uniform_4"`` …), ``name``,
    ``allocation``, ``avg_bits``, ``bitops``, ``bitops_ratio`` (to the uniform reference of
    ``comparison``), ``available`` (the SuperNet can run it: every bit is trained) and, where available,
    ``accuracy`` (%) and ``correct`` (per image, for :func:`paired_difference`). The uniform reference itself is a
    row without accuracy when its bit-width is not trained (e.g. 3 bits on an {8,6,4,2} SuperNet).
    """
    from labkit.convert import quantized_layers
    from labkit.hasb.cost import total_bitops
    from labkit.hasb.progress import progress_bar

    reference = comparison["uniform"]
    b = next(iter(reference["allocation"].values()))
    layers = list(quantized_layers(model))
    rows = [dict(comparison[key], key=key, name=ROW_NAMES[key].format(b=b))
            for key in ("uniform", "equal_avg_bits", "equal_bitops")]
    budget = comparison["bitops_budget"]
    for bits in uniform_bits:
        allocation = dict.fromkeys(layers, int(bits))
        bitops = total_bitops(costs, allocation)
        rows.append({"key": f"uniform_{bits}", "name": f"uniform {bits}-bit", "allocation": allocation,
                     "avg_bits": float(bits), "bitops": bitops, "bitops_ratio": bitops / budget, "available": True})
    runnable = [row for row in rows if row["available"]]
    with progress_bar(progress, len(runnable), "SubNets") as bar:
        for row in runnable:
            row["correct"] = correct_per_image(model, images, labels, row["allocation"])
            row["accuracy"] = 100.0 * float(row["correct"].float().mean())
            bar.update(1)
    return sorted(rows, key=lambda row: row["bitops"])


def equal_cost_table(rows: list[dict]) -> str:
    """Markdown: each row's average bits, BitOPs (G per image, and relative to the uniform reference), accuracy."""
    from labkit.rounding_study import markdown_table

    body = [[row["name"], f"{row['avg_bits']:.2f}", f"{row['bitops'] / 1e9:.3f}", f"{row['bitops_ratio']:.2f}×",
             f"{row['accuracy']:.1f}" if row.get("accuracy") is not None else "— (not a trained bit-width)"]
            for row in rows]
    return markdown_table(["SubNet", "average bits", "GBitOPs / image", "BitOPs vs reference", "top-1 (%)"], body)


def cost_pareto_figure(records: list[dict], rows: list[dict], title: str | None = None):
    """Accuracy against BitOPs: the evaluated sweep ``records`` (grey, Pareto front in red), the ``rows`` of
    :func:`equal_cost_rows` as labelled markers, and a dashed line at the uniform reference's BitOPs."""
    import plotly.graph_objects as go

    from labkit.hasb.search import pareto_front

    missing = [r for r in records if "bitops" not in r or "accuracy" not in r]
    if missing:
        raise LabkitError("every record needs 'bitops' and 'accuracy': sweep with costs=layer_costs(...), then "
                          "evaluate_subnets.")
    front = pareto_front(records, "bitops", "accuracy")
    reference = next(row for row in rows if row.get("key") == "uniform")
    figure = go.Figure([
        go.Scatter(x=[r["bitops"] / 1e9 for r in records], y=[r["accuracy"] for r in records], mode="markers",
                   name="SubNets of the sweep", marker=dict(color="#9e9e9e", size=6),
                   hovertemplate="%{x:.3f} GBitOPs, %{y:.1f} %<extra></extra>"),
        go.Scatter(x=[r["bitops"] / 1e9 for r in front], y=[r["accuracy"] for r in front], mode="lines",
                   name="Pareto front of the sweep", line=dict(color="#d62728", shape="hv"), hoverinfo="skip"),
    ])
    from labkit.viz import bit_color

    ilp_colours = {"equal_avg_bits": "#7f3fbf", "equal_bitops": "#111111"}
    for row in rows:
        if row.get("accuracy") is None:
            continue
        uniform = row["key"].startswith("uniform")
        colour = bit_color(int(row["avg_bits"])) if uniform else ilp_colours.get(row["key"], "#555555")
        figure.add_scatter(x=[row["bitops"] / 1e9], y=[row["accuracy"]], mode="markers", name=row["name"],
                           marker=dict(size=12 if uniform else 14, symbol="square" if uniform else "diamond",
                                       color=colour, line=dict(width=1, color="#333")),
                           hovertemplate=f"{row['name']}: " + "%{x:.3f} GBitOPs, %{y:.1f} %<extra></extra>")
    figure.add_vline(x=reference["bitops"] / 1e9, line_dash="dash", line_color="#555",
                     annotation_text=f"BitOPs of {reference['name']}", annotation_position="top right")
    figure.update_layout(title=title or "SubNets of one SuperNet: accuracy against cost (BitOPs per image)",
                         xaxis_title="GBitOPs per image (Σ MACs · b², first and last layer at 32 bits)",
                         yaxis_title="top-1 accuracy (%)", template="plotly_white", height=460,
                         legend=dict(title="SubNet", yanchor="top", y=1.0))
    return figure


def cost_ratio_sentence(comparison: Mapping, reference_bits: int = 3) -> str:
    """What equal average bits costs (``labkit.hasb.reviewers.equal_cost_subnets``): the BitOPs of the ILP SubNet at
    ``reference_bits`` average bits relative to uniform ``reference_bits``-bit, and the average bits the ILP
    affords under uniform's BitOPs."""
    at_average, at_bitops = comparison["equal_avg_bits"], comparison["equal_bitops"]
    return (f"The ILP SubNet at {at_average['avg_bits']:.2f} average bits costs {at_average['bitops_ratio']:.2f}× the "
            f"BitOPs of uniform {reference_bits}-bit; under the BitOPs of uniform {reference_bits}-bit the ILP affords "
            f"{at_bitops['avg_bits']:.2f} average bits ({at_bitops['bitops_ratio']:.2f}× uniform's BitOPs).")
