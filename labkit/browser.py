"""A Chromium for the lab's real-browser test (``tests/test_browser.py``), found or installed on first use.

``ensure_chromium()`` returns the path of a Chromium binary, in this order:

1. ``LABKIT_CHROMIUM``, when set (it must name an executable file);
2. a Chromium or Chrome already on ``PATH`` (``chromium``, ``chromium-browser``, ``google-chrome``, ...), or the
   one Playwright already downloaded;
3. as root on Debian/Ubuntu: Debian's ``chromium`` package, installed with ``apt-get``;
4. otherwise Playwright's own installer (``python -m playwright install chromium``), where its download server
   can be reached;
5. otherwise a :class:`BrowserUnavailableError` that says what was tried and what to install.

The test calls it from a fixture, so the README's test command provisions the browser itself; it also runs on
its own as ``python -m labkit.browser``.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

from labkit.errors import LabkitError

ENV_VAR = "LABKIT_CHROMIUM"
NAMES_ON_PATH = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
DEBIAN_PACKAGE = "chromium"
APT_TIMEOUT_S = 900
PLAYWRIGHT_TIMEOUT_S = 600

WHAT_TO_INSTALL = (
    "Install one and rerun: `sudo apt-get install -y chromium` (Debian/Ubuntu), or "
    "`.venv/bin/python -m playwright install --with-deps chromium` on a machine that can reach Playwright's "
    f"download, or set {ENV_VAR} to a Chromium/Chrome binary."
)


class BrowserUnavailableError(LabkitError, RuntimeError):
    """No Chromium for the browser test, and none could be installed."""


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _has_apt() -> bool:
    return shutil.which("apt-get") is not None


def _playwright_chromium() -> Path | None:
    """Where Playwright keeps (or would keep) its own Chromium; None without the playwright package."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None
    with sync_playwright() as pw:
        return Path(pw.chromium.executable_path)


def find_chromium() -> Path | None:
    """An existing Chromium: ``LABKIT_CHROMIUM``, one on ``PATH``, or Playwright's download; None if there is none."""
    chosen = os.environ.get(ENV_VAR)
    if chosen:
        path = Path(chosen).expanduser()
        if not _is_executable(path):
            raise BrowserUnavailableError(f"{ENV_VAR}={chosen} is not an executable file. "
                                          f"Point it at a Chromium/Chrome binary, or unset it. {WHAT_TO_INSTALL}")
        return path
    for name in NAMES_ON_PATH:
        found = shutil.which(name)
        if found:
            return Path(found)
    downloaded = _playwright_chromium()
    if downloaded is not None and _is_executable(downloaded):
        return downloaded
    return None


def _tail(output: str, lines: int = 2) -> str:
    """The last informative lines of an installer's output (no JavaScript stack frames), on one line."""
    kept = [line.strip() for line in output.splitlines() if line.strip() and not line.strip().startswith("at ")]
    return " / ".join(kept[-lines:]) or "no output"


def _apt_install() -> tuple[bool, str]:
    """``apt-get update`` then ``apt-get install -y chromium`` (as root); (succeeded, what went wrong)."""
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", DEBIAN_PACKAGE]):
        try:
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=APT_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return False, f"`{' '.join(cmd)}`: {exc}"
        if done.returncode != 0:
            return False, f"`{' '.join(cmd)}` exited with {done.returncode}: {_tail(done.stdout + done.stderr)}"
    return True, ""


def _playwright_install() -> tuple[bool, str]:
    """``python -m playwright install chromium`` (Playwright's own download); (succeeded, what went wrong)."""
    try:
        import playwright  # noqa: F401
    except ImportError:
        return False, "the playwright Python package is not installed (`.venv/bin/pip install -e \".[test]\"`)"
    cmd = [sys.executable, "-m", "playwright", "install", "chromium"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=PLAYWRIGHT_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, str(exc)
    if done.returncode != 0:
        return False, _tail(done.stdout + done.stderr)
    return True, ""


def _say(message: str) -> None:
    print(f"labkit.browser: {message}", file=sys.stderr, flush=True)


def ensure_chromium(progress: Callable[[str], None] = _say) -> Path:
    """A Chromium binary for the browser test: an existing one, else Debian's package (as root), else Playwright's.

    ``progress`` is told before each (slow) installation. Raises :class:`BrowserUnavailableError`, saying what was
    tried and what to install, when no Chromium is found and none can be installed.
    """
    found = find_chromium()
    if found is not None:
        return found
    tried = []
    if not _is_root():
        tried.append(f"Debian's {DEBIAN_PACKAGE} package needs root to install (this process is not root)")
    elif not _has_apt():
        tried.append(f"there is no apt-get to install Debian's {DEBIAN_PACKAGE} package with")
    else:
        progress(f"no Chromium found: installing Debian's {DEBIAN_PACKAGE} package for the browser test "
                 f"(apt-get install {DEBIAN_PACKAGE}, a few minutes)")
        ok, problem = _apt_install()
        found = find_chromium() if ok else None
        if found is not None:
            return found
        tried.append(f"installing Debian's {DEBIAN_PACKAGE} package failed ({problem or 'no chromium afterwards'})")
    progress("no Chromium found: trying Playwright's own installer (python -m playwright install chromium)")
    ok, problem = _playwright_install()
    found = find_chromium() if ok else None
    if found is not None:
        return found
    tried.append(f"Playwright's installer could not provide its Chromium ({problem or 'no chromium afterwards'})")
    raise BrowserUnavailableError(
        "No Chromium for the browser test (tests/test_browser.py) and none could be installed: "
        + "; ".join(tried) + ". " + WHAT_TO_INSTALL)


def main() -> int:
    try:
        path = ensure_chromium()
    except BrowserUnavailableError as exc:
        print(f"labkit.browser: {exc}", file=sys.stderr)
        return 1
    try:
        version = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=60).stdout.strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        version = f"(--version failed: {exc})"
    print(f"chromium: {path} {version}".rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
