"""
The one place where this package replaces names of rl_zoo3 and Stable-Baselines3, for want of a public hook.

- rl_zoo3's scripts (``train``, ``enjoy``, ``record_video``) build their argument parser, look their experiment manager
  up and load models inline: :func:`run_train` and :func:`run_enjoy` run a script with stand-ins for the names it
  imports, which that script alone sees (neither rl_zoo3's modules nor ``argparse`` are changed).
- SB3 writes models and VecNormalize statistics in place: :func:`atomic_saves` makes those saves atomic while it runs.
- The experiment managers (:class:`~sb3_stpn.zoo.StpnExperimentManager` and the subclasses it is built from) override
  the private methods of rl_zoo3's ExperimentManager listed in :data:`PRIVATE_OVERRIDES`.

tests/zoo/test_patches.py pins every name used here, so that an upgrade of rl_zoo3 or SB3 that changes one fails loudly.
"""

import builtins
import importlib.abc
import importlib.util
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any
from unittest import mock

from rl_zoo3.exp_manager import ExperimentManager
from rl_zoo3.utils import StoreDict
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.vec_env import VecNormalize

from sb3_stpn.zoo.saving import atomic_model_save, atomic_vec_normalize_save

# ExperimentManager's private methods the managers override, each for a step rl_zoo3 offers no public hook for
PRIVATE_OVERRIDES = {
    "_create_sampler": "optuna_studies: each trial's sampler seeded from (seed, trial number)",
    "_preprocess_hyperparams": "exp_manager: hyperparameters checked by name and value before anything is built",
    "_preprocess_action_noise": "exp_manager: the first step that sees the env, where `policy: auto` is resolved",
    "_maybe_normalize": "checkpoints: a checkpoint continued with the VecNormalize statistics saved with it",
    "_load_pretrained_agent": "checkpoints: a -i model that does not load is one error line",
}
# ExperimentManager's private attributes the managers read: the hyperparameters a study's trials start from
PRIVATE_ATTRIBUTES = {"_hyperparams": "exp_manager: the ppo_stpn/ppo_lstm spaces merge into its policy_kwargs"}


def run_train(parser: Callable[[], Any], store_dict: type[StoreDict], manager: type[ExperimentManager]) -> None:
    """Run rl_zoo3's train script, ``parser``, ``store_dict`` and ``manager`` standing in for what it builds them with."""
    _run_script(
        "rl_zoo3.train",
        {
            # The script builds its parser inline: ours reads the project's defaults, checks and one-line errors into it
            "argparse.ArgumentParser": parser,
            # The KEY:VALUE action of --hyperparams, --env-kwargs, ...: a malformed pair is one line, not eval's traceback
            "rl_zoo3.utils.StoreDict": store_dict,
            # The manager the script builds: the project's, ppo_stpn's configs and the repairs of sb3_stpn.zoo with it
            "rl_zoo3.exp_manager.ExperimentManager": manager,
        },
    )


def run_enjoy(
    script: str,
    parser: Callable[[], Any],
    store_dict: type[StoreDict],
    algos: Mapping[str, Any],
    get_model_path: Callable[..., Any],
    create_test_env: Callable[..., Any],
) -> None:
    """
    Run rl_zoo3's ``enjoy`` or ``record_video`` script (``script``, the module's name), ``parser`` and ``store_dict``
    standing in as for :func:`run_train`, ``algos`` for the algorithm classes it loads the model with (``.load``), and
    ``get_model_path`` and ``create_test_env`` for the functions it finds the model and makes the env with.
    """
    stand_ins = {
        "argparse.ArgumentParser": parser,  # as for train
        "rl_zoo3.utils.StoreDict": store_dict,  # as for train (--env-kwargs)
        # Which model: the latest run that holds one, a model file that does not load passed over in one line
        "rl_zoo3.utils.get_model_path": get_model_path,
        # The env: a checkpoint runs with the VecNormalize statistics saved with it, not the run's final ones
        "rl_zoo3.utils.create_test_env": create_test_env,
        # The classes that load the model: an unreadable file is one line, and the memory's energy is metered
        "rl_zoo3.utils.ALGOS": algos,
    }
    # enjoy imports those two from rl_zoo3, record_video from rl_zoo3.utils
    stand_ins.update({"rl_zoo3.ALGOS": algos, "rl_zoo3.create_test_env": create_test_env})
    _run_script(script, stand_ins)


def _run_script(script: str, stand_ins: Mapping[str, Any]) -> None:
    """
    Run the module ``script`` as ``python -m script`` would, ``stand_ins["module.name"]`` standing in for ``name`` when
    the script imports it from ``module`` (``from module import name``, or ``import module`` and ``module.name``).
    """
    replaced: dict[str, dict[str, Any]] = {}
    for dotted, value in stand_ins.items():
        module_name, _, name = dotted.rpartition(".")
        replaced.setdefault(module_name, {})[name] = value

    def script_import(
        name: str, namespace: Any = None, local_names: Any = None, fromlist: Sequence[str] | None = (), level: int = 0
    ) -> Any:
        module = builtins.__import__(name, namespace, local_names, fromlist, level)
        if level == 0 and name in replaced and (fromlist or "." not in name):
            return types.SimpleNamespace(**{**vars(module), **replaced[name]})
        return module

    spec = importlib.util.find_spec(script)
    loader = spec.loader if spec is not None else None
    code = loader.get_code(script) if isinstance(loader, importlib.abc.InspectLoader) else None
    assert spec is not None and code is not None, f"no Python module {script}"
    namespace = {
        "__name__": "__main__",
        "__file__": spec.origin,
        "__spec__": spec,
        "__loader__": loader,
        "__package__": spec.parent,
        "__builtins__": {**vars(builtins), "__import__": script_import},
    }
    exec(code, namespace)


@contextmanager
def atomic_saves() -> Iterator[None]:
    """While the block runs, every model save (``BaseAlgorithm.save``: final models, checkpoints, the best model) and
    every ``VecNormalize.save`` to a path is atomic (:func:`sb3_stpn.zoo.saving.atomic_write`): SB3 offers no hook, and
    rl_zoo3 and SB3's callbacks call these two methods."""
    with (
        mock.patch.object(BaseAlgorithm, "save", atomic_model_save(BaseAlgorithm.save)),
        mock.patch.object(VecNormalize, "save", atomic_vec_normalize_save),
    ):
        yield
