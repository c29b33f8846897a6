"""Per-layer Hessian traces by Hutchinson's method: the sensitivity HASB uses (METHOD.md §6 step 1, paper Alg. 1).

For the loss L over a fixed set of images and one layer's weight W (flattened, n entries), the layer's
sensitivity is the trace of its Hessian block H = ∂²L/∂W². Hutchinson's estimator needs only
Hessian-vector products: for a Rademacher probe v (entries ±1), E[vᵀHv] = tr(H). Hv comes from double
backprop, ``Hv = ∂(g·v)/∂W`` with ``g = ∂L/∂W`` built with ``create_graph=True``.

One probe draws v for every layer, runs over all the images (their mean loss, batch by batch) and gives
one sample vᵀHv per layer; the estimate is the mean over probes (at most ``probes``, METHOD.md: ≤ 7),
stopping early once every layer's running mean moves by less than ``tolerance`` (relative) — PyHessian's rule.
By default each layer's Hv is its own double backward (``blockwise=True``), so a sample sees only that layer's
Hessian block; one joint double backward for all layers (``blockwise=False``) is cheaper and still unbiased,
but the cross-layer terms make it far noisier for the handful of probes HASB affords.

HASB divides |trace| by the layer's parameter count: the "average HMT" (METHOD.md §6). The model is used in
eval mode, in the precision it is in: the paper takes the **FP32** model. On a quantized model the gradient
flows through the quantizers' straight-through estimators, so the result is the STE Hessian at the current
bit-width — it runs, but is not what the paper measures. Layer names are the same either way
(``quantize_model`` keeps them), so traces of the FP32 model drive the quantized SuperNet.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from labkit.convert import plan_quantization, quantized_layers
from labkit.hasb.graph import pointwise_convs
from labkit.hasb.progress import progress_bar
from labkit.hasb.roulette import sensitivity_threshold


class TraceEstimate(NamedTuple):
    """Hutchinson estimate of one layer's Hessian trace.

    ``trace`` is the raw estimate (mean of ``samples``, may be slightly negative); ``average`` is
    ``|trace| / parameters``, the "average HMT" HASB ranks layers by; ``stderr`` is the standard error of
    the mean over probes (nan after a single probe); ``samples`` are the per-probe values vᵀHv.
    """

    trace: float
    average: float
    stderr: float
    probes: int
    parameters: int
    samples: tuple[float, ...]


class HMTDistribution(NamedTuple):
    """The average-HMT distribution over layers (METHOD.md §8: "show the HMT distribution").

    ``ranked``: (layer, average HMT) from most to least sensitive; ``mean``/``median`` of the values;
    ``threshold``: the sensitivity threshold of ``rule`` (the paper: the mean); ``sensitive``: the layers at
    or above it, in the input's (module) order.
    """

    ranked: list[tuple[str, float]]
    mean: float
    median: float
    threshold: float
    sensitive: list[str]


def default_layers(model: nn.Module, example_input: torch.Tensor | None = None,
                   exclude_pointwise: bool = False) -> list[str]:
    """The layers HASB measures: those ``quantize_model`` quantizes (less the 1×1 convs with ``exclude_pointwise``).

    A quantized model: its ``quantized_layers`` (no input needed). An FP32 model: every ``nn.Conv2d``/``nn.Linear``
    except the first and the last *executed* one, found by one forward pass, in execution order, exactly as
    ``quantize_model`` finds them (:func:`labkit.convert.plan_quantization`): of ``example_input``, else of a batch
    of the shape the model states; where neither is there, :class:`~labkit.errors.ExampleInputError`.
    ``exclude_pointwise``: leave out the 1×1 convolutions, as the authors' code does (:func:`pointwise_convs`;
    default ``False``, see :func:`hessian_trace_estimates`).
    """
    quantized = quantized_layers(model)
    if quantized:
        layers = list(quantized)
    else:
        layers = list(plan_quantization(model, example_input=example_input)["layers"])
    if exclude_pointwise:
        pointwise = set(pointwise_convs(model, layers))
        layers = [name for name in layers if name not in pointwise]
    return layers


def _batches(data, images: int, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``images`` (image, label) pairs of ``data`` as a list of batches (kept, so every probe sees them)."""
    if images < 1 or batch_size < 1:
        raise ValueError(f"images and batch_size must be ≥ 1, got images={images}, batch_size={batch_size}")
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        inputs, labels = data
        if len(inputs) != len(labels):
            raise ValueError(f"{len(inputs)} images but {len(labels)} labels")
        inputs, labels = inputs[:images], labels[:images]
        return list(zip(inputs.split(batch_size), labels.split(batch_size)))
    if isinstance(data, Dataset):
        data = DataLoader(Subset(data, range(min(images, len(data)))), batch_size=batch_size, shuffle=False)
    batches, seen = [], 0
    for batch in data:  # a DataLoader or any iterable of (images, labels) batches
        inputs, labels = batch[0][: images - seen], batch[1][: images - seen]
        batches.append((inputs, labels))
        seen += len(inputs)
        if seen >= images:
            break
    if not batches:
        raise ValueError("the data gave no images")
    return batches


def _layer_weights(model: nn.Module, layers: Iterable[str]) -> dict[str, nn.Parameter]:
    weights = {}
    for name in layers:
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise KeyError(f"the model has no layer named {name!r}") from None
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor):
            raise KeyError(f"layer {name!r} ({type(module).__name__}) has no weight tensor")
        weights[name] = weight
    if not weights:
        raise ValueError("no layers to measure")
    return weights


def _rademacher(weight: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A ±1 tensor shaped like ``weight`` (drawn on the CPU, so a seed gives the same probes on any device)."""
    signs = torch.randint(0, 2, weight.shape, generator=generator, dtype=torch.int8) * 2 - 1
    return signs.to(device=weight.device, dtype=weight.dtype)


def _probe(model, weights, batches, loss_fn, device, dtype, generator, blockwise, progress) -> dict[str, float]:
    """One Hutchinson sample vᵀHv per layer for the mean loss over all ``batches`` (the same v for every batch)."""
    params = list(weights.values())
    probes = [_rademacher(w, generator) for w in params]
    total = sum(len(labels) for _, labels in batches)
    samples = [0.0] * len(params)
    for inputs, labels in batches:
        inputs = inputs.to(device=device, dtype=dtype if inputs.is_floating_point() else None)
        loss = loss_fn(model(inputs), labels.to(device))
        grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
        # which layers' g·v depend on the weights at all (else the loss is at most linear in them: H = 0)
        live = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
        groups = [[i] for i in live] if blockwise else [live] if live else []
        for n, group in enumerate(groups):
            grad_dot_v = sum((grads[i] * probes[i]).sum() for i in group)
            hessian_v = torch.autograd.grad(grad_dot_v, [params[i] for i in group], allow_unused=True,
                                            retain_graph=n < len(groups) - 1)
            for i, hv in zip(group, hessian_v):
                if hv is not None:
                    samples[i] += float((hv * probes[i]).sum()) * len(labels) / total
        progress.update(1)
    return dict(zip(weights, samples))


def hessian_trace_estimates(model: nn.Module, data, layers: Iterable[str] | None = None, *, images: int = 1000,
                            probes: int = 7, tolerance: float | None = 1e-3, batch_size: int = 100,
                            loss_fn: Callable = F.cross_entropy, seed: int = 0, device=None,
                            blockwise: bool = True, exclude_pointwise: bool = False, progress=None,
                            show_progress: bool = False) -> dict[str, TraceEstimate]:
    """Hutchinson estimates of each layer's Hessian trace (METHOD.md §6 step 1, paper Alg. 1), full records.

    Args:
        model: the network (the paper: the FP32 model); used in eval mode, its mode restored afterwards.
            Parameters and their ``.grad`` are not changed.
        data: a ``DataLoader`` (or any iterable of ``(images, labels)`` batches; its batches are used as they
            come), a ``Dataset`` (read in order, ``batch_size`` at a time) or an ``(images, labels)`` tuple of
            tensors. The first ``images`` samples are read once and reused by every probe.
        layers: names of the modules whose ``weight`` is measured; by default :func:`default_layers` (what
            ``quantize_model`` quantizes: all conv/linear layers but the first and last executed ones).
        images: how many images the loss averages over (METHOD.md: ~1000).
        probes: the most Rademacher probes (iterations) to draw (METHOD.md: ≤ 7).
        tolerance: stop early once every layer's running mean changed by less than this, relative, when a
            probe was added; ``None`` or 0 always draws ``probes``.
        loss_fn: ``loss_fn(logits, labels)``, a batch mean (cross-entropy by default).
        seed: seeds the probes (a CPU ``torch.Generator``): the same seed gives the same estimate.
        device: where the batches go; by default the device of the model's parameters.
        blockwise: ``True`` — each layer's Hv is taken with v zero on every other layer, so vᵀHv sees only
            the layer's own Hessian block (one double backward per layer and batch). ``False`` — one v for all
            layers and one double backward per batch: still unbiased, but the cross-layer terms vₗᵀHₗₖvₖ add
            noise (on a randomly initialised ResNet-20: 5× faster, 2–20× the standard deviation per probe).
        exclude_pointwise: leave the 1×1 convolutions out of ``layers`` (given or default), as the authors' code
            does. Default ``False``: the paper's Alg. 1 ranks every quantized layer, the budgets of the search
            need every quantized layer, and 1×1 convs are most of some networks (at 224×224, measured with
            :func:`labkit.hasb.cost.layer_costs`: 3 of ResNet-18's 19 quantized layers and 1.1 % of their MACs,
            36 of ResNet-50's 52 and 53 %, 34 of MobileNetV2's 51 and 93 %); the lab's ResNet-20 has none.
        progress: a progress bar over probes × batches: ``True`` for a ``tqdm.auto`` bar, or a bar of yours
            (:mod:`labkit.hasb.progress`); on an early stop it is advanced to the end of this call's share.
        show_progress: the same as ``progress=True`` (kept for older callers).

    Returns ``{layer: TraceEstimate}`` in the order of ``layers``.
    """
    if probes < 1:
        raise ValueError(f"probes must be ≥ 1, got {probes}")
    first = next(model.parameters())
    device = torch.device(device) if device is not None else first.device
    batches = _batches(data, images, batch_size)
    example = batches[0][0].to(device=device, dtype=first.dtype if batches[0][0].is_floating_point() else None)
    if layers is None:
        layers = default_layers(model, example, exclude_pointwise)
    elif exclude_pointwise:
        pointwise = set(pointwise_convs(model, layers))
        layers = [name for name in layers if name not in pointwise]
    weights = _layer_weights(model, layers)
    was_training = model.training
    model.eval()
    requires_grad = {name: w.requires_grad for name, w in weights.items()}
    generator = torch.Generator().manual_seed(seed)
    samples: dict[str, list[float]] = {name: [] for name in weights}
    try:
        for w in weights.values():
            w.requires_grad_(True)
        with torch.enable_grad(), progress_bar(show_progress if progress is None or progress is False else progress,
                                               probes * len(batches), "Hessian trace") as bar:
            for drawn in range(1, probes + 1):
                previous = {name: sum(s) / len(s) for name, s in samples.items() if s}
                for name, value in _probe(model, weights, batches, loss_fn, device, first.dtype, generator,
                                          blockwise, bar).items():
                    samples[name].append(value)
                if previous and tolerance and all(
                    abs(sum(s) / len(s) - previous[name]) <= tolerance * (abs(previous[name]) + 1e-12)
                    for name, s in samples.items()
                ):
                    bar.update((probes - drawn) * len(batches))
                    break
    finally:
        model.train(was_training)
        for name, w in weights.items():
            w.requires_grad_(requires_grad[name])
    return {name: _estimate(s, weights[name].numel()) for name, s in samples.items()}


def _estimate(samples: list[float], parameters: int) -> TraceEstimate:
    count = len(samples)
    trace = sum(samples) / count
    if count > 1:
        variance = sum((s - trace) ** 2 for s in samples) / (count - 1)
        stderr = math.sqrt(variance / count)
    else:
        stderr = math.nan
    return TraceEstimate(trace, abs(trace) / parameters, stderr, count, parameters, tuple(samples))


def hessian_traces(model: nn.Module, data, layers: Iterable[str] | None = None, *, images: int = 1000,
                   probes: int = 7, tolerance: float | None = 1e-3, batch_size: int = 100,
                   loss_fn: Callable = F.cross_entropy, seed: int = 0, device=None, blockwise: bool = True,
                   exclude_pointwise: bool = False, progress=None, show_progress: bool = False) -> dict[str, float]:
    """``{layer: average HMT}`` = |Hessian trace| / parameter count per layer (METHOD.md §6, paper Alg. 1).

    The DESIGN.md public name, and what :func:`labkit.hasb.roulette.roulette_probabilities` takes. Arguments as
    :func:`hessian_trace_estimates`, which returns the full records (raw trace, standard error, probes used).
    """
    return average_traces(hessian_trace_estimates(
        model, data, layers, images=images, probes=probes, tolerance=tolerance, batch_size=batch_size,
        loss_fn=loss_fn, seed=seed, device=device, blockwise=blockwise, exclude_pointwise=exclude_pointwise,
        progress=progress, show_progress=show_progress))


def average_traces(estimates: dict[str, TraceEstimate]) -> dict[str, float]:
    """``{layer: average HMT}`` from :func:`hessian_trace_estimates` records."""
    return {name: estimate.average for name, estimate in estimates.items()}


def hmt_distribution(traces: dict, rule: str = "mean", **rule_options) -> HMTDistribution:
    """The layers ranked by average HMT, with the sensitivity threshold of ``rule`` (METHOD.md §6, §8).

    ``traces``: ``{layer: average HMT}`` or ``{layer: TraceEstimate}``. ``rule`` and its options (``q``,
    ``k``) are those of :func:`labkit.hasb.roulette.sensitivity_threshold`; the paper's rule is the mean.
    """
    values = {name: value.average if isinstance(value, TraceEstimate) else float(value)
              for name, value in traces.items()}
    threshold = sensitivity_threshold(values, rule, **rule_options)
    ordered = sorted(values.values())
    middle = len(ordered) // 2
    median = ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
    return HMTDistribution(
        ranked=sorted(values.items(), key=lambda item: item[1], reverse=True),
        mean=sum(ordered) / len(ordered),
        median=median,
        threshold=threshold,
        sensitive=[name for name, value in values.items() if value >= threshold],
    )
