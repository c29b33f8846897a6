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


# ------------------------------------------------------------------------------------------------ parser
SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_info]


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
