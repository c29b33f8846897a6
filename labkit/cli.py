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
    metrics = train(args.recipe, args.out, overrides, resume=args.resume, profile=args.profile,
                    show_progress=not args.quiet)
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
    p.add_argument("--profile", choices=("smoke", "laptop", "long", "paper"),
                   help="budget: smoke | laptop | long (the shipped CIFAR-10 models) | paper; default $LABKIT_PROFILE")
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
    from labkit.hasb.run_search import pareto_file, search_run

    records = search_run(args.run, avg_bits=args.avg_bits, sweep_text=args.sweep, neighbours=not args.no_neighbours,
                         subset=args.subset, recalibrate=args.recalibrate, bitops_budget=args.bitops_budget,
                         size_budget_bits=args.size_budget_bits, show_progress=not args.quiet, output=args.output)
    best = max(records, key=lambda r: r["accuracy"])
    print(f"{len(records)} SubNets evaluated; best {best['accuracy']:.2f}% at {best['avg_bits']:.2f} average bits")
    print(f"wrote {args.run}/{args.output}.csv and {args.run}/{pareto_file(args.output)}")
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
    p.add_argument("--avg-bits", type=_optional_float, default=3.0,
                   help="ω, the average-bit budget (default 3.0); 'none' leaves the mean free (then bound the BitOPs)")
    p.add_argument("--sweep", help="START:STOP:STEP sweep of ω instead of one value, e.g. 2:8:0.25")
    p.add_argument("--no-neighbours", action="store_true", help="only the optimum per ω")
    p.add_argument("--subset", type=int, default=1000, help="test images per SubNet (default 1000)")
    p.add_argument("--recalibrate", type=int, default=0, help="re-estimate BN statistics on N batches first")
    p.add_argument("--bitops-budget", default=None,
                   help="BitOPs per image bound: a number, or uniform:B for the BitOPs of every layer at B bits")
    p.add_argument("--size-budget-bits", type=float, default=None, help="weight storage bound, in bits")
    p.add_argument("--output", default="search", help="file stem of the results in the run folder (default search)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_search)


def _optional_float(text: str) -> float | None:
    """A number, or ``none`` for no bound."""
    if text.strip().lower() == "none":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a number nor 'none'") from None


# -------------------------------------------------------------------------------------------------- export
def _parse_export_bits(text: str | None):
    """``None``; ``"4"``; ``"layer1.0.conv1=8,layer1.0.conv2=4"``; or a JSON file holding ``{layer: bits}``."""
    import json
    from pathlib import Path

    from labkit.errors import BitWidthError

    if text is None:
        return None
    text = text.strip()
    if text.endswith(".json"):
        try:
            mapping = json.loads(Path(text).read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise BitWidthError(f"--bits {text}: cannot read a JSON {{layer: bits}} mapping ({error}).") from None
        mapping = mapping.get("bits", mapping) if isinstance(mapping, dict) else mapping
        if not isinstance(mapping, dict):
            raise BitWidthError(f"--bits {text} must hold a JSON object {{layer_name: bits}}.")
        return mapping
    if "=" in text:
        mapping = {}
        for part in text.split(","):
            name, sep, value = part.partition("=")
            if not sep or not name.strip():
                raise BitWidthError(
                    f"--bits {text!r}: write mixed precision as name=bits,name=bits (e.g. layer1.0.conv1=8)."
                )
            mapping[name.strip()] = int(value) if value.strip().lstrip("-").isdigit() else value.strip()
        return mapping
    return int(text) if text.lstrip("-").isdigit() else text  # export_onnx explains a bad value


def _check_batches(arch_name: str, run_dataset, count: int, example):
    """(batches of (images, labels) or images, description): test images when the data is there, else random."""
    from labkit.errors import LabkitError
    from labkit.evaluate import _DATASET_OF_MODEL, _eval_sets, fixed_subset

    import torch

    dataset = run_dataset or _DATASET_OF_MODEL.get(arch_name)
    if dataset is not None:
        try:
            name, eval_set = next(iter(_eval_sets(dataset, arch_name).items()))
            eval_set = fixed_subset(eval_set, count)
            loader = torch.utils.data.DataLoader(eval_set, batch_size=128, shuffle=False)
            return loader, f"{len(eval_set)} {dataset} {name} images"
        except (LabkitError, OSError, RuntimeError) as error:
            note = f" ({dataset} data not available: {str(error).splitlines()[0][:120]})"
    else:
        note = " (data set unknown)"
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(count, *example.shape[1:], generator=generator)
    return [images[i:i + 128] for i in range(0, count, 128)], f"{count} random inputs{note}"


def _cmd_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from labkit.errors import LabkitError
    from labkit.evaluate import load_for_eval
    from labkit.export import default_example_input, export_onnx, qdq_summary, verify_onnx

    if args.check < 0:
        raise LabkitError(f"--check {args.check}: pass a number of images >= 1 (or leave it out).")
    if (args.bits or "").strip() == "switchable":
        return _export_switchable(args)
    bits = _parse_export_bits(args.bits)
    model, arch_name, run_dataset = load_for_eval(args.checkpoint)
    out = Path(args.out)
    export_onnx(model, out, bits=bits, opset=args.opset, weight_sign=args.weight_sign)
    summary = qdq_summary(out)
    values = sorted(set(summary["bits"].values()), reverse=True)
    average = sum(summary["bits"].values()) / len(summary["bits"])
    bits_text = f"{values[0]}-bit" if len(values) == 1 else f"mixed {values} bits, average {average:.2f}"
    types = ", ".join(f"{count} {kind.upper()}" for kind, count in sorted(summary["weight_types"].items()))
    print(f"wrote {out} ({summary['bytes'] / 1024:.1f} KiB, {bits_text}, opset {summary['opset']}): "
          f"{summary['quantize_linear']} QuantizeLinear, {summary['dequantize_linear']} DequantizeLinear, "
          f"{summary['clip']} Clip; weight tensors {types} ({summary['weight_values']} codes in "
          f"{summary['weight_bytes'] / 1024:.1f} KiB)")
    if args.check:
        batches, described = _check_batches(arch_name, run_dataset, args.check, default_example_input(model))
        result = verify_onnx(model, out, batches, bits=summary["bits"])
        line = (f"onnxruntime vs PyTorch on {described}: max |Δ logit| {result['max_abs_diff']:.3g} "
                f"(max |logit| {result['max_abs_logit']:.3g}, mean |Δ| {result['mean_abs_diff']:.2g}), "
                f"top-1 agreement {100 * result['top1_agreement']:.2f} %, activation codes differing "
                f"{result['activation_code_mismatches']} of {result['activation_codes']}")
        if "onnx_top1" in result:
            line += f"; top-1 PyTorch {100 * result['torch_top1']:.2f} %, ONNX {100 * result['onnx_top1']:.2f} %"
        print(line)
    return 0


def _export_switchable(args: argparse.Namespace) -> int:
    """``--bits switchable``: one file, the bit-width an input of the graph (labkit.export_switchable)."""
    from pathlib import Path

    from labkit.errors import LabkitError
    from labkit.evaluate import load_for_eval
    from labkit.export import default_example_input
    from labkit.export_switchable import SWITCHABLE_OPSET, SwitchableSession, export_switchable_onnx, verify_switchable

    if args.weight_sign != "keep":
        raise LabkitError("--weight-sign fold applies to one precision; the switchable file keeps the model's codes.")
    model, arch_name, run_dataset = load_for_eval(args.checkpoint)
    out = Path(args.out)
    export_switchable_onnx(model, out, opset=args.opset or SWITCHABLE_OPSET)
    session = SwitchableSession(out)
    print(f"wrote {out} ({out.stat().st_size / 1024:.1f} KiB, switchable, bits {session.bit_set}): INT8 codes of "
          f"{len(session.layers)} layers stored once; input 'bits' (int64): [1] for one bit-width everywhere or "
          f"[{len(session.layers)}] for one per layer, in the order of the metadata labkit.layers")
    if args.check:
        batches, described = _check_batches(arch_name, run_dataset, args.check, default_example_input(model))
        for bits, result in verify_switchable(model, out, batches).items():
            print(f"  {bits}-bit: onnxruntime vs PyTorch on {described}: max |Δ logit| {result['max_abs_diff']:.3g} "
                  f"(max |logit| {result['max_abs_logit']:.3g}), top-1 agreement "
                  f"{100 * result['top1_agreement']:.2f} %")
    return 0


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export one precision of a checkpoint to ONNX (QuantizeLinear/DequantizeLinear)",
        description="Write one precision (uniform or mixed per layer) of an INT checkpoint or run folder as an ONNX "
        "QDQ graph: INT8/INT4/INT2 weight codes derived from the stored integers -> DequantizeLinear, activations "
        "through QuantizeLinear -> Clip -> DequantizeLinear. --check N compares it with PyTorch in onnxruntime on N "
        "test images (random inputs when the data set is not available). --bits switchable writes one file for every "
        "trained bit-width instead: the INT8 codes once, the precision an int64 input 'bits' of the graph.",
    )
    p.add_argument("checkpoint", help="run folder or .safetensors INT checkpoint")
    p.add_argument("--bits", default=None, help="a trained bit-width (default: the highest), name=bits,name=bits for "
                   "mixed precision, a .json file with {layer: bits}, or 'switchable': one file for every bit-width "
                   "(INT8 codes stored once, the precision an int64 input 'bits' of the graph)")
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.add_argument("--check", type=int, default=0, metavar="N", help="verify on N images in onnxruntime")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset, 13..25 (default: the lowest that holds the "
                   "weight types: 17 for INT8, 21 for INT4 (3-4 bits), 25 for INT2 (2 bits); below 21 every weight is "
                   "stored as INT8)")
    p.add_argument("--weight-sign", choices=("keep", "fold"), default="keep",
                   help="keep: int8 codes exactly as the model's, negative learned scales kept (default); fold: store "
                   "(-q, -s) so every scale is positive (not possible at 8 bits when a channel holds code -128)")
    p.set_defaults(func=_cmd_export)

def _cmd_reproduce(args: argparse.Namespace) -> int:
    from labkit.config import profile as active_profile
    from labkit.reproduction import ROWS, collect, markdown_table, publish, run_suite

    if args.list:
        for entry in ROWS:
            print(f"{entry.name:<22} {entry.group:<10} {entry.label}")
        return 0
    profile = args.profile or active_profile()
    run_suite(args.out, args.rows or None, profile=profile, show_progress=not args.quiet, seeds=args.seeds)
    if args.publish:
        print("published:", ", ".join(publish(args.out)) or "nothing (no finished row)")
        from labkit.results_page import main as write_results_page

        write_results_page()  # docs/RESULTS.md, its figures and the README's generated tables from the run files
    print(markdown_table(collect(args.out)))
    return 0


def _add_reproduce(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "reproduce",
        help="train the CIFAR-10 Table 4 rows and baselines at one equal budget (resumable)",
        description="Train every row of the reproduction suite (Table 4: {8,6,4,2} and {4,3,2} with and without "
        "ALRS, Alg. A.1 vs A.2; baselines: floor, per-bit scales, Any-Precision, dedicated LSQ) from the shipped "
        "FP32 ResNet-20 at the profile's budget. Finished rows are skipped, interrupted ones resume.",
    )
    p.add_argument("--out", default="runs/suite", help="folder of the row runs (default runs/suite)")
    p.add_argument("--rows", nargs="*", help="only these rows (see --list)")
    p.add_argument("--profile", choices=("smoke", "laptop", "paper"), help="default: $LABKIT_PROFILE")
    p.add_argument("--publish", action="store_true", help="copy the finished rows' run files into docs/results/suite")
    p.add_argument("--seeds", type=int, default=1, metavar="N",
                   help="train seeds 0..N-1 of every row (seed k > 0 in <row>-seed<k>; default 1)")
    p.add_argument("--list", action="store_true", help="list the rows and exit")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_reproduce)


# ------------------------------------------------------------------------------------------------ parser
SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_info, _add_train, _add_eval, _add_search,
                                                                   _add_export, _add_reproduce]


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
