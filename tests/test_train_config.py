"""Training settings: ``parse_override`` typing and errors, TrainConfig validation, recipes × profiles."""
import dataclasses
import json

import pytest

from labkit.config import ConfigError
from labkit.errors import BitWidthError, LabkitError
from labkit.train import PROFILES, RECIPES, TrainConfig, list_recipes, recipe_config
from labkit.train.config import parse_override


# ------------------------------------------------------------------------------------------ parse_override
@pytest.mark.parametrize("text, expected", [
    ("epochs=3", ("epochs", 3)),
    ("batch_size=64", ("batch_size", 64)),
    ("batch-size=64", ("batch_size", 64)),          # dashes are accepted for underscores
    (" seed = 7 ", ("seed", 7)),
    ("lr=1e-3", ("lr", 1e-3)),
    ("lr=0.5", ("lr", 0.5)),
    ("weight_decay=0", ("weight_decay", 0.0)),
    ("deterministic=false", ("deterministic", False)),
    ("deterministic=True", ("deterministic", True)),
    ("amp_bf16=1", ("amp_bf16", True)),
    ("amp_bf16=no", ("amp_bf16", False)),
    ("bits=8,6,4,2", ("bits", (8, 6, 4, 2))),
    ("bits=8, 4 ,2", ("bits", (8, 4, 2))),
    ("bits=4", ("bits", (4,))),
    ("bits=none", ("bits", None)),
    ("bits=None", ("bits", None)),
    ("train_subset=none", ("train_subset", None)),
    ("train_subset=512", ("train_subset", 512)),
    ("workers=null", ("workers", None)),
    ("init_from=none", ("init_from", None)),
    ("init_from=runs/fp32", ("init_from", "runs/fp32")),
    ("algorithm=a1", ("algorithm", "a1")),
    ('model_kwargs={"num_classes": 100, "width": 2}', ("model_kwargs", {"num_classes": 100, "width": 2})),
    ("model_kwargs={}", ("model_kwargs", {})),
])
def test_parse_override_types_values_by_field(text, expected):
    key, value = parse_override(text)
    assert (key, value) == expected
    assert type(value) is type(expected[1])


@pytest.mark.parametrize("text, words", [
    ("epohcs=3", ["unknown setting", "epohcs", "epochs"]),     # known settings listed
    ("epochs", ["key=value"]),
    ("epochs=three", ["bad value", "epochs", "int"]),
    ("epochs=2.5", ["bad value", "epochs"]),
    ("lr=fast", ["bad value", "lr", "float"]),
    ("deterministic=maybe", ["bad value", "deterministic", "bool"]),
    ("bits=8,four", ["bad value", "bits"]),
    ("model_kwargs=[1, 2]", ["bad value", "model_kwargs", "dict"]),
    ("model_kwargs={not json", ["bad value", "model_kwargs"]),
])
def test_parse_override_errors_are_one_line_config_errors(text, words):
    with pytest.raises(ConfigError) as info:
        parse_override(text)
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message
    assert isinstance(info.value, LabkitError)


# --------------------------------------------------------------------------------------- TrainConfig checks
@pytest.mark.parametrize("settings, error, word", [
    ({"algorithm": "a3"}, ConfigError, "algorithm"),
    ({"alrs": "eq6"}, ConfigError, "alrs"),
    ({"kd": "teacher"}, ConfigError, "kd"),
    ({"optimizer": "lamb"}, ConfigError, "optimizer"),
    ({"dataset": "mnist"}, ConfigError, "dataset"),
    ({"method": "round"}, ConfigError, "method"),
    ({"device": "tpu"}, ConfigError, "device"),
    ({"bits": (1,)}, BitWidthError, "bits"),
    ({"bits": (8, 1)}, BitWidthError, "bits"),
    ({"bits": ()}, BitWidthError, "empty"),
    ({"bits": (8, 20)}, BitWidthError, "bits"),
    ({"epochs": 0}, ConfigError, "epochs"),
    ({"batch_size": 0}, ConfigError, "batch_size"),
    ({"lr": 0.0}, ConfigError, "lr"),
    ({"lr": -1e-3}, ConfigError, "lr"),
])
def test_train_config_rejects_bad_settings_with_labkit_errors(settings, error, word):
    with pytest.raises(error) as info:
        TrainConfig(**settings)
    assert isinstance(info.value, LabkitError)
    assert word in str(info.value)
    assert "\n" not in str(info.value)


# Settings that make no sense and are accepted silently today (each is a bug report; see the ids):
# lr=nan/inf would train on NaN; train_subset=0 silently means "the whole training set" (`or` in loop.py);
# eval_subset=0 evaluates on no images and reports 0 %; a negative checkpoint_every writes a checkpoint every
# batch; negative weight decay / momentum and kd_alpha outside [0, 1] are not meaningful; workers=-1 fails late
# inside the DataLoader.
@pytest.mark.parametrize("settings", [
    {"lr": float("nan")},
    {"lr": float("inf")},
    {"train_subset": 0},
    {"train_subset": -3},
    {"eval_subset": 0},
    {"checkpoint_every": -1},
    {"weight_decay": -1.0},
    {"kd_alpha": 1.5},
    {"workers": -1},
], ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()))
def test_train_config_rejects_meaningless_values(settings):
    with pytest.raises(LabkitError):
        TrainConfig(**settings)


def test_bits_are_normalised_high_to_low_without_repeats():
    assert TrainConfig(bits=(2, 8, 4, 8)).bits == (8, 4, 2)
    assert TrainConfig(bits=None).bits is None


def test_to_dict_from_dict_round_trip_through_json():
    config = TrainConfig(bits=(4, 3, 2), model_kwargs={"num_classes": 10}, train_subset=128, kd="pskd")
    data = json.loads(json.dumps(config.to_dict()))
    assert data["bits"] == [4, 3, 2]
    again = TrainConfig.from_dict(data)
    assert again == config
    assert TrainConfig.from_dict(TrainConfig(bits=None).to_dict()).bits is None


def test_from_dict_rejects_unknown_settings_one_line():
    with pytest.raises(ConfigError, match="unknown setting") as info:
        TrainConfig.from_dict({"epochs": 3, "epoch": 4})
    assert "'epoch'" in str(info.value) and "\n" not in str(info.value)


def test_with_overrides_returns_a_validated_copy():
    base = TrainConfig()
    changed = base.with_overrides({"epochs": 3, "bits": (2, 4)})
    assert (changed.epochs, changed.bits) == (3, (4, 2))
    assert base.epochs == 200 and base.bits == (8, 6, 4, 2), "the original is not modified"
    with pytest.raises(ConfigError):
        base.with_overrides({"algorithm": "a9"})


# --------------------------------------------------------------------------------------------- recipes
@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_recipe_builds_at_every_profile(name, profile):
    if profile == "long" and "long" not in RECIPES[name]["profiles"]:
        with pytest.raises(ConfigError, match="has no 'long' profile"):
            recipe_config(name, profile)
        return
    config = recipe_config(name, profile)
    assert isinstance(config, TrainConfig)
    assert config.recipe == name
    base = RECIPES[name]["base"]
    scale = RECIPES[name]["profiles"].get(profile, {})
    for key, value in {**base, **scale}.items():
        got = getattr(config, key)
        if key == "bits" and value is not None:
            value = tuple(sorted(set(value), reverse=True))
        assert got == value, f"{name}@{profile}: {key}={got!r}, recipe says {value!r}"
    assert RECIPES[name]["about"].strip()


def test_recipe_names_are_listed_sorted():
    assert list_recipes() == sorted(RECIPES)
    assert {"cifar10-resnet20", "cifar10-resnet20-432", "cifar10-resnet20-fp32"} <= set(list_recipes())


def test_paper_recipe_values_follow_method_md():
    # METHOD.md §4: Adam, lr 5e-4, wd 5e-5, CIFAR-10 ResNet-20 200 epochs batch 128, ImageNet 90 epochs batch 256.
    c = recipe_config("cifar10-resnet20", "paper")
    assert (c.optimizer, c.lr, c.weight_decay, c.epochs, c.batch_size) == ("adam", 5e-4, 5e-5, 200, 128)
    assert (c.bits, c.algorithm, c.alrs, c.warmup_epochs) == ((8, 6, 4, 2), "a2", "eq7", 0)
    assert recipe_config("cifar10-resnet20-432", "paper").bits == (4, 3, 2)
    i = recipe_config("imagenet-resnet18", "paper")
    assert (i.optimizer, i.lr, i.weight_decay, i.epochs, i.batch_size) == ("adam", 5e-4, 5e-5, 90, 256)
    assert recipe_config("cifar10-resnet20-fp32", "paper").bits is None


def test_recipe_config_applies_profile_then_overrides():
    smoke = recipe_config("cifar10-resnet20", "smoke")
    assert smoke.epochs == 1 and smoke.train_subset == 2560
    over = recipe_config("cifar10-resnet20", "smoke", {"epochs": 3, "bits": (4, 2)})
    assert over.epochs == 3, "the override wins over the profile"
    assert over.bits == (4, 2), "the override wins over the recipe"
    assert over.train_subset == 2560, "the profile value the override does not touch stays"
    assert over.lr == 5e-4, "the recipe value neither touches stays"
    # an override can also clear a profile value
    assert recipe_config("cifar10-resnet20", "smoke", {"train_subset": None}).train_subset is None


def test_recipe_config_errors():
    with pytest.raises(ConfigError, match="unknown recipe") as info:
        recipe_config("cifar100-resnet20", "smoke")
    assert "cifar10-resnet20" in str(info.value), "the error lists the known recipes"
    with pytest.raises(ConfigError, match="profile"):
        recipe_config("cifar10-resnet20", "huge")
    with pytest.raises(ConfigError, match="unknown setting"):
        recipe_config("cifar10-resnet20", "smoke", {"epoch": 3})
    with pytest.raises(BitWidthError):
        recipe_config("cifar10-resnet20", "smoke", {"bits": (1,)})


def test_every_field_can_be_overridden_from_its_own_to_dict_text():
    """Each setting's value, written the way a user would type it, parses back to the same value."""
    config = recipe_config("cifar10-resnet20", "smoke")
    for f in dataclasses.fields(TrainConfig):
        value = getattr(config, f.name)
        if value is None:
            text = "none"
        elif isinstance(value, tuple):
            text = ",".join(str(v) for v in value)
        elif isinstance(value, dict):
            text = json.dumps(value)
        else:
            text = str(value)
        key, parsed = parse_override(f"{f.name}={text}")
        assert key == f.name and parsed == value, f"{f.name}={text!r} parsed as {parsed!r}"


def test_long_profile_trains_the_shipped_cifar_models_on_every_image():
    """The long budget (issue 12): full training set, FP32 30 epochs with warm-up, joint runs from FP32."""
    fp32 = recipe_config("cifar10-resnet20-fp32", "long")
    assert (fp32.epochs, fp32.warmup_epochs, fp32.train_subset, fp32.bits) == (30, 1, None, None)
    assert fp32.amp_bf16 is None and fp32.channels_last is None and fp32.label_smoothing == 0.1  # auto
    joint, low = recipe_config("cifar10-resnet20", "long"), recipe_config("cifar10-resnet20-432", "long")
    assert (joint.bits, joint.epochs, joint.train_subset, joint.lr) == ((8, 6, 4, 2), 6, None, 5e-4)
    assert (low.bits, low.epochs, low.init_from) == ((4, 3, 2), 5, "auto")


def test_recipes_use_the_fast_arithmetic_except_at_the_smoke_profile():
    """Issue 11 item 2: bf16 where the device has it is every recipe's default (auto), except smoke (CI stays
    bit-stable on every CPU); the suite rows pin fp32."""
    from labkit.reproduction import SUITE_BUDGET

    for name in list_recipes():
        smoke = recipe_config(name, "smoke")
        assert (smoke.amp_bf16, smoke.channels_last, smoke.compile_quant) == (False, False, False), name
        for profile in ("laptop", "paper"):  # compiled fake-quant where a compiler works
            config = recipe_config(name, profile)
            assert (config.amp_bf16, config.channels_last, config.compile_quant) == (None, None, None), (name, profile)
    assert parse_override("compile_quant=none") == ("compile_quant", None)
    assert (SUITE_BUDGET["amp_bf16"], SUITE_BUDGET["channels_last"]) == (False, False)
    assert recipe_config("cifar10-resnet20", "laptop", SUITE_BUDGET).amp_bf16 is False
