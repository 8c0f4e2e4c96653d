"""StpnPPO: learning runs with every policy and action space, save/load, predict and bad input."""

import importlib.util
import re

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from sb3_contrib import RecurrentPPO
from stable_baselines3 import PPO
from stable_baselines3.common.envs import (
    IdentityEnv,
    IdentityEnvBox,
    IdentityEnvMultiBinary,
    IdentityEnvMultiDiscrete,
    SimpleMultiObsEnv,
)
from stable_baselines3.common.evaluation import evaluate_policy

from sb3_stpn import StpnPPO
from sb3_stpn.common.policies import LAYER_STPN_SETTINGS, StpnActorCriticPolicy
from sb3_stpn.ops.stpn import KERNEL_ENV

TINY = dict(n_steps=32, batch_size=16, n_epochs=2, sequence_length=8, seed=0, policy_kwargs=dict(stpn_hidden_size=8))


class ImageEnv(gym.Env):
    """A tiny image-observation env (NatureCNN needs at least 36x36)."""

    observation_space = spaces.Box(0, 255, (36, 36, 1), dtype=np.uint8)
    action_space = spaces.Discrete(2)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.steps = 0
        return self.observation_space.sample(), {}

    def step(self, action):
        self.steps += 1
        return self.observation_space.sample(), float(action), False, self.steps >= 10, {}


@pytest.mark.parametrize(
    "env",
    [
        IdentityEnv(4, ep_length=10),
        IdentityEnvBox(ep_length=10),
        IdentityEnvMultiDiscrete(2, ep_length=10),
        IdentityEnvMultiBinary(3, ep_length=10),
    ],
    ids=["discrete", "box", "multidiscrete", "multibinary"],
)
def test_learns_with_every_action_space(env: gym.Env) -> None:
    model = StpnPPO("MlpStpnPolicy", env, **TINY).learn(96)
    assert model.num_timesteps == 96
    assert isinstance(model.policy, StpnActorCriticPolicy)


def test_cnn_policy_on_images() -> None:
    StpnPPO(
        "CnnStpnPolicy",
        ImageEnv(),
        **{**TINY, "policy_kwargs": dict(stpn_hidden_size=8, features_extractor_kwargs=dict(features_dim=16))},
    ).learn(64)


def test_multi_input_policy_on_dict_observations() -> None:
    env = SimpleMultiObsEnv(random_start=True)
    model = StpnPPO("MultiInputStpnPolicy", env, **TINY).learn(64)
    obs = env.reset()[0]
    actions, state = model.predict({key: value[None] for key, value in obs.items()})
    assert actions.shape == (1,)
    assert state[1].shape == (1, 1, 8, model.policy.features_dim + 8)


@pytest.mark.parametrize(
    "policy_kwargs",
    [
        dict(enable_critic_stpn=False),
        dict(enable_critic_stpn=False, shared_stpn=True),
        dict(stpn_kwargs=dict(recurrent=False, clamp=1.0, rule="oja", plastic_bias=True, scalar_plasticity=True)),
        dict(use_sde=True),
    ],
    ids=["no-critic-stpn", "shared", "variants", "sde"],
)
def test_policy_options(policy_kwargs: dict) -> None:
    use_sde = policy_kwargs.pop("use_sde", False)
    env = IdentityEnvBox(ep_length=10) if use_sde else IdentityEnv(3, ep_length=10)
    model = StpnPPO(
        "MlpStpnPolicy", env, use_sde=use_sde, **{**TINY, "policy_kwargs": dict(stpn_hidden_size=8, **policy_kwargs)}
    )
    model.learn(64)
    critic_stored = model.rollout_buffer.critic_states is not None
    assert critic_stored == (model.policy.stpn_critic is not None)


def test_conflicting_stpn_options_are_rejected() -> None:
    with pytest.raises(ValueError, match="shared_stpn"):
        StpnPPO("MlpStpnPolicy", "CartPole-v1", policy_kwargs=dict(shared_stpn=True))


def test_lstm_policy_is_rejected() -> None:
    with pytest.raises(ValueError, match="needs an STPN policy"):
        StpnPPO(RecurrentPPO.policy_aliases["MlpLstmPolicy"], "CartPole-v1")


def test_nan_observations_raise() -> None:
    model = StpnPPO("MlpStpnPolicy", "CartPole-v1", **TINY)
    with pytest.raises(ValueError, match="NaN or inf"):
        model.predict(np.full((1, 4), np.nan, dtype=np.float32))


def test_predict_with_no_observations_says_so() -> None:
    model = StpnPPO("MlpStpnPolicy", "CartPole-v1", **TINY)
    with pytest.raises(ValueError, match="predict got 0 observations"):
        model.predict(np.zeros((0, 4), dtype=np.float32))


@pytest.mark.parametrize("n_state_envs", [1, 5])
def test_predict_with_a_state_of_another_batch_raises(n_state_envs: int) -> None:
    model = StpnPPO("MlpStpnPolicy", "CartPole-v1", **TINY)
    _, state = model.predict(np.zeros((n_state_envs, 4), dtype=np.float32))
    received = re.escape(f"shapes ((1, {n_state_envs}, 8), (1, {n_state_envs}, 8, 12)) for 3 observation")
    with pytest.raises(ValueError, match=received):
        model.predict(np.zeros((3, 4), dtype=np.float32), state)
    with pytest.raises(ValueError, match="state=None to start from zero"):
        model.predict(np.zeros((3, 4), dtype=np.float32), (state[0][0], state[1][0]))


def test_predict_stops_with_a_clear_error_when_the_state_diverges() -> None:
    """A plastic bias with bias_lambda > 1 and no bound on the decays (the paper's model) grows to inf in about 220
    steps: predict raises instead of acting."""
    stpn_kwargs = {**LAYER_STPN_SETTINGS, "plastic_bias": True}
    kwargs = {**TINY, "policy_kwargs": dict(stpn_hidden_size=8, stpn_kwargs=stpn_kwargs)}
    model = StpnPPO("MlpStpnPolicy", "CartPole-v1", **kwargs)
    with th.no_grad():
        model.policy.stpn_actor.bias_lambda.fill_(1.5)
        model.policy.stpn_actor.bias_gamma.fill_(0.5)
    obs, state = np.zeros((2, 4), dtype=np.float32), None
    with pytest.raises(ValueError, match=r"F became inf or NaN.*lambda_max"):
        for _ in range(400):
            _, state = model.predict(obs, state)


def test_predict_carries_state_and_resets_on_episode_start() -> None:
    model = StpnPPO("MlpStpnPolicy", "CartPole-v1", **TINY)
    obs = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    _, state = model.predict(obs)
    h, fast = state
    assert h.shape == (1, 3, 8) and fast.shape == (1, 3, 8, 4 + 8)
    assert np.abs(fast).sum() > 0
    _, carried = model.predict(obs, state, episode_start=np.zeros(3))
    _, restarted = model.predict(obs, state, episode_start=np.ones(3))
    np.testing.assert_allclose(restarted[1], fast, rtol=1e-6)
    assert not np.allclose(carried[1], fast)


def test_save_load_gives_identical_actions_and_states(tmp_path) -> None:
    model = StpnPPO("MlpStpnPolicy", "CartPole-v1", **TINY).learn(64)
    model.save(tmp_path / "model")
    loaded = StpnPPO.load(tmp_path / "model")
    obs = np.random.default_rng(1).normal(size=(5, 4)).astype(np.float32)
    state = loaded_state = None
    starts = np.array([1, 0, 0, 1, 0])
    for step in range(4):
        actions, state = model.predict(obs + step, state, starts, deterministic=True)
        loaded_actions, loaded_state = loaded.predict(obs + step, loaded_state, starts, deterministic=True)
        np.testing.assert_array_equal(actions, loaded_actions)
        for part, loaded_part in zip(state, loaded_state, strict=True):
            np.testing.assert_array_equal(part, loaded_part)
    assert loaded.sequence_length == model.sequence_length


def test_loading_another_algorithms_file_fails_clearly(tmp_path) -> None:
    PPO("MlpPolicy", "CartPole-v1", n_steps=16).save(tmp_path / "ppo")
    with pytest.raises(ValueError, match="needs an STPN policy"):
        StpnPPO.load(tmp_path / "ppo")


def test_loading_a_mismatched_policy_fails_clearly(tmp_path) -> None:
    StpnPPO("MlpStpnPolicy", "CartPole-v1", **TINY).save(tmp_path / "model")
    with pytest.raises(ValueError, match="do not fit this STPN policy"):
        StpnPPO.load(tmp_path / "model", custom_objects={"policy_kwargs": dict(stpn_hidden_size=16)})


def test_evaluate_policy_and_callbacks_work_unchanged(tmp_path) -> None:
    steps = []

    def count(_locals, _globals) -> bool:
        steps.append(1)
        return True

    model = StpnPPO("MlpStpnPolicy", "CartPole-v1", tensorboard_log=str(tmp_path), **TINY)
    model.learn(64, callback=count, progress_bar=True)
    assert len(steps) == 64
    assert any(path.name.startswith("events.out.tfevents") for path in tmp_path.rglob("*"))
    mean_reward, _ = evaluate_policy(model, model.get_env(), n_eval_episodes=2)
    assert mean_reward > 0


@pytest.mark.skipif(not th.cuda.is_available(), reason="needs a CUDA GPU")
def test_trains_and_predicts_on_cuda(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every tensor on the GPU (policy, carried and stored states, kernel), with the CPU's results."""
    if importlib.util.find_spec("triton") is not None:
        # Forced: a CPU tensor reaching the kernel would then fail the run instead of taking another path
        monkeypatch.setenv(KERNEL_ENV, "triton")
    model = StpnPPO("MlpStpnPolicy", "CartPole-v1", device="cuda", **TINY).learn(64)
    carried, buffer = model._last_lstm_states, model.rollout_buffer
    states = [*carried.pi, *carried.vf, *buffer.actor_states, *buffer.critic_states]
    assert all(tensor.is_cuda for tensor in [*model.policy.parameters(), *states])
    model.save(tmp_path / "model")
    obs = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    _, state = StpnPPO.load(tmp_path / "model", device="cuda").predict(obs, deterministic=True)
    monkeypatch.setenv(KERNEL_ENV, "auto")
    _, cpu_state = StpnPPO.load(tmp_path / "model", device="cpu").predict(obs, deterministic=True)
    for part, cpu_part in zip(state, cpu_state, strict=True):
        np.testing.assert_allclose(part, cpu_part, rtol=1e-4, atol=1e-5)


def test_a_one_step_rollout_cannot_be_normalised() -> None:
    with pytest.raises(ValueError, match="normalize_advantage needs at least 2 steps per rollout"):
        StpnPPO("MlpStpnPolicy", "CartPole-v1", n_steps=1)
    StpnPPO("MlpStpnPolicy", "CartPole-v1", n_steps=1, normalize_advantage=False)


def test_asking_for_cuda_without_it_warns(monkeypatch: pytest.MonkeyPatch) -> None:
    """SB3 falls back to the CPU in silence; an explicit request for CUDA that cannot be met says so."""
    monkeypatch.setattr(th.cuda, "is_available", lambda: False)
    with pytest.warns(UserWarning, match="'cuda' asks for CUDA, but torch sees no CUDA GPU here: running on the CPU"):
        model = StpnPPO("MlpStpnPolicy", "CartPole-v1", n_steps=8, device="cuda")
    assert model.device.type == "cpu"


def test_loading_with_stpn_kwargs_that_add_parameters_fails_clearly(tmp_path) -> None:
    """A norm_gain the saved model lacks: torch's raw 'Missing key(s)' becomes the one-line fix."""
    StpnPPO("MlpStpnPolicy", "CartPole-v1", **TINY).save(tmp_path / "model")
    extra = {"policy_kwargs": dict(stpn_kwargs=dict(norm_gain=True))}
    with pytest.raises(ValueError, match=r"do not fit this STPN policy \(Missing key\(s\).*norm_gain.*policy_kwargs it was"):
        StpnPPO.load(tmp_path / "model", custom_objects=extra)


def test_predict_with_an_episode_start_of_the_wrong_length_fails_clearly() -> None:
    model = StpnPPO("MlpStpnPolicy", "CartPole-v1", **TINY)
    observations = np.zeros((3, 4), dtype=np.float32)
    with pytest.raises(ValueError, match=r"episode_start of 2 value\(s\) for 3 observation\(s\)"):
        model.predict(observations, episode_start=np.ones(2, dtype=bool))
    actions, _ = model.predict(observations, episode_start=np.ones(3, dtype=bool))
    assert actions.shape == (3,)


@pytest.mark.parametrize("sequence_length", [2.5, "8", True, 0])
def test_a_sequence_length_that_is_no_positive_integer_fails_clearly(sequence_length: object) -> None:
    with pytest.raises(ValueError, match=f"sequence_length must be a positive integer .*got {sequence_length!r}"):
        StpnPPO("MlpStpnPolicy", "CartPole-v1", n_steps=16, sequence_length=sequence_length)
