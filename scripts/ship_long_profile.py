"""Ship a finished stage of the ``long`` profile: its run files to ``docs/results/<stage>-long/`` and its model to
``data/checkpoints/`` with provenance (``labkit.checkpoints.ship_run``). Usage::

    python scripts/ship_long_profile.py RUNS_ROOT fp32|8642|432 [--name NAME] [--note TEXT]

``RUNS_ROOT`` holds the stage folders ``fp32``, ``8642`` and ``432`` (e.g. ``~/.cache/labkit-runs/long``). By default
the model is shipped under the stage's checkpoint name (``cifar10-resnet20-fp32``, ``cifar10-resnet20``,
``cifar10-resnet20-432``); ``--name`` ships it under another name first (a staging copy while the other stages
still train, so the models the notebooks load stay one consistent set).

The shipped accuracies are measured again here, in fp32 arithmetic on the full test set (a run trained under bf16
autocast by an older labkit also evaluated under it; ``JointTrainer.evaluate`` now always evaluates in fp32); the
run's own figures are kept as ``accuracy_recorded_by_run``. ``--profile-note`` records how the run was started when
that differs from ``labkit train --profile long`` (e.g. the same settings given as overrides).
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from labkit.checkpoints import SHIPPED_DIR, ship_run
from labkit.evaluate import evaluate_checkpoint
from labkit.shipped_models import LONG_STAGES, RESULTS

STAGES = {"fp32": LONG_STAGES[0], "8642": LONG_STAGES[1], "432": LONG_STAGES[2]}
RUN_FILES = ("config.json", "log.csv", "metrics.json", "run.json")


def ship_stage(runs_root: Path, stage: str, name: str | None = None, note: str | None = None,
               profile_note: str | None = None) -> Path:
    shipped, folder, _ = STAGES[stage]
    run = Path(runs_root).expanduser() / stage
    destination = RESULTS / folder
    destination.mkdir(parents=True, exist_ok=True)
    for file in RUN_FILES:
        shutil.copyfile(run / file, destination / file)
    fp32 = evaluate_checkpoint(run, show_progress=False)["accuracy"]  # {set: {bits: top-1}}, fp32 arithmetic
    metrics = json.loads((destination / "metrics.json").read_text())
    metrics["accuracy_recorded_by_run"] = metrics["accuracy"]
    metrics["accuracy_by_set"] = fp32
    metrics["accuracy"] = fp32[next(iter(fp32))]
    metrics["evaluation"] = "fp32 arithmetic, full test set (scripts/ship_long_profile.py)"
    if profile_note:
        metrics["profile"], metrics["profile_note"] = "long", profile_note
    (destination / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    target = ship_run(run, name or shipped, notes=note)
    record_file = SHIPPED_DIR / f"{name or shipped}.json"
    record = json.loads(record_file.read_text())
    for key in ("accuracy", "accuracy_by_set", "accuracy_recorded_by_run", "evaluation", "profile", "profile_note"):
        if key in metrics:
            record[key] = metrics[key]
    record_file.write_text(json.dumps(record, indent=2) + "\n")
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs_root")
    parser.add_argument("stage", choices=sorted(STAGES))
    parser.add_argument("--name", help="ship under this checkpoint name instead of the stage's own")
    parser.add_argument("--note", help="a provenance note (how it was run, what ran beside it)")
    parser.add_argument("--profile-note", help="record the profile as 'long' with this note on how the run was started")
    args = parser.parse_args()
    target = ship_stage(Path(args.runs_root), args.stage, args.name, args.note, args.profile_note)
    print(f"shipped {target} and its run files in {RESULTS / STAGES[args.stage][1]}")


if __name__ == "__main__":
    main()
