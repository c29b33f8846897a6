"""HASB — Hessian-Aware Stochastic Bit-switching for one-shot mixed precision (METHOD.md §6, paper Alg. 1, 2, A.3)."""
from labkit.hasb.hessian import (
    HMTDistribution,
    TraceEstimate,
    average_traces,
    default_layers,
    hessian_trace_estimates,
    hessian_traces,
    hmt_distribution,
)
from labkit.hasb.roulette import (
    expected_average_bits,
    roulette_probabilities,
    sample_bits,
    sample_with_replacement_rate,
    sensitive_layers,
    sensitivity_threshold,
    sigma_schedule,
    uniform_probabilities,
)

__all__ = [
    "HMTDistribution",
    "TraceEstimate",
    "average_traces",
    "default_layers",
    "expected_average_bits",
    "hessian_trace_estimates",
    "hessian_traces",
    "hmt_distribution",
    "roulette_probabilities",
    "sample_bits",
    "sample_with_replacement_rate",
    "sensitive_layers",
    "sensitivity_threshold",
    "sigma_schedule",
    "uniform_probabilities",
]
