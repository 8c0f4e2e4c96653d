"""Optuna studies on a real PostgreSQL server, which this module starts (a throw-away cluster in a temporary folder,
on a free local port) and stops: workers started together on an empty database, and the database errors a user meets.
Skipped only where the server's binaries (Debian's postgresql package) are absent."""

import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from sb3_stpn.cli import train_main
from tests.test_cli_errors import check_one_line_error
from tests.zoo.test_optuna import ENV, check_distinct_trials, run_workers

PASSWORD = "stpn-test"
# The server's binaries: on PATH, or where Debian's postgresql package puts them
BIN = next(
    (Path(path).parent for path in [shutil.which("initdb"), *sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))] if path),
    None,
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """A fresh PostgreSQL cluster on 127.0.0.1, password authentication; yields its URL without database."""
    if BIN is None:
        pytest.skip("no PostgreSQL server binaries (initdb); apt-get install postgresql to run these tests")
    # PostgreSQL refuses to run as root: as root, run it as the postgres user the package creates
    user = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
    folder = Path(tempfile.mkdtemp(prefix="sb3_stpn_postgres_"))  # not under pytest's root-only tmp folders
    (folder / "password").write_text(PASSWORD)
    if user is not None:
        for path in (folder, folder / "password"):
            os.chown(path, user.pw_uid, user.pw_gid)
    as_server = {"user": user.pw_uid} if user is not None else {}
    port = free_port()
    data = folder / "data"
    subprocess.run(
        [BIN / "initdb", "-D", data, "-U", "stpn", "--auth=scram-sha-256", f"--pwfile={folder / 'password'}"],
        check=True, capture_output=True, **as_server,
    )  # fmt: skip
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
    start = [BIN / "pg_ctl", "-D", data, "-o", options, "-l", folder / "server.log", "-w", "start"]
    subprocess.run(start, check=True, capture_output=True, **as_server)
    try:
        yield f"postgresql://stpn:{PASSWORD}@127.0.0.1:{port}"
    finally:
        subprocess.run([BIN / "pg_ctl", "-D", data, "-m", "immediate", "stop"], capture_output=True, **as_server)
        shutil.rmtree(folder, ignore_errors=True)


def test_workers_started_together_on_an_empty_database(server: str, tmp_path: Path) -> None:
    """No worker crashes creating Optuna's tables; every trial is distinct, all in one study."""
    check_distinct_trials(run_workers(tmp_path, f"{server}/postgres"))
    with pytest.raises(SystemExit) as exit_info:  # --trial-id reads the database too, the password never shown
        train_main(["--env", ENV, "--trial-id", "9", "--storage", f"{server}/postgres"])
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
def test_database_errors(url: str, expected: str, server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A wrong password, a missing database, no server: one line naming what failed and the fix, the password hidden."""
    monkeypatch.chdir(tmp_path)
    url = url.format(server=server, port=server.rsplit(":", 1)[1], free_port=free_port())
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
