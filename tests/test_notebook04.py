"""Notebook 04 and the modules behind it: SubNets at equal average bits and at equal BitOPs with a paired interval,
the notebook's Markdown tables, the live SuperNet steps, and the committed notebook (progress bars, tables as tables,
the switchboard opening at the searched allocation, text for students, claims with their interval).

References: a hand-computed paired difference and ``statistics`` over the per-image differences; a per-image argmax
loop for the correctness vector; ``Σ MACs·b²`` summed by hand from the layers' shapes for the BitOPs; the library's
``sensitive_layers`` / ``expected_average_bits`` / ``sampling_gap`` for the tables; the trainer's own config and the
sampler's probabilities for the live run.
"""
from __future__ import annotations

import math
import re
import statistics
from pathlib import Path

import nbformat
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import labkit
from labkit.config import data_root
from labkit.convert import get_bits, set_bits
from labkit.equal_cost import (NOT_RESOLVED, correct_per_image, cost_pareto_figure, describe_difference,
                               equal_cost_rows, equal_cost_table, paired_difference)
from labkit.errors import LabkitError
from labkit.hasb import equal_cost_subnets, expected_average_bits, layer_costs, roulette_probabilities, sensitive_layers
from labkit.hasb.reviewers import sampling_gap
from labkit.hasb_tables import (allocation_gap, allocation_gap_sentence, allocation_table, expected_bits_table,
                                hmt_table, predecessor_table, sampling_gap_table, spread_table, threshold_table)
from labkit.notebook_settings import notebook_settings

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "04_cifar10_mixed_precision_hasb.ipynb"
CHECK_TAG = "nbval-check-output"
HAS_CIFAR = (data_root() / "cifar10").is_dir()


# ------------------------------------------------------------------------------------------ helpers


class TinyNet(nn.Module):
    """conv1 (FP32, first) → conv2, conv3 (quantized, 8×8 maps) → fc (FP32, last)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv3, self.bn3 = nn.Conv2d(8, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 10)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.bn3(self.conv3(x)))
        return self.fc(x.mean((2, 3)))


def tiny_quantized(bits=(8, 4, 2)):
    torch.manual_seed(0)
    return labkit.quantize_model(TinyNet(), bits, example_input=torch.randn(2, 3, 8, 8)).eval()


def random_batch(n=40, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=generator), torch.randint(0, 10, (n,), generator=generator)


# ------------------------------------------------------------------------------------------ paired difference


def test_paired_difference_by_hand():
    # d = a - b = [0, 1, 1, 0]: mean 0.5, sample variance (4 · 0.25) / 3 = 1/3, standard error sqrt(1/12)
    result = paired_difference([1, 1, 1, 0], [1, 0, 0, 0])
    half = 1.959963984540054 * math.sqrt(1 / 12)
    assert result["difference"] == pytest.approx(50.0)
    assert result["low"] == pytest.approx(100 * (0.5 - half))
    assert result["high"] == pytest.approx(100 * (0.5 + half))
    assert result["images"] == 4 and not result["resolved"]  # 0.5 ± 0.566 contains zero


def test_paired_difference_matches_statistics_on_random_results_and_resolves_only_when_zero_is_outside():
    generator = torch.Generator().manual_seed(3)
    a = torch.rand(500, generator=generator) < 0.8
    b = a.clone()
    flip = torch.rand(500, generator=generator) < 0.15  # B loses 15 % of A's images, wins none
    b[flip] = False
    d = (a.double() - b.double()).tolist()
    expected_half = 1.959963984540054 * statistics.stdev(d) / math.sqrt(len(d))
    result = paired_difference(a, b)
    assert result["difference"] == pytest.approx(100 * statistics.fmean(d))
    assert result["high"] - result["low"] == pytest.approx(200 * expected_half)
    assert result["resolved"] and result["low"] > 0
    same = paired_difference(a, a)
    assert same["difference"] == 0 and same["low"] == 0 == same["high"] and not same["resolved"]
    assert NOT_RESOLVED in describe_difference(paired_difference([1, 0, 1, 0], [0, 1, 1, 0]), "A", "B")
    assert "excludes zero" in describe_difference(result, "A", "B")


def test_paired_difference_rejects_unpaired_input():
    with pytest.raises(LabkitError, match="equal-length"):
        paired_difference([1, 0, 1], [1, 0])
    with pytest.raises(LabkitError, match="confidence"):
        paired_difference([1, 0], [0, 1], confidence=95)


# ------------------------------------------------------------------------------------------ correctness and costs


def test_correct_per_image_matches_an_argmax_loop_and_restores_the_model():
    model = tiny_quantized()
    images, labels = random_batch()
    set_bits(model, 8)
    model.train()
    allocation = {"conv2": 2, "conv3": 4}
    correct = correct_per_image(model, images, labels, allocation, batch_size=7)
    assert get_bits(model) == {"conv2": 8, "conv3": 8} and model.training
    set_bits(model, allocation)
    model.eval()
    with torch.no_grad():
        expected = torch.tensor([int(model(images[i:i + 1]).argmax()) == int(labels[i]) for i in range(len(images))])
    assert torch.equal(correct, expected)


def test_equal_cost_rows_costs_by_hand_and_accuracies_from_the_model():
    model = tiny_quantized()
    images, labels = random_batch()
    costs = layer_costs(model, (3, 8, 8))
    # by hand, 8×8 maps: conv1 3→8 (3·9 per output, FP32 at 32 bits), conv2 8→8, conv3 8→4, fc 4→10 (FP32)
    macs = {"conv1": 8 * 64 * 27, "conv2": 8 * 64 * 72, "conv3": 4 * 64 * 72, "fc": 40}
    assert {name: cost.macs for name, cost in costs.items()} == macs

    def bitops(allocation):
        return (macs["conv1"] + macs["fc"]) * 32 ** 2 + sum(macs[n] * b ** 2 for n, b in allocation.items())

    scores = {"conv2": 1.0, "conv3": 0.1}
    comparison = equal_cost_subnets(scores, costs, 3, candidates=(8, 4, 2))
    rows = equal_cost_rows(model, comparison, costs, images, labels, uniform_bits=(8, 2), progress=False)
    by_key = {row["key"]: row for row in rows}
    assert set(by_key) == {"uniform", "equal_avg_bits", "equal_bitops", "uniform_8", "uniform_2"}
    assert [row["bitops"] for row in rows] == sorted(row["bitops"] for row in rows)
    reference = bitops({"conv2": 3, "conv3": 3})
    for row in rows:
        assert row["bitops"] == bitops(row["allocation"])
        assert row["bitops_ratio"] == pytest.approx(row["bitops"] / reference)
    assert "accuracy" not in by_key["uniform"] and not by_key["uniform"]["available"]  # 3 bits: not trained
    assert by_key["equal_bitops"]["bitops"] <= reference
    for key in ("equal_avg_bits", "equal_bitops", "uniform_8", "uniform_2"):
        row = by_key[key]
        expected = correct_per_image(model, images, labels, row["allocation"])
        assert torch.equal(row["correct"], expected)
        assert row["accuracy"] == pytest.approx(100 * expected.float().mean().item())
    table = equal_cost_table(rows)
    assert table.count("\n") == len(rows) + 1 and "not a trained bit-width" in table
    figure = cost_pareto_figure([{"bitops": r["bitops"], "accuracy": r["accuracy"], "allocation": r["allocation"]}
                                 for r in rows if "accuracy" in r], rows)
    assert figure.layout.xaxis.title.text.startswith("GBitOPs") and figure.layout.yaxis.title.text
    names = [trace.name for trace in figure.data]
    assert "ILP SubNet at the BitOPs of uniform 3-bit" in names and "uniform 3-bit" not in names


# ------------------------------------------------------------------------------------------ tables


def test_tables_take_their_numbers_from_the_library():
    traces = {"a": 4.0, "b": 1.0, "c": 2.5, "d": 0.5}  # mean 2.0: a and c sensitive
    table = threshold_table(traces, [("mean", "mean", {}), ("top 1", "top_k", {"k": 1})])
    assert f"| mean | {len(sensitive_layers(traces))} | a, c |" in table and "| top 1 | 1 | a |" in table
    gaps = sampling_gap_table([(8, 4)])
    gap = sampling_gap((8, 4))
    assert f"| {{8,4}} | {gap['expected_sensitive']:.2f} | {gap['expected_uniform']:.2f} |" in gaps
    probabilities = roulette_probabilities(traces, (8, 6, 4, 2))
    expected = expected_bits_table(probabilities, defaults=(2,), sigmas=(0.5,))
    assert f"| 2-bit pass | {expected_average_bits(probabilities, 2, 0.5):.2f} |" in expected
    assert predecessor_table({"x": None, "y": "x"}).splitlines()[2:] == [
        "| x | — (the FP32 first layer) |", "| y | x |"]


def test_allocation_table_mean_and_bitops_by_hand():
    model = tiny_quantized()
    costs = layer_costs(model, (3, 8, 8))
    table = allocation_table({"A": {"conv2": 8, "conv3": 2}, "B": {"conv2": 2, "conv3": 2}}, costs)
    lines = table.splitlines()
    assert lines[0] == "| layer | A | B |" and lines[2] == "| conv2 | 8 | 2 |"
    assert lines[4] == "| mean bits | 5.00 | 2.00 |"
    a = (8 * 64 * 27 + 40) * 1024 + 8 * 64 * 72 * 64 + 4 * 64 * 72 * 4
    assert lines[5].startswith(f"| GBitOPs / image | {a / 1e9:.3f} |")


def test_hmt_table_ranks_and_marks_the_sensitive_layers():
    from labkit.hasb import hmt_distribution

    traces = {"a": 4.0, "b": 1.0, "c": 2.5, "d": 0.5}
    lines = hmt_table(hmt_distribution(traces)).splitlines()
    assert [line.split(" | ")[1] for line in lines[2:]] == ["a", "c", "b", "d"]
    assert lines[2].endswith("| yes |") and lines[4].endswith("|  |")


def test_allocation_gap_pairs_the_same_allocations():
    a = [{"allocation": {"x": 8, "y": 2}, "accuracy": 70.0}, {"allocation": {"x": 2, "y": 8}, "accuracy": 60.0},
         {"allocation": {"x": 4, "y": 4}, "accuracy": 99.0}]
    b = [{"allocation": {"y": 2, "x": 8}, "accuracy": 68.0}, {"allocation": {"x": 2, "y": 8}, "accuracy": 61.0}]
    gap = allocation_gap(a, b)
    assert gap == {"allocations": 2, "mean": pytest.approx(0.5), "stdev": pytest.approx(statistics.stdev([2, -1])),
                   "a_ahead": 1}
    assert "not resolved at this budget" in allocation_gap_sentence(gap, "A", "B", seeds=1)
    spread = spread_table({"A": [{"avg_bits": 3.0, "subnets": 2, "max": 70.0, "min": 60.0, "mean": 65.0,
                                  "range": 10.0}]})
    assert spread.splitlines()[2] == "| A | 3.00 | 2 | 70.0 | 60.0 | 65.0 | 10.0 |"
    with pytest.raises(ValueError, match="share no allocation"):
        allocation_gap(a[2:], b)


# ------------------------------------------------------------------------------------------ live SuperNet steps


def test_live_supernet_trainer_rejects_bad_sizes_before_loading_anything():
    from labkit.supernet_live import live_supernet_budget, live_supernet_trainer

    for bad in (dict(steps=0), dict(batch_size=2.5), dict(eval_images=True), dict(sigma=1.5)):
        options = {**dict(steps=2, batch_size=8, eval_images=8), **bad}
        with pytest.raises(LabkitError, match=next(iter(bad))):
            live_supernet_trainer({}, **options)
    with pytest.raises(LabkitError, match="notebook_settings"):
        live_supernet_budget({"live_steps": 2})


@pytest.mark.skipif(not HAS_CIFAR, reason=f"no CIFAR-10 under the data root {data_root()} (set LABKIT_DATA)")
def test_live_supernet_trainer_is_the_recipe_at_a_small_budget(tmp_path):
    from labkit.checkpoints import load_shipped
    from labkit.convert import quantized_layers
    from labkit.live_training import LiveSuperNetTraining
    from labkit.nn import TransitionalBatchNorm2d
    from labkit.supernet_live import live_supernet_budget, live_supernet_trainer

    budget = live_supernet_budget(notebook_settings("04", "smoke"))
    layers = list(quantized_layers(load_shipped("cifar10-resnet20")))
    traces = {name: (2.0 if i < 3 else 1.0) for i, name in enumerate(layers)}
    trainer = live_supernet_trainer(traces, **budget, out_dir=tmp_path)
    config = trainer.config
    assert (config.recipe, config.epochs, config.sigma_warmup, config.sigma) == ("cifar10-resnet20-hasb", 1, 0, 0.5)
    assert trainer.total_steps == budget["steps"] and config.batch_size == budget["batch_size"]
    assert len(trainer.eval_sets["test"]) == budget["eval_images"]
    assert trainer.alrs_rule == "eq7" and config.lr == 5e-5  # the recipe's short fine-tune: λ/10, sampled bit's η_b
    assert any(isinstance(m, TransitionalBatchNorm2d) for m in trainer.model.modules())
    assert trainer.bit_sampler.probabilities == roulette_probabilities(traces, (8, 6, 4, 2))
    assert trainer.bit_sampler.sigma_at(0) == 0.5
    view = LiveSuperNetTraining(trainer, progress=False)  # the notebook's view accepts it (it needs a sampler)
    assert view.layers == layers
    with pytest.raises(LabkitError, match="no value for"):
        live_supernet_trainer({layers[0]: 1.0}, **budget, out_dir=tmp_path / "other")


# ------------------------------------------------------------------------------------------ the committed notebook


def notebook():
    return nbformat.read(NOTEBOOK, as_version=4)


def code_cells():
    return [cell for cell in notebook().cells if cell.cell_type == "code"]


def test_laptop_budgets_follow_the_measured_hessian_study():
    laptop = notebook_settings("04", "laptop")
    assert (laptop["hessian_images"], laptop["probes"]) == (64, 3)
    smoke = notebook_settings("04", "smoke")
    assert smoke["live_run"] and not laptop["live_run"]  # small under nbval, opt-in for a student


def test_every_long_call_shows_a_progress_bar_and_the_text_before_says_how_long():
    cells = notebook().cells
    long_calls = ("hessian_trace_estimates(", "evaluate_subnets(", "equal_cost_rows(", "train_live(")
    for index, cell in enumerate(cells):
        if cell.cell_type != "code" or not any(call in cell.source for call in long_calls):
            continue
        if "train_live(" not in cell.source:  # train_live always shows its bar
            assert "progress=True" in cell.source or "equal_cost_rows(" in cell.source, cell.source[:200]
        before = cells[index - 1]
        assert before.cell_type == "markdown"
        assert re.search(r"(about|\d+[–-]\d+ s|a minute)", before.source, re.IGNORECASE), before.source[-300:]


def test_tables_are_rendered_as_markdown_not_printed():
    for cell in code_cells():
        assert "print(f\"{name:<" not in cell.source and "| \" + \" | \"" not in cell.source
        for line in cell.source.splitlines():
            assert not re.match(r"\s*print\(.*\|", line), line
    sources = "\n".join(cell.source for cell in code_cells())
    assert sources.count("display(Markdown(") >= 8


def test_switchboard_opens_at_the_searched_allocation_and_the_text_names_the_accordion():
    from labkit.widgets import ACCORDION_TITLE

    board = next(cell for cell in code_cells() if "precision_switchboard(" in cell.source)
    assert "bits=comparison[" in board.source and 'allocation_label="searched allocation"' in board.source
    assert ".update(layer_bits" not in board.source
    text = "\n".join(cell.source for cell in notebook().cells if cell.cell_type == "markdown")
    assert f"**{ACCORDION_TITLE}**" in text and "per-layer bit-widths*" not in text
    assert "*searched allocation*" in text and "*mixed*" in text


def test_text_is_for_students_and_comparisons_carry_their_interval():
    cells = notebook().cells
    text = "\n".join(cell.source for cell in cells)
    for remark in ("browser test", "No GPU", "NBVAL", "the widget the lab"):
        assert remark not in text
    markdown = "\n".join(cell.source for cell in cells if cell.cell_type == "markdown")
    assert "data flow" in markdown and "Transitional BN" in markdown
    assert "equal BitOPs" in markdown and "1.28×" not in markdown  # the cost ratio is computed, not typed
    assert "not resolved at this budget" in markdown
    sources = "\n".join(cell.source for cell in code_cells())
    assert "cost_ratio_sentence(comparison)" in sources and "paired_difference(" in sources
    # HASB vs uniform: the seeded comparison, its verdicts generated from the run files
    assert "seed_comparison_table(seeded)" in sources and "seed_comparison_sentence(seeded)" in sources


def test_checked_cells_are_tagged_and_deterministic():
    checked = [cell for cell in code_cells() if CHECK_TAG in cell.metadata.get("tags", [])]
    assert len(checked) >= 3
    for cell in checked:
        assert "progress=True" not in cell.source and "hessian_trace_estimates" not in cell.source


def test_the_hessian_is_measured_on_the_fp32_model_of_the_supernets_lineage():
    import hashlib
    import json

    from labkit.checkpoints import shipped
    from labkit.hasb.seed_study import SEED_RESULTS

    (cell,) = [c for c in code_cells() if "hessian_trace_estimates(" in c.source]
    assert 'load_shipped("cifar10-resnet20-fp32")' in cell.source
    path, record = shipped("cifar10-resnet20-fp32")
    # the shipped SuperNet (seed 0 of the seeded runs) started from exactly these FP32 weights
    (session,) = json.loads((SEED_RESULTS / "hasb-s0" / "run.json").read_text())["sessions"]
    assert session["init"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    _, supernet = shipped("cifar10-resnet20-hasb-supernet")
    assert supernet["accuracy"] == json.loads((SEED_RESULTS / "hasb-s0" / "metrics.json").read_text())["accuracy"]
    markdown = "\n".join(c.source for c in notebook().cells if c.cell_type == "markdown")
    assert "the shipped `cifar10-resnet20-fp32`, the model the shipped SuperNet descends from" in markdown
    (comparison,) = [c.source for c in notebook().cells if c.cell_type == "markdown"
                     and "With vs without HASB" in c.source]
    flat = " ".join(comparison.split())
    assert "three seeds each" in flat and "t_{0.975,2} = 4.30" in flat
