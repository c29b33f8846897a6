"""Notebook 03's small tables as Markdown: the recipe, the memory of one joint step, the shipped joint model.

Each function takes numbers measured elsewhere (:func:`labkit.train.recipes.recipe_config`,
:func:`labkit.train.memory.joint_step_memory`, the checkpoint's JSON record, :func:`labkit.evaluate.accuracy_per_bits`)
and only lays them out; a notebook shows them with ``IPython.display.Markdown``.
"""
from __future__ import annotations

from pathlib import Path

MIB = 2 ** 20

#: The recipe settings notebook 03 shows, with what each one is.
RECIPE_KEYS = {
    "bits": "bit-widths trained jointly", "method": "quantizer", "algorithm": "training loop (Alg. A.1 / A.2)",
    "alrs": "ALRS rule (Eq. 7)", "optimizer": "optimizer", "lr": "learning rate λ", "weight_decay": "weight decay",
    "epochs": "epochs", "batch_size": "batch size", "init_from": "starting weights", "kd": "knowledge distillation",
}


def _value(value) -> str:
    if isinstance(value, (tuple, list)):
        return "{" + ",".join(str(v) for v in value) + "}"
    return f"`{value}`"


def recipe_table(config, keys=RECIPE_KEYS) -> str:
    """| setting | value | meaning | for the ``keys`` of a :class:`~labkit.train.config.TrainConfig`."""
    lines = ["| setting | value | what it is |", "|:---|:---|:---|"]
    lines += [f"| `{key}` | {_value(getattr(config, key))} | {meaning} |" for key, meaning in keys.items()]
    return "\n".join(lines)


def memory_table(memory: dict, fp32_bytes: float) -> str:
    """The activation memory of one joint step (:func:`labkit.train.memory.joint_step_memory`) next to an FP32
    forward's (``fp32_bytes``), in MiB and as a multiple of FP32."""
    def row(what, size):
        return f"| {what} | {size / MIB:.1f} | {size / fp32_bytes:.2f}× |"

    lines = ["| saved for backward, one batch | MiB | × FP32 |", "|:---|---:|---:|", row("FP32 forward", fp32_bytes)]
    lines += [row(f"quantized forward at {bits} bits", size) for bits, size in memory["per_bits"].items()]
    lines += [row("A.1 / A.2: backward right after each pass (alive at once)", memory["per_precision_backward"]),
              row(f"one summed backward over {len(memory['per_bits'])} passes", memory["summed_backward"])]
    return "\n".join(lines)


def memory_sentence(memory: dict, profile: str) -> str:
    return (f"Measured on a batch of {memory['batch']} test images ({profile} profile). Besides the activations: "
            f"parameters and buffers {memory['parameters'] / MIB:.2f} MiB, Adam's two moments "
            f"{memory['adam_state'] / MIB:.2f} MiB.")


def shipped_model_summary(path: Path, record: dict, fp32_path: Path) -> str:
    """A few sentences on a shipped joint checkpoint: its size next to the FP32 one, how and on what it was made."""
    size, fp32_size = Path(path).stat().st_size, Path(fp32_path).stat().st_size
    budget = record.get("budget", {})
    passes = budget.get("passes_per_step")
    made = (f"{budget.get('epochs', '?')} epoch{'s' if budget.get('epochs') != 1 else ''} over "
            f"{budget.get('train_images', '?'):,} training images in batches of {budget.get('batch_size', '?')} "
            f"({budget.get('steps', '?')} steps" + (f", {passes} passes per step" if passes else "") + ")")
    minutes = record.get("wall_time_s")
    return (f"`{Path(path).name}` is {size / 1024:.0f} KiB, "
            f"the FP32 `{Path(fp32_path).name}` {fp32_size / 1024:.0f} KiB "
            f"({size / fp32_size:.2f}×). It was made by `{record.get('command', '?')}`: {made}, "
            f"{record.get('profile', '?')} profile, on {record.get('hardware', 'unrecorded hardware')}"
            + (f", in {minutes / 60:.0f} min" if minutes else "") + ".")


def accuracy_comparison_table(recorded: dict, now: dict, images: int, recorded_images: int | None = None) -> str:
    """Per bit-width: the accuracy recorded when the model was trained (on ``recorded_images`` test images) and
    the one measured now on ``images``."""
    bits = sorted({int(b) for b in now}, reverse=True)
    recorded = {int(b): float(a) for b, a in recorded.items()}
    on = f" ({recorded_images:,} test images)" if recorded_images else ""
    lines = ["| | " + " | ".join(f"{b}-bit" for b in bits) + " |", "|:---|" + "---:|" * len(bits),
             f"| recorded at training time{on} | "
             + " | ".join(f"{recorded[b]:.2f}" if b in recorded else "" for b in bits) + " |",
             f"| measured now ({images:,} test images) | " + " | ".join(f"{now[b]:.2f}" for b in bits) + " |"]
    return "\n".join(lines)
