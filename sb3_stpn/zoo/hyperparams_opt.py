"""Optuna search spaces for ``ppo_stpn`` and ``ppo_lstm``: a memory model's own knobs on top of its zoo entry.

rl_zoo3's PPO space re-samples a dozen PPO settings; a study of a few dozen short trials, which is what
these machines afford, cannot search that well. The zoo's recurrent entries already hold PPO settings
tuned for a memory policy on each task, so these spaces keep them and search what differs between
memory models: the learning rate (the paper tuned it per model, e.g. Pong STPN 7e-4 vs LSTM 1e-4) and,
for the STPN, its own options (weight normalisation, when it applies and a learned norm gain, the
clamp of ``F``, the variant, the plasticity initialisation and the plasticity's learning-rate scale).
The LSTM gets the same number of trials over its learning rate and entropy bonus, so both models are
compared each at its own best.

rl_zoo3 replaces an entry's ``policy_kwargs`` with the sampled ones; :func:`tuning_entry` tells the
samplers the entry's, which the STPN options are merged into (:func:`merge_policy_kwargs`) (``StpnExperimentManager.objective``
sets it). rl_zoo3 calls the converter to rebuild a trial's hyperparameters from its stored raw
parameters; it goes through the same functions as the samplers, so the two can never disagree.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import optuna

# The policy_kwargs of the zoo entry a study runs on (see tuning_entry)
_ENTRY_POLICY_KWARGS: ContextVar[dict[str, Any] | None] = ContextVar("entry_policy_kwargs", default=None)


@contextmanager
def tuning_entry(policy_kwargs: dict[str, Any]) -> Iterator[None]:
    """Within this block the samplers and converters merge the STPN options into ``policy_kwargs``."""
    token = _ENTRY_POLICY_KWARGS.set(dict(policy_kwargs))
    try:
        yield
    finally:
        _ENTRY_POLICY_KWARGS.reset(token)


def merge_policy_kwargs(entry: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """
    ``override`` on top of ``entry``, key by key, and ``stpn_kwargs`` key by key too: keys the override does not
    name keep the entry's values (``net_arch`` and the other values are replaced whole). Neither dict is modified.
    """
    merged = {**entry, **override}
    if "stpn_kwargs" in override:
        merged["stpn_kwargs"] = {**(entry.get("stpn_kwargs") or {}), **(override["stpn_kwargs"] or {})}
    return merged


def _common_params(raw: dict[str, Any]) -> dict[str, Any]:
    return {"learning_rate": raw["learning_rate"], "ent_coef": raw["ent_coef"]}


def _stpn_hyperparams(raw: dict[str, Any]) -> dict[str, Any]:
    """StpnPPO hyperparameters from the raw trial parameters, the STPN options merged into the entry's."""
    stpn_kwargs = dict(
        recurrent=raw["stpn_variant"] == "STPNr",
        normalize=raw["normalize"],
        clamp=raw["clamp"],
        lambda_init=(raw["lambda_low"], 1.0),
        gamma_init=raw["gamma_init"],
    )
    # Always written out, so that neither the entry's scale nor the policies' default (0.1 since 0.3.0) replaces the
    # trial's: trials of studies run before the scale was searched trained the plasticity at the full learning rate
    scale = raw.get("plasticity_lr_scale", 1.0)
    stpn_kwargs.update(lambda_lr_scale=scale, gamma_lr_scale=scale)
    if raw["normalize"]:
        stpn_kwargs.update(norm_time=raw["norm_time"], norm_gain=raw["norm_gain"])
    policy_kwargs = merge_policy_kwargs(_ENTRY_POLICY_KWARGS.get() or {}, {"stpn_kwargs": stpn_kwargs})
    return {**_common_params(raw), "policy_kwargs": policy_kwargs}


def _sample_common(trial: optuna.Trial) -> dict[str, Any]:
    return {
        "learning_rate": trial.suggest_float("learning_rate", 1e-4, 5e-3, log=True),
        "ent_coef": trial.suggest_float("ent_coef", 1e-6, 3e-2, log=True),
    }


def sample_ppo_stpn_params(trial: optuna.Trial, n_actions: int, n_envs: int, additional_args: dict) -> dict[str, Any]:
    """
    Sample the STPN's options and the learning rate and entropy bonus; other settings stay the entry's.

    ``lambda_init`` is ``U(lambda_low, 1)``: a higher floor starts with slower-forgetting synapses
    (the paper uses ``U(0, 1)``); ``gamma_init`` scales the initial plasticity rates (paper: 1e-3).
    ``norm_time`` and ``norm_gain`` are sampled only when the weights are normalised (else they do nothing).
    ``plasticity_lr_scale`` trains ``weight_lambda`` and ``weight_gamma`` at that fraction of the learning rate
    (``lambda_lr_scale`` and ``gamma_lr_scale``; 1 is the paper's model): at the full rate Adam moves the tiny
    initial gammas far beyond their size within a few updates (docs/plasticity.md).
    """
    raw = _sample_common(trial)
    raw.update(
        stpn_variant=trial.suggest_categorical("stpn_variant", ["STPNr", "STPNf"]),
        normalize=trial.suggest_categorical("normalize", [True, False]),
        clamp=trial.suggest_categorical("clamp", [None, 0.1, 1.0]),
        lambda_low=trial.suggest_float("lambda_low", 0.0, 0.9),
        gamma_init=trial.suggest_float("gamma_init", 1e-4, 1.0, log=True),
        plasticity_lr_scale=trial.suggest_float("plasticity_lr_scale", 1e-3, 1.0, log=True),
    )
    if raw["normalize"]:
        raw.update(
            norm_time=trial.suggest_categorical("norm_time", ["pre", "post"]),
            norm_gain=trial.suggest_categorical("norm_gain", [False, True]),
        )
    return _stpn_hyperparams(raw)


def convert_ppo_stpn_params(sampled_params: dict[str, Any]) -> dict[str, Any]:
    """Hyperparameters of a finished ``ppo_stpn`` trial from its raw Optuna parameters."""
    return _stpn_hyperparams(sampled_params)


def sample_ppo_lstm_params(trial: optuna.Trial, n_actions: int, n_envs: int, additional_args: dict) -> dict[str, Any]:
    """Sample the LSTM's learning rate and entropy bonus; other settings (its size included) stay the entry's."""
    return _common_params(_sample_common(trial))


def convert_ppo_lstm_params(sampled_params: dict[str, Any]) -> dict[str, Any]:
    """Hyperparameters of a finished ``ppo_lstm`` trial from its raw Optuna parameters."""
    return _common_params(sampled_params)
