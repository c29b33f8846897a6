"""Resuming a killed training run gives *exactly* the run that was never interrupted (DESIGN.md, checkpoint.py).

A real ``python -m labkit train`` process is killed with SIGKILL at an arbitrary moment (mid-epoch, and right
after an epoch boundary), resumed with ``--resume``, and compared with an uninterrupted run of the same command:
metrics.json (JSON equality), log.csv (text), the final checkpoint (every tensor ``torch.equal``) and
model_int.safetensors (every tensor and the metadata). While the runs train, checkpoint.pt is read again and
again and must always load (the atomic temp-file + rename write); a torn leftover ``*.tmp`` must not disturb
``--resume``. Also: resuming a finished run, and the errors for changed overrides and for an occupied folder.
"""
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from labkit.config import data_root
from labkit.train.checkpoint import atomic_torch_save

pytestmark = pytest.mark.skipif(not (data_root() / "cifar10").is_dir(),
                                reason=f"no CIFAR-10 under the data root {data_root()} (set LABKIT_DATA)")

RECIPE = "cifar10-resnet20"
OVERRIDES = ["train_subset=192", "eval_subset=64", "batch_size=16", "epochs=2", "checkpoint_every=1", "workers=0",
             "init_from=none"]
STEPS_PER_EPOCH = 192 // 16  # 12: a mid-epoch kill has ≥ 9 steps of margin however late the watcher looks
RUN_TIMEOUT = 180


def environment():
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", LABKIT_PROFILE="smoke", LABKIT_DATA=str(data_root()))
    return env


def command(out, *extra, overrides=OVERRIDES):
    return [sys.executable, "-m", "labkit", "train", "--recipe", RECIPE, "--out", str(out), "--quiet", *extra,
            *overrides]


def run(out, *extra, overrides=OVERRIDES):
    return subprocess.run(command(out, *extra, overrides=overrides), env=environment(), capture_output=True,
                          text=True, timeout=RUN_TIMEOUT)


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def fingerprint(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def assert_same(a, b, where="state"):
    """Recursive exact equality of checkpoint contents (tensors with torch.equal and the same dtype)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"{where} differs"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{where}: keys {sorted(set(a) ^ set(b))}"
        for key in a:
            assert_same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def assert_same_run(resumed: Path, reference: Path):
    assert json.loads((resumed / "metrics.json").read_text()) == json.loads((reference / "metrics.json").read_text())
    assert (resumed / "log.csv").read_text() == (reference / "log.csv").read_text()
    a, b = load(resumed / "checkpoint.pt"), load(reference / "checkpoint.pt")
    assert_same({k: v for k, v in a.items() if k != "rng"}, {k: v for k, v in b.items() if k != "rng"})
    ta, tb = load_file(resumed / "model_int.safetensors"), load_file(reference / "model_int.safetensors")
    assert_same(ta, tb, "model_int")
    with safe_open(resumed / "model_int.safetensors", "pt") as fa, safe_open(reference / "model_int.safetensors", "pt") as fb:
        assert fa.metadata() == fb.metadata()
    assert json.loads((resumed / "config.json").read_text()) == json.loads((reference / "config.json").read_text())


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run."""
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    started = time.time()
    result = run(out)
    assert result.returncode == 0, result.stderr
    assert "top-1" in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["budget"]["steps"] == 2 * STEPS_PER_EPOCH
    assert len((out / "log.csv").read_text().splitlines()) == 3
    return out, time.time() - started


class Watcher:
    """Starts the run, reads checkpoint.pt whenever it changes (it must always load), kills at a chosen moment."""

    def __init__(self, out: Path):
        self.out = out
        self.positions = []
        self.unreadable = []
        self.mtime = None

    def poll_checkpoint(self):
        path = self.out / "checkpoint.pt"
        try:
            mtime = path.stat().st_mtime_ns
        except FileNotFoundError:
            return None
        if mtime != self.mtime:
            self.mtime = mtime
            try:
                state = load(path)
            except Exception as error:  # a torn checkpoint
                self.unreadable.append(f"{type(error).__name__}: {error}")
                return None
            self.positions.append(dict(state["position"]))
        return self.positions[-1] if self.positions else None

    def run_and_kill(self, moment, delay: float = 0.0):
        process = subprocess.Popen(command(self.out), env=environment(), stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        deadline = time.time() + RUN_TIMEOUT
        try:
            while True:
                assert process.poll() is None, (
                    f"the run ended (rc {process.returncode}) before the kill moment; seen positions "
                    f"{self.positions}; stderr: {process.stderr.read()[-2000:]}")
                assert time.time() < deadline, "timed out waiting for the kill moment"
                position = self.poll_checkpoint()
                if moment(self.out, position):
                    break
                time.sleep(0.03)
            time.sleep(delay)
            assert process.poll() is None, "the run finished before it could be killed"
            os.kill(process.pid, signal.SIGKILL)
        finally:
            if process.poll() is None and process.returncode is None:
                process.kill()
            process.communicate(timeout=60)
        assert process.returncode == -signal.SIGKILL
        assert not self.unreadable, f"checkpoint.pt could not be read while the run wrote it: {self.unreadable}"
        assert not (self.out / "metrics.json").exists(), "the run was killed after it finished"
        return load(self.out / "checkpoint.pt")["position"]


def mid_epoch(out, position):
    return position is not None and position["epoch"] == 0 and position["batch"] >= 2


def after_epoch_boundary(out, position):
    return (out / "log.csv").exists()  # written right after the end-of-epoch-1 checkpoint


MOMENTS = {
    # (kill condition, extra wait before the kill, resume with the same overrides? , expected checkpoint epoch)
    "mid-epoch": (mid_epoch, 0.05, True, 0),
    "after-epoch-boundary": (after_epoch_boundary, 0.0, False, 1),
}


@pytest.mark.parametrize("moment", list(MOMENTS))
def test_sigkill_then_resume_equals_uninterrupted(tmp_path, reference, moment):
    condition, delay, same_overrides, epoch = MOMENTS[moment]
    out = tmp_path / "run"
    position = Watcher(out).run_and_kill(condition, delay)
    assert position["epoch"] == epoch, position
    if moment == "mid-epoch":
        assert 0 < position["batch"] < STEPS_PER_EPOCH, position
        # A kill during a checkpoint write leaves its temporary file behind: a torn one must not matter.
        torn = out / "checkpoint.pt.k1ll3d.tmp"
        torn.write_bytes((out / "checkpoint.pt").read_bytes()[: 100_000])
    before = (out / "checkpoint.pt").read_bytes()
    assert len(before) > 0
    result = run(out, "--resume", overrides=OVERRIDES if same_overrides else [])
    assert result.returncode == 0, result.stderr
    assert_same_run(out, reference[0])
    sessions = json.loads((out / "run.json").read_text())["sessions"]
    assert [s["resumed"] for s in sessions] == [True], "the killed session never finished; one resumed session"


def test_checkpoint_is_never_torn_when_the_writer_is_killed(tmp_path):
    """SIGKILL a process in the middle of atomic_torch_save of a big object: the old checkpoint stays whole."""
    target = tmp_path / "checkpoint.pt"
    old = {"format": "labkit-train/1", "value": torch.arange(10.0)}
    atomic_torch_save(old, target)
    old_bytes = target.read_bytes()
    script = ("import torch, sys; from labkit.train.checkpoint import atomic_torch_save; "
              "atomic_torch_save({'format': 'labkit-train/1', 'value': torch.ones(32, 1024, 1024)}, sys.argv[1])")
    process = subprocess.Popen([sys.executable, "-c", script, str(target)], env=environment())
    deadline = time.time() + 60
    killed_mid_write = False
    while process.poll() is None and time.time() < deadline:
        temporaries = list(tmp_path.glob("*.tmp"))
        if temporaries and any(t.stat().st_size > 0 for t in temporaries if t.exists()):
            os.kill(process.pid, signal.SIGKILL)
            killed_mid_write = True
            break
        time.sleep(0.001)
    process.wait(timeout=60)
    if not killed_mid_write:
        pytest.skip("the 128 MB write finished before it could be caught mid-way")
    assert target.read_bytes() == old_bytes, "the old checkpoint was changed by an unfinished write"
    assert torch.equal(load(target)["value"], old["value"])


def test_failed_write_keeps_the_old_checkpoint_and_no_temporary(tmp_path):
    target = tmp_path / "checkpoint.pt"
    atomic_torch_save({"a": torch.ones(3)}, target)
    old_bytes = target.read_bytes()
    with pytest.raises(Exception):
        atomic_torch_save({"a": torch.zeros(1000), "b": lambda: None}, target)  # unpicklable after some bytes
    assert target.read_bytes() == old_bytes
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_resume_of_a_finished_run_returns_at_once_with_the_same_metrics(tmp_path, reference):
    import shutil

    out = tmp_path / "done"
    shutil.copytree(reference[0], out)
    checkpoint, log = (out / "checkpoint.pt").read_bytes(), (out / "log.csv").read_text()
    result = run(out, "--resume")
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "metrics.json").read_text()) == json.loads((reference[0] / "metrics.json").read_text())
    assert (out / "checkpoint.pt").read_bytes() == checkpoint, "nothing was trained"
    assert (out / "log.csv").read_text() == log
    assert_same(load_file(out / "model_int.safetensors"), load_file(reference[0] / "model_int.safetensors"))
    session = json.loads((out / "run.json").read_text())["sessions"][-1]
    assert session["resumed"] is True and session["wall_time_s"] <= 1.0, session
    assert result.stdout.splitlines()[0] == run_stdout_first_line(reference[0])


def run_stdout_first_line(folder):
    metrics = json.loads((folder / "metrics.json").read_text())
    accuracy = "  ".join(f"{b}-bit {v:.2f}%" for b, v in metrics["accuracy"].items())
    return f"{RECIPE} (smoke profile) top-1: {accuracy}"


def one_line_error(result):
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1, (result.returncode, result.stderr[-2000:])
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("labkit train: error: ")
    return lines[0]


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory):
    """A run folder with a checkpoint but no result: killed right after its first periodic checkpoint."""
    out = tmp_path_factory.mktemp("killed") / "run"
    Watcher(out).run_and_kill(lambda o, position: position is not None)
    return out


@pytest.mark.parametrize("change", [["epochs=3"], ["lr=0.001"], ["bits=8,4"]])
def test_resume_with_changed_overrides_errors_clearly(killed_run, change):
    before = fingerprint(killed_run)
    overrides = [o for o in OVERRIDES if o.split("=")[0] != change[0].split("=")[0]] + change
    line = one_line_error(run(killed_run, "--resume", overrides=overrides))
    assert "--resume" in line and "override" in line
    assert fingerprint(killed_run) == before, "the folder was changed"


@pytest.mark.parametrize("which", ["finished", "killed"])
def test_new_run_into_an_occupied_folder_errors_and_deletes_nothing(reference, killed_run, which):
    out = reference[0] if which == "finished" else killed_run
    before = fingerprint(out)
    line = one_line_error(run(out))
    assert str(out) in line and "--resume" in line
    assert fingerprint(out) == before, "files were changed or deleted"


def test_resume_with_another_recipe_errors_clearly(killed_run, tmp_path):
    """--recipe names the run's recipe; resuming a cifar10-resnet20 run as cifar10-resnet20-432 must not silently
    continue the old recipe (nor train the new one into the old folder)."""
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(killed_run, out)
    before = fingerprint(out)
    cmd = command(out, "--resume")
    cmd[cmd.index(RECIPE)] = "cifar10-resnet20-432"
    result = subprocess.run(cmd, env=environment(), capture_output=True, text=True, timeout=RUN_TIMEOUT)
    line = one_line_error(result)
    assert "cifar10-resnet20" in line
    assert fingerprint(out) == before, "the folder was changed"
