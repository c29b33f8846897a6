"""A short joint {8,6,4,2} fine-tune of the shipped FP32 ResNet-20 on CIFAR-10, to watch (notebook 03).

:func:`live_joint_trainer` builds the :class:`~labkit.train.loop.JointTrainer` of recipe ``cifar10-resnet20``
(paper Table 4: the shipped FP32 ResNet-20 quantized for {8,6,4,2}, first and last layer FP32, per-bit batch
norms; Alg. A.2 with Double Rounding and ALRS Eq. 7, Adam 5e-4, cosine) at a budget small enough to follow
live: ``train_images`` training images in batches of ``batch_size``, one epoch, then the per-bit evaluation on
``eval_images`` fixed test images. Only those sizes differ from the recipe; the notebook hands the trainer to
:func:`labkit.live_training.train_live` and the trained model to the switchboard.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from labkit.errors import LabkitError
from labkit.train.loop import JointTrainer
from labkit.train.recipes import recipe_config
from labkit.train.run import build_datasets, build_model_for

RECIPE = "cifar10-resnet20"

#: The live run's sizes per profile. ``laptop``: 128 steps of 64 images (4 passes each) and 1,000 test images
#: at each of the four bit-widths (98 s of CPU time on one core of a 2-core Xeon, measured with 1 torch thread;
#: 2-bit top-1 69 % on those 1,000 images at the end, one seed, starting from the laptop-profile FP32 model now
#: shipped as ``cifar10-resnet20-fp32-laptop``); ``smoke`` only shows that it runs (nbval);
#: ``paper``: a full epoch of the 50,000 training images and the whole test set.
LIVE_BUDGETS = {
    "smoke": {"train_images": 96, "batch_size": 32, "eval_images": 64},
    "laptop": {"train_images": 8192, "batch_size": 64, "eval_images": 1000},
    "paper": {"train_images": 50000, "batch_size": 128, "eval_images": None},
}


def live_budget(profile: str) -> dict:
    """The live run's sizes at ``profile`` (``smoke`` | ``laptop`` | ``paper``)."""
    if profile not in LIVE_BUDGETS:
        raise LabkitError(f"no live-training budget for profile {profile!r}; use one of {sorted(LIVE_BUDGETS)}.")
    return dict(LIVE_BUDGETS[profile])


def live_joint_trainer(train_images: int, batch_size: int, eval_images: int | None, out_dir=None,
                       profile: str = "laptop", data_root=None, seed: int = 0) -> JointTrainer:
    """The JointTrainer of a one-epoch joint {8,6,4,2} fine-tune from the shipped FP32 ResNet-20.

    ``train_images // batch_size`` steps, each one forward/backward and one Adam step per bit-width, 8 → 2
    (Alg. A.2), weights at λ and each precision's scales at its ALRS rate λ_b (Eq. 7); then the four bit-widths
    are evaluated on ``eval_images`` fixed test images (``None``: all 10,000). Writes its checkpoint and log to
    ``out_dir`` (a new temporary folder by default).
    """
    for name, value in (("train_images", train_images), ("batch_size", batch_size), ("eval_images", eval_images)):
        if value is None and name == "eval_images":
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise LabkitError(f"{name}={value!r} must be a whole number >= 1.")
    if train_images < batch_size:
        raise LabkitError(f"train_images={train_images} is fewer than one batch of {batch_size}; raise train_images "
                          "or lower batch_size.")
    config = recipe_config(RECIPE, profile, {"epochs": 1, "train_subset": train_images, "batch_size": batch_size,
                                             "eval_subset": eval_images, "eval_every": 1, "seed": seed,
                                             "checkpoint_every": 0})
    out_dir = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="labkit-live-resnet20-"))
    torch.manual_seed(seed)  # as labkit.train.run.train does before it builds the data and the model
    train_set, eval_sets, num_classes = build_datasets(config, data_root)
    model = build_model_for(config, num_classes)
    return JointTrainer(model, config, train_set, eval_sets, out_dir, num_classes, show_progress=False)
