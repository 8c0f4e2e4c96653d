"""Optuna search space for ``ppo_stpn``: rl_zoo3's PPO space plus the STPN's own knobs.

rl_zoo3 calls the sampler for every trial and the converter to rebuild a trial's hyperparameters
from its stored raw parameters (``--trial-id``); both go through :func:`_add_stpn_params` so
that the two can never disagree.
"""

from typing import Any

import optuna
from rl_zoo3.hyperparams_opt import convert_onpolicy_params, sample_ppo_params

STPN_PARAM_NAMES = ("stpn_hidden_size", "stpn_variant", "lambda_low", "gamma_init", "clamp", "sequence_length")


def _add_stpn_params(hyperparams: dict[str, Any], raw: dict[str, Any]) -> dict[str, Any]:
    """Put the raw STPN trial parameters into the (converted) PPO hyperparameters."""
    hyperparams["sequence_length"] = raw["sequence_length"]
    hyperparams["policy_kwargs"].update(
        stpn_hidden_size=raw["stpn_hidden_size"],
        stpn_kwargs=dict(
            recurrent=raw["stpn_variant"] == "STPNr",
            lambda_init=(raw["lambda_low"], 1.0),
            gamma_init=raw["gamma_init"],
            clamp=raw["clamp"],
        ),
    )
    return hyperparams


def sample_ppo_stpn_params(trial: optuna.Trial, n_actions: int, n_envs: int, additional_args: dict) -> dict[str, Any]:
    """
    Sample StpnPPO hyperparameters: rl_zoo3's PPO ones, the STPN size and variant and its plasticity initialisation.

    ``lambda_init`` is ``U(lambda_low, 1)``: a higher floor starts with slower-forgetting synapses
    (the paper uses ``U(0, 1)``); ``gamma_init`` scales the initial plasticity rates (paper: 1e-3).
    """
    raw = {
        "stpn_hidden_size": trial.suggest_categorical("stpn_hidden_size", [32, 64, 128]),
        "stpn_variant": trial.suggest_categorical("stpn_variant", ["STPNr", "STPNf"]),
        "lambda_low": trial.suggest_float("lambda_low", 0.0, 0.9),
        "gamma_init": trial.suggest_float("gamma_init", 1e-4, 1e-1, log=True),
        "clamp": trial.suggest_categorical("clamp", [None, 1.0, 10.0]),
        "sequence_length": trial.suggest_categorical("sequence_length", [16, 64, 256]),
    }
    return _add_stpn_params(sample_ppo_params(trial, n_actions, n_envs, additional_args), raw)


def convert_ppo_stpn_params(params: dict[str, Any]) -> dict[str, Any]:
    """Hyperparameters of a finished trial from its raw Optuna parameters."""
    raw = {name: params[name] for name in STPN_PARAM_NAMES}
    ppo_params = {name: value for name, value in params.items() if name not in STPN_PARAM_NAMES}
    return _add_stpn_params(convert_onpolicy_params(ppo_params), raw)
