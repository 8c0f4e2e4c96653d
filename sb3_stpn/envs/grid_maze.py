"""Grid maze of Miconi et al. (2018, "Backpropamine"), the meta-RL navigation task used by the STPN paper (ICML 2022).

The agent sees only its 3x3 surroundings, so it must explore to find a hidden reward cell and then remember where it
is: every time the reward is reached the agent is teleported to a random cell, and returning quickly within the same
episode is only possible for a policy that stores the reward location in its (plastic or recurrent) memory.

Observation layout (``float32``, shape ``(OBS_SIZE,)`` = ``(17,)``). It follows the reference implementation's input
vector (3x3 receptive field, 4 additional inputs of which one is unused, 4 action inputs), so index 9 is always 0:

- ``OBS_NEIGHBOURHOOD`` (0:9): walls of the 3x3 cells around the agent, row-major, 1 = wall; index 4 is the agent's
  own cell and is always 0.
- ``OBS_UNUSED`` (9): always 0 (the slot the reference code leaves unused).
- ``OBS_BIAS`` (10): constant 1.
- ``OBS_TIME`` (11): fraction of the episode elapsed, ``step / episode_length``, in [0, 1].
- ``OBS_PREV_REWARD`` (12): reward of the previous step (0 after reset), in [-wall_penalty, reward_value].
- ``OBS_PREV_ACTION`` (13:17): one-hot of the previous action (all 0 after reset).
"""

from collections import deque
from numbers import Real
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from sb3_stpn.common.utils import check_positive_int, is_integer

# Actions, clockwise from up. (The reference code uses up, down, left, right; the order does not matter to a learner.)
UP, RIGHT, DOWN, LEFT = 0, 1, 2, 3
#: Row/column displacement of each action, indexed by action.
ACTION_DELTAS: tuple[tuple[int, int], ...] = ((-1, 0), (0, 1), (1, 0), (0, -1))
N_ACTIONS = len(ACTION_DELTAS)

# Observation slices/indices (see the module docstring).
OBS_NEIGHBOURHOOD = slice(0, 9)
OBS_UNUSED = 9
OBS_BIAS = 10
OBS_TIME = 11
OBS_PREV_REWARD = 12
OBS_PREV_ACTION = slice(13, 13 + N_ACTIONS)
OBS_SIZE = 13 + N_ACTIONS

#: Side of one maze cell, in pixels, in ``rgb_array`` renders.
CELL_PIXELS = 8
_FLOOR_RGB = (255, 255, 255)
_WALL_RGB = (40, 40, 40)
_AGENT_RGB = (30, 90, 220)
_REWARD_RGB = (40, 180, 60)

Position = tuple[int, int]


def _is_finite_real(value: Any) -> bool:
    """True for finite real numbers (Python or NumPy), excluding ``bool``."""
    return isinstance(value, Real) and not isinstance(value, bool) and bool(np.isfinite(float(value)))


def make_grid(size: int) -> np.ndarray:
    """Wall map (``True`` = wall) of the grid maze: border walls, pillars where row and column are both even, open centre."""
    rows, cols = np.indices((size, size))
    walls = (rows == 0) | (cols == 0) | (rows == size - 1) | (cols == size - 1) | ((rows % 2 == 0) & (cols % 2 == 0))
    walls[size // 2, size // 2] = False
    return walls


class GridMazeEnv(gym.Env[np.ndarray, np.int64]):
    """Backpropamine grid maze: find a hidden reward cell, get teleported on reaching it, find it again until time runs out.

    Each episode the agent starts at the centre and one reward cell (open, not the centre) is drawn uniformly. Stepping
    onto it gives ``reward_value`` and teleports the agent to a uniformly drawn open cell other than the reward cell.
    Moving into a wall leaves the agent in place and gives ``-wall_penalty``. Episodes never terminate; they are
    truncated after ``episode_length`` steps. Actions: 0 up, 1 right, 2 down, 3 left. ``info`` holds ``agent_pos`` and
    ``reward_pos`` as ``(row, col)`` tuples.

    :param size: side of the square grid, odd and >= 5 (13 in the paper).
    :param episode_length: number of steps per episode (200 in the paper).
    :param reward_value: reward for reaching the reward cell, > 0 (10 in the paper).
    :param wall_penalty: non-negative penalty subtracted when moving into a wall (0 in the paper).
    :param render_mode: ``None``, ``"ansi"`` (text grid) or ``"rgb_array"`` (``CELL_PIXELS`` pixels per cell).
    """

    metadata: dict[str, Any] = {"render_modes": ["ansi", "rgb_array"], "render_fps": 8}  # as gymnasium declares it

    def __init__(
        self,
        size: int = 13,
        episode_length: int = 200,
        reward_value: float = 10.0,
        wall_penalty: float = 0.0,
        render_mode: str | None = None,
    ) -> None:
        if not is_integer(size) or size < 5 or size % 2 == 0:
            raise ValueError(f"size must be an odd integer >= 5, got {size!r}")
        episode_length = check_positive_int(episode_length, "episode_length")
        if not _is_finite_real(reward_value) or reward_value <= 0:
            raise ValueError(f"reward_value must be a finite number > 0, got {reward_value!r}")
        if not _is_finite_real(wall_penalty) or wall_penalty < 0:
            raise ValueError(f"wall_penalty must be a finite number >= 0, got {wall_penalty!r}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or one of {self.metadata['render_modes']}, got {render_mode!r}")

        self.size = int(size)
        self.episode_length = episode_length
        self.reward_value = float(reward_value)
        self.wall_penalty = float(wall_penalty)
        self.render_mode = render_mode

        self.walls = make_grid(self.size)
        self.centre: Position = (self.size // 2, self.size // 2)
        self.open_cells: list[Position] = [(int(r), int(c)) for r, c in np.argwhere(~self.walls)]
        self._reward_candidates = [cell for cell in self.open_cells if cell != self.centre]

        # Every entry lies in [0, 1] except the previous reward. The constant slots keep [0, 1] bounds too, because
        # gymnasium's checker warns about Box dimensions whose low equals high.
        low = np.zeros(OBS_SIZE, dtype=np.float32)
        high = np.ones(OBS_SIZE, dtype=np.float32)
        low[OBS_PREV_REWARD] = -self.wall_penalty
        high[OBS_PREV_REWARD] = self.reward_value
        self.observation_space = spaces.Box(low=low, high=high, dtype=np.float32)
        self.action_space = spaces.Discrete(N_ACTIONS)

        self.agent_pos: Position | None = None
        self.reward_pos: Position | None = None
        self._distances: np.ndarray | None = None
        self._teleport_cells: list[Position] = []
        self._step_count = 0
        self._prev_reward = 0.0
        self._prev_action: int | None = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """
        Start an episode: agent at the centre, a fresh reward cell drawn with ``self.np_random``.

        :param seed: Seed of ``self.np_random`` (None: keep drawing from it).
        :param options: Unused (Gymnasium's interface).
        """
        super().reset(seed=seed)
        self.agent_pos = self.centre
        self.reward_pos = self._reward_candidates[int(self.np_random.integers(len(self._reward_candidates)))]
        self._distances = self._bfs_distances(self.reward_pos)
        self._teleport_cells = [cell for cell in self.open_cells if cell != self.reward_pos]
        self._step_count = 0
        self._prev_reward = 0.0
        self._prev_action = None
        return self._observation(), self._info()

    def step(self, action: int | np.integer) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """
        Move one cell (or bump into a wall), collect and teleport on reaching the reward, truncate at the time limit.

        :param action: 0 up, 1 right, 2 down, 3 left.
        """
        if self.agent_pos is None or self.reward_pos is None:
            raise RuntimeError("reset() must be called before step()")
        if not self.action_space.contains(action):
            raise ValueError(f"invalid action {action!r}, expected an integer in [0, {N_ACTIONS})")
        action = int(action)
        d_row, d_col = ACTION_DELTAS[action]
        target = (self.agent_pos[0] + d_row, self.agent_pos[1] + d_col)

        reward = 0.0
        if self.walls[target]:
            reward -= self.wall_penalty
        else:
            self.agent_pos = target
        if self.agent_pos == self.reward_pos:
            reward += self.reward_value
            self.agent_pos = self._teleport_cells[int(self.np_random.integers(len(self._teleport_cells)))]

        self._step_count += 1
        self._prev_reward = reward
        self._prev_action = action
        truncated = self._step_count >= self.episode_length
        return self._observation(), reward, False, truncated, self._info()

    def shortest_path_length(self) -> int:
        """Number of steps on a shortest path from the agent to the reward cell (the oracle's time to reward)."""
        if self._distances is None or self.agent_pos is None:
            raise RuntimeError("reset() must be called before shortest_path_length()")
        return int(self._distances[self.agent_pos])

    def shortest_path_action(self) -> int:
        """Oracle action: a move along a shortest path to the reward cell (lowest-numbered action on ties)."""
        if self._distances is None or self.agent_pos is None:
            raise RuntimeError("reset() must be called before shortest_path_action()")
        row, col = self.agent_pos
        distances = self._distances

        def distance_after(action: int) -> float:
            d_row, d_col = ACTION_DELTAS[action]
            distance = distances[row + d_row, col + d_col]
            return float(distance) if distance >= 0 else np.inf

        return min(range(N_ACTIONS), key=distance_after)

    def render(self) -> str | np.ndarray | None:
        """Render the maze as text (``#`` wall, ``.`` floor, ``A`` agent, ``R`` reward) or as an RGB image."""
        if self.render_mode is None:
            gym.logger.warn("render() called without a render_mode; pass render_mode='ansi' or 'rgb_array' to the constructor")
            return None
        if self.agent_pos is None or self.reward_pos is None:
            raise RuntimeError("reset() must be called before render()")
        if self.render_mode == "ansi":
            chars = np.where(self.walls, "#", ".")
            chars[self.reward_pos] = "R"
            chars[self.agent_pos] = "A"
            return "\n".join("".join(row) for row in chars)
        cells = np.empty((self.size, self.size, 3), dtype=np.uint8)
        cells[:] = _FLOOR_RGB
        cells[self.walls] = _WALL_RGB
        cells[self.reward_pos] = _REWARD_RGB
        cells[self.agent_pos] = _AGENT_RGB
        return np.repeat(np.repeat(cells, CELL_PIXELS, axis=0), CELL_PIXELS, axis=1)

    def _bfs_distances(self, source: Position) -> np.ndarray:
        """Shortest-path step counts from ``source`` to every cell (-1 for walls), by breadth-first search."""
        distances = np.full((self.size, self.size), -1, dtype=np.int64)
        distances[source] = 0
        queue = deque([source])
        while queue:
            row, col = queue.popleft()
            for d_row, d_col in ACTION_DELTAS:
                nxt = (row + d_row, col + d_col)
                if not self.walls[nxt] and distances[nxt] < 0:
                    distances[nxt] = distances[row, col] + 1
                    queue.append(nxt)
        return distances

    def _observation(self) -> np.ndarray:
        """Build the observation vector described in the module docstring."""
        assert self.agent_pos is not None, "reset() first"
        row, col = self.agent_pos
        obs = np.zeros(OBS_SIZE, dtype=np.float32)
        obs[OBS_NEIGHBOURHOOD] = self.walls[row - 1 : row + 2, col - 1 : col + 2].ravel()
        obs[OBS_BIAS] = 1.0
        obs[OBS_TIME] = self._step_count / self.episode_length
        obs[OBS_PREV_REWARD] = self._prev_reward
        if self._prev_action is not None:
            obs[OBS_PREV_ACTION.start + self._prev_action] = 1.0
        return obs

    def _info(self) -> dict[str, Any]:
        """Agent and reward positions, as ``(row, col)``, for oracles and diagnostics."""
        return {"agent_pos": self.agent_pos, "reward_pos": self.reward_pos}
