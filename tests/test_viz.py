"""labkit.viz figures for notebook 01: built without a browser, checked against the data they plot."""
import plotly.graph_objects as go
import pytest
import torch

from labkit.rounding_study import codes_three_ways, error_table
from labkit.viz import code_difference_figure, codes_vs_input_figure, error_summary_figure


@pytest.fixture
def result():
    torch.manual_seed(0)
    return codes_three_ways(torch.randn(500) * 0.4, 0.01, 8, 4)


def test_codes_vs_input_figure_draws_three_staircases_and_the_differences(result):
    figure = codes_vs_input_figure(result)
    assert isinstance(figure, go.Figure)
    direct, double, floor, differs = figure.data
    order = result.values.argsort()
    assert list(direct.x) == result.values[order].tolist()
    assert list(direct.y) == result.direct_codes[order].tolist()
    assert list(double.y) == result.double_codes[order].tolist()
    assert list(floor.y) == result.floor_codes[order].tolist()
    assert all(t.line.shape == "hv" for t in (direct, double, floor))
    assert len(differs.x) == int((result.double_codes != result.direct_codes).sum()) > 0
    assert "INT8 → INT4" in figure.layout.title.text
    figure.to_json()  # serialisable: what a notebook sends to the browser


def test_code_difference_figure_counts_every_input(result):
    figure = code_difference_figure(result)
    double, floor = figure.data
    assert sum(double.y) == sum(floor.y) == 500
    diffs = (result.double_codes.long() - result.direct_codes.long()).tolist()
    assert dict(zip(double.x, double.y)) == {k: diffs.count(k) for k in double.x}
    assert dict(zip(floor.x, floor.y))[0] == int((result.floor_codes == result.direct_codes).sum())


def test_error_summary_figure_plots_the_measured_statistics():
    stats = error_table(8, (2, 6, 4))
    figure = error_summary_figure(stats)
    bars = [t for t in figure.data if t.type == "bar"]
    lines = {t.name: t for t in figure.data if t.type == "scatter"}
    assert list(bars[0].x) == ["8→6", "8→4", "8→2"]
    assert list(bars[0].y) == [s.fraction_double_differs for s in sorted(stats, key=lambda s: -s.low_bits)]
    assert list(lines["bound 0.5 + 2^-(Δ+1)"].y) == [0.625, 0.53125, 0.5078125]
    worst_double = [t for t in figure.data if t.type == "scatter" and t.legendgroup == "double"][0]
    assert all(w <= b for w, b in zip(worst_double.y, lines["bound 0.5 + 2^-(Δ+1)"].y))
    figure.to_json()


def test_code_difference_figures_log_axis_is_labelled_in_powers_of_ten(result):
    figure = code_difference_figure(result)
    axis = figure.layout.yaxis
    assert axis.type == "log" and axis.tickmode == "array"
    largest = max(max(trace.y) for trace in figure.data)  # 500 inputs: at most 500 in one bar
    assert list(axis.tickvals) == [1, 10, 100, 1000] and 100 <= largest <= 1000
    assert list(axis.ticktext) == ["1", "10", "100", "1,000"]
    assert axis.range[1] >= 3.0  # log10(1000): the top tick is on the axis
    many = codes_three_ways(torch.randn(20_000, generator=torch.Generator().manual_seed(1)) * 0.4, 0.01, 8, 4)
    assert list(code_difference_figure(many).layout.yaxis.tickvals) == [1, 10, 100, 1000, 10_000, 100_000]
