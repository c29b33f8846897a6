"""The modules behind notebooks 02–06: gradient study, memory, PTQ, reproduction suite, storage breakdown,
notebook settings, HASB figures and reviewer numbers, shipped checkpoints, top-1 and the ``reproduce`` CLI.

Each check compares with an independent reference where one exists: PyTorch's own learnable fake-quant
gradient, hand-counted saved tensors, integer codes recomputed from the FP32 weights, hand-written run files,
the checkpoint's own tensors, and closed-form sampling expectations.
"""
from __future__ import annotations

import copy
import json
import math
from fractions import Fraction
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from labkit.convert import get_bits, quantize_model, quantized_layers, set_bits, trained_bits
from labkit.errors import CheckpointError, LabkitError, LayerNameError
from labkit.nn import SwitchableBatchNorm2d

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "data" / "checkpoints"


# ------------------------------------------------------------------------------------------ helpers


def tiny_cnn(seed: int = 0) -> nn.Sequential:
    """conv (FP32) – BN – ReLU – conv (quantized) – BN – ReLU – conv (quantized) – BN – ReLU – pool – linear (FP32),
    with BN running statistics that are not the defaults."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10),
    )
    with torch.no_grad():
        model.train()
        for _ in range(2):
            model(torch.randn(8, 3, 8, 8) * 2 + 0.5)
    return model.eval()


def batch(n: int = 8, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=generator), torch.randint(0, 10, (n,), generator=generator)


def tiny_quantized(bits=(8, 6, 4, 2)):
    images, _ = batch()
    return quantize_model(tiny_cnn(), bits=bits, example_input=images)


# ============================================================================ 1. labkit.gradient_study


def _torch_learnable_fake_quant(v: torch.Tensor, qmin: int, qmax: int):
    """(x̂, ∂x̂/∂x, ∂x̂/∂s) of PyTorch's learnable per-tensor fake quant at s = 1, zero point 0, one point at a time
    (the scale gradient is summed over the tensor, so each point is its own call; its backward is float32 only)."""
    out = []
    for value in v.tolist():
        x = torch.tensor([value], dtype=torch.float32, requires_grad=True)
        s = torch.ones(1, dtype=torch.float32, requires_grad=True)
        y = torch._fake_quantize_learnable_per_tensor_affine(x, s, torch.zeros(1, dtype=torch.float32), qmin, qmax,
                                                             grad_factor=1.0)
        grad_x, grad_s = torch.autograd.grad(y.sum(), (x, s))
        out.append((y.item(), grad_x.item(), grad_s.item()))
    return torch.tensor(out, dtype=torch.float64).unbind(1)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_scale_gradient_curve_without_second_rounding_is_pytorchs_learnable_fake_quant(bits):
    from labkit.gradient_study import scale_gradient_curve

    qmin, qmax = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    # a grid step of 1/16 (1/8 at 8 bits): every point is exact in float32 too, and the .5 ties are on it
    # (span 2: at 2 bits the default span 1.25 ends at v = -2.5 and 1.25, which both round inside [-2, 1])
    per_unit = 16 if bits <= 4 else 8
    curve = scale_gradient_curve(bits, bits, steps=1 + 2 * (qmax - qmin) * per_unit, span=2.0)
    assert (curve["qmin"], curve["qmax"]) == (qmin, qmax)
    assert curve["v"][0] == 2 * qmin and curve["v"][-1] == 2 * qmax
    assert torch.equal(curve["v"].float().double(), curve["v"])
    assert ((curve["v"] * 2) % 2 == 1).sum() >= qmax - qmin  # ties k + 0.5 inside the range
    x_hat, grad_x, grad_s = _torch_learnable_fake_quant(curve["v"], qmin, qmax)
    torch.testing.assert_close(curve["x_hat"], x_hat, rtol=0, atol=0)
    torch.testing.assert_close(curve["grad_x"], grad_x, rtol=0, atol=0)
    torch.testing.assert_close(curve["grad_s"], grad_s, rtol=0, atol=1e-5)  # float32 reference: q − v rounded
    # the clipped STE: 1 strictly inside the rounded range, 0 outside, and both occur on this sweep
    rounded = torch.round(curve["v"])
    expected_ste = ((rounded >= qmin) & (rounded <= qmax)).double()
    assert torch.equal(curve["grad_x"], expected_ste)
    assert expected_ste.min() == 0 and expected_ste.max() == 1


def _hand_double_rounding(v: float, shift: int, qmin: int, qmax: int) -> tuple[int, float, float]:
    """(code, ∂x̂/∂x, ∂x̂/∂s per unit of s_l) at s_h = 1 for x = v·2^Δ: round(x), then round-half-even of
    round(x)/2^Δ (exact, with Fractions), clip; gradient q − v inside, q at a clipped point. "Inside" follows the
    stored INT-h code: the l-bit code is not clipped and round(x) is inside the INT-h range (issue 10 item 6)."""
    x = v * 2.0 ** shift
    first = round(x)  # Python's round: half to even, like torch.round
    second = round(Fraction(first, 2 ** shift))  # exact half-to-even second rounding
    code = min(max(second, qmin), qmax)
    inside = code == second and qmin * 2 ** shift <= first <= (qmax + 1) * 2 ** shift - 1
    return code, float(inside), (code - v) if inside else float(code)


@pytest.mark.parametrize("bits,high_bits", [(2, 8), (4, 8), (6, 8), (3, 4), (2, 3)])
def test_scale_gradient_curve_with_second_rounding_matches_the_hand_formula(bits, high_bits):
    from labkit.gradient_study import scale_gradient_curve

    curve = scale_gradient_curve(bits, high_bits, steps=1001)
    shift = high_bits - bits
    qmin, qmax = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    expected = [_hand_double_rounding(v, shift, qmin, qmax) for v in curve["v"].tolist()]
    codes, ste, grad_s = (torch.tensor(column, dtype=torch.float64) for column in zip(*expected))
    torch.testing.assert_close(curve["x_hat"], codes, rtol=0, atol=1e-12)
    torch.testing.assert_close(curve["grad_x"], ste, rtol=0, atol=0)
    torch.testing.assert_close(curve["grad_s"], grad_s, rtol=0, atol=1e-9)
    # the second rounding really differs from a single rounding of v somewhere (x = v·2^Δ lands on ties)
    assert (codes != torch.round(curve["v"]).clamp(qmin, qmax)).any() or shift == 0


def test_scale_gradient_curve_refuses_to_raise_the_precision():
    from labkit.gradient_study import scale_gradient_curve

    with pytest.raises(ValueError, match="above high_bits"):
        scale_gradient_curve(8, 4)


def test_gradient_magnitudes_rows_restore_bits_and_leave_no_gradients():
    from labkit.gradient_study import gradient_magnitudes

    model = tiny_quantized()
    images, labels = batch()
    model(images)  # initialise every activation scale at 8 bits (the others initialise on first use)
    mixed = {name: b for name, b in zip(quantized_layers(model), (4, 2))}
    set_bits(model, mixed)
    model.train()
    bn_before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}

    rows = gradient_magnitudes(model, images, labels)

    assert [row["bits"] for row in rows] == list(trained_bits(model)) == [8, 6, 4, 2]
    assert get_bits(model) == mixed
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    # batch norms ran in eval mode: their running statistics did not move
    for key, value in model.state_dict().items():
        if key in bn_before:
            assert torch.equal(value, bn_before[key]), key
    # ratios to the top row, and LSQ's g of the middle layer: 1/sqrt(N·p), N = 8·3·3 weights per channel
    for row in rows:
        assert row["weight_scale_grad"] > 0 and row["act_scale_grad"] > 0 and row["weight_grad"] > 0
        assert row["weight_scale_grad_vs_top"] == pytest.approx(row["weight_scale_grad"] / rows[0]["weight_scale_grad"])
        assert row["act_scale_grad_vs_top"] == pytest.approx(row["act_scale_grad"] / rows[0]["act_scale_grad"])
        assert row["weight_grad_vs_top"] == pytest.approx(row["weight_grad"] / rows[0]["weight_grad"])
        assert row["lsq_g"] == pytest.approx(1 / math.sqrt(72 * ((1 << (row["bits"] - 1)) - 1)))
        assert 0.0 <= row["eq6_term"] <= 1.0
    assert rows[0]["weight_scale_grad_vs_top"] == 1.0


def test_gradient_magnitudes_values_match_one_hand_made_backward():
    from labkit.gradient_study import gradient_magnitudes

    model = tiny_quantized()
    images, labels = batch()
    reference = copy.deepcopy(model)
    rows = gradient_magnitudes(model, images, labels, bits=[4])

    set_bits(reference, 4)
    reference.eval()
    F.cross_entropy(reference(images), labels).backward()
    layers = list(quantized_layers(reference).values())
    w_scale = sum(float(l.weight_quantizer.scale.grad.abs().mean()) for l in layers) / len(layers)
    a_scale = sum(float(l.act_quantizer.scale["4"].grad.abs()) for l in layers) / len(layers)
    w_grad = sum(float(l.weight.grad.abs().mean()) for l in layers) / len(layers)
    g_term = sum(min(float(l.weight_quantizer.scale.grad.abs().max()), 1.0) for l in layers) / len(layers)
    (row,) = rows
    assert row["bits"] == 4
    assert row["weight_scale_grad"] == pytest.approx(w_scale, rel=1e-5)
    assert row["act_scale_grad"] == pytest.approx(a_scale, rel=1e-5)
    assert row["weight_grad"] == pytest.approx(w_grad, rel=1e-5)
    assert row["eq6_term"] == pytest.approx(g_term, rel=1e-6)


MAGNITUDES = [{"bits": 8, "weight_scale_grad": 0.002, "eq6_term": 0.01},
              {"bits": 6, "weight_scale_grad": 0.008, "eq6_term": 0.03},
              {"bits": 4, "weight_scale_grad": 0.03, "eq6_term": 0.0004},
              {"bits": 2, "weight_scale_grad": 0.2, "eq6_term": 0.9}]
PAPER_ETA = {8: 1.0, 6: 0.1, 4: 0.01, 2: 0.001}  # Eq. 7 for {8,6,4,2}


def test_alrs_steps_scale_each_precision_by_its_eq7_factor():
    from labkit.gradient_study import alrs_steps
    from labkit.train.alrs import alrs_factors

    assert alrs_factors([8, 6, 4, 2]) == pytest.approx(PAPER_ETA)
    steps = alrs_steps(MAGNITUDES, lr=1e-3)
    assert [s["bits"] for s in steps] == [8, 6, 4, 2]
    for step, row in zip(steps, MAGNITUDES):
        eta, grad = PAPER_ETA[row["bits"]], row["weight_scale_grad"]
        assert step["eta"] == pytest.approx(eta)
        assert step["step_without"] == pytest.approx(1e-3 * grad)
        assert step["step_with"] == pytest.approx(1e-3 * eta * grad)
        assert step["ratio_without"] == pytest.approx(grad / 0.002)
        assert step["ratio_with"] == pytest.approx(eta * grad / 0.002)
    # the spread between precisions is 100× without ALRS and 0.1× … 1× with it
    assert steps[-1]["ratio_without"] == pytest.approx(100.0) and steps[-1]["ratio_with"] == pytest.approx(0.1)
    geometric = alrs_steps(MAGNITUDES[:2] + MAGNITUDES[3:], rule="geometric")  # {8,6,2}: 1, 0.1, 0.01
    assert [s["eta"] for s in geometric] == pytest.approx([1.0, 0.1, 0.01])


def test_printed_eq6_rates_are_eta_times_lr_minus_g():
    from labkit.gradient_study import printed_eq6_rates

    rates = printed_eq6_rates(MAGNITUDES, lr=5e-4)
    expected = {8: 1.0 * (5e-4 - 0.01), 6: 0.1 * (5e-4 - 0.03), 4: 0.01 * (5e-4 - 0.0004), 2: 0.001 * (5e-4 - 0.9)}
    assert [r["bits"] for r in rates] == [8, 6, 4, 2]
    for r in rates:
        assert r["G_b"] == next(m["eq6_term"] for m in MAGNITUDES if m["bits"] == r["bits"])
        assert r["lr_printed"] == pytest.approx(expected[r["bits"]], rel=1e-12)
        assert r["lr_eq7"] == pytest.approx(PAPER_ETA[r["bits"]] * 5e-4)
    # as printed, the rate is negative whenever G_b > λ, positive only when G_b < λ (4 bits here)
    assert [r["lr_printed"] > 0 for r in rates] == [False, False, True, False]


# ============================================================================ 2. labkit.train.memory


def _loss_overhead(n: int, classes: int) -> int:
    """What cross-entropy saves: log-probabilities (float32), the int64 labels and NLL's 0-d total weight."""
    return n * classes * 4 + n * 8 + 4


def test_saved_activation_bytes_counts_what_autograd_keeps_by_hand():
    from labkit.train.memory import saved_activation_bytes

    torch.manual_seed(0)
    x, y = torch.randn(5, 7), torch.randint(0, 3, (5,))
    # a Linear without bias saves only its input (the weight gets a gradient, the input does not)
    linear = nn.Linear(7, 3, bias=False)
    assert saved_activation_bytes(linear, x, y) == x.numel() * 4 + _loss_overhead(5, 3)
    # + ReLU: its output (5×3 float32) is saved as well
    assert saved_activation_bytes(nn.Sequential(nn.Linear(7, 3, bias=False), nn.ReLU()), x, y) == \
        x.numel() * 4 + 5 * 3 * 4 + _loss_overhead(5, 3)
    # Linear–ReLU–Linear: the hidden tensor is saved by ReLU *and* the second Linear, but is one storage;
    # the second Linear also keeps its weight (its input needs a gradient)
    mlp = nn.Sequential(nn.Linear(7, 6, bias=False), nn.ReLU(), nn.Linear(6, 3, bias=False))
    assert saved_activation_bytes(mlp, x, y) == x.numel() * 4 + 5 * 6 * 4 + 6 * 3 * 4 + _loss_overhead(5, 3)
    # nothing is saved outside the measured forward: no grad_fn left hanging, model untouched
    assert all(p.grad is None for p in mlp.parameters())


def test_saved_activation_bytes_grow_with_the_batch_exactly():
    from labkit.train.memory import saved_activation_bytes

    linear = nn.Linear(7, 3, bias=False)
    small = saved_activation_bytes(linear, torch.randn(4, 7), torch.zeros(4, dtype=torch.long))
    large = saved_activation_bytes(linear, torch.randn(12, 7), torch.zeros(12, dtype=torch.long))
    assert large - small == 8 * (7 * 4 + 3 * 4 + 8)


def test_joint_step_memory_sums_the_per_precision_passes_and_restores_bits():
    from labkit.train.memory import joint_step_memory, parameter_bytes, saved_activation_bytes

    model = tiny_quantized()
    images, labels = batch()
    model(images)
    mixed = {name: b for name, b in zip(quantized_layers(model), (2, 6))}
    set_bits(model, mixed)
    model.eval()

    memory = joint_step_memory(model, images, labels)

    assert get_bits(model) == mixed and not model.training
    assert list(memory["per_bits"]) == [8, 6, 4, 2]
    assert memory["summed_backward"] == sum(memory["per_bits"].values())
    assert memory["per_precision_backward"] == max(memory["per_bits"].values())
    assert memory["summed_backward"] > memory["per_precision_backward"] > 0
    assert memory["batch"] == 8
    # the pass at one precision is what saved_activation_bytes measures at that precision
    set_bits(model, 4)
    model.train()
    assert memory["per_bits"][4] == saved_activation_bytes(model, images, labels)
    n_bytes = sum(t.numel() * t.element_size() for t in model.state_dict(keep_vars=True).values())
    assert memory["parameters"] == parameter_bytes(model) == n_bytes
    assert memory["adam_state"] == 2 * 4 * sum(p.numel() for p in model.parameters())
    subset = joint_step_memory(model, images, labels, bits=[8, 2])
    assert list(subset["per_bits"]) == [8, 2] and subset["per_bits"][8] == memory["per_bits"][8]


# ============================================================================ 3. labkit.ptq


def test_post_training_keeps_the_fp32_model_and_stores_int8_codes_of_its_weights():
    from labkit.ptq import post_training_multi_precision

    fp32 = tiny_cnn()
    before = {k: v.clone() for k, v in fp32.state_dict().items()}
    images, _ = batch(16, seed=3)
    model = post_training_multi_precision(fp32, images)

    after = fp32.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    layers = quantized_layers(model)
    assert list(layers) == ["3", "6"]
    for name, layer in layers.items():
        assert bool(layer.act_quantizer.initialized.all()), name
        assert all(float(layer.act_quantizer.scale[str(b)].detach()) != 1.0 for b in (8, 6, 4, 2))
        weight = before[f"{name}.weight"]
        scale = layer.weight_quantizer.scale.detach()
        # the max rule on the FP32 weights: max|W| per output channel / 127
        torch.testing.assert_close(scale, weight.flatten(1).abs().amax(1) / 127)
        expected = torch.clamp(torch.round(weight / scale.view(-1, 1, 1, 1)), -128, 127).to(torch.int8)
        set_bits(model, 8)
        codes, step = layer.weight_codes()
        assert torch.equal(codes, expected)
        assert torch.equal(layer.weight_quantizer.high_codes(layer.weight), expected)
        torch.testing.assert_close(step, scale)
        # lower precisions: round half to even of q8 / 2^Δ, clipped to the signed range
        for bits in (6, 4, 2):
            shift, qmax = 8 - bits, (1 << (bits - 1)) - 1
            set_bits(model, bits)
            codes, step = layer.weight_codes()
            rounded = torch.round(expected.double() / 2 ** shift).clamp(-qmax - 1, qmax).to(torch.int8)
            assert torch.equal(codes, rounded), (name, bits)
            torch.testing.assert_close(step, scale * 2 ** shift)


def test_post_training_floor_method_truncates_the_int8_codes():
    from labkit.ptq import post_training_multi_precision

    images, _ = batch(16, seed=3)
    model = post_training_multi_precision(tiny_cnn(), images, method="floor")
    for name, layer in quantized_layers(model).items():
        set_bits(model, 8)
        high, _ = layer.weight_codes()
        for bits in (6, 4, 2):
            set_bits(model, bits)
            codes, _ = layer.weight_codes()
            floor = torch.div(high.long(), 2 ** (8 - bits), rounding_mode="floor")
            assert torch.equal(codes.long(), floor), (name, bits)
            assert int(codes.min()) >= -(1 << (bits - 1)) and int(codes.max()) <= (1 << (bits - 1)) - 1


def test_post_training_truncations_have_the_same_codes_read_back_at_the_cell_centre_or_bottom():
    """By hand from the FP32 weights: s = max|W| / 127, q8 = round(W / s), q_l = floor(q8 / 2^Δ); the fair
    truncation reads q_l back at the centre of its 2^Δ INT8 cells, (q_l·2^Δ + (2^Δ − 1)/2)·s, the naive one
    (the authors' ablation) at their bottom, q_l·2^Δ·s."""
    from labkit.ptq import VARIANTS, post_training_multi_precision

    fp32 = tiny_cnn()
    images, _ = batch(16, seed=3)
    fair = post_training_multi_precision(fp32, images, method="floor")
    naive = post_training_multi_precision(fp32, images, method="floor_naive")
    for name in quantized_layers(fair):
        weight = fp32.state_dict()[f"{name}.weight"].double()
        scale = weight.flatten(1).abs().amax(1).view(-1, 1, 1, 1) / 127
        q8 = torch.clamp(torch.round(weight / scale), -128, 127)
        for bits in (6, 4, 2):
            cell = 2 ** (8 - bits)
            q_l = torch.floor(q8 / cell)
            set_bits(fair, bits), set_bits(naive, bits)
            fair_layer, naive_layer = quantized_layers(fair)[name], quantized_layers(naive)[name]
            assert torch.equal(fair_layer.weight_codes()[0].double(), q_l)
            assert torch.equal(naive_layer.weight_codes()[0].double(), q_l)
            torch.testing.assert_close(fair_layer.quantized_weight().double(), (q_l * cell + (cell - 1) / 2) * scale)
            torch.testing.assert_close(naive_layer.quantized_weight().double(), q_l * cell * scale)
    methods = {method: label for label, method, _ in VARIANTS}
    assert set(methods) == {"double_rounding", "floor", "floor_naive"}
    assert "fair" in methods["floor"] and "centre" in methods["floor"]
    assert "naive" in methods["floor_naive"] and "biased" in methods["floor_naive"]
    assert "authors' ablation" in methods["floor_naive"]


def test_standard_error_is_the_binomial_spread_of_one_measurement():
    from scipy.stats import binom

    from labkit.ptq import difference_verdict, standard_error

    assert standard_error(80.0, 400) == pytest.approx(2.0)  # 100·sqrt(0.8·0.2/400) = 100·0.02
    assert standard_error(50.0, 10_000) == pytest.approx(0.5)
    for accuracy, images in ((81.6, 2000), (11.6, 2000), (46.1, 256)):
        # the standard deviation of the count of right answers out of N, as a share of N, in points
        assert standard_error(accuracy, images) == pytest.approx(
            100 * binom.std(images, accuracy / 100) / images, rel=1e-12)
    assert standard_error(100.0, 50) == 0.0
    close = difference_verdict(82.0, 80.0, 400)  # SE 1.921 and 2.0: the difference's 2.773
    assert close["difference"] == pytest.approx(2.0) and close["se"] == pytest.approx(math.hypot(
        100 * math.sqrt(0.82 * 0.18 / 400), 2.0)) and not close["resolved"]
    assert difference_verdict(86.0, 80.0, 400)["resolved"]  # 6 points > 2 · 2.63
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="positive whole number"):
            standard_error(80.0, bad)
    with pytest.raises(ValueError, match="percentage"):
        standard_error(0.8 * 1000, 100)


def test_post_training_summary_says_not_resolved_where_a_difference_is_within_it():
    from labkit.ptq import post_training_summary

    def record(method, batch_norm, accuracy):
        return {"label": method, "method": method, "batch_norm": batch_norm, "images": 400, "fp32": 90.0,
                "accuracy": dict(zip((8, 4), accuracy))}

    records = [record("double_rounding", False, (89.0, 70.0)), record("double_rounding", True, (89.5, 80.0)),
               record("floor", True, (89.0, 79.0)), record("floor_naive", True, (88.5, 11.0)),
               record("jointly trained", False, (89.0, 88.0))]
    text = post_training_summary(records)
    assert "400 test images" in text and "±2.0 points at 80 %" in text
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.startswith("| ")}
    truncation = rows["Double Rounding − fair truncation (both + BN)"]
    assert "+0.5 ± 2.2 (not resolved)" in truncation and "+1.0 ± 2.9 (not resolved)" in truncation
    fair_naive = next(line for name, line in rows.items() if name.startswith("fair − naive"))
    assert "+68.0 ± 2.6 |" in fair_naive  # 68 points: resolved, no verdict after it
    joint = next(line for name, line in rows.items() if name.startswith("jointly trained"))
    assert "+8.0 ± 2.6 |" in joint  # against the BN re-estimated Double Rounding row, 80.0 %


def test_post_training_figure_bars_are_one_binomial_standard_error():
    from labkit.viz import post_training_figure

    records = [{"label": "a", "method": "double_rounding", "batch_norm": True, "images": 400, "fp32": 90.0,
                "accuracy": {8: 90.0, 2: 50.0}},
               {"label": "b", "method": "floor_naive", "batch_norm": True, "images": 400, "fp32": 90.0,
                "accuracy": {8: 80.0, 2: 10.0}}]
    figure = post_training_figure(records)
    eight, two = figure.data
    assert list(eight.x) == [90.0, 80.0] and list(two.x) == [50.0, 10.0]
    assert list(eight.error_x.array) == pytest.approx([1.5, 2.0])  # 100·sqrt(.9·.1/400), 100·sqrt(.8·.2/400)
    assert list(two.error_x.array) == pytest.approx([2.5, 1.5])
    assert list(eight.y) == ["Double Rounding + BN re-est.", "truncation, naive (cell bottom) + BN re-est."]
    assert [a.text for a in figure.layout.annotations][:2] == ["8-bit", "2-bit"]
    note, layout = figure.layout.annotations[-1], figure.layout
    assert "400 test images" in note.text
    plot_height = layout.height - layout.margin.t - layout.margin.b  # paper y is in plot-area heights
    assert note.yref == "paper" and note.yanchor == "top" and note.y * plot_height <= -60  # under the axis titles
    assert figure.layout.xaxis.range[0] <= 80.0 - 2.0 and figure.layout.xaxis.range[1] >= 90.0 + 1.5
    figure.to_json()


def test_calibrate_re_estimates_only_the_calibrated_bits_batch_norms():
    from labkit.ptq import calibrate

    model = tiny_quantized(bits=(8, 4))
    images, _ = batch(24, seed=5)
    model.eval()
    set_bits(model, 8)
    model(images[:8])  # 8-bit activation scales initialised; 4-bit ones not yet
    state_before = {k: v.clone() for k, v in model.state_dict().items()}
    switchable = [m for m in model.modules() if isinstance(m, SwitchableBatchNorm2d)]
    assert len(switchable) == 2

    calibrate(model, images, bits=[4], batch_size=32)

    state = model.state_dict()
    for key in state:
        if ".per_bit.8." in key or key.endswith(".weight") or ".weight_quantizer." in key \
                or ".act_quantizer.scale.8" in key:
            assert torch.equal(state[key], state_before[key]), f"{key} changed"
        if ".per_bit.4.running_mean" in key or ".per_bit.4.running_var" in key:
            assert not torch.equal(state[key], state_before[key]), f"{key} did not change"
    for layer in quantized_layers(model).values():
        assert bool(layer.act_quantizer.initialized.all())

    # the 4-bit statistics are those of the calibration batch: mean and unbiased variance of each BN's input
    probe = copy.deepcopy(model)
    set_bits(probe, 4)
    probe.train()
    inputs = {}
    hooks = [m.per_bit["4"].register_forward_pre_hook(lambda mod, args, i=i: inputs.__setitem__(i, args[0].detach()))
             for i, m in enumerate(m for m in probe.modules() if isinstance(m, SwitchableBatchNorm2d))]
    with torch.no_grad():
        probe(images)
    for hook in hooks:
        hook.remove()
    for i, norm in enumerate(switchable):
        x = inputs[i]
        torch.testing.assert_close(norm.per_bit["4"].running_mean, x.mean((0, 2, 3)), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(norm.per_bit["4"].running_var, x.var((0, 2, 3), unbiased=True), rtol=1e-5, atol=1e-6)


# ============================================================================ 4. labkit.reproduction


def test_rows_are_unique_and_config_overrides_merge_the_profile_budget():
    from labkit.reproduction import PROFILE_BUDGETS, ROWS, SUITE_BUDGET, row

    names = [r.name for r in ROWS]
    assert len(names) == len(set(names)) == 25
    assert {"lsq-8", "lsq-6", "lsq-4", "lsq-2"} <= set(names)
    assert {"432-geometric-a2", "8642-alrs-gradterm-a2", "8642-alrs-pskd-a2", "8642-alrs-a1-steps", "8642-matquant"} <= set(names)
    assert PROFILE_BUDGETS["laptop"] == SUITE_BUDGET and PROFILE_BUDGETS["paper"] == {}
    noalrs = row("8642-noalrs-a2")
    assert noalrs.config_overrides("laptop") == {**SUITE_BUDGET, "alrs": "none"}
    assert noalrs.config_overrides("smoke") == {"epochs": 1, "train_subset": 256, "eval_subset": 128,
                                                "eval_every": 1, "workers": 0, "alrs": "none"}
    assert noalrs.config_overrides("paper") == {"alrs": "none"}
    assert row("lsq-4").config_overrides() == {**SUITE_BUDGET, "method": "lsq", "bits": (4,), "epochs": 4}
    with pytest.raises(LabkitError, match="8642-alrs-a2"):
        row("nope")


def _write_row(root: Path, name: str, accuracy: dict, walls=(60.0,), extra_files=(), test_images=10000):
    folder = root / name
    folder.mkdir(parents=True)
    budget = {"epochs": 3, "eval_images": {"test": test_images}}
    (folder / "metrics.json").write_text(json.dumps({"accuracy": {str(b): a for b, a in accuracy.items()},
                                                     "budget": budget, "hardware": "2 CPU cores"}))
    (folder / "run.json").write_text(json.dumps({"sessions": [{"wall_time_s": w} for w in walls]}))
    for file in extra_files:
        (folder / file).write_text("x" * 10)
    return folder


@pytest.fixture
def suite_root(tmp_path):
    root = tmp_path / "suite"
    _write_row(root, "8642-alrs-a2", {8: 84.0, 6: 83.9, 4: 83.5, 2: 80.0}, walls=(100.0, 20.0))
    _write_row(root, "432-alrs-a2", {4: 83.0, 3: 82.5, 2: 79.5})
    _write_row(root, "lsq-8", {8: 84.3}, walls=(30.0,))
    _write_row(root, "lsq-2", {2: 78.0}, walls=(45.5,))
    (root / "8642-floor").mkdir()  # an unfinished row: no metrics.json
    return root


def test_collect_gives_no_drop_for_rows_evaluated_on_other_images(tmp_path):
    from labkit.reproduction import collect

    _write_row(tmp_path, "8642-alrs-a2", {8: 70.0, 2: 10.0}, test_images=128)
    (record,) = collect(tmp_path)
    assert record["drop"] == {} and record["accuracy"] == {8: 70.0, 2: 10.0}


def _our_fp32() -> float:
    """The FP32 top-1 the suite's drops are taken against: that of the model its rows start from, by its record."""
    from labkit.reproduction import SUITE_BUDGET, SUITE_FP32

    assert SUITE_BUDGET["init_from"] == f"shipped:{SUITE_FP32}"
    return float(json.loads((SHIPPED / f"{SUITE_FP32}.json").read_text())["accuracy"]["32"])


def test_collect_reads_rows_and_merges_the_dedicated_lsq_models(suite_root):
    from labkit.reproduction import collect

    fp32 = _our_fp32()
    records = collect(suite_root)
    assert [r["name"] for r in records] == ["8642-alrs-a2", "432-alrs-a2", "lsq-dedicated"]
    first, _, dedicated = records
    assert first["accuracy"] == {8: 84.0, 6: 83.9, 4: 83.5, 2: 80.0}
    assert first["wall_time_s"] == 120.0 and first["group"] == "table4"
    assert first["drop"] == {b: round(fp32 - a, 2) for b, a in first["accuracy"].items()}
    assert first["drop"][2] == pytest.approx(fp32 - 80.0, abs=0.005)
    assert dedicated["accuracy"] == {8: 84.3, 2: 78.0}
    assert dedicated["wall_time_s"] == pytest.approx(75.5) and dedicated["group"] == "dedicated"
    assert dedicated["drop"] == {8: round(fp32 - 84.3, 2), 2: round(fp32 - 78.0, 2)}
    assert all(r["fp32"] == fp32 for r in records)
    assert collect(suite_root.parent / "empty") == []


def test_markdown_table_has_a_line_per_record_plus_header_and_fp32(suite_root):
    from labkit.reproduction import PAPER_TABLE4, collect, markdown_table

    records = collect(suite_root)
    lines = markdown_table(records).splitlines()
    assert len(lines) == 2 + 1 + len(records)  # header, separator, our FP32, records
    assert lines[0].startswith("| configuration | FP32 | 8-bit |") and lines[1].startswith("|---|")
    assert f"{_our_fp32():.2f}" in lines[2] and "ours: FP32" in lines[2]
    columns = len(lines[0].split("|"))
    assert all(len(line.split("|")) == columns for line in lines)
    assert records[0]["label"] in lines[3] and "80.00 (" in lines[3] and "2 min" in lines[3]
    assert f"({-round(_our_fp32() - 80.0, 2):+.2f})" in lines[3]
    with_paper = markdown_table(records, paper=PAPER_TABLE4).splitlines()
    assert len(with_paper) == len(lines) + len(PAPER_TABLE4)
    assert "paper: 8642" in with_paper[3] and "90.19" in with_paper[3]


def test_drop_goal_check_arithmetic():
    from labkit.reproduction import drop_goal_check

    check = drop_goal_check({"drop": {8: 0.05, 6: 0.2, 4: 0.3, 3: 9.0, 2: 2.0}})
    assert set(check) == {8, 6, 4, 2}
    assert check[8] == {"drop": 0.05, "goal": 0.1, "met": True, "missed_by": 0.0}
    assert check[6] == {"drop": 0.2, "goal": 0.1, "met": False, "missed_by": 0.1}
    assert check[4]["met"] is True and check[4]["missed_by"] == 0.0
    assert check[2] == {"drop": 2.0, "goal": 1.5, "met": False, "missed_by": 0.5}
    assert drop_goal_check({"drop": {4: -0.4}}) == {4: {"drop": -0.4, "goal": 0.3, "met": True, "missed_by": 0.0}}


def test_accuracy_figure_has_one_dot_per_record_and_bit(suite_root):
    import plotly.graph_objects as go

    from labkit.reproduction import accuracy_figure, collect, short_label

    records = collect(suite_root)
    figure = accuracy_figure(records)
    assert isinstance(figure, go.Figure) and all(trace.type == "scatter" for trace in figure.data)
    dots = {(y, x) for trace in figure.data for x, y in zip(trace.x, trace.y)}
    assert dots == {(short_label(r), a) for r in records for a in r["accuracy"].values()}
    assert any(shape.x0 == _our_fp32() for shape in figure.layout.shapes)


def test_run_suite_rejects_unknown_profiles_and_skips_finished_rows(suite_root):
    from labkit.reproduction import run_suite

    with pytest.raises(LabkitError, match="unknown profile"):
        run_suite(suite_root, profile="weekend")
    results = run_suite(suite_root, ["8642-alrs-a2", "lsq-2"], profile="smoke", show_progress=False)
    assert results["lsq-2"]["accuracy"] == {"2": 78.0}
    assert set(results) == {"8642-alrs-a2", "lsq-2"}
    with pytest.raises(LabkitError, match="unknown suite row"):
        run_suite(suite_root, ["not-a-row"], profile="smoke")


def test_publish_copies_only_the_small_files_of_finished_rows(suite_root, tmp_path):
    from labkit.reproduction import publish

    for name in ("config.json", "log.csv", "model_int.safetensors", "model_fp32.pt", "checkpoint.pt"):
        (suite_root / "8642-alrs-a2" / name).write_text("x")
    destination = tmp_path / "published"
    copied = publish(suite_root, destination)
    assert copied == ["8642-alrs-a2", "432-alrs-a2", "lsq-8", "lsq-2"]
    assert sorted(p.name for p in (destination / "8642-alrs-a2").iterdir()) == \
        ["config.json", "log.csv", "metrics.json", "run.json"]
    assert sorted(p.name for p in (destination / "lsq-8").iterdir()) == ["metrics.json", "run.json"]
    assert not (destination / "8642-floor").exists()
    assert (destination / "lsq-2" / "metrics.json").read_bytes() == (suite_root / "lsq-2" / "metrics.json").read_bytes()


# ============================================================================ 5. labkit.storage.storage_breakdown


def test_storage_breakdown_of_the_shipped_int_checkpoint_adds_up():
    from labkit.storage import load_int, read_int, storage_breakdown

    path = SHIPPED / "cifar10-resnet20.safetensors"
    parts = storage_breakdown(path)
    tensors, _ = read_int(path)
    tensor_bytes = sum(t.numel() * t.element_size() for t in tensors.values())
    assert parts["file on disk"] == path.stat().st_size > tensor_bytes
    assert sum(v for k, v in parts.items() if k != "file on disk") == tensor_bytes

    model = load_int(path)
    layers = quantized_layers(model)
    assert len(layers) == 18
    assert parts["weight codes (INT-h)"] == sum(layer.weight.numel() for layer in layers.values())  # 1 byte each
    assert parts["weight scales"] == 4 * sum(layer.weight.shape[0] for layer in layers.values())
    bn_bytes = sum(t.numel() * t.element_size() for m in model.modules() if isinstance(m, SwitchableBatchNorm2d)
                   for t in m.state_dict().values())
    assert parts["per-bit batch norms"] == bn_bytes
    act_bytes = sum(t.numel() * t.element_size() for layer in layers.values()
                    for t in layer.act_quantizer.state_dict().values())
    assert parts["activation scales and offsets"] == act_bytes
    assert parts["FP32 layers and other"] > 0


# ============================================================================ 6. labkit.notebook_settings


def test_every_notebook_has_three_profiles_with_the_same_keys(monkeypatch):
    from labkit.notebook_settings import SETTINGS, describe, notebook_settings

    assert sorted(SETTINGS) == ["02", "03", "04", "05", "06"]
    for notebook, profiles in SETTINGS.items():
        assert sorted(profiles) == ["laptop", "paper", "smoke"], notebook
        keys = {name: set(values) for name, values in profiles.items()}
        assert keys["smoke"] == keys["laptop"] == keys["paper"], notebook
        for profile in profiles:
            settings = notebook_settings(notebook, profile)
            assert settings["profile"] == profile
            assert set(settings) == keys[profile] | {"profile"}
            line = describe(settings)
            assert line.startswith(f"profile: {profile} (")
            for key, value in profiles[profile].items():
                assert f"{key}={'all' if value is None else value}" in line
    monkeypatch.setenv("LABKIT_PROFILE", "smoke")
    assert notebook_settings("04")["profile"] == "smoke"
    monkeypatch.delenv("LABKIT_PROFILE")
    assert notebook_settings("04")["profile"] == "laptop"
    with pytest.raises(KeyError, match="known"):
        notebook_settings("07")


# ============================================================================ 7. labkit.hasb figures and reviewers


def test_read_search_csv_round_trips_write_csv(tmp_path):
    from labkit.hasb.figures import read_search_csv
    from labkit.hasb.search import write_csv

    records = [
        {"target_avg_bits": 3.0, "avg_bits": 3.25, "allocation": {"layer2.0.conv1": 4, "layer1.0.conv2": 2},
         "objective": 12.5, "bitops": 1.5e9, "size": 123456.0, "accuracy": 71.25, "subnet": 0},
        {"target_avg_bits": 4.0, "avg_bits": 4.0, "allocation": {"layer2.0.conv1": 8, "layer1.0.conv2": 6},
         "objective": 20.0, "bitops": 3e9, "size": 234567.0, "accuracy": 80.5, "subnet": 1},
    ]
    path = write_csv(records, tmp_path / "search.csv")
    back = read_search_csv(path)
    assert len(back) == 2
    for original, read in zip(records, back):
        assert read["allocation"] == original["allocation"]
        assert list(read["allocation"]) == list(original["allocation"])  # layer order kept
        for key in ("target_avg_bits", "avg_bits", "objective", "bitops", "size", "accuracy"):
            assert isinstance(read[key], float) and read[key] == original[key]
    with pytest.raises(FileNotFoundError, match="labkit search"):
        read_search_csv(tmp_path / "missing.csv")


def test_committed_supernet_traces_name_the_18_quantized_resnet20_layers():
    from labkit.hasb.figures import committed_search, committed_supernet_traces
    from labkit.models import build_model

    traces = committed_supernet_traces()
    assert len(traces) == 18 and all(value > 0 for value in traces.values())
    model = quantize_model(build_model("resnet20", num_classes=10), bits=(8, 6, 4, 2),
                           example_input=torch.randn(2, 3, 32, 32))
    assert list(traces) == list(quantized_layers(model))
    with pytest.raises(FileNotFoundError, match="hasb-seeds"):  # the message lists the committed runs
        committed_supernet_traces("no-such-run")
    records = committed_search("hasb-seeds/hasb-s0")
    assert records and all(set(r["allocation"]) == set(traces) for r in records)


def test_hasb_figures_have_the_right_traces():
    from labkit.hasb.figures import allocation_figure, hmt_figure, spread_figure
    from labkit.hasb.hessian import hmt_distribution

    distribution = hmt_distribution({"a": 1.0, "b": 10.0, "c": 2.0, "d": 30.0})  # mean 10.75: only d sensitive
    assert distribution.sensitive == ["d"]
    figure = hmt_figure(distribution, layer_order=["a", "b", "c", "d"])
    assert len(figure.data) == 1 and figure.data[0].type == "bar"
    assert list(figure.data[0].x) == ["a", "b", "c", "d"] and list(figure.data[0].y) == [1.0, 10.0, 2.0, 30.0]
    assert list(figure.data[0].marker.color).count("#d62728") == 1 and figure.data[0].marker.color[3] == "#d62728"
    assert len(figure.layout.shapes) == 2  # mean and median lines
    assert figure.layout.yaxis.type == "log"

    rows = [{"layer": "a", "with_hasb": 8, "without_hasb": 4}, {"layer": "b", "with_hasb": 2, "without_hasb": 6},
            {"layer": "accuracy", "with_hasb": 71.0, "without_hasb": 69.5}]
    figure = allocation_figure(rows)
    assert len(figure.data) == 2 and [list(t.x) for t in figure.data] == [["a", "b"], ["a", "b"]]
    assert list(figure.data[0].y) == [8, 2] and list(figure.data[1].y) == [4, 6]
    assert "71.0 %" in figure.data[0].name and "69.5 %" in figure.data[1].name

    spreads = {"HASB": [{"avg_bits": 3.0, "mean": 70.0, "min": 68.0, "max": 71.0}],
               "uniform": [{"avg_bits": 3.0, "mean": 69.0, "min": 60.0, "max": 69.5},
                           {"avg_bits": 4.0, "mean": 75.0, "min": 74.0, "max": 76.0}]}
    figure = spread_figure(spreads)
    assert len(figure.data) == 2
    assert list(figure.data[1].x) == pytest.approx([0.2, 1.2])  # averages 3.0, 4.0 as slots 0, 1; uniform right of HASB
    assert list(figure.data[0].error_y.array) == [1.0] and list(figure.data[0].error_y.arrayminus) == [2.0]


@pytest.mark.parametrize("candidates", [(8, 6, 4, 2), (8, 4), (4, 3, 2)])
def test_sampling_gap_exact_values(candidates):
    from labkit.hasb.reviewers import sampling_gap

    gap = sampling_gap(candidates)
    total = sum(candidates)
    expected_sensitive = Fraction(sum(b * b for b in candidates), total)  # p_i = b_i / Σ b_j (Alg. 1)
    expected_uniform = Fraction(sum(candidates), len(candidates))
    assert gap["candidates"] == tuple(sorted(candidates, reverse=True))
    assert gap["expected_sensitive"] == pytest.approx(float(expected_sensitive), abs=1e-12)
    assert gap["expected_uniform"] == pytest.approx(float(expected_uniform), abs=1e-12)
    assert gap["gap_bits"] == pytest.approx(float(expected_sensitive - expected_uniform), abs=1e-12)
    assert gap["top_bit_sensitive"] == pytest.approx(max(candidates) / total)
    assert gap["top_bit_uniform"] == pytest.approx(1 / len(candidates))


def test_sampling_gap_reviewer_cases_by_number():
    from labkit.hasb.reviewers import sampling_gap

    four = sampling_gap((8, 6, 4, 2))
    assert four["expected_sensitive"] == pytest.approx(6.0) and four["expected_uniform"] == pytest.approx(5.0)
    assert four["top_bit_sensitive"] == pytest.approx(0.4) and four["top_bit_uniform"] == pytest.approx(0.25)
    two = sampling_gap({8, 4})
    assert two["expected_sensitive"] == pytest.approx(20 / 3) and two["expected_uniform"] == pytest.approx(6.0)
    assert two["gap_bits"] == pytest.approx(2 / 3) and two["top_bit_sensitive"] == pytest.approx(2 / 3)


# ============================================================================ 8. checkpoints, top-1, errors


def test_load_shipped_gives_eval_models_and_names_what_is_shipped():
    from labkit.checkpoints import load_shipped

    fp32 = load_shipped("cifar10-resnet20-fp32")
    assert not any(m.training for m in fp32.modules())
    assert not quantized_layers(fp32)
    expected = torch.load(SHIPPED / "cifar10-resnet20-fp32.pt", map_location="cpu", weights_only=True)
    state = fp32.state_dict()
    assert all(torch.equal(state[k], v) for k, v in expected.items() if k in state)

    int_model = load_shipped("cifar10-resnet20")
    assert not any(m.training for m in int_model.modules())
    assert trained_bits(int_model) == (8, 6, 4, 2) and set(get_bits(int_model).values()) == {8}
    with torch.no_grad():
        logits = int_model(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10)

    with pytest.raises(CheckpointError) as error:
        load_shipped("cifar10-resnet99")
    message = str(error.value)
    assert "cifar10-resnet99" in message
    for name in ("cifar10-resnet20", "cifar10-resnet20-fp32", "imagenette-efficientnet-lite0"):
        assert name in message


def test_top1_is_the_count_correct_ratio():
    from labkit.evaluate import count_correct, top1
    from torch.utils.data import DataLoader

    torch.manual_seed(0)
    inputs, labels = torch.randn(23, 5), torch.randint(0, 4, (23,))
    model = nn.Linear(5, 4).train()
    dataset = TensorDataset(inputs, labels)
    with torch.no_grad():
        hand = int((model(inputs).argmax(1) == labels).sum())
    correct, total = count_correct(model, DataLoader(dataset, batch_size=4))
    assert (correct, total) == (hand, 23)
    assert top1(model, dataset, batch_size=5) == round(100.0 * hand / 23, 4)
    assert model.training  # mode restored
    # a model that always predicts the right class gets 100 %
    always = nn.Linear(5, 4)
    with torch.no_grad():
        always.weight.zero_()
        always.bias.copy_(torch.tensor([0.0, 0.0, 5.0, 0.0]))
    assert top1(always, TensorDataset(inputs, torch.full((23,), 2))) == 100.0


def test_unknown_layer_name_raises_layer_name_error_and_changes_nothing():
    model = tiny_quantized()
    set_bits(model, 6)
    with pytest.raises(LayerNameError) as error:
        set_bits(model, {"nope": 4, "3": 2})
    assert isinstance(error.value, LabkitError) and isinstance(error.value, KeyError)
    text = str(error.value)
    assert text.startswith("no quantized layer named ['nope']") and not text.startswith(("'", '"'))
    assert "'3'" in text and "'6'" in text  # the layers one can name
    assert get_bits(model) == {"3": 6, "6": 6}
    with pytest.raises(KeyError):  # callers catching KeyError keep working
        set_bits(model, {"nope": 4})


# ============================================================================ 9. labkit reproduce --list


def test_cli_reproduce_list_prints_every_row(capsys):
    from labkit.cli import main
    from labkit.reproduction import ROWS

    assert main(["reproduce", "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(ROWS)
    for line, entry in zip(lines, ROWS):
        assert line.split()[0] == entry.name and entry.label in line and entry.group in line


def test_calibrating_one_bit_width_leaves_the_others_outputs_unchanged():
    from labkit.ptq import calibrate

    from labkit.convert import set_bits

    model = tiny_quantized(bits=(8, 4)).eval()
    images, _ = batch(16)
    set_bits(model, 8)
    with torch.no_grad():
        before = model(images).clone()
    calibrate(model, images, bits=[4])
    set_bits(model, 8)
    with torch.no_grad():
        after = model(images)
    assert torch.equal(before, after)
    assert all(m.momentum is not None for m in model.modules() if isinstance(m, nn.BatchNorm2d))


def test_joint_step_memory_leaves_batch_norm_statistics_alone():
    from labkit.train.memory import joint_step_memory

    from labkit.convert import set_bits

    model = tiny_quantized().eval()
    images, labels = batch(8)
    with torch.no_grad():
        for bits in (8, 6, 4, 2):  # initialise every activation scale first (first use sets it)
            set_bits(model, bits)
            model(images)
    set_bits(model, 8)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    joint_step_memory(model, images, labels)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert not model.training


def test_post_training_comparison_has_every_variant_and_the_joint_model():
    from torch.utils.data import TensorDataset

    from labkit.ptq import VARIANTS, post_training_comparison

    fp32 = tiny_cnn()
    images, labels = batch(16)
    joint = tiny_quantized()
    records = post_training_comparison(fp32, joint, images, TensorDataset(images, labels))
    assert [r["label"] for r in records] == [v[0] for v in VARIANTS] + ["jointly trained"]
    assert all(sorted(r["accuracy"]) == [2, 4, 6, 8] and 0 <= r["fp32"] <= 100 for r in records)
