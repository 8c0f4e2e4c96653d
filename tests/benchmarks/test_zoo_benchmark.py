"""The zoo benchmark resumes a run that died after a checkpoint, with that checkpoint's statistics, and reports it."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks.zoo_benchmark import (
    REPO,
    Progress,
    Runner,
    Segment,
    load_runs,
    main,
    saved_steps,
    seed_weighted_mean_std,
)

ENV = "CartPoleNoVel-v1"  # its entry: 8 envs x 32 steps a rollout, normalised observations


def test_a_run_killed_after_a_checkpoint_resumes_from_it_then_is_replayed(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "zoo"
    runner = Runner(out, save_freq=512, deadline=None, eval_steps=600, n_timesteps=2048)
    progress_path = runner.progress_path("ppo_stpn", ENV, 0)
    progress_path.parent.mkdir(parents=True)
    # A first segment that checkpointed at 512 and 1024 steps, then died before saving its model
    first = Segment(str(progress_path.parent / "segment0"))
    train = [sys.executable, "train.py", "--algo", "ppo_stpn", "--env", ENV, "--seed", "0", "-n", "1024"]
    subprocess.run([*train, "--save-freq", "512", "-f", first.folder], cwd=REPO, check=True, capture_output=True)
    run = Path(first.folder, "ppo_stpn", f"{ENV}_1")
    (run / f"{ENV}.zip").unlink()
    Progress("ppo_stpn", ENV, 0, budget=2048, bounded=True, segments=[first]).write(progress_path)

    summary = runner.run("ppo_stpn", ENV, 0)

    progress = Progress.read(progress_path)
    assert [segment.steps for segment in progress.segments] == [1024, 1024], summary
    second_log = (progress_path.parent / "segment1.log").read_text()
    assert f"{run}/rl_model_vecnormalize_1024_steps.pkl" in second_log  # the checkpoint's own statistics
    resumed = Path(progress.segments[1].folder, "ppo_stpn", f"{ENV}_1", f"{ENV}.zip")
    assert saved_steps(resumed) == 1024
    # Replayed as rl_zoo3.benchmark does: whole episodes from the Monitor log of 600 steps
    assert progress.returns and progress.lengths and 0 < sum(progress.lengths) <= 600
    assert summary.startswith(f"ppo_stpn {ENV} seed 0: 2048 steps, replay ")

    # Finished runs are not trained again, and the report has their row and a plot
    assert runner.run("ppo_stpn", ENV, 0) == summary and len(load_runs(out)) == 1
    markdown, plots = tmp_path / "table.md", tmp_path / "img"
    agents = tmp_path / "agents"
    report = ["zoo_benchmark", "--report", str(out), "--markdown", str(markdown), "--plots", str(plots)]
    report += ["--agents", str(agents)]
    monkeypatch.setattr(sys, "argv", report)
    main()
    (row,) = [line for line in markdown.read_text().splitlines() if line.startswith(f"| {ENV} | ppo_stpn |")]
    assert "2.048k (bounded) (trained: 2,048 in 2 segments)" in row and " | 1/1 | " in row
    assert (plots / f"benchmark_{ENV}.png").stat().st_size > 10_000
    # The final agent, as rl-baselines3-zoo lays out its trained agents, with what its replay scored
    agent = agents / "ppo_stpn" / f"{ENV}_1"
    assert saved_steps(agent / f"{ENV}.zip") == 1024 and (agent / ENV / "vecnormalize.pkl").is_file()
    (row,) = json.loads((agents / "benchmark.json").read_text())
    assert (row["algo"], row["env"], row["seed"], row["returns"]) == ("ppo_stpn", ENV, 0, progress.returns)


def test_the_twin_row_trains_the_stpn_entry_without_plasticity_and_resumes_it(tmp_path: Path, monkeypatch) -> None:
    from sb3_stpn import StpnPPO

    out = tmp_path / "zoo"
    runner = Runner(out, save_freq=10_000, deadline=None, eval_steps=0, n_timesteps=256)
    progress_path = runner.progress_path("ppo_stpn_twin", ENV, 0)
    progress_path.parent.mkdir(parents=True)
    progress = Progress("ppo_stpn_twin", ENV, 0, bounded=True)
    runner.train_segment(progress, progress_path)
    # A longer budget: the next segment resumes with -i, which refuses policy_kwargs, so it must not pass them again
    progress.budget = 512
    runner.train_segment(progress, progress_path)

    assert [segment.steps for segment in Progress.read(progress_path).segments] == [256, 256]
    for segment in progress.segments:  # both segments' policies are the plasticity-free twin
        model = StpnPPO.load(Path(segment.folder, "ppo_stpn", f"{ENV}_1", f"{ENV}.zip"), device="cpu")
        assert model.policy.stpn_kwargs["plastic"] is False
        assert not [name for name, _ in model.policy.named_parameters() if "lambda" in name or "gamma" in name]
    # Replayed (its returns set here: the replay is the first test's), it has a row; the trained agents do not have
    # it, since enjoy.py knows no ppo_stpn_twin
    progress.returns, progress.lengths = [10.0, 20.0], [10, 20]
    progress.write(progress_path)
    markdown, agents = tmp_path / "table.md", tmp_path / "agents"
    report = ["zoo_benchmark", "--report", str(out), "--markdown", str(markdown), "--plots", str(tmp_path / "img")]
    monkeypatch.setattr(sys, "argv", [*report, "--agents", str(agents)])
    main()
    (row,) = [line for line in markdown.read_text().splitlines() if line.startswith(f"| {ENV} | ppo_stpn_twin |")]
    assert "| 15.0 ± 5.0 |" in row
    assert json.loads((agents / "benchmark.json").read_text()) == [] and not (agents / "ppo_stpn_twin").exists()


def test_a_row_whose_runs_are_all_in_their_first_segment_is_reported_without_a_speed(tmp_path: Path, monkeypatch) -> None:
    """A run still in its first segment has no time yet, nor a budget (read from the segment's config when it ends):
    its row says not finished, with dashes for the budget, steps/s and hours."""
    out = tmp_path / "zoo"
    progress_path = out / "ppo_lstm" / ENV / "seed0" / "progress.json"
    progress_path.parent.mkdir(parents=True)
    Progress("ppo_lstm", ENV, 0, segments=[Segment(str(progress_path.parent / "segment0"))]).write(progress_path)
    markdown = tmp_path / "table.md"
    report = ["zoo_benchmark", "--report", str(out), "--markdown", str(markdown), "--plots", str(tmp_path / "img")]
    monkeypatch.setattr(sys, "argv", report)
    main()
    (row,) = [line for line in markdown.read_text().splitlines() if line.startswith(f"| {ENV} | ppo_lstm |")]
    assert row.endswith("| not finished |  | - (trained: 0) |  | 0/1 | - | - |")


def test_a_rows_score_weighs_every_seed_the_same_whatever_its_episode_count() -> None:
    """Two agents, one at 1000 in 2 episodes, one failing in 10: the score is that of the seeds' episodes repeated
    to equal counts (the second seed's episodes are 2 x 5, the first's 10 x 1), not of the 12 episodes pooled."""
    good, bad = [1000.0, 1000.0], [10.0, 12.0] * 5
    mean, std = seed_weighted_mean_std([good, bad])
    assert (mean, std) == pytest.approx((np.mean(good * 5 + bad), np.std(good * 5 + bad)))
    assert seed_weighted_mean_std([bad]) == pytest.approx((np.mean(bad), np.std(bad)))
