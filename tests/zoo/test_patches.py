"""
The contract with rl_zoo3's and SB3's internals that sb3_stpn/zoo/patches.py relies on, pinned so that an upgrade fails
loudly.

The commands run rl_zoo3's scripts with stand-ins for names the scripts import (their parser, their experiment
manager, how they find, load and replay a model), the managers override private methods of rl_zoo3's
ExperimentManager, and SB3's two save methods are made atomic. Each check names the installed version and what
changed, and where sb3_stpn has to follow.
"""

import ast
import importlib.util
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import rl_zoo3
import rl_zoo3.utils
import stable_baselines3
from rl_zoo3.exp_manager import ExperimentManager
from rl_zoo3.utils import StoreDict
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.vec_env import VecNormalize

from sb3_stpn.zoo import StpnExperimentManager, patches

# What the overridden private methods take (after self)
PRIVATE_PARAMETERS = {
    "_create_sampler": ["sampler_method"],
    "_preprocess_hyperparams": ["hyperparams"],
    "_preprocess_action_noise": ["hyperparams", "saved_hyperparams", "env"],
    "_maybe_normalize": ["env", "eval_env"],
    "_load_pretrained_agent": ["hyperparams", "env"],
}


def changed(what: str, adapt: str, package: str = "rl_zoo3") -> str:
    """The failure message: which version changed what, and which part of sb3_stpn has to follow."""
    version = rl_zoo3.__version__ if package == "rl_zoo3" else stable_baselines3.__version__
    return (
        f"{package} {version} changed {what}; sb3_stpn is tested with {package} 2.9 (pyproject.toml): adapt {adapt} "
        f"or pin {package} to 2.9"
    )


def parameter_names(function: Callable[..., Any]) -> list[str]:
    return [name for name in inspect.signature(function).parameters if name != "self"]


def stand_ins(monkeypatch: pytest.MonkeyPatch) -> dict[str, set[str]]:
    """The stand-ins each script is run with, by script: ``module.name`` strings."""
    runs: dict[str, set[str]] = {}
    monkeypatch.setattr(patches, "_run_script", lambda script, names: runs.update({script: set(names)}))
    patches.run_train(object, StoreDict, ExperimentManager)
    for script in ("rl_zoo3.enjoy", "rl_zoo3.record_video"):
        patches.run_enjoy(script, object, StoreDict, {}, object, object)
    return runs


def imported_names(script: str) -> set[str]:
    """``module.name`` for each name ``script`` imports from a module or reads off a module it imports."""
    spec = importlib.util.find_spec(script)
    assert spec is not None and spec.origin is not None
    tree = ast.parse(Path(spec.origin).read_text())
    modules = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    names = {
        f"{node.module}.{alias.name}"
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.level == 0
        for alias in node.names
        if alias.asname is None
    }
    names |= {
        f"{node.value.id}.{node.attr}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules
    }
    return names


def test_each_stand_in_is_how_its_script_gets_the_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every way a script gets a replaced name (``from module import name``, ``module.name``) has its stand-in."""
    runs = stand_ins(monkeypatch)
    assert set(runs) == {"rl_zoo3.train", "rl_zoo3.enjoy", "rl_zoo3.record_video"}
    for script, names in runs.items():
        replaced = {name.rpartition(".")[2] for name in names}
        imported = imported_names(script)
        uncovered = {name for name in imported if name.rpartition(".")[2] in replaced} - names
        assert not uncovered, changed(f"where {script} gets {sorted(uncovered)} from", "sb3_stpn.zoo.patches")
        unused = replaced - {name.rpartition(".")[2] for name in imported}
        assert not unused, changed(f"{script}, which no longer gets {sorted(unused)}", "sb3_stpn.zoo.patches")


def test_the_stand_ins_are_called_as_the_originals_are() -> None:
    expected = ["exp_id", "folder", "algo", "env_name", "load_best", "load_checkpoint", "load_last_checkpoint"]
    assert parameter_names(rl_zoo3.utils.get_model_path) == expected, changed(
        "get_model_path's arguments", "sb3_stpn.cli._latest_model_path"
    )
    create_test_env = parameter_names(rl_zoo3.utils.create_test_env)
    assert {"env_id", "stats_path", "hyperparams"} <= set(create_test_env), changed(
        f"create_test_env's arguments to {create_test_env}", "sb3_stpn.cli.CheckpointStatistics.create_test_env"
    )
    assert parameter_names(StoreDict.__call__) == ["parser", "namespace", "values", "option_string"], changed(
        "StoreDict.__call__'s arguments", "sb3_stpn.cli.OneLineStoreDict"
    )


def test_overridden_private_methods_keep_their_signatures() -> None:
    assert set(patches.PRIVATE_OVERRIDES) == set(PRIVATE_PARAMETERS)
    for name, expected in PRIVATE_PARAMETERS.items():
        assert parameter_names(getattr(ExperimentManager, name)) == expected, changed(
            f"ExperimentManager.{name}'s arguments", patches.PRIVATE_OVERRIDES[name]
        )
    source = inspect.getsource(ExperimentManager)
    for name, used in patches.PRIVATE_ATTRIBUTES.items():
        assert f"self.{name} = " in source, changed(f"ExperimentManager, which no longer sets self.{name}", used)


def test_every_private_override_is_listed() -> None:
    """A private method of ExperimentManager the managers override is in PRIVATE_OVERRIDES, so that it is pinned."""
    overridden = {
        name
        for manager in StpnExperimentManager.__mro__[: StpnExperimentManager.__mro__.index(ExperimentManager)]
        for name in vars(manager)
        if name.startswith("_") and not name.startswith("__") and hasattr(ExperimentManager, name)
    }
    assert overridden == set(patches.PRIVATE_OVERRIDES)
    for manager in StpnExperimentManager.__mro__:
        for name in set(vars(manager)) & overridden:
            assert parameter_names(vars(manager)[name]) == PRIVATE_PARAMETERS[name], f"{manager.__name__}.{name}"


def test_sb3_saves_keep_their_signatures() -> None:
    assert parameter_names(BaseAlgorithm.save) == ["path", "exclude", "include"], changed(
        "BaseAlgorithm.save's arguments", "sb3_stpn.zoo.saving.atomic_model_save", "stable-baselines3"
    )
    assert parameter_names(VecNormalize.save) == ["save_path"], changed(
        "VecNormalize.save's arguments", "sb3_stpn.zoo.saving.atomic_vec_normalize_save", "stable-baselines3"
    )
