"""A training run from a recipe: data, model, quantization, training, and the run folder it writes.

The run folder holds ``config.json`` (settings, profile), ``checkpoint.pt`` (the resumable training state),
``log.csv`` (one row per epoch), ``metrics.json`` (final per-bit top-1, profile, budget, hardware),
``run.json`` (wall times: they differ between an interrupted and an uninterrupted run, so they are kept
apart from the metrics), and the result: ``model_int.safetensors`` (INT-h checkpoint, :func:`labkit.save_int`)
for multi-precision runs and ``model_fp32.pt`` (a state_dict) for FP32 runs.
"""
from __future__ import annotations

import json
import os
import sys
import time
import warnings
from pathlib import Path

import torch

from labkit import config as lab_config
from labkit import data
from labkit.convert import quantize_model
from labkit.errors import LabkitError
from labkit.models import build_model
from labkit.models.imagenet import load_state_dict_file
from labkit.quant.lsq import restored_fake_quant_path, select_fake_quant_path, training_path
from labkit.storage import save_int
from labkit.train.config import TrainConfig
from labkit.train.distributed import ProcessGroup, barrier, setup
from labkit.train.loop import FP32, JointTrainer
from labkit.train.recipes import recipe_config

SHIPPED_CHECKPOINTS = Path(__file__).resolve().parents[2] / "data" / "checkpoints"


def build_datasets(config: TrainConfig, root=None):
    """(train set, {name: eval set}, number of classes) for ``config.dataset``."""
    if config.dataset == "cifar10":
        return data.cifar10("train", root=root), {"test": data.cifar10("test", root=root)}, 10
    normalization = "efficientnet" if config.model.startswith("efficientnet") else "imagenet"
    if config.dataset == "imagenette":
        options = dict(normalization=normalization, image_size=config.image_size, root=root)
        return (data.imagenette("train", labels="1k", **options),
                {"imagenette-val": data.imagenette("val", labels="1k", **options),
                 "imagenet-val-sample": data.imagenet_val_sample(normalization, config.image_size, root=root)}, 1000)
    if config.dataset == "imagenet":
        base = Path(root or lab_config.data_root()) / "imagenet"
        options = dict(normalization=normalization, image_size=config.image_size)
        return (data.imagenet_folder(base / "train", True, **options),
                {"val": data.imagenet_folder(base / "val", False, **options)}, 1000)
    raise ValueError(f"dataset={config.dataset!r} is unknown; use cifar10, imagenette or imagenet.")


def resolve_init(config: TrainConfig) -> Path | None:
    """The FP32 weights to start from: ``init_from`` as given (a path, or ``shipped:<name>`` for
    ``data/checkpoints/<name>.pt``), or for ``"auto"`` the shipped ``<dataset>-<model>-fp32.pt`` if any."""
    if config.init_from in (None, "", "none"):
        return None
    if config.init_from == "auto":
        shipped = SHIPPED_CHECKPOINTS / f"{config.dataset}-{config.model}-fp32.pt"
        if shipped.is_file():
            return shipped
        warnings.warn(f"init_from=auto found no FP32 checkpoint at {shipped}; training starts from random weights "
                      "(the paper starts from a pretrained FP32 model: pass init_from=<FP32 run folder>).", stacklevel=2)
        return None
    if config.init_from.startswith("shipped:"):  # a named shipped FP32 checkpoint, e.g. shipped:cifar10-resnet20-fp32
        name = config.init_from.split(":", 1)[1]
        path = SHIPPED_CHECKPOINTS / f"{name}.pt"
        if not path.is_file():
            known = sorted(p.stem for p in SHIPPED_CHECKPOINTS.glob("*-fp32*.pt"))
            raise LabkitError(f"init_from={config.init_from!r}: no shipped checkpoint {path.name} in "
                              f"{SHIPPED_CHECKPOINTS}; shipped FP32 checkpoints: {', '.join(known) or 'none'}")
        return path
    path = Path(config.init_from)
    return path / "model_fp32.pt" if path.is_dir() else path


def init_record(config: TrainConfig) -> dict | None:
    """The FP32 start a run resolved (path and sha256), so its run files say which weights ``auto`` or
    ``shipped:<name>`` meant at the time (a shipped name can later point at another model)."""
    import hashlib

    path = resolve_init(config)
    if path is None or not Path(path).is_file():
        return None
    return {"path": str(path), "sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest()}


def build_model_for(config: TrainConfig, num_classes: int) -> torch.nn.Module:
    """The FP32 model with its starting weights, quantized when ``config.bits`` is set."""
    kwargs = dict(config.model_kwargs)
    if config.model.startswith("resnet20") or config.model.startswith("preact_resnet20"):
        kwargs.setdefault("num_classes", num_classes)
    model = build_model(config.model, **kwargs)
    init = resolve_init(config)
    if init is not None:
        load_state_dict_file(model, init)
    if config.bits is None:
        return model
    example = torch.randn(2, 3, 32, 32) if config.dataset == "cifar10" else torch.randn(2, 3, 64, 64)
    return quantize_model(model, config.bits, config.method, rounding=config.rounding,
                          keep_first_last=config.keep_first_last, grad_mode=config.grad_mode, example_input=example,
                          weight_init=config.weight_init, act_init=config.act_init)


def resolve_supernet_source(config: TrainConfig) -> Path:
    """The multi-precision model a SuperNet starts from: a run folder, its checkpoint.pt, or an INT checkpoint."""
    if config.supernet_from in (None, "", "none"):
        raise LabkitError("a SuperNet recipe needs supernet_from=<the multi-precision run folder or INT checkpoint>.")
    if config.supernet_from == "auto":
        shipped = SHIPPED_CHECKPOINTS / f"{config.dataset}-{config.model}.safetensors"
        if not shipped.is_file():
            raise LabkitError(f"supernet_from=auto found no multi-precision checkpoint at {shipped}; train one with "
                              f"labkit train --recipe {config.dataset}-{config.model} and pass supernet_from=<its folder>.")
        return shipped
    path = Path(config.supernet_from)
    if path.is_dir():
        path = path / "checkpoint.pt" if (path / "checkpoint.pt").is_file() else path / "model_int.safetensors"
    if not path.is_file():
        raise LabkitError(f"supernet_from={config.supernet_from} holds no checkpoint.pt or model_int.safetensors.")
    return path


def build_supernet(config: TrainConfig, fp32_model: torch.nn.Module, train_set, out_dir: Path, group) -> tuple:
    """(SuperNet, bit sampler): the multi-precision model with Transitional BN, and HASB or uniform sampling."""
    import copy

    from labkit.convert import quantized_layers, to_supernet
    from labkit.evaluate import fixed_subset
    from labkit.hasb import hessian_traces, roulette_probabilities, uniform_probabilities
    from labkit.hasb.supernet import BitSampler
    from labkit.storage import load_int
    from labkit.train.checkpoint import load_training_checkpoint

    source = resolve_supernet_source(config)
    example = torch.randn(2, 3, 32, 32) if config.dataset == "cifar10" else torch.randn(2, 3, 64, 64)
    if source.suffix == ".safetensors":
        model = load_int(source, model=None if getattr(fp32_model, "labkit_arch", None) else copy.deepcopy(fp32_model))
        for layer in quantized_layers(model).values():  # train the float weights (= the stored codes × scale)
            layer.weight_quantizer.stored_codes = None
        model.train()
    else:
        source_config = source.parent / "config.json"
        if source_config.is_file():
            trained = json.loads(source_config.read_text())["config"]
            for key in ("bits", "method", "rounding", "grad_mode", "keep_first_last", "model"):
                mine = list(config.bits) if key == "bits" else getattr(config, key)
                if trained.get(key) != mine:
                    raise LabkitError(f"{source} was trained with {key}={trained.get(key)!r}, the SuperNet recipe asks "
                                      f"for {mine!r}; pass {key}={trained.get(key)} or another supernet_from.")
        if not (source.parent / "metrics.json").is_file():
            raise LabkitError(f"{source.parent} has not finished training (no metrics.json); finish it with --resume first.")
        model = quantize_model(fp32_model, config.bits, config.method, rounding=config.rounding,
                               keep_first_last=config.keep_first_last, grad_mode=config.grad_mode,
                               example_input=example, weight_init=config.weight_init, act_init=config.act_init)
        model.load_state_dict(load_training_checkpoint(source)["model"])
    if tuple(sorted(model.labkit_quant["bits"], reverse=True)) != tuple(config.bits):
        raise LabkitError(f"{source} was trained for bits {model.labkit_quant['bits']}, not {list(config.bits)}.")
    to_supernet(model)
    layers = list(quantized_layers(model))
    record = out_dir / "supernet.json"
    if record.is_file():  # a resumed run keeps the sampling distribution it started with
        probabilities = {k: {int(b): p for b, p in v.items()} for k, v in json.loads(record.read_text())["probabilities"].items()}
    else:
        # Both kinds record the traces: the search scores layers with them either way; only HASB samples by them.
        images = fixed_subset(train_set, config.hessian_images, config.seed)
        traces = hessian_traces(fp32_model, images, layers=layers, images=config.hessian_images,
                                probes=config.hessian_probes, seed=config.seed)
        if config.supernet == "hasb":
            probabilities = roulette_probabilities(traces, config.bits, rule=config.sensitivity_rule,
                                                   q=config.sensitivity_q, k=config.sensitivity_k)
        else:
            probabilities = uniform_probabilities(layers, config.bits)
        if group.is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
            _write_json(record, {"source": str(source), "rule": config.supernet, "average_traces": traces,
                                 "probabilities": {k: {str(b): p for b, p in v.items()} for k, v in probabilities.items()}})
    sampler = BitSampler(probabilities, config.epochs, config.seed, config.sigma, config.sigma_warmup)
    return model, sampler


def budget(config: TrainConfig, trainer: JointTrainer, profile: str) -> dict:
    return {"profile": profile, "epochs": config.epochs, "batch_size": config.batch_size,
            "train_images": trainer.train_size, "steps": trainer.total_steps,
            "passes_per_step": len(config.bits) if config.bits else 1,
            "optimizer_steps": trainer.total_steps * (len(config.bits) if config.algorithm == "a2" and config.bits else 1),
            "eval_images": {name: len(ds) for name, ds in trainer.eval_sets.items()}}


def source_version() -> str:
    """The git commit of the lab's code (``+dirty`` with uncommitted changes), or ``labkit <version>`` outside git."""
    import subprocess

    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True,
                               text=True, timeout=10).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        from labkit import __version__

        return f"labkit {__version__}"


def _write_json(path: Path, payload: dict) -> None:
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(payload, indent=2) + "\n")
    temporary.replace(path)


def train(recipe: str, out_dir, overrides: dict | None = None, resume: bool = False, profile: str | None = None,
          data_root=None, show_progress: bool = True) -> dict:
    """Run (or resume) recipe ``recipe`` into ``out_dir``; return the metrics written to ``metrics.json``.

    The run's fake-quant path (``compile_quant``, :func:`labkit.quant.lsq.path_for`) holds for the run only: the
    caller's path is back afterwards (unless the compiler failed, which leaves the eager path that took over)."""
    with restored_fake_quant_path():
        return _train(recipe, out_dir, overrides, resume, profile, data_root, show_progress)


def _train(recipe: str, out_dir, overrides: dict | None, resume: bool, profile: str | None, data_root,
           show_progress: bool) -> dict:
    out_dir = Path(out_dir)
    profile = profile or lab_config.profile()
    config_file = out_dir / "config.json"
    if resume and config_file.is_file():
        saved = json.loads(config_file.read_text())
        config = TrainConfig.from_dict(saved["config"])
        if recipe and recipe != config.recipe:
            raise LabkitError(f"{out_dir} holds a run of recipe {config.recipe!r}, not {recipe!r}; resume it with "
                              f"--recipe {config.recipe} or choose another --out.")
        if overrides and config.with_overrides(overrides).to_dict() != config.to_dict():
            raise LabkitError(f"--resume continues the run in {out_dir} with its own settings; drop the overrides "
                              "or start a new --out folder.")
        profile = saved["profile"]
    else:
        if (out_dir / "checkpoint.pt").exists() or (out_dir / "metrics.json").exists():
            raise LabkitError(f"{out_dir} already holds a run; continue it with --resume or choose another --out.")
        config = recipe_config(recipe, profile, overrides)
    if config.kd == "pskd" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise LabkitError("kd=pskd keeps each sample's last prediction in one process's memory, so it needs a "
                          "single process; run without torchrun or use kd=recursive.")
    if config.device == "cuda" and not torch.cuda.is_available():
        raise LabkitError("device=cuda was asked for, but PyTorch sees no CUDA device; use device=cpu or auto.")
    group = setup(config.device)
    if config.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    select_fake_quant_path(config.compile_quant)  # for this run; train() restores the caller's path
    torch.manual_seed(config.seed)
    train_set, eval_sets, num_classes = build_datasets(config, data_root)
    sampler = None
    if config.supernet != "none":
        if resolve_init(config) is None:
            raise LabkitError("a SuperNet recipe scores layers by the Hessian of the trained FP32 model; pass "
                              "init_from=<the FP32 run folder or weights file> (none was found).")
        fp32 = build_model_for(config.with_overrides({"bits": None, "supernet": "none"}), num_classes)
        model, sampler = build_supernet(config, fp32, train_set, out_dir, group)
    else:
        model = build_model_for(config, num_classes)
    trainer = JointTrainer(model, config, train_set, eval_sets, out_dir, num_classes, group, show_progress, sampler)
    if group.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        _write_json(config_file, {"config": config.to_dict(), "profile": profile})
    started, version = time.time(), source_version()
    results = trainer.fit(resume=resume)
    elapsed = time.time() - started
    primary = next(iter(results))
    metrics = {
        "accuracy": results[primary],
        "accuracy_by_set": results,
        "recipe": config.recipe,
        "profile": profile,
        "budget": budget(config, trainer, profile),
        "alrs_applied": trainer.alrs_rule if config.bits else None,
        "arithmetic": {"amp_bf16": trainer.amp_bf16, "channels_last": trainer.channels_last,
                       "fake_quant": training_path(trainer.device) if config.bits else None},
        "hardware": lab_config.hardware_summary(),
        "world_size": group.world_size,
    }
    if group.is_main:
        _write_json(out_dir / "metrics.json", metrics)
        run_file = out_dir / "run.json"
        previous = json.loads(run_file.read_text()) if run_file.is_file() else {"sessions": []}
        previous["sessions"].append({"wall_time_s": round(elapsed, 1), "resumed": bool(resume), "source": version,
                                     "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "argv": sys.argv,
                                     "init": init_record(config)})
        _write_json(run_file, previous)
        if config.bits is None:
            torch.save(trainer.model.state_dict(), out_dir / "model_fp32.pt")
        elif all(getattr(layer.weight_quantizer, "nested", False) for layer in _quantized(trainer.model)):
            save_int(trainer.model, out_dir / "model_int.safetensors")
        else:  # FP32 masters (per_bit_scale, any_precision): the state_dict and the plan that rebuilds it
            torch.save(trainer.model.state_dict(), out_dir / "model_quantized.pt")
            _write_json(out_dir / "plan.json", trainer.model.labkit_quant)
    barrier(group)
    return metrics


def _quantized(model):
    from labkit.convert import quantized_layers

    return quantized_layers(model).values()


__all__ = ["FP32", "ProcessGroup", "build_datasets", "build_model_for", "train"]
