"""A slider that drives onnxruntime: one switchable ONNX file, the precision picked at run time (notebook 06).

:func:`switchable_state` is the plain callback (tests call it); :class:`SwitchableOnnxPlayer` is the thin
ipywidgets wrapper: a bit-width slider, a readout and a table of sample predictions. Every move runs the *same*
file in onnxruntime with another value of its ``bits`` input (:mod:`labkit.export_switchable`); nothing is
re-exported and PyTorch is only consulted, once per bit-width, for the agreement the readout reports.
"""
from __future__ import annotations

import html
import time
from pathlib import Path

import ipywidgets as widgets
import numpy as np
import torch

from labkit.errors import BitWidthError
from labkit.export_switchable import SwitchableSession


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


@torch.no_grad()
def _pytorch_top1(model, images: torch.Tensor, bits: int) -> np.ndarray:
    from labkit.convert import get_bits, set_bits

    before = get_bits(model)
    try:
        set_bits(model, bits)
        return model.eval()(images).argmax(1).cpu().numpy()
    finally:
        set_bits(model, before)


def switchable_state(session: SwitchableSession, images: torch.Tensor, labels: torch.Tensor, bits: int, *,
                     class_names=None, samples: int = 8, model=None) -> dict:
    """What the player shows at ``bits``: onnxruntime's accuracy on the batch, the run time of that call, the
    first ``samples`` predictions, and with ``model`` the top-1 agreement with PyTorch at the same bits."""
    if bits not in session.bit_set:
        raise BitWidthError(f"bits={bits!r}: the file was trained at {session.bit_set} bits.")
    start = time.perf_counter()
    logits = session.run(images, bits)
    seconds = time.perf_counter() - start
    labels = labels.cpu().numpy()
    top1 = logits.argmax(1)
    confidence = _softmax(logits).max(1)

    def name_of(index: int) -> str:
        return class_names[index] if class_names is not None else str(index)

    state = {"bits": bits, "accuracy": float((top1 == labels).mean()), "images": len(labels), "seconds": seconds,
             "file": session.path.name, "file_bytes": session.path.stat().st_size,
             "predictions": [{"label": name_of(int(labels[i])), "predicted": name_of(int(top1[i])),
                              "confidence": float(confidence[i]), "correct": bool(top1[i] == labels[i])}
                             for i in range(min(samples, len(labels)))]}
    if model is not None:
        state["agreement"] = float((top1 == _pytorch_top1(model, images, bits)).mean())
    return state


def _readout(state: dict) -> str:
    text = (f"<b>{state['bits']}-bit</b> from one file, <code>{html.escape(state['file'])}</code> "
            f"({state['file_bytes'] / 1024:.0f} KiB), in onnxruntime: Accuracy {100 * state['accuracy']:.1f} % on "
            f"{state['images']} test images (this run: {1000 * state['seconds']:.0f} ms)")
    if "agreement" in state:
        text += f"; top-1 agreement with the PyTorch model at {state['bits']} bits {100 * state['agreement']:.1f} %"
    return text + "."


def _predictions_table(state: dict) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(p['label'])}</td><td style='color:{'#1a7f37' if p['correct'] else '#cf222e'}'>"
        f"{html.escape(p['predicted'])}</td><td>{100 * p['confidence']:.0f} %</td></tr>" for p in state["predictions"])
    return ("<table><thead><tr><th>image's class</th><th>onnxruntime predicts</th><th>confidence</th></tr></thead>"
            f"<tbody>{rows}</tbody></table>")


class SwitchableOnnxPlayer(widgets.VBox):
    """A bit-width slider over one switchable ONNX file; each move is one onnxruntime run at the new ``bits``.

    ``update(bits)`` moves it from code and returns the state (:func:`switchable_state`). States are cached per
    bit-width, so moving back is instant; the readout's run time is that of the first run at each bit-width.
    CSS hooks: ``labkit-onnx-slider``, ``labkit-onnx-readout``, ``labkit-onnx-predictions``.
    """

    def __init__(self, path, images, labels, *, class_names=None, samples: int = 8, model=None,
                 bits: int | None = None):
        self.session = SwitchableSession(path)
        self.images, self.labels = images, labels
        self.options = dict(class_names=class_names, samples=samples, model=model)
        self._cache: dict[int, dict] = {}
        start = self.session.bit_set[0] if bits is None else bits
        self.slider = widgets.SelectionSlider(options=[(f"{b}-bit", b) for b in sorted(self.session.bit_set)],
                                              value=start, description="bits input", continuous_update=False,
                                              layout=widgets.Layout(width="420px"))
        self.readout = widgets.HTML()
        self.predictions = widgets.HTML()
        self.slider.add_class("labkit-onnx-slider")
        self.readout.add_class("labkit-onnx-readout")
        self.predictions.add_class("labkit-onnx-predictions")
        self.state = self._show(start)
        self.slider.observe(lambda change: self._show(change["new"]), names="value")
        super().__init__(children=[self.slider, self.readout, self.predictions])

    def _show(self, bits: int) -> dict:
        if bits not in self._cache:
            self._cache[bits] = switchable_state(self.session, self.images, self.labels, bits, **self.options)
        self.state = self._cache[bits]
        self.readout.value = _readout(self.state)
        self.predictions.value = _predictions_table(self.state)
        return self.state

    def update(self, bits: int) -> dict:
        """Move the slider to ``bits`` (a trained bit-width of the file) and return what it shows."""
        if bits not in self.session.bit_set:
            raise BitWidthError(f"bits={bits!r}: the file was trained at {self.session.bit_set} bits.")
        self.slider.value = bits  # the observer runs the file
        return self._show(bits)


def switchable_player(path: str | Path, images, labels, *, class_names=None, samples: int = 8, model=None,
                      bits: int | None = None) -> SwitchableOnnxPlayer:
    """A :class:`SwitchableOnnxPlayer` over the switchable file at ``path`` (see the class)."""
    return SwitchableOnnxPlayer(path, images, labels, class_names=class_names, samples=samples, model=model,
                                bits=bits)
