"""Short-Term Plasticity Neuron (STPN) recurrent policies for Stable-Baselines3."""

import gymnasium as gym

from sb3_stpn.common.stpn import STPN
from sb3_stpn.ppo_stpn import CnnStpnPolicy, MlpStpnPolicy, MultiInputStpnPolicy, StpnPPO

__version__ = "0.1.0"
__all__ = ["STPN", "CnnStpnPolicy", "MlpStpnPolicy", "MultiInputStpnPolicy", "StpnPPO"]

if "GridMaze-v0" not in gym.registry:
    gym.register(id="GridMaze-v0", entry_point="sb3_stpn.envs.grid_maze:GridMazeEnv")
