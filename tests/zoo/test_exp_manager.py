"""StpnExperimentManager under the faults of real clusters: runs started together, SIGTERM, killed runs."""

import argparse
from pathlib import Path

import gymnasium as gym
import pytest
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

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


def normalized_run(tmp_path: Path) -> Path:
    """A normalised run with checkpoints at 8 and 16 steps, whose final model and statistics a kill prevented."""
    manager = make_manager(tmp_path, normalize=True)
    manager.save_freq = 8
    model, _ = manager.setup_experiment()
    manager.learn(model)
    run = Path(manager.save_path)
    assert sorted(path.name for path in run.glob("rl_model_*")) == [
        "rl_model_16_steps.zip", "rl_model_8_steps.zip", "rl_model_vecnormalize_16_steps.pkl",
        "rl_model_vecnormalize_8_steps.pkl",
    ]  # fmt: skip
    return run


def test_continuing_from_a_checkpoint_loads_its_own_statistics(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = normalized_run(tmp_path / "first")
    saved = VecNormalize.load(str(run / "rl_model_vecnormalize_8_steps.pkl"), DummyVecEnv([lambda: gym.make(ENV)]))
    manager = make_manager(tmp_path / "second", normalize=True)
    manager.trained_agent = str(run / "rl_model_8_steps.zip")
    manager.continue_training = True
    model, _ = manager.setup_experiment()
    statistics = model.get_vec_normalize_env()
    assert statistics is not None and statistics.obs_rms.count == saved.obs_rms.count > 1
    assert "statistics saved with the checkpoint" in capsys.readouterr().out


def test_continuing_without_statistics_warns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = normalized_run(tmp_path / "first")
    (run / "rl_model_vecnormalize_8_steps.pkl").unlink()
    manager = make_manager(tmp_path / "second", normalize=True)
    manager.trained_agent = str(run / "rl_model_8_steps.zip")
    manager.continue_training = True
    manager.setup_experiment()
    assert "normalisation restarts from zero" in capsys.readouterr().err
