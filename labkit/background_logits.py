"""Logits of a model at a few bit settings, computed in a background thread (the live switchboard's precompute).

The switchboard (:mod:`labkit.widgets`) opens at once and computes the trained uniform bit-widths behind it, so a
later uniform slider move only reads a cache. The work runs on a private ``copy.deepcopy`` of the model: the
caller's model never changes bit-width under another cell, and nothing is shared between the two threads but
the cache dict. PyTorch releases the GIL inside its operators, so the kernel's main thread stays responsive
while a forward pass runs here (``tests/test_switchboard_live.py`` checks this in a real ipykernel).
"""
from __future__ import annotations

import atexit
import contextlib
import copy
import threading
import weakref

import torch

from labkit.convert import set_bits


@torch.no_grad()
def eval_logits(model: torch.nn.Module, images: torch.Tensor, bits) -> torch.Tensor:
    """``model``'s FP32 logits (on the CPU) for ``images`` at ``bits`` (an int or ``{layer: bits}``), in eval mode.

    The model is left at ``bits`` and in the train/eval mode it had.
    """
    set_bits(model, bits)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        return model(images.to(device)).float().cpu()
    finally:
        model.train(was_training)


_RUNNING: "weakref.WeakSet[BackgroundLogits]" = weakref.WeakSet()


@atexit.register
def _stop_all_at_exit() -> None:
    """Let running workers finish their forward pass before the interpreter goes (a daemon thread killed inside a
    PyTorch operator aborts the process with "terminate called without an active exception")."""
    for worker in list(_RUNNING):
        worker.stop()
        worker._thread.join(timeout=60)


class BackgroundLogits:
    """Fills ``cache[key]`` with :func:`eval_logits` of a copy of ``model`` for each ``(key, bits)`` of ``jobs``.

    One daemon thread works through the jobs in order. The main thread asks for a result with :meth:`claim`: a
    finished one comes back at once; the one being computed right now is waited for (at most one forward pass); one
    not started yet is handed back to the caller (``None``), who computes it, and the thread then skips it. While
    the caller computes inside :meth:`paused`, the thread starts no new job, so the two do not share the CPU.
    """

    def __init__(self, model: torch.nn.Module, images: torch.Tensor, jobs, cache: dict):
        self.images = images
        self.jobs = list(jobs)
        self.cache = cache
        self.error: BaseException | None = None
        self._model = copy.deepcopy(model)
        self._lock = threading.Lock()
        self._claimed: set = set()
        self._current = None
        self._current_done = threading.Event()
        self._idle = threading.Event()  # set while the main thread computes nothing
        self._idle.set()
        self._stop = threading.Event()
        self.done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="labkit-switchboard-precompute", daemon=True)

    def start(self) -> "BackgroundLogits":
        _RUNNING.add(self)
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            for key, bits in self.jobs:
                self._idle.wait()
                if self._stop.is_set():
                    break
                with self._lock:
                    if key in self.cache or key in self._claimed:
                        continue
                    self._current, self._current_done = key, threading.Event()
                try:
                    self.cache[key] = eval_logits(self._model, self.images, bits)
                finally:
                    with self._lock:
                        self._current = None
                        self._current_done.set()
        except BaseException as error:  # reported by wait(); the main thread then computes what is missing
            self.error = error
        finally:
            self._model = None  # the copy is only needed while there is work
            self.done.set()

    def claim(self, key):
        """The logits of ``key``: from the cache, after waiting for the job running now, or ``None`` (compute it)."""
        with self._lock:
            if key in self.cache:
                return self.cache[key]
            if key != self._current:
                self._claimed.add(key)
                return None
            running = self._current_done
        running.wait()
        return self.cache.get(key)

    @contextlib.contextmanager
    def paused(self):
        """Hold back the next job while the caller computes (the job running now, if any, finishes)."""
        self._idle.clear()
        try:
            yield
        finally:
            self._idle.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until every job is done (True) or ``timeout`` seconds pass (False); re-raise the thread's error."""
        finished = self.done.wait(timeout)
        if self.error is not None:
            raise self.error
        return finished

    def stop(self) -> None:
        """Start no further job (the one running now finishes)."""
        self._stop.set()
        self._idle.set()
