"""HASB vs uniform bit sampling over training seeds (METHOD.md §6, Alg. A.3; the reviewers' question, §8).

One SuperNet per sampling rule says little: the gap between two SuperNets mixes the rule with the luck of one
training run. So the lab trains both recipes (``cifar10-resnet20-hasb`` and ``-uniform``) at several seeds, from
the same jointly trained model, and compares them seed by seed. Seed k of both rules shares everything a seed
decides: the data order, the augmentation, and the Hessian traces (measured on the same images with the same
probes, before any SuperNet step), so both searches rank the layers the same way and evaluate the *same*
allocations; only the SuperNets' weights and Transitional BNs differ.

Each seed's SuperNets are searched twice (``labkit search``): at equal average bits (ω = 3, with the paper's
neighbouring SubNets, ``search.csv``) and at equal cost (the mean left free, BitOPs bounded by uniform 3-bit,
``search-bitops.csv``). A seed's summaries of a search are the ILP optimum's accuracy, the mean over its SubNets
and the best SubNet; the uniform bit-widths of the SuperNet (its ``metrics.json``, full test set) are compared
too. Each comparison is the paired difference over seeds with its 95 % t-interval
(:func:`labkit.statistics.paired_difference`), real only when the interval excludes zero.

Run folders: ``<root>/<rule>-s<seed>/`` (committed under ``docs/results/hasb-seeds/``).
"""
from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

from labkit.errors import LabkitError
from labkit.hasb.figures import COMMITTED_RESULTS, read_search_csv
from labkit.hasb.reviewers import _allocation
from labkit.statistics import paired_difference

#: The committed seeded SuperNet runs.
SEED_RESULTS = COMMITTED_RESULTS / "hasb-seeds"
#: budget key → (search file, how the budget reads in a sentence)
BUDGETS = {"equal_avg_bits": ("search.csv", "3.00 average bits"),
           "equal_bitops": ("search-bitops.csv", "the BitOPs of uniform 3-bit")}
#: summary key → label
SUMMARIES = {"optimum": "ILP optimum", "mean": "mean over the SubNets", "best": "best SubNet"}


def seed_runs(rule: str, root=SEED_RESULTS) -> dict[int, Path]:
    """``{seed: run folder}`` of one sampling rule's finished SuperNets under ``root`` (``<rule>-s<seed>``)."""
    root = Path(root)
    pattern = re.compile(rf"{re.escape(rule)}-s(\d+)")
    runs = {int(m.group(1)): p for p in sorted(root.glob(f"{rule}-s*"))
            if (m := pattern.fullmatch(p.name)) and (p / "metrics.json").is_file()}  # finished runs only
    if not runs:
        raise LabkitError(f"no finished {rule}-s<seed> run folders under {root}; train them with labkit train --recipe "
                          f"cifar10-resnet20-{rule} seed=<k> and search each with labkit search.")
    return runs


def _allocation_key(record) -> tuple:
    return tuple(sorted(_allocation(record).items()))


def subnet_summaries(records) -> dict[str, float]:
    """The ILP optimum's accuracy, the mean over the distinct SubNets and the best one (points), and the count."""
    by_allocation = {_allocation_key(r): float(r["accuracy"]) for r in records}
    optimum = [float(r["accuracy"]) for r in records if r["kind"] == "optimum"]
    if not optimum:
        raise LabkitError("the search records hold no ILP optimum (kind 'optimum'); re-run labkit search.")
    values = list(by_allocation.values())
    return {"optimum": optimum[0], "mean": statistics.fmean(values), "best": max(values), "subnets": len(values)}


def _search(run: Path, file: str) -> list[dict]:
    path = run / file
    if not path.is_file():
        raise LabkitError(f"{path} is missing; search the SuperNet first (labkit search {run}, see labkit.hasb."
                          "seed_study for the two budgets).")
    return read_search_csv(path)


def seed_comparison(root=SEED_RESULTS, a: str = "hasb", b: str = "uniform") -> list[dict]:
    """Rule ``a`` minus rule ``b``, seed by seed: one row per (budget, summary) and per uniform bit-width.

    Row: ``budget`` (a :data:`BUDGETS` key, or ``"uniform_bits"``), ``summary`` (a :data:`SUMMARIES` key, or the
    bit-width), ``a`` and ``b`` (``{seed: accuracy}``), ``subnets`` (``{seed: how many SubNets}``, searches only)
    and ``difference`` (:class:`labkit.statistics.PairedDifference` of a − b). Raises when a seed's two searches
    did not evaluate the same allocations (they were searched with different traces or budgets).
    """
    runs_a, runs_b = seed_runs(a, root), seed_runs(b, root)
    seeds = sorted(set(runs_a) & set(runs_b))
    if not seeds:
        raise LabkitError(f"no seed has both a {a} and a {b} SuperNet under {root}: {sorted(runs_a)} vs {sorted(runs_b)}.")
    rows = []
    for budget, (file, _) in BUDGETS.items():
        values = {key: ({}, {}, {}) for key in SUMMARIES}
        for seed in seeds:
            records_a, records_b = _search(runs_a[seed], file), _search(runs_b[seed], file)
            if {_allocation_key(r) for r in records_a} != {_allocation_key(r) for r in records_b}:
                raise LabkitError(f"seed {seed}: {runs_a[seed].name}/{file} and {runs_b[seed].name}/{file} evaluated "
                                  "different allocations; search both with the same traces and budget.")
            summary_a, summary_b = subnet_summaries(records_a), subnet_summaries(records_b)
            for key in SUMMARIES:
                values[key][0][seed], values[key][1][seed] = summary_a[key], summary_b[key]
                values[key][2][seed] = summary_a["subnets"]
        for key, (value_a, value_b, count) in values.items():
            rows.append({"budget": budget, "summary": key, "a": value_a, "b": value_b, "subnets": count,
                         "difference": paired_difference(value_a, value_b)})
    accuracy = {rule: {seed: json.loads((runs[seed] / "metrics.json").read_text())["accuracy"] for seed in seeds}
                for rule, runs in ((a, runs_a), (b, runs_b))}
    for bits in sorted(accuracy[a][seeds[0]], key=int, reverse=True):
        value_a = {seed: float(accuracy[a][seed][bits]) for seed in seeds}
        value_b = {seed: float(accuracy[b][seed][bits]) for seed in seeds}
        rows.append({"budget": "uniform_bits", "summary": int(bits), "a": value_a, "b": value_b, "subnets": {},
                     "difference": paired_difference(value_a, value_b)})
    return rows


def budget_record(root=SEED_RESULTS, rule: str = "hasb") -> dict:
    """How the seeded SuperNets were made, from the first seed's run files: the budget, the learning
    rate and the scales' rule (``supernet_alrs``), hardware, wall time per SuperNet (mean over the seeds), the seeds."""
    runs = seed_runs(rule, root)
    first = runs[min(runs)]
    metrics = json.loads((first / "metrics.json").read_text())
    sessions = [json.loads((run / "run.json").read_text())["sessions"] for run in runs.values()]
    wall = [sum(s["wall_time_s"] for s in session) for session in sessions]
    config = json.loads((first / "config.json").read_text())["config"]
    return {"budget": metrics["budget"], "hardware": metrics["hardware"], "seeds": sorted(runs),
            "lr": config["lr"], "supernet_alrs": config.get("supernet_alrs", "one_lr"),
            "wall_time_s": statistics.fmean(wall),
            "source": sorted({s["source"] for session in sessions for s in session})}


def seed_search(rule: str, seed: int, budget: str = "equal_avg_bits", root=SEED_RESULTS) -> list[dict]:
    """The evaluated SubNets of one seeded SuperNet at one :data:`BUDGETS` budget (its search file)."""
    runs = seed_runs(rule, root)
    if seed not in runs:
        raise LabkitError(f"no {rule} SuperNet of seed {seed} under {root}; seeds there: {sorted(runs)}.")
    if budget not in BUDGETS:
        raise LabkitError(f"budget={budget!r} is not one of {sorted(BUDGETS)}.")
    return _search(runs[seed], BUDGETS[budget][0])


def epoch_accuracies(run, bits: int) -> list[float]:
    """Test accuracy at uniform ``bits`` after each epoch of a SuperNet run (its ``log.csv``)."""
    import csv

    with (Path(run) / "log.csv").open(newline="") as handle:
        return [float(row[f"test_acc_{bits}"]) for row in csv.DictReader(handle) if row.get(f"test_acc_{bits}")]
