"""The reproduction suite's set-ups (issue 10): the equal-optimizer-steps control of Alg. A.1, seeds, and rows
measured with a set-up that was not fair shown as stale instead of as results.

Expected values are worked out here by hand: optimizer steps from the subset size, batch size and bit count,
means and sample standard deviations of a few accuracies, and which committed rows issue 10 names as unfair.
"""
import json
import statistics
from pathlib import Path

import pytest

from labkit.errors import LabkitError
from labkit.reproduction import RESULTS_DIR, ROWS, SUITE_BUDGET, collect, markdown_table, accuracy_figure, row, run_suite
from labkit.train.recipes import recipe_config


def optimizer_steps(config) -> int:
    """Optimizer steps of one run, by hand: batches × (one step per precision for A.2, one per batch for A.1)."""
    batches = (config.train_subset // config.batch_size) * config.epochs
    return batches * (len(config.bits) if config.algorithm == "a2" else 1)


def test_equal_steps_control_has_a2s_optimizer_steps_and_images():
    a2, a1 = row("8642-alrs-a2"), row("8642-alrs-a1")
    control = row("8642-alrs-a1-steps")
    configs = {r.name: recipe_config(r.recipe, "laptop", r.config_overrides("laptop")) for r in (a2, a1, control)}
    assert optimizer_steps(configs["8642-alrs-a2"]) == 78 * 4 == 312
    assert optimizer_steps(configs["8642-alrs-a1"]) == 78
    assert optimizer_steps(configs["8642-alrs-a1-steps"]) == 312
    # Same images, and the same forward/backward image-passes per optimizer step (4 precisions × 32 = 128).
    c = configs["8642-alrs-a1-steps"]
    assert c.train_subset == configs["8642-alrs-a2"].train_subset == SUITE_BUDGET["train_subset"]
    assert c.algorithm == "a1" and len(c.bits) * c.batch_size == configs["8642-alrs-a2"].batch_size
    assert c.epochs == configs["8642-alrs-a2"].epochs


def _write(folder: Path, accuracy: dict, config: dict | None = None, stamp: dict | None = None, wall=60.0):
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({"accuracy": {str(b): a for b, a in accuracy.items()},
                                                     "budget": {"eval_images": {"test": 10000}}, "hardware": "cpu"}))
    (folder / "run.json").write_text(json.dumps({"sessions": [{"wall_time_s": wall}]}))
    if config is not None:
        (folder / "config.json").write_text(json.dumps({"config": config, "profile": "laptop"}))
    if stamp is not None:
        (folder / "suite.json").write_text(json.dumps(stamp))


OLD_CONFIG = {"method": "floor", "alrs": "eq7"}                       # written before issue 10: no alrs_scope
NEW_CONFIG = {"method": "floor", "alrs": "eq7", "alrs_scope": "paper"}


def test_a_row_measured_with_the_old_unfair_setup_is_stale_and_not_shown_as_a_result(tmp_path):
    _write(tmp_path / "8642-alrs-a2", {8: 83.5, 2: 68.8}, OLD_CONFIG | {"method": "double_rounding"})
    _write(tmp_path / "8642-floor", {8: 82.6, 2: 17.7}, OLD_CONFIG)
    records = {r["name"]: r for r in collect(tmp_path)}
    assert records["8642-alrs-a2"]["stale"] == ""                     # its set-up did not change
    assert "half an l-bit step" in records["8642-floor"]["stale"]
    table = markdown_table(list(records.values()))
    floor_line = next(line for line in table.splitlines() if "floor" in line)
    assert "17.70" not in floor_line and "82.60" not in floor_line and "stale" in floor_line
    assert "re-measured with the fair set-up" in floor_line
    shown = {y for trace in accuracy_figure(list(records.values())).data for y in trace.y}
    assert shown == {"Double Rounding + ALRS, A.2"}  # the stale floor row is not in the figure


@pytest.mark.parametrize("config, stamp", [(NEW_CONFIG, None), (OLD_CONFIG, {"setup": 2})])
def test_a_row_re_measured_with_the_fair_setup_is_a_result_again(tmp_path, config, stamp):
    _write(tmp_path / "8642-floor", {8: 83.0, 2: 66.0}, config, stamp)
    (record,) = collect(tmp_path)
    assert record["stale"] == "" and "66.00" in markdown_table([record])


def test_the_committed_rows_issue_10_names_unfair_are_stale_or_re_measured():
    """floor (+51), A.2−A.1 (+18.5), per-bit scales (+9.6), dedicated LSQ (+12.1): none may stand as a result.

    A committed row either was re-measured with its row's current (fair) setup, or is shown as stale."""
    from labkit.reproduction import row, trained_setup

    records = {r["name"]: r for r in collect(RESULTS_DIR)}
    for name in ("8642-floor", "8642-alrs-a1", "8642-per_bit_scale", "lsq-2"):
        folder = RESULTS_DIR / name
        if not folder.is_dir():
            continue
        current = row(name).setup
        fair = trained_setup(folder, current) >= current
        shown = records["lsq-dedicated" if name.startswith("lsq") else name]
        assert bool(shown["stale"]) == (not fair), name
        if fair:
            assert (folder / "suite.json").is_file(), name  # re-measured runs carry their setup stamp
    assert records["8642-alrs-a2"]["stale"] == ""


def test_seeds_are_averaged_with_their_sample_sd(tmp_path):
    stamp = {"setup": 1}
    _write(tmp_path / "8642-alrs-a2", {8: 83.0, 2: 68.0}, stamp=stamp)
    _write(tmp_path / "8642-alrs-a2-seed1", {8: 84.0, 2: 70.0}, stamp=stamp)
    _write(tmp_path / "8642-alrs-a2-seed2", {8: 83.5, 2: 69.0}, stamp=stamp)
    _write(tmp_path / "8642-alrs-a2-seed1.setup0", {8: 1.0, 2: 1.0}, stamp=stamp)  # a moved-aside folder
    (record,) = collect(tmp_path)
    assert record["seeds"] == 3
    assert record["accuracy"] == pytest.approx({8: 83.5, 2: 69.0})
    assert record["accuracy_sd"] == pytest.approx({8: statistics.stdev([83.0, 84.0, 83.5]), 2: 1.0}, abs=1e-4)
    assert record["wall_time_s"] == 180.0
    assert "83.50 ± 0.50" in markdown_table([record]) and "(3 seeds)" in markdown_table([record])


def test_run_suite_trains_every_seed_stamps_it_and_retrains_an_older_setup(tmp_path, monkeypatch):
    import labkit.train.run as run

    calls = []

    def fake_train(recipe, folder, overrides, resume=False, **kwargs):
        calls.append((Path(folder).name, overrides))
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "metrics.json").write_text(json.dumps({"accuracy": {"8": 1.0}}))
        return {"accuracy": {"8": 1.0}}

    monkeypatch.setattr(run, "train", fake_train)
    _write(tmp_path / "8642-alrs-a1", {8: 83.4, 2: 50.3}, OLD_CONFIG | {"method": "double_rounding"})
    results = run_suite(tmp_path, ["8642-alrs-a1", "8642-alrs-a1-steps"], profile="laptop", seeds=2,
                        show_progress=False)
    assert set(results) == {"8642-alrs-a1", "8642-alrs-a1-seed1", "8642-alrs-a1-steps", "8642-alrs-a1-steps-seed1"}
    assert (tmp_path / "8642-alrs-a1.setup1" / "metrics.json").is_file(), "the old run is kept, moved aside"
    overrides = dict(calls)
    assert overrides["8642-alrs-a1-steps"] == {**SUITE_BUDGET, "algorithm": "a1", "batch_size": 32}
    assert overrides["8642-alrs-a1-steps-seed1"] == {**SUITE_BUDGET, "algorithm": "a1", "batch_size": 32, "seed": 1}
    for name in results:
        stamp = json.loads((tmp_path / name / "suite.json").read_text())
        assert stamp["setup"] == row(stamp["row"]).setup and stamp["seed"] == (1 if name.endswith("seed1") else 0)
    calls.clear()
    run_suite(tmp_path, ["8642-alrs-a1"], profile="laptop", seeds=2, show_progress=False)
    assert calls == [], "finished runs of the current set-up are skipped"
    with pytest.raises(LabkitError, match="seeds"):
        run_suite(tmp_path, seeds=0)


def test_cli_reproduce_passes_seeds(tmp_path, monkeypatch, capsys):
    import labkit.reproduction as reproduction
    from labkit.cli import main

    seen = {}
    monkeypatch.setattr(reproduction, "run_suite", lambda out, rows, **kw: seen.update(rows=rows, **kw) or {})
    assert main(["reproduce", "--out", str(tmp_path), "--rows", "8642-alrs-a1-steps", "--seeds", "3",
                 "--profile", "smoke", "--quiet"]) == 0
    assert seen["seeds"] == 3 and seen["rows"] == ["8642-alrs-a1-steps"]


def test_every_changed_row_says_why():
    assert all(r.changed for r in ROWS if r.setup > 1)
    assert {r.name for r in ROWS if r.setup > 1} >= {"8642-floor", "8642-alrs-a1", "8642-per_bit_scale", "lsq-2"}


def test_bf16_row_is_the_main_row_with_only_the_arithmetic_changed():
    """Issue 11 item 2: the bf16 + channels_last row differs from 8642-alrs-a2 in those two settings alone, and is
    compared with it seed by seed."""
    from labkit.reproduction import COMPARISONS, OPEN_COMPARISONS

    main, fast = row("8642-alrs-a2"), row("8642-alrs-a2-bf16")
    assert fast.recipe == main.recipe
    assert fast.config_overrides() == {**main.config_overrides(), "amp_bf16": True, "channels_last": True}
    assert ("bf16 autocast + channels_last − fp32 arithmetic", "8642-alrs-a2-bf16", "8642-alrs-a2") in OPEN_COMPARISONS
    assert any(b == "lsq-dedicated" and a == "8642-any_precision-peer" for _, a, b in COMPARISONS)


def test_dedicated_dorefa_rows_train_by_the_peer_rule_one_bit_each():
    """Review R2: the peer's own claim is about dedicated models by the same rule for the same epochs."""
    peer = row("8642-any_precision-peer").config_overrides()
    shared = {k: v for k, v in peer.items() if k not in ("kd", "algorithm")}
    for b in (8, 6, 4, 2):
        entry = row(f"dorefa-{b}")
        assert entry.merge_as == "dorefa-dedicated" and entry.group == "dedicated"
        assert entry.config_overrides() == {**shared, "bits": (b,)}
    assert all(row(f"lsq-{b}").merge_as == "lsq-dedicated" for b in (8, 6, 4, 2))
