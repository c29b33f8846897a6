"""Notebook 02's reading of the scale-gradient ratios in words, every number from the measurement (METHOD.md §3).

:func:`ratio_findings` turns the rows of :func:`labkit.gradient_study.scale_gradient_ratios` into the sentences
the notebook's text then explains, so nothing about the shipped model's gradients is typed by hand: the
lowest-bit ÷ highest-bit ratio of the weight-scale gradient in the lab's default set-up (``max`` init, ``lsq``
gradient, Eq. 14 with the chain factor 2^Δ), what the 3σ init (the authors' ``reference`` rule) changes, the
ratio in the authors' own set-up (3σ and their gradient, no chain factor), and in how many set-ups the lowest
bit has the largest gradient. A batch of test images gives one measurement, no interval: the sentences say
which batch.
"""
from __future__ import annotations

from labkit.errors import LabkitError


def _row(rows: list[dict], init: str, mode: str) -> dict | None:
    return next((r for r in rows if r["init"] == init and r["grad_mode"] == mode), None)


def ratio_findings(rows: list[dict], images: int | None = None) -> str:
    """Markdown bullets on :func:`labkit.gradient_study.scale_gradient_ratios` ``rows`` (measured on ``images``
    test images): the default set-up's ratio and chain factor, the 3σ init's clipped weights and how many times
    it multiplies the highest-bit gradient, the authors' set-up's ratio, and where the lowest bit is largest.
    Set-ups missing from ``rows`` are left out; ``rows`` without the default (``max``, ``lsq``) is an error."""
    default = _row(rows, "max", "lsq")
    if default is None:
        raise LabkitError("no (max, lsq) row: pass the rows of scale_gradient_ratios with its default inits and modes.")
    bits = sorted(default["grad"], reverse=True)
    high, low = bits[0], bits[-1]
    on = f" (one batch of {images:,} test images)" if images else ""
    lines = [f"* Default set-up (`max` init, `lsq` gradient){on}: the {low}-bit weight-scale gradient is "
             f"{default['ratio']:,.1f}× the {high}-bit one; the chain factor 2^Δ = {default['chain']:.0f} is part of "
             f"it, leaving {default['ratio_per_tied_scale']:,.2f}× per tied scale; "
             f"{100 * default['clipped_high']:.2f} % of the weights are clipped at {high} bits."]
    three_sigma = _row(rows, "reference", "lsq")
    if three_sigma is not None:
        lines.append(f"* 3σ init (`reference`, `lsq` gradient): {100 * three_sigma['clipped_high']:.2f} % of the "
                     f"weights are clipped at {high} bits, the {high}-bit gradient is "
                     f"{three_sigma['grad'][high] / default['grad'][high]:,.1f}× the `max` init's, and the ratio is "
                     f"{three_sigma['ratio']:,.1f}× ({three_sigma['ratio_per_tied_scale']:,.2f}× per tied scale).")
    authors = _row(rows, "reference", "reference")
    if authors is not None:
        lines.append(f"* The authors' own set-up (3σ init and their gradient, no chain factor): the {low}-bit "
                     f"gradient is {authors['ratio']:,.1f}× the {high}-bit one.")
    largest = sum(max(r["grad"], key=r["grad"].get) == low for r in rows)
    lines.append(f"* The {low}-bit weight-scale gradient is the largest of the {len(bits)} precisions in {largest} "
                 f"of the {len(rows)} set-ups.")
    return "\n".join(lines)


__all__ = ["ratio_findings"]
