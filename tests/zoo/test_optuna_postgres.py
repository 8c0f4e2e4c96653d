"""Optuna studies on a real PostgreSQL server, which the ``postgres_server`` fixture (``tests/conftest.py``) starts (a
throw-away cluster in a temporary folder, on a free local port) and stops: workers started together on an empty
database, and the database errors a user meets. Skipped only where the server's binaries (Debian's postgresql package)
are absent."""

import sys
from pathlib import Path

import pytest

from sb3_stpn.cli import train_main
from tests.helpers import ENV, PASSWORD, check_distinct_trials, check_one_line_error, free_port, run_workers


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
