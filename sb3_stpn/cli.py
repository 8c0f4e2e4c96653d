"""``stpn-train`` and ``stpn-enjoy``: rl_zoo3's train and enjoy scripts with ``ppo_stpn`` registered.

rl_zoo3's own parser reads the command line, so every flag, abbreviation and default keeps the zoo's
meaning. On top of the zoo these commands
- default to ``--algo ppo_stpn`` and to the project's ``sb3_stpn/zoo_configs/<algo>.yml`` (``-conf`` overrides),
- default Optuna runs (``--optimize`` and ``--trial-id``) to a shared journal file ``<log folder>/optuna.log``
  and the study name ``<algo>_<env>``, so that several processes started alike work on one study,
- make ``enjoy`` read ``-f logs`` by default and load the latest run that holds a model, print the
  actor memory's energy per step, and record a video with ``--record`` (rl_zoo3's record_video); the
  GridMaze ids replay the sampled policy unless ``--deterministic`` (as rl_zoo3 does for Atari and MiniGrid),
- turn bad input into one ``error:`` line naming the fix and a non-zero exit (130 after Ctrl-C, 143
  after SIGTERM, once the model is saved), and so a core install without the zoo extra, or ``--track`` without wandb.
"""

import argparse
import difflib
import errno
import functools
import importlib
import importlib.util
import os
import pickle
import re
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

import gymnasium as gym
import numpy as np

try:
    import rl_zoo3.import_envs  # registers CartPoleNoVel-v1 & co. and the Atari envs
except ModuleNotFoundError as error:  # a core install: the console scripts import this module first
    raise SystemExit(
        f'error: {error.name} is not installed: stpn-train and stpn-enjoy need the zoo extra; pip install "sb3-stpn[zoo]"'
    ) from error
import rl_zoo3.utils
import torch as th
import yaml
from rl_zoo3.exp_manager import ExperimentManager
from rl_zoo3.utils import ALGOS, StoreDict
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.utils import get_device
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper, VecNormalize
from stable_baselines3.common.vec_env.base_vec_env import VecEnvObs, VecEnvStepReturn

from sb3_stpn.common.energy import ActorEnergyRecorder
from sb3_stpn.common.policies import actor_memory
from sb3_stpn.envs import GRID_MAZE_IDS
from sb3_stpn.ops.stpn import KERNEL_ENV, kernel_choice
from sb3_stpn.ppo_stpn.ppo_stpn import warn_if_cuda_is_missing
from sb3_stpn.zoo import StpnExperimentManager, ZooError
from sb3_stpn.zoo.checkpoints import check_trained_agent, checkpoint_statistics
from sb3_stpn.zoo.exp_manager import default_config, load_config_entry
from sb3_stpn.zoo.patches import atomic_saves, run_enjoy, run_train
from sb3_stpn.zoo.saving import load_problem
from sb3_stpn.zoo.signals import Interrupted, raising_interrupted

DEFAULT_ALGO = "ppo_stpn"
DEFAULT_LOG_FOLDER = "logs"


class ZooArgumentParser(argparse.ArgumentParser):
    """
    The parser an rl_zoo3 script builds (:mod:`sb3_stpn.zoo.patches` hands it this class), reading ``argv`` with our
    ``defaults`` and checks.

    The script declares its own flags, so every spelling the zoo accepts stays; a bad flag or value is a
    :class:`ZooError` instead of usage text, and ``check`` completes and validates the parsed arguments before the
    script uses them.
    """

    def __init__(
        self, *args: Any, argv: list[str], defaults: dict[str, Any], check: Callable[[argparse.Namespace], None], **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.argv, self.defaults, self.check = argv, defaults, check

    def parse_args(self, args: Any = None, namespace: Any = None) -> Any:
        self.set_defaults(**self.defaults)  # now that the script declared its flags, whose own defaults these replace
        parsed = super().parse_args(self.argv if args is None else args, namespace)
        self.check(parsed)
        return parsed

    def error(self, message: str) -> NoReturn:
        raise ZooError(f"{message}; see {self.prog} -h")


def _parser(
    program: str, argv: list[str], defaults: dict[str, Any], check: Callable[[argparse.Namespace], None]
) -> Callable[[], ZooArgumentParser]:
    """What the script calls to build its parser: a :class:`ZooArgumentParser` named ``program``."""
    return functools.partial(ZooArgumentParser, prog=program, argv=argv, defaults=defaults, check=check)


class OneLineStoreDict(StoreDict):
    """rl_zoo3's ``KEY:VALUE`` flags (``--hyperparams``, ``--env-kwargs``, ...; VALUE is evaluated as Python, once, as
    rl_zoo3 does), with a malformed pair reported in one line naming it instead of a traceback from ``eval``."""

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option_string: Any = None
    ) -> None:
        parsed: dict[str, Any] = {}
        for pair in values:
            one = argparse.Namespace()
            try:
                if ":" not in pair:
                    raise ValueError("no ':' between KEY and VALUE")
                super().__call__(parser, one, [pair], option_string)
            except Exception as error:  # eval raises whatever the expression does
                problem = " ".join(f"{type(error).__name__}: {error}".split())
                raise ZooError(
                    f"malformed {option_string} value {pair!r} ({problem}); write KEY:VALUE with a Python VALUE, e.g. "
                    'n_steps:128, policy_kwargs:"dict(net_arch=[64])" or env_wrapper:"\'module.Wrapper\'"'
                ) from error
            parsed.update(getattr(one, self.dest))
        setattr(namespace, self.dest, parsed)


def _check_device(device: str, algo: str) -> None:
    """Reject a ``--device`` torch does not know, and warn when it asks for CUDA that is not there; for ``ppo_stpn``,
    check that the STPN kernel path ``SB3_STPN_KERNEL`` names (other than ``auto``) runs there, building the C++ kernel
    now if it is named, rather than failing at the first rollout step."""
    if device != "auto":
        try:
            th.device(device)
        except RuntimeError as error:
            raise ZooError(f"--device {device} is not a torch device; pass auto, cpu, cuda or cuda:N") from error
    warn_if_cuda_is_missing(device)
    if algo != "ppo_stpn" or os.environ.get(KERNEL_ENV, "").strip().lower() in ("", "auto"):
        return
    try:
        kernel_choice(th.empty(0, device=get_device(device)))
    except (ValueError, RuntimeError) as error:
        raise ZooError(str(error)) from None


# Environment families this package's extras bring: (id pattern, the module that registers or runs them, the extra)
ENV_EXTRAS = (
    (re.compile(r"(MiniGrid|BabyAI)-"), "minigrid", "envs"),
    (re.compile(r"ALE/|.*NoFrameskip-v4$"), "ale_py", "envs"),
    (re.compile(r"popgym-"), "popgym", "bench"),
)


def _missing_extra(env_id: str) -> str | None:
    """The ``pip install`` line for the extra ``env_id`` needs when its module does not import here, else None."""
    needs = [(module, extra) for pattern, module, extra in ENV_EXTRAS if pattern.match(env_id)]
    if env_id in gym.registry and str(gym.spec(env_id).entry_point).startswith("gymnasium.envs.mujoco"):
        needs.append(("mujoco", "envs"))  # gymnasium registers its MuJoCo ids whether or not mujoco is installed
    for module, extra in needs:
        if importlib.util.find_spec(module) is None:
            return f'{env_id} needs the {module} package, which is not installed; pip install "sb3-stpn[{extra}]"'
    return None


def _check_env(gym_packages: list[str], env_id: str) -> None:
    """Import ``--gym-packages`` and check that the env id is registered, naming the extra a known family needs."""
    for module in gym_packages:
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise ZooError(f"cannot import --gym-packages {module} ({error}); install it or fix the name") from error
    if (missing := _missing_extra(env_id)) is not None:
        raise ZooError(missing)
    if env_id not in gym.registry:
        close = difflib.get_close_matches(env_id, gym.registry, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ZooError(
            f"unknown environment {env_id}{hint}; pass a registered Gymnasium id, "
            "or --gym-packages MODULE for a package that registers it"
        )


def _check_log_folder(folder: str) -> None:
    """Make the log folder and write in it now, so that an unusable ``-f`` fails before any run folder is made."""
    if Path(folder).is_file():
        raise ZooError(f"-f {folder} is a file; pass a folder for the logs")
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise ZooError(f"cannot write logs to -f {folder} ({error.strerror}); pass a writable folder") from error


# Torch threads on CPU when neither --num-threads nor OMP_NUM_THREADS says: the models are small, and more threads
# mostly wait on each other and on other jobs (benchmarks/threads.py measures it; docs/performance.md has the table)
CPU_THREADS = 1


def _default_threads(args: argparse.Namespace) -> None:
    """On CPU, with no ``--num-threads`` and no ``OMP_NUM_THREADS``, train or replay with ``CPU_THREADS`` threads."""
    if args.num_threads > 0 or os.environ.get("OMP_NUM_THREADS") or get_device(args.device).type != "cpu":
        return
    args.num_threads = CPU_THREADS
    print(
        f"Using {CPU_THREADS} torch thread on the CPU, faster for these small models than torch's default "
        f"{th.get_num_threads()}; --num-threads N or OMP_NUM_THREADS=N chooses another count"
    )


def _check_train_args(args: argparse.Namespace) -> None:
    """Validate rl_zoo3 train's arguments and fill in the project's defaults (config, threads, Optuna storage)."""
    _check_env(args.gym_packages, args.env)
    _check_device(args.device, args.algo)
    _default_threads(args)
    if args.n_timesteps is None:
        args.n_timesteps = -1  # the zoo's "use the config's n_timesteps"
    elif args.n_timesteps <= 0:
        raise ZooError(f"-n must be a positive number of steps, got {args.n_timesteps}; omit it for the config's n_timesteps")
    if args.conf_file is None:
        args.conf_file = str(default_config(args.algo))
    config = Path(args.conf_file)
    if config.suffix in (".yml", ".yaml"):
        load_config_entry(config, args.env, ExperimentManager.is_atari(args.env))
    elif config.is_file() and config.suffix != ".py":
        raise ZooError(
            f"-conf {config}: rl_zoo3 reads .yml/.yaml files, .py files and module names, not {config.suffix} files; "
            "convert it to YAML"
        )
    if args.trained_agent:
        check_trained_agent(args.trained_agent)
        if "policy_kwargs" in (args.hyperparams or {}):  # rl_zoo3 drops them: the loaded model keeps its own
            raise ZooError(
                f"-i {args.trained_agent} continues the policy it was saved with, so policy_kwargs in --hyperparams "
                "cannot change it; drop them (or train a new model without -i)"
            )
    if args.track:
        try:
            import wandb  # noqa: F401  (rl_zoo3 imports it only once the run is set up, with a traceback)
        except ImportError as error:
            raise ZooError("--track needs Weights & Biases (wandb), which is not installed; pip install wandb") from error
    if args.optimize_hyperparameters or args.trial_id is not None:  # --trial-id reads the study --optimize wrote
        if args.storage is None:
            args.storage = f"{args.log_folder}/optuna.log"
        if args.study_name is None:
            args.study_name = f"{args.algo}_{args.env}"
    _check_log_folder(args.log_folder)


def _train(argv: list[str]) -> None:
    parser = _parser("stpn-train", argv, {"algo": DEFAULT_ALGO, "n_timesteps": None}, _check_train_args)
    with atomic_saves():
        run_train(parser, OneLineStoreDict, StpnExperimentManager)


class EnergyMeter:
    """
    Prints the energy per step of the actor's memory (STPN or LSTM) while a script rolls a model out.

    ``model.predict`` is wrapped: each call is one step of each environment. The mean energy per
    step of environment 0's episode is printed when its next episode starts (right after rl_zoo3
    prints that episode's reward and length), or at :meth:`report` for an episode the rollout's last step ended
    (the env :meth:`watch` wraps tells), and the mean over all steps at :meth:`report`.
    """

    def __init__(self) -> None:
        self.kind = ""
        self.episode: list[float] = []
        self.steps: list[float] = []
        self.episode_ended = False  # whether environment 0's last step ended its episode

    def watch(self, env: VecEnv) -> VecEnv:
        """``env``, telling this meter whether each step ended environment 0's episode."""
        meter = self

        class EpisodeEnds(VecEnvWrapper):
            def reset(self) -> VecEnvObs:
                return self.venv.reset()

            def step_wait(self) -> VecEnvStepReturn:
                observations, rewards, dones, infos = self.venv.step_wait()
                meter.episode_ended = bool(dones[0])
                return observations, rewards, dones, infos

        return EpisodeEnds(env)

    def attach(self, model: BaseAlgorithm) -> None:
        recorder = ActorEnergyRecorder(model.policy)
        self.kind = type(recorder.memory).__name__
        predict = model.predict

        def metered_predict(observation: Any, state: Any = None, episode_start: Any = None, deterministic: bool = False):
            if episode_start is not None and episode_start[0] and self.episode:
                print(f"Episode mean {self.kind} energy per step: {np.mean(self.episode):.4g}")
                self.episode = []
            result = predict(observation, state, episode_start, deterministic)
            energy = recorder.last_energy
            assert energy is not None, "the actor memory did not run during predict"
            self.episode.append(float(energy[-1, 0]))
            self.steps.append(float(energy[-1].mean()))
            return result

        model.predict = metered_predict  # type: ignore[method-assign]

    def report(self) -> None:
        if self.episode and self.episode_ended:
            print(f"Episode mean {self.kind} energy per step: {np.mean(self.episode):.4g}")
        if self.steps:
            print(f"Mean {self.kind} energy per step over {len(self.steps)} steps: {np.mean(self.steps):.4g}")


class MeteredLoader:
    """Stands in for an algorithm class in rl_zoo3's ``ALGOS``: its ``load`` reports unreadable files in one line
    and attaches an :class:`EnergyMeter` to recurrent models."""

    def __init__(self, algo_class: type[BaseAlgorithm], meter: EnergyMeter):
        self.algo_class = algo_class
        self.meter = meter

    def load(self, path: str, *args: Any, **kwargs: Any) -> BaseAlgorithm:
        try:
            model = self.algo_class.load(path, *args, **kwargs)
        except Exception as error:  # a corrupt or foreign zip fails in many ways inside SB3
            raise _cannot_load(path, f"{type(error).__name__}: {error}") from error
        if actor_memory(model.policy) is not None:
            self.meter.attach(model)
        return model


def _cannot_load(path: str, problem: str) -> ZooError:
    """The one-line error for a model file that does not load."""
    return ZooError(f"cannot load {path} ({problem}); retrain it or pick another run")


def _run_ids(folder: str, algo: str, env_name: str) -> list[int]:
    """The ids of the runs ``<folder>/<algo>/<env>_<id>``, latest first."""
    prefix = f"{env_name}_"
    names = (path.name.removeprefix(prefix) for path in Path(folder, algo).glob(f"{prefix}*") if path.is_dir())
    return sorted((int(name) for name in names if name.isdigit()), reverse=True)


def _checkpoint_steps(run: Path) -> list[int]:
    """The step counts of the run's checkpoints ``rl_model_<N>_steps.zip``, latest first."""
    steps = (path.name.removeprefix("rl_model_").removesuffix("_steps.zip") for path in run.glob("rl_model_*_steps.zip"))
    return sorted((int(step) for step in steps if step.isdigit()), reverse=True)


def _latest_model_path(
    exp_id: int,
    folder: str,
    algo: str,
    env_name: Any,
    load_best: bool = False,
    load_checkpoint: str | None = None,
    load_last_checkpoint: bool = False,
) -> Any:
    """
    rl_zoo3's get_model_path, where ``--exp-id 0`` (the default) means the latest run that holds the
    requested model, not merely the latest run folder, and ``--load-last-checkpoint`` the latest checkpoint.
    A model file that does not load (0-byte, truncated: a save killed midway) is passed over for the next
    one, with one line saying so; nothing found is a :class:`ZooError`.
    """
    error: Exception | None = None
    broken: list[tuple[str, str]] = []
    for run_id in _run_ids(folder, algo, env_name) if exp_id == 0 else [exp_id]:
        run = Path(folder, algo, f"{env_name}_{run_id}")
        checkpoints = _checkpoint_steps(run) if load_last_checkpoint else []
        picks: list[dict[str, Any]] = [{"load_checkpoint": str(steps)} for steps in checkpoints] or [
            {"load_best": load_best, "load_checkpoint": load_checkpoint, "load_last_checkpoint": load_last_checkpoint}
        ]
        for pick in picks:
            try:
                found = rl_zoo3.utils.get_model_path(run_id, folder, algo, env_name, **pick)
            except (AssertionError, ValueError) as run_error:
                error = error or run_error
                continue
            problem = load_problem(found[1])
            if problem is None:
                for path, skipped in broken:
                    print(f"Skipping {path}, which does not load ({skipped})", file=sys.stderr)
                return found
            broken.append((found[1], problem))
    if broken:
        raise _cannot_load(*broken[0])
    reason = f" ({error})" if error else ""
    raise ZooError(
        f"no trained {algo} agent for {env_name} in {folder}{reason}; train one with "
        f"`stpn-train --algo {algo} --env {env_name} -f {folder}` or pass the right -f/--exp-id"
    )


def _check_saved_settings(stats_folder: Path) -> None:
    """
    Read the run's ``config.yml``, ``args.yml`` and ``vecnormalize.pkl`` (those there) as rl_zoo3's enjoy will: a
    damaged one (a run killed while writing it, a full disk) is one error line instead of a traceback.
    """
    readers: dict[str, Callable[[BinaryIO], Any]] = {
        "config.yml": lambda file: yaml.load(file, Loader=yaml.UnsafeLoader),  # as rl_zoo3 reads them
        "args.yml": lambda file: yaml.load(file, Loader=yaml.UnsafeLoader),
        "vecnormalize.pkl": pickle.load,
    }
    for name, read in readers.items():
        path = stats_folder / name
        if not path.is_file():
            continue
        try:
            with path.open("rb") as file:
                content = read(file)
            expected = VecNormalize if name.endswith(".pkl") else dict
            if not isinstance(content, expected):
                raise TypeError(f"it holds a {type(content).__name__}, not a {expected.__name__}")
        except Exception as error:  # YAML, pickle and truncation errors come in many types
            problem = " ".join(f"{type(error).__name__}: {error}".split())[:200]
            fix = (
                "retrain, or enjoy a checkpoint saved with its own statistics (--load-checkpoint N)"
                if name.endswith(".pkl")
                else "restore it, or remove it to replay without the run's saved settings"
            )
            raise ZooError(f"cannot read {path}, which is damaged ({problem}); {fix}") from None


class CheckpointStatistics:
    """
    enjoy's get_model_path and create_test_env, where a checkpoint is run with the VecNormalize statistics
    saved with it (``rl_model_vecnormalize_<N>_steps.pkl``), not the run's final ones, which a killed run lacks.
    """

    def __init__(self, wrap: Callable[[VecEnv], VecEnv]) -> None:
        """:param wrap: Applied to every env this makes (the energy meter's episode watch)."""
        self.model_path: str | None = None
        self.wrap = wrap

    def get_model_path(self, *args: Any, **kwargs: Any) -> Any:
        found = _latest_model_path(*args, **kwargs)
        self.model_path = found[1]
        env_name = kwargs.get("env_name", args[3] if len(args) > 3 else None)
        _check_saved_settings(Path(found[2], str(env_name)))
        return found

    def create_test_env(self, env_id: str, *, stats_path: str | None = None, hyperparams: Any = None, **kwargs: Any) -> Any:
        """rl_zoo3's create_test_env (which rl_zoo3.enjoy calls with keywords), with the checkpoint's own statistics."""

        def create(stats_path: str | None) -> Any:
            return self.wrap(rl_zoo3.utils.create_test_env(env_id, stats_path=stats_path, hyperparams=hyperparams, **kwargs))

        if (
            stats_path is not None
            and not Path(stats_path, "config.yml").is_file()
            and Path(stats_path, "vecnormalize.pkl").is_file()
        ):
            # rl_zoo3 reads "normalize" from config.yml alone, so it would run the policy on raw observations
            print(
                f"warning: no config.yml in {stats_path}: normalising with its vecnormalize.pkl, but without the run's "
                "env wrappers or frame stacking, which config.yml records",
                file=sys.stderr,
            )
            hyperparams = {
                **(hyperparams or {}),
                "normalize": True,
                "normalize_kwargs": {"norm_obs": True, "norm_reward": False},
            }
        if stats_path is None or self.model_path is None or not (hyperparams or {}).get("normalize"):
            return create(stats_path)
        final = Path(stats_path, "vecnormalize.pkl")
        statistics = checkpoint_statistics(self.model_path, final)
        if statistics is None:
            raise ZooError(
                f"no VecNormalize statistics for {self.model_path} (no {final}: the run stopped before saving them); "
                "enjoy a checkpoint saved with its statistics (--load-checkpoint N) or retrain"
            )
        if statistics == final:
            return create(stats_path)
        with tempfile.TemporaryDirectory() as folder:  # create_test_env reads <stats_path>/vecnormalize.pkl
            shutil.copyfile(statistics, Path(folder, "vecnormalize.pkl"))
            return create(folder)


def _check_enjoy_args(args: argparse.Namespace) -> None:
    """Validate the arguments of rl_zoo3's enjoy or record_video (which has no --gym-packages)."""
    _check_env(getattr(args, "gym_packages", []), args.env.gym_id)
    _check_device(getattr(args, "device", "auto"), args.algo)
    if hasattr(args, "num_threads"):  # enjoy's; record_video has no --num-threads
        _default_threads(args)
    if args.n_timesteps <= 0:
        raise ZooError(f"-n must be a positive number of steps, got {args.n_timesteps}")
    if args.env.gym_id in GRID_MAZE_IDS and not args.deterministic:
        args.stochastic = True  # the maze is scored with the sampled policy, as train.py evaluates it


def _enjoy(argv: list[str]) -> None:
    record = "--record" in argv
    for module in ("pygame", "moviepy") if record else ():  # the frames are rendered with pygame, the video made by moviepy
        if importlib.util.find_spec(module) is None:
            extra = "envs" if module == "pygame" else "zoo"
            raise ZooError(f'--record needs the {module} package, which is not installed; pip install "sb3-stpn[{extra}]"')
    argv = [arg for arg in argv if arg != "--record"]
    meter = EnergyMeter()
    script = "rl_zoo3.record_video" if record else "rl_zoo3.enjoy"
    statistics = CheckpointStatistics(meter.watch)
    received: list[int] = []
    with raising_interrupted(received.append):  # rl_zoo3's enjoy catches the KeyboardInterrupt and ends as if done
        run_enjoy(
            script,
            _parser("stpn-enjoy", argv, {"algo": DEFAULT_ALGO, "folder": DEFAULT_LOG_FOLDER}, _check_enjoy_args),
            OneLineStoreDict,
            algos={name: MeteredLoader(algo_class, meter) for name, algo_class in ALGOS.items()},
            get_model_path=statistics.get_model_path,
            create_test_env=statistics.create_test_env,
        )
    meter.report()
    if received:
        raise Interrupted(received[0])


def _run(script: Callable[[list[str]], None], argv: list[str] | None) -> None:
    """Run a script, turning :class:`ZooError` into one ``error:`` line on stderr and exit status 1, and Ctrl-C or
    SIGTERM (once the model is saved) into exit status 130 or 143."""
    try:
        with raising_interrupted(), _quiet_full_disk_in_threads():
            script(list(sys.argv[1:] if argv is None else argv))
    except ZooError as error:
        sys.exit(f"error: {error}")
    except KeyboardInterrupt as stop:
        print(f"stopped by {stop or 'SIGINT'}", file=sys.stderr)
        sys.exit(128 + getattr(stop, "signum", signal.SIGINT))
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = f" writing {error.filename}" if error.filename else ""
        sys.exit(
            f"error: {error.strerror}{where}; free some space or pass -f a folder on another disk, then rerun "
            "(a model or checkpoint saved before is intact: saves replace a file only once complete)"
        )


@contextmanager
def _quiet_full_disk_in_threads() -> Iterator[None]:
    """
    A full disk in a writer thread (TensorBoard's) prints no traceback: the thread hands the error on to the main
    thread's next write, which reports it in one line. Other errors in threads print as always.
    """
    default_hook = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        if not (isinstance(args.exc_value, OSError) and args.exc_value.errno in (errno.ENOSPC, errno.EDQUOT)):
            default_hook(args)

    threading.excepthook = hook
    try:
        yield
    finally:
        threading.excepthook = default_hook


def train_main(argv: list[str] | None = None) -> None:
    """``stpn-train``: rl_zoo3's train.py with ``ppo_stpn`` and the project's configs."""
    _run(_train, argv)


def enjoy_main(argv: list[str] | None = None) -> None:
    """``stpn-enjoy``: rl_zoo3's enjoy.py (``--record``: record_video.py), printing the memory's energy."""
    _run(_enjoy, argv)
