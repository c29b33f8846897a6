"""The long-profile shipped models' report (issue 12): drops, goals, curves and the README's generated blocks."""
import json
import math
from pathlib import Path

import pytest

from labkit.shipped_models import (DROP_GOALS, drop_standard_error, LONG_STAGES, eval_curve, long_profile_table, stage_records,
                                   standard_error, training_curves_figure)

ROOT = Path(__file__).resolve().parents[1]


def _run(folder: Path, accuracy: dict, log: list[str], epochs=2, images=50000, steps=782):
    folder.mkdir(parents=True)
    budget = {"epochs": epochs, "train_images": images, "steps": steps, "batch_size": 128}
    (folder / "metrics.json").write_text(json.dumps({"accuracy": accuracy, "budget": budget, "hardware": "CPU: test"}))
    (folder / "run.json").write_text(json.dumps({"sessions": [{"wall_time_s": 60.0, "source": "abc123"},
                                                               {"wall_time_s": 30.0, "source": "abc123"}]}))
    (folder / "log.csv").write_text("\n".join(log) + "\n")


@pytest.fixture()
def results(tmp_path):
    _run(tmp_path / "cifar10-resnet20-fp32-long", {"32": 90.0},
         ["epoch,lr_end,train_loss_32,test_acc_32", "1,0.1,1.0,", "2,0.0,0.5,90.0"])
    _run(tmp_path / "cifar10-resnet20-long", {"8": 89.8, "6": 89.75, "4": 89.0, "2": 86.5},
         ["epoch,lr_end,test_acc_8,test_acc_6,test_acc_4,test_acc_2", "1,1e-4,89.0,89.0,88.0,80.0",
          "2,0.0,89.8,89.75,89.0,86.5"])
    return tmp_path


def test_drops_are_against_our_fp32_and_goals_are_judged_per_bit(results):
    records = stage_records(results)
    assert [r["shipped"] for r in records] == ["cifar10-resnet20-fp32", "cifar10-resnet20"]  # 432 not finished
    joint = records[1]
    assert joint["drops"] == {8: 0.2, 6: 0.25, 4: 1.0, 2: 3.5}
    assert joint["wall_time_s"] == 90.0 and joint["source"] == ["abc123"]
    table = long_profile_table(records)
    lines = table.splitlines()
    assert "≥ 89 % (met)" in lines[2]
    assert "≥ 89 % (missed by 1.50)" in long_profile_table([dict(records[0], accuracy={32: 87.5})])
    assert "| 8-bit | 89.80 ± 0.30 | +0.20 ± 0.43 | ≤ 0.3 (met, not resolved) | +0.05 |" in lines[3]
    assert "≤ 0.6 (missed by 0.40, not resolved)" in lines[5] and "≤ 3.0 (missed by 0.50, not resolved)" in lines[6]
    assert len(lines) == 2 + 1 + 4


def test_standard_error_is_the_binomial_one():
    assert standard_error(90.0) == pytest.approx(100 * math.sqrt(0.9 * 0.1 / 10000))
    assert standard_error(50.0, images=100) == pytest.approx(5.0)
    assert drop_standard_error(50.0, 50.0, images=100) == pytest.approx(math.sqrt(50.0))


def test_a_drop_far_from_its_goal_is_resolved(tmp_path):
    _run(tmp_path / "cifar10-resnet20-fp32-long", {"32": 90.0}, ["epoch,test_acc_32", "1,90.0"])
    _run(tmp_path / "cifar10-resnet20-long", {"8": 89.9, "6": 89.9, "4": 89.9, "2": 80.0}, ["epoch,test_acc_8", "1,89.9"])
    lines = long_profile_table(stage_records(tmp_path)).splitlines()
    assert "≤ 3.0 (missed by 7.00) |" in lines[-1]


def test_curves_skip_epochs_without_evaluation_and_draw_one_line_per_bit(results):
    assert eval_curve(results / "cifar10-resnet20-fp32-long") == {32: [(2, 90.0)]}
    figure = training_curves_figure(stage_records(results), results)
    names = [trace.name for trace in figure.data]
    assert names == ["FP32", "{8,6,4,2} · 8-bit", "{8,6,4,2} · 6-bit", "{8,6,4,2} · 4-bit", "{8,6,4,2} · 2-bit"]
    assert list(figure.data[-1].y) == [80.0, 86.5]
    assert len({trace.line.color for trace in figure.data}) == 5
    assert len({trace.marker.symbol for trace in figure.data[1:]}) == 4  # 8 and 6 bits overlap: shapes tell them apart
    assert [trace.xaxis for trace in figure.data] == ["x", "x2", "x2", "x2", "x2"]  # FP32 left, joint right


def test_goals_cover_every_joint_stage_bit():
    for shipped, _, bits in LONG_STAGES[1:]:
        assert sorted(DROP_GOALS[shipped]) == sorted(bits)


def _results_page():
    from labkit import results_page

    return results_page


def test_readme_blocks_are_replaced_between_their_markers_only(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- generated:a -->\nold\nlines\n<!-- /generated:a -->\nkept\n")
    done = _results_page().update_readme({"a": "new table\n", "b": "nowhere"}, readme)
    assert done == ["a"]
    assert readme.read_text() == "intro\n<!-- generated:a -->\nnew table\n<!-- /generated:a -->\nkept\n"
    assert "no <!-- generated:b -->" in capsys.readouterr().out


def test_the_committed_readme_blocks_equal_what_the_run_files_give():
    """README tables are generated, not typed: the committed blocks are what the script writes now."""
    page = _results_page()
    text = (ROOT / "README.md").read_text()
    for name, body in (("suite", page.suite_block()), ("shipped-models", page.long_profile_block()),
                       ("hasb", page.hasb_table()), ("efficientnet", page.efficientnet_table())):
        start, end = f"<!-- generated:{name} -->", f"<!-- /generated:{name} -->"
        assert text.split(start, 1)[1].split(end, 1)[0].strip() == body.strip(), f"README block {name} is stale"


def test_reproduce_publish_regenerates_the_page_after_copying_the_run_files(monkeypatch, tmp_path):
    """Issue 12: `labkit reproduce --seeds 3 --publish` re-runs the suite and regenerates the page, in that order."""
    from labkit import cli, reproduction, results_page

    calls = []
    monkeypatch.setattr(reproduction, "run_suite", lambda out, rows, **kw: calls.append(("run", kw["seeds"])))
    monkeypatch.setattr(reproduction, "publish", lambda out: calls.append(("publish",)) or ["8642-alrs-a2"])
    monkeypatch.setattr(reproduction, "collect", lambda out: [])
    monkeypatch.setattr(results_page, "main", lambda: calls.append(("page",)))
    assert cli.main(["reproduce", "--out", str(tmp_path), "--seeds", "3", "--publish", "--profile", "smoke"]) == 0
    assert calls == [("run", 3), ("publish",), ("page",)]
