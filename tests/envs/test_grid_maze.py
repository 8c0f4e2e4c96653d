"""Tests for the Backpropamine grid maze: layout, dynamics, observation layout, seeding, oracle and rendering."""

import warnings

import numpy as np
import pytest
from gymnasium.envs.registration import EnvSpec
from gymnasium.utils.env_checker import check_env

from sb3_stpn.envs.grid_maze import (
    ACTION_DELTAS,
    CELL_PIXELS,
    DOWN,
    LEFT,
    OBS_BIAS,
    OBS_NEIGHBOURHOOD,
    OBS_PREV_ACTION,
    OBS_PREV_REWARD,
    OBS_SIZE,
    OBS_TIME,
    OBS_UNUSED,
    RIGHT,
    UP,
    GridMazeEnv,
)


def _place_agent_next_to_reward(env: GridMazeEnv) -> int:
    """Put the agent on an open cell adjacent to the reward cell and return the action that steps onto the reward."""
    r_row, r_col = env.reward_pos
    for action, (d_row, d_col) in enumerate(ACTION_DELTAS):
        start = (r_row - d_row, r_col - d_col)
        if not env.walls[start]:
            env.agent_pos = start
            return action
    raise AssertionError("reward cell has no open neighbour")


@pytest.mark.parametrize("render_mode", [None, "ansi", "rgb_array"])
def test_check_env_passes_without_warnings(render_mode: str | None) -> None:
    # An unregistered spec lets check_env exercise every declared render mode and close() without relying on the
    # package-level registration; any checker warning is turned into a failure.
    spec = EnvSpec(id="GridMazeCheck-v0", entry_point=GridMazeEnv)
    env = spec.make(render_mode=render_mode, disable_env_checker=True).unwrapped
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env, skip_render_check=False)
    env.close()


def test_spaces_match_contract() -> None:
    env = GridMazeEnv(wall_penalty=0.5)
    assert env.action_space.n == 4
    assert env.observation_space.shape == (OBS_SIZE,) == (17,)
    assert env.observation_space.dtype == np.float32
    assert env.observation_space.low[OBS_PREV_REWARD] == -0.5
    assert env.observation_space.high[OBS_PREV_REWARD] == 10.0
    assert (UP, RIGHT, DOWN, LEFT) == (0, 1, 2, 3)
    assert ACTION_DELTAS == ((-1, 0), (0, 1), (1, 0), (0, -1))


@pytest.mark.parametrize("size", [5, 7, 11, 13, 15])
def test_wall_layout(size: int) -> None:
    env = GridMazeEnv(size=size)
    centre = size // 2
    for row in range(size):
        for col in range(size):
            border = row in (0, size - 1) or col in (0, size - 1)
            pillar = row % 2 == 0 and col % 2 == 0 and (row, col) != (centre, centre)
            assert env.walls[row, col] == (border or pillar), (row, col)
    assert not env.walls[centre, centre]
    assert env.centre == (centre, centre)
    assert set(env.open_cells) == {(int(r), int(c)) for r, c in np.argwhere(~env.walls)}


def test_reset_starts_at_centre_with_reward_on_open_non_centre_cell() -> None:
    env = GridMazeEnv()
    for seed in range(30):
        _, info = env.reset(seed=seed)
        assert info["agent_pos"] == env.centre == (6, 6)
        assert info["reward_pos"] != env.centre
        assert not env.walls[info["reward_pos"]]


def test_wall_bump_keeps_position_and_applies_penalty() -> None:
    env = GridMazeEnv(wall_penalty=0.25)
    env.reset(seed=0)
    # (4, 5) is open (odd column) and its left and right neighbours (4, 4) and (4, 6) are pillars.
    env.agent_pos = (4, 5)
    env.reward_pos = (1, 1)
    for action in (LEFT, RIGHT):
        obs, reward, terminated, truncated, info = env.step(action)
        assert info["agent_pos"] == (4, 5)
        assert reward == -0.25
        assert obs[OBS_PREV_REWARD] == np.float32(-0.25)
        assert not terminated and not truncated
    # A free move gives no penalty.
    _, reward, _, _, info = env.step(UP)
    assert info["agent_pos"] == (3, 5)
    assert reward == 0.0


def test_wall_penalty_defaults_to_zero() -> None:
    env = GridMazeEnv()
    env.reset(seed=0)
    env.agent_pos = (4, 5)
    env.reward_pos = (1, 1)
    _, reward, _, _, info = env.step(LEFT)
    assert info["agent_pos"] == (4, 5)
    assert reward == 0.0


@pytest.mark.parametrize("seed", range(10))
def test_reaching_reward_pays_and_teleports(seed: int) -> None:
    env = GridMazeEnv(reward_value=7.5, wall_penalty=1.0)
    _, info = env.reset(seed=seed)
    reward_pos = info["reward_pos"]
    action = _place_agent_next_to_reward(env)
    obs, reward, terminated, truncated, info = env.step(action)
    assert reward == 7.5
    assert obs[OBS_PREV_REWARD] == np.float32(7.5)
    assert info["reward_pos"] == reward_pos, "the reward cell stays fixed within an episode"
    assert info["agent_pos"] != reward_pos
    assert not env.walls[info["agent_pos"]]
    assert not terminated and not truncated


def test_teleport_destinations_cover_open_cells() -> None:
    # Teleporting is uniform over open non-reward cells: many teleports reach many distinct cells, never the reward.
    env = GridMazeEnv(size=7)
    env.reset(seed=3)
    destinations = set()
    for _ in range(300):
        action = _place_agent_next_to_reward(env)
        _, reward, _, _, info = env.step(action)
        assert reward == env.reward_value
        destinations.add(info["agent_pos"])
    expected = {cell for cell in env.open_cells if cell != env.reward_pos}
    assert destinations == expected


def test_observation_layout() -> None:
    env = GridMazeEnv(episode_length=50, wall_penalty=0.5)
    obs, info = env.reset(seed=1)
    assert obs.shape == (17,) and obs.dtype == np.float32
    # The centre of a 13x13 maze sits where a pillar would be, so all 8 cells around it are open.
    np.testing.assert_array_equal(obs[OBS_NEIGHBOURHOOD], np.zeros(9))
    assert obs[OBS_UNUSED] == 0.0
    assert obs[OBS_BIAS] == 1.0
    assert obs[OBS_TIME] == 0.0
    assert obs[OBS_PREV_REWARD] == 0.0
    np.testing.assert_array_equal(obs[OBS_PREV_ACTION], [0, 0, 0, 0])

    rng = np.random.default_rng(0)
    for step in range(1, 50):
        action = int(rng.integers(4))
        obs, reward, _, _, info = env.step(action)
        row, col = info["agent_pos"]
        np.testing.assert_array_equal(obs[OBS_NEIGHBOURHOOD], env.walls[row - 1 : row + 2, col - 1 : col + 2].ravel())
        assert obs[OBS_NEIGHBOURHOOD][4] == 0.0
        assert obs[OBS_UNUSED] == 0.0
        assert obs[OBS_BIAS] == 1.0
        assert obs[OBS_TIME] == np.float32(step / 50)
        assert obs[OBS_PREV_REWARD] == np.float32(reward)
        expected_one_hot = np.zeros(4, dtype=np.float32)
        expected_one_hot[action] = 1.0
        np.testing.assert_array_equal(obs[OBS_PREV_ACTION], expected_one_hot)
        assert env.observation_space.contains(obs)


def test_observation_neighbourhood_is_row_major() -> None:
    env = GridMazeEnv()
    env.reset(seed=0)
    env.agent_pos = (1, 2)  # top wall above; pillar below at (2, 2); open cells left and right
    env.reward_pos = (11, 11)
    obs, *_ = env.step(UP)  # bump into the top wall, stay at (1, 2)
    np.testing.assert_array_equal(obs[OBS_NEIGHBOURHOOD], [1, 1, 1, 0, 0, 0, 0, 1, 0])


def test_reset_clears_previous_reward_and_action() -> None:
    env = GridMazeEnv()
    env.reset(seed=0)
    action = _place_agent_next_to_reward(env)
    obs, *_ = env.step(action)
    assert obs[OBS_PREV_REWARD] == 10.0 and obs[OBS_PREV_ACTION].sum() == 1.0
    obs, _ = env.reset()
    assert obs[OBS_PREV_REWARD] == 0.0
    assert obs[OBS_TIME] == 0.0
    np.testing.assert_array_equal(obs[OBS_PREV_ACTION], [0, 0, 0, 0])


@pytest.mark.parametrize("episode_length", [1, 5, 200])
def test_truncation_exactly_at_episode_length(episode_length: int) -> None:
    env = GridMazeEnv(episode_length=episode_length)
    env.reset(seed=0)
    for step in range(1, episode_length + 1):
        obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
        assert not terminated
        assert truncated == (step == episode_length)
    assert obs[OBS_TIME] == 1.0


def _rollout(seed: int, actions: list[int]) -> list[tuple]:
    env = GridMazeEnv(episode_length=len(actions))
    obs, info = env.reset(seed=seed)
    trajectory = [(obs.tobytes(), info["agent_pos"], info["reward_pos"])]
    for action in actions:
        obs, reward, terminated, truncated, info = env.step(action)
        trajectory.append((obs.tobytes(), reward, terminated, truncated, info["agent_pos"], info["reward_pos"]))
    return trajectory


def test_same_seed_same_trajectory() -> None:
    # Oracle-driven actions reach the reward several times, so teleport draws are part of the comparison too.
    env = GridMazeEnv()
    env.reset(seed=123)
    actions = []
    for _ in range(200):
        action = env.shortest_path_action()
        actions.append(action)
        env.step(action)
    first, second = _rollout(123, actions), _rollout(123, actions)
    assert sum(step[1] > 0 for step in first[1:]) >= 3
    assert first == second
    assert _rollout(124, actions) != first


def test_different_seeds_give_different_reward_cells() -> None:
    env = GridMazeEnv()
    reward_cells = {env.reset(seed=seed)[1]["reward_pos"] for seed in range(20)}
    assert len(reward_cells) >= 10


def test_unseeded_resets_draw_new_reward_cells() -> None:
    env = GridMazeEnv()
    env.reset(seed=0)
    reward_cells = {env.reset()[1]["reward_pos"] for _ in range(20)}
    assert len(reward_cells) >= 10


@pytest.mark.parametrize(
    "kwargs",
    [
        {"size": 4},
        {"size": 3},
        {"size": 12},
        {"size": 13.0},
        {"size": True},
        {"episode_length": 0},
        {"episode_length": -5},
        {"episode_length": 2.5},
        {"reward_value": 0.0},
        {"reward_value": -1.0},
        {"reward_value": float("nan")},
        {"reward_value": "10"},
        {"wall_penalty": -0.1},
        {"wall_penalty": float("inf")},
        {"render_mode": "human"},
    ],
)
def test_invalid_kwargs_raise_value_error(kwargs: dict) -> None:
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=name):
        GridMazeEnv(**kwargs)


def test_valid_numpy_kwargs_are_accepted() -> None:
    env = GridMazeEnv(size=np.int64(9), episode_length=np.int32(10), reward_value=np.float32(5.0), wall_penalty=1)
    assert (env.size, env.episode_length, env.reward_value, env.wall_penalty) == (9, 10, 5.0, 1.0)


def test_invalid_action_raises() -> None:
    env = GridMazeEnv()
    env.reset(seed=0)
    for action in (-1, 4):
        with pytest.raises(ValueError, match="invalid action"):
            env.step(action)


def test_step_before_reset_raises() -> None:
    with pytest.raises(RuntimeError, match="reset"):
        GridMazeEnv().step(0)


@pytest.mark.parametrize("size", [5, 13])
def test_oracle_reaches_reward_in_bfs_distance(size: int) -> None:
    env = GridMazeEnv(size=size, episode_length=10_000)
    env.reset(seed=0)
    for _ in range(50):  # 50 consecutive reward hits, each from wherever the teleport left the agent
        distance = env.shortest_path_length()
        assert distance >= 1
        # BFS distance is at least the Manhattan distance and never above the number of open cells.
        (a_row, a_col), (r_row, r_col) = env.agent_pos, env.reward_pos
        assert abs(a_row - r_row) + abs(a_col - r_col) <= distance < len(env.open_cells)
        for step in range(1, distance + 1):
            action = env.shortest_path_action()
            row, col = env.agent_pos
            _, reward, _, _, info = env.step(action)
            assert info["agent_pos"] != (row, col) or reward > 0, "the oracle never bumps into a wall"
            if step < distance:
                assert reward == 0.0
                assert env.shortest_path_length() == distance - step
        assert reward == env.reward_value


def test_oracle_distance_from_centre() -> None:
    env = GridMazeEnv()
    env.reset(seed=0)
    env.reward_pos = (1, 1)
    env._distances = env._bfs_distances(env.reward_pos)
    # Centre (6, 6) to the corner cell (1, 1): open corridors on odd rows/columns give Manhattan distance 10.
    assert env.shortest_path_length() == 10
    env.reward_pos = (5, 6)
    env._distances = env._bfs_distances(env.reward_pos)
    assert env.shortest_path_length() == 1
    assert env.shortest_path_action() == UP


def test_render_ansi() -> None:
    env = GridMazeEnv(render_mode="ansi")
    _, info = env.reset(seed=2)
    text = env.render()
    rows = text.split("\n")
    assert len(rows) == 13 and all(len(row) == 13 for row in rows)
    a_row, a_col = info["agent_pos"]
    r_row, r_col = info["reward_pos"]
    assert rows[a_row][a_col] == "A" and text.count("A") == 1
    assert rows[r_row][r_col] == "R" and text.count("R") == 1
    for row in range(13):
        for col in range(13):
            if (row, col) not in (info["agent_pos"], info["reward_pos"]):
                assert rows[row][col] == ("#" if env.walls[row, col] else ".")


def test_render_rgb_array() -> None:
    env = GridMazeEnv(size=7, render_mode="rgb_array")
    _, info = env.reset(seed=2)
    image = env.render()
    assert image.shape == (7 * CELL_PIXELS, 7 * CELL_PIXELS, 3)
    assert image.dtype == np.uint8

    def cell_colour(row: int, col: int) -> tuple[int, ...]:
        block = image[row * CELL_PIXELS : (row + 1) * CELL_PIXELS, col * CELL_PIXELS : (col + 1) * CELL_PIXELS]
        assert (block == block[0, 0]).all(), "each cell is a uniform block"
        return tuple(int(v) for v in block[0, 0])

    wall = cell_colour(0, 0)
    floor = cell_colour(*next(cell for cell in env.open_cells if cell not in (info["agent_pos"], info["reward_pos"])))
    agent = cell_colour(*info["agent_pos"])
    reward = cell_colour(*info["reward_pos"])
    assert len({wall, floor, agent, reward}) == 4
    assert sum(wall) < sum(floor), "walls are darker than floor"
    for row in range(7):
        for col in range(7):
            if (row, col) not in (info["agent_pos"], info["reward_pos"]):
                assert cell_colour(row, col) == (wall if env.walls[row, col] else floor)


def test_render_without_mode_returns_none() -> None:
    env = GridMazeEnv()
    env.reset(seed=0)
    with pytest.warns(UserWarning, match="render_mode"):
        assert env.render() is None
