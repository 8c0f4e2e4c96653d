"""Optuna search for ppo_stpn: the sampler/converter agree, and two processes share one study by default, each trial
its own."""

import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml

from sb3_stpn.cli import train_main
from sb3_stpn.zoo import StpnExperimentManager
from sb3_stpn.zoo.hyperparams_opt import (
    convert_ppo_lstm_params,
    convert_ppo_stpn_params,
    sample_ppo_lstm_params,
    sample_ppo_stpn_params,
    tuning_entry,
)
from sb3_stpn.zoo.optuna_studies import TrialSeededSampler
from tests.helpers import ENV, ONE_THREAD, check_distinct_trials, run_workers


@pytest.mark.parametrize(
    ("sample", "convert"),
    [(sample_ppo_stpn_params, convert_ppo_stpn_params), (sample_ppo_lstm_params, convert_ppo_lstm_params)],
)
def test_converter_rebuilds_the_sampled_hyperparameters(sample, convert) -> None:
    """rl_zoo3's --trial-id reloads a trial through the converter: it must give what the sampler gave."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(8):
        trial = study.ask()
        sampled = sample(trial, n_actions=0, n_envs=1, additional_args={})
        assert convert(trial.params) == sampled
        study.tell(trial, 0.0)


def test_trials_of_studies_without_the_plasticity_scale_convert_to_the_paper_rate() -> None:
    """Journals committed before ``plasticity_lr_scale`` was searched still rebuild their trials (at scale 1)."""
    old_trial = {"learning_rate": 1e-3, "ent_coef": 1e-4, "stpn_variant": "STPNf", "normalize": False, "clamp": 1.0}
    old_trial.update(lambda_low=0.1, gamma_init=1e-3)
    options = {"recurrent": False, "normalize": False, "clamp": 1.0, "lambda_init": (0.1, 1.0), "gamma_init": 1e-3}
    # Written out, so that neither an entry's scale nor the policies' default (0.1x) replaces the rate it trained at
    with tuning_entry({"stpn_kwargs": {"lambda_lr_scale": 0.1, "gamma_lr_scale": 0.1}}):
        replayed = convert_ppo_stpn_params(old_trial)["policy_kwargs"]["stpn_kwargs"]
    assert replayed == {**options, "lambda_lr_scale": 1.0, "gamma_lr_scale": 1.0}
    assert convert_ppo_stpn_params(old_trial)["policy_kwargs"]["stpn_kwargs"] == replayed
    scaled = convert_ppo_stpn_params({**old_trial, "plasticity_lr_scale": 0.01})["policy_kwargs"]["stpn_kwargs"]
    assert scaled == {**options, "lambda_lr_scale": 0.01, "gamma_lr_scale": 0.01}


def test_spaces_tune_the_memory_on_top_of_the_entry() -> None:
    """Only the learning rate, the entropy bonus and the STPN's options are sampled; the entry's policy_kwargs stay."""
    entry = {"net_arch": dict(pi=[64], vf=[64]), "stpn_hidden_size": 55, "stpn_kwargs": dict(rule="oja")}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    sampled_stpn_kwargs = []
    for _ in range(8):
        trial = study.ask()
        with tuning_entry(entry):
            stpn = sample_ppo_stpn_params(trial, n_actions=0, n_envs=1, additional_args={})
        assert set(stpn) == {"learning_rate", "ent_coef", "policy_kwargs"}
        kwargs = stpn["policy_kwargs"]
        assert kwargs["net_arch"] == entry["net_arch"] and kwargs["stpn_hidden_size"] == 55
        assert kwargs["stpn_kwargs"]["rule"] == "oja"  # the entry's own STPN options are kept
        assert {"recurrent", "normalize", "clamp", "lambda_init", "gamma_init"} <= set(kwargs["stpn_kwargs"])
        assert ("norm_time" in kwargs["stpn_kwargs"]) == kwargs["stpn_kwargs"]["normalize"]
        sampled_stpn_kwargs.append(kwargs["stpn_kwargs"])
        study.tell(trial, 0.0)
    assert entry["stpn_kwargs"] == {"rule": "oja"}  # not modified in place
    scales = {(kwargs["lambda_lr_scale"], kwargs["gamma_lr_scale"]) for kwargs in sampled_stpn_kwargs}
    assert len(scales) == 8 and all(lam == gam and 1e-3 <= lam <= 1 for lam, gam in scales)
    lstm = sample_ppo_lstm_params(study.ask(), n_actions=0, n_envs=1, additional_args={})
    assert set(lstm) == {"learning_rate", "ent_coef"}


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
    """
    Started alike (the same --seed) without --storage, workers meet in <log folder>/optuna.log under the study
    <algo>_<env>, and each runs trials of its own.
    """
    finished = check_distinct_trials(run_workers(tmp_path))
    assert all("normalize" in trial.params for trial in finished)

    # --trial-id trains with the trial's STPN options merged into the entry's policy_kwargs (net_arch kept)
    trial = max(finished, key=lambda trial: trial.number)
    command = [sys.executable, "-c", "from sb3_stpn.cli import train_main; train_main()",
               "--algo", "ppo_stpn", "--env", ENV, "-n", "32",
               "--hyperparams", "n_envs:1", "n_steps:16", "batch_size:16", "n_epochs:1", "--num-threads", "1",
               "--storage", str(tmp_path / "logs" / "optuna.log"), "--study-name", f"ppo_stpn_{ENV}",
               "--trial-id", str(trial.number), "-f", str(tmp_path / "trained")]  # fmt: skip
    out = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    config = dict(yaml.unsafe_load(next((tmp_path / "trained").rglob("config.yml")).read_text()))
    assert config["policy_kwargs"]["net_arch"] == dict(pi=[64], vf=[64])  # the entry's, kept
    assert config["policy_kwargs"]["stpn_kwargs"]["normalize"] == trial.params["normalize"]
    assert config["learning_rate"] == trial.params["learning_rate"]


def test_trial_seeded_sampler_differs_across_workers_and_repeats_in_one_process() -> None:
    """Two workers seeded alike on one study propose different trials; a process seeded alike again repeats its own."""

    def proposals(study: optuna.Study, sampler: TrialSeededSampler, n_trials: int) -> list[dict]:
        study.sampler = sampler
        trials = [study.ask({"x": optuna.distributions.FloatDistribution(0, 1)}) for _ in range(n_trials)]
        for trial in trials:
            study.tell(trial, 0.0)
        return [trial.params for trial in trials]

    def sampler() -> TrialSeededSampler:
        return TrialSeededSampler(lambda seed: optuna.samplers.RandomSampler(seed=seed), seed=0)

    shared = optuna.create_study()
    first, second = proposals(shared, sampler(), 2), proposals(shared, sampler(), 2)  # two workers, one study
    assert len({params["x"] for params in first + second}) == 4
    assert proposals(optuna.create_study(), sampler(), 2) == first  # a new study, the same seed: the same trials


@pytest.mark.parametrize(
    ("after_a_trial", "stop", "status"),
    [(True, signal.SIGTERM, 143), (False, signal.SIGINT, 130), (False, signal.SIGTERM, 143)],
)
def test_a_signal_during_optimize_exits_128_plus_it_with_one_line(
    after_a_trial: bool, stop: signal.Signals, status: int, tmp_path: Path
) -> None:
    """rl_zoo3 catches the KeyboardInterrupt and reports as if the study had ended: exit 0, or before any finished
    trial optuna's ValueError traceback. A stop is a stop: 128 + signal, one line, the finished trials kept."""
    budget = "64" if after_a_trial else "1000000"  # a trial of a few seconds, or one that never ends
    command = [sys.executable, "-u", "-c", "from sb3_stpn.cli import train_main; train_main()", "--env", ENV, "--optimize",
               "--n-trials", "50", "-n", budget, "--n-evaluations", "1", "--eval-episodes", "1", "--num-threads", "1",
               "--hyperparams", "n_envs:1", "n_steps:16", "batch_size:16", "n_epochs:1"]  # fmt: skip
    process = subprocess.Popen(
        command, cwd=tmp_path, env=ONE_THREAD, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert process.stdout is not None
    awaited = "Trial 0 finished" if after_a_trial else "Sampler:"
    seen = []
    for line in process.stdout:
        seen.append(line)
        if awaited in line:
            break
    process.send_signal(stop)
    rest, _ = process.communicate(timeout=120)
    out = "".join(seen) + rest
    assert process.returncode == status, out[-3000:]
    assert "Traceback" not in out
    assert out.strip().splitlines()[-1] == f"stopped by {stop.name}: the study keeps the trials that finished"
    finished = optuna.load_study(study_name=f"ppo_stpn_{ENV}", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "logs" / "optuna.log"))))  # fmt: skip
    assert bool(finished.get_trials(states=[optuna.trial.TrialState.COMPLETE])) == after_a_trial
