"""Ship a finished stage of the ``long`` profile: its run files to ``docs/results/<stage>-long/`` and its model to
``data/checkpoints/`` with provenance (``labkit.checkpoints.ship_run``). Usage::

    python scripts/ship_long_profile.py RUNS_ROOT fp32|8642|432 [--name NAME] [--note TEXT]

``RUNS_ROOT`` holds the stage folders ``fp32``, ``8642`` and ``432`` (e.g. ``~/.cache/labkit-runs/long``). By default
the model is shipped under the stage's checkpoint name (``cifar10-resnet20-fp32``, ``cifar10-resnet20``,
``cifar10-resnet20-432``); ``--name`` ships it under another name first (a staging copy while the other stages
still train, so the models the notebooks load stay one consistent set).
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from labkit.checkpoints import ship_run
from labkit.shipped_models import LONG_STAGES, RESULTS

STAGES = {"fp32": LONG_STAGES[0], "8642": LONG_STAGES[1], "432": LONG_STAGES[2]}
RUN_FILES = ("config.json", "log.csv", "metrics.json", "run.json")


def ship_stage(runs_root: Path, stage: str, name: str | None = None, note: str | None = None) -> Path:
    shipped, folder, _ = STAGES[stage]
    run = Path(runs_root).expanduser() / stage
    destination = RESULTS / folder
    destination.mkdir(parents=True, exist_ok=True)
    for file in RUN_FILES:
        shutil.copyfile(run / file, destination / file)
    return ship_run(run, name or shipped, notes=note)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs_root")
    parser.add_argument("stage", choices=sorted(STAGES))
    parser.add_argument("--name", help="ship under this checkpoint name instead of the stage's own")
    parser.add_argument("--note", help="a provenance note (how it was run, what ran beside it)")
    args = parser.parse_args()
    target = ship_stage(Path(args.runs_root), args.stage, args.name, args.note)
    print(f"shipped {target} and its run files in {RESULTS / STAGES[args.stage][1]}")


if __name__ == "__main__":
    main()
