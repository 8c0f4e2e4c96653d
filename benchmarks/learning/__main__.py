"""
RL learning benchmark: StpnPPO vs RecurrentPPO (LSTM), eval return against environment steps.

Every model is built by rl_zoo3's machinery (``StpnExperimentManager``) from the project's zoo
configs, the single source of hyperparameters: the ``ppo_stpn.yml`` entry (STPN), the same entry
with ``plastic=False`` (the STPN's plasticity-free twin: what the plasticity adds or costs), the
matching ``ppo_lstm.yml`` entry (LSTM at the STPN's parameter count), the same LSTM entry with the
STPN's hidden size (equal memory width), and on InvertedPendulum-v5 SB3's PPO ``MlpPolicy`` with the
STPNf entry's PPO settings (no memory). Only ``n_timesteps`` differs from the configs.

Each run evaluates the deterministic and the sampled policy on a separate, single evaluation env
(normalisation statistics synced from training) at step 0 and evenly through training, without touching
training's random streams (the training is the same whatever ``--evals``/``--eval-episodes``), and records the actor's
synaptic energy per step (``sb3_stpn.common.energy``) during the final evaluation; STPN runs also keep,
per rollout, the plasticity diagnostics of ``StpnDiagnosticsCallback``. The mazes also
get reference rows: the random policy, a memoryless wall-avoider and the shortest-path oracle.

``--tasks popgym`` runs the validation suite: six POPGym memory tasks (the ``bench`` extra) that nothing here was
tuned on, through the configs' ``default`` entries. Each row then also gets POPGym's metric, the MMER (the best
mean return of the sampled policy over training's evaluations), and the suite rliable's aggregate mean and IQM of
the MMER over every (seed, task) run, with bootstrap confidence intervals.

Writes to ``--out``: ``learning.md`` (the table), ``learning.json`` (all curves), ``runs.jsonl`` (each run as it
ends; a run into a folder that holds runs resumes) and one ``<task>.png`` learning-curve plot per task (mean over
seeds, shaded +- std), plus ``popgym_suite.png`` (the suite's aggregates) for the POPGym tasks.

Usage: ``python -m benchmarks.learning [--tasks ... | popgym] [--seeds 3] [--steps N | TASK=N ...] [--jobs 2] [--quick]``
"""

import argparse
import contextlib
import gzip
import io
import json
import multiprocessing
import statistics
import sys
import tempfile
import textwrap
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

TASKS = (
    "CartPoleNoVel-v1",
    "PendulumNoVel-v1",
    "GridMaze9x9-v0",
    "GridMaze-v0",
    "MiniGrid-MemoryS7-v0",
    "InvertedPendulum-v5",
)
# The validation suite: POPGym's memory tasks (``pip install "sb3-stpn[bench]"``), never tuned on here, so they run
# through the configs' ``default`` entries. Returns are POPGym's, scaled to [-1, 1].
POPGYM_TASKS = (
    "popgym-RepeatFirstEasy-v0",
    "popgym-AutoencodeEasy-v0",
    "popgym-HigherLowerEasy-v0",
    "popgym-VelocityOnlyCartpoleEasy-v0",
    "popgym-NoisyPositionOnlyPendulumEasy-v0",
    "popgym-MineSweeperEasy-v0",
)
POPGYM_SUITE = "popgym"  # --tasks popgym: the whole suite
# Steps per run that fit a shared 2-core machine (a few minutes per run); the configs' n_timesteps are 1e5 to 1e7
DEFAULT_STEPS = {
    "CartPoleNoVel-v1": 30_000,
    "PendulumNoVel-v1": 40_000,
    "GridMaze9x9-v0": 1_024_000,
    "GridMaze-v0": 48_000,
    "MiniGrid-MemoryS7-v0": 50_000,
    "InvertedPendulum-v5": 20_000,
    # The same budget for every suite task and model: 50k steps of the default entry (n_envs=1, 128-step rollouts) are
    # 391 PPO updates; 3 models x 3 seeds x 6 tasks take about 3.5 hours here, the LSTM runs 3x longer than the STPN's
    **dict.fromkeys(POPGYM_TASKS, 50_000),
}
# One rollout of each config (StpnPPO/RecurrentPPO round the budget up to whole rollouts)
QUICK_STEPS = {"CartPoleNoVel-v1": 256, "PendulumNoVel-v1": 4096, "GridMaze-v0": 1600, "MiniGrid-MemoryS7-v0": 1024}
QUICK_STEPS["GridMaze9x9-v0"] = 12_800
QUICK_STEPS["InvertedPendulum-v5"] = 64
QUICK_STEPS.update(dict.fromkeys(POPGYM_TASKS, 128))
# Policy kwargs that only the STPN policies take (dropped for the memory-less MLP PPO)
STPN_ONLY_KWARGS = ("stpn_hidden_size", "stpn_kwargs", "enable_critic_stpn", "shared_stpn")
DEFAULT_OUT = Path("benchmarks/results/learning")
LEGEND_WIDTH = 110  # characters per legend line under the plots


@dataclass(frozen=True)
class Variant:
    """One model of the comparison: which zoo config it comes from and how it is changed."""

    key: str
    algo: str  # rl_zoo3 algorithm name
    config: str  # sb3_stpn/zoo_configs/<config>.yml
    equal_hidden: bool = False  # LSTM with the STPN's hidden size instead of the entry's
    mlp: bool = False  # SB3 PPO MlpPolicy with the entry's PPO settings
    twin: bool = False  # the STPN entry with plastic=False (no plastic bias either), nothing else changed


STPN = Variant("stpn", "ppo_stpn", "ppo_stpn")
STPN_TWIN = Variant("stpn_twin", "ppo_stpn", "ppo_stpn", twin=True)
LSTM_PARAMS = Variant("lstm_params", "ppo_lstm", "ppo_lstm")
LSTM_HIDDEN = Variant("lstm_hidden", "ppo_lstm", "ppo_lstm", equal_hidden=True)
MLP = Variant("mlp", "ppo", "ppo_stpn", mlp=True)
VARIANTS = {variant.key: variant for variant in (STPN, STPN_TWIN, LSTM_PARAMS, LSTM_HIDDEN, MLP)}


def variants_for(task: str) -> list[Variant]:
    """The models compared on ``task``: STPN, its twin and both LSTM rows everywhere, plus the MLP PPO on MuJoCo."""
    return [STPN, STPN_TWIN, LSTM_PARAMS, LSTM_HIDDEN, *([MLP] if task == "InvertedPendulum-v5" else [])]


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


def variant_entry(variant: Variant, task: str, steps: int, changes: dict[str, Any] | None = None) -> dict[str, Any]:
    """
    The hyperparameters ``variant`` trains with on ``task``: its zoo entry with only the documented changes.

    ``changes`` (``--stpn-hyperparams`` or ``--lstm-hyperparams``, for tuning experiments) are merged into the entry.
    """
    entry = zoo_entry(variant.config, task)
    entry["n_timesteps"] = steps
    if changes:
        entry = merged(entry, changes)
    if task in POPGYM_TASKS:
        register_popgym()  # Autoencode's Tuple observation: the default entry's policy: auto flattens it
    if variant.equal_hidden:
        entry["policy_kwargs"]["lstm_hidden_size"] = stpn_hidden_size(task)
    if variant.twin:
        entry["policy_kwargs"] = merged(entry["policy_kwargs"], {"stpn_kwargs": {"plastic": False, "plastic_bias": False}})
    if variant.mlp:
        entry["policy"] = "MlpPolicy"
        entry.pop("sequence_length", None)
        entry["policy_kwargs"] = {k: v for k, v in entry["policy_kwargs"].items() if k not in STPN_ONLY_KWARGS}
    return entry


def register_popgym() -> None:
    """Import POPGym, which registers its ``popgym-*`` ids (the ``bench`` extra); a missing install is one line."""
    try:
        import popgym  # noqa: F401
    except ImportError:
        raise SystemExit('the POPGym tasks need POPGym: pip install "sb3-stpn[bench]"') from None


def stpn_hidden_size(task: str) -> int:
    """The STPN's hidden size in the ``ppo_stpn.yml`` entry of ``task`` (the policies' default, 64, if unset)."""
    return zoo_entry("ppo_stpn", task)["policy_kwargs"].get("stpn_hidden_size", 64)


def area_under_curve(timesteps: Sequence[float], returns: Sequence[float]) -> float:
    """Trapezoidal area under the eval-return curve divided by the steps it spans: the mean return over training."""
    t, r = np.asarray(timesteps, dtype=float), np.asarray(returns, dtype=float)
    if len(t) < 2 or t[-1] <= t[0]:
        raise ValueError("an area needs at least two evaluations at increasing steps")
    return float(np.sum((t[1:] - t[:-1]) * (r[1:] + r[:-1]) / 2) / (t[-1] - t[0]))


def max_mean_episodic_return(run: dict[str, Any]) -> float:
    """POPGym's MMER: the best mean episodic return over training, here the best sampled-policy evaluation."""
    return max(point["return_sampled"] for point in run["curve"])


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation over seeds (0 for a single seed)."""
    values = [float(v) for v in values]
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def seed_band(curves: Sequence[tuple[Sequence[float], Sequence[float]]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and std over seeds of ``(timesteps, returns)`` curves, interpolated onto the first curve's timesteps."""
    grid = np.asarray(curves[0][0], dtype=float)
    stacked = np.stack([np.interp(grid, t, r) for t, r in curves])
    return grid, stacked.mean(axis=0), stacked.std(axis=0, ddof=1) if len(curves) > 1 else np.zeros_like(grid)


def evaluate(model: Any, eval_env: Any, n_episodes: int) -> dict[str, float | None]:
    """
    Mean episode return of the deterministic and of the sampled policy on ``eval_env`` (one env), and the
    actor's mean energy per step during the deterministic episodes (None: no memory).

    Both are reported because they tell different things: a near-uniform policy that has learned little
    may walk into a wall forever when deterministic, which hides learning the sampled policy shows (the
    paper reports the sampled policy).
    """
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.vec_env import sync_envs_normalization

    from sb3_stpn.common.energy import ActorEnergyRecorder
    from sb3_stpn.common.policies import actor_memory

    if model.get_vec_normalize_env() is not None:
        sync_envs_normalization(model.get_env(), eval_env)
    recorder = ActorEnergyRecorder(model.policy) if actor_memory(model.policy) is not None else None
    energies: list[float] = []

    def record(_locals: dict[str, Any], _globals: dict[str, Any]) -> None:
        energies.append(recorder.last_energy.mean().item())

    try:
        deterministic, _ = evaluate_policy(
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
    sampled, _ = evaluate_policy(model, eval_env, n_eval_episodes=n_episodes, deterministic=False, return_episode_rewards=True)
    return {
        "return": float(np.mean(deterministic)),
        "return_sampled": float(np.mean(sampled)),
        "energy_per_step": statistics.fmean(energies) if energies else None,
    }


@contextlib.contextmanager
def random_streams_kept() -> Iterator[None]:
    """
    Leave the global random streams (torch, NumPy, Python) as they were before the block: an evaluation samples
    actions from them, and without this every change of ``--evals`` or ``--eval-episodes`` changed the training too.
    """
    import random

    import torch as th

    numpy_state, python_state = np.random.get_state(), random.getstate()
    try:
        with th.random.fork_rng():
            yield
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)


def make_diagnostics_callback() -> Any:
    """``StpnDiagnosticsCallback`` with its ``stpn/`` scalars kept per rollout in ``.records`` (the logger forgets them)."""
    from sb3_stpn.common.callbacks import StpnDiagnosticsCallback

    class RecordingDiagnostics(StpnDiagnosticsCallback):
        def __init__(self) -> None:
            super().__init__()
            self.records: list[dict[str, float]] = []

        def _on_rollout_end(self) -> None:
            super()._on_rollout_end()
            scalars = {
                key: float(value)
                for key, value in self.logger.name_to_value.items()
                if key.startswith("stpn/") and isinstance(value, int | float)
            }
            self.records.append({"timesteps": self.num_timesteps, **scalars})

    return RecordingDiagnostics()


def make_plasticity_warmup_callback(updates: int) -> Any:
    """
    A callback that freezes the STPN layers' decays and rates for the first ``updates`` PPO updates (an ablation).

    Frozen parameters get no gradient, so Adam leaves them (and their moment estimates) untouched.
    """
    from stable_baselines3.common.callbacks import BaseCallback

    from sb3_stpn.common.stpn import STPN

    class PlasticityWarmup(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.rollouts = 0

        def _on_step(self) -> bool:
            return True

        def _on_rollout_end(self) -> None:
            # The update that follows this rollout is number self.rollouts (from 0)
            frozen = self.rollouts < updates
            for layer in self.model.policy.modules():
                if isinstance(layer, STPN):
                    for parameter in layer.plasticity_parameters():
                        parameter.requires_grad_(not frozen)
            self.rollouts += 1

    return PlasticityWarmup()


def make_curve_callback(eval_env: Any, n_evals: int, n_episodes: int, steps: int) -> Any:
    """
    An SB3 callback evaluating at step 0, every ``steps / n_evals`` steps and at the end; results in ``.curve``.

    Each point also holds ``train_seconds``, the wall time spent so far outside evaluations: the clock of
    the equal-wall-clock comparison.
    """
    from stable_baselines3.common.callbacks import BaseCallback

    class CurveCallback(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.curve: list[dict[str, float | None]] = []
            self.next_eval = 0
            self.eval_seconds = 0.0
            self.start = time.perf_counter()

        def _evaluate(self) -> None:
            started = time.perf_counter()
            point = {"timesteps": self.num_timesteps, "train_seconds": started - self.start - self.eval_seconds}
            with random_streams_kept():
                self.curve.append({**point, **evaluate(self.model, eval_env, n_episodes)})
            self.eval_seconds += time.perf_counter() - started
            self.next_eval = self.num_timesteps + max(steps // n_evals, 1)

        def _on_training_start(self) -> None:
            self.start = time.perf_counter()
            self._evaluate()

        def _on_step(self) -> bool:
            if self.num_timesteps >= self.next_eval:
                self._evaluate()
            return True

        def _on_training_end(self) -> None:
            if self.curve[-1]["timesteps"] < self.num_timesteps:
                self._evaluate()

    return CurveCallback()


def run_job(job: tuple[Any, ...]) -> dict[str, Any]:
    """:func:`run_one` on one job tuple (what ``Pool.imap`` passes)."""
    return run_one(*job)


def run_one(
    task: str,
    variant_key: str,
    seed: int,
    steps: int,
    n_evals: int,
    n_episodes: int,
    changes: dict[str, Any],
    plasticity_warmup: int = 0,
) -> dict[str, Any]:
    """Train one (task, model, seed) from the zoo configs with periodic evaluation; return its curve and costs."""
    import torch as th
    import yaml

    from sb3_stpn.zoo import StpnExperimentManager

    th.set_num_threads(1)
    variant = VARIANTS[variant_key]
    entry = variant_entry(variant, task, steps, changes)
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
        # First: the diagnostics read the actor's last forward, which must be the rollout's, not an evaluation's
        diagnostics = make_diagnostics_callback() if variant.algo == "ppo_stpn" else None
        warmup = (
            make_plasticity_warmup_callback(plasticity_warmup) if plasticity_warmup and variant.algo == "ppo_stpn" else None
        )
        model.learn(steps, callback=[c for c in (diagnostics, warmup, callback) if c is not None])
        eval_env.close()
        model.get_env().close()
    policy_kwargs = entry["policy_kwargs"]
    hidden = None if variant.mlp else policy_kwargs.get("lstm_hidden_size", policy_kwargs.get("stpn_hidden_size"))
    return {
        "task": task,
        "model": variant_key,
        "seed": seed,
        "hidden_size": hidden,
        "changes": changes,
        "plasticity_warmup": plasticity_warmup if variant.algo == "ppo_stpn" else 0,
        "parameters": sum(p.numel() for p in model.policy.parameters() if p.requires_grad),
        "steps": model.num_timesteps,
        "wall_seconds": time.perf_counter() - start,
        "eval_episodes": n_episodes,
        "curve": callback.curve,
        "diagnostics": diagnostics.records if diagnostics else None,
    }


def reference_returns(task: str, n_episodes: int, seed: int = 0) -> dict[str, list[float]]:
    """Returns of the task's reference policies, where it has some: the maze's (random, memoryless wall-avoider,
    shortest-path oracle) and MiniGrid Memory's (:func:`minigrid_memory_returns`)."""
    import gymnasium as gym

    from sb3_stpn.envs import GRID_MAZE_IDS
    from sb3_stpn.envs.grid_maze_vec import REFERENCE_POLICIES
    from sb3_stpn.envs.grid_maze_vec import reference_returns as maze_returns

    if task.startswith("MiniGrid-Memory"):
        return minigrid_memory_returns(task, n_episodes, seed)
    if task not in GRID_MAZE_IDS:
        return {}
    maze_kwargs = gym.spec(task).kwargs
    return {name: maze_returns(policy, n_episodes, seed, **maze_kwargs) for name, policy in REFERENCE_POLICIES.items()}


def minigrid_memory_returns(task: str, n_episodes: int, seed: int = 0) -> dict[str, list[float]]:
    """
    Returns of two scripted MiniGrid Memory policies over episodes ``seed, seed + 1, ...``: ``oracle`` walks the
    hallway to the object that matches the one shown at the start; ``memoryless`` walks the same path and always
    takes the upper object. No policy without memory can tell the two apart, so ``memoryless``'s mean (half the
    oracle's) is the most a memoryless policy earns: a learning curve below it has learned no recall.
    """
    import gymnasium as gym
    from minigrid.core.actions import Actions

    env = gym.make(task)
    returns: dict[str, list[float]] = {"memoryless": [], "oracle": []}
    for name, episodes in returns.items():
        for episode in range(n_episodes):
            env.reset(seed=seed + episode)
            memory = env.unwrapped  # the agent starts in the hallway's row, facing the objects' column
            success_x, success_y = memory.success_pos
            upper = name == "memoryless" or success_y < memory.agent_pos[1]
            path = [Actions.forward] * (success_x - memory.agent_pos[0]) + [Actions.left if upper else Actions.right]
            total, terminated = 0.0, False
            for action in [*path, Actions.forward]:
                _, reward, terminated, _, _ = env.step(action)
                total += float(reward)
            assert terminated, "the scripted path must end at one of the two objects"
            episodes.append(total)
    env.close()
    return returns


def model_label(run: dict[str, Any]) -> str:
    """Row label: which model, its size and why it is there."""
    if run["model"] == "mlp":
        return "PPO MLP (no memory)"
    name = "STPN" if run["model"].startswith("stpn") else "LSTM"
    why = {
        "stpn": "zoo entry",
        "stpn_twin": "zoo entry, plastic=False: twin",
        "lstm_params": "matched params",
        "lstm_hidden": "matched hidden size",
    }[run["model"]]
    if run["changes"]:
        why += " + " + ", ".join(f"{key}={value}" for key, value in run["changes"].items())
    if run.get("plasticity_warmup"):
        why += f" + plasticity frozen for {run['plasticity_warmup']} updates"
    return f"{name} h={run['hidden_size']} ({why})"


def _groups(runs: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Runs grouped by task and row label (model and its changes), in the order they came."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["task"], model_label(run)), []).append(run)
    return groups


def _curve(run: dict[str, Any], clock: str = "timesteps", value: str = "return") -> tuple[list[float], list[float]]:
    return [p[clock] for p in run["curve"]], [p[value] for p in run["curve"]]


def equal_time_budget(runs: list[dict[str, Any]], task: str) -> float:
    """Seconds of training every model of ``task`` got: the smallest mean training time of its rows."""
    return min(
        statistics.fmean(run["curve"][-1]["train_seconds"] for run in group)
        for (t, _), group in _groups(runs).items()
        if t == task
    )


def area_within(seconds: Sequence[float], returns: Sequence[float], budget: float) -> float:
    """Mean return over the first ``budget`` seconds of training (the curve cut, interpolated, at ``budget``)."""
    t, r = np.asarray(seconds, dtype=float), np.asarray(returns, dtype=float)
    inside = t < budget
    return area_under_curve([*t[inside], budget], [*r[inside], float(np.interp(budget, t, r))])


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """
    One row per (task, model): mean +- std over seeds of the final return and of the area under the curve
    (deterministic and sampled policy), the sampled area within the task's equal-wall-clock budget, energy
    per step, mean wall time.
    """
    budgets = {task: equal_time_budget(runs, task) for task in dict.fromkeys(run["task"] for run in runs)}
    rows = []
    for (task, label), group in _groups(runs).items():
        energies = [run["curve"][-1]["energy_per_step"] for run in group]
        row = {
            "task": task,
            "model": group[0]["model"],
            "label": label,
            "parameters": group[0]["parameters"],
            "seeds": len(group),
            "steps": group[0]["steps"],
            "energy_per_step": mean_std(energies) if None not in energies else None,
            "wall_seconds": statistics.fmean(run["wall_seconds"] for run in group),
            "equal_time_budget": budgets[task],
            "mmer": mean_std([max_mean_episodic_return(run) for run in group]),
            "auc_equal_time_sampled": mean_std(
                [area_within(*_curve(run, "train_seconds", "return_sampled"), budgets[task]) for run in group]
            ),
        }
        for value, suffix in (("return", ""), ("return_sampled", "_sampled")):
            curves = [_curve(run, value=value) for run in group]
            row["final_return" + suffix] = mean_std([r[-1] for _, r in curves])
            row["auc" + suffix] = mean_std([area_under_curve(t, r) for t, r in curves])
        rows.append(row)
    return rows


def _pm(value: tuple[float, float] | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value[0]:.{digits}f} ± {value[1]:.{digits}f}"


def table(rows: list[dict[str, Any]], references: dict[str, dict[str, list[float]]]) -> str:
    """Markdown table of the summary rows, with each task's reference policies (mean ± std over episodes) after it."""
    lines = [
        "| task | model | params | seeds | steps | final return (sampled) | final return (deterministic) "
        "| AUC / steps (sampled) | AUC / steps (deterministic) | MMER (sampled) | AUC within equal wall-clock (sampled) "
        "| energy / step | wall s / run |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for task in dict.fromkeys(row["task"] for row in rows):
        task_rows = [row for row in rows if row["task"] == task]
        # Returns within +-10 (MiniGrid's are in [0, 1]) need two decimals to be told apart
        d = 2 if all(abs(row["final_return_sampled"][0]) < 10 for row in task_rows) else 1
        for row in task_rows:
            lines.append(
                f"| {task} | {row['label']} | {row['parameters']} | {row['seeds']} | {row['steps']} "
                f"| {_pm(row['final_return_sampled'], d)} | {_pm(row['final_return'], d)} | {_pm(row['auc_sampled'], d)} "
                f"| {_pm(row['auc'], d)} | {_pm(row['mmer'], d)} "
                f"| {_pm(row['auc_equal_time_sampled'], d)} (first {row['equal_time_budget']:.0f} s) "
                f"| {_pm(row['energy_per_step'], 2)} | {row['wall_seconds']:.0f} |"
            )
        for name, returns in references.get(task, {}).items():
            empty = " |" * 7
            lines.append(
                f"| {task} | {name} policy (reference, {len(returns)} episodes) | | | | {_pm(mean_std(returns))} |{empty}"
            )
    return "\n".join(lines)


@dataclass(frozen=True)
class SuiteScore:
    """One model over the POPGym suite: the tasks and seeds it is scored on, and its aggregates."""

    tasks: int
    seeds: int
    task_mean_mmer: float  # mean over tasks of the mean MMER over seeds
    task_mean_auc: float  # the same for the sampled area
    estimates: np.ndarray  # rliable's aggregate mean and IQM of the MMER over (seed, task) runs
    intervals: np.ndarray  # their 95 % stratified-bootstrap confidence intervals, shape (2, 2): low, high


def suite_scores(runs: list[dict[str, Any]], bootstrap_reps: int = 2000) -> dict[str, SuiteScore]:
    """
    Each model over the POPGym tasks that every model ran (none with fewer than two tasks): its MMER and area over
    tasks, and rliable's aggregate mean and interquartile mean of the MMER over every (seed, task) run with 95 %
    stratified-bootstrap confidence intervals. POPGym scales every task's returns to [-1, 1], so its tasks are
    aggregated as they are.
    """
    from rliable import library, metrics

    by_model: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for run in runs:
        if run["task"] in POPGYM_TASKS:
            by_model.setdefault(model_label(run), {}).setdefault(run["task"], []).append(run)
    # Every model over the same tasks: those that all of them ran
    tasks = [task for task in POPGYM_TASKS if all(task in by_task for by_task in by_model.values())]
    if len(tasks) < 2:
        return {}
    scores = {}
    for label, all_tasks in by_model.items():
        groups = [all_tasks[task] for task in tasks]
        seeds = min(len(group) for group in groups)
        mmer = np.array([[max_mean_episodic_return(group[i]) for group in groups] for i in range(seeds)])
        with warnings.catch_warnings():  # rliable hands arch a RandomState, which arch deprecates
            warnings.simplefilter("ignore", FutureWarning)
            estimates, intervals = library.get_interval_estimates(
                {label: mmer},
                lambda scores: np.array([metrics.aggregate_mean(scores), metrics.aggregate_iqm(scores)]),
                reps=bootstrap_reps,
                random_state=np.random.RandomState(0),
            )
        scores[label] = SuiteScore(
            tasks=len(tasks),
            seeds=seeds,
            task_mean_mmer=statistics.fmean(statistics.fmean(map(max_mean_episodic_return, group)) for group in groups),
            task_mean_auc=statistics.fmean(
                statistics.fmean(area_under_curve(*_curve(run, value="return_sampled")) for run in group) for group in groups
            ),
            estimates=estimates[label],
            intervals=intervals[label],
        )
    return scores


def suite_table(scores: dict[str, SuiteScore]) -> str:
    """Markdown table of :func:`suite_scores` (empty without scores)."""
    if not scores:
        return ""
    lines = [
        "| model | tasks | seeds | mean MMER over tasks | mean AUC (sampled) over tasks | MMER mean [95 % CI] "
        "| MMER IQM [95 % CI] |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for label, score in scores.items():
        (mean, iqm), ((mean_low, iqm_low), (mean_high, iqm_high)) = score.estimates, score.intervals
        lines.append(
            f"| {label} | {score.tasks} | {score.seeds} | {score.task_mean_mmer:.2f} | {score.task_mean_auc:.2f} "
            f"| {mean:.2f} [{mean_low:.2f}, {mean_high:.2f}] | {iqm:.2f} [{iqm_low:.2f}, {iqm_high:.2f}] |"
        )
    return "\n".join(lines)


def plot_suite(scores: dict[str, SuiteScore], path: Path) -> None:
    """rliable's interval-estimate plot of the suite's MMER mean and IQM, one row per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from rliable import plot_utils

    labels = {label: textwrap.fill(label, 40) for label in scores}
    figure, _ = plot_utils.plot_interval_estimates(
        {labels[label]: score.estimates for label, score in scores.items()},
        {labels[label]: score.intervals for label, score in scores.items()},
        metric_names=["MMER mean", "MMER IQM"],
        algorithms=list(labels.values()),
        xlabel="POPGym return (scaled to [-1, 1])",
        row_height=0.8,
    )
    figure.savefig(path, bbox_inches="tight", dpi=80)
    plt.close(figure)


DIAGNOSTIC_FRACTIONS = (0.1, 0.5, 1.0)  # of training, where the plasticity diagnostics are read


def diagnostics_table(runs: list[dict[str, Any]]) -> str:
    """
    Markdown table of the STPN rows' plasticity diagnostics, mean over seeds (empty without STPN runs).

    ``F/W``: the actor's ``||F_i|| / ||W_i||`` at the end of the rollout 10 %, 50 % and 100 % through
    training; ``gamma std``: the spread of the actor's rates at the same points; ``lambda max``: its
    largest decay at the end; ``update``: the median over PPO updates of each group's relative change
    ``||delta|| / ||before||`` (lambda, gamma, slow weights W, all other parameters).
    """

    def at(records: list[dict[str, float]], key: str, fraction: float) -> float | None:
        value = records[round(fraction * (len(records) - 1))].get(key)
        return None if value is None else float(value)

    def median_update(records: list[dict[str, float]], group: str) -> float | None:
        sizes = [record[f"stpn/update_{group}"] for record in records if f"stpn/update_{group}" in record]
        return statistics.median(sizes) if sizes else None

    def mean_of(values: list[float | None]) -> str:
        known = [value for value in values if value is not None]
        return f"{statistics.fmean(known):.2g}" if len(known) == len(values) else "-"

    points = " / ".join(f"{fraction:.0%}" for fraction in DIAGNOSTIC_FRACTIONS)
    lines = [
        f"| task | model | seeds | F/W ({points}) | gamma std ({points}) | lambda max (end) "
        "| update lambda / gamma / W / other (median) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for (task, label), group in _groups(runs).items():
        records = [run["diagnostics"] for run in group if run.get("diagnostics")]
        if not records:
            continue
        ratio = " / ".join(mean_of([at(r, "stpn/F_over_W", f) for r in records]) for f in DIAGNOSTIC_FRACTIONS)
        spread = " / ".join(mean_of([at(r, "stpn/weight_gamma_std", f) for r in records]) for f in DIAGNOSTIC_FRACTIONS)
        updates = " / ".join(
            mean_of([median_update(r, g) for r in records]) for g in ("weight_lambda", "weight_gamma", "weight", "other")
        )
        lambda_max = mean_of([at(r, "stpn/weight_lambda_max", 1.0) for r in records])
        lines.append(f"| {task} | {label} | {len(records)} | {ratio} | {spread} | {lambda_max} | {updates} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def plot(task: str, runs: list[dict[str, Any]], references: dict[str, list[float]], path: Path) -> None:
    """
    Learning curves of ``task``, mean over seeds per model shaded +- std, references dashed: sampled and
    deterministic eval return against env steps, and sampled return against training wall time.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (
        ("timesteps", "return_sampled", "sampled policy", "env steps"),
        ("timesteps", "return", "deterministic policy", "env steps"),
        ("train_seconds", "return_sampled", "sampled policy, equal wall-clock", "training seconds"),
    )
    figure, all_axes = plt.subplots(1, len(panels), figsize=(15, 3.6), dpi=80, sharey=True)
    for axes, (clock, value, title, xlabel) in zip(all_axes, panels, strict=True):
        for (group_task, label), group in _groups(runs).items():
            if group_task != task:
                continue
            grid, mean, std = seed_band([_curve(run, clock, value) for run in group])
            (line,) = axes.plot(grid, mean, label=label)
            axes.fill_between(grid, mean - std, mean + std, color=line.get_color(), alpha=0.2)
        for name, returns in references.items():
            color = {"random": "grey", "oracle": "black"}.get(name, "tab:brown")
            axes.axhline(statistics.fmean(returns), linestyle="--", color=color, label=name)
        axes.set(title=f"{task}: {title}", xlabel=xlabel, ylabel="eval return (mean ± std over seeds)")
        axes.title.set_fontsize(9)
    # Under the panels, labels wrapped: a label that names its changes is longer than a panel is wide
    handles, labels = all_axes[0].get_legend_handles_labels()
    wrapped = [textwrap.fill(label, LEGEND_WIDTH) for label in labels]
    figure.tight_layout()
    figure.legend(handles, wrapped, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=2, fontsize=7)
    figure.savefig(path, bbox_inches="tight")
    plt.close(figure)


def expand_tasks(names: Sequence[str]) -> list[str]:
    """``--tasks``: the names given, ``popgym`` standing for the six POPGym tasks, each task once."""
    return list(dict.fromkeys(task for name in names for task in (POPGYM_TASKS if name == POPGYM_SUITE else [name])))


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
    """``--stpn-hyperparams`` or ``--lstm-hyperparams``: ``KEY=VALUE`` pairs with Python values."""
    changes = {}
    for value in values or []:
        key, separator, text = value.partition("=")
        if not separator:
            raise SystemExit(f"--stpn-hyperparams and --lstm-hyperparams take KEY=VALUE, got {value!r}")
        changes[key] = python_value(text)
    return changes


RUNS_FILE = "runs.jsonl"


def job_key(task: str, model: str, seed: int, changes: dict[str, Any], plasticity_warmup: int) -> str:
    """What makes a run the same run again: the job's fields that ``run_one`` records (its budget aside)."""
    return json.dumps([task, model, seed, changes, plasticity_warmup], sort_keys=True, default=repr)


def finished_job_keys(runs_path: Path) -> set[str]:
    """The job keys of the runs already in ``runs_path`` (none if it does not exist), for a benchmark resumed."""
    if not runs_path.is_file():
        return set()
    runs = [json.loads(line) for line in runs_path.read_text().splitlines() if line.strip()]
    return {job_key(run["task"], run["model"], run["seed"], run["changes"], run.get("plasticity_warmup", 0)) for run in runs}


def write_report(runs: list[dict[str, Any]], out: Path, header: str, settings: dict[str, Any]) -> str:
    """Print and write the table (``learning.md``), all curves (``learning.json``) and one plot per task."""
    tasks = list(dict.fromkeys(run["task"] for run in runs))
    n_reference = max(50, max(run.get("eval_episodes", 0) for run in runs))
    references = {task: refs for task in tasks if (refs := reference_returns(task, n_reference))}
    rows = summarise(runs)
    text = table(rows, references)
    if scores := suite_scores(runs):
        text += "\n\nPOPGym suite (MMER: best sampled-policy evaluation of each run):\n\n" + suite_table(scores)
    if diagnostics := diagnostics_table(runs):
        text += "\n\nPlasticity diagnostics (STPN rows, actor layer):\n\n" + diagnostics
    print(f"\n{header}\n\n{text}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "learning.md").write_text(text + "\n")
    for task in tasks:
        plot(task, runs, references.get(task, {}), out / f"{task}.png")
    if scores:
        plot_suite(scores, out / "popgym_suite.png")
    report = {**settings, "table": text, "rows": rows, "references": references, "runs": runs}
    (out / "learning.json").write_text(json.dumps(report, indent=1))
    return text


def read_runs(folders: Sequence[Path]) -> list[dict[str, Any]]:
    """The runs recorded in ``runs.jsonl`` of each folder, in order; ``runs.jsonl.gz`` where a folder holds that
    instead (how the results committed under ``docs/`` keep their runs)."""
    runs = []
    for folder in folders:
        path, compressed = folder / RUNS_FILE, folder / f"{RUNS_FILE}.gz"
        if path.is_file():
            text = path.read_text()
        elif compressed.is_file():
            text = gzip.decompress(compressed.read_bytes()).decode()
        else:
            raise SystemExit(f"--report: {path} not found; pass folders that a benchmark run wrote (its --out)")
        runs += [json.loads(line) for line in text.splitlines() if line.strip()]
    return runs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument(
        "--tasks", nargs="+", choices=(*TASKS, *POPGYM_TASKS, POPGYM_SUITE), default=None,
        help=f"tasks (default: the project's six); {POPGYM_SUITE} stands for the six POPGym tasks",
    )  # fmt: skip
    parser.add_argument("--seeds", type=int, default=None, help="seeds per model (default 3, --quick 1)")
    parser.add_argument("--first-seed", type=int, default=0, help="seeds are first-seed, first-seed + 1, ...")
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
    parser.add_argument(
        "--lstm-hyperparams",
        nargs="+",
        default=None,
        metavar="KEY=VALUE",
        help="changes to the LSTM's zoo entry (both LSTM rows), as --stpn-hyperparams; the LSTM rows name them",
    )
    parser.add_argument(
        "--plasticity-warmup", type=int, default=0, metavar="UPDATES",
        help="an ablation: freeze the STPN rows' lambda and gamma for the first UPDATES PPO updates",
    )  # fmt: skip
    parser.add_argument("--evals", type=int, default=10, help="evaluations per run after the one at step 0")
    parser.add_argument("--eval-episodes", type=int, default=None, help="episodes per evaluation (default 5, --quick 1)")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel processes (1 torch thread each)")
    parser.add_argument("--quick", action="store_true", help="one seed, one rollout per run: checks the script works")
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT,
        help=f"folder for {RUNS_FILE} (each run as it ends), learning.md/json, PNGs; a folder that already holds runs "
        "resumes: those runs are kept and not trained again (use a new folder for a new budget)",
    )  # fmt: skip
    parser.add_argument(
        "--report", nargs="+", type=Path, default=None, metavar="FOLDER",
        help=f"train nothing: rebuild the table and plots in --out from the {RUNS_FILE} of these folders (merged)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    settings: dict[str, Any] = {"argv": sys.argv[1:] if argv is None else argv}
    if args.report:
        write_report(read_runs(args.report), args.out, f"Runs of {', '.join(map(str, args.report))}", settings)
        return

    from sb3_stpn.zoo.exp_manager import Interrupted, raising_interrupted

    tasks = expand_tasks(args.tasks or TASKS)
    seeds = args.seeds or (1 if args.quick else 3)
    n_episodes = args.eval_episodes or (1 if args.quick else 5)
    n_evals = 2 if args.quick else args.evals
    steps = parse_steps(args.steps, tasks, QUICK_STEPS if args.quick else DEFAULT_STEPS)
    changes = {"ppo_stpn": parse_changes(args.stpn_hyperparams), "ppo_lstm": parse_changes(args.lstm_hyperparams)}
    jobs = [
        (task, variant.key, seed, steps[task], n_evals, n_episodes, changes.get(variant.algo, {}), args.plasticity_warmup)
        for task in tasks
        for seed in range(args.first_seed, args.first_seed + seeds)
        for variant in variants_for(task)
        if args.models is None or variant.key in args.models
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    # Resume: the runs a stopped benchmark finished into this --out are kept, not trained again
    finished = finished_job_keys(args.out / RUNS_FILE)
    todo = [
        job for job in jobs if job_key(*job[:3], job[6], job[7] if VARIANTS[job[1]].algo == "ppo_stpn" else 0) not in finished
    ]
    if len(todo) < len(jobs):
        print(f"resuming: {len(jobs) - len(todo)} of the {len(jobs)} runs are already in {args.out / RUNS_FILE}", flush=True)
    start = time.perf_counter()
    runs: list[dict[str, Any]] = []
    try:
        # On SIGINT or SIGTERM the pool's exit terminates its workers: none goes on training for a dead parent
        with (
            raising_interrupted(),
            multiprocessing.get_context("spawn").Pool(args.jobs) if args.jobs > 1 else contextlib.nullcontext() as pool,
            (args.out / RUNS_FILE).open("a") as runs_file,
        ):
            # Printed and saved as each run (in order) finishes, so that a long benchmark shows its progress
            # and a stopped one keeps what it finished (--report rebuilds the table from it)
            for run in pool.imap(run_job, todo) if pool else map(run_job, todo):
                final = run["curve"][-1]
                print(
                    f"{run['task']} {run['model']} seed {run['seed']}: return {final['return_sampled']:.1f} sampled, "
                    f"{final['return']:.1f} deterministic, {run['wall_seconds']:.0f} s",
                    flush=True,
                )
                runs_file.write(json.dumps(run) + "\n")
                runs_file.flush()
                runs.append(run)
    except Interrupted as stop:
        print(
            f"stopped by {stop}: the {len(runs)} runs that finished are in {args.out / RUNS_FILE} "
            f"(--report {args.out} rebuilds their table)",
            file=sys.stderr,
        )
        raise SystemExit(128 + stop.signum) from None
    total = time.perf_counter() - start
    header = f"StpnPPO vs RecurrentPPO, zoo configs, {seeds} seed(s), {args.jobs} job(s), {total:.0f} s in all"
    settings.update(seeds=seeds, eval_episodes=n_episodes, steps=steps, total_seconds=total)
    write_report(read_runs([args.out]), args.out, header, settings)


if __name__ == "__main__":
    main()
