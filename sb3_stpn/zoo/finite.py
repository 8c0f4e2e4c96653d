"""Runs that stop on NaN or inf in what an environment returns or a model sends, instead of silently training on it."""

from typing import Any

from rl_zoo3.exp_manager import ExperimentManager
from stable_baselines3.common.vec_env import VecCheckNan, VecEnv

from sb3_stpn.zoo.errors import ZooError


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


class FiniteEnvs(ExperimentManager):
    """rl_zoo3's ExperimentManager, every env it makes (for training and evaluation) in a :class:`VecCheckFinite`."""

    def create_envs(self, n_envs: int, eval_env: bool = False, no_log: bool = False) -> VecEnv:
        return VecCheckFinite(super().create_envs(n_envs, eval_env, no_log))
