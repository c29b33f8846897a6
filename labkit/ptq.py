"""Double Rounding applied to an existing model after training (reviewers' question, METHOD.md §8).

"Can Double Rounding be applied to an existing INT8 model (post-training)?" — :func:`post_training_multi_precision`
quantizes a trained FP32 model to INT8 with no training at all (weight scales from the weights, activation scales
and per-bit batch-norm statistics calibrated on a few batches), then every lower precision is derived from the
INT8 codes by the second rounding. Comparing its accuracy per bit-width with the jointly trained model measures
how much of "nearly lossless" is the rounding and how much is the joint training.
"""
from __future__ import annotations

import math

import torch

from labkit.convert import get_bits, quantize_model, set_bits
from labkit.nn import SwitchableBatchNorm2d


def _batch_norms_at(model: torch.nn.Module, bits: int) -> list[torch.nn.BatchNorm2d]:
    """The per-bit batch norms that run when the whole model is at ``bits`` (plain BNs of FP32 layers excluded)."""
    return [module.per_bit[str(bits)] for module in model.modules() if isinstance(module, SwitchableBatchNorm2d)]


@torch.no_grad()
def calibrate(model: torch.nn.Module, images: torch.Tensor, bits, batch_size: int = 128,
              batch_norm: bool = True) -> torch.nn.Module:
    """Set the activation scales of each bit-width from ``images`` and, with ``batch_norm``, re-estimate that
    bit-width's batch-norm statistics on them (cumulative average). No weight changes; batch norms of other
    bit-widths and of the FP32 layers keep their statistics."""
    per_bit = {id(n) for s in model.modules() if isinstance(s, SwitchableBatchNorm2d) for n in s.per_bit.values()}
    frozen = [(m, m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
              for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d) and id(m) not in per_bit]
    for b in bits:
        set_bits(model, b)
        model.eval()
        model(images[:batch_size])  # first use initialises this bit-width's activation scales
        if batch_norm:
            norms = _batch_norms_at(model, b)
            momenta = [norm.momentum for norm in norms]
            for norm in norms:
                norm.reset_running_stats()
                norm.momentum = None
            model.train()
            for start in range(0, len(images), batch_size):
                model(images[start:start + batch_size])
            model.eval()
            for norm, momentum in zip(norms, momenta):
                norm.momentum = momentum
            for m, mean, var, count in frozen:  # the FP32 layers' BNs ran in train mode too: put them back
                m.running_mean.copy_(mean), m.running_var.copy_(var), m.num_batches_tracked.copy_(count)
    return model


def post_training_multi_precision(fp32_model: torch.nn.Module, images: torch.Tensor, bits=(8, 6, 4, 2),
                                  method: str = "double_rounding", rounding: str = "half_even",
                                  batch_norm: bool = True, weight_init: str = "max") -> torch.nn.Module:
    """A multi-precision INT8 model made from ``fp32_model`` without training.

    ``method`` is any of :func:`labkit.quantize_model`'s: ``"double_rounding"`` (Eq. 2), ``"floor"`` (the fair
    truncation: ``q_8 >> Δ`` dequantized at the centre of the INT8 cells it covers, AdaBits / Bit-Mixer at their
    best) or ``"floor_naive"`` (the same codes dequantized at the bottom of their cells, the Double Rounding
    authors' own truncation ablation, biased down by about half an l-bit step). Weight scales use the ``max`` rule
    on the FP32 weights by default (``weight_init="max"``, nothing clipped; any of :func:`labkit.quantize_model`'s
    ``weight_init`` rules can be passed); activation scales and, with ``batch_norm``,
    the per-bit batch norms are calibrated on ``images``. ``fp32_model`` itself is not changed.
    """
    model = quantize_model(fp32_model, bits=bits, method=method, rounding=rounding, weight_init=weight_init,
                           example_input=images[:2]).eval()  # the probe pass runs on the calibration images
    return calibrate(model, images, bits, batch_norm=batch_norm)


#: The post-training variants notebook 06 compares with the jointly trained model: (label, method, batch_norm).
#: The two truncations drop the same low bits (the same l-bit codes); they differ only in where they dequantize.
VARIANTS = (("post-training, Double Rounding", "double_rounding", False),
            ("post-training, Double Rounding + BN re-estimated", "double_rounding", True),
            ("post-training, truncation (fair: cell centre) + BN re-estimated", "floor", True),
            ("post-training, naive truncation (biased: cell bottom, the authors' ablation) + BN re-estimated",
             "floor_naive", True))


def short_label(record: dict) -> str:
    """A short name of a :func:`post_training_comparison` record for a figure's axis."""
    method = record.get("method")
    names = {"double_rounding": "Double Rounding", "floor": "truncation, fair (cell centre)",
             "floor_naive": "truncation, naive (cell bottom)"}
    if method not in names:
        return record["label"]
    return names[method] + (" + BN re-est." if record.get("batch_norm") else "")


@torch.no_grad()
def _top1(model: torch.nn.Module, test, bits: int | None, batch_size: int = 250) -> float:
    """Top-1 (%) of ``model`` (at ``bits``; None: as it is) on the tensors of ``test`` (a TensorDataset)."""
    if bits is not None:
        set_bits(model, bits)
    was_training = model.training
    model.eval()
    images, labels = test.tensors
    correct = sum(int((model(images[i:i + batch_size]).argmax(1) == labels[i:i + batch_size]).sum())
                  for i in range(0, len(labels), batch_size))
    model.train(was_training)
    return round(100.0 * correct / len(labels), 4)


def post_training_comparison(fp32_model: torch.nn.Module, jointly_trained: torch.nn.Module, images: torch.Tensor,
                             dataset, bits=(8, 6, 4, 2), progress: bool = True) -> list[dict]:
    """Accuracy per bit-width on ``dataset`` of each post-training variant (calibrated on ``images``) and of the
    jointly trained model; every record also carries the FP32 model's accuracy on the same images (``fp32``), the
    number of test images (``images``), the variant's ``method`` and ``batch_norm``.

    The test images are decoded once (:func:`labkit.bit_accuracy.load_images`) and every model is scored on the
    same tensors; ``progress`` shows one ``tqdm.auto`` bar over the calibrations and scorings.
    """
    from torch.utils.data import TensorDataset
    from tqdm.auto import tqdm

    from labkit.bit_accuracy import load_images

    bits = tuple(bits)
    test = dataset if isinstance(dataset, TensorDataset) else load_images(dataset)
    with tqdm(total=1 + len(VARIANTS) * (1 + len(bits)) + len(bits), desc="post-training comparison",
              disable=not progress, leave=False, dynamic_ncols=True) as bar:
        fp32 = _top1(fp32_model, test, None)
        bar.update()
        records = []
        for label, method, batch_norm in VARIANTS:
            bar.set_postfix_str(f"calibrating: {method}{' + BN' if batch_norm else ''}")
            model = post_training_multi_precision(fp32_model, images, bits, method=method, batch_norm=batch_norm)
            bar.update()
            accuracy = {}
            for b in bits:
                bar.set_postfix_str(f"scoring: {method}{' + BN' if batch_norm else ''}, {b}-bit")
                accuracy[b] = _top1(model, test, b)
                bar.update()
            records.append({"label": label, "method": method, "batch_norm": batch_norm, "accuracy": accuracy,
                            "fp32": fp32, "images": len(test)})
        before = get_bits(jointly_trained)
        accuracy = {}
        for b in bits:
            bar.set_postfix_str(f"scoring: jointly trained, {b}-bit")
            accuracy[b] = _top1(jointly_trained, test, b)
            bar.update()
        set_bits(jointly_trained, before)
        records.append({"label": "jointly trained", "method": "jointly trained", "batch_norm": False,
                        "accuracy": accuracy, "fp32": fp32, "images": len(test)})
    return records


# ---------------------------------------------------------------- how much one measurement resolves


def standard_error(accuracy: float, images: int) -> float:
    """The binomial standard error, in points, of a top-1 accuracy (%) measured on ``images`` test images:
    ``100 · sqrt(p (1 − p) / N)`` with ``p = accuracy / 100`` (the spread over draws of N test images)."""
    if isinstance(images, bool) or not isinstance(images, int) or images < 1:
        raise ValueError(f"images={images!r} must be a positive whole number of test images.")
    if not 0.0 <= accuracy <= 100.0:
        raise ValueError(f"accuracy={accuracy!r} must be a percentage in [0, 100].")
    p = accuracy / 100.0
    return 100.0 * math.sqrt(p * (1.0 - p) / images)


def difference_verdict(a: float, b: float, images: int) -> dict:
    """Is ``a − b`` (two accuracies in %, each measured once on the same number of test images) resolved?

    The standard error of a difference of two such measurements is ``sqrt(SE_a² + SE_b²)``
    (:func:`standard_error`); the difference counts as resolved when it is more than twice that (about 95 %).
    This treats the two measurements as independent: on the same images they are correlated and the real spread
    of the difference is smaller, but a calibration on other images would move both too, so the verdict is a
    conservative one. Returns ``difference``, ``se`` (of the difference) and ``resolved``.
    """
    se = math.hypot(standard_error(a, images), standard_error(b, images))
    difference = a - b
    return {"difference": difference, "se": se, "resolved": abs(difference) > 2.0 * se}


#: The comparisons :func:`post_training_summary` reads out: (what, method A, method B), A − B per bit.
SUMMARY_COMPARISONS = (
    ("Double Rounding − fair truncation (both + BN)", "double_rounding", "floor"),
    ("fair − naive truncation (same codes: cell centre vs bottom)", "floor", "floor_naive"),
    ("jointly trained − post-training Double Rounding + BN", "jointly trained", "double_rounding"),
)


def _record_of(records: list[dict], method: str) -> dict:
    candidates = [r for r in records if r.get("method") == method]
    if method == "double_rounding":  # the BN re-estimated one: the variant the others are calibrated like
        candidates = [r for r in candidates if r.get("batch_norm")] or candidates
    if not candidates:
        raise KeyError(f"no record of method {method!r}; pass the records of post_training_comparison.")
    return candidates[0]


def post_training_summary(records: list[dict]) -> str:
    """Markdown: how far one measurement resolves (:func:`standard_error` at a typical accuracy) and, per bit, the
    differences of :data:`SUMMARY_COMPARISONS` with their verdict (:func:`difference_verdict`)."""
    images = records[0]["images"]
    bits = list(records[0]["accuracy"])
    lines = [f"One measurement on {images:,} test images has a binomial standard error of about "
             f"±{standard_error(80.0, images):.1f} points at 80 % top-1 (±{standard_error(50.0, images):.1f} at "
             f"50 %, ±{standard_error(91.0, images):.1f} at 91 %); a difference of two counts as resolved when it is "
             "more than twice the standard error of the difference, √(SE₁² + SE₂²).", "",
             "| difference (points) | " + " | ".join(f"{b}-bit" for b in bits) + " |",
             "| :--- |" + " ---: |" * len(bits)]
    for what, first, second in SUMMARY_COMPARISONS:
        a, b = _record_of(records, first), _record_of(records, second)
        cells = []
        for bit in bits:
            verdict = difference_verdict(a["accuracy"][bit], b["accuracy"][bit], images)
            text = f"{verdict['difference']:+.1f} ± {verdict['se']:.1f}".replace("-", "−")
            cells.append(text + ("" if verdict["resolved"] else " (not resolved)"))
        lines.append(f"| {what} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _difference_cell(a: float, b: float, images: int) -> str:
    verdict = difference_verdict(a, b, images)
    text = f"{verdict['difference']:+.1f} ± {verdict['se']:.1f}".replace("-", "−")
    return text + (" (resolved)" if verdict["resolved"] else " (not resolved)")


def post_training_findings(records: list[dict], chance: float | None = None) -> str:
    """Markdown bullets that say in words what :func:`post_training_comparison` measured, every number from
    ``records`` (none typed in the notebook): post-training Double Rounding with re-estimated batch norms minus
    the FP32 model on the same images, per bit, with the standard error of the difference and its verdict
    (:func:`difference_verdict`); and, if the records have it, the variant without re-estimated batch norms per
    bit with its binomial standard error (:func:`standard_error`), next to ``chance`` (%) when given."""
    images, fp32 = records[0]["images"], records[0]["fp32"]
    bits = list(records[0]["accuracy"])
    with_bn = _record_of(records, "double_rounding")
    lines = [f"* Post-training Double Rounding with re-estimated batch norms minus the FP32 model ({fp32:.1f} % on "
             f"the same {images:,} test images), in points: "
             + ", ".join(f"{b}-bit {_difference_cell(with_bn['accuracy'][b], fp32, images)}" for b in bits) + "."]
    without_bn = [r for r in records if r.get("method") == "double_rounding" and not r.get("batch_norm")]
    if without_bn:
        accuracy = without_bn[0]["accuracy"]
        lines.append("* Without re-estimating the batch norms: "
                     + ", ".join(f"{b}-bit {accuracy[b]:.1f} ± {standard_error(accuracy[b], images):.1f} %"
                                 for b in bits)
                     + (f" (chance: {chance:.0f} %)" if chance is not None else "") + ".")
    return "\n".join(lines)
