"""
RL learning benchmark: StpnPPO vs RecurrentPPO (LSTM), eval return against environment steps.

Every model is built by rl_zoo3's machinery (``StpnExperimentManager``) from the project's zoo
configs, the single source of hyperparameters: the ``ppo_stpn.yml`` entry (STPN), the matching
``ppo_lstm.yml`` entry (LSTM at the STPN's parameter count), the same LSTM entry with the STPN's
hidden size (equal memory width), and on InvertedPendulum-v5 SB3's PPO ``MlpPolicy`` with the
STPNf entry's PPO settings (no memory). Only ``n_timesteps`` differs from the configs.

Each run evaluates the deterministic policy on a separate, single evaluation env (normalisation
statistics synced from training) at step 0 and evenly through training, and records the actor's
synaptic energy per step (``sb3_stpn.common.energy``) during the final evaluation. GridMaze-v0
also gets the random policy and the shortest-path oracle as reference rows.

Writes to ``--out``: ``learning.md`` (the table), ``learning.json`` (all curves) and one
``<task>.png`` learning-curve plot per task (mean over seeds, shaded +- std).

Usage: ``python -m benchmarks.learning [--tasks ...] [--seeds 3] [--steps N | TASK=N ...] [--jobs 2] [--quick]``
"""

import argparse
import contextlib
import io
import json
import multiprocessing
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

TASKS = ("CartPoleNoVel-v1", "PendulumNoVel-v1", "GridMaze-v0", "MiniGrid-MemoryS7-v0", "InvertedPendulum-v5")
# Steps per run that fit a shared 2-core machine (a few minutes per run); the configs' n_timesteps are 1e5 to 1e7
DEFAULT_STEPS = {
    "CartPoleNoVel-v1": 30_000,
    "PendulumNoVel-v1": 40_000,
    "GridMaze-v0": 48_000,
    "MiniGrid-MemoryS7-v0": 50_000,
    "InvertedPendulum-v5": 20_000,
}
# One rollout of each config (StpnPPO/RecurrentPPO round the budget up to whole rollouts)
QUICK_STEPS = {"CartPoleNoVel-v1": 256, "PendulumNoVel-v1": 4096, "GridMaze-v0": 1600, "MiniGrid-MemoryS7-v0": 1024}
QUICK_STEPS["InvertedPendulum-v5"] = 64
# Policy kwargs that only the STPN policies take (dropped for the memory-less MLP PPO)
STPN_ONLY_KWARGS = ("stpn_hidden_size", "stpn_kwargs", "enable_critic_stpn", "shared_stpn")
DEFAULT_OUT = Path("benchmarks/results/learning")


@dataclass(frozen=True)
class Variant:
    """One model of the comparison: which zoo config it comes from and how it is changed."""

    key: str
    algo: str  # rl_zoo3 algorithm name
    config: str  # zoo_configs/<config>.yml
    equal_hidden: bool = False  # LSTM with the STPN's hidden size instead of the entry's
    mlp: bool = False  # SB3 PPO MlpPolicy with the entry's PPO settings


STPN = Variant("stpn", "ppo_stpn", "ppo_stpn")
LSTM_PARAMS = Variant("lstm_params", "ppo_lstm", "ppo_lstm")
LSTM_HIDDEN = Variant("lstm_hidden", "ppo_lstm", "ppo_lstm", equal_hidden=True)
MLP = Variant("mlp", "ppo", "ppo_stpn", mlp=True)
VARIANTS = {variant.key: variant for variant in (STPN, LSTM_PARAMS, LSTM_HIDDEN, MLP)}


def variants_for(task: str) -> list[Variant]:
    """The models compared on ``task``: STPN and both LSTM rows everywhere, plus the MLP PPO on MuJoCo."""
    return [STPN, LSTM_PARAMS, LSTM_HIDDEN, *([MLP] if task == "InvertedPendulum-v5" else [])]


def python_value(text: str) -> Any:
    """A config value written as Python, e.g. ``dict(activation_fn=nn.ReLU)``, evaluated as rl_zoo3 does."""
    from torch import nn

    return eval(text, {"dict": dict, "nn": nn})


def merged(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated with ``changes``, recursing into dicts both have (e.g. ``stpn_kwargs`` in ``policy_kwargs``)."""
    result = dict(base)
    for key, value in changes.items():
        both_dicts = isinstance(value, dict) and isinstance(result.get(key), dict)
        result[key] = merged(result[key], value) if both_dicts else value
    return result


def zoo_entry(config: str, task: str) -> dict[str, Any]:
    """The zoo config entry of ``task`` with ``policy_kwargs`` evaluated to a dict (as rl_zoo3 does)."""
    from sb3_stpn.zoo import CONFIG_DIR
    from sb3_stpn.zoo.exp_manager import load_config_entry

    entry = dict(load_config_entry(CONFIG_DIR / f"{config}.yml", task, is_atari=False))
    kwargs = entry.get("policy_kwargs") or {}
    entry["policy_kwargs"] = dict(python_value(kwargs) if isinstance(kwargs, str) else kwargs)
    return entry


def variant_entry(variant: Variant, task: str, steps: int, stpn_changes: dict[str, Any] | None = None) -> dict[str, Any]:
    """
    The hyperparameters ``variant`` trains with on ``task``: its zoo entry with only the documented changes.

    ``stpn_changes`` (``--stpn-hyperparams``, for tuning experiments) are merged into the STPN's entry only.
    """
    entry = zoo_entry(variant.config, task)
    entry["n_timesteps"] = steps
    if variant is STPN and stpn_changes:
        entry = merged(entry, stpn_changes)
    if variant.equal_hidden:
        entry["policy_kwargs"]["lstm_hidden_size"] = stpn_hidden_size(task)
    if variant.mlp:
        entry["policy"] = "MlpPolicy"
        entry.pop("sequence_length", None)
        entry["policy_kwargs"] = {k: v for k, v in entry["policy_kwargs"].items() if k not in STPN_ONLY_KWARGS}
    return entry


def stpn_hidden_size(task: str) -> int:
    """The STPN's hidden size in the ``ppo_stpn.yml`` entry of ``task`` (the policies' default, 64, if unset)."""
    return zoo_entry("ppo_stpn", task)["policy_kwargs"].get("stpn_hidden_size", 64)


def area_under_curve(timesteps: Sequence[float], returns: Sequence[float]) -> float:
    """Trapezoidal area under the eval-return curve divided by the steps it spans: the mean return over training."""
    t, r = np.asarray(timesteps, dtype=float), np.asarray(returns, dtype=float)
    if len(t) < 2 or t[-1] <= t[0]:
        raise ValueError("an area needs at least two evaluations at increasing steps")
    return float(np.sum((t[1:] - t[:-1]) * (r[1:] + r[:-1]) / 2) / (t[-1] - t[0]))


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation over seeds (0 for a single seed)."""
    values = [float(v) for v in values]
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def seed_band(curves: Sequence[tuple[Sequence[float], Sequence[float]]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and std over seeds of ``(timesteps, returns)`` curves, interpolated onto the first curve's timesteps."""
    grid = np.asarray(curves[0][0], dtype=float)
    stacked = np.stack([np.interp(grid, t, r) for t, r in curves])
    return grid, stacked.mean(axis=0), stacked.std(axis=0, ddof=1) if len(curves) > 1 else np.zeros_like(grid)


def evaluate(model: Any, eval_env: Any, n_episodes: int) -> tuple[float, float | None]:
    """Mean deterministic episode return on ``eval_env`` (one env) and the actor's mean energy per step (None: no memory)."""
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.vec_env import sync_envs_normalization

    from sb3_stpn.common.energy import ActorEnergyRecorder

    if model.get_vec_normalize_env() is not None:
        sync_envs_normalization(model.get_env(), eval_env)
    recorder = ActorEnergyRecorder(model.policy) if hasattr(model.policy, "lstm_actor") else None
    energies: list[float] = []

    def record(_locals: dict[str, Any], _globals: dict[str, Any]) -> None:
        energies.append(recorder.last_energy.mean().item())

    try:
        returns, _ = evaluate_policy(
            model,
            eval_env,
            n_eval_episodes=n_episodes,
            deterministic=True,
            callback=record if recorder else None,
            return_episode_rewards=True,
        )
    finally:
        if recorder is not None:
            recorder.close()
    return float(np.mean(returns)), statistics.fmean(energies) if energies else None


def make_curve_callback(eval_env: Any, n_evals: int, n_episodes: int, steps: int) -> Any:
    """An SB3 callback evaluating at step 0, every ``steps / n_evals`` steps and at the end; results in ``.curve``."""
    from stable_baselines3.common.callbacks import BaseCallback

    class CurveCallback(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.curve: list[dict[str, float | None]] = []
            self.next_eval = 0

        def _evaluate(self) -> None:
            mean_return, energy = evaluate(self.model, eval_env, n_episodes)
            self.curve.append({"timesteps": self.num_timesteps, "return": mean_return, "energy_per_step": energy})
            self.next_eval = self.num_timesteps + max(steps // n_evals, 1)

        def _on_training_start(self) -> None:
            self._evaluate()

        def _on_step(self) -> bool:
            if self.num_timesteps >= self.next_eval:
                self._evaluate()
            return True

        def _on_training_end(self) -> None:
            if self.curve[-1]["timesteps"] < self.num_timesteps:
                self._evaluate()

    return CurveCallback()


def run_one(
    task: str, variant_key: str, seed: int, steps: int, n_evals: int, n_episodes: int, stpn_changes: dict[str, Any]
) -> dict[str, Any]:
    """Train one (task, model, seed) from the zoo configs with periodic evaluation; return its curve and costs."""
    import torch as th
    import yaml

    from sb3_stpn.zoo import StpnExperimentManager

    th.set_num_threads(1)
    variant = VARIANTS[variant_key]
    entry = variant_entry(variant, task, steps, stpn_changes)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as log_folder, contextlib.redirect_stdout(io.StringIO()):
        config = Path(log_folder) / "config.yml"
        # The entry without policy_kwargs (YAML cannot hold nn classes): they go in as an override, as a dict
        config.write_text(yaml.safe_dump({task: {k: v for k, v in entry.items() if k != "policy_kwargs"}}))
        manager = StpnExperimentManager(
            argparse.Namespace(),
            variant.algo,
            task,
            log_folder,
            hyperparams={"policy_kwargs": entry["policy_kwargs"]},
            n_timesteps=steps,
            eval_freq=-1,
            config=str(config),
            verbose=0,
            seed=seed,
            log_interval=-1,
        )
        model, _ = manager.setup_experiment()
        eval_env = manager.create_envs(1, eval_env=True)
        callback = make_curve_callback(eval_env, n_evals, n_episodes, steps)
        model.learn(steps, callback=callback)
        eval_env.close()
        model.get_env().close()
    policy_kwargs = entry["policy_kwargs"]
    hidden = None if variant.mlp else policy_kwargs.get("lstm_hidden_size", policy_kwargs.get("stpn_hidden_size"))
    return {
        "task": task,
        "model": variant_key,
        "seed": seed,
        "hidden_size": hidden,
        "changes": stpn_changes if variant is STPN else {},
        "parameters": sum(p.numel() for p in model.policy.parameters() if p.requires_grad),
        "steps": model.num_timesteps,
        "wall_seconds": time.perf_counter() - start,
        "curve": callback.curve,
    }


def reference_returns(task: str, n_episodes: int, seed: int = 0) -> dict[str, list[float]]:
    """Episode returns of the random policy and of the shortest-path oracle on GridMaze-v0 (reference rows)."""
    if task != "GridMaze-v0":
        return {}
    import gymnasium as gym

    import sb3_stpn  # noqa: F401  (registers GridMaze-v0)

    env = gym.make(task)
    env.action_space.seed(seed)
    policies = {"random": lambda: env.action_space.sample(), "oracle": lambda: env.unwrapped.shortest_path_action()}
    results: dict[str, list[float]] = {}
    for name, act in policies.items():
        results[name] = []
        for episode in range(n_episodes):
            env.reset(seed=seed + episode)
            total, done = 0.0, False
            while not done:
                _, reward, terminated, truncated, _ = env.step(act())
                total, done = total + float(reward), terminated or truncated
            results[name].append(total)
    return results


def model_label(run: dict[str, Any]) -> str:
    """Row label: which model, its size and why it is there."""
    if run["model"] == "mlp":
        return "PPO MLP (no memory)"
    name = "STPN" if run["model"] == "stpn" else "LSTM"
    why = {"stpn": "zoo entry", "lstm_params": "matched params", "lstm_hidden": "matched hidden size"}[run["model"]]
    if run["changes"]:
        why += " + " + ", ".join(f"{key}={value}" for key, value in run["changes"].items())
    return f"{name} h={run['hidden_size']} ({why})"


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (task, model): mean +- std over seeds of final return, AUC/steps and energy; mean wall time."""
    rows = []
    for task, model in dict.fromkeys((run["task"], run["model"]) for run in runs):
        group = [run for run in runs if run["task"] == task and run["model"] == model]
        curves = [([p["timesteps"] for p in run["curve"]], [p["return"] for p in run["curve"]]) for run in group]
        energies = [run["curve"][-1]["energy_per_step"] for run in group]
        rows.append(
            {
                "task": task,
                "model": model,
                "label": model_label(group[0]),
                "parameters": group[0]["parameters"],
                "seeds": len(group),
                "steps": group[0]["steps"],
                "final_return": mean_std([r[-1] for _, r in curves]),
                "auc": mean_std([area_under_curve(t, r) for t, r in curves]),
                "energy_per_step": mean_std(energies) if None not in energies else None,
                "wall_seconds": statistics.fmean(run["wall_seconds"] for run in group),
            }
        )
    return rows


def _pm(value: tuple[float, float] | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value[0]:.{digits}f} ± {value[1]:.{digits}f}"


def table(rows: list[dict[str, Any]], references: dict[str, dict[str, list[float]]]) -> str:
    """Markdown table of the summary rows, with each task's reference policies (mean ± std over episodes) after it."""
    lines = [
        "| task | model | params | seeds | steps | final eval return | AUC / steps | energy / step | wall s / run |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for task in dict.fromkeys(row["task"] for row in rows):
        for row in (row for row in rows if row["task"] == task):
            lines.append(
                f"| {task} | {row['label']} | {row['parameters']} | {row['seeds']} | {row['steps']} "
                f"| {_pm(row['final_return'])} | {_pm(row['auc'])} | {_pm(row['energy_per_step'], 2)} "
                f"| {row['wall_seconds']:.0f} |"
            )
        for name, returns in references.get(task, {}).items():
            lines.append(
                f"| {task} | {name} policy (reference, {len(returns)} episodes) | | | | {_pm(mean_std(returns))} | | | |"
            )
    return "\n".join(lines)


def plot(task: str, runs: list[dict[str, Any]], references: dict[str, list[float]], path: Path) -> None:
    """Learning curves of ``task``: mean eval return over seeds per model, shaded +- std, references dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(5.5, 3.4), dpi=80)
    for model in dict.fromkeys(run["model"] for run in runs if run["task"] == task):
        group = [run for run in runs if run["task"] == task and run["model"] == model]
        curves = [([p["timesteps"] for p in run["curve"]], [p["return"] for p in run["curve"]]) for run in group]
        grid, mean, std = seed_band(curves)
        (line,) = axes.plot(grid, mean, label=model_label(group[0]))
        axes.fill_between(grid, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    for name, returns in references.items():
        axes.axhline(statistics.fmean(returns), linestyle="--", color="grey" if name == "random" else "black", label=name)
    axes.set(title=f"{task} (deterministic eval, mean ± std over seeds)", xlabel="env steps", ylabel="eval return")
    axes.title.set_fontsize(9)
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def parse_steps(values: list[str] | None, tasks: list[str], defaults: dict[str, int]) -> dict[str, int]:
    """``--steps``: one number for every task, or ``TASK=N`` pairs (other tasks keep their default)."""
    steps = {task: defaults[task] for task in tasks}
    for value in values or []:
        task, _, number = value.rpartition("=")
        if task and task not in steps:
            raise SystemExit(f"--steps names {task}, which is not in --tasks {' '.join(tasks)}")
        steps.update({task: int(number)} if task else dict.fromkeys(tasks, int(number)))
    return steps


def parse_changes(values: list[str] | None) -> dict[str, Any]:
    """``--stpn-hyperparams``: ``KEY=VALUE`` pairs with Python values."""
    changes = {}
    for value in values or []:
        key, separator, text = value.partition("=")
        if not separator:
            raise SystemExit(f"--stpn-hyperparams takes KEY=VALUE, got {value!r}")
        changes[key] = python_value(text)
    return changes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=None, help="tasks (default: all)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per model (default 3, --quick 1)")
    parser.add_argument("--steps", nargs="+", default=None, help="steps per run: N for all tasks or TASK=N pairs")
    parser.add_argument("--models", nargs="+", choices=list(VARIANTS), default=None, help="models (default: all of a task's)")
    parser.add_argument(
        "--stpn-hyperparams",
        nargs="+",
        default=None,
        metavar="KEY=VALUE",
        help="changes to the STPN's zoo entry for tuning experiments, values in Python, dicts merged into the entry's "
        "(e.g. learning_rate=3e-4 'policy_kwargs=dict(stpn_kwargs=dict(clamp=1.0))'); the STPN rows name them",
    )
    parser.add_argument("--evals", type=int, default=10, help="evaluations per run after the one at step 0")
    parser.add_argument("--eval-episodes", type=int, default=None, help="episodes per evaluation (default 5, --quick 1)")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel processes (1 torch thread each)")
    parser.add_argument("--quick", action="store_true", help="one seed, one rollout per run: checks the script works")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for learning.md, learning.json and PNGs")
    args = parser.parse_args(argv)

    tasks = args.tasks or list(TASKS)
    seeds = args.seeds or (1 if args.quick else 3)
    n_episodes = args.eval_episodes or (1 if args.quick else 5)
    n_evals = 2 if args.quick else args.evals
    steps = parse_steps(args.steps, tasks, QUICK_STEPS if args.quick else DEFAULT_STEPS)
    stpn_changes = parse_changes(args.stpn_hyperparams)
    jobs = [
        (task, variant.key, seed, steps[task], n_evals, n_episodes, stpn_changes)
        for task in tasks
        for seed in range(seeds)
        for variant in variants_for(task)
        if args.models is None or variant.key in args.models
    ]
    start = time.perf_counter()
    runs = []
    with (
        ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn"))
        if args.jobs > 1
        else contextlib.nullcontext() as pool
    ):
        # Printed as each run (in order) finishes, so that a long benchmark shows its progress
        for run in (pool.map if pool else map)(run_one, *zip(*jobs, strict=True)):
            final = run["curve"][-1]
            print(
                f"{run['task']} {run['model']} seed {run['seed']}: return {final['return']:.1f}, {run['wall_seconds']:.0f} s",
                flush=True,
            )
            runs.append(run)
    references = {task: reference_returns(task, n_episodes * seeds) for task in tasks}
    references = {task: refs for task, refs in references.items() if refs}
    rows = summarise(runs)
    text = table(rows, references)
    total = time.perf_counter() - start
    print(f"\nStpnPPO vs RecurrentPPO, zoo configs, {seeds} seed(s), {args.jobs} job(s), {total:.0f} s in all\n")
    print(text)

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "learning.md").write_text(text + "\n")
    for task in tasks:
        plot(task, runs, references.get(task, {}), args.out / f"{task}.png")
    report = {
        "argv": sys.argv[1:] if argv is None else argv,
        "seeds": seeds,
        "eval_episodes": n_episodes,
        "steps": steps,
        "total_seconds": total,
    }
    report.update(table=text, rows=rows, references=references, runs=runs)
    (args.out / "learning.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
