"""labkit.exercises: every grader passes the instructor's solution and names the mistake of realistic wrong ones."""
from __future__ import annotations

import runpy
import sys
from functools import partial
from pathlib import Path

import nbformat
import pytest
import torch

import labkit.exercises as ex
from labkit.exercises.hutchinson import rademacher
from labkit.exercises.student_copy import StudentCopyError, main, make_student_copy, strip_code
from labkit.hasb.hessian import hessian_trace_estimates
from labkit.quant.lsq import lsq_grad_scale
from labkit.rounding_study import ExerciseFeedback, check_second_rounding_exercise

ROOT = Path(__file__).resolve().parent.parent


GRADERS = [  # (grader, the instructor's solution)
    (ex.check_second_rounding, ex.reference_second_rounding),
    (ex.check_lsq_scale_gradient, ex.reference_lsq_scale_gradient),
    (ex.check_alrs_factor, ex.reference_alrs_factor),
    (ex.check_roulette_probabilities, ex.reference_roulette_probabilities),
    (ex.check_roulette_sampler, ex.reference_inverse_cdf),
    (ex.check_roulette_frequencies, ex.reference_roulette_sampler),
    (ex.check_hutchinson_trace, ex.reference_hutchinson_trace),
    (ex.check_integer_switch, ex.reference_integer_switch),
    (ex.check_bitops, ex.reference_conv_cost),
]
IDS = [check.__name__ for check, _ in GRADERS]


def failing(feedback: ExerciseFeedback, *words: str) -> None:
    """The feedback fails and its message names every one of ``words``."""
    assert isinstance(feedback, ExerciseFeedback)
    assert not feedback.passed, feedback.message
    for word in words:
        assert word in feedback.message, f"{word!r} not in: {feedback.message}"


# ------------------------------------------------------------------------------------------- every grader


@pytest.mark.parametrize("check, solution", GRADERS, ids=IDS)
def test_the_reference_solution_passes(check, solution):
    feedback = check(solution)
    assert feedback.passed, feedback.message
    assert feedback.message.startswith("Correct")
    assert "Correct" in feedback._repr_html_() and str(feedback) == feedback.message


@pytest.mark.parametrize("check, solution", GRADERS, ids=IDS)
@pytest.mark.parametrize("not_a_function", [None, 42, torch.zeros(3)], ids=["None", "int", "tensor"])
def test_a_non_callable_is_refused_with_a_message(check, solution, not_a_function):
    failing(check(not_a_function), "Pass your function itself", "without parentheses")


def _not_implemented(*args):
    raise NotImplementedError()


def _crashes(*args):
    return {}["missing"]


def _returns_none(*args):
    return None


@pytest.mark.parametrize("check, solution", GRADERS, ids=IDS)
def test_student_exceptions_are_reported_not_raised(check, solution):
    failing(check(_not_implemented), "Not implemented yet")
    failing(check(_crashes), "KeyError")
    assert not check(_returns_none).passed


def test_the_failing_line_of_student_code_is_quoted():
    failing(ex.check_bitops(_crashes), "KeyError", "at line", 'return {}["missing"]')
    failing(ex.check_second_rounding(_returns_none), "forget `return`")


def test_feedback_renders_as_html_with_the_failing_case():
    feedback = ex.check_alrs_factor(lambda bits, high: 1.0)
    html = feedback._repr_html_()
    assert "Not yet" in html and "expected" in html and "labkit-feedback-fail" in html
    assert feedback.case and feedback.expected is not None and feedback.got == 1.0
    assert "<script>" not in ExerciseFeedback(False, "<script>alert(1)</script>")._repr_html_()


def test_the_old_import_path_is_the_same_feedback_and_grader():
    assert ex.ExerciseFeedback is ExerciseFeedback
    solution = ex.reference_second_rounding
    assert ex.check_second_rounding(solution) == check_second_rounding_exercise(solution)
    failing(ex.check_second_rounding(lambda q, h, l: q >> (h - l)), "truncate")


# ---------------------------------------------------------------------------------------------- LSQ gradient


def _lsq(inside=None, below=None, above=None, clip_by_value=False, scaled=True):
    """The reference gradient with one part replaced by a wrong formula of (v, qmin, qmax)."""
    def gradient(x, scale, qmin, qmax):
        v = x / scale
        rounded = torch.round(v)
        test = v if clip_by_value else rounded
        part = lambda formula, default: (formula or default)(v, qmin, qmax)  # noqa: E731
        out = torch.where(test < qmin, part(below, lambda v, n, p: torch.full_like(v, float(n))),
                          torch.where(test > qmax, part(above, lambda v, n, p: torch.full_like(v, float(p))),
                                      part(inside, lambda v, n, p: torch.round(v) - v)))
        return out * (lsq_grad_scale(x.numel(), qmax) if scaled else 1.0)
    return gradient


def test_lsq_reference_matches_labkit_autograd_directly():
    from labkit.exercises.lsq_gradient import autograd_scale_gradient

    v = torch.tensor([-129.0, -128.5, -128.0, -0.5, 0.5, 1.5, 126.6, 127.0, 127.5, 130.0], dtype=torch.float64)
    for scaled in (True, False):
        assert torch.allclose(ex.reference_lsq_scale_gradient(v * 0.5, 0.5, -128, 127, scaled),
                              autograd_scale_gradient(v * 0.5, 0.5, -128, 127, scaled))


@pytest.mark.parametrize("wrong, words", [
    (_lsq(inside=lambda v, n, p: torch.floor(v) - v), ["Inside the range", "floor(v) − v", "round(v) − v"]),
    (_lsq(inside=lambda v, n, p: v - torch.round(v)), ["Inside the range you return v − round(v)"]),
    (_lsq(inside=lambda v, n, p: torch.floor(v + 0.5) - v), ["ties", "half to even"]),
    (_lsq(below=lambda v, n, p: torch.round(v) - v, above=lambda v, n, p: torch.round(v) - v),
     ["At the clipped values you return round(v) − v", "expected qmin = -128", "forget the clipping"]),
    (_lsq(below=lambda v, n, p: torch.zeros_like(v), above=lambda v, n, p: torch.zeros_like(v)),
     ["At the clipped values you return 0", "∂x̂/∂x"]),
    (_lsq(below=lambda v, n, p: torch.full_like(v, float(p)), above=lambda v, n, p: torch.full_like(v, float(n))),
     ["swapped"]),
    (_lsq(clip_by_value=True), ["clip boundary", "round(v) leaves [qmin, qmax]"]),
    (_lsq(scaled=False), ["left out the LSQ gradient scale", "1/sqrt(N·qmax)"]),
    (lambda x, s, n, p: -ex.reference_lsq_scale_gradient(x, s, n, p), ["wrong sign"]),
    (lambda x, s, n, p: ex.reference_lsq_scale_gradient(x, s, n, p) * p ** 0.5, ["× the expected", "N = x.numel()"]),
    (lambda x, s, n, p: ex.reference_lsq_scale_gradient(x, s, n, p).sum(), ["one value per element", "the sum"]),
], ids=["floor", "flipped-inside", "half-up-ties", "no-clip", "zero-at-clip", "swapped-bounds", "clip-by-v",
        "no-g", "sign", "g-without-qmax", "summed"])
def test_lsq_grader_names_the_mistake(wrong, words):
    feedback = ex.check_lsq_scale_gradient(wrong)
    failing(feedback, *words)
    assert "you return" in feedback.message or "you returned" in feedback.message


def test_lsq_grader_without_the_gradient_scale():
    assert ex.check_lsq_scale_gradient(_lsq(scaled=False), gradient_scale=False).passed
    failing(ex.check_lsq_scale_gradient(ex.reference_lsq_scale_gradient, gradient_scale=False), "× the expected")


def test_lsq_message_names_the_value_and_the_expected_formula():
    feedback = ex.check_lsq_scale_gradient(_lsq(inside=lambda v, n, p: torch.floor(v) - v))
    assert "v = x/s = " in feedback.message and "expected g·(round(v) − v)" in feedback.message
    assert feedback.expected != feedback.got


# ----------------------------------------------------------------------------------------------------- ALRS


def test_alrs_reference_is_eq7_as_labkit_implements_it():
    from labkit.train.alrs import alrs_factors

    assert [ex.reference_alrs_factor(b, 8) for b in (8, 6, 4, 2)] == pytest.approx([1, 0.1, 0.01, 0.001])
    assert [ex.reference_alrs_factor(b, 4) for b in (4, 3, 2)] == pytest.approx([1, 0.5, 0.1])
    assert alrs_factors((8, 7, 5), "eq7") == pytest.approx({b: ex.reference_alrs_factor(b, 8) for b in (8, 7, 5)})


@pytest.mark.parametrize("wrong, words", [
    (lambda b, h: 10.0 ** (-(h - b) / 2), ["odd Δ", "5·10^(−(Δ+1)/2)", "0.316"]),
    (lambda b, h: 0.1 ** (h - b), ["0.1^Δ", "−Δ/2"]),
    (lambda b, h: ex.reference_alrs_factor(h, b), ["grows as the precision drops", "Δ = high_bits − bits"]),
    (lambda b, h: 10.0 ** (-(h - b) / 2) if (h - b) % 2 == 0 else 5 * 10.0 ** (-(h - b - 1) / 2),
     ["−(Δ+1)/2, not −(Δ−1)/2"]),
    (lambda b, h: 0.5, ["Δ = 0", "factor is 1"]),
    (lambda b, h: {b: 1.0}, ["not a dict"]),
], ids=["odd-as-even", "per-bit", "inverted", "odd-minus", "constant", "dict"])
def test_alrs_grader_names_the_mistake(wrong, words):
    failing(ex.check_alrs_factor(wrong), *words)


def test_alrs_message_names_the_bit_set_and_delta():
    feedback = ex.check_alrs_factor(lambda b, h: 10.0 ** (-(h - b) / 2))
    failing(feedback, "[4, 3, 2]", "bits=3", "Δ=1", "you return 0.316228", "expected 5·10^(−(1+1)/2) = 0.5")


# ------------------------------------------------------------------------------------------------- roulette


def _pick(less_equal=False, order=None, normalise=True, fallback=True, index=False):
    def pick(probabilities, u):
        items = list(probabilities.items())
        if order:
            items.sort(reverse=order == "desc")
        total = sum(probabilities.values()) if normalise else 1.0
        cumulative = 0.0
        for position, (bit, p) in enumerate(items):
            cumulative += p / total
            if (u <= cumulative) if less_equal else (u < cumulative):
                return position if index else bit
        return items[-1][0] if fallback else None
    return pick


def test_roulette_reference_matches_labkit():
    from labkit.hasb.roulette import _inverse_cdf, roulette_probabilities, sample_bits

    averages = {"a": 0.1, "b": 2.0, "c": 1.0}
    assert ex.reference_roulette_probabilities(averages, (8, 6, 4, 2)) == roulette_probabilities(averages)
    for u in torch.linspace(0, 1 - 2 ** -53, 101, dtype=torch.float64).tolist():
        assert ex.reference_inverse_cdf({8: 0.4, 6: 0.3, 4: 0.2, 2: 0.1}, u) == _inverse_cdf(
            {8: 0.4, 6: 0.3, 4: 0.2, 2: 0.1}, u)
    probabilities = roulette_probabilities(averages)
    drawn = sample_bits(probabilities, torch.Generator().manual_seed(3))
    generator = torch.Generator().manual_seed(3)
    assert drawn == {name: ex.reference_roulette_sampler(p, generator) for name, p in probabilities.items()}


@pytest.mark.parametrize("wrong, words", [
    (_pick(less_equal=True), ["exactly on a boundary", "u < cumulative", "u = 0.5", "expected 6"]),
    (_pick(order="desc"), ["sorted high to low", "dict's own order"]),
    (_pick(order="asc"), ["sorted low to high"]),
    (_pick(normalise=False), ["need not add up to 1", "divide"]),
    (_pick(fallback=False), ["falling off the end", "last bit with p > 0"]),
    (_pick(index=True), ["position of the bit"]),
    (lambda p, u: list(p)[-1] if u > 0.5 else list(p)[0], ["picks differ", "you return"]),
], ids=["u<=c", "sorted-desc", "sorted-asc", "unnormalised", "no-fallback", "index", "nonsense"])
def test_roulette_pick_grader_names_the_mistake(wrong, words):
    failing(ex.check_roulette_sampler(wrong), *words)


def _sample_with(pick):
    return lambda probabilities, generator: pick(probabilities, float(torch.rand((), generator=generator,
                                                                                 dtype=torch.float64)))


@pytest.mark.parametrize("wrong, words", [
    (lambda p, g: list(p)[int(torch.randint(len(p), (), generator=g))], ["chi-square", "expected 10%"]),
    (_sample_with(lambda p, u: ex.reference_inverse_cdf(dict(zip(p, reversed(list(p.values())))), u)),
     ["chi-square", "bit 2 is drawn"]),
    (lambda p, g: ex.reference_inverse_cdf(p, float(torch.rand(())))
     if torch.rand((), generator=g) >= 0 else None, ["same seed", "generator=generator"]),
    (lambda p, g: 7, ["drew 7", "not one of the bits"]),
    (lambda p, g: ex.reference_roulette_sampler({b: w or 0.5 for b, w in p.items()}, g),
     ["drew 6", "has probability 0"]),
], ids=["uniform", "reversed-probabilities", "global-rng", "not-a-candidate", "ignores-p=0"])
def test_roulette_frequency_grader_names_the_mistake(wrong, words):
    failing(ex.check_roulette_frequencies(wrong, draws=2000), *words)


def test_roulette_frequency_grader_is_deterministic():
    wrong = _sample_with(lambda p, u: ex.reference_inverse_cdf({b: 1.0 for b in p}, u))
    assert ex.check_roulette_frequencies(wrong, draws=500).message == ex.check_roulette_frequencies(wrong, draws=500).message


def _probabilities(compare=lambda t, mean: t >= mean, weight=lambda b, c: b / sum(c)):
    def probabilities(averages, candidates):
        mean = sum(averages.values()) / len(averages)
        return {name: {b: weight(b, candidates) if compare(t, mean) else 1 / len(candidates) for b in candidates}
                for name, t in averages.items()}
    return probabilities


@pytest.mark.parametrize("wrong, words", [
    (_probabilities(compare=lambda t, m: t > m), ["exactly at the mean", "t_l ≥ t_m"]),
    (_probabilities(compare=lambda t, m: t < m), ["swapped"]),
    (_probabilities(weight=lambda b, c: b), ["divided by Σ b_j = 20"]),
    (_probabilities(weight=lambda b, c: (1 / b) / sum(1 / x for x in c)), ["∝ b_i, not ∝ 1/b_i"]),
    (lambda averages, candidates: [0.25] * 4, ["one entry per layer"]),
], ids=["strict-threshold", "swapped", "unnormalised", "inverse", "list"])
def test_roulette_probability_grader_names_the_mistake(wrong, words):
    failing(ex.check_roulette_probabilities(wrong), *words)


# ------------------------------------------------------------------------------------------------ Hutchinson


def _hutchinson(probe="rademacher", mean=True, create_graph=True, per_parameter=False, absolute=False,
                gradient_only=False):
    def estimate(loss_fn, weight, probes, generator):
        total = 0.0
        for _ in range(probes):
            if probe == "rademacher":
                v = rademacher(weight.shape, generator, weight.dtype)
            elif probe == "gaussian":
                v = torch.randn(weight.shape, generator=generator, dtype=weight.dtype)
            else:
                v = torch.ones_like(weight)
            (gradient,) = torch.autograd.grad(loss_fn(weight), weight, create_graph=create_graph)
            if gradient_only:
                total += float((gradient * v).sum().detach())
                continue
            (hessian_v,) = torch.autograd.grad((gradient * v).sum(), weight)
            total += float((v * hessian_v).sum())
        result = total / probes if mean else total
        result = result / weight.numel() if per_parameter else result
        return abs(result) if absolute else result
    return estimate


def test_hutchinson_reference_matches_labkit_hessian_traces():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    inputs, labels = torch.randn(16, 4), torch.randint(0, 3, (16,))
    labkit = hessian_trace_estimates(model, (inputs, labels), ["2"], images=16, batch_size=16, probes=3,
                                     tolerance=None, seed=0)["2"].trace

    def loss_fn(weight):
        return torch.nn.functional.cross_entropy(torch.func.functional_call(model, {"2.weight": weight}, (inputs,)),
                                                 labels)

    ours = ex.reference_hutchinson_trace(loss_fn, model[2].weight, 3, torch.Generator().manual_seed(0))
    assert ours == pytest.approx(labkit, rel=1e-5)


@pytest.mark.parametrize("wrong, words", [
    (_hutchinson(probe="gaussian"), ["diagonal Hessian", "±1", "torch.randn"]),
    (_hutchinson(probe="ones"), ["all ones", "random signs"]),
    (_hutchinson(mean=False), ["300 × the trace", "divide"]),
    (_hutchinson(create_graph=False), ["RuntimeError", "create_graph=True"]),
    (_hutchinson(per_parameter=True), ["divide by the 12 parameters", "average HMT"]),
    (_hutchinson(absolute=True), ["raw estimate", "|trace|"]),
    (_hutchinson(gradient_only=True), ["Hv = grad((g * v).sum(), weight)"]),
    (lambda loss_fn, weight, probes, generator: _hutchinson()(loss_fn, weight, probes, None),
     ["same seed", "generator"]),
], ids=["gaussian", "ones", "sum", "no-create-graph", "per-parameter", "abs", "gradient", "global-rng"])
def test_hutchinson_grader_names_the_mistake(wrong, words):
    feedback = ex.check_hutchinson_trace(wrong)
    failing(feedback, *words)


# ---------------------------------------------------------------------------------------- integer switching


def _switch(kind):
    def switch(codes, high_bits, low_bits):
        shift, top = high_bits - low_bits, 2 ** (low_bits - 1) - 1
        if kind == "floor":
            return (codes >> shift).clamp(max=top)
        if kind == "no-clip":
            return (codes >> shift) + ((codes >> (shift - 1)) & 1)
        if kind == "overflow":
            return ((codes + (1 << (shift - 1))) >> shift).clamp(max=top)
        if kind == "float":
            return torch.floor(codes.double() / 2 ** shift + 0.5).clamp(max=top).to(codes.dtype)
        if kind == "int64":
            return ((codes.long() + (1 << (shift - 1))) >> shift).clamp(max=top)
        if kind == "half-even":
            return ex.reference_integer_switch(codes, high_bits, low_bits, "half_even")
        raise AssertionError(kind)
    return switch


def test_integer_switch_reference_is_double_round():
    from labkit.quant.rounding import double_round

    codes = torch.arange(-128, 128).to(torch.int8)
    for rule in ("half_up", "half_even"):
        for bits in range(2, 9):
            assert torch.equal(ex.reference_integer_switch(codes, 8, bits, rule), double_round(codes, 8, bits, rule))
    assert ex.check_integer_switch(partial(ex.reference_integer_switch, rounding="half_even"),
                                   rounding="half_even").passed


@pytest.mark.parametrize("kind, words", [
    ("floor", ["truncate", "floor"]),
    ("no-clip", ["go above 63", "clip"]),
    ("overflow", ["Overflow", "does not fit int8", "wraps"]),
    ("float", ["computes in floating point", "shifts"]),
    ("int64", ["torch.int64", "keep the stored dtype torch.int8"]),
    ("half-even", ["half-even", "this check uses half-up"]),
])
def test_integer_switch_grader_names_the_mistake(kind, words):
    failing(ex.check_integer_switch(_switch(kind)), *words)


def test_integer_switch_message_names_the_code():
    failing(ex.check_integer_switch(_switch("overflow")), "q_8 = 127", "bits 01111111", "you return -64",
            "expected 63")


# ------------------------------------------------------------------------------------------------ BitOPs


def _conv_cost(mistake):
    def cost(layer, size, weight_bits, act_bits):
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = layer.kernel_size, layer.stride, layer.padding, layer.dilation
        groups = 1 if mistake == "groups" else layer.groups
        if mistake == "padding":
            ph = pw = 0
        h = (size[0] + 2 * ph - dh * (kh - 1) - 1) // sh + 1
        w = (size[1] + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        if mistake == "input-size":
            h, w = size
        macs = layer.out_channels * h * w * layer.in_channels // groups * kh * kw
        ops = {"flops": 2 * macs * weight_bits * act_bits, "weight-bits-squared": macs * weight_bits ** 2,
               "added-bits": macs * (weight_bits + act_bits)}.get(mistake, macs * weight_bits * act_bits)
        size_bits = {"bias": sum(p.numel() for p in layer.parameters()) * weight_bits,
                     "bytes": layer.weight.numel() * weight_bits // 8}.get(mistake, layer.weight.numel() * weight_bits)
        return ops, size_bits
    return cost


def test_bitops_reference_matches_labkit_cost():
    from labkit.hasb.cost import bitops, layer_costs, model_size_bits

    layer = torch.nn.Conv2d(6, 12, (3, 5), stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=3)
    cost = layer_costs(layer, (6, 11, 9))[""]
    assert ex.reference_conv_cost(layer, (11, 9), 4, 2) == (bitops(cost.macs, 4, 2), model_size_bits(cost.params, 4))


@pytest.mark.parametrize("mistake, words", [
    ("input-size", ["output size H_out × W_out", "stride"]),
    ("padding", ["include the padding"]),
    ("groups", ["C_in/groups = 1", "groups = 32"]),
    ("flops", ["FLOPs", "one per MAC"]),
    ("weight-bits-squared", ["act_bits", "not × weight_bits²"]),
    ("added-bits", ["multiply the two bit-widths"]),
    ("bias", ["Biases are not counted"]),
    ("bytes", ["in bits, not bytes"]),
])
def test_bitops_grader_names_the_mistake(mistake, words):
    failing(ex.check_bitops(_conv_cost(mistake)), *words)


def test_bitops_grader_wants_a_pair():
    failing(ex.check_bitops(lambda layer, size, w, a: 5), "Return a pair (bitops, size_bits)")


# ---------------------------------------------------------------------------------------------- student copy


def _notebook(*cells):
    notebook = nbformat.v4.new_notebook()
    notebook.cells = list(cells)
    return notebook


def _code(source, outputs=True):
    cell = nbformat.v4.new_code_cell(source)
    if outputs:
        cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="the solution printed this\n")]
        cell.execution_count = 3
    return cell


def _write(folder: Path, name: str, notebook) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, folder / name)
    return folder / name


SOLVED = "def f(x):\n    ### BEGIN SOLUTION\n    y = x + 1\n    return y\n    ### END SOLUTION\n\nprint(f(1))"


def test_student_copy_replaces_code_solutions_keeps_the_rest(tmp_path):
    source = _write(tmp_path / "src", "ex.ipynb", _notebook(
        nbformat.v4.new_markdown_cell("# Title\nWrite `f`."),
        _code(SOLVED),
        _code("import torch\nprint('kept')"),
        _code("### BEGIN SOLUTION\nanswer = 42\n### END SOLUTION", outputs=False),
    ))
    written = make_student_copy([tmp_path / "src"], tmp_path / "out")
    assert written == {tmp_path / "out" / "ex.ipynb": 2}
    copy = nbformat.read(tmp_path / "out" / "ex.ipynb", as_version=4)
    nbformat.validate(copy)
    title, solved, plain, top = copy.cells
    assert title.source == "# Title\nWrite `f`."
    assert solved.source == ("def f(x):\n    # YOUR CODE HERE\n    raise NotImplementedError()\n\nprint(f(1))")
    assert solved.outputs == [] and solved.execution_count is None
    assert plain.source == "import torch\nprint('kept')"
    assert plain.outputs == [] and plain.execution_count is None  # the instructor's outputs are not handed out
    assert top.source == "# YOUR CODE HERE\nraise NotImplementedError()"
    assert "BEGIN SOLUTION" in nbformat.read(source, as_version=4).cells[1].source  # the source is untouched


def test_student_copy_removes_markdown_solutions_within_and_across_cells(tmp_path):
    make_student_copy([_write(tmp_path, "md.ipynb", _notebook(
        nbformat.v4.new_markdown_cell("Question: why?\n<!-- BEGIN SOLUTION -->\nBecause.\n<!-- END SOLUTION -->"),
        nbformat.v4.new_markdown_cell("<!-- BEGIN SOLUTION -->\nThe answer starts here"),
        nbformat.v4.new_markdown_cell("and goes on"),
        _code("print('worked answer')"),
        nbformat.v4.new_markdown_cell("and ends here.\n<!-- END SOLUTION -->\nNext question."),
        nbformat.v4.new_markdown_cell("<!-- BEGIN SOLUTION -->only an answer<!-- END SOLUTION -->"),
    ))], tmp_path / "out")
    cells = nbformat.read(tmp_path / "out" / "md.ipynb", as_version=4).cells
    assert [c.source for c in cells] == ["Question: why?", "Next question."]


@pytest.mark.parametrize("cells, words", [
    ([_code("### BEGIN SOLUTION\nx = 1")], ["cell 1", "never closed", "### END SOLUTION"]),
    ([nbformat.v4.new_markdown_cell("hi"), _code("x = 1\n### END SOLUTION")], ["cell 2", "without a"]),
    ([_code("### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION")], ["opens", "again"]),
    ([nbformat.v4.new_markdown_cell("<!-- BEGIN SOLUTION -->\nanswer")], ["cell 1", "never closed"]),
    ([nbformat.v4.new_markdown_cell("text <!-- END SOLUTION -->")], ["without a"]),
])
def test_student_copy_unbalanced_markers_name_the_notebook_and_cell(tmp_path, cells, words):
    path = _write(tmp_path / "src", "bad.ipynb", _notebook(*cells))
    with pytest.raises(StudentCopyError) as error:
        make_student_copy([path], tmp_path / "out")
    for word in [str(path), *words]:
        assert word in str(error.value)
    assert not (tmp_path / "out").exists()  # nothing is written when a notebook is wrong


def test_student_copy_refuses_the_source_folder(tmp_path, capsys):
    path = _write(tmp_path / "src", "ex.ipynb", _notebook(_code(SOLVED)))
    for sources in ([tmp_path / "src"], [path]):
        with pytest.raises(StudentCopyError, match="refusing to write"):
            make_student_copy(sources, tmp_path / "src")
    assert main([str(tmp_path / "src"), "--out", str(tmp_path / "src" / ".")]) == 2
    assert "refusing" in capsys.readouterr().err
    assert "BEGIN SOLUTION" in nbformat.read(path, as_version=4).cells[0].source


def test_student_copy_command_line_reports_counts(tmp_path, monkeypatch, capsys):
    _write(tmp_path / "src", "a.ipynb", _notebook(_code(SOLVED), _code(SOLVED)))
    _write(tmp_path / "src", "b.ipynb", _notebook(_code("print(1)")))
    script = ROOT / "scripts" / "student_copy.py"  # the thin wrapper, run as `python scripts/student_copy.py`
    monkeypatch.setattr(sys, "argv", [str(script), str(tmp_path / "src"), "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit) as exit_code:
        runpy.run_path(str(script), run_name="__main__")
    assert exit_code.value.code == 0
    printed = capsys.readouterr().out
    assert "a.ipynb: 2 solutions removed" in printed and "b.ipynb: 0 solutions removed" in printed
    assert "2 notebooks, 2 solutions removed in all" in printed
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.ipynb", "b.ipynb"]


def test_student_copy_runs_as_a_module(tmp_path, monkeypatch, capsys):
    _write(tmp_path / "src", "a.ipynb", _notebook(_code(SOLVED)))
    monkeypatch.setattr(sys, "argv", ["student_copy", str(tmp_path / "src"), "--out", str(tmp_path / "src")])
    monkeypatch.delitem(sys.modules, "labkit.exercises.student_copy")  # as a fresh `python -m` run finds it
    with pytest.raises(SystemExit) as exit_code:  # python -m labkit.exercises.student_copy ...
        runpy.run_module("labkit.exercises.student_copy", run_name="__main__", alter_sys=False)
    assert exit_code.value.code == 2 and "refusing to write" in capsys.readouterr().err


def _grader(source, tags=None):
    cell = _code(source)
    cell.metadata["nbgrader"] = {"grade": True, "solution": False, "grade_id": "check", "points": 1}
    if tags is not None:
        cell.metadata["tags"] = tags
    return cell


def test_student_copy_drops_nbval_tags_and_lets_run_all_pass_the_checks(tmp_path):
    checked = _code("print(2 + 2)")
    checked.metadata["tags"] = ["nbval-check-output", "lesson"]
    skipped = _code("print(3)")
    skipped.metadata["tags"] = ["nbval-skip"]
    make_student_copy([_write(tmp_path / "src", "t.ipynb", _notebook(
        checked, skipped, _code(SOLVED), _grader("assert f(1) == 2", tags=["nbval-check-output"]),
        _grader("assert f(2) == 3", tags=["raises-exception"]),
    ))], tmp_path / "out")
    checked, skipped, solved, grader, already = nbformat.read(tmp_path / "out" / "t.ipynb", as_version=4).cells
    assert checked.metadata["tags"] == ["lesson"]  # other tags stay
    assert "tags" not in skipped.metadata and "tags" not in solved.metadata  # no empty tag list left behind
    assert grader.metadata["tags"] == ["raises-exception"] and grader.metadata["nbgrader"]["grade"]
    assert already.metadata["tags"] == ["raises-exception"]  # not twice
    assert all(c.outputs == [] and c.execution_count is None for c in (checked, skipped, grader))


def test_student_copy_of_the_real_notebooks_is_what_a_class_gets(tmp_path):
    """For every notebook: no nbval tags, no outputs, every stub inside a function (defining it runs), every
    grader cell tagged to let Run All go on."""
    import ast

    written = make_student_copy([ROOT / "notebooks"], tmp_path)
    for path in written:
        code = [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
        assert any(c.metadata.get("nbgrader", {}).get("grade") for c in code), f"{path.name}: no grader cell"
        for cell in code:
            tags = cell.metadata.get("tags", [])
            assert not [t for t in tags if t.startswith("nbval")], f"{path.name}: test tags left: {tags}"
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: outputs left"
            nbgrader = cell.metadata.get("nbgrader", {})
            if nbgrader.get("grade") and not nbgrader.get("solution"):
                assert "raises-exception" in tags, f"{path.name}: grader cell {nbgrader.get('grade_id')} untagged"
            if "raise NotImplementedError()" in cell.source:
                stubs = [node for node in ast.walk(ast.parse(cell.source)) if isinstance(node, ast.FunctionDef)
                         and any(isinstance(s, ast.Raise) for s in node.body)]
                top_level = [n for n in ast.parse(cell.source).body if isinstance(n, ast.Raise)]
                assert stubs and not top_level, f"{path.name}: a stub outside a function stops Run All:\n{cell.source}"


def test_student_copy_of_notebook_01_runs_top_to_bottom(tmp_path, monkeypatch):
    """Executed as a student would (Run All, smoke profile): every cell runs, and the check says what to do."""
    from nbclient import NotebookClient

    monkeypatch.setenv("LABKIT_PROFILE", "smoke")
    written = make_student_copy([ROOT / "notebooks" / "01_double_rounding_scalar.ipynb"], tmp_path)
    (path,) = written
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()  # raises if a cell stops Run All
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code), "a cell did not run"
    grader = next(c for c in code if c.metadata.get("nbgrader", {}).get("grade_id") == "second_rounding_check")
    printed = "".join(o.get("text", "") for o in grader.outputs if o.output_type == "stream")
    assert "Not implemented yet: replace `raise NotImplementedError()`" in printed
    assert [o.ename for o in grader.outputs if o.output_type == "error"] == ["AssertionError"]


def test_strip_code_keeps_indentation_and_a_missing_final_newline():
    text, count = strip_code("if True:\n        ### BEGIN SOLUTION\n        pass\n        ### END SOLUTION", "x")
    assert count == 1 and text == "if True:\n        # YOUR CODE HERE\n        raise NotImplementedError()"


def test_student_copy_of_the_real_notebooks(tmp_path):
    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    assert notebooks
    written = make_student_copy([ROOT / "notebooks"], tmp_path)
    assert sorted(p.name for p in written) == [p.name for p in notebooks]
    assert written[tmp_path / "01_double_rounding_scalar.ipynb"] >= 1
    for path in written:
        copy = nbformat.read(path, as_version=4)
        nbformat.validate(copy)
        text = "\n".join(cell.source for cell in copy.cells)
        assert "### BEGIN SOLUTION" not in text and "### END SOLUTION" not in text
        assert "<!-- BEGIN SOLUTION -->" not in text
    original = nbformat.read(ROOT / "notebooks" / "01_double_rounding_scalar.ipynb", as_version=4)
    copy = nbformat.read(tmp_path / "01_double_rounding_scalar.ipynb", as_version=4)
    assert len(copy.cells) == len(original.cells)
    stub = next(c for c in copy.cells if "raise NotImplementedError()" in c.source)
    assert stub.source.startswith("def my_second_rounding(q_h, high_bits, low_bits):\n    # YOUR CODE HERE\n")


# ----------------------------------------------------------------------------------- imagenet top-1 (notebook 05)

def test_imagenet_top1_reference_passes_and_mistakes_are_named():
    from labkit.exercises import check_imagenet_top1, reference_top1

    assert check_imagenet_top1(reference_top1).passed

    def ignores_allowed(logits, labels, allowed=None):
        return reference_top1(logits, labels, None)

    def position_not_class(logits, labels, allowed=None):
        if allowed is None:
            return reference_top1(logits, labels)
        return 100.0 * float((logits[:, allowed].argmax(1) == labels).float().mean())

    def fraction(logits, labels, allowed=None):
        return reference_top1(logits, labels, allowed) / 100.0

    for wrong, phrase in ((ignores_allowed, "ignore `allowed`"), (position_not_class, "map it back"),
                          (fraction, "percentage")):
        feedback = check_imagenet_top1(wrong)
        assert not feedback.passed
        assert phrase in feedback.message, feedback.message
    assert not check_imagenet_top1(None).passed
