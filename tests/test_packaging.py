"""pyproject.toml and environment.yml are one source of truth: both name exactly the same requirements."""

from __future__ import annotations

import importlib
import importlib.metadata as md
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = ROOT / "pyproject.toml"
ENV_YML = ROOT / "environment.yml"
PINNED = {"torch": "==2.14.1", "torchvision": "==0.29.1"}


# ------------------------------------------------------------------------------------------------ helpers
def load_pyproject() -> dict:
    with PYPROJECT.open("rb") as f:
        return tomllib.load(f)


def _parse_env_yml_by_lines(text: str) -> dict:
    """A tiny reader for the subset of YAML environment.yml uses (used only when PyYAML is missing)."""
    env: dict = {"dependencies": []}
    section = None
    in_pip = False
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        stripped = line.strip()
        if indent == 0:
            key, _, val = stripped.partition(":")
            section = key
            in_pip = False
            if val.strip():
                env[key] = val.strip()
            else:
                env.setdefault(key, [])
            continue
        if not stripped.startswith("- "):
            continue
        item = stripped[2:].strip()
        if section == "dependencies" and item == "pip:":
            pip_list: list[str] = []
            env["dependencies"].append({"pip": pip_list})
            in_pip = True
        elif section == "dependencies" and in_pip and indent > 2:
            pip_list.append(item)
        else:
            in_pip = False
            env[section].append(item)
    return env


def load_env_yml() -> dict:
    text = ENV_YML.read_text()
    try:
        import yaml
    except ImportError:  # pragma: no cover - PyYAML comes with jupyter, but keep the check runnable without it
        return _parse_env_yml_by_lines(text)
    return yaml.safe_load(text)


def norm(req: str | Requirement) -> tuple:
    """A requirement reduced to what matters: canonical name, extras, specifiers, marker."""
    r = req if isinstance(req, Requirement) else Requirement(req)
    return (
        canonicalize_name(r.name),
        tuple(sorted(r.extras)),
        ",".join(sorted(str(s) for s in r.specifier)),
        str(r.marker) if r.marker else "",
    )


def show(reqs) -> str:
    return "\n  ".join(sorted(repr(r) for r in reqs)) or "(none)"


def project_reqs(extras=("lab", "test")) -> list[str]:
    project = load_pyproject()["project"]
    strings = list(project["dependencies"])
    for name in extras:
        strings += project["optional-dependencies"][name]
    return strings


def env_pip_and_conda() -> tuple[list[str], list[str]]:
    env = load_env_yml()
    conda, pip = [], []
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            assert list(dep) == ["pip"], f"unexpected mapping in environment.yml dependencies: {dep}"
            pip += [str(x) for x in dep["pip"]]
        else:
            conda.append(str(dep))
    return conda, pip


# -------------------------------------------------------------------------------------------------- tests
def test_project_metadata():
    project = load_pyproject()["project"]
    assert project["name"] == "labkit"
    assert project["version"] == "0.1.0"
    assert project["requires-python"] == ">=3.11"
    assert load_pyproject()["build-system"]["build-backend"] == "setuptools.build_meta"


def test_console_script_exists_and_is_callable():
    scripts = load_pyproject()["project"]["scripts"]
    assert scripts.get("labkit") == "labkit.cli:main", scripts
    module_name, _, attr = scripts["labkit"].partition(":")
    assert callable(getattr(importlib.import_module(module_name), attr))


def test_extras_exist_and_test_contains_lab():
    extras = load_pyproject()["project"]["optional-dependencies"]
    assert {"lab", "test"} <= set(extras), sorted(extras)
    lab = {norm(r) for r in extras["lab"]}
    test = {norm(r) for r in extras["test"]}
    assert {n[0] for n in lab} >= {"jupyterlab", "ipywidgets", "anywidget", "nbformat"}
    assert {n[0] for n in test} >= {"pytest", "nbval", "hypothesis"}
    missing = lab - test
    assert not missing, f"the test extra must contain everything in lab; missing:\n  {show(missing)}"


def test_dev_extra_is_an_alias_of_test():
    extras = load_pyproject()["project"]["optional-dependencies"]
    if "dev" not in extras:
        pytest.skip("no dev extra")
    assert [norm(r) for r in extras["dev"]] == [norm("labkit[test]")]


def test_only_torch_and_torchvision_are_pinned():
    reqs = [Requirement(s) for s in project_reqs()]
    for r in reqs:
        name = canonicalize_name(r.name)
        ops = {s.operator for s in r.specifier}
        if name in PINNED:
            assert str(r.specifier) == PINNED[name], f"{name} must be pinned {PINNED[name]}, got {r.specifier}"
        else:
            assert not ops & {"==", "===", "~="}, f"{r}: only torch/torchvision carry exact pins"


def test_environment_yml_names_the_same_requirements_as_pyproject():
    env = load_env_yml()
    assert env["name"] == "labkit"
    assert env["channels"] == ["conda-forge"]
    conda, pip = env_pip_and_conda()
    assert "python=3.11" in conda and "pip" in conda, conda

    assert "-e ." in pip, "environment.yml must install the lab itself with '-e .'"
    env_reqs = [p for p in pip if p != "-e ."]
    assert len(env_reqs) == len({norm(p) for p in env_reqs}), f"duplicate requirements in environment.yml: {env_reqs}"

    in_env = {norm(p) for p in env_reqs}
    in_pyproject = {norm(p) for p in project_reqs()}
    only_env, only_pyproject = in_env - in_pyproject, in_pyproject - in_env
    assert not (only_env or only_pyproject), (
        "environment.yml and pyproject.toml (dependencies + lab + test) disagree:\n"
        f"only in environment.yml:\n  {show(only_env)}\n"
        f"only in pyproject.toml:\n  {show(only_pyproject)}"
    )


def test_conda_python_satisfies_requires_python():
    from packaging.specifiers import SpecifierSet

    conda, _ = env_pip_and_conda()
    python = next(c for c in conda if c.startswith("python="))
    assert python.split("=", 1)[1] in SpecifierSet(load_pyproject()["project"]["requires-python"])


@pytest.mark.parametrize("req", sorted(set(project_reqs())))
def test_installed_versions_satisfy_requirements(req):
    r = Requirement(req)
    try:
        installed = md.version(r.name)
    except md.PackageNotFoundError:
        pytest.fail(f"{r.name} is not installed; install the lab with: pip install -e \".[test]\"")
    assert r.specifier.contains(installed, prereleases=True), f"installed {r.name} {installed} does not satisfy {r}"


def test_pytest_config():
    ini = load_pyproject()["tool"]["pytest"]["ini_options"]
    assert ini["testpaths"] == ["tests", "notebooks"]
    assert any(m.split(":", 1)[0].strip() == "slow" for m in ini["markers"])
    assert not any(f.startswith("ignore") for f in ini.get("filterwarnings", [])), "don't hide warnings wholesale"


def test_line_reader_agrees_with_yaml():
    yaml = pytest.importorskip("yaml")
    text = ENV_YML.read_text()
    assert _parse_env_yml_by_lines(text) == yaml.safe_load(text)


def test_norm_detects_differences():
    """The comparison can fail: a changed specifier or a different extra is a different requirement."""
    assert norm("Foo_Bar>=1,<2") == norm("foo-bar<2,>=1")
    assert norm("foo>=1") != norm("foo>=2")
    assert norm("foo[x]") != norm("foo")


def test_package_version_matches_pyproject():
    import labkit
    from labkit.cli import version

    expected = load_pyproject()["project"]["version"]
    assert version() == expected, "installed metadata is stale: re-run pip install -e ."
    if hasattr(labkit, "__version__"):
        assert labkit.__version__ == expected, "labkit.__version__ and pyproject.toml's version differ"
