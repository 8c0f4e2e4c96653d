"""The POPGym validation suite's aggregate scores over tasks and seeds (rliable), as a table and a plot."""

import statistics
import textwrap
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.learning.stats import area_under_curve, curve_of, max_mean_episodic_return, model_label
from benchmarks.learning.variants import POPGYM_TASKS


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
        # rliable's stratified bootstrap draws its indices from NumPy's global generator, whatever random_state
        # says, so the intervals are reproducible only with that generator seeded (and restored afterwards)
        global_state = np.random.get_state()
        np.random.seed(0)
        try:
            with warnings.catch_warnings():  # rliable hands arch a RandomState, which arch deprecates
                warnings.simplefilter("ignore", FutureWarning)
                estimates, intervals = library.get_interval_estimates(
                    {label: mmer},
                    lambda scores: np.array([metrics.aggregate_mean(scores), metrics.aggregate_iqm(scores)]),
                    reps=bootstrap_reps,
                    random_state=np.random.RandomState(0),
                )
        finally:
            np.random.set_state(global_state)
        scores[label] = SuiteScore(
            tasks=len(tasks),
            seeds=seeds,
            task_mean_mmer=statistics.fmean(statistics.fmean(map(max_mean_episodic_return, group)) for group in groups),
            task_mean_auc=statistics.fmean(
                statistics.fmean(area_under_curve(*curve_of(run, value="return_sampled")) for run in group) for group in groups
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

    labels = {label: textwrap.fill(label, 60) for label in scores}
    # Tall enough a row for its label's lines: a label that names its changes wraps to several
    lines = max(label.count("\n") + 1 for label in labels.values())
    figure, _ = plot_utils.plot_interval_estimates(
        {labels[label]: score.estimates for label, score in scores.items()},
        {labels[label]: score.intervals for label, score in scores.items()},
        metric_names=["MMER mean", "MMER IQM"],
        algorithms=list(labels.values()),
        xlabel="POPGym return (scaled to [-1, 1])",
        row_height=max(0.8, 0.32 * lines),
    )
    figure.savefig(path, bbox_inches="tight", dpi=80)
    plt.close(figure)
