"""Exercise: top-1 accuracy against ImageNet-1K labels, over all 1000 classes or restricted to a subset.

Imagenette's images carry their real ImageNet-1K class index (0…999). A 1000-class model is scored as on
ImageNet by taking the arg-max over **all** 1000 logits; the easier "10-way" score takes the arg-max over the 10
Imagenette classes only. Notebook 05 reports the 1000-way score; this exercise makes the difference concrete.

``student_fn(logits, labels, allowed=None) -> float`` returns the top-1 accuracy in percent; ``allowed`` is
``None`` (all classes) or a list of class indices the prediction is restricted to.
"""
from __future__ import annotations

import math

import torch

from labkit.exercises.grading import ExerciseFeedback, Failed, call_student, fmt, grader, to_number

SIGNATURE = "my_top1(logits, labels, allowed=None) -> float (percent)"
TODO = ("Take the arg-max of the logits over all classes (or only over the `allowed` class indices), compare with "
        "the labels, return the share of matches in percent.")


def reference_top1(logits: torch.Tensor, labels: torch.Tensor, allowed=None) -> float:
    """Top-1 (%) of ``logits`` [N, C] against ``labels`` (class indices), optionally restricted to ``allowed``."""
    if allowed is None:
        predicted = logits.argmax(dim=1)
    else:
        allowed = torch.as_tensor(list(allowed), dtype=torch.long)
        predicted = allowed[logits[:, allowed].argmax(dim=1)]
    return 100.0 * float((predicted == labels).float().mean())


def _cases():
    generator = torch.Generator().manual_seed(0)
    imagenette = [0, 217, 482, 491, 497, 566, 569, 571, 574, 701]  # the 10 Imagenette classes' 1K indices
    logits = torch.randn(64, 1000, generator=generator)
    labels = torch.tensor(imagenette)[torch.randint(0, 10, (64,), generator=generator)]
    # Make about half the images right among the 10 classes but beaten by an outside class over all 1000.
    for i in range(0, 64, 2):
        logits[i, labels[i]] += 6.0
        logits[i, 900 + i % 50] += 12.0
    yield "64 images, 1000-way (allowed=None)", logits, labels, None
    yield "the same images, restricted to the 10 Imagenette classes", logits, labels, imagenette
    tiny = torch.tensor([[0.1, 2.0, 0.3], [3.0, 0.2, 0.1], [0.0, 0.1, 5.0], [1.0, 4.0, 0.0]])
    yield "4 images, 3 classes", tiny, torch.tensor([1, 0, 1, 2]), None
    yield "4 images, restricted to classes [0, 2]", tiny, torch.tensor([2, 0, 2, 2]), [0, 2]


@grader(SIGNATURE, TODO)
def check_imagenet_top1(student_fn) -> ExerciseFeedback:
    """Grade ``student_fn(logits, labels, allowed=None)`` against :func:`reference_top1` on four cases."""
    for case, logits, labels, allowed in _cases():
        expected = reference_top1(logits, labels, allowed)
        got = to_number(call_student(student_fn, logits.clone(), labels.clone(), allowed, case=case, todo=TODO), case)
        if math.isclose(got, expected, abs_tol=1e-6):
            continue
        hint = ""
        if allowed is not None and math.isclose(got, reference_top1(logits, labels, None), abs_tol=1e-6):
            hint = " You ignore `allowed`: restrict the arg-max to those columns, then map back to their class indices."
        elif allowed is not None and math.isclose(
                got, 100.0 * float((logits[:, allowed].argmax(1) == labels).float().mean()), abs_tol=1e-6):
            hint = (" You compare the position within `allowed` with the label: map it back with "
                    "allowed[position] — labels are ImageNet-1K indices.")
        elif math.isclose(got, expected / 100.0, abs_tol=1e-9):
            hint = " Return a percentage (0–100), not a fraction."
        raise Failed(f"{case}: you return {fmt(got)} %, expected {fmt(expected)} %.{hint}", case, expected, got)
    cases = list(_cases())
    wide, narrow = reference_top1(*cases[0][1:]), reference_top1(*cases[1][1:])
    return ExerciseFeedback(True, f"Correct: 1000-way and restricted top-1 both match on all {len(cases)} cases. On the "
                                  f"same 64 logits the 1000-way score is {wide:.1f} % and the 10-way score {narrow:.1f} %: "
                                  "restricting the classes flatters a model — notebook 05 reports the 1000-way score.")
