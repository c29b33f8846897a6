"""labkit.browser: which Chromium the browser test gets, and what is installed (or said) when there is none.

The installers are replaced by fakes that record their calls; the machine's real state (root, apt-get, network)
never decides these tests. ``tests/test_browser.py`` runs the real path.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from labkit import browser
from labkit.browser import BrowserUnavailableError, ensure_chromium, find_chromium
from labkit.errors import LabkitError

# What Playwright 1.65's installer prints when its download server cannot be reached (stack frames shortened).
PLAYWRIGHT_OFFLINE = """Downloading Chrome for Testing 159.0.8154.6 (playwright chromium v1255)
Error: Failed to download Chrome for Testing 159.0.8154.6 (playwright chromium v1255), caused by
Error: Download failure, code=1
    at ChildProcess.<anonymous> (/x/playwright/driver/package/lib/coreBundle.js:34127:32)
    at ChildProcess.emit (node:events:514:20)
"""


class Machine:
    """A fake machine: root or not, apt-get or not, whether each installer works; records what was run."""

    def __init__(self, monkeypatch, tmp_path, *, root, apt=True, apt_works=True, download_works=True,
                 chromium_already=False):
        self.calls: list[str] = []
        self.progress: list[str] = []
        self.debian = tmp_path / "usr-bin-chromium"
        self.playwright = tmp_path / "ms-playwright-chrome"
        self.installed: Path | None = self.debian if chromium_already else None
        self.apt_works, self.download_works = apt_works, download_works
        monkeypatch.delenv(browser.ENV_VAR, raising=False)
        monkeypatch.setattr(browser, "_is_root", lambda: root)
        monkeypatch.setattr(browser, "_has_apt", lambda: apt)
        monkeypatch.setattr(browser, "find_chromium", lambda: self.installed)
        monkeypatch.setattr(browser, "_apt_install", self.apt_install)
        monkeypatch.setattr(browser, "_playwright_install", self.playwright_install)

    def apt_install(self):
        self.calls.append("apt")
        if not self.apt_works:
            return False, "`apt-get update -qq` exited with 100: E: Could not resolve 'deb.debian.org'"
        self.installed = self.debian
        return True, ""

    def playwright_install(self):
        self.calls.append("playwright")
        if not self.download_works:
            return False, browser._tail(PLAYWRIGHT_OFFLINE)
        self.installed = self.playwright
        return True, ""

    def ensure(self):
        return ensure_chromium(self.progress.append)


def test_an_existing_chromium_is_used_and_nothing_is_installed(monkeypatch, tmp_path):
    machine = Machine(monkeypatch, tmp_path, root=True, chromium_already=True)
    assert machine.ensure() == machine.debian
    assert machine.calls == [] and machine.progress == []


def test_as_root_debian_package_is_installed_not_playwrights_download(monkeypatch, tmp_path):
    machine = Machine(monkeypatch, tmp_path, root=True)
    assert machine.ensure() == machine.debian
    assert machine.calls == ["apt"]
    assert len(machine.progress) == 1 and "installing Debian's chromium package" in machine.progress[0]


def test_not_root_uses_playwrights_installer(monkeypatch, tmp_path):
    machine = Machine(monkeypatch, tmp_path, root=False)
    assert machine.ensure() == machine.playwright
    assert machine.calls == ["playwright"]
    assert "Playwright's own installer" in machine.progress[-1]


def test_root_without_apt_uses_playwrights_installer(monkeypatch, tmp_path):
    machine = Machine(monkeypatch, tmp_path, root=True, apt=False)
    assert machine.ensure() == machine.playwright
    assert machine.calls == ["playwright"]


def test_root_whose_apt_fails_falls_back_to_playwright(monkeypatch, tmp_path):
    machine = Machine(monkeypatch, tmp_path, root=True, apt_works=False)
    assert machine.ensure() == machine.playwright
    assert machine.calls == ["apt", "playwright"]


def test_not_root_and_no_download_is_one_clear_error(monkeypatch, tmp_path):
    machine = Machine(monkeypatch, tmp_path, root=False, download_works=False)
    with pytest.raises(BrowserUnavailableError) as caught:
        machine.ensure()
    message = str(caught.value)
    assert isinstance(caught.value, LabkitError)
    assert machine.calls == ["playwright"]
    assert message.startswith("No Chromium for the browser test (tests/test_browser.py) and none could be installed")
    assert "needs root to install (this process is not root)" in message
    assert "Error: Download failure, code=1" in message and "ChildProcess" not in message  # no stack frames
    assert "`sudo apt-get install -y chromium`" in message
    assert "`.venv/bin/python -m playwright install --with-deps chromium`" in message
    assert "LABKIT_CHROMIUM" in message
    assert "\n" not in message  # one message, one line


def test_root_with_failing_apt_and_no_download_says_both(monkeypatch, tmp_path):
    machine = Machine(monkeypatch, tmp_path, root=True, apt_works=False, download_works=False)
    with pytest.raises(BrowserUnavailableError) as caught:
        machine.ensure()
    message = str(caught.value)
    assert machine.calls == ["apt", "playwright"]
    assert "installing Debian's chromium package failed (`apt-get update -qq` exited with 100" in message
    assert "Playwright's installer could not provide its Chromium (" in message
    assert "Download failure" in message


def test_labkit_chromium_names_the_binary(monkeypatch, tmp_path):
    binary = tmp_path / "my-chrome"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    monkeypatch.setenv(browser.ENV_VAR, str(binary))
    monkeypatch.setattr(browser, "_playwright_chromium", lambda: pytest.fail("LABKIT_CHROMIUM must win"))
    assert find_chromium() == binary


def test_labkit_chromium_that_is_not_executable_is_an_error(monkeypatch, tmp_path):
    monkeypatch.setenv(browser.ENV_VAR, str(tmp_path / "missing"))
    with pytest.raises(BrowserUnavailableError, match=r"LABKIT_CHROMIUM=.*missing is not an executable file"):
        find_chromium()


def test_find_looks_on_path_then_at_playwrights_download(monkeypatch, tmp_path):
    monkeypatch.delenv(browser.ENV_VAR, raising=False)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    downloaded = tmp_path / "chrome-linux" / "chrome"
    monkeypatch.setattr(browser, "_playwright_chromium", lambda: downloaded)
    assert find_chromium() is None  # nothing on PATH, Playwright's download not there
    downloaded.parent.mkdir()
    downloaded.write_text("#!/bin/sh\n")
    downloaded.chmod(0o755)
    assert find_chromium() == downloaded
    on_path = bin_dir / "chromium-browser"
    on_path.write_text("#!/bin/sh\n")
    on_path.chmod(0o755)
    assert find_chromium() == on_path


def test_apt_install_runs_update_then_noninteractive_install(monkeypatch):
    runs = []

    def fake_run(cmd, env, **kwargs):
        runs.append((cmd, env.get("DEBIAN_FRONTEND")))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(browser.subprocess, "run", fake_run)
    assert browser._apt_install() == (True, "")
    assert runs == [(["apt-get", "update", "-qq"], "noninteractive"),
                    (["apt-get", "install", "-y", "-qq", "chromium"], "noninteractive")]


def test_playwright_install_reports_the_download_failure(monkeypatch):
    def fake_run(cmd, **kwargs):
        assert cmd[1:] == ["-m", "playwright", "install", "chromium"]
        return subprocess.CompletedProcess(cmd, 1, "", PLAYWRIGHT_OFFLINE)

    monkeypatch.setattr(browser.subprocess, "run", fake_run)
    ok, problem = browser._playwright_install()
    assert not ok
    assert problem == ("Error: Failed to download Chrome for Testing 159.0.8154.6 (playwright chromium v1255), "
                       "caused by / Error: Download failure, code=1")
