"""What several test modules share (their fixtures are in ``conftest.py``): running the repository's scripts, reading
a run's TensorBoard events, the docs' Python blocks, one-line errors, Optuna workers started together, PostgreSQL's
binaries and a free port."""

import glob
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import optuna
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from sb3_stpn.zoo.optuna_studies import open_storage

REPO = Path(__file__).resolve().parents[1]
# Tiny models: one torch thread each, as the in-process tests (tests/conftest.py)
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


def run_script(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run one of the repository's scripts, or with script "-m" a module, and check that it succeeds."""
    command = [sys.executable, *(["-m"] if script == "-m" else [str(REPO / script)]), *args]
    result = subprocess.run(command, cwd=cwd, env=ONE_THREAD, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def read_events(log_dir: Path) -> EventAccumulator:
    (event_file,) = log_dir.rglob("events.out.tfevents.*")
    events = EventAccumulator(str(event_file), size_guidance={"scalars": 0, "histograms": 0})
    events.Reload()
    return events


def python_blocks(path: Path) -> Iterator[tuple[int, str]]:
    """Each ```python block of a Markdown file, with the number of its first line."""
    text = path.read_text()
    for match in re.finditer(r"```python\n(.*?)```", text, re.S):
        yield text.count("\n", 0, match.start()) + 2, match.group(1)


def check_one_line_error(code: object, expected: str) -> None:
    assert isinstance(code, str), f"expected an error message, got exit code {code!r}"
    assert code.startswith("error: ") and "\n" not in code and expected in code, code


# Optuna workers
# The env of the Optuna workers' studies
ENV = "CartPoleNoVel-v1"
# Runs train_main with the sampled rollouts shrunk, so that a trial takes seconds; once imported, each worker waits
# until all $WORKERS have marked themselves ready in $READY_DIR, so that they open the storage at the same moment
WORKER = """
import os, sys, time
from pathlib import Path
from rl_zoo3.hyperparams_opt import HYPERPARAMS_SAMPLER
from sb3_stpn.cli import train_main

sample = HYPERPARAMS_SAMPLER["ppo_stpn"]
HYPERPARAMS_SAMPLER["ppo_stpn"] = lambda *args: {**sample(*args), "n_steps": 16, "batch_size": 16, "n_epochs": 1}
ready = Path(os.environ["READY_DIR"])
(ready / str(os.getpid())).touch()
while len(list(ready.iterdir())) < int(os.environ["WORKERS"]):
    time.sleep(0.005)
train_main(sys.argv[1:])
"""
# Two trials in each of two workers
WORKERS, TRIALS = 2, 2


def run_workers(folder: Path, storage: str | None = None) -> optuna.Study:
    """
    Start WORKERS processes with the same command (the same --seed) together, on ``storage`` (default: the journal
    <log folder>/optuna.log); return the study they shared, the only one there.
    """
    command = [sys.executable, "-c", WORKER, "--algo", "ppo_stpn", "--env", ENV, "--optimize", "--n-trials", str(TRIALS),
               "-n", "32", "--n-evaluations", "1", "--eval-episodes", "1", "--no-optim-plots", "--num-threads", "1",
               "--hyperparams", "n_envs:1", "--sampler", "random", "--pruner", "none", "--seed", "0",
               *(["--storage", storage] if storage else [])]  # fmt: skip
    (folder / "ready").mkdir()
    environment = {**os.environ, "READY_DIR": str(folder / "ready"), "WORKERS": str(WORKERS), "OMP_NUM_THREADS": "1"}
    workers = [
        subprocess.Popen(command, cwd=folder, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(WORKERS)
    ]
    for worker in workers:
        out, _ = worker.communicate(timeout=300)
        assert worker.returncode == 0, out[-3000:]
    shared = open_storage(storage or str(folder / "logs" / "optuna.log"))
    assert optuna.get_all_study_names(shared) == [f"ppo_stpn_{ENV}"]
    return optuna.load_study(study_name=f"ppo_stpn_{ENV}", storage=shared)


def check_distinct_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Every worker's trials finished, and no two tried the same configuration."""
    finished = study.get_trials(states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED))
    assert len(finished) == WORKERS * TRIALS
    assert len({tuple(sorted(trial.params.items())) for trial in finished}) == len(finished)
    return finished


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
