"""Learned weight scales under Adam (issue 10 item 10): how they fare, and an opt-in update that keeps them positive.

A per-channel weight scale of a pretrained ResNet-20 starts near 1.25e-3 (median, ``max`` init at 8 bits) while
Adam moves every parameter by about λ = 5e-4 per step whatever its gradient: 40 % of the scale per step, where a
weight (median |W| 0.028) moves by 1.8 %. A scale can then cross zero (the channel's codes flip sign) or fall far
below its start (most of the channel clips to the largest code).

- :class:`WeightScaleMonitor` counts, per output channel, sign changes and falls below a fraction of the start,
  at the end of a run and at any step during it.
- ``weight_scale_update="log"`` (:class:`LogScaleUpdate`, opt-in; the paper's plain Adam on ``s`` stays the
  default) runs Adam on ``θ = log s`` instead: the gradient becomes ``s · ∂L/∂s``, the update is multiplicative,
  ``s ← s · exp(−k · lr · m̂/(√v̂ + ε))`` (Adam on ``θ = log(s)/k``), so a scale stays positive and moves by a
  *relative* step of about ``k`` times the scale group's rate (λ·η_b under ALRS); ``k = weight_scale_log_lr``
  (default 20: 1 % per step at λ = 5e-4, about the relative step the weights take).
"""
from __future__ import annotations

import torch

from labkit.errors import LabkitError


def weight_scale_parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The learned per-channel weight scales of every quantized layer (``…weight_quantizer.scale[.b]``), by name."""
    from labkit.convert import quantized_layers

    found = {}
    for layer_name, layer in quantized_layers(model).items():
        for name, param in layer.weight_quantizer.named_parameters():
            if name == "scale" or name.startswith("scale."):
                found[f"{layer_name}.weight_quantizer.{name}"] = param
    return found


class WeightScaleMonitor:
    """Per-channel record of the weight scales from now on; call :meth:`update` after every optimizer step."""

    def __init__(self, model: torch.nn.Module, fraction: float = 0.25):
        self.fraction = fraction
        self.params = weight_scale_parameters(model)
        self.start = {n: p.detach().clone() for n, p in self.params.items()}
        self.flipped_ever = {n: torch.zeros_like(p, dtype=torch.bool) for n, p in self.params.items()}
        self.below_ever = {n: torch.zeros_like(p, dtype=torch.bool) for n, p in self.params.items()}
        self.steps = 0

    @torch.no_grad()
    def update(self, *args, **kwargs) -> None:
        """Usable as an optimizer step post-hook."""
        self.steps += 1
        for name, param in self.params.items():
            ratio = param / self.start[name]
            self.flipped_ever[name] |= ratio < 0
            self.below_ever[name] |= ratio < self.fraction

    @torch.no_grad()
    def summary(self) -> dict:
        """Channel counts: sign changed / below ``fraction`` of the start (a flipped channel counts as below too),
        now and at any step; with the medians of the starting and final |scale|."""
        starts = torch.cat([s.flatten() for s in self.start.values()])
        finals = torch.cat([p.detach().flatten() for p in self.params.values()])
        ratio = finals / starts
        return {
            "channels": int(starts.numel()),
            "steps": self.steps,
            "sign_changed_at_end": int((ratio < 0).sum()),
            "sign_changed_ever": int(sum(int(m.sum()) for m in self.flipped_ever.values())),
            f"below_{self.fraction}_of_start_at_end": int((ratio < self.fraction).sum()),
            f"below_{self.fraction}_of_start_ever": int(sum(int(m.sum()) for m in self.below_ever.values())),
            "median_start": float(starts.abs().median()),
            "median_end": float(finals.abs().median()),
            "median_ratio_end": float(ratio.median()),
        }


class LogScaleUpdate:
    """Adam on ``θ = log(s) / k`` for the weight scales: wrap every optimizer step with :meth:`before` and :meth:`after`.

    Before the step each stepping scale's data becomes ``θ = log(s) / k`` and its gradient ``k · s · ∂L/∂s`` (the
    chain rule through ``s = exp(k θ)``); after the step the data becomes ``exp(k θ)`` again. A step of about
    ``lr`` in ``θ`` (Adam's) is a relative change of ``k · lr`` in ``s``, so the learning rates (λ, ALRS's λ_b) stay
    as they are, and the θ-gradient stays well above Adam's ε (``s · ∂L/∂s`` alone is ~1e-7). Adam's moments
    live in ``θ`` consistently.
    """

    def __init__(self, model: torch.nn.Module, factor: float = 20.0):
        if not factor > 0:
            raise LabkitError(f"weight_scale_log_lr={factor} must be > 0.")
        self.params = list(weight_scale_parameters(model).values())
        bad = [p for p in self.params if not bool((p.detach() > 0).all())]
        if bad:
            raise LabkitError("weight_scale_update=log needs every weight scale > 0, but the model has "
                              f"{sum(int((p.detach() <= 0).sum()) for p in bad)} channels at or below zero (trained "
                              "with plain Adam?); start from the FP32 model or use weight_scale_update=adam.")
        self.factor = factor
        self._stepping: list[torch.nn.Parameter] = []

    @torch.no_grad()
    def before(self) -> None:
        # Only parameters with a gradient step (Adam skips the others), so only those change space.
        self._stepping = [p for p in self.params if p.grad is not None]
        for param in self._stepping:
            param.grad.mul_(param).mul_(self.factor)
            param.log_().div_(self.factor)

    @torch.no_grad()
    def after(self) -> None:
        for param in self._stepping:
            param.mul_(self.factor).exp_()


def measure_weight_scales(recipe: str = "cifar10-resnet20", overrides: dict | None = None, profile: str = "laptop",
                          out_dir=None, data_root=None, fraction: float = 0.25) -> dict:
    """Train ``recipe`` once with a :class:`WeightScaleMonitor` attached; return its summary and the per-bit top-1.

    Same data, model and settings as ``labkit train`` (no run folder is kept unless ``out_dir`` is given).
    """
    import tempfile
    import time

    from labkit import config as lab_config
    from labkit.train.loop import JointTrainer
    from labkit.train.recipes import recipe_config
    from labkit.train.run import build_datasets, build_model_for

    config = recipe_config(recipe, profile, overrides)
    if config.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.manual_seed(config.seed)
    train_set, eval_sets, num_classes = build_datasets(config, data_root)
    model = build_model_for(config, num_classes)
    out_dir = out_dir or tempfile.mkdtemp(prefix="labkit-scales-")
    trainer = JointTrainer(model, config, train_set, eval_sets, out_dir, num_classes, show_progress=False)
    monitor = WeightScaleMonitor(trainer.model, fraction)
    trainer.step_callbacks.append(monitor.update)
    started = time.time()
    results = trainer.fit()
    return {"settings": {k: v for k, v in config.to_dict().items() if k in (overrides or {})},
            "recipe": recipe, "profile": profile, "weight_scales": monitor.summary(),
            "accuracy": results, "budget": {"epochs": config.epochs, "train_images": trainer.train_size,
                                            "batch_size": config.batch_size, "batches": trainer.total_steps,
                                            "eval_images": {n: len(d) for n, d in trainer.eval_sets.items()}},
            "hardware": lab_config.hardware_summary(), "torch_threads": torch.get_num_threads(),
            "wall_time_s": round(time.time() - started, 1)}
