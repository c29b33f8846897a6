"""Exercise: Hutchinson's estimate of a Hessian trace (METHOD.md §6 step 1, paper Alg. 1).

For a Rademacher probe v (entries ±1), E[vᵀHv] = tr(H). Hv needs no Hessian: with g = ∂L/∂w built with
``create_graph=True``, ``Hv = ∂(g·v)/∂w``. The estimate is the mean of vᵀHv over the probes; HASB then takes
|trace| / parameter count per layer (:mod:`labkit.hasb.hessian`, not part of this exercise).

The grader compares ``student_fn(loss_fn, weight, probes, generator)`` with the exact trace of
``torch.autograd.functional.hessian`` on tiny problems: a diagonal Hessian (every ±1 probe is then exact), a
dense quadratic and a small classifier (within 5 standard errors of the exact variance of the estimator).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from labkit.exercises.grading import ExerciseFeedback, Failed, call_student, fmt, grader, to_number

SIGNATURE = "my_hutchinson_trace(loss_fn, weight, probes, generator) -> float"
TODO = ("For each probe draw v = ±1 (torch.randint(0, 2, weight.shape, generator=generator) * 2 - 1), take "
        "g = grad(loss_fn(weight), weight, create_graph=True), Hv = grad((g * v).sum(), weight), add (v * Hv).sum(); "
        "return the mean.")


def rademacher(shape, generator: torch.Generator, dtype=torch.float64) -> torch.Tensor:
    """A ±1 tensor, drawn as :mod:`labkit.hasb.hessian` draws its probes (the same seed, the same probes)."""
    return (torch.randint(0, 2, shape, generator=generator, dtype=torch.int8) * 2 - 1).to(dtype)


def reference_hutchinson_trace(loss_fn, weight: torch.Tensor, probes: int, generator: torch.Generator) -> float:
    """Mean over ``probes`` Rademacher probes v of vᵀHv, with Hv by double backprop (Alg. 1)."""
    weight = weight.detach().requires_grad_(True)
    total = 0.0
    for _ in range(probes):
        v = rademacher(weight.shape, generator, weight.dtype)
        (gradient,) = torch.autograd.grad(loss_fn(weight), weight, create_graph=True)
        (hessian_v,) = torch.autograd.grad((gradient * v).sum(), weight)
        total += float((v * hessian_v).sum())
    return total / probes


def exact_hessian(loss_fn, weight: torch.Tensor) -> torch.Tensor:
    """The full Hessian of ``loss_fn`` at ``weight`` as an n × n matrix (n = weight.numel())."""
    n = weight.numel()
    return torch.autograd.functional.hessian(loss_fn, weight.detach()).reshape(n, n)


def _problems():
    """(name, loss_fn, weight, probes) of the graded problems; deterministic, float64."""
    gen = torch.Generator().manual_seed(0)
    w_diag = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    curvature = torch.linspace(-4.0, 0.5, 12, dtype=torch.float64).reshape(3, 4)  # the trace is negative

    def diagonal(w):
        return (curvature * w ** 2).sum() / 2 + (w ** 4).sum() / 12   # H = diag(c + w²)

    a = torch.randn(6, 6, generator=gen, dtype=torch.float64)
    coupling = a @ a.T / 3 + torch.ones(6, 6, dtype=torch.float64)   # dense, symmetric, 1ᵀA1 ≫ tr(A)
    w_quad = torch.randn(2, 3, generator=gen, dtype=torch.float64)

    def quadratic(w):
        flat = w.reshape(-1)
        return flat @ coupling @ flat / 2 + torch.sin(flat).sum() / 10

    inputs = torch.randn(32, 4, generator=gen, dtype=torch.float64)
    hidden = torch.randn(5, 4, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 3, (32,), generator=gen)
    w_head = torch.randn(3, 5, generator=gen, dtype=torch.float64)

    def classifier(w):
        return F.cross_entropy(torch.tanh(inputs @ hidden.T) @ w.T, labels)

    return (("a diagonal Hessian, 1 probe (every ±1 probe gives the exact trace)", diagonal, w_diag, 1),
            ("a dense quadratic, 300 probes", quadratic, w_quad, 300),
            ("a tiny classifier's last layer (cross-entropy), 300 probes", classifier, w_head, 300))


def _tolerance(hessian: torch.Tensor, probes: int) -> float:
    """5 standard errors of the Rademacher estimator: Var(vᵀHv) = 2 Σ_{i≠j} H_ij²."""
    off = hessian - torch.diag(torch.diag(hessian))
    return 5 * math.sqrt(2 * float((off ** 2).sum()) / probes) + 1e-9 * (1 + float(hessian.diagonal().abs().sum()))


def _call(student_fn, loss_fn, weight, probes, seed, case):
    generator = torch.Generator().manual_seed(seed)
    return to_number(call_student(student_fn, loss_fn, weight.clone().requires_grad_(True), probes, generator,
                                  case=case, todo=TODO), case)


@grader(SIGNATURE, TODO)
def check_hutchinson_trace(student_fn, seed: int = 0) -> ExerciseFeedback:
    """Grade ``student_fn(loss_fn, weight, probes, generator) -> trace estimate`` against the exact trace."""
    for name, loss_fn, weight, probes in _problems():
        hessian = exact_hessian(loss_fn, weight)
        exact, n = float(hessian.trace()), weight.numel()
        case = f"{name}; weight shape {tuple(weight.shape)}, exact trace {fmt(exact)}"
        got = _call(student_fn, loss_fn, weight, probes, seed, case)
        tolerance = _tolerance(hessian, probes)
        if abs(got - exact) <= tolerance:
            if _call(student_fn, loss_fn, weight, probes, seed, case) != got:
                raise Failed(f"The same seed gave a different estimate ({case}): draw the probes from the "
                             "generator you are given (torch.randint(..., generator=generator)).", case)
            continue
        near = lambda target: abs(got - target) <= tolerance  # noqa: E731
        if probes > 1 and abs(got / probes - exact) <= tolerance:
            hint = f"You return about {probes} × the trace: divide the sum of vᵀHv by the number of probes."
        elif abs(got * n - exact) <= tolerance:
            hint = (f"You divide by the {n} parameters: that is HASB's next step (the average HMT); return the "
                    "trace itself.")
        elif exact < 0 and near(-exact):
            hint = "Return the raw estimate (it may be negative); HASB takes |trace| later."
        elif math.isclose(got, float(hessian.sum()), rel_tol=1e-6):
            hint = "Your probe is all ones, so you get the sum of all Hessian entries: draw random signs ±1."
        elif probes == 1:
            hint = ("With a diagonal Hessian every ±1 probe gives the exact trace (v_i² = 1), so a right answer is "
                    "exact here. Are your probes ±1 (Rademacher signs, not torch.randn), and is each sample vᵀHv "
                    "with Hv = grad((g * v).sum(), weight), not g·v?")
        else:
            hint = ("Check the double backprop: g = grad(loss, w, create_graph=True), then Hv = grad((g * v).sum(), "
                    "w), and each sample is (v * Hv).sum().")
        within = "exactly" if probes == 1 else f"within ±{fmt(tolerance)} (5 standard errors)"
        raise Failed(f"For {name} you return {fmt(got)}; expected the exact trace {fmt(exact)} {within}. {hint}",
                     name, exact, got)
    return ExerciseFeedback(True, "Correct: your Hutchinson estimate is exact on a diagonal Hessian and within 5 "
                                  "standard errors of the exact trace on a dense quadratic and a tiny classifier, "
                                  "and the same seed repeats it.")
