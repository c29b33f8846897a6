"""The settings of one training run: a dataclass that recipes fill in and the command line overrides."""
from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import dataclass, field

from labkit.config import ConfigError


@dataclass
class TrainConfig:
    """Everything a run depends on. A field's comment says which paper setting it carries."""

    recipe: str = "custom"
    dataset: str = "cifar10"              # cifar10 | imagenet | imagenette
    model: str = "resnet20"               # a labkit.models name
    model_kwargs: dict = field(default_factory=dict)
    init_from: str | None = None          # FP32 weights to start from: a run folder, .safetensors or .pt/.pth; "auto"
    bits: tuple | None = (8, 6, 4, 2)     # the jointly trained bit set; None trains FP32
    method: str = "double_rounding"       # or a METHOD.md §7 baseline (labkit.quant.WEIGHT_METHODS): floor,
                                          # per_bit_scale, any_precision, lsq, ...
    rounding: str = "half_even"           # tie rule of the second rounding (METHOD.md §1 [open])
    grad_mode: str = "lsq"                # lsq | reference (METHOD.md §3)
    keep_first_last: bool = True          # first and last layer stay FP32 (METHOD.md §4)
    weight_init: str = "auto"             # auto (each method's own default) | max | reference (the authors' 3σ
                                          # rule, METHOD.md §3) | ... (labkit.quant.weight.SCALE_INITS)
    act_init: str = "lsq"                 # lsq | percentile (METHOD.md §3) | dorefa (Any-Precision: clamp to [0, 1],
                                          # fixed step 1/(2^b − 1), not learned)
    algorithm: str = "a2"                 # a2: one step per bit-width high→low (paper); a1: accumulate, one step
    alrs: str = "eq7"                     # eq7 (paper Eq. 7) | geometric (reference code) | none
    alrs_gradient_term: bool = False      # Eq. 6 gradient term, opt-in and floored above zero
    alrs_targets: str = "scales"          # scales (paper) | scales_bn_bias (reference code)
    alrs_scope: str = "paper"             # paper: ALRS for Double Rounding (and floor) only, every scale of the other
                                          # methods (per-bit scales, any_precision, lsq, matquant) at λ | all
    supernet_alrs: str = "one_lr"         # SuperNet stage: one_lr (Alg. A.3: every scale at λ) | sampled_bit
                                          # (each layer's factor keyed on the bit it was sampled at)
    weight_scale_update: str = "adam"     # adam (paper: plain Adam on s) | log (opt-in: Adam on log s, stays > 0)
    weight_scale_log_lr: float = 20.0     # with log: log-space rate = this × the scale group's rate (1 %/step at 5e-4)
    kd: str = "none"                      # none | pskd (progressive self-distillation) | recursive (Any-Precision:
                                          # each bit-width learns the next higher one's softmax)
    kd_alpha: float = 0.7
    optimizer: str = "adam"               # paper: Adam
    lr: float = 5e-4                      # paper: 5e-4
    weight_decay: float = 5e-5            # paper: 5e-5 (0 on scales, BN and biases)
    momentum: float = 0.9
    epochs: int = 200
    warmup_epochs: int = 0                # paper: no warm-up
    lr_schedule: str = "cosine"           # cosine (the recipes) | multistep (Any-Precision: ×0.1 at 50/75/90 %)
    batch_size: int = 128
    train_subset: int | None = None       # a fixed seeded subset of the training set (smoke / laptop profiles)
    eval_subset: int | None = None
    seed: int = 0
    workers: int | None = None            # data loader worker processes; None picks for this machine
    checkpoint_every: int = 0             # also write a checkpoint every N batches (0: at epoch ends only)
    eval_every: int = 1                   # evaluate every N epochs (and always after the last)
    deterministic: bool = True
    device: str = "auto"                  # auto | cpu | cuda
    amp_bf16: bool | None = False         # bf16 autocast; None: where the device has native bf16
                                          # (labkit.train.arithmetic), off elsewhere
    channels_last: bool | None = False    # None: off (labkit.train.arithmetic)
    compile_quant: bool | None = None     # None: the library default (labkit.quant.lsq "auto": torch.compile kernels for
                                          # training passes on the CPU where a compiler works, eager with one warning
                                          # line elsewhere; CUDA eager); True: compiled for every call; False: eager
                                          # fused (the same values, to float rounding)
    label_smoothing: float = 0.0
    image_size: int = 224                 # ImageNet-style data only
    supernet: str = "none"                # none | hasb (Hessian-aware roulette, Alg. 1) | uniform (no Hessian)
    supernet_from: str | None = None      # the multi-precision run (folder or INT checkpoint) the SuperNet starts from
    sigma: float = 0.5                    # SuperNet replacement rate σ (METHOD.md §6 [ref-code])
    sigma_warmup: int = 10                # SuperNet epochs with σ = 0 [ref-code]
    hessian_images: int = 1000            # images for the Hutchinson traces (METHOD.md §6)
    hessian_probes: int = 7               # at most this many Rademacher probes
    sensitivity_rule: str = "mean"        # mean (paper) | quantile | top_k: which layers count as sensitive
    sensitivity_q: float = 0.5            # the quantile of sensitivity_rule=quantile
    sensitivity_k: int = 6                # how many layers count as sensitive with sensitivity_rule=top_k

    def __post_init__(self):
        from labkit.quant import WEIGHT_METHODS
        from labkit.quant.weight import SCALE_INITS

        choices = {
            "dataset": ("cifar10", "imagenet", "imagenette"),
            "method": tuple(WEIGHT_METHODS),
            "rounding": ("half_even", "half_up"),
            "grad_mode": ("lsq", "reference"),
            "weight_init": tuple(SCALE_INITS),
            "act_init": ("lsq", "percentile", "dorefa"),
            "algorithm": ("a1", "a2"),
            "lr_schedule": ("cosine", "multistep"),
            "alrs": ("eq7", "geometric", "none"),
            "alrs_targets": ("scales", "scales_bn_bias"),
            "alrs_scope": ("paper", "all"),
            "supernet_alrs": ("one_lr", "sampled_bit"),
            "weight_scale_update": ("adam", "log"),
            "kd": ("none", "pskd", "recursive"),
            "optimizer": ("adam", "adamw", "sgd"),
            "device": ("auto", "cpu", "cuda"),
            "supernet": ("none", "hasb", "uniform"),
            "sensitivity_rule": ("mean", "quantile", "top_k"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name}={getattr(self, name)!r} is not one of {list(allowed)}")
        if self.bits is not None:
            from labkit.quant.ranges import check_bit_set

            self.bits = check_bit_set(self.bits)
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be at least 1")
        checks = [
            ("lr", math.isfinite(self.lr) and self.lr > 0, "a positive finite number"),
            ("weight_decay", math.isfinite(self.weight_decay) and self.weight_decay >= 0, "≥ 0"),
            ("momentum", 0 <= self.momentum < 1, "in [0, 1)"),
            ("kd_alpha", 0 <= self.kd_alpha <= 1, "in [0, 1]"),
            ("weight_scale_log_lr", math.isfinite(self.weight_scale_log_lr) and self.weight_scale_log_lr > 0,
             "a positive finite number"),
            ("label_smoothing", 0 <= self.label_smoothing < 1, "in [0, 1)"),
            ("train_subset", self.train_subset is None or self.train_subset >= 1, "≥ 1 or none (the whole set)"),
            ("eval_subset", self.eval_subset is None or self.eval_subset >= 1, "≥ 1 or none (the whole set)"),
            ("workers", self.workers is None or self.workers >= 0, "≥ 0 or none (chosen for this machine)"),
            ("checkpoint_every", self.checkpoint_every >= 0, "≥ 0 (0: at epoch ends only)"),
            ("eval_every", self.eval_every >= 1, "≥ 1"),
            ("warmup_epochs", 0 <= self.warmup_epochs <= self.epochs, "between 0 and epochs"),
            ("image_size", self.image_size >= 16, "≥ 16"),
            ("sigma", 0 <= self.sigma <= 1, "in [0, 1]"),
            ("sigma_warmup", self.supernet == "none" or 0 <= self.sigma_warmup < self.epochs, "in [0, epochs)"),
            ("hessian_images", self.hessian_images >= 1, "≥ 1"),
            ("hessian_probes", self.hessian_probes >= 1, "≥ 1"),
            ("supernet_from", self.supernet == "none" or self.bits is not None, "used with a bit set"),
            ("sensitivity_q", 0 <= self.sensitivity_q <= 1, "in [0, 1]"),
            ("sensitivity_k", self.sensitivity_k >= 1, "≥ 1"),
            ("bits", self.method != "lsq" or self.bits is None or len(self.bits) == 1,
             "a single bit-width with method=lsq (one dedicated model per bit-width)"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise ConfigError(f"{name}={getattr(self, name)!r} must be {expected}")

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["bits"] = list(self.bits) if self.bits is not None else None
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown setting(s) {unknown}; known settings: {sorted(known)}")
        data = dict(data)
        if data.get("bits") is not None:
            data["bits"] = tuple(data["bits"])
        return cls(**data)

    def with_overrides(self, overrides: dict) -> "TrainConfig":
        data = self.to_dict()
        data.update(overrides)
        return TrainConfig.from_dict(data)


def parse_override(text: str) -> tuple[str, object]:
    """``"key=value"`` → (key, typed value), typed by the field: ``epochs=3``, ``bits=8,4,2``, ``bits=none``."""
    key, sep, raw = text.partition("=")
    key = key.strip().replace("-", "_")
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    if not sep:
        raise ConfigError(f"override {text!r} is not key=value; e.g. epochs=5 or bits=8,6,4,2")
    if key not in fields:
        raise ConfigError(f"unknown setting {key!r}; known settings: {sorted(fields)}")
    raw = raw.strip()
    hint = typing.get_type_hints(TrainConfig)[key]
    args = typing.get_args(hint)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), hint)
    if optional and raw.lower() in ("none", "null", ""):
        return key, None
    try:
        if base is bool:
            if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return key, raw.lower() in ("true", "1", "yes")
        if base is int:
            return key, int(raw)
        if base is float:
            return key, float(raw)
        if base is tuple:
            return key, tuple(int(part) for part in raw.replace(" ", "").split(",") if part)
        if base is dict:
            value = json.loads(raw)
            if not isinstance(value, dict):
                raise ValueError
            return key, value
        return key, raw
    except ValueError:
        raise ConfigError(f"bad value {raw!r} for {key} (expects {getattr(base, '__name__', base)})") from None
