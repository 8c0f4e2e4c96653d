"""Optuna search for ppo_stpn: the sampler/converter agree, and two processes share one study by default."""

import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from sb3_stpn.cli import train_main
from sb3_stpn.zoo import StpnExperimentManager
from sb3_stpn.zoo.hyperparams_opt import convert_ppo_stpn_params, sample_ppo_stpn_params

ENV = "CartPoleNoVel-v1"
# Runs train_main with the sampled rollouts shrunk, so that a trial takes seconds
WORKER = """
import sys
from rl_zoo3.hyperparams_opt import HYPERPARAMS_SAMPLER
from sb3_stpn.cli import train_main

sample = HYPERPARAMS_SAMPLER["ppo_stpn"]
HYPERPARAMS_SAMPLER["ppo_stpn"] = lambda *args: {**sample(*args), "n_steps": 16, "batch_size": 16, "n_epochs": 1}
train_main(sys.argv[1:])
"""


def test_converter_rebuilds_the_sampled_hyperparameters() -> None:
    """rl_zoo3's --trial-id reloads a trial through the converter: it must give what the sampler gave."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(5):
        trial = study.ask()
        sampled = sample_ppo_stpn_params(trial, n_actions=0, n_envs=1, additional_args={})
        assert convert_ppo_stpn_params(trial.params) == sampled
        assert set(sampled["policy_kwargs"]["stpn_kwargs"]) == {"recurrent", "lambda_init", "gamma_init", "clamp"}
        study.tell(trial, 0.0)


@pytest.mark.parametrize("flag", ["-optimize", "--optimize", "--optimize-hyper", "--optimize-hyperparameters"])
def test_every_spelling_of_optimize_gets_the_shared_study(flag: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """rl_zoo3's parser accepts the flag and its unambiguous abbreviations: each must get the journal and study defaults."""
    studies = []
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(StpnExperimentManager, "setup_experiment", lambda self: None)  # None: go on to optimise
    monkeypatch.setattr(
        StpnExperimentManager, "hyperparameters_optimization", lambda self: studies.append((self.storage, self.study_name))
    )
    train_main(["--env", ENV, flag, "--n-trials", "1"])
    assert studies == [("logs/optuna.log", f"ppo_stpn_{ENV}")]


def test_processes_share_one_study(tmp_path: Path) -> None:
    """Started alike without --storage, workers meet in <log folder>/optuna.log under the study <algo>_<env>."""
    command = [sys.executable, "-c", WORKER, "--algo", "ppo_stpn", "--env", ENV, "--optimize", "--n-trials", "1",
               "-n", "32", "--n-evaluations", "1", "--eval-episodes", "1", "--no-optim-plots", "--num-threads", "1",
               "--hyperparams", "n_envs:1", "--sampler", "random", "--pruner", "none", "--seed", "0"]  # fmt: skip
    workers = [
        subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)
    ]
    for worker in workers:
        out, _ = worker.communicate(timeout=300)
        assert worker.returncode == 0, out[-3000:]

    storage = JournalStorage(JournalFileBackend(str(tmp_path / "logs" / "optuna.log")))
    study = optuna.load_study(study_name=f"ppo_stpn_{ENV}", storage=storage)
    finished = study.get_trials(states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED))
    assert len(finished) == len(workers)
    assert all("stpn_hidden_size" in trial.params for trial in finished)
