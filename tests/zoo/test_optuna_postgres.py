"""Optuna studies on a real PostgreSQL server, which the ``postgres_server`` fixture (``tests/conftest.py``) starts (a
throw-away cluster in a temporary folder, on a free local port) and stops: workers started together on an empty
database, and the database errors a user meets. Skipped only where the server's binaries (Debian's postgresql package)
are absent."""

import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from sb3_stpn.cli import train_main
from sb3_stpn.zoo import ZooError, optuna_studies
from tests.conftest import PostgresServer
from tests.helpers import ENV, ONE_THREAD, PASSWORD, check_distinct_trials, check_one_line_error, free_port, run_workers


def test_workers_started_together_on_an_empty_database(postgres_server: str, tmp_path: Path) -> None:
    """No worker crashes creating Optuna's tables; every trial is distinct, all in one study."""
    check_distinct_trials(run_workers(tmp_path, f"{postgres_server}/postgres"))
    with pytest.raises(SystemExit) as exit_info:  # --trial-id reads the database too, the password never shown
        train_main(["--env", ENV, "--trial-id", "9", "--storage", f"{postgres_server}/postgres"])
    where = f"the study ppo_stpn_{ENV} in postgresql://stpn:***@127.0.0.1:"
    check_one_line_error(exit_info.value.code, where)
    check_one_line_error(exit_info.value.code, "has no trial 9 (it has trials 0-3)")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://stpn:wrong@127.0.0.1:{port}/postgres", 'password authentication failed for user "stpn"'),
        ("{server}/missing", 'database "missing" does not exist'),
        (f"postgresql://stpn:{PASSWORD}@127.0.0.1:{{free_port}}/postgres", "Connection refused"),
    ],
)
def test_database_errors(
    url: str, expected: str, postgres_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wrong password, a missing database, no server: one line naming what failed and the fix, the password hidden."""
    monkeypatch.chdir(tmp_path)
    url = url.format(server=postgres_server, port=postgres_server.rsplit(":", 1)[1], free_port=free_port())
    with pytest.raises(SystemExit) as exit_info:
        train_main(["--env", ENV, "--optimize", "--n-trials", "1", "--storage", url])
    check_one_line_error(exit_info.value.code, "cannot open the Optuna database postgresql://stpn:***@127.0.0.1:")
    check_one_line_error(exit_info.value.code, expected)
    assert "start the server or fix the URL's host, port, user, password or database name" in str(exit_info.value.code)
    assert PASSWORD not in str(exit_info.value.code) and ":wrong@" not in str(exit_info.value.code)


def test_missing_driver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLAlchemy maps postgresql:// to psycopg (3): without it, one line naming the extra that installs it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "psycopg", None)  # not installed
    with pytest.raises(SystemExit) as exit_info:
        train_main(["--env", ENV, "--optimize", "--n-trials", "1", "--storage", "postgresql://stpn:secret@127.0.0.1/optuna"])
    check_one_line_error(exit_info.value.code, "--storage postgresql://stpn:***@127.0.0.1/optuna: the database driver")
    check_one_line_error(exit_info.value.code, 'for postgresql:// URLs pip install "sb3-stpn[postgres]"')
    assert "secret" not in str(exit_info.value.code)


def test_a_database_outage_during_a_trial_fails_it_in_one_line(postgres_server: PostgresServer, tmp_path: Path) -> None:
    """PostgreSQL down for 5 s mid-trial: a cascade of tracebacks (optuna's UnboundLocalError among them) and a trial
    left RUNNING. Now the trial fails in one line once the server is back, and the study goes on."""
    url = f"{postgres_server}/postgres"
    command = [sys.executable, "-c", "from sb3_stpn.cli import train_main; train_main()", "--env", ENV, "--optimize",
               "--n-trials", "2", "-n", "6000", "--n-evaluations", "30", "--eval-episodes", "1", "--num-threads", "1",
               "--hyperparams", "n_envs:1", "n_steps:16", "batch_size:16", "n_epochs:1", "--storage", url,
               "--study-name", "outage", "--pruner", "none", "--sampler", "random"]  # fmt: skip
    worker = subprocess.Popen(command, cwd=tmp_path, env=ONE_THREAD, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def trials() -> list[optuna.trial.FrozenTrial]:
        try:
            return optuna.load_study(study_name="outage", storage=url).trials
        except KeyError:  # not created yet
            return []

    deadline = time.monotonic() + 120
    while not [trial for trial in trials() if trial.intermediate_values]:  # trial 0 is reporting its evaluations
        assert worker.poll() is None and time.monotonic() < deadline, worker.stderr.read() if worker.stderr else ""
        time.sleep(0.2)
    postgres_server.pg_ctl("-m immediate stop")
    time.sleep(5)
    postgres_server.pg_ctl("start")
    _, err = worker.communicate(timeout=300)
    assert worker.returncode == 0 and "Traceback" not in err, err[-5000:]
    assert "Trial 0 failed: the Optuna database went away during it (" in err
    assert [trial.state for trial in trials()] == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE]


def test_a_database_that_stays_away_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """No server back within DATABASE_WAIT_S: one error line, found through optuna's cascade of exceptions too."""

    class GoneStudy:
        def get_trials(self, **kwargs: object) -> list:
            raise optuna.exceptions.StorageInternalError("An exception is raised during the commit.")

    monkeypatch.setattr(optuna_studies, "DATABASE_WAIT_S", 0.0)
    url = "postgresql://stpn:secret@127.0.0.1/optuna"
    with pytest.raises(ZooError, match=r"the Optuna database postgresql://stpn:\*\*\*@127.0.0.1/optuna has been unreachable"):
        optuna_studies.wait_for_storage(GoneStudy(), url)  # type: ignore[arg-type]
    # optuna's own cascade: failing to record a failure, it ended in an UnboundLocalError raised while handling that
    cascade = UnboundLocalError("cannot access local variable 'updated_state'")
    cascade.__context__ = optuna.exceptions.StorageInternalError("An exception is raised during the commit.")
    lost = optuna_studies._database_lost(cascade, url)
    assert lost is not None and "lost the Optuna database postgresql://stpn:***@127.0.0.1/optuna" in str(lost)
    assert optuna_studies._database_lost(RuntimeError("unrelated"), url) is None
