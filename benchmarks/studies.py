"""
Summarise Optuna studies run with ``train.py --optimize``: each study's command, trial counts and top trials.

The studies behind the tuned zoo entries are committed as their journal files (``results/studies/*.log``,
rl_zoo3's JournalStorage format); this prints the markdown tables ``results/history/learning.md`` quotes, so that
every tuned value can be traced to the trial it came from.

Usage: ``python -m benchmarks.studies results/studies/*.log [--top 5]``
"""

import argparse
from pathlib import Path

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState


def _value(value: object) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def study_table(study: optuna.Study, top: int) -> str:
    """Markdown: the study's command and trial counts, then its ``top`` completed trials, best first."""
    trials = study.get_trials(deepcopy=False)
    complete = [trial for trial in trials if trial.state == TrialState.COMPLETE]
    pruned = sum(trial.state == TrialState.PRUNED for trial in trials)
    best: list[FrozenTrial] = sorted(complete, key=lambda trial: trial.value, reverse=True)[:top]
    names = list(dict.fromkeys(name for trial in best for name in trial.params))
    command = study.user_attrs.get("command", "(not recorded)")
    lines = [
        f"**{study.study_name}**: {len(complete)} complete, {pruned} pruned, {len(trials)} in all. Command: `{command}`",
        "",
        "| trial | value | " + " | ".join(names) + " |",
        "| --- | --- | " + " | ".join("---" for _ in names) + " |",
    ]
    lines += [
        f"| {trial.number} | {trial.value:.4g} | " + " | ".join(_value(trial.params.get(name, "")) for name in names) + " |"
        for trial in best
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("journals", nargs="+", type=Path, help="Optuna journal files (train.py's <log folder>/optuna.log)")
    parser.add_argument("--top", type=int, default=5, help="trials shown per study")
    args = parser.parse_args(argv)
    for journal in args.journals:
        if not journal.is_file():
            raise SystemExit(f"{journal} not found; pass the optuna.log that train.py --optimize wrote")
        storage = JournalStorage(JournalFileBackend(str(journal)))
        for summary in optuna.get_all_study_summaries(storage):
            print(study_table(optuna.load_study(study_name=summary.study_name, storage=storage), args.top) + "\n")


if __name__ == "__main__":
    main()
