"""
Continuing (``-i``) or replaying a checkpoint with the VecNormalize statistics saved with it.

SB3's CheckpointCallback saves ``rl_model_<N>_steps.zip``, and its statistics ``rl_model_vecnormalize_<N>_steps.pkl``
only when asked; rl_zoo3 saves the run's statistics (``<env>/vecnormalize.pkl``) only at a clean end, and continues or
replays any model with those. A killed run has none, so normalisation silently restarted from zero; a finished run's
final statistics do not match an earlier checkpoint. :func:`checkpoint_statistics` makes the choice for both
``train -i`` (:class:`CheckpointsWithStatistics`) and ``enjoy`` (:mod:`sb3_stpn.cli`).
"""

import os
import sys
import zipfile
from pathlib import Path
from typing import Any

from rl_zoo3.exp_manager import ExperimentManager
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import CheckpointCallback
from stable_baselines3.common.vec_env import VecEnv, VecNormalize

from sb3_stpn.zoo.errors import ZooError
from sb3_stpn.zoo.saving import checkpoint_vec_normalize_path, load_problem


def checkpoint_statistics(model_path: str, final: Path, warn: bool = True) -> Path | None:
    """
    The VecNormalize statistics to run ``model_path`` with: those saved with it for a checkpoint that has them, else
    the run's ``final`` ones (for a checkpoint with a warning, unless ``warn`` is False); None when neither is there.
    """
    own = checkpoint_vec_normalize_path(model_path)
    if own is not None and own.is_file():
        print(f"Loading the VecNormalize statistics saved with the checkpoint: {own}")
        return own
    if not final.is_file():
        return None
    if own is not None and warn:
        print(f"warning: no {own.name} saved with {model_path}; using the run's final statistics", file=sys.stderr)
    return final


def check_trained_agent(path: str) -> None:
    """Reject a ``-i`` path that is not an SB3 model zip before any run folder is made."""
    if not os.path.isfile(path):
        raise ZooError(f"trained agent {path} not found; pass -i the .zip train.py saved (logs/<algo>/<env>_<id>/<env>.zip)")
    if not zipfile.is_zipfile(path) or "data" not in zipfile.ZipFile(path).namelist():
        raise ZooError(f"{path} is not a model saved by SB3 (corrupt or another format); pass -i the .zip saved by train.py")
    problem = load_problem(path)
    if problem is not None:  # e.g. truncated by a save that was killed, yet still a zip
        raise ZooError(f"cannot continue from {path}, which does not load ({problem}); pass -i another checkpoint or run")


class CheckpointsWithStatistics(ExperimentManager):
    """rl_zoo3's ExperimentManager, each checkpoint saved with its VecNormalize statistics and continued with them."""

    def create_callbacks(self) -> None:
        super().create_callbacks()
        for callback in self.callbacks:
            if isinstance(callback, CheckpointCallback):
                callback.save_vecnormalize = True

    def _maybe_normalize(self, env: VecEnv, eval_env: bool) -> VecEnv:
        if not self.trained_agent:
            return super()._maybe_normalize(env, eval_env)
        final = Path(self.trained_agent).parent / self.env_name / "vecnormalize.pkl"
        training = self.normalize and not eval_env  # the env whose statistics continue: the warnings are about it
        statistics = checkpoint_statistics(self.trained_agent, final, warn=training)
        if statistics is None and training:
            print(
                f"warning: no VecNormalize statistics saved with {self.trained_agent} (neither {final} nor a "
                "checkpoint's rl_model_vecnormalize_<N>_steps.pkl): normalisation restarts from zero",
                file=sys.stderr,
            )
        if statistics is None or statistics == final:
            return super()._maybe_normalize(env, eval_env)  # rl_zoo3 loads the final statistics, or starts afresh
        env = VecNormalize.load(str(statistics), env)
        if eval_env:
            env.training = env.norm_reward = False
        return env

    def _load_pretrained_agent(self, hyperparams: dict[str, Any], env: VecEnv) -> BaseAlgorithm:
        try:
            return super()._load_pretrained_agent(hyperparams, env)
        except Exception as error:  # a corrupt zip, or one of another algorithm, fails in many ways inside SB3
            raise ZooError(
                f"cannot continue from {self.trained_agent} ({type(error).__name__}: {error}); pass -i the .zip of a "
                f"{self.algo} agent trained on {self.env_name.gym_id} by train.py"
            ) from error
