"""RL Baselines3 Zoo glue: importing this registers ``ppo_stpn`` with rl_zoo3.

rl_zoo3 looks algorithms up by name in ``ALGOS`` (train, enjoy, record_video), Optuna samplers in
``HYPERPARAMS_SAMPLER`` and trial converters in ``HYPERPARAMS_CONVERTER``; ``ppo_stpn`` is added
to all three, and ``ppo_lstm`` gets the matching learning-rate space (see ``hyperparams_opt``), so
that both memory models are tuned alike. Importing ``sb3_stpn`` also registers ``GridMaze-v0``.

:class:`StpnExperimentManager` (``exp_manager``) is the project's manager, built from subclasses of rl_zoo3's that each
repair one thing for any algorithm (``run_folder``, ``optuna_studies``, ``signals``, ``checkpoints``, ``finite``);
``patches`` is the one place where names of rl_zoo3 and SB3 are replaced, where they offer no public hook.
"""

from rl_zoo3.hyperparams_opt import HYPERPARAMS_CONVERTER, HYPERPARAMS_SAMPLER
from rl_zoo3.utils import ALGOS

from sb3_stpn import StpnPPO
from sb3_stpn.zoo.errors import ZooError
from sb3_stpn.zoo.exp_manager import CONFIG_DIR, StpnExperimentManager, load_config_entry
from sb3_stpn.zoo.hyperparams_opt import (
    convert_ppo_lstm_params,
    convert_ppo_stpn_params,
    sample_ppo_lstm_params,
    sample_ppo_stpn_params,
)
from sb3_stpn.zoo.signals import Interrupted, raising_interrupted

ALGOS["ppo_stpn"] = StpnPPO
HYPERPARAMS_SAMPLER["ppo_stpn"] = sample_ppo_stpn_params
HYPERPARAMS_CONVERTER["ppo_stpn"] = convert_ppo_stpn_params
HYPERPARAMS_SAMPLER["ppo_lstm"] = sample_ppo_lstm_params
HYPERPARAMS_CONVERTER["ppo_lstm"] = convert_ppo_lstm_params

__all__ = ["CONFIG_DIR", "Interrupted", "StpnExperimentManager", "ZooError", "load_config_entry", "raising_interrupted"]
