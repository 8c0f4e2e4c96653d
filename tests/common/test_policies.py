"""actor_memory: one accessor for the actor's memory of STPN, sb3-contrib LSTM and memoryless policies."""

from gymnasium import spaces
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
from stable_baselines3.common.policies import ActorCriticPolicy
from torch import nn

from sb3_stpn import STPN
from sb3_stpn.common.policies import StpnActorCriticPolicy, actor_memory

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
