"""labkit.config: data root, run profile and hardware summary conventions."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from labkit import config

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    monkeypatch.delenv("LABKIT_DATA", raising=False)
    monkeypatch.delenv("LABKIT_PROFILE", raising=False)


# ---------------------------------------------------------------------------------------------- data_root
def test_checkout_root_is_this_repository():
    assert config.checkout_root() == REPO


def test_data_root_defaults_to_checkout_data_folder(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # independent of where the process runs (nbval starts kernels in notebooks/)
    assert config.data_root() == REPO / "data"


def test_data_root_outside_a_checkout_is_cwd_data(monkeypatch, tmp_path):
    monkeypatch.setattr(config, "checkout_root", lambda: None)
    monkeypatch.chdir(tmp_path)
    assert config.data_root() == tmp_path / "data"


def test_data_root_empty_env_means_default(monkeypatch):
    monkeypatch.setenv("LABKIT_DATA", "  ")
    assert config.data_root() == REPO / "data"


def test_data_root_absolute_env(monkeypatch, tmp_path):
    monkeypatch.setenv("LABKIT_DATA", str(tmp_path))
    root = config.data_root()
    assert isinstance(root, Path)
    assert root == tmp_path


def test_data_root_relative_env_is_relative_to_checkout(monkeypatch, tmp_path):
    monkeypatch.setenv("LABKIT_DATA", "../shared/data")
    monkeypatch.chdir(tmp_path)
    assert config.data_root() == REPO / "../shared/data"


def test_data_root_relative_env_outside_checkout_is_relative_to_cwd(monkeypatch, tmp_path):
    monkeypatch.setattr(config, "checkout_root", lambda: None)
    monkeypatch.setenv("LABKIT_DATA", "some/where")
    monkeypatch.chdir(tmp_path)
    assert config.data_root() == tmp_path / "some/where"


def test_data_root_expands_user(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("LABKIT_DATA", "~/datasets")
    assert config.data_root() == tmp_path / "datasets"


# ------------------------------------------------------------------------------------------------ profile
def test_profile_default_is_laptop():
    assert config.profile() == "laptop"


def test_profile_empty_is_default(monkeypatch):
    monkeypatch.setenv("LABKIT_PROFILE", "")
    assert config.profile() == "laptop"


@pytest.mark.parametrize("name", ["smoke", "laptop", "paper"])
def test_profile_known_values(monkeypatch, name):
    monkeypatch.setenv("LABKIT_PROFILE", name)
    assert config.profile() == name


def test_profile_tolerates_case_and_spaces(monkeypatch):
    monkeypatch.setenv("LABKIT_PROFILE", " Smoke ")
    assert config.profile() == "smoke"


@pytest.mark.parametrize("bad", ["fast", "ci", "smoke,laptop", "0"])
def test_profile_unknown_value_lists_allowed(monkeypatch, bad):
    monkeypatch.setenv("LABKIT_PROFILE", bad)
    with pytest.raises(ValueError) as err:
        config.profile()
    msg = str(err.value)
    assert "LABKIT_PROFILE" in msg and repr(bad) in msg
    for allowed in ("smoke", "laptop", "paper"):
        assert allowed in msg
    assert isinstance(err.value, config.ConfigError)


# --------------------------------------------------------------------------------------- hardware_summary
def test_hardware_summary_cpu_only(monkeypatch):
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    s = config.hardware_summary()
    assert s.startswith("CPU: ")
    assert f"torch {torch.__version__}" in s
    assert s.endswith("CUDA: none")
    n = int(re.search(r", (\d+) cores?,", s).group(1))
    assert 1 <= n <= (os.cpu_count() or n)


def test_hardware_summary_names_cuda_device(monkeypatch):
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "Fake GPU 9000")
    assert config.hardware_summary().endswith("CUDA: Fake GPU 9000")


def test_cpu_model_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Test CPU @ 3.00GHz\n\n")
    assert config._cpu_model(info) == "Test CPU @ 3.00GHz"


def test_cpu_model_falls_back_without_cpuinfo(tmp_path):
    assert config._cpu_model(tmp_path / "missing")  # platform.processor()/machine() or "unknown CPU"
