"""ReLU pairing (:class:`labkit.nn.ReLUWithQuantizedCopy`, :func:`labkit.quant.lsq.relu_and_fake_quantize`): a ReLU
whose output a quantized layer reads *and* something else does computes that layer's quantized input in the same
loop, and nothing the model computes changes.

References are independent of the feature: PyTorch's own ``torch.relu`` followed by the unfused ``fake_quantize`` call
on the same fake-quant path (for the op), and the same model quantized with ``absorb_relu=False`` (for models), compared
bit for bit (``x.view(torch.int32)`` for fp32, int16 for bf16, so ``-0.0`` and ``+0.0`` differ). The op inputs are made
by hand to sit on the boundaries that matter for a ReLU in front of a quantizer: ``-0.0``, ``+0.0``, negatives within
half a step (they round to code 0, so a mask that ignored the ReLU would pass their gradient), exact ties
``(k + 1/2) · s``, values beyond the clip and ``±inf``; the upstream gradients hold ``-0.0`` and ``+0.0`` too, so the
sum of the two gradients of the ReLU's output is checked on signed zeros. The compiled kernels sum an fp32 scale
gradient in float64 (:func:`labkit.quant.lsq._sum_to_scale`); the unfused compiled call does the same sum, and the two
are compared bit for bit (the stricter check, which holds), and both against the float64 sum of the per-element terms
within two float32 steps.

Whether the kept output was really used is seen through autograd alone: the quantizer's output then has the same
``grad_fn`` as the ReLU's output (both are outputs of one ``_ReLUAndFakeQuantize`` node), so a test fails where the
pairing silently never fires.
"""
import copy
import io

import pytest
import torch
import torch.utils.checkpoint
from torch import nn
from torch.nn import functional as F

from bit_exact import assert_same_bits, bits_of, no_compiler_fallback  # noqa: F401 (a fixture)
import labkit
from labkit.convert import apply_plan, plan_quantization, quantized_layers
from labkit.hasb.graph import LayerTracer, layer_predecessors
from labkit.models import build_model
from labkit.nn import AbsorbedReLU, ReLUWithQuantizedCopy
from labkit.quant import activation, lsq
from labkit.quant.activation import ActivationQuantizer
from labkit.quant.lsq import (fake_quant_path, fake_quantize, relu_and_fake_quantize, relu_pairing_applies,
                              use_fake_quant_path)
from labkit.relu_absorption import absorbable_relus, pairable_relus
from labkit.storage import load_int, save_int

PATHS = ("auto", "compiled", "fused", "recompute")
PAIRING = ("auto", "compiled")  # training calls on CPU tensors run the compiled kernels there
GRAD_FACTOR = 0.0137
PAIRED_NODE = "_ReLUAndFakeQuantizeBackward"


@pytest.fixture(autouse=True)
def default_path_after():
    """Every test leaves the default fake-quant path on, whatever it switched to."""
    try:
        yield
    finally:
        use_fake_quant_path(lsq.DEFAULT_PATH)


@pytest.fixture(autouse=True)
def nothing_kept_after():
    """A test that leaves a kept output behind (on purpose) does not leak it into the next one."""
    yield
    activation._PREPARED.clear()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------ the op: relu_and_fake_quantize


def hand_made_codes(qmax: int) -> torch.Tensor:
    """``x / s`` values on every boundary a ReLU in front of an unsigned activation quantizer touches (float64)."""
    top = qmax + 1
    values = [-1e4, -300.0, -7.5, -2.5, -1.0, -0.7, -0.5, -0.49, -0.3, -1e-3, -0.0,
              0.0, 1e-3, 0.2, 0.3, 0.49, 0.5, 0.51, 0.7, 1.0, 1.5, 2.5,
              top - 1.5, top - 0.5, top - 0.3, top, top + 0.5, top + 3.0, 1e4, float("inf"), float("-inf")]
    values += [k + 0.5 for k in range(0, top + 2)]  # exact ties, half-even: 0.5 → 0, 1.5 → 2, ...
    values += [-(k + 0.5) for k in range(0, 6)]
    return torch.tensor(values, dtype=torch.float64)


def op_input(shape, scale: torch.Tensor, qmax: int, dtype, seed: int, channels_last: bool = False) -> torch.Tensor:
    """A tensor of ``shape`` holding every hand-made code (several times, shuffled) and random ones between, times
    the scale its element gets (a per-channel scale broadcasts along dim 1)."""
    gen = torch.Generator().manual_seed(seed)
    numel = torch.Size(shape).numel()
    codes = hand_made_codes(qmax)
    assert numel >= 2 * codes.numel()
    random = (torch.rand(numel, generator=gen, dtype=torch.float64) * 2 - 0.6) * (qmax + 1) * 1.3
    filled = torch.cat([codes.repeat(numel // codes.numel()), random])[:numel]
    filled = filled[torch.randperm(numel, generator=gen)].view(shape)
    x = (filled * scale.double()).to(dtype)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def upstream_gradient(shape, seed: int, dtype, channels_last: bool = False) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed + 7)
    grad = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    flat = grad.view(-1)
    flat[::11] = -0.0  # -0.0 must come back -0.0 where the ReLU passes it (and -0.0 + -0.0 stays -0.0)
    flat[5::13] = 0.0
    return grad.contiguous(memory_format=torch.channels_last) if channels_last else grad


def make_scale(kind: str) -> torch.Tensor:
    if kind == "per_tensor":
        return torch.tensor(0.0625)  # a power of two: every (k + 1/2) · s is an exact tie
    return torch.tensor([2.0 ** -5, 0.0133, 2.0 ** -7, 0.0217, 0.0071, 2.0 ** -3]).view(6, 1, 1)


USAGES = ("both", "both_backward", "relu_only", "quantized_only", "relu_only_backward")


def run_op(path: str, paired: bool, x, scale, qmax: int, usage: str, grad_r, grad_y):
    """``(r, y, ∂/∂x, ∂/∂s, r.grad_fn, y.grad_fn)`` of the paired call or of ``torch.relu`` then the unfused
    ``fake_quantize``, on ``path``, with the gradient taken as ``usage`` says:

    - ``both``: ``torch.autograd.grad((r, y), ..., (grad_r, grad_y))``;
    - ``both_backward``: ``(r.sum() + (y · grad_y).sum()).backward()`` (r's gradient is an expanded tensor of ones);
    - ``relu_only`` / ``quantized_only``: ``torch.autograd.grad`` of one output (the other's gradient is None);
    - ``relu_only_backward``: ``(r · grad_r).sum().backward()``.
    """
    use_fake_quant_path(path)
    x = x.detach().clone(memory_format=torch.preserve_format).requires_grad_()
    scale = scale.detach().clone().requires_grad_()
    if paired:
        r, y = relu_and_fake_quantize(x, scale, 0, qmax, grad_factor=GRAD_FACTOR)
    else:
        r = torch.relu(x)
        y = fake_quantize(r, scale, 0, qmax, grad_factor=GRAD_FACTOR)
    nodes = (r.grad_fn, y.grad_fn)
    if usage == "both":
        grad_x, grad_scale = torch.autograd.grad((r, y), (x, scale), (grad_r, grad_y))
    elif usage == "relu_only":
        grad_x, grad_scale = torch.autograd.grad(r, (x, scale), grad_r, allow_unused=True)
    elif usage == "quantized_only":
        grad_x, grad_scale = torch.autograd.grad(y, (x, scale), grad_y)
    else:
        loss = r.sum() + (y * grad_y).sum() if usage == "both_backward" else (r * grad_r).sum()
        loss.backward()
        grad_x, grad_scale = x.grad, scale.grad
    assert fake_quant_path() == path
    return r.detach(), y.detach(), grad_x, grad_scale, *nodes


def float64_scale_gradient(x, scale, qmax: int, grad_y) -> torch.Tensor:
    """The float64 sum of the scale gradient's per-element terms of ``relu(x)`` (eager recompute path, scale expanded
    to ``x``'s shape and ``g`` = 1 so nothing is summed there), rounded once to float32, times ``g``."""
    previous = fake_quant_path()
    use_fake_quant_path("recompute")
    full = scale.detach().expand(x.shape).clone().requires_grad_()
    out = fake_quantize(torch.relu(x.detach()), full, 0, qmax, grad_factor=1.0)
    (terms,) = torch.autograd.grad(out, full, grad_y)
    use_fake_quant_path(previous)
    sum_dims = [d for d in range(x.dim()) if d < x.dim() - scale.dim() or scale.shape[d - x.dim() + scale.dim()] == 1]
    return terms.double().sum(sum_dims, keepdim=True).reshape(scale.shape).float() * GRAD_FACTOR


# An activation quantizer's scale is one number (8, 4 and 2 bits); a per-channel scale once (each scale rank and
# layout is one more compilation of the kernels).
OP_CASES = [(kind, qmax, dtype, layout) for qmax in (255, 15, 3) for dtype in (torch.float32, torch.bfloat16)
            for layout in ("contiguous", "channels_last") for kind in ("per_tensor",)]
OP_CASES.append(("per_channel", 15, torch.float32, "contiguous"))


@pytest.mark.parametrize("kind,qmax,dtype,layout", OP_CASES,
                         ids=[f"{k}-{q}-{str(d)[6:]}-{l}" for k, q, d, l in OP_CASES])
def test_pair_is_relu_then_fake_quantize_bit_for_bit(kind, qmax, dtype, layout, no_compiler_fallback):
    """On every path and for every way of using the two outputs: ``r`` and ``y`` are ``torch.relu(x)`` and the unfused
    ``fake_quantize`` of it bit for bit, and so are ∂/∂x and ∂/∂s (None where the reference has None). On
    ``auto``/``compiled`` both outputs come from one paired node; on the eager paths ``r`` is PyTorch's ReLU (the
    layouts: :func:`test_channels_last_layouts_as_the_separate_relu`)."""
    channels_last = layout == "channels_last"
    scale = make_scale(kind)
    shape = (4, 6, 9, 9)
    x = op_input(shape, scale, qmax, dtype, seed=qmax, channels_last=channels_last)
    grad_r = upstream_gradient(shape, qmax, dtype, channels_last)
    grad_y = upstream_gradient(shape, qmax + 100, dtype)  # another layout than x's where x is channels_last
    reference_sum = float64_scale_gradient(x, scale, qmax, grad_y) if dtype == torch.float32 else None
    for path in PATHS:
        for usage in USAGES:
            what = f"{path}, {usage}, {kind}, qmax {qmax}, {dtype}, {layout}"
            *paired, r_node, y_node = run_op(path, True, x, scale, qmax, usage, grad_r, grad_y)
            *unfused, _, _ = run_op(path, False, x, scale, qmax, usage, grad_r, grad_y)
            if path in PAIRING:
                assert type(r_node).__name__ == PAIRED_NODE and y_node is r_node, f"{what}: not paired ({r_node})"
            else:
                assert type(r_node).__name__ == "ReluBackward0", f"{what}: {r_node}"
            for name, a, b in zip(("relu output", "quantized output", "grad_x"), paired, unfused):
                assert_same_bits(a, b, f"{what} {name}")
            if usage.startswith("relu_only"):
                assert paired[3] is None and unfused[3] is None, f"{what}: a scale gradient without y"
            else:
                assert_same_bits(paired[3], unfused[3], f"{what} grad_scale")
                if reference_sum is not None and path in PAIRING:
                    torch.testing.assert_close(paired[3], reference_sum, rtol=2.0 ** -22, atol=0.0,
                                               msg=f"{what} grad_scale vs the float64 sum")
            # the ReLU's own part, checked directly: nothing at or below 0 gets a value or a gradient
            nonpositive = x <= 0
            assert bool((bits_of(paired[0])[nonpositive & (x != 0)] == 0).all()), what
            assert bool((bits_of(paired[2])[nonpositive] == 0).all()), f"{what}: grad_x is not +0.0 where x <= 0"
        # the inputs reach the cases that matter: clipped gradients, and both sign of zero upstream
        assert bool(((unfused[2] == 0) & (x > 0)).any()) and bool((bits_of(grad_r) == bits_of(-torch.zeros(()).to(
            dtype))).any())


@pytest.mark.parametrize("usage", USAGES)
def test_channels_last_layouts_as_the_separate_relu(usage, no_compiler_fallback):
    """A channels_last ``x``: ``r``, ``y`` and ∂/∂x come back in the layouts the separate ReLU and quantizer give
    (channels_last), on every path, whichever outputs the loss uses (a contiguous ∂/∂x would cost the layer before
    a layout conversion in every backward)."""
    scale, shape = torch.tensor(0.0625), (4, 6, 9, 9)
    wrong = []
    for dtype in (torch.float32, torch.bfloat16):
        x = op_input(shape, scale, 15, dtype, seed=21, channels_last=True)
        grad_r = upstream_gradient(shape, 21, dtype, channels_last=True)
        grad_y = upstream_gradient(shape, 22, dtype, channels_last=True)
        for path in PATHS:
            paired = run_op(path, True, x, scale, 15, usage, grad_r, grad_y)
            unfused = run_op(path, False, x, scale, 15, usage, grad_r, grad_y)
            for name, a, b in zip(("relu output", "quantized output", "grad_x"), paired, unfused):
                assert_same_bits(a, b, f"{path}, {usage}, {dtype}: {name}")
                if a.stride() != b.stride():
                    wrong.append(f"{path}, {dtype}: {name} strides {a.stride()}, the separate ReLU's {b.stride()}")
    assert not wrong, (f"with only the ReLU's output in the loss ({usage}) the paired backward "
                       "returns ∂/∂x contiguous for a channels_last x (grad_relu.masked_fill(x <= 0, 0.0) in "
                       "_ReLUAndFakeQuantize.backward: ATen's out-of-place masked_fill clones contiguous), where "
                       "PyTorch's ReLU backward keeps channels_last: " + "; ".join(wrong))


@pytest.mark.parametrize("path", PATHS)
def test_nan_and_inf_as_the_separate_relu(path, no_compiler_fallback):
    """``NaN`` goes through the ReLU (``torch.relu(NaN)`` is NaN) and through the quantizer as the separate calls
    have it; ``±inf`` too. The scale gradient is NaN on both."""
    scale = torch.tensor(0.0625)
    x = torch.tensor([float("nan"), -1.0, 0.5, float("inf"), float("-inf"), -0.0, 0.0, 0.03125, -0.03, 2.0,
                      float("nan"), 0.09375] * 2).view(2, 3, 2, 2)  # no size-1 dimension (a kernel of its own)
    grad_r = torch.tensor([1.0, -2.0, 3.0, -0.0, 5.0, 6.0, 7.0, -8.0, 9.0, 10.0, -11.0, 12.0] * 2).view(x.shape)
    grad_y = torch.linspace(-1.0, 1.0, 24).view(x.shape)
    paired = run_op(path, True, x, scale, 15, "both", grad_r, grad_y)
    unfused = run_op(path, False, x, scale, 15, "both", grad_r, grad_y)
    for name, a, b in zip(("relu output", "quantized output", "grad_x"), paired, unfused):
        assert_same_bits(a, b, f"{path} {name}")
    assert bool(paired[0].isnan()[x.isnan()].all()) and bool(paired[3].isnan()) and bool(unfused[3].isnan())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_double_backward_as_the_separate_relu(dtype, no_compiler_fallback):
    """``create_graph=True`` with both outputs, the ReLU's alone or the quantizer's alone in the loss: ∂L/∂x, ∂L/∂s,
    ∂(∂L/∂s)/∂x, ∂(∂L/∂s)/∂s, ∂(∂L/∂x · p)/∂x and ∂(∂L/∂x · p)/∂s are those of the separate ReLU and quantizer on
    every path, bit for bit."""
    scale0 = torch.tensor(0.0625)
    x0 = op_input((4, 3, 7, 7), scale0, 15, dtype, seed=6)
    x0 = torch.where(x0.isinf(), torch.zeros((), dtype=dtype), x0)  # inf · 0 in the second derivative is NaN on both
    gen = torch.Generator().manual_seed(8)
    probe = torch.randn(x0.shape, generator=gen).to(dtype)
    w_r, w_y = torch.randn(x0.shape, generator=gen), torch.randn(x0.shape, generator=gen)

    def derivatives(path, paired, usage):
        use_fake_quant_path(path)
        x = x0.clone().requires_grad_()
        scale = scale0.clone().requires_grad_()
        if paired:
            r, y = relu_and_fake_quantize(x, scale, 0, 15, grad_factor=0.3)
        else:
            r = torch.relu(x)
            y = fake_quantize(r, scale, 0, 15, grad_factor=0.3)
        r, y = r.float(), y.float()
        loss_r, loss_y = (r * w_r + r.pow(2)).sum(), (y * w_y + y.pow(2)).sum()
        loss = {"both": loss_r + loss_y, "relu_only": loss_r, "quantized_only": loss_y}[usage]
        grad_x, grad_s = torch.autograd.grad(loss, (x, scale), create_graph=True, allow_unused=True,
                                             materialize_grads=True)
        results = [grad_x.detach(), grad_s.detach()]
        if usage != "relu_only":
            results += torch.autograd.grad(grad_s, (x, scale), retain_graph=True, allow_unused=True,
                                           materialize_grads=True)
        results += torch.autograd.grad((grad_x * probe).float().sum(), (x, scale), allow_unused=True,
                                       materialize_grads=True)
        return results

    for usage in ("both", "relu_only", "quantized_only"):
        for path in PATHS:
            expected = derivatives(path, False, usage)
            assert bool(expected[0].abs().sum() > 0) and bool(expected[-2].abs().sum() > 0), (path, usage)
            got = derivatives(path, True, usage)
            assert len(got) == len(expected)
            for index, (a, b) in enumerate(zip(got, expected)):
                assert_same_bits(a, b, f"derivative {index}, {usage}, {path}, {dtype}")


@pytest.mark.parametrize("failing", ["forward", "backward"])
def test_a_compiler_failure_falls_back_to_the_eager_pair(monkeypatch, failing):
    """Where a compiled kernel fails (no C++ compiler), the eager kernels take over the paired call, with the ReLU
    and the sum of both gradients: the separate calls' bits on the eager fused path, and one warning."""
    scale = torch.tensor(0.0625)
    x = op_input((4, 6, 9, 9), scale, 15, torch.float32, seed=9)
    grad_r, grad_y = upstream_gradient(x.shape, 9, torch.float32), upstream_gradient(x.shape, 10, torch.float32)
    expected = run_op("fused", False, x, scale, 15, "both", grad_r, grad_y)[:4]
    use_fake_quant_path("compiled")
    lsq._compiled(failing)

    def fails(*args):
        raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found")
    monkeypatch.setitem(lsq._COMPILED, failing, fails)
    leaf_x, leaf_scale = x.clone().requires_grad_(), scale.clone().requires_grad_()
    with pytest.warns(RuntimeWarning, match="torch.compile is unavailable"):
        r, y = relu_and_fake_quantize(leaf_x, leaf_scale, 0, 15, grad_factor=GRAD_FACTOR)
        assert type(r.grad_fn).__name__ == PAIRED_NODE
        grad_x, grad_scale = torch.autograd.grad((r, y), (leaf_x, leaf_scale), (grad_r, grad_y))
    assert fake_quant_path() == "fused"
    for name, a, b in zip(("relu output", "quantized output", "grad_x", "grad_scale"), (r, y, grad_x, grad_scale),
                          expected):
        assert_same_bits(a, b, f"fallback in the {failing}, {name}")


def test_relu_pairing_applies_truth_table():
    """Pairing runs for a training call on the compiled kernels only: ``auto`` on the CPU with a gradient wanted, or
    ``compiled``; never without a gradient (``no_grad``, an evaluation, nothing requiring grad), never on the eager
    paths, never for a dtype pair the fused kernels do not take (fp64 ``x`` with an fp32 scale, a 0-d ``x``)."""
    x, scale = torch.randn(2, 3, 4, 4), torch.tensor(0.1)
    x_grad, scale_grad = x.clone().requires_grad_(), scale.clone().requires_grad_()

    def applies(path, x_, s_, grad=True):
        use_fake_quant_path(path)
        with torch.set_grad_enabled(grad):
            answer = relu_pairing_applies(x_, s_)
            if x_.dtype in (torch.float32, torch.bfloat16) or not answer:  # (fp16, fp64: no kernels compiled here)
                r, y = relu_and_fake_quantize(x_, s_, 0, 15, grad_factor=GRAD_FACTOR)
                # the answer is what the op does: one paired node, or PyTorch's ReLU (or no graph at all)
                assert (type(r.grad_fn).__name__ == PAIRED_NODE) == answer, (path, r.grad_fn, answer)
        return answer

    for path in PAIRING:
        assert applies(path, x_grad, scale_grad)
        assert applies(path, x, scale_grad)  # only the scale learns: still a training call
        assert applies(path, x_grad, scale)
        assert applies(path, x_grad.detach().bfloat16().requires_grad_(), scale_grad)
        assert applies(path, x_grad.detach().half().requires_grad_(), scale_grad)
        assert not applies(path, x_grad, scale_grad, grad=False)  # no_grad (an evaluation under no_grad)
        assert not applies(path, x, scale)  # nothing wants a gradient
        assert not applies(path, x_grad.detach().double().requires_grad_(), scale_grad)
        assert not applies(path, torch.tensor(0.3, requires_grad=True), scale_grad)
    assert applies("compiled", x_grad.detach().double().requires_grad_(), scale_grad.detach().double())
    for path in ("fused", "recompute"):
        assert not applies(path, x_grad, scale_grad)
        assert not applies(path, x_grad, scale_grad, grad=False)


# ------------------------------------------------------------------ the quantizer: relu_and_quantize, forward


def trained_quantizer(**options) -> ActivationQuantizer:
    quantizer = ActivationQuantizer(bits=(8, 2), **options)
    sample = torch.rand(2, 6, 9, 9, generator=torch.Generator().manual_seed(1)) * 2
    if quantizer.init != "dorefa":  # DoReFa's step is fixed: nothing to initialise
        for bits in (8, 2):
            quantizer.initialize(sample, bits)
    return quantizer.train()


CHANGES = ("nothing", "other_bits", "in_place_on_r", "a_copy_of_r", "scale_written", "no_grad", "eval")


@pytest.mark.parametrize("change", CHANGES)
def test_the_kept_output_is_used_only_for_that_very_tensor_unchanged(change, no_compiler_fallback):
    """``relu_and_quantize`` keeps the quantizer's output; the next call uses it only where nothing changed in
    between. Every change (bits, an in-place write to ``r`` or to the scale, another tensor of the same values, grad
    mode, train/eval) makes the call quantize as always. Either way the result is that of ``torch.relu`` then the
    quantizer (a copy of it), values and gradients bit for bit, and nothing is left kept."""
    use_fake_quant_path("auto")
    quantizer = trained_quantizer()
    reference = copy.deepcopy(quantizer)
    scale0 = quantizer.scale["8"]
    x0 = op_input((4, 6, 9, 9), scale0.detach(), 255, torch.float32, seed=3)
    grad_r, grad_y = upstream_gradient(x0.shape, 1, torch.float32), upstream_gradient(x0.shape, 2, torch.float32)
    results = []
    for module, paired in ((quantizer, True), (reference, False)):
        x = x0.clone().requires_grad_()
        r = module.relu_and_quantize(x, 8) if paired else torch.relu(x)
        node = r.grad_fn
        if paired:
            assert type(node).__name__ == PAIRED_NODE and len(activation._PREPARED) == 1
        bits = 2 if change == "other_bits" else 8
        if change == "in_place_on_r":  # out of place for the reference: a separate ReLU's backward would refuse it
            r = r.mul_(2.0) if paired else r * 2.0
        elif change == "a_copy_of_r":
            r = r.clone()
        elif change == "scale_written":
            with torch.no_grad():
                module.scale["8"].mul_(1.5)
        elif change == "eval":
            module.eval()
        with torch.set_grad_enabled(change != "no_grad"):
            y = module(r, bits)
        assert len(activation._PREPARED) == 0, f"{change}: a kept output is left"
        if paired:
            used = y.grad_fn is node and node is not None
            assert used == (change == "nothing"), f"{change}: the kept output was {'' if used else 'not '}used"
        if change in ("no_grad", "scale_written"):  # no gradient through y / the scale the graph saved was rewritten
            results.append((r.detach(), y.detach()))
            continue
        params = (x, module.scale["8"], module.scale["2"])
        grads = torch.autograd.grad((r, y), params, (grad_r, grad_y), allow_unused=True, materialize_grads=True)
        results.append((r.detach(), y.detach()) + grads)
    names = ("relu output", "quantized output", "grad_x", "grad scale 8", "grad scale 2")
    for name, a, b in zip(names, *results):
        assert_same_bits(a, b, f"{change}: {name}")


@pytest.mark.parametrize("options,kept", [
    ({}, True), ({"init": "percentile"}, True), ({"signed": True}, False), ({"init": "dorefa"}, False),
    ({"relu_first": True}, False), ({"uninitialised": True}, False),
], ids=["lsq", "percentile", "signed", "dorefa", "relu_first", "uninitialised"])
def test_which_quantizers_keep_an_output(options, kept, no_compiler_fallback):
    """Only an unsigned LSQ quantizer with an initialised scale and no ReLU of its own keeps an output; every other
    returns ``torch.relu(x)`` (PyTorch's ReLU) and quantizes on its next call as always."""
    use_fake_quant_path("auto")
    options = dict(options)
    relu_first = options.pop("relu_first", False)
    uninitialised = options.pop("uninitialised", False)
    quantizer = ActivationQuantizer(bits=(8, 2), **options) if uninitialised else trained_quantizer(**options)
    quantizer.relu_first = relu_first
    x = torch.randn(2, 6, 5, 5, generator=torch.Generator().manual_seed(4)).requires_grad_()
    r = quantizer.relu_and_quantize(x, 8)
    assert (type(r.grad_fn).__name__ == PAIRED_NODE) == kept, r.grad_fn
    assert len(activation._PREPARED) == int(kept)
    assert_same_bits(r, torch.relu(x), "relu output")
    activation._PREPARED.clear()


def test_an_evaluation_keeps_nothing_with_or_without_gradients(no_compiler_fallback):
    """``eval()`` under ``no_grad`` (an evaluation) and ``eval()`` with gradients (a Hessian trace on a model in eval
    mode, ``labkit.hasb.hessian``): PyTorch's ReLU, nothing kept, the quantizer's output as always. The same call in
    training mode pairs (the control)."""
    use_fake_quant_path("auto")
    quantizer = trained_quantizer().eval()
    reference = copy.deepcopy(quantizer)
    x = torch.randn(2, 6, 5, 5, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        r = quantizer.relu_and_quantize(x, 2)
        assert r.grad_fn is None and len(activation._PREPARED) == 0
        assert_same_bits(quantizer(r, 2), reference(torch.relu(x), 2), "eval output under no_grad")
    x = x.requires_grad_()
    r = quantizer.relu_and_quantize(x, 2)
    assert type(r.grad_fn).__name__ == "ReluBackward0" and len(activation._PREPARED) == 0
    y = quantizer(r, 2)
    assert_same_bits(y, reference(torch.relu(x), 2), "eval output with gradients")
    quantizer.train()
    r = quantizer.relu_and_quantize(x, 2)
    assert type(r.grad_fn).__name__ == PAIRED_NODE and len(activation._PREPARED) == 1
    y = quantizer(r, 2)
    assert y.grad_fn is r.grad_fn and len(activation._PREPARED) == 0
    assert_same_bits(y, reference.train()(torch.relu(x), 2), "training output")


# ------------------------------------------------------------------ models


class PairingCounter:
    """Counts, per quantized layer, the calls whose activation quantizer returned the output its
    :class:`ReLUWithQuantizedCopy` kept (seen through autograd: the output's ``grad_fn`` is the paired node the ReLU's
    output came from). Forward hooks only, added after quantization (they do not change what is paired)."""

    def __init__(self, model: nn.Module):
        self.hits: dict[str, int] = {}
        self.nodes: dict[str, object] = {}
        self.handles = []
        for name, module in model.named_modules():
            if isinstance(module, ReLUWithQuantizedCopy):
                self.handles.append(module.register_forward_hook(self._after_relu))
                self.handles.append(module.layer.act_quantizer.register_forward_hook(
                    lambda m, args, out, name=module.into: self._after_quantizer(name, out)))

    def _after_relu(self, module, args, out):
        self.nodes[module.into] = out.grad_fn if type(out.grad_fn).__name__ == PAIRED_NODE else None

    def _after_quantizer(self, name, out):
        node = self.nodes.pop(name, None)
        if node is not None and out.grad_fn is node:
            self.hits[name] = self.hits.get(name, 0) + 1

    def take(self) -> dict[str, int]:
        hits, self.hits = self.hits, {}
        return hits

    def remove(self):
        for handle in self.handles:
            handle.remove()


def paired_map(model: nn.Module) -> dict[str, str]:
    return {name: m.into for name, m in model.named_modules() if isinstance(m, ReLUWithQuantizedCopy)}


def assert_references_its_own_layers(model: nn.Module) -> None:
    for name, module in model.named_modules():
        if isinstance(module, ReLUWithQuantizedCopy):
            assert module.layer is model.get_submodule(module.into), f"{name}.layer is not this model's {module.into}"
            assert list(module.children()) == [], f"{name} registers its layer as a child"


RESNET20_PAIRED = {"relu1": "layer1.0.conv1"}
RESNET20_PAIRED.update({f"layer{s}.{i}.relu2": f"layer{s + (i == 2)}.{(i + 1) % 3}.conv1"
                        for s in (1, 2, 3) for i in range(3) if (s, i) != (3, 2)})


def resnet_pair(name: str = "resnet20", bits=(8, 6, 4, 2), **options):
    """The FP32 model quantized by default (paired) and with ``absorb_relu=False``, with the same state."""
    torch.manual_seed(0)
    model = build_model(name)
    paired = labkit.quantize_model(model, bits=bits, **options)
    plain = labkit.quantize_model(model, bits=bits, absorb_relu=False, **options)
    paired.load_state_dict(plain.state_dict())
    return paired, plain


def test_resnet20_pairs_the_stem_relu_and_eight_block_outputs():
    """The ReLU after the stem and after each residual sum but the last feed the next ``conv1`` and its shortcut:
    these nine are paired with that ``conv1``; the last block's ``relu2`` feeds the pooling and stays a ReLU. The
    checkpoint keys are unchanged (the layer is a plain reference, not a child module)."""
    paired, plain = resnet_pair()
    assert paired_map(paired) == RESNET20_PAIRED
    assert pairable_relus(plain) == RESNET20_PAIRED  # what the analysis finds on the model that kept every ReLU
    assert pairable_relus(paired) == {} and absorbable_relus(paired) == {}  # nothing left to do
    assert_references_its_own_layers(paired)
    assert type(paired.layer3[2].relu2) is nn.ReLU
    assert paired_map(plain) == {} and not any(isinstance(m, AbsorbedReLU) for m in plain.modules())
    assert list(paired.state_dict()) == list(plain.state_dict())
    assert "also quantizes its output for layer2.0.conv1" in repr(paired.layer1[2].relu2)


def joint_steps(model, images, labels, steps: int, variant: str, counter=None):
    """``steps`` joint steps over the model's bit set (the losses of every bit-width summed, as ``labkit`` trains):
    yields, after each bit-width's backward, (step, bits, loss, {name: accumulated grad}, hits) and after each
    optimizer step (step, None, None, state_dict, None)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    for step in range(steps):
        optimizer.zero_grad(set_to_none=True)
        for bits in (8, 6, 4, 2):
            labkit.set_bits(model.train(), bits)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=variant == "bf16"):
                loss = F.cross_entropy(model(images), labels)
            assert len(activation._PREPARED) == 0, "a kept output is left after a full forward"
            loss.backward()
            hits = counter.take() if counter is not None else None
            yield step, bits, loss.detach(), {n: p.grad for n, p in model.named_parameters()}, hits
        optimizer.step()
        yield step, None, None, model.state_dict(), None


@pytest.mark.parametrize("variant,path", [("fp32", "auto"), ("bf16", "auto"), ("channels_last", "auto"),
                                          ("fp32", "fused")])
def test_resnet20_joint_steps_are_the_same_bits(variant, path, no_compiler_fallback):
    """Three joint {8, 6, 4, 2} steps of ResNet-20 (the first initialises the activation scales) by default and with
    ``absorb_relu=False``: every loss, every accumulated parameter gradient after each bit-width and every parameter
    and buffer after each optimizer step are the same bits, in fp32, under bf16 autocast and channels_last. Once the
    scales are set, each of the nine paired layers uses its kept output once per bit-width on ``auto`` (none on
    ``fused``, where nothing pairs)."""
    use_fake_quant_path(path)
    paired, plain = resnet_pair()
    gen = torch.Generator().manual_seed(11)
    images, labels = torch.randn(8, 3, 32, 32, generator=gen), torch.randint(0, 10, (8,), generator=gen)
    if variant == "channels_last":
        images = images.contiguous(memory_format=torch.channels_last)
        paired, plain = paired.to(memory_format=torch.channels_last), plain.to(memory_format=torch.channels_last)
    counter = PairingCounter(paired)
    steps = 3
    runs = zip(joint_steps(paired, images, labels, steps, variant, counter),
               joint_steps(plain, images, labels, steps, variant))
    compared = 0
    for (step, bits, loss, values, hits), (step_p, bits_p, loss_p, values_p, _) in runs:
        assert (step, bits) == (step_p, bits_p)
        what = f"{variant}, {path}, step {step}, " + (f"{bits} bits" if bits else "after the optimizer step")
        if bits is not None:
            assert_same_bits(loss, loss_p, f"{what}: loss")
            expected_hits = {layer: 1 for layer in RESNET20_PAIRED.values()} if step > 0 and path == "auto" else {}
            assert hits == expected_hits, f"{what}: kept outputs used {hits}"
        assert list(values) == list(values_p)
        for name, value in values_p.items():
            assert (values[name] is None) == (value is None), f"{what}: {name}"
            if value is not None:
                assert_same_bits(values[name], value, f"{what}: {name}")
                compared += 1
    assert compared > 0
    assert bool(paired.layer2[0].conv1.act_quantizer.scale["2"].grad != 0)
    counter.remove()


class Residual(nn.Module):
    """stem (FP32, the first layer) → bn → ``relu_a``, read by ``conv1`` and by the residual sum (paired) → bn1 →
    ``relu_b``, read by ``conv2`` only (absorbed) → fc (FP32, the last layer)."""

    def __init__(self, inplace: bool = False):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.relu_a = nn.ReLU(inplace=inplace)
        self.conv1 = nn.Conv2d(4, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.relu_b = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def head(self, x):
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))

    def forward(self, x):
        r = self.relu_a(self.bn(self.stem(x)))
        return self.head(self.conv2(self.relu_b(self.bn1(self.conv1(r)) + r)))


class InplaceResidual(Residual):
    def __init__(self):
        super().__init__(inplace=True)


class HookedResidual(Residual):
    """``relu_a`` carries a forward hook when the model is quantized: it stays a ReLU."""

    def __init__(self):
        super().__init__()
        self.relu_a.register_forward_hook(lambda module, args, out: None)


class TwoReaders(Residual):
    """``relu_a``'s output is read by two quantized convs (and nothing else): paired with the first."""

    def forward(self, x):
        r = self.relu_a(self.bn(self.stem(x)))
        return self.head(self.conv1(r) + self.conv2(r))


class ReusedReader(Residual):
    """``conv1`` runs twice, once on ``relu_a``'s output: not paired (its quantizer's calls are not all on that
    ReLU's output); ``relu_b`` → ``conv2`` is still absorbed."""

    def forward(self, x):
        r = self.relu_a(self.bn(self.stem(x)))
        return self.head(self.conv2(self.relu_b(self.bn1(self.conv1(self.conv1(r))) + r)))


class SharedReLU(Residual):
    """One ReLU module called twice: no pairing (and no absorption)."""

    def forward(self, x):
        r = self.relu_a(self.bn(self.stem(x)))
        return self.head(self.conv2(self.relu_a(self.bn1(self.conv1(r)) + r)))


class InputWrittenAfterTheReLU(Residual):
    """The ReLU's *input* is written in place after the ReLU (its output is read by ``conv1`` and a sum). A
    separate ReLU saves its output for the backward, not its input, so the plain model trains."""

    def forward(self, x):
        y = self.bn(self.stem(x))
        r = self.relu_a(y)
        z = self.conv1(r) + r
        y.mul_(0.5)
        return self.head(self.conv2(self.relu_b(self.bn1(z) + y)))


def quantize_small(model_class, **options):
    torch.manual_seed(0)
    model = model_class()
    example = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    paired = labkit.quantize_model(model, bits=(8, 2), example_input=example, **options)
    plain = labkit.quantize_model(model, bits=(8, 2), example_input=example, absorb_relu=False, **options)
    paired.load_state_dict(plain.state_dict())
    return paired, plain


def training_step_bits(paired, plain, what, steps: int = 2, prepare=None):
    """``steps`` training forwards and backwards at 2 bits of both models (the first initialises the scales): the
    output and every gradient (input and parameters) the same bits; returns the hits of the last step."""
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    counter = PairingCounter(paired)
    for step in range(steps):
        results = []
        for model in (paired, plain):
            labkit.set_bits(model.train(), 2)
            image = x.clone().requires_grad_()
            out = model(image)
            names, params = zip(*[(n, p) for n, p in model.named_parameters()])
            grads = torch.autograd.grad(out.square().sum(), (image,) + params, allow_unused=True)
            results.append((out.detach(),) + grads)
        names = ("output", "grad input") + names
        for name, a, b in zip(names, *results):
            assert (a is None) == (b is None), f"{what} {name}"
            if a is not None:
                assert_same_bits(a, b, f"{what}, step {step}: {name}")
        hits = counter.take()
    counter.remove()
    return hits


@pytest.mark.parametrize("model_class,expected", [
    (Residual, {"relu_a": "conv1"}),
    (InplaceResidual, {}),
    (HookedResidual, {}),
    (TwoReaders, {"relu_a": "conv1"}),
    (ReusedReader, {}),
    (SharedReLU, {}),
], ids=lambda v: v.__name__ if isinstance(v, type) else None)
def test_only_a_qualifying_relu_is_paired(model_class, expected, no_compiler_fallback):
    """A ReLU with ≥ 2 readers, one a quantized layer called once on it alone, is paired with that layer; an in-place
    ReLU, a ReLU with a hook, a ReLU whose layer runs twice and a ReLU module called twice are not. Either way a
    training step computes the same bits as without, and a paired ReLU's kept output is used."""
    use_fake_quant_path("auto")
    paired, plain = quantize_small(model_class)
    assert paired_map(paired) == expected
    assert_references_its_own_layers(paired)
    assert paired_map(plain) == {}
    hits = training_step_bits(paired, plain, model_class.__name__)
    assert hits == {layer: 1 for layer in expected.values()}


@pytest.mark.parametrize("act_init,signed", [("dorefa", False), ("lsq", True)])
def test_no_pairing_before_a_dorefa_or_signed_quantizer(act_init, signed):
    torch.manual_seed(0)
    model = Residual()
    plan = plan_quantization(model, bits=(8, 2), example_input=torch.randn(2, 3, 8, 8), act_init=act_init)
    plan["layers"]["conv1"]["act_signed"] = signed
    quantized = apply_plan(copy.deepcopy(model), plan)
    assert paired_map(quantized) == {} and type(quantized.relu_a) is nn.ReLU


def test_a_relu_whose_input_is_written_later_still_trains(no_compiler_fallback):
    """The plain model trains where the ReLU's input is written in place after the ReLU; so must the default one
    (a paired ReLU that saved its input for the backward would make the backward fail there)."""
    use_fake_quant_path("auto")
    paired, plain = quantize_small(InputWrittenAfterTheReLU)
    try:
        training_step_bits(paired, plain, "InputWrittenAfterTheReLU")
    except RuntimeError as error:
        pytest.fail(f"quantize_model paired {paired_map(paired)} although the ReLU's input is written in place "
                    f"after the ReLU; the paired node saved that input, so the second training step's backward "
                    f"fails where the absorb_relu=False model trains: {str(error)[:160]}")


def test_preact_resnet20_pairs_nothing():
    """Pre-activation blocks read every block ReLU by one conv only (those are absorbed), and ``relu_final`` feeds
    the pooling: nothing to pair."""
    paired, plain = resnet_pair("preact_resnet20", bits=(8, 2))
    assert paired_map(paired) == {} and pairable_relus(plain) == {}
    assert len([m for m in paired.modules() if isinstance(m, AbsorbedReLU)]) == 18


def test_absorb_relu_false_pairs_nothing():
    _, plain = resnet_pair(bits=(8, 2))
    assert paired_map(plain) == {}
    assert [type(m) for m in plain.modules() if isinstance(m, nn.ReLU)] == [nn.ReLU] * 19


# ------------------------------------------------------------------ fallbacks in a model


def small_paired():
    """The paired and plain :class:`Residual`, activation scales set from the same data at both bit-widths."""
    use_fake_quant_path("auto")
    paired, plain = quantize_small(Residual)
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(12))
    with torch.no_grad():
        for model in (paired, plain):
            for bits in (8, 2):
                labkit.set_bits(model.train(), bits)
                model(x)
    return paired, plain


@pytest.mark.parametrize("returns", ["modified", "none", "same"])
def test_a_pre_hook_on_the_layer(returns, no_compiler_fallback):
    """A forward pre-hook on the paired layer that returns another input: the kept output is not used and the
    result is the plain model's with the same hook; a hook that returns nothing or its input leaves the pairing."""
    paired, plain = small_paired()

    def hook(module, args):
        return {"modified": (args[0] * 0.75,), "none": None, "same": args}[returns]
    for model in (paired, plain):
        model.conv1.register_forward_pre_hook(hook)
    hits = training_step_bits(paired, plain, f"pre-hook returning {returns}", steps=1)
    assert hits == ({} if returns == "modified" else {"conv1": 1})


def test_in_place_write_and_other_bits_between_the_relu_and_the_layer(no_compiler_fallback):
    """Modules called by hand: ``r`` written in place before ``conv1`` reads it, or ``conv1`` switched to another
    bit-width in between: the kept output is not used; outputs and gradients are those of the separate ReLU and a
    plain ``conv1`` (with the write done out of place, where a separate ReLU's own backward would refuse it)."""
    paired, plain = small_paired()
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    for case in ("in_place", "other_bits", "control"):
        results = []
        for model in (paired, plain):
            labkit.set_bits(model.train(), 8)
            image = x.clone().requires_grad_()
            r = model.relu_a(model.bn(model.stem(image)))
            node = r.grad_fn
            if case == "in_place":
                r = r.mul_(1.5) if model is paired else r * 1.5
            elif case == "other_bits":
                model.conv1.set_bits(2)
            out = model.conv1(r)
            if model is paired:
                assert type(node).__name__ == PAIRED_NODE, case
                used = any(f[0] is node for f in out.grad_fn.next_functions)
                assert used == (case == "control"), f"{case}: the kept output was {'' if used else 'not '}used"
            loss = (out.square() + out).sum() + r.sum()
            params = (image, model.conv1.act_quantizer.scale["8"], model.conv1.act_quantizer.scale["2"],
                      model.conv1.weight, model.bn.weight)
            results.append((out.detach(),) + torch.autograd.grad(loss, params, allow_unused=True,
                                                                 materialize_grads=True))
            assert len(activation._PREPARED) == 0
        for index, (a, b) in enumerate(zip(*results)):
            assert_same_bits(a, b, f"{case}: result {index}")


def test_deepcopy_and_pickle_right_after_a_forward(no_compiler_fallback):
    """After a training forward (and after a ReLU whose layer was not called yet) the model deep-copies and pickles;
    each copy's paired ReLUs point to the copy's own layers, and a copy trains as the original, with its own kept
    outputs used."""
    use_fake_quant_path("auto")
    paired, plain = resnet_pair(bits=(8, 2))
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    labkit.set_bits(paired.train(), 2)
    paired(x)  # initialises the 2-bit scales
    out = paired(x)  # a paired forward
    assert len(activation._PREPARED) == 0
    dangling = paired.relu1(paired.bn1(paired.conv1(x)))  # a kept output its layer never took
    assert len(activation._PREPARED) == 1
    buffer = io.BytesIO()
    torch.save(paired, buffer)
    buffer.seek(0)
    copies = {"deepcopy": copy.deepcopy(paired), "pickle": torch.load(buffer, weights_only=False)}
    del dangling
    activation._PREPARED.clear()
    out.sum().backward()
    for name, twin in copies.items():
        assert paired_map(twin) == RESNET20_PAIRED, name
        assert_references_its_own_layers(twin)
        assert all(twin.get_submodule(r).layer is not paired.get_submodule(r).layer for r in RESNET20_PAIRED)
        labkit.set_bits(twin.train(), 2)
        counter = PairingCounter(twin)
        twin_out = twin(x)
        assert counter.take() == {layer: 1 for layer in RESNET20_PAIRED.values()}, name
        counter.remove()
        assert_same_bits(twin_out, out, f"{name} output")
        twin_out.sum().backward()
        for (n, p), (_, q) in zip(twin.named_parameters(), paired.named_parameters()):
            assert (p.grad is None) == (q.grad is None), n
            if p.grad is not None:
                assert_same_bits(p.grad, q.grad, f"{name} {n} grad")


def test_int_checkpoint_round_trip_keeps_the_pairs(tmp_path, no_compiler_fallback):
    """``save_int`` / ``load_int``: the loaded model pairs the same ReLUs, with its own layers, and its training
    forward uses the kept outputs and gives the plain model's output."""
    use_fake_quant_path("auto")
    paired, plain = resnet_pair(bits=(8, 2))
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        for bits in (8, 2):
            labkit.set_bits(paired.train(), bits)
            paired(x)
    loaded = load_int(save_int(paired.eval(), tmp_path / "paired.safetensors"))
    assert paired_map(loaded) == RESNET20_PAIRED
    assert_references_its_own_layers(loaded)
    plain.load_state_dict(loaded.state_dict())
    for bits in (8, 2):
        results = []
        for model in (loaded, plain):
            labkit.set_bits(model.train(), bits)
            counter = PairingCounter(model)
            out = model(x)
            results.append((out, counter.take()))
            counter.remove()
        assert results[0][1] == {layer: 1 for layer in RESNET20_PAIRED.values()}
        assert_same_bits(results[0][0], results[1][0], f"loaded vs plain, {bits} bits")


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_double_backward_through_a_paired_model(mode, no_compiler_fallback):
    """A Hessian-vector product (``create_graph=True``) of the small residual model at 2 bits. In evaluation mode, as
    HASB's Hessian traces take it (``labkit.hasb.hessian``), nothing pairs and every result is the same bits as the
    ``absorb_relu=False`` model. In training mode the ReLU pairs: first-order gradients are the same bits, and the
    second derivatives agree to float rounding only (the paired node's create_graph backward reaches ``x`` through its
    own ``torch.relu(x)``, where autograd sums the terms at a separate ReLU's output first: another summation order;
    float64 runs of both models agree to ~1e-15)."""
    paired, plain = small_paired()
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(9))
    results = []
    for model in (paired, plain):
        labkit.set_bits(model.train(mode == "train"), 2)
        counter = PairingCounter(model)
        params = [model.conv1.weight, model.conv2.weight, model.stem.weight, model.conv1.act_quantizer.scale["2"]]
        loss = model(x).square().sum()
        grads = torch.autograd.grad(loss, params, create_graph=True)
        vectors = [torch.randn(p.shape, generator=torch.Generator().manual_seed(i)) for i, p in enumerate(params)]
        hvp = torch.autograd.grad(sum((g * v).sum() for g, v in zip(grads, vectors)), params)
        results.append([g.detach() for g in grads] + list(hvp))
        assert counter.take() == ({"conv1": 1} if model is paired and mode == "train" else {})
        counter.remove()
    assert all(bool(t.abs().sum() > 0) for t in results[1][4:])
    names = [f"∂L/∂{n}" for n in ("conv1.weight", "conv2.weight", "stem.weight", "conv1 scale 2")]
    names += [f"Hv for {n}" for n in ("conv1.weight", "conv2.weight", "stem.weight", "conv1 scale 2")]
    for name, a, b in zip(names[:4], *(r[:4] for r in results)):
        assert_same_bits(a, b, name)
    for name, a, b in zip(names[4:], *(r[4:] for r in results)):
        if mode == "eval":
            assert_same_bits(a, b, name)
        else:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * float(b.abs().max()), msg=name)


# ------------------------------------------------------------------ HASB's graph


def test_layer_tracer_and_layer_predecessors_on_a_paired_model():
    """``LayerTracer`` keeps a paired ReLU as a leaf (its forward branches on Python state fx cannot trace), and
    ``layer_predecessors`` of the default ResNet-20 is that of the ``absorb_relu=False`` one, by fx and by hooks."""
    paired, plain = resnet_pair(bits=(8, 2))
    graph = LayerTracer().trace(paired)
    leaves = {node.target for node in graph.nodes if node.op == "call_module"}
    assert set(RESNET20_PAIRED) <= leaves
    layers = list(quantized_layers(plain))
    expected = layer_predecessors(plain, layers, method="fx")
    assert expected["layer1.1.conv1"] == "layer1.0.conv2" and expected["layer1.0.conv1"] is None
    assert layer_predecessors(paired, layers, method="fx") == expected
    example = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(10))
    assert layer_predecessors(paired, layers, method="hooks", example_input=example) == expected


# ------------------------------------------------------------------ from the review: readers, aliases, checkpoints


class ThreeReaders(Residual):
    """``relu_a``'s output is read by ``conv1``, the residual sum and a pooling branch: three gradients, which
    autograd adds in its own order, so it is not paired (``relu_b`` → ``conv2`` is still absorbed)."""

    def forward(self, x):
        r = self.relu_a(self.bn(self.stem(x)))
        return self.head(self.conv2(self.relu_b(self.bn1(self.conv1(r)) + r))) + self.head(r)


class ReadTwice(Residual):
    """The other reader of ``relu_a``'s output reads it twice (``r + r``): two gradients there too, not paired."""

    def forward(self, x):
        r = self.relu_a(self.bn(self.stem(x)))
        return self.head(self.conv2(self.relu_b(self.bn1(self.conv1(r)) + (r + r))))


class AliasedSum(Residual):
    """``a += 1`` runs in place on the batch norm's output, which fx records as a sum; an alias of it is written
    later. The ReLU's input is that tensor, so neither ReLU of the sum's chain may be taken in."""

    def forward(self, x):
        a = self.bn(self.stem(x))
        b = a
        a += 1.0
        r = self.relu_a(a)
        z = self.conv1(r) + r
        b.mul_(0.5)
        return self.head(self.conv2(self.relu_b(self.bn1(z)))) + b.mean()


@pytest.mark.parametrize("model_class", [ThreeReaders, ReadTwice, AliasedSum], ids=lambda c: c.__name__)
def test_more_gradients_or_an_aliased_input_are_not_paired(model_class, no_compiler_fallback):
    """Not paired, and the model trains with the same bits as the ``absorb_relu=False`` one (before the review a
    third reader changed the input gradients' bits and the aliased sum failed the backward)."""
    use_fake_quant_path("auto")
    paired, plain = quantize_small(model_class)
    assert paired_map(paired) == {}
    assert training_step_bits(paired, plain, model_class.__name__) == {}


class Checkpointed(nn.Module):
    """A module run through ``torch.utils.checkpoint`` (added after quantization, as a user would)."""

    def __init__(self, inner: nn.Module, reentrant: bool):
        super().__init__()
        self.inner, self.reentrant = inner, reentrant

    def forward(self, x):
        return torch.utils.checkpoint.checkpoint(self.inner, x, use_reentrant=self.reentrant)


@pytest.mark.parametrize("reentrant", [False, True], ids=["non_reentrant", "reentrant"])
def test_checkpointed_blocks_train_as_without_pairing(reentrant, no_compiler_fallback):
    """Every ResNet-20 block checkpointed: a paired ReLU and its layer then sit in different segments (and a block's
    recompute runs inside the backward). Nothing pairs there, the steps give the same bits as ``absorb_relu=False``
    (before the review the non-reentrant recompute raised a CheckpointError), and nothing is kept after a backward."""
    use_fake_quant_path("auto")
    paired, plain = resnet_pair(bits=(8, 2))
    for model in (paired, plain):
        for stage in (model.layer1, model.layer2, model.layer3):
            for index in range(len(stage)):
                stage[index] = Checkpointed(stage[index], reentrant)
    gen = torch.Generator().manual_seed(13)
    images, labels = torch.randn(4, 3, 32, 32, generator=gen), torch.randint(0, 10, (4,), generator=gen)
    counter = PairingCounter(paired)
    for step in range(2):
        for bits in (8, 2):
            results = []
            for model in (paired, plain):
                labkit.set_bits(model.train(), bits)
                image = images.clone().requires_grad_()
                model.zero_grad(set_to_none=True)
                loss = F.cross_entropy(model(image), labels)
                loss.backward()  # (a reentrant checkpoint does not take torch.autograd.grad)
                names, params = zip(*model.named_parameters())
                results.append((loss.detach(), image.grad) + tuple(p.grad for p in params))
                assert len(activation._PREPARED) == 0, f"kept outputs left after the backward ({model is paired})"
            for name, a, b in zip(("loss", "grad input") + names, *results):
                assert (a is None) == (b is None), name
                if a is not None:
                    assert_same_bits(a, b, f"step {step}, {bits} bits: {name}")
    assert counter.take() == {}
    counter.remove()


def test_a_channels_last_relu_output_can_be_written_in_place(no_compiler_fallback):
    """As PyTorch's ReLU output: the paired ``r`` of a channels_last ``x`` is not a view of the kernel's NHWC buffer,
    so an in-place write to it is allowed (before the review it raised)."""
    use_fake_quant_path("auto")
    x = torch.randn(2, 6, 5, 5).contiguous(memory_format=torch.channels_last).requires_grad_()
    scale = torch.tensor(0.1, requires_grad=True)
    r, y = lsq.relu_and_fake_quantize(x, scale, 0, 15, grad_factor=0.01)
    assert type(r.grad_fn).__name__ == PAIRED_NODE and r.is_contiguous(memory_format=torch.channels_last)
    expected = torch.relu(x.detach()) * 2.0
    r.mul_(2.0)
    assert_same_bits(r.detach(), expected, "r after an in-place write")
    (r.sum() + y.sum()).backward()
    assert x.grad is not None


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])  # scripts/gpu_check.sh runs the cuda cases


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_the_pair_on_each_device(device, dtype, no_compiler_fallback):
    """On the ``"compiled"`` path (which pairs on CUDA too; ``"auto"`` keeps CUDA eager): both outputs and ∂/∂x the
    same bits as ``torch.relu`` then ``fake_quantize`` on that path, the scale gradient within 2 float32 steps of the
    unfused call's."""
    use_fake_quant_path("compiled")
    scale = torch.tensor(0.0625, device=device)
    x = op_input((4, 6, 7, 7), scale.cpu(), 15, dtype, seed=21).to(device)
    grad_r, grad_y = (upstream_gradient(x.shape, seed, dtype).to(device) for seed in (22, 23))
    outputs = []
    for paired in (True, False):
        leaf, step = x.clone().requires_grad_(), scale.clone().requires_grad_()
        if paired:
            r, y = relu_and_fake_quantize(leaf, step, 0, 15, grad_factor=0.01)
            assert type(r.grad_fn).__name__ == PAIRED_NODE
        else:
            r = torch.relu(leaf)
            y = fake_quantize(r, step, 0, 15, grad_factor=0.01)
        torch.autograd.backward([r, y], [grad_r, grad_y])
        outputs.append((r.detach(), y.detach(), leaf.grad, step.grad))
    for name, a, b in zip(("r", "y", "grad x"), outputs[0][:3], outputs[1][:3]):
        assert_same_bits(a, b, f"{device} {name}")
    torch.testing.assert_close(outputs[0][3], outputs[1][3], rtol=2.0 ** -22, atol=0.0)
