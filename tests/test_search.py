"""HASB bit search (METHOD.md §6 step 4): the ILP against brute-force enumeration of every allocation.

Six layers × four candidates is 4⁶ = 4096 allocations, few enough to list them all: the ILP's optimum must
equal the best listed allocation that meets the same constraints, for every kind of constraint, and the
smallest budgets an infeasibility error states must be the brute-force ones (and work when passed back).
"""
import csv
import itertools
import json
import time

import numpy as np
import plotly.graph_objects as go
import pytest
import torch
from torch import nn

import labkit
from labkit.errors import BitWidthError, LabkitError
from labkit.hasb.cost import FLOAT_BITS, LayerCost, layer_costs, total_bitops, total_size_bits
from labkit.hasb.search import (SearchInfeasible, default_averages, evaluate_subnets, neighbour_subnets,
                                pareto_figure, pareto_front, search_bits, sweep, write_csv)

CANDIDATES = (8, 6, 4, 2)
LAYERS = [f"layer{i}" for i in range(6)]


def random_problem(seed, layers=LAYERS, fp_layers=True):
    """Random scores, and integer MACs / weight counts (plus two unsearched FP32 layers)."""
    rng = np.random.default_rng(seed)
    scores = {name: float(rng.lognormal()) for name in layers}
    costs = {name: LayerCost(int(rng.integers(100, 5000)), int(rng.integers(10, 800))) for name in layers}
    if fp_layers:
        costs = {"stem": LayerCost(300, 27), **costs, "classifier": LayerCost(640, 640)}
    return scores, costs


class BruteForce:
    """Every allocation of ``scores``' layers, with its objective and resources."""

    def __init__(self, scores, costs=None, weights=None, candidates=CANDIDATES):
        self.names = list(scores)
        self.bits = np.array(list(itertools.product(candidates, repeat=len(self.names))))
        self.objective = self.bits @ np.array([scores[n] for n in self.names])
        w = np.ones(len(self.names)) if weights is None else np.array([weights[n] for n in self.names])
        self.mean = self.bits @ w / w.sum()
        if costs is not None:
            outside = [c for n, c in costs.items() if n not in scores]
            self.bitops = (self.bits ** 2) @ np.array([costs[n].macs for n in self.names]) + \
                sum(c.macs * FLOAT_BITS ** 2 for c in outside)
            self.size = self.bits @ np.array([costs[n].params for n in self.names]) + \
                sum(c.params * FLOAT_BITS for c in outside)

    def mask(self, avg_bits=None, exact_average=False, bitops_budget=None, size_budget_bits=None, fixed=None):
        ok = np.ones(len(self.bits), bool)
        if avg_bits is not None:
            ok &= np.isclose(self.mean, avg_bits, rtol=0, atol=1e-9) if exact_average else self.mean <= avg_bits + 1e-9
        if bitops_budget is not None:
            ok &= self.bitops <= bitops_budget
        if size_budget_bits is not None:
            ok &= self.size <= size_budget_bits
        for name, bits in (fixed or {}).items():
            ok &= self.bits[:, self.names.index(name)] == bits
        return ok

    def row(self, allocation):
        return int(np.flatnonzero((self.bits == [allocation[n] for n in self.names]).all(1))[0])

    def best(self, mask):
        return self.objective[mask].max() if mask.any() else None


def check_optimal(allocation, brute, **constraints):
    """``allocation`` meets the constraints and no allocation that does has a higher objective."""
    assert list(allocation) == brute.names and all(isinstance(b, int) for b in allocation.values())
    mask = brute.mask(**constraints)
    row = brute.row(allocation)
    assert mask[row], f"{allocation} violates {constraints}"
    assert brute.objective[row] == pytest.approx(brute.best(mask), rel=1e-9, abs=1e-9)


def constraint_kwargs(**constraints):
    return {k: v for k, v in constraints.items() if v is not None}


# ------------------------------------------------------------------ optimum against brute force


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("avg_bits", [2.0, 2.5, 3.3, 4.0, 5.1, 6.9, 8.0])
def test_average_only_matches_brute_force(seed, avg_bits):
    scores, _ = random_problem(seed)
    check_optimal(search_bits(scores, CANDIDATES, avg_bits), BruteForce(scores), avg_bits=avg_bits)


@pytest.mark.parametrize("seed", range(3))
def test_exact_average_matches_brute_force(seed):
    scores, _ = random_problem(seed)
    brute = BruteForce(scores)
    for avg_bits in [2.0, 10 / 3, 4.0, 14 / 3, 17 / 3, 7.0, 8.0]:  # sums 12, 20, 24, 28, 34, 42, 48 of 6 layers
        allocation = search_bits(scores, CANDIDATES, avg_bits, exact_average=True)
        assert np.mean(list(allocation.values())) == pytest.approx(avg_bits)
        check_optimal(allocation, brute, avg_bits=avg_bits, exact_average=True)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("avg_bits", [None, 4.0, 6.0])
@pytest.mark.parametrize("quantile", [0.05, 0.3, 0.7])
def test_bitops_and_size_budgets_match_brute_force(seed, avg_bits, quantile):
    scores, costs = random_problem(seed)
    brute = BruteForce(scores, costs)
    bitops_budget = float(np.quantile(brute.bitops, quantile))
    size_budget = float(np.quantile(brute.size, quantile))
    for constraints in (dict(bitops_budget=bitops_budget), dict(size_budget_bits=size_budget),
                        dict(bitops_budget=bitops_budget, size_budget_bits=size_budget)):
        allocation = search_bits(scores, CANDIDATES, avg_bits, costs=costs, **constraints)
        check_optimal(allocation, brute, avg_bits=avg_bits, **constraints)
        assert total_bitops(costs, allocation) <= constraints.get("bitops_budget", np.inf)  # counted as labkit counts
        assert total_size_bits(costs, allocation) <= constraints.get("size_budget_bits", np.inf)


def test_budget_met_with_equality_is_feasible():
    scores, costs = random_problem(7)
    brute = BruteForce(scores, costs)
    for row in np.random.default_rng(0).choice(len(brute.bits), 5, replace=False):
        budget = int(brute.bitops[row])  # some allocation uses exactly this budget
        check_optimal(search_bits(scores, CANDIDATES, None, bitops_budget=budget, costs=costs), brute,
                      bitops_budget=budget)


@pytest.mark.parametrize("seed", range(3))
def test_fixed_layers_and_weighted_average_match_brute_force(seed):
    scores, costs = random_problem(seed)
    fixed = {"layer1": 8, "layer4": 2}
    brute = BruteForce(scores, costs)
    for avg_bits in (4.0, 5.0, 6.5):
        check_optimal(search_bits(scores, CANDIDATES, avg_bits, fixed=fixed), brute, avg_bits=avg_bits, fixed=fixed)
    budget = float(np.quantile(brute.bitops, 0.5))
    check_optimal(search_bits(scores, CANDIDATES, 5.0, fixed=fixed, bitops_budget=budget, costs=costs), brute,
                  avg_bits=5.0, fixed=fixed, bitops_budget=budget)
    weights = {name: cost.params for name, cost in costs.items() if name in scores}  # parameter-weighted mean
    weighted = BruteForce(scores, weights=weights)
    for avg_bits in (3.0, 4.0, 5.5):
        check_optimal(search_bits(scores, CANDIDATES, avg_bits, weights=weights), weighted, avg_bits=avg_bits)


def test_objective_is_maximised_sensitive_layers_get_more_bits():
    # METHOD.md §6: the reference code maximises Σ t·b (the paper's "minimise" would starve sensitive layers)
    allocation = search_bits({"sensitive": 10.0, "robust": 1.0}, (8, 2), avg_bits=5.0)
    assert allocation == {"sensitive": 8, "robust": 2}


def test_ties_are_broken_the_same_way_every_time():
    scores = dict.fromkeys(LAYERS, 1.0)  # every allocation with the same sum of bits is optimal
    first = search_bits(scores, CANDIDATES, 5.0)
    assert sum(first.values()) == 30
    assert all(search_bits(scores, CANDIDATES, 5.0) == first for _ in range(3))
    check_optimal(first, BruteForce(scores), avg_bits=5.0)
    zero = search_bits(dict.fromkeys(LAYERS, 0.0), CANDIDATES, 3.0)  # degenerate objective: any feasible one
    assert np.mean(list(zero.values())) <= 3.0 and zero == search_bits(dict.fromkeys(LAYERS, 0.0), CANDIDATES, 3.0)


# ------------------------------------------------------------------ infeasible budgets


def test_average_below_every_allocation_states_the_smallest_average():
    scores, _ = random_problem(0)
    with pytest.raises(SearchInfeasible, match=r"Smallest feasible avg_bits .*: 2 \(pass avg_bits=2 or more\)") as info:
        search_bits(scores, CANDIDATES, 1.9)
    assert isinstance(info.value, LabkitError) and isinstance(info.value, ValueError)
    assert info.value.smallest == {"avg_bits": 2.0}
    fixed = {"layer0": 8, "layer3": 6}  # fixed layers raise the floor: (8 + 6 + 4·2) / 6
    with pytest.raises(SearchInfeasible) as info:
        search_bits(scores, CANDIDATES, 3.0, fixed=fixed)
    smallest = info.value.smallest["avg_bits"]
    assert smallest == pytest.approx(BruteForce(scores).mean[BruteForce(scores).mask(fixed=fixed)].min())
    assert smallest == pytest.approx(22 / 6)
    search_bits(scores, CANDIDATES, smallest, fixed=fixed)  # the stated budget works


@pytest.mark.parametrize("argument, attribute", [("bitops_budget", "bitops"), ("size_budget_bits", "size")])
def test_budget_below_the_cheapest_allocation_states_the_smallest_budget(argument, attribute):
    scores, costs = random_problem(1)
    brute = BruteForce(scores, costs)
    cheapest = getattr(brute, attribute).min()  # every layer at 2 bits, FP layers at 32
    assert cheapest == getattr(brute, attribute)[brute.row(dict.fromkeys(LAYERS, 2))]
    with pytest.raises(SearchInfeasible, match=f"Smallest feasible {argument}") as info:
        search_bits(scores, CANDIDATES, 6.0, costs=costs, **{argument: cheapest - 1})
    assert info.value.smallest[argument] == pytest.approx(cheapest, rel=1e-12)
    assert info.value.smallest["avg_bits"] is None  # no average helps when the budget is below the cheapest
    search_bits(scores, CANDIDATES, 6.0, costs=costs, **{argument: info.value.smallest[argument]})


def test_exact_average_that_no_allocation_reaches_states_the_nearest_ones():
    scores, _ = random_problem(2)
    brute = BruteForce(scores)
    with pytest.raises(SearchInfeasible, match="achievable averages nearest") as info:
        search_bits(scores, CANDIDATES, 4.1, exact_average=True)  # 6 layers of even bits: sums are even
    below, above = info.value.nearest_averages
    assert below == pytest.approx(brute.mean[brute.mean <= 4.1].max()) and below == pytest.approx(4.0)
    assert above == pytest.approx(brute.mean[brute.mean >= 4.1].min()) and above == pytest.approx(13 / 3)
    for average in (below, above):
        check_optimal(search_bits(scores, CANDIDATES, average, exact_average=True), brute, avg_bits=average,
                      exact_average=True)


def test_exact_average_with_a_bitops_budget_states_both_ways_out():
    scores, costs = random_problem(3)
    brute = BruteForce(scores, costs)
    at_five = brute.mask(avg_bits=5.0, exact_average=True)
    budget = float(brute.bitops[at_five].min()) - 1  # mean 5 exactly is out of reach, other means are not
    assert brute.mask(bitops_budget=budget).any()
    with pytest.raises(SearchInfeasible) as info:
        search_bits(scores, CANDIDATES, 5.0, exact_average=True, bitops_budget=budget, costs=costs)
    error = info.value
    assert error.smallest["bitops_budget"] == pytest.approx(brute.bitops[at_five].min(), rel=1e-12)
    within = brute.mask(bitops_budget=budget)
    below = brute.mean[within & (brute.mean <= 5.0)]
    above = brute.mean[within & (brute.mean >= 5.0)]
    assert error.nearest_averages[0] == pytest.approx(below.max())
    assert error.nearest_averages[1] == (pytest.approx(above.min()) if above.size else None)
    search_bits(scores, CANDIDATES, 5.0, exact_average=True, bitops_budget=error.smallest["bitops_budget"], costs=costs)
    check_optimal(search_bits(scores, CANDIDATES, error.nearest_averages[0], exact_average=True, bitops_budget=budget,
                              costs=costs), brute, avg_bits=error.nearest_averages[0], exact_average=True,
                  bitops_budget=budget)


def test_bad_arguments_say_what_to_pass():
    scores, costs = random_problem(0)
    with pytest.raises(ValueError, match="costs=labkit.hasb.cost.layer_costs"):
        search_bits(scores, CANDIDATES, 4.0, bitops_budget=1e6)
    with pytest.raises(BitWidthError, match="fixed"):
        search_bits(scores, CANDIDATES, 4.0, fixed={"layer0": 5})
    with pytest.raises(KeyError, match="not in scores"):
        search_bits(scores, CANDIDATES, 4.0, fixed={"nope": 4})
    with pytest.raises(KeyError, match="costs has no entry"):
        search_bits(scores, CANDIDATES, 4.0, costs={"layer0": LayerCost(1, 1)}, bitops_budget=1e9)
    with pytest.raises(ValueError, match="non-empty mapping"):
        search_bits({}, CANDIDATES, 4.0)


# ------------------------------------------------------------------ neighbours and sweeps


def check_subnets(records, brute, scores, fixed=None, **constraints):
    """The paper's enumeration, checked against brute force: feasible, distinct, optimum first, every neighbour
    the best allocation with its forced layer at its forced bit, and no feasible (layer, bit) left out."""
    mask = brute.mask(fixed=fixed, **constraints)
    rows = [brute.row(r["allocation"]) for r in records]
    assert len(set(rows)) == len(rows), "allocations repeat"
    assert all(mask[rows]), "an allocation breaks the constraints"
    assert records[0]["kind"] == "optimum" and records[0]["forced"] is None
    assert records[0]["objective"] == pytest.approx(brute.best(mask), rel=1e-9)
    for record, row in zip(records, rows):
        assert record["objective"] == pytest.approx(brute.objective[row], rel=1e-12)
        assert record["avg_bits"] == pytest.approx(brute.mean[row], rel=1e-12)
        if record["kind"] == "neighbour":
            layer, bits = record["forced"]
            assert record["allocation"][layer] == bits != records[0]["allocation"][layer]
            forced = mask & (brute.bits[:, brute.names.index(layer)] == bits)
            assert record["objective"] == pytest.approx(brute.best(forced), rel=1e-9)
    for i, name in enumerate(brute.names):
        if name in (fixed or {}):
            continue
        for bits in CANDIDATES:
            best = brute.best(mask & (brute.bits[:, i] == bits))
            if best is not None:  # some record is the optimum with this layer at this bit
                assert any(r["allocation"][name] == bits and r["objective"] == pytest.approx(best, rel=1e-9)
                           for r in records), (name, bits)


@pytest.mark.parametrize("seed", range(3))
def test_neighbour_subnets_match_brute_force(seed):
    scores, costs = random_problem(seed)
    brute = BruteForce(scores, costs)
    budget = float(np.quantile(brute.bitops, 0.4))
    for avg_bits, constraints in [(4.0, {}), (5.3, {}), (4.0, dict(exact_average=True)),
                                  (6.0, dict(bitops_budget=budget, costs=costs)),
                                  (None, dict(bitops_budget=budget, costs=costs)), (5.0, dict(fixed={"layer2": 8}))]:
        records = neighbour_subnets(scores, CANDIDATES, avg_bits, **constraints)
        assert 1 < len(records) <= 1 + len(LAYERS) * (len(CANDIDATES) - 1)
        constraints.pop("costs", None)
        check_subnets(records, brute, scores, avg_bits=avg_bits, **constraints)


def test_sweep_every_average_matches_brute_force():
    scores, costs = random_problem(5)
    brute = BruteForce(scores, costs)
    records = sweep(scores, CANDIDATES, costs=costs)
    averages = default_averages(CANDIDATES)
    assert averages[0] == 2.0 and averages[-1] == 8.0 and len(averages) == 121
    assert sorted({r["target_avg_bits"] for r in records}) == pytest.approx(list(averages))
    for average in averages:
        group = [r for r in records if r["target_avg_bits"] == average]
        check_subnets(group, brute, scores, avg_bits=average)
        assert group[0]["allocation"] == search_bits(scores, CANDIDATES, average) or \
            group[0]["objective"] == pytest.approx(brute.objective[brute.row(search_bits(scores, CANDIDATES, average))])
    for record in records[::50]:  # BitOPs and size as labkit.hasb.cost counts them (FP32 layers at 32 bits)
        assert record["bitops"] == total_bitops(costs, record["allocation"])
        assert record["size"] == total_size_bits(costs, record["allocation"])


def test_sweep_with_a_bitops_budget_matches_brute_force():
    scores, costs = random_problem(6)
    brute = BruteForce(scores, costs)
    budget = float(np.quantile(brute.bitops, 0.5))
    averages = np.round(np.arange(2.0, 8.01, 0.25), 10)
    records = sweep(scores, CANDIDATES, averages, bitops_budget=budget, costs=costs)
    for average in averages:
        check_subnets([r for r in records if r["target_avg_bits"] == average], brute, scores, avg_bits=average,
                      bitops_budget=budget)


def test_exact_sweep_skips_unreachable_averages_and_optimum_only_sweep():
    scores, _ = random_problem(4)
    records = sweep(scores, CANDIDATES, [4.0, 4.1, 13 / 3], exact_average=True, neighbours=False)
    assert [r["target_avg_bits"] for r in records] == [4.0, 13 / 3]
    assert [r["kind"] for r in records] == ["optimum", "optimum"]
    with pytest.raises(SearchInfeasible):
        sweep(scores, CANDIDATES, [4.1, 4.2], exact_average=True)


def test_full_sweep_time_for_resnet_sized_problems():
    """Prints the time of a full sweep (ω = 2…8 step 0.05, neighbours) for 18 and 19 layers; not a timed test."""
    model = labkit.quantize_model(build_resnet20(), example_input=torch.randn(1, 3, 32, 32))
    costs = layer_costs(model, (3, 32, 32))
    rng = np.random.default_rng(0)
    for layers in (list(labkit.quantized_layers(model)), [f"resnet18_layer{i}" for i in range(19)]):
        scores = {name: float(rng.lognormal()) for name in layers}
        start = time.perf_counter()
        records = sweep(scores, CANDIDATES)
        seconds = time.perf_counter() - start
        print(f"\nsweep of {len(layers)} layers × {len(CANDIDATES)} candidates, 121 averages with neighbours: "
              f"{seconds:.2f} s, {len(records)} records")
        assert {r["target_avg_bits"] for r in records} == set(default_averages(CANDIDATES))
    searched = {name: float(rng.lognormal()) for name in labkit.quantized_layers(model)}
    budget = total_bitops(costs, dict.fromkeys(searched, 5))
    start = time.perf_counter()
    records = sweep(searched, CANDIDATES, np.round(np.arange(2, 8.01, 0.25), 10), bitops_budget=budget, costs=costs)
    print(f"sweep of ResNet-20 with a BitOPs budget (25 averages, neighbours): {time.perf_counter() - start:.2f} s")
    assert all(r["bitops"] <= budget for r in records)


def build_resnet20():
    from labkit.models import build_model

    return build_model("resnet20")


# ------------------------------------------------------------------ reporting


def test_pareto_front_of_hand_made_points():
    points = [
        {"name": "a", "avg_bits": 2.0, "accuracy": 60.0},
        {"name": "b", "avg_bits": 3.0, "accuracy": 58.0},  # dominated by a
        {"name": "c", "avg_bits": 3.0, "accuracy": 70.0},
        {"name": "d", "avg_bits": 4.0, "accuracy": 70.0},  # same accuracy as c at more bits: dominated
        {"name": "e", "avg_bits": 5.0, "accuracy": 75.0},
        {"name": "f", "avg_bits": 5.0, "accuracy": 75.0},  # duplicate of e: the first is kept
        {"name": "g", "avg_bits": 1.5, "accuracy": 10.0},
    ]
    assert [p["name"] for p in pareto_front(points)] == ["g", "a", "c", "e"]
    for point, size in zip(points, [10, 1, 8, 20, 30, 30, 50]):
        point["size"] = size
    assert [p["name"] for p in pareto_front(points, x="size")] == ["b", "c", "e"]
    with pytest.raises(KeyError, match="bitops"):
        pareto_front(points, x="bitops")


def test_pareto_figure_draws_every_point_and_the_front():
    records = [{"avg_bits": b, "bitops": b * 100, "accuracy": acc, "allocation": {"x": 4}}
               for b, acc in [(2.0, 50.0), (3.0, 40.0), (3.5, 65.0), (4.0, 64.0), (5.0, 70.0)]]
    figure = pareto_figure(records, x="bitops")
    assert isinstance(figure, go.Figure)
    points, front = figure.data
    assert len(points.x) == 5 and len(front.x) == 3
    assert list(front.x) == [200.0, 350.0, 500.0] and list(front.y) == [50.0, 65.0, 70.0]
    assert figure.layout.xaxis.title.text == "BitOPs per image"
    figure.to_json()


def test_write_csv_round_trips_allocations(tmp_path):
    records = neighbour_subnets(random_problem(0)[0], CANDIDATES, 4.0)
    path = write_csv(records, tmp_path / "out" / "subnets.csv")
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(records)
    assert [json.loads(row["allocation"]) for row in rows] == [r["allocation"] for r in records]
    assert rows[0]["forced"] == "" and json.loads(rows[1]["forced"]) == list(records[1]["forced"])
    assert float(rows[0]["objective"]) == pytest.approx(records[0]["objective"])


def tiny_quantized_net():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10),
    )
    return labkit.quantize_model(net, example_input=torch.randn(2, 3, 8, 8))


def test_evaluate_subnets_switches_bits_and_calls_the_callbacks_once_per_allocation():
    model = tiny_quantized_net()
    names = list(labkit.quantized_layers(model))
    assert names == ["3", "6", "9"]
    before = labkit.get_bits(model)
    records = neighbour_subnets({"3": 3.0, "6": 2.0, "9": 1.0}, CANDIDATES, 5.0)
    calls = []

    def recalibrate(m):
        calls.append(("recalibrate", labkit.get_bits(m)))

    def evaluate(m):
        calls.append(("evaluate", labkit.get_bits(m)))
        assert all(bn.bits == m.get_submodule(bn.source).bits for bn in m.modules()
                   if isinstance(bn, labkit.nn.SwitchableBatchNorm2d))  # batch norms follow their layer
        m(torch.randn(2, 3, 8, 8))
        return float(sum(labkit.get_bits(m).values()))  # a stand-in "accuracy"

    evaluated = evaluate_subnets(model, records + records[:2], evaluate, recalibrate, show_progress=False)
    assert len(evaluated) == len(records) + 2 and len(calls) == 2 * len(records)  # repeats evaluated once
    assert [c[0] for c in calls] == ["recalibrate", "evaluate"] * len(records)
    assert [c[1] for c in calls[1::2]] == [r["allocation"] for r in records]
    for record in evaluated:
        assert record["accuracy"] == sum(record["allocation"].values())
    assert "accuracy" not in records[0]  # inputs are not modified
    assert labkit.get_bits(model) == before  # bit-widths restored
    plain = evaluate_subnets(model, [{"3": 2, "6": 4, "9": 8}], lambda m: {"accuracy": 1.0, "loss": 2.0},
                             show_progress=False)
    assert plain == [{"allocation": {"3": 2, "6": 4, "9": 8}, "accuracy": 1.0, "loss": 2.0}]


# ------------------------------------------------------------------ layers held outside the search (1×1 convs)


@pytest.mark.parametrize("seed", range(3))
def test_held_layers_count_at_their_bit_in_the_budgets_only(seed):
    scores, costs = random_problem(seed, layers=LAYERS[:5])
    costs = {**costs, "pointwise": LayerCost(4000, 300)}
    held = {"pointwise": 8}
    brute = BruteForce(scores, {n: c for n, c in costs.items() if n != "pointwise"})
    brute.bitops = brute.bitops + 4000 * 8 ** 2  # the held layer at 8 bits, not at 32
    brute.size = brute.size + 300 * 8
    budget = float(np.quantile(brute.bitops, 0.3))
    size = float(np.quantile(brute.size, 0.6))
    for avg_bits, constraints in [(4.0, {}), (None, dict(bitops_budget=budget)),
                                  (5.0, dict(bitops_budget=budget, size_budget_bits=size))]:
        allocation = search_bits(scores, CANDIDATES, avg_bits, costs=costs, held=held, **constraints)
        assert allocation.pop("pointwise") == 8  # part of the allocation, at its bit
        check_optimal(allocation, brute, avg_bits=avg_bits, **constraints)  # the mean is over searched layers only
    records = sweep(scores, CANDIDATES, [3.0, 5.5], costs=costs, held=held)
    for record in records:
        assert record["bitops"] == total_bitops(costs, record["allocation"])  # pointwise counted at 8 bits
        assert record["avg_bits"] == pytest.approx(np.mean([record["allocation"][n] for n in scores]))
    with pytest.raises(KeyError, match="also searched"):
        search_bits(scores, CANDIDATES, 4.0, held={LAYERS[0]: 8})
    with pytest.raises(KeyError, match="held layers"):
        search_bits(scores, CANDIDATES, 4.0, costs={n: costs[n] for n in scores}, held=held)


class CountingBar:
    def __init__(self, total=None):
        self.total, self.count = total, 0

    def update(self, n=1):
        self.count += n

    def refresh(self):
        pass


def test_sweep_and_evaluation_advance_a_given_bar_to_its_end():
    scores, _ = random_problem(2)
    for neighbours in (False, True):
        bar = CountingBar()
        records = sweep(scores, CANDIDATES, [2.0, 3.0, 3.0, 4.5, 7.0], neighbours=neighbours, progress=bar)
        assert bar.count == bar.total >= 4  # four distinct targets, then the neighbour problems
        assert (bar.total > 4) == neighbours and len(records) > 4
    fixed_total = CountingBar(total=100)  # a bar shared with other work keeps its total
    sweep(scores, CANDIDATES, [3.0, 4.0], progress=fixed_total)
    assert fixed_total.total == 100 and fixed_total.count > 2
    model = tiny_quantized_net()
    bar = CountingBar()
    evaluate_subnets(model, neighbour_subnets({"3": 3.0, "6": 2.0, "9": 1.0}, CANDIDATES, 5.0),
                     lambda m: 1.0, progress=bar)
    assert bar.count == bar.total > 1


def test_bitops_budget_of_uniform_bits_is_the_hand_computed_sum():
    from labkit.hasb.run_search import resolve_bitops_budget

    costs = {"first": LayerCost(macs=100, params=10), "a": LayerCost(macs=1000, params=50),
             "b": LayerCost(macs=300, params=20), "last": LayerCost(macs=7, params=3)}
    # searched layers a, b at 3 bits (MACs·3·3), the FP32 first and last layers at 32·32
    assert resolve_bitops_budget("uniform:3", costs, ["a", "b"]) == 1000 * 9 + 300 * 9 + (100 + 7) * 1024
    assert resolve_bitops_budget("12345.5", costs, ["a", "b"]) == 12345.5
    assert resolve_bitops_budget(None, costs, ["a", "b"]) is None
    with pytest.raises(LabkitError, match="uniform:3"):
        resolve_bitops_budget("uniform:three", costs, ["a", "b"])
    with pytest.raises(LabkitError, match="neither a number"):
        resolve_bitops_budget("cheap", costs, ["a", "b"])


def test_search_run_without_an_average_target_needs_a_cost_bound(tmp_path):
    from labkit.hasb.run_search import search_run

    with pytest.raises(LabkitError, match="--bitops-budget"):
        search_run(tmp_path, avg_bits=None)
    with pytest.raises(LabkitError, match="plain file stem"):
        search_run(tmp_path, avg_bits=3.0, output="out/search.csv")
