"""Notebook 01 as a student reads it: tables rendered as Markdown, the text's numbers equal to what the code computes,
the explorer's staircase symmetric around the representable range, figures with titles, axis titles and colours.

The notebook's code cells are run here in-process (no kernel), so the objects it shows can be inspected directly.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import nbformat
import plotly.graph_objects as go
import pytest
import torch

from labkit.quant.ranges import int_range
from labkit.rounding_study import error_table, stats_by_bits
from labkit.widgets import PrecisionExplorer

PATH = Path(__file__).resolve().parents[1] / "notebooks" / "01_double_rounding_scalar.ipynb"
NOTEBOOK = nbformat.read(PATH, as_version=4)
MARKDOWN = "\n".join(cell.source for cell in NOTEBOOK.cells if cell.cell_type == "markdown")
CHECK_TAG = "nbval-check-output"


def run_notebook() -> tuple[dict, list]:
    """Execute every code cell in one namespace; return it and the value of each cell's last expression."""
    namespace: dict = {"display": lambda *objects: None}
    shown = []
    for cell in NOTEBOOK.cells:
        if cell.cell_type != "code":
            continue
        tree = ast.parse(cell.source)
        last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
        exec(compile(tree, str(PATH), "exec"), namespace)  # noqa: S102 - the notebook's own code
        if last is not None:
            shown.append(eval(compile(ast.Expression(last.value), str(PATH), "eval"), namespace))  # noqa: S307
    return namespace, shown


@pytest.fixture(scope="module")
def executed():
    namespace, shown = run_notebook()
    namespace.pop("display")
    return namespace, shown


def percent(fraction: float) -> str:
    """How the text writes a share: one decimal and a space before %."""
    return f"{fraction:.1%}".replace("%", " %")


def signed(x: float) -> str:
    return f"{x:+.3f}".replace("-", "−")


# ------------------------------------------------------------------------------------------- tables are tables


def test_tables_are_rendered_markdown_never_printed_text():
    checked = [cell for cell in NOTEBOOK.cells
               if cell.cell_type == "code" and CHECK_TAG in cell.metadata.get("tags", [])]
    markdown_outputs = 0
    for cell in checked:
        for output in cell.outputs:
            if output.output_type == "stream":
                assert "|" not in output.text and "---" not in output.text, f"a printed table:\n{output.text[:300]}"
            data = output.get("data", {})
            if "text/markdown" in data:
                markdown_outputs += 1
                assert data["text/markdown"].count("\n| ") >= 2  # a header, an alignment row and rows
    assert markdown_outputs >= 10
    for cell in NOTEBOOK.cells:  # no table built or printed by hand in the notebook
        if cell.cell_type == "code":
            assert "print(format_" not in cell.source and "'|'" not in cell.source and '"|"' not in cell.source


# ------------------------------------------------------------------------------------ numbers the text quotes


def test_the_texts_numbers_on_uniform_inputs_are_the_computed_ones():
    uniform = {s.low_bits: s for s in error_table(8, (6, 4, 2))}
    for bits in (6, 4, 2):
        assert percent(uniform[bits].fraction_double_differs) in MARKDOWN
        assert signed(uniform[bits].bias_floor_naive) in MARKDOWN
    floor_shares = " / ".join(percent(uniform[b].fraction_floor_differs).replace(" %", "") for b in (6, 4, 2))
    assert f"{floor_shares} %" in MARKDOWN
    assert f"{uniform[6].mean_error_double:.3f} LSB at 8→6" in MARKDOWN
    assert f"negative bias ({signed(uniform[6].bias_double)})" in MARKDOWN
    assert all(abs(uniform[b].bias_floor_centred) < 5e-4 for b in (6, 4, 2)) and "no bias (0.000)" in MARKDOWN
    int4 = error_table(4, (3,))[0]
    assert f"mean {int4.mean_error_double:.3f} LSB at 4→3" in MARKDOWN and signed(int4.bias_double) in MARKDOWN
    half_up = error_table(8, (6,), "half_up")[0]
    assert f"({signed(half_up.bias_double)} at 8→6" in MARKDOWN


def test_the_texts_numbers_on_the_explorers_weights_are_what_its_readout_shows(executed):
    namespace, _ = executed
    stats = {s.low_bits: s for s in stats_by_bits(namespace["explorer_weights"], namespace["s_h"], 8, (6, 4, 2))}
    floor = ", ".join(f"{percent(stats[b].fraction_floor_differs)} at {b} bits" for b in (6, 4, 2))
    assert floor in MARKDOWN
    double = " / ".join(percent(stats[b].fraction_double_differs) for b in (6, 4, 2))
    assert double in MARKDOWN
    explorer = next(obj for obj in executed[1] if isinstance(obj, PrecisionExplorer))
    for bits in (6, 4, 2):
        readout = explorer.update(bits=bits)["readout"]
        assert f"<b>{stats[bits].codes_double_differs} of 400</b>" in readout
        floor = f"floor differs for {stats[bits].codes_floor_differs} ({stats[bits].fraction_floor_differs:.1%})"
        assert floor in readout


# ---------------------------------------------------------------------------------------------- the explorer


def test_the_explorers_staircase_is_symmetric_and_clips_at_both_ends(executed):
    namespace, shown = executed
    explorer = next(obj for obj in shown if isinstance(obj, PrecisionExplorer))
    values = namespace["explorer_weights"]
    assert torch.equal(values.sort().values, (-values).sort().values)  # every weight and its negative
    representable = (2 ** 7) * namespace["s_h"]
    for bits in (8, 6, 4, 2):
        explorer.update(bits=bits)
        direct = explorer.figure.data[0]
        assert min(direct.x) == -max(direct.x) and max(direct.x) > representable
        assert (min(direct.y), max(direct.y)) == int_range(bits)  # clipped at the lowest and at the highest code


# ------------------------------------------------------------------------------------------ figures and text


def test_figures_have_titles_axis_titles_and_distinct_colours(executed):
    figures = [obj for obj in executed[1] if isinstance(obj, go.Figure)]
    figures.append(executed[1][[isinstance(o, PrecisionExplorer) for o in executed[1]].index(True)].figure)
    assert len(figures) >= 5
    for figure in figures:
        layout = figure.layout
        assert layout.title.text, figure
        x_axes = [layout[name] for name in layout if name.startswith("xaxis")]
        assert layout.yaxis.title.text, layout.title.text
        assert any(axis.title.text for axis in x_axes), layout.title.text
        styles = set()
        for trace in figure.data:
            if trace.showlegend is False and trace.legendgroup:
                continue  # the same way again in another panel
            colour = (trace.marker.color if trace.type == "bar" else (trace.line.color or trace.marker.color))
            styles.add((colour, getattr(trace, "mode", None), getattr(trace.marker, "symbol", None)))
        shown = [t for t in figure.data if not (t.showlegend is False and t.legendgroup)]
        assert len(styles) == len(shown), f"{layout.title.text}: two traces look alike"


def test_student_text_has_no_remarks_about_tests_or_machines():
    words = re.findall(r"[A-Za-z]+", MARKDOWN + "\n".join(c.source for c in NOTEBOOK.cells if c.cell_type == "code"))
    for word in ("nbval", "pytest", "GPU", "CPU", "machine", "browser", "smoke", "NBVAL"):
        assert word not in words, word


def test_question_equations_code_plots_meaning_then_exercises():
    headings = [line for cell in NOTEBOOK.cells if cell.cell_type == "markdown"
                for line in cell.source.splitlines() if line.startswith("#")]
    assert "**The question.**" in NOTEBOOK.cells[0].source
    assert headings.index("## The equations (METHOD.md §1, paper Eq. 1–3)") == 1
    meaning = headings.index("## What it means")
    exercises = [i for i, h in enumerate(headings) if h.startswith("## Exercise")]
    assert len(exercises) == 2 and min(exercises) > meaning
    assert headings[meaning + 1:] == [headings[i] for i in exercises]
    for word in ("AdaBits", "Bit-Mixer", "without centring", "METHOD.md §9", 'method="floor"', 'method="floor_naive"'):
        assert word in MARKDOWN


def test_rounding_errors_figure_draws_the_measured_errors_of_every_way():
    from labkit.rounding_study import WAYS
    from labkit.viz import rounding_errors_figure

    stats = error_table(8, (2, 6, 4))
    figure = rounding_errors_figure(stats)
    bars = [t for t in figure.data if t.type == "bar"]
    assert len(bars) == 3 * len(WAYS)
    ordered = sorted(stats, key=lambda s: -s.low_bits)
    for panel, key in enumerate(("bias", "mean_error", "worst_error")):
        for way, bar in zip(WAYS, bars[panel * len(WAYS):(panel + 1) * len(WAYS)]):
            assert list(bar.x) == ["8→6", "8→4", "8→2"]
            assert list(bar.y) == [getattr(s, f"{key}_{way}") for s in ordered]
    assert list(figure.data[-1].y) == [s.worst_case_bound for s in ordered]


def test_signed_error_figure_mean_lines_are_the_bias():
    from labkit.rounding_study import codes_three_ways, truncation_centre
    from labkit.viz import signed_error_figure

    # Eight whole 4-bit steps, sampled at cell midpoints: the naive mean is -c_Δ, the centred one 0.
    sweep = (torch.arange(8 * 16 * 8, dtype=torch.float64) + 0.5) / 8 * 0.01 - 0.64
    figure = signed_error_figure(codes_three_ways(sweep, 0.01, 8, 4))
    means = [float(shape.y0) for shape in figure.layout.shapes]
    assert means[1] == pytest.approx(-truncation_centre(8, 4), abs=1e-12) and means[2] == pytest.approx(0, abs=1e-12)
    naive = figure.data[1]
    assert max(naive.y) <= 2 ** -5 + 1e-12 and min(naive.y) > -1
