"""rl_zoo3's ExperimentManager for the project: its configs, the STPN and GridMaze, on top of generic repairs.

:class:`StpnExperimentManager` is built from subclasses of rl_zoo3's manager that each repair one thing, for any
algorithm: :class:`~sb3_stpn.zoo.run_folder.ClaimedRunFolder` (runs started together never share a folder, and a failed
run leaves none), :class:`~sb3_stpn.zoo.optuna_studies.SharedStudies` (Optuna workers that never crash together or
repeat each other; ``--trial-id 0``), :class:`~sb3_stpn.zoo.signals.StopOnSignals` (Ctrl-C and SIGTERM save the model,
then exit 128 + signal), :class:`~sb3_stpn.zoo.checkpoints.CheckpointsWithStatistics` (a checkpoint continues with its
own VecNormalize statistics) and :class:`~sb3_stpn.zoo.finite.FiniteEnvs` (NaN or inf stops the run). On top of them:

- ``policy: auto`` in a config entry picks the algorithm's Cnn/MultiInput/Mlp policy from the
  environment's observation space, so the ``default`` entry fits any environment.
- Hyperparameters, policy kwargs and ``stpn_kwargs`` are checked by name before anything is
  built, so a typo gives one line naming the key instead of a traceback from deep inside SB3.
- GridMaze ids step their ``n_envs`` mazes in one vectorised :class:`~sb3_stpn.envs.GridMazeVecEnv`, and
  are evaluated (during training and in studies) with the sampled policy, as rl_zoo3 does for Atari and MiniGrid.
- Recurrent PPO runs (``ppo_stpn``, ``ppo_lstm``) log energy and plasticity diagnostics
  (:class:`~sb3_stpn.common.callbacks.StpnDiagnosticsCallback`).
- ``policy: auto`` also adds :func:`~sb3_stpn.zoo.wrappers.fit_observation_to_sb3` to the env
  wrappers: it drops Dict keys SB3 cannot take (a Text mission) and flattens images too small
  for NatureCNN, so that the ``default`` entry fits envs such as MiniGrid's.
- Errors SB3 raises while the run is set up (e.g. ``n_steps: -5``), and a config that does not read, become one line
  naming the fix; a diverged STPN stops the run with one line naming the last intact checkpoint.
- A ``policy_kwargs`` override (``--hyperparams``) is merged into the entry's, or the ``--trial-id`` trial's, instead
  of replacing it; the ``ppo_stpn``/``ppo_lstm`` search spaces merge their options into the entry's likewise.
"""

import contextlib
import difflib
import inspect
import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import optuna
import rl_zoo3.exp_manager
import yaml
from gymnasium import spaces
from rl_zoo3.exp_manager import ExperimentManager
from rl_zoo3.hyperparams_opt import HYPERPARAMS_CONVERTER
from rl_zoo3.utils import ALGOS
from sb3_contrib import RecurrentPPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.preprocessing import is_image_space
from stable_baselines3.common.vec_env import VecEnv

from sb3_stpn.common.callbacks import StpnDiagnosticsCallback
from sb3_stpn.common.stpn import STPN
from sb3_stpn.common.utils import check_positive_int
from sb3_stpn.envs import GRID_MAZE_IDS, make_grid_maze_vec_env
from sb3_stpn.ops.stpn import DivergedStateError
from sb3_stpn.zoo.checkpoints import CheckpointsWithStatistics
from sb3_stpn.zoo.errors import ZooError
from sb3_stpn.zoo.finite import FiniteEnvs
from sb3_stpn.zoo.hyperparams_opt import merge_policy_kwargs, tuning_entry
from sb3_stpn.zoo.optuna_studies import SharedStudies
from sb3_stpn.zoo.run_folder import ClaimedRunFolder
from sb3_stpn.zoo.signals import StopOnSignals

AUTO_POLICY = "auto"
# The env wrapper ``policy: auto`` adds (rl_zoo3 imports wrappers by name, also in enjoy from the saved config)
FIT_OBSERVATION_WRAPPER = "sb3_stpn.zoo.wrappers.fit_observation_to_sb3"
# Hyperparameters that only make sense as positive integers (rl_zoo3's and the on-policy algorithms')
POSITIVE_INTEGERS = ("n_envs", "n_timesteps", "n_steps", "batch_size", "n_epochs", "sequence_length")
# The project's configs, <algo>.yml (package data: a checkout and an installed wheel read the same folder)
CONFIG_DIR = Path(__file__).resolve().parents[1] / "zoo_configs"


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


# Where bases override one method (learn, hyperparameters_optimization), each wraps those after it: a failure reaches
# the run-folder clean-up after the study's handling and the signals' (a stop that saved what it could is no failure)
class StpnExperimentManager(ClaimedRunFolder, SharedStudies, StopOnSignals, CheckpointsWithStatistics, FiniteEnvs):
    """rl_zoo3's ExperimentManager with the repairs of its bases, plus ``policy: auto``, name checks and GridMaze."""

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

    def read_hyperparameters(self) -> tuple[dict[str, Any], dict[str, Any]]:
        try:
            hyperparams, saved_hyperparams = super().read_hyperparameters()
        except ZooError:
            raise
        except Exception as error:  # a Python config (file or module) fails in many ways
            raise ZooError(
                f"cannot read hyperparameters from -conf {self.config} ({type(error).__name__}: {error}); pass a .yml "
                "file, a .py file or an importable module defining a dict `hyperparams` with an entry for the env"
            ) from error
        if hyperparams.get("policy", AUTO_POLICY) == AUTO_POLICY:
            for entry in (hyperparams, saved_hyperparams):  # saved too: enjoy wraps its env from the saved config
                wrappers = entry.get("env_wrapper") or []
                wrappers = [wrappers] if isinstance(wrappers, (str, dict)) else wrappers
                entry["env_wrapper"] = [*wrappers, FIT_OBSERVATION_WRAPPER]
        return hyperparams, saved_hyperparams

    def _overrides(self, trial: dict[str, Any], custom: dict[str, Any]) -> dict[str, Any]:
        """The trial's hyperparameters, then ``--hyperparams``, whose ``policy_kwargs`` merge into the trial's or the
        entry's (rl_zoo3 lets them replace the entry's)."""
        overrides = super()._overrides(trial, custom)
        if "policy_kwargs" in custom:
            base = trial["policy_kwargs"] if "policy_kwargs" in trial else self._entry_policy_kwargs()
            overrides["policy_kwargs"] = merge_policy_kwargs(base, self._policy_kwargs_dict(custom["policy_kwargs"]))
        return overrides

    def _entry_policy_kwargs(self) -> dict[str, Any]:
        """The config entry's own ``policy_kwargs`` (without trial or override), as a dict."""
        overrides = self.trial_id, self.custom_hyperparams
        self.trial_id, self.custom_hyperparams = None, None
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # rl_zoo3 prints what it read; the real read follows
                entry, _ = ExperimentManager.read_hyperparameters(self)  # the entry alone, past every override
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
            if hyperparams.get(name) is None:
                continue
            try:  # YAML's 1e5 and 32.0 are floats; SB3 wants ints
                hyperparams[name] = check_positive_int(hyperparams[name], name, whole_floats=True)
            except ValueError as error:
                raise ZooError(f"{error}; {self._fix}") from None
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
        if issubclass(ALGOS[self.algo], RecurrentPPO):
            # Energy (STPN and LSTM alike) and plasticity diagnostics on by default. First in the list:
            # it reads the actor's last forward at each step, which must be the rollout's, not an evaluation's
            self.callbacks.insert(0, StpnDiagnosticsCallback())

    def create_envs(self, n_envs: int, eval_env: bool = False, no_log: bool = False) -> VecEnv:
        kwargs = self.eval_env_kwargs if eval_env else self.env_kwargs
        try:
            if self.env_name.gym_id in GRID_MAZE_IDS and self.env_wrapper is None:
                return self._create_grid_maze_envs(n_envs, eval_env, no_log)
            return super().create_envs(n_envs, eval_env, no_log)
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
        # The ppo_stpn/ppo_lstm spaces tune the memory on top of the entry: they merge into its policy_kwargs
        with tuning_entry(self._hyperparams.get("policy_kwargs") or {}):
            return super().objective(trial)

    def load_trial(self, storage: str, study_name: str, trial_id: int | None = None, convert: bool = True) -> dict[str, Any]:
        """The trial's hyperparameters, its options merged into the entry's policy_kwargs as when it ran."""
        params = super().load_trial(storage, study_name, trial_id, convert=False)
        if not convert:
            return params
        with tuning_entry(self._entry_policy_kwargs()):
            return HYPERPARAMS_CONVERTER[self.algo](params)
