"""Actor-critic policies whose memory is an STPN layer instead of an LSTM."""

import inspect
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
from sb3_contrib.common.recurrent.type_aliases import RNNStates
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, CombinedExtractor, FlattenExtractor, NatureCNN
from stable_baselines3.common.type_aliases import Schedule
from torch import nn

from sb3_stpn.common.stpn import STPN, plasticity_parameter_ids

# What the policies change from the STPN layer's own defaults (the paper's model), and why (docs/plasticity.md, round
# 11): pre-update normalisation multiplies F by lambda / ||W_i + F_i|| per step, which exceeds 1 wherever lambda is
# above the row norm (about 0.6 at initialisation), so the paper's F grows to W's size within ~50 steps.
# retention_max=0.95 caps that factor at 0.95 (F keeps at most 95 % of itself per step, whatever W's size), and the
# decays and rates train at a tenth of the learning rate. On six POPGym tasks nobody tuned on it leads its
# plasticity-free twin over six seeds and is level with it on the three it was not chosen on
POLICY_STPN_DEFAULTS: dict[str, Any] = {"retention_max": 0.95, "lambda_lr_scale": 0.1, "gamma_lr_scale": 0.1}
# Every keyword setting of the STPN layer (not the sizes) with the layer's own default: the paper's model. A saved
# model acts with these where it recorded no value: before 0.2.0 the policies recorded only the settings they were
# given (the rest were the layer's defaults), and a setting added since a model was saved did not exist for it
LAYER_STPN_SETTINGS: dict[str, Any] = {
    name: parameter.default
    for name, parameter in inspect.signature(STPN).parameters.items()
    if parameter.default is not inspect.Parameter.empty
}


def stpn_settings(stpn_kwargs: dict[str, Any] | None, defaults: dict[str, Any] = POLICY_STPN_DEFAULTS) -> dict[str, Any]:
    """
    Every keyword setting of the policy's STPN layers (not the sizes): ``stpn_kwargs`` over ``defaults`` over the
    layer's own defaults. Saved with a model in full, so that it acts the same whatever later versions' defaults are.
    """
    return {**LAYER_STPN_SETTINGS, **defaults, **(stpn_kwargs or {})}


class StpnActorCriticPolicy(RecurrentActorCriticPolicy):
    """
    Recurrent actor-critic policy with STPN memory, a drop-in for sb3-contrib's LSTM policy.

    The features extractor feeds an STPN layer whose output feeds the usual ``net_arch`` heads.
    Its state is ``(h, F)`` with a leading layer axis of size 1, ``h`` (1, n_envs, H) and
    ``F`` (1, n_envs, H, K), laid out like an LSTM's ``(hidden, cell)`` so that sb3-contrib's
    ``RecurrentPPO`` rollout code (state carrying, resets, timeout bootstrap) drives it unchanged.
    The sequence methods (``forward``, ``evaluate_actions``, ...) are inherited: they hand whole
    sequences to :meth:`_process_sequence`, which runs the STPN once per sequence batch.

    The arguments are SB3's ``ActorCriticPolicy``'s, plus the STPN's:

    :param observation_space: Observation space.
    :param action_space: Action space.
    :param lr_schedule: Learning rate schedule (could be constant).
    :param net_arch: The specification of the policy and value networks, on top of the STPN output.
    :param activation_fn: Activation function of those networks.
    :param ortho_init: Whether to use orthogonal initialization.
    :param use_sde: Whether to use State Dependent Exploration.
    :param log_std_init: Initial value for the log standard deviation.
    :param full_std: Whether to use (n_features x n_actions) parameters for the std instead of only (n_features,)
        when using gSDE.
    :param use_expln: Use ``expln()`` instead of ``exp()`` to ensure a positive standard deviation (cf. the gSDE
        paper): it keeps the variance above zero and prevents it from growing too fast.
    :param squash_output: Whether to squash the output with a tanh, which keeps it within bounds when using gSDE.
    :param features_extractor_class: Features extractor to use (its features feed the STPN).
    :param features_extractor_kwargs: Keyword arguments to pass to the features extractor.
    :param share_features_extractor: If True, the features extractor is shared between the policy and value networks.
    :param normalize_images: Whether to normalize images, dividing by 255.0.
    :param optimizer_class: The optimizer to use, ``th.optim.Adam`` by default.
    :param optimizer_kwargs: Additional keyword arguments, excluding the learning rate, to pass to the optimizer.
    :param stpn_hidden_size: Number of STPN neurons ``H``.
    :param shared_stpn: One STPN for actor and critic (the critic's gradient does not reach it).
    :param enable_critic_stpn: A separate STPN for the critic (the default, as for the LSTM).
        With neither, the critic sees the features through a linear layer.
    :param stpn_kwargs: Passed to :class:`~sb3_stpn.STPN` (``recurrent``, ``normalize``, ``norm_time``,
        ``norm_gain``, ``clamp``, ``scalar_plasticity``, ``plastic_bias``, ``rule``, ``lambda_max``, ``retention_max``,
        ``lambda_init``, ``gamma_init``, ``plastic``, ``lambda_lr_scale``, ``gamma_lr_scale``), over the policies' own defaults
        (``POLICY_STPN_DEFAULTS``: ``retention_max=0.95, lambda_lr_scale=0.1, gamma_lr_scale=0.1``); a key given here
        wins, ``LAYER_STPN_SETTINGS`` is the paper's model.
    :param plasticity_optimizer_kwargs: Overrides of ``optimizer_kwargs`` for the STPN layers' decays and rates, which
        then form a parameter group of their own (None: one group). The decays' gradients start near 1e-11, far below
        the ``eps=1e-5`` SB3 gives Adam, which then barely moves them; ``dict(eps=1e-12)`` trains them at the
        learning rate Adam gives every other parameter.
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Schedule,
        net_arch: list[int] | dict[str, list[int]] | None = None,
        activation_fn: type[nn.Module] = nn.Tanh,
        ortho_init: bool = True,
        use_sde: bool = False,
        log_std_init: float = 0.0,
        full_std: bool = True,
        use_expln: bool = False,
        squash_output: bool = False,
        features_extractor_class: type[BaseFeaturesExtractor] = FlattenExtractor,
        features_extractor_kwargs: dict[str, Any] | None = None,
        share_features_extractor: bool = True,
        normalize_images: bool = True,
        optimizer_class: type[th.optim.Optimizer] = th.optim.Adam,
        optimizer_kwargs: dict[str, Any] | None = None,
        stpn_hidden_size: int = 64,
        shared_stpn: bool = False,
        enable_critic_stpn: bool = True,
        stpn_kwargs: dict[str, Any] | None = None,
        plasticity_optimizer_kwargs: dict[str, Any] | None = None,
    ):
        if shared_stpn and enable_critic_stpn:
            raise ValueError("Choose one of shared_stpn and enable_critic_stpn (or neither, for a feed-forward critic)")
        if shared_stpn and not share_features_extractor:
            raise ValueError("shared_stpn needs share_features_extractor=True")
        # Read by RecurrentActorCriticPolicy._build_mlp_extractor: the heads sit on the STPN output
        self.lstm_output_dim = stpn_hidden_size
        # The LSTM-building constructor of RecurrentActorCriticPolicy is skipped on purpose:
        # everything it adds besides the LSTMs is rebuilt below for the STPN.
        ActorCriticPolicy.__init__(
            self,
            observation_space,
            action_space,
            lr_schedule,
            net_arch,
            activation_fn,
            ortho_init,
            use_sde,
            log_std_init,
            full_std,
            use_expln,
            squash_output,
            features_extractor_class,
            features_extractor_kwargs,
            share_features_extractor,
            normalize_images,
            optimizer_class,
            optimizer_kwargs,
        )
        self.stpn_hidden_size = stpn_hidden_size
        self.shared_stpn = shared_stpn
        self.enable_critic_stpn = enable_critic_stpn
        self.stpn_kwargs = stpn_settings(stpn_kwargs)
        self.stpn_actor = STPN(self.features_dim, stpn_hidden_size, **self.stpn_kwargs)
        self.stpn_critic = STPN(self.features_dim, stpn_hidden_size, **self.stpn_kwargs) if enable_critic_stpn else None
        # Without a memory of its own, the critic maps features to the STPN output size
        self.critic = None if (shared_stpn or enable_critic_stpn) else nn.Linear(self.features_dim, stpn_hidden_size)
        if "lr" in (plasticity_optimizer_kwargs or {}):
            raise ValueError(
                "plasticity_optimizer_kwargs cannot set lr: SB3's learning-rate schedule sets it for every parameter "
                "group at each update; use stpn_kwargs' lambda_lr_scale and gamma_lr_scale instead"
            )
        self.plasticity_optimizer_kwargs = plasticity_optimizer_kwargs
        # The optimizer made by ActorCriticPolicy predates the STPN layers
        self.optimizer = self.optimizer_class(self._parameter_groups(), lr=lr_schedule(1), **self.optimizer_kwargs)  # type: ignore[call-arg]
        unknown = sorted(set(plasticity_optimizer_kwargs or {}) - set(self.optimizer.defaults))
        if unknown:
            raise ValueError(
                f"plasticity_optimizer_kwargs has {unknown}, which {self.optimizer_class.__name__} does not take: "
                f"use its own options ({', '.join(sorted(self.optimizer.defaults))})"
            )

    # Aliases for sb3-contrib only: the sequence methods inherited from RecurrentActorCriticPolicy address the
    # memory by its LSTM's names. sb3_stpn's own code uses stpn_actor, stpn_critic, shared_stpn or actor_memory().
    # (Read-only, and an STPN where sb3-contrib declares an LSTM: mypy's override errors are by design.)
    @property
    def lstm_actor(self) -> STPN:  # type: ignore[override]
        return self.stpn_actor

    @property
    def lstm_critic(self) -> STPN | None:  # type: ignore[override]
        return self.stpn_critic

    @property
    def shared_lstm(self) -> bool:  # type: ignore[override]
        return self.shared_stpn

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(
            stpn_hidden_size=self.stpn_hidden_size,
            shared_stpn=self.shared_stpn,
            enable_critic_stpn=self.enable_critic_stpn,
            stpn_kwargs=self.stpn_kwargs,
            plasticity_optimizer_kwargs=self.plasticity_optimizer_kwargs,
        )
        return data

    def _parameter_groups(self) -> list[dict[str, Any]]:
        """The optimizer's parameter groups: every parameter in one, or the STPN decays and rates in a second one
        with ``plasticity_optimizer_kwargs`` (the twin, which has none, keeps one group)."""
        plasticity_ids = plasticity_parameter_ids(self)
        if self.plasticity_optimizer_kwargs is None or not plasticity_ids:
            return [{"params": list(self.parameters())}]
        others = [parameter for parameter in self.parameters() if id(parameter) not in plasticity_ids]
        plasticity = [parameter for parameter in self.parameters() if id(parameter) in plasticity_ids]
        return [{"params": others}, {"params": plasticity, **self.plasticity_optimizer_kwargs}]

    def initial_state(self, n_envs: int) -> RNNStates:
        """
        Zero actor and critic states, as RecurrentPPO carries them.

        :param n_envs: Number of environments.
        """
        actor_state = self._with_layer_axis(self.stpn_actor.initial_state(n_envs))
        critic_state = self._with_layer_axis(self.stpn_critic.initial_state(n_envs)) if self.stpn_critic else actor_state
        return RNNStates(actor_state, critic_state)

    @staticmethod
    def _with_layer_axis(state: tuple[th.Tensor, th.Tensor]) -> tuple[th.Tensor, th.Tensor]:
        return state[0].unsqueeze(0), state[1].unsqueeze(0)

    @staticmethod
    def _process_sequence(  # type: ignore[override]
        features: th.Tensor,
        stpn_state: tuple[th.Tensor, th.Tensor],
        episode_starts: th.Tensor,
        stpn: STPN,
    ) -> tuple[th.Tensor, tuple[th.Tensor, th.Tensor]]:
        """
        Run the STPN over a batch of sequences in one call.

        :param features: (n_seq * T, features_dim), sequence-major as the rollout buffer pads them.
        :param stpn_state: ``(h, F)`` of shapes (1, n_seq, H) and (1, n_seq, H, K).
        :param episode_starts: (n_seq * T,): the STPN resets before the marked steps.
        :return: STPN outputs (n_seq * T, H) and the final state.
        """
        if not th.isfinite(features).all():
            raise ValueError(
                "The STPN got NaN or inf inputs, which would corrupt its synaptic state F for the rest of the episode: "
                "check the observations (SB3's VecCheckNan finds the step that makes them)"
            )
        n_seq = stpn_state[0].shape[1]
        features_sequence = features.reshape((n_seq, -1, stpn.input_size)).swapaxes(0, 1)
        episode_starts = episode_starts.reshape((n_seq, -1)).swapaxes(0, 1)
        output, (hidden, fast) = stpn(features_sequence, (stpn_state[0][0], stpn_state[1][0]), episode_starts)
        return th.flatten(output.transpose(0, 1), start_dim=0, end_dim=1), (hidden.unsqueeze(0), fast.unsqueeze(0))

    def predict(
        self,
        observation: np.ndarray | dict[str, np.ndarray],
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        """
        RecurrentPPO's ``predict`` contract: pass back the returned actor state ``(h, F)`` at the next call.

        :param observation: A batch of observations, of shape ``(n_envs, *obs_shape)``.
        :param state: The actor state ``(h, F)`` that the last call returned, or None to start every environment from
            the zero state.
        :param episode_start: One flag per environment, True where an episode starts (its state is reset), or None.
        :param deterministic: Whether to return the most likely action rather than a sample.
        :return: The actions and the actor state to pass back.
        """
        observation_tensor, _ = self.obs_to_tensor(observation)
        first = next(iter(observation_tensor.values())) if isinstance(observation_tensor, dict) else observation_tensor
        n_envs = first.shape[0]
        if n_envs == 0:
            raise ValueError("predict got 0 observations: pass at least one (a batch of shape (n_envs, *obs_shape))")
        if state is None:
            state = tuple(tensor.cpu().numpy() for tensor in self.initial_state(n_envs).pi)
        expected = tuple((1, n_envs, *shape) for shape in self.stpn_actor.state_shape)
        received = tuple(np.shape(part) for part in state)
        if received != expected:
            raise ValueError(
                f"predict got a state (h, F) of shapes {received} for {n_envs} observation(s), expected {expected}: "
                "pass the state predict returned for these environments, or state=None to start from zero"
            )
        if episode_start is not None and np.size(episode_start) != n_envs:
            raise ValueError(
                f"predict got an episode_start of {np.size(episode_start)} value(s) for {n_envs} observation(s): "
                "pass one per environment (True where an episode starts), or None"
            )
        return super().predict(observation, state, episode_start, deterministic)


def actor_memory(policy: nn.Module) -> nn.Module | None:
    """
    The actor's recurrent memory: an STPN policy's STPN, an sb3-contrib recurrent policy's LSTM.

    :param policy: Any SB3 policy.
    :return: The memory module, or None for a memoryless (feed-forward) policy.
    """
    if isinstance(policy, StpnActorCriticPolicy):
        return policy.stpn_actor
    if isinstance(policy, RecurrentActorCriticPolicy):
        return policy.lstm_actor
    return None


class StpnActorCriticCnnPolicy(StpnActorCriticPolicy):
    """
    STPN policy for image observations: SB3's NatureCNN features extractor by default. The other arguments are
    :class:`StpnActorCriticPolicy`'s.

    :param features_extractor_class: Features extractor to use.
    """

    def __init__(self, *args, features_extractor_class: type[BaseFeaturesExtractor] = NatureCNN, **kwargs):
        # *args are the leading positional ones: features_extractor_class given there too is Python's TypeError
        super().__init__(*args, features_extractor_class=features_extractor_class, **kwargs)  # type: ignore[misc]


class StpnMultiInputActorCriticPolicy(StpnActorCriticPolicy):
    """
    STPN policy for Dict observations: SB3's CombinedExtractor by default. The other arguments are
    :class:`StpnActorCriticPolicy`'s.

    :param features_extractor_class: Features extractor to use.
    """

    def __init__(self, *args, features_extractor_class: type[BaseFeaturesExtractor] = CombinedExtractor, **kwargs):
        super().__init__(*args, features_extractor_class=features_extractor_class, **kwargs)  # type: ignore[misc]
