"""Notebook 02's measurements and figures (labkit.gradient_study, labkit.gradient_figures), issue 10 item 11 and
issue 13 items 5-6.

References, none computed by labkit:
- Adam written out by hand (m, v, bias corrections, ``lr · m̂/(√v̂ + ε)``), with the cosine schedule and the ALRS
  factors η_b = 1, 0.01, 0.001 of {8,4,2} as METHOD.md §5 prints them; Adam's first step of a parameter is
  ``−lr · g/(|g| + ε)``, i.e. ``lr`` per element.
- Double Rounding codes and the clipping of the STE worked out with exact fractions (Python's round: half to even).
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

import labkit
from labkit.convert import quantized_layers, set_bits
from test_train_loop import NUM_CLASSES, RandomImages, TinyNet

LR = 5e-4
ETA = {8: 1.0, 4: 0.01, 2: 0.001}
BITS = (8, 4, 2)
NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "02_quantizers_and_gradients.ipynb"


def tiny_fp32(seed=0):
    torch.manual_seed(seed)
    return TinyNet()


def tiny_quantized(seed=0, **options):
    """Float64, so a step of η_2·λ = 5e-7 is resolved exactly."""
    return labkit.quantize_model(tiny_fp32(seed), BITS, example_input=torch.randn(2, 3, 16, 16), **options).double()


def data(n=16, seed=1):
    images = RandomImages(n, seed=seed)
    return images.images.double(), images.labels


# ============================================================================ Adam steps through the optimizer


def test_first_adam_step_of_every_scale_is_its_learning_rate():
    """Adam's first update is lr·g/(|g| + ε): the shared weight scale moves by λ in the 8-bit pass (its first
    step) and each precision's activation scale by its own λ·η_b in its pass (its first step too)."""
    from labkit.gradient_study import adam_scale_steps

    images, labels = data()
    model = tiny_quantized()
    rows = adam_scale_steps(model, images, labels, alrs="eq7", batch_size=8)
    assert [(r["batch"], r["bits"]) for r in rows] == [(0, 8), (0, 4), (0, 2), (1, 8), (1, 4), (1, 2)]
    assert [r["adam_step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    # the 8-bit gradient of the weight scales on the first batch, by hand: then |Δ| = λ·|g|/(|g| + ε) each
    reference = copy.deepcopy(model)
    with torch.no_grad():
        reference.eval()
        for b in BITS:
            set_bits(reference, b)
            reference(images[:8])
    reference.train()
    set_bits(reference, 8)
    F.cross_entropy(reference(images[:8]), labels[:8]).backward()
    g = torch.cat([layer.weight_quantizer.scale.grad.abs() for layer in quantized_layers(reference).values()])
    first = rows[0]
    assert first["weight_scale_step"] == pytest.approx(float((LR * g / (g + 1e-8)).mean()), rel=1e-9)
    assert first["weight_scale_step"] == pytest.approx(LR, rel=1e-3)
    assert first["against_own_gradient"] == 1.0  # −lr·sign(g): every scale moved against its gradient
    for row in rows[:3]:
        assert row["lr_weight_scale"] == pytest.approx(LR * ETA[row["bits"]], rel=1e-9)
        assert row["lr_act_scale"] == pytest.approx(LR * ETA[row["bits"]], rel=1e-9)
        # λ_b·|g|/(|g| + ε): within 1 % of λ_b (exactly: the hand-written Adam below)
        assert LR * ETA[row["bits"]] * 0.99 <= row["act_scale_step"] <= LR * ETA[row["bits"]]


def test_without_alrs_every_first_step_is_lambda():
    from labkit.gradient_study import adam_scale_steps

    images, labels = data()
    rows = adam_scale_steps(tiny_quantized(), images, labels, alrs="none", batch_size=8)
    for row in rows[:3]:
        assert row["lr_weight_scale"] == pytest.approx(LR, rel=1e-9)
        assert LR * 0.99 <= row["act_scale_step"] <= LR


def _hand_a2_adam(model, images, labels, batch_size, eta, lr=LR, betas=(0.9, 0.999), eps=1e-8):
    """Alg. A.2 with Adam written out by hand (no weight decay): per batch, per bit high → low, forward,
    backward, then every parameter that got a gradient steps; scales at lr·η_b, everything else at lr.
    The learning rate follows a cosine over 200 epochs of these batches. Returns, per step, the mean |Δs_w| of
    the weight scales and the mean |Δs_a| of that precision's activation scales."""
    model = copy.deepcopy(model)
    named = dict(model.named_parameters())
    weight_scales = [n for n in named if n.endswith("weight_quantizer.scale")]
    scales = {n for n in named if "weight_quantizer.scale" in n or "act_quantizer.scale" in n}
    with torch.no_grad():
        model.eval()
        for b in eta:
            set_bits(model, b)
            model(images[:batch_size])
    model.train()
    state = {n: [0, torch.zeros_like(p), torch.zeros_like(p)] for n, p in named.items()}
    batches = len(labels) // batch_size
    total = 200 * batches
    steps = []
    for k in range(batches):
        rate = 0.5 * lr * (1 + math.cos(math.pi * k / total))
        x, y = images[k * batch_size:(k + 1) * batch_size], labels[k * batch_size:(k + 1) * batch_size]
        for b in eta:
            for p in named.values():
                p.grad = None
            set_bits(model, b)
            F.cross_entropy(model(x).float(), y).backward()  # the trainer takes the loss of float32 logits
            acts = [n for n in named if n.endswith(f"act_quantizer.scale.{b}")]
            before = torch.cat([named[n].detach().flatten().clone() for n in weight_scales])
            acts_before = torch.stack([named[n].detach().clone() for n in acts])
            with torch.no_grad():
                for n, p in named.items():
                    if p.grad is None:
                        continue
                    s = state[n]
                    s[0] += 1
                    s[1] = betas[0] * s[1] + (1 - betas[0]) * p.grad
                    s[2] = betas[1] * s[2] + (1 - betas[1]) * p.grad ** 2
                    m_hat = s[1] / (1 - betas[0] ** s[0])
                    v_hat = s[2] / (1 - betas[1] ** s[0])
                    p -= (rate * eta[b] if n in scales else rate) * m_hat / (v_hat.sqrt() + eps)
            after = torch.cat([named[n].detach().flatten() for n in weight_scales])
            acts_after = torch.stack([named[n].detach() for n in acts])
            steps.append((float((after - before).abs().mean()), float((acts_after - acts_before).abs().mean())))
    return steps


@pytest.mark.parametrize("alrs, eta", [("eq7", ETA), ("none", {8: 1.0, 4: 1.0, 2: 1.0})])
def test_recorded_steps_equal_a_hand_written_a2_adam(alrs, eta):
    from labkit.gradient_study import adam_scale_steps

    images, labels = data(24)
    model = tiny_quantized()
    rows = adam_scale_steps(model, images, labels, alrs=alrs, batch_size=8, weight_decay=0.0)
    expected = _hand_a2_adam(model, images, labels, 8, eta)
    assert len(rows) == len(expected) == 9
    for row, (weight_step, act_step) in zip(rows, expected):
        assert row["weight_scale_step"] == pytest.approx(weight_step, rel=1e-9, abs=1e-15)
        assert row["act_scale_step"] == pytest.approx(act_step, rel=1e-9, abs=1e-15)
    if alrs == "eq7":  # the 2-bit pass moves the shared scale ~1000× less than the 8-bit one
        assert rows[2]["weight_scale_step"] < 0.01 * rows[0]["weight_scale_step"]


def test_adam_scale_steps_leave_the_model_alone_and_refuse_too_few_images():
    from labkit.gradient_study import adam_scale_steps

    model = tiny_quantized()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images, labels = data(8)
    adam_scale_steps(model, images, labels, batch_size=8)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(ValueError, match="batch_size"):
        adam_scale_steps(model, images, labels, batch_size=16)


def test_compare_adam_steps_summarises_per_precision():
    from labkit.gradient_study import adam_scale_steps, compare_adam_steps

    images, labels = data(24)
    model = tiny_quantized()
    summary = compare_adam_steps(model, images, labels, batch_size=8)
    assert [row["bits"] for row in summary] == [8, 4, 2]
    for rule in ("none", "eq7"):
        records = adam_scale_steps(model, images, labels, alrs=rule, batch_size=8)
        for row in summary:
            mine = [r for r in records if r["bits"] == row["bits"]]
            assert row[f"weight_scale_step_{rule}"] == pytest.approx(sum(r["weight_scale_step"] for r in mine) / 3)
            assert row[f"first_weight_scale_step_{rule}"] == pytest.approx(mine[0]["weight_scale_step"])
            later = mine[1:]
            assert row[f"against_own_gradient_{rule}"] == pytest.approx(
                sum(r["against_own_gradient"] for r in later) / 2)
    assert [row["eta"] for row in summary] == [1.0, 0.01, 0.001]


# ============================================================================ clipping, zero codes, ratios


def _hand_codes(w: float, shift: int, qmin: int, qmax: int) -> tuple[int, bool]:
    """(l-bit code, clipped by the STE) of x = w at s_h = 1, from exact fractions."""
    first = round(Fraction(w))
    stored = min(max(first, -128), 127)
    code = min(max(round(Fraction(stored, 2 ** shift)), qmin), qmax)
    unclipped = round(Fraction(first, 2 ** shift))
    clipped = unclipped < qmin or unclipped > qmax or not -128 <= first <= 127
    return code, clipped


@pytest.mark.parametrize("bits", BITS)
def test_clipped_and_zero_code_fractions_match_exact_fractions(bits):
    from labkit.gradient_study import clipped_fraction, zero_code_fraction

    model = tiny_quantized()
    torch.manual_seed(3)
    expected_clipped = expected_zero = total = 0
    qmin, qmax = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    with torch.no_grad():
        for layer in quantized_layers(model).values():
            layer.weight_quantizer.scale.fill_(1.0)
            layer.weight.copy_(torch.randint(-1300, 1300, layer.weight.shape).double() / 8)  # ties included
            for w in layer.weight.flatten().tolist():
                code, clipped = _hand_codes(w, 8 - bits, qmin, qmax)
                expected_clipped += clipped
                expected_zero += code == 0
                total += 1
    assert clipped_fraction(model, bits) == pytest.approx(expected_clipped / total, abs=0)
    assert zero_code_fraction(model, bits) == pytest.approx(expected_zero / total, abs=0)
    assert 0 < expected_clipped < total


def test_scale_gradient_ratios_follow_each_init_and_gradient_mode():
    from labkit.gradient_study import clipped_fraction, gradient_magnitudes, scale_gradient_ratios

    fp32 = tiny_fp32()
    with torch.no_grad():  # Gaussian weights with one outlier per channel: the 3σ rule clips it at 8 bits
        for module in (fp32.conv2, fp32.conv3):
            module.weight.normal_(0, 0.1)
            module.weight[:, 0, 0, 0] = 1.0
    images, labels = data()
    images = images.float()
    rows = scale_gradient_ratios(fp32, images, labels, bits=BITS)
    assert [(r["init"], r["grad_mode"]) for r in rows] == [("max", "lsq"), ("max", "reference"),
                                                           ("reference", "lsq"), ("reference", "reference")]
    for row in rows:
        model = labkit.quantize_model(fp32, BITS, weight_init=row["init"], grad_mode=row["grad_mode"],
                                      example_input=images[:2])
        grads = {m["bits"]: m["weight_scale_grad"] for m in gradient_magnitudes(model, images, labels)}
        assert row["grad"] == pytest.approx(grads, rel=1e-9)
        assert row["ratio"] == pytest.approx(grads[2] / grads[8])
        assert row["chain"] == (64.0 if row["grad_mode"] == "lsq" else 1.0)
        assert row["ratio_per_tied_scale"] == pytest.approx(row["ratio"] / row["chain"])
        assert row["clipped_low"] == clipped_fraction(model, 2)
    by_init = {r["init"]: r for r in rows if r["grad_mode"] == "lsq"}
    assert by_init["max"]["clipped_high"] == 0.0  # max|W| / 127: nothing is clipped at 8 bits
    # 3σ: the outlier of every output channel (1 of 72 weights) and nothing else
    assert by_init["reference"]["clipped_high"] == pytest.approx(1 / 72)


def test_lsq_scale_gradient_carries_the_chain_factor_the_reference_one_does_not():
    """Eq. 14 with the tied scale s_l = s_h·2^Δ: the lab's ∂L/∂s_h is 2^Δ·∂L/∂s_l per channel; the authors'
    gradient is the single-rounding LSQ term of v_l = W/(s_h·2^Δ), with no 2^Δ, summed over the whole tensor."""
    from labkit.quant.lsq import fake_quantize

    torch.manual_seed(0)
    w = torch.randn(4, 50, dtype=torch.float64) * 3
    upstream = torch.randn_like(w)
    s_h = torch.full((4, 1), 0.1, dtype=torch.float64)
    v = w / (s_h * 64)
    q = torch.round(torch.round(w / s_h) / 64)  # Double Rounding's second rounding of the INT8 code
    per_tied = (upstream * torch.where((q >= -2) & (q <= 1), q - v, q.clamp(-2, 1))).sum(1, keepdim=True)
    rounded = torch.round(v)
    reference = (upstream * torch.where((rounded >= -2) & (rounded <= 1), rounded - v, rounded.clamp(-2, 1))).sum()
    for mode, expected in (("lsq", 64 * per_tied), ("reference", reference.expand(4, 1))):
        scale = s_h.clone().requires_grad_(True)
        (fake_quantize(w, scale, -2, 1, shift=6, grad_mode=mode) * upstream).sum().backward()
        torch.testing.assert_close(scale.grad, expected)


@pytest.mark.parametrize("bits, high_bits", [(8, 8), (4, 4), (2, 8), (4, 8), (6, 8), (3, 4)])
def test_curve_clip_edges_are_where_the_straight_through_gradient_switches(bits, high_bits):
    """Just inside each edge ∂x̂/∂x = 1, just outside 0 (the lab's autograd at x = v·2^Δ, s_h = 1); at h the edges
    are n − ½ and p + ½, below h both sit half an INT-h step lower (the INT-h code saturates, a tie rounds out)."""
    from labkit.gradient_study import scale_gradient_curve
    from labkit.quant.lsq import fake_quantize

    curve = scale_gradient_curve(bits, high_bits, steps=11)
    shift = high_bits - bits
    qmin, qmax = curve["qmin"], curve["qmax"]
    half = 2.0 ** -(shift + 1)
    assert (curve["clip_low"], curve["clip_high"]) == ((qmin - 0.5, qmax + 0.5) if shift == 0 else
                                                       (qmin - half, qmax + 0.5 - half))
    eps = 1e-9
    points = torch.tensor([curve["clip_low"] - eps, curve["clip_low"] + eps, curve["clip_high"] - eps,
                           curve["clip_high"] + eps], dtype=torch.float64)
    x = (points * 2.0 ** shift).requires_grad_(True)
    grad, = torch.autograd.grad(fake_quantize(x, torch.ones((), dtype=torch.float64), qmin, qmax, shift=shift).sum(), x)
    assert grad.tolist() == [0.0, 1.0, 1.0, 0.0]


# ============================================================================ figures and tables


def test_gradient_curves_figure_colours_follow_the_legend_and_rows_have_their_own_axes():
    from labkit.gradient_figures import gradient_curves_figure
    from labkit.gradient_study import scale_gradient_curve
    from labkit.viz import bit_color

    figure = gradient_curves_figure([scale_gradient_curve(b, 8, steps=101) for b in (8, 4, 2)])
    traces = figure.data
    assert len(traces) == 6
    colours = {}
    for trace in traces:
        colours.setdefault(trace.name, set()).add(trace.line.color)
    assert colours == {f"{b}-bit": {bit_color(b)} for b in (8, 4, 2)}
    assert len({bit_color(b) for b in (8, 4, 2)}) == 3
    assert sorted(t.name for t in traces if t.showlegend is not False) == ["2-bit", "4-bit", "8-bit"]
    # every trace on an x axis of its own, whose data span only its own bit-width's range
    assert len({t.xaxis for t in traces}) == 6
    for trace in traces:
        bits = int(trace.name.split("-")[0])
        assert max(abs(x) for x in trace.x) <= 2 * (1 << (bits - 1))
    layout = figure.layout.to_plotly_json()
    y_axes = [v for k, v in layout.items() if k.startswith("yaxis")]
    x_axes = [v for k, v in layout.items() if k.startswith("xaxis")]
    assert len(y_axes) == 6 and all(axis.get("title", {}).get("text") for axis in y_axes)
    assert all(axis.get("title", {}).get("text") for axis in x_axes)
    assert all(not axis.get("matches") for axis in x_axes)


def test_step_sizes_figure_one_colour_per_rule_and_a_log_axis_that_holds_every_bar():
    from labkit.gradient_figures import ALRS_COLORS, step_sizes_figure

    sgd = [{"bits": 8, "step_without": 1e-7, "step_with": 1e-7}, {"bits": 2, "step_without": 1e-3, "step_with": 1e-6}]
    adam = [{"bits": 8, "weight_scale_step_none": 4e-4, "weight_scale_step_eq7": 4e-4},
            {"bits": 2, "weight_scale_step_none": 3e-4, "weight_scale_step_eq7": 3e-7}]
    figure = step_sizes_figure(sgd, adam)
    by_group = {}
    for trace in figure.data:
        by_group.setdefault(trace.legendgroup, set()).add(trace.marker.color)
    assert by_group == {rule: {colour} for rule, colour in ALRS_COLORS.items()}
    assert sum(t.showlegend is not False for t in figure.data) == 2
    low, high = figure.layout.yaxis.range
    assert figure.layout.yaxis.type == "log"
    assert 10 ** low <= 1e-7 and 10 ** high >= 1e-3
    assert figure.layout.yaxis.title.text


def test_markdown_rows_is_a_table_with_dashes_for_missing_values():
    from labkit.gradient_figures import markdown_rows

    text = markdown_rows([{"a": 8, "b": 0.000123}, {"a": 2, "b": float("nan")}],
                         [("a", "bits", "d"), ("b", "g", ".2e")])
    assert text == "| bits | g |\n|---:|---:|\n| 8 | 1.23e-04 |\n| 2 | – |"
    assert markdown_rows([{"a": "x"}], [("a", "name", "")]) == "| name |\n|:---|\n| x |"


def test_ratio_and_adam_tables_have_one_row_per_case_and_a_full_header():
    from labkit.gradient_figures import adam_table, ratio_table

    ratio_rows = [{"init": i, "grad_mode": m, "grad": {8: 1e-4, 2: 0.5}, "ratio": 5000.0, "chain": 64.0,
                   "ratio_per_tied_scale": 78.1, "clipped_high": 0.0, "clipped_low": 0.01, "zero_codes_low": 0.9}
                  for i in ("max", "reference") for m in ("lsq", "reference")]
    for text, rows in ((ratio_table(ratio_rows), 4), (adam_table([{"bits": 8, "eta": 1.0}]), 1)):
        lines = text.splitlines()
        assert len(lines) == 2 + rows
        assert len({line.count(" | ") for line in lines[:1] + lines[2:]}) == 1
    assert "5,000.0" in ratio_table(ratio_rows) and "| 90 |" in ratio_table(ratio_rows)


def test_suite_budget_sentence_names_profile_budget_test_images_seeds_and_hardware():
    from labkit.gradient_figures import suite_budget_sentence

    record = {"budget": {"profile": "laptop", "epochs": 1, "batch_size": 128, "train_images": 10000, "steps": 78,
                         "eval_images": {"test": 10000}}, "hardware": "CPU: x, 2 cores", "seeds": 1}
    assert suite_budget_sentence([record]) == (
        "Measured at the laptop profile: 1 epoch on 10,000 training images, batch 128 (78 batches), top-1 on "
        "10,000 test images, 1 seed per row; CPU: x, 2 cores.")
    record["budget"]["epochs"], record["seeds"] = 3, 2
    assert "3 epochs" in suite_budget_sentence([record]) and "2 seeds per row" in suite_budget_sentence([record])
    assert suite_budget_sentence([]) == ""


# ============================================================================ the notebook itself


def _code_cells():
    notebook = json.loads(NOTEBOOK.read_text())
    return ["".join(cell["source"]) for cell in notebook["cells"] if cell["cell_type"] == "code"]


def test_notebook_02_shows_tables_rendered_not_printed():
    """Issue 13 item 5: no table is printed as pipe-Markdown or a dict; each goes through IPython's Markdown."""
    table_calls = ("markdown_table(", "ratio_table(", "adam_table(", "markdown_rows(", "format_rows(")
    cells = _code_cells()
    showing = [c for c in cells if any(call in c for call in table_calls)]
    assert len(showing) >= 4
    for cell in cells:
        for line in cell.splitlines():
            if "print(" in line:
                assert not any(call in line for call in table_calls), line
                assert "budget" not in line and "hardware" not in line, line
    for cell in showing:
        assert "Markdown(" in cell, cell


def test_notebook_02_measures_the_ratios_and_the_adam_steps_with_progress_bars():
    cells = _code_cells()
    assert any("scale_gradient_ratios(" in c and "progress=True" in c for c in cells)
    assert any("compare_adam_steps(" in c and "progress=True" in c for c in cells)
