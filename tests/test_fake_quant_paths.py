"""The fake-quant paths against each other, to the last bit where they promise it (issue 11 item 1).

``"fused"`` (eager: the forward also computes the scale-gradient residual and the mask) must give the same output and
the same gradients, to the last bit (zero signs included), as ``"recompute"`` (whose backward recomputes the codes
from ``x``; it is what the reference tests in ``test_lsq_reference.py`` and ``test_fair_baselines.py`` were written
against, and they run on every path), as ``"compiled"`` and as the default ``"auto"`` (compiled kernels for training
calls on CPU tensors, the eager fused path for evaluation and on CUDA). The compiled kernels sum the scale gradient
inside the kernel in float64 (:func:`labkit.quant.lsq._sum_to_scale`): their output and ``∂/∂x`` are the eager bits,
their scale gradient is the float64 sum of the eager path's own per-element terms, within two float32 steps
(:func:`assert_compiled_agrees`); for bf16/fp16 inputs ATen sums the terms, so every value is the eager bits. Inputs
are built to hit every boundary: exact ties of the first rounding and of the second, codes at and beyond the INT-h and
l-bit bounds, far outliers, zeros of both signs and infinities.
"""
import os
import warnings

import pytest
import torch

from bit_exact import assert_same_bits, bits_of
from labkit.quant import lsq, rounding
from labkit.quant.lsq import code_bounds, fake_quant_path, fake_quantize, use_fake_quant_path
from labkit.quant.rounding import ROUNDING_RULES, shift_round_float


@pytest.fixture(autouse=True)
def default_path_after():
    yield
    use_fake_quant_path(lsq.DEFAULT_PATH)


def boundary_values(scale: torch.Tensor, shape, shift: int, seed: int, dtype=torch.float32) -> torch.Tensor:
    """``x`` on and around every rounding boundary of ``x / s``: whole and half multiples of 2^-j (exact ties of
    both roundings), codes up to ±3·2^8 (far beyond INT-8), random values, ±0 and some infinities."""
    gen = torch.Generator().manual_seed(seed)
    steps = torch.randint(-3 * 256 * 4, 3 * 256 * 4, shape, generator=gen).to(torch.float64) / 4  # k/4: .25 .5 .75
    ties = torch.randint(-300, 300, shape, generator=gen).to(torch.float64) * 2.0 ** max(shift - 1, 0)
    ties = ties + torch.randint(0, 2, shape, generator=gen) * 0.5
    noise = torch.randn(shape, generator=gen, dtype=torch.float64) * 60
    pick = torch.randint(0, 4, shape, generator=gen)
    v = torch.where(pick == 0, steps, torch.where(pick == 1, ties, torch.where(pick == 2, noise, steps.round())))
    x = (v * scale.double()).to(dtype)
    flat = x.view(-1)
    flat[::37] = 0.0
    flat[1::37] = -0.0
    flat[2::401] = float("inf")
    flat[3::401] = float("-inf")
    return x


def run(path: str, x, scale, qmin, qmax, shift, rounding, offset, grad, grad_factor=0.0137):
    use_fake_quant_path(path)
    x = x.detach().clone().requires_grad_()
    scale = scale.detach().clone().requires_grad_()
    out = fake_quantize(x, scale, qmin, qmax, shift=shift, rounding=rounding, grad_factor=grad_factor, offset=offset)
    grad_x, grad_scale = torch.autograd.grad(out, (x, scale), grad)
    return out, grad_x, grad_scale


def scale_gradient_terms(x, scale, qmin, qmax, shift, rounding, offset, grad):
    """The per-element terms of the scale gradient, from the eager recompute path: with a scale of ``x``'s own shape
    (every element the value its scale broadcasts to it) and ``grad_factor`` 1 nothing is summed or multiplied."""
    full = scale.detach().expand(x.shape).clone()
    return run("recompute", x, full, qmin, qmax, shift, rounding, offset, grad, grad_factor=1.0)[2]


def assert_compiled_agrees(compiled, eager, terms, scale, what, grad_factor=0.0137):
    """The compiled path against an eager one: output and ``∂/∂x`` bit for bit; the scale gradient is the float64 sum
    of the per-element terms (:func:`scale_gradient_terms`) rounded once to float32, within two float32 steps (the
    sum is rounded to float32 before the factor ``g``, and the product rounds again), and the eager float32 sum lies
    within its own rounding error of the same sum (``g > 0``)."""
    for name, a, b in zip(("output", "grad_x"), compiled, eager):
        assert_same_bits(a, b, f"{what} {name}")
    wide = terms.to(scale.device).double()
    reference = wide.sum_to_size(scale.shape).float() * grad_factor
    torch.testing.assert_close(compiled[2], reference, rtol=2.0 ** -22, atol=0.0, msg=f"{what} grad_scale")
    spread = wide.abs().sum_to_size(scale.shape).float() * grad_factor  # the size of the terms, for eager's error
    assert bool(((eager[2] - reference).abs() <= 1e-6 * spread + 1e-7 * reference.abs()).all()), f"{what} eager sum"


def assert_compiled_agrees_with_fused(x, scale, qmin, qmax, shift, rounding, offset, grad, what):
    """Run the fused and the compiled path (a compiler fallback is a failure) and :func:`assert_compiled_agrees`."""
    fused = run("fused", x, scale, qmin, qmax, shift, rounding, offset, grad)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        compiled = run("compiled", x, scale, qmin, qmax, shift, rounding, offset, grad)
    assert fake_quant_path() == "compiled"
    terms = scale_gradient_terms(x, scale, qmin, qmax, shift, rounding, offset, grad)
    assert_compiled_agrees(compiled, fused, terms, scale, what)
    return compiled


def upstream_gradient(shape, seed, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed + 7)
    grad = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    flat = grad.view(-1)
    flat[::11] = -0.0  # a -0.0 upstream gradient must come back as -0.0 where inside, +0.0 where clipped
    flat[5::13] = 0.0
    return grad


def weight_cases():
    for high, lows in ((8, (8, 6, 4, 2)), (4, (4, 3, 2))):
        for low in lows:
            shift = high - low
            for rounding in ROUNDING_RULES:
                offsets = [0.0] + ([0.5 - 2.0 ** -(shift + 1)] if rounding == "floor" and shift else [])
                for offset in offsets:
                    yield high, low, rounding, offset


@pytest.mark.parametrize("high,low,rounding,offset", list(weight_cases()))
@pytest.mark.parametrize("shape", [(24, 5, 3, 3), (20, 33)], ids=["conv", "linear"])
def test_weight_fake_quant_fused_equals_recompute_bit_for_bit(high, low, rounding, offset, shape):
    shift = high - low
    qmin, qmax = -(1 << (low - 1)), (1 << (low - 1)) - 1
    gen = torch.Generator().manual_seed(low * 31 + shift)
    scale = (torch.rand(shape[0], generator=gen) * 0.01 + 0.001).view(-1, *([1] * (len(shape) - 1)))
    x = boundary_values(scale, shape, shift, seed=low + 100 * shift)
    grad = upstream_gradient(shape, low)
    fused = run("fused", x, scale, qmin, qmax, shift, rounding, offset, grad)
    recompute = run("recompute", x, scale, qmin, qmax, shift, rounding, offset, grad)
    for name, a, b in zip(("output", "grad_x", "grad_scale"), fused, recompute):
        assert_same_bits(a, b, f"{name} at {high}->{low} bits, {rounding}, offset {offset}")


@pytest.mark.parametrize("bits", [8, 6, 4, 2])
@pytest.mark.parametrize("signed", [False, True])
def test_activation_fake_quant_fused_equals_recompute_bit_for_bit(bits, signed):
    qmin, qmax = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    shape = (6, 8, 10, 10)
    scale = torch.tensor(0.0213)
    x = boundary_values(scale, shape, 0, seed=bits)
    if not signed:
        x = torch.where(x > -1, x.abs(), x)  # mostly post-ReLU, some negatives and -0.0 left
    grad = upstream_gradient(shape, bits)
    fused = run("fused", x, scale, qmin, qmax, 0, "half_even", 0.0, grad)
    recompute = run("recompute", x, scale, qmin, qmax, 0, "half_even", 0.0, grad)
    for name, a, b in zip(("output", "grad_x", "grad_scale"), fused, recompute):
        assert_same_bits(a, b, f"activation {name} at {bits} bits, signed={signed}")


def test_paths_agree_on_nan_inputs():
    """NaN in, NaN out at that element, zero weight gradient there, NaN scale gradient, on both paths."""
    scale = torch.full((4, 1), 0.01)
    x = torch.linspace(-2, 2, 4 * 9).view(4, 9)
    x[1, 3] = float("nan")
    grad = torch.ones_like(x)
    fused = run("fused", x, scale, -8, 7, 4, "half_even", 0.0, grad)
    recompute = run("recompute", x, scale, -8, 7, 4, "half_even", 0.0, grad)
    for a, b in zip(fused, recompute):
        assert torch.equal(a.isnan(), b.isnan())
        assert torch.equal(torch.nan_to_num(a), torch.nan_to_num(b))
    assert fused[0][1, 3].isnan() and fused[1][1, 3] == 0 and fused[2][1].isnan() and not fused[2][0].isnan()


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_fused_path_in_float64_and_under_bf16_inputs(dtype):
    """fp64 weights (the reference tests use them) and bf16 activations (autocast): same bits as recompute."""
    shape = (16, 4, 3, 3)
    scale = (torch.rand(16, generator=torch.Generator().manual_seed(3)) * 0.01 + 0.001).view(-1, 1, 1, 1)
    scale = scale.double() if dtype == torch.float64 else scale
    x = boundary_values(scale.float(), shape, 2, seed=5).to(dtype)
    grad = upstream_gradient(shape, 5).to(dtype)
    fused = run("fused", x, scale, -32, 31, 2, "half_even", 0.0, grad)
    recompute = run("recompute", x, scale, -32, 31, 2, "half_even", 0.0, grad)
    assert fused[0].dtype == dtype and fused[1].dtype == dtype and fused[2].dtype == scale.dtype
    for name, a, b in zip(("output", "grad_x", "grad_scale"), fused, recompute):
        assert_same_bits(a, b, f"{name} with {dtype} input")


def test_fused_path_channels_last_and_deterministic_algorithms():
    """A channels_last activation and ``torch.use_deterministic_algorithms(True)``: the same bits on both paths.
    (A channels_last tensor sums its scale gradient in another order than a contiguous one, on either path.)"""
    shape = (4, 16, 6, 6)
    scale = torch.tensor(0.017)
    x = boundary_values(scale, shape, 0, seed=9).abs()
    grad = upstream_gradient(shape, 9)
    plain = run("recompute", x, scale, 0, 15, 0, "half_even", 0.0, grad)
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        deterministic = run("fused", x, scale, 0, 15, 0, "half_even", 0.0, grad)
    finally:
        torch.use_deterministic_algorithms(was)
    for name, a, b in zip(("output", "grad_x", "grad_scale"), deterministic, plain):
        assert_same_bits(a, b, f"deterministic {name}")
    x_last, grad_last = x.to(memory_format=torch.channels_last), grad.to(memory_format=torch.channels_last)
    fused = run("fused", x_last, scale, 0, 15, 0, "half_even", 0.0, grad_last)
    assert fused[0].is_contiguous(memory_format=torch.channels_last)
    terms = scale_gradient_terms(x_last, scale, 0, 15, 0, "half_even", 0.0, grad_last)
    for path in ("recompute", "compiled", "auto"):
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # a compile failure here would be a failure
            other = run(path, x_last, scale, 0, 15, 0, "half_even", 0.0, grad_last)
        if path == "recompute":
            for name, a, b in zip(("output", "grad_x", "grad_scale"), other, fused):
                assert_same_bits(a, b, f"channels_last {name}, {path}")
        else:
            assert_compiled_agrees(other, fused, terms, scale, f"channels_last, {path}")
        if path != "recompute":  # the compiled kernels keep the layout: no conversion before the next conv
            assert other[0].is_contiguous(memory_format=torch.channels_last), path
            assert other[1].is_contiguous(memory_format=torch.channels_last), path


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
@pytest.mark.parametrize("grad_layout", ["channels_last", "contiguous"])
def test_compiled_path_keeps_channels_last_weights_and_their_bits(monkeypatch, device, grad_layout):
    """A channels_last model has channels_last conv weights with per-channel scales (C, 1, 1, 1): Double Rounding
    from 8 bits on the compiled path gives the fused path's bits and layout, the kernels get the NHWC view (not a
    copy), and an upstream gradient in another layout changes nothing."""
    scale = torch.rand(8, generator=torch.Generator().manual_seed(3)).add(0.5).mul(0.006).view(-1, 1, 1, 1)
    weight = boundary_values(scale, (8, 5, 3, 3), 4, seed=31).to(device, memory_format=torch.channels_last)
    grad = upstream_gradient((8, 5, 3, 3), 31).to(device)
    if grad_layout == "channels_last":
        grad = grad.contiguous(memory_format=torch.channels_last)
    scale = scale.to(device)
    fused = run("fused", weight, scale, -8, 7, 4, "half_even", 0.0, grad)
    seen = []
    for name in ("forward", "backward"):
        kernel = lsq._compiled(name)

        def recorded(*args, kernel=kernel, name=name):
            seen.append(args[0 if name == "forward" else 1].is_contiguous())  # the NHWC view is contiguous
            return kernel(*args)
        monkeypatch.setitem(lsq._COMPILED, name, recorded)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        compiled = run("compiled", weight, scale, -8, 7, 4, "half_even", 0.0, grad)
    assert seen == [True, True]
    terms = scale_gradient_terms(weight, scale, -8, 7, 4, "half_even", 0.0, grad)
    assert_compiled_agrees(compiled, fused, terms, scale, "channels_last weight")
    assert compiled[0].is_contiguous(memory_format=torch.channels_last)
    assert compiled[1].is_contiguous(memory_format=torch.channels_last)


def test_a_scale_of_fewer_dimensions_broadcasts_the_same_under_channels_last():
    """A (C, 1, 1) scale on a channels_last (N, C, H, W) tensor with C == H (where a wrong permutation would still
    broadcast): the compiled path gives the fused path's bits."""
    scale = torch.rand(6, generator=torch.Generator().manual_seed(8)).add(0.5).mul(0.01).view(6, 1, 1)
    x = boundary_values(scale, (2, 6, 6, 5), 0, seed=8).abs().to(memory_format=torch.channels_last)
    grad = upstream_gradient((2, 6, 6, 5), 8).to(memory_format=torch.channels_last)
    assert_compiled_agrees_with_fused(x, scale, 0, 15, 0, "half_even", 0.0, grad, "(C, 1, 1) scale")


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
@pytest.mark.parametrize("grad_mode", ["lsq", "reference"])
def test_auto_compiles_on_the_cpu_only(monkeypatch, device, grad_mode):
    """Under "auto" a training call on CPU tensors runs the compiled kernels; on another device (CUDA, until its bits
    are compared by scripts/gpu_check.sh) none, for every grad_mode."""
    calls = []
    for name in ("forward", "backward"):
        kernel = lsq._compiled(name)
        monkeypatch.setitem(lsq._COMPILED, name, lambda *args, kernel=kernel, name=name: calls.append(name) or kernel(*args))
    use_fake_quant_path("auto")
    weight = torch.randn(4, 3, 3, 3, device=device, requires_grad=True)
    scale = torch.full((4, 1, 1, 1), 0.01, device=device, requires_grad=True)
    fake_quantize(weight, scale, -8, 7, shift=4, grad_mode=grad_mode).sum().backward()
    expected = ["forward", "backward"] if grad_mode == "lsq" else ["forward"]  # reference: its own eager backward
    assert calls == (expected if device == "cpu" else [])
    assert lsq.training_path(device) == ("compiled" if device == "cpu" else "fused")


def test_forward_without_gradients_and_frozen_scale():
    """Under no_grad the fused path only quantizes; with a frozen scale it still gives the weight gradient."""
    shape = (8, 27)
    scale = torch.full((8, 1), 0.004)
    x = boundary_values(scale, shape, 4, seed=2)
    grad = upstream_gradient(shape, 2)
    use_fake_quant_path("recompute")
    reference = fake_quantize(x, scale, -8, 7, shift=4)
    use_fake_quant_path("fused")
    with torch.no_grad():
        assert_same_bits(fake_quantize(x.requires_grad_(), scale, -8, 7, shift=4), reference, "no_grad output")
    weight = x.detach().clone().requires_grad_()
    (grad_w,) = torch.autograd.grad(fake_quantize(weight, scale, -8, 7, shift=4), weight, grad)
    assert_same_bits(grad_w, run("recompute", x, scale, -8, 7, 4, "half_even", 0.0, grad)[1], "frozen-scale grad_x")


def test_double_backward_is_the_recompute_paths():
    """``create_graph=True`` (Hutchinson's Hessian-vector products) gives the same second derivatives."""
    def hessian_vector(path):
        use_fake_quant_path(path)
        gen = torch.Generator().manual_seed(4)
        weight = (torch.randn(6, 10, generator=gen) * 0.1).requires_grad_()
        scale = torch.full((6, 1), 0.02, requires_grad=True)
        inputs = torch.randn(5, 10, generator=gen)
        loss = torch.nn.functional.linear(inputs, fake_quantize(weight, scale, -8, 7, shift=4)).pow(2).sum()
        (grad_w,) = torch.autograd.grad(loss, weight, create_graph=True)
        probe = torch.randn(weight.shape, generator=gen)
        (hv,) = torch.autograd.grad((grad_w * probe).sum(), weight)
        return grad_w.detach(), hv

    expected = hessian_vector("recompute")
    for path in ("fused", "auto", "compiled"):
        for a, b in zip(hessian_vector(path), expected):
            assert_same_bits(a, b, f"double backward, {path}")


def test_double_backward_differentiates_the_scale_gradient_on_every_path():
    """``create_graph=True`` through the scale gradient: ∂(∂L/∂s)/∂x and ∂(∂L/∂s)/∂s are the recompute path's on every
    path (the compiled kernels take their inputs detached, so a differentiable backward must run the eager kernels),
    and they are not zero."""
    def second_derivatives(path):
        use_fake_quant_path(path)
        gen = torch.Generator().manual_seed(6)
        x = (torch.rand(4, 3, 5, 5, generator=gen) * 0.7).requires_grad_()
        scale = torch.tensor(0.05, requires_grad=True)
        loss = fake_quantize(x, scale, 0, 15, grad_factor=0.3).pow(2).sum()
        (grad_s,) = torch.autograd.grad(loss, scale, create_graph=True)
        return (grad_s.detach(),) + torch.autograd.grad(grad_s, (x, scale))

    expected = second_derivatives("recompute")
    assert bool(expected[1].abs().sum() > 0) and bool(expected[2] != 0)
    for path in ("fused", "auto", "compiled"):
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            got = second_derivatives(path)
        for name, a, b in zip(("grad_scale", "d grad_scale / dx", "d grad_scale / ds"), got, expected):
            assert_same_bits(a, b, f"{name}, {path}")


def test_code_bounds_match_clipping_after_the_second_rounding():
    """[lo, hi] of :func:`code_bounds` against brute force over every first-rounding code of a wide range."""
    for high, low in ((8, 8), (8, 6), (8, 4), (8, 2), (4, 3), (4, 2)):
        shift = high - low
        qmin, qmax = -(1 << (low - 1)), (1 << (low - 1)) - 1
        first = torch.arange(-3 * (1 << high), 3 * (1 << high), dtype=torch.float64)
        saturated_low = first < qmin * (1 << shift)
        for rounding in ROUNDING_RULES:
            lo, hi = code_bounds(qmin, qmax, shift, rounding)
            unclipped = shift_round_float(first, shift, rounding)
            inside = (unclipped == unclipped.clamp(qmin, qmax)) & ~saturated_low & (first <= (qmax + 1) * (1 << shift) - 1)
            assert torch.equal(inside, (first >= lo) & (first <= hi)), (high, low, rounding)
            clipped_first = shift_round_float(first.clamp(lo, hi), shift, rounding)
            assert torch.equal(clipped_first, unclipped.clamp(qmin, qmax)), (high, low, rounding)


def test_unknown_path_is_rejected():
    with pytest.raises(ValueError, match="fused"):
        use_fake_quant_path("fast")


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])  # scripts/gpu_check.sh runs the cuda cases


@pytest.mark.parametrize("device", DEVICES)
def test_compiled_path_equals_fused_bit_for_bit(device):
    """The ``torch.compile`` kernels (shape-generic, the bit-width passed as a tensor, the reduction fused in float64)
    give the same output and ``∂/∂x`` bits and the float64 sum of the same scale-gradient terms: every tie rule,
    Δ = 0 and Δ > 0, the centred offset, a per-tensor activation, and two shapes through one compiled kernel."""
    cases = [((8, 3, 3, 3), 0, "half_even", 0.0), ((8, 3, 3, 3), 4, "half_even", 0.0), ((5, 7, 3, 3), 6, "half_even", 0.0),
             ((8, 3, 3, 3), 0, "half_up", 0.0), ((8, 3, 3, 3), 2, "half_up", 0.0),
             ((8, 3, 3, 3), 2, "floor", 0.5 - 2.0 ** -3)]
    for shape, shift, rounding, offset in cases:
        scale = torch.rand(shape[0], generator=torch.Generator().manual_seed(shift)).add(0.5).mul(0.006).view(-1, 1, 1, 1)
        x = boundary_values(scale, shape, shift, seed=12 + shift).to(device)
        grad, scale = upstream_gradient(shape, 12).to(device), scale.to(device)
        qmin, qmax = -(1 << (7 - shift)), (1 << (7 - shift)) - 1
        assert_compiled_agrees_with_fused(x, scale, qmin, qmax, shift, rounding, offset, grad,
                                          f"compiled, shift {shift}, {rounding}, offset {offset}")
    scale = torch.tensor(0.0213)
    x = boundary_values(scale, (4, 6, 5, 5), 0, seed=3).abs().to(device)
    grad, scale = upstream_gradient((4, 6, 5, 5), 3).to(device), scale.to(device)
    for bits in (8, 2):
        assert_compiled_agrees_with_fused(x, scale, 0, (1 << bits) - 1, 0, "half_even", 0.0, grad,
                                          f"compiled activation, {bits} bits")


def test_compile_failure_falls_back_to_eager_with_one_line(monkeypatch):
    """Where ``torch.compile`` cannot build a kernel, the first call warns once, in one line, and the result is
    the eager one; the path is the fused default from then on."""
    def broken_compile(function, **options):
        def fails(*args, **kwargs):
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found\n(long traceback ...)")
        return fails

    monkeypatch.setattr(torch, "compile", broken_compile)
    monkeypatch.setattr(lsq, "_COMPILED", {})
    monkeypatch.setattr(rounding, "_KERNEL", {"double_round": rounding._shift_round_clip})
    shape = (8, 12)
    scale = torch.full((8, 1), 0.01)
    x = boundary_values(scale, shape, 2, seed=1)
    grad = upstream_gradient(shape, 1)
    expected = run("fused", x, scale, -32, 31, 2, "half_up", 0.0, grad)
    with pytest.warns(RuntimeWarning) as caught:
        got = run("compiled", x, scale, -32, 31, 2, "half_up", 0.0, grad)
    messages = [str(w.message) for w in caught if "torch.compile is unavailable" in str(w.message)]
    assert len(messages) == 1 and "\n" not in messages[0] and "No working C++ compiler" in messages[0]
    assert fake_quant_path() == "fused" and "InvalidCxxCompiler" in lsq.compile_error()
    for name, a, b in zip(("output", "grad_x", "grad_scale"), got, expected):
        assert_same_bits(a, b, f"fallback {name}")


def test_activation_first_use_check_follows_the_buffer():
    """The first-use check reads ``initialized`` only when it changed, and still sees every change: the scale is
    set at first use, kept after, set again after ``initialized.fill_(False)``, and kept after a state load."""
    from labkit.quant import ActivationQuantizer

    quantizer = ActivationQuantizer((8, 4))
    x = torch.rand(2, 3, 4, 4) * 3
    quantizer(x, 8)
    first = quantizer.scale["8"].item()
    assert quantizer.is_initialized(8) and not quantizer.is_initialized(4)
    quantizer(x * 10, 8)
    assert quantizer.scale["8"].item() == first  # initialised once
    quantizer.initialized.fill_(False)
    quantizer(x * 10, 8)
    assert quantizer.scale["8"].item() == pytest.approx(first * 10, rel=1e-6)  # re-initialised from the new data
    fresh = ActivationQuantizer((8, 4))
    fresh(x, 8)
    fresh.load_state_dict(quantizer.state_dict())
    fresh(x, 8)
    assert fresh.scale["8"].item() == pytest.approx(first * 10, rel=1e-6) and fresh.is_initialized(8)


def _recording_compiled_kernels(monkeypatch) -> list:
    """Wrap the compiled kernels so each call records (kernel, dtype of x) before it runs."""
    calls = []
    for name in ("forward", "backward"):
        kernel = lsq._compiled(name)

        def recorded(*args, kernel=kernel, name=name):
            calls.append((name, args[0 if name == "forward" else 1].dtype))  # (x, scale, …) / (grad, x, scale, …)
            return kernel(*args)
        monkeypatch.setitem(lsq._COMPILED, name, recorded)
    return calls


@pytest.mark.skipif(os.environ.get("LABKIT_COMPILE", "") != "", reason="LABKIT_COMPILE sets another default here")
def test_default_path_compiles_training_calls_only(monkeypatch):
    """The default "auto" path (issue 11: fast without asking) runs a call that wants gradients on the compiled kernels
    and every evaluation call (no_grad, whatever the grad_mode or dtype) on the eager forward; all give the fused
    path's bits, with no fallback."""
    assert lsq.DEFAULT_PATH == "auto" and fake_quant_path() == "auto" and lsq.training_path() == "compiled"
    calls = _recording_compiled_kernels(monkeypatch)
    scale = torch.rand(8, generator=torch.Generator().manual_seed(5)).add(0.5).mul(0.01).view(-1, 1, 1, 1)
    x = boundary_values(scale, (8, 4, 3, 3), 2, seed=5)
    grad = upstream_gradient((8, 4, 3, 3), 5)
    expected = run("fused", x, scale, -32, 31, 2, "half_even", 0.0, grad)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        got = run("auto", x, scale, -32, 31, 2, "half_even", 0.0, grad)
    assert calls == [("forward", torch.float32), ("backward", torch.float32)]
    assert fake_quant_path() == "auto" and lsq.compile_error() is None
    terms = scale_gradient_terms(x, scale, -32, 31, 2, "half_even", 0.0, grad)
    use_fake_quant_path("auto")
    assert_compiled_agrees(got, expected, terms, scale, "auto")
    with torch.no_grad():
        evaluated = fake_quantize(x, scale, -32, 31, shift=2)
        reference_mode = fake_quantize(x, scale, -32, 31, shift=2, grad_mode="reference")
        low = fake_quantize(x.to(torch.bfloat16), scale, -32, 31, shift=2)
    with torch.inference_mode():
        inferred = fake_quantize(x, scale.requires_grad_(), -32, 31, shift=2)
    assert len(calls) == 2  # evaluation stayed eager
    for what, value in (("no_grad", evaluated), ("reference no_grad", reference_mode), ("inference_mode", inferred)):
        assert_same_bits(value, expected[0], f"auto {what} output")
    use_fake_quant_path("fused")
    with torch.no_grad():
        assert_same_bits(low, fake_quantize(x.to(torch.bfloat16), scale.detach(), -32, 31, shift=2), "bf16 no_grad")


@pytest.mark.parametrize("setting,path", [("0", "fused"), ("off", "fused"), ("1", "compiled"), ("", "auto")])
def test_labkit_compile_environment_variable_sets_the_default(setting, path):
    import subprocess
    import sys

    env = dict(os.environ, LABKIT_COMPILE=setting)
    code = "from labkit.quant import lsq; print(lsq.fake_quant_path(), lsq.path_for(None), len(lsq._COMPILED))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == [path, path, "0"]  # and importing labkit builds no compiled kernel


LOW_PRECISION_CASES = [  # (dtype, weight shape or per-tensor activation, Δ, tie rule, centred offset)
    (torch.bfloat16, (8, 3, 3, 3), 4, "half_even", 0.0),
    (torch.bfloat16, (8, 3, 3, 3), 2, "half_up", 0.0),
    (torch.bfloat16, (8, 3, 3, 3), 2, "floor", 0.5 - 2.0 ** -3),
    (torch.float16, (8, 3, 3, 3), 4, "half_even", 0.0),
    (torch.bfloat16, (4, 6, 5, 5), 0, "half_even", 0.0),
    (torch.float16, (4, 6, 5, 5), 0, "half_even", 0.0),
]


def _low_precision_case(dtype, shape, shift):
    scale = (torch.tensor(0.0213) if shape == (4, 6, 5, 5) else
             torch.rand(8, generator=torch.Generator().manual_seed(shift)).add(0.5).mul(0.006).view(-1, 1, 1, 1))
    x = boundary_values(scale, shape, shift, seed=21, dtype=dtype)
    if scale.dim() == 0:
        x = x.abs()
    bounds = (0, 255) if scale.dim() == 0 else (-(1 << (7 - shift)), (1 << (7 - shift)) - 1)
    return x, scale, bounds, upstream_gradient(shape, 21).to(dtype)


@pytest.mark.parametrize("path", ["compiled", "auto"])
@pytest.mark.parametrize("dtype,shape,shift,rounding,offset", LOW_PRECISION_CASES)
def test_compiled_kernels_take_low_precision_inputs_with_the_fused_paths_bits(monkeypatch, path, dtype, shape, shift,
                                                                              rounding, offset):
    """Under autocast the activations arrive in bf16 (or fp16): the compiled kernels get them as they are (no cast
    pass around the kernel), quantize them in fp32 inside and give the fused path's output and gradients bit for
    bit, in the input's dtype."""
    x, scale, (low, high), grad = _low_precision_case(dtype, shape, shift)
    fused = run("fused", x, scale, low, high, shift, rounding, offset, grad)
    calls = _recording_compiled_kernels(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        compiled = run(path, x, scale, low, high, shift, rounding, offset, grad)
    assert calls == [("forward", dtype), ("backward", dtype)]  # the kernels saw the bf16/fp16 tensor itself
    assert compiled[0].dtype == dtype and compiled[1].dtype == dtype and compiled[2].dtype == torch.float32
    for name, a, b in zip(("output", "grad_x", "grad_scale"), compiled, fused):  # ATen sums a bf16/fp16 x's terms
        assert_same_bits(a, b, f"{path} {dtype} {name}, shift {shift}, {rounding}")


def test_a_compiler_failure_between_forward_and_backward_keeps_low_precision_bits(monkeypatch):
    """The forward ran compiled on a bf16 x; the backward's compile fails: the eager backward takes over on the saved
    bf16 x (one warning line) and the gradients are the fused path's."""
    x, scale, (low, high), grad = _low_precision_case(torch.bfloat16, (8, 3, 3, 3), 4)
    fused = run("fused", x, scale, low, high, 4, "half_even", 0.0, grad)
    use_fake_quant_path("compiled")
    lsq._compiled("forward")

    def fails(*args):
        raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found")
    monkeypatch.setitem(lsq._COMPILED, "backward", fails)
    leaf_x, leaf_scale = x.detach().clone().requires_grad_(), scale.detach().clone().requires_grad_()
    out = fake_quantize(leaf_x, leaf_scale, low, high, shift=4, grad_factor=0.0137)  # as run() passes
    with pytest.warns(RuntimeWarning, match="torch.compile is unavailable"):
        grad_x, grad_scale = torch.autograd.grad(out, (leaf_x, leaf_scale), grad)
    assert fake_quant_path() == "fused" and "InvalidCxxCompiler" in lsq.compile_error()
    for name, a, b in zip(("output", "grad_x", "grad_scale"), (out, grad_x, grad_scale), fused):
        assert_same_bits(a, b, f"fallback {name}")


def test_a_run_keeps_its_path_and_gives_the_callers_back():
    """select_fake_quant_path inside restored_fake_quant_path (what labkit train and JointTrainer.train_step do):
    the path holds inside and the caller's is back after; after a compiler failure a compiling path is not tried
    again."""
    use_fake_quant_path("recompute")
    with lsq.restored_fake_quant_path():
        assert lsq.select_fake_quant_path(None) == lsq.DEFAULT_PATH == fake_quant_path()
    assert fake_quant_path() == "recompute"
    with lsq.restored_fake_quant_path():
        assert lsq.select_fake_quant_path(False) == "fused" == fake_quant_path()
    assert fake_quant_path() == "recompute"
    lsq._COMPILE_FAILURE["error"] = "InvalidCxxCompiler: test"
    try:
        with lsq.restored_fake_quant_path():
            assert lsq.select_fake_quant_path(True) == "fused"
        assert fake_quant_path() == "recompute"
    finally:
        lsq._COMPILE_FAILURE["error"] = None


@pytest.mark.parametrize("shape, scale_shape, channels_last", [
    ((6, 4, 3, 3), (4, 1, 1, 1), False),  # does not broadcast
    ((2, 3, 4, 4), (1, 3, 1, 1, 1), True),  # more dimensions than x, on a channels_last x
    ((1, 3), (4, 1), False),  # would grow x from (1, 3) to (4, 3)
])
def test_a_scale_of_the_wrong_shape_is_one_clear_error_and_keeps_the_compiled_path(shape, scale_shape, channels_last):
    """A scale that does not broadcast to x's own shape is the caller's mistake, not a missing compiler: one
    ScaleShapeError saying what to pass, and the compiled path stays on, with no fallback warning."""
    from labkit.errors import ScaleShapeError

    use_fake_quant_path("compiled")
    x = torch.randn(*shape)
    x = (x.to(memory_format=torch.channels_last) if channels_last else x).requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        with pytest.raises(ScaleShapeError, match=r"does not broadcast to x's shape .* per channel"):
            fake_quantize(x, torch.full(scale_shape, 0.01), -128, 127)
    assert fake_quant_path() == "compiled" and lsq.compile_error() is None


def test_compiled_scale_gradient_of_a_large_activation_is_the_float64_sum():
    """On an activation of 2^19 elements (one scale) the compiled kernel's fused reduction is the float64 sum of the
    terms within two float32 steps; the eager float32 cascade sum is within its own rounding error of it."""
    scale = torch.tensor(0.031)
    gen = torch.Generator().manual_seed(4)
    x = torch.rand((128, 16, 16, 16), generator=gen).mul(0.6)
    grad = torch.randn((128, 16, 16, 16), generator=gen)
    assert_compiled_agrees_with_fused(x, scale, 0, 15, 0, "half_even", 0.0, grad, "large activation")


@pytest.mark.parametrize("qmin, qmax, shift", [(0, 255, 0), (0, 3, 0), (0, 3, 2), (-8, 7, 0)])
def test_compiled_path_keeps_the_sign_of_a_zero_code(qmin, qmax, shift):
    """A small negative ``x`` whose ``round(x / s)`` is −0.0 (and ``x = −0.0`` itself) gives −0.0 on the eager paths,
    since ATen's clamp keeps a −0.0 at a bound of 0; the compiled kernels give the same bits (inductor's maximum
    would return +0.0 there). Checked at both bounds of an unsigned code, on a tensor long enough for the vector loop
    and its remainder."""
    scale = torch.tensor(0.25)
    x = -torch.rand(1003, generator=torch.Generator().manual_seed(3)) * 0.12  # x / s in (−0.48, 0]: rounds to −0.0
    x[::4] = -0.0
    x[1::9] = 0.0
    x[2::11] = 1e3  # clipped at qmax
    grad = upstream_gradient(x.shape, 3)
    compiled = assert_compiled_agrees_with_fused(x, scale, qmin, qmax, shift, "half_even", 0.0, grad, "zero codes")
    negative_zeros = (x == 0) & torch.signbit(x)
    assert int(negative_zeros.sum()) > 100 and bool(torch.signbit(compiled[0][negative_zeros]).all())  # still −0.0
