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
    # lowest precision on the left: ArrowRight (the next option) raises the bit-width; it opens at 6 bits
    assert [value for _, value in explorer.slider.options] == [2, 4, 6, 8] and explorer.slider.value == 6
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


def test_the_readout_names_both_truncations_with_their_own_errors(values):
    from labkit.rounding_study import code_difference_stats, unclipped_mask

    state = explorer_state(values, 0.01, 8, 4, "half_even")
    stats = code_difference_stats(codes_three_ways(values, 0.01, 8, 4))
    # the naive truncation reads q_h >> Δ back at the bottom of its cells, the fair one at their centre
    result = codes_three_ways(values, 0.01, 8, 4)
    inside = unclipped_mask(result)  # |W / s_l| <= 2^(l-1) - 1/2: the errors there are rounding errors
    naive = ((result.floor_codes.double() * result.scale_l - values.double()) / result.scale_l)[inside]
    centred = (((result.floor_codes.double() + 0.5 - 2 ** -5) * result.scale_l - values.double())
               / result.scale_l)[inside]
    assert stats.worst_error_floor_naive == pytest.approx(float(naive.abs().max()), abs=1e-6)
    assert stats.worst_error_floor_centred == pytest.approx(float(centred.abs().max()), abs=1e-6)
    assert f"floor (naive, cell bottom) {float(naive.abs().max()):.3f}" in state["readout"]
    assert f"floor (fair, cell centre) {float(centred.abs().max()):.3f}" in state["readout"]
    assert f"floor {stats.worst_error_floor_naive:.3f}." not in state["readout"]  # no bare "floor" error any more


def test_the_explorers_figure_is_as_wide_as_an_output_area(values):
    # plotly's FigureWidget keeps 700 px unless told (it never autosizes to its container)
    explorer = precision_explorer(values, 0.01)
    assert explorer.figure.layout.width >= 950 and explorer.figure.layout.height >= 400
