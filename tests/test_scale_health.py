"""Weight scales under Adam (issue 10 item 10): the monitor's counts and the opt-in ``weight_scale_update="log"``.

References: sign and ratio counts worked out by hand on set values; Adam's first step written out in
``θ = log(s)/k``, whose gradient is ``k · s · ∂L/∂s``, so the new scale is about ``s · exp(−k·λ·sign(∂L/∂s))``.
"""
import copy

import pytest
import torch

from labkit.errors import LabkitError
from labkit.train.scale_health import WeightScaleMonitor, weight_scale_parameters
from test_alrs_training import LR, adam_step_sizes, quantized_tiny
from test_train_loop import first_batch, make_trainer


def test_monitor_counts_sign_changes_and_falls_by_hand():
    model = quantized_tiny()
    monitor = WeightScaleMonitor(model, fraction=0.25)
    scale = model.conv2.weight_quantizer.scale
    start = scale.detach().clone()
    with torch.no_grad():
        scale[0] = -start[0]            # sign changed (and below a quarter)
        scale[1] = 0.2 * start[1]       # below a quarter, same sign
        scale[2] = 0.5 * start[2]       # fine
    monitor.update()
    with torch.no_grad():
        scale[0] = start[0]             # back to its start: counted "ever", not "at end"
    monitor.update()
    summary = monitor.summary()
    assert summary["channels"] == 2 * model.conv2.weight.shape[0] and summary["steps"] == 2
    assert summary["sign_changed_at_end"] == 0 and summary["sign_changed_ever"] == 1
    assert summary["below_0.25_of_start_at_end"] == 1 and summary["below_0.25_of_start_ever"] == 2


def test_log_update_first_step_is_multiplicative_by_hand(tmp_path):
    model = quantized_tiny()
    reference = copy.deepcopy(model)
    trainer = make_trainer(tmp_path, model=model, lr=LR, weight_scale_update="log", weight_scale_log_lr=20.0,
                           alrs="none")
    scale = trainer.model.conv2.weight_quantizer.scale
    start = scale.detach().clone()
    signs = []
    trainer.step_callbacks.append(lambda: signs.append(None))
    # The gradient of the first (8-bit) pass, by autograd on an untouched copy.
    from labkit.convert import set_bits
    import torch.nn.functional as F
    images, labels, indices = first_batch()
    set_bits(reference, 8)
    reference.train()
    grad, = torch.autograd.grad(F.cross_entropy(reference(images.double()), labels),
                                [reference.conv2.weight_quantizer.scale])
    trainer.optimizer.zero_grad(set_to_none=True)
    # One A.2 step of the 8-bit pass only: run the batch with the 8-bit precision alone.
    trainer.bits = (8,)
    trainer.train_step(images.double(), labels, indices, epoch=0)
    # Adam's first step written out (β-corrected moments m̂ = g_θ, v̂ = g_θ², ε = 1e-8) in θ = log(s)/20,
    # whose gradient is 20 · s · ∂L/∂s:
    g_theta = 20.0 * start * grad
    expected = torch.exp(20.0 * (torch.log(start) / 20.0 - LR * g_theta / (g_theta.abs() + 1e-8)))
    assert torch.allclose(scale.detach(), expected, rtol=1e-7, atol=0)
    assert bool((g_theta.abs() > 1e-8).any()) and not torch.allclose(scale.detach(), start)
    assert len(signs) == 1, "step callbacks run after every step"


def test_log_update_keeps_every_scale_positive_where_plain_adam_flips_them(tmp_path):
    results = {}
    for update in ("adam", "log"):
        trainer = make_trainer(tmp_path / update, model=quantized_tiny(), lr=2e-2, weight_scale_update=update,
                               alrs="none", epochs=3, n_train=32)
        monitor = WeightScaleMonitor(trainer.model)
        trainer.step_callbacks.append(monitor.update)
        for _ in range(6):
            images, labels, indices = first_batch()
            trainer.train_step(images.double(), labels, indices, epoch=0)
        results[update] = monitor.summary()
    assert results["adam"]["sign_changed_ever"] > 0, results
    assert results["log"]["sign_changed_ever"] == 0, results
    assert all(bool((p > 0).all()) for p in weight_scale_parameters(trainer.model).values())


def test_log_update_refuses_non_positive_scales(tmp_path):
    model = quantized_tiny()
    with torch.no_grad():
        model.conv3.weight_quantizer.scale[0] = -1e-3
    with pytest.raises(LabkitError, match="weight_scale_update=log"):
        make_trainer(tmp_path, model=model, weight_scale_update="log")
