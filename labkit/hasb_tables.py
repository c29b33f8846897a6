"""Markdown tables and sentences of notebook 04 (HASB, METHOD.md §6), from what ``labkit.hasb`` functions return.

Render one with ``IPython.display.Markdown``. Numbers are formatted here; the only thing computed is
:func:`allocation_gap`, the difference of two SuperNets over the SubNets both were evaluated at.
"""
from __future__ import annotations

import statistics
from typing import Mapping

from labkit.rounding_study import markdown_table


def hmt_table(distribution, estimates: Mapping | None = None) -> str:
    """The layers from most to least sensitive: average HMT (|tr H| / parameters), with the standard error of
    the Hutchinson estimate relative to the trace where ``estimates`` (``hessian_trace_estimates``) are given,
    and whether the layer is at or above the threshold (:func:`labkit.hasb.hmt_distribution`)."""
    sensitive = set(distribution.sensitive)
    header = ["rank", "layer", "average HMT"] + (["± standard error (probes)"] if estimates else []) + ["sensitive"]
    rows = []
    for rank, (name, value) in enumerate(distribution.ranked, start=1):
        row = [rank, name, f"{value:.3g}"]
        if estimates:
            estimate = estimates[name]
            relative = estimate.stderr / abs(estimate.trace) if estimate.trace else float("nan")
            row.append("—" if relative != relative else f"{relative:.0%}")
        row.append("yes" if name in sensitive else "")
        rows.append(row)
    return markdown_table(header, rows, align="rlr" + ("r" if estimates else "") + "l")


def threshold_table(traces: Mapping[str, float], rules) -> str:
    """How many layers each threshold rule marks sensitive on the same traces; ``rules``: ``(label, rule, options)``."""
    from labkit.hasb import sensitive_layers

    rows = []
    for label, rule, options in rules:
        chosen = sensitive_layers(dict(traces), rule=rule, **options)
        rows.append([label, len(chosen), ", ".join(chosen)])
    return markdown_table(["threshold", "sensitive layers", "which"], rows, align="lrl")


def sampling_gap_table(candidate_sets) -> str:
    """For each candidate set: a sensitive layer's expected draw vs a uniform one's, and the top bit's probability."""
    from labkit.hasb.reviewers import sampling_gap

    rows = []
    for candidates in candidate_sets:
        gap = sampling_gap(candidates)
        rows.append(["{" + ",".join(str(b) for b in gap["candidates"]) + "}", f"{gap['expected_sensitive']:.2f}",
                     f"{gap['expected_uniform']:.2f}", f"{gap['gap_bits']:.2f}",
                     f"{gap['top_bit_sensitive']:.0%} vs {gap['top_bit_uniform']:.0%}"])
    return markdown_table(["candidates", "E[b] sensitive", "E[b] uniform", "gap (bits)", "top bit drawn"], rows)


def expected_bits_table(probabilities, defaults=(8, 6, 4, 2), sigmas=(0.0, 0.25, 0.5, 1.0)) -> str:
    """The expected average bit-width of a SuperNet pass (:func:`labkit.hasb.expected_average_bits`), per default
    bit-width (rows) and replacement rate σ (columns)."""
    from labkit.hasb import expected_average_bits

    rows = [[f"{default}-bit pass"] + [f"{expected_average_bits(probabilities, default, s):.2f}" for s in sigmas]
            for default in defaults]
    return markdown_table(["default bits"] + [f"σ = {s:g}" for s in sigmas], rows)


def allocation_table(allocations: Mapping[str, Mapping[str, int]], costs=None) -> str:
    """The bits of every layer (rows, in layer order) of each named allocation (columns), then their mean bits and,
    with ``costs`` (:func:`labkit.hasb.layer_costs`), their BitOPs per image (Σ MACs·b², FP32 layers at 32 bits)."""
    from labkit.hasb.cost import total_bitops

    names = list(allocations)
    layers = list(allocations[names[0]])
    rows = [[layer, *(allocations[name][layer] for name in names)] for layer in layers]
    rows.append(["mean bits", *(f"{sum(allocations[n].values()) / len(allocations[n]):.2f}" for n in names)])
    if costs is not None:
        rows.append(["GBitOPs / image", *(f"{total_bitops(costs, allocations[n]) / 1e9:.3f}" for n in names)])
    return markdown_table(["layer", *names], rows)


def predecessor_table(predecessors: Mapping[str, str | None], layers=None) -> str:
    """Which quantized layer produced the tensor each layer reads (:func:`labkit.hasb.layer_predecessors`): the
    key of its Transitional BN pair. ``None`` (the FP32 first layer, or the input) shows as such."""
    chosen = list(layers or predecessors)
    rows = [[name, predecessors[name] or "— (the FP32 first layer)"] for name in chosen]
    return markdown_table(["layer", "reads the output of"], rows, align="ll")


def spread_table(spreads: Mapping[str, list[dict]]) -> str:
    """Per SuperNet and average bit-width: how many SubNets, best, worst, mean and spread (rows of
    :func:`labkit.hasb.accuracy_spread`), accuracies in %."""
    rows = []
    for name, spread in spreads.items():
        for row in spread:
            rows.append([name, f"{row['avg_bits']:.2f}", row["subnets"], f"{row['max']:.1f}", f"{row['min']:.1f}",
                         f"{row['mean']:.1f}", f"{row['range']:.1f}"])
    return markdown_table(["SuperNet", "average bits", "SubNets", "best", "worst", "mean", "best − worst"], rows)


def supernet_record_sentence(record: Mapping, curve: Mapping[int, list] | None = None) -> str:
    """How a shipped SuperNet was made, as a sentence: command, budget, hardware, wall time (its provenance); with
    ``curve`` (``{bits: [test accuracy after each epoch]}``, :func:`labkit.hasb.seed_study.epoch_accuracies`)
    also how those accuracies moved during training."""
    budget = record["budget"]
    accuracy = ", ".join(f"{b}-bit {a:.1f} %" for b, a in record["accuracy"].items())
    images = budget.get("eval_images", {})
    evaluated = ", ".join(f"{n:,} {name} images" for name, n in images.items()) if images else "the test set"
    return (f"Made by `{record['command']}`: {budget['epochs']} epochs of {budget['train_images']:,} training images "
            f"in batches of {budget['batch_size']} ({budget['steps']} steps, {budget['passes_per_step']} passes each) "
            f"at the {budget['profile']} profile, {record['wall_time_s'] / 60:.0f} min on {record['hardware']}. "
            f"Uniform bit-widths at the end, on {evaluated}: {accuracy}."
            + "".join(f" Its {bits}-bit accuracy after each epoch: {' → '.join(f'{a:.1f}' for a in values)} %."
                      for bits, values in (curve or {}).items()))


def allocation_gap(records_a, records_b) -> dict:
    """Accuracy of SuperNet A minus SuperNet B at the allocations both were evaluated at (``search.csv`` records of
    :func:`labkit.hasb.sweep` / ``labkit search``, each allocation once): ``allocations`` (how many in common),
    ``mean`` and ``stdev`` of the per-allocation differences (points), ``a_ahead`` (how many A wins)."""
    from labkit.hasb.reviewers import _allocation

    def by_allocation(records):
        return {tuple(sorted(_allocation(r).items())): float(r["accuracy"]) for r in records}

    a, b = by_allocation(records_a), by_allocation(records_b)
    common = [key for key in a if key in b]
    if not common:
        raise ValueError("the two record lists share no allocation; search both with the same scores and targets.")
    differences = [a[key] - b[key] for key in common]
    return {"allocations": len(common), "mean": statistics.fmean(differences),
            "stdev": statistics.stdev(differences) if len(differences) > 1 else 0.0,
            "a_ahead": sum(d > 0 for d in differences)}


def allocation_gap_sentence(gap: dict, a: str, b: str, seeds: int = 1) -> str:
    """The :func:`allocation_gap` as a sentence; with one training seed per SuperNet it cannot be called real
    (issue 12: only an interval over seeds that excludes zero can), so it says so."""
    verdict = ("each SuperNet was trained once, so the seed could explain it as well as the sampling: "
               "**not resolved at this budget**" if seeds < 2 else f"{seeds} seeds per SuperNet")
    return (f"Over the {gap['allocations']} allocations both were evaluated at, {a} minus {b} is "
            f"{gap['mean']:+.1f} points on average (standard deviation {gap['stdev']:.1f} over allocations; {a} ahead "
            f"at {gap['a_ahead']} of {gap['allocations']}): {verdict}.")


def _seed_row_label(row: dict) -> tuple[str, str]:
    from labkit.hasb.seed_study import BUDGETS, SUMMARIES

    if row["budget"] == "uniform_bits":
        return "every layer at one bit-width", f"uniform {row['summary']}-bit"
    subnets = sorted(set(row["subnets"].values()))
    count = f"{subnets[0]}" if len(subnets) == 1 else f"{subnets[0]}–{subnets[-1]}"
    return f"{BUDGETS[row['budget']][1]} ({count} SubNets)", SUMMARIES[row["summary"]]


def _mean_sd(values: Mapping) -> str:
    numbers = list(values.values())
    if len(numbers) < 2:
        return f"{numbers[0]:.1f} (one seed, no sd)"
    return f"{statistics.fmean(numbers):.1f} ± {statistics.stdev(numbers):.1f}"


def seed_comparison_table(rows, a: str = "HASB", b: str = "uniform sampling") -> str:
    """:func:`labkit.hasb.seed_study.seed_comparison` as a table: per budget and summary, each rule's mean ± sd
    over the seeds, the paired difference with its 95 % interval, and the verdict."""
    seeds = len(rows[0]["difference"].seeds)
    table = []
    for row in rows:
        budget, summary = _seed_row_label(row)
        table.append([budget, summary, _mean_sd(row["a"]), _mean_sd(row["b"]),
                      row["difference"].interval_text(1), row["difference"].verdict()])
    return markdown_table(["budget", "compared", f"{a} ({seeds} seeds)", f"{b} ({seeds} seeds)",
                           f"{a} − {b} (points, 95 % interval)", "verdict"], table, align="llrrrl")


def seed_comparison_sentence(rows, a: str = "HASB", b: str = "uniform sampling") -> str:
    """Which of the seeded comparisons are real (interval excludes zero) and which are not resolved."""
    from labkit.statistics import NOT_RESOLVED

    seeds = len(rows[0]["difference"].seeds)

    def name(row):
        budget, summary = _seed_row_label(row)
        return summary if row["budget"] == "uniform_bits" else f"{summary} at {budget.split(' (')[0]}"

    real = [f"{name(r)} ({r['difference'].interval_text(1)})" for r in rows if r["difference"].resolved]
    unresolved = [name(r) for r in rows if not r["difference"].resolved]
    parts = [f"Over {seeds} paired training seeds, {a} − {b}"]
    parts.append(f" is real for {'; '.join(real)}" if real else " is real for none of the comparisons")
    if unresolved:
        parts.append(f"; {NOT_RESOLVED} for {', '.join(unresolved)}")
    return "".join(parts) + (". The intervals cover seed-to-seed spread only; the best SubNet is also picked on the "
                             "images it is scored on.")


SUPERNET_ALRS_WORDS = {"one_lr": "every parameter at one λ, Alg. A.3 as printed",
                       "sampled_bit": "each layer's scales at λ·η_b for the bit it was sampled at, as in the joint stage"}


def seed_budget_sentence(record: Mapping) -> str:
    """How the seeded SuperNets were made (:func:`labkit.hasb.seed_study.budget_record`), as a sentence."""
    budget, rule = record["budget"], record.get("supernet_alrs", "one_lr")
    seeds = ", ".join(str(s) for s in record["seeds"])
    return (f"Each SuperNet: {budget['epochs']} epochs of {budget['train_images']:,} training images in batches of "
            f"{budget['batch_size']} ({budget['steps']} steps, {budget['passes_per_step']} passes each) at the "
            f"{budget['profile']} profile, Adam at {record.get('lr', 5e-4):g} with the scales' learning rates "
            f"`supernet_alrs={rule}` ({SUPERNET_ALRS_WORDS[rule]}), "
            f"from the shipped `cifar10-resnet20` and `cifar10-resnet20-fp32`, about "
            f"{record['wall_time_s'] / 60:.0f} min each on {record['hardware']} (1 torch thread); seeds {seeds}; "
            f"code {', '.join(record['source'])}. Searches: `labkit search RUN --avg-bits 3` and `labkit search RUN "
            "--avg-bits none --bitops-budget uniform:3 --output search-bitops`, every SubNet on the same 1,000 test "
            "images; the uniform bit-widths on all 10,000 (the runs' own evaluation).")


def setting_comparison_sentence(main, ablation) -> str:
    """Two seeded SuperNet settings (run folders ``main`` and ``ablation``, :mod:`labkit.hasb.seed_study`), the same
    seeds of each rule paired: uniform 2-bit (the runs' own 10,000-image evaluation) and the ILP optimum at 3.00
    average bits, each difference with its 95 % interval and verdict."""
    from pathlib import Path

    from labkit.hasb.seed_study import seed_comparison
    from labkit.statistics import paired_difference

    main, ablation = Path(main), Path(ablation)
    rows = {root: {(r["budget"], r["summary"]): r for r in seed_comparison(root)} for root in (main, ablation)}
    parts = []
    for key, what in ((("uniform_bits", 2), "uniform 2-bit"), (("equal_avg_bits", "optimum"),
                                                               "the ILP optimum at 3.00 average bits")):
        for side, rule in (("a", "HASB"), ("b", "uniform sampling")):
            difference = paired_difference(rows[main][key][side], rows[ablation][key][side])
            parts.append(f"{what}, {rule}: {difference.interval_text(1)} ({difference.verdict()})")
    return (f"The recipes' setting (`{main.name}`) minus the one-λ ablation (`{ablation.name}`), the same seeds paired, "
            "points with 95 % intervals: " + "; ".join(parts) + ".")
