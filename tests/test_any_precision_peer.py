"""Any-Precision DNN's own recipe as a peer row (issue 12 item 4), against references written out here.

What its authors do (``SHI-Labs/Any-Precision-DNNs``: ``train.py``, ``train_cifar10.sh``, ``models/quan_ops.py``,
``models/resnet_quan.py``, ``models/losses.py``): activations clamped to [0, 1] and rounded to ``2^b − 1`` steps;
per batch the top bit-width on the hard label, then high → low each bit-width on the softmax of the next higher
one's logits (no hard label), the gradients summed and one Adam step; Adam 1e-3, no weight decay, ×0.1 after
50/75/90 % of training. Every expectation below is computed by hand or by brute force, not by ``labkit``.
"""
import copy
import math

import pytest
import torch
import torch.nn.functional as F

import labkit
from labkit.config import ConfigError
from labkit.convert import set_bits
from labkit.quant import ActivationQuantizer
from labkit.train import JointTrainer, TrainConfig
from labkit.train.kd import recursive_targets
from labkit.train.optim import multistep_lr
from tests.test_train_loop import NUM_CLASSES, RandomImages, TinyNet

BITS = (8, 4, 2)


# No bias before a batch norm: its gradient is ~0 and Adam turns that into round-off noise, so two equal loops
# would not agree to 1e-6 on it.
def peer_model(seed: int = 0):
    torch.manual_seed(seed)
    return labkit.quantize_model(TinyNet(width=6, conv3_bias=False), BITS, "any_precision", example_input=torch.randn(2, 3, 12, 12),
                                 act_init="dorefa")


# ------------------------------------------------------------------------------------------------ KD target
def test_recursive_target_is_the_next_higher_softmax_alone():
    # softmax([0, ln 2, ln 3]) = [1, 2, 3] / 6; no share of the hard label, whatever it is.
    higher = torch.tensor([[0.0, math.log(2.0), math.log(3.0)]], requires_grad=True)
    target = recursive_targets(higher)
    assert torch.allclose(target, torch.tensor([[1 / 6, 2 / 6, 3 / 6]]), atol=1e-7)
    assert not target.requires_grad, "the teacher's logits are detached"


# ------------------------------------------------------------------------------------------------ activations
@pytest.mark.parametrize("bits", [8, 4, 2])
def test_dorefa_activation_matches_brute_force_nearest_level_of_the_clamp(bits):
    quantizer = ActivationQuantizer((8, 4, 2), init="dorefa")
    x = torch.cat([torch.linspace(-2.0, 3.0, 501), torch.rand(2000, generator=torch.Generator().manual_seed(3))])
    # Leave out inputs within 1e-4 code steps of a rounding tie (e.g. 0.7 · 255 = 178.5): the fixed step is
    # fp32(1 / 255), a few 1e-8 off, so x / s and x · 255 may round to different sides there (a float artefact).
    steps = x.double().clamp(0.0, 1.0) * (2 ** bits - 1)
    keep = (((steps - steps.floor()) - 0.5).abs() > 1e-4) & (x != 0) & (x != 1)  # and the clamp's two kinks
    x = x[keep].requires_grad_(True)
    out = quantizer(x, bits)
    levels = torch.arange(2 ** bits, dtype=torch.float64) / (2 ** bits - 1)
    clamped = x.detach().double().clamp(0.0, 1.0)
    nearest = levels[(clamped[:, None] - levels[None, :]).abs().argmin(dim=1)]
    assert torch.allclose(out.detach().double(), nearest, atol=1e-6)
    out.sum().backward()  # straight-through round; the clamp passes no gradient outside [0, 1], not even
    # within half a step above 1 (where an LSQ-style mask on the rounded code would)
    inside = (x.detach() > 0) & (x.detach() < 1)
    assert torch.equal(x.grad, inside.float())


def test_dorefa_activation_step_is_fixed_not_learned():
    model = peer_model()
    act_scales = [p for name, p in model.named_parameters() if "act_quantizer.scale" in name]
    assert act_scales and not any(p.requires_grad for p in act_scales)
    with pytest.raises(ConfigError, match="post-ReLU"):
        ActivationQuantizer((8, 4), signed=True, init="dorefa")


# ------------------------------------------------------------------------------------------------ schedule
def test_multistep_lr_is_the_authors_decay_at_100_150_180_of_200():
    expected = {0: 1e-3, 99: 1e-3, 100: 1e-4, 149: 1e-4, 150: 1e-5, 179: 1e-5, 180: 1e-6, 199: 1e-6}
    for step, lr in expected.items():
        assert math.isclose(multistep_lr(1e-3, step, 200), lr, rel_tol=1e-9), step


# ------------------------------------------------------------------------------------------------ one training step
def _soft_ce(logits, probabilities):
    return -(probabilities * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def _softmax(logits):
    exp = torch.exp(logits - logits.max(dim=1, keepdim=True).values)
    return exp / exp.sum(dim=1, keepdim=True)


def test_peer_step_matches_a_hand_written_any_precision_loop(tmp_path):
    model = peer_model()
    reference = copy.deepcopy(model)
    config = TrainConfig(bits=BITS, method="any_precision", act_init="dorefa", kd="recursive", algorithm="a1",
                         optimizer="adam", lr=1e-3, weight_decay=0.0, lr_schedule="multistep", batch_size=8,
                         epochs=1, workers=0, device="cpu", init_from=None, eval_subset=None, train_subset=None)
    trainer = JointTrainer(model, config, RandomImages(16, size=12, seed=1), {"test": RandomImages(8, size=12, seed=2)}, tmp_path,
                           NUM_CLASSES, show_progress=False)
    assert trainer.total_steps == 2  # the decay at 50 % falls on the second step

    trained = [p for p in reference.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trained, lr=1e-3, weight_decay=0.0)
    data = RandomImages(16, size=12, seed=5)
    reference.train()
    model.train()
    for step, lr in enumerate((1e-3, 1e-4)):
        images, labels = data.images[8 * step: 8 * step + 8], data.labels[8 * step: 8 * step + 8]
        # the authors' loop: top bit on the hard label, then each lower bit on the one above's softmax; one step
        optimizer.zero_grad()
        teacher = None
        for bits in BITS:
            set_bits(reference, bits)
            logits = reference(images)
            loss = F.cross_entropy(logits, labels) if teacher is None else _soft_ce(logits, _softmax(teacher))
            loss.backward()
            teacher = logits.detach()
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.step()

        trainer.global_step = step
        trainer.train_step(images, labels, torch.arange(8 * step, 8 * step + 8), epoch=0)

    for (name, mine), (_, theirs) in zip(model.named_parameters(), reference.named_parameters()):
        assert torch.allclose(mine, theirs, atol=1e-6, rtol=1e-5), name
    for (name, mine), (_, theirs) in zip(model.named_buffers(), reference.named_buffers()):
        assert torch.allclose(mine.float(), theirs.float(), atol=1e-6), name


# ------------------------------------------------------------------------------------------------ the suite row
def test_peer_row_runs_the_authors_recipe_at_the_suite_budget_from_the_shipped_fp32():
    from labkit.reproduction import SUITE_BUDGET, row
    from labkit.train.recipes import recipe_config

    peer, lab = row("8642-any_precision-peer"), row("8642-any_precision")
    config = recipe_config(peer.recipe, "laptop", peer.config_overrides("laptop"))
    baseline = recipe_config(lab.recipe, "laptop", lab.config_overrides("laptop"))
    assert peer.group == "baselines" and peer.config_overrides("laptop").items() >= SUITE_BUDGET.items()
    recipe = {"method": "any_precision", "act_init": "dorefa", "kd": "recursive", "algorithm": "a1",
              "optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "lr_schedule": "multistep",
              "label_smoothing": 0.0}
    assert {key: getattr(config, key) for key in recipe} == recipe
    same = ("bits", "init_from", "epochs", "train_subset", "batch_size", "eval_subset", "model", "dataset", "seed")
    assert {key: getattr(config, key) for key in same} == {key: getattr(baseline, key) for key in same}
    assert (baseline.act_init, baseline.kd, baseline.algorithm, baseline.lr) == ("lsq", "none", "a2", 5e-4)
