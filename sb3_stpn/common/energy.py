"""Synaptic-transmission energy of recurrent layers, comparable between STPN and LSTM/RNN baselines.

``sb3_stpn/ops/stpn/README.md`` (Energy) counts voltage squared times conductance: at every step and for every
sample, ``E_t = sum_ik z_{t,k}^2 |W_ik|`` with ``z_t = [x_t, h_{t-1}]``. The STPN layer computes
its own (plastic, normalised) version when ``STPN.record_energy`` is set; this module computes the
same sum over the fixed weights of a torch ``nn.LSTM``/``nn.GRU``/``nn.RNN`` (all gates' input and
hidden weights, biases excluded as for the STPN) and records the actor's energy of an SB3 recurrent
policy, STPN or LSTM, during rollouts.
"""

from typing import Any

import torch as th
from torch import nn
from torch.utils.hooks import RemovableHandle

from sb3_stpn.common.policies import actor_memory
from sb3_stpn.common.stpn import STPN


def _check_single_layer(rnn: nn.RNNBase) -> None:
    """The energy needs every layer's presynaptic input; torch exposes it only for one plain layer."""
    if rnn.num_layers != 1 or rnn.bidirectional or rnn.proj_size:
        raise ValueError("Energy is defined here for single-layer, unidirectional RNNs without projection")


def rnn_energy(rnn: nn.RNNBase, x: th.Tensor, h_prev: th.Tensor) -> th.Tensor:
    """
    Energy of one step of a single-layer ``nn.LSTM``/``nn.GRU``/``nn.RNN``.

    :param x: Inputs ``x_t``, shape (..., I).
    :param h_prev: Hidden outputs of the previous step ``h_{t-1}``, shape (..., H).
    :return: ``sum_k x_k^2 sum_i |W_ih[i, k]| + sum_k h_k^2 sum_i |W_hh[i, k]|`` over all gates, shape (...).
    """
    _check_single_layer(rnn)
    with th.no_grad():
        input_conductance = rnn.get_parameter("weight_ih_l0").abs().sum(dim=0)
        hidden_conductance = rnn.get_parameter("weight_hh_l0").abs().sum(dim=0)
        return x.square() @ input_conductance + h_prev.square() @ hidden_conductance


def rnn_sequence_energy(rnn: nn.RNNBase, x: th.Tensor, hx: Any, output: th.Tensor) -> th.Tensor:
    """
    Energy at every step of one call ``output, _ = rnn(x, hx)``, rebuilding ``h_{t-1}`` from ``hx`` and ``output``.

    :param x: The call's input, (T, B, I), (B, T, I) with ``batch_first`` or unbatched (T, I).
    :param hx: The call's initial state: ``(h0, c0)`` for an LSTM, ``h0`` otherwise, or None for zeros.
    :param output: The call's output sequence, laid out like ``x``.
    :return: Energy (T, B), time first whatever the layout (T for unbatched input).
    """
    if not isinstance(x, th.Tensor):
        raise TypeError("Energy recording does not support PackedSequence inputs")
    time_axis = 1 if rnn.batch_first and x.dim() == 3 else 0
    if hx is None:
        first_h = th.zeros_like(output.select(time_axis, 0))
    else:
        first_h = (hx[0] if isinstance(rnn, nn.LSTM) else hx)[0]  # drop the layer axis
    previous = output.narrow(time_axis, 0, output.shape[time_axis] - 1)
    h_prev = th.cat([first_h.unsqueeze(time_axis), previous], dim=time_axis)
    energy = rnn_energy(rnn, x, h_prev)
    return energy.transpose(0, 1) if time_axis == 1 else energy


class ActorEnergyRecorder:
    """
    Records the energy of a recurrent SB3 policy's actor memory at each of its forward calls.

    Works with :class:`~sb3_stpn.common.policies.StpnActorCriticPolicy` (switches on the layer's
    ``record_energy``) and sb3-contrib's ``RecurrentActorCriticPolicy`` (a forward hook on its
    single-layer LSTM). During a RecurrentPPO rollout the actor runs once per step on
    (1, n_envs, features) from the carried state, already reset by sb3-contrib where an episode
    starts, so :attr:`last_energy` after a step is that step's energy per environment.
    Call :meth:`close` to stop recording.

    :param policy: The policy whose actor memory (:func:`~sb3_stpn.common.policies.actor_memory`) is recorded.
    """

    def __init__(self, policy: nn.Module):
        memory = actor_memory(policy)
        if not isinstance(memory, (STPN, nn.RNNBase)):
            raise TypeError(f"Expected a recurrent policy with an STPN or torch RNN actor, got {type(policy).__name__}")
        self.memory = memory
        self._hook_energy: th.Tensor | None = None
        self._handle: RemovableHandle | None = None
        if isinstance(memory, STPN):
            memory.record_energy = True
        else:
            _check_single_layer(memory)
            self._handle = memory.register_forward_hook(self._hook, with_kwargs=True)

    def _hook(self, rnn: nn.RNNBase, args: tuple, kwargs: dict[str, Any], output: tuple) -> None:
        x = args[0] if args else kwargs["input"]
        hx = args[1] if len(args) > 1 else kwargs.get("hx")
        self._hook_energy = rnn_sequence_energy(rnn, x, hx, output[0])

    @property
    def last_energy(self) -> th.Tensor | None:
        """Energy (T, B) of the actor's last forward call since recording started, or None before one."""
        return self.memory.last_energy if isinstance(self.memory, STPN) else self._hook_energy

    def close(self) -> None:
        """Stop recording, so that later forward calls (e.g. PPO updates) pay nothing."""
        if isinstance(self.memory, STPN):
            self.memory.record_energy = False
        elif self._handle is not None:
            self._handle.remove()
            self._handle = None
