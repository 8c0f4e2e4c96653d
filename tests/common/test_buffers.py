"""The rollout buffer hands training exactly the STPN states the policy had while collecting."""

import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from sb3_contrib.common.recurrent.type_aliases import RNNStates
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.envs import SimpleMultiObsEnv

from sb3_stpn import StpnPPO
from sb3_stpn.common.buffers import StpnDictRolloutBuffer, StpnRolloutBuffer


class RecordStates(BaseCallback):
    """Records, at every rollout step, the state the policy entered that step with."""

    def _on_rollout_start(self) -> None:
        self.states = []

    def _on_step(self) -> bool:
        # collect_rollouts replaces _last_lstm_states only after this call: it is the state before the step
        self.states.append(tuple(part.clone() for part in self.model._last_lstm_states.pi + self.model._last_lstm_states.vf))
        return True


def collect_one_rollout(model: StpnPPO) -> list[tuple[th.Tensor, ...]]:
    recorder = RecordStates()
    _, callback = model._setup_learn(model.n_steps * model.n_envs, recorder)
    callback.on_training_start(locals(), globals())
    # Two rollouts so that the second starts from a carried, non-zero state
    for _ in range(2):
        assert model.collect_rollouts(model.env, callback, model.rollout_buffer, model.n_steps)
    return recorder.states


@pytest.mark.parametrize("sequence_length", [5, 8, None])
def test_stored_start_states_are_the_collected_ones(sequence_length: int | None) -> None:
    # 20 steps: with sequence_length 8 the last sequence is padded
    model = StpnPPO(
        "MlpStpnPolicy", make_vec_env("CartPole-v1", n_envs=3), n_steps=20, sequence_length=sequence_length, seed=0
    )
    states = collect_one_rollout(model)
    buffer = model.rollout_buffer
    assert isinstance(buffer, StpnRolloutBuffer)
    length = sequence_length or 20
    assert buffer.actor_states[1].shape[0] == -(-20 // length)
    for sequence in range(buffer.n_sequences_per_env):
        recorded = states[sequence * length]
        stored = buffer.actor_states + buffer.critic_states
        for part, recorded_part in zip(stored, recorded, strict=True):
            th.testing.assert_close(part[sequence], recorded_part[0], rtol=0, atol=0)
    assert buffer.actor_states[1].abs().sum() > 0


@pytest.mark.parametrize("sequence_length", [4, 7])
def test_replaying_stored_sequences_reproduces_the_rollout(sequence_length: int) -> None:
    """Training sees the very log-probabilities and values the policy produced while acting."""
    model = StpnPPO(
        "MlpStpnPolicy", make_vec_env("CartPole-v1", n_envs=2), n_steps=30, sequence_length=sequence_length, seed=1
    )
    collect_one_rollout(model)
    buffer = model.rollout_buffer
    # Episodes must start inside sequences for this to test the resets
    assert buffer.episode_starts[1:].sum() > 0
    replayed = 0
    for batch in buffer.get(batch_size=3 * sequence_length):
        with th.no_grad():
            values, log_prob, _ = model.policy.evaluate_actions(
                batch.observations, batch.actions.long().flatten(), batch.lstm_states, batch.episode_starts
            )
        mask = batch.mask > 0
        th.testing.assert_close(log_prob[mask], batch.old_log_prob[mask], rtol=1e-5, atol=1e-5)
        th.testing.assert_close(values.flatten()[mask], batch.old_values[mask], rtol=1e-5, atol=1e-5)
        replayed += int(mask.sum())
    assert replayed == 60


def test_minibatches_cover_every_sequence_once() -> None:
    model = StpnPPO("MlpStpnPolicy", make_vec_env("CartPole-v1", n_envs=2), n_steps=12, sequence_length=5, seed=2)
    collect_one_rollout(model)
    batches = list(model.rollout_buffer.get(batch_size=10))
    # 3 sequences per env (5, 5, 2 steps), 2 per minibatch
    assert [len(batch.mask) for batch in batches] == [10, 10, 10]
    assert sum(int(batch.mask.sum()) for batch in batches) == 24
    observations = th.cat([batch.observations[batch.mask > 0] for batch in batches])
    stored = th.as_tensor(model.rollout_buffer.observations.reshape(-1, 4))
    assert sorted(map(tuple, observations.tolist())) == sorted(map(tuple, stored.tolist()))


def test_dict_observations_use_the_dict_buffer() -> None:
    model = StpnPPO("MultiInputStpnPolicy", SimpleMultiObsEnv(), n_steps=12, sequence_length=4, batch_size=8, seed=0)
    collect_one_rollout(model)
    assert isinstance(model.rollout_buffer, StpnDictRolloutBuffer)
    batch = next(model.rollout_buffer.get(8))
    assert set(batch.observations) == {"img", "vec"}
    assert batch.observations["vec"].shape[0] == 8
    assert batch.lstm_states.pi[1].shape[1] == 2


def test_state_memory_follows_the_documented_formula() -> None:
    hidden, n_envs, n_steps, sequence_length = 16, 4, 64, 16
    model = StpnPPO(
        "MlpStpnPolicy",
        make_vec_env("CartPole-v1", n_envs=n_envs),
        n_steps=n_steps,
        sequence_length=sequence_length,
        policy_kwargs=dict(stpn_hidden_size=hidden),
    )
    collect_one_rollout(model)
    presynaptic = 4 + hidden
    expected = 2 * (n_steps // sequence_length) * n_envs * (hidden + hidden * presynaptic) * 4
    assert model.rollout_buffer.memory_bytes() == expected


def test_invalid_sequence_length_is_rejected() -> None:
    with pytest.raises(ValueError, match="sequence_length"):
        StpnPPO("MlpStpnPolicy", "CartPole-v1", sequence_length=0)


def test_padded_steps_are_masked() -> None:
    model = StpnPPO("MlpStpnPolicy", "CartPole-v1", n_steps=10, sequence_length=4, seed=0)
    collect_one_rollout(model)
    batch = model.rollout_buffer._get_sequences(np.array([2]))
    np.testing.assert_array_equal(batch.mask.numpy(), [1, 1, 0, 0])


def test_states_and_samples_stay_on_the_buffer_device() -> None:
    """
    StpnPPO gives the buffer the policy's device (CUDA in real use): on the meta device, where nothing
    else lives, a state or sample made anywhere else would show.
    """
    n_envs, hidden, presynaptic = 2, 5, 8
    buffer = StpnRolloutBuffer(4, spaces.Box(-1, 1, (3,)), spaces.Discrete(2), device="meta", n_envs=n_envs, sequence_length=2)
    state = th.zeros(1, n_envs, hidden, device="meta"), th.zeros(1, n_envs, hidden, presynaptic, device="meta")
    for _ in range(4):
        # SB3 copies values and log-probabilities to numpy: CPU tensors
        buffer.add(
            np.zeros((n_envs, 3)), np.zeros((n_envs, 1)), np.zeros(n_envs), np.zeros(n_envs), th.zeros(n_envs),
            th.zeros(n_envs), lstm_states=RNNStates(state, state),
        )  # fmt: skip
    buffer.compute_returns_and_advantage(th.zeros(n_envs), np.zeros(n_envs))
    stored = [*buffer.actor_states, *buffer.critic_states]
    assert [tuple(part.shape) for part in stored[:2]] == [(2, n_envs, hidden), (2, n_envs, hidden, presynaptic)]
    for batch in buffer.get(batch_size=4):
        sampled = [batch.observations, batch.actions, batch.advantages, batch.episode_starts, batch.mask]
        sampled += [*batch.lstm_states.pi, *batch.lstm_states.vf]
        assert all(tensor.device.type == "meta" for tensor in stored + sampled)


def filled_buffer(n_steps: int, n_envs: int, sequence_length: int) -> StpnRolloutBuffer:
    """A full buffer whose observation at each step is its (step, env) number, to tell the steps apart."""
    buffer = StpnRolloutBuffer(
        n_steps, spaces.Box(-1, 1, (1,)), spaces.Discrete(2), n_envs=n_envs, sequence_length=sequence_length
    )
    state = th.zeros(1, n_envs, 2), th.zeros(1, n_envs, 2, 3)
    for step in range(n_steps):
        observation = (step * n_envs + np.arange(n_envs))[:, None]
        buffer.add(
            observation, np.zeros((n_envs, 1)), np.zeros(n_envs), np.zeros(n_envs), th.zeros(n_envs),
            th.zeros(n_envs), lstm_states=RNNStates(state, state),
        )  # fmt: skip
    return buffer


@pytest.mark.parametrize("n_envs", [1, 2, 3])
@pytest.mark.parametrize("n_steps", [2, 5, 8, 9, 17, 32])
def test_every_minibatch_can_normalise_its_advantages(n_steps: int, n_envs: int) -> None:
    """
    RecurrentPPO divides by the advantages' std over a minibatch's valid steps, NaN for one step (and then every
    weight): over all sequence lengths and batch sizes, each minibatch has two valid steps and each step comes once.
    """
    for sequence_length in range(1, n_steps + 2):
        buffer = filled_buffer(n_steps, n_envs, sequence_length)
        for batch_size in [*range(1, 2 * n_steps + 2), None]:
            batches = list(buffer.get(batch_size))
            valid = [batch.observations[batch.mask > 0].flatten() for batch in batches]
            assert min(len(steps) for steps in valid) >= 2, (sequence_length, batch_size)
            assert sorted(th.cat(valid).tolist()) == list(range(n_steps * n_envs))


def test_a_one_step_remainder_does_not_turn_the_weights_into_nan() -> None:
    """The issue's repro: n_steps 32 and sequence_length 31 leave 1-step sequences, one per minibatch of 8 steps."""
    env = make_vec_env("CartPole-v1", n_envs=2)
    model = StpnPPO("MlpStpnPolicy", env, n_steps=32, sequence_length=31, batch_size=8, n_epochs=1, seed=0)
    model.learn(128)
    assert all(th.isfinite(parameter).all() for parameter in model.policy.parameters())
