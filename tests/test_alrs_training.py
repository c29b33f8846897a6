"""ALRS inside the training loop (METHOD.md §4–5, issue 10 items 2, 3a, 4, 9), measured through the optimizer.

References used here, none computed by ``labkit/train``:
- Adam's first update of a parameter is ``−lr · m̂/(√v̂ + ε) = −lr · g/(|g| + ε)``, so a freshly stepped parameter
  moves by ``lr`` per element (for ``|g| ≫ ε``): a measured step size *is* the learning rate it got.
- η_b as METHOD.md §5 prints it ({8,4,2}: 1, 0.01, 0.001).
- Eq. 6's ``G_b`` worked out by hand from gradients the test itself forces (gradient hooks).
"""
import copy

import pytest
import torch

import labkit
from labkit.convert import set_bits
from labkit.train import JointTrainer, TrainConfig
from test_train_loop import NUM_CLASSES, RandomImages, TinyNet, first_batch, make_trainer

ETA = {8: 1.0, 4: 0.01, 2: 0.001}
LR = 5e-4


def quantized_tiny(bits=(8, 4, 2), method="double_rounding", seed=0):
    """The tiny two-quantized-layer net in float64, so a step of η_2·λ = 5e-7 is resolved exactly."""
    torch.manual_seed(seed)
    model = labkit.quantize_model(TinyNet(), bits, method, example_input=torch.randn(2, 3, 16, 16)).double()
    with torch.no_grad():  # every activation scale initialised before snapshots
        for b in bits:
            set_bits(model, b)
            model(first_batch()[0].double())
    return model


def adam_step_sizes(trainer, name):
    """|Δ| of parameter ``name`` over one training batch (float64)."""
    param = dict(trainer.model.named_parameters())[name]
    before = param.detach().clone()
    images, labels, indices = first_batch()
    trainer.train_step(images.double(), labels, indices, epoch=0)
    return (param.detach() - before).abs()


# ------------------------------------------------------------------------- item 2: who gets ALRS (scope)
@pytest.mark.parametrize("method, scope, expected", [
    ("double_rounding", "paper", "eq7"), ("floor", "paper", "eq7"), ("per_bit_scale", "paper", "none"),
    ("any_precision", "paper", "none"), ("lsq", "paper", "none"), ("matquant", "paper", "none"),
    ("per_bit_scale", "all", "eq7"),
])
def test_alrs_applies_to_the_papers_method_only(method, scope, expected):
    from labkit.train.alrs import alrs_rule_for

    assert alrs_rule_for(method, "eq7", scope) == expected


def test_per_bit_scale_2bit_weight_scale_steps_at_lambda_not_eta2_lambda(tmp_path):
    """MultiQuant / "Ours*": the separate 2-bit weight scale is trained at λ (its first Adam step moves it by λ)."""
    trainer = make_trainer(tmp_path, model=quantized_tiny(method="per_bit_scale"), method="per_bit_scale", lr=LR)
    param = dict(trainer.model.named_parameters())["conv2.weight_quantizer.scale.2"]
    moved = adam_step_sizes(trainer, "conv2.weight_quantizer.scale.2")
    assert param.grad is not None
    stepped = moved[moved > 0]
    assert stepped.numel() >= moved.numel() // 2
    assert stepped.median() == pytest.approx(LR, rel=1e-2), f"moved {stepped.median():.3g}, η_2·λ = {ETA[2] * LR:.3g}"


def test_per_bit_scale_with_scope_all_gets_eta(tmp_path):
    trainer = make_trainer(tmp_path, model=quantized_tiny(method="per_bit_scale"), method="per_bit_scale", lr=LR,
                           alrs_scope="all")
    moved = adam_step_sizes(trainer, "conv2.weight_quantizer.scale.2")
    assert moved[moved > 0].median() == pytest.approx(ETA[2] * LR, rel=1e-2)


def test_any_precision_activation_scales_step_at_lambda(tmp_path):
    trainer = make_trainer(tmp_path, model=quantized_tiny(method="any_precision"), method="any_precision", lr=LR)
    moved = adam_step_sizes(trainer, "conv2.act_quantizer.scale.2")
    assert float(moved) == pytest.approx(LR, rel=1e-2)


def test_double_rounding_2bit_activation_scale_still_gets_eta(tmp_path):
    trainer = make_trainer(tmp_path, model=quantized_tiny(), lr=LR)
    moved = adam_step_sizes(trainer, "conv2.act_quantizer.scale.2")
    assert float(moved) == pytest.approx(ETA[2] * LR, rel=1e-2)


# --------------------------------------------------------------------- item 3a: A.1 gets per-precision rates
@pytest.mark.parametrize("name, eta_bit", [("conv2.act_quantizer.scale.2", 2), ("conv3.act_quantizer.scale.4", 4),
                                           ("conv2.act_quantizer.scale.8", 8)])
def test_a1_per_bit_activation_scale_step_is_eta_b_lambda_like_a2(tmp_path, name, eta_bit):
    """Under Adam, A.1's one step must still give the 2-bit activation scale a step of η_2·λ, as A.2 does."""
    model = quantized_tiny()
    moves = {}
    for algorithm in ("a1", "a2"):
        trainer = make_trainer(tmp_path / algorithm, model=copy.deepcopy(model), algorithm=algorithm, lr=LR)
        moves[algorithm] = float(adam_step_sizes(trainer, name))
    assert moves["a1"] == pytest.approx(ETA[eta_bit] * LR, rel=1e-2), moves
    assert moves["a1"] == pytest.approx(moves["a2"], rel=1e-2), moves


def test_a1_per_bit_bn_steps_at_eta_with_scales_bn_bias(tmp_path):
    trainer = make_trainer(tmp_path, model=quantized_tiny(), algorithm="a1", lr=LR, alrs_targets="scales_bn_bias")
    moved = adam_step_sizes(trainer, "bn2.per_bit.2.weight")
    assert moved.median() == pytest.approx(ETA[2] * LR, rel=1e-2)


def test_a1_shared_weight_scale_steps_at_about_lambda(tmp_path):
    """The documented A.1 behaviour: the shared weight scale's gradient is Σ η_b ∇_b, its Adam step ≈ λ."""
    trainer = make_trainer(tmp_path, model=quantized_tiny(), algorithm="a1", lr=LR)
    moved = adam_step_sizes(trainer, "conv2.weight_quantizer.scale")
    assert moved[moved > 0].median() == pytest.approx(LR, rel=1e-2)


# ------------------------------------------------------------------------------ item 4: Eq. 6's G_b by hand
def force_gradients(model, values: dict[str, torch.Tensor | float]):
    params = dict(model.named_parameters())
    for name, value in values.items():
        param = params[name]
        target = (value if isinstance(value, torch.Tensor) else torch.full_like(param, value)).to(param.dtype)
        param.register_hook(lambda grad, target=target: target.clone())


@pytest.mark.parametrize("algorithm", ["a2", "a1"])
def test_eq6_gradient_term_averages_the_layers_weight_scales_only(tmp_path, algorithm):
    model = quantized_tiny()
    width = model.conv2.weight.shape[0]
    conv2 = torch.zeros(width, dtype=torch.float64)
    conv2[0], conv2[1] = 0.3, -2.0                  # clip to [−1, 1], max |.| → 1.0
    forced = {"conv2.weight_quantizer.scale": conv2, "conv3.weight_quantizer.scale": 0.25}
    for b in (8, 4, 2):                             # activation scales must not enter G_b
        forced[f"conv2.act_quantizer.scale.{b}"] = 0.9
        forced[f"conv3.act_quantizer.scale.{b}"] = 0.9
    force_gradients(model, forced)
    trainer = make_trainer(tmp_path, model=model, algorithm=algorithm, lr=LR, alrs_gradient_term=True)
    images, labels, indices = first_batch()
    trainer.train_step(images.double(), labels, indices, epoch=0)
    hand = (1.0 + 0.25) / 2                         # L = 2 quantized layers
    assert trainer.alrs.last_term == pytest.approx({8: hand, 4: hand, 2: hand}, rel=1e-6)
    assert trainer.alrs.multiplier(2, [conv2, torch.full((width,), 0.25)]) == pytest.approx(ETA[2] * (1 - hand))


# ------------------------------------------------------------------------------ item 9: the SuperNet stage
class MixedSampler:
    """conv2 always at 8 bits, conv3 at the pass's default bit."""

    def __call__(self, default_bits, epoch, batch):
        return {"conv2": 8, "conv3": default_bits}


def supernet_trainer(tmp_path, **settings):
    model = quantized_tiny()
    options = dict(bits=(8, 4, 2), batch_size=8, epochs=1, workers=0, device="cpu", init_from=None, lr=LR)
    options.update(settings)
    return JointTrainer(model, TrainConfig(**options), RandomImages(16, seed=1), {"test": RandomImages(8, seed=2)},
                        tmp_path, NUM_CLASSES, show_progress=False, bit_sampler=MixedSampler())


def record_all_rates(trainer):
    record = []
    trainer.optimizer.register_step_pre_hook(lambda opt, a, k: record.append(
        (trainer.model.conv3.bits, {(g["name"], g["bits"], g["layer"]): g["lr"] for g in opt.param_groups})))
    return record


def test_supernet_default_is_one_lambda_alg_a3(tmp_path):
    trainer = supernet_trainer(tmp_path)
    record = record_all_rates(trainer)
    images, labels, indices = first_batch()
    trainer.train_step(images.double(), labels, indices, epoch=0)
    assert len(record) == 3
    for _, rates in record:
        assert all(rate == pytest.approx(LR) for rate in rates.values()), rates


def test_supernet_sampled_bit_keys_each_layers_factor_on_its_sampled_bit(tmp_path):
    trainer = supernet_trainer(tmp_path, supernet_alrs="sampled_bit")
    record = record_all_rates(trainer)
    images, labels, indices = first_batch()
    trainer.train_step(images.double(), labels, indices, epoch=0)
    assert [b for b, _ in record] == [8, 4, 2]
    for b, rates in record:
        # conv2 ran at 8 bits in every pass: its shared weight scale at λ·η_8 = λ, not λ·η_b.
        assert rates[("scales", None, "conv2")] == pytest.approx(LR)
        assert rates[("scales", None, "conv3")] == pytest.approx(LR * ETA[b])
        assert rates[("scales", 8, None)] == pytest.approx(LR)
        assert rates[("scales", b, None)] == pytest.approx(LR * ETA[b])
        assert rates[("weights", None, None)] == pytest.approx(LR)
    # measured: conv2's 8-bit activation scale stepped in the 2-bit pass at λ, not 0.001·λ
    assert trainer.optimizer.state[trainer.model.conv2.act_quantizer.scale["8"]]["step"] == 3


def test_supernet_recipe_follows_alg_a3_by_default():
    from labkit.train.alrs import alrs_rule_for
    from labkit.train.recipes import recipe_config

    for name in ("cifar10-resnet20-hasb", "cifar10-resnet20-uniform"):
        config = recipe_config(name, "paper")  # Alg. A.3 as printed: one λ for every parameter
        assert (config.supernet_alrs, config.lr) == ("one_lr", 5e-4)
        assert alrs_rule_for(config.method, config.alrs, config.alrs_scope, True, config.supernet_alrs) == "none"
        for profile in ("smoke", "laptop"):  # the short fine-tunes: λ/10, the sampled bit's ALRS factor (measured)
            config = recipe_config(name, profile)
            assert (config.supernet_alrs, config.lr) == ("sampled_bit", 5e-5)
            assert alrs_rule_for(config.method, config.alrs, config.alrs_scope, True, config.supernet_alrs) == "eq7"
