"""StpnDiagnosticsCallback writes its tags to TensorBoard during short learns of StpnPPO and RecurrentPPO."""

from pathlib import Path

import pytest
from sb3_contrib import RecurrentPPO
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from sb3_stpn import StpnPPO
from sb3_stpn.common.callbacks import StpnDiagnosticsCallback
from sb3_stpn.common.policies import LAYER_STPN_SETTINGS
from tests.helpers import read_events

SHORT = dict(n_steps=32, batch_size=32, n_epochs=1, seed=0)
PLASTICITY_SCALARS = ("stpn/mean_abs_F", "stpn/depressed_fraction")
HISTOGRAMS = ("stpn/weight_lambda", "stpn/weight_gamma")


@pytest.mark.parametrize("plastic_bias", [False, True])
def test_stpn_ppo_logs_energy_plasticity_and_histograms(tmp_path: Path, plastic_bias: bool) -> None:
    model = StpnPPO(
        "MlpStpnPolicy",
        "CartPole-v1",
        policy_kwargs=dict(stpn_hidden_size=8, stpn_kwargs=dict(plastic_bias=plastic_bias)),
        tensorboard_log=str(tmp_path),
        **SHORT,
    )
    model.learn(64, callback=StpnDiagnosticsCallback())
    events = read_events(tmp_path)
    scalars = set(events.Tags()["scalars"])
    assert {"stpn/energy_per_step", *PLASTICITY_SCALARS} <= scalars
    assert set(HISTOGRAMS) <= set(events.Tags()["histograms"])
    # One point per rollout
    energy = [event.value for event in events.Scalars("stpn/energy_per_step")]
    assert len(energy) == 2 and all(value > 0 for value in energy)
    assert all(0 <= event.value <= 1 for event in events.Scalars("stpn/depressed_fraction"))
    assert all(event.value > 0 for event in events.Scalars("stpn/mean_abs_F"))
    # Recording is switched off for the PPO updates
    assert not model.policy.stpn_actor.record_energy


def test_recurrent_ppo_logs_energy_only(tmp_path: Path) -> None:
    model = RecurrentPPO(
        "MlpLstmPolicy", "CartPole-v1", policy_kwargs=dict(lstm_hidden_size=8), tensorboard_log=str(tmp_path), **SHORT
    )
    model.learn(64, callback=StpnDiagnosticsCallback())
    events = read_events(tmp_path)
    energy = [event.value for event in events.Scalars("stpn/energy_per_step")]
    assert len(energy) == 2 and all(value > 0 for value in energy)
    assert not set(PLASTICITY_SCALARS) & set(events.Tags()["scalars"])
    assert not model.policy.lstm_actor._forward_hooks


def _learn_logging(tmp_path: Path, stpn_kwargs: dict) -> EventAccumulator:
    model = StpnPPO(
        "MlpStpnPolicy",
        "CartPole-v1",
        policy_kwargs=dict(stpn_hidden_size=8, stpn_kwargs=stpn_kwargs),
        tensorboard_log=str(tmp_path),
        **SHORT,
    )
    model.learn(96, callback=StpnDiagnosticsCallback())
    return read_events(tmp_path)


def _values(events: EventAccumulator, tag: str) -> list[float]:
    return [event.value for event in events.Scalars(tag)]


def test_plasticity_statistics_and_update_sizes_are_logged(tmp_path: Path) -> None:
    events = _learn_logging(tmp_path / "paper", LAYER_STPN_SETTINGS)  # the paper's model, whose F grows fast
    assert all(value > 0 for value in _values(events, "stpn/F_over_W") + _values(events, "stpn/critic_F_over_W"))
    lambdas = [_values(events, f"stpn/weight_lambda_{statistic}") for statistic in ("min", "mean", "max")]
    assert all(low <= mean <= high for low, mean, high in zip(*lambdas, strict=True))
    # An update size needs a rollout before and after an update: from the second rollout on
    for group in ("weight_lambda", "weight_gamma", "weight", "other"):
        sizes = _values(events, f"stpn/update_{group}")
        assert len(sizes) == 2 and all(size > 0 for size in sizes), group
    # Slowed a hundredfold, the rates move (relative to their size) far less than the paper's do
    slowed = _learn_logging(tmp_path / "slowed", {**LAYER_STPN_SETTINGS, "gamma_lr_scale": 0.01})
    assert max(_values(slowed, "stpn/update_weight_gamma")) < 0.1 * min(_values(events, "stpn/update_weight_gamma"))
    # A critic's stored decays, 1 / scale times their acting size, do not swamp the size of the other parameters' update
    slow_decays = _learn_logging(tmp_path / "slow_decays", {**LAYER_STPN_SETTINGS, "lambda_lr_scale": 0.01})
    assert min(_values(slow_decays, "stpn/update_other")) > 0.1 * min(_values(events, "stpn/update_other"))


def test_plasticity_free_twin_logs_no_plasticity_and_zero_fast_weights(tmp_path: Path) -> None:
    events = _learn_logging(tmp_path, {"plastic": False})
    scalars = set(events.Tags()["scalars"])
    assert _values(events, "stpn/F_over_W") == [0.0, 0.0, 0.0]
    assert "stpn/update_weight" in scalars
    assert not any("lambda" in tag or "gamma" in tag for tag in scalars | set(events.Tags()["histograms"]))


@pytest.mark.parametrize("max_grad_norm", [0.5, 1e-3])
def test_gradient_norms_are_those_ppo_clips(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, max_grad_norm: float) -> None:
    """The logged norms match what PPO's own clip call sees, per update: the whole gradient and its plasticity part."""
    import statistics
    from collections import defaultdict

    import torch as th

    model = StpnPPO(
        "MlpStpnPolicy",
        "CartPole-v1",
        policy_kwargs=dict(stpn_hidden_size=8, stpn_kwargs=dict(plastic_bias=True)),
        tensorboard_log=str(tmp_path),
        **{**SHORT, "n_epochs": 3},
        max_grad_norm=max_grad_norm,
    )
    plasticity = [p for name, p in model.policy.named_parameters() if name.endswith(("_lambda", "_gamma"))]
    seen: dict[int, list[tuple[float, float]]] = defaultdict(list)  # by the steps trained before the update
    clip = th.nn.utils.clip_grad_norm_

    def spy(parameters, max_norm, *args, **kwargs):
        part = th.linalg.vector_norm(th.stack([th.linalg.vector_norm(p.grad) for p in plasticity])).item()
        total = clip(parameters, max_norm, *args, **kwargs).item()
        seen[model.num_timesteps].append((total, part))
        return total

    monkeypatch.setattr(th.nn.utils, "clip_grad_norm_", spy)
    model.learn(96, callback=StpnDiagnosticsCallback())
    events = read_events(tmp_path)
    # Logged at the start of rollouts 2 and 3, each over the gradient steps of the update before it
    updates = [seen[number] for number in sorted(seen)][:2]
    assert len(plasticity) == 8 and len(seen) == 3 and all(len(update) == 3 for update in updates)
    for tag, expected in (
        ("stpn/grad_norm", [statistics.median(total for total, _ in update) for update in updates]),
        ("stpn/grad_norm_plasticity", [statistics.median(part for _, part in update) for update in updates]),
        ("stpn/clipped_fraction", [sum(total > max_grad_norm for total, _ in update) / 3 for update in updates]),
    ):
        assert _values(events, tag) == pytest.approx(expected, rel=1e-5), tag
    assert all(0 < part < total for update in updates for total, part in update)
    if max_grad_norm < 0.01:
        assert _values(events, "stpn/clipped_fraction") == [1.0, 1.0]
