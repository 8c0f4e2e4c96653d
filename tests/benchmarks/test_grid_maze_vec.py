"""The grid maze benchmark runs end to end and reports both envs and every reference policy (speed is not asserted)."""

import json
from pathlib import Path

from benchmarks.grid_maze_vec import main


def test_benchmark_runs_and_reports(tmp_path: Path, capsys) -> None:
    out = tmp_path / "maze.json"
    report = main(["--quick", "--n-envs", "1", "8", "--sizes", "5", "--out", str(out)])
    assert json.loads(out.read_text()) == report
    assert [row["n_envs"] for row in report["speed"]] == [1, 8]
    assert all(row["vectorised"] > 0 and row["dummy"] > 0 for row in report["speed"])
    assert {row["policy"] for row in report["returns"]} == {"random", "wall_avoider", "oracle"}
    means = {row["policy"]: row["mean"] for row in report["returns"]}
    assert means["random"] < means["oracle"]
    printed = capsys.readouterr().out
    assert "| 8 |" in printed and "| 5x5 | oracle |" in printed
