"""JointTrainer's on_step / on_epoch hooks: when they run and what they are given."""
import torch

from labkit.train import JointTrainer, TrainConfig
from test_live_training import NUM_CLASSES, RandomImages, TinyNet, make_trainer, record_losses


def test_on_step_runs_after_every_counted_step_with_the_losses_train_step_returned(tmp_path):
    trainer = make_trainer(tmp_path, epochs=2)
    returned = record_losses(trainer)
    seen = []
    trainer.on_step = lambda t, losses: seen.append((t.global_step, t.batch, dict(losses), len(t.history)))
    trainer.fit()
    assert trainer.total_steps == 8
    assert [s[0] for s in seen] == list(range(1, 9))  # after the increment: the step just taken
    assert [s[1] for s in seen] == [1, 2, 3, 4, 1, 2, 3, 4]
    assert [s[2] for s in seen] == returned
    assert [s[3] for s in seen] == [0] * 4 + [1] * 4  # the second epoch's steps come after the first row


def test_on_epoch_gets_each_history_row_before_the_log_is_written(tmp_path):
    trainer = make_trainer(tmp_path, epochs=2)
    rows = []

    def on_epoch(t, row):
        assert row is t.history[-1]
        logged = (t.out_dir / "log.csv").read_text().count("\n") - 1 if (t.out_dir / "log.csv").exists() else 0
        rows.append((dict(row), t.global_step, logged))

    trainer.on_epoch = on_epoch
    trainer.fit()
    assert [r[0] for r in rows] == trainer.history and [r[0]["epoch"] for r in rows] == [1, 2]
    assert [r[1] for r in rows] == [4, 8]
    assert [r[2] for r in rows] == [0, 1]  # the epoch's own line is not in log.csv yet
    assert "test_acc_2" in rows[-1][0]


def test_the_hooks_are_none_by_default_and_can_be_given_to_the_constructor(tmp_path):
    assert make_trainer(tmp_path / "a", epochs=1).on_step is None
    steps = []
    torch.manual_seed(0)
    config = TrainConfig(bits=None, batch_size=8, epochs=1, workers=0, device="cpu", init_from=None, eval_subset=None,
                         train_subset=None, checkpoint_every=0, lr=0.01)
    trainer = JointTrainer(TinyNet(), config, RandomImages(16), {}, tmp_path / "b", NUM_CLASSES, show_progress=False,
                           on_step=lambda t, losses: steps.append(sorted(losses)), on_epoch=None)
    trainer.fit()
    assert steps == [[32], [32]]  # FP32 training: two batches of one pass each, keyed by the FP32 key
