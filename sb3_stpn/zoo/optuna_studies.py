"""
Optuna studies that several workers share, on a journal file or a database, without crashing or repeating each other.

- The study is created before the first trial, a PostgreSQL database's tables under a lock, so that workers started
  together never crash; a missing driver, an unreachable database or a damaged journal is one error line.
- Workers started alike never repeat each other's trials: each trial's sampler is seeded from ``(seed, trial number)``.
- A database that goes away during a trial fails that trial in one line once it is back, and the study goes on; the
  trials a killed worker of this host left RUNNING are failed when the next worker starts.
- ``--trial-id`` is the trial's number, 0 included (rl_zoo3 tests the id for truth, then takes it as a list index); a
  trial the study lacks, or one that never finished, is one error line.
"""

import functools
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import sqlalchemy
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, RandomSampler, TPESampler
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState
from rl_zoo3.exp_manager import ExperimentManager
from rl_zoo3.hyperparams_opt import HYPERPARAMS_CONVERTER

from sb3_stpn.zoo.errors import ZooError
from sb3_stpn.zoo.saving import process_alive

# The PostgreSQL advisory lock workers take in turn to create Optuna's tables (any constant, the same in every worker)
_SCHEMA_LOCK_KEY = 0x5B3_57F0


def open_storage(storage: str) -> optuna.storages.BaseStorage:
    """
    The Optuna storage ``--storage`` names: a journal file (``.log``, as rl_zoo3 reads it) or a database URL, whose
    tables are created race-free on PostgreSQL; a missing driver or an unusable database is a :class:`ZooError`.
    """
    if storage.endswith(".log"):
        Path(storage).parent.mkdir(parents=True, exist_ok=True)
        check_journal(Path(storage))
        return JournalStorage(JournalFileBackend(storage))
    shown = shown_storage(storage)
    try:
        engine = sqlalchemy.create_engine(storage)
    except sqlalchemy.exc.ArgumentError as error:
        raise ZooError(
            f"--storage {storage} is neither a journal file (NAME.log) nor a database URL; pass one, e.g. "
            "postgresql://USER:PASSWORD@HOST/DATABASE"
        ) from error
    except ImportError as error:  # SQLAlchemy imports the URL's driver here
        raise ZooError(
            f"--storage {shown}: the database driver is not installed ({error}); for postgresql:// URLs "
            'pip install "sb3-stpn[postgres]"'
        ) from error
    try:
        with _schema_lock(engine):
            return optuna.storages.RDBStorage(storage)
    except sqlalchemy.exc.OperationalError as error:  # no server there, connection refused, wrong password, no database
        reason = " ".join(str(error.orig or error).split())
        raise ZooError(
            f"cannot open the Optuna database {shown} ({reason}); start the server or fix the URL's host, port, user, "
            "password or database name"
        ) from error
    finally:
        engine.dispose()


# What a database storage raises when its server is gone: SQLAlchemy's errors, optuna's wrapping of them
DATABASE_ERRORS = (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError)
DATABASE_WAIT_S = 120.0  # how long a worker waits for its database to come back
DATABASE_POLL_S = 1.0
# What a worker that lost its database says to do: fail_trials_of_dead_workers cleans up after it
_DATABASE_RESTART = "start it again and rerun: a worker of this host marks the trial it left RUNNING failed as it starts"


def _first_line(error: BaseException) -> str:
    return " ".join(str(error).split("\n")[0].split())[:200]


def wait_for_storage(study: optuna.Study, storage: str | None) -> None:
    """Return once ``study``'s storage answers; a :class:`ZooError` if it has not within ``DATABASE_WAIT_S``."""
    deadline = time.monotonic() + DATABASE_WAIT_S
    while True:
        try:
            study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
            return
        except DATABASE_ERRORS as error:
            if time.monotonic() > deadline:
                raise ZooError(
                    f"the Optuna database {shown_storage(storage or '')} has been unreachable for {DATABASE_WAIT_S:g} s "
                    f"({_first_line(error)}); {_DATABASE_RESTART}"
                ) from error
            time.sleep(DATABASE_POLL_S)


def _database_lost(error: BaseException, storage: str | None) -> ZooError | None:
    """The one-line error for a failure whose causes include a lost database (optuna's own cascade included)."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, ZooError):
            return seen
        if isinstance(seen, DATABASE_ERRORS):
            return ZooError(
                f"lost the Optuna database {shown_storage(storage or '')} ({_first_line(seen)}); {_DATABASE_RESTART}"
            )
        seen = seen.__cause__ or seen.__context__
    return None


WORKER_ATTR = "worker"  # the user attribute naming the process that runs a trial: "<host>:<pid>"


def _worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def fail_trials_of_dead_workers(study: optuna.Study) -> None:
    """
    Mark FAIL the RUNNING trials whose worker, a process of this host, is gone (killed with SIGKILL or by the OOM
    killer): they would stay RUNNING for ever, and ``--max-total-trials`` counts them. Optuna's heartbeat would do
    this for databases, but rl_zoo3 opens the storage itself, without one; the journal has none. A trial of a worker
    on another host is left as it is: whether that worker lives cannot be told from here.
    """
    host = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=[TrialState.RUNNING]):
        worker_host, _, pid = str(trial.user_attrs.get(WORKER_ATTR, "")).rpartition(":")
        if worker_host == host and pid.isdigit() and not process_alive(int(pid)):
            study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            print(f"Trial {trial.number} failed: its worker (process {pid} of this host) is gone", file=sys.stderr)


def check_journal(path: Path) -> None:
    """
    Refuse an Optuna journal with a damaged line (a worker killed while writing it, a full disk), in one line that
    says how to repair it: optuna then glues the next record onto the partial line and fails on a later read.
    """
    if not path.is_file():
        return
    lines = path.read_bytes().split(b"\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            json.loads(line)
            complete = number < len(lines)  # the last piece of a file that does not end in a newline is cut short
        except ValueError:
            complete = False
        if not complete:
            raise ZooError(
                f"the Optuna journal {path} has a damaged line {number} (a worker killed while writing it, or a full "
                f"disk); delete that line (sed -i '{number}d' {path}) and rerun, or pass another --storage"
            )


def shown_storage(storage: str) -> str:
    """``--storage`` as messages show it: a database URL's password hidden."""
    try:
        return sqlalchemy.engine.make_url(storage).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:  # a journal file
        return storage


@contextmanager
def _schema_lock(engine: sqlalchemy.engine.Engine) -> Iterator[None]:
    """
    On PostgreSQL, hold a server-wide advisory lock while Optuna creates its tables: workers started together on an
    empty database otherwise race in CREATE TABLE, and one crashes (UniqueViolation on pg_type_typname_nsp_index).
    """
    if engine.dialect.name != "postgresql":
        yield
        return
    with engine.connect() as connection:
        connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": _SCHEMA_LOCK_KEY})
        try:
            yield
        finally:
            connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": _SCHEMA_LOCK_KEY})


class TrialSeededSampler(BaseSampler):
    """
    Samples each trial with its own sampler, seeded from ``(seed, trial number)``.

    Optuna workers started alike get the same ``--seed``, so samplers seeded with it propose the same trials in every
    worker. The storage hands out trial numbers, unique in a study: seeding each trial from its number makes the
    workers' trials differ, while one process with a fixed seed proposes the same trials every time.
    """

    def __init__(self, make_sampler: Callable[..., BaseSampler], seed: int) -> None:
        """``make_sampler(seed=...)`` makes a trial's sampler (picklable, as rl_zoo3 pickles the study)."""
        self.make_sampler = make_sampler
        self.seed = seed
        self._samplers: dict[int, BaseSampler] = {}

    def _sampler(self, trial: FrozenTrial) -> BaseSampler:
        if trial.number not in self._samplers:
            seed = np.random.SeedSequence([self.seed, trial.number]).generate_state(1)[0]
            self._samplers[trial.number] = self.make_sampler(seed=int(seed))
        return self._samplers[trial.number]

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._sampler(trial).before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self._sampler(trial).infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self._sampler(trial).sample_relative(study, trial, search_space)

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        return self._sampler(trial).sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None) -> None:
        sampler = self._sampler(trial)
        del self._samplers[trial.number]
        sampler.after_trial(study, trial, state, values)


def load_study(storage: str, study_name: str) -> optuna.Study:
    """The existing study ``study_name`` in ``storage``; a missing journal file or study is a :class:`ZooError`."""
    if storage.endswith(".log") and not Path(storage).is_file():
        raise ZooError(f"no Optuna journal {storage}; run --optimize first, or pass the study's --storage")
    try:
        return optuna.load_study(storage=open_storage(storage), study_name=study_name)
    except KeyError as error:  # Optuna's "Record does not exist."
        names = ", ".join(optuna.get_all_study_names(storage=open_storage(storage))) or "none"
        raise ZooError(
            f"no study {study_name} in {shown_storage(storage)} (studies there: {names}); pass one with --study-name"
        ) from error


class SharedStudies(ExperimentManager):
    """rl_zoo3's ExperimentManager, its studies shared by workers that never crash together or repeat each other."""

    def read_hyperparameters(self) -> tuple[dict[str, Any], dict[str, Any]]:
        # rl_zoo3 reads the --trial-id trial only for a truthy id (never trial 0): it is read here instead, and rl_zoo3
        # gets one override, the trial's hyperparameters then --hyperparams
        trial_id, custom_hyperparams = self.trial_id, self.custom_hyperparams
        try:
            self.custom_hyperparams = self._overrides(self._trial_hyperparameters(), custom_hyperparams or {}) or None
            self.trial_id = None
            return super().read_hyperparameters()
        finally:
            self.trial_id, self.custom_hyperparams = trial_id, custom_hyperparams

    def _overrides(self, trial: dict[str, Any], custom: dict[str, Any]) -> dict[str, Any]:
        """What goes on top of the config entry: the ``--trial-id`` trial's hyperparameters, then ``--hyperparams``."""
        return {**trial, **custom}

    def _trial_hyperparameters(self) -> dict[str, Any]:
        """The hyperparameters of the ``--trial-id`` trial, none without one."""
        if self.trial_id is None:
            return {}
        if self.storage is None or self.study_name is None:
            raise ZooError(f"--trial-id {self.trial_id} needs the study's --storage and --study-name; pass both")
        print(f"Loading trial {self.trial_id} of the Optuna study {self.study_name}")
        return self.load_trial(self.storage, self.study_name, self.trial_id)

    def load_trial(self, storage: str, study_name: str, trial_id: int | None = None, convert: bool = True) -> dict[str, Any]:
        """
        The hyperparameters of trial ``trial_id`` (by default the best trial; ``convert=False``: its raw Optuna
        parameters). The id is the trial's number, where rl_zoo3 takes it as an index into the study's trials; a trial
        the study lacks, or one that never finished, is a :class:`ZooError`.
        """
        study = load_study(storage, study_name)
        trials = {trial.number: trial for trial in study.get_trials(deepcopy=False)}
        if trial_id is None:
            trial = study.best_trial
        elif trial_id not in trials:
            have = f"trials 0-{len(trials) - 1}" if trials else "no trials yet"
            where = f"the study {study_name} in {shown_storage(storage)}"
            raise ZooError(f"{where} has no trial {trial_id} (it has {have}); pass one of those")
        else:
            trial = trials[trial_id]
        if trial.state not in (TrialState.COMPLETE, TrialState.PRUNED):
            raise ZooError(f"trial {trial.number} of the study {study_name} is {trial.state.name}; pass a finished trial")
        return HYPERPARAMS_CONVERTER[self.algo](trial.params) if convert else trial.params

    def hyperparameters_optimization(self) -> None:
        if self.storage is not None and self.study_name is not None:
            # Create the study (a database's tables too) before rl_zoo3 opens it: workers started together never
            # race in creating them, and an unusable storage is one error line
            study = optuna.create_study(
                storage=open_storage(self.storage), study_name=self.study_name, direction="maximize", load_if_exists=True
            )
            fail_trials_of_dead_workers(study)
        try:
            super().hyperparameters_optimization()
        except Exception as error:
            if (lost := _database_lost(error, self.storage)) is None:
                raise
            raise lost from error

    def objective(self, trial: optuna.Trial) -> float:
        """
        rl_zoo3's objective, the trial marked with the worker that runs it (see :func:`fail_trials_of_dead_workers`).

        A database that goes away during the trial (a restart, a network blip) fails the trial in one line once it is
        back, and the study goes on; optuna itself, failing to record the failure, left the trial RUNNING behind a
        cascade of tracebacks. Before a result is handed to optuna, the database is waited for likewise.
        """
        try:
            trial.set_user_attr(WORKER_ATTR, _worker_id())
            value = super().objective(trial)
        except DATABASE_ERRORS as error:
            wait_for_storage(trial.study, self.storage)
            print(
                f"Trial {trial.number} failed: the Optuna database went away during it ({_first_line(error)}); it is back, "
                "the study goes on",
                file=sys.stderr,
            )
            return float("nan")  # optuna records a NaN result as a failed trial, and goes on
        wait_for_storage(trial.study, self.storage)
        return value

    def _create_sampler(self, sampler_method: str) -> BaseSampler:
        """rl_zoo3's sampler, one for each trial, seeded from ``(--seed, trial number)`` (see :class:`TrialSeededSampler`)."""
        sampler = super()._create_sampler(sampler_method)
        make_sampler: Callable[..., BaseSampler]
        if isinstance(sampler, TPESampler):  # with rl_zoo3's settings
            make_sampler = functools.partial(TPESampler, n_startup_trials=self.n_startup_trials, multivariate=True)
        elif isinstance(sampler, RandomSampler):
            make_sampler = RandomSampler
        else:
            return sampler  # optunahub's AutoSampler, seeded by rl_zoo3 alone
        return TrialSeededSampler(make_sampler, self.seed)
