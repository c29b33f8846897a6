"""SuperNet training of HASB (METHOD.md §6 step 3, paper Alg. A.3): per-layer stochastic bit replacement.

For each batch and each bit-width b (high → low) every layer defaults to b and, independently with
probability σ_e, is replaced by a sample from its roulette distribution (Hessian-aware, Alg. 1) or from the
uniform distribution (the no-Hessian baseline); weights and activations of a layer share the bit.
:class:`BitSampler` is what :class:`labkit.train.loop.JointTrainer` calls as ``bit_sampler``; its draws are a
function of (seed, epoch, batch, b) only, so a resumed run samples exactly what an uninterrupted one did.
"""
from __future__ import annotations

import torch

from labkit.hasb.roulette import sample_with_replacement_rate, sigma_schedule


class BitSampler:
    """``sampler(default_bits, epoch, batch) -> {layer: bits}`` with replacement probability σ_e."""

    def __init__(self, probabilities: dict[str, dict[int, float]], epochs: int, seed: int = 0, sigma: float = 0.5,
                 warmup: int = 10):
        self.probabilities = probabilities
        self.epochs, self.seed, self.sigma, self.warmup = epochs, seed, sigma, warmup

    def sigma_at(self, epoch: int) -> float:
        """σ_e of this epoch (0 during warm-up)."""
        return sigma_schedule(epoch, self.epochs, sigma=self.sigma, warmup=self.warmup)

    def __call__(self, default_bits: int, epoch: int, batch: int) -> dict[str, int]:
        generator = torch.Generator().manual_seed(((self.seed * 100_003 + epoch) * 1_000_003 + batch) * 101 + default_bits)
        return sample_with_replacement_rate(default_bits, self.probabilities, self.sigma_at(epoch), generator)
