"""
Run folders claimed atomically, and removed when the run fails before it saved a model.

rl_zoo3 picks a run's id (one above the latest run's) when the manager is made, so runs started together picked the
same folder, wrote into it together, and one model overwrote the other. A run that failed left its folder without a
model behind, for ``enjoy``'s "latest run" to trip over.
"""

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rl_zoo3.exp_manager import ExperimentManager
from stable_baselines3.common.base_class import BaseAlgorithm

from sb3_stpn.zoo.signals import Interrupted


class ClaimedRunFolder(ExperimentManager):
    """rl_zoo3's ExperimentManager, each run in a folder of its own, removed if the run fails before saving a model."""

    _claimed_run_folder = False  # only a folder this run made is ever removed, never a simultaneous run's

    def create_log_folder(self) -> None:
        """Claim the run folder with an atomic ``os.mkdir``, taking the next id when it exists."""
        Path(self.log_path).mkdir(parents=True, exist_ok=True)
        number = Path(self.save_path).name.removeprefix(f"{self.env_name}_")
        digits = len(number) - len(number.lstrip("0123456789"))
        run_id, uuid_suffix = int(number[:digits]), number[digits:]
        while True:
            save_path = os.path.join(self.log_path, f"{self.env_name}_{run_id}{uuid_suffix}")
            try:
                os.mkdir(save_path)
                break
            except FileExistsError:
                run_id += 1
        self.save_path, self.params_path = save_path, f"{save_path}/{self.env_name}"
        self._claimed_run_folder = True
        super().create_log_folder()

    def setup_experiment(self) -> tuple[BaseAlgorithm, dict[str, Any]] | None:
        with self._removing_run_folder_on_failure():
            return super().setup_experiment()

    def learn(self, model: BaseAlgorithm) -> None:
        with self._removing_run_folder_on_failure():
            super().learn(model)

    def hyperparameters_optimization(self) -> None:
        with self._removing_run_folder_on_failure():
            super().hyperparameters_optimization()

    @contextmanager
    def _removing_run_folder_on_failure(self) -> Iterator[None]:
        """
        Remove this run's freshly made folder, unless a model was saved in it, when anything fails; a stop that saved
        what it could (an :class:`Interrupted` saying what it left) is no failure.
        """
        try:
            yield
        except BaseException as error:
            if isinstance(error, Interrupted) and error.outcome:
                raise
            run_folder = Path(self.save_path)
            if self._claimed_run_folder and run_folder.is_dir() and not any(run_folder.rglob("*.zip")):
                shutil.rmtree(run_folder)
            raise
