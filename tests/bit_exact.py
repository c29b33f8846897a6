"""Bit-for-bit comparison helpers shared by the fake-quant tests (``test_fake_quant_paths``, ``test_relu_absorption``,
``test_relu_pairing``): the raw bits of a float tensor, so that -0.0 and +0.0 differ and NaN payloads count, and a
fixture that fails a test whose compiled kernels fell back to eager."""
import warnings

import pytest
import torch

from labkit.quant import lsq


def bits_of(t: torch.Tensor) -> torch.Tensor:
    """The raw bits of a float tensor (so -0.0 and +0.0 differ, and NaN payloads count)."""
    return t.detach().contiguous().view({torch.float32: torch.int32, torch.float64: torch.int64,
                                          torch.bfloat16: torch.int16, torch.float16: torch.int16}[t.dtype])


def assert_same_bits(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    """Same type, dtype and shape, and the same bits (integer tensors, e.g. a BN's step counter: the same values)."""
    assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor), f"{what}: {type(a)} vs {type(b)}"
    assert a.dtype == b.dtype and a.shape == b.shape, \
        f"{what}: {a.dtype} {tuple(a.shape)} vs {b.dtype} {tuple(b.shape)}"
    if not a.is_floating_point():
        assert torch.equal(a, b), what
        return
    same = bits_of(a) == bits_of(b)
    assert bool(same.all()), f"{what}: {int((~same).sum())} of {same.numel()} elements differ, e.g. " \
                             f"{a.flatten()[~same.flatten()][:4].tolist()} vs {b.flatten()[~same.flatten()][:4].tolist()}"


@pytest.fixture
def no_compiler_fallback():
    """A compiler fallback (the one-line RuntimeWarning of :mod:`labkit.quant.lsq`) is a failure here."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        yield
    assert lsq.compile_error() is None
