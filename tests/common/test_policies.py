"""The STPN policies' defaults, and actor_memory: one accessor for the actor's memory of STPN, LSTM and memoryless
policies."""

import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
from stable_baselines3.common.policies import ActorCriticPolicy
from torch import nn

from sb3_stpn import STPN
from sb3_stpn.common.callbacks import fast_to_slow_ratio
from sb3_stpn.common.policies import LAYER_STPN_SETTINGS, POLICY_STPN_DEFAULTS, StpnActorCriticPolicy, actor_memory

OBSERVATIONS = spaces.Box(-1.0, 1.0, (3,))
ACTIONS = spaces.Discrete(2)


def constant_lr(_: float) -> float:
    return 1e-3


def test_actor_memory_of_stpn_policy_is_its_actor_stpn() -> None:
    policy = StpnActorCriticPolicy(OBSERVATIONS, ACTIONS, constant_lr, stpn_hidden_size=5)
    memory = actor_memory(policy)
    assert isinstance(memory, STPN) and memory is policy.stpn_actor
    assert memory is not policy.stpn_critic and memory.hidden_size == 5


def test_actor_memory_of_lstm_policy_is_its_actor_lstm() -> None:
    policy = RecurrentActorCriticPolicy(OBSERVATIONS, ACTIONS, constant_lr, lstm_hidden_size=4)
    memory = actor_memory(policy)
    assert isinstance(memory, nn.LSTM) and memory is policy.lstm_actor and memory is not policy.lstm_critic


def test_memoryless_policy_has_no_actor_memory() -> None:
    assert actor_memory(ActorCriticPolicy(OBSERVATIONS, ACTIONS, constant_lr)) is None
    assert actor_memory(nn.Linear(3, 2)) is None


def largest_fast_to_slow_ratio(policy: StpnActorCriticPolicy, steps: int = 200, n_envs: int = 8) -> float:
    """The largest ``||F|| / ||W||`` (mean over envs and neurons) of the actor over ``steps`` random observations."""
    observations = np.random.default_rng(0).uniform(-1.0, 1.0, size=(steps, n_envs, 3)).astype(np.float32)
    state, largest = None, 0.0
    for step, obs in enumerate(observations):
        _, state = policy.predict(obs, state, episode_start=np.full(n_envs, step == 0))
        largest = max(largest, fast_to_slow_ratio(policy.stpn_actor, th.as_tensor(state[1][0])))
    return largest


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_default_policy_keeps_f_small_against_w_where_the_papers_model_lets_it_grow(seed: int) -> None:
    """A fresh default policy's F stays below 1 % of W over 200 steps; the paper's model (the layer's defaults) lets the
    normalised F grow to W's size within them: the runaway the policies' defaults exist to prevent."""
    th.manual_seed(seed)
    default = StpnActorCriticPolicy(OBSERVATIONS, ACTIONS, constant_lr)
    th.manual_seed(seed)
    paper = StpnActorCriticPolicy(OBSERVATIONS, ACTIONS, constant_lr, stpn_kwargs=LAYER_STPN_SETTINGS)
    assert largest_fast_to_slow_ratio(default) < 0.01
    assert largest_fast_to_slow_ratio(paper) > 0.5


def test_policy_records_every_stpn_setting_over_its_defaults() -> None:
    """The policy's stpn_kwargs hold every STPN setting: the given ones, the policies' defaults, the layer's own."""
    policy = StpnActorCriticPolicy(OBSERVATIONS, ACTIONS, constant_lr, stpn_kwargs=dict(clamp=0.5))
    settings = policy.stpn_kwargs
    assert settings["clamp"] == 0.5 and settings["retention_max"] == POLICY_STPN_DEFAULTS["retention_max"]
    assert settings["lambda_lr_scale"] == POLICY_STPN_DEFAULTS["lambda_lr_scale"] and settings["lambda_max"] is None
    assert settings["norm_time"] == "pre" and settings["lambda_init"] == (0.0, 1.0)
    assert policy._get_constructor_parameters()["stpn_kwargs"] == settings
    rebuilt = StpnActorCriticPolicy(OBSERVATIONS, ACTIONS, constant_lr, stpn_kwargs=settings)
    assert repr(rebuilt.stpn_actor) == repr(policy.stpn_actor)
