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


def test_plasticity_optimizer_kwargs_give_the_decays_and_rates_a_group_of_their_own() -> None:
    """With plasticity_optimizer_kwargs the STPN decays and rates (actor's and critic's) form a second parameter group
    with those options; without them, and for the twin that has none, the policy keeps one group."""
    policy = StpnActorCriticPolicy(OBSERVATIONS, ACTIONS, constant_lr, plasticity_optimizer_kwargs=dict(eps=1e-12))
    others, plasticity = policy.optimizer.param_groups
    expected = {id(p) for layer in (policy.stpn_actor, policy.stpn_critic) for p in layer.plasticity_parameters()}
    assert {id(p) for p in plasticity["params"]} == expected and len(expected) == 4
    assert {id(p) for p in others["params"]} == {id(p) for p in policy.parameters()} - expected
    assert plasticity["eps"] == 1e-12 and others["eps"] == 1e-5
    assert len(StpnActorCriticPolicy(OBSERVATIONS, ACTIONS, constant_lr).optimizer.param_groups) == 1
    twin = StpnActorCriticPolicy(
        OBSERVATIONS, ACTIONS, constant_lr, stpn_kwargs=dict(plastic=False), plasticity_optimizer_kwargs=dict(eps=1e-12)
    )
    assert len(twin.optimizer.param_groups) == 1


@pytest.mark.parametrize("plasticity_optimizer_kwargs, eps", [(None, 1e-5), (dict(eps=1e-12), 1e-12)])
def test_a_small_plasticity_eps_lets_adam_move_decays_whose_gradients_are_tiny(
    plasticity_optimizer_kwargs: dict[str, float] | None, eps: float
) -> None:
    """Adam's first step is lr * |g| / (|g| + eps): a decay gradient of 1e-11 moves the decay by lr * 1e-6 under SB3's
    eps=1e-5, and by most of the lr under eps=1e-12 (in float64: a step of 1e-9 is below float32's resolution)."""
    policy = StpnActorCriticPolicy(
        OBSERVATIONS, ACTIONS, constant_lr, plasticity_optimizer_kwargs=plasticity_optimizer_kwargs
    ).double()
    decay = policy.stpn_actor.weight_lambda
    before = decay.detach().clone()
    gradient = 1e-11
    for parameter in policy.parameters():
        parameter.grad = th.full_like(parameter, -gradient)
    policy.optimizer.step()
    expected_step = constant_lr(1.0) * gradient / (gradient + eps)
    np.testing.assert_allclose((decay.detach() - before).numpy(), expected_step, rtol=1e-6)


def test_plasticity_optimizer_kwargs_survive_a_rebuild_with_the_optimizer_state() -> None:
    """The option is a constructor parameter, so a loaded model rebuilds the same groups and takes the saved state."""
    policy = StpnActorCriticPolicy(OBSERVATIONS, ACTIONS, constant_lr, plasticity_optimizer_kwargs=dict(eps=1e-12))
    parameters = policy._get_constructor_parameters()
    assert parameters["plasticity_optimizer_kwargs"] == dict(eps=1e-12)
    rebuilt = StpnActorCriticPolicy(**parameters)
    rebuilt.optimizer.load_state_dict(policy.optimizer.state_dict())
    assert rebuilt.optimizer.param_groups[1]["eps"] == 1e-12


def test_unknown_plasticity_optimizer_option_is_a_one_line_error() -> None:
    with pytest.raises(ValueError, match=r"plasticity_optimizer_kwargs has \['epsilon'\], which Adam does not take"):
        StpnActorCriticPolicy(OBSERVATIONS, ACTIONS, constant_lr, plasticity_optimizer_kwargs=dict(epsilon=1e-12))


def test_a_plasticity_learning_rate_is_refused_since_the_schedule_would_overwrite_it() -> None:
    with pytest.raises(ValueError, match=r"cannot set lr: .* use stpn_kwargs' lambda_lr_scale and gamma_lr_scale"):
        StpnActorCriticPolicy(OBSERVATIONS, ACTIONS, constant_lr, plasticity_optimizer_kwargs=dict(lr=1e-5))
