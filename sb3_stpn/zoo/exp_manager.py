"""rl_zoo3's ExperimentManager with what STPN runs need on top.

- ``policy: auto`` in a config entry picks the algorithm's Cnn/MultiInput/Mlp policy from the
  environment's observation space, so the ``default`` entry fits any environment.
- Hyperparameters, policy kwargs and ``stpn_kwargs`` are checked by name before anything is
  built, so a typo gives one line naming the key instead of a traceback from deep inside SB3.
- Every environment is wrapped to stop on NaN/inf observations or actions instead of silently
  training on them.
- GridMaze ids step their ``n_envs`` mazes in one vectorised :class:`~sb3_stpn.envs.GridMazeVecEnv`, and
  are evaluated (during training and in studies) with the sampled policy, as rl_zoo3 does for Atari and MiniGrid.
- Recurrent PPO runs (``ppo_stpn``, ``ppo_lstm``) log energy and plasticity diagnostics
  (:class:`~sb3_stpn.common.callbacks.StpnDiagnosticsCallback`).
- ``policy: auto`` also adds :func:`~sb3_stpn.zoo.wrappers.fit_observation_to_sb3` to the env
  wrappers: it drops Dict keys SB3 cannot take (a Text mission) and flattens images too small
  for NatureCNN, so that the ``default`` entry fits envs such as MiniGrid's.
- Errors SB3 raises while the run is set up (e.g. ``n_steps: -5``) become one line naming the fix.
- A run that fails with any error removes its own fresh, model-less run folder; a run stopped by
  Ctrl-C or SIGTERM saves its model, then re-raises the interrupt so that the command exits 130 or 143.
- Each run claims its folder atomically, so that runs started together never share one.
- A ``policy_kwargs`` override (``--hyperparams``) is merged into the entry's instead of replacing it, and
  ``--trial-id 0`` is honoured (rl_zoo3 tests the id for truth); a trial the study lacks is one error line.
- Optuna studies are created before the first trial, a PostgreSQL database's tables under a lock, so that workers
  started together never crash; a missing driver or an unreachable database is one error line. Workers started
  alike never repeat each other's trials: each trial's sampler is seeded from ``(seed, trial number)``.
"""

import contextlib
import difflib
import functools
import inspect
import io
import json
import os
import socket
import sys
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import optuna
import rl_zoo3.exp_manager
import sqlalchemy
import yaml
from gymnasium import spaces
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, RandomSampler, TPESampler
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState
from rl_zoo3.exp_manager import ExperimentManager
from rl_zoo3.hyperparams_opt import HYPERPARAMS_CONVERTER
from rl_zoo3.utils import ALGOS
from sb3_contrib import RecurrentPPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback, CheckpointCallback
from stable_baselines3.common.preprocessing import is_image_space
from stable_baselines3.common.vec_env import VecCheckNan, VecEnv, VecNormalize

from sb3_stpn.common.callbacks import StpnDiagnosticsCallback
from sb3_stpn.common.stpn import STPN
from sb3_stpn.envs import GRID_MAZE_IDS, make_grid_maze_vec_env
from sb3_stpn.ops.stpn import DivergedStateError
from sb3_stpn.zoo.errors import ZooError
from sb3_stpn.zoo.hyperparams_opt import merge_policy_kwargs, tuning_entry
from sb3_stpn.zoo.run_folder import ClaimedRunFolder
from sb3_stpn.zoo.saving import checkpoint_vec_normalize_path, load_problem, process_alive
from sb3_stpn.zoo.signals import (
    Interrupted,  # noqa: F401  (benchmarks/learning.py's import, until its split)
    StopOnSignals,
    raising_interrupted,  # noqa: F401  (likewise)
)

AUTO_POLICY = "auto"
# The env wrapper ``policy: auto`` adds (rl_zoo3 imports wrappers by name, also in enjoy from the saved config)
FIT_OBSERVATION_WRAPPER = "sb3_stpn.zoo.wrappers.fit_observation_to_sb3"
# Hyperparameters that only make sense as positive integers (rl_zoo3's and the on-policy algorithms')
POSITIVE_INTEGERS = ("n_envs", "n_timesteps", "n_steps", "batch_size", "n_epochs", "sequence_length")
# The project's configs, <algo>.yml (package data: a checkout and an installed wheel read the same folder)
CONFIG_DIR = Path(__file__).resolve().parents[1] / "zoo_configs"
# The PostgreSQL advisory lock workers take in turn to create Optuna's tables (any constant, the same in every worker)
_SCHEMA_LOCK_KEY = 0x5B3_57F0


class NonFiniteError(ZooError, ValueError):
    """NaN or inf in what the environment returned or the model sent (a ValueError, so Optuna prunes the trial)."""


class VecCheckFinite(VecCheckNan):
    """SB3's VecCheckNan, always raising, with a one-line :class:`NonFiniteError`."""

    _ORIGINS = {"reset": "an environment reset", "step_wait": "an environment step", "step_async": "the model's actions"}

    def __init__(self, venv: VecEnv):
        super().__init__(venv, raise_exception=True)

    def _check_val(self, event: str, **kwargs: Any) -> None:
        try:
            super()._check_val(event, **kwargs)
        except ValueError as error:
            found = str(error).split(".\r\n")[0]
            raise NonFiniteError(
                f"{found} from {self._ORIGINS[event]}; fix the environment or add an env_wrapper that cleans its "
                "observations (or lower learning_rate if the model diverged); training stopped"
            ) from error


def default_config(algo: str) -> Path:
    """The hyperparameter file of ``algo``: the project's ``zoo_configs/<algo>.yml``, else rl_zoo3's own."""
    ours = CONFIG_DIR / f"{algo}.yml"
    zoo = Path(inspect.getfile(ExperimentManager)).parent / "hyperparams" / f"{algo}.yml"
    for path in (ours, zoo):
        if path.is_file():
            return path
    raise ZooError(f"no hyperparameter file for --algo {algo}: write {ours} or pass -conf FILE")


def load_config_entry(config: Path, env_id: str, is_atari: bool) -> dict[str, Any]:
    """Read ``config`` and return the entry rl_zoo3 will use for ``env_id`` (its own, ``atari`` or ``default``)."""
    entries = _read_config(config)
    return entries[config_entry_name(entries, config, env_id, is_atari)]


def config_entry_name(entries: dict[str, Any], config: Path, env_id: str, is_atari: bool) -> str:
    """Which entry of ``entries`` (read from ``config``) rl_zoo3 uses for ``env_id``: its own, ``atari`` or ``default``."""
    names = [env_id, "atari"] if is_atari else [env_id]
    for name in [*names, "default"]:
        if name in entries:
            if not isinstance(entries[name], dict):
                raise ZooError(f"entry {name!r} of {config} must be a dict of hyperparameters; fix the file")
            return name
    raise ZooError(f"no entry for {env_id} and no 'default' entry in {config}; add one")


def _read_config(config: Path) -> dict[str, Any]:
    """The entries of the YAML config ``config``; a missing or malformed file is a :class:`ZooError`."""
    try:
        entries = yaml.safe_load(config.read_text())
    except OSError as error:
        raise ZooError(f"cannot read the config {config} ({error.strerror}); pass an existing file with -conf") from error
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(error, "problem", None) or "invalid YAML"
        raise ZooError(f"malformed YAML in {config}{where}: {problem}; fix the file") from error
    if not isinstance(entries, dict):
        raise ZooError(f"{config} must map environment ids to hyperparameter dicts; fix the file")
    return entries


def auto_policy(algo_class: type[BaseAlgorithm], observation_space: spaces.Space) -> str:
    """The algorithm's policy alias for this observation space: Cnn for images, MultiInput for dicts, else Mlp."""
    if isinstance(observation_space, spaces.Dict):
        prefix = "MultiInput"
    elif is_image_space(observation_space):
        prefix = "Cnn"
    else:
        prefix = "Mlp"
    return next(name for name in algo_class.policy_aliases if name.startswith(prefix))


def accepted_kwargs(cls: type) -> set[str]:
    """Keyword names ``cls(...)`` accepts, following ``**kwargs`` up the class hierarchy."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        parameters = inspect.signature(vars(klass)["__init__"]).parameters.values()
        names.update(p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
        if not any(p.kind == p.VAR_KEYWORD for p in parameters):
            break
    return names - {"self"}


def _check_names(given: dict[str, Any], accepted: set[str], what: str, fix: str) -> None:
    for name in given:
        if name not in accepted:
            close = difflib.get_close_matches(name, accepted, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ZooError(f"unknown {what} {name!r}{hint}; {fix}")


class StpnExperimentManager(ClaimedRunFolder, StopOnSignals):
    """rl_zoo3's ExperimentManager, plus ``policy: auto``, name checks, NaN checks and cleanup on failure."""

    @property
    def _fix(self) -> str:
        entry = self.env_name.gym_id
        if str(self.config).endswith((".yml", ".yaml")):  # the entry rl_zoo3 took: the env's own, atari or default
            with contextlib.suppress(ZooError):
                entries = _read_config(Path(self.config))
                entry = config_entry_name(
                    entries, Path(self.config), self.env_name.gym_id, self.is_atari(self.env_name.gym_id)
                )
        return f"fix the {entry} entry of {self.config} or the --hyperparams override"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.env_name.gym_id in GRID_MAZE_IDS:
            # The paper scores the maze with the sampled policy; a near-uniform deterministic one walks into a
            # wall for the whole episode (return 0), which hides learning and gives a study nothing to rank
            self.deterministic_eval = False

    def setup_experiment(self) -> tuple[BaseAlgorithm, dict[str, Any]] | None:
        try:
            return super().setup_experiment()
        except ZooError:
            raise
        except (AssertionError, ValueError, RuntimeError, TypeError) as error:  # SB3's and torch's argument checks
            message = " ".join(f"{type(error).__name__}: {error}".split())
            raise ZooError(f"cannot set up {self.algo} on {self.env_name.gym_id} ({message}); {self._fix}") from error

    def learn(self, model: BaseAlgorithm) -> None:
        try:
            super().learn(model)
        except DivergedStateError as error:
            checkpoints = sorted(Path(self.save_path).glob("rl_model_*_steps.zip"), key=os.path.getmtime)
            kept = f"the last checkpoint, {checkpoints[-1]}, is intact" if checkpoints else "no checkpoint was saved"
            raise ZooError(f"training diverged at step {model.num_timesteps}: {error}; {kept}") from error

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

    def read_hyperparameters(self) -> tuple[dict[str, Any], dict[str, Any]]:
        # rl_zoo3 loads a --trial-id only when the id is truthy (never trial 0), and lets a policy_kwargs override replace
        # the entry's: it gets one override instead, the trial's hyperparameters then --hyperparams, policy_kwargs merged
        trial_id, custom_hyperparams = self.trial_id, self.custom_hyperparams
        try:
            self.custom_hyperparams = self._overrides()
            self.trial_id = None
            hyperparams, saved_hyperparams = super().read_hyperparameters()
        except ZooError:
            raise
        except Exception as error:  # a Python config (file or module) fails in many ways
            raise ZooError(
                f"cannot read hyperparameters from -conf {self.config} ({type(error).__name__}: {error}); pass a .yml "
                "file, a .py file or an importable module defining a dict `hyperparams` with an entry for the env"
            ) from error
        finally:
            self.trial_id, self.custom_hyperparams = trial_id, custom_hyperparams
        if hyperparams.get("policy", AUTO_POLICY) == AUTO_POLICY:
            for entry in (hyperparams, saved_hyperparams):  # saved too: enjoy wraps its env from the saved config
                wrappers = entry.get("env_wrapper") or []
                wrappers = [wrappers] if isinstance(wrappers, (str, dict)) else wrappers
                entry["env_wrapper"] = [*wrappers, FIT_OBSERVATION_WRAPPER]
        return hyperparams, saved_hyperparams

    def _overrides(self) -> dict[str, Any] | None:
        """What goes on top of the config entry: the --trial-id trial's hyperparameters, then --hyperparams."""
        custom = self.custom_hyperparams or {}
        trial: dict[str, Any] = {}
        if self.trial_id is not None:
            if self.storage is None or self.study_name is None:
                raise ZooError(f"--trial-id {self.trial_id} needs the study's --storage and --study-name; pass both")
            print(f"Loading trial {self.trial_id} of the Optuna study {self.study_name}")
            trial = self.load_trial(self.storage, self.study_name, self.trial_id)
        overrides = {**trial, **custom}
        if "policy_kwargs" in custom:
            base = trial["policy_kwargs"] if "policy_kwargs" in trial else self._entry_policy_kwargs()
            overrides["policy_kwargs"] = merge_policy_kwargs(base, self._policy_kwargs_dict(custom["policy_kwargs"]))
        return overrides or None

    def _entry_policy_kwargs(self) -> dict[str, Any]:
        """The config entry's own ``policy_kwargs`` (without trial or override), as a dict."""
        overrides = self.trial_id, self.custom_hyperparams
        self.trial_id, self.custom_hyperparams = None, None
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # rl_zoo3 prints what it read; the real read follows
                entry, _ = super().read_hyperparameters()
        finally:
            self.trial_id, self.custom_hyperparams = overrides
        return self._policy_kwargs_dict(entry.get("policy_kwargs"))

    def _policy_kwargs_dict(self, policy_kwargs: Any) -> dict[str, Any]:
        """``policy_kwargs`` as a dict: a config's ``dict(...)`` string evaluated as rl_zoo3 evaluates it."""
        if isinstance(policy_kwargs, str):
            policy_kwargs = eval(policy_kwargs, vars(rl_zoo3.exp_manager))
        if not isinstance(policy_kwargs, dict | None):
            raise ZooError(f"policy_kwargs must be a dict, got {policy_kwargs!r}; {self._fix}")
        return policy_kwargs or {}

    def _preprocess_hyperparams(
        self, hyperparams: dict[str, Any]
    ) -> tuple[dict[str, Any], Callable | None, list[BaseCallback], Callable | None]:
        if self.n_timesteps <= 0 and "n_timesteps" not in hyperparams:
            raise ZooError(f"no n_timesteps in the {self.env_name.gym_id} entry of {self.config}; add it or pass -n STEPS")
        for name in POSITIVE_INTEGERS:
            value = hyperparams.get(name)
            if value is None:
                continue
            if isinstance(value, bool) or not (isinstance(value, (int, float)) and value >= 1 and value == int(value)):
                raise ZooError(f"{name} must be a positive integer, got {value!r}; {self._fix}")
            hyperparams[name] = int(value)  # YAML's 1e5 and 32.0 are floats; SB3 wants ints
        hyperparams, env_wrapper, callbacks, vec_env_wrapper = super()._preprocess_hyperparams(hyperparams)
        self._check_hyperparameters(hyperparams)
        return hyperparams, env_wrapper, callbacks, vec_env_wrapper

    def _check_hyperparameters(self, hyperparams: dict[str, Any]) -> None:
        """Check model arguments, policy kwargs and ``stpn_kwargs`` by name before anything is built."""
        algo_class = ALGOS[self.algo]
        _check_names(hyperparams, accepted_kwargs(algo_class), f"hyperparameter for {algo_class.__name__}", self._fix)
        policy = hyperparams.get("policy", AUTO_POLICY)
        if isinstance(policy, str):
            if policy == AUTO_POLICY:
                policy = auto_policy(algo_class, spaces.Box(0, 1))  # same kwargs as the Cnn/MultiInput variants
            elif policy not in algo_class.policy_aliases:
                aliases = ", ".join([*algo_class.policy_aliases, AUTO_POLICY])
                raise ZooError(f"unknown policy {policy!r} for {algo_class.__name__} (use one of {aliases}); {self._fix}")
            policy = algo_class.policy_aliases[policy]
        policy_kwargs = hyperparams.get("policy_kwargs") or {}
        if not isinstance(policy_kwargs, dict):
            raise ZooError(f"policy_kwargs must be a dict, got {policy_kwargs!r}; {self._fix}")
        _check_names(policy_kwargs, accepted_kwargs(policy), f"policy kwarg for {policy.__name__}", self._fix)
        _check_names(policy_kwargs.get("stpn_kwargs") or {}, accepted_kwargs(STPN), "stpn_kwargs key", self._fix)

    def _preprocess_action_noise(
        self, hyperparams: dict[str, Any], saved_hyperparams: dict[str, Any], env: VecEnv
    ) -> dict[str, Any]:
        # The first hook that sees the environment before the model is built: resolve ``policy: auto`` here
        hyperparams = super()._preprocess_action_noise(hyperparams, saved_hyperparams, env)
        if hyperparams.get("policy", AUTO_POLICY) == AUTO_POLICY:
            hyperparams["policy"] = auto_policy(ALGOS[self.algo], env.observation_space)
            print(f"Policy for {env.observation_space}: {hyperparams['policy']}")
        return hyperparams

    def create_callbacks(self) -> None:
        super().create_callbacks()
        for callback in self.callbacks:
            if isinstance(callback, CheckpointCallback):
                # The statistics of each checkpoint with it: the final vecnormalize.pkl exists only after a clean end
                callback.save_vecnormalize = True
        if issubclass(ALGOS[self.algo], RecurrentPPO):
            # Energy (STPN and LSTM alike) and plasticity diagnostics on by default. First in the list:
            # it reads the actor's last forward at each step, which must be the rollout's, not an evaluation's
            self.callbacks.insert(0, StpnDiagnosticsCallback())

    def create_envs(self, n_envs: int, eval_env: bool = False, no_log: bool = False) -> VecEnv:
        kwargs = self.eval_env_kwargs if eval_env else self.env_kwargs
        try:
            if self.env_name.gym_id in GRID_MAZE_IDS and self.env_wrapper is None:
                return VecCheckFinite(self._create_grid_maze_envs(n_envs, eval_env, no_log))
            return VecCheckFinite(super().create_envs(n_envs, eval_env, no_log))
        except TypeError as error:
            if not kwargs:
                raise
            flag = "--eval-env-kwargs" if eval_env else "--env-kwargs"
            raise ZooError(
                f"{self.env_name.gym_id} does not take the env kwargs {kwargs} ({' '.join(str(error).split())}); "
                f"fix {flag} or the entry's env_kwargs"
            ) from error

    def _create_grid_maze_envs(self, n_envs: int, eval_env: bool, no_log: bool) -> VecEnv:
        """rl_zoo3's envs, with the ``n_envs`` mazes in one :class:`GridMazeVecEnv` instead of a DummyVecEnv.

        rl_zoo3 hands ``self.vec_env_class`` the per-env constructors, then seeds, normalises and wraps what it returns;
        swapping in a class that builds the vectorised mazes (options from the registered spec and env_kwargs, episodes
        logged to rl_zoo3's monitor file) keeps all of that. (Gym ``env_wrapper``s need single envs: those runs stay on
        rl_zoo3's path.)
        """
        maze_kwargs = {**gym.spec(self.env_name.gym_id).kwargs, **(self.eval_env_kwargs if eval_env else self.env_kwargs)}
        monitor_dir = None if eval_env or no_log else self.save_path

        def grid_maze_vec_env(env_fns: list, **_vec_env_kwargs: Any) -> VecEnv:
            return make_grid_maze_vec_env(len(env_fns), monitor_dir=monitor_dir, **maze_kwargs)

        # rl_zoo3 only calls vec_env_class(env_fns, **vec_env_kwargs): a factory stands in for the class
        vec_env_class, self.vec_env_class = self.vec_env_class, grid_maze_vec_env  # type: ignore[assignment]
        try:
            return super().create_envs(n_envs, eval_env, no_log)
        finally:
            self.vec_env_class = vec_env_class

    def objective(self, trial: optuna.Trial) -> float:
        """
        rl_zoo3's objective, the trial marked with the worker that runs it (see :func:`fail_trials_of_dead_workers`).

        A database that goes away during the trial (a restart, a network blip) fails the trial in one line once it is
        back, and the study goes on; optuna itself, failing to record the failure, left the trial RUNNING behind a
        cascade of tracebacks. Before a result is handed to optuna, the database is waited for likewise.
        """
        try:
            trial.set_user_attr(WORKER_ATTR, _worker_id())
            # The ppo_stpn/ppo_lstm spaces tune the memory on top of the entry: they merge into its policy_kwargs
            with tuning_entry(self._hyperparams.get("policy_kwargs") or {}):
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

    def load_trial(self, storage: str, study_name: str, trial_id: int | None = None, convert: bool = True) -> dict[str, Any]:
        """
        The hyperparameters of trial ``trial_id`` (by default the best trial), its options merged into the entry's
        policy_kwargs as when it ran (``convert=False``: its raw Optuna parameters). A trial the study lacks, or one
        that never finished, is a :class:`ZooError`.
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
        if not convert:
            return trial.params
        with tuning_entry(self._entry_policy_kwargs()):
            return HYPERPARAMS_CONVERTER[self.algo](trial.params)

    def _maybe_normalize(self, env: VecEnv, eval_env: bool) -> VecEnv:
        # -i rl_model_<N>_steps.zip: the statistics saved with that checkpoint, where rl_zoo3 reads the run's final
        # ones (absent after a killed run: normalisation silently restarted from zero)
        own = checkpoint_vec_normalize_path(self.trained_agent) if self.trained_agent else None
        if own is not None and own.is_file():
            print(f"Loading the VecNormalize statistics saved with the checkpoint: {own}")
            env = VecNormalize.load(str(own), env)
            if eval_env:
                env.training = env.norm_reward = False
            return env
        final = Path(self.trained_agent).parent / self.env_name / "vecnormalize.pkl"
        if self.trained_agent and self.normalize and not eval_env:
            if not final.is_file():
                print(
                    f"warning: no VecNormalize statistics saved with {self.trained_agent} (neither {final} nor a "
                    "checkpoint's rl_model_vecnormalize_<N>_steps.pkl): normalisation restarts from zero",
                    file=sys.stderr,
                )
            elif own is not None:
                print(
                    f"warning: no {own.name} saved with {self.trained_agent}; using the run's final statistics",
                    file=sys.stderr,
                )
        return super()._maybe_normalize(env, eval_env)

    def _load_pretrained_agent(self, hyperparams: dict[str, Any], env: VecEnv) -> BaseAlgorithm:
        try:
            return super()._load_pretrained_agent(hyperparams, env)
        except Exception as error:  # a corrupt zip, or one of another algorithm, fails in many ways inside SB3
            raise ZooError(
                f"cannot continue from {self.trained_agent} ({type(error).__name__}: {error}); pass -i the .zip of a "
                f"{self.algo} agent trained on {self.env_name.gym_id} by train.py"
            ) from error


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


def check_trained_agent(path: str) -> None:
    """Reject a ``-i`` path that is not an SB3 model zip before any run folder is made."""
    if not os.path.isfile(path):
        raise ZooError(f"trained agent {path} not found; pass -i the .zip train.py saved (logs/<algo>/<env>_<id>/<env>.zip)")
    if not zipfile.is_zipfile(path) or "data" not in zipfile.ZipFile(path).namelist():
        raise ZooError(f"{path} is not a model saved by SB3 (corrupt or another format); pass -i the .zip saved by train.py")
    problem = load_problem(path)
    if problem is not None:  # e.g. truncated by a save that was killed, yet still a zip
        raise ZooError(f"cannot continue from {path}, which does not load ({problem}); pass -i another checkpoint or run")
