"""Interactive widgets for the notebooks: thin ipywidgets wrappers over plain callbacks that tests call directly."""
from __future__ import annotations

import contextlib
import html

import ipywidgets as widgets
import plotly.graph_objects as go
import torch

from labkit.background_logits import BackgroundLogits, eval_logits
from labkit.convert import get_bits, quantized_layers, set_bits, trained_bits
from labkit.errors import BitWidthError, LabkitError
from labkit.evaluate import fixed_subset
from labkit.quant.ranges import check_bits, int_range
from labkit.quant.weight import channel_view
from labkit.rounding_study import code_difference_stats, codes_three_ways, check_tie_rule
from labkit.viz import (code_histogram_bars, code_histogram_figure, codes_vs_input_figure, codes_vs_input_title,
                        codes_vs_input_traces, prediction_labels, predictions_figure, predictions_title,
                        quant_error_bars, quant_error_figure, quant_error_title)

# ------------------------------------------------------------------ notebook 01: Double Rounding on scalars

TIE_RULE_LABELS = {
    "half_even": "ties to even (torch.round)",
    "half_up": "ties up (add half, shift)",
}


def explorer_state(values, scale_h: float, high_bits: int = 8, bits: int = 4, rounding: str = "half_even") -> dict:
    """Everything the precision explorer shows at one slider position (METHOD.md §1, Eq. 1–3).

    Returns a dict with ``result`` (:class:`~labkit.rounding_study.ThreeWayCodes`), ``stats``
    (:class:`~labkit.rounding_study.SecondRoundingStats`), ``traces`` (the staircase traces), ``title`` and
    ``readout`` (an HTML string).
    """
    result = codes_three_ways(values, scale_h, high_bits, bits, rounding)
    stats = code_difference_stats(result)
    n = stats.inputs
    changed = round(stats.fraction_double_differs * n)
    floor_changed = round(stats.fraction_floor_differs * n)
    head = (f"<b>INT{result.high_bits} → INT{result.low_bits}</b> (Δ = {result.delta}, "
            f"s_l = s_h·2<sup>{result.delta}</sup> = {result.scale_l:.4g}, {html.escape(TIE_RULE_LABELS[rounding])})")
    if result.delta == 0:
        body = (f"At {result.high_bits} bits the stored codes are used as they are: there is no second rounding, "
                f"all three ways give the same {n} codes.")
    else:
        body = (
            f"Double Rounding differs from direct rounding for <b>{changed} of {n}</b> inputs "
            f"({stats.fraction_double_differs:.1%}, never by more than {stats.max_code_difference} code); "
            f"floor differs for {floor_changed} ({stats.fraction_floor_differs:.1%}): q<sub>h</sub> ≫ Δ, the codes "
            f"of both truncations below.<br>"
            f"Worst error (unclipped inputs, in INT{result.low_bits} LSB): direct {stats.worst_error_direct:.3f}, "
            f"double {stats.worst_error_double:.3f} (bound {stats.worst_case_bound:.3f}), "
            f"floor (naive, cell bottom) {stats.worst_error_floor_naive:.3f}, "
            f"floor (fair, cell centre) {stats.worst_error_floor_centred:.3f}."
        )
    return {
        "bits": result.low_bits,
        "rounding": rounding,
        "result": result,
        "stats": stats,
        "traces": codes_vs_input_traces(result),
        "title": codes_vs_input_title(result),
        "readout": f"<div style='font-family: sans-serif'>{head}<br>{body}</div>",
    }


#: (width, height) in px of the explorer's staircase: a JupyterLab output area is ~1000 px wide at 1440 px.
EXPLORER_FIGURE_SIZE = (1000, 460)


class PrecisionExplorer(widgets.VBox):
    """A bit-width slider and a tie-rule toggle over the staircase of :func:`explorer_state`, with a text readout.

    Display it in a notebook like any widget. ``update(bits=..., rounding=...)`` moves the controls from code;
    the figure and readout follow every change of the slider or the toggle.
    """

    def __init__(self, values, scale_h: float, high_bits: int = 8, bit_choices=(8, 6, 4, 2),
                 rounding: str = "half_even"):
        high_bits = check_bits(high_bits, name="high_bits")
        check_tie_rule(rounding)
        # Left to right from the lowest to the highest precision: ArrowRight raises the bit-width.
        choices = sorted({check_bits(b, name="bit_choices") for b in bit_choices})
        if choices[-1] > high_bits:
            raise ValueError(f"bit_choices {choices} go above high_bits={high_bits}; the stored INT{high_bits} "
                             f"codes only give bit-widths <= {high_bits}.")
        self.values = values
        self.scale_h = float(scale_h)
        self.high_bits = high_bits
        self._updating = False
        self.slider = widgets.SelectionSlider(
            options=[(f"{b} bits", b) for b in choices], value=choices[max(len(choices) - 2, 0)],
            description="bit-width", continuous_update=True, layout=widgets.Layout(width="420px"),
        )
        # Buttons as wide as their labels (ipywidgets' default is a fixed width that cuts "ties to even (torch.round)").
        self.tie_toggle = widgets.ToggleButtons(
            options=[(label, rule) for rule, label in TIE_RULE_LABELS.items()], value=rounding,
            description="ties", style={"button_width": "auto", "description_width": "initial"},
            layout=widgets.Layout(width="auto"),
        )
        self.state = explorer_state(values, self.scale_h, high_bits, self.slider.value, rounding)
        self.figure = go.FigureWidget(codes_vs_input_figure(self.state["result"]))
        # A FigureWidget does not follow its container's width (it is drawn before it is attached and stays at
        # plotly's 700 px): give it the width of a notebook's output area at 1440 px with the file browser open.
        self.figure.layout.width, self.figure.layout.height = EXPLORER_FIGURE_SIZE
        self.readout = widgets.HTML(value=self.state["readout"])
        # Stable CSS hooks for the real-browser test (tests/test_browser.py) and for custom styling.
        self.slider.add_class("labkit-precision-slider")
        self.readout.add_class("labkit-readout")
        self.figure.add_class("labkit-figure")
        self.slider.observe(self._on_control_change, names="value")
        self.tie_toggle.observe(self._on_control_change, names="value")
        controls = widgets.HBox([self.slider, self.tie_toggle],
                                layout=widgets.Layout(flex_flow="row wrap", align_items="center"))
        super().__init__(children=[controls, self.figure, self.readout])

    def _on_control_change(self, change) -> None:
        if not self._updating:
            self.redraw()

    def update(self, bits: int | None = None, rounding: str | None = None) -> dict:
        """Move the slider to ``bits`` and/or the toggle to ``rounding``, redraw once, and return the new state."""
        self._updating = True
        try:
            if bits is not None:
                self.slider.value = check_bits(bits)
            if rounding is not None:
                self.tie_toggle.value = check_tie_rule(rounding)
        finally:
            self._updating = False
        return self.redraw()

    def redraw(self) -> dict:
        """Recompute :func:`explorer_state` for the current controls and push it into the figure and readout."""
        self.state = explorer_state(self.values, self.scale_h, self.high_bits, self.slider.value,
                                    self.tie_toggle.value)
        with self.figure.batch_update():
            for trace, new in zip(self.figure.data, self.state["traces"]):
                trace.x = new.x
                trace.y = new.y
            self.figure.layout.title.text = self.state["title"]
            self.figure.layout.yaxis.title.text = f"INT{self.state['bits']} code q_l"
        self.readout.value = self.state["readout"]
        return self.state


def precision_explorer(values, scale_h: float, high_bits: int = 8, bit_choices=(8, 6, 4, 2),
                       rounding: str = "half_even") -> PrecisionExplorer:
    """A live view of Double Rounding vs direct rounding vs floor: pick the bit-width and the tie rule (notebook 01)."""
    return PrecisionExplorer(values, scale_h, high_bits, bit_choices, rounding)


# ------------------------------------------------------------------ notebooks 03/04/06: switching a whole model


def fixed_eval_batch(dataset, size: int = 256, seed: int = 12345) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, labels) of a seeded fixed subset of ``dataset`` (:func:`labkit.evaluate.fixed_subset`), as two tensors,
    in a seeded shuffled order.

    The same ``dataset``, ``size`` and ``seed`` give the same batch on every call, so accuracies at different
    bit-widths are measured on the same images. The dataset's transform must return tensors (e.g. the test
    transform of :func:`labkit.data.cifar10`).
    """
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise ValueError(f"size={size!r} must be a positive whole number of images (or None for the whole dataset).")
    subset = fixed_subset(dataset, size, seed)
    images, labels = [], []
    for index in range(len(subset)):
        image, label = subset[index]
        if not isinstance(image, torch.Tensor):
            raise TypeError(f"the dataset returns {type(image).__name__} images, not tensors; give it a transform that "
                            "ends in ToTensor (and Normalize), e.g. labkit.data.cifar10('test').")
        images.append(image)
        labels.append(int(label))
    # fixed_subset keeps dataset order, and test sets are often stored class by class: shuffle (seeded) so the
    # first images, shown as samples, come from many classes.
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    return torch.stack(images)[order], torch.tensor(labels, dtype=torch.long)[order]


def _check_layer(model, layer) -> str:
    names = list(quantized_layers(model))
    if not names:
        raise LabkitError("the model has no quantized layers; load an INT checkpoint (labkit.load_int) or call "
                          "labkit.quantize_model(model) first.")
    if layer is None:
        return names[0]
    if layer not in names:
        raise LabkitError(f"no quantized layer named {layer!r}; the quantized layers are {names}.")
    return layer


def _precision_label(bits: dict[str, int]) -> str:
    values = set(bits.values())
    if len(values) == 1:
        return f"INT{values.pop()} (uniform)"
    average = sum(bits.values()) / len(bits)
    return f"mixed precision (average {average:.2f} bits)"


def _reference_weight(reference, name: str, layer) -> torch.Tensor:
    if reference is None:  # the highest stored precision: the INT-h codes themselves, dequantized
        codes, step = layer.weight_quantizer.codes(layer.weight, layer.bit_set[0])
        return codes.to(torch.float32) * channel_view(step.to(torch.float32), codes)
    key = f"{name}.weight"
    if key not in reference:
        raise LabkitError(f"the reference state dict has no {key!r}; pass the FP32 state dict of the same architecture "
                          "(e.g. torch.load('data/checkpoints/cifar10-resnet20-fp32.pt')).")
    weight = torch.as_tensor(reference[key]).detach().to("cpu", torch.float32)
    if tuple(weight.shape) != tuple(layer.weight.shape):
        raise LabkitError(f"the reference {key!r} has shape {tuple(weight.shape)}, the model's layer "
                          f"{tuple(layer.weight.shape)}: the reference is for another architecture.")
    return weight


def _relative_weight_error(name: str, layer, reference) -> float:
    """‖Ŵ_b − W_ref‖ / ‖W_ref‖ of ``layer`` at its current bit-width (Eq. 3 dequantized weight)."""
    codes, step = layer.weight_codes()
    weight = codes.detach().to("cpu", torch.float32) * channel_view(step.detach().to("cpu", torch.float32), codes)
    target = _reference_weight(reference, name, layer).cpu()
    return float((weight - target).norm() / target.norm().clamp_min(1e-12))


def logits_key(images: torch.Tensor, layer_bits: dict[str, int]) -> tuple:
    """The switchboard cache's key for the logits of ``images`` at the per-layer bit-widths ``layer_bits``."""
    return ("logits", id(images), tuple(images.shape), tuple(layer_bits.items()))


def _switchboard_readout(state: dict) -> str:
    bits = state["bits"]
    counts = {}
    for value in bits.values():
        counts[value] = counts.get(value, 0) + 1
    mix = ", ".join(f"{count} × {b} bits" for b, count in sorted(counts.items(), reverse=True))
    lines = [
        f"<b>Accuracy {state['accuracy']:.2f} %</b> on the fixed batch ({state['correct']} of {state['total']} images) "
        f"at <b>{html.escape(state['precision'])}</b>",
        f"average {state['average_bits']:.2f} bits over {len(bits)} quantized layers ({mix})",
    ]
    if state["changed"] is not None:
        lines.append(f"{state['changed']} of {state['total']} predictions differ from {html.escape(state['compared_to'])}")
    return f"<div style='font-family: sans-serif'>{'<br>'.join(lines)}</div>"


@torch.no_grad()
def switchboard_state(model, images, labels, bits, *, class_names=None, samples: int = 8, layer: str | None = None,
                      reference=None, compare_to=None, cache: dict | None = None) -> dict:
    """Everything the precision switchboard shows for one bit-width setting of a whole model (METHOD.md §1, §6).

    Applies ``bits`` to ``model`` (an int: one trained bit-width for every quantized layer; a dict
    ``{layer name: bits}``: those layers only, the others keep theirs, as :func:`labkit.set_bits` does), runs it
    in eval mode without gradients on the fixed batch ``images``/``labels``, and leaves it at those bits. Raises
    :class:`~labkit.errors.BitWidthError` for a bit-width the model was not trained for and
    :class:`~labkit.errors.LabkitError` for an unknown layer name, before changing anything.

    Args:
        class_names: names of the classes by label (default: the label numbers).
        samples: how many of the first images get a prediction entry.
        layer: the quantized layer whose integer codes are shown (default: the first one).
        reference: FP32 state dict (or model) to measure the weight error against; default the highest stored
            precision (then the error is 0 at the top bit-width).
        compare_to: an earlier state (or its ``predicted`` tensor) to count changed predictions against.
        cache: a dict the caller keeps to reuse logits of bit settings already run on these images, and the
            per-layer weight errors, under :func:`logits_key` and ``("quant_error", layer, bits, id(reference))``
            (the widget passes its own; leave None to always run the model). Keep one cache per model, batch and
            reference, and drop it when the model's weights change.

    Returns a dict: ``bits`` (every layer's bit-width now set), ``average_bits``, ``precision`` (a label),
    ``accuracy`` (%), ``correct``, ``total``, ``predicted`` (label of every image), ``predictions`` (the first
    ``samples`` images: ``index``, ``label``, ``true``, ``predicted_label``, ``predicted``, ``confidence``,
    ``correct``), ``layer``, ``layer_bits``, ``codes`` (integer codes of that layer's weight, Eq. 2),
    ``code_histogram`` ({code: count} over the whole b-bit range, zeros included), ``quant_error``
    ({layer: ‖Ŵ_b − W_ref‖ / ‖W_ref‖}), ``quant_error_reference``, ``changed``, ``compared_to`` and ``readout``
    (HTML).
    """
    shown = _check_layer(model, layer)
    reference_id = None if reference is None else id(reference)  # the caller's object, alive while it keeps a cache
    if isinstance(reference, torch.nn.Module):
        reference = reference.state_dict()
    images, labels = torch.as_tensor(images), torch.as_tensor(labels).reshape(-1).long().cpu()
    if images.shape[0] != labels.numel() or labels.numel() == 0:
        raise ValueError(f"images ({images.shape[0]}) and labels ({labels.numel()}) must be the same, non-zero number.")
    set_bits(model, bits)  # checks everything before it changes anything (BitWidthError, LayerNameError)
    layer_bits = get_bits(model)
    layers = quantized_layers(model)

    key = logits_key(images, layer_bits)
    logits = cache.get(key) if cache is not None else None
    if logits is None:
        logits = eval_logits(model, images, layer_bits)
        if cache is not None:
            cache[key] = logits
    probabilities = logits.softmax(dim=1)
    confidence, predicted = probabilities.max(dim=1)
    right = predicted == labels
    correct, total = int(right.sum()), labels.numel()

    def name_of(label: int) -> str:
        return str(class_names[label]) if class_names is not None and 0 <= label < len(class_names) else str(label)

    predictions = [
        {"index": i, "label": int(labels[i]), "true": name_of(int(labels[i])), "predicted_label": int(predicted[i]),
         "predicted": name_of(int(predicted[i])), "confidence": float(confidence[i]), "correct": bool(right[i])}
        for i in range(min(max(int(samples), 0), total))
    ]

    codes, _ = layers[shown].weight_codes()
    codes = codes.detach().cpu()
    qmin, qmax = int_range(layer_bits[shown])
    counts = torch.bincount(codes.reshape(-1).long() - qmin, minlength=qmax - qmin + 1)
    histogram = {qmin + i: int(count) for i, count in enumerate(counts.tolist())}

    quant_error = {}
    for name, module in layers.items():
        error_key = ("quant_error", name, layer_bits[name], reference_id)
        error = cache.get(error_key) if cache is not None else None
        if error is None:
            error = _relative_weight_error(name, module, reference)
            if cache is not None:
                cache[error_key] = error
        quant_error[name] = error

    changed, compared_to = None, None
    if compare_to is not None:
        before = compare_to["predicted"] if isinstance(compare_to, dict) else torch.as_tensor(compare_to)
        if before.numel() != total:
            raise ValueError(f"compare_to has {before.numel()} predictions, the batch {total} images.")
        changed = int((before.reshape(-1).cpu() != predicted).sum())
        compared_to = (f"the {compare_to['precision']} model" if isinstance(compare_to, dict) else "the reference")

    state = {
        "bits": layer_bits,
        "average_bits": sum(layer_bits.values()) / len(layer_bits),
        "precision": _precision_label(layer_bits),
        "accuracy": 100.0 * correct / total,
        "correct": correct,
        "total": total,
        "predicted": predicted,
        "predictions": predictions,
        "layer": shown,
        "layer_bits": layer_bits[shown],
        "codes": codes,
        "code_histogram": histogram,
        "quant_error": quant_error,
        "quant_error_reference": "FP32 weights" if reference is not None else
                                 f"stored INT{max(layers[shown].bit_set)} weights",
        "changed": changed,
        "compared_to": compared_to,
    }
    state["readout"] = _switchboard_readout(state)
    return state


# The slider's extra position while the model is not at one of its uniform bit-widths (layers differ).
MIXED = "mixed"
ACCORDION_TITLE = "Per-layer bit-widths"
# Shown once with the switchboard: a slider on its "mixed" position looks indeterminate (hatched, faded handle).
_MIXED_STYLE = ("<style>.labkit-mixed .noUi-handle{opacity:.55;background:repeating-linear-gradient(45deg,#ddd 0 3px,"
                "#fff 3px 6px)}.labkit-mixed .widget-readout{font-style:italic;color:#a05a00}</style>")


def _is_uniform(bits: dict[str, int]) -> bool:
    return len(set(bits.values())) == 1


class PrecisionSwitchboard(widgets.VBox):
    """Live precision switching of a whole model: a bit-width slider, per-layer selectors, three figures, a readout.

    The slider sets one bit-width for every quantized layer (and resets the per-layer selectors), the lowest on the
    left and the highest on the right; changing one selector makes the model mixed precision: the slider then sits
    on an extra position "mixed", placed among the bit-widths by the model's average bits, and a label beside it
    gives that average, so it never claims a uniform bit-width the model is not at. A dropdown picks the
    layer whose integer codes are drawn. Figures: sample predictions, the code histogram of that layer, and the
    per-layer weight error. Everything comes from :func:`switchboard_state`; ``update(bits=..., layer_bits=...,
    layer=...)`` moves the controls from code. The widget switches ``model`` itself (it is left at the bits shown).

    ``bits`` is where it starts: None (the top trained bit-width), one bit-width, or an allocation
    ``{layer: bits}`` (e.g. a HASB search result, :func:`labkit.search_bits`); an allocation is remembered and a
    button labelled ``allocation_label`` brings the model back to it after any move (:meth:`restore_allocation`).

    Speed (issue 11): with ``precompute=True`` the trained uniform bit-widths are run on a copy of the model in a
    background thread as soon as the widget opens (:class:`labkit.background_logits.BackgroundLogits`), so a
    uniform move only reads a cache; a per-layer change runs one forward pass of the batch. Figures update in
    place (only the trace and layout properties that changed are sent to the browser). The cache assumes the
    model's weights do not change while the widget is open: open a new switchboard after training further.
    """

    def __init__(self, model, images, labels, *, class_names=None, bit_choices=None, samples: int = 8,
                 layer: str | None = None, reference=None, mean=None, std=None, bits=None,
                 allocation_label: str = "given allocation", precompute: bool = True):
        from labkit.data import CIFAR10_MEAN, CIFAR10_STD

        trained = trained_bits(model)
        # Left to right from the lowest to the highest precision: ArrowRight raises the bit-width.
        choices = sorted({check_bits(b, allowed=trained, name="bit_choices")
                          for b in (trained if bit_choices is None else bit_choices)})
        if not choices:
            raise BitWidthError(f"bit_choices is empty; pass some of the trained bit-widths {list(trained)}.")
        layer = _check_layer(model, layer)
        names = list(quantized_layers(model))
        self.model = model
        self.choices = choices
        self.images = torch.as_tensor(images)
        self.labels = torch.as_tensor(labels)
        self.class_names = class_names
        self.samples = samples
        self.reference = reference.state_dict() if isinstance(reference, torch.nn.Module) else reference
        self.mean = CIFAR10_MEAN if mean is None else mean
        self.std = CIFAR10_STD if std is None else std
        self.allocation_label = str(allocation_label)
        start = self._full_bits(bits, names, choices[-1])
        self.allocation = dict(start) if isinstance(bits, dict) else None
        self._cache: dict = {}
        self._updating = False

        self.slider = widgets.SelectionSlider(
            options=self._slider_options(start), value=self._slider_value(start), description="bit-width",
            continuous_update=False, layout=widgets.Layout(width="420px"),
        )
        self.mixed_label = widgets.HTML(layout=widgets.Layout(width="auto", margin="0 12px"))
        self.allocation_button = widgets.Button(
            description=self.allocation_label, icon="undo", layout=widgets.Layout(
                width="auto", display=None if self.allocation else "none"),
            tooltip=(f"back to the {self.allocation_label} (average "
                     f"{sum(start.values()) / len(start):.2f} bits)") if self.allocation else "",
        )
        self.layer_dropdown = widgets.Dropdown(options=names, value=layer, description="codes of",
                                               layout=widgets.Layout(width="280px"))
        self.layer_selectors = {
            name: widgets.Dropdown(options=[(f"{b} bits", b) for b in trained], value=start[name], description=name,
                                   style={"description_width": "120px"}, layout=widgets.Layout(width="230px"))
            for name in names
        }
        self.mixed_box = widgets.Accordion(
            children=[widgets.GridBox(list(self.layer_selectors.values()),
                                      layout=widgets.Layout(grid_template_columns="repeat(3, 240px)"))],
            titles=(ACCORDION_TITLE,), selected_index=None,
        )
        # The top precision is the baseline the readout counts changed predictions against.
        top = {name: choices[-1] for name in names}
        self.baseline = self._state(top, layer, compare=False)
        self.state = self._state(start, layer)  # from the cache when it is the top precision
        self.precompute = None
        jobs = [(logits_key(self.images, {name: b for name in names}), b) for b in reversed(choices)]
        jobs = [(key, b) for key, b in jobs if key not in self._cache]
        if precompute and jobs:
            self.precompute = BackgroundLogits(model, self.images, jobs, self._cache).start()
        self.readout = widgets.HTML()
        self.predictions_figure = go.FigureWidget(predictions_figure(self.images, self.state, self.mean, self.std))
        self.histogram_figure = go.FigureWidget(code_histogram_figure(self.state))
        self.error_figure = go.FigureWidget(quant_error_figure(self.state))
        self.figures = (self.predictions_figure, self.histogram_figure, self.error_figure)
        # Stable CSS hooks for the real-browser test and for custom styling.
        self.slider.add_class("labkit-precision-slider")
        self.readout.add_class("labkit-readout")
        self.mixed_label.add_class("labkit-mixed-label")
        self.allocation_button.add_class("labkit-allocation-button")
        for selector in self.layer_selectors.values():
            selector.add_class("labkit-layer-selector")
        for figure in self.figures:
            figure.add_class("labkit-figure")
        self._show_controls(self.state)
        self.readout.value = self._readout(self.state)
        self.slider.observe(self._on_slider_change, names="value")
        for selector in self.layer_selectors.values():
            selector.observe(self._on_control_change, names="value")
        self.layer_dropdown.observe(self._on_control_change, names="value")
        self.allocation_button.on_click(lambda _: self.restore_allocation())
        controls = widgets.HBox([self.slider, self.mixed_label, self.allocation_button, self.layer_dropdown],
                                layout=widgets.Layout(flex_flow="row wrap", align_items="center"))
        super().__init__(children=[
            widgets.HTML(_MIXED_STYLE), controls, self.mixed_box, self.readout,
            self.predictions_figure, self.histogram_figure, self.error_figure,
        ])

    # ---------------------------------------------------------------- bits and controls
    def _full_bits(self, bits, names: list[str], top: int) -> dict[str, int]:
        """``bits`` (None, an int or ``{layer: bits}``) as every layer's bit-width, checked before anything moves."""
        trained = trained_bits(self.model)
        if bits is None:
            return {name: top for name in names}
        if not isinstance(bits, dict):
            value = check_bits(bits, allowed=trained)
            return {name: value for name in names}
        unknown = sorted(set(bits) - set(names), key=str)
        if unknown:
            raise LabkitError(f"no quantized layer named {unknown}; the quantized layers are {names}.")
        full = {name: top for name in names}
        full.update({name: check_bits(value, allowed=trained, name=f"bits[{name!r}]") for name, value in bits.items()})
        return full

    def _on_slider_position(self, bits: dict[str, int]) -> bool:
        return _is_uniform(bits) and next(iter(bits.values())) in self.choices

    def _slider_options(self, bits: dict[str, int]) -> list:
        """The uniform bit-widths, lowest first; while the model is off them, one more position ``MIXED`` placed
        by its average bits (after every uniform bit-width at or below it), so ArrowLeft from it goes to the next
        lower precision and ArrowRight to the next higher one."""
        options = [(f"{b} bits", b) for b in self.choices]
        if not self._on_slider_position(bits):
            label = MIXED if not _is_uniform(bits) else f"all {next(iter(bits.values()))} bits"
            average = sum(bits.values()) / len(bits)
            options.insert(sum(b <= average for b in self.choices), (label, MIXED))
        return options

    def _slider_value(self, bits: dict[str, int]):
        return next(iter(bits.values())) if self._on_slider_position(bits) else MIXED

    @property
    def layer_bits(self) -> dict[str, int]:
        """The bit-width every per-layer selector shows now."""
        return {name: selector.value for name, selector in self.layer_selectors.items()}

    @property
    def is_mixed(self) -> bool:
        """True while the layers are not all at one bit-width."""
        return not _is_uniform(self.layer_bits)

    def _set_all_layers(self, bits: int) -> None:
        for selector in self.layer_selectors.values():
            selector.value = bits

    def _on_slider_change(self, change) -> None:
        if self._updating:
            return
        if change["new"] == MIXED:  # only there while mixed: nothing to change
            return
        with contextlib.ExitStack() as held:  # the 18-odd selector messages go after the readout's and figures'
            for selector in self.layer_selectors.values():
                held.enter_context(selector.hold_sync())
            self._updating = True
            try:
                self._set_all_layers(change["new"])  # one bit-width for the whole model
            finally:
                self._updating = False
            self.redraw()

    def _on_control_change(self, change) -> None:
        if not self._updating:
            self.redraw()

    def _show_controls(self, state: dict) -> None:
        """Slider, mixed label and allocation button as ``state`` is: never a uniform position for a mixed model."""
        bits = state["bits"]
        self._updating = True
        try:
            options = self._slider_options(bits)
            if list(self.slider.options) != options:
                self.slider.options = options
            self.slider.value = self._slider_value(bits)
        finally:
            self._updating = False
        if self._on_slider_position(bits):
            self.slider.remove_class("labkit-mixed")
            self.mixed_label.value = ""
        else:
            self.slider.add_class("labkit-mixed")
            what = "mixed" if not _is_uniform(bits) else "uniform, off the slider"
            at = " (the {})".format(html.escape(self.allocation_label)) if bits == self.allocation else ""
            self.mixed_label.value = f"<b>{what}: avg {state['average_bits']:.2f} bits</b>{at}"
        self.allocation_button.disabled = self.allocation is None or bits == self.allocation

    def _readout(self, state: dict) -> str:
        if self.allocation is None:
            return state["readout"]
        label = html.escape(self.allocation_label)
        average = sum(self.allocation.values()) / len(self.allocation)
        note = (f"This is the {label} (average {average:.2f} bits)." if state["bits"] == self.allocation else
                f"The {label} (average {average:.2f} bits) is one click away: press “{label}”.")
        return f"{state['readout']}<div style='font-family: sans-serif; color: #555'>{note}</div>"

    # ---------------------------------------------------------------- state and figures
    def _state(self, bits, layer, compare: bool = True) -> dict:
        return switchboard_state(self.model, self.images, self.labels, bits, class_names=self.class_names,
                                 samples=self.samples, layer=layer, reference=self.reference,
                                 compare_to=self.baseline if compare else None, cache=self._cache)

    def _current_state(self) -> dict:
        bits = self.layer_bits
        key = logits_key(self.images, bits)
        background = self.precompute
        if background is not None and key not in self._cache:
            background.claim(key)  # waits only for the job running now; otherwise this thread computes it
        if background is None or key in self._cache:
            return self._state(bits, self.layer_dropdown.value)
        with background.paused():
            return self._state(bits, self.layer_dropdown.value)

    def update(self, bits: int | None = None, layer_bits: dict | None = None, layer: str | None = None) -> dict:
        """Move the controls (``bits`` for the whole model first, then ``layer_bits`` per layer, ``layer`` for the
        code histogram), redraw once, and return the new state. Nothing moves when an argument is invalid."""
        if bits is not None:
            bits = check_bits(bits, allowed=self.choices)
        if layer_bits is not None:
            unknown = sorted(set(layer_bits) - set(self.layer_selectors), key=str)
            if unknown:
                raise LabkitError(f"no quantized layer named {unknown}; the quantized layers are "
                                  f"{list(self.layer_selectors)}.")
            layer_bits = {name: check_bits(value, allowed=trained_bits(self.model), name=f"layer_bits[{name!r}]")
                          for name, value in layer_bits.items()}
        if layer is not None:
            layer = _check_layer(self.model, layer)
        self._updating = True
        try:
            if bits is not None:
                self._set_all_layers(bits)
            for name, value in (layer_bits or {}).items():
                self.layer_selectors[name].value = value
            if layer is not None:
                self.layer_dropdown.value = layer
        finally:
            self._updating = False
        return self.redraw()

    def restore_allocation(self) -> dict:
        """Back to the allocation the switchboard was opened with (what the allocation button does)."""
        if self.allocation is None:
            raise LabkitError("this switchboard was opened without an allocation; pass bits={layer: bits, ...} to "
                              "precision_switchboard to have one to come back to.")
        return self.update(layer_bits=self.allocation)

    def redraw(self) -> dict:
        """Recompute :func:`switchboard_state` for the current controls and push it into the figures and readout.

        Only what differs is sent to the browser: plotly's ``batch_update`` sends one message per figure with the
        changed properties (none when nothing changed), ipywidgets one per control whose value changed.
        """
        self.state = self._current_state()
        self.readout.value = self._readout(self.state)  # first: the browser applies the messages in order
        texts, colors = prediction_labels(self.state)
        with self.predictions_figure.batch_update():
            for annotation, text, color in zip(self.predictions_figure.layout.annotations, texts, colors):
                annotation.text = text
                annotation.font.color = color
            self.predictions_figure.layout.title.text = predictions_title(self.state)
        histogram = code_histogram_bars(self.state)
        with self.histogram_figure.batch_update():
            bar = self.histogram_figure.data[0]
            bar.x, bar.y, bar.marker.color, bar.name = histogram["x"], histogram["y"], histogram["marker_color"], \
                histogram["name"]
            layout = self.histogram_figure.layout
            layout.title.text = histogram["title"]
            layout.xaxis.title.text = histogram["xaxis_title"]
            layout.xaxis.range = histogram["xaxis_range"]
        bars = quant_error_bars(self.state)
        with self.error_figure.batch_update():
            bar = self.error_figure.data[0]
            bar.x, bar.y, bar.text = bars["x"], bars["y"], bars["text"]
            bar.marker.color = bars["marker_color"]
            bar.marker.line.width = bars["marker_line_width"]
            layout = self.error_figure.layout
            layout.title.text = quant_error_title(self.state)
            layout.yaxis.type, layout.yaxis.range = bars["yaxis_type"], bars["yaxis_range"]
            layout.yaxis.title.text = bars["yaxis_title"]
            layout.yaxis.showticklabels = bars["yaxis_showticklabels"]
            layout.annotations[0].text, layout.annotations[0].visible = bars["note"], bool(bars["note"])
        self._show_controls(self.state)
        return self.state


def precision_switchboard(model, images, labels, *, class_names=None, bit_choices=None, samples: int = 8,
                          layer: str | None = None, reference=None, mean=None, std=None, bits=None,
                          allocation_label: str = "given allocation", precompute: bool = True) -> PrecisionSwitchboard:
    """A live view of a whole multi-precision model as its bit-width switches, uniformly or per layer (notebooks
    03/04/06): accuracy on a fixed batch, sample predictions, integer codes of a layer, per-layer weight error.

    ``bit_choices`` defaults to the trained bits; ``mean``/``std`` (default CIFAR-10's) undo the images'
    normalization for display; ``reference`` is an FP32 state dict for the weight error (default: the stored INT-h
    weights). ``bits`` is where it opens (default the top trained bit-width); an allocation ``{layer: bits}`` opens
    it there, marked mixed, with a button ``allocation_label`` (e.g. ``"searched allocation"``) that comes back to
    it. ``precompute`` runs the trained uniform bit-widths in a background thread as the widget opens.
    """
    return PrecisionSwitchboard(model, images, labels, class_names=class_names, bit_choices=bit_choices,
                                samples=samples, layer=layer, reference=reference, mean=mean, std=std, bits=bits,
                                allocation_label=allocation_label, precompute=precompute)


# Kept here so a notebook or benchmark finds it beside the widget it measures.
from labkit.switchboard_latency import measure_switchboard_latency  # noqa: E402  (no import cycle: lazy inside)
