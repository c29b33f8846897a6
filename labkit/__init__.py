"""labkit — a lab for *Nearly Lossless Adaptive Bit Switching* (Double Rounding, ALRS, HASB).

The public names below are stable (DESIGN.md).
"""
from __future__ import annotations

from labkit.convert import get_bits, quantize_model, quantized_layers, set_bits, to_supernet, trained_bits
from labkit.hasb.hessian import hessian_traces
from labkit.hasb.search import search_bits
from labkit.storage import load_int, save_int
from labkit.train.alrs import alrs_factors
from labkit.errors import BitWidthError, CheckpointError, DataLayoutError, DataNotFoundError, LabkitError

__version__ = "0.1.0"

__all__ = [
    "BitWidthError",
    "CheckpointError",
    "DataLayoutError",
    "DataNotFoundError",
    "LabkitError",
    "__version__",
    "alrs_factors",
    "get_bits",
    "hessian_traces",
    "load_int",
    "quantize_model",
    "quantized_layers",
    "save_int",
    "search_bits",
    "set_bits",
    "to_supernet",
    "trained_bits",
]
