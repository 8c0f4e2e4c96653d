"""fit_observation_to_sb3: what ``policy: auto`` adds so that the `default` entry fits any env SB3 can handle."""

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from stable_baselines3.common.env_checker import check_env

from sb3_stpn import StpnPPO
from sb3_stpn.zoo.exp_manager import ZooError
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
    "space", [spaces.Text(5), spaces.Tuple((spaces.Discrete(2), spaces.Discrete(3))), spaces.Dict({"text": spaces.Text(5)})]
)
def test_unusable_space_names_the_wrapper(space: spaces.Space) -> None:
    with pytest.raises(ZooError, match=r"add an env_wrapper .*FlattenObservation"):
        fit_observation_to_sb3(SpaceEnv(space))
