"""
SIGINT (Ctrl-C) and SIGTERM (a scheduler, ``docker stop``) handled alike: a run saves what it has, then stops with exit
status 128 + signal.

Python turns only SIGINT into an exception; SIGTERM's default kills the process on the spot, with no model saved and no
clean-up. rl_zoo3 saves the model on a KeyboardInterrupt during training, then ends as if it had finished (exit 0), and
ends a study the same way. :class:`StopOnSignals` turns SIGTERM into the same KeyboardInterrupt, holds a signal back
while the run is set up and while the final model is written, and re-raises the stop once the set-up is over or the
model or the finished trials are safe.
"""

import contextlib
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from rl_zoo3.exp_manager import ExperimentManager
from stable_baselines3.common.base_class import BaseAlgorithm


class Interrupted(KeyboardInterrupt):
    """A stop by SIGINT (Ctrl-C) or SIGTERM (a scheduler, ``docker stop``): handled alike, the exit status 128 + signal."""

    def __init__(self, signum: int, outcome: str = "") -> None:
        """:param outcome: What the stop left, said after the signal's name in the one line the CLI prints."""
        super().__init__(signal.Signals(signum).name + (f": {outcome}" if outcome else ""))
        self.signum = signum
        self.outcome = outcome


@contextmanager
def raising_interrupted(note: Callable[[int], None] | None = None) -> Iterator[None]:
    """
    While the block runs, SIGINT and SIGTERM raise :class:`Interrupted` (after ``note(signum)``).

    As a KeyboardInterrupt, SIGTERM then takes every path Ctrl-C takes (rl_zoo3 saves the model).
    """

    def interrupt(signum: int, frame: FrameType | None) -> None:
        if note is not None:
            note(signum)
        raise Interrupted(signum)

    with _stop_signals_handled_by(interrupt):
        yield


@contextmanager
def signals_held() -> Iterator[list[int]]:
    """
    While the block runs, SIGINT and SIGTERM are only recorded, in the list the block gets: a save they would cut
    short (a model lost, the exit status still saying saved) completes first, and the caller then stops.
    """
    received: list[int] = []
    with _stop_signals_handled_by(lambda signum, frame: received.append(signum)):
        yield received


@contextmanager
def _stop_signals_handled_by(handler: Callable[[int, FrameType | None], None]) -> Iterator[None]:
    """SIGINT and SIGTERM go to ``handler`` while the block runs; the handlers before it are restored after it."""
    previous = {signum: signal.signal(signum, handler) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, before in previous.items():
            signal.signal(signum, before)


class StopOnSignals(ExperimentManager):
    """
    rl_zoo3's ExperimentManager stopped alike by SIGINT and SIGTERM: the model is saved (a signal during the final save
    waits for it) or the study keeps its finished trials, then :class:`Interrupted` says so, for exit status 128 + signal.
    """

    interrupted: int | None = None  # the signal (SIGINT: Ctrl-C, or SIGTERM) that stopped learn or the study

    def _note_stop(self, signum: int) -> None:
        self.interrupted = signum  # rl_zoo3 catches the KeyboardInterrupt raised next (and saves the model)

    def setup_experiment(self) -> tuple[BaseAlgorithm, dict[str, Any]] | None:
        # A KeyboardInterrupt raised inside native code that calls back into Python (the optimiser's construction
        # imports torch._dynamo through nanobind) aborts the process with a C++ traceback: a stop waits for the set-up
        with signals_held() as received:
            result = super().setup_experiment()
        if received:
            raise Interrupted(received[0])  # nothing trained, nothing saved: the run folder goes
        return result

    def learn(self, model: BaseAlgorithm) -> None:
        # A stop after training (rl_zoo3 catches those during it), while the envs close: noted, the model is saved next
        with raising_interrupted(self._note_stop), contextlib.suppress(Interrupted):
            super().learn(model)

    def save_trained_model(self, model: BaseAlgorithm) -> None:
        with signals_held() as received:  # a signal now would cut the save short: it waits until the model is saved
            super().save_trained_model(model)
        stop = self.interrupted or next(iter(received), None)
        if stop:
            raise Interrupted(stop, f"the model is saved in {self.save_path}")  # exit status 128 + signal

    def hyperparameters_optimization(self) -> None:
        # rl_zoo3 catches the KeyboardInterrupt during a trial, then reports as if the study had ended
        with raising_interrupted(self._note_stop):
            try:
                super().hyperparameters_optimization()
            except (Interrupted, ValueError):
                # A stop outside the trials (rl_zoo3 catches those inside), or optuna's "No trials are completed yet"
                if self.interrupted is None:
                    raise
        if self.interrupted is not None:
            raise Interrupted(self.interrupted, "the study keeps the trials that finished")
