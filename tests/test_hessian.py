"""Hutchinson Hessian traces (METHOD.md §6 step 1, paper Alg. 1) against autograd's exact Hessian.

The reference is ``torch.autograd.functional.hessian`` of the loss as a function of one layer's flattened
weight, on a tiny float64 MLP, so the exact trace is known and the estimator's statistics can be checked:
convergence within a few standard errors, unbiasedness over seeds, shrinking standard error, early stop.
"""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.utils.data import DataLoader, TensorDataset

import labkit
from labkit.config import data_root
from labkit.errors import ExampleInputError
from labkit.hasb.hessian import (TraceEstimate, average_traces, default_layers, hessian_trace_estimates, hessian_traces,
                                 hmt_distribution)
from labkit.models import build_model

LAYERS = ["0", "2", "4"]


def tiny_mlp(dtype=torch.float64) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 3)).to(dtype)


def tiny_data(n=12, dtype=torch.float64):
    generator = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, generator=generator, dtype=dtype), torch.randint(0, 3, (n,), generator=generator)


def exact_traces(model, inputs, labels, layers=LAYERS, loss_fn=F.cross_entropy) -> dict[str, float]:
    """tr(∂²L/∂W²) per layer from autograd's full Hessian of the mean loss over all inputs."""
    params = dict(model.named_parameters())
    traces = {}
    for name in layers:
        key = f"{name}.weight"
        shape = params[key].shape

        def loss_of(flat, key=key, shape=shape):
            return loss_fn(functional_call(model, {**params, key: flat.view(shape)}, (inputs,)), labels)

        hessian = torch.autograd.functional.hessian(loss_of, params[key].detach().flatten())
        traces[name] = float(hessian.diagonal().sum())
    return traces


@pytest.fixture(scope="module")
def mlp_case():
    model = tiny_mlp().eval()
    inputs, labels = tiny_data()
    return model, inputs, labels, exact_traces(model, inputs, labels)


@pytest.mark.parametrize("blockwise", [True, False])
def test_many_probes_converge_to_the_exact_trace(mlp_case, blockwise):
    model, inputs, labels, exact = mlp_case
    # batch_size 5 over 12 images: uneven batches must still give the Hessian of the mean loss over all 12
    estimates = hessian_trace_estimates(model, (inputs, labels), LAYERS, probes=800, tolerance=None, batch_size=5,
                                        blockwise=blockwise)
    for name in LAYERS:
        estimate = estimates[name]
        assert estimate.probes == 800 and len(estimate.samples) == 800
        assert abs(estimate.trace - exact[name]) <= 4 * estimate.stderr, (name, estimate.trace, exact[name])
    if blockwise:  # 800 probes: relative standard error < 15 % per layer, ~2.5 % for the total (10 % ≈ 4 σ)
        assert all(estimates[name].stderr < 0.15 * abs(exact[name]) for name in LAYERS)
        assert sum(e.trace for e in estimates.values()) == pytest.approx(sum(exact.values()), rel=0.1)


def test_estimate_is_unbiased_over_seeds(mlp_case):
    model, inputs, labels, exact = mlp_case
    runs = [hessian_trace_estimates(model, (inputs, labels), LAYERS, probes=2, tolerance=None, seed=seed)
            for seed in range(150)]
    for name in LAYERS:
        values = torch.tensor([run[name].trace for run in runs], dtype=torch.float64)
        spread = float(values.std()) / math.sqrt(len(values))
        assert abs(float(values.mean()) - exact[name]) <= 4 * spread + 1e-12, name


def test_same_seed_same_estimate_other_seed_differs(mlp_case):
    model, inputs, labels, _ = mlp_case
    one = hessian_trace_estimates(model, (inputs, labels), LAYERS, probes=3, seed=7)
    assert hessian_trace_estimates(model, (inputs, labels), LAYERS, probes=3, seed=7) == one
    assert hessian_trace_estimates(model, (inputs, labels), LAYERS, probes=3, seed=8) != one


def test_standard_error_shrinks_with_more_probes(mlp_case):
    model, inputs, labels, _ = mlp_case
    few = hessian_trace_estimates(model, (inputs, labels), LAYERS, probes=16, tolerance=None)
    many = hessian_trace_estimates(model, (inputs, labels), LAYERS, probes=256, tolerance=None)
    for name in LAYERS:  # ~1/sqrt(probes): a factor 4 expected
        assert many[name].stderr < few[name].stderr / 2, name
    assert math.isnan(hessian_trace_estimates(model, (inputs, labels), LAYERS, probes=1)[LAYERS[0]].stderr)


def test_early_stop_with_a_loose_tolerance(mlp_case):
    model, inputs, labels, _ = mlp_case
    data = (inputs, labels)
    assert {e.probes for e in hessian_trace_estimates(model, data, LAYERS, probes=40, tolerance=None).values()} == {40}
    assert {e.probes for e in hessian_trace_estimates(model, data, LAYERS, probes=40, tolerance=0).values()} == {40}
    loose = hessian_trace_estimates(model, data, LAYERS, probes=40, tolerance=0.5)
    assert 2 <= loose["0"].probes < 40
    assert {e.probes for e in hessian_trace_estimates(model, data, LAYERS, probes=40, tolerance=1e9).values()} == {2}
    # the rule: the running mean moved by less than tolerance × |previous mean| when the last probe came in
    samples = loose["2"].samples
    previous, last = sum(samples[:-1]) / (len(samples) - 1), sum(samples) / len(samples)
    assert abs(last - previous) <= 0.5 * abs(previous)


def test_average_is_absolute_trace_per_parameter(mlp_case):
    model, inputs, labels, _ = mlp_case
    estimates = hessian_trace_estimates(model, (inputs, labels), LAYERS, probes=4)
    negated = hessian_trace_estimates(model, (inputs, labels), LAYERS, probes=4,
                                      loss_fn=lambda logits, y: -F.cross_entropy(logits, y))
    for name in LAYERS:
        numel = model.get_submodule(name).weight.numel()
        assert estimates[name].parameters == numel
        assert estimates[name].average == pytest.approx(abs(estimates[name].trace) / numel, rel=1e-12)
        # the negated loss has the negated Hessian: a negative trace, the same average
        assert negated[name].trace == pytest.approx(-estimates[name].trace, rel=1e-9)
        assert negated[name].average == pytest.approx(estimates[name].average, rel=1e-9)
    assert hessian_traces(model, (inputs, labels), LAYERS, probes=4) == average_traces(estimates)
    assert average_traces(estimates) == {name: e.average for name, e in estimates.items()}


def test_default_layers_are_what_quantize_model_quantizes():
    torch.manual_seed(0)

    class Reordered(nn.Module):  # modules declared in another order than they run
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(5, 3)
            self.middle = nn.Linear(5, 5)
            self.stem = nn.Linear(3, 5)
            self.other = nn.Linear(5, 5)

        def forward(self, x):
            return self.head(torch.relu(self.other(torch.relu(self.middle(torch.relu(self.stem(x)))))))

    inputs, labels = tiny_data(8, torch.float32)
    for model in (Reordered(), nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 5), nn.ReLU(),
                                             nn.Linear(5, 5), nn.ReLU(), nn.Linear(5, 3))):
        traces = hessian_traces(model, (inputs, labels), probes=2)
        expected = list(labkit.quantized_layers(labkit.quantize_model(model, example_input=inputs)))
        assert list(traces) == expected and len(expected) == 2
    assert list(traces) == ["2", "4"]


def test_accepts_a_dataset_a_loader_or_tensors_and_reads_only_images(mlp_case):
    model, inputs, labels, _ = mlp_case
    reference = hessian_trace_estimates(model, (inputs[:7], labels[:7]), LAYERS, probes=3, batch_size=3)
    dataset = TensorDataset(inputs, labels)
    for data in ((inputs, labels), dataset, DataLoader(dataset, batch_size=3)):
        estimates = hessian_trace_estimates(model, data, LAYERS, images=7, probes=3, batch_size=3)
        for name in LAYERS:
            assert estimates[name].trace == pytest.approx(reference[name].trace, rel=1e-9)


def test_leaves_the_model_as_it_was(mlp_case):
    model = tiny_mlp().train()
    model[2].weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    inputs, labels = tiny_data()
    hessian_trace_estimates(model, (inputs, labels), LAYERS, probes=2)
    assert model.training and not model[2].weight.requires_grad and model[0].weight.requires_grad
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_unknown_layer_raises(mlp_case):
    model, inputs, labels, _ = mlp_case
    with pytest.raises(KeyError, match="nope"):
        hessian_traces(model, (inputs, labels), ["nope"])
    with pytest.raises(KeyError, match="no weight"):
        hessian_traces(model, (inputs, labels), ["1"])  # the Tanh


def test_hmt_distribution_ranks_and_marks_layers_above_the_mean():
    distribution = hmt_distribution({"a": 1.0, "b": 2.0, "c": 6.0, "d": 3.0})
    assert distribution.ranked == [("c", 6.0), ("d", 3.0), ("b", 2.0), ("a", 1.0)]
    assert distribution.mean == 3.0 and distribution.threshold == 3.0 and distribution.median == 2.5
    assert distribution.sensitive == ["c", "d"]  # at or above the mean, in input order
    assert hmt_distribution({"a": 1.0, "b": 2.0, "c": 6.0}, rule="top_k", k=2).sensitive == ["b", "c"]
    records = {"x": TraceEstimate(-4.0, 2.0, 0.1, 3, 2, ()), "y": TraceEstimate(1.0, 0.5, 0.1, 3, 2, ())}
    assert hmt_distribution(records).ranked == [("x", 2.0), ("y", 0.5)]


def test_runs_on_a_quantized_resnet20_at_8_bits():
    model = labkit.quantize_model(build_model("resnet20"))
    labkit.set_bits(model, 8)
    generator = torch.Generator().manual_seed(0)
    data = (torch.randn(8, 3, 32, 32, generator=generator), torch.randint(0, 10, (8,), generator=generator))
    estimates = hessian_trace_estimates(model, data, images=8, batch_size=4, probes=2)
    assert list(estimates) == list(labkit.quantized_layers(model))
    assert all(math.isfinite(e.trace) and e.probes == 2 for e in estimates.values())


@pytest.mark.skipif(not (data_root() / "cifar10").is_dir(), reason="no CIFAR-10 under LABKIT_DATA")
def test_runs_on_real_cifar10_images():
    from labkit import data

    model = build_model("resnet20")
    traces = hessian_traces(model, data.cifar10("test"), images=4, batch_size=4, probes=2)
    assert len(traces) == 18 and "conv1" not in traces and "fc" not in traces
    assert all(math.isfinite(v) and v >= 0 for v in traces.values())


class CountingBar:
    """A stand-in for a tqdm bar: what a function does to a bar it is given (no total, like tqdm.auto.tqdm())."""

    def __init__(self):
        self.total, self.count, self.closed = None, 0, False

    def update(self, n=1):
        self.count += n

    def refresh(self):
        pass

    def close(self):
        self.closed = True


def pointwise_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(4, 4, 1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))


def test_exclude_pointwise_leaves_the_1x1_convs_out():
    model = pointwise_net()
    images, labels = torch.randn(6, 3, 6, 6), torch.randint(0, 3, (6,))
    assert list(hessian_traces(model, (images, labels), probes=1)) == ["2", "4", "6"]  # default: every quantized layer
    assert list(hessian_traces(model, (images, labels), probes=1, exclude_pointwise=True)) == ["2", "6"]
    assert list(hessian_traces(model, (images, labels), ["4", "6"], probes=1, exclude_pointwise=True)) == ["6"]
    quantized = labkit.quantize_model(model, example_input=images)
    assert default_layers(quantized, exclude_pointwise=True) == ["2", "6"]  # a quantized model needs no input


def test_an_fp32_model_without_an_example_input_is_a_clear_error():
    with pytest.raises(ExampleInputError, match="example_input="):
        default_layers(pointwise_net())


@pytest.mark.parametrize("tolerance, drawn", [(None, 5), (1e9, 2)])
def test_progress_accepts_a_bar_and_reaches_its_end(mlp_case, tolerance, drawn):
    model, inputs, labels, _ = mlp_case
    bar = CountingBar()
    estimates = hessian_trace_estimates(model, (inputs, labels), LAYERS, probes=5, batch_size=5, tolerance=tolerance,
                                        progress=bar)
    assert {e.probes for e in estimates.values()} == {drawn}
    assert bar.total == 5 * 3 and bar.count == 5 * 3 and not bar.closed  # 12 images in batches of 5: 3 batches
    import io

    from tqdm.auto import tqdm

    with tqdm(total=None, file=io.StringIO()) as real:
        hessian_traces(model, (inputs, labels), LAYERS, probes=2, tolerance=None, batch_size=12, progress=real)
        assert real.n == 2 and real.total == 2
