"""The study summary lists a journal's studies with their best trials first."""

from pathlib import Path

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from benchmarks.studies import main


def test_summary_ranks_completed_trials(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    journal = tmp_path / "optuna.log"
    study = optuna.create_study(
        study_name="ppo_stpn_Task", storage=JournalStorage(JournalFileBackend(str(journal))), direction="maximize"
    )
    study.set_user_attr("command", "train.py --optimize")
    for value in (0.3786939, 0.6684081, 0.4875102):  # small returns (MiniGrid) keep their digits
        trial = study.ask({"clamp": optuna.distributions.CategoricalDistribution([None, 0.1, 1.0])})
        study.tell(trial, value)
    pruned = study.ask()
    study.tell(pruned, state=optuna.trial.TrialState.PRUNED)

    main([str(journal), "--top", "2"])
    printed = capsys.readouterr().out
    assert "**ppo_stpn_Task**: 3 complete, 1 pruned, 4 in all. Command: `train.py --optimize`" in printed
    rows = [line for line in printed.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [row.split(" | ")[1] for row in rows] == ["0.6684", "0.4875"]  # best first, only the top 2
    with pytest.raises(SystemExit):
        main([str(tmp_path / "missing.log")])
