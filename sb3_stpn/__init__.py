"""Short-Term Plasticity Neuron (STPN) recurrent policies for Stable-Baselines3."""

import sb3_stpn.envs  # noqa: F401  (registers GridMaze-v0 and GridMaze9x9-v0)
from sb3_stpn.common.stpn import STPN
from sb3_stpn.ppo_stpn import CnnStpnPolicy, MlpStpnPolicy, MultiInputStpnPolicy, StpnPPO

__version__ = "0.3.0"
__all__ = ["STPN", "CnnStpnPolicy", "MlpStpnPolicy", "MultiInputStpnPolicy", "StpnPPO"]
