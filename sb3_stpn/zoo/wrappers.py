"""The env wrapper that ``policy: auto`` adds, so that the ``default`` config entry fits any env SB3 can handle.

SB3's vectorised envs and policies take Box, Discrete, MultiDiscrete and MultiBinary observations, or a
Dict of them; a Box image goes through NatureCNN, whose three convolutions need at least 36x36 pixels.
MiniGrid's observation, for example, is a Dict with a Text ``mission`` and a 7x7 ``image``.
"""

import warnings
from typing import TypeGuard

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.wrappers import FilterObservation, FlattenObservation, TransformObservation
from stable_baselines3.common.preprocessing import is_image_space, is_image_space_channels_first

from sb3_stpn.zoo.errors import ZooError

SB3_SPACES = (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)
NATURE_CNN_MIN_SIDE = 36  # kernels 8, 4, 3 with strides 4, 2, 1


def is_small_image(space: spaces.Space) -> TypeGuard[spaces.Box]:
    """Whether SB3 would treat ``space`` as an image (a Box) that NatureCNN cannot take (smaller than 36x36)."""
    if not isinstance(space, spaces.Box) or not is_image_space(space):
        return False
    height, width = space.shape[1:] if is_image_space_channels_first(space) else space.shape[:2]
    return min(height, width) < NATURE_CNN_MIN_SIDE


def _unit_box(space: spaces.Space) -> spaces.Box:
    """A small uint8 image as SB3 would normalise it, in [0, 1] floats: policies flatten it instead of using a CNN."""
    assert is_small_image(space)
    return spaces.Box(0.0, 1.0, space.shape, np.float32)


def _to_unit(image: np.ndarray) -> np.ndarray:
    return (np.asarray(image, dtype=np.float32) / 255.0).astype(np.float32)


def fit_observation_to_sb3(env: gym.Env) -> gym.Env:
    """
    Wrap ``env`` so that SB3's default policies take its observations; ``env`` itself if they already do.

    Dict keys of other spaces (Text, Sequence, Graph, nested Dict or Tuple) are dropped, with a warning,
    and images too small for NatureCNN become [0, 1] float arrays, which the policies flatten. A Tuple of
    Box, Discrete, MultiDiscrete or MultiBinary spaces (POPGym's Autoencode), and a MultiDiscrete, become one flat
    Box with a one-hot block per discrete part (gymnasium's ``FlattenObservation``): for a MultiDiscrete that is
    what SB3 feeds its policies anyway, but sb3-contrib's LSTM policy fails on SB3's numpy-integer feature size for
    it. An observation that stays unusable raises a :class:`ZooError` naming the wrapper to write.
    """
    space = env.observation_space
    if isinstance(space, spaces.MultiDiscrete) or (
        isinstance(space, spaces.Tuple) and all(isinstance(part, SB3_SPACES) for part in space.spaces)
    ):
        return FlattenObservation(env)
    if isinstance(space, spaces.Dict):
        kept = [key for key, subspace in space.spaces.items() if isinstance(subspace, SB3_SPACES)]
        if not kept:
            raise ZooError(_unusable(env, space))
        if len(kept) < len(space.spaces):
            dropped = ", ".join(f"{key!r} ({type(space[key]).__name__})" for key in space.spaces if key not in kept)
            warnings.warn(f"dropping the observation keys SB3 policies cannot take: {dropped}", stacklevel=2)
            env = FilterObservation(env, kept)
        small = [key for key in kept if is_small_image(space[key])]
        if small:
            fitted = spaces.Dict({key: _unit_box(space[key]) if key in small else space[key] for key in kept})
            env = TransformObservation(env, lambda obs: {**obs, **{key: _to_unit(obs[key]) for key in small}}, fitted)
        return env
    if is_small_image(space):
        return TransformObservation(env, _to_unit, _unit_box(space))
    if isinstance(space, SB3_SPACES):
        return env
    raise ZooError(_unusable(env, space))


def _unusable(env: gym.Env, space: spaces.Space) -> str:
    return (
        f"SB3 policies cannot take the observation space {space} of {env.spec.id if env.spec else env}; add an "
        "env_wrapper to its config entry that turns it into a Box (e.g. gymnasium.wrappers.FlattenObservation for "
        "Tuples, minigrid.wrappers.ImgObsWrapper for MiniGrid)"
    )
