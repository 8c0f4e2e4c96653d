"""The learning benchmark's report: the table of every row, the plasticity diagnostics, the learning-curve plots."""

import json
import statistics
import textwrap
from pathlib import Path
from typing import Any

from benchmarks.learning.references import reference_returns
from benchmarks.learning.stats import curve_of, mean_std, runs_by_row, seed_band, summarise
from benchmarks.learning.suite import plot_suite, suite_scores, suite_table

LEGEND_WIDTH = 110  # characters per legend line under the plots
DIAGNOSTIC_FRACTIONS = (0.1, 0.5, 1.0)  # of training, where the plasticity diagnostics are read


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


# The gradient diagnostics of StpnDiagnosticsCallback, as the table's last column shows them
GRADIENT_KEYS = ("grad_norm_plasticity", "grad_norm", "clipped_fraction")


def diagnostics_table(runs: list[dict[str, Any]]) -> str:
    """
    Markdown table of the STPN rows' plasticity diagnostics, mean over seeds (empty without STPN runs).

    ``F/W``: the actor's ``||F_i|| / ||W_i||`` at the end of the rollout 10 %, 50 % and 100 % through
    training; ``gamma std``: the spread of the actor's rates at the same points; ``lambda max``: its
    largest acting decay at the end (``lambda_max`` applied; the records of rounds 6-10 hold the stored one);
    ``update``: the median over PPO updates of each group's relative change ``||delta|| / ||before||`` (lambda,
    gamma, slow weights W, all other parameters); ``grad norm``: the median over PPO updates of the gradient's norm
    before clipping, its plasticity part's, and the fraction of gradient steps clipped (runs since round 10).
    """

    def at(records: list[dict[str, float]], key: str, fraction: float) -> float | None:
        value = records[round(fraction * (len(records) - 1))].get(key)
        return None if value is None else float(value)

    def median_of(records: list[dict[str, float]], key: str) -> float | None:
        values = [record[key] for record in records if key in record]
        return statistics.median(values) if values else None

    def mean_of(values: list[float | None]) -> str:
        known = [value for value in values if value is not None]
        return f"{statistics.fmean(known):.2g}" if len(known) == len(values) else "-"

    points = " / ".join(f"{fraction:.0%}" for fraction in DIAGNOSTIC_FRACTIONS)
    lines = [
        f"| task | model | seeds | F/W ({points}) | gamma std ({points}) | lambda max (end) "
        "| update lambda / gamma / W / other (median) | grad norm plasticity / whole, clipped (median) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for (task, label), group in runs_by_row(runs).items():
        records = [run["diagnostics"] for run in group if run.get("diagnostics")]
        if not records:
            continue
        ratio = " / ".join(mean_of([at(r, "stpn/F_over_W", f) for r in records]) for f in DIAGNOSTIC_FRACTIONS)
        spread = " / ".join(mean_of([at(r, "stpn/weight_gamma_std", f) for r in records]) for f in DIAGNOSTIC_FRACTIONS)
        updates = " / ".join(
            mean_of([median_of(r, f"stpn/update_{g}") for r in records])
            for g in ("weight_lambda", "weight_gamma", "weight", "other")
        )
        gradients = [mean_of([median_of(r, f"stpn/{key}") for r in records]) for key in GRADIENT_KEYS]
        lambda_max = mean_of([at(r, "stpn/weight_lambda_max", 1.0) for r in records])
        lines.append(
            f"| {task} | {label} | {len(records)} | {ratio} | {spread} | {lambda_max} | {updates} "
            f"| {gradients[0]} / {gradients[1]}, {gradients[2]} |"
        )
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
        for (group_task, label), group in runs_by_row(runs).items():
            if group_task != task:
                continue
            grid, mean, std = seed_band([curve_of(run, clock, value) for run in group])
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
