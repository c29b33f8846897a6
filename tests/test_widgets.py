"""labkit.widgets.precision_explorer: the callbacks and the widget, driven without a browser."""
import plotly.graph_objects as go
import pytest
import torch

from labkit.rounding_study import codes_three_ways
from labkit.widgets import explorer_state, precision_explorer


@pytest.fixture
def values():
    torch.manual_seed(0)
    return torch.randn(400) * 0.4


def test_explorer_state_is_the_three_way_comparison(values):
    state = explorer_state(values, 0.01, 8, 4, "half_even")
    reference = codes_three_ways(values, 0.01, 8, 4)
    assert state["bits"] == 4 and state["rounding"] == "half_even"
    assert torch.equal(state["result"].double_codes, reference.double_codes)
    changed = int((reference.double_codes != reference.direct_codes).sum())
    assert f"{changed} of 400" in state["readout"]
    assert "INT8 → INT4" in state["readout"] and "bound 0.531" in state["readout"]
    assert "no second rounding" in explorer_state(values, 0.01, 8, 8)["readout"]


def test_moving_the_slider_changes_the_figure_and_the_readout(values):
    explorer = precision_explorer(values, 0.01, high_bits=8, bit_choices=(8, 6, 4, 2))
    assert isinstance(explorer.figure, go.FigureWidget)
    assert [value for _, value in explorer.slider.options] == [8, 6, 4, 2]
    before_y, before_readout = explorer.figure.data[1].y, explorer.readout.value
    explorer.slider.value = 2  # what dragging the slider does
    after = explorer.figure.data[1].y
    assert after != before_y and explorer.readout.value != before_readout
    expected = codes_three_ways(values, 0.01, 8, 2).double_codes[values.argsort()].tolist()
    assert list(after) == expected
    assert "INT8 → INT2" in explorer.figure.layout.title.text and "INT2" in explorer.readout.value
    assert explorer.figure.layout.yaxis.title.text == "INT2 code q_l"


def test_the_tie_toggle_changes_the_codes_on_ties():
    ties = torch.tensor([32.0, 96.0, -32.0, 10.0])  # 8 -> 2: 0.5, 1.5, -0.5 are ties
    explorer = precision_explorer(ties, 1.0, bit_choices=(8, 2))
    explorer.slider.value = 2
    even = sorted(explorer.figure.data[1].y)
    explorer.tie_toggle.value = "half_up"
    up = sorted(explorer.figure.data[1].y)
    assert even == [0, 0, 0, 1] and up == [0, 0, 1, 1]
    assert "ties up" in explorer.readout.value


def test_update_moves_the_controls_and_redraws_once(values):
    explorer = precision_explorer(values, 0.01)
    calls = []
    original = explorer.redraw
    explorer.redraw = lambda: calls.append(1) or original()
    state = explorer.update(bits=4, rounding="half_up")
    assert calls == [1]
    assert explorer.slider.value == 4 and explorer.tie_toggle.value == "half_up"
    assert state is explorer.state and state["bits"] == 4 and state["rounding"] == "half_up"


def test_bad_choices_are_refused(values):
    with pytest.raises(ValueError, match="high_bits"):
        precision_explorer(values, 0.01, high_bits=4, bit_choices=(8, 4))
    with pytest.raises(ValueError, match="half_even"):
        precision_explorer(values, 0.01, rounding="floor")
