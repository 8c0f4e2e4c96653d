"""Gymnasium environments shipped with sb3_stpn."""

from sb3_stpn.envs.grid_maze import GridMazeEnv

__all__ = ["GridMazeEnv"]
