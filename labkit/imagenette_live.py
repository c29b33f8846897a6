"""A short joint {8,6,4,2} fine-tune of the pretrained EfficientNet-Lite0 on Imagenette, to watch (notebook 05).

:func:`live_finetune_trainer` builds the :class:`~labkit.train.loop.JointTrainer` of recipe
``imagenette-efficientnet-lite0`` (the ImageNet-pretrained EfficientNet-Lite0 quantized for {8,6,4,2}, first and
last layer FP32, per-bit batch norms; Alg. A.2 with Double Rounding and ALRS Eq. 7, Adam) at a budget small
enough to follow live: ``train_images`` Imagenette training images (labels in the 1000-class space), batches of
``batch_size``, one epoch, then the final per-bit evaluation on ``eval_images`` images of Imagenette val and of
the ImageNet val sample. The run is exactly the recipe's except for those sizes, ``image_size`` and
``workers=0``: the images are decoded in the kernel's own process, since for a run this small a loader process
only competes with the training for two cores (the smoke-sized run fits about 4× faster with ``workers=0``
than with one loader process: 1.2 s against 5–6 s, three pairs side by side in one process on 2 shared cores).
:func:`watch` shows it with :mod:`labkit.live_training`. Nothing here changes the recipe or the trainer.
"""
from __future__ import annotations

import shutil
import tempfile
import weakref
from pathlib import Path

import torch

from labkit.errors import LabkitError
from labkit.train.loop import JointTrainer
from labkit.train.recipes import recipe_config
from labkit.train.run import build_datasets, build_model_for

RECIPE = "imagenette-efficientnet-lite0"
IMAGENET_CLASSES = 1000


def live_budget(settings: dict) -> dict:
    """The live run's sizes from notebook 05's profile settings (:mod:`labkit.notebook_settings`)."""
    keys = ("live_train_images", "live_batch_size", "live_eval_images", "live_image_size")
    missing = [k for k in keys if k not in settings]
    if missing:
        raise LabkitError(f"the settings have no {missing}; pass notebook_settings('05') (they come from there).")
    return {"train_images": settings["live_train_images"], "batch_size": settings["live_batch_size"],
            "eval_images": settings["live_eval_images"], "image_size": settings["live_image_size"]}


def live_finetune_trainer(train_images: int, batch_size: int, eval_images: int, image_size: int = 224,
                          out_dir=None, profile: str = "laptop", data_root=None, seed: int = 0) -> JointTrainer:
    """The JointTrainer of a one-epoch joint fine-tune of EfficientNet-Lite0 (recipe ``imagenette-efficientnet-lite0``).

    ``train_images // batch_size`` steps, each one forward/backward and one Adam step per bit-width, 8 → 2
    (Alg. A.2); then the four bit-widths are evaluated on ``eval_images`` images of each evaluation set. Writes
    its checkpoint and log to ``out_dir``; by default a new temporary folder, removed with the trainer.
    """
    for name, value in (("train_images", train_images), ("batch_size", batch_size), ("eval_images", eval_images),
                        ("image_size", image_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise LabkitError(f"{name}={value!r} must be a whole number >= 1.")
    if train_images < batch_size:
        raise LabkitError(f"train_images={train_images} is fewer than one batch of {batch_size}; raise train_images "
                          "or lower batch_size.")
    config = recipe_config(RECIPE, profile, {"epochs": 1, "train_subset": train_images, "batch_size": batch_size,
                                             "eval_subset": eval_images, "image_size": image_size, "seed": seed,
                                             "checkpoint_every": 0, "workers": 0})
    torch.manual_seed(seed)  # as labkit.train.run.train does before it builds the data and the model
    train_set, eval_sets, num_classes = build_datasets(config, data_root)
    if num_classes != IMAGENET_CLASSES:
        raise LabkitError(f"recipe {RECIPE} should score 1000 ImageNet classes, its data has {num_classes}.")
    model = build_model_for(config, num_classes)
    temporary = out_dir is None
    out_dir = Path(tempfile.mkdtemp(prefix="labkit-live-effnet-")) if temporary else Path(out_dir)
    trainer = JointTrainer(model, config, train_set, eval_sets, out_dir, num_classes, show_progress=False)
    if temporary:  # its checkpoint (~60 MB) goes with the trainer, or at the latest when the kernel exits
        weakref.finalize(trainer, shutil.rmtree, out_dir, ignore_errors=True)
    return trainer


def result_rows(trainer: JointTrainer, result: dict) -> list[dict]:
    """What ``trainer.fit()`` returned (``{set: {"8": top-1, …}}``) as rows of :func:`labkit.bit_accuracy.measure`."""
    return [{"set": name, "images": len(trainer.eval_sets[name]),
             "accuracy": {int(b): value for b, value in accuracy.items() if value is not None}}
            for name, accuracy in result.items()]


EVAL_MARKERS = {"diamond": "◆", "square": "■", "circle": "●", "triangle-up": "▲"}  # one per evaluation set


def watch(trainer: JointTrainer, window: int = 5, show: bool = True):
    """:func:`labkit.live_training.train_live` for notebook 05's two evaluation sets: each set gets its own marker
    (◆ the first, ■ the second) and the accuracy panel's title, which names them, takes two lines instead of
    running into the loss panel's. Returns the view (``view.result``: what ``trainer.fit`` returned)."""
    from labkit.live_training import LiveTraining

    view = LiveTraining(trainer, window=window)
    symbols = dict(zip(view.eval_names, list(EVAL_MARKERS) * len(view.eval_names)))
    suffixes = {f" {name}": symbol for name, symbol in symbols.items()}
    for trace in view.figure.data:
        for suffix, symbol in suffixes.items():
            if trace.name.endswith(suffix):
                trace.marker.symbol = symbol
    evaluated = ", ".join(f"{EVAL_MARKERS[symbol]} {name}" for name, symbol in symbols.items())
    view.figure.layout.annotations[1].text = (f"top-1 accuracy: lines = training batches (mean of {window} steps)"
                                              + (f"<br>markers = evaluation sets: {evaluated}" if evaluated else ""))
    view.figure.update_layout(margin=dict(t=110))
    if show:
        view.show()
    view.run()
    return view
