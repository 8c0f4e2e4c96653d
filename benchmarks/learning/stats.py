"""Statistics of the learning benchmark's recorded runs: each row's label and numbers, areas under the curves."""

import statistics
from collections.abc import Sequence
from typing import Any

import numpy as np


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


def model_label(run: dict[str, Any]) -> str:
    """
    Row label: which model, its size and why it is there. A twin's ``plastic=False`` comes after the changes, as it
    goes on top of them (:func:`~benchmarks.learning.variants.variant_entry`).
    """
    if run["model"] == "mlp":
        return "PPO MLP (no memory)"
    name = "STPN" if run["model"].startswith("stpn") else "LSTM"
    why = {
        "stpn": "zoo entry",
        "stpn_twin": "zoo entry",
        "lstm_params": "matched params",
        "lstm_hidden": "matched hidden size",
    }[run["model"]]
    if run["changes"]:
        why += " + " + ", ".join(f"{key}={value}" for key, value in run["changes"].items())
    if run["model"] == "stpn_twin":
        why += ", plastic=False: twin"
    if run.get("plasticity_warmup"):
        why += f" + plasticity frozen for {run['plasticity_warmup']} updates"
    return f"{name} h={run['hidden_size']} ({why})"


def runs_by_row(runs: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Runs grouped by task and row label (model and its changes), in the order they came."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["task"], model_label(run)), []).append(run)
    return groups


def curve_of(run: dict[str, Any], clock: str = "timesteps", value: str = "return") -> tuple[list[float], list[float]]:
    """The ``(clock, value)`` points of ``run``'s evaluations, e.g. the sampled return against training seconds."""
    return [p[clock] for p in run["curve"]], [p[value] for p in run["curve"]]


def equal_time_budget(runs: list[dict[str, Any]], task: str) -> float:
    """Seconds of training every model of ``task`` got: the smallest mean training time of its rows."""
    return min(
        statistics.fmean(run["curve"][-1]["train_seconds"] for run in group)
        for (t, _), group in runs_by_row(runs).items()
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
    for (task, label), group in runs_by_row(runs).items():
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
                [area_within(*curve_of(run, "train_seconds", "return_sampled"), budgets[task]) for run in group]
            ),
        }
        for value, suffix in (("return", ""), ("return_sampled", "_sampled")):
            curves = [curve_of(run, value=value) for run in group]
            row["final_return" + suffix] = mean_std([r[-1] for _, r in curves])
            row["auc" + suffix] = mean_std([area_under_curve(t, r) for t, r in curves])
        rows.append(row)
    return rows
