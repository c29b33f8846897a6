"""Publish the seeded HASB and uniform-sampling SuperNets (``labkit.hasb.seed_study``): their run files to
``docs/results/hasb-seeds/<rule>-s<seed>/``, and the first seed's HASB SuperNet as the shipped
``cifar10-resnet20-hasb-supernet`` with its provenance. Usage::

    python scripts/publish_hasb_seeds.py RUNS_ROOT [--ship-seed 0] [--note TEXT] [--to FOLDER --no-ship]

``RUNS_ROOT`` holds the finished, searched run folders ``hasb-s<k>`` and ``uniform-s<k>``: each trained by
``labkit train --recipe cifar10-resnet20-<rule> seed=<k> init_from=auto supernet_from=auto`` and searched by
``labkit search RUN --avg-bits 3`` and ``labkit search RUN --avg-bits none --bitops-budget uniform:3 --output
search-bitops``. A folder that is not finished or not searched is refused, so the page never mixes budgets.
``--to FOLDER --no-ship`` publishes an ablation (e.g. ``hasb-seeds-one-lr``) under ``docs/results/FOLDER/`` without
shipping a model.
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from labkit.checkpoints import ship_run
from labkit.errors import LabkitError
from labkit.hasb.figures import COMMITTED_RESULTS
from labkit.hasb.seed_study import BUDGETS, SEED_RESULTS, seed_runs

RUN_FILES = ("config.json", "log.csv", "metrics.json", "run.json", "supernet.json",
             *(file for file, _ in BUDGETS.values()))
SHIPPED_NAME = "cifar10-resnet20-hasb-supernet"


def publish(runs_root: Path, ship_seed: int | None = 0, note: str | None = None, to: Path = SEED_RESULTS) -> list[Path]:
    runs = {rule: seed_runs(rule, runs_root) for rule in ("hasb", "uniform")}
    published = []
    for rule, by_seed in runs.items():
        for seed, run in sorted(by_seed.items()):
            missing = [file for file in RUN_FILES if not (run / file).is_file()]
            if missing:
                raise LabkitError(f"{run} lacks {', '.join(missing)}: finish its training and both searches first.")
            destination = to / run.name
            destination.mkdir(parents=True, exist_ok=True)
            for file in RUN_FILES:
                shutil.copyfile(run / file, destination / file)
            published.append(destination)
    if ship_seed is not None:
        ship_run(runs["hasb"][ship_seed], SHIPPED_NAME, notes=note)
    return published


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs_root", type=Path)
    parser.add_argument("--ship-seed", type=int, default=0, help="the HASB seed shipped as " + SHIPPED_NAME)
    parser.add_argument("--note", help="a provenance note for the shipped SuperNet")
    parser.add_argument("--to", help="publish under docs/results/TO instead of hasb-seeds (an ablation)")
    parser.add_argument("--no-ship", action="store_true", help="publish the run files only")
    args = parser.parse_args()
    to = COMMITTED_RESULTS / args.to if args.to else SEED_RESULTS
    ship_seed = None if args.no_ship else args.ship_seed
    for folder in publish(args.runs_root.expanduser(), ship_seed, args.note, to):
        print(f"published {folder}")
    if ship_seed is not None:
        print(f"shipped hasb-s{ship_seed} as data/checkpoints/{SHIPPED_NAME}.safetensors")


if __name__ == "__main__":
    main()
