"""Hessian-aware roulette: per-layer bit sampling probabilities and the SuperNet's bit draws (paper Alg. 1).

METHOD.md §6 steps 2–3. A layer whose average HMT t_l is at or above the threshold t_m (the paper: the
mean over layers) is *sensitive* and samples bit b_i of the candidates with p_i = b_i / Σ_j b_j
({8,6,4,2} → 40/30/20/10 %), so it leans to high bits; every other layer samples uniformly. During
SuperNet training every layer defaults to the current bit b, and each layer independently, with
probability σ_e, is replaced by a roulette draw (inverse-CDF sampling).

Probabilities are plain dicts ``{layer: {bit: p}}`` (bits in the order of ``candidates``) so they can be
printed, plotted and saved as JSON. Draws use a ``torch.Generator``: the same seed gives the same bits.
"""
from __future__ import annotations

from typing import Iterable

import torch

RULES = ("mean", "quantile", "top_k")


def sensitivity_threshold(averages: dict[str, float], rule: str = "mean", q: float = 0.5,
                          k: int | None = None) -> float:
    """The average HMT at and above which a layer is sensitive (METHOD.md §6 step 2).

    ``rule="mean"`` — the paper's t_m, the mean over layers; ``"quantile"`` — the ``q`` quantile (linear
    interpolation, as ``torch.quantile``; q = 0.5 is the median); ``"top_k"`` — the k-th largest value, so the
    ``k`` most sensitive layers (more on ties) are sensitive.
    """
    values = [float(v) for v in averages.values()]
    if not values:
        raise ValueError("no layers: averages is empty")
    if rule == "mean":
        return sum(values) / len(values)
    if rule == "quantile":
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"q must be in [0, 1], got {q}")
        return float(torch.tensor(values, dtype=torch.float64).quantile(q))
    if rule == "top_k":
        if k is None or not 1 <= k <= len(values):
            raise ValueError(f"rule='top_k' needs 1 ≤ k ≤ {len(values)} (the number of layers), got k={k}")
        return sorted(values, reverse=True)[k - 1]
    raise ValueError(f"rule={rule!r} is unknown; use one of {RULES}")


def sensitive_layers(averages: dict[str, float], rule: str = "mean", q: float = 0.5,
                     k: int | None = None) -> list[str]:
    """The layers whose average HMT is at or above :func:`sensitivity_threshold`, in input order."""
    threshold = sensitivity_threshold(averages, rule, q, k)
    return [name for name, value in averages.items() if value >= threshold]


def _check_candidates(candidates) -> tuple[int, ...]:
    bits = tuple(int(b) for b in candidates)
    if not bits or any(b < 1 for b in bits) or len(set(bits)) != len(bits):
        raise ValueError(f"candidates must be distinct positive bit-widths, got {tuple(candidates)}")
    return bits


def uniform_probabilities(layers: Iterable[str], candidates=(8, 6, 4, 2)) -> dict[str, dict[int, float]]:
    """Every layer samples every candidate bit equally (the no-Hessian baseline, as Bit-Mixer)."""
    bits = _check_candidates(candidates)
    return {name: {b: 1.0 / len(bits) for b in bits} for name in layers}


def roulette_probabilities(averages: dict[str, float], candidates=(8, 6, 4, 2), rule: str = "mean", q: float = 0.5,
                           k: int | None = None) -> dict[str, dict[int, float]]:
    """``{layer: {bit: p}}``: sensitive layers p_i = b_i / Σ b_j, the others uniform (paper Alg. 1).

    ``averages`` is ``{layer: average HMT}`` (:func:`labkit.hasb.hessian.hessian_traces`); ``rule``, ``q`` and
    ``k`` choose the threshold (:func:`sensitivity_threshold`; the paper: the mean).
    """
    bits = _check_candidates(candidates)
    sensitive = set(sensitive_layers(averages, rule, q, k))
    weighted = {b: b / sum(bits) for b in bits}
    uniform = {b: 1.0 / len(bits) for b in bits}
    return {name: dict(weighted if name in sensitive else uniform) for name in averages}


def _inverse_cdf(probabilities: dict[int, float], u: float) -> int:
    """The first bit whose cumulative probability exceeds ``u`` ∈ [0, 1)."""
    total = sum(probabilities.values())
    cumulative = 0.0
    for bit, p in probabilities.items():
        cumulative += p / total
        if u < cumulative:
            return bit
    return next(bit for bit, p in reversed(probabilities.items()) if p > 0)  # u ≈ 1 and rounding


def sample_bits(probabilities: dict[str, dict[int, float]],
                generator: torch.Generator | None = None) -> dict[str, int]:
    """One roulette draw per layer by inverse-CDF sampling (paper Alg. 1); one uniform per layer, in order."""
    uniforms = torch.rand(len(probabilities), generator=generator, dtype=torch.float64).tolist()
    return {name: _inverse_cdf(p, u) for (name, p), u in zip(probabilities.items(), uniforms)}


def sample_with_replacement_rate(default_bits, probabilities: dict[str, dict[int, float]], sigma: float,
                                 generator: torch.Generator | None = None) -> dict[str, int]:
    """The SuperNet's bits for one step (METHOD.md §6 step 3): every layer at ``default_bits`` (an int, or
    ``{layer: bits}``), each layer independently replaced, with probability ``sigma``, by a roulette draw.

    A replacement may draw the default bit again, so a layer *changes* bit with probability
    σ · (1 − p(default)). Each call draws one uniform per layer for the replacement, then :func:`sample_bits`.
    """
    if not 0.0 <= sigma <= 1.0:
        raise ValueError(f"sigma must be in [0, 1], got {sigma}")
    replace = (torch.rand(len(probabilities), generator=generator, dtype=torch.float64) < sigma).tolist()
    drawn = sample_bits(probabilities, generator)
    defaults = default_bits if isinstance(default_bits, dict) else dict.fromkeys(probabilities, int(default_bits))
    return {name: drawn[name] if swap else defaults[name] for name, swap in zip(probabilities, replace)}


def sigma_schedule(epoch: int, epochs: int, sigma: float = 0.5, warmup: int = 10, count: str = "after_warmup") -> float:
    """The replacement rate σ_e of SuperNet epoch ``epoch`` (0-based, of ``epochs`` in all, warm-up included).

    METHOD.md §6 step 3 [ref-code]: σ = 0 for the first ``warmup`` epochs, then σ_e = σ·(e+1)/E. Our reading
    (``count="after_warmup"``, default): e = epoch − warmup counts the epochs after warm-up from 0 and
    E = epochs − warmup is how many there are, so σ ramps from σ/E to exactly σ at the last epoch.
    ``count="total"`` reads e = epoch and E = epochs (the whole run), so σ jumps to σ·(warmup+1)/E when
    warm-up ends; the reference code may do either.
    """
    if not 0 <= warmup < epochs:
        raise ValueError(f"need 0 ≤ warmup < epochs, got warmup={warmup}, epochs={epochs}")
    if not 0 <= epoch < epochs:
        raise ValueError(f"epoch must be in [0, {epochs}), got {epoch}")
    if epoch < warmup:
        return 0.0
    if count == "after_warmup":
        return sigma * (epoch - warmup + 1) / (epochs - warmup)
    if count == "total":
        return sigma * (epoch + 1) / epochs
    raise ValueError(f"count={count!r} is unknown; use 'after_warmup' or 'total'")


def expected_average_bits(probabilities: dict[str, dict[int, float]], default_bits, sigma: float) -> float:
    """Mean over layers of the expected bit-width of :func:`sample_with_replacement_rate`:
    (1 − σ)·default + σ·Σ_b p_b·b.

    Why low averages are rare (METHOD.md §8): with {8,6,4,2} a roulette draw averages Σ b²/Σ b = 6 bits for
    a sensitive layer and 5 for a uniform one, so the replaced layers pull every pass toward 5–6 bits; at the
    final σ = 0.5 even the 2-bit pass averages 3.5 (all uniform) to 4 (all sensitive) bits.
    """
    defaults = default_bits if isinstance(default_bits, dict) else dict.fromkeys(probabilities, default_bits)
    expected = []
    for name, p in probabilities.items():
        total = sum(p.values())
        roulette = sum(b * w for b, w in p.items()) / total
        expected.append((1.0 - sigma) * defaults[name] + sigma * roulette)
    if not expected:
        raise ValueError("no layers: probabilities is empty")
    return sum(expected) / len(expected)
