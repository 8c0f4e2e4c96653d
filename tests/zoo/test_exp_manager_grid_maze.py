"""StpnExperimentManager steps the GridMaze ids' mazes in one GridMazeVecEnv, keeping rl_zoo3's wrappers, seeding,
eval env and monitor logs, and a short StpnPPO run trains on it."""

import argparse
from pathlib import Path

import numpy as np
import pytest
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper, VecMonitor, VecNormalize

from sb3_stpn.envs import GridMazeVecEnv
from sb3_stpn.zoo import CONFIG_DIR, StpnExperimentManager
from sb3_stpn.zoo.finite import VecCheckFinite

# Small rollouts of whole (short) episodes
SHRINK = {"n_envs": 4, "n_steps": 50, "sequence_length": 50, "batch_size": 100, "n_epochs": 1}


def make_manager(env_id: str, log_folder: Path, seed: int = 0, **options) -> StpnExperimentManager:
    options = {"hyperparams": dict(SHRINK), "n_timesteps": 400, "eval_freq": -1, **options}
    return StpnExperimentManager(
        argparse.Namespace(),
        "ppo_stpn",
        env_id,
        str(log_folder),
        config=str(CONFIG_DIR / "ppo_stpn.yml"),
        verbose=0,
        seed=seed,
        log_interval=-1,
        **options,
    )


def wrappers(env: VecEnv) -> list[type]:
    """The VecEnv classes from the outermost wrapper in."""
    chain = [type(env)]
    while isinstance(env, VecEnvWrapper):
        env = env.venv
        chain.append(type(env))
    return chain


def mazes(env: VecEnv) -> GridMazeVecEnv:
    while isinstance(env, VecEnvWrapper):
        env = env.venv
    return env


@pytest.mark.parametrize(("env_id", "size"), [("GridMaze-v0", 13), ("GridMaze9x9-v0", 9)])
def test_grid_maze_ids_get_one_vectorised_env(env_id: str, size: int, tmp_path: Path) -> None:
    manager = make_manager(env_id, tmp_path, env_kwargs={"episode_length": 50})
    manager.setup_experiment()
    env = manager.create_envs(4)
    assert wrappers(env) == [VecCheckFinite, VecMonitor, GridMazeVecEnv]
    assert env.num_envs == 4
    assert mazes(env).maze.size == size and mazes(env).maze.episode_length == 50
    eval_env = manager.create_envs(2, eval_env=True)
    assert wrappers(eval_env) == [VecCheckFinite, VecMonitor, GridMazeVecEnv] and eval_env.num_envs == 2


def test_normalize_wraps_the_vectorised_mazes(tmp_path: Path) -> None:
    manager = make_manager("GridMaze9x9-v0", tmp_path, hyperparams={**SHRINK, "normalize": True})
    manager.setup_experiment()
    assert wrappers(manager.create_envs(4)) == [VecCheckFinite, VecNormalize, VecMonitor, GridMazeVecEnv]


def test_seed_fixes_the_reward_cells(tmp_path: Path) -> None:
    def reward_cells(seed: int) -> np.ndarray:
        manager = make_manager("GridMaze-v0", tmp_path / str(seed), seed=seed)
        manager.setup_experiment()
        env = manager.create_envs(16)
        env.reset()
        return mazes(env).reward_positions

    np.testing.assert_array_equal(reward_cells(1), reward_cells(1))
    assert not np.array_equal(reward_cells(1), reward_cells(2))


def test_stpn_ppo_trains_and_evaluates_on_the_vectorised_maze(tmp_path: Path) -> None:
    manager = make_manager("GridMaze9x9-v0", tmp_path, eval_freq=200, n_eval_episodes=2, env_kwargs={"episode_length": 50})
    model, _ = manager.setup_experiment()
    assert isinstance(mazes(model.get_env()), GridMazeVecEnv)
    manager.learn(model)
    assert model.num_timesteps == 400
    # Episodes reached SB3's logging (through the VecMonitor) and the evaluation
    assert len(model.ep_info_buffer) == 8 and all(info["l"] == 50 for info in model.ep_info_buffer)
    evaluations = np.load(Path(manager.save_path) / "evaluations.npz")
    assert evaluations["results"].shape == (2, 2) and (evaluations["ep_lengths"] == 50).all()
    monitor_rows = (Path(manager.save_path) / "0.monitor.csv").read_text().splitlines()
    assert len(monitor_rows) == 2 + 8


@pytest.mark.parametrize(
    ("env_id", "deterministic"), [("GridMaze9x9-v0", False), ("GridMaze-v0", False), ("CartPole-v1", True)]
)
def test_mazes_are_evaluated_with_the_sampled_policy(env_id: str, deterministic: bool, tmp_path: Path) -> None:
    assert make_manager(env_id, tmp_path).deterministic_eval is deterministic
