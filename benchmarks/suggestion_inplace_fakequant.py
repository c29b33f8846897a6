"""A suggested speedup, measured: labkit's eager fake-quant kernels with in-place steps (fewer allocations).

``labkit/quant/lsq.py`` ``_forward_kernel`` / ``_backward_kernel`` allocate a fresh tensor for every step
(``x * s⁻¹``, ``round``, ``clamp``, ``where``, ``codes · 2^Δ``, ``−``, ``grad ·``). On activation-sized
tensors (MBs) each allocation is a trip to the OS allocator and a first-touch of new pages. The variants below
do the same arithmetic in place on intermediates the kernel itself created (never on ``x``, ``grad`` or the
scale), so the results are the same bit for bit. This script checks that (kernels and three joint training
steps), then times current vs in-place, interleaved: each kernel on a few tensor shapes, and one eager joint
{8,6,4,2} ResNet-20 step (``JointTrainer.train_step``) with ``labkit.quant.lsq._KERNELS`` swapped.

    python benchmarks/suggestion_inplace_fakequant.py [--rounds N] [--batch B]

Nothing in labkit is changed: the variants live here until the library adopts (or rejects) them.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import torch  # noqa: E402

import training  # noqa: E402
from foundation import interleaved_times, median_ms, paired_ratio  # noqa: E402
from labkit.config import hardware_summary  # noqa: E402
from labkit.quant import lsq  # noqa: E402
from labkit.quant.rounding import shift_round_float  # noqa: E402


def forward_inplace(x, scale, qmin: int, qmax: int, shift: int, rounding: str):
    """``_forward_kernel`` with round_/clamp_/mul_ on its own intermediate."""
    v = (x * scale.reciprocal()).round_()
    codes = shift_round_float(v, shift, rounding).clamp_(qmin, qmax)
    return codes.mul_(scale * (2.0 ** shift))


def backward_inplace(grad, x, scale, qmin: int, qmax: int, shift: int, rounding: str, grad_factor: float):
    """``_backward_kernel`` with masked_fill instead of where(…, 0.0) and the scale term built in place."""
    v = x * scale.reciprocal()
    unclipped = shift_round_float(torch.round(v), shift, rounding)
    codes = unclipped.clamp(qmin, qmax)
    outside = unclipped != codes
    grad_x = grad.masked_fill(outside, 0.0)
    per_element = codes.mul_(2.0 ** shift).sub_(v.masked_fill_(outside, 0.0)).mul_(grad)
    return grad_x, per_element.sum_to_size(scale.shape) * grad_factor


CURRENT = {"forward": lsq._forward_kernel, "backward": lsq._backward_kernel}
INPLACE = {"forward": forward_inplace, "backward": backward_inplace}


def kernel_rows(rounds: int) -> list[str]:
    generator = torch.Generator().manual_seed(0)
    cases = {  # (tensor, scale, signed): activations per tensor (unsigned), weights per channel
        "activation 128×16×32×32": (torch.rand(128, 16, 32, 32, generator=generator) * 2, torch.tensor(0.02), False),
        "activation 128×64×8×8": (torch.rand(128, 64, 8, 8, generator=generator) * 2, torch.tensor(0.02), False),
        "weight 64×64×3×3": (torch.randn(64, 64, 3, 3, generator=generator) * 0.05, torch.full((64, 1, 1, 1), 0.002), True),
    }
    lines = []
    for name, (x, scale, signed) in cases.items():
        grad = torch.randn(x.shape, generator=generator)
        for shift in (0, 4):
            qmin, qmax = (-128 >> shift, 127 >> shift) if signed else (0, 255 >> shift)
            args = (qmin, qmax, shift, "half_even")
            current_b, inplace_b = CURRENT["backward"](grad, x, scale, *args, 0.01), backward_inplace(grad, x, scale, *args, 0.01)
            assert torch.equal(current_b[0], inplace_b[0]) and torch.equal(current_b[1], inplace_b[1]), name
            assert torch.equal(CURRENT["forward"](x, scale, *args), forward_inplace(x, scale, *args)), name
            candidates = {"forward": lambda: CURRENT["forward"](x, scale, *args),
                          "forward_inplace": lambda: forward_inplace(x, scale, *args),
                          "backward": lambda: CURRENT["backward"](grad, x, scale, *args, 0.01),
                          "backward_inplace": lambda: backward_inplace(grad, x, scale, *args, 0.01)}
            for call in candidates.values():
                call(), call()
            samples = interleaved_times(candidates, rounds)
            lines.append(f"{name}, Δ={shift}: forward {median_ms(samples['forward']):.3f} → "
                         f"{median_ms(samples['forward_inplace']):.3f} ms "
                         f"(× {paired_ratio(samples['forward_inplace'], samples['forward']):.3f}), backward "
                         f"{median_ms(samples['backward']):.3f} → {median_ms(samples['backward_inplace']):.3f} ms "
                         f"(× {paired_ratio(samples['backward_inplace'], samples['backward']):.3f})")
    return lines


def joint_step_rows(rounds: int, batch: int) -> list[str]:
    data = training.RandomImages(batch)
    indices = torch.arange(batch)
    lsq.use_compile(False)
    with tempfile.TemporaryDirectory() as out_dir:
        results = []
        for kernels in (CURRENT, INPLACE):  # three steps each from the same seed: the same model after them?
            lsq._KERNELS.update(kernels)
            trainer = training.make_trainer((8, 6, 4, 2), out_dir, batch_size=batch)
            losses = [trainer.train_step(data.images, data.labels, indices, 0) for _ in range(3)]
            results.append((losses, [p.detach().clone() for p in trainer.model.parameters()]))
        identical = results[0][0] == results[1][0] and all(
            torch.equal(a, b) for a, b in zip(results[0][1], results[1][1]))

        def step(trainer, kernels):
            def call():
                lsq._KERNELS.update(kernels)
                trainer.train_step(data.images, data.labels, indices, 0)
            return call

        candidates = {"current": step(training.make_trainer((8, 6, 4, 2), out_dir, batch_size=batch), CURRENT),
                      "inplace": step(training.make_trainer((8, 6, 4, 2), out_dir, batch_size=batch), INPLACE),
                      "fp32": step(training.make_trainer(None, out_dir, batch_size=batch), CURRENT)}
        for call in candidates.values():
            call()
        samples = interleaved_times(candidates, rounds)
    lsq._KERNELS.update(CURRENT)
    return [f"3 joint steps bit-identical (losses and every parameter): {identical}",
            f"joint {{8,6,4,2}} step, ResNet-20, batch {batch}, eager: {median_ms(samples['current']):.0f} → "
            f"{median_ms(samples['inplace']):.0f} ms (× {paired_ratio(samples['inplace'], samples['current']):.3f}); "
            f"÷ 4 FP32 steps ({median_ms(samples['fp32']):.0f} ms): "
            f"{paired_ratio(samples['current'], samples['fp32']) / 4:.3f} → "
            f"{paired_ratio(samples['inplace'], samples['fp32']) / 4:.3f}"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6, help="rounds of the joint-step comparison")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"{hardware_summary()}; {torch.get_num_threads()} thread(s)")
    for line in kernel_rows(30) + joint_step_rows(args.rounds, args.batch):
        print(line, flush=True)


if __name__ == "__main__":
    main()
