"""labkit.live_training: the live loss / accuracy view of a JointTrainer run, checked without a browser.

The figure's data is checked against numbers taken independently of the view: the losses ``train_step`` returns
(recorded by a wrapper the test puts on first), the trainer's own epoch rows (``trainer.history``: mean loss and
accuracy over the epoch's batches, evaluation accuracies), and the sampler's draws recomputed from its seed.
"""
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

import labkit
from labkit.convert import quantized_layers
from labkit.errors import LabkitError
from labkit.hasb.supernet import BitSampler
from labkit.live_training import (LiveSuperNetTraining, LiveTraining, discrete_bit_colorscale, moving_average,
                                  train_live)
from labkit.viz import bit_color
from labkit.train import JointTrainer, TrainConfig

NUM_CLASSES = 10


class RandomImages(Dataset):
    def __init__(self, n: int, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        self.images = torch.randn(n, 3, 8, 8, generator=generator)
        self.labels = torch.randint(0, NUM_CLASSES, (n,), generator=generator)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return self.images[index], int(self.labels[index])


class TinyNet(nn.Module):
    def __init__(self, width: int = 8):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)
        self.fc = nn.Linear(width, NUM_CLASSES)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.bn3(self.conv3(x)))
        return self.fc(x.mean((2, 3)))


def make_trainer(tmp_path, bits=(8, 4, 2), epochs=2, sampler=None):
    torch.manual_seed(0)
    model = TinyNet()
    if bits is not None:
        model = labkit.quantize_model(model, bits, example_input=torch.randn(2, 3, 8, 8))
    config = TrainConfig(bits=bits, batch_size=8, epochs=epochs, workers=0, device="cpu", init_from=None,
                         eval_subset=None, train_subset=None, checkpoint_every=0, lr=0.01)
    return JointTrainer(model, config, RandomImages(32, seed=1), {"test": RandomImages(16, seed=2)}, tmp_path,
                        NUM_CLASSES, show_progress=True, bit_sampler=sampler)


def record_losses(trainer):
    """Wrap ``train_step`` before the view does: the losses exactly as the trainer returned them."""
    returned = []
    original = trainer.train_step

    def recording(*args, **kwargs):
        losses = original(*args, **kwargs)
        returned.append(dict(losses))
        return losses

    trainer.train_step = recording
    return returned


def test_moving_average_by_hand():
    assert moving_average([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
    assert moving_average([2.0, 4.0], 10) == [2.0, 3.0]


def test_the_heatmap_colours_are_one_band_per_bit_width():
    scale = discrete_bit_colorscale((8, 4, 2))
    # bands [2, 3), [3, 6), [6, 8] of the 2..8 range, each flat in its bit's colour
    assert scale == [[0.0, bit_color(2)], [1 / 6, bit_color(2)], [1 / 6, bit_color(4)], [4 / 6, bit_color(4)],
                     [4 / 6, bit_color(8)], [1.0, bit_color(8)]]


def test_the_figure_follows_the_steps_the_trainer_took(tmp_path):
    trainer = make_trainer(tmp_path)
    returned = record_losses(trainer)
    view = LiveTraining(trainer, window=100, refresh_s=0.0, progress=True)
    result = view.run()
    steps = trainer.total_steps
    assert steps == 8 and view.steps == list(range(1, steps + 1)) and len(returned) == steps
    traces = {trace.name: trace for trace in view.figure.data}
    assert set(traces) == {f"{b}-bit{s}" for b in (8, 4, 2) for s in ("", " training", " test")}
    for b in (8, 4, 2):
        assert list(traces[f"{b}-bit"].x) == view.steps
        assert list(traces[f"{b}-bit"].y) == [losses[b] for losses in returned]
        # the trainer's own epoch means: loss and accuracy averaged over the epoch's (equal-sized) batches
        for epoch, row in enumerate(trainer.history):
            batches = slice(4 * epoch, 4 * epoch + 4)
            assert sum(view.losses[b][batches]) / 4 == pytest.approx(row[f"train_loss_{b}"], abs=1e-5)
            assert sum(view.batch_accuracy[b][batches]) / 4 == pytest.approx(row[f"train_acc_{b}"], abs=1e-3)
        # window 100 > steps: the training line is the running mean of the batch accuracies
        accuracy = view.batch_accuracy[b]
        assert list(traces[f"{b}-bit training"].y) == pytest.approx(
            [sum(accuracy[:i + 1]) / (i + 1) for i in range(steps)])
        evaluations = traces[f"{b}-bit test"]
        assert list(evaluations.x) == [4, 8]  # evaluated after each epoch (eval_every=1)
        assert list(evaluations.y) == [row[f"test_acc_{b}"] for row in trainer.history]
        assert result["test"][str(b)] == evaluations.y[-1]
    assert view.bar.n == steps and view.bar.total == steps
    # everything put back: the trainer's own methods, its progress setting
    assert trainer.train_step.__name__ == "recording" and "write_log" not in trainer.__dict__
    assert trainer.on_step is None and trainer.on_epoch is None  # the trainer's hooks, put back
    assert trainer.show_progress is True
    assert view.figure.layout.yaxis.title.text == "cross-entropy loss"
    assert "8 steps of 8 images" in view.figure.layout.title.text


def test_fp32_training_is_shown_as_fp32(tmp_path):
    trainer = make_trainer(tmp_path, bits=None, epochs=1)
    view = LiveTraining(trainer, refresh_s=0.0, progress=False)
    view.run()
    assert [trace.name for trace in view.figure.data] == ["FP32", "FP32 training", "FP32 test"]
    assert len(view.figure.data[0].y) == trainer.total_steps and view.bar is None
    assert "FP32 training" in view.figure.layout.title.text


def test_refresh_s_limits_the_figure_updates(tmp_path):
    trainer = make_trainer(tmp_path, epochs=1)
    view = LiveTraining(trainer, refresh_s=3600.0, progress=False)
    draws = []
    original = view.draw
    view.draw = lambda: draws.append(len(view.steps)) or original()
    view.run()
    assert draws == [1, 4, 4]  # the first step, the epoch end, the end of the run: not every step


def test_a_failing_run_puts_the_trainer_back(tmp_path):
    trainer = make_trainer(tmp_path, epochs=1)

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    trainer.train_step = broken
    view = LiveTraining(trainer, progress=False)
    with pytest.raises(RuntimeError, match="boom"):
        view.run()
    assert trainer.train_step is broken and "write_log" not in trainer.__dict__
    assert trainer.on_step is None and trainer.on_epoch is None
    with pytest.raises(LabkitError, match="window"):
        LiveTraining(trainer, window=0)


def test_supernet_steps_show_the_bits_the_sampler_drew(tmp_path):
    torch.manual_seed(0)
    probe = labkit.quantize_model(TinyNet(), (8, 4, 2), example_input=torch.randn(2, 3, 8, 8))
    layers = list(quantized_layers(probe))
    probabilities = {name: {8: 1 / 3, 4: 1 / 3, 2: 1 / 3} for name in layers}
    sampler = BitSampler(probabilities, epochs=2, seed=3, sigma=1.0, warmup=0)
    trainer = make_trainer(tmp_path, sampler=sampler)
    assert trainer.bit_sampler is sampler
    view = train_live(trainer, show=False, refresh_s=0.0, progress=False)
    assert isinstance(view, LiveSuperNetTraining) and trainer.bit_sampler is sampler
    assert sorted(view.sampled_bits) == list(range(1, trainer.total_steps + 1))
    for step, draws in view.sampled_bits.items():
        epoch, batch = divmod(step - 1, trainer.steps_per_epoch)
        assert draws == {b: sampler(b, epoch, batch) for b in (8, 4, 2)}  # recomputed from the seed
    last = view.sampled_bits[trainer.total_steps]
    heatmap = view.bits_figure.data[0]
    assert list(heatmap.x) == layers and list(heatmap.y) == ["8-bit pass", "4-bit pass", "2-bit pass"]
    assert [list(row) for row in heatmap.z] == [[last[b][name] for name in layers] for b in (8, 4, 2)]
    assert f"step {trainer.total_steps}" in view.bits_figure.layout.title.text
    assert "σ_e = 1.00" in view.bits_figure.layout.title.text
    assert list(heatmap.colorbar.tickvals) == [2, 4, 8] and (heatmap.zmin, heatmap.zmax) == (2, 8)
    assert any(len(set(draws[8].values())) > 1 or draws[8] != dict.fromkeys(layers, 8)
               for draws in view.sampled_bits.values())  # σ = 1: the draws are not just the defaults
    with pytest.raises(LabkitError, match="no bit_sampler"):
        LiveSuperNetTraining(make_trainer(tmp_path / "plain"))


def test_the_view_uses_the_trainers_hooks_and_keeps_the_callers_own(tmp_path):
    trainer = make_trainer(tmp_path, epochs=2)
    calls = []
    mine_step = lambda t, losses: calls.append(("step", t.global_step))  # noqa: E731
    mine_epoch = lambda t, row: calls.append(("epoch", row["epoch"]))  # noqa: E731
    trainer.on_step, trainer.on_epoch = mine_step, mine_epoch
    view = LiveTraining(trainer, refresh_s=0.0, progress=False)
    view.run()
    assert calls == [("step", 1), ("step", 2), ("step", 3), ("step", 4), ("epoch", 1),
                     ("step", 5), ("step", 6), ("step", 7), ("step", 8), ("epoch", 2)]
    assert view.steps == list(range(1, 9))
    assert trainer.on_step is mine_step and trainer.on_epoch is mine_epoch
    # no wrapper was put on the trainer's methods: only the hooks carried the numbers
    assert "train_step" not in trainer.__dict__ and "write_log" not in trainer.__dict__
    # the second epoch's batch accuracies start from the trainer's reset sums, so they still average to its row
    for b in (8, 4, 2):
        assert sum(view.batch_accuracy[b][4:]) / 4 == pytest.approx(trainer.history[1][f"train_acc_{b}"], abs=1e-3)


needs_cifar10 = pytest.mark.skipif(not (labkit.config.data_root() / "cifar10").is_dir(),
                                   reason="no CIFAR-10 under the data root (set LABKIT_DATA)")


@needs_cifar10
def test_the_live_cifar10_run_is_the_recipe_at_a_small_budget(tmp_path):
    from labkit.checkpoints import load_shipped
    from labkit.cifar10_live import live_budget, live_joint_trainer
    from labkit.train.recipes import recipe_config

    budget = live_budget("smoke")
    trainer = live_joint_trainer(**budget, out_dir=tmp_path, profile="smoke")
    recipe = recipe_config("cifar10-resnet20", "smoke").to_dict()
    sizes = {"epochs": 1, "train_subset": budget["train_images"], "batch_size": budget["batch_size"],
             "eval_subset": budget["eval_images"], "eval_every": 1, "checkpoint_every": 0}
    assert {k: v for k, v in trainer.config.to_dict().items() if recipe[k] != v and k not in sizes} == {}
    assert (trainer.config.algorithm, trainer.config.alrs, trainer.config.method) == ("a2", "eq7", "double_rounding")
    assert trainer.bits == (8, 6, 4, 2) and trainer.total_steps == budget["train_images"] // budget["batch_size"]
    assert len(trainer.eval_sets["test"]) == budget["eval_images"]
    # it starts from the shipped FP32 ResNet-20: the quantized model's float weights are that checkpoint's
    fp32 = load_shipped("cifar10-resnet20-fp32").state_dict()
    ours = trainer.model.state_dict()
    assert torch.equal(ours["layer1.0.conv1.weight"], fp32["layer1.0.conv1.weight"])
    with pytest.raises(LabkitError, match="fewer than one batch"):
        live_joint_trainer(16, 32, 8, out_dir=tmp_path / "x", profile="smoke")
    with pytest.raises(LabkitError, match="no live-training budget"):
        live_budget("huge")
