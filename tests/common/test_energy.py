"""Energy (sb3_stpn/ops/stpn/README.md, Energy) of the STPN layer and of torch RNN baselines, checked by hand."""

import math

import pytest
import torch as th
from gymnasium import spaces
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
from torch import nn

from sb3_stpn import STPN
from sb3_stpn.common.energy import ActorEnergyRecorder, rnn_energy, rnn_sequence_energy
from sb3_stpn.common.policies import StpnActorCriticPolicy

# A tiny STPNr: H=2 neurons, I=1 input, so z = [x, h1, h2] and K=3
WEIGHT = [[3.0, 0.0, 4.0], [0.0, -1.0, 0.0]]
BIAS = [0.1, -0.2]
LAMBDA = [[0.5, 0.9, 0.1], [0.3, 0.7, 0.2]]
GAMMA = [[0.4, -0.3, 0.2], [-0.5, 0.6, 0.1]]
INPUTS = [2.0, -1.0, 0.5]


def tiny_stpn(normalize: bool) -> STPN:
    layer = STPN(1, 2, normalize=normalize)
    with th.no_grad():
        for name, value in [("weight", WEIGHT), ("bias", BIAS), ("weight_lambda", LAMBDA), ("weight_gamma", GAMMA)]:
            getattr(layer, name).copy_(th.tensor(value))
    return layer


def hand_energy(normalize: bool) -> list[float]:
    """The spec's recurrence and energy, one scalar at a time."""
    h, fast, energies = [0.0, 0.0], [[0.0] * 3 for _ in range(2)], []
    for x in INPUTS:
        z = [x, *h]
        efficacy = [[WEIGHT[i][k] + fast[i][k] for k in range(3)] for i in range(2)]
        norm = [math.sqrt(sum(g * g for g in row)) + 1e-16 if normalize else 1.0 for row in efficacy]
        energies.append(sum(z[k] ** 2 * abs(efficacy[i][k]) / norm[i] for i in range(2) for k in range(3)))
        h = [math.tanh(sum(efficacy[i][k] * z[k] for k in range(3)) / norm[i] + BIAS[i]) for i in range(2)]
        fast = [[LAMBDA[i][k] * fast[i][k] / norm[i] + GAMMA[i][k] * h[i] * z[k] for k in range(3)] for i in range(2)]
    return energies


@pytest.mark.parametrize("normalize", [True, False])
def test_stpn_energy_matches_hand_computation(normalize: bool) -> None:
    layer = tiny_stpn(normalize)
    layer.record_energy = True
    layer(th.tensor(INPUTS).view(-1, 1, 1))
    expected = hand_energy(normalize)
    # First step, F = 0 and h = 0: only x = 2 drives row 0 (|3| of norm 5) and row 1 (weight 0)
    assert expected[0] == pytest.approx(4 * 3 / 5 if normalize else 4 * 3)
    assert layer.last_energy.shape == (len(INPUTS), 1)
    assert layer.last_energy[:, 0].tolist() == pytest.approx(expected, rel=1e-5)


def test_recording_energy_does_not_change_stpn_forward() -> None:
    th.manual_seed(0)
    layer = STPN(3, 4)
    x = th.randn(5, 2, 3)
    starts = th.tensor([[0, 0], [0, 1], [0, 0], [1, 0], [0, 0]])
    plain_out, (plain_h, plain_f) = layer(x, episode_starts=starts)
    assert layer.last_energy is None
    layer.record_energy = True
    out, (h, fast) = layer(x, episode_starts=starts)
    assert th.equal(out, plain_out) and th.equal(h, plain_h) and th.equal(fast, plain_f)
    assert layer.last_energy.shape == (5, 2) and (layer.last_energy > 0).all()


def tiny_lstm() -> nn.LSTM:
    lstm = nn.LSTM(1, 1)
    with th.no_grad():
        lstm.weight_ih_l0.copy_(th.tensor([[1.0], [-2.0], [3.0], [-4.0]]))  # sum of |.| = 10
        lstm.weight_hh_l0.copy_(th.tensor([[0.5], [-0.5], [1.0], [-1.0]]))  # sum of |.| = 3
    return lstm


def test_lstm_energy_matches_hand_computation() -> None:
    lstm = tiny_lstm()
    x = th.tensor([2.0, -1.0]).view(2, 1, 1)
    h0 = th.tensor(0.5).view(1, 1, 1)
    output, _ = lstm(x, (h0, th.zeros(1, 1, 1)))
    h1 = output[0, 0, 0].item()
    expected = [2.0**2 * 10 + 0.5**2 * 3, (-1.0) ** 2 * 10 + h1**2 * 3]
    assert rnn_energy(lstm, x[0, 0], h0[0, 0]).item() == pytest.approx(expected[0])
    energy = rnn_sequence_energy(lstm, x, (h0, th.zeros(1, 1, 1)), output)
    assert energy.shape == (2, 1)
    assert energy[:, 0].tolist() == pytest.approx(expected)
    # No initial state means h0 = 0
    output, _ = lstm(x)
    assert rnn_sequence_energy(lstm, x, None, output)[0, 0].item() == pytest.approx(40.0)


def test_rnn_sequence_energy_handles_batch_first() -> None:
    th.manual_seed(0)
    time_first, batch_first = nn.RNN(3, 4), nn.RNN(3, 4, batch_first=True)
    batch_first.load_state_dict(time_first.state_dict())
    x, h0 = th.randn(5, 2, 3), th.randn(1, 2, 4)
    expected = rnn_sequence_energy(time_first, x, h0, time_first(x, h0)[0])
    x_bf = x.transpose(0, 1)
    assert th.allclose(rnn_sequence_energy(batch_first, x_bf, h0, batch_first(x_bf, h0)[0]), expected)


def test_multi_layer_rnn_is_rejected() -> None:
    with pytest.raises(ValueError, match="single-layer"):
        rnn_energy(nn.LSTM(2, 3, num_layers=2), th.zeros(2), th.zeros(3))


def lstm_policy(features_dim: int, hidden_size: int) -> RecurrentActorCriticPolicy:
    """An sb3-contrib LSTM policy on ``features_dim`` flat observations."""
    space = spaces.Box(-1.0, 1.0, (features_dim,))
    return RecurrentActorCriticPolicy(space, spaces.Discrete(2), lambda _: 1e-3, lstm_hidden_size=hidden_size)


def test_recorder_sees_sb3_contrib_resets_and_stops_on_close() -> None:
    th.manual_seed(0)
    policy = lstm_policy(3, 4)
    lstm = policy.lstm_actor
    recorder = ActorEnergyRecorder(policy)
    features, state = th.randn(2, 3), (th.randn(1, 2, 4), th.randn(1, 2, 4))
    starts = th.tensor([0.0, 1.0])
    # The rollout's call: one step for two envs, the second one starting an episode (state multiplied by 0)
    recorded_output, _ = RecurrentActorCriticPolicy._process_sequence(features, state, starts, lstm)
    h_prev = th.stack([state[0][0, 0], th.zeros(4)])
    assert recorder.last_energy.shape == (1, 2)
    assert th.allclose(recorder.last_energy[0], rnn_energy(lstm, features, h_prev))
    recorder.close()
    lstm(th.randn(1, 2, 3))
    assert th.allclose(recorder.last_energy[0], rnn_energy(lstm, features, h_prev))
    # Recording left the LSTM's outputs alone
    assert th.equal(recorded_output, RecurrentActorCriticPolicy._process_sequence(features, state, starts, lstm)[0])


def test_recorder_switches_stpn_recording() -> None:
    space = spaces.Box(-1.0, 1.0, (2,))
    policy = StpnActorCriticPolicy(space, spaces.Discrete(2), lambda _: 1e-3, stpn_hidden_size=3)
    recorder = ActorEnergyRecorder(policy)
    policy.stpn_actor(th.randn(4, 2, 2))
    assert recorder.last_energy.shape == (4, 2)
    recorder.close()
    assert not policy.stpn_actor.record_energy


def test_recorder_rejects_feed_forward_policies() -> None:
    with pytest.raises(TypeError):
        ActorEnergyRecorder(nn.Linear(2, 2))
