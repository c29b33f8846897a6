"""The ``labkit`` command line (also ``python -m labkit``).

Each subcommand is one ``_add_<name>(subparsers)`` function that adds its parser and sets ``func`` (called
with the parsed arguments, returning an exit code). To add one (``train``, ``eval``, ``search``, ``export``),
write such a function and append it to ``SUBCOMMANDS``; keep heavy imports inside the handler so that
``labkit --version`` stays fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from importlib import metadata

from labkit.errors import LabkitError


def version() -> str:
    """The installed labkit version (from the package metadata written by ``pip install``)."""
    try:
        return metadata.version("labkit")
    except metadata.PackageNotFoundError:
        return "unknown (labkit is not installed; run pip install -e .)"


# ---------------------------------------------------------------------------------------------------- info
def _cmd_info(args: argparse.Namespace) -> int:
    from labkit import config

    import torch
    import torchvision

    root = config.data_root()
    data_note = "set by LABKIT_DATA" if os.environ.get(config.DATA_ENV, "").strip() else "default"
    prof = config.profile()
    prof_note = "set by LABKIT_PROFILE" if os.environ.get(config.PROFILE_ENV, "").strip() else "default"
    rows = [
        ("labkit", version()),
        ("torch", f"{torch.__version__} (torchvision {torchvision.__version__})"),
        ("python", sys.version.split()[0]),
        ("data root", f"{root} ({data_note}; {'exists' if root.is_dir() else 'missing'})"),
        ("profile", f"{prof} ({prof_note}; one of {', '.join(config.PROFILES)})"),
        ("hardware", config.hardware_summary()),
    ]
    width = max(len(k) for k, _ in rows)
    for key, val in rows:
        print(f"{key:<{width}}  {val}")
    return 0


def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "info",
        help="print versions, data root, profile and hardware",
        description="Print the labkit/torch versions, the data root (LABKIT_DATA), the profile (LABKIT_PROFILE) "
        "and a one-line hardware summary.",
    )
    p.set_defaults(func=_cmd_info)


# --------------------------------------------------------------------------------------------------- train
def _cmd_train(args: argparse.Namespace) -> int:
    from labkit.train.config import parse_override
    from labkit.train.recipes import RECIPES
    from labkit.train.run import train

    if args.list:
        for name, recipe in sorted(RECIPES.items()):
            print(f"{name:<32} {recipe['about']}")
        return 0
    if not args.recipe or not args.out:
        raise LabkitError("labkit train needs --recipe NAME and --out DIR (labkit train --list shows the recipes)")
    overrides = dict(parse_override(text) for text in args.overrides)
    metrics = train(args.recipe, args.out, overrides, resume=args.resume, show_progress=not args.quiet)
    accuracy = "  ".join(f"{bits}-bit {value:.2f}%" if bits != "32" else f"FP32 {value:.2f}%"
                         for bits, value in metrics["accuracy"].items())
    if os.environ.get("RANK", "0") == "0":
        print(f"{args.recipe} ({metrics['profile']} profile) top-1: {accuracy}")
        print(f"run folder: {args.out}")
    return 0


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a recipe (FP32 or one-shot joint multi-precision)",
        description="Train a named recipe into a run folder. Overrides are key=value settings, e.g. epochs=5 "
        "bits=8,4,2 algorithm=a1 alrs=none. LABKIT_PROFILE (smoke | laptop | paper) scales the budget.",
    )
    p.add_argument("--recipe", help="recipe name (see --list)")
    p.add_argument("--out", help="run folder (checkpoints, metrics.json, log.csv, model_int.safetensors)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--list", action="store_true", help="list the recipes and exit")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="settings that override the recipe")
    p.set_defaults(func=_cmd_train)


# ---------------------------------------------------------------------------------------------------- eval
def _cmd_eval(args: argparse.Namespace) -> int:
    from labkit.evaluate import evaluate_checkpoint

    results = evaluate_checkpoint(args.checkpoint, bits=args.bits, dataset=args.dataset, subset=args.subset,
                                  show_progress=not args.quiet)
    for name, accuracies in results["accuracy"].items():
        line = "  ".join(f"{bits}-bit {value:.2f}%" if bits != "32" else f"FP32 {value:.2f}%" for bits, value in accuracies.items())
        print(f"{name} ({results['images'][name]} images): {line}")
    return 0


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate a checkpoint per bit-width",
        description="Top-1 accuracy of an INT checkpoint (model_int.safetensors), an FP32 model_fp32.pt, or a run "
        "folder, at the given bit-width(s). Lower bit-widths come from the stored integers.",
    )
    p.add_argument("checkpoint", help="run folder, .safetensors INT checkpoint, or model_fp32.pt in a run folder")
    p.add_argument("--bits", default="all", help="a bit-width, a comma list (8,4) or 'all' trained (default)")
    p.add_argument("--dataset", default=None, help="cifar10 | imagenette-val | imagenet-val-sample | imagenet-val "
                   "(default: the run's own evaluation sets)")
    p.add_argument("--subset", type=int, default=None, help="evaluate on a fixed subset of this many images")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_eval)


# -------------------------------------------------------------------------------------------------- search
def _cmd_search(args: argparse.Namespace) -> int:
    from labkit.hasb.run_search import search_run

    records = search_run(args.run, avg_bits=args.avg_bits, sweep_text=args.sweep, neighbours=not args.no_neighbours,
                         subset=args.subset, recalibrate=args.recalibrate, bitops_budget=args.bitops_budget,
                         size_budget_bits=args.size_budget_bits, show_progress=not args.quiet)
    best = max(records, key=lambda r: r["accuracy"])
    print(f"{len(records)} SubNets evaluated; best {best['accuracy']:.2f}% at {best['avg_bits']:.2f} average bits")
    print(f"wrote {args.run}/search.csv and {args.run}/pareto.html")
    return 0


def _add_search(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "search",
        help="exact per-layer bit allocation for a trained SuperNet (HASB search)",
        description="Solve the ILP (maximise Σ Hessian score · bits under an average-bit budget, optionally BitOPs "
        "and size budgets) for one ω or a sweep, enumerate the neighbouring SubNets, evaluate each, and write "
        "search.csv and pareto.html into the SuperNet's run folder.",
    )
    p.add_argument("run", help="SuperNet run folder (cifar10-resnet20-hasb or -uniform)")
    p.add_argument("--avg-bits", type=float, default=3.0, help="ω, the average-bit budget (default 3.0)")
    p.add_argument("--sweep", help="START:STOP:STEP sweep of ω instead of one value, e.g. 2:8:0.25")
    p.add_argument("--no-neighbours", action="store_true", help="only the optimum per ω")
    p.add_argument("--subset", type=int, default=1000, help="test images per SubNet (default 1000)")
    p.add_argument("--recalibrate", type=int, default=0, help="re-estimate BN statistics on N batches first")
    p.add_argument("--bitops-budget", type=float, default=None, help="BitOPs per image bound")
    p.add_argument("--size-budget-bits", type=float, default=None, help="weight storage bound, in bits")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_search)


# ------------------------------------------------------------------------------------------------ parser
SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_info, _add_train, _add_eval, _add_search]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="labkit",
        description="Command line of the Double Rounding / adaptive bit switching lab.",
        epilog="Environment: LABKIT_DATA (data root), LABKIT_PROFILE (smoke | laptop | paper).",
    )
    parser.add_argument("--version", action="version", version=f"labkit {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(func(args) or 0)
    except LabkitError as exc:  # errors raised on purpose carry their own advice; no traceback needed
        print(f"labkit {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
