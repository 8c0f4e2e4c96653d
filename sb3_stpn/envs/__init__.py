"""Gymnasium environments shipped with sb3_stpn, registered on import: ``GridMaze-v0`` (the paper's 13x13 maze) and
``GridMaze9x9-v0`` (the same rules on a 9x9 grid, a cheaper proxy)."""

import gymnasium as gym

from sb3_stpn.envs.grid_maze import GridMazeEnv
from sb3_stpn.envs.grid_maze_vec import GridMazeVecEnv, make_grid_maze_vec_env

#: Ids of the grid mazes; the zoo steps their ``n_envs`` mazes in one :class:`GridMazeVecEnv`.
GRID_MAZE_IDS = ("GridMaze-v0", "GridMaze9x9-v0")

for env_id, kwargs in {"GridMaze-v0": {}, "GridMaze9x9-v0": {"size": 9}}.items():
    if env_id not in gym.registry:
        gym.register(id=env_id, entry_point="sb3_stpn.envs.grid_maze:GridMazeEnv", kwargs=kwargs)

__all__ = ["GRID_MAZE_IDS", "GridMazeEnv", "GridMazeVecEnv", "make_grid_maze_vec_env"]
