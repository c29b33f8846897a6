"""ReLU absorption (:mod:`labkit.relu_absorption`): a ReLU that runs inside the next activation quantizer changes
nothing the model computes.

References are independent of the feature: PyTorch's own ``torch.relu`` followed by the unfused
``fake_quantize`` call on the same fake-quant path, compared bit for bit (``x.view(torch.int32)`` for fp32, int16 for
bf16, so signed zeros count). The inputs are made by hand to sit on every boundary that matters for a ReLU in front of
a quantizer: negatives, ``+0.0`` and ``-0.0``, values within half a step below 0 (they round to code 0, so a
quantizer that ignored the ReLU would pass their gradient and count them in the scale gradient), exact ties
``(k + 1/2) · s`` of both roundings of Double Rounding, and values beyond the clip. The compiled kernels sum an fp32
scale gradient in float64 (:func:`labkit.quant.lsq._sum_to_scale`): there it is checked against the float64 sum of
the per-element terms, within two float32 steps, as ``tests/test_fake_quant_paths.py`` does; everything else is
compared bit for bit. Then the model level (which ReLUs ``quantize_model`` takes in, where it must not, the same loss
and gradients with and without), the INT checkpoint round trip and the error for a signed quantizer.
"""
import copy
import warnings

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from bit_exact import assert_same_bits, bits_of, no_compiler_fallback  # noqa: F401 (a fixture)
import labkit
from labkit.config import ConfigError
from labkit.convert import apply_plan, plan_quantization, quantized_layers
from labkit.models import build_model
from labkit.nn import AbsorbedReLU
from labkit.quant import lsq
from labkit.quant.activation import ActivationQuantizer
from labkit.quant.lsq import fake_quant_path, fake_quantize, use_fake_quant_path
from labkit.relu_absorption import absorbable_relus
from labkit.storage import load_int, save_int

PATHS = ("fused", "recompute", "compiled", "auto")
EAGER = ("fused", "recompute")
GRAD_FACTOR = 0.0137


@pytest.fixture(autouse=True)
def default_path_after():
    """Every test leaves the default fake-quant path on, whatever it switched to (or failed in)."""
    try:
        yield
    finally:
        use_fake_quant_path(lsq.DEFAULT_PATH)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)



# ------------------------------------------------------------------ the op: fake_quantize(..., relu_first=True)


def hand_made_codes(qmax: int, shift: int) -> torch.Tensor:
    """``x / s`` values on every boundary a ReLU in front of the quantizer touches (float64)."""
    step = 1 << shift
    top = (qmax + 1) * step  # first-rounding codes from here on are clipped
    values = [-1e4, -300.0, -7.5, -2.5, -1.0, -0.7, -0.5, -0.3, -0.2, -1e-3, -0.0,
              0.0, 1e-3, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5, 2.5,
              top - 1.5, top - 0.5, top - 0.3, top, top + 0.5, top + 3.0, 1e4, float("inf"), float("-inf")]
    values += [k + 0.5 for k in range(0, top + 2)]  # ties of the first rounding, half-even: 0.5 → 0, 1.5 → 2, ...
    values += [(k + 0.5) * step for k in range(0, qmax + 2)] if shift else []  # ties of the second rounding
    values += [-(k + 0.5) for k in range(0, 6)]
    return torch.tensor(values, dtype=torch.float64)


def op_input(shape, scale: torch.Tensor, qmax: int, shift: int, dtype, seed: int) -> torch.Tensor:
    """A tensor of ``shape`` holding every hand-made code of :func:`hand_made_codes` (several times, shuffled) and
    random ones between, times the scale its element gets."""
    gen = torch.Generator().manual_seed(seed)
    numel = torch.Size(shape).numel()
    codes = hand_made_codes(qmax, shift)
    assert numel >= 2 * codes.numel()
    random = (torch.rand(numel, generator=gen, dtype=torch.float64) * 2 - 0.6) * (qmax + 1) * (1 << shift) * 1.3
    filled = torch.cat([codes.repeat(numel // codes.numel()), random])[:numel]
    filled = filled[torch.randperm(numel, generator=gen)].view(shape)
    return (filled * scale.double()).to(dtype)


def upstream_gradient(shape, seed: int, dtype) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed + 7)
    grad = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    flat = grad.view(-1)
    flat[::11] = -0.0  # a -0.0 upstream gradient must come back the same where the ReLU passes it
    flat[5::13] = 0.0
    return grad


def run_op(path: str, absorbed: bool, x, scale, qmin, qmax, shift, grad):
    """(output, ∂/∂x, ∂/∂s) of the absorbed call or of ``torch.relu`` then the unfused call, on ``path``."""
    use_fake_quant_path(path)
    x = x.detach().clone().requires_grad_()
    scale = scale.detach().clone().requires_grad_()
    if absorbed:
        out = fake_quantize(x, scale, qmin, qmax, shift=shift, grad_factor=GRAD_FACTOR, relu_first=True)
    else:
        out = fake_quantize(torch.relu(x), scale, qmin, qmax, shift=shift, grad_factor=GRAD_FACTOR)
    grad_x, grad_scale = torch.autograd.grad(out, (x, scale), grad)
    assert fake_quant_path() == path
    return out.detach(), grad_x, grad_scale


def float64_scale_gradient(x, scale, qmin, qmax, shift, grad) -> torch.Tensor:
    """The float64 sum of the scale gradient's per-element terms of ``relu(x)`` (eager recompute path, with the scale
    expanded to ``x``'s shape and ``g`` = 1 nothing is summed), rounded once to float32, times ``g``."""
    use_fake_quant_path("recompute")
    full = scale.detach().expand(x.shape).clone().requires_grad_()
    out = fake_quantize(torch.relu(x.detach()), full, qmin, qmax, shift=shift, grad_factor=1.0)
    (terms,) = torch.autograd.grad(out, full, grad)
    return terms.double().sum_to_size(scale.shape).float() * GRAD_FACTOR


def op_cases():
    """(scale kind, qmin, qmax, shift): unsigned activation codes at 8/4/2 bits, and Double Rounding 4 → 2 bits
    (shift 2, the signed 2-bit bounds, as :class:`labkit.quant.weight.WeightQuantizer` calls it) and an unsigned 2-bit
    code of the same shift, each with a per-tensor and a per-channel (weight-like, 4-D) scale."""
    for kind in ("per_tensor", "per_channel"):
        for bits in (8, 4, 2):
            yield kind, 0, (1 << bits) - 1, 0
        yield kind, -2, 1, 2
        yield kind, 0, 3, 2


def make_scale(kind: str) -> torch.Tensor:
    if kind == "per_tensor":
        return torch.tensor(0.0625)  # a power of two: every (k + 1/2) · s is an exact tie in fp32 (and in bf16 to 2^8)
    return torch.tensor([2.0 ** -5, 0.0133, 2.0 ** -7, 0.0217, 0.0071, 2.0 ** -3]).view(-1, 1, 1, 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("kind,qmin,qmax,shift", list(op_cases()))
def test_relu_first_is_relu_then_fake_quantize_bit_for_bit(kind, qmin, qmax, shift, dtype, no_compiler_fallback):
    """On every path: the output and ∂/∂x of ``fake_quantize(x, relu_first=True)`` are those of
    ``fake_quantize(torch.relu(x))`` bit for bit, ∂/∂x is 0 wherever ``x ≤ 0``; the scale gradient is the same bits on
    the eager paths (and for bf16 everywhere: ATen sums it), the float64 sum within two float32 steps on the compiled
    kernels for fp32."""
    scale = make_scale(kind)
    shape = (6, 8, 7, 7) if kind == "per_channel" else (4, 6, 9, 9)
    x = op_input(shape, scale, qmax, shift, dtype, seed=qmax + 10 * shift)
    grad = upstream_gradient(shape, qmax, dtype)
    reference_sum = float64_scale_gradient(x, scale, qmin, qmax, shift, grad) if dtype == torch.float32 else None
    for path in PATHS:
        absorbed = run_op(path, True, x, scale, qmin, qmax, shift, grad)
        unfused = run_op(path, False, x, scale, qmin, qmax, shift, grad)
        what = f"{path}, {kind}, [{qmin}, {qmax}], shift {shift}, {dtype}"
        assert_same_bits(absorbed[0], unfused[0], f"{what} output")
        assert_same_bits(absorbed[1], unfused[1], f"{what} grad_x")
        if path in EAGER or dtype != torch.float32:
            assert_same_bits(absorbed[2], unfused[2], f"{what} grad_scale")
        else:
            torch.testing.assert_close(absorbed[2], reference_sum, rtol=2.0 ** -22, atol=0.0, msg=f"{what} grad_scale")
            torch.testing.assert_close(unfused[2], reference_sum, rtol=2.0 ** -22, atol=0.0, msg=f"{what} unfused")
        # The ReLU's own part, checked directly: nothing at or below 0 gets a value or a gradient.
        nonpositive = x <= 0
        assert bool((absorbed[0][nonpositive] == 0).all()), what
        assert bool((bits_of(absorbed[1])[nonpositive] == 0).all()), f"{what}: grad_x is not +0.0 where x <= 0"
        positive_passed = (absorbed[1] != 0) & ~nonpositive
        clipped = (absorbed[1] == 0) & ~nonpositive & (grad != 0)
        assert bool(positive_passed.any()) and bool(clipped.any()), f"{what}: the input misses a case"
    with torch.no_grad():  # evaluation calls (auto: the eager forward) take the ReLU in too
        for path in PATHS:
            use_fake_quant_path(path)
            assert_same_bits(fake_quantize(x, scale, qmin, qmax, shift=shift, relu_first=True),
                             fake_quantize(torch.relu(x), scale, qmin, qmax, shift=shift), f"{path} no_grad output")


def test_relu_first_channels_last_input(no_compiler_fallback):
    """A channels_last activation: the same bits as the separate ReLU on every path, and the layout kept where the
    unfused call keeps it."""
    scale = torch.tensor(0.0625)
    shape = (4, 6, 9, 9)
    x = op_input(shape, scale, 15, 0, torch.float32, seed=5).to(memory_format=torch.channels_last)
    grad = upstream_gradient(shape, 5, torch.float32).to(memory_format=torch.channels_last)
    reference_sum = float64_scale_gradient(x, scale, 0, 15, 0, grad)
    for path in PATHS:
        absorbed = run_op(path, True, x, scale, 0, 15, 0, grad)
        unfused = run_op(path, False, x, scale, 0, 15, 0, grad)
        assert_same_bits(absorbed[0], unfused[0], f"{path} output")
        assert_same_bits(absorbed[1], unfused[1], f"{path} grad_x")
        for name, a, b in zip(("output", "grad_x"), absorbed, unfused):
            assert a.is_contiguous(memory_format=torch.channels_last) == \
                b.is_contiguous(memory_format=torch.channels_last), f"{path} {name} layout"
        if path in EAGER:
            assert_same_bits(absorbed[2], unfused[2], f"{path} grad_scale")
        else:
            torch.testing.assert_close(absorbed[2], reference_sum, rtol=2.0 ** -22, atol=0.0, msg=f"{path} grad_scale")
        assert bool((absorbed[1][x <= 0] == 0).all())


def test_compiled_path_runs_the_relu_inside_its_kernels(monkeypatch, no_compiler_fallback):
    """On the compiled path the ReLU is not a separate operation: the compiled forward and backward get the ReLU's
    *input* (with negatives) and ``relu_first`` set."""
    calls = []
    for name in ("forward", "backward"):
        kernel = lsq._compiled(name)

        def recorded(*args, kernel=kernel, name=name):
            x = args[0 if name == "forward" else 1]
            calls.append((name, bool((x < 0).any()), args[6 if name == "forward" else 7]))  # relu_first
            return kernel(*args)
        monkeypatch.setitem(lsq._COMPILED, name, recorded)
    scale = torch.tensor(0.0625)
    x = op_input((4, 6, 9, 9), scale, 15, 0, torch.float32, seed=2)
    run_op("compiled", True, x, scale, 0, 15, 0, upstream_gradient(x.shape, 2, torch.float32))
    assert calls == [("forward", True, True), ("backward", True, True)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_double_backward_through_the_absorbed_relu(dtype, no_compiler_fallback):
    """``create_graph=True``: ∂L/∂x and ∂L/∂s, then ∂(∂L/∂s)/∂x, ∂(∂L/∂s)/∂s and ∂(∂L/∂x · p)/∂s of the absorbed call
    are those of the separate ReLU on every path, bit for bit (and not zero); the differentiable backward runs the
    eager kernels on every path, so this also checks their ReLU mask."""
    scale0 = torch.tensor(0.0625)
    x0 = op_input((4, 3, 7, 7), scale0, 15, 0, dtype, seed=6)
    x0 = torch.where(x0.isinf(), torch.zeros((), dtype=dtype), x0)  # inf · 0 in the second derivative is NaN on both
    gen = torch.Generator().manual_seed(8)
    probe = torch.randn(x0.shape, generator=gen).to(dtype)
    weights = torch.randn(x0.shape, generator=gen)

    def derivatives(path, absorbed):
        use_fake_quant_path(path)
        x = x0.clone().requires_grad_()
        scale = scale0.clone().requires_grad_()
        inner = x if absorbed else torch.relu(x)
        out = fake_quantize(inner, scale, 0, 15, grad_factor=0.3, relu_first=absorbed).float()
        loss = (out * weights + out.pow(2)).sum()  # the upstream gradient is not 0 where the output is
        grad_x, grad_s = torch.autograd.grad(loss, (x, scale), create_graph=True)
        second = torch.autograd.grad(grad_s, (x, scale), retain_graph=True)
        (mixed,) = torch.autograd.grad((grad_x * probe).float().sum(), scale)
        return (grad_x.detach(), grad_s.detach()) + second + (mixed,)

    names = ("grad_x", "grad_scale", "d grad_scale / dx", "d grad_scale / ds", "d (grad_x . p) / ds")
    for path in PATHS:
        expected = derivatives(path, False)
        assert all(bool(t.abs().sum() > 0) for t in expected[1:]), path
        got = derivatives(path, True)
        for name, a, b in zip(names, got, expected):
            assert_same_bits(a, b, f"{name}, {path}, {dtype}")
        assert bool((got[0][x0 <= 0] == 0).all()) and bool((got[2][x0 <= 0] == 0).all())


@pytest.mark.parametrize("failing", ["forward", "backward"])
def test_a_compiler_failure_falls_back_to_the_eager_relu(monkeypatch, failing):
    """Where a compiled kernel fails (no C++ compiler), the eager kernels take over the absorbed call, with the
    ReLU: the separate ReLU's bits (the gradients the fused path's), and one warning."""
    scale = torch.tensor(0.0625)
    x = op_input((4, 6, 9, 9), scale, 15, 0, torch.float32, seed=9)
    grad = upstream_gradient(x.shape, 9, torch.float32)
    expected = run_op("fused", False, x, scale, 0, 15, 0, grad)
    if failing == "backward":  # the forward ran compiled: its output is the compiled one (the same bits since b621146)
        expected = (run_op("compiled", False, x, scale, 0, 15, 0, grad)[0],) + expected[1:]
    use_fake_quant_path("compiled")
    lsq._compiled(failing)

    def fails(*args):
        raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found")
    monkeypatch.setitem(lsq._COMPILED, failing, fails)
    leaf_x, leaf_scale = x.clone().requires_grad_(), scale.clone().requires_grad_()
    with pytest.warns(RuntimeWarning, match="torch.compile is unavailable"):
        out = fake_quantize(leaf_x, leaf_scale, 0, 15, grad_factor=GRAD_FACTOR, relu_first=True)
        grad_x, grad_scale = torch.autograd.grad(out, (leaf_x, leaf_scale), grad)
    assert fake_quant_path() == "fused"
    for name, a, b in zip(("output", "grad_x", "grad_scale"), (out, grad_x, grad_scale), expected):
        assert_same_bits(a, b, f"fallback in the {failing}, {name}")


def test_relu_first_on_a_signed_or_dorefa_quantizer_raises():
    x = torch.randn(2, 3, 4, 4)
    signed = ActivationQuantizer(bits=(8,), signed=True)
    signed.relu_first = True
    with pytest.raises(ConfigError, match=r"relu_first is set on an activation quantizer with signed=True, "
                                           r"init='lsq'; only unsigned LSQ quantizers take a ReLU in\. Set "
                                           r"relu_first = False and put the ReLU back\."):
        signed(x, 8)
    dorefa = ActivationQuantizer(bits=(8,), init="dorefa")
    dorefa.relu_first = True
    with pytest.raises(ConfigError, match=r"signed=False, init='dorefa'; only unsigned LSQ"):
        dorefa(x, 8)
    unsigned = ActivationQuantizer(bits=(8,), init="percentile")
    unsigned.relu_first = True
    assert "relu_first=True" in repr(unsigned)
    use_fake_quant_path("fused")
    assert_same_bits(unsigned(x, 8), fake_quantize(torch.relu(x), unsigned.scale["8"], 0, 255,
                                                  grad_factor=1.0), "percentile quantizer")


# ------------------------------------------------------------------ models


def absorbed_map(model: nn.Module) -> dict[str, str]:
    """``{ReLU name: layer name}`` of the model's :class:`AbsorbedReLU` modules."""
    return {name: m.into for name, m in model.named_modules() if isinstance(m, AbsorbedReLU)}


def plain_relus(model: nn.Module) -> set[str]:
    return {name for name, m in model.named_modules() if type(m) is nn.ReLU}


def relu_first_layers(model: nn.Module) -> set[str]:
    return {name for name, layer in quantized_layers(model).items() if layer.act_quantizer.relu_first}


def quantized_pair(name: str, bits=(8, 2)):
    """The FP32 model ``name`` quantized with and without absorption, with the same state."""
    torch.manual_seed(0)
    model = build_model(name)
    absorbed = labkit.quantize_model(model, bits=bits)
    plain = labkit.quantize_model(model, bits=bits, absorb_relu=False)
    assert list(absorbed.state_dict()) == list(plain.state_dict())  # the same checkpoint keys
    absorbed.load_state_dict(plain.state_dict())
    return absorbed, plain


RESNET20_BLOCKS = [f"layer{stage}.{index}" for stage in (1, 2, 3) for index in range(3)]


def test_resnet20_absorbs_the_nine_block_internal_relus():
    """In a post-activation block only ``relu1`` → ``conv2`` has one reader; the stem ReLU and every ``relu2`` also
    feed a shortcut (or the pooling) and stay ReLUs (those that feed the next block's ``conv1`` as
    ``ReLUWithQuantizedCopy`` modules, ``tests/test_relu_pairing.py``; the last one, before the pooling, plain)."""
    absorbed, plain = quantized_pair("resnet20")
    expected = {f"{block}.relu1": f"{block}.conv2" for block in RESNET20_BLOCKS}
    assert absorbed_map(absorbed) == expected
    assert relu_first_layers(absorbed) == set(expected.values())
    assert plain_relus(absorbed) == {"layer3.2.relu2"}
    assert {name for name, m in absorbed.named_modules() if isinstance(m, nn.ReLU)} == \
        {"relu1"} | {f"{block}.relu2" for block in RESNET20_BLOCKS}
    assert absorbed.labkit_quant["absorb_relu"] is True and plain.labkit_quant["absorb_relu"] is False
    assert absorbed_map(plain) == {} and relu_first_layers(plain) == set()
    assert plain_relus(plain) == {"relu1"} | {f"{block}.{r}" for block in RESNET20_BLOCKS for r in ("relu1", "relu2")}
    assert "runs inside layer2.1.conv2.act_quantizer" in repr(absorbed.layer2[1].relu1)


def loss_and_gradients(model, images, labels, path, bits):
    use_fake_quant_path(path)
    labkit.set_bits(model, bits)
    model.train()
    loss = F.cross_entropy(model(images), labels)
    names, params = zip(*model.named_parameters())
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return loss.detach(), dict(zip(names, grads))


@pytest.mark.parametrize("bits", [8, 2])
def test_resnet20_loss_and_every_gradient_are_the_same_bits(bits, no_compiler_fallback):
    """A training step's loss and every parameter gradient with absorption are those without it, bit for bit, on
    every path (activation scales initialised by the first pass of each model, identically)."""
    absorbed, plain = quantized_pair("resnet20")
    gen = torch.Generator().manual_seed(bits)
    images = torch.randn(8, 3, 32, 32, generator=gen)
    labels = torch.randint(0, 10, (8,), generator=gen)
    for path in PATHS:
        loss_a, grads_a = loss_and_gradients(absorbed, images, labels, path, bits)
        loss_p, grads_p = loss_and_gradients(plain, images, labels, path, bits)
        assert_same_bits(loss_a, loss_p, f"loss, {path}, {bits} bits")
        assert list(grads_a) == list(grads_p)
        used = 0
        for name in grads_p:
            assert (grads_a[name] is None) == (grads_p[name] is None), name
            if grads_p[name] is not None:
                used += 1
                assert_same_bits(grads_a[name], grads_p[name], f"{name} grad, {path}, {bits} bits")
        assert used > 0 and grads_p["layer1.0.conv2.act_quantizer.scale." + str(bits)] is not None
        assert bool(grads_p["layer1.0.conv2.act_quantizer.scale." + str(bits)] != 0)


def test_preact_resnet20_absorbs_both_relus_of_every_block():
    """Pre-activation blocks: ``conv1(relu1(bn1(x)))`` and ``conv2(relu2(bn2(·)))``, the shortcut reads ``x`` before
    ``bn1``: all 18 block ReLUs have one reader each; ``relu_final`` feeds the pooling and stays."""
    absorbed, plain = quantized_pair("preact_resnet20")
    expected = {f"{block}.relu{i}": f"{block}.conv{i}" for block in RESNET20_BLOCKS for i in (1, 2)}
    assert absorbed_map(absorbed) == expected
    assert relu_first_layers(absorbed) == set(expected.values())
    assert plain_relus(absorbed) == {"relu_final"}
    gen = torch.Generator().manual_seed(3)
    images, labels = torch.randn(8, 3, 32, 32, generator=gen), torch.randint(0, 10, (8,), generator=gen)
    for path in ("fused", "compiled"):
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            loss_a, grads_a = loss_and_gradients(absorbed, images, labels, path, 2)
        loss_p, grads_p = loss_and_gradients(plain, images, labels, path, 2)
        assert_same_bits(loss_a, loss_p, f"preact loss, {path}")
        for name, grad in grads_p.items():
            if grad is not None:
                assert_same_bits(grads_a[name], grad, f"preact {name} grad, {path}")


# Small models for where a ReLU must stay: stem (FP32, the first layer) → ... → fc (FP32, the last layer).

class TwoReLUs(nn.Module):
    """The control: two ReLU modules, each read by one quantized conv only (both can be absorbed)."""

    def __init__(self, inplace: bool = False):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.relu_a = nn.ReLU(inplace=inplace)
        self.conv1 = nn.Conv2d(4, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.relu_b = nn.ReLU(inplace=inplace)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def head(self, x):
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))

    def forward(self, x):
        x = self.conv1(self.relu_a(self.bn(self.stem(x))))
        return self.head(self.conv2(self.relu_b(self.bn1(x))))


class SharedReLU(TwoReLUs):
    """One ReLU module called twice (as torchvision's BasicBlock does)."""

    def forward(self, x):
        x = self.conv1(self.relu_a(self.bn(self.stem(x))))
        return self.head(self.conv2(self.relu_a(self.bn1(x))))


class TwoReaders(TwoReLUs):
    """``relu_a``'s output is read by two quantized convs."""

    def forward(self, x):
        y = self.relu_a(self.bn(self.stem(x)))
        return self.head(self.conv1(y) + self.conv2(y))


class SharedLayer(TwoReLUs):
    """``conv1`` runs twice: on ``relu_a``'s output and on a non-negative tensor that is no ReLU's output (exactly 0
    at its minimum, where a gradient flows). Its quantizer's ``relu_first`` would act on both calls, and mask the
    gradient at that 0 in the second one; ``relu_b`` → ``conv2`` still goes in."""

    def forward(self, x):
        y = self.bn(self.stem(x))
        shifted = y - y.amin().detach()
        x = self.conv1(self.relu_a(y)) + self.conv1(shifted)
        return self.head(self.conv2(self.relu_b(self.bn1(x))))


class InplaceInputReadElsewhere(TwoReLUs):
    """An in-place ReLU whose input is also added later: that add reads the ReLU's output (the same tensor), which
    an absorbed ReLU would no longer write."""

    def __init__(self):
        super().__init__(inplace=True)

    def forward(self, x):
        y = self.bn(self.stem(x))
        z = self.relu_a(y)
        return self.head(self.conv1(z) + y)


class InplaceOnlyReader(TwoReLUs):
    def __init__(self):
        super().__init__(inplace=True)


class Untraceable(TwoReLUs):
    """Python control flow on a tensor: ``torch.fx`` cannot trace it."""

    def forward(self, x):
        x = self.conv1(self.relu_a(self.bn(self.stem(x))))
        if x.mean() > -1e9:
            x = self.bn1(x)
        return self.head(self.conv2(self.relu_b(x)))


class HookedReLU(TwoReLUs):
    """``relu_a`` carries a forward hook when the model is quantized: it stays, so the hook keeps seeing its output."""

    seen: list = []  # what the hook saw (class level: the quantized copy's hook is the same function)

    def __init__(self):
        super().__init__()
        self.relu_a.register_forward_hook(lambda module, args, out: HookedReLU.seen.append(float(out.detach().min())))


class InplaceOnTheInput(nn.Module):
    """An in-place ReLU on the model's own input (the caller's tensor), read by one quantized conv only: an absorbed
    ReLU would no longer overwrite the caller's tensor, so it stays."""

    def __init__(self):
        super().__init__()
        self.relu_a = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(self.conv1(self.relu_a(x)), 1).flatten(1))


def quantize_small(model_class, **options):
    torch.manual_seed(0)
    model = model_class()
    example = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    absorbed = labkit.quantize_model(model, bits=(8, 2), example_input=example, **options)
    plain = labkit.quantize_model(model, bits=(8, 2), example_input=example, absorb_relu=False, **options)
    absorbed.load_state_dict(plain.state_dict())
    return absorbed, plain


def assert_same_training_forward(absorbed, plain, what):
    """The training-mode outputs (and input gradients) at 2 bits with and without absorption, bit for bit."""
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    results = []
    for model in (absorbed, plain):
        labkit.set_bits(model.train(), 2)
        image = x.clone().requires_grad_()
        out = model(image)
        results.append((out.detach(), torch.autograd.grad(out.square().sum(), image)[0]))
    for name, a, b in zip(("output", "grad input"), *results):
        assert_same_bits(a, b, f"{what} {name}")


@pytest.mark.parametrize("model_class,expected", [
    (TwoReLUs, {"relu_a": "conv1", "relu_b": "conv2"}),
    (InplaceOnlyReader, {"relu_a": "conv1", "relu_b": "conv2"}),
    (SharedReLU, {}),
    (TwoReaders, {}),
    (SharedLayer, {"relu_b": "conv2"}),
    (InplaceInputReadElsewhere, {}),
], ids=lambda v: v.__name__ if isinstance(v, type) else None)
def test_only_a_relu_whose_work_the_quantizer_can_take_is_absorbed(model_class, expected):
    """A ReLU module called twice, a ReLU read by two layers, a ReLU read by a layer that also runs on another input,
    and an in-place ReLU whose input is read elsewhere stay ReLUs; the controls (each ReLU read by one quantized
    layer, also in place) are absorbed. Either way the model computes the same bits as without absorption."""
    absorbed, plain = quantize_small(model_class)
    assert absorbed_map(absorbed) == expected
    assert relu_first_layers(absorbed) == set(expected.values())
    assert {name for name, m in absorbed.named_modules() if isinstance(m, nn.ReLU)} == {"relu_a", "relu_b"} - set(expected)
    assert absorbed_map(plain) == {} and relu_first_layers(plain) == set()
    assert_same_training_forward(absorbed, plain, model_class.__name__)


def test_a_relu_with_a_hook_stays_and_its_hook_still_runs():
    """A hook on a ReLU when the model is quantized keeps the ReLU (replacing the module would drop the hook), and the
    hook still sees the ReLU's output (never negative) in the quantized model; ``relu_b`` still goes in."""
    absorbed, plain = quantize_small(HookedReLU)
    assert absorbed_map(absorbed) == {"relu_b": "conv2"} and plain_relus(absorbed) == {"relu_a"}
    HookedReLU.seen.clear()
    assert_same_training_forward(absorbed, plain, "HookedReLU")
    assert len(HookedReLU.seen) == 2 and min(HookedReLU.seen) >= 0.0  # one forward of each model


def test_an_in_place_relu_on_the_models_input_stays():
    torch.manual_seed(0)
    model = InplaceOnTheInput()
    quantized = labkit.quantize_model(model, bits=(8, 2), keep_first_last=False,
                                      example_input=torch.rand(2, 3, 8, 8))
    assert absorbed_map(quantized) == {} and isinstance(quantized.relu_a, nn.ReLU)
    images = torch.randn(2, 3, 8, 8)
    quantized.eval()(images)
    assert float(images.min()) >= 0.0  # the in-place ReLU still overwrote the caller's tensor


def test_no_absorption_before_a_signed_quantizer():
    """A layer whose activation quantizer is signed (here forced through the plan) computes no ReLU for its input;
    the other ReLU of the model still goes in."""
    torch.manual_seed(0)
    model = TwoReLUs()
    plan = plan_quantization(model, bits=(8, 2), example_input=torch.randn(2, 3, 8, 8))
    assert plan["layers"] == {"conv1": {"act_signed": False}, "conv2": {"act_signed": False}}
    plan["layers"]["conv1"]["act_signed"] = True
    quantized = apply_plan(copy.deepcopy(model), plan)  # a plan without "absorb_relu": the default, absorb
    assert quantized.conv1.act_quantizer.signed and not quantized.conv1.act_quantizer.relu_first
    assert absorbed_map(quantized) == {"relu_b": "conv2"}
    assert plain_relus(quantized) == {"relu_a"}
    assert absorbable_relus(quantized) == {}  # nothing left to absorb


@pytest.mark.parametrize("act_init,absorbs", [("dorefa", False), ("percentile", True), ("lsq", True)])
def test_dorefa_activations_keep_their_relus(act_init, absorbs):
    """DoReFa clamps the input to [0, 1] before its fixed step (not LSQ's learned scale): no absorption there; the
    percentile initialisation is an LSQ quantizer and takes the ReLU in."""
    absorbed, plain = quantize_small(TwoReLUs, act_init=act_init)
    assert absorbed_map(absorbed) == ({"relu_a": "conv1", "relu_b": "conv2"} if absorbs else {})
    assert_same_training_forward(absorbed, plain, act_init)


def test_a_model_fx_cannot_trace_keeps_its_relus_and_trains():
    absorbed, plain = quantize_small(Untraceable)
    assert absorbable_relus(absorbed) == {} and absorbed_map(absorbed) == {}
    assert plain_relus(absorbed) == {"relu_a", "relu_b"} and relu_first_layers(absorbed) == set()
    optimizer = torch.optim.SGD(absorbed.parameters(), lr=0.1)
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    labels = torch.tensor([0, 1, 2, 0])
    before = absorbed.conv1.weight.detach().clone()
    for bits in (8, 2):
        labkit.set_bits(absorbed.train(), bits)
        loss = F.cross_entropy(absorbed(x), labels)
        optimizer.zero_grad()
        loss.backward()
        assert bool(loss.isfinite()) and absorbed.conv1.weight.grad.abs().sum() > 0
        optimizer.step()
    assert not torch.equal(before, absorbed.conv1.weight.detach())
    # the same model without the branch traces, and its ReLUs go in: the branch is what kept them
    traceable, _ = quantize_small(TwoReLUs)
    assert absorbed_map(traceable) == {"relu_a": "conv1", "relu_b": "conv2"}


def test_torchvision_resnet18_absorbs_nothing():
    """torchvision's BasicBlock calls one ``self.relu`` twice and its stem ReLU feeds a max-pool: nothing goes in."""
    model = labkit.quantize_model(build_model("resnet18", num_classes=10), bits=(8, 2),
                                  example_input=torch.randn(2, 3, 32, 32))
    assert absorbed_map(model) == {} and relu_first_layers(model) == set()
    assert len(plain_relus(model)) == 9  # the stem's and one per block, all still ReLUs
    assert model.labkit_quant["absorb_relu"] is True


# ------------------------------------------------------------------ INT checkpoints


def initialised(model):
    """Activation scales set from data at both bit-widths (a training-mode pass each), then eval."""
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        for bits in (8, 2):
            labkit.set_bits(model.train(), bits)
            model(x)
    return model.eval()


def eval_outputs(model):
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    outputs = []
    with torch.no_grad():
        for bits in (8, 2):
            labkit.set_bits(model.eval(), bits)
            outputs.append(model(x))
    return outputs


def test_checkpoint_round_trip_keeps_the_absorption(tmp_path):
    """``save_int`` / ``load_int``: the loaded model is absorbed again (the plan says so) and gives the same outputs;
    a plan without ``"absorb_relu"`` (an older checkpoint) absorbs; ``absorb_relu=False`` survives the round trip."""
    absorbed, plain = quantized_pair("resnet20")
    initialised(absorbed)
    plain.load_state_dict(absorbed.state_dict())
    expected_map = absorbed_map(absorbed)
    expected = eval_outputs(absorbed)
    for a, b in zip(expected, eval_outputs(plain)):
        assert_same_bits(a, b, "absorbed vs plain eval output")

    loaded = load_int(save_int(absorbed, tmp_path / "absorbed.safetensors"))
    assert loaded.labkit_quant["absorb_relu"] is True
    assert absorbed_map(loaded) == expected_map and relu_first_layers(loaded) == set(expected_map.values())
    for a, b in zip(eval_outputs(loaded), expected):
        assert_same_bits(a, b, "loaded absorbed output")

    older = copy.deepcopy(absorbed)
    del older.labkit_quant["absorb_relu"]
    loaded_older = load_int(save_int(older, tmp_path / "older.safetensors"))
    assert "absorb_relu" not in loaded_older.labkit_quant
    assert absorbed_map(loaded_older) == expected_map
    for a, b in zip(eval_outputs(loaded_older), expected):
        assert_same_bits(a, b, "loaded older-plan output")

    loaded_plain = load_int(save_int(plain, tmp_path / "plain.safetensors"))
    assert loaded_plain.labkit_quant["absorb_relu"] is False
    assert absorbed_map(loaded_plain) == {} and relu_first_layers(loaded_plain) == set()
    assert len(plain_relus(loaded_plain)) == 19
    for a, b in zip(eval_outputs(loaded_plain), expected):
        assert_same_bits(a, b, "loaded plain output")
