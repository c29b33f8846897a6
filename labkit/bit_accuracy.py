"""Top-1 of an FP32 model and of a multi-precision model at each bit-width, on several evaluation sets (notebook 05).

:func:`measure` decodes every image of every set once (:func:`load_images`) and then scores the FP32 reference
and each bit-width on the same tensors, with one ``tqdm.auto`` bar over all of it: with JPEG decoding and
resizing done once instead of once per precision, the ImageNet-sized evaluation is several times cheaper than
:func:`labkit.evaluate.accuracy_per_bits` called per precision, with the same numbers. Top-1 is the 1000-way
score of notebook 05: ``mean_i [argmax_c z_ic = y_i]`` over all the model's classes.

:func:`accuracy_table` (Markdown) and :func:`accuracy_figure` (plotly grouped bars: one group per precision, one
colour per evaluation set, each bar labelled with its value so a 0 % bar is still read) show the result.
"""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset
from tqdm.auto import tqdm

from labkit.convert import set_bits
from labkit.errors import LabkitError
from labkit.evaluate import FP32, fixed_subset

SET_COLORS = ("#4C78A8", "#F58518", "#54A24B", "#B279A2")  # one per evaluation set (the bit colours mean bits)


def precision_label(bits) -> str:
    return "FP32" if int(bits) == FP32 else f"{int(bits)}-bit"


def load_images(dataset: Dataset, batch_size: int = 50, bar=None) -> TensorDataset:
    """Every ``(image, label)`` of ``dataset`` decoded once and held as two tensors (``bar`` counts the images)."""
    images, labels = [], []
    for batch_images, batch_labels in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        images.append(batch_images)
        labels.append(torch.as_tensor(batch_labels))
        if bar is not None:
            bar.update(len(batch_labels))
    if not images:
        raise LabkitError("the evaluation set is empty; check LABKIT_DATA and the subset size.")
    return TensorDataset(torch.cat(images), torch.cat(labels))


@torch.no_grad()
def _top1(model: torch.nn.Module, images: TensorDataset, batch_size: int, bar=None) -> float:
    was_training = model.training
    model.eval()
    correct = 0
    try:
        for start in range(0, len(images), batch_size):
            x, y = images.tensors[0][start:start + batch_size], images.tensors[1][start:start + batch_size]
            correct += int((model(x).argmax(1) == y).sum())
            if bar is not None:
                bar.update(len(y))
    finally:
        model.train(was_training)
    return round(100.0 * correct / len(images), 4)


def measure(model: torch.nn.Module, fp32_model: torch.nn.Module | None, eval_sets: dict[str, Dataset],
            sizes: dict[str, int | None], bits, batch_size: int = 50, progress: bool = True) -> list[dict]:
    """Top-1 (%) of ``fp32_model`` and of ``model`` at each of ``bits`` on a fixed subset of each evaluation set.

    ``sizes[name]`` images of set ``name`` (:func:`labkit.evaluate.fixed_subset`, seed 12345; None: all). Returns
    one row per set, ``{"set", "images", "accuracy": {32: FP32 top-1, 8: …, …}}`` (no 32 without ``fp32_model``).
    ``model`` is left at the last bit-width of ``bits``.
    """
    bits = [int(b) for b in bits]
    missing = [name for name in eval_sets if name not in sizes]
    if missing:
        raise LabkitError(f"no size for evaluation set(s) {missing}; pass sizes={{name: images or None}}.")
    subsets = {name: fixed_subset(dataset, sizes[name]) for name, dataset in eval_sets.items()}
    passes = 1 + len(bits) + (fp32_model is not None)  # decode once, then one pass per precision
    bar = tqdm(total=sum(len(s) for s in subsets.values()) * passes, unit="image", disable=not progress,
               desc="evaluating", dynamic_ncols=True)
    rows = []
    try:
        for name, subset in subsets.items():
            bar.set_description(f"{name}: decoding")
            images = load_images(subset, batch_size, bar)
            accuracy = {}
            if fp32_model is not None:
                bar.set_description(f"{name}: FP32")
                accuracy[FP32] = _top1(fp32_model, images, batch_size, bar)
            for b in bits:
                bar.set_description(f"{name}: {b}-bit")
                set_bits(model, b)
                accuracy[b] = _top1(model, images, batch_size, bar)
            rows.append({"set": name, "images": len(images), "accuracy": accuracy})
    finally:
        bar.close()
    return rows


def accuracy_table(rows: list[dict], note: str | None = None) -> str:
    """A Markdown table: one row per evaluation set, one column per precision (render with ``IPython.display``)."""
    precisions = list(dict.fromkeys(b for row in rows for b in row["accuracy"]))
    header = ["evaluation set", "images"] + [f"{precision_label(b)} top-1 (%)" for b in precisions]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for row in rows:
        cells = [f"`{row['set']}`", f"{row['images']:,}"]
        cells += [f"{row['accuracy'][b]:.1f}" if b in row["accuracy"] else "" for b in precisions]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + (f"\n\n{note}" if note else "")


def accuracy_figure(rows: list[dict], title: str, chance: float | None = 0.1):
    """Grouped bars: one group per precision (FP32 first, then high → low bits), one colour per evaluation set,
    every bar labelled with its top-1; ``chance`` (%) is drawn as a dotted line (0.1 %: one in 1000 classes)."""
    import plotly.graph_objects as go

    figure = go.Figure()
    precisions = sorted({b for row in rows for b in row["accuracy"]}, reverse=True)
    for position, row in enumerate(rows):
        present = [b for b in precisions if b in row["accuracy"]]
        values = [row["accuracy"][b] for b in present]
        figure.add_bar(name=f"{row['set']} ({row['images']:,} images)", x=[precision_label(b) for b in present],
                       y=values, marker_color=SET_COLORS[position % len(SET_COLORS)],
                       text=[f"{v:.1f} %" for v in values], textposition="outside", cliponaxis=False,
                       hovertemplate="%{x}: %{y:.1f} % top-1<extra>" + row["set"] + "</extra>")
    if chance is not None:  # labelled beside the plot, where no bar label can sit on it
        figure.add_hline(y=chance, line_dash="dot", line_color="#555555")
        figure.add_annotation(xref="paper", x=1.0, xanchor="left", yref="y", y=chance, yanchor="bottom",
                              text=f"chance<br>{chance:g} %", showarrow=False, font=dict(size=11, color="#555555"))
    figure.update_layout(barmode="group", title=title, template="plotly_white", height=460, width=900,
                         legend=dict(title=dict(text="evaluation set"), orientation="h", y=-0.18),
                         xaxis_title="precision", yaxis=dict(title="top-1 accuracy (%)", range=[0, 108]),
                         margin=dict(t=70, b=110, r=80))
    return figure
