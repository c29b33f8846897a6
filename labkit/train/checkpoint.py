"""Training checkpoints: written atomically, loaded without running code, resumed exactly.

A training checkpoint holds everything a resumed run needs to continue as if it had never stopped:
model, optimizer, ALRS and KD state, the position in the data order (epoch, batch), the history of
metrics, and the random number generator states. It is written to a temporary file in the same folder
and renamed over the old one, so a run killed at any moment leaves either the previous or the new
checkpoint, never a torn one. Loading uses ``torch.load(weights_only=True)``: tensors and plain
containers only, no pickled code.
"""
from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch

from labkit.errors import CheckpointError


def atomic_torch_save(obj, path) -> Path:
    """``torch.save`` to a temporary file beside ``path``, flushed to disk, then renamed over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(obj, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return path


def load_training_checkpoint(path) -> dict:
    """Read a training checkpoint, or raise one :class:`CheckpointError` that says what to do."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no training checkpoint at {path}; start the run without --resume, or check --out.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for damaged files
        raise CheckpointError(
            f"{path} is not a readable training checkpoint ({type(error).__name__}: {str(error)[:200]}); "
            "delete it to restart the run from scratch."
        ) from None
    if not isinstance(state, dict) or state.get("format") != "labkit-train/1":
        raise CheckpointError(f"{path} is not a labkit training checkpoint; point --out at a labkit run folder.")
    return state


def capture_rng() -> dict:
    """The states of Python's, NumPy's and PyTorch's (CPU and CUDA) generators, as tensors and lists."""
    python_state = random.getstate()
    numpy_state = np.random.get_state()
    state = {
        "python": [python_state[0], list(python_state[1]), python_state[2]],
        "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].copy()), int(numpy_state[2]), int(numpy_state[3]),
                  float(numpy_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    """Put back the generator states recorded by :func:`capture_rng`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch."""
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)
