"""HASB step 4: pick a bit-width per layer by integer linear programming (METHOD.md §6 step 4, paper Alg. 2).

With ``x[l, b] ∈ {0, 1}`` one-hot per layer (layer ``l`` runs at bit ``b``), :func:`search_bits` solves

    maximise   Σ_l score_l · b_l                     (b_l = Σ_b b · x[l, b])
    subject to Σ_l w_l · b_l ≤ ω · Σ_l w_l            (mean bits ≤ ω; ``== ω`` with ``exact_average``)
               Σ_l MACs_l · b_l²   + FP layers ≤ BitOPs budget   (optional, :mod:`labkit.hasb.cost`)
               Σ_l params_l · b_l  + FP layers ≤ size budget     (optional)
               b_l = fixed_l for the ``fixed`` layers

exactly, with ``scipy.optimize.milp`` (HiGHS branch and bound, relative gap 0). The objective is
*maximised*, as in the reference code: the paper's text says "minimise", which would give the most
sensitive layers the fewest bits. The paper constrains the average only (``mean(b) = ω``); the BitOPs and
size budgets are the natural extension. Scores are HASB's average Hessian traces (step 1) or anything
that says how much a layer gains from more bits.

The layers searched are the keys of ``scores``. Quantized layers left out of the search (the authors' code
leaves out the 1×1 convs: ``hessian_traces(..., exclude_pointwise=True)``) are passed as ``held={layer: bits}``:
they are outside the mean and the objective, run at their held bit (they are part of every returned
allocation) and count at that bit in the BitOPs and size budgets. A layer of ``costs`` that is neither searched
nor held counts at 32 bits (the FP32 first and last layers).

:func:`neighbour_subnets` is the paper's enumeration of more SubNets per ω (force one layer at a time to
another bit and solve again); :func:`sweep` does it over a grid of ω, :func:`evaluate_subnets` measures
them through your own callbacks, :func:`pareto_front` / :func:`pareto_figure` / :func:`write_csv` report
them. A sweep solves many similar problems, so it builds the constraint matrix once, stacks up to
``BATCH`` independent problems block-diagonally into one ``milp`` call, and reuses what earlier solutions
prove (if the optimum at budget B has layer l at b, its other layers are the optimum for budget B − b).
"""
from __future__ import annotations

import csv
import json
import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
from scipy import sparse
from scipy.optimize import Bounds, LinearConstraint, milp

from labkit.errors import LabkitError
from labkit.hasb.cost import FLOAT_BITS, LayerCost, bitops, model_size_bits
from labkit.quant.ranges import check_bit_set, check_bits

BATCH = 40  # independent problems per milp call in a sweep (HiGHS time grows faster than linearly beyond ~50)
RELATIVE_TOLERANCE = 1e-9  # a budget is met when the resource is ≤ budget·(1 + this)
REACHABLE_TABLE_LIMIT = 20_000  # exact sets of reachable sums are kept for integer resources up to this size
STEP = 0.05  # default step of the ω grid of a sweep


class SearchInfeasible(LabkitError, ValueError):
    """No allocation meets the budgets; ``smallest`` holds, per budget argument, the smallest value that would.

    ``smallest[name]`` is computed with the other budgets (and fixed layers) unchanged; ``None`` means that
    changing this budget alone cannot help. With ``exact_average=True``, ``nearest_averages`` holds the
    achievable averages just below and above the requested one (``None`` where there is none).
    """

    def __init__(self, message: str, smallest: dict | None = None, nearest_averages: tuple | None = None):
        super().__init__(message)
        self.smallest = dict(smallest or {})
        self.nearest_averages = nearest_averages


# ------------------------------------------------------------------ the problem, built once


@dataclass
class _Resource:
    """One budgeted quantity: ``(Σ_l cost[l, b_l] + offset) / unit`` is compared with the budget argument."""

    argument: str  # the search_bits argument that sets its budget
    cost: np.ndarray  # (layers, candidates)
    offset: float = 0.0  # layers outside the search (FP32)
    unit: float = 1.0  # avg_bits: Σ w (the sum becomes a mean)
    scale: float = field(init=False)  # the row is divided by this in the ILP (numerics)
    integral: bool = field(init=False)

    def __post_init__(self):
        self.scale = float(max(np.abs(self.cost).max(), 1e-300))
        self.integral = bool(np.all(self.cost == np.round(self.cost)) and np.abs(self.cost).max() < 2**52)

    def tolerance(self) -> float:
        return RELATIVE_TOLERANCE * max(1.0, self.scale * self.cost.shape[0])

    def to_sum(self, budget: float) -> float:
        return budget * self.unit - self.offset

    def to_budget(self, total: float) -> float:
        return (total + self.offset) / self.unit


@dataclass
class _Problem:
    names: list[str]
    candidates: np.ndarray  # (K,) high → low
    scores: np.ndarray  # (L,)
    weights: np.ndarray  # (L,)
    allowed: np.ndarray  # (L, K) bool: the fixed layers allow one bit
    resources: list[_Resource]
    fixed: dict[str, int]
    exact_average: bool
    costs: dict | None
    held: dict[str, int]  # layers outside the search, at a given bit
    matrix: sparse.csr_matrix = field(init=False)  # one-hot rows, then one row per resource (scaled)
    objective: np.ndarray = field(init=False)  # milp minimises: −score·bits, normalised

    def __post_init__(self):
        layers, k = self.allowed.shape
        one_hot = sparse.kron(sparse.identity(layers, format="csr"), np.ones((1, k)), format="csr")
        rows = [sparse.csr_matrix(r.cost.reshape(1, -1) / r.scale) for r in self.resources]
        self.matrix = sparse.vstack([one_hot, *rows], format="csr")
        gains = self.scores[:, None] * self.candidates[None, :]
        self.objective = -(gains / max(np.abs(gains).max(), 1e-300)).ravel()
        self._tables: dict = {}

    # ---- evaluation of allocations (indices into candidates, shape (..., L))
    def resource_sums(self, index: np.ndarray) -> np.ndarray:
        rows = np.arange(len(self.names))
        return np.stack([r.cost[rows, index].sum(-1) for r in self.resources], -1) if self.resources else \
            np.zeros(index.shape[:-1] + (0,))

    def allocation(self, index) -> dict[str, int]:
        return {**{name: int(self.candidates[k]) for name, k in zip(self.names, index)}, **self.held}

    def record(self, index: np.ndarray, **extra) -> dict:
        bits = self.candidates[index]
        result = dict(extra)
        result["avg_bits"] = float((self.weights * bits).sum() / self.weights.sum())
        result["objective"] = float((self.scores * bits).sum())
        if self.costs is not None:
            result["bitops"] = self.costs["bitops_offset"] + int(bitops(self.costs["macs"], bits).sum())
            result["size"] = self.costs["size_offset"] + int(model_size_bits(self.costs["params"], bits).sum())
        result["allocation"] = self.allocation(index)
        return result

    # ---- bounds of the resource sums, snapped so that equivalent budgets give equal (cacheable) keys
    def _extremes(self, resource: _Resource, exclude: int | None):
        masked_low = np.where(self.allowed, resource.cost, np.inf).min(1)
        masked_high = np.where(self.allowed, resource.cost, -np.inf).max(1)
        keep = np.arange(len(self.names)) != (-1 if exclude is None else exclude)
        return masked_low[keep].sum(), masked_high[keep].sum()

    def _reachable(self, r: int, exclude: int | None):
        """Sorted sums of an integer resource that some allocation reaches (None when too many to list)."""
        key = (r, exclude)
        if key not in self._tables:
            resource = self.resources[r]
            cost = np.where(self.allowed, resource.cost, 0).astype(np.int64)
            low = np.where(self.allowed, resource.cost, np.inf).min(1).astype(np.int64)
            span = int(self._extremes(resource, exclude)[1] - self._extremes(resource, exclude)[0])
            table = None
            if resource.integral and span <= REACHABLE_TABLE_LIMIT:
                reach = np.zeros(span + 1, bool)
                reach[0] = True
                for layer in range(len(self.names)):
                    if layer == exclude:
                        continue
                    shifted = np.zeros_like(reach)
                    for k in np.flatnonzero(self.allowed[layer]):
                        step = int(cost[layer, k] - low[layer])
                        shifted[step:] |= reach[:span + 1 - step]
                    reach = shifted
                table = np.flatnonzero(reach) + int(self._extremes(resource, exclude)[0])
            self._tables[key] = table
        return self._tables[key]

    def snap(self, low, high, exclude: int | None = None):
        """Equivalent, canonical bounds ``(low, high)`` of the resource sums, or None when surely infeasible."""
        snapped_low, snapped_high = [], []
        for r, resource in enumerate(self.resources):
            least, most = self._extremes(resource, exclude)
            tol = resource.tolerance()
            lo, hi = float(low[r]), float(high[r])
            if hi + tol < least or lo - tol > most:
                return None
            hi = min(hi, most)
            lo = -math.inf if lo <= least else lo
            if resource.integral:
                hi = math.floor(hi + tol)
                lo = math.ceil(lo - tol) if lo > -math.inf else lo
                table = self._reachable(r, exclude)
                if table is not None:
                    i = np.searchsorted(table, hi, side="right") - 1
                    if i < 0:
                        return None
                    hi = int(table[i])
                    if lo > -math.inf:
                        j = np.searchsorted(table, lo, side="left")
                        if j >= len(table):
                            return None
                        lo = int(table[j])
                        lo = -math.inf if lo <= least else lo
                if lo > hi:
                    return None
            snapped_low.append(lo)
            snapped_high.append(hi)
        return tuple(snapped_low), tuple(snapped_high)


def _as_cost(value) -> LayerCost:
    return value if isinstance(value, LayerCost) else LayerCost(*value)


def _build(scores, candidates, avg_bits, bitops_budget, size_budget_bits, costs, weights, fixed,
           exact_average, held=None) -> tuple[_Problem, np.ndarray, np.ndarray]:
    """The problem and the bounds ``(low, high)`` of its resource sums."""
    if not isinstance(scores, Mapping) or not scores:
        raise ValueError("scores must be a non-empty mapping {layer_name: score}, e.g. labkit.hessian_traces(...).")
    names = list(scores)
    score = np.array([float(scores[n]) for n in names])
    if not np.all(np.isfinite(score)):
        raise ValueError(f"scores must be finite numbers; got {dict(zip(names, score.tolist()))}")
    bit_set = np.array(check_bit_set(candidates), dtype=np.int64)
    if weights is None:
        weight = np.ones(len(names))
    else:
        missing = [n for n in names if n not in weights]
        if missing:
            raise KeyError(f"weights has no entry for layers {missing}")
        weight = np.array([float(weights[n]) for n in names])
        if not np.all(np.isfinite(weight) & (weight > 0)):
            raise ValueError("weights of the average must be finite and positive.")
    fixed = dict(fixed or {})
    unknown = [n for n in fixed if n not in scores]
    if unknown:
        raise KeyError(f"fixed names layers {unknown} that are not in scores; searched layers are {names}")
    allowed = np.ones((len(names), len(bit_set)), bool)
    for name, value in fixed.items():
        value = check_bits(value, allowed=bit_set.tolist(), name=f"fixed[{name!r}]")
        fixed[name] = value
        allowed[names.index(name)] = bit_set == value
    held = dict(held or {})
    searched = [n for n in held if n in scores]
    if searched:
        raise KeyError(f"held names layers {searched} that are also searched (in scores); a layer is either searched "
                       "or held at a bit: drop it from one of them, or use fixed= to force a searched layer.")
    held = {name: check_bits(value, name=f"held[{name!r}]") for name, value in held.items()}
    if costs is not None:
        missing = [n for n in held if n not in costs]
        if missing:
            raise KeyError(f"costs has no entry for held layers {missing}; use "
                           "labkit.hasb.cost.layer_costs(model, example_input).")

    cost_arrays = None
    if costs is not None:
        missing = [n for n in names if n not in costs]
        if missing:
            raise KeyError(f"costs has no entry for searched layers {missing}; use "
                           "labkit.hasb.cost.layer_costs(model, example_input).")
        measured = {n: _as_cost(c) for n, c in costs.items()}
        outside = [(c, held.get(n, FLOAT_BITS)) for n, c in measured.items() if n not in scores]
        cost_arrays = {
            "macs": np.array([measured[n].macs for n in names], dtype=np.int64),
            "params": np.array([measured[n].params for n in names], dtype=np.int64),
            "bitops_offset": int(sum(bitops(c.macs, b) for c, b in outside)),
            "size_offset": int(sum(model_size_bits(c.params, b) for c, b in outside)),
        }
    elif bitops_budget is not None or size_budget_bits is not None:
        raise ValueError("a BitOPs or size budget needs the layers' costs: pass "
                         "costs=labkit.hasb.cost.layer_costs(model, example_input).")

    resources, low, high = [], [], []
    if avg_bits is not None:
        if not isinstance(avg_bits, numbers.Real) or not math.isfinite(avg_bits):
            raise ValueError(f"avg_bits must be a number of bits such as 4.0, got {avg_bits!r}")
        resources.append(_Resource("avg_bits", weight[:, None] * bit_set[None, :], unit=float(weight.sum())))
        total = resources[-1].to_sum(float(avg_bits))
        low.append(total if exact_average else -math.inf)
        high.append(total)
    elif exact_average:
        raise ValueError("exact_average=True needs avg_bits.")
    for argument, budget, per_layer, offset in (
        ("bitops_budget", bitops_budget, lambda a: bitops(a["macs"][:, None], bit_set[None, :]), "bitops_offset"),
        ("size_budget_bits", size_budget_bits, lambda a: model_size_bits(a["params"][:, None], bit_set[None, :]),
         "size_offset"),
    ):
        if budget is not None:
            resources.append(_Resource(argument, per_layer(cost_arrays).astype(float), offset=cost_arrays[offset]))
            low.append(-math.inf)
            high.append(resources[-1].to_sum(float(budget)))
    problem = _Problem(names, bit_set, score, weight, allowed, resources, fixed, exact_average, cost_arrays, held)
    return problem, np.array(low, float), np.array(high, float)


# ------------------------------------------------------------------ solving


@dataclass(frozen=True)
class _Block:
    """One problem to solve: bounds of the resource sums, optionally one layer forced to one candidate index."""

    low: tuple
    high: tuple
    forced: tuple | None = None  # (layer, candidate index)


def _milp(problem: _Problem, blocks: Sequence[_Block], objective: np.ndarray):
    count, (layers, k) = len(blocks), problem.allowed.shape
    matrix = sparse.kron(sparse.identity(count, format="csr"), problem.matrix, format="csr")
    upper = np.tile(problem.allowed.astype(float), (count, 1, 1))
    for i, block in enumerate(blocks):
        if block.forced is not None:
            layer, index = block.forced
            upper[i, layer] = 0.0
            upper[i, layer, index] = 1.0
    scale = np.array([r.scale for r in problem.resources])
    tol = np.array([r.tolerance() for r in problem.resources])
    low = np.array([b.low for b in blocks], float).reshape(count, -1)
    high = np.array([b.high for b in blocks], float).reshape(count, -1)
    ones = np.ones((count, layers))
    row_low = np.hstack([ones, (low - tol) / scale]).ravel()
    row_high = np.hstack([ones, (high + tol) / scale]).ravel()
    result = milp(np.tile(objective, count), integrality=np.ones(count * layers * k),
                  bounds=Bounds(0.0, upper.ravel()), constraints=LinearConstraint(matrix, row_low, row_high),
                  options={"mip_rel_gap": 0.0})
    if result.status == 2:
        return None
    if result.status != 0:
        raise RuntimeError(f"HiGHS did not finish the bit search: {result.message}")
    return result.x.reshape(count, layers, k).argmax(-1)


def _solve(problem: _Problem, blocks: Sequence[_Block], objective: np.ndarray | None = None) -> list:
    """The optimal candidate indices (shape (L,)) of each block, or None for an infeasible block.

    Blocks are independent, so they are stacked block-diagonally into one milp call; an infeasible stack is
    split in halves until the infeasible blocks are found. A solution that HiGHS's tolerance let exceed a
    budget is solved again with the budget lowered below it (exact feasibility is checked in float64).
    """
    objective = problem.objective if objective is None else objective
    if not blocks:
        return []
    if len(blocks) > BATCH:
        return [x for start in range(0, len(blocks), BATCH)
                for x in _solve(problem, blocks[start:start + BATCH], objective)]
    solution = _milp(problem, blocks, objective)
    if solution is None:
        if len(blocks) == 1:
            return [None]
        half = len(blocks) // 2
        return _solve(problem, blocks[:half], objective) + _solve(problem, blocks[half:], objective)
    results = list(solution)
    tol = np.array([r.tolerance() for r in problem.resources])
    for i, (block, index) in enumerate(zip(blocks, results)):
        for _ in range(5):
            sums = problem.resource_sums(index)
            over = sums - (np.array(block.high, float) + tol)
            under = (np.array(block.low, float) - tol) - sums
            if not (np.any(over > 0) or np.any(under > 0)):
                break
            # move the violated bound past the solution by twice HiGHS's overshoot
            block = _Block(tuple(np.where(under > 0, np.array(block.low, float) + 2 * under, block.low)),
                           tuple(np.where(over > 0, np.array(block.high, float) - 2 * over, block.high)), block.forced)
            index = _solve(problem, [block], objective)[0]
            if index is None:
                break
        else:
            raise RuntimeError("HiGHS kept returning allocations outside the budget; rescale the costs.")
        results[i] = index
    return results


class _Solutions:
    """Optimal solutions of one family of problems (same layers, same forced layers), by their bounds.

    A solution that is optimal within bounds ``(low, high)`` is also optimal within any tighter bounds that
    it still meets (the feasible set shrinks and still holds it): :meth:`find` returns it for those too.
    """

    def __init__(self, problem: _Problem):
        self.problem = problem
        self.exact: dict = {}  # (low, high) → indices, or None when infeasible
        self.entries: list = []  # (low, high, usage, indices) of the feasible ones
        self._stacked = None

    def add(self, key, usage, index) -> None:
        self.exact.setdefault(key, index)
        if index is not None:
            self.entries.append((key[0], key[1], usage, index))
            self._stacked = None

    def find(self, key):
        """(known, indices): indices of an optimum within ``key``'s bounds (None: infeasible), if known."""
        if key in self.exact:
            return True, self.exact[key]
        if not self.entries:
            return False, None
        if self._stacked is None:
            self._stacked = [np.array([entry[i] for entry in self.entries], float).reshape(len(self.entries), -1)
                             for i in range(3)]
        lows, highs, usages = self._stacked
        low, high = np.array(key[0], float), np.array(key[1], float)
        tol = np.array([r.tolerance() for r in self.problem.resources])
        fits = np.all((lows <= low) & (highs >= high) & (usages >= low - tol) & (usages <= high + tol), axis=1)
        if not fits.any():
            return False, None
        return True, self.entries[int(np.argmax(fits))][3]


class _Enumerator:
    """Optima and neighbour SubNets of one problem for many average budgets, sharing what each solve proves.

    Forcing layer l to bit b leaves the other layers an ordinary problem with the budgets lowered by l's
    cost; if the optimum at some budget has layer l at b', its other layers are the optimum of that problem
    at the budget lowered by b' — so most neighbour problems are solved before they are asked.
    """

    def __init__(self, problem: _Problem, progress=None, progress_grows: bool = False):
        self.problem, self.progress = problem, progress  # a bar advanced once per problem solved or looked up
        self.progress_grows = progress_grows  # add the neighbour problems to the bar's total
        self.optima = _Solutions(problem)
        self.others = {layer: _Solutions(problem) for layer in range(len(problem.names))}
        self._neighbours: dict = {}  # key → neighbour_keys(key)
        self._costs = np.stack([r.cost for r in problem.resources], -1) if problem.resources else \
            np.zeros(problem.allowed.shape + (0,))  # (L, K, R)
        # HiGHS solves stacked single-budget problems faster per problem; with two or more budgets, one at a time
        self.batch = BATCH if len(problem.resources) <= 1 else 1

    def _others_key(self, key, layer: int, index: int):
        cost = self._costs[layer, index]
        return self.problem.snap(np.array(key[0]) - cost, np.array(key[1]) - cost, exclude=layer)

    def _free_layers(self):
        return [i for i, name in enumerate(self.problem.names) if name not in self.problem.fixed]

    def _solve_missing(self, family_of, items, block_of, remember) -> None:
        """Solve the items no known solution covers, a batch at a time, re-checking after each batch."""
        pending = list(reversed(items))
        while pending:
            batch, asked, looked_up = [], set(), 0
            while pending and len(batch) < self.batch:
                item = pending.pop()
                looked_up += 1
                question = (id(family_of(item)), item[-1])
                if question not in asked and not family_of(item).find(item[-1])[0]:
                    batch.append(item)
                    asked.add(question)
            for item, index in zip(batch, _solve(self.problem, [block_of(item) for item in batch])):
                remember(item, index)
            if self.progress is not None:
                self.progress.update(looked_up)

    def solve_optima(self, keys) -> None:
        def remember(item, index):
            key = item[-1]
            usage = None if index is None else self.problem.resource_sums(index)
            self.optima.add(key, usage, index)
            if index is not None:  # what this optimum proves about the problems without one layer
                for layer in self._free_layers():
                    cost = self._costs[layer, index[layer]]
                    others = self._others_key(key, layer, index[layer])
                    if others is not None:
                        self.others[layer].add(others, usage - cost, index)

        keys = sorted({key for key in keys if key is not None}, key=lambda k: tuple(-x for x in k[1]))
        self._solve_missing(lambda item: self.optima, [(key,) for key in keys], lambda item: _Block(*item[0]),
                            remember)

    def optimum(self, key):
        return None if key is None else self.optima.find(key)[1]

    def neighbour_keys(self, key):
        """(layer, candidate index, key of the other layers) of every neighbour of the optimum at ``key``."""
        if key not in self._neighbours:
            optimum, found = self.optimum(key), []
            for layer in self._free_layers():
                for index in range(len(self.problem.candidates)):
                    if index != optimum[layer] and self.problem.allowed[layer, index]:
                        others = self._others_key(key, layer, index)
                        if others is not None:
                            found.append((layer, index, others))
            self._neighbours[key] = found
        return self._neighbours[key]

    def solve_neighbours(self, keys) -> None:
        def block_of(item):
            layer, index, others = item
            cost = self._costs[layer, index]
            return _Block(tuple(np.array(others[0]) + cost), tuple(np.array(others[1]) + cost), (layer, index))

        def remember(item, solution):
            layer, index, others = item
            usage = None if solution is None else self.problem.resource_sums(solution) - self._costs[layer, index]
            self.others[layer].add(others, usage, solution)

        keys = sorted({key for key in keys if self.optimum(key) is not None}, key=lambda k: tuple(-x for x in k[1]))
        items = [item for key in keys for item in self.neighbour_keys(key)]
        if self.progress is not None and self.progress_grows:
            self.progress.total += len(items)
            self.progress.refresh()
        self._solve_missing(lambda item: self.others[item[0]], items, block_of, remember)

    def records(self, key, target, neighbours: bool) -> list[dict]:
        optimum = self.optimum(key)
        if optimum is None:
            return []
        found = [(optimum, "optimum", None)]
        if neighbours:
            for layer, index, others in self.neighbour_keys(key):
                solution = self.others[layer].find(others)[1]
                if solution is not None:
                    solution = solution.copy()
                    solution[layer] = index
                    found.append((solution, "neighbour", (self.problem.names[layer],
                                                          int(self.problem.candidates[index]))))
        seen, result = set(), []
        for index, kind, forced in found:
            if tuple(index) not in seen:
                seen.add(tuple(index))
                result.append(self.problem.record(index, target_avg_bits=target, kind=kind, forced=forced))
        return result


# ------------------------------------------------------------------ infeasible budgets


def _format(value: float) -> str:
    return f"{value:.10g}"


def _infeasible(problem: _Problem, low: np.ndarray, high: np.ndarray) -> SearchInfeasible:
    """The error for budgets no allocation meets, with the smallest budgets that would be met (auxiliary ILPs)."""
    smallest, nearest = {}, None
    for r, resource in enumerate(problem.resources):
        objective = (resource.cost / resource.scale * 1e6).ravel()  # minimise this resource …
        free_low, free_high = low.copy(), high.copy()  # … subject to the other budgets
        free_low[r], free_high[r] = -math.inf, math.inf
        if resource.argument == "avg_bits" and problem.exact_average:
            below_high = free_high.copy()
            below_high[r] = high[r]
            above_low = free_low.copy()
            above_low[r] = low[r]
            below, above = _solve(problem, [_Block(tuple(free_low), tuple(below_high))], -objective) + \
                _solve(problem, [_Block(tuple(above_low), tuple(free_high))], objective)
            nearest = tuple(None if x is None else resource.to_budget(float(problem.resource_sums(x)[r]))
                            for x in (below, above))
            continue
        (index,) = _solve(problem, [_Block(tuple(free_low), tuple(free_high))], objective)
        smallest[resource.argument] = None if index is None else \
            resource.to_budget(float(problem.resource_sums(index)[r]))
    asked = ", ".join(f"{r.argument}{' ==' if r.argument == 'avg_bits' and problem.exact_average else ' ≤'} "
                      f"{_format(r.to_budget(high[i]))}" for i, r in enumerate(problem.resources))
    lines = [f"no allocation of {len(problem.names)} layers over the candidates {problem.candidates.tolist()} "
             f"meets {asked}" + (f" with the fixed layers {problem.fixed}" if problem.fixed else "") + "."]
    if nearest is not None:
        shown = " and ".join(_format(v) for v in nearest if v is not None) or "none"
        lines.append(f"The achievable averages nearest to it are {shown}: pass one of them as avg_bits, or "
                     "exact_average=False to allow a lower mean.")
    for argument, value in smallest.items():
        if value is None:
            lines.append(f"Changing {argument} alone cannot help: the other budgets conflict on their own.")
        else:
            lines.append(f"Smallest feasible {argument} with the other budgets unchanged: {_format(value)} "
                         f"(pass {argument}={_format(value)} or more).")
    return SearchInfeasible(" ".join(lines), smallest, nearest)


# ------------------------------------------------------------------ public search functions


def search_bits(scores: Mapping[str, float], candidates=(8, 6, 4, 2), avg_bits: float | None = 4.0, *,
                bitops_budget: float | None = None, size_budget_bits: float | None = None,
                costs: Mapping[str, LayerCost] | None = None, weights: Mapping[str, float] | None = None,
                fixed: Mapping[str, int] | None = None, exact_average: bool = False,
                held: Mapping[str, int] | None = None) -> dict[str, int]:
    """The allocation ``{layer: bits}`` maximising Σ score·bits within the budgets (METHOD.md §6 step 4, Alg. 2).

    Args:
        scores: per-layer sensitivity, e.g. ``labkit.hessian_traces(model, data)``; its keys are the layers searched.
        candidates: the bit-widths a layer may take (the SuperNet's bit set).
        avg_bits: ω, the bound on the mean bit-width ``Σ w·b / Σ w`` (``None``: no bound on the mean).
        bitops_budget: bound on BitOPs per image, ``Σ MACs·b²`` (weights and activations share the bit)
            plus every layer of ``costs`` that is not searched at 32 bits (FP32 first/last layers).
        size_budget_bits: bound on weight storage in bits, ``Σ params·b`` plus unsearched layers at 32 bits.
        costs: ``labkit.hasb.cost.layer_costs(model, example_input)``; needed for the two budgets above and
            counted whole: pass only the searched layers' costs to budget them alone.
        weights: per-layer weights of the mean (default 1 each, the paper's plain mean; parameter counts give
            the parameter-weighted mean).
        fixed: layers forced to a bit, e.g. ``{"layer1.0.conv1": 8}``.
        exact_average: require ``mean(b) == ω`` as the paper writes, instead of ``≤ ω``.
        held: quantized layers outside the search at a given bit, e.g. the 1×1 convs the authors leave out
            (``{name: 8 for name in labkit.hasb.graph.pointwise_convs(model, quantized_layers(model))}``):
            not in the mean or the objective, counted at their bit in the budgets, included in the allocation.

    Exact: HiGHS branch and bound with gap 0 (scores are normalised; allocations whose objectives differ by
    less than ~1e-7 of the optimum count as ties), budgets met to a relative 1e-9 (exactly for integer costs
    of moderate size), checked in float64 after the solve. The same call always returns the same allocation;
    among tied optima which one is returned is HiGHS's choice (a sweep may pick another tied one).
    Raises :class:`SearchInfeasible` (with the smallest feasible budgets) when no allocation fits.
    """
    problem, low, high = _build(scores, candidates, avg_bits, bitops_budget, size_budget_bits, costs, weights,
                                fixed, exact_average, held)
    key = problem.snap(low, high)
    (index,) = _solve(problem, [_Block(*key)]) if key is not None else [None]
    if index is None:
        raise _infeasible(problem, low, high)
    return problem.allocation(index)


def default_averages(candidates=(8, 6, 4, 2), step: float = STEP) -> np.ndarray:
    """The ω grid of a sweep: from the lowest to the highest candidate in steps of ``step`` (ends included)."""
    bit_set = check_bit_set(candidates)
    count = int(round((bit_set[0] - bit_set[-1]) / step))
    return np.round(bit_set[-1] + step * np.arange(count + 1), 10)


def sweep(scores: Mapping[str, float], candidates=(8, 6, 4, 2), averages: Iterable[float] | None = None, *,
          neighbours: bool = True, bitops_budget: float | None = None, size_budget_bits: float | None = None,
          costs: Mapping[str, LayerCost] | None = None, weights: Mapping[str, float] | None = None,
          fixed: Mapping[str, int] | None = None, exact_average: bool = False,
          held: Mapping[str, int] | None = None, progress=None) -> list[dict]:
    """The optimum (and, with ``neighbours``, the neighbour SubNets) for every ω of ``averages``.

    ``averages`` defaults to :func:`default_averages` (lowest to highest candidate, step 0.05). One record
    per distinct allocation and ω: ``target_avg_bits`` (ω), ``kind`` (``"optimum"`` or ``"neighbour"``),
    ``forced`` (``(layer, bits)`` a neighbour was forced to, else None), ``avg_bits`` (the mean reached),
    ``objective`` (Σ score·bits), ``bitops`` and ``size`` (bits; only with ``costs``, unsearched layers at 32
    bits) and ``allocation``. The same allocation may appear under several ω. Targets no allocation meets
    are skipped; when none is met, the error of the last one is raised. ``progress``: a bar over the problems
    solved (``True`` for a ``tqdm.auto`` bar, or a bar of yours, :mod:`labkit.hasb.progress`). Other arguments
    as in :func:`search_bits`.
    """
    averages = default_averages(candidates) if averages is None else np.asarray(list(averages), float)
    if not np.all(np.isfinite(averages)):
        raise ValueError(f"averages must be numbers of bits such as np.arange(2, 8.01, 0.05); got {averages}")
    if not len(averages):
        return []
    problem, low, high = _build(scores, candidates, float(averages[0]), bitops_budget, size_budget_bits, costs,
                                weights, fixed, exact_average, held)
    targets = []
    for average in averages:  # the mean is resource 0: only its bound changes
        low[0] = problem.resources[0].to_sum(float(average)) if exact_average else -math.inf
        high[0] = problem.resources[0].to_sum(float(average))
        targets.append((float(average), low.copy(), high.copy()))
    return _subnets(problem, targets, neighbours, progress)


def neighbour_subnets(scores: Mapping[str, float], candidates=(8, 6, 4, 2), avg_bits: float | None = 4.0, *,
                      bitops_budget: float | None = None, size_budget_bits: float | None = None,
                      costs: Mapping[str, LayerCost] | None = None, weights: Mapping[str, float] | None = None,
                      fixed: Mapping[str, int] | None = None, exact_average: bool = False,
                      held: Mapping[str, int] | None = None) -> list[dict]:
    """The paper's SubNets for one ω: the optimum, then, for each free layer and each other bit, the optimum
    with that layer forced to that bit (infeasible ones left out, repeats removed).

    Records as in :func:`sweep`; arguments as in :func:`search_bits`. Raises :class:`SearchInfeasible` when
    even the optimum does not exist.
    """
    problem, low, high = _build(scores, candidates, avg_bits, bitops_budget, size_budget_bits, costs, weights, fixed,
                                exact_average, held)
    return _subnets(problem, [(avg_bits, low, high)], neighbours=True)


def _subnets(problem: _Problem, targets: list, neighbours: bool, progress=None) -> list[dict]:
    """Records of the optimum (and neighbours) for each ``(target_avg_bits, low, high)``; infeasible ones skipped."""
    from labkit.hasb.progress import progress_bar

    keys = [problem.snap(low, high) for _, low, high in targets]
    # the bar counts problems (optima, then neighbours); its total grows by the neighbours unless a caller set it
    grows = not hasattr(progress, "update") or getattr(progress, "total", 0) is None
    with progress_bar(progress, len({key for key in keys if key is not None}), "ILP sweep") as bar:
        enumerator = _Enumerator(problem, bar, grows)
        enumerator.solve_optima(keys)
        if neighbours:
            enumerator.solve_neighbours(keys)
    records = [record for (average, _, _), key in zip(targets, keys)
               for record in enumerator.records(key, average, neighbours)]
    if not records:
        raise _infeasible(problem, *targets[-1][1:])
    return records


# ------------------------------------------------------------------ evaluating and reporting


def pareto_front(points: Iterable[Mapping], x: str = "avg_bits", y: str = "accuracy") -> list:
    """The points no other point beats (lower or equal ``x`` and higher or equal ``y``, one strictly), by ``x``.

    Of points with equal ``x`` and ``y`` the first is kept.
    """
    points = list(points)
    for point in points:
        if x not in point or y not in point:
            raise KeyError(f"every point needs {x!r} and {y!r}; got keys {sorted(point)} "
                           "(evaluate_subnets adds 'accuracy'; sweep adds 'bitops' and 'size' only with costs).")
    order = sorted(range(len(points)), key=lambda i: (points[i][x], -points[i][y], i))
    front, best = [], -math.inf
    for i in order:
        if points[i][y] > best:
            front.append(points[i])
            best = points[i][y]
    return front


def evaluate_subnets(model, allocations: Iterable[Mapping], evaluate_fn: Callable,
                     recalibrate_fn: Callable | None = None, show_progress: bool = True, progress=None) -> list[dict]:
    """Switch ``model`` to each allocation (``labkit.set_bits``) and measure it with your callbacks.

    ``allocations`` are ``{layer: bits}`` mappings or records of :func:`sweep` (with an ``"allocation"``).
    For each distinct allocation: ``recalibrate_fn(model)`` (e.g. re-estimating batch-norm statistics), then
    ``evaluate_fn(model)``, which returns the accuracy (a number) or a dict of metrics. Returns one record
    per input, a copy with ``"accuracy"`` (or the metrics) added. The model's bit-widths are restored afterwards.
    ``progress``: a bar over the distinct SubNets (``True``/``False``, or a bar of yours, :mod:`labkit.hasb.progress`);
    by default ``show_progress`` decides.
    """
    from labkit.convert import get_bits, set_bits
    from labkit.hasb.progress import progress_bar

    records = [dict(item) if "allocation" in item else {"allocation": dict(item)} for item in allocations]
    distinct = {}
    for record in records:
        distinct.setdefault(tuple(sorted(record["allocation"].items())), record["allocation"])
    before = get_bits(model)
    results = {}
    try:
        with progress_bar(show_progress if progress is None else progress, len(distinct), "SubNets") as bar:
            for key, allocation in distinct.items():
                set_bits(model, dict(allocation))
                if recalibrate_fn is not None:
                    recalibrate_fn(model)
                metrics = evaluate_fn(model)
                results[key] = dict(metrics) if isinstance(metrics, Mapping) else {"accuracy": float(metrics)}
                bar.update(1)
    finally:
        set_bits(model, before)
    for record in records:
        record.update(results[tuple(sorted(record["allocation"].items()))])
    return records


def write_csv(records: Iterable[Mapping], path) -> Path:
    """Write records as CSV: one column per key (first-seen order); dicts, tuples and lists as JSON text."""
    records = list(records)
    columns = list(dict.fromkeys(key for record in records for key in record))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for record in records:
            writer.writerow({key: json.dumps(value) if isinstance(value, (dict, list, tuple)) else
                             ("" if value is None else value) for key, value in record.items()})
    return path


AXIS_TITLES = {"avg_bits": "average bit-width", "bitops": "BitOPs per image", "size": "weight size (bits)",
               "accuracy": "top-1 accuracy (%)", "objective": "Σ score · bits"}


def pareto_figure(records: Sequence[Mapping], x: str = "avg_bits", y: str = "accuracy", title: str | None = None):
    """Every SubNet as a grey dot and the Pareto front (lower ``x``, higher ``y``) as a line; a ``go.Figure``.

    (Belongs with the other figures in ``labkit.viz``.)
    """
    import plotly.graph_objects as go

    def hover(record):
        allocation = record.get("allocation") or {}
        return f"{x}={record[x]:.4g}, {y}={record[y]:.4g}<br>bits: {' '.join(str(b) for b in allocation.values())}"

    front = pareto_front(records, x, y)
    figure = go.Figure([
        go.Scatter(x=[r[x] for r in records], y=[r[y] for r in records], mode="markers", name="SubNets",
                   marker=dict(color="#9e9e9e", size=6), hovertext=[hover(r) for r in records], hoverinfo="text"),
        go.Scatter(x=[r[x] for r in front], y=[r[y] for r in front], mode="lines+markers", name="Pareto front",
                   line=dict(color="#d62728", shape="hv"), hovertext=[hover(r) for r in front], hoverinfo="text"),
    ])
    figure.update_layout(title=title or f"SubNets: {AXIS_TITLES.get(y, y)} against {AXIS_TITLES.get(x, x)}",
                         xaxis_title=AXIS_TITLES.get(x, x), yaxis_title=AXIS_TITLES.get(y, y), template="plotly_white")
    return figure
