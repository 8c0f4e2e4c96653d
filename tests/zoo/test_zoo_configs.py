"""Every entry of sb3_stpn/zoo_configs/ppo_stpn.yml and ppo_lstm.yml loads, trains a short rollout; the two match in size."""

import argparse
from pathlib import Path

import pytest
import yaml
from stable_baselines3.common.base_class import BaseAlgorithm

from sb3_stpn.zoo import CONFIG_DIR, StpnExperimentManager

ENTRIES = list(yaml.safe_load((CONFIG_DIR / "ppo_stpn.yml").read_text()))
# The environment each entry is tried on: its own id, except for the two catch-all entries
TRY_ON = {"atari": "PongNoFrameskip-v4", "default": "CartPole-v1"}
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
