"""Bad input to stpn-train / stpn-enjoy: one ``error:`` line naming the fix, a non-zero exit, nothing lost."""

import errno
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, BinaryIO, NoReturn

import pytest
import torch as th
import yaml
from rl_zoo3.utils import ALGOS
from stable_baselines3.common import base_class

from sb3_stpn.cli import enjoy_main, train_main
from sb3_stpn.ops.stpn import dispatch
from sb3_stpn.zoo.saving import load_problem
from tests.helpers import ONE_THREAD, REPO, check_one_line_error

ENV = "CartPoleNoVel-v1"
# Enough to reach the model, never enough to train for long if a check fails to fire
TINY = ["-n", "16", "--eval-freq", "-1", "--hyperparams", "n_envs:1", "n_steps:8", "batch_size:8", "n_epochs:1"]
NAN_ENV_MODULE = """
import gymnasium as gym
import numpy as np


class NanEnv(gym.Env):
    observation_space = gym.spaces.Box(-1, 1, (2,))
    action_space = gym.spaces.Discrete(2)

    def reset(self, seed=None, options=None):
        return np.zeros(2, dtype=np.float32), {}

    def step(self, action):
        return np.full(2, np.nan, dtype=np.float32), 0.0, False, False, {}


gym.register("NanEnv-v0", entry_point=NanEnv, max_episode_steps=50)


class CrashingEnv(NanEnv):
    def step(self, action):
        raise RuntimeError("the simulator crashed")


gym.register("CrashingEnv-v0", entry_point=CrashingEnv, max_episode_steps=50)
"""
# Decays of 1000 without normalisation: F, then the gradients and the weights, overflow within a few rollouts
# clamp=None: the override merges into the entry's stpn_kwargs, whose clamp would bound F
DIVERGING = "policy_kwargs:dict(stpn_kwargs=dict(normalize=False, clamp=None, lambda_init=(1000.0, 1000.0)))"
# A Python config (rl_zoo3 reads a dict ``hyperparams``) whose entry lacks n_timesteps
NO_BUDGET_CONFIG = f"hyperparams = {{'{ENV}': dict(policy='MlpStpnPolicy', n_steps=8)}}\n"


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A log folder holding one (fake) saved model, to check that no bad input touches it."""
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "logs" / "ppo_stpn" / f"{ENV}_1"
    run.mkdir(parents=True)
    (run / f"{ENV}.zip").write_bytes(b"a model that must survive")
    (tmp_path / "bad.yml").write_text(f"{ENV}:\n  n_steps: [8\n")
    (tmp_path / "list.yml").write_text("- just a list\n")
    (tmp_path / "corrupt.zip").write_bytes(b"not a zip")
    (tmp_path / "nan_env.py").write_text(NAN_ENV_MODULE)
    (tmp_path / "no_budget.py").write_text(NO_BUDGET_CONFIG)
    (tmp_path / "config.json").write_text("{}")
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def snapshot(folder: Path) -> dict[str, str]:
    """Every saved model (by content) and every run folder (``<env>_<id>``) under ``folder``."""
    models = {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest() for path in folder.rglob("*.zip")}
    runs = {str(path.relative_to(folder)): "run" for path in folder.rglob("*_[0-9]*") if path.is_dir()}
    return models | runs


TRAIN_CASES = {
    "unknown env": (["--env", "CartPoleNoVel-v9"], "unknown environment CartPoleNoVel-v9 (did you mean CartPoleNoVel-v1?)"),
    "algo without config": (["--algo", "ppo_stpn", "--env", ENV, "-conf", "missing.yml"], "cannot read the config"),
    "malformed yaml": (["--env", ENV, "-conf", "bad.yml"], "malformed YAML in bad.yml at line 3"),
    "yaml not a mapping": (["--env", ENV, "-conf", "list.yml"], "must map environment ids"),
    "unknown hyperparameter": (["--env", ENV, *TINY, "n_stepz:8"], "unknown hyperparameter for StpnPPO 'n_stepz'"),
    "unknown policy kwarg": (["--env", ENV, *TINY, "policy_kwargs:dict(stpn_hiden_size=8)"], "'stpn_hiden_size'"),
    "unknown stpn kwarg": (["--env", ENV, *TINY, "policy_kwargs:dict(stpn_kwargs=dict(clmp=1.0))"], "stpn_kwargs key 'clmp'"),
    "unknown policy": (["--env", ENV, *TINY, "policy:'MlpPolicy'"], "unknown policy 'MlpPolicy'"),
    "missing -i": (["--env", ENV, *TINY, "-i", "missing.zip"], "trained agent missing.zip not found"),
    "corrupt -i": (["--env", ENV, *TINY, "-i", "corrupt.zip"], "corrupt.zip is not a model saved by SB3"),
    "nan observation": (["--env", "NanEnv-v0", "--gym-packages", "nan_env", *TINY], "found nan in observations"),
    "negative -n": (["--env", ENV, "-n", "-5"], "-n must be a positive number of steps, got -5"),
    "json config": (["--env", ENV, "-conf", "config.json"], "-conf config.json: rl_zoo3 reads .yml/.yaml files"),
    "python config without n_timesteps": (["--env", ENV, "-conf", "no_budget.py"], "no n_timesteps in the CartPoleNoVel-v1"),
    "-f a file": (["--env", ENV, *TINY, "-f", "bad.yml"], "-f bad.yml is a file"),
    "-f below a file": (["--env", ENV, *TINY, "-f", "bad.yml/logs"], "cannot write logs to -f bad.yml/logs (Not a directory)"),
    "negative n_steps": (["--env", ENV, *TINY, "n_steps:-5"], "n_steps must be a positive integer, got -5"),
    "boolean n_epochs": (["--env", ENV, *TINY, "n_epochs:True"], "n_epochs must be a positive integer, got True"),
    "value not Python": (["--env", ENV, *TINY, "n_steps:abc"], "malformed --hyperparams value 'n_steps:abc' (NameError"),
    "pair without colon": (["--env", ENV, *TINY, "n_steps"], "malformed --hyperparams value 'n_steps' (ValueError: no ':'"),
    "unclosed dict": (["--env", ENV, *TINY, "policy_kwargs:dict("], "malformed --hyperparams value 'policy_kwargs:dict('"),
    "unknown env kwarg": (["--env", ENV, *TINY, "--env-kwargs", "bogus:1"], "does not take the env kwargs {'bogus': 1}"),
    "unknown device": (["--env", ENV, *TINY, "--device", "bogus"], "--device bogus is not a torch device"),
    "net_arch torch rejects": (
        ["--env", ENV, *TINY, "policy_kwargs:dict(net_arch=[-1])"],
        "cannot set up ppo_stpn on CartPoleNoVel-v1 (RuntimeError: Trying to create tensor with negative dimension -1",
    ),
    "diverged": (["--env", ENV, *TINY, DIVERGING, "--seed", "0", "-n", "64"], "training diverged at step 16: STPN(4, 64,"),
}


@pytest.mark.parametrize("case", TRAIN_CASES)
def test_train_rejects_bad_input(case: str, workdir: Path) -> None:
    argv, expected = TRAIN_CASES[case]
    before = snapshot(workdir / "logs")
    with pytest.raises(SystemExit) as exit_info:
        train_main(argv)
    check_one_line_error(exit_info.value.code, expected)
    assert snapshot(workdir / "logs") == before


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("bogus", "SB3_STPN_KERNEL='bogus' is not a kernel path: use one of auto, reference, torch, cpp, triton"),
        ("triton", "SB3_STPN_KERNEL=triton needs float32/float64 CUDA tensors"),
        ("cpp", "SB3_STPN_KERNEL=cpp but the C++ kernel could not be built"),
    ],
)
def test_a_kernel_path_that_cannot_run_is_one_line_at_start(
    value: str, expected: str, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each used to be a traceback from the first rollout step."""
    monkeypatch.setenv("SB3_STPN_KERNEL", value)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(dispatch, "_cpp_ops", lambda: None)  # as without a compiler
    for main, argv in ((train_main, ["--env", ENV, *TINY]), (enjoy_main, ["--env", ENV, "--no-render", "-n", "5"])):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        check_one_line_error(exit_info.value.code, expected)


@pytest.mark.parametrize("value", ["", " cpp", "CPP"])
def test_a_kernel_path_as_a_shell_user_may_type_it_runs(value: str, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Empty means unset; spaces and case do not matter."""
    monkeypatch.setenv("SB3_STPN_KERNEL", value)
    train_main(["--env", ENV, *TINY, "-f", "kernel_logs"])
    assert list((workdir / "kernel_logs").rglob(f"{ENV}.zip"))


@pytest.mark.parametrize(
    ("main", "argv", "module", "extra"),
    [
        (train_main, ["--env", "MiniGrid-MemoryS7-v0"], "minigrid", "envs"),
        (train_main, ["--env", "PongNoFrameskip-v4"], "ale_py", "envs"),
        (train_main, ["--env", "HalfCheetah-v5"], "mujoco", "envs"),
        (train_main, ["--env", "popgym-RepeatFirstEasy-v0"], "popgym", "bench"),
        (enjoy_main, ["--env", "MiniGrid-MemoryS7-v0"], "minigrid", "envs"),
        (enjoy_main, ["--env", ENV, "--record"], "pygame", "envs"),
        (enjoy_main, ["--env", ENV, "--record"], "moviepy", "zoo"),
    ],
)
def test_a_missing_extra_is_named(
    main: Callable[[list[str]], None], argv: list[str], module: str, extra: str, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the extra, MiniGrid was "unknown environment ... --gym-packages MODULE" and --record a traceback."""
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None if name == module else find_spec(name, *args))
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    check_one_line_error(
        exit_info.value.code, f'needs the {module} package, which is not installed; pip install "sb3-stpn[{extra}]"'
    )


@pytest.fixture
def unwritable_folder(tmp_path: Path) -> Path:
    """A folder nobody may write in: read-only permissions, or for root (who ignores them) a path in sysfs."""
    if os.geteuid() != 0:
        folder = tmp_path / "read_only"
        folder.mkdir(mode=0o555)
        return folder / "logs"
    if not Path("/sys/kernel").is_dir():
        pytest.skip("running as root without sysfs: no folder is unwritable")
    return Path("/sys/kernel/sb3_stpn_logs")


def test_train_rejects_an_unwritable_log_folder(workdir: Path, unwritable_folder: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        train_main(["--env", ENV, *TINY, "-f", str(unwritable_folder)])
    check_one_line_error(exit_info.value.code, f"cannot write logs to -f {unwritable_folder}")


@pytest.mark.parametrize("main", [train_main, enjoy_main])
def test_unknown_algo_lists_every_algo(main: Callable[[list[str]], None], workdir: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--algo", "ppo_stpm", "--env", ENV])
    check_one_line_error(exit_info.value.code, "invalid choice: 'ppo_stpm'")
    assert all(f"'{algo}'" in str(exit_info.value.code) for algo in ALGOS)


def test_any_failure_removes_the_run_folder(workdir: Path) -> None:
    """Not only the project's own errors: an env that crashes mid-training leaves no model-less run folder."""
    before = snapshot(workdir / "logs")
    with pytest.raises(RuntimeError, match="the simulator crashed"):
        train_main(["--env", "CrashingEnv-v0", "--gym-packages", "nan_env", *TINY])
    assert snapshot(workdir / "logs") == before


def test_continue_from_another_algorithms_model(workdir: Path, tmp_path: Path) -> None:
    """A real ppo_stpn model given to ppo_lstm: refused in one line, the model and the log folders untouched."""
    train_main(["--env", ENV, *TINY, "-f", str(tmp_path / "other")])
    model = tmp_path / "other" / "ppo_stpn" / f"{ENV}_1" / f"{ENV}.zip"
    before = snapshot(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        train_main(["--algo", "ppo_lstm", "--env", ENV, *TINY, "-i", str(model)])
    check_one_line_error(exit_info.value.code, "cannot continue from")
    assert snapshot(tmp_path) == before


def test_enjoy_without_trained_agent(workdir: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        enjoy_main(["--env", "Pendulum-v1", "--no-render"])
    check_one_line_error(exit_info.value.code, "no trained ppo_stpn agent for Pendulum-v1 in logs")


ENJOY_CASES = {
    "negative -n": (["--env", ENV, "-n", "-5"], "-n must be a positive number of steps, got -5"),
    "unknown env": (["--env", "CartPoleNoVel-v9"], "unknown environment CartPoleNoVel-v9"),
}


@pytest.mark.parametrize("case", ENJOY_CASES)
def test_enjoy_rejects_bad_input(case: str, workdir: Path) -> None:
    argv, expected = ENJOY_CASES[case]
    with pytest.raises(SystemExit) as exit_info:
        enjoy_main([*argv, "--no-render"])
    check_one_line_error(exit_info.value.code, expected)


def test_enjoy_skips_runs_without_a_model(workdir: Path) -> None:
    """A later run folder without a model (a failed or running run) is passed over for the latest one holding one."""
    (workdir / "logs" / "ppo_stpn" / f"{ENV}_2").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        enjoy_main(["--env", ENV, "--no-render"])
    # Run 1's (fake) model was the one picked
    check_one_line_error(exit_info.value.code, f"cannot load logs/ppo_stpn/{ENV}_1/{ENV}.zip")


def test_enjoy_corrupt_model(workdir: Path) -> None:
    before = snapshot(workdir / "logs")
    with pytest.raises(SystemExit) as exit_info:
        enjoy_main(["--env", ENV, "--no-render"])
    check_one_line_error(exit_info.value.code, f"cannot load logs/ppo_stpn/{ENV}_1/{ENV}.zip")
    assert snapshot(workdir / "logs") == before


@pytest.mark.parametrize(
    ("script", "argv"), [("train.py", ["--env", "CartPoleNoVel-v9"]), ("enjoy.py", ["--env", ENV, "--no-render"])]
)
def test_scripts_print_one_line_and_no_traceback(script: str, argv: list[str], workdir: Path) -> None:
    """The real processes: exit status 1 and a single stderr line, no traceback."""
    result = subprocess.run(
        [sys.executable, str(REPO / script), *argv], capture_output=True, text=True, timeout=120, env=os.environ
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture
def trained_run(tmp_path: Path) -> Path:
    """A real run trained in -f tmp_path/logs, with checkpoints at 8 and 16 steps."""
    train_main(["--env", ENV, *TINY, "--save-freq", "8", "-f", str(tmp_path / "logs")])
    return tmp_path / "logs" / "ppo_stpn" / f"{ENV}_1"


def test_enjoy_passes_over_a_later_run_whose_model_does_not_load(
    trained_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run killed while saving leaves a 0-byte model: enjoy takes the earlier good run and says which it skipped."""
    broken = trained_run.with_name(f"{ENV}_2")
    shutil.copytree(trained_run, broken)
    (broken / f"{ENV}.zip").write_bytes(b"")
    capsys.readouterr()
    enjoy_main(["--env", ENV, "--no-render", "-n", "5", "-f", str(trained_run.parents[1])])
    out, err = capsys.readouterr()
    assert f"Loading {trained_run / ENV}.zip" in out
    assert f"Skipping {broken / ENV}.zip, which does not load" in err and len(err.strip().splitlines()) == 1


def test_enjoy_last_checkpoint_passes_over_a_truncated_one(trained_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    latest = trained_run / "rl_model_16_steps.zip"
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])
    capsys.readouterr()
    enjoy_main(["--env", ENV, "--no-render", "-n", "5", "-f", str(trained_run.parents[1]), "--load-last-checkpoint"])
    out, err = capsys.readouterr()
    assert f"Loading {trained_run / 'rl_model_8_steps.zip'}" in out and f"Skipping {latest}" in err


def test_continue_with_other_policy_kwargs_is_refused(trained_run: Path, tmp_path: Path) -> None:
    """rl_zoo3 dropped them silently: the run trained the loaded model and recorded the ignored kwargs."""
    with pytest.raises(SystemExit) as exit_info:
        train_main(["--env", ENV, *TINY, "policy_kwargs:dict(stpn_hidden_size=16)", "-i", str(trained_run / f"{ENV}.zip"),
                    "-f", str(tmp_path / "more")])  # fmt: skip
    check_one_line_error(exit_info.value.code, "continues the policy it was saved with, so policy_kwargs in --hyperparams")
    assert not (tmp_path / "more").exists() or not list((tmp_path / "more").rglob("*.zip"))


def test_continue_from_a_zip_that_does_not_load(trained_run: Path, tmp_path: Path) -> None:
    """A zip with SB3's entries whose tensors are cut short passes the zip checks; -i refuses it in one line."""
    broken = tmp_path / "broken.zip"
    with zipfile.ZipFile(trained_run / f"{ENV}.zip") as source, zipfile.ZipFile(broken, "w") as target:
        for name in source.namelist():
            content = source.read(name)
            target.writestr(name, content[: len(content) // 2] if name.endswith(".pth") else content)
    with pytest.raises(SystemExit) as exit_info:
        train_main(["--env", ENV, *TINY, "-i", str(broken), "-f", str(tmp_path / "logs")])
    check_one_line_error(exit_info.value.code, f"cannot continue from {broken}, which does not load")


@pytest.mark.parametrize(
    ("name", "damage"),
    [
        ("vecnormalize.pkl", "empty"),
        ("vecnormalize.pkl", "truncated"),
        ("config.yml", "truncated"),
        ("args.yml", "garbage"),
    ],
)
def test_enjoy_a_run_with_a_damaged_saved_file_is_one_line(name: str, damage: str, trained_run: Path) -> None:
    """A run killed while writing these, or a full disk, left a traceback in rl_zoo3's enjoy."""
    path = trained_run / ENV / name
    content = path.read_bytes()
    path.write_bytes({"empty": b"", "truncated": content[: len(content) // 3], "garbage": b"{[: not yaml"}[damage])
    with pytest.raises(SystemExit) as exit_info:
        enjoy_main(["--env", ENV, "--no-render", "-n", "5", "-f", str(trained_run.parents[1])])
    check_one_line_error(exit_info.value.code, f"cannot read {path}, which is damaged (")


def test_enjoy_a_run_without_its_config_keeps_its_normalisation(trained_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """rl_zoo3 takes "normalize" from config.yml alone: without it the policy got raw observations, silently."""
    (trained_run / ENV / "config.yml").unlink()
    capsys.readouterr()
    enjoy_main(["--env", ENV, "--no-render", "-n", "5", "-f", str(trained_run.parents[1])])
    out, err = capsys.readouterr()
    assert "Loading running average" in out  # rl_zoo3's line as it wraps the env in the saved VecNormalize
    assert f"warning: no config.yml in {trained_run / ENV}: normalising with its vecnormalize.pkl" in err


def test_enjoy_a_checkpoint_of_a_killed_normalised_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A killed run has checkpoints but no final model or vecnormalize.pkl: each checkpoint runs with its own
    statistics; without them, one error line instead of rl_zoo3's traceback."""
    logs = tmp_path / "logs"
    train_main(["--env", ENV, *TINY, "normalize:True", "--save-freq", "8", "-f", str(logs)])
    run = logs / "ppo_stpn" / f"{ENV}_1"
    (run / f"{ENV}.zip").unlink()
    (run / ENV / "vecnormalize.pkl").unlink()
    capsys.readouterr()
    enjoy_main(["--env", ENV, "--no-render", "-n", "5", "-f", str(logs), "--load-checkpoint", "8"])
    assert f"statistics saved with the checkpoint: {run / 'rl_model_vecnormalize_8_steps.pkl'}" in capsys.readouterr().out
    (run / "rl_model_vecnormalize_16_steps.pkl").unlink()
    with pytest.raises(SystemExit) as exit_info:
        enjoy_main(["--env", ENV, "--no-render", "-n", "5", "-f", str(logs), "--load-checkpoint", "16"])
    check_one_line_error(exit_info.value.code, f"no VecNormalize statistics for {run / 'rl_model_16_steps.zip'}")


def test_divergence_leaves_the_last_checkpoint_intact(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    with pytest.raises(SystemExit) as exit_info:
        train_main(["--env", ENV, *TINY, DIVERGING, "--seed", "0", "-n", "64", "--save-freq", "8", "-f", str(logs)])
    checkpoint = logs / "ppo_stpn" / f"{ENV}_1" / "rl_model_16_steps.zip"
    check_one_line_error(exit_info.value.code, "its own parameters weight, bias, weight_lambda, weight_gamma are inf or NaN")
    check_one_line_error(exit_info.value.code, f"the last checkpoint, {checkpoint}, is intact")
    assert load_problem(checkpoint) is None


def full_disk(file: IO, start: bytes | str = b"the start of a file") -> NoReturn:
    file.write(start)
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_at_start_is_one_line_and_leaves_no_run(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """rl_zoo3 writes config.yml first: out of space there, the run folder with its partial file goes."""
    before = snapshot(workdir / "logs")
    monkeypatch.setattr(yaml, "dump", lambda data, file, **kwargs: full_disk(file, "algo: "))
    with pytest.raises(SystemExit) as exit_info:
        train_main(["--env", ENV, *TINY])
    check_one_line_error(exit_info.value.code, "No space left on device; free some space or pass -f a folder on another disk")
    assert snapshot(workdir / "logs") == before and not (workdir / "logs" / "ppo_stpn" / f"{ENV}_2").exists()


# A run whose TensorBoard writer thread finds the disk full (pytest would catch the thread's traceback in-process)
FULL_DISK_UNDER_TENSORBOARD = """
import errno, os, sys
from tensorboard.summary.writer import record_writer
from sb3_stpn.cli import train_main

def full_disk(self, data):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

record_writer.RecordWriter.write = full_disk
train_main(sys.argv[1:])
"""


def test_a_full_disk_under_tensorboard_is_one_line(tmp_path: Path) -> None:
    """TensorBoard's writer thread printed its traceback around the one error line."""
    argv = ["--env", ENV, *TINY, "-n", "64", "-tb", "tb"]
    result = subprocess.run([sys.executable, "-c", FULL_DISK_UNDER_TENSORBOARD, *argv], cwd=tmp_path, env=ONE_THREAD,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    check_one_line_error(result.stderr.strip().splitlines()[-1], "No space left on device")


def test_a_full_disk_mid_run_keeps_the_last_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The second checkpoint runs out of space: one line naming it, the first intact, no partial file left."""
    saves = 0
    save_to_zip_file = base_class.save_to_zip_file

    def second_save_fills_the_disk(save_path: BinaryIO, *args: object, **kwargs: object) -> None:
        nonlocal saves
        saves += 1
        if saves == 2:
            full_disk(save_path)
        save_to_zip_file(save_path, *args, **kwargs)

    monkeypatch.setattr(base_class, "save_to_zip_file", second_save_fills_the_disk)
    logs = tmp_path / "logs"
    with pytest.raises(SystemExit) as exit_info:
        train_main(["--env", ENV, *TINY, "--save-freq", "8", "-f", str(logs)])
    run = logs / "ppo_stpn" / f"{ENV}_1"
    check_one_line_error(exit_info.value.code, f"No space left on device writing {run / 'rl_model_16_steps.zip'}; free")
    assert sorted(path.name for path in run.iterdir() if path.suffix in (".zip", ".tmp")) == ["rl_model_8_steps.zip"]
    assert load_problem(run / "rl_model_8_steps.zip") is None


def test_asking_for_cuda_without_it_warns(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(th.cuda, "is_available", lambda: False)
    with pytest.warns(UserWarning, match="'cuda' asks for CUDA, but torch sees no CUDA GPU here: running on the CPU"):
        train_main(["--env", ENV, *TINY, "--device", "cuda", "-f", "cuda_logs"])
    assert (workdir / "cuda_logs" / "ppo_stpn" / f"{ENV}_1" / f"{ENV}.zip").is_file()


# Runs a script as if rl_zoo3 were not installed (a core install): importing it fails as a missing package does
WITHOUT_ZOO = """
import runpy, sys


class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "rl_zoo3":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)


sys.meta_path.insert(0, NotInstalled())
runpy.run_path(sys.argv[1], run_name="__main__")
"""


@pytest.mark.parametrize("script", ["train.py", "enjoy.py"])
def test_core_install_without_the_zoo_extra(script: str, workdir: Path) -> None:
    """The scripts (and console scripts) of a core install, without rl_zoo3, name the extra to install in one line."""
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_ZOO, str(REPO / script)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        'error: rl_zoo3 is not installed: stpn-train and stpn-enjoy need the zoo extra; pip install "sb3-stpn[zoo]"'
    ), result.stderr


def test_track_without_wandb(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # not installed
    before = snapshot(workdir / "logs")
    with pytest.raises(SystemExit) as exit_info:
        train_main(["--env", ENV, *TINY, "--track"])
    check_one_line_error(
        exit_info.value.code, "--track needs Weights & Biases (wandb), which is not installed; pip install wandb"
    )
    assert snapshot(workdir / "logs") == before
