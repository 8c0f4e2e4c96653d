"""fit_observation_to_sb3: what ``policy: auto`` adds so that the `default` entry fits any env SB3 can handle."""

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from sb3_contrib import RecurrentPPO
from stable_baselines3.common.env_checker import check_env

from sb3_stpn import StpnPPO
from sb3_stpn.cli import train_main
from sb3_stpn.zoo.errors import ZooError
from sb3_stpn.zoo.wrappers import fit_observation_to_sb3


class SpaceEnv(gym.Env):
    """Observations sampled from a given space."""

    action_space = spaces.Discrete(2)

    def __init__(self, observation_space: spaces.Space):
        self.observation_space = observation_space

    def reset(self, seed: int | None = None, options: dict | None = None) -> tuple[object, dict]:
        super().reset(seed=seed)
        self.observation_space.seed(seed)
        return self.observation_space.sample(), {}

    def step(self, action: int) -> tuple[object, float, bool, bool, dict]:
        return self.observation_space.sample(), 0.0, False, False, {}


SMALL_IMAGE = spaces.Box(0, 255, (7, 7, 3), np.uint8)


def test_dict_with_text_and_small_image_fits() -> None:
    env = SpaceEnv(spaces.Dict({"mission": spaces.Text(10), "image": SMALL_IMAGE, "direction": spaces.Discrete(4)}))
    with pytest.warns(UserWarning, match="'mission' \\(Text\\)"):
        fitted = fit_observation_to_sb3(env)
    assert fitted.observation_space == spaces.Dict(
        {"image": spaces.Box(0.0, 1.0, (7, 7, 3), np.float32), "direction": spaces.Discrete(4)}
    )
    observation, _ = fitted.reset(seed=0)
    raw, _ = env.reset(seed=0)
    np.testing.assert_allclose(observation["image"], raw["image"] / 255.0, rtol=1e-6)
    check_env(fitted, warn=False)
    StpnPPO("MultiInputStpnPolicy", fitted, n_steps=8, batch_size=8, n_epochs=1).learn(8)


def test_small_image_becomes_a_vector_and_large_one_stays() -> None:
    assert fit_observation_to_sb3(env := SpaceEnv(spaces.Box(0, 255, (36, 36, 1), np.uint8))) is env
    fitted = fit_observation_to_sb3(SpaceEnv(SMALL_IMAGE))
    assert fitted.observation_space == spaces.Box(0.0, 1.0, (7, 7, 3), np.float32)
    StpnPPO("MlpStpnPolicy", fitted, n_steps=8, batch_size=8, n_epochs=1).learn(8)


def test_usable_spaces_are_left_alone() -> None:
    for space in (spaces.Box(-1, 1, (3,)), spaces.Discrete(3), spaces.Dict({"x": spaces.Box(-1, 1, (2,))})):
        assert fit_observation_to_sb3(env := SpaceEnv(space)) is env


@pytest.mark.parametrize(
    ("space", "width", "parts"),
    [(spaces.MultiDiscrete([2, 3]), 5, 2), (spaces.Tuple((spaces.Discrete(2), spaces.MultiDiscrete([3, 2]))), 7, 3)],
)
def test_multidiscrete_and_tuples_become_one_hot_boxes_both_memories_take(space: spaces.Space, width: int, parts: int) -> None:
    """sb3-contrib's LSTM failed on a MultiDiscrete observation (SB3's feature size is a numpy int there), and a Tuple
    (POPGym's Autoencode) needed an entry of its own; one-hot parts are what SB3 feeds its policies for MultiDiscrete."""
    fitted = fit_observation_to_sb3(SpaceEnv(space))
    assert isinstance(fitted.observation_space, spaces.Box) and fitted.observation_space.shape == (width,)
    observation, _ = fitted.reset(seed=0)
    assert set(np.unique(observation)) <= {0, 1} and observation.sum() == parts  # one hot entry a discrete part
    StpnPPO("MlpStpnPolicy", fitted, n_steps=8, batch_size=8, n_epochs=1).learn(8)
    RecurrentPPO("MlpLstmPolicy", fitted, n_steps=8, batch_size=8, n_epochs=1).learn(8)


@pytest.mark.parametrize("space", [spaces.Text(5), spaces.Tuple((spaces.Text(3),)), spaces.Dict({"text": spaces.Text(5)})])
def test_unusable_space_names_the_wrapper(space: spaces.Space) -> None:
    with pytest.raises(ZooError, match=r"add an env_wrapper .*FlattenObservation"):
        fit_observation_to_sb3(SpaceEnv(space))


@pytest.mark.parametrize("algo", ["ppo_lstm", "ppo_stpn"])
def test_both_memories_train_on_a_multidiscrete_observation_through_the_default_entry(
    algo: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The baseline must run wherever the STPN runs: ppo_lstm crashed on a MultiDiscrete observation, with an error
    that named an entry the env does not have (it used `default`)."""
    monkeypatch.chdir(tmp_path)
    if "MultiDiscreteObservation-v0" not in gym.registry:
        gym.register("MultiDiscreteObservation-v0", lambda: SpaceEnv(spaces.MultiDiscrete([4, 3])), max_episode_steps=10)
    tiny = ["-n", "16", "--eval-freq", "-1", "--hyperparams", "n_envs:1", "n_steps:8", "batch_size:8", "n_epochs:1"]
    train_main(["--algo", algo, "--env", "MultiDiscreteObservation-v0", *tiny])
    assert list((tmp_path / "logs" / algo).rglob("MultiDiscreteObservation-v0.zip"))
    with pytest.raises(SystemExit) as exit_info:
        train_main(["--algo", algo, "--env", "MultiDiscreteObservation-v0", *tiny, "n_stepz:8"])
    assert "fix the default entry of" in str(exit_info.value.code)
