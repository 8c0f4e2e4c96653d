"""End to end, as a user runs them: train.py then enjoy.py, as subprocesses, for ppo_stpn and ppo_lstm (the maze replay's
policy in-process)."""

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import rl_zoo3.import_envs  # noqa: F401  (registers CartPoleNoVel-v1)
import torch as th
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from sb3_stpn import StpnPPO
from sb3_stpn.cli import enjoy_main, train_main
from tests.helpers import ONE_THREAD, REPO, python_blocks, read_events, run_script

ENV = "CartPoleNoVel-v1"
# The CartPoleNoVel-v1 entry, shrunk to a couple of thousand steps in a few seconds
SHRINK = ["--hyperparams", "n_envs:2", "n_steps:64", "batch_size:128", "n_epochs:1"]


@pytest.mark.parametrize(("algo", "memory"), [("ppo_stpn", "STPN"), ("ppo_lstm", "LSTM")])
def test_train_then_enjoy(algo: str, memory: str, tmp_path: Path) -> None:
    run_script("train.py", "--algo", algo, "--env", ENV, "-n", "2048", "--seed", "0", *SHRINK, "--eval-freq", "1024",
               "--eval-episodes", "2", "--save-freq", "1024", "-tb", "tb", cwd=tmp_path)  # fmt: skip
    run = tmp_path / "logs" / algo / f"{ENV}_1"
    # The diagnostics callback is on by default, for both memories under one tag
    assert (
        "stpn/energy_per_step" in read_events(next((tmp_path / "tb").rglob("events.out.tfevents*")).parent).Tags()["scalars"]
    )
    for saved in (f"{ENV}.zip", "best_model.zip", "rl_model_1024_steps.zip", f"{ENV}/vecnormalize.pkl", f"{ENV}/config.yml"):
        assert (run / saved).is_file(), saved

    out = run_script("enjoy.py", "--algo", algo, "--env", ENV, "--no-render", "-n", "300", cwd=tmp_path).stdout
    returns = [float(value) for value in re.findall(r"Episode Reward: ([\d.]+)", out)]
    lengths = [int(value) for value in re.findall(r"Episode Length (\d+)", out)]
    energies = [float(value) for value in re.findall(rf"Episode mean {memory} energy per step: ([\d.e+-]+)", out)]
    assert returns and returns == lengths  # CartPole pays 1 per step
    assert len(energies) == len(returns) and all(energy > 0 for energy in energies)  # the last episode too
    assert re.search(rf"Mean {memory} energy per step over 300 steps: [\d.]", out)

    best = run_script("enjoy.py", "--algo", algo, "--env", ENV, "--no-render", "-n", "50", "--load-best", cwd=tmp_path)
    assert "best_model.zip" in best.stdout

    # rl_zoo3's evaluation plots (rl_zoo3[plots]: the zoo extra) read the run's evaluations
    plots = ["-m", "rl_zoo3.plots.all_plots", "-a", algo, "-e", ENV, "-f", "logs", "--no-display", "-o", "results"]
    run_script(*plots, cwd=tmp_path)
    assert (tmp_path / "results.pkl").is_file()


@pytest.mark.skipif(not th.cuda.is_available(), reason="needs a CUDA GPU")
def test_train_on_cuda(tmp_path: Path) -> None:
    """rl_zoo3's --device reaches StpnPPO."""
    out = run_script("train.py", "--env", ENV, "-n", "256", *SHRINK, "--eval-freq", "-1", "--device", "cuda", cwd=tmp_path)
    assert "Using cuda device" in out.stdout
    assert (tmp_path / "logs" / "ppo_stpn" / f"{ENV}_1" / f"{ENV}.zip").is_file()


def test_record_video(tmp_path: Path) -> None:
    run_script("train.py", "--env", ENV, "-n", "128", *SHRINK, "--eval-freq", "-1", cwd=tmp_path)
    out = run_script("enjoy.py", "--env", ENV, "--record", "-n", "40", "-o", "videos", cwd=tmp_path).stdout
    assert list((tmp_path / "videos").glob("*.mp4")), out
    assert "energy per step over 40 steps" in out


@pytest.mark.parametrize(("stop", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_and_sigterm_save_the_model(stop: signal.Signals, status: int, tmp_path: Path) -> None:
    """
    rl_zoo3 saves on KeyboardInterrupt; a SIGINT (Ctrl-C) or SIGTERM (a scheduler, docker stop) once training
    runs must leave the model on disk, then exit 128 + signal.
    """
    process = subprocess.Popen(
        [sys.executable, "-u", str(REPO / "train.py"), "--env", ENV, "-n", "1000000", *SHRINK, "--eval-freq", "-1"],
        cwd=tmp_path, env=ONE_THREAD, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    assert process.stdout is not None
    for line in process.stdout:
        if "total_timesteps" in line:  # the first rollout is logged: training is under way
            break
    process.send_signal(stop)
    out, _ = process.communicate(timeout=120)
    assert process.returncode == status, out[-3000:]
    assert (tmp_path / "logs" / "ppo_stpn" / f"{ENV}_1" / f"{ENV}.zip").is_file()


@pytest.mark.parametrize(("stop", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_during_the_final_save_stops_the_run_once_it_is_saved(
    stop: signal.Signals, status: int, tmp_path: Path
) -> None:
    """A signal that comes while the final model is written (its temporary file is there) waits for the save: the
    model and its statistics are on disk, and the run exits 128 + signal. (It used to cut the save short: no model.)"""
    big = [
        "--hyperparams",
        "n_envs:2",
        "n_steps:64",
        "batch_size:128",
        "n_epochs:1",
        "policy_kwargs:dict(stpn_hidden_size=1024)",
    ]
    process = subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), "--env", ENV, "-n", "128", *big, "--eval-freq", "-1"],
        cwd=tmp_path, env=ONE_THREAD, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    run = tmp_path / "logs" / "ppo_stpn" / f"{ENV}_1"
    deadline = time.monotonic() + 300
    while not list(run.glob(f".{ENV}.zip.*.tmp")):  # the final save has begun
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before its final save was seen"
        time.sleep(0.002)
    process.send_signal(stop)
    _, err = process.communicate(timeout=120)
    assert process.returncode == status, err[-3000:]
    assert StpnPPO.load(run / f"{ENV}.zip").policy.stpn_hidden_size == 1024
    assert isinstance(
        VecNormalize.load(str(run / ENV / "vecnormalize.pkl"), DummyVecEnv([lambda: gym.make(ENV)])), VecNormalize
    )


@pytest.mark.parametrize(("stop", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_enjoy_stopped_exits_128_plus_the_signal(stop: signal.Signals, status: int, tmp_path: Path) -> None:
    """rl_zoo3's enjoy catches the KeyboardInterrupt and ends as if it had run its steps: exit 0 before."""
    train_main(["--env", ENV, "-n", "64", *SHRINK, "--eval-freq", "-1", "-f", str(tmp_path / "logs")])
    process = subprocess.Popen(
        [sys.executable, "-u", str(REPO / "enjoy.py"), "--env", ENV, "--no-render", "-n", "100000000", "-f", "logs"],
        cwd=tmp_path, env=ONE_THREAD, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    assert process.stdout is not None
    for line in process.stdout:
        if "Episode Reward" in line:  # replaying
            break
    process.send_signal(stop)
    out, _ = process.communicate(timeout=60)
    assert process.returncode == status, out[-3000:]
    assert out.strip().splitlines()[-1] == f"stopped by {stop.name}" and "Traceback" not in out


@pytest.mark.parametrize(
    ("flags", "omp", "chosen"), [([], None, True), (["--num-threads", "2"], None, False), ([], "2", False)]
)
def test_one_torch_thread_on_cpu_unless_told(flags: list[str], omp: str | None, chosen: bool, tmp_path: Path) -> None:
    """The README's command took 26 min with torch's default threads beside other jobs, 4 min with one: one thread is the
    CLI's default on CPU, said once; --num-threads and OMP_NUM_THREADS still win."""
    environment = {key: value for key, value in ONE_THREAD.items() if key != "OMP_NUM_THREADS"}
    environment.update({"OMP_NUM_THREADS": omp} if omp else {})
    code = "import sys, torch; from sb3_stpn.cli import train_main; train_main(); print('threads', torch.get_num_threads())"
    argv = ["--env", ENV, "-n", "64", *SHRINK, "--eval-freq", "-1", *flags]
    out = subprocess.run([sys.executable, "-c", code, *argv], cwd=tmp_path, env=environment, capture_output=True,
                         text=True, timeout=300, check=True).stdout  # fmt: skip
    assert out.count("Using 1 torch thread on the CPU") == (1 if chosen else 0)
    assert out.strip().splitlines()[-1] == f"threads {1 if chosen else 2}"


def test_env_without_entry_with_a_text_mission(tmp_path: Path) -> None:
    """MiniGrid (Dict observation: a Text mission, a 7x7 image) trains and replays through the `default` entry."""
    minigrid = ["--env", "MiniGrid-Empty-5x5-v0", "--gym-packages", "minigrid"]
    run_script("train.py", *minigrid, "-n", "64", "--eval-freq", "-1",
               "--hyperparams", "n_envs:1", "n_steps:32", "batch_size:32", "n_epochs:1", cwd=tmp_path)  # fmt: skip
    assert (tmp_path / "logs" / "ppo_stpn" / "MiniGrid-Empty-5x5-v0_1" / "MiniGrid-Empty-5x5-v0.zip").is_file()
    out = run_script("enjoy.py", *minigrid, "--no-render", "-n", "20", cwd=tmp_path).stdout
    assert "STPN energy per step over 20 steps" in out


@pytest.mark.slow
def test_simultaneous_launches_each_keep_their_model(tmp_path: Path) -> None:
    """Runs started together with the same -f and env: one folder and one model each, none overwritten."""
    launches = 4
    command = [sys.executable, str(REPO / "train.py"), "--env", ENV, "-n", "128", *SHRINK, "--eval-freq", "-1"]
    processes = [subprocess.Popen(command, cwd=tmp_path, env=ONE_THREAD, stdout=subprocess.PIPE, text=True)
                 for _ in range(launches)]  # fmt: skip
    outputs = [process.communicate(timeout=600)[0] for process in processes]
    assert [process.returncode for process in processes] == [0] * launches
    logged = {re.search(r"Log path: (.*)", out).group(1).strip() for out in outputs}  # type: ignore[union-attr]
    assert len(logged) == launches
    runs = sorted((tmp_path / "logs" / "ppo_stpn").iterdir())
    assert [run.name for run in runs] == [f"{ENV}_{i}" for i in range(1, launches + 1)]
    assert all((run / f"{ENV}.zip").is_file() for run in runs)


# A signal to itself while the run is set up (its folder made, no model yet), as a scheduler may send it any time; the
# rest of the set-up runs (the file written after the signal), since a KeyboardInterrupt raised inside native code
# that calls back into Python (torch's optimiser construction imports torch._dynamo through nanobind) aborted the process
SIGNAL_DURING_SETUP = """
import os, pathlib, signal, sys, time
from sb3_stpn.cli import train_main
from sb3_stpn.zoo import StpnExperimentManager

create_callbacks = StpnExperimentManager.create_callbacks
stop = signal.Signals[sys.argv.pop(1)]


def create_callbacks_then_stop(self):
    create_callbacks(self)
    os.kill(os.getpid(), stop)
    time.sleep(0.2)
    pathlib.Path("set-up-went-on").touch()


StpnExperimentManager.create_callbacks = create_callbacks_then_stop
train_main(sys.argv[1:])
"""


@pytest.mark.parametrize(("stop", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_during_setup_waits_for_it_then_exits_and_leaves_no_model_less_folder(
    stop: signal.Signals, status: int, tmp_path: Path
) -> None:
    argv = [stop.name, "--env", ENV, "-n", "128", *SHRINK, "--eval-freq", "-1"]
    result = subprocess.run(
        [sys.executable, "-c", SIGNAL_DURING_SETUP, *argv], cwd=tmp_path, env=ONE_THREAD, capture_output=True, timeout=120
    )
    assert result.returncode == status, result.stderr[-3000:]
    assert (tmp_path / "set-up-went-on").is_file()
    assert result.stderr.decode().strip().splitlines()[-1] == f"stopped by {stop.name}"
    assert not list((tmp_path / "logs" / "ppo_stpn").iterdir())


@pytest.mark.parametrize(("flags", "deterministic"), [([], False), (["--deterministic"], True)])
def test_enjoy_replays_the_maze_with_the_sampled_policy(
    flags: list[str], deterministic: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As train.py evaluates it (a deterministic maze policy walks into a wall and scores 0); --deterministic overrides."""
    monkeypatch.chdir(tmp_path)
    maze = ["--env", "GridMaze-v0", "--hyperparams", "n_envs:2", "n_steps:16", "sequence_length:16", "batch_size:32"]
    train_main([*maze[:2], "-n", "32", "--eval-freq", "-1", *maze[2:], "n_epochs:1"])
    modes = []
    predict = StpnPPO.predict

    def spy(self, observation, state=None, episode_start=None, deterministic=False):
        modes.append(deterministic)
        return predict(self, observation, state, episode_start, deterministic)

    monkeypatch.setattr(StpnPPO, "predict", spy)
    enjoy_main([*maze[:2], "--no-render", "-n", "5", *flags])
    assert modes and set(modes) == {deterministic}


def test_enjoy_prints_the_energy_of_every_episode_the_last_included(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The maze's episodes are 200 steps: -n 400 ends two, and each gets its energy line (the last one had none)."""
    monkeypatch.chdir(tmp_path)
    maze = ["--env", "GridMaze-v0", "--hyperparams", "n_envs:2", "n_steps:16", "sequence_length:16", "batch_size:32"]
    train_main([*maze[:2], "-n", "32", "--eval-freq", "-1", *maze[2:], "n_epochs:1"])
    capsys.readouterr()
    enjoy_main([*maze[:2], "--no-render", "-n", "400"])
    out = capsys.readouterr().out
    assert out.count("Episode Reward") == 2 and out.count("Episode mean STPN energy per step") == 2


def test_readme_loads_a_zoo_run_with_its_normalisation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's snippet, run as written on a fresh run: the env it builds holds the run's saved statistics."""
    (snippet,) = [block for _, block in python_blocks(REPO / "README.md") if "get_saved_hyperparams" in block]
    monkeypatch.chdir(tmp_path)
    train_main(["--env", ENV, "-n", "256", "--eval-freq", "-1", *SHRINK])
    namespace: dict = {}
    exec(snippet, namespace)
    env, saved = namespace["env"], VecNormalize.load(f"logs/ppo_stpn/{ENV}_1/{ENV}/vecnormalize.pkl", namespace["env"])
    assert isinstance(env, VecNormalize) and not env.training and not env.norm_reward
    assert env.obs_rms.count == saved.obs_rms.count > 1 and np.array_equal(env.obs_rms.mean, saved.obs_rms.mean)
