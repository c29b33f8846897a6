"""The live switchboard (issue 11 item 3, issue 13 items 6–7) on a tiny quantized model: no data set, no browser.

Checked against independent computations: logits against a plain forward pass of the model, forward passes
counted with a forward hook on the caller's model (the background works on a copy, so only the main thread's
passes are counted), widget messages counted at ``ipywidgets.Widget._send``; and in a real ipykernel started
with ``jupyter_client``, that the background thread neither blocks the kernel nor deadlocks it.
"""
import json
import os
import textwrap
import threading
import time
from pathlib import Path

import ipywidgets
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import labkit
from labkit.background_logits import BackgroundLogits, eval_logits
from labkit.convert import get_bits, quantized_layers
from labkit.errors import BitWidthError, LabkitError
from labkit.switchboard_latency import count_widget_messages
from labkit.viz import quant_error_bars, quant_error_figure
from labkit.widgets import (ACCORDION_TITLE, MIXED, logits_key, measure_switchboard_latency, precision_explorer,
                            precision_switchboard, switchboard_state)

BITS = (8, 6, 4, 2)


class SmallNet(nn.Module):
    """conv-bn-relu ×4, pool, linear: with the first and last layer kept FP, three quantized convs remain."""

    def __init__(self, width: int = 8):
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(3 if i == 0 else width, width, 3, padding=1, bias=False)
                                    for i in range(4)])
        self.bns = nn.ModuleList([nn.BatchNorm2d(width) for _ in range(4)])
        self.fc = nn.Linear(width, 10)

    def forward(self, x):
        for conv, bn in zip(self.convs, self.bns):
            x = F.relu(bn(conv(x)))
        return self.fc(x.mean((2, 3)))


def small_model(images):
    torch.manual_seed(0)
    model = labkit.quantize_model(SmallNet(), BITS, example_input=images[:2])
    for bits in BITS:  # initialise every activation scale, as a trained model has them
        eval_logits(model, images, bits)
    return model


@pytest.fixture(scope="module")
def batch():
    generator = torch.Generator().manual_seed(0)
    return torch.randn(24, 3, 12, 12, generator=generator), torch.randint(0, 10, (24,), generator=generator)


@pytest.fixture
def model(batch):
    return small_model(batch[0])


def count_forwards(model):
    """Forward passes of ``model`` itself (its hook is copied with the background's copy: count only ``model``)."""
    calls = []
    model.register_forward_hook(lambda module, *_: calls.append(1) if module is model else None)
    return calls


def open_board(model, batch, **options):
    board = precision_switchboard(model, *batch, **options)
    if board.precompute is not None:
        assert board.precompute.wait(60)
    return board


# ---------------------------------------------------------------- speed: cache, background, one forward per change


def test_the_background_fills_the_cache_with_the_models_own_logits(model, batch):
    images, labels = batch
    calls = count_forwards(model)
    board = open_board(model, batch)
    assert len(calls) == 1  # opening runs the top precision once; the other bit-widths ran on the copy
    names = list(quantized_layers(model))
    assert get_bits(model) == {name: 8 for name in names}  # the background never switched the caller's model
    for bits in BITS:
        cached = board._cache[logits_key(board.images, {name: bits for name in names})]
        assert torch.equal(cached, eval_logits(model, images, bits))  # the copy computes what the model computes


def test_a_uniform_move_runs_no_forward_pass_and_a_layer_change_runs_one(model, batch):
    board = open_board(model, batch)
    calls = count_forwards(model)
    for bits in (6, 4, 2, 8):
        board.slider.value = bits  # what dragging the slider does
        assert board.state["bits"] == get_bits(model) == {name: bits for name in board.layer_selectors}
    assert calls == []
    first = next(iter(board.layer_selectors))
    board.layer_selectors[first].value = 2
    assert len(calls) == 1
    board.layer_selectors[first].value = 8  # back to a setting seen before: from the cache
    assert len(calls) == 1
    expected = eval_logits(model, batch[0], {first: 2})
    assert board._cache[logits_key(board.images, get_bits(model))].shape == expected.shape


def test_without_precompute_each_new_bit_width_runs_once(model, batch):
    board = open_board(model, batch, precompute=False)
    assert board.precompute is None
    calls = count_forwards(model)
    board.slider.value = 4
    board.slider.value = 8
    board.slider.value = 4
    assert len(calls) == 1


def test_switchboard_state_caches_the_weight_errors(model, batch):
    images, labels = batch
    cache = {}
    first = switchboard_state(model, images, labels, 4, cache=cache)
    errors = {key: value for key, value in cache.items() if key[0] == "quant_error"}
    assert len(errors) == len(quantized_layers(model))
    assert {key[2] for key in errors} == {4} and first["quant_error"] == {key[1]: v for key, v in errors.items()}
    layer = quantized_layers(model)["convs.1"]
    codes, step = layer.weight_codes()
    top_codes, top_step = layer.weight_quantizer.codes(layer.weight, 8)
    by_hand = float((codes * step.view(-1, 1, 1, 1) - top_codes * top_step.view(-1, 1, 1, 1)).norm()
                    / (top_codes * top_step.view(-1, 1, 1, 1)).norm())
    assert first["quant_error"]["convs.1"] == pytest.approx(by_hand, rel=1e-6)


class GateControl:
    """Events shared by a gate and its deep copies."""

    def __init__(self):
        self.entered, self.release = threading.Event(), threading.Event()

    def __deepcopy__(self, memo):
        return self


class Gate(nn.Module):
    """Identity that blocks, when armed, until released: holds a background forward pass half way."""

    def __init__(self):
        super().__init__()
        self.armed, self.control = False, GateControl()

    def forward(self, x):
        if self.armed:
            self.control.entered.set()
            assert self.control.release.wait(30)
        return x


class GatedNet(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.gate, self.inner = Gate(), inner

    def forward(self, x):
        return self.inner(self.gate(x))


def test_claim_waits_for_the_running_job_and_takes_over_the_rest(batch):
    images, _ = batch
    model = GatedNet(small_model(images))
    names = list(quantized_layers(model))
    jobs = [(logits_key(images, {n: b for n in names}), b) for b in (6, 4, 2)]
    cache = {}
    worker = BackgroundLogits(model, images, jobs, cache)
    worker._model.gate.armed = True  # the copy's gate: the caller's model runs freely
    gate = worker._model.gate.control
    worker.start()
    assert gate.entered.wait(30)  # the 6-bit job is running
    assert worker.claim(jobs[1][0]) is None  # 4 bits not started: the caller computes it, the worker skips it
    results = {}
    waiter = threading.Thread(target=lambda: results.setdefault("six", worker.claim(jobs[0][0])))
    waiter.start()
    time.sleep(0.2)
    assert "six" not in results  # waiting for the running job
    gate.release.set()
    waiter.join(30)
    assert worker.wait(30)
    assert torch.equal(results["six"], eval_logits(model, images, 6))
    assert jobs[1][0] not in cache and torch.equal(cache[jobs[2][0]], eval_logits(model, images, 2))


def test_measure_switchboard_latency_reports_ratios_and_goals(model, batch):
    fp32 = SmallNet().eval()
    result = measure_switchboard_latency(model, *batch, fp32_model=fp32, rounds=1, layer_moves=2)
    assert result["uniform_moves"] == len(BITS) and result["per_layer_moves"] == 2
    assert result["images"] == 24 and result["forward_ms"] > 0 and result["fp32_forward_ms"] > 0
    assert 0 < result["uniform_per_forward"] and 0 < result["per_layer_per_fp32_forward"]
    assert result["uniform_goal_met"] == (result["uniform_move_ms"] <= 150.0)
    assert result["per_layer_goal_met"] == (result["per_layer_extra_ms"] <= 150.0)
    assert result["messages_per_uniform_move"] > 0 and result["bytes_per_layer_move"] > 0
    assert set(get_bits(model).values()) == {8}  # left at the top bit-width


# ---------------------------------------------------------------- least data to the browser


def sent_by(board, action):
    """Messages each widget of ``board`` sends during ``action``: {widget id: [message data, ...]}."""
    sent = {}
    original = ipywidgets.Widget._send

    def record(widget, msg, buffers=None):
        sent.setdefault(id(widget), []).append(msg)

    ipywidgets.Widget._send = record
    try:
        action()
    finally:
        ipywidgets.Widget._send = original
    return sent


def test_a_move_sends_only_what_changed(model, batch):
    board = open_board(model, batch)
    names = list(board.layer_selectors)
    board.update(bits=8, layer=names[0])
    sent = sent_by(board, lambda: setattr(board.layer_selectors[names[2]], "value", 4))
    assert id(board.histogram_figure) not in sent  # the histogram's layer kept its bits: nothing to send
    updates = [m["state"]["_py2js_update"] for m in sent[id(board.error_figure)]
               if m["state"].get("_py2js_update")]
    assert len(updates) == 1  # one batched message for the error chart
    assert set(updates[0]["style_data"]) <= {"y", "text", "marker.color", "marker.line.width"}
    assert "x" not in updates[0]["style_data"]  # the layer names did not change
    with count_widget_messages() as record:
        board.update(bits=8)
        board.update(bits=8)  # no change at all: nothing of the figures is sent
    again = sent_by(board, lambda: board.update(bits=8))
    assert not any(id(figure) in again for figure in board.figures) and record["messages"] > 0


# ---------------------------------------------------------------- widgets tell the truth (issue 13 item 7)


def test_opening_at_an_allocation_shows_mixed_not_a_uniform_bit_width(model, batch):
    names = list(quantized_layers(model))
    allocation = {names[0]: 8, names[1]: 2, names[2]: 4}
    board = open_board(model, batch, bits=allocation, allocation_label="searched allocation")
    assert get_bits(model) == board.state["bits"] == allocation
    assert board.slider.value == MIXED and board.slider.label == "mixed" and board.is_mixed
    assert "labkit-mixed" in board.slider._dom_classes
    assert "mixed: avg 4.67 bits" in board.mixed_label.value and "searched allocation" in board.mixed_label.value
    assert board.allocation_button.description == "searched allocation"
    assert board.allocation_button.layout.display is None and board.allocation_button.disabled  # already there
    assert "This is the searched allocation" in board.readout.value
    # placed by its average, 4.67 bits: between 4 and 6, so ArrowLeft lowers and ArrowRight raises the precision
    assert [value for _, value in board.slider.options] == [2, 4, MIXED, 6, 8]


def test_the_first_move_keeps_the_allocation_one_click_away(model, batch):
    names = list(quantized_layers(model))
    allocation = {names[0]: 8, names[1]: 2, names[2]: 4}
    board = open_board(model, batch, bits=allocation, allocation_label="searched allocation")
    at_allocation = board.state["accuracy"]
    board.slider.value = 4  # the first move
    assert get_bits(model) == {name: 4 for name in names}
    assert board.slider.value == 4 and [v for _, v in board.slider.options] == sorted(BITS)
    assert board.mixed_label.value == "" and "labkit-mixed" not in board.slider._dom_classes
    assert not board.allocation_button.disabled
    assert "one click away: press “searched allocation”" in board.readout.value
    board.allocation_button.click()  # what pressing the button does
    assert get_bits(model) == board.state["bits"] == allocation
    assert board.slider.value == MIXED and board.state["accuracy"] == at_allocation
    assert board.allocation_button.disabled


def test_per_layer_changes_that_end_uniform_move_the_slider_back(model, batch):
    board = open_board(model, batch)
    names = list(board.layer_selectors)
    board.layer_selectors[names[0]].value = 4
    assert board.slider.value == MIXED
    for name in names[1:]:
        board.layer_selectors[name].value = 4
    assert board.slider.value == 4 and board.slider.label == "4 bits" and not board.is_mixed
    assert MIXED not in [v for _, v in board.slider.options]


def test_a_uniform_bit_width_off_the_slider_is_not_shown_as_a_slider_position(model, batch):
    board = open_board(model, batch, bit_choices=(8, 4))
    board.update(layer_bits={name: 2 for name in board.layer_selectors})
    assert board.slider.value == MIXED and board.slider.label == "all 2 bits"
    assert "uniform, off the slider: avg 2.00 bits" in board.mixed_label.value
    assert [v for _, v in board.slider.options] == [MIXED, 4, 8]  # 2 bits: below every slider position
    board.update(layer_bits={name: 6 for name in board.layer_selectors})
    assert [v for _, v in board.slider.options] == [4, MIXED, 8] and board.slider.label == "all 6 bits"


def test_the_mixed_position_follows_the_average_bits(model, batch):
    board = open_board(model, batch)
    names = list(board.layer_selectors)
    assert len(names) == 3
    cases = (((2, 8, 8), [2, 4, 6, MIXED, 8]),   # average 6.00: after 6 (at or below it), before 8
             ((2, 2, 8), [2, 4, MIXED, 6, 8]),   # 4.00
             ((6, 4, 2), [2, 4, MIXED, 6, 8]),   # 4.00
             ((8, 4, 4), [2, 4, MIXED, 6, 8]),   # 5.33
             ((2, 2, 4), [2, MIXED, 4, 6, 8]))   # 2.67
    for layer_bits, options in cases:
        board.update(layer_bits=dict(zip(names, layer_bits)))
        assert [v for _, v in board.slider.options] == options, layer_bits
        assert board.slider.value == MIXED and board.slider.label == "mixed"


def test_allocation_errors_and_titles(model, batch):
    names = list(quantized_layers(model))
    with pytest.raises(LabkitError, match="no quantized layer named \\['nope'\\]"):
        precision_switchboard(model, *batch, bits={"nope": 2})
    with pytest.raises(BitWidthError):
        precision_switchboard(model, *batch, bits={names[0]: 3})
    board = open_board(model, batch, bits=4)
    assert board.slider.value == 4 and board.allocation is None
    assert board.allocation_button.layout.display == "none"
    with pytest.raises(LabkitError, match="without an allocation"):
        board.restore_allocation()
    assert board.mixed_box.titles == (ACCORDION_TITLE,) == ("Per-layer bit-widths",)


def test_the_tie_buttons_are_as_wide_as_their_labels():
    explorer = precision_explorer(torch.linspace(-1, 1, 50), 0.01)
    assert explorer.tie_toggle.style.button_width == "auto"
    assert explorer.tie_toggle.layout.width == "auto"
    assert explorer.children[0].layout.flex_flow == "row wrap"  # slider and buttons wrap instead of squeezing


# ---------------------------------------------------------------- the error chart at the top precision (item 6)


def test_the_error_chart_is_not_a_blank_axis_at_the_stored_precision(model, batch):
    images, labels = batch
    state = switchboard_state(model, images, labels, 8)
    figure = quant_error_figure(state)
    assert list(figure.data[0].y) == [0.0] * len(state["quant_error"])
    note = figure.layout.annotations[0]
    assert note.visible and "error is 0 by definition" in note.text and "stored INT8" in note.text
    assert figure.layout.yaxis.showticklabels is False  # no scale under bars that are all 0
    assert figure.layout.yaxis.title.text == "relative error" and figure.layout.xaxis.title.text
    low = switchboard_state(model, images, labels, 4)
    bars = quant_error_bars(low)
    assert bars["yaxis_type"] == "linear" and bars["note"] == "" and bars["yaxis_showticklabels"]
    assert bars["yaxis_range"] == [0.0, pytest.approx(1.15 * max(low["quant_error"].values()))]


def test_small_errors_against_fp32_get_a_log_axis(model, batch):
    images, labels = batch
    fp32 = {key: value + 1e-4 * torch.randn_like(value) if key.endswith("weight") else value
            for key, value in model.state_dict().items()}
    names = list(quantized_layers(model))
    state = switchboard_state(model, images, labels, {names[0]: 8, names[1]: 2, names[2]: 8}, reference=fp32)
    errors = list(state["quant_error"].values())
    assert min(errors) > 0 and max(errors) / min(errors) > 20
    figure = quant_error_figure(state)
    assert figure.layout.yaxis.type == "log" and "log scale" in figure.layout.yaxis.title.text
    low, high = figure.layout.yaxis.range
    assert low < torch.tensor(min(errors)).log10() and high > torch.tensor(max(errors)).log10()
    assert not figure.layout.annotations[0].visible
    uniform = switchboard_state(model, images, labels, 8, reference=fp32)
    assert quant_error_bars(uniform)["yaxis_type"] == "linear"  # all small and alike: a linear axis from 0
    assert max(uniform["quant_error"].values()) > 0


def test_the_board_updates_the_error_axis_in_place(model, batch):
    board = open_board(model, batch)
    assert board.error_figure.layout.annotations[0].visible  # opens at 8 bits: all errors 0, said so
    board.slider.value = 2
    assert not board.error_figure.layout.annotations[0].visible and board.error_figure.layout.yaxis.showticklabels
    assert board.error_figure.layout.yaxis.range[1] == pytest.approx(1.15 * max(board.state["quant_error"].values()))


# ---------------------------------------------------------------- in a real kernel


KERNEL_CODE = """
import json, threading, time, torch
from torch import nn
import labkit
from labkit.widgets import precision_switchboard

class Control:  # shared by the model and the background's deep copy
    def __init__(self):
        self.armed, self.entered, self.release = False, threading.Event(), threading.Event()
    def __deepcopy__(self, memo):
        return self

class Gate(nn.Module):  # holds the background's first forward pass half way until the next cell releases it
    def __init__(self, control):
        super().__init__()
        self.control = control
    def forward(self, x):
        if self.control.armed and threading.current_thread() is not threading.main_thread():
            self.control.entered.set()
            self.control.release.wait(60)
        return x

torch.manual_seed(0)
control = Control()
net = nn.Sequential(Gate(control), *[m for i in range(6) for m in (nn.Conv2d(3 if i == 0 else 32, 32, 3, padding=1),
                    nn.ReLU())], nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
images = torch.randn(64, 3, 32, 32)
model = labkit.quantize_model(net, (8, 6, 4, 2), example_input=images[:2])
for b in (8, 6, 4, 2):
    labkit.set_bits(model, b); model.eval(); model(images)
control.armed = True
start = time.perf_counter()
board = precision_switchboard(model, images, torch.zeros(64, dtype=torch.long))
opened = time.perf_counter() - start
"""


def test_the_precompute_thread_does_not_block_or_deadlock_ipykernel():
    """The kernel runs the next cells while the background thread is inside a forward pass, and a slider move in the
    main thread afterwards (its own forward passes, OpenMP threads and all) completes."""
    jupyter_client = pytest.importorskip("jupyter_client")
    manager = jupyter_client.KernelManager(kernel_name="python3")
    manager.start_kernel(env={**os.environ, "OMP_NUM_THREADS": "2"}, cwd=str(Path(__file__).resolve().parents[1]))
    client = manager.client()
    client.start_channels()
    outputs = []
    try:
        client.wait_for_ready(timeout=120)

        def run(code: str, timeout: float = 120) -> float:
            start = time.perf_counter()
            reply = client.execute_interactive(textwrap.dedent(code), timeout=timeout, output_hook=outputs.append)
            assert reply["content"]["status"] == "ok", reply["content"]
            return time.perf_counter() - start

        run(KERNEL_CODE)
        run("assert control.entered.wait(60); print(json.dumps({'busy': not board.precompute.done.is_set()}))")
        run("control.release.set(); assert board.precompute.wait(120); board.slider.value = 2; "
            "board.layer_selectors[next(iter(board.layer_selectors))].value = 8; "
            "print(json.dumps({'bits': sorted(set(board.state['bits'].values())), 'opened_s': opened}))")
        printed = [json.loads(m["content"]["text"]) for m in outputs
                   if m["msg_type"] == "stream" and m["content"]["name"] == "stdout"]
        assert printed[0] == {"busy": True}  # the cell ran while the background was half way through a forward
        assert printed[1]["bits"] == [2, 8]
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
