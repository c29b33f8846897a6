"""Which arithmetic a run uses: bf16 autocast and channels_last, chosen for the device when a recipe says "auto".

``TrainConfig.amp_bf16`` / ``channels_last`` are ``True``, ``False`` or ``None`` (auto). Auto turns bf16 autocast
on where the device has native bf16 arithmetic — a CUDA GPU with bf16 support, or a CPU with the AVX-512 BF16 or
AMX-BF16 instructions — and off elsewhere, because emulated bf16 is slower than fp32. Auto leaves channels_last
off: under bf16 it made both steps slower on the 2-core AMD EPYC (``JointTrainer.train_step``, ResNet-20 batch
128, 1 thread, medians of 5 interleaved rounds: joint {8,6,4,2} 1.55 s with it vs 1.29 s without, FP32 0.235 vs
0.188 s); set it to true where a measurement says otherwise. The fake-quant arithmetic itself stays in fp32 under autocast (``labkit.quant.lsq``), but its
output enters each convolution in bf16, so evaluation always runs in fp32 (``JointTrainer.evaluate``).

Measured on a 2-core AMD EPYC with AVX-512 BF16 (``benchmarks/run.py --only speed_joint``, 1 thread): an FP32
ResNet-20 step about 2× faster with bf16 (``benchmarks/results.json``); whether accuracy is unchanged is
the suite's paired row ``8642-alrs-a2-bf16`` against ``8642-alrs-a2`` (docs/RESULTS.md).
"""
from __future__ import annotations

from pathlib import Path

import torch

_CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The CPU feature flags of the first processor in ``/proc/cpuinfo`` (empty where there is none)."""
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("flags") and ":" in line:
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def native_bf16(device: torch.device, flags: set[str] | None = None) -> bool:
    """True where ``device`` computes bf16 natively (CUDA bf16 support, or a CPU with AVX-512 BF16 / AMX-BF16)."""
    device = torch.device(device)
    if device.type == "cuda":
        # including_emulation=False: a pre-Ampere GPU (V100, T4) emulates bf16, slower than fp32
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False))
    if device.type == "cpu":
        return any(flag in (cpu_flags() if flags is None else flags) for flag in _CPU_BF16_FLAGS)
    return False


def resolve_arithmetic(amp_bf16: bool | None, channels_last: bool | None, device, flags: set[str] | None = None
                       ) -> tuple[bool, bool]:
    """(bf16 autocast, channels_last) of a run: a setting given as True/False is kept; ``None`` is bf16 where
    ``device`` computes it natively, and channels_last off (module docstring)."""
    amp = native_bf16(device, flags) if amp_bf16 is None else bool(amp_bf16)
    last = False if channels_last is None else bool(channels_last)
    return amp, last


__all__ = ["cpu_flags", "native_bf16", "resolve_arithmetic"]
