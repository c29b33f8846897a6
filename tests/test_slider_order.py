"""Every bit-width slider of the lab runs from the lowest precision (left) to the highest (right), so ArrowRight,
which moves a slider to its next option, raises the bit-width (issue 13: the sliders ran 8 → 2).

The browser test (tests/test_browser.py) presses the keys on the rendered sliders; this checks the option order
of each widget, the explorer (notebook 01), the switchboard (notebooks 03/04/06) and the ONNX player (notebook 06).
"""
from __future__ import annotations

from pathlib import Path

import torch

import labkit
from labkit.export_switchable import export_switchable_onnx
from labkit.widgets import MIXED, precision_explorer, precision_switchboard

RESNET = Path(__file__).resolve().parents[1] / "data" / "checkpoints" / "cifar10-resnet20.safetensors"


def values_of(slider) -> list:
    return [value for _, value in slider.options]


def test_the_explorers_slider_runs_low_to_high_whatever_order_the_choices_come_in():
    weights = torch.randn(64, generator=torch.Generator().manual_seed(0)) * 0.05
    for choices in ((8, 6, 4, 2), (2, 8, 4), (4, 8)):
        explorer = precision_explorer(weights, 0.15 / 128, bit_choices=choices)
        assert values_of(explorer.slider) == sorted(choices)


def test_the_switchboard_and_the_onnx_players_sliders_run_low_to_high(tmp_path):
    from labkit.export_widgets import switchable_player

    model = labkit.load_int(RESNET)
    images = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(8) % 10
    board = precision_switchboard(model, images, labels, bit_choices=(4, 8, 2), precompute=False)
    assert values_of(board.slider) == [2, 4, 8] and board.slider.value == 8  # opens at the top, on the right
    names = list(board.layer_selectors)
    board.update(layer_bits={names[0]: 2})  # one layer lower: average just under 8, "mixed" just left of 8
    assert values_of(board.slider) == [2, 4, MIXED, 8]
    player = switchable_player(export_switchable_onnx(model, tmp_path / "switchable.onnx"), images, labels)
    assert values_of(player.slider) == [2, 4, 6, 8] and player.slider.value == 8
