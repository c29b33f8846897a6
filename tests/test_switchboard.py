"""labkit.widgets.precision_switchboard: live precision switching of the shipped INT8 ResNet-20, without a browser.

Every number the switchboard shows is checked against an independent computation: accuracy against
``labkit.evaluate.count_correct``, integer codes against ``double_round`` of the codes read from the checkpoint file.
"""
import json
from pathlib import Path

import plotly.graph_objects as go
import pytest
import torch
from torch.utils.data import DataLoader

from labkit.config import data_root
from labkit.convert import get_bits, quantized_layers, set_bits
from labkit.data import CIFAR10_CLASSES
from labkit.errors import BitWidthError, LabkitError
from labkit.evaluate import count_correct, fixed_subset, load_for_eval
from labkit.ptq import standard_error
from labkit.quant.rounding import double_round
from labkit.storage import CODES_SUFFIX, read_int
from labkit.viz import code_histogram_figure, predictions_figure, quant_error_figure
from labkit.widgets import fixed_eval_batch, precision_switchboard, switchboard_state

CHECKPOINT = Path(__file__).resolve().parents[1] / "data" / "checkpoints" / "cifar10-resnet20.safetensors"
FP32_CHECKPOINT = CHECKPOINT.with_name("cifar10-resnet20-fp32.pt")
HAS_DATA = (data_root() / "cifar10").is_dir()
pytestmark = pytest.mark.skipif(not HAS_DATA, reason=f"no CIFAR-10 under the data root {data_root()} (set LABKIT_DATA)")
BITS = (8, 6, 4, 2)


@pytest.fixture(scope="module")
def test_set():
    from labkit.data import cifar10

    return cifar10("test")


@pytest.fixture(scope="module")
def batch(test_set):
    return fixed_eval_batch(test_set, size=256)


@pytest.fixture(scope="module")
def model():
    model, _, _ = load_for_eval(CHECKPOINT)
    return model


@pytest.fixture(scope="module")
def states(model, batch):
    """One state per uniform bit-width (each runs the model once on the 256 images)."""
    images, labels = batch
    return {b: switchboard_state(model, images, labels, b, class_names=CIFAR10_CLASSES) for b in BITS}


def test_fixed_eval_batch_is_the_seeded_subset(test_set, batch):
    images, labels = batch
    assert images.shape == (256, 3, 32, 32) and labels.shape == (256,) and labels.dtype == torch.long
    again_images, again_labels = fixed_eval_batch(test_set, size=256)
    assert torch.equal(images, again_images) and torch.equal(labels, again_labels)
    subset = fixed_subset(test_set, 256)
    assert sorted(subset[i][1] for i in range(256)) == sorted(labels.tolist())  # the same images, shuffled
    assert any(torch.equal(subset[7][0], image) for image in images)
    assert len(set(labels[:8].tolist())) > 1  # the sample images shown first come from several classes
    assert not torch.equal(fixed_eval_batch(test_set, size=256, seed=1)[1], labels)
    with pytest.raises(ValueError, match="positive"):
        fixed_eval_batch(test_set, size=0)


def test_accuracy_matches_count_correct_and_drops_at_two_bits(model, test_set, states):
    loader = DataLoader(fixed_subset(test_set, 256), batch_size=256, shuffle=False)
    for b in (8, 2):
        set_bits(model, b)
        correct, total = count_correct(model, loader)
        assert (states[b]["correct"], states[b]["total"]) == (correct, total) == (correct, 256)
        assert states[b]["accuracy"] == pytest.approx(100.0 * correct / 256)
    # the shipped model's own provenance: its 8-bit top-1 on the 10,000 test images; 256 of them may fall short of
    # it by chance, but not by more than four binomial standard errors of a 256-image measurement
    recorded = float(json.loads(CHECKPOINT.with_suffix(".json").read_text())["accuracy"]["8"])
    assert states[8]["accuracy"] > recorded - 4 * standard_error(recorded, 256)
    assert states[8]["accuracy"] != states[2]["accuracy"]
    assert states[8]["accuracy"] > states[2]["accuracy"]
    assert f"Accuracy {states[8]['accuracy']:.2f} %" in states[8]["readout"] and "INT8 (uniform)" in states[8]["readout"]


def test_state_reports_bits_and_predictions(model, batch, states):
    images, labels = batch
    state = states[4]
    assert state["bits"] == {name: 4 for name in quantized_layers(model)} and state["average_bits"] == 4.0
    assert state["precision"] == "INT4 (uniform)"
    assert len(state["predictions"]) == 8 and state["predicted"].shape == (256,)
    for p in state["predictions"]:
        assert p["true"] == CIFAR10_CLASSES[int(labels[p["index"]])]
        assert p["predicted"] == CIFAR10_CLASSES[p["predicted_label"]] == CIFAR10_CLASSES[int(state["predicted"][p["index"]])]
        assert p["correct"] == (p["predicted_label"] == p["label"]) and 0.1 <= p["confidence"] <= 1.0
    assert state["correct"] == int((state["predicted"] == labels).sum())


def test_codes_are_double_rounded_stored_int8_codes(model, states):
    tensors, _ = read_int(CHECKPOINT)  # the file itself: independent of the loaded model's buffers
    for b, state in states.items():
        layer = state["layer"]
        assert layer == next(iter(quantized_layers(model))) and state["layer_bits"] == b
        expected = double_round(tensors[layer + CODES_SUFFIX], 8, b, "half_even")
        assert torch.equal(state["codes"], expected)


def test_code_histogram_covers_the_whole_b_bit_range(model, states):
    for b, state in states.items():
        histogram = state["code_histogram"]
        assert list(histogram) == list(range(-(1 << (b - 1)), 1 << (b - 1)))
        assert sum(histogram.values()) == quantized_layers(model)[state["layer"]].weight.numel() == state["codes"].numel()
        codes = state["codes"].reshape(-1).tolist()
        assert all(histogram[code] == codes.count(code) for code in (-1, 0, 1))
    assert 0 in states[8]["code_histogram"].values()  # unused 8-bit codes are listed with count 0


def test_quant_error_is_zero_at_the_stored_precision_and_grows_as_bits_drop(model, batch, states):
    names = list(quantized_layers(model))
    assert all(states[8]["quant_error"][name] == 0.0 for name in names)
    for name in names:
        errors = [states[b]["quant_error"][name] for b in BITS]
        assert errors == sorted(errors) and errors[-1] > errors[-2] > 0
    assert "stored INT8" in states[8]["quant_error_reference"]
    images, labels = batch
    fp32 = torch.load(FP32_CHECKPOINT, map_location="cpu", weights_only=True)
    against_fp32 = {b: switchboard_state(model, images[:8], labels[:8], b, reference=fp32)["quant_error"] for b in (8, 2)}
    assert all(0 < against_fp32[8][name] < against_fp32[2][name] for name in names)
    with pytest.raises(LabkitError, match="layer1.0.conv1.weight"):
        switchboard_state(model, images[:8], labels[:8], 8, reference={})


def test_a_dict_sets_exactly_those_layers(model, batch):
    images, labels = batch
    names = list(quantized_layers(model))
    set_bits(model, 8)
    mixed = {names[0]: 2, names[5]: 4}
    state = switchboard_state(model, images[:32], labels[:32], mixed)
    assert get_bits(model) == state["bits"] == {name: mixed.get(name, 8) for name in names}
    assert state["average_bits"] == pytest.approx((8 * (len(names) - 2) + 2 + 4) / len(names))
    assert state["precision"].startswith("mixed precision") and "1 × 2 bits" in state["readout"]
    assert state["layer_bits"] == 2 and list(state["code_histogram"]) == [-2, -1, 0, 1]


def test_bad_bits_and_unknown_layers_raise_clear_errors_and_change_nothing(model, batch):
    images, labels = batch
    set_bits(model, 6)
    before = get_bits(model)
    with pytest.raises(BitWidthError, match="trained bit set"):
        switchboard_state(model, images[:8], labels[:8], 3)
    with pytest.raises(BitWidthError, match="whole number"):
        switchboard_state(model, images[:8], labels[:8], "four")
    with pytest.raises(BitWidthError, match="layer1.0.conv2"):
        switchboard_state(model, images[:8], labels[:8], {"layer1.0.conv1": 2, "layer1.0.conv2": 5})
    with pytest.raises(LabkitError, match="no quantized layer named \\['conv1'\\]"):
        switchboard_state(model, images[:8], labels[:8], {"layer1.0.conv1": 2, "conv1": 2})
    with pytest.raises(LabkitError, match="no quantized layer named 'fc'"):
        switchboard_state(model, images[:8], labels[:8], 4, layer="fc")
    assert get_bits(model) == before


def test_figure_builders_plot_the_state(batch, states):
    images, _ = batch
    state = states[2]
    histogram = code_histogram_figure(state)
    assert list(histogram.data[0].x) == [-2, -1, 0, 1]
    assert list(histogram.data[0].y) == list(state["code_histogram"].values())
    assert "INT2" in histogram.layout.title.text and state["layer"] in histogram.layout.title.text
    errors = quant_error_figure(state)
    assert list(errors.data[0].x) == list(state["quant_error"]) and list(errors.data[0].y) == list(state["quant_error"].values())
    assert set(errors.data[0].text) == {"2b"}
    grid = predictions_figure(images, state, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
    assert [trace.type for trace in grid.data] == ["image"] * 8
    assert grid.data[0].z.shape == (32, 32, 3) and grid.data[0].z.dtype.name == "uint8"
    captions = [annotation.text for annotation in grid.layout.annotations]
    for caption, p in zip(captions, state["predictions"]):
        assert caption.startswith(("✓ " if p["correct"] else "✗ ") + p["predicted"])
    for figure in (histogram, errors, grid):
        figure.to_json()


@pytest.fixture(scope="module")
def board(model, batch):
    images, labels = batch
    return precision_switchboard(model, images[:64], labels[:64], class_names=CIFAR10_CLASSES)


def test_the_board_starts_at_the_top_precision_with_css_hooks(model, board):
    # lowest precision on the left, highest on the right: ArrowRight raises the bit-width
    assert [value for _, value in board.slider.options] == [2, 4, 6, 8] and board.slider.value == 8
    assert "labkit-precision-slider" in board.slider._dom_classes
    assert "labkit-readout" in board.readout._dom_classes
    assert all("labkit-figure" in figure._dom_classes for figure in board.figures)
    assert all(isinstance(figure, go.FigureWidget) for figure in board.figures)
    assert list(board.layer_selectors) == list(quantized_layers(model))
    assert all("labkit-layer-selector" in s._dom_classes and [v for _, v in s.options] == list(BITS)
               for s in board.layer_selectors.values())
    assert "0 of 64 predictions differ" in board.readout.value


def test_update_changes_the_figures_and_the_readout(model, board):
    board.update(bits=8, layer="layer1.0.conv1")
    before = (list(board.histogram_figure.data[0].y), list(board.error_figure.data[0].y), board.readout.value)
    calls = []
    original = board.redraw
    board.redraw = lambda: calls.append(1) or original()
    try:
        state = board.update(bits=2, layer="layer3.2.conv2")
    finally:
        del board.redraw
    assert calls == [1] and state is board.state
    assert get_bits(model) == state["bits"] == {name: 2 for name in board.layer_selectors}
    assert list(board.histogram_figure.data[0].x) == [-2, -1, 0, 1]
    assert list(board.histogram_figure.data[0].y) == list(state["code_histogram"].values()) != before[0]
    assert "layer3.2.conv2: INT2" in board.histogram_figure.layout.title.text
    assert list(board.error_figure.data[0].y) != before[1] and board.readout.value != before[2]
    assert "INT2 (uniform)" in board.readout.value and f"{state['accuracy']:.2f} %" in board.readout.value
    captions = [a.text for a in board.predictions_figure.layout.annotations]
    assert captions[0].split(" ")[1] == state["predictions"][0]["predicted"]
    with pytest.raises(BitWidthError):
        board.update(bits=3)
    with pytest.raises(LabkitError, match="no quantized layer"):
        board.update(layer_bits={"nope": 2})
    assert board.slider.value == 2 and board.state is state  # a refused update moves nothing


def test_the_histograms_colour_is_explained_by_its_legend_and_matches_the_error_chart(model, board):
    board.update(bits=8, layer="layer2.0.conv1", layer_bits={"layer2.0.conv1": 4})
    histogram, errors = board.histogram_figure, board.error_figure
    index = list(board.layer_selectors).index("layer2.0.conv1")
    assert histogram.data[0].showlegend and histogram.data[0].name == "4-bit codes"
    assert histogram.layout.legend.title.text == "colour = bit-width"
    assert histogram.data[0].marker.color == errors.data[0].marker.color[index] == "#ff7f0e"  # 4 bits: orange
    assert errors.data[0].marker.color[0] == "#1f77b4"  # an 8-bit layer: blue, as its histogram would be
    board.update(layer_bits={"layer2.0.conv1": 2})
    assert histogram.data[0].name == "2-bit codes" and histogram.data[0].marker.color == "#d62728"
    assert histogram.layout.margin.t <= 60  # the title sits on the plot, no gap of a third of the figure
    assert errors.layout.margin.t <= 60


def test_moving_the_slider_redraws_and_resets_every_layer(model, board):
    board.update(bits=8, layer_bits={"layer2.0.conv1": 2})
    before = board.readout.value
    board.slider.value = 4  # what dragging the slider does
    assert all(selector.value == 4 for selector in board.layer_selectors.values())
    assert board.state["bits"] == get_bits(model) == {name: 4 for name in board.layer_selectors}
    assert board.readout.value != before and "INT4 (uniform)" in board.readout.value
    assert list(board.histogram_figure.data[0].x) == list(range(-8, 8))


def test_changing_one_layer_selector_makes_the_model_mixed(model, board):
    board.update(bits=6)
    board.layer_selectors["layer2.1.conv2"].value = 2  # what picking in the dropdown does
    assert board.slider.value == "mixed" and board.slider.label == "mixed"  # not "6 bits": the model is not at 6
    average = (6 * (len(board.layer_selectors) - 1) + 2) / len(board.layer_selectors)
    assert f"mixed: avg {average:.2f} bits" in board.mixed_label.value
    assert board.state["bits"]["layer2.1.conv2"] == 2 and get_bits(model)["layer2.1.conv2"] == 2
    assert set(board.state["bits"].values()) == {6, 2}
    assert "mixed precision" in board.readout.value and "1 × 2 bits" in board.readout.value
    bars = board.error_figure.data[0]
    assert bars.text[list(board.layer_selectors).index("layer2.1.conv2")] == "2b"
    board.layer_dropdown.value = "layer2.1.conv2"  # the histogram follows the chosen layer at its own bits
    assert list(board.histogram_figure.data[0].x) == [-2, -1, 0, 1]
