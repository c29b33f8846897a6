"""What each notebook does at each run profile (``LABKIT_PROFILE``: smoke | laptop | paper).

``smoke`` runs every notebook top to bottom in seconds to a few minutes on 2 CPU cores (CI; its numbers only
show that the code runs); ``laptop`` (the default) gives meaningful numbers in minutes, starting from the
checkpoints shipped in ``data/checkpoints/``; ``paper`` runs the full recipes (GPU-days). Notebooks read their
sizes from here and print the profile next to every number, so nothing in a notebook hard-codes a budget.
"""
from __future__ import annotations

from labkit.config import profile as active_profile

SETTINGS: dict[str, dict[str, dict]] = {
    "02": {
        "smoke": {"images": 32},
        "laptop": {"images": 256},
        "paper": {"images": 1024},
    },
    "03": {
        "smoke": {"eval_images": 256, "train_rows": ("8642-alrs-a2", "8642-noalrs-a2", "8642-alrs-a1", "8642-floor",
                                                      "8642-per_bit_scale"), "memory_images": 16},
        "laptop": {"eval_images": 2000, "train_rows": (), "memory_images": 128},
        "paper": {"eval_images": None, "train_rows": "all", "memory_images": 128},
    },
    "04": {
        "smoke": {"hessian_images": 32, "probes": 2, "eval_images": 128, "sweep_step": 1.0, "neighbours": False,
                  "spread_images": 64, "live_run": True, "live_steps": 2, "live_batch_size": 16,
                  "live_eval_images": 32},
        "laptop": {"hessian_images": 64, "probes": 3, "eval_images": 1000, "sweep_step": 0.5, "neighbours": False,
                   "spread_images": 500, "live_run": False, "live_steps": 30, "live_batch_size": 64,
                   "live_eval_images": 500},
        "paper": {"hessian_images": 1000, "probes": 7, "eval_images": None, "sweep_step": 0.05, "neighbours": True,
                  "spread_images": None, "live_run": False, "live_steps": 200, "live_batch_size": 128,
                  "live_eval_images": None},
    },
    "05": {
        "smoke": {"val_images": 8, "imagenette_images": 8, "live_train_images": 8, "live_batch_size": 4,
                  "live_image_size": 128, "live_eval_images": 4},
        "laptop": {"val_images": 100, "imagenette_images": 100, "live_train_images": 160, "live_batch_size": 16,
                   "live_image_size": 128, "live_eval_images": 64},
        "paper": {"val_images": None, "imagenette_images": None, "live_train_images": 1024, "live_batch_size": 32,
                  "live_image_size": 224, "live_eval_images": 500},
    },
    "06": {
        "smoke": {"eval_images": 256, "onnx_images": 16, "ptq_images": 256},
        "laptop": {"eval_images": 1000, "onnx_images": 256, "ptq_images": 512},
        "paper": {"eval_images": None, "onnx_images": 1000, "ptq_images": None},
    },
}


def notebook_settings(notebook: str, profile: str | None = None) -> dict:
    """The settings of ``notebook`` ("02" … "06") at ``profile`` (default: ``$LABKIT_PROFILE``), with ``profile``."""
    if notebook not in SETTINGS:
        raise KeyError(f"no settings for notebook {notebook!r}; known: {sorted(SETTINGS)}")
    name = profile or active_profile()
    if name not in SETTINGS[notebook]:
        raise KeyError(f"no profile {name!r}; use one of {sorted(SETTINGS[notebook])}")
    return {"profile": name, **SETTINGS[notebook][name]}


def describe(settings: dict) -> str:
    """One line for the notebook's first output: which profile produced the numbers below, and its sizes."""
    sizes = ", ".join(f"{k}={'all' if v is None else v}" for k, v in settings.items() if k != "profile")
    return f"profile: {settings['profile']} ({sizes})"
