"""N Backpropamine grid mazes stepped at once with numpy, as one SB3 ``VecEnv``, and reference policies for them.

The paper trains on batches of hundreds of mazes; a ``DummyVecEnv`` of :class:`GridMazeEnv` steps them one by one in
Python. :class:`GridMazeVecEnv` keeps every maze's state in arrays (agent and reward cells as flat indices into the
grid) so one step costs a handful of numpy calls whatever the number of mazes. Its rules, observations and SB3
auto-reset (``terminal_observation``, ``TimeLimit.truncated``) are those of a ``DummyVecEnv`` of ``GridMazeEnv``;
``tests/envs/test_grid_maze_vec.py`` checks them step by step on the same random draws. Episode returns (the ``episode``
info that SB3 logging and ``evaluate_policy`` read) come from SB3's ``VecMonitor``: :func:`make_grid_maze_vec_env`
adds it.

Reference policies (random, memoryless wall-avoider, shortest-path oracle) act on a batch of mazes and
:func:`reference_returns` measures their episode returns, the floor and ceiling a learner is compared to.
"""

import os
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env import VecEnv, VecMonitor
from stable_baselines3.common.vec_env.base_vec_env import VecEnvIndices

from sb3_stpn.common.utils import check_positive_int
from sb3_stpn.envs.grid_maze import (
    ACTION_DELTAS,
    N_ACTIONS,
    OBS_BIAS,
    OBS_NEIGHBOURHOOD,
    OBS_PREV_ACTION,
    OBS_PREV_REWARD,
    OBS_SIZE,
    OBS_TIME,
    GridMazeEnv,
)

#: Position, in the 3x3 neighbourhood part of the observation, of the cell each action moves to.
NEIGHBOUR_OF_ACTION = np.array([1 + 3 * (1 + d_row) + d_col for d_row, d_col in ACTION_DELTAS])
# Previous action of a maze that has not moved yet: the index of the all-zero row of the one-hot table
_NO_ACTION = N_ACTIONS


class GridMazeVecEnv(VecEnv):
    """``n_envs`` independent :class:`GridMazeEnv` mazes with identical rules, stepped together with numpy.

    Each maze auto-resets when its episode is truncated, as in SB3's ``DummyVecEnv``: the returned observation is the
    new episode's first, the last one is in ``info["terminal_observation"]``. All random draws (reward cells, teleports)
    come from one ``numpy`` Generator, reseeded by ``seed(s)`` at the next ``reset()``, so runs are reproducible.
    ``agent_positions`` and ``reward_positions`` hold each maze's ``(row, col)`` cells.

    :param n_envs: number of mazes.
    :param size: side of the square grid, odd and >= 5 (13 in the paper).
    :param episode_length: number of steps per episode (200 in the paper).
    :param reward_value: reward for reaching the reward cell, > 0 (10 in the paper).
    :param wall_penalty: non-negative penalty subtracted when moving into a wall (0 in the paper).
    """

    def __init__(
        self,
        n_envs: int,
        size: int = 13,
        episode_length: int = 200,
        reward_value: float = 10.0,
        wall_penalty: float = 0.0,
    ) -> None:
        n_envs = check_positive_int(n_envs, "n_envs")
        # One single maze checks the options and holds the layout, spaces and shortest-path distances
        self.maze = GridMazeEnv(size, episode_length, reward_value, wall_penalty)
        super().__init__(n_envs, self.maze.observation_space, self.maze.action_space)
        size = self.maze.size
        self._action_offsets = np.array([d_row * size + d_col for d_row, d_col in ACTION_DELTAS])
        self._walls = self.maze.walls.ravel()
        # Open cells as flat indices, in GridMazeEnv.open_cells order: both envs map a random draw to the same cell
        self._open_cells = np.array([row * size + col for row, col in self.maze.open_cells])
        self._centre_rank = self.maze.open_cells.index(self.maze.centre)
        # Every draw picks one of the open cells but one (the centre for reward cells, the reward cell for teleports)
        self._n_choices = len(self._open_cells) - 1
        # The 3x3 walls around every inner cell (border cells are walls, never the agent's)
        neighbourhoods = np.zeros((size, size, 9), dtype=np.float32)
        windows = np.lib.stride_tricks.sliding_window_view(self.maze.walls, (3, 3))
        neighbourhoods[1:-1, 1:-1] = windows.reshape(size - 2, size - 2, 9)
        self._neighbourhoods = neighbourhoods.reshape(size * size, 9)
        # Steps to each reward cell from every cell (-1 for walls), one row per open cell: the oracle's lookup table
        self._distances = np.stack([self.maze._bfs_distances(cell).ravel() for cell in self.maze.open_cells])
        self._action_one_hots = np.eye(N_ACTIONS + 1, N_ACTIONS, dtype=np.float32)  # row _NO_ACTION is all zeros

        self._rng = np.random.default_rng()
        self._agent = np.zeros(self.num_envs, dtype=np.int64)
        self._reward_rank = np.zeros(self.num_envs, dtype=np.int64)  # reward cell, as an index into _open_cells
        self._step_count = np.zeros(self.num_envs, dtype=np.int64)
        self._prev_reward = np.zeros(self.num_envs)
        self._prev_action = np.full(self.num_envs, _NO_ACTION)
        self._actions: np.ndarray | None = None
        self._started = False

    @property
    def agent_positions(self) -> np.ndarray:
        """``(n_envs, 2)`` array of each maze's agent cell, ``(row, col)``."""
        return np.stack(np.divmod(self._agent, self.maze.size), axis=1)

    @property
    def reward_positions(self) -> np.ndarray:
        """``(n_envs, 2)`` array of each maze's reward cell, ``(row, col)``."""
        return np.stack(np.divmod(self._open_cells[self._reward_rank], self.maze.size), axis=1)

    def reset(self) -> np.ndarray:
        """Start a new episode in every maze, first applying the seed given to ``seed()`` if any."""
        if self._seeds[0] is not None:
            self._rng = np.random.default_rng(self._seeds[0])
        self._reset_seeds()
        self._reset_mazes(np.arange(self.num_envs))
        self._started = True
        return self._observations()

    def step_async(self, actions: np.ndarray) -> None:
        """
        Check and store one action per maze.

        :param actions: One integer in ``[0, 4)`` per maze (0 up, 1 right, 2 down, 3 left).
        """
        if not self._started:
            raise RuntimeError("reset() must be called before step()")
        actions = np.asarray(actions)
        valid = actions.shape == (self.num_envs,) and actions.dtype.kind in "iu"
        if not valid or actions.min() < 0 or actions.max() >= N_ACTIONS:
            raise ValueError(f"actions must be {self.num_envs} integers in [0, {N_ACTIONS}), one per maze, got {actions!r}")
        self._actions = actions.astype(np.int64)

    def step_wait(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict[str, Any]]]:
        """Move every agent, pay and teleport at reward cells, auto-reset mazes whose time is up."""
        actions = self._actions
        target = self._agent + self._action_offsets[actions]
        bumped = self._walls[target]
        self._agent = np.where(bumped, self._agent, target)
        rewards = np.where(bumped, -self.maze.wall_penalty, 0.0)
        reached = np.flatnonzero(self._agent == self._open_cells[self._reward_rank])
        if reached.size:
            rewards[reached] += self.maze.reward_value
            self._agent[reached] = self._open_cells[self._draw_ranks_except(reached, self._reward_rank[reached])]

        self._step_count += 1
        self._prev_reward[:] = rewards
        self._prev_action[:] = actions
        observations = self._observations()
        truncated = self._step_count >= self.maze.episode_length
        infos: list[dict[str, Any]] = [{"TimeLimit.truncated": bool(done)} for done in truncated]
        ended = np.flatnonzero(truncated)
        if ended.size:
            for maze, terminal_observation in zip(ended, observations[ended], strict=True):
                infos[maze]["terminal_observation"] = terminal_observation
            self._reset_mazes(ended)
            observations[ended] = self._observations(ended)
        return observations, rewards.astype(np.float32), truncated, infos

    def shortest_path_actions(self) -> np.ndarray:
        """Oracle actions: per maze, a move along a shortest path to the reward cell (lowest-numbered on ties).

        The same choice as :meth:`GridMazeEnv.shortest_path_action`, for every maze at once.
        """
        neighbours = self._agent[:, None] + self._action_offsets
        distances = self._distances[self._reward_rank[:, None], neighbours].astype(np.float64)
        distances[distances < 0] = np.inf
        return distances.argmin(axis=1)

    def close(self) -> None:
        """Nothing to release: the mazes are plain arrays."""

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        """
        An option every maze shares, once per index.

        :param attr_name: The option (``size``, ``episode_length``, ``walls``, ``render_mode``...).
        :param indices: The mazes asked about (None: all).
        """
        return [getattr(self.maze, attr_name)] * len(list(self._get_indices(indices)))

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        """
        Unsupported: the mazes share one set of options, fixed at construction.

        :param attr_name: The option.
        :param value: Its new value.
        :param indices: The mazes asked about (None: all).
        """
        raise NotImplementedError("GridMazeVecEnv's options are fixed at construction; build a new one to change them")

    def env_method(self, method_name: str, *method_args, indices: VecEnvIndices = None, **method_kwargs) -> list[Any]:
        """
        Unsupported: there are no per-maze env objects (``shortest_path_actions()`` is the batched oracle).

        :param method_name: The method.
        :param indices: The mazes asked about (None: all).
        """
        raise NotImplementedError("GridMazeVecEnv has no per-maze env objects; call its own methods instead")

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        """
        No maze is wrapped by a gym wrapper (wrap the whole VecEnv with VecEnv wrappers instead).

        :param wrapper_class: The wrapper asked about.
        :param indices: The mazes asked about (None: all).
        """
        return [False] * len(list(self._get_indices(indices)))

    def _draw_ranks_except(self, mazes: np.ndarray, excluded_ranks: np.ndarray) -> np.ndarray:
        """For each of ``mazes``, a uniformly drawn open cell (as an index into ``_open_cells``) other than the
        excluded one: the draw of :class:`GridMazeEnv`, which indexes its open cells with the excluded cell left out."""
        draws = self._draw(mazes, self._n_choices)
        return draws + (draws >= excluded_ranks)

    def _draw(self, mazes: np.ndarray, n_choices: int) -> np.ndarray:
        """One uniform integer in ``[0, n_choices)`` per maze in ``mazes`` (tests override it to replay draws)."""
        return self._rng.integers(n_choices, size=len(mazes))

    def _reset_mazes(self, mazes: np.ndarray) -> None:
        """Agent at the centre, a new reward cell (not the centre), clock and previous reward/action cleared."""
        self._agent[mazes] = self._open_cells[self._centre_rank]
        self._reward_rank[mazes] = self._draw_ranks_except(mazes, np.full(len(mazes), self._centre_rank))
        self._step_count[mazes] = 0
        self._prev_reward[mazes] = 0.0
        self._prev_action[mazes] = _NO_ACTION

    def _observations(self, mazes: np.ndarray | slice = slice(None)) -> np.ndarray:
        """Observations of ``mazes`` (all by default), laid out as in :mod:`sb3_stpn.envs.grid_maze`."""
        agent = self._agent[mazes]
        observations = np.zeros((len(agent), OBS_SIZE), dtype=np.float32)
        observations[:, OBS_NEIGHBOURHOOD] = self._neighbourhoods[agent]
        observations[:, OBS_BIAS] = 1.0
        observations[:, OBS_TIME] = self._step_count[mazes] / self.maze.episode_length
        observations[:, OBS_PREV_REWARD] = self._prev_reward[mazes]
        observations[:, OBS_PREV_ACTION] = self._action_one_hots[self._prev_action[mazes]]
        return observations


def make_grid_maze_vec_env(
    n_envs: int, seed: int | None = None, monitor_dir: str | None = None, **maze_kwargs: Any
) -> VecMonitor:
    """A :class:`GridMazeVecEnv` in a ``VecMonitor`` (episode returns in ``info["episode"]`` for SB3 logging and
    ``evaluate_policy``), seeded for its first reset.

    :param n_envs: Number of mazes.
    :param seed: Seed of the first reset (None: a random one).
    :param monitor_dir: A folder for the monitor's ``0.monitor.csv``, as rl_zoo3 writes it (None: no file).
    :param maze_kwargs: The maze's options: ``size``, ``episode_length``, ``reward_value``, ``wall_penalty``.
    """
    filename = None
    if monitor_dir is not None:
        os.makedirs(monitor_dir, exist_ok=True)
        filename = os.path.join(monitor_dir, "0")
    env = VecMonitor(GridMazeVecEnv(n_envs, **maze_kwargs), filename=filename)
    env.seed(seed)
    return env


#: A reference policy: a batch of observations, the mazes they come from and a Generator in; one action per maze out.
ReferencePolicy = Callable[[np.ndarray, GridMazeVecEnv, np.random.Generator], np.ndarray]


def random_policy(observations: np.ndarray, env: GridMazeVecEnv, rng: np.random.Generator) -> np.ndarray:
    """Uniformly random actions."""
    return rng.integers(N_ACTIONS, size=len(observations))


def wall_avoider_policy(observations: np.ndarray, env: GridMazeVecEnv, rng: np.random.Generator) -> np.ndarray:
    """Memoryless wall-avoider: a uniform choice among the moves not into a wall, other than undoing the previous move
    where another is open. It reads the current observation only (walls around, previous action), so it shows what a
    policy with no memory of the reward cell earns."""
    open_moves = observations[:, OBS_NEIGHBOURHOOD][:, NEIGHBOUR_OF_ACTION] == 0
    previous = observations[:, OBS_PREV_ACTION]
    moved = previous.any(axis=1)
    reverse = (previous.argmax(axis=1) + 2) % N_ACTIONS
    forward_moves = open_moves.copy()
    forward_moves[np.flatnonzero(moved), reverse[moved]] = False
    allowed = np.where(forward_moves.any(axis=1, keepdims=True), forward_moves, open_moves)
    # The k-th allowed move, k uniform in [0, number allowed)
    picks = (rng.random(len(observations)) * allowed.sum(axis=1)).astype(np.int64)
    return (allowed.cumsum(axis=1) > picks[:, None]).argmax(axis=1)


def oracle_policy(observations: np.ndarray, env: GridMazeVecEnv, rng: np.random.Generator) -> np.ndarray:
    """Shortest-path oracle: knows the reward cell and walks straight to it (the ceiling no learner can pass)."""
    return env.shortest_path_actions()


REFERENCE_POLICIES: dict[str, ReferencePolicy] = {
    "random": random_policy,
    "wall_avoider": wall_avoider_policy,
    "oracle": oracle_policy,
}


def reference_returns(policy: ReferencePolicy, n_episodes: int, seed: int = 0, **maze_kwargs: Any) -> list[float]:
    """Returns of ``n_episodes`` episodes of ``policy``, played in ``n_episodes`` mazes at once (seeded, so repeatable)."""
    env = GridMazeVecEnv(n_episodes, **maze_kwargs)
    env.seed(seed)
    observations = env.reset()
    rng = np.random.default_rng(seed)
    returns = np.zeros(n_episodes)
    for _ in range(env.maze.episode_length):
        env.step_async(policy(observations, env, rng))
        observations, rewards, _, _ = env.step_wait()
        returns += rewards
    return returns.tolist()
