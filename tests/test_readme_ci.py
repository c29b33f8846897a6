"""The README's test command is exactly what .ci/run executes; the CLI entry points answer."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
CI_RUN = ROOT / ".ci" / "run"


def quick_start_commands() -> list[str]:
    """The shell commands in the README's "Quick start" section (lines of its ```bash blocks)."""
    text = README.read_text()
    m = re.search(r"^## Quick start\s*$(.*?)(?=^## )", text, re.M | re.S)
    assert m, "README.md has no '## Quick start' section"
    blocks = re.findall(r"```(?:bash|sh|console)?\n(.*?)```", m.group(1), re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def segments(command: str) -> list[str]:
    return [s.strip() for s in command.split("&&")]


def ci_command_lines() -> list[str]:
    """Non-comment lines of .ci/run, with a trailing `|| rc=$?`-style exit-code capture removed."""
    out = []
    for line in CI_RUN.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out.append(line.split(" || ", 1)[0].strip())
    return out


def readme_test_command() -> str:
    tests = [c for c in quick_start_commands() if "pytest" in c]
    assert len(tests) == 1, f"expected one test command in Quick start, found {tests}"
    return segments(tests[0])[-1]


def test_quick_start_has_exactly_two_commands_sharing_one_install():
    cmds = quick_start_commands()
    assert len(cmds) == 2, cmds
    lab, test = cmds
    assert "jupyter lab notebooks/" in lab
    assert "pytest" in test
    assert segments(lab)[:-1] == segments(test)[:-1], "both commands must install the lab the same way"


def test_ci_runs_the_readme_test_command_exactly():
    cmd = readme_test_command()
    assert cmd == "LABKIT_PROFILE=smoke .venv/bin/python -m pytest --nbval-lax tests notebooks"
    assert cmd in ci_command_lines(), f".ci/run does not run the README's test command:\n  {cmd}"


def test_ci_installs_the_way_the_readme_does():
    install = segments(quick_start_commands()[1])[1]
    assert install == '.venv/bin/pip install -e ".[test]"'
    assert install in ci_command_lines()


def test_ci_leaves_the_browser_to_the_test_command():
    """The README's test command provisions Chromium itself (labkit.browser); .ci/run must not do it first, or CI
    would no longer show that the command passes, as written, on a machine without a browser."""
    text = "\n".join(ci_command_lines())
    for setup in ("apt-get", "playwright install", "labkit.browser", "chromium"):
        assert setup not in text, f".ci/run sets up the browser itself ({setup!r}): leave it to the test command"


def test_ci_run_is_strict_bash_and_executable():
    text = CI_RUN.read_text()
    assert text.startswith("#!/usr/bin/env bash")
    assert "set -euo pipefail" in text
    assert CI_RUN.stat().st_mode & 0o111, ".ci/run must be executable"
    subprocess.run(["bash", "-n", str(CI_RUN)], check=True)


def test_python_m_labkit_version():
    out = subprocess.run([sys.executable, "-m", "labkit", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("labkit ")


def test_labkit_info(monkeypatch, tmp_path, capsys):
    from labkit import cli

    monkeypatch.setenv("LABKIT_PROFILE", "smoke")
    monkeypatch.setenv("LABKIT_DATA", str(tmp_path))
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "smoke" in out and str(tmp_path) in out and "torch" in out and "CPU:" in out


def test_labkit_info_rejects_unknown_profile(monkeypatch, capsys):
    from labkit import cli

    monkeypatch.setenv("LABKIT_PROFILE", "turbo")
    assert cli.main(["info"]) != 0
    err = capsys.readouterr().err
    assert "turbo" in err and "smoke" in err


def test_labkit_without_command_prints_help(capsys):
    from labkit import cli

    assert cli.main([]) == 2
    assert "info" in capsys.readouterr().err
