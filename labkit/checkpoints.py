"""Checkpoints made by the lab's own recipes and shipped in ``data/checkpoints/``, each with its provenance.

Every shipped file ``NAME.pt`` (FP32 state_dict) or ``NAME.safetensors`` (INT checkpoint) has a ``NAME.json``
beside it: the command that made it, the code version, profile, budget, hardware, wall time and the measured
per-bit accuracy — what the notebooks' laptop profile starts from.
"""
from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

from labkit.errors import CheckpointError

SHIPPED_DIR = Path(__file__).resolve().parents[1] / "data" / "checkpoints"


def provenance(run_dir) -> dict:
    """What made the run in ``run_dir``: command, code version, profile, budget, hardware, time, accuracy."""
    run_dir = Path(run_dir)
    try:
        config = json.loads((run_dir / "config.json").read_text())
        metrics = json.loads((run_dir / "metrics.json").read_text())
        sessions = json.loads((run_dir / "run.json").read_text())["sessions"]
    except (OSError, KeyError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{run_dir} is not a finished labkit run ({error}); train it to the end first.") from None
    first = sessions[0]
    return {
        "recipe": metrics["recipe"],
        "command": f"LABKIT_PROFILE={metrics['profile']} " + shlex.join(["labkit"] + list(first.get("argv", []))[1:]),
        "source": sorted({s.get("source", "unknown") for s in sessions}),
        "profile": metrics["profile"],
        "budget": metrics["budget"],
        "hardware": metrics["hardware"],
        "wall_time_s": round(sum(s["wall_time_s"] for s in sessions), 1),
        "sessions": len(sessions),
        "accuracy": metrics["accuracy"],
        "accuracy_by_set": metrics.get("accuracy_by_set", {}),
        "config": config["config"],
    }


def ship_run(run_dir, name: str, destination=SHIPPED_DIR, notes: str | None = None) -> Path:
    """Copy a finished run's result into ``destination`` as ``NAME.pt|.safetensors`` with ``NAME.json``."""
    run_dir, destination = Path(run_dir), Path(destination)
    record = provenance(run_dir)
    if notes:
        record["notes"] = notes
    source = next((run_dir / f for f in ("model_int.safetensors", "model_fp32.pt") if (run_dir / f).is_file()), None)
    if source is None:
        raise CheckpointError(f"{run_dir} has no model_int.safetensors or model_fp32.pt to ship.")
    destination.mkdir(parents=True, exist_ok=True)
    target = destination / f"{name}{source.suffix}"
    shutil.copyfile(source, target)
    record["file"] = target.name
    record["bytes"] = target.stat().st_size
    (destination / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
    return target


def shipped(name: str, destination=SHIPPED_DIR) -> tuple[Path, dict]:
    """(file, provenance) of a shipped checkpoint, or a clear error listing what is shipped."""
    destination = Path(destination)
    meta = destination / f"{name}.json"
    if not meta.is_file():
        available = sorted(p.stem for p in destination.glob("*.json")) if destination.is_dir() else []
        raise CheckpointError(f"no shipped checkpoint {name!r} in {destination}; shipped: {available or 'none'}. "
                              "Make one with labkit train and labkit.checkpoints.ship_run.")
    record = json.loads(meta.read_text())
    return destination / record["file"], record


def load_shipped(name: str, destination=SHIPPED_DIR):
    """The model of shipped checkpoint ``name`` in eval mode: FP32 (``.pt``) or INT (``.safetensors``).

    ``load_shipped("cifar10-resnet20-fp32")`` gives the FP32 ResNet-20, ``load_shipped("cifar10-resnet20")``
    the jointly trained INT8 {8,6,4,2} model with integer-only switching.
    """
    from labkit.evaluate import _fp32_model_of
    from labkit.models.imagenet import load_state_dict_file
    from labkit.storage import load_int

    path, record = shipped(name, destination)
    if path.suffix == ".safetensors":
        return load_int(path).eval()
    return load_state_dict_file(_fp32_model_of(record["config"]), path).eval()
