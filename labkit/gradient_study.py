"""Measurements behind notebook 02: LSQ straight-through gradients and what ALRS does (METHOD.md §3, §5).

- :func:`scale_gradient_curve` traces ``x̂`` and the two STE gradients of Eq. 13–14 over a sweep of inputs.
- :func:`gradient_magnitudes` measures, on a real network and batch, how large the weight-scale, activation-scale
  and weight gradients are at each bit-width.
- :func:`scale_gradient_ratios` repeats that for each weight-scale init (``max``, the authors' 3σ ``reference``)
  and each gradient mode (the lab's per-channel ``lsq``, the authors' ``reference``): how far apart the 2-bit and
  8-bit weight-scale gradients are depends on both, and :func:`clipped_fraction` says why (a weight the STE
  clips contributes the bound ``n`` or ``p`` to the scale gradient, one it rounds only the saw-tooth).
- :func:`alrs_steps` is the *SGD* reading of ALRS: a step is ``λ_b · |∇s_b|``, so the factors η_b of Eq. 7
  shrink a gradient spread. The recipe trains with Adam, whose step hardly depends on the gradient's size:
  :func:`adam_scale_steps` takes real Alg. A.2 steps with the lab's :class:`~labkit.train.JointTrainer` and
  records how far each precision's step moved the scales, with and without ALRS.
- :func:`printed_eq6_rates` evaluates Eq. 6 exactly as printed.
"""
from __future__ import annotations

import copy
import tempfile

import torch
import torch.nn.functional as F

from labkit.convert import quantize_model, quantized_layers, set_bits, trained_bits
from labkit.quant.lsq import fake_quantize, lsq_grad_scale
from labkit.quant.ranges import check_bits, int_range
from labkit.train.alrs import alrs_factors, gradient_term

#: Weight-scale inits compared by :func:`scale_gradient_ratios`: the lab's Double Rounding default and the authors'.
RATIO_INITS = ("max", "reference")
#: Scale-gradient modes compared: the lab's per-channel LSQ gradient and the authors' (METHOD.md §3 [ref-code]).
RATIO_GRAD_MODES = ("lsq", "reference")


def scale_gradient_curve(bits: int, high_bits: int = 8, steps: int = 2001, span: float = 2.0) -> dict:
    """``x̂``, ``∂x̂/∂x`` and ``∂x̂/∂s`` (without LSQ's ``g``) over ``x/s_l`` in ``[span·n, span·p]`` (Eq. 13–14).

    The weight is quantized the Double Rounding way: scale ``s_h = 1`` at ``high_bits`` and the second rounding
    to ``bits``, so ``x`` is measured in INT-``bits`` steps (``v_l = x / s_l``). Returns tensors ``v``, ``x_hat``
    (in l-bit steps), ``grad_x`` and ``grad_s`` = ``∂x̂/∂s_l`` (the gradient with respect to the learned ``s_h``
    divided by its ``2^Δ`` chain factor, so every bit-width is on the LSQ scale of Eq. 14), the bounds, and
    ``clip_low`` / ``clip_high``: the ``v`` where the clipped STE starts. At ``bits = high_bits`` those are
    ``n − ½`` and ``p + ½``. Below it both move down by half an INT-h step, ``2^−(Δ+1)``: a weight below
    ``(n·2^Δ − ½) / 2^Δ`` has a saturated INT-h code (``round(x) < n·2^Δ``), and one at or above
    ``((p + ½)·2^Δ − ½) / 2^Δ`` has an INT-h code whose second rounding leaves the range (ties at
    ``(p + ½)·2^Δ`` round away from the odd ``p``, to even or up).
    """
    bits = check_bits(bits)
    high_bits = check_bits(high_bits, name="high_bits")
    if bits > high_bits:
        raise ValueError(f"bits={bits} is above high_bits={high_bits}; the second rounding only lowers precision.")
    qmin, qmax = int_range(bits)
    shift = high_bits - bits
    v = torch.linspace(span * qmin, span * qmax, steps, dtype=torch.float64)
    x = (v * 2.0**shift).requires_grad_(True)
    x_hat = fake_quantize(x, torch.ones((), dtype=torch.float64), qmin, qmax, shift=shift, grad_factor=1.0)
    grad_x, = torch.autograd.grad(x_hat.sum(), x)
    grad_s = _per_element_scale_grad(x.detach(), qmin, qmax, shift)
    half_step = 2.0 ** -(shift + 1) if shift else 0.0
    return {"bits": bits, "high_bits": high_bits, "v": v, "x_hat": x_hat.detach() / 2.0**shift,
            "grad_x": grad_x, "grad_s": grad_s / 2.0**shift, "qmin": qmin, "qmax": qmax,
            "clip_low": qmin - (half_step if shift else 0.5), "clip_high": qmax + 0.5 - half_step}


def _per_element_scale_grad(x: torch.Tensor, qmin: int, qmax: int, shift: int) -> torch.Tensor:
    """``∂x̂_i/∂s`` for every element at once: one scale per element, so autograd keeps them apart."""
    scale = torch.ones_like(x, requires_grad=True)
    x_hat = fake_quantize(x, scale, qmin, qmax, shift=shift, grad_factor=1.0)
    grad, = torch.autograd.grad(x_hat.sum(), scale)
    return grad


def gradient_magnitudes(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, bits=None,
                        progress: bool = False) -> list[dict]:
    """Mean absolute gradients per bit-width on one batch: weight scales, activation scales and weights.

    For each bit-width ``b`` (default: every trained one) the whole model is switched to ``b``, one
    forward/backward of the cross-entropy runs (batch norms in eval mode, so every pass sees the same
    statistics) and, over all quantized layers, the mean ``|∂L/∂s_w|`` (per-channel weight scales),
    ``|∂L/∂s_a|`` (the activation scale of ``b``) and ``|∂L/∂W|`` are recorded, with LSQ's ``g`` of a typical
    layer. The model's bit-widths and gradients are restored afterwards. ``progress`` shows a bar over the passes.
    """
    from tqdm.auto import tqdm

    layers = quantized_layers(model)
    bit_list = [check_bits(b, allowed=trained_bits(model)) for b in (bits or trained_bits(model))]
    saved_bits = {name: layer.bits for name, layer in layers.items()}
    was_training = model.training
    model.eval()
    rows = []
    try:
        for b in tqdm(bit_list, desc="one pass per precision", disable=not progress, leave=False):
            model.zero_grad(set_to_none=True)
            set_bits(model, b)
            F.cross_entropy(model(images), labels).backward()
            w_scale, a_scale, w_grad = [], [], []
            for layer in layers.values():
                w_scale.append(layer.weight_quantizer.scale.grad.abs().mean())
                a_scale.append(layer.act_quantizer.scale[str(b)].grad.abs())
                w_grad.append(layer.weight.grad.abs().mean())
            middle = list(layers.values())[len(layers) // 2]
            rows.append({
                "bits": b,
                "weight_scale_grad": float(torch.stack(w_scale).mean()),
                "act_scale_grad": float(torch.stack(a_scale).mean()),
                "weight_grad": float(torch.stack(w_grad).mean()),
                "lsq_g": lsq_grad_scale(middle.weight[0].numel(), int_range(b)[1]),
                "eq6_term": gradient_term([layer.weight_quantizer.scale.grad for layer in layers.values()]),
            })
    finally:
        model.zero_grad(set_to_none=True)
        set_bits(model, saved_bits)
        model.train(was_training)
    top = rows[0]
    for row in rows:
        for key in ("weight_scale_grad", "act_scale_grad", "weight_grad"):
            row[f"{key}_vs_top"] = row[key] / top[key] if top[key] else float("nan")
    return rows


def clipped_fraction(model: torch.nn.Module, bits: int) -> float:
    """The fraction of all quantized weights the STE clips at ``bits`` (their ``∂Ŵ/∂W`` is 0, Eq. 13).

    Read from the quantizer's own backward (``∂/∂W`` of ``Σ Ŵ``), so it is the mask training uses, in the
    model's gradient mode. A clipped weight adds the bound (``n`` or ``p``) to its scale's gradient; a rounded
    one only the saw-tooth ``round(v) − v``, which averages out.
    """
    bits = check_bits(bits, allowed=trained_bits(model))
    clipped = total = 0
    for layer in quantized_layers(model).values():
        weight = layer.weight.detach().clone().requires_grad_(True)
        grad, = torch.autograd.grad(layer.weight_quantizer(weight, bits).sum(), weight)
        clipped += int((grad == 0).sum())
        total += grad.numel()
    return clipped / total


@torch.no_grad()
def zero_code_fraction(model: torch.nn.Module, bits: int) -> float:
    """The fraction of all quantized weights whose ``bits``-bit code is 0 (Eq. 1–2: ``q_l = 0``).

    A weight at code 0 has the scale-gradient term ``round(v) − v = −v``: the whole weight is its error, and its
    sign follows the weight, so these terms add up instead of averaging out as the small 8-bit saw-tooth does.
    """
    bits = check_bits(bits, allowed=trained_bits(model))
    zero = total = 0
    for layer in quantized_layers(model).values():
        codes, _ = layer.weight_quantizer.codes(layer.weight, bits)
        zero += int((codes == 0).sum())
        total += codes.numel()
    return zero / total


def scale_gradient_ratios(fp32_model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, bits=(8, 6, 4, 2),
                          inits=RATIO_INITS, grad_modes=RATIO_GRAD_MODES, example_input=None,
                          progress: bool = False) -> list[dict]:
    """Weight-scale gradients per bit-width for every (weight-scale init, gradient mode) pair (Eq. 14, METHOD.md §3).

    Each pair quantizes a fresh copy of ``fp32_model`` for ``bits`` with Double Rounding (``weight_init=init``,
    ``grad_mode=mode``; ``example_input`` for the probe, default two of ``images``) and runs
    :func:`gradient_magnitudes` on the same batch. A row holds the mean
    ``|∂L/∂s_h|`` per bit (``grad``, a dict), ``ratio`` = lowest-bit ÷ highest-bit gradient, ``chain`` = the
    ``2^Δ`` chain factor that gradient carries (``lsq`` mode: ``∂s_l/∂s_h = 2^Δ``; the authors' gradient has
    none), ``ratio_per_tied_scale`` = ``ratio / chain`` (the ratio of the gradients with respect to the tied
    l-bit scale ``s_l``), the fraction of weights the STE clips at the highest and the lowest bit
    (:func:`clipped_fraction`) and the fraction of lowest-bit codes at 0 (:func:`zero_code_fraction`).
    """
    from tqdm.auto import tqdm

    pairs = [(init, mode) for init in inits for mode in grad_modes]
    rows = []
    for init, mode in tqdm(pairs, desc="init × gradient mode", disable=not progress, leave=False):
        model = quantize_model(fp32_model, bits=bits, weight_init=init, grad_mode=mode,
                               example_input=images[:2] if example_input is None else example_input)
        magnitudes = gradient_magnitudes(model, images, labels)
        grads = {row["bits"]: row["weight_scale_grad"] for row in magnitudes}
        high, low = max(grads), min(grads)
        chain = 2.0 ** (high - low) if mode == "lsq" else 1.0
        rows.append({"init": init, "grad_mode": mode, "grad": grads, "ratio": grads[low] / grads[high],
                     "chain": chain, "ratio_per_tied_scale": grads[low] / grads[high] / chain,
                     "clipped_high": clipped_fraction(model, high), "clipped_low": clipped_fraction(model, low),
                     "zero_codes_low": zero_code_fraction(model, low)})
    return rows


def alrs_steps(magnitudes: list[dict], lr: float = 5e-4, rule: str = "eq7") -> list[dict]:
    """The SGD step of one weight-scale update, ``λ_b·|∇s_b|``, per precision without ALRS and with η_b (Eq. 7).

    This is the argument for ALRS under plain SGD, where a step is proportional to the gradient: the spread
    between precisions (max/min) is what η_b shrinks. The ratio columns are relative to the top precision.
    Under Adam, the recipe's optimizer, a step is about ``λ_b`` whatever the gradient: :func:`adam_scale_steps`.
    """
    factors = alrs_factors([row["bits"] for row in magnitudes], rule)
    top = magnitudes[0]["weight_scale_grad"]
    out = []
    for row in magnitudes:
        b, grad = row["bits"], row["weight_scale_grad"]
        out.append({"bits": b, "eta": factors[b], "step_without": lr * grad, "step_with": lr * factors[b] * grad,
                    "ratio_without": grad / top, "ratio_with": factors[b] * grad / top})
    return out


class _StepRecorder:
    """Optimizer step hooks: before a step, the scales the current precision trains and their gradients; after
    it, how far the step moved them (``|Δ|``). One record per optimizer step (Alg. A.2: one per precision)."""

    def __init__(self, trainer):
        from labkit.train.alrs import layer_weight_scales

        self.trainer, self.layer_weight_scales = trainer, layer_weight_scales
        self.rows: list[dict] = []
        self._before = None
        self._lowest = min(trained_bits(trainer.model))
        self._last_lowest_grad = None  # the weight-scale gradients of the latest lowest-bit pass

    @torch.no_grad()
    def pre(self, optimizer, args, kwargs) -> None:
        model = self.trainer.model
        bits = next(iter(quantized_layers(model).values())).bits
        weight_scales = [p for params in self.layer_weight_scales(model, bits).values() for p in params]
        act_scales = [layer.act_quantizer.scale[str(bits)] for layer in quantized_layers(model).values()]
        lrs = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
        self._before = {
            "bits": bits, "weight": [(p, p.detach().clone(), p.grad.detach().clone()) for p in weight_scales
                                     if p.grad is not None],
            "act": [(p, p.detach().clone()) for p in act_scales if p.grad is not None],
            "lr_weight_scale": lrs[id(weight_scales[0])], "lr_act_scale": lrs[id(act_scales[0])],
        }

    @torch.no_grad()
    def post(self, optimizer, args, kwargs) -> None:
        before, self._before = self._before, None
        moved = torch.cat([(p.detach() - old).flatten() for p, old, _ in before["weight"]])
        start = torch.cat([old.flatten() for _, old, _ in before["weight"]])
        grads = torch.cat([g.flatten() for _, _, g in before["weight"]])
        act_moved = torch.stack([(p.detach() - old).abs() for p, old in before["act"]])
        stepped = moved != 0
        # Adam steps against m̂ (the running mean of this and earlier precisions' gradients), SGD against ∇ now.
        against_own = (torch.sign(moved) == -torch.sign(grads)) & stepped
        # Only where every precision trains the same scales (Double Rounding's shared s_h) is there a lowest-bit
        # gradient of *these* scales to compare with.
        params = [id(p) for p, _, _ in before["weight"]]
        if before["bits"] == self._lowest:
            self._last_lowest_grad = (params, grads)
        lowest = self._last_lowest_grad
        against_lowest = (float(((torch.sign(moved) == -torch.sign(lowest[1])) & stepped).sum()
                                / stepped.sum().clamp_min(1))
                          if lowest is not None and lowest[0] == params else float("nan"))
        self.rows.append({
            "bits": before["bits"], "lr_weight_scale": before["lr_weight_scale"],
            "lr_act_scale": before["lr_act_scale"],
            "weight_scale_step": float(moved.abs().mean()),
            "weight_scale_relative_step": float((moved.abs() / start.abs()).median()),
            "weight_scale_grad": float(grads.abs().mean()),
            "against_own_gradient": float(against_own.sum() / stepped.sum().clamp_min(1)),
            "against_lowest_bit_gradient": against_lowest,
            "act_scale_step": float(act_moved.mean()),
        })


def adam_scale_steps(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, alrs: str = "eq7",
                     batch_size: int = 128, lr: float = 5e-4, weight_decay: float = 5e-5,
                     progress: bool = False) -> list[dict]:
    """Real Alg. A.2 steps of the recipe's Adam on a copy of ``model``: how far each precision's step moves the scales.

    ``images``/``labels`` are cut into ``len // batch_size`` batches. Each batch runs the lab's
    :meth:`JointTrainer.train_step <labkit.train.JointTrainer.train_step>` (every bit-width high → low: forward,
    backward, one Adam step with the weights at λ and the scales at ``λ·η_b``, METHOD.md §4–5) with ALRS rule
    ``alrs`` (``"eq7"``, ``"geometric"`` or ``"none"``: one λ). The cosine schedule is that of a 200-epoch run, so
    these are the first steps of a real run. Optimizer hooks record, for every step, the precision ``bits``, the
    learning rates the weight-scale and activation-scale groups stepped with, the mean ``|Δs_w|`` over every weight
    scale that precision trains, the median relative step ``|Δs_w| / |s_w|``, the mean ``|∇s_w|`` it stepped
    on, the fraction of the weight scales that moved against this pass's own gradient
    (``against_own_gradient``: 1 for SGD; 0.5 is a coin toss) and against the latest lowest-bit pass's gradient
    (``against_lowest_bit_gradient``, where every precision trains the same scales), and the mean ``|Δs_a|`` of
    that precision's activation scales. Every activation scale is initialised (one forward per
    bit-width, no gradient) before the first step, so an init never counts as a step. ``model`` is not changed.
    """
    from torch.utils.data import TensorDataset
    from tqdm.auto import tqdm

    from labkit.train import JointTrainer, TrainConfig
    from labkit.train.distributed import ProcessGroup

    batches = len(labels) // batch_size
    if batches < 1:
        raise ValueError(f"{len(labels)} images make no batch of batch_size={batch_size}; pass more images or a "
                         "smaller batch_size.")
    work = copy.deepcopy(model)
    plan = getattr(work, "labkit_quant", {})
    config = TrainConfig(bits=tuple(trained_bits(work)), method=plan.get("method", "double_rounding"),
                         rounding=plan.get("rounding", "half_even"), grad_mode=plan.get("grad_mode", "lsq"),
                         algorithm="a2", alrs=alrs, optimizer="adam", lr=lr, weight_decay=weight_decay,
                         batch_size=batch_size, epochs=200, workers=0, device=images.device.type, init_from=None)
    with torch.no_grad():  # initialise every activation scale (their LSQ init runs on first use)
        work.eval()
        for b in config.bits:
            set_bits(work, b)
            work(images[:batch_size])
    with tempfile.TemporaryDirectory(prefix="labkit-adam-steps-") as out_dir:
        trainer = JointTrainer(work, config, TensorDataset(images, labels), {}, out_dir, int(labels.max()) + 1,
                               group=ProcessGroup(device=images.device), show_progress=False)
        recorder = _StepRecorder(trainer)
        hooks = [trainer.optimizer.register_step_pre_hook(recorder.pre),
                 trainer.optimizer.register_step_post_hook(recorder.post)]
        trainer.model.train()
        try:
            for k in tqdm(range(batches), desc=f"Adam steps, ALRS {alrs}", disable=not progress, leave=False):
                window = slice(k * batch_size, (k + 1) * batch_size)
                trainer.train_step(images[window], labels[window], torch.arange(window.start, window.stop), epoch=0)
                trainer.global_step += 1
        finally:
            for hook in hooks:
                hook.remove()
    for index, row in enumerate(recorder.rows):
        row["batch"] = index // len(config.bits)
        row["adam_step"] = index + 1
    return recorder.rows


def compare_adam_steps(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, rules=("none", "eq7"),
                       progress: bool = False, **options) -> list[dict]:
    """:func:`adam_scale_steps` for each ALRS rule on the same batches, summarised per precision.

    One row per bit-width with ``eta`` (Eq. 7) and, per rule ``r``: ``weight_scale_step_r``,
    ``act_scale_step_r``, ``weight_scale_relative_step_r``, ``lr_weight_scale_r``, ``lr_act_scale_r`` (means
    over every batch), ``first_weight_scale_step_r`` (the first batch), and ``against_own_gradient_r`` /
    ``against_lowest_bit_gradient_r`` (means over the batches after the first, once Adam's moments hold every
    precision's gradient; NaN with a single batch).
    """
    from tqdm.auto import tqdm

    bits = trained_bits(model)
    factors = alrs_factors(bits)
    summary = {b: {"bits": b, "eta": factors[b]} for b in bits}
    for rule in tqdm(rules, desc="ALRS rule", disable=not progress, leave=False):
        records = adam_scale_steps(model, images, labels, alrs=rule, **options)
        for b in bits:
            mine = [r for r in records if r["bits"] == b]
            later = [r for r in mine if r["batch"] >= 1]  # Adam's moments have seen every precision's gradient
            for key in ("weight_scale_step", "act_scale_step", "weight_scale_relative_step", "lr_weight_scale",
                        "lr_act_scale"):
                summary[b][f"{key}_{rule}"] = _mean(r[key] for r in mine)
            for key in ("against_own_gradient", "against_lowest_bit_gradient"):
                summary[b][f"{key}_{rule}"] = _mean(r[key] for r in later)
            summary[b][f"first_weight_scale_step_{rule}"] = mine[0]["weight_scale_step"]
    return list(summary.values())


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


def printed_eq6_rates(magnitudes: list[dict], lr: float = 5e-4) -> list[dict]:
    """Eq. 6 as printed, ``λ_b = η_b·(λ − G_b)``, with the measured ``G_b``: negative whenever ``G_b > λ``."""
    factors = alrs_factors([row["bits"] for row in magnitudes], "eq7")
    return [{"bits": row["bits"], "G_b": row["eq6_term"], "lr_printed": factors[row["bits"]] * (lr - row["eq6_term"]),
             "lr_eq7": factors[row["bits"]] * lr} for row in magnitudes]
