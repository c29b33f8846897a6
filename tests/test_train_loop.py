"""The joint training loop (METHOD.md §4–5, paper Alg. A.1 / A.2, ALRS, KD) on tiny synthetic data.

Every expectation is computed independently of ``labkit/train``: parameter roles from parameter *names*,
learning rates from the cosine formula and METHOD.md §5's printed η_b, gradients from a separate copy of
the model with ``torch.autograd.grad``, KD targets from the written formulas of METHOD.md §4.
"""
import copy
import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

import labkit
from labkit.convert import get_bits, set_bits
from labkit.errors import LabkitError
from labkit.models import build_model
from labkit.train import JointTrainer, TrainConfig, TrainingDiverged
from labkit.train.optim import make_optimizer, parameter_groups

NUM_CLASSES = 10
# METHOD.md §5 as printed (eq7); written out here, not computed by labkit.
ETA = {(8, 4, 2): {8: 1.0, 4: 0.01, 2: 0.001}, (8, 6, 4, 2): {8: 1.0, 6: 0.1, 4: 0.01, 2: 0.001},
       (4, 3, 2): {4: 1.0, 3: 0.5, 2: 0.1}}
PER_BIT = re.compile(r"(?:act_quantizer\.(?:scale|offset)|per_bit)\.(\d+)(?:\.|$)")


class RandomImages(Dataset):
    """``n`` seeded random 3×size×size images with labels 0..9."""

    def __init__(self, n: int, size: int = 16, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        self.images = torch.randn(n, 3, size, size, generator=generator)
        self.labels = torch.randint(0, NUM_CLASSES, (n,), generator=generator)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return self.images[index], int(self.labels[index])


class TinyNet(nn.Module):
    """conv-bn-relu ×3, pool, linear: with the first and last layer kept FP, two quantized convs remain."""

    def __init__(self, width: int = 8, conv3_bias: bool = True):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, width, 3, padding=1, bias=conv3_bias), nn.BatchNorm2d(width)
        self.fc = nn.Linear(width, NUM_CLASSES)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.bn3(self.conv3(x)))
        return self.fc(x.mean((2, 3)))


def tiny_model(bits=(8, 4, 2), seed=0):
    torch.manual_seed(seed)
    model = TinyNet()
    if bits is None:
        return model
    return labkit.quantize_model(model, bits, example_input=torch.randn(2, 3, 16, 16))


def make_trainer(tmp_path, model=None, n_train=32, **settings):
    options = dict(bits=(8, 4, 2), batch_size=8, epochs=1, workers=0, device="cpu", init_from=None, eval_subset=None,
                   train_subset=None, checkpoint_every=0)
    options.update(settings)
    config = TrainConfig(**options)
    model = model if model is not None else tiny_model(config.bits)
    return JointTrainer(model, config, RandomImages(n_train, seed=1), {"test": RandomImages(24, seed=2)},
                        tmp_path, NUM_CLASSES, show_progress=False)


def first_batch(n=8, seed=1):
    data = RandomImages(n, seed=seed)
    return data.images, data.labels, torch.arange(n)


def warm_up(model, bits):
    """Initialise every activation scale (the first forward at each bit-width does it) before snapshots."""
    with torch.no_grad():
        for b in bits:
            set_bits(model, b)
            model(first_batch()[0])


def named(model):
    return {id(p): n for n, p in model.named_parameters()}


# ------------------------------------------------------------------------------------------ parameter groups
@pytest.fixture(scope="module")
def resnet20_q():
    torch.manual_seed(0)
    return labkit.quantize_model(build_model("resnet20"), (8, 6, 4, 2))


def test_every_parameter_is_in_exactly_one_group(resnet20_q):
    groups = parameter_groups(resnet20_q, weight_decay=5e-5)
    roles = [g["name"] for g in groups]
    assert list(dict.fromkeys(roles)) == ["weights", "scales", "no_decay"] and roles == sorted(
        roles, key=["weights", "scales", "no_decay"].index), "grouped by role, in this order"
    # Each precision's own parameters (found here by their names) sit in the group of that bit-width.
    names = named(resnet20_q)
    for group in groups:
        for p in group["params"]:
            match = PER_BIT.search(names[id(p)])
            assert group["bits"] == (int(match.group(1)) if match else None), (names[id(p)], group["bits"])
    assert {g["bits"] for g in groups if g["name"] == "scales"} == {None, 8, 6, 4, 2}
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)), "a parameter sits in two groups"
    assert set(ids) == {id(p) for p in resnet20_q.parameters() if p.requires_grad}


def test_weight_decay_only_on_conv_and_linear_weights(resnet20_q):
    optimizer = make_optimizer(resnet20_q, "adam", 5e-4, 5e-5)
    modules = dict(resnet20_q.named_modules())
    names = named(resnet20_q)
    decayed = set()
    for group in optimizer.param_groups:
        for p in group["params"]:
            if group["weight_decay"] > 0:
                decayed.add(names[id(p)])
    expected = {f"{m}.weight" for m, mod in modules.items()
                if isinstance(mod, (nn.Conv2d, nn.Linear)) and getattr(mod, "weight", None) is not None}
    assert decayed == expected
    assert all(g["weight_decay"] == 5e-5 for g in optimizer.param_groups if g["name"] == "weights")
    assert any("fc.weight" == n for n in decayed) and any(n.endswith("conv1.weight") for n in decayed)


def test_every_quantization_scale_is_in_the_scales_group(resnet20_q):
    """METHOD.md §5: ALRS applies to the quantization scales — weight *and* activation scales."""
    names = named(resnet20_q)
    groups = {}
    for g in parameter_groups(resnet20_q, 5e-5):
        groups.setdefault(g["name"], set()).update(names[id(p)] for p in g["params"])
    quant_scales = {n for n in names.values() if ".weight_quantizer." in n or ".act_quantizer." in n}
    assert any(".act_quantizer.scale." in n for n in quant_scales)
    missing = sorted(quant_scales - groups["scales"])
    assert not missing, f"{len(missing)} quantization scales are not in the 'scales' group, e.g. {missing[:3]}"
    assert groups["scales"] <= quant_scales


# --------------------------------------------------------------------------------------- steps per batch
def count_steps(trainer):
    record = []
    trainer.optimizer.register_step_pre_hook(
        lambda opt, args, kwargs: record.append((trainer.global_step, next(iter(get_bits(trainer.model).values()))
                                                 if trainer.bits else None)))
    return record


@pytest.mark.parametrize("algorithm, per_batch", [("a2", 3), ("a1", 1)])
def test_optimizer_steps_per_batch(tmp_path, algorithm, per_batch):
    trainer = make_trainer(tmp_path, algorithm=algorithm, epochs=2)
    steps = count_steps(trainer)
    trainer.fit()
    batches = 2 * (32 // 8)
    assert len(steps) == per_batch * batches
    if algorithm == "a2":
        # high → low inside every batch
        assert [b for _, b in steps] == [8, 4, 2] * batches
        assert [t for t, _ in steps] == [t for t in range(batches) for _ in range(3)]
    # Adam's own step counters: a shared weight steps at every pass, a per-bit parameter once per batch.
    names = {n: p for n, p in trainer.model.named_parameters()}
    state = trainer.optimizer.state
    assert int(state[names["conv2.weight"]]["step"]) == per_batch * batches
    assert int(state[names["conv2.act_quantizer.scale.4"]]["step"]) == batches


def test_a2_per_bit_parameters_change_only_in_their_own_step(tmp_path):
    trainer = make_trainer(tmp_path, n_train=24)
    model = trainer.model
    per_bit = {n: (int(PER_BIT.search(n).group(1)), p) for n, p in model.named_parameters() if PER_BIT.search(n)}
    assert {b for b, _ in per_bit.values()} == {8, 4, 2}
    shared = {n: p for n, p in model.named_parameters() if n not in per_bit}
    log = {"snap": None, "checked": 0}

    def pre(opt, args, kwargs):
        log["bits"] = next(iter(get_bits(model).values()))
        log["snap"] = {n: p.detach().clone() for n, (_, p) in per_bit.items()}
        log["shared"] = {n: p.detach().clone() for n, p in shared.items()}

    def post(opt, args, kwargs):
        b = log["bits"]
        for n, (bit, p) in per_bit.items():
            if bit != b:
                assert torch.equal(p, log["snap"][n]), f"{n} changed in the {b}-bit step"
        moved = [n for n, (bit, p) in per_bit.items() if bit == b and not torch.equal(p, log["snap"][n])]
        assert any(".act_quantizer.scale." in n for n in moved), f"no {b}-bit activation scale moved"
        assert any(".per_bit." in n for n in moved), f"no {b}-bit BN parameter moved"
        assert not torch.equal(shared["conv2.weight"], log["shared"]["conv2.weight"]), "shared weights step every pass"
        log["checked"] += 1

    trainer.optimizer.register_step_pre_hook(pre)
    trainer.optimizer.register_step_post_hook(post)
    trainer.fit()
    assert log["checked"] == 3 * 3


# ----------------------------------------------------------------------------------- learning rates (ALRS)
def cosine(base, t, total):
    return 0.5 * base * (1 + math.cos(math.pi * t / total))


def record_rates(trainer):
    """Before every step: (global step, bit of the pass, {role: {lr of the groups that step now}}).

    In an A.2 step only the shared groups and the pass's own per-bit groups hold gradients."""
    record = []

    def hook(opt, args, kwargs):
        b = next(iter(get_bits(trainer.model).values()))
        rates = {}
        for g in opt.param_groups:
            if g["bits"] in (None, b):
                rates.setdefault(g["name"], set()).add(g["lr"])
        record.append((trainer.global_step, b, rates))
    trainer.optimizer.register_step_pre_hook(hook)
    return record


@pytest.mark.parametrize("bits", [(8, 4, 2), (4, 3, 2)])
def test_a2_scales_group_lr_is_cosine_lr_times_eta(tmp_path, bits):
    trainer = make_trainer(tmp_path, bits=bits, epochs=2, lr=1e-3, n_train=24)
    record = record_rates(trainer)
    trainer.fit()
    total = 2 * (24 // 8)
    assert len(record) == total * len(bits)
    for t, b, lrs in record:
        lr_t = cosine(1e-3, t, total)
        (scales,), (weights,), (no_decay,) = lrs["scales"], lrs["weights"], lrs["no_decay"]
        assert scales == pytest.approx(lr_t * ETA[bits][b], rel=1e-9, abs=1e-15), (t, b)
        assert weights == pytest.approx(lr_t, rel=1e-9, abs=1e-15), (t, b)
        assert no_decay == pytest.approx(lr_t, rel=1e-9, abs=1e-15), (t, b)


def test_a2_alrs_targets_scales_bn_bias_scales_the_no_decay_group_too(tmp_path):
    trainer = make_trainer(tmp_path, alrs_targets="scales_bn_bias", alrs="geometric")
    record = record_rates(trainer)
    trainer.fit()
    total = 32 // 8
    for t, b, lrs in record:
        eta = {8: 1.0, 4: 0.1, 2: 0.01}[b]  # geometric: 0.1^position
        (no_decay,), (weights,) = lrs["no_decay"], lrs["weights"]
        assert no_decay == pytest.approx(cosine(5e-4, t, total) * eta, rel=1e-9, abs=1e-15)
        assert weights == pytest.approx(cosine(5e-4, t, total), rel=1e-9, abs=1e-15)


def test_a2_alrs_none_keeps_one_rate(tmp_path):
    trainer = make_trainer(tmp_path, alrs="none")
    record = []
    trainer.optimizer.register_step_pre_hook(lambda opt, a, k: record.append({g["lr"] for g in opt.param_groups}))
    trainer.fit()
    assert all(len(lrs) == 1 for lrs in record)


def per_bit_gradients(model, bits, images, labels):
    """Independent reference: {bit: {name: dL_b/dp}} on a copy of the model, high → low, weights unchanged."""
    reference = copy.deepcopy(model)
    reference.train()
    params = dict(reference.named_parameters())
    result = {}
    for b in bits:
        set_bits(reference, b)
        loss = F.cross_entropy(reference(images), labels)
        grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
        result[b] = {n: (torch.zeros_like(p) if g is None else g) for (n, p), g in zip(params.items(), grads)}
    return result


@pytest.mark.parametrize("kind", ["weights_and_bn", "weight_scales", "activation_scales"])
def test_a1_alrs_scales_each_bits_share_of_the_scale_gradient(tmp_path, kind):
    """Alg. A.1 + ALRS, one SGD step (lr 1, Nesterov m=0.9 → first update (1+m)·grad) against a manual sum."""
    bits = (8, 4, 2)
    momentum = 0.9
    model = tiny_model(bits)
    warm_up(model, bits)
    trainer = make_trainer(tmp_path, model=model, algorithm="a1", optimizer="sgd", lr=1.0, momentum=momentum,
                           weight_decay=0.0, n_train=8)
    images, labels, indices = first_batch()
    grads = per_bit_gradients(trainer.model, bits, images, labels)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train_step(images, labels, indices, epoch=0)
    eta = ETA[bits]

    def expected_grad(name):
        match = PER_BIT.search(name)
        if ".weight_quantizer." in name:
            return sum(eta[b] * grads[b][name] for b in bits)
        if ".act_quantizer." in name:
            b = int(match.group(1))
            return eta[b] * grads[b][name]
        return sum(grads[b][name] for b in bits)

    selected = {
        "weights_and_bn": lambda n: "quantizer" not in n,
        "weight_scales": lambda n: ".weight_quantizer." in n,
        "activation_scales": lambda n: ".act_quantizer." in n,
    }[kind]
    checked = 0
    for name, p in trainer.model.named_parameters():
        if not selected(name):
            continue
        expected = before[name] - 1.0 * (1 + momentum) * expected_grad(name)
        assert torch.allclose(p.detach(), expected, rtol=1e-4, atol=1e-7), (
            f"{name}: moved by {(p.detach() - before[name]).flatten()[:3].tolist()}, expected "
            f"{(expected - before[name]).flatten()[:3].tolist()}")
        checked += 1
    assert checked > 0


def test_sgd_with_zero_momentum_builds(tmp_path):
    """optimizer=sgd momentum=0 is a valid setting (plain SGD); it must not crash inside torch."""
    trainer = make_trainer(tmp_path, optimizer="sgd", momentum=0.0, lr=0.1)
    trainer.fit()


def test_one_bit_set_a1_equals_a2(tmp_path):
    results = {}
    for algorithm in ("a1", "a2"):
        trainer = make_trainer(tmp_path / algorithm, model=tiny_model((4,), seed=3), bits=(4,), algorithm=algorithm,
                               epochs=2)
        trainer.fit()
        results[algorithm] = trainer.model.state_dict()
    assert results["a1"].keys() == results["a2"].keys()
    for key in results["a1"]:
        assert torch.equal(results["a1"][key], results["a2"][key]), key


# ------------------------------------------------------------------------------------------ FP32 and eval
def test_fp32_mode_trains(tmp_path):
    model = tiny_model(None)
    before = copy.deepcopy(model.state_dict())
    trainer = make_trainer(tmp_path, model=model, bits=None, optimizer="sgd", lr=0.05, epochs=2)
    steps = count_steps(trainer)
    result = trainer.fit()
    assert len(steps) == 2 * 4
    assert set(result) == {"test"} and set(result["test"]) == {"32"}
    assert 0.0 <= result["test"]["32"] <= 100.0
    assert not torch.equal(before["conv1.weight"], model.state_dict()["conv1.weight"])
    log = (tmp_path / "log.csv").read_text().splitlines()
    assert len(log) == 3 and "train_loss_32" in log[0]
    assert all(math.isfinite(float(v)) for v in log[1].split(",")[2:])


def test_evaluate_returns_per_bit_accuracy_matching_a_manual_count(tmp_path):
    trainer = make_trainer(tmp_path)
    trainer.fit()
    data = RandomImages(24, seed=2)
    accuracy = trainer.evaluate(data)
    assert list(accuracy) == [8, 4, 2]
    model = trainer.model.eval()
    for b, value in accuracy.items():
        assert 0.0 <= value <= 100.0
        set_bits(model, b)
        with torch.no_grad():
            correct = int((model(data.images).argmax(1) == data.labels).sum())
        assert value == pytest.approx(100.0 * correct / len(data), abs=1e-3)


# ------------------------------------------------------------------------------------------------ KD targets
@pytest.fixture
def soft_ce_calls(monkeypatch):
    import labkit.train.loop as loop

    calls = []
    original = loop.soft_cross_entropy

    def recorder(logits, target):
        calls.append((logits.detach().clone(), target.detach().clone()))
        return original(logits, target)

    monkeypatch.setattr(loop, "soft_cross_entropy", recorder)
    return calls


def test_pskd_targets_and_memory(tmp_path, soft_ce_calls):
    epochs, alpha_max = 2, 0.7
    trainer = make_trainer(tmp_path, bits=(8, 4), model=tiny_model((8, 4)), kd="pskd", kd_alpha=alpha_max,
                           epochs=epochs, n_train=16)
    images, labels, indices = first_batch()
    onehot = F.one_hot(labels, NUM_CLASSES).float()

    trainer.train_step(images, labels, indices, epoch=0)
    assert len(soft_ce_calls) == 2
    (top0, target_top0), (low0, target_low0) = soft_ce_calls
    # never-seen samples: the top bit learns from the hard label
    assert torch.equal(target_top0, onehot)
    # the lower bit distils from the *current* top-bit prediction, α_0 = 0.7·1/2
    a0 = alpha_max * 1 / epochs
    assert torch.allclose(target_low0, (1 - a0) * onehot + a0 * F.softmax(top0, 1), atol=1e-6)
    # memory: the top-bit softmax, not the lower bit's
    memory = trainer.pskd.predictions[indices]
    assert torch.allclose(memory, F.softmax(top0, 1), atol=1e-6)
    assert not torch.allclose(memory, F.softmax(low0, 1), atol=1e-6)
    untouched = torch.ones(len(trainer.pskd.seen), dtype=torch.bool)
    untouched[indices] = False
    assert trainer.pskd.seen[indices].all() and not trainer.pskd.seen[untouched].any()
    assert torch.equal(trainer.pskd.predictions[untouched], torch.zeros_like(trainer.pskd.predictions[untouched]))

    # next epoch, same samples: the top bit distils from the stored memory with α_1 = 0.7·2/2
    trainer.train_step(images, labels, indices, epoch=1)
    (top1, target_top1), (low1, target_low1) = soft_ce_calls[2:]
    a1 = alpha_max * 2 / epochs
    assert torch.allclose(target_top1, (1 - a1) * onehot + a1 * F.softmax(top0, 1), atol=1e-6)
    assert torch.allclose(target_low1, (1 - a1) * onehot + a1 * F.softmax(top1, 1), atol=1e-6)
    assert torch.allclose(trainer.pskd.predictions[indices], F.softmax(top1, 1), atol=1e-6)

    # a batch mixing seen and unseen samples: unseen ones keep their one-hot label
    mixed = torch.tensor([0, 1, 2, 3, 8, 9, 10, 11])
    trainer.train_step(images, labels, mixed, epoch=1)
    _, target_top2 = soft_ce_calls[4]
    assert torch.equal(target_top2[4:], onehot[4:])
    assert torch.allclose(target_top2[:4], (1 - a1) * onehot[:4] + a1 * F.softmax(top1[:4], 1), atol=1e-6)


def test_recursive_kd_targets(tmp_path, soft_ce_calls):
    trainer = make_trainer(tmp_path, kd="recursive", n_train=16)
    outputs = []
    trainer.model.register_forward_hook(lambda mod, args, out: outputs.append(out.detach().clone()))
    images, labels, indices = first_batch()
    trainer.train_step(images, labels, indices, epoch=0)
    assert len(outputs) == 3, "one forward per bit-width"
    assert len(soft_ce_calls) == 2, "the top bit uses the hard label, 4 and 2 bits distil"
    for (logits, target), higher, own in zip(soft_ce_calls, outputs[:2], outputs[1:]):
        assert torch.equal(logits, own)
        assert torch.allclose(target, F.softmax(higher, 1), atol=1e-6)  # soft target only, as Any-Precision


# ------------------------------------------------------------------------------------------------ divergence
class NaNAfterFirstEpoch(JointTrainer):
    """Puts a NaN into a weight right after the end-of-epoch-1 checkpoint is written."""

    saved_bytes = None

    def save_checkpoint(self):
        super().save_checkpoint()
        if self.epoch == 1 and self.saved_bytes is None:
            self.saved_bytes = self.checkpoint_path.read_bytes()
            with torch.no_grad():
                self.model.conv1.weight[0, 0, 0, 0] = float("nan")


def test_nan_loss_raises_and_keeps_the_last_good_checkpoint(tmp_path):
    config = TrainConfig(bits=(8, 4, 2), batch_size=8, epochs=2, workers=0, device="cpu", init_from=None)
    trainer = NaNAfterFirstEpoch(tiny_model(), config, RandomImages(16, seed=1), {"test": RandomImages(8, seed=2)},
                                 tmp_path, NUM_CLASSES, show_progress=False)
    with pytest.raises(TrainingDiverged) as info:
        trainer.fit()
    assert isinstance(info.value, LabkitError)
    message = str(info.value)
    assert str(tmp_path / "checkpoint.pt") in message and "epoch 2" in message and "8-bit" in message
    assert "\n" not in message
    assert (tmp_path / "checkpoint.pt").read_bytes() == trainer.saved_bytes
    assert not list(tmp_path.glob("*.tmp"))
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["position"] == {"epoch": 1, "batch": 0, "global_step": 2}
    assert len((tmp_path / "log.csv").read_text().splitlines()) == 2


def test_huge_lr_raises_training_diverged(tmp_path):
    trainer = make_trainer(tmp_path, lr=1e30, epochs=2, checkpoint_every=1)
    with pytest.raises(TrainingDiverged, match="loss became"):
        trainer.fit()


def test_diverged_message_does_not_promise_a_checkpoint_that_does_not_exist(tmp_path):
    """lr=1e30 diverges inside the very first batch (the 8-bit step wrecks the weights, the 4-bit loss is NaN):
    no checkpoint was ever written, so the message must not say one 'is kept'."""
    trainer = make_trainer(tmp_path, lr=1e30)
    with pytest.raises(TrainingDiverged) as info:
        trainer.fit()
    assert not (tmp_path / "checkpoint.pt").exists()
    assert "is kept" not in str(info.value)


def test_checkpoint_written_after_a_nan_step_is_not_called_good(tmp_path):
    """A finite loss with a NaN gradient in the last pass of a batch puts NaN into the weights; the periodic
    checkpoint of that batch must not overwrite the last good one (or the run must stop before writing it)."""
    trainer = make_trainer(tmp_path, epochs=1, checkpoint_every=1, n_train=32)
    weight = trainer.model.conv2.weight

    def poison(grad):
        if trainer.global_step == 1 and trainer.model.conv2.bits == 2:
            return torch.full_like(grad, float("nan"))
        return grad

    weight.register_hook(poison)
    with pytest.raises(TrainingDiverged):
        trainer.fit()
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    bad = [k for k, v in state["model"].items() if v.is_floating_point() and not torch.isfinite(v).all()]
    assert not bad, f"the kept checkpoint (position {state['position']}) holds non-finite tensors: {bad}"


# ---------------------------------------------------------------- every method= and the device options train
@pytest.mark.parametrize("method,bits", [("double_rounding", (8, 4)), ("floor", (8, 4)), ("per_bit_scale", (8, 4)),
                                         ("any_precision", (8, 4)), ("lsq", (4,))])
def test_every_quantization_method_trains_through_the_same_loop(tmp_path, method, bits):
    from labkit.train.config import TrainConfig
    from labkit.train.loop import JointTrainer

    torch.manual_seed(0)
    model = labkit.quantize_model(build_model("resnet20"), bits, method, example_input=torch.randn(2, 3, 32, 32))
    images = torch.randn(16, 3, 32, 32)
    labels = torch.randint(0, 10, (16,))
    dataset = torch.utils.data.TensorDataset(images, labels)
    config = TrainConfig(bits=bits, method=method, epochs=1, batch_size=8, workers=0)
    trainer = JointTrainer(model, config, dataset, {"train": dataset}, tmp_path, 10, show_progress=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    results = trainer.fit()
    assert set(results["train"]) == {str(b) for b in bits}
    changed = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])]
    assert any(k.endswith("conv1.weight") for k in changed), method


def test_bf16_autocast_and_channels_last_run_on_cpu(tmp_path):
    from labkit.train.config import TrainConfig
    from labkit.train.loop import JointTrainer

    torch.manual_seed(0)
    model = labkit.quantize_model(build_model("resnet20"), (8, 4), example_input=torch.randn(2, 3, 32, 32))
    dataset = torch.utils.data.TensorDataset(torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,)))
    config = TrainConfig(bits=(8, 4), epochs=1, batch_size=8, workers=0, amp_bf16=True, channels_last=True)
    results = JointTrainer(model, config, dataset, {"train": dataset}, tmp_path, 10, show_progress=False).fit()
    assert all(0.0 <= v <= 100.0 for v in results["train"].values())
