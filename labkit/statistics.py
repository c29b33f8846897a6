"""Paired differences over training seeds, with a 95 % t-interval (issue 12 item 2).

Two suite rows trained with the same seeds share everything a seed decides (the data order, the augmentation,
the random parts of the initialisation), so their difference is measured seed by seed: ``d_k = a_k − b_k`` for
every seed k both rows have. Over the n paired seeds the mean difference is ``d̄``, its sample standard
deviation ``s_d`` (n − 1 in the denominator) and the 95 % interval ``d̄ ± t_{0.975, n−1} · s_d / √n`` — the
interval of the paired t-test (``scipy.stats.ttest_rel``). A difference is called *real* only when that
interval excludes zero *and* rests on at least :data:`MIN_SEEDS` (3) paired seeds with some spread between
them; otherwise it is *not resolved at this budget*. (Two seeds give a t-interval, but one so wide or so
fragile that the lab does not call anything on it; a zero spread gives a zero-width interval that means nothing.)
The interval covers seed-to-seed variation only; each accuracy's own test-set sampling error (binomial, about
±0.9 points for 10,000 images at 70 %) is shared by paired rows evaluated on the same images only in part, and
no correction is made for the many comparisons a results page shows — read a lone "real" near zero with care.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from labkit.errors import LabkitError

#: What a sentence may say about a difference whose interval contains zero (or that has fewer than 2 seeds).
NOT_RESOLVED = "not resolved at this budget"
REAL = "real"
#: Fewest paired seeds on which a difference may be called real.
MIN_SEEDS = 3


@dataclass(frozen=True)
class PairedDifference:
    """``mean`` = mean of a_k − b_k over the ``n`` paired seeds, ``sd`` their sample sd, ``low``/``high`` the
    ``confidence`` t-interval of the mean (``None`` for n < 2), ``seeds`` the seeds that were paired."""

    mean: float
    sd: float | None
    n: int
    low: float | None
    high: float | None
    seeds: tuple = ()
    confidence: float = 0.95

    @property
    def resolved(self) -> bool:
        """True when the interval rests on ≥ MIN_SEEDS paired seeds with non-zero spread and excludes zero."""
        if self.low is None or self.n < MIN_SEEDS or not self.sd:
            return False
        return self.low > 0 or self.high < 0

    def verdict(self) -> str:
        """``"real"`` when the interval excludes zero, else ``"not resolved at this budget"``."""
        return verdict(self)

    def interval_text(self, digits: int = 2) -> str:
        """``"+1.23 [+0.40, +2.06]"`` (with n < 2: ``"+1.23 (1 seed, no interval)"``)."""
        if self.low is None:
            return f"{self.mean:+.{digits}f} ({self.n} seed, no interval)"
        return f"{self.mean:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}]"


def _by_seed(values, name: str) -> dict:
    if isinstance(values, dict):
        return {key: float(value) for key, value in values.items()}
    try:
        return {index: float(value) for index, value in enumerate(values)}
    except TypeError:
        raise LabkitError(f"{name} must be {{seed: value}} or a list of values in seed order, not "
                          f"{type(values).__name__}.") from None


def paired_difference(a_by_seed, b_by_seed, confidence: float = 0.95) -> PairedDifference:
    """The paired difference a − b over the seeds both have (dicts ``{seed: value}``, or lists in seed order).

    Returns the mean difference, its sample sd, n, and the ``confidence`` t-interval (scipy.stats.t with n − 1
    degrees of freedom); with one paired seed the interval (and sd) is ``None``.
    """
    if not 0 < confidence < 1:
        raise LabkitError(f"confidence={confidence!r} must lie strictly between 0 and 1 (e.g. 0.95).")
    a, b = _by_seed(a_by_seed, "a_by_seed"), _by_seed(b_by_seed, "b_by_seed")
    seeds = tuple(sorted(set(a) & set(b), key=str))
    if not seeds:
        raise LabkitError(f"no seed is in both: a has {sorted(a, key=str)}, b has {sorted(b, key=str)}; a paired "
                          "difference needs the same seeds of both rows.")
    differences = [a[s] - b[s] for s in seeds]
    n = len(differences)
    mean = sum(differences) / n
    if n < 2:
        return PairedDifference(mean, None, n, None, None, seeds, confidence)
    from scipy import stats

    sd = math.sqrt(sum((d - mean) ** 2 for d in differences) / (n - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    return PairedDifference(mean, sd, n, mean - half, mean + half, seeds, confidence)


def verdict(difference: PairedDifference) -> str:
    """``"real"`` only when the interval excludes zero; otherwise (or with n < 2) ``"not resolved at this budget"``."""
    return REAL if difference.resolved else NOT_RESOLVED
