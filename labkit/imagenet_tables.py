"""What notebook 05 shows as tables and sentences: the ImageNet recipes, the Imagenette classes, the budgets.

Each function returns Markdown (render it with ``IPython.display.Markdown``), so a student reads a table or a
sentence, never a printed dict.
"""
from __future__ import annotations

from labkit.train.recipes import recipe_config


def markdown_table(header: list[str], rows: list[list], align: str | None = None) -> str:
    """A Markdown table; ``align`` is one character per column, ``l`` or ``r`` (default: all left)."""
    align = align or "l" * len(header)
    rule = "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"
    lines = ["| " + " | ".join(header) + " |", rule]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def recipe_table(names, profile: str = "paper") -> str:
    """One row per recipe at ``profile``: model, bit set, optimizer, learning rate, weight decay, epochs, batch,
    algorithm (Alg. A.1/A.2) and ALRS rule, read from :func:`labkit.train.recipes.recipe_config`."""
    rows = []
    for name in names:
        c = recipe_config(name, profile=profile)
        bits = "FP32" if c.bits is None else "{" + ",".join(str(b) for b in c.bits) + "}"
        optimizer = f"{c.optimizer.capitalize()}, lr {c.lr:g}, wd {c.weight_decay:g}"
        rows.append([f"`{name}`", f"`{c.model}`", bits, optimizer, c.epochs, c.batch_size,
                     f"Alg. {c.algorithm.upper().replace('A', 'A.')}", c.alrs])
    return markdown_table(["recipe", "model", "bits", "optimizer", "epochs", "global batch", "algorithm", "ALRS"],
                          rows, "llllrrll")


def class_table(targets, class_index) -> str:
    """The classes present in ``targets`` (ImageNet-1K indices): wnid, index, name, and how many images each has."""
    counts: dict[int, int] = {}
    for target in targets:
        counts[int(target)] = counts.get(int(target), 0) + 1
    rows = [[f"`{class_index.wnids[c]}`", c, class_index.names[c], f"{counts[c]:,}"] for c in sorted(counts)]
    return markdown_table(["folder (wnid)", "ImageNet-1K index", "class name", "images"], rows, "lrlr")


def _images(value) -> str:
    return "all the" if value is None else f"{value:,}"


def sentence_for_profile(settings: dict) -> str:
    """Notebook 05's budgets at its profile, as a sentence."""
    live = (f"the live fine-tune trains on {_images(settings['live_train_images'])} Imagenette images in batches "
            f"of {settings['live_batch_size']} at {settings['live_image_size']} px and then scores "
            f"{_images(settings['live_eval_images'])} images of each evaluation set")
    return (f"Profile **{settings['profile']}**: the accuracy below is measured on "
            f"{_images(settings['imagenette_images'])} Imagenette val images and {_images(settings['val_images'])} "
            f"ImageNet val-sample images; {live}.")


def checkpoint_sentence(record: dict, size_bytes: int) -> str:
    """Where the shipped checkpoint comes from (its provenance record) and what it holds, as a sentence."""
    budget = record["budget"]
    minutes = record["wall_time_s"] / 60
    return (f"The shipped checkpoint was trained by `{record['command']}` at the **{record['profile']}** profile: "
            f"{budget['steps']} steps of {budget['batch_size']} images ({budget['train_images']:,} Imagenette "
            f"training images, {budget['epochs']} epoch{'s' if budget['epochs'] != 1 else ''}, "
            f"{budget['passes_per_step']} passes per step, one per bit-width) in {minutes:.0f} min "
            f"({record['hardware']}). The file is {size_bytes / 2**20:.1f} MiB: INT8 codes for the quantized layers, "
            "FP32 first and last layers, one batch norm per bit-width."
            + (f" Notes of the run: {record['notes']}" if record.get("notes") else ""))


def recorded_accuracy_rows(record: dict) -> list[dict]:
    """The per-bit top-1 the checkpoint's own run measured at its end, as rows of
    :func:`labkit.bit_accuracy.measure` (``{"set", "images", "accuracy": {bits: top-1}}``)."""
    images = record["budget"]["eval_images"]
    return [{"set": name, "images": images[name], "accuracy": {int(b): v for b, v in accuracy.items()}}
            for name, accuracy in record["accuracy_by_set"].items()]
