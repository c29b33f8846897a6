"""Named training recipes (METHOD.md §4) and the profiles that scale them (DESIGN.md runtime conventions).

A recipe is a :class:`TrainConfig` with the paper's settings (``paper`` profile) plus the overrides that
make it fit a smaller budget: ``smoke`` (CI: a subset, one short epoch, seconds to minutes on 2 CPU cores)
and ``laptop`` (minutes to an hour on a CPU, numbers that mean something). Command-line overrides apply last.

``long`` (CIFAR-10 recipes only; ``labkit train --profile long``) is the budget of the shipped CIFAR-10 models:
all 50,000 training images, bf16 autocast where the device computes bf16 natively (about 2× the plain FP32 step
on a CPU with AVX-512 BF16; ``labkit.train.arithmetic``; the shipped stages also ran channels_last, which auto now
leaves off; the fake-quant stays in fp32 and evaluation runs in fp32), label smoothing 0.1, and as many epochs
as one CPU core trains in about an hour per stage: FP32 30 epochs (SGD 0.1, cosine, one warm-up epoch), then the
joint runs from that FP32 model at the paper's Adam 5e-4 with a cosine schedule, {8,6,4,2} 6 epochs and {4,3,2}
5 epochs (the paper trains 200). Each stage is resumable (``--resume``).

ALRS (METHOD.md §5) in the recipes, decided by :func:`labkit.train.alrs.alrs_rule_for`:

- The joint recipes train Double Rounding with Eq. 7 (``alrs="eq7"``) on the quantization scales. The
  truncation ablation ``method=floor`` keeps it: it is the same quantizer with one shared weight scale and only
  the second rounding changed, so the two rows differ in the rounding alone.
- A baseline with separate per-bit scales or from another paper (``method=per_bit_scale``, ``any_precision``,
  ``lsq``, ``matquant``) trains **every scale at λ, with no η_b** (``alrs_scope="paper"``, the default), as
  MultiQuant / LSQ / Any-Precision users train theirs: ALRS protects one scale shared by every precision
  from the low-bit gradients, and a separate per-bit scale has nothing to be protected from; with η_2 = 0.001
  its 2-bit weight scale would move 5e-7 per Adam step and barely train. ``alrs_scope=all`` applies ALRS to
  every method anyway (an ablation).
- The SuperNet recipes (``cifar10-resnet20-hasb``, ``-uniform``) follow Alg. A.3 at the paper profile: one λ for
  every parameter (``supernet_alrs="one_lr"``). The short smoke and laptop fine-tunes use
  ``supernet_alrs=sampled_bit`` at λ/10 (measured: one λ collapsed the 2-bit model, ``_SUPERNET_FINE_TUNE``), which
  keys each layer's factor on the bit it was sampled at in the pass (a layer sampled at 8 bits in the 2-bit pass
  trains its scales at λ·η_8 = λ).
"""
from __future__ import annotations

from labkit.config import ConfigError
from labkit.train.config import TrainConfig

PROFILES = ("smoke", "laptop", "long", "paper")

_CIFAR_SCALE = {
    "smoke": {"epochs": 1, "train_subset": 2560, "eval_subset": 1000, "batch_size": 128},
    "laptop": {"epochs": 3, "train_subset": 20000, "eval_subset": None},
    "paper": {},
}
# The shipped CIFAR-10 models' budget (module docstring). bf16 autocast where the device computes bf16 natively
# (None = auto, labkit.train.arithmetic), plain fp32 elsewhere.
_CIFAR_LONG = {"train_subset": None, "eval_subset": None, "label_smoothing": 0.1, "amp_bf16": None,
               "channels_last": None, "checkpoint_every": 50, "eval_every": 2}
_CIFAR_LONG_FP32 = dict(_CIFAR_LONG, epochs=30, warmup_epochs=1, checkpoint_every=100, eval_every=3)
_IMAGENET_SCALE = {
    "smoke": {"epochs": 1, "train_subset": 64, "eval_subset": 64, "batch_size": 32, "image_size": 128},
    "laptop": {"epochs": 1, "train_subset": 2048, "eval_subset": 1000, "batch_size": 64},
    "paper": {},
}

_CIFAR_JOINT = dict(dataset="cifar10", model="resnet20", optimizer="adam", lr=5e-4, weight_decay=5e-5,
                    epochs=200, batch_size=128, init_from="auto")

RECIPES: dict[str, dict] = {
    "cifar10-resnet20-fp32": {
        "base": dict(dataset="cifar10", model="resnet20", bits=None, optimizer="sgd", lr=0.1, weight_decay=5e-4,
                     epochs=200, batch_size=128),
        "profiles": {**_CIFAR_SCALE, "laptop": {"epochs": 15, "train_subset": None, "eval_subset": None},
                     "long": _CIFAR_LONG_FP32},
        "about": "FP32 CIFAR-10 ResNet-20, the pretrained starting point of the joint runs (SGD, cosine).",
    },
    "cifar10-resnet20": {
        "base": dict(_CIFAR_JOINT, bits=(8, 6, 4, 2)),
        "profiles": {**_CIFAR_SCALE, "long": dict(_CIFAR_LONG, epochs=6)},
        "about": "Paper Table 4: ResNet-20 {8,6,4,2}, Double Rounding + ALRS, Alg. A.2, Adam 5e-4, 200 epochs.",
    },
    "cifar10-resnet20-432": {
        "base": dict(_CIFAR_JOINT, bits=(4, 3, 2)),
        "profiles": {**_CIFAR_SCALE, "long": dict(_CIFAR_LONG, epochs=5)},
        "about": "Paper Table 4: ResNet-20 {4,3,2}, Double Rounding + ALRS, Alg. A.2.",
    },
    "imagenet-resnet18": {
        "base": dict(dataset="imagenet", model="resnet18", bits=(8, 6, 4, 2), optimizer="adam", lr=5e-4,
                     weight_decay=5e-5, epochs=90, batch_size=256, init_from="auto"),
        "profiles": _IMAGENET_SCALE,
        "about": "Paper ImageNet recipe: ResNet-18 {8,6,4,2} from pretrained FP32, Adam 5e-4, wd 5e-5, cosine, 90 epochs.",
    },
    "imagenet-resnet50": {
        "base": dict(dataset="imagenet", model="resnet50", bits=(8, 6, 4, 2), optimizer="adam", lr=5e-4,
                     weight_decay=5e-5, epochs=90, batch_size=256, init_from="auto"),
        "profiles": _IMAGENET_SCALE,
        "about": "Paper ImageNet recipe for ResNet-50 {8,6,4,2}.",
    },
    "imagenet-mobilenetv2": {
        "base": dict(dataset="imagenet", model="mobilenet_v2", bits=(8, 6, 4, 2), optimizer="adam", lr=5e-4,
                     weight_decay=5e-5, epochs=90, batch_size=256, init_from="auto"),
        "profiles": _IMAGENET_SCALE,
        "about": "Paper ImageNet recipe for MobileNetV2 {8,6,4,2} (signed activation quantizers where inputs can be negative).",
    },
    "imagenette-efficientnet-lite0": {
        "base": dict(dataset="imagenette", model="efficientnet_lite0", bits=(8, 6, 4, 2), optimizer="adam", lr=1e-4,
                     weight_decay=5e-5, epochs=10, batch_size=64, init_from=None),
        "profiles": {**_IMAGENET_SCALE,
                     "laptop": {"epochs": 1, "train_subset": 512, "eval_subset": 500, "batch_size": 32}},
        "about": ("ImageNet-pretrained EfficientNet-Lite0 quantized jointly {8,6,4,2}, fine-tuned on Imagenette; "
                  "evaluated per bit-width on Imagenette val and 1,300 ILSVRC2012 val images (1000-class labels)."),
    },
}


_SUPERNET = dict(_CIFAR_JOINT, bits=(8, 6, 4, 2), supernet_from="auto", epochs=60, sigma=0.5, sigma_warmup=10)
#: The short SuperNet fine-tunes (smoke, laptop) start from a converged joint model, so they run at λ/10 with each
#: layer's scales at λ·η_b for the bit it was sampled at (``supernet_alrs="sampled_bit"``), the joint stage's
#: ALRS. Alg. A.3 as printed (one λ = 5e-4 for every parameter, the paper profile) wrecked the 2-bit model in
#: three laptop epochs: the per-channel weight scales are about 1e-3 and a fresh Adam moves each by about λ per
#: pass. Measured from the shipped `cifar10-resnet20` (2-bit 79.5 %), HASB seed 0, 2-bit test accuracy after the
#: σ = 0 warm-up epoch: 24.5 % (one λ at 5e-4), 41.6 % (sampled_bit at 5e-4), 75.9 % (sampled_bit at 5e-5);
#: the three seeds at each setting are in docs/results/hasb-seeds*/ (RESULTS.md).
_SUPERNET_FINE_TUNE = {"lr": 5e-5, "supernet_alrs": "sampled_bit"}
_SUPERNET_SCALE = {
    "smoke": {"epochs": 2, "sigma_warmup": 1, "train_subset": 1024, "eval_subset": 500, "hessian_images": 64,
              "hessian_probes": 2, **_SUPERNET_FINE_TUNE},
    "laptop": {"epochs": 3, "sigma_warmup": 1, "train_subset": 10000, "eval_subset": None, "hessian_images": 256,
               "hessian_probes": 3, **_SUPERNET_FINE_TUNE},
    "paper": {},
}
RECIPES["cifar10-resnet20-hasb"] = {
    "base": dict(_SUPERNET, supernet="hasb"),
    "profiles": _SUPERNET_SCALE,
    "about": ("HASB SuperNet (Alg. A.3): from a {8,6,4,2} run, Transitional BN, Hessian-aware roulette bit "
              "replacement with σ_e, one λ for every parameter (no ALRS factors, as Alg. A.3; the smoke and laptop "
              "fine-tunes: λ/10 and the sampled bit's ALRS factor); 60 epochs with 10 warm-up (the paper does not "
              "state the count)."),
}
RECIPES["cifar10-resnet20-uniform"] = {
    "base": dict(_SUPERNET, supernet="uniform"),
    "profiles": _SUPERNET_SCALE,
    "about": "The no-Hessian baseline of HASB: the same SuperNet training with uniform bit sampling.",
}


#: Every recipe's arithmetic at the laptop, long and paper profiles: bf16 autocast where the device computes bf16
#: natively (labkit.train.arithmetic), fp32 elsewhere. Kept because it was measured not to change accuracy at this
#: lab's resolution: the suite's 8642-alrs-a2-bf16 against 8642-alrs-a2, 3 paired seeds, differences -0.17 [-0.91,
#: +0.56], -0.15 [-1.23, +0.93], -0.24 [-1.12, +0.65], +0.28 [-1.57, +2.13] points at 8/6/4/2 bits (95 %
#: intervals, none resolved); a joint epoch took 641 s instead of 1371 s side by side (benchmarks/results.json,
#: 1 thread). The smoke profile keeps fp32, so CI's seeded results
#: are the same on every CPU; the reproduction suite pins fp32 too (labkit.reproduction.SUITE_BUDGET).
#: ``compile_quant=None`` (TrainConfig's default, the library's "auto" path): the fake-quant forward and backward of
#: the training passes on the CPU run as torch.compile kernels where a compiler works, CUDA stays eager for now
#: (labkit.quant.lsq; the eager fused path's values to float rounding, tests/test_fake_quant_paths.py), after a warm-up of a
#: few seconds per process; where none works, one warning line and the eager path. Through JointTrainer it took the joint {8,6,4,2} step from 1.23 (eager fused)
#: to 1.17 × four FP32 steps, side by side (1 thread, quiet machine, 2026-12-01, benchmarks/results.json).
FAST_ARITHMETIC = {"amp_bf16": None, "channels_last": None, "compile_quant": None}

#: The smoke profile: fp32 and the eager fused fake-quant. Its runs last seconds, so the compile warm-up costs more
#: than it saves: `labkit train --recipe cifar10-resnet20 --profile smoke` took 26.3 and 28.3 s eager against 32.4 and
#: 28.6 s with compile_quant=none (warm inductor cache; 2 threads, AMD EPYC, 2026-12-01), with the same metrics; and
#: fp32 keeps CI's seeded results the same on every CPU.
SMOKE_ARITHMETIC = {"amp_bf16": False, "channels_last": False, "compile_quant": False}


def list_recipes() -> list[str]:
    return sorted(RECIPES)


def recipe_config(name: str, profile: str = "laptop", overrides: dict | None = None) -> TrainConfig:
    """The :class:`TrainConfig` of recipe ``name`` at ``profile``, with ``overrides`` applied last."""
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; known recipes: {', '.join(list_recipes())}")
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}; use one of {list(PROFILES)}")
    recipe = RECIPES[name]
    if profile == "long" and "long" not in recipe["profiles"]:
        with_long = ", ".join(n for n in list_recipes() if "long" in RECIPES[n]["profiles"])
        raise ConfigError(f"recipe {name!r} has no 'long' profile (only {with_long} do); use smoke, laptop or paper")
    data = dict(recipe["base"], recipe=name)
    # the fast arithmetic where the device has it (FAST_ARITHMETIC); smoke stays bit-stable and eager
    data.update(SMOKE_ARITHMETIC if profile == "smoke" else FAST_ARITHMETIC)
    data.update(recipe["profiles"].get(profile, {}))
    config = TrainConfig.from_dict(data)
    return config.with_overrides(overrides) if overrides else config
