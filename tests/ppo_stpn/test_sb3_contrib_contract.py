"""
The contract with sb3-contrib's recurrent internals that sb3_stpn relies on, pinned so that an upgrade fails loudly.

``StpnActorCriticPolicy``, the STPN rollout buffers and ``StpnPPO`` subclass sb3-contrib's recurrent policy, buffers
and ``RecurrentPPO`` and reuse their rollout and update code, which reaches the memory through private or LSTM-named
members (``_process_sequence``, ``lstm_actor``, ``lstm_critic``, ``shared_lstm``, ``lstm_output_dim``,
``_last_lstm_states``, the buffers' ``lstm_states``). Each check names the installed sb3-contrib version and the
member that changed, and where sb3_stpn has to follow.
"""

import inspect
from collections.abc import Callable
from typing import Any

import pytest
import sb3_contrib
import torch as th
from gymnasium import spaces
from sb3_contrib import RecurrentPPO
from sb3_contrib.common.recurrent.buffers import RecurrentDictRolloutBuffer, RecurrentRolloutBuffer
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
from sb3_contrib.common.recurrent.type_aliases import (
    RecurrentDictRolloutBufferSamples,
    RecurrentRolloutBufferSamples,
    RNNStates,
)
from stable_baselines3.common.buffers import DictRolloutBuffer, RolloutBuffer
from stable_baselines3.common.env_util import make_vec_env
from torch import nn

from sb3_stpn import StpnPPO
from sb3_stpn.common.policies import StpnActorCriticPolicy

SAMPLE_FIELDS = (
    "observations",
    "actions",
    "old_values",
    "old_log_prob",
    "advantages",
    "returns",
    "lstm_states",
    "episode_starts",
    "mask",
)
OBSERVATIONS = spaces.Box(-1.0, 1.0, (3,))
HIDDEN = 5


def changed(what: str, adapt: str) -> str:
    """The failure message: which sb3-contrib changed what, and which part of sb3_stpn has to follow."""
    return (
        f"sb3-contrib {sb3_contrib.__version__} changed {what}; sb3_stpn is tested with sb3-contrib 2.9 "
        f"(pyproject.toml): adapt {adapt} or pin sb3-contrib to 2.9"
    )


def parameter_names(function: Callable[..., Any]) -> list[str]:
    return [name for name in inspect.signature(function).parameters if name != "self"]


def stpn_policy(**kwargs: Any) -> StpnActorCriticPolicy:
    """A small STPN policy; a construction failure is reported as a contract change."""
    try:
        return StpnActorCriticPolicy(OBSERVATIONS, spaces.Discrete(2), lambda _: 1e-3, stpn_hidden_size=HIDDEN, **kwargs)
    except Exception as error:
        pytest.fail(changed(f"RecurrentActorCriticPolicy's construction ({error!r})", "StpnActorCriticPolicy.__init__"))


def test_process_sequence_is_a_static_method_with_lstm_arguments() -> None:
    process = inspect.getattr_static(RecurrentActorCriticPolicy, "_process_sequence", None)
    assert isinstance(process, staticmethod), changed(
        "RecurrentActorCriticPolicy._process_sequence (no longer a staticmethod)", "StpnActorCriticPolicy._process_sequence"
    )
    names = parameter_names(RecurrentActorCriticPolicy._process_sequence)
    assert names == ["features", "lstm_states", "episode_starts", "lstm"], changed(
        f"the arguments of RecurrentActorCriticPolicy._process_sequence to {names}", "StpnActorCriticPolicy._process_sequence"
    )


@pytest.mark.parametrize(
    ("memory_kwargs", "critic_memory"),
    [
        (dict(enable_critic_stpn=True), "critic"),
        (dict(enable_critic_stpn=False, shared_stpn=True), "actor"),
        (dict(enable_critic_stpn=False), None),
    ],
    ids=["critic_stpn", "shared_stpn", "linear_critic"],
)
def test_inherited_sequence_methods_reach_the_stpn_through_the_aliases(
    memory_kwargs: dict[str, bool], critic_memory: str | None
) -> None:
    """forward, evaluate_actions, get_distribution and predict_values run the STPNs via lstm_actor / lstm_critic."""
    th.manual_seed(0)
    policy = stpn_policy(**memory_kwargs)
    memories = {policy.stpn_actor: "actor", policy.stpn_critic: "critic"}
    used: list[str] = []
    process = policy._process_sequence

    def spy(features: th.Tensor, state: tuple, episode_starts: th.Tensor, memory: nn.Module) -> Any:
        used.append(memories.get(memory, type(memory).__name__))
        return process(features, state, episode_starts, memory)

    policy._process_sequence = spy
    n_envs = 2
    observations, starts, states = th.rand(n_envs, 3), th.zeros(n_envs), policy.initial_state(n_envs)
    critic = [critic_memory] if critic_memory == "critic" else []
    calls: dict[str, tuple[Callable[[], Any], list[str]]] = {
        "forward": (lambda: policy(observations, states, starts), ["actor", *critic]),
        "evaluate_actions": (
            lambda: policy.evaluate_actions(observations, th.zeros(n_envs), states, starts),
            ["actor", *critic],
        ),
        "get_distribution": (lambda: policy.get_distribution(observations, states.pi, starts), ["actor"]),
        "predict_values": (
            lambda: policy.predict_values(observations, states.vf, starts),
            [critic_memory] * bool(critic_memory),
        ),
    }
    for method, (call, expected) in calls.items():
        used.clear()
        try:
            call()
        except Exception as error:
            pytest.fail(changed(f"RecurrentActorCriticPolicy.{method} ({error!r})", "StpnActorCriticPolicy's aliases"))
        assert used == expected, changed(
            f"how RecurrentActorCriticPolicy.{method} runs the memory (self._process_sequence on "
            f"lstm_actor / lstm_critic / shared_lstm): it ran {used}, expected {expected}",
            "StpnActorCriticPolicy's aliases lstm_actor, lstm_critic and shared_lstm",
        )
    _, _, _, new_states = policy(observations, states, starts)
    assert isinstance(new_states, RNNStates) and new_states.pi[1].shape == states.pi[1].shape, changed(
        "the state RecurrentActorCriticPolicy.forward returns", "StpnActorCriticPolicy.initial_state"
    )


def test_heads_are_sized_by_lstm_output_dim() -> None:
    first_layer = next(module for module in stpn_policy().mlp_extractor.policy_net if isinstance(module, nn.Linear))
    assert first_layer.in_features == HIDDEN, changed(
        "what RecurrentActorCriticPolicy._build_mlp_extractor sizes the heads by (it read lstm_output_dim)",
        "StpnActorCriticPolicy.__init__ (lstm_output_dim)",
    )


def test_lstm_policy_keeps_its_memory_in_lstm_actor() -> None:
    policy = RecurrentActorCriticPolicy(OBSERVATIONS, spaces.Discrete(2), lambda _: 1e-3, lstm_hidden_size=4)
    assert isinstance(getattr(policy, "lstm_actor", None), nn.LSTM), changed(
        "where RecurrentActorCriticPolicy keeps its LSTM (lstm_actor)", "sb3_stpn.common.policies.actor_memory"
    )


def test_state_and_sample_tuples() -> None:
    assert RNNStates._fields == ("pi", "vf"), changed(f"RNNStates's fields to {RNNStates._fields}", "the STPN policy's states")
    for samples in (RecurrentRolloutBufferSamples, RecurrentDictRolloutBufferSamples):
        assert samples._fields == SAMPLE_FIELDS, changed(
            f"{samples.__name__}'s fields to {samples._fields}", "SequenceStateStorage._get_sequences"
        )


@pytest.mark.parametrize(
    ("recurrent_buffer", "base_buffer"),
    [(RecurrentRolloutBuffer, RolloutBuffer), (RecurrentDictRolloutBuffer, DictRolloutBuffer)],
)
def test_recurrent_buffers_extend_sb3_buffers_with_lstm_states(recurrent_buffer: type, base_buffer: type) -> None:
    """The STPN buffers subclass sb3-contrib's (RecurrentPPO asserts it) but run SB3's base methods."""
    assert issubclass(recurrent_buffer, base_buffer), changed(
        f"{recurrent_buffer.__name__}'s base class", "sb3_stpn.common.buffers (its _base_buffer)"
    )
    add = inspect.signature(recurrent_buffer.add).parameters.get("lstm_states")
    assert add is not None and add.kind is inspect.Parameter.KEYWORD_ONLY, changed(
        f"{recurrent_buffer.__name__}.add's lstm_states keyword", "SequenceStateStorage.add"
    )
    assert parameter_names(recurrent_buffer.get) == ["batch_size"], changed(
        f"{recurrent_buffer.__name__}.get's arguments", "SequenceStateStorage.get"
    )


def test_recurrent_ppo_accepts_every_stpn_ppo_argument() -> None:
    missing = set(parameter_names(StpnPPO.__init__)) - {"sequence_length"} - set(parameter_names(RecurrentPPO.__init__))
    assert not missing, changed(f"RecurrentPPO.__init__, which no longer takes {sorted(missing)}", "StpnPPO.__init__")


def test_rollout_and_update_carry_the_stpn_state() -> None:
    """RecurrentPPO's collect_rollouts and train carry _last_lstm_states, slice it per env at timeouts, and feed it
    to the buffer's add and back from its samples, whatever its shape."""
    n_envs, n_steps = 2, 4
    # Episodes cut at 3 steps: collect_rollouts bootstraps the truncated ones from their env's critic state
    env = make_vec_env("CartPole-v1", n_envs=n_envs, env_kwargs=dict(max_episode_steps=3), seed=0)
    model = StpnPPO(
        "MlpStpnPolicy",
        env,
        n_steps=n_steps,
        batch_size=n_steps,
        n_epochs=1,
        seed=0,
        policy_kwargs=dict(stpn_hidden_size=HIDDEN),
    )
    state_shapes = [part.shape for part in model.policy.initial_state(n_envs).pi]
    added: list[RNNStates] = []
    valued: list[tuple[th.Size, ...]] = []
    evaluated: list[RNNStates] = []
    buffer_add, predict_values, evaluate_actions = (
        model.rollout_buffer.add,
        model.policy.predict_values,
        model.policy.evaluate_actions,
    )

    def add(*args: Any, lstm_states: RNNStates, **kwargs: Any) -> None:
        added.append(RNNStates(*(tuple(part.clone() for part in states) for states in lstm_states)))
        buffer_add(*args, lstm_states=lstm_states, **kwargs)

    def values(obs: th.Tensor, lstm_states: tuple, episode_starts: th.Tensor) -> th.Tensor:
        valued.append(tuple(part.shape for part in lstm_states))
        return predict_values(obs, lstm_states, episode_starts)

    def evaluate(obs: th.Tensor, actions: th.Tensor, lstm_states: RNNStates, episode_starts: th.Tensor) -> tuple:
        evaluated.append(lstm_states)
        return evaluate_actions(obs, actions, lstm_states, episode_starts)

    model.rollout_buffer.add, model.policy.predict_values, model.policy.evaluate_actions = add, values, evaluate
    model.learn(n_steps * n_envs)

    adapt = "StpnPPO and sb3_stpn.common.buffers"
    assert len(added) == n_steps, changed("how collect_rollouts calls rollout_buffer.add(..., lstm_states=...)", adapt)
    assert [part.shape for part in added[0].pi] == state_shapes, changed("the state collect_rollouts stores", adapt)
    assert all(not part.any() for part in added[0].pi) and added[1].pi[1].any(), changed(
        "how collect_rollouts carries _last_lstm_states (the first step starts from StpnPPO's zero state, "
        "the next from the state the policy returned)",
        adapt,
    )
    single_env = tuple(th.Size((*shape[:1], 1, *shape[2:])) for shape in state_shapes)
    assert single_env in valued, changed(
        f"the timeout bootstrap's critic state (predict_values got states of shapes {valued})", adapt
    )
    assert evaluated and evaluated[0].pi[1].shape[2:] == state_shapes[1][2:], changed(
        "the states train passes to evaluate_actions (rollout_data.lstm_states)", adapt
    )
    assert [part.shape for part in model.last_stpn_states.pi] == state_shapes, changed(
        "where RecurrentPPO keeps the carried state (_last_lstm_states)", "StpnPPO.last_stpn_states"
    )
    assert "_last_lstm_states" in model._excluded_save_params(), changed(
        "RecurrentPPO's save exclusions (_last_lstm_states)", "StpnPPO (its carried STPN states would be saved)"
    )
