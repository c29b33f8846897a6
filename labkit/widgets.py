"""Interactive widgets for the notebooks: thin ipywidgets wrappers over plain callbacks that tests call directly."""
from __future__ import annotations

import html

import ipywidgets as widgets
import plotly.graph_objects as go

from labkit.quant.ranges import check_bits
from labkit.rounding_study import code_difference_stats, codes_three_ways, check_tie_rule
from labkit.viz import codes_vs_input_figure, codes_vs_input_title, codes_vs_input_traces

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
            f"floor differs for {floor_changed} ({stats.fraction_floor_differs:.1%}).<br>"
            f"Worst error (unclipped inputs, in INT{result.low_bits} LSB): direct {stats.worst_error_direct:.3f}, "
            f"double {stats.worst_error_double:.3f} (bound {stats.worst_case_bound:.3f}), "
            f"floor {stats.worst_error_floor:.3f}."
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


class PrecisionExplorer(widgets.VBox):
    """A bit-width slider and a tie-rule toggle over the staircase of :func:`explorer_state`, with a text readout.

    Display it in a notebook like any widget. ``update(bits=..., rounding=...)`` moves the controls from code;
    the figure and readout follow every change of the slider or the toggle.
    """

    def __init__(self, values, scale_h: float, high_bits: int = 8, bit_choices=(8, 6, 4, 2),
                 rounding: str = "half_even"):
        high_bits = check_bits(high_bits, name="high_bits")
        check_tie_rule(rounding)
        choices = sorted({check_bits(b, name="bit_choices") for b in bit_choices}, reverse=True)
        if choices[0] > high_bits:
            raise ValueError(f"bit_choices {choices} go above high_bits={high_bits}; the stored INT{high_bits} "
                             f"codes only give bit-widths <= {high_bits}.")
        self.values = values
        self.scale_h = float(scale_h)
        self.high_bits = high_bits
        self._updating = False
        self.slider = widgets.SelectionSlider(
            options=[(f"{b} bits", b) for b in choices], value=choices[min(1, len(choices) - 1)],
            description="bit-width", continuous_update=True, layout=widgets.Layout(width="420px"),
        )
        self.tie_toggle = widgets.ToggleButtons(
            options=[(label, rule) for rule, label in TIE_RULE_LABELS.items()], value=rounding,
            description="ties",
        )
        self.state = explorer_state(values, self.scale_h, high_bits, self.slider.value, rounding)
        self.figure = go.FigureWidget(codes_vs_input_figure(self.state["result"]))
        self.readout = widgets.HTML(value=self.state["readout"])
        self.slider.observe(self._on_control_change, names="value")
        self.tie_toggle.observe(self._on_control_change, names="value")
        super().__init__(children=[widgets.HBox([self.slider, self.tie_toggle]), self.figure, self.readout])

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
