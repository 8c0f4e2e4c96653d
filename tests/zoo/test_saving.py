"""Atomic saves: a save stopped by a kill or a full disk leaves the previous file whole, and no partial one."""

import errno
import os
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path
from typing import BinaryIO

import pytest
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from sb3_stpn import StpnPPO
from sb3_stpn.zoo.patches import atomic_saves
from sb3_stpn.zoo.saving import atomic_write, checkpoint_vec_normalize_path, load_problem

REPO = Path(__file__).resolve().parents[2]
# Saves a good model, then saves it again with torch's tensor writer stalled mid-zip, to be killed there
KILLED_SAVE = """
import sys, time
import torch as th
from sb3_stpn import StpnPPO
from sb3_stpn.zoo.patches import atomic_saves

path, atomic = sys.argv[1], sys.argv[2] == "atomic"
model = StpnPPO("MlpStpnPolicy", "CartPole-v1", n_steps=8, policy_kwargs=dict(stpn_hidden_size=4))
model.save(path)
save = th.save


def stalled_save(*args, **kwargs):
    save(*args, **kwargs)
    print("saving", flush=True)
    time.sleep(600)


th.save = stalled_save
if atomic:
    with atomic_saves():
        model.save(path)
else:
    model.save(path)
"""


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "model.zip"
    target.write_bytes(b"the good one")

    def full_disk(file: BinaryIO) -> None:
        file.write(b"half of it")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        atomic_write(target, full_disk)
    assert target.read_bytes() == b"the good one" and os.listdir(tmp_path) == ["model.zip"]
    atomic_write(target, lambda file: file.write(b"the new one"))
    assert target.read_bytes() == b"the new one" and os.listdir(tmp_path) == ["model.zip"]


@pytest.mark.parametrize(
    "atomic", [True, pytest.param(False, marks=pytest.mark.xfail(strict=True, reason="SB3 writes in place"))]
)
def test_a_save_killed_midway_leaves_the_previous_model_loadable(atomic: bool, tmp_path: Path) -> None:
    target = tmp_path / "CartPole.zip"
    process = subprocess.Popen(
        [sys.executable, "-c", KILLED_SAVE, str(target), "atomic" if atomic else "plain"],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None and process.stdout.readline() == "saving\n"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    assert load_problem(target) is None  # the killed save's temporary file stays, hidden, never a model's name
    assert [path.name for path in tmp_path.iterdir() if not path.name.startswith(".")] == [target.name]
    assert len(list(tmp_path.glob(f".{target.name}.*.tmp"))) == 1
    with atomic_saves():
        StpnPPO.load(target).save(target)
    assert os.listdir(tmp_path) == [target.name]  # the next save removed the orphan


def test_the_next_save_removes_only_temporaries_of_dead_processes_on_this_host(tmp_path: Path) -> None:
    target = tmp_path / "model.zip"
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = socket.gethostname()
    orphan = tmp_path / f".model.zip.{host}.{finished.stdout.strip()}.abc123.tmp"
    live_writer = tmp_path / f".model.zip.{host}.{os.getpid()}.def456.tmp"
    other_host = tmp_path / f".model.zip.elsewhere.{finished.stdout.strip()}.ghi789.tmp"
    other_target = tmp_path / f".checkpoint.zip.{host}.{finished.stdout.strip()}.jkl012.tmp"
    for path in (orphan, live_writer, other_host, other_target):
        path.write_bytes(b"partial")
    atomic_write(target, lambda file: file.write(b"the new one"))
    assert sorted(os.listdir(tmp_path)) == sorted(["model.zip", live_writer.name, other_host.name, other_target.name])


def test_saves_are_atomic_and_named_as_sb3_names_them(tmp_path: Path) -> None:
    model = StpnPPO("MlpStpnPolicy", "CartPole-v1", n_steps=8, policy_kwargs=dict(stpn_hidden_size=4))
    stats = VecNormalize(DummyVecEnv([lambda: model.env.envs[0]]))
    with atomic_saves():
        model.save(tmp_path / "model")  # SB3 adds .zip
        model.save(str(tmp_path / "checkpoint.zip"))
        stats.save(str(tmp_path / "vecnormalize.pkl"))
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.zip", "model.zip", "vecnormalize.pkl"]
    assert load_problem(tmp_path / "model.zip") is None and load_problem(tmp_path / "checkpoint.zip") is None
    assert VecNormalize.load(str(tmp_path / "vecnormalize.pkl"), stats.venv).obs_rms.mean.shape == (4,)


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_saves_follow_the_umask_as_sb3_saves_do(umask: int, mode: int, tmp_path: Path) -> None:
    """mkstemp makes 0600 files: group-shared run folders got models their group could not read."""
    before = os.umask(umask)
    try:
        atomic_write(tmp_path / "model.zip", lambda file: file.write(b"saved"))
    finally:
        os.umask(before)
    assert stat.S_IMODE((tmp_path / "model.zip").stat().st_mode) == mode


def test_load_problem_names_what_is_wrong(tmp_path: Path) -> None:
    (tmp_path / "empty.zip").touch()
    assert "wasn't a zip-file" in load_problem(tmp_path / "empty.zip")  # type: ignore[operator]
    assert "FileNotFoundError" in load_problem(tmp_path / "missing.zip")  # type: ignore[operator]


def test_checkpoint_statistics_path() -> None:
    assert checkpoint_vec_normalize_path("run/rl_model_1024_steps.zip") == Path("run/rl_model_vecnormalize_1024_steps.pkl")
    assert checkpoint_vec_normalize_path("run/CartPole-v1.zip") is None
