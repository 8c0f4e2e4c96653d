"""
The callbacks a learning-benchmark run trains with: evaluations along training (the learning curve), the STPN's
plasticity diagnostics per rollout, and the plasticity-warmup ablation.

They are built by factories so that importing this module needs neither torch nor SB3 (``--report`` trains nothing).
"""

import contextlib
import statistics
import time
from collections.abc import Iterator
from typing import Any

import numpy as np


def evaluate(model: Any, eval_env: Any, n_episodes: int) -> dict[str, float | None]:
    """
    Mean episode return of the deterministic and of the sampled policy on ``eval_env`` (one env), and the
    actor's mean energy per step during the deterministic episodes (None: no memory).

    Both are reported because they tell different things: a near-uniform policy that has learned little
    may walk into a wall forever when deterministic, which hides learning the sampled policy shows (the
    paper reports the sampled policy).
    """
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.vec_env import sync_envs_normalization

    from sb3_stpn.common.energy import ActorEnergyRecorder
    from sb3_stpn.common.policies import actor_memory

    if model.get_vec_normalize_env() is not None:
        sync_envs_normalization(model.get_env(), eval_env)
    recorder = ActorEnergyRecorder(model.policy) if actor_memory(model.policy) is not None else None
    energies: list[float] = []

    def record(_locals: dict[str, Any], _globals: dict[str, Any]) -> None:
        energies.append(recorder.last_energy.mean().item())

    try:
        deterministic, _ = evaluate_policy(
            model,
            eval_env,
            n_eval_episodes=n_episodes,
            deterministic=True,
            callback=record if recorder else None,
            return_episode_rewards=True,
        )
    finally:
        if recorder is not None:
            recorder.close()
    sampled, _ = evaluate_policy(model, eval_env, n_eval_episodes=n_episodes, deterministic=False, return_episode_rewards=True)
    return {
        "return": float(np.mean(deterministic)),
        "return_sampled": float(np.mean(sampled)),
        "energy_per_step": statistics.fmean(energies) if energies else None,
    }


@contextlib.contextmanager
def random_streams_kept() -> Iterator[None]:
    """
    Leave the global random streams (torch, NumPy, Python) as they were before the block: an evaluation samples
    actions from them, and without this every change of ``--evals`` or ``--eval-episodes`` changed the training too.
    """
    import random

    import torch as th

    numpy_state, python_state = np.random.get_state(), random.getstate()
    try:
        with th.random.fork_rng():
            yield
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)


def make_diagnostics_callback() -> Any:
    """``StpnDiagnosticsCallback`` with its ``stpn/`` scalars kept per rollout in ``.records`` (the logger forgets them)."""
    from sb3_stpn.common.callbacks import StpnDiagnosticsCallback

    class RecordingDiagnostics(StpnDiagnosticsCallback):
        def __init__(self) -> None:
            super().__init__()
            self.records: list[dict[str, float]] = []

        def _on_rollout_end(self) -> None:
            super()._on_rollout_end()
            scalars = {
                key: float(value)
                for key, value in self.logger.name_to_value.items()
                if key.startswith("stpn/") and isinstance(value, int | float)
            }
            self.records.append({"timesteps": self.num_timesteps, **scalars})

    return RecordingDiagnostics()


def make_plasticity_warmup_callback(updates: int) -> Any:
    """
    A callback that freezes the STPN layers' decays and rates for the first ``updates`` PPO updates (an ablation).

    Frozen parameters get no gradient, so Adam leaves them (and their moment estimates) untouched.
    """
    from stable_baselines3.common.callbacks import BaseCallback

    from sb3_stpn.common.stpn import STPN

    class PlasticityWarmup(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.rollouts = 0

        def _on_step(self) -> bool:
            return True

        def _on_rollout_end(self) -> None:
            # The update that follows this rollout is number self.rollouts (from 0)
            frozen = self.rollouts < updates
            for layer in self.model.policy.modules():
                if isinstance(layer, STPN):
                    for parameter in layer.plasticity_parameters():
                        parameter.requires_grad_(not frozen)
            self.rollouts += 1

    return PlasticityWarmup()


def make_curve_callback(eval_env: Any, n_evals: int, n_episodes: int, steps: int) -> Any:
    """
    An SB3 callback evaluating at step 0, every ``steps / n_evals`` steps and at the end; results in ``.curve``.

    Each point also holds ``train_seconds``, the wall time spent so far outside evaluations: the clock of
    the equal-wall-clock comparison. The last point is always the final policy's: an evaluation that fell on the
    last step of the last rollout saw the policy before that rollout's update, so it is evaluated again.
    """
    from stable_baselines3.common.callbacks import BaseCallback

    class CurveCallback(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.curve: list[dict[str, float | None]] = []
            self.next_eval = 0
            # Whether PPO may have updated the policy since the last evaluation
            self.updated_since_eval = False
            self.eval_seconds = 0.0
            self.start = time.perf_counter()

        def _evaluate(self) -> None:
            started = time.perf_counter()
            point = {"timesteps": self.num_timesteps, "train_seconds": started - self.start - self.eval_seconds}
            with random_streams_kept():
                self.curve.append({**point, **evaluate(self.model, eval_env, n_episodes)})
            self.eval_seconds += time.perf_counter() - started
            self.next_eval = self.num_timesteps + max(steps // n_evals, 1)
            self.updated_since_eval = False

        def _on_training_start(self) -> None:
            self.start = time.perf_counter()
            self._evaluate()

        def _on_step(self) -> bool:
            if self.num_timesteps >= self.next_eval:
                self._evaluate()
            return True

        def _on_rollout_end(self) -> None:
            # SB3 updates the policy on every rollout it has collected
            self.updated_since_eval = True

        def _on_training_end(self) -> None:
            if self.updated_since_eval:
                if self.curve[-1]["timesteps"] == self.num_timesteps:
                    self.curve.pop()
                self._evaluate()

    return CurveCallback()
