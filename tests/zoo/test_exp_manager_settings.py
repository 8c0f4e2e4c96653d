"""StpnExperimentManager drops no setting silently: policy_kwargs overrides merge into the entry's, and --trial-id
loads the trial asked for (trial 0 included, from the default journal) or says in one line that the study lacks it."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from sb3_stpn import StpnPPO
from sb3_stpn.cli import train_main
from sb3_stpn.zoo.hyperparams_opt import sample_ppo_stpn_params
from sb3_stpn.zoo.optuna_studies import WORKER_ATTR
from tests.helpers import check_one_line_error

ENV = "CartPoleNoVel-v1"
TINY = ["-n", "16", "--eval-freq", "-1", "--hyperparams", "n_envs:1", "n_steps:8", "batch_size:8", "n_epochs:1"]
# The CartPoleNoVel-v1 entry's policy_kwargs (sb3_stpn/zoo_configs/ppo_stpn.yml)
ENTRY_STPN_KWARGS = dict(
    lambda_max=None,
    retention_max=None,
    normalize=False,
    clamp=1.0,
    lambda_init=(0.262, 1.0),
    gamma_init=1.35e-04,
    lambda_lr_scale=0.00247,
    gamma_lr_scale=0.00247,
)


def saved_config(log_folder: Path) -> dict:
    """The hyperparameters the (only) run under ``log_folder`` saved in its config.yml."""
    (config,) = log_folder.rglob("config.yml")
    return dict(yaml.unsafe_load(config.read_text()))


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("dict(stpn_hidden_size=32)", dict(stpn_hidden_size=32, stpn_kwargs=ENTRY_STPN_KWARGS)),  # the README's example
        ("dict(stpn_kwargs=dict(clamp=0.5))", dict(stpn_hidden_size=64, stpn_kwargs={**ENTRY_STPN_KWARGS, "clamp": 0.5})),
    ],
)
def test_policy_kwargs_override_merges_into_the_entry(
    override: str, expected: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The keys the override names change; net_arch, activation_fn, ortho_init and the other stpn_kwargs stay."""
    monkeypatch.chdir(tmp_path)
    train_main(["--env", ENV, *TINY, f"policy_kwargs:{override}"])
    policy_kwargs = saved_config(tmp_path / "logs")["policy_kwargs"]
    assert policy_kwargs["net_arch"] == dict(pi=[64], vf=[64])
    assert policy_kwargs["ortho_init"] is False and policy_kwargs["activation_fn"].__name__ == "ReLU"
    assert {name: policy_kwargs[name] for name in expected} == expected


def test_integral_floats_are_taken_as_the_integers_they_are(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """YAML writes 1e5 and 32.0 as floats: integer hyperparameters holding whole numbers train, as ints."""
    monkeypatch.chdir(tmp_path)
    train_main(["--env", ENV, *TINY, "sequence_length:8.0", "n_steps:16.0"])
    (saved,) = (tmp_path / "logs").rglob(f"{ENV}.zip")
    model = StpnPPO.load(saved)
    assert (model.sequence_length, model.n_steps) == (8, 16)
    assert isinstance(model.sequence_length, int) and isinstance(model.n_steps, int)


@pytest.fixture
def study(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> optuna.Study:
    """The study --optimize would have written to the default journal: two finished ppo_stpn trials."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "logs").mkdir()
    storage = JournalStorage(JournalFileBackend(str(tmp_path / "logs" / "optuna.log")))
    study = optuna.create_study(storage=storage, study_name=f"ppo_stpn_{ENV}", direction="maximize")
    for value in (1.0, 2.0):
        trial = study.ask()
        sample_ppo_stpn_params(trial, n_actions=2, n_envs=1, additional_args={})
        study.tell(trial, value)
    return study


def test_trial_id_0_from_the_default_journal(study: optuna.Study, tmp_path: Path) -> None:
    """Without --storage, --trial-id reads logs/optuna.log, as --optimize writes it; trial 0 is not skipped."""
    train_main(["--env", ENV, *TINY, "--trial-id", "0"])
    config = saved_config(tmp_path / "logs")
    params = study.trials[0].params
    assert config["learning_rate"] == params["learning_rate"]
    assert config["policy_kwargs"]["stpn_kwargs"]["normalize"] == params["normalize"]
    assert config["policy_kwargs"]["net_arch"] == dict(pi=[64], vf=[64])  # the entry's, kept


def test_trial_id_and_policy_kwargs_override(study: optuna.Study, tmp_path: Path) -> None:
    """rl_zoo3's order (entry, then trial, then --hyperparams), the override merged into the trial's policy_kwargs."""
    train_main(["--env", ENV, *TINY, "policy_kwargs:dict(stpn_hidden_size=16)", "--trial-id", "1"])
    policy_kwargs = saved_config(tmp_path / "logs")["policy_kwargs"]
    assert policy_kwargs["stpn_hidden_size"] == 16
    assert policy_kwargs["stpn_kwargs"]["gamma_init"] == study.trials[1].params["gamma_init"]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--trial-id", "2"], f"the study ppo_stpn_{ENV} in logs/optuna.log has no trial 2 (it has trials 0-1)"),
        (["--trial-id", "-1"], "has no trial -1"),
        (["--trial-id", "0", "--study-name", "other"], f"no study other in logs/optuna.log (studies there: ppo_stpn_{ENV})"),
        (["--trial-id", "0", "--storage", "missing.log"], "no Optuna journal missing.log; run --optimize first"),
    ],
)
def test_trial_id_the_study_lacks(argv: list[str], expected: str, study: optuna.Study, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        train_main(["--env", ENV, *TINY, *argv])
    check_one_line_error(exit_info.value.code, expected)
    assert not list(tmp_path.rglob("config.yml"))  # nothing trained


@pytest.mark.parametrize("flags", [["--trial-id", "0"], ["--optimize", "--n-trials", "1"]])
def test_a_journal_ending_in_a_partial_line_is_one_line_naming_it(
    flags: list[str], study: optuna.Study, tmp_path: Path
) -> None:
    """A worker killed mid-write leaves a partial last line; the next worker died with a JSONDecodeError, and
    --trial-id blamed the config file."""
    journal = tmp_path / "logs" / "optuna.log"
    lines = len(journal.read_text().splitlines())
    with journal.open("a") as file:
        file.write('{"op_code": 5, "wor')
    with pytest.raises(SystemExit) as exit_info:
        train_main(["--env", ENV, *TINY, *flags])
    check_one_line_error(
        exit_info.value.code, f"the Optuna journal logs/optuna.log has a damaged line {lines + 1} (a worker killed while"
    )
    assert f"sed -i '{lines + 1}d' logs/optuna.log" in str(exit_info.value.code)


def test_each_key_value_is_evaluated_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """rl_zoo3 evaluates each --hyperparams/--env-kwargs value once; its side effects ran twice here."""
    monkeypatch.chdir(tmp_path)
    counted = "open('evaluations', 'a').write('x') and {}"
    train_main(["--env", ENV, *TINY, f"n_epochs:{counted.format(1)}", "--env-kwargs", f"render_mode:{counted.format(None)}"])
    assert (tmp_path / "evaluations").read_text() == "xx"
    assert saved_config(tmp_path / "logs")["n_epochs"] == 1


def test_trials_of_killed_workers_on_this_host_are_failed(
    study: optuna.Study, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A SIGKILLed worker's trial stayed RUNNING for ever, and --max-total-trials counted it."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a worker of this host that is no more
    dead, remote = study.ask(), study.ask()
    dead.set_user_attr(WORKER_ATTR, f"{socket.gethostname()}:{gone.pid}")
    remote.set_user_attr(WORKER_ATTR, "another-host:1")
    train_main(["--env", ENV, *TINY, "--optimize", "--n-trials", "1"])
    states = {trial.number: trial.state for trial in study.trials}
    assert states[dead.number] == TrialState.FAIL and states[remote.number] == TrialState.RUNNING
    assert f"Trial {dead.number} failed: its worker (process {gone.pid} of this host) is gone" in capsys.readouterr().err
    (new,) = [trial for trial in study.trials if trial.number > remote.number]  # the trial this worker ran, marked
    assert new.user_attrs[WORKER_ATTR] == f"{socket.gethostname()}:{os.getpid()}"
