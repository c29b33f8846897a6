"""How fast the live precision switchboard answers a move, kernel side, next to one forward pass (issue 11).

:func:`measure_switchboard_latency` opens a :class:`~labkit.widgets.PrecisionSwitchboard`, waits for its background
precompute, then moves its controls as a user does (``slider.value = b`` runs the same observers a browser
message does) and times each move until the kernel has sent every update. Each move is timed right after one
forward pass of the same batch (the quantized model at its top bit-width, and an FP32 model when given), so the
ratios compare times taken side by side in one process, under the same load. It also counts the widget messages
each move sends and their JSON size (what travels to the browser, without the Jupyter message envelope). The
browser's own rendering time is not in these numbers (the real-browser test measures end to end).
"""
from __future__ import annotations

import contextlib
import copy
import json
import statistics
import time

import ipywidgets
import torch

from labkit.background_logits import eval_logits
from labkit.convert import quantized_layers, set_bits

# Goals of issue 11's table: a uniform move within 150 ms; a per-layer change within one forward pass + 150 ms.
UNIFORM_GOAL_MS = 150.0
PER_LAYER_EXTRA_MS = 150.0


@contextlib.contextmanager
def count_widget_messages():
    """Count every ipywidgets message sent while inside (``record["messages"]``, ``record["bytes"]``).

    Messages still go out as usual (the original ``Widget._send`` is called); ``bytes`` is the JSON size of each
    message's data plus its binary buffers.
    """
    record = {"messages": 0, "bytes": 0}
    original = ipywidgets.Widget._send

    def counting(widget, msg, buffers=None):
        record["messages"] += 1
        record["bytes"] += len(json.dumps(msg, default=str)) + sum(len(memoryview(b).cast("B")) for b in buffers or ())
        return original(widget, msg, buffers)

    ipywidgets.Widget._send = counting
    try:
        yield record
    finally:
        ipywidgets.Widget._send = original


def _time_ms(action) -> float:
    start = time.perf_counter()
    action()
    return 1000.0 * (time.perf_counter() - start)


def measure_switchboard_latency(model, images, labels, *, fp32_model=None, rounds: int = 3, layer_moves: int = 6,
                                precompute_timeout_s: float = 600.0, **switchboard_options) -> dict:
    """Kernel-side time of the switchboard's moves, as ratios to one forward pass of the batch (issue 11).

    Opens ``precision_switchboard(model, images, labels, **switchboard_options)``, waits for the precompute of the
    trained uniform bit-widths, then makes ``rounds`` passes over the slider's bit-widths (uniform moves, from the
    cache) and ``layer_moves`` per-layer changes (each a setting not seen before: one more layer to the lowest
    bit-width, so each needs one forward pass). Before each move it times one forward pass of a copy of ``model``
    at its top bit-width (and of ``fp32_model`` when given, e.g. ``labkit.load_shipped("cifar10-resnet20-fp32")``).

    The model is left at its top bit-width.

    Returns a dict of medians in milliseconds: ``open_ms`` (until the widget exists; the first switchboard of a
    process also pays plotly's one-time ``FigureWidget`` import, about 2 s here), ``precompute_ms`` (after
    that, until the background is done), ``forward_ms`` (the quantized model), ``fp32_forward_ms`` (or None),
    ``uniform_move_ms`` / ``uniform_move_max_ms``, ``per_layer_move_ms``, ``per_layer_extra_ms`` (a per-layer move
    minus the forward pass timed just before it); ratios to the forward pass timed just before each move, median
    over moves (``uniform_per_forward``, ``per_layer_per_forward``, ``uniform_per_fp32_forward``,
    ``per_layer_per_fp32_forward``); the goals (``uniform_goal_ms`` = 150, ``per_layer_extra_goal_ms`` = 150)
    and whether they are met; the messages and JSON bytes each kind of move sends; and the setting (``images``,
    ``threads``, ``device``).
    """
    from labkit.widgets import precision_switchboard

    if rounds < 1 or layer_moves < 1:
        raise ValueError(f"rounds={rounds} and layer_moves={layer_moves} must both be at least 1.")
    images = torch.as_tensor(images)
    top_copy = copy.deepcopy(model)
    top = max(next(iter(quantized_layers(model).values())).bit_set)
    fp32 = fp32_model.eval() if fp32_model is not None else None

    def forward_times() -> tuple[float, float | None]:
        quantized = _time_ms(lambda: eval_logits(top_copy, images, top))
        if fp32 is None:
            return quantized, None
        with torch.no_grad():
            device = next(fp32.parameters()).device
            return quantized, _time_ms(lambda: fp32(images.to(device)).float().cpu())

    forward_times()  # warm-up: first calls allocate
    board = None

    def open_board():
        nonlocal board
        board = precision_switchboard(model, images, labels, **switchboard_options)

    open_ms = _time_ms(open_board)
    precompute_ms = 0.0
    if board.precompute is not None:
        precompute_ms = _time_ms(lambda: board.precompute.wait(precompute_timeout_s))
        if not board.precompute.done.is_set():
            raise TimeoutError(f"the switchboard's precompute took more than {precompute_timeout_s} s.")

    forwards, fp32_forwards, uniform, per_layer = [], [], [], []
    uniform_traffic, layer_traffic = [], []

    def move(action, times: list, traffic: list) -> None:
        quantized, full = forward_times()
        forwards.append(quantized)
        if full is not None:
            fp32_forwards.append(full)
        with count_widget_messages() as record:
            times.append(_time_ms(action))
        traffic.append(record)

    positions = [b for b in board.choices]
    for _ in range(rounds):
        for bits in positions[1:] + positions[:1]:  # every position, starting away from where the board is
            move(lambda: setattr(board.slider, "value", bits), uniform, uniform_traffic)
    names = list(board.layer_selectors)
    low = min(board.choices)
    board.update(bits=max(board.choices))
    for name in names[:layer_moves]:
        move(lambda: setattr(board.layer_selectors[name], "value", low), per_layer, layer_traffic)

    # Ratios and differences per move against the forward pass timed just before it, then the median: robust to
    # load that changes during the measurement (other processes on the same cores).
    uniform_forwards, layer_forwards = forwards[:len(uniform)], forwards[len(uniform):]
    median = statistics.median
    forward_ms = median(forwards)
    fp32_ms = median(fp32_forwards) if fp32_forwards else None
    uniform_ms, per_layer_ms = median(uniform), median(per_layer)
    extra_ms = median(move - forward for move, forward in zip(per_layer, layer_forwards))

    def per_fp32(times: list, offset: int):
        if not fp32_forwards:
            return None
        return median(t / f for t, f in zip(times, fp32_forwards[offset:]))

    result = {
        "images": int(images.shape[0]),
        "threads": torch.get_num_threads(),
        "device": str(next(model.parameters()).device),
        "open_ms": open_ms,
        "precompute_ms": precompute_ms,
        "forward_ms": forward_ms,
        "fp32_forward_ms": fp32_ms,
        "uniform_move_ms": uniform_ms,
        "uniform_move_max_ms": max(uniform),
        "per_layer_move_ms": per_layer_ms,
        "per_layer_extra_ms": extra_ms,
        "uniform_per_forward": median(t / f for t, f in zip(uniform, uniform_forwards)),
        "per_layer_per_forward": median(t / f for t, f in zip(per_layer, layer_forwards)),
        "uniform_per_fp32_forward": per_fp32(uniform, 0),
        "per_layer_per_fp32_forward": per_fp32(per_layer, len(uniform)),
        "uniform_goal_ms": UNIFORM_GOAL_MS,
        "per_layer_extra_goal_ms": PER_LAYER_EXTRA_MS,
        "uniform_goal_met": uniform_ms <= UNIFORM_GOAL_MS,
        "per_layer_goal_met": extra_ms <= PER_LAYER_EXTRA_MS,
        "uniform_moves": len(uniform),
        "per_layer_moves": len(per_layer),
        "messages_per_uniform_move": median(r["messages"] for r in uniform_traffic),
        "bytes_per_uniform_move": median(r["bytes"] for r in uniform_traffic),
        "messages_per_layer_move": median(r["messages"] for r in layer_traffic),
        "bytes_per_layer_move": median(r["bytes"] for r in layer_traffic),
    }
    set_bits(model, top)
    return result
