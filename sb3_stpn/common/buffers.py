"""Rollout buffers that keep the STPN state only where a training sequence starts.

An STPN carries ``H x K`` synaptic floats per environment, far more than an LSTM's ``2 H``.
sb3-contrib stores the recurrent state at every step; here each environment's rollout is cut
into fixed sequences of ``sequence_length`` steps and only the state entering each sequence is
kept. Inside a sequence the STPN resets itself at episode starts, so training replays every
sequence from its stored state exactly as it ran during collection, with no padding at episode
boundaries (only the last sequence is padded when ``sequence_length`` does not divide ``n_steps``).

Memory for the states, per rollout: ``ceil(n_steps / sequence_length) * n_envs * (H + H * K) * 4``
bytes, twice when the critic has its own STPN.
"""

from collections.abc import Callable, Generator

import numpy as np
import torch as th
from gymnasium import spaces
from sb3_contrib.common.recurrent.buffers import RecurrentDictRolloutBuffer, RecurrentRolloutBuffer
from sb3_contrib.common.recurrent.type_aliases import (
    RecurrentDictRolloutBufferSamples,
    RecurrentRolloutBufferSamples,
    RNNStates,
)
from stable_baselines3.common.buffers import DictRolloutBuffer, RolloutBuffer

from sb3_stpn.common.utils import check_positive_int


class SequenceStateStorage:
    """
    Mixin: cuts each environment's rollout into sequences and stores the STPN state entering each.

    The host class names the SB3 buffer it extends (``_base_buffer``) and how to gather its
    observations, the one piece that depends on whether they are an array or a dict.
    """

    _base_buffer: type[RolloutBuffer] | type[DictRolloutBuffer]
    buffer_size: int
    n_envs: int
    pos: int
    full: bool
    device: th.device
    sequence_length: int
    n_sequences_per_env: int
    store_critic_state: bool
    # (n_sequences, n_envs, *state_shape) tensors, allocated on the first add()
    actor_states: tuple[th.Tensor, ...] | None
    critic_states: tuple[th.Tensor, ...] | None

    def __init__(
        self,
        buffer_size: int,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        device: th.device | str = "auto",
        gae_lambda: float = 1,
        gamma: float = 0.99,
        n_envs: int = 1,
        sequence_length: int | None = None,
        store_critic_state: bool = True,
    ):
        sequence_length = buffer_size if sequence_length is None else sequence_length
        sequence_length = check_positive_int(sequence_length, "sequence_length", " (or None for n_steps)")
        self.sequence_length = min(sequence_length, buffer_size)
        self.n_sequences_per_env = -(-buffer_size // self.sequence_length)
        self.store_critic_state = store_critic_state
        self.actor_states = self.critic_states = None
        # sb3-contrib's recurrent buffers (the parents, so that RecurrentPPO accepts this one) store
        # the LSTM state at every step: their constructor, reset and add are bypassed for the plain SB3 ones
        self._base_buffer.__init__(self, buffer_size, observation_space, action_space, device, gae_lambda, gamma, n_envs)  # type: ignore[arg-type]

    def reset(self) -> None:
        self._base_buffer.reset(self)  # type: ignore[arg-type]  # the host class is that buffer

    def _stored(self, states: tuple[th.Tensor, ...] | None, stpn_state: tuple[th.Tensor, ...]) -> tuple[th.Tensor, ...]:
        """Write ``stpn_state`` (layer axis first) into the slot of the sequence starting now."""
        if states is None:
            states = tuple(
                th.empty((self.n_sequences_per_env, *part.shape[1:]), dtype=part.dtype, device=self.device)
                for part in stpn_state
            )
        sequence = self.pos // self.sequence_length
        for storage, part in zip(states, stpn_state, strict=True):
            storage[sequence].copy_(part[0])
        return states

    def add(self, *args, lstm_states: RNNStates, **kwargs) -> None:
        """Add one step (SB3's arguments); ``lstm_states`` is the STPN state the policy had before it."""
        if self.pos % self.sequence_length == 0:
            self.actor_states = self._stored(self.actor_states, lstm_states.pi)
            if self.store_critic_state:
                self.critic_states = self._stored(self.critic_states, lstm_states.vf)
        self._base_buffer.add(self, *args, **kwargs)  # type: ignore[arg-type]

    def memory_bytes(self) -> int:
        """Bytes taken by the stored STPN states."""
        stored = [self.actor_states, self.critic_states]
        return sum(part.numel() * part.element_size() for states in stored if states is not None for part in states)

    def _gather_observations(self, gather: Callable[[np.ndarray], th.Tensor]) -> th.Tensor | dict[str, th.Tensor]:
        """The observations of the gathered steps: an array's or each key's (the host class knows which)."""
        raise NotImplementedError

    def get(self, batch_size: int | None = None) -> Generator[RecurrentRolloutBufferSamples, None, None]:
        """
        Yield minibatches of whole sequences in random order.

        ``batch_size`` counts steps, as in RecurrentPPO: each minibatch holds
        ``max(1, batch_size // sequence_length)`` sequences, and more where that gives fewer than
        two valid steps (see :meth:`_minibatches`).
        """
        assert self.full, "Rollout buffer must be full before sampling from it"
        n_sequences = self.n_sequences_per_env * self.n_envs
        per_batch = n_sequences if batch_size is None else max(1, batch_size // self.sequence_length)
        for sequence_ids in self._minibatches(np.random.permutation(n_sequences), per_batch):
            yield self._get_sequences(sequence_ids)

    def _minibatches(self, order: np.ndarray, per_batch: int) -> list[np.ndarray]:
        """
        Cut ``order`` into minibatches of ``per_batch`` sequences, each with at least two valid steps.

        RecurrentPPO normalises the advantages by their std over a minibatch's valid steps, which is NaN
        for a single step: that happens to a minibatch holding only a rollout's 1-step last sequence
        (``n_steps % sequence_length == 1``), or ``sequence_length`` and ``batch_size`` 1. Such a
        minibatch takes the next sequences in, and what is left over at the end joins the last one.
        """
        last_length = self.buffer_size - (self.n_sequences_per_env - 1) * self.sequence_length
        is_last = (order % self.n_sequences_per_env) == self.n_sequences_per_env - 1
        valid_steps = np.where(is_last, last_length, self.sequence_length)
        minibatches: list[np.ndarray] = []
        start = 0
        for end in range(per_batch, len(order) + per_batch, per_batch):
            end = min(end, len(order))
            if int(np.sum(valid_steps[start:end])) >= 2:
                minibatches.append(order[start:end])
                start = end
        if start < len(order):
            if minibatches:
                minibatches[-1] = np.concatenate([minibatches[-1], order[start:]])
            else:
                minibatches.append(order[start:])
        return minibatches

    def _get_sequences(self, sequence_ids: np.ndarray) -> RecurrentRolloutBufferSamples:
        """Gather the sequences ``sequence_ids`` (numbered sequence-major within each env) as padded (n_seq * T) batches."""
        env_ids, sequence_in_env = np.divmod(sequence_ids, self.n_sequences_per_env)
        steps = sequence_in_env[:, None] * self.sequence_length + np.arange(self.sequence_length)[None, :]
        valid = steps < self.buffer_size
        # Padding repeats the last step; the mask removes it from the losses
        steps = np.minimum(steps, self.buffer_size - 1)
        envs = np.broadcast_to(env_ids[:, None], steps.shape)

        def gather(array: np.ndarray) -> th.Tensor:
            # (n_steps, n_envs, *shape) -> (n_seq * T, *shape)
            picked = array[steps, envs]
            return self.to_torch(picked.reshape((-1, *picked.shape[2:])))  # type: ignore[attr-defined]

        state_index = th.as_tensor(sequence_in_env, device=self.device), th.as_tensor(env_ids, device=self.device)

        def states_of(states: tuple[th.Tensor, ...] | None) -> tuple[th.Tensor, th.Tensor]:
            assert states is not None, "add() stores the states before get()"
            return states[0][state_index].unsqueeze(0), states[1][state_index].unsqueeze(0)

        actor_states = states_of(self.actor_states)
        critic_states = states_of(self.critic_states) if self.store_critic_state else actor_states
        return self._samples_type(  # type: ignore[attr-defined]
            observations=self._gather_observations(gather),
            # Float actions, as SB3's own buffers give them (sb3-contrib's keep the action dtype and break MultiBinary)
            actions=gather(self.actions).float(),  # type: ignore[attr-defined]
            old_values=gather(self.values),  # type: ignore[attr-defined]
            old_log_prob=gather(self.log_probs),  # type: ignore[attr-defined]
            advantages=gather(self.advantages),  # type: ignore[attr-defined]
            returns=gather(self.returns),  # type: ignore[attr-defined]
            lstm_states=RNNStates(actor_states, critic_states),
            episode_starts=gather(self.episode_starts),  # type: ignore[attr-defined]
            mask=self.to_torch(valid.reshape(-1).astype(np.float32)),  # type: ignore[attr-defined]
        )


# The mixin's add (the STPN state by keyword) and get (sequence samples) differ from the SB3 buffers' by design
class StpnRolloutBuffer(SequenceStateStorage, RecurrentRolloutBuffer):  # type: ignore[misc]
    """Rollout buffer for array observations that stores STPN states per training sequence."""

    _base_buffer = RolloutBuffer
    _samples_type = RecurrentRolloutBufferSamples

    def _gather_observations(self, gather: Callable[[np.ndarray], th.Tensor]) -> th.Tensor:
        return gather(self.observations)


class StpnDictRolloutBuffer(SequenceStateStorage, RecurrentDictRolloutBuffer):  # type: ignore[misc]
    """Rollout buffer for Dict observations that stores STPN states per training sequence."""

    _base_buffer = DictRolloutBuffer
    _samples_type = RecurrentDictRolloutBufferSamples

    def _gather_observations(self, gather: Callable[[np.ndarray], th.Tensor]) -> dict[str, th.Tensor]:
        return {key: gather(obs) for key, obs in self.observations.items()}
