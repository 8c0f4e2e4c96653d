from sb3_stpn.ppo_stpn.policies import CnnStpnPolicy, MlpStpnPolicy, MultiInputStpnPolicy
from sb3_stpn.ppo_stpn.ppo_stpn import StpnPPO

__all__ = ["CnnStpnPolicy", "MlpStpnPolicy", "MultiInputStpnPolicy", "StpnPPO"]
