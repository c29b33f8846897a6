"""Data loading off the critical path (issue 11, item 4): FP32 training steps through a loader ÷ the bare steps.

Chunks of an epoch -- ``chunk`` SGD steps of an FP32 ResNet-20 at batch 128, plain and under bf16 autocast --
are timed three ways, round-robin in this one process:

- ``bare``: the steps alone, on batches made beforehand (already normalised tensors in memory);
- ``whole_batches``: through ``make_loader(cifar10("train"), ...)``, the default: CIFAR-10 in memory, each batch
  built as one tensor (``labkit.cifar_memory``);
- ``per_image_jpeg``: through the loader the lab had before, ``make_loader(cifar10("train", in_memory=False),
  ..., whole_batches=False)``: an ImageFolder that decodes and augments every JPEG in ``default_workers()``
  worker processes (their start-up, once an epoch, is not timed).

Each ratio is the median over rounds of (chunk through the loader ÷ bare chunk) timed in the same round. Needs the
CIFAR-10 ImageFolder copy in ``$LABKIT_DATA``.
"""
from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F

from labkit import data
from labkit.models import build_model

BATCH = 128


class Steps:
    """SGD steps of one FP32 ResNet-20 (momentum 0.9, lr 0.05), plain or under bf16 autocast."""

    def __init__(self, bf16: bool, seed: int = 0):
        torch.manual_seed(seed)
        self.model = build_model("resnet20").train()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.05, momentum=0.9)
        self.bf16 = bf16

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            logits = self.model(images).float()
        F.cross_entropy(logits, labels).backward()
        self.optimizer.step()


def _endless(make_loader_for_epoch):
    """Batches of epoch 0, 1, 2, ... from ``make_loader_for_epoch(epoch)``, one after the other."""
    epoch = 0
    while True:
        yield from make_loader_for_epoch(epoch)
        epoch += 1


def measure(chunk: int = 5, rounds: int = 12, batch_size: int = BATCH, per_image: bool = True) -> dict:
    """Chunk seconds and the per-round ratios to the bare steps, for plain FP32 and bf16 autocast.

    Each round times ``chunk`` steps from every source back to back (order reversed every other round); the
    loaders keep their place between rounds, as in an epoch, so only the steady state is timed (the per-image
    loader's worker start-up, once per epoch, is left out).
    """
    start = time.perf_counter()
    train = data.cifar10("train")
    load_s = time.perf_counter() - start
    folder = data.cifar10("train", in_memory=False) if per_image else None
    premade = [tuple(t.clone() for t in batch) for _, batch in
               zip(range(chunk), data.make_loader(train, batch_size, train=True, seed=1))]
    streams = {"whole_batches": lambda: _endless(lambda e: data.make_loader(train, batch_size, True, seed=0, epoch=e))}
    if per_image:
        streams["per_image_jpeg"] = lambda: _endless(lambda e: data.make_loader(
            folder, batch_size, True, seed=0, epoch=e, whole_batches=False))

    loader_only_ms = {}  # the loader alone, no training step beside it
    for name, stream in streams.items():
        batches = stream()
        next(batches)
        begin = time.perf_counter()
        for _ in range(20):
            next(batches)
        loader_only_ms[name] = round((time.perf_counter() - begin) / 20 * 1e3, 2)

    results = {"train_set": type(train).__name__, "cifar10_train_load_s": round(load_s, 2),
               "workers_per_image": data.default_workers(), "chunk_steps": chunk, "batch": batch_size,
               "rounds": rounds, "loader_only_ms_per_batch": loader_only_ms}
    for mode in ("fp32", "bf16_autocast"):
        trainer = Steps(bf16=mode == "bf16_autocast")
        iterators = {name: stream() for name, stream in streams.items()}

        def through(name):
            def run():
                for _, (images, labels) in zip(range(chunk), iterators[name]):
                    trainer.step(images, labels)
            return run

        def bare():
            for images, labels in premade:
                trainer.step(images, labels)

        sources = {"bare": bare, **{name: through(name) for name in streams}}
        for run in sources.values():  # warm-up: allocator, oneDNN primitives, worker start
            run()
        times = {name: [] for name in sources}
        names = list(sources)
        for round_index in range(rounds):
            for name in names if round_index % 2 == 0 else names[::-1]:
                begin = time.perf_counter()
                sources[name]()
                times[name].append(time.perf_counter() - begin)
        entry = {"chunk_s": {name: round(statistics.median(t), 3) for name, t in times.items()},
                 "steps_per_s": {name: round(chunk / statistics.median(t), 2) for name, t in times.items()}}
        bare_step_ms = statistics.median(times["bare"]) / chunk * 1e3
        for name in names[1:]:
            entry[f"{name}_vs_bare"] = round(statistics.median(a / b for a, b in zip(times[name], times["bare"])), 3)
            # the same ratio estimated from the loader's own cost per batch, less exposed to background load
            entry[f"{name}_vs_bare_from_loader_only"] = round(1 + loader_only_ms[name] / bare_step_ms, 3)
        results[mode] = entry
        del iterators
    return results
