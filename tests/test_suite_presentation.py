"""How the suite is shown (issue 12 item 2, issue 13 items 5-6): per-seed accuracies, paired comparisons with
95 % intervals and verdicts, the dot-plot figure, the tables. Fake run folders in tmp_path; the expected
intervals come from scipy.stats.ttest_rel on the same numbers."""
import json
import statistics
from pathlib import Path

import pytest
from scipy import stats

from labkit.reproduction import (
    FIGURE_BITS, GROUP_COLORS, accuracy_by_seed, accuracy_figure, budget_sentence, collect, comparison_sentence,
    comparisons_table, drop_goal_table, markdown_table, paired_comparisons, short_label, suite_results,
)

STAMP = {"setup": 9}  # newer than every row's setup: never stale
OLD = {"setup": 1}   # older than the rows whose set-up changed (floor, A.1, ...): stale


def write_run(root: Path, folder: str, accuracy: dict, stamp=STAMP, wall=60.0):
    path = root / folder
    path.mkdir(parents=True)
    budget = {"epochs": 1, "train_images": 10000, "batch_size": 128, "steps": 78, "eval_images": {"test": 10000}}
    (path / "metrics.json").write_text(json.dumps({"accuracy": {str(b): a for b, a in accuracy.items()},
                                                   "budget": budget, "hardware": "CPU: test, 2 cores"}))
    (path / "run.json").write_text(json.dumps({"sessions": [{"wall_time_s": wall}]}))
    (path / "suite.json").write_text(json.dumps(stamp))


def seeded(root, row, per_seed, stamp=STAMP):
    for seed, accuracy in enumerate(per_seed):
        write_run(root, row if seed == 0 else f"{row}-seed{seed}", accuracy, stamp)


A2 = [{8: 83.5, 6: 83.2, 4: 81.5, 2: 68.8}, {8: 83.1, 6: 83.0, 4: 81.2, 2: 69.9}, {8: 83.7, 6: 83.4, 4: 81.9, 2: 69.1}]
NOALRS = [{8: 83.4, 6: 83.3, 4: 81.0, 2: 64.6}, {8: 83.3, 6: 82.9, 4: 81.1, 2: 65.2},
          {8: 83.5, 6: 83.2, 4: 81.3, 2: 64.1}]


@pytest.fixture
def root(tmp_path):
    root = tmp_path / "suite"
    seeded(root, "8642-alrs-a2", A2)
    seeded(root, "8642-noalrs-a2", NOALRS)
    seeded(root, "432-alrs-a2", [{4: 82.0, 3: 78.8, 2: 70.1}])
    seeded(root, "8642-floor", [{8: 82.6, 6: 82.5, 4: 77.1, 2: 17.7}], stamp=OLD)  # stale
    for bits in (8, 2):
        seeded(root, f"lsq-{bits}", [{bits: 84.0 + s} for s in range(3)])
    return root


def test_accuracy_by_seed_reads_every_seed_and_merges_the_dedicated_models(root):
    by_seed = accuracy_by_seed(root)
    assert by_seed["8642-alrs-a2"] == {0: A2[0], 1: A2[1], 2: A2[2]}
    assert by_seed["lsq-dedicated"] == {0: {8: 84.0, 2: 84.0}, 1: {8: 85.0, 2: 85.0}, 2: {8: 86.0, 2: 86.0}}
    # collect's mean is the mean of exactly these
    record = next(r for r in collect(root) if r["name"] == "8642-alrs-a2")
    assert record["accuracy"][2] == pytest.approx(statistics.fmean(a[2] for a in A2), abs=1e-4)


def test_paired_comparisons_are_the_paired_t_interval_and_never_use_stale_rows(root):
    comparisons = {c["label"]: c for c in paired_comparisons(collect(root), accuracy_by_seed(root))}
    alrs = comparisons["ALRS − no ALRS, {8,6,4,2}"]
    assert alrs["status"] == "measured" and sorted(alrs["differences"]) == [2, 4, 6, 8]
    for bits, difference in alrs["differences"].items():
        a, b = [x[bits] for x in A2], [x[bits] for x in NOALRS]
        reference = stats.ttest_rel(a, b).confidence_interval(0.95)
        assert (difference.low, difference.high) == (pytest.approx(reference.low), pytest.approx(reference.high))
        assert difference.n == 3
    assert alrs["differences"][2].verdict() == "real"            # +4.6 ± a little: the interval excludes 0
    assert alrs["differences"][8].verdict() == "not resolved at this budget"
    floor = comparisons["Double Rounding − floor truncation"]
    assert floor["status"] == "stale" and floor["differences"] == {} and floor["stale"] == ["8642-floor"]
    assert comparisons["Alg. A.2 − A.1 (both + ALRS)"]["status"] == "not measured"
    lsq = comparisons["Double Rounding − dedicated LSQ models"]
    assert sorted(lsq["differences"]) == [2, 8]
    assert lsq["differences"][8].mean == pytest.approx(statistics.fmean(a[8] - (84 + s) for s, a in enumerate(A2)))


def test_the_comparisons_table_and_sentences_cite_an_interval_or_say_not_resolved(root):
    comparisons = paired_comparisons(collect(root), accuracy_by_seed(root))
    table = comparisons_table(comparisons, (8, 6, 4, 2))
    lines = table.splitlines()
    assert lines[0].startswith("| comparison (A − B) | 8-bit | 6-bit | 4-bit | 2-bit | seeds |")
    assert len(lines) == 2 + sum(c["bit_set"] == (8, 6, 4, 2) for c in comparisons) == 2 + 12
    assert all(len(line.split("|")) == len(lines[0].split("|")) for line in lines)
    alrs = next(line for line in lines if line.startswith("| ALRS − no ALRS, {8,6,4,2}"))
    two_bit = alrs.split("|")[5]
    assert "**real**" in two_bit and "[+" in two_bit
    assert "not resolved" in alrs.split("|")[2] and alrs.rstrip(" |").endswith("3")
    small = comparisons_table(comparisons, (4, 3, 2)).splitlines()
    assert len(small) == 3  # 432-noalrs-a2 has not run: the {4,3,2} comparison is not measured, no numbers
    assert small[2].startswith("| ALRS − no ALRS, {4,3,2} | *not measured yet*") and "[" not in small[2]
    floor = next(line for line in lines if "floor" in line)
    assert "stale" in floor and "17.7" not in floor and "[" not in floor
    by_label = {c["label"]: c for c in comparisons}
    sentence = comparison_sentence(by_label["ALRS − no ALRS, {8,6,4,2}"])
    d = by_label["ALRS − no ALRS, {8,6,4,2}"]["differences"]
    assert "over 3 seeds (95 % intervals)" in sentence
    assert f"2-bit {d[2].mean:+.2f} [{d[2].low:+.2f}, {d[2].high:+.2f}]" in sentence
    assert sentence.endswith("real at 2 bits; not resolved at this budget at 8, 6, 4 bits")
    one_seed = paired_comparisons(collect(root), accuracy_by_seed(root),
                                  [("one seed", "432-alrs-a2", "432-alrs-a2")])[0]
    assert comparison_sentence(one_seed) == ("one seed: 4-bit +0.00, 3-bit +0.00, 2-bit +0.00 from one seed, so "
                                             "not resolved at this budget")
    assert "not compared (stale" in comparison_sentence(by_label["Double Rounding − floor truncation"])


def test_the_figure_is_a_dot_plot_faceted_by_bit_set_with_seed_error_bars(root):
    records = collect(root)
    figure = accuracy_figure(records)
    titles = [a.text for a in figure.layout.annotations if a.text.endswith("-bit")]
    assert titles == ["8-bit", "6-bit", "4-bit", "3-bit", "2-bit"]  # descending, every facet the same order
    main = next(r for r in records if r["name"] == "8642-alrs-a2")
    dots = {}
    for trace in figure.data:
        assert trace.type == "scatter" and trace.mode == "markers"
        for x, y, sd in zip(trace.x, trace.y, trace.error_x.array):
            dots.setdefault(y, []).append((x, sd, trace.xaxis, trace.marker.color, trace.legendgroup))
    # one dot per bit of every fair record, the bar its sd over seeds
    assert sorted(d[0] for d in dots[short_label(main)]) == sorted(main["accuracy"].values())
    sds = {round(x, 4): sd for x, sd, *_ in dots[short_label(main)]}
    assert sds[round(main["accuracy"][2], 4)] == pytest.approx(statistics.stdev(a[2] for a in A2), abs=1e-4)
    assert all(sd == 0.0 for _, sd, *_ in dots["{4,3,2} + ALRS, A.2"])  # one seed: no bar
    # the {4,3,2} row sits in the second facet row, the {8,6,4,2} ones in the first
    first_row_axes = {d[2] for d in dots[short_label(main)]}
    assert not first_row_axes & {d[2] for d in dots["{4,3,2} + ALRS, A.2"]}
    # the stale floor row is not drawn, and the figure says so
    assert "floor truncation" not in dots
    assert any("Not shown (stale" in a.text and "floor truncation" in a.text for a in figure.layout.annotations)
    # one colour per kind of configuration, one legend entry per kind
    legend = [t.name for t in figure.data if t.showlegend is not False]
    assert len(legend) == len(set(legend)) == len({r["group"] for r in records if not r["stale"]})
    assert {d[3] for d in dots[short_label(main)]} == {GROUP_COLORS["table4"]}


def test_tables_show_mean_sd_seeds_and_the_goal(root):
    records = collect(root)
    table = markdown_table(records)
    main = next(line for line in table.splitlines() if "Double Rounding + ALRS, Alg. A.2" in line)
    assert "(3 seeds)" in main and f"{statistics.fmean(a[2] for a in A2):.2f} ± " in main
    assert "(1 seed)" in next(line for line in table.splitlines() if "{4,3,2} Double Rounding" in line)
    goal = drop_goal_table(next(r for r in records if r["name"] == "8642-alrs-a2"))
    assert goal.splitlines()[0].startswith("| bits |") and len(goal.splitlines()) == 2 + 4
    sentence = budget_sentence(records)
    assert "10,000 training images" in sentence and "78 steps" in sentence and "CPU: test, 2 cores" in sentence
    assert "1–3 seeds per row" in sentence and "1 epoch over" in sentence


def test_suite_results_reads_the_given_root_at_laptop(root, monkeypatch):
    import labkit.reproduction as reproduction

    monkeypatch.setattr(reproduction, "RESULTS_DIR", root)
    results = suite_results({"profile": "laptop", "train_rows": ()})
    assert results["root"] == root and [r["name"] for r in results["records"]] == [r["name"] for r in collect(root)]
    assert any(c["status"] == "measured" for c in results["comparisons"])
