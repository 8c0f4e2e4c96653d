"""``stpn-train`` and ``stpn-enjoy``: rl_zoo3's train and enjoy scripts with ``ppo_stpn`` registered.

Every rl_zoo3 flag keeps its meaning; on top of the zoo these commands
- default to ``--algo ppo_stpn`` and to the project's ``zoo_configs/<algo>.yml`` (``-conf`` overrides),
- default Optuna runs to a shared journal file ``<log folder>/optuna.log`` and the study name
  ``<algo>_<env>``, so that several processes started alike work on one study,
- make ``enjoy`` read ``-f logs`` by default, print the actor memory's energy per step, and record
  a video with ``--record`` (rl_zoo3's record_video),
- turn bad input into one ``error:`` line naming the fix and a non-zero exit.
"""

import argparse
import difflib
import importlib
import runpy
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

import gymnasium as gym
import numpy as np
import rl_zoo3.import_envs  # registers CartPoleNoVel-v1 & co. and the Atari envs
import rl_zoo3.train
import rl_zoo3.utils
from rl_zoo3.exp_manager import ExperimentManager
from rl_zoo3.utils import ALGOS
from stable_baselines3.common.base_class import BaseAlgorithm

from sb3_stpn.common.energy import ActorEnergyRecorder
from sb3_stpn.zoo import StpnExperimentManager, ZooError
from sb3_stpn.zoo.exp_manager import check_trained_agent, default_config, load_config_entry

DEFAULT_ALGO = "ppo_stpn"
DEFAULT_LOG_FOLDER = "logs"
ZOO_DEFAULT_ENV = "CartPole-v1"  # rl_zoo3's own default for --env


def _pre_parser() -> argparse.ArgumentParser:
    """The few flags checked before rl_zoo3 parses the full command line (unknown ones are left to it)."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--algo")
    parser.add_argument("--env", default=ZOO_DEFAULT_ENV)
    parser.add_argument("--gym-packages", nargs="+", default=[])
    parser.add_argument("-f", "--log-folder", "--folder", dest="folder")
    parser.add_argument("-conf", "--conf-file")
    parser.add_argument("-i", "--trained-agent", default="")
    parser.add_argument("-optimize", "--optimize-hyperparameters", action="store_true")
    parser.add_argument("--storage")
    parser.add_argument("--study-name")
    return parser


def _parse_known(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """Parse our flags, import ``--gym-packages`` and check the env id; return them and argv with the algo default."""
    known, _ = _pre_parser().parse_known_args(argv)
    for module in known.gym_packages:
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise ZooError(f"cannot import --gym-packages {module} ({error}); install it or fix the name") from error
    if known.env not in gym.registry:
        close = difflib.get_close_matches(known.env, gym.registry, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ZooError(
            f"unknown environment {known.env}{hint}; pass a registered Gymnasium id, "
            "or --gym-packages MODULE for a package that registers it"
        )
    if known.algo is None:
        known.algo = DEFAULT_ALGO
        argv = ["--algo", DEFAULT_ALGO, *argv]
    return known, argv


def _train(argv: list[str]) -> None:
    known, argv = _parse_known(argv)
    folder = known.folder or DEFAULT_LOG_FOLDER
    if known.conf_file is None:
        config = default_config(known.algo)
        argv += ["--conf-file", str(config)]
    else:
        config = Path(known.conf_file)
    if config.suffix in (".yml", ".yaml"):
        load_config_entry(config, known.env, ExperimentManager.is_atari(known.env))
    if known.trained_agent:
        check_trained_agent(known.trained_agent)
    if known.optimize_hyperparameters:
        if known.storage is None:
            argv += ["--storage", f"{folder}/optuna.log"]
        if known.study_name is None:
            argv += ["--study-name", f"{known.algo}_{known.env}"]
    with mock.patch.object(rl_zoo3.train, "ExperimentManager", StpnExperimentManager), _argv("stpn-train", argv):
        rl_zoo3.train.train()


class EnergyMeter:
    """
    Prints the energy per step of the actor's memory (STPN or LSTM) while a script rolls a model out.

    ``model.predict`` is wrapped: each call is one step of each environment. The mean energy per
    step of environment 0's episode is printed when its next episode starts (right after rl_zoo3
    prints that episode's reward and length), and the mean over all steps at :meth:`report`.
    """

    def __init__(self) -> None:
        self.kind = ""
        self.episode: list[float] = []
        self.steps: list[float] = []

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
            raise ZooError(f"cannot load {path} ({type(error).__name__}: {error}); retrain it or pick another run") from error
        if hasattr(model.policy, "lstm_actor"):
            self.meter.attach(model)
        return model


def _checked_get_model_path(exp_id: int, folder: str, algo: str, env_name: Any, *args: Any, **kwargs: Any) -> Any:
    """rl_zoo3's get_model_path, with a missing run or model reported as a :class:`ZooError`."""
    try:
        return _zoo_get_model_path(exp_id, folder, algo, env_name, *args, **kwargs)
    except (AssertionError, ValueError) as error:
        raise ZooError(
            f"no trained {algo} agent for {env_name} in {folder} ({error}); train one with "
            f"`stpn-train --algo {algo} --env {env_name} -f {folder}` or pass the right -f/--exp-id"
        ) from error


_zoo_get_model_path = rl_zoo3.utils.get_model_path


def _enjoy(argv: list[str]) -> None:
    record = "--record" in argv
    argv = [arg for arg in argv if arg != "--record"]
    known, argv = _parse_known(argv)
    if known.folder is None:
        argv += ["-f", DEFAULT_LOG_FOLDER]
    meter = EnergyMeter()
    script = "rl_zoo3.record_video" if record else "rl_zoo3.enjoy"
    with (
        mock.patch.object(rl_zoo3.utils, "get_model_path", _checked_get_model_path),
        mock.patch.dict(ALGOS, {known.algo: MeteredLoader(ALGOS[known.algo], meter)}),
        _argv("stpn-enjoy", argv),
    ):
        # Both scripts import get_model_path and ALGOS from rl_zoo3.utils when run, so they see the patches
        sys.modules.pop(script, None)
        runpy.run_module(script, run_name="__main__")
    meter.report()


@contextmanager
def _argv(program: str, argv: list[str]) -> Iterator[None]:
    with mock.patch.object(sys, "argv", [program, *argv]):
        yield


def _run(script: Callable[[list[str]], None], argv: list[str] | None) -> None:
    """Run a script, turning :class:`ZooError` into one ``error:`` line on stderr and exit status 1."""
    try:
        script(list(sys.argv[1:] if argv is None else argv))
    except ZooError as error:
        sys.exit(f"error: {error}")
    except KeyboardInterrupt:
        sys.exit(130)


def train_main(argv: list[str] | None = None) -> None:
    """``stpn-train``: rl_zoo3's train.py with ``ppo_stpn`` and the project's configs."""
    _run(_train, argv)


def enjoy_main(argv: list[str] | None = None) -> None:
    """``stpn-enjoy``: rl_zoo3's enjoy.py (``--record``: record_video.py), printing the memory's energy."""
    _run(_enjoy, argv)
