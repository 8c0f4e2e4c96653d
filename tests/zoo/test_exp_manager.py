"""StpnExperimentManager under the faults of real clusters: runs started together, SIGTERM, killed runs."""

import argparse
from pathlib import Path

import pytest

from sb3_stpn.zoo import CONFIG_DIR, StpnExperimentManager, ZooError

ENV = "CartPoleNoVel-v1"
TINY = {"n_envs": 1, "n_steps": 8, "batch_size": 8, "n_epochs": 1}


def make_manager(log_folder: Path, **hyperparams: object) -> StpnExperimentManager:
    return StpnExperimentManager(
        argparse.Namespace(),
        "ppo_stpn",
        ENV,
        str(log_folder),
        hyperparams={**TINY, **hyperparams},
        n_timesteps=16,
        eval_freq=-1,
        config=str(CONFIG_DIR / "ppo_stpn.yml"),
        verbose=0,
        log_interval=-1,
    )


def test_runs_started_together_claim_different_folders(tmp_path: Path) -> None:
    """Both managers pick id 1 when made (rl_zoo3's rule); the second to make its folder must move on to 2."""
    first, second = make_manager(tmp_path), make_manager(tmp_path)
    assert first.save_path == second.save_path
    first.setup_experiment()
    second.setup_experiment()
    assert Path(first.save_path).name == f"{ENV}_1" and Path(second.save_path).name == f"{ENV}_2"
    assert second.params_path == f"{second.save_path}/{ENV}"
    assert (Path(first.params_path) / "config.yml").is_file() and (Path(second.params_path) / "config.yml").is_file()


def test_a_failing_run_leaves_a_simultaneous_runs_folder_alone(tmp_path: Path) -> None:
    failing = make_manager(tmp_path, n_stepz=8)
    running = make_manager(tmp_path)
    running.setup_experiment()  # takes the folder the failing run had picked too
    with pytest.raises(ZooError, match="n_stepz"):
        failing.setup_experiment()
    assert Path(running.params_path, "config.yml").is_file()
