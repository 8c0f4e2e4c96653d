"""Every entry of sb3_stpn/zoo_configs/ppo_stpn.yml and ppo_lstm.yml loads, trains a short rollout; the two match in size."""

import argparse
from pathlib import Path

import pytest
import rl_zoo3.exp_manager
import yaml
from stable_baselines3.common.base_class import BaseAlgorithm

from sb3_stpn.common.policies import POLICY_STPN_DEFAULTS
from sb3_stpn.zoo import CONFIG_DIR, StpnExperimentManager

CONFIG = yaml.safe_load((CONFIG_DIR / "ppo_stpn.yml").read_text())
ENTRIES = list(CONFIG)
# The environment each entry is tried on: its own id, except for the two catch-all entries
TRY_ON = {"atari": "PongNoFrameskip-v4", "default": "CartPole-v1"}
# The entries with the policies' STPN defaults: the catch-alls, and Pong (the atari entry at the paper's learning rate)
WITH_POLICY_DEFAULTS = {*TRY_ON, "PongNoFrameskip-v4"}
# Tiny rollouts: the point is that each entry builds and runs, not that it learns
SHRINK = {"n_envs": 1, "n_steps": 8, "batch_size": 8, "n_epochs": 1}


def train_one_rollout(algo: str, env_id: str, log_folder: Path) -> BaseAlgorithm:
    manager = StpnExperimentManager(
        argparse.Namespace(),
        algo,
        env_id,
        str(log_folder),
        n_timesteps=8,
        eval_freq=-1,
        hyperparams=dict(SHRINK),
        config=str(CONFIG_DIR / f"{algo}.yml"),
        verbose=0,
        seed=0,
        log_interval=-1,
    )
    model, _ = manager.setup_experiment()
    manager.learn(model)
    assert model.num_timesteps == 8
    return model


def n_parameters(model: BaseAlgorithm) -> int:
    return sum(p.numel() for p in model.policy.parameters() if p.requires_grad)


def test_both_files_have_the_same_entries() -> None:
    assert list(yaml.safe_load((CONFIG_DIR / "ppo_lstm.yml").read_text())) == ENTRIES


@pytest.mark.parametrize("entry", ENTRIES)
def test_entry_trains_and_sizes_match(entry: str, tmp_path: Path) -> None:
    env_id = TRY_ON.get(entry, entry)
    stpn = train_one_rollout("ppo_stpn", env_id, tmp_path)
    lstm = train_one_rollout("ppo_lstm", env_id, tmp_path)
    assert type(stpn.policy.stpn_actor).__name__ == "STPN"
    # Parameter-matched baselines (GridMaze keeps the paper's sizes, 3.7% apart)
    assert n_parameters(lstm) == pytest.approx(n_parameters(stpn), rel=0.04)


@pytest.mark.parametrize("entry", ENTRIES)
def test_entry_states_every_setting_the_policies_defaults_change(entry: str) -> None:
    """The catch-all entries (and Pong's) are the policies' STPN defaults, written out; every other entry names each
    setting any version's policies changed (lambda_max in 0.2.0, then these), so that it keeps the STPN it was tuned
    or measured with whatever the defaults become."""
    policy_kwargs = eval(CONFIG[entry]["policy_kwargs"], vars(rl_zoo3.exp_manager))  # as rl_zoo3 reads it
    stpn_kwargs = policy_kwargs["stpn_kwargs"]
    if entry in WITH_POLICY_DEFAULTS:
        assert stpn_kwargs == POLICY_STPN_DEFAULTS
    else:
        assert {"lambda_max", *POLICY_STPN_DEFAULTS} <= set(stpn_kwargs)
