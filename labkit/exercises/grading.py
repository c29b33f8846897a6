"""What every grader shares: the feedback object, the callable check, and calling student code safely.

A grader never raises on a wrong answer: it returns an :class:`ExerciseFeedback` whose message names the first
failing case, the expected value and the one the student's function gave. Graders are written as plain
functions that raise :class:`Failed` at the first problem; the :func:`grader` decorator turns that into
feedback, checks that a callable was passed, and leaves bugs in the grader itself alone (they still raise).
"""
from __future__ import annotations

import functools
import math
import traceback

import torch

from labkit.rounding_study import ExerciseFeedback

__all__ = ["ExerciseFeedback", "Failed", "call_student", "fmt", "grader", "not_callable", "to_number", "to_tensor"]


class Failed(Exception):
    """Raised inside a grader to stop at the first problem; carries the feedback to return."""

    def __init__(self, message: str, case: str | None = None, expected=None, got=None):
        super().__init__(message)
        self.feedback = ExerciseFeedback(False, message, case, expected, got)


def fmt(value) -> str:
    """A short, readable number (or whatever else, via ``repr``)."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, int) or float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.6g}"


def not_callable(student_fn, signature: str, check_name: str) -> ExerciseFeedback:
    """The feedback for a ``student_fn`` that is not a function (often: the result of calling it)."""
    what = "None" if student_fn is None else f"{type(student_fn).__name__} {fmt(student_fn)}"
    return ExerciseFeedback(False, f"Pass your function itself, not {what} (did you call it? pass its name without "
                                   f"parentheses): write {signature} and call {check_name}(your_function).")


def grader(signature: str, todo: str):
    """Decorate ``check(student_fn, ...)``: validate the callable, turn :class:`Failed` into feedback.

    ``signature`` is what the student should write (``"my_fn(x, scale, qmin, qmax) -> Tensor"``); ``todo``
    is the one-line task shown when the function still raises ``NotImplementedError``.
    """
    def decorate(check):
        @functools.wraps(check)
        def wrapped(student_fn, *args, **kwargs):
            if not callable(student_fn):
                return not_callable(student_fn, signature, check.__name__)
            try:
                return check(student_fn, *args, **kwargs)
            except Failed as failure:
                return failure.feedback
        wrapped.signature, wrapped.todo = signature, todo
        return wrapped
    return decorate


def _student_line(error: BaseException) -> str:
    """`` at line N: `code` `` of the innermost frame outside labkit and torch (the student's), or ``""``."""
    for frame in reversed(traceback.extract_tb(error.__traceback__)):
        path = frame.filename.replace("\\", "/")
        if "/labkit/" not in path and "/torch/" not in path:
            code = (frame.line or "").strip()
            return f" at line {frame.lineno}" + (f": `{code}`" if code else "")
    return ""


def call_student(student_fn, *args, case: str, todo: str = ""):
    """``student_fn(*args)``; any exception it raises becomes :class:`Failed` naming ``case``."""
    try:
        return student_fn(*args)
    except NotImplementedError:
        raise Failed(f"Not implemented yet: replace `raise NotImplementedError()` with your code. {todo}".strip(),
                     case) from None
    except Exception as error:  # the student's code may fail in any way: report it, never crash the notebook
        message = f"Your function raised {type(error).__name__}: {error}{_student_line(error)} (case: {case})."
        if "does not require grad" in str(error) or "second time" in str(error):
            message += (" To differentiate a gradient again, build it with "
                        "torch.autograd.grad(loss, weight, create_graph=True).")
        raise Failed(message, case) from None


def to_tensor(result, case: str, what: str = "a tensor") -> torch.Tensor:
    """The student's result as a tensor, or :class:`Failed` saying what came back instead."""
    if result is None:
        raise Failed(f"Your function returned None (case: {case}): did you forget `return`?", case)
    try:
        return torch.as_tensor(result).detach()
    except Exception:
        raise Failed(f"Your function returned {type(result).__name__}, not {what} (case: {case}).", case) from None


def to_number(result, case: str) -> float:
    """The student's result as one finite float, or :class:`Failed`."""
    if result is None:
        raise Failed(f"Your function returned None (case: {case}): did you forget `return`?", case)
    if isinstance(result, torch.Tensor):
        if result.numel() != 1:
            raise Failed(f"Return one number, not a tensor of shape {tuple(result.shape)} (case: {case}).", case,
                         got=result)
        result = result.detach().item()
    try:
        number = float(result)
    except (TypeError, ValueError):
        raise Failed(f"Your function returned {type(result).__name__} {result!r}; return one number "
                     f"(case: {case}).", case, got=result) from None
    if not math.isfinite(number):
        raise Failed(f"Your function returned {number} (case: {case}); expected a finite number.", case,
                     got=number)
    return number
