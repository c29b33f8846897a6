"""Runtime conventions: where the data lives, which run profile is active, what hardware runs the lab.

Two environment variables steer every notebook, test and CLI run:

``LABKIT_DATA``
    The data root (see ``data/README.md`` for the layout). Unset or empty: the ``data/`` folder of the checkout
    when labkit runs from a source checkout (editable install), else ``./data``. A relative value is taken
    relative to the checkout root when there is one (so a notebook kernel, which runs inside ``notebooks/``,
    sees the same folder as the shell that started Jupyter), else relative to the current directory.

``LABKIT_PROFILE``
    ``smoke`` (CI: tiny budgets), ``laptop`` (default: minutes on a CPU) or ``paper`` (the paper's full recipe,
    GPU).
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

from labkit.errors import LabkitError

__all__ = [
    "DATA_ENV",
    "PROFILE_ENV",
    "PROFILES",
    "DEFAULT_PROFILE",
    "ConfigError",
    "checkout_root",
    "data_root",
    "profile",
    "hardware_summary",
]

DATA_ENV = "LABKIT_DATA"
PROFILE_ENV = "LABKIT_PROFILE"
PROFILES = ("smoke", "laptop", "paper")
DEFAULT_PROFILE = "laptop"


class ConfigError(LabkitError, ValueError):
    """An environment setting (LABKIT_PROFILE, ...) with a value the lab does not know."""


def checkout_root() -> Path | None:
    """The repository root when labkit is imported from a source checkout, else ``None``.

    A checkout is recognised by a ``pyproject.toml`` next to the ``labkit/`` package folder; an ordinary
    (non-editable) install into site-packages has none.
    """
    root = Path(__file__).resolve().parent.parent
    if (root / "pyproject.toml").is_file() and (root / "labkit").is_dir():
        return root
    return None


def data_root() -> Path:
    """The data root: ``$LABKIT_DATA`` if set, else ``<checkout>/data`` (or ``./data`` outside a checkout).

    Always an absolute path; whether it exists is left to the code that reads from it.
    """
    base = checkout_root() or Path.cwd()
    value = os.environ.get(DATA_ENV, "").strip()
    if not value:
        return base / "data"
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def profile() -> str:
    """The active run profile: ``$LABKIT_PROFILE`` (smoke | laptop | paper), default ``laptop``."""
    value = os.environ.get(PROFILE_ENV, "").strip()
    if not value:
        return DEFAULT_PROFILE
    name = value.lower()
    if name not in PROFILES:
        raise ConfigError(
            f"{PROFILE_ENV}={value!r} is not a known profile; allowed values: {', '.join(PROFILES)} "
            f"(unset means {DEFAULT_PROFILE!r})."
        )
    return name


def _cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what ``platform`` knows, else ``"unknown CPU"``."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, sep, val = line.partition(":")
        if sep and key.strip().lower() in ("model name", "hardware", "cpu model") and val.strip():
            return val.strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def _cpu_count() -> int:
    """CPU cores this process may use (the affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def hardware_summary() -> str:
    """One line naming the hardware, e.g. ``"CPU: Intel(R) Xeon(R) Processor, 2 cores, torch 2.14.1, CUDA: none"``."""
    import torch  # imported here so that data_root()/profile() stay cheap

    n = _cpu_count()
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        cuda = torch.cuda.get_device_name(0) + (f" (x{count})" if count > 1 else "")
    else:
        cuda = "none"
    return f"CPU: {_cpu_model()}, {n} core{'s' if n != 1 else ''}, torch {torch.__version__}, CUDA: {cuda}"
