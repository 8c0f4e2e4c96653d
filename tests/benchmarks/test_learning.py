"""The learning benchmark's helpers give the right numbers and the benchmark runs end to end on a tiny budget."""

import gzip
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch as th

from benchmarks.learning import callbacks
from benchmarks.learning.__main__ import expand_tasks, main, parse_changes, parse_steps
from benchmarks.learning.callbacks import make_curve_callback, make_plasticity_warmup_callback
from benchmarks.learning.references import minigrid_memory_returns, reference_returns
from benchmarks.learning.report import diagnostics_table
from benchmarks.learning.runs import run_one
from benchmarks.learning.stats import (
    area_under_curve,
    area_within,
    equal_time_budget,
    max_mean_episodic_return,
    mean_std,
    model_label,
    seed_band,
)
from benchmarks.learning.suite import suite_scores, suite_table
from benchmarks.learning.variants import (
    LSTM_HIDDEN,
    LSTM_PARAMS,
    MLP,
    POPGYM_TASKS,
    STPN,
    STPN_TWIN,
    variant_entry,
    zoo_entry,
)
from sb3_stpn.zoo.saving import process_alive
from tests.helpers import ONE_THREAD, REPO


def test_area_under_curve_is_the_mean_return_over_training() -> None:
    # A ramp from 0 to 10 over 100 steps averages 5; a step that is 4 then 8 over equal halves averages 5 too (trapezoids)
    assert area_under_curve([0, 100], [0, 10]) == pytest.approx(5.0)
    assert area_under_curve([0, 50, 100], [4, 4, 8]) == pytest.approx((50 * 4 + 50 * 6) / 100)
    # Unevenly spaced evaluations are weighted by the steps between them; the origin need not be 0
    assert area_under_curve([10, 20, 50], [1, 3, 3]) == pytest.approx((10 * 2 + 30 * 3) / 40)
    with pytest.raises(ValueError):
        area_under_curve([0], [1])


def test_area_within_a_wall_clock_budget_cuts_the_curve() -> None:
    # A ramp 0 -> 10 over 100 s, cut at 50 s (value 5 there, interpolated): mean 2.5 over those 50 s
    assert area_within([0, 100], [0, 10], 50) == pytest.approx(2.5)
    # A budget past the last point holds the last value (np.interp): (50 * 5 + 50 * 10) / 100
    assert area_within([0, 50], [0, 10], 100) == pytest.approx(7.5)


def test_equal_time_budget_is_the_fastest_rows_mean_training_time() -> None:
    def run(model: str, seconds: float, task: str = "T") -> dict:
        return {"task": task, "model": model, "changes": {}, "hidden_size": 8, "curve": [{"train_seconds": seconds}]}

    runs = [run("stpn", 10), run("stpn", 30), run("lstm_params", 50), run("lstm_params", 70), run("stpn", 1, "other")]
    assert equal_time_budget(runs, "T") == pytest.approx(20)


def test_diagnostics_table_reads_the_plasticity_at_fractions_of_training() -> None:
    def record(step: int, ratio: float, update: float | None = None) -> dict:
        values = {
            "timesteps": step,
            "stpn/F_over_W": ratio,
            "stpn/weight_gamma_std": ratio / 10,
            "stpn/weight_lambda_max": 1.0,
        }
        if update is not None:
            values.update({f"stpn/update_{group}": update for group in ("weight_lambda", "weight_gamma", "weight", "other")})
            values.update({"stpn/grad_norm": 20 * update, "stpn/grad_norm_plasticity": 10 * update})
            values["stpn/clipped_fraction"] = 0.5 if update else 0.0
        return values

    # 11 rollouts: 10 % is the second record, 50 % the sixth, 100 % the last; updates from the second on
    diagnostics = [record(step, ratio=step / 10, update=None if step == 0 else step / 100) for step in range(11)]
    run = {"task": "T", "model": "stpn", "changes": {}, "hidden_size": 8, "diagnostics": diagnostics}
    lines = diagnostics_table(
        [run, {**run, "diagnostics": [record(s, ratio=0.0, update=0.0) for s in range(11)]}]
    ).splitlines()
    # Gradient medians over updates 1-10: 0.55 and 1.1 in the first run, 0 in the second; clipped half / never
    assert lines[2] == (
        "| T | STPN h=8 (zoo entry) | 2 | 0.05 / 0.25 / 0.5 | 0.005 / 0.025 / 0.05 | 1 | 0.028 / 0.028 / 0.028 / 0.028 "
        "| 0.28 / 0.55, 0.25 |"
    )
    # Records from before the gradient diagnostics show none
    older = [{k: v for k, v in values.items() if "grad" not in k and "clipped" not in k} for values in diagnostics]
    assert diagnostics_table([{**run, "diagnostics": older}]).splitlines()[2].endswith("| - / -, - |")
    lstm = {"task": "T", "model": "lstm_params", "changes": {}, "hidden_size": 8, "diagnostics": None}
    assert diagnostics_table([lstm]) == ""


def test_minigrid_memory_references_are_the_oracle_and_a_memoryless_half_of_it() -> None:
    returns = minigrid_memory_returns("MiniGrid-MemoryS7-v0", 40)
    assert all(value > 0.9 for value in returns["oracle"])  # every episode reaches the matching object, quickly
    # the memoryless walk takes the same path to the upper object: the oracle's return or nothing, about half each
    assert all(value in (0.0, oracle) for value, oracle in zip(returns["memoryless"], returns["oracle"], strict=True))
    assert 10 <= sum(value > 0 for value in returns["memoryless"]) <= 30
    assert reference_returns("MiniGrid-MemoryS7-v0", 40) == returns and reference_returns("CartPoleNoVel-v1", 40) == {}


def test_mean_std_over_seeds() -> None:
    assert mean_std([1, 2, 3]) == pytest.approx((2.0, 1.0))  # sample std
    assert mean_std([7]) == (7.0, 0.0)


def test_seed_band_aligns_curves() -> None:
    grid, mean, std = seed_band([([0, 10, 20], [0, 2, 4]), ([0, 20], [2, 6])])
    assert list(grid) == [0, 10, 20]
    assert np.allclose(mean, [1, 3, 5]) and np.allclose(std, np.sqrt(2))


def test_steps_option() -> None:
    defaults = {"A": 1, "B": 2}
    assert parse_steps(None, ["A", "B"], defaults) == {"A": 1, "B": 2}
    assert parse_steps(["500"], ["A", "B"], defaults) == {"A": 500, "B": 500}
    assert parse_steps(["B=9"], ["A", "B"], defaults) == {"A": 1, "B": 9}
    with pytest.raises(SystemExit):
        parse_steps(["C=9"], ["A", "B"], defaults)


def test_variants_change_only_what_they_say() -> None:
    stpn = variant_entry(STPN, "InvertedPendulum-v5", 1000)
    mlp = variant_entry(MLP, "InvertedPendulum-v5", 1000)
    hidden = variant_entry(LSTM_HIDDEN, "InvertedPendulum-v5", 1000)
    assert stpn["n_timesteps"] == mlp["n_timesteps"] == 1000
    assert mlp["policy"] == "MlpPolicy" and mlp["policy_kwargs"] == {} and "sequence_length" not in mlp
    assert {k: v for k, v in stpn.items() if k not in ("policy", "policy_kwargs", "sequence_length")} == {
        k: v for k, v in mlp.items() if k not in ("policy", "policy_kwargs")
    }
    assert hidden["policy_kwargs"]["lstm_hidden_size"] == stpn["policy_kwargs"]["stpn_hidden_size"] == 64


def test_twin_is_the_stpn_entry_without_plasticity() -> None:
    stpn = variant_entry(STPN, "CartPoleNoVel-v1", 1000)
    twin = variant_entry(STPN_TWIN, "CartPoleNoVel-v1", 1000)
    plasticity_free = {"plastic": False, "plastic_bias": False}
    assert twin["policy_kwargs"]["stpn_kwargs"] == {**stpn["policy_kwargs"]["stpn_kwargs"], **plasticity_free}
    assert {**twin, "policy_kwargs": None} == {**stpn, "policy_kwargs": None}
    assert {k: v for k, v in twin["policy_kwargs"].items() if k != "stpn_kwargs"} == {
        k: v for k, v in stpn["policy_kwargs"].items() if k != "stpn_kwargs"
    }


def test_twin_row_label_puts_plastic_false_after_the_changes_it_overrides() -> None:
    changes = {"policy_kwargs": {"stpn_kwargs": {"plastic": True}}}
    twin = {"model": "stpn_twin", "hidden_size": 64, "changes": changes}
    changed = "policy_kwargs={'stpn_kwargs': {'plastic': True}}"
    assert model_label(twin) == f"STPN h=64 (zoo entry + {changed}, plastic=False: twin)"
    assert model_label({**twin, "changes": {}}) == "STPN h=64 (zoo entry, plastic=False: twin)"
    assert model_label({**twin, "model": "stpn"}) == f"STPN h=64 (zoo entry + {changed})"


def test_changes_are_merged_into_the_entry() -> None:
    changes = parse_changes(["learning_rate=3e-4", "policy_kwargs=dict(stpn_kwargs=dict(clamp=1.0))"])
    assert changes == {"learning_rate": 3e-4, "policy_kwargs": {"stpn_kwargs": {"clamp": 1.0}}}
    stpn = variant_entry(STPN, "InvertedPendulum-v5", 1000, changes)
    assert stpn["learning_rate"] == 3e-4
    # Merged, not replaced: the entry's STPNf setting and hidden size stay
    assert stpn["policy_kwargs"] == {
        "stpn_hidden_size": 64,
        "stpn_kwargs": {
            "lambda_max": None,
            "retention_max": None,
            "recurrent": False,
            "normalize": False,
            "clamp": 1.0,
            "lambda_lr_scale": 1.0,
            "gamma_lr_scale": 1.0,
        },
    }
    with pytest.raises(SystemExit):
        parse_changes(["learning_rate"])


def test_stpn_and_lstm_changes_reach_their_own_rows_only(tmp_path: Path) -> None:
    changed = ["--stpn-hyperparams", "learning_rate=1e-3", "--lstm-hyperparams", "ent_coef=0.1"]
    main(["--quick", "--tasks", "InvertedPendulum-v5", "--out", str(tmp_path), *changed])
    report = json.loads((tmp_path / "learning.json").read_text())
    changes = {run["model"]: run["changes"] for run in report["runs"]}
    assert changes == {
        "stpn": {"learning_rate": 1e-3},
        "stpn_twin": {"learning_rate": 1e-3},
        "lstm_params": {"ent_coef": 0.1},
        "lstm_hidden": {"ent_coef": 0.1},
        "mlp": {},
    }
    assert variant_entry(LSTM_PARAMS, "InvertedPendulum-v5", 1000, changes["lstm_params"])["ent_coef"] == 0.1
    assert "LSTM h=26 (matched params + ent_coef=0.1)" in report["table"]
    assert "STPN h=64 (zoo entry + learning_rate=0.001)" in report["table"]


def test_benchmark_runs_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["--quick", "--tasks", "CartPoleNoVel-v1", "GridMaze-v0", "--jobs", "2", "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "learning.json").read_text())
    assert report["table"] in printed and (tmp_path / "learning.md").read_text().strip() == report["table"]
    for task in ("CartPoleNoVel-v1", "GridMaze-v0"):
        assert (tmp_path / f"{task}.png").read_bytes()[:4] == b"\x89PNG"
    assert {(run["task"], run["model"]) for run in report["runs"]} == {
        (task, model)
        for task in ("CartPoleNoVel-v1", "GridMaze-v0")
        for model in ("stpn", "stpn_twin", "lstm_params", "lstm_hidden")
    }
    for run in report["runs"]:
        # Evaluated at step 0 and at the end of the one rollout, with the memory's energy recorded
        assert run["curve"][0]["timesteps"] == 0 and run["curve"][-1]["timesteps"] == run["steps"] > 0
        assert all(point["energy_per_step"] > 0 for point in run["curve"])
        # Both policies evaluated; the training clock excludes the evaluations and grows
        assert all(isinstance(point["return_sampled"], float) for point in run["curve"])
        clock = [point["train_seconds"] for point in run["curve"]]
        assert clock == sorted(clock) and 0 < clock[-1] < run["wall_seconds"]
        # The STPN rows keep the plasticity diagnostics of each rollout; the twin's F stays zero
        if run["model"].startswith("stpn"):
            assert [record["timesteps"] for record in run["diagnostics"]] == [run["steps"]]
            (record,) = run["diagnostics"]
            assert (record["stpn/F_over_W"] == 0) == (run["model"] == "stpn_twin")
            assert ("stpn/weight_gamma_mean" in record) == (run["model"] == "stpn")
        else:
            assert run["diagnostics"] is None
    sizes = {(run["task"], run["model"]): (run["hidden_size"], run["parameters"]) for run in report["runs"]}
    # The zoo configs' sizes and parameter counts (their comments), and the equal-hidden LSTM
    assert sizes[("GridMaze-v0", "stpn")] == (55, 24150) and sizes[("GridMaze-v0", "lstm_params")] == (47, 25056)
    assert sizes[("GridMaze-v0", "lstm_hidden")][0] == 55
    assert sizes[("GridMaze-v0", "stpn_twin")] == (
        55,
        24150 - 2 * 2 * 55 * (17 + 55),
    )  # no lambda, gamma (55 x K, K = 17 obs + 55) in two layers
    assert "Plasticity diagnostics" in report["table"]
    assert "| GridMaze-v0 | oracle policy" in printed and "| GridMaze-v0 | random policy" in printed
    assert set(report["references"]["GridMaze-v0"]) == {"random", "wall_avoider", "oracle"}
    # Every run was saved as it finished, and --report rebuilds the same table from those lines
    saved = [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()]
    assert saved == report["runs"]
    main(["--report", str(tmp_path), "--out", str(tmp_path / "again")])
    assert (tmp_path / "again" / "learning.md").read_text() == (tmp_path / "learning.md").read_text()
    # ... and from the gzipped runs a committed result keeps
    (tmp_path / "committed").mkdir()
    (tmp_path / "committed" / "runs.jsonl.gz").write_bytes(gzip.compress((tmp_path / "runs.jsonl").read_bytes()))
    main(["--report", str(tmp_path / "committed"), "--out", str(tmp_path / "from_gzip")])
    assert (tmp_path / "from_gzip" / "learning.md").read_text() == (tmp_path / "learning.md").read_text()


def test_popgym_stands_for_the_suite() -> None:
    assert expand_tasks(["popgym"]) == list(POPGYM_TASKS)
    assert expand_tasks(["CartPoleNoVel-v1", "popgym", POPGYM_TASKS[0]]) == ["CartPoleNoVel-v1", *POPGYM_TASKS]


def test_mmer_is_the_best_sampled_evaluation() -> None:
    curve = [{"return_sampled": value, "return": 1.0} for value in (-0.5, 0.25, 0.1)]
    assert max_mean_episodic_return({"curve": curve}) == 0.25


def test_suite_table_aggregates_mmer_over_tasks_and_seeds() -> None:
    def run(task: str, seed: int, best: float) -> dict:
        curve = [{"timesteps": 0, "return_sampled": -1.0}, {"timesteps": 10, "return_sampled": best}]
        return {"task": task, "model": "stpn", "seed": seed, "changes": {}, "hidden_size": 8, "curve": curve}

    # MMERs: task 0 seeds 0.2 / 0.4, task 1 seeds 0.6 / 1.0: mean over tasks of their seed means = (0.3 + 0.8) / 2
    runs = [
        run(POPGYM_TASKS[0], 0, 0.2),
        run(POPGYM_TASKS[0], 1, 0.4),
        run(POPGYM_TASKS[1], 0, 0.6),
        run(POPGYM_TASKS[1], 1, 1.0),
    ]
    (row,) = suite_table(suite_scores(runs, bootstrap_reps=200)).splitlines()[2:]
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[:4] == ["STPN h=8 (zoo entry)", "2", "2", "0.55"]
    assert cells[4] == f"{((0.2 - 1) / 2 + (0.4 - 1) / 2 + (0.6 - 1) / 2 + (1.0 - 1) / 2) / 4:.2f}"  # areas of the ramps
    assert cells[5].startswith("0.55 [") and cells[6].startswith("0.50 [")  # IQM of 0.2, 0.4, 0.6, 1.0: the middle two
    assert suite_scores(runs[:2]) == {} and suite_table({}) == ""  # one task is no suite
    # Every model over the tasks all of them ran: an STPN run on a third task the LSTM lacks is left out
    lstm = [{**run(task, 0, 0.0), "model": "lstm_params"} for task in POPGYM_TASKS[:2]]
    rows = suite_table(suite_scores([*runs, run(POPGYM_TASKS[2], 0, 1.0), *lstm], bootstrap_reps=200)).splitlines()[2:]
    assert [row.split("|")[2].strip() for row in rows] == ["2", "2"] and rows[0].split("|")[4].strip() == "0.55"


def test_suite_intervals_do_not_depend_on_numpy_global_generator() -> None:
    """rliable's bootstrap draws from NumPy's global generator, whatever random_state it is given."""
    runs = [
        {"task": task, "model": "stpn", "seed": seed, "changes": {}, "hidden_size": 8,
         "curve": [{"timesteps": 0, "return_sampled": -1.0}, {"timesteps": 10, "return_sampled": np.sin(seed + 3 * index)}]}
        for index, task in enumerate(POPGYM_TASKS[:3]) for seed in range(6)
    ]  # fmt: skip
    intervals = []
    for global_seed in (1, 2):
        np.random.seed(global_seed)
        (score,) = suite_scores(runs, bootstrap_reps=100).values()
        intervals.append(score.intervals)
    assert np.array_equal(*intervals) and np.ptp(intervals[0]) > 0.1


def test_popgym_task_runs_through_the_default_entries(tmp_path: Path) -> None:
    """The suite runs through both configs' default entries as they are (Autoencode's Tuple observation is flattened
    by their policy: auto, for every model alike)."""
    for variant in (STPN, LSTM_PARAMS):
        default = {**zoo_entry(variant.config, "an env without an entry"), "n_timesteps": 128}
        assert variant_entry(variant, "popgym-AutoencodeEasy-v0", 128) == default
    tasks = ["popgym-AutoencodeEasy-v0", "popgym-RepeatFirstEasy-v0"]
    main(["--quick", "--tasks", *tasks, "--models", "stpn", "lstm_params", "--out", str(tmp_path)])
    report = json.loads((tmp_path / "learning.json").read_text())
    assert {(run["task"], run["model"]) for run in report["runs"]} == {(t, m) for t in tasks for m in ("stpn", "lstm_params")}
    assert "POPGym suite" in report["table"] and "MMER" in report["table"]
    assert (tmp_path / "popgym_suite.png").read_bytes()[:4] == b"\x89PNG"
    # The STPN rows got the policies' default, bounded decays: F stays far below W
    assert all(run["diagnostics"][-1]["stpn/F_over_W"] < 0.01 for run in report["runs"] if run["model"] == "stpn")


def test_benchmark_run_again_into_its_folder_resumes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A stopped benchmark run again with the same --out trains only the runs its runs.jsonl lacks."""
    main(["--quick", "--tasks", "InvertedPendulum-v5", "--models", "stpn", "--out", str(tmp_path)])
    main(["--quick", "--tasks", "InvertedPendulum-v5", "--models", "stpn", "stpn_twin", "--out", str(tmp_path)])
    assert "resuming: 1 of the 2 runs are already in" in capsys.readouterr().out
    runs = [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()]
    assert [run["model"] for run in runs] == ["stpn", "stpn_twin"]
    report = json.loads((tmp_path / "learning.json").read_text())
    assert report["runs"] == runs  # the report covers both invocations' runs


def child_processes(pid: int) -> list[int]:
    """The pids whose parent is ``pid`` (from /proc)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return children


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads the process tree from Linux's /proc")
def test_sigterm_stops_the_benchmark_and_its_workers(tmp_path: Path) -> None:
    """A SIGTERM (a scheduler, kill) ends the benchmark with status 143 and one line, and takes its workers with it."""
    command = [sys.executable, "-m", "benchmarks.learning", "--tasks", "CartPoleNoVel-v1", "--models", "stpn",
               "--seeds", "2", "--jobs", "2", "--steps", "10000000", "--evals", "1", "--eval-episodes", "1",
               "--out", str(tmp_path)]  # fmt: skip
    process = subprocess.Popen(command, cwd=REPO, env=ONE_THREAD, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        workers: list[int] = []
        while len(workers) < 2 and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.2)
            workers = [pid for pid in child_processes(process.pid) if "spawn_main" in Path(f"/proc/{pid}/cmdline").read_text()]
        assert len(workers) == 2, "the pool's two workers never started"
        time.sleep(2)  # into their runs
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 143
    assert stderr.strip().splitlines()[-1].startswith("stopped by SIGTERM: the 0 runs that finished are in")
    deadline = time.monotonic() + 30
    while any(map(process_alive, workers)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(map(process_alive, workers)), "a worker outlived the benchmark"


def test_plasticity_warmup_freezes_lambda_and_gamma_for_the_first_updates_only() -> None:
    from sb3_stpn import StpnPPO
    from sb3_stpn.common.policies import LAYER_STPN_SETTINGS

    # The paper's model: the policies' default trains lambda too slowly for one update to move it in float32
    policy_kwargs = dict(stpn_kwargs=LAYER_STPN_SETTINGS)
    model = StpnPPO("MlpStpnPolicy", "CartPole-v1", n_steps=32, batch_size=32, n_epochs=1, seed=0, policy_kwargs=policy_kwargs)
    layers = (model.policy.stpn_actor, model.policy.stpn_critic)

    def snapshot() -> list:
        return [p.detach().clone() for layer in layers for p in (layer.weight, layer.weight_lambda, layer.weight_gamma)]

    warmup = make_plasticity_warmup_callback(1)
    before = snapshot()
    model.learn(32, callback=warmup)  # one rollout, one update: frozen
    after_first = snapshot()
    model.learn(32, callback=warmup, reset_num_timesteps=False)  # the second update trains them
    after_second = snapshot()
    for index, (old, first, second) in enumerate(zip(before, after_first, after_second, strict=True)):
        is_weight = index % 3 == 0
        assert th.equal(old, first) != is_weight, index
        assert not th.equal(first, second), index


@pytest.mark.parametrize(("steps", "n_evals", "expected"), [(64, 1, [0, 64]), (64, 2, [0, 32, 64]), (60, 2, [0, 30, 60, 64])])
def test_the_last_point_of_a_curve_is_the_trained_policy(
    steps: int, n_evals: int, expected: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An evaluation that falls on the last step of the last rollout comes before that rollout's update: the final
    policy is evaluated again and replaces it (with 64 steps, one rollout; with a budget of 60, rounded up to 64)."""
    from sb3_stpn import StpnPPO

    model = StpnPPO("MlpStpnPolicy", "CartPole-v1", n_steps=64, batch_size=64, n_epochs=1, seed=0)
    updates_seen: list[int] = []

    def record_updates(model: StpnPPO, eval_env: object, n_episodes: int) -> dict[str, float | None]:
        updates_seen.append(model._n_updates)
        return {"return": 0.0}

    monkeypatch.setattr(callbacks, "evaluate", record_updates)
    curve_callback = make_curve_callback(None, n_evals, 1, steps)
    model.learn(steps, callback=curve_callback)
    assert [point["timesteps"] for point in curve_callback.curve] == expected
    assert updates_seen[0] == 0 and updates_seen[-1] == model._n_updates == 1


def test_evaluations_leave_the_training_as_it_is() -> None:
    """A run trains alike whatever its evaluations draw: its per-rollout diagnostics (read from the trained layer)
    are the same with 1 and with 3 evaluation episodes."""
    runs = [run_one("CartPoleNoVel-v1", "stpn", 0, 768, 2, n_episodes, {}) for n_episodes in (1, 3)]
    assert len(runs[0]["diagnostics"]) >= 2 and runs[0]["diagnostics"] == runs[1]["diagnostics"]
    assert [point["timesteps"] for point in runs[0]["curve"]] == [point["timesteps"] for point in runs[1]["curve"]]
