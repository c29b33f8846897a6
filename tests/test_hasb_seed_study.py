"""HASB vs uniform sampling over seeds (labkit.hasb.seed_study): hand-made run folders, hand-computed differences,
and the committed runs' own records."""
import json
import math

import pytest
from scipy import stats

from labkit.errors import LabkitError
from labkit.hasb.figures import seed_comparison_figure
from labkit.hasb.search import write_csv
from labkit.hasb.seed_study import SEED_RESULTS, seed_comparison, seed_runs, subnet_summaries
from labkit.hasb_tables import seed_comparison_sentence, seed_comparison_table

A1, A2, A3 = {"x": 8, "y": 2}, {"x": 6, "y": 4}, {"x": 2, "y": 8}


def make_run(root, name, search, search_bitops, accuracy):
    run = root / name
    run.mkdir(parents=True)
    write_csv([{"kind": kind, "avg_bits": 5.0, "allocation": allocation, "accuracy": value}
               for kind, allocation, value in search], run / "search.csv")
    write_csv([{"kind": kind, "avg_bits": 4.0, "allocation": allocation, "accuracy": value}
               for kind, allocation, value in search_bitops], run / "search-bitops.csv")
    (run / "metrics.json").write_text(json.dumps({"accuracy": accuracy, "budget": {"epochs": 1},
                                                  "hardware": "test"}))
    (run / "run.json").write_text(json.dumps({"sessions": [{"wall_time_s": 60.0, "source": "abc", "argv": ["x"]}]}))
    (run / "config.json").write_text(json.dumps({"config": {"lr": 5e-5, "supernet_alrs": "sampled_bit"}}))
    return run


@pytest.fixture
def runs(tmp_path):
    # HASB ahead at the optimum by 2, 3, 4 points over seeds 0-2; the uniform 2-bit accuracies are equal
    for seed in range(3):
        make_run(tmp_path, f"hasb-s{seed}", [("optimum", A1, 70 + seed + 2), ("neighbour", A2, 60.0),
                                             ("neighbour", A1, 70 + seed + 2)],
                 [("optimum", A3, 50.0 + seed)], {"8": 80.0 + seed, "2": 40.0})
        make_run(tmp_path, f"uniform-s{seed}", [("optimum", A1, 70.0), ("neighbour", A2, 62.0 + seed)],
                 [("optimum", A3, 50.0)], {"8": 80.0, "2": 40.0})
    return tmp_path


def test_summaries_count_each_allocation_once():
    records = [{"kind": "optimum", "allocation": A1, "accuracy": 70.0}, {"kind": "neighbour", "allocation": A2,
                                                                         "accuracy": 60.0},
               {"kind": "neighbour", "allocation": A1, "accuracy": 70.0}]
    assert subnet_summaries(records) == {"optimum": 70.0, "mean": 65.0, "best": 70.0, "subnets": 2}


def test_paired_differences_over_seeds_are_the_hand_computed_t_intervals(runs):
    rows = {(r["budget"], r["summary"]): r for r in seed_comparison(runs)}
    optimum = rows["equal_avg_bits", "optimum"]["difference"]
    # differences 2, 3, 4: mean 3, sd 1, half-width t(0.975, 2) / sqrt(3) = 2.48
    half = stats.t.ppf(0.975, 2) / math.sqrt(3)
    assert optimum.mean == pytest.approx(3.0) and optimum.sd == pytest.approx(1.0)
    assert (optimum.low, optimum.high) == pytest.approx((3 - half, 3 + half))
    assert optimum.verdict() == "real"
    mean = rows["equal_avg_bits", "mean"]["difference"]  # HASB (72+s+60)/2 vs uniform (70+62+s)/2: 0 each seed
    assert mean.mean == pytest.approx(0.0) and mean.sd == pytest.approx(0.0) and mean.verdict() != "real"
    assert rows["equal_avg_bits", "mean"]["subnets"] == {0: 2, 1: 2, 2: 2}
    bitops = rows["equal_bitops", "optimum"]["difference"]  # 0, 1, 2
    assert bitops.mean == pytest.approx(1.0) and bitops.low < 0 < bitops.high
    assert rows["uniform_bits", 8]["difference"].mean == pytest.approx(1.0)
    assert [r["summary"] for r in seed_comparison(runs) if r["budget"] == "uniform_bits"] == [8, 2]


def test_table_and_sentence_say_which_differences_are_real(runs):
    rows = seed_comparison(runs)
    table = seed_comparison_table(rows)
    assert "| 3.00 average bits (2 SubNets) | ILP optimum | 73.0 ± 1.0 | 70.0 ± 0.0 |" in table
    assert "| uniform 2-bit | 40.0 ± 0.0 | 40.0 ± 0.0 | +0.0 [+0.0, +0.0] | not resolved at this budget |" in table
    sentence = seed_comparison_sentence(rows)
    assert sentence.startswith("Over 3 paired training seeds, HASB − uniform sampling is real for ILP optimum at "
                               "3.00 average bits (+3.0 [")
    assert "not resolved at this budget for mean over the SubNets at 3.00 average bits" in sentence
    figure = seed_comparison_figure(rows)
    means = figure.data[0]
    assert len(means.x) == len(rows) and means.y[0] == pytest.approx(73.0)
    assert list(means.error_y.array)[0] == pytest.approx(1.0)
    assert len(figure.data[1].y) == 3 * len(rows)  # every seed drawn
    difference = figure.data[-1]  # the paired panel: mean 3 with the t-interval [3 − 2.48, 3 + 2.48]
    half = stats.t.ppf(0.975, 2) / math.sqrt(3)
    assert difference.y[0] == pytest.approx(3.0) and difference.error_y.array[0] == pytest.approx(half)
    assert difference.marker.symbol[0] == "circle" and difference.marker.symbol[1] == "circle-open"  # real, not


def test_unfinished_runs_are_not_seeds_and_one_seed_has_no_sd(runs, tmp_path):
    (runs / "hasb-s3").mkdir()  # started, not finished: not a seed yet
    (runs / "hasb-s3" / "config.json").write_text("{}")
    assert sorted(seed_runs("hasb", runs)) == [0, 1, 2]
    one = tmp_path / "one"
    for name in ("hasb-s0", "uniform-s0"):
        (one / name).mkdir(parents=True)
        for file in (runs / name).iterdir():
            (one / name / file.name).write_bytes(file.read_bytes())
    table = seed_comparison_table(seed_comparison(one))
    assert "| 72.0 (one seed, no sd) | 70.0 (one seed, no sd) | +2.0 (1 seed, no interval) |" in table


def test_different_allocations_or_missing_searches_are_refused(tmp_path, runs):
    (runs / "uniform-s1" / "search-bitops.csv").unlink()
    with pytest.raises(LabkitError, match="search-bitops.csv is missing"):
        seed_comparison(runs)
    write_csv([{"kind": "optimum", "avg_bits": 4.0, "allocation": A2, "accuracy": 1.0}],
              runs / "uniform-s1" / "search-bitops.csv")
    with pytest.raises(LabkitError, match="seed 1: .*evaluated different allocations"):
        seed_comparison(runs)
    with pytest.raises(LabkitError, match="no finished hasb-s<seed> run folders"):
        seed_runs("hasb", tmp_path / "nowhere")



def test_committed_seeded_runs_pair_every_seed():
    hasb, uniform = seed_runs("hasb", SEED_RESULTS), seed_runs("uniform", SEED_RESULTS)
    assert sorted(hasb) == sorted(uniform) and len(hasb) >= 3
    for seed in hasb:  # the pair shares the Hessian traces the search ranks layers by
        traces = [json.loads((runs[seed] / "supernet.json").read_text())["average_traces"] for runs in (hasb, uniform)]
        assert traces[0] == traces[1]
        rules = [json.loads((runs[seed] / "config.json").read_text())["config"] for runs in (hasb, uniform)]
        assert (rules[0]["supernet"], rules[1]["supernet"]) == ("hasb", "uniform")
        assert rules[0]["seed"] == rules[1]["seed"] == seed
    rows = seed_comparison()
    assert {r["budget"] for r in rows} == {"equal_avg_bits", "equal_bitops", "uniform_bits"}


def test_sentences_carry_the_run_files_numbers(runs):
    from labkit.equal_cost import cost_ratio_sentence
    from labkit.hasb.seed_study import budget_record, epoch_accuracies, seed_search
    from labkit.hasb_tables import seed_budget_sentence, supernet_record_sentence

    (runs / "hasb-s0" / "log.csv").write_text("epoch,test_acc_8,test_acc_2\n1,80.0,24.48\n2,81.0,\n3,82.0,62.21\n")
    assert epoch_accuracies(runs / "hasb-s0", 2) == [24.48, 62.21]
    record = {"budget": {"epochs": 3, "train_images": 10000, "batch_size": 128, "steps": 234, "passes_per_step": 4,
                         "profile": "laptop", "eval_images": {"test": 10000}},
              "command": "labkit train", "wall_time_s": 600.0, "hardware": "CPU: X", "accuracy": {"2": 62.21}}
    sentence = supernet_record_sentence(record, {2: [24.48, 62.21]})
    assert sentence.endswith("2-bit 62.2 %. Its 2-bit accuracy after each epoch: 24.5 → 62.2 %.")
    assert "after each epoch" not in supernet_record_sentence(record)
    made = budget_record(runs)
    assert made["seeds"] == [0, 1, 2] and made["wall_time_s"] == 60.0 and made["source"] == ["abc"]
    made["budget"] = record["budget"]
    assert "seeds 0, 1, 2; code abc." in seed_budget_sentence(made)
    assert "Adam at 5e-05 with the scales' learning rates `supernet_alrs=sampled_bit`" in seed_budget_sentence(made)
    assert [r["accuracy"] for r in seed_search("uniform", 2, root=runs)] == [70.0, 64.0]
    with pytest.raises(LabkitError, match="seeds there: \\[0, 1, 2\\]"):
        seed_search("hasb", 7, root=runs)
    comparison = {"equal_avg_bits": {"avg_bits": 3.0, "bitops_ratio": 1.2816},
                  "equal_bitops": {"avg_bits": 2.7778, "bitops_ratio": 0.9991}}
    assert cost_ratio_sentence(comparison) == (
        "The ILP SubNet at 3.00 average bits costs 1.28× the BitOPs of uniform 3-bit; under the BitOPs of uniform "
        "3-bit the ILP affords 2.78 average bits (1.00× uniform's BitOPs).")


def test_setting_comparison_pairs_the_same_seeds_of_two_settings(runs, tmp_path):
    from labkit.hasb_tables import setting_comparison_sentence

    ablation = tmp_path / "ablation"
    for run in runs.iterdir():  # the same runs with every uniform 2-bit accuracy 10 points lower
        (ablation / run.name).mkdir(parents=True)
        for file in run.iterdir():
            (ablation / run.name / file.name).write_bytes(file.read_bytes())
        metrics = json.loads((run / "metrics.json").read_text())
        metrics["accuracy"]["2"] -= 10.0 + int(run.name[-1])  # differences 10, 11, 12 over seeds 0-2
        (ablation / run.name / "metrics.json").write_text(json.dumps(metrics))
    sentence = setting_comparison_sentence(runs, ablation)
    assert sentence.startswith(f"The recipes' setting (`{runs.name}`) minus the one-λ ablation (`ablation`)")
    half = stats.t.ppf(0.975, 2) / math.sqrt(3)
    assert f"uniform 2-bit, HASB: +11.0 [{11 - half:+.1f}, {11 + half:+.1f}] (real)" in sentence
    assert "the ILP optimum at 3.00 average bits, HASB: +0.0 [+0.0, +0.0] (not resolved at this budget)" in sentence
