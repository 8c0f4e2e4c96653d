"""Each trained agent shipped under rl-trained-agents/ replays with one enjoy command and scores as its row of the
benchmark table (docs/benchmark.md) says: its first episodes, replayed with the benchmark's seed, within its std."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from stable_baselines3.common.monitor import load_results

from tests.helpers import ONE_THREAD, REPO

AGENTS = REPO / "rl-trained-agents"
ROWS = json.loads((AGENTS / "benchmark.json").read_text())
EPISODES = 3


def test_every_shipped_agent_has_its_row() -> None:
    folders = {(path.parent.name, path.name.removesuffix("_1")) for path in AGENTS.glob("*/*_1")}
    assert folders and folders == {(row["algo"], row["env"]) for row in ROWS}


@pytest.mark.parametrize("row", ROWS, ids=[f"{row['algo']}-{row['env']}" for row in ROWS])
def test_shipped_agent_replays_as_benchmarked(row: dict, tmp_path: Path) -> None:
    steps = sum(row["lengths"][:EPISODES])  # exactly the benchmark's first episodes
    command = [sys.executable, "enjoy.py", "--algo", row["algo"], "--env", row["env"], "-f", str(AGENTS), "--no-render"]
    command += ["-n", str(steps), "--n-envs", "1", "--seed", str(row["eval_seed"]), "--reward-log", str(tmp_path)]
    result = subprocess.run(command, cwd=REPO, env=ONE_THREAD, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    returns = load_results(str(tmp_path))["r"].to_numpy()
    assert len(returns) == min(EPISODES, len(row["lengths"]))
    assert abs(returns.mean() - row["mean"]) <= row["std"] + 1e-6, (returns, row["mean"], row["std"])
