"""Fixtures shared by the tests: which path of ``stpn_sequence`` runs (the layer's and the op's tests), and a
throw-away PostgreSQL server (the Optuna and docs tests)."""

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch as th

from sb3_stpn.ops.stpn import KERNEL_ENV, cpp_kernel_available, dispatch
from tests.helpers import BIN, PASSWORD, free_port

# The test models are tiny: one thread avoids oversubscribing the small CI machine
th.set_num_threads(1)


@pytest.fixture(scope="module")
def cpp_available() -> bool:
    return cpp_kernel_available()


@pytest.fixture(params=["reference", "torch", "cpp"])
def kernel(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, cpp_available: bool) -> str:
    """Forces a path, with segments short enough that the fused paths recompute several checkpoints."""
    if request.param == "cpp" and not cpp_available:
        pytest.skip("the C++ kernel could not be built here (no compiler?)")
    monkeypatch.setenv(KERNEL_ENV, request.param)
    monkeypatch.setattr(dispatch, "SEGMENT_BUDGET_BYTES", 1)
    return request.param


class PostgresServer(str):
    """The server's URL without database (a ``str``, as the tests use it), which can also be stopped and started."""

    def __new__(cls, url: str, control: list) -> "PostgresServer":
        server = super().__new__(cls, url)
        server.control = control  # pg_ctl's command line without its action, and how to run it (as which user)
        return server

    def pg_ctl(self, action: str) -> None:
        command, as_server = self.control
        subprocess.run([*command, *action.split()], check=True, capture_output=True, **as_server)


@pytest.fixture(scope="module")
def postgres_server() -> Iterator[PostgresServer]:
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
    server = PostgresServer(
        f"postgresql://stpn:{PASSWORD}@127.0.0.1:{port}",
        [[BIN / "pg_ctl", "-D", data, "-o", options, "-l", folder / "server.log", "-w"], as_server],
    )
    server.pg_ctl("start")
    try:
        yield server
    finally:
        subprocess.run([BIN / "pg_ctl", "-D", data, "-m", "immediate", "stop"], capture_output=True, **as_server)
        shutil.rmtree(folder, ignore_errors=True)
