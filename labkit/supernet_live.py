"""A few HASB SuperNet steps on CIFAR-10 to watch (notebook 04, METHOD.md §6 step 3, paper Alg. A.3).

:func:`live_supernet_trainer` builds the :class:`~labkit.train.loop.JointTrainer` of recipe
``cifar10-resnet20-hasb`` at a budget small enough to follow live: it starts, as Alg. A.3 does, from the jointly
trained {8,6,4,2} ResNet-20 (the shipped ``cifar10-resnet20``, its float weights trained from the stored INT8
codes × scale), turns its batch norms into Transitional BN (:func:`labkit.convert.to_supernet`, one BN per
(previous-layer bit, current-layer bit) pair, the predecessor found in the data flow) and samples the bits of every
layer with the Hessian-aware roulette of the traces you pass (:class:`labkit.hasb.supernet.BitSampler`). For each
batch and each default bit-width b (8 → 2) every layer is at b and, independently with probability σ, replaced by
a roulette draw; then forward, backward and one Adam step, at the recipe's laptop fine-tune setting: λ/10, each
layer's scales at λ·η_b for the bit it was drawn at (``supernet_alrs="sampled_bit"``; Alg. A.3's one λ wrecked the
2-bit model at this budget, :mod:`labkit.train.recipes`).

The run is exactly the recipe's except for its size: ``steps`` batches of ``batch_size`` augmented training images,
one epoch with no warm-up (so σ_e = σ from the first step, and the draws show), then the four uniform bit-widths
evaluated on ``eval_images`` test images. The notebook hands the trainer to
:func:`labkit.live_training.train_live`, which shows the bits drawn per layer. Nothing here changes the recipe or
the trainer.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from labkit.errors import LabkitError
from labkit.train.loop import JointTrainer
from labkit.train.recipes import recipe_config
from labkit.train.run import build_datasets

RECIPE = "cifar10-resnet20-hasb"
START_FROM = "cifar10-resnet20"  # the shipped jointly trained {8,6,4,2} model, the SuperNet's starting point


def live_supernet_budget(settings: dict) -> dict:
    """The live run's sizes from notebook 04's profile settings (:mod:`labkit.notebook_settings`)."""
    keys = ("live_steps", "live_batch_size", "live_eval_images")
    missing = [k for k in keys if k not in settings]
    if missing:
        raise LabkitError(f"the settings have no {missing}; pass notebook_settings('04') (they come from there).")
    return {"steps": settings["live_steps"], "batch_size": settings["live_batch_size"],
            "eval_images": settings["live_eval_images"]}


def supernet_start(name: str = START_FROM) -> torch.nn.Module:
    """The shipped joint model ``name`` as a SuperNet ready to train: float weights = stored codes × scale,
    Transitional BN initialised from its per-bit BN (:func:`labkit.convert.to_supernet`), in train mode."""
    from labkit.checkpoints import load_shipped
    from labkit.convert import quantized_layers, to_supernet

    model = load_shipped(name)
    if not quantized_layers(model):
        raise LabkitError(f"shipped checkpoint {name!r} is not a multi-precision model; a SuperNet starts from one "
                          "(e.g. 'cifar10-resnet20').")
    for layer in quantized_layers(model).values():  # train the float weights, as labkit.train.run.build_supernet
        layer.weight_quantizer.stored_codes = None
    return to_supernet(model.train())


def live_supernet_trainer(traces: dict, steps: int, batch_size: int, eval_images: int, *, rule: str = "mean",
                          sigma: float = 0.5, seed: int = 0, out_dir=None, profile: str = "laptop",
                          data_root=None) -> JointTrainer:
    """The JointTrainer of ``steps`` HASB SuperNet steps on CIFAR-10 (recipe ``cifar10-resnet20-hasb``).

    Args:
        traces: ``{layer: average HMT}`` (:func:`labkit.hasb.hessian_traces`); layers at or above the threshold of
            ``rule`` (:func:`labkit.hasb.roulette_probabilities`) draw bit b with probability b / Σ b, the others
            uniformly. Every quantized layer of the model needs a trace.
        steps: batches to train; each is one forward/backward and one Adam step per bit-width, 8 → 2.
        batch_size: training images per batch.
        eval_images: test images the four uniform bit-widths are evaluated on at the end (``None``: all 10,000).
        sigma: the replacement rate σ (the recipe's 0.5), held from the first step (one epoch, no warm-up).
        out_dir: where the trainer writes its checkpoint and log (a new temporary folder by default).
    """
    from labkit.convert import quantized_layers
    from labkit.hasb import roulette_probabilities
    from labkit.hasb.supernet import BitSampler

    for name, value in (("steps", steps), ("batch_size", batch_size), ("eval_images", eval_images)):
        if name == "eval_images" and value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise LabkitError(f"{name}={value!r} must be a whole number >= 1.")
    if not 0.0 <= float(sigma) <= 1.0:
        raise LabkitError(f"sigma={sigma!r} is a probability: choose it in [0, 1] (the recipe uses 0.5).")
    config = recipe_config(RECIPE, profile, {"epochs": 1, "sigma_warmup": 0, "sigma": float(sigma),
                                             "train_subset": steps * batch_size, "batch_size": batch_size,
                                             "eval_subset": eval_images, "seed": seed, "checkpoint_every": 0})
    torch.manual_seed(seed)  # as labkit.train.run.train does before it builds the data and the model
    model = supernet_start()
    layers = list(quantized_layers(model))
    missing = [name for name in layers if name not in traces]
    if missing:
        raise LabkitError(f"traces has no value for {missing}; pass hessian_traces(...) of the FP32 model, whose "
                          "layers are the SuperNet's quantized layers.")
    probabilities = roulette_probabilities({name: traces[name] for name in layers}, config.bits, rule=rule)
    sampler = BitSampler(probabilities, config.epochs, seed, config.sigma, config.sigma_warmup)
    train_set, eval_sets, num_classes = build_datasets(config, data_root)
    out_dir = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="labkit-live-supernet-"))
    return JointTrainer(model, config, train_set, eval_sets, out_dir, num_classes, show_progress=False,
                        bit_sampler=sampler)
