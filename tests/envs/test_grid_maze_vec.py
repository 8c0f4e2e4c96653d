"""Tests for the vectorised grid maze: step-by-step equality with a DummyVecEnv of GridMazeEnv, SB3 VecEnv conventions,
seeding, uniform draws and the reference policies."""

import warnings

import numpy as np
import pytest
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, VecMonitor

from sb3_stpn.envs.grid_maze import N_ACTIONS, OBS_NEIGHBOURHOOD, OBS_PREV_ACTION, GridMazeEnv
from sb3_stpn.envs.grid_maze_vec import (
    NEIGHBOUR_OF_ACTION,
    GridMazeVecEnv,
    make_grid_maze_vec_env,
    oracle_policy,
    random_policy,
    reference_returns,
    wall_avoider_policy,
)


class ReplayedDrawsVecEnv(GridMazeVecEnv):
    """Maze ``i`` draws from its own Generator seeded ``draw_seeds[i]``, one ``integers(n)`` call per draw: exactly the
    calls a GridMazeEnv whose ``np_random`` is seeded alike makes, so both see the same reward cells and teleports."""

    def __init__(self, n_envs: int, draw_seeds: list[int], **maze_kwargs) -> None:
        super().__init__(n_envs, **maze_kwargs)
        self.generators = [np.random.default_rng(seed) for seed in draw_seeds]

    def _draw(self, mazes: np.ndarray, n_choices: int) -> np.ndarray:
        return np.array([self.generators[maze].integers(n_choices) for maze in mazes], dtype=np.int64)


def single_mazes(n_envs: int, draw_seeds: list[int], **maze_kwargs) -> DummyVecEnv:
    """What the zoo built before: a DummyVecEnv of monitored GridMazeEnvs, here with the given draw seeds."""
    envs = DummyVecEnv([lambda: Monitor(GridMazeEnv(**maze_kwargs)) for _ in range(n_envs)])
    for env, seed in zip(envs.envs, draw_seeds, strict=True):
        env.unwrapped.np_random = np.random.default_rng(seed)
    return envs


@pytest.mark.parametrize("size", [5, 9, 13])
def test_steps_match_dummy_vec_env_of_grid_mazes(size: int) -> None:
    n_envs, episode_length, n_steps = 6, 40, 400
    maze_kwargs = {"size": size, "episode_length": episode_length, "reward_value": 7.5, "wall_penalty": 0.5}
    draw_seeds = [100 + maze for maze in range(n_envs)]
    reference = single_mazes(n_envs, draw_seeds, **maze_kwargs)
    vectorised = VecMonitor(ReplayedDrawsVecEnv(n_envs, draw_seeds, **maze_kwargs))
    mazes = [env.unwrapped for env in reference.envs]

    np.testing.assert_array_equal(vectorised.reset(), reference.reset())
    # Half oracle moves (reward hits, teleports), half random ones (wall bumps)
    rng = np.random.default_rng(size)
    hits = bumps = episodes = 0
    for _ in range(n_steps):
        oracle = np.array([maze.shortest_path_action() for maze in mazes])
        np.testing.assert_array_equal(vectorised.venv.shortest_path_actions(), oracle)
        actions = np.where(rng.random(n_envs) < 0.5, oracle, rng.integers(N_ACTIONS, size=n_envs))
        obs, rewards, dones, infos = vectorised.step(actions)
        expected_obs, expected_rewards, expected_dones, expected_infos = reference.step(actions)

        np.testing.assert_array_equal(obs, expected_obs)
        np.testing.assert_array_equal(rewards, expected_rewards)
        assert rewards.dtype == expected_rewards.dtype
        np.testing.assert_array_equal(dones, expected_dones)
        np.testing.assert_array_equal(vectorised.venv.agent_positions, [maze.agent_pos for maze in mazes])
        np.testing.assert_array_equal(vectorised.venv.reward_positions, [maze.reward_pos for maze in mazes])
        for info, expected in zip(infos, expected_infos, strict=True):
            assert info["TimeLimit.truncated"] == expected["TimeLimit.truncated"]
            assert ("terminal_observation" in info) == ("terminal_observation" in expected)
            if "terminal_observation" in expected:
                np.testing.assert_array_equal(info["terminal_observation"], expected["terminal_observation"])
                assert info["episode"]["r"] == pytest.approx(expected["episode"]["r"])
                assert info["episode"]["l"] == expected["episode"]["l"] == episode_length
                episodes += 1
        hits += int((rewards > 0).sum())
        bumps += int((rewards < 0).sum())
    # The comparison covered every rule many times over
    assert hits >= 100 and bumps >= 100 and episodes == n_envs * n_steps // episode_length


def test_vec_env_conventions() -> None:
    env = GridMazeVecEnv(5, size=9, episode_length=3, wall_penalty=0.25)
    single = GridMazeEnv(size=9, episode_length=3, wall_penalty=0.25)
    assert env.num_envs == 5
    assert env.observation_space == single.observation_space and env.action_space == single.action_space
    assert env.get_attr("size") == [9] * 5 and env.get_attr("episode_length", indices=[0, 2]) == [3, 3]
    assert env.render_mode is None and env.env_is_wrapped(Monitor) == [False] * 5

    env.seed(0)
    obs = env.reset()
    assert obs.shape == (5, 17) and obs.dtype == np.float32
    for step in range(1, 4):
        obs, rewards, dones, infos = env.step(np.arange(5) % N_ACTIONS)
        assert obs.shape == (5, 17) and obs.dtype == np.float32
        assert all(env.observation_space.contains(row) for row in obs)
        assert rewards.shape == (5,) and rewards.dtype == np.float32
        assert dones.shape == (5,) and dones.dtype == bool
        assert isinstance(infos, list) and len(infos) == 5
        assert dones.all() == (step == 3)
    # Auto-reset: the returned observations start new episodes, the last ones are in the infos
    assert all(env.observation_space.contains(info["terminal_observation"]) for info in infos)
    np.testing.assert_array_equal(obs, env.reset())


@pytest.mark.parametrize(
    "actions", [[0, 1, 2], [[0], [1], [2], [3]], [0.0, 1.0, 2.0, 3.0], [0, 1, 2, 4], [-1, 0, 0, 0]], ids=str
)
def test_invalid_actions_raise(actions: list) -> None:
    env = GridMazeVecEnv(4)
    env.reset()
    with pytest.raises(ValueError, match="actions must be 4 integers"):
        env.step(np.array(actions))


def test_step_before_reset_raises() -> None:
    with pytest.raises(RuntimeError, match="reset"):
        GridMazeVecEnv(2).step(np.zeros(2, dtype=np.int64))


@pytest.mark.parametrize(
    "kwargs", [{"n_envs": 0}, {"n_envs": 2.0}, {"n_envs": True}, {"size": 8}, {"episode_length": 0}, {"reward_value": 0}]
)
def test_invalid_options_raise_value_error(kwargs: dict) -> None:
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=name):
        GridMazeVecEnv(**{"n_envs": 2, **kwargs})


def test_per_maze_env_access_is_refused() -> None:
    env = GridMazeVecEnv(2)
    with pytest.raises(NotImplementedError):
        env.set_attr("size", 9)
    with pytest.raises(NotImplementedError):
        env.env_method("shortest_path_action")


def _trajectory(env: GridMazeVecEnv, seed: int | None, n_steps: int = 300) -> list[bytes]:
    if seed is not None:
        env.seed(seed)
    obs = env.reset()
    trajectory = [obs.tobytes()]
    rng = np.random.default_rng(0)
    for _ in range(n_steps):
        policy = oracle_policy if rng.random() < 0.5 else random_policy
        obs, rewards, _, _ = env.step(policy(obs, env, rng))
        trajectory += [obs.tobytes(), rewards.tobytes(), env.agent_positions.tobytes(), env.reward_positions.tobytes()]
    return trajectory


def test_seeding_makes_runs_reproducible() -> None:
    env = GridMazeVecEnv(8, episode_length=50)
    first = _trajectory(env, seed=3)
    assert _trajectory(GridMazeVecEnv(8, episode_length=50), seed=3) == first
    assert _trajectory(env, seed=3) == first, "seed() applies again at the next reset"
    assert _trajectory(env, seed=4) != first
    assert _trajectory(env, seed=None) != first, "an unseeded reset continues the stream"


def test_reward_cells_are_uniform_over_open_cells_but_the_centre() -> None:
    env = GridMazeVecEnv(4000, size=7)
    env.seed(0)
    env.reset()
    maze = GridMazeEnv(size=7)
    candidates = [cell for cell in maze.open_cells if cell != maze.centre]
    cells, counts = np.unique(env.reward_positions, axis=0, return_counts=True)
    assert [tuple(cell) for cell in cells] == sorted(candidates)
    expected = len(env.reward_positions) / len(candidates)
    assert np.all(np.abs(counts - expected) < 5 * np.sqrt(expected))


def test_teleports_land_on_every_open_cell_but_the_reward() -> None:
    env = GridMazeVecEnv(50, size=7, episode_length=10_000)
    env.seed(1)
    obs = env.reset()
    landings: dict[tuple[int, int], set[tuple[int, int]]] = {}
    for _ in range(200):
        obs, rewards, _, _ = env.step(oracle_policy(obs, env, None))
        for agent, reward_cell in zip(env.agent_positions[rewards > 0], env.reward_positions[rewards > 0], strict=True):
            assert tuple(agent) != tuple(reward_cell)
            landings.setdefault(tuple(reward_cell), set()).add(tuple(agent))
    open_cells = set(GridMazeEnv(size=7).open_cells)
    reward_cell, destinations = max(landings.items(), key=lambda item: len(item[1]))
    assert destinations == open_cells - {reward_cell}


def test_monitor_episodes_feed_evaluate_policy() -> None:
    """make_grid_maze_vec_env's VecMonitor gives evaluate_policy (no Monitor warning) the returns the mazes paid."""

    class Oracle:
        def predict(self, observation, state=None, episode_start=None, deterministic=False):
            return oracle_policy(observation, env.venv, None), state

    env = make_grid_maze_vec_env(6, seed=5, size=9)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        returns, lengths = evaluate_policy(Oracle(), env, n_eval_episodes=6, return_episode_rewards=True)
    assert lengths == [200] * 6
    assert sorted(returns) == sorted(reference_returns(oracle_policy, 6, seed=5, size=9))


def test_monitor_writes_the_zoo_csv(tmp_path) -> None:
    env = make_grid_maze_vec_env(3, seed=0, monitor_dir=str(tmp_path / "run"), episode_length=5)
    env.reset()
    for _ in range(10):
        env.step(np.zeros(3, dtype=np.int64))
    env.close()
    rows = (tmp_path / "run" / "0.monitor.csv").read_text().splitlines()
    assert rows[1] == "r,l,t" and len(rows) == 2 + 6


def test_wall_avoider_never_bumps_and_never_turns_back_when_it_can_go_on() -> None:
    env = GridMazeVecEnv(20, wall_penalty=1.0)
    env.seed(0)
    obs = env.reset()
    rng = np.random.default_rng(0)
    for _ in range(400):
        actions = wall_avoider_policy(obs, env, rng)
        open_moves = obs[:, OBS_NEIGHBOURHOOD][:, NEIGHBOUR_OF_ACTION] == 0
        previous = obs[:, OBS_PREV_ACTION]
        reverse = (previous.argmax(axis=1) + 2) % N_ACTIONS
        turned_back = previous.any(axis=1) & (actions == reverse) & (open_moves.sum(axis=1) > 1)
        assert not turned_back.any()
        obs, rewards, _, _ = env.step(actions)
        assert (rewards >= 0).all()


def test_wall_avoider_is_uniform_over_allowed_moves() -> None:
    # All four moves open, previous move up: up, right and left are allowed, down (turning back) is not
    obs = np.zeros((30_000, 17), dtype=np.float32)
    obs[:, OBS_PREV_ACTION.start] = 1.0
    actions = wall_avoider_policy(obs, None, np.random.default_rng(0))
    counts = np.bincount(actions, minlength=N_ACTIONS)
    assert counts[2] == 0
    np.testing.assert_allclose(counts[[0, 1, 3]] / len(obs), 1 / 3, atol=0.015)


def test_reference_policies_order_and_reproducibility() -> None:
    returns = {
        policy.__name__: reference_returns(policy, 50, seed=0, size=9)
        for policy in (random_policy, wall_avoider_policy, oracle_policy)
    }
    means = {name: np.mean(values) for name, values in returns.items()}
    assert means["random_policy"] < means["wall_avoider_policy"] < means["oracle_policy"]
    assert reference_returns(wall_avoider_policy, 50, seed=0, size=9) == returns["wall_avoider_policy"]
    assert min(returns["oracle_policy"]) >= 10, "the oracle reaches the reward cell in every episode"
